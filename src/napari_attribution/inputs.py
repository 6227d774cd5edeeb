"""The input path: the one place that turns (image, geometry, card) into what the model sees, and maps what the
model gives back onto the scan's own grid.

:func:`layout` reads the image's axes (channels, a 2D model on a volume); :func:`prepare` applies the card's
intensity preprocessing on the scan's grid and plans the model grid (resampling to the card's ``spacing``, or
resizing to its ``input_shape``, then padding to a multiple); :meth:`Prepared.wrap` puts the grid change *inside*
the differentiable forward: the wrapped network takes the scan's voxels and returns its output resampled back onto
the scan's grid (segmentation logits linearly, as MONAI's ``Invertd`` does), so gradient maps are taken with
respect to the scan's own voxels (integrated gradients' completeness holds on the scan grid), perturbation methods
perturb the scan's voxels, and targets, masks, voxel indices and predictions all live on the scan grid.
:func:`fit_network` runs a failing network again with padding to the smallest power-of-two multiple that it accepts
(a pre-flight on the real input, only when the first forward fails), and otherwise raises one
:class:`InputShapeError` that names the card keys to set. ``explain``, ``compare``, ``evaluate``, the CLI, the docks
and the checks all come through here.

The intensity step stays outside the differentiable forward: it is voxel-wise, fixed from the unperturbed scan
(:meth:`Prepared.intensity`, so perturbed copies are normalised with the same numbers), and maps are reported per
normalised voxel, which is the same grid.

The card's ``preprocess`` entry is a small dictionary; every key is optional and an empty or missing entry
means "feed the image as it is" (then :func:`prepare` copies nothing). The vocabulary:

==========================================  ==========================================================================
``{"window": [lo, hi]}``                    CT window in the image's units (HU): clip to ``[lo, hi]`` and rescale
                                            linearly to ``scale_to`` (default ``[0, 1]``), so ``lo -> a``, ``hi -> b``.
``{"percentile": [p_lo, p_hi]}``            the same, with ``lo``/``hi`` the ``p_lo``-th/``p_hi``-th percentiles of
                                            the image (per channel), e.g. ``[0.5, 99.5]`` for MRI.
``{"scale_to": [a, b]}``                    the output range of ``window`` or ``percentile`` (only with one of them).
``{"zscore": true}``                        subtract the mean, divide by the standard deviation (per channel); with
                                            ``"mask_nonzero": true`` both are computed over the non-zero voxels only
                                            and zeros stay zero (skull-stripped MRI, as MONAI's ``nonzero=True``).
``{"scale": s, "shift": t}``                ``x * s + t`` (either may be given alone), applied after the above.
``{"pad_to_multiple": 16}``                 pad the model's spatial axes to a multiple of 16 (an int, or one int per
                                            axis): UNets with four poolings need it. Without it, a network that
                                            fails on the scan's size is padded to the smallest power of two it
                                            accepts (:func:`fit_network`). ``"pad_mode"``: ``"constant"``
                                            (default, value ``"pad_value"``, default 0, after normalisation as in
                                            MONAI's ``DivisiblePad``), ``"edge"`` or ``"reflect"``. The padding is
                                            split evenly before and after and cropped away again by
                                            :meth:`Prepared.to_scan`.
``{"resample": {"order": 3}}``              resample to ``spacing`` as nnU-Net does (a cubic B-spline, the result
                                            clipped to the input's range; ``order_z`` along an anisotropic axis,
                                            ``force_separate_z``, ``anisotropy_threshold``) and bring outputs back
                                            with ``back_order`` / ``back_order_z`` / ``back_force_separate_z``
                                            (nnU-Net's ``resampling_fn_probabilities``); the shapes follow nnU-Net's
                                            ``compute_new_shape`` (no tolerance). Exact and differentiable: one matrix
                                            per axis (:mod:`napari_attribution._resample`).
``{"crop_nonzero": true}``                  the model's own pipeline crops a scan to the bounding box of its non-zero
                                            voxels first (nnU-Net's ``crop_to_nonzero``). Not reproduced: a scan
                                            with a border of exact zeros gets a :class:`~napari_attribution.
                                            PreprocessingWarning` saying so (a CT in HU has none).
==========================================  ==========================================================================

At most one of ``window``, ``percentile`` and ``zscore`` may be given. The order is always: intensity
(window / percentile / zscore, then scale / shift) on the scan's grid, then resampling, then padding.

The card's ``input_shape`` resizes the whole scan to exactly that shape (one value per model axis; for a 2D model
on a volume, the in-plane ``(y, x)`` shape of each slice), for networks that take one fixed size; it replaces
``spacing`` (a card may not give both).

Resampling happens when the card gives ``spacing`` (mm per voxel, numpy axis order ``(z, y, x)``; for a 2D model
on a volume two values mean the in-plane ``(y, x)`` axes) *and* the scan's :class:`~napari_attribution.io.Geometry`
is known. Each axis of length ``n`` and spacing ``s`` is resampled to ``n' = round(n * s / t)`` voxels for a target
spacing ``t`` (linear interpolation in voxel-index space, ``align_corners=False``, so the field of view is kept
exactly and the model grid's spacing is ``s * n / n'``, within half a voxel of ``t``). Axes whose spacing already
matches within 0.1 % are left alone. Downsampling is not low-pass filtered (as in MONAI's ``Spacing``).

Examples
--------
>>> import numpy as np
>>> from napari_attribution.io import Geometry
>>> from napari_attribution.models import ModelCard
>>> card = ModelCard(spatial_dims=3, spacing=(1.5, 1.5, 1.5),
...                  preprocess={"window": [-100, 300], "pad_to_multiple": 8})
>>> ct = np.zeros((40, 64, 64), np.float32)                  # (z, y, x) in HU
>>> prepared = prepare(ct, Geometry(spacing=(3.0, 0.75, 0.75), origin=(0, 0, 0)), card)
>>> prepared.data.shape                                       # 80 x 32 x 32, padded to multiples of 8
(80, 32, 32)
>>> prepared.scan.shape                                       # what the methods perturb: the scan's own grid
(40, 64, 64)
>>> import torch
>>> prepared.to_scan(torch.ones((1, 1, *prepared.data.shape))).shape   # a model-grid map, back on the scan
torch.Size([1, 1, 40, 64, 64])
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import AttributionError, InputShapeError, ModelLoadError
from ._resample import AxisResampler, nnunet_new_shape, nnunet_resampler
from .inferers import SlidingWindow, SlidingWindowNet

if TYPE_CHECKING:
    from .io._geometry import Geometry
    from .models._card import ModelCard

__all__ = ["PREPROCESS_KEYS", "Layout", "OnScanGrid", "Prepared", "check_preprocess", "describe_intensity",
           "fit_network", "is_script", "known_multiple", "layout", "prepare", "unwrap"]

#: The keys a card's ``preprocess`` entry may hold (see the module docstring).
PREPROCESS_KEYS = (
    "window", "percentile", "scale_to", "zscore", "mask_nonzero", "scale", "shift", "pad_to_multiple", "pad_mode",
    "pad_value", "resample", "crop_nonzero",
)
#: the keys of ``preprocess["resample"]`` (nnU-Net's resampling) and their defaults
RESAMPLE_KEYS: dict[str, Any] = {"order": 3, "order_z": 0, "force_separate_z": None, "back_order": 1,
                                 "back_order_z": 0, "back_force_separate_z": None, "anisotropy_threshold": 3.0}
_PAD_MODES = ("constant", "edge", "reflect")
# relative spacing difference below which an axis is not resampled
_SPACING_TOL = 1e-3


# ------------------------------------------------------------------------------------------------
# validation of the vocabulary


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ModelLoadError(f"preprocess {where} must be a number, got {value!r}.")
    out = float(value)
    if not math.isfinite(out):
        raise ModelLoadError(f"preprocess {where} must be finite, got {value!r}.")
    return out


def _pair(value: Any, key: str, example: str) -> list[float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ModelLoadError(f"preprocess '{key}' must be a pair [low, high], e.g. {example}; got {value!r}.")
    lo, hi = (_number(v, f"'{key}'") for v in value)
    if not lo < hi:
        raise ModelLoadError(f"preprocess '{key}' must be [low, high] with low < high, got {value!r}.")
    return [lo, hi]


def check_preprocess(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate a card's ``preprocess`` entry and return it normalised (numbers as floats, pairs as lists).

    Parameters
    ----------
    spec : dict or None
        The vocabulary of this module's docstring. None or ``{}`` mean no preprocessing.

    Returns
    -------
    dict or None
        None when nothing is asked for.

    Raises
    ------
    ModelLoadError
        An unknown key (with the closest known one), a value of the wrong type, or a forbidden combination.
    """
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ModelLoadError(
            f"The card's 'preprocess' must be a dictionary such as {{\"window\": [-100, 300]}}, got {spec!r}."
        )
    unknown = [k for k in spec if k not in PREPROCESS_KEYS]
    if unknown:
        import difflib

        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(str(k), PREPROCESS_KEYS, 1))
                 else repr(k) for k in unknown]
        raise ModelLoadError(
            f"Unknown preprocess key {', '.join(hints)}. Known keys: {', '.join(PREPROCESS_KEYS)}."
        )
    out: dict[str, Any] = {}
    intensity = [k for k in ("window", "percentile", "zscore") if spec.get(k) not in (None, False)]
    if len(intensity) > 1:
        raise ModelLoadError(
            f"preprocess may use only one of 'window', 'percentile' and 'zscore', got {intensity}. "
            "Use 'scale'/'shift' for an extra linear step."
        )
    if spec.get("window") is not None:
        out["window"] = _pair(spec["window"], "window", "[-100, 300] (HU)")
    if spec.get("percentile") is not None:
        p = _pair(spec["percentile"], "percentile", "[0.5, 99.5]")
        if p[0] < 0 or p[1] > 100:
            raise ModelLoadError(f"preprocess 'percentile' must lie in [0, 100], got {spec['percentile']!r}.")
        out["percentile"] = p
    if spec.get("scale_to") is not None:
        if not ("window" in out or "percentile" in out):
            raise ModelLoadError("preprocess 'scale_to' needs a 'window' or a 'percentile' to rescale.")
        a, b = (_number(v, "'scale_to'") for v in _as_seq(spec["scale_to"], "scale_to", 2))
        if a == b:
            raise ModelLoadError(f"preprocess 'scale_to' must be two different values, got {spec['scale_to']!r}.")
        out["scale_to"] = [a, b]
    for key in ("zscore", "mask_nonzero", "crop_nonzero"):
        if key in spec and spec[key] is not None:
            if not isinstance(spec[key], bool):
                raise ModelLoadError(f"preprocess '{key}' must be true or false, got {spec[key]!r}.")
            if spec[key]:
                out[key] = True
    if out.get("mask_nonzero") and not out.get("zscore"):
        raise ModelLoadError("preprocess 'mask_nonzero' only applies to 'zscore': add \"zscore\": true.")
    for key in ("scale", "shift"):
        if spec.get(key) is not None:
            out[key] = _number(spec[key], f"'{key}'")
    if out.get("scale") == 0.0:
        raise ModelLoadError("preprocess 'scale' must not be 0 (it would erase the image).")
    if spec.get("pad_to_multiple") is not None:
        raw = spec["pad_to_multiple"]
        values = [raw] if not isinstance(raw, Sequence) or isinstance(raw, str) else list(raw)
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
            raise ModelLoadError(
                f"preprocess 'pad_to_multiple' must be a positive integer (or one per spatial axis), e.g. 16; "
                f"got {raw!r}."
            )
        out["pad_to_multiple"] = int(values[0]) if not isinstance(raw, Sequence) else [int(v) for v in values]
    if spec.get("pad_mode") is not None:
        if spec["pad_mode"] not in _PAD_MODES:
            raise ModelLoadError(f"preprocess 'pad_mode' must be one of {_PAD_MODES}, got {spec['pad_mode']!r}.")
        out["pad_mode"] = spec["pad_mode"]
    if spec.get("pad_value") is not None:
        out["pad_value"] = _number(spec["pad_value"], "'pad_value'")
    if spec.get("resample") is not None:
        out["resample"] = _check_resample(spec["resample"])
    if ("pad_mode" in out or "pad_value" in out) and "pad_to_multiple" not in out:
        raise ModelLoadError("preprocess 'pad_mode' / 'pad_value' need 'pad_to_multiple'.")
    if out.get("pad_mode", "constant") != "constant" and "pad_value" in out:
        raise ModelLoadError("preprocess 'pad_value' only applies to pad_mode 'constant'.")
    return out or None


def _check_resample(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ModelLoadError(f"preprocess 'resample' must be a dictionary such as {{\"order\": 3, \"order_z\": 0}}, "
                             f"got {value!r}.")
    unknown = [str(k) for k in value if k not in RESAMPLE_KEYS]
    if unknown:
        raise ModelLoadError(f"Unknown preprocess 'resample' key(s) {', '.join(map(repr, unknown))}; the keys are "
                             f"{', '.join(RESAMPLE_KEYS)}.")
    out = {**RESAMPLE_KEYS, **value}
    for key in ("order", "order_z", "back_order", "back_order_z"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 5:
            raise ModelLoadError(f"preprocess 'resample' {key!r} must be a spline order 0 to 5, got {v!r}.")
        out[key] = int(v)
    for key in ("force_separate_z", "back_force_separate_z"):
        if out[key] is not None and not isinstance(out[key], bool):
            raise ModelLoadError(f"preprocess 'resample' {key!r} must be true, false or null, got {out[key]!r}.")
    out["anisotropy_threshold"] = _number(out["anisotropy_threshold"], "'resample' 'anisotropy_threshold'")
    return out


def _as_seq(value: Any, key: str, n: int) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n:
        raise ModelLoadError(f"preprocess '{key}' must be a list of {n} numbers, got {value!r}.")
    return value


# ------------------------------------------------------------------------------------------------
# layout: which axes are channels (the one copy of the rule)


@dataclass(frozen=True)
class Layout:
    """How an image's axes meet the model: ``channels`` input channels, ``slicewise`` for a 2D model on a volume
    (slices along the first spatial axis), ``channel_axis`` when the array's first axis holds channels."""

    channels: int
    slicewise: bool
    channel_axis: bool = False

    def spatial(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial part of an image shape with this layout."""
        return tuple(int(s) for s in (shape[1:] if self.channel_axis else shape))


def layout(shape: Sequence[int], card: ModelCard) -> Layout:
    """Read an image shape against the model: ``(*S)`` is one channel; ``(C, *S)`` holds channels when the model
    takes ``C > 1`` channels or is 3D and given one more axis (``(1, D, H, W)``); a 2D model on ``(D, H, W)`` runs
    slice by slice. Anything else is an :class:`InputShapeError` that says which shapes fit.

    Examples
    --------
    >>> from napari_attribution.models import ModelCard
    >>> layout((1, 40, 64, 64), ModelCard(spatial_dims=3, in_channels=1))
    Layout(channels=1, slicewise=False, channel_axis=True)
    >>> layout((40, 64, 64), ModelCard(spatial_dims=2, in_channels=1)).slicewise
    True
    """
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    d, c = card.spatial_dims, card.in_channels
    if d is None:
        d = n if (c or 1) == 1 else n - 1
    want = f"{c} channel{'s' if (c or 1) > 1 else ''}"
    if n == d:
        if (c or 1) != 1:
            raise InputShapeError(
                f"The model expects {want}, but the image {shape} has one. Stack the channels as (C, *spatial)."
            )
        return Layout(1, False)
    if n == d + 1:
        if c is not None and c > 1:
            if shape[0] != c:
                raise InputShapeError(
                    f"The model expects {want} as the first axis, but the image has shape {shape}. "
                    "Give (C, *spatial) with the model's channel count, or provide a model card."
                )
            return Layout(c, False, True)
        if d == 2:
            return Layout(1, True)
        if shape[0] == 1:
            return Layout(1, False, True)
    if n == d + 2 and d == 2 and c is not None and shape[0] == c:
        return Layout(c, True, True)
    kind = {2: "2D", 3: "3D"}.get(d, f"{d}D")
    forms = ("(H, W), (C, H, W) or a volume (D, H, W) explained slice by slice" if d == 2
             else "(D, H, W) or (C, D, H, W)")
    raise InputShapeError(
        f"An image of shape {shape} does not fit this {kind} model with {want}. A {kind} model takes "
        f"{forms}."
        " If the model's dimensionality was guessed wrong, pass a LoadedModel with a ModelCard."
    )


# ------------------------------------------------------------------------------------------------
# the result


@dataclass(frozen=True)
class _Intensity:
    """The card's intensity step with its numbers fixed from one image (per channel), so that perturbed copies of
    that image are normalised identically."""

    spec: Mapping[str, Any]
    per_channel: tuple[tuple[float, ...], ...]  # (lo, hi, a, b) for window / percentile, (mean, std) for zscore
    has_c: bool

    @property
    def active(self) -> bool:
        return any(k in self.spec for k in ("window", "percentile", "zscore", "scale", "shift"))

    def __call__(self, arr: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if not self.active:
            return arr
        out = np.empty_like(arr)
        pairs = list(zip(arr, out, strict=True)) if self.has_c else [(arr, out)]
        for (src, dst), numbers in zip(pairs, self.per_channel, strict=True):
            if "window" in self.spec or "percentile" in self.spec:
                lo, hi, a, b = numbers
                if hi > lo:
                    np.clip(src, lo, hi, out=dst)
                    dst -= np.float32(lo)
                    dst *= np.float32((b - a) / (hi - lo))
                    dst += np.float32(a)
                else:  # a constant image: every voxel sits at the low end
                    dst.fill(a)
            elif self.spec.get("zscore"):
                mean, std = numbers
                np.subtract(src, np.float32(mean), out=dst)
                dst /= np.float32(std if std > 0 else 1.0)
                if self.spec.get("mask_nonzero"):
                    dst[src == 0] = 0.0
            else:
                dst[...] = src
        if "scale" in self.spec or "shift" in self.spec:
            out *= np.float32(self.spec.get("scale", 1.0))
            out += np.float32(self.spec.get("shift", 0.0))
        return out


@dataclass(frozen=True, eq=False)
class Prepared:
    """A scan made ready for one model, and the way between the scan's grid and the model's.

    Attributes
    ----------
    scan : numpy.ndarray, float32, ``(*S)`` or ``(C, *S)``
        The scan after the card's intensity step, on the scan's own grid: what the methods explain and perturb
        (it *is* the input array when no intensity step was asked for and the input was float32).
    channel_axis : bool
        Whether the first axis of ``scan`` (and of the input) holds channels.
    image_shape : tuple of int
        The spatial shape ``S`` of the input image.
    resampled_shape : tuple of int
        The spatial shape after resampling / resizing and before padding (``S`` when the grid is kept).
    pad : tuple of (int, int)
        Voxels added before and after along each spatial axis.
    geometry : Geometry or None
        Where the voxels of the model grid (:attr:`data`) lie in world space (None without the input's geometry).
    steps : tuple of str
        What was done, in words (for logs, sidecars and the GUI).
    intensity : callable
        The intensity step with its numbers fixed from this scan: ``intensity(other)`` normalises a perturbed copy
        exactly like the scan.

    Notes
    -----
    Model-grid index ``j`` and image index ``i`` (continuous, per axis) are related by
    ``i = (j - pad_before + 0.5) * n / n' - 0.5`` with ``n`` the image length and ``n'`` the resampled length.
    """

    scan: npt.NDArray[np.float32]
    channel_axis: bool
    image_shape: tuple[int, ...]
    resampled_shape: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    geometry: Geometry | None = None
    steps: tuple[str, ...] = field(default=())
    intensity: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]] = field(default=lambda a: a)
    pad_mode: str = "constant"
    pad_value: float = 0.0
    #: how many trailing spatial axes the model sees (2 for a 2D model on a volume); 0 means all
    model_axes: int = 0
    #: the card's sliding-window inferer: the network runs window by window on the model grid
    inferer: SlidingWindow | None = None
    #: ``preprocess["resample"]``: nnU-Net's resampling to the model grid and back (per-axis matrices) instead of
    #: linear interpolation
    resampler: tuple[AxisResampler, AxisResampler] | None = None

    def __post_init__(self) -> None:
        if not self.model_axes:
            object.__setattr__(self, "model_axes", len(self.image_shape))

    def padded_to(self, multiple: int) -> Prepared:
        """The same preparation padded to ``multiple`` on the model's axes (replacing any padding)."""
        pad = _pad_widths(self.resampled_shape, {"pad_to_multiple": int(multiple)}, self.model_axes)
        size = tuple(n + a + b for n, (a, b) in zip(self.resampled_shape, pad, strict=True))
        step = f"padded {self.resampled_shape} to {size} (multiple of {multiple}: the network failed unpadded)"
        kept = tuple(s for s in self.steps if not s.startswith("padded "))
        steps = kept + ((step,) if any(a or b for a, b in pad) else ())
        geometry = None
        if self.geometry is not None:  # model-grid index j is resampled index j - pad_before
            shift = np.asarray([bo - bn for (bo, _), (bn, _) in zip(self.pad, pad, strict=True)], np.float64)
            origin = tuple(float(v) for v in self.geometry.index_to_world(shift))
            geometry = type(self.geometry)(spacing=self.geometry.spacing, origin=origin,
                                           direction=self.geometry.direction)
        return replace(self, pad=pad, steps=steps, geometry=geometry, pad_mode="constant", pad_value=0.0)

    @functools.cached_property
    def data(self) -> npt.NDArray[np.float32]:
        """The model-ready array on the model grid ``(*M)`` or ``(C, *M)`` (resampled and padded; the scan itself
        when :attr:`is_identity`)."""
        if self.is_identity:
            return self.scan
        stack = self.scan if self.channel_axis else self.scan[None]
        with torch.no_grad():
            out = self.to_model(torch.from_numpy(np.ascontiguousarray(stack))[None])[0].numpy()
        return out if self.channel_axis else out[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape ``M`` of the model grid (padding included)."""
        return tuple(n + a + b for n, (a, b) in zip(self.resampled_shape, self.pad, strict=True))

    @property
    def resampled(self) -> bool:
        """True when the spatial axes were resampled."""
        return self.resampled_shape != self.image_shape

    @property
    def padded(self) -> bool:
        """True when padding was added."""
        return any(a or b for a, b in self.pad)

    @property
    def is_identity(self) -> bool:
        """True when the model grid is the image grid (no resampling, no padding): maps pass through unchanged."""
        return not self.resampled and not self.padded

    # -------------------------------------------------------------- the differentiable grid change
    def _axes(self, k: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
        """Scan shape, resampled shape and padding of the last ``k`` spatial axes (a 2D model on a volume sees
        the in-plane axes of each slice)."""
        if not 0 < k <= len(self.image_shape):
            raise InputShapeError(f"A {k}D tensor does not fit the prepared grid {self.image_shape}.")
        return self.image_shape[-k:], self.resampled_shape[-k:], self.pad[-k:]

    def to_model(self, x: Tensor) -> Tensor:
        """``(N, C, *S) -> (N, C, *M)``: resample / resize, then pad; differentiable (linear interpolation,
        ``align_corners=False``; padding as the card says)."""
        k = x.ndim - 2
        src, size, pad = self._axes(k)
        if tuple(x.shape[2:]) != src:
            raise InputShapeError(f"The input's spatial shape {tuple(x.shape[2:])} is not the scan's {src}.")
        if size != src and self.resampler is not None and k == len(self.image_shape):
            x = self.resampler[0](x)
        elif size != src:
            _check_nd(k)
            x = F.interpolate(x, size=size, mode=_LINEAR[k], align_corners=False)
        if any(a or b for a, b in pad):
            widths = [w for a, b in reversed(pad) for w in (a, b)]
            if self.pad_mode == "constant":
                x = F.pad(x, widths, mode="constant", value=self.pad_value)
            else:
                x = F.pad(x, widths, mode="replicate" if self.pad_mode == "edge" else "reflect")
        return x

    def to_scan(self, y: Tensor) -> Tensor:
        """A model-grid map ``(N, K, *M')`` -> the scan's grid ``(N, K, *S)``, differentiable. ``M'`` may differ
        from ``M`` (a network or layer at another resolution): the map is taken to cover the padded grid, brought
        to ``M``, cropped, and resampled to ``S`` (linear, ``align_corners=False``)."""
        k = y.ndim - 2
        src, size, pad = self._axes(k)
        padded = tuple(n + a + b for n, (a, b) in zip(size, pad, strict=True))
        if tuple(y.shape[2:]) != padded:
            y = _interpolate(y, padded)
        if any(a or b for a, b in pad):
            y = y[(slice(None), slice(None)) + tuple(slice(a, n + a) for n, (a, _) in zip(size, pad, strict=True))]
        if size != src and self.resampler is not None and k == len(self.image_shape):
            y = self.resampler[1](y if y.is_floating_point() else y.float())
        elif size != src:
            y = _interpolate(y, src)
        return y

    def wrap(self, module: nn.Module) -> OnScanGrid:
        """The network on the scan's grid: ``wrap(net)(x) == to_scan(net(to_model(x)))`` for segmentation outputs
        (classification outputs ``(N, K)`` pass through). Layer names, parameters and hooks are the network's own.
        With the card's :attr:`inferer`, ``net`` runs window by window (:class:`~napari_attribution.inferers.
        SlidingWindowNet`)."""
        return OnScanGrid(module if self.inferer is None else SlidingWindowNet(module, self.inferer), self)

    def network(self, module: nn.Module) -> nn.Module:
        """The network as the methods run it on the scan: :meth:`wrap`, or the network itself when the grid does
        not change and there is no inferer."""
        return module if self.is_identity and self.inferer is None else self.wrap(module)


# ------------------------------------------------------------------------------------------------
# prepare


def prepare(
    image: npt.ArrayLike,
    geometry: Geometry | None,
    card: ModelCard,
    *,
    channel_axis: bool | None = None,
    slicewise: bool = False,
) -> Prepared:
    """Apply the card's intensity step to one image and plan the model's grid.

    Parameters
    ----------
    image : array, ``(*S)`` or ``(C, *S)``
        The scan, in its own units (HU for CT). Never modified.
    geometry : Geometry or None
        The scan's geometry; with ``card.spacing`` it enables resampling. Its number of axes also tells whether
        ``image`` has a channel axis.
    card : ModelCard
        ``card.preprocess`` (vocabulary in the module docstring), ``card.input_shape``, ``card.spacing``,
        ``card.spatial_dims`` and ``card.in_channels`` are used.
    channel_axis : bool, optional
        Whether the first axis holds channels; by default from the geometry, else from the card (several input
        channels, or a 3D model given one more axis).
    slicewise : bool
        A 2D model on a volume: ``input_shape`` and padding apply to the in-plane axes of each slice.

    Returns
    -------
    Prepared
        ``.scan`` float32 in the input's layout on the scan's grid (the input itself, no copy, when the card asks
        for no intensity step and the image is float32); ``.data`` the same on the model grid.
    """
    arr = np.asarray(image)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    has_c = _channel_axis(arr.shape, geometry, card, channel_axis)
    spatial = tuple(int(s) for s in (arr.shape[1:] if has_c else arr.shape))
    nd = len(spatial)
    if nd == 0:
        raise InputShapeError(f"The image of shape {arr.shape} has no spatial axes.")
    spec = check_preprocess(card.preprocess) or {}
    steps: list[str] = []
    if spec.get("crop_nonzero"):
        _warn_nonzero_crop(arr, has_c)

    intensity = _Intensity(spec, _intensity_numbers(arr, spec, has_c), has_c)
    scan = intensity(arr)
    if intensity.active:
        steps.append(_intensity_words(spec, has_c))

    # resampling to the card's spacing, or resizing to its input shape
    input_shape = getattr(card, "input_shape", None)
    target = _target_shape(spatial, geometry, card, slicewise)
    resampler = None
    if "resample" in spec and target != spatial:
        resampler = _nnunet_resamplers(spatial, target, geometry, card, spec["resample"])
    if input_shape is not None:
        if target != spatial:
            steps.append(f"resized {spatial} to the model's input shape {target}")
    elif target != spatial:
        assert geometry is not None
        reached = tuple(s * n / t for s, n, t in zip(geometry.spacing, spatial, target, strict=True))
        how = "" if resampler is None else (f" (nnU-Net's spline of order {spec['resample']['order']}, back with "
                                            f"order {spec['resample']['back_order']})")
        steps.append(f"resampled {spatial} at {_mm(geometry.spacing)} mm to {target} at {_mm(reached)} mm{how}")
    elif card.spacing is not None and geometry is None:
        steps.append(f"not resampled to the model's {_mm(card.spacing)} mm: the image's voxel size is unknown")

    # padding
    k = 2 if slicewise else min(card.spatial_dims or nd, nd)
    pad = _pad_widths(target, spec, k)
    mode = spec.get("pad_mode", "constant")
    if any(a or b for a, b in pad):
        steps.append(f"padded {target} to {tuple(n + a + b for n, (a, b) in zip(target, pad, strict=True))} "
                     f"(multiple of {spec['pad_to_multiple']}, {mode})")

    out_geometry = None
    if geometry is not None:
        out_geometry = _model_geometry(geometry, spatial, target, pad)
    inferer = card.sliding_window
    if inferer is not None:
        model_grid = tuple(n + a + b for n, (a, b) in zip(target, pad, strict=True))[-k:]
        steps.append(f"{inferer.describe()}: {inferer.plan(model_grid).count()} windows over {model_grid}")
    return Prepared(scan.astype(np.float32, copy=False), has_c, spatial, target, pad, out_geometry, tuple(steps),
                    intensity, mode, float(spec.get("pad_value", 0.0)), k, inferer, resampler)


def _warn_nonzero_crop(arr: npt.NDArray[np.float32], has_c: bool) -> None:
    """A :class:`PreprocessingWarning` when nnU-Net's crop to the non-zero voxels would crop this scan."""
    nonzero = (arr != 0).any(0) if has_c else arr != 0
    box = []
    for ax in range(nonzero.ndim):
        hit = np.flatnonzero(nonzero.any(tuple(a for a in range(nonzero.ndim) if a != ax)))
        box.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 0))
    if all(lo == 0 and hi == n for (lo, hi), n in zip(box, nonzero.shape, strict=True)):
        return
    import warnings

    from ._errors import PreprocessingWarning

    kept = tuple(hi - lo for lo, hi in box)
    warnings.warn(PreprocessingWarning(
        f"The model's own pipeline (nnU-Net's crop_to_nonzero) crops this scan to the bounding box of its non-zero "
        f"voxels, {kept} of {nonzero.shape}, and predicts background outside it; that crop is not reproduced here, so "
        "the network also sees the zero border and predictions near it may differ from the model's own."
    ), stacklevel=3)


def _nnunet_resamplers(spatial: tuple[int, ...], target: tuple[int, ...], geometry: Geometry | None,
                       card: ModelCard, how: Mapping[str, Any]) -> tuple[AxisResampler, AxisResampler]:
    """nnU-Net's resampling to the model grid (``resampling_fn_data``) and back (``resampling_fn_probabilities``)."""
    if geometry is None or card.spacing is None or len(card.spacing) != len(spatial):
        raise InputShapeError(
            f"preprocess 'resample' (nnU-Net's resampling) needs the scan's voxel size and one model spacing per "
            f"axis of the scan {spatial}; the model card gives spacing {card.spacing}."
        )
    here, there = tuple(geometry.spacing), tuple(card.spacing)
    threshold = float(how["anisotropy_threshold"])
    forward = nnunet_resampler(spatial, target, here, there, order=how["order"], order_z=how["order_z"],
                               force_separate_z=how["force_separate_z"], threshold=threshold)
    back = nnunet_resampler(target, spatial, there, here, order=how["back_order"], order_z=how["back_order_z"],
                            force_separate_z=how["back_force_separate_z"], threshold=threshold)
    return forward, back


def _mm(values: Sequence[float]) -> str:
    return "x".join(f"{v:.3g}" for v in values)


def _channel_axis(shape: tuple[int, ...], geometry: Geometry | None, card: ModelCard, given: bool | None) -> bool:
    if given is not None:
        if given and len(shape) < 2:
            raise InputShapeError(f"An image of shape {shape} has no room for a channel axis.")
        return bool(given)
    if geometry is not None:
        if len(shape) == geometry.ndim:
            return False
        if len(shape) == geometry.ndim + 1:
            return True
        raise InputShapeError(
            f"The image has {len(shape)} axes {shape} but its geometry has {geometry.ndim}: give (*spatial) or "
            "(C, *spatial) with a geometry of the spatial axes."
        )
    c, d = card.in_channels, card.spatial_dims
    if c is not None and c > 1:
        return True
    if d is not None and len(shape) == d + 1 and d == 3:
        return True
    return False


def _intensity_numbers(arr: npt.NDArray[np.float32], spec: dict[str, Any],
                       has_c: bool) -> tuple[tuple[float, ...], ...]:
    """The numbers of the intensity step, per channel, computed once from the unperturbed image."""
    channels = list(arr) if has_c else [arr]
    if "window" in spec or "percentile" in spec:
        a, b = spec.get("scale_to", [0.0, 1.0])
        out: list[tuple[float, ...]] = []
        for src in channels:
            if "window" in spec:
                lo, hi = spec["window"]
            else:
                lo, hi = (float(v) for v in np.percentile(src, spec["percentile"]))
            out.append((float(lo), float(hi), float(a), float(b)))
        return tuple(out)
    if spec.get("zscore"):
        moments: list[tuple[float, ...]] = []
        for src in channels:
            values = src[src != 0] if spec.get("mask_nonzero") else src
            mean = float(values.mean(dtype=np.float64)) if values.size else 0.0
            std = float(values.std(dtype=np.float64)) if values.size else 1.0
            moments.append((mean, std))
        return tuple(moments)
    return tuple(() for _ in channels)


def describe_intensity(card: ModelCard, channel_axis: bool = False) -> str:
    """The card's intensity step in the words :func:`prepare` records (``""`` when it asks for none); the words
    depend on the card only, not on the scan's numbers."""
    spec = check_preprocess(card.preprocess) or {}
    if not any(k in spec for k in ("window", "percentile", "zscore", "scale", "shift")):
        return ""
    return _intensity_words(spec, channel_axis)


def _intensity_words(spec: dict[str, Any], has_c: bool) -> str:
    words = []
    if "window" in spec or "percentile" in spec:
        a, b = spec.get("scale_to", [0.0, 1.0])
        what = f"window {spec['window']}" if "window" in spec else f"percentiles {spec['percentile']}"
        words.append(f"{what} clipped and rescaled to [{a:g}, {b:g}]")
    elif spec.get("zscore"):
        words.append("z-score" + (" over non-zero voxels" if spec.get("mask_nonzero") else "")
                     + (" per channel" if has_c else ""))
    if "scale" in spec or "shift" in spec:
        words.append(f"x * {spec.get('scale', 1.0):g} + {spec.get('shift', 0.0):g}")
    return ", then ".join(words)


def _target_shape(spatial: tuple[int, ...], geometry: Geometry | None, card: ModelCard,
                  slicewise: bool = False) -> tuple[int, ...]:
    nd = len(spatial)
    input_shape = getattr(card, "input_shape", None)
    if input_shape is not None:
        if card.spacing is not None:
            raise ModelLoadError("The model card gives both 'input_shape' and 'spacing'; 'input_shape' resizes the "
                                 "whole scan and replaces 'spacing': remove one of them.")
        k = len(input_shape)
        if k > nd or (slicewise and k != 2):
            raise InputShapeError(
                f"The model card's input_shape {list(input_shape)} has {k} values but the model's image has "
                f"{2 if slicewise else nd} spatial axes {spatial[-2:] if slicewise else spatial}."
            )
        return spatial[: nd - k] + tuple(int(v) for v in input_shape)
    if card.spacing is None or geometry is None:
        return spatial
    k = len(card.spacing)
    if geometry.ndim != nd:
        raise InputShapeError(f"The geometry has {geometry.ndim} axes but the image has {nd} spatial axes {spatial}.")
    if k > nd:
        raise InputShapeError(
            f"The model card's spacing {card.spacing} has {k} values but the image has {nd} spatial axes {spatial}."
        )
    target = list(spatial)
    spec = check_preprocess(card.preprocess) or {}
    if "resample" in spec and k == nd:  # nnU-Net's compute_new_shape: every axis, no tolerance
        return nnunet_new_shape(spatial, geometry.spacing, card.spacing)
    for ax in range(nd - k, nd):
        s, t = geometry.spacing[ax], card.spacing[ax - (nd - k)]
        if abs(s - t) > _SPACING_TOL * t:
            target[ax] = max(1, int(round(spatial[ax] * s / t)))
    return tuple(target)


def _pad_widths(shape: tuple[int, ...], spec: dict[str, Any], k: int) -> tuple[tuple[int, int], ...]:
    """Padding of the last ``k`` axes (the model's) to the multiple ``spec`` asks for, split evenly."""
    nd = len(shape)
    pad = [(0, 0)] * nd
    raw = spec.get("pad_to_multiple")
    if raw is None:
        return tuple(pad)
    multiples = [raw] * k if isinstance(raw, int) else list(raw)
    if len(multiples) != k:
        raise InputShapeError(
            f"preprocess 'pad_to_multiple' {raw} gives {len(multiples)} values but the model has {k} spatial axes."
        )
    for ax, m in zip(range(nd - k, nd), multiples, strict=True):
        total = (-shape[ax]) % m
        pad[ax] = (total // 2, total - total // 2)
    return tuple(pad)


def _model_geometry(geometry: Geometry, spatial: tuple[int, ...], target: tuple[int, ...],
                    pad: tuple[tuple[int, int], ...]) -> Geometry:
    from .io._geometry import Geometry as _Geometry

    first = [(0 - b + 0.5) * n / r - 0.5 for n, r, (b, _) in zip(spatial, target, pad, strict=True)]
    origin = geometry.index_to_world(np.asarray(first))
    spacing = tuple(s * n / r for s, n, r in zip(geometry.spacing, spatial, target, strict=True))
    return _Geometry(spacing=spacing, origin=tuple(float(v) for v in origin), direction=geometry.direction)


# ------------------------------------------------------------------------------------------------
# interpolation (voxel-index space, align_corners=False: the field of view is kept)

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _check_nd(nd: int) -> None:
    if nd not in _LINEAR:
        raise InputShapeError(f"Resampling supports 1 to 3 spatial axes, got {nd}.")


def _interpolate(y: Tensor, size: tuple[int, ...]) -> Tensor:
    """Linear resampling of ``(N, K, *L)`` to ``size`` (``align_corners=False``), differentiable."""
    _check_nd(len(size))
    if not y.is_floating_point():
        y = y.float()
    return F.interpolate(y, size=size, mode=_LINEAR[len(size)], align_corners=False)


# ------------------------------------------------------------------------------------------------
# the network on the scan's grid


def _first_tensor(out: Any) -> Any:
    """The explained output (the first of a list/tuple, ``"out"`` of a dict), as the methods read it."""
    if isinstance(out, (list, tuple)) and out:
        return _first_tensor(out[0])
    if isinstance(out, dict) and out:
        return _first_tensor(out["out"] if "out" in out else next(iter(out.values())))
    return out


class OnScanGrid(nn.Module):
    """A network wrapped so that it takes the scan's voxels and gives its output on the scan's grid.

    ``forward(x) = to_scan(net(to_model(x)))`` with :class:`Prepared`'s differentiable resampling / resizing /
    padding; a classification output ``(N, K)`` passes through. The wrapper is transparent to everything that
    walks the network: ``named_modules`` (hence ``modules``, ``parameters``, layer names and hooks) are the
    network's own, so layer ``"features.3"`` is still ``"features.3"``. It holds no state of its own and never
    changes the network.
    """

    def __init__(self, net: nn.Module, prepared: Prepared) -> None:
        super().__init__()
        self.net = net
        self.prepared = prepared

    def forward(self, x: Tensor) -> Tensor:
        out = _first_tensor(self.net(self.prepared.to_model(x)))
        if not isinstance(out, Tensor):
            raise InputShapeError(f"The network returned {type(out).__name__}; expected a tensor.")
        return self.prepared.to_scan(out) if out.ndim == x.ndim else out

    def named_modules(self, memo: set[nn.Module] | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Any:
        return self.net.named_modules(memo, prefix, remove_duplicate)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's network inside an :class:`OnScanGrid` and a sliding window (the model itself otherwise)."""
    while isinstance(model, (OnScanGrid, SlidingWindowNet)):
        model = model.net
    return model


def is_script(model: nn.Module) -> bool:
    """True for a TorchScript archive, also when wrapped on the scan's grid."""
    return isinstance(unwrap(model), torch.jit.ScriptModule)


# ------------------------------------------------------------------------------------------------
# fitting the grid to the network: a trial forward pass, only after a failure

#: the multiples tried, smallest padding first: UNets need 2^(number of down-samplings)
_MULTIPLES = (2, 4, 8, 16, 32, 64)
#: network -> {model grid before padding (per model axis): the multiple that made it run}
_FITTED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], int]] = weakref.WeakKeyDictionary()


def known_multiple(module: nn.Module, prepared: Prepared) -> int | None:
    """The padding multiple :func:`fit_network` already found for this network at this grid, if any."""
    try:
        return _FITTED.get(module, {}).get(prepared.resampled_shape[-prepared.model_axes:])
    except TypeError:  # pragma: no cover - modules that cannot be weakly referenced
        return None


def _sample(prepared: Prepared) -> Tensor:
    """One model-grid input ``(1, C, *M)``: the image, or for a 2D model on a volume its middle slice."""
    data = prepared.data if prepared.channel_axis else prepared.data[None]
    if prepared.model_axes < len(prepared.image_shape):
        mid = data.shape[1] // 2
        data = data[:, mid]
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]


def _runs(module: nn.Module, x: Tensor) -> BaseException | None:
    """None when the network runs on ``x`` (no gradients, eval mode, flags restored), else its error."""
    from .methods._hooks import model_guard  # the one guard; imported here to keep this module's imports light

    dev = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        with model_guard(module), torch.no_grad():
            module(x.to(dev))
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # any failure inside the user's network: torch, TorchScript, MONAI's own checks
        return err
    return None


def _short(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def fit_network(module: nn.Module, prepared: Prepared, card: ModelCard, error: BaseException) -> Prepared:
    """After ``module`` failed on ``prepared``'s grid with ``error``: the grid it runs on, or one clear error.

    A trial forward pass (no gradients) on the model-grid input tells whether the failure was about the input's
    size. If it was not, ``error`` is raised again unchanged. If it was and the card fixes the grid
    (``input_shape`` or ``pad_to_multiple``), an :class:`InputShapeError` says so. Otherwise the input is padded to
    the smallest multiple in 2, 4, ..., 64 on which the network runs (UNets need 2^(down-samplings)); that multiple
    is remembered for this network and grid. When none runs, the network probably takes one fixed size: the
    :class:`InputShapeError` names the card's ``input_shape`` and ``pad_to_multiple``.
    """
    if isinstance(error, (AttributionError, MemoryError)):
        raise error
    if prepared.inferer is not None:  # the network sees roi_size windows, never the grid: only the window can fail
        window = prepared.inferer.roi_size
        failed = _runs(module, torch.zeros((1, prepared.scan.shape[0] if prepared.channel_axis else 1) + window))
        if failed is None:
            raise error
        raise InputShapeError(
            f"The network does not run on one window of the model card's inferer, roi_size {list(window)} "
            f"({_short(failed)}). Set roi_size to the patch size the network was trained on (UNets need a multiple "
            "of 2^(number of down-samplings), e.g. 96 or 128)."
        ) from failed
    first = _runs(module, _sample(prepared))
    if first is None:
        raise error  # the network runs on this grid: the failure was something else
    grid = prepared.shape[-prepared.model_axes:]
    spec = check_preprocess(card.preprocess) or {}
    fixed = [k for k in ("input_shape",) if getattr(card, k, None) is not None] + \
        [f"preprocess.{k}" for k in ("pad_to_multiple",) if k in spec]
    if fixed:
        raise InputShapeError(
            f"The network does not run on the grid {grid} that the model card's {' and '.join(fixed)} give(s) "
            f"({_short(first)}). Set the card's 'input_shape' to the size the network was trained on, or "
            "'preprocess': {'pad_to_multiple': N} to the multiple its down-sampling needs."
        ) from first
    tried = []
    for m in _MULTIPLES:
        padded = prepared.padded_to(m)
        shape = padded.shape[-padded.model_axes:]
        if shape == grid or shape in tried:
            continue
        tried.append(shape)
        if _runs(module, _sample(padded)) is None:
            try:
                _FITTED.setdefault(module, {})[prepared.resampled_shape[-prepared.model_axes:]] = m
            except TypeError:  # pragma: no cover
                pass
            return padded
    raise InputShapeError(
        f"The network does not run on this scan's grid {grid} ({_short(first)}), nor padded to a multiple of "
        f"{', '.join(str(m) for m in _MULTIPLES)} ({', '.join(str(t) for t in tried)}), so it probably takes one "
        "fixed input size (or it fails for a reason of its own: read its error above). Give the model card an "
        "'input_shape' (the size the network was trained on, e.g. [64, 64, 64]); if it needs sizes divisible by "
        "another number, give 'preprocess': {'pad_to_multiple': N}."
    ) from first
