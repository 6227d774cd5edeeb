"""The state one explanation works on, and the batched pass helpers every method shares.

A :class:`Run` holds the model (already guarded: eval mode, frozen parameters), one input ``x`` of shape
``(1, C, *S)``, the resolved target, the chosen layer, the seeded generator, the memory budget, progress
and cancellation. Methods never loop over passes themselves: they call :meth:`Run.scores` or
:meth:`Run.input_gradients`, which chunk the work to the memory budget, poll ``cancel`` between chunks and
report progress.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import Cancelled, MemoryBudgetError, MethodError
from ..inferers import SlidingWindowNet, default_memory_budget, gpu_budget, sliding_window_of
from ..inputs import OnScanGrid, is_script, unwrap
from ..targets import ResolvedTarget
from ._hooks import capture_layer, output_meter, saved_tensor_meter

__all__ = ["MethodOutput", "Run", "SharedPasses", "first_output", "upsample"]

Progress = Callable[[int, int, str], None]


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def first_output(out: Any) -> Tensor:
    """The explained output of a model: the first element of a list/tuple (deep supervision), or ``"out"``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (list, tuple)) and out:
        return first_output(out[0])
    if isinstance(out, dict) and out:
        return first_output(out["out"] if "out" in out else next(iter(out.values())))
    raise MethodError(f"The model returned {type(out).__name__}; expected a tensor (or a list/dict of tensors).")


def upsample(m: Tensor, size: tuple[int, ...]) -> Tensor:
    """Resample a layer map ``(N, K, *S_l)`` to the input grid ``S`` (linear / bilinear / trilinear,
    ``align_corners=False``), in torch."""
    if tuple(m.shape[2:]) == tuple(size):
        return m
    if m.ndim - 2 != len(size):
        raise MethodError(
            f"The layer's output has {m.ndim - 2} spatial axes but the input has {len(size)}; "
            "choose a layer with spatial output of the input's dimensionality."
        )
    if m.dtype not in (torch.float32, torch.float64):
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
        return F.interpolate(m, size=size, mode=mode, align_corners=False)
    # the same interpolation as F.interpolate(mode="(bi/tri)linear", align_corners=False), done one axis at a time
    # as a product with a small (out x in) weight matrix: a layer map is tiny and the output large, so this costs
    # less than aten's kernel (measured: 64^3 from 4^3 in 0.37 ms against 0.9 ms, one thread)
    for axis, n_out in zip(range(2, m.ndim), size, strict=True):
        if m.shape[axis] != n_out:
            w = _linear_weights(m.shape[axis], n_out, m.dtype, m.device)
            m = torch.movedim(torch.movedim(m, axis, -1) @ w.T, -1, axis)
    return m.contiguous()


def _linear_weights(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(n_out, n_in)`` weights of 1D linear interpolation with PyTorch's ``align_corners=False`` convention:
    source ``(i + 0.5) * n_in / n_out - 0.5`` clamped at 0, neighbours ``floor`` and ``floor + 1`` (clamped)."""
    return _linear_weights64(n_in, n_out).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _linear_weights64(n_in: int, n_out: int) -> Tensor:
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    lam = src - i0
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    w.index_put_((rows, i0), 1 - lam, accumulate=True)
    w.index_put_((rows, i1), lam, accumulate=True)
    return w


@dataclass
class MethodOutput:
    """What a method returns.

    ``maps`` is ``(C, *S)`` (one map per input channel) or ``(1, *S)`` (one map for the whole input), on the
    input grid, raw (never min-max normalised). ``extras`` holds named method-specific arrays or numbers.
    """

    maps: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class SharedPasses:
    """One forward and one backward of the target: output, layer activation and the two gradients."""

    output: Tensor
    activation: Tensor | None = None
    grad_activation: Tensor | None = None
    grad_input: Tensor | None = None


class Run:
    """One input, one target, one model: the context methods compute in."""

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        *,
        layer: nn.Module | None,
        layer_name: str | None,
        params: dict[str, Any],
        progress: Progress | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> None:
        self.model = model
        self.x = x.detach()
        self.layer = layer
        self.layer_name = layer_name
        self.params = params
        self._progress = progress
        self._cancel = cancel
        self.target: ResolvedTarget | None = None
        self.output: Tensor | None = None
        self.shared: SharedPasses | None = None
        self.shared_layers: dict[str, SharedPasses] = {}
        self.graph: tuple[Tensor, Tensor, Tensor | None] | None = None
        #: a sweep's kept forward graph, per layer; while several layers use it, methods must retain it
        self.graphs: dict[str, tuple[Tensor, Tensor, Tensor | None]] = {}
        self.shares_graph = False
        self.sample_bytes = 0
        self.done = 0
        self.total = 1
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(params.get("seed") or 0))
        #: the card's sliding-window inferer inside the model, if any (see :mod:`napari_attribution.inferers`)
        self.windows: SlidingWindowNet | None = sliding_window_of(model)
        if self.windows is not None:
            self.windows.budget = self.memory_budget()
            if progress is not None or cancel is not None:
                self.windows.observer = self._window_done

    def memory_budget(self) -> int:
        """The job's memory budget in bytes: ``params["memory_budget"]``, else half of the memory available now
        (and on a GPU at most 80 % of its free memory)."""
        given = self.params.get("memory_budget")
        budget = int(given) if given else default_memory_budget()
        return gpu_budget(self.x.device, budget)

    #: inputs below this many voxels are not checked against the memory budget before running (their passes are small)
    CHECK_VOXELS = 64**3

    def check_memory(self, backward: bool) -> None:
        """Refuse, before the first pass, a whole-scan input whose one forward (+ backward) would not fit the memory
        budget, with the budget it needs. The network's activation memory is measured on two small crops of the
        input (a trial forward each, 32 and 64 voxels per axis, autograd recording) and extrapolated linearly in the
        voxel count; the scan-sized input, output and gradients are added. A sliding-window network checks its own
        (:class:`~napari_attribution.inferers.SlidingWindowNet`); networks that do not run on the crops are not
        checked."""
        if self.windows is not None or self.x.numel() // self.x.shape[1] < self.CHECK_VOXELS:
            return
        budget = self.memory_budget()
        need = self._estimated_bytes(backward)
        if need is not None and need > budget:
            raise MemoryBudgetError(
                f"This scan needs about {_gib(need)} for one "
                f"{'forward and backward pass' if backward else 'forward pass'} of the whole scan, more than the "
                f"memory budget of {_gib(budget)}. Give params memory_budget of at "
                f"least {need} bytes (the default is half of the free memory); or, for a network trained on patches, "
                "give its model card a sliding-window 'inferer' (roi_size = the training patch), which needs only "
                "one window's memory."
            )

    def _estimated_bytes(self, backward: bool) -> int | None:
        net = unwrap(self.model)
        xm = self._model_grid(self.x) if isinstance(self.model, OnScanGrid) else self.x
        spatial = tuple(int(n) for n in xm.shape[2:])
        points: list[tuple[int, int, int]] = []  # (voxels, bytes, output channels)
        for side in (32, 64):
            crop = tuple(min(n, side) for n in spatial)
            if points and math.prod(crop) == points[-1][0]:
                break
            x = xm[(slice(0, 1), slice(None), *(slice(0, c) for c in crop))].detach()
            try:
                if backward:
                    with torch.enable_grad(), saved_tensor_meter() as saved:
                        y = first_output(net(x.clone().requires_grad_(True)))
                    used = saved.bytes
                elif is_script(net):
                    return None
                else:
                    with torch.no_grad(), output_meter(net) as out:
                        y = first_output(net(x))
                    used = 3 * out.largest
            except Exception:  # noqa: BLE001 - a network that does not take the crop is simply not checked
                return None
            points.append((math.prod(crop), int(used), int(y.shape[1]) if y.ndim > 1 else 1))
            del y
        voxels = math.prod(spatial)
        (v1, b1, k), (v2, b2, _) = points[0], points[-1]
        per = (b2 - b1) / (v2 - v1) if v2 > v1 else b1 / v1
        fixed = max(0.0, b1 - per * v1)
        scan = 4 * math.prod(self.x.shape[2:]) * (2 * self.x.shape[1] + 2 * k)
        return int(fixed + per * voxels + scan)

    def _window_done(self, done: int, total: int, what: str) -> None:
        """Progress inside one pass of a sliding-window network (a pass over all windows is one unit of work),
        and cancellation within one chunk of windows."""
        if self._progress is not None:
            self._progress(min(self.done * total + done, self.total * total), self.total * total,
                           f"{what} {done}/{total}")
        self.check_cancel()

    # ---- progress and cancellation -------------------------------------------------------------
    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` when the caller asked to stop."""
        if self._cancel is not None and self._cancel():
            raise Cancelled("The explanation was cancelled; no result was produced.")

    def advance(self, steps: int, message: str) -> None:
        """Report ``steps`` more units of work done."""
        self.done += steps
        if self._progress is not None:
            self._progress(min(self.done, self.total), self.total, message)
        self.check_cancel()

    # ---- the first pass ---------------------------------------------------------------------------
    def first_pass(
        self,
        resolve: Callable[[Tensor], ResolvedTarget],
        *,
        backward: bool,
        layer: bool,
        input_grad: bool,
        keep_graph: bool = False,
        measure: bool = True,
        layers: Mapping[str, nn.Module] | None = None,
    ) -> SharedPasses:
        """Forward ``x`` once (capturing the layer), fix the target on the output, and if asked backward once
        for the layer and input gradients. Also measures the activation memory of one sample.

        ``layers`` (name -> module, for a layer sweep): capture all of them in the same forward pass and get
        all their gradients from the same backward pass (it stops at the shallowest), or with ``keep_graph``
        keep the one forward graph for all of them; :meth:`use_layer` then selects the one the next method
        sees. Measured (benchmarks/bench_sweep.py): grad_cam at the 29 layers of the vessel demo in 0.14 s instead
        of 2.5 s for one pass per layer."""
        x = self.x.detach().requires_grad_(input_grad)  # a new tensor on the same storage: no copy
        need_graph = backward or input_grad
        if not need_graph:
            # a forward-only method through a sliding-window network (a perturbation method): the unperturbed
            # input's stitched forward becomes the reference its perturbations are blended against, and this pass
            # reads its output from it, so the windows run once for both
            self.reference_windows()
        no_grad_meter = measure and not need_graph and not is_script(self.model)
        with torch.set_grad_enabled(need_graph), (saved_tensor_meter() if measure else nullcontext()) as meter, \
                (output_meter(self.model) if no_grad_meter else nullcontext()) as out_meter:
            wanted: dict[str, nn.Module] = dict(layers) if layers else \
                ({self.layer_name or "": self.layer} if layer and self.layer is not None else {})
            with ExitStack() as stack:
                caps = {name: stack.enter_context(capture_layer(mod, grad=backward)) for name, mod in wanted.items()}
                out = first_output(self.model(x))
            acts: dict[str, Tensor] = {}
            for name, cap in caps.items():
                if cap.activation is None:
                    raise MethodError(f"Layer {name!r} did not run in the forward pass.")
                acts[name] = cap.activation
            act = acts.get(self.layer_name or "") if layer else None
        measured = meter.bytes if meter is not None else 0
        if out_meter is not None:  # forward-only methods: autograd saved nothing, measure the activations
            measured = max(measured, 3 * out_meter.largest)
        self.sample_bytes = max(measured, int(x.numel() * x.element_size() * 8))
        self.output = out.detach()
        self.target = resolve(self.output)
        per_layer = {name: SharedPasses(output=self.output, activation=a.detach()) for name, a in acts.items()}
        grad_input: Tensor | None = None
        if backward:
            layer_acts = list(acts.values()) if layer else []
            wrt = layer_acts + ([x] if input_grad else [])
            if not all(t.requires_grad for t in wrt) or not out.requires_grad:
                raise MethodError(
                    "The model's output does not depend differentiably on the input or layer; "
                    "gradient methods cannot be used (try occlusion or rise)."
                )
            grads = torch.autograd.grad(self.target(out).sum(), wrt, allow_unused=True)
            for (name, a), g in zip(acts.items() if layer else [], grads, strict=False):
                per_layer[name].grad_activation = torch.zeros_like(a) if g is None else g.detach()
            if input_grad:
                g = grads[-1]
                grad_input = torch.zeros_like(x) if g is None else g.detach()
        for sp in per_layer.values():
            sp.grad_input = grad_input
        shared = per_layer.get(self.layer_name or "") if layer and act is not None else None
        if shared is None:
            shared = SharedPasses(output=self.output, grad_input=grad_input)
        self.shared = shared
        self.shared_layers = per_layer
        if keep_graph:
            self.graph = (x, out, act)
            self.graphs = {name: (x, out, a) for name, a in acts.items()}
            self.shares_graph = len(self.graphs) > 1
        return shared

    def use_layer(self, name: str, module: nn.Module) -> None:
        """Point the run at layer ``name`` of a sweep's first pass (:meth:`first_pass` with ``layers``): the
        next method sees that layer's activation and gradients."""
        self.layer, self.layer_name = module, name
        self.shared = self.shared_layers[name]
        if name in self.graphs:
            self.graph = self.graphs[name]

    def derive(self, x: Tensor, params: dict[str, Any]) -> Run:
        """A run on another input ``x`` with the same model, layer, target and cancellation (no progress
        reports: the caller reports). The target stays the one fixed at the original input."""
        sub = Run(self.model, x, layer=self.layer, layer_name=self.layer_name, params=params, cancel=self._cancel)
        sub.target = self.target
        sub.sample_bytes = self.sample_bytes
        with torch.no_grad():
            sub.output = first_output(self.model(x)).detach()
        return sub

    # ---- sliding-window networks (the card's inferer) ----------------------------------------------
    def _model_grid(self, x: Tensor) -> Tensor:
        """``x`` on the network's grid (the scan itself unless the network is wrapped on the scan's grid)."""
        return self.model.prepared.to_model(x) if isinstance(self.model, OnScanGrid) else x

    def _on_scan(self, y: Tensor) -> Tensor:
        """A network-grid output or map ``(N, K, *M)`` on the scan's grid (classification outputs pass)."""
        if isinstance(self.model, OnScanGrid) and y.ndim == self.x.ndim:
            return self.model.prepared.to_scan(y)
        return y

    def windowed_layer_maps(
        self,
        resolve: Callable[[Tensor], ResolvedTarget],
        fns: Mapping[str, tuple[Callable[[Run, dict[str, Any]], MethodOutput], dict[str, Any]]],
        *,
        need_grad: bool,
    ) -> dict[str, MethodOutput]:
        """Layer methods through a sliding-window network: one stitched forward fixes the target on the stitched
        output; then every window runs again with the layer captured and a backward that stops there, carrying the
        window's share of the global target's gradient. Each method computes its layer map per window (its
        reductions, e.g. Grad-CAM's channel weights, are the window's), and the maps are blended with the inferer's
        weights into one map on the scan's grid. Extras hold the window count."""
        sw = self.windows
        assert sw is not None and self.layer is not None
        with torch.no_grad():
            xm = self._model_grid(self.x)
            out_m = sw(xm).detach()
        self.sample_bytes = max(self.sample_bytes, int(self.x.numel() * self.x.element_size() * 8))
        out_m.requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            out = self._on_scan(out_m)
        self.output = out.detach()
        self.target = resolve(self.output)
        grad: Tensor | None = None
        if need_grad:
            (grad,) = torch.autograd.grad(self.target(out).sum(), out_m)
        acc: dict[str, Tensor] = {}
        plan = sw.plan(xm.shape[2:])
        w, _ = plan.weights(xm.device)
        den = torch.zeros(plan.padded, dtype=torch.float32, device=xm.device)
        window_x = torch.zeros((1, xm.shape[1]) + sw.spec.roi_size, dtype=xm.dtype, device=xm.device)

        def consume(b: int, i: int, act: Tensor, ga: Tensor) -> None:
            sub = Run(sw.net, window_x, layer=self.layer, layer_name=self.layer_name, params={}, cancel=self._cancel)
            sub.target = self.target
            sub.shared = SharedPasses(output=out_m, activation=act, grad_activation=ga if need_grad else None)
            for name, (fn, params) in fns.items():
                sub.params = params
                m = fn(sub, params).maps
                if name not in acc:
                    acc[name] = torch.zeros((m.shape[0],) + plan.padded, dtype=torch.float32, device=xm.device)
                acc[name][(slice(None), *plan.slices[i])] += m.float() * w
            den[plan.slices[i]] += w

        sw.layer_windows(xm, grad, self.layer, consume)
        crop = plan.crop()
        outs: dict[str, MethodOutput] = {}
        for name, a in acc.items():
            blended = (a / den.clamp(min=1e-12))[(slice(None), *crop)]
            outs[name] = MethodOutput(self._on_scan(blended[None])[0],
                                      {"windows": len(plan), "blend": "per-window layer maps blended with the "
                                       "inferer's weights"})
        return outs

    def _windowed_logit_gradient(self, xs: Tensor) -> Tensor:
        """The gradient of a logit target (linear in the output: its output gradient is the target's weights,
        whatever the output) through a sliding-window network, with one forward + backward per window and no
        stitched forward first: the weights, brought to the network's grid by the adjoint of the wrap's resampling,
        go straight to :meth:`SlidingWindowNet.input_gradient`. Equal to autograd through the stitched output."""
        sw = self.windows
        assert sw is not None and self.target is not None
        n = xs.shape[0]
        weights = self.target.weights.to(device=xs.device, dtype=xs.dtype)
        with torch.enable_grad():
            xm = self._model_grid(xs)
            grid = tuple(xm.shape[2:])
            if weights.ndim > 1 and isinstance(self.model, OnScanGrid):
                # the adjoint of to_scan (linear) at the weights: the output gradient on the network's grid
                om = torch.zeros((1, weights.shape[0]) + grid, dtype=xs.dtype, device=xs.device, requires_grad=True)
                (gm,) = torch.autograd.grad(self.model.prepared.to_scan(om), om, weights[None])
            else:
                gm = weights[None]
            gxm = sw.input_gradient(xm.detach(), gm.expand((n,) + tuple(gm.shape[1:])))
            if xm is xs:
                return gxm
            (g,) = torch.autograd.grad(xm, xs, gxm)
        return g

    def reference_windows(self) -> None:
        """Perturbation methods on a sliding-window network: make the unperturbed input the network's reference,
        so that each perturbed input runs only the windows it changes (:meth:`SlidingWindowNet.set_reference`)."""
        sw = self.windows
        if sw is not None and sw._reference is None:
            with torch.no_grad():
                sw.set_reference(self._model_grid(self.x))

    # ---- batched helpers ----------------------------------------------------------------------------
    #: a chunk's activations are capped at this many bytes (besides the memory budget), so that a chunk is
    #: short and ``cancel()`` / progress respond quickly; activation bytes are a deterministic proxy of the
    #: work, so the chunking, and hence the result to the last bit, does not depend on the machine's load
    RESPONSIVE_BYTES = 64 * 2**20
    #: on the CPU a pass stops getting cheaper per sample once its activations reach a few MiB, so a chunk holds no
    #: more samples than needed to reach this: bigger chunks cost memory and, once they spill out of the caches,
    #: time. Measured: IG on the 96^3 benchmark network (11 MiB per sample) is as fast per sample in chunks of one
    #: as of two (single-sample convolutions on oneDNN, see ``fast_cpu_conv3d``); ``evidence`` on the 2D
    #: contrast-phase demo (529 windows) takes 0.55-0.6 s in chunks of 8-16 windows, 1.6-1.9 s in chunks of 64-256.
    EFFICIENT_BYTES = 8 * 2**20

    def batch_size(self, n: int, factor: float = 2.5) -> int:
        """How many samples go in one chunk: ``params["max_batch"]``, or the memory budget divided by the measured
        activation memory of one sample (times ``factor`` for the backward pass), capped by
        :attr:`RESPONSIVE_BYTES` of activations per chunk and, on the CPU, by :attr:`EFFICIENT_BYTES`."""
        fixed = self.params.get("max_batch")
        if fixed:
            return max(1, min(n, int(fixed)))
        budget = float(self.memory_budget())
        sample = max(1.0, float(self.sample_bytes))
        by_memory = int(budget // (sample * factor))
        by_work = int(self.RESPONSIVE_BYTES // sample)
        size = max(1, min(n, by_memory, by_work))
        if self.x.device.type == "cpu":
            size = min(size, max(1, -int(-self.EFFICIENT_BYTES // sample)))
        return size

    def scores(
        self,
        make: Callable[[int, int], Tensor],
        n: int,
        *,
        probability: bool | None = None,
        message: str = "forward passes",
    ) -> Tensor:
        """Target scores of ``n`` inputs built chunk by chunk: ``make(start, stop) -> (stop-start, C, *S)``.
        Returns ``(n,)``. No gradients."""
        assert self.target is not None
        self.reference_windows()
        out = torch.empty(n, dtype=torch.float32)
        start = 0
        with torch.no_grad():
            while start < n:
                stop = min(n, start + self.batch_size(n - start, factor=1.0))
                self.check_cancel()
                y = first_output(self.model(make(start, stop)))
                out[start:stop] = self.target(y, probability).float().cpu()
                self.advance(stop - start, message)
                start = stop
        return out

    def input_gradients(
        self,
        make: Callable[[int, int], Tensor],
        n: int,
        consume: Callable[[int, int, Tensor, Tensor], None],
        *,
        message: str = "gradient passes",
    ) -> None:
        """Gradients of the target w.r.t. ``n`` inputs built chunk by chunk. For each chunk calls
        ``consume(start, stop, inputs, grads)`` with ``grads`` of shape ``(stop-start, C, *S)``."""
        assert self.target is not None
        start = 0
        while start < n:
            stop = min(n, start + self.batch_size(n - start))
            self.check_cancel()
            xs = make(start, stop).detach().requires_grad_(True)
            if self.windows is not None and not self.target.uses_probability(False):
                g = self._windowed_logit_gradient(xs)
            else:
                with torch.enable_grad():
                    y = first_output(self.model(xs))
                    (g,) = torch.autograd.grad(self.target(y).sum(), xs, allow_unused=True)
                del y
            consume(start, stop, xs.detach(), torch.zeros_like(xs) if g is None else g)
            del xs, g  # before the next chunk's passes, not after them
            self.advance(stop - start, message)
            start = stop

    def expected_total(self, n: int) -> None:
        """Tell the progress reporter how many units of work this run has."""
        self.total = max(1, n)

    def spatial(self) -> tuple[int, ...]:
        """The input's spatial shape ``S``."""
        return tuple(self.x.shape[2:])

    def upsample(self, m: Tensor) -> Tensor:
        """A layer map ``(N, K, *S_l)`` on the input grid ``S``. When the network sees a resampled / padded grid
        (:class:`~napari_attribution.inputs.OnScanGrid`), the layer covers that grid: the map is brought to it,
        cropped and resampled to the scan, so it lines up with the scan's voxels."""
        if isinstance(self.model, OnScanGrid):
            if m.ndim - 2 != len(self.spatial()):
                raise MethodError(
                    f"The layer's output has {m.ndim - 2} spatial axes but the input has {len(self.spatial())}; "
                    "choose a layer with spatial output of the input's dimensionality."
                )
            return self.model.prepared.to_scan(m)
        return upsample(m, self.spatial())

