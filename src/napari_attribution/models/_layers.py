"""Layer discovery: which modules have spatial output, and the default layer for layer methods."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._errors import LayerNotFoundError, MethodError
from ..methods._hooks import record_module_outputs

__all__ = ["LayerCandidate", "find_layers", "get_layer", "resolve_layer"]


@dataclass(frozen=True)
class LayerCandidate:
    """A module whose output has the input's number of spatial axes (and more than one position)."""

    name: str
    shape: tuple[int, ...]
    kind: str


def find_layers(model: nn.Module, x: Tensor) -> list[LayerCandidate]:
    """Modules with spatial output for input ``x`` ``(1, C, *S)``, in the order their forward returns.

    Modules whose output *is* the model's output (the head and containers around it) are excluded, and so
    are outputs with a single position (after global pooling).
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise MethodError(
            "TorchScript models take no module hooks, so layer methods cannot run on them. Use a gradient or "
            "perturbation method, or load the model from a checkpoint with a model card."
        )
    nd = x.ndim
    with record_module_outputs(model) as records, torch.no_grad():
        out = model(x)
    final = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, Tensor)]
    kinds = dict((n, type(m).__name__) for n, m in model.named_modules())
    seen: set[str] = set()
    result = []
    for name, shape, ref in records:
        if any(ref() is t for t in final) or len(shape) != nd or name in seen:
            continue
        positions = 1
        for s in shape[2:]:
            positions *= s
        if positions <= 1:
            continue
        seen.add(name)
        result.append(LayerCandidate(name, shape, kinds.get(name, "?")))
    return result


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted path ``name`` (``"features.3"``); :class:`LayerNotFoundError` otherwise."""
    modules: dict[str, nn.Module] = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [n for n in modules if n]
    close = [n for n in names if name.split(".")[-1] in n][:10]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    listing = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
    raise LayerNotFoundError(f"The model has no layer {name!r}.{hint} Layers: {listing}")


def resolve_layer(model: nn.Module, x: Tensor, name: str | None, default: str | None = None) -> tuple[str, nn.Module]:
    """The layer for a layer method: ``name``, else the card's ``default``, else the last spatial layer found
    by :func:`find_layers` (the last layer with spatial output before the head)."""
    if name is None:
        name = default
    if name is not None:
        if isinstance(model, torch.jit.ScriptModule):
            find_layers(model, x)  # raises the TorchScript message
        return name, get_layer(model, name)
    candidates = find_layers(model, x)
    if not candidates:
        raise LayerNotFoundError(
            "No layer with spatial output was found in this model, so layer methods (CAM family) cannot run. "
            "Use a gradient or perturbation method."
        )
    last = candidates[-1]
    return last.name, get_layer(model, last.name)
