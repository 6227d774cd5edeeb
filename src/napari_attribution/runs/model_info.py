"""Model choices for the widgets: demo models, files, recent models, and what the widget needs to know about a
loaded model (task, classes, layers). Qt-free; runs in a worker thread.

Uses ``na.load_model`` when the core has it; until then the lesion demo is built from
:mod:`napari_attribution._demo` and a TorchScript file is read with ``torch.jit.load``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import napari_attribution as na

from .._provenance import file_sha256

__all__ = ["ModelInfo", "RecentModels", "config_dir", "default_features_path", "demo_names", "load_model_info",
           "model_info"]

DEMO_FALLBACK = "lesion3d"
MODEL_FILE_FILTER = "Models (*.pt *.pth *.ts *.torchscript *.ckpt *.json *.yaml *.yml);;All files (*)"


def config_dir() -> Path:
    """The plugin's folder for small user files: ``$NAPARI_ATTRIBUTION_CONFIG_DIR``, else
    ``$XDG_CONFIG_HOME/napari-attribution`` (``~/.config/napari-attribution``)."""
    base = os.environ.get("NAPARI_ATTRIBUTION_CONFIG_DIR") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "napari-attribution")
    return Path(base)


def default_features_path(source: str, label: str = "model") -> Path:
    """Where the relevant features (vebi) of a model live: next to a model file (``model.pt -> model.vebi.npz``);
    for a demo model or a model handed over from Python, in the config folder's ``features/`` (the package's own
    folder is not the user's to write in)."""
    from ..interpretation import features_path_for

    if not source.startswith("demo:") and os.path.isfile(source):
        return features_path_for(source)
    name = source.split(":", 1)[1] if source.startswith("demo:") else label
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "model"
    return config_dir() / "features" / f"{slug}.vebi.npz"


def demo_names() -> list[str]:
    """Names of the bundled demo models (``napari_attribution.models.demo.list_demos``), else the lesion demo."""
    try:
        from ..models.demo import list_demos

        names = [str(getattr(d, "name", d)) for d in list_demos()]
        # the lesion demo first: it matches the demo scan that `napari-attribution demo` opens
        return sorted(names, key=lambda n: n != DEMO_FALLBACK) or [DEMO_FALLBACK]
    except Exception:  # the demo package is not there yet, or failed to import
        return [DEMO_FALLBACK]


@dataclass
class ModelInfo:
    """A loaded model and the facts the widget shows and uses."""

    model: Any  # na.LoadedModel
    source: str  # "demo:<name>" or a file path
    label: str
    task: str | None = None
    spatial_dims: int | None = None
    in_channels: int | None = None
    n_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    layers: list[str] = field(default_factory=list)
    layer_channels: dict[str, int] = field(default_factory=dict)
    default_layer: str | None = None
    weights: str | None = None
    sha256: str | None = None  # of the weights file actually read (not of a card file); None for random weights
    random_weights: bool = False  # the card asks for an untrained network ("weights": "random")
    is_script: bool = False
    pass_seconds: dict[tuple[Any, ...], tuple[float, float]] = field(default_factory=dict)  # (F+B, F) seconds
    card: Any = None  # na.ModelCard in effect: the given card with what infer_card filled in
    guessed: tuple[str, ...] = ()  # facts guessed from the network rather than given by a card, in words
    probe_shape: tuple[int, ...] | None = None  # spatial shape of the test forward pass (None: not run)
    probe_error: str = ""  # why the test forward pass failed ("" when it ran)
    classes_from_run: bool = False  # the class count was learnt from a run's output (the test pass had failed)

    def class_label(self, k: int) -> str:
        if self.class_names and 0 <= k < len(self.class_names):
            return f"{k}: {self.class_names[k]}"
        return f"class {k}"

    def summary(self) -> str:
        dims = f"{self.spatial_dims}D " if self.spatial_dims else ""
        task = self.task or "task unknown"
        classes = ""
        if self.class_names:
            classes = f", classes: {', '.join(self.class_names)}"
        elif self.n_classes:
            classes = f", {self.n_classes} output{'s' if self.n_classes > 1 else ''}"
        else:
            classes = ", class count unknown until the first run"
        kind = " (TorchScript: gradient and perturbation methods only)" if self.is_script else ""
        untrained = " — random weights (untrained on purpose)" if self.random_weights else ""
        return f"{self.label}: {dims}{task}{classes}{kind}{untrained}"

    def learn_from_result(self, att: Any) -> bool:
        """Fill the task and class count the test forward pass could not tell (a network that takes one fixed
        size) from a run's result: ``extras["output_channels"]`` (the output's channels) and the prediction (a
        label map for segmentation, class probabilities for classification). True when something was learnt."""
        changed = False
        k = getattr(att, "extras", {}).get("output_channels")
        if self.n_classes is None and isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > 0:
            self.n_classes = int(k)
            self.classes_from_run = changed = True
        if self.task is None:
            pred = getattr(att, "prediction", None)
            if pred is not None:  # a label map has the map's axes; class probabilities (K,), slice-wise (D, K)
                self.task = "segmentation" if np.ndim(pred) == np.ndim(att.data) else "classification"
                changed = True
        return changed

    def provenance_fields(self, source_metadata: Any = None) -> dict[str, Any]:
        """What a heatmap's provenance records about this model and (from the image layer's metadata) its scan:
        ``weights_sha256`` (the weights read), ``random_weights``, the card in effect, ``scan`` (file name only)
        and ``scan_sha256``. For :func:`napari_attribution.layers.provenance`."""
        from .._provenance import model_fields, scan_fields_from_metadata

        out = {**model_fields(self.model), "weights_sha256": self.sha256, "random_weights": self.random_weights}
        out.update(scan_fields_from_metadata(source_metadata))
        return out


def _legacy_demo(name: str) -> Any:
    """The lesion demo without ``na.load_model`` (the shipped weights of :mod:`napari_attribution._demo`)."""
    if name != DEMO_FALLBACK:
        try:
            from ..models.demo import get_demo
        except Exception as err:
            raise na.ModelLoadError(f"Unknown demo model {name!r}; available: {', '.join(demo_names())}.") from err
        got = get_demo(name)
        return got if isinstance(got, na.LoadedModel) else getattr(got, "model", got)
    from .._demo import WEIGHTS, load_demo_classifier

    module, _acc = load_demo_classifier()
    card = na.ModelCard(task="classification", spatial_dims=3, in_channels=1, class_names=("no lesion", "lesion"),
                        default_layer="features", weights=str(WEIGHTS) if WEIGHTS.exists() else None)
    return na.LoadedModel(module.eval(), card)


def _load(source: str) -> Any:
    if source.startswith("demo:"):
        name = source.split(":", 1)[1]
        if hasattr(na, "load_model"):
            try:
                return na.load_model(source)
            except na.AttributionError:
                if name != DEMO_FALLBACK:
                    raise
        return _legacy_demo(name)
    if hasattr(na, "load_model"):
        return na.load_model(source)
    import torch

    path = Path(source)
    if not path.is_file():
        raise na.ModelLoadError(f"No such model file: '{path}'.")
    load: Any = torch.jit.load  # untyped in torch
    try:
        module = load(str(path), map_location="cpu")
    except Exception as err:
        raise na.ModelLoadError(
            f"'{path.name}' is not a TorchScript file. Checkpoints with a model card need na.load_model, which "
            "this version does not have yet; export the model with torch.jit.script or torch.jit.trace."
        ) from err
    return na.LoadedModel(module.eval(), na.ModelCard(weights=str(path), inferred=True))


def _probe_size(info: ModelInfo) -> tuple[int, ...]:
    """The spatial shape of the test forward pass: the card's ``input_shape`` (a network that takes one fixed
    size runs on nothing else), else its ``patch_size``, else 32^3 (3D) / 64^2 (2D)."""
    card = info.card
    for fixed in (getattr(card, "input_shape", None), getattr(card, "patch_size", None)):
        if fixed:
            return tuple(int(s) for s in fixed)
    return (32,) * 3 if (info.spatial_dims or 2) == 3 else (64, 64)


def _probe(info: ModelInfo) -> None:
    """One forward pass on a small zero input: task, number of outputs, candidate layers. When it fails (a
    network that takes one fixed size and has no ``input_shape`` in its card), the card's ``num_classes`` /
    ``class_names`` stand, or the class count stays unknown until the first run
    (:meth:`ModelInfo.learn_from_result`); ``probe_error`` says why."""
    import torch

    lm = info.model
    module = lm.module if isinstance(lm, na.LoadedModel) else lm
    size = _probe_size(info)
    x = torch.zeros((1, info.in_channels or 1) + size)
    info.probe_shape = size
    try:
        with torch.no_grad():
            out = module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if info.task is None:
            info.task = "classification" if out.ndim == 2 else ("segmentation" if out.ndim == x.ndim else None)
        if info.n_classes is None:
            info.n_classes = int(out.shape[1])
    except Exception as err:  # a network that takes another input size: the dock says so, the run will tell
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        text = lines[-1] if lines else type(err).__name__
        info.probe_error = text if len(text) <= 160 else text[:157] + "..."
        return
    if not info.is_script:
        try:
            cands = na.find_layers(module, x)
        except Exception:
            cands = []
        info.layers = [c.name for c in cands]
        info.layer_channels = {c.name: int(c.shape[1]) for c in cands}
        if info.default_layer is None:  # the pipeline's own rule (never a segmentation net's output head)
            from ..models._layers import pick_default

            chosen = pick_default(cands, tuple(out.shape))
            info.default_layer = chosen.name if chosen is not None else None


def load_model_info(source: str) -> ModelInfo:
    """Load ``source`` (``"demo:<name>"`` or a file) and probe it. Raises ``na.ModelLoadError`` with a readable
    message."""
    from .threads import job_thread_count, torch_threads

    # as a job: all cores but one, and the caller's torch thread setting back afterwards
    with torch_threads(job_thread_count(strict=False)):
        return model_info(_load(source), source)


def model_info(model: Any, source: str = "python object") -> ModelInfo:
    """Describe a model already in memory (``na.LoadedModel`` or ``torch.nn.Module``) for the widget."""
    import torch

    lm = model if isinstance(model, na.LoadedModel) else na.LoadedModel(model.eval(), na.ModelCard(inferred=True))
    from ..models import infer_card

    card = infer_card(lm.module, lm.card)
    if source.startswith("demo:"):
        label = source.split(":", 1)[1]
    elif os.path.isfile(source) or os.path.isdir(source):  # a model file or folder (a MONAI bundle, nnU-Net)
        label = Path(source).name
    else:
        label = type(lm.module).__name__ if source == "python object" else source
    random = card.random_weights
    weights = None if random else (card.weights or (source if os.path.isfile(source) else None))
    info = ModelInfo(
        model=lm, source=source, label=label, task=card.task, spatial_dims=card.spatial_dims,
        in_channels=card.in_channels, class_names=tuple(card.class_names) if card.class_names else None,
        default_layer=card.default_layer, weights=weights, random_weights=random,
        is_script=isinstance(lm.module, torch.jit.ScriptModule),
    )
    if info.class_names:
        info.n_classes = len(info.class_names)
    elif card.num_classes:
        info.n_classes = int(card.num_classes)
    info.card = card
    # the hash of the weights file the loader actually read; a model made without the loader's record (a module
    # handed over from Python) falls back to hashing the weights file its card names
    info.sha256 = lm.weights_sha256
    if info.sha256 is None and not random and weights and os.path.isfile(weights):
        info.sha256 = file_sha256(weights)
    _probe(info)
    info.guessed = _guessed(lm.card, card, info)
    return info


def _guessed(given: Any, card: Any, info: ModelInfo) -> tuple[str, ...]:
    """The facts in effect that no card gave: filled in by ``infer_card`` (dimensions, input channels, and for
    a card guessed as a whole its output kind) or by the test forward pass (task, class count, default layer)."""
    whole = bool(getattr(given, "inferred", False))
    out = []
    for name, word in (("spatial_dims", "dimensions"), ("in_channels", "input channels")):
        if getattr(card, name) is not None and (whole or getattr(given, name) is None):
            out.append(word)
    if whole and card.output == "probabilities":
        out.append("output (probabilities: the network ends in a softmax / sigmoid)")
    if info.task is not None and (whole or given.task is None):
        out.append("task")
    if info.n_classes is not None and (whole or (given.class_names is None and given.num_classes is None)):
        out.append("class count")
    if info.default_layer is not None and (whole or given.default_layer is None) and info.layers:
        out.append("default layer")
    return tuple(out)


class RecentModels:
    """Recently loaded model files, newest first, kept in a small JSON file in the user's config folder
    (``$NAPARI_ATTRIBUTION_CONFIG_DIR`` or ``~/.config/napari-attribution``)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, size: int = 8) -> None:
        if path is None:
            path = config_dir() / "recent_models.json"
        self.path = Path(path)
        self.size = size

    def list(self) -> list[str]:
        try:
            items = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return [str(i) for i in items if isinstance(i, str)][: self.size]

    def add(self, source: str) -> None:
        if source.startswith("demo:"):
            return
        items = [source] + [i for i in self.list() if i != source]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(items[: self.size], indent=1))
        except OSError:  # a read-only home: recent models are a convenience
            pass
