"""DICOM: real files from pydicom's wheel and synthetic series built from CT_small.dcm."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from _io_helpers import LPS_TO_RAS3, bundled_dicom, rotation, write_series

from napari_attribution._errors import ReaderError
from napari_attribution.io import Geometry, ReaderWarning, read_dicom, read_nifti

OBLIQUE = rotation(0.3, 0.2, -0.4)
ALLOWED_KEYS = {
    "format",
    "modality",
    "series_number",
    "rescale_slope",
    "rescale_intercept",
    "rescale_type",
    "units",
    "spacing",
    "slice_thickness",
    "photometric_interpretation",
    "original_lps_affine",
    "original_affine",
    "n_files",
    "world",
    "axis_order",
    "warnings",
    "channel_axis",
}


def read_quietly(path: Path, **options: Any) -> tuple[np.ndarray, Geometry, dict[str, Any]]:
    """read_dicom, failing the test if any ReaderWarning is emitted."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReaderWarning)
        return read_dicom(path, **options)


def assert_no_patient_data(meta: dict[str, Any], source: Path) -> None:
    ds = pydicom.dcmread(source)
    assert set(meta) <= ALLOWED_KEYS
    text = repr(meta)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword, "") or "")
        if value:
            assert value not in text, keyword


def test_ct_small_hounsfield_units(ct_small: Path) -> None:
    data, geometry, meta = read_quietly(ct_small)
    assert data.shape == (128, 128) and data.dtype == np.float32
    assert -910 < data.min() < -880 and 1150 < data.max() < 1180  # about -900 .. 1170 HU
    raw = pydicom.dcmread(ct_small).pixel_array
    np.testing.assert_array_equal(data, raw.astype(np.float32) - 1024)
    assert meta["modality"] == "CT" and meta["units"] == "HU"
    assert meta["rescale_slope"] == 1.0 and meta["rescale_intercept"] == -1024.0
    assert geometry.spacing == pytest.approx((0.661468, 0.661468))
    # pixel (row 5, column 9): LPS = IPP + 9 * dx * row_cosine + 5 * dy * column_cosine, then RAS, reversed
    ipp = np.array([-158.135803, -179.035797, -75.699997])
    lps = ipp + 9 * 0.661468 * np.array([1.0, 0, 0]) + 5 * 0.661468 * np.array([0, 1.0, 0])
    np.testing.assert_allclose(geometry.index_to_world([5, 9]), (LPS_TO_RAS3 @ lps)[:2][::-1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(meta["original_lps_affine"])[:3, 3], ipp)
    assert_no_patient_data(meta, ct_small)


def test_mr_small_keeps_stored_values(mr_small: Path) -> None:
    data, geometry, meta = read_quietly(mr_small)
    assert data.shape == (64, 64) and data.dtype == np.int16
    np.testing.assert_array_equal(data, pydicom.dcmread(mr_small).pixel_array)
    assert meta["modality"] == "MR" and meta["units"] == ""
    assert geometry.spacing == pytest.approx((0.3125, 0.3125))
    assert_no_patient_data(meta, mr_small)


def test_series_sorted_by_position_not_instance_number(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", orientation=OBLIQUE, instance_numbers=[4, 2, 6, 1, 3, 5])
    data, geometry, meta = read_quietly(series.folder)
    assert data.shape == (6, 128, 128) and data.dtype == np.float32
    np.testing.assert_array_equal(data, series.hu)
    # spacing from the positions (2.5 mm), not SliceThickness (5 mm in CT_small)
    assert geometry.spacing == pytest.approx((2.5, 0.661468, 0.661468), abs=1e-5)
    assert meta["slice_thickness"] == 5.0 and meta["n_files"] == 6 and meta["warnings"] == []
    for index in [(0, 0, 0), (3, 10, 20), (5, 127, 64)]:
        np.testing.assert_allclose(geometry.index_to_world(index), series.ras_zyx(*index), atol=1e-4)
    assert_no_patient_data(meta, next(series.folder.iterdir()))


def test_descending_positions_are_reversed(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", positions=[12.5, 10.0, 7.5, 5.0, 2.5, 0.0])
    data, geometry, _ = read_quietly(series.folder)
    np.testing.assert_array_equal(data, series.hu)
    assert data[0, 0, 0] == series.hu[0, 0, 0]
    np.testing.assert_allclose(geometry.index_to_world((1, 0, 0)), series.ras_zyx(1, 0, 0), atol=1e-4)


def test_missing_slice_warns(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", positions=[0.0, 2.5, 5.0, 10.0, 12.5, 15.0])
    with pytest.warns(ReaderWarning, match="Missing slices") as record:
        data, geometry, meta = read_dicom(series.folder)
    assert len(record) == 1
    assert data.shape[0] == 6 and geometry.spacing[0] == pytest.approx(2.5, abs=1e-5)
    assert meta["warnings"] == [str(record[0].message)]
    assert "1 slice(s) missing" in meta["warnings"][0]


def test_uneven_spacing_warns(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", positions=[0.0, 2.5, 5.2, 7.5, 10.0])
    with pytest.warns(ReaderWarning, match="Uneven slice spacing"):
        _, _, meta = read_dicom(series.folder)
    assert len(meta["warnings"]) == 1


def test_duplicate_positions_warn(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", positions=[0.0, 2.5, 2.5, 5.0])
    with pytest.warns(ReaderWarning, match="share a position"):
        data, _, _ = read_dicom(series.folder)
    assert data.shape[0] == 3


def test_mixed_series_reads_largest_and_warns(tmp_path: Path) -> None:
    write_series(tmp_path / "study" / "a", description="axial")
    write_series(tmp_path / "study" / "b", positions=[0.0, 3.0, 6.0], series_number=8, description="scout", prefix="b")
    with pytest.warns(ReaderWarning, match="Mixed series") as record:
        data, _, meta = read_dicom(tmp_path / "study")
    message = str(record[0].message)
    assert "series 7 with 6 file(s)" in message and "series 8: 3 file(s)" in message
    assert "axial" not in message and "scout" not in message  # free text stays out of warnings
    assert data.shape[0] == 6 and meta["series_number"] == 7

    other, geometry, meta_b = read_quietly(tmp_path / "study", series=8)
    assert other.shape[0] == 3 and meta_b["series_number"] == 8
    assert geometry.spacing[0] == pytest.approx(3.0, abs=1e-5)
    with pytest.raises(ReaderError, match="series 7"):
        read_dicom(tmp_path / "study", series=99)


def test_dicom_and_nifti_of_the_same_scan_line_up(tmp_path: Path) -> None:
    """The same synthetic series as DICOM and as NIfTI (written with nibabel directly) agree voxel by voxel."""
    series = write_series(tmp_path / "dicom", orientation=OBLIQUE, positions=[0.0, 3.0, 6.0, 9.0])
    # NIfTI: nibabel array (column, row, slice), affine to RAS built from the DICOM geometry by hand
    affine = np.eye(4)
    affine[:3, 0] = LPS_TO_RAS3 @ series.row * series.pixel_spacing[1]
    affine[:3, 1] = LPS_TO_RAS3 @ series.col * series.pixel_spacing[0]
    affine[:3, 2] = LPS_TO_RAS3 @ series.normal * 3.0
    affine[:3, 3] = LPS_TO_RAS3 @ series.origin
    nifti_path = tmp_path / "same.nii.gz"
    nib.save(nib.Nifti1Image(series.hu.transpose(2, 1, 0), affine), nifti_path)

    dicom_data, dicom_geometry, dicom_meta = read_quietly(series.folder)
    nifti_data, nifti_geometry, _ = read_nifti(nifti_path)
    np.testing.assert_array_equal(dicom_data, nifti_data)
    np.testing.assert_allclose(dicom_geometry.affine(), nifti_geometry.affine(), atol=1e-4)
    voxel = (2, 40, 100)
    np.testing.assert_allclose(dicom_geometry.index_to_world(voxel), nifti_geometry.index_to_world(voxel), atol=1e-4)
    np.testing.assert_allclose(dicom_geometry.index_to_world(voxel), series.ras_zyx(*voxel), atol=1e-4)
    # the RAS affine kept for writing back is the NIfTI one
    np.testing.assert_allclose(dicom_meta["original_affine"], affine, atol=1e-4)


def test_non_dicom_files_in_folder_are_ignored(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", positions=[0.0, 2.5, 5.0])
    (series.folder / "README.txt").write_text("exported by some PACS")
    data, _, meta = read_quietly(series.folder)
    assert data.shape[0] == 3 and meta["n_files"] == 3


def test_unreadable_file_in_folder_is_skipped_with_warning(tmp_path: Path, ct_small: Path) -> None:
    series = write_series(tmp_path / "s", positions=[0.0, 2.5, 5.0])
    raw = ct_small.read_bytes()
    (series.folder / "broken.dcm").write_bytes(raw[:300])
    with pytest.warns(ReaderWarning, match="broken.dcm"):
        data, _, _ = read_dicom(series.folder)
    assert data.shape[0] == 3


def test_corrupt_truncated_empty_non_image(tmp_path: Path, ct_small: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(ReaderError, match="not a DICOM file"):
        read_dicom(empty)
    noise = tmp_path / "noise.dcm"
    noise.write_bytes(np.random.default_rng(3).bytes(2000))
    with pytest.raises(ReaderError, match="noise.dcm"):
        read_dicom(noise)
    raw = ct_small.read_bytes()
    for fraction in (0.9, 0.5, 0.1):
        cut = tmp_path / f"cut{fraction}.dcm"
        cut.write_bytes(raw[: int(len(raw) * fraction)])
        with pytest.raises(ReaderError, match="truncated"):
            read_dicom(cut)
    with pytest.raises(ReaderError, match="truncated"):
        read_dicom(bundled_dicom("MR_truncated.dcm"))
    with pytest.raises(ReaderError, match="RT Plan"):
        read_dicom(bundled_dicom("rtplan.dcm"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ReaderError, match="No DICOM images"):
        read_dicom(tmp_path / "nothing")
    with pytest.raises(ReaderError, match="No such file"):
        read_dicom(tmp_path / "absent")
