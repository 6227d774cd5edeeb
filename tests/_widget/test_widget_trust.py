""""Check this map" (Explain dock) in a real viewer: the table's numbers are ``na.evaluate``'s with the same
parameters and are stored in the heatmap's metadata, integrated gradients adds its completeness, a cancelled run
stores nothing and leaves the model as it was, and a heatmap the dock did not make gets one clear message."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pytest
import torch
from _widget_helpers import ThresholdSegmenter, heatmaps, wait_idle
from methods.test_model_unchanged import assert_untouched, snapshot
from qtpy.QtWidgets import QApplication
from torch import nn

import napari_attribution as na
from napari_attribution.layers import OWNER_KEY

pytestmark = pytest.mark.gui


def explain(qtbot: Any, dock: Any, method: str, **params: Any) -> Any:
    dock.set_method(method, **params)
    dock.target.set_kind("class")
    dock.target.k1.setCurrentIndex(1)
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    heat = dock.viewer.layers.selection.active  # the dock selects the heatmap it just made
    assert heat in heatmaps(dock.viewer) and heat.metadata[OWNER_KEY]["method"] == method
    return heat


def check(qtbot: Any, dock: Any, **choice: Any) -> Any:
    box = dock.trust
    box.choose(**choice)
    assert box.run()
    assert dock.busy and not dock.run_button.isEnabled() and box.run_button.text() == "Cancel"
    wait_idle(qtbot, dock, timeout=120_000)
    assert box.run_button.text() == "Run checks" and dock.run_button.isEnabled()
    return box.last


def cells(table: Any) -> list[list[str]]:
    return [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]


def test_checks_equal_evaluate_and_travel_with_the_layer(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    box = dock.trust
    assert not box.isVisibleTo(dock)  # no heatmap yet
    heat = explain(qtbot, dock, "grad_cam")
    assert box.isVisibleTo(dock) and box.heatmap.currentText() == heat.name
    assert [c for c, b in box.boxes.items() if b.isChecked()] == ["deletion", "insertion", "randomisation"]
    outcome = check(qtbot, dock)
    assert outcome.status == "ok", outcome.message
    assert box.progress.value() == 1000
    rows = heat.metadata[OWNER_KEY]["checks"]
    assert list(rows) == ["deletion", "insertion", "randomisation"]

    att = dock.last_outcome.results["grad_cam"]
    model, image = dock.model_info.model, dock.viewer.layers["phantom"].data
    # a classifier on a scan in HU: the fill offered first is CT air, named so
    assert box.fill.itemText(0) == "CT air (\u22121000 HU)" == box.fill.currentText()
    assert rows["deletion"]["params"] == {"steps": 20, "baseline": "ct_air"}
    assert rows["insertion"]["params"] == {"steps": 20} and rows["randomisation"]["params"] == {"max_layers": 5}
    direct = {c: na.evaluate(model, image, att, c, **rows[c]["params"]) for c in rows}
    for c, score in direct.items():
        assert rows[c]["value"] == pytest.approx(score.value, rel=1e-6, abs=1e-9)
    assert rows["deletion"]["reference"] == pytest.approx(direct["deletion"].details["random_auc"], rel=1e-6)
    assert rows["insertion"]["reference"] == pytest.approx(direct["insertion"].details["random_auc"], rel=1e-6)
    assert rows["randomisation"]["reference"] == pytest.approx(direct["randomisation"].details["per_layer"][-1][1],
                                                               rel=1e-6, abs=1e-9)
    assert [r["better"] for r in rows.values()] == ["lower", "higher", "lower"]

    shown = cells(box.table)
    assert [r[0] for r in shown] == ["deletion", "insertion", "randomisation"]
    for r, c in zip(shown, rows, strict=True):
        assert r[1] == f"{rows[c]['value']:.3f}" and r[2] == f"{rows[c]['reference']:.3f}"
        assert r[3] == rows[c]["verdict"] and r[3]
    assert "Stored" in box.summary.text()

    # Copy as CSV: a header and one line per check, with the full-precision numbers
    text = box.copy_csv()
    assert QApplication.clipboard().text() == text
    lines = text.strip().splitlines()
    assert lines[0].startswith("heatmap,check,value,reference") and len(lines) == 4
    assert float(lines[1].split(",")[2]) == rows["deletion"]["value"]

    # the results stay with the layer: another heatmap shows its own (none), back to this one shows them again
    sal = explain(qtbot, dock, "saliency")
    qtbot.waitUntil(lambda: box.heatmap.currentText() == sal.name, timeout=5000)
    assert box.table.rowCount() == 0
    box.choose(heatmap=heat.name)
    assert cells(box.table) == shown
    box.setChecked(False)  # the box folds and opens from its title
    assert not box.content.isVisibleTo(box) and box.isVisibleTo(dock)
    box.setChecked(True)
    assert box.content.isVisibleTo(box)
    assert not notes


def test_integrated_gradients_adds_its_completeness(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    heat = explain(qtbot, dock, "integrated_gradients", steps=8)
    outcome = check(qtbot, dock, checks=["deletion"], fill="40")
    assert outcome.status == "ok", outcome.message
    rows = heat.metadata[OWNER_KEY]["checks"]
    assert list(rows) == ["deletion", "completeness"]
    comp = dock.last_outcome.results["integrated_gradients"].extras["completeness"]
    assert rows["completeness"]["value"] == pytest.approx(comp["relative_error"])
    assert rows["completeness"]["reference"] == pytest.approx(comp["delta"])
    assert rows["deletion"]["params"]["baseline"] == 40.0
    att = dock.last_outcome.results["integrated_gradients"]
    direct = na.evaluate(dock.model_info.model, dock.viewer.layers["phantom"].data, att, "deletion", steps=20,
                         baseline=40.0)
    assert rows["deletion"]["value"] == pytest.approx(direct.value, rel=1e-6)
    assert cells(dock.trust.table)[1][0] == "IG completeness" and "%" in cells(dock.trust.table)[1][1]
    # the only note: the Explain run's own warning when 8 steps leave the map incomplete
    assert [m for _, m in notes] == ([] if comp["relative_error"] <= 0.05 else dock.last_outcome.warnings)


class Slow(nn.Module):
    """The demo classifier, slowed down (0.1 s per forward) so that a check can be cancelled midway."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.1)
        out: torch.Tensor = self.net(x)
        return out


def test_cancel_during_randomisation_stores_nothing_and_leaves_the_model(dock: Any, qtbot: Any,
                                                                         notes: list[Any]) -> None:
    slow = Slow(dock.model_info.model.module).eval()
    dock.set_model(slow, source="slow lesion classifier (Python)")
    heat = explain(qtbot, dock, "saliency")
    box = dock.trust
    assert check(qtbot, dock, checks=["deletion"]).status == "ok"
    before_rows = dict(heat.metadata[OWNER_KEY]["checks"])
    before_cells = cells(box.table)
    before = snapshot(slow)

    box.choose(checks=["deletion", "randomisation"])
    assert box.run()
    qtbot.waitUntil(lambda: "randomisation: re-run" in box.summary.text(), timeout=60_000)
    box.run_button.click()  # the Run button is Cancel while the checks run
    wait_idle(qtbot, dock)
    assert box.last.status == "cancelled" and box.run_button.text() == "Run checks"
    assert heat.metadata[OWNER_KEY]["checks"] == before_rows  # no partial row: not even the new deletion
    assert cells(box.table) == before_cells and box.progress.value() == 0
    assert_untouched(slow, before)
    assert [n for n in notes if "cancelled" in n[1]] == notes and len(notes) == 1
    assert "nothing was stored" in notes[0][1]


class Fragile(nn.Module):
    """The demo classifier behind a weights check, as a deployed model may have: it refuses to run once its weights
    are not the ones it was built with. The randomisation check re-runs the method on a randomised copy, so it
    fails; deletion and insertion do not."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.trained = [p.detach().clone() for p in net.parameters()]  # a plain list: not a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(not torch.equal(p, q) for p, q in zip(self.net.parameters(), self.trained, strict=True)):
            raise RuntimeError("these are not the weights this model was validated with")
        out: torch.Tensor = self.net(x)
        return out


def test_a_failing_check_keeps_the_others_and_says_which_and_why(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    fragile = Fragile(dock.model_info.model.module).eval()
    dock.set_model(fragile, source="fragile lesion classifier (Python)")
    heat = explain(qtbot, dock, "saliency")
    before = snapshot(fragile)
    box = dock.trust
    outcome = check(qtbot, dock, checks=["deletion", "insertion", "randomisation"])
    assert outcome.status == "ok", outcome.message
    assert list(outcome.failed) == ["randomisation"]
    why = outcome.failed["randomisation"]  # the model's own words, in one line (the library may add context)
    assert "these are not the weights this model was validated with" in why and "\n" not in why
    # the other checks' numbers are stored, and are na.evaluate's
    rows = heat.metadata[OWNER_KEY]["checks"]
    assert list(rows) == ["deletion", "insertion", "randomisation"]
    att = dock.last_outcome.results["saliency"]
    scan = dock.viewer.layers["phantom"].data
    for c in ("deletion", "insertion"):
        assert rows[c]["value"] == pytest.approx(na.evaluate(fragile, scan, att, c, steps=20).value, rel=1e-6)
    assert rows["randomisation"]["value"] is None and rows["randomisation"]["error"] == why
    table = cells(box.table)
    assert table[2][0] == "randomisation" and table[2][1] == "failed" and table[2][3] == f"failed: {why}"
    assert table[0][1] != "failed" and float(table[0][1]) == pytest.approx(rows["deletion"]["value"], abs=6e-4)
    # one message that names the failed check and why, as a warning
    assert f"randomisation failed: {why}" in box.summary.text() and "2 of 3 checks" in box.summary.text()
    assert [n for n in notes if "randomisation failed" in n[1]] == [("warning", notes[-1][1])]
    csv_rows = [line.split(",") for line in box.csv().splitlines()]
    assert csv_rows[3][1:3] == ["randomisation", ""] and float(csv_rows[1][2]) == rows["deletion"]["value"]
    assert_untouched(fragile, before)


def test_a_heatmap_the_dock_did_not_make_gets_one_clear_message(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    from napari.layers import Layer

    from napari_attribution import layers as L

    viewer = dock.viewer
    box = dock.trust
    image = viewer.layers["phantom"].data
    att = na.explain(dock.model_info.model, image, "saliency", 1)  # as if opened from a file
    viewer.add_layer(Layer.create(*L.attribution_layer(att, source="phantom", name="saliency from disk")))
    assert box.isVisibleTo(dock)
    box.choose(heatmap="saliency from disk")
    assert "re-run Explain" in box.summary.text()
    assert not box.run() and not box.running
    assert len(notes) == 1 and "re-run Explain" in notes[0][1] and "saliency from disk" in notes[0][1]
    assert "Traceback" not in notes[0][1] and "checks" not in viewer.layers["saliency from disk"].metadata[OWNER_KEY]

    # a heatmap of the dock, but the dock's model changed since: the same kind of message
    heat = explain(qtbot, dock, "saliency")
    dock.set_model(ThresholdSegmenter.make(), source="lesion segmenter (Python)")
    box.choose(heatmap=heat.name)
    assert not box.run()
    assert len(notes) == 2 and "no longer the dock's model" in notes[1][1] and "re-run Explain" in notes[1][1]

    # nothing ticked, a bad fill value: one message each, nothing started
    heat2 = explain(qtbot, dock, "saliency")
    box.choose(heatmap=heat2.name, checks=[])
    assert not box.run() and "Tick at least one check" in notes[-1][1]
    box.choose(checks=["deletion"], fill="air")
    assert not box.run() and "fill value" in notes[-1][1]
    assert len(notes) == 4 and not np.any(["checks" in la.metadata[OWNER_KEY] for la in heatmaps(viewer)])


def test_a_box_run_is_checked_on_the_box_and_failures_are_one_line() -> None:
    """Qt-free parts: a heatmap of a box (ROI) is checked on the box, as it was explained; a check that cannot run
    gives a failed outcome with one readable message (never an exception)."""
    from napari_attribution._widget._trust import CheckRequest, check_job, explained_from
    from napari_attribution.runs.jobs import ExplainRequest
    from napari_attribution.runs.model_info import model_info

    net = ThresholdSegmenter.make()
    info = model_info(net, "segmenter")
    scan = np.full((12, 16, 16), 40.0, np.float32)
    scan[4:8, 5:10, 5:10] = 300.0
    box = ((2, 10), (3, 13), (3, 13))
    sub = scan[2:10, 3:13, 3:13]
    att = na.explain(net, sub, "saliency")
    full = np.full(scan.shape, np.nan, np.float32)
    full[2:10, 3:13, 3:13] = att.data
    pasted = dataclasses.replace(att, data=full, extras={"roi": [list(b) for b in box]})
    request = ExplainRequest(model=info, image=scan, source="scan", methods=["saliency"], roi=box)
    ex = explained_from(pasted, request, "heat")
    assert ex.note == "" and ex.image.shape == sub.shape and ex.attribution.data.shape == sub.shape
    out = check_job(CheckRequest(ex, ["deletion"], {"deletion": {"steps": 10}}))
    assert out.status == "ok", out.message
    assert out.rows["deletion"]["value"] == na.evaluate(net, sub, att, "deletion", steps=10).value

    bad = check_job(CheckRequest(ex, ["deletion"], {"deletion": {"steps": 0}}))
    assert bad.status == "failed" and not bad.rows
    assert bad.message == "The checks failed: deletion failed: steps must be at least 1."
    assert bad.failed == {"deletion": "steps must be at least 1"}
    # one check failing keeps the others: the failed one gets a row that says why, without a number
    part = check_job(CheckRequest(ex, ["deletion", "insertion"],
                                  {"deletion": {"steps": 0}, "insertion": {"steps": 6}}))
    assert part.status == "ok" and part.failed == {"deletion": "steps must be at least 1"}
    assert part.message.startswith("1 of 2 checks in ") and "deletion failed: steps must be at least 1" in part.message
    assert part.rows["insertion"]["value"] == na.evaluate(net, sub, att, "insertion", steps=6).value
    assert part.rows["deletion"]["value"] is None and part.rows["deletion"]["verdict"].startswith("failed: steps")
    assert list(part.rows) == ["deletion", "insertion"]
    sliced = explained_from(pasted, ExplainRequest(model=info, image=scan, source="scan", methods=["saliency"],
                                                   slices=[3]), "heat")
    assert sliced.note == "" and sliced.kind == "slice" and not sliced.parts  # no explained slice to check


# ------------------------------------------------------------------------------------------------ layer sweeps


def test_a_sweep_is_checked_at_the_network_layer_the_slider_shows(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    viewer, box = dock.viewer, dock.trust
    names = [dock.model_info.layers[0], dock.model_info.layers[-1]]  # a shallow and the deepest
    dock.set_sweep(names)
    heat = explain(qtbot, dock, "grad_cam")
    assert heat.metadata[OWNER_KEY]["sweep"] and heat.metadata[OWNER_KEY]["layers"] == names
    results = dock.last_outcome.results
    assert [results[n].layer for n in names] == names  # each map knows its network layer: the re-runs use it
    dock.show_network_layer(1)
    assert box.view(heat) == ("network layer", names[1]) and box.table.rowCount() == 0
    assert f"network layer 2 of 2: {names[1]}" in box.view_label.text()
    outcome = check(qtbot, dock, checks=["deletion", "randomisation", "max_sensitivity"])
    assert outcome.status == "ok", outcome.message
    checks = heat.metadata[OWNER_KEY]["checks"]
    assert list(checks) == [names[1]] and list(checks[names[1]]) == ["deletion", "randomisation", "max_sensitivity"]
    assert names[1] in box.summary.text() and "stored" in box.summary.text()

    model, image = dock.model_info.model, viewer.layers["phantom"].data
    rows = checks[names[1]]
    for c, row in rows.items():
        direct = na.evaluate(model, image, results[names[1]], c, **row["params"])
        assert row["value"] == pytest.approx(direct.value, rel=1e-6, abs=1e-9), c
    # the randomisation re-runs are at that network layer: the map at the other layer gives other numbers
    other = na.evaluate(model, image, results[names[0]], "max_sensitivity", **rows["max_sensitivity"]["params"])
    assert other.value != pytest.approx(rows["max_sensitivity"]["value"], rel=1e-6)
    shown = cells(box.table)
    assert [r[0] for r in shown] == ["deletion", "randomisation", "max-sensitivity"]

    # the slider shows the other network layer: its (empty) table, and a hint
    dock.show_network_layer(0)
    assert box.table.rowCount() == 0 and names[0] in box.view_label.text()
    assert "No checks of network layer" in box.summary.text() and names[0] in box.summary.text()
    assert check(qtbot, dock, checks=["deletion"]).status == "ok"
    checks = heat.metadata[OWNER_KEY]["checks"]
    assert set(checks) == set(names) and list(checks[names[0]]) == ["deletion"]
    direct = na.evaluate(model, image, results[names[0]], "deletion", **checks[names[0]]["deletion"]["params"])
    assert checks[names[0]]["deletion"]["value"] == pytest.approx(direct.value, rel=1e-6)
    assert [r[0] for r in cells(box.table)] == ["deletion"]
    assert box.csv().splitlines()[1].startswith(f"{heat.name} (network layer 1 of 2: {names[0]}),deletion,")
    dock.show_network_layer(1)
    assert cells(box.table) == shown
    assert not notes


# ------------------------------------------------------------------------------------------------ slice-wise maps


def plane(att: Any, z: int) -> Any:
    """The 2D Attribution of slice ``z`` of a slice-wise map, as a user would build it."""
    from napari_attribution._widget._trust import _plane_geometry

    return dataclasses.replace(att, data=att.data[z], target=att.per_slice.targets[z], prediction=att.prediction[z],
                               per_channel=None, extras={}, geometry=_plane_geometry(att.geometry), per_slice=None)


def test_a_slice_wise_map_is_checked_on_the_slice_shown(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    from _nets import Classifier

    torch.manual_seed(0)
    viewer, box = dock.viewer, dock.trust
    net = Classifier(d=2, classes=2).eval()
    dock.set_model(net, source="2d classifier")
    viewer.dims.set_current_step(0, 5)
    heat = explain(qtbot, dock, "grad_cam")
    att = dock.last_outcome.results["grad_cam"]
    assert att.per_slice.slices == (5,)
    assert box.view(heat) == ("slice", "slice 5") and "slice 5" in box.view_label.text()
    outcome = check(qtbot, dock, checks=["deletion", "insertion", "randomisation"])
    assert outcome.status == "ok", outcome.message
    checks = heat.metadata[OWNER_KEY]["checks"]
    assert list(checks) == ["slice 5"] and list(checks["slice 5"]) == ["deletion", "insertion", "randomisation"]
    assert "slice 5" in box.summary.text()
    image = np.asarray(viewer.layers["phantom"].data)
    for c, row in checks["slice 5"].items():
        direct = na.evaluate(net, image[5], plane(att, 5), c, **row["params"])
        assert row["value"] == pytest.approx(direct.value, rel=1e-6, abs=1e-9), c
    shown = cells(box.table)
    assert len(shown) == 3

    # a slice without explained values: one clear message, nothing runs
    viewer.dims.set_current_step(0, 2)
    assert box.table.rowCount() == 0 and "move the slider to an explained slice (5)" in box.summary.text()
    assert not box.run() and not box.running
    assert len(notes) == 1 and "Slice 2" in notes[0][1] and "explained slice (5)" in notes[0][1]

    # explain slice 9 too (the slices join one heatmap): slice 5 keeps its checks, slice 9 is checked on its own
    viewer.dims.set_current_step(0, 9)
    heat = explain(qtbot, dock, "grad_cam")
    assert heat.metadata[OWNER_KEY]["slices"] == [5, 9]
    assert box.table.rowCount() == 0 and "No checks of slice 9" in box.summary.text()
    assert check(qtbot, dock, checks=["deletion"]).status == "ok"
    checks = heat.metadata[OWNER_KEY]["checks"]
    assert set(checks) == {"slice 5", "slice 9"} and list(checks["slice 9"]) == ["deletion"]
    att9 = dock.last_outcome.results["grad_cam"]
    direct = na.evaluate(net, image[9], plane(att9, 9), "deletion", **checks["slice 9"]["deletion"]["params"])
    assert checks["slice 9"]["deletion"]["value"] == pytest.approx(direct.value, rel=1e-6)
    viewer.dims.set_current_step(0, 5)
    assert cells(box.table) == shown
    assert len(notes) == 1


def test_slice_wise_maps_of_a_box_are_cut_per_slice() -> None:
    """Qt-free: a slice-wise map of a box (ROI) gives one 2D part per explained slice — the box's slice of the map
    and of the scan, that slice's target — and a map on the model's resampled grid keeps a clear note."""
    from _nets import Classifier

    from napari_attribution._widget._trust import CheckRequest, check_job, explained_from
    from napari_attribution.runs.jobs import ExplainRequest, _paste
    from napari_attribution.runs.model_info import model_info

    torch.manual_seed(0)
    net = Classifier(d=2, classes=2).eval()
    info = model_info(net, "2d")
    scan = np.random.default_rng(0).normal(size=(10, 24, 24)).astype(np.float32)
    roi = (slice(2, 8), slice(4, 20), slice(4, 20))
    sub = scan[roi]
    att = na.explain(net, sub, "saliency", 1, params={"slices": [1, 3]})
    pasted = _paste(att, scan.shape, roi)
    assert pasted.per_slice.slices == (3, 5) and pasted.per_slice.targets[5] == att.per_slice.targets[3]
    request = ExplainRequest(model=info, image=scan, source="scan", methods=["saliency"], roi=roi, slices=[3, 5])
    ex = explained_from(pasted, request, "heat")
    assert ex.note == "" and ex.kind == "slice" and list(ex.parts) == ["slice 3", "slice 5"]
    part = ex.parts["slice 5"]
    np.testing.assert_array_equal(part.image, sub[3])
    np.testing.assert_array_equal(part.attribution.data, att.data[3])
    assert part.attribution.target == att.per_slice.targets[3]
    out = check_job(CheckRequest(part, ["deletion"], {"deletion": {"steps": 10}}))
    assert out.status == "ok", out.message
    assert out.rows["deletion"]["value"] == na.evaluate(net, sub[3], plane(att, 3), "deletion", steps=10).value

    resampled = dataclasses.replace(pasted, extras={**pasted.extras, "model_grid_shape": (6, 8, 8)})
    assert "resampled grid" in explained_from(resampled, request, "heat").note
    sweep = explained_from(pasted, dataclasses.replace(request, sweep_layers=["a"]), "heat", {"a": pasted})
    assert "layer sweep" in sweep.note and "slice by slice" in sweep.note
