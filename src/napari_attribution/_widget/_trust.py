""""Check this map" (Explain dock): the numbers that say whether a heatmap can be trusted, for heatmaps the dock
made in this session — deletion and insertion against a random order of the voxels, the model-randomisation
sanity check, max-sensitivity, and integrated gradients' completeness — with a verdict in words.

The checks are :func:`napari_attribution.evaluate` calls, run in a worker thread like an Explain job (progress
bar, Run becomes Cancel; a cancelled run stores nothing). The results go into the heatmap layer's
``metadata["napari_attribution"]["checks"]`` (so they travel with the layer) and copy to the clipboard as CSV.
A check that fails does not throw the others away: it gets a row without a number whose verdict says why
("failed: ..."), the other checks' numbers are stored, and the message names the failed check.

A layer sweep is checked one network layer at a time (the one the "layer" slider shows, with its own
Attribution, so randomisation and max-sensitivity re-run the method at that layer), and a map a 2D model made
slice by slice on a volume one slice at a time (the slice the slider shows: the 2D model on that slice of the
scan and of the map). Their checks are stored per part: ``checks = {network layer: {check: row}}`` or
``{"slice <k>": {check: row}}``; an ordinary heatmap keeps the flat ``{check: row}``.

The Qt-free part — :class:`Explained`, :func:`check_job`, :func:`verdict`, the thresholds and the words — is
:mod:`napari_attribution.runs.checks` (the command line's metrics CSV writes the same verdicts); the
:class:`TrustBox` only reads its choices, starts the job and shows the rows.
"""

from __future__ import annotations

import dataclasses
import io
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Layer
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

import napari_attribution as na

from .._atomic import csv_writer  # cells escaped against spreadsheet formulas
from ..layers import OWNER_KEY
from ..runs.checks import (
    CHECKS,
    DEFAULT_CHECKS,
    LABELS,
    PARAMS,
    TIPS,
    CheckOutcome,
    CheckRequest,
    Explained,
    check_job,
    deletion_fill,
    explained_from,
    failed_row,
    fill_choices,
    rows_from,
    slice_key,
    verdict,
)
from ..runs.checks import _plane_geometry as _plane_geometry  # the widget tests read it here
from ..runs.model_info import ModelInfo
from ._common import LayerCombo, Runner, is_own, notify
from ._sweep import is_sweep, sweep_index

if TYPE_CHECKING:
    import napari

# the check engine's names stay importable from here (the Explain dock, scripts and tests use them)
__all__ = ["CHECKS", "DEFAULT_CHECKS", "LABELS", "PARAMS", "TIPS", "CheckOutcome", "CheckRequest", "Explained",
           "TrustBox", "check_job", "explained_from", "failed_row", "rows_from", "slice_key", "verdict"]

HEADERS = ("check", "value", "reference", "verdict")
HEADER_TIPS = ("the check (hover for what it measures)", "the check's number",
               "what to compare it with: a random order of the voxels (deletion, insertion), the fully "
               "randomised model (randomisation)", "what the numbers say, in words")
RUN_TEXT = "Run checks"


# ------------------------------------------------------------------------------------------------ the box


def _number(value: Any) -> str:
    """Three decimals (AUCs and correlations lie in [-1, 1]); large numbers (a score difference) in whole units."""
    if value is None or not np.isfinite(float(value)):
        return "—"
    return f"{float(value):.3f}" if abs(float(value)) < 1000 else f"{float(value):.0f}"


def _cell(text: str, right: bool = False, tip: str = "") -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    if tip:
        item.setToolTip(tip)
    return item


class TrustBox(QGroupBox):
    """"Check this map": pick a heatmap this dock made, tick the checks, Run (it becomes Cancel); the table shows
    each check's value, its reference and a verdict, stored in the layer's metadata. ``is_busy()`` tells whether
    the dock runs something else (the checks then wait); ``current_model()`` is the dock's model;
    ``on_state()`` is called when a check run starts or ends."""

    def __init__(self, viewer: napari.viewer.Viewer, *, is_busy: Callable[[], bool],
                 current_model: Callable[[], ModelInfo | None], on_state: Callable[[], None] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("Check this map", parent)
        self.setCheckable(True)
        self.setChecked(True)
        self.setToolTip("Untick to fold the box")
        self.viewer = viewer
        self._is_busy = is_busy
        self._current_model = current_model
        self._on_state = on_state or (lambda: None)
        self._explained: weakref.WeakKeyDictionary[Layer, Explained] = weakref.WeakKeyDictionary()
        self._target: weakref.ReferenceType[Layer] | None = None  # the layer being checked
        self._target_key: str | None = None  # ... and its part (network layer, "slice <k>"), None for one map
        # slice-wise heatmaps, by layer key: the model, the explained slices and their stored checks (a heatmap
        # explained one slice at a time is a new layer after each slice: the earlier slices carry over)
        self._slice_parts: dict[str, tuple[ModelInfo, dict[str, Explained], dict[str, Any]]] = {}
        self._shown_key: str | None = None  # the part the table shows
        self.message = ""
        self.last: CheckOutcome | None = None
        self.runner = Runner(self._on_progress, self)

        self.heatmap = LayerCombo(viewer, (Image,), exclude=lambda la: not is_own(la, "heatmap"))
        self.heatmap.setToolTip("The heatmap to check (one this dock made; follows the selected heatmap)")
        self.boxes = {c: QCheckBox(LABELS[c]) for c in CHECKS}
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        for i, (check, box) in enumerate(self.boxes.items()):
            box.setChecked(check in DEFAULT_CHECKS)
            box.setToolTip(TIPS[check])
            grid.addWidget(box, i // 2, i % 2)
        self.fill = QComboBox()
        self.fill.setEditable(True)
        self.fill.addItems(fill_choices(None))
        self.fill.setToolTip("What deleted voxels become; the first choice is the default for the chosen heatmap: "
                             "the scan's blurred copy for a segmenter, for a classifier the background of the "
                             "modality assumed (CT air at -1000 HU for a scan in HU, else the MRI background; the "
                             "reader's modality wins). Also the image minimum, the image mean, or a value you type "
                             "(e.g. 40 for soft tissue in HU)")
        self.run_button = QPushButton(RUN_TEXT)
        self.run_button.setToolTip("Run the ticked checks in the background (about a minute at most on a demo)")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.view_label = QLabel("")  # which network layer / slice the table is about (sweeps, slice-wise maps)
        self.view_label.setWordWrap(True)
        self.view_label.setVisible(False)
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(list(HEADERS))
        for c, tip in enumerate(HEADER_TIPS):
            item = self.table.horizontalHeaderItem(c)
            if item is not None:
                item.setToolTip(tip)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(True)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        vertical, horizontal = self.table.verticalHeader(), self.table.horizontalHeader()
        if vertical is not None:
            vertical.setVisible(False)
            vertical.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        if horizontal is not None:
            for c in range(len(HEADERS) - 1):
                horizontal.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
            horizontal.setSectionResizeMode(len(HEADERS) - 1, QHeaderView.ResizeMode.Stretch)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.copy_button = QPushButton("Copy as CSV")
        self.copy_button.setToolTip("Copy the table to the clipboard (paste it into a spreadsheet)")
        self.copy_button.setEnabled(False)

        self.content = QWidget()
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("heatmap", self.heatmap)
        form.addRow("deletion fill", self.fill)
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.copy_button)
        lay = QVBoxLayout(self.content)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(form)
        lay.addLayout(grid)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.view_label)
        lay.addWidget(self.table)
        lay.addWidget(self.summary)
        outer = QVBoxLayout(self)
        outer.addWidget(self.content)

        self.toggled.connect(self.content.setVisible)
        self.run_button.clicked.connect(self._run_or_cancel)
        self.copy_button.clicked.connect(self.copy_csv)
        self.heatmap.currentTextChanged.connect(lambda *_: self.show_checks())
        viewer.layers.selection.events.active.connect(self._follow_active)
        viewer.dims.events.current_step.connect(self._on_slider)
        self.show_checks()

    # ------------------------------------------------------------------ what the dock tells the box
    def remember(self, layer: Layer, explained: Explained) -> None:
        """``layer`` is a heatmap the dock just made (from ``explained``). Slices explained one at a time (a 2D
        model following the slider) join the slices explained before into the same heatmap: their parts are kept
        together, for the slices the layer still holds."""
        layer = getattr(layer, "__wrapped__", layer)
        alive = {self._layer_key(la) for la in self.heatmap.layers()}
        self._slice_parts = {k: v for k, v in self._slice_parts.items() if k in alive}
        if explained.kind == "slice":
            info = dict(layer.metadata.get(OWNER_KEY) or {})
            key = self._layer_key(layer)
            parts = dict(explained.parts)
            checks: dict[str, Any] = {}
            earlier = self._slice_parts.get(key)
            if explained.accumulates and earlier is not None and earlier[0] is explained.model:
                held = {slice_key(int(z)) for z in info.get("slices") or []} - set(parts)  # kept, not re-explained
                parts = {**{k: v for k, v in earlier[1].items() if k in held}, **parts}
                checks = {k: v for k, v in earlier[2].items() if k in held}
                if checks and not info.get("checks"):
                    info["checks"] = checks
                    layer.metadata[OWNER_KEY] = info
            self._slice_parts[key] = (explained.model, parts, checks)
            explained = dataclasses.replace(explained, parts=dict(sorted(parts.items(),
                                                                         key=lambda kv: int(kv[0].split()[-1]))))
        self._explained[layer] = explained
        self.show_checks()

    @staticmethod
    def _layer_key(layer: Layer) -> str:
        return str((layer.metadata.get(OWNER_KEY) or {}).get("key") or layer.name)

    def explained(self, layer: Layer) -> Explained | None:
        return self._explained.get(getattr(layer, "__wrapped__", layer))

    @property
    def running(self) -> bool:
        return self.runner.running

    # ------------------------------------------------------------------ following the viewer
    def view(self, layer: Layer | None = None) -> tuple[str, str | None]:
        """What of ``layer`` (default: the chosen heatmap) the viewer shows: ``("", None)`` for an ordinary heatmap,
        ``("network layer", name)`` for a layer sweep (the "layer" slider), ``("slice", "slice <k>")`` for a
        slice-wise map (the slider of the first spatial axis)."""
        layer = layer if layer is not None else self.heatmap.layer()
        if layer is None:
            return "", None
        info = layer.metadata.get(OWNER_KEY) or {}
        ex = self.explained(layer)
        if is_sweep(layer):
            names = [str(n) for n in info.get("layers") or (list(ex.parts) if ex is not None else [])]
            return "network layer", (names[sweep_index(self.viewer, layer)] if names else None)
        if (ex is not None and ex.kind == "slice") or info.get("slices") is not None:
            world = np.asarray(self.viewer.dims.point, dtype=float)[-layer.ndim:]
            z = int(np.round(np.asarray(layer.world_to_data(world), dtype=float)[0]))
            return "slice", slice_key(z)
        return "", None

    def view_text(self, layer: Layer | None = None) -> str:
        """The part shown in words ("network layer 2 of 4: enc2", "slice 5"; "" for an ordinary heatmap)."""
        layer = layer if layer is not None else self.heatmap.layer()
        kind, key = self.view(layer)
        if kind == "network layer" and layer is not None and key is not None:
            names = [str(n) for n in (layer.metadata.get(OWNER_KEY) or {}).get("layers") or []]
            where = f" {names.index(key) + 1} of {len(names)}:" if key in names else ""
            return f"network layer{where} {key}"
        return key or ""

    def _on_slider(self, event: Any = None) -> None:
        """The slider moved: a sweep or slice-wise heatmap shows the stored checks of the part now shown."""
        kind, key = self.view()
        if kind and key != self._shown_key:
            self.show_checks(keep_message=self.running)

    def _follow_active(self, event: Any = None) -> None:
        layer = self.viewer.layers.selection.active
        if layer is not None and isinstance(layer, Image) and is_own(layer, "heatmap"):
            self.heatmap.select(layer)

    def checks(self) -> list[str]:
        """The ticked checks, in table order."""
        return [c for c, box in self.boxes.items() if box.isChecked()]

    def set_checks(self, checks: Sequence[str]) -> None:
        unknown = set(checks) - set(CHECKS)
        if unknown:
            raise na.ParameterError(f"Unknown check {sorted(unknown)}; choose from {', '.join(CHECKS)}.")
        for c, box in self.boxes.items():
            box.setChecked(c in checks)

    def params(self) -> dict[str, dict[str, Any]]:
        """``na.evaluate`` parameters per ticked check (raises ``ParameterError`` for a bad fill value)."""
        out = {c: dict(PARAMS[c]) for c in self.checks()}
        if "deletion" in out:
            out["deletion"]["baseline"] = deletion_fill(self.fill.currentText())
        return out

    def problem(self, layer: Layer | None) -> str:
        """Why ``layer`` cannot be checked now ("" when it can)."""
        if layer is None:
            return "Run Explain first: the checks work on the heatmaps this dock makes."
        ex = self.explained(layer)
        if ex is None:
            return (f"'{layer.name}' was not made by Explain in this session (opened from a file, or made by "
                    "another dock), so its model, scan and target are not known here: re-run Explain on the scan "
                    "first, then check the new heatmap.")
        if ex.note:
            return ex.note
        if ex.model is not self._current_model():
            return (f"'{layer.name}' was made with {ex.model.label}, which is no longer the dock's model: re-run "
                    "Explain on it first (with the current model), then check the new heatmap.")
        if ex.kind:
            _, key = self.view(layer)
            if key is None or key not in ex.parts:
                if ex.kind == "slice":
                    done = ", ".join(k.split()[-1] for k in ex.parts) or "none"
                    return (f"{(key or 'this slice').capitalize()} of '{layer.name}' has no explained values: "
                            f"move the slider to an explained slice ({done}), then run the checks.")
                return (f"The network layer shown ({key}) is not one '{layer.name}' was swept over: move the "
                        "\"layer\" slider to one of its network layers.")
        return ""

    # ------------------------------------------------------------------ running
    def _run_or_cancel(self) -> None:
        if self.running:
            self.cancel()
        else:
            self.run()

    def choose(self, heatmap: str | None = None, checks: Sequence[str] | None = None, fill: str | None = None
               ) -> None:
        """Pick a heatmap, the checks and the deletion fill value as the user would (used by scripts and tests)."""
        if heatmap is not None:
            self.heatmap.setCurrentText(heatmap)
        if checks is not None:
            self.set_checks(checks)
        if fill is not None:
            self.fill.setCurrentText(fill)

    def run(self) -> bool:
        """Start the ticked checks on the chosen heatmap in the worker; False (and one message) when they cannot
        start."""
        if self.running:
            return False
        layer = self.heatmap.layer()
        problem = self.problem(layer)
        checks = self.checks()
        if not problem and not checks:
            problem = "Tick at least one check."
        params: dict[str, dict[str, Any]] = {}
        if not problem:
            try:
                params = self.params()
            except na.ParameterError as err:
                problem = str(err)
        if problem:
            self._say(problem, error=True)
            return False
        if self._is_busy():
            self._say("Wait until the current run ends (or cancel it), then run the checks.", error=True)
            return False
        assert layer is not None
        ex = self.explained(layer)
        assert ex is not None
        key = self.view(layer)[1] if ex.kind else None
        part = ex.parts[key] if key is not None else ex
        self._target = weakref.ref(getattr(layer, "__wrapped__", layer))
        self._target_key = key
        self.progress.setValue(0)
        shown = self.view_text(layer)
        self._say(f"checking {shown} of '{layer.name}' …" if shown else f"checking '{layer.name}' …")
        self.runner.start(check_job, CheckRequest(part, checks, params), returned=self._on_outcome,
                          errored=self._on_error)
        self.run_button.setText("Cancel")
        self.run_button.setToolTip("Stop the checks (nothing is stored)")
        self._on_state()
        return True

    def cancel(self) -> None:
        if self.running:
            self._say("cancelling …")
            self.runner.cancel()

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.setValue(int(1000 * done / max(total, 1)))
        self.summary.setText(message)

    def _ended(self) -> None:
        self.run_button.setText(RUN_TEXT)
        self.run_button.setToolTip("Run the ticked checks in the background")
        self._on_state()

    def _on_error(self, err: BaseException) -> None:  # only for bugs: check_job catches everything else
        self._ended()
        self.progress.setValue(0)
        self._say(f"The checks failed: {err}", error=True)

    def _on_outcome(self, outcome: CheckOutcome) -> None:
        self.last = outcome
        self._ended()
        if outcome.status != "ok":
            self.progress.setValue(0)
            self.show_checks()
            cancelled = outcome.status == "cancelled"
            self._say(outcome.message, error=not cancelled, level="info" if cancelled else "error", notified=True)
            return
        layer = self._target() if self._target is not None else None
        if layer is None or layer not in [getattr(la, "__wrapped__", la) for la in self.viewer.layers]:
            self._say("The heatmap was removed or replaced while it was checked: nothing was stored.", error=True)
            return
        self.progress.setValue(1000)
        info = dict(layer.metadata.get(OWNER_KEY) or {})
        stored = dict(info.get("checks") or {})
        key = self._target_key
        if key is None:
            stored.update(outcome.rows)
        else:  # a sweep's network layer, a slice-wise map's slice: {key: {check: row}}
            stored[key] = {**dict(stored.get(key) or {}), **outcome.rows}
        info["checks"] = stored
        layer.metadata[OWNER_KEY] = info
        record = self._slice_parts.get(self._layer_key(layer))
        if key is not None and record is not None and not is_sweep(layer):
            self._slice_parts[self._layer_key(layer)] = (record[0], record[1], dict(stored))
        self.heatmap.select(layer)
        what = ""
        if key is not None:
            what = f" ({'network layer ' if is_sweep(layer) else ''}{key})"
            if key != self.view(layer)[1]:
                what += "; the slider has moved since: move it back to see them"
        text = (f"{outcome.message} Checked{what}: stored in the layer's metadata." if key is not None
                else f"{outcome.message} Stored in the layer's metadata.")
        self.show_checks(text)
        if outcome.failed:  # say which check failed and why, once, without hiding the others' numbers
            self._say(text, error=True, level="warning")

    # ------------------------------------------------------------------ showing
    def _say(self, message: str, *, error: bool = False, level: str = "warning", notified: bool = False) -> None:
        """``message`` under the table (highlighted when an ``error``); an error, or any message with
        ``notified``, also as one notification of ``level``."""
        self.message = message
        self.summary.setText(message)
        self.summary.setStyleSheet("color: #e08050;" if error else "")
        if error or notified:
            notify(level, message)

    def stored(self, layer: Layer | None = None, key: str | None = None) -> dict[str, dict[str, Any]]:
        """The checks stored in ``layer``'s metadata (default: the chosen heatmap), in table order; for a layer
        sweep or a slice-wise map, those of the part ``key`` (default: the one the viewer shows)."""
        layer = layer if layer is not None else self.heatmap.layer()
        if layer is None:
            return {}
        rows = dict((layer.metadata.get(OWNER_KEY) or {}).get("checks") or {})
        kind, shown = self.view(layer)
        if kind:
            key = key if key is not None else shown
            rows = dict(rows.get(key) or {}) if key is not None else {}
        order = [*CHECKS, "completeness"]
        return {c: rows[c] for c in sorted(rows, key=lambda c: order.index(c) if c in order else len(order))}

    def _offer_fills(self, layer: Layer | None) -> None:
        """The deletion fills for ``layer``'s heatmap (:func:`fill_choices`: its default first, named after the
        modality assumed). A fill the user picked that is still offered, or a value typed, stays chosen."""
        choices = fill_choices(self.explained(layer) if layer is not None else None)
        items = [self.fill.itemText(i) for i in range(self.fill.count())]
        if choices == items:
            return
        current = self.fill.currentText()
        keep = current if (current in choices and items and current != items[0]) or current not in items else ""
        self.fill.blockSignals(True)
        self.fill.clear()
        self.fill.addItems(choices)
        if keep:
            self.fill.setCurrentText(keep)
        self.fill.blockSignals(False)

    def show_checks(self, message: str | None = None, *, keep_message: bool = False) -> None:
        """Fill the table with the chosen heatmap's stored checks (for a sweep or a slice-wise map: of the part
        the viewer shows); ``message`` (default: what to do) under it, unless ``keep_message``."""
        self.setVisible(bool(self.heatmap.layers()))
        layer = self.heatmap.layer()
        if not self.running:
            self._offer_fills(layer)
        rows = self.stored(layer)
        kind, self._shown_key = self.view(layer)
        shown = self.view_text(layer)
        slider = "the \"layer\" slider" if kind == "network layer" else "the slider"
        self.view_label.setText(f"Checks of {shown} (move {slider} for another)." if shown else "")
        self.view_label.setVisible(bool(shown))
        self.table.setRowCount(len(rows))
        for r, (check, row) in enumerate(rows.items()):
            label = LABELS.get(check, check)
            better = f"{row.get('better', '')} is better"
            ref_kind = row.get("reference_kind") or ""
            self.table.setItem(r, 0, _cell(label, tip=TIPS.get(check, "")))
            value = f"{100 * row['value']:.2g} %" if check == "completeness" else _number(row.get("value"))
            if row.get("error"):
                value = "failed"
            self.table.setItem(r, 1, _cell(value, True, better))
            self.table.setItem(r, 2, _cell(_number(row.get("reference")), True, ref_kind))  # the noise: in its tip
            self.table.setItem(r, 3, _cell(str(row.get("verdict", "")), tip=str(row.get("verdict", ""))))
        self.table.resizeRowsToContents()
        header = self.table.horizontalHeader()
        top = header.sizeHint().height() if header is not None else 24
        height = top + 4 + sum(self.table.rowHeight(r) for r in range(len(rows)))
        self.table.setFixedHeight(max(top + 26, min(height, 420)))
        self.copy_button.setEnabled(bool(rows))
        if keep_message:
            return
        if message is None:
            problem = self.problem(layer) if layer is not None else ""
            if problem and layer is not None and self.explained(layer) is None and rows:
                message = f"Checks stored with '{layer.name}'. {problem}"
            elif problem:
                message = problem
            elif rows and layer is not None:
                of = f" for {shown}" if shown else ""
                message = f"Stored with '{layer.name}'{of} (press {RUN_TEXT} to recompute the ticked ones)."
            elif shown:
                message = (f"No checks of {shown} yet: press {RUN_TEXT} to check it. Each number is compared with "
                           "what a map that knows nothing (a random order, a randomised model) would get.")
            else:
                message = (f"Press {RUN_TEXT}: each number is compared with what a map that knows nothing (a "
                           "random order, a randomised model) would get.")
        self.message = message
        self.summary.setText(message)
        self.summary.setStyleSheet("")

    def csv(self, layer: Layer | None = None) -> str:
        """The chosen heatmap's stored checks as CSV (one row per check)."""
        layer = layer if layer is not None else self.heatmap.layer()
        out = io.StringIO()
        writer = csv_writer(out, lineterminator="\n")
        writer.writerow(["heatmap", "check", "value", "reference", "reference_kind", "better", "verdict",
                         "seconds", "params"])
        shown = self.view_text(layer) if layer is not None else ""
        name = (f"{layer.name} ({shown})" if shown else layer.name) if layer is not None else ""
        for check, row in self.stored(layer).items():
            writer.writerow([name, check, "" if row.get("value") is None else repr(float(row["value"])),
                             "" if row.get("reference") is None else repr(float(row["reference"])),
                             row.get("reference_kind", ""), row.get("better", ""), row.get("verdict", ""),
                             f"{float(row.get('seconds', 0.0)):.2f}",
                             " ".join(f"{k}={v}" for k, v in (row.get("params") or {}).items())])
        return out.getvalue()

    def copy_csv(self) -> str:
        """Copy the table to the clipboard as CSV (returns the text)."""
        rows = self.stored()
        if not rows:
            return ""
        text = self.csv()
        clipboard = QApplication.clipboard()
        if clipboard is not None:
            clipboard.setText(text)
        self.summary.setText(self.summary.text().split(" Copied")[0] + f" Copied {len(rows)} rows as CSV.")
        return text
