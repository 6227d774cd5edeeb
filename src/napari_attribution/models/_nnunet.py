"""nnU-Net v2 result folders as a model source (TotalSegmentator's weights are such folders).

A result folder is ``.../DatasetNNN_Name/<trainer>__<plans>__<configuration>/`` with ``plans.json``,
``dataset.json`` and ``fold_<k>/checkpoint_final.pth`` (or ``checkpoint_best.pth``). ``load_model`` takes::

    load_model(".../nnUNetTrainer__nnUNetPlans__3d_fullres")             every fold found, averaged (the ensemble)
    load_model(".../nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0")      one fold
    load_model(".../fold_0/checkpoint_best.pth")                           one fold, that checkpoint
    load_model(folder, fold=0, checkpoint="best", mirroring=False)         the same choices as arguments

What is reproduced from nnU-Net 2.x (``nnUNetPredictor``), nothing of it imported:

- the network: ``plans["configurations"][configuration]["architecture"]`` (``network_class_name`` and
  ``arch_kwargs``; older plans without it are converted as nnU-Net converts them), built by
  ``dynamic-network-architectures`` without deep supervision. The class and every ``_kw_requires_import`` entry
  (``"torch.nn.modules.conv.Conv3d"``) are imported only when they lie inside the network libraries
  (:mod:`._imports`; ``trust=True`` allows any), and must be ``torch.nn.Module`` classes;
- the weights: ``checkpoint["network_weights"]``, read with ``torch.load(weights_only=True)`` allowing only the numpy
  types an nnU-Net checkpoint's training log holds (numpy scalars and their dtypes): nothing in it can run code;
- several folds: the mean of the folds' outputs (nnU-Net averages the folds' sliding-window logits; the blend is
  linear, so the two are equal);
- the preprocessing of that configuration: ``transpose_forward`` (the network runs on the transposed scan, inside
  the module), the normalisation of the plans (``CTNormalization``: clip to the foreground's 0.5 / 99.5 percentiles,
  then ``(x - mean) / std``; ``ZScoreNormalization`` without a mask; ``RescaleTo01Normalization``;
  ``RGBTo01Normalization``; ``NoNormalization``), and the resampling to the configuration's spacing and back
  (``preprocess["resample"]``: nnU-Net's spline resampling as per-axis matrices, inside the differentiable forward);
- the prediction: its sliding window (``"type": "nnunet"`` inferer: step 0.5, its window placement and Gaussian) with
  mirroring over the checkpoint's ``inference_allowed_mirroring_axes`` (on by default, as nnU-Net's predictor);
- class names from ``dataset.json`` ``labels`` (label value = output channel).

Refused, each with its own message: region-based training (``regions_class_order``: outputs are sigmoid regions,
not classes), cascades (``previous_stage``: the network takes the low-resolution stage's segmentation as input), 2D
configurations, other normalisation schemes or a ``ZScoreNormalization`` with ``use_mask_for_norm`` (nnU-Net then
normalises inside the scan's non-zero region only), and resampling functions other than
``resample_data_or_seg_to_shape``. Not reproduced: nnU-Net's crop to the bounding box of the non-zero voxels, which
changes nothing when no border of the scan is exactly zero (a CT scan in HU); on a scan with a zero border nnU-Net
predicts background there, this loader runs the network on it, and the run warns (``preprocess["crop_nonzero"]``).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import ModelLoadError
from ._build import first_line, load_weights, refuse_random, torch_load
from ._card import LoadedModel, ModelCard, infer_card
from ._imports import ImportPolicy, refused_import

__all__ = ["NNUNET_INSTALL", "load_nnunet", "nnunet_source"]

#: how to install what nnU-Net folders need (dynamic-network-architectures' own dependencies are not needed)
NNUNET_INSTALL = (
    "pip install --no-deps dynamic-network-architectures==0.4.4 (its UNets need only torch and numpy; without "
    "--no-deps, or with pip install 'napari-attribution[nnunet]', pip also installs timm and torchvision, which may "
    "replace a CPU torch with a multi-GB CUDA build)"
)
_CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}
_RESAMPLE = "resample_data_or_seg_to_shape"


def nnunet_source(path: Path) -> Path | None:
    """The result folder when ``path`` is an nnU-Net v2 result folder, one of its ``fold_*`` folders or a checkpoint
    in one; else None."""
    def is_result(p: Path) -> bool:
        return (p / "plans.json").is_file() and (p / "dataset.json").is_file()

    if path.is_dir():
        if is_result(path):
            return path
        if path.name.startswith("fold_") and is_result(path.parent):
            return path.parent
        return None
    if path.suffix == ".pth" and path.parent.name.startswith("fold_") and is_result(path.parent.parent):
        return path.parent.parent
    return None


class FoldEnsemble(nn.Module):
    """The mean of several folds' outputs (nnU-Net's ensemble of folds). Layer names are ``"<k>.<layer>"``."""

    def __init__(self, folds: Sequence[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(folds)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor | None = None
        for net in self.folds:
            y = _first(net(x))
            out = y if out is None else out + y
        assert out is not None
        return out / len(self.folds)

    def named_modules(self, memo: set[nn.Module] | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Any:
        return self.folds.named_modules(memo, prefix, remove_duplicate)


class Transposed(nn.Module):
    """The network on nnU-Net's transposed axes (``transpose_forward``): ``(N, C, *S)`` in the scan's axis order in,
    the output in the scan's order out. Transparent to layer names."""

    def __init__(self, net: nn.Module, transpose_forward: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.forward_axes = tuple(int(a) for a in transpose_forward)
        self.backward_axes = tuple(sorted(range(len(self.forward_axes)), key=lambda a: self.forward_axes[a]))

    def forward(self, x: Tensor) -> Tensor:
        y = _first(self.net(x.permute(0, 1, *(2 + a for a in self.forward_axes))))
        return y.permute(0, 1, *(2 + a for a in self.backward_axes))

    def named_modules(self, memo: set[nn.Module] | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Any:
        return self.net.named_modules(memo, prefix, remove_duplicate)


def _first(out: Any) -> Tensor:
    while isinstance(out, (list, tuple)):
        out = out[0]
    if not isinstance(out, Tensor):
        raise ModelLoadError(f"The nnU-Net network returned {type(out).__name__}, not a tensor.")
    return out


# ------------------------------------------------------------------------------------------------
# the folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Cannot read the nnU-Net file '{path}': {err}.") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"The nnU-Net file '{path}' is not a JSON object.")
    return data


def _configuration(plans: Mapping[str, Any], name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The configuration with its ``inherits_from`` chain resolved (nnU-Net's PlansManager)."""
    configs = plans.get("configurations")
    if not isinstance(configs, Mapping) or name not in configs:
        have = list(configs) if isinstance(configs, Mapping) else []
        raise ModelLoadError(f"plans.json has no configuration {name!r} (it has {have}); the result folder's name "
                             "must end in __<configuration>.")
    config = deepcopy(dict(configs[name]))
    parent = config.get("inherits_from")
    if parent is not None:
        if parent in seen or parent == name:
            raise ModelLoadError(f"plans.json: the configurations {(*seen, name)} inherit from each other in a circle.")
        base = _configuration(plans, parent, (*seen, name))
        base.update(config)
        config = base
    return config


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    """``config["architecture"]``, or the one nnU-Net >= 2.3 reconstructs from older plans."""
    arch = config.get("architecture")
    if isinstance(arch, Mapping):
        return dict(arch)
    old = config.get("UNet_class_name")
    names = {"PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
             "ResidualEncoderUNet": "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"}
    if old not in names:
        raise ModelLoadError(f"plans.json's configuration has no 'architecture' and its UNet_class_name {old!r} is "
                             f"not one nnU-Net converts ({', '.join(names)}).")
    dim = len(config["patch_size"])
    n_stages = len(config["n_conv_per_stage_encoder"])
    blocks = "n_conv_per_stage" if old == "PlainConvUNet" else "n_blocks_per_stage"
    return {
        "network_class_name": names[old],
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [min(config["UNet_base_num_features"] * 2 ** i, config["unet_max_num_features"])
                                   for i in range(n_stages)],
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": deepcopy(config["conv_kernel_sizes"]),
            "strides": deepcopy(config["pool_op_kernel_sizes"]),
            blocks: deepcopy(config["n_conv_per_stage_encoder"]),
            "n_conv_per_stage_decoder": deepcopy(config["n_conv_per_stage_decoder"]),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _locate(dotted: Any, imports: ImportPolicy, what: str) -> type[nn.Module]:
    """The ``nn.Module`` class named by ``dotted``, imported only inside the network libraries (see ._imports)."""
    if not isinstance(dotted, str) or "." not in dotted:
        raise ModelLoadError(f"{what} must name a class as 'package.module.Class', got {dotted!r}.")
    imports.check_name(dotted, what, dotted)
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            obj: Any = imports.import_module(name)
        except ImportError as err:
            refused = refused_import(err)
            if refused is not None:
                raise ModelLoadError(f"{what} {dotted!r} was not imported: {refused}") from err
            if getattr(err, "name", None) == "dynamic_network_architectures":  # the package itself is missing
                raise ModelLoadError(
                    f"nnU-Net result folders need the package dynamic-network-architectures, which builds their "
                    f"network ({dotted}), and it is not installed. Install it with: {NNUNET_INSTALL}."
                ) from err
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        imports.check_defined(obj, dotted, what)
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)) and not imports.trust:
            raise ModelLoadError(f"{what} {dotted!r} is not a torch.nn.Module class.")
        return obj  # type: ignore[no-any-return]
    raise ModelLoadError(f"{what} {dotted!r} cannot be imported; install the package that defines it (for "
                         f"dynamic_network_architectures: {NNUNET_INSTALL}).")


_DNA = "dynamic_network_architectures.architectures"


def _network_class(name: Any, imports: ImportPolicy) -> type[nn.Module]:
    """The plans' network class; a dynamic_network_architectures class that moved is looked up by its name in
    ``architectures.unet`` (nnU-Net searches that package for it the same way)."""
    what = "plans.json's network_class_name"
    try:
        return _locate(name, imports, what)
    except ModelLoadError as err:
        if not (isinstance(name, str) and name.startswith(_DNA + ".")) or "not installed" in str(err):
            raise
        moved = f"{_DNA}.unet.{name.rsplit('.', 1)[-1]}"
        if moved == name:
            raise
        try:
            return _locate(moved, imports, what)
        except ModelLoadError:
            raise err from None


def _build(arch: Mapping[str, Any], in_channels: int, classes: int, imports: ImportPolicy) -> nn.Module:
    kwargs = dict(arch.get("arch_kwargs") or {})
    for key in arch.get("_kw_requires_import") or ():
        if kwargs.get(key) is not None:
            kwargs[key] = _locate(kwargs[key], imports, f"plans.json's architecture entry {key!r}")
    cls = _network_class(arch.get("network_class_name"), imports)
    kwargs["deep_supervision"] = False  # as nnU-Net's predictor builds it
    try:
        return cls(input_channels=in_channels, num_classes=classes, **kwargs)
    except TypeError as err:
        raise ModelLoadError(f"The network {arch.get('network_class_name')} does not take the plans' arch_kwargs: "
                             f"{first_line(err)}.") from err


# ------------------------------------------------------------------------------------------------
# checkpoints


def _checkpoint_globals() -> list[Any]:
    """The numpy types an nnU-Net checkpoint's training log needs (environment.md), and nothing else."""
    import numpy as np  # noqa: PLC0415

    try:
        multiarray: Any = __import__("numpy._core.multiarray", fromlist=["scalar"])
    except ImportError:  # pragma: no cover - numpy < 2
        multiarray = __import__("numpy.core.multiarray", fromlist=["scalar"])
    return [multiarray.scalar, np.dtype, np.dtypes.Float32DType, np.dtypes.Float64DType]


def _read_checkpoint(path: Path, trust: bool) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            raise ModelLoadError(
                f"'{path}' holds Python objects beyond weights and numbers ({first_line(err)}), and unpickling them "
                "could run code from the file; it was not read. An nnU-Net checkpoint holds only tensors, numbers "
                "and numpy scalars. If you trust where it came from, load it with trust=True."
            ) from None
        ckpt = torch_load(path, True)
    except Exception as err:  # noqa: BLE001 - truncated zips, bad magic numbers, ...
        raise ModelLoadError(f"'{path}' is damaged or not a PyTorch checkpoint ({first_line(err)}).") from err
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("network_weights"), Mapping):
        raise ModelLoadError(f"'{path}' is not an nnU-Net checkpoint: it has no 'network_weights' state dict.")
    return dict(ckpt)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _folds(root: Path, path: Path, fold: Any, checkpoint: str | None) -> tuple[list[str], str]:
    """The fold folder names and the checkpoint file name to read."""
    name = _CHECKPOINTS.get(checkpoint or "final", checkpoint or "")
    if path.is_file():
        if fold is not None or checkpoint is not None:
            raise ModelLoadError("A checkpoint file was given: it names its fold and checkpoint already (give the "
                                 "result folder to choose them with fold= / checkpoint=).")
        return [path.parent.name], path.name
    if not name.endswith(".pth"):
        raise ModelLoadError(f"checkpoint must be 'final', 'best' or a .pth file name, got {checkpoint!r}.")
    if path != root:  # a fold folder
        if fold is not None:
            raise ModelLoadError(f"'{path.name}' is a fold folder already: give fold= with the result folder.")
        return [path.name], name
    if fold is not None:
        wanted = [fold] if isinstance(fold, (int, str)) else list(fold)
        names = [f"fold_{f}" for f in wanted]
    else:  # nnU-Net's auto_detect_available_folds (fold_all only when there is no other)
        names = sorted((p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("fold_")
                        and p.name != "fold_all" and (p / name).is_file()), key=lambda n: (len(n), n))
        if not names and (root / "fold_all" / name).is_file():
            names = ["fold_all"]
    missing = [n for n in names if not (root / n / name).is_file()]
    if not names or missing:
        have = sorted(str(p.relative_to(root)) for p in root.glob("fold_*/checkpoint_*.pth"))
        raise ModelLoadError(
            f"The nnU-Net result folder '{root.name}' has no {'/'.join(missing) or 'fold_*'}/{name}. It holds: "
            f"{', '.join(have) or 'no checkpoints'}. Choose with fold= (e.g. fold=0) and checkpoint='final' or 'best'."
        )
    return names, name


# ------------------------------------------------------------------------------------------------
# preprocessing and the card


def _labels(dataset: Mapping[str, Any]) -> tuple[str, ...]:
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise ModelLoadError("dataset.json has no 'labels'.")
    if any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()) or "regions_class_order" in dataset:
        raise ModelLoadError(
            "This nnU-Net model was trained region-based (dataset.json 'labels' lists regions, with "
            "'regions_class_order'): its outputs are one sigmoid per region, not classes, and the segmentation is "
            "assembled from them in regions_class_order. napari-attribution explains class outputs; region-based "
            "folders are not supported yet."
        )
    by_value = {int(v if not isinstance(v, (list, tuple)) else v[0]): str(k) for k, v in labels.items()
                if k != "ignore"}
    if sorted(by_value) != list(range(len(by_value))):
        raise ModelLoadError(f"dataset.json's labels {dict(labels)} are not the consecutive values 0..K-1.")
    return tuple(by_value[i] for i in range(len(by_value)))


def _normalisation(config: Mapping[str, Any], plans: Mapping[str, Any], channels: int) -> dict[str, Any]:
    schemes = list(config.get("normalization_schemes") or [])
    masks = list(config.get("use_mask_for_norm") or [False] * len(schemes))
    if len(schemes) != channels:
        raise ModelLoadError(f"plans.json gives {len(schemes)} normalization_schemes for {channels} channels.")
    if any(masks):
        raise ModelLoadError(
            f"plans.json normalises inside the scan's non-zero region (use_mask_for_norm {masks}, nnU-Net's "
            "crop to the non-zero voxels): not reproduced here, so this folder is not supported."
        )
    kinds = set(schemes)
    if len(kinds) != 1:
        raise ModelLoadError(f"plans.json normalises its channels differently ({schemes}); only one scheme for all "
                             "channels is supported.")
    scheme = schemes[0]
    if scheme == "CTNormalization":
        if channels != 1:
            raise ModelLoadError("CTNormalization of several channels (one window per channel) is not supported.")
        props = (plans.get("foreground_intensity_properties_per_channel") or {}).get("0")
        if not isinstance(props, Mapping):
            raise ModelLoadError("plans.json has no foreground_intensity_properties_per_channel for channel 0.")
        mean, std = float(props["mean"]), max(float(props["std"]), 1e-8)
        lo, hi = float(props["percentile_00_5"]), float(props["percentile_99_5"])
        # clip to [lo, hi], then (x - mean) / std: the window [lo, hi] rescaled to [(lo - mean)/std, (hi - mean)/std]
        return {"window": [lo, hi], "scale_to": [(lo - mean) / std, (hi - mean) / std]}
    if scheme == "ZScoreNormalization":
        return {"zscore": True}
    if scheme == "RescaleTo01Normalization":
        return {"percentile": [0.0, 100.0], "scale_to": [0.0, 1.0]}
    if scheme == "RGBTo01Normalization":
        return {"scale": 1.0 / 255.0}
    if scheme == "NoNormalization":
        return {}
    raise ModelLoadError(
        f"plans.json's normalisation scheme {scheme!r} is not reproduced (supported: CTNormalization, "
        "ZScoreNormalization without a mask, RescaleTo01Normalization, RGBTo01Normalization, NoNormalization)."
    )


def _resampling(config: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fn, prefix in (("resampling_fn_data", ""), ("resampling_fn_probabilities", "back_")):
        name = config.get(fn, _RESAMPLE)
        if name != _RESAMPLE:
            raise ModelLoadError(f"plans.json's {fn} {name!r} is not reproduced (only {_RESAMPLE}, nnU-Net's "
                                 "default).")
        kw = dict(config.get(f"{fn}_kwargs") or {})
        out[f"{prefix}order"] = int(kw.get("order", 3 if not prefix else 1))
        out[f"{prefix}order_z"] = int(kw.get("order_z", 0))
        out[f"{prefix}force_separate_z"] = kw.get("force_separate_z")
    return out


def _in_scan_order(values: Sequence[Any], transpose: Sequence[int]) -> list[Any]:
    """Per-axis values of nnU-Net's transposed frame in the scan's axis order (axis ``t[k]`` gets value ``k``)."""
    out: list[Any] = [None] * len(values)
    for k, axis in enumerate(transpose):
        out[axis] = values[k]
    return out


def load_nnunet(path: Path, explicit: ModelCard | None, imports: ImportPolicy, *, fold: Any = None,
                checkpoint: str | None = None, mirroring: bool | None = None) -> LoadedModel:
    """Load an nnU-Net v2 result folder, fold folder or checkpoint (see the module docstring)."""
    root = nnunet_source(path)
    assert root is not None
    imports = imports.with_folder(root)
    refuse_random(explicit, f"the nnU-Net result folder '{root.name}' (its checkpoints)")
    plans = _read_json(root / "plans.json")
    dataset = _read_json(root / "dataset.json")
    parts = root.name.split("__")
    if len(parts) != 3:
        raise ModelLoadError(f"'{root.name}' is not named <trainer>__<plans>__<configuration> as nnU-Net names its "
                             "result folders; the configuration is read from the name.")
    trainer, plans_name, configuration = parts
    config = _configuration(plans, configuration)
    if config.get("previous_stage") or configuration.endswith("cascade_fullres"):
        raise ModelLoadError(f"'{configuration}' is a cascade stage: its network also takes the segmentation of the "
                             f"'{config.get('previous_stage', 'lowres')}' stage as input, which is not reproduced.")
    patch = [int(p) for p in config.get("patch_size") or []]
    if len(patch) != 3:
        raise ModelLoadError(f"'{configuration}' is a {len(patch)}D configuration; only 3D configurations are "
                             "supported (nnU-Net runs 2D ones slice by slice).")
    class_names = _labels(dataset)
    channel_names = dataset.get("channel_names") or dataset.get("modality") or {}
    channels = len(channel_names)
    if channels < 1:
        raise ModelLoadError("dataset.json has no 'channel_names'.")
    transpose = [int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
    if sorted(transpose) != [0, 1, 2]:
        raise ModelLoadError(f"plans.json's transpose_forward {transpose} is not a permutation of 0, 1, 2.")
    preprocess = _normalisation(config, plans, channels)
    preprocess["resample"] = _resampling(config)
    preprocess["crop_nonzero"] = True  # not reproduced: prepare() warns when it would crop
    spacing = [float(s) for s in config["spacing"]]
    arch = _architecture(config)

    names, ckpt_name = _folds(root, path, fold, checkpoint)
    nets: list[nn.Module] = []
    digests: list[str] = []
    mirror_axes: tuple[int, ...] = ()
    for i, name in enumerate(names):
        file = root / name / ckpt_name
        digests.append(_sha256(file))
        ckpt = _read_checkpoint(file, imports.trust)
        if i == 0:
            axes = ckpt.get("inference_allowed_mirroring_axes")
            mirror_axes = tuple(int(a) for a in axes) if axes is not None else ()
        net = _build(arch, channels, len(class_names), imports)
        load_weights(net, dict(ckpt["network_weights"]), f"{name}/{ckpt_name}", str(arch.get("network_class_name")))
        nets.append(net.eval())
    module: nn.Module = nets[0] if len(nets) == 1 else FoldEnsemble(nets)
    if transpose != [0, 1, 2]:
        module = Transposed(module, transpose)
    digest = digests[0] if len(digests) == 1 else hashlib.sha256(
        "\n".join(f"{n}/{ckpt_name} {d}" for n, d in zip(names, digests, strict=True)).encode()).hexdigest()
    if explicit is not None and explicit.weights_sha256 is not None and explicit.weights_sha256 != digest:
        raise ModelLoadError(
            f"The checkpoints read ({', '.join(f'{n}/{ckpt_name}' for n in names)}) have sha256 {digest}, but the "
            f"card you passed says weights_sha256 {explicit.weights_sha256}."
        )
    use_mirroring = True if mirroring is None else bool(mirroring)
    roi = tuple(int(v) for v in _in_scan_order(patch, transpose))
    # the checkpoint's mirror axes are the network's (transposed) axes: network axis a is the scan's axis t[a]
    mirrored = sorted(transpose[a] for a in mirror_axes) if use_mirroring else []
    inferer: dict[str, Any] = {"type": "nnunet", "roi_size": list(roi), "step": 0.5, "mode": "gaussian",
                               "sigma_scale": 0.125, "mirror_axes": mirrored}
    which = names[0] if len(names) == 1 else f"folds {', '.join(n[5:] for n in names)} averaged"
    weights = str(root / names[0] / ckpt_name) if len(names) == 1 else str(root)
    card = explicit or ModelCard(
        name=f"{plans.get('dataset_name', root.parent.name)} {configuration} ({which})",
        description=(f"nnU-Net v2 result folder {root} (trainer {trainer}, plans {plans_name}, configuration "
                     f"{configuration}), {ckpt_name}; {which}; mirroring "
                     f"{'over axes ' + str(inferer['mirror_axes']) if inferer['mirror_axes'] else 'off'}."),
        task="segmentation", spatial_dims=3, in_channels=channels, num_classes=len(class_names),
        class_names=class_names, output="logits", background=0, preprocess=preprocess,
        spacing=tuple(_in_scan_order(spacing, transpose)), patch_size=roi, inferer=inferer,
        weights=weights,
    )
    if mirroring is not None and explicit is not None and explicit.inferer is not None:
        card = ModelCard.from_dict({**card.to_dict(), "inferer": {**explicit.inferer,
                                                                   "mirror_axes": inferer["mirror_axes"]}})
    return LoadedModel(module.eval(), infer_card(module, card), str(path), digest)


def nnunet_options(fold: Any, checkpoint: str | None, mirroring: bool | None) -> dict[str, Any]:
    """The nnU-Net choices given to ``load_model`` (only those given)."""
    return {k: v for k, v in (("fold", fold), ("checkpoint", checkpoint), ("mirroring", mirroring)) if v is not None}
