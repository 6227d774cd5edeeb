"""A target's ``score`` defaults to None (the method's natural score); an explicit ``score`` is honoured by every
method and metric, or refused with a message -- never silently swapped (issue 11).

Before: ``Class(k, score="logit")`` was the default, so perturbation methods could not tell an explicit logit from
the default and scored the probability whatever the user asked."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _nets import MODELS, image
from captum import attr as ca
from torch import nn

import napari_attribution as na
from napari_attribution.targets import Class, Predicted

K = 1


def _occlusion_reference(score, x: torch.Tensor) -> np.ndarray:
    nd = x.ndim - 2
    theirs = ca.Occlusion(score).attribute(x, sliding_window_shapes=(1,) + (5,) * nd, strides=(1,) + (3,) * nd,
                                           baselines=0.0)
    return theirs[0, 0].detach().numpy()


def test_score_defaults_to_none_the_methods_natural_score() -> None:
    for t in (Class(1), Predicted(1), na.targets.Voxel(1, (0, 0)), na.targets.Contrast(0, 1)):
        assert t.score is None
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    res = na.explain(model, img, "saliency", Class(K))
    assert res.target.score is None and res.description == "class 1"
    assert na.explain(model, img, "saliency", Class(K, score="logit")).description == "class 1 (logit)"


@pytest.mark.parametrize("case", ["cnn2d", "unet3d"])
def test_occlusion_honours_an_explicit_logit_and_keeps_the_probability_by_default(case: str) -> None:
    make, shape = MODELS[case]
    model, img = make(), image(shape)
    x = torch.from_numpy(img)[None, None]
    params = {"window": 5, "stride": 3, "baseline": 0.0}
    if case == "unet3d":
        with torch.no_grad():
            region = (model(x).argmax(1) == K).float()
        target, explicit = Predicted(K), Predicted(K, score="logit")

        def logit(inp: torch.Tensor) -> torch.Tensor:
            return (model(inp)[:, K] * region).flatten(1).sum(1)

        def prob(inp: torch.Tensor) -> torch.Tensor:
            return (torch.softmax(model(inp), 1)[:, K] * region).flatten(1).sum(1)
    else:
        target, explicit = Class(K), Class(K, score="logit")

        def logit(inp: torch.Tensor) -> torch.Tensor:
            return model(inp)[:, K]

        def prob(inp: torch.Tensor) -> torch.Tensor:
            return torch.softmax(model(inp), 1)[:, K]

    on_logits = na.explain(model, img, "occlusion", explicit, params=params).data
    default = na.explain(model, img, "occlusion", target, params=params).data
    ref_logit, ref_prob = _occlusion_reference(logit, x), _occlusion_reference(prob, x)
    np.testing.assert_allclose(on_logits, ref_logit, rtol=1e-3, atol=1e-5 * np.abs(ref_logit).max())
    np.testing.assert_allclose(default, ref_prob, rtol=1e-3, atol=1e-5 * np.abs(ref_prob).max())
    explicit_prob = Class(K, score="probability") if case == "cnn2d" else Predicted(K, score="probability")
    np.testing.assert_array_equal(na.explain(model, img, "occlusion", explicit_prob, params=params).data, default)


def test_rise_honours_an_explicit_logit() -> None:
    """RISE of the logit equals RISE of the same network declared to output probabilities (its scores are then the
    raw outputs): the same masks (same seed), the same scores."""
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    params = {"masks": 64, "cells": 4}
    logit = na.explain(model, img, "rise", Class(K, score="logit"), params=params).data
    prob = na.explain(model, img, "rise", K, params=params).data
    raw = na.LoadedModel(model, na.ModelCard(task="classification", spatial_dims=2, in_channels=1,
                                             output="probabilities"))
    reference = na.explain(raw, img, "rise", K, params=params).data
    np.testing.assert_allclose(logit, reference, rtol=1e-5, atol=1e-7)
    assert not np.allclose(logit, prob, rtol=1e-2)


@pytest.mark.parametrize("method,params", [("prediction_difference", {"samples": 2, "window": 6, "stride": 6}),
                                           ("evidence", {"window": 6, "stride": 6})])
def test_weight_of_evidence_methods_use_the_logit_difference_when_asked(method: str, params: dict) -> None:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    default = na.explain(model, img, method, K, params=params)
    logit = na.explain(model, img, method, Class(K, score="logit"), params=params)
    assert default.extras["log_odds"] is True
    assert logit.extras["log_odds"] is False  # log-odds are of a probability: the plain logit difference instead
    assert not np.allclose(default.data, logit.data)


def test_integrated_gradients_of_an_explicit_probability_is_complete() -> None:
    """The map integrates the probability's gradient, so its completeness check compares it with the change of the
    probability (it compared it with the logit's and warned wrongly)."""
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error", na.CompletenessWarning)
        res = na.explain(model, img, "integrated_gradients", Class(K, score="probability"),
                         params={"steps": "auto", "baseline": 0.0, "max_steps": 256})
    c = res.extras["completeness"]
    x = torch.from_numpy(img)[None, None]
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[0, K] - torch.softmax(model(torch.zeros_like(x)), 1)[0, K]
    assert abs(c["delta"] - float(p)) < 1e-5
    assert c["relative_error"] < 0.05


def test_metrics_honour_an_explicit_logit_and_specificity_refuses_it() -> None:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    att = na.explain(model, img, "saliency", K)
    prob = na.evaluate(model, img, att, "deletion", target=Class(K), steps=4, reference=False)
    logit = na.evaluate(model, img, att, "deletion", target=Class(K, score="logit"), steps=4, reference=False)
    with torch.no_grad():
        y = model(torch.from_numpy(img)[None, None])[0]
    assert prob.details["curve"][0] == pytest.approx(float(torch.softmax(y, 0)[K]), rel=1e-5)
    assert logit.details["curve"][0] == pytest.approx(float(y[K]), rel=1e-5)
    with pytest.raises(na.ParameterError, match="score='logit'"):
        na.evaluate(model, img, att, "specificity", target=Class(K, score="logit"), block=6)


class ProbabilityNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.softmax(torch.cat([m, -m], 1), 1)


def test_a_logit_is_refused_on_a_model_that_outputs_probabilities() -> None:
    card = na.ModelCard(task="classification", spatial_dims=2, in_channels=1, output="probabilities")
    model = na.LoadedModel(ProbabilityNet(), card)
    img = image((8, 8))
    assert na.explain(model, img, "occlusion", 0, params={"window": 4}).data.shape == (8, 8)
    with pytest.raises(na.TargetError, match="no logit"):
        na.explain(model, img, "occlusion", Class(0, score="logit"), params={"window": 4})


def test_an_unknown_score_is_refused() -> None:
    make, shape = MODELS["cnn2d"]
    with pytest.raises(na.TargetError, match="'logit', 'probability' or None"):
        na.explain(make(), image(shape), "saliency", Class(K, score="logits"))  # type: ignore[arg-type]
