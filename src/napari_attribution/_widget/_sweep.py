"""The layer sweep of the Explain dock: which network layers a layer method runs at (a checkable list, shallow to
deep) and, after the run, a small table with one row per layer. The heatmap is one image layer with a leading
"layer" axis (:func:`napari_attribution.layers.layer_sweep_layer`); :func:`sync_sweep_contrast` gives it the
contrast limits of the network layer the slider shows."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..layers import OWNER_KEY

__all__ = ["LayerSweepBox", "SweepTable", "sweep_index", "sync_sweep_contrast"]


class LayerSweepBox(QWidget):
    """"sweep layers": a checkbox and, when it is ticked, the model's spatial layers (shallow to deep) to tick."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.enabled = QCheckBox("sweep layers (one map per network layer)")
        self.enabled.setToolTip("Run the method at each ticked layer with the same target; the maps go into one "
                                "layer whose slider moves through the network")
        self.list = QListWidget()
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.list.setMaximumHeight(150)
        self.all_button = QPushButton("all spatial layers")
        self.none_button = QPushButton("none")
        self.panel = QWidget()
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.all_button)
        buttons.addWidget(self.none_button)
        panel = QVBoxLayout(self.panel)
        panel.setContentsMargins(0, 0, 0, 0)
        panel.addWidget(self.list)
        panel.addLayout(buttons)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.enabled)
        lay.addWidget(self.panel)
        self.panel.setVisible(False)
        self.enabled.toggled.connect(self.panel.setVisible)
        self.all_button.clicked.connect(lambda: self.set_checked(self.names()))
        self.none_button.clicked.connect(lambda: self.set_checked([]))

    def set_layers(self, names: Sequence[str], channels: dict[str, int] | None = None,
                   checked: Sequence[str] | None = None) -> None:
        """The model's spatial layers in forward order (shallow to deep); ``checked`` ticked (default: all)."""
        on = set(names if checked is None else checked)
        self.list.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setData(Qt.ItemDataRole.UserRole, name)
            if channels and name in channels:
                item.setToolTip(f"{name}: {channels[name]} channels")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in on else Qt.CheckState.Unchecked)
            self.list.addItem(item)

    def _items(self) -> list[QListWidgetItem]:
        items = (self.list.item(i) for i in range(self.list.count()))
        return [item for item in items if item is not None]

    def names(self) -> list[str]:
        return [str(item.data(Qt.ItemDataRole.UserRole)) for item in self._items()]

    def set_checked(self, names: Sequence[str]) -> None:
        wanted = set(names)
        for item in self._items():
            on = item.data(Qt.ItemDataRole.UserRole) in wanted
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def layers(self) -> list[str]:
        """The ticked layers, shallow to deep."""
        return [str(item.data(Qt.ItemDataRole.UserRole)) for item in self._items()
                if item.checkState() == Qt.CheckState.Checked]

    @property
    def active(self) -> bool:
        """The sweep is on (ticked, and offered for the current method)."""
        return self.enabled.isChecked() and not self.isHidden()


class SweepTable(QTableWidget):
    """One row per network layer of the last sweep: layer, seconds, energy in the target region (segmentation
    targets with a region) and the map's peak. Clicking a row moves the viewer's slider to that layer
    (``on_row``)."""

    HEADERS = ("layer", "s", "in target", "peak")
    TIPS = ("network layer, shallow to deep (click: show it)", "seconds to compute",
            "share of the map's positive energy inside the target region (segmentation targets with a region)",
            "the map's maximum")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(self.HEADERS), parent)
        self.setHorizontalHeaderLabels(list(self.HEADERS))
        for c, tip in enumerate(self.TIPS):
            header = self.horizontalHeaderItem(c)
            if header is not None:
                header.setToolTip(tip)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        vertical, horizontal = self.verticalHeader(), self.horizontalHeader()
        if vertical is not None:
            vertical.setVisible(False)
            vertical.setDefaultSectionSize(22)
        if horizontal is not None:
            horizontal.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
            for c in range(1, len(self.HEADERS)):
                horizontal.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.on_row: Callable[[int], None] | None = None
        self.cellClicked.connect(lambda row, _col: self.on_row(row) if self.on_row is not None else None)
        self.setVisible(False)

    def show_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        has_energy = any(r.get("energy") is not None for r in rows)
        self.setRowCount(len(rows))
        for r, row in enumerate(rows):
            energy = row.get("energy")
            peak = row.get("peak", float("nan"))
            cells = [str(row["layer"]), f"{row['seconds']:.2f}",
                     "—" if energy is None else f"{100 * energy:.1f} %",
                     "—" if peak is None or not math.isfinite(peak) else f"{peak:.3g}"]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.setItem(r, c, item)
        self.setColumnHidden(2, not has_energy)
        self.setFixedHeight(min(260, 28 + 22 * max(1, len(rows))))
        self.setVisible(True)

    def highlight(self, row: int) -> None:
        if 0 <= row < self.rowCount():
            self.blockSignals(True)
            self.selectRow(row)
            self.blockSignals(False)


def sweep_index(viewer: Any, layer: Any) -> int:
    """The network layer (index on the leading axis) the viewer shows of a sweep heatmap ``layer``."""
    n = int(np.shape(layer.data)[0])
    world = np.asarray(viewer.dims.point, dtype=float)[-layer.ndim:]
    idx = int(np.round(np.asarray(layer.world_to_data(world), dtype=float)[0]))
    return min(max(idx, 0), n - 1)


def is_sweep(layer: Any) -> bool:
    info = layer.metadata.get(OWNER_KEY) if isinstance(layer.metadata, dict) else None
    return isinstance(info, dict) and bool(info.get("sweep"))


def sync_sweep_contrast(viewer: Any, layer: Any) -> int:
    """Give a sweep heatmap the contrast limits of the network layer shown (the maps keep their raw values; the
    colour scale follows the slider). Returns that layer's index."""
    idx = sweep_index(viewer, layer)
    limits = layer.metadata[OWNER_KEY].get("layer_contrast_limits") or []
    if idx < len(limits):
        lo, hi = (float(v) for v in limits[idx])
        if tuple(layer.contrast_limits) != (lo, hi):
            layer.contrast_limits = (lo, hi)
    return idx
