"""Small Qt pieces shared by the docks: layer pickers that follow the viewer, one notification per outcome,
the worker runner (progress relayed through a Qt signal, cooperative cancel), and placing layer data tuples so
that a re-run replaces the plugin's own layer and never a user's layer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Layer
from napari.qt.threading import create_worker
from napari.utils import notifications
from qtpy.QtCore import QObject
from qtpy.QtWidgets import QComboBox, QVBoxLayout, QWidget
from superqt.utils import ensure_main_thread

from ..layers import FULL_MAP_KEY, OWNER_KEY, contrast_limits, full_map

if TYPE_CHECKING:
    import napari

__all__ = ["LayerCombo", "Runner", "column", "find_own", "is_own", "notify", "place_layer", "source_geometry"]


def column(*widgets: QWidget) -> QWidget:
    """The widgets stacked vertically in one widget without margins (a dock section made of several boxes)."""
    both = QWidget()
    col = QVBoxLayout(both)
    col.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        col.addWidget(w)
    return both


def notify(level: str, message: str) -> None:
    """One napari notification (no traceback): ``level`` is "info", "warning" or "error"."""
    {"info": notifications.show_info, "warning": notifications.show_warning,
     "error": notifications.show_error}[level](message)


def is_own(layer: Layer, role: str | None = None) -> bool:
    """True for layers this plugin made (optionally of one ``role``: heatmap, prediction, underlay)."""
    info = layer.metadata.get(OWNER_KEY) if isinstance(layer.metadata, dict) else None
    return isinstance(info, dict) and (role is None or info.get("role") == role)


def find_own(viewer: napari.Viewer, key: str) -> Layer | None:
    for layer in viewer.layers:
        if is_own(layer) and layer.metadata[OWNER_KEY].get("key") == key:
            return layer
    return None


def source_geometry(layer: Layer) -> dict[str, Any]:
    """The transform of ``layer`` as plain lists (identity parts left out)."""
    n = layer.ndim
    out: dict[str, Any] = {"scale": np.asarray(layer.scale).tolist(), "translate": np.asarray(layer.translate).tolist()}
    rotate = np.asarray(layer.rotate)
    if not np.allclose(rotate, np.eye(n)):
        out["rotate"] = rotate.tolist()
    shear = np.asarray(layer.shear)
    if not np.allclose(shear, 0):
        out["shear"] = shear.tolist()
    affine = np.asarray(layer.affine.affine_matrix)
    if not np.allclose(affine, np.eye(n + 1)):
        out["affine"] = affine.tolist()
    return out


def place_layer(viewer: napari.Viewer, ldt: tuple[Any, dict[str, Any], str], *,
                merge_slices: Sequence[int] | None = None) -> Layer:
    """Add a layer data tuple, replacing the plugin's own layer made with the same name (same position in the
    layer list); a user's layer of that name is left alone (napari gives the new one a suffix).

    ``merge_slices``: the new data holds only these slices (a 2D model following the slider); the other slices of
    the replaced layer are kept.
    """
    data, kwargs, kind = ldt
    kwargs = dict(kwargs)
    md = dict(kwargs.get("metadata") or {})
    info = dict(md.get(OWNER_KEY) or {})
    key = info.get("key") or kwargs["name"]
    info["key"] = key
    old = find_own(viewer, key)
    if old is not None and merge_slices is not None and np.shape(old.data) == np.shape(data):
        keep = np.asarray(old.data).copy()
        idx = [int(s) for s in merge_slices]
        old_full, new_full = full_map(old.data, old.metadata), full_map(data, md)
        keep[idx] = np.asarray(data)[idx]
        if old_full is not old.data or new_full is not data:  # a layer hidden outside the body: its full map too
            full = np.array(old_full, copy=True)
            full[idx] = np.asarray(new_full)[idx]
            md[FULL_MAP_KEY] = full
        data = keep
        old_slices = old.metadata.get(OWNER_KEY, {}).get("slices") or []
        info["slices"] = sorted(set(old_slices) | set(idx))
        if kind == "image":
            kwargs["contrast_limits"] = list(contrast_limits(data, bool(info.get("signed")),
                                                             info.get("contrast_percentile", 99.5), nice=True))
            info["explained_fraction"] = float(np.isfinite(data).mean())
    md[OWNER_KEY] = info
    kwargs["metadata"] = md
    layer = Layer.create(data, kwargs, kind)
    if old is not None:
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
        viewer.layers.insert(index, layer)
    else:
        viewer.add_layer(layer)
    return layer


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers of some types; follows additions, removals and renames."""

    def __init__(self, viewer: napari.Viewer, kinds: tuple[type, ...], *, optional: str | None = None,
                 exclude: Callable[[Layer], bool] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # long layer names ("grad_cam · predicted vessel · vessel phantom (MRA)") must not widen the dock
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self._viewer = viewer
        self._kinds = kinds
        self._optional = optional
        self._exclude = exclude
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self.refresh)
        self.refresh()

    def layers(self) -> list[Layer]:
        return [la for la in self._viewer.layers
                if isinstance(la, self._kinds) and not (self._exclude and self._exclude(la))]

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        names = ([self._optional] if self._optional else []) + [la.name for la in reversed(self.layers())]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Layer | None:
        name = self.currentText()
        if not name or name == self._optional or name not in self._viewer.layers:
            return None
        return self._viewer.layers[name]

    def select(self, layer: Layer) -> None:
        if self.findText(layer.name) >= 0:
            self.setCurrentText(layer.name)


class Runner(QObject):
    """Runs one job at a time in a napari worker thread.

    The job gets ``progress`` (relayed to the GUI thread through a queued call, at most ~20 per second) and
    ``cancel`` (True once :meth:`cancel` was called; the core polls it between chunks and raises Cancelled).
    """

    def __init__(self, on_progress: Callable[[int, int, str], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._on_progress = on_progress
        self._cancel = threading.Event()
        self._shutdown = threading.Event()  # set when the widget goes away: a running job stops at the next poll
        self._last = 0.0
        self.worker: Any = None
        shutdown = self._shutdown
        self.destroyed.connect(lambda *_: shutdown.set())

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _progress(self, done: int, total: int, message: str) -> None:
        now = time.perf_counter()
        if done >= total or now - self._last > 0.05:
            self._last = now
            self._relay(int(done), int(total), str(message))

    @ensure_main_thread
    def _relay(self, done: int, total: int, message: str) -> None:  # runs on the GUI thread
        if not self._shutdown.is_set():
            self._on_progress(done, total, message)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def start(self, fn: Callable[..., Any], *args: Any, returned: Callable[[Any], None],
              errored: Callable[[BaseException], None], with_progress: bool = True) -> None:
        if self.worker is not None:
            raise RuntimeError("a job is already running")
        self._cancel = cancel_event = threading.Event()
        shutdown = self._shutdown

        def cancelled() -> bool:
            return cancel_event.is_set() or shutdown.is_set()

        kwargs = {"progress": self._progress, "cancel": cancelled} if with_progress else {}

        token = object()
        self._token = token

        def mine() -> bool:  # signals of an earlier worker may arrive after a new one started, or after close
            return not shutdown.is_set() and self._token is token

        def done(*_: Any) -> None:
            if mine():
                self.worker = None

        def on_returned(value: Any) -> None:
            if mine():
                self.worker = None
                returned(value)

        def on_errored(err: BaseException) -> None:
            if mine():
                self.worker = None
                errored(err)

        self.worker = create_worker(fn, *args, **kwargs,
                                    _connect={"returned": on_returned, "errored": on_errored, "finished": done})
