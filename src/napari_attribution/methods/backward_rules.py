"""ReLU backward-rule methods: ``guided_backprop`` and ``deconvnet``.

Both are one forward and one backward pass in which every ReLU-like activation gets a modified backward
(``_hooks.activation_rule``): guided backprop keeps ``1[a_in > 0] 1[R_out > 0] R_out``; the deconvnet
passes ``max(R_out, 0)`` and ignores the forward mask. ``stride_fix=True`` replaces the backward of strided
convolutions by Oramas et al.'s nearest-resize + stride-1 transposed convolution (methods.md §A5.3). Max-pooling
keeps its switches (autograd), convolutions become transposed convolutions with the same weights and stride
(autograd). The rule reaches ``nn.ReLU``
(also in-place), ``F.relu`` / ``torch.relu_`` calls, and MONAI's activation modules; PReLU (MONAI's UNet
default), LeakyReLU, ELU, GELU and SiLU get the same treatment of the incoming gradient (guided: positive
part of the incoming gradient times the activation's own derivative; deconvnet: positive part only).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._registry import register
from ._run import MethodOutput, Run


def _gradient(x: Tensor, g: Tensor) -> Tensor:
    """The map is the input gradient under the activation rule."""
    return g


@register(
    "guided_backprop",
    label="Guided backpropagation (ReLU rule: positive gradients through active units)",
    family="backward_rule",
    passes="1F + 1B",
    paper="Springenberg et al. 2014, arXiv:1412.6806",
    signed=True,
    supports_torchscript=False,
    shared_pass=True,
    needs_input_grad=True,
    rule="guided_backprop",
    params={"stride_fix": False},
    short="GBP",
    input_grad_map=_gradient,
)
def guided_backprop(run: Run, params: dict[str, Any]) -> MethodOutput:
    """Guided backprop input map per channel (signed). Equals ``captum.attr.GuidedBackprop`` on models whose
    ReLUs are ``nn.ReLU`` modules; unlike Captum it also handles ``F.relu`` and in-place ReLUs.
    ``stride_fix=True`` applies Oramas et al.'s fix for strided convolutions (a visualisation heuristic that
    removes checkerboard artefacts; not the gradient)."""
    assert run.shared is not None and run.shared.grad_input is not None
    return MethodOutput(run.shared.grad_input[0])


@register(
    "deconvnet",
    label="Deconvnet back-projection (ReLU rule: positive gradients, forward mask ignored)",
    family="backward_rule",
    passes="1F + 1B",
    paper="Zeiler & Fergus 2013, arXiv:1311.2901",
    signed=True,
    supports_torchscript=False,
    shared_pass=True,
    needs_input_grad=True,
    rule="deconvnet",
    params={"stride_fix": False},
    short="Deconv",
    input_grad_map=_gradient,
)
def deconvnet(run: Run, params: dict[str, Any]) -> MethodOutput:
    """Deconvnet input map per channel (signed). Equals ``captum.attr.Deconvolution`` on models whose ReLUs
    are ``nn.ReLU`` modules; in-place ReLUs are made out of place so the forward mask is never re-applied
    (otherwise a deconvnet silently becomes guided backprop). ``stride_fix=True`` applies Oramas et al.'s fix
    for strided convolutions (transposed convolutions with stride > 1 leave checkerboards)."""
    assert run.shared is not None and run.shared.grad_input is not None
    return MethodOutput(run.shared.grad_input[0])
