"""``MethodInfo.choices``: every declared choice is the truth about its method. The default is a choice, every
listed string runs, and an unlisted string is refused; ``register`` refuses inconsistent choices."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from _nets import MODELS, image

import napari_attribution as na
from napari_attribution.methods import register

#: cheap settings per method with choices (small steps, windows and sample counts on the 24 x 24 classifier)
CHEAP: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 4, "max_steps": 8},
    "smoothgrad": {"samples": 2},
    "layer_activation": {},
    "occlusion": {"window": 8, "stride": 8},
    "rise": {"masks": 4, "cells": 4},
    "sam": {},
    "layer_conductance": {"steps": 2},
    "response_backprojection": {},
    "evidence": {"window": 8, "stride": 8, "patches": 500},
}
LAYER = {"layer_activation": "features", "sam": "features.2", "layer_conductance": "features"}
#: a value for ``key`` also runs with other parameters (e.g. integrated gradients as smoothgrad's base)
EXTRA: dict[tuple[str, str, Any], dict[str, Any]] = {
    ("smoothgrad", "base", "integrated_gradients"): {"base_params": {"steps": 2}},
}
#: the error of an unknown string where it is not ParameterError (smoothgrad's base names a method)
UNKNOWN_ERROR: dict[tuple[str, str], type[Exception]] = {("smoothgrad", "base"): na.MethodError}

WITH_CHOICES = [m for m in na.list_methods() if m.choices]
CASES = [(m.name, key, value) for m in WITH_CHOICES for key in m.choices for value in m.choice_list(key)[0]
         if isinstance(value, str)]
KEYS = [(m.name, key) for m in WITH_CHOICES for key in m.choices]


def _explain(method: str, params: dict[str, Any]) -> na.Attribution:
    make, shape = MODELS["cnn2d"]
    return na.explain(make(), image(shape), method, 1, layer=LAYER.get(method),
                      params={**CHEAP[method], **params})


def test_the_methods_with_choices() -> None:
    assert {m.name for m in WITH_CHOICES} == set(CHEAP)
    modes = ("conditional_mean", "taylor", "screened", "conditional_sample")
    assert na.get_method("evidence").choices["mode"] == modes
    assert na.get_method("evidence").choice_list("mode") == (modes, False)
    assert na.get_method("occlusion").choice_list("baseline") == (("min", "mean"), True)
    assert na.get_method("occlusion").choice_list("window") == ((), True)
    assert na.get_method("saliency").choices == {}


@pytest.mark.parametrize(("method", "key"), KEYS)
def test_default_is_a_choice_and_choices_are_immutable(method: str, key: str) -> None:
    info = na.get_method(method)
    listed, _ = info.choice_list(key)
    assert key in info.params and (info.params[key] is None or info.params[key] in listed)
    assert Ellipsis not in listed and len(set(map(repr, listed))) == len(listed)
    assert isinstance(info.choices, MappingProxyType) and isinstance(info.choices[key], tuple)


@pytest.mark.parametrize(("method", "key", "value"), CASES)
def test_every_listed_string_runs(method: str, key: str, value: str) -> None:
    att = _explain(method, {key: value, **EXTRA.get((method, key, value), {})})
    assert att.params[key] == value
    assert att.data.shape == MODELS["cnn2d"][1]


@pytest.mark.parametrize(("method", "key"), KEYS)
def test_an_unlisted_string_is_refused(method: str, key: str) -> None:
    with pytest.raises(UNKNOWN_ERROR.get((method, key), na.ParameterError)):
        _explain(method, {key: "no-such-value"})


def test_register_checks_its_choices() -> None:
    def fn(run: Any, params: dict[str, Any]) -> Any:
        raise AssertionError

    common = dict(label="x", family="gradient", passes="1F", paper="-")
    bad: list[tuple[dict[str, Any], dict[str, tuple[Any, ...]], str]] = [
        ({"mode": "a"}, {"other": ("a",)}, "not a parameter"),
        ({"mode": "a"}, {"mode": ("b", "c")}, "default 'a' is not among"),
        ({"mode": "a"}, {"mode": ("a", ..., "b")}, "only come last"),
        ({"mode": "a"}, {"mode": (...,)}, "at least one"),
        ({"flag": 1}, {"flag": (True, False)}, "default 1 is not among"),
    ]
    for params, choices, message in bad:
        with pytest.raises(ValueError, match=message):
            register("_test_choices", params=params, choices=choices, **common)(fn)
    assert "_test_choices" not in [m.name for m in na.list_methods()]
