"""The Compare dock in a real viewer: one layer per method, grid mode with the scan under each map, the
agreement and runtime tables, leaving the grid restores the user's layers; the landmark table (one row per
method) matches the core metrics and refuses another grid or an empty layer with one notification."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _widget_helpers import PHANTOM_SCALE, PHANTOM_TRANSLATE, heatmaps, wait_idle, wait_model
from qtpy.QtWidgets import QApplication

import napari_attribution as na
from napari_attribution.layers import OWNER_KEY
from napari_attribution.metrics import landmark_table

pytestmark = pytest.mark.gui

METHODS = ["saliency", "integrated_gradients", "grad_cam"]


def test_compare_adds_a_layer_per_method_grid_and_tables(compare: Any, qtbot: Any, notes: list[Any]) -> None:
    viewer = compare.viewer
    compare.set_methods(METHODS)
    compare.target.set_kind("class")
    compare.target.k1.setCurrentIndex(1)
    compare.run()
    wait_idle(qtbot, compare)
    out = compare.last_outcome
    assert out.status == "ok", out.message
    heat = heatmaps(viewer)
    assert sorted(la.metadata[OWNER_KEY]["method"] for la in heat) == sorted(METHODS)
    for la in heat:
        np.testing.assert_allclose(la.scale, PHANTOM_SCALE)
        np.testing.assert_allclose(la.translate, PHANTOM_TRANSLATE)
        assert "lesion" in la.name and la.name.endswith("phantom")
    # side by side: grid on, one cell per method with the scan under the map, other layers hidden
    grid = viewer.canvas.grid
    assert grid.enabled and grid.stride == -2
    under = [la for la in viewer.layers if la.metadata.get(OWNER_KEY, {}).get("role") == "underlay"]
    assert len(under) == len(METHODS)
    assert all(u.data is viewer.layers["phantom"].data for u in under)  # shared, not copied
    shape = grid.actual_shape(viewer.layers)
    assert shape[0] * shape[1] >= len(METHODS)
    cells = {}
    for i, la in enumerate(viewer.layers):
        if la.visible:
            cells.setdefault(grid.position(i, viewer.layers), []).append(la)
    assert len(cells) == len(METHODS)
    for members in cells.values():
        roles = [m.metadata[OWNER_KEY]["role"] for m in members]
        assert roles == ["underlay", "heatmap"]  # the scan below its map
    assert not viewer.layers["phantom"].visible and not viewer.layers["lesion"].visible
    # the tables
    assert compare.runtime_table.rowCount() == len(METHODS)
    assert compare.table.rowCount() == compare.table.columnCount() == len(METHODS)
    agreement = compare.last_outcome.agreement
    for i in range(3):
        for j in range(3):
            text = compare.table.item(i, j).text()
            if i < j:
                assert float(text) == pytest.approx(agreement["spearman"][i][j], abs=0.006)
            elif i > j:
                assert float(text) == pytest.approx(agreement["topk"][i][j], abs=0.006)
    assert out.agreement["methods"] == METHODS
    assert not notes
    # back to overlay: grid off, underlays gone, the user's layers visible again
    compare.side_by_side.setChecked(False)
    assert not grid.enabled and viewer.layers["phantom"].visible and viewer.layers["lesion"].visible
    assert not [la for la in viewer.layers if la.metadata.get(OWNER_KEY, {}).get("role") == "underlay"]


def test_compare_rerun_replaces_and_keeps_one_set(compare: Any, qtbot: Any) -> None:
    compare.set_methods(["saliency", "input_x_gradient"])
    compare.side_by_side.setChecked(False)
    for _ in range(2):
        compare.run()
        wait_idle(qtbot, compare)
        assert compare.last_outcome.status == "ok"
    assert len(heatmaps(compare.viewer)) == 2
    assert not compare.viewer.canvas.grid.enabled


def test_compare_without_methods_notifies(compare: Any, qtbot: Any, notes: list[Any]) -> None:
    compare.set_methods([])
    n = len(compare.viewer.layers)
    compare.run()
    wait_idle(qtbot, compare)
    assert len(compare.viewer.layers) == n and len(notes) == 1 and "method" in notes[0][1].lower()


def cells(table: Any) -> list[list[str]]:
    return [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]


def headers(table: Any) -> list[str]:
    return [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]


def run_compare(qtbot: Any, compare: Any, methods: list[str]) -> dict[str, Any]:
    compare.set_methods(methods)
    compare.target.set_kind("class")
    compare.target.k1.setCurrentIndex(1)
    compare.run()
    wait_idle(qtbot, compare)
    assert compare.last_outcome.status == "ok", compare.last_outcome.message
    return {la.metadata[OWNER_KEY]["method"]: la for la in heatmaps(compare.viewer)}


def test_compare_landmark_table_has_a_row_per_method_matching_landmark_table(compare: Any, qtbot: Any,
                                                                             notes: list[Any]) -> None:
    viewer = compare.viewer
    box = compare.landmarks
    assert box.isVisibleTo(compare) and box.result is None and "Press Compare" in box.summary.text()
    # two landmarks: the lesion and a box in a corner, named in the layer's metadata
    marks = viewer.layers["lesion"].data.astype(np.int32)
    marks[0, :6, :6] = 2
    viewer.add_labels(marks, name="landmarks", scale=PHANTOM_SCALE, translate=PHANTOM_TRANSLATE,
                      metadata={"label_names": {"1": "lesion", "2": "corner"}})
    assert box.choose(labels="landmarks") is None  # nothing compared yet: a hint, no notification
    methods = ["saliency", "input_x_gradient", "grad_cam"]
    heat = run_compare(qtbot, compare, methods)
    qtbot.waitUntil(lambda: box.result is not None, timeout=5000)
    assert box.labels.currentText() == "landmarks"
    rows = cells(box.table)
    assert sorted(r.name for r in box.result.rows) == sorted(methods)
    assert [r[0] for r in rows] == [na.get_method(r.name).short for r in box.result.rows]  # as the agreement table's
    assert [box.table.item(i, 0).toolTip() for i in range(len(rows))] == [r.name for r in box.result.rows]
    head = headers(box.table)
    assert head[0] == "method" and head[-2:] == ["peak in", "peak dist. mm"] and len(head) == 2 + 3
    for text, row in zip(rows, box.result.rows, strict=True):
        ref = landmark_table(heat[row.name].data, marks, spacing=PHANTOM_SCALE)
        assert [r.label for r in ref.rows] == [1, 2]
        # the numbers shown are landmark_table's, per method
        assert row.energy == pytest.approx([r.energy for r in ref.rows], rel=1e-6)
        assert text[1:3] == [f"{100 * r.energy:.1f} %" for r in ref.rows]
        inside = [r for r in ref.rows if r.peak_inside]
        assert text[3] == (f"{inside[0].label} · {'lesion' if inside[0].label == 1 else 'corner'}" if inside
                           else "none")
        nearest = min(r.distance_mm for r in ref.rows)
        assert row.distance_mm == pytest.approx(nearest) and text[4] == f"{nearest:.1f}"
        assert box.tables[row.name].peak == ref.peak
    # the chance share of each landmark in its column's header
    ref = landmark_table(heat["grad_cam"].data, marks, spacing=PHANTOM_SCALE)
    for c, (r, name) in enumerate(zip(ref.rows, ["lesion", "corner"], strict=True), start=1):
        assert head[c].startswith(f"{r.label} · {name}\n") and f"{100 * r.volume_fraction:.2g} %" in head[c]

    # painting a third landmark adds a column
    viewer.layers["landmarks"].paint((2, 22, 4), 3, refresh=True)
    qtbot.waitUntil(lambda: box.result is not None and box.result.labels == [1, 2, 3], timeout=5000)
    assert box.table.columnCount() == 2 + 3 + 1

    # copy as CSV
    text = box.copy_csv()
    assert QApplication.clipboard().text() == text
    lines = text.strip().splitlines()
    assert lines[0].startswith("map,energy_fraction 1 (lesion),energy_fraction 2 (corner),energy_fraction 3,")
    assert lines[1].startswith("chance,") and len(lines) == 2 + len(methods)
    assert "Copied 3 rows" in box.summary.text()
    assert not notes


def test_compare_landmarks_of_another_grid_or_empty_give_one_notification(compare: Any, qtbot: Any,
                                                                          notes: list[Any]) -> None:
    viewer = compare.viewer
    box = compare.landmarks
    compare.side_by_side.setChecked(False)
    run_compare(qtbot, compare, ["saliency", "input_x_gradient"])
    qtbot.waitUntil(lambda: box.result is not None, timeout=5000)  # the phantom's lesion: one landmark
    assert box.labels.currentText() == "lesion" and box.table.rowCount() == 2
    viewer.add_labels(np.ones((3, 3, 3), np.int32), name="small")
    for _ in range(2):  # picking it twice: still one notification
        assert box.choose(labels="small") is None
    assert box.table.rowCount() == 0 and not box.copy_button.isEnabled() and box.copy_csv() == ""
    assert len(notes) == 1 and notes[0][0] == "warning"
    message = notes[0][1]
    assert "shape (3, 3, 3)" in message and "compared heatmaps" in message and "New Labels" in message
    assert "Traceback" not in message and message in box.summary.text()
    # a new comparison with the bad choice kept: the message stays under the table, no second notification
    run_compare(qtbot, compare, ["saliency", "input_x_gradient"])
    qtbot.waitUntil(lambda: not box._timer.isActive(), timeout=5000)
    assert box.result is None and message in box.summary.text() and len(notes) == 1
    viewer.add_labels(np.zeros(viewer.layers["phantom"].data.shape, np.int32), name="blank",
                      scale=PHANTOM_SCALE, translate=PHANTOM_TRANSLATE)
    assert box.choose(labels="blank") is None
    assert len(notes) == 2 and "no landmark" in notes[1][1] and "paint" in notes[1][1]
    assert box.choose(labels="lesion") is not None and box.table.rowCount() == 2 and box.copy_button.isEnabled()


# ------------------------------------------------------------------------------------------------ layer picker


def test_the_layer_picker_chooses_the_layer_of_the_layer_methods(compare: Any, qtbot: Any, notes: list[Any]) -> None:
    """A MONAI UNet with residual units, whose last layers are its output head: the picker lists the layers in
    forward order, its automatic choice is the layer before the head, and a chosen layer is the one Grad-CAM uses
    (the gradient methods are unchanged by it)."""
    import torch
    from _nets import seeded
    from monai.networks.nets import UNet

    import napari_attribution as na
    from napari_attribution.targets import Class

    net = seeded(UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=2), 5)
    compare.set_model(net, source="residual UNet (Python)")
    picker = compare.layer
    compare.set_methods(["saliency"])
    assert not picker.isVisibleTo(compare) and compare.layer_name() is None  # no layer method ticked
    compare.set_methods(["saliency", "grad_cam"])
    assert picker.isVisibleTo(compare)
    x = torch.zeros(1, 1, 32, 32, 32)  # the dock probes a 3D model at 32^3
    cands = na.find_layers(net, x)
    assert picker.names() == [c.name for c in cands]  # forward order
    assert picker.itemText(0) == "(automatic: model.1)" and cands[-1].name.startswith("model.2.")
    assert picker.itemText(picker.findData("model.0")) == f"model.0  ({cands[0].channels} ch)"

    scan = compare.viewer.layers["phantom"].data

    def run(layer: str | None) -> dict[str, Any]:
        compare.set_layer(layer)
        compare.set_methods(["saliency", "grad_cam"])
        compare.target.set_kind("whole output of class")
        compare.target.k1.setCurrentIndex(1)
        compare.run()
        wait_idle(qtbot, compare)
        assert compare.last_outcome.status == "ok", compare.last_outcome.message
        return dict(compare.last_outcome.results)

    auto = run(None)
    assert auto["grad_cam"].layer == "model.1" and auto["saliency"].layer is None
    np.testing.assert_array_equal(auto["grad_cam"].data, na.explain(net, scan, "grad_cam", Class(1)).data)
    chosen = run("model.0")
    assert chosen["grad_cam"].layer == "model.0"
    np.testing.assert_array_equal(chosen["grad_cam"].data,
                                  na.explain(net, scan, "grad_cam", Class(1), layer="model.0").data)
    assert not np.allclose(chosen["grad_cam"].data, auto["grad_cam"].data)
    np.testing.assert_array_equal(chosen["saliency"].data, auto["saliency"].data)
    heat = {la.metadata[OWNER_KEY]["method"]: la for la in heatmaps(compare.viewer)}
    assert heat["grad_cam"].metadata[OWNER_KEY]["layer"] == "model.0"  # the layer travels with the heatmap
    assert heat["saliency"].metadata[OWNER_KEY]["layer"] is None
    with pytest.raises(na.LayerNotFoundError, match="no layer 'model.9'"):
        compare.set_layer("model.9")
    assert not notes
    # a new model resets the picker to its own layers, automatic
    compare.set_model(seeded(UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0), 6), source="small UNet")
    assert compare.layer.currentIndex() == 0 and "model.1.submodule" in compare.layer.names()


def test_the_compare_defaults_come_from_the_registry(phantom_viewer: Any, qtbot: Any) -> None:
    """The methods ticked when the dock opens and their cheap settings are the registry entries' ``compare_default``
    and ``compare_params``: a method registered anywhere takes part without an edit to the dock."""
    from napari_attribution._widget import CompareWidget
    from napari_attribution.methods import _registry, register

    def fn(run: Any, params: dict[str, Any]) -> Any:
        raise AssertionError

    register("_test_compared", label="x", family="gradient", passes="1F", paper="-", params={"n": 8},
             compare_default=True, compare_params={"n": 2})(fn)
    try:
        widget = CompareWidget(phantom_viewer)
        qtbot.addWidget(widget)
        wait_model(qtbot, widget)
        assert widget.methods() == ["saliency", "integrated_gradients", "grad_cam", "occlusion", "_test_compared"]
        assert widget.method_params() == {"integrated_gradients": {"steps": "auto", "max_steps": 128},
                                          "saliency": {}, "grad_cam": {}, "occlusion": {}, "_test_compared": {"n": 2}}
    finally:
        _registry._REGISTRY.pop("_test_compared", None)
