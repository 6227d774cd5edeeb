"""``--allow-module NAME`` on the command line: a card whose factory names the user's own network module is refused
with one ``error:`` line in command-line words until the user allows that module by name (``explain`` and
``batch``); the card itself cannot allow it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from _one_channel import OneChannelSegmenter, phantom

from napari_attribution.cli import main
from napari_attribution.io import Geometry, write_nifti


@pytest.fixture
def own_model(tmp_path: Path) -> tuple[Path, Path]:
    torch.save(OneChannelSegmenter().state_dict(), tmp_path / "bet.pt")
    card = {"factory": "_one_channel:OneChannelSegmenter", "task": "segmentation", "spatial_dims": 3,
            "in_channels": 1, "class_names": ["brain"], "weights": "bet.pt"}
    (tmp_path / "bet.card.json").write_text(json.dumps(card))
    scans = tmp_path / "scans"
    scans.mkdir()
    write_nifti(scans / "t1.nii.gz", phantom(), Geometry(spacing=(2.0, 0.8, 0.8), origin=(0.0, 0.0, 0.0)))
    return tmp_path / "bet.pt", scans / "t1.nii.gz"


def test_explain_refuses_the_users_module_until_allowed_by_name(own_model: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model, scan = own_model
    out = tmp_path / "out" / "heat.nii.gz"
    argv = ["explain", "--model", str(model), "--image", str(scan), "--method", "saliency", "-o", str(out), "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "--allow-module _one_channel" in err and "--trust" in err and "allow_modules" not in err
    assert not out.exists()
    assert main([*argv, "--allow-module", "_other", "--allow-module", "_one_channel"]) == 0
    assert out.exists()


def test_batch_passes_allow_module_to_every_scan(own_model: tuple[Path, Path], tmp_path: Path) -> None:
    model, scan = own_model
    argv = ["batch", "--model", str(model), "--images", str(scan.parent), "--method", "saliency", "--local", "-q"]
    assert main([*argv, "-o", str(tmp_path / "refused")]) == 1
    with open(tmp_path / "refused" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and "not inside the network libraries" in rows[0]["status"]
    assert main([*argv, "-o", str(tmp_path / "allowed"), "--allow-module", "_one_channel"]) == 0
    with open(tmp_path / "allowed" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["ok"] and Path(rows[0]["output"]).exists()
