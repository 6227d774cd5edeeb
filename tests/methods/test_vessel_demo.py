"""Seed 001's point, on the vessel-segmentation demo: with our segmentation targets every gradient method gets a
non-zero signal that sits on the vessels (TorchEsegeta's thresholded-count wrapper has an input gradient of
exactly zero)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

import napari_attribution as na

METHODS = {
    "saliency": {}, "input_x_gradient": {}, "integrated_gradients": {"steps": 8}, "smoothgrad": {"samples": 3},
    "guided_backprop": {}, "deconvnet": {}, "grad_cam": {}, "sam": {}, "layer_conductance": {"steps": 4},
}


@pytest.fixture(scope="module")
def vessel_case():
    from napari_attribution.models.demo import DEMO_MODELS

    loaded = na.load_model("demo:vessel-seg")
    case = DEMO_MODELS["vessel-seg"].generator(123)
    return loaded, case


@pytest.mark.parametrize("method", list(METHODS))
def test_every_gradient_method_sees_the_vessels(vessel_case, method: str) -> None:
    loaded, case = vessel_case
    res = na.explain(loaded, case.image, method, params=METHODS[method])
    assert isinstance(res.target, na.targets.Predicted) and res.target.k == 1
    mag = np.abs(np.nan_to_num(res.data))
    assert mag.max() > 0, f"{method}: zero signal"
    near = binary_dilation(case.mask, iterations=2)
    share = mag[near].sum() / mag.sum()
    assert share > 2 * near.mean(), (method, share, near.mean())


def test_the_thresholded_count_target_has_zero_gradient_but_ours_does_not(vessel_case) -> None:
    """The published wrapper's score sum((y / y) * 1[y > t]) is piecewise constant: its gradient is 0."""
    import torch

    loaded, case = vessel_case
    x = torch.from_numpy(case.image)[None, None].requires_grad_()
    y = loaded.module(x)[:, 1]
    t = float(y.detach().mean())
    count = ((y / y) * (y > t).float()).sum()
    (g,) = torch.autograd.grad(count, x)
    assert float(g.abs().max()) == 0.0
    ours = na.explain(loaded, case.image, "saliency")
    assert np.abs(ours.data).max() > 0
