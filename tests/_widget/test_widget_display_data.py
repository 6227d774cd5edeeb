"""Hiding a heatmap outside the body is a display choice, in a real napari viewer: the body mask is found in a
worker thread (the GUI keeps going) once per scan, toggling "outside the body" shows the map hidden or in full at
once, the landmark tables and File > Save use the full map, and the Compare dock has the same display rows."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _widget_helpers import PHANTOM_SCALE, PHANTOM_TRANSLATE, heatmaps, wait_idle
from qtpy.QtCore import Qt, QTimer

from napari_attribution import layers as L
from napari_attribution._widget._landmarks import voxel_spacing
from napari_attribution.layers import FULL_MAP_KEY, OWNER_KEY
from napari_attribution.metrics import landmark_table

pytestmark = pytest.mark.gui


def choose_outside(box: Any, key: str) -> None:
    box.outside.setCurrentIndex(box.outside.findData(key))


def landmarks(viewer: Any) -> np.ndarray:
    """Three landmarks on the phantom: 1 inside the body, 2 in the air around it, 3 across the body's edge."""
    scan = viewer.layers["phantom"].data
    body, _ = L.body_mask(scan)
    marks = np.zeros(scan.shape, np.int32)
    marks[6:10, 11:17, 11:17] = 1
    marks[:, :2, :] = 2
    marks[6:10, :, 12:14] = 3
    assert body[marks == 1].all() and not body[marks == 2].any() and 0 < body[marks == 3].mean() < 1
    viewer.add_labels(marks, name="marks", scale=PHANTOM_SCALE, translate=PHANTOM_TRANSLATE)
    return marks


def test_the_body_is_found_off_the_gui_thread_once_per_scan_and_toggling_applies_it(
        dock: Any, qtbot: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body mask's scan is held up in its worker: meanwhile the run's heatmap is placed (the event loop
    turns), shown in full, and the dock counts as busy; toggling waits for the same worker. Released, the mask is
    applied; toggling again uses the cached mask at once (one scan in all)."""
    viewer = dock.viewer
    real = L.body_mask
    release = threading.Event()
    ran_on: list[threading.Thread] = []

    def held(scan: Any, **kwargs: Any) -> Any:
        ran_on.append(threading.current_thread())
        release.wait(timeout=30)  # on the GUI thread this would freeze the viewer, then fail the asserts below
        return real(scan, **kwargs)

    monkeypatch.setattr(L, "body_mask", held)
    ticks: list[int] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(5)
    dock.set_method("saliency")
    dock.run(confirm=False)
    qtbot.waitUntil(lambda: bool(heatmaps(viewer)) and not dock.running and not dock._steps, timeout=60_000)
    assert ran_on and ran_on[0] is not threading.main_thread() and not release.is_set()
    assert dock.display.busy and dock.busy and not dock.run_button.isEnabled()
    [heat] = heatmaps(viewer)
    raw = dock.last_outcome.results["saliency"].data
    assert np.isfinite(heat.data).all()  # in full until the body is known
    viewer.layers.selection.active = heat
    choose_outside(dock.display, "all")  # returns at once: the same worker is still at work
    seen = len(ticks)
    qtbot.waitUntil(lambda: len(ticks) > seen + 3, timeout=5_000)  # the event loop runs while the mask is found
    assert np.isfinite(heat.data).all() and dock.display.busy and len(ran_on) == 1
    release.set()
    qtbot.waitUntil(lambda: not dock.busy, timeout=60_000)
    timer.stop()
    body, how = real(viewer.layers["phantom"].data)
    heat = viewer.layers[heat.name]
    shown = np.asarray(heat.data)
    assert np.isnan(shown[~body]).all()
    np.testing.assert_array_equal(shown[body], raw[body])
    assert heat.metadata[OWNER_KEY]["display_mask"]["region"] == how
    assert heat.metadata[FULL_MAP_KEY] is raw  # the run's map itself, not a copy
    signed = bool(heat.metadata[OWNER_KEY]["signed"])
    inside = L.region_limits(raw, signed, 99.5, body)
    assert inside != pytest.approx(L.region_limits(raw, signed, 99.5, None))
    assert tuple(heat.contrast_limits) == pytest.approx(inside)  # limits from inside the body
    assert dock.run_button.isEnabled() and "Clear outside the body" in dock.colour_bar.text()
    # toggling again: the cached mask, at once
    choose_outside(dock.display, "none")
    assert heat.data is raw and FULL_MAP_KEY not in heat.metadata and "display_mask" not in heat.metadata[OWNER_KEY]
    assert "Clear outside the body" not in dock.colour_bar.text()
    choose_outside(dock.display, "all")
    assert np.isnan(np.asarray(heat.data)[~body]).all() and not dock.busy
    assert len(ran_on) == 1  # one scan of the body for the run and three toggles


def test_a_hidden_heatmap_is_scored_and_saved_in_full(dock: Any, qtbot: Any, tmp_path: Path) -> None:
    """Occlusion is hidden outside the body by default; the landmark table is the full map's (a landmark in the
    air keeps its share), the same when shown in full, and File > Save writes every value."""
    viewer = dock.viewer
    marks = landmarks(viewer)
    dock.set_method("occlusion", window=8, stride=8)
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    raw = dock.last_outcome.results["occlusion"].data
    [heat] = heatmaps(viewer)
    body, _ = L.body_mask(viewer.layers["phantom"].data)
    assert np.isnan(np.asarray(heat.data)[~body]).all() and np.abs(raw[~body]).max() > 0
    spacing = voxel_spacing(heat, 3)
    expected = landmark_table(raw, marks, spacing=spacing).csv()
    masked = landmark_table(np.asarray(heat.data), marks, spacing=spacing).csv()
    assert masked != expected  # what scoring the layer's data would give
    hidden = dock.landmarks.choose(heatmap=heat.name, labels="marks")
    assert hidden is not None and hidden.csv() == expected
    viewer.layers.selection.active = heat
    choose_outside(dock.display, "none")
    assert np.isfinite(heat.data).all()
    shown = dock.landmarks.update_table()
    assert shown is not None and shown.csv() == expected
    choose_outside(dock.display, "auto")
    assert np.isnan(np.asarray(heat.data)[~body]).all()
    # File > Save Selected Layers through the plugin's writer: the full map, the sidecar names the mask
    import json

    from napari_attribution import _napari_io as nio

    written = heat.save(str(tmp_path / "heat.nii.gz"), plugin="napari-attribution")
    [(back, _, _)] = nio.read(written[0])
    np.testing.assert_allclose(back, raw)
    side = json.loads(Path(written[1]).read_text())["napari_attribution"]["display_mask"]
    assert side["saved"].startswith("the full map") and side["voxels_inside"] == int(body.sum())


def test_compare_dock_has_the_display_rows_for_its_heatmaps(compare: Any, qtbot: Any) -> None:
    viewer = compare.viewer
    marks = landmarks(viewer)
    compare.set_methods(["saliency", "occlusion"])
    compare.run(confirm=False)
    wait_idle(qtbot, compare)
    out = compare.last_outcome
    assert out.status == "ok", out.message
    box = compare.display
    assert box.isVisibleTo(compare) and box.adjust_button.isVisibleTo(compare)
    body, _ = L.body_mask(viewer.layers["phantom"].data)
    heat = {la.metadata[OWNER_KEY]["method"]: la for la in heatmaps(viewer)}
    assert np.isnan(np.asarray(heat["occlusion"].data)[~body]).all() and np.isfinite(heat["saliency"].data).all()
    spacing = voxel_spacing(heat["saliency"], 3)
    table = compare.landmarks.choose(labels="marks")
    assert table is not None
    for method, att in out.results.items():
        assert compare.landmarks.tables[method].csv() == landmark_table(att.data, marks, spacing=spacing).csv()
    before = table.csv()
    choose_outside(box, "all")  # every compared heatmap, whichever is selected
    for la in heat.values():
        assert np.isnan(np.asarray(la.data)[~body]).all()
    choose_outside(box, "none")
    for method, la in heat.items():
        assert la.data is out.results[method].data
    after = compare.landmarks.update_table()
    assert after is not None and after.csv() == before
    # Adjust limits: every compared heatmap, from the region chosen
    box.region.setCurrentIndex(box.region.findData("whole"))
    qtbot.mouseClick(box.adjust_button, Qt.MouseButton.LeftButton)
    whole = {m: tuple(la.contrast_limits) for m, la in heat.items()}
    for method, la in heat.items():
        signed = bool(la.metadata[OWNER_KEY]["signed"])
        assert whole[method] == pytest.approx(L.region_limits(out.results[method].data, signed, 99.5, None))
        assert la.metadata[OWNER_KEY]["contrast_region"] == "the whole map"
    box.region.setCurrentIndex(box.region.findData("body"))
    qtbot.mouseClick(box.adjust_button, Qt.MouseButton.LeftButton)
    for method, la in heat.items():
        signed = bool(la.metadata[OWNER_KEY]["signed"])
        assert tuple(la.contrast_limits) == pytest.approx(
            L.region_limits(out.results[method].data, signed, 99.5, body))
        assert la.metadata[OWNER_KEY]["contrast_region"].startswith("inside the body")
    assert any(tuple(la.contrast_limits) != pytest.approx(whole[m]) for m, la in heat.items())  # it made a difference


def test_slices_of_a_2d_model_hidden_outside_the_body_keep_their_full_map(dock: Any, qtbot: Any) -> None:
    """Each run's slice joins the layer hidden outside the body; the full map merges the same slices, so the
    layer shown in full again has every value of both slices."""
    import torch
    from _nets import Classifier

    torch.manual_seed(0)
    viewer = dock.viewer
    dock.set_model(Classifier(d=2, classes=2).eval(), source="2d classifier")
    dock.target.set_kind("class")
    dock.target.k1.setCurrentIndex(1)
    dock.set_method("saliency")
    choose_outside(dock.display, "all")
    body, _ = L.body_mask(viewer.layers["phantom"].data)
    raws = {}
    for z in (5, 9):
        viewer.dims.set_current_step(0, z)
        dock.run(confirm=False)
        wait_idle(qtbot, dock)
        assert dock.last_outcome.status == "ok", dock.last_outcome.message
        raws[z] = dock.last_outcome.results["saliency"].data[z]
    [heat] = heatmaps(viewer)
    assert heat.metadata[OWNER_KEY]["slices"] == [5, 9]
    shown, full = np.asarray(heat.data), np.asarray(heat.metadata[FULL_MAP_KEY])
    for z, raw in raws.items():
        assert np.isnan(shown[z][~body[z]]).all() and np.isfinite(raw).all()
        np.testing.assert_array_equal(full[z], raw)
    assert np.isnan(full[4]).all()  # a slice no run explained
    viewer.layers.selection.active = heat
    choose_outside(dock.display, "none")
    for z, raw in raws.items():
        np.testing.assert_array_equal(np.asarray(heat.data)[z], raw)


def test_a_layer_sweep_is_hidden_and_shown_per_network_layer(dock: Any, qtbot: Any) -> None:
    """A sweep heatmap (leading network-layer axis) is hidden outside the body on every network layer, each with
    its limits from inside the body; shown again, it is the stacked maps."""
    viewer = dock.viewer
    dock.set_method("layer_activation")
    dock.sweep.enabled.setChecked(True)
    qtbot.mouseClick(dock.sweep.all_button, Qt.MouseButton.LeftButton)
    dock.target.set_kind("class")
    dock.target.k1.setCurrentIndex(1)
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    [heat] = heatmaps(viewer)
    full = np.array(heat.data)
    assert full.ndim == 4 and np.isfinite(full).all()  # layer activation is not hidden by default
    body, _ = L.body_mask(viewer.layers["phantom"].data)
    viewer.layers.selection.active = heat
    choose_outside(dock.display, "all")
    shown = np.asarray(heat.data)
    assert np.isnan(shown[:, ~body]).all()
    np.testing.assert_array_equal(shown[:, body], full[:, body])
    info = heat.metadata[OWNER_KEY]
    signed = bool(info["signed"])
    assert info["layer_contrast_limits"] == [list(L.region_limits(full[i], signed, 99.5, body))
                                             for i in range(full.shape[0])]
    choose_outside(dock.display, "none")
    np.testing.assert_array_equal(np.asarray(heat.data), full)
