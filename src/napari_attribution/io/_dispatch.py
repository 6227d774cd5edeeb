"""``read_image``: pick the reader from the path's extension or content."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy.typing as npt

from .._errors import ReaderError
from ._dicom import is_dicom_file, read_dicom
from ._geometry import Geometry
from ._limits import require_regular_file
from ._nifti import is_nifti_path, read_nifti

__all__ = ["SUPPORTED_FORMATS", "read_image"]

#: Human-readable list of what :func:`read_image` accepts.
SUPPORTED_FORMATS = "NIfTI (.nii, .nii.gz), a DICOM file (.dcm) or a folder holding a DICOM series"

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _sniff(path: Path) -> str | None:
    """'nifti', 'dicom' or None, from the first bytes of the file."""
    if is_dicom_file(path):
        return "dicom"
    try:
        with open(path, "rb") as handle:
            head = handle.read(544)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as handle:
                head = handle.read(544)
    except (OSError, EOFError, zlib.error):  # unreadable, or a damaged gzip stream
        return None
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00"):
        return "nifti"
    return None


def read_image(path: str | os.PathLike[str], **options: Any) -> tuple[npt.NDArray[Any], Geometry, dict[str, Any]]:
    """Read a scan, choosing the reader from the extension (or, failing that, the content).

    Parameters
    ----------
    path : str or path-like
        A ``.nii`` / ``.nii.gz`` file, a DICOM file (``.dcm``, or any name with the DICOM preamble), or a
        folder holding a DICOM series.
    **options
        Passed to the reader: ``volume=`` / ``canonical=`` for NIfTI, ``series=`` for DICOM.

    Returns
    -------
    data : numpy.ndarray
        ``(z, y, x)`` or ``(y, x)`` (``(c, z, y, x)`` with ``metadata["channel_axis"] == 0``).
    geometry : Geometry
        RAS+ world in ``(z, y, x)`` order.
    metadata : dict
        See :func:`read_nifti` and :func:`read_dicom`; ``metadata["format"]`` names the format.

    Raises
    ------
    ReaderError
        Missing path, unsupported format, or a file that cannot be read; a named pipe, socket or device (which
        would block the read forever); the message lists the formats supported.
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom(path, **options)
    if not path.exists():
        raise ReaderError(f"No such file or folder: '{path}'. Supported: {SUPPORTED_FORMATS}.")
    require_regular_file(path)
    if is_nifti_path(path):
        return read_nifti(path, **options)
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return read_dicom(path, **options)
    kind = _sniff(path)
    if kind == "dicom":
        return read_dicom(path, **options)
    if kind == "nifti":
        return read_nifti(path, **options)
    raise ReaderError(f"Cannot read '{path.name}': unsupported or unrecognised format. Supported: {SUPPORTED_FORMATS}.")
