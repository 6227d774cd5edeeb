"""Where Captum has the same method, our map equals Captum's with the parameters mapped as the docstrings say.

The Captum side gets an independently written scalar target: the class logit for classifiers, and for the
segmenter the sum of class k's logits over the region the model predicts as k (computed here with argmax,
not with napari_attribution.targets).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from _nets import MODELS, Classifier, FunctionalClassifier, image, seeded
from captum import attr as ca
from torch import nn

import napari_attribution as na

CASES = ["cnn2d", "cnn3d", "unet3d"]
K = 1


def setup(case: str) -> tuple[nn.Module, np.ndarray, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    make, shape = MODELS[case]
    model = make()
    img = image(shape)
    x = torch.from_numpy(img)[None, None]
    if case == "unet3d":
        with torch.no_grad():
            region = (model(x).argmax(1) == K).float()  # (1, *S)
        assert region.sum() > 0

        def score(inp: torch.Tensor) -> torch.Tensor:
            return (model(inp)[:, K] * region).flatten(1).sum(1)
    else:
        def score(inp: torch.Tensor) -> torch.Tensor:
            return model(inp)[:, K]
    return model, img, x, score


def close(ours: np.ndarray, theirs: torch.Tensor, rtol: float = 1e-4) -> None:
    t = theirs.detach().numpy().reshape(ours.shape)
    scale = max(np.abs(t).max(), 1e-12)
    assert np.abs(ours - t).max() <= rtol * scale + 1e-9, (np.abs(ours - t).max(), scale)
    assert np.abs(t).max() > 0


def layer_of(model: nn.Module, case: str) -> tuple[str, nn.Module]:
    name = "bottleneck" if case == "unet3d" else "features"
    return name, dict(model.named_modules())[name]


@pytest.mark.parametrize("case", CASES)
def test_saliency(case: str) -> None:
    model, img, x, score = setup(case)
    ours = na.explain(model, img, "saliency", K)
    close(ours.data, ca.Saliency(score).attribute(x.clone().requires_grad_(), abs=True))


@pytest.mark.parametrize("case", CASES)
def test_input_x_gradient(case: str) -> None:
    model, img, x, score = setup(case)
    ours = na.explain(model, img, "input_x_gradient", K)
    close(ours.data, ca.InputXGradient(score).attribute(x.clone().requires_grad_()))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients(case: str, rule: str) -> None:
    model, img, x, score = setup(case)
    ours = na.explain(model, img, "integrated_gradients", K,
                      params={"steps": 16, "baseline": -0.5, "rule": rule, "max_batch": 5})
    theirs = ca.IntegratedGradients(score).attribute(x, baselines=-0.5, n_steps=16, method=rule)
    if rule == "riemann_trapezoid":
        # Captum's trapezoid weights are 1/n (summing to (n-1)/n); the true trapezoid rule's are 1/(n-1)
        theirs = theirs * 16 / 15
    close(ours.data, theirs)


@pytest.mark.parametrize("case", CASES)
def test_smoothgrad_equals_noise_tunnel(case: str) -> None:
    model, img, x, score = setup(case)
    sigma, n, seed = 0.1, 4, 7
    ours = na.explain(model, img, "smoothgrad", K, params={"samples": n, "sigma": sigma, "seed": seed})
    stdev = sigma * float(x.max() - x.min())  # sigma is a fraction of the range; Captum's stdevs is absolute
    torch.manual_seed(seed)
    theirs = ca.NoiseTunnel(ca.Saliency(score)).attribute(
        x, nt_type="smoothgrad", nt_samples=n, stdevs=stdev, nt_samples_batch_size=1, abs=True)
    close(ours.data, theirs)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("method", "captum_cls"), [("guided_backprop", ca.GuidedBackprop),
                                                     ("deconvnet", ca.Deconvolution)])
def test_backward_rules(case: str, method: str, captum_cls: type) -> None:
    model, img, x, score = setup(case)
    ours = na.explain(model, img, method, K)
    wrapper = _ScoreModule(model, score)
    close(ours.data, captum_cls(wrapper).attribute(x.clone().requires_grad_()))


class _ScoreModule(nn.Module):
    def __init__(self, model: nn.Module, score: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._score = score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._score(x)


@pytest.mark.parametrize("case", CASES)
def test_grad_cam(case: str) -> None:
    model, img, x, score = setup(case)
    name, layer = layer_of(model, case)
    ours = na.explain(model, img, "grad_cam", K, layer=name)
    lgc = ca.LayerGradCam(score, layer).attribute(x, relu_attributions=True)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    close(ours.data, ca.LayerAttribution.interpolate(lgc, tuple(x.shape[2:]), mode))


@pytest.mark.parametrize("case", CASES)
def test_layer_gradient_x_activation(case: str) -> None:
    model, img, x, score = setup(case)
    name, layer = layer_of(model, case)
    ours = na.explain(model, img, "layer_gradient_x_activation", K, layer=name)
    lgxa = ca.LayerGradientXActivation(score, layer).attribute(x).sum(1, keepdim=True)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    close(ours.data, ca.LayerAttribution.interpolate(lgxa, tuple(x.shape[2:]), mode))
    one = na.explain(model, img, "layer_gradient_x_activation", K, layer=name, params={"channel": 1})
    lgxa1 = ca.LayerGradientXActivation(score, layer).attribute(x)[:, 1:2]
    close(one.data, ca.LayerAttribution.interpolate(lgxa1, tuple(x.shape[2:]), mode))
    hires = na.explain(model, img, "hires_cam", K, layer=name)  # HiResCAM is this map with a ReLU
    np.testing.assert_allclose(hires.extras["layer_map"], np.maximum(ours.extras["layer_map"], 0), rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize("case", CASES)
def test_guided_grad_cam(case: str) -> None:
    model, img, x, score = setup(case)
    name, layer = layer_of(model, case)
    ours = na.explain(model, img, "guided_grad_cam", K, layer=name)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    wrapper = _ScoreModule(model, score)
    theirs = ca.GuidedGradCam(wrapper, layer).attribute(x.clone().requires_grad_(), interpolate_mode=mode)
    close(ours.data, theirs)


@pytest.mark.parametrize("case", CASES)
def test_layer_activation(case: str) -> None:
    model, img, x, score = setup(case)
    name, layer = layer_of(model, case)
    ours = na.explain(model, img, "layer_activation", K, layer=name)
    act = ca.LayerActivation(score, layer).attribute(x).mean(1, keepdim=True)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    close(ours.data, ca.LayerAttribution.interpolate(act, tuple(x.shape[2:]), mode))


@pytest.mark.parametrize("case", CASES)
def test_occlusion(case: str) -> None:
    model, img, x, _ = setup(case)
    if case == "unet3d":
        with torch.no_grad():
            region = (model(x).argmax(1) == K).float()

        def prob(inp: torch.Tensor) -> torch.Tensor:
            return (torch.softmax(model(inp), 1)[:, K] * region).flatten(1).sum(1)
    else:
        def prob(inp: torch.Tensor) -> torch.Tensor:
            return torch.softmax(model(inp), 1)[:, K]
    nd = x.ndim - 2
    window, stride = (5,) * nd, (3,) * nd
    ours = na.explain(model, img, "occlusion", K, params={"window": 5, "stride": 3, "baseline": 0.0, "max_batch": 7})
    theirs = ca.Occlusion(prob).attribute(x, sliding_window_shapes=(1, *window), strides=(1, *stride), baselines=0.0)
    close(ours.data, theirs, rtol=1e-3)


def test_functional_relu_guided_backprop_matches_module_version() -> None:
    """F.relu / torch.relu_ / Tensor.relu are reached: the functional network gives Captum's map of the
    same network written with nn.ReLU modules (which Captum hooks)."""
    for d, shape in [(2, (20, 20)), (3, (6, 10, 10))]:
        fnet = seeded(FunctionalClassifier(d))
        mnet = fnet.as_modules().eval()
        img = image(shape)
        x = torch.from_numpy(img)[None, None]
        for method, cls in [("guided_backprop", ca.GuidedBackprop), ("deconvnet", ca.Deconvolution)]:
            ours = na.explain(fnet, img, method, K)
            theirs = cls(mnet).attribute(x.clone().requires_grad_(), target=K)
            close(ours.data, theirs)
        plain = na.explain(fnet, img, "saliency", K).data
        assert not np.allclose(np.abs(na.explain(fnet, img, "guided_backprop", K).data), plain)


def test_inplace_relu_deconvnet_is_not_guided_backprop() -> None:
    """With nn.ReLU(inplace=True) the deconvnet must still ignore the forward mask."""
    net = seeded(Classifier(2, inplace=True))
    ref = seeded(Classifier(2, inplace=False))
    ref.load_state_dict(net.state_dict())
    img = image((20, 20))
    x = torch.from_numpy(img)[None, None]
    ours = na.explain(net, img, "deconvnet", K).data
    close(ours, ca.Deconvolution(ref).attribute(x.clone().requires_grad_(), target=K))
    guided = na.explain(net, img, "guided_backprop", K).data
    close(guided, ca.GuidedBackprop(ref).attribute(x.clone().requires_grad_(), target=K))
    assert not np.allclose(ours, guided)


def test_captum_adapter_primary_and_layer() -> None:
    model, img, x, score = setup("unet3d")
    ours = na.explain(model, img, "captum:IntegratedGradients", K, params={"n_steps": 8, "baselines": 0.0})
    close(ours.data, ca.IntegratedGradients(score).attribute(x, baselines=0.0, n_steps=8))
    ours = na.explain(model, img, "captum:DeepLift", K)
    assert ours.data.shape == img.shape and np.abs(ours.data).max() > 0
    name, layer = layer_of(model, "unet3d")
    ours = na.explain(model, img, "captum:LayerGradCam", K, layer=name)
    lgc = ca.LayerGradCam(score, layer).attribute(x)
    close(ours.data, ca.LayerAttribution.interpolate(lgc, tuple(x.shape[2:]), "trilinear"))
    with pytest.raises(na.MethodError, match="no attribution class"):
        na.explain(model, img, "captum:NoSuchMethod", K)
    with pytest.raises(na.MethodError, match="NoiseTunnel"):
        na.explain(model, img, "captum:NoiseTunnel", K)


def test_monai_unet_prelu_and_relu() -> None:
    """MONAI's UNet uses PReLU by default and names its activations 'A'; the rules reach them."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    kwargs = dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)
    img = image((8, 8, 8))
    x = torch.from_numpy(img)[None, None]
    prelu = UNet(**kwargs).eval()
    n_prelu = sum(isinstance(m, nn.PReLU) for m in prelu.modules())
    assert n_prelu > 0
    plain = na.explain(prelu, img, "saliency", K).data
    for method in ("guided_backprop", "deconvnet"):
        res = na.explain(prelu, img, method, K).data
        assert res.shape == img.shape and np.abs(res).max() > 0
        assert not np.allclose(np.abs(res), plain)
    relu = UNet(**kwargs, act="relu").eval()
    with torch.no_grad():
        region = (relu(x).argmax(1) == K).float()
    if region.sum() == 0:
        region = torch.ones_like(region)

    def score(inp: torch.Tensor) -> torch.Tensor:
        return (relu(inp)[:, K] * region).flatten(1).sum(1)

    target = na.targets.Region(K, region[0].numpy().astype(bool))
    ours = na.explain(relu, img, "guided_backprop", target).data
    close(ours, ca.GuidedBackprop(_ScoreModule(relu, score)).attribute(x.clone().requires_grad_()))
