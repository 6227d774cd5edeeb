"""MONAI bundle folders as a model source.

A bundle is a folder with ``configs/inference.json`` (or ``.yaml`` / ``.yml``) whose ``network_def`` entry
builds the network, ``models/model.pt`` (its state_dict) or ``models/model.ts`` (TorchScript), and usually
``configs/metadata.json`` describing the inputs and outputs. The network definition is read here without
evaluating code: ``_target_`` (a MONAI network name such as ``"UNet"`` or a dotted path), ``@id`` references
(``::`` or ``#`` separators) and literal values. Python expressions (``"$..."``) and macros (``"%..."``) run or
read code, so they are evaluated (by ``monai.bundle.ConfigParser``) only with ``trust=True``. A dotted
``_target_`` is imported only inside the network libraries or a module the caller allowed (``allow_modules``),
never from the bundle's folder (its ``scripts/``) or the working directory (see :mod:`._imports`).

The weights are always the bundle's own ``models/model.pt`` (or ``models/model.ts``), and the card records that
file; a card that names another weights file contradicts the bundle and is refused.

The card comes from, in order: the ``card`` argument, a ``*.card.json`` / ``.yaml`` in the bundle folder, or the
bundle itself: ``metadata.json`` (channels, classes and their names, patch shape, task) and the inference config
(``preprocessing``: ``ScaleIntensityRange(d)`` -> a window, ``NormalizeIntensity(d)`` -> zscore,
``ScaleIntensityRangePercentiles(d)`` -> percentile, ``Spacing(d)`` -> spacing, ``DivisiblePad(d)`` ->
pad_to_multiple; ``inferer.roi_size`` -> patch_size; a ``SlidingWindowInferer`` -> the card's ``inferer``, so the
network runs window by window as the bundle predicts). MONAI lists per-axis values in the file's voxel order
``(x, y, z)``; the card holds them reversed, in numpy order ``(z, y, x)``. Transforms and inferers that are neither
reproduced nor without effect here (reading, the channel axis, the dtype) are listed in one
:class:`~napari_attribution.PreprocessingWarning`, never skipped silently.
"""

from __future__ import annotations

import ast
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from .._errors import ModelLoadError, PreprocessingWarning
from ._build import (
    MONAI_CLASSIFICATION,
    MONAI_SEGMENTATION,
    call_factory,
    check_safe_factory,
    checked_sha256,
    jit_load,
    load_weights,
    refuse_random,
    state_dict_of,
    torch_load,
)
from ._card import CARD_SUFFIXES, RANDOM_WEIGHTS, LoadedModel, ModelCard, infer_card, read_mapping
from ._imports import ImportPolicy, refused_import

__all__ = ["load_bundle"]

_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
_SEARCH = ("monai.networks.nets", "monai.networks.blocks", "torch.nn")
_KNOWN_TRANSFORMS = ("ScaleIntensityRange", "ScaleIntensityRangePercentiles", "NormalizeIntensity", "Spacing",
                     "DivisiblePad")
#: transforms whose work the readers and the input path already do (reading, the channel axis, the dtype)
_NO_EFFECT = ("LoadImage", "EnsureChannelFirst", "AddChannel", "EnsureType", "ToTensor", "CastToType", "Identity",
              "ToDevice", "ToNumpy")


class _NeedsTrust(Exception):
    """The config holds something that runs code (an expression or a macro)."""


def load_bundle(folder: Path, explicit: ModelCard | None, imports: ImportPolicy) -> LoadedModel:
    """Load a MONAI bundle folder (see the module docstring). The weights are the bundle's own file; a card's
    ``weights_sha256`` (the ``card`` argument's or one in the folder) is checked against it."""
    imports = imports.with_folder(folder)
    trust = imports.trust
    refuse_random(explicit, f"the MONAI bundle '{folder.name}' (models/model.pt or models/model.ts)")
    folder_card = _folder_card(folder) if explicit is None else None
    refuse_random(folder_card, f"the MONAI bundle '{folder.name}' (models/model.pt or models/model.ts)")
    pinned = explicit or folder_card
    label = "the card you passed" if explicit is not None else "the card in the bundle folder"
    configs = folder / "configs"
    cfg_path = next((configs / n for n in _CONFIG_NAMES if (configs / n).is_file()), None)
    pt, ts = folder / "models" / "model.pt", folder / "models" / "model.ts"
    config: Mapping[str, Any] = read_mapping(cfg_path) if cfg_path is not None else {}
    net_def = config.get("network_def")
    factory: str | None = None
    kwargs: dict[str, Any] | None = None
    if net_def is None:
        if not ts.is_file():
            where = f"configs/{cfg_path.name} has no 'network_def' entry" if cfg_path else \
                "configs/ has no inference.json (or .yaml)"
            raise ModelLoadError(
                f"'{folder.name}' looks like a MONAI bundle but {where}, and there is no TorchScript "
                "models/model.ts, so the network cannot be built."
            )
        digest = checked_sha256(ts, pinned, label)
        module = jit_load(ts)
        weights = ts
    else:
        assert cfg_path is not None
        module, factory, kwargs = _build(net_def, config, cfg_path, imports)
        if pt.is_file():
            digest = checked_sha256(pt, pinned, label)
            state = torch_load(pt, trust)
            load_weights(module, dict(state.state_dict()) if isinstance(state, nn.Module) else
                         state_dict_of(state, "models/model.pt"), "models/model.pt", factory or "network_def")
            weights = pt
        elif ts.is_file():
            digest = checked_sha256(ts, pinned, label)
            module, weights, factory, kwargs = jit_load(ts), ts, None, None
        else:
            raise ModelLoadError(
                f"The MONAI bundle '{folder.name}' has no weights: expected models/model.pt (a state_dict) or "
                "models/model.ts (TorchScript)."
            )
    card = pinned or _bundle_card(folder, config, net_def)
    if explicit is None and factory is not None and card.factory is None and weights == pt:
        card = replace(card, factory=factory, kwargs=kwargs or {})
    _refuse_other_weights(card, weights, folder, label)
    card = replace(card, weights=str(weights))  # the provenance: the file actually read
    return LoadedModel(module.eval(), infer_card(module, card), str(folder), digest)


def _refuse_other_weights(card: ModelCard, weights: Path, folder: Path, label: str) -> None:
    """A card that names a weights file other than the one the bundle's weights were read from contradicts the
    bundle: refuse it rather than record a file that was never read."""
    named = card.weights
    if named is None or named == RANDOM_WEIGHTS:
        return
    path = Path(named).expanduser()
    if not path.is_absolute():  # a card passed as a dict: relative to the bundle
        path = folder / path
    try:
        same = path.exists() and os.path.samefile(path, weights)
    except OSError:
        same = False
    if not same:
        read = weights.relative_to(folder).as_posix()
        raise ModelLoadError(
            f"{label.capitalize()} names the weights file '{named}', but the weights of the MONAI bundle "
            f"'{folder.name}' are its own {read}, which is what was read. Remove 'weights' from the card (a bundle's "
            f"weights are always models/model.pt or models/model.ts), or load that file with its own card."
        )


def _folder_card(folder: Path) -> ModelCard | None:
    cards = sorted(p for p in folder.iterdir() if p.name.lower().endswith(tuple(f".card{s}" for s in CARD_SUFFIXES)))
    return ModelCard.from_file(cards[0]) if cards else None


# ------------------------------------------------------------------------------------------------
# network_def


def _build(net_def: Any, config: Mapping[str, Any], cfg_path: Path, imports: ImportPolicy
           ) -> tuple[nn.Module, str | None, dict[str, Any] | None]:
    """The network of ``network_def``, and (factory, kwargs) when they are plain data (for the card)."""
    trust = imports.trust
    try:
        node = _deref(net_def, config, set())
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise ModelLoadError(
                f"configs/{cfg_path.name}: 'network_def' must be an object with a '_target_' naming the network, "
                f"got {net_def!r}."
            )
        target, spec = _target(node["_target_"], imports)
        kwargs = {k: _resolve(v, config, imports, set()) for k, v in node.items() if not str(k).startswith("_")}
        _check_node(node)
        check_safe_factory(target, spec, trust)
        module = call_factory(target, kwargs, spec)
        plain = _is_plain(kwargs)
        return module, (spec if plain else None), (kwargs if plain else None)
    except _NeedsTrust as err:
        if not trust:
            raise ModelLoadError(
                f"The bundle's network_def (configs/{cfg_path.name}) uses {err}, which runs Python code from the "
                "config file. Load the bundle with trust=True if you trust where it came from, or replace the "
                "expression with plain values."
            ) from None
    return _parse_with_monai(cfg_path), None, None


def _parse_with_monai(cfg_path: Path) -> nn.Module:
    try:
        from monai.bundle.config_parser import ConfigParser
    except ImportError as err:
        raise ModelLoadError("Evaluating a MONAI bundle config needs MONAI: pip install monai") from err
    try:
        parser = ConfigParser()
        parser.read_config(str(cfg_path))
        module = parser.get_parsed_content("network_def")
    except Exception as err:  # noqa: BLE001 - anything MONAI raises while evaluating
        raise ModelLoadError(f"MONAI could not build network_def from configs/{cfg_path.name}: {err}") from err
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"network_def in configs/{cfg_path.name} built a {type(module).__name__}, not a network.")
    return module


def _check_node(node: Mapping[str, Any]) -> None:
    mode = node.get("_mode_", "default")
    if mode != "default":
        raise _NeedsTrust(f"'_mode_': {mode!r}")


def _lookup(config: Mapping[str, Any], ref: str) -> Any:
    node: Any = config
    for part in re.split(r"::|#", ref):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ModelLoadError(f"The bundle config refers to '@{ref}', which it does not define.")
    return node


def _deref(node: Any, config: Mapping[str, Any], seen: set[str]) -> Any:
    """Follow ``@id`` (and ``$@id``) references until a value."""
    while isinstance(node, str) and re.fullmatch(r"\$?@[\w:#.-]+", node.strip()):
        ref = node.strip().lstrip("$")[1:]
        if ref in seen:
            raise ModelLoadError(f"The bundle config's reference '@{ref}' refers to itself.")
        seen = seen | {ref}
        node = _lookup(config, ref)
    return node


def _resolve(node: Any, config: Mapping[str, Any], imports: ImportPolicy, seen: set[str]) -> Any:
    node = _deref(node, config, seen)
    if isinstance(node, str):
        if node.startswith("$"):
            try:
                return ast.literal_eval(node[1:].strip())
            except (ValueError, SyntaxError):
                raise _NeedsTrust(f"the Python expression {node!r}") from None
        if node.startswith("%"):
            raise _NeedsTrust(f"the macro {node!r}")
        return node
    if isinstance(node, list):
        return [_resolve(v, config, imports, seen) for v in node]
    if isinstance(node, Mapping):
        if "_target_" in node:
            if node.get("_disabled_") in (True, "true", "True"):
                return None
            _check_node(node)
            target, spec = _target(node["_target_"], imports)
            check_safe_factory(target, spec, imports.trust)
            kwargs = {k: _resolve(v, config, imports, seen) for k, v in node.items() if not str(k).startswith("_")}
            return call_factory(target, kwargs, spec)
        return {k: _resolve(v, config, imports, seen) for k, v in node.items()}
    return node


def _target(name: Any, imports: ImportPolicy) -> tuple[Any, str]:
    """The class named by a ``_target_``: a short MONAI name (``"UNet"``) or a dotted path, checked against
    ``imports`` before anything is imported."""
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"A bundle '_target_' must name a class, got {name!r}.")
    if name.startswith("$"):
        raise _NeedsTrust(f"the Python expression {name!r} as a '_target_'")
    what = "The bundle's '_target_'"
    name = name.strip()
    if "." not in name:  # a short name is looked up only in the network libraries (_SEARCH)
        if not name.isidentifier():
            raise ModelLoadError(f"{what} {name!r} must name a class as 'package.module.Class'.")
        for mod_name in _SEARCH:
            module = _import(mod_name, name, imports)
            if module is not None and hasattr(module, name):
                found = getattr(module, name)
                imports.check_defined(found, name, what)
                return found, f"{mod_name}:{name}"
        raise ModelLoadError(
            f"The bundle's '_target_' {name!r} is not a network in {', '.join(_SEARCH)}; give its full dotted path."
        )
    imports.check_name(name, what, name)
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        mod_name = ".".join(parts[:i])
        obj: Any = _import(mod_name, name, imports)
        if obj is None:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        imports.check_defined(obj, name, what)
        return obj, f"{mod_name}:{'.'.join(parts[i:])}"
    raise ModelLoadError(
        f"The bundle's '_target_' {name!r} cannot be imported; install the package that defines it or correct the "
        "name."
    )


def _import(mod_name: str, name: str, imports: ImportPolicy) -> Any:
    """The module, or None when it cannot be imported (the caller tries a shorter dotted prefix); a module refused
    because it would come from the bundle's folder or the working directory is an error that says so."""
    try:
        return imports.import_module(mod_name)
    except ImportError as err:
        refused = refused_import(err)
        if refused is not None:
            raise ModelLoadError(f"The bundle's '_target_' {name!r} was not built: {refused}") from err
        return None


def _is_plain(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


# ------------------------------------------------------------------------------------------------
# the card from metadata.json and the inference config


def _literal(node: Any, config: Mapping[str, Any]) -> Any:
    """A plain value (references followed, literal ``$`` expressions read), or None."""
    try:
        node = _deref(node, config, set())
    except ModelLoadError:
        return None
    if isinstance(node, str) and node.startswith("$"):
        try:
            return ast.literal_eval(node[1:].strip())
        except (ValueError, SyntaxError):
            return None
    if isinstance(node, list):
        items = [_literal(v, config) for v in node]
        return None if any(v is None for v in items) else items
    return node


def _numbers(value: Any) -> list[float] | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value):
        return [float(v) for v in value]
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _bundle_card(folder: Path, config: Mapping[str, Any], net_def: Any) -> ModelCard:
    fields: dict[str, Any] = {}
    meta_path = folder / "configs" / "metadata.json"
    meta: Mapping[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = read_mapping(meta_path)
        except ModelLoadError:
            meta = {}
    if isinstance(meta.get("name"), str):
        fields["name"] = meta["name"]
    if isinstance(meta.get("description"), str):
        fields["description"] = meta["description"]
    ndf = _mapping(meta.get("network_data_format"))
    inputs, outputs = _mapping(ndf.get("inputs")), _mapping(ndf.get("outputs"))
    inp = inputs.get("image", next(iter(inputs.values()), {})) if inputs else {}
    out = outputs.get("pred", next(iter(outputs.values()), {})) if outputs else {}
    if isinstance(inp, Mapping):
        if isinstance(inp.get("num_channels"), int) and inp["num_channels"] > 0:
            fields["in_channels"] = inp["num_channels"]
        shape = inp.get("spatial_shape")
        if isinstance(shape, list) and len(shape) in (2, 3):
            fields["spatial_dims"] = len(shape)
            if inp.get("is_patch_data") and all(isinstance(s, int) and s > 0 for s in shape):
                fields["patch_size"] = tuple(reversed(shape))
    if isinstance(out, Mapping):
        k = out.get("num_channels")
        if isinstance(k, int) and k > 0:
            fields["num_classes"] = k
            names = out.get("channel_def")
            if isinstance(names, Mapping) and len(names) == k and all(isinstance(v, str) for v in names.values()):
                fields["class_names"] = names
        fmt = str(out.get("format", "")).lower()
        if fmt in ("segmentation", "classification"):
            fields["task"] = fmt
    if "task" not in fields and isinstance(net_def, Mapping):
        short = str(net_def.get("_target_", "")).split(".")[-1]
        if short in MONAI_SEGMENTATION:
            fields["task"] = "segmentation"
        elif short in MONAI_CLASSIFICATION:
            fields["task"] = "classification"
    fields.update(_preprocessing(config))
    unreproduced: list[str] = fields.pop("_unreproduced", [])
    inferer = config.get("inferer")
    if isinstance(inferer, Mapping):
        kind = str(inferer.get("_target_", "")).split(".")[-1]
        roi = _numbers(_literal(inferer.get("roi_size"), config))
        if roi and len(roi) in (2, 3) and all(r.is_integer() and r > 0 for r in roi):
            fields["patch_size"] = tuple(int(r) for r in reversed(roi))
        if kind == "SlidingWindowInferer" and "patch_size" in fields:
            fields["inferer"] = _sliding_window(inferer, config, fields["patch_size"])
        elif kind not in ("SimpleInferer", ""):
            unreproduced.append(f"inferer {kind}")
    k = fields.get("num_classes")
    if k is not None:
        fields["background"] = 0 if k > 1 else None
    if unreproduced:
        warnings.warn(PreprocessingWarning(
            f"The MONAI bundle '{folder.name}' asks for steps this tool does not reproduce: "
            f"{', '.join(unreproduced)}. Its predictions here may differ from the bundle's own; apply those steps "
            "to the scan before loading it, or give a model card that describes what the network expects."
        ), stacklevel=4)
    try:
        return ModelCard(**fields)
    except ModelLoadError:  # an inconsistent metadata.json: keep what is certain
        return ModelCard(**{key: fields[key] for key in ("name", "description", "task") if key in fields})


def _sliding_window(inferer: Mapping[str, Any], config: Mapping[str, Any], roi: tuple[int, ...]) -> dict[str, Any]:
    """The card's ``inferer`` for a bundle's ``SlidingWindowInferer`` (per-axis values reversed to numpy order)."""
    out: dict[str, Any] = {"type": "sliding_window", "roi_size": list(roi)}
    for key in ("overlap", "sigma_scale"):
        value = _literal(inferer.get(key), config)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, list) and len(value) == len(roi):
            out[key] = [float(v) for v in reversed(value)]
    for key in ("mode", "padding_mode"):
        value = _literal(inferer.get(key), config)
        if isinstance(value, str):
            out[key] = value
    cval = _literal(inferer.get("cval"), config)
    if isinstance(cval, (int, float)) and not isinstance(cval, bool):
        out["cval"] = float(cval)
    batch = _literal(inferer.get("sw_batch_size"), config)
    if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
        out["sw_batch_size"] = batch
    return out


def _preprocessing(config: Mapping[str, Any]) -> dict[str, Any]:
    pre = config.get("preprocessing")
    transforms = pre.get("transforms") if isinstance(pre, Mapping) else None
    transforms = _deref(transforms, config, set()) if isinstance(transforms, str) else transforms
    out: dict[str, Any] = {}
    spec: dict[str, Any] = {}
    skipped: list[str] = []
    out["_unreproduced"] = skipped
    if not isinstance(transforms, list):
        return out
    for t in transforms:
        t = _deref(t, config, set()) if isinstance(t, str) else t
        if not isinstance(t, Mapping):
            continue
        raw = str(t.get("_target_", "")).split(".")[-1]
        name = raw[:-1] if raw.endswith("d") and raw[:-1] in _KNOWN_TRANSFORMS + _NO_EFFECT else raw
        if name not in _KNOWN_TRANSFORMS + _NO_EFFECT:
            skipped.append(raw or repr(t))
        if name == "ScaleIntensityRange":
            lo, hi = _literal(t.get("a_min"), config), _literal(t.get("a_max"), config)
            a, b = _literal(t.get("b_min", 0.0), config), _literal(t.get("b_max", 1.0), config)
            if all(isinstance(v, (int, float)) for v in (lo, hi, a, b)) and lo < hi:
                if _literal(t.get("clip", False), config):
                    spec.update(window=[lo, hi], scale_to=[a, b])
                else:
                    spec.update(scale=(b - a) / (hi - lo), shift=a - lo * (b - a) / (hi - lo))
        elif name == "ScaleIntensityRangePercentiles":
            lo, hi = _literal(t.get("lower"), config), _literal(t.get("upper"), config)
            a, b = _literal(t.get("b_min", 0.0), config), _literal(t.get("b_max", 1.0), config)
            if all(isinstance(v, (int, float)) for v in (lo, hi, a, b)):
                spec.update(percentile=[lo, hi], scale_to=[a, b])
        elif name == "NormalizeIntensity":
            spec["zscore"] = True
            if _literal(t.get("nonzero", False), config) is True:
                spec["mask_nonzero"] = True
        elif name == "Spacing":
            pixdim = _numbers(_literal(t.get("pixdim"), config))
            if pixdim and len(pixdim) in (2, 3) and all(p > 0 for p in pixdim):
                out["spacing"] = tuple(reversed(pixdim))
        elif name == "DivisiblePad":
            k = _literal(t.get("k"), config)
            if isinstance(k, int) and k > 0:
                spec["pad_to_multiple"] = k
            elif isinstance(k, list) and k and all(isinstance(v, int) and v > 0 for v in k):
                spec["pad_to_multiple"] = list(reversed(k))
    if spec:
        try:
            from ..inputs import check_preprocess

            out["preprocess"] = check_preprocess(spec)
        except ModelLoadError:
            pass
    return out
