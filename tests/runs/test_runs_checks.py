"""The check engine without Qt or napari (``runs/checks.py``): the verdicts' thresholds and words, the rows the
Explain dock stores, and a check run with a failing check — all importable and runnable with no viewer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution.runs.checks import (
    VERDICTS,
    CheckRequest,
    Explained,
    check_job,
    deletion_fill,
    rows_from,
    verdict,
)


def test_the_check_engine_imports_no_qt_and_no_napari() -> None:
    code = ("import sys, napari_attribution.runs.checks; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('qtpy', 'napari', 'PyQt5', 'PyQt6', "
            "'PySide2', 'PySide6', 'vispy') or m.startswith('napari_attribution._widget')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def _curves(value: float, ref: float, span: float = 1.0) -> dict[str, object]:
    # curves from 0 to `span`: the span is what the gain is measured against
    return {"random_auc": ref, "curve": [0.0, span], "random_curve": [0.0, span]}


@pytest.mark.parametrize(("value", "ref", "start"), [
    (0.30, 0.50, "faithful: deleting the map's top voxels first"),  # gain 0.2
    (0.39, 0.50, "faithful"),  # gain 0.11
    (0.41, 0.50, "no better than a random order"),  # gain 0.09
    (0.59, 0.50, "no better than a random order"),  # gain -0.09
    (0.61, 0.50, "worse than a random order"),  # gain -0.11
])
def test_deletion_compares_with_a_random_order_by_a_tenth_of_the_curves_span(value: float, ref: float,
                                                                              start: str) -> None:
    assert verdict("deletion", value, _curves(value, ref)).startswith(start)


@pytest.mark.parametrize(("value", "ref", "start"), [
    (0.61, 0.50, "faithful: restoring the map's top voxels first"),
    (0.59, 0.50, "no better than a random order"),
    (0.39, 0.50, "worse than a random order"),
])
def test_insertion_is_deletion_the_other_way_round(value: float, ref: float, start: str) -> None:
    assert verdict("insertion", value, _curves(value, ref)).startswith(start)


def test_deletion_without_a_reference_or_with_flat_curves_says_so() -> None:
    assert verdict("deletion", 0.3, {}) == "no random reference to compare with"
    assert verdict("deletion", 0.3) == "no random reference to compare with"
    flat = verdict("deletion", 0.50, _curves(0.50, 0.52, span=0.04))  # the span under 0.05: nothing to read
    assert flat.startswith("not informative") and "another fill value" in flat
    assert "another fill value" not in verdict("insertion", 0.5, _curves(0.5, 0.52, span=0.04))


@pytest.mark.parametrize(("value", "start"), [
    (0.29, "passes the sanity check"), (0.30, "partly passes"), (0.59, "partly passes"),
    (0.60, "fails the sanity check"),
])
def test_randomisation_thresholds(value: float, start: str) -> None:
    assert verdict("randomisation", value, {}).startswith(start)


@pytest.mark.parametrize(("value", "text"), [
    (0.09, "stable: ±2 % noise on the scan changes the map by at most 9 %"),
    (0.10, "fairly stable: ±2 % noise on the scan changes the map by up to 10 %"),
    (0.49, "fairly stable: ±2 % noise on the scan changes the map by up to 49 %"),
    (0.50, "unstable: ±2 % noise on the scan changes the map by up to 50 %"),
])
def test_max_sensitivity_thresholds(value: float, text: str) -> None:
    assert verdict("max_sensitivity", value, {}) == text


@pytest.mark.parametrize(("value", "start"), [
    (0.01, "complete"), (0.011, "nearly complete"), (0.1, "nearly complete"), (0.11, "incomplete"),
])
def test_completeness_thresholds(value: float, start: str) -> None:
    assert verdict("completeness", value).startswith(start)


def test_metrics_without_a_verdict_get_none() -> None:
    assert set(VERDICTS) == {"deletion", "insertion", "randomisation", "max_sensitivity", "completeness"}
    for metric in ("energy_in_mask", "pointing_game", "topk_iou", "infidelity", "specificity"):
        assert verdict(metric, 0.5, {}) == ""


def test_rows_carry_the_verdict_of_their_score_and_the_deletion_fill_parses() -> None:
    score = na.Score("randomisation", 0.2, False, {"per_layer": [("a", 0.4), ("b", 0.1)]}, 1.5)
    rows = rows_from({"randomisation": score}, None, {"randomisation": {"max_layers": 5}})
    assert rows["randomisation"] == {
        "value": 0.2, "reference": 0.1, "reference_kind": "correlation with every layer randomised",
        "verdict": verdict("randomisation", 0.2), "better": "lower", "seconds": 1.5, "params": {"max_layers": 5}}
    assert deletion_fill("min (air in CT)") == "min" and deletion_fill("mean") == "mean"
    assert deletion_fill(" 40") == 40.0
    with pytest.raises(na.ParameterError, match="not 'min', 'mean' or a number"):
        deletion_fill("air")


def test_a_check_run_without_a_viewer_keeps_the_others_when_one_fails() -> None:
    from _nets import Classifier

    from napari_attribution.runs.model_info import model_info

    torch.manual_seed(0)
    net = Classifier(d=2, classes=2).eval()
    scan = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    att = na.explain(net, scan, "saliency", 1)
    # pointing_game needs a mask the check does not pass: it fails for a reason a user meets
    out = check_job(CheckRequest(Explained(att, model_info(net, "2d"), scan), ["deletion", "pointing_game"],
                                 {"deletion": {"steps": 10}}))
    assert out.status == "ok" and list(out.failed) == ["pointing_game"]
    ref = na.evaluate(net, scan, att, "deletion", steps=10)
    assert out.rows["deletion"]["value"] == ref.value
    assert out.rows["deletion"]["verdict"] == verdict("deletion", ref.value, ref.details)
    assert out.rows["pointing_game"]["value"] is None
    assert out.rows["pointing_game"]["verdict"] == f"failed: {out.failed['pointing_game']}"
