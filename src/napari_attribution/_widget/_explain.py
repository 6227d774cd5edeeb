"""The Explain dock: one method, its parameters (shown only when it has some), the layer for layer methods — or a
sweep over several layers —, vebi's relevant features (a file, or a fit over a data set), and under the result the
checks of a heatmap ("Check this map") and a comparison of the heatmap with landmarks painted as a Labels layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtGui import QStandardItemModel
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QVBoxLayout, QWidget

import napari_attribution as na
from napari_attribution import targets as T

from ..interpretation import features_file
from ..runs.jobs import ExplainRequest, FitOutcome, FitRequest, Outcome, fit_job
from ..runs.model_info import RecentModels
from ._common import column, notify
from ._dock import AttributionDock
from ._features import FeaturesBox
from ._form import ParamsForm, set_row_visible
from ._landmarks import LandmarkBox
from ._sweep import LayerSweepBox, SweepTable, is_sweep, sweep_index, sync_sweep_contrast
from ._trust import TrustBox, explained_from

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


def input_text(att: Any) -> str:
    """The steps the input path actually applied in a run (``extras["preprocessing"]``, with any padding a trial
    forward pass found), in words."""
    steps = list(getattr(att, "extras", {}).get("preprocessing") or [])
    if not steps:
        return "Input used: the scan as it is, on its own grid."
    grid = att.extras.get("model_grid_shape")
    seen = f" (the network saw {tuple(int(v) for v in grid)})" if grid is not None else ""
    return f"Input used{seen}: {'; '.join(steps)}."


def colour_bar_text(layer: Any, viewer: Any = None) -> str:
    """The scale and sign of a heatmap layer in words (the colour bar on the canvas shows the same limits); for a
    layer sweep, which network layer the slider shows (with ``viewer``)."""
    info = AttributionDock.owner(layer)
    lo, hi = layer.contrast_limits
    pct = info.get("contrast_percentile", 99.5)
    region = info.get("contrast_region")
    where = f" {region}" if region and region != "the whole map" else ""
    hidden = " Clear outside the body (the map itself is not changed)." if info.get("display_mask") else ""
    if info.get("sweep"):
        names = info.get("layers") or []
        shown = ""
        if viewer is not None and names:
            i = sweep_index(viewer, layer)
            shown = f"network layer {i + 1} of {len(names)}: {names[i]}. "
        pct = f"{pct}th percentile of the network layer shown{where}, rounded up; "
        if info.get("signed"):
            return (f"{shown}colour bar: ±{hi:.3g} ({pct}|map|). Red = evidence for the target, blue = against, "
                    "clear = none.")
        return f"{shown}colour bar: {lo:.3g} … {hi:.3g} ({pct}unsigned). Brighter = more important."
    if info.get("signed"):
        return (f"colour bar: ±{hi:.3g} ({pct}th percentile of |map|{where}, rounded up). Red = evidence for the "
                f"target, blue = against, clear = none.{hidden}")
    return (f"colour bar: {lo:.3g} … {hi:.3g} ({pct}th percentile{where}, rounded up). Unsigned: brighter = more "
            f"important.{hidden}")


class ExplainWidget(AttributionDock):
    """Explain the selected image with one method; the heatmap goes in as an image layer on top of the scan."""

    RUN_TEXT = "Explain"

    def __init__(self, viewer: napari.viewer.Viewer, *, recent: RecentModels | None = None,
                 parent: QWidget | None = None) -> None:
        self._infos = {m.name: m for m in na.list_methods()}
        self.last_fit: FitOutcome | None = None
        self._sweep_layer = ""  # name of the layer the sweep table describes
        self._request: ExplainRequest | None = None  # the last request started (for "Check this map")
        super().__init__(viewer, recent=recent, parent=parent)
        self.method.currentIndexChanged.connect(self._method_changed)
        self.sweep.enabled.toggled.connect(self._method_changed)
        self._method_changed()
        viewer.layers.selection.events.active.connect(self._show_colour_bar)
        viewer.dims.events.current_step.connect(self._sync_sweeps)

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
        self.sweep = LayerSweepBox()
        self.features = FeaturesBox()
        self.features.on_fit = self.fit_features
        form = QFormLayout()
        form.addRow("method", self.method)
        form.addRow(self.method_info)
        form.addRow("layer", self.layer)
        lay = QVBoxLayout(box)
        lay.addLayout(form)
        lay.addWidget(self.sweep)
        lay.addWidget(self.features)
        lay.addWidget(self.params)
        self._method_form = form
        return box

    def _result_section(self) -> QWidget:
        box = QGroupBox("Result")
        self.prediction = QLabel("")
        self.prediction.setWordWrap(True)
        self.input_used = QLabel("")  # the preprocessing steps the run actually applied
        self.input_used.setWordWrap(True)
        self.colour_bar = QLabel("")
        self.colour_bar.setWordWrap(True)
        self.sweep_table = SweepTable()
        self.sweep_table.on_row = self.show_network_layer
        lay = QVBoxLayout(box)
        lay.addWidget(self.prediction)
        lay.addWidget(self.input_used)
        lay.addWidget(self.colour_bar)
        lay.addWidget(self.display)  # outside the body, limits from, Adjust limits
        self.display.on_changed = self._show_colour_bar  # limits adjusted, or shown again hidden or in full
        lay.addWidget(self.sweep_table)
        self.trust = TrustBox(self.viewer, is_busy=lambda: self.busy, current_model=lambda: self.model_info,
                              on_state=self._update_buttons)
        self.landmarks = LandmarkBox(self.viewer)
        return column(box, self.trust, self.landmarks)

    @property
    def busy(self) -> bool:
        """Also while "Check this map" runs (it uses the same model)."""
        trust = getattr(self, "trust", None)
        return super().busy or (trust is not None and trust.running)

    # ------------------------------------------------------------------ method state
    def _method_changed(self, *_: Any) -> None:
        info = self._infos.get(self.method.currentData())
        if info is None or info.name != self.params.method:
            self.params.set_method(info)
        if info is None:
            return
        sign = "signed (for / against)" if info.signed else "unsigned"
        self.method_info.setText(f"{info.label}. {sign}; cost {info.passes}.")
        self.sweep.setVisible(info.needs_layer)
        set_row_visible(self._method_form, self.layer, info.needs_layer and not self.sweep.active)
        self.features.setVisible(info.name == "vebi")
        if info.name == "vebi":
            self.params.drop("features")  # the features box holds the file

    def _model_changed(self) -> None:
        info = self.model_info
        assert info is not None
        self.layer.clear()
        default = info.default_layer or (info.layers[-1] if info.layers else "")
        self.layer.addItem(f"{AUTO_LAYER[:-1]}: {default})" if default else AUTO_LAYER, None)
        for name in info.layers:
            self.layer.addItem(name, name)
        self.sweep.set_layers(info.layers, info.layer_channels)
        self.features.set_model(info)
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
        if name == "vebi" and "features" in params:
            self.features.set_features(params.pop("features"))
        self.params.set_values(params)

    def set_sweep(self, layers: list[str] | None) -> None:
        """Sweep the method over ``layers`` (None: no sweep; used by scripts and tests)."""
        self.sweep.enabled.setChecked(layers is not None)
        if layers is not None:
            unknown = set(layers) - set(self.sweep.names())
            if unknown:
                raise na.LayerNotFoundError(f"The model has no spatial layer {sorted(unknown)}.")
            self.sweep.set_checked(layers)

    def methods(self) -> list[str]:
        return [self.method.currentData()]

    def method_params(self) -> dict[str, dict[str, Any]]:
        params = self.params.values()
        if self.method.currentData() == "vebi" and self.features.features():
            params["features"] = self.features.features()
        return {self.method.currentData(): params}

    def layer_name(self) -> str | None:
        info = self._infos.get(self.method.currentData())
        if info is None or not info.needs_layer or self.sweep.active:
            return None
        name = self.layer.currentData()
        return str(name) if name else None

    def build_request(self, *, confirm: bool = True) -> ExplainRequest:
        info = self._infos.get(self.method.currentData())
        if info is not None and info.name == "vebi":
            path = self.features.features()
            if not path:
                raise na.MethodError("vebi explains with the model's relevant features: choose a features file "
                                     "(Features file…) or fit them over a data set (Fit relevant features…).")
            if not features_file(path).is_file():
                raise na.MethodError(f"There is no relevant-features file at '{path}': choose one (Features file…) "
                                     "or fit them (Fit relevant features…).")
        request = super().build_request(confirm=confirm)
        if info is not None and info.needs_layer and self.sweep.active:
            layers = self.sweep.layers()
            if not layers:
                raise na.LayerNotFoundError("Tick at least one network layer to sweep (or 'all spatial layers').")
            request.sweep_layers = layers
        self._request = request
        return request

    # ------------------------------------------------------------------ vebi: fitting the relevant features
    def _update_buttons(self) -> None:
        super()._update_buttons()
        self.features.fit_button.setEnabled(not self.busy and self.model_info is not None)

    def fit_features(self, data: str = "demo") -> bool:
        """Fit the loaded model's relevant features over ``data`` ("demo": generated demo cases; else a folder
        of scans) in the worker, with the dock's progress bar and Cancel; saved next to the model, never over an
        existing file. False when nothing was started."""
        info = self.model_info
        if info is None:
            notify("error", "Load a model first, then fit its relevant features.")
            return False
        if self.busy:
            notify("info", "Wait until the current run ends (or cancel it), then fit the relevant features.")
            return False
        if info.is_script:
            notify("error", "vebi needs module hooks, which TorchScript models do not support: load the checkpoint "
                            "with its model card.")
            return False
        target = self.features.default
        if target is None:
            return False
        request = FitRequest(model=info, data=data, path=str(target), n_cases=self.features.cases.value(),
                             mu=self.features.mu.value(), device=self.device.currentText())
        gen = self._model_gen
        return self.start_job(fit_job, request, lambda outcome: self._on_fit(outcome, gen), kind="fit",
                              text="fitting the relevant features …")

    def _on_fit(self, outcome: FitOutcome, gen: int) -> None:
        self.last_fit = outcome
        self._update_buttons()
        self.status.setText(outcome.message)
        if outcome.status == "ok":
            self.progress.setValue(1000)
            if gen == self._model_gen:  # still the model the features were fitted for
                self.features.set_features(outcome.path)
            notify("info", outcome.message)
        else:
            self.progress.setValue(0)
            notify("info" if outcome.status == "cancelled" else "error", outcome.message)

    # ------------------------------------------------------------------ results
    def show_outcome(self, outcome: Outcome, placed: list[Any]) -> None:
        heat = [la for la in placed if self.owner(la).get("role") == "heatmap"]
        preds = [la for la in placed if self.owner(la).get("role") == "prediction"]
        text = _probability_text(outcome.probabilities)
        if preds:
            counts = self.owner(preds[0]).get("voxels_per_label", {})
            info = self.model_info
            # a one-channel model's foreground is drawn as label 1 but is class 0 ("0: brain", not "class 1")
            channels = info.n_classes if info else None
            named = [f"{info.class_label(T.class_of_label(int(k), channels)) if info else k}: {v}"
                     for k, v in counts.items() if k != "0"]
            text = "predicted voxels: " + (", ".join(named) if named else "none (all background)")
        self.prediction.setText(text)
        if outcome.results:
            self.input_used.setText(input_text(next(iter(outcome.results.values()))))
        overlay = self.viewer.canvas.overlays.text
        if outcome.probabilities and text:
            overlay.text = f"{self.model_info.label if self.model_info else 'model'}: {text}"
            overlay.visible = True
        if outcome.sweep is not None and heat:
            self._sweep_layer = heat[0].name
            self.sweep_table.show_rows(outcome.sweep)
            self.sweep_table.highlight(0)
        else:
            self.sweep_table.setVisible(False)
        for la in heat:  # what "Check this map" needs to check them
            att = outcome.results.get(str(self.owner(la).get("method"))) or next(iter(outcome.results.values()))
            if self._request is not None:
                self.trust.remember(la, explained_from(att, self._request, la.name, outcome.results))
        if heat:  # each in its own event-loop turn (see AttributionDock._next_step)
            self._steps.append(lambda: setattr(self.viewer.layers.selection, "active", heat[-1]))
            self._steps.append(self._show_colour_bar)
            self._steps.append(self.landmarks.schedule)

    # ------------------------------------------------------------------ layer sweep
    def _sweep_layers(self) -> list[Any]:
        return [la for la in self.own_layers("heatmap") if is_sweep(la)]

    def _sync_sweeps(self, event: Any = None) -> None:
        """The slider moved: each sweep heatmap takes the colour scale of the network layer it shows."""
        for la in self._sweep_layers():
            idx = sync_sweep_contrast(self.viewer, la)
            if la.name == self._sweep_layer:
                self.sweep_table.highlight(idx)
        active = self.viewer.layers.selection.active
        if active is not None and is_sweep(active) and self.owner(active).get("role") == "heatmap":
            self.colour_bar.setText(colour_bar_text(active, self.viewer))

    def show_network_layer(self, index: int) -> None:
        """Move the slider of the last sweep's heatmap to network layer ``index`` (a click in the table)."""
        name = self._sweep_layer
        if name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        axis = self.viewer.dims.ndim - layer.ndim
        world = layer.data_to_world([index] + [0] * (layer.ndim - 1))[0]
        self.viewer.dims.set_point(axis, float(world))

    def _show_colour_bar(self, event: Any = None) -> None:
        """The colour bar of the active heatmap only (several would overlap on the canvas)."""
        active = self.viewer.layers.selection.active
        if active is None or self.owner(active).get("role") != "heatmap":
            return
        if self.viewer.canvas.grid.enabled:
            return
        for la in self.own_layers("heatmap"):  # compare names: a plugin gets the viewer through a proxy
            la.colorbar.visible = la.name == active.name
        if is_sweep(active):
            sync_sweep_contrast(self.viewer, active)
        self.colour_bar.setText(colour_bar_text(active, self.viewer))
