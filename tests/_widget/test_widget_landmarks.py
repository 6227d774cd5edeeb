"""Compare with landmarks (Explain dock) in a real viewer: the per-landmark table matches the core metrics, follows
the chosen heatmap, the chosen Labels layer and painting, copies as CSV, and refuses another grid or an empty
layer with one notification."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from _widget_helpers import PHANTOM_SCALE, PHANTOM_TRANSLATE, heatmaps, wait_idle, wait_model
from qtpy.QtWidgets import QApplication

import napari_attribution as na
from napari_attribution.io import Geometry

pytestmark = pytest.mark.gui


def explain(qtbot: Any, dock: Any, method: str) -> Any:
    dock.set_method(method)
    dock.target.set_kind("class")
    dock.target.k1.setCurrentIndex(1)
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    return next(la for la in heatmaps(dock.viewer) if la.metadata["napari_attribution"]["method"] == method)


def cells(table: Any) -> list[list[str]]:
    return [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]


def test_landmark_table_matches_the_metrics_and_follows_choices(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    viewer = dock.viewer
    box = dock.landmarks
    assert not box.isVisibleTo(dock)  # no heatmap yet
    heat = explain(qtbot, dock, "grad_cam")
    qtbot.waitUntil(lambda: box.isVisibleTo(dock) and box.result is not None, timeout=5000)
    assert box.heatmap.currentText() == heat.name and box.labels.currentText() == "lesion"
    lesion = viewer.layers["lesion"].data.astype(bool)
    spacing = PHANTOM_SCALE
    energy = na.evaluate(None, None, heat.data, "energy_in_mask", mask=lesion).details["per_label"][1]["energy"]
    pg = na.evaluate(None, None, heat.data, "pointing_game", mask=lesion,
                     geometry=Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0)), tolerance_mm=0.0)
    [row] = box.result.rows
    assert row.label == 1 and row.voxels == int(lesion.sum())
    assert row.volume_mm3 == pytest.approx(lesion.sum() * 2.0 * 0.8 * 0.8)
    assert row.energy == pytest.approx(energy, rel=1e-5)
    assert row.distance_mm == pytest.approx(pg.details["distance_mm"]) and row.peak_inside == (pg.value == 1.0)
    [text] = cells(box.table)
    assert text[0] == "1" and text[1] == f"{100 * energy:.1f} %" and text[5] == str(row.voxels)
    assert text[3] == ("yes" if row.peak_inside else "no") and text[4] == f"{row.distance_mm:.1f}"
    assert text[6] == f"{row.volume_mm3:.0f}"
    assert heat.name in box.summary.text()

    # landmarks of my own: one around the heatmap's peak, one far away, named in the layer metadata
    peak = np.unravel_index(int(np.nanargmax(heat.data)), heat.data.shape)
    marks = np.zeros(heat.data.shape, np.int32)
    marks[tuple(slice(max(p - 1, 0), p + 2) for p in peak)] = 2
    marks[0, :3, :3] = 5
    viewer.add_labels(marks, name="landmarks", scale=PHANTOM_SCALE, translate=PHANTOM_TRANSLATE,
                      metadata={"label_names": {"2": "peak region", "5": "corner"}})
    box.choose(labels="landmarks")
    rows = {r.label: r for r in box.result.rows}
    assert set(rows) == {2, 5} and rows[2].peak_inside and rows[2].distance_mm == 0.0
    assert not rows[5].peak_inside and rows[5].distance_mm > 5.0 and rows[5].name == "corner"
    assert cells(box.table)[0][0] == "2 · peak region" and "in landmark 2 · peak region" in box.summary.text()

    # painting a new landmark updates the table
    layer = viewer.layers["landmarks"]
    layer.paint((8, 20, 20), 9, refresh=True)
    qtbot.waitUntil(lambda: box.result is not None and 9 in [r.label for r in box.result.rows], timeout=5000)

    # another heatmap: the table follows the selected heatmap
    first_energy = rows[2].energy
    sal = explain(qtbot, dock, "saliency")
    qtbot.waitUntil(lambda: box.heatmap.currentText() == sal.name and box.result is not None
                    and sal.name in box.summary.text(), timeout=5000)
    assert box.result.rows[0].energy != pytest.approx(first_energy)
    box.choose(heatmap=heat.name)
    assert heat.name in box.summary.text()

    # copy as CSV
    text = box.copy_csv()
    assert QApplication.clipboard().text() == text
    lines = text.strip().splitlines()
    assert lines[0].startswith("label,name,voxels,volume_mm3,energy_fraction") and len(lines) == 1 + 3
    assert lines[1].split(",")[1] == "peak region"
    assert not notes


def test_other_grid_and_empty_labels_give_one_notification_each(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    viewer = dock.viewer
    explain(qtbot, dock, "saliency")
    box = dock.landmarks
    viewer.add_labels(np.ones((3, 3, 3), np.int32), name="small")
    for _ in range(2):  # picking it twice: still one notification
        assert box.choose(labels="small") is None
    assert box.table.rowCount() == 0 and not box.copy_button.isEnabled()
    assert len(notes) == 1 and "shape" in notes[0][1] and "New Labels" in notes[0][1]
    assert "Traceback" not in notes[0][1] and notes[0][1] in box.summary.text()
    viewer.add_labels(np.zeros(viewer.layers["phantom"].data.shape, np.int32), name="blank",
                      scale=PHANTOM_SCALE, translate=PHANTOM_TRANSLATE)
    assert box.choose(labels="blank") is None
    assert len(notes) == 2 and "no landmark" in notes[1][1] and "paint" in notes[1][1]
    assert box.choose(labels="lesion") is not None and box.table.rowCount() == 1


def test_landmark_table_on_a_128_cube_is_quick(make_napari_viewer: Any, qtbot: Any) -> None:
    """A 128^3 heatmap with four landmarks: the synchronous update stays well under what a user notices."""
    from napari.layers import Layer

    from napari_attribution import Attribution
    from napari_attribution import layers as L
    from napari_attribution._widget import ExplainWidget
    from napari_attribution.targets import Class

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    shape = (128, 128, 128)
    viewer.add_image(rng.normal(size=shape).astype(np.float32), name="scan", scale=(1.0, 0.7, 0.7))
    att = Attribution(rng.normal(size=shape).astype(np.float32), "saliency", Class(1), None, {}, False, 1.0)
    viewer.add_layer(Layer.create(*L.attribution_layer(att, source="scan",
                                                       source_geometry={"scale": [1.0, 0.7, 0.7]})))
    marks = np.zeros(shape, np.int32)
    for k in range(1, 5):
        marks[20 * k:20 * k + 15, 10:60, 10 * k:10 * k + 40] = k
    viewer.add_labels(marks, name="marks", scale=(1.0, 0.7, 0.7))
    dock = ExplainWidget(viewer)
    wait_model(qtbot, dock)
    box = dock.landmarks
    box.choose(labels="marks")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        table = box.update_table()
        times.append(time.perf_counter() - t0)
    assert table is not None and len(table.rows) == 4
    assert table.rows[0].volume_mm3 == pytest.approx(15 * 50 * 40 * 0.49)
    print(f"landmark table, 128^3, 4 landmarks, GUI update: best {min(times) * 1000:.0f} ms")
    assert min(times) < 0.3
