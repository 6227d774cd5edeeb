"""Weights are never silent in napari: a random-weights model says so in the dock's model line, the heatmap layer's
name and metadata; the heatmap's sidecar (the npe2 writer) records the sha256 of the weights read (not of the card
file), the card in effect, and the scan's file name (never its folder) with the scan's sha256. No viewer needed:
the reader, the job and the writer are Qt-free."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution import _napari_io as nio
from napari_attribution.io import Geometry, write_nifti
from napari_attribution.layers import OWNER_KEY
from napari_attribution.runs.jobs import ExplainRequest, run_job
from napari_attribution.runs.model_info import load_model_info, model_info

UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
        "num_res_units": 0}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scan_layer(tmp_path: Path) -> tuple[Path, tuple]:
    """A scan in a folder whose name holds a patient's name, opened by the plugin's reader."""
    folder = tmp_path / "Doe_Jane_1957"
    folder.mkdir()
    vol = np.random.default_rng(0).normal(0, 1, (8, 12, 12)).astype(np.float32)
    path = write_nifti(folder / "t1.nii.gz", vol, Geometry(spacing=(1.5, 0.8, 0.8), origin=(0.0, 0.0, 0.0)))
    [layer] = nio.read(str(path))
    return path, layer


def explain(info, layer) -> tuple:  # type: ignore[no-untyped-def]
    data, kwargs, _ = layer
    keep = ("original_affine", "source_file", "source_sha256")  # what the dock passes on
    req = ExplainRequest(model=info, image=data, source=kwargs["name"], methods=["saliency"],
                         target=na.targets.Voxel(1, (4, 6, 6)),
                         source_metadata={k: kwargs["metadata"][k] for k in keep if k in kwargs["metadata"]})
    out = run_job(req)
    assert out.status == "ok", out.message
    heat = next(t for t in out.layers if t[1]["metadata"][OWNER_KEY].get("role") == "heatmap")
    return heat


def write(heat: tuple, where: Path) -> tuple[dict, str]:
    data, kwargs, _ = heat
    where.parent.mkdir(parents=True, exist_ok=True)
    written = nio.write_image(str(where), data, kwargs)
    text = Path(written[1]).read_text()
    return json.loads(text), text


def test_reader_records_the_scans_file_name_and_sha256(scan_layer) -> None:  # type: ignore[no-untyped-def]
    path, (_, kwargs, _) = scan_layer
    assert kwargs["metadata"]["source_file"] == "t1.nii.gz"
    assert kwargs["metadata"]["source_sha256"] == sha(path)


def test_random_weights_are_named_in_the_model_line_the_layer_and_the_sidecar(tmp_path: Path, scan_layer
                                                                              ) -> None:  # type: ignore[no-untyped-def]
    path, layer = scan_layer
    card = tmp_path / "unet.card.json"
    card.write_text(json.dumps({"factory": "monai:UNet", "kwargs": UNET, "weights": "random"}))
    info = load_model_info(str(card))
    assert info.random_weights and info.sha256 is None and "random weights" in info.summary()
    heat = explain(info, layer)
    assert heat[1]["name"].endswith(" · random weights")
    prov = heat[1]["metadata"][OWNER_KEY]["provenance"]
    assert prov["random_weights"] is True and prov["weights"] == "random weights"
    assert prov["weights_sha256"] is None and prov["model_sha256"] is None
    side, text = write(heat, tmp_path / "out" / "heat.nii.gz")
    rec = side["napari_attribution"]["provenance"]
    assert rec["random_weights"] is True and rec["card"]["weights"] == "random"
    assert rec["scan"] == "t1.nii.gz" and rec["scan_sha256"] == sha(path)
    assert "Doe_Jane" not in text


def test_trained_weights_record_the_checkpoint_hash_and_the_card_in_effect(tmp_path: Path, scan_layer
                                                                           ) -> None:  # type: ignore[no-untyped-def]
    path, layer = scan_layer
    torch.manual_seed(0)
    net = na.load_model({"factory": "monai:UNet", "kwargs": UNET, "weights": "random"}).module
    torch.save(net.state_dict(), tmp_path / "unet.pt")
    card = tmp_path / "unet.card.json"
    card.write_text(json.dumps({"factory": "monai:UNet", "kwargs": UNET, "class_names": ["background", "vessel"]}))
    info = load_model_info(str(card))  # the card finds unet.pt beside it
    assert not info.random_weights and info.sha256 == sha(tmp_path / "unet.pt") != sha(card)
    heat = explain(info, layer)
    assert "random" not in heat[1]["name"]
    side, text = write(heat, tmp_path / "out" / "heat.nii.gz")
    rec = side["napari_attribution"]["provenance"]
    assert rec["weights_sha256"] == rec["model_sha256"] == sha(tmp_path / "unet.pt")
    assert rec["random_weights"] is False
    assert rec["card"] == info.model.card.to_dict() and rec["card"]["class_names"] == ["background", "vessel"]
    assert rec["scan"] == "t1.nii.gz" and rec["scan_sha256"] == sha(path) and "Doe_Jane" not in text


def test_a_module_from_python_marked_random_by_its_card() -> None:
    module = na.load_model({"factory": "monai:UNet", "kwargs": UNET, "weights": "random"}).module
    info = model_info(na.LoadedModel(module, na.ModelCard(weights="random")))
    assert info.random_weights and info.provenance_fields()["random_weights"] is True
    plain = model_info(module)
    assert not plain.random_weights and plain.provenance_fields()["card"] is not None
