"""Mathematical invariants and slow reference implementations written from the papers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import MODELS, Classifier, TinyUNet, image, seeded
from torch import nn

import napari_attribution as na

K = 1


def _layer_pass(model: nn.Module, layer: nn.Module, x: torch.Tensor, score) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: activation A and dT/dA of ``layer`` using a tensor hook (independent of our _hooks)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = layer.register_forward_hook(hook)
    try:
        s = score(model(x.clone().requires_grad_()))
        s.sum().backward()
    finally:
        h.remove()
    return store["a"].detach(), store["a"].grad.detach()


def _up(m: torch.Tensor, size: tuple[int, ...]) -> np.ndarray:
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return torch.nn.functional.interpolate(m, size=size, mode=mode, align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("case", ["cnn2d", "cnn3d", "unet3d"])
def test_ig_completeness_gauss_legendre_64(case: str) -> None:
    make, shape = MODELS[case]
    model = make()
    img = image(shape)
    res = na.explain(model, img, "integrated_gradients", K, params={"steps": 64, "baseline": 0.0})
    c = res.extras["completeness"]
    x = torch.from_numpy(img)[None, None]
    with torch.no_grad():
        out, base = model(x), model(torch.zeros_like(x))
        if case == "unet3d":
            region = out.argmax(1) == K
            fx, fb = out[:, K][region].sum(), base[:, K][region].sum()
        else:
            fx, fb = out[0, K], base[0, K]
    delta = float(fx - fb)
    assert abs(c["delta"] - delta) <= 1e-4 * max(1.0, abs(delta))
    total = float(res.data.sum())
    if abs(delta) < 1e-2:
        assert abs(total - delta) < 1e-4
    else:
        assert abs(total - delta) / abs(delta) < 0.01, (total, delta)


@pytest.mark.parametrize("base", ["saliency", "input_x_gradient", "guided_backprop", "deconvnet",
                                  "integrated_gradients"])
def test_smoothgrad_sigma_zero_equals_base(base: str) -> None:
    make, shape = MODELS["cnn2d"]
    model = make()
    img = image(shape)
    base_params = {"steps": 8} if base == "integrated_gradients" else None
    sg = na.explain(model, img, "smoothgrad", K,
                    params={"base": base, "sigma": 0.0, "samples": 3, "base_params": base_params})
    ref = na.explain(model, img, base, K, params=base_params or {})
    np.testing.assert_allclose(sg.data, ref.data, rtol=1e-5, atol=1e-9)


def test_smoothgrad_rejects_non_gradient_base() -> None:
    make, shape = MODELS["cnn2d"]
    with pytest.raises(na.MethodError, match="gradient method"):
        na.explain(make(), image(shape), "smoothgrad", K, params={"base": "occlusion"})


@pytest.mark.parametrize("d", [2, 3])
def test_cam_equals_grad_cam_without_relu_up_to_scale(d: int) -> None:
    model = seeded(Classifier(d))
    shape = (24, 24) if d == 2 else (8, 12, 12)
    img = image(shape)
    x = torch.from_numpy(img)[None, None]
    a, g = _layer_pass(model, model.features, x, lambda out: out[:, K])
    signed_gradcam = (g.mean(dim=tuple(range(2, g.ndim)), keepdim=True) * a).sum(1, keepdim=True)
    cam = na.explain(model, img, "cam", K, layer="features").data
    ratio = cam / _up(signed_gradcam, shape)
    z = np.prod(a.shape[2:])
    np.testing.assert_allclose(ratio[np.abs(cam) > 1e-3 * np.abs(cam).max()], z, rtol=1e-3)
    # CAM is the class-weighted sum of feature maps with the linear head's weights (Zhou et al.)
    w = model.head.weight[K].detach().view(1, -1, *([1] * d))
    np.testing.assert_allclose(cam, _up((w * a).sum(1, keepdim=True), shape), rtol=1e-4, atol=1e-6)
    gc = na.explain(model, img, "grad_cam", K, layer="features").data
    np.testing.assert_allclose(gc, _up(signed_gradcam.clamp(min=0), shape), rtol=1e-4, atol=1e-7)


def test_cam_refuses_a_layer_without_gap_linear_head() -> None:
    model = seeded(TinyUNet(3))
    with pytest.raises(na.MethodError, match="global average pooling"):
        na.explain(model, image((8, 12, 12)), "cam", K, layer="bottleneck")


@pytest.mark.parametrize("case", ["cnn2d", "unet3d"])
def test_hires_and_grad_cam_pp_reference(case: str) -> None:
    make, shape = MODELS[case]
    model = make()
    img = image(shape)
    x = torch.from_numpy(img)[None, None]
    name = "features" if case == "cnn2d" else "bottleneck"
    layer = dict(model.named_modules())[name]
    if case == "unet3d":
        with torch.no_grad():
            region = model(x).argmax(1) == K
        score = lambda out: (out[:, K] * region).flatten(1).sum(1)  # noqa: E731
    else:
        score = lambda out: out[:, K]  # noqa: E731
    a, g = _layer_pass(model, layer, x, score)
    hires = na.explain(model, img, "hires_cam", K, layer=name).data
    np.testing.assert_allclose(hires, _up((g * a).sum(1, keepdim=True).clamp(min=0), shape), rtol=1e-4, atol=1e-7)
    # Grad-CAM++ written per channel from Chattopadhay et al. eq. 19 with loops
    a0, g0 = a[0].double(), g[0].double()
    L = torch.zeros(a0.shape[1:], dtype=torch.float64)
    for k in range(a0.shape[0]):
        num = g0[k] ** 2
        den = 2 * g0[k] ** 2 + a0[k].sum() * g0[k] ** 3
        alpha = torch.where(g0[k] != 0, num / torch.where(den == 0, torch.ones_like(den), den), torch.zeros_like(num))
        w = (alpha * torch.relu(g0[k])).sum()
        L += w * a0[k]
    pp = na.explain(model, img, "grad_cam_pp", K, layer=name).data
    np.testing.assert_allclose(pp, _up(L.clamp(min=0).float()[None, None], shape), rtol=1e-3, atol=1e-6)


def test_score_cam_reference() -> None:
    make, shape = MODELS["cnn2d"]
    model = make()
    img = image(shape)
    x = torch.from_numpy(img)[None, None]
    with torch.no_grad():
        a = model.features(x)
        ups = torch.nn.functional.interpolate(a, size=shape, mode="bilinear", align_corners=False)[0]
        scores = []
        for k in range(a.shape[1]):
            m = ups[k]
            m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else torch.zeros_like(m)
            scores.append(model(x * m)[0, K])
        w = torch.softmax(torch.stack(scores), 0)
        ref = torch.relu((w.view(1, -1, 1, 1) * a).sum(1, keepdim=True))
    ours = na.explain(model, img, "score_cam", K, layer="features", params={"max_batch": 3}).data
    np.testing.assert_allclose(ours, _up(ref, shape), rtol=1e-4, atol=1e-7)


def test_region_of_whole_output_equals_channel_sum_gradient() -> None:
    make, shape = MODELS["unet3d"]
    model = make()
    img = image(shape)
    x = torch.from_numpy(img)[None, None].requires_grad_()
    (g,) = torch.autograd.grad(model(x)[:, K].sum(), x)
    whole = na.targets.Region(K, np.ones(shape, bool))
    ours = na.explain(model, img, "input_x_gradient", whole).data
    ref = (x * g).detach()[0, 0].numpy()
    # the pipeline's single-sample 3D convolutions run on oneDNN (fast_cpu_conv3d): float32 rounding differs
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    ours = na.explain(model, img, "input_x_gradient", na.targets.Class(K)).data
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


def test_segmentation_targets_give_a_real_gradient_signal() -> None:
    """TorchEsegeta's threshold wrapper has an input gradient of exactly zero; our targets must not."""
    make, shape = MODELS["unet3d"]
    model = make()
    img = image(shape)
    x = torch.from_numpy(img)[None, None]
    with torch.no_grad():
        out = model(x)
    labels = out.argmax(1)[0].numpy()
    voxel = tuple(int(i) for i in np.argwhere(labels == K)[0])
    targets = [None, K, na.targets.Predicted(K), na.targets.Voxel(K, voxel), na.targets.Contrast(K, 0),
               na.targets.ErrorRegion(K, np.zeros(shape, int), "fp")]
    for t in targets:
        for m in ("saliency", "integrated_gradients", "guided_backprop", "grad_cam"):
            res = na.explain(model, img, m, t, layer="bottleneck" if m == "grad_cam" else None,
                             params={"steps": 8} if m == "integrated_gradients" else None)
            assert np.abs(res.data).max() > 0, (t, m)


def test_contrast_is_difference_of_class_scores() -> None:
    make, shape = MODELS["cnn2d"]
    model = make()
    img = image(shape)
    a = na.explain(model, img, "input_x_gradient", 1).data
    b = na.explain(model, img, "input_x_gradient", 2).data
    c = na.explain(model, img, "input_x_gradient", na.targets.Contrast(1, 2)).data
    np.testing.assert_allclose(c, a - b, rtol=1e-4, atol=1e-8)


def test_occlusion_on_a_linear_model_is_analytic() -> None:
    """For a linear score with window 1 the occlusion map is the probability drop of zeroing each pixel."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(36, 2)).eval()
    img = image((6, 6))
    ours = na.explain(lin, img, "occlusion", 1, params={"window": 1, "stride": 1, "baseline": 0.0}).data
    x = torch.from_numpy(img).reshape(1, 36)
    with torch.no_grad():
        p0 = torch.softmax(lin(x), 1)[0, 1]
        ref = np.zeros(36, np.float32)
        for i in range(36):
            xi = x.clone()
            xi[0, i] = 0
            ref[i] = p0 - torch.softmax(lin(xi), 1)[0, 1]
    np.testing.assert_allclose(ours.ravel(), ref, rtol=1e-5, atol=1e-7)


def test_rise_with_all_ones_masks_is_constant_probability() -> None:
    make, shape = MODELS["cnn2d"]
    model = make()
    img = image(shape)
    res = na.explain(model, img, "rise", K, params={"masks": 5, "p": 1.0}).data
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(img)[None, None]), 1)[0, K].item()
    np.testing.assert_allclose(res, p, rtol=1e-5)


def test_rise_highlights_the_deciding_region() -> None:
    """A model whose class-1 logit is the mean of the top-left quadrant: RISE puts its mass there."""

    class Quadrant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x[:, 0, :8, :8].mean((1, 2)) * 6 - 3
            return torch.stack([torch.zeros_like(q), q], 1)

    img = np.ones((16, 16), np.float32)
    res = na.explain(Quadrant(), img, "rise", 1, params={"masks": 400, "cells": 4, "baseline": 0.0}).data
    inside, outside = res[:8, :8].mean(), res[8:, 8:].mean()
    assert inside > outside + 0.1, (inside, outside)


@pytest.mark.parametrize("case", ["cnn2d", "cnn3d", "unet3d"])
def test_adaptive_ig_reaches_its_completeness_tolerance(case: str) -> None:
    make, shape = MODELS[case]
    model, img = make(), image(shape)
    for tol in (0.01, 0.002):
        res = na.explain(model, img, "integrated_gradients", K,
                         params={"steps": "auto", "tolerance": tol, "baseline": 0.0, "max_steps": 1024})
        c = res.extras["completeness"]
        assert c["relative_error"] <= tol or abs(c["sum"] - c["delta"]) <= tol * 1e-2, c
        assert abs(float(res.data.sum()) - c["sum"]) <= 1e-4 * max(1.0, abs(c["sum"]))
    # a tight budget stops early and says so through the reported error
    res = na.explain(model, img, "integrated_gradients", K,
                     params={"steps": "auto", "tolerance": 1e-9, "max_steps": 12})
    assert res.extras["completeness"]["steps"] <= 12


def test_adaptive_ig_equals_fixed_rule_on_a_linear_model() -> None:
    """For a linear model the integrand is constant: every rule is exact and auto stops at once."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    img = image((4, 4))
    auto = na.explain(lin, img, "integrated_gradients", 1, params={"steps": "auto", "baseline": 0.0})
    fixed = na.explain(lin, img, "integrated_gradients", 1, params={"steps": 4, "baseline": 0.0})
    np.testing.assert_allclose(auto.data, fixed.data, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(auto.data, img * lin[1].weight[1].detach().numpy().reshape(4, 4), rtol=1e-5, atol=1e-7)
    assert auto.extras["completeness"]["steps"] == 8


def test_integrated_gradients_warns_when_its_map_is_incomplete() -> None:
    """f(x) = sum(clamp(x, 0.9, 1)) changes only for alpha in [0.9, 1] on the path from 0 to 1: a few fixed steps miss
    most of it (CompletenessWarning, with the error), the adaptive rule does not."""

    class Clamp(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x.clamp(0.9, 1.0).flatten(1).sum(1)
            return torch.stack([-s, s], 1)

    img = np.ones((6, 6), np.float32)
    with pytest.warns(na.CompletenessWarning, match=r"completeness error \d+%; 4 steps; use steps='auto'"):
        res = na.explain(Clamp(), img, "integrated_gradients", 1, params={"steps": 4, "baseline": 0.0})
    assert res.extras["completeness"]["relative_error"] > 0.05
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", na.CompletenessWarning)
        auto = na.explain(Clamp(), img, "integrated_gradients", 1, params={"steps": "auto", "baseline": 0.0})
    assert auto.extras["completeness"]["relative_error"] < 0.01
