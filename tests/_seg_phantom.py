"""An MRI-like segmentation phantom whose evidence is known, and a small MONAI UNet trained on it for about a second
(seeded, no downloads): the faithfulness tests' segmenter besides the demo vessel network.

Each volume is a dark background with Rician noise (the MRI background, its mode at 0.05), a ball of tissue (0.3)
and one to three bright spheres (0.8): the label is the spheres, and the spheres' voxels are the only evidence of
it (the tissue and the background are the same in every volume)."""

from __future__ import annotations

import functools

import numpy as np
import torch

SHAPE = (24, 24, 24)
NOISE = 0.05


def phantom(rng: np.random.Generator, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label)``: the MRI-like volume (float32) and the spheres (bool)."""
    zz, yy, xx = np.indices(shape)
    c = np.asarray(shape, float) / 2
    body = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < (0.45 * shape[0]) ** 2
    label = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 4))):
        p = rng.uniform(0.3, 0.7, 3) * np.asarray(shape)
        r = rng.uniform(2.5, 4.5)
        label |= (zz - p[0]) ** 2 + (yy - p[1]) ** 2 + (xx - p[2]) ** 2 < r * r
    image = np.where(label, 0.8, np.where(body, 0.3, 0.0))
    # a magnitude image: complex Gaussian noise, so the background is Rayleigh with its mode at NOISE (Rician)
    image = np.hypot(image + rng.normal(0.0, NOISE, shape), rng.normal(0.0, NOISE, shape))
    return image.astype(np.float32), label


UNET_KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
               "num_res_units": 0}


@functools.lru_cache(maxsize=1)
def trained_unet() -> torch.nn.Module:
    """A MONAI UNet (background / sphere logits) trained for 60 Adam steps on batches of four phantoms (about a
    second on one core; Dice about 0.87 on an unseen phantom). Shared by the tests of one process: do not train it
    further."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(**UNET_KWARGS)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(60):
            batch = [phantom(rng) for _ in range(4)]
            x = torch.from_numpy(np.stack([b[0] for b in batch]))[:, None]
            y = torch.from_numpy(np.stack([b[1] for b in batch])).long()
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()
