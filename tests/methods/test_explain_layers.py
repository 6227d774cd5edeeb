"""``na.explain_layers``: one layer method at several network layers. Shared-pass methods get every layer from
one forward and one backward pass, and each map equals ``na.explain`` at that layer; the others run per layer;
the model is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import MODELS, image
from test_model_unchanged import assert_untouched, snapshot
from torch import nn

import napari_attribution as na
from napari_attribution.targets import Region

SHARED = ["grad_cam", "hires_cam", "grad_cam_pp", "layer_activation", "layer_gradient_x_activation", "sam",
          "sam:layer"]


class _Counting(nn.Module):
    """Counts forward passes of the wrapped model and backward passes through its input conv."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return self.net(x)


def _layers(net: nn.Module, shape: tuple[int, ...]) -> list[str]:
    x = torch.from_numpy(image(shape))[None, None]
    return [c.name for c in na.find_layers(net, x)]


def _target(case: str, net: nn.Module, img: np.ndarray):
    if case != "unet3d":
        return 1
    with torch.no_grad():
        pred = net(torch.from_numpy(img)[None, None]).argmax(1)[0].numpy()
    return Region(1, pred == 1)


@pytest.mark.parametrize("case", ["cnn2d", "cnn3d", "unet3d"])
@pytest.mark.parametrize("method", SHARED)
def test_sweep_equals_explain_at_each_layer_from_one_pass(case: str, method: str) -> None:
    method, _, variant = method.partition(":")
    params = {"variant": variant} if variant else {}
    make, shape = MODELS[case]
    net, img = make(), image(shape)
    layers = _layers(net, shape)
    assert len(layers) >= 4
    target = _target(case, net, img)
    counted = _Counting(net)
    before = snapshot(counted)
    swept = na.explain_layers(counted, img, method, [f"net.{n}" for n in layers], target, params=params)
    assert counted.forwards == 1  # every layer from the one shared forward pass (sam: its kept graph)
    assert_untouched(counted, before)
    assert list(swept) == [f"net.{n}" for n in layers]
    for name in layers:
        ref = na.explain(net, img, method, target, layer=name, params=params)
        got = swept[f"net.{name}"]
        assert got.layer == f"net.{name}" and got.method == method
        scale = float(np.abs(ref.data).max()) or 1.0
        np.testing.assert_allclose(got.data, ref.data, rtol=1e-5, atol=1e-6 * scale, err_msg=name)


@pytest.mark.parametrize("method,params", [("layer_conductance", {"steps": 4}), ("score_cam", {})])
def test_sweep_of_a_per_layer_method_equals_explain(method: str, params: dict) -> None:
    make, shape = MODELS["cnn2d"]
    net, img = make(), image(shape)
    layers = _layers(net, shape)[:3]
    swept = na.explain_layers(net, img, method, layers, 1, params=params)
    for name in layers:
        ref = na.explain(net, img, method, 1, layer=name, params=params)
        np.testing.assert_allclose(swept[name].data, ref.data, rtol=1e-5, atol=1e-7)
        assert swept[name].layer == name


def test_sweep_of_a_2d_model_on_a_volume_runs_slice_by_slice() -> None:
    make, shape = MODELS["cnn2d"]
    net = make()
    vol = np.stack([image(shape, seed=s) for s in range(3)])
    layers = _layers(net, shape)[-2:]
    swept = na.explain_layers(net, vol, "grad_cam", layers, 1, params={"slices": [0, 2]})
    for name in layers:
        ref = na.explain(net, vol, "grad_cam", 1, layer=name, params={"slices": [0, 2]})
        assert swept[name].method == "grad_cam" and swept[name].data.shape == vol.shape
        np.testing.assert_allclose(swept[name].data, ref.data, rtol=1e-5, atol=1e-7, equal_nan=True)
        assert np.isnan(swept[name].data[1]).all()


def test_sweep_errors_are_clear() -> None:
    make, shape = MODELS["cnn2d"]
    net, img = make(), image(shape)
    with pytest.raises(na.ParameterError, match="at least one"):
        na.explain_layers(net, img, "grad_cam", [], 1)
    with pytest.raises(na.ParameterError, match="once"):
        na.explain_layers(net, img, "grad_cam", ["features.1", "features.1"], 1)
    with pytest.raises(na.MethodError, match="internal layer"):
        na.explain_layers(net, img, "saliency", ["features.1"], 1)
    with pytest.raises(na.LayerNotFoundError):
        na.explain_layers(net, img, "grad_cam", ["features.1", "no.such.layer"], 1)
    before = snapshot(net)
    with pytest.raises(na.ParameterError):
        na.explain_layers(net, img, "grad_cam", ["features.1"], 1, params={"no_such_param": 1})
    assert_untouched(net, before)


class _Residual(nn.Module):
    """conv -> residual unit (convolution branch + nn.Identity branch) -> GAP -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.identity = nn.Identity()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = self.branch(h) + self.identity(h)
        return self.head(h.mean((2, 3)))


def test_a_layer_that_returns_its_input_gets_its_own_gradient() -> None:
    """nn.Identity returns its input tensor, which also feeds the sibling branch: the gradient at the identity
    layer is the one through the layer's output only (as when it is explained alone), not the input's total."""
    torch.manual_seed(0)
    net = _Residual().eval()
    img = image((16, 16))
    layers = ["stem", "branch.0", "identity", "branch"]
    swept = na.explain_layers(net, img, "layer_gradient_x_activation", layers, 1)
    for name in layers:
        ref = na.explain(net, img, "layer_gradient_x_activation", 1, layer=name)
        np.testing.assert_allclose(swept[name].data, ref.data, rtol=1e-5, atol=1e-7, err_msg=name)
    # reference: the identity output's gradient is d logit / d(identity output) = W_head[1] / (H W) per channel
    x = torch.from_numpy(img)[None, None]
    with torch.no_grad():
        h = torch.relu(net.stem(x))
    expected = (h * (net.head.weight[1] / 256)[None, :, None, None]).sum(1)[0].detach().numpy()
    np.testing.assert_allclose(swept["identity"].data, expected, rtol=1e-4, atol=1e-7)


def test_sweep_seconds_add_up_to_the_sweep() -> None:
    """Each layer carries its own work plus an even share of the shared pass, not the whole pass each."""
    import time

    make, shape = MODELS["cnn3d"]
    net, img = make(), image(shape)
    layers = _layers(net, shape)
    t0 = time.perf_counter()
    swept = na.explain_layers(net, img, "grad_cam", layers, 1)
    wall = time.perf_counter() - t0
    assert 0 < sum(a.seconds for a in swept.values()) <= wall


@pytest.mark.parametrize("method", ["grad_cam", "sam", "layer_conductance"])
def test_sweep_leaves_the_model_unchanged_when_it_fails_midway(method: str) -> None:
    """The sweep's multi-layer capture removes every hook and restores the model's flags when the forward pass
    raises (one-pass sweep: its first pass; per-layer sweep: a later layer's pass)."""
    from test_model_unchanged import Wrapped

    make, shape = MODELS["cnn2d"]
    model = Wrapped(make())
    model.train()
    before = snapshot(model)
    layers = [f"net.{n}" for n in _layers(make(), shape)[:3]]
    model.boom.countdown = 1 if method != "layer_conductance" else 3
    with pytest.raises(RuntimeError, match="boom"):
        na.explain_layers(model, image(shape), method, layers, 1, params={"steps": 2} if method == "layer_conductance"
                          else {})
    model.boom.countdown = -1
    assert_untouched(model, before)
