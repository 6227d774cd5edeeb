"""A metric that fails in the CLI's metrics loop leaves an empty cell and a message naming it and why; the other
metrics are still computed and written (explain, and the batch summary with its warnings column)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import napari_attribution as na
from napari_attribution._cli_run import explain_file
from napari_attribution.cli import main
from napari_attribution.io import read_nifti

# pointing_game compares the map with a mask, which the CLI does not pass: it fails for a reason a user meets
METRICS = ["deletion", "pointing_game", "insertion"]


def test_a_failing_metric_leaves_an_empty_cell_and_the_others_are_written(model_and_scan: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    model, scan = model_and_scan
    out = tmp_path / "out" / "heat.nii.gz"
    target = "voxel:1:4,6,6"
    with pytest.warns(UserWarning, match=r"The metric pointing_game failed for saliency on case0\.nii\.gz: "
                                         r"pointing_game compares the map with a mask") as caught:
        res = explain_file(str(model), str(scan), ["saliency"], str(out), target=target, metrics=METRICS)
    assert len(caught) == 1 and "the other metrics are written" in str(caught[0].message)
    got = res.metrics["saliency"]
    assert got["pointing_game"] is None
    # the others are the numbers na.evaluate gives
    loaded = na.load_model(str(model))
    data, geometry, _ = read_nifti(scan)
    att = na.explain(loaded, data, "saliency", na.targets.Voxel(1, (4, 6, 6)), geometry=geometry)
    for metric in ("deletion", "insertion"):
        ref = na.evaluate(loaded, data, att, metric, geometry=geometry)
        assert got[metric] == pytest.approx(ref.value, rel=1e-5)
        assert got[f"{metric}_random"] == pytest.approx(ref.details["random_auc"], rel=1e-5)
    with open(tmp_path / "out" / "heat_metrics.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["scan", "method", "deletion", "deletion_random", "deletion_verdict", "pointing_game",
                       "insertion", "insertion_random", "insertion_verdict", "seconds"]
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["pointing_game"] == "" and float(row["deletion"]) == pytest.approx(got["deletion"], rel=1e-6)
    assert float(row["insertion"]) == pytest.approx(got["insertion"], rel=1e-6)


def test_the_command_line_says_failed_and_the_batch_summary_carries_the_message(
        model_and_scan: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, scan = model_and_scan
    argv = ["--model", str(model), "--method", "saliency", "--metric", "pointing_game", "--metric", "deletion", "-q"]
    with pytest.warns(UserWarning, match="pointing_game failed"):
        assert main(["explain", *argv, "--image", str(scan), "-o", str(tmp_path / "one" / "heat.nii.gz")]) == 0
    printed = capsys.readouterr().out
    assert "pointing_game=failed" in printed and "deletion=" in printed
    assert main(["batch", *argv, "--images", str(scan.parent), "-o", str(tmp_path / "batch"), "--local"]) == 0
    with open(tmp_path / "batch" / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert rows[0]["pointing_game"] == "" and float(rows[0]["deletion"]) >= 0.0
    assert "The metric pointing_game failed" in rows[0]["warnings"]
