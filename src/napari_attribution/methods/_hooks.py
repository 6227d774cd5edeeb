"""The only place where hooks and function modes are registered; every one is removed in ``finally``.

- :func:`model_guard` puts a model in eval mode without parameter gradients and restores every module's
  ``training`` flag and every parameter's ``requires_grad`` afterwards, also when the method raises.
- :func:`capture_layer` records one module's output (a forward hook).
- :func:`record_module_outputs` records the output shapes of all modules (layer discovery).
- :func:`record_channel_energy` keeps, per named module, the per-channel sum of squares of its output
  (``vebi``'s responses) and never the activation itself.
- :func:`activation_rule` replaces the backward pass of ReLU-like activations (guided backprop, deconvnet) with
  a thread-local :class:`torch.overrides.TorchFunctionMode`: it reaches ``nn.ReLU`` (in-place or not),
  ``F.relu``, ``torch.relu_`` and ``Tensor.relu`` alike, plus PReLU, LeakyReLU, ELU, SELU, CELU, GELU, SiLU and
  Mish, and never patches ``torch.nn.functional`` for the process (the widget runs work in threads).
- :func:`saved_tensor_meter` measures the bytes autograd saves during a forward pass, for memory budgets.
- :func:`fast_cpu_conv3d` runs single-sample 3D convolutions on the CPU with the oneDNN (mkldnn) kernel that
  PyTorch itself uses for batches of two or more (a thread-local function mode; see its docstring).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._lock import model_lock

__all__ = [
    "ChannelEnergy",
    "LayerCapture",
    "activation_rule",
    "capture_layer",
    "fast_cpu_conv3d",
    "model_guard",
    "record_channel_energy",
    "record_module_outputs",
    "saved_tensor_meter",
]


@contextmanager
def model_guard(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with frozen parameters; restore both flags on exit.

    Parameters are frozen so that backward passes compute input and activation gradients only (less memory
    and time); the user's ``.grad`` fields are never written because methods use ``torch.autograd.grad``.
    """
    # the model's lock (re-entrant; explain / evaluate already hold it): another thread's guard on the same model
    # waits, so the two never interleave these switches (methods/_lock.py)
    with model_lock(model):
        # only what needs changing is touched (cheap for a model that is already in eval mode and frozen)
        training = [m for m in model.modules() if m.training]
        trainable = [p for p in model.parameters() if p.requires_grad]
        try:
            for m in training:
                m.training = False
            for p in trainable:
                p.requires_grad_(False)
            yield model
        finally:
            for p in trainable:
                p.requires_grad_(True)
            for m in training:
                m.training = True


@dataclass
class LayerCapture:
    """Holds the activation of the captured layer after a forward pass."""

    activation: Tensor | None = None


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    return None


@contextmanager
def capture_layer(layer: nn.Module, *, grad: bool = True) -> Iterator[LayerCapture]:
    """Record ``layer``'s output tensor during the forward passes inside the block.

    With ``grad=True`` the captured activation requires grad even when nothing below it does (then the
    backward pass stops at the layer: Grad-CAM costs one forward and a partial backward). The model continues
    with a copy of the activation, so an in-place operation after the layer (``ReLU(inplace=True)``) cannot
    change what was captured.
    """
    holder = LayerCapture()

    def hook(_module: nn.Module, inputs: Any, output: Any) -> Any:
        act = _first_tensor(output)
        if act is None:
            return None
        if grad and torch.is_grad_enabled() and not act.requires_grad:
            act = act.detach().requires_grad_(True)
        elif act.requires_grad and any(act is t for t in inputs):
            # the layer returned its input (nn.Identity, eval-mode dropout): that tensor also feeds the layer's
            # siblings (a residual unit's identity branch and its convolutions), so its gradient would include
            # theirs. A view is the layer's own output node: its gradient comes from the layer's consumers only.
            act = act.view_as(act)
        holder.activation = act
        copy = act.clone()
        if isinstance(output, Tensor):
            return copy
        return type(output)([copy, *output[1:]]) if isinstance(output, (tuple, list)) else None

    handle = layer.register_forward_hook(hook)
    try:
        yield holder
    finally:
        handle.remove()


@contextmanager
def record_module_outputs(model: nn.Module) -> Iterator[list[tuple[str, tuple[int, ...], Any]]]:
    """Record ``(name, output shape, weakref(output))`` of every submodule, in the order their forward returns."""
    records: list[tuple[str, tuple[int, ...], Any]] = []
    handles = []

    def make(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            t = _first_tensor(output)
            if t is not None:
                records.append((name, tuple(t.shape), weakref.ref(t)))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make(name)))
        yield records
    finally:
        for h in handles:
            h.remove()


@dataclass
class ChannelEnergy:
    """Per-channel energies recorded by :func:`record_channel_energy` in the last forward pass.

    ``values[name]`` is ``(B, K)`` float32 (detached) with ``sum_u A_k(u)^2`` for a ``(B, K, *S)`` output and
    ``A_k^2`` for a ``(B, K)`` output; ``calls[name]`` counts how often the module ran since the last
    :meth:`clear` (a module that runs twice in one forward pass keeps its last energies).
    """

    values: dict[str, Tensor] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget the previous forward pass."""
        self.values.clear()
        self.calls.clear()


@contextmanager
def record_channel_energy(modules: dict[str, nn.Module]) -> Iterator[ChannelEnergy]:
    """Record the per-channel sum of squares of each module's output (``{name: module}``) inside the block.

    Only the ``(B, K)`` energies are kept, so memory does not grow with the activations' size; the hook runs
    before any later in-place operation can change the output.
    """
    record = ChannelEnergy()
    handles = []

    def make(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            t = _first_tensor(output)
            if t is None or t.ndim < 2:
                return
            sq = t.detach().float().pow(2)
            record.values[name] = sq.flatten(2).sum(2) if sq.ndim > 2 else sq
            record.calls[name] = record.calls.get(name, 0) + 1

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make(name)))
        yield record
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------------
# backward rules for activations


class _PositiveGrad(torch.autograd.Function):
    """Identity forward; backward keeps the positive part of the incoming gradient (guided backprop)."""

    @staticmethod
    def forward(ctx: Any, y: Tensor) -> Tensor:  # noqa: D102
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: D102
        return grad.clamp(min=0)


class _Deconv(torch.autograd.Function):
    """Forward returns the activation's value; backward passes ``max(R_out, 0)`` straight to the input,
    ignoring the forward mask (Zeiler & Fergus deconvnet)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad.clamp(min=0), None


def _stride1_size(n: int, k: int, p: int, d: int) -> int:
    return n + 2 * p - d * (k - 1)


class _StrideFixConv(torch.autograd.Function):
    """A strided convolution whose backward pass is the stride fix of Oramas et al. (arXiv:1712.06302, §A5.3):
    the output gradient is resized (nearest) to the stride-1 output size and back-projected with a stride-1
    transposed convolution, which removes the checkerboard of a strided transposed convolution. A
    visualisation heuristic, not the gradient; magnitudes grow by about ``stride ** ndim``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any,
                dilation: Any, groups: int) -> Tensor:  # noqa: D102
        nd = weight.ndim - 2
        conv = F.conv2d if nd == 2 else F.conv3d
        ctx.save_for_backward(weight)
        ctx.meta = (tuple(x.shape[2:]), padding, dilation, groups)
        return conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:  # noqa: D102
        (weight,) = ctx.saved_tensors
        shape, padding, dilation, groups = ctx.meta
        nd = weight.ndim - 2
        pad = _per_dim(padding, nd)
        dil = _per_dim(dilation, nd)
        size = [_stride1_size(n, k, p, d) for n, k, p, d in zip(shape, weight.shape[2:], pad, dil, strict=False)]
        g = F.interpolate(grad, size=size, mode="nearest")
        convt = F.conv_transpose2d if nd == 2 else F.conv_transpose3d
        gx = convt(g, weight, stride=1, padding=pad, dilation=dil, groups=groups)
        return gx, None, None, None, None, None, None


def _per_dim(value: Any, nd: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * nd
    return tuple(int(v) for v in value)


def _conv_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = (None, None, None, 1, 0, 1, 1)
    values = list(args) + [kwargs.get(n, d) for n, d in zip(names[len(args):], defaults[len(args):], strict=True)]
    return tuple(values)


_CONVS = {F.conv2d, F.conv3d, torch.conv2d, torch.conv3d}


# out-of-place function for each activation entry point; the in-place ones write the result back
_OUT_OF_PLACE: dict[Callable[..., Any], Callable[..., Any]] = {
    F.relu: F.relu,
    torch.relu: torch.relu,
    torch.relu_: torch.relu,
    Tensor.relu: torch.relu,
    Tensor.relu_: torch.relu,
    F.leaky_relu: F.leaky_relu,
    F.prelu: F.prelu,
    torch.prelu: torch.prelu,
    F.elu: F.elu,
    F.selu: F.selu,
    F.celu: F.celu,
    F.gelu: F.gelu,
    F.silu: F.silu,
    F.mish: F.mish,
}
_ALWAYS_INPLACE = {torch.relu_, Tensor.relu_, getattr(F, "relu_", None), getattr(F, "leaky_relu_", None),
                   getattr(F, "elu_", None), getattr(torch, "selu_", None), getattr(torch, "celu_", None)}
for _f in [getattr(F, "relu_", None), getattr(F, "leaky_relu_", None), getattr(F, "elu_", None)]:
    if _f is not None:
        _OUT_OF_PLACE[_f] = cast("Callable[..., Any]",
                                 {F.relu_: F.relu, F.leaky_relu_: F.leaky_relu, F.elu_: F.elu}[_f])
_ALWAYS_INPLACE.discard(None)


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward is the deconvnet rule ``max(R_out, 0)`` (one op; in place when the call was)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, inplace: bool) -> Tensor:  # noqa: D102
        if inplace:
            ctx.mark_dirty(x)
            return x.clamp_(min=0)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad.clamp(min=0), None


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward is the guided rule ``1[a > 0] max(R_out, 0)`` (replaces ReLU's own backward)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, inplace: bool) -> Tensor:  # noqa: D102
        if inplace:
            ctx.mark_dirty(x)
            out = x.clamp_(min=0)
        else:
            out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        (out,) = ctx.saved_tensors
        # ReLU's own backward kernel (one pass, one new tensor) then the positive part in place: 0.21 ms against
        # 4.4 ms for ``torch.where(out > 0, grad.clamp(min=0), zeros)`` on a 8 x 48^3 activation (one thread)
        return torch.ops.aten.threshold_backward(grad, out, 0).clamp_(min=0), None


class _ActivationRuleMode(TorchFunctionMode):
    """Thread-local function mode that gives every ReLU-like activation the ``rule``'s backward pass."""

    def __init__(self, rule: str | None, stride_fix: bool = False) -> None:
        super().__init__()
        self.rule = rule
        self.stride_fix = stride_fix
        self.count = 0
        self.fixed_convs = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if self.stride_fix and func in _CONVS:
            x, weight, bias, stride, padding, dilation, groups = _conv_args(args, kwargs)
            strided = any(s > 1 for s in _per_dim(stride, weight.ndim - 2))
            if strided and isinstance(x, Tensor) and x.requires_grad and not isinstance(padding, str):
                self.fixed_convs += 1
                return _StrideFixConv.apply(  # type: ignore[no-untyped-call]
                    x, weight, bias, stride, padding, dilation, groups)
            return func(*args, **kwargs)
        plain = _OUT_OF_PLACE.get(func) if self.rule is not None else None
        if plain is None:
            return func(*args, **kwargs)
        x = args[0]
        inplace = func in _ALWAYS_INPLACE or bool(kwargs.pop("inplace", False))
        rest = list(args[1:])
        if plain in (F.relu, F.selu, F.silu, F.mish) and rest:
            inplace = inplace or bool(rest.pop())  # F.relu(x, True)
        elif plain in (F.leaky_relu, F.elu, F.celu) and len(rest) == 2:
            inplace = inplace or bool(rest.pop())
        if not isinstance(x, Tensor) or not x.requires_grad:
            y = plain(x, *rest, **kwargs)
        elif plain is F.relu or plain is torch.relu:
            # ReLU (the common case): one fused Function, in place when the call was (measured: about 10 % of a
            # forward + backward less than the generic path below on a 2D CNN with in-place ReLUs)
            self.count += 1
            fn = _DeconvReLU if self.rule == "deconvnet" else _GuidedReLU
            if inplace and not x.is_leaf:
                return fn.apply(x, True)  # type: ignore[no-untyped-call]
            y = fn.apply(x, False)  # type: ignore[no-untyped-call]
            return x.copy_(y) if inplace else y
        elif self.rule == "deconvnet":
            with torch.no_grad():
                value = plain(x.detach(), *rest, **kwargs)
            y = _Deconv.apply(x, value)  # type: ignore[no-untyped-call]
        else:  # guided backprop: positive part of the incoming gradient, then the activation's own derivative
            y = _PositiveGrad.apply(plain(x, *rest, **kwargs))  # type: ignore[no-untyped-call]
        self.count += 1
        if inplace:
            return x.copy_(y)
        return y


@contextmanager
def activation_rule(rule: str | None, *, stride_fix: bool = False) -> Iterator[_ActivationRuleMode]:
    """Give every ReLU-like activation called inside the block the backward ``rule``.

    ``rule="guided_backprop"``: ``R_in = f'(a_in) * max(R_out, 0)`` (for ReLU ``1[a_in > 0] 1[R_out > 0] R_out``).
    ``rule="deconvnet"``: ``R_in = max(R_out, 0)``, the forward mask ignored. Other activations (PReLU,
    LeakyReLU, ELU, GELU, SiLU, ...) get the same treatment of the incoming gradient. In-place activations
    are computed out of place and written back, so the original mask is never applied after the rule.
    The mode is thread-local: other threads keep normal autograd.

    ``stride_fix=True`` also gives every strided 2D/3D convolution the stride-fix backward of Oramas et al.
    (``_StrideFixConv``); ``rule=None`` with ``stride_fix=True`` changes only the convolutions.
    """
    if rule not in ("guided_backprop", "deconvnet", None):
        raise ValueError(f"unknown rule {rule!r}")
    mode = _ActivationRuleMode(rule, stride_fix)
    with mode:
        yield mode


@dataclass
class OutputMeter:
    """The largest output (bytes) of any leaf module during a forward pass without autograd."""

    largest: int = 0


@contextmanager
def output_meter(model: nn.Module) -> Iterator[OutputMeter]:
    """Measure a no-grad forward pass's footprint: its peak is about the input plus two consecutive activations,
    bounded here by three times the largest leaf output (forward hooks on leaf modules, removed on exit)."""
    meter = OutputMeter()

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        t = _first_tensor(output)
        if t is not None:
            meter.largest = max(meter.largest, t.numel() * t.element_size())

    handles = []
    try:
        for m in model.modules():
            if not any(True for _ in m.children()):
                handles.append(m.register_forward_hook(hook))
        yield meter
    finally:
        for h in handles:
            h.remove()


@dataclass
class SavedTensorMeter:
    """Bytes of distinct tensors that autograd saved for backward inside the block."""

    bytes: int = 0
    _seen: set[tuple[int, int]] = field(default_factory=set)


@contextmanager
def saved_tensor_meter() -> Iterator[SavedTensorMeter]:
    """Measure the activation memory a forward pass keeps for its backward pass."""
    meter = SavedTensorMeter()

    def pack(t: Tensor) -> Tensor:
        try:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensors
            key = (id(t), 0)
        if key not in meter._seen:
            meter._seen.add(key)
            meter.bytes += key[1]
        return t.detach()  # never ``t`` itself: a saved output would then hold its own graph (a leak)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield meter


# ---------------------------------------------------------------------------------------------------------------
# single-sample 3D convolutions on the CPU


class _OneDnnConv3d(torch.autograd.Function):
    """A 3D convolution computed by ``aten.mkldnn_convolution`` (forward) and, backward, for a stride-1 convolution
    without groups the input gradient as the oneDNN convolution of the output gradient with the flipped,
    transposed kernel (``padding' = dilation * (k - 1) - padding``); otherwise, and for weight and bias gradients,
    ``aten.convolution_backward`` (the kernel PyTorch's own autograd calls)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
                dilation: list[int], groups: int) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, None if bias is None else list(bias.shape))
        return cast(Tensor, torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:  # noqa: D102
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, bias_shape = ctx.conf
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias_shape is not None and ctx.needs_input_grad[2]]
        grad = grad.contiguous()
        gx = None
        k = weight.shape[2:]
        flipped_pad = [d * (n - 1) - p for d, n, p in zip(dilation, k, padding, strict=True)]
        if mask[0] and groups == 1 and all(v == 1 for v in stride) and min(flipped_pad) >= 0:
            # measured on the 96^3 benchmark network: 2.4 ms against 10.7 ms for its three stride-1 layers
            flipped = weight.transpose(0, 1).flip(2, 3, 4).contiguous()
            gx = torch.ops.aten.mkldnn_convolution(grad, flipped, None, flipped_pad, [1, 1, 1], dilation, 1)
            mask = [False, mask[1], mask[2]]
        gw = gb = None
        if any(mask):
            gx_, gw, gb = torch.ops.aten.convolution_backward(
                grad, x, weight, bias_shape, stride, padding, dilation, False, [0] * len(stride), groups, mask,
            )
            gx = gx_ if gx is None else gx
        return gx, gw, gb, None, None, None, None


class _FastConv3dMode(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.conv3d or func is torch.conv3d:
            x, weight, bias, stride, padding, dilation, groups = _conv_args(args, kwargs)
            if (isinstance(x, Tensor) and x.ndim == 5 and x.shape[0] == 1 and x.device.type == "cpu"
                    and x.dtype == torch.float32 and isinstance(weight, Tensor) and weight.dtype == torch.float32
                    and not isinstance(padding, str) and x.layout == torch.strided):
                conf = (list(_per_dim(stride, 3)), list(_per_dim(padding, 3)), list(_per_dim(dilation, 3)), int(groups))
                self.count += 1
                if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                or (bias is not None and bias.requires_grad)):
                    return _OneDnnConv3d.apply(x, weight, bias, *conf)  # type: ignore[no-untyped-call]
                stride_, padding_, dilation_, groups_ = conf
                return torch.ops.aten.mkldnn_convolution(x, weight, bias, padding_, stride_, dilation_, groups_)
        return func(*args, **kwargs)


def _onednn_usable() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)  # type: ignore[no-untyped-call]


@contextmanager
def fast_cpu_conv3d(model: nn.Module, device: torch.device | str | None = None) -> Iterator[_FastConv3dMode | None]:
    """Run the single-sample float32 3D convolutions of ``model`` on the CPU with the oneDNN kernel.

    Why (measured, torch 2.13 CPU): PyTorch picks its convolution kernel by a rule written for 2D — oneDNN
    when the batch has more than one sample or ``N*C*H*W > 20480`` counting only the first depth-like axes of a
    5D input — so a single 3D volume of a typical medical network (``C*D*H`` well below 20480) goes through the
    slow im2col kernel (``slow_conv3d_forward``). On the 96^3 benchmark network one forward takes 13.6 ms of
    convolution there against 3.3 ms with oneDNN, and a forward + backward 35 ms against 28 ms; with batch 2
    PyTorch already uses oneDNN, so without this mode single-sample passes are 1.4x slower per sample than batched
    ones and the memory-lean one-sample chunks cost time. Here the forward runs ``aten.mkldnn_convolution`` (the kernel
    PyTorch uses for batched input) and the backward ``aten.convolution_backward`` (PyTorch's own); results
    agree with the default kernel to float32 rounding. Thread-local (a function mode): other threads and the
    model itself are untouched. Active only on the CPU, when oneDNN is available and enabled
    (``torch.backends.mkldnn.enabled``) and the model has ``nn.Conv3d`` modules; nothing is done otherwise.
    """
    dev = torch.device(device) if device is not None else None
    convs = any(isinstance(m, nn.Conv3d) for m in model.modules())
    if not convs or not _onednn_usable() or (dev is not None and dev.type != "cpu") \
            or isinstance(model, torch.jit.ScriptModule):
        yield None
        return
    mode = _FastConv3dMode()
    with mode:
        yield mode
