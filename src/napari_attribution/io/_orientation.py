"""Conversions between file conventions and the package's (z, y, x)-ordered RAS world.

NIfTI affines map indices in nibabel's array order ``(x, y, z)`` to RAS world
coordinates ``(x, y, z)``. DICOM positions are LPS. The package works in numpy order: indices
``(z, y, x)`` and world ``(S, A, R)``. These helpers convert between them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._geometry import Geometry

__all__ = ["LPS_TO_RAS", "geometry_from_xyz_affine", "reverse_affine_axes", "xyz_affine_from_geometry"]

#: Homogeneous matrix that flips the first two world axes: LPS <-> RAS (its own inverse).
LPS_TO_RAS: npt.NDArray[np.float64] = np.diag([-1.0, -1.0, 1.0, 1.0])


def reverse_affine_axes(affine: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Reverse the order of both index and world axes of a homogeneous affine.

    Parameters
    ----------
    affine : array_like, shape (n + 1, n + 1)
        Maps indices ``(a_0, ..., a_{n-1})`` to world ``(w_0, ..., w_{n-1})``.

    Returns
    -------
    numpy.ndarray, shape (n + 1, n + 1)
        Maps ``(a_{n-1}, ..., a_0)`` to ``(w_{n-1}, ..., w_0)``; applying it twice gives the input back.
    """
    matrix = np.asarray(affine, dtype=np.float64)
    n = matrix.shape[0] - 1
    order = list(range(n - 1, -1, -1)) + [n]
    reordered: npt.NDArray[np.float64] = matrix[np.ix_(order, order)].copy()
    return reordered


def geometry_from_xyz_affine(affine: npt.ArrayLike, spatial_ndim: int = 3) -> Geometry:
    """Geometry of a ``(z, y, x)`` (or ``(y, x)``) array from a 4 x 4 NIfTI-style affine.

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        Maps ``(x, y, z)`` indices (nibabel's array order) to RAS world ``(x, y, z)``.
    spatial_ndim : {2, 3}
        3 for a volume; 2 for an image whose single slice is index ``z = 0`` (the result is the slice
        geometry, see :meth:`Geometry.slice`).

    Returns
    -------
    Geometry
        World in ``(z, y, x)`` order, i.e. ``(S, A, R)``.
    """
    volume = Geometry.from_affine(reverse_affine_axes(affine))
    if spatial_ndim == 3:
        return volume
    if spatial_ndim == 2:
        return volume.slice(axis=0)
    raise ValueError(f"spatial_ndim must be 2 or 3, got {spatial_ndim}.")


def xyz_affine_from_geometry(geometry: Geometry) -> npt.NDArray[np.float64]:
    """The 4 x 4 NIfTI-style affine (``(x, y, z)`` indices -> RAS ``(x, y, z)``) of a geometry.

    Parameters
    ----------
    geometry : Geometry
        3-D (world ``(z, y, x)``) or 2-D (world ``(y, x)``; the image is put in the plane ``z = 0`` with a
        1 mm slice).

    Returns
    -------
    numpy.ndarray, shape (4, 4)
    """
    if geometry.ndim == 3:
        return reverse_affine_axes(geometry.affine())
    if geometry.ndim == 2:
        planar = reverse_affine_axes(geometry.affine())  # (x, y) -> (x, y)
        matrix = np.eye(4)
        matrix[:2, :2] = planar[:2, :2]
        matrix[:2, 3] = planar[:2, 2]
        return matrix
    raise ValueError(f"Only 2-D and 3-D geometries can be written to NIfTI, got {geometry.ndim}-D.")
