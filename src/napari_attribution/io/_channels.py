"""``stack_channels``: co-registered sequences (T1, T2, FLAIR, ...) as the channels of one image."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import ReaderError
from ._geometry import Geometry

__all__ = ["stack_channels"]


def _corner_distance(shape: tuple[int, ...], first: Geometry, other: Geometry) -> float:
    """Largest distance (mm) between the world positions of the grid's corner voxels under two geometries."""
    corners = np.asarray(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=np.float64)
    return float(np.max(np.linalg.norm(first.index_to_world(corners) - other.index_to_world(corners), axis=1)))


def stack_channels(
    items: Sequence[tuple[npt.ArrayLike, Geometry]], *, tolerance: float = 0.01
) -> tuple[npt.NDArray[Any], Geometry]:
    """Stack co-registered scans as the channels of one image.

    Parameters
    ----------
    items : sequence of (data, geometry)
        Each ``data`` is ``(z, y, x)`` or ``(y, x)`` with its :class:`Geometry`, e.g. the first two values
        returned by :func:`~napari_attribution.io.read_image` for each sequence, in channel order.
    tolerance : float
        How far the grids may disagree, as a fraction of the smallest voxel spacing: the corner voxels of
        every grid must lie within ``tolerance * min(spacing)`` mm of the first grid's.

    Returns
    -------
    data : numpy.ndarray
        ``(c, *spatial)``, ``c = len(items)``, with the common dtype of the inputs.
    geometry : Geometry
        The first item's geometry.

    Raises
    ------
    ReaderError
        No items, different shapes, or geometries that differ beyond the tolerance (resample first).
    """
    if not items:
        raise ReaderError("stack_channels needs at least one (data, geometry) pair.")
    arrays = [np.asarray(data) for data, _ in items]
    geometries = [geometry for _, geometry in items]
    reference_shape = arrays[0].shape
    reference = geometries[0]
    limit = tolerance * min(reference.spacing)
    for index, (array, geometry) in enumerate(zip(arrays, geometries, strict=True)):
        if not isinstance(geometry, Geometry):
            raise ReaderError(f"Channel {index}: expected a Geometry, got {type(geometry).__name__}.")
        if array.ndim != geometry.ndim:
            raise ReaderError(
                f"Channel {index}: data has shape {array.shape} but its geometry is {geometry.ndim}-D; "
                "give single-channel spatial arrays."
            )
        if array.shape != reference_shape:
            raise ReaderError(
                f"Channel {index} has shape {array.shape}, channel 0 has {reference_shape}: the sequences are "
                "not on the same grid. Resample them to a common grid first."
            )
        distance = _corner_distance(reference_shape, reference, geometry)
        if distance > limit:
            raise ReaderError(
                f"Channel {index} is not aligned with channel 0: its grid corners are up to {distance:.3g} mm "
                f"away (allowed {limit:.3g} mm). Register or resample the sequences to a common grid first."
            )
    return np.stack(arrays, axis=0), reference
