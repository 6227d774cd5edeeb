"""tests/data/nnunet/: a real nnU-Net v2 result folder and nnU-Net's own predictions beside it.

Made once by scripts/make_nnunet_folder.py (nnU-Net 2.8.1's planner, a 5-epoch CPU training, its nnUNetPredictor);
these tests need no nnunetv2. They check that the files are there and load the safe way (``torch.load`` with
``weights_only=True`` and four numpy types allow-listed), that the checkpoint's weights match the architecture the
plans describe, and that the references agree with each other and with the preprocessing and resampling written in
tests/data/nnunet/README.md (reproduced here with numpy/scipy), so a loader can be compared stage by stage.
"""

from __future__ import annotations

import importlib
import json
import pickle
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

DATA = Path(__file__).resolve().parents[1] / "data" / "nnunet"
FOLDER = DATA / "Dataset901_Phantom" / "nnUNetTrainer_5epochs__nnUNetPlans__3d_fullres"
SCANS = ("scan_train_spacing", "scan_resampled")
MIRRORS = ("mirror", "nomirror")
LABELS = {"background": 0, "organ_a": 1, "organ_b": 2}


def _safe_globals() -> list[Any]:
    """The numpy types nnU-Net's checkpoints hold (environment.md); nothing else is allow-listed."""
    scalar = importlib.import_module("numpy._core.multiarray").scalar
    return [scalar, np.dtype, np.dtypes.Float32DType, np.dtypes.Float64DType]


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, Any]:
    with torch.serialization.safe_globals(_safe_globals()):
        ckpt = torch.load(FOLDER / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert isinstance(ckpt, dict)
    return ckpt


@pytest.fixture(scope="module")
def plans() -> dict[str, Any]:
    return dict(json.loads((FOLDER / "plans.json").read_text()))


def _config(plans: dict[str, Any]) -> dict[str, Any]:
    return dict(plans["configurations"]["3d_fullres"])


def _ref(name: str) -> dict[str, np.ndarray]:
    with np.load(DATA / "references" / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def _nifti(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image)
    return img


def _scan_zyx(name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """The scan as nnU-Net's SimpleITKIO sees it: nibabel's (x, y, z) array and zooms reversed."""
    img = _nifti(DATA / "scans" / f"{name}.nii.gz")
    zooms = tuple(float(z) for z in img.header["pixdim"][1:4])
    return np.asarray(img.dataobj).transpose(2, 1, 0), zooms[::-1]


def _resize(x: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """nnU-Net's resample_data_or_seg (no separate z) = skimage resize(order, mode='edge', anti_aliasing=False)
    on float64: scipy zoom with grid_mode=True, mode='nearest', then clipped to the input's range."""
    if tuple(x.shape) == tuple(shape):
        return x
    x = x.astype(np.float64)
    zoom = [n / o for n, o in zip(shape, x.shape, strict=True)]
    out = ndimage.zoom(x, zoom, order=order, mode="nearest", grid_mode=True)
    return np.asarray(np.clip(out, x.min(), x.max()))


def test_result_folder_holds_exactly_the_four_files_and_is_small() -> None:
    files = sorted(p.relative_to(FOLDER).as_posix() for p in FOLDER.rglob("*") if p.is_file())
    assert files == ["dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth", "plans.json"]
    assert sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file()) < 12e6
    refs = sum(p.stat().st_size for p in (DATA / "references").iterdir())
    assert refs < 5e6


def test_checkpoint_needs_only_the_allow_listed_numpy_types(checkpoint: dict[str, Any]) -> None:
    assert checkpoint["trainer_name"] == "nnUNetTrainer_5epochs"
    assert checkpoint["init_args"]["configuration"] == "3d_fullres"
    assert checkpoint["init_args"]["fold"] == 0
    weights = checkpoint["network_weights"]
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    # without the allow-list the safe loader refuses the file (it holds numpy scalars), it never unpickles code
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(FOLDER / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=True)


def test_weights_match_the_architecture_in_the_plans(checkpoint: dict[str, Any], plans: dict[str, Any]) -> None:
    arch = _config(plans)["architecture"]
    assert arch["network_class_name"] == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    kw = arch["arch_kwargs"]
    weights = checkpoint["network_weights"]
    features, kernels = kw["features_per_stage"], kw["kernel_sizes"]
    channels_in = 1  # one input channel (CT)
    for s in range(kw["n_stages"]):
        for c in range(kw["n_conv_per_stage"][s]):
            w = weights[f"encoder.stages.{s}.0.convs.{c}.conv.weight"]
            assert tuple(w.shape) == (features[s], channels_in if c == 0 else features[s], *kernels[s])
        channels_in = features[s]
    for d in range(kw["n_stages"] - 1):  # decoder stage d upsamples to encoder stage n-2-d with its strides
        s = kw["n_stages"] - 2 - d
        up = weights[f"decoder.transpconvs.{d}.weight"]
        assert tuple(up.shape) == (features[s + 1], features[s], *kw["strides"][s + 1])
        for c in range(kw["n_conv_per_stage_decoder"][d]):
            w = weights[f"decoder.stages.{d}.convs.{c}.conv.weight"]
            assert tuple(w.shape) == (features[s], 2 * features[s] if c == 0 else features[s], *kernels[s])
    n_classes = len(json.loads((FOLDER / "dataset.json").read_text())["labels"])
    # one segmentation head per decoder stage (deep supervision); inference uses the last, at full resolution
    assert tuple(weights[f"decoder.seg_layers.{kw['n_stages'] - 2}.weight"].shape) == (n_classes, features[0], 1, 1, 1)
    assert checkpoint["inference_allowed_mirroring_axes"] == (0, 1, 2)


def test_plans_and_dataset_json_say_what_the_readme_says(plans: dict[str, Any]) -> None:
    cfg = _config(plans)
    assert cfg["spacing"] == [2.5, 1.0, 1.0]
    assert cfg["patch_size"] == [20, 28, 28]
    assert cfg["normalization_schemes"] == ["CTNormalization"]
    assert cfg["use_mask_for_norm"] == [False]
    assert cfg["resampling_fn_data_kwargs"]["order"] == 3
    assert cfg["resampling_fn_probabilities_kwargs"]["order"] == 1
    assert plans["transpose_forward"] == [0, 1, 2] and plans["transpose_backward"] == [0, 1, 2]
    assert plans["image_reader_writer"] == "SimpleITKIO"
    dataset = json.loads((FOLDER / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"}
    assert dataset["labels"] == LABELS


@pytest.mark.parametrize("name", SCANS)
def test_reference_shapes_and_dtypes(name: str, plans: dict[str, Any]) -> None:
    ref = _ref(name)
    scan, spacing = _scan_zyx(name)
    np.testing.assert_allclose(ref["spacing"], spacing, rtol=1e-6)
    target = _config(plans)["spacing"]
    net_shape = tuple(int(round(s / t * n)) for s, t, n in zip(spacing, target, scan.shape, strict=True))
    assert ref["input"].dtype == np.float32 and ref["input"].shape == (1, *net_shape)
    for m in MIRRORS:
        assert ref[f"logits_{m}"].dtype == np.float32 and ref[f"logits_{m}"].shape == (3, *net_shape)
        assert ref[f"probabilities_{m}"].dtype == np.float32 and ref[f"probabilities_{m}"].shape == (3, *scan.shape)
        for key in (f"seg_{m}", f"seg_nnunet_{m}"):
            assert ref[key].dtype == np.uint8 and ref[key].shape == scan.shape
    # the phantoms are air-framed: nnU-Net's crop to the non-zero region keeps the whole scan
    assert tuple(ref["shape_after_cropping_and_before_resampling"]) == scan.shape
    if name == "scan_train_spacing":
        assert net_shape == scan.shape
    else:
        assert net_shape != scan.shape


@pytest.mark.parametrize("name", SCANS)
def test_input_is_the_scan_normalised_and_resampled_as_the_plans_say(name: str, plans: dict[str, Any]) -> None:
    ref = _ref(name)
    scan, _ = _scan_zyx(name)
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    x = np.clip(scan.astype(np.float32), props["percentile_00_5"], props["percentile_99_5"])
    x = (x - np.float32(props["mean"])) / np.float32(max(props["std"], 1e-8))
    expected = _resize(x, ref["input"].shape[1:], order=3).astype(np.float32)
    np.testing.assert_allclose(ref["input"][0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", SCANS)
@pytest.mark.parametrize("m", MIRRORS)
def test_segmentation_is_the_logits_resampled_back_then_argmax(name: str, m: str) -> None:
    ref = _ref(name)
    logits = ref[f"logits_{m}"]
    shape = ref[f"seg_{m}"].shape
    back = np.stack([_resize(c, shape, order=1) for c in logits]).astype(np.float32)
    probs = torch.softmax(torch.from_numpy(back), 0).numpy()
    np.testing.assert_allclose(ref[f"probabilities_{m}"], probs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ref[f"seg_{m}"], ref[f"probabilities_{m}"].argmax(0))
    if name == "scan_train_spacing":  # no resampling: the segmentation is the argmax of the network-grid logits
        np.testing.assert_array_equal(ref[f"seg_{m}"], logits.argmax(0))


@pytest.mark.parametrize("name", SCANS)
def test_float16_accumulating_predictor_agrees_and_mirroring_was_applied(name: str) -> None:
    ref = _ref(name)
    for m in MIRRORS:
        agree = np.mean(ref[f"seg_{m}"] == ref[f"seg_nnunet_{m}"])
        assert agree >= 0.999, f"{m}: {agree}"
    assert np.abs(ref["logits_mirror"] - ref["logits_nomirror"]).max() > 1e-2


@pytest.mark.parametrize("name", SCANS)
def test_the_network_segments_the_phantom_organs(name: str) -> None:
    ref = _ref(name)
    truth = np.asarray(_nifti(DATA / "scans" / f"{name}_labels.nii.gz").dataobj).transpose(2, 1, 0)
    for m in MIRRORS:
        seg = ref[f"seg_{m}"]
        for k in (1, 2):
            dice = 2 * np.sum((seg == k) & (truth == k)) / (np.sum(seg == k) + np.sum(truth == k))
            assert dice > 0.5, f"{m} label {k}: Dice {dice:.2f}"
