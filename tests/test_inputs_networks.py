"""Real networks on odd-sized scans through the input path: MONAI's UNet, DynUNet, SegResNet and DenseNet121 built
from card dicts explain a 45 x 50 x 47 scan with no user-written pad_to_multiple (the padding a trial forward
finds is cropped away again: maps and predictions have the scan's shape), and a network whose multiple cannot be
found fails before the run with one InputShapeError naming the card keys, never a torch traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import napari_attribution as na

pytest.importorskip("monai")

ODD = (45, 50, 47)


def scan() -> np.ndarray:
    g = np.random.default_rng(0)
    return g.normal(size=ODD).astype(np.float32)


NETS = {
    "UNet": ({"factory": "monai.networks.nets:UNet",
              "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16, 32],
                         "strides": [2, 2, 2], "num_res_units": 1}}, 8),
    "DynUNet": ({"factory": "monai.networks.nets:DynUNet",
                 "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3, 3],
                            "strides": [1, 2, 2, 2], "upsample_kernel_size": [2, 2, 2], "filters": [4, 8, 16, 32]}},
                8),
    "SegResNet": ({"factory": "monai.networks.nets:SegResNet",
                   "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8,
                              "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}}, 4),
    "DenseNet121": ({"factory": "monai.networks.nets:DenseNet121",
                     "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2}}, None),
}


@pytest.mark.parametrize("name", list(NETS))
def test_monai_networks_explain_odd_sizes_without_pad_to_multiple(name: str) -> None:
    spec, multiple = NETS[name]
    model = na.load_model({**spec, "weights": "random"})
    assert "pad_to_multiple" not in (model.card.preprocess or {})
    img = scan()
    res = na.explain(model, img, "saliency", 1)
    assert res.data.shape == ODD and np.isfinite(res.data).all() and res.data.max() > 0
    steps = res.extras.get("preprocessing", [])
    if multiple is None:  # a classifier pools globally: odd sizes run as they are, nothing is padded
        assert not steps and res.prediction.shape == (2,)
        return
    assert res.prediction.shape == ODD
    padded = res.extras["model_grid_shape"]
    assert all(n % multiple == 0 and n >= o for n, o in zip(padded, ODD, strict=True))
    assert any(f"multiple of {multiple}" in s for s in steps), steps
    # the padding is the smallest power of two the network runs on: half of it fails
    half = tuple(-(-o // (multiple // 2)) * (multiple // 2) for o in ODD)
    if half != tuple(padded):
        with pytest.raises(Exception):  # noqa: B017 - the network's own error
            with torch.no_grad():
                model.module(torch.zeros((1, 1) + half))
    # the trial forward is remembered: a second explain equals the first
    again = na.explain(model, img, "saliency", 1)
    np.testing.assert_array_equal(again.data, res.data)


class Needs5(nn.Module):
    """Pools by 5 with a functional call and joins a skip: runs only on sizes divisible by 5 (no module tells)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        a = self.conv(x)
        down = F.avg_pool3d(a, 5)
        return a + F.interpolate(down, scale_factor=5.0, mode="nearest")


def test_a_multiple_that_cannot_be_found_is_one_clear_error_before_the_run() -> None:
    net = Needs5()
    seen: list[str] = []
    with pytest.raises(na.InputShapeError, match="input_shape") as info:
        na.explain(net, scan(), "occlusion", na.targets.Voxel(1, (3, 3, 3)), params={"window": 4, "stride": 4},
                   progress=lambda d, t, m: seen.append(m))
    message = str(info.value)
    assert "pad_to_multiple" in message and "(45, 50, 47)" in message
    assert "Traceback" not in message
    assert net.calls <= 8  # the failed first pass and the trial passes: no occlusion window ran
    # with the multiple on the card it runs, and the maps come back on the scan's grid
    loaded = na.LoadedModel(net, na.ModelCard(spatial_dims=3, in_channels=1,
                                              preprocess={"pad_to_multiple": 5}))
    res = na.explain(loaded, scan(), "saliency", na.targets.Voxel(1, (3, 3, 3)))
    assert res.data.shape == ODD and res.extras["model_grid_shape"] == (45, 50, 50)


def test_a_card_that_fixes_the_grid_wrongly_is_named_in_the_error() -> None:
    loaded = na.LoadedModel(Needs5(), na.ModelCard(spatial_dims=3, in_channels=1, input_shape=(32, 32, 32)))
    with pytest.raises(na.InputShapeError, match="input_shape"):
        na.explain(loaded, scan(), "saliency", na.targets.Voxel(1, (3, 3, 3)))


def test_a_network_that_fails_for_another_reason_keeps_its_own_error() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.requires_grad:
                raise ValueError("this network refuses gradients")
            return self.conv(x)

    with pytest.raises(ValueError, match="refuses gradients"):
        na.explain(Broken(), scan(), "saliency", na.targets.Voxel(1, (3, 3, 3)))


def test_a_channel_first_scan_is_read_alike_by_the_api_the_cli_and_the_docks(tmp_path: Path) -> None:
    """A one-channel 3D model given (1, D, H, W): one rule (inputs.layout) in every caller."""
    from napari_attribution._cli_run import explain_file
    from napari_attribution.runs.jobs import spatial_offset
    from napari_attribution.runs.model_info import ModelInfo

    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1))
    loaded = na.LoadedModel(net, na.ModelCard(spatial_dims=3, in_channels=1, task="segmentation"))
    vol = scan()[None]  # (1, 45, 50, 47)
    np.save(tmp_path / "vol.npy", vol)
    api = na.explain(loaded, vol, "saliency", na.targets.Voxel(1, (20, 20, 20)))
    assert api.data.shape == ODD
    out = explain_file("python object", str(tmp_path / "vol.npy"), ["saliency"], str(tmp_path / "map.npy"),
                       target="voxel:1:20,20,20", model=loaded)
    np.testing.assert_allclose(np.load(out.outputs["saliency"]), api.data, rtol=1e-6)
    assert spatial_offset(ModelInfo(model=loaded, source="python object", label="net"), vol.shape) == 1
