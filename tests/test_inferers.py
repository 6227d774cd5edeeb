"""The card's sliding-window inferer: the stitched prediction is MONAI's ``sliding_window_inference``, every
gradient method's map equals the same method run on autograd through MONAI's own function, layer methods blend
per-window maps, perturbations run only the windows they change, and the memory budget and cancellation hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from methods.test_model_unchanged import assert_untouched, snapshot
from torch import nn

import napari_attribution as na
from napari_attribution import targets as T
from napari_attribution.inferers import SlidingWindow, SlidingWindowNet, importance_map, window_slices

monai_inferers = pytest.importorskip("monai.inferers")
from monai.networks.nets import UNet  # noqa: E402

ROI = (32, 32, 32)
SHAPE = (50, 72, 61)  # odd sizes: border windows move back flush with the edge


def unet(out_channels: int = 2) -> nn.Module:
    torch.manual_seed(0)
    net = UNet(3, 1, out_channels, (4, 8, 16), (2, 2), num_res_units=1).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class MonaiWhole(nn.Module):
    """What a user writes today: the network inside MONAI's ``sliding_window_inference`` (every window's graph
    kept)."""

    def __init__(self, net: nn.Module, **kwargs: object) -> None:
        super().__init__()
        self.net = net
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return monai_inferers.sliding_window_inference(x, ROI, 1, self.net, **self.kwargs)


def card(mode: str = "gaussian", overlap: float = 0.25, out_channels: int = 2) -> dict:
    return {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "num_classes": out_channels,
            "inferer": {"type": "sliding_window", "roi_size": list(ROI), "overlap": overlap, "mode": mode}}


@pytest.fixture(scope="module")
def scan() -> np.ndarray:
    return np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_stitched_prediction_is_monais(mode: str, overlap: float, scan: np.ndarray) -> None:
    net = unet()
    x = torch.from_numpy(scan)[None, None]
    ours = SlidingWindowNet(net, SlidingWindow(roi_size=ROI, overlap=overlap, mode=mode))(x)
    theirs = monai_inferers.sliding_window_inference(x, ROI, 1, net, overlap=overlap, mode=mode)
    assert ours.shape == theirs.shape == (1, 2) + SHAPE
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding_mode", ["constant", "reflect", "replicate"])
def test_scan_smaller_than_the_window_is_padded_and_cropped_as_monai_does(padding_mode: str) -> None:
    net = unet()
    x = torch.randn(1, 1, 20, 40, 33)
    cval = 0.5 if padding_mode == "constant" else 0.0  # MONAI passes cval to F.pad, which takes it for constant only
    spec = SlidingWindow(roi_size=ROI, mode="gaussian", padding_mode=padding_mode, cval=cval)
    ours = SlidingWindowNet(net, spec)(x)
    theirs = monai_inferers.sliding_window_inference(x, ROI, 1, net, mode="gaussian", padding_mode=padding_mode,
                                                      cval=cval)
    assert ours.shape == (1, 2, 20, 40, 33)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_window_placement_and_weights_match_monai() -> None:
    from monai.data.utils import compute_importance_map, dense_patch_slices

    for size, roi, overlap in [((50, 72, 61), (32, 32, 32), 0.25), ((97, 64), (40, 64), 0.6), ((33,), (7,), 0.0)]:
        interval = [r if r == n else max(1, int(r * (1 - overlap))) for n, r in zip(size, roi, strict=True)]
        assert window_slices(size, roi, overlap) == dense_patch_slices(size, roi, interval)
    for roi in [(32, 32, 32), (17, 40)]:
        for sigma in (0.125, 0.3):
            ours = importance_map(roi, "gaussian", sigma)
            theirs = compute_importance_map(roi, mode="gaussian", sigma_scale=sigma)
            assert torch.allclose(ours, theirs, atol=1e-7)


GRADIENT_METHODS = [("saliency", None), ("input_x_gradient", None), ("integrated_gradients", {"steps": 3}),
                    ("smoothgrad", {"samples": 2}), ("guided_backprop", None), ("deconvnet", None)]


@pytest.mark.parametrize(("method", "params"), GRADIENT_METHODS)
def test_gradient_methods_equal_autograd_through_monais_sliding_window(method: str, params: dict | None,
                                                                         scan: np.ndarray) -> None:
    net = unet()
    mask = np.zeros(SHAPE, bool)
    mask[10:40, 20:50, 5:55] = True
    target = T.Region(1, mask)
    loaded = na.LoadedModel(net, na.ModelCard.from_dict(card()))
    ours = na.explain(loaded, scan, method, target, params=params)
    plain = na.LoadedModel(MonaiWhole(net, overlap=0.25, mode="gaussian"),
                           na.ModelCard.from_dict({k: v for k, v in card().items() if k != "inferer"}))
    theirs = na.explain(plain, scan, method, target, params=params)
    r = np.corrcoef(ours.data.ravel(), theirs.data.ravel())[0, 1]
    assert r > 0.999, (method, r)
    assert np.allclose(ours.data, theirs.data, atol=1e-4 * float(np.abs(theirs.data).max()))


def test_a_voxel_target_attributes_only_inside_the_windows_that_see_it(scan: np.ndarray) -> None:
    net = unet()
    loaded = na.LoadedModel(net, na.ModelCard.from_dict(card(mode="constant")))
    att = na.explain(loaded, scan, "saliency", T.Voxel(1, (3, 4, 5)))
    # the voxel lies only in the windows starting at 0 along every axis: they cover [0, 32)^3
    inside = np.zeros(SHAPE, bool)
    inside[:32, :32, :32] = True
    assert np.count_nonzero(att.data[inside]) > 0
    assert np.count_nonzero(att.data[~inside]) == 0


def test_gradients_skip_the_windows_a_target_does_not_reach(scan: np.ndarray) -> None:
    net = unet()
    sw = SlidingWindowNet(net, SlidingWindow(roi_size=ROI))
    x = torch.from_numpy(scan)[None, None].requires_grad_(True)
    y = sw(x)
    forward = sw.windows_run
    torch.autograd.grad(y[0, 1, 3, 4, 5], x)
    assert len(sw.plan(SHAPE)) == 18
    assert sw.windows_run - forward == 1  # only the one window that holds voxel (3, 4, 5)


def test_layer_methods_blend_per_window_maps_and_equal_the_whole_scan_map_with_one_window(scan: np.ndarray) -> None:
    net = unet()
    whole = na.LoadedModel(net, na.ModelCard.from_dict({k: v for k, v in card().items() if k != "inferer"}))
    small = scan[:32, :32, :32].copy()
    one = na.LoadedModel(net, na.ModelCard.from_dict(card()))  # roi == scan: one window, weights cancel
    for method in ("grad_cam", "hires_cam", "layer_activation"):
        a = na.explain(whole, small, method, T.Class(1), layer="model.1.submodule.0")
        b = na.explain(one, small, method, T.Class(1), layer="model.1.submodule.0")
        assert b.extras["windows"] == 1
        assert np.allclose(a.data, b.data, atol=1e-5 * max(1e-12, float(np.abs(a.data).max()))), method
    many = na.explain(na.LoadedModel(net, na.ModelCard.from_dict(card())), scan, "grad_cam", T.Class(1),
                      layer="model.1.submodule.0")
    assert many.extras["windows"] == 18 and many.data.shape == SHAPE
    assert np.isfinite(many.data).all() and many.data.min() >= 0 and many.data.max() > 0


def test_occlusion_runs_only_the_changed_windows_and_equals_the_plain_run(scan: np.ndarray) -> None:
    net = unet()
    small = scan[:40, :40, :36].copy()
    params = {"window": 8, "stride": 8}
    target = T.Region(1, np.ones(small.shape, bool))
    plain = na.LoadedModel(MonaiWhole(net, overlap=0.25, mode="constant"),
                           na.ModelCard.from_dict({k: v for k, v in card().items() if k != "inferer"}))
    theirs = na.explain(plain, small, "occlusion", target, params=params)
    loaded = na.LoadedModel(net, na.ModelCard.from_dict(card(mode="constant")))
    ours = na.explain(loaded, small, "occlusion", target, params=params)
    # the score is a sum of 57,600 probabilities: float32 sums agree to ~1e-7 of it, not of the map's range
    assert np.allclose(ours.data, theirs.data, atol=1e-7 * small.size, rtol=0)
    assert np.corrcoef(ours.data.ravel(), theirs.data.ravel())[0, 1] > 0.99999


def test_occlusion_runs_only_the_windows_each_patch_changes() -> None:
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=0).eval()
    small = np.random.default_rng(1).normal(size=(64, 64, 56)).astype(np.float32)
    c = card(mode="constant")
    c["inferer"]["roi_size"] = [16, 16, 16]
    counted: list[int] = []
    original = SlidingWindowNet._accumulate

    def counting(self, xp, plan, items, what, acc=None, sign=1.0):  # type: ignore[no-untyped-def]
        counted.append(len(items))
        return original(self, xp, plan, items, what, acc, sign)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SlidingWindowNet, "_accumulate", counting)
        na.explain(na.LoadedModel(net, na.ModelCard.from_dict(c)), small, "occlusion", T.Class(1),
                   params={"window": 8, "stride": 8})
    n_windows = len(SlidingWindow(roi_size=(16, 16, 16)).plan(small.shape))
    assert n_windows == 125
    occlusions = 8 * 8 * 7
    # a patch of 8^3 lies in 1-8 of the 125 windows: the run costs a few percent of running every window each time
    assert sum(counted) < 0.1 * occlusions * n_windows, sum(counted) / (occlusions * n_windows)
    # every window runs whole once: the unperturbed input's pass fixes the target and is the reference
    assert counted.count(n_windows) == 1, counted[:5]


def test_a_budget_too_small_is_refused_before_the_windows_run(scan: np.ndarray) -> None:
    net = unet()
    loaded = na.LoadedModel(net, na.ModelCard.from_dict(card()))
    before = snapshot(net)
    with pytest.raises(na.MemoryBudgetError, match=r"memory_budget of at least \d+ bytes"):
        na.explain(loaded, scan, "saliency", T.Class(1), params={"memory_budget": 2**20})
    assert_untouched(net, before)


def test_windows_are_batched_up_to_the_budget(scan: np.ndarray) -> None:
    net = unet()
    sizes: list[int] = []
    original = net.forward

    def spy(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        return original(x)

    net.forward = spy  # type: ignore[method-assign]
    sw = SlidingWindowNet(net, SlidingWindow(roi_size=ROI))
    sw.budget = 2**30
    sw(torch.from_numpy(scan)[None, None])
    assert max(sizes) > 1 and sum(sizes[1:]) == 18  # the first call measures one window
    sizes.clear()
    sw2 = SlidingWindowNet(net, SlidingWindow(roi_size=ROI, sw_batch_size=4))
    sw2(torch.from_numpy(scan)[None, None])
    assert sizes[1:] == [4, 4, 4, 4, 2]


def test_cancel_answers_within_one_chunk_of_windows_and_progress_counts_windows(scan: np.ndarray) -> None:
    net = unet()
    c = card()
    c["inferer"]["sw_batch_size"] = 1  # a chunk is one window (by default a chunk takes up to 2 s)
    loaded = na.LoadedModel(net, na.ModelCard.from_dict(c))
    seen: list[str] = []
    before = snapshot(net)

    def progress(done: int, total: int, message: str) -> None:
        seen.append(message)

    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return any("backward: windows 3/18" in m for m in seen)

    with pytest.raises(na.Cancelled):
        na.explain(loaded, scan, "saliency", T.Class(1), progress=progress, cancel=cancel)
    assert any("forward: windows 18/18" in m for m in seen)
    assert not any("backward: windows 4/18" in m for m in seen)
    assert_untouched(net, before)


def test_methods_that_cannot_run_through_an_inferer_say_which_can(scan: np.ndarray) -> None:
    loaded = na.LoadedModel(unet(), na.ModelCard.from_dict(card()))
    with pytest.raises(na.MethodError, match="saliency"):
        na.explain(loaded, scan, "sam", T.Class(1))
    facts = {i.name: i.sliding_window for i in na.list_methods()}
    assert facts["saliency"] == "exact" and facts["guided_backprop"] == "exact"
    assert facts["grad_cam"] == "per-window" and facts["occlusion"] == "changed windows"
    assert facts["vebi"] is None


def test_a_patch_classifier_is_the_mean_of_its_windows() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    sw = SlidingWindowNet(net, SlidingWindow(roi_size=(16, 16, 16), overlap=0.5))
    x = torch.randn(1, 1, 24, 20, 16)
    plan = sw.plan(x.shape[2:])
    want = torch.stack([net(x[(slice(None), slice(None), *sl)]) for sl in plan.slices]).mean(0)
    assert torch.allclose(sw(x), want, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(sw(xg)[0, 2], xg)
    xr = x.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(torch.stack([net(xr[(slice(None), slice(None), *sl)]) for sl in plan.slices])
                                .mean(0)[0, 2], xr)
    assert torch.allclose(g, gr, atol=1e-6)


@pytest.mark.parametrize(("inferer", "message"), [
    ({"roi_size": [32, 32]}, "needs 3 values"),
    ({"roi_size": [32, 32, 32], "overlap": 1.0}, "overlap"),
    ({"roi_size": [32, 32, 32], "mode": "linear"}, "mode"),
    ({"roi_size": [32, 32, 32], "roi": 3}, "unknown key"),
    ({"type": "patch", "roi_size": [32, 32, 32]}, "type"),
    ({"overlap": 0.5}, "roi_size"),
])
def test_bad_inferer_fields_are_refused_by_name(inferer: dict, message: str) -> None:
    with pytest.raises(na.ModelLoadError, match=message):
        na.ModelCard.from_dict({"spatial_dims": 3, "inferer": inferer})


def test_input_shape_and_an_inferer_are_one_too_many() -> None:
    with pytest.raises(na.ModelLoadError, match="Remove one of them"):
        na.ModelCard.from_dict({"input_shape": [64, 64, 64], "inferer": {"roi_size": [64, 64, 64]}})


def test_patch_size_alone_never_switches_tiling_on(scan: np.ndarray) -> None:
    net = unet()
    c = na.ModelCard.from_dict({k: v for k, v in card().items() if k != "inferer"} | {"patch_size": [32, 32, 32]})
    assert c.inferer is None and c.sliding_window is None
    calls: list[tuple[int, ...]] = []
    net.register_forward_pre_hook(lambda m, a: calls.append(tuple(a[0].shape[2:])))
    na.explain(na.LoadedModel(net, c), scan[:40, :40, :40].copy(), "saliency", T.Class(1))
    assert calls == [(40, 40, 40)]


def test_a_window_the_network_cannot_take_gets_one_message_naming_roi_size(scan: np.ndarray) -> None:
    net = unet()
    c = dict(card())
    c["inferer"] = {"type": "sliding_window", "roi_size": [30, 30, 30]}
    with pytest.raises(na.InputShapeError, match="roi_size"):
        na.explain(na.LoadedModel(net, na.ModelCard.from_dict(c)), scan, "saliency", T.Class(1))


def test_a_whole_scan_too_big_for_the_budget_is_refused_before_its_first_pass() -> None:
    net = unet()
    shapes: list[tuple[int, ...]] = []
    handle = net.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape[2:])))
    scan = np.random.default_rng(2).normal(size=(72, 80, 68)).astype(np.float32)
    whole = na.LoadedModel(net, na.ModelCard.from_dict({k: v for k, v in card().items() if k != "inferer"}))
    try:
        with pytest.raises(na.MemoryBudgetError, match=r"memory_budget of at least (\d+) bytes") as err:
            na.explain(whole, scan, "saliency", T.Class(1), params={"memory_budget": 8 * 2**20})
        assert (72, 80, 68) not in shapes  # only the two small trial crops ran
        need = int(str(err.value).split("at least ")[1].split(" bytes")[0])
        # the estimate is what autograd really keeps for the whole scan, plus the scan-sized buffers
        from napari_attribution.methods._hooks import saved_tensor_meter

        with torch.enable_grad(), saved_tensor_meter() as saved:
            net(torch.from_numpy(scan)[None, None].requires_grad_(True))
        buffers = 4 * scan.size * (2 + 4)
        assert 0.8 < (need - buffers) / saved.bytes < 1.25
        shapes.clear()
        na.explain(whole, scan, "saliency", T.Class(1), params={"memory_budget": need})
        assert (72, 80, 68) in shapes
    finally:
        handle.remove()


def test_patch_local_blends_each_windows_own_explanation(scan: np.ndarray) -> None:
    net = unet()
    loaded = na.LoadedModel(net, na.ModelCard.from_dict(card(mode="gaussian")))
    ours = na.explain(loaded, scan, "saliency", T.Class(1), params={"patch_local": True})
    assert ours.extras["patch_local"] and ours.extras["windows"] == 18
    # by hand: the network alone on every window, its own saliency, blended with the Gaussian weights
    plain = na.LoadedModel(net, na.ModelCard.from_dict({k: v for k, v in card().items() if k != "inferer"}))
    plan = SlidingWindow(roi_size=ROI, mode="gaussian").plan(SHAPE)
    w = importance_map(ROI, "gaussian").numpy()
    acc = np.zeros(SHAPE, np.float64)
    den = np.zeros(SHAPE, np.float64)
    for sl in plan.slices:
        acc[sl] += w * na.explain(plain, scan[sl].copy(), "saliency", T.Class(1)).data
        den[sl] += w
    assert np.allclose(ours.data, acc / den, atol=1e-5 * np.abs(acc / den).max())
    # the prediction is the stitched one
    stitched = SlidingWindowNet(net, SlidingWindow(roi_size=ROI, mode="gaussian"))(torch.from_numpy(scan)[None, None])
    assert np.array_equal(ours.prediction, stitched[0].argmax(0).numpy())


def test_patch_local_runs_methods_a_global_target_cannot_and_restricts_points_to_their_windows(
        scan: np.ndarray) -> None:
    net = unet()
    loaded = na.LoadedModel(net, na.ModelCard.from_dict(card()))
    att = na.explain(loaded, scan, "sam", T.Class(1), layer="model.1.submodule.0", params={"patch_local": True})
    assert att.data.shape == SHAPE and np.isfinite(att.data).all()
    point = na.explain(loaded, scan, "saliency", T.Voxel(1, (3, 4, 5)), params={"patch_local": True})
    assert point.extras["windows_explained"] == 1
    assert np.count_nonzero(point.data[32:]) == 0 and np.count_nonzero(point.data[:32, :32, :32]) > 0
    region = np.zeros(SHAPE, bool)
    region[40:48, 60:70, 50:58] = True  # only in the last windows
    part = na.explain(loaded, scan, "saliency", T.Region(1, region), params={"patch_local": True})
    assert 0 < part.extras["windows_explained"] < 18


def test_patch_local_needs_an_inferer(scan: np.ndarray) -> None:
    plain = na.LoadedModel(unet(), na.ModelCard.from_dict({k: v for k, v in card().items() if k != "inferer"}))
    with pytest.raises(na.ParameterError, match="no inferer"):
        na.explain(plain, scan[:32, :32, :32].copy(), "saliency", T.Class(1), params={"patch_local": True})


def test_the_automatic_layer_is_found_on_one_window_not_on_the_whole_scan(scan: np.ndarray) -> None:
    net = unet()
    shapes: list[tuple[int, ...]] = []
    handle = net.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
    try:
        att = na.explain(na.LoadedModel(net, na.ModelCard.from_dict(card())), scan, "grad_cam", T.Class(1))
    finally:
        handle.remove()
    assert att.layer and att.data.shape == SHAPE
    assert all(s[2:] == ROI for s in shapes)  # every call of the network saw windows only


def test_compare_of_gradient_and_layer_methods_through_an_inferer_equals_single_runs(scan: np.ndarray) -> None:
    loaded = na.LoadedModel(unet(), na.ModelCard.from_dict(card()))
    both = na.compare(loaded, scan, ["saliency", "grad_cam", "guided_backprop"], T.Class(1),
                      layer="model.1.submodule.0")
    for name in ("saliency", "grad_cam", "guided_backprop"):
        alone = na.explain(loaded, scan, name, T.Class(1), layer="model.1.submodule.0")
        assert np.allclose(both[name].data, alone.data, atol=1e-6 * max(1e-12, float(np.abs(alone.data).max())))
    local = na.explain(loaded, scan, "saliency", T.Class(1), params={"patch_local": True})
    assert local.seconds > 0


def test_multi_sample_gradients_skip_the_stitched_forward_and_equal_autograd_through_it(scan: np.ndarray) -> None:
    """Integrated gradients and SmoothGrad with a logit target go window by window without a stitched forward
    first (the output gradient of a logit target is its weights); on a resampled grid that equals autograd through
    the stitched output, the resampling's adjoint included."""
    from napari_attribution.methods._run import Run

    net = unet()
    c = card()
    c["spacing"] = [2.0, 1.5, 1.5]
    loaded = na.LoadedModel(net, na.ModelCard.from_dict(c))
    geometry = na.Geometry(spacing=(2.5, 1.0, 1.2), origin=(0.0, 0.0, 0.0))
    small = scan[:40, :50, :44].copy()
    target = T.Region(1, np.pad(np.ones((20, 30, 24), bool), ((10, 10), (10, 10), (10, 10))))
    calls: list[int] = []
    original = Run._windowed_logit_gradient

    def spy(self: Run, xs: torch.Tensor) -> torch.Tensor:
        calls.append(xs.shape[0])
        return original(self, xs)

    for method, params in (("integrated_gradients", {"steps": 3}), ("smoothgrad", {"samples": 2})):
        calls.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Run, "_windowed_logit_gradient", spy)
            fused = na.explain(loaded, small, method, target, params=params, geometry=geometry)
        assert sum(calls) == (params.get("steps") or params.get("samples")), (method, calls)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Run, "windows", property(lambda self: None, lambda self, v: None), raising=False)
            mp.setattr(Run, "_windowed_logit_gradient", lambda self, xs: (_ for _ in ()).throw(AssertionError()))
            plain_run = na.explain(loaded, small, method, target, params={**params}, geometry=geometry)
        assert fused.extras["model_grid_shape"] != small.shape
        assert np.allclose(fused.data, plain_run.data, atol=1e-4 * float(np.abs(plain_run.data).max())), method
