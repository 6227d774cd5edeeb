"""The real-scan test case shared by tests/test_real_model.py and the Explain dock's test: nilearn's MNI152 T1 template
on an anisotropic grid, and the brain-extraction TorchScript network's foreground computed without the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import napari_attribution as na

DATA = Path(__file__).parent / "data"
NET = DATA / "brain_unet64.ts"
SHAPE = (90, 110, 80)
SPACING = (2.0, 1.6, 2.2)
OCCLUSION = {"window": [45, 55, 40], "stride": [45, 55, 40]}  # 8 windows: the test compares paths, not maps


def _resample(volume: np.ndarray, order: int) -> np.ndarray:
    """The 1 mm template on the anisotropic grid, centres aligned (scipy's map_coordinates, world positions)."""
    from scipy.ndimage import map_coordinates

    axes = [(np.arange(n) - (n - 1) / 2) * s + (m - 1) / 2 for n, s, m in zip(SHAPE, SPACING, volume.shape,
                                                                             strict=True)]
    grid = np.meshgrid(*axes, indexing="ij")
    return map_coordinates(volume, grid, order=order, mode="constant", cval=0.0).astype(np.float32)


def load_mri() -> tuple[np.ndarray, np.ndarray, na.Geometry]:
    """The scan (z, y, x), the template's brain mask on the same grid, and the scan's geometry."""
    from nilearn import datasets

    t1 = np.asarray(datasets.load_mni152_template().get_fdata(), np.float32).transpose(2, 1, 0)
    brain = np.asarray(datasets.load_mni152_brain_mask().get_fdata(), np.float32).transpose(2, 1, 0)
    scan = _resample(t1, 1) * 1000.0  # MRI-like units: the card's percentile step normalises them
    return scan, _resample(brain, 0) > 0.5, na.Geometry(spacing=SPACING, origin=(0.0, 0.0, 0.0))


def independent_saliency(net: torch.nn.Module, scan: np.ndarray, region: np.ndarray) -> np.ndarray:
    """|d/dx sum_region logit| with respect to the normalised scan's own voxels, through both resizes, by hand."""
    lo, hi = np.percentile(scan, [0.5, 99.5])
    x = torch.from_numpy((np.clip(scan, lo, hi) - lo) / (hi - lo)).float()[None, None].requires_grad_(True)
    logit = net(F.interpolate(x, size=(64, 64, 64), mode="trilinear", align_corners=False))
    back = F.interpolate(logit, size=SHAPE, mode="trilinear", align_corners=False)
    (grad,) = torch.autograd.grad((back[0, 0] * torch.from_numpy(region)).sum(), x)
    return grad[0, 0].abs().numpy()


def independent_foreground(net: torch.nn.Module, scan: np.ndarray) -> np.ndarray:
    """The network's brain on the scan's grid, computed without the package: percentiles [0.5, 99.5] rescaled to
    [0, 1], resized to 64^3, the network, the logit resized back (linear), thresholded at 0."""
    lo, hi = np.percentile(scan, [0.5, 99.5])
    x = torch.from_numpy((np.clip(scan, lo, hi) - lo) / (hi - lo)).float()[None, None]
    with torch.no_grad():
        logit = net(F.interpolate(x, size=(64, 64, 64), mode="trilinear", align_corners=False))
        back = F.interpolate(logit, size=SHAPE, mode="trilinear", align_corners=False)
    return back[0, 0].numpy() > 0
