"""Layer attributions for segmentation and classification targets (seed 001, TorchEsegeta's use of Captum's
layer methods): ``layer_gradient_x_activation`` and ``layer_conductance``. ``layer_activation`` lives with the
CAM family (``cam.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._errors import MethodError
from ._hooks import capture_layer
from ._registry import Cost, register
from ._run import MethodOutput, Run, first_output
from .cam import channel_sum
from .gradient import baseline_tensor, integration_rule


@register(
    "layer_gradient_x_activation",
    label="Layer gradient x activation: sum_k dT/dA_k * A_k (signed), upsampled",
    family="layer",
    needs_layer=True,
    shared_pass=True,
    passes="1F + partial B",
    paper="Shrikumar et al. 2016, arXiv:1605.01713 (at a layer, as Captum's LayerGradientXActivation)",
    signed=True,
    supports_torchscript=False,
    params={"channel": None},
    short="LayerGxA",
    pass_kind="partial",
)
def layer_gradient_x_activation(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``L = sum_k G_k * A_k`` at the layer, signed (evidence for the target where positive, against where
    negative), summed over all channels or over ``channel`` (an int or a list), upsampled (bilinear / trilinear,
    ``align_corners=False``). Equals ``captum.attr.LayerGradientXActivation(model, layer).attribute(x, target)``
    summed over channels and passed to ``LayerAttribution.interpolate(..., "bilinear"/"trilinear")``; HiResCAM
    is this map with a ReLU. Computed from the shared pass (one forward, a backward that stops at the layer), so
    it is free next to the CAM family in ``compare``. ``extras["per_channel_total"]`` is each channel's sum."""
    assert run.shared is not None and run.shared.activation is not None and run.shared.grad_activation is not None
    a, g = run.shared.activation, run.shared.grad_activation
    if a.ndim < 3:
        raise MethodError(f"Layer {run.layer_name!r} has no spatial output; choose a convolutional layer.")
    prod = g * a
    ch = params["channel"]
    m = prod.sum(1, keepdim=True) if ch is None else channel_sum(prod, ch, run.layer_name)
    return MethodOutput(
        run.upsample(m)[0],
        {"layer_map": m[0, 0].cpu().numpy(), "per_channel_total": prod.flatten(2).sum(2)[0].cpu().numpy()},
    )


def _conductance_cost(p: Mapping[str, Any], spatial: tuple[int, ...], layer_channels: int | None) -> Cost:
    return Cost(float(p.get("steps") or 50) + 1)  # steps + 1 path points


@register(
    "layer_conductance",
    label="Layer conductance: the target's change routed through each unit of a layer along the IG path",
    family="layer",
    needs_layer=True,
    passes="(steps + 1) x (1F + 1B)",
    paper="Dhamdhere et al. 2018, arXiv:1805.12233; Shrikumar et al. 2018, arXiv:1807.09946",
    signed=True,
    supports_torchscript=False,
    params={"steps": 50, "baseline": "min", "rule": "riemann_trapezoid", "channel": None},
    choices={"baseline": ("min", "mean", ...),
             "rule": ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")},
    short="LayerCond",
    cost=_conductance_cost,
    quick_params={"steps": 4},
)
def layer_conductance(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``Cond_j = sum_i dT/dA_j(x_{a_i}) * (A_j(x_{a_{i+1}}) - A_j(x_{a_i}))`` over ``steps + 1`` path points
    ``x_a = x' + a (x - x')``, summed over the layer's channels (or ``channel``) and upsampled (signed).

    With ``rule="gausslegendre"`` the path points are Captum's, and the map equals
    ``captum.attr.LayerConductance(...).attribute(x, baselines, n_steps=steps, method="gausslegendre")`` summed
    over channels and interpolated. The default ``riemann_trapezoid`` places the points on ``0, 1/steps, ..., 1``,
    so the path's end points are included and ``sum(Cond)`` approaches ``T(x) - T(x')`` for a layer that every
    path passes through (``extras["completeness"]``). Points are processed in memory-sized chunks.
    """
    if run.layer is None:
        raise MethodError("layer_conductance needs a layer.")
    x = run.x
    b = baseline_tensor(x, params["baseline"])
    alphas, _ = integration_rule(params["rule"], int(params["steps"]) + 1)
    a = torch.as_tensor(alphas, dtype=x.dtype).to(x.device)
    n = len(a)
    run.expected_total(n)
    cond: Tensor | None = None
    prev: tuple[Tensor, Tensor] | None = None
    scores: list[float] = []
    assert run.target is not None
    start = 0
    while start < n:
        stop = min(n, start + run.batch_size(n - start))
        run.check_cancel()
        xs = b + a[start:stop].view((-1,) + (1,) * (x.ndim - 1)) * (x - b)
        with torch.enable_grad(), capture_layer(run.layer, grad=True) as cap:
            out = first_output(run.model(xs))
            s = run.target(out)
            act = cap.activation
            if act is None:
                raise MethodError(f"Layer {run.layer_name!r} did not run in the forward pass.")
            (g,) = torch.autograd.grad(s.sum(), act)
        scores.extend(s.detach().tolist())
        acts = act.detach()
        if prev is not None:
            step = prev[0] * (acts[:1] - prev[1])
            cond = step if cond is None else cond + step
        if len(acts) > 1:
            step = (g[:-1] * (acts[1:] - acts[:-1])).sum(0, keepdim=True)
            cond = step if cond is None else cond + step
        prev = (g[-1:], acts[-1:])
        run.advance(stop - start, "layer conductance")
        start = stop
    assert cond is not None
    if cond.ndim < 3:
        raise MethodError(f"Layer {run.layer_name!r} has no spatial output; choose a convolutional layer.")
    ch = params["channel"]
    m = cond.sum(1, keepdim=True) if ch is None else channel_sum(cond, ch, run.layer_name)
    total = float(cond.sum())
    delta = scores[-1] - scores[0]
    return MethodOutput(
        run.upsample(m)[0],
        {"layer_map": m[0, 0].cpu().numpy(), "per_channel_total": cond.flatten(2).sum(2)[0].cpu().numpy(),
         "completeness": {"sum": total, "delta_path_ends": delta, "points": n}},
    )
