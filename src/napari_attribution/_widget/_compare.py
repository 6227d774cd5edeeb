"""The Compare dock: several methods in one ``na.compare`` run (shared passes), side by side in napari's grid mode
with the scan under each heatmap (one canvas, so one camera for all), an agreement table (Spearman rank
correlation and top-k overlap of |map|), each method's runtime, and each method's map against landmarks painted
as a Labels layer (:class:`~napari_attribution._widget._landmarks.MethodLandmarkBox`). When a layer method (CAM
family) is ticked, a "layer" picker chooses the network layer they all look at (automatic by default). The display
rows (:class:`~napari_attribution._widget._display.DisplayBox`: outside the body, limits from, Adjust limits) apply
to all heatmaps of the last comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

import napari_attribution as na

from ..layers import OWNER_KEY
from ..runs.jobs import Outcome
from ..runs.model_info import RecentModels
from ._common import column
from ._dock import AttributionDock
from ._form import set_row_visible
from ._landmarks import MethodLandmarkBox
from ._layer_picker import NetworkLayerPicker

if TYPE_CHECKING:
    import napari

__all__ = ["CompareWidget"]


def short_name(name: str) -> str:
    """A method's name in the agreement and landmark tables' headers: its registry entry's ``short``."""
    try:
        return na.get_method(name).short or name[:8]
    except na.AttributionError:
        return name[:8]


class CompareWidget(AttributionDock):
    """Run several methods at once and look at them side by side."""

    RUN_TEXT = "Compare"

    def __init__(self, viewer: napari.viewer.Viewer, *, recent: RecentModels | None = None,
                 parent: QWidget | None = None) -> None:
        self._infos = {m.name: m for m in na.list_methods()}
        self._hidden: list[str] = []  # names of the layers hidden while the grid is shown
        super().__init__(viewer, recent=recent, parent=parent)
        self.side_by_side.toggled.connect(self._toggle_grid)

    # ------------------------------------------------------------------ sections
    def _method_section(self) -> QWidget:
        box = QGroupBox("Methods")
        self.method_list = QListWidget()
        self.method_list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        for name, info in self._infos.items():
            item = QListWidgetItem(f"{name}  ({info.passes})")
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setToolTip(info.label)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if info.compare_default else Qt.CheckState.Unchecked)
            self.method_list.addItem(item)
        self.method_list.setMaximumHeight(120)
        self.method_list.itemChanged.connect(self._update_layer_row)
        self.layer = NetworkLayerPicker()
        self.side_by_side = QCheckBox("side by side (grid, scan under each map)")
        self.side_by_side.setChecked(True)
        self._layer_form = QFormLayout()
        self._layer_form.setContentsMargins(0, 0, 0, 0)
        self._layer_form.addRow("layer", self.layer)
        lay = QVBoxLayout(box)
        lay.addWidget(self.method_list)
        lay.addLayout(self._layer_form)
        lay.addWidget(self.side_by_side)
        self._update_layer_row()
        return box

    def _result_section(self) -> QWidget:
        box = QGroupBox("Runtime and agreement")
        self.runtime_table = QTableWidget(0, 2)
        self.runtime_table.setHorizontalHeaderLabels(["method", "seconds"])
        self.table = QTableWidget(0, 0)  # methods x methods: upper Spearman, lower top-k overlap
        for t in (self.runtime_table, self.table):
            vertical, horizontal = t.verticalHeader(), t.horizontalHeader()
            if vertical is not None:
                vertical.setDefaultSectionSize(22)
            if horizontal is not None:
                horizontal.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
            t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
            t.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            t.setFixedHeight(48)
        vertical = self.runtime_table.verticalHeader()
        if vertical is not None:
            vertical.setVisible(False)
        self.table_note = QLabel("")
        self.table_note.setWordWrap(True)
        lay = QVBoxLayout(box)
        lay.addWidget(self.runtime_table)
        lay.addWidget(self.table)
        lay.addWidget(self.table_note)
        lay.addWidget(self.display)  # outside the body, limits from, Adjust limits: for every compared heatmap
        self.landmarks = MethodLandmarkBox(self.viewer, short={n: short_name(n) for n in self._infos})
        self.display.targets = lambda: [la for _, la in self.landmarks.heatmaps()]
        self.display.hint = "Press Compare first: Adjust limits recomputes the compared heatmaps' limits."
        self.display.adjust_button.setToolTip("Recompute the colour limits of every compared heatmap from the "
                                              "region chosen")
        return column(box, self.landmarks)

    # ------------------------------------------------------------------ methods
    def set_methods(self, names: list[str]) -> None:
        """Check exactly ``names`` (used by scripts and tests)."""
        unknown = set(names) - set(self._infos)
        if unknown:
            raise na.MethodError(f"Unknown methods: {sorted(unknown)}.")
        for item in self._items():
            on = item.data(Qt.ItemDataRole.UserRole) in names
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def _items(self) -> list[QListWidgetItem]:
        items = (self.method_list.item(i) for i in range(self.method_list.count()))
        return [item for item in items if item is not None]

    def methods(self) -> list[str]:
        out = []
        for item in self._items():
            if item.checkState() == Qt.CheckState.Checked and item.flags() & Qt.ItemFlag.ItemIsEnabled:
                out.append(item.data(Qt.ItemDataRole.UserRole))
        return out

    def _uses_layer(self) -> bool:
        """Whether a ticked method looks at a network layer (a layer method, or one that can)."""
        return any(self._infos[m].needs_layer or self._infos[m].layer_optional for m in self.methods())

    def _update_layer_row(self, *_: Any) -> None:
        set_row_visible(self._layer_form, self.layer, self._uses_layer())

    def set_layer(self, name: str | None) -> None:
        """The network layer for the layer methods (None: automatic; used by scripts and tests)."""
        self.layer.set_name(name)

    def layer_name(self) -> str | None:
        """The chosen network layer when a ticked method looks at one; None for automatic (each run's default)."""
        return self.layer.name() if self._uses_layer() else None

    def method_params(self) -> dict[str, dict[str, Any]]:
        # cheap settings for a side-by-side look (each registry entry's compare_params); the Explain dock tunes one
        return {m: dict(self._infos[m].compare_params) for m in self.methods()}

    def _model_changed(self) -> None:
        info = self.model_info
        assert info is not None
        self.method_list.blockSignals(True)  # one update of the layer row below, not one per item
        for item in self._items():
            ok = not info.is_script or self._infos[item.data(Qt.ItemDataRole.UserRole)].supports_torchscript
            flags = item.flags()
            item.setFlags(flags | Qt.ItemFlag.ItemIsEnabled if ok else flags & ~Qt.ItemFlag.ItemIsEnabled)
        self.method_list.blockSignals(False)
        self.layer.set_model(info)
        self._update_layer_row()

    # ------------------------------------------------------------------ results
    def show_outcome(self, outcome: Outcome, placed: list[Any]) -> None:
        self._heatmaps = [la for la in placed if self.owner(la).get("role") == "heatmap"]
        self.runtime_table.setRowCount(len(outcome.results))
        for r, (name, att) in enumerate(outcome.results.items()):
            item = QTableWidgetItem(name)
            if name in self._infos:
                item.setToolTip(f"cost: {self._infos[name].passes}")
            self.runtime_table.setItem(r, 0, item)
            self.runtime_table.setItem(r, 1, QTableWidgetItem(f"{att.seconds:.2f}"))
        agreement = outcome.agreement or {"methods": list(outcome.results), "spearman": [], "topk": [], "k": 0,
                                          "voxels": 0}
        names = agreement["methods"]
        short = [short_name(n) for n in names]
        n = len(names)
        self.table.setRowCount(n)
        self.table.setColumnCount(n)
        self.table.setHorizontalHeaderLabels(short)
        self.table.setVerticalHeaderLabels(short)
        for i in range(n):
            for j in range(n):
                if i == j or not agreement["spearman"]:
                    text, tip = "—", names[i]
                elif i < j:
                    text, tip = f"{agreement['spearman'][i][j]:.2f}", f"Spearman ρ, {names[i]} vs {names[j]}"
                else:
                    text, tip = f"{agreement['topk'][i][j]:.2f}", f"top-k overlap, {names[i]} vs {names[j]}"
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(i, j, item)
        for t in (self.runtime_table, self.table):
            t.setFixedHeight(min(220, 28 + 22 * max(1, t.rowCount())))
        if agreement["voxels"]:
            self.table_note.setText(
                f"Above the diagonal: Spearman rank correlation of |map|; below: overlap (IoU) of the top 5 % "
                f"voxels (k = {agreement['k']} of {agreement['voxels']}). 1 = same ranking / same voxels.")
        heat = list(self._heatmaps)
        self._steps.append(lambda: self.landmarks.set_heatmaps(heat))  # its own event-loop turn
        if self.side_by_side.isChecked():
            self._steps.append(self.show_grid)

    # ------------------------------------------------------------------ grid
    def show_grid(self) -> None:
        """Grid mode: one cell per method, the scan under each heatmap; other layers hidden until the grid is
        left. Cells share napari's one camera, so zoom and pan stay linked."""
        heat = [la for la in getattr(self, "_heatmaps", []) if la in self.viewer.layers]
        if not heat:
            return
        self._clear_underlays()
        source_name = self.owner(heat[0]).get("source")
        source = self.viewer.layers[source_name] if source_name in self.viewer.layers else None
        layers = self.viewer.layers
        for la in reversed(heat):  # the first method ends up top-left
            if isinstance(source, Image):
                under = Image(source.data, name=f"{source.name} · under {self.owner(la).get('method')}",
                              colormap=source.colormap, contrast_limits=source.contrast_limits,
                              scale=source.scale, translate=source.translate, rotate=source.rotate,
                              affine=source.affine, metadata={OWNER_KEY: {"role": "underlay"}},
                              multiscale=source.multiscale)
                layers.append(under)
            layers.move(layers.index(la), len(layers))
        # names, not identities: a plugin gets the viewer (and its layers) through a proxy
        keep = {la.name for la in heat} | {u.name for u in self.own_layers("underlay")}
        for la in layers:
            if la.name not in keep and la.visible:
                la.visible = False
                self._hidden.append(la.name)
        for la in heat:
            la.visible = True
            la.colorbar.visible = True
            la.name_overlay.visible = True  # which method each cell shows
            la.colorbar.position = "bottom_right"  # the name overlay is at the top
        grid = self.viewer.canvas.grid
        grid.stride = -2 if isinstance(source, Image) else -1
        grid.spacing = 0.03
        grid.enabled = True

    def hide_grid(self) -> None:
        self.viewer.canvas.grid.enabled = False
        self._clear_underlays()
        for name in self._hidden:
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = True
        self._hidden = []
        for la in self.own_layers("heatmap"):
            la.colorbar.visible = False
            la.colorbar.position = "top_right"
            la.name_overlay.visible = False

    def _clear_underlays(self) -> None:
        for la in self.own_layers("underlay"):
            self.viewer.layers.remove(la)

    def _toggle_grid(self, on: bool) -> None:
        if on:
            self.show_grid()
        else:
            self.hide_grid()
