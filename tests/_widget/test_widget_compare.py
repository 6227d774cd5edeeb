"""The Compare dock in a real viewer: one layer per method, grid mode with the scan under each map, the
agreement and runtime tables, leaving the grid restores the user's layers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _widget_helpers import PHANTOM_SCALE, PHANTOM_TRANSLATE, heatmaps, wait_idle, wait_model

from napari_attribution.layers import OWNER_KEY

pytestmark = pytest.mark.gui

METHODS = ["saliency", "integrated_gradients", "grad_cam"]


@pytest.fixture
def compare(phantom_viewer: Any, qtbot: Any) -> Any:
    from napari_attribution._widget import CompareWidget

    widget = CompareWidget(phantom_viewer)
    phantom_viewer.window.add_dock_widget(widget, name="Compare")
    wait_model(qtbot, widget)
    return widget


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
