"""The relevant-features file of VEBI (Oramas, Wang & Tuytelaars, ICLR 2019; methods.md §A5): which internal
features of a trained model are relevant to each class, as
:func:`napari_attribution.interpretation.fit_relevant_features` learns them and the ``vebi`` method reads them,
and their ``.npz`` format (``napari-attribution/vebi-features/1``), saved next to the model
(``model.pt -> model.vebi.npz``) and never replaced silently.

It lives under ``methods/`` because the ``vebi`` method reads it at test time; the interpretation package (which
fits the features, above the pipeline) re-exports every name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import AttributionError, ParameterError, ReaderError

__all__ = [
    "Feature",
    "FeaturesExistError",
    "RelevantFeatures",
    "features_file",
    "features_path_for",
    "save_features_beside",
]

FloatArray = npt.NDArray[np.float64]

_FORMAT = "napari-attribution/vebi-features/1"


class FeaturesExistError(AttributionError, FileExistsError):
    """A relevant-features file already exists and ``overwrite=True`` was not given."""


# ------------------------------------------------------------------------------------------------
# the result type


@dataclass(frozen=True)
class Feature:
    """One internal feature: channel ``channel`` of layer ``layer``; ``index`` is its row in ``W``; ``weight`` its
    lasso weight for the class it was looked up for."""

    index: int
    layer: str
    channel: int
    weight: float


@dataclass
class RelevantFeatures:
    """The relevant internal features of each class (the interpretation stage's output).

    Attributes
    ----------
    layers : tuple of str
        Dotted module names of the feature layers, in forward order.
    layer_channels : tuple of int
        Channels of each layer; the features are all channels of all layers, ``m = sum(layer_channels)``.
    W : ndarray, ``(m, C)``
        The mu-lasso weights; feature ``j`` is relevant to class ``c`` when ``W[j, c] != 0``.
    class_names : tuple of str
        One name per column of ``W``.
    mu : float
        The L1 bound of each column.
    info : dict
        How the features were fitted (number of images, task, solver statistics, normalisation).

    Notes
    -----
    ``feature_layer[j]`` and ``feature_channel[j]`` say which channel row ``j`` of ``W`` is.
    """

    layers: tuple[str, ...]
    layer_channels: tuple[int, ...]
    W: FloatArray
    class_names: tuple[str, ...]
    mu: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = tuple(str(n) for n in self.layers)
        self.layer_channels = tuple(int(k) for k in self.layer_channels)
        self.W = np.asarray(self.W, dtype=np.float64)
        if self.W.ndim == 1:
            self.W = self.W[:, None]
        self.class_names = tuple(str(n) for n in self.class_names)
        self.mu = float(self.mu)
        if len(self.layers) != len(self.layer_channels):
            raise ParameterError("RelevantFeatures needs one channel count per layer.")
        if self.W.ndim != 2 or self.W.shape[0] != sum(self.layer_channels):
            raise ParameterError(
                f"W must have one row per feature ({sum(self.layer_channels)} = the layers' channels), "
                f"got shape {self.W.shape}."
            )
        if len(self.class_names) != self.W.shape[1]:
            raise ParameterError(f"W has {self.W.shape[1]} columns but {len(self.class_names)} class names.")

    def __repr__(self) -> str:  # W can be large: summarise
        per_class = [int(np.count_nonzero(self.W[:, k])) for k in range(self.W.shape[1])]
        return (f"RelevantFeatures({len(self.layers)} layers, {self.n_features} features, classes "
                f"{list(self.class_names)}, mu={self.mu:g}, relevant per class {per_class})")

    # ---- which feature is which ------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        """``m``, the number of features (rows of ``W``)."""
        return int(self.W.shape[0])

    @property
    def feature_layer(self) -> npt.NDArray[np.str_]:
        """``(m,)`` the layer name of each feature."""
        return np.repeat(np.asarray(self.layers, dtype=str), self.layer_channels)

    @property
    def feature_channel(self) -> npt.NDArray[np.int64]:
        """``(m,)`` the channel index (within its layer) of each feature."""
        if not self.layer_channels:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(k, dtype=np.int64) for k in self.layer_channels])

    def class_index(self, c: int | str) -> int:
        """The column of class ``c`` (an index or a class name)."""
        if isinstance(c, str):
            if c not in self.class_names:
                raise ParameterError(f"Unknown class {c!r}; the classes are {', '.join(self.class_names)}.")
            return self.class_names.index(c)
        k = int(c)
        if not 0 <= k < self.W.shape[1]:
            raise ParameterError(f"Class {k} does not exist: the features were fitted for {self.W.shape[1]} classes.")
        return k

    def relevant(self, c: int | str) -> npt.NDArray[np.int64]:
        """Indices ``j`` of the relevant features of class ``c`` (``W[j, c] != 0``), in row order."""
        return np.flatnonzero(self.W[:, self.class_index(c)]).astype(np.int64)

    def for_class(self, c: int | str, n: int | None = None, *, positive: bool = True) -> list[Feature]:
        """The top ``n`` relevant features of class ``c`` (all when ``n`` is None), by decreasing weight.

        With ``positive=True`` (default) only features with ``W[j, c] > 0`` (evidence for the class) are listed;
        otherwise every non-zero weight, by decreasing ``|W[j, c]|``.
        """
        k = self.class_index(c)
        w = self.W[:, k]
        idx = np.flatnonzero(w > 0) if positive else np.flatnonzero(w)
        key = -w[idx] if positive else -np.abs(w[idx])
        idx = idx[np.argsort(key, kind="stable")]
        if n is not None:
            idx = idx[: max(0, int(n))]
        names, chans = self.feature_layer, self.feature_channel
        return [Feature(int(j), str(names[j]), int(chans[j]), float(w[j])) for j in idx]

    # ---- files -------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the features to an ``.npz`` file and return its path.

        ``path`` ending in ``.npz`` is used as it is; any other path is taken as the model file and the features
        go next to it, ``model.pt -> model.vebi.npz`` (:func:`features_path_for`). An existing file is never
        replaced silently: :class:`FeaturesExistError` unless ``overwrite=True``.
        """
        target = features_file(path)
        arrays: dict[str, Any] = {
            "format": np.asarray(_FORMAT),
            "layers": np.asarray(self.layers, dtype=str),
            "layer_channels": np.asarray(self.layer_channels, dtype=np.int64),
            "W": self.W,
            "class_names": np.asarray(self.class_names, dtype=str),
            "mu": np.asarray(self.mu, dtype=np.float64),
            "info": np.asarray(json.dumps(_jsonable(self.info))),
        }
        if not overwrite:
            try:
                with open(target, "xb") as fh:  # exclusive creation: no race with another writer
                    np.savez(fh, **arrays)
            except FileExistsError:
                raise FeaturesExistError(
                    f"'{target}' already exists; it was kept. Pass overwrite=True to replace it, or choose "
                    "another file name."
                ) from None
            return target
        fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RelevantFeatures:
        """Read features written by :meth:`save` (``path``: the ``.npz`` file, or the model file beside it)."""
        target = features_file(path)
        if not target.is_file():
            raise ReaderError(
                f"No relevant-features file at '{target}'. Fit them with "
                "napari_attribution.interpretation.fit_relevant_features(model, images, labels) and save them "
                "with .save(path)."
            )
        try:
            with np.load(target, allow_pickle=False) as z:
                fmt = str(z["format"]) if "format" in z else ""
                if fmt != _FORMAT:
                    raise ReaderError(f"'{target}' is not a relevant-features file (format {fmt or 'unknown'!r}).")
                return cls(
                    layers=tuple(str(s) for s in z["layers"]),
                    layer_channels=tuple(int(k) for k in z["layer_channels"]),
                    W=np.asarray(z["W"], dtype=np.float64),
                    class_names=tuple(str(s) for s in z["class_names"]),
                    mu=float(z["mu"]),
                    info=json.loads(str(z["info"])),
                )
        except (OSError, ValueError, KeyError) as err:
            raise ReaderError(f"Cannot read relevant features from '{target}': {err}") from err


def features_path_for(model_path: str | os.PathLike[str]) -> Path:
    """Where a model's relevant features live: ``model.pt -> model.vebi.npz``, ``model.card.json ->
    model.vebi.npz`` (same folder)."""
    p = Path(model_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    if stem.endswith(".card"):
        stem = stem[: -len(".card")]
    return p.with_name(f"{stem}.vebi.npz")


def features_file(path: str | os.PathLike[str]) -> Path:
    """The features file for ``path``: itself when it ends in ``.npz``, else :func:`features_path_for`."""
    p = Path(path)
    return p if p.name.endswith(".npz") else features_path_for(p)


def save_features_beside(features: RelevantFeatures, path: str | os.PathLike[str]) -> Path:
    """Save ``features`` at :func:`features_file` ``(path)`` — next to the model when ``path`` is the model file —
    without ever replacing a file: when that name is taken, the first free ``<stem>.vebi-2.npz``, ``-3``, … is
    used. Returns the path written (differs from ``features_file(path)`` when the name was taken). The folder is
    created if needed; a failed write leaves no partial file.

    Examples
    --------
    >>> first = save_features_beside(feats, "model.pt")        # doctest: +SKIP
    >>> first.name, save_features_beside(feats, "model.pt").name  # doctest: +SKIP
    ('model.vebi.npz', 'model.vebi-2.npz')
    """
    first = features_file(path)
    first.parent.mkdir(parents=True, exist_ok=True)
    stem = first.name[: -len(".npz")]
    for i in range(1, 1000):
        target = first if i == 1 else first.with_name(f"{stem}-{i}.npz")
        existed = target.exists()
        try:
            return features.save(target)
        except FeaturesExistError:
            continue
        except BaseException:
            if not existed and target.exists():  # save() created it exclusively: a partial file of ours
                target.unlink()
            raise
    raise FeaturesExistError(f"'{first}' and 998 numbered variants exist; choose another folder.")



def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
