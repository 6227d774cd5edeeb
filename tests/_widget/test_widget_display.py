"""How the Explain dock shows a heatmap in a real napari viewer: clear outside the body for perturbation methods
(the map itself untouched), the scan's interpolation, limits from inside the body, and "Adjust limits"."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _widget_helpers import heatmaps, wait_idle
from qtpy.QtCore import Qt

from napari_attribution import layers as L
from napari_attribution.layers import OWNER_KEY

pytestmark = pytest.mark.gui


def run(qtbot: Any, dock: Any, method: str, **params: Any) -> Any:
    dock.set_method(method, **params)
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    out = dock.last_outcome
    assert out.status == "ok", out.message
    return out


def test_perturbation_map_is_clear_outside_the_body_and_the_map_is_unchanged(dock: Any, qtbot: Any) -> None:
    viewer = dock.viewer
    scan = viewer.layers["phantom"]
    scan.interpolation2d = "linear"  # the heatmap follows the scan, whatever it is
    out = run(qtbot, dock, "occlusion", window=8, stride=8)
    [heat] = heatmaps(viewer)
    body, how = L.body_mask(scan.data, modality=None)
    assert 0.2 < body.mean() < 0.8  # a body in air
    shown = np.asarray(heat.data)
    raw = out.results["occlusion"].data
    assert np.isnan(shown[~body]).all() and np.isfinite(shown[body]).all()
    np.testing.assert_array_equal(shown[body], raw[body])
    assert np.isfinite(raw).all() and np.abs(raw[~body]).max() > 0  # the map keeps its values outside the body
    info = heat.metadata[OWNER_KEY]
    assert info["display_mask"]["region"] == how and "unchanged" in info["display_mask"]["outside"]
    assert heat.interpolation2d == "linear" and heat.interpolation3d == scan.interpolation3d
    m = np.percentile(np.abs(raw[body]), 99.5)
    assert tuple(heat.contrast_limits) == pytest.approx((-L.nice_limit(m), L.nice_limit(m)))
    assert "inside the body" in dock.colour_bar.text() and "Clear outside the body" in dock.colour_bar.text()


def test_gradient_map_is_shown_everywhere_unless_asked_and_follows_nearest(dock: Any, qtbot: Any) -> None:
    viewer = dock.viewer
    assert viewer.layers["phantom"].interpolation2d == "nearest"  # napari's default
    run(qtbot, dock, "saliency")
    [heat] = heatmaps(viewer)
    assert np.isfinite(heat.data).all() and "display_mask" not in heat.metadata[OWNER_KEY]
    assert heat.interpolation2d == "nearest"  # not linear over a nearest-neighbour scan
    dock.display.outside.setCurrentIndex(dock.display.outside.findData("all"))
    run(qtbot, dock, "saliency")
    [heat] = heatmaps(viewer)
    assert np.isnan(heat.data).any() and "display_mask" in heat.metadata[OWNER_KEY]


def test_adjust_limits_button_recomputes_the_selected_heatmap(dock: Any, qtbot: Any) -> None:
    viewer = dock.viewer
    run(qtbot, dock, "integrated_gradients", steps=8)
    [heat] = heatmaps(viewer)
    body, _ = L.body_mask(viewer.layers["phantom"].data)
    data = np.array(heat.data)
    inside = float(np.percentile(np.abs(data[body]), 99.5))
    hot = np.flatnonzero(~body)[:2000]  # a hot spot outside the body, 1000x the map's scale
    data.ravel()[hot] = 1000 * inside
    heat.data = data
    viewer.layers.selection.active = heat
    dock.display.region.setCurrentIndex(dock.display.region.findData("whole"))
    qtbot.mouseClick(dock.display.adjust_button, Qt.MouseButton.LeftButton)
    assert heat.contrast_limits[1] >= 1000 * inside  # the whole map: set by the hot spot
    assert heat.metadata[OWNER_KEY]["contrast_region"] == "the whole map"
    dock.display.region.setCurrentIndex(dock.display.region.findData("body"))
    qtbot.mouseClick(dock.display.adjust_button, Qt.MouseButton.LeftButton)
    assert tuple(heat.contrast_limits) == pytest.approx((-L.nice_limit(inside), L.nice_limit(inside)))
    assert "inside the body" in heat.metadata[OWNER_KEY]["contrast_region"]
    assert f"±{L.nice_limit(inside):.3g}" in dock.colour_bar.text()


def test_slices_of_a_2d_model_keep_their_limits_from_inside_the_body(dock: Any, qtbot: Any) -> None:
    """A 2D model explaining the slice shown: each run's slice joins the earlier ones in one layer, and the merged
    map's limits still come from inside the body (a hot spot in the air of an earlier slice does not set them)."""
    import torch
    from _nets import Classifier

    torch.manual_seed(0)
    viewer = dock.viewer
    dock.set_model(Classifier(d=2, classes=2).eval(), source="2d classifier")
    dock.target.set_kind("class")
    dock.target.k1.setCurrentIndex(1)
    body, _ = L.body_mask(viewer.layers["phantom"].data)
    viewer.dims.set_current_step(0, 5)
    run(qtbot, dock, "input_x_gradient")
    [heat] = heatmaps(viewer)
    hot = np.array(heat.data)
    hot[5][~body[5]] = 1000 * np.nanmax(np.abs(hot))  # the air of slice 5, far above the map
    heat.data = hot
    viewer.dims.set_current_step(0, 9)
    run(qtbot, dock, "input_x_gradient")
    [heat] = heatmaps(viewer)
    data = np.asarray(heat.data)
    assert heat.metadata[OWNER_KEY]["slices"] == [5, 9] and np.nanmax(data) == np.nanmax(hot)
    m = L.nice_limit(float(np.percentile(np.abs(data[body & np.isfinite(data)]), 99.5)))
    assert L.contrast_limits(data, True, nice=True)[1] > 100 * m  # the whole map's limits: set by the hot spot
    assert tuple(heat.contrast_limits) == pytest.approx((-m, m))  # the merged map's limits, inside the body
    assert heat.metadata[OWNER_KEY]["contrast_region"].startswith("inside the body")


def test_a_segmentation_takes_its_limits_from_inside_the_prediction(dock: Any, qtbot: Any) -> None:
    """The threshold segmenter predicts the lesion: the limits come from the lesion grown by 3 voxels, so a hot
    spot elsewhere in the body (a skull base around a segmented brain) does not set them; "Adjust limits" on the
    body then does take it."""
    from _widget_helpers import ThresholdSegmenter

    viewer = dock.viewer
    dock.set_model(ThresholdSegmenter.make(), source="threshold segmenter")
    dock.target.set_kind("predicted region (largest class)")
    out = run(qtbot, dock, "saliency")
    [heat] = heatmaps(viewer)
    region = L.prediction_region(out.results["saliency"].label_map)
    body, _ = L.body_mask(viewer.layers["phantom"].data)
    assert region is not None and region.sum() < 0.5 * body.sum()
    in_pred = L.region_limits(np.asarray(heat.data), False, 99.5, region)
    assert tuple(heat.contrast_limits) == pytest.approx(in_pred)
    assert heat.metadata[OWNER_KEY]["contrast_region"] == "inside the prediction (grown by 3 voxels)"
    hot = np.array(heat.data)
    elsewhere = np.flatnonzero(body & ~region)
    hot.ravel()[elsewhere[: elsewhere.size // 4]] = 1000 * in_pred[1]  # inside the body, outside the prediction
    heat.data = hot
    viewer.layers.selection.active = heat
    qtbot.mouseClick(dock.display.adjust_button, Qt.MouseButton.LeftButton)  # "prediction, else body"
    assert tuple(heat.contrast_limits) == pytest.approx(in_pred)
    dock.display.region.setCurrentIndex(dock.display.region.findData("body"))
    qtbot.mouseClick(dock.display.adjust_button, Qt.MouseButton.LeftButton)
    assert heat.contrast_limits[1] >= 1000 * in_pred[1]
