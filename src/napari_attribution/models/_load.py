"""``load_model``: a network in eval mode and its card, from a file, a folder, a card or a demo name.

Sources, and what each needs::

    load_model("model.ts")                     TorchScript (torch.jit.save); a card beside it is optional
    load_model("model.pt")                     a state_dict with a card beside it (model.card.json / .yaml / .yml,
                                               or <stem>.card.json ...) naming the factory and its kwargs
    load_model("model.card.json")              the card itself; its "weights" names the checkpoint
    load_model({"factory": "monai:UNet", "kwargs": {...}, "weights": "model.pt" or "random"})
    load_model("bundle_folder/")               a MONAI bundle: configs/inference.json (network_def) + models/model.pt
    load_model("Dataset_x/Trainer__Plans__3d_fullres")   an nnU-Net v2 result folder (its folds averaged), a fold_k
                                               folder or a checkpoint in one (see ._nnunet; fold=, checkpoint=,
                                               mirroring=)
    load_model("demo:vessel-seg")              a bundled demo model
    load_model("full_model.pt", trust=True)    a pickled nn.Module (torch.save(model)) -- only with trust=True

Weights are never silent: a card or factory dict that names no weights (and has no checkpoint of its own name
beside it) is refused unless it says ``"weights": "random"`` (an untrained network on purpose, which every output
then marks); a card's ``weights_sha256`` is checked against the file read. ``LoadedModel.weights_sha256`` is the
hash of the weights file actually read.

Safety: without ``trust=True`` nothing in a file can run code. Checkpoints are read with
``torch.load(weights_only=True)``; a card's factory (or a bundle's ``_target_``) is imported only when it names a
network library (torch.nn, monai.networks, dynamic_network_architectures, the demo nets) or a module the caller
allowed by name (``allow_modules``), checked before the import, and never from the model's folder or the working
directory (see :mod:`._imports`); it must be a ``torch.nn.Module`` class (a function could be any function, e.g.
one that runs shell commands); a MONAI bundle's ``$`` expressions are not evaluated.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from .._errors import ModelLoadError
from .._provenance import file_sha256
from ._build import (
    MONAI_CLASSIFICATION,
    MONAI_SEGMENTATION,
    build_module,
    checked_sha256,
    jit_load,
    load_weights,
    read_safetensors,
    read_state,
    refuse_random,
    state_dict_of,
    torch_load,
    torchscript_state,
)
from ._bundle import load_bundle
from ._card import CARD_SUFFIXES, RANDOM_WEIGHTS, LoadedModel, ModelCard, check_spatial_dims, infer_card
from ._imports import ImportPolicy, allowed_modules
from ._nnunet import load_nnunet, nnunet_options, nnunet_source

__all__ = ["find_card", "load_model"]

Source = str | os.PathLike[str] | Mapping[str, Any] | ModelCard | nn.Module | LoadedModel

_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


def load_model(
    source: Source,
    *,
    card: ModelCard | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    trust: bool = False,
    allow_modules: str | Iterable[str] | None = None,
    fold: int | str | Iterable[int | str] | None = None,
    checkpoint: str | None = None,
    mirroring: bool | None = None,
) -> LoadedModel:
    """Load a model for explanation: the network in eval mode, on the CPU, with its :class:`ModelCard`.

    Parameters
    ----------
    source : str, path, dict, ModelCard, nn.Module or LoadedModel
        ``"demo:<name>"``; a TorchScript file; a state_dict checkpoint with a card file beside it
        (``model.card.json``, ``.yaml`` or ``.yml`` next to ``model.pt``, or ``<stem>.card.json``); a card file; a
        MONAI bundle folder; a card-like dict ``{"factory": "monai.networks.nets:UNet", "kwargs": {...},
        "weights": path}`` (``"monai:UNet"`` for short; ``"weights": "random"`` builds it untrained on purpose, and
        a dict without weights is refused); or a module.
    card : ModelCard, dict or path, optional
        Replaces the card found beside the source (or the guessed one). For a checkpoint it must name the factory.
    trust : bool
        Allow what runs code from the file: pickled modules (``torch.save(model)``), factories that are functions
        rather than ``nn.Module`` classes, factories from any module, and Python expressions in a MONAI bundle
        config. Only for files from a source you trust.
    allow_modules : str or list of str, optional
        Your own packages of networks, by module name (``["mypkg"]`` allows ``mypkg`` and ``mypkg.nets``): a card's
        factory or a bundle's ``_target_`` may name network classes defined there. Without ``trust`` only these and
        the network libraries (torch.nn, monai.networks, dynamic_network_architectures, the demo nets) are imported;
        a card cannot allow a module itself. An allowed module is imported as Python finds it (also from the working
        directory), and importing runs its code.
    fold, checkpoint, mirroring : optional, nnU-Net result folders only
        The fold(s) to use (``0``, ``"all"``, ``[0, 1]``; default: every ``fold_k`` with the checkpoint, averaged as
        nnU-Net's ensemble), ``"final"`` (default) or ``"best"`` (``checkpoint_best.pth``), and whether to average
        over nnU-Net's mirrored passes (default True, as nnU-Net's predictor).

    Returns
    -------
    LoadedModel
        ``.module`` in eval mode, ``.card`` (``inferred=True`` when no card was found and it was guessed),
        ``.source``, ``.weights_sha256`` (of the weights file read; None for random weights or a module in memory)
        and ``.random_weights``.

    Raises
    ------
    ModelLoadError
        With what to do: a missing file, a file that is not a model, a checkpoint without a card, a factory that
        cannot be imported or names a module that is not allowed (see ``allow_modules``), kwargs the factory does
        not take, weights that do not fit, a refused pickle, a card that names no weights (say ``"weights":
        "random"`` for an untrained network), a weights file whose sha256 is not the card's ``weights_sha256``, a
        card whose ``spatial_dims`` the network does not run at.

    Examples
    --------
    >>> import napari_attribution as na
    >>> m = na.load_model({"factory": "monai:DenseNet121", "weights": "random",
    ...                    "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": 3}})  # doctest: +SKIP
    >>> m.card.task, m.card.num_classes, m.random_weights  # doctest: +SKIP
    ('classification', 3, True)
    """
    imports = ImportPolicy(trust=trust, allowed=allowed_modules(allow_modules))
    options = nnunet_options(fold, checkpoint, mirroring)
    if options and not (isinstance(source, (str, os.PathLike)) and
                        nnunet_source(Path(os.fspath(source)).expanduser()) is not None):
        raise ModelLoadError(f"{', '.join(options)} apply only to nnU-Net result folders; '{source}' is not one "
                             "(a folder with plans.json, dataset.json and fold_k/ checkpoints).")
    loaded = _load(source, _card_argument(card), imports, options)
    check_spatial_dims(loaded.module, loaded.card)
    return loaded


def _load(source: Source, explicit: ModelCard | None, imports: ImportPolicy,
          options: Mapping[str, Any] | None = None) -> LoadedModel:
    if isinstance(source, LoadedModel):
        return LoadedModel(source.module.eval(), explicit or source.card, source.source, source.weights_sha256)
    if isinstance(source, nn.Module):
        return LoadedModel(source.eval(), infer_card(source, explicit), type(source).__name__)
    if isinstance(source, (Mapping, ModelCard)):
        if explicit is not None:
            raise ModelLoadError("The source is already a card: pass the card once (as the source, without card=).")
        card_source = source if isinstance(source, ModelCard) else ModelCard.from_dict(source)
        return _from_card(card_source, imports, label="the card", source=None)
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadError(
            f"Cannot load a model from a {type(source).__name__}: give a file or folder path, 'demo:<name>', a card "
            "dictionary, or a torch.nn.Module."
        )
    text = os.fspath(source)
    if isinstance(source, str) and text.startswith("demo:"):
        return _demo(text[len("demo:"):].strip(), explicit)
    path = Path(text).expanduser()
    if not path.exists():
        hint = " Bundled demo models are written 'demo:<name>'." if ":" in text and not path.parent.exists() else ""
        raise ModelLoadError(f"No model file or folder at '{path}'. Check the path.{hint}")
    imports = imports.with_folder(path)  # nothing is imported from the model's own folder (see ._imports)
    if nnunet_source(path) is not None:
        return load_nnunet(path, explicit, imports, **(options or {}))
    if path.is_dir():
        return _from_folder(path, explicit, imports)
    if not path.is_file():  # a named pipe, socket or device: reading it would block forever
        raise ModelLoadError(f"'{path.name}' is not a regular file (a named pipe, socket or device): give a file.")
    if path.name.lower().endswith(CARD_SUFFIXES):
        if explicit is not None:
            raise ModelLoadError(f"'{path.name}' is already a card: pass the card once (without card=).")
        card, looked = _with_weights_beside(ModelCard.from_file(path), path)
        return _from_card(card, imports, label=f"'{path.name}'", source=str(path), looked=looked)
    return _from_file(path, explicit, imports)


def find_card(path: str | os.PathLike[str]) -> Path | None:
    """The card file beside a weights file: ``<stem>.card.json|yaml|yml`` then ``model.card.json|yaml|yml`` in the
    same folder (for ``model.pth.tar`` also ``model.card.json``); None when there is none."""
    p = Path(path)
    stems = [p.stem, p.name.split(".")[0], "model"]
    for stem in dict.fromkeys(stems):
        for suffix in CARD_SUFFIXES:
            candidate = p.with_name(f"{stem}.card{suffix}")
            if candidate.is_file():
                return candidate
    return None


# ------------------------------------------------------------------------------------------------
# sources


def _card_argument(card: Any) -> ModelCard | None:
    if card is None or isinstance(card, ModelCard):
        return card
    if isinstance(card, Mapping):
        return ModelCard.from_dict(card)
    if isinstance(card, (str, os.PathLike)):
        return ModelCard.from_file(card)
    raise ModelLoadError(f"card must be a ModelCard, a dictionary or a card file path, got {type(card).__name__}.")


def _demo(name: str, explicit: ModelCard | None) -> LoadedModel:
    try:
        get_demo = importlib.import_module(".demo", __package__).get_demo
    except (ImportError, AttributeError) as err:
        raise ModelLoadError(
            f"The demo models are not installed (napari_attribution.models.demo cannot be imported: {err}). "
            "Reinstall napari-attribution, or load your own model file."
        ) from err
    try:
        loaded = get_demo(name)
    except ModelLoadError:
        raise
    except (KeyError, LookupError, ValueError) as err:
        raise ModelLoadError(f"There is no demo model {name!r}. Available: {_demo_names()}.") from err
    if not isinstance(loaded, LoadedModel):
        raise ModelLoadError(f"The demo {name!r} did not return a LoadedModel (got {type(loaded).__name__}).")
    refuse_random(explicit, f"the demo model 'demo:{name}', which ships trained weights")
    digest = loaded.weights_sha256
    shipped = loaded.card.weights
    if digest is None and shipped and not loaded.card.random_weights and Path(shipped).is_file():
        digest = file_sha256(shipped)  # the demo's state_dict was read from this shipped file
    return LoadedModel(loaded.module.eval(), explicit or loaded.card, loaded.source or f"demo:{name}", digest)


def _demo_names() -> str:
    try:
        names = importlib.import_module(".demo", __package__).list_demos()
        return ", ".join(f"demo:{getattr(n, 'name', n)}" for n in names) or "none"
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown"


def _with_weights_beside(card: ModelCard, card_path: Path) -> tuple[ModelCard, str]:
    """A card file without ``weights`` uses ``<name>.pt|.pth|.ckpt|.safetensors`` beside it (``net.card.json`` ->
    ``net.pt``), if there is one. Also returns, for an error message, the names looked for and any weights file
    of another name found beside the card (it is never taken silently: its name is unexpected)."""
    stem = card_path.name.split(".card.")[0] if ".card." in card_path.name else card_path.stem
    names = [stem + suffix for suffix in _WEIGHT_SUFFIXES]
    if card.weights is not None:
        return card, ""
    for name in names:
        candidate = card_path.with_name(name)
        if candidate.is_file():
            return replace(card, weights=str(candidate)), ""
    others = sorted(p.name for p in card_path.parent.iterdir() if p.suffix.lower() in _WEIGHT_SUFFIXES)
    looked = f" No weights file was found beside it: looked for {', '.join(names)}."
    if others:
        looked += (f" Beside it there is {', '.join(repr(o) for o in others)}, whose name is not one of those: if "
                   f"{'it holds' if len(others) == 1 else 'one holds'} the trained weights, name it in the card "
                   f"(\"weights\": \"{others[0]}\") or rename it to {names[0]}.")
    return card, looked


def _no_weights(label: str, factory: str, looked: str) -> ModelLoadError:
    return ModelLoadError(
        f"{label} names no weights, so {factory} would be built with random, untrained weights and every map would "
        f"explain noise.{looked} Give the trained weights: \"weights\": \"model.pt\" in the card (a state_dict "
        "file; in a card file, relative to it), or load the checkpoint itself with the card beside it "
        "(load_model('model.pt')). If you want an untrained network on purpose (a test, a sanity check), say "
        "\"weights\": \"random\": every output then says \"random weights\"."
    )


def _from_card(card: ModelCard, imports: ImportPolicy, label: str, source: str | None, looked: str = ""
               ) -> LoadedModel:
    if card.factory is None:
        raise ModelLoadError(
            f"{label} has no 'factory', so the network cannot be built. Add \"factory\": \"package.module:Class\" "
            "(e.g. \"monai.networks.nets:UNet\") and its \"kwargs\"; or load a TorchScript file instead."
        )
    if card.weights is None:
        raise _no_weights(label, card.factory, looked)
    if not card.random_weights:
        imports = imports.with_folder(card.weights)
    module = build_module(card, imports)
    if card.random_weights:
        return LoadedModel(module.eval(), _complete(module, card), source)
    wpath = Path(card.weights).expanduser()
    if not wpath.is_file():
        hint = f" (\"weights\": \"{RANDOM_WEIGHTS}\" asks for an untrained network)" if wpath.name.lower() in (
            "none", "null", "rand", "random_weights") else ""
        what = "is not a regular file (a named pipe, socket or device)" if wpath.exists() else "does not exist"
        raise ModelLoadError(f"The weights file '{wpath}' named by {label} {what}{hint}.")
    kind = _sniff(wpath)
    digest = checked_sha256(wpath, card, label)
    # a TorchScript archive's weights go into the Python network the factory builds (which takes hooks)
    state = torchscript_state(wpath) if kind == "torchscript" else read_state(wpath, kind, imports.trust)
    load_weights(module, state, wpath.name, card.factory)
    card = replace(card, weights=str(wpath))
    return LoadedModel(module.eval(), _complete(module, card), source, digest)


def _from_folder(folder: Path, explicit: ModelCard | None, imports: ImportPolicy) -> LoadedModel:
    if (folder / "configs").is_dir():
        return load_bundle(folder, explicit, imports)
    cards = sorted(p for p in folder.iterdir() if p.name.lower().endswith(tuple(f".card{s}" for s in CARD_SUFFIXES)))
    if len(cards) == 1 and explicit is None:
        card, looked = _with_weights_beside(ModelCard.from_file(cards[0]), cards[0])
        if card.weights is None:
            # the folder was given as "one model and its card": its only weights file is the model's
            weights = [p for p in folder.iterdir() if p.suffix.lower() in _WEIGHT_SUFFIXES]
            if len(weights) == 1:
                card, looked = replace(card, weights=str(weights[0])), ""
            elif weights:
                looked += " The folder holds several weights files, so none is taken without being named."
        return _from_card(card, imports, label=f"'{cards[0].name}'", source=str(folder), looked=looked)
    files = [p for p in folder.iterdir() if p.suffix.lower() in (*_WEIGHT_SUFFIXES, ".ts")]
    if len(files) == 1 and len(cards) <= 1:
        return _from_file(files[0], explicit, imports)
    raise ModelLoadError(
        f"'{folder}' is a folder but not a MONAI bundle (no configs/ folder) and holds "
        f"{len(files)} model files and {len(cards)} card files. Give the model file itself, or a folder with one "
        "model file and its card."
    )


def _from_file(path: Path, explicit: ModelCard | None, imports: ImportPolicy) -> LoadedModel:
    kind = _sniff(path)
    card, label = explicit, "the card you passed"
    if card is None:
        found = find_card(path)
        card = ModelCard.from_file(found) if found is not None else None
        label = f"'{found.name}'" if found is not None else label
    refuse_random(card, f"the file '{path.name}' being loaded")
    digest = checked_sha256(path, card, label)
    if kind == "torchscript":
        module = jit_load(path)
        return LoadedModel(module.eval(), infer_card(module, card), str(path), digest)
    obj: Any
    if kind == "safetensors":
        obj = read_safetensors(path)
    else:
        obj = torch_load(path, imports.trust)
    if isinstance(obj, nn.Module):  # a pickled module, loaded with trust=True
        return LoadedModel(obj.eval(), infer_card(obj, card), str(path), digest)
    state = state_dict_of(obj, path.name)
    if card is None or card.factory is None:
        where = "the card you passed has no 'factory'" if card is not None else (
            f"no card was found beside it (looked for {path.stem}.card.json / .yaml / .yml and model.card.json)")
        raise ModelLoadError(
            f"'{path.name}' holds weights only (a state_dict with {len(state)} tensors), and {where}. The weights "
            "alone do not say which network they belong to: write a card file "
            f"'{path.stem}.card.json' beside it, e.g. {{\"factory\": \"monai.networks.nets:UNet\", \"kwargs\": "
            "{\"spatial_dims\": 3, \"in_channels\": 1, \"out_channels\": 2, \"channels\": [16, 32, 64], "
            "\"strides\": [2, 2]}}, or pass card={...}."
        )
    module = build_module(card, imports)
    load_weights(module, state, path.name, card.factory)
    return LoadedModel(module.eval(), _complete(module, replace(card, weights=str(path))), str(path), digest)


def _complete(module: nn.Module, card: ModelCard) -> ModelCard:
    """Fill what the factory's kwargs and the module tell (dims, channels; class count and task for MONAI)."""
    kw = card.kwargs
    changes: dict[str, Any] = {}
    name = (card.factory or "").split(":")[-1].split(".")[-1]
    is_monai = (card.factory or "").startswith("monai")
    if card.spatial_dims is None and kw.get("spatial_dims") in (2, 3):
        changes["spatial_dims"] = kw["spatial_dims"]
    if is_monai:
        if card.in_channels is None and isinstance(kw.get("in_channels"), int):
            changes["in_channels"] = kw["in_channels"]
        k = kw.get("out_channels", kw.get("num_classes"))
        if card.num_classes is None and isinstance(k, int) and k > 0 and (
                card.class_names is None or len(card.class_names) == k):
            changes["num_classes"] = k
        if card.task is None:
            if name in MONAI_SEGMENTATION:
                changes["task"] = "segmentation"
            elif name in MONAI_CLASSIFICATION and not (name == "ViT" and not kw.get("classification")):
                changes["task"] = "classification"
    if changes.get("num_classes") is not None and card.background is not None and \
            card.background >= changes["num_classes"]:
        changes["background"] = None
    return infer_card(module, replace(card, **changes) if changes else card)


# ------------------------------------------------------------------------------------------------
# files


def _sniff(path: Path) -> str:
    """``"torchscript"``, ``"torch"`` (torch.save, zip or legacy pickle) or ``"safetensors"``; else a clear error."""
    name = path.name.lower()
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        raise ModelLoadError(f"Cannot read '{path}': {err.strerror or err}.") from err
    if size == 0:
        raise ModelLoadError(f"'{path.name}' is empty (0 bytes); the file was not saved or copied completely.")
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise ModelLoadError(
                f"'{path.name}' is a damaged or truncated PyTorch file ({err}); copy or save it again."
            ) from err
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        raise ModelLoadError(f"'{path.name}' is a zip archive but not a PyTorch model file.")
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch"  # torch.save's legacy (pre-1.6) format starts with a pickle
    if name.endswith(".safetensors") or (len(head) > 9 and head[8:10] == b'{"'):
        return "safetensors"
    wrong = _wrong_type(name, head)
    raise ModelLoadError(
        f"'{path.name}' is not a PyTorch model file{wrong}. napari-attribution loads TorchScript files "
        "(torch.jit.save), state_dict checkpoints (torch.save(model.state_dict())) with a model card, .safetensors "
        "weights with a card, and MONAI bundle folders."
    )


def _wrong_type(name: str, head: bytes) -> str:
    if name.endswith((".nii", ".nii.gz", ".dcm", ".mha", ".nrrd")) or head[128:132] == b"DICM" or \
            head[344:348] in (b"n+1\0", b"ni1\0"):
        return " but a medical image (scan); open it as the image, and give the model file separately"
    if head[:4] == b"\x89HDF" or name.endswith((".h5", ".keras", ".hdf5")):
        return " but a Keras / TensorFlow (HDF5) model, which PyTorch cannot run; convert it to PyTorch first"
    if name.endswith(".onnx"):
        return " but an ONNX model, which has no gradients in PyTorch; export TorchScript from the original network"
    if name.endswith((".json", ".yaml", ".yml")):
        return " but a text file; a card must be named <name>.card.json"
    return ""
