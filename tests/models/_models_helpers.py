"""Helpers for the model-loading tests: small networks and files written into tmp_path."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from _nets import Classifier, seeded
from torch import nn

# the test suite's own network modules: loading a card that names them needs the explicit opt-in (allow_modules)
OWN = ["_nets"]
# a 3D MONAI UNet small enough to build and run in milliseconds
UNET_KWARGS: dict[str, Any] = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
                               "strides": [2], "num_res_units": 0}
DENSENET_KWARGS: dict[str, Any] = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "init_features": 4,
                                   "growth_rate": 4, "block_config": [1, 1, 1, 1]}


def build_classifier(d: int = 2, classes: int = 3) -> nn.Module:
    """A factory *function* (not a class): allowed only with trust=True."""
    return Classifier(d, classes=classes)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """torch.jit.script without the DeprecationWarning torch 2.13 emits for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def classifier(d: int = 2, classes: int = 3, seed: int = 0) -> nn.Module:
    return seeded(Classifier(d, classes=classes), seed)
