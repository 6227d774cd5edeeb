"""The model card, shown and editable in the dock: a guessed card (a plain module or a checkpoint without a card
file) is marked as a guess, and the user can correct what the guess got wrong (task, class names, output,
default layer, preprocessing, spacing) before explaining. Only delegates: the card itself is validated by
``napari_attribution.ModelCard.from_dict``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QLineEdit, QPushButton, QWidget

import napari_attribution as na

__all__ = ["CardEditor"]


class CardEditor(QGroupBox):
    """Collapsible editor of the loaded model's card; ``on_apply(card)`` receives the edited, validated card."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Model card", parent)
        self.setCheckable(True)
        self.setChecked(False)  # collapsed until the user opens it
        self.on_apply: Callable[[na.ModelCard], None] | None = None
        self.card: na.ModelCard | None = None
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.task = QComboBox()
        self.task.addItems(["(from the output)", "classification", "segmentation"])
        self.output = QComboBox()
        self.output.addItems(["logits", "probabilities"])
        self.class_names = QLineEdit()
        self.class_names.setPlaceholderText("comma-separated, e.g. background, vessel")
        self.default_layer = QLineEdit()
        self.default_layer.setPlaceholderText("dotted name; empty = found automatically")
        self.preprocess = QLineEdit()
        self.preprocess.setPlaceholderText('JSON, e.g. {"window": [-100, 300]}')
        self.spacing = QLineEdit()
        self.spacing.setPlaceholderText("mm per voxel in (z, y, x), e.g. 1.5, 1.5, 1.5; empty = none")
        self.apply_button = QPushButton("Apply card")
        self.apply_button.clicked.connect(self.apply)
        self._form = form = QFormLayout(self)
        form.addRow(self.note)
        for label, w in (("task", self.task), ("output", self.output), ("classes", self.class_names),
                         ("layer", self.default_layer), ("preprocess", self.preprocess), ("spacing", self.spacing)):
            form.addRow(label, w)
        form.addRow(self.apply_button)
        self.toggled.connect(self._show)
        self._show(False)

    def _show(self, on: bool) -> None:
        """Open or collapse the box: the fields and their row labels (a hidden field keeps its label visible)."""
        for w in (self.note, self.task, self.output, self.class_names, self.default_layer, self.preprocess,
                  self.spacing, self.apply_button):
            w.setVisible(on)
            label = self._form.labelForField(w)
            if label is not None:
                label.setVisible(on)

    def set_card(self, card: na.ModelCard | None) -> None:
        """Show ``card`` (None: nothing loaded)."""
        self.card = card
        self.setEnabled(card is not None)
        if card is None:
            return
        guessed = "guessed from the model (check it, then Apply)" if card.inferred else "read from the card file"
        self.setTitle(f"Model card ({'guessed' if card.inferred else 'from file'})")
        self.note.setText(f"This card was {guessed}. Dimensions: {card.spatial_dims}D, "
                          f"input channels: {card.in_channels}.")
        self.task.setCurrentIndex({"classification": 1, "segmentation": 2}.get(card.task or "", 0))
        self.output.setCurrentText(card.output)
        self.class_names.setText(", ".join(card.class_names or ()))
        self.default_layer.setText(card.default_layer or "")
        self.preprocess.setText(json.dumps(card.preprocess) if card.preprocess else "")
        self.spacing.setText(", ".join(f"{s:g}" for s in card.spacing) if card.spacing else "")

    def edited(self) -> na.ModelCard:
        """The card with the user's edits (raises ``ModelLoadError`` / ``ValueError`` with a message)."""
        if self.card is None:
            raise na.ModelLoadError("Load a model first.")
        data: dict[str, Any] = self.card.to_dict()
        data["task"] = None if self.task.currentIndex() == 0 else self.task.currentText()
        data["output"] = self.output.currentText()
        names = [n.strip() for n in self.class_names.text().split(",") if n.strip()]
        data["class_names"] = names or None
        if names and "num_classes" in data:
            data["num_classes"] = len(names)
        data["default_layer"] = self.default_layer.text().strip() or None
        text = self.preprocess.text().strip()
        try:
            data["preprocess"] = json.loads(text) if text else None
        except json.JSONDecodeError as err:
            raise na.ModelLoadError(f"The preprocessing is not valid JSON ({err.msg}); e.g. "
                                    '{"window": [-100, 300]}.') from None
        sp = self.spacing.text().strip()
        try:
            data["spacing"] = [float(v) for v in sp.replace(";", ",").split(",") if v.strip()] or None
        except ValueError:
            raise na.ModelLoadError("The spacing must be numbers in mm, e.g. 1.5, 1.5, 1.5.") from None
        data["inferred"] = False
        return na.ModelCard.from_dict(data)

    def apply(self) -> None:
        """Validate the edits and hand the card over (``on_apply``); a bad value gives one notification."""
        from ._common import notify

        try:
            card = self.edited()
        except (na.AttributionError, ValueError, TypeError) as err:
            notify("error", f"Model card: {err}")
            return
        if self.on_apply is not None:
            self.on_apply(card)
