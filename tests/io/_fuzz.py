"""Mutated NIfTI / DICOM files for the readers' fuzz test (tests/io/test_io_fuzz.py, benchmarks/fuzz_readers.py).

Seeds are real files read from the installed nibabel and pydicom wheels (never copied into the repository). Each
case applies one or two mutations with a seeded ``random.Random``, so a case is reproduced from its number:

* NIfTI: truncation (in the header or in the voxel data), a header field set to an extreme (dims, datatype,
  bitpix, vox_offset, scl_slope/inter, pixdim, quaternions, srows, magic, ...), bit flips (header or anywhere),
  and for ``.nii.gz`` truncations and bit flips of the compressed stream itself;
* DICOM: an attribute set to an extreme (NumberOfFrames, Rows, Columns, BitsAllocated, SamplesPerPixel,
  RescaleSlope, PixelSpacing, ImageOrientationPatient, PhotometricInterpretation, ...), a required attribute
  removed, a transfer syntax that does not match the encoding, pixel data cut short, truncation and bit flips
  of the file.

:func:`run_cases` reads every case in child processes under a memory cap (``RLIMIT_AS``, the resting size plus
``extra_gib``) with a per-file alarm, and sorts each outcome: ``image`` (a valid image), ``reader_error``, or a
failure (``other_error``, ``invalid_image``, ``timeout``, ``crash``).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import random
import struct
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pydicom
from pydicom import config as dicom_config
from pydicom.data import get_testdata_file

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
NIFTI_SEEDS = ("anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "standard.nii.gz")
DICOM_SEEDS = (
    "CT_small.dcm",  # CT, rescaled to HU
    "MR_small.dcm",
    "MR_small_RLE.dcm",  # compressed (RLE, decoded by pydicom itself)
    "MR_small_bigendian.dcm",
    "rtdose.dcm",  # multi-frame with GridFrameOffsetVector
    "SC_rgb_small_odd.dcm",  # colour, odd size
    "SC_rgb_rle_2frame.dcm",  # colour, multi-frame, compressed
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
)
FAILURES = ("other_error", "invalid_image", "timeout", "crash")


@dataclass(frozen=True)
class Case:
    """One mutated file: where it is, which seed it came from, and what was done to it."""

    index: int
    path: Path
    seed: str
    mutation: str


# ---------------------------------------------------------------------------------------------- NIfTI
_NIFTI_FIELDS = (
    "sizeof_hdr", "dim_info", "dim", "dim", "dim", "dim", "intent_code", "datatype", "datatype", "bitpix",
    "slice_start", "pixdim", "pixdim", "vox_offset", "vox_offset", "scl_slope", "scl_inter", "slice_end",
    "slice_code", "xyzt_units", "cal_max", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
    "qoffset_x", "srow_x", "srow_y", "srow_z", "magic",
)  # fmt: skip
_NIFTI_DATATYPES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 255, 32767)


def _extremes(kind: str, dtype: np.dtype[Any], rng: random.Random) -> Any:
    if kind == "i" or kind == "u":
        info = np.iinfo(dtype)
        return rng.choice([0, 1, -1, 2, 7, 8, 255, 32767, 2**31 - 1, int(info.min), int(info.max)])
    if kind == "f":
        return rng.choice([0.0, -0.0, math.nan, math.inf, -math.inf, 1e38, -1e38, 1e-38, 3.4e38, 1e10, -1.0])
    return rng.choice([b"", b"n+1\x00", b"n+2\x00", b"ni1\x00", bytes(rng.randrange(256) for _ in range(4))])


def _set_nifti_field(raw: bytearray, rng: random.Random) -> str:
    """Set one header field of a NIfTI-1/2 file (its own byte order) to an extreme value."""
    nifti2 = struct.unpack("<i", raw[:4])[0] == 540 or struct.unpack(">i", raw[:4])[0] == 540
    big = struct.unpack("<i", raw[:4])[0] not in (348, 540)
    header_dtype = (nibabel.nifti2 if nifti2 else nibabel.nifti1).header_dtype.newbyteorder(">" if big else "<")
    name = rng.choice(_NIFTI_FIELDS)
    field, offset = header_dtype.fields[name][:2]
    base, shape = (field.base, field.shape) if field.subdtype else (field, ())
    count = int(np.prod(shape)) if shape else 1
    element = rng.randrange(count)
    if name == "datatype":
        value: Any = rng.choice(_NIFTI_DATATYPES)
    else:
        value = _extremes(base.kind, base, rng)
    if base.kind in "iu":
        info = np.iinfo(base)
        value = min(max(int(value), int(info.min)), int(info.max))
    with np.errstate(over="ignore", invalid="ignore"):
        encoded = np.array(value, dtype=base).tobytes() if base.kind != "S" else bytes(value)[: base.itemsize]
    start = offset + element * base.itemsize
    raw[start : start + len(encoded)] = encoded
    return f"{name}[{element}]={value!r}" if shape else f"{name}={value!r}"


def _flip_bits(raw: bytearray, rng: random.Random, end: int | None = None) -> str:
    flips = rng.randint(1, 8)
    for _ in range(flips):
        position = rng.randrange(min(end or len(raw), len(raw)))
        raw[position] ^= 1 << rng.randrange(8)
    return f"flip {flips} bit(s) in the first {min(end or len(raw), len(raw))} bytes"


def _mutate_nifti(seed: Path, rng: random.Random) -> tuple[bytes, str, str]:
    """(file bytes, suffix, description) of one mutated NIfTI."""
    compressed = seed.name.endswith(".gz")
    raw = bytearray(gzip.decompress(seed.read_bytes()) if compressed else seed.read_bytes())
    header_size = 540 if struct.unpack("<i", raw[:4])[0] == 540 else 352
    steps = []
    for _ in range(rng.choice([1, 1, 1, 2])):
        roll = rng.random()
        if roll < 0.45:
            steps.append(_set_nifti_field(raw, rng))
        elif roll < 0.7:
            steps.append(_flip_bits(raw, rng, end=header_size if rng.random() < 0.7 else None))
        else:
            in_header = rng.random() < 0.4 or len(raw) <= header_size  # (an earlier step may have cut it)
            cut = rng.randrange(min(header_size, len(raw))) if in_header else rng.randrange(header_size, len(raw))
            del raw[cut:]
            steps.append(f"truncate at {cut}")
    suffix = ".nii.gz" if compressed else ".nii"
    if rng.random() < 0.1:  # named otherwise: found by sniffing the content
        suffix = ".bin"
        compressed = rng.random() < 0.5
    data = gzip.compress(bytes(raw), compresslevel=1) if compressed else bytes(raw)
    if compressed and rng.random() < 0.2:  # damage the compressed stream itself
        stream = bytearray(data)
        if rng.random() < 0.5:
            cut = rng.randrange(10, len(stream))
            data = bytes(stream[:cut])
            steps.append(f"gzip stream cut at {cut}")
        else:
            steps.append("gzip stream: " + _flip_bits(stream, rng))
            data = bytes(stream)
    return data, suffix, "; ".join(steps)


def _huge_nifti(rng: random.Random) -> tuple[bytes, str, str]:
    """A header alone claiming a huge volume (the issue's 66-byte file and its kin)."""
    header = nibabel.Nifti1Header()
    shape = rng.choice([(2048, 2048, 1024), (512, 512, 1024), (32767, 32767, 32767), (32767, 32767, 32767, 100)])
    header.set_data_shape(shape)
    header.set_data_dtype(rng.choice([np.float32, np.float64, np.int16]))
    raw = header.binaryblock + b"\0" * 4
    if rng.random() < 0.7:
        return gzip.compress(raw), ".nii.gz", f"header only, claims {shape}"
    return raw, ".nii", f"header only, claims {shape}"


# ---------------------------------------------------------------------------------------------- DICOM
_DICOM_EXTREMES: dict[str, tuple[Any, ...]] = {
    "NumberOfFrames": ("0", "-1", "2", "50000000", "2147483647", "99999999999"),
    "Rows": (0, 1, 65535, 4096),
    "Columns": (0, 1, 65535, 4096),
    "BitsAllocated": (0, 1, 7, 8, 32, 64, 65535),
    "BitsStored": (0, 1, 33, 65535),
    "HighBit": (0, 65535),
    "PixelRepresentation": (0, 1, 2),
    "SamplesPerPixel": (0, 3, 4, 65535),
    "PlanarConfiguration": (0, 1, 2),
    "RescaleSlope": ("0", "-1", "1e308", "-1e308", "1e38", "NaN", "inf", "1e-308", "abc"),
    "RescaleIntercept": ("1e308", "-1e308", "NaN", "-inf", "abc"),
    "PixelSpacing": (["0", "0"], ["-1", "1"], ["NaN", "1"], ["1e308", "1e308"], ["1"]),
    "SliceThickness": ("0", "-5", "NaN", "1e308", "abc"),
    "ImagePositionPatient": (["NaN", "0", "0"], ["1e308", "-1e308", "1e308"], ["0", "0"]),
    "ImageOrientationPatient": (["0"] * 6, ["1", "0", "0", "1", "0", "0"], ["NaN"] * 6, ["1e308"] * 6, ["1"] * 3),
    "PhotometricInterpretation": ("", "RGB", "YBR_FULL_422", "PALETTE COLOR", "MONOCHROME1", "Doe^John"),
    "GridFrameOffsetVector": (["0"], ["NaN"] * 15, ["1e308"] * 15),
    "ModalityLUTSequence": (None,),
}
_REQUIRED = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation", "PixelData",
             "PixelRepresentation", "RescaleSlope", "ImageOrientationPatient")  # fmt: skip
_SYNTAXES = (
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.90",  # JPEG 2000
)


@contextlib.contextmanager
def _lenient_pydicom() -> Iterator[None]:
    """Let pydicom write (and read back) invalid values, and keep its warnings quiet, for the mutator only."""
    settings = dicom_config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = dicom_config.IGNORE
    settings.writing_validation_mode = dicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _set_dicom_element(ds: Any, rng: random.Random, patches: list[tuple[bytes, bytes]]) -> str:
    keyword = rng.choice(sorted(_DICOM_EXTREMES))
    value = rng.choice(_DICOM_EXTREMES[keyword])
    if keyword == "ModalityLUTSequence":  # a LUT whose descriptor does not match its data
        item = pydicom.Dataset()
        item.LUTDescriptor = [rng.choice([0, 1, 4096]), 0, rng.choice([8, 16])]
        item.LUTData = [rng.randrange(65536) for _ in range(rng.choice([0, 3, 16]))]
        ds.ModalityLUTSequence = pydicom.Sequence([item])
        return f"ModalityLUTSequence descriptor {list(item.LUTDescriptor)}, {len(item.LUTData)} entries"
    try:
        setattr(ds, keyword, value)
    except (ValueError, TypeError, OverflowError):  # pydicom will not hold text in a number: patch the bytes later
        placeholder = "7" + "3" * (len(value) - 1)
        setattr(ds, keyword, placeholder)
        patches.append((placeholder.encode(), str(value).encode()))
    return f"{keyword}={value!r}"


def _mutate_dicom_dataset(seed: Path, rng: random.Random) -> tuple[bytes, str]:
    ds = pydicom.dcmread(seed)
    steps = []
    patches: list[tuple[bytes, bytes]] = []
    for _ in range(rng.choice([1, 1, 2])):
        roll = rng.random()
        if roll < 0.6:
            steps.append(_set_dicom_element(ds, rng, patches))
        elif roll < 0.75:
            keyword = rng.choice(_REQUIRED)
            if keyword in ds:
                del ds[keyword]
            steps.append(f"delete {keyword}")
        elif roll < 0.9 and "PixelData" in ds:
            pixels = ds.PixelData
            cut = rng.randrange(len(pixels) + 1)
            ds.PixelData = pixels[:cut]
            steps.append(f"PixelData cut to {cut} of {len(pixels)} bytes")
        else:
            syntax = rng.choice(_SYNTAXES)
            ds.file_meta.TransferSyntaxUID = syntax
            steps.append(f"declares transfer syntax {syntax} (data not re-encoded)")
    buffer = io.BytesIO()
    syntax = ds.file_meta.TransferSyntaxUID
    implicit = syntax == "1.2.840.10008.1.2"
    little = syntax != "1.2.840.10008.1.2.2"
    try:
        pydicom.dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=little, force_encoding=True)
    except Exception as exc:  # pydicom refused this combination: keep the seed's bytes, cut
        raw = seed.read_bytes()
        return raw[: rng.randrange(len(raw))], "; ".join(steps) + f" (unwritable: {type(exc).__name__}; cut instead)"
    data = buffer.getvalue()
    for placeholder, value in patches:  # same length: no length field changes
        data = data.replace(placeholder, value, 1)
    return data, "; ".join(steps)


def _mutate_dicom(seed: Path, rng: random.Random) -> tuple[bytes, str, str]:
    """(file bytes, suffix, description) of one mutated DICOM file."""
    roll = rng.random()
    if roll < 0.6:
        data, what = _mutate_dicom_dataset(seed, rng)
    else:
        raw = bytearray(seed.read_bytes())
        if roll < 0.8:
            cut = rng.randrange(len(raw))
            data, what = bytes(raw[:cut]), f"truncate at {cut} of {len(raw)}"
        else:
            what = _flip_bits(raw, rng, end=min(len(raw), 2048) if rng.random() < 0.7 else None)
            data = bytes(raw)
    return data, (".dcm" if rng.random() < 0.9 else ".bin"), what


def _series_folder(folder: Path, rng: random.Random) -> str:
    """A 4-slice series made from CT_small.dcm with one or two slices mutated, and sometimes a named pipe, a
    text file or a second series beside it: exercises the folder reader (collecting, sorting, skipping)."""
    folder.mkdir()
    template = Path(get_testdata_file("CT_small.dcm", download=False) or "")
    uid = pydicom.uid.generate_uid(entropy_srcs=[str(folder)])
    for k in range(4):
        ds = pydicom.dcmread(template)
        ds.ImagePositionPatient = [-158.1, -179.0, -75.7 + 2.5 * k]
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID = uid
        ds.save_as(folder / f"slice{k}.dcm")
    steps = []
    for k in rng.sample(range(4), rng.choice([1, 2])):
        data, _, what = _mutate_dicom(folder / f"slice{k}.dcm", rng)
        (folder / f"slice{k}.dcm").write_bytes(data)
        steps.append(f"slice{k}: {what}")
    extra = rng.random()
    if extra < 0.2 and hasattr(os, "mkfifo"):
        os.mkfifo(folder / "aa_pipe.dcm")
        steps.append("a named pipe")
    elif extra < 0.35:
        (folder / "notes.txt").write_text("exported by a PACS")
        steps.append("a text file")
    return "; ".join(steps)


# ---------------------------------------------------------------------------------------------- corpus
def seed_paths() -> tuple[list[Path], list[Path]]:
    """The seed files found in the installed wheels (NIfTI, DICOM); absent ones are left out."""
    nifti = [NIBABEL_DATA / name for name in NIFTI_SEEDS if (NIBABEL_DATA / name).is_file()]
    dicom = [Path(p) for p in (get_testdata_file(name, download=False) for name in DICOM_SEEDS) if p]
    return nifti, dicom


def make_corpus(folder: Path, n_nifti: int, n_dicom: int, n_folders: int = 0, seed: int = 0) -> list[Case]:
    """Write ``n_nifti`` + ``n_dicom`` mutated files and ``n_folders`` series folders into ``folder``; case ``i``
    depends only on ``seed`` and ``i``."""
    nifti_seeds, dicom_seeds = seed_paths()
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    with _lenient_pydicom():
        for index in range(n_nifti + n_dicom + n_folders):
            rng = random.Random(f"{seed}:{index}")
            if index >= n_nifti + n_dicom:
                path = folder / f"case{index:04d}"
                cases.append(Case(index, path, "CT_small.dcm series", _series_folder(path, rng)))
                continue
            if index < n_nifti:
                source = rng.choice(nifti_seeds)
                data, suffix, what = _huge_nifti(rng) if rng.random() < 0.06 else _mutate_nifti(source, rng)
            else:
                source = rng.choice(dicom_seeds)
                data, suffix, what = _mutate_dicom(source, rng)
            path = folder / f"case{index:04d}{suffix}"
            path.write_bytes(data)
            cases.append(Case(index, path, source.name, what))
    return cases


# ---------------------------------------------------------------------------------------------- running
CHILD = """
import json, math, re, resource, signal, sys, time, warnings
import numpy as np
import napari_attribution.io as nio
from napari_attribution._errors import ReaderError


def vm_size():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024


def origin(filename):  # the package that warned: pydicom, numpy, napari_attribution, ...
    match = re.search(r"(?:site-packages|src)[/\\\\]([^/\\\\]+)", filename)
    return match.group(1) if match else filename


def on_alarm(signum, frame):
    raise TimeoutError("no answer within the time limit")


def problem(data, geometry, meta):  # why a returned image is not valid, or None
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf":
        return f"data of type {type(data).__name__} / {getattr(data, 'dtype', None)}"
    if data.size == 0 or not 2 <= data.ndim <= 4 or data.ndim - geometry.ndim not in (0, 1):
        return f"shape {data.shape} with a {geometry.ndim}-D geometry"
    affine = np.asarray(geometry.affine(), dtype=float)
    if not np.all(np.isfinite(affine)) or not all(s > 0 and math.isfinite(s) for s in geometry.spacing):
        return f"geometry spacing {geometry.spacing}, affine finite: {bool(np.all(np.isfinite(affine)))}"
    stored_integers = meta.get("format") == "dicom" or np.dtype(meta.get("file_dtype", "f4")).kind in "biu"
    if data.dtype.kind == "f" and stored_integers and not np.all(np.isfinite(data)):
        return "non-finite values from integer voxels"
    return None


resource.setrlimit(resource.RLIMIT_AS, (vm_size() + int(EXTRA_GIB * 2**30), resource.RLIM_INFINITY))
signal.signal(signal.SIGALRM, on_alarm)
for line in sys.stdin:
    case = json.loads(line)
    print(json.dumps({"start": case["index"]}), flush=True)
    start = time.perf_counter()
    signal.alarm(TIMEOUT)
    foreign = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data, geometry, meta = nio.read_image(case["path"])
        foreign = sorted({f"{origin(w.filename)}: {w.category.__name__}: {str(w.message)[:120]}" for w in caught
                          if not issubclass(w.category, nio.ReaderWarning)})
        why = problem(data, geometry, meta)
        outcome, detail = ("invalid_image", why) if why else ("image", f"{data.shape} {data.dtype}")
    except ReaderError as exc:
        outcome, detail = "reader_error", str(exc)[:300]
    except TimeoutError as exc:
        outcome, detail = "timeout", str(exc)
    except BaseException as exc:
        outcome, detail = "other_error", f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        signal.alarm(0)
    print(json.dumps({"index": case["index"], "outcome": outcome, "detail": detail, "warnings": foreign,
                      "seconds": round(time.perf_counter() - start, 3)}), flush=True)
"""


def run_cases(cases: list[Case], *, extra_gib: float = 2.0, timeout: int = 20) -> list[dict[str, Any]]:
    """Read every case in child processes (memory cap, per-file alarm); a child that dies marks its case
    ``crash`` and a new child goes on with the next case. Returns one result dict per case, in order."""
    script = CHILD.replace("EXTRA_GIB", repr(extra_gib)).replace("TIMEOUT", str(int(timeout)))
    by_index = {case.index: case for case in cases}
    results: dict[int, dict[str, Any]] = {}
    pending = [case.index for case in cases]
    while pending:
        lines = "".join(json.dumps({"index": i, "path": str(by_index[i].path)}) + "\n" for i in pending)
        try:
            done = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(script)], input=lines, capture_output=True, text=True,
                timeout=30 + len(pending) * (timeout + 1), check=False,
            )
            stdout, returncode, stderr = done.stdout, done.returncode, done.stderr
        except subprocess.TimeoutExpired as exc:  # the alarm could not interrupt a reader (stuck in C code)
            out = exc.stdout or b""
            stdout, returncode, stderr = out.decode() if isinstance(out, bytes) else out, -9, "killed"
        started = None
        for line in stdout.splitlines():
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                results[record["index"]] = record
                started = None
        if started is not None:  # the child died reading this case
            results[started] = {"index": started, "outcome": "crash", "warnings": [], "seconds": None,
                                "detail": f"exit code {returncode}: {stderr.strip()[-300:]}"}
        elif returncode != 0 and len(results) == 0:
            raise RuntimeError(f"the fuzz child failed before reading any file:\n{stderr[-2000:]}")
        pending = [i for i in pending if i not in results]
    return [dict(results[case.index], seed=case.seed, mutation=case.mutation, file=case.path.name) for case in cases]


def summarise(results: list[dict[str, Any]]) -> dict[str, int]:
    """Counts per outcome."""
    counts: dict[str, int] = {}
    for result in results:
        counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
    return counts
