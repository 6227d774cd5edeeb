"""One registry of attribution methods.

Every method is a function ``fn(run, params) -> MethodOutput`` registered under a canonical name with
:func:`register`. The registry entry (:class:`MethodInfo`) is the one place that knows a method's facts: what it
computes, its paper, its parameters and choices, what it costs (:meth:`MethodInfo.estimate`), whether it draws
random numbers (a seed), its short table name, its Compare-dock defaults, its quick test settings and its fast
paths. It feeds :func:`napari_attribution.list_methods`, the docks (dropdowns, seed row, tables, cost estimate),
the CLI's choices, the parametrised tests and the generated method tables (``scripts/gen_method_docs.py``), so a
method exists in all of them as soon as it is registered (CONTRIBUTING.md: adding a method).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from .._errors import MethodError, ParameterError

if TYPE_CHECKING:
    from torch import Tensor

    from ._run import MethodOutput, Run

__all__ = ["Cost", "MethodInfo", "get_method", "list_methods", "register"]

MethodFn = Callable[["Run", dict[str, Any]], "MethodOutput"]


@dataclass(frozen=True)
class Cost:
    """What one run of a method costs on one input (see :meth:`MethodInfo.estimate`).

    Attributes
    ----------
    passes : float
        Model passes (forward, or forward + backward).
    upper : bool
        ``passes`` is an upper bound (adaptive methods such as integrated gradients with ``steps="auto"``).
    forward : float
        How many of the passes are forward-only (a forward costs about a third of a forward + backward).
    partial : float
        How many of the passes have a backward that stops at a layer (Grad-CAM and its kin).
    flops : float
        Work besides the model, in floating-point operations per input channel (the window methods' patch model).
    """

    passes: float
    upper: bool = False
    forward: float = 0.0
    partial: float = 0.0
    flops: float = 0.0


#: a method's pass count: ``cost(params, spatial, layer_channels)`` with the method's resolved parameters, the
#: spatial shape of one model input and the chosen layer's channel count (None when unknown); ``forward`` and
#: ``partial`` of the returned :class:`Cost` are filled in from the method's ``pass_kind``
CostFn = Callable[[Mapping[str, Any], tuple[int, ...], "int | None"], Cost]

#: how a method's passes run: all with a full backward to the input, all with a backward that stops at a layer, or
#: all forward-only
PassKind = Literal["full", "partial", "forward"]

#: a pass kind that depends on the parameters: ``(params, passes) -> (forward-only passes, partial passes)``
PassSplitFn = Callable[[Mapping[str, Any], float], tuple[float, float]]

#: the map from an input batch ``x`` and the target's input gradient ``g`` at it (both ``(N, C, *S)``) -> the
#: per-channel maps ``(N, C, *S)``
InputGradMap = Callable[["Tensor", "Tensor"], "Tensor"]


def _one_pass(params: Mapping[str, Any], spatial: tuple[int, ...], layer_channels: int | None) -> Cost:
    return Cost(1.0)

#: parameters every method accepts (handled by the pipeline, not by the method)
COMMON_PARAMS: Mapping[str, Any] = MappingProxyType(
    {"seed": 0, "max_batch": None, "memory_budget": None, "slices": None, "patch_local": False}
)


@dataclass(frozen=True)
class MethodInfo:
    """What a registered method computes and what it costs.

    Attributes
    ----------
    name : str
        Canonical registry key, e.g. ``"grad_cam"``.
    label : str
        What is computed, in words (shown in the GUI).
    family : str
        ``"gradient"``, ``"backward_rule"``, ``"cam"``, ``"perturbation"``, ``"layer"`` or ``"captum"``.
    needs_layer : bool
        The method works on an internal layer (``layer=`` applies).
    signed : bool
        The map has a meaningful sign (evidence for and against).
    passes : str
        Cost in forward (F) and backward (B) passes, e.g. ``"1F + 1B"`` or ``"steps x (1F + 1B)"``.
    paper : str
        The reference (arXiv id or DOI).
    supports_torchscript : bool
        Works on TorchScript models (which take no module hooks).
    params : Mapping[str, Any]
        The method's own parameters and their defaults (the common ones are in ``COMMON_PARAMS``).
    choices : Mapping[str, tuple]
        The values some parameters take, e.g. ``{"mode": ("conditional_mean", "taylor", "screened")}`` (the GUI
        shows them as a drop-down, the method reference lists them). A tuple that ends with ``...``
        (Ellipsis) is open: the listed values are the usual ones, but the method also takes others (a number, an
        array), e.g. ``{"baseline": ("min", "mean", ...)}``; without ``...`` the set is closed. A parameter's
        default is one of its listed choices, except a default of None ("automatic"), which need not be listed.
        Use :meth:`choice_list` to read it.
    shared_pass : bool
        Computed from the one shared forward + backward pass (activations, layer and input gradients), so
        ``compare`` computes several such methods for the price of one.
    needs_input_grad, needs_grad : bool
        What the shared pass must provide: the input gradient; any backward pass at all.
    rule : str or None
        The activation backward rule the shared pass runs under (``"guided_backprop"``, ``"deconvnet"``).
    needs_graph : bool
        The method differentiates the first forward pass itself (it keeps the autograd graph).
    layer_optional : bool
        The method uses a layer only when one is given (e.g. a unit to back-project).
    short : str
        A short name for table headers (the Compare dock's agreement and landmark tables), e.g. ``"GradCAM"``.
    stochastic : bool
        The map depends on random numbers drawn from the run's seeded generator: the ``seed`` parameter matters
        (the Explain dock shows a seed row).
    cost : callable
        ``cost(params, spatial, layer_channels) -> Cost``: the pass count on one input (see :class:`Cost`; use
        :meth:`estimate`). Registered as a number for a fixed count; one pass when not given.
    pass_kind : str or callable
        How the passes run: ``"full"`` (forward + backward to the input), ``"partial"`` (the backward stops at
        the layer) or ``"forward"`` (no backward); or ``(params, passes) -> (forward-only, partial)`` when it
        depends on the parameters.
    compare_params : Mapping[str, Any]
        Cheaper settings the Compare dock uses for a side-by-side look (the Explain dock uses the defaults).
    compare_default : bool
        Ticked in the Compare dock when it opens.
    quick_params : Mapping[str, Any]
        Settings that keep a run small on a test-sized input (up to 24 x 24 pixels or 8^3 voxels): the test suite
        runs every method with them.
    input_grad_map : callable or None
        The map as a function of the input and its gradient (``InputGradMap``), computed under ``rule``: such a
        method is computed from batched input gradients alone (smoothgrad's fast path).
    """

    name: str
    label: str
    family: str
    needs_layer: bool
    signed: bool
    passes: str
    paper: str
    supports_torchscript: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=lambda: MappingProxyType({}))
    shared_pass: bool = False
    needs_input_grad: bool = False
    needs_grad: bool = True
    rule: str | None = None
    needs_graph: bool = False
    layer_optional: bool = False
    short: str = ""
    stochastic: bool = False
    cost: CostFn = field(default=_one_pass, repr=False, compare=False)
    pass_kind: PassKind | PassSplitFn = "full"
    compare_params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    compare_default: bool = False
    quick_params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    input_grad_map: InputGradMap | None = field(default=None, repr=False, compare=False)
    fn: MethodFn | None = field(default=None, repr=False, compare=False)

    @property
    def sliding_window(self) -> str | None:
        """How the method runs through a card's sliding-window inferer (:mod:`napari_attribution.inferers`):
        ``"exact"`` (gradients of the stitched output, window by window), ``"per-window"`` (layer maps computed per
        window and blended with the inferer's weights), ``"changed windows"`` (perturbations run only the windows
        they change), or None (not available through an inferer)."""
        if self.family == "gradient" or (self.family == "backward_rule" and self.shared_pass):
            return "exact"
        if self.needs_layer and self.shared_pass:
            return "per-window"
        if self.family == "perturbation":
            return "changed windows"
        return None

    def choice_list(self, key: str) -> tuple[tuple[Any, ...], bool]:
        """``key``'s listed choices (without the ``...`` marker) and whether it also takes other values.

        A parameter without choices gives ``((), True)``.

        Examples
        --------
        >>> import napari_attribution as na
        >>> na.get_method("evidence").choice_list("mode")
        (('conditional_mean', 'taylor', 'screened', 'conditional_sample'), False)
        >>> na.get_method("occlusion").choice_list("baseline")
        (('min', 'mean'), True)
        """
        listed = self.choices.get(key, (...,))
        if listed and listed[-1] is Ellipsis:
            return listed[:-1], True
        return listed, False

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Merge ``params`` with the defaults; unknown keys raise :class:`ParameterError`."""
        merged: dict[str, Any] = {**COMMON_PARAMS, **self.params}
        for key, value in (params or {}).items():
            if key not in merged and "*" not in self.params:
                known = ", ".join(sorted(set(self.params) | set(COMMON_PARAMS)))
                raise ParameterError(
                    f"Method {self.name!r} does not take the parameter {key!r}. It takes: {known}."
                )
            merged[key] = value
        _check_common(merged)
        return merged

    def split_passes(self, params: Mapping[str, Any], passes: float) -> tuple[float, float]:
        """How many of ``passes`` are forward-only and how many have a partial backward, by ``pass_kind``
        (``params`` resolved)."""
        if callable(self.pass_kind):
            return self.pass_kind(params, passes)
        if self.pass_kind == "partial":
            return 0.0, passes
        if self.pass_kind == "forward":
            return passes, 0.0
        return 0.0, 0.0

    def estimate(self, params: Mapping[str, Any] | None, spatial: tuple[int, ...], *,
                 layer_channels: int | None = None) -> Cost:
        """What a run with ``params`` costs on one input of spatial shape ``spatial`` (the chosen layer has
        ``layer_channels`` channels, None when unknown); unknown parameters raise :class:`ParameterError`.

        Examples
        --------
        >>> import napari_attribution as na
        >>> na.get_method("integrated_gradients").estimate({"steps": 16}, (64, 64))
        Cost(passes=16.0, upper=False, forward=0.0, partial=0.0, flops=0.0)
        >>> na.get_method("grad_cam").estimate(None, (64, 64)).partial
        1.0
        """
        p = self.resolve_params(params)
        cost = self.cost(p, tuple(spatial), layer_channels)
        forward, partial = self.split_passes(p, cost.passes)
        return dataclasses.replace(cost, forward=forward, partial=partial)


def _check_common(params: Mapping[str, Any]) -> None:
    """Refuse chunking parameters that would be silently replaced or break the chunking: a ``memory_budget`` that
    is not a positive number of bytes (0 used to mean the default) and a ``max_batch`` below 1 (0 used to mean
    "by memory")."""
    budget = params.get("memory_budget")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not math.isfinite(float(budget)) \
                or budget <= 0:
            raise ParameterError(
                f"memory_budget must be a positive number of bytes (e.g. 536870912 for 512 MiB), got {budget!r}; "
                "leave it out for the default."
            )
    local = params.get("patch_local")
    if local is not None and not isinstance(local, bool):
        raise ParameterError(f"patch_local must be true or false, got {local!r}.")
    batch = params.get("max_batch")
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, numbers.Real) or not float(batch).is_integer() \
                or batch < 1:
            raise ParameterError(
                f"max_batch must be a whole number of at least 1 (samples per chunk), got {batch!r}; leave it out "
                "to size the chunks by memory_budget."
            )


_REGISTRY: dict[str, MethodInfo] = {}


def register(
    name: str,
    *,
    label: str,
    family: str,
    passes: str,
    paper: str,
    needs_layer: bool = False,
    signed: bool = False,
    supports_torchscript: bool = True,
    params: Mapping[str, Any] | None = None,
    choices: Mapping[str, tuple[Any, ...]] | None = None,
    shared_pass: bool = False,
    needs_input_grad: bool = False,
    needs_grad: bool = True,
    rule: str | None = None,
    needs_graph: bool = False,
    layer_optional: bool = False,
    short: str = "",
    stochastic: bool = False,
    cost: CostFn | float | None = None,
    pass_kind: PassKind | PassSplitFn = "full",
    compare_params: Mapping[str, Any] | None = None,
    compare_default: bool = False,
    quick_params: Mapping[str, Any] | None = None,
    input_grad_map: InputGradMap | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` as the method ``name`` (decorator); the keywords are :class:`MethodInfo`'s attributes
    (``cost`` may be a number: a fixed pass count).

    ``choices`` is checked here: each key is one of ``params``, ``...`` appears only last, and the default is one
    of the listed choices (or None); so are the keys of ``compare_params`` and ``quick_params`` and ``pass_kind``.
    A mistake raises ``ValueError`` at import time.
    """
    frozen_params = MappingProxyType(dict(params or {}))
    frozen_choices = MappingProxyType(_check_choices(name, frozen_params, choices or {}))
    settings = {what: MappingProxyType(_check_settings(name, what, frozen_params, given or {}))
                for what, given in (("compare_params", compare_params), ("quick_params", quick_params))}
    if not callable(pass_kind) and pass_kind not in ("full", "partial", "forward"):
        raise ValueError(f"method {name!r}: pass_kind must be 'full', 'partial', 'forward' or a function, "
                         f"got {pass_kind!r}.")
    cost_fn = _fixed_cost(float(cost)) if isinstance(cost, (int, float)) else (cost or _one_pass)

    def decorate(fn: MethodFn) -> MethodFn:
        if name in _REGISTRY:
            raise RuntimeError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodInfo(
            name=name,
            label=label,
            family=family,
            needs_layer=needs_layer,
            signed=signed,
            passes=passes,
            paper=paper,
            supports_torchscript=supports_torchscript,
            params=frozen_params,
            choices=frozen_choices,
            shared_pass=shared_pass,
            needs_input_grad=needs_input_grad,
            needs_grad=needs_grad,
            rule=rule,
            needs_graph=needs_graph,
            layer_optional=layer_optional,
            short=short,
            stochastic=stochastic,
            cost=cost_fn,
            pass_kind=pass_kind,
            compare_params=settings["compare_params"],
            compare_default=compare_default,
            quick_params=settings["quick_params"],
            input_grad_map=input_grad_map,
            fn=fn,
        )
        return fn

    return decorate


def _fixed_cost(passes: float) -> CostFn:
    def cost(params: Mapping[str, Any], spatial: tuple[int, ...], layer_channels: int | None) -> Cost:
        return Cost(passes)

    return cost


def _check_settings(name: str, what: str, params: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` (settings such as ``quick_params``) as a dict, after checking that each key is a parameter of the
    method or a common one."""
    unknown = [k for k in given if k not in params and k not in COMMON_PARAMS and "*" not in params]
    if unknown:
        raise ValueError(f"method {name!r}, {what}: {', '.join(map(repr, unknown))} is not a parameter of the method.")
    return dict(given)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (so ``1``, ``1.0`` and ``True`` stay apart)."""
    return type(a) is type(b) and bool(a == b)


def _check_choices(
    name: str, params: Mapping[str, Any], choices: Mapping[str, tuple[Any, ...]]
) -> dict[str, tuple[Any, ...]]:
    """``choices`` as a dict of tuples, after checking it against ``params`` (see :func:`register`)."""
    out: dict[str, tuple[Any, ...]] = {}
    for key, values in choices.items():
        listed = tuple(values)
        where = f"method {name!r}, choices of {key!r}"
        if key not in params or key == "*":
            raise ValueError(f"{where}: {key!r} is not a parameter of the method.")
        bare = listed[:-1] if listed and listed[-1] is Ellipsis else listed
        if not bare or any(v is Ellipsis for v in bare):
            raise ValueError(f"{where}: list at least one value; ... may only come last.")
        default = params[key]
        if default is not None and not any(_same(default, v) for v in bare):
            raise ValueError(f"{where}: the default {default!r} is not among the choices {bare!r}.")
        out[key] = listed
    return out


def _load_builtin() -> None:
    # importing the family modules registers their methods, in this order (the registry order); a method joins its
    # family's module, so only a new family adds a line here
    from . import gradient  # noqa: F401, I001 (the order is the registry order)
    from . import backward_rules  # noqa: F401
    from . import cam  # noqa: F401
    from . import perturbation  # noqa: F401
    from . import sam  # noqa: F401
    from . import layer_attr  # noqa: F401
    from . import backprojection  # noqa: F401
    from . import evidence  # noqa: F401
    from . import vebi  # noqa: F401


def list_methods() -> list[MethodInfo]:
    """All registered methods, in registration order (``captum:<ClassName>`` is resolved on demand).

    Examples
    --------
    >>> import napari_attribution as na
    >>> "grad_cam" in [m.name for m in na.list_methods()]
    True
    """
    _load_builtin()
    return list(_REGISTRY.values())


def get_method(name: str) -> MethodInfo:
    """The :class:`MethodInfo` of ``name``; ``"captum:<ClassName>"`` wraps any ``captum.attr`` class."""
    _load_builtin()
    if not isinstance(name, str):
        raise MethodError(f"A method is named by a string, got {type(name).__name__}.")
    if name.startswith("captum:"):
        from .captum import captum_method_info

        return captum_method_info(name.split(":", 1)[1])
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise MethodError(
            f"Unknown method {name!r}. Known methods: {known}; or 'captum:<ClassName>' for any captum.attr class."
        ) from None
