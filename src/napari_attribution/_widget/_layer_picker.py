"""The network-layer picker for layer methods (CAM family): "(automatic: <layer>)" first, then the model's layers
with spatial output in forward order, each with its number of channels."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QWidget

import napari_attribution as na

from ..runs.model_info import ModelInfo

__all__ = ["AUTO_LAYER", "NetworkLayerPicker"]

AUTO_LAYER = "(automatic)"

TIP = ("The internal layer the layer methods (CAM family) look at. Automatic: for segmentation the deepest layer "
       "with more than one channel before the output head (never the output convolution, whose map would be the "
       "prediction itself); for classification the last layer with spatial output.")


class NetworkLayerPicker(QComboBox):
    """A drop-down of the loaded model's layers; :meth:`name` is None for the automatic choice (the pipeline then
    picks the same layer the first item names)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setToolTip(TIP)
        self.set_model(None)

    def set_model(self, info: ModelInfo | None) -> None:
        """Fill the list from ``info`` (its probed layers and default); None empties it."""
        self.clear()
        layers = info.layers if info is not None else []
        default = (info.default_layer or (layers[-1] if layers else "")) if info is not None else ""
        self.addItem(f"{AUTO_LAYER[:-1]}: {default})" if default else AUTO_LAYER, None)
        self.setItemData(0, TIP, 3)  # tooltip
        channels = info.layer_channels if info is not None else {}
        for name in layers:
            c = channels.get(name)
            self.addItem(f"{name}  ({c} ch)" if c else name, name)
            self.setItemData(self.count() - 1, f"{name}: {c} channels" if c else name, 3)

    def names(self) -> list[str]:
        """The layers listed (forward order), without the automatic item."""
        return [str(self.itemData(i)) for i in range(1, self.count())]

    def name(self) -> str | None:
        """The chosen layer's dotted name; None for the automatic choice."""
        data = self.currentData()
        return str(data) if data else None

    def set_name(self, name: str | None) -> None:
        """Choose ``name`` (None: automatic); :class:`~napari_attribution.LayerNotFoundError` for a layer that is
        not listed (used by scripts and tests)."""
        if name is None:
            self.setCurrentIndex(0)
            return
        i = self.findData(name)
        if i < 1:
            listed = ", ".join(self.names()) or "none (load a Python model, not a TorchScript archive)"
            raise na.LayerNotFoundError(f"The model has no layer {name!r} with spatial output. Layers: {listed}.")
        self.setCurrentIndex(i)
