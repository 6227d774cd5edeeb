"""layers.py without a viewer: colormap by sign, limits, geometry, provenance, names, predictions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_attribution import Attribution
from napari_attribution import layers as L
from napari_attribution._attribution import SliceWise
from napari_attribution.io import Geometry
from napari_attribution.targets import Class, Contrast, ErrorRegion, Predicted, Region, Voxel


def att(data: np.ndarray, signed: bool, **kw: object) -> Attribution:
    base = dict(method="m", target=Class(1), layer=None, params={"seed": 3}, signed=signed, seconds=0.5)
    base.update(kw)
    return Attribution(np.asarray(data, np.float32), **base)  # type: ignore[arg-type]


def test_layers_module_imports_no_qt_and_no_napari() -> None:
    code = ("import sys, napari_attribution.layers, napari_attribution._napari_io; "
            "bad = [m for m in ('qtpy', 'magicgui', 'napari', 'PyQt6', 'PyQt5') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_signed_map_gets_diverging_colormap_and_symmetric_limits() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(0, 1, (8, 8)) + 0.5
    _, kw, kind = L.attribution_layer(att(data, True), source="ct")
    lo, hi = kw["contrast_limits"]
    m = np.percentile(np.abs(data), 99.5)
    assert kind == "image" and lo == -hi and hi == pytest.approx(L.nice_limit(m)) and m <= hi <= 1.43 * m
    assert kw["colormap"]["name"] == L.DIVERGING["name"]
    # the centre of the diverging map is transparent: zero adds nothing over the scan
    centre = [c for c, x in zip(kw["colormap"]["colors"], kw["colormap"]["controls"], strict=True) if x == 0.5]
    assert centre and all(c[3] == 0 for c in centre)
    assert kw["blending"] in ("translucent", "additive") and 0.3 <= kw["opacity"] <= 0.9


def test_unsigned_map_gets_sequential_colormap_from_zero() -> None:
    data = np.abs(np.random.default_rng(1).normal(0, 1, (4, 6, 6)))
    _, kw, _ = L.attribution_layer(att(data, False), source="ct")
    assert kw["colormap"]["name"] == L.SEQUENTIAL["name"]
    assert kw["contrast_limits"][0] == 0.0 and kw["contrast_limits"][1] > 0
    assert kw["colormap"]["colors"][0][3] == 0.0  # low end transparent


def test_raw_data_is_passed_through_unchanged() -> None:
    data = np.array([[1e-7, -3e-7], [np.nan, 0.0]], np.float32)
    out, _, _ = L.attribution_layer(att(data, True))
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize(("data", "signed", "expected"), [
    (np.array([-4.0, 1.0, np.nan]), True, (-4.0, 4.0)),
    (np.zeros(5), True, (-1.0, 1.0)),
    (np.zeros(5), False, (0.0, 1.0)),
    (np.full(4, np.nan), False, (0.0, 1.0)),
    (np.array([2.0, 2.0]), False, (0.0, 2.0)),
])
def test_contrast_limits_edge_cases(data: np.ndarray, signed: bool, expected: tuple[float, float]) -> None:
    assert L.contrast_limits(data, signed, 100) == pytest.approx(expected)


def test_nan_slices_are_ignored_by_limits_and_counted() -> None:
    data = np.full((3, 4, 4), np.nan, np.float32)
    data[1] = np.arange(16).reshape(4, 4)
    one = SliceWise((1,), {1: Class(1)}, {1: "class 1"}, {1: {}})
    _, kw, _ = L.attribution_layer(att(data, False, per_slice=one), percentile=100)
    assert kw["contrast_limits"] == [0.0, 15.0]
    info = kw["metadata"][L.OWNER_KEY]
    assert info["slices"] == [1] and info["explained_fraction"] == pytest.approx(1 / 3)


def test_geometry_comes_from_the_source_layer_or_the_attribution() -> None:
    g = Geometry(spacing=(2.0, 0.5, 0.5), origin=(1.0, 2.0, 3.0))
    a = att(np.zeros((2, 3, 4)), True, geometry=g)
    _, kw, _ = L.attribution_layer(a)
    assert kw["scale"] == [2.0, 0.5, 0.5] and kw["translate"] == [1.0, 2.0, 3.0]
    src = {"scale": [3.0, 1.0, 1.0], "translate": [0.0, -1.0, 5.0], "rotate": np.eye(3)}
    _, kw, _ = L.attribution_layer(a, source_geometry=src)
    assert kw["scale"] == [3.0, 1.0, 1.0] and kw["translate"] == [0.0, -1.0, 5.0]


def test_geometry_of_a_channel_source_is_trimmed_to_the_spatial_axes() -> None:
    src = {"scale": [1.0, 2.0, 0.5, 0.5], "translate": [0.0, 1.0, 2.0, 3.0],
           "affine": np.diag([1.0, 1.0, -1.0, 1.0, 1.0]).tolist()}
    out = L.geometry_kwargs(src, ndim=3)
    assert out["scale"] == [2.0, 0.5, 0.5] and out["translate"] == [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(out["affine"], np.diag([1.0, -1.0, 1.0, 1.0]))


def test_oblique_geometry_uses_rotate_from_geometry() -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    g = Geometry((1.0, 1.0), (0.0, 0.0), ((c, -s), (s, c)))
    out = L.geometry_kwargs(None, g, ndim=2)
    np.testing.assert_allclose(out["rotate"], [[c, -s], [s, c]])


def test_metadata_holds_params_timing_provenance_and_is_json() -> None:
    a = att(np.ones((4, 4)), True, params={"steps": 8, "baseline": np.zeros((4, 4)), "seed": 5},
            extras={"completeness": {"relative_error": 0.001}}, prediction=np.array([0.2, 0.8], np.float32))
    prov = L.provenance(method="m", params=a.params, target=a.target, seconds=a.seconds, model="demo:x",
                        model_sha256="ab" * 32, layer="features", device="cpu", source="ct")
    _, kw, _ = L.attribution_layer(a, source="ct", provenance=prov, class_names=["healthy", "lesion"])
    info = kw["metadata"][L.OWNER_KEY]
    json.dumps(kw["metadata"])  # JSON-safe: the writer stores it as a sidecar
    assert info["params"]["steps"] == 8 and info["seconds"] == 0.5
    assert info["provenance"]["seed"] == 5 and info["provenance"]["model_sha256"] == "ab" * 32
    assert {"torch", "numpy", "python"} <= set(info["provenance"]["versions"])
    assert info["probabilities"] == pytest.approx({"healthy": 0.2, "lesion": 0.8})
    assert info["completeness"]["relative_error"] == 0.001
    assert kw["name"] == "m · lesion · ct"


def test_json_safe_drops_patient_keys() -> None:
    out = L.json_safe({"PatientName": "Doe^John", "patient_id": "123", "modality": "CT", "arr": np.zeros(1000)})
    assert out == {"modality": "CT", "arr": {"array": [1000], "dtype": "float64"}}


@pytest.mark.parametrize(("target", "expected"), [
    (None, "predicted"),
    (1, "lesion"),
    (Class(0), "healthy"),
    (Predicted(1), "predicted lesion"),
    (Contrast(1, 0), "lesion vs healthy"),
    (Voxel(1, (2, 3, 4)), "lesion at (2,3,4)"),
    (Region(1, np.ones((2, 2), bool)), "lesion in region (4 vox)"),
    (ErrorRegion(1, np.ones((2, 2)), "fn"), "lesion FN"),
])
def test_target_label(target: object, expected: str) -> None:
    assert L.target_label(target, ["healthy", "lesion"]) == expected


def test_prediction_layer_for_segmentation_and_slicewise() -> None:
    pred = np.zeros((2, 3, 3), np.int16)
    pred[1, 1, 1] = 2
    a = att(np.zeros((2, 3, 3)), True, prediction=pred)
    data, kw, kind = L.prediction_layer(a, source="ct", model="unet", source_geometry={"scale": [2, 1, 1]})
    assert kind == "labels" and data.dtype == np.int32 and data[1, 1, 1] == 2 and kw["scale"] == [2.0, 1.0, 1.0]
    assert kw["metadata"][L.OWNER_KEY]["voxels_per_label"] == {"0": 17, "2": 1}
    stacked = np.zeros((3, 2, 2), np.int16)  # a slice-wise run's label maps, 0 on the slices not run
    stacked[1] = 1
    sw = att(np.zeros((3, 2, 2)), True, prediction=stacked,
             per_slice=SliceWise((1,), {1: Predicted(1)}, {1: "predicted"}, {1: {}}))
    data, _, _ = L.prediction_layer(sw)
    assert data[1].all() and not data[0].any() and not data[2].any()
    assert L.prediction_layer(att(np.zeros((2, 2)), True, prediction=np.array([0.1, 0.9]))) is None


def test_prediction_layer_names_labels_by_class_one_channel_foreground_is_class_0() -> None:
    pred = np.zeros((2, 3, 3), np.int16)
    pred[1, 1:, 1:] = 1  # a one-channel model's foreground is drawn as 1
    data, kw, _ = L.prediction_layer(att(np.zeros((2, 3, 3)), True, prediction=pred), class_names=["brain"])
    names = kw["metadata"]["label_names"]
    assert (data == pred).all() and names == {1: "brain"}
    assert kw["colormap"][0] == "transparent" and 1 in kw["colormap"]  # background clear, the brain coloured
    multi = pred * 2
    _, kw2, _ = L.prediction_layer(att(np.zeros((2, 3, 3)), True, prediction=multi), class_names=["bg", "a", "b"])
    assert kw2["metadata"]["label_names"] == {2: "b"}
    # the landmark table (which reads a Labels layer's label_names) then names the brain
    from napari_attribution.metrics import landmark_table

    [row] = landmark_table(np.where(pred == 1, 1.0, 0.0), data, names=names).rows
    assert row.label == 1 and row.name == "brain" and row.energy == 1.0


def test_nice_limits_round_up_to_labelled_values_by_at_most_1_43x() -> None:
    """Colour-bar limits are rounded up to mantissas napari's colour bar labels (each checked in a real viewer)."""
    rng = np.random.default_rng(0)
    for v in np.concatenate([10.0 ** rng.uniform(-9, 6, 2000), [1.0, 4.62, 8.0, 9.99, 10.0, 1e-7]]):
        nice = L.nice_limit(float(v))
        mant = nice / 10.0 ** np.floor(np.log10(nice) + 1e-12)
        assert v * (1 - 1e-9) <= nice <= 1.43 * v, (v, nice)
        assert any(np.isclose(mant, m) for m in L.NICE_MANTISSAS), (v, nice)
    assert L.contrast_limits(np.array([-4.62, 1.0]), True, 100, nice=True) == (-5.0, 5.0)
    assert L.contrast_limits(np.array([-0.3, 8.3]), False, 100, nice=True) == (-0.3, 10.0)
    assert L.nice_limit(0.0) == 0.0
