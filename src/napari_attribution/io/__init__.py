"""Reading and writing scans (NIfTI, DICOM) with their voxel geometry.

Arrays are in numpy axis order, ``(z, y, x)`` for volumes and ``(y, x)`` for images, and every reader
returns ``(data, geometry, metadata)``: :class:`Geometry` places the voxels in RAS+ millimetres (written in
the same ``(z, y, x)`` order), and ``metadata["original_affine"]`` keeps the file's affine for
:func:`write_nifti`. No Qt and no napari here; nibabel and pydicom are imported only by the functions that
need them, with an install hint when they are missing.

Examples
--------
>>> from napari_attribution.io import read_image, write_nifti
>>> data, geometry, meta = read_image("scan.nii.gz")  # doctest: +SKIP
>>> write_nifti("heatmap.nii.gz", heatmap, geometry, original_affine=meta["original_affine"])  # doctest: +SKIP
"""

from __future__ import annotations

from ._channels import stack_channels
from ._deps import MissingDependencyError
from ._dicom import read_dicom
from ._dispatch import SUPPORTED_FORMATS, read_image
from ._geometry import Geometry
from ._nifti import read_nifti, write_nifti
from ._warnings import ReaderWarning

__all__ = [
    "Geometry",
    "MissingDependencyError",
    "ReaderWarning",
    "SUPPORTED_FORMATS",
    "read_dicom",
    "read_image",
    "read_nifti",
    "stack_channels",
    "write_nifti",
]
