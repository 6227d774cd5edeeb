"""Defaults that scale with the scan: integrated gradients is adaptive (at most 128 steps); occlusion's window
grows so that a run needs at most 4,096 forward passes; evidence / prediction difference keep the paper's window
while it fits and otherwise grow it and say so; explicit parameters are always used as given."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from _nets import MODELS, image
from torch import nn

import napari_attribution as na
from napari_attribution.methods import _windows
from napari_attribution.methods._windows import MAX_PASSES, PatchGaussian, n_windows, window_and_stride
from napari_attribution.methods.perturbation import occlusion_windows

K = 1
SHAPES = [(16, 28, 28), (34, 34, 34), (64, 64, 64), (128, 128, 128), (181, 217, 181), (90, 110, 80), (20, 512, 512),
          (24, 24), (256, 256), (512, 512), (2048, 2048)]


class Counting(nn.Module):
    """Counts the images sent through the wrapped network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.net(x)


# ------------------------------------------------------------------------------------------------ integrated gradients


def test_integrated_gradients_defaults_to_adaptive_steps_with_at_most_128() -> None:
    info = na.get_method("integrated_gradients")
    assert info.params["steps"] == "auto" and info.params["max_steps"] == 128
    make, shape = MODELS["cnn3d"]
    model, img = make(), image(shape)
    res = na.explain(model, img, "integrated_gradients", K)
    comp = res.extras["completeness"]
    assert comp["steps"] <= 128 and comp["relative_error"] < 0.01
    # completeness: the map adds up to the score change from the baseline
    assert float(res.data.sum()) == pytest.approx(comp["delta"], rel=0.01)


def test_integrated_gradients_honours_explicit_steps_and_max_steps() -> None:
    make, shape = MODELS["cnn3d"]
    model, img = make(), image(shape)
    with warnings.catch_warnings():  # few steps may leave the map incomplete: not what this test is about
        warnings.simplefilter("ignore", na.CompletenessWarning)
        fixed = na.explain(model, img, "integrated_gradients", K, params={"steps": 50})
        capped = na.explain(model, img, "integrated_gradients", K, params={"tolerance": 1e-12, "max_steps": 8})
        more = na.explain(model, img, "integrated_gradients", K, params={"tolerance": 1e-12, "max_steps": 200})
    assert fixed.extras["completeness"]["steps"] == 50
    assert capped.extras["completeness"]["steps"] <= 8
    assert 128 < more.extras["completeness"]["steps"] <= 200  # asked for more than the default cap: honoured


# ------------------------------------------------------------------------------------------------ occlusion


@pytest.mark.parametrize("shape", SHAPES)
def test_occlusion_default_stays_within_the_pass_budget(shape: tuple[int, ...]) -> None:
    wins = occlusion_windows({}, shape)
    assert wins.passes == wins.count + 1 <= MAX_PASSES
    assert wins.count == n_windows(shape, wins.window, wins.stride)
    default = 16 if len(shape) == 2 else 8
    paper = tuple(min(default, s) for s in shape)
    if n_windows(shape, paper, tuple(max(1, w // 2) for w in paper)) + 1 <= MAX_PASSES:
        assert wins.window == paper and not wins.note
    else:  # the smallest window that fits: one voxel less would not
        w = max(wins.window)
        smaller = tuple(min(w - 1, s) for s in shape)
        assert n_windows(shape, smaller, tuple(max(1, v // 2) for v in smaller)) + 1 > MAX_PASSES
        assert wins.stride == tuple(max(1, v // 2) for v in wins.window)
        assert "occlusion: window" in wins.note and f"{MAX_PASSES:,}" in wins.note


def test_occlusion_at_128_cubed_uses_16_cubed_windows() -> None:
    wins = occlusion_windows({}, (128, 128, 128))
    assert (wins.window, wins.stride, wins.count) == ((16,) * 3, (8,) * 3, 15**3)
    old = n_windows((128,) * 3, (8,) * 3, (4,) * 3)
    assert old == 31**3 and f"{old + 1:,}" in wins.note  # the issue's ~29,800 windows


def test_occlusion_honours_explicit_window_and_stride() -> None:
    wins = occlusion_windows({"window": 8}, (128, 128, 128))
    assert wins.window == (8,) * 3 and wins.stride == (4,) * 3 and wins.count == 31**3 and not wins.note
    assert occlusion_windows({"stride": 10}, (128, 128, 128)).window == (8,) * 3  # 13^3 windows: fits
    wins = occlusion_windows({"stride": 4}, (128, 128, 128))  # the stride is kept, the window grows
    assert wins.stride == (4,) * 3 and wins.window == (72,) * 3 and wins.count == 15**3 and wins.note
    with pytest.raises(na.ParameterError, match="larger than the image"):
        occlusion_windows({"window": 40}, (16, 28, 28))


def test_occlusion_run_says_its_window_grew(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a small budget (so the test stays tiny) the run sends at most that many images through the model and
    records why its window is not the default."""
    monkeypatch.setattr(_windows, "MAX_PASSES", 4)
    make, shape = MODELS["cnn3d"]
    counted = Counting(make())
    res = na.explain(counted, image(shape), "occlusion", K)
    assert 0 < counted.seen <= 4
    assert res.extras["window"] != (8, 8, 8) and "occlusion: window" in res.extras["window_note"]
    assert res.extras["windows"] + 1 == counted.seen
    from napari_attribution.runs.jobs import estimate_passes

    assert estimate_passes("occlusion", {}, shape) == (counted.seen, False)


# ------------------------------------------------------------------------------------------------ rise


@pytest.mark.parametrize("shape", [(16, 28, 28), (512, 512, 512), (4096, 4096)])
def test_rise_default_stays_within_the_pass_budget(shape: tuple[int, ...]) -> None:
    """RISE's cost is its mask count; its cells grow with the image (a fixed number of cells per axis)."""
    from napari_attribution.runs.jobs import estimate_passes

    assert estimate_passes("rise", {}, shape)[0] <= MAX_PASSES


# ------------------------------------------------------------------------------------------------ evidence / PDA


@pytest.mark.parametrize(("method", "params"), [("evidence", {}), ("evidence", {"mode": "screened"}),
                                                ("evidence", {"mode": "taylor"}),
                                                ("prediction_difference", {}),
                                                ("prediction_difference", {"samples": 4})])
@pytest.mark.parametrize("shape", SHAPES[:3] + [(90, 110, 80)] + SHAPES[7:10])
def test_window_methods_keep_the_paper_default_while_it_fits(method: str, params: dict, shape: tuple) -> None:
    wins = window_and_stride(params, shape, method)
    k = 10 if len(shape) == 2 else 5
    paper = tuple(min(k, s) for s in shape)
    passes = _windows.window_passes(method, params)
    if passes(n_windows(shape, paper, tuple(max(1, w // 2) for w in paper))) <= MAX_PASSES:
        assert wins.window == paper and wins.stride == tuple(max(1, w // 2) for w in paper) and not wins.note
        return
    assert wins.passes <= MAX_PASSES and wins.note.startswith(f"{method}: window")
    # the stride grows to the paper's window first, then window and stride together (the windows tile the image)
    assert all(st <= w for st, w in zip(wins.stride, wins.window, strict=True))
    if max(wins.window) > k:
        assert wins.stride == wins.window
        w = max(wins.window) - 1
        smaller = tuple(min(w, s) for s in shape)
        assert passes(n_windows(shape, smaller, smaller)) > MAX_PASSES  # the smallest window that fits


def test_window_methods_never_change_an_explicit_window() -> None:
    wins = window_and_stride({"window": 5}, (128, 128, 128), "prediction_difference")
    assert wins.window == (5,) * 3 and wins.stride == (2,) * 3 and not wins.note and wins.passes > 10**6


def test_prediction_difference_refuses_a_default_window_too_large_to_fit() -> None:
    """At 128^3, 4,096 passes of 10 samples need windows of 19^3, whose conditional Gaussian has 12,167
    dimensions: refused before any work, with the ways out."""
    with pytest.raises(na.ParameterError, match="too large to fit") as err:
        window_and_stride({}, (128, 128, 128), "prediction_difference")
    assert "evidence" in str(err.value) and "window=16, stride=16" in str(err.value)
    assert window_and_stride({}, (128, 128, 128), "evidence").window == (9,) * 3  # 13^3 = 2,197 dimensions


def test_evidence_run_warns_and_records_the_grown_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_windows, "MAX_PASSES", 40)
    make, shape = MODELS["cnn3d"]
    counted = Counting(make())
    with pytest.warns(na.ScaledDefaultsWarning, match="evidence: window") as caught:
        res = na.explain(counted, image(shape), "evidence", K, params={"patches": 500})
    assert str(caught[0].message) == res.extras["window_note"]
    assert counted.seen <= 40 and res.extras["windows"] + 1 == counted.seen
    from napari_attribution._errors import own_warnings

    assert own_warnings(list(caught)) == [res.extras["window_note"]]  # the docks show it
    counted.seen = 0
    plain = na.explain(counted, image(shape), "evidence", K, params={"patches": 500, "window": 5})
    assert "window_note" not in plain.extras and plain.extras["window"] == (5, 5, 5)


# ------------------------------------------------------------------------------------------------ the patch model fit


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_patch_gaussian_is_the_conditional_of_the_sample_covariance(offset: float) -> None:
    """The chunked one-pass covariance (with the first image's mean subtracted) gives the textbook conditional
    Gaussian of the sampled patches, also for CT-like intensities around 1000."""
    g = torch.Generator().manual_seed(3)
    imgs = [torch.randn(2, 9, 10, 8, generator=g) * 50 + offset, torch.randn(2, 8, 9, 9, generator=g) * 30 + offset]
    window, pad, n = (2, 3, 2), 1, 900
    fit = PatchGaussian(imgs, window, pad, n, torch.Generator().manual_seed(5))
    # the same patches, drawn with the same generator calls, by the reference
    gen = torch.Generator().manual_seed(5)
    rows = []
    for img in imgs:
        padded = fit.pad_image(img[None])[0]
        starts = [padded.shape[1 + a] - fit.patch[a] + 1 for a in range(3)]
        corners = torch.stack([torch.randint(0, s, (n // 2,), generator=gen) for s in starts], 1)
        rows.append(np.stack([padded[(slice(None),) + tuple(slice(int(c), int(c) + p) for c, p in
                                                          zip(corner, fit.patch, strict=True))].reshape(2, -1).numpy()
                              for corner in corners]))
    data = np.concatenate(rows).astype(np.float64)  # (N, C, P)
    w, f = fit.win_idx.numpy(), fit.frame_idx.numpy()
    for c in range(2):
        cov = np.cov(data[:, c], rowvar=False)
        cov += np.eye(len(cov)) * 1e-6 * np.diag(cov).mean()
        gain = np.linalg.solve(cov[np.ix_(f, f)], cov[np.ix_(f, w)]).T
        cond = cov[np.ix_(w, w)] - gain @ cov[np.ix_(f, w)]
        np.testing.assert_allclose(fit.mean[c].numpy(), data[:, c].mean(0), rtol=1e-10)
        np.testing.assert_allclose(fit.gain[c].numpy(), gain, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose((fit.chol[c] @ fit.chol[c].T).numpy(), cond, rtol=1e-6, atol=1e-6)


def test_gaussian_flops_count_the_fit() -> None:
    """The docks' estimate of the patch model's work grows with the patch size squared and the windows."""
    small = _windows.gaussian_flops({"window": 4, "stride": 4}, (32, 32, 32))
    big = _windows.gaussian_flops({"window": 8, "stride": 8}, (32, 32, 32))
    p_small, p_big = (4 + 4) ** 3, (8 + 4) ** 3
    assert big / small == pytest.approx((p_big / p_small) ** 2, rel=0.35)
    assert math.isfinite(big) and small > 0
