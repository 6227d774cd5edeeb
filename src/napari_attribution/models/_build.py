"""Reading weights files and building networks, shared by the loaders (``_load``: files, cards, demo names;
``_bundle``: MONAI bundles).

Safety (see :mod:`._load`): checkpoints are read with ``torch.load(weights_only=True)`` unless the caller trusts
the file; a factory is imported only as the :class:`._imports.ImportPolicy` allows, and without trust it must be a
``torch.nn.Module`` class.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from .._errors import ModelLoadError
from .._provenance import file_sha256
from ._card import ModelCard
from ._imports import ImportPolicy, refused_import

__all__ = [
    "MONAI_CLASSIFICATION",
    "MONAI_SEGMENTATION",
    "build_module",
    "call_factory",
    "check_safe_factory",
    "checked_sha256",
    "first_line",
    "jit_load",
    "load_weights",
    "read_safetensors",
    "read_state",
    "refuse_random",
    "resolve_factory",
    "state_dict_of",
    "torch_load",
    "torchscript_state",
]

# keys under which training scripts commonly nest the state_dict in a checkpoint dictionary
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "network", "net", "module", "weights", "model_state",
               "net_state_dict")
# MONAI networks whose task is known from the class name
MONAI_SEGMENTATION = ("UNet", "BasicUNet", "BasicUnet", "AttentionUnet", "SegResNet", "SegResNetVAE", "UNETR",
                      "SwinUNETR", "DynUNet", "VNet", "HighResNet", "FlexibleUNet", "BasicUNetPlusPlus", "SegResNetDS")
MONAI_CLASSIFICATION = ("DenseNet", "DenseNet121", "DenseNet169", "DenseNet201", "DenseNet264", "ResNet",
                        "resnet18", "ResNet18", "EfficientNetBN", "SEResNet50", "SENet154", "Classifier", "ViT",
                        "TorchVisionFCModel")
_REFUSED_PICKLE = (
    "Unpickling can run arbitrary code stored in the file (arbitrary code execution), so a file from an untrusted "
    "source could do anything on this computer; napari-attribution therefore reads model files with "
    "torch.load(weights_only=True) and refuses pickled objects. If you trust where the file came from, load it "
    "with load_model(..., trust=True). The safer fix: save only the weights, "
    "torch.save(model.state_dict(), 'model.pt'), and put a model.card.json beside them naming the network's "
    "factory and kwargs (or export TorchScript: torch.jit.script(model).save('model.ts'))."
)


# ------------------------------------------------------------------------------------------------
# weights files


def refuse_random(card: ModelCard | None, what: str) -> None:
    """A card that says ``"weights": "random"`` next to weights that will be read contradicts itself: refuse, so
    that no output says "random weights" about a trained network (or the reverse)."""
    if card is not None and card.random_weights:
        raise ModelLoadError(
            f"The card says \"weights\": \"random\" (an untrained network), but the weights come from {what}. "
            "Remove \"weights\": \"random\" from the card to use those weights, or load the card alone (with its "
            "factory) for an untrained network."
        )


def checked_sha256(path: Path, card: ModelCard | None, label: str) -> str:
    """The sha256 of the weights file about to be read; a card's ``weights_sha256`` must match it (checked before
    anything in the file is unpickled)."""
    try:
        digest = file_sha256(path)
    except OSError as err:
        raise ModelLoadError(f"Cannot read '{path}': {err.strerror or err}.") from err
    expected = card.weights_sha256 if card is not None else None
    if expected is not None and digest != expected:
        raise ModelLoadError(
            f"The weights file '{path.name}' has sha256 {digest}, but {label} says weights_sha256 {expected}: it is "
            "not the file the card was written for (another training run, or a damaged or partial copy). Find the "
            "file with that hash; if this file is the one you mean, put its sha256 in the card."
        )
    return digest


def jit_load(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still ship it, so load it quietly
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning)
            module = cast(Callable[..., nn.Module], torch.jit.load)(str(path), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError and others for damaged archives
        raise ModelLoadError(
            f"'{path.name}' looks like TorchScript but cannot be loaded ({first_line(err)}). It may be damaged, or "
            "saved by a newer PyTorch than the one installed here."
        ) from err
    return module


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _numpy_globals() -> list[Any]:
    """The numpy types a plain numeric value or array needs when unpickled (no code runs for these)."""
    import numpy as np

    major = int(np.__version__.split(".")[0])
    multiarray = importlib.import_module("numpy._core.multiarray" if major >= 2 else "numpy.core.multiarray")
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def torch_load(path: Path, trust: bool) -> Any:
    """``torch.load`` with ``weights_only=True`` (numpy scalars and arrays allowed, as training scripts often save
    metrics beside the weights); any other pickled object is refused unless ``trust``."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        if "Weights only load failed" not in message and "Unsupported" not in message:
            raise ModelLoadError(f"'{path.name}' is damaged or not a PyTorch file ({first_line(err)}).") from err
        found = re.search(r"GLOBAL ([\w.]+)", message)
        what = f"it needs the Python object {found.group(1)}" if found else "it holds Python objects"
        if not trust:
            raise ModelLoadError(f"'{path.name}' is a pickled Python file, not plain weights ({what}). "
                                 + _REFUSED_PICKLE) from None
    except Exception as err:  # noqa: BLE001 - truncated zips, bad magic numbers, ...
        raise ModelLoadError(
            f"'{path.name}' is damaged or truncated and cannot be read ({first_line(err)}). Copy or save it again."
        ) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as err:
        raise ModelLoadError(
            f"'{path.name}' is a pickled model whose Python class cannot be found ({first_line(err)}). Import or "
            "install the code that defines the network before loading, or better, save its state_dict and write a "
            "model card naming the factory."
        ) from err
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"'{path.name}' cannot be unpickled ({first_line(err)}).") from err


def read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise ModelLoadError(
            f"'{path.name}' is a .safetensors file; reading it needs the 'safetensors' package, which is not "
            "installed. Install it with: pip install safetensors"
        ) from err
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"'{path.name}' is not a readable safetensors file ({first_line(err)}).") from err


def read_state(path: Path, kind: str, trust: bool) -> dict[str, Tensor]:
    obj = read_safetensors(path) if kind == "safetensors" else torch_load(path, trust)
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    return state_dict_of(obj, path.name)


def torchscript_state(path: Path) -> dict[str, Tensor]:
    """The state_dict of the TorchScript archive at ``path`` (parameters and buffers by name, detached): for a card
    that names the Python network the archive was exported from, so that layer methods, which need Python module
    hooks, can run on the same weights. :func:`load_weights` then checks every name and shape."""
    archive = jit_load(path)
    return {name: t.detach().clone() for name, t in archive.state_dict().items()}


def _is_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def state_dict_of(obj: Any, name: str) -> dict[str, Tensor]:
    """The state_dict inside a checkpoint: the object itself or under a common key ("state_dict", "model", ...)."""
    if _is_state(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _STATE_KEYS:
            if _is_state(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:10])
        raise ModelLoadError(
            f"'{name}' holds a dictionary (keys {keys}) but no state_dict of tensors under any of "
            f"{', '.join(_STATE_KEYS)}. Save the weights with torch.save(model.state_dict(), ...)."
        )
    raise ModelLoadError(
        f"'{name}' holds a {type(obj).__name__}, not a state_dict; save the weights with "
        "torch.save(model.state_dict(), ...)."
    )


# ------------------------------------------------------------------------------------------------
# building networks and loading weights into them


def resolve_factory(spec: str, imports: ImportPolicy | None = None) -> Callable[..., Any]:
    """The callable named by ``"package.module:callable"`` (``"monai:X"`` = ``"monai.networks.nets:X"``; a dotted
    ``"package.module.Callable"`` also works). ``imports`` says which modules may be imported (default: only the
    network libraries, see :mod:`._imports`); the name is checked before anything is imported."""
    imports = imports or ImportPolicy()
    if ":" in spec:
        mod_name, attr = spec.split(":", 1)
    elif "." in spec:
        mod_name, attr = spec.rsplit(".", 1)
    else:
        raise ModelLoadError(f"The factory {spec!r} must name a module and a callable: 'package.module:callable'.")
    if mod_name == "monai":
        mod_name = "monai.networks.nets"
    imports.check_name(spec, "The factory", f"{mod_name}.{attr}", mod_name)
    try:
        module = imports.import_module(mod_name)
    except Exception as err:  # noqa: BLE001 - told apart below
        refused = refused_import(err)
        if refused is not None:
            raise ModelLoadError(f"The factory '{spec}' was not built: {refused}") from err
        if not isinstance(err, ImportError):
            raise ModelLoadError(f"Importing '{mod_name}' for the factory '{spec}' failed: {first_line(err)}.") \
                from err
        top = mod_name.split(".")[0]
        raise ModelLoadError(
            f"The factory '{spec}' needs the Python module '{mod_name}', which cannot be imported ({err}). Install "
            f"the package that defines the network (e.g. pip install {top}), or correct the factory "
            "('package.module:callable')."
        ) from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, 3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ModelLoadError(f"The factory '{spec}': '{mod_name}' has no '{attr}'.{hint}")
        obj = getattr(obj, part)
    imports.check_defined(obj, spec, "The factory")
    if not callable(obj):
        raise ModelLoadError(f"The factory '{spec}' names a {type(obj).__name__}, not a class or function.")
    return cast(Callable[..., Any], obj)


def check_safe_factory(fn: Any, spec: str, trust: bool) -> None:
    """Without ``trust`` only ``torch.nn.Module`` classes may be called (a function could do anything)."""
    if trust or (inspect.isclass(fn) and issubclass(fn, nn.Module)):
        return
    raise ModelLoadError(
        f"The factory '{spec}' is {'a class that is not a torch.nn.Module' if inspect.isclass(fn) else 'a function'}, "
        "not a torch.nn.Module class. A card file could name any function (for example one that runs shell "
        "commands), so functions and other classes are called only with load_model(..., trust=True). Use it if "
        "you trust the card, or name the network class itself."
    )


def call_factory(fn: Callable[..., Any], kwargs: Mapping[str, Any], spec: str) -> nn.Module:
    """``fn(**kwargs)`` with clear errors for kwargs it does not take and for failures while building."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as err:
            names = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
            unknown = [k for k in kwargs if k not in sig.parameters]
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, names, 1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            detail = f"unknown {', '.join(hints)}" if hints and not any(
                p.kind is p.VAR_KEYWORD for p in sig.parameters.values()) else str(err)
            raise ModelLoadError(
                f"The card's kwargs do not fit {spec}: {detail}. It takes: {', '.join(names)}."
            ) from err
    try:
        module = fn(**kwargs)
    except Exception as err:  # noqa: BLE001 - anything the constructor raises
        raise ModelLoadError(
            f"Building the network {spec}(**kwargs) failed: {type(err).__name__}: {first_line(err)}. Check the "
            "card's kwargs against the network's documentation."
        ) from err
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"The factory {spec} returned a {type(module).__name__}, not a torch.nn.Module.")
    return module


def build_module(card: ModelCard, imports: ImportPolicy) -> nn.Module:
    """The network built from ``card.factory(**card.kwargs)``, freshly initialised, on the CPU."""
    assert card.factory is not None
    fn = resolve_factory(card.factory, imports)
    check_safe_factory(fn, card.factory, imports.trust)
    return call_factory(fn, card.kwargs, card.factory)


def _strip_prefix(state: dict[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Undo a wrapper prefix (``module.`` from DataParallel, ``model.`` from Lightning) when that fits better."""
    best, best_hits = state, len(expected & set(state))
    if best_hits == len(expected) == len(state):
        return state
    prefixes = {k.split(".", 1)[0] + "." for k in state if "." in k}
    for prefix in prefixes:
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            hits = len(expected & set(stripped))
            if hits > best_hits:
                best, best_hits = stripped, hits
    return best


def load_weights(module: nn.Module, state: Mapping[str, Tensor], name: str, factory: str) -> None:
    """``module.load_state_dict(state)`` (strict) with an error that names the first keys that do not fit."""
    expected = module.state_dict()
    state = _strip_prefix(dict(state), set(expected))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (file {tuple(state[k].shape)}, network {tuple(v.shape)})" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing from the file", missing), ("not in the network", unexpected),
                             ("with a different shape", shapes)):
            if items:
                more = f" and {len(items) - 5} more" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
        raise ModelLoadError(
            f"The weights in '{name}' do not fit the network built by {factory}: {'; '.join(parts)}. Check that the "
            "card's factory and kwargs (e.g. spatial_dims, channels, out_channels) are those the network was trained "
            "with."
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"The weights in '{name}' do not fit {factory}: {first_line(err)}") from err
