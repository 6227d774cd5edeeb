"""Shared CLI fixtures: a small MONAI UNet checkpoint with its card beside it, and one anisotropic NIfTI scan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_attribution.io import Geometry, write_nifti

KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
          "num_res_units": 0}


@pytest.fixture
def model_and_scan(tmp_path: Path) -> tuple[Path, Path]:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    torch.save(UNet(**KWARGS).eval().state_dict(), tmp_path / "unet.pt")
    (tmp_path / "unet.card.json").write_text(json.dumps(
        {"factory": "monai.networks.nets:UNet", "kwargs": KWARGS, "task": "segmentation", "weights": "unet.pt"}))
    vol = np.random.default_rng(0).normal(0, 1, (8, 12, 12)).astype(np.float32)
    scan = tmp_path / "scans" / "case0.nii.gz"
    scan.parent.mkdir()
    write_nifti(scan, vol, Geometry(spacing=(1.5, 0.8, 0.8), origin=(0.0, 0.0, 0.0)))
    return tmp_path / "unet.pt", scan
