"""read_image dispatch, stack_channels, the public names and the lazy imports."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _io_helpers import write_series

import napari_attribution.io as nio
from napari_attribution._errors import AttributionError, ReaderError
from napari_attribution.io import Geometry, read_image, read_nifti, stack_channels, write_nifti

EXPECTED_NAMES = {
    "SUPPORTED_FORMATS",
    "Geometry",
    "MissingDependencyError",
    "ReaderWarning",
    "read_dicom",
    "read_image",
    "read_nifti",
    "stack_channels",
    "write_nifti",
}


def test_public_names() -> None:
    assert set(nio.__all__) == EXPECTED_NAMES
    assert nio.__all__ == sorted(nio.__all__)
    for name in nio.__all__:
        assert getattr(nio, name) is not None


def test_import_is_lazy_and_qt_free() -> None:
    code = (
        "import sys, napari_attribution.io as m; "
        "print(sorted(k for k in ('nibabel', 'pydicom', 'qtpy', 'napari', 'magicgui') if k in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_missing_dependency_has_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "nibabel", None)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    (tmp_path / "x.nii").write_bytes(b"")
    with pytest.raises(nio.MissingDependencyError, match="pip install nibabel") as info:
        read_nifti(tmp_path / "x.nii")
    assert isinstance(info.value, ReaderError) and isinstance(info.value, ImportError)
    (tmp_path / "x.dcm").write_bytes(b"")
    with pytest.raises(ImportError, match="pip install pydicom"):
        nio.read_dicom(tmp_path / "x.dcm")


def test_dispatch_by_extension(tmp_path: Path, anatomical: Path, example4d: Path, ct_small: Path) -> None:
    data, geometry, meta = read_image(anatomical)
    assert meta["format"] == "nifti1" and data.shape == (25, 41, 33)
    one, _, _ = read_image(example4d, volume=0)
    assert one.shape == (24, 96, 128)
    ct, _, ct_meta = read_image(ct_small)
    assert ct_meta["format"] == "dicom" and ct.shape == (128, 128)
    series = write_series(tmp_path / "series", positions=[0.0, 2.0, 4.0])
    volume, _, series_meta = read_image(series.folder)
    assert volume.shape == (3, 128, 128) and series_meta["format"] == "dicom"


def test_dispatch_by_content(tmp_path: Path, anatomical: Path, ct_small: Path) -> None:
    dicom_no_ext = tmp_path / "IM0001"
    shutil.copy(ct_small, dicom_no_ext)
    assert read_image(dicom_no_ext)[2]["modality"] == "CT"
    nifti_other_name = tmp_path / "scan.bin"
    shutil.copy(anatomical, nifti_other_name)
    reference = read_nifti(anatomical)
    data, geometry, _ = read_image(nifti_other_name)
    np.testing.assert_array_equal(data, reference[0])
    assert geometry == reference[1]
    gz_other_name = tmp_path / "scan.gz"
    gz_other_name.write_bytes(gzip.compress(anatomical.read_bytes()))
    np.testing.assert_array_equal(read_image(gz_other_name)[0], reference[0])


@pytest.mark.parametrize("name", ["notes.txt", "empty.bin", "image.png", "scan.mha"])
def test_unsupported_files_raise_reader_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else b"\x89PNG\r\n\x1a\n not really an image" * 40)
    with pytest.raises(ReaderError, match=r"Supported: NIfTI \(\.nii, \.nii\.gz\)"):
        read_image(path)


def test_missing_path_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ReaderError, match="No such file"):
        read_image(tmp_path / "absent.nii.gz")
    for name in ("bad.nii.gz", "bad.nii", "bad.dcm"):
        (tmp_path / name).write_bytes(b"\x00" * 10)
        with pytest.raises(AttributionError):
            read_image(tmp_path / name)


def test_stack_channels(tmp_path: Path) -> None:
    geometry = Geometry(spacing=(3.0, 1.0, 1.0), origin=(-10.0, 20.0, 5.0))
    t1 = np.zeros((4, 5, 6), np.float32)
    t2 = np.ones((4, 5, 6), np.int16)
    # the same geometry after a NIfTI round trip (float32 in the file) still counts as aligned
    t2_read, t2_geometry, _ = read_nifti(write_nifti(tmp_path / "t2.nii.gz", t2, geometry))
    data, stacked_geometry = stack_channels([(t1, geometry), (t2_read, t2_geometry)])
    assert data.shape == (2, 4, 5, 6) and data.dtype == np.float32
    np.testing.assert_array_equal(data[1], 1)
    assert stacked_geometry == geometry


def test_stack_channels_rejects_mismatch() -> None:
    geometry = Geometry(spacing=(3.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    volume = np.zeros((4, 5, 6))
    with pytest.raises(ReaderError, match="shape"):
        stack_channels([(volume, geometry), (np.zeros((4, 5, 7)), geometry)])
    shifted = Geometry(spacing=(3.0, 1.0, 1.0), origin=(0.0, 0.5, 0.0))
    with pytest.raises(ReaderError, match="not aligned"):
        stack_channels([(volume, geometry), (volume, shifted)])
    rescaled = Geometry(spacing=(3.0, 1.02, 1.0), origin=(0.0, 0.0, 0.0))
    with pytest.raises(ReaderError, match="not aligned"):
        stack_channels([(volume, geometry), (volume, rescaled)])
    rotated = Geometry(spacing=(3.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.diag([1.0, -1.0, -1.0]))
    with pytest.raises(ReaderError, match="not aligned"):
        stack_channels([(volume, geometry), (volume, rotated)])
    with pytest.raises(ReaderError, match="at least one"):
        stack_channels([])
    with pytest.raises(ReaderError, match="3-D"):
        stack_channels([(np.zeros((5, 6)), geometry)])
    nearly = Geometry(spacing=(3.0, 1.0, 1.0), origin=(0.0, 0.001, 0.0))
    assert stack_channels([(volume, geometry), (volume, nearly)])[0].shape == (2, 4, 5, 6)
