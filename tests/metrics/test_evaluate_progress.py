"""``na.evaluate`` with ``progress`` and ``cancel``: progress rises to its total for every model-calling metric,
cancel raises ``Cancelled`` and leaves the model as it was, the values do not depend on either; deletion and
insertion report the AUC of a random voxel order, which a faithful map beats on a model with a known answer."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from _nets import MODELS, image
from methods.test_model_unchanged import assert_untouched, snapshot
from torch import nn

import napari_attribution as na
from napari_attribution.targets import Predicted, Region


class Spot(nn.Module):
    """Class 1's logit is ``20 * (mean of the top-left 8x8 quadrant - 0.8)``; class 0's is 0. On ``IMG`` (the
    quadrant at 1, the rest at 0) the right map is the quadrant: removing a fifth of it already flips the class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = 20 * (x[:, 0, :8, :8].mean((1, 2)) - 0.8)
        return torch.stack([torch.zeros_like(q), q], 1)


IMG = np.zeros((16, 16), np.float32)
IMG[:8, :8] = 1.0
FAITHFUL = IMG + 0.01 * np.random.default_rng(0).random((16, 16)).astype(np.float32)  # ties broken at random

SCORER_METRICS: dict[str, dict[str, Any]] = {
    "deletion": {"steps": 20, "baseline": 0.0},
    "insertion": {"steps": 20, "blur_mm": 3.0},
    "infidelity": {"samples": 12},
    "specificity": {"block": 4, "q": 0.25, "baseline": 0.0, "score": "probability"},
}


class Recorder:
    """A ``progress`` callback that keeps every call, and a ``cancel`` that turns True after ``after`` calls."""

    def __init__(self, after: int | None = None) -> None:
        self.calls: list[tuple[int, int, str]] = []
        self.after = after

    def __call__(self, done: int, total: int, message: str) -> None:
        assert isinstance(done, int) and isinstance(total, int) and isinstance(message, str)
        self.calls.append((done, total, message))

    def cancel(self) -> bool:
        return self.after is not None and len(self.calls) >= self.after


def assert_rises_to_total(calls: list[tuple[int, int, str]], at_least: int = 2) -> None:
    assert len(calls) >= at_least, calls
    done = [c[0] for c in calls]
    totals = {c[1] for c in calls}
    assert len(totals) == 1, totals
    assert done == sorted(done) and 0 <= done[0] and done[-1] == totals.pop()


def same(a: Any, b: Any) -> None:
    """Equal values and details (arrays exactly, numbers exactly)."""
    assert a.value == b.value
    assert set(a.details) == set(b.details)
    for key, value in a.details.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b.details[key])
        else:
            assert value == b.details[key], key


def rerun_case() -> tuple[nn.Module, np.ndarray, na.Attribution]:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    return model, img, na.explain(model, img, "grad_cam", 1, layer="features")


RERUN_METRICS: dict[str, dict[str, Any]] = {"randomisation": {"max_layers": 3}, "max_sensitivity": {"samples": 3}}


@pytest.mark.parametrize("metric", list(SCORER_METRICS))
def test_scorer_metrics_report_each_batch_and_give_the_same_values(metric: str) -> None:
    params = SCORER_METRICS[metric]
    plain = na.evaluate(Spot(), IMG, FAITHFUL, metric, target=1, batch=4, **params)
    rec = Recorder()
    watched = na.evaluate(Spot(), IMG, FAITHFUL, metric, target=1, batch=4, progress=rec, cancel=rec.cancel,
                          **params)
    same(plain, watched)
    assert_rises_to_total(rec.calls, at_least=3)
    assert rec.calls[-1][1] >= plain.details["model_calls"] - 1  # one unit per scored image (+ the target's pass)
    assert all(c[2].startswith(metric.replace("_", "-")) for c in rec.calls)


@pytest.mark.parametrize("metric", list(RERUN_METRICS))
def test_rerun_metrics_report_each_rerun_and_give_the_same_values(metric: str) -> None:
    model, img, att = rerun_case()
    plain = na.evaluate(model, img, att, metric, **RERUN_METRICS[metric])
    rec = Recorder()
    watched = na.evaluate(model, img, att, metric, progress=rec, cancel=rec.cancel, **RERUN_METRICS[metric])
    assert watched.value == plain.value
    key = "per_layer" if metric == "randomisation" else "per_sample"
    assert watched.details[key] == plain.details[key]
    assert_rises_to_total(rec.calls, at_least=RERUN_METRICS[metric].get("samples", 3))
    assert any("re-run" in c[2] for c in rec.calls)


@pytest.mark.parametrize("metric", list(SCORER_METRICS) + list(RERUN_METRICS))
def test_cancel_raises_and_leaves_the_model_untouched(metric: str) -> None:
    if metric in RERUN_METRICS:
        model, img, att = rerun_case()
        args: tuple[Any, ...] = (model, img, att)
        params = dict(RERUN_METRICS[metric])
    else:
        model = Spot()
        args = (model, IMG, FAITHFUL)
        params = dict(SCORER_METRICS[metric], target=1, batch=4)
    before = snapshot(model)
    rec = Recorder(after=2)  # cancelled midway, after the second report
    with pytest.raises(na.Cancelled):
        na.evaluate(*args, metric, progress=rec, cancel=rec.cancel, **params)
    assert 2 <= len(rec.calls) and rec.calls[-1][0] < rec.calls[-1][1]
    assert_untouched(model, before)
    with pytest.raises(na.Cancelled):  # cancelled before anything ran
        na.evaluate(*args, metric, cancel=lambda: True, **params)
    assert_untouched(model, before)


def test_cancel_reaches_into_the_reruns_of_randomisation() -> None:
    """The re-runs of the method get ``cancel`` too: a cancel raised inside the first re-run (smoothgrad polls it
    after each sample) stops the check before that re-run ends."""
    model, img, _ = rerun_case()
    att = na.explain(model, img, "smoothgrad", 1, params={"samples": 4, "max_batch": 1})
    before = snapshot(model)
    rec = Recorder()

    def cancel() -> bool:  # True as soon as the re-run itself has reported (its message is nested in ours)
        return any("(" in m for _, _, m in rec.calls)

    with pytest.raises(na.Cancelled):
        na.evaluate(model, img, att, "randomisation", max_layers=3, progress=rec, cancel=cancel)
    done, total, message = rec.calls[-1]
    assert total == 300 and 0 < done < 100 and message.startswith("randomisation: re-run 1 of 3")
    assert_untouched(model, before)


def test_a_faithful_map_beats_the_random_order() -> None:
    dele = na.evaluate(Spot(), IMG, FAITHFUL, "deletion", target=1, baseline=0.0, steps=32)
    ins = na.evaluate(Spot(), IMG, FAITHFUL, "insertion", target=1, blur_mm=3.0, steps=32)
    # deletion: the score falls at once when the quadrant goes first, later in a random order
    assert dele.value < 0.1 < 0.15 < dele.details["random_auc"]
    assert ins.value > ins.details["random_auc"] + 0.15
    for s in (dele, ins):
        curve, random_curve = s.details["curve"], s.details["random_curve"]
        assert len(random_curve) == len(curve) == 33 and random_curve[0] == curve[0]
        assert random_curve[-1] == pytest.approx(curve[-1])  # all voxels changed: the same image
        assert s.details["random_auc"] == pytest.approx(
            (random_curve.sum() - random_curve[0] / 2 - random_curve[-1] / 2) / 32)
    # the inverse map is worse than random at deletion; the reference does not depend on the map
    inverse = na.evaluate(Spot(), IMG, -FAITHFUL, "deletion", target=1, baseline=0.0, steps=32)
    assert inverse.value > inverse.details["random_auc"] == dele.details["random_auc"]


def test_random_reference_is_seeded_and_optional() -> None:
    kw: dict[str, Any] = {"target": 1, "baseline": 0.0, "steps": 16}
    a = na.evaluate(Spot(), IMG, FAITHFUL, "deletion", **kw)
    b = na.evaluate(Spot(), IMG, FAITHFUL, "deletion", **kw)
    c = na.evaluate(Spot(), IMG, FAITHFUL, "deletion", seed=1, **kw)
    np.testing.assert_array_equal(a.details["random_curve"], b.details["random_curve"])
    assert not np.array_equal(a.details["random_curve"], c.details["random_curve"])
    assert a.value == c.value  # the map's own curve does not depend on the seed
    off = na.evaluate(Spot(), IMG, FAITHFUL, "deletion", reference=False, **kw)
    assert off.value == a.value and "random_auc" not in off.details
    assert off.details["model_calls"] < a.details["model_calls"]
    assert {"curve", "fraction", "kind", "model_calls"} <= set(a.details)  # the keys callers already read


def test_random_reference_keeps_unexplained_voxels_last() -> None:
    """A map with NaN outside a box (an ROI run): the random order shuffles the explained voxels first."""
    boxed = np.full((16, 16), np.nan, np.float32)
    boxed[:8, :12] = FAITHFUL[:8, :12]
    s = na.evaluate(Spot(), IMG, boxed, "deletion", target=1, baseline=0.0, steps=16)
    # 96 of 256 voxels explained: after 6/16 of the voxels only explained voxels (64 of them the quadrant) went
    full = na.evaluate(Spot(), IMG, FAITHFUL, "deletion", target=1, baseline=0.0, steps=16)
    assert s.details["random_curve"][6] < full.details["random_curve"][6]


def test_randomisation_keeps_a_predicted_region_fixed() -> None:
    """A segmentation target taken from the prediction is explained over the same voxels on the randomised
    copies (a randomised model predicts other regions, or none)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        net[0].weight.fill_(1 / 9)
        net[0].bias.zero_()
        net[2].weight.zero_()
        net[2].bias.copy_(torch.tensor([0.0, -0.5]))
        net[2].weight[1, 0] = 1.0  # class 1 where the local mean of the first feature exceeds 0.5
    img = IMG + 0.05 * np.random.default_rng(1).random((16, 16)).astype(np.float32)
    att = na.explain(net, img, "saliency", Predicted(1))
    assert isinstance(att.target, Predicted)
    region = np.asarray(att.prediction) == 1
    assert 0 < region.sum() < region.size
    fixed = dataclasses.replace(att, target=Region(1, region))
    a = na.evaluate(net, img, att, "randomisation", max_layers=2)
    b = na.evaluate(net, img, fixed, "randomisation", max_layers=2)
    assert a.details["per_layer"] == b.details["per_layer"]


def test_localisation_metrics_report_one_step() -> None:
    rec = Recorder()
    na.evaluate(None, None, FAITHFUL, "energy_in_mask", mask=IMG > 0, progress=rec)
    assert rec.calls == [(1, 1, "energy_in_mask: done")]
