"""Voxel geometry of a scan: spacing, origin and direction, in numpy axis order.

A :class:`Geometry` describes where the voxels of an array lie in world space (millimetres). Everything is
in **numpy axis order**: ``(z, y, x)`` for volumes and ``(y, x)`` for images, for the array indices *and*
for the world coordinates. The readers of this package return RAS+ world coordinates (x to the patient's
right, y anterior, z superior) written in that reversed order, so a volume's world axes are ``(S, A, R)``.

The voxel with index ``i`` (a length-``n`` vector) lies at::

    world = origin + direction @ (spacing * i)

so ``direction`` holds one unit column per array axis. ``direction=None`` means the identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Geometry"]

# Columns of a direction matrix must have unit length up to this tolerance.
_UNIT_TOL = 1e-3
# Below this, a direction matrix read from an affine is taken to be the identity.
_IDENTITY_TOL = 1e-10


def _as_float_tuple(values: Iterable[Any], name: str) -> tuple[float, ...]:
    """Convert a 1-D sequence of numbers to a tuple of Python floats, or raise ValueError."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Geometry {name} must be a sequence of numbers, got {values!r}.") from exc
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"Geometry {name} must be a non-empty 1-D sequence, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"Geometry {name} must be finite, got {tuple(array.tolist())}.")
    return tuple(float(v) for v in array)


def _as_direction(values: Any, n: int) -> tuple[tuple[float, ...], ...] | None:
    """Validate an ``(n, n)`` direction-cosine matrix; the exact identity becomes ``None``."""
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Geometry direction must be an {n} x {n} matrix of numbers.") from exc
    if matrix.shape != (n, n):
        raise ValueError(f"Geometry direction must be {n} x {n} to match {n} spacing values, got shape {matrix.shape}.")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("Geometry direction must be finite.")
    norms = np.linalg.norm(matrix, axis=0)
    if np.any(np.abs(norms - 1.0) > _UNIT_TOL):
        raise ValueError(
            "Geometry direction columns must be unit vectors (the voxel size belongs in spacing), "
            f"got column lengths {tuple(np.round(norms, 6).tolist())}."
        )
    if abs(np.linalg.det(matrix)) < 1e-6:
        raise ValueError("Geometry direction is singular: its columns must span the world space.")
    if np.array_equal(matrix, np.eye(n)):
        return None
    return tuple(tuple(float(v) for v in row) for row in matrix)


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of an array lie in world space.

    Parameters
    ----------
    spacing : tuple of float, length n
        Voxel size along each array axis in mm, numpy order: ``(z, y, x)`` or ``(y, x)``. Positive.
    origin : tuple of float, length n
        World position (mm) of the centre of voxel index ``(0, ..., 0)``, in the same axis order.
    direction : tuple of tuple of float, shape (n, n), optional
        Direction cosines: column ``j`` is the world unit vector along array axis ``j``. ``None`` (the
        default) means the identity; an exact identity given here is stored as ``None``.

    Notes
    -----
    World coordinates follow the array axis order, so ``Geometry.affine()`` maps ``(z, y, x)`` indices to
    ``(z, y, x)``-ordered world coordinates. The readers of :mod:`napari_attribution.io` use RAS+ world
    coordinates (NIfTI's convention; DICOM's LPS is converted), i.e. world axes ``(S, A, R)`` for volumes.

    Examples
    --------
    >>> g = Geometry(spacing=(2.0, 0.5, 0.5), origin=(0.0, 10.0, -5.0))
    >>> g.ndim
    3
    >>> g.affine()[:3, 3].tolist()
    [0.0, 10.0, -5.0]
    >>> Geometry.from_affine(g.affine()) == g
    True
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        spacing = _as_float_tuple(self.spacing, "spacing")
        origin = _as_float_tuple(self.origin, "origin")
        if len(origin) != len(spacing):
            raise ValueError(
                f"Geometry origin has {len(origin)} values but spacing has {len(spacing)}; "
                "give one value per array axis, in numpy order (z, y, x)."
            )
        if any(s <= 0.0 for s in spacing):
            raise ValueError(f"Geometry spacing must be positive (mm per voxel), got {spacing}.")
        direction = None if self.direction is None else _as_direction(self.direction, len(spacing))
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # ------------------------------------------------------------------ properties
    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 for images, 3 for volumes)."""
        return len(self.spacing)

    @property
    def direction_matrix(self) -> npt.NDArray[np.float64]:
        """The direction cosines as an ``(n, n)`` array (the identity when ``direction`` is None)."""
        if self.direction is None:
            return np.eye(self.ndim)
        return np.asarray(self.direction, dtype=np.float64)

    @property
    def is_axis_aligned(self) -> bool:
        """True when the direction is a signed permutation (no oblique rotation)."""
        matrix = np.abs(self.direction_matrix)
        return bool(np.all((matrix < 1e-6) | (np.abs(matrix - 1.0) < 1e-6)))

    # ------------------------------------------------------------------ conversions
    def affine(self) -> npt.NDArray[np.float64]:
        """Homogeneous voxel-index -> world matrix.

        Returns
        -------
        numpy.ndarray, shape (n + 1, n + 1), float64
            ``[[direction @ diag(spacing), origin], [0, ..., 0, 1]]``; indices and world coordinates are
            both in numpy axis order (``(z, y, x)``).
        """
        n = self.ndim
        matrix = np.eye(n + 1)
        matrix[:n, :n] = self.direction_matrix * np.asarray(self.spacing)[np.newaxis, :]
        matrix[:n, n] = self.origin
        return matrix

    def index_to_world(self, index: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """World coordinates (mm) of voxel indices.

        Parameters
        ----------
        index : array_like, shape (..., n)
            Voxel indices in numpy axis order; fractional indices are allowed.

        Returns
        -------
        numpy.ndarray, shape (..., n)
            World coordinates in the same axis order.
        """
        points = np.asarray(index, dtype=np.float64)
        if points.shape[-1:] != (self.ndim,):
            raise ValueError(f"index must have a last axis of length {self.ndim}, got shape {points.shape}.")
        matrix = self.affine()
        return points @ matrix[: self.ndim, : self.ndim].T + matrix[: self.ndim, self.ndim]

    def to_napari(self) -> dict[str, Any]:
        """Keyword arguments that place a napari layer at this geometry.

        Returns
        -------
        dict
            Always ``"scale"`` (the spacing) and ``"translate"``. When the direction is the identity,
            ``"translate"`` is the origin and nothing else is added. When it is a proper rotation
            (determinant +1), ``"rotate"`` holds the ``(n, n)`` matrix and ``"translate"`` the origin; napari
            then maps ``world = rotate @ (scale * index) + translate``. Otherwise (a flip or a shear)
            ``"translate"`` is zeros and ``"affine"`` holds the ``(n + 1, n + 1)`` matrix
            ``[[direction, origin], [0, 1]]``, which napari applies after scale:
            ``world = affine @ (scale * index)``. All values are plain lists of floats.
        """
        kwargs: dict[str, Any] = {"scale": list(self.spacing)}
        matrix = self.direction_matrix
        if self.direction is None:
            kwargs["translate"] = list(self.origin)
            return kwargs
        orthonormal = np.allclose(matrix.T @ matrix, np.eye(self.ndim), atol=1e-6)
        if orthonormal and np.linalg.det(matrix) > 0:
            kwargs["translate"] = list(self.origin)
            kwargs["rotate"] = matrix.tolist()
            return kwargs
        outer = np.eye(self.ndim + 1)
        outer[: self.ndim, : self.ndim] = matrix
        outer[: self.ndim, self.ndim] = self.origin
        kwargs["translate"] = [0.0] * self.ndim
        kwargs["affine"] = outer.tolist()
        return kwargs

    @classmethod
    def from_affine(cls, affine: npt.ArrayLike) -> Geometry:
        """Build a geometry from a homogeneous voxel-index -> world matrix (inverse of :meth:`affine`).

        Parameters
        ----------
        affine : array_like, shape (n + 1, n + 1)
            Index -> world matrix with indices and world coordinates in numpy axis order. The spacing is
            the length of each column of the linear part; the direction its normalised columns.

        Returns
        -------
        Geometry
            ``direction`` is None when the normalised columns equal the identity within 1e-10.
        """
        try:
            matrix = np.asarray(affine, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError("affine must be a square matrix of numbers.") from exc
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
            raise ValueError(f"affine must be an (n + 1) x (n + 1) matrix, got shape {matrix.shape}.")
        if not np.all(np.isfinite(matrix)):
            raise ValueError("affine must be finite.")
        n = matrix.shape[0] - 1
        bottom = np.zeros(n + 1)
        bottom[n] = 1.0
        if not np.allclose(matrix[n], bottom, atol=1e-8):
            raise ValueError(f"affine's last row must be {bottom.tolist()}, got {matrix[n].tolist()}.")
        linear = matrix[:n, :n]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing == 0.0):
            raise ValueError("affine has a zero column: every array axis needs a non-zero voxel size.")
        direction = linear / spacing[np.newaxis, :]
        if np.allclose(direction, np.eye(n), rtol=0.0, atol=_IDENTITY_TOL):
            return cls(spacing=tuple(spacing), origin=tuple(matrix[:n, n]))
        return cls(spacing=tuple(spacing), origin=tuple(matrix[:n, n]), direction=direction.tolist())

    def slice(self, axis: int = 0, index: float = 0.0) -> Geometry:
        """Geometry of one slice: the array axis ``axis`` is dropped.

        Parameters
        ----------
        axis : int
            Array axis that is indexed away (0 = z for a ``(z, y, x)`` volume; negative values count from
            the end).
        index : float
            Slice index along ``axis``; it moves the origin to that slice.

        Returns
        -------
        Geometry
            ``ndim - 1`` axes. The world axis most aligned with ``axis`` is dropped too. This is exact when
            the direction is axis-aligned (a signed permutation); for an oblique direction the in-plane
            directions are projected onto the remaining world axes and renormalised, which is an
            approximation (keep the full geometry for writing back).
        """
        n = self.ndim
        if n < 2:
            raise ValueError("Cannot slice a 1-D geometry.")
        if not -n <= axis < n:
            raise ValueError(f"axis {axis} is out of range for a {n}-D geometry.")
        axis %= n
        matrix = self.direction_matrix
        origin = np.asarray(self.origin) + matrix[:, axis] * self.spacing[axis] * float(index)
        world_axis = int(np.argmax(np.abs(matrix[:, axis])))
        keep_array = [j for j in range(n) if j != axis]
        keep_world = [i for i in range(n) if i != world_axis]
        sub = matrix[np.ix_(keep_world, keep_array)]
        norms = np.linalg.norm(sub, axis=0)
        if np.any(norms < 1e-6) or abs(np.linalg.det(sub)) < 1e-6:
            raise ValueError(f"Cannot drop axis {axis}: the remaining in-plane directions are degenerate.")
        sub = sub / norms[np.newaxis, :]
        spacing = tuple(self.spacing[j] for j in keep_array)
        return Geometry(spacing=spacing, origin=tuple(origin[keep_world]), direction=sub.tolist())

    def with_spacing(self, spacing: Sequence[float]) -> Geometry:
        """A copy with another spacing (same origin and direction), e.g. after resampling."""
        return Geometry(spacing=tuple(spacing), origin=self.origin, direction=self.direction)
