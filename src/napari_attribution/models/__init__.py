"""Models: the model card, layer discovery."""

from ._card import LoadedModel, ModelCard, first_layer, infer_card
from ._layers import LayerCandidate, find_layers, get_layer, resolve_layer

__all__ = [
    "LayerCandidate",
    "LoadedModel",
    "ModelCard",
    "find_layers",
    "first_layer",
    "get_layer",
    "infer_card",
    "resolve_layer",
]
