"""Class activation maps on a chosen layer ``A`` (``(1, K, *S_l)``) and its gradient ``G = dT/dA``.

Each variant is a weight function over the same shared pass (one forward, one partial backward that stops
at the layer), so ``compare`` computes ``grad_cam``, ``hires_cam``, ``layer_cam``, ``grad_cam_pp``, ``cam``
and ``layer_activation`` together for the price of one. Reductions run over ``range(2, ndim)`` (2D and 3D alike);
maps are computed at the layer's resolution, ReLU'd where the definition has a ReLU, then upsampled in torch
(bilinear / trilinear, ``align_corners=False``) to the input grid. No min-max normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._errors import MethodError, ParameterError
from ._hooks import activation_rule
from ._registry import Cost, register
from ._run import MethodOutput, Run, first_output


def _layer(run: Run) -> tuple[Tensor, Tensor | None]:
    assert run.shared is not None and run.shared.activation is not None
    a = run.shared.activation
    if a.ndim < 3:
        raise MethodError(
            f"Layer {run.layer_name!r} has no spatial output (shape {tuple(a.shape)}); "
            "choose a convolutional layer (see the candidates in the layer picker)."
        )
    return a, run.shared.grad_activation


def _spatial_dims(t: Tensor) -> tuple[int, ...]:
    return tuple(range(2, t.ndim))


def channel_sum(t: Tensor, channel: int | list[int], layer_name: str | None) -> Tensor:
    """``t[:, channel]`` summed over the chosen channels (an int or a list), keeping the channel axis."""
    idx = [channel] if isinstance(channel, int) else list(channel)
    if any(not 0 <= i < t.shape[1] for i in idx):
        raise ParameterError(f"channel must be in 0..{t.shape[1] - 1} for layer {layer_name!r}.")
    return t[:, idx].sum(1, keepdim=True)


def _finish(run: Run, m: Tensor, extras: dict[str, Any] | None = None) -> MethodOutput:
    """``m``: ``(1, 1, *S_l)`` at layer resolution -> ``(1, *S)`` on the input grid."""
    return MethodOutput(run.upsample(m)[0], {"layer_map": m[0, 0].detach().cpu().numpy(), **(extras or {})})


#: the shared-pass CAM variants: one forward and a backward that stops at the layer
_LAYER: dict[str, Any] = dict(family="cam", needs_layer=True, shared_pass=True, pass_kind="partial")


@register(
    "grad_cam",
    label="Grad-CAM: ReLU(sum_k mean(dT/dA_k) A_k), upsampled",
    passes="1F + partial B",
    paper="Selvaraju et al. 2017, arXiv:1610.02391",
    supports_torchscript=False,
    short="GradCAM",
    compare_default=True,
    **_LAYER,
)
def grad_cam(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``L = ReLU(sum_k a_k A_k)``, ``a_k = mean_u dT/dA_k(u)``; equals ``captum.attr.LayerGradCam(...,
    relu_attributions=True)`` followed by ``LayerAttribution.interpolate(..., "bilinear"/"trilinear")``."""
    a, g = _layer(run)
    assert g is not None
    alpha = g.mean(dim=_spatial_dims(g), keepdim=True)
    return _finish(run, (alpha * a).sum(1, keepdim=True).clamp(min=0))


@register(
    "hires_cam",
    label="HiResCAM: ReLU(sum_k dT/dA_k * A_k), upsampled",
    passes="1F + partial B",
    paper="Draelos & Carin 2020, arXiv:2011.08891",
    supports_torchscript=False,
    short="HiRes",
    **_LAYER,
)
def hires_cam(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``L = ReLU(sum_k G_k * A_k)`` (element-wise gradient times activation, summed over channels)."""
    a, g = _layer(run)
    assert g is not None
    return _finish(run, (g * a).sum(1, keepdim=True).clamp(min=0))


@register(
    "layer_cam",
    label="LayerCAM: ReLU(sum_k ReLU(dT/dA_k) * A_k), upsampled",
    passes="1F + partial B",
    paper="Jiang et al. 2021, IEEE TIP 30:5875, doi:10.1109/TIP.2021.3089943",
    supports_torchscript=False,
    short="LayerCAM",
    **_LAYER,
)
def layer_cam(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``L(u) = ReLU(sum_k w_k(u) A_k(u))`` with ``w_k(u) = ReLU(dT/dA_k(u))``: each position's activation weighted
    by its own positive gradient (Jiang et al. 2021, LayerCAM), so that shallow layers, whose gradients change
    sign from voxel to voxel, still give a class map. With non-negative activations (after a ReLU) it is never
    below HiResCAM, and equals it where no gradient is negative. pytorch-grad-cam's ``LayerCAM`` computes the same
    sum before its min-max scaling (read from its source; it cannot be imported here to compare). The paper's
    ``tanh`` rescaling of shallow-layer maps (for fusing several layers into one picture) is display and left out,
    like any normalisation."""
    a, g = _layer(run)
    assert g is not None
    return _finish(run, (g.clamp(min=0) * a).sum(1, keepdim=True).clamp(min=0))


@register(
    "grad_cam_pp",
    label="Grad-CAM++: second-order weights of positive gradients",
    passes="1F + partial B",
    paper="Chattopadhay et al. 2018, arXiv:1710.11063",
    supports_torchscript=False,
    short="GradCAM++",
    **_LAYER,
)
def grad_cam_pp(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``a_k(u) = g^2 / (2 g^2 + sum_v A_k(v) g^3)`` (0 where ``g = 0``), ``w_k = sum_u a_k(u) ReLU(g(u))``,
    ``L = ReLU(sum_k w_k A_k)``, with ``g = dT/dA`` under the paper's ``Y = exp(S)`` assumption (which does not
    hold exactly for summed segmentation scores)."""
    a, g = _layer(run)
    assert g is not None
    dims = _spatial_dims(g)
    g2 = g * g
    g3 = g2 * g
    denom = 2 * g2 + a.sum(dim=dims, keepdim=True) * g3
    alpha = torch.where(g != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g))
    w = (alpha * g.clamp(min=0)).sum(dim=dims, keepdim=True)
    return _finish(run, (w * a).sum(1, keepdim=True).clamp(min=0))


@register(
    "cam",
    label="CAM: sum_k w_k A_k with the linear head's weights (needs conv -> GAP -> linear)",
    passes="1F + partial B",
    paper="Zhou et al. 2016, arXiv:1512.04150",
    signed=True,
    supports_torchscript=False,
    short="CAM",
    **_LAYER,
)
def cam(run: Run, params: dict[str, Any]) -> MethodOutput:
    """Class activation map ``M = sum_k w_k A_k`` (no ReLU, signed).

    Computed as Grad-CAM without its ReLU, rescaled: behind a global-average-pooling + linear head the layer
    gradient is spatially constant, ``dT/dA_k(u) = w_k / Z`` with ``Z`` the number of positions, so
    ``w_k = Z * dT/dA_k``. That constancy is also the architecture check: if the gradient varies over space
    the layer is not followed by GAP + linear and CAM is undefined (use ``grad_cam``).
    """
    a, g = _layer(run)
    assert g is not None
    dims = _spatial_dims(g)
    spread = (g.amax(dim=dims) - g.amin(dim=dims)).abs().max()
    scale = g.abs().max().clamp(min=1e-30)
    if float(spread / scale) > 1e-4:
        raise MethodError(
            f"CAM needs layer {run.layer_name!r} to be followed by global average pooling and a linear layer "
            "(its gradient would then be constant over space, but it varies). Use grad_cam instead, or pick the "
            "last convolutional layer before the pooling."
        )
    z = 1
    for d in dims:
        z *= g.shape[d]
    w = g.mean(dim=dims, keepdim=True) * z
    return _finish(run, (w * a).sum(1, keepdim=True))


@register(
    "layer_activation",
    label="Layer activation (mean over channels, or one channel), upsampled",
    passes="1F",
    paper="Zeiler & Fergus 2013, arXiv:1311.2901 (activation maps)",
    signed=True,
    supports_torchscript=False,
    params={"channel": None, "reduce": "mean"},
    choices={"reduce": ("mean", "sum", "max")},
    needs_grad=False,
    short="Act",
    **{**_LAYER, "pass_kind": "forward"},
)
def layer_activation(run: Run, params: dict[str, Any]) -> MethodOutput:
    """The layer's activation, independent of the target: channel ``channel`` (an int or a list, summed), or
    all channels reduced by ``reduce`` (``"mean"``, ``"sum"``, ``"max"``). Captum ``LayerActivation`` returns
    the same tensor per channel."""
    a, _ = _layer(run)
    ch = params["channel"]
    if ch is not None:
        m = channel_sum(a, ch, run.layer_name)
    elif params["reduce"] == "mean":
        m = a.mean(1, keepdim=True)
    elif params["reduce"] == "sum":
        m = a.sum(1, keepdim=True)
    elif params["reduce"] == "max":
        m = a.amax(1, keepdim=True)
    else:
        raise ParameterError("reduce must be 'mean', 'sum' or 'max'.")
    return _finish(run, m)


def _score_cam_cost(p: Mapping[str, Any], spatial: tuple[int, ...], layer_channels: int | None) -> Cost:
    """One forward per channel of the layer, and the one that records the activations (64 channels assumed, as an
    upper bound, while the layer is unknown)."""
    return Cost(float((layer_channels or 64) + 1), upper=layer_channels is None)


@register(
    "score_cam",
    label="Score-CAM: activation maps weighted by the score of the input masked with each map",
    family="cam",
    needs_layer=True,
    passes="1F + K_l F",
    paper="Wang et al. 2020, arXiv:1910.01279",
    supports_torchscript=False,
    shared_pass=False,
    needs_grad=False,
    short="ScoreCAM",
    cost=_score_cam_cost,
    pass_kind="forward",
)
def score_cam(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``H_k = Norm(Up(A_k))``, ``s_k = T(x * H_k)``, ``w = softmax_k(s)``, ``L = ReLU(sum_k w_k A_k)``.

    One forward pass per channel of the layer, chunked to the memory budget; masks are upsampled bilinearly
    or trilinearly (the reference implementation is 2D-only). Constant channels give an all-zero mask.
    """
    a, _ = _layer(run)
    k = a.shape[1]
    up = run.upsample(a)[0]  # (K, *S)
    flat = up.flatten(1)
    lo = flat.min(1).values.view((k,) + (1,) * (up.ndim - 1))
    hi = flat.max(1).values.view((k,) + (1,) * (up.ndim - 1))
    rng = hi - lo
    masks = torch.where(rng > 0, (up - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.zeros_like(up))
    run.expected_total(k)
    x = run.x
    s = run.scores(lambda i, j: x * masks[i:j].unsqueeze(1), k, message="score-cam channels")
    w = torch.softmax(s, 0).to(a.dtype).view((1, k) + (1,) * (a.ndim - 2))
    return _finish(run, (w * a).sum(1, keepdim=True).clamp(min=0), {"channel_scores": s.numpy()})


@register(
    "guided_grad_cam",
    label="Guided Grad-CAM: guided backprop x upsampled Grad-CAM",
    family="cam",
    needs_layer=True,
    passes="2F + 2B",
    paper="Selvaraju et al. 2017, arXiv:1610.02391",
    signed=True,
    supports_torchscript=False,
    shared_pass=False,
    needs_grad=True,
    short="GGCAM",
    cost=2,
)
def guided_grad_cam(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``GBP(x) * Up(Grad-CAM)`` per input channel (signed). Equals ``captum.attr.GuidedGradCam(...,
    interpolate_mode="bilinear"/"trilinear")``; Captum's default there is nearest."""
    cam_map = grad_cam(run, params).maps  # (1, *S)
    x = run.x.clone().requires_grad_(True)
    assert run.target is not None
    with activation_rule("guided_backprop"), torch.enable_grad():
        out = first_output(run.model(x))
        (g,) = torch.autograd.grad(run.target(out).sum(), x)
    run.advance(1, "guided backprop")
    return MethodOutput(g[0] * cam_map)
