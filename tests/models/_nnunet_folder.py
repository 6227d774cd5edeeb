"""An nnU-Net v2 result folder written in tmp_path the way nnU-Net writes one (plans.json, dataset.json,
fold_k/checkpoint_final.pth as nnUNetTrainer.save_checkpoint saves it), with a randomly initialised PlainConvUNet.
Needs dynamic-network-architectures (not nnunetv2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

PATCH = [16, 20, 20]
SPACING = [2.0, 1.0, 1.0]
ARCH: dict[str, Any] = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
INTENSITY = {"max": 1200.0, "mean": 60.0, "median": 50.0, "min": -1000.0, "percentile_00_5": -900.0,
             "percentile_99_5": 900.0, "std": 200.0}
LABELS = {"background": 0, "liver": 1, "lesion": 2}


def plans(transpose: list[int] | None = None, **config: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": PATCH, "median_image_size_in_voxels": [20, 28, 28], "spacing": SPACING,
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": ARCH, "batch_dice": False,
    }
    cfg.update(config)
    return {
        "dataset_name": "Dataset901_Phantom", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": SPACING, "original_median_shape_after_transp": [20, 28, 28],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": transpose or [0, 1, 2],
        "transpose_backward": list(np.argsort(transpose or [0, 1, 2]).tolist()),
        "configurations": {"3d_fullres": cfg}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": INTENSITY},
    }


def network(seed: int) -> torch.nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(seed)
    kw = dict(ARCH["arch_kwargs"])
    kw.update(conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)
    net = PlainConvUNet(input_channels=1, num_classes=len(LABELS), deep_supervision=False, **kw)
    with torch.no_grad():  # instance-norm affine weights away from 1/0 so that they matter
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm3d) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def checkpoint(net: torch.nn.Module, fold: int, plans_: dict[str, Any], extra: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """What nnUNetTrainer.save_checkpoint saves."""
    return {
        "network_weights": net.state_dict(),
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99, "params": [0, 1]}]},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.1), np.float64(0.2)], "ema_fg_dice": [np.float64(0.1)],
                    "dice_per_class_or_region": [[np.float64(0.3), np.float64(0.1)]],
                    "train_losses": [np.float32(0.9)], "val_losses": [np.float32(0.8)],
                    "lrs": [0.01], "epoch_start_timestamps": [1.0], "epoch_end_timestamps": [2.0]},
        "_best_ema": np.float64(0.1),
        "current_epoch": 5,
        "init_args": {"plans": plans_, "configuration": "3d_fullres", "fold": fold,
                      "dataset_json": {"labels": LABELS}, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
        **(extra or {}),
    }


def write_folder(tmp: Path, folds: tuple[int, ...] = (0,), transpose: list[int] | None = None,
                 labels: dict[str, Any] | None = None, **config: Any) -> Path:
    root = tmp / "Dataset901_Phantom" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    root.mkdir(parents=True)
    p = plans(transpose, **config)
    (root / "plans.json").write_text(json.dumps(p, indent=1))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels or LABELS,
                                                   "numTraining": 4, "file_ending": ".nii.gz"}, indent=1))
    for k in folds:
        (root / f"fold_{k}").mkdir()
        torch.save(checkpoint(network(k), k, p), root / f"fold_{k}" / "checkpoint_final.pth")
    return root
