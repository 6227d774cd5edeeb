"""The registry entry is the one place that knows a method's facts (issue 12): its cost, whether it takes a seed,
its short table name, its Compare and test settings and its fast path are read from it, so a method registered
anywhere is costed, seeded, named and smoothed without touching another file — and each fact is the truth."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from _nets import Classifier, image, seeded

import napari_attribution as na
from napari_attribution.methods import _registry
from napari_attribution.methods._registry import Cost, register
from napari_attribution.methods._run import MethodOutput, Run

COMMON = dict(label="a test method", family="gradient", passes="n F", paper="-")


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names registered by the test, taken out of the registry afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        _registry._REGISTRY.pop(name, None)


def _never(run: Run, params: dict[str, Any]) -> MethodOutput:
    raise AssertionError("the method's own function was called")


def test_a_registered_cost_formula_is_the_estimate(registered: list[str]) -> None:
    def cost(p: Mapping[str, Any], spatial: tuple[int, ...], layer_channels: int | None) -> Cost:
        return Cost(float(p["n"] * np.prod(spatial)), upper=layer_channels is None, flops=7.0)

    register("_test_costed", params={"n": 2}, cost=cost, pass_kind="forward", **COMMON)(_never)
    registered.append("_test_costed")
    info = na.get_method("_test_costed")
    assert info.estimate({"n": 3}, (4, 5), layer_channels=8) == Cost(60.0, False, forward=60.0, flops=7.0)
    assert info.estimate(None, (4, 5)) == Cost(40.0, True, forward=40.0, flops=7.0)  # the defaults
    with pytest.raises(na.ParameterError, match="does not take the parameter 'm'"):
        info.estimate({"m": 1}, (4, 5))


def test_pass_kinds_and_fixed_costs(registered: list[str]) -> None:
    register("_test_fixed", cost=3, pass_kind="partial", **COMMON)(_never)
    registered.append("_test_fixed")
    assert na.get_method("_test_fixed").estimate({}, (8, 8)) == Cost(3.0, partial=3.0)
    assert na.get_method("saliency").estimate({}, (8, 8)) == Cost(1.0)  # one full pass when nothing is said
    assert na.get_method("guided_grad_cam").estimate({}, (8, 8)) == Cost(2.0)
    assert na.get_method("score_cam").estimate({}, (8, 8), layer_channels=16) == Cost(17.0, forward=17.0)
    assert na.get_method("score_cam").estimate({}, (8, 8)).upper  # 64 channels assumed while the layer is unknown
    taylor = na.get_method("evidence").estimate({"mode": "taylor", "window": 4, "stride": 4}, (16, 16))
    assert taylor.forward == taylor.passes - 1 and taylor.partial == 0 and taylor.flops > 0
    sg = na.get_method("smoothgrad").estimate({"samples": 5, "base": "integrated_gradients",
                                               "base_params": {"steps": 4}}, (16, 16))
    assert sg == Cost(20.0)


def test_register_checks_the_facts() -> None:
    with pytest.raises(ValueError, match="'stepz' is not a parameter"):
        register("_test_bad", params={"steps": 1}, quick_params={"stepz": 2}, **COMMON)(_never)
    with pytest.raises(ValueError, match="'x' is not a parameter"):
        register("_test_bad", compare_params={"x": 2}, **COMMON)(_never)
    with pytest.raises(ValueError, match="pass_kind must be"):
        register("_test_bad", pass_kind="backward", **COMMON)(_never)
    assert "_test_bad" not in [m.name for m in na.list_methods()]


def test_every_method_has_its_own_short_table_name() -> None:
    """The Compare dock's agreement and landmark tables name methods by ``short``; a new method needs one."""
    shorts = {m.name: m.short for m in na.list_methods()}
    assert all(shorts.values()), [n for n, s in shorts.items() if not s]
    assert len(set(shorts.values())) == len(shorts)
    assert all(len(s) <= 10 for s in shorts.values()), shorts
    assert na.get_method("captum:Saliency").short == "Saliency"


def test_the_compare_settings_are_cheaper_than_the_defaults() -> None:
    infos = na.list_methods()
    assert [m.name for m in infos if m.compare_default] == ["saliency", "integrated_gradients", "grad_cam",
                                                            "occlusion"]
    for m in infos:
        if m.compare_params:
            cheap = m.estimate(m.compare_params, (48, 48, 48), layer_channels=32).passes
            assert cheap <= m.estimate({}, (48, 48, 48), layer_channels=32).passes, m.name


def _fitted_features(model: torch.nn.Module, shape: tuple[int, ...]) -> Any:
    from napari_attribution.interpretation import fit_relevant_features

    return fit_relevant_features(model, [image(shape, seed=s) for s in range(4)], [0, 1, 2, 1])


@pytest.mark.parametrize("method", [m.name for m in na.list_methods()])
def test_the_seed_changes_the_map_exactly_for_the_stochastic_methods(method: str) -> None:
    """``stochastic`` is the truth: the Explain dock shows a seed row for these methods and only these."""
    info = na.get_method(method)
    net, shape = seeded(Classifier(2)), (16, 16)
    params = dict(info.quick_params)
    if method == "vebi":
        params["features"] = _fitted_features(net, shape)
    layer = "features" if info.needs_layer else None
    maps = [na.explain(net, image(shape), method, 1, layer=layer, params={**params, "seed": s}).data
            for s in (0, 1)]
    assert (not np.allclose(maps[0], maps[1], equal_nan=True)) == info.stochastic


def test_smoothgrad_takes_the_fast_path_of_any_method_that_declares_one(registered: list[str]) -> None:
    """A method whose map is a function of the input gradient (``input_grad_map``) is smoothed from batched input
    gradients; its own function is never called."""
    register("_test_double_gradient", input_grad_map=lambda x, g: 2 * g, **COMMON)(_never)
    registered.append("_test_double_gradient")
    net, img = seeded(Classifier(2)), image((16, 16))
    got = na.explain(net, img, "smoothgrad", 1, params={"base": "_test_double_gradient", "sigma": 0.0, "samples": 2})
    x = torch.as_tensor(img)[None, None].requires_grad_(True)
    (g,) = torch.autograd.grad(net(x)[0, 1], x)
    np.testing.assert_allclose(got.data, 2 * g[0, 0].numpy(), rtol=1e-5, atol=1e-7)
