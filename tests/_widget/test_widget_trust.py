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
    assert rows["deletion"]["params"] == {"steps": 20, "baseline": "min"}
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
    from napari_attribution._widget._jobs import ExplainRequest
    from napari_attribution._widget._models import model_info
    from napari_attribution._widget._trust import CheckRequest, check_job, explained_from

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
    assert bad.status == "failed" and bad.message == "The checks failed: steps must be at least 1." and not bad.rows
    sliced = explained_from(pasted, ExplainRequest(model=info, image=scan, source="scan", methods=["saliency"],
                                                   slices=[3]), "heat")
    assert "slice by slice" in sliced.note
