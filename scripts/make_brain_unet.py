"""Make the brain-extraction test network: a small 3D U-Net that takes exactly 64^3 voxels and gives ONE logit
channel (brain), trained on nilearn's MNI152 T1 template and its brain mask, exported to TorchScript.

It stands in for the kind of network users bring (a fixed-input TorchScript export with one sigmoid channel):
``tests/test_real_model.py`` explains it on the template resampled to an anisotropic grid through the
API, the CLI and the Explain dock. Run ``.venv/bin/python scripts/make_brain_unet.py`` to regenerate
``tests/data/brain_unet64.ts`` and its card (300 steps, about 15 minutes on 2 busy CPU cores; training is seeded but not
bit-reproducible across machines). Prints the Dice of the exported network on the template.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "data"
SIZE = 64
PERCENTILES = [0.5, 99.5]


class Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.norm = nn.InstanceNorm3d(cout, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(F.relu(self.norm(self.conv1(x)))))


class BrainUNet(nn.Module):
    """Three poolings (64 -> 8), 4-8-16-32 channels, one output logit; refuses any input but (N, 1, 64, 64, 64)."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.enc1, self.enc2, self.enc3, self.bottom = Block(1, c), Block(c, 2 * c), Block(2 * c, 4 * c), \
            Block(4 * c, 8 * c)
        self.up3 = nn.ConvTranspose3d(8 * c, 4 * c, 2, stride=2)
        self.dec3 = Block(8 * c, 4 * c)
        self.up2 = nn.ConvTranspose3d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = Block(4 * c, 2 * c)
        self.up1 = nn.ConvTranspose3d(2 * c, c, 2, stride=2)
        self.dec1 = Block(2 * c, c)
        self.head = nn.Conv3d(c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != 1 or x.shape[2] != 64 or x.shape[3] != 64 or x.shape[4] != 64:
            raise RuntimeError("BrainUNet takes inputs of shape (N, 1, 64, 64, 64) only")
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool3d(e1, 2))
        e3 = self.enc3(F.max_pool3d(e2, 2))
        b = self.bottom(F.max_pool3d(e3, 2))
        d3 = self.dec3(torch.cat([self.up3(b), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def template() -> tuple[np.ndarray, np.ndarray]:
    """nilearn's MNI152 T1 (values 0-1) and brain mask, in numpy (z, y, x) order, 1 mm."""
    from nilearn import datasets

    t1 = np.asarray(datasets.load_mni152_template().get_fdata(), np.float32).transpose(2, 1, 0)
    mask = np.asarray(datasets.load_mni152_brain_mask().get_fdata(), np.float32).transpose(2, 1, 0) > 0
    return np.ascontiguousarray(t1), np.ascontiguousarray(mask)


def normalise(x: Tensor) -> Tensor:
    """The card's preprocessing: percentiles [0.5, 99.5] clipped and rescaled to [0, 1]."""
    lo, hi = np.percentile(x.numpy(), PERCENTILES)
    return ((x.clamp(float(lo), float(hi)) - float(lo)) / max(float(hi - lo), 1e-6)).float()


def sample(t1: np.ndarray, mask: np.ndarray, g: np.random.Generator) -> tuple[Tensor, Tensor]:
    """A randomly cropped / padded, flipped, gamma-changed copy, resized to 64^3 as the card does."""
    img, msk = torch.from_numpy(t1), torch.from_numpy(mask.astype(np.float32))
    sl = []
    for _ in img.shape:
        a, b = g.integers(-12, 13, 2)
        sl.append((int(a), int(b)))
    pads = [v for a, b in reversed(sl) for v in (max(-a, 0), max(-b, 0))]
    img, msk = F.pad(img, pads), F.pad(msk, pads)
    crop = tuple(slice(max(a, 0), n - max(b, 0)) for (a, b), n in zip(sl, img.shape, strict=True))
    img, msk = img[crop], msk[crop]
    if g.random() < 0.5:
        img, msk = img.flip(-1), msk.flip(-1)
    img = img.clamp(min=0) ** float(g.uniform(0.7, 1.4)) * float(g.uniform(0.5, 2.0))
    x = F.interpolate(normalise(img)[None, None], size=(SIZE,) * 3, mode="trilinear", align_corners=False)
    y = F.interpolate(msk[None, None], size=(SIZE,) * 3, mode="trilinear", align_corners=False)
    return x[0], (y[0] > 0.5).float()


def main() -> int:
    torch.manual_seed(0)
    g = np.random.default_rng(0)
    t1, mask = template()
    net = BrainUNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    steps = 300
    for step in range(steps):
        xs, ys = zip(*(sample(t1, mask, g) for _ in range(2)), strict=True)
        x, y = torch.stack(xs), torch.stack(ys)
        logit = net(x)
        p = torch.sigmoid(logit)
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logit, y) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)
    net.eval()
    scripted = torch.jit.script(net)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "brain_unet64.ts"
    scripted.save(str(path))
    card = {
        "task": "segmentation", "spatial_dims": 3, "in_channels": 1, "output": "logits", "class_names": ["brain"],
        "input_shape": [SIZE, SIZE, SIZE], "preprocess": {"percentile": PERCENTILES},
    }
    (OUT / "brain_unet64.card.json").write_text(json.dumps(card, indent=2) + "\n")
    with torch.no_grad():
        x = F.interpolate(normalise(torch.from_numpy(t1))[None, None], size=(SIZE,) * 3, mode="trilinear",
                          align_corners=False)
        y = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(SIZE,) * 3,
                          mode="trilinear", align_corners=False) > 0.5
        pred = scripted(x) > 0
    dice = 2 * (pred & y).sum().item() / (pred.sum() + y.sum()).item()
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB); Dice on the template at 64^3: {dice:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
