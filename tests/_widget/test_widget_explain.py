"""The Explain dock in a real napari viewer: the demo, several methods and target kinds, geometry, replacing
layers, cancelling, bad input, ROI, cost confirmation, a 2D model on a volume."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _widget_helpers import PHANTOM_SCALE, PHANTOM_TRANSLATE, ThresholdSegmenter, heatmaps, wait_idle, wait_model
from qtpy.QtCore import Qt

import napari_attribution as na
from napari_attribution.layers import OWNER_KEY

pytestmark = pytest.mark.gui


def run(qtbot: Any, dock: Any, **kw: Any) -> Any:
    dock.run(**kw)
    wait_idle(qtbot, dock)
    return dock.last_outcome


def test_demo_model_loads_and_explains_with_source_geometry(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    viewer = dock.viewer
    assert dock.model_info.task == "classification" and dock.model_info.class_names == ("no lesion", "lesion")
    assert dock.image.currentText() == "phantom"
    dock.set_method("grad_cam")
    out = run(qtbot, dock)
    assert out.status == "ok", out.message
    [heat] = heatmaps(viewer)
    assert heat.name == "grad_cam · lesion · phantom"  # the predicted class names the map
    np.testing.assert_allclose(heat.scale, PHANTOM_SCALE)
    np.testing.assert_allclose(heat.translate, PHANTOM_TRANSLATE)
    assert heat.data.shape == viewer.layers["phantom"].data.shape
    info = heat.metadata[OWNER_KEY]
    prov = info["provenance"]
    assert prov["model"] == "demo:lesion3d" and prov["method"] == "grad_cam" and "seed" in prov
    assert {"torch", "numpy", "napari-attribution"} <= set(prov["versions"])
    assert info["seconds"] > 0 and info["layer"] == (dock.model_info.default_layer or "features")
    assert heat.metadata["original_affine"] == viewer.layers["phantom"].metadata["original_affine"]
    # unsigned: sequential map from zero; the colour bar of this layer is on
    assert heat.contrast_limits[0] == 0 and heat.colorbar.visible
    assert "lesion" in dock.prediction.text() and viewer.canvas.overlays.text.visible
    assert set(info["probabilities"]) == {"no lesion", "lesion"}
    assert not notes


@pytest.mark.parametrize(("method", "params", "kind", "k"), [
    ("integrated_gradients", {"steps": 8}, "class", 1),
    ("saliency", {}, "predicted class", 0),
    ("input_x_gradient", {}, "class vs class", 1),
    ("occlusion", {"window": 8, "stride": 8}, "class", 0),
])
def test_methods_and_classification_targets(dock: Any, qtbot: Any, notes: list[Any], method: str,
                                            params: dict[str, Any], kind: str, k: int) -> None:
    dock.set_method(method, **params)
    dock.target.set_kind(kind)
    dock.target.k1.setCurrentIndex(k)
    dock.target.k2.setCurrentIndex(1 - k)
    out = run(qtbot, dock)
    assert out.status == "ok", out.message
    [heat] = heatmaps(dock.viewer)
    info = heat.metadata[OWNER_KEY]
    assert info["method"] == method
    for key, value in params.items():
        assert info["params"][key] == value
    expected = {"class": ["no lesion", "lesion"][k], "predicted class": None,
                "class vs class": "lesion vs no lesion"}[kind]
    if expected:
        assert info["target"] == expected and expected in heat.name
    if na.get_method(method).signed:
        lo, hi = heat.contrast_limits
        assert lo == pytest.approx(-hi)
    # the only note: integrated gradients' own warning when 8 steps leave the map incomplete (5 % or more)
    complete = info.get("completeness", {}).get("relative_error", 0.0) <= 0.05
    assert notes == ([] if complete else [("warning", out.warnings[0])])


def test_rerun_replaces_own_layer_and_never_a_user_layer(dock: Any, qtbot: Any) -> None:
    viewer = dock.viewer
    dock.set_method("saliency")
    dock.target.set_kind("class")
    dock.target.k1.setCurrentIndex(1)
    run(qtbot, dock)
    [first] = heatmaps(viewer)
    name = first.name
    viewer.add_image(np.ones((2, 2)), name="mine")
    assert dock.image.currentText() == "mine"  # the picker follows the active image layer
    dock.image.setCurrentText("phantom")
    first_index = viewer.layers.index(first)
    run(qtbot, dock)
    [second] = heatmaps(viewer)
    assert second is not first and second.name == name and viewer.layers.index(second) == first_index
    # a user layer that happens to carry the heatmap's name is left alone
    viewer.layers.remove(second)
    decoy = viewer.add_image(np.zeros((2, 2)), name=name)
    dock.image.setCurrentText("phantom")
    run(qtbot, dock)
    assert decoy in viewer.layers and np.all(decoy.data == 0)
    assert len(heatmaps(viewer)) == 1 and heatmaps(viewer)[0] is not decoy


def test_cancel_mid_run_adds_no_layer(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    viewer = dock.viewer
    before = list(viewer.layers)
    dock.set_method("occlusion", window=2, stride=1, max_batch=1)  # ~11 000 passes: about a minute
    dock.run(confirm=False)
    qtbot.waitUntil(lambda: dock.progress.value() > 0, timeout=30_000)
    assert dock.running and dock.cancel_button.isEnabled()
    qtbot.mouseClick(dock.cancel_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "cancelled"
    assert list(viewer.layers) == before
    assert len(notes) == 1 and "cancel" in notes[0][1].lower()
    assert "Traceback" not in notes[0][1]


def test_no_image_layer_gives_one_notification(make_napari_viewer: Any, qtbot: Any, notes: list[Any]) -> None:
    from napari_attribution._widget import ExplainWidget

    viewer = make_napari_viewer()
    dock = ExplainWidget(viewer)
    wait_model(qtbot, dock)
    dock.run()
    wait_idle(qtbot, dock)
    assert len(viewer.layers) == 0
    assert len(notes) == 1 and "no image layer" in notes[0][1].lower()


def test_wrong_dimensionality_gives_one_notification(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    viewer = dock.viewer
    viewer.add_image(np.zeros((28, 28), np.float32), name="slice 2D")
    dock.image.setCurrentText("slice 2D")
    n = len(viewer.layers)
    out = run(qtbot, dock)
    assert out.status == "failed" and len(viewer.layers) == n
    assert len(notes) == 1 and "3D" in notes[0][1] and "2D" in notes[0][1]


def test_confirm_before_a_long_run(dock: Any, qtbot: Any) -> None:
    dock.confirm_above = 1e-6
    dock.set_method("occlusion", window=4, stride=4)
    out = run(qtbot, dock)
    assert out.status == "confirm" and out.estimate.passes > 8
    assert dock.confirm_box.isVisibleTo(dock) and "passes" in dock.confirm_label.text()
    assert not heatmaps(dock.viewer)
    qtbot.mouseClick(dock.confirm_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "ok" and len(heatmaps(dock.viewer)) == 1


def test_explain_only_a_box(dock: Any, qtbot: Any) -> None:
    viewer = dock.viewer
    # a rectangle drawn on slice 8 (world coordinates of the shifted, anisotropic phantom)
    z = PHANTOM_TRANSLATE[0] + 8 * PHANTOM_SCALE[0]
    y0, x0 = PHANTOM_TRANSLATE[1] + 4 * 0.8, PHANTOM_TRANSLATE[2] + 6 * 0.8
    y1, x1 = PHANTOM_TRANSLATE[1] + 19 * 0.8, PHANTOM_TRANSLATE[2] + 21 * 0.8
    viewer.add_shapes([np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]])], shape_type="rectangle",
                      name="box")
    dock.scope.roi.setCurrentIndex(1)
    dock.scope.roi_layer.setCurrentText("box")
    dock.set_method("saliency")
    out = run(qtbot, dock)
    assert out.status == "ok", out.message
    [heat] = heatmaps(viewer)
    finite = np.isfinite(heat.data)
    assert finite[:, 4:20, 6:22].all() and not finite[:, :4].any() and not finite[:, :, 23:].any()
    assert heat.metadata[OWNER_KEY]["provenance"]["roi"] == [[0, 16], [4, 20], [6, 22]]


# ------------------------------------------------------------------------------------------------ segmentation


@pytest.fixture
def seg_dock(dock: Any) -> Any:
    dock.set_model(ThresholdSegmenter.make(), source="threshold segmenter")
    assert dock.model_info.task == "segmentation" and dock.model_info.n_classes == 2
    return dock


def test_segmentation_predicted_region_adds_labels_with_geometry(seg_dock: Any, qtbot: Any) -> None:
    viewer = seg_dock.viewer
    seg_dock.set_method("saliency")
    seg_dock.target.set_kind("predicted region (largest class)")
    out = run(qtbot, seg_dock)
    assert out.status == "ok", out.message
    [pred] = [la for la in viewer.layers if la.metadata.get(OWNER_KEY, {}).get("role") == "prediction"]
    np.testing.assert_allclose(pred.scale, PHANTOM_SCALE)
    lesion = viewer.layers["lesion"].data.astype(bool)
    predicted = pred.data == 1
    assert (predicted & lesion).sum() / max(predicted.sum(), 1) > 0.8  # the model segments the lesion
    [heat] = heatmaps(viewer)
    assert heat.metadata[OWNER_KEY]["target"] == "predicted class 1"


@pytest.mark.parametrize("kind", ["region from Labels layer", "point (Points layer)", "false negatives vs ground truth",
                                  "class vs class", "predicted region of class"])
def test_segmentation_target_kinds(seg_dock: Any, qtbot: Any, notes: list[Any], kind: str) -> None:
    viewer = seg_dock.viewer
    lesion = viewer.layers["lesion"].data.astype(bool)
    zc, yc, xc = (int(round(c)) for c in np.argwhere(lesion).mean(0))
    if kind == "point (Points layer)":
        world = np.array(PHANTOM_TRANSLATE) + np.array(PHANTOM_SCALE) * (zc, yc, xc)
        viewer.add_points([world], name="click")
        seg_dock.target.points.setCurrentText("click")
    if kind == "false negatives vs ground truth":
        truth = lesion.copy()
        truth[zc, yc, :] = True  # a ground-truth line the model misses
        viewer.add_labels(truth.astype(np.int32), name="truth", scale=PHANTOM_SCALE, translate=PHANTOM_TRANSLATE)
        seg_dock.target.labels.setCurrentText("truth")
    if kind == "region from Labels layer":
        seg_dock.target.labels.setCurrentText("lesion")
    seg_dock.target.set_kind(kind)
    seg_dock.target.k1.setCurrentIndex(1)
    seg_dock.target.k2.setCurrentIndex(0)
    seg_dock.set_method("input_x_gradient")
    out = run(qtbot, seg_dock)
    assert out.status == "ok", out.message
    [heat] = heatmaps(viewer)
    target = out.results["input_x_gradient"].target
    expected = {"region from Labels layer": "Region", "point (Points layer)": "Voxel",
                "false negatives vs ground truth": "ErrorRegion", "class vs class": "Contrast",
                "predicted region of class": "Predicted"}[kind]
    assert type(target).__name__ == expected
    if expected == "Voxel":
        assert tuple(target.index) == (zc, yc, xc)
    assert np.isfinite(heat.data).all() and not notes


def test_empty_mask_gives_one_notification_and_no_layer(seg_dock: Any, qtbot: Any, notes: list[Any]) -> None:
    viewer = seg_dock.viewer
    viewer.add_labels(np.zeros(viewer.layers["phantom"].data.shape, np.int32), name="empty",
                      scale=PHANTOM_SCALE, translate=PHANTOM_TRANSLATE)
    n = len(viewer.layers)
    seg_dock.target.set_kind("region from Labels layer")
    seg_dock.target.labels.setCurrentText("empty")
    seg_dock.run()
    wait_idle(qtbot, seg_dock)
    assert len(viewer.layers) == n
    assert len(notes) == 1 and "empty" in notes[0][1]


def test_mask_of_another_grid_is_refused(seg_dock: Any, qtbot: Any, notes: list[Any]) -> None:
    viewer = seg_dock.viewer
    viewer.add_labels(np.ones((3, 3, 3), np.int32), name="small")
    seg_dock.target.set_kind("region from Labels layer")
    seg_dock.target.labels.setCurrentText("small")
    seg_dock.run()
    wait_idle(qtbot, seg_dock)
    assert not heatmaps(viewer) and len(notes) == 1 and "shape" in notes[0][1]


# ------------------------------------------------------------------------------------------------ 2D model, 3D scan


def test_2d_model_on_a_volume_current_slice_whole_volume_and_follow(dock: Any, qtbot: Any) -> None:
    import torch
    from _nets import Classifier

    torch.manual_seed(0)
    viewer = dock.viewer
    dock.set_model(Classifier(d=2, classes=2).eval(), source="2d classifier")
    assert dock.scope.slices.isVisibleTo(dock)
    dock.set_method("grad_cam")
    dock.target.set_kind("class")
    dock.target.k1.setCurrentIndex(1)
    viewer.dims.set_current_step(0, 5)
    run(qtbot, dock)
    [heat] = heatmaps(viewer)
    explained = [i for i in range(heat.data.shape[0]) if np.isfinite(heat.data[i]).all()]
    assert explained == [5] and np.isnan(heat.data[4]).all()
    viewer.dims.set_current_step(0, 9)
    run(qtbot, dock)
    [heat] = heatmaps(viewer)
    assert [i for i in range(16) if np.isfinite(heat.data[i]).all()] == [5, 9]  # slices accumulate
    assert heat.metadata[OWNER_KEY]["slices"] == [5, 9]
    dock.scope.slices.setCurrentIndex(1)  # follow the slider
    viewer.dims.set_current_step(0, 2)
    qtbot.waitUntil(lambda: any(np.isfinite(la.data[2]).all() for la in heatmaps(viewer)), timeout=30_000)
    wait_idle(qtbot, dock)
    dock.scope.slices.setCurrentIndex(2)  # whole volume
    run(qtbot, dock)
    [heat] = heatmaps(viewer)
    assert np.isfinite(heat.data).all()
    np.testing.assert_allclose(heat.scale, PHANTOM_SCALE)
