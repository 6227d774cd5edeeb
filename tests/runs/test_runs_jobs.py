"""The Qt-free job layer (no viewer): cost estimates, boxes, the agreement table, outcomes never raise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution.runs.jobs import (
    ExplainRequest,
    agreement_table,
    estimate_passes,
    run_job,
)
from napari_attribution.runs.model_info import RecentModels, model_info


def classifier3d() -> torch.nn.Module:
    torch.manual_seed(0)
    from _nets import Classifier

    return Classifier(d=3, classes=2).eval()


@pytest.mark.parametrize(("method", "params", "shape", "expected"), [
    ("saliency", {}, (8, 16, 16), 1),
    ("integrated_gradients", {"steps": 12}, (8, 16, 16), 12),
    ("smoothgrad", {"samples": 5, "base": "integrated_gradients", "base_params": {"steps": 4}}, (16, 16), 20),
    ("occlusion", {"window": 8, "stride": 4}, (16, 16), 3 * 3 + 1),
    ("rise", {"masks": 100}, (16, 16), 101),
    ("guided_grad_cam", {}, (16, 16), 2),
    ("evidence", {"window": 6, "stride": 3}, (16, 16), 5 * 5 + 1),  # starts 0, 3, 6, 9 and 10 (flush)
    ("evidence", {"window": 6, "stride": 3, "mode": "taylor"}, (16, 16), 2),
    ("evidence", {"window": 6, "stride": 3, "mode": "screened", "screen": 0.5}, (16, 16), 2 + 13),
    ("prediction_difference", {"window": 6, "stride": 3, "samples": 4}, (16, 16), 1 + 25 * 4),
    ("evidence", {}, (8, 16, 16), 3 * 7 * 7 + 1),  # default 5^3 windows at stride 2, plus the flush ones
])
def test_estimate_passes(method: str, params: dict, shape: tuple, expected: float) -> None:
    passes, upper = estimate_passes(method, params, shape)
    assert passes == expected and not upper


@pytest.mark.parametrize(("method", "params"), [
    ("evidence", {}), ("evidence", {"mode": "screened", "screen": 0.3}), ("prediction_difference", {"samples": 3}),
])
def test_estimate_of_window_methods_counts_the_passes_they_run(method: str, params: dict) -> None:
    """The estimate (which decides whether the dock asks before a long run) is the number of images the method
    really sends through the model."""
    from _nets import image

    seen: list[int] = []

    class Counting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = classifier3d()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[0])
            return self.net(x)

    shape = (8, 12, 12)
    na.explain(Counting(), image(shape), method, 1, params={"patches": 2000, **params})
    passes, upper = estimate_passes(method, params, shape)
    assert passes == sum(seen) and not upper


def test_a_new_method_is_costed_from_its_registry_entry() -> None:
    """``estimate_passes`` and ``pass_kinds`` read the registry entry (before: an if-chain on method names gave any
    other method one full pass)."""
    from napari_attribution.methods import _registry, register
    from napari_attribution.methods._registry import Cost
    from napari_attribution.runs.jobs import pass_kinds

    def fn(run: object, params: dict) -> object:
        raise AssertionError

    register("_test_windows", label="x", family="perturbation", passes="n F", paper="-", params={"n": 3},
             cost=lambda p, spatial, channels: Cost(p["n"] * spatial[0] + 1.0), pass_kind="forward")(fn)
    try:
        assert estimate_passes("_test_windows", {}, (16, 16)) == (49.0, False)
        assert estimate_passes("_test_windows", {"n": 1}, (16, 16)) == (17.0, False)
        assert pass_kinds("_test_windows", {}, 49.0) == (49.0, 0.0)
    finally:
        _registry._REGISTRY.pop("_test_windows", None)


def test_estimate_of_adaptive_ig_is_an_upper_bound() -> None:
    passes, upper = estimate_passes("integrated_gradients", {"steps": "auto", "max_steps": 64}, (8, 8))
    assert passes == 64 and upper


def test_agreement_table_subsamples_large_maps_and_matches_on_small_ones() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 30, 30)).astype(np.float32)
    b = a + 0.1 * rng.normal(size=a.shape).astype(np.float32)
    a[0] = np.nan
    full = agreement_table({"a": a, "b": b}, 0.05)
    sub = agreement_table({"a": a, "b": b}, 0.05, max_voxels=5000)
    assert full["voxels"] == 19 * 900 and full["methods"] == ["a", "b"]
    assert full["spearman"][0][1] > 0.95 and abs(sub["spearman"][0][1] - full["spearman"][0][1]) < 0.02
    assert 0 < full["topk"][0][1] <= 1 and full["topk"][0][0] == 1


def test_run_job_returns_outcomes_never_raises() -> None:
    info = model_info(classifier3d(), "test net")
    img = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    ok = run_job(ExplainRequest(model=info, image=img, source="img", methods=["saliency"], target=1))
    assert ok.status == "ok" and len(ok.layers) == 1 and ok.layers[0][1]["name"] == "saliency · class 1 · img"
    bad = run_job(ExplainRequest(model=info, image=img[0], source="img", methods=["saliency"]))
    assert bad.status == "failed" and "3D" in bad.message
    cancelled = run_job(ExplainRequest(model=info, image=img, source="img", methods=["saliency"]),
                        cancel=lambda: True)
    assert cancelled.status == "cancelled" and not cancelled.layers
    unknown = run_job(ExplainRequest(model=info, image=img, source="img", methods=["gradcam"]))
    assert unknown.status == "failed" and "Known methods" in unknown.message


def test_run_job_box_pastes_into_the_full_grid() -> None:
    info = model_info(classifier3d(), "test net")
    img = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    out = run_job(ExplainRequest(model=info, image=img, source="img", methods=["saliency"],
                                 roi=((0, 8), (2, 10), (4, 12))))
    data = out.layers[0][0]
    assert data.shape == img.shape and np.isfinite(data[:, 2:10, 4:12]).all() and np.isnan(data[:, :2]).all()


def test_run_job_asks_before_a_long_run() -> None:
    info = model_info(classifier3d(), "test net")
    img = np.zeros((8, 16, 16), np.float32)
    out = run_job(ExplainRequest(model=info, image=img, source="img", methods=["occlusion"],
                                 params={"occlusion": {"window": 2, "stride": 1}}, confirm_above=1e-9))
    assert out.status == "confirm" and out.estimate is not None and out.estimate.passes > 100
    assert "passes" in out.message


def test_recent_models_keep_files_newest_first(tmp_path) -> None:  # type: ignore[no-untyped-def]
    recent = RecentModels(tmp_path / "r.json", size=2)
    for src in ("a.pt", "demo:x", "b.pt", "a.pt"):
        recent.add(src)
    assert recent.list() == ["a.pt", "b.pt"]
