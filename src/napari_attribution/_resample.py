"""nnU-Net's resampling, exact and differentiable: one matrix per axis.

nnU-Net v2 (``preprocessing/resampling/default_resampling.py``, ``resample_data_or_seg``) resamples an image with
``skimage.transform.resize(channel, new_shape, order, mode="edge", anti_aliasing=False)`` (scipy's ``zoom`` with
``grid_mode=True`` after a B-spline prefilter, then the output clipped to the input's range), or, when the spacing
is anisotropic (max / min > 3), slice by slice in-plane with that ``resize`` and along the low-resolution axis with
``map_coordinates(order=order_z, mode="nearest")`` at ``(i + 0.5) * n / n' - 0.5``. Both are tensor products of one
linear map per axis (the prefilter and the spline evaluation are separable), followed by the clip. So each axis's
map is a matrix, built here by sending unit vectors through the same scipy call along that axis (float64), and the
resampling is those matrix products (float64, as nnU-Net computes) and the same clip, in torch: differentiable, and
equal to nnU-Net's result to rounding (checked in ``tests/models/test_nnunet_resample.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

__all__ = ["ANISO_THRESHOLD", "AxisResampler", "nnunet_new_shape", "nnunet_resampler", "separate_z_axis"]

#: nnU-Net's ``ANISO_THRESHOLD``: spacings whose max / min exceeds it are resampled separately along the coarse axis
ANISO_THRESHOLD = 3.0


def nnunet_new_shape(shape: Sequence[int], old_spacing: Sequence[float], new_spacing: Sequence[float]
                     ) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``: ``int(round(old / new * n))`` per axis."""
    return tuple(int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, shape, strict=True))


def _lowres_axes(spacing: Sequence[float]) -> list[int]:
    s = np.asarray(spacing, dtype=np.float64)
    return [int(a) for a in np.where(max(s) / s == 1)[0]]


def separate_z_axis(force: bool | None, current: Sequence[float], new: Sequence[float],
                    threshold: float = ANISO_THRESHOLD) -> int | None:
    """nnU-Net's ``determine_do_sep_z_and_axis``: the axis resampled separately (with ``order_z``), or None."""
    def anisotropic(sp: Sequence[float]) -> bool:
        return bool(max(sp) / min(sp) > threshold)

    axes: list[int] | None
    if force is not None:
        axes = _lowres_axes(current) if force else None
    elif anisotropic(current):
        axes = _lowres_axes(current)
    elif anisotropic(new):
        axes = _lowres_axes(new)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return axes[0]


@functools.lru_cache(maxsize=64)
def _zoom_matrix(n: int, m: int, order: int) -> npt.NDArray[np.float64]:
    """``(m, n)``: skimage's ``resize`` of a length-``n`` axis to ``m`` (``zoom``, ``mode="nearest"``,
    ``grid_mode=True``, the call ``resize(..., mode="edge", anti_aliasing=False)`` makes), without its clip."""
    from scipy import ndimage  # noqa: PLC0415 - only nnU-Net models need it

    if n == m:
        return np.eye(n)
    out = np.empty((m, n), dtype=np.float64)
    for j in range(n):
        e = np.zeros(n, dtype=np.float64)
        e[j] = 1.0
        out[:, j] = ndimage.zoom(e, m / n, order=order, mode="nearest", grid_mode=True)
    return out


@functools.lru_cache(maxsize=64)
def _map_matrix(n: int, m: int, order: int) -> npt.NDArray[np.float64]:
    """``(m, n)``: ``map_coordinates(order=order, mode="nearest")`` at ``(i + 0.5) * n / m - 0.5`` (nnU-Net's
    resampling along the separate axis)."""
    from scipy import ndimage  # noqa: PLC0415

    coords = (float(n) / m * (np.arange(m) + 0.5) - 0.5)[None]
    out = np.empty((m, n), dtype=np.float64)
    for j in range(n):
        e = np.zeros(n, dtype=np.float64)
        e[j] = 1.0
        out[:, j] = ndimage.map_coordinates(e, coords, order=order, mode="nearest")
    return out


def _apply(x: Tensor, matrix: Tensor, axis: int) -> Tensor:
    """``matrix (m, n)`` applied along spatial ``axis`` of ``(N, C, *S)``."""
    moved = torch.movedim(x, axis + 2, -1)
    return torch.movedim(moved @ matrix.T, -1, axis + 2)


@dataclass(frozen=True, eq=False)
class AxisResampler:
    """``(N, C, *S) -> (N, C, *S')``: per-axis matrices, then nnU-Net's clip (float64 inside, the input's dtype out).

    Attributes
    ----------
    matrices : one ``(S'_a, S_a)`` matrix per spatial axis, None where the axis is unchanged.
    separate : the axis resampled after the others (nnU-Net's anisotropic case; the clip then applies per slice
        along it, after the in-plane step), or None (all axes at once, the clip per channel).
    clip : clip to the input's range (skimage's ``resize`` with ``clip=True``; a no-op for order <= 1).
    """

    matrices: tuple[npt.NDArray[np.float64] | None, ...]
    separate: int | None
    clip: bool

    @property
    def shape_in(self) -> tuple[int | None, ...]:
        return tuple(None if m is None else int(m.shape[1]) for m in self.matrices)

    def __call__(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        y = x.double()
        spatial = tuple(range(2, y.ndim))
        first = [a for a in range(len(self.matrices)) if a != self.separate]
        for a in first:
            m = self.matrices[a]
            if m is not None:
                y = _apply(y, torch.as_tensor(m, device=y.device), a)
        if self.clip:
            axes = tuple(2 + a for a in first) if self.separate is not None else spatial
            lo = torch.amin(x, dim=axes, keepdim=True).double()  # exact: no second float64 copy of the scan
            hi = torch.amax(x, dim=axes, keepdim=True).double()
            y = torch.minimum(torch.maximum(y, lo), hi)
        if self.separate is not None and self.matrices[self.separate] is not None:
            m = self.matrices[self.separate]
            assert m is not None
            y = _apply(y, torch.as_tensor(m, device=y.device), self.separate)
        return y.to(dtype)


def nnunet_resampler(shape: Sequence[int], new_shape: Sequence[int], current_spacing: Sequence[float],
                     new_spacing: Sequence[float], *, order: int = 3, order_z: int = 0,
                     force_separate_z: bool | None = None, threshold: float = ANISO_THRESHOLD) -> AxisResampler:
    """nnU-Net's ``resample_data_or_seg_to_shape(data, new_shape, current_spacing, new_spacing, order=order,
    order_z=order_z, force_separate_z=force_separate_z)`` for image data (not segmentations), as an
    :class:`AxisResampler`.

    Examples
    --------
    >>> r = nnunet_resampler((10, 12, 12), (20, 12, 12), (2.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    >>> r(torch.rand(1, 1, 10, 12, 12)).shape
    torch.Size([1, 1, 20, 12, 12])
    """
    shape, new_shape = tuple(int(s) for s in shape), tuple(int(s) for s in new_shape)
    if shape == new_shape:  # nnU-Net returns the data unchanged (no clip)
        return AxisResampler(tuple(None for _ in shape), None, False)
    axis = separate_z_axis(force_separate_z, current_spacing, new_spacing, threshold)
    matrices: list[npt.NDArray[np.float64] | None] = []
    for a, (n, m) in enumerate(zip(shape, new_shape, strict=True)):
        if a == axis:
            matrices.append(None if n == m else _map_matrix(n, m, order_z))
        else:
            # skimage resizes every in-plane axis (a factor 1 is the identity)
            matrices.append(None if n == m else _zoom_matrix(n, m, order))
    return AxisResampler(tuple(matrices), axis, order > 1)
