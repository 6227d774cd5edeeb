"""Form pieces shared by the Explain and Compare docks: model picker, target picker, method parameters, scope
(box / ROI, slices). Each reads its state into plain values; none runs anything."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

import napari_attribution as na
from napari_attribution import targets as T

from ..runs.model_info import MODEL_FILE_FILTER, ModelInfo, RecentModels, demo_names
from ._common import LayerCombo

if TYPE_CHECKING:
    import napari

__all__ = ["ChoiceCombo", "ModelPicker", "ParamsForm", "ScopeBox", "TargetPicker", "set_row_visible", "voxel_of"]

BROWSE = "Browse for a model file…"
BROWSE_FOLDER = "Browse for a model folder (MONAI bundle, nnU-Net)…"
_FOLDER = -1  # the folder item's data: not a source


class ModelPicker(QWidget):
    """Demo models, recent model files and folders, a file chooser and a folder chooser (a MONAI bundle or an nnU-Net
    result folder is a folder); calls ``on_chosen(source)`` when the user picks one."""

    def __init__(self, recent: RecentModels | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.recent = recent or RecentModels()
        self.on_chosen: Callable[[str], None] | None = None
        self.combo = QComboBox()
        self.combo.setToolTip("Demo models, recently used models, a TorchScript file / checkpoint + card, or a model "
                              "folder (a MONAI bundle, an nnU-Net result folder)")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        self.fill()
        self.combo.activated.connect(self._on_activated)

    def fill(self) -> None:
        self.combo.blockSignals(True)
        self.combo.clear()
        for name in demo_names():
            self.combo.addItem(f"demo: {name}", f"demo:{name}")
        for path in self.recent.list():
            self.combo.addItem(path.rsplit("/", 1)[-1], path)
            self.combo.setItemData(self.combo.count() - 1, path, 3)  # tooltip: the full path
        self.combo.addItem(BROWSE, None)
        self.combo.addItem(BROWSE_FOLDER, _FOLDER)
        self.combo.blockSignals(False)

    def source(self) -> str | None:
        data = self.combo.currentData()
        return data if isinstance(data, str) else None

    def _emit(self, source: str) -> None:
        if self.on_chosen is not None:
            self.on_chosen(source)

    def insert_source(self, source: str) -> None:
        """List ``source`` (if it is not listed) before the Browse items, named by its file or folder."""
        if self.combo.findData(source) >= 0:
            return
        browse = self.combo.findText(BROWSE)
        self.combo.insertItem(browse if browse >= 0 else self.combo.count(), source.rstrip("/").rsplit("/", 1)[-1],
                              source)

    def set_source(self, source: str) -> None:
        self.insert_source(source)
        self.combo.setCurrentIndex(self.combo.findData(source))
        self._emit(source)

    def _on_activated(self, index: int) -> None:
        source = self.combo.itemData(index)
        if source is None or source == _FOLDER:
            if source is None:
                path, _ = QFileDialog.getOpenFileName(self, "Open a model", "", MODEL_FILE_FILTER)
            else:
                path = QFileDialog.getExistingDirectory(self, "Open a model folder (a MONAI bundle, an nnU-Net "
                                                        "result folder)")
            if not path:
                return
            self.set_source(path)
            return
        self._emit(source)


def _shown(value: Any) -> str:
    """How a parameter value reads in the form: a plain string as is (unless it would read as JSON), else JSON."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value)


def _parsed(text: str) -> Any:
    """The value typed as ``text``: JSON when it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class ChoiceCombo(QComboBox):
    """A parameter with listed values (``MethodInfo.choices``): the first item is the method's default (sends
    nothing), then the choices; editable when the method also takes values that are not listed (a number, an
    array), typed as JSON or as a plain string."""

    def __init__(self, key: str, default: Any, choices: tuple[Any, ...], open_: bool,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.default = default
        self.choices: list[Any] = list(choices)
        self.addItem(f"default ({'automatic' if default is None else _shown(default)})")
        for value in self.choices:
            self.addItem(_shown(value))
        listed = ", ".join(_shown(v) for v in self.choices)
        if open_:  # the default item shows as an empty, greyed line, like a free parameter's
            self.setEditable(True)
            self.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
            line = self.lineEdit()
            assert line is not None
            line.setPlaceholderText(self.itemText(0))
            self.setEditText("")
            self.activated.connect(self._clear_default)
            self.currentIndexChanged.connect(self._clear_default)
            self.setToolTip(f"{key}: {listed}, or type a JSON value (first item = default {json.dumps(default)})")
        else:
            self.setToolTip(f"{key}: one of {listed} (first item = default {json.dumps(default)})")

    def _clear_default(self, index: int) -> None:
        if index == 0:
            self.setEditText("")

    def has_value(self) -> bool:
        """Whether a value other than the default item is chosen or typed."""
        if self.isEditable():
            text = self.currentText().strip()
            return bool(text) and text != self.itemText(0)
        return self.currentIndex() > 0

    def value(self) -> Any:
        """The chosen (or typed) value; only meaningful when :meth:`has_value`."""
        if self.isEditable():
            text = self.currentText().strip()
            for i, choice in enumerate(self.choices, start=1):
                if self.itemText(i) == text:
                    return choice
            return _parsed(text)
        return self.choices[self.currentIndex() - 1]

    def set_value(self, value: Any) -> None:
        """Select ``value``: its item, else the typed text (editable), else a new item (the method checks it)."""
        for i, choice in enumerate(self.choices, start=1):
            if type(choice) is type(value) and choice == value:
                self.setCurrentIndex(i)
                return
        if self.isEditable():
            self.setCurrentIndex(0)
            self.setEditText(_shown(value))
            return
        self.choices.append(value)
        self.addItem(_shown(value))
        self.setCurrentIndex(self.count() - 1)


class ParamsForm(QWidget):
    """One row per parameter of the selected method: a drop-down for a parameter with listed values or a true /
    false switch (its first item = the default), else a JSON line edit (empty = the default, shown greyed).

    ``edits`` holds the line edits and ``combos`` the drop-downs, by parameter name; :meth:`field` finds either.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.edits: dict[str, QLineEdit] = {}
        self.combos: dict[str, ChoiceCombo] = {}
        self.extra: dict[str, Any] = {}  # common parameters set from a script (max_batch, memory_budget, ...)
        self.method: str | None = None

    def set_method(self, info: na.MethodInfo | None) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self.edits = {}
        self.combos = {}
        self.extra = {}
        self.method = info.name if info is not None else None
        if info is None:
            return
        params = dict(info.params)
        if info.stochastic:  # the map depends on the seed: let the user set it
            params["seed"] = 0
        for key, default in params.items():
            if key == "*":
                continue
            listed, open_ = info.choice_list(key)
            if not listed and isinstance(default, bool):  # a switch (stride_fix, ...): false / true
                listed, open_ = (False, True), False
            if listed:
                combo = ChoiceCombo(key, default, listed, open_)
                self.form.addRow(key, combo)
                self.combos[key] = combo
                continue
            edit = QLineEdit()
            edit.setPlaceholderText(f"default: {json.dumps(default)}")
            edit.setToolTip(f"{key} (JSON value; empty = default {json.dumps(default)})")
            self.form.addRow(key, edit)
            self.edits[key] = edit
        self.setVisible(bool(self.edits or self.combos))

    def field(self, key: str) -> QWidget | None:
        """The line edit or drop-down of ``key`` (None when the form has no such row)."""
        edit = self.edits.get(key)
        return edit if edit is not None else self.combos.get(key)

    def drop(self, key: str) -> None:
        """Take ``key``'s row out of the form (another widget sets that parameter)."""
        widget: QWidget | None = self.edits.pop(key, None)
        if widget is None:
            widget = self.combos.pop(key, None)
        if widget is not None:
            self.form.removeRow(widget)
        self.setVisible(bool(self.edits or self.combos))

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for key, edit in self.edits.items():
            text = edit.text().strip()
            if text:
                out[key] = _parsed(text)
        for key, combo in self.combos.items():
            if combo.has_value():
                out[key] = combo.value()
        return out

    def set_values(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key in self.edits:
                self.edits[key].setText(json.dumps(value))
            elif key in self.combos:
                self.combos[key].set_value(value)
            else:
                self.extra[key] = value


def voxel_of(points: Points, image: Image) -> tuple[int, ...]:
    """The selected (else the last) point of ``points`` as a voxel index of ``image``'s data."""
    if len(points.data) == 0:
        raise na.TargetError(f"The Points layer '{points.name}' has no point: click one on the scan first.")
    sel = sorted(points.selected_data)
    pt = np.asarray(points.data[sel[-1] if sel else -1], dtype=float)
    world = points.data_to_world(pt)
    idx = np.round(np.asarray(image.world_to_data(world), dtype=float)).astype(int)
    return tuple(int(i) for i in idx)


class TargetPicker(QWidget):
    """What to explain, in napari terms: a class, or for segmentation a class plus a region (predicted, a Labels
    layer, a clicked point, a contrast, or the errors against a ground-truth Labels layer)."""

    CLASSIFICATION = ["predicted class", "class", "class vs class"]
    SEGMENTATION = ["predicted region (largest class)", "predicted region of class", "region from Labels layer",
                    "point (Points layer)", "class vs class", "false positives vs ground truth",
                    "false negatives vs ground truth", "whole output of class"]

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.info: ModelInfo | None = None
        self.kind = QComboBox()
        self.k1 = QComboBox()
        self.k2 = QComboBox()
        self.labels = LayerCombo(viewer, (Labels,))  # the model's own prediction may serve as a region
        self.value = QSpinBox()
        self.value.setRange(0, 2**31 - 1)
        self.value.setSpecialValueText("any label")
        self.value.setToolTip("Which label of the Labels layer is the region (any non-zero label by default)")
        self.points = LayerCombo(viewer, (Points,))
        self.add_points = QPushButton("New point layer")
        self.add_points.setToolTip("Add a Points layer in add mode: click on the scan to pick the voxel to explain")
        self.add_points.clicked.connect(self._new_points)
        pts = QWidget()
        row = QHBoxLayout(pts)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.points, 1)
        row.addWidget(self.add_points)
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.form.addRow("target", self.kind)
        self.form.addRow("class", self.k1)
        self.form.addRow("against", self.k2)
        self.form.addRow("Labels", self.labels)
        self.form.addRow("label", self.value)
        self.form.addRow("points", pts)
        self._rows = {"k1": self.k1, "k2": self.k2, "labels": self.labels, "value": self.value, "points": pts}
        self.kind.currentTextChanged.connect(self._update_rows)
        self.set_model(None)

    # -- state
    def set_model(self, info: ModelInfo | None) -> None:
        self.info = info
        seg = info is not None and info.task == "segmentation"
        current = self.kind.currentText()
        self.kind.blockSignals(True)
        self.kind.clear()
        one = info is not None and info.n_classes == 1  # one output channel: no second class to contrast
        self.kind.addItems([k for k in (self.SEGMENTATION if seg else self.CLASSIFICATION)
                            if not (one and k == "class vs class")])
        if self.kind.findText(current) >= 0:
            self.kind.setCurrentText(current)
        self.kind.blockSignals(False)
        n = (info.n_classes if info else None) or 10
        for combo in (self.k1, self.k2):
            old = combo.currentIndex()
            combo.clear()
            combo.addItems([info.class_label(k) if info else f"class {k}" for k in range(n)])
            combo.setCurrentIndex(old if 0 <= old < n else 0)
        if n > 1 and self.k1.currentIndex() == 0:
            self.k1.setCurrentIndex(1 if seg or n == 2 else 0)
        tip = "The class to explain: its index is the model's output channel"
        if one:
            tip = "One output channel (a sigmoid or a single logit): its only class is 0"
            if seg:
                tip += (", the foreground (output > 0, or > 0.5 for probabilities), drawn as label 1 in the "
                        "prediction layer")
        self.k1.setToolTip(tip)
        self._update_rows()

    def _update_rows(self, *_: Any) -> None:
        k = self.kind.currentText()
        need = {
            "class": {"k1"}, "class vs class": {"k1", "k2"}, "predicted region of class": {"k1"},
            "region from Labels layer": {"k1", "labels", "value"}, "point (Points layer)": {"k1", "points"},
            "false positives vs ground truth": {"k1", "labels"}, "false negatives vs ground truth": {"k1", "labels"},
            "whole output of class": {"k1"},
        }.get(k, set())
        for name, widget in self._rows.items():
            set_row_visible(self.form, widget, name in need)
        label = self.form.labelForField(self.labels)
        if isinstance(label, QLabel):
            label.setText("ground truth" if k.endswith("ground truth") else "Labels")

    def set_kind(self, text: str) -> None:
        self.kind.setCurrentText(text)

    def _new_points(self) -> None:
        image = next((la for la in reversed(self.viewer.layers) if isinstance(la, Image)), None)
        ndim = image.ndim if image is not None else max(2, self.viewer.dims.ndim)
        layer = self.viewer.add_points(np.empty((0, ndim)), name="target point", ndim=ndim, size=4,
                                       face_color="yellow", **({"scale": image.scale} if image is not None else {}))
        layer.mode = "add"
        self.points.select(layer)

    # -- reading
    def target(self, image: Image, spatial: tuple[int, ...]) -> Any:
        """The target object for ``image`` (whose spatial shape is ``spatial``); raises ``na.TargetError`` when a
        needed layer is missing or does not match the image."""
        kind = self.kind.currentText()
        k, k2 = self.k1.currentIndex(), self.k2.currentIndex()
        if kind in ("predicted class", "predicted region (largest class)"):
            return None
        if kind == "class":
            return T.Class(k)
        if kind == "whole output of class":
            return T.Class(k)
        if kind == "predicted region of class":
            return T.Predicted(k)
        if kind == "class vs class":
            if k == k2:
                raise na.TargetError("A contrast needs two different classes.")
            return T.Contrast(k, k2)
        if kind == "point (Points layer)":
            pts = self.points.layer()
            if pts is None:
                raise na.TargetError("Pick a Points layer with the voxel to explain (or add one and click the scan).")
            idx = voxel_of(pts, image)
            idx = idx[len(idx) - len(spatial):]
            if any(not 0 <= i < s for i, s in zip(idx, spatial, strict=True)):
                raise na.TargetError(f"The point {idx} lies outside the image {spatial}.")
            return T.Voxel(k, idx)
        labels = self.labels.layer()
        what = "ground-truth" if kind.endswith("ground truth") else "region"
        if labels is None:
            raise na.TargetError(f"Pick a Labels layer with the {what} (paint one on the scan first).")
        data = np.asarray(labels.data)
        if data.shape != tuple(spatial):
            raise na.TargetError(
                f"The Labels layer '{labels.name}' has shape {data.shape}, but the image has {tuple(spatial)}: "
                "paint the labels on this image (Layer > New Labels layer with the image selected)."
            )
        if kind == "region from Labels layer":
            value = self.value.value()
            mask = data == value if value else data != 0
            if not mask.any():
                raise na.TargetError(f"The region in '{labels.name}' is empty: paint at least one voxel of it.")
            return T.Region(k, mask)
        return T.ErrorRegion(k, data, "fp" if kind.startswith("false positives") else "fn")


class ScopeBox(QWidget):
    """What part of the image to explain: all of it or a box (from a Shapes rectangle or a Labels bounding box);
    for a 2D model on a volume, the current slice (optionally following the slider) or the whole volume."""

    ROI = ["whole image", "box from a Shapes layer", "bounding box of a Labels layer"]
    SLICES = ["current slice", "current slice, follow the slider", "whole volume"]

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.roi = QComboBox()
        self.roi.addItems(self.ROI)
        self.roi.setToolTip("Explain only a box to save time (the rest of the map stays empty)")
        self.roi_layer = LayerCombo(viewer, (Shapes, Labels))
        self.slices = QComboBox()
        self.slices.addItems(self.SLICES)
        self.slices.setToolTip("A 2D model on a volume runs slice by slice")
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.form.addRow("explain", self.roi)
        self.form.addRow("box layer", self.roi_layer)
        self.form.addRow("slices", self.slices)
        self.roi.currentTextChanged.connect(self._update)
        self.set_slicewise(False)
        self._update()

    def _update(self, *_: Any) -> None:
        set_row_visible(self.form, self.roi_layer, self.roi.currentIndex() > 0)

    def set_slicewise(self, on: bool) -> None:
        self.slicewise = on
        set_row_visible(self.form, self.slices, on)

    @property
    def follow(self) -> bool:
        return self.slicewise and self.slices.currentIndex() == 1

    def current_slice(self, image: Image) -> int:
        world = np.asarray(self.viewer.dims.point)[-image.ndim:]
        return int(np.round(image.world_to_data(world)[0]))

    def box(self, image: Image, spatial: tuple[int, ...]) -> tuple[tuple[int, int], ...] | None:
        """``(start, stop)`` per spatial axis of ``image``, or None for the whole image."""
        if self.roi.currentIndex() == 0:
            return None
        layer = self.roi_layer.layer()
        if layer is None:
            raise na.InputShapeError("Pick the Shapes or Labels layer that holds the box to explain.")
        n = len(spatial)
        if isinstance(layer, Shapes):
            if not len(layer.data):
                raise na.InputShapeError(f"The Shapes layer '{layer.name}' is empty: draw a rectangle first.")
            verts = np.asarray(layer.data[-1], dtype=float)
            idx = np.array([image.world_to_data(layer.data_to_world(v)) for v in verts])[:, -n:]
            lo = np.floor(idx.min(0) + 1e-3).astype(int)  # corners at voxel centres, up to rounding
            hi = np.ceil(idx.max(0) - 1e-3).astype(int) + 1
            flat = (idx.max(0) - idx.min(0)) < 0.5  # the slice the box was drawn on: keep the whole axis
            lo[flat], hi[flat] = 0, np.asarray(spatial)[flat]
        else:
            data = np.asarray(layer.data)
            if data.shape[-n:] != tuple(spatial):
                raise na.InputShapeError(f"The Labels layer '{layer.name}' does not match the image's grid {spatial}.")
            nz = np.nonzero(data)
            if not nz[0].size:
                raise na.InputShapeError(f"The Labels layer '{layer.name}' is empty: paint the region first.")
            lo = np.array([a.min() for a in nz[-n:]])
            hi = np.array([a.max() + 1 for a in nz[-n:]])
        lo = np.clip(lo, 0, spatial)
        hi = np.clip(hi, 0, spatial)
        if np.any(hi <= lo):
            raise na.InputShapeError("The box lies outside the image.")
        return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def set_row_visible(form: QFormLayout, field: QWidget, on: bool) -> None:
    """Show or hide a form row (the field and its label)."""
    field.setVisible(on)
    label = form.labelForField(field)
    if label is not None:
        label.setVisible(on)
