"""DICOM reader (pydicom, imported lazily): one file, or a folder holding a series.

World frame
-----------
DICOM patient coordinates are LPS. This reader converts them to **RAS+** (x to the patient's right, y
anterior, z superior), the NIfTI convention, so that the same scan read from DICOM and from NIfTI lines
up. As everywhere in this package, the array is in numpy order ``(z, y, x)`` = (slice, row, column) and the
world coordinates of :class:`Geometry` are written in the reversed order ``(S, A, R)``.

Slices are sorted by the projection of ImagePositionPatient on the slice normal (the cross product of the
row and column direction cosines of ImageOrientationPatient), not by InstanceNumber, and the slice spacing
is the step between those projections, not SliceThickness. Pixel values go through the modality LUT
(RescaleSlope / RescaleIntercept), so CT comes out in Hounsfield units.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .._errors import ReaderError
from ._deps import import_optional
from ._geometry import Geometry
from ._limits import available_memory, check_memory, deflate_size_up_to, format_bytes, is_regular_file
from ._orientation import LPS_TO_RAS, geometry_from_xyz_affine
from ._warnings import ReaderWarning

__all__ = ["is_dicom_file", "read_dicom"]

_T = TypeVar("_T")

# Two slices closer than this (mm along the normal) are taken to be at the same position.
_SAME_POSITION_MM = 1e-3
# A step larger than this many times the typical step means slices are missing.
_GAP_FACTOR = 1.5
# Steps that differ by more than this fraction of the typical step are reported as uneven.
_UNEVEN_FRACTION = 1e-2
# Orientation cosines that differ by less than this are the same orientation.
_ORIENTATION_TOL = 1e-4
# Larger positions or spacings (mm) are malformed values (NaN fails the comparison as well).
_LARGEST_MM = 1e9
_DECODER_HINT = (
    "Compressed DICOM needs a decoder: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)."
)
_DEFLATED = "1.2.840.10008.1.2.1.99"
# Coded values copied into the metadata only when they are DICOM defined terms: these attributes are coded
# strings, but a file can hold any text there (a patient's name included), and free text never leaves the reader.
_MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER "
    "KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT PX REG RESP RF RG RTDOSE "
    "RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA "
    "XAPROTOCOL XC".split()
)
_RESCALE_TYPES = frozenset("OD HU US MGML Z_EFF ED EDW HU_MOD PCT".split())
_PHOTOMETRIC = frozenset(
    "MONOCHROME1 MONOCHROME2 RGB HSV ARGB CMYK YBR_FULL YBR_FULL_422 YBR_PARTIAL_422 YBR_PARTIAL_420 YBR_ICT YBR_RCT "
    "XYB".split()
) | {"PALETTE COLOR"}


def _pydicom() -> Any:
    return import_optional("pydicom", "pydicom", "read DICOM files")


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """True when the file carries the DICOM Part 10 preamble (``DICM`` at byte 128).

    Only regular files are opened: a named pipe would block ``open()`` forever.
    """
    if not is_regular_file(path):
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- frames
@dataclass
class _Frame:
    """One 2-D image of the series: a single-frame file, or one frame of a multi-frame file."""

    dataset: Any
    name: str
    frame: int | None
    position: npt.NDArray[np.float64] | None
    orientation: npt.NDArray[np.float64] | None
    pixel_spacing: tuple[float, float] | None
    instance: int

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.dataset.Rows), int(self.dataset.Columns)


@dataclass
class _Notes:
    """Warnings collected while reading; emitted once at the end."""

    messages: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.messages.append(message)


def _floats(value: Any, count: int) -> npt.NDArray[np.float64] | None:
    """``count`` finite floats from a DICOM multi-value, or None when absent or malformed.

    Values beyond +-1e9 (a thousand kilometres, for positions and spacings in mm) count as malformed too: they
    would overflow the geometry's arithmetic.
    """
    if value is None:
        return None
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if array.shape != (count,) or not np.all(np.abs(array) <= _LARGEST_MM):
        return None
    return array


def _orientation(value: Any) -> npt.NDArray[np.float64] | None:
    """ImageOrientationPatient as 6 floats with both direction cosines normalised (files round them)."""
    cosines = _floats(value, 6)
    if cosines is None:
        return None
    row, col = cosines[:3], cosines[3:]
    row_length, col_length = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if row_length < 1e-6 or col_length < 1e-6:
        return None
    return np.concatenate([row / row_length, col / col_length])


def _first_item(dataset: Any, keyword: str) -> Any:
    """The first item of a sequence attribute, or None."""
    sequence = dataset.get(keyword)
    return sequence[0] if sequence else None


def _functional_value(dataset: Any, frame: int, macro: str, keyword: str) -> Any:
    """A value from an enhanced multi-frame functional group: per-frame first, then shared."""
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    groups = []
    if per_frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = _first_item(dataset, "SharedFunctionalGroupsSequence")
    if shared is not None:
        groups.append(shared)
    for group in groups:
        item = _first_item(group, macro)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def _pixel_spacing(dataset: Any, frame: int | None) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm: PixelSpacing, then ImagerPixelSpacing."""
    value = dataset.get("PixelSpacing")
    if value is None and frame is not None:
        value = _functional_value(dataset, frame, "PixelMeasuresSequence", "PixelSpacing")
    if value is None:
        value = dataset.get("ImagerPixelSpacing")
    spacing = _floats(value, 2)
    if spacing is None or np.any(spacing <= 0):
        return None
    return float(spacing[0]), float(spacing[1])


def _frame_count(dataset: Any) -> int:
    try:
        return max(int(dataset.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError, OverflowError):
        return 1


def _frames_of(dataset: Any, name: str) -> list[_Frame]:
    """Split a dataset into its 2-D frames with their position and orientation (LPS)."""
    instance = _int_or(dataset.get("InstanceNumber"), 0)
    count = _frame_count(dataset)
    if count == 1:
        return [
            _Frame(
                dataset,
                name,
                None,
                _floats(dataset.get("ImagePositionPatient"), 3),
                _orientation(dataset.get("ImageOrientationPatient")),
                _pixel_spacing(dataset, None),
                instance,
            )
        ]
    base_position = _floats(dataset.get("ImagePositionPatient"), 3)
    base_orientation = _orientation(dataset.get("ImageOrientationPatient"))
    offsets = _floats(dataset.get("GridFrameOffsetVector"), count)  # RT dose: offsets along the normal
    frames = []
    for index in range(count):
        orientation = _orientation(
            _functional_value(dataset, index, "PlaneOrientationSequence", "ImageOrientationPatient")
        )
        orientation = base_orientation if orientation is None else orientation
        position = _floats(_functional_value(dataset, index, "PlanePositionSequence", "ImagePositionPatient"), 3)
        if position is None and base_position is not None and orientation is not None and offsets is not None:
            position = base_position + float(offsets[index]) * _normal(orientation)
        frames.append(
            _Frame(
                dataset, name, index, position, orientation, _pixel_spacing(dataset, index), instance * count + index
            )
        )
    return frames


def _int_or(value: Any, default: _T) -> int | _T:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default


def _normal(orientation: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Unit slice normal ``cross(row, column)`` of a 6-value ImageOrientationPatient."""
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise ReaderError("ImageOrientationPatient has parallel row and column directions; the file is corrupt.")
    return normal / length


def _pixel_size_problem(dataset: Any) -> str | None:
    """Why the declared frames x rows x columns x samples x bits cannot be this file's pixel data, or None.

    Checked before anything is split into frames or decoded: a 39 KB file declaring NumberOfFrames=5e7 would
    otherwise make the reader build 50 million frame records, and a decoder allocate what the header claims.
    """
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        bits = int(dataset.get("BitsAllocated", 0) or 0)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return "lacks usable Rows / Columns / SamplesPerPixel / BitsAllocated attributes"
    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        bits = 32 if "FloatPixelData" in dataset else 64
    if min(rows, columns, samples) <= 0 or bits not in (1, 8, 16, 32, 64):
        return f"declares an impossible image: {rows} x {columns} pixels, {samples} sample(s) of {bits} bit(s)"
    frames = _frame_count(dataset)
    keyword = next(k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in dataset)
    held = len(dataset[keyword].value or b"")
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    declared = f"{frames} frame(s) of {rows} x {columns} pixels x {samples} sample(s) of {bits} bit(s)"
    if keyword == "PixelData" and _syntax_is(syntax, "is_encapsulated"):
        if frames * 8 > held:  # every compressed frame needs at least one 8-byte item
            return f"declares {declared} but its compressed pixel data ({format_bytes(held)}) cannot hold that many"
        return None
    pixels = frames * rows * columns * samples
    expected = math.ceil(pixels / 8) if bits == 1 else pixels * bits // 8
    if str(dataset.get("PhotometricInterpretation", "")) == "YBR_FULL_422":  # two samples' worth per pixel
        expected = expected // 3 * 2
    if held < expected:
        return (
            f"declares {declared}, {format_bytes(expected)} of pixel data, but holds only {format_bytes(held)}"
        )
    return None


def _syntax_is(syntax: Any, flag: str) -> bool:
    """``syntax.is_encapsulated`` / ``.is_compressed``; False for a UID that is no transfer syntax (pydicom raises)."""
    try:
        return bool(getattr(syntax, flag, False))
    except ValueError:
        return False


def _decoded_bytes(dataset: Any) -> int:
    """Bytes of the decoded pixel array of a dataset (after :func:`_pixel_size_problem` passed)."""
    bits = int(dataset.get("BitsAllocated", 8) or 8)
    if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
        bits = 32 if "FloatPixelData" in dataset else 64
    pixels = _frame_count(dataset) * int(dataset.Rows) * int(dataset.Columns)
    return pixels * int(dataset.get("SamplesPerPixel", 1) or 1) * max(bits // 8, 1)


def _deflated_offset(path: Path) -> int | None:
    """Where the deflated dataset starts, for a Part 10 file in Deflated Explicit VR Little Endian; else None.

    Walks the file meta group (always explicit VR little endian) by hand: pydicom inflates the whole dataset in
    one call, so its size has to be known before pydicom sees the file.
    """
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
    with open(path, "rb") as handle:
        if handle.read(132)[128:] != b"DICM":
            return None
        syntax = b""
        while True:
            start = handle.tell()
            head = handle.read(8)
            if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
                break
            element, vr = struct.unpack("<H", head[2:4])[0], head[4:6]
            if vr in long_vrs:
                extra = handle.read(4)
                if len(extra) < 4:
                    return None
                length = struct.unpack("<I", extra)[0]
            else:
                length = struct.unpack("<H", head[6:8])[0]
            value = handle.read(min(length, 256))
            if element == 0x0010:
                syntax = value
            handle.seek(handle.tell() + max(length - len(value), 0))
        if syntax.rstrip(b"\x00 ").decode("ascii", "replace") != _DEFLATED:
            return None
        return start


def _check_deflated(path: Path, name: str) -> None:
    """Refuse a deflated DICOM file whose dataset would inflate beyond the memory available (a zip bomb)."""
    try:
        offset = _deflated_offset(path)
    except OSError:
        return  # pydicom reports the unreadable file
    available = available_memory()
    if offset is None or available is None:
        return
    limit = available // 2  # pydicom holds the compressed and the inflated bytes, then decodes the pixels
    if deflate_size_up_to(path, limit, offset) >= limit:
        raise ReaderError(
            f"'{name}' is a deflated DICOM file whose content inflates to more than {format_bytes(limit)}, over "
            "half the memory available; it is not read (a small file that expands this much is hostile or corrupt)."
        )


# ---------------------------------------------------------------------------------------------- files
def _read_dataset(path: Path) -> Any:
    """Read one DICOM file or raise ReaderError."""
    pydicom = _pydicom()
    _check_deflated(path, path.name)
    try:
        return pydicom.dcmread(str(path))
    except pydicom.errors.InvalidDicomError as exc:
        raise ReaderError(f"'{path.name}' is not a DICOM file (no DICOM preamble / file meta header): {exc}") from exc
    except Exception as exc:  # truncated or otherwise broken files raise assorted errors
        raise ReaderError(f"Cannot read '{path.name}' as DICOM: {exc}. The file may be truncated or corrupt.") from exc


def _has_pixels(dataset: Any) -> bool:
    return any(k in dataset for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _is_image_class(dataset: Any) -> bool:
    """True for datasets that should hold an image (image attributes or an image storage SOP class)."""
    meta = getattr(dataset, "file_meta", None)
    classes = [dataset.get("SOPClassUID"), None if meta is None else meta.get("MediaStorageSOPClassUID")]
    return "Rows" in dataset or any("Image Storage" in str(getattr(uid, "name", "")) for uid in classes)


def _collect_folder(folder: Path, notes: _Notes) -> list[tuple[str, Any]]:
    """All DICOM images under ``folder`` (recursively), as (relative name, dataset).

    Files that are not DICOM (text, thumbnails) and DICOM files without pixel data (DICOMDIR, reports,
    structure sets) are skipped silently; DICOM files that cannot be parsed, or whose header declares more pixel
    data than they hold, are skipped with a warning, and so are named pipes, sockets and devices (opening one
    would block forever).
    """
    pydicom = _pydicom()
    files: list[Path] = []
    special = 0
    for entry in sorted(p for p in folder.rglob("*") if not p.name.startswith(".")):
        if is_regular_file(entry):
            files.append(entry)
        elif not entry.is_dir():  # a named pipe, socket, device or broken link
            special += 1
    if special:
        notes.add(
            f"Skipped {special} item(s) that are not regular files (named pipes, sockets, devices, broken links)."
        )
    images: list[tuple[str, Any]] = []
    not_dicom = 0
    no_pixels = 0
    broken: list[str] = []
    for file in files:
        name = str(file.relative_to(folder))
        try:
            _check_deflated(file, name)
            dataset = pydicom.dcmread(str(file))
        except pydicom.errors.InvalidDicomError:
            not_dicom += 1
            continue
        except Exception:  # a DICOM file that cannot be parsed (truncated, corrupt, a deflate bomb)
            broken.append(name)
            continue
        try:
            kind = _classify(dataset)
        except Exception:  # a malformed attribute, parsed only now
            kind = "broken"
        if kind == "image":
            images.append((name, dataset))
        elif kind == "broken":
            broken.append(name)
        else:
            no_pixels += 1
    if broken:
        notes.add(
            f"Skipped {len(broken)} unreadable (truncated or corrupt) DICOM file(s): {', '.join(broken[:5])}"
            + (" ..." if len(broken) > 5 else "")
            + "."
        )
    if not images:
        raise ReaderError(
            f"No DICOM images in '{folder}': {len(files)} file(s) checked, {not_dicom} not DICOM, "
            f"{len(broken)} unreadable, {no_pixels} without pixel data (e.g. DICOMDIR, reports, structure sets)."
        )
    return images


def _classify(dataset: Any) -> str:
    """``image``; ``broken`` (an image cut short, or declaring more pixel data than it holds); ``other``."""
    if _has_pixels(dataset):
        return "image" if _pixel_size_problem(dataset) is None else "broken"
    return "broken" if _is_image_class(dataset) else "other"


def _group_largest(items: Sequence[_T], key: Callable[[_T], Hashable]) -> tuple[list[_T], dict[Hashable, list[_T]]]:
    """Group ``items`` by ``key`` and return the largest group (first seen on ties) and all groups."""
    groups: dict[Hashable, list[_T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    largest = max(groups.values(), key=len)
    return largest, groups


def _series_label(dataset: Any) -> str:
    """``series 7``: the SeriesNumber only. SeriesDescription is free text (it can hold a patient's name), so it
    never reaches a warning, an error message or the metadata."""
    number = _int_or(dataset.get("SeriesNumber"), None)
    return f"series {number}" if number is not None else "a series without number"


def _pick_series(images: list[tuple[str, Any]], series: str | int | None, notes: _Notes) -> list[tuple[str, Any]]:
    """Keep the requested series, or the largest one with a warning when there are several."""

    def uid(item: tuple[str, Any]) -> str:
        return str(item[1].get("SeriesInstanceUID", "") or "")

    largest, groups = _group_largest(images, uid)
    if series is not None:
        for members in groups.values():
            dataset = members[0][1]
            if str(series) in (uid(members[0]), str(dataset.get("SeriesNumber", ""))):
                return members
        available = ", ".join(_series_label(m[0][1]) for m in groups.values())
        raise ReaderError(f"Series {series!r} is not in this folder; it holds: {available}.")
    if len(groups) > 1:
        others = ", ".join(f"{_series_label(m[0][1])}: {len(m)} file(s)" for m in groups.values() if m is not largest)
        notes.add(
            f"Mixed series: the folder holds {len(groups)} series; reading the largest, "
            f"{_series_label(largest[0][1])} with {len(largest)} file(s), and ignoring {others}. "
            "Pass series=<SeriesNumber or SeriesInstanceUID> to read another one."
        )
    return largest


# ---------------------------------------------------------------------------------------------- pixels
@dataclass
class _Pixels:
    """Decoded, modality-transformed slices and what was applied."""

    slices: list[npt.NDArray[Any]]
    slopes: list[float]
    intercepts: list[float]
    rescaled: bool


def _decode(dataset: Any, name: str, cache: dict[int, npt.NDArray[Any]]) -> npt.NDArray[Any]:
    key = id(dataset)
    if key not in cache:
        try:
            array = np.asarray(dataset.pixel_array)
        except MemoryError:
            raise
        except Exception as exc:  # missing decoder, truncated pixel data, bad attributes
            syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
            syntax_name = getattr(syntax, "name", str(syntax))
            hint = _DECODER_HINT if _syntax_is(syntax, "is_compressed") else ""
            raise ReaderError(
                f"Cannot decode the pixel data of '{name}' (transfer syntax {syntax_name}): {exc}. "
                f"The file may be truncated or corrupt. {hint}".rstrip()
            ) from exc
        array = _declared_frames(array, dataset, name)
        if _frame_count(dataset) == 1:  # used once: no need to keep it
            return array
        cache[key] = array
    return cache[key]


def _declared_frames(array: npt.NDArray[Any], dataset: Any, name: str) -> npt.NDArray[Any]:
    """The decoded array as the header declares it: ``(frames, rows, cols[, samples])``, without the frame axis
    for one frame. pydicom decodes every frame the data can hold, which may be more than NumberOfFrames says."""
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    frame_shape = (int(dataset.Rows), int(dataset.Columns)) + ((samples,) if samples > 1 else ())
    count = _frame_count(dataset)
    if array.shape[array.ndim - len(frame_shape) :] != frame_shape or array.size < count * math.prod(frame_shape):
        raise ReaderError(
            f"The pixel data of '{name}' decodes to shape {array.shape}, not the {count} frame(s) of {frame_shape} "
            "its header declares; the file is corrupt."
        )
    frames = array.reshape((-1, *frame_shape))
    return frames[:count] if count > 1 else frames[0]


def _rescale_number(value: Any, keyword: str, default: float, name: str) -> float:
    """A finite RescaleSlope / RescaleIntercept, ``default`` when empty; ReaderError for anything else."""
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number):  # the value itself is not quoted: a malformed field can hold any text
        raise ReaderError(f"'{name}' has a {keyword} that is not a finite number; the file is corrupt.")
    return number


def _rescale_values(dataset: Any, frame: int | None, name: str) -> tuple[float, float] | None:
    """(slope, intercept) from the dataset or an enhanced multi-frame functional group."""
    if "RescaleSlope" in dataset or "RescaleIntercept" in dataset:
        slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    elif frame is None:
        return None
    else:
        slope = _functional_value(dataset, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional_value(dataset, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        if slope is None and intercept is None:
            return None
    return (
        _rescale_number(slope, "RescaleSlope", 1.0, name),
        _rescale_number(intercept, "RescaleIntercept", 0.0, name),
    )


def _rescaled(array: npt.NDArray[Any], rescale: tuple[float, float], name: str) -> npt.NDArray[np.float64]:
    """``slope * stored + intercept`` in float64, refused when the result does not fit the float32 volume."""
    slope, intercept = rescale
    with np.errstate(over="ignore", invalid="ignore"):
        values = array.astype(np.float64) * slope + intercept
    limit = float(np.finfo(np.float32).max)
    if values.size and not (np.all(np.isfinite(values)) and float(np.max(np.abs(values))) <= limit):
        raise ReaderError(
            f"'{name}': RescaleSlope {slope:.4g} and RescaleIntercept {intercept:.4g} turn its stored pixel values "
            "into numbers too large to hold (beyond float32); the header is corrupt."
        )
    return values


def _frame_pixels(
    frame: _Frame, cache: dict[int, npt.NDArray[Any]]
) -> tuple[npt.NDArray[Any], tuple[float, float] | None]:
    """One frame's values after the modality LUT: ``(rows, cols)`` or ``(rows, cols, samples)``."""
    array = _decode(frame.dataset, frame.name, cache)
    if frame.frame is not None and _frame_count(frame.dataset) > 1:
        array = array[frame.frame]
    if int(frame.dataset.get("SamplesPerPixel", 1) or 1) > 1:
        return array, None
    if frame.dataset.get("ModalityLUTSequence"):  # the LUT wins over RescaleSlope, as in pydicom
        try:
            values = np.asarray(_pydicom().pixels.apply_modality_lut(array, frame.dataset))
        except Exception as exc:  # a malformed LUT (descriptor, data length)
            raise ReaderError(f"'{frame.name}' has an unusable Modality LUT ({exc}); the file is corrupt.") from exc
        return values, None
    rescale = _rescale_values(frame.dataset, frame.frame, frame.name)
    if rescale is None:
        return array, None
    return _rescaled(array, rescale, frame.name), rescale


def _load_pixels(frames: Sequence[_Frame]) -> _Pixels:
    cache: dict[int, npt.NDArray[Any]] = {}
    slices: list[npt.NDArray[Any]] = []
    slopes: list[float] = []
    intercepts: list[float] = []
    rescaled = False
    for frame in frames:
        values, rescale = _frame_pixels(frame, cache)
        slices.append(values if rescale is None else values.astype(np.float32))  # float64 only one slice at a time
        rescaled = rescaled or rescale is not None or "ModalityLUTSequence" in frame.dataset
        slope, intercept = rescale if rescale is not None else (1.0, 0.0)
        slopes.append(slope)
        intercepts.append(intercept)
    return _Pixels(slices, slopes, intercepts, rescaled)


def _stack(pixels: _Pixels) -> npt.NDArray[Any]:
    """``(k, rows, cols)`` (or ``(samples, k, rows, cols)`` for colour), float32 when rescaled."""
    data = np.stack(pixels.slices, axis=0)
    if pixels.rescaled:
        data = data.astype(np.float32)
    if data.ndim == 4:  # colour: (k, r, c, s) -> (s, k, r, c)
        data = np.moveaxis(data, -1, 0)
    return np.ascontiguousarray(data)


# ---------------------------------------------------------------------------------------------- geometry
def _lps_affine(
    orientation: npt.NDArray[np.float64],
    position: npt.NDArray[np.float64],
    pixel_spacing: tuple[float, float],
    slice_step: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """4 x 4 affine from ``(column, row, slice)`` indices to LPS mm (the ITK / DICOM convention)."""
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * pixel_spacing[1]
    affine[:3, 1] = orientation[3:] * pixel_spacing[0]
    affine[:3, 2] = slice_step
    affine[:3, 3] = position
    return affine


def _fallback_slice_spacing(dataset: Any) -> float | None:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _floats([dataset.get(keyword)], 1) if dataset.get(keyword) not in (None, "") else None
        if value is not None and value[0] > 0:
            return float(value[0])
    return None


def _check_steps(steps: npt.NDArray[np.float64], notes: _Notes) -> float:
    """Typical slice step (median) and warnings about gaps and uneven spacing."""
    step = float(np.median(steps))
    gaps = np.flatnonzero(steps > _GAP_FACTOR * step)
    if gaps.size:
        missing = int(np.sum(np.round(steps[gaps] / step)) - gaps.size)
        notes.add(
            f"Missing slices: {gaps.size} gap(s) in the series, about {missing} slice(s) missing (steps of "
            f"{', '.join(f'{s:.3g}' for s in steps[gaps])} mm where the usual step is {step:.4g} mm). "
            "The slices are stacked as they are, so positions after a gap are off in the volume."
        )
    elif float(np.max(steps) - np.min(steps)) > _UNEVEN_FRACTION * step:
        notes.add(
            f"Uneven slice spacing: steps range from {np.min(steps):.4g} to {np.max(steps):.4g} mm; "
            f"the median {step:.4g} mm is used, so world positions are approximate."
        )
    return step


def _sort_by_position(
    frames: list[_Frame], positions: npt.NDArray[np.float64], normal: npt.NDArray[np.float64], notes: _Notes
) -> tuple[list[_Frame], npt.NDArray[np.float64]]:
    """Sort frames along the slice normal and drop duplicate positions.

    ``positions`` is ``(k, 3)`` LPS, one row per frame; returns the kept frames and their ``(k', 3)`` rows.
    """
    projections = positions @ normal
    order = sorted(range(len(frames)), key=lambda i: (float(projections[i]), frames[i].instance))
    kept = [order[0]]
    for index in order[1:]:
        if projections[index] - projections[kept[-1]] > _SAME_POSITION_MM:
            kept.append(index)
    if len(kept) < len(frames):
        notes.add(
            f"{len(frames) - len(kept)} slice(s) share a position with another slice (several echoes, phases "
            "or acquisitions in one series?); only the first of each position is kept."
        )
    return [frames[i] for i in kept], positions[kept]


def _keep_consistent(frames: list[_Frame], notes: _Notes) -> list[_Frame]:
    """Keep the largest group of frames with the same size and orientation."""
    largest, groups = _group_largest(frames, lambda f: f.shape)
    if len(groups) > 1:
        notes.add(
            f"The series mixes image sizes {sorted(groups, key=str)}; "
            f"keeping the {len(largest)} slices of {largest[0].shape}."
        )

    def orientation_key(frame: _Frame) -> Hashable:
        if frame.orientation is None:
            return None
        return tuple(np.round(frame.orientation / _ORIENTATION_TOL).astype(int).tolist())

    kept, groups = _group_largest(largest, orientation_key)
    if len(groups) > 1:
        notes.add(
            f"The series mixes {len(groups)} slice orientations (a localiser?); keeping the {len(kept)} slices "
            "with the most common one."
        )
    return kept


@dataclass
class _Volume:
    frames: list[_Frame]
    lps_affine: npt.NDArray[np.float64]


def _volume_geometry(frames: list[_Frame], notes: _Notes) -> _Volume:
    """Sort slices and build the LPS affine of the ``(column, row, slice)`` grid."""
    first = frames[0]
    pixel_spacing = first.pixel_spacing
    if pixel_spacing is None:
        notes.add("No PixelSpacing in the series: 1 mm pixels are assumed.")
        pixel_spacing = (1.0, 1.0)
    elif any(f.pixel_spacing != pixel_spacing for f in frames):
        notes.add(f"PixelSpacing varies between slices; the first slice's {pixel_spacing} is used.")
    located = [f.position for f in frames if f.position is not None]
    if first.orientation is None or len(located) < len(frames):
        return _volume_without_positions(frames, pixel_spacing, notes)
    normal = _normal(first.orientation)
    frames, positions = _sort_by_position(frames, np.stack(located), normal, notes)
    if len(frames) == 1:
        step = _fallback_slice_spacing(first.dataset) or 1.0
        return _Volume(frames, _lps_affine(first.orientation, positions[0], pixel_spacing, normal * step))
    step = _check_steps(np.diff(positions @ normal), notes)
    travel = positions[-1] - positions[0]
    sideways = travel - normal * float(travel @ normal)
    if float(np.linalg.norm(sideways)) > 0.01 * step * (len(frames) - 1) + 1e-3:
        notes.add(
            "The slices are not stacked along their normal (gantry tilt or shear): the volume is placed "
            "along the normal, so positions off the first slice are approximate."
        )
    return _Volume(frames, _lps_affine(first.orientation, positions[0], pixel_spacing, normal * step))


def _volume_without_positions(frames: list[_Frame], pixel_spacing: tuple[float, float], notes: _Notes) -> _Volume:
    """Stack by InstanceNumber (or frame order) when positions are missing."""
    frames = sorted(frames, key=lambda f: f.instance)
    step = _fallback_slice_spacing(frames[0].dataset)
    notes.add(
        "ImagePositionPatient / ImageOrientationPatient are missing: slices are ordered by InstanceNumber "
        f"and spaced by {'SpacingBetweenSlices/SliceThickness' if step else 'an assumed 1 mm'}; "
        "world positions are not known."
    )
    orientation = frames[0].orientation if frames[0].orientation is not None else np.array([1.0, 0, 0, 0, 1, 0])
    affine = _lps_affine(orientation, np.zeros(3), pixel_spacing, _normal(orientation) * (step or 1.0))
    return _Volume(frames, affine)


# ---------------------------------------------------------------------------------------------- metadata
def _coded(dataset: Any, keyword: str, defined: frozenset[str]) -> str:
    """A coded attribute's value if it is one of the DICOM defined terms, ``"other"`` for any other text, ``""``
    when absent: the attribute is a code, but a file can hold any text in it, a patient's name included."""
    value = str(dataset.get(keyword, "") or "").strip()
    if not value:
        return ""
    return value if value in defined else "other"


def _uniform_or_list(values: Sequence[float]) -> float | list[float]:
    return float(values[0]) if all(v == values[0] for v in values) else [float(v) for v in values]


def _metadata(
    dataset: Any, pixels: _Pixels, lps_affine: npt.NDArray[np.float64], geometry: Geometry, n_files: int
) -> dict[str, Any]:
    """What the caller needs, and nothing that identifies the patient: no free text (descriptions, names,
    comments, UIDs) and coded values only when they are defined terms (see :func:`_coded`)."""
    modality = _coded(dataset, "Modality", _MODALITIES)
    rescale_type = _coded(dataset, "RescaleType", _RESCALE_TYPES)
    if rescale_type:
        units = rescale_type
    elif modality == "CT" and pixels.rescaled:
        units = "HU"
    else:
        units = ""
    thickness_value = dataset.get("SliceThickness")
    thickness = None if thickness_value in (None, "") else _floats([thickness_value], 1)
    return {
        "format": "dicom",
        "modality": modality,
        "series_number": _int_or(dataset.get("SeriesNumber"), -1),
        "rescale_slope": _uniform_or_list(pixels.slopes),
        "rescale_intercept": _uniform_or_list(pixels.intercepts),
        "rescale_type": rescale_type,
        "units": units,
        "spacing": list(geometry.spacing),
        "slice_thickness": None if thickness is None else float(thickness[0]),
        "photometric_interpretation": _coded(dataset, "PhotometricInterpretation", _PHOTOMETRIC),
        "original_lps_affine": lps_affine.tolist(),
        "original_affine": (LPS_TO_RAS @ lps_affine).tolist(),
        "n_files": n_files,
        "world": "RAS",
        "axis_order": "zyx",
    }


# ---------------------------------------------------------------------------------------------- public
def read_dicom(
    path: str | os.PathLike[str], *, series: str | int | None = None
) -> tuple[npt.NDArray[Any], Geometry, dict[str, Any]]:
    """Read a DICOM file or a folder holding a DICOM series.

    Parameters
    ----------
    path : str or path-like
        One DICOM file, or a folder searched recursively (files that are not DICOM images are skipped).
    series : str or int, optional
        SeriesInstanceUID or SeriesNumber of the series to read from a folder holding several; by default
        the largest series is read (with a warning).

    Returns
    -------
    data : numpy.ndarray
        ``(z, y, x)`` = (slice, row, column) for a series or a multi-frame file; ``(y, x)`` for one
        single-frame image. Colour images get a leading channel axis (``metadata["channel_axis"] = 0``).
        Values went through the modality LUT (float32 when a rescale was applied: HU for CT); otherwise
        the stored dtype.
    geometry : Geometry
        RAS+ world in ``(z, y, x)`` order (``(S, A, R)``), i.e. LPS with the first two patient axes flipped;
        2-D for a single image (its slice geometry; exact for axis-aligned planes).
    metadata : dict
        ``modality``, ``series_number``, ``rescale_slope``/``rescale_intercept`` (a float, or one per slice
        when they vary), ``rescale_type``, ``units``, ``spacing``, ``slice_thickness``,
        ``photometric_interpretation``, ``original_lps_affine`` (4 x 4, ``(column, row, slice)`` indices ->
        LPS mm), ``original_affine`` (the same in RAS, the NIfTI convention taken by
        :func:`~napari_attribution.io.write_nifti`), ``n_files`` and ``warnings``. ``modality``,
        ``rescale_type`` and ``photometric_interpretation`` are DICOM defined terms (``"other"`` for any other
        text). No free text (SeriesDescription, protocol, comments, institution), no patient name, ID, birth
        date or UID, here or in the warnings.

    Raises
    ------
    ReaderError
        Missing path, not DICOM, no image, corrupt or truncated file, undecodable pixel data; a path that is not
        a regular file (a named pipe); a header that declares more pixel data than the file holds (checked before
        any frame is decoded) or more than the memory available; a rescale that overflows.

    Warns
    -----
    ReaderWarning
        Missing slices (uneven gaps), uneven spacing, several series in the folder, duplicate positions,
        mixed sizes or orientations, missing positions, skipped files (unreadable, or not regular files). The
        messages are also in ``metadata["warnings"]``.
    """
    path = Path(path)
    notes = _Notes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data, geometry, metadata = _read(path, series, notes)
        finally:
            _replay_warnings(caught, notes)
    metadata["warnings"] = list(notes.messages)
    for message in notes.messages:
        warnings.warn(message, ReaderWarning, stacklevel=2)
    return data, geometry, metadata


def _read(path: Path, series: str | int | None, notes: _Notes) -> tuple[npt.NDArray[Any], Geometry, dict[str, Any]]:
    try:
        images = _images(path, series, notes)
        frames: list[_Frame] = []
        for name, dataset in images:
            frames.extend(_frames_of(dataset, name))
        return _assemble(_keep_consistent(frames, notes), notes, len(images))
    except ReaderError:
        raise
    except MemoryError as exc:
        raise ReaderError(f"Not enough memory to read the pixel data of '{path.name}'.") from exc
    except Exception as exc:  # pydicom parses attributes when they are first read: a malformed one raises here
        # pydicom's message is left out: it can quote the attribute's value, which can be patient data
        message = f"'{path.name}' has a malformed attribute ({type(exc).__name__}); the file is corrupt."
        raise ReaderError(message) from exc


def _replay_warnings(caught: list[warnings.WarningMessage], notes: _Notes) -> None:
    """Re-emit the warnings caught while reading, except pydicom's, which are counted in one note instead.

    pydicom's warnings about malformed values quote the value ("Invalid value for VR UI: '...'"), and a value can
    be a patient's name. (``catch_warnings`` is process-wide: a warning another thread raises meanwhile is
    replayed from here.)
    """
    from_pydicom = 0
    for record in caught:
        if "pydicom" in Path(record.filename).parts:
            from_pydicom += 1
        else:
            warnings.warn_explicit(record.message, record.category, record.filename, record.lineno,
                                   source=record.source)
    if from_pydicom:
        notes.add(
            f"pydicom reported {from_pydicom} problem(s) with malformed attributes while reading; they are not "
            "shown because attribute values can hold patient data."
        )


def _images(path: Path, series: str | int | None, notes: _Notes) -> list[tuple[str, Any]]:
    """(name, dataset) of the images to read: the chosen series of a folder, or the one file."""
    if path.is_dir():
        return _pick_series(_collect_folder(path, notes), series, notes)
    if is_regular_file(path):
        dataset = _read_dataset(path)
        if not _has_pixels(dataset):
            sop_class = dataset.get("SOPClassUID")
            raise ReaderError(
                f"'{path.name}' is DICOM but holds no pixel data (SOP class {getattr(sop_class, 'name', sop_class)}); "
                "if it should be an image, the file is truncated."
            )
        problem = _pixel_size_problem(dataset)
        if problem is not None:
            raise ReaderError(f"'{path.name}' {problem}; the file is truncated or its header is corrupt.")
        return [(path.name, dataset)]
    if path.exists():
        raise ReaderError(
            f"'{path.name}' is not a regular file (a named pipe, socket or device); scans are read from files on "
            "disk only."
        )
    raise ReaderError(f"No such file or folder: '{path}'.")


def _assemble(frames: list[_Frame], notes: _Notes, n_files: int) -> tuple[npt.NDArray[Any], Geometry, dict[str, Any]]:
    """Pixels, geometry and metadata of the kept frames."""
    volume = _volume_geometry(frames, notes) if len(frames) > 1 else _single_geometry(frames[0], notes)
    _check_pixel_memory(volume.frames)
    pixels = _load_pixels(volume.frames)
    data = _stack(pixels)
    colour = int(volume.frames[0].dataset.get("SamplesPerPixel", 1) or 1) > 1
    single = len(volume.frames) == 1
    if single:
        data = data[:, 0] if colour else data[0]
    ras = LPS_TO_RAS @ volume.lps_affine
    try:
        geometry = geometry_from_xyz_affine(ras, 2 if single else 3)
    except ValueError as exc:
        raise ReaderError(f"The DICOM geometry is unusable: {exc}") from exc
    metadata = _metadata(volume.frames[0].dataset, pixels, volume.lps_affine, geometry, n_files)
    if colour:
        metadata["channel_axis"] = 0
    return data, geometry, metadata


def _check_pixel_memory(frames: Sequence[_Frame]) -> None:
    """Refuse before decoding when the decoded files and the volume cannot fit in the memory available."""
    # multi-frame files are decoded whole and kept while their frames are used
    decoded = {id(f.dataset): _decoded_bytes(f.dataset) for f in frames if _frame_count(f.dataset) > 1}
    first = frames[0].dataset
    frame_bytes = _decoded_bytes(first) // _frame_count(first)
    stored_itemsize = max(frame_bytes // (frames[0].shape[0] * frames[0].shape[1]), 1)
    volume = len(frames) * frame_bytes // stored_itemsize * max(stored_itemsize, 4)  # float32 once rescaled
    files = len({f.name for f in frames})
    subject = f"'{frames[0].name}'" if files == 1 else f"The series ({files} files, first '{frames[0].name}')"
    check_memory(sum(decoded.values()) + volume, subject, f"{len(frames)} frame(s) of {frames[0].shape} pixels")


def _single_geometry(frame: _Frame, notes: _Notes) -> _Volume:
    """LPS affine of one image; the slice axis gets the slice thickness (or 1 mm)."""
    pixel_spacing = frame.pixel_spacing
    if pixel_spacing is None:
        notes.add("No PixelSpacing / ImagerPixelSpacing: 1 mm pixels are assumed.")
        pixel_spacing = (1.0, 1.0)
    orientation = frame.orientation if frame.orientation is not None else np.array([1.0, 0, 0, 0, 1, 0])
    position = frame.position if frame.position is not None else np.zeros(3)
    step = _fallback_slice_spacing(frame.dataset) or 1.0
    return _Volume([frame], _lps_affine(orientation, position, pixel_spacing, _normal(orientation) * step))
