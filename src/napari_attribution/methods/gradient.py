"""Gradient methods: ``saliency``, ``input_x_gradient``, ``integrated_gradients`` and the ``smoothgrad`` wrapper.

All are dimension-agnostic (2D and 3D) and differentiate the resolved target's score (the pre-softmax logit
for an ``int`` class, methods.md §1.1).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._errors import CompletenessWarning, MethodError, ParameterError
from ._hooks import activation_rule
from ._registry import Cost, get_method, register
from ._run import MethodOutput, Run

#: integrated gradients warns (CompletenessWarning) when its completeness error is above this
INCOMPLETE = 0.05

__all__ = ["baseline_tensor", "integration_rule"]


def _abs_gradient(x: Tensor, g: Tensor) -> Tensor:
    return g.abs()


def _input_x_gradient(x: Tensor, g: Tensor) -> Tensor:
    return x * g


@register(
    "saliency",
    label="Saliency: |d target / d input|, max over channels",
    family="gradient",
    passes="1F + 1B",
    paper="Simonyan et al. 2013, arXiv:1312.6034",
    shared_pass=True,
    needs_input_grad=True,
    short="Sal",
    compare_default=True,
    input_grad_map=_abs_gradient,
)
def saliency(run: Run, params: dict[str, Any]) -> MethodOutput:
    """Vanilla gradient saliency ``M(u) = max_c |dT/dx_c(u)|`` (Simonyan et al., arXiv:1312.6034).

    Equals ``captum.attr.Saliency(abs=True)`` per channel. Cost 1F + 1B (shared in ``compare``).
    """
    assert run.shared is not None and run.shared.grad_input is not None
    return MethodOutput(_abs_gradient(run.x, run.shared.grad_input)[0])


@register(
    "input_x_gradient",
    label="Input x gradient (signed, summed over channels)",
    family="gradient",
    passes="1F + 1B",
    paper="Shrikumar et al. 2016, arXiv:1605.01713",
    signed=True,
    shared_pass=True,
    needs_input_grad=True,
    short="IxG",
    input_grad_map=_input_x_gradient,
)
def input_x_gradient(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``R = x * dT/dx`` per channel, signed; equals ``captum.attr.InputXGradient``. Cost 1F + 1B."""
    assert run.shared is not None and run.shared.grad_input is not None
    return MethodOutput(_input_x_gradient(run.x, run.shared.grad_input)[0])


def integration_rule(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alpha`` in [0, 1] and weights of an ``steps``-point quadrature of ``int_0^1 g(alpha) d alpha``.

    ``"gausslegendre"`` (default, as Captum), ``"riemann_trapezoid"``, ``"riemann_left"``, ``"riemann_right"``,
    ``"riemann_middle"`` — the same nodes and weights as Captum's ``approximation_parameters``, except the
    trapezoid: Captum weights its ``n`` nodes ``1/n`` (halved at the ends), which sum to ``(n-1)/n`` and
    break completeness; ours are the true trapezoid weights ``1/(n-1)``, so our map is Captum's times
    ``n/(n-1)``.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ParameterError(f"steps must be a positive integer, got {steps!r}.")
    n = int(steps)
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (x + 1), 0.5 * w
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ParameterError("The trapezoid rule needs at least 2 steps.")
        alphas = np.linspace(0, 1, n)
        w = np.full(n, 1.0 / (n - 1))
        w[0] = w[-1] = 0.5 / (n - 1)
        return alphas, w
    if rule == "riemann_left":
        return np.arange(n) / n, np.full(n, 1.0 / n)
    if rule == "riemann_right":
        return np.arange(1, n + 1) / n, np.full(n, 1.0 / n)
    if rule == "riemann_middle":
        return (np.arange(n) + 0.5) / n, np.full(n, 1.0 / n)
    raise ParameterError(
        f"Unknown integration rule {rule!r}; use gausslegendre, riemann_trapezoid, riemann_left, "
        "riemann_right or riemann_middle."
    )


def baseline_tensor(x: Tensor, baseline: Any) -> Tensor:
    """The reference input: a number, ``"min"`` (the image minimum: air in CT, background in MRI),
    ``"mean"``, or an array of the input's shape ``(C, *S)`` / ``(*S)``."""
    if isinstance(baseline, str):
        if baseline == "min":
            return torch.full_like(x, float(x.min()))
        if baseline == "mean":
            return torch.full_like(x, float(x.mean()))
        raise ParameterError(f"baseline must be a number, 'min', 'mean' or an array; got {baseline!r}.")
    if isinstance(baseline, (int, float, np.number)):
        return torch.full_like(x, _finite_baseline(float(baseline)))
    b = torch.as_tensor(np.asarray(baseline), dtype=x.dtype, device=x.device)
    if not bool(torch.isfinite(b).all()):
        raise ParameterError("The baseline array contains NaN or infinite values; fill them (e.g. with the image "
                             "minimum) or use baseline='min'.")
    try:
        return b.expand_as(x[0]).unsqueeze(0).clone() if b.ndim < x.ndim else b.expand_as(x).clone()
    except RuntimeError:
        raise ParameterError(
            f"The baseline has shape {tuple(b.shape)}, which does not fit the input {tuple(x.shape[1:])}."
        ) from None


def _ig_cost(p: Mapping[str, Any], spatial: tuple[int, ...], layer_channels: int | None) -> Cost:
    if p.get("steps") == "auto":  # adaptive: at most max_steps gradient evaluations
        return Cost(float(p.get("max_steps") or 512), upper=True)
    return Cost(float(p.get("steps") or 50))


@register(
    "integrated_gradients",
    label="Integrated gradients from a baseline (signed; completeness holds)",
    family="gradient",
    passes="steps x (1F + 1B)",
    paper="Sundararajan et al. 2017, arXiv:1703.01365",
    signed=True,
    params={"steps": "auto", "baseline": "min", "rule": "gausslegendre", "tolerance": 0.01, "max_steps": 128},
    choices={"steps": ("auto", 50, ...), "baseline": ("min", "mean", ...),
             "rule": ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")},
    short="IG",
    cost=_ig_cost,
    # adaptive steps until complete (error < 1 %), at most 128 (16 fixed steps left 39 % on the demo lesion model)
    compare_params={"steps": "auto", "max_steps": 128},
    compare_default=True,
    quick_params={"steps": 4},
)
def integrated_gradients(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``IG_i = (x_i - x'_i) * int_0^1 dT(x' + a (x - x'))/dx_i da``.

    ``steps="auto"`` (the default): adaptive quadrature until the completeness error is below ``tolerance``
    (relative to ``|T(x) - T(x')|``) or ``max_steps`` (default 128) gradient evaluations are spent — see
    :func:`_adaptive_ig`. A fixed step count does not scale: 50 Gauss-Legendre steps left the demo lesion model's
    map 36 % incomplete while the adaptive rule reached 0.2 % with 32. ``steps`` = an integer: an
    ``steps``-point quadrature by ``rule`` (``max_steps`` does not apply); the parameters then map one to one to
    ``captum.attr.IntegratedGradients.attribute(baselines=..., n_steps=steps, method=rule)`` (Captum's default
    rule is also Gauss-Legendre). Steps are processed in chunks sized to the memory budget (``max_batch`` or
    ``memory_budget``), so a 3D volume never needs all steps at once. ``extras["completeness"]`` reports
    ``sum(IG)``, ``T(x) - T(x')``, the relative error and the number of gradient evaluations.
    """
    x = run.x
    b = _baseline_value(x, params["baseline"])
    diff = x - b if isinstance(b, Tensor) or b != 0.0 else x  # x itself for a zero baseline: no copy
    assert run.target is not None and run.output is not None
    full = float(run.target(run.output, probability=False)[0])
    if params["steps"] == "auto":
        acc, evals, base_score = _adaptive_ig(run, b, diff, full, float(params["tolerance"]), int(params["max_steps"]))
    else:
        alphas, weights = integration_rule(params["rule"], params["steps"])
        acc = _weighted_gradients(run, b, diff, alphas, weights, total=len(alphas) + 1)
        evals = len(alphas)
        base_score = _baseline_score(run, b)
    maps = acc.mul_(diff)[0]  # in place: the accumulator becomes the map
    total = float(maps.sum())
    delta = full - base_score
    err = abs(total - delta) / max(abs(delta), 1e-12)
    if err > INCOMPLETE and abs(delta) > 1e-6:
        how = (f"max_steps={params['max_steps']} was reached; raise max_steps" if params["steps"] == "auto"
               else f"{evals} steps; use steps='auto' (adaptive: stops below {float(params['tolerance']):.0%}) or more "
               "steps")
        warnings.warn(CompletenessWarning(
            f"Integrated gradients: the map adds up to {total:.4g} but the score changes by {delta:.4g} from the "
            f"baseline (completeness error {err:.0%}; {how}). The map is incomplete."), stacklevel=2)
    return MethodOutput(
        maps, {"completeness": {"sum": total, "delta": delta, "relative_error": err, "steps": evals}}
    )


def _baseline_value(x: Tensor, baseline: Any) -> Tensor | float:
    """The baseline as a number when it is one value everywhere (no input-sized copy), else as a tensor."""
    if isinstance(baseline, str) and baseline in ("min", "mean"):
        return float(x.min()) if baseline == "min" else float(x.mean())
    if isinstance(baseline, (int, float, np.number)) and not isinstance(baseline, bool):
        return _finite_baseline(float(baseline))
    return baseline_tensor(x, baseline)


def _finite_baseline(value: float) -> float:
    """A baseline number, refused when NaN or infinite (the map would be NaN everywhere)."""
    if not np.isfinite(value):
        raise ParameterError(f"baseline must be a finite number, 'min', 'mean' or an array; got {value!r}.")
    return value


def _baseline_score(run: Run, b: Tensor | float) -> float:
    """``T(x')``, the target's score at the baseline (one forward pass)."""
    make = (lambda s, e: b) if isinstance(b, Tensor) else (lambda s, e: torch.full_like(run.x, b))
    return float(run.scores(make, 1, probability=False, message="baseline")[0])


def _weighted_gradients(
    run: Run, b: Tensor | float, diff: Tensor, alphas: np.ndarray, weights: np.ndarray, *, total: int | None = None,
    scalars: list[float] | None = None,
) -> Tensor:
    """``sum_j w_j dT/dx (b + a_j diff)`` over the nodes, in memory-sized chunks; optionally collects each
    node's directional derivative ``<dT/dx, diff>`` into ``scalars``.

    Memory (written for this project; measured in ``benchmarks/bench_core.py``, row 4b): the path points are
    written into one chunk buffer that is reused, and each gradient is added to the accumulator in place, so
    besides the passes themselves only the accumulator, the buffer and (for a non-zero baseline) ``diff`` are
    input-sized.
    """
    x = run.x
    a = [float(v) for v in np.asarray(alphas)]
    w = [float(v) for v in np.asarray(weights)]
    acc = torch.zeros_like(x)
    if total is not None:
        run.expected_total(total)
    buffer: list[Tensor] = []
    flat_diff = diff.reshape(-1)

    def make(start: int, stop: int) -> Tensor:
        if not buffer or buffer[0].shape[0] < stop - start:
            buffer.clear()
            buffer.append(torch.empty((stop - start,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device))
        xs = buffer[0][: stop - start]
        for j in range(start, stop):
            torch.mul(diff[0], a[j], out=xs[j - start])
            xs[j - start].add_(b if isinstance(b, float) else b[0])
        return xs

    def consume(start: int, stop: int, _xs: Tensor, g: Tensor) -> None:
        for j in range(start, stop):
            acc[0].add_(g[j - start], alpha=w[j])
            if scalars is not None:
                scalars.append(float(torch.dot(g[j - start].reshape(-1), flat_diff)))

    run.input_gradients(make, len(a), consume, message="integrated gradients")
    return acc


def _adaptive_ig(
    run: Run, b: Tensor | float, diff: Tensor, full: float, tolerance: float, max_steps: int
) -> tuple[Tensor, int, float]:
    """Adaptive integrated gradients with an exact error indicator (written for this project).

    Along the straight path ``g(a) = x' + a (x - x')`` the integrand's scalar form, ``<dT/dx(g(a)), x - x'>``,
    integrates over any interval ``[a, b]`` to exactly ``T(g(b)) - T(g(a))``. So each interval's quadrature
    error is known from two forward passes at its ends, without extra backward passes. Start with 4
    intervals of 2 Gauss-Legendre nodes; repeatedly bisect the intervals that carry the largest errors until
    the completeness error (the signed sum of the interval errors) is below ``tolerance * |T(x) - T(x')|`` or
    ``max_steps`` gradient evaluations are spent. ReLU networks are piecewise linear along the
    path, so the error sits in the few intervals that contain kinks, and bisection finds them.
    """
    gl_x, gl_w = np.polynomial.legendre.leggauss(2)
    intervals: list[tuple[float, float]] = [(i / 4, (i + 1) / 4) for i in range(4)]
    ends: dict[float, float] = {1.0: full}
    contrib: dict[tuple[float, float], tuple[Tensor, float]] = {}
    evals = 0
    run.expected_total(max_steps)

    def evaluate(new: list[tuple[float, float]]) -> None:
        nonlocal evals
        points = sorted({p for iv in new for p in iv if p not in ends})
        if points:
            pts = torch.as_tensor(points, dtype=diff.dtype).view((-1,) + (1,) * (diff.ndim - 1)).to(diff.device)
            vals = run.scores(lambda s, e: b + pts[s:e] * diff, len(points), probability=False,
                              message="path end points")
            run.done -= len(points)  # forward-only passes are not counted as gradient evaluations
            ends.update(zip(points, vals.tolist(), strict=True))
        for lo, hi in new:
            nodes = lo + (hi - lo) * 0.5 * (gl_x + 1)
            weights = (hi - lo) * 0.5 * gl_w
            scalars: list[float] = []
            acc = _weighted_gradients(run, b, diff, nodes, weights, scalars=scalars)
            evals += len(nodes)
            estimate = float(np.dot(weights, scalars))
            contrib[(lo, hi)] = (acc, estimate - (ends[hi] - ends[lo]))

    evaluate(intervals)
    delta = full - ends[0.0]
    goal = tolerance * max(abs(delta), 1e-2)
    while True:
        errors = sorted(((abs(contrib[iv][1]), iv) for iv in intervals), reverse=True)
        total_err = sum(e for e, _ in errors)
        if abs(sum(contrib[iv][1] for iv in intervals)) <= goal or evals + 4 > max_steps:
            break
        split: list[tuple[float, float]] = []
        covered = 0.0
        for e, iv in errors:  # bisect the worst intervals, covering at least half of the error
            if covered >= total_err / 2 or evals + 4 * (len(split) + 1) > max_steps:
                break
            split.append(iv)
            covered += e
        new = []
        for lo, hi in split:
            mid = 0.5 * (lo + hi)
            intervals.remove((lo, hi))
            del contrib[(lo, hi)]
            intervals += [(lo, mid), (mid, hi)]
            new += [(lo, mid), (mid, hi)]
        evaluate(new)
    acc = torch.zeros_like(diff)
    for iv in intervals:
        acc.add_(contrib[iv][0])
    return acc, evals, ends[0.0]


def _smoothgrad_cost(p: Mapping[str, Any], spatial: tuple[int, ...], layer_channels: int | None) -> Cost:
    one = get_method(str(p.get("base") or "saliency")).estimate(p.get("base_params") or {}, spatial,
                                                                 layer_channels=layer_channels)
    n = float(p.get("samples") or 50)
    return Cost(n * one.passes, one.upper, flops=n * one.flops)


def _smoothgrad_split(p: Mapping[str, Any], passes: float) -> tuple[float, float]:
    """Its passes run as the base method's do."""
    base = get_method(str(p.get("base") or "saliency"))
    return base.split_passes(base.resolve_params(p.get("base_params") or {}), passes)


@register(
    "smoothgrad",
    label="SmoothGrad: a gradient method averaged over noisy copies of the input",
    family="gradient",
    passes="samples x base",
    paper="Smilkov et al. 2017, arXiv:1706.03825",
    params={"base": "saliency", "samples": 50, "sigma": 0.15, "squared": False, "base_params": None},
    choices={"base": ("saliency", "input_x_gradient", "integrated_gradients", "guided_backprop", "deconvnet",
                      "response_backprojection", ...)},
    short="SG",
    stochastic=True,
    cost=_smoothgrad_cost,
    pass_kind=_smoothgrad_split,
    compare_params={"samples": 16},
    quick_params={"samples": 3},
)
def smoothgrad(run: Run, params: dict[str, Any]) -> MethodOutput:
    """``M_hat(x) = (1/n) sum_j M(x + e_j)``, ``e_j ~ N(0, s^2)``, ``s = sigma * (x_max - x_min)``.

    ``base`` is any gradient method (``saliency``, ``input_x_gradient``, ``guided_backprop``, ``deconvnet``,
    ``integrated_gradients``, ...). ``sigma`` is a *fraction of the input range* (paper: 0.1-0.2, n = 50);
    Captum's ``NoiseTunnel(stdevs=...)`` takes the absolute ``s`` instead: ``stdevs = sigma * (max - min)``.
    Noise is drawn per sample from a generator seeded with ``seed`` (the stream matches Captum's
    ``NoiseTunnel(nt_samples_batch_size=1)`` after ``torch.manual_seed(seed)``). ``squared=True`` averages
    squared maps (SmoothGrad-Squared). With ``sigma=0`` the result equals the base method.
    """
    base = params["base"]
    info = get_method(base)
    if info.name == "smoothgrad" or info.family not in ("gradient", "backward_rule"):
        raise MethodError(f"smoothgrad wraps a gradient method; {base!r} is a {info.family} method.")
    n = int(params["samples"])
    if n < 1:
        raise ParameterError("samples must be at least 1.")
    sigma = float(params["sigma"])
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ParameterError(f"sigma must be a finite number >= 0 (a fraction of the input's intensity range), got "
                             f"{params['sigma']!r}.")
    x = run.x
    std = sigma * float(x.max() - x.min())
    std_t = torch.full(x.shape, std, dtype=x.dtype)

    def noise() -> Tensor:
        return torch.normal(0.0, std_t, generator=run.generator).to(x.device)

    acc: Tensor | None = None

    def add(m: Tensor) -> None:
        nonlocal acc
        m = m * m if params["squared"] else m
        acc = m.sum(0) if acc is None else acc + m.sum(0)

    grad_map = info.input_grad_map
    if grad_map is not None:  # a map of the input gradient alone: batched input gradients of the noisy copies
        run.expected_total(n)
        noisy: list[Tensor] = []

        def make(start: int, stop: int) -> Tensor:
            noisy.clear()
            noisy.extend(x + noise() for _ in range(start, stop))
            return torch.cat(noisy)

        def consume(_s: int, _e: int, xs: Tensor, g: Tensor) -> None:
            add(grad_map(xs, g))

        if info.rule is None:
            run.input_gradients(make, n, consume, message="smoothgrad")
        else:
            with activation_rule(info.rule):
                run.input_gradients(make, n, consume, message="smoothgrad")
    else:
        assert info.fn is not None
        sub_params = info.resolve_params({**(params.get("base_params") or {}), "seed": params["seed"]})
        run.expected_total(n)
        for _ in range(n):
            sub = run.derive(x + noise(), sub_params)
            add(info.fn(sub, sub_params).maps[None])
            run.advance(1, "smoothgrad")
    assert acc is not None
    return MethodOutput(acc / n, {"base": info.name, "stdev": std})
