"""``ModelCard`` and ``LoadedModel``: what the pipeline needs to know about a model, and inference of a card
for a plain ``torch.nn.Module``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from torch import nn

__all__ = ["LoadedModel", "ModelCard", "first_layer", "infer_card"]


@dataclass(frozen=True)
class ModelCard:
    """Facts about a model that the pipeline uses (a sidecar ``model.card.json`` or an inferred guess).

    Attributes
    ----------
    task : ``"classification"`` or ``"segmentation"``; None = infer from the output shape.
    spatial_dims : 2 or 3; None = infer from the first convolution (or the image).
    in_channels : number of input channels; None = infer from the first layer.
    class_names : optional names of the output classes.
    output : ``"logits"`` (default) or ``"probabilities"``.
    background : the background class of a multi-class segmentation output (default 0), or None.
    default_layer : dotted name of the layer for layer methods; None = found automatically.
    factory, kwargs, weights, preprocess, patch_size, spacing : how to build the model and prepare its input.
    inferred : True when the card was guessed rather than read.
    """

    task: Literal["classification", "segmentation"] | None = None
    spatial_dims: int | None = None
    in_channels: int | None = None
    class_names: tuple[str, ...] | None = None
    output: Literal["logits", "probabilities"] = "logits"
    background: int | None = 0
    default_layer: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    preprocess: dict[str, Any] | None = None
    patch_size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    inferred: bool = False


@dataclass
class LoadedModel:
    """A model in eval mode with its card."""

    module: nn.Module
    card: ModelCard


def _kind(m: nn.Module) -> str:
    return str(getattr(m, "original_name", type(m).__name__))


def first_layer(module: nn.Module) -> nn.Module | None:
    """The first convolution or linear layer in definition order (also inside TorchScript modules)."""
    for m in module.modules():
        if _kind(m) in ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d", "ConvTranspose3d"):
            return m
    return None


def infer_card(module: nn.Module, card: ModelCard | None = None) -> ModelCard:
    """Fill the card's missing ``spatial_dims`` and ``in_channels`` from the model's first layer."""
    card = card or ModelCard(inferred=True)
    first = first_layer(module)
    dims = card.spatial_dims
    chans = card.in_channels
    if first is not None:
        kind = _kind(first)
        if dims is None and kind[-2:] in ("1d", "2d", "3d"):
            dims = int(kind[-2])
        if chans is None:
            chans = int(getattr(first, "in_channels", 0) or 0) or None
    return replace(card, spatial_dims=dims, in_channels=chans)
