"""The chunking parameters are checked (issue 11): a zero or negative ``memory_budget`` and a ``max_batch`` below 1
were accepted silently (0 meant "the default"), a negative budget ran with chunks of one."""

from __future__ import annotations

import numpy as np
import pytest
from _nets import MODELS, image

import napari_attribution as na


@pytest.mark.parametrize("value", [0, -1, -(2**20), 0.0, float("nan"), float("inf"), True, "512MB"])
def test_memory_budget_must_be_a_positive_number_of_bytes(value: object) -> None:
    make, shape = MODELS["cnn2d"]
    with pytest.raises(na.ParameterError, match="memory_budget must be a positive number of bytes"):
        na.explain(make(), image(shape), "integrated_gradients", 1, params={"steps": 4, "memory_budget": value})


@pytest.mark.parametrize("value", [0, -3, 2.5, float("nan"), False, "4"])
def test_max_batch_must_be_a_whole_number_of_at_least_one(value: object) -> None:
    make, shape = MODELS["cnn2d"]
    with pytest.raises(na.ParameterError, match="max_batch must be a whole number of at least 1"):
        na.explain(make(), image(shape), "occlusion", 1, params={"window": 8, "max_batch": value})


def test_compare_checks_the_shared_parameters_too() -> None:
    make, shape = MODELS["cnn2d"]
    with pytest.raises(na.ParameterError, match="memory_budget"):
        na.compare(make(), image(shape), ["saliency", "occlusion"], 1, params={"memory_budget": -1})


def test_valid_values_are_kept() -> None:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    ref = na.explain(model, img, "integrated_gradients", 1, params={"steps": 6}).data
    for params in ({"memory_budget": 1}, {"memory_budget": 2.5e8}, {"max_batch": 1}, {"max_batch": 4.0},
                   {"memory_budget": None, "max_batch": None}, {"max_batch": np.int64(2)}):
        res = na.explain(model, img, "integrated_gradients", 1, params={"steps": 6, **params})
        np.testing.assert_allclose(res.data, ref, rtol=1e-5, atol=1e-8)
