"""What an Explain or Compare click runs in the worker thread. Qt-free and napari-free: a request in, an outcome
out (layer data tuples, probabilities, agreement), never an exception — so the widget shows exactly one clear
notification, and a cancelled or failed run adds nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import napari_attribution as na
from napari_attribution import targets as T

from .. import layers as L
from .._errors import own_warnings
from ..pipeline import model_and_card, network_on_scan
from .model_info import ModelInfo
from .threads import job_thread_count, torch_threads
from .wrapper import Failures, never_raise

__all__ = ["Estimate", "ExplainRequest", "FitOutcome", "FitRequest", "Outcome", "estimate_passes", "fit_job",
           "in_low_priority_thread", "job_thread_count", "run_job", "torch_threads"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]


@dataclass
class ExplainRequest:
    """Everything a run needs, read from the widget on the main thread (arrays by reference, not copied)."""

    model: ModelInfo
    image: Any  # the layer's data (numpy or dask), (*S) or (C, *S)
    source: str  # the image layer's name
    methods: list[str]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method
    target: Any = None
    layer: str | None = None
    device: str | None = None
    source_geometry: dict[str, Any] = field(default_factory=dict)
    source_metadata: dict[str, Any] = field(default_factory=dict)  # e.g. original_affine
    roi: tuple[tuple[int, int], ...] | None = None  # (start, stop) per spatial axis
    slices: list[int] | None = None  # a 2D model on a volume: these slices only
    confirm_above: float | None = None  # seconds: ask before a run estimated to take longer
    compare: bool = False
    top_fraction: float = 0.05
    sweep_layers: list[str] | None = None  # one method at each of these network layers (shallow to deep)
    threads: int | None = None  # torch threads (None: $NAPARI_ATTRIBUTION_THREADS, else all cores but one)


@dataclass
class Estimate:
    """What a run will cost: ``passes`` model passes, ``forward_passes`` of them forward-only (perturbation
    methods) and ``partial_passes`` with a backward that stops at a layer (Grad-CAM), timed on this input —
    ``pass_seconds`` a forward + backward, ``forward_seconds`` a forward; a partial pass costs their geometric mean
    (it lies between the two: the estimate is then within ``sqrt((F + B) / F)``, about 1.6x, wherever the layer
    is). Checked against measured run times at 128^3 in ``benchmarks/bench_estimate.py`` (docs/benchmarks.md)."""

    passes: float
    pass_seconds: float
    upper_bound: bool = False
    forward_passes: float = 0.0
    forward_seconds: float = 0.0
    other_seconds: float = 0.0  # work besides the model (the window methods' patch model), from its flop count
    partial_passes: float = 0.0
    #: through the card's sliding-window inferer: the windows over one input (0: the network runs whole); the passes
    #: then count window runs and the seconds are one window's (see :func:`window_passes`)
    windows: int = 0

    @property
    def seconds(self) -> float:
        full = self.passes - self.forward_passes - self.partial_passes
        partial = math.sqrt(self.pass_seconds * self.forward_seconds) if self.forward_seconds else self.pass_seconds
        return (full * self.pass_seconds + self.forward_passes * self.forward_seconds + self.partial_passes * partial
                + self.other_seconds)

    def text(self) -> str:
        about = "up to" if self.upper_bound else "about"
        one = "one window" if self.windows else "one pass"
        timed = f"{self.pass_seconds * 1000:.0f} ms measured for {one}"
        if self.forward_passes:
            timed = (f"{self.forward_passes:.0f} of them forward only; {one} measured: "
                     f"{self.forward_seconds * 1000:.0f} ms forward, {self.pass_seconds * 1000:.0f} ms with backward")
        other = f"; {_duration(self.other_seconds)} for the patch model" if self.other_seconds >= 1 else ""
        runs = f"{self.passes:.0f} window runs, {self.windows} windows over the scan" if self.windows else \
            f"{self.passes:.0f} passes"
        return f"{about} {_duration(self.seconds)} ({runs}; {timed}{other})"


@dataclass
class Outcome:
    status: str  # "ok" | "cancelled" | "failed" | "confirm"
    message: str = ""
    layers: list[L.LayerDataTuple] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    probabilities: Any = None
    agreement: dict[str, Any] | None = None
    estimate: Estimate | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sweep: list[dict[str, Any]] | None = None  # a layer sweep: one row per network layer (layer_sweep_table)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# ------------------------------------------------------------------------------------------------ layout


def spatial_offset(info: ModelInfo, shape: tuple[int, ...]) -> int:
    """0 when every array axis is spatial, 1 when the first axis holds the model's input channels (the input
    path's rule, :func:`napari_attribution.inputs.layout`; a shape that fits no rule counts as all spatial and
    the run says why)."""
    from ..inputs import layout

    try:
        return 1 if layout(tuple(shape), model_and_card(info.model)[1]).channel_axis else 0
    except na.AttributionError:
        return 0


def scan_geometry(source_geometry: Mapping[str, Any], spatial: tuple[int, ...],
                  roi: tuple[slice, ...] | None = None) -> na.Geometry | None:
    """The scan's voxel spacing (and origin) from its napari layer's scale and translate (mm), for the card's
    resampling; None when the layer has no scale. With ``roi``, the geometry of the box's first voxel."""
    nd = len(spatial)
    scale = list(source_geometry.get("scale") or [])[-nd:]
    if len(scale) != nd or not all(np.isfinite(scale)) or min(scale) <= 0:
        return None
    translate = list(source_geometry.get("translate") or [0.0] * nd)[-nd:]
    if len(translate) != nd:
        translate = [0.0] * nd
    if roi is not None:
        translate = [t + s * sl.start for t, s, sl in zip(translate, scale, roi, strict=True)]
    return na.Geometry(spacing=tuple(float(v) for v in scale), origin=tuple(float(v) for v in translate))


def _paste(att: na.Attribution, full_shape: tuple[int, ...], roi: tuple[slice, ...]) -> na.Attribution:
    """The result of a run on the box ``roi`` placed in the scan of ``full_shape``: the map NaN outside the box, a
    label map 0 outside it, a slice-wise run's per-slice probabilities NaN on the other slices and its slices
    numbered in the scan; ``extras["roi"]`` records the box. The targets stay in the box's voxel space."""
    data = np.full(full_shape, np.nan, np.float32)
    data[roi] = att.data
    pred = att.prediction
    if att.label_map is not None and pred is not None:
        full = np.zeros(full_shape, pred.dtype)
        full[roi] = pred
        pred = full
    elif att.per_slice is not None and pred is not None:  # class probabilities, one row per slice
        rows = np.full((full_shape[0], *pred.shape[1:]), np.nan, pred.dtype)
        rows[roi[0]] = pred
        pred = rows
    per_slice = att.per_slice.shifted(int(roi[0].start)) if att.per_slice is not None else None
    extras = {**att.extras, "roi": [[sl.start, sl.stop] for sl in roi]}
    return dataclasses.replace(att, data=data, prediction=pred, extras=extras, per_slice=per_slice)


# ------------------------------------------------------------------------------------------------ cost


def pass_kinds(method: str, params: Mapping[str, Any], passes: float) -> tuple[float, float]:
    """How many of ``method``'s ``passes`` (from :func:`estimate_passes`) are forward-only, and how many have a
    backward that stops at a layer (the "1F + partial B" methods: Grad-CAM and its kin): the registry entry's
    ``pass_kind``."""
    info = na.get_method(method)
    return info.split_passes(info.resolve_params(params), passes)


def estimate_passes(method: str, params: Mapping[str, Any], spatial: tuple[int, ...], *,
                    layer_channels: int | None = None) -> tuple[float, bool]:
    """Forward(+backward) passes a method needs on one input of spatial shape ``spatial``; ``(passes, upper)``
    where ``upper`` says the count is an upper bound (adaptive methods): the registry entry's cost
    (:meth:`napari_attribution.MethodInfo.estimate`; window methods count the windows their scaled defaults give)."""
    cost = na.get_method(method).estimate(params, spatial, layer_channels=layer_channels)
    return cost.passes, cost.upper


def _pass_seconds(module: Any, x: Any, device: Any) -> tuple[float, float]:
    """Wall time of one forward + input-gradient backward, and of one forward without gradients (the model's
    parameters and .grad are untouched). The faster of two passes: the first also pays for allocations and kernel
    set-up (3-5x a later pass at 48^3), which the run's many passes do not."""
    import torch

    from ..inputs import unwrap
    from ..methods._hooks import model_guard

    both = math.inf
    # eval mode, frozen parameters and the model's lock, as for a run: another dock's run on the same model waits
    with model_guard(unwrap(module)):
        for _ in range(2):
            xs = x.detach().clone().requires_grad_(True)
            t0 = time.perf_counter()
            out = module(xs)
            if isinstance(out, (tuple, list)):
                out = out[0]
            torch.autograd.grad(out.float().sum(), xs)
            both = min(both, time.perf_counter() - t0)
            del out, xs
        t1 = time.perf_counter()
        with torch.no_grad():
            module(x)
    return both, min(time.perf_counter() - t1, both)


def _estimate(req: ExplainRequest, image: np.ndarray, off: int, spatial: tuple[int, ...], *,
              cheap: float = 8) -> Estimate | None:
    """The request's cost on this image; None for runs of at most ``cheap`` passes (not worth timing a pass). With
    the card's sliding-window inferer, one window is timed instead of the whole network and the passes count window
    runs (:func:`window_passes`): a stitched pass over a full-size scan takes minutes, one window a fraction of a
    second."""
    info = req.model
    slicewise = info.spatial_dims == 2 and len(spatial) == 3
    one = spatial[1:] if slicewise else spatial
    n_slices = (len(req.slices) if req.slices else spatial[0]) if slicewise else 1
    total, forward, partial, flops, upper = 0.0, 0.0, 0.0, 0.0, False
    default = req.layer or info.default_layer or (info.layers[-1] if info.layers else "")
    shared = False  # shared-pass methods compute every swept layer from the same pass
    costs: list[tuple[na.MethodInfo, Mapping[str, Any], Any]] = []
    for layer in req.sweep_layers or [default]:
        for m in req.methods:
            method = na.get_method(m)
            cost = method.estimate(req.params.get(m, {}), one, layer_channels=info.layer_channels.get(layer or ""))
            if cost.passes <= 2 and method.shared_pass:
                if shared:
                    continue
                shared = True
            costs.append((method, req.params.get(m, {}), cost))
            total += cost.passes
            forward, partial = forward + cost.forward, partial + cost.partial
            flops += cost.flops * (info.in_channels or 1)  # the window methods' patch model, per input channel
            upper |= cost.upper
    flops *= n_slices
    inferer = model_and_card(info.model)[1].sliding_window
    if inferer is not None:
        return _window_estimate(req, image, spatial, one, n_slices, costs, flops, upper, cheap)
    total *= n_slices
    forward *= n_slices
    partial *= n_slices
    if total <= cheap:
        return None  # cheap: no need to measure
    import torch

    geometry = scan_geometry(req.source_geometry, spatial)
    key = (tuple(image.shape), req.device, None if geometry is None else geometry.spacing)
    if key not in info.pass_seconds:
        dev = torch.device(req.device) if req.device else None
        if dev is not None and dev.type != "cpu":
            return None  # no timing on accelerators (the model would have to move twice)
        # the network as the run will see it: the card's resampling / input shape / padding in its forward
        info.pass_seconds[key] = network_on_scan(info.model, image, geometry,
                                                 lambda net, x: _pass_seconds(net, x, dev))
    both, fwd = info.pass_seconds[key]
    other = flops / _flop_rate() if flops else 0.0
    return Estimate(total, both, upper, forward_passes=forward, forward_seconds=fwd, other_seconds=other,
                    partial_passes=partial)


def window_passes(method: na.MethodInfo, params: Mapping[str, Any], cost: Any, plan: Any,
                  spatial: tuple[int, ...]) -> tuple[float, float, float]:
    """Window runs of one method through a sliding-window inferer: ``(forward only, forward + backward, forward +
    backward stopping at a layer)``, for the method's ``cost`` (:meth:`~napari_attribution.MethodInfo.estimate` on
    the scan's grid ``spatial``) and the inferer's ``plan`` over the model grid (``W`` windows).

    - a gradient method: each pass is one stitched forward over all windows (no graph kept) and one forward +
      backward per window; a method whose passes are not shared (integrated gradients, SmoothGrad) also runs the
      stitched forward that fixes the target first;
    - a layer method (Grad-CAM and its kin): one stitched forward and one forward + partial backward per window
      (forward only for ``layer_activation``);
    - a perturbation method: one stitched forward that fixes the target and is the reference of the perturbed
      inputs, and per perturbation the windows it changes — estimated from the perturbation's box (the method's
      window, scaled to the model grid) against the inferer's window placement, averaged over the box positions; a
      perturbation that changes more than half of the windows runs all of them, one without a box (RISE's masks)
      changes them all. The reference outputs of changed windows are computed once each (at most ``W`` more).

    With ``params["patch_local"]``: the stitched prediction, then the method's own passes on each window (its cost
    at ``roi_size``), the network alone.

    Every window is counted in the backward: a target whose gradient reaches fewer windows (a ``Voxel``, a small
    region) runs fewer, so the estimate is then above the run's time. With the inferer's ``mirror_axes`` each window
    runs once per mirror (``2 ** len(mirror_axes)`` network passes), except in a layer method's per-window pass,
    which sees each window once.
    """
    W = float(plan.count())
    m = float(2 ** len(getattr(plan.spec, "mirror_axes", ()) or ()))  # network passes per window run
    if params.get("patch_local"):  # the stitched prediction, then the method on each window, by the network alone
        local = method.estimate(params, tuple(plan.spec.roi_size))
        return m * W + W * local.forward, W * (local.passes - local.forward - local.partial), W * local.partial
    full = max(0.0, cost.passes - cost.forward - cost.partial)
    if method.sliding_window == "changed windows":
        box = _perturbation_box(method.name, params, spatial)
        if box is None:
            return m * (W + cost.passes * W), 0.0, 0.0
        return m * (2 * W + cost.passes * changed_windows(plan, box[0], box[1], spatial)), 0.0, 0.0
    first = W if method.shared_pass else W + W * full  # the stitched forward(s) before the windows' backward
    if method.sliding_window == "per-window":
        return m * first + W * cost.forward, 0.0, W * cost.partial
    return m * (first + W * cost.forward), m * W * full, m * W * cost.partial


def _perturbation_box(method: str, params: Mapping[str, Any],
                      spatial: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The window and stride (scan voxels) a perturbation method changes at a time; None: the whole input."""
    from ..methods._windows import window_and_stride
    from ..methods.perturbation import occlusion_windows

    p = na.get_method(method).resolve_params(params)
    if method == "occlusion":
        w = occlusion_windows(p, spatial)
    elif method in ("prediction_difference", "evidence"):
        w = window_and_stride(p, spatial, method)
    else:
        return None
    return tuple(w.window), tuple(w.stride)


def changed_windows(plan: Any, box: tuple[int, ...], stride: tuple[int, ...], spatial: tuple[int, ...]) -> float:
    """The mean number of the inferer's windows that a box of ``box`` scan voxels changes, over the box's positions
    at ``stride`` on the scan's grid ``spatial`` (the box and its positions scaled to the model grid; a box that
    changes more than half of the windows counts them all, as the inferer then runs the input whole)."""
    grid = plan.spatial
    roi = plan.spec.roi_size
    lo = plan.pad[::2][::-1]  # padding before each axis (a scan smaller than the window)
    per_axis = []
    for a, (n, m, r) in enumerate(zip(spatial, grid, roi, strict=True)):
        f = m / max(n, 1)
        starts = np.asarray(sorted({sl[a].start for sl in plan.slices}), np.float64)
        b = max(1.0, box[a] * f)
        pos = np.arange(0, max(n - box[a], 0) + 1, max(1, stride[a]), dtype=np.float64) * f + lo[a]
        per_axis.append(((starts[None, :] < pos[:, None] + b) & (starts[None, :] + r > pos[:, None])).sum(1))
    counts = per_axis[0].astype(np.float64)
    for c in per_axis[1:]:
        counts = np.multiply.outer(counts, c).ravel()
    total = float(plan.count())
    return float(np.where(2 * counts > total, total, counts).mean())


def _window_estimate(req: ExplainRequest, image: np.ndarray, spatial: tuple[int, ...], one: tuple[int, ...],
                     n_slices: int, costs: list[tuple[na.MethodInfo, Mapping[str, Any], Any]], flops: float,
                     upper: bool, cheap: float) -> Estimate | None:
    """:func:`_estimate` through the card's sliding-window inferer: one window's forward + backward and forward-only
    timed on the network itself at ``roi_size``, times the window runs of :func:`window_passes`."""
    import torch

    from ..inferers import sliding_window_of

    info = req.model
    geometry = scan_geometry(req.source_geometry, spatial)
    key = (tuple(image.shape), req.device, None if geometry is None else geometry.spacing, "window")
    # the timing is cached with the model grid it was planned on, as the key's last element
    hit = next((k for k in info.pass_seconds if k[:-1] == key), None)
    grid: tuple[int, ...] | None = None if hit is None else hit[-1]
    if grid is None:
        # the model grid of the run (the card's resampling / padding), before anything is timed
        dev = torch.device(req.device) if req.device else None
        found: list[tuple[int, ...]] = []

        def time_window(net: Any, x: Any) -> tuple[float, float]:
            sw = sliding_window_of(net)
            if sw is None:  # pragma: no cover - a card with an inferer always runs through one
                raise na.ModelLoadError("The network does not run through the card's sliding-window inferer.")
            k = len(sw.spec.roi_size)
            prep = getattr(net, "prepared", None)
            found.append(tuple(prep.shape[-k:]) if prep is not None else tuple(x.shape[-k:]))
            if dev is not None and dev.type != "cpu":
                return math.nan, math.nan
            g = torch.Generator().manual_seed(0)
            xw = torch.randn((1, x.shape[1], *sw.spec.roi_size), generator=g)
            return _pass_seconds(sw.net, xw, dev)

        timing = network_on_scan(info.model, image, geometry, time_window)
        grid = found[-1]
        if math.isnan(timing[0]):
            return None  # no timing on accelerators (the model would have to move twice)
        info.pass_seconds[key + (grid,)] = timing
    both, fwd = info.pass_seconds[key + (grid,)]
    inferer = model_and_card(info.model)[1].sliding_window
    assert inferer is not None
    plan = inferer.plan(grid)
    forward = full = partial = 0.0
    for method, params, cost in costs:
        f, b, p = window_passes(method, params, cost, plan, one)
        forward, full, partial = forward + f, full + b, partial + p
    forward, full, partial = forward * n_slices, full * n_slices, partial * n_slices
    if forward + full + partial <= cheap:
        return None  # a few window runs: no need to measure
    other = flops / _flop_rate() if flops else 0.0
    return Estimate(forward + full + partial, both, upper, forward_passes=forward, forward_seconds=fwd,
                    other_seconds=other, partial_passes=partial, windows=plan.count())


def _flop_rate() -> float:
    """Double-precision operations per second of a matrix product on this machine, in this thread setting (the
    faster of two 384^3 products, about 10 ms)."""
    import torch

    a = torch.rand(384, 384, dtype=torch.float64)
    best = math.inf
    for _ in range(2):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * 384**3 / max(best, 1e-9)


# ------------------------------------------------------------------------------------------------ running


#: Niceness of the thread that computes (Linux): when CPU is short, napari's redraws go first.
JOB_NICENESS = 10


def run_job(request: ExplainRequest, progress: Progress | None = None, cancel: Cancel | None = None) -> Outcome:
    """Run the request and return an :class:`Outcome`; never raises.

    Called in napari's worker thread. On Linux the work runs in a short-lived thread of its own at a lower CPU
    priority (a thread of napari's pool would keep the lowered priority afterwards: raising it back needs
    privileges), so that on a busy machine redrawing the viewer wins over computing. Torch computes with
    ``request.threads`` threads (default: all cores but one, see :func:`job_thread_count`) and the caller's thread
    setting is restored afterwards."""
    try:
        threads = job_thread_count(request.threads)
    except na.ParameterError as err:
        return Outcome("failed", str(err))
    outcome: Outcome = in_low_priority_thread(
        _run_job, request, progress, cancel, threads=threads,
        fallback=Outcome("failed", "Explain failed: the computation stopped unexpectedly."))
    return outcome


def in_low_priority_thread(fn: Callable[..., Any], *args: Any, fallback: Any, threads: int | None = None) -> Any:
    """``fn(*args)`` in a short-lived thread at :data:`JOB_NICENESS` (Linux; elsewhere in this thread) with
    ``threads`` torch threads (None: :func:`job_thread_count`'s default; the torch setting found is restored
    afterwards, also after a failure); ``fallback`` if it returned nothing (it should catch everything itself)."""
    count = job_thread_count(threads, strict=False)  # a bad $NAPARI_ATTRIBUTION_THREADS: run_job says so
    if not (JOB_NICENESS and sys.platform.startswith("linux")):
        with torch_threads(count):
            return fn(*args)
    box: list[Any] = []

    def target() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), JOB_NICENESS)
        except OSError:
            pass
        with torch_threads(count):
            box.append(fn(*args))

    thread = threading.Thread(target=target, name="napari-attribution job", daemon=True)
    thread.start()
    thread.join()
    return box[0] if box else fallback


#: what an Explain job says when it does not finish
EXPLAIN_FAILURES = Failures(
    "explain", cancelled="Explain cancelled: no layer was added.",
    out_of_memory="Out of memory. Explain a box (ROI) or a slice, or lower max_batch.",
    unexpected=lambda err: f"Explain failed ({type(err).__name__}): {err}")


def _run_job(request: ExplainRequest, progress: Progress | None, cancel: Cancel | None) -> Outcome:
    def body() -> Outcome:
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome = _run_sweep(request, progress, cancel) if request.sweep_layers else _run(request, progress, cancel)
        # what this package warns about (incomplete maps, scans read with a caveat) reaches the user; other
        # libraries' deprecation chatter goes to the log only
        outcome.warnings = own_warnings(caught)
        for w in caught:
            log.debug("warning during explain: %s", w.message)
        outcome.seconds = time.perf_counter() - t0
        return outcome

    return never_raise(body, Outcome, EXPLAIN_FAILURES)


def _prepare(request: ExplainRequest) -> tuple[np.ndarray, int, tuple[int, ...]]:
    image = request.image
    if isinstance(image, (list, tuple)):  # a multiscale layer: the full-resolution level
        image = image[0]
    image = np.asarray(image)
    if image.ndim < 2:
        raise na.InputShapeError(f"The image layer has shape {image.shape}; a 2D or 3D image is needed.")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise na.InputShapeError(f"The image layer holds {image.dtype} values; a numeric image is needed.")
    off = spatial_offset(request.model, image.shape)
    spatial = tuple(image.shape[off:])
    dims = request.model.spatial_dims
    if dims == 3 and len(spatial) == 2:
        raise na.InputShapeError(
            f"The model {request.model.label} is a 3D model, but the image layer '{request.source}' is 2D "
            f"{image.shape}. Pick a volume."
        )
    return image, off, spatial


def _run(request: ExplainRequest, progress: Progress | None, cancel: Cancel | None) -> Outcome:
    results = _compute(request, progress, cancel)
    if isinstance(results, Outcome):
        return results
    return _outcome(request, results)


def _compute(request: ExplainRequest, progress: Progress | None, cancel: Cancel | None, *,
             sweep: bool = False) -> dict[str, Any] | Outcome:
    """The request's methods on the image (box and slices applied, maps pasted back on the full grid); an
    ``Outcome("confirm")`` instead when the run is estimated to take longer than ``request.confirm_above``.
    With ``sweep``: the one method at every layer of ``request.sweep_layers`` (``na.explain_layers``), keyed by
    layer name."""
    info = request.model
    image, off, spatial = _prepare(request)
    roi: tuple[slice, ...] | None = None
    target = request.target
    sub = image
    if request.roi is not None:
        roi = tuple(slice(max(0, int(a)), min(int(b), s)) for (a, b), s in zip(request.roi, spatial, strict=True))
        if any(sl.stop - sl.start < 1 for sl in roi):
            raise na.InputShapeError("The box (ROI) to explain is empty or lies outside the image.")
        sub = image[(slice(None),) * off + roi]
        target = T.cropped(target, roi)
    if cancel is not None and cancel():
        raise na.Cancelled("cancelled")
    sub_spatial = tuple(sub.shape[off:])
    params = {m: dict(request.params.get(m, {})) for m in request.methods}
    if request.slices is not None:
        slices = [s - (roi[0].start if roi else 0) for s in request.slices]
        slices = [s for s in slices if 0 <= s < sub_spatial[0]]
        if not slices:
            raise na.InputShapeError("The slice to explain lies outside the box (ROI).")
        for m in params:
            params[m]["slices"] = slices
    if request.confirm_above is not None:
        est = _estimate(dataclasses.replace(request, slices=params[request.methods[0]].get("slices")), sub, off,
                        sub_spatial)
        if est is not None and est.seconds > request.confirm_above:
            return Outcome("confirm", f"This run takes {est.text()}.", estimate=est)
    sub = np.asarray(sub, dtype=np.float32)
    # the scan's spacing goes with it, so the card's resampling / input shape apply exactly as in the CLI and Python
    geometry = scan_geometry(request.source_geometry, spatial, roi)
    kw = dict(target=target, layer=request.layer, device=request.device, progress=progress, cancel=cancel,
              geometry=geometry)
    if sweep:
        m = request.methods[0]
        del kw["layer"]
        results = na.explain_layers(info.model, sub, m, list(request.sweep_layers or []), params=params[m], **kw)
    elif request.compare or len(request.methods) > 1:
        shared = {m: p for m, p in params.items()}
        results = na.compare(info.model, sub, request.methods, params=shared, **kw)
    else:
        m = request.methods[0]
        results = {m: na.explain(info.model, sub, m, params=params[m], **kw)}
    if roi is not None:
        results = {m: _paste(a, spatial, roi) for m, a in results.items()}
    return results


def _run_sweep(request: ExplainRequest, progress: Progress | None, cancel: Cancel | None) -> Outcome:
    """One method at each of ``request.sweep_layers`` (same target, same scan): one heatmap layer with a leading
    "layer" axis, the prediction, and a per-layer table. Progress says which network layer runs; ``cancel`` is
    polled between layers (and inside each, as for any run)."""
    layers = list(request.sweep_layers or [])
    if len(request.methods) != 1:
        raise na.MethodError("A layer sweep runs one method.")
    method = request.methods[0]
    if not na.get_method(method).needs_layer:
        raise na.MethodError(f"{method} does not look at a network layer; sweep a layer method (e.g. grad_cam).")
    if not layers:
        raise na.LayerNotFoundError("Tick at least one network layer to sweep.")
    n = len(layers)
    info = na.get_method(method)
    if info.shared_pass or info.needs_graph:
        # every layer from one forward pass (and one backward, or sam's per-layer ones) with na.explain_layers
        def shared(done: int, total: int, message: str) -> None:
            if progress is not None:
                progress(done, total, f"{n} layers in one pass: {message}")

        one = dataclasses.replace(request, compare=False, params={method: dict(request.params.get(method, {}))})
        got = _compute(one, shared, cancel, sweep=True)
        if isinstance(got, Outcome):
            return got
        if progress is not None:
            progress(1000, 1000, f"{n} layers done")
        return _sweep_outcome(request, got, shared=True)
    results: dict[str, Any] = {}
    for i, name in enumerate(layers):
        if cancel is not None and cancel():
            raise na.Cancelled("cancelled")

        def step(done: int, total: int, message: str, i: int = i, name: str = name) -> None:
            if progress is not None:
                frac = done / max(total, 1)
                progress(int(1000 * (i + frac)), 1000 * n, f"layer {i + 1} of {n} ({name}): {message}")

        step(0, 1, "starting")
        # the whole sweep's cost is estimated once, before the first layer (_estimate reads sweep_layers)
        one = dataclasses.replace(request, layer=name, sweep_layers=layers if i == 0 else None, compare=False,
                                  confirm_above=request.confirm_above if i == 0 else None,
                                  params={method: dict(request.params.get(method, {}))})
        got = _compute(one, step, cancel)
        if isinstance(got, Outcome):
            return got
        results[name] = got[method]
    if progress is not None:
        progress(1000 * n, 1000 * n, f"{n} layers done")
    return _sweep_outcome(request, results)


def _sweep_outcome(request: ExplainRequest, results: dict[str, Any], shared: bool = False) -> Outcome:
    from ..metrics import layer_sweep_table, target_region

    info = request.model
    atts = list(results.values())
    first = atts[0]
    full_target = request.target if request.roi is not None and request.target is not None else None
    region = target_region(first, full_target, channels=info.n_classes)  # a box crops the target: use the full one
    table = layer_sweep_table(results, region)
    extra_md = {}
    affine = request.source_metadata.get("original_affine")
    if affine is not None:
        extra_md["original_affine"] = affine
    method = first.method
    secs = sum(a.seconds for a in atts)  # a shared pass is split among the layers: the sum is the sweep's time
    prov = L.provenance(
        method=method, params=first.params, target=first.target, seconds=secs,
        model=info.source, model_sha256=info.sha256, layer=None, device=request.device or "cpu",
        source=request.source, roi=first.extras.get("roi"), target_description=first.description,
        layers=list(results), layer_seconds=[a.seconds for a in atts],
        **info.provenance_fields(request.source_metadata),  # weights read / random, card, scan name and sha256
    )
    out = Outcome("ok", results=results, sweep=table)
    out.layers.append(L.layer_sweep_layer(atts, source=request.source, source_geometry=request.source_geometry,
                                          class_names=info.class_names, provenance=prov, metadata=extra_md,
                                          table=table))
    pred = L.prediction_layer(first, source=request.source, model=info.label, source_geometry=request.source_geometry,
                              class_names=info.class_names, metadata=extra_md)
    if pred is not None:
        out.layers.append(pred)
    out.probabilities = L.class_probabilities(first, info.class_names)
    how = " (one shared pass)" if shared else ""
    out.message = f"{method} at {len(atts)} layers{how} in {_duration(secs)}: {first.description}"
    return out


def agreement_table(results: Mapping[str, Any], top: float, *, max_voxels: int = 1_000_000,
                    seed: int = 0) -> dict[str, Any]:
    """``na.agreement`` on |map| over the voxels every map explained, for the Compare table: ``methods``,
    ``spearman`` and ``topk`` (IoU of the top ``top`` fraction) as nested lists, ``k`` and ``voxels``. Volumes
    with more than ``max_voxels`` explained voxels are compared on a seeded random subset of them (ranking a
    512^3 volume for every pair of methods would take minutes)."""
    maps = {m: np.asarray(getattr(a, "data", a), np.float32) for m, a in results.items()}
    finite = np.logical_and.reduce([np.isfinite(x) for x in maps.values()])
    idx = np.flatnonzero(finite)
    if idx.size > max_voxels:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_voxels, replace=False))
    sub = {m: x.ravel()[idx] for m, x in maps.items()}
    agg = na.agreement(sub, top=top, absolute=True)
    return {
        "methods": list(agg["methods"]),
        "spearman": np.asarray(agg["spearman"], float).tolist(),
        "topk": np.asarray(agg["topk_overlap"], float).tolist(),
        "k": max(1, int(round(top * idx.size))),
        "voxels": int(finite.sum()),
        "seconds": [float(getattr(a, "seconds", 0.0)) for a in results.values()],
    }


def _outcome(request: ExplainRequest, results: dict[str, Any]) -> Outcome:
    info = request.model
    names = info.class_names
    extra_md = {}
    affine = request.source_metadata.get("original_affine")
    if affine is not None:
        extra_md["original_affine"] = affine
    out = Outcome("ok", results=results)
    for m, att in results.items():
        prov = L.provenance(
            method=m, params=att.params, target=att.target, seconds=att.seconds, model=info.source,
            model_sha256=info.sha256, layer=att.layer, device=request.device or "cpu", source=request.source,
            roi=att.extras.get("roi"), target_description=att.description, used=L.used_settings(att.extras),
            **info.provenance_fields(request.source_metadata),  # weights read / random, card, scan name and sha256
        )
        out.layers.append(L.attribution_layer(att, source=request.source, source_geometry=request.source_geometry,
                                              class_names=names, provenance=prov, metadata=extra_md))
    first = next(iter(results.values()))
    pred = L.prediction_layer(first, source=request.source, model=info.label, source_geometry=request.source_geometry,
                              class_names=names, metadata=extra_md)
    if pred is not None:
        out.layers.append(pred)
    out.probabilities = L.class_probabilities(first, names)
    if len(results) > 1:
        out.agreement = agreement_table(results, request.top_fraction)
    secs = sum(a.seconds for a in results.values())
    out.message = f"{', '.join(results)} in {_duration(secs)}: {first.description}"
    return out


# ------------------------------------------------------------------------------------------------ vebi features


@dataclass
class FitRequest:
    """Fit a model's relevant features (vebi) over a data set and save them without replacing a file."""

    model: ModelInfo
    data: str  # "demo" (generated cases of a demo model) or the path of a folder of scans
    path: str  # where to save: the features file (or the model file, next to which it goes)
    n_cases: int = 40
    mu: float = 10.0
    device: str | None = None
    threads: int | None = None  # torch threads (None: $NAPARI_ATTRIBUTION_THREADS, else all cores but one)


@dataclass
class FitOutcome:
    status: str  # "ok" | "cancelled" | "failed"
    message: str = ""
    path: str | None = None
    features: Any = None
    seconds: float = 0.0


LABELS_CSV = "labels.csv"


def _fit_data(req: FitRequest) -> tuple[Any, Any, str]:
    """``(images, labels, in words)`` for :func:`na.fit_relevant_features`."""
    from pathlib import Path

    from ..interpretation import demo_cases, read_labels_csv

    if req.data == "demo":
        if not req.model.source.startswith("demo:"):
            raise na.ParameterError("Generated cases exist only for the demo models: choose a folder of scans.")
        return demo_cases(req.model.source, req.n_cases), None, "generated cases of the demo (with their labels)"
    folder = Path(req.data)
    if not folder.is_dir():
        raise na.ReaderError(f"'{folder}' is not a folder: choose the folder that holds the scans.")
    csv = next((p for p in folder.iterdir() if p.name.lower() == LABELS_CSV), None)
    if csv is not None:
        labels = read_labels_csv(csv, req.model.class_names)
        return str(folder), labels, f"scans of '{folder.name}' (labels from {csv.name})"
    return str(folder), None, f"scans of '{folder.name}' (labelled by the model's own predictions: no {LABELS_CSV})"


def fit_job(request: FitRequest, progress: Progress | None = None, cancel: Cancel | None = None) -> FitOutcome:
    """Fit and save the relevant features; never raises. A cancelled or failed fit writes no file."""
    try:
        threads = job_thread_count(request.threads)
    except na.ParameterError as err:
        return FitOutcome("failed", str(err))
    outcome: FitOutcome = in_low_priority_thread(
        _fit_job, request, progress, cancel, threads=threads,
        fallback=FitOutcome("failed", "Fitting the relevant features stopped unexpectedly; no file was written."))
    return outcome


def _fit_job(req: FitRequest, progress: Progress | None, cancel: Cancel | None) -> FitOutcome:
    from ..interpretation import features_file, save_features_beside

    t0 = time.perf_counter()

    def relay(done: int, total: int, message: str) -> None:  # responses: 0-80 %, the mu-lasso: 80-100 %
        if progress is None:
            return
        frac = done / max(total, 1)
        if message.startswith("mu-lasso"):
            progress(800 + int(200 * frac), 1000, f"selecting the relevant features: {message}")
        else:
            progress(int(800 * frac), 1000, message)

    def body() -> FitOutcome:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images, labels, what = _fit_data(req)
            feats = na.fit_relevant_features(req.model.model, images, labels, mu=req.mu, device=req.device,
                                             progress=relay, cancel=cancel)
            if cancel is not None and cancel():
                raise na.Cancelled("cancelled")
            path = save_features_beside(feats, req.path)
        seconds = time.perf_counter() - t0
        n = int(feats.info.get("n_images", 0))
        per_class = ", ".join(f"{name} {k}" for name, k in zip(
            feats.class_names, feats.info.get("relevant_per_class", []), strict=False))
        message = (f"Relevant features fitted on {n} {what} in {_duration(seconds)} (relevant features per class: "
                   f"{per_class}); saved as '{path}'.")
        wanted = features_file(req.path)
        if path != wanted:
            message += f" '{wanted.name}' already existed and was kept."
        return FitOutcome("ok", message, str(path), feats, seconds)

    return never_raise(body, FitOutcome, FIT_FAILURES)


#: what fitting the relevant features says when it does not finish
FIT_FAILURES = Failures(
    "fit", cancelled="Fitting the relevant features was cancelled: no file was written.",
    library=lambda err: f"Fitting the relevant features failed: {err}",
    out_of_memory="Out of memory while fitting the relevant features; use fewer or smaller scans.",
    os_error=lambda err: f"The relevant features could not be saved: {err}",
    unexpected=lambda err: f"Fitting the relevant features failed ({type(err).__name__}): {err}")
