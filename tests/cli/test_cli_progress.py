"""Long command-line runs show progress with an ETA: ``explain`` (methods, then metrics) and ``batch`` (each scan,
and the batch's elapsed time and time left)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_attribution._cli_run import run_batch
from napari_attribution._progress import ProgressLine, eta_seconds, format_duration
from napari_attribution.cli import main
from napari_attribution.io import Geometry, write_nifti


class Clock:
    """A fake monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_is_the_elapsed_time_scaled_to_the_work_left() -> None:
    assert eta_seconds(0.25, 30.0) == pytest.approx(90.0)
    assert eta_seconds(0.5, 7.0) == pytest.approx(7.0)
    assert eta_seconds(0.005, 30.0) is None and eta_seconds(0.5, 0.1) is None  # too early to tell
    assert [format_duration(s) for s in (0.25, 42, 61, 190, 1200, 3900)] == \
        ["0.2 s", "42 s", "1 min 01 s", "3 min 10 s", "20 min", "1 h 05 min"]


def test_progress_line_restarts_its_clock_for_each_stage_and_writes_each_end_once() -> None:
    clock, out = Clock(), io.StringIO()
    line = ProgressLine(out, clock=clock, tty=False, interval=5.0)
    clock.now += 2
    line(1, 10, "integrated gradients")  # the first report is written at once
    clock.now += 1
    line(2, 10, "integrated gradients")  # within the interval: not written
    clock.now += 7
    line(5, 10, "integrated gradients")
    clock.now += 10
    line(10, 10, "done")
    line(10, 10, "done")  # a stage's end is written once
    clock.now += 4
    line(1, 4, "deletion")  # the fraction went back: a new stage, timed from the last report, written at once
    lines = out.getvalue().splitlines()
    assert lines == [
        " 10%  2.0 s elapsed, about 18 s left  integrated gradients",
        " 50%  10 s elapsed, about 10 s left  integrated gradients",
        "100%  20 s elapsed  done",
        " 25%  4.0 s elapsed, about 12 s left  deletion",
    ]


def test_progress_line_rewrites_one_terminal_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    clock, out = Clock(), io.StringIO()
    line = ProgressLine(out, clock=clock, tty=True, prefix="[1/2] a")
    clock.now += 1
    line(1, 2, "occlusion windows")
    clock.now += 1
    line(2, 2, "done")
    line.log("[1/2] a: ok")
    text = out.getvalue()
    assert text.startswith("\r[1/2] a   50%  1.0 s elapsed, about 1.0 s left  occlusion windows")
    assert "\r[1/2] a  100%  2.0 s elapsed  done" in text and text.endswith("\n[1/2] a: ok\n")


CARD = {"factory": "monai.networks.nets:UNet",
        "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
                   "num_res_units": 0},
        "task": "segmentation", "spatial_dims": 3, "in_channels": 1, "class_names": ["background", "vessel"]}


@pytest.fixture
def model_and_scans(tmp_path: Path) -> tuple[Path, list[Path]]:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    torch.save(UNet(**CARD["kwargs"]).eval().state_dict(), tmp_path / "unet.pt")
    (tmp_path / "unet.card.json").write_text(json.dumps({**CARD, "weights": "unet.pt"}))
    rng = np.random.default_rng(0)
    scans = []
    for i in range(2):
        p = tmp_path / "scans" / f"case{i}.nii.gz"
        p.parent.mkdir(exist_ok=True)
        geometry = Geometry(spacing=(1.5, 0.8, 0.8), origin=(0.0, 0.0, 0.0))
        write_nifti(p, rng.normal(0, 1, (8, 12, 12)).astype(np.float32), geometry)
        scans.append(p)
    return tmp_path / "unet.pt", scans


def test_explain_reports_progress_of_the_methods_and_the_metrics(model_and_scans, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model, scans = model_and_scans
    rc = main(["explain", "--model", str(model), "--image", str(scans[0]), "--method", "saliency",
               "--method", "occlusion", "--param", "window=4", "--target", "voxel:1:4,6,6", "--metric", "deletion",
               "-o", str(tmp_path / "heat.nii.gz")])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    assert any("elapsed" in line and "occlusion" in line for line in err)
    # the metrics are stages of their own, named after the method they score (they ran minutes in silence)
    assert any("elapsed" in line and "saliency: deletion" in line for line in err)
    assert any("elapsed" in line and "occlusion: deletion" in line for line in err)


def test_batch_logs_each_scan_with_the_time_left(model_and_scans, tmp_path: Path) -> None:
    model, scans = model_and_scans
    logged: list[str] = []
    reports: list[str] = []
    results = run_batch(str(model), str(scans[0].parent), ["saliency"], str(tmp_path / "out"), local=True,
                        target="voxel:1:4,6,6", log=logged.append,
                        scan_progress=lambda done, total, message: reports.append(message))
    assert [r["status"] for r in results] == ["ok", "ok"]
    done = [line for line in logged if line.startswith("[")]
    assert done[0].startswith("[1/2]") and "elapsed" in done[0] and "left)" in done[0]
    assert done[1].startswith("[2/2]") and "elapsed)" in done[1]  # nothing left
    assert any(m.startswith("[1/2] case0") for m in reports) and any(m.startswith("[2/2] case1") for m in reports)
