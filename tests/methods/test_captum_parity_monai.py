"""Captum parity on networks we did not write: MONAI's DenseNet121 (3D classification) and UNet (3D segmentation).

For every built-in method that Captum also has, our map equals Captum's on the same MONAI network, with the
parameters mapped as the method docstrings say. The Captum side gets an independently written scalar: the
class-``K`` logit for the DenseNet; for the UNet the sum of class ``K``'s logits (or softmax probabilities,
for occlusion and the probability-score target) over a fixed box mask, which is what
``na.targets.Region(K, mask)`` forms (targets.py: ``T = sum(W * s(y))``, methods.md §1.4 S2 / S3).

What MONAI brings that our own test networks do not:

- DenseNet121's ReLUs are all ``nn.ReLU(inplace=True)`` and run on the output of a BatchNorm, and its blocks
  concatenate features. The guided backprop / deconvnet references are Captum's maps on a deep copy whose ReLUs
  are out of place (Captum's module hooks are only trustworthy there); :func:`test_densenet_relus_run_once`
  checks that no ReLU module is called twice in a forward pass (module reuse would break Captum's reference).
- The UNet is built with ``act=("relu", {"inplace": True})`` so Captum's ReLU-module hooks cover every
  activation. MONAI's default activation is PReLU: our rules reach PReLU (tests/methods/test_captum_parity.py,
  ``test_monai_unet_prelu_and_relu``) while Captum's GuidedBackprop / Deconvolution override ``nn.ReLU`` only,
  so on the default UNet the two differ on purpose and are not compared here. The gradient, layer and
  perturbation methods (no activation rule) are also compared on the default PReLU UNet.
- Layers whose output an in-place ReLU overwrites afterwards (DenseNet ``features.norm0``): the layer methods
  must see the value the layer returned.

Tolerance: ``max |ours - Captum| <= 1e-4 * max |Captum| + 1e-9`` (``close``); occlusion / feature ablation
differences of probabilities use ``1e-3`` (differences of nearly equal float32 probabilities). The map must
not be zero.

SmoothGrad's noise is matched exactly: our generator's stream equals Captum's ``NoiseTunnel`` with
``nt_samples_batch_size=1`` after ``torch.manual_seed(seed)`` (smoothgrad's docstring), so the maps are
compared with the same tolerance. Stochastic Captum classes through the ``captum:`` adapter (GradientShap,
KernelShap, Lime) are seeded the same way (the adapter seeds the global generator with ``seed``).

Captum classes without a built-in counterpart (DeepLift, GradientShap, KernelShap, Lime, FeatureAblation) are
run through the ``captum:`` adapter and compared with Captum called directly: that checks the adapter's
scalar (the region target) on MONAI networks. Built-in methods without a Captum class (CAM, Grad-CAM++,
LayerCAM, Score-CAM, RISE, SAM, PDA, evidence, VEBI, response back-projection) are not compared.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from _nets import image
from torch import nn

import napari_attribution as na

pytest.importorskip("monai")
ca = pytest.importorskip("captum.attr")

from monai.networks.nets import DenseNet121, UNet  # noqa: E402

K = 1
SIZE = 32
#: UNet region target: a box in the middle of the volume
BOX = (slice(8, 24), slice(10, 26), slice(6, 22))
#: DenseNet layer at 4^3 (after two transitions), UNet bottleneck at 8^3
DENSE_LAYER = "features.denseblock2"
UNET_LAYER = "model.1.submodule.1.submodule"

Score = Callable[[torch.Tensor], torch.Tensor]

#: relative max differences measured by ``close`` (printed by ``pytest -s``; the report quotes them)
MEASURED: dict[str, float] = {}


def close(ours: np.ndarray, theirs: torch.Tensor, what: str, rtol: float = 1e-4) -> None:
    """``max |ours - theirs| <= rtol * max |theirs|``, both maps non-zero."""
    t = theirs.detach().double().numpy().reshape(ours.shape)
    scale = float(np.abs(t).max())
    diff = float(np.abs(ours.astype(np.float64) - t).max())
    MEASURED[what] = diff / max(scale, 1e-30)
    print(f"{what}: max|diff| / max|Captum| = {diff / max(scale, 1e-30):.2e} (max|Captum| = {scale:.3g})")
    assert scale > 0 and float(np.abs(ours).max()) > 0, what
    assert diff <= rtol * scale + 1e-9, (what, diff, scale)


# ---------------------------------------------------------------------------------------------------------------
# the networks


def make_densenet() -> nn.Module:
    """DenseNet121, 3 classes, seeded; BatchNorm statistics calibrated on eight volumes, then eval mode.

    The last blocks run at 1^3 voxels on a 32^3 input, so their statistics come from the batch alone: with two
    volumes the variances are tiny and the eval-mode logits reach 1e16; eight rescaled volumes give logits of
    order 1."""
    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=3)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    for m in bns:
        m.momentum = None  # cumulative average: one calibration pass sets the statistics
    scale = 0.5 + torch.rand(8)
    calib = torch.stack([torch.from_numpy(image((SIZE,) * 3, seed=10 + i)) * scale[i] for i in range(8)])[:, None]
    net.train()
    with torch.no_grad():
        net(calib)
    for m in bns:
        m.momentum = 0.1
    return net.eval()


def make_unet(act: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = dict(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
                  num_res_units=1)
    if act == "relu":
        kwargs["act"] = ("relu", {"inplace": True})
    return UNet(**kwargs).eval()


def out_of_place(model: nn.Module) -> nn.Module:
    """A deep copy with every ``nn.ReLU`` out of place (the reference network for Captum's ReLU hooks)."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return ref


@pytest.fixture(scope="module")
def dense() -> tuple[nn.Module, np.ndarray, torch.Tensor]:
    img = image((SIZE,) * 3)
    return make_densenet(), img, torch.from_numpy(img)[None, None]


@pytest.fixture(scope="module", params=["relu", "prelu"])
def unet(request: pytest.FixtureRequest) -> tuple[str, nn.Module, np.ndarray, torch.Tensor]:
    img = image((SIZE,) * 3, seed=1)
    return request.param, make_unet(request.param), img, torch.from_numpy(img)[None, None]


@pytest.fixture(scope="module")
def unet_relu() -> tuple[nn.Module, np.ndarray, torch.Tensor]:
    img = image((SIZE,) * 3, seed=1)
    return make_unet("relu"), img, torch.from_numpy(img)[None, None]


def box_mask() -> np.ndarray:
    m = np.zeros((SIZE,) * 3, bool)
    m[BOX] = True
    return m


def class_logit(model: nn.Module) -> Score:
    def score(inp: torch.Tensor) -> torch.Tensor:
        return model(inp)[:, K]

    return score


def class_prob(model: nn.Module) -> Score:
    def score(inp: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(inp), 1)[:, K]

    return score


def region_score(model: nn.Module, probability: bool = False) -> Score:
    """``sum_{u in box} y_K(u)`` (or the softmax probability), written without napari_attribution.targets."""
    w = torch.zeros((1, SIZE, SIZE, SIZE))
    w[(slice(None), *BOX)] = 1.0

    def score(inp: torch.Tensor) -> torch.Tensor:
        y = model(inp)
        s = torch.softmax(y, 1)[:, K] if probability else y[:, K]
        return (s * w).flatten(1).sum(1)

    return score


class ScoreModule(nn.Module):
    """``x -> score(x)`` as a module holding the network (Captum's hook-based classes need a module)."""

    def __init__(self, model: nn.Module, score: Score) -> None:
        super().__init__()
        self.model = model
        self._score = score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._score(x)


def upsample(m: torch.Tensor) -> torch.Tensor:
    return ca.LayerAttribution.interpolate(m, (SIZE,) * 3, "trilinear")


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(m, attr, {}), f"{attr} left on {name or 'the model'}"
    assert torch._C._len_torch_function_stack() == 0, "a TorchFunctionMode was left active"
    after = snapshot(model)
    for key in ("training", "requires_grad", "inplace"):
        assert after[key] == before[key], key
    assert all(p.grad is None for p in model.parameters()), "parameter .grad was written"
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k  # BatchNorm statistics were not updated


# ---------------------------------------------------------------------------------------------------------------
# DenseNet121: classification, target = class K's logit (probability for occlusion)


def test_densenet_relus_run_once(dense: tuple[nn.Module, np.ndarray, torch.Tensor]) -> None:
    """No ReLU module is reused within a forward pass, and all are in place (what the rule tests rely on)."""
    model, _, x = dense
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) > 100 and all(m.inplace for m in relus)
    calls: dict[int, int] = {}
    handles = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1))
               for m in relus]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    assert sorted(set(calls.values())) == [1] and len(calls) == len(relus)


def test_densenet_gradients(dense: tuple[nn.Module, np.ndarray, torch.Tensor]) -> None:
    model, img, x = dense
    score = class_logit(model)
    close(na.explain(model, img, "saliency", K).data,
          ca.Saliency(score).attribute(x.clone().requires_grad_(), abs=True), "densenet saliency")
    close(na.explain(model, img, "input_x_gradient", K).data,
          ca.InputXGradient(score).attribute(x.clone().requires_grad_()), "densenet input_x_gradient")
    ours = na.explain(model, img, "integrated_gradients", K,
                      params={"steps": 6, "baseline": 0.0, "rule": "gausslegendre", "max_batch": 3})
    close(ours.data, ca.IntegratedGradients(score).attribute(x, baselines=0.0, n_steps=6, method="gausslegendre"),
          "densenet integrated_gradients (gausslegendre, 6 steps)")


def test_densenet_smoothgrad(dense: tuple[nn.Module, np.ndarray, torch.Tensor]) -> None:
    model, img, x = dense
    sigma, n, seed = 0.1, 3, 5
    ours = na.explain(model, img, "smoothgrad", K, params={"samples": n, "sigma": sigma, "seed": seed})
    torch.manual_seed(seed)
    theirs = ca.NoiseTunnel(ca.Saliency(class_logit(model))).attribute(
        x, nt_type="smoothgrad", nt_samples=n, stdevs=sigma * float(x.max() - x.min()), nt_samples_batch_size=1,
        abs=True)
    close(ours.data, theirs, "densenet smoothgrad (saliency, 3 samples, same noise)")


def test_densenet_backward_rules_and_model_unchanged(dense: tuple[nn.Module, np.ndarray, torch.Tensor]) -> None:
    """Guided backprop / deconvnet with DenseNet's in-place ReLUs equal Captum's on the out-of-place copy; the
    model is left as it was, also when handed over in training mode (BatchNorm statistics are not updated, the
    map is the eval-mode map)."""
    model, img, x = dense
    ref = out_of_place(model)
    wrapper = ScoreModule(ref, class_logit(ref))
    maps = {}
    for method, cls in [("guided_backprop", ca.GuidedBackprop), ("deconvnet", ca.Deconvolution)]:
        before = snapshot(model)
        maps[method] = na.explain(model, img, method, K).data
        assert_untouched(model, before)
        close(maps[method], cls(wrapper).attribute(x.clone().requires_grad_()), f"densenet {method}")
    assert not np.allclose(maps["guided_backprop"], maps["deconvnet"])  # the in-place mask was not applied
    model.train()
    try:
        before = snapshot(model)
        trained = na.explain(model, img, "guided_backprop", K).data
        assert_untouched(model, before)
        grad_cam = na.explain(model, img, "grad_cam", K, layer=DENSE_LAYER).data
        assert_untouched(model, before)
    finally:
        model.eval()
    np.testing.assert_array_equal(trained, maps["guided_backprop"])
    np.testing.assert_allclose(grad_cam, na.explain(model, img, "grad_cam", K, layer=DENSE_LAYER).data)


@pytest.mark.parametrize("layer", [DENSE_LAYER, "features.norm0"])
def test_densenet_layer_methods(dense: tuple[nn.Module, np.ndarray, torch.Tensor], layer: str) -> None:
    """Grad-CAM, HiResCAM, layer gradient x activation, layer activation and guided Grad-CAM at a dense block
    and at ``features.norm0``, whose output ``relu0`` (in place) overwrites afterwards."""
    model, img, x = dense
    score = class_logit(model)
    module = dict(model.named_modules())[layer]
    ours = na.explain(model, img, "grad_cam", K, layer=layer)
    close(ours.data, upsample(ca.LayerGradCam(score, module).attribute(x, relu_attributions=True)),
          f"densenet grad_cam @ {layer}")
    lgxa = ca.LayerGradientXActivation(score, module).attribute(x).sum(1, keepdim=True)
    close(na.explain(model, img, "layer_gradient_x_activation", K, layer=layer).data, upsample(lgxa),
          f"densenet layer_gradient_x_activation @ {layer}")
    close(na.explain(model, img, "hires_cam", K, layer=layer).data, upsample(lgxa.clamp(min=0)),
          f"densenet hires_cam @ {layer}")
    act = ca.LayerActivation(score, module).attribute(x).mean(1, keepdim=True)
    activation = na.explain(model, img, "layer_activation", K, layer=layer).data
    close(activation, upsample(act), f"densenet layer_activation @ {layer}")
    if layer == "features.norm0":
        assert activation.min() < 0  # the BatchNorm output before relu0, not after it
        ref = out_of_place(model)
        wrapper = ScoreModule(ref, class_logit(ref))
        theirs = ca.GuidedGradCam(wrapper, dict(ref.named_modules())[layer]).attribute(
            x.clone().requires_grad_(), interpolate_mode="trilinear")
        close(na.explain(model, img, "guided_grad_cam", K, layer=layer).data, theirs,
              f"densenet guided_grad_cam @ {layer}")


def test_densenet_layer_conductance(dense: tuple[nn.Module, np.ndarray, torch.Tensor]) -> None:
    model, img, x = dense
    module = dict(model.named_modules())[DENSE_LAYER]
    ours = na.explain(model, img, "layer_conductance", K, layer=DENSE_LAYER,
                      params={"steps": 3, "baseline": 0.0, "rule": "gausslegendre"})
    theirs = ca.LayerConductance(class_logit(model), module).attribute(x, baselines=0.0, n_steps=3,
                                                                        method="gausslegendre")
    close(ours.data, upsample(theirs.sum(1, keepdim=True)), "densenet layer_conductance (gausslegendre, 3 steps)")


def test_densenet_occlusion(dense: tuple[nn.Module, np.ndarray, torch.Tensor]) -> None:
    model, img, x = dense
    ours = na.explain(model, img, "occlusion", K, params={"window": 16, "stride": 8, "baseline": 0.0,
                                                          "max_batch": 9})
    theirs = ca.Occlusion(class_prob(model)).attribute(x, sliding_window_shapes=(1, 16, 16, 16),
                                                       strides=(1, 8, 8, 8), baselines=0.0)
    close(ours.data, theirs, "densenet occlusion (window 16, stride 8, probability)", rtol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# UNet: segmentation, target = Region(K, box) on the logits (probabilities for occlusion / ablation)


def test_unet_gradients(unet: tuple[str, nn.Module, np.ndarray, torch.Tensor]) -> None:
    act, model, img, x = unet
    target = na.targets.Region(K, box_mask())
    score = region_score(model)
    close(na.explain(model, img, "saliency", target).data,
          ca.Saliency(score).attribute(x.clone().requires_grad_(), abs=True), f"unet[{act}] saliency")
    prob_target = na.targets.Region(K, box_mask(), score="probability")
    close(na.explain(model, img, "saliency", prob_target).data,
          ca.Saliency(region_score(model, probability=True)).attribute(x.clone().requires_grad_(), abs=True),
          f"unet[{act}] saliency (probability score)")
    close(na.explain(model, img, "input_x_gradient", target).data,
          ca.InputXGradient(score).attribute(x.clone().requires_grad_()), f"unet[{act}] input_x_gradient")
    # 9 trapezoid nodes, not 8: with 8 the node a = 3/7 of the ReLU UNet puts a unit within float32 rounding of
    # its kink, and the convolution kernel (PyTorch picks it by batch size) flips it: Captum against itself
    # (all nodes in one batch vs internal_batch_size=1) then differs by 8.2e-4 of the map's max, as do we
    for rule, steps in (("gausslegendre", 8), ("riemann_trapezoid", 9)):
        ours = na.explain(model, img, "integrated_gradients", target,
                          params={"steps": steps, "baseline": -0.5, "rule": rule, "max_batch": 3})
        theirs = ca.IntegratedGradients(score).attribute(x, baselines=-0.5, n_steps=steps, method=rule)
        if rule == "riemann_trapezoid":
            # Captum's trapezoid weights are 1/n (summing to (n-1)/n); ours are the true trapezoid's 1/(n-1)
            theirs = theirs * steps / (steps - 1)
        close(ours.data, theirs, f"unet[{act}] integrated_gradients ({rule}, {steps} steps)")


def test_unet_smoothgrad(unet: tuple[str, nn.Module, np.ndarray, torch.Tensor]) -> None:
    act, model, img, x = unet
    target = na.targets.Region(K, box_mask())
    sigma, n, seed = 0.15, 4, 3
    stdev = sigma * float(x.max() - x.min())
    ours = na.explain(model, img, "smoothgrad", target, params={"samples": n, "sigma": sigma, "seed": seed})
    torch.manual_seed(seed)
    theirs = ca.NoiseTunnel(ca.Saliency(region_score(model))).attribute(
        x, nt_type="smoothgrad", nt_samples=n, stdevs=stdev, nt_samples_batch_size=1, abs=True)
    close(ours.data, theirs, f"unet[{act}] smoothgrad (saliency, 4 samples, same noise)")
    ours = na.explain(model, img, "smoothgrad", target,
                      params={"base": "input_x_gradient", "samples": n, "sigma": sigma, "seed": seed,
                              "squared": True})
    torch.manual_seed(seed)
    theirs = ca.NoiseTunnel(ca.InputXGradient(region_score(model))).attribute(
        x, nt_type="smoothgrad_sq", nt_samples=n, stdevs=stdev, nt_samples_batch_size=1)
    close(ours.data, theirs, f"unet[{act}] smoothgrad squared (input x gradient, same noise)")


def test_unet_backward_rules_and_model_unchanged(unet_relu: tuple[nn.Module, np.ndarray, torch.Tensor]) -> None:
    """Guided backprop, deconvnet and SmoothGrad over guided backprop with the UNet's in-place ReLUs (MONAI's
    ADN: norm -> dropout -> ReLU) equal Captum's on the out-of-place copy; no hook or flag is left behind."""
    model, img, x = unet_relu
    target = na.targets.Region(K, box_mask())
    ref = out_of_place(model)
    wrapper = ScoreModule(ref, region_score(ref))
    maps = {}
    for method, cls in [("guided_backprop", ca.GuidedBackprop), ("deconvnet", ca.Deconvolution)]:
        before = snapshot(model)
        maps[method] = na.explain(model, img, method, target).data
        assert_untouched(model, before)
        close(maps[method], cls(wrapper).attribute(x.clone().requires_grad_()), f"unet[relu] {method}")
    assert not np.allclose(maps["guided_backprop"], maps["deconvnet"])
    sigma, n, seed = 0.1, 3, 2
    ours = na.explain(model, img, "smoothgrad", target,
                      params={"base": "guided_backprop", "samples": n, "sigma": sigma, "seed": seed})
    torch.manual_seed(seed)
    theirs = ca.NoiseTunnel(ca.GuidedBackprop(wrapper)).attribute(
        x.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=n, stdevs=sigma * float(x.max() - x.min()),
        nt_samples_batch_size=1)
    close(ours.data, theirs, "unet[relu] smoothgrad (guided backprop, same noise)")
    module = dict(ref.named_modules())[UNET_LAYER]
    before = snapshot(model)
    ours = na.explain(model, img, "guided_grad_cam", target, layer=UNET_LAYER).data
    assert_untouched(model, before)
    theirs = ca.GuidedGradCam(wrapper, module).attribute(x.clone().requires_grad_(), interpolate_mode="trilinear")
    close(ours, theirs, "unet[relu] guided_grad_cam")


def test_unet_layer_methods(unet: tuple[str, nn.Module, np.ndarray, torch.Tensor]) -> None:
    act, model, img, x = unet
    target = na.targets.Region(K, box_mask())
    score = region_score(model)
    module = dict(model.named_modules())[UNET_LAYER]
    before = snapshot(model)
    ours = na.explain(model, img, "grad_cam", target, layer=UNET_LAYER).data
    assert_untouched(model, before)
    close(ours, upsample(ca.LayerGradCam(score, module).attribute(x, relu_attributions=True)),
          f"unet[{act}] grad_cam")
    lgxa = ca.LayerGradientXActivation(score, module).attribute(x)
    close(na.explain(model, img, "layer_gradient_x_activation", target, layer=UNET_LAYER).data,
          upsample(lgxa.sum(1, keepdim=True)), f"unet[{act}] layer_gradient_x_activation")
    close(na.explain(model, img, "layer_gradient_x_activation", target, layer=UNET_LAYER,
                     params={"channel": 3}).data,
          upsample(lgxa[:, 3:4]), f"unet[{act}] layer_gradient_x_activation (channel 3)")
    close(na.explain(model, img, "hires_cam", target, layer=UNET_LAYER).data,
          upsample(lgxa.sum(1, keepdim=True).clamp(min=0)), f"unet[{act}] hires_cam")
    close(na.explain(model, img, "layer_activation", target, layer=UNET_LAYER).data,
          upsample(ca.LayerActivation(score, module).attribute(x).mean(1, keepdim=True)),
          f"unet[{act}] layer_activation")
    ours = na.explain(model, img, "layer_conductance", target, layer=UNET_LAYER,
                      params={"steps": 6, "baseline": 0.0, "rule": "gausslegendre"}).data
    theirs = ca.LayerConductance(score, module).attribute(x, baselines=0.0, n_steps=6, method="gausslegendre")
    close(ours, upsample(theirs.sum(1, keepdim=True)), f"unet[{act}] layer_conductance (gausslegendre, 6 steps)")


def test_unet_occlusion_and_feature_ablation(unet: tuple[str, nn.Module, np.ndarray, torch.Tensor]) -> None:
    """Occlusion equals Captum's Occlusion; with stride = window it is feature ablation of the window grid
    (Captum's FeatureAblation with that grid as the feature mask)."""
    act, model, img, x = unet
    target = na.targets.Region(K, box_mask())
    prob = region_score(model, probability=True)
    ours = na.explain(model, img, "occlusion", target, params={"window": 12, "stride": 10, "baseline": 0.0,
                                                               "max_batch": 9}).data
    theirs = ca.Occlusion(prob).attribute(x, sliding_window_shapes=(1, 12, 12, 12), strides=(1, 10, 10, 10),
                                          baselines=0.0)
    close(ours, theirs, f"unet[{act}] occlusion (window 12, stride 10, probability)", rtol=1e-3)
    ours = na.explain(model, img, "occlusion", target, params={"window": 16, "stride": 16, "baseline": 0.0}).data
    grid = torch.arange(8).view(2, 2, 2).repeat_interleave(16, 0).repeat_interleave(16, 1).repeat_interleave(16, 2)
    theirs = ca.FeatureAblation(prob).attribute(x, baselines=0.0, feature_mask=grid[None, None])
    close(ours, theirs, f"unet[{act}] occlusion (stride = window) vs FeatureAblation", rtol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# the captum: adapter with a region target on MONAI networks (Captum classes without a built-in counterpart)


def test_unet_captum_adapter(unet_relu: tuple[nn.Module, np.ndarray, torch.Tensor]) -> None:
    """The adapter's region scalar on the in-place-ReLU UNet: DeepLift (deterministic), GradientShap, KernelShap,
    Lime (seeded: the same torch / numpy / random streams as Captum called after seeding) and FeatureAblation.
    DeepLift's reference runs on the out-of-place copy."""
    model, img, x = unet_relu
    target = na.targets.Region(K, box_mask())
    ref = out_of_place(model)
    wrapper = ScoreModule(ref, region_score(ref))
    grid = torch.arange(8).view(2, 2, 2).repeat_interleave(16, 0).repeat_interleave(16, 1).repeat_interleave(16, 2)
    mask = grid[None, None]
    before = snapshot(model)
    ours = na.explain(model, img, "captum:DeepLift", target, params={"baselines": 0.0}).data
    assert_untouched(model, before)
    close(ours, ca.DeepLift(wrapper).attribute(x.clone().requires_grad_(), baselines=0.0), "unet[relu] captum:DeepLift")
    seed = 4
    shap = {"baselines": torch.zeros(2, 1, SIZE, SIZE, SIZE), "n_samples": 3, "stdevs": 0.1, "seed": seed}
    ours = na.explain(model, img, "captum:GradientShap", target, params=shap).data
    reseed(seed)
    theirs = ca.GradientShap(region_score(model)).attribute(
        x.clone().requires_grad_(), **{k: v for k, v in shap.items() if k != "seed"})
    close(ours, theirs, "unet[relu] captum:GradientShap (same noise and path points)")
    for name in ("KernelShap", "Lime", "FeatureAblation"):
        extra = {} if name == "FeatureAblation" else {"n_samples": 12}
        ours = na.explain(model, img, f"captum:{name}", target,
                          params={"feature_mask": mask, "baselines": 0.0, "seed": seed, **extra}).data
        reseed(seed)
        theirs = getattr(ca, name)(region_score(model)).attribute(x, feature_mask=mask, baselines=0.0, **extra)
        close(ours, theirs, f"unet[relu] captum:{name}", rtol=1e-3)
    assert_untouched(model, before)


def reseed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def test_captum_adapter_seed_is_reproducible(unet_relu: tuple[nn.Module, np.ndarray, torch.Tensor]) -> None:
    """GradientShap draws its path points and baselines from numpy's global generator: the adapter's ``seed``
    seeds it too (same seed, same map; another seed, another map) and leaves the caller's numpy and ``random``
    states as they were."""
    model, img, _ = unet_relu
    target = na.targets.Region(K, box_mask())

    def run(seed: int) -> np.ndarray:
        params = {"baselines": torch.zeros(3, 1, SIZE, SIZE, SIZE), "n_samples": 2, "stdevs": 0.0, "seed": seed}
        return na.explain(model, img, "captum:GradientShap", target, params=params).data

    np.random.seed(123)
    random.seed(123)
    first = run(1)
    assert np.random.random() == np.random.RandomState(123).random_sample()
    assert random.random() == random.Random(123).random()
    np.testing.assert_array_equal(run(1), first)
    assert not np.allclose(run(2), first)
