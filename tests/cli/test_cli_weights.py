"""Weights are never silent on the command line: the sidecar records the sha256 of the weights actually read (not of
the card file), the card in effect, and the scan's file name (never its folder) with the scan's sha256; a network
built with "weights": "random" is marked in the sidecar and the batch summary; a card without weights fails."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution.cli import main
from napari_attribution.io import Geometry, write_nifti

UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
        "num_res_units": 0}
CARD = {"factory": "monai.networks.nets:UNet", "kwargs": UNET, "task": "segmentation",
        "class_names": ["background", "vessel"]}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scans(tmp_path: Path) -> list[Path]:
    """Two scans in a folder whose name holds a patient's name."""
    folder = tmp_path / "Doe_Jane_1957"
    folder.mkdir()
    rng = np.random.default_rng(0)
    return [write_nifti(folder / f"case{i}.nii.gz", rng.normal(0, 1, (8, 12, 12)).astype(np.float32),
                        Geometry(spacing=(1.5, 0.8, 0.8), origin=(0.0, 0.0, 0.0))) for i in range(2)]


def test_sidecar_records_the_checkpoint_read_the_card_and_the_scan_name(tmp_path: Path, scans: list[Path]) -> None:
    torch.manual_seed(0)
    net = na.load_model({**CARD, "weights": "random"}).module
    torch.save(net.state_dict(), tmp_path / "unet.pt")
    card = tmp_path / "unet.card.json"
    card.write_text(json.dumps(CARD))  # finds unet.pt beside it
    out = tmp_path / "out" / "heat.nii.gz"
    assert main(["explain", "--model", str(card), "--image", str(scans[0]), "--method", "saliency",
                 "--target", "voxel:1:4,6,6", "-o", str(out), "-q"]) == 0
    text = (tmp_path / "out" / "heat.json").read_text()
    side = json.loads(text)
    assert side["weights_sha256"] == side["model_sha256"] == sha(tmp_path / "unet.pt") != sha(card)
    assert side["random_weights"] is False and "weights" not in side
    loaded = na.load_model(card)
    assert side["card"] == loaded.card.to_dict() and side["card"]["weights"] == str(tmp_path / "unet.pt")
    assert side["scan"] == "case0.nii.gz" and side["scan_sha256"] == sha(scans[0])
    assert "Doe_Jane" not in text  # the scan's folder is never recorded


def test_random_weights_are_marked_in_the_sidecar_and_the_batch_summary(tmp_path: Path, scans: list[Path],
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    card = tmp_path / "unet.card.json"
    card.write_text(json.dumps({**CARD, "weights": "random"}))
    assert main(["batch", "--model", str(card), "--images", str(scans[0].parent), "--method", "saliency",
                 "-o", str(tmp_path / "b"), "--local"]) == 0
    assert 'random weights: the card asks for an untrained network ("weights": "random")' in capsys.readouterr().err
    with open(tmp_path / "b" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["status"] == "ok" and r["weights"] == "random weights" for r in rows)
    for scan in scans:
        side = json.loads((tmp_path / "b" / scan.name.replace(".nii.gz", ".json")).read_text())
        assert side["random_weights"] is True and side["weights"] == "random weights"
        assert side["weights_sha256"] is None and side["model_sha256"] is None  # no file was read
        assert side["card"]["weights"] == "random"
        assert side["scan"] == scan.name and side["scan_sha256"] == sha(scan)


def test_trained_weights_fill_the_summarys_weights_column_with_their_hash(tmp_path: Path, scans: list[Path]) -> None:
    net = na.load_model({**CARD, "weights": "random"}).module
    torch.save(net.state_dict(), tmp_path / "unet.pt")
    (tmp_path / "unet.card.json").write_text(json.dumps(CARD))
    assert main(["batch", "--model", str(tmp_path / "unet.pt"), "--images", str(scans[0].parent), "--method",
                 "saliency", "-o", str(tmp_path / "b"), "--local", "-q"]) == 0
    with open(tmp_path / "b" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["weights"] for r in rows] == [sha(tmp_path / "unet.pt")] * 2


def test_a_card_without_weights_fails_before_the_run(tmp_path: Path, scans: list[Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    card = tmp_path / "unet.card.json"
    card.write_text(json.dumps(CARD))
    rc = main(["explain", "--model", str(card), "--image", str(scans[0]), "--method", "saliency",
               "-o", str(tmp_path / "x.nii.gz"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "names no weights" in err and '"weights": "random"' in err
    assert not (tmp_path / "x.nii.gz").exists()
