"""Helpers for the io tests: real files shipped in the nibabel / pydicom wheels, and synthetic DICOM series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
LPS_TO_RAS3 = np.diag([-1.0, -1.0, 1.0])


def bundled_dicom(name: str) -> Path:
    """A file of pydicom's wheel (only names that ship inside it: this never downloads)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return Path(path)


def rotation(a: float, b: float, c: float) -> npt.NDArray[np.float64]:
    """A proper 3-D rotation from three angles (radians)."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


@dataclass
class Series:
    """What a synthetic series was built from (LPS, DICOM conventions)."""

    folder: Path
    row: npt.NDArray[np.float64]  # direction of increasing column index
    col: npt.NDArray[np.float64]  # direction of increasing row index
    normal: npt.NDArray[np.float64]
    origin: npt.NDArray[np.float64]  # IPP of the lowest slice
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    positions: list[float]  # offsets along the normal, in slice order
    hu: npt.NDArray[np.float32]  # expected (k, rows, cols) HU, sorted by position

    def lps(self, k: int, r: int, c: int) -> npt.NDArray[np.float64]:
        """LPS position of pixel (row r, column c) of the k-th slice by position."""
        return (
            self.origin
            + self.positions[k] * self.normal
            + c * self.pixel_spacing[1] * self.row
            + r * self.pixel_spacing[0] * self.col
        )

    def ras_zyx(self, k: int, r: int, c: int) -> npt.NDArray[np.float64]:
        """The same point in (z, y, x)-ordered RAS, the package's world frame."""
        return (LPS_TO_RAS3 @ self.lps(k, r, c))[::-1]


def raw_slice(k: int, shape: tuple[int, int]) -> npt.NDArray[np.int16]:
    """Stored values of slice k: 100 * k + row index, so slice order and row axis can be checked."""
    rows = np.arange(shape[0], dtype=np.int16)[:, np.newaxis]
    return np.broadcast_to(100 * k + rows, shape).astype(np.int16)


def write_series(
    folder: Path,
    positions: Sequence[float] = (0.0, 2.5, 5.0, 7.5, 10.0, 12.5),
    *,
    orientation: npt.NDArray[np.float64] | None = None,
    origin: Sequence[float] = (-120.0, -95.0, 40.0),
    instance_numbers: Sequence[int] | None = None,
    series_uid: str | None = None,
    series_number: int = 7,
    description: str = "synthetic",
    prefix: str = "img",
) -> Series:
    """Write copies of CT_small.dcm as a series with the given slice offsets along the normal."""
    folder.mkdir(parents=True, exist_ok=True)
    matrix = np.eye(3) if orientation is None else orientation
    row, col = matrix[:, 0], matrix[:, 1]
    normal = np.cross(row, col)
    origin_arr = np.asarray(origin, dtype=np.float64)
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, len(positions) + 1))
    uid = series_uid or generate_uid()
    template = bundled_dicom("CT_small.dcm")
    shape = (0, 0)
    pixel_spacing = (0.0, 0.0)
    slope = intercept = 0.0
    for k, offset in enumerate(positions):
        ds = pydicom.dcmread(template)
        shape = (int(ds.Rows), int(ds.Columns))
        pixel_spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin_arr + offset * normal]
        ds.InstanceNumber = numbers[k]
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = raw_slice(k, shape).tobytes()
        ds.save_as(folder / f"{prefix}{numbers[k]:04d}.dcm")
    order = np.argsort(positions, kind="stable")
    hu = np.stack([raw_slice(int(k), shape) * slope + intercept for k in order]).astype(np.float32)
    return Series(folder, row, col, normal, origin_arr, pixel_spacing, sorted(float(p) for p in positions), hu)
