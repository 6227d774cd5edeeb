"""NIfTI reader and writer (nibabel, imported lazily).

Arrays are returned and taken in numpy order ``(z, y, x)`` (``(t, z, y, x)`` for 4-D files); nibabel's
arrays are ``(x, y, z[, t])``. World coordinates are RAS+ millimetres written in ``(z, y, x)`` order, so
``Geometry.affine()`` equals the file's affine with index and world axes reversed.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from .._errors import ReaderError
from ._deps import import_optional
from ._geometry import Geometry
from ._limits import check_memory, format_bytes, gzip_size_up_to, require_regular_file
from ._orientation import geometry_from_xyz_affine, xyz_affine_from_geometry
from ._warnings import ReaderWarning

__all__ = ["is_nifti_path", "read_nifti", "write_nifti"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Spatial units that are already millimetres (or unspecified, which tools read as mm).
_MM_UNITS = ("mm", "unknown")


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


def _nibabel() -> Any:
    return import_optional("nibabel", "nibabel", "read and write NIfTI files")


def _load_image(path: Path, stack: contextlib.ExitStack) -> Any:
    """Open a NIfTI-1/NIfTI-2 image with nibabel, header only (the voxels stay on disk), whatever the file name.

    ``stack`` closes the file handle opened for a file sniffed as NIfTI under another name (nibabel reads its
    voxels through that handle later). Raises ReaderError for anything that is not a single-file NIfTI.
    """
    nib = _nibabel()
    try:
        if is_nifti_path(path):
            image = nib.load(str(path))
        else:  # content sniffed as NIfTI but named otherwise: nibabel picks the class from the name
            image = _from_handle(nib, path, stack)
    except ReaderError:
        raise
    except Exception as exc:  # nibabel raises many types for broken headers / truncated gzip streams
        raise ReaderError(f"Cannot read '{path.name}' as NIfTI: {exc}. The file may be corrupt or truncated.") from exc
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ReaderError(f"'{path.name}' is a {type(image).__name__}, not a single-file NIfTI image (.nii / .nii.gz).")
    return image


def _from_handle(nib: Any, path: Path, stack: contextlib.ExitStack) -> Any:
    """A lazily read NIfTI-1 or NIfTI-2 image from an open (gzip-decompressing when needed) file handle."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    handle: Any = stack.enter_context(gzip.open(path, "rb") if compressed else open(path, "rb"))
    head = handle.read(544)
    handle.seek(0)
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        klass = nib.Nifti1Image
    elif len(head) >= 540 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        klass = nib.Nifti2Image
    else:
        raise ReaderError("The file has no NIfTI magic string ('n+1' / 'n+2'); it is not a NIfTI image.")
    holder = nib.fileholders.FileHolder(fileobj=handle)
    return klass.from_file_map({"header": holder, "image": holder})


@dataclass(frozen=True)
class _Selection:
    """What is read from the file's ``(x, y, z[, t, ...])`` array: trailing empty axes dropped, one volume or all."""

    index: tuple[int | slice, ...]  # into nibabel's array proxy
    ndim: int  # of the array read
    n_volumes: int | None  # for a 4-D file, its number of volumes
    volume: int | None  # the volume picked (non-negative)


def _select(shape: tuple[int, ...], volume: int | None, name: str) -> _Selection:
    """The index that drops trailing length-1 axes beyond the third (and the empty time axis of 5-D vector
    images) and picks ``volume`` of a 4-D file; indexing nibabel's array proxy with it reads that part alone."""
    index: list[int | slice] = [slice(None)] * len(shape)
    kept = list(range(len(shape)))
    while len(kept) > 3 and shape[kept[-1]] == 1:
        index[kept.pop()] = 0
    if len(kept) == 5 and shape[kept[3]] == 1:  # NIfTI vector images are (x, y, z, 1, c)
        index[kept.pop(3)] = 0
    if not 2 <= len(kept) <= 4:
        squeezed = tuple(shape[i] for i in kept)
        raise ReaderError(
            f"'{name}' has {len(kept)} image dimensions {squeezed}; only 2-D, 3-D and 4-D NIfTI are supported."
        )
    if len(kept) < 4:
        if volume is not None and volume not in (0, -1):
            raise ReaderError(f"volume={volume} was asked for, but '{name}' holds a single volume.")
        return _Selection(tuple(index), len(kept), None, None)
    count = shape[kept[3]]
    if volume is None:
        return _Selection(tuple(index), 4, count, None)
    if not -count <= volume < count:
        raise ReaderError(f"volume={volume} is out of range: '{name}' has {count} volumes.")
    index[kept[3]] = volume % count
    return _Selection(tuple(index), 3, count, volume % count)


def _check_declared_size(image: Any, path: Path, selection: _Selection | None) -> None:
    """Check the voxel data the header declares against the file and the free memory, before reading any.

    A truncated or hostile file (a 66-byte ``.nii.gz`` claiming 2048 x 2048 x 1024 floats) is refused here,
    instead of after nibabel has allocated and zero-filled the whole declared array. ``selection`` is the part
    that will be read (None: all of it).
    """
    header = image.header
    try:
        shape = tuple(int(s) for s in header.get_data_shape())
        itemsize = int(np.dtype(header.get_data_dtype()).itemsize)
        offset = int(header.get_data_offset())
        scaled = header.get_slope_inter() != (None, None)  # nibabel then returns float64
    except Exception as exc:  # NaN / out-of-range header fields
        raise ReaderError(f"'{path.name}' has a corrupt NIfTI header: {exc}.") from exc
    if not shape or min(shape) <= 0:
        raise ReaderError(f"'{path.name}' declares an image of shape {shape}, with no voxels; the header is corrupt.")
    count = math.prod(shape)
    end = max(offset, 0) + count * itemsize
    if selection is not None:  # nibabel reads only the indexed part
        count = math.prod(n for n, i in zip(shape, selection.index, strict=True) if isinstance(i, slice))
    check_memory(count * (8 if scaled else itemsize), f"'{path.name}'", f"voxel data {shape}", path.stat().st_size)
    compressed = _is_gzip(path)
    held = gzip_size_up_to(path, end) if compressed else path.stat().st_size
    if held < end:
        raise ReaderError(
            f"'{path.name}' is truncated: its header declares {shape} voxels of {itemsize} byte(s), "
            f"{format_bytes(end)} with the header, but the file holds only {format_bytes(held)}"
            f"{' once decompressed' if compressed else ''}. The file is incomplete or corrupt; copy or export it "
            "again."
        )


def _read_voxels(image: Any, path: Path, selection: _Selection) -> npt.NDArray[Any]:
    """The selected voxels, scaled as the file says, as an in-memory array (nibabel's ``(x, y, z[, t])``)."""
    try:
        data = np.asarray(image.dataobj[selection.index])
    except MemoryError as exc:
        raise ReaderError(f"Not enough memory to read the voxel data of '{path.name}'.") from exc
    except Exception as exc:  # truncated data, broken gzip stream, impossible dtype
        raise ReaderError(
            f"Cannot read the voxel data of '{path.name}': {exc}. The file may be truncated or corrupt."
        ) from exc
    if data.dtype.kind not in "biufc":
        raise ReaderError(
            f"'{path.name}' holds voxels of type {data.dtype}, which is not a number per voxel; it cannot be used."
        )
    stored = np.dtype(image.header.get_data_dtype())
    if data.dtype.kind == "f" and stored.kind in "biu" and data.size:
        # integers scaled by scl_slope / scl_inter beyond float32 would turn into inf in any float32 pipeline
        # (the models, the heatmaps): such a scaling is a corrupt header, as for DICOM's RescaleSlope
        if float(np.max(np.abs(data))) > float(np.finfo(np.float32).max):
            slope, inter = image.header.get_slope_inter()
            raise ReaderError(
                f"'{path.name}': the file's scaling (scl_slope {slope or 1.0:.4g}, scl_inter {inter or 0.0:.4g}) turns "
                "its integer voxels into numbers too large to hold (beyond float32); the header is corrupt."
            )
    return data


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _header_metadata(image: Any) -> dict[str, Any]:
    """Header essentials that identify no one: units, codes, zooms, scaling, intent."""
    header = image.header
    spatial_unit, time_unit = header.get_xyzt_units()
    slope, inter = header.get_slope_inter()
    return {
        "format": "nifti2" if type(image).__name__ == "Nifti2Image" else "nifti1",
        "original_affine": np.asarray(image.affine, dtype=np.float64).tolist(),
        "original_shape": [int(s) for s in image.shape],
        "file_dtype": str(np.dtype(header.get_data_dtype())),
        "zooms": [float(z) for z in header.get_zooms()],
        "spatial_units": str(spatial_unit),
        "time_units": str(time_unit),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "scl_slope": None if slope is None else float(slope),
        "scl_inter": None if inter is None else float(inter),
        "intent": str(header.get_intent()[0]),
        "world": "RAS",
        "axis_order": "zyx",
        "warnings": [],
    }


def _metadata_or_error(image: Any, path: Path) -> dict[str, Any]:
    try:
        return _header_metadata(image)
    except Exception as exc:  # unknown unit / intent codes, non-numeric header fields
        raise ReaderError(f"'{path.name}' has a corrupt NIfTI header: {exc}.") from exc


def read_nifti(
    path: str | os.PathLike[str], volume: int | None = None, *, canonical: bool = False
) -> tuple[npt.NDArray[Any], Geometry, dict[str, Any]]:
    """Read a NIfTI-1 or NIfTI-2 file (``.nii`` or ``.nii.gz``).

    Parameters
    ----------
    path : str or path-like
        The file.
    volume : int, optional
        For a 4-D file, the volume (last file axis) to return; negative values count from the end.
    canonical : bool
        Reorient to the closest RAS+ orientation first (``nibabel.as_closest_canonical``): the array axes
        then run R, A, S as nearly as possible. Off by default: the file's voxel order is kept.

    Returns
    -------
    data : numpy.ndarray
        ``(z, y, x)`` for a volume, ``(y, x)`` for a 2-D file, ``(t, z, y, x)`` for a 4-D file read whole.
        The file's scaling (``scl_slope`` / ``scl_inter``) is applied; the dtype is the file's otherwise.
    geometry : Geometry
        Spatial geometry (3-D, or 2-D for 2-D files) in ``(z, y, x)``-ordered RAS+ millimetres:
        ``geometry.affine()`` maps ``(z, y, x)`` indices to ``(S, A, R)`` world coordinates.
    metadata : dict
        ``"original_affine"`` (the file's 4 x 4 affine as nested lists, for :func:`write_nifti`; after
        ``canonical=True`` the reoriented image's affine, which matches the returned array), header
        essentials (units, zooms, qform/sform codes, intent), ``"channel_axis": 0`` for a 4-D array, and
        ``"volume"`` when one volume was picked. No text fields of the header are kept.

    Raises
    ------
    ReaderError
        Missing, corrupt, truncated or unsupported file, or a bad ``volume`` index.

    Examples
    --------
    >>> data, geometry, meta = read_nifti("t1.nii.gz")  # doctest: +SKIP
    >>> data.shape, geometry.spacing  # doctest: +SKIP
    ((176, 256, 256), (1.0, 1.0, 1.0))
    """
    path = Path(path)
    require_regular_file(path)  # a named pipe would block the read forever
    with contextlib.ExitStack() as stack:
        image = _load_image(path, stack)
        selection = _select(tuple(int(s) for s in image.shape), volume, path.name)
        _check_declared_size(image, path, None if canonical else selection)
        if canonical:
            try:
                image = _nibabel().as_closest_canonical(image)
            except Exception as exc:  # reads the voxels, and needs a usable affine
                raise ReaderError(f"Cannot reorient '{path.name}': {exc}. The file may be corrupt.") from exc
        data = _read_voxels(image, path, selection)
        metadata = _metadata_or_error(image, path)  # after reorientation: original_affine matches the array
    metadata["canonical"] = canonical
    if selection.volume is not None:
        metadata["volume"] = selection.volume
    if data.ndim == 4:
        metadata["channel_axis"] = 0
        metadata["n_volumes"] = int(data.shape[3])
    spatial_ndim = 2 if data.ndim == 2 else 3
    try:
        geometry = geometry_from_xyz_affine(image.affine, spatial_ndim)
    except ValueError as exc:
        raise ReaderError(f"'{path.name}' has an unusable affine: {exc}") from exc
    if metadata["spatial_units"] not in _MM_UNITS:
        message = (
            f"'{path.name}' declares spatial units of '{metadata['spatial_units']}', not mm; "
            "spacing and origin are given in those units."
        )
        warnings.warn(message, ReaderWarning, stacklevel=2)
        metadata["warnings"].append(message)
    return np.ascontiguousarray(np.transpose(data)), geometry, metadata


def _writable_array(data: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Cast to a dtype that NIfTI readers (ITK, Slicer, FSL) all accept."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    if data.dtype in (np.int64, np.uint64):
        info = np.iinfo(np.int32)
        if data.size == 0 or (data.min() >= info.min and data.max() <= info.max):
            return data.astype(np.int32)
        return data.astype(np.float64)
    if data.dtype.kind not in "iufc":
        raise ValueError(f"Cannot write an array of dtype {data.dtype} to NIfTI; give numbers or booleans.")
    return data


def _to_nibabel_order(data: npt.NDArray[Any], spatial_ndim: int) -> npt.NDArray[Any]:
    """``(z, y, x)`` / ``(y, x)``, with an optional leading channel axis -> nibabel's ``(x, y, z[, c])``."""
    has_channels = data.ndim == spatial_ndim + 1
    spatial = data[0] if has_channels else data
    if not has_channels:
        return np.transpose(spatial)
    moved = np.moveaxis(data, 0, -1)  # (*spatial, c)
    out = np.transpose(moved, tuple(range(spatial_ndim - 1, -1, -1)) + (spatial_ndim,))
    return out[:, :, np.newaxis, :] if spatial_ndim == 2 else out


def _choose_affine(geometry: Geometry | None, original_affine: npt.ArrayLike | None) -> npt.NDArray[np.float64]:
    """The 4 x 4 file affine: ``original_affine`` if given, else from ``geometry``, else the identity."""
    if original_affine is None:
        return np.eye(4) if geometry is None else xyz_affine_from_geometry(geometry)
    affine = np.asarray(original_affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"original_affine must be a finite 4 x 4 matrix, got shape {affine.shape}.")
    if geometry is not None and geometry.ndim == 3:
        from_geometry = xyz_affine_from_geometry(geometry)
        if not np.allclose(from_geometry, affine, rtol=0.0, atol=1e-3):
            warnings.warn(
                "write_nifti: the geometry differs from original_affine; original_affine is written.",
                ReaderWarning,
                stacklevel=3,
            )
    return affine


def _check_shape(data: npt.NDArray[Any], geometry: Geometry | None) -> int:
    """Validate the array's dimensions and return the number of spatial axes."""
    if geometry is not None:
        if data.ndim not in (geometry.ndim, geometry.ndim + 1):
            raise ValueError(
                f"data has shape {data.shape} but the geometry is {geometry.ndim}-D; give "
                f"{geometry.ndim} spatial axes, optionally after one leading channel axis."
            )
        return geometry.ndim
    if data.ndim not in (2, 3, 4):
        raise ValueError(f"data must be (y, x), (z, y, x) or (c, z, y, x); got shape {data.shape}.")
    return 3 if data.ndim == 4 else data.ndim


def _nifti_image(nib: Any, array: npt.NDArray[Any], affine: npt.NDArray[np.float64]) -> Any:
    """A NIfTI-1 image whose sform holds ``affine`` exactly and whose qform holds it when it has no shear."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code=1)
    linear = affine[:3, :3]
    gram = linear.T @ linear
    if np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6 * float(np.max(np.abs(gram)))):
        image.set_qform(affine, code=1)
    else:  # the qform cannot hold shears; readers then use the sform
        image.set_qform(None, code=0)
    return image


def write_nifti(
    path: str | os.PathLike[str],
    data: npt.ArrayLike,
    geometry: Geometry | None = None,
    *,
    original_affine: npt.ArrayLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a ``(z, y, x)`` array to NIfTI so that it re-opens aligned with its source scan.

    Parameters
    ----------
    path : str or path-like
        Output file, ending in ``.nii`` or ``.nii.gz`` (compressed).
    data : array_like
        ``(z, y, x)`` or ``(y, x)``, optionally with a leading channel axis ``(c, z, y, x)`` (written as
        the 4th NIfTI dimension). Booleans are written as uint8, int64 as int32 when the values fit.
    geometry : Geometry, optional
        Geometry of ``data`` in ``(z, y, x)``-ordered RAS+ mm (as returned by the readers).
    original_affine : array_like, shape (4, 4), optional
        The source file's affine (``metadata["original_affine"]`` from :func:`read_nifti` or
        :func:`~napari_attribution.io.read_dicom`); when given it is written unchanged and wins over
        ``geometry``, so the result lines up with the source in 3D Slicer, ITK-SNAP or FSLeyes. Without
        either, the identity (1 mm voxels at the origin) is written.
    overwrite : bool
        Replace an existing file. The file is written to a hidden temporary name in the same folder, flushed to
        the disk, then put in place: a failed write (a full disk) never leaves a partial file behind, and with
        ``overwrite=False`` the name is taken exclusively, so of several writers racing for one path exactly one
        succeeds and the others get ``FileExistsError``.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    FileExistsError
        ``path`` exists (or another writer created it first) and ``overwrite`` is False; it is kept.
    ValueError
        Bad file name, shape, dtype or affine.
    napari_attribution._atomic.OutputError
        The disk refused the file (no space, quota, read-only, permission); an ``OSError`` with its ``errno``.

    Notes
    -----
    NIfTI-1 stores the affine in float32: a round trip through the file is exact for an affine that was
    read from a NIfTI file and to about 1e-6 relative otherwise.
    """
    from .._atomic import atomic_write

    path = Path(path)
    write = nifti_writer(path, data, geometry, original_affine=original_affine)
    if path.exists() and not overwrite:  # early and clear; the exclusive link below settles races
        raise FileExistsError(f"'{path}' already exists; pass overwrite=True to replace it.")
    atomic_write(path, write, overwrite=overwrite)
    return path


def nifti_writer(
    path: str | os.PathLike[str],
    data: npt.ArrayLike,
    geometry: Geometry | None = None,
    *,
    original_affine: npt.ArrayLike | None = None,
) -> Callable[[IO[bytes]], None]:
    """Check ``data`` and build its NIfTI image now; return ``write(fh)`` that streams the file into a binary file
    object (gzip-compressed when ``path`` ends in ``.nii.gz``), for :mod:`napari_attribution._atomic` groups
    (a heatmap and its sidecar land together). Arguments as :func:`write_nifti`; raises its ``ValueError`` s."""
    nib = _nibabel()
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"'{path.name}' is not a NIfTI file name: use the extension .nii or .nii.gz.")
    array = np.asarray(data)
    spatial_ndim = _check_shape(array, geometry)
    affine = _choose_affine(geometry, original_affine)
    image = _nifti_image(nib, _writable_array(_to_nibabel_order(array, spatial_ndim)), affine)
    compressed = path.name.lower().endswith(".nii.gz")

    def write(fh: IO[bytes]) -> None:
        if not compressed:
            image.to_stream(fh)
            return
        # as nibabel's own .nii.gz: compression level 1, no time stamp or name in the gzip header
        with gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=fh, mtime=0) as gz:
            image.to_stream(gz)

    return write
