"""The CLI's metrics CSV and the batch summary carry, next to each metric that has one, the verdict the Explain dock
shows for the same score (``runs.checks``: one set of thresholds and words); a metric that failed says why there."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import napari_attribution as na
from napari_attribution._cli_run import explain_file
from napari_attribution.cli import main
from napari_attribution.io import read_nifti
from napari_attribution.runs.checks import _why, failed_row, rows_from, verdict

TARGET = "voxel:1:4,6,6"

def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_metrics_csv_carries_the_docks_verdict_next_to_each_metric(model_and_scan: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    model, scan = model_and_scan
    out = tmp_path / "out" / "heat.nii.gz"
    metrics = ["deletion", "pointing_game", "insertion", "max_sensitivity"]
    with pytest.warns(UserWarning, match="The metric pointing_game failed"):
        res = explain_file(str(model), str(scan), ["saliency"], str(out), target=TARGET, metrics=metrics)
    with open(tmp_path / "out" / "heat_metrics.csv", newline="") as fh:
        header = next(csv.reader(fh))
    # pointing_game has no verdict in the dock, so no verdict column here
    assert header == ["scan", "method", "deletion", "deletion_random", "deletion_verdict", "pointing_game",
                      "insertion", "insertion_random", "insertion_verdict", "max_sensitivity",
                      "max_sensitivity_verdict", "seconds"]
    row = _rows(tmp_path / "out" / "heat_metrics.csv")[0]
    # the dock's row for the same scores (rows_from is what the "Check this map" box stores and shows)
    loaded = na.load_model(str(model))
    data, geometry, _ = read_nifti(scan)
    att = na.explain(loaded, data, "saliency", na.targets.Voxel(1, (4, 6, 6)), geometry=geometry)
    scores = {m: na.evaluate(loaded, data, att, m, geometry=geometry) for m in ("deletion", "insertion")}
    dock = rows_from(scores, att, {})
    for m in ("deletion", "insertion"):
        assert float(row[m]) == pytest.approx(scores[m].value, rel=1e-5)
        assert row[f"{m}_verdict"] == dock[m]["verdict"] == res.verdicts["saliency"][m] != ""
    ms = float(row["max_sensitivity"])
    assert row["max_sensitivity_verdict"] == verdict("max_sensitivity", ms) == res.verdicts["saliency"][
        "max_sensitivity"]
    assert row["max_sensitivity_verdict"].split(":")[0] in ("stable", "fairly stable", "unstable")
    assert "pointing_game" not in res.verdicts["saliency"]


def test_a_failed_metric_with_a_verdict_says_failed_and_why(model_and_scan: tuple[Path, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model, scan = model_and_scan
    real = na.evaluate

    def evaluate(*args: object, **kwargs: object) -> object:
        if args[3] == "deletion":
            raise err
        return real(*args, **kwargs)  # type: ignore[arg-type]

    err = na.ParameterError("The fill value is out of range. Pass another one.")
    monkeypatch.setattr(na, "evaluate", evaluate)
    with pytest.warns(UserWarning, match="The metric deletion failed"):
        explain_file(str(model), str(scan), ["saliency"], str(tmp_path / "o" / "h.nii.gz"), target=TARGET,
                     metrics=["deletion", "randomisation"], params={})
    row = _rows(tmp_path / "o" / "h_metrics.csv")[0]
    # the dock's failed row says "failed: <why>" as its verdict; the value and reference stay empty
    assert row["deletion"] == row["deletion_random"] == ""
    assert row["deletion_verdict"] == "failed: The fill value is out of range. Pass another one"
    assert row["deletion_verdict"] == failed_row("deletion", _why(err), 0.0, {})["verdict"]  # the dock's words
    assert row["randomisation_verdict"] == verdict("randomisation", float(row["randomisation"])) != ""


def test_the_batch_summary_carries_the_same_verdicts(model_and_scan: tuple[Path, Path], tmp_path: Path) -> None:
    model, scan = model_and_scan
    argv = ["--model", str(model), "--method", "saliency", "--target", TARGET, "--metric", "deletion", "--metric",
            "max_sensitivity", "-q"]
    assert main(["explain", *argv, "--image", str(scan), "-o", str(tmp_path / "one" / "heat.nii.gz")]) == 0
    assert main(["batch", *argv, "--images", str(scan.parent), "-o", str(tmp_path / "batch"), "--local"]) == 0
    one = _rows(tmp_path / "one" / "heat_metrics.csv")[0]
    summary = _rows(tmp_path / "batch" / "summary.csv")
    assert len(summary) == 1 and summary[0]["status"] == "ok"
    row = summary[0]
    assert [k for k in row if "deletion" in k or "max_sensitivity" in k] == [
        "deletion", "deletion_random", "deletion_verdict", "max_sensitivity", "max_sensitivity_verdict"]
    assert float(row["deletion"]) == pytest.approx(float(one["deletion"]), rel=1e-6)
    assert row["deletion_verdict"] == one["deletion_verdict"] != ""
    assert row["max_sensitivity_verdict"] == verdict("max_sensitivity", float(row["max_sensitivity"])) != ""
