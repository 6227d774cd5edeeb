"""The seed papers' methods: sam, layer_conductance, response_backprojection, evidence and prediction_difference,
checked against references written here and on models whose evidence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import MODELS, image
from captum import attr as ca
from torch import nn

import napari_attribution as na

K = 1


def _score(model: nn.Module, x: torch.Tensor, case: str):
    if case == "unet3d":
        with torch.no_grad():
            region = (model(x).argmax(1) == K).float()
        return lambda inp: (model(inp)[:, K] * region).flatten(1).sum(1)
    return lambda inp: model(inp)[:, K]


def _up(m: torch.Tensor, size: tuple[int, ...]) -> np.ndarray:
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return torch.nn.functional.interpolate(m, size=size, mode=mode, align_corners=False)[0, 0].detach().numpy()


@pytest.mark.parametrize("case", ["cnn2d", "cnn3d", "unet3d"])
def test_sam_voxel_variant_reference_and_layer_variant_is_hires_cam(case: str) -> None:
    make, shape = MODELS[case]
    model, img = make(), image(shape)
    name = "features" if case != "unet3d" else "bottleneck"
    layer = dict(model.named_modules())[name]
    x = torch.from_numpy(img)[None, None].requires_grad_()
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        score = _score(model, x.detach(), case)(x).sum()
    finally:
        h.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(score, a, retain_graph=True)
    m = (a * g.detach()).sum(1).clamp(min=0).sum()
    (gx,) = torch.autograd.grad(m, x)
    ours = na.explain(model, img, "sam", K, layer=name)
    ref = gx.abs()[0, 0].numpy()  # atol: single-sample 3D convolutions run on oneDNN in the pipeline
    np.testing.assert_allclose(ours.data, ref, rtol=1e-4, atol=1e-5 * float(ref.max()))
    assert np.abs(ours.data).max() > 0
    lay = na.explain(model, img, "sam", K, layer=name, params={"variant": "layer"}).data
    hires = na.explain(model, img, "hires_cam", K, layer=name).data
    np.testing.assert_allclose(lay, hires, rtol=1e-5, atol=1e-9)


def test_sam_works_at_a_shallow_layer_and_is_voxel_level() -> None:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    deep = na.explain(model, img, "sam", K, layer="features.4").data
    shallow = na.explain(model, img, "sam", K, layer="features.0").data
    assert deep.shape == shallow.shape == shape
    # voxel-level: not a bilinear upsampling of a coarse map (features.4 is at half resolution)
    gc = na.explain(model, img, "grad_cam", K, layer="features.4").data
    rough = lambda a: np.abs(np.diff(a, axis=0)).mean() / (np.abs(a).mean() + 1e-12)  # noqa: E731
    assert rough(deep) > rough(gc)


@pytest.mark.parametrize("case", ["cnn2d", "cnn3d", "unet3d"])
def test_layer_conductance_equals_captum(case: str) -> None:
    make, shape = MODELS[case]
    model, img = make(), image(shape)
    name = "features" if case != "unet3d" else "bottleneck"
    layer = dict(model.named_modules())[name]
    x = torch.from_numpy(img)[None, None]
    ours = na.explain(model, img, "layer_conductance", K, layer=name,
                      params={"steps": 12, "baseline": 0.0, "rule": "gausslegendre", "max_batch": 5})
    theirs = ca.LayerConductance(_score(model, x, case), layer).attribute(x, baselines=0.0, n_steps=12,
                                                                          method="gausslegendre")
    ref = _up(theirs.sum(1, keepdim=True), shape)
    np.testing.assert_allclose(ours.data, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


def test_layer_conductance_completeness_through_a_bottleneck_layer() -> None:
    make, shape = MODELS["cnn3d"]
    model, img = make(), image(shape)
    res = na.explain(model, img, "layer_conductance", K, layer="features", params={"steps": 128, "baseline": 0.0})
    c = res.extras["completeness"]
    assert abs(c["sum"] - c["delta_path_ends"]) < 0.02 * abs(c["delta_path_ends"]) + 1e-4, c


def test_response_backprojection_target_mode_is_response_weighted_deconvnet() -> None:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    with torch.no_grad():
        y = model(torch.from_numpy(img)[None, None])[0, K].item()
    deconv = na.explain(model, img, "deconvnet", K).data
    ours = na.explain(model, img, "response_backprojection", K).data
    np.testing.assert_allclose(ours, np.clip(y * deconv, 0, None), rtol=1e-4, atol=1e-9)
    dom = na.explain(model, img, "response_backprojection", K, params={"mode": "dominant"})
    per = dom.extras["per_class"]
    assert per.shape == (3,) + shape
    np.testing.assert_allclose(dom.data, per.max(0), rtol=1e-6)
    cls = dom.extras["dominant_class"]
    assert ((cls == per.argmax(0)) | (cls == -1)).all()


def test_response_backprojection_of_one_unit_top_n() -> None:
    make, shape = MODELS["unet3d"]
    model, img = make(), image(shape)
    one = na.explain(model, img, "response_backprojection", K, layer="bottleneck", params={"channel": 2, "top_n": 1})
    nine = na.explain(model, img, "response_backprojection", K, layer="bottleneck", params={"channel": 2, "top_n": 9})
    assert one.layer == "bottleneck"
    support = lambda a: (a > 1e-6 * a.max()).sum()  # noqa: E731
    assert 0 < support(one.data) < support(nine.data)
    with pytest.raises(na.ParameterError, match="layer"):
        na.explain(model, img, "response_backprojection", K, params={"channel": 2})


class Quadrant(nn.Module):
    """Class 1's logit is driven by the top-left quadrant's mean intensity only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x[:, 0, :8, :8].mean((1, 2)) * 4 - 2
        return torch.stack([torch.zeros_like(q), q], 1)


@pytest.mark.parametrize("method,params", [("prediction_difference", {"samples": 6}), ("evidence", {}),
                                           ("evidence", {"mode": "taylor"})])
def test_evidence_methods_find_the_deciding_region(method: str, params: dict) -> None:
    g = np.random.default_rng(0)
    img = (1.0 + 0.2 * g.standard_normal((16, 16))).astype(np.float32)
    res = na.explain(Quadrant(), img, method, 1, params={"window": 4, "stride": 2, **params})
    inside, outside = np.abs(res.data[:6, :6]).mean(), np.abs(res.data[10:, 10:]).mean()
    assert inside > 20 * outside + 1e-12, (inside, outside)
    assert res.signed and res.data[:6, :6].mean() > 0  # bright pixels are evidence for class 1


def test_evidence_agrees_with_prediction_difference_and_is_cheaper() -> None:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    calls: list[int] = []

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return self.net(x)

    p = {"window": 6, "stride": 3}
    pda = na.explain(Counting(), img, "prediction_difference", K, params={**p, "samples": 10}).data
    n_pda = sum(calls)
    calls.clear()
    ev = na.explain(Counting(), img, "evidence", K, params=p).data
    n_ev = sum(calls)
    assert n_pda - 1 == 10 * (n_ev - 1)  # one first pass each, then 10 vs 1 forward per window
    from scipy.stats import spearmanr

    rho = spearmanr(pda.ravel(), ev.ravel()).statistic
    assert rho > 0.5, rho  # PDA itself is a 10-sample Monte-Carlo estimate


def test_window_sampler_conditional_mean_reproduces_a_linear_ramp() -> None:
    """On an image that is an exact linear ramp, the window is a linear function of its frame: the conditional
    mean must reproduce it (so 'evidence' sees no change and gives ~0)."""
    from napari_attribution.methods._windows import PatchGaussian

    yy, xx = np.meshgrid(np.arange(20.0), np.arange(20.0), indexing="ij")
    imgs = [torch.tensor((a * yy + b * xx)[None], dtype=torch.float32) for a, b in [(1, 0.5), (-0.3, 2), (0.7, -1)]]
    gen = torch.Generator().manual_seed(0)
    gauss = PatchGaussian(imgs, (3, 3), 2, 3000, gen)
    test = imgs[0][None]
    padded = gauss.pad_image(test)
    frames = gauss.frames(padded, [(5, 7)])
    mu = gauss.conditional_mean(frames)[0, 0].reshape(3, 3)
    np.testing.assert_allclose(mu.numpy(), test[0, 0, 5:8, 7:10].numpy(), atol=1e-3)
