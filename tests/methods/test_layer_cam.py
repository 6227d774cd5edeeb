"""``layer_cam`` against a reference written from the paper (Jiang et al. 2021, LayerCAM, IEEE TIP 30:5875):

    w_k(u) = ReLU(dY/dA_k(u)),    L(u) = ReLU(sum_k w_k(u) A_k(u))

computed here voxel by voxel from activations and gradients the test gets by splitting the network by hand (no hooks,
no code shared with the method), in 2D and 3D, for a class score and a segmentation region; and its relations to
HiResCAM (never below it on post-ReLU activations, equal where no gradient is negative)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _nets import Classifier, TinyUNet, image, seeded
from torch import Tensor

import napari_attribution as na

K = 1


def layer_cam_reference(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The paper's map at the layer, one position and one channel at a time: ``a``, ``g``: ``(K, *S_l)``."""
    out = np.zeros(a.shape[1:], np.float64)
    for u in np.ndindex(*a.shape[1:]):
        total = 0.0
        for k in range(a.shape[0]):
            weight = max(0.0, float(g[(k, *u)]))  # w_k(u) = ReLU(dY / dA_k(u))
            total += weight * float(a[(k, *u)])
        out[u] = max(0.0, total)  # L(u) = ReLU(sum_k w_k(u) A_k(u))
    return out


def classifier_split(net: Classifier) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]:
    """``x -> A`` (the ``features`` block) and ``(x, A) -> Y`` (class K's logit)."""
    return net.features, lambda x, a: net.head(net.pool(a).flatten(1))[0, K]


def linear_head_net() -> torch.nn.Sequential:
    """conv -> ReLU -> conv -> GAP -> linear: the explained layer ``"2"`` (the last convolution) has activations of
    both signs that all receive a gradient, so the outer ReLU of the paper's map matters."""
    return seeded(torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)))


def sequential_split(net: torch.nn.Sequential) -> tuple[Callable[[Tensor], Tensor],
                                                        Callable[[Tensor, Tensor], Tensor]]:
    return net[:3], lambda x, a: net[3:](a)[0, K]


def unet_split(net: TinyUNet, mask: np.ndarray) -> tuple[Callable[[Tensor], Tensor],
                                                         Callable[[Tensor, Tensor], Tensor]]:
    """``x -> A`` (the ``bottleneck`` block) and ``(x, A) -> Y`` (class K's output summed over ``mask``)."""
    m = torch.as_tensor(mask)

    def score(x: Tensor, a: Tensor) -> Tensor:
        e = net.enc(x)
        return net.out(net.dec(torch.cat([e, net.up(a)], 1)))[0, K][m].sum()

    return lambda x: net.bottleneck(net.down(net.enc(x))), score


def activations_and_gradients(split: tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]],
                              img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    to_layer, score = split
    x = torch.as_tensor(img)[None, None]
    a = to_layer(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(score(x, a), a)
    return a[0].detach().numpy(), g[0].numpy()


CASES = ["cnn2d", "cnn3d", "unet3d"]


def case(name: str) -> tuple[torch.nn.Module, np.ndarray, str, object, tuple]:
    """``(net, image, layer, target, split)``."""
    if name == "unet3d":
        net = seeded(TinyUNet(3))
        img = image((8, 8, 8))
        mask = np.zeros((8, 8, 8), bool)
        mask[2:6, 1:5, 3:7] = True
        return net, img, "bottleneck", na.targets.Region(K, mask), unet_split(net, mask)
    if name == "signed2d":
        seq = linear_head_net()
        return seq, image((16, 16)), "2", K, sequential_split(seq)
    d = 2 if name == "cnn2d" else 3
    cnn = seeded(Classifier(d))
    img = image((16, 16) if d == 2 else (8, 8, 8))
    return cnn, img, "features", K, classifier_split(cnn)


@pytest.mark.parametrize("name", [*CASES, "signed2d"])
def test_layer_cam_is_the_papers_map(name: str) -> None:
    net, img, layer, target, split = case(name)
    res = na.explain(net, img, "layer_cam", target, layer=layer)
    a, g = activations_and_gradients(split, img)
    assert (g < 0).any() and (g > 0).any()  # the case exercises the ReLU of the weights
    ref = layer_cam_reference(a, g)
    assert ref.max() > 0
    if name == "signed2d":  # ... and the outer ReLU: the weighted sum is negative at some positions
        assert ((np.maximum(g, 0) * a).sum(0) < 0).any()
    np.testing.assert_allclose(res.extras["layer_map"], ref, rtol=1e-5, atol=1e-7)
    # on the input grid: the layer map upsampled (bilinear / trilinear, align_corners=False), raw, unsigned
    mode = "bilinear" if img.ndim == 2 else "trilinear"
    up = F.interpolate(torch.as_tensor(ref)[None, None], size=img.shape, mode=mode, align_corners=False)[0, 0]
    np.testing.assert_allclose(res.data, up.numpy(), rtol=1e-5, atol=1e-7)
    assert res.data.dtype == np.float32 and res.data.shape == img.shape and not res.signed
    assert res.layer == layer


@pytest.mark.parametrize("name", CASES)
def test_layer_cam_is_never_below_hires_cam_and_shares_its_pass(name: str) -> None:
    """Post-ReLU activations: sum_k ReLU(g) A >= sum_k g A at every position, so LayerCAM >= HiResCAM; in one
    ``compare`` both come from the same shared pass and equal their single runs."""
    net, img, layer, target, _ = case(name)
    both = na.compare(net, img, ["hires_cam", "layer_cam"], target, layer=layer)
    lc, hr = both["layer_cam"].extras["layer_map"], both["hires_cam"].extras["layer_map"]
    assert (lc >= hr - 1e-7).all() and (lc > hr + 1e-6).any()
    np.testing.assert_array_equal(both["layer_cam"].data, na.explain(net, img, "layer_cam", target, layer=layer).data)


def test_layer_cam_equals_hires_cam_where_no_gradient_is_negative() -> None:
    """Behind global average pooling and a linear head whose class-K weights are all positive, every layer gradient
    is positive (w_k / Z): the paper's weights are the gradients themselves, as in HiResCAM."""
    net = seeded(Classifier(2))
    with torch.no_grad():
        net.head.weight[K].abs_().add_(0.1)
    img = image((16, 16))
    lc = na.explain(net, img, "layer_cam", K, layer="features")
    hr = na.explain(net, img, "hires_cam", K, layer="features")
    assert lc.data.max() > 0
    np.testing.assert_allclose(lc.data, hr.data, rtol=1e-6, atol=1e-8)
