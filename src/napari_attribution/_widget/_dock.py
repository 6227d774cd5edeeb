"""The part of the Explain and Compare docks they share: input (image, model, device), target, scope, the run /
cancel bar and the handling of an outcome (layers in, one notification out)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

import napari_attribution as na

from .._errors import own_warnings
from .._progress import Eta, WindowStages, format_duration
from ..layers import OWNER_KEY
from ..models import infer_card
from ..runs.jobs import ExplainRequest, Outcome, run_job, spatial_offset
from ..runs.model_info import ModelInfo, RecentModels, load_model_info, model_info
from ..runs.wrapper import Failures, never_raise
from ._card import CardEditor, CardView
from ._common import LayerCombo, Runner, is_own, notify, place_layer, source_geometry
from ._display import DisplayBox
from ._form import ModelPicker, ScopeBox, TargetPicker

if TYPE_CHECKING:
    import napari

__all__ = ["AttributionDock"]

#: Ask before runs estimated to take longer than this (seconds).
CONFIRM_ABOVE = 30.0


def _devices() -> list[str]:
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


#: what loading a model says when it fails: one readable line, no traceback
LOAD_FAILURES = Failures("loading the model",
                         unexpected=lambda err: f"Cannot load the model ({type(err).__name__}): {err}")


def _safe_load(source: str) -> tuple[ModelInfo | None, str]:
    """The model, or None and why not. With a model, the message is what this package warned while loading it (a
    MONAI bundle's steps that are not reproduced), shown as a warning; empty when nothing was."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info, message = never_raise(lambda: (load_model_info(source), ""), lambda status, message: (None, message),
                                    LOAD_FAILURES)
    return (info, " ".join(own_warnings(caught))) if info is not None else (None, message)


def _group(title: str, *rows: Any) -> QGroupBox:
    box = QGroupBox(title)
    form = QFormLayout(box)
    for row in rows:
        if isinstance(row, tuple):
            form.addRow(*row)
        else:
            form.addRow(row)
    return box


class AttributionDock(QWidget):
    """Base of the docks. Subclasses add their method section and show their results."""

    RUN_TEXT = "Explain"
    confirm_above: float | None = CONFIRM_ABOVE

    def __init__(self, viewer: napari.viewer.Viewer, *, recent: RecentModels | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.model_info: ModelInfo | None = None
        self.last_outcome: Outcome | None = None
        self.loading = False
        self._model_gen = 0
        self._pending = False
        self._superseded = False
        self._steps: list[Any] = []  # GUI-thread steps after a run, one per event-loop turn
        self._job = ""  # what the runner runs: "explain" or another job of a subclass (e.g. "fit")
        self._slices: list[int] | None = None
        self._ran: ModelInfo | None = None  # the model of the last run started (it may learn its class count)

        self.image = LayerCombo(viewer, (Image,), exclude=is_own)
        self.image.setToolTip("The scan to explain (follows the active layer)")
        self.model = ModelPicker(recent)
        self.model_status = QLabel("no model loaded")
        self.model_status.setWordWrap(True)
        self.card_view = CardView()  # the card in effect and what will be done to the picked image
        self.card_editor = CardEditor()
        self.card_editor.setEnabled(False)
        self.device = QComboBox()
        self.device.addItems(_devices())
        self.target = TargetPicker(viewer)
        self.scope = ScopeBox(viewer)
        self.display = DisplayBox(viewer)  # how heatmaps are shown (a subclass puts it in its result section)
        self.display.on_done = lambda: self._display_done()  # its body-mask worker is part of being busy
        self._shown_over: Any = None  # the scan layer of the last run started (its body mask, its interpolation)

        self.run_button = QPushButton(self.RUN_TEXT)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.confirm_label = QLabel("")
        self.confirm_label.setWordWrap(True)
        self.confirm_button = QPushButton("Run anyway")
        self.confirm_box = QWidget()
        crow = QHBoxLayout(self.confirm_box)
        crow.setContentsMargins(0, 0, 0, 0)
        crow.addWidget(self.confirm_label, 1)
        crow.addWidget(self.confirm_button)
        self.confirm_box.setVisible(False)

        buttons = QWidget()
        brow = QHBoxLayout(buttons)
        brow.setContentsMargins(0, 0, 0, 0)
        brow.addWidget(self.run_button, 1)
        brow.addWidget(self.cancel_button)

        self.setMinimumWidth(360)
        content = QWidget()  # in a scroll area: napari's dock area squeezes tall widgets otherwise
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.layout_ = QVBoxLayout(content)
        self.layout_.addWidget(_group("Input", ("image", self.image), ("model", self.model), self.model_status,
                                      self.card_view, self.card_editor, ("device", self.device)))
        self.layout_.addWidget(self._method_section())
        self.layout_.addWidget(_group("Target", self.target))
        self.layout_.addWidget(_group("Scope", self.scope))
        self.layout_.addWidget(buttons)
        self.layout_.addWidget(self.confirm_box)
        self.layout_.addWidget(self.progress)
        self.layout_.addWidget(self.status)
        self.layout_.addWidget(self._result_section())
        self.layout_.addStretch(1)

        self.runner = Runner(self._on_progress, self)
        self._window_stages, self._eta = WindowStages(), Eta()
        self._follow_timer = QTimer(self)
        self._follow_timer.setSingleShot(True)
        self._follow_timer.setInterval(250)
        self._follow_timer.timeout.connect(self._follow_run)

        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.confirm_button.clicked.connect(lambda: self.run(confirm=False))
        self.model.on_chosen = self.load_model
        self.card_editor.on_apply = self._apply_card
        self.image.currentTextChanged.connect(self._update_scope)
        self.image.currentTextChanged.connect(self._show_card)
        viewer.layers.selection.events.active.connect(self._follow_active)
        viewer.dims.events.current_step.connect(self._on_step)
        active = viewer.layers.selection.active
        if isinstance(active, Image) and not is_own(active):
            self.image.select(active)
        self._update_buttons()
        first = self.model.source()
        if first:  # the first demo model, loaded in the background
            self.load_model(first)

    # ------------------------------------------------------------------ subclass hooks
    def _method_section(self) -> QWidget:
        raise NotImplementedError

    def _result_section(self) -> QWidget:
        return QWidget()

    def methods(self) -> list[str]:
        raise NotImplementedError

    def method_params(self) -> dict[str, dict[str, Any]]:
        return {}

    def layer_name(self) -> str | None:
        return None

    def _model_changed(self) -> None:
        """The model changed (update method lists, layers)."""

    def show_outcome(self, outcome: Outcome, placed: list[Any]) -> None:
        """A successful run's layers were placed: show what the widget shows."""

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self.runner.running

    @property
    def busy(self) -> bool:
        """A model is loading, a job runs, or its layers are still being added or hidden outside the body."""
        return self.running or self.loading or bool(self._steps) or self.display.busy

    def _update_buttons(self) -> None:
        self.run_button.setEnabled(not self.busy and self.model_info is not None)
        self.cancel_button.setEnabled(self.running)

    def _follow_active(self, event: Any = None) -> None:
        layer = self.viewer.layers.selection.active
        if isinstance(layer, Image) and not is_own(layer):
            self.image.select(layer)

    def _show_card(self, *_: Any) -> None:
        """The card in effect for the model, and what will be done to the picked image."""
        self.card_view.show_for(self.model_info, self.image.layer())

    def _update_scope(self, *_: Any) -> None:
        self.scope.set_slicewise(self._slicewise())

    def _slicewise(self) -> bool:
        layer = self.image.layer()
        info = self.model_info
        if layer is None or info is None or info.spatial_dims != 2:
            return False
        shape = tuple(np.shape(layer.data[0] if layer.multiscale else layer.data))
        return len(shape) - spatial_offset(info, shape) == 3

    # ------------------------------------------------------------------ model
    def load_model(self, source: str) -> None:
        """Load ``source`` (``"demo:<name>"`` or a file) in a worker; the Explain button waits for it. The model
        drop-down shows ``source`` (also when called from Python)."""
        combo = self.model.combo
        self.model.insert_source(source)  # before the Browse items, named by the file or folder, as a browsed one is
        combo.setCurrentIndex(combo.findData(source))  # no 'activated' signal: nothing is loaded twice
        self.loading = True
        self._model_gen += 1
        gen = self._model_gen
        self.model_status.setText(f"loading {source} …")
        self._update_buttons()
        create_worker(_safe_load, source, _connect={"returned": lambda result: self._on_model(result, gen)})

    def set_model(self, model: Any, source: str = "python object") -> None:
        """Use a model already in memory (``na.LoadedModel`` or ``torch.nn.Module``), e.g. from a script or
        notebook: ``dock.set_model(na.LoadedModel(net, card))``."""
        self._model_gen += 1
        self._on_model((model_info(model, source), ""), self._model_gen)
        if self.model.combo.findData(source) < 0:
            self.model.combo.insertItem(0, source if len(source) < 40 else "python object", source)
        self.model.combo.setCurrentIndex(self.model.combo.findData(source))

    def _apply_card(self, card: na.ModelCard) -> None:
        """Use the edited card with the loaded module (the module itself is unchanged)."""
        info = self.model_info
        if info is None:
            return
        self._model_gen += 1
        self._on_model((model_info(na.LoadedModel(info.model.module, card), info.source), ""), self._model_gen)
        notify("info", "Model card applied.")

    def _on_model(self, result: tuple[ModelInfo | None, str], gen: int) -> None:
        if gen != self._model_gen:  # a newer choice superseded this load
            return
        info, message = result
        self.loading = False
        if info is None:
            self.model_status.setText("no model loaded")
            self.card_view.show_for(None)
            notify("error", message)
        else:
            self.model_info = info
            if message:
                notify("warning", message)
            if info.source.startswith("demo:") or Path(info.source).exists():  # a file or a model folder
                self.model.recent.add(info.source)
            self.model_status.setText(info.summary())
            lm = info.model
            self.card_editor.set_card(infer_card(lm.module, lm.card) if isinstance(lm, na.LoadedModel) else None)
            self._show_classes(info)
            self._model_changed()
            self._update_scope()
            self._show_card()
        self._update_buttons()

    # ------------------------------------------------------------------ running
    def build_request(self, *, confirm: bool = True) -> ExplainRequest:
        """Read the form into a request; raises an ``na.AttributionError`` for input that cannot run."""
        info = self.model_info
        if info is None:
            raise na.ModelLoadError("Load a model first (a demo model or a model file).")
        layer = self.image.layer()
        if layer is None:
            raise na.InputShapeError("There is no image layer to explain: open a scan (File > Open) or a sample.")
        data = layer.data[0] if layer.multiscale else layer.data
        shape = tuple(np.shape(data))
        if layer.rgb:
            raise na.InputShapeError(f"'{layer.name}' is an RGB layer; convert it to one grey-value channel first.")
        off = spatial_offset(info, shape)
        spatial = shape[off:]
        methods = self.methods()
        if not methods:
            raise na.MethodError("Pick at least one method.")
        slices = None
        if self._slicewise() and self.scope.slices.currentIndex() < 2:
            slices = [self.scope.current_slice(layer)]
        return ExplainRequest(
            model=info, image=data, source=layer.name, methods=methods, params=self.method_params(),
            target=self.target.target(layer, spatial), layer=self.layer_name(),
            device=self.device.currentText(), source_geometry=source_geometry(layer),
            source_metadata={k: layer.metadata[k] for k in ("original_affine", "source_file", "source_sha256",
                                                            "modality") if k in layer.metadata},
            roi=self.scope.box(layer, spatial), slices=slices,
            confirm_above=self.confirm_above if confirm else None, compare=len(methods) > 1,
        )

    def run(self, *, confirm: bool = True) -> None:
        """Start a run from the form's state (does nothing while a run is going on)."""
        if self.busy:
            return
        self.confirm_box.setVisible(False)
        try:
            request = self.build_request(confirm=confirm)
        except na.AttributionError as err:
            notify("error", str(err))
            return
        self._slices = None if request.sweep_layers else request.slices
        self._ran = request.model
        self._shown_over = self.image.layer()
        if self.start_job(run_job, request, self._on_outcome):
            shape = tuple(np.shape(request.image))  # the scan's body mask, found beside the run
            self.display.with_body(self._shown_over, shape[spatial_offset(request.model, shape):])

    def start_job(self, fn: Any, request: Any, returned: Any, *, kind: str = "explain",
                  text: str = "running …") -> bool:
        """Run ``fn(request, progress=…, cancel=…)`` in the worker with the dock's progress bar and Cancel button;
        ``returned(outcome)`` on the GUI thread. False (nothing started) while the dock is busy."""
        if self.busy:
            return False
        self._job = kind
        self.progress.setValue(0)
        self._window_stages, self._eta = WindowStages(), Eta()
        self.status.setText(text)
        self.runner.start(fn, request, returned=returned, errored=self._on_error)
        self._update_buttons()
        return True

    def cancel(self) -> None:
        if self.running:
            self.status.setText("cancelling …")
            self.runner.cancel()

    def _on_progress(self, done: int, total: int, message: str) -> None:
        # a sliding-window run's passes over the windows as one fraction; the ETA per stage (next method, next layer)
        fraction = self._window_stages(done, total, message)
        self.progress.setValue(int(1000 * fraction))
        eta = self._eta(fraction)
        self.status.setText(f"{message} (about {format_duration(eta)} left)" if eta is not None and eta >= 2
                            else message)

    def _on_error(self, err: BaseException) -> None:  # only for bugs: run_job catches everything else
        self.status.setText(f"failed: {err}")
        self._update_buttons()

    def _on_outcome(self, outcome: Outcome) -> None:
        self.last_outcome = outcome
        self._update_buttons()
        if outcome.status == "ok":
            # one layer per turn of the event loop: adding a layer (vispy visual, layer controls, first draw)
            # is napari's slowest GUI-thread work, so the viewer keeps reacting in between
            placed: list[Any] = []
            slices = self._slices
            first = next(iter(outcome.results.values()), None)
            prediction = getattr(first, "label_map", None)
            for ldt in outcome.layers:
                if ldt[2] == "image" and (ldt[1].get("metadata") or {}).get(OWNER_KEY, {}).get("role") == "heatmap":
                    ldt = self.display.prepare(ldt, self._shown_over, prediction)
                self._steps.append(lambda ldt=ldt: placed.append(self._place(ldt, slices)))
            self._steps.append(lambda: self._finish(outcome, placed))
            self._next_step()
        elif outcome.status == "confirm":
            self.progress.setValue(0)
            self.status.setText("")
            self.confirm_label.setText(f"{outcome.message} Run it, or explain only a box (Scope).")
            self.confirm_box.setVisible(True)
        else:
            self.progress.setValue(0)
            superseded = outcome.status == "cancelled" and self._superseded
            self.status.setText("" if superseded else outcome.message)
            if not superseded:
                notify("info" if outcome.status == "cancelled" else "error", outcome.message)
        self._superseded = False
        if self._pending and not self._steps:
            self._pending = False
            self._follow_run()

    def _next_step(self) -> None:
        if self._steps:
            step = self._steps.pop(0)
            step()
            QTimer.singleShot(0, self._next_step)
        else:
            self._update_buttons()
            if self._pending:
                self._pending = False
                self._follow_run()

    def _place(self, ldt: Any, slices: list[int] | None) -> Any:
        layer = place_layer(self.viewer, ldt, merge_slices=slices)
        if slices is not None and is_own(layer, "heatmap"):  # merged with earlier slices: limits from the region
            self.display.adjust(layer)
        if is_own(layer, "prediction"):
            layer.contour = 1  # an outline of the predicted region, drawn over the heatmap
        return layer

    def _finish(self, outcome: Outcome, placed: list[Any]) -> None:
        self.progress.setValue(1000)
        note = " ".join(outcome.warnings)
        self.status.setText(f"{outcome.message}. Warning: {note}" if note else outcome.message)
        if note:
            notify("warning", note)
        self._learn(outcome)
        self.show_outcome(outcome, placed)

    def _show_classes(self, info: ModelInfo) -> None:
        """The target picker for ``info``; while the class count is unknown (a network the test pass could not
        run), its class list says so."""
        self.target.set_model(info)
        if info.n_classes is None:
            self.target.k1.setToolTip("The class count is unknown until the first run (the test forward pass "
                                      "failed): explain the predicted class or region first, or give the card's "
                                      "input_shape or num_classes")

    def _learn(self, outcome: Outcome) -> None:
        """After a run: what the test pass could not tell (task, class count) from the result, and the card view
        again (a trial forward pass may have found the padding the network needs)."""
        info = self._ran
        if info is not None and outcome.results and info.learn_from_result(next(iter(outcome.results.values()))):
            if info is self.model_info:
                self.model_status.setText(info.summary())
                self._show_classes(info)
        self._show_card()

    # ------------------------------------------------------------------ following the slider
    def _on_step(self, event: Any = None) -> None:
        if self.scope.follow and self.model_info is not None:
            self._follow_timer.start()

    def _follow_run(self) -> None:
        if self.running and self._job != "explain":
            return  # another job (e.g. fitting features) is never cancelled by the slider
        if self.running:
            self._pending = True
            self._superseded = True
            self.runner.cancel()
            return
        if self.display.busy:  # the body mask of the last run is being found: this run follows it
            self._pending = True
            return
        self.run(confirm=False)

    def _display_done(self) -> None:
        """A body-mask worker is done: the buttons, and the run the slider asked for meanwhile."""
        self._update_buttons()
        if self._pending and not self.busy:
            self._pending = False
            self._follow_run()

    # ------------------------------------------------------------------ helpers for subclasses
    def own_layers(self, role: str) -> list[Any]:
        return [la for la in self.viewer.layers if is_own(la, role)]

    @staticmethod
    def owner(layer: Any) -> dict[str, Any]:
        return dict(layer.metadata.get(OWNER_KEY) or {})

