"""Method parameters with listed values in the Explain dock (real viewer): a drop-down whose first item keeps the
method's default, editable where the method also takes other values; what the form sends to the run."""

from __future__ import annotations

from typing import Any

import pytest
from _widget_helpers import heatmaps, wait_idle
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QLineEdit

from napari_attribution.layers import OWNER_KEY

pytestmark = pytest.mark.gui


def choose(dock: Any, method: str) -> None:
    """Pick ``method`` in the dock's method drop-down, as a user would."""
    dock.method.setCurrentIndex(dock.method.findData(method))


def items(combo: QComboBox) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def test_a_closed_set_is_a_drop_down(dock: Any, qtbot: Any) -> None:
    choose(dock, "evidence")
    form = dock.params
    mode = form.combos["mode"]
    assert form.field("mode") is mode and "mode" not in form.edits
    assert isinstance(mode, QComboBox) and mode.isVisibleTo(dock) and not mode.isEditable()
    assert items(mode) == ["default (conditional_mean)", "conditional_mean", "taylor", "screened",
                          "conditional_sample"]
    assert "taylor" in mode.toolTip() and "default" in mode.toolTip()
    assert isinstance(form.field("window"), QLineEdit)  # a free parameter keeps its JSON line
    assert "mode" not in form.values()  # the default item sends nothing: the method's default applies

    mode.setCurrentIndex(mode.findText("screened"))
    assert form.values() == {"mode": "screened"}
    assert dock.method_params() == {"evidence": {"mode": "screened"}}
    mode.setCurrentIndex(0)
    assert form.values() == {}

    # from a script: set_method selects the item
    dock.set_method("evidence", mode="taylor", window=6)
    assert mode.currentText() == "taylor" and form.values() == {"mode": "taylor", "window": 6}


def test_a_switch_is_a_false_true_drop_down(dock: Any, qtbot: Any) -> None:
    choose(dock, "guided_backprop")
    form = dock.params
    fix = form.combos["stride_fix"]
    assert items(fix) == ["default (false)", "false", "true"] and not fix.isEditable()
    assert form.values() == {}
    fix.setCurrentIndex(fix.findText("true"))
    assert form.values() == {"stride_fix": True}
    dock.set_method("guided_backprop", stride_fix=False)
    assert fix.currentText() == "false" and form.values() == {"stride_fix": False}


def test_an_open_set_is_an_editable_drop_down(dock: Any, qtbot: Any) -> None:
    choose(dock, "occlusion")
    form = dock.params
    baseline = form.combos["baseline"]
    assert baseline.isEditable() and items(baseline) == ["default (min)", "min", "mean"]
    edit = baseline.lineEdit()
    assert edit.text() == "" and edit.placeholderText() == "default (min)"  # greyed, like a free parameter
    assert "baseline" not in form.values()

    baseline.setCurrentIndex(baseline.findText("mean"))
    assert form.values() == {"baseline": "mean"}
    baseline.setCurrentIndex(0)  # back to the default item: the line empties again
    assert edit.text() == "" and "baseline" not in form.values()

    edit.clear()
    qtbot.keyClicks(edit, "0")
    value = form.values()["baseline"]
    assert value == 0 and isinstance(value, int)
    edit.clear()
    qtbot.keyClicks(edit, "-1000.5")
    assert form.values() == {"baseline": -1000.5}
    edit.clear()
    assert "baseline" not in form.values()  # cleared = the default

    dock.set_method("occlusion", baseline=0.25)
    assert baseline.currentText() == "0.25" and form.values() == {"baseline": 0.25}
    dock.set_method("occlusion", baseline="min")
    assert baseline.currentIndex() == 1 and form.values() == {"baseline": "min"}


def test_a_typed_baseline_reaches_the_run(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    choose(dock, "occlusion")
    dock.set_method("occlusion", window=8, stride=8)
    edit = dock.params.combos["baseline"].lineEdit()
    edit.clear()
    qtbot.keyClicks(edit, "0")
    qtbot.keyClick(edit, Qt.Key.Key_Return)
    assert dock.params.values()["baseline"] == 0  # Return adds no item and keeps the typed value
    assert dock.params.combos["baseline"].count() == 3
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    [heat] = heatmaps(dock.viewer)
    assert heat.metadata[OWNER_KEY]["params"]["baseline"] == 0
    assert not notes


def test_the_seed_row_is_shown_exactly_for_the_stochastic_methods(qtbot: Any) -> None:
    """The registry's ``stochastic`` decides the seed row (occlusion, deterministic, had one: it was shown for the
    whole perturbation family)."""
    import napari_attribution as na
    from napari_attribution._widget._form import ParamsForm

    form = ParamsForm()
    qtbot.addWidget(form)
    shown = []
    for m in na.list_methods():
        form.set_method(m)
        if form.field("seed") is not None:
            shown.append(m.name)
    assert shown == [m.name for m in na.list_methods() if m.stochastic]
    assert shown == ["smoothgrad", "rise", "prediction_difference", "evidence"]
