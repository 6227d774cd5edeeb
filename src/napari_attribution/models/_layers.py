"""Layer discovery: which modules have spatial output, and the default layer for layer methods.

The default layer is the one Grad-CAM and the other layer methods look at when nobody names one:

- classification ``(B, C, *S) -> (B, K)``: the last layer with spatial output before the head (the global pooling
  and the linear layer have no spatial output, so they are never candidates);
- segmentation ``(B, C, *S) -> (B, K, *S)``: the deepest layer with spatial resolution and more than one channel
  *before the output head*. The head is the trailing run of layers with the output's ``K`` channels (a 1x1
  output convolution, MONAI UNet's last up-sampling block with its residual unit, a softmax / sigmoid module):
  a map taken there is the prediction itself, not an explanation of it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._errors import LayerNotFoundError, MethodError
from ..methods._hooks import record_module_outputs

__all__ = ["LayerCandidate", "default_layer", "find_layers", "get_layer", "pick_default", "resolve_layer"]

#: What a TorchScript archive can do instead of layer methods (also in the pipeline's message).
TORCHSCRIPT_WAY_OUT = (
    "Use a gradient or perturbation method, or load the archive's weights into the Python network with a card "
    "that names its factory, e.g. na.load_model({\"factory\": \"monai.networks.nets:UNet\", \"kwargs\": {...}, "
    "\"weights\": \"model.ts\"}): the archive's state_dict is copied into the network the factory builds, and "
    "layer methods then run on it."
)


@dataclass(frozen=True)
class LayerCandidate:
    """A module whose output has the input's number of spatial axes (and more than one position).

    ``shape`` is its output shape ``(1, C, *S)`` for the probe input; ``kind`` its class name."""

    name: str
    shape: tuple[int, ...]
    kind: str

    @property
    def channels(self) -> int:
        """``C``, the number of channels of the layer's output."""
        return int(self.shape[1])

    def __str__(self) -> str:
        spatial = "x".join(str(s) for s in self.shape[2:])
        return f"{self.name} ({self.kind}, {self.channels} x {spatial})"


def _probe(model: nn.Module, x: Tensor) -> tuple[list[LayerCandidate], tuple[int, ...] | None]:
    """The candidates for input ``x`` and the shape of the model's (first) output tensor."""
    if isinstance(model, torch.jit.ScriptModule):
        raise MethodError(f"TorchScript archives take no Python module hooks, so layer methods cannot run on them. "
                          f"{TORCHSCRIPT_WAY_OUT}")
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
    return result, (tuple(final[0].shape) if final else None)


def find_layers(model: nn.Module, x: Tensor) -> list[LayerCandidate]:
    """Modules with spatial output for input ``x`` ``(1, C, *S)``, in forward order: the order in which the
    forward pass computes their outputs (a container comes right after the last of its children), each with its
    output shape.

    Modules whose output *is* the model's output (the head and containers around it) are excluded, and so
    are outputs with a single position (after global pooling). TorchScript archives raise
    :class:`~napari_attribution.MethodError` (they take no hooks; the message gives the way out).

    Examples
    --------
    >>> import torch, napari_attribution as na
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> [str(c) for c in na.find_layers(net, torch.zeros(1, 1, 8, 8))]
    ['0 (Conv2d, 4 x 8x8)', '1 (ReLU, 4 x 8x8)']
    """
    return _probe(model, x)[0]


def pick_default(candidates: Sequence[LayerCandidate], output_shape: Sequence[int] | None) -> LayerCandidate | None:
    """The default layer among ``candidates`` (forward order) of a model whose output has ``output_shape``.

    Classification (an output without spatial axes): the last candidate. Segmentation (an output ``(B, K, *S)``
    with as many axes as the candidates'): the last candidate with more than one channel before the output head,
    the trailing run of candidates with ``K`` channels. When every candidate has ``K`` channels, the last one with
    more than one channel (the output convolution itself is never a candidate). None without candidates.

    Examples
    --------
    >>> a = LayerCandidate("dec", (1, 8, 16, 16), "Conv2d")
    >>> b = LayerCandidate("head.conv", (1, 2, 16, 16), "Conv2d")
    >>> pick_default([a, b], (1, 2, 16, 16)).name
    'dec'
    """
    if not candidates:
        return None
    nd = len(candidates[0].shape)
    if output_shape is None or len(output_shape) != nd:
        return candidates[-1]
    k = int(output_shape[1])
    body = list(candidates)
    while body and body[-1].channels == k:
        body.pop()
    several = [c for c in body if c.channels > 1] or [c for c in candidates if c.channels > 1]
    return several[-1] if several else candidates[-1]


def default_layer(model: nn.Module, x: Tensor) -> str | None:
    """The name of the default layer for input ``x`` (:func:`pick_default`); None when no layer has spatial
    output."""
    candidates, out = _probe(model, x)
    chosen = pick_default(candidates, out)
    return chosen.name if chosen is not None else None


def _listing(candidates: Sequence[LayerCandidate], limit: int = 40) -> str:
    shown = [str(c) for c in candidates[:limit]]
    more = f" ... and {len(candidates) - limit} more (na.find_layers lists them all)" if len(candidates) > limit else ""
    return "; ".join(shown) + more


def _not_found(model: nn.Module, name: str, candidates: Sequence[LayerCandidate] | None) -> LayerNotFoundError:
    names = [c.name for c in candidates] if candidates is not None else [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, 3, 0.6)
    close += [n for n in names if name and name.split(".")[-1] in n.split(".") and n not in close][: 5 - len(close)]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if candidates is None:
        listing = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
        return LayerNotFoundError(f"The model has no layer {name!r}.{hint} Layers: {listing}")
    return LayerNotFoundError(
        f"The model has no layer {name!r}.{hint} Layers with spatial output, in forward order (name, kind, "
        f"channels x spatial size): {_listing(candidates)}"
    )


def get_layer(model: nn.Module, name: str, x: Tensor | None = None) -> nn.Module:
    """The submodule at dotted path ``name`` (``"features.3"``); :class:`LayerNotFoundError` otherwise, listing
    the layers with spatial output in forward order with their shapes when the input ``x`` is given (else the
    module names)."""
    modules: dict[str, nn.Module] = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    candidates = None
    if x is not None and not isinstance(model, torch.jit.ScriptModule):
        candidates = find_layers(model, x)
    raise _not_found(model, name, candidates)


def resolve_layer(model: nn.Module, x: Tensor, name: str | None, default: str | None = None) -> tuple[str, nn.Module]:
    """The layer for a layer method: ``name``, else the card's ``default``, else :func:`pick_default` of the
    layers :func:`find_layers` finds (for segmentation: the deepest multi-channel layer before the output head)."""
    if name is None:
        name = default
    if name is not None:
        if isinstance(model, torch.jit.ScriptModule):
            _probe(model, x)  # raises the TorchScript message
        return name, get_layer(model, name, x)
    candidates, out = _probe(model, x)
    chosen = pick_default(candidates, out)
    if chosen is None:
        raise LayerNotFoundError(
            "No layer with spatial output was found in this model, so layer methods (CAM family) cannot run. "
            "Use a gradient or perturbation method."
        )
    return chosen.name, get_layer(model, chosen.name)
