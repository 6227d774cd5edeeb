"""Data and labels for the interpretation stage: a data set (arrays, ``(image, label)`` pairs, demo phantoms, a
folder of NIfTI / DICOM scans) turned into batches of model inputs on the model's grid (the card's preprocessing,
as ``explain`` applies it), and labels (given, from a CSV file, or the model's own predictions) turned into the
rows of the label matrix ``L``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from .._errors import Cancelled, InputShapeError, ParameterError, ReaderError
from ..inputs import layout, prepare
from ..models._card import ModelCard
from ..targets import predicted_labels
from ._solver import Cancel, FloatArray

__all__ = [
    "NO_LABEL",
    "DemoCases",
    "Item",
    "demo_cases",
    "image_batches",
    "iter_items",
    "label_row",
    "labels_for",
    "read_labels_csv",
]

_SCAN_SUFFIXES = (".nii", ".nii.gz", ".dcm")


@dataclass
class Item:
    array: npt.NDArray[Any]
    label: Any
    geometry: Any
    name: str


NO_LABEL = object()


def _scan_paths(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or p.name.lower().endswith(_SCAN_SUFFIXES):
            out.append(p)
    if not out:
        raise ReaderError(
            f"No scans in '{folder}': expected NIfTI (.nii, .nii.gz) or DICOM (.dcm) files, or one sub-folder per "
            "DICOM series."
        )
    return out


def iter_items(images: Any) -> Iterator[Item]:
    """Yield the data set's images with their labels (when the items carry them)."""
    if isinstance(images, (str, os.PathLike)):
        from ..io import read_image

        path = Path(images)
        for p in _scan_paths(path) if path.is_dir() else [path]:
            data, geometry, _meta = read_image(p)
            yield Item(np.asarray(data), NO_LABEL, geometry, p.name)
        return
    if callable(images):
        yield from iter_items(images())
        return
    for i, item in enumerate(images):
        if isinstance(item, tuple) and len(item) == 2:
            yield Item(np.asarray(item[0]), item[1], None, str(i))
        elif isinstance(item, tuple) and len(item) == 3 and isinstance(item[2], Mapping):  # read_image() output
            yield Item(np.asarray(item[0]), NO_LABEL, item[1], str(i))
        elif hasattr(item, "image") and not isinstance(item, np.ndarray):  # a demo Phantom or similar
            label = getattr(item, "label", None)
            if label is None:
                label = getattr(item, "mask", None)
            yield Item(np.asarray(item.image), NO_LABEL if label is None else label, None, str(i))
        else:
            yield Item(np.asarray(item), NO_LABEL, None, str(i))


def _model_input(item: Item, card: ModelCard) -> npt.NDArray[np.float32]:
    """``(C, *S)`` float32 on the model's grid (the card's preprocessing applied, as ``explain`` does)."""
    arr = np.asarray(item.array, dtype=np.float32)
    try:
        lay = layout(arr.shape, card)  # the one channel rule (napari_attribution.inputs)
    except InputShapeError as err:
        raise InputShapeError(f"Image {item.name}: {err}") from None
    if lay.slicewise:
        raise InputShapeError(f"Image {item.name} has shape {arr.shape}; for a 2D model, give 2D slices.")
    has_c = lay.channel_axis
    if not np.isfinite(arr).all():
        raise InputShapeError(f"Image {item.name} contains NaN or infinite values.")
    prep = prepare(arr, item.geometry, card, channel_axis=has_c)
    data = prep.data if prep.channel_axis else prep.data[None]
    return np.ascontiguousarray(data, dtype=np.float32)


def image_batches(
    images: Any, card: ModelCard, batch_size: int, cancel: Cancel | None
) -> Iterator[tuple[npt.NDArray[np.float32], list[Item], list[int]]]:
    """Consecutive images of equal shape, ``batch_size`` at a time: ``(B, C, *S)``, the items and their indices."""
    xs: list[npt.NDArray[np.float32]] = []
    items: list[Item] = []
    idx: list[int] = []
    for i, item in enumerate(iter_items(images)):
        if cancel is not None and cancel():
            raise Cancelled("Cancelled; nothing was produced.")
        x = _model_input(item, card)
        if xs and (x.shape != xs[0].shape or len(xs) >= batch_size):
            yield np.stack(xs), items, idx
            xs, items, idx = [], [], []
        xs.append(x)
        items.append(item)
        idx.append(i)
    if xs:
        yield np.stack(xs), items, idx


def read_labels_csv(path: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> dict[str, int]:
    """Image-level class labels of a folder of scans from a CSV file: one line per scan, ``file,label``, where
    ``file`` is the scan's file name (or its name without extension; a DICOM series: its folder's name) and
    ``label`` a class index or one of ``class_names``. A first line that is not a label (``file,label``) is read
    as a header. The mapping is what :func:`fit_relevant_features` takes as ``labels``.

    Raises
    ------
    ReaderError
        The file cannot be read, or a line has no valid label (the message names the line).
    """
    import csv

    names = [str(n) for n in class_names] if class_names else []

    def label_of(text: str) -> int | None:
        text = text.strip()
        if text in names:
            return names.index(text)
        try:
            return int(text)
        except ValueError:
            return None

    out: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ReaderError(f"Cannot read the labels file '{path}': {err}") from err
    for i, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise ReaderError(f"{path}, line {i}: expected 'file,label', got {','.join(row)!r}.")
        k = label_of(row[1])
        if k is None:
            if i == 1:
                continue  # a header
            choices = f" or one of {', '.join(names)}" if names else ""
            raise ReaderError(f"{path}, line {i}: the label {row[1].strip()!r} is not a class index{choices}.")
        out[row[0].strip()] = k
    if not out:
        raise ReaderError(f"The labels file '{path}' has no 'file,label' line.")
    return out


class DemoCases(Sequence[Any]):
    """``n`` cases of a bundled demo model's task, generated one at a time (``DemoSpec.generator(seed + i)``):
    each a ``Phantom`` with ``.image`` and ``.label`` (classification) or ``.mask`` (segmentation), as
    :func:`fit_relevant_features` takes them."""

    def __init__(self, model: str, n: int, seed: int = 500_000) -> None:
        from ..models.demo import spec_for

        self.spec = spec_for(model)
        self.n = int(n)
        self.seed = int(seed)
        if self.n < 1:
            raise ParameterError("Generate at least one demo case.")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        j = int(i)
        if j < 0:
            j += self.n
        if not 0 <= j < self.n:
            raise IndexError(i)
        return self.spec.generator(self.seed + j)

    def __repr__(self) -> str:
        return f"DemoCases(demo:{self.spec.name}, n={self.n}, seed={self.seed})"


def demo_cases(model: str, n: int, *, seed: int = 500_000) -> DemoCases:
    """A data set of ``n`` generated cases for the demo model ``model`` (``"demo:lesion3d"`` or ``"lesion3d"``),
    with their labels (classification) or ground truth (segmentation), to fit relevant features on:
    ``fit_relevant_features(na.load_model("demo:lesion3d"), demo_cases("demo:lesion3d", 40))``. Case ``i`` is
    generated from the integer seed ``seed + i`` (the demo weights were trained on the streams of
    ``numpy.random.default_rng(0)``, so these cases are new to the model)."""
    return DemoCases(model, n, seed)


def label_row(label: Any, task: str, out: Tensor, card: ModelCard, n_classes: int, name: str) -> FloatArray:
    """One row of ``L`` ``(C,)``; ``label`` is ``NO_LABEL`` to use the model's own prediction ``out`` ``(K, ...)``."""
    row = np.zeros(n_classes)
    if task == "classification":
        if label is NO_LABEL:
            if n_classes == 1:
                thr = 0.5 if card.output == "probabilities" else 0.0
                row[0] = float(out.reshape(-1)[0] > thr)
            else:
                row[int(out.argmax())] = 1.0
            return row
        arr = np.asarray(label)
        if arr.ndim == 0:
            k = int(arr)
            if n_classes == 1:
                if k not in (0, 1):
                    raise ParameterError(f"Image {name}: a one-output model takes labels 0 or 1, got {k}.")
                row[0] = float(k)
            elif not 0 <= k < n_classes:
                raise ParameterError(f"Image {name}: label {k} is not one of the model's {n_classes} classes.")
            else:
                row[k] = 1.0
            return row
        if arr.shape == (n_classes,):
            return arr.astype(np.float64)
        raise ParameterError(f"Image {name}: a classification label is a class index or a vector of {n_classes}.")
    # segmentation: image-level "contains class c" [our choice, methods.md §A5]
    if label is NO_LABEL:
        labels = predicted_labels(out.detach().float().cpu(), card.output)
        if n_classes == 1:
            row[0] = float(bool((labels == 1).any()))
        else:
            present = torch.unique(labels).numpy()
            row[present[(present >= 0) & (present < n_classes)]] = 1.0
        return row
    if isinstance(label, (set, frozenset)):
        for k in label:
            if not 0 <= int(k) < n_classes:
                raise ParameterError(f"Image {name}: class {k} is not one of the model's {n_classes} classes.")
            row[int(k)] = 1.0
        return row
    arr = np.asarray(label)
    if arr.ndim == 0:
        row[int(arr)] = 1.0
        return row
    if arr.ndim == 1 and arr.shape[0] == n_classes and arr.ndim < out.ndim - 1:
        return np.asarray(arr != 0, dtype=np.float64)
    # a label mask: integer class map (or boolean foreground)
    if arr.dtype == bool:
        if n_classes == 1:
            row[0] = float(arr.any())
        else:
            row[0], row[1] = float((~arr).any()), float(arr.any())
        return row
    if n_classes == 1:
        row[0] = float((arr != 0).any())
        return row
    present = np.unique(arr.astype(np.int64))
    row[present[(present >= 0) & (present < n_classes)]] = 1.0
    return row


def labels_for(labels: Any, items: list[Item], indices: list[int]) -> list[Any]:
    if labels is None:
        return [it.label for it in items]
    if isinstance(labels, Mapping):
        out = []
        for it in items:
            stem = it.name.split(".")[0]
            for key in (it.name, stem):
                if key in labels:
                    out.append(labels[key])
                    break
            else:
                raise ParameterError(f"No label for image {it.name!r} in the labels mapping.")
        return out
    out = []
    for i in indices:
        try:
            out.append(labels[i])
        except (IndexError, KeyError):
            raise ParameterError(f"There are more images than labels (no label for image {i}).") from None
    return out
