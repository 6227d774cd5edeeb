"""The model card in the dock: a guessed card is shown as a guess and can be corrected before explaining."""

from __future__ import annotations

from typing import Any

import pytest
from _widget_helpers import ThresholdSegmenter, wait_model

import napari_attribution as na


@pytest.fixture
def dock(phantom_viewer: Any, qtbot: Any) -> Any:
    from napari_attribution._widget import ExplainWidget

    widget = ExplainWidget(phantom_viewer)
    qtbot.addWidget(widget)
    wait_model(qtbot, widget)
    return widget


def test_guessed_card_is_marked_and_edits_apply(dock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    editor = dock.card_editor
    assert editor.card is not None and not editor.card.inferred  # the demo ships a card
    assert "from file" in editor.title()
    dock.set_model(ThresholdSegmenter.make(), source="threshold segmenter")
    assert editor.card.inferred and "guessed" in editor.title()
    assert editor.card.spatial_dims == 3 and editor.card.in_channels == 1
    labels = [editor._form.labelForField(w) for w in (editor.task, editor.output, editor.spacing)]
    assert not editor.isChecked() and not any(la.isVisibleTo(editor) for la in labels)  # collapsed: no rows
    editor.setChecked(True)
    assert editor.apply_button.isVisibleTo(editor) and all(la.isVisibleTo(editor) for la in labels)
    editor.class_names.setText("tissue, lesion")
    editor.task.setCurrentText("segmentation")
    editor.default_layer.setText("0")
    editor.apply()
    info = dock.model_info
    assert info.class_names == ("tissue", "lesion") and info.task == "segmentation"
    assert info.default_layer == "0" and not editor.card.inferred
    assert "lesion" in dock.model_status.text()


def test_bad_card_values_give_one_notification_and_keep_the_model(dock: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    messages: list[tuple[str, str]] = []
    monkeypatch.setattr("napari_attribution._widget._common.notify", lambda lvl, msg: messages.append((lvl, msg)))
    before = dock.model_info
    editor = dock.card_editor
    editor.preprocess.setText("{window: oops")
    editor.apply()
    assert messages and messages[-1][0] == "error" and "JSON" in messages[-1][1]
    editor.preprocess.setText("")
    editor.spacing.setText("1.5, abc")
    editor.apply()
    assert "spacing" in messages[-1][1]
    editor.spacing.setText("")
    editor.preprocess.setText('{"windw": [0, 1]}')
    editor.apply()
    assert messages[-1][0] == "error"
    assert dock.model_info is before
    assert isinstance(na.ModelCard, type)
