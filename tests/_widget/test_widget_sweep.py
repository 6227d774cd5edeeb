"""Layer sweep (Explain dock) in a real viewer: one image layer with a leading "layer" axis, the slider moves
through the network (colour scale per network layer), the per-layer table, progress "layer i of n", Cancel
between layers — on the demo vessel segmenter with a predicted-region target and on the demo lesion classifier."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _widget_helpers import heatmaps, wait_idle, wait_model
from qtpy.QtCore import Qt

import napari_attribution as na
from napari_attribution import targets as T
from napari_attribution.layers import OWNER_KEY

pytestmark = pytest.mark.gui

VESSEL_LAYERS = ["enc1.relu2", "enc2", "bottleneck", "dec1"]


@pytest.fixture
def vessel_dock(make_napari_viewer: Any, qtbot: Any) -> Any:
    from napari.layers import Layer

    from napari_attribution._sample_data import vessel_mra
    from napari_attribution._widget import ExplainWidget

    viewer = make_napari_viewer()
    for ldt in vessel_mra():
        viewer.add_layer(Layer.create(*ldt))
    viewer.layers.selection.active = viewer.layers[0]
    dock = ExplainWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Explain")
    wait_model(qtbot, dock)
    dock.load_model("demo:vessel-seg")
    wait_model(qtbot, dock)
    assert dock.model_info.source == "demo:vessel-seg"
    return dock


def record_progress(dock: Any) -> list[str]:
    seen: list[str] = []
    relay = dock.runner._on_progress

    def hook(done: int, total: int, message: str) -> None:
        seen.append(message)
        relay(done, total, message)

    dock.runner._on_progress = hook
    return seen


def test_sweep_on_the_vessel_segmenter(vessel_dock: Any, qtbot: Any, notes: list[Any]) -> None:
    dock, viewer = vessel_dock, vessel_dock.viewer
    scan = viewer.layers[0]
    dock.set_method("grad_cam")
    assert dock.sweep.isVisibleTo(dock) and dock.layer.isVisibleTo(dock)
    assert dock.sweep.names() == dock.model_info.layers  # shallow to deep, as the forward pass runs
    dock.set_sweep(VESSEL_LAYERS)
    assert not dock.layer.isVisibleTo(dock)  # the sweep's list replaces the one-layer choice
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(1)
    seen = record_progress(dock)
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    out = dock.last_outcome
    assert out.status == "ok", out.message
    [heat] = heatmaps(viewer)
    assert heat.data.shape == (4,) + scan.data.shape and heat.axis_labels == ("layer", "z", "y", "x")
    assert viewer.dims.axis_labels[0] == "layer" and viewer.dims.nsteps[0] == 4
    np.testing.assert_allclose(heat.scale[1:], scan.scale)
    np.testing.assert_allclose(heat.translate[1:], scan.translate)
    info = heat.metadata[OWNER_KEY]
    assert info["layers"] == VESSEL_LAYERS and heat.name == "grad_cam by layer · predicted vessel · " + scan.name
    assert any(m.startswith("4 layers in one pass") for m in seen)  # grad_cam: every layer from one pass
    # each network layer's map is the one-layer explain, unchanged
    image = np.asarray(scan.data, np.float32)
    for i in (0, 3):
        single = na.explain(dock.model_info.model, image, "grad_cam", T.Predicted(1), layer=VESSEL_LAYERS[i])
        np.testing.assert_allclose(heat.data[i], single.data, rtol=1e-4, atol=1e-6)
    # the table: one row per layer, energy inside the predicted vessel region
    table = dock.sweep_table
    assert table.isVisibleTo(dock) and table.rowCount() == 4 and not table.isColumnHidden(2)
    pred = [la for la in viewer.layers if la.metadata.get(OWNER_KEY, {}).get("role") == "prediction"][0].data == 1
    for r in range(4):
        pos = np.clip(heat.data[r], 0, None)
        assert table.item(r, 0).text() == VESSEL_LAYERS[r]
        assert table.item(r, 2).text() == f"{100 * pos[pred].sum() / pos.sum():.1f} %"
        assert out.sweep[r]["seconds"] == pytest.approx(float(table.item(r, 1).text()), abs=0.006)
    # the slider moves through the network; the colour scale follows; a click in the table moves the slider
    viewer.dims.set_point(0, 2)
    qtbot.waitUntil(lambda: list(heat.contrast_limits) == pytest.approx(info["layer_contrast_limits"][2]),
                    timeout=3000)
    assert table.currentRow() == 2
    table.cellClicked.emit(3, 0)
    assert viewer.dims.current_step[0] == 3
    assert list(heat.contrast_limits) == pytest.approx(info["layer_contrast_limits"][3])
    assert "network layer shown" in dock.colour_bar.text()
    # landmarks follow the network layer shown
    box = dock.landmarks
    box.choose(heatmap=heat.name, labels="vessel ground truth")
    pos = np.clip(heat.data[3], 0, None)
    truth = viewer.layers["vessel ground truth"].data == 1
    assert box.result.rows[0].energy == pytest.approx(pos[truth].sum() / pos.sum(), rel=1e-4)
    assert "dec1" in box.summary.text()
    viewer.dims.set_point(0, 0)
    qtbot.waitUntil(lambda: "enc1.relu2" in box.summary.text(), timeout=3000)
    assert not notes
    # a plain run afterwards hides the sweep table
    dock.set_sweep(None)
    dock.set_method("saliency")
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "ok" and not table.isVisibleTo(dock)


def test_cancel_between_layers_adds_nothing(vessel_dock: Any, qtbot: Any, notes: list[Any]) -> None:
    dock, viewer = vessel_dock, vessel_dock.viewer
    before = [la.name for la in viewer.layers]
    dock.set_method("layer_conductance", steps=16)
    dock.set_sweep(dock.sweep.names())  # all spatial layers: minutes of work
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(1)
    dock.run(confirm=False)
    qtbot.waitUntil(lambda: "layer 1 of 29" in dock.status.text(), timeout=30_000)
    qtbot.mouseClick(dock.cancel_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "cancelled"
    assert [la.name for la in viewer.layers] == before
    assert len(notes) == 1 and "cancel" in notes[0][1].lower()


def test_sweep_on_the_lesion_classifier(phantom_viewer: Any, qtbot: Any, notes: list[Any]) -> None:
    from napari_attribution._widget import ExplainWidget

    dock = ExplainWidget(phantom_viewer)
    phantom_viewer.window.add_dock_widget(dock, name="Explain")
    wait_model(qtbot, dock)
    dock.set_method("layer_activation")
    dock.sweep.enabled.setChecked(True)
    qtbot.mouseClick(dock.sweep.none_button, Qt.MouseButton.LeftButton)
    dock.run()  # nothing ticked: one notification, nothing runs
    wait_idle(qtbot, dock)
    assert len(notes) == 1 and "Tick at least one" in notes[0][1] and not heatmaps(phantom_viewer)
    qtbot.mouseClick(dock.sweep.all_button, Qt.MouseButton.LeftButton)
    layers = dock.model_info.layers
    assert dock.sweep.layers() == layers and len(layers) >= 3
    dock.target.set_kind("class")
    dock.target.k1.setCurrentIndex(1)
    dock.run()
    wait_idle(qtbot, dock)
    out = dock.last_outcome
    assert out.status == "ok", out.message
    [heat] = heatmaps(phantom_viewer)
    assert heat.data.shape == (len(layers),) + phantom_viewer.layers["phantom"].data.shape
    table = dock.sweep_table
    assert table.rowCount() == len(layers) and table.isColumnHidden(2)  # a class target: no region, the peak
    for r in range(len(layers)):
        assert table.item(r, 3).text() == f"{np.nanmax(heat.data[r]):.3g}"
    assert "lesion" in dock.prediction.text()
    assert len(notes) == 1
