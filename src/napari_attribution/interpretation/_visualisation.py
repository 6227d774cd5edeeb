"""Average visualisations of relevant features (methods.md §A5.1 step 3): per feature, the mean of its test-time
heatmap over the images it responds to most strongly, and the mean of the image under the thresholded heatmap."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import ParameterError
from ..methods._features import backproject_features, model_responses, normalise_maps
from ..methods._features_file import Feature, RelevantFeatures
from ..methods._hooks import model_guard
from ..models._card import LoadedModel
from ..pipeline import model_and_card, model_device
from ._data import image_batches
from ._solver import Cancel, FloatArray, Progress

__all__ = ["FeatureVisualisation", "average_visualisations"]


@dataclass
class FeatureVisualisation:
    """The average visualisation of one relevant feature (methods.md §A5.1 step 3).

    Attributes
    ----------
    feature : Feature
        Which channel of which layer (``weight``: its largest lasso weight over the classes).
    classes : dict
        ``{class name: W[j, c]}`` for every class the feature is relevant to.
    heatmap : ndarray ``(*S)``
        Mean over the top images of the feature's min-max normalised heatmap (so in [0, 1]).
    masked_image : ndarray ``(C, *S)`` or None
        Mean over the top images of the model input under the thresholded heatmap (``H >= threshold``).
    images : list of int
        Indices (in the order the images were given) of the images it responds to most strongly.
    responses : list of float
        Their responses ``v_j``.
    """

    feature: Feature
    classes: dict[str, float]
    heatmap: npt.NDArray[np.float32]
    masked_image: npt.NDArray[np.float32] | None
    images: list[int]
    responses: list[float]


def _reiterable(images: Any) -> Any:
    if isinstance(images, (str, os.PathLike, list, tuple, np.ndarray)) or callable(images):
        return images
    if isinstance(images, Iterable):
        return list(images)  # a one-shot iterator is read twice: keep it
    return images


def average_visualisations(
    model: nn.Module | LoadedModel,
    features: RelevantFeatures,
    images: Any,
    top: int = 9,
    *,
    feature_ids: Sequence[int] | None = None,
    n_per_class: int = 3,
    threshold: float = 0.5,
    stride_fix: bool = True,
    batch_size: int = 8,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> list[FeatureVisualisation]:
    """Average each relevant feature's visualisation over the ``top`` images it responds to most.

    Parameters
    ----------
    model, images
        As for :func:`fit_relevant_features` (a one-shot iterator is kept in memory: it is read twice).
    features : RelevantFeatures
        From :func:`fit_relevant_features`.
    top : int
        Images per feature (9 as in Zeiler & Fergus; N_top is not given by the paper).
    feature_ids : list of int, optional
        Rows of ``W`` to visualise; default the top ``n_per_class`` features of every class
        (:meth:`RelevantFeatures.for_class`).
    threshold : float
        Where the normalised heatmap counts as "under the feature" for ``masked_image``.
    stride_fix : bool
        Oramas et al.'s fix for strided convolutions in the backward pass (default on, as in ``vebi``).

    Returns
    -------
    list of FeatureVisualisation
        One per feature, in the order of ``feature_ids``. Heatmaps of images of other shapes than the first of
        a feature's top images are resampled (linearly) to that shape before averaging.
    """
    module, card = model_and_card(model)
    if feature_ids is None:
        ids = list(dict.fromkeys(f.index for c in range(len(features.class_names))
                                 for f in features.for_class(c, n_per_class)))
    else:
        ids = [int(j) for j in feature_ids]
    if not ids:
        return []
    if any(not 0 <= j < features.n_features for j in ids):
        raise ParameterError(f"feature_ids must lie in 0..{features.n_features - 1}.")
    source = _reiterable(images)
    layer_of, chan_of = features.feature_layer, features.feature_channel
    dev = model_device(module)
    scores: list[FloatArray] = []
    with model_guard(module):
        for xb_np, _items_b, _idx in image_batches(source, card, max(1, batch_size), cancel):
            v = model_responses(module, torch.from_numpy(xb_np).to(dev), features.layers, features.layer_channels)
            scores.append(v.numpy()[:, ids])
        if not scores:
            raise ParameterError("No images were given.")
        S = np.concatenate(scores, 0)  # (N, len(ids))
        tops: list[list[int]] = []
        for col in range(len(ids)):
            order = np.argsort(-S[:, col], kind="stable")
            tops.append([int(i) for i in order[: max(1, int(top))] if S[i, col] > 0])
        wanted: dict[int, list[int]] = {}
        for col, rows in enumerate(tops):
            for i in rows:
                wanted.setdefault(i, []).append(col)
        sums: list[Tensor | None] = [None] * len(ids)
        masked: list[Tensor | None] = [None] * len(ids)
        counts = [0] * len(ids)
        processed = 0
        for xb_np, _items_b, idx in image_batches(source, card, max(1, batch_size), cancel):
            keep = [b for b, i in enumerate(idx) if i in wanted]
            if not keep:
                continue
            xb = torch.from_numpy(xb_np[keep]).to(dev)
            cols = sorted({col for b in keep for col in wanted[idx[b]]})
            items = [(str(layer_of[ids[col]]), int(chan_of[ids[col]])) for col in cols]
            raw = backproject_features(module, xb, items, stride_fix=stride_fix)
            nd = xb.ndim - 2
            heat = normalise_maps(raw, nd).cpu()  # (b, n, *S)
            for bi, b in enumerate(keep):
                for ci, col in enumerate(cols):
                    if col not in wanted[idx[b]]:
                        continue
                    h = heat[bi, ci]
                    xi = xb[bi].detach().cpu().float()
                    m = xi * (h >= threshold)
                    if sums[col] is None:
                        sums[col], masked[col] = h.clone(), m.clone()
                    else:
                        ref, ref_m = sums[col], masked[col]
                        assert ref is not None and ref_m is not None
                        if h.shape != ref.shape:
                            h = _resize(h[None, None], tuple(ref.shape))[0, 0]
                            m = _resize(m[None], tuple(ref.shape))[0]
                        sums[col] = ref + h
                        masked[col] = ref_m + m
                    counts[col] += 1
            processed += len(keep)
            if progress is not None:
                progress(processed, len(wanted), "average visualisations")
    out = []
    for col, j in enumerate(ids):
        weights = {features.class_names[c]: float(features.W[j, c]) for c in np.flatnonzero(features.W[j])}
        best = max(weights.values(), key=abs) if weights else 0.0
        feat = Feature(j, str(layer_of[j]), int(chan_of[j]), float(best))
        s = sums[col]
        if s is None:  # no image responds to this feature: nothing to average
            heat_np = np.zeros((0,), np.float32)
            masked_np = None
        else:
            heat_np = (s / counts[col]).numpy().astype(np.float32)
            mk = masked[col]
            masked_np = None if mk is None else (mk / counts[col]).numpy().astype(np.float32)
        out.append(FeatureVisualisation(feat, weights, heat_np, masked_np, tops[col],
                                        [float(S[i, col]) for i in tops[col]]))
    return out


def _resize(t: Tensor, size: tuple[int, ...]) -> Tensor:
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(t, size=size, mode=mode, align_corners=False)
