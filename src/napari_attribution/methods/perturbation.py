"""Perturbation methods: ``occlusion`` and ``rise``. Black-box: forward passes only, so they also work on
TorchScript models. Per the project's convention they score the target on *probabilities* (softmax or
sigmoid of the output, as the model card says) unless the target asks for another score
(``Class(k, score="logit")`` is scored on the logit), chunked to the memory budget, polling ``cancel`` between
chunks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._errors import ParameterError
from ._registry import Cost, register
from ._run import MethodOutput, Run, first_output
from ._windows import Windows, gaussian_flops, per_axis, scaled_windows, window_and_stride
from .gradient import baseline_tensor


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window start positions along one axis: ``ceil((size - window) / stride) + 1`` windows, the last one
    clipped at the border (the same grid as ``captum.attr.Occlusion``)."""
    count = int(math.ceil((size - window) / stride)) + 1
    return [i * stride for i in range(count)]


def occlusion_windows(params: Mapping[str, Any], spatial: tuple[int, ...]) -> Windows:
    """Occlusion's window and stride on an image of shape ``spatial`` (see :func:`occlusion`); ``passes`` counts
    the unperturbed pass too."""
    return scaled_windows(params, spatial, default=16 if len(spatial) <= 2 else 8, passes=lambda n: n + 1,
                          tile=False, what="occlusion")


def _occlusion_cost(p: Mapping[str, Any], spatial: tuple[int, ...], layer_channels: int | None) -> Cost:
    return Cost(float(occlusion_windows(p, spatial).passes))


@register(
    "occlusion",
    label="Occlusion: drop in probability when a sliding window is filled with the baseline",
    family="perturbation",
    passes="#windows F",
    paper="Zeiler & Fergus 2013, arXiv:1311.2901",
    signed=True,
    params={"window": None, "stride": None, "baseline": "min"},
    choices={"baseline": ("min", "mean", ...)},
    short="Occl",
    cost=_occlusion_cost,
    pass_kind="forward",
    compare_default=True,
)
def occlusion(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``R(u) = mean_{w contains u} [s(x) - s(x with window w <- baseline)]`` with ``s`` the target's probability
    (its logit when the target says ``score="logit"``).

    Default window 16 (2D) or 8 (3D) voxels per axis, clipped to the image, stride half the window; on images
    where that needs more than 4,096 forward passes the window grows until it does not (16^3 at stride 8 on a
    128^3 scan: 3,375 windows instead of 29,791; ``extras["window_note"]`` says so). A given ``window`` (and
    ``stride``) is used as given. The window covers all input channels. Maps to
    ``captum.attr.Occlusion(sliding_window_shapes=(C, *window), strides=(C, *stride), baselines=baseline)`` on a
    forward function that returns the same probability.
    """
    x = run.x
    spatial = run.spatial()
    wins = occlusion_windows(params, spatial)
    window, stride = wins.window, wins.stride
    b = baseline_tensor(x, params["baseline"])
    starts = [window_starts(s, w, st) for s, w, st in zip(spatial, window, stride, strict=True)]
    corners = list(itertools.product(*starts))
    n = len(corners)
    run.expected_total(n + 1)
    assert run.output is not None and run.target is not None
    full = float(run.target(run.output, probability=True)[0])

    def region(c: tuple[int, ...]) -> tuple[slice, ...]:
        return (slice(None), slice(None)) + tuple(slice(o, min(o + w, s))
                                                  for o, w, s in zip(c, window, spatial, strict=True))

    def make(start: int, stop: int) -> Tensor:
        xs = x.repeat(stop - start, *([1] * (x.ndim - 1)))
        for i, c in enumerate(corners[start:stop]):
            sl = region(c)
            xs[(slice(i, i + 1),) + sl[1:]] = b[sl]
        return xs

    scores = run.scores(make, n, probability=True, message="occlusion windows")
    total = torch.zeros(spatial, dtype=torch.float64)
    count = torch.zeros(spatial, dtype=torch.float64)
    for c, s in zip(corners, scores.tolist(), strict=True):
        sl = region(c)[2:]
        total[sl] += full - s
        count[sl] += 1
    maps = (total / count.clamp(min=1)).to(x.dtype).unsqueeze(0)
    extras: dict[str, Any] = {"windows": n, "window": window, "stride": stride}
    if wins.note:
        extras["window_note"] = wins.note
    return MethodOutput(maps, extras)


def _rise_cost(p: Mapping[str, Any], spatial: tuple[int, ...], layer_channels: int | None) -> Cost:
    return Cost(float(p.get("masks") or (2000 if len(spatial) <= 2 else 1000)) + 1)


@register(
    "rise",
    label="RISE: probability-weighted average of random masks",
    family="perturbation",
    passes="masks F",
    paper="Petsiuk et al. 2018, arXiv:1806.07421",
    params={"masks": None, "cells": None, "p": 0.5, "baseline": "min"},
    choices={"baseline": ("min", "mean", ...)},
    short="RISE",
    stochastic=True,
    cost=_rise_cost,
    pass_kind="forward",
    compare_params={"masks": 500},
    quick_params={"masks": 12},
)
def rise(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``S(u) = (1 / (N p)) sum_i s(x * M_i + b * (1 - M_i)) M_i(u)``, ``s`` the target's probability (its logit
    when the target says ``score="logit"``).

    Masks: binary grids of ``cells`` per axis with P(1) = ``p``, upsampled (bilinear / trilinear) to
    ``(cells + 1) * ceil(S / cells)`` and cropped at a random shift (Petsiuk et al.'s construction). Defaults:
    N = 2000 masks of 8 cells in 2D, N = 1000 masks of 6 cells in 3D (paper: 4000, 7 cells, p = 0.5). The
    masked-out part takes the ``baseline`` (default: the image minimum) instead of 0, so CT is filled with air
    rather than water. Deterministic for a given ``seed``.
    """
    x = run.x
    spatial = run.spatial()
    nd = len(spatial)
    n = int(params["masks"] or (2000 if nd <= 2 else 1000))
    cells = per_axis(params["cells"] or (8 if nd <= 2 else 6), nd, "cells")
    p = float(params["p"])
    if not 0 < p <= 1 or n < 1:
        raise ParameterError("rise needs masks >= 1 and 0 < p <= 1.")
    b = baseline_tensor(x, params["baseline"])
    cell = tuple(int(math.ceil(s / c)) for s, c in zip(spatial, cells, strict=True))
    up_size = tuple((c + 1) * cs for c, cs in zip(cells, cell, strict=True))
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[nd]
    gen = run.generator
    run.expected_total(n)
    acc = torch.zeros(spatial, dtype=torch.float64)
    current: list[Tensor] = []

    def make(start: int, stop: int) -> Tensor:
        # one mask at a time from the seeded generator, so the masks do not depend on the chunking
        grids, shifts = [], []
        for _ in range(stop - start):
            grids.append((torch.rand((1, 1, *cells), generator=gen) < p).to(x.dtype))
            shifts.append(torch.randint(0, max(cell), (nd,), generator=gen))
        big = F.interpolate(torch.cat(grids), size=up_size, mode=mode, align_corners=False)
        masks = torch.stack([
            big[(i, 0) + tuple(slice(int(o) % cs, int(o) % cs + s) for o, cs, s in zip(sh, cell, spatial, strict=True))]
            for i, sh in enumerate(shifts)
        ]).unsqueeze(1).to(x.device)
        current.clear()
        current.append(masks)
        return x * masks + b * (1 - masks)

    start = 0
    while start < n:
        stop = min(n, start + run.batch_size(n - start, factor=1.0))
        run.check_cancel()
        xs = make(start, stop)
        with torch.no_grad():
            y = first_output(run.model(xs))
            assert run.target is not None
            s = run.target(y, probability=True).double().cpu()
        acc += (s.view((-1,) + (1,) * nd) * current[0][:, 0].double().cpu()).sum(0)
        run.advance(stop - start, "rise masks")
        start = stop
    return MethodOutput((acc / (n * p)).to(x.dtype).unsqueeze(0), {"masks": n, "cells": cells, "p": p})


def window_cost(method: str) -> Callable[[Mapping[str, Any], tuple[int, ...], int | None], Cost]:
    """The cost of ``prediction_difference`` / ``evidence``: their windows' forward passes, and the patch model's
    floating-point operations (:func:`~napari_attribution.methods._windows.gaussian_flops`)."""

    def cost(p: Mapping[str, Any], spatial: tuple[int, ...], layer_channels: int | None) -> Cost:
        return Cost(float(window_and_stride(p, spatial, method).passes), flops=gaussian_flops(p, spatial, method))

    return cost


@register(
    "prediction_difference",
    label="Prediction difference analysis: weight of evidence with conditionally sampled windows",
    family="perturbation",
    passes="#windows x samples F",
    paper="Zintgraf et al. 2017, arXiv:1702.04595",
    signed=True,
    params={"window": None, "stride": None, "padding": 2, "patches": 20000, "patches_from": None,
            "train_size": 100000, "samples": 10},
    short="PDA",
    stochastic=True,
    cost=window_cost("prediction_difference"),
    pass_kind="forward",
    quick_params={"window": 4, "samples": 2, "patches": 300},
)
def prediction_difference(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``WE_w = log2 odds p(c|x) - log2 odds p(c|x_\\w)``, ``p(c|x_\\w) ~ (1/S) sum_s p(c | x_w <- sample_s)``,
    samples from a Gaussian of ``(k + 2l)^d`` patches conditioned on the window's ``l``-voxel frame (fitted per
    channel on random patches), Laplace-corrected probabilities (``train_size``); the voxel map is the mean WE
    over the windows that cover it. Defaults follow Zintgraf et al. (``samples`` 10, ``padding`` l = 2; window
    10 in 2D, 5 in 3D) except the stride (half the window here; the paper's stride 1 costs
    ``(H - k + 1)(W - k + 1) * S`` forward passes: pass ``stride=1``). Where these defaults need more than 4,096
    forward passes (``windows x samples``; from about 110 x 110 pixels or 18^3 voxels), the stride grows up to the
    window and then window and stride together (tiles) until the run fits, with a
    :class:`~napari_attribution.ScaledDefaultsWarning` and ``extras["window_note"]`` saying so; a window whose
    conditional Gaussian would exceed 8,000 dimensions (e.g. at 128^3) is refused before the run, naming the ways
    out. A given ``window`` / ``stride`` is used as given. The slow baseline of ``evidence``."""
    from ._windows import weight_of_evidence

    return weight_of_evidence(run, params, "sample")
