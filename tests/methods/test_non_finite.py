"""Non-finite maps are an error, never a result (issue 11): integrated gradients with ``baseline=NaN`` or a model
that outputs NaN used to give an all-NaN heatmap with exit code 0 and no warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import Classifier, image, seeded

import napari_attribution as na

K = 1
#: small parameters, so that every method runs in well under a second on a 12 x 12 image
SMALL = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 2}, "occlusion": {"window": 6},
         "rise": {"masks": 8}, "prediction_difference": {"window": 6, "stride": 6, "samples": 1, "patches": 200},
         "evidence": {"window": 6, "stride": 6, "patches": 200}, "layer_conductance": {"steps": 4},
         "sam": {}}
NEEDS_FITTED_FEATURES = {"vebi"}


def _nan_model() -> torch.nn.Module:
    """A network with one NaN weight (a corrupted checkpoint): its output and gradients are NaN."""
    net = seeded(Classifier(2))
    with torch.no_grad():
        net.features[0].weight[0, 0, 1, 1] = float("nan")
    return net


METHODS = [m.name for m in na.list_methods() if m.name not in NEEDS_FITTED_FEATURES]


@pytest.mark.parametrize("method", METHODS)
def test_a_model_that_outputs_nan_is_an_error_for_every_method(method: str) -> None:
    net = _nan_model()
    layer = "features" if na.get_method(method).needs_layer else None
    with pytest.raises(na.MethodError, match=r"NaN or infinite.*model's output on this image is itself not finite"):
        na.explain(net, image((12, 12)), method, K, layer=layer,
                   params=SMALL.get(method, dict(na.get_method(method).quick_params)))


class SqrtNet(torch.nn.Module):
    """Finite on images >= 0, NaN on any input below 0 (a baseline of -1, say)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sqrt(x).flatten(1).mean(1, keepdim=True)
        return torch.cat([s, -s], 1)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion"])
def test_a_nan_map_from_a_finite_model_names_the_method_and_its_inputs(method: str) -> None:
    img = np.abs(image((12, 12))) + 0.1
    assert np.isfinite(na.explain(SqrtNet(), img, method, 0, params={**SMALL[method], "baseline": 0.0}).data).all()
    with pytest.raises(na.MethodError, match=rf"{method} gave a map with \d+ of 144 values NaN or infinite; the "
                                             r"model's output on this image is finite.*baseline"):
        na.explain(SqrtNet(), img, method, 0, params={**SMALL[method], "baseline": -1.0})


def test_smoothgrad_refuses_a_nan_sigma() -> None:
    with pytest.raises(na.ParameterError, match="sigma must be a finite number"):
        na.explain(seeded(Classifier(2)), image((12, 12)), "smoothgrad", K, params={"samples": 2, "sigma": np.nan})


@pytest.mark.parametrize("baseline", [float("nan"), float("inf"), np.full((12, 12), np.nan, np.float32)],
                         ids=["nan", "inf", "nan-array"])
@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "rise", "layer_conductance"])
def test_a_non_finite_baseline_is_refused(method: str, baseline: object) -> None:
    net = seeded(Classifier(2))
    layer = "features" if na.get_method(method).needs_layer else None
    params = {**SMALL.get(method, {}), "baseline": baseline}
    with pytest.raises(na.ParameterError, match="baseline"):
        na.explain(net, image((12, 12)), method, K, layer=layer, params=params)


def test_a_slice_wise_run_with_a_nan_slice_is_an_error() -> None:
    """A 2D model on a volume: a slice whose map is NaN fails the run (slices not explained stay NaN by design)."""
    vol = np.abs(np.stack([image((12, 12)), image((12, 12), seed=1)])) + 0.1
    net = na.LoadedModel(SqrtNet(), na.ModelCard(task="classification", spatial_dims=2, in_channels=1))
    with pytest.raises(na.MethodError, match="NaN or infinite"):
        na.explain(net, vol, "occlusion", 0, params={"window": 6, "baseline": -1.0})
    res = na.explain(net, vol, "saliency", 0, params={"slices": [1]})
    assert np.isnan(res.data[0]).all() and np.isfinite(res.data[1]).all()
