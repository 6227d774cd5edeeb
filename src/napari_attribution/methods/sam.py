"""``sam``: the saliency activation map of Philbrick et al. (AJR 2018; doi 10.2214/AJR.18.20331) —
**our reconstruction** (methods.md §A3.1, Part E): the paper's exact formula was not available.

Definition used (default, ``variant="voxel"``)::

    M^l(u)   = ReLU( sum_k A^l_k(u) * G_k(u) ),   G = dT/dA^l taken as a constant (detached)
    SAM^l(x) = | d/dx sum_u M^l(u) |   (max over input channels)

a voxel-level map at every depth: which input voxels drive the part of layer l that supports the target. It
reduces to ordinary saliency when l is the output. ``variant="layer"`` gives ``ReLU(sum_k A_k * G_k)`` at the
layer's resolution, upsampled — the same computation as ``hires_cam`` — for the paper's layer-by-layer
comparison with Grad-CAM. ``reduce`` switches the channel combination: ``"relu"`` (default), ``"abs"``
(``sum_k |A_k G_k|``) or ``"signed"`` (no ReLU). Cost: 1F + 2B (voxel) or 1F + 1B (layer).
"""

from __future__ import annotations

from typing import Any

import torch

from .._errors import MethodError, ParameterError
from ._registry import register
from ._run import MethodOutput, Run


@register(
    "sam",
    label="SAM (reconstruction: voxel-level saliency of the class-weighted activation at layer l)",
    family="cam",
    needs_layer=True,
    passes="1F + 2B",
    paper="Philbrick et al. 2018, AJR 211(6):1184, doi:10.2214/AJR.18.20331 (motivation; reconstruction)",
    supports_torchscript=False,
    params={"variant": "voxel", "reduce": "relu"},
    choices={"variant": ("voxel", "layer"), "reduce": ("relu", "abs", "signed")},
    needs_graph=True,
    short="SAM",
)
def sam(run: Run, params: dict[str, Any]) -> MethodOutput:
    """Saliency activation map (reconstruction, see the module docstring). Works at any layer, shallow or deep;
    unsigned except with ``reduce="signed"`` in the layer variant."""
    assert run.graph is not None and run.target is not None
    x, out, act = run.graph
    if act is None or act.ndim < 3:
        raise MethodError(f"SAM needs a layer with spatial output; {run.layer_name!r} has none.")
    score = run.target(out).sum()
    (g,) = torch.autograd.grad(score, act, retain_graph=params["variant"] == "voxel" or run.shares_graph)
    run.advance(1, "layer gradient")
    prod = act * g.detach()
    if params["reduce"] == "relu":
        m = prod.sum(1, keepdim=True).clamp(min=0)
    elif params["reduce"] == "abs":
        m = prod.abs().sum(1, keepdim=True)
    elif params["reduce"] == "signed":
        m = prod.sum(1, keepdim=True)
    else:
        raise ParameterError("reduce must be 'relu', 'abs' or 'signed'.")
    layer_map = m.detach()[0, 0].cpu().numpy()
    if params["variant"] == "layer":
        return MethodOutput(run.upsample(m.detach())[0], {"layer_map": layer_map})
    if params["variant"] != "voxel":
        raise ParameterError("variant must be 'voxel' (default) or 'layer'.")
    if not x.requires_grad:
        raise MethodError("The input does not require a gradient; SAM's voxel variant cannot run.")
    (gx,) = torch.autograd.grad(m.sum(), x, allow_unused=True, retain_graph=run.shares_graph)
    run.advance(1, "input gradient")
    gx = torch.zeros_like(x) if gx is None else gx
    return MethodOutput(gx[0].abs(), {"layer_map": layer_map})
