"""Models: loading (``load_model``), the model card, layer discovery."""

from ._card import LoadedModel, ModelCard, first_layer, infer_card
from ._layers import LayerCandidate, find_layers, get_layer, resolve_layer
from ._load import find_card, load_model

__all__ = [
    "LayerCandidate",
    "LoadedModel",
    "ModelCard",
    "find_card",
    "find_layers",
    "first_layer",
    "get_layer",
    "infer_card",
    "load_model",
    "resolve_layer",
]
