"""The model card in the dock.

:class:`CardView`, a compact read-only text under the model line: the card in effect (spacing or input shape,
intensity step, padding), which facts were guessed from the network rather than given by a card, and what the
input path will do to the picked image (:func:`planned_steps`: the steps of
:func:`napari_attribution.inputs.prepare`, without running the model).

:class:`CardEditor`: a guessed card (a plain module or a checkpoint without a card file) is marked as a guess, and
the user can correct what the guess got wrong (task, class names, output, default layer, preprocessing, spacing,
input shape) before explaining. Only delegates: the card itself is validated by
``napari_attribution.ModelCard.from_dict``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QLineEdit, QPushButton, QWidget

import napari_attribution as na

from ..pipeline import model_and_card, prepared_input
from ..runs.model_info import ModelInfo

__all__ = ["CardEditor", "CardView", "card_text", "planned_steps"]

#: the preprocess keys that act on the grid (the rest is the voxel-wise intensity step)
_PAD_KEYS = ("pad_to_multiple", "pad_mode", "pad_value")


def _x(values: Sequence[float]) -> str:
    return "x".join(f"{v:g}" for v in values)


def _intensity_steps(card: na.ModelCard, channel_axis: bool, channels: int, nd: int) -> list[str]:
    """The intensity step of ``card`` in the input path's own words (as ``prepare(...).steps`` records it)."""
    from ..inputs import describe_intensity

    words = describe_intensity(card, channel_axis)
    return [words] if words else []


def planned_steps(info: ModelInfo, shape: Sequence[int], source_geometry: Mapping[str, Any]) -> list[str]:
    """What the input path will do to an image of ``shape`` whose napari layer has ``source_geometry``: the steps
    of :func:`napari_attribution.inputs.prepare` as a run computes them (same layout rule, same scan geometry,
    the padding a trial forward pass already found for this network), without the model and without touching the
    image's voxels (a stand-in array of that shape; microseconds, so the GUI thread can call it on every change).

    Raises
    ------
    napari_attribution.AttributionError
        When the image does not fit the model (the message says why), as the run would.
    """
    from ..inputs import layout
    from ..runs.jobs import scan_geometry

    shape = tuple(int(s) for s in shape)
    module, card = model_and_card(info.model)
    lay = layout(shape, card)
    spatial = lay.spatial(shape)
    steps = _intensity_steps(card, lay.channel_axis, lay.channels, len(spatial))
    grid = {k: v for k, v in (card.preprocess or {}).items() if k in _PAD_KEYS}
    stand_in = np.broadcast_to(np.float32(0.0), shape)  # no memory: without an intensity step prepare reads the shape
    geometry = scan_geometry(source_geometry, spatial)
    prep = prepared_input(module, stand_in, geometry, replace(card, preprocess=grid or None), lay)
    return steps + list(prep.steps)


def card_text(info: ModelInfo) -> tuple[str, str]:
    """The card in effect for the dock, ``(short, detail)``: ``short`` two or three lines (the grid, intensity and
    padding rules; a failed test pass; what was guessed), ``detail`` one line per fact with where it came from (for
    the tooltip)."""
    card = info.card or na.ModelCard(inferred=True)
    guessed = {g.split(" (")[0] for g in info.guessed}
    source = "guessed: no card" if card.inferred else "from the card"
    if card.input_shape:
        grid = f"input shape {_x(card.input_shape)} (scan resized to it)"
    elif card.spacing:
        grid = f"spacing {_x(card.spacing)} mm (scan resampled to it)"
    else:
        grid = "the scan's own grid (no spacing or input shape)"
    channels = card.in_channels or 1
    intensity = "; then ".join(_intensity_steps(card, channels > 1, channels, card.spatial_dims or 3)) or \
        "no intensity step"
    pad = (card.preprocess or {}).get("pad_to_multiple")
    if pad is not None:
        padding = f"pad to a multiple of {pad if isinstance(pad, int) else _x(pad)}"
    elif card.input_shape:
        padding = "no padding (fixed input shape)"
    elif card.inferer:
        padding = "no padding (the network sees the inferer's windows)"
    else:
        padding = "padding by a trial pass if needed"
    inferer = card.sliding_window
    # a network trained on patches predicts the scan window by window; attribution explains the stitched output
    running = f" · {inferer.describe()} (attribution of the stitched output)" if inferer is not None else ""
    short = [f"Card in effect ({source}): {grid} · {intensity} · {padding}{running}."]
    at = f"test pass at {_x(info.probe_shape)}" if info.probe_shape else "test pass"
    if info.probe_error:
        if info.classes_from_run:
            classes = f"class count {info.n_classes} learnt from the first run"
        elif info.n_classes is not None:
            classes = "class count from the card"
        else:
            classes = "class count unknown until the first run"
        hint = "" if card.input_shape else "; a network that takes one fixed size needs the card's input_shape"
        short.append(f"The {at} failed ({info.probe_error}): {classes}{hint}.")
    if guessed:
        how = f" ({at})" if not info.probe_error and guessed & {"task", "class count", "default layer"} else ""
        short.append(f"Guessed from the network: {', '.join(g.split(' (')[0] for g in info.guessed)}{how}.")
    elif not card.inferred:
        short.append("Nothing guessed.")

    def where(word: str, value: str) -> str:
        if word == "class count" and info.classes_from_run:
            return "learnt from the first run"
        if value.startswith(("none", "unknown")):
            return ""
        if word in guessed or card.inferred:
            return f"guessed ({at})" if word in ("task", "class count", "default layer") else "guessed"
        return "given"

    classes = (", ".join(info.class_label(k) for k in range(info.n_classes)) if info.n_classes
               else "unknown until the first run")
    rows = [
        ("dimensions", f"{card.spatial_dims}D" if card.spatial_dims else "none (from the image)", "dimensions"),
        ("input channels", str(card.in_channels) if card.in_channels else "none (from the image)", "input channels"),
        ("task", info.task or "unknown until the first run", "task"),
        ("classes", classes, "class count"),
        ("output", card.output, "output"),
        ("spacing", f"{_x(card.spacing)} mm" if card.spacing else "none", "spacing"),
        ("input shape", _x(card.input_shape) if card.input_shape else "none", "input shape"),
        ("preprocessing", json.dumps(card.preprocess) if card.preprocess else "none", "preprocessing"),
        ("pad multiple", str(pad) if pad is not None else "none" if card.input_shape
         else "none given (found by a trial forward pass if needed)", "pad multiple"),
        ("default layer", info.default_layer or "none", "default layer"),
        ("inferer", json.dumps(card.inferer) if card.inferer else "none (the whole scan in one piece)", "inferer"),
    ]
    detail = [f"Card in effect for {info.label} ({source}):"]
    for name, value, word in rows:
        origin = where(word, value)
        detail.append(f"  {name}: {value}" + (f" — {origin}" if origin else ""))
    return "\n".join(short), "\n".join(detail)


class CardView(QLabel):
    """The card in effect and what will be done to the picked image, read-only, under the model line; the full
    card (each fact with where it came from) is the tooltip."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("", parent)
        self.setWordWrap(True)
        self.plan: list[str] | None = None  # the steps for the picked image (None: no image or it does not fit)
        self.setVisible(False)

    def show_for(self, info: ModelInfo | None, layer: Any = None) -> None:
        """Describe ``info``'s card and, with an image ``layer``, the steps the run will apply to it."""
        from ._common import source_geometry

        self.plan = None
        if info is None:
            self.setText("")
            self.setToolTip("")
            self.setVisible(False)
            return
        short, detail = card_text(info)
        lines = [short]
        if layer is not None and not getattr(layer, "rgb", False):
            data = layer.data[0] if layer.multiscale else layer.data
            try:
                self.plan = planned_steps(info, np.shape(data), source_geometry(layer))
            except (na.AttributionError, ValueError) as err:  # what the run would say, before it
                lines.append(f"'{layer.name}' does not fit: {err}")
            else:
                what = "; ".join(self.plan) if self.plan else f"fed as it is, {tuple(np.shape(data))}"
                lines.append(f"For '{layer.name}': {what}.")
        self.setText("\n".join(lines))
        self.setToolTip(detail)
        self.setVisible(True)


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
        self.input_shape = QLineEdit()
        self.input_shape.setPlaceholderText("voxels in (z, y, x), e.g. 128, 128, 128; empty = none (replaces spacing)")
        self.input_shape.setToolTip("For a network that takes one fixed size: the whole scan is resized to exactly "
                                    "this shape (give it or a spacing, not both)")
        self.apply_button = QPushButton("Apply card")
        self.apply_button.clicked.connect(self.apply)
        self._form = form = QFormLayout(self)
        form.addRow(self.note)
        for label, w in (("task", self.task), ("output", self.output), ("classes", self.class_names),
                         ("layer", self.default_layer), ("preprocess", self.preprocess), ("spacing", self.spacing),
                         ("input shape", self.input_shape)):
            form.addRow(label, w)
        form.addRow(self.apply_button)
        self.toggled.connect(self._show)
        self._show(False)

    def _show(self, on: bool) -> None:
        """Open or collapse the box: the fields and their row labels (a hidden field keeps its label visible)."""
        for w in (self.note, self.task, self.output, self.class_names, self.default_layer, self.preprocess,
                  self.spacing, self.input_shape, self.apply_button):
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
        self.input_shape.setText(", ".join(str(s) for s in card.input_shape) if card.input_shape else "")

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
        shape = self.input_shape.text().strip()
        try:
            data["input_shape"] = [int(v) for v in shape.replace(";", ",").replace("x", ",").split(",")
                                   if v.strip()] or None
        except ValueError:
            raise na.ModelLoadError("The input shape must be whole numbers of voxels, e.g. 128, 128, 128.") from None
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
