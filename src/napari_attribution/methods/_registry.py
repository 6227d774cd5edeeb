"""One registry of attribution methods.

Every method is a function ``fn(run, params) -> MethodOutput`` registered under a canonical name with
:func:`register`. The registry feeds :func:`napari_attribution.list_methods`, the widget's dropdown, the CLI's
choices and the parametrised tests, so a method exists in all of them as soon as it is registered.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .._errors import MethodError, ParameterError

if TYPE_CHECKING:
    from ._run import MethodOutput, Run

__all__ = ["MethodInfo", "get_method", "list_methods", "register"]

MethodFn = Callable[["Run", dict[str, Any]], "MethodOutput"]

#: parameters every method accepts (handled by the pipeline, not by the method)
COMMON_PARAMS: Mapping[str, Any] = MappingProxyType(
    {"seed": 0, "max_batch": None, "memory_budget": 512 * 2**20, "slices": None}
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
    fn: MethodFn | None = field(default=None, repr=False, compare=False)

    def choice_list(self, key: str) -> tuple[tuple[Any, ...], bool]:
        """``key``'s listed choices (without the ``...`` marker) and whether it also takes other values.

        A parameter without choices gives ``((), True)``.

        Examples
        --------
        >>> import napari_attribution as na
        >>> na.get_method("evidence").choice_list("mode")
        (('conditional_mean', 'taylor', 'screened'), False)
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
) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` as the method ``name`` (decorator); the keywords are :class:`MethodInfo`'s attributes.

    ``choices`` is checked here: each key is one of ``params``, ``...`` appears only last, and the default is one
    of the listed choices (or None); a mistake raises ``ValueError`` at import time.
    """
    frozen_params = MappingProxyType(dict(params or {}))
    frozen_choices = MappingProxyType(_check_choices(name, frozen_params, choices or {}))

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
            fn=fn,
        )
        return fn

    return decorate


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
    # importing the family modules registers their methods, in this order
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
