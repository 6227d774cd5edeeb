"""Tiny analytic-size models shared by the tests (seeded, no downloads)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def conv(d: int) -> type[nn.Module]:
    return nn.Conv2d if d == 2 else nn.Conv3d


class Classifier(nn.Module):
    """conv -> ReLU -> strided conv -> ReLU -> conv -> ReLU -> GAP -> linear (CAM applies at ``features``)."""

    def __init__(self, d: int = 2, in_ch: int = 1, classes: int = 3, inplace: bool = False) -> None:
        super().__init__()
        C = conv(d)
        self.features = nn.Sequential(
            C(in_ch, 6, 3, padding=1), nn.ReLU(inplace=inplace),
            C(6, 8, 3, padding=1, stride=2), nn.ReLU(inplace=inplace),
            C(8, 8, 3, padding=1), nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1) if d == 2 else nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class FunctionalClassifier(nn.Module):
    """The same network, with its ReLUs as ``F.relu`` / ``torch.relu_`` calls (invisible to module hooks)."""

    def __init__(self, d: int = 2, in_ch: int = 1, classes: int = 3) -> None:
        super().__init__()
        C = conv(d)
        self.c1 = C(in_ch, 6, 3, padding=1)
        self.c2 = C(6, 8, 3, padding=1, stride=2)
        self.c3 = C(8, 8, 3, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        x = torch.relu_(self.c2(x))
        x = self.c3(x).relu()
        return self.head(x.flatten(2).mean(2))

    def as_modules(self) -> Classifier:
        """A ``Classifier`` with the same weights and ``nn.ReLU`` modules."""
        d = 2 if isinstance(self.c1, nn.Conv2d) else 3
        m = Classifier(d, self.c1.in_channels, self.head.out_features)
        m.features[0].load_state_dict(self.c1.state_dict())
        m.features[2].load_state_dict(self.c2.state_dict())
        m.features[4].load_state_dict(self.c3.state_dict())
        m.head.load_state_dict(self.head.state_dict())
        return m


class TinyUNet(nn.Module):
    """A UNet-like segmenter ``(B, C, *S) -> (B, K, *S)`` with one skip connection, 2D or 3D."""

    def __init__(self, d: int = 3, in_ch: int = 1, classes: int = 2) -> None:
        super().__init__()
        C = conv(d)
        T = nn.ConvTranspose2d if d == 2 else nn.ConvTranspose3d
        self.enc = nn.Sequential(C(in_ch, 6, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(C(6, 8, 3, padding=1, stride=2), nn.ReLU())
        self.bottleneck = nn.Sequential(C(8, 8, 3, padding=1), nn.ReLU())
        self.up = nn.Sequential(T(8, 6, 2, stride=2), nn.ReLU())
        self.dec = nn.Sequential(C(12, 6, 3, padding=1), nn.ReLU())
        self.out = C(6, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        u = self.up(self.bottleneck(self.down(e)))
        return self.out(self.dec(torch.cat([e, u], 1)))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return model.eval()


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth random image (blob + noise) so gradients vary across space."""
    g = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r2 = sum(gr**2 for gr in grids)
    return (np.exp(-3 * r2) + 0.3 * g.standard_normal(shape)).astype(np.float32)


# (name, model factory, image shape, task)
MODELS = {
    "cnn2d": (lambda: seeded(Classifier(2)), (24, 24)),
    "cnn3d": (lambda: seeded(Classifier(3)), (8, 12, 12)),
    "unet3d": (lambda: seeded(TinyUNet(3)), (8, 12, 12)),
}
