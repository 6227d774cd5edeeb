"""``response_backprojection``: deconvnet back-projection of a class's (or a unit's) strongest responses to the
input, after Kumar et al. (arXiv:1611.06284, "attentive response maps" by fractional-stride convolution) and
the group's CLEAR maps (arXiv:1704.04133) — **our reconstruction** (methods.md §A1, Part E): the paper's
layers, units and exact procedure were not available.

Definition used: a fractional-stride convolution is a transposed convolution with the forward stride; with the
forward weights, max-unpooling through the switches and a ReLU on the backward signal this is the
Zeiler-Fergus deconvnet. For output unit k, seeded with the **positive part** of its pre-softmax response
``y_k`` (our choice, methods.md §A1 as revised 2026-12: a class the model rejects has a negative logit, and
seeding with it made such classes dominate the map — on the demo classifier a rejected class held the strongest
1 % of voxels in all 12 phantoms, the predicted class in none — so a class contributes only its positive
evidence)::

    R_k = D(max(y_k, 0) * e_k)             deconvnet back-projection of unit k's positive response
    R_k(u) = sum_c max(R_k(c, u), 0)       positive part, summed over input channels
    dominant response R*(u) = max_k R_k(u);  dominant class C*(u) = argmax_k R_k(u)     (CLEAR)

``mode="target"`` (default) back-projects the resolved target's response (segmentation: class k's logits over
its predicted region, each weighted by its value); ``mode="dominant"`` computes ``R_k`` for every class (a
segmentation class over the region predicted as k) and returns ``R*`` with ``C*`` in
``extras["dominant_class"]`` (-1 where nothing responds, e.g. a class with no positive response) and the
per-class maps in ``extras["per_class"]``. A target with ``score="probability"`` seeds with the probabilities
instead of the logits. With a ``layer`` and ``channel``, each of the ``top_n`` (default 9, Zeiler-Fergus) largest
activations of that channel is seeded alone (its value, all other activations 0) and back-projected on its own,
one back-projection per unit as Zeiler & Fergus do (the deconvnet's ReLU rule makes the back-projection of N
seeds together differ from the N back-projections); the map is their voxel-wise maximum, the per-unit maps are in
``extras["per_unit"]`` ``(N, *S)`` and the units' positions in the layer's grid in ``extras["unit_positions"]``.
``stride_fix=True`` applies Oramas et al.'s fix against checkerboards of strided layers. Cost: 1F + 1B per unit
(K backward passes for ``dominant``, ``top_n`` for a channel).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._errors import MethodError, ParameterError
from ..targets import class_region, predicted_labels
from ._hooks import activation_rule, capture_layer
from ._registry import register
from ._run import MethodOutput, Run, first_output


@register(
    "response_backprojection",
    label="Response back-projection (reconstruction: deconvnet back-projection of the strongest responses)",
    family="backward_rule",
    passes="1F + 1B per unit (K for dominant)",
    paper="Kumar et al. 2018 (ISBI), arXiv:1611.06284; CLEAR, arXiv:1704.04133 (motivation; reconstruction)",
    supports_torchscript=False,
    params={"mode": "target", "channel": None, "top_n": 9, "stride_fix": False},
    choices={"mode": ("target", "dominant")},
    layer_optional=True,
    short="RespBP",
)
def response_backprojection(run: Run, params: dict[str, Any]) -> MethodOutput:
    """Deconvnet back-projection of responses (reconstruction; see the module docstring). Unsigned."""
    assert run.target is not None
    mode = params["mode"]
    if mode not in ("target", "dominant"):
        raise ParameterError("mode must be 'target' or 'dominant'.")
    x = run.x.clone().requires_grad_(True)
    unit = params["channel"] is not None
    if unit and run.layer is None:
        raise ParameterError("A unit (channel) is back-projected from a layer: pass layer= as well.")
    with activation_rule("deconvnet", stride_fix=bool(params["stride_fix"])), torch.enable_grad():
        if unit:
            return _units(run, x, int(params["channel"]), int(params["top_n"]))
        out = first_output(run.model(x))
        y = out.detach()
        # the response that seeds: the logit, or the probability when the target asks for it
        response = run.target.probabilities(y) if run.target.uses_probability(False) else y
        if mode == "target":
            seed = run.target.weights.to(y) * response[0]
            (g,) = torch.autograd.grad(out, x, grad_outputs=seed[None])
            run.advance(1, "back-projection")
            return MethodOutput(g[0].clamp(min=0).sum(0, keepdim=True))
        n_classes = y.shape[1]
        run.expected_total(n_classes)
        maps: list[Tensor] = []
        labels = predicted_labels(y[0], "logits") if y.ndim > 2 else None
        positive = response.clamp(min=0)  # a rejected class (negative logit) has no response to back-project
        for k in range(n_classes):
            seed = torch.zeros_like(y)
            if labels is None:
                seed[0, k] = positive[0, k]
            else:
                region = class_region(labels, k, n_classes)
                seed[0, k][region] = positive[0, k][region]
            if not seed.any():
                maps.append(torch.zeros_like(x[0, 0]))
            else:
                (g,) = torch.autograd.grad(out, x, grad_outputs=seed, retain_graph=k < n_classes - 1)
                maps.append(g[0].clamp(min=0).sum(0))
            run.advance(1, f"class {k}")
    per_class = torch.stack(maps)
    best, cls = per_class.max(0)
    cls = torch.where(best > 0, cls, torch.full_like(cls, -1))
    return MethodOutput(best[None], {"dominant_class": cls.cpu().numpy(), "per_class": per_class.cpu().numpy()})


def _units(run: Run, x: Tensor, ch: int, top_n: int) -> MethodOutput:
    """Zeiler-Fergus top-N units of channel ``ch`` at ``run.layer``: each of the ``top_n`` largest activations is
    seeded alone and back-projected on its own (one backward pass per unit, the forward graph kept); the map is
    the voxel-wise maximum of the per-unit maps."""
    assert run.layer is not None
    with capture_layer(run.layer, grad=True) as cap:
        first_output(run.model(x))
    act = cap.activation
    if act is None or act.ndim < 3:
        raise MethodError(f"Layer {run.layer_name!r} has no spatial output to seed.")
    if not 0 <= ch < act.shape[1]:
        raise ParameterError(f"channel must be in 0..{act.shape[1] - 1} for layer {run.layer_name!r}.")
    if isinstance(top_n, bool) or top_n < 1:
        raise ParameterError(f"top_n must be a whole number of at least 1, got {top_n!r}.")
    plane = act.detach()[0, ch].flatten()
    k = min(top_n, plane.numel())
    values, top = torch.topk(plane, k)
    run.expected_total(k)
    maps: list[Tensor] = []
    for i in range(k):
        seed = torch.zeros_like(act)
        seed[0, ch].view(-1)[top[i]] = values[i]
        (g,) = torch.autograd.grad(act, x, grad_outputs=seed, retain_graph=i < k - 1)
        maps.append(g[0].clamp(min=0).sum(0))
        run.advance(1, f"unit {i + 1} of {k}")
    per_unit = torch.stack(maps)
    positions = [tuple(int(v) for v in idx) for idx in zip(*torch.unravel_index(top, act.shape[2:]), strict=True)]
    return MethodOutput(per_unit.max(0).values[None],
                        {"unit": (run.layer_name, ch, k), "per_unit": per_unit.cpu().numpy(),
                         "unit_positions": positions, "unit_values": values.cpu().numpy()})
