"""A one-output-channel 3D segmenter with a known foreground (brain-extraction style: one sigmoid channel or one
logit), for the tests of the one-channel rule: class 0 is the foreground, the prediction draws it as label 1, and
every "in target" number measures that foreground."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class OneChannelSegmenter(nn.Module):
    """``(B, 1, D, H, W) -> (B, 1, D, H, W)``: one logit, ``relu(local 3x3x3 mean / 100 - 1.2) - 0.4``, so the
    foreground (logit > 0) is where the local mean exceeds 160 (the core of the phantom's lesion: 224 voxels),
    while ``act`` responds where it exceeds 120 (maps of the layers spill over the foreground, about 12 % of their
    energy lies outside it, so "in target" numbers are not a trivial 100 %). With ``probabilities=True`` a Sigmoid
    follows (foreground: > 0.5, the same voxels). Hand-set weights, no training; ``mean`` and ``act`` are spatial
    layers for the layer methods."""

    def __init__(self, probabilities: bool = False) -> None:
        super().__init__()
        self.mean = nn.Conv3d(1, 2, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Conv3d(2, 1, 1)
        self.out = nn.Sigmoid() if probabilities else nn.Identity()
        with torch.no_grad():
            self.mean.weight.fill_(1.0 / 27 / 100)
            self.mean.bias.fill_(-1.2)
            self.head.weight.zero_()
            self.head.weight[0, 0] = 1.0
            self.head.bias.fill_(-0.4)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.act(self.mean(x))))


def phantom() -> np.ndarray:
    """The lesion phantom (float32, (D, H, W), HU) of the demo data, seeded."""
    from napari_attribution._demo import phantom as make

    return make(np.random.default_rng(7), lesion=True)[0].astype(np.float32)


def foreground(net: nn.Module, volume: np.ndarray, probabilities: bool = False) -> np.ndarray:
    """The foreground thresholded independently of the library: one forward pass, output > 0 (> 0.5)."""
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(volume, np.float32))[None, None])[0, 0].numpy()
    return out > (0.5 if probabilities else 0.0)


def energy_inside(heat: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's positive energy inside ``region``, computed by hand."""
    pos = np.clip(np.nan_to_num(np.asarray(heat, np.float64)), 0, None)
    return float(pos[region].sum() / pos.sum())
