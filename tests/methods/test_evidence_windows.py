"""The window machinery of ``evidence`` / ``prediction_difference`` (indexed paste, take and average against
slice-by-slice references), the screened evidence mode (exact conditional-mean evidence on the windows that
the first-order form ranks highest, the rescaled first-order value elsewhere) and the one-sample mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _nets import MODELS, image
from torch import nn

import napari_attribution as na
from napari_attribution.methods import _windows
from napari_attribution.methods._windows import WindowGrid

K = 1


@pytest.mark.parametrize("spatial,window,stride", [((11, 9), (4, 3), (3, 2)), ((7, 8, 6), (3, 4, 2), (2, 3, 3)),
                                                   ((5,), (5,), (1,))])
def test_window_grid_indexing_matches_slices(spatial: tuple[int, ...], window: tuple[int, ...],
                                             stride: tuple[int, ...]) -> None:
    grid = WindowGrid(spatial, window, stride)
    g = torch.Generator().manual_seed(0)
    n, c = len(grid), 2
    # the last window of each axis is flush with the border
    assert all(max(cs[a] for cs in grid.corners) == s - w for a, (s, w) in enumerate(zip(spatial, window, strict=True)))
    values = torch.randn(n, generator=g, dtype=torch.float64)
    total, count = np.zeros(spatial), np.zeros(spatial)
    for i, v in enumerate(values.tolist()):
        total[grid.slices(i)] += v
        count[grid.slices(i)] += 1
    np.testing.assert_allclose(grid.average(values).numpy(), total / np.maximum(count, 1), rtol=1e-12)
    img = torch.randn((c, *spatial), generator=g)
    taken = grid.take(img, 1, n)
    for i in range(1, n):
        torch.testing.assert_close(taken[i - 1], img[(slice(None),) + grid.slices(i)].reshape(c, -1), rtol=0, atol=0)
    windows = torch.tensor([n - 1, 0, n // 2])
    vals = torch.randn(3, c, math.prod(window), generator=g)
    xs = img[None].repeat(3, *([1] * (img.ndim)))
    ref = xs.clone()
    for b, j in enumerate(windows.tolist()):
        ref[(b, slice(None)) + grid.slices(j)] = vals[b].view(c, *window)
    torch.testing.assert_close(grid.paste(xs, windows, vals), ref, rtol=0, atol=0)


class _Counting(nn.Module):
    def __init__(self, net: nn.Module, calls: list[int]) -> None:
        super().__init__()
        self.net, self.calls = net, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.net(x)


def _window_values(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Capture the per-window evidence each run averages into its map."""
    seen: list[torch.Tensor] = []
    average = WindowGrid.average

    def capture(self: WindowGrid, values: torch.Tensor) -> torch.Tensor:
        seen.append(torch.as_tensor(values, dtype=torch.float64).clone())
        return average(self, values)

    monkeypatch.setattr(_windows.WindowGrid, "average", capture)
    return seen


@pytest.mark.parametrize("case", ["cnn2d", "cnn3d"])
def test_screened_evidence_is_exact_where_screened_and_costs_a_fraction(case: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    make, shape = MODELS[case]
    net, img = make(), image(shape)
    p = {"window": 3, "stride": 2, "patches": 2000} if len(shape) == 3 else {"window": 6, "stride": 3}
    seen = _window_values(monkeypatch)
    calls: list[int] = []
    exact = na.explain(_Counting(net, calls), img, "evidence", K, params=p)
    n_exact_mode = sum(calls)
    taylor = na.explain(net, img, "evidence", K, params={**p, "mode": "taylor"})
    calls.clear()
    res = na.explain(_Counting(net, calls), img, "evidence", K, params={**p, "mode": "screened", "screen": 0.3})
    we_exact, we_taylor, we_screened = seen
    n = exact.extras["windows"]
    m = math.ceil(0.3 * n)
    assert res.extras["evaluated"] == m and n_exact_mode == 1 + n
    assert sum(calls) == 1 + 1 + m  # the first pass, the first-order pass, the screened windows
    top = torch.argsort(we_taylor.abs(), descending=True, stable=True)[:m]
    rest = torch.ones(n, dtype=torch.bool)
    rest[top] = False
    torch.testing.assert_close(we_screened[top], we_exact[top], rtol=1e-5, atol=1e-9)
    scale = float((we_taylor[top] * we_exact[top]).sum() / (we_taylor[top] ** 2).sum())
    torch.testing.assert_close(we_screened[rest], scale * we_taylor[rest])
    assert res.extras["taylor_scale"] == pytest.approx(scale)
    from scipy.stats import spearmanr

    rho = spearmanr(we_taylor[top], we_exact[top]).statistic
    assert res.extras["screen_rank_correlation"] == pytest.approx(rho, abs=1e-9)
    assert taylor.signed and res.signed


def test_screened_evidence_with_every_window_screened_is_the_conditional_mean_map() -> None:
    make, shape = MODELS["cnn2d"]
    net, img = make(), image(shape)
    p = {"window": 6, "stride": 3}
    exact = na.explain(net, img, "evidence", K, params=p).data
    full = na.explain(net, img, "evidence", K, params={**p, "mode": "screened", "screen": 1.0}).data
    np.testing.assert_allclose(full, exact, rtol=1e-5, atol=1e-7 * np.abs(exact).max())


def test_conditional_sample_evidence_is_pda_with_one_sample_at_one_pass_per_window() -> None:
    """``mode="conditional_sample"`` evaluates each window once at one conditional sample: the map of
    ``prediction_difference(samples=1)`` with the same window, stride and seed, 1 + #windows forward passes (10x
    fewer than PDA's default), stochastic by the seed, and not the conditional-mean map."""
    make, shape = MODELS["cnn2d"]
    net, img = make(), image(shape)
    p = {"window": 6, "stride": 3, "patches": 500, "seed": 3}
    calls: list[int] = []
    res = na.explain(_Counting(net, calls), img, "evidence", K, params={**p, "mode": "conditional_sample"})
    n = res.extras["windows"]
    assert sum(calls) == 1 + n and res.extras["samples"] == 1
    pda = na.explain(net, img, "prediction_difference", K, params={**p, "samples": 1})
    np.testing.assert_array_equal(res.data, pda.data)
    calls.clear()
    na.explain(_Counting(net, calls), img, "prediction_difference", K, params=p)
    assert sum(calls) == 1 + 10 * n
    other = na.explain(net, img, "evidence", K, params={**p, "mode": "conditional_sample", "seed": 4}).data
    mean = na.explain(net, img, "evidence", K, params=p).data
    assert not np.allclose(other, res.data) and not np.allclose(mean, res.data)
    assert res.signed


@pytest.mark.parametrize("screen", [0, -0.1, 1.5])
def test_screen_fraction_out_of_range_is_one_clear_error(screen: float) -> None:
    make, shape = MODELS["cnn2d"]
    with pytest.raises(na.ParameterError, match="screen"):
        na.explain(make(), image(shape), "evidence", K, params={"mode": "screened", "screen": screen, "window": 6})


@pytest.mark.parametrize("method,params", [("prediction_difference", {"samples": 3}), ("evidence", {}),
                                           ("evidence", {"mode": "screened", "screen": 0.25})])
def test_window_methods_report_progress_up_to_their_total(method: str, params: dict) -> None:
    """Progress rises chunk by chunk to the end (before, the window loop of prediction_difference and evidence
    never told the run its total, so the bar jumped to full after the first chunk)."""
    make, shape = MODELS["cnn2d"]
    reports: list[int] = []
    res = na.explain(make(), image(shape), method, K, params={"window": 6, "stride": 3, "max_batch": 4, **params},
                     progress=lambda done, total, _msg: reports.append(round(1000 * done / total)))
    n_batches = math.ceil(res.extras.get("evaluated", res.extras["windows"]) * res.extras.get("samples", 1) / 4)
    assert reports == sorted(reports) and reports[-1] == 1000
    assert len(set(reports)) >= n_batches // 2, reports  # many steps, not one jump
    assert reports[0] < 200, reports
