"""``captum:<ClassName>``: any ``captum.attr`` primary or layer attribution class as a method.

The model is wrapped in a module that returns the resolved target's score per batch item, so every Captum
class sees a ``(B,)`` output (``target=None``) and segmentation targets (regions, voxels, contrasts) work
with all of them. Layer classes get the chosen layer module and their result is summed over channels and
upsampled (bilinear / trilinear) like the built-in layer methods. Parameters are passed to
``.attribute(...)`` unchanged, except ``init`` (a dict of constructor keyword arguments) and the common ones
(``seed`` seeds the global torch, numpy and ``random`` generators, which Captum's classes draw from —
GradientShap its path points and baselines from numpy's — and their states are restored afterwards, so the
caller's state is untouched and a seed gives the same map every time).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._errors import MethodError
from ._registry import COMMON_PARAMS, MethodInfo
from ._run import MethodOutput, Run, first_output

__all__ = ["captum_method_info"]


class _ScoreModule(nn.Module):
    """``x -> T(model(x))``: the target's score per batch item, shape ``(B,)``."""

    def __init__(self, model: nn.Module, run: Run) -> None:
        super().__init__()
        self.model = model
        self._run = run

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        assert self._run.target is not None
        return self._run.target(first_output(self.model(x)))


def _captum_class(class_name: str) -> type:
    try:
        import captum.attr as ca
    except ImportError as err:  # pragma: no cover - captum is a dependency
        raise MethodError("captum methods need the captum package: pip install captum") from err
    cls = getattr(ca, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, ca.Attribution):
        names = sorted(n for n in dir(ca)
                       if isinstance(getattr(ca, n), type) and issubclass(getattr(ca, n), ca.Attribution))
        raise MethodError(f"captum.attr has no attribution class {class_name!r}. Available: {', '.join(names)}.")
    if issubclass(cls, ca.NeuronAttribution) or class_name in ("NoiseTunnel", "LRP", "LayerLRP"):
        raise MethodError(
            f"captum:{class_name} is not supported through the adapter (it needs a neuron index, another "
            "attribution method or per-layer rules). Use a primary or layer attribution class, or the "
            "built-in smoothgrad wrapper instead of NoiseTunnel."
        )
    return cls


def captum_method_info(class_name: str) -> MethodInfo:
    """A :class:`MethodInfo` for ``captum.attr.<class_name>`` (raises :class:`MethodError` if unusable)."""
    import captum.attr as ca

    cls = _captum_class(class_name)
    is_layer = issubclass(cls, ca.LayerAttribution) or class_name.startswith("Layer")
    hook_based = is_layer or class_name in ("GuidedBackprop", "Deconvolution", "GuidedGradCam", "DeepLift",
                                            "DeepLiftShap")

    def fn(run: Run, params: dict[str, Any]) -> MethodOutput:
        return _run_captum(cls, is_layer, run, params)

    return MethodInfo(
        name=f"captum:{class_name}",
        label=f"Captum {class_name}",
        family="captum",
        needs_layer=is_layer,
        signed=True,
        passes="as in Captum",
        paper="Kokhlikyan et al. 2020, arXiv:2009.07896 (Captum)",
        supports_torchscript=not hook_based,
        params={"init": None, "*": None},
        short=class_name,
        fn=fn,
    )


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the global torch, numpy and ``random`` generators inside the block; restore their states after."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _run_captum(cls: type, is_layer: bool, run: Run, params: dict[str, Any]) -> MethodOutput:
    wrapped = _ScoreModule(run.model, run)
    init = dict(params.get("init") or {})
    kwargs = {k: v for k, v in params.items() if k not in COMMON_PARAMS and k not in ("init", "*")}
    try:
        method = cls(wrapped, run.layer, **init) if is_layer else cls(wrapped, **init)
    except TypeError as err:
        raise MethodError(f"Cannot construct captum {cls.__name__}: {err}. Pass constructor arguments as "
                          "params={'init': {...}}.") from err
    run.check_cancel()
    x = run.x.clone().requires_grad_(True)
    with _seeded(int(params.get("seed") or 0)):
        with torch.enable_grad():
            try:
                result = method.attribute(x, **kwargs)
            except TypeError as err:
                raise MethodError(f"captum {cls.__name__}.attribute rejected the parameters: {err}") from err
    run.advance(1, f"captum {cls.__name__}")
    attr = result[0] if isinstance(result, tuple) else result
    attr = attr.detach()
    if is_layer:
        if attr.ndim < 3:
            raise MethodError(f"captum {cls.__name__} gave a non-spatial layer attribution {tuple(attr.shape)}.")
        return MethodOutput(run.upsample(attr.sum(1, keepdim=True))[0])
    return MethodOutput(attr[0])
