"""Infidelity on a region target compares the map with the change of what the map explains: the region's *sum*
of outputs, as gradient methods differentiate it (issue 11). It used to compare with the change of the region's
*mean* score, so the exact gradient of a linear segmenter scored about 4e-3 instead of ~0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import image
from torch import nn

import napari_attribution as na
from napari_attribution.targets import Predicted, Region


def _linear_segmenter() -> nn.Module:
    """Two convolutions without a nonlinearity: the logits are linear in the input, so the gradient of a region's
    summed logit is exact for any perturbation."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)).eval()
    with torch.no_grad():
        net[1].bias.copy_(torch.tensor([0.0, 0.3]))
    return net


@pytest.mark.parametrize("region", ["predicted", "drawn"])
def test_the_exact_gradient_of_a_region_target_has_zero_infidelity(region: str) -> None:
    net = _linear_segmenter()
    img = image((16, 16))
    mask = np.zeros((16, 16), bool)
    mask[4:11, 5:12] = True
    target = Predicted(1) if region == "predicted" else Region(1, mask)
    att = na.explain(net, img, "integrated_gradients", target, params={"steps": 8, "baseline": 0.0})
    grad = att.data / np.where(img == 0, 1, img)  # IG of a linear model from 0 is x * gradient
    voxels = int((np.asarray(att.prediction) == 1).sum()) if region == "predicted" else int(mask.sum())
    assert voxels > 20  # a region of many voxels: the mean and the sum differ by that factor
    exact = na.evaluate(net, img, grad, "infidelity", target=target, normalize=False, samples=8)
    noisy = na.evaluate(net, img, grad + np.random.default_rng(0).normal(0, 0.05, grad.shape), "infidelity",
                        target=target, normalize=False, samples=8)
    assert exact.value < 1e-8 < noisy.value
    # normalize=True finds the scale 1 (no rescaling needed): the map explains the sum, not the mean
    scaled = na.evaluate(net, img, grad, "infidelity", target=target, samples=8)
    assert scaled.details["beta"] == pytest.approx(1.0, rel=1e-4)
