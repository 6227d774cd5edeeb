"""The Explain dock: one method, its parameters (shown only when it has some), the layer for layer methods."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtGui import QStandardItemModel
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QVBoxLayout, QWidget

import napari_attribution as na

from ._dock import AttributionDock
from ._form import ParamsForm, set_row_visible
from ._jobs import Outcome
from ._models import RecentModels

if TYPE_CHECKING:
    import napari

__all__ = ["ExplainWidget"]

AUTO_LAYER = "(automatic)"


def _probability_text(probs: Any) -> str:
    if not probs:
        return ""
    if all(isinstance(v, dict) for v in probs.values()):  # slice-wise: {slice: {class: p}}
        if len(probs) > 1:
            return f"class probabilities of {len(probs)} slices in the layer metadata"
        z, probs = next(iter(probs.items()))
        return f"slice {z}: " + _probability_text(probs)
    ranked = sorted(probs.items(), key=lambda kv: -kv[1])
    return " · ".join(f"{name} {p:.2f}" for name, p in ranked[:4])


def colour_bar_text(layer: Any) -> str:
    """The scale and sign of a heatmap layer in words (the colour bar on the canvas shows the same limits)."""
    info = AttributionDock.owner(layer)
    lo, hi = layer.contrast_limits
    pct = info.get("contrast_percentile", 99.5)
    if info.get("signed"):
        return (f"colour bar: ±{hi:.3g} ({pct}th percentile of |map|). Red = evidence for the target, blue = "
                "against, clear = none.")
    return f"colour bar: {lo:.3g} … {hi:.3g} ({pct}th percentile). Unsigned: brighter = more important."


class ExplainWidget(AttributionDock):
    """Explain the selected image with one method; the heatmap goes in as an image layer on top of the scan."""

    RUN_TEXT = "Explain"

    def __init__(self, viewer: napari.viewer.Viewer, *, recent: RecentModels | None = None,
                 parent: QWidget | None = None) -> None:
        self._infos = {m.name: m for m in na.list_methods()}
        super().__init__(viewer, recent=recent, parent=parent)
        self.method.currentIndexChanged.connect(self._method_changed)
        self._method_changed()
        viewer.layers.selection.events.active.connect(self._show_colour_bar)

    # ------------------------------------------------------------------ sections
    def _method_section(self) -> QWidget:
        box = QGroupBox("Method")
        self.method = QComboBox()
        for i, (name, info) in enumerate(self._infos.items()):
            self.method.addItem(name, name)
            self.method.setItemData(i, info.label, 3)  # tooltip
        self.method.setCurrentIndex(max(0, self.method.findData("grad_cam")))
        self.method_info = QLabel("")
        self.method_info.setWordWrap(True)
        self.params = ParamsForm()
        self.layer = QComboBox()
        self.layer.setToolTip("The internal layer a layer method (CAM family) looks at")
        form = QFormLayout()
        form.addRow("method", self.method)
        form.addRow(self.method_info)
        form.addRow("layer", self.layer)
        lay = QVBoxLayout(box)
        lay.addLayout(form)
        lay.addWidget(self.params)
        self._method_form = form
        return box

    def _result_section(self) -> QWidget:
        box = QGroupBox("Result")
        self.prediction = QLabel("")
        self.prediction.setWordWrap(True)
        self.colour_bar = QLabel("")
        self.colour_bar.setWordWrap(True)
        lay = QVBoxLayout(box)
        lay.addWidget(self.prediction)
        lay.addWidget(self.colour_bar)
        return box

    # ------------------------------------------------------------------ method state
    def _method_changed(self, *_: Any) -> None:
        info = self._infos.get(self.method.currentData())
        self.params.set_method(info)
        if info is None:
            return
        sign = "signed (for / against)" if info.signed else "unsigned"
        self.method_info.setText(f"{info.label}. {sign}; cost {info.passes}.")
        set_row_visible(self._method_form, self.layer, info.needs_layer)

    def _model_changed(self) -> None:
        info = self.model_info
        assert info is not None
        self.layer.clear()
        default = info.default_layer or (info.layers[-1] if info.layers else "")
        self.layer.addItem(f"{AUTO_LAYER[:-1]}: {default})" if default else AUTO_LAYER, None)
        for name in info.layers:
            self.layer.addItem(name, name)
        model = self.method.model()
        if not isinstance(model, QStandardItemModel):
            return
        for i in range(self.method.count()):
            m = self._infos[self.method.itemData(i)]
            item = model.item(i)
            if item is not None:
                item.setEnabled(not info.is_script or m.supports_torchscript)

    def set_method(self, name: str, **params: Any) -> None:
        """Select ``name`` and fill its parameters (used by scripts and tests)."""
        i = self.method.findData(name)
        if i < 0:
            raise na.MethodError(f"Unknown method {name!r}.")
        self.method.setCurrentIndex(i)
        self.params.set_values(params)

    def methods(self) -> list[str]:
        return [self.method.currentData()]

    def method_params(self) -> dict[str, dict[str, Any]]:
        return {self.method.currentData(): self.params.values()}

    def layer_name(self) -> str | None:
        info = self._infos.get(self.method.currentData())
        return self.layer.currentData() if info is not None and info.needs_layer else None

    # ------------------------------------------------------------------ results
    def show_outcome(self, outcome: Outcome, placed: list[Any]) -> None:
        heat = [la for la in placed if self.owner(la).get("role") == "heatmap"]
        preds = [la for la in placed if self.owner(la).get("role") == "prediction"]
        text = _probability_text(outcome.probabilities)
        if preds:
            counts = self.owner(preds[0]).get("voxels_per_label", {})
            info = self.model_info
            named = [f"{info.class_label(int(k)) if info else k}: {v}" for k, v in counts.items() if k != "0"]
            text = "predicted voxels: " + (", ".join(named) if named else "none (all background)")
        self.prediction.setText(text)
        overlay = self.viewer.canvas.overlays.text
        if outcome.probabilities and text:
            overlay.text = f"{self.model_info.label if self.model_info else 'model'}: {text}"
            overlay.visible = True
        if heat:  # each in its own event-loop turn (see AttributionDock._next_step)
            self._steps.append(lambda: setattr(self.viewer.layers.selection, "active", heat[-1]))
            self._steps.append(self._show_colour_bar)

    def _show_colour_bar(self, event: Any = None) -> None:
        """The colour bar of the active heatmap only (several would overlap on the canvas)."""
        active = self.viewer.layers.selection.active
        if active is None or self.owner(active).get("role") != "heatmap":
            return
        if self.viewer.canvas.grid.enabled:
            return
        for la in self.own_layers("heatmap"):  # compare names: a plugin gets the viewer through a proxy
            la.colorbar.visible = la.name == active.name
        self.colour_bar.setText(colour_bar_text(active))
