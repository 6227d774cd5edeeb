"""Model-card preprocessing: intensity normalisation, resampling to the model's voxel spacing and padding, with
the exact inverse mapping of maps, masks and voxel indices back onto the scan's own grid.

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
                                            axis): UNets with four poolings need it. ``"pad_mode"``: ``"constant"``
                                            (default, value ``"pad_value"``, default 0, after normalisation as in
                                            MONAI's ``DivisiblePad``), ``"edge"`` or ``"reflect"``. The padding is
                                            split evenly before and after and cropped away again by
                                            :meth:`Prepared.to_image_grid`.
==========================================  ==========================================================================

At most one of ``window``, ``percentile`` and ``zscore`` may be given. The order is always: intensity
(window / percentile / zscore, then scale / shift) on the scan's grid, then resampling, then padding.

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
>>> prepared.to_image_grid(np.ones(prepared.data.shape, np.float32)).shape
(40, 64, 64)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ._errors import InputShapeError, ModelLoadError

if TYPE_CHECKING:
    from .io._geometry import Geometry
    from .models._card import ModelCard

__all__ = ["PREPROCESS_KEYS", "Prepared", "check_preprocess", "prepare"]

#: The keys a card's ``preprocess`` entry may hold (see the module docstring).
PREPROCESS_KEYS = (
    "window", "percentile", "scale_to", "zscore", "mask_nonzero", "scale", "shift", "pad_to_multiple", "pad_mode",
    "pad_value",
)
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
    for key in ("zscore", "mask_nonzero"):
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
    if ("pad_mode" in out or "pad_value" in out) and "pad_to_multiple" not in out:
        raise ModelLoadError("preprocess 'pad_mode' / 'pad_value' need 'pad_to_multiple'.")
    if out.get("pad_mode", "constant") != "constant" and "pad_value" in out:
        raise ModelLoadError("preprocess 'pad_value' only applies to pad_mode 'constant'.")
    return out or None


def _as_seq(value: Any, key: str, n: int) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n:
        raise ModelLoadError(f"preprocess '{key}' must be a list of {n} numbers, got {value!r}.")
    return value


# ------------------------------------------------------------------------------------------------
# the result


@dataclass(frozen=True, eq=False)
class Prepared:
    """A model-ready image and the way back to the scan's grid.

    Attributes
    ----------
    data : numpy.ndarray, float32, ``(*M)`` or ``(C, *M)``
        The model-ready array, in the input's layout (a channel axis stays first). It *is* the input array when
        nothing was asked for and the input was already float32 (see :attr:`is_identity`).
    channel_axis : bool
        Whether the first axis of ``data`` (and of the input) holds channels.
    image_shape : tuple of int
        The spatial shape ``S`` of the input image.
    resampled_shape : tuple of int
        The spatial shape after resampling and before padding (``S`` when not resampled).
    pad : tuple of (int, int)
        Voxels added before and after along each spatial axis.
    geometry : Geometry or None
        Where the voxels of ``data`` lie in world space (None when the input's geometry was not given).
    steps : tuple of str
        What was done, in words (for logs and the GUI).

    Notes
    -----
    Model-grid index ``j`` and image index ``i`` (continuous, per axis) are related by
    ``i = (j - pad_before + 0.5) * n / n' - 0.5`` with ``n`` the image length and ``n'`` the resampled length.
    """

    data: npt.NDArray[np.float32]
    channel_axis: bool
    image_shape: tuple[int, ...]
    resampled_shape: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    geometry: Geometry | None = None
    steps: tuple[str, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape ``M`` of :attr:`data` (the model grid, padding included)."""
        return tuple(self.data.shape[1:] if self.channel_axis else self.data.shape)

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

    # -------------------------------------------------------------- maps back
    def to_image_grid(self, map: npt.ArrayLike, *, mode: str = "linear") -> npt.NDArray[Any]:
        """Map an array on the model grid back onto the image grid.

        Parameters
        ----------
        map : array, ``(*M)`` or ``(K, *M)``
            ``M`` is :attr:`shape` (padding included). A leading axis (channels, classes, per-channel maps) is kept.
            NaN marks "not computed" (e.g. slices a 2D model skipped) and stays NaN, without spreading.
        mode : ``"linear"`` or ``"nearest"``
            Linear interpolation for maps and probabilities; nearest for label images (then the dtype is kept).

        Returns
        -------
        numpy.ndarray, ``(*S)`` or ``(K, *S)``
            Exactly the image's spatial shape; float32 for ``"linear"``. The input itself when
            :attr:`is_identity`.
        """
        arr = np.asarray(map)
        nd = len(self.image_shape)
        if arr.ndim not in (nd, nd + 1) or tuple(arr.shape[-nd:]) != self.shape:
            raise InputShapeError(
                f"A map of shape {arr.shape} is not on the model grid: its last {nd} axes must be {self.shape}."
            )
        if mode not in ("linear", "nearest"):
            raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}.")
        if self.is_identity:
            return arr
        lead = arr.ndim == nd + 1
        crop = tuple(slice(b, n - a) for (b, a), n in zip(self.pad, self.shape, strict=True))
        arr = arr[(slice(None),) * lead + crop]
        if not self.resampled:
            return np.ascontiguousarray(arr)
        stack = arr if lead else arr[None]
        if mode == "nearest":
            out = _resize_nearest(stack, self.image_shape)
        else:
            out = _resize_linear_nan(stack.astype(np.float32, copy=False), self.image_shape)
        return out if lead else out[0]

    def mask_to_model_grid(self, mask: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """A boolean mask on the image grid ``(*S)`` -> the model grid ``(*M)`` (nearest neighbour; padding False)."""
        m = np.asarray(mask)
        if tuple(m.shape) != self.image_shape:
            raise InputShapeError(
                f"The mask has shape {m.shape} but the image's spatial shape is {self.image_shape}; masks are given "
                "in image voxel space."
            )
        m = m.astype(bool, copy=False)
        if self.is_identity:
            return m
        if self.resampled:
            m = _resize_nearest(m[None].astype(np.uint8), self.resampled_shape)[0].astype(bool)
        if self.padded:
            m = np.pad(m, self.pad, mode="constant", constant_values=False)
        return m

    def index_to_model_grid(self, index: Sequence[float]) -> tuple[int, ...]:
        """An image voxel index ``(z, y, x)`` -> the nearest model-grid voxel index (inside the unpadded region)."""
        idx = self._check_index(index, self.image_shape, "image")
        out = []
        for i, n, r, (b, _) in zip(idx, self.image_shape, self.resampled_shape, self.pad, strict=True):
            j = (i + 0.5) * r / n - 0.5
            out.append(int(min(max(math.floor(j + 0.5), 0), r - 1)) + b)
        return tuple(out)

    def index_to_image_grid(self, index: Sequence[float]) -> tuple[int, ...]:
        """A model-grid voxel index -> the nearest image voxel index (padding voxels map to the nearest edge)."""
        idx = self._check_index(index, self.shape, "model grid")
        out = []
        for j, n, r, (b, _) in zip(idx, self.image_shape, self.resampled_shape, self.pad, strict=True):
            i = (j - b + 0.5) * n / r - 0.5
            out.append(int(min(max(math.floor(i + 0.5), 0), n - 1)))
        return tuple(out)

    @staticmethod
    def _check_index(index: Sequence[float], shape: tuple[int, ...], grid: str) -> list[float]:
        idx = [float(v) for v in index]
        if len(idx) != len(shape):
            raise InputShapeError(f"A voxel index needs {len(shape)} values {shape}, got {tuple(index)}.")
        if any(not 0 <= v <= n - 1 for v, n in zip(idx, shape, strict=True)):
            raise InputShapeError(f"The voxel index {tuple(index)} lies outside the {grid} of shape {shape}.")
        return idx


# ------------------------------------------------------------------------------------------------
# prepare


def prepare(
    image: npt.ArrayLike,
    geometry: Geometry | None,
    card: ModelCard,
    *,
    channel_axis: bool | None = None,
) -> Prepared:
    """Apply the card's preprocessing and resampling to one image.

    Parameters
    ----------
    image : array, ``(*S)`` or ``(C, *S)``
        The scan, in its own units (HU for CT). Never modified.
    geometry : Geometry or None
        The scan's geometry; with ``card.spacing`` it enables resampling. Its number of axes also tells whether
        ``image`` has a channel axis.
    card : ModelCard
        ``card.preprocess`` (vocabulary in the module docstring), ``card.spacing``, ``card.spatial_dims`` and
        ``card.in_channels`` are used.
    channel_axis : bool, optional
        Whether the first axis holds channels; by default from the geometry, else from the card (several input
        channels, or a 3D model given one more axis).

    Returns
    -------
    Prepared
        ``.data`` float32 in the input's layout; the identity (the input itself, no copy) when the card asks for
        nothing and the image is float32.
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

    data = _intensity(arr, spec, has_c, steps)

    # resampling
    target = _target_shape(spatial, geometry, card)
    if target != spatial:
        stack = data if has_c else data[None]
        stack = _resize_linear(stack, target)
        data = stack if has_c else stack[0]
        assert geometry is not None
        reached = tuple(s * n / t for s, n, t in zip(geometry.spacing, spatial, target, strict=True))
        steps.append(f"resampled {spatial} at {_mm(geometry.spacing)} mm to {target} at {_mm(reached)} mm")

    elif card.spacing is not None and geometry is None:
        steps.append(f"not resampled to the model's {_mm(card.spacing)} mm: the image's voxel size is unknown")

    # padding
    pad = _pad_widths(target, spec, card)
    if any(a or b for a, b in pad):
        widths = ([(0, 0)] if has_c else []) + list(pad)
        mode = spec.get("pad_mode", "constant")
        if mode == "constant":
            data = np.pad(data, widths, mode="constant", constant_values=spec.get("pad_value", 0.0))
        else:
            data = np.pad(data, widths, mode=mode)
        steps.append(f"padded {target} to {tuple(n + a + b for n, (a, b) in zip(target, pad, strict=True))} "
                     f"(multiple of {spec['pad_to_multiple']}, {mode})")

    out_geometry = None
    if geometry is not None:
        out_geometry = _model_geometry(geometry, spatial, target, pad)
    data = data.astype(np.float32, copy=False)
    return Prepared(data, has_c, spatial, target, pad, out_geometry, tuple(steps))


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


def _intensity(arr: npt.NDArray[np.float32], spec: dict[str, Any], has_c: bool,
               steps: list[str]) -> npt.NDArray[np.float32]:
    """Intensity steps, computed in place in one new array (the input is never written to)."""
    if not any(k in spec for k in ("window", "percentile", "zscore", "scale", "shift")):
        return arr
    out = np.empty_like(arr)
    pairs = list(zip(arr, out, strict=True)) if has_c else [(arr, out)]
    if "window" in spec or "percentile" in spec:
        a, b = spec.get("scale_to", [0.0, 1.0])
        for src, dst in pairs:
            if "window" in spec:
                lo, hi = spec["window"]
            else:
                lo, hi = (float(v) for v in np.percentile(src, spec["percentile"]))
            if hi > lo:
                np.clip(src, lo, hi, out=dst)
                dst -= np.float32(lo)
                dst *= np.float32((b - a) / (hi - lo))
                dst += np.float32(a)
            else:  # a constant image: every voxel sits at the low end
                dst.fill(a)
        what = f"window {spec['window']}" if "window" in spec else f"percentiles {spec['percentile']}"
        steps.append(f"{what} clipped and rescaled to [{a:g}, {b:g}]")
    elif spec.get("zscore"):
        nonzero = bool(spec.get("mask_nonzero"))
        for src, dst in pairs:
            sel = src != 0 if nonzero else None
            values = src[sel] if sel is not None else src
            mean = float(values.mean(dtype=np.float64)) if values.size else 0.0
            std = float(values.std(dtype=np.float64)) if values.size else 1.0
            np.subtract(src, np.float32(mean), out=dst)
            dst /= np.float32(std if std > 0 else 1.0)
            if sel is not None:
                dst[~sel] = 0.0
        steps.append("z-score" + (" over non-zero voxels" if nonzero else "") + (" per channel" if has_c else ""))
    else:
        out[...] = arr
    if "scale" in spec or "shift" in spec:
        scale, shift = spec.get("scale", 1.0), spec.get("shift", 0.0)
        out *= np.float32(scale)
        out += np.float32(shift)
        steps.append(f"x * {scale:g} + {shift:g}")
    return out


def _target_shape(spatial: tuple[int, ...], geometry: Geometry | None, card: ModelCard) -> tuple[int, ...]:
    if card.spacing is None or geometry is None:
        return spatial
    nd = len(spatial)
    k = len(card.spacing)
    if geometry.ndim != nd:
        raise InputShapeError(f"The geometry has {geometry.ndim} axes but the image has {nd} spatial axes {spatial}.")
    if k > nd:
        raise InputShapeError(
            f"The model card's spacing {card.spacing} has {k} values but the image has {nd} spatial axes {spatial}."
        )
    target = list(spatial)
    for ax in range(nd - k, nd):
        s, t = geometry.spacing[ax], card.spacing[ax - (nd - k)]
        if abs(s - t) > _SPACING_TOL * t:
            target[ax] = max(1, int(round(spatial[ax] * s / t)))
    return tuple(target)


def _pad_widths(shape: tuple[int, ...], spec: dict[str, Any], card: ModelCard) -> tuple[tuple[int, int], ...]:
    nd = len(shape)
    pad = [(0, 0)] * nd
    raw = spec.get("pad_to_multiple")
    if raw is None:
        return tuple(pad)
    k = min(card.spatial_dims or nd, nd)
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


def _resize_linear(stack: npt.NDArray[np.float32], size: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """``(C, *S) -> (C, *size)`` by (bi/tri)linear interpolation."""
    _check_nd(len(size))
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[None]
    with torch.no_grad():
        out = F.interpolate(t, size=size, mode=_LINEAR[len(size)], align_corners=False)
    return out[0].numpy()


def _resize_linear_nan(stack: npt.NDArray[np.float32], size: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Linear resize that treats NaN as missing: normalised interpolation, NaN where no valid voxel contributes
    at least half the weight."""
    valid = np.isfinite(stack)
    if valid.all():
        return _resize_linear(stack, size)
    filled = np.where(valid, stack, np.float32(0.0)).astype(np.float32)
    num = _resize_linear(filled, size)
    den = _resize_linear(valid.astype(np.float32), size)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den < 0.5] = np.nan
    return out.astype(np.float32, copy=False)


def _resize_nearest(stack: npt.NDArray[Any], size: tuple[int, ...]) -> npt.NDArray[Any]:
    """``(C, *S) -> (C, *size)`` by nearest neighbour at voxel centres (any dtype, indices computed in numpy)."""
    _check_nd(len(size))
    out = stack
    for ax, (n, r) in enumerate(zip(stack.shape[1:], size, strict=True)):
        if n == r:
            continue
        src = np.minimum(np.floor((np.arange(r) + 0.5) * (n / r)).astype(np.intp), n - 1)
        out = np.take(out, src, axis=ax + 1)
    return np.ascontiguousarray(out)
