"""NIfTI: real files from nibabel's wheel, write/read round trips, overwrite protection."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _io_helpers import rotation

from napari_attribution._errors import ReaderError
from napari_attribution.io import Geometry, read_nifti, write_nifti


def reversed_affine(affine: np.ndarray) -> np.ndarray:
    order = [2, 1, 0, 3]
    return np.asarray(affine)[np.ix_(order, order)]


def oblique_geometry() -> Geometry:
    direction = rotation(0.35, -0.25, 0.6) @ np.diag([-1.0, 1.0, 1.0])
    return Geometry(spacing=(3.2, 0.9, 0.75), origin=(-61.5, 104.25, -12.0), direction=direction.tolist())


def test_anatomical_data_axes_and_world(anatomical: Path) -> None:
    image = nib.load(anatomical)
    reference = np.asanyarray(image.dataobj)
    data, geometry, meta = read_nifti(anatomical)
    assert reference.shape == (33, 41, 25)
    assert data.shape == (25, 41, 33)
    assert data.flags.c_contiguous
    assert data[3, 17, 29] == reference[29, 17, 3]
    np.testing.assert_array_equal(data, reference.transpose(2, 1, 0))
    assert geometry.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(geometry.affine(), reversed_affine(image.affine))
    # the same voxel, through nibabel's (x, y, z) affine and through ours in (z, y, x) order
    world_xyz = image.affine @ np.array([29, 17, 3, 1.0])
    np.testing.assert_allclose(geometry.index_to_world([3, 17, 29]), world_xyz[2::-1])
    assert meta["original_affine"] == image.affine.tolist()
    assert meta["format"] == "nifti1" and meta["spatial_units"] == "mm"
    assert "channel_axis" not in meta
    assert "descrip" not in meta and "db_name" not in meta


def test_example4d_channels_and_volume(example4d: Path) -> None:
    image = nib.load(example4d)
    reference = np.asanyarray(image.dataobj)
    data, geometry, meta = read_nifti(example4d)
    assert data.shape == (2, 24, 96, 128)
    assert meta["channel_axis"] == 0 and meta["n_volumes"] == 2
    np.testing.assert_array_equal(data, reference.transpose(3, 2, 1, 0))
    assert geometry.ndim == 3 and geometry.direction is not None  # oblique
    np.testing.assert_allclose(geometry.affine(), reversed_affine(image.affine), atol=1e-9)

    one, geometry_one, meta_one = read_nifti(example4d, volume=1)
    assert one.shape == (24, 96, 128)
    np.testing.assert_array_equal(one, reference[..., 1].T)
    assert meta_one["volume"] == 1 and "channel_axis" not in meta_one
    assert geometry_one == geometry
    with pytest.raises(ReaderError, match="out of range"):
        read_nifti(example4d, volume=2)


def test_canonical_reorientation(anatomical: Path, tmp_path: Path) -> None:
    data, geometry, meta = read_nifti(anatomical, canonical=True)
    plain, plain_geometry, _ = read_nifti(anatomical)
    assert geometry.direction is None  # RAS+ axes: no flip left
    np.testing.assert_array_equal(data, plain[:, :, ::-1])
    np.testing.assert_allclose(geometry.index_to_world([0, 0, 0]), plain_geometry.index_to_world([0, 0, 32]))
    # the kept affine matches the reoriented array, so writing back still lines up with the source
    np.testing.assert_allclose(reversed_affine(meta["original_affine"]), geometry.affine())
    out = write_nifti(tmp_path / "c.nii", data, original_affine=meta["original_affine"])
    np.testing.assert_array_equal(nib.as_closest_canonical(nib.load(anatomical)).get_fdata(), nib.load(out).get_fdata())


def test_round_trip_oblique_anisotropic_flipped(tmp_path: Path) -> None:
    geometry = oblique_geometry()
    data = np.random.default_rng(0).normal(size=(5, 7, 6)).astype(np.float32)
    path = write_nifti(tmp_path / "map.nii.gz", data, geometry)
    back, back_geometry, meta = read_nifti(path)
    np.testing.assert_array_equal(back, data)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back_geometry.spacing, geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(back_geometry.origin, geometry.origin, rtol=1e-6)
    np.testing.assert_allclose(back_geometry.direction_matrix, geometry.direction_matrix, atol=1e-6)
    # what other tools see: the file's (x, y, z) affine is ours with both axis orders reversed
    np.testing.assert_allclose(nib.load(path).affine, reversed_affine(geometry.affine()), atol=1e-5)
    assert meta["sform_code"] == 1 and meta["qform_code"] == 1
    # rewriting what was read is exact
    again = write_nifti(tmp_path / "again.nii", back, back_geometry)
    assert np.array_equal(nib.load(again).affine, nib.load(path).affine)


def test_write_back_with_original_affine_is_exact(tmp_path: Path, example4d: Path) -> None:
    data, geometry, meta = read_nifti(example4d, volume=0)
    heatmap = np.linspace(0, 1, data.size, dtype=np.float32).reshape(data.shape)
    out = write_nifti(tmp_path / "heat.nii.gz", heatmap, geometry, original_affine=meta["original_affine"])
    written = nib.load(out)
    assert np.array_equal(written.affine, nib.load(example4d).affine)
    assert written.shape == (128, 96, 24)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), heatmap.T)
    # geometry alone gives the same file affine (to the float32 that NIfTI-1 stores)
    out2 = write_nifti(tmp_path / "heat2.nii.gz", heatmap, geometry)
    np.testing.assert_allclose(nib.load(out2).affine, written.affine, rtol=0, atol=1e-5)


def test_original_affine_wins_and_warns_on_mismatch(tmp_path: Path, anatomical: Path) -> None:
    data, _, meta = read_nifti(anatomical)
    other = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    with pytest.warns(UserWarning, match="original_affine is written"):
        out = write_nifti(tmp_path / "x.nii", data, other, original_affine=meta["original_affine"])
    assert np.array_equal(nib.load(out).affine, nib.load(anatomical).affine)


def test_2d_round_trip(tmp_path: Path) -> None:
    geometry = Geometry(spacing=(0.5, 0.25), origin=(12.0, -3.0))
    data = np.arange(12, dtype=np.int16).reshape(3, 4)
    back, back_geometry, _ = read_nifti(write_nifti(tmp_path / "slice.nii", data, geometry))
    np.testing.assert_array_equal(back, data)
    assert back_geometry == geometry


def test_channels_round_trip(tmp_path: Path) -> None:
    geometry = Geometry(spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    data = np.random.default_rng(1).random((3, 4, 5, 6))
    back, back_geometry, meta = read_nifti(write_nifti(tmp_path / "c.nii.gz", data, geometry))
    assert meta["channel_axis"] == 0
    np.testing.assert_array_equal(back, data)
    assert back_geometry == geometry


def test_dtypes_are_made_portable(tmp_path: Path) -> None:
    mask = np.zeros((2, 3, 4), dtype=bool)
    mask[1, 2, 3] = True
    back, _, _ = read_nifti(write_nifti(tmp_path / "mask.nii.gz", mask))
    assert back.dtype == np.uint8 and back[1, 2, 3] == 1 and back.sum() == 1
    labels, _, _ = read_nifti(write_nifti(tmp_path / "labels.nii.gz", mask.astype(np.int64) * 7))
    assert labels.dtype == np.int32 and labels.max() == 7


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "out.nii.gz"
    write_nifti(path, np.zeros((2, 2, 2), np.float32))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_nifti(path, np.ones((2, 2, 2), np.float32))
    assert read_nifti(path)[0].sum() == 0
    write_nifti(path, np.ones((2, 2, 2), np.float32), overwrite=True)
    assert read_nifti(path)[0].sum() == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]  # no temporary file left


@pytest.mark.parametrize(
    ("name", "data", "geometry", "match"),
    [
        ("out.nrrd", np.zeros((2, 2, 2)), None, ".nii or .nii.gz"),
        ("out.nii", np.zeros((2, 2, 2, 2)), Geometry((1.0, 1.0), (0.0, 0.0)), "geometry is 2-D"),
        ("out.nii", np.zeros(5), None, "got shape"),
        ("out.nii", np.array([["a"]]), None, "dtype"),
    ],
)
def test_write_rejects_bad_input(
    tmp_path: Path, name: str, data: np.ndarray, geometry: Geometry | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        write_nifti(tmp_path / name, data, geometry)
    assert not any(tmp_path.iterdir())


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.nii"
    path.write_bytes(b"")
    with pytest.raises(ReaderError, match="empty.nii"):
        read_nifti(path)


def test_truncated_files(tmp_path: Path, anatomical: Path) -> None:
    raw = anatomical.read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReaderError, match="truncated"):
        read_nifti(cut)
    header_only = tmp_path / "header.nii"
    header_only.write_bytes(raw[:200])
    with pytest.raises(ReaderError):
        read_nifti(header_only)
    compressed = gzip.compress(raw)
    cut_gz = tmp_path / "cut.nii.gz"
    cut_gz.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ReaderError, match="truncated"):
        read_nifti(cut_gz)


def test_garbage_and_missing(tmp_path: Path) -> None:
    garbage = tmp_path / "noise.nii.gz"
    garbage.write_bytes(np.random.default_rng(2).bytes(4000))
    with pytest.raises(ReaderError, match="noise.nii.gz"):
        read_nifti(garbage)
    with pytest.raises(ReaderError, match="No such file"):
        read_nifti(tmp_path / "absent.nii")
