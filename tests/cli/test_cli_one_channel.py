"""The command line on a one-output-channel segmenter (brain-extraction style): ``--target predicted:0`` (and the
default) explain the foreground; ``<out>_layers.csv`` measures the energy inside that foreground, equal to a
threshold of the output computed here independently; ``predicted:1`` is one clear line naming ``predicted:0``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _one_channel import OneChannelSegmenter, energy_inside, foreground, phantom

from napari_attribution.cli import main
from napari_attribution.io import Geometry, read_nifti, write_nifti

OWN = ["--allow-module", "_one_channel"]  # the card names the test suite's own network module: an explicit opt-in


@pytest.fixture
def brain_model(tmp_path: Path) -> tuple[Path, Path]:
    net = OneChannelSegmenter()
    torch.save(net.state_dict(), tmp_path / "bet.pt")
    card = {"factory": "_one_channel:OneChannelSegmenter", "kwargs": {"probabilities": False},
            "task": "segmentation", "spatial_dims": 3, "in_channels": 1, "class_names": ["brain"],
            "output": "logits", "weights": "bet.pt"}
    (tmp_path / "bet.card.json").write_text(json.dumps(card))
    scan = tmp_path / "t1.nii.gz"
    write_nifti(scan, phantom(), Geometry(spacing=(2.0, 0.8, 0.8), origin=(0.0, 0.0, 0.0)))
    return tmp_path / "bet.pt", scan


@pytest.mark.parametrize("target", [["--target", "predicted:0"], []])
def test_layer_table_measures_the_foreground_of_the_one_channel(brain_model: tuple[Path, Path], tmp_path: Path,
                                                                 target: list[str]) -> None:
    model, scan = brain_model
    out = tmp_path / "out" / "heat.nii.gz"
    argv = ["explain", "--model", str(model), "--image", str(scan), "--method", "grad_cam", "--method",
            "layer_activation", "--layer", "mean", "--layer", "act", *target, "-o", str(out), "-q", *OWN]
    assert main(argv) == 0
    volume = read_nifti(scan)[0]
    fg = foreground(OneChannelSegmenter(), volume)  # thresholded here, not by the library
    assert 0 < fg.sum() < fg.size
    with open(tmp_path / "out" / "heat_layers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["layer"]) for r in rows] == [(m, n) for m in ("grad_cam", "layer_activation")
                                                        for n in ("mean", "act")]
    for r in rows:
        heat = read_nifti(tmp_path / "out" / f"heat_{r['method']}_{r['layer']}.nii.gz")[0]
        assert float(r["energy_in_target_region"]) == pytest.approx(energy_inside(heat, fg), rel=1e-4)
        # the map spills over the foreground (a number that a wrong region would change), and is not the background
        assert energy_inside(heat, ~fg) < 0.5 < float(r["energy_in_target_region"]) < 0.99
    side = json.loads((tmp_path / "out" / "heat_grad_cam_mean.json").read_text())
    assert "class 0 (brain)" in side["target"] and f"{int(fg.sum())} voxels" in side["target"]


def test_predicted_1_on_one_channel_is_one_line_naming_predicted_0(brain_model: tuple[Path, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, scan = brain_model
    rc = main(["explain", "--model", str(model), "--image", str(scan), "--method", "saliency", "--target",
               "predicted:1", "-o", str(tmp_path / "x.nii.gz"), "-q", *OWN])
    err = capsys.readouterr().err
    assert rc == 2 and "--target predicted:0" in err and "one output channel" in err and "Traceback" not in err
    assert not (tmp_path / "x.nii.gz").exists()
    # the foreground as a number read back from the written map: predicted:0 explains the brain
    assert main(["explain", "--model", str(model), "--image", str(scan), "--method", "saliency", "--target",
                 "predicted:0", "-o", str(tmp_path / "x.nii.gz"), "-q", *OWN]) == 0
    heat = read_nifti(tmp_path / "x.nii.gz")[0]
    assert np.isfinite(heat).all() and heat.max() > 0
