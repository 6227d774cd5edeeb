"""The cost estimate of a run through the card's sliding-window inferer counts windows: one window is timed on the
network itself (never the whole stitched network), and the window runs follow the sliding-window pass structure
(gradient: a stitched forward + a forward + backward per window; layer: a stitched forward + a forward + partial
backward per window; perturbation: the windows each perturbation changes). Checked against measured run times."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution.runs import jobs
from napari_attribution.runs.jobs import ExplainRequest, _estimate, changed_windows, run_job, window_passes
from napari_attribution.runs.model_info import model_info

pytest.importorskip("monai")
from monai.networks.nets import UNet  # noqa: E402

ROI = (32, 32, 32)
SHAPE = (50, 72, 61)


def card(inferer: bool = True) -> na.ModelCard:
    d = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "num_classes": 2}
    if inferer:
        d["inferer"] = {"type": "sliding_window", "roi_size": list(ROI), "overlap": 0.25, "mode": "gaussian"}
    return na.ModelCard.from_dict(d)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1).eval()


@pytest.fixture(scope="module")
def scan() -> np.ndarray:
    return np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


def test_one_window_is_timed_never_the_stitched_network(net, scan, monkeypatch) -> None:
    timed: list[tuple[int, ...]] = []
    real = jobs._pass_seconds

    def spy(module, x, device):
        timed.append(tuple(x.shape))
        return real(module, x, device)

    monkeypatch.setattr(jobs, "_pass_seconds", spy)
    info = model_info(na.LoadedModel(net, card()), "unet")
    req = ExplainRequest(model=info, image=scan, source="s", methods=["saliency"])
    est = _estimate(req, scan, 0, SHAPE)
    assert timed == [(1, 1, *ROI)]
    # one pass of the whole network would not be worth timing; 18 windows' forward + backward are
    plan = card().sliding_window.plan(SHAPE)
    assert est is not None and est.windows == plan.count() == 18
    assert (est.forward_passes, est.passes - est.forward_passes - est.partial_passes) == (18, 18)
    assert "18 windows" in est.text() and "one window measured" in est.text()
    assert _estimate(req, scan, 0, SHAPE) == est and timed == [(1, 1, *ROI)]  # cached with its model grid
    plain = model_info(na.LoadedModel(net, card(inferer=False)), "unet")
    assert _estimate(ExplainRequest(model=plain, image=scan, source="s", methods=["saliency"]), scan, 0,
                     SHAPE) is None


def test_window_runs_per_method_family(scan) -> None:
    plan = card().sliding_window.plan(SHAPE)
    W = plan.count()

    def runs(method: str, params: dict) -> tuple[float, float, float]:
        info = na.get_method(method)
        return window_passes(info, params, info.estimate(params, SHAPE), plan, SHAPE)

    assert runs("saliency", {}) == (W, W, 0)  # a stitched forward, then each window's forward + backward
    assert runs("grad_cam", {}) == (W, 0, W)  # a stitched forward, then each window's forward + partial backward
    assert runs("layer_activation", {}) == (2 * W, 0, 0)
    assert runs("integrated_gradients", {"steps": 4}) == (W + 4 * W, 4 * W, 0)  # the target's forward first
    passes = na.get_method("rise").estimate({}, SHAPE).passes
    assert runs("rise", {}) == (W + passes * W, 0, 0)  # the reference, then every window per mask
    occl = na.get_method("occlusion").estimate({"window": 16, "stride": 16}, SHAPE).passes
    f, b, p = runs("occlusion", {"window": 16, "stride": 16})
    # the reference (the target's pass too), the changed windows' reference outputs once each, the changed windows
    assert b == p == 0 and 2 * W + occl * 1 <= f <= 2 * W + occl * W / 2


def test_mirrored_windows_count_once_per_mirror() -> None:
    """nnU-Net's test-time mirroring runs each window once per mirror (8 for three axes), except in a layer method's
    per-window pass (one un-mirrored pass per window)."""
    spec = na.ModelCard.from_dict({"spatial_dims": 3, "inferer": {"type": "sliding_window", "roi_size": list(ROI),
                                                                  "mirror_axes": [0, 1, 2]}}).sliding_window
    plan = spec.plan(SHAPE)
    W = plan.count()

    def runs(method: str) -> tuple[float, float, float]:
        info = na.get_method(method)
        return window_passes(info, {}, info.estimate({}, SHAPE), plan, SHAPE)

    assert runs("saliency") == (8 * W, 8 * W, 0)
    assert runs("grad_cam") == (8 * W, 0, W)


def test_patch_local_runs_the_method_on_each_window() -> None:
    plan = card().sliding_window.plan(SHAPE)
    W = plan.count()

    def runs(method: str, params: dict) -> tuple[float, float, float]:
        info = na.get_method(method)
        return window_passes(info, params, info.estimate(params, SHAPE), plan, SHAPE)

    assert runs("saliency", {"patch_local": True}) == (W, W, 0)  # the stitched prediction, one F+B per window
    assert runs("integrated_gradients", {"steps": 8, "patch_local": True}) == (W, 8 * W, 0)
    local = na.get_method("occlusion").estimate({"window": 8}, ROI).passes  # occlusion's windows in one window
    assert runs("occlusion", {"window": 8, "patch_local": True}) == (W + W * local, 0, 0)


def test_changed_windows_is_the_mean_coverage(scan) -> None:
    """A one-voxel box at every voxel changes, on average, as many windows as cover a voxel on average; a box as
    large as the scan changes all of them; the same on a scan smaller than the window (padded)."""
    for shape in (SHAPE, (20, 40, 33)):
        plan = card().sliding_window.plan(shape)
        cover = np.zeros(plan.padded)
        for sl in plan.slices:
            cover[sl] += 1
        crop = cover[plan.crop()]
        expected = crop.mean()
        if 2 * crop.max() > plan.count():
            expected = np.where(2 * crop > plan.count(), plan.count(), crop).mean()
        got = changed_windows(plan, (1, 1, 1), (1, 1, 1), shape)
        assert got == pytest.approx(expected)
        assert changed_windows(plan, shape, (1, 1, 1), shape) == plan.count()


def test_a_windowed_run_asks_before_it_starts(net, scan) -> None:
    """The dock's "ask before a long run" sees the windows: the confirmation names them."""
    info = model_info(na.LoadedModel(net, card()), "unet")
    out = run_job(ExplainRequest(model=info, image=scan, source="s", methods=["saliency"], confirm_above=0.0))
    assert out.status == "confirm" and out.estimate is not None and out.estimate.windows == 18
    assert "18 windows over the scan" in out.message


def test_a_2d_inferer_on_a_volume_counts_the_slices_windows(scan) -> None:
    """A 2D model with a 2D inferer on a volume: one slice (the dock's "current slice") costs its own windows, the
    whole volume as many times more as it has slices."""
    torch.manual_seed(0)
    net2d = UNet(2, 1, 2, (4, 8), (2,), num_res_units=0).eval()
    card2d = na.ModelCard.from_dict({"task": "segmentation", "spatial_dims": 2, "in_channels": 1, "num_classes": 2,
                                     "inferer": {"type": "sliding_window", "roi_size": [32, 32]}})
    info = model_info(na.LoadedModel(net2d, card2d), "unet2d")
    W = card2d.sliding_window.plan(SHAPE[1:]).count()
    one = _estimate(ExplainRequest(model=info, image=scan, source="s", methods=["saliency"], slices=[7]), scan, 0,
                    SHAPE, cheap=0)
    whole = _estimate(ExplainRequest(model=info, image=scan, source="s", methods=["saliency"]), scan, 0, SHAPE,
                      cheap=0)
    assert one is not None and whole is not None and one.windows == whole.windows == W == 9
    assert (one.passes, one.forward_passes) == (2 * W, W)
    assert whole.passes == SHAPE[0] * one.passes and whole.seconds == pytest.approx(SHAPE[0] * one.seconds)
