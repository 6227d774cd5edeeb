"""``ModelCard`` and ``LoadedModel``: what the pipeline needs to know about a model, reading and writing the card
(JSON or YAML), and inference of a card for a plain ``torch.nn.Module``.

A card file is a JSON (or YAML) object with any of these keys (all optional)::

    {
      "name": "liver CT segmenter",
      "factory": "monai.networks.nets:UNet",          # package.module:callable that builds the network
      "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                 "channels": [16, 32, 64, 128], "strides": [2, 2, 2]},
      "weights": "model.pt",                          # relative to the card file; or "random" (see below)
      "weights_sha256": "9f86d08...",                 # optional: the weights file's sha256, checked on load
      "task": "segmentation",                         # or "classification"
      "spatial_dims": 3, "in_channels": 1, "num_classes": 3,
      "class_names": ["background", "liver", "tumour"],
      "output": "logits",                             # or "probabilities"
      "background": 0,                                # background class of a segmentation output, or null
      "preprocess": {"window": [-100, 300], "pad_to_multiple": 16},   # see napari_attribution.inputs
      "spacing": [1.5, 1.0, 1.0],                     # mm, numpy order (z, y, x), the training voxel size
      "input_shape": [128, 128, 128],                 # or: resize the whole scan to exactly this shape
      "patch_size": [96, 96, 96],                     # sliding-window patch
      "default_layer": "model.1.submodule"            # layer for CAM-type methods
    }

Weights are never silent. A card that builds its network from ``factory`` must say where the trained weights
are: ``"weights": "model.pt"``, or a checkpoint of the card's own name beside the card file (``net.card.json`` ->
``net.pt`` / ``.pth`` / ``.ckpt`` / ``.safetensors``), or the checkpoint is the file being loaded
(``load_model("net.pt")`` with the card beside it). Without weights, loading is an error; ``"weights": "random"``
asks for an untrained (freshly initialised) network on purpose, and every output then says "random weights"
(``card.random_weights``, the sidecar, the batch summary, the napari layer name). ``weights_sha256`` pins the
weights file: a file whose sha256 differs is refused on load.

``input_shape`` and ``spacing`` are two ways to bring a scan to what the network takes: ``spacing`` resamples it to
the training voxel size (the shape follows from the scan's extent), ``input_shape`` resizes the whole scan to
exactly that shape (for a network that takes one fixed size, e.g. 128^3). A card gives at most one of them.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._errors import ModelLoadError
from ..inferers import SlidingWindow
from ..inputs import check_preprocess

__all__ = ["CARD_SUFFIXES", "RANDOM_WEIGHTS", "LoadedModel", "ModelCard", "check_spatial_dims", "first_layer",
           "infer_card"]

#: File name endings recognised as model cards.
CARD_SUFFIXES = (".json", ".yaml", ".yml")

_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*(:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*)?$")
_TASKS = ("classification", "segmentation")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: The value of ``weights`` that asks for an untrained network on purpose.
RANDOM_WEIGHTS = "random"
_OUTPUTS = ("logits", "probabilities")


@dataclass(frozen=True)
class ModelCard:
    """Facts about a model that the pipeline uses (a sidecar ``model.card.json`` or an inferred guess).

    Values are checked when the card is made; a bad value raises :class:`~napari_attribution.ModelLoadError`
    naming the field. Sequences are stored as tuples.

    Attributes
    ----------
    task : ``"classification"`` or ``"segmentation"``; None = infer from the output shape.
    spatial_dims : 2 or 3; None = infer from the first convolution (or the image).
    in_channels : number of input channels; None = infer from the first layer.
    class_names : optional names of the output classes (a list, or a dict ``{"0": "background", ...}`` in a file).
    output : ``"logits"`` (default) or ``"probabilities"``.
    background : the background class of a multi-class segmentation output (default 0), or None.
    default_layer : dotted name of the layer for layer methods; None = found automatically.
    factory : ``"package.module:callable"`` that builds the network (``"monai:UNet"`` is short for
        ``"monai.networks.nets:UNet"``); used with a state_dict checkpoint.
    kwargs : keyword arguments of the factory.
    weights : path of the state_dict checkpoint (relative paths in a card file are relative to the file), or
        ``"random"``: build the network untrained, on purpose (:attr:`random_weights`). A card that builds its network
        from ``factory`` and gives neither (nor has a checkpoint found beside it) is refused by ``load_model``.
    weights_sha256 : the weights file's sha256 (64 hex digits); ``load_model`` refuses a file with another hash.
    preprocess : intensity normalisation and padding, see :mod:`napari_attribution.inputs`.
    patch_size : sliding-window patch, one int per spatial axis.
    spacing : the voxel size (mm) the model was trained at, numpy order ``(z, y, x)``; the scan is resampled to it.
    input_shape : resize the whole scan to exactly this shape, one positive int per model spatial axis (2 values for
        a 2D model, 3 for a 3D one), numpy order; for networks that take one fixed size. Replaces ``spacing``: a
        card with both is an error.
    inferer : how the network predicts a scan, e.g. ``{"type": "sliding_window", "roi_size": [96, 96, 96],
        "overlap": 0.25, "mode": "gaussian"}`` (MONAI's names and defaults, see :mod:`napari_attribution.inferers`);
        None: the whole scan in one piece. ``patch_size`` alone never switches sliding windows on.
    inferred : True when the card was guessed rather than read: show it to the user as an editable guess.
    num_classes : number of output classes (channels of a segmentation output).
    name, description : free text for people.

    Examples
    --------
    >>> card = ModelCard(task="segmentation", spatial_dims=3, class_names=["background", "vessel"])
    >>> card.class_names
    ('background', 'vessel')
    >>> ModelCard.from_dict(card.to_dict()) == card
    True
    """

    task: Literal["classification", "segmentation"] | None = None
    spatial_dims: int | None = None
    in_channels: int | None = None
    class_names: tuple[str, ...] | None = None
    output: Literal["logits", "probabilities"] = "logits"
    background: int | None = 0
    default_layer: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    weights_sha256: str | None = None
    preprocess: dict[str, Any] | None = None
    patch_size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    inferer: dict[str, Any] | None = None
    inferred: bool = False
    num_classes: int | None = None
    name: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        s = self._set
        if self.task is not None and self.task not in _TASKS:
            raise ModelLoadError(_choice("task", self.task, _TASKS))
        if self.output not in _OUTPUTS:
            raise ModelLoadError(_choice("output", self.output, _OUTPUTS))
        if self.spatial_dims is not None:
            s("spatial_dims", _int(self.spatial_dims, "spatial_dims"))
            if self.spatial_dims not in (2, 3):
                raise ModelLoadError(f"Model card field 'spatial_dims' must be 2 or 3, got {self.spatial_dims!r}.")
        for key in ("in_channels", "num_classes"):
            value = getattr(self, key)
            if value is not None:
                s(key, _int(value, key, minimum=1))
        if self.class_names is not None:
            s("class_names", _class_names(self.class_names))
            if self.num_classes is not None and len(self.class_names) != self.num_classes:
                raise ModelLoadError(
                    f"The model card names {len(self.class_names)} classes but says num_classes="
                    f"{self.num_classes}; give one name per output class."
                )
        if self.background is not None:
            s("background", _int(self.background, "background", minimum=0))
            k = self.num_classes or (len(self.class_names) if self.class_names else None)
            if k is not None and self.background >= k:
                raise ModelLoadError(
                    f"Model card field 'background' is {self.background} but the model has {k} classes "
                    f"(0..{k - 1}); use null when there is no background class."
                )
        for key in ("default_layer", "name", "description"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ModelLoadError(f"Model card field '{key}' must be text, got {value!r}.")
        if self.factory is not None:
            if not isinstance(self.factory, str) or not _FACTORY.match(self.factory.strip()):
                raise ModelLoadError(
                    f"Model card field 'factory' must look like 'package.module:callable' (for example "
                    f"'monai.networks.nets:UNet' or 'monai:DenseNet121'), got {self.factory!r}."
                )
            s("factory", self.factory.strip())
        if self.kwargs is None:
            s("kwargs", {})
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise ModelLoadError(
                f"Model card field 'kwargs' must be a dictionary of keyword arguments, got {self.kwargs!r}."
            )
        if not isinstance(self.kwargs, dict):
            s("kwargs", dict(self.kwargs))
        if self.weights is not None:
            if not isinstance(self.weights, (str, os.PathLike)):
                raise ModelLoadError(
                    f"Model card field 'weights' must be a file path (or \"random\" for an untrained network), got "
                    f"{self.weights!r}."
                )
            s("weights", os.fspath(self.weights))
        self._check_sha256()
        s("preprocess", check_preprocess(self.preprocess))
        if self.patch_size is not None:
            s("patch_size", _ints(self.patch_size, "patch_size"))
        if self.spacing is not None:
            s("spacing", _floats(self.spacing, "spacing"))
        d = self.spatial_dims
        if d is not None and self.patch_size is not None and len(self.patch_size) != d:
            raise ModelLoadError(
                f"Model card field 'patch_size' {list(self.patch_size)} needs {d} values for a {d}D model."
            )
        if self.spacing is not None and (len(self.spacing) not in (2, 3) or (d == 3 and len(self.spacing) != 3)):
            raise ModelLoadError(
                f"Model card field 'spacing' {list(self.spacing)} needs one value (mm) per spatial axis, in (z, y, x) "
                "order: 3 values for a 3D model, 2 (in-plane y, x) or 3 for a 2D model."
            )
        self._check_input_shape()
        self._check_inferer()
        if not isinstance(self.inferred, bool):
            raise ModelLoadError(f"Model card field 'inferred' must be true or false, got {self.inferred!r}.")

    def _set(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)

    def _check_sha256(self) -> None:
        value = self.weights_sha256
        if value is None:
            return
        text = value.strip().lower() if isinstance(value, str) else None
        if text is not None and text.startswith("sha256:"):
            text = text[len("sha256:"):]
        if text is None or not _SHA256.match(text):
            raise ModelLoadError(
                f"Model card field 'weights_sha256' must be the weights file's sha256 as 64 hex digits (e.g. the "
                f"output of `sha256sum model.pt`), got {value!r}."
            )
        if self.random_weights:
            raise ModelLoadError(
                "The model card says \"weights\": \"random\" (an untrained network) and also gives 'weights_sha256'; "
                "random weights have no file to check. Remove one of them."
            )
        self._set("weights_sha256", text)

    def _check_input_shape(self) -> None:
        if self.input_shape is None:
            return
        self._set("input_shape", _ints(self.input_shape, "input_shape"))
        shape, d = list(self.input_shape), self.spatial_dims
        if (d is not None and len(shape) != d) or len(shape) not in (2, 3):
            need = f"{d} values for a {d}D model" if d is not None else "2 values for a 2D model, 3 for a 3D one"
            raise ModelLoadError(
                f"Model card field 'input_shape' {shape} needs one size per spatial axis of the model, in numpy "
                f"order: {need}."
            )
        if self.spacing is not None:
            raise ModelLoadError(
                f"The model card gives both 'input_shape' {shape} and 'spacing' {list(self.spacing)}: input_shape "
                "(resize the whole scan to exactly this shape) replaces spacing (resample to this voxel size). "
                "Remove one of them."
            )

    def _check_inferer(self) -> None:
        if self.inferer is None:
            return
        spec = SlidingWindow.from_card(self.inferer)
        self._set("inferer", spec.to_dict())
        d = self.spatial_dims
        if d is not None and len(spec.roi_size) != d:
            raise ModelLoadError(
                f"Model card field 'inferer': roi_size {list(spec.roi_size)} needs {d} values for a {d}D model."
            )
        if self.input_shape is not None:
            raise ModelLoadError(
                f"The model card gives both 'input_shape' {list(self.input_shape)} and a sliding-window 'inferer': "
                "input_shape resizes the whole scan to one network input, the inferer runs the network on "
                "roi_size windows of it. Remove one of them."
            )

    @property
    def sliding_window(self) -> SlidingWindow | None:
        """The card's inferer (:class:`~napari_attribution.inferers.SlidingWindow`), or None."""
        return None if self.inferer is None else SlidingWindow.from_card(self.inferer)

    @property
    def random_weights(self) -> bool:
        """True when the card asks for an untrained network on purpose (``"weights": "random"``)."""
        return self.weights == RANDOM_WEIGHTS

    # -------------------------------------------------------------- dict / file round trip
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The keys a card may hold."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """A card from a dictionary of its fields (unknown keys are an error that names the closest field)."""
        if isinstance(data, ModelCard):
            return data
        if not isinstance(data, Mapping):
            raise ModelLoadError(f"A model card must be a dictionary of fields, got {type(data).__name__}.")
        known = cls.field_names()
        unknown = [str(k) for k in data if k not in known]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, known, 1)
                hints.append(f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k))
            raise ModelLoadError(f"Unknown model card field {', '.join(hints)}. Known fields: {', '.join(known)}.")
        return cls(**{str(k): v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """The card as plain JSON-ready data (lists, not tuples); fields left at None are omitted, and so is
        ``inferred`` unless True. ``ModelCard.from_dict(card.to_dict()) == card``."""
        order = ("name", "description", "factory", "kwargs", "weights", "weights_sha256", "task", "spatial_dims",
                 "in_channels", "num_classes", "class_names", "output", "background", "preprocess", "default_layer",
                 "patch_size", "spacing", "input_shape", "inferer", "inferred")
        out: dict[str, Any] = {}
        for key in order:
            value = getattr(self, key)
            if key == "background":
                out[key] = value  # None is meaningful here (no background class)
            elif key == "inferred":
                if value:
                    out[key] = True
            elif key == "kwargs":
                if value:
                    out[key] = _plain(value)
            elif value is not None:
                out[key] = _plain(value)
        return out

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ModelCard:
        """Read a card file (``.json``, ``.yaml`` or ``.yml``); a relative ``weights`` path becomes absolute,
        relative to the card's folder."""
        p = Path(path)
        if not p.is_file():  # also a named pipe: reading it would block
            what = "is not a regular file (a named pipe, socket or device)" if p.exists() else "does not exist"
            raise ModelLoadError(f"The model card '{p}' {what}.")
        data = read_mapping(p)
        card = cls.from_dict(data)
        weights = card.weights
        if weights is None or card.random_weights:
            return card
        if not Path(weights).expanduser().is_absolute():
            return replace(card, weights=str((p.parent / weights).resolve()))
        return replace(card, weights=str(Path(weights).expanduser()))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the card as JSON (``.json``) or YAML (``.yaml`` / ``.yml``); a ``weights`` path inside the card's
        folder is written relative to it. Returns the path. Raises FileExistsError unless ``overwrite``."""
        p = Path(path)
        if p.suffix.lower() not in CARD_SUFFIXES:
            raise ValueError(f"'{p.name}' is not a card file name: end it with .card.json (or .yaml / .yml).")
        if p.exists() and not overwrite:
            raise FileExistsError(f"'{p}' already exists; pass overwrite=True to replace it.")
        data = self.to_dict()
        if self.weights is not None and not self.random_weights:
            w = Path(self.weights)
            try:
                data["weights"] = w.resolve().relative_to(p.parent.resolve()).as_posix() if w.is_absolute() else \
                    w.as_posix()
            except ValueError:
                data["weights"] = str(w)
        if p.suffix.lower() == ".json":
            text = json.dumps(data, indent=2) + "\n"
        else:
            text = _yaml_module().safe_dump(data, sort_keys=False)
        from .._atomic import atomic_write  # whole or not at all, and never over a card written meanwhile

        atomic_write(p, lambda fh: fh.write(text.encode("utf-8")), overwrite=overwrite)
        return p


@dataclass
class LoadedModel:
    """A model in eval mode with its card (``source``: what it was loaded from, for display).

    ``weights_sha256`` is the sha256 of the weights file that was actually read (the checkpoint, the TorchScript
    archive or the demo's shipped file), None when no file was read (a module built in memory, or random weights).
    """

    module: nn.Module
    card: ModelCard
    source: str | None = None
    weights_sha256: str | None = None

    @property
    def random_weights(self) -> bool:
        """True when the network was built untrained on purpose (``"weights": "random"`` in its card)."""
        return self.card.random_weights


# ------------------------------------------------------------------------------------------------
# helpers for validation and files


def _choice(key: str, value: Any, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), allowed, 1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"Model card field '{key}' must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}{hint}."


def _int(value: Any, key: str, minimum: int | None = None) -> int:
    whole = isinstance(value, float) and value.is_integer()
    if isinstance(value, bool) or not (whole or hasattr(value, "__index__")):
        raise ModelLoadError(f"Model card field '{key}' must be a whole number, got {value!r}.")
    out = int(value)
    if minimum is not None and out < minimum:
        raise ModelLoadError(f"Model card field '{key}' must be at least {minimum}, got {value!r}.")
    return out


def _seq(value: Any, key: str) -> list[Any]:
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and tensors
        value = value.tolist()
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ModelLoadError(f"Model card field '{key}' must be a list, got {value!r}.")
    return list(value)


def _ints(value: Any, key: str) -> tuple[int, ...]:
    items = _seq(value, key)
    if not items:
        raise ModelLoadError(f"Model card field '{key}' must not be empty.")
    return tuple(_int(v, key, minimum=1) for v in items)


def _floats(value: Any, key: str) -> tuple[float, ...]:
    items = _seq(value, key)
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            raise ModelLoadError(f"Model card field '{key}' must hold numbers (mm), got {value!r}.")
        f = float(v)
        if not math.isfinite(f) or f <= 0:
            raise ModelLoadError(f"Model card field '{key}' must hold positive sizes in mm, got {value!r}.")
        out.append(f)
    return tuple(out)


def _class_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, Mapping):  # MONAI's channel_def style {"0": "background", "1": "spleen"}
        try:
            items = sorted((int(k), v) for k, v in value.items())
        except (TypeError, ValueError) as err:
            raise ModelLoadError(
                f"Model card field 'class_names' as a dictionary must map class indices to names, got {value!r}."
            ) from err
        if [k for k, _ in items] != list(range(len(items))):
            raise ModelLoadError(f"Model card field 'class_names' must name classes 0..K-1 without gaps: {value!r}.")
        value = [v for _, v in items]
    names = _seq(value, "class_names")
    if not all(isinstance(n, str) for n in names):
        raise ModelLoadError(f"Model card field 'class_names' must hold text, got {value!r}.")
    return tuple(names)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _yaml_module() -> Any:
    try:
        import yaml
    except ImportError as err:
        raise ModelLoadError(
            "Reading or writing a YAML model card needs the PyYAML package, which is not installed. Install it "
            "with: pip install pyyaml -- or write the card as JSON (model.card.json)."
        ) from err
    return yaml


def read_mapping(p: Path) -> Mapping[str, Any]:
    """A JSON or YAML file holding one object, or a ModelLoadError that says where it is broken."""
    suffix = p.suffix.lower()
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ModelLoadError(f"'{p.name}' is not a text file, so it cannot be a model card (JSON or YAML).") from err
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelLoadError(
                f"'{p.name}' is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}."
            ) from err
    elif suffix in (".yaml", ".yml"):
        yaml = _yaml_module()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ModelLoadError(f"'{p.name}' is not valid YAML: {err}") from err
    else:
        raise ModelLoadError(f"'{p.name}' is not a card file: use .json, .yaml or .yml.")
    if not isinstance(data, Mapping):
        raise ModelLoadError(f"'{p.name}' must hold one object of card fields, got {type(data).__name__}.")
    return data


# ------------------------------------------------------------------------------------------------
# inference


def _kind(m: nn.Module) -> str:
    return str(getattr(m, "original_name", type(m).__name__))


def first_layer(module: nn.Module) -> nn.Module | None:
    """The first convolution or linear layer in definition order (also inside TorchScript modules)."""
    for m in module.modules():
        if _kind(m) in ("Conv1d", "Conv2d", "Conv3d", "Linear", "ConvTranspose2d", "ConvTranspose3d"):
            return m
    return None


def _last_leaf(module: nn.Module) -> nn.Module | None:
    last = None
    for m in module.modules():
        if next(m.children(), None) is None:
            last = m
    return last


def infer_card(
    module: nn.Module,
    card: ModelCard | None = None,
    *,
    spatial_shape: Sequence[int] | None = None,
) -> ModelCard:
    """Fill a card's missing fields from the model; with no card, a guess marked ``inferred=True``.

    Parameters
    ----------
    module : nn.Module
        The model (also TorchScript). Left as it was (training flag, parameters).
    card : ModelCard, optional
        Known facts; only its missing ``spatial_dims``, ``in_channels`` (from the first layer) and, with
        ``spatial_shape``, ``task`` and ``num_classes`` are filled in.
    spatial_shape : tuple of int, optional
        An example input's spatial shape, e.g. ``(96, 96, 96)``: one forward pass on zeros of that shape tells
        the task from the output shape (``(B, K)`` classification, ``(B, K, *spatial)`` segmentation) and the
        number of classes ``K``. A forward pass that fails leaves those fields unknown.

    Returns
    -------
    ModelCard
        With no card given, ``inferred=True``, and ``output="probabilities"`` when the model ends in a Softmax
        or Sigmoid module.
    """
    guessing = card is None
    card = card or ModelCard(inferred=True)
    first = first_layer(module)
    dims = card.spatial_dims
    chans = card.in_channels
    if first is not None:
        kind = _kind(first)
        if dims is None and kind[-2:] in ("2d", "3d"):
            dims = int(kind[-2])
        if chans is None:
            chans = int(getattr(first, "in_channels", 0) or 0) or None
    changes: dict[str, Any] = {"spatial_dims": dims, "in_channels": chans}
    if guessing:
        last = _last_leaf(module)
        if last is not None and _kind(last) in ("Softmax", "Softmax2d", "Sigmoid"):
            changes["output"] = "probabilities"
    if spatial_shape is not None and (card.task is None or card.num_classes is None):
        probe = _probe(module, (chans or 1, *(int(s) for s in spatial_shape)))
        if probe is not None:
            task, k = probe
            if card.task is None:
                changes["task"] = task
            if card.num_classes is None and (card.class_names is None or len(card.class_names) == k):
                changes["num_classes"] = k
    if card.background is not None and changes.get("num_classes") is not None \
            and card.background >= changes["num_classes"]:
        changes["background"] = None
    return replace(card, **changes)


def check_spatial_dims(module: nn.Module, card: ModelCard) -> None:
    """Refuse a card whose ``spatial_dims`` the network does not run at (a 3D network with ``"spatial_dims": 2``
    would otherwise fail later, in the middle of a run, with a torch error about tensor shapes).

    The first convolution tells the network's dimensionality; when it disagrees with the card, one forward pass on
    zeros at the card's dims (its ``input_shape`` or ``patch_size``, else 32 per axis) decides: a network that
    reshapes its input before that layer (a 2D network running its slices through a ``Conv3d``) keeps the card's
    word. Nothing runs when they agree.

    Raises
    ------
    ModelLoadError
        Naming the card's value, the network's first layer and what to change.
    """
    d = card.spatial_dims
    first = first_layer(module)
    kind = _kind(first) if first is not None else ""
    if d is None or kind[-2:] not in ("2d", "3d") or int(kind[-2]) == d:
        return
    shape = tuple(card.input_shape or card.patch_size or (32,) * d)
    channels = card.in_channels or int(getattr(first, "in_channels", 0) or 0) or 1
    try:
        _forward_zeros(module, (channels, *shape))
    except Exception as err:  # noqa: BLE001 - any failure: the network does not take the card's dims
        text = str(err).strip().splitlines()
        raise ModelLoadError(
            f"The model card says spatial_dims {d}, but the network's first layer is a {kind} (a {kind[-2]}D "
            f"network) and it does not run on a {d}D input of shape {list(shape)} "
            f"({text[0] if text else type(err).__name__}). Correct 'spatial_dims' in the card to {kind[-2]}, or "
            "remove it (it is read from the network)."
        ) from None


def _forward_zeros(module: nn.Module, shape: tuple[int, ...]) -> Any:
    """One forward pass on zeros of shape ``(1, *shape)`` in eval mode, without gradients; the module's training
    flags are restored."""
    ref = next(module.parameters(), None)
    x = torch.zeros((1, *shape), dtype=ref.dtype if ref is not None and ref.is_floating_point() else torch.float32,
                    device=ref.device if ref is not None else None)
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            return module(x)
    finally:
        for m, flag in flags:
            m.training = flag


def _probe(module: nn.Module, shape: tuple[int, ...]) -> tuple[str, int] | None:
    """Task and class count from one forward pass on zeros of shape ``(1, *shape)``; None if it fails."""
    try:
        out = _forward_zeros(module, shape)
    except Exception:  # noqa: BLE001 - a guess: any failure means "unknown"
        return None
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        out = out[0]
    if not isinstance(out, Tensor):
        return None
    if out.ndim == 2:
        return "classification", int(out.shape[1])
    if out.ndim == len(shape) + 1:
        return "segmentation", int(out.shape[1])
    return None
