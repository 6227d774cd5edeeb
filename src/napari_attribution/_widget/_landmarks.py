"""Compare a heatmap with anatomical landmarks painted as a Labels layer (one label value per landmark): a table
per landmark (voxels, volume in mm³, share of the map's positive energy, whether the map's peak lies in it, the
distance from the peak in mm), computed by :func:`napari_attribution.metrics.landmark_table` on the GUI thread
(a few tens of milliseconds for a 128³ volume), and copied to the clipboard as CSV."""

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

from ..layers import OWNER_KEY
from ..metrics import LandmarkTable, landmark_table
from ._common import LayerCombo, is_own, notify
from ._sweep import is_sweep, sweep_index

if TYPE_CHECKING:
    import napari

__all__ = ["LandmarkBox", "voxel_spacing"]


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


def _heatmap_role(layer: Layer) -> bool:
    return isinstance(layer, Image) and is_own(layer, "heatmap")


class LandmarkBox(QGroupBox):
    """"Compare with landmarks": pick a heatmap and a Labels layer of landmarks; the table follows both (and the
    painting, and for a layer sweep the network layer shown). Shown while the viewer holds a heatmap."""

    # the comparisons first: a narrow dock shows them without scrolling
    HEADERS = ("landmark", "energy", "chance", "peak in", "dist. mm", "voxels", "mm³")
    TIPS = ("label value (and name, from the layer's metadata['label_names'])",
            "share of the map's positive energy inside the landmark",
            "the share a map spread evenly would give (the landmark's share of the volume)",
            "the map's maximum lies in the landmark (pointing game)",
            "distance from the map's maximum to the nearest voxel of the landmark, in mm (0 inside)",
            "voxels with this label", "volume in mm³ (from the heatmap's voxel size)")

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__("Compare with landmarks", parent)
        self.viewer = viewer
        self.result: LandmarkTable | None = None
        self.message = ""
        self._notified = ""
        self.heatmap = LayerCombo(viewer, (Image,), exclude=lambda la: not is_own(la, "heatmap"))
        self.heatmap.setToolTip("The heatmap to compare (follows the selected heatmap layer)")
        self.labels = LayerCombo(viewer, (Labels,))
        self.labels.setToolTip("A Labels layer painted over the scan, one label value per landmark")
        self.table = QTableWidget(0, len(self.HEADERS))
        self.table.setHorizontalHeaderLabels(list(self.HEADERS))
        for c, tip in enumerate(self.TIPS):
            item = self.table.horizontalHeaderItem(c)
            if item is not None:
                item.setToolTip(tip)
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
        form.addRow("heatmap", self.heatmap)
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
        self.heatmap.currentTextChanged.connect(self.schedule)
        self.labels.currentTextChanged.connect(self.schedule)
        self.heatmap.activated.connect(lambda *_: self.update_table(notify_errors=True))
        self.labels.activated.connect(lambda *_: self.update_table(notify_errors=True))
        self.update_button.clicked.connect(lambda: self.update_table(notify_errors=True))
        self.copy_button.clicked.connect(self.copy_csv)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.schedule)
        viewer.layers.selection.events.active.connect(self._follow_active)
        viewer.dims.events.current_step.connect(self._on_step)
        for layer in viewer.layers:
            self._watch(layer)
        self.update_table()

    # ------------------------------------------------------------------ following the viewer
    def _watch(self, layer: Layer) -> None:
        if isinstance(layer, Labels):  # painting, filling, erasing, a new array
            layer.events.paint.connect(self.schedule)
            layer.events.data.connect(self.schedule)

    def _on_inserted(self, event: Any) -> None:
        self._watch(event.value)
        self.schedule()

    def _follow_active(self, event: Any = None) -> None:
        layer = self.viewer.layers.selection.active
        if layer is not None and _heatmap_role(layer):
            self.heatmap.select(layer)

    def _on_step(self, event: Any = None) -> None:
        heat = self.heatmap.layer()
        if heat is not None and is_sweep(heat):
            self.schedule()

    def schedule(self, *_: Any) -> None:
        """Recompute shortly (several events in a row give one computation)."""
        self._timer.start()

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
        self.result = None
        if heat is None:
            self._show(None, "")
            return None
        if lab is None:
            self._show(None, "Paint landmarks in a Labels layer over the scan (one label value per landmark), then "
                             "pick it here.")
            return None
        data = np.asarray(heat.data)
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
        if labels.shape != tuple(spatial):
            self._show(None, (
                f"The Labels layer '{lab.name}' has shape {labels.shape}, but the heatmap has {tuple(spatial)}: paint "
                "the landmarks on the explained scan (select the scan, then Layer > New Labels Layer) or pick "
                "another Labels layer."), notify_errors)
            return None
        if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
            self._show(None, f"The Labels layer '{lab.name}' does not hold integer labels.", notify_errors)
            return None
        names = lab.metadata.get("label_names") if isinstance(lab.metadata, dict) else None
        try:
            table = landmark_table(data, labels, spacing=voxel_spacing(heat, len(spatial)),
                                   names=names if isinstance(names, dict) else None)
        except na.AttributionError as err:
            text = str(err)
            if "empty" in text:
                text = (f"The Labels layer '{lab.name}' has no landmark yet: paint each landmark with its own label "
                        "value (the label number in the layer controls).")
            self._show(None, text, notify_errors)
            return None
        self.result = table
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
        self._show(table, summary)
        return table

    @staticmethod
    def _label_text(row: Any) -> str:
        return f"{row.label} · {row.name}" if row.name else str(row.label)

    def _show(self, table: LandmarkTable | None, message: str, notify_errors: bool = False) -> None:
        self.message = message if table is None else ""
        self.copy_button.setEnabled(table is not None)
        rows = table.rows if table is not None else []
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            cells = [self._label_text(row), "—" if row.energy is None else f"{100 * row.energy:.1f} %",
                     f"{100 * row.volume_fraction:.2g} %", "yes" if row.peak_inside else "no",
                     f"{row.distance_mm:.1f}", str(row.voxels), _volume_text(row.volume_mm3)]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        bar = self.table.horizontalScrollBar()  # the columns may not fit a narrow dock: room for the scroll bar
        extra = bar.sizeHint().height() if bar is not None else 0
        self.table.setFixedHeight(min(240, 28 + extra + 22 * max(1, len(rows))))
        self.summary.setText(message)
        self.summary.setStyleSheet("color: #e08050;" if table is None and self._is_error(message) else "")
        if table is None and notify_errors and self._is_error(message) and message != self._notified:
            self._notified = message
            notify("warning", message)
        if table is not None:
            self._notified = ""

    @staticmethod
    def _is_error(message: str) -> bool:
        return bool(message) and not message.startswith("Paint landmarks")

    def copy_csv(self) -> str:
        """Copy the table to the clipboard as CSV (returns the text)."""
        if self.result is None:
            return ""
        text = self.result.csv()
        clipboard = QApplication.clipboard()
        if clipboard is not None:
            clipboard.setText(text)
        self.summary.setText(self.summary.text().split(" Copied")[0] + f" Copied {len(self.result.rows)} rows as CSV.")
        return text
