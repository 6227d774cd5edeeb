"""Layer discovery on real networks: the default layer of a segmentation network is the deepest multi-channel layer
before the output head (never the output convolution), classification keeps the last spatial layer, candidates are
listed in forward order with their shapes (also in the error for an unknown layer), and TorchScript archives are
refused for layer methods with the way out: a card naming the factory loads the archive's weights into the Python
network."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _nets import Classifier, TinyUNet, seeded
from torch import nn

import napari_attribution as na
from napari_attribution.models._layers import default_layer, find_layers, pick_default

monai_nets = pytest.importorskip("monai.networks.nets")

X3 = torch.zeros(1, 1, 16, 16, 16)


def _unet(res_units: int, out: int = 2) -> nn.Module:
    return monai_nets.UNet(3, 1, out, channels=(4, 8, 16), strides=(2, 2), num_res_units=res_units)


SEGMENTERS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    # MONAI UNet: model.0 = first down block, model.1 = everything below it (a SkipConnection), model.2 = the last up
    # block, which maps to the classes: the head
    "UNet": (lambda: _unet(0), "model.1"),
    # with residual units the head is an up-convolution plus a residual unit, all with the output's 2 channels
    "UNet residual": (lambda: _unet(2), "model.1"),
    "UNet residual, one sigmoid channel": (lambda: _unet(2, out=1), "model.1"),
    # DynUNet (deep supervision off): output_block(skip_layers(x)); output_block is the 1x1 head
    "DynUNet": (lambda: monai_nets.DynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                                           upsample_kernel_size=[2, 2], deep_supervision=False), "skip_layers"),
    # SegResNet: conv_final = (GroupNorm, act_mod, 1x1 conv); act_mod is the activation before the 1x1 conv
    "SegResNet": (lambda: monai_nets.SegResNet(3, init_filters=8, in_channels=1, out_channels=2), "act_mod"),
    # BasicUNet: final_conv(upcat_1(...))
    "BasicUNet": (lambda: monai_nets.BasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4)), "upcat_1"),
    "Sequential": (lambda: nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1)), "1"),
}


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_segmentation_default_is_the_deepest_multichannel_layer_before_the_head(name: str) -> None:
    build, expected = SEGMENTERS[name]
    net = seeded(build(), 0).eval()
    x = torch.zeros(1, 1, 32, 32, 32)  # BasicUNet halves the size four times
    with torch.no_grad():
        k = net(x).shape[1]
    cands = find_layers(net, x)
    names = [c.name for c in cands]
    chosen = names.index(expected)
    assert default_layer(net, x) == expected
    assert cands[chosen].channels > 1 and cands[chosen].shape[2:] != (1, 1, 1)
    # everything after it is the output head: the classes' K channels
    assert all(c.channels == k for c in cands[chosen + 1:])
    # and Grad-CAM without a layer looks there
    image = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    att = na.explain(net, image, "grad_cam", na.targets.Class(k - 1))
    assert att.layer == expected
    np.testing.assert_array_equal(att.data, na.explain(net, image, "grad_cam", na.targets.Class(k - 1),
                                                       layer=expected).data)


def test_the_output_head_was_the_old_default_on_residual_unets() -> None:
    """The case the rule is for: MONAI's UNet with residual units ends in layers that *are* the prediction (two
    channels at full resolution); the last spatial candidate is one of them."""
    net = seeded(_unet(2), 0).eval()
    cands = find_layers(net, X3)
    assert cands[-1].name.startswith("model.2.") and cands[-1].channels == 2 and cands[-1].shape[2:] == (16, 16, 16)
    chosen = pick_default(cands, (1, 2, 16, 16, 16))
    assert chosen is not None and chosen.name == "model.1"


class SigmoidHead(nn.Module):
    """Features, then a 1x1 output convolution whose result goes through a functional sigmoid: the output
    convolution's output is not the model's output tensor, so it *is* a candidate."""

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU())
        self.out = nn.Conv3d(6, k, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.features(x)))


@pytest.mark.parametrize("k", [1, 3])
def test_a_functional_activation_after_the_head_does_not_make_the_head_the_default(k: int) -> None:
    net = seeded(SigmoidHead(k), 1).eval()
    names = [c.name for c in find_layers(net, X3)]
    assert names[-1] == "out"  # a candidate (its output is not the model's output) ...
    assert default_layer(net, X3) == "features"  # ... but never the default
    image = np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32)
    assert na.explain(net, image, "grad_cam", 0).layer == "features"
    assert na.explain(net, image, "grad_cam", 0, layer="out").layer == "out"  # asked for: allowed


def test_classification_keeps_the_last_spatial_layer() -> None:
    net = seeded(Classifier(2), 0).eval()
    x = torch.zeros(1, 1, 16, 16)
    cands = find_layers(net, x)
    assert default_layer(net, x) == cands[-1].name == "features"
    dense = seeded(monai_nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=3, init_features=4,
                                          growth_rate=4, block_config=(1, 1, 1, 1)), 0).eval()
    x = torch.zeros(1, 1, 64, 64)
    cands = find_layers(dense, x)
    assert default_layer(dense, x) == cands[-1].name
    assert pick_default(cands, (1, 3)) == cands[-1]


def test_the_demo_segmenter_default_is_its_cards_layer() -> None:
    """The vessel demo's card names dec1; the automatic rule finds the same layer without the card."""
    loaded = na.load_model("demo:vessel-seg")
    card = loaded.card
    assert card.patch_size is not None
    x = torch.zeros((1, 1) + tuple(card.patch_size))
    assert card.default_layer == default_layer(loaded.module, x) == "dec1"


def test_candidates_are_in_forward_order_with_their_shapes() -> None:
    net = seeded(TinyUNet(3), 0).eval()
    x = torch.zeros(1, 1, 8, 8, 8)
    cands = find_layers(net, x)
    assert [c.name for c in cands] == ["enc.0", "enc.1", "enc", "down.0", "down.1", "down", "bottleneck.0",
                                       "bottleneck.1", "bottleneck", "up.0", "up.1", "up", "dec.0", "dec.1", "dec"]
    shapes = {c.name: c.shape for c in cands}
    assert shapes["enc"] == (1, 6, 8, 8, 8) and shapes["down"] == (1, 8, 4, 4, 4) and shapes["up"] == (1, 6, 8, 8, 8)
    assert str(cands[3]) == "down.0 (Conv3d, 8 x 4x4x4)"
    assert [c.name for c in na.find_layers(net, x)] == [c.name for c in cands]


def test_an_unknown_layer_lists_the_candidates_in_forward_order_with_shapes() -> None:
    net = seeded(TinyUNet(3), 0).eval()
    image = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(na.LayerNotFoundError) as info:
        na.explain(net, image, "grad_cam", 1, layer="dec.2")
    message = str(info.value)
    assert "no layer 'dec.2'" in message and "Did you mean: dec.1, dec.0, dec?" in message
    listed = ["enc.0 (Conv3d, 6 x 8x8x8)", "down (Sequential, 8 x 4x4x4)", "up.0 (ConvTranspose3d, 6 x 8x8x8)",
              "dec (Sequential, 6 x 8x8x8)"]
    positions = [message.index(item) for item in listed]
    assert positions == sorted(positions)
    assert "out (" not in message  # the output convolution is the model's output: not a candidate


# ------------------------------------------------------------------------------------------------ TorchScript


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16], "strides": [2, 2],
          "num_res_units": 2}


@pytest.fixture
def archive(tmp_path: Path) -> tuple[nn.Module, Path]:
    """A MONAI UNet (residual units: BatchNorm buffers, PReLU weights) and its TorchScript archive."""
    net = seeded(monai_nets.UNet(**KWARGS), 3).eval()
    with torch.no_grad():  # non-trivial running statistics, so a forgotten buffer would show
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "model.ts"
    _script(net).save(str(path))
    return net, path


def test_layer_methods_on_torchscript_are_refused_with_the_way_out(archive: tuple[nn.Module, Path]) -> None:
    net, path = archive
    scripted = na.load_model(str(path))
    assert isinstance(scripted.module, torch.jit.ScriptModule)
    image = np.random.default_rng(2).normal(size=(16, 16, 16)).astype(np.float32)
    for call in (lambda: na.explain(scripted, image, "grad_cam", 1),
                 lambda: na.find_layers(scripted.module, torch.zeros(1, 1, 16, 16, 16))):
        with pytest.raises(na.MethodError) as info:
            call()
        message = str(info.value)
        assert "TorchScript" in message and '"factory"' in message and '"weights": "model.ts"' in message
    # gradient methods still run on the archive itself
    assert na.explain(scripted, image, "saliency", 1).data.shape == image.shape


def test_a_card_naming_the_factory_loads_the_archives_weights(archive: tuple[nn.Module, Path],
                                                              tmp_path: Path) -> None:
    net, path = archive
    loaded = na.load_model({"factory": "monai.networks.nets:UNet", "kwargs": KWARGS, "weights": str(path)})
    assert not isinstance(loaded.module, torch.jit.ScriptModule)
    original, copied = net.state_dict(), loaded.module.state_dict()
    assert original.keys() == copied.keys()
    assert all(torch.equal(original[k], copied[k]) for k in original)  # parameters and buffers
    image = np.random.default_rng(3).normal(size=(16, 16, 16)).astype(np.float32)
    x = torch.from_numpy(image)[None, None]
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.module(x).numpy(), net(x).numpy())
    # the layer methods now run, on the same weights as the Python network the archive came from
    got = na.explain(loaded, image, "grad_cam", 1)
    ref = na.explain(net, image, "grad_cam", 1)
    assert got.layer == ref.layer == "model.1"
    np.testing.assert_array_equal(got.data, ref.data)
    # the same from a card file beside the archive (weights relative to the card)
    card = tmp_path / "unet.card.json"
    card.write_text(json.dumps({"factory": "monai.networks.nets:UNet", "kwargs": KWARGS, "weights": "model.ts"}))
    from_file = na.load_model(str(card))
    assert all(torch.equal(from_file.module.state_dict()[k], original[k]) for k in original)


def test_an_archive_that_does_not_fit_the_factory_says_which_weights(archive: tuple[nn.Module, Path]) -> None:
    _, path = archive
    wrong = {**KWARGS, "channels": [4, 8, 32]}
    with pytest.raises(na.ModelLoadError) as info:
        na.load_model({"factory": "monai.networks.nets:UNet", "kwargs": wrong, "weights": str(path)})
    message = str(info.value)
    assert "model.ts" in message and "do not fit" in message and "with a different shape" in message
