"""The npe2 reader and writers (Qt-free functions): geometry in, aligned NIfTI out, no silent overwrite, no
patient identifiers, provenance sidecars."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_attribution import _napari_io as nio
from napari_attribution.io import Geometry, read_nifti, write_nifti
from napari_attribution.layers import OWNER_KEY

nib = pytest.importorskip("nibabel")


def scan(path: Path, data: np.ndarray | None = None) -> tuple[Path, np.ndarray, Geometry]:
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) if data is None else data
    geometry = Geometry(spacing=(3.0, 0.7, 0.6), origin=(-20.0, 10.0, 5.5))
    return write_nifti(path, data, geometry), data, geometry


def test_reader_accepts_nifti_dicom_and_dicom_folders_only(tmp_path: Path) -> None:
    p, _, _ = scan(tmp_path / "ct.nii.gz")
    assert nio.get_reader(str(p)) is nio.read
    assert nio.get_reader(str(tmp_path / "x.nii")) is nio.read
    assert nio.get_reader(str(tmp_path / "photo.png")) is None
    empty = tmp_path / "folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("no dicom here")
    assert nio.get_reader(str(empty)) is None
    assert nio.get_reader([str(p), str(tmp_path / "photo.png")]) is None


def test_reader_places_the_layer_by_the_scan_geometry(tmp_path: Path) -> None:
    p, data, g = scan(tmp_path / "ct.nii.gz")
    [(out, kwargs, kind)] = nio.read(str(p))
    assert kind == "image" and kwargs["name"] == "ct"
    np.testing.assert_array_equal(out, data)
    np.testing.assert_allclose(kwargs["scale"], g.spacing, rtol=1e-6)
    np.testing.assert_allclose(kwargs["translate"], g.origin, rtol=1e-6)
    assert np.asarray(kwargs["metadata"]["original_affine"]).shape == (4, 4)
    json.dumps(kwargs["metadata"])


def test_integer_masks_open_as_labels(tmp_path: Path) -> None:
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 2:4, 2:5] = 2
    p, _, _ = scan(tmp_path / "seg.nii.gz", mask)
    [(out, _kwargs, kind)] = nio.read(str(p))
    assert kind == "labels" and out.max() == 2


def test_writer_round_trip_keeps_the_original_affine(tmp_path: Path) -> None:
    src = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"  # oblique affine
    data, _g, meta = read_nifti(src, volume=0)
    [(arr, kwargs, _)] = [(data, {"metadata": meta, "scale": [1, 1, 1], "name": "ex"}, "image")]
    written = nio.write_image(str(tmp_path / "out.nii.gz"), arr, kwargs)
    assert written == [str(tmp_path / "out.nii.gz")]
    back = nib.load(written[0])
    np.testing.assert_allclose(back.affine, np.asarray(meta["original_affine"]), atol=1e-5)
    data2, _, _ = read_nifti(written[0])
    np.testing.assert_allclose(data2, data, rtol=1e-6)


def test_writer_uses_layer_geometry_without_original_affine(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    meta = {"scale": [2.0, 0.5, 0.25], "translate": [1.0, -2.0, 3.0], "metadata": {}, "name": "m"}
    [path] = nio.write_image(str(tmp_path / "m.nii"), data, meta)
    [(back, kwargs, _)] = nio.read(path)
    np.testing.assert_allclose(back, data)
    np.testing.assert_allclose(kwargs["scale"], meta["scale"], rtol=1e-6)
    np.testing.assert_allclose(kwargs["translate"], meta["translate"], rtol=1e-6)


def test_read_write_read_is_aligned(tmp_path: Path) -> None:
    p, data, g = scan(tmp_path / "ct.nii.gz")
    [(arr, kwargs, _)] = nio.read(str(p))
    [path] = nio.write_image(str(tmp_path / "copy.nii.gz"), arr, kwargs)
    np.testing.assert_allclose(nib.load(path).affine, nib.load(str(p)).affine, atol=1e-6)


def test_writer_never_overwrites_silently(tmp_path: Path) -> None:
    p, data, _ = scan(tmp_path / "ct.nii.gz")
    before = p.read_bytes()
    with pytest.warns(UserWarning, match="exists and was kept"):
        written = nio.write_image(str(p), data * 2, {"metadata": {}, "name": "ct"})
    assert written == [str(tmp_path / "ct-2.nii.gz")]
    assert p.read_bytes() == before


def test_heatmap_gets_a_provenance_sidecar(tmp_path: Path) -> None:
    info = {"role": "heatmap", "method": "grad_cam", "provenance": {"model_sha256": "f" * 64, "seed": 0}}
    meta = {"metadata": {OWNER_KEY: info, "PatientName": "Doe^Jane"}, "name": "grad_cam · lesion · ct"}
    written = nio.write_image(str(tmp_path / "heat.nii.gz"), np.zeros((2, 3, 4), np.float32), meta)
    assert [Path(w).name for w in written] == ["heat.nii.gz", "heat.json"]
    side = json.loads(Path(written[1]).read_text())
    assert side["napari_attribution"]["provenance"]["model_sha256"] == "f" * 64
    assert "Doe" not in Path(written[1]).read_text()


def test_labels_writer(tmp_path: Path) -> None:
    labels = np.zeros((3, 4, 5), np.int32)
    labels[1, 1, 1] = 7
    [path] = nio.write_labels(str(tmp_path / "lab"), labels, {"scale": [1, 1, 1], "metadata": {}})
    assert path.endswith("lab.nii.gz")
    assert np.asarray(nib.load(path).dataobj)[1, 1, 1] == 7


def test_dicom_file_has_no_patient_identifiers(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(src)
    patient = str(ds.PatientName)
    assert nio.get_reader(str(src)) is nio.read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [(data, kwargs, kind)] = nio.read(str(src))
    assert kind == "image" and data.ndim == 2 and kwargs["name"] == "CT_small"
    text = json.dumps(kwargs)
    assert patient and patient not in text and str(ds.PatientID) not in text
    assert kwargs["metadata"]["units"] == "HU"


def test_dicom_folder_is_recognised(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "IM0001")
    assert nio.get_reader(str(folder)) is nio.read


def test_heatmap_and_sidecar_keep_one_name_and_a_race_loses_nothing(tmp_path: Path) -> None:
    """A sidecar already there (heat.json) moves both files to heat-2; eight threads saving to one name get eight
    different names, each heatmap with its own sidecar, none replaced."""
    import threading

    info = {"role": "heatmap", "method": "saliency", "provenance": {"seed": 0}}
    (tmp_path / "heat.json").write_text("notes")
    with pytest.warns(UserWarning, match="saved as 'heat-2.nii.gz'"):
        written = nio.write_image(str(tmp_path / "heat.nii.gz"), np.zeros((2, 3, 4), np.float32),
                                  {"metadata": {OWNER_KEY: info}, "name": "h"})
    assert [Path(w).name for w in written] == ["heat-2.nii.gz", "heat-2.json"]
    assert (tmp_path / "heat.json").read_text() == "notes"

    race = tmp_path / "race"
    race.mkdir()
    start = threading.Barrier(8)
    got: dict[int, list[str]] = {}
    failed: list[BaseException] = []

    def save(k: int) -> None:
        meta = {"metadata": {OWNER_KEY: {**info, "provenance": {"seed": k}}}, "name": f"h{k}"}
        start.wait()
        try:
            got[k] = nio.write_image(str(race / "heat.nii.gz"), np.full((2, 3, 4), k, np.float32), meta)
        except BaseException as err:  # noqa: BLE001 - reported below
            failed.append(err)

    threads = [threading.Thread(target=save, args=(k,)) for k in range(8)]
    with warnings.catch_warnings():  # here, not in the threads: the filters are process-wide
        warnings.simplefilter("ignore", UserWarning)  # "exists and was kept" for all but one
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failed
    assert len({w[0] for w in got.values()}) == 8
    for k, (heat, side) in got.items():  # each name holds the data and the provenance of the thread that got it
        assert np.all(read_nifti(heat)[0] == k)
        assert json.loads(Path(side).read_text())["napari_attribution"]["provenance"]["seed"] == k
        assert Path(side).name == Path(heat).name.replace(".nii.gz", ".json")
    assert len(list(race.iterdir())) == 16


# ---------------------------------------------------------------------------------------------- a hidden heatmap


def _hidden_heatmap() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A signed map with values everywhere, its layer tuple hidden outside a 'body' (the docks' display)."""
    from napari_attribution import Attribution
    from napari_attribution import layers as L
    from napari_attribution.targets import Class

    raw = np.random.default_rng(3).normal(size=(4, 5, 6)).astype(np.float32)
    body = np.zeros(raw.shape, bool)
    body[1:3, 1:4, 1:5] = True
    att = Attribution(raw, "occlusion", Class(1), None, {"window": 2}, True, 0.1)
    shown, kwargs, _ = L.display_heatmap(L.attribution_layer(att, source="ct"), mask=body, mask_note="the body")
    assert np.isnan(shown[~body]).all() and np.isfinite(raw).all()
    return raw, shown, {**kwargs, "scale": [1.0, 1.0, 1.0]}


def test_a_heatmap_hidden_outside_the_body_is_saved_with_every_value(tmp_path: Path) -> None:
    """The layer shows NaN outside the body; the file holds the full map (nothing the display hid is lost), and
    the sidecar names the mask the viewer used and says the file keeps the values it hid."""
    raw, shown, meta = _hidden_heatmap()
    written = nio.write_image(str(tmp_path / "heat.nii.gz"), shown, meta)
    [(back, _, _)] = nio.read(written[0])
    np.testing.assert_array_equal(back, raw)  # outside the body too
    text = Path(written[1]).read_text()
    mask = json.loads(text)["napari_attribution"]["display_mask"]
    assert mask["region"] == "the body" and mask["voxels_inside"] == 24
    assert mask["saved"].startswith("the full map") and "outside the body" in mask["saved"]
    assert len(text) < 20_000  # the full map is in the NIfTI file, not in the sidecar


def test_a_hidden_heatmap_without_its_full_map_is_saved_as_shown_and_says_so(tmp_path: Path) -> None:
    from napari_attribution.layers import FULL_MAP_KEY

    raw, shown, meta = _hidden_heatmap()
    md = dict(meta["metadata"])
    del md[FULL_MAP_KEY]  # e.g. metadata that went through a file
    with pytest.warns(UserWarning, match="saved as shown, NaN outside the body"):
        written = nio.write_image(str(tmp_path / "heat.nii.gz"), shown, {**meta, "metadata": md})
    [(back, _, _)] = nio.read(written[0])
    np.testing.assert_array_equal(np.isnan(back), np.isnan(shown))
    mask = json.loads(Path(written[1]).read_text())["napari_attribution"]["display_mask"]
    assert mask["saved"].startswith("as shown in the viewer")
