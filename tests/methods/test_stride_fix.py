"""Oramas et al.'s stride fix removes the periodic artefact of a strided convolution's backward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import napari_attribution as na


class OneStridedConv(nn.Module):
    """One k=3, s=2 convolution with all-ones weights, then a global sum: a uniform seed at the conv output."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.conv = (nn.Conv2d if d == 2 else nn.Conv3d)(1, 1, 3, stride=2, padding=1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x)).flatten(1).sum(1, keepdim=True)
        return torch.cat([-y, y], 1)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("method", ["deconvnet", "guided_backprop"])
def test_stride_fix_removes_the_checkerboard(d: int, method: str) -> None:
    img = np.ones((12,) * d, np.float32)
    model = OneStridedConv(d)
    interior = (slice(2, -2),) * d
    plain = na.explain(model, img, method, 1).data[interior]
    fixed = na.explain(model, img, method, 1, params={"stride_fix": True}).data[interior]
    cv = lambda a: float(a.std() / a.mean())  # noqa: E731
    assert cv(plain) > 0.4  # periodic {1, 2, 4(, 8)} pattern
    assert cv(fixed) < 1e-6
    np.testing.assert_allclose(fixed, 3**d)  # every interior voxel is covered by k^d stride-1 windows
    assert set(np.unique(plain).round(3)) == {float(2**i) for i in range(d + 1)}
    # the option changes only the strided convolution; the model is unchanged and the plain map is the gradient
    sal = na.explain(model, img, "input_x_gradient", 1).data[interior]
    np.testing.assert_allclose(plain, sal)
