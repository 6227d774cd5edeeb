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

The Qt-free part — :class:`Explained`, :func:`check_job`, :func:`verdict` — knows nothing of the widget; the
:class:`TrustBox` only reads its choices, starts the job and shows the rows.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
from ..layers import OWNER_KEY, json_safe
from ..metrics import METRICS
from ..runs.jobs import ExplainRequest, in_low_priority_thread, spatial_offset
from ..runs.model_info import ModelInfo
from ._common import LayerCombo, Runner, is_own, notify
from ._sweep import is_sweep, sweep_index

if TYPE_CHECKING:
    import napari

__all__ = ["CHECKS", "DEFAULT_CHECKS", "PARAMS", "CheckOutcome", "CheckRequest", "Explained", "TrustBox",
           "check_job", "explained_from", "failed_row", "rows_from", "slice_key", "verdict"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]

#: The checks the box offers, in table order (``completeness`` is added for integrated gradients).
CHECKS = ("deletion", "insertion", "randomisation", "max_sensitivity")
DEFAULT_CHECKS = ("deletion", "insertion", "randomisation")
LABELS = {"deletion": "deletion", "insertion": "insertion", "randomisation": "randomisation",
          "max_sensitivity": "max-sensitivity", "completeness": "IG completeness"}
#: Cheap settings: about 40 model calls for deletion and insertion each (their random reference included),
#: five re-runs of the method for randomisation and max-sensitivity.
PARAMS: dict[str, dict[str, Any]] = {"deletion": {"steps": 20}, "insertion": {"steps": 20},
                                     "randomisation": {"max_layers": 5}, "max_sensitivity": {"samples": 5}}
TIPS = {
    "deletion": "Delete voxels in the map's order (most important first) and follow the target's probability: "
                "the area under that curve (AUC). Lower is better; the reference is the AUC of a random order.",
    "insertion": "Start from a blurred scan and put voxels back in the map's order: the AUC of the target's "
                 "probability. Higher is better; the reference is the AUC of a random order.",
    "randomisation": "Randomise the model's weights layer by layer (from the output back, on a copy) and "
                     "re-run the method: the mean rank correlation with the original map. Low = the map depends "
                     "on the model; the reference is the correlation with every layer randomised.",
    "max_sensitivity": "Re-run the method on the scan with ±2 % noise: the largest relative change of the map. "
                       "Lower is better.",
    "completeness": "Integrated gradients: how far the map's sum is from the score difference it explains "
                    "(relative error). The reference is that difference.",
}
HEADERS = ("check", "value", "reference", "verdict")
HEADER_TIPS = ("the check (hover for what it measures)", "the check's number",
               "what to compare it with: a random order of the voxels (deletion, insertion), the fully "
               "randomised model (randomisation)", "what the numbers say, in words")
RUN_TEXT = "Run checks"


# ------------------------------------------------------------------------------------------------ what to check


@dataclass
class Explained:
    """A heatmap this dock made: the attribution on the image it was computed on (cropped to the explained box),
    the model it came from, and ``note``, why it cannot be checked ("" when it can).

    A layer sweep (``kind`` "network layer") or a slice-wise map (``kind`` "slice") is checked one part at a
    time: ``parts`` maps the key its checks are stored under (the network layer's name, ``"slice <k>"``) to that
    part as an ordinary :class:`Explained` (its own Attribution and image). ``accumulates``: the run explained
    chosen slices, which join the layer's earlier ones (see :meth:`TrustBox.remember`)."""

    attribution: Any  # na.Attribution
    model: ModelInfo
    image: Any  # the layer's array (numpy or dask: read in the worker), cropped to the box
    note: str = ""
    kind: str = ""  # "" (one map), "network layer" (a layer sweep) or "slice" (slice by slice)
    parts: dict[str, Explained] = field(default_factory=dict)
    accumulates: bool = False


def slice_key(index: int) -> str:
    """The key a slice-wise map's checks of slice ``index`` (of the scan) are stored under."""
    return f"slice {int(index)}"


def _box(attribution: Any) -> tuple[slice, ...] | None:
    roi = attribution.extras.get("roi")
    return None if roi is None else tuple(slice(int(a), int(b)) for a, b in roi)


def _cropped(attribution: Any, model: ModelInfo, image: Any, off: int) -> Explained:
    """``attribution`` and ``image`` cropped to the box (ROI) the map was explained on, if any."""
    box = _box(attribution)
    if box is not None:
        image = image[(slice(None),) * off + box]
        attribution = dataclasses.replace(attribution, data=np.asarray(attribution.data)[box])
    return Explained(attribution, model, image)


def _plane_geometry(geometry: Any) -> Any:
    """The geometry of one slice (the last two axes) of a volume's ``geometry`` (None stays None)."""
    spacing = getattr(geometry, "spacing", None)
    if spacing is None or len(spacing) < 3:
        return geometry
    from ..io import Geometry

    return Geometry(spacing=tuple(spacing)[-2:], origin=tuple(geometry.origin)[-2:])


def _slice_parts(attribution: Any, model: ModelInfo, image: Any, off: int) -> dict[str, Explained]:
    """One 2D :class:`Explained` per explained slice of a slice-wise map: the slice of the map (a 2D Attribution
    with that slice's target, prediction and extras) and the same slice of the scan (of the box, for a box run)."""
    data = np.asarray(attribution.data)
    box = _box(attribution)
    z0 = box[0].start if box is not None else 0
    plane = box[1:] if box is not None else (slice(None), slice(None))
    targets = attribution.target if isinstance(attribution.target, list) else None
    preds = attribution.prediction if isinstance(attribution.prediction, list) else None
    geometry = _plane_geometry(attribution.geometry)
    parts: dict[str, Explained] = {}
    for z in sorted(int(s) for s in attribution.extras.get("slices") or []):
        i = z - z0  # per-slice targets and extras are indexed in the explained box
        if not 0 <= z < data.shape[0]:
            continue
        values = data[z][plane]  # a view: the slices listed were explained (no scan of the volume here)
        target = targets[i] if targets is not None and 0 <= i < len(targets) else attribution.target
        pred = preds[z] if preds is not None and z < len(preds) else attribution.prediction
        if box is not None and isinstance(pred, np.ndarray) and pred.ndim == 2:
            pred = pred[plane]
        extras = {k: v[i] for k, v in attribution.extras.items()
                  if k not in ("skipped_slices", "slices", "roi") and isinstance(v, Mapping) and i in v}
        att = dataclasses.replace(attribution, data=values, target=target, prediction=pred, per_channel=None,
                                  geometry=geometry, extras=extras)
        parts[slice_key(z)] = Explained(att, model, image[(slice(None),) * off + (z, *plane)])
    return parts


def explained_from(attribution: Any, request: ExplainRequest, name: str,
                   results: Mapping[str, Any] | None = None) -> Explained:
    """What :func:`check_job` needs for the heatmap ``name`` made by ``request``: a box (ROI) run is checked on
    the box, as it was explained. For a layer sweep, ``results`` are the sweep's maps ({network layer: its
    Attribution}); a slice-wise map is cut into its explained slices."""
    image = request.image[0] if isinstance(request.image, (list, tuple)) else request.image  # multiscale: level 0
    off = spatial_offset(request.model, tuple(np.shape(image)))
    slicewise = request.slices is not None or attribution.extras.get("slices") is not None
    if request.sweep_layers:
        maps = dict(results or {})
        if slicewise or not maps or any(a.extras.get("slices") is not None for a in maps.values()):
            note = (f"'{name}' is a layer sweep of maps explained slice by slice with a 2D model. Run Explain at "
                    "one network layer (without the sweep) and check that heatmap slice by slice."
                    if maps or slicewise else
                    f"'{name}' is a layer sweep whose maps are not known here: run the sweep again, then check it.")
            return Explained(attribution, request.model, image, note)
        parts = {str(layer): _cropped(att, request.model, image, off) for layer, att in maps.items()}
        first = next(iter(parts.values()))
        return Explained(first.attribution, request.model, first.image, kind="network layer", parts=parts)
    if slicewise:
        data_shape = tuple(np.shape(attribution.data))
        box = _box(attribution)
        shape = tuple(b.stop - b.start for b in box) if box is not None else data_shape
        grid = attribution.extras.get("model_grid_shape")
        if grid is not None and tuple(int(g) for g in grid) != shape:
            note = (f"'{name}' was explained slice by slice on the model's resampled grid, whose slices are not "
                    "the scan's, so the checks cannot check it slice by slice.")
            return Explained(attribution, request.model, image, note)
        return Explained(attribution, request.model, image, kind="slice",
                         parts=_slice_parts(attribution, request.model, image, off),
                         accumulates=request.slices is not None)
    return _cropped(attribution, request.model, image, off)


@dataclass
class CheckRequest:
    explained: Explained
    checks: list[str]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per check, for na.evaluate


@dataclass
class CheckOutcome:
    """What a check run gave: ``status`` "ok" when at least one check gave a number (the others that failed are in
    ``failed``, check -> why, and have a row that says so), "failed" when none did, "cancelled"."""

    status: str  # "ok" | "cancelled" | "failed"
    message: str = ""
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # check -> row (see rows_from)
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # check -> why it failed (one line)


# ------------------------------------------------------------------------------------------------ verdicts


def _span(*curves: Any) -> float:
    values = np.concatenate([np.asarray(c, float).ravel() for c in curves])
    return float(values.max() - values.min()) if values.size else 0.0


def verdict(check: str, value: float, details: Mapping[str, Any]) -> str:
    """What a check's numbers say, in words (the thresholds are rules of thumb, stated in the user guide)."""
    if check in ("deletion", "insertion"):
        ref = details.get("random_auc")
        if ref is None:
            return "no random reference to compare with"
        span = _span(details.get("curve", [value]), details.get("random_curve", [ref]))
        if span < 0.05:
            fix = " or another fill value" if check == "deletion" else ""
            return ("not informative: the target's probability hardly changes along either curve (the model is "
                    f"saturated, or does not react to the {'deletion' if check == 'deletion' else 'blur'}); try "
                    f"another target{fix}")
        gain = (ref - value if check == "deletion" else value - ref) / span
        if gain > 0.1:
            return ("faithful: deleting the map's top voxels first drops the score faster than a random order"
                    if check == "deletion" else
                    "faithful: restoring the map's top voxels first brings the score back faster than a random order")
        if gain < -0.1:
            return "worse than a random order: the map's top voxels matter less to the model than random ones"
        return "no better than a random order of the voxels"
    if check == "randomisation":
        if value < 0.3:
            return "passes the sanity check: the map changes when the model is randomised (it depends on the model)"
        if value < 0.6:
            return "partly passes: the map keeps some of its structure when the model is randomised"
        return ("fails the sanity check: the map barely changes when the model is randomised (it shows the image "
                "more than the model)")
    if check == "max_sensitivity":
        pct = f"{100 * value:.0f} %"
        if value < 0.1:
            return f"stable: ±2 % noise on the scan changes the map by at most {pct}"
        if value < 0.5:
            return f"fairly stable: ±2 % noise on the scan changes the map by up to {pct}"
        return f"unstable: ±2 % noise on the scan changes the map by up to {pct}"
    if check == "completeness":
        pct = f"{100 * value:.2g} %"
        if value <= 0.01:
            return f"complete: the map adds up to the score difference it explains (error {pct})"
        if value <= 0.1:
            return f"nearly complete (error {pct}); more steps make the numbers exact"
        return f"incomplete: the map's sum misses the score difference by {pct}; use more steps (or steps 'auto')"
    return ""


def rows_from(scores: Mapping[str, Any], attribution: Any, params: Mapping[str, Mapping[str, Any]]
              ) -> dict[str, dict[str, Any]]:
    """One JSON-safe row per check (``value``, ``reference``, ``reference_kind``, ``verdict``, ``better``,
    ``seconds``, ``params``) from the :class:`~napari_attribution.Score` of each, plus integrated gradients'
    completeness from the attribution's extras when it has them."""
    rows: dict[str, dict[str, Any]] = {}
    for check, score in scores.items():
        reference: float | None = None
        kind = ""
        if check in ("deletion", "insertion"):
            reference, kind = score.details.get("random_auc"), "AUC of a random order"
        elif check == "randomisation" and score.details.get("per_layer"):
            reference, kind = score.details["per_layer"][-1][1], "correlation with every layer randomised"
        rows[check] = {
            "value": float(score.value), "reference": None if reference is None else float(reference),
            "reference_kind": kind, "verdict": verdict(check, float(score.value), score.details),
            "better": "higher" if score.higher_is_better else "lower", "seconds": float(score.seconds),
            "params": json_safe(dict(params.get(check, {}))),
        }
    comp = attribution.extras.get("completeness") if attribution is not None else None
    if isinstance(comp, Mapping) and "relative_error" in comp:
        err = float(comp["relative_error"])
        rows["completeness"] = {
            "value": err, "reference": float(comp.get("delta", float("nan"))),
            "reference_kind": "score difference f(x) - f(baseline)", "verdict": verdict("completeness", err, {}),
            "better": "lower", "seconds": 0.0, "params": {"steps": json_safe(comp.get("steps"))},
        }
    return rows


# ------------------------------------------------------------------------------------------------ the job


def check_job(request: CheckRequest, progress: Progress | None = None, cancel: Cancel | None = None
              ) -> CheckOutcome:
    """Run the checks and return a :class:`CheckOutcome`; never raises. Called in napari's worker thread, at a
    lower CPU priority as Explain jobs are."""
    outcome: CheckOutcome = in_low_priority_thread(
        _check_job, request, progress, cancel,
        fallback=CheckOutcome("failed", "The checks stopped unexpectedly; nothing was stored."))
    return outcome


def _why(err: BaseException) -> str:
    """Why a check failed, in one line: the library's own message (it says what to do), else the error's type and
    first line (the traceback goes to the log)."""
    if isinstance(err, MemoryError):
        return "out of memory; explain a box (ROI) and check that"
    text = str(err).strip().splitlines()
    first = text[0].rstrip(".") if text else ""
    if isinstance(err, na.AttributionError):
        return first or type(err).__name__
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def failed_row(check: str, why: str, seconds: float, params: Mapping[str, Any]) -> dict[str, Any]:
    """The row of a check that failed: no value, the reason as its verdict (and under ``error``)."""
    return {"value": None, "reference": None, "reference_kind": "", "verdict": f"failed: {why}",
            "better": "higher" if METRICS.get(check) else "lower", "seconds": float(seconds),
            "params": json_safe(dict(params)), "error": why}


def _check_job(request: CheckRequest, progress: Progress | None, cancel: Cancel | None) -> CheckOutcome:
    # torch threads: in_low_priority_thread's (all cores but one, the caller's setting restored afterwards)
    t0 = time.perf_counter()
    ex = request.explained
    n = len(request.checks)
    scores: dict[str, Any] = {}
    failed: dict[str, tuple[str, float]] = {}
    try:
        image = np.asarray(ex.image)  # a dask array is read here, not on the GUI thread
    except MemoryError:
        return CheckOutcome("failed", "Out of memory while reading the scan; explain a box (ROI) and check that.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, check in enumerate(request.checks):
            def step(done: int, total: int, message: str, i: int = i) -> None:
                if progress is not None:
                    frac = done / max(total, 1)
                    progress(int(1000 * (i + frac)), 1000 * n, f"check {i + 1} of {n}, {message}")

            t1 = time.perf_counter()
            try:
                scores[check] = na.evaluate(ex.model.model, image, ex.attribution, check,
                                            progress=step, cancel=cancel, **request.params.get(check, {}))
            except na.Cancelled:  # the user stopped the run: nothing is stored, not even the checks done
                return CheckOutcome("cancelled", "Checks cancelled: nothing was stored.")
            except Exception as err:  # noqa: BLE001 - one check's failure must not throw away the others
                log.debug("check %s failed", check, exc_info=True)
                failed[check] = (_why(err), time.perf_counter() - t1)
    why = {c: w for c, (w, _) in failed.items()}
    reasons = "; ".join(f"{LABELS.get(c, c)} failed: {w}" for c, w in why.items())
    seconds = time.perf_counter() - t0
    if not scores:
        return CheckOutcome("failed", f"The checks failed: {reasons}.", seconds=seconds, failed=why)
    rows = rows_from(scores, ex.attribution, request.params)
    for check, (w, s) in failed.items():
        rows[check] = failed_row(check, w, s, request.params.get(check, {}))
    order = [*request.checks, "completeness"]
    rows = {c: rows[c] for c in sorted(rows, key=lambda c: order.index(c) if c in order else len(order))}
    done = f"{len(scores)} of {n} checks" if failed else f"{n} check{'s' if n != 1 else ''}"
    message = f"{done} in {seconds:.1f} s." + (f" {reasons}; the other checks' results are kept." if failed else "")
    return CheckOutcome("ok", message, rows, seconds, why)


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


def _baseline(text: str) -> Any:
    """The deletion fill value from the editable choice: "min", "mean" or a number."""
    word = text.strip().split(" ")[0].lower()
    if word in ("min", "mean", ""):
        return word or "min"
    try:
        return float(text)
    except ValueError:
        raise na.ParameterError(f"The deletion fill value {text!r} is not 'min', 'mean' or a number.") from None


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
        self.fill.addItems(["min (air in CT)", "mean"])
        self.fill.setToolTip("What deleted voxels become: the image minimum, the image mean, or a value you type "
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
            out["deletion"]["baseline"] = _baseline(self.fill.currentText())
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

    def show_checks(self, message: str | None = None, *, keep_message: bool = False) -> None:
        """Fill the table with the chosen heatmap's stored checks (for a sweep or a slice-wise map: of the part
        the viewer shows); ``message`` (default: what to do) under it, unless ``keep_message``."""
        self.setVisible(bool(self.heatmap.layers()))
        layer = self.heatmap.layer()
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
            self.table.setItem(r, 2, _cell(_number(row.get("reference")), True, ref_kind))
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
