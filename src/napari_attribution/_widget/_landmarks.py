"""Compare heatmaps with anatomical landmarks painted as a Labels layer (one label value per landmark), computed
by :func:`napari_attribution.metrics.landmark_table` on the GUI thread (a few tens of milliseconds per 128³ map)
and copied to the clipboard as CSV. The tables score each heatmap's full map
(:func:`napari_attribution.layers.full_map`): a layer hidden outside the body gives the same table as shown in full.

- :class:`LandmarkBox` (Explain dock): one heatmap, a row per landmark (voxels, volume in mm³, share of the map's
  positive energy, whether the map's peak lies in it, the distance from the peak in mm).
- :class:`MethodLandmarkBox` (Compare dock): the heatmaps of a comparison, a row per method (energy share per
  landmark against its chance share, the landmark holding the peak, the peak's distance to the nearest landmark).

Both are a :class:`LandmarkGroup`: the Labels layer picker, the table, the message line (a bad choice gives one
notification), Update and Copy as CSV, and the recomputation when the layers change or the labels are painted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

import napari_attribution as na

from ..layers import OWNER_KEY, full_map
from ..metrics import LandmarkComparison, LandmarkTable, landmark_comparison, landmark_table
from ._common import LayerCombo, is_own, notify
from ._sweep import is_sweep, sweep_index

if TYPE_CHECKING:
    import napari

__all__ = ["LandmarkBox", "LandmarkGroup", "MethodLandmarkBox", "voxel_spacing"]


def voxel_spacing(layer: Layer, n: int) -> tuple[float, ...]:
    """The size of a voxel along the last ``n`` data axes of ``layer`` in world units (mm for scans opened with
    napari-attribution), from the layer's whole transform (scale, rotation, shear, affine)."""
    origin = np.zeros(layer.ndim)
    base = np.asarray(layer.data_to_world(origin), dtype=float)
    out = []
    for axis in range(layer.ndim - n, layer.ndim):
        step = origin.copy()
        step[axis] = 1.0
        out.append(float(np.linalg.norm(np.asarray(layer.data_to_world(step), dtype=float) - base)))
    return tuple(out)


def _volume_text(mm3: float) -> str:
    return f"{mm3:.0f}" if mm3 >= 10 else f"{mm3:.3g}"


def _percent(fraction: float) -> str:
    """A chance share: two significant digits, whole percents from 10 % on."""
    pct = 100 * fraction
    return f"{pct:.2g} %" if pct < 10 else f"{pct:.0f} %"


def _heatmap_role(layer: Layer) -> bool:
    return isinstance(layer, Image) and is_own(layer, "heatmap")


def _right(item: QTableWidgetItem) -> QTableWidgetItem:
    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


#: The hint shown while no Labels layer is chosen (not an error: no notification).
HINT = "Paint landmarks in a Labels layer over the scan (one label value per landmark), then pick it here."


class LandmarkGroup(QGroupBox):
    """What the landmark boxes share: the Labels layer picker (``labels``), the table, the message line
    (``summary``), Update and Copy as CSV, and a recomputation shortly after the layers change or the labels are
    painted. A subclass adds its pickers (:meth:`_choices`) and computes in :meth:`update_table`, ending with
    :meth:`_show`. ``result`` holds what was computed (with ``.rows`` and ``.csv()``), or None."""

    HEADERS: tuple[str, ...] = ()
    TIPS: tuple[str, ...] = ()

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__("Compare with landmarks", parent)
        self.viewer = viewer
        self.result: Any = None
        self.message = ""
        self._notified = ""
        self.labels = LayerCombo(viewer, (Labels,))
        self.labels.setToolTip("A Labels layer painted over the scan, one label value per landmark")
        self.table = QTableWidget(0, len(self.HEADERS))
        self._set_headers(self.HEADERS, self.TIPS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        vertical, horizontal = self.table.verticalHeader(), self.table.horizontalHeader()
        if vertical is not None:
            vertical.setVisible(False)
            vertical.setDefaultSectionSize(22)
        if horizontal is not None:
            horizontal.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
            horizontal.setStretchLastSection(True)
        self.table.setFixedHeight(50)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.copy_button = QPushButton("Copy as CSV")
        self.copy_button.setToolTip("Copy the table to the clipboard (paste it into a spreadsheet)")
        self.copy_button.setEnabled(False)
        self.update_button = QPushButton("Update")
        self.update_button.setToolTip("Recompute the table (it also follows your choices and painting)")
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        self._choices(form)
        form.addRow("landmarks", self.labels)
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.update_button)
        buttons.addWidget(self.copy_button)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.table)
        lay.addWidget(self.summary)
        lay.addLayout(buttons)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(lambda: self.update_table())
        self.labels.currentTextChanged.connect(self.schedule)
        self.labels.activated.connect(lambda *_: self.update_table(notify_errors=True))
        self.update_button.clicked.connect(lambda: self.update_table(notify_errors=True))
        self.copy_button.clicked.connect(self.copy_csv)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.schedule)
        for layer in viewer.layers:
            self._watch(layer)

    # ------------------------------------------------------------------ subclass hooks
    def _choices(self, form: QFormLayout) -> None:
        """Add the subclass's pickers above the Labels layer picker."""

    def update_table(self, *, notify_errors: bool = False) -> Any:
        """Recompute; a choice that cannot be compared empties the table and says what to do under it — and in a
        notification when ``notify_errors`` (the user's own choice), once per message."""
        raise NotImplementedError

    # ------------------------------------------------------------------ following the viewer
    def _watch(self, layer: Layer) -> None:
        if isinstance(layer, Labels):  # painting, filling, erasing, a new array
            layer.events.paint.connect(self.schedule)
            layer.events.data.connect(self.schedule)

    def _on_inserted(self, event: Any) -> None:
        self._watch(event.value)
        self.schedule()

    def schedule(self, *_: Any) -> None:
        """Recompute shortly (several events in a row give one computation)."""
        self._timer.start()

    # ------------------------------------------------------------------ the landmarks
    def read_labels(self, lab: Labels, labels: Any, shape: tuple[int, ...], what: str
                    ) -> tuple[np.ndarray, dict[Any, Any] | None] | str:
        """``(labels, names)`` to compare with maps of ``shape`` (``what`` names them in messages: "the
        heatmap"), or what is wrong with the Labels layer ``lab`` (``labels`` is its data, maybe one slice)."""
        labels = np.asarray(labels)
        if labels.shape != tuple(shape):
            return (f"The Labels layer '{lab.name}' has shape {labels.shape}, but {what} {tuple(shape)}: paint "
                    "the landmarks on the explained scan (select the scan, then Layer > New Labels Layer) or pick "
                    "another Labels layer.")
        if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
            return f"The Labels layer '{lab.name}' does not hold integer labels."
        if not labels.any():
            return (f"The Labels layer '{lab.name}' has no landmark yet: paint each landmark with its own label "
                    "value (the label number in the layer controls).")
        names = lab.metadata.get("label_names") if isinstance(lab.metadata, dict) else None
        return labels, names if isinstance(names, dict) else None

    @staticmethod
    def table_for(heat: Layer, data: Any, labels: np.ndarray, names: dict[Any, Any] | None
                  ) -> LandmarkTable | str:
        """:func:`landmark_table` of ``data`` (the heatmap layer ``heat``'s map, voxel size from its transform),
        or what is wrong (e.g. a map without any finite value)."""
        try:
            return landmark_table(data, labels, spacing=voxel_spacing(heat, np.ndim(data)), names=names)
        except na.AttributionError as err:
            return f"'{heat.name}': {err}"

    # ------------------------------------------------------------------ showing
    def _set_headers(self, headers: tuple[str, ...], tips: tuple[str, ...]) -> None:
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(list(headers))
        for c, tip in enumerate(tips):
            item = self.table.horizontalHeaderItem(c)
            if item is not None:
                item.setToolTip(tip)

    def _show(self, result: Any, cells: list[list[str]], message: str, notify_errors: bool = False) -> None:
        """Fill the table with ``cells`` (the first column left-aligned, the others right-aligned) for ``result``
        (None: nothing to show, ``message`` says why and is notified once when ``notify_errors``)."""
        self.result = result
        self.message = message if result is None else ""
        self.copy_button.setEnabled(result is not None)
        self.table.setRowCount(len(cells))
        for r, row in enumerate(cells):
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                self.table.setItem(r, c, _right(item) if c else item)
        bar = self.table.horizontalScrollBar()  # the columns may not fit a narrow dock: room for the scroll bar
        extra = bar.sizeHint().height() if bar is not None else 0
        header = self.table.horizontalHeader()
        top = max(28, header.sizeHint().height() + 4) if header is not None else 28
        self.table.setFixedHeight(min(240, top + extra + 22 * max(1, len(cells))))
        self.summary.setText(message)
        error = result is None and self._is_error(message)
        self.summary.setStyleSheet("color: #e08050;" if error else "")
        if error and notify_errors and message != self._notified:
            self._notified = message
            notify("warning", message)
        if result is not None:
            self._notified = ""

    @staticmethod
    def _is_error(message: str) -> bool:
        return bool(message) and message != HINT and not message.startswith("Press ")

    def copy_csv(self) -> str:
        """Copy the table to the clipboard as CSV (returns the text)."""
        if self.result is None:
            return ""
        text: str = self.result.csv()
        clipboard = QApplication.clipboard()
        if clipboard is not None:
            clipboard.setText(text)
        self.summary.setText(self.summary.text().split(" Copied")[0] + f" Copied {len(self.result.rows)} rows as CSV.")
        return text


class LandmarkBox(LandmarkGroup):
    """"Compare with landmarks" (Explain dock): pick a heatmap and a Labels layer of landmarks; the table follows
    both (and the painting, and for a layer sweep the network layer shown). Shown while the viewer holds a
    heatmap."""

    # the comparisons first: a narrow dock shows them without scrolling
    HEADERS = ("landmark", "energy", "chance", "peak in", "dist. mm", "voxels", "mm³")
    TIPS = ("label value (and name, from the layer's metadata['label_names'])",
            "share of the map's positive energy inside the landmark",
            "the share a map spread evenly would give (the landmark's share of the volume)",
            "the map's maximum lies in the landmark (pointing game)",
            "distance from the map's maximum to the nearest voxel of the landmark, in mm (0 inside)",
            "voxels with this label", "volume in mm³ (from the heatmap's voxel size)")

    result: LandmarkTable | None

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        self.heatmap.currentTextChanged.connect(self.schedule)
        self.heatmap.activated.connect(lambda *_: self.update_table(notify_errors=True))
        viewer.layers.selection.events.active.connect(self._follow_active)
        viewer.dims.events.current_step.connect(self._on_step)
        self.update_table()

    def _choices(self, form: QFormLayout) -> None:
        self.heatmap = LayerCombo(self.viewer, (Image,), exclude=lambda la: not is_own(la, "heatmap"))
        self.heatmap.setToolTip("The heatmap to compare (follows the selected heatmap layer)")
        form.addRow("heatmap", self.heatmap)

    # ------------------------------------------------------------------ following the viewer
    def _follow_active(self, event: Any = None) -> None:
        layer = self.viewer.layers.selection.active
        if layer is not None and _heatmap_role(layer):
            self.heatmap.select(layer)

    def _on_step(self, event: Any = None) -> None:
        heat = self.heatmap.layer()
        if heat is not None and is_sweep(heat):
            self.schedule()

    # ------------------------------------------------------------------ computing
    def choose(self, heatmap: str | None = None, labels: str | None = None) -> LandmarkTable | None:
        """Pick layers by name as the user would (a bad choice gives one notification), then compute."""
        if heatmap is not None:
            self.heatmap.setCurrentText(heatmap)
        if labels is not None:
            self.labels.setCurrentText(labels)
        return self.update_table(notify_errors=True)

    def update_table(self, *, notify_errors: bool = False) -> LandmarkTable | None:
        """Recompute the table for the chosen layers. A choice that cannot be compared (another grid, no
        landmark) empties the table and says what to do under it — and in a notification when ``notify_errors``
        (the user's own choice), once per message."""
        self._timer.stop()
        self.setVisible(bool(self.heatmap.layers()))
        heat, lab = self.heatmap.layer(), self.labels.layer()
        if heat is None:
            self._show(None, [], "")
            return None
        if lab is None:
            self._show(None, [], HINT)
            return None
        data = np.asarray(full_map(heat.data, heat.metadata))  # the map, not what the display hides
        spatial = data.shape[1:] if is_sweep(heat) else data.shape
        where = ""
        if is_sweep(heat):
            idx = sweep_index(self.viewer, heat)
            data = data[idx]
            layers = heat.metadata.get(OWNER_KEY, {}).get("layers") or []
            where = f" (network layer {layers[idx] if idx < len(layers) else idx})"
        labels = np.asarray(lab.data)
        if is_sweep(heat) and labels.shape == np.shape(heat.data):  # painted on the sweep's own grid
            labels = labels[sweep_index(self.viewer, heat)]
        checked = self.read_labels(lab, labels, tuple(spatial), "the heatmap has")
        table = checked if isinstance(checked, str) else self.table_for(heat, data, *checked)
        if isinstance(table, str):
            self._show(None, [], table, notify_errors)
            return None
        peak = ", ".join(str(i) for i in table.peak)
        inside = [r for r in table.rows if r.peak_inside]
        summary = (f"{heat.name}{where}: peak {table.peak_value:.3g} at voxel ({peak})"
                   + (f", in landmark {self._label_text(inside[0])}" if inside else ", outside every landmark"))
        share = table.energy_in_landmarks
        if share is None:
            summary += ". The map has no positive value, so no energy share."
        else:
            chance = sum(r.volume_fraction for r in table.rows)
            summary += f". All landmarks hold {100 * share:.1f} % of the positive energy (chance {100 * chance:.1f} %)."
        cells = [[self._label_text(row), "—" if row.energy is None else f"{100 * row.energy:.1f} %",
                  _percent(row.volume_fraction), "yes" if row.peak_inside else "no",
                  f"{row.distance_mm:.1f}", str(row.voxels), _volume_text(row.volume_mm3)] for row in table.rows]
        self._show(table, cells, summary)
        return table

    @staticmethod
    def _label_text(row: Any) -> str:
        return f"{row.label} · {row.name}" if row.name else str(row.label)


class MethodLandmarkBox(LandmarkGroup):
    """"Compare with landmarks" (Compare dock): the heatmaps of the last comparison against the landmarks of one
    Labels layer, one row per method: the share of its positive energy in each landmark (the landmark's chance
    share in the column header), the landmark holding its peak and the peak's distance to the nearest landmark.
    Follows the Labels choice, the painting and a new comparison (:meth:`set_heatmaps`)."""

    HEADERS = ("method", "peak in", "peak dist. mm")
    TAIL_TIPS = ("the landmark holding the map's maximum (pointing game), or none",
                 "distance from the map's maximum to the nearest landmark voxel, in mm (0 inside one)")

    result: LandmarkComparison | None

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None, *,
                 short: dict[str, str] | None = None) -> None:
        self._heatmaps: list[tuple[str, str]] = []  # (method, layer name) of the last comparison
        self.tables: dict[str, LandmarkTable] = {}
        self.short = dict(short or {})  # method -> the name shown in the table (the full one in its tooltip)
        super().__init__(viewer, parent)
        self.update_table()

    def set_heatmaps(self, layers: list[Layer]) -> None:
        """The heatmaps of a new comparison (in method order); recompute."""
        self._heatmaps = []
        for la in layers:
            info = la.metadata.get(OWNER_KEY) or {}
            self._heatmaps.append((str(info.get("method") or la.name), la.name))
        self.update_table()

    def heatmaps(self) -> list[tuple[str, Layer]]:
        """``(method, layer)`` of the last comparison's heatmaps still in the viewer (by name: a re-run replaces
        the layer of a name)."""
        layers = self.viewer.layers
        return [(m, layers[name]) for m, name in self._heatmaps if name in layers]

    def choose(self, labels: str | None = None) -> LandmarkComparison | None:
        """Pick the Labels layer by name as the user would (a bad choice gives one notification), then compute."""
        if labels is not None:
            self.labels.setCurrentText(labels)
        return self.update_table(notify_errors=True)

    def update_table(self, *, notify_errors: bool = False) -> LandmarkComparison | None:
        self._timer.stop()
        self.tables = {}
        heats, lab = self.heatmaps(), self.labels.layer()
        if not heats:
            return self._nothing("Press Compare, then pick a Labels layer of landmarks here: each method's share "
                                 "of energy in each landmark and where its peak lies.")
        if lab is None:
            return self._nothing(HINT)
        shape = tuple(np.shape(heats[0][1].data))
        checked = self.read_labels(lab, lab.data, shape, "the compared heatmaps have")
        if isinstance(checked, str):
            return self._nothing(checked, notify_errors)
        skipped = []
        for method, heat in heats:
            if tuple(np.shape(heat.data)) != shape:  # not from one comparison: left out, and said so
                skipped.append(f"{method}: another grid")
                continue
            table = self.table_for(heat, np.asarray(full_map(heat.data, heat.metadata)), *checked)
            if isinstance(table, str):
                skipped.append(f"{method}: {table}")
            else:
                self.tables[method] = table
        if not self.tables:
            return self._nothing("No map to compare: " + "; ".join(skipped), notify_errors)
        result = landmark_comparison(self.tables)
        self._headers([(result.label_text(mark), c) for mark, c in zip(result.labels, result.chance, strict=True)])
        cells = [[self.short.get(r.name, r.name), *("—" if e is None else f"{100 * e:.1f} %" for e in r.energy),
                  result.label_text(r.peak_in), f"{r.distance_mm:.1f}"] for r in result.rows]
        summary = (f"Share of each method's positive energy in each landmark of '{lab.name}' (a map spread evenly "
                   "would give the chance share in the header).")
        if skipped:
            summary += " Left out: " + "; ".join(skipped) + "."
        self._show(result, cells, summary)
        for i, r in enumerate(result.rows):
            item = self.table.item(i, 0)
            if item is not None:
                item.setToolTip(r.name)
        return result

    def _nothing(self, message: str, notify_errors: bool = False) -> LandmarkComparison | None:
        """No table: ``message`` says why (notified once when ``notify_errors`` and it is an error)."""
        self.tables = {}
        self._headers([])
        self._show(None, [], message, notify_errors)
        return None

    def _headers(self, marks: list[tuple[str, float]]) -> None:
        """``method | one column per landmark (name, chance share) | peak in | peak dist. mm``."""
        head = [self.HEADERS[0], *(f"{text}\nchance {_percent(chance)}" for text, chance in marks),
                *self.HEADERS[1:]]
        tips = ["the compared method",
                *(f"share of the method's positive energy inside landmark {text}; a map spread evenly gives "
                  f"{_percent(chance)} (the landmark's share of the volume)" for text, chance in marks),
                *self.TAIL_TIPS]
        self._set_headers(tuple(head), tuple(tips))
