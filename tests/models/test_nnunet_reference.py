"""Parity with nnU-Net 2.8.1 itself on a real result folder it trained (tests/data/nnunet/, made by
scripts/make_nnunet_folder.py, described in tests/data/nnunet/README.md): the scans read with the package's NIfTI
reader, the folder loaded without trust; the network's input against nnU-Net's preprocessed array, our logits on
the network grid against its predictor run with float32 accumulation, our segmentation on the scan's grid against
``nnUNetPredictor``'s own (float16 accumulation) and the float32 run's, with and without mirroring; saliency through
it. Needs no nnunetv2."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("dynamic_network_architectures")
pytest.importorskip("nibabel")

import napari_attribution as na  # noqa: E402
from napari_attribution.inferers import SlidingWindowNet  # noqa: E402
from napari_attribution.inputs import prepare  # noqa: E402
from napari_attribution.io import read_nifti  # noqa: E402
from napari_attribution.targets import Predicted  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "nnunet"
SCANS = ("scan_train_spacing", "scan_resampled")
MIRRORS = {"mirror": True, "nomirror": False}

pytestmark = pytest.mark.skipif(
    not all((DATA / "references" / f"{n}.npz").is_file() and (DATA / "scans" / f"{n}.nii.gz").is_file()
            for n in SCANS),
    reason="tests/data/nnunet's scans and references (scripts/make_nnunet_folder.py predict) are not there")


def _folder() -> Path:
    found = sorted(p.parent for p in DATA.glob("Dataset*/*__*__*/plans.json"))
    assert len(found) == 1, found
    return found[0]


@cache
def _model(mirroring: bool) -> na.LoadedModel:
    return na.load_model(_folder(), mirroring=mirroring)


@cache
def _scan(name: str) -> tuple[np.ndarray, Any, dict[str, np.ndarray]]:
    data, geometry, _ = read_nifti(DATA / "scans" / f"{name}.nii.gz")
    with np.load(DATA / "references" / f"{name}.npz") as ref:
        return data.astype(np.float32), geometry, dict(ref)


@cache
def _ours(name: str, tag: str) -> dict[str, np.ndarray]:
    image, geometry, _ = _scan(name)
    model = _model(MIRRORS[tag])
    prepared = prepare(image, geometry, model.card)
    with torch.no_grad():
        sw = SlidingWindowNet(model.module, model.card.sliding_window)  # type: ignore[arg-type]
        logits = sw(torch.from_numpy(prepared.data)[None, None])[0]
        # what prepared.wrap(module)(scan) computes, without running the windows again: data is to_model(scan)
        on_scan = prepared.to_scan(logits[None])[0]
    return {"input": prepared.data, "logits": logits.numpy(), "scan_logits": on_scan.numpy(),
            "probabilities": torch.softmax(on_scan, 0).numpy(), "seg": on_scan.argmax(0).numpy()}


def test_the_folder_loads_without_trust() -> None:
    model = _model(True)
    card = model.card
    assert card.class_names == ("background", "organ_a", "organ_b")
    assert card.inferer is not None and card.inferer["type"] == "nnunet"
    assert card.inferer["mirror_axes"] == [0, 1, 2] and _model(False).card.inferer["mirror_axes"] == []  # type: ignore[index]
    assert card.preprocess is not None and "window" in card.preprocess and "resample" in card.preprocess
    ckpt = _folder() / "fold_0" / "checkpoint_final.pth"
    assert model.weights_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", SCANS)
def test_preprocessing_equals_nnunets(name: str) -> None:
    image, _, ref = _scan(name)
    # nnU-Net's crop to the non-zero voxels kept the whole scan (CT in HU has no zero border): nothing to reproduce
    assert tuple(ref["shape_after_cropping_and_before_resampling"]) == image.shape
    ours = _ours(name, "mirror")["input"]
    assert ours.shape == ref["input"].shape[1:]
    assert float(np.abs(ours - ref["input"][0]).max()) < 1e-5


@pytest.mark.parametrize("tag", list(MIRRORS))
@pytest.mark.parametrize("name", SCANS)
def test_logits_and_segmentation_equal_nnunets(name: str, tag: str) -> None:
    _, _, ref = _scan(name)
    ours = _ours(name, tag)
    assert float(np.abs(ours["logits"] - ref[f"logits_{tag}"]).max()) < 1e-4
    assert float(np.abs(ours["probabilities"] - ref[f"probabilities_{tag}"]).max()) < 1e-4
    assert float(np.mean(ours["seg"] == ref[f"seg_{tag}"])) >= 0.999
    # nnU-Net's unmodified predictor (float16 accumulation), end to end from the file
    assert float(np.mean(ours["seg"] == ref[f"seg_nnunet_{tag}"])) >= 0.999


def test_saliency_through_the_nnunet_window() -> None:
    # the mirrored passes' gradient is checked on a small folder (tests/models/test_nnunet.py); here the real network
    image, geometry, _ = _scan("scan_train_spacing")
    result = na.explain(_model(False), image, "saliency", target=Predicted(1), geometry=geometry)
    assert result.data.shape == image.shape and np.isfinite(result.data).all()
    seg = _ours("scan_train_spacing", "nomirror")["seg"]
    inside = np.abs(result.data)[seg == 1].mean()
    assert inside > np.abs(result.data)[seg == 0].mean()  # the map is on the organ it explains more than off it
