"""Sliding-window inference as the model card's ``inferer`` asks, with attribution through it.

Networks trained on patches (nnU-Net, MONAI bundles) predict a full-size scan window by window and blend the
windows' outputs. The card says so explicitly (``patch_size`` alone never switches tiling on)::

    "inferer": {"type": "sliding_window", "roi_size": [96, 96, 96], "overlap": 0.25, "mode": "gaussian",
                "sigma_scale": 0.125, "padding_mode": "constant", "cval": 0, "sw_batch_size": null}

``roi_size`` is in the order of the array the network sees (numpy order, like ``input_shape``); ``overlap``,
``sigma_scale`` take one value or one per axis. The defaults are MONAI's.

**nnU-Net's variant** (``"type": "nnunet"``, written by the nnU-Net loader) predicts as ``nnUNetPredictor`` does::

    "inferer": {"type": "nnunet", "roi_size": [20, 28, 28], "step": 0.5, "mode": "gaussian", "sigma_scale": 0.125,
                "mirror_axes": [0, 1, 2], "sw_batch_size": null}

windows placed by ``compute_steps_for_sliding_window`` (``ceil((n - roi) / (roi * step)) + 1`` windows per axis,
spread evenly and rounded), its importance map ``compute_gaussian`` (scipy's ``gaussian_filter`` of a unit impulse at
the window's centre ``roi // 2``, sigma ``sigma_scale * roi``, scaled to a maximum of 10, zeros replaced by the
smallest non-zero weight; ``"mode": "constant"`` is its ``use_gaussian=False``), a scan smaller than the window
padded with zeros (split evenly, then cropped off), and the same normalisation by the summed weights, in float32
(nnU-Net's predictor adds the tiles in float16).

**Mirroring** (``"mirror_axes"``, either type; nnU-Net's test-time augmentation): each window's output is the mean
of ``flip(net(flip(x, axes)), axes)`` over the window itself and every non-empty combination of the axes, in
nnU-Net's order, so the prediction and every gradient of it (the attribution) are averaged over the mirrors.
Layer methods (one activation per window) and patch-local runs see each window's un-mirrored pass.

**The prediction** equals ``monai.inferers.sliding_window_inference`` for the same settings: the same window
placement (interval ``int(roi * (1 - overlap))``, the last window flush with the border), the same padding of a
scan smaller than the window (split evenly, then cropped off), the same importance map (constant, or
``exp(-x^2 / 2 sigma^2)`` per axis with ``sigma = sigma_scale * roi``, clamped below at ``max(min, 1e-3)``) and the
same normalisation by the summed weights. It is written here rather than called because MONAI is an optional
dependency and because attribution needs what MONAI's function lacks: a backward pass that runs window by window.
Networks whose output is ``(N, K)`` (patch classifiers; MONAI's function does not take them) are blended as the
plain mean of the windows' outputs.

**Attribution** explains a global target on the stitched output. :class:`SlidingWindowNet`'s forward is an autograd
function whose forward stitches without keeping any window's graph, and whose backward runs each window again with
gradients and sends it its share of the output gradient, ``g[window] * w / count[window]`` (the blend's own
derivative). So every gradient of the stitched output is exact, hooks on the network's modules (guided
backpropagation's ReLU rule) fire as usual, and peak memory is one chunk of windows' forward + backward plus a few
scan-sized buffers, whatever the scan's size. Windows whose share of the gradient is zero are skipped: a ``Voxel``
target costs only the windows that see it.

Layer methods cannot use that function (a layer has one activation per window, not one per scan): they get each
window's activation and its gradient of the global target from :meth:`SlidingWindowNet.layer_windows`, and blend
their per-window maps with the same weights (:mod:`napari_attribution.methods._run`). Perturbation methods compare
each perturbed input with a reference and run again only the windows whose input changed
(:meth:`SlidingWindowNet.reference`).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import InputShapeError, MemoryBudgetError, ModelLoadError

__all__ = ["INFERER_KEYS", "NNUNET_KEYS", "SlidingWindow", "SlidingWindowNet", "WindowPlan", "default_memory_budget",
           "importance_map", "nnunet_gaussian", "nnunet_window_starts", "sliding_window_of", "window_slices"]

BLEND_MODES = ("constant", "gaussian")
PADDING_MODES = ("constant", "reflect", "replicate", "circular")
#: the card's ``inferer`` keys (MONAI's names), besides ``type``
INFERER_KEYS = ("roi_size", "overlap", "mode", "sigma_scale", "padding_mode", "cval", "sw_batch_size")
#: the keys of nnU-Net's variant (``"type": "nnunet"``), besides ``type``
NNUNET_KEYS = ("roi_size", "step", "mode", "sigma_scale", "mirror_axes", "sw_batch_size")
_TYPES = ("sliding_window", "nnunet")

#: called after each chunk of windows: ``(windows done, windows in this pass, what the pass is)``; may raise
#: :class:`~napari_attribution.Cancelled`
WindowObserver = Callable[[int, int, str], None]


def _bad(message: str) -> ModelLoadError:
    return ModelLoadError(f"Model card field 'inferer': {message}")


def _per_axis(value: Any, n: int | None, key: str, kind: type) -> tuple[Any, ...] | Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return kind(value)
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if n is not None and len(value) != n:
            raise _bad(f"'{key}' {list(value)} needs one value per axis of roi_size ({n}).")
        return tuple(kind(v) for v in value)
    raise _bad(f"'{key}' must be a number or a list of numbers, got {value!r}.")


@dataclass(frozen=True)
class SlidingWindow:
    """The card's ``inferer``: sliding-window inference with MONAI's names and defaults.

    Attributes
    ----------
    roi_size : tuple of int
        The window, one size per spatial axis of the network's input (numpy order).
    overlap : float or tuple of float
        Overlap of neighbouring windows, in [0, 1) (MONAI's default 0.25).
    mode : ``"constant"`` or ``"gaussian"``
        How windows are blended (importance weights).
    sigma_scale : float or tuple of float
        The Gaussian's sigma as a fraction of the window (0.125).
    padding_mode : ``"constant"``, ``"reflect"``, ``"replicate"`` or ``"circular"``
        How a scan smaller than the window is padded; ``cval`` is the constant.
    sw_batch_size : int or None
        Windows per network call; None: as many as the memory budget allows.

    Examples
    --------
    >>> sw = SlidingWindow.from_card({"type": "sliding_window", "roi_size": [32, 32, 32], "mode": "gaussian"})
    >>> sw.plan((50, 72, 61)).count()
    18
    >>> SlidingWindow.from_card(sw.to_dict()) == sw
    True
    """

    roi_size: tuple[int, ...]
    overlap: float | tuple[float, ...] = 0.25
    mode: str = "constant"
    sigma_scale: float | tuple[float, ...] = 0.125
    padding_mode: str = "constant"
    cval: float = 0.0
    sw_batch_size: int | None = None
    #: ``"sliding_window"`` (MONAI's placement and importance map) or ``"nnunet"`` (nnUNetPredictor's)
    kind: str = "sliding_window"
    #: nnU-Net's ``tile_step_size`` (windows ``roi * step`` apart at most); only for ``kind="nnunet"``
    step: float = 0.5
    #: axes (of the window, 0-based) whose mirrored passes are averaged into each window's output
    mirror_axes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        roi = self.roi_size
        if not isinstance(roi, (list, tuple)) or not roi or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in roi):
            raise _bad(f"'roi_size' must be a list of positive whole numbers (one per spatial axis), got {roi!r}.")
        object.__setattr__(self, "roi_size", tuple(int(v) for v in roi))
        n = len(self.roi_size)
        overlap = _per_axis(self.overlap, n, "overlap", float)
        for o in (overlap if isinstance(overlap, tuple) else (overlap,)):
            if not 0 <= o < 1:
                raise _bad(f"'overlap' must be at least 0 and below 1, got {self.overlap!r}.")
        object.__setattr__(self, "overlap", overlap)
        sigma = _per_axis(self.sigma_scale, n, "sigma_scale", float)
        for s in (sigma if isinstance(sigma, tuple) else (sigma,)):
            if not s > 0:
                raise _bad(f"'sigma_scale' must be positive, got {self.sigma_scale!r}.")
        object.__setattr__(self, "sigma_scale", sigma)
        if self.mode not in BLEND_MODES:
            raise _bad(f"'mode' must be one of {', '.join(BLEND_MODES)}, got {self.mode!r}.")
        if self.padding_mode not in PADDING_MODES:
            raise _bad(f"'padding_mode' must be one of {', '.join(PADDING_MODES)}, got {self.padding_mode!r}.")
        if isinstance(self.cval, bool) or not isinstance(self.cval, (int, float)):
            raise _bad(f"'cval' must be a number, got {self.cval!r}.")
        object.__setattr__(self, "cval", float(self.cval))
        b = self.sw_batch_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise _bad(f"'sw_batch_size' must be a positive whole number or null (by the memory budget), got {b!r}.")
        if self.kind not in _TYPES:
            raise _bad(f"'type' {self.kind!r} is not known; the inferers are {', '.join(map(repr, _TYPES))}.")
        if isinstance(self.step, bool) or not isinstance(self.step, (int, float)) or not 0 < self.step <= 1:
            raise _bad(f"'step' must be above 0 and at most 1 (nnU-Net's tile_step_size), got {self.step!r}.")
        object.__setattr__(self, "step", float(self.step))
        axes = self.mirror_axes
        if not isinstance(axes, (list, tuple)) or not all(
                isinstance(a, int) and not isinstance(a, bool) and 0 <= a < n for a in axes) or len(set(axes)) != len(
                axes):
            raise _bad(f"'mirror_axes' must list distinct axes of the window (0 to {n - 1}), got {axes!r}.")
        object.__setattr__(self, "mirror_axes", tuple(int(a) for a in axes))

    @classmethod
    def from_card(cls, value: Mapping[str, Any]) -> SlidingWindow:
        """The inferer a card's ``inferer`` mapping describes (a bad value raises ``ModelLoadError`` naming it)."""
        if not isinstance(value, Mapping):
            raise _bad(f"must be a mapping such as {{\"type\": \"sliding_window\", \"roi_size\": [96, 96, 96]}}, "
                       f"got {value!r}.")
        kind = value.get("type", "sliding_window")
        if kind not in ("sliding_window", "SlidingWindowInferer", "nnunet"):
            raise _bad(f"'type' {kind!r} is not known; the inferers are \"sliding_window\" and \"nnunet\".")
        keys = NNUNET_KEYS if kind == "nnunet" else (*INFERER_KEYS, "mirror_axes")
        unknown = sorted(set(value) - set(keys) - {"type"})
        if unknown:
            raise _bad(f"unknown key(s) {', '.join(map(repr, unknown))}; the keys of {kind!r} are type, "
                       f"{', '.join(keys)}.")
        if "roi_size" not in value:
            raise _bad("'roi_size' is required: the window the network was trained on, e.g. [96, 96, 96].")
        kwargs = {k: value[k] for k in keys if k in value}
        if isinstance(kwargs["roi_size"], list):
            kwargs["roi_size"] = tuple(kwargs["roi_size"])
        for key in ("overlap", "sigma_scale", "mirror_axes"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        if kind == "nnunet":
            kwargs.setdefault("mode", "gaussian")
            kwargs["kind"] = "nnunet"
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The card's ``inferer`` mapping (JSON-ready)."""
        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v
        if self.kind == "nnunet":
            return {"type": "nnunet", **{k: plain(getattr(self, k)) for k in NNUNET_KEYS}}
        out = {"type": "sliding_window", **{k: plain(getattr(self, k)) for k in INFERER_KEYS}}
        if self.mirror_axes:
            out["mirror_axes"] = list(self.mirror_axes)
        return out

    @property
    def passes_per_window(self) -> int:
        """Network passes per window: 1, or with mirroring the window and each of its ``2^k - 1`` mirrors."""
        return int(2 ** len(self.mirror_axes))

    def describe(self) -> str:
        """In words, for logs and the GUI."""
        roi = "x".join(map(str, self.roi_size))
        mirrors = f", averaged over mirroring along axes {list(self.mirror_axes)}" if self.mirror_axes else ""
        if self.kind == "nnunet":
            return (f"nnU-Net sliding window {roi}, step {self.step:g}, {self.mode} blending"
                    + (f" (sigma {self.sigma_scale} of the window)" if self.mode == "gaussian" else "") + mirrors)
        return (f"sliding window {roi}, overlap {self.overlap}, {self.mode} blending"
                + (f" (sigma {self.sigma_scale} of the window)" if self.mode == "gaussian" else "") + mirrors)

    def plan(self, spatial: Sequence[int]) -> WindowPlan:
        """The windows over an input of spatial shape ``spatial``."""
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != len(self.roi_size):
            raise InputShapeError(
                f"The inferer's roi_size {list(self.roi_size)} has {len(self.roi_size)} values but the network's "
                f"input has {len(spatial)} spatial axes {spatial}; give one window size per axis."
            )
        return WindowPlan(self, spatial)


def window_slices(image_size: Sequence[int], roi: Sequence[int],
                  overlap: float | Sequence[float]) -> list[tuple[slice, ...]]:
    """The windows over ``image_size`` (already at least ``roi`` along every axis), in MONAI's order (C order of
    the window starts). Along each axis the interval is ``int(roi * (1 - overlap))`` (at least 1; the whole axis
    when ``roi`` equals it), windows start at multiples of it until one reaches the end, and that last one is moved
    back to end flush with the border."""
    nd = len(image_size)
    overlaps = tuple(overlap) if isinstance(overlap, Sequence) else (overlap,) * nd
    starts: list[list[int]] = []
    for n, r, o in zip(image_size, roi, overlaps, strict=True):
        if r > n:
            raise InputShapeError(f"A window of {r} voxels does not fit an axis of {n} (pad the input first).")
        step = r if r == n else max(1, int(r * (1 - o)))
        count = next(i for i in range(max(1, math.ceil(n / step))) if i * step + r >= n) + 1
        starts.append([min(i * step, n - r) for i in range(count)])
    grid = torch.cartesian_prod(*[torch.tensor(s) for s in starts]).view(-1, nd).tolist()
    return [tuple(slice(s, s + r) for s, r in zip(corner, roi, strict=True)) for corner in grid]


def nnunet_window_starts(image_size: Sequence[int], roi: Sequence[int], step: float) -> list[list[int]]:
    """nnU-Net's ``compute_steps_for_sliding_window``: per axis, ``ceil((n - roi) / (roi * step)) + 1`` window
    starts spread evenly from 0 to ``n - roi`` and rounded (``image_size`` at least ``roi`` along every axis)."""
    out: list[list[int]] = []
    for n, r in zip(image_size, roi, strict=True):
        if r > n:
            raise InputShapeError(f"A window of {r} voxels does not fit an axis of {n} (pad the input first).")
        count = int(math.ceil((n - r) / (r * step))) + 1
        actual = (n - r) / (count - 1) if count > 1 else 99999999999
        out.append([int(round(actual * i)) for i in range(count)])  # numpy's round: half to even, as Python's
    return out


def nnunet_gaussian(roi: Sequence[int], sigma_scale: float | Sequence[float] = 0.125,
                    value_scaling_factor: float = 10.0, device: torch.device | None = None) -> Tensor:
    """nnU-Net's ``compute_gaussian`` in float32: a unit impulse at ``roi // 2`` filtered by scipy's
    ``gaussian_filter`` (sigma ``sigma_scale * roi``, ``mode="constant"``, truncated at 4 sigma), scaled to a maximum
    of ``value_scaling_factor``, zeros replaced by the smallest non-zero weight."""
    import numpy as np  # noqa: PLC0415 - only nnU-Net's variant needs numpy and scipy here
    from scipy.ndimage import gaussian_filter  # noqa: PLC0415

    scales = tuple(sigma_scale) if isinstance(sigma_scale, Sequence) else (sigma_scale,) * len(roi)
    tmp = np.zeros(tuple(roi))
    tmp[tuple(r // 2 for r in roi)] = 1
    g = gaussian_filter(tmp, [r * s for r, s in zip(roi, scales, strict=True)], 0, mode="constant", cval=0)
    g /= np.max(g) / value_scaling_factor
    w = torch.from_numpy(g).to(device=device, dtype=torch.float32)
    zero = w == 0
    if bool(zero.any()):
        w[zero] = torch.min(w[~zero])
    return w


def importance_map(roi: Sequence[int], mode: str, sigma_scale: float | Sequence[float] = 0.125,
                   device: torch.device | None = None) -> Tensor:
    """One window's blending weights ``(*roi)``, float32: ones (``"constant"``), or a separable Gaussian centred on
    the window's middle, ``exp(-x^2 / (2 (sigma_scale * roi)^2))`` along each axis (``"gaussian"``); either clamped
    below at ``max(its minimum, 1e-3)``, as MONAI's ``compute_importance_map``."""
    if mode == "constant":
        w = torch.ones(tuple(roi), dtype=torch.float32, device=device)
    elif mode == "gaussian":
        scales = tuple(sigma_scale) if isinstance(sigma_scale, Sequence) else (sigma_scale,) * len(roi)
        w = torch.ones((), dtype=torch.float32, device=device)
        for axis, (n, s) in enumerate(zip(roi, scales, strict=True)):
            x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float32, device=device)
            g = torch.exp(x ** 2 / (-2 * (n * s) ** 2))
            w = w.unsqueeze(-1) * g if axis else g
    else:
        raise ValueError(f"mode must be one of {BLEND_MODES}, got {mode!r}.")
    floor = max(float(w.min()), 1e-3)
    return w.clamp(min=floor)


class WindowPlan:
    """The windows over one input shape: padding up to the window, window slices on the padded grid, the
    importance map and the summed weights."""

    def __init__(self, spec: SlidingWindow, spatial: tuple[int, ...]) -> None:
        self.spec = spec
        self.spatial = spatial
        roi = spec.roi_size
        #: ``F.pad`` widths (last axis first), split evenly like MONAI
        self.pad: list[int] = []
        for n, r in zip(reversed(spatial), reversed(roi), strict=True):
            diff = max(r - n, 0)
            self.pad += [diff // 2, diff - diff // 2]
        self.padded = tuple(max(n, r) for n, r in zip(spatial, roi, strict=True))
        if spec.kind == "nnunet":  # C order of the starts, as nnU-Net's slicers
            starts = nnunet_window_starts(self.padded, roi, spec.step)
            grid = torch.cartesian_prod(*[torch.tensor(s) for s in starts]).view(-1, len(roi)).tolist()
            self.slices = [tuple(slice(s, s + r) for s, r in zip(c, roi, strict=True)) for c in grid]
        else:
            self.slices = window_slices(self.padded, roi, spec.overlap)
        self._weights: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def count(self) -> int:
        """How many windows cover the input."""
        return len(self.slices)

    def __len__(self) -> int:
        return len(self.slices)

    def weights(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The importance map ``(*roi)`` and the summed weights ``(*padded)`` (on ``device``)."""
        if device not in self._weights:
            if self.spec.kind == "nnunet" and self.spec.mode == "gaussian":
                w = nnunet_gaussian(self.spec.roi_size, self.spec.sigma_scale, 10.0, device)
            elif self.spec.kind == "nnunet":
                w = torch.ones(self.spec.roi_size, dtype=torch.float32, device=device)
            else:
                w = importance_map(self.spec.roi_size, self.spec.mode, self.spec.sigma_scale, device)
            count = torch.zeros(self.padded, dtype=torch.float32, device=device)
            for sl in self.slices:
                count[sl] += w
            self._weights[device] = (w, count)
        return self._weights[device]

    def crop(self) -> tuple[slice, ...]:
        """The input's voxels inside the padded grid."""
        lo = self.pad[::2][::-1]
        return tuple(slice(a, a + n) for a, n in zip(lo, self.spatial, strict=True))

    def pad_input(self, x: Tensor) -> Tensor:
        """``x`` padded up to the window (differentiable), as MONAI pads it."""
        if not any(self.pad):
            return x
        if self.spec.padding_mode == "constant":
            return F.pad(x, self.pad, mode="constant", value=self.spec.cval)
        return F.pad(x, self.pad, mode=self.spec.padding_mode)

    def window_bytes_of_scan(self, channels: int, classes: int) -> int:
        """Bytes of the scan-sized buffers one stitched forward + backward holds (float32): the padded input and its
        gradient, the output, its gradient and the summed weights."""
        voxels = math.prod(self.padded)
        return 4 * voxels * (2 * channels + 2 * classes + 1)


def _at(b: int, window: tuple[slice, ...]) -> tuple[Any, ...]:
    """The index of sample ``b``'s window (all channels) in a ``(N, C, *S)`` tensor."""
    return (b, slice(None), *window)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _first_tensor(out: Any) -> Tensor:
    """The first tensor of a network's output (deep-supervision networks return a list or a tuple)."""
    while isinstance(out, (list, tuple)) and out:
        out = out[0]
    if isinstance(out, Mapping):
        out = next(iter(out.values()))
    if not isinstance(out, Tensor):
        raise InputShapeError(f"The network returned {type(out).__name__}; expected a tensor.")
    return out


def default_memory_budget() -> int:
    """The memory budget when none is given: half of the memory available now (``MemAvailable`` of
    ``/proc/meminfo``; 4 GiB where that cannot be read), and on a GPU at most 80 % of its free memory."""
    available = 8 * 2**30
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:  # pragma: no cover - not Linux
        pass
    budget = available // 2
    env = os.environ.get("NAPARI_ATTRIBUTION_MEMORY_BUDGET")
    if env:
        budget = int(float(env) * 2**20)
    return int(budget)


def gpu_budget(device: torch.device, budget: int) -> int:
    """``budget`` capped at 80 % of the free memory of a CUDA ``device``."""
    if device.type == "cuda" and torch.cuda.is_available():  # pragma: no cover - no GPU here
        free, _ = torch.cuda.mem_get_info(device)
        return min(budget, int(0.8 * free))
    return budget


class _Stitched(torch.autograd.Function):
    """Stitched windows forward (no window graph kept); each window again, with gradients, backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, owner: SlidingWindowNet) -> Tensor:  # noqa: D102
        ctx.owner = owner
        ctx.save_for_backward(x)
        # function modes active now (a backward rule such as guided backpropagation's, methods/_hooks.py) are not
        # active inside backward(): the windows' forward runs again there, under the same modes
        ctx.modes = _function_modes()
        return owner.stitch(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:  # noqa: D102
        (x,) = ctx.saved_tensors
        with ExitStack() as stack:
            for mode in ctx.modes:
                if mode not in _active_modes():
                    stack.enter_context(mode)
            return ctx.owner.input_gradient(x, grad), None


def _function_modes() -> list[Any]:
    """The active torch function modes, outermost first."""
    from torch.overrides import _get_current_function_mode_stack  # noqa: PLC0415

    return list(_get_current_function_mode_stack())  # type: ignore[no-untyped-call]


def _active_modes() -> list[Any]:
    return _function_modes()


class SlidingWindowNet(nn.Module):
    """A network run window by window, its outputs blended as the card's inferer says.

    ``forward(x)`` is the stitched output (MONAI's ``sliding_window_inference``), differentiable window by window.
    Transparent to everything that walks the network (``named_modules`` are the network's own, so layer names and
    hooks are unchanged); never changes the network.

    Attributes set by the caller for one job: ``observer`` (progress / cancellation per chunk of windows) and
    ``budget`` (bytes a chunk of windows may use).
    """

    #: the longest a chunk of windows should take (seconds), so that progress and Cancel answer in time
    RESPONSIVE_SECONDS = 2.0

    def __init__(self, net: nn.Module, spec: SlidingWindow) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.observer: WindowObserver | None = None
        self.budget: int | None = None
        #: bytes autograd keeps for one window's backward, and one window's no-grad forward peak (measured once)
        self.window_bytes: tuple[int, int] | None = None
        #: seconds of one window's forward pass (with autograd recording), measured with window_bytes
        self.window_seconds = 0.0
        self._plans: dict[tuple[int, ...], WindowPlan] = {}
        self._reference: _Reference | None = None
        #: windows run by this module (forward and backward), for tests and benchmarks
        self.windows_run = 0
        self._scan_bytes = 0

    def named_modules(self, memo: set[nn.Module] | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Any:
        return self.net.named_modules(memo, prefix, remove_duplicate)

    def plan(self, spatial: Sequence[int]) -> WindowPlan:
        """The (cached) window plan for an input of spatial shape ``spatial``."""
        key = tuple(int(s) for s in spatial)
        if key not in self._plans:
            self._plans[key] = self.spec.plan(key)
        return self._plans[key]

    def _window(self, xs: Tensor) -> Tensor:
        """The network's output on a chunk of windows; with ``mirror_axes``, averaged over the mirrored passes as
        nnU-Net's ``_internal_maybe_mirror_and_predict`` does (the same order of the sum)."""
        axes = [a + 2 for a in self.spec.mirror_axes]
        if not axes:
            return _first_tensor(self.net(xs))
        combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        # one network call for the window and its mirrors (the network treats the samples of a batch apart)
        ys = _first_tensor(self.net(torch.cat([xs, *(torch.flip(xs, dims) for dims in combos)])))
        n = xs.shape[0]
        parts = [ys[i * n:(i + 1) * n] for i in range(len(combos) + 1)]
        if ys.ndim != xs.ndim:  # a classifier: its output has no axes to flip back
            raise InputShapeError("Mirroring (mirror_axes) needs a segmentation network (an output with the "
                                  "input's spatial axes).")
        y: Tensor = parts[0]
        for dims, part in zip(combos, parts[1:], strict=True):
            y = y + torch.flip(part, dims)
        return y / (len(combos) + 1)

    def _window_vjp(self, xs: Tensor, gs: Tensor) -> Tensor:
        """The vector-Jacobian product of :meth:`_window` at ``xs`` with ``gs``; with mirroring, one mirrored pass
        after the other (each holds its own graph only), ``sum_m vjp_m(gs / passes)``."""
        combos: list[tuple[int, ...]] = [()]
        axes = [a + 2 for a in self.spec.mirror_axes]
        combos += [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        share = gs / len(combos) if len(combos) > 1 else gs
        gx = torch.zeros_like(xs)
        for dims in combos:
            y = _first_tensor(self.net(torch.flip(xs, dims) if dims else xs))
            self._check_window(y, y.ndim == 2)
            if dims:
                y = torch.flip(y, dims)
            (g,) = torch.autograd.grad(y, xs, share, allow_unused=True)
            if g is not None:
                gx = gx + g
            del y, g
        return gx

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != len(self.spec.roi_size) + 2:
            raise InputShapeError(
                f"The inferer's roi_size {list(self.spec.roi_size)} is {len(self.spec.roi_size)}D but the network's "
                f"input is {tuple(x.shape)}; give roi_size one value per spatial axis."
            )
        if torch.is_grad_enabled() and x.requires_grad:
            out: Tensor = _Stitched.apply(x, self)  # type: ignore[no-untyped-call]
            return out
        with torch.no_grad():
            return self.stitch(x)

    # ---------------------------------------------------------------- chunks of windows
    def _chunk(self, n: int, backward: bool) -> int:
        """Windows per network call."""
        if self.spec.sw_batch_size:
            return self.spec.sw_batch_size
        if self.window_bytes is None or self.budget is None:
            return 1
        per = max(1, self.window_bytes[0] * 2 if backward else self.window_bytes[1])
        by_memory = int((self.budget - self._scan_bytes) // per)
        # a chunk takes at most about RESPONSIVE_SECONDS (one window when one takes longer): progress and Cancel
        # answer within that; a backward window costs about three forward ones
        by_time = int(self.RESPONSIVE_SECONDS / max(1e-6, self.window_seconds * (3 if backward else 1)))
        return max(1, min(n, by_memory, by_time))

    def _items(self, batch: int, plan: WindowPlan) -> list[tuple[int, int]]:
        return [(b, w) for b in range(batch) for w in range(len(plan))]

    def _tick(self, done: int, total: int, what: str) -> None:
        if self.observer is not None:
            self.observer(done, total, what)

    def _measure(self, xw: Tensor, plan: WindowPlan, batch: int) -> None:
        """Measure one window's memory once per module (autograd's saved tensors, and the no-grad peak), and refuse
        the job before it runs when the scan-sized buffers and one window's forward + backward exceed the budget."""
        if self.window_bytes is not None:
            return
        from .methods._hooks import output_meter, saved_tensor_meter  # noqa: PLC0415 - keeps the import graph flat

        t0 = time.perf_counter()
        with torch.enable_grad(), saved_tensor_meter() as saved, output_meter(self.net) as out:
            xg = xw[:1].detach().clone().requires_grad_(True)  # a view would be metered as the whole scan it cuts
            y = _first_tensor(self.net(xg))  # one pass: the backward runs the mirrors one after the other
            classes = int(y.shape[1]) if y.ndim > 1 else 1
            del y, xg
        passes = self.spec.passes_per_window  # a no-grad forward runs a window's mirrors in one call
        self.window_seconds = (time.perf_counter() - t0) * passes
        self.window_bytes = (int(saved.bytes), int(3 * out.largest * passes))
        self.windows_run += 1
        if self.budget is not None:
            scan = batch * plan.window_bytes_of_scan(int(xw.shape[1]), classes)
            need = scan + 2 * self.window_bytes[0]
            self._scan_bytes = scan
            if need > self.budget:
                raise MemoryBudgetError(
                    f"This scan needs about {_gib(need)} through the sliding-window inferer ({_gib(scan)} for the "
                    f"scan-sized input, output and gradients, {_gib(2 * self.window_bytes[0])} for one "
                    f"{'x'.join(map(str, self.spec.roi_size))} window's forward and backward), more than the memory "
                    f"budget of {_gib(self.budget)}. Give params memory_budget of at least {need} bytes (the "
                    "default is half of the free memory), or run on a machine with more memory."
                )

    def stitch(self, x: Tensor) -> Tensor:
        """The blended output of all windows (no gradients kept)."""
        plan = self.plan(x.shape[2:])
        with torch.no_grad():
            xp = plan.pad_input(x.detach())
            if self._reference is not None and self._reference.xp.shape[1:] == xp.shape[1:]:
                acc = self._from_reference(xp, plan)
            else:
                acc = self._accumulate(xp, plan, [(b, i) for b in range(xp.shape[0]) for i in range(len(plan))],
                                       "forward: windows")
            return self._normalise(acc, plan)

    def _accumulate(self, xp: Tensor, plan: WindowPlan, items: Sequence[tuple[int, int]], what: str,
                    acc: Tensor | None = None, sign: float = 1.0) -> Tensor:
        """Run the windows ``items`` (sample, window) and add ``sign * weight * output`` into ``acc`` (the raw,
        unnormalised blend; allocated when None). Returns ``acc``."""
        w, _ = plan.weights(xp.device)
        if items and self.window_bytes is None:
            b0, i0 = items[0]
            self._measure(xp[(slice(b0, b0 + 1), slice(None), *plan.slices[i0])], plan, xp.shape[0])
        start = 0
        while start < len(items):
            stop = min(len(items), start + self._chunk(len(items) - start, backward=False))
            chunk = items[start:stop]
            xs = torch.cat([xp[(slice(b, b + 1), slice(None), *plan.slices[i])] for b, i in chunk])
            y = self._window(xs).detach()
            self.windows_run += len(chunk)
            if acc is None:
                shape = (xp.shape[0], y.shape[1]) + (() if y.ndim == 2 else plan.padded)
                acc = torch.zeros(shape, dtype=y.dtype, device=xp.device)
            classify = acc.ndim == 2
            self._check_window(y, classify)
            for (b, i), yi in zip(chunk, y, strict=True):
                if classify:
                    acc[b] += sign * yi / len(plan)
                else:
                    acc[_at(b, plan.slices[i])] += sign * yi * w
            del xs, y
            start = stop
            self._tick(start, len(items), what)
        if acc is None:
            raise InputShapeError("There are no windows to run.")  # pragma: no cover - every plan has one
        return acc

    def _normalise(self, acc: Tensor, plan: WindowPlan) -> Tensor:
        if acc.ndim == 2:
            return acc
        _, count = plan.weights(acc.device)
        return acc.div_(count)[(slice(None), slice(None), *plan.crop())]  # in place: a full-size scan's output is big

    def _check_window(self, y: Tensor, classify: bool) -> None:
        if not classify and tuple(y.shape[2:]) != self.spec.roi_size:
            raise InputShapeError(
                f"The network's output window is {tuple(y.shape[2:])} for an input window of "
                f"{self.spec.roi_size}; sliding-window blending needs outputs at the input's resolution."
            )

    # ---------------------------------------------------------------- the backward, window by window
    def _cotangents(self, grad: Tensor, plan: WindowPlan) -> _Cotangent:
        """The output gradient's share per window (the blend's derivative)."""
        return _Cotangent(grad, plan)

    def input_gradient(self, x: Tensor, grad: Tensor) -> Tensor:
        """The vector-Jacobian product of the stitched output at ``x`` with ``grad``, window by window."""
        plan = self.plan(x.shape[2:])
        g = self._cotangents(grad, plan)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            xp = plan.pad_input(xg)
        gxp = torch.zeros_like(xp)
        self.each_window(xp.detach(), g, plan, lambda b, i, xs, gs: gxp.__setitem__(
            (slice(b, b + 1), slice(None), *plan.slices[i]),
            gxp[(slice(b, b + 1), slice(None), *plan.slices[i])] + gs), "backward: windows")
        if xp is xg:
            return gxp
        (gx,) = torch.autograd.grad(xp, xg, gxp)
        return gx

    def each_window(self, xp: Tensor, g: _Cotangent, plan: WindowPlan,
                    consume: Callable[[int, int, Tensor, Tensor], None], what: str,
                    layer: nn.Module | None = None,
                    consume_layer: Callable[[int, int, Tensor, Tensor], None] | None = None,
                    layer_grad: bool = True) -> None:
        """For every window whose share of the output gradient ``g`` (from :meth:`_cotangents`) is not zero: run
        it with gradients and call ``consume(b, i, window input gradient (1, C, *roi), ...)``; with ``layer``, call
        ``consume_layer(b, i, activation, its gradient)`` instead (the backward stops at the layer)."""
        from .methods._hooks import capture_layer  # noqa: PLC0415 - keeps the import graph flat

        items = [(b, i) for b, i in self._items(xp.shape[0], plan)
                 if bool(g.window(b, i).any())]
        if items and self.window_bytes is None:
            b0, i0 = items[0]
            self._measure(xp[(slice(b0, b0 + 1), slice(None), *plan.slices[i0])], plan, xp.shape[0])
        start = 0
        while start < len(items):
            stop = min(len(items), start + self._chunk(len(items) - start, backward=True))
            chunk = items[start:stop]
            gs = torch.stack([g.window(b, i) for b, i in chunk])
            with torch.enable_grad():
                xs = torch.cat([xp[(slice(b, b + 1), slice(None), *plan.slices[i])] for b, i in chunk])
                xs = xs.detach().requires_grad_(layer is None)
                if layer is None:
                    gx = self._window_vjp(xs, gs)
                    for k, (b, i) in enumerate(chunk):
                        consume(b, i, xs[k:k + 1].detach(), gx[k:k + 1])
                else:
                    assert consume_layer is not None
                    with capture_layer(layer, grad=True) as cap:
                        y = _first_tensor(self.net(xs))
                    if cap.activation is None:
                        from ._errors import MethodError  # noqa: PLC0415

                        raise MethodError("The layer did not run in the window's forward pass.")
                    act = cap.activation
                    ga = None
                    if layer_grad:
                        (ga,) = torch.autograd.grad(y, act, gs, allow_unused=True)
                    ga = torch.zeros_like(act) if ga is None else ga
                    for k, (b, i) in enumerate(chunk):
                        consume_layer(b, i, act[k:k + 1].detach(), ga[k:k + 1].detach())
                    del y, act, ga
            self.windows_run += len(chunk)
            del xs, gs
            start = stop
            self._tick(start, len(items), what)

    def layer_windows(self, x: Tensor, grad: Tensor | None, layer: nn.Module,
                      consume: Callable[[int, int, Tensor, Tensor], None]) -> WindowPlan:
        """Each window's activation at ``layer`` and the gradient of the global target there (``grad`` is the
        target's gradient with respect to the stitched output at ``x``; None: activations only, every window, the
        gradient given as zeros): ``consume(b, i, activation, gradient)``."""
        plan = self.plan(x.shape[2:])
        with torch.no_grad():
            xp = plan.pad_input(x.detach())
        if grad is None:
            ones = torch.ones((), dtype=x.dtype, device=x.device)
            g = self._cotangents(ones.expand((x.shape[0], 1) + plan.padded), plan)
        else:
            g = self._cotangents(grad, plan)
        self.each_window(xp, g, plan, lambda *a: None, "layer: windows", layer=layer, consume_layer=consume,
                         layer_grad=grad is not None)
        return plan

    def blend_maps(self, maps: Mapping[int, Tensor], plan: WindowPlan, device: torch.device) -> Tensor:
        """Per-window maps ``{window: (K, *roi)}`` blended with the windows' weights into ``(K, *spatial)``:
        ``sum_w weight * map_w / sum_w weight`` over the windows that have a map (zero elsewhere)."""
        w, _ = plan.weights(device)
        first = next(iter(maps.values()))
        acc = torch.zeros((first.shape[0],) + plan.padded, dtype=first.dtype, device=device)
        den = torch.zeros(plan.padded, dtype=first.dtype, device=device)
        for i, m in maps.items():
            acc[(slice(None), *plan.slices[i])] += m * w
            den[plan.slices[i]] += w
        return (acc / den.clamp(min=1e-12))[(slice(None), *plan.crop())]

    # ---------------------------------------------------------------- perturbations: only the windows touched
    def set_reference(self, x: Tensor) -> None:
        """From now on, a no-grad forward of inputs that differ from ``x`` (``(1, C, *S)``, on the network's grid)
        in a few places runs only the windows whose input changed: the blend is the reference's, minus the changed
        windows' reference outputs, plus their new ones (an input that changed in more than half of the windows runs
        whole). The reference costs one stitched forward; the reference outputs of changed windows are kept (up to
        a quarter of the memory budget) or run again."""
        plan = self.plan(x.shape[2:])
        with torch.no_grad():
            xp = plan.pad_input(x.detach())
            acc = self._accumulate(xp, plan, [(0, i) for i in range(len(plan))], "reference: windows")
        self._reference = _Reference(xp, acc)

    def clear_reference(self) -> None:
        """Forget the reference of :meth:`set_reference`."""
        self._reference = None

    @contextmanager
    def reference(self, x: Tensor) -> Iterator[None]:
        """:meth:`set_reference` for the duration of the block."""
        self.set_reference(x)
        try:
            yield
        finally:
            self.clear_reference()

    def touched(self, xp: Tensor, plan: WindowPlan) -> list[list[int]]:
        """Per sample of ``xp`` (padded), the windows whose input differs from the reference's."""
        assert self._reference is not None
        diff = (xp != self._reference.xp).any(1)
        return [[i for i, sl in enumerate(plan.slices) if bool(diff[(b, *sl)].any())]  # type: ignore[index]
                for b in range(xp.shape[0])]

    def _from_reference(self, xp: Tensor, plan: WindowPlan) -> Tensor:
        ref = self._reference
        assert ref is not None
        touched = self.touched(xp, plan)
        full = [b for b, t in enumerate(touched) if 2 * len(t) > len(plan)]  # mostly changed: run it whole
        acc = ref.acc.expand((xp.shape[0],) + tuple(ref.acc.shape[1:])).clone()
        for b in full:
            acc[b] = 0
        items = [(b, i) for b, t in enumerate(touched) for i in (range(len(plan)) if b in full else t)]
        old = [(b, i) for b, t in enumerate(touched) if b not in full for i in t]
        self._subtract_reference(acc, plan, old)
        return self._accumulate(xp, plan, items, "forward: changed windows", acc=acc)

    def _subtract_reference(self, acc: Tensor, plan: WindowPlan, items: list[tuple[int, int]]) -> None:
        ref = self._reference
        assert ref is not None
        w, _ = plan.weights(acc.device)
        missing = sorted({i for _, i in items if i not in ref.outputs})
        if missing:
            cap = (self.budget or default_memory_budget()) // 4
            outs = self._accumulate_outputs(ref.xp, plan, missing)
            for i, y in outs.items():
                if ref.bytes + y.numel() * y.element_size() <= cap:
                    ref.outputs[i] = y
                    ref.bytes += y.numel() * y.element_size()
        else:
            outs = {}
        for b, i in items:
            y = ref.outputs[i] if i in ref.outputs else outs[i]
            if acc.ndim == 2:
                acc[b] -= y / len(plan)
            else:
                acc[_at(b, plan.slices[i])] -= y * w

    def _accumulate_outputs(self, xp: Tensor, plan: WindowPlan, windows: list[int]) -> dict[int, Tensor]:
        out: dict[int, Tensor] = {}
        start = 0
        while start < len(windows):
            stop = min(len(windows), start + self._chunk(len(windows) - start, backward=False))
            idx = windows[start:stop]
            xs = torch.cat([xp[(slice(0, 1), slice(None), *plan.slices[i])] for i in idx])
            y = self._window(xs).detach()
            self.windows_run += len(idx)
            for i, yi in zip(idx, y, strict=True):
                out[i] = yi
            start = stop
            self._tick(start, len(windows), "reference: changed windows")
        return out


class _Cotangent:
    """A stitched output's gradient, handed out window by window: ``g[window] * w / count[window]`` (for ``(N, K)``
    outputs ``g / windows``). Computed per window rather than as one more scan-sized tensor, unless the input was
    padded up to the window (a small scan)."""

    def __init__(self, grad: Tensor, plan: WindowPlan) -> None:
        self.plan = plan
        self.classify = grad.ndim == 2
        self.divide = not self.classify and not any(plan.pad)
        if self.classify:
            self.g = grad / len(plan)
        elif self.divide:
            self.g = grad
        else:
            _, count = plan.weights(grad.device)
            g = torch.zeros((grad.shape[0], grad.shape[1]) + plan.padded, dtype=grad.dtype, device=grad.device)
            g[(slice(None), slice(None), *plan.crop())] = grad
            self.g = g.div_(count)

    def window(self, b: int, i: int) -> Tensor:
        """Sample ``b``'s share for window ``i`` ``(K, *roi)`` (or ``(K,)``)."""
        if self.classify:
            return self.g[b]
        w, count = self.plan.weights(self.g.device)
        sl = self.plan.slices[i]
        gw = self.g[_at(b, sl)]
        return gw * (w / count[sl]) if self.divide else gw * w


@dataclass
class _Reference:
    """The reference input (padded), its raw blend, and the reference outputs of windows kept so far."""

    xp: Tensor
    acc: Tensor
    outputs: dict[int, Tensor] = field(default_factory=dict)
    bytes: int = 0


def sliding_window_of(model: nn.Module) -> SlidingWindowNet | None:
    """The :class:`SlidingWindowNet` a model runs through (the model itself, or inside a wrapper's ``net``)."""
    while model is not None:
        if isinstance(model, SlidingWindowNet):
            return model
        modules = model.__dict__.get("_modules")
        inner = modules.get("net") if type(modules) is dict else None  # a TorchScript archive is never wrapped
        if not isinstance(inner, nn.Module):
            return None
        model = inner
    return None  # pragma: no cover
