"""VEBI's test-time tensor helpers (Oramas, Wang & Tuytelaars, ICLR 2019; methods.md §A5.2-A5.3): the response
vector of an input over the feature layers, and the guided back-projection of single features to the input.

Used by the ``vebi`` method and by the interpretation package (fitting and average visualisations), which sits above
the pipeline: these helpers live here so that no method imports a module above it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack

import torch
from torch import Tensor, nn

from .._errors import MethodError
from ._hooks import activation_rule, capture_layer, record_channel_energy

__all__ = ["backproject_features", "layer_modules", "model_responses", "normalise_maps", "responses_from_energy"]


def responses_from_energy(
    values: Mapping[str, Tensor], layers: Sequence[str], channels: Sequence[int]
) -> Tensor:
    """``(B, m)`` float64 response vectors from per-channel energies: L1 within each layer, then L2 overall."""
    parts = []
    for name, k in zip(layers, channels, strict=True):
        e = values.get(name)
        if e is None:
            raise MethodError(f"Layer {name!r} did not run in the forward pass; were the features fitted for this "
                              "model?")
        if e.shape[1] != k:
            raise MethodError(
                f"Layer {name!r} has {e.shape[1]} channels here but {k} when the features were fitted: the "
                "features belong to another model. Fit them again for this model."
            )
        e = e.detach().double().cpu()
        s = e.sum(1, keepdim=True)
        parts.append(torch.where(s > 0, e / s.clamp_min(1e-300), torch.zeros_like(e)))
    v = torch.cat(parts, 1)
    norm = v.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, v / norm.clamp_min(1e-300), v)


def layer_modules(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """``{name: module}`` for the feature layers; a clear error when the model does not have one."""
    named = dict(model.named_modules())
    missing = [n for n in layers if n not in named]
    if missing:
        raise MethodError(
            f"The model has no layer {missing[0]!r} (of {len(missing)} missing): these relevant features were "
            "fitted for another model. Fit them for this model with fit_relevant_features."
        )
    return {n: named[n] for n in layers}


def model_responses(model: nn.Module, x: Tensor, layers: Sequence[str], channels: Sequence[int]) -> Tensor:
    """Response vectors ``(B, m)`` of a batch ``x`` (no gradients; only per-channel energies are kept)."""
    with record_channel_energy(layer_modules(model, layers)) as rec, torch.no_grad():
        out = model(x)
    twice = [n for n in layers if rec.calls.get(n, 0) > 1]
    if twice:
        raise MethodError(f"Layer {twice[0]!r} runs more than once per forward pass; its responses are ambiguous.")
    del out
    return responses_from_energy(rec.values, layers, channels)


def backproject_features(
    model: nn.Module,
    x: Tensor,
    items: Sequence[tuple[str, int]],
    *,
    stride_fix: bool = True,
    after_each: Callable[[], None] | None = None,
) -> Tensor:
    """The raw test-time map of each feature (methods.md §A5.2 step 3), for a batch ``x`` ``(B, C, *S)``.

    Per feature (layer ``l``, channel ``k``): seed layer ``l`` with its own activation ``A^l_k`` in channel ``k``
    (zero elsewhere) and back-propagate to the input under guided backpropagation (and the stride fix of strided
    convolutions when ``stride_fix``); the map is the L2 norm over input channels of the positive part.
    Returns ``(B, n, *S)`` float32 (not normalised). One forward pass and one backward pass per feature.
    """
    names = list(dict.fromkeys(n for n, _ in items))
    mods = layer_modules(model, names)
    xg = x.detach().clone().requires_grad_(True)
    with ExitStack() as stack:
        stack.enter_context(activation_rule("guided_backprop", stride_fix=stride_fix))
        stack.enter_context(torch.enable_grad())
        caps = {n: stack.enter_context(capture_layer(mods[n], grad=True)) for n in names}
        model(xg)
    maps = []
    for i, (name, k) in enumerate(items):
        act = caps[name].activation
        if act is None:
            raise MethodError(f"Layer {name!r} did not run in the forward pass.")
        if not 0 <= k < act.shape[1]:
            raise MethodError(f"Layer {name!r} has {act.shape[1]} channels; feature channel {k} does not exist.")
        if act.requires_grad:
            seed = torch.zeros_like(act)
            seed[:, k] = act.detach()[:, k]
            (g,) = torch.autograd.grad(act, xg, grad_outputs=seed, retain_graph=i < len(items) - 1,
                                       allow_unused=True)
        else:
            g = None
        g = torch.zeros_like(xg) if g is None else g
        maps.append(g.detach().clamp(min=0).pow(2).sum(1).sqrt().float())
        if after_each is not None:
            after_each()
    if not maps:
        return torch.zeros((x.shape[0], 0, *x.shape[2:]), dtype=torch.float32, device=x.device)
    return torch.stack(maps, 1)


def normalise_maps(maps: Tensor, spatial_dims: int) -> Tensor:
    """Min-max to [0, 1] of each map over its last ``spatial_dims`` axes; a flat map becomes 0."""
    lead = maps.shape[: maps.ndim - spatial_dims]
    flat = maps.reshape(*lead, -1)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-30), torch.zeros_like(flat))
    return out.reshape(maps.shape)

