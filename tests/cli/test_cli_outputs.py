"""No lost or overwritten output on the command line: the sidecar is never overwritten silently, batch outputs are
unique per scan, a full disk leaves nothing and says so in one line, and CSV cells cannot run as formulas."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution import _atomic
from napari_attribution._cli_run import run_batch
from napari_attribution._provenance import file_sha256
from napari_attribution.cli import main
from napari_attribution.io import Geometry, read_nifti, write_nifti

KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
          "num_res_units": 0}
FORMULA = '=HYPERLINK("evil.example","open me")'


@pytest.fixture
def model(tmp_path: Path) -> Path:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    torch.save(UNet(**KWARGS).eval().state_dict(), tmp_path / "unet.pt")
    (tmp_path / "unet.card.json").write_text(json.dumps(
        {"factory": "monai.networks.nets:UNet", "kwargs": KWARGS, "task": "segmentation", "weights": "unet.pt"}))
    return tmp_path / "unet.pt"


def _scan(path: Path, seed: int) -> Path:
    vol = np.random.default_rng(seed).normal(0, 1, (8, 12, 12)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, vol, Geometry(spacing=(1.5, 0.8, 0.8), origin=(0.0, 0.0, 0.0)))
    return path


def _files(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden ones included), relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_explain_refuses_an_existing_sidecar_before_any_work(model: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    scan = _scan(tmp_path / "scans" / "ct.nii.gz", 0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "heat.json").write_text("my notes")

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded: work started although an output exists")

    monkeypatch.setattr(na, "load_model", no_work)
    rc = main(["explain", "--model", str(model), "--image", str(scan), "--method", "saliency",
               "-o", str(out / "heat.nii.gz"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "heat.json" in err and "--overwrite" in err
    assert _files(out) == ["heat.json"] and (out / "heat.json").read_text() == "my notes"


def test_batch_gives_same_named_scans_their_own_outputs(model: Path, tmp_path: Path) -> None:
    """siteA/ct.nii.gz and siteB/ct.nii.gz: two heatmaps, two sidecars, each summary row pointing at its own."""
    scans = {site: _scan(tmp_path / "scans" / site / "ct.nii.gz", seed) for seed, site in enumerate(("siteA",
                                                                                                      "siteB"))}
    out = tmp_path / "out"
    rc = main(["batch", "--model", str(model), "--images", str(tmp_path / "scans" / "*" / "ct.nii.gz"),
               "--method", "saliency", "--target", "voxel:1:4,6,6", "-o", str(out), "--local", "-q"])
    assert rc == 0
    assert _files(out) == ["siteA/ct.json", "siteA/ct.nii.gz", "siteB/ct.json", "siteB/ct.nii.gz", "summary.csv"]
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for row in rows:
        site = Path(row["scan"]).parent.name
        assert Path(row["output"]) == out / site / "ct.nii.gz"
        side = json.loads((out / site / "ct.json").read_text())
        assert side["scan_sha256"] == file_sha256(str(scans[site]))  # the heatmap of that site's scan
    assert not np.array_equal(read_nifti(out / "siteA" / "ct.nii.gz")[0], read_nifti(out / "siteB" / "ct.nii.gz")[0])


def _disk(monkeypatch: pytest.MonkeyPatch, *, files: int = 0, room: int | None = None) -> None:
    """A full disk (never the real one): room for the first ``files`` files, then ``room`` more bytes."""
    seen: list[int] = []  # the files written so far, by inode (a closed file's fd number is reused)
    left = [room or 0]

    def write(fd: int, data: memoryview) -> int:
        inode = os.fstat(fd).st_ino
        if inode not in seen:
            seen.append(inode)
        if seen.index(inode) >= files:
            if left[0] <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = data[: left[0]]
            left[0] -= len(data)
        return os.write(fd, data)

    monkeypatch.setattr(_atomic, "_write_chunk", write)


def test_a_disk_with_room_for_the_heatmap_but_not_the_sidecar_leaves_neither(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    scan = _scan(tmp_path / "scans" / "ct.nii.gz", 0)
    out = tmp_path / "out"
    _disk(monkeypatch, files=1, room=10)
    rc = main(["explain", "--model", str(model), "--image", str(scan), "--method", "saliency",
               "-o", str(out / "heat.nii.gz"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: Cannot write") and "Traceback" not in err
    assert "heat.json" in err and "No space left on device" in err
    assert _files(out) == []  # no heatmap without its sidecar, no 0-byte sidecar, no .partial file
    monkeypatch.undo()  # space again: the rerun is not refused because of a half-written first run
    rc = main(["explain", "--model", str(model), "--image", str(scan), "--method", "saliency",
               "-o", str(out / "heat.nii.gz"), "-q"])
    assert rc == 0 and _files(out) == ["heat.json", "heat.nii.gz"]


def test_npy_output_on_a_full_disk_leaves_no_partial_file(model: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    scan = _scan(tmp_path / "scans" / "ct.nii.gz", 0)
    out = tmp_path / "out"
    _disk(monkeypatch, room=300)  # the .npy header fits, the data does not
    rc = main(["explain", "--model", str(model), "--image", str(scan), "--method", "saliency",
               "--method", "input_x_gradient", "--metric", "deletion", "-o", str(out / "heat.npy"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: Cannot write") and "heat_saliency.npy" in err
    assert _files(out) == []


def test_batch_on_a_full_disk_reports_each_scan_and_keeps_going(model: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(2):
        _scan(tmp_path / "scans" / f"case{i}.nii.gz", i)
    out = tmp_path / "out"
    _disk(monkeypatch, files=2)  # room for the first scan's heatmap and sidecar only
    lines: list[str] = []
    with pytest.raises(_atomic.OutputError, match="summary.csv"):  # the summary itself finds no room
        run_batch(str(model), str(tmp_path / "scans"), ["saliency"], str(out), local=True, target="voxel:1:4,6,6",
                  log=lines.append)
    assert "case0.nii.gz: ok" in lines[1] and "case1.nii.gz: error: OutputError: Cannot write" in lines[2]
    assert _files(out) == ["case0.json", "case0.nii.gz"]


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(model: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan named like a formula: the metrics CSV of explain and the batch summary start its cell with ', while
    numbers (negative ones too) stay numbers."""
    _scan(tmp_path / "scans" / f"{FORMULA}.nii.gz", 0)
    monkeypatch.chdir(tmp_path / "scans")  # a relative glob: the summary's scan cell is the bare file name
    rc = main(["explain", "--model", str(model), "--image", f"{FORMULA}.nii.gz", "--method", "saliency",
               "--target", "voxel:1:4,6,6", "--metric", "deletion", "-o", str(tmp_path / "e" / "heat.nii.gz"), "-q"])
    assert rc == 0
    rc = main(["batch", "--model", str(model), "--images", "*.nii.gz", "--method", "input_x_gradient",
               "--target", "voxel:1:4,6,6", "--metric", "deletion", "-o", str(tmp_path / "b"), "--local", "-q"])
    assert rc == 0
    for table in (tmp_path / "e" / "heat_metrics.csv", tmp_path / "b" / "summary.csv"):
        with open(table, newline="") as fh:
            header, *rows = list(csv.reader(fh))
        row = dict(zip(header, rows[0], strict=True))
        assert row["scan"] == f"'{FORMULA}.nii.gz"
        float(row["deletion"]), float(row["seconds"])  # numbers are left as numbers
        for cell in rows[0]:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or _number(cell), cell


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
