"""The headless workhorses behind ``napari-attribution explain`` and ``batch`` (Qt-free).

``explain`` reads one scan (NIfTI, DICOM file or series folder, or .npy), explains it with one or more methods
and writes each heatmap aligned with the scan (NIfTI with the scan's own affine) plus a JSON sidecar with the
provenance and, with ``metrics``, a CSV of scores. ``batch`` runs the same over many scans, on a Dask cluster
(a local one by default, one torch thread per worker, each worker loading the model once) or in-process, and writes
a summary CSV; run again, it skips the scans whose outputs exist from the same model, scan and request. Existing
outputs are never overwritten unless asked; every file goes through :mod:`._atomic` (a hidden temporary name,
then put in place), so one run's files land together or not at all, and CSV cells cannot run as spreadsheet
formulas.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import AtomicFiles, atomic_write, csv_writer
from ._errors import ParameterError, ReaderError, TargetError
from ._progress import format_duration
from .pipeline import model_and_card, split_params
from .targets import Class, Contrast, ErrorRegion, Predicted, Region, Voxel

__all__ = ["check_device", "check_npy", "check_request", "explain_file", "expand_images", "parse_params",
           "parse_target", "run_batch"]


def _read_mask(path: str, shape: tuple[int, ...]) -> np.ndarray:
    from .io import read_image

    if path.lower().endswith(".npy"):
        check_npy(path, what="mask")
        data = np.load(path)
    else:
        data = read_image(path)[0]
    if data.shape != shape:
        raise TargetError(f"The mask {path} has shape {data.shape}, but the scan has spatial shape {shape}.")
    return np.asarray(data)


# the --target forms, each with what it means (for the messages)
TARGET_FORMS = ("3, class:3 (or class:3:logit / class:3:probability), predicted:1, region:1:MASK.nii.gz, "
                "voxel:1:z,y,x, contrast:1,2 (or contrast:1,2:MASK.nii.gz), error:1:TRUTH.nii.gz:fp (or :fn)")
_FORM = {"class": "class:k, class:k:logit or class:k:probability", "predicted": "predicted:k",
         "region": "region:k:MASK.nii.gz", "voxel": "voxel:k:z,y,x (one index per spatial axis)",
         "contrast": "contrast:k1,k2 or contrast:k1,k2:MASK.nii.gz", "error": "error:k:TRUTH.nii.gz:fp (or :fn)"}


@dataclass(frozen=True)
class _TargetText:
    """A ``--target`` value taken apart (no file read yet)."""

    kind: str  # "index" (a bare class index), or a key of _FORM
    numbers: tuple[int, ...]  # k; (k1, k2) for a contrast; (k, *index) for a voxel
    path: str | None = None  # the mask of a region, contrast or error region
    word: str | None = None  # a class's score, or an error region's fp / fn


def _split_target(text: str) -> _TargetText:
    """Take ``text`` apart, or raise a :class:`TargetError` that shows the form it should have."""
    parts = text.split(":")
    kind = parts[0].strip().lower() if len(parts) > 1 else "index"
    if kind not in ("index", *_FORM):
        raise TargetError(f"Unknown target {text!r}. --target takes {TARGET_FORMS}.")
    try:
        if kind == "index":
            return _TargetText(kind, (int(text),))
        k = parts[1].strip()
        if kind == "class":
            word = parts[2].strip().lower() if len(parts) > 2 else None
            if len(parts) > 3 or word not in (None, "logit", "probability"):
                raise ValueError
            return _TargetText(kind, (int(k),), word=word)
        if kind == "predicted" and len(parts) == 2:
            return _TargetText(kind, (int(k),))
        if kind == "voxel" and len(parts) == 3:
            return _TargetText(kind, (int(k), *(int(v) for v in parts[2].split(","))))
        if kind == "contrast":
            k1, k2 = (int(v) for v in k.split(","))
            return _TargetText(kind, (k1, k2), ":".join(parts[2:]) or None)
        if kind == "region" and ":".join(parts[2:]):
            return _TargetText(kind, (int(k),), ":".join(parts[2:]))  # a path may hold ':' (C:\\...)
        if kind == "error":
            word = parts[-1].strip().lower() if parts[-1].strip().lower() in ("fp", "fn") else "fp"
            path = ":".join(parts[2:-1] if parts[-1].strip().lower() in ("fp", "fn") else parts[2:])
            if path:
                return _TargetText(kind, (int(k),), path, word)
    except ValueError:
        pass
    if kind == "index":
        raise TargetError(f"Cannot read the target {text!r}: --target takes {TARGET_FORMS}.")
    raise TargetError(f"Cannot read the target {text!r}: write it as {_FORM[kind]}, e.g. {_EXAMPLE[kind]}.")


_EXAMPLE = {"class": "--target class:1:probability", "predicted": "--target predicted:1",
            "region": "--target region:1:mask.nii.gz", "voxel": "--target voxel:1:40,128,96",
            "contrast": "--target contrast:1,2", "error": "--target error:1:truth.nii.gz:fn"}


def parse_target(text: str | None, shape: tuple[int, ...]) -> Any:
    """``3``, ``class:3[:logit|probability]``, ``predicted:1``, ``region:1:MASK.nii.gz``, ``voxel:1:z,y,x``,
    ``contrast:1,2[:MASK.nii.gz]``, ``error:1:TRUTH.nii.gz:fp`` (masks in the scan's voxel space, ``shape`` its
    spatial shape) -> a target object; None, ``""`` or ``auto`` -> None.

    The number is the class index, i.e. the output channel: a model with one output channel (a sigmoid or a single
    logit) has only class 0 (``predicted:0``, its foreground); ``predicted:1`` on it is refused when the target is
    resolved, with a message naming ``predicted:0``. ``class:3`` scores with each method's natural score (the logit
    for gradient and CAM methods, the probability for perturbation methods), ``class:3:logit`` /
    ``class:3:probability`` with that one.

    Examples
    --------
    >>> parse_target("voxel:1:4,6,6", (8, 12, 12))
    Voxel(k=1, index=(4, 6, 6), score=None)
    >>> parse_target("class:2:probability", (8, 12, 12))
    Class(k=2, score='probability')
    """
    if text is None or text.strip() in ("", "auto"):
        return None
    t = _split_target(text.strip())
    k = t.numbers[0]
    if t.kind == "index":
        return k
    if t.kind == "class":
        return Class(k, t.word)  # type: ignore[arg-type]
    if t.kind == "predicted":
        return Predicted(k)
    if t.kind == "voxel":
        index = t.numbers[1:]
        if len(index) != len(shape):
            raise TargetError(f"The target {text!r} gives {len(index)} voxel coordinate(s), but the scan has "
                              f"{len(shape)} spatial axes (shape {shape}): write voxel:{k}:"
                              f"{','.join('zyx'[-len(shape):]) if len(shape) <= 3 else 'i,j,...'}.")
        return Voxel(k, index)
    if t.kind == "contrast":
        return Contrast(k, t.numbers[1], None if t.path is None else _read_mask(t.path, shape).astype(bool))
    assert t.path is not None
    if t.kind == "region":
        return Region(k, _read_mask(t.path, shape).astype(bool))
    return ErrorRegion(k, _read_mask(t.path, shape), t.word)  # type: ignore[arg-type]


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` that torch does not know or that this computer does not have, before any work starts.

    Raises
    ------
    ParameterError
        ``bogus`` (not a device name), ``cuda`` without a CUDA GPU here, ``cuda:3`` with fewer GPUs, ``mps``
        without Apple's GPU.
    """
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ParameterError(f"--device {device!r} is not a device name. Use cpu, cuda, cuda:1 or mps (or leave "
                             "--device out to compute where the model is).") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this PyTorch is built without CUDA" if torch.version.cuda is None
                   else f"PyTorch (CUDA {torch.version.cuda}) finds no usable GPU")
            raise ParameterError(f"--device {device}: {why}. Use --device cpu (or leave --device out), or install a "
                                 "CUDA build of PyTorch on a computer with an NVIDIA GPU.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ParameterError(f"--device {device}: this computer has {count} CUDA GPU(s), numbered 0 to "
                                 f"{count - 1}.")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ParameterError(f"--device {device}: Apple's GPU (MPS) is not available here. Use --device cpu "
                                 "(or leave --device out).")
        return
    raise ParameterError(f"--device {device}: napari-attribution computes on cpu, cuda or mps, not on "
                         f"{dev.type!r}.")


def check_npy(path: str, what: str = "scan") -> tuple[tuple[int, ...], np.dtype[Any]]:
    """A ``.npy`` file's shape and dtype from its header alone (the data is not read), or a :class:`ReaderError`
    that says why the file cannot be a ``what`` (scan or mask): it is missing, not a regular file (a pipe would
    block), not a ``.npy`` file, holds Python objects (refused: reading them would unpickle), text or complex
    numbers instead of real numbers, is empty, or is shorter than its header says (checked before anything is
    allocated, so a tiny file that declares a huge array costs nothing)."""
    if not os.path.exists(path):
        raise ReaderError(f"The {what} {path} does not exist.")
    if not os.path.isfile(path):
        raise ReaderError(f"The {what} {path} is not a regular file (a folder, a pipe or a device).")
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = header(fh)
            start = fh.tell()
    except Exception as err:  # noqa: BLE001 - any failure to read the header means: not a .npy file we can use
        raise ReaderError(f"The {what} {path} is not a readable .npy file ({err}).") from None
    save = "save it as numbers, e.g. np.save(path, np.asarray(x, dtype=np.float32))"
    if dtype.hasobject:
        raise ReaderError(f"The {what} {path} holds Python objects (dtype {dtype}), not numbers; reading them "
                          f"would unpickle code, so it is refused: {save}.")
    if dtype.kind == "c":
        raise ReaderError(f"The {what} {path} holds complex numbers ({dtype}); save the magnitude (np.abs(x)) or "
                          "the real part (x.real) instead.")
    if dtype.kind not in "biuf":  # bool, integers, floats; not text, bytes, dates or records
        held = {"U": "text", "S": "bytes", "M": "dates", "m": "time spans", "V": "records"}.get(dtype.kind, "values")
        raise ReaderError(f"The {what} {path} holds {held} ({dtype}), not numbers: {save}.")
    size = int(np.prod(shape, dtype=np.int64))
    if size == 0:
        raise ReaderError(f"The {what} {path} is empty (shape {shape}).")
    if what == "scan" and len(shape) < 2:
        raise ReaderError(f"The scan {path} has shape {shape}: an image has 2 or 3 spatial axes (and may have a "
                          "channel axis first).")
    have, need = os.path.getsize(path) - start, size * dtype.itemsize
    if have < need:
        raise ReaderError(f"The {what} {path} is truncated: its header declares shape {shape} of {dtype} "
                          f"({need} bytes) but it holds {have} bytes.")
    return tuple(shape), dtype


def check_request(*, device: str | None = None, target: str | None = None, image: str | None = None,
                  output: str | None = None, outdir: str | None = None) -> None:
    """What ``explain`` and ``batch`` check before any work starts (no model is loaded; of a ``.npy`` scan only its
    header is read), so that a mistake is one message at once instead of a traceback after the methods ran.

    Parameters
    ----------
    device : str, optional
        ``--device``: a device torch knows and this computer has (:func:`check_device`).
    target : str, optional
        ``--target``: well formed, and its mask file exists (and holds numbers if it is a ``.npy``).
    image : str, optional
        ``explain --image``: exists; a ``.npy`` scan holds real numbers (:func:`check_npy`).
    output : str, optional
        ``explain -o``: a heatmap file name ending in ``.nii.gz``, ``.nii`` or ``.npy`` (not a folder).
    outdir : str, optional
        ``batch -o``: a folder (or a path where one can be made), not a file.
    """
    check_device(device)
    if target is not None and target.strip() not in ("", "auto"):
        t = _split_target(target.strip())
        if t.path is not None:
            if not os.path.isfile(t.path):
                raise TargetError(f"The mask {t.path} named by --target {target} does not exist (or is not a file).")
            if t.path.lower().endswith(".npy"):
                check_npy(t.path, what="mask")
    if image is not None:
        if not os.path.exists(image):
            raise ReaderError(f"The scan {image} does not exist.")
        if image.lower().endswith(".npy"):
            check_npy(image)
    if output is not None:
        if os.path.isdir(output):
            raise ParameterError(f"-o {output} is a folder; explain writes one heatmap file, e.g. -o "
                                 f"{os.path.join(output, 'heat.nii.gz')} (batch writes into a folder).")
        if not (output.lower().endswith((".nii.gz", ".nii")) or output.endswith(".npy")):
            stem = Path(output).name.split(".")[0] or "heat"
            raise ParameterError(f"-o {output}: a heatmap is written as NIfTI (.nii.gz or .nii, aligned with the "
                                 f"scan) or NumPy (.npy): e.g. -o {Path(output).with_name(stem + '.nii.gz')}.")
    if outdir is not None and os.path.exists(outdir) and not os.path.isdir(outdir):
        raise ParameterError(f"-o {outdir} is a file; batch writes one heatmap per scan into a folder: name a "
                             "folder.")


def parse_params(items: Sequence[str] | None) -> dict[str, Any]:
    """``["steps=32", "baseline=-1000", "window=[8,8,8]", "mode=taylor"]`` -> dict (values are JSON; a value that is
    not valid JSON is taken as a string)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ParameterError(f"--param takes key=value, got {item!r}.")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _read_scan(path: str) -> tuple[np.ndarray, Any, dict[str, Any]]:
    if path.endswith(".npy"):
        check_npy(path)  # a batch's scan is checked here (explain checks it before loading the model)
        return np.load(path), None, {}
    from .io import read_image

    return read_image(path)


def _outputs(out: str, methods: Sequence[str]) -> dict[str, Path]:
    p = Path(out)
    if len(methods) == 1:
        return {methods[0]: p}
    name = p.name
    for suffix in (".nii.gz", ".nii", ".npy"):
        if name.endswith(suffix):
            stem, ext = name[: -len(suffix)], suffix
            break
    else:
        stem, ext = name, ".nii.gz"
    return {m: p.with_name(f"{stem}_{m.replace(':', '-')}{ext}") for m in methods}


def _model_hash(source: str, model: Any = None) -> str | None:
    """The sha256 of the weights actually read: a loaded model's ``weights_sha256`` (the checkpoint a card names,
    never the card file; None for random weights); without a loaded model, the source file's hash."""
    if model is not None and hasattr(model, "card"):  # a LoadedModel knows which file its weights came from
        return None if getattr(model, "random_weights", False) else getattr(model, "weights_sha256", None)
    from ._provenance import file_sha256

    return file_sha256(source) if os.path.isfile(source) else None


@dataclass
class ExplainResult:
    """What one scan produced."""

    scan: str
    outputs: dict[str, str]
    seconds: dict[str, float]
    metrics: dict[str, dict[str, float | None]]  # None: the metric failed (an empty cell)
    description: str
    weights: str = ""  # "random weights", or the sha256 of the weights read (for the batch summary)
    #: per heatmap, the verdict of each metric that has one in the Explain dock (``runs.checks.verdict``, the same
    #: words; "failed: why" for a metric that failed)
    verdicts: dict[str, dict[str, str]] = field(default_factory=dict)
    #: per heatmap, :func:`_prediction_facts`: predicted volumes in mL, the energy inside the prediction and the
    #: prediction's share of the scan
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Plan:
    """The files one scan's run writes: a heatmap per key (``method``, or ``method@layer`` in a layer sweep), each
    with its JSON sidecar, and the metrics and layer tables when asked for."""

    keys: list[str]
    runs: list[tuple[str, str | None]]  # (method, layer) per key
    outs: dict[str, Path]
    tables: dict[str, Path | None]

    def files(self) -> list[Path]:
        return [*self.outs.values(), *(_sidecar(p) for p in self.outs.values()),
                *(p for p in self.tables.values() if p is not None)]


def _plan(output: str, methods: Sequence[str], layers: Sequence[str], metrics: Sequence[str]) -> _Plan:
    """Which files a run of ``methods`` (over ``layers``: several sweep them) writes for the output name ``output``."""
    sweep: list[str | None] = [*layers] or [None]  # the layers, or one run with the default layer
    runs = [(m, lay) for lay in sweep for m in methods]
    keys = [m if len(layers) <= 1 else f"{m}@{lay}" for m, lay in runs]
    outs = dict(zip(keys, _outputs(output, [k.replace("@", "_") for k in keys]).values(), strict=True))
    tables = {"metrics": Path(_strip(str(next(iter(outs.values())))) + "_metrics.csv") if metrics else None,
              "layers": Path(_strip(output) + "_layers.csv") if len(layers) > 1 else None}
    return _Plan(keys, runs, outs, tables)


def _request(method: str, layer: str | None, target: str | None, params: dict[str, Any] | None,
             metrics: Sequence[str]) -> dict[str, Any]:
    """What was asked for one heatmap, as its sidecar records it (``request``) and a batch's resume compares it: the
    method, the layer, the ``--target`` text (None for the default), the parameters as given and the metrics."""
    text = None if target is None or target.strip() in ("", "auto") else target.strip()
    record = {"method": method, "layer": layer, "target": text, "params": dict(params or {}), "metrics": list(metrics)}
    from .layers import json_safe

    return dict(json.loads(json.dumps(json_safe(record))))  # as it reads back from the sidecar


def _prediction_facts(res: Any, geometry: Any, card: Any) -> dict[str, Any]:
    """One map's facts for the batch summary: the predicted volume of each class in mL (from the label map and the
    scan's voxel spacing; None without a spacing, or for a 2D scan) and the share of the map's positive attribution
    inside the predicted foreground (every class but the background; a one-channel model's foreground), with the
    foreground's share of the scan's voxels as its reference (a map that ignores the prediction scores about that).
    Empty for a classification result."""
    from .targets import class_region

    labels = res.label_map
    channels = res.extras.get("output_channels") or getattr(card, "num_classes", None) or \
        len(getattr(card, "class_names", None) or ())
    if labels is None or not channels:
        return {}
    channels = int(channels)
    names = tuple(getattr(card, "class_names", None) or ())
    geo = res.geometry if res.geometry is not None else geometry
    spacing = getattr(geo, "spacing", None)
    voxel_ml = float(np.prod(spacing)) / 1000.0 if spacing is not None and len(spacing) == labels.ndim == 3 else None
    foreground = np.zeros(labels.shape, bool)
    volumes: dict[str, float | None] = {}
    for k in range(1, channels) if channels > 1 else (0,):
        region = np.asarray(class_region(labels, k, channels), bool)
        foreground |= region
        volumes[names[k] if k < len(names) else f"class{k}"] = (None if voxel_ml is None
                                                                else float(region.sum()) * voxel_ml)
    positive = np.clip(np.nan_to_num(np.asarray(res.data, np.float64), nan=0.0), 0.0, None)
    total = float(positive.sum())
    return {"volumes_ml": volumes,
            "energy_in_prediction": float(positive[foreground].sum()) / total if total > 0 else None,
            "prediction_share": float(foreground.mean())}


def explain_file(
    model_source: str,
    image_path: str,
    methods: Sequence[str],
    output: str,
    *,
    target: str | None = None,
    layer: str | Sequence[str] | None = None,
    params: dict[str, Any] | None = None,
    metrics: Sequence[str] = (),
    overwrite: bool = False,
    device: str | None = None,
    trust: bool = False,
    allow_modules: Sequence[str] = (),
    model_options: dict[str, Any] | None = None,
    model: Any = None,
    progress: Callable[[int, int, str], None] | None = None,
    caught: list[Any] | None = None,
) -> ExplainResult:
    """Explain one scan and write the heatmap(s), a JSON sidecar per heatmap and, with ``metrics``, a CSV.

    ``layer``: one dotted layer name, or several to sweep layer methods over them (seed 001's per-layer view): one
    heatmap per method and layer (keys ``method@layer``) and ``<output stem>_layers.csv`` with, per method and layer,
    the seconds, the share of positive attribution inside the target region (segmentation targets) and the peak.

    Each sidecar also records the ``request`` (method, layer, ``--target`` text, parameters as given, metrics: what a
    batch's resume compares) and a ``summary`` of the map (:func:`_prediction_facts`, the metrics and verdicts, and
    with ``caught`` — the caller's ``warnings.catch_warnings(record=True)`` list — this package's warnings so far).

    ``model_options``: ``load_model``'s ``fold`` / ``checkpoint`` / ``mirroring`` for an nnU-Net result folder."""
    import napari_attribution as na

    layers = [layer] if isinstance(layer, str) else list(layer or [])
    if len(layers) > 1:
        not_layer = [m for m in methods if not na.get_method(m).needs_layer]
        if not_layer:
            raise ParameterError(f"Several --layer values sweep layer methods; {', '.join(not_layer)} look(s) at no "
                                 "network layer: explain it in a separate run.")
    plan = _plan(output, methods, layers, metrics)
    keys, outs, tables = plan.keys, plan.outs, plan.tables
    # every file this run will write, sidecars included, is checked before any work
    existing = [str(p) for p in plan.files() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace.")
    loaded = model if model is not None else na.load_model(model_source, trust=trust, allow_modules=allow_modules,
                                                          **(model_options or {}))
    data, geometry, meta = _read_scan(image_path)
    from .inputs import layout

    spatial = layout(data.shape, model_and_card(loaded)[1]).spatial(data.shape)  # the input path's channel rule
    tgt = parse_target(target, tuple(spatial))
    results: dict[str, Any] = {}
    if len(layers) > 1:
        # a sweep: each method at every layer with na.explain_layers (one pass for the shared-pass methods); the
        # parameters are distributed as compare does
        for m, own in split_params(list(methods), params).items():
            got = na.explain_layers(loaded, data, m, layers, tgt, params=own, geometry=geometry, device=device,
                                    progress=progress)
            results.update({f"{m}@{lay}": r for lay, r in got.items()})
    else:
        # like compare: a key goes to every method that takes it; a key that none takes is an error
        results = na.compare(loaded, data, list(methods), tgt, layer=layers[0] if layers else None,
                             geometry=geometry, device=device, progress=progress, params=dict(params or {}))
    from .runs.checks import VERDICTS, verdict, verdicts_of_maps

    scores: dict[str, dict[str, float | None]] = {}
    verdicts: dict[str, dict[str, str]] = {}
    evaluated: dict[str, dict[str, Any]] = {}  # metric -> {heatmap: Score}
    for key, res in results.items():
        for metric in metrics:
            row = scores.setdefault(key, {})
            said = verdicts.setdefault(key, {})
            try:
                score = na.evaluate(loaded, data, res, metric, geometry=geometry, progress=_stage(progress, key))
            except Exception as err:  # noqa: BLE001 - one metric's failure must not throw the others away
                # an empty cell (None) in the CSV and the summary, and a message that says which and why
                why = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
                if not isinstance(err, na.AttributionError):
                    why = f"{type(err).__name__}: {why}"
                row[metric] = None
                if metric in ("deletion", "insertion"):
                    row[f"{metric}_random"] = None
                if metric in VERDICTS:  # as the dock's row of a check that failed
                    said[metric] = f"failed: {why}"
                warnings.warn(f"The metric {metric} failed for {key} on {os.path.basename(image_path)}: {why}. Its "
                              "cell is left empty; the other metrics are written.", UserWarning, stacklevel=1)
                continue
            row[metric] = score.value
            if "random_auc" in score.details:  # deletion / insertion: what a random voxel order scores
                row[f"{metric}_random"] = float(score.details["random_auc"])
            if metric in VERDICTS:  # the dock's verdict, from the same thresholds and words
                said[metric] = verdict(metric, float(score.value), score.details)
                evaluated.setdefault(metric, {})[key] = score
    for metric, of_maps in evaluated.items():  # "cannot tell maps apart" only where every map is within noise
        for key, text in verdicts_of_maps(metric, of_maps).items():
            verdicts[key][metric] = text
    columns = _with_verdicts(list(next(iter(scores.values()))) if scores else [], metrics)
    scan = os.path.basename(image_path)
    card = model_and_card(loaded)[1]
    facts = {key: _prediction_facts(res, geometry, card) for key, res in results.items()}
    from ._errors import own_warnings

    warned = None if caught is None else own_warnings(list(caught))
    extra = {key: {"request": _request(m, lay, target, params, metrics),
                   "summary": {**facts[key], "metrics": scores.get(key, {}), "verdicts": verdicts.get(key, {}),
                               **({} if warned is None else {"warnings": warned})}}
             for key, (m, lay) in zip(keys, plan.runs, strict=True)}
    # all of this run's files (heatmaps, sidecars, tables) land together or not at all: a full disk leaves none,
    # and a rerun is not refused because of a half-written run
    with AtomicFiles(overwrite=overwrite) as files:
        for key, res in results.items():
            _write_heatmap(files, outs[key], res, geometry, meta, model_source, image_path, device, model=loaded,
                           extra=extra[key])
        if tables["metrics"] is not None:
            files.add_text(tables["metrics"], _csv_text(
                [["scan", "method", *columns, "seconds"],
                 *([scan, key, *_cells({**scores[key], **_verdict_cells(verdicts.get(key, {}))}, columns),
                    f"{results[key].seconds:.4f}"] for key in keys)]))
        if tables["layers"] is not None:
            _write_layer_table(files, tables["layers"], scan, methods, layers, results, card)
    desc = next(iter(results.values())).description
    from ._provenance import weights_label

    return ExplainResult(image_path, {k: str(outs[k]) for k in keys}, {k: r.seconds for k, r in results.items()},
                         scores, desc, weights_label(loaded), verdicts, facts)


def _with_verdicts(columns: Sequence[str], metrics: Sequence[str]) -> list[str]:
    """The metrics CSV's columns: each metric that has a verdict (``runs.checks.VERDICTS``) gets
    ``<metric>_verdict`` right after its own columns (its value, and deletion's and insertion's random reference)."""
    from .runs.checks import VERDICTS

    out: list[str] = []
    for i, column in enumerate(columns):
        out.append(column)
        metric = column[: -len("_random")] if column.endswith("_random") else column
        last = i + 1 == len(columns) or columns[i + 1] != f"{metric}_random"
        if metric in metrics and metric in VERDICTS and last:
            out.append(f"{metric}_verdict")
    return out


def _verdict_cells(verdicts: dict[str, str]) -> dict[str, str]:
    """``{metric: verdict}`` as the CSV's ``{<metric>_verdict: verdict}`` cells."""
    return {f"{metric}_verdict": text for metric, text in verdicts.items()}


def _cells(row: dict[str, Any], columns: Sequence[str]) -> list[Any]:
    """``row``'s cells in ``columns`` order; a missing one (a failed metric's reference, a failed scan) is empty."""
    return [row.get(column, "") for column in columns]


def _stage(progress: Callable[[int, int, str], None] | None, name: str) -> Callable[[int, int, str], None] | None:
    """``progress`` with ``name`` (the method a metric scores) before each message; None stays None."""
    if progress is None:
        return None
    report = progress

    def staged(done: int, total: int, message: str) -> None:
        report(done, total, f"{name}: {message}")

    return staged


def _strip(path: str) -> str:
    for suffix in (".nii.gz", ".nii", ".npy"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _sidecar(path: Path) -> Path:
    """The JSON provenance file beside a heatmap: ``heat.nii.gz`` -> ``heat.json``."""
    return Path(_strip(str(path)) + ".json")


def _csv_text(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as CSV text, each cell escaped against spreadsheet formulas (``_atomic.csv_cell``)."""
    buf = io.StringIO()
    w = csv_writer(buf)
    for row in rows:
        w.writerow(row)
    return buf.getvalue()


def _write_heatmap(files: AtomicFiles, path: Path, res: Any, geometry: Any, meta: dict[str, Any], model_source: str,
                   image_path: str, device: str | None, model: Any = None,
                   extra: dict[str, Any] | None = None) -> None:
    """Add the heatmap (NIfTI aligned with the scan, or .npy) and its JSON provenance sidecar to ``files`` (one
    group: they land together or not at all): the method and its parameters, the sha256 of the weights actually
    read, whether they are random, the card in effect, and the scan's file name (never its folder) with the scan's
    sha256; ``extra``: more fields (explain_file's ``request`` and ``summary``)."""
    from ._provenance import model_fields, scan_fields
    from .io._nifti import nifti_writer
    from .layers import completeness_record, json_safe, provenance, used_settings

    digest = _model_hash(model_source, model)
    facts = {**model_fields(model), "weights_sha256": digest}
    record = provenance(method=res.method, params=res.params, target=res.description, seconds=res.seconds,
                        model=model_source, model_sha256=digest, layer=res.layer, device=device, signed=res.signed,
                        **facts, **scan_fields(image_path))
    completeness = completeness_record(res)  # integrated gradients: does the map add up? (per slice, slice-wise)
    if completeness is not None:
        record["completeness"] = completeness
    record["used"] = used_settings(res.extras)  # what the defaults became (occlusion's window, the input path)
    record.update(json_safe(dict(extra or {})))
    if str(path).endswith(".npy"):
        data = res.data
        files.add(path, lambda fh: np.save(fh, data))
    else:
        files.add(path, nifti_writer(path, res.data, geometry, original_affine=meta.get("original_affine")))
    files.add_text(_sidecar(path), json.dumps(record, indent=2))


def _write_layer_table(files: AtomicFiles, path: Path, scan: str, methods: Sequence[str], layers: Sequence[str],
                       results: dict[str, Any], card: Any = None) -> None:
    """Add to ``files``: per method and layer (shallow to deep as given): seconds, energy inside the target region,
    peak.

    The target region is the target class's region (``metrics.target_region``): for a one-channel model
    (``card`` with one class) the foreground, never the voxels labelled 0."""
    from .metrics import layer_sweep_table, target_region

    channels = getattr(card, "num_classes", None)
    names = getattr(card, "class_names", None)
    if channels is None and names:
        channels = len(names)
    rows: list[list[Any]] = [["scan", "method", "layer", "seconds", "energy_in_target_region", "peak"]]
    for m in methods:
        per_layer = {lay: results[f"{m}@{lay}"] for lay in layers}
        region = target_region(next(iter(per_layer.values())), channels=channels)
        for row in layer_sweep_table(per_layer, region):
            energy = "" if row["energy"] is None else f"{row['energy']:.6g}"
            rows.append([scan, m, row["layer"], f"{row['seconds']:.4f}", energy, f"{row['peak']:.6g}"])
    files.add_text(path, _csv_text(rows))


def expand_images(spec: str) -> list[str]:
    """A folder (its NIfTI/DICOM/.npy files and DICOM series subfolders), a glob, or a CSV/TXT list (first column,
    header optional)."""
    p = Path(spec)
    if p.is_dir():
        items = []
        for child in sorted(p.iterdir()):
            name = child.name.lower()
            if child.is_dir() or name.endswith((".nii", ".nii.gz", ".dcm", ".npy")):
                items.append(str(child))
        found = items
    elif p.suffix.lower() in (".csv", ".txt") and p.is_file():
        found = []
        with open(p, newline="") as fh:
            for row in csv.reader(fh):
                if row and row[0].strip() and row[0].strip().lower() not in ("image", "path", "scan"):
                    entry = row[0].strip()
                    found.append(entry if os.path.isabs(entry) else str(p.parent / entry))
    else:
        found = sorted(glob.glob(spec))
    if not found:
        raise ReaderError(f"No scans found for {spec!r} (a folder, a glob such as 'scans/*.nii.gz', or a CSV list).")
    return found


_SCAN_SUFFIXES = (".nii.gz", ".nii", ".npy", ".dcm")


def _stem(path: str) -> str:
    """The scan's file name without its scan extension (``ct.nii.gz`` -> ``ct``; a series folder: its name)."""
    name = Path(path).name
    for suffix in _SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _batch_outputs(scans: Sequence[str], outdir: Path) -> list[Path]:
    """One output heatmap name per scan, never shared: the scan's path below the scans' common folder, its
    extension swapped for ``.nii.gz`` (``siteA/ct.nii.gz`` and ``siteB/ct.nii.gz`` -> ``OUT/siteA/ct.nii.gz`` and
    ``OUT/siteB/ct.nii.gz``; scans in one folder -> ``OUT/<stem>.nii.gz``). Names that would still meet (``ct.nii``
    beside ``ct.nii.gz``, or ``CT`` beside ``ct`` on a case-blind disk) keep their extension in the name
    (``ct_nii``); a scan listed twice gets ``-2``."""
    full = [os.path.abspath(s) for s in scans]
    try:
        root = os.path.commonpath([os.path.dirname(f) for f in full])
    except ValueError:  # different drives (Windows): keep each path below its drive
        root = ""
    rel = [Path(os.path.relpath(f, root) if root else os.path.splitdrive(f)[1].lstrip("\\/")) for f in full]
    stems = [r.parent / _stem(str(r)) for r in rel]
    counts: dict[str, int] = {}
    for st in stems:
        counts[str(st).lower()] = counts.get(str(st).lower(), 0) + 1
    named: list[Path] = []
    taken: set[str] = set()
    for r, st in zip(rel, stems, strict=True):
        if counts[str(st).lower()] > 1 and r.name != st.name:  # keep the extension: ct.nii -> ct_nii
            st = r.parent / (st.name + "_" + r.name[len(st.name):].lstrip(".").replace(".", ""))
        name, i = st, 2
        while str(name).lower() in taken:  # the same scan twice (or a name made above that still meets)
            name, i = st.parent / f"{st.name}-{i}", i + 1
        taken.add(str(name).lower())
        named.append(outdir / f"{name}.nii.gz")
    return named


class _ModelPool:
    """The models loaded for one batch in one process. A scan borrows a model and gives it back, so a worker loads
    the model once (for the first scan it runs), not once per scan; two scans running at the same time in one
    process (a worker with several threads) never share a model (layer methods hook into it), each loads its own.
    A load that failed fails every scan with the same error, without trying again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[tuple[Any, ...], list[Any]] = {}
        self._said: dict[tuple[Any, ...], list[str]] = {}  # this package's warnings while loading
        self._failed: dict[tuple[Any, ...], Exception] = {}
        self.loads = 0

    @contextlib.contextmanager
    def borrow(self, key: tuple[Any, ...], load: Callable[[], Any]) -> Iterator[tuple[Any, bool, list[str]]]:
        """``(model, loaded, warnings)``: a free model of ``key``, or a new one from ``load()`` (``loaded``: this
        call loaded it); ``warnings``: what this package warned about while loading it (they concern every scan)."""
        with self._lock:
            if key in self._failed:
                raise self._failed[key]
            free = self._free.setdefault(key, [])
            model = free.pop() if free else None
        loaded = model is None
        if model is None:
            from ._errors import own_warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    model = load()
                except Exception as err:
                    with self._lock:
                        self._failed[key] = err
                    raise
            with self._lock:
                self.loads += 1
                self._said[key] = own_warnings(list(caught))
        try:
            yield model, loaded, list(self._said.get(key, []))
        finally:
            with self._lock:
                self._free[key].append(model)


# a Dask worker process's pools, by batch (the two latest: a shared cluster may serve two batches at once); the
# driver drops its batch's pool from a running cluster's workers when the batch is done
_POOLS: dict[str, _ModelPool] = {}
_POOLS_LOCK = threading.Lock()


def _process_pool(batch: str) -> _ModelPool:
    with _POOLS_LOCK:
        pool = _POOLS.get(batch)
        if pool is None:
            while len(_POOLS) >= 2:
                _POOLS.pop(next(iter(_POOLS)))
            pool = _POOLS[batch] = _ModelPool()
        return pool


def _drop_pool(batch: str) -> None:
    """Free a finished batch's models in this process (run on each worker of a running cluster)."""
    with _POOLS_LOCK:
        _POOLS.pop(batch, None)


def _model_key(source: str, trust: bool, allow_modules: Sequence[str],
               options: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """Which loaded model a scan can reuse: the source and how it may be loaded, with the size and modification time
    of the source's files (the file and the cards beside it, or a bundle folder's files), so that weights replaced
    during a batch are loaded again."""
    p = Path(source)
    stamp: list[tuple[str, int, int]] = []
    try:
        if p.is_file():
            files = [p, *(f for f in p.parent.iterdir() if f.suffix.lower() in (".json", ".yaml", ".yml"))]
        elif p.is_dir():
            files = [f for f in p.rglob("*") if f.is_file()]
        else:
            files = []
        for f in sorted(files):
            st = f.stat()
            stamp.append((str(f), st.st_size, st.st_mtime_ns))
    except OSError:  # unreadable: the load itself says why
        pass
    return (source, tuple(stamp), bool(trust), tuple(allow_modules), json.dumps(options or {}, sort_keys=True))


def _worker_name() -> str:
    """The Dask worker this runs on (its address), or this process."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"process {os.getpid()}"


def _json_norm(value: Any) -> Any:
    from .layers import json_safe

    return json.loads(json.dumps(json_safe(value)))


def _resume(job: dict[str, Any], model: Any) -> tuple[str, Any]:
    """What to do with a scan whose outputs may exist already: ``("run", None)`` when none of its files exist (or
    with ``overwrite``); ``("skip", {key: sidecar})`` when all exist and every sidecar records the same model
    (weights sha256 and card), the same scan (sha256) and the same request (method, layer, target, parameters,
    metrics); else ``("refuse", why)``, one sentence that names the file and what differs."""
    from ._provenance import model_fields, scan_sha256

    layer = job.get("layer")
    layers = [layer] if isinstance(layer, str) else list(layer or [])
    metrics = list(job.get("metrics") or ())
    plan = _plan(job["output"], job["methods"], layers, metrics)
    files = plan.files()
    present = [p for p in files if p.exists()]
    if not present or job.get("overwrite"):
        return "run", None
    missing = [p for p in files if not p.exists()]
    if missing:
        return "refuse", (f"{present[0]} exists but {missing[0]} does not (another run's options, or files "
                          "removed); pass --overwrite to run this scan again")
    digest = _model_hash(job["model_source"], model)
    card = _json_norm(model_fields(model)["card"])
    scan = scan_sha256(job["image_path"])
    sides: dict[str, dict[str, Any]] = {}
    for key, (m, lay) in zip(plan.keys, plan.runs, strict=True):
        path = _sidecar(plan.outs[key])
        try:
            side = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(side, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            return "refuse", f"{path} cannot be read ({err}); pass --overwrite to replace the scan's outputs"
        differs = []
        if side.get("model_sha256") != digest:
            differs.append(f"another model (weights sha256 {str(side.get('model_sha256'))[:12]} there, "
                           f"{str(digest)[:12]} now)")
        elif _json_norm(side.get("card")) != card:
            differs.append("another model card")
        if side.get("scan_sha256") != scan:
            differs.append("another version of the scan (its sha256 differs)")
        want, got = _request(m, lay, job.get("target"), job.get("params"), metrics), side.get("request")
        if not isinstance(got, dict):
            differs.append("parameters it does not record")
        elif got != want:
            differs.append("other parameters (" + "; ".join(
                f"{k}: {json.dumps(got.get(k))} there, {json.dumps(want[k])} now" for k in want
                if got.get(k) != want[k]) + ")")
        if differs:
            return "refuse", f"{plan.outs[key]} exists from {', '.join(differs)}; pass --overwrite to replace it"
        sides[key] = side
    return "skip", {key: (str(plan.outs[key]), side) for key, side in sides.items()}


def _skipped(sides: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A skipped scan's summary fields, read back from its sidecars (what the run that wrote them reported)."""
    summaries = {key: side.get("summary") or {} for key, (_, side) in sides.items()}
    first = next(iter(sides.values()))[1]
    return {"status": "skipped", "outputs": {key: path for key, (path, _) in sides.items()},
            "seconds": {key: float(side.get("seconds", float("nan"))) for key, (_, side) in sides.items()},
            "metrics": {key: dict(s.get("metrics") or {}) for key, s in summaries.items()},
            "verdicts": {key: dict(s.get("verdicts") or {}) for key, s in summaries.items()},
            "facts": {key: {k: s[k] for k in ("volumes_ml", "energy_in_prediction", "prediction_share") if k in s}
                      for key, s in summaries.items()},
            "target": str(first.get("target") or ""),
            "recorded_warnings": sorted({w for s in summaries.values() for w in s.get("warnings") or ()})}


def _one(args: dict[str, Any], threads: int | None = None, pool: _ModelPool | None = None) -> dict[str, Any]:
    """One scan of a batch, never raising: resume (skip the scan when its outputs exist from the same model and
    request, refuse it when they exist from another), else ``explain_file``. ``threads``: torch threads while it
    runs (a Dask worker: one, the cluster runs one worker per core). ``pool``: where the batch's models are kept
    (default: this process's pool of the job's ``batch``), so a worker loads the model once."""
    import napari_attribution as na

    from ._errors import own_warnings
    from ._provenance import weights_label

    job = dict(args)
    batch = str(job.pop("batch", ""))
    pool = pool if pool is not None else _process_pool(batch)
    key = _model_key(job["model_source"], bool(job.get("trust")), job.get("allow_modules") or (),
                     job.get("model_options"))

    def load() -> Any:
        return na.load_model(job["model_source"], trust=bool(job.get("trust")),
                             allow_modules=job.get("allow_modules") or (), **(job.get("model_options") or {}))

    before = None
    if threads is not None:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
    t0, loaded, said = time.perf_counter(), False, list[str]()
    out: dict[str, Any] = {"scan": args["image_path"], "outputs": {}, "seconds": {}, "metrics": {}, "target": ""}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with pool.borrow(key, load) as (model, loaded, said):
                    action, detail = _resume(job, model)
                    if action == "skip":
                        out.update(_skipped(detail), weights=weights_label(model))
                    elif action == "refuse":
                        out["status"] = f"refused: {detail}"
                    else:
                        res = explain_file(**job, model=model, caught=caught)
                        out.update(status="ok", outputs=res.outputs, seconds=res.seconds, metrics=res.metrics,
                                   target=res.description, weights=res.weights, verdicts=res.verdicts,
                                   facts=res.facts)
            except Exception as err:  # one scan's failure must not stop the cohort; it is reported in the summary
                out["status"] = f"error: {type(err).__name__}: {err}"
    finally:
        if before is not None:
            import torch

            torch.set_num_threads(before)
    # what the library warned about for this scan (an incomplete integrated-gradients map, a scan read with a
    # caveat; for a skipped scan, what its sidecars recorded), and while loading the model, goes into the summary
    told = set(said) | set(out.pop("recorded_warnings", ())) | set(own_warnings(list(caught)))
    return {**out, "warnings": " | ".join(sorted(told)), "wall": time.perf_counter() - t0,
            "worker": _worker_name(), "loaded": loaded}


def _fmt(value: Any) -> str:
    """A summary number (6 significant digits), or an empty cell for None."""
    return "" if value is None else f"{float(value):.6g}"


def run_batch(
    model_source: str,
    images: str,
    methods: Sequence[str],
    outdir: str,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    local: bool = False,
    log: Callable[[str], None] = print,
    scan_progress: Callable[[int, int, str], None] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Explain every scan of ``images`` into ``outdir`` (one file per scan and method) and write
    ``outdir/summary.csv``. ``scheduler``: a Dask scheduler address; default: a local Dask cluster with
    ``workers`` single-threaded processes; ``local=True``: in this process, one scan after the other (with torch's
    own thread count). Each worker loads the model once (the first scan it runs), and so does ``local=True``. A
    scan's warnings are told apart by catching them in its process: run one thread per worker.

    Resume: a scan whose heatmaps and sidecars exist from the same model (weights sha256, card), the same scan and
    the same request (methods, layers, target, parameters, metrics) is skipped (status ``skipped``, its row read
    back from the sidecars); outputs that exist from anything else are refused (status ``refused: why``) unless
    ``overwrite=True``, and the other scans go on. ``summary.csv`` is the batch's report and is replaced each run.

    ``log`` gets a line per finished scan with the batch's elapsed time and an ETA (from the scans done so far);
    ``scan_progress`` (``local=True`` only: Dask workers run elsewhere) gets each scan's own
    ``progress(done, total, message)``, the message led by ``[i/n] scan``."""
    scans = expand_images(images)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.csv"
    if summary.exists() and not kwargs.get("overwrite"):
        # the summary is written again whole by each run: a rerun's summary covers the same scans (those skipped
        # read back from their sidecars), but one that reports other scans would lose their rows
        others = sorted(_summary_scans(summary) - set(scans))
        if others:
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            raise FileExistsError(f"{summary} reports other scans than this batch's ({others[0]}{more}), and a batch "
                                  "writes its summary whole: choose another output folder, or move that summary "
                                  "away (--overwrite would replace it, and every existing heatmap too).")
    batch = uuid.uuid4().hex
    # one output name per scan, kept below the scans' common folder: two scans called ct.nii.gz in different
    # folders never share (or overwrite) one heatmap; the summary's output column says where each went
    jobs = [dict(model_source=model_source, image_path=s, methods=list(methods), output=str(o), batch=batch, **kwargs)
            for s, o in zip(scans, _batch_outputs(scans, out), strict=True)]
    log(f"batch: {len(jobs)} scans x {len(methods)} method(s)")
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def finished(res: dict[str, Any]) -> None:
        results.append(res)
        done, elapsed = len(results), time.monotonic() - t0
        when = f"{format_duration(elapsed)} elapsed"
        if done < len(jobs):  # at the rate of the scans done so far (with Dask: as many at once as there are workers)
            when += f", about {format_duration(elapsed * (len(jobs) - done) / done)} left"
        log(f"[{done}/{len(jobs)}] {res['scan']}: {res['status']} ({when})")

    if local:
        pool = _ModelPool()
        for i, job in enumerate(jobs):
            if scan_progress is not None:
                job = {**job, "progress": _stage(scan_progress, f"[{i + 1}/{len(jobs)}] {_stem(job['image_path'])}")}
            finished(_one(job, pool=pool))
    else:
        try:
            from dask.distributed import Client, LocalCluster, as_completed
        except ImportError as err:  # a dependency: only a broken installation gets here
            raise ParameterError(f"Dask's distributed, a dependency of napari-attribution, cannot be imported here "
                                 f"({err}): reinstall napari-attribution, or run with --local.") from err
        cluster = None
        if scheduler is None:
            n = workers or max(1, os.cpu_count() or 2)
            cluster = LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)  # type: ignore[no-untyped-call]
        else:
            client = Client(scheduler)  # type: ignore[no-untyped-call]
        try:
            futures = [client.submit(_one, job, 1, pure=False) for job in jobs]
            for fut in as_completed(futures):  # type: ignore[no-untyped-call]
                finished(fut.result())
            if cluster is None:  # a running cluster's workers free this batch's models
                with contextlib.suppress(Exception):
                    client.run(_drop_pool, batch)
        finally:
            client.close()  # type: ignore[no-untyped-call]
            if cluster is not None:
                cluster.close()
    results.sort(key=lambda r: r["scan"])
    loads: dict[str, int] = {}
    for r in results:
        loads[r["worker"]] = loads.get(r["worker"], 0) + int(r["loaded"])
    log(f"model loaded {sum(loads.values())} time(s) for {len(results)} scans on {len(loads)} worker(s)")
    text = _csv_text(_summary_rows(results, methods))
    replaced = summary.exists()
    atomic_write(summary, lambda fh: fh.write(text.encode("utf-8")), overwrite=True)
    counts = {word: sum(1 for r in results if r["status"].split(":")[0] == word)
              for word in ("ok", "skipped", "refused", "error")}
    log(f"wrote {summary}{' (replacing the previous summary)' if replaced else ''} ({counts['ok']} ok, "
        f"{counts['skipped']} skipped, {counts['refused']} refused, {counts['error']} failed)")
    if counts["refused"]:
        log("refused scans have outputs from another model, scan or parameters: pass --overwrite to replace them, "
            "or write into another folder")
    if any(r.get("weights") == "random weights" for r in results):
        log('random weights: the card asks for an untrained network ("weights": "random"); the maps explain no '
            "training")
    return results


def _summary_scans(path: Path) -> set[str]:
    """The scans an existing summary.csv reports (its ``scan`` cells, unescaped); a file that cannot be read as one
    reports a scan of its own name, so it is never replaced unasked."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            cells = [row["scan"] for row in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, KeyError, csv.Error):
        return {f"{path} (not a summary this command wrote)"}
    # a cell that a spreadsheet would run as a formula was written with a leading ' (_atomic.csv_cell)
    return {c[1:] if c[:1] == "'" and c[1:2] in ("=", "+", "-", "@", "\t", "\r") else c for c in cells}


def _summary_rows(results: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[list[Any]]:
    """summary.csv: a row per scan and heatmap with the status, output, seconds, target, the predicted volume of each
    class in mL, the map's share of positive attribution inside the predicted foreground and the foreground's share
    of the scan (its reference), each metric with its verdict, the warnings and the weights."""
    # each metric's columns side by side (sorted: deletion, deletion_random, deletion_verdict, insertion, ...), the
    # verdicts the Explain dock shows for the same scores
    metric_names = sorted({k for r in results for m in r["metrics"].values() for k in m}
                          | {k for r in results for v in (r.get("verdicts") or {}).values() for k in _verdict_cells(v)})
    classes: list[str] = []  # in the model's class order
    for r in results:
        for facts in (r.get("facts") or {}).values():
            classes += [c for c in facts.get("volumes_ml", {}) if c not in classes]
    rows: list[list[Any]] = [["scan", "status", "method", "output", "seconds", "target",
                              *(f"volume_ml_{c}" for c in classes), "energy_in_prediction", "prediction_share",
                              *metric_names, "warnings", "weights"]]
    for r in results:
        for m in r["outputs"] or methods:  # method (or method@layer in a layer sweep); methods if it failed
            facts = (r.get("facts") or {}).get(m, {})
            volumes = facts.get("volumes_ml", {})
            rows.append([r["scan"], r["status"], m, r["outputs"].get(m, ""),
                         f"{r['seconds'].get(m, float('nan')):.4f}", r["target"],
                         *(_fmt(volumes.get(c)) for c in classes), _fmt(facts.get("energy_in_prediction")),
                         _fmt(facts.get("prediction_share")),
                         *_cells({**r["metrics"].get(m, {}), **_verdict_cells((r.get("verdicts") or {}).get(m, {}))},
                                 metric_names), r.get("warnings", ""),
                         r.get("weights", "")])
    return rows
