#!/usr/bin/env python
"""Side-by-side benchmarks: napari-attribution against a plain PyTorch pass and against Captum.

Every number in the tables is a **ratio to a baseline measured in the same run, on the same model and the
same input**, never an absolute threshold, so the table means the same thing on a laptop, a loaded CI runner
or a workstation. Run it with::

    .venv/bin/python benchmarks/bench_core.py           # full sizes, a few minutes on a 2-core CPU
    .venv/bin/python benchmarks/bench_core.py --quick   # tiny sizes, under a minute (smoke test for CI)

Models and inputs
-----------------
* 2D: five conv-BN-ReLU(inplace)-maxpool blocks (64, 64, 128, 128, 128 channels; no pool after the last),
  global average pooling and a linear head with 4 classes, on a 224 x 224 single-channel image (a synthetic
  scan made of smooth blobs). Layer methods use ``features.4`` (the last block, 14 x 14).
* 3D: a small 3D CNN of four blocks (8, 16, 32, 64 channels, stride-2 stem) with the same GAP + linear head,
  on a 64^3 (row 1, row 3) or 96^3 (rows 4, 5) single-channel volume. Layer methods use ``features.3``.
* Weights are random (Kaiming-normal, seeded); the model is in eval mode with frozen parameters, which is
  also what ``na.explain`` does internally, so the plain pass is the cheapest pass a user could write.
* The target is the predicted class ``k``, passed as the same ``int`` (= the logit of class ``k``) to every
  side; IG baselines are 0.0 on every side.

Rows
----
1. **Single-pass methods vs one plain forward + backward.** ``na.explain(model, image, method, target=k,
   layer=LAYER)`` for saliency, input_x_gradient, grad_cam, grad_cam_pp, hires_cam, cam, layer_activation,
   guided_backprop and deconvnet, against ``torch.autograd.grad(model(x)[0, k], x)`` on the same input.
   Goal <= 1.15x. (CAM methods stop their backward at the layer and layer_activation needs no backward, so
   they should be well below 1.)
2. **Multi-pass methods vs their pass count.** integrated_gradients (steps=32), smoothgrad (samples=16),
   occlusion (window 56, stride 28: 49 windows), rise (masks=200) and score_cam (128 layer channels), against
   ``n_passes x`` one plain batch-1 pass (forward + backward for gradient methods, forward only for
   perturbation methods; the baseline runs 16 such passes in a row and is scaled to ``n_passes``). Extra
   passes a method needs (the unperturbed forward, IG's baseline forward) count as overhead. Below 1 means
   that batching beats one-by-one passes. No goal. The memory table also compares occlusion's
   peak with its own ``memory_budget``.
3. **compare vs explain.** ``na.compare(model, image, ["saliency", "input_x_gradient", "grad_cam",
   "hires_cam"], k, layer=LAYER)`` against ``na.explain`` of saliency alone (the most expensive of the four).
   Goal <= 1.3x: the four share one forward and one backward pass.
4. **Integrated gradients on a 96^3 volume against Captum.**
   (a) equal steps (32): our time against Captum's ``IntegratedGradients(...).attribute(x, baselines=0.0,
   target=k, n_steps=32, internal_batch_size=b)`` at its best ``b`` in {1, 2, 4, 8, 32} (ours untuned, with
   its default memory budget; all six run in turn, round robin). Goal <= 1.1x. A diagnostic row runs ours
   with ``max_batch`` = Captum's best ``b``, to separate the chunk size from per-step overhead.
   (b) peak memory (memory table): ours against one plain forward + backward (goal <= 1.5x) and Captum's
   peak at its best ``b``; ours with ``max_batch=1`` is shown to separate the default budget from fixed costs.
   (c) time to a completeness error below 1 %: for each side the smallest steps in {4, ..., 128} whose
   ``|sum(attr) - (f(x) - f(0))| / |f(x) - f(0)| < 0.01`` (same Gauss-Legendre rule on both sides), and the
   time of that run. No goal.
5. **Grad-CAM 3D against Captum** on the 96^3 volume: ``na.explain(..., "grad_cam")`` against
   ``LayerGradCam(model, layer).attribute(x, target=k, relu_attributions=True)`` +
   ``LayerAttribution.interpolate(..., x.shape[2:], "trilinear")``; the two maps must agree (checked).

How it measures
---------------
Times use ``time.perf_counter``, warm-up runs, and the median of several repeats. Ours and the baseline are
interleaved (A B, then B A, ...) so that load from other processes hits both alike; the *ratio* column is the
median of the per-round ratios (the two time columns are the medians of the raw times, so their quotient can
differ a little from the ratio). Peak memory: each case runs once in a fresh Python process (this script
with ``--memory-case``); peak = the peak resident set size during the case (``VmHWM`` after resetting it
through ``/proc/self/clear_refs``, else ``ru_maxrss``) minus the resident set size just before it. The
child runs with ``MALLOC_MMAP_THRESHOLD_=131072`` so that freed tensors leave the RSS at once and the peak
follows the live tensors; with glibc's default the peak also depends on what the set-up left in the heap
(``--allocator-detail`` adds those numbers as a detail line).

Threads: one torch thread by default (``--threads N``; ``--threads 0`` keeps torch's default, all cores).
On a machine shared with other jobs an OpenMP thread stalls whenever another process takes its core, which
slows many small passes far more than a few big batches, so with two threads on a busy 2-core machine the
ratios swing from run to run (the same row moved between 0.9x and 2x). One thread keeps them steady. The
per-call Python overhead weighs a little more with all cores (the passes are faster), so rows close to
their goal should also be checked with ``--threads 0`` on a quiet machine.

Exit status: 0 when the correctness checks pass (maps agree with Captum, targets and baselines identical),
1 otherwise. A goal that is not met is printed as such but does not change the exit status.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

import napari_attribution as na
from napari_attribution.inferers import default_memory_budget

SINGLE_PASS = (
    "saliency",
    "input_x_gradient",
    "grad_cam",
    "grad_cam_pp",
    "hires_cam",
    "cam",
    "layer_activation",
    "guided_backprop",
    "deconvnet",
)
COMPARED = ("saliency", "input_x_gradient", "grad_cam", "hires_cam")
COMPLETENESS_TOLERANCE = 0.01
#: row 2: how many single passes the baseline runs (and scales to the method's pass count)
BASELINE_PASSES = 16


# ------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class Config:
    """Sizes and repeat counts of one run."""

    quick: bool
    shape2d: tuple[int, ...]
    channels2d: tuple[int, ...]
    shape3d_small: tuple[int, ...]
    shape3d: tuple[int, ...]
    channels3d: tuple[int, ...]
    repeats: int  # single-pass rows
    repeats_slow: int  # multi-pass and 96^3 rows
    warmup: int
    occlusion_window: int
    occlusion_stride: int
    ig_steps: int = 32
    smooth_samples: int = 16
    rise_masks: int = 200
    steps_grid: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    captum_batches: tuple[int, ...] = (1, 2, 4, 8, 32)
    classes: int = 4
    seed: int = 0


FULL = Config(
    quick=False,
    shape2d=(224, 224),
    channels2d=(64, 64, 128, 128, 128),
    shape3d_small=(64, 64, 64),
    shape3d=(96, 96, 96),
    channels3d=(8, 16, 32, 64),
    repeats=9,
    repeats_slow=4,
    warmup=2,
    occlusion_window=56,
    occlusion_stride=28,
)
QUICK = Config(
    quick=True,
    shape2d=(64, 64),
    channels2d=(8, 8, 16, 16, 16),
    shape3d_small=(32, 32, 32),
    shape3d=(32, 32, 32),
    channels3d=(4, 4, 8, 8),
    repeats=3,
    repeats_slow=3,
    warmup=1,
    occlusion_window=16,
    occlusion_stride=8,
    rise_masks=50,
)


# ------------------------------------------------------------------------------------------------
# model and input


class ConvNet(nn.Module):
    """conv-BN-ReLU(inplace)-maxpool blocks, then global average pooling and a linear head (CAM applies).

    Parameters
    ----------
    spatial_dims : int
        2 or 3.
    channels : sequence of int
        Output channels of each block; no pooling after the last block (the layer explained by CAM methods).
    classes : int
        Number of logits.
    stem_stride : int
        Stride of the first convolution (2 for the 3D model, as in most 3D medical classifiers).
    """

    def __init__(self, spatial_dims: int, channels: Sequence[int], classes: int = 4, stem_stride: int = 1) -> None:
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]
        pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]
        gap = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[spatial_dims]
        blocks: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(channels):
            layers: list[nn.Module] = [
                conv(c_in, c, 3, stride=stem_stride if i == 0 else 1, padding=1, bias=False),
                norm(c),
                nn.ReLU(inplace=True),
            ]
            if i < len(channels) - 1:
                layers.append(pool(2))
            blocks.append(nn.Sequential(*layers))
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.pool = gap(1)
        self.head = nn.Linear(c_in, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, 1, *S)`` -> logits ``(B, classes)``."""
        return cast(Tensor, self.head(self.pool(self.features(x)).flatten(1)))


@dataclass(frozen=True)
class Setting:
    """One model on one input: everything a case (also one in a child process) needs to rebuild them."""

    spatial_dims: int
    channels: tuple[int, ...]
    shape: tuple[int, ...]
    stem_stride: int
    classes: int
    seed: int

    @property
    def layer(self) -> str:
        """The layer CAM methods explain: the last block."""
        return f"features.{len(self.channels) - 1}"

    @property
    def label(self) -> str:
        """``2D 224x224`` / ``3D 96^3``."""
        if self.spatial_dims == 3 and len(set(self.shape)) == 1:
            return f"3D {self.shape[0]}^3"
        return f"{self.spatial_dims}D " + "x".join(map(str, self.shape))


def build_model(s: Setting) -> nn.Module:
    """The seeded model of ``s``, in eval mode with frozen parameters (identical in every process).

    Batch-norm layers get statistics from a few synthetic scans and a random affine part, as a trained model
    would have: with zero-mean, unit-variance BN and bias-free convolutions the network would be positively
    homogeneous (``f(a x) = a f(x)`` up to the head's bias) and integrated gradients would be exact at any
    step count, which would make row 4c meaningless.
    """
    torch.manual_seed(s.seed)
    model = ConvNet(s.spatial_dims, s.channels, s.classes, s.stem_stride)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d))]
    for m in norms:
        m.momentum = None  # cumulative average over the calibration batch
    batch = np.stack([synthetic_scan(s.shape, s.seed + 1 + i) for i in range(4)])[:, None]
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(batch))
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.5)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def synthetic_scan(shape: Sequence[int], seed: int) -> np.ndarray:
    """A smooth float32 'scan' in [0, 1]: a few Gaussian blobs on a dim background plus a little noise."""
    rng = np.random.default_rng(seed)
    img = np.full(tuple(shape), 0.1, np.float32)
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    for _ in range(5):
        centre = [rng.uniform(0.2, 0.8) * n for n in shape]
        sigma = rng.uniform(0.05, 0.15) * min(shape)
        amp = rng.uniform(0.3, 0.9)
        blob: np.ndarray = np.ones((1,) * len(shape), np.float32)
        for ax, (a, c) in enumerate(zip(axes, centre, strict=True)):
            profile = np.exp(-((a - c) ** 2) / (2 * sigma**2)).astype(np.float32)
            blob = blob * profile.reshape([-1 if i == ax else 1 for i in range(len(shape))])
        img += amp * blob
    img += rng.normal(0.0, 0.02, size=img.shape).astype(np.float32)
    return cast(np.ndarray, np.clip(img / img.max(), 0.0, 1.0).astype(np.float32))


@dataclass
class Case:
    """A built setting: model, image (numpy, for ``na``), tensor ``(1, 1, *S)`` (for Captum and torch), target."""

    setting: Setting
    model: nn.Module
    image: np.ndarray
    x: Tensor
    k: int


def make_case(s: Setting) -> Case:
    """Build the model and input of ``s`` and fix the target on the predicted class."""
    model = build_model(s)
    image = synthetic_scan(s.shape, s.seed)
    x = torch.from_numpy(image.copy()).reshape((1, 1) + tuple(s.shape))
    with torch.no_grad():
        k = int(model(x)[0].argmax())
    return Case(s, model, image, x, k)


def settings(cfg: Config) -> dict[str, Setting]:
    """The three settings of a run: 2D, small 3D (rows 1 and 3) and the 96^3 volume (rows 4 and 5)."""
    return {
        "2d": Setting(2, cfg.channels2d, cfg.shape2d, 1, cfg.classes, cfg.seed),
        "3d_small": Setting(3, cfg.channels3d, cfg.shape3d_small, 2, cfg.classes, cfg.seed),
        "3d": Setting(3, cfg.channels3d, cfg.shape3d, 2, cfg.classes, cfg.seed),
    }


# ------------------------------------------------------------------------------------------------
# plain passes and Captum calls (the baselines)


def plain_forward_backward(case: Case) -> Callable[[], Tensor]:
    """One forward and one backward: ``torch.autograd.grad(model(x)[0, k], x)``."""

    def run() -> Tensor:
        xi = case.x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(case.model(xi)[0, case.k], xi)
        return g

    return run


def plain_forward(case: Case) -> Callable[[], Tensor]:
    """One forward pass without autograd."""

    def run() -> Tensor:
        with torch.no_grad():
            return cast(Tensor, case.model(case.x))

    return run


def ours(case: Case, method: str, **params: Any) -> Callable[[], na.Attribution]:
    """``na.explain`` of ``method`` on the case's numpy image, target ``k``, layer passed explicitly."""
    layer = case.setting.layer if na.get_method(method).needs_layer else None
    return lambda: na.explain(case.model, case.image, method, target=case.k, layer=layer, params=params or None)


def captum_ig(case: Case, steps: int, batch: int) -> Callable[[], Tensor]:
    """Captum ``IntegratedGradients`` with the same baseline (0.0), target, rule and step count."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(case.model)
    return lambda: ig.attribute(
        case.x, baselines=0.0, target=case.k, n_steps=steps, method="gausslegendre", internal_batch_size=batch
    )


def captum_grad_cam(case: Case) -> Callable[[], Tensor]:
    """Captum ``LayerGradCam`` (ReLU) followed by trilinear/bilinear ``LayerAttribution.interpolate``."""
    from captum.attr import LayerAttribution, LayerGradCam

    layer = dict(case.model.named_modules())[case.setting.layer]
    gc_ = LayerGradCam(case.model, layer)
    mode = {2: "bilinear", 3: "trilinear"}[case.setting.spatial_dims]

    def run() -> Tensor:
        a = gc_.attribute(case.x, target=case.k, relu_attributions=True)
        return cast(Tensor, LayerAttribution.interpolate(a, tuple(case.x.shape[2:]), mode))

    return run


def target_score(case: Case, x: Tensor) -> float:
    """The target logit ``f_k(x)``."""
    with torch.no_grad():
        return float(case.model(x)[0, case.k])


# ------------------------------------------------------------------------------------------------
# timing


@dataclass(frozen=True)
class Timing:
    """Median times (ms) of ours and the baseline, and the median of the per-round ratios."""

    ours_ms: float
    base_ms: float
    ratio: float


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(
    our_fn: Callable[[], object],
    base_fn: Callable[[], object],
    *,
    repeats: int,
    warmup: int,
    base_scale: float = 1.0,
) -> Timing:
    """Time ``our_fn`` against ``base_fn`` interleaved (A B, B A, A B, ...), after ``warmup`` runs of each.

    ``base_scale`` multiplies the baseline's time (``n_passes / passes run``: the baseline runs a few single
    passes and stands for ``n_passes`` of them).
    """
    for _ in range(warmup):
        our_fn()
        base_fn()
    a: list[float] = []
    b: list[float] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            gc.collect()
            if r % 2 == 0:
                ta = _timed(our_fn)
                tb = _timed(base_fn) * base_scale
            else:
                tb = _timed(base_fn) * base_scale
                ta = _timed(our_fn)
            a.append(ta)
            b.append(tb)
    finally:
        if enabled:
            gc.enable()
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return Timing(statistics.median(a) * 1e3, statistics.median(b) * 1e3, statistics.median(ratios))


def round_robin(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Times (s) of several functions run in turn, each round starting one function later, after ``warmup``
    runs of each; load from other processes then hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        gc.collect()
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            times[name].append(_timed(fns[name]))
    return times


def repeat(fn: Callable[[], object], n: int) -> Callable[[], None]:
    """``fn`` run ``n`` times in a row."""

    def run() -> None:
        for _ in range(n):
            fn()

    return run


# ------------------------------------------------------------------------------------------------
# results


@dataclass
class Row:
    """One line of a table: ours against a baseline, with an optional goal on the ratio."""

    case: str
    ours: float
    baseline: float
    ratio: float
    goal: float | None = None
    note: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the goal is met (None when there is no goal)."""
        return None if self.goal is None or not math.isfinite(self.ratio) else self.ratio <= self.goal


@dataclass
class Check:
    """A correctness check: the comparison is only meaningful when both sides computed the same thing."""

    name: str
    detail: str
    ok: bool


@dataclass
class Report:
    """Everything a run measured."""

    times: list[Row] = field(default_factory=list)
    memory: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def table(rows: Sequence[Row], unit: str) -> str:
    """A markdown table: case | ours | baseline | ratio | goal | met?"""
    lines = [
        f"| case | ours ({unit}) | baseline ({unit}) | ratio | goal | met? |",
        "|---|---:|---:|---:|:---:|:---:|",
    ]
    for r in rows:
        goal = "—" if r.goal is None else f"<= {r.goal:g}x"
        met = "—" if r.met is None else ("yes" if r.met else "**NO**")
        case = r.case + (f" ({r.note})" if r.note else "")
        ratio = f"{r.ratio:.2f}x" if math.isfinite(r.ratio) else "n/a"
        lines.append(f"| {case} | {_fmt(r.ours)} | {_fmt(r.baseline)} | {ratio} | {goal} | {met} |")
    return "\n".join(lines)


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress on stderr (with the elapsed time), so that stdout holds only the report."""
    print(f"[{time.perf_counter() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# rows


def row1_single_pass(case: Case, cfg: Config, report: Report) -> None:
    """Row 1: each single-pass method against one plain forward + backward."""
    base = plain_forward_backward(case)
    for method in SINGLE_PASS:
        log(f"  row 1 {case.setting.label} {method}")
        t = paired(ours(case, method), base, repeats=cfg.repeats, warmup=cfg.warmup)
        report.times.append(Row(f"1 {method}, {case.setting.label} vs 1 F+B", t.ours_ms, t.base_ms, t.ratio, 1.15))


def _pass_count(method: str, case: Case, cfg: Config) -> tuple[int, str]:
    """How many passes of which kind a multi-pass method needs by definition (its extra passes not counted)."""
    if method == "integrated_gradients":
        return cfg.ig_steps, "F+B"
    if method == "smoothgrad":
        return cfg.smooth_samples, "F+B"
    if method == "occlusion":  # the Captum window grid: ceil((size - window) / stride) + 1 per axis
        w, st = cfg.occlusion_window, cfg.occlusion_stride
        return math.prod(math.ceil((n - w) / st) + 1 for n in case.setting.shape), "F"
    if method == "rise":
        return cfg.rise_masks, "F"
    if method == "score_cam":  # one forward per channel of the layer
        return case.setting.channels[-1], "F"
    raise ValueError(method)


def row2_multi_pass(case: Case, cfg: Config, report: Report) -> None:
    """Row 2: multi-pass methods against ``n_passes`` plain batch-1 passes, run one after the other.

    The baseline runs ``min(n, BASELINE_PASSES)`` passes one after the other and scales their time to ``n``
    (rather than timing one pass and multiplying), so that it lasts long enough to see the same load from
    other processes as ours.
    """
    w, st = cfg.occlusion_window, cfg.occlusion_stride
    methods: dict[str, dict[str, Any]] = {
        "integrated_gradients": {"steps": cfg.ig_steps, "baseline": 0.0},
        "smoothgrad": {"samples": cfg.smooth_samples},
        "occlusion": {"window": w, "stride": st},
        "rise": {"masks": cfg.rise_masks},
        "score_cam": {},
    }
    units = {"F+B": plain_forward_backward(case), "F": plain_forward(case)}
    for method, params in methods.items():
        log(f"  row 2 {case.setting.label} {method}")
        n, unit = _pass_count(method, case, cfg)
        # row 1 already warmed this model up; one more warm-up run of each side would cost seconds
        runs = min(n, BASELINE_PASSES)
        t = paired(ours(case, method, **params), repeat(units[unit], runs), repeats=3, warmup=0, base_scale=n / runs)
        label = f"2 {method}, {case.setting.label} vs {n} x 1 {unit}"
        note = f"window {w}, stride {st}" if method == "occlusion" else ""
        report.times.append(Row(label, t.ours_ms, t.base_ms, t.ratio, None, note))


def row3_compare(case: Case, cfg: Config, report: Report) -> None:
    """Row 3: ``na.compare`` of four shared-pass methods against ``na.explain`` of saliency."""
    log(f"  row 3 {case.setting.label}")
    layer = case.setting.layer

    def compare() -> dict[str, na.Attribution]:
        return cast(dict[str, na.Attribution], na.compare(case.model, case.image, list(COMPARED), case.k, layer=layer))

    results = compare()
    report.checks.append(
        Check(
            f"compare returns the four maps ({case.setting.label})",
            ", ".join(f"{n}: {results[n].data.shape}" for n in COMPARED),
            all(results[n].data.shape == case.image.shape for n in COMPARED),
        )
    )
    t = paired(compare, ours(case, "saliency"), repeats=cfg.repeats, warmup=cfg.warmup)
    report.times.append(
        Row(
            f"3 compare({', '.join(COMPARED)}), {case.setting.label} vs explain(saliency)",
            t.ours_ms,
            t.base_ms,
            t.ratio,
            1.3,
        )
    )


def _relative_error(total: float, delta: float) -> float:
    return abs(total - delta) / max(abs(delta), 1e-12)


def row4_integrated_gradients(case: Case, cfg: Config, report: Report) -> int:
    """Row 4 (a) and (c): IG on the volume against Captum. Returns Captum's best ``internal_batch_size``."""
    steps = cfg.ig_steps
    label = case.setting.label
    f_x = target_score(case, case.x)
    f_b = target_score(case, torch.zeros_like(case.x))
    delta = f_x - f_b

    # (a) ours and Captum at every internal batch size, in turn; ours against the best of Captum
    ig_ours = ours(case, "integrated_gradients", steps=steps, baseline=0.0)
    log(f"  row 4a {label} ours and captum internal_batch_size in {cfg.captum_batches}, round robin")
    fns: dict[str, Callable[[], object]] = {"ours": ig_ours}
    fns.update({f"b={b}": captum_ig(case, steps, b) for b in cfg.captum_batches})
    times = round_robin(fns, repeats=cfg.repeats_slow, warmup=1)
    captum_ms = {b: statistics.median(times[f"b={b}"]) * 1e3 for b in cfg.captum_batches}
    best = min(captum_ms, key=lambda b: captum_ms[b])
    report.details.append(
        f"4a Captum IG ({label}, {steps} steps), median time by internal_batch_size: "
        + ", ".join(f"b={b}: {_fmt(v)} ms" for b, v in captum_ms.items())
        + f"; best b = {best}; ours (default memory budget) {_fmt(statistics.median(times['ours']) * 1e3)} ms."
    )
    ratios = [a / b for a, b in zip(times["ours"], times[f"b={best}"], strict=True)]
    report.times.append(
        Row(
            f"4a integrated_gradients {steps} steps, {label} vs Captum (best b={best})",
            statistics.median(times["ours"]) * 1e3,
            captum_ms[best],
            statistics.median(ratios),
            1.1,
            "ours: default memory budget",
        )
    )
    att = ig_ours()
    ref = captum_ig(case, steps, best)()[0, 0].numpy()
    scale = float(np.abs(ref).max()) or 1.0
    diff = float(np.abs(att.data - ref).max())
    comp = att.extras["completeness"]
    report.checks.append(
        Check(
            f"IG ours == Captum ({label}, {steps} steps, baseline 0, target {case.k})",
            f"max |diff| = {diff:.2e} (max |attr| = {scale:.2e})",
            diff <= 1e-3 * scale,
        )
    )
    report.checks.append(
        Check(
            f"IG same f(x) - f(baseline) on both sides ({label})",
            f"ours {comp['delta']:.6g}, torch {delta:.6g}",
            abs(comp["delta"] - delta) <= 1e-4 * max(1.0, abs(delta)),
        )
    )
    log(f"  row 4a {label} ours max_batch={best} vs captum b={best}")
    t = paired(
        ours(case, "integrated_gradients", steps=steps, baseline=0.0, max_batch=best),
        captum_ig(case, steps, best),
        repeats=3,
        warmup=1,
    )
    report.times.append(
        Row(
            f"4a integrated_gradients {steps} steps max_batch={best}, {label} vs Captum (b={best})",
            t.ours_ms,
            t.base_ms,
            t.ratio,
            None,
            "diagnostic: same chunk size on both sides",
        )
    )

    # (c) smallest steps with relative completeness error < 1 %, for each side
    found: dict[str, tuple[int, float] | None] = {"ours": None, "captum": None}
    errors: dict[str, list[str]] = {"ours": [], "captum": []}
    for n in cfg.steps_grid:
        if found["ours"] is None:
            comp_n = ours(case, "integrated_gradients", steps=n, baseline=0.0)().extras["completeness"]
            e = float(comp_n["relative_error"])
            errors["ours"].append(f"{n}: {e:.2%}")
            if e < COMPLETENESS_TOLERANCE:
                found["ours"] = (n, e)
        if found["captum"] is None:
            total = float(captum_ig(case, n, best)().sum())
            e = _relative_error(total, delta)
            errors["captum"].append(f"{n}: {e:.2%}")
            if e < COMPLETENESS_TOLERANCE:
                found["captum"] = (n, e)
        if all(v is not None for v in found.values()):
            break
    for side in ("ours", "captum"):
        report.details.append(f"4c {side} relative completeness error by steps ({label}): " + ", ".join(errors[side]))
    top = cfg.steps_grid[-1]
    s_ours, e_ours = found["ours"] or (top, float("nan"))
    s_cap, e_cap = found["captum"] or (top, float("nan"))
    log(f"  row 4c {label} ours {s_ours} steps vs captum {s_cap} steps")
    t = paired(
        ours(case, "integrated_gradients", steps=s_ours, baseline=0.0),
        captum_ig(case, s_cap, best),
        repeats=max(3, cfg.repeats_slow - 2),
        warmup=1,
    )

    def reached(found_: tuple[int, float] | None, s: int, e: float) -> str:
        return f"{s} steps, err {e:.2%}" if found_ else f"not reached by {s} steps"

    note = f"ours {reached(found['ours'], s_ours, e_ours)}; Captum {reached(found['captum'], s_cap, e_cap)}"
    report.times.append(
        Row(
            f"4c IG to completeness error < 1 %, {label} vs Captum (b={best})",
            t.ours_ms,
            t.base_ms,
            t.ratio,
            None,
            note,
        )
    )
    # (c') the same target reached by our adaptive rule (steps="auto": bisection with an exact per-interval error
    # indicator) against Captum at the smallest sufficient step count found above (an oracle: the cost of the
    # search that found it is not counted on Captum's side)
    auto = ours(case, "integrated_gradients", steps="auto", tolerance=COMPLETENESS_TOLERANCE * 0.9, baseline=0.0)
    comp_a = auto().extras["completeness"]
    log(f"  row 4c' {label} auto: {comp_a['steps']} gradient evaluations, err {comp_a['relative_error']:.2%}")
    t2 = paired(auto, captum_ig(case, s_cap, best), repeats=max(3, cfg.repeats_slow - 2), warmup=1)
    report.times.append(
        Row(
            f"4c' IG steps='auto' to < 1 %, {label} vs Captum at its smallest sufficient steps (b={best})",
            t2.ours_ms,
            t2.base_ms,
            t2.ratio,
            0.8,
            f"ours {comp_a['steps']} gradient evaluations, err {comp_a['relative_error']:.2%}; "
            f"Captum {reached(found['captum'], s_cap, e_cap)} (oracle step count)",
        )
    )
    return best


def row5_grad_cam(case: Case, cfg: Config, report: Report) -> None:
    """Row 5: Grad-CAM on the volume against Captum's LayerGradCam + interpolate, and the maps agree."""
    label = case.setting.label
    log(f"  row 5 {label}")
    mine = ours(case, "grad_cam")
    theirs = captum_grad_cam(case)
    a = mine().data
    b = theirs()[0, 0].detach().numpy()
    scale = float(np.abs(b).max()) or 1.0
    diff = float(np.abs(a - b).max())
    report.checks.append(
        Check(
            f"grad_cam ours == Captum LayerGradCam + trilinear interpolate ({label})",
            f"max |diff| = {diff:.2e} (max |map| = {scale:.2e})",
            diff <= 1e-4 * scale,
        )
    )
    t = paired(mine, theirs, repeats=cfg.repeats_slow, warmup=cfg.warmup)
    report.times.append(
        Row(
            f"5 grad_cam, {label} vs Captum LayerGradCam + interpolate",
            t.ours_ms,
            t.base_ms,
            t.ratio,
            None,
            f"max abs diff {diff:.1e}",
        )
    )


def row6_segmentation(cfg: Config, report: Report) -> None:
    """Row 6: a MONAI 3D UNet (two classes) on the 96^3 scan with a region target — the sum of the class-1 logits
    over a central box — against one plain forward + backward of that score and against Captum with a forward
    wrapper that returns the same score (Captum has no segmentation targets). Saliency and integrated gradients
    (16 steps, Captum at its faster ``internal_batch_size`` of 1 and 2)."""
    from captum.attr import IntegratedGradients, Saliency
    from monai.networks.nets import UNet

    shape = cfg.shape3d
    torch.manual_seed(cfg.seed)
    channels = (4, 8, 16, 32) if cfg.quick else (16, 32, 64, 128)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=channels, strides=(2, 2, 2),
               num_res_units=2).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    image = synthetic_scan(shape, cfg.seed)
    x = torch.from_numpy(image.copy()).reshape((1, 1) + tuple(shape))
    mask = np.zeros(shape, bool)
    mask[tuple(slice(n // 4, 3 * n // 4) for n in shape)] = True
    m_t = torch.from_numpy(mask)
    target = na.targets.Region(1, mask)
    label = "MONAI UNet 3D " + (f"{shape[0]}^3" if len(set(shape)) == 1 else "x".join(map(str, shape)))

    class RegionScore(nn.Module):
        """``(B, 1)``: the sum of the class-1 logits over the box (what the Region target differentiates)."""

        def forward(self, xs: Tensor) -> Tensor:
            return (net(xs)[:, 1] * m_t).flatten(1).sum(1, keepdim=True)

    wrapper = RegionScore()

    def plain() -> Tensor:
        xi = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(wrapper(xi).sum(), xi)
        return g

    def ours_sal() -> na.Attribution:
        return na.explain(net, image, "saliency", target)

    def captum_sal() -> Tensor:
        return Saliency(wrapper).attribute(x, target=0, abs=True)

    steps = 8 if cfg.quick else 16

    def ours_ig() -> na.Attribution:
        return na.explain(net, image, "integrated_gradients", target, params={"steps": steps, "baseline": 0.0})

    def captum_ig_b(b: int) -> Callable[[], Tensor]:
        return lambda: IntegratedGradients(wrapper).attribute(x, baselines=0.0, target=0, n_steps=steps,
                                                              internal_batch_size=b)

    for name, got, want in (("saliency", ours_sal().data, captum_sal()[0, 0].numpy()),
                            ("integrated_gradients", ours_ig().data, captum_ig_b(2)()[0, 0].numpy())):
        scale = float(np.abs(want).max())
        diff = float(np.abs(got - want).max())
        report.checks.append(Check(f"{name} ours == Captum with a region wrapper ({label})",
                                   f"max |diff| = {diff:.2e} (max |map| = {scale:.2e})", diff <= 1e-3 * scale))
    t = paired(ours_sal, plain, repeats=cfg.repeats_slow, warmup=cfg.warmup)
    report.times.append(Row(f"6 saliency, {label}, region target vs 1 F+B", t.ours_ms, t.base_ms, t.ratio, None))
    t = paired(ours_sal, captum_sal, repeats=cfg.repeats_slow, warmup=cfg.warmup)
    report.times.append(Row(f"6 saliency, {label}, region target vs Captum Saliency", t.ours_ms, t.base_ms,
                            t.ratio, None))
    times = round_robin({"ours": ours_ig, "b1": captum_ig_b(1), "b2": captum_ig_b(2)},
                        repeats=max(3, cfg.repeats_slow - 1), warmup=1)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = min(("b1", "b2"), key=lambda k: med[k])
    report.times.append(Row(f"6 integrated_gradients {steps} steps, {label}, region target vs Captum (best {best})",
                            med["ours"], med[best], med["ours"] / med[best], None))


# ------------------------------------------------------------------------------------------------
# peak memory, one fresh process per case


def _rss_bytes() -> int:
    """The resident set size now (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _peak_bytes()


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``),
    so that what the imports and set-up touched cannot hide the case's peak. False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    """The peak RSS: ``VmHWM`` (honours :func:`_reset_peak`), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def memory_child(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one memory case in this (fresh) process and return its peak above the resident set before it."""
    if payload.get("threads"):
        torch.set_num_threads(int(payload["threads"]))
    raw = payload["setting"]
    s = Setting(
        int(raw["spatial_dims"]),
        tuple(raw["channels"]),
        tuple(raw["shape"]),
        int(raw["stem_stride"]),
        int(raw["classes"]),
        int(raw["seed"]),
    )
    case = make_case(s)
    kind = payload["kind"]
    fn: Callable[[], object]
    if kind == "fb":
        fn = plain_forward_backward(case)
    elif kind == "ours":
        fn = ours(case, payload["method"], **payload.get("params", {}))
    elif kind == "captum_ig":
        fn = captum_ig(case, int(payload["steps"]), int(payload["batch"]))
    elif kind == "captum_grad_cam":
        fn = captum_grad_cam(case)
    else:
        raise ValueError(kind)
    gc.collect()
    _reset_peak()
    before, peak_before = _rss_bytes(), _peak_bytes()
    fn()
    peak = _peak_bytes()
    return {"bytes": max(0, peak - before), "raised_peak": peak > peak_before}


#: glibc setting under which every block of 128 KiB or more is its own mapping, returned to the OS on free,
#: so that the RSS follows the live tensors. With glibc's default (a threshold that grows up to 32 MiB), freed
#: blocks stay in the heap and the measured peak depends on what the set-up happened to leave there.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def measure_memory(
    setting: Setting, kind: str, threads: int, *, runs: int = 1, env: dict[str, str] | None = None, **extra: Any
) -> tuple[float, bool]:
    """Peak memory (MB) of one case, measured in fresh processes (this script with ``--memory-case``) under
    ``env`` (default: :data:`FIXED_MMAP_THRESHOLD`; ``{}`` for glibc's defaults); the smallest of ``runs``."""
    env = FIXED_MMAP_THRESHOLD if env is None else env
    payload = {"setting": asdict(setting), "kind": kind, "threads": threads, **extra}
    best: tuple[float, bool] | None = None
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--memory-case", json.dumps(payload)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, **env},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory case {kind} failed:\n{proc.stderr}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        mb = (result["bytes"] / 2**20, bool(result["raised_peak"]))
        best = mb if best is None or mb[0] < best[0] else best
    assert best is not None
    return best


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def memory_rows(case: Case, cfg: Config, best_batch: int, report: Report, allocator_detail: bool = False) -> None:
    """Rows 4b (IG peak memory) and peak memory of saliency and Grad-CAM, each case in its own process.

    ``allocator_detail`` adds the same cases under glibc's default allocator settings (a detail line).
    """
    s = case.setting
    label = s.label
    threads = torch.get_num_threads()
    steps = cfg.ig_steps
    ig = {"method": "integrated_gradients", "params": {"steps": steps, "baseline": 0.0}}
    ig1 = {"method": "integrated_gradients", "params": {"steps": steps, "baseline": 0.0, "max_batch": 1}}
    cases: dict[str, tuple[str, dict[str, Any]]] = {
        "fb": ("fb", {}),
        "ours_ig": ("ours", ig),
        "ours_ig_b1": ("ours", ig1),
        "captum_ig": ("captum_ig", {"steps": steps, "batch": best_batch}),
        "captum_ig_b1": ("captum_ig", {"steps": steps, "batch": 1}),
        "ours_saliency": ("ours", {"method": "saliency"}),
        "ours_grad_cam": ("ours", {"method": "grad_cam"}),
        "captum_grad_cam": ("captum_grad_cam", {}),
    }
    if cfg.quick:  # each case costs a process start (imports); the quick run only exercises the code path
        cases = {k: v for k, v in cases.items() if k in ("fb", "ours_ig", "captum_ig")}
    mb: dict[str, float] = {}
    for name, (kind, extra) in cases.items():
        log(f"  memory {label} {name}")
        mb[name], raised = measure_memory(s, kind, threads, **extra)
        if not raised:
            report.details.append(
                f"memory {name}: the case did not raise the process peak; {mb[name]:.0f} MB is an upper bound."
            )
    if allocator_detail:
        glibc = {}
        for name, (kind, extra) in cases.items():
            log(f"  memory {label} {name} (glibc default allocator)")
            glibc[name] = measure_memory(s, kind, threads, env={}, **extra)[0]
        report.details.append(
            "the same peaks under glibc's default allocator settings (freed blocks below 32 MiB stay in the heap, "
            "so these depend on what the set-up left there) (MB): "
            + ", ".join(f"{k} {v:.1f}" for k, v in glibc.items())
        )
    fb = mb["fb"]
    if cfg.quick:
        report.memory.append(
            Row(
                f"4b integrated_gradients {steps} steps, {label} vs 1 F+B",
                mb["ours_ig"],
                fb,
                _ratio(mb["ours_ig"], fb),
                1.5,
                "default memory budget",
            )
        )
        return
    report.memory += [
        Row(
            f"4b integrated_gradients {steps} steps, {label} vs 1 F+B",
            mb["ours_ig"],
            fb,
            _ratio(mb["ours_ig"], fb),
            1.5,
            "default memory budget",
        ),
        Row(
            f"4b integrated_gradients {steps} steps max_batch=1, {label} vs 1 F+B",
            mb["ours_ig_b1"],
            fb,
            _ratio(mb["ours_ig_b1"], fb),
            None,
        ),
        Row(
            f"4b Captum IG {steps} steps b={best_batch}, {label} vs 1 F+B",
            mb["captum_ig"],
            fb,
            _ratio(mb["captum_ig"], fb),
            None,
        ),
        Row(
            f"4b integrated_gradients, {label} vs Captum IG (b={best_batch})",
            mb["ours_ig"],
            mb["captum_ig"],
            _ratio(mb["ours_ig"], mb["captum_ig"]),
            None,
        ),
        Row(
            f"4b integrated_gradients max_batch=1 vs Captum IG b=1, {label}",
            mb["ours_ig_b1"],
            mb["captum_ig_b1"],
            _ratio(mb["ours_ig_b1"], mb["captum_ig_b1"]),
            None,
        ),
        Row(f"1 saliency, {label} vs 1 F+B", mb["ours_saliency"], fb, _ratio(mb["ours_saliency"], fb), None),
        Row(
            f"5 grad_cam, {label} vs Captum LayerGradCam + interpolate",
            mb["ours_grad_cam"],
            mb["captum_grad_cam"],
            _ratio(mb["ours_grad_cam"], mb["captum_grad_cam"]),
            None,
        ),
    ]


def memory_perturbation(case: Case, cfg: Config, report: Report) -> None:
    """Peak memory of occlusion (forward passes only) against its own ``memory_budget`` and one F+B."""
    label = case.setting.label
    threads = torch.get_num_threads()
    w, st = cfg.occlusion_window, cfg.occlusion_stride
    log(f"  memory {label} occlusion")
    occ_mb = measure_memory(case.setting, "ours", threads, method="occlusion", params={"window": w, "stride": st})[0]
    fb_mb = measure_memory(case.setting, "fb", threads)[0]
    given = na.get_method("occlusion").resolve_params(None)["memory_budget"]
    budget = float(given or default_memory_budget()) / 2**20  # none given: the default, half of the free memory
    report.memory.append(
        Row(
            f"2 occlusion, {label} vs its memory_budget",
            occ_mb,
            budget,
            _ratio(occ_mb, budget),
            None,
            f"window {w}, stride {st}; default budget",
        )
    )
    report.memory.append(Row(f"2 occlusion, {label} vs 1 F+B", occ_mb, fb_mb, _ratio(occ_mb, fb_mb), None))


# ------------------------------------------------------------------------------------------------
# main


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import captum
    import captum.attr  # noqa: F401  (imported up front: its first import is slow and not part of any case)

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "captum": captum.__version__,
        "napari_attribution": na.__version__,
        "load_before": os.getloadavg(),
    }


def render(report: Report, cfg: Config, seconds: float) -> str:
    """The whole report as markdown."""
    m = report.machine
    load = ", ".join(f"{v:.2f}" for v in m["load_before"]) + " -> " + ", ".join(f"{v:.2f}" for v in m["load_after"])
    out = [
        f"napari-attribution benchmarks ({'quick' if cfg.quick else 'full'} run, {seconds:.0f} s)",
        "",
        f"machine: {m['platform']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}; "
        f"python {m['python']}, torch {m['torch']}, captum {m['captum']}, napari-attribution "
        f"{m['napari_attribution']}; load average {load}",
        "",
        "### Time",
        "",
        table(report.times, "ms"),
        "",
        "### Peak memory (one fresh process per case)",
        "",
        table(report.memory, "MB"),
        "",
        "### Checks",
        "",
    ]
    out += [f"- [{'ok' if c.ok else 'FAILED'}] {c.name}: {c.detail}" for c in report.checks]
    out += ["", "### Details", ""] + [f"- {d}" for d in report.details]
    missed = [r.case for r in report.times + report.memory if r.met is False]
    met = [r.case for r in report.times + report.memory if r.met]
    out += ["", f"goals met: {len(met)}, not met: {len(missed)}"]
    out += [f"- not met: {c}" for c in missed]
    return "\n".join(out)


def run(cfg: Config, allocator_detail: bool = False, rows: str = "123456m") -> tuple[Report, str]:
    """Run the ``rows`` (digits 1-6, ``m`` for memory; default all); return the report and its markdown."""
    t0 = time.perf_counter()
    report = Report(machine=machine_info())
    cases = {name: make_case(s) for name, s in settings(cfg).items()}
    gc.collect()
    gc.freeze()  # imports and set-up move to the permanent generation: a gc.collect() per round stays cheap
    for line in dict.fromkeys(
        f"setting {c.setting.label}: channels {c.setting.channels}, layer {c.setting.layer}, target k={c.k}"
        for c in cases.values()
    ):
        report.details.append(line)
    best = 2
    if "1" in rows:
        log("row 1: single-pass methods")
        row1_single_pass(cases["2d"], cfg, report)
        row1_single_pass(cases["3d_small"], cfg, report)
    if "2" in rows:
        log("row 2: multi-pass methods")
        row2_multi_pass(cases["2d"], cfg, report)
    if "3" in rows:
        log("row 3: compare")
        row3_compare(cases["2d"], cfg, report)
        row3_compare(cases["3d_small"], cfg, report)
    if "4" in rows:
        log("row 4: integrated gradients vs Captum")
        best = row4_integrated_gradients(cases["3d"], cfg, report)
    if "5" in rows:
        log("row 5: grad-cam vs Captum")
        row5_grad_cam(cases["3d"], cfg, report)
    if "6" in rows:
        log("row 6: 3D segmentation (MONAI UNet, region target)")
        row6_segmentation(cfg, report)
    if "m" in rows:
        log("memory")
        memory_rows(cases["3d"], cfg, best, report, allocator_detail)
        if not cfg.quick:
            memory_perturbation(cases["2d"], cfg, report)
    report.machine["load_after"] = os.getloadavg()
    return report, render(report, cfg, time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (< 1 minute)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: steady ratios on a shared machine; 0 = torch's default, all cores)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results to this JSON file")
    parser.add_argument(
        "--allocator-detail",
        action="store_true",
        help="also measure the memory cases under glibc's default allocator settings (a detail line)",
    )
    parser.add_argument("--rows", default="123456m",
                        help="which rows to run: digits 1-6 and m (memory); default all, e.g. --rows 4m")
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_case is not None:
        print(json.dumps(memory_child(json.loads(args.memory_case))))
        return 0
    cfg = QUICK if args.quick else FULL
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report, text = run(cfg, args.allocator_detail, args.rows)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))
    return 0 if all(c.ok for c in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
