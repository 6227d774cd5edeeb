"""The demo networks (plain PyTorch, ``nn.ReLU`` modules so every hook-based method reaches them).

Intensity normalisation is part of each ``forward`` (a fixed window, no per-image statistics), so the models
take raw HU (CT) or ``[0, 1]`` intensities (MRA) and their cards need no preprocessing.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

__all__ = ["ContrastPhaseNet", "LesionNet3d", "VesselUNet3d"]


def _conv(d: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    return nn.Conv2d if d == 2 else nn.Conv3d


class ContrastPhaseNet(nn.Module):
    """Contrast-phase classifier, 2D or 3D: three conv stages, global average pooling, one linear layer.

    ``features`` ends with ``features.relu3``, the last spatial layer and the one CAM and Grad-CAM use: stride
    8 in 2D (12 x 12 for a 96 x 96 slice); stride ``(2, 4, 4)`` in 3D (the first stage keeps the slice axis, the
    last none: 12 x 12 x 12 for a 24 x 48 x 48 slab). The HU window (level 40,
    width 400: ``(HU - 40) / 200`` clamped to ``[-2, 3]``) is applied inside ``forward``.
    """

    def __init__(self, dims: int = 2, classes: int = 3, width: int = 16) -> None:
        super().__init__()
        C = _conv(dims)
        w1, w2, w3 = width, 2 * width, 3 * width
        s1: Any = 2 if dims == 2 else (1, 2, 2)
        s3 = 2 if dims == 2 else 1
        self.dims = dims
        self.features = nn.Sequential(OrderedDict([
            ("conv1a", C(1, w1, 3, padding=1)), ("relu1a", nn.ReLU()),
            ("conv1b", C(w1, w1, 3, padding=1, stride=s1)), ("relu1", nn.ReLU()),
            ("conv2a", C(w1, w2, 3, padding=1)), ("relu2a", nn.ReLU()),
            ("conv2b", C(w2, w2, 3, padding=1, stride=2)), ("relu2", nn.ReLU()),
            ("conv3a", C(w2, w3, 3, padding=1)), ("relu3a", nn.ReLU()),
            ("conv3b", C(w3, w3, 3, padding=1, stride=s3)), ("relu3", nn.ReLU()),
        ]))
        self.pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(w3, classes)

    @staticmethod
    def window(x: torch.Tensor) -> torch.Tensor:
        """HU -> network units: ``(HU - 40) / 200`` clamped to ``[-2, 3]`` (-360 .. 640 HU)."""
        y: torch.Tensor = torch.clamp((x - 40.0) / 200.0, -2.0, 3.0)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        logits: torch.Tensor = self.head(self.pool(self.features(self.window(x))).flatten(1))
        return logits


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(OrderedDict([
            ("conv1", nn.Conv3d(cin, cout, 3, padding=1)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv3d(cout, cout, 3, padding=1)), ("relu2", nn.ReLU()),
        ]))


class VesselUNet3d(nn.Module):
    """A small 3D UNet (two poolings, widths 8-16-32) ``(B, 1, D, H, W) -> (B, 2, D, H, W)`` logits
    (channel 0 background, 1 vessel; softmax). Spatial sizes must be multiples of 4.

    Modules: ``enc1``, ``enc2``, ``bottleneck``, ``up2``, ``dec2``, ``up1``, ``dec1``, ``head``; the intensity
    scaling ``(x - 0.25) / 0.25`` (inputs in ``[0, 1]``) is applied inside ``forward``.
    """

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 8) -> None:
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.enc1 = _Block(in_channels, w1)
        self.pool1 = nn.MaxPool3d(2)
        self.enc2 = _Block(w1, w2)
        self.pool2 = nn.MaxPool3d(2)
        self.bottleneck = _Block(w2, w3)
        self.up2 = nn.ConvTranspose3d(w3, w2, 2, stride=2)
        self.dec2 = _Block(2 * w2, w2)
        self.up1 = nn.ConvTranspose3d(w2, w1, 2, stride=2)
        self.dec1 = _Block(2 * w1, w1)
        self.head = nn.Conv3d(w1, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = (x - 0.25) / 0.25
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        b = self.bottleneck(self.pool2(e2))
        d2 = self.dec2(torch.cat([e2, self.up2(b)], 1))
        d1 = self.dec1(torch.cat([e1, self.up1(d2)], 1))
        logits: torch.Tensor = self.head(d1)
        return logits


class LesionNet3d(nn.Module):
    """The demo lesion classifier (``demo:lesion3d``, used by :mod:`napari_attribution._demo`). Input HU, windowed
    ``(HU - 40) / 300`` to ``[-1, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv3d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv3d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = torch.clamp((x - 40.0) / 300.0, -1.0, 1.0)
        logits: torch.Tensor = self.head(self.features(x).mean(dim=(2, 3, 4)))
        return logits
