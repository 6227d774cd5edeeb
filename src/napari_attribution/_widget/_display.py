"""How the docks show a heatmap: hidden outside the patient (by default for perturbation methods), the scan's
interpolation, and display limits from the map's values inside the body or the prediction — with "Adjust limits"
to recompute them for the heatmaps the dock points at (the selected one in the Explain dock, the comparison's in
the Compare dock). Changing "outside the body" shows those heatmaps again with the new choice.

Only the layer changes: the Attribution's map stays raw, and a hidden layer keeps a reference to it
(:func:`napari_attribution.layers.full_map`) for the landmark tables and the writer. The body mask is found in a
napari worker thread (0.8 s for 200 x 512 x 512 on one core), once per scan array (the last few are kept): a
heatmap waiting for it is shown in full and hidden when the worker is done; :attr:`DisplayBox.busy` says whether
one is still at work."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy import QtCore
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QPushButton, QWidget

from .. import layers as L
from ._common import is_own, notify
from ._sweep import sweep_index

if TYPE_CHECKING:
    import napari

__all__ = ["CACHED_BODIES", "DisplayBox", "find_body"]

#: (label, key) of the "outside the body" choice
OUTSIDE = (
    ("hidden for perturbation methods", "auto"),
    ("hidden for every method", "all"),
    ("shown", "none"),
)

#: (label, key) of where the display limits come from
REGIONS = (
    ("prediction, else body", "auto"),
    ("body", "body"),
    ("prediction", "prediction"),
    ("whole map", "whole"),
)

#: body masks kept, one per scan array (and map shape): switching between a few scans finds them again
CACHED_BODIES = 3

_Key = tuple[int, tuple[int, ...], str]


def _spatial(scan: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """The scan's grey values on the map's grid (the first channel of a multi-channel scan); None if they differ."""
    arr = scan
    while np.ndim(arr) > len(shape):
        arr = arr[0]
    return np.asarray(arr) if np.shape(arr) == tuple(shape) else None


def find_body(scan: Any, shape: tuple[int, ...], modality: str) -> tuple[np.ndarray, str] | None:
    """The body mask of the scan array ``scan`` on a map of ``shape`` (:func:`napari_attribution.layers.body_mask`),
    or None when the scan is on another grid. What the worker runs (no Qt)."""
    grey = _spatial(scan, tuple(shape))
    return None if grey is None else L.body_mask(grey, modality=modality or None)


def _reference(data: Any) -> Callable[[], Any]:
    """A weak reference to a scan array (a strong one for objects that take none): a cached mask belongs to the
    array it was found in, never to a later array that got the same ``id``."""
    try:
        return weakref.ref(data)
    except TypeError:
        return lambda: data


class _Relay(QObject):
    """Carries a plain thread's result to the GUI thread: made on the GUI thread, its signal emitted from another
    thread is queued and its slot runs on the GUI thread."""

    done = QtCore.Signal(object)  # type: ignore[attr-defined]  # qtpy does not re-export it for mypy


def _off_gui_thread(fn: Callable[[], Any], returned: Callable[[Any], None], errored: Callable[[BaseException], None],
                    keep: set[Any]) -> None:
    """Run ``fn`` in a plain thread and hand its result (or exception) to ``returned`` (``errored``) on the GUI
    thread. Not napari's ``create_worker``: a superqt worker points the process-wide ``warnings.showwarning`` at
    itself while it runs, so one running beside an Explain job took the job's warnings (its incomplete-map warning
    went missing) and, ending after it, could leave ``showwarning`` pointing at the finished job's list. ``keep``
    holds the relay until its result is delivered."""
    relay = _Relay()
    keep.add(relay)

    def deliver(out: tuple[bool, Any]) -> None:
        keep.discard(relay)
        (errored if out[0] else returned)(out[1])

    relay.done.connect(deliver)

    def work() -> None:
        try:
            out: tuple[bool, Any] = (False, fn())
        except BaseException as err:  # noqa: BLE001 - handed to the GUI thread, which tells the user
            out = (True, err)
        relay.done.emit(out)

    threading.Thread(target=work, name="napari-attribution body mask", daemon=True).start()


class DisplayBox(QWidget):
    """The display choices of the heatmaps and the "Adjust limits" button.

    ``targets`` gives the heatmap layers that "Adjust limits" and a change of "outside the body" apply to (default:
    the selected heatmap); ``on_done`` is called when a body-mask worker is done (the dock updates its buttons),
    ``on_changed`` when a heatmap was shown again or its limits adjusted (the dock's colour-bar line)."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.outside = QComboBox()
        self.outside.setMinimumContentsLength(12)
        for text, key in OUTSIDE:
            self.outside.addItem(text, key)
        self.outside.setToolTip("Outside the patient (the body of a CT above -500 HU, else the scan's foreground) "
                                "the heatmap layer is clear. Perturbation methods fill air with air, so their "
                                "'evidence' outside the body is an artefact. The map itself is not changed: the "
                                "landmark table and File > Save use every value.")
        self.region = QComboBox()
        for text, key in REGIONS:
            self.region.addItem(text, key)
        self.region.setToolTip("Where the colour bar's limits come from: the 99.5th percentile of |map| inside the "
                               "prediction (a segmentation, grown by 3 voxels), inside the body, or over the whole "
                               "map. Inside, a hot spot outside the patient (e.g. the skull base) does not set them")
        self.adjust_button = QPushButton("Adjust limits")
        self.adjust_button.setToolTip("Recompute the selected heatmap's colour limits from the region chosen")
        self.adjust_button.clicked.connect(lambda: self.adjust())
        row = QWidget()
        rlay = QHBoxLayout(row)
        rlay.setContentsMargins(0, 0, 0, 0)
        rlay.addWidget(self.region, 1)
        rlay.addWidget(self.adjust_button)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("outside the body", self.outside)
        form.addRow("limits from", row)
        self.targets: Callable[[], list[Any]] = self.selected_heatmaps
        self.hint = "Select a heatmap layer, then Adjust limits."
        self.on_done: Callable[[], None] | None = None
        self.on_changed: Callable[[], None] | None = None
        self._bodies: OrderedDict[_Key, tuple[Callable[[], Any], tuple[np.ndarray, str] | None]] = OrderedDict()
        self._pending: dict[_Key, list[Callable[[], None]]] = {}  # scans being scanned -> what waits for them
        self._waiting: set[str] = set()  # heatmap layers (keys) placed in full until their scan's body is found
        self._relays: set[Any] = set()  # body-mask threads' relays until their results are delivered
        closed = self._closed = [False]  # set when the widget goes away: a late worker result touches nothing
        self.destroyed.connect(lambda *_: closed.__setitem__(0, True))
        self.outside.currentIndexChanged.connect(lambda *_: self.reshow())
        viewer.layers.events.inserted.connect(self._on_inserted)

    # ------------------------------------------------------------------ the body mask, off the GUI thread
    @property
    def busy(self) -> bool:
        """A worker is finding a body mask (the heatmaps waiting for it are hidden when it is done)."""
        return bool(self._pending)

    @staticmethod
    def _scan_key(scan_layer: Any, shape: tuple[int, ...]) -> tuple[_Key, Any, str] | None:
        if scan_layer is None:
            return None
        data = scan_layer.data[0] if getattr(scan_layer, "multiscale", False) else scan_layer.data
        modality = str(scan_layer.metadata.get("modality") or "")
        return (id(data), tuple(int(s) for s in shape), modality), data, modality

    def known_body(self, scan_layer: Any, shape: tuple[int, ...]) -> tuple[bool, tuple[np.ndarray, str] | None]:
        """``(True, body)`` when the body mask of ``scan_layer`` on a map of ``shape`` is known (body None: no scan
        layer, or one on another grid), ``(False, None)`` while it is not (see :meth:`with_body`)."""
        found = self._scan_key(scan_layer, shape)
        if found is None:
            return True, None
        key, data, _ = found
        entry = self._bodies.get(key)
        if entry is None or entry[0]() is not data:
            return False, None
        self._bodies.move_to_end(key)
        return True, entry[1]

    def with_body(self, scan_layer: Any, shape: tuple[int, ...], then: Callable[[], None] | None = None) -> bool:
        """Make sure the body mask of ``scan_layer`` on a map of ``shape`` is known: True when it is; else a worker
        finds it (one per scan array, however often it is asked for), ``then()`` is called on the GUI thread when
        it is done, and False is returned at once."""
        ready, _ = self.known_body(scan_layer, shape)
        if ready:
            if then is not None:
                then()
            return True
        found = self._scan_key(scan_layer, shape)
        assert found is not None
        key, data, modality = found
        waiting = self._pending.get(key)
        if waiting is None:
            self._pending[key] = waiting = []
            self._start(key, data, modality)
        if then is not None:
            waiting.append(then)
        return False

    def _start(self, key: _Key, data: Any, modality: str) -> None:
        closed, ref = self._closed, _reference(data)

        def returned(body: tuple[np.ndarray, str] | None) -> None:
            if not closed[0]:
                self._found(key, ref, body)

        def errored(err: BaseException) -> None:
            if not closed[0]:
                notify("warning", f"The body could not be found in the scan ({type(err).__name__}: {err}); the "
                                  "heatmaps are shown everywhere.")
                self._found(key, ref, None)

        _off_gui_thread(lambda: find_body(data, key[1], modality), returned, errored, self._relays)

    def _found(self, key: _Key, ref: Callable[[], Any], body: tuple[np.ndarray, str] | None) -> None:
        for gone in [k for k, (r, _) in self._bodies.items() if r() is None]:  # scans no longer held anywhere
            del self._bodies[gone]
        self._bodies[key] = (ref, body)
        self._bodies.move_to_end(key)
        while len(self._bodies) > CACHED_BODIES:
            self._bodies.popitem(last=False)
        try:
            for then in self._pending.get(key, []):
                then()
            for layer in self._own_heatmaps():
                if str(_layer_key(layer)) in self._waiting:
                    self._waiting.discard(str(_layer_key(layer)))
                    self.show_heatmap(layer)
        finally:
            self._pending.pop(key, None)
            if self.on_done is not None:
                self.on_done()

    def _on_inserted(self, event: Any) -> None:
        """A heatmap placed while its scan's body was being found: show it as chosen once it is known."""
        layer = event.value
        if is_own(layer, "heatmap") and str(_layer_key(layer)) in self._waiting:
            name = layer.name
            QTimer.singleShot(0, lambda: self._show_named(name))  # after napari has finished adding it

    def _show_named(self, name: str) -> None:
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is not None and is_own(layer, "heatmap"):
            self._waiting.discard(str(_layer_key(layer)))
            self.show_heatmap(layer)

    # ------------------------------------------------------------------ regions
    def limits_region(self, key: str, body: tuple[np.ndarray, str] | None,
                      prediction: Any) -> tuple[np.ndarray | None, str]:
        """The region ``key`` ("auto", "body", "prediction", "whole") and its description."""
        pred = L.prediction_region(prediction) if prediction is not None and key in ("auto", "prediction") else None
        if pred is not None:
            return pred, "inside the prediction (grown by 3 voxels)"
        if key in ("auto", "body", "prediction") and body is not None:
            return body[0], "inside " + body[1]
        return None, "the whole map"

    def _hides(self, info: dict[str, Any]) -> bool:
        how = self.outside.currentData()
        return bool(how == "all" or (how == "auto" and L.masks_by_default(str(info.get("method")))))

    def _needs_body(self, info: dict[str, Any], prediction: Any, *, hiding: bool = True) -> bool:
        """Whether showing a heatmap (``hiding``: with its mask) needs the body: it is hidden outside it, or its
        limits come from it (no usable prediction)."""
        key = self.region.currentData()
        if hiding and self._hides(info):
            return True
        if key == "whole":
            return False
        return not (key in ("auto", "prediction") and prediction is not None
                    and L.prediction_region(prediction) is not None)

    # ------------------------------------------------------------------ after a run
    def prepare(self, ldt: L.LayerDataTuple, scan_layer: Any, prediction: Any = None) -> L.LayerDataTuple:
        """A heatmap tuple of a run as it should be shown over ``scan_layer``; ``prediction`` is the run's label
        map (segmentation) or None. When the scan's body is still being found, the heatmap is shown in full (limits
        from the prediction or the whole map) and shown as chosen when the worker is done."""
        data, kwargs, _ = ldt
        info = dict((kwargs.get("metadata") or {}).get(L.OWNER_KEY) or {})
        shape = tuple(np.shape(data))[1:] if info.get("sweep") else tuple(np.shape(data))
        ready, body = self.known_body(scan_layer, shape)
        if not ready and self._needs_body(info, prediction):
            self._waiting.add(str(info.get("key") or kwargs.get("name")))
            self.with_body(scan_layer, shape)
        hide = self._hides(info)
        region, note = self.limits_region(self.region.currentData(), body, prediction)
        interp = None
        if scan_layer is not None:
            interp = {k: str(getattr(scan_layer, k)) for k in L.NAPARI_INTERPOLATION if hasattr(scan_layer, k)}
        return L.display_heatmap(ldt, mask=body[0] if hide and body is not None else None,
                                 mask_note=body[1] if body is not None else "", limits_region=region,
                                 limits_note=note, interpolation=interp)

    # ------------------------------------------------------------------ the heatmaps of the dock
    def selected_heatmaps(self) -> list[Any]:
        """The selected layer when it is a heatmap (the default ``targets``)."""
        layer = self.viewer.layers.selection.active
        return [layer] if layer is not None and is_own(layer, "heatmap") else []

    def _own_heatmaps(self) -> list[Any]:
        return [la for la in self.viewer.layers if is_own(la, "heatmap")]

    def _context(self, layer: Any) -> tuple[Any, tuple[int, ...], Any]:
        """The scan layer a heatmap lies on (None when gone), its map's spatial shape and the run's prediction."""
        info = dict(layer.metadata.get(L.OWNER_KEY) or {})
        source = str(info.get("source"))
        scan = self.viewer.layers[source] if source in self.viewer.layers else None
        shape = tuple(np.shape(layer.data))
        shape = shape[1:] if info.get("sweep") else shape
        preds = [la for la in self.viewer.layers if is_own(la, "prediction")
                 and (la.metadata.get(L.OWNER_KEY) or {}).get("source") == source and np.shape(la.data) == shape]
        return scan, shape, preds[-1].data if preds else None

    def _again(self, layer: Any, action: Callable[[Any], Any]) -> Callable[[], None]:
        """``action`` on the layer of ``layer``'s name, if the viewer still has it (for after a worker)."""
        name = layer.name

        def later() -> None:
            current = self.viewer.layers[name] if name in self.viewer.layers else None
            if current is not None and is_own(current, "heatmap"):
                action(current)

        return later

    def reshow(self) -> int:
        """Show the ``targets`` again with the "outside the body" choice (hidden or not; limits from the region
        chosen); the number of heatmaps shown or waiting for their scan's body."""
        layers = self.targets()
        for layer in layers:
            self.show_heatmap(layer)
        return len(layers)

    def show_heatmap(self, layer: Any) -> bool:
        """Show the heatmap ``layer`` as chosen: its full map (:func:`~napari_attribution.layers.full_map`), hidden
        outside the body or not, limits from the region chosen. False when its scan's body is still being found
        (a worker): it is shown when the worker is done."""
        info = dict(layer.metadata.get(L.OWNER_KEY) or {})
        scan, shape, prediction = self._context(layer)
        ready, body = self.known_body(scan, shape)
        if not ready and self._needs_body(info, prediction):
            self.with_body(scan, shape, self._again(layer, self.show_heatmap))
            return False
        hide = self._hides(info)
        region, note = self.limits_region(self.region.currentData(), body, prediction)
        ldt = (layer.data, {"metadata": dict(layer.metadata)}, "image")
        data, kwargs, _ = L.display_heatmap(ldt, mask=body[0] if hide and body is not None else None,
                                            mask_note=body[1] if body is not None else "", limits_region=region,
                                            limits_note=note)
        new = kwargs["contrast_limits"]
        new_info = kwargs["metadata"][L.OWNER_KEY]
        if new_info.get("sweep"):
            limits = new_info["layer_contrast_limits"]
            new = limits[min(max(sweep_index(self.viewer, layer), 0), len(limits) - 1)]
        layer.metadata = kwargs["metadata"]
        if data is not layer.data:
            layer.data = data
        layer.contrast_limits = new
        self._changed()
        return True

    def _changed(self) -> None:
        if self.on_changed is not None:
            self.on_changed()

    # ------------------------------------------------------------------ the button
    def adjust(self, layer: Any = None) -> bool:
        """Recompute the limits of ``layer`` (default: the ``targets``, e.g. the selected heatmap) from the region
        chosen. False when there is no heatmap to adjust. A heatmap whose scan's body is still being found is
        adjusted when the worker is done."""
        layers = [layer] if layer is not None else self.targets()
        layers = [la for la in layers if is_own(la, "heatmap")]
        if not layers:
            notify("info", self.hint)
            return False
        for la in layers:
            self._adjust(la)
        self._changed()
        return True

    def _adjust(self, layer: Any) -> None:
        info = dict(layer.metadata.get(L.OWNER_KEY) or {})
        scan, shape, prediction = self._context(layer)
        ready, body = self.known_body(scan, shape)
        if not ready and self._needs_body(info, prediction, hiding=False):
            self.with_body(scan, shape, self._again(layer, self.adjust))
            return
        sweep = bool(info.get("sweep"))
        data = np.asarray(layer.data)
        region, note = self.limits_region(self.region.currentData(), body, prediction)
        signed, pct = bool(info.get("signed")), float(info.get("contrast_percentile", 99.5))
        if sweep:
            limits = [list(L.region_limits(data[i], signed, pct, region)) for i in range(data.shape[0])]
            info["layer_contrast_limits"] = limits
            new = limits[min(max(sweep_index(self.viewer, layer), 0), len(limits) - 1)]
        else:
            new = list(L.region_limits(data, signed, pct, region))
        info["contrast_region"] = note
        layer.metadata = {**layer.metadata, L.OWNER_KEY: info}
        layer.contrast_limits = new


def _layer_key(layer: Any) -> Any:
    """The key :func:`~napari_attribution._widget._common.place_layer` gave a heatmap layer (its first name)."""
    return (layer.metadata.get(L.OWNER_KEY) or {}).get("key") or layer.name
