"""How the docks show a heatmap: hidden outside the patient (by default for perturbation methods), the scan's
interpolation, and display limits from the map's values inside the body or the prediction — with "Adjust limits"
to recompute them for the selected heatmap. Only the layer changes; the Attribution's map stays raw."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QPushButton, QWidget

from .. import layers as L
from ._common import is_own, notify
from ._sweep import sweep_index

if TYPE_CHECKING:
    import napari

__all__ = ["DisplayBox"]

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


def _spatial(scan: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """The scan's grey values on the map's grid (the first channel of a multi-channel scan); None if they differ."""
    arr = scan
    while np.ndim(arr) > len(shape):
        arr = arr[0]
    return np.asarray(arr) if np.shape(arr) == tuple(shape) else None


class DisplayBox(QWidget):
    """The display choices of the heatmaps and the "Adjust limits" button."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.outside = QComboBox()
        self.outside.setMinimumContentsLength(12)
        for text, key in OUTSIDE:
            self.outside.addItem(text, key)
        self.outside.setToolTip("Outside the patient (the body of a CT above -500 HU, else the scan's foreground) "
                                "the heatmap layer is clear. Perturbation methods fill air with air there, so their "
                                "'evidence' outside the body is an artefact. The map itself is not changed.")
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
        self._bodies: dict[tuple[int, tuple[int, ...], str], tuple[np.ndarray, str]] = {}

    # ------------------------------------------------------------------ regions
    def body(self, scan_layer: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, str] | None:
        """The body mask of ``scan_layer`` on a map of ``shape`` (cached per scan array), or None."""
        if scan_layer is None:
            return None
        data = scan_layer.data[0] if getattr(scan_layer, "multiscale", False) else scan_layer.data
        modality = str(scan_layer.metadata.get("modality") or "")
        key = (id(data), tuple(shape), modality)
        if key not in self._bodies:
            grey = _spatial(data, tuple(shape))
            if grey is None:
                return None
            self._bodies = {key: L.body_mask(grey, modality=modality or None)}  # one scan at a time
        return self._bodies[key]

    def limits_region(self, key: str, body: tuple[np.ndarray, str] | None,
                      prediction: Any) -> tuple[np.ndarray | None, str]:
        """The region ``key`` ("auto", "body", "prediction", "whole") and its description."""
        pred = L.prediction_region(prediction) if prediction is not None and key in ("auto", "prediction") else None
        if pred is not None:
            return pred, "inside the prediction (grown by 3 voxels)"
        if key in ("auto", "body", "prediction") and body is not None:
            return body[0], "inside " + body[1]
        return None, "the whole map"

    # ------------------------------------------------------------------ after a run
    def prepare(self, ldt: L.LayerDataTuple, scan_layer: Any, prediction: Any = None) -> L.LayerDataTuple:
        """A heatmap tuple of a run as it should be shown over ``scan_layer``; ``prediction`` is the run's label
        map (segmentation) or None."""
        data, kwargs, _ = ldt
        info = dict((kwargs.get("metadata") or {}).get(L.OWNER_KEY) or {})
        shape = tuple(np.shape(data))[1:] if info.get("sweep") else tuple(np.shape(data))
        body = self.body(scan_layer, shape)
        how = self.outside.currentData()
        hide = how == "all" or (how == "auto" and L.masks_by_default(str(info.get("method"))))
        region, note = self.limits_region(self.region.currentData(), body, prediction)
        interp = None
        if scan_layer is not None:
            interp = {k: str(getattr(scan_layer, k)) for k in L.NAPARI_INTERPOLATION if hasattr(scan_layer, k)}
        return L.display_heatmap(ldt, mask=body[0] if hide and body is not None else None,
                                 mask_note=body[1] if body is not None else "", limits_region=region,
                                 limits_note=note, interpolation=interp)

    # ------------------------------------------------------------------ the button
    def adjust(self, layer: Any = None) -> bool:
        """Recompute the limits of ``layer`` (default: the selected heatmap) from the region chosen. False when
        there is no heatmap to adjust."""
        layer = layer if layer is not None else self.viewer.layers.selection.active
        if layer is None or not is_own(layer, "heatmap"):
            notify("info", "Select a heatmap layer, then Adjust limits.")
            return False
        info = dict(layer.metadata.get(L.OWNER_KEY) or {})
        source = str(info.get("source"))
        scan = self.viewer.layers[source] if source in self.viewer.layers else None
        sweep = bool(info.get("sweep"))
        data = np.asarray(layer.data)
        shape = data.shape[1:] if sweep else data.shape
        preds = [la for la in self.viewer.layers if is_own(la, "prediction")
                 and (la.metadata.get(L.OWNER_KEY) or {}).get("source") == source and np.shape(la.data) == shape]
        region, note = self.limits_region(self.region.currentData(), self.body(scan, shape),
                                          preds[-1].data if preds else None)
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
        return True
