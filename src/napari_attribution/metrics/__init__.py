"""Metrics that say whether a heatmap can be trusted: localisation against masks, faithfulness (deletion,
insertion, infidelity, max-sensitivity), the model-randomisation sanity check, SAM-style specificity, and the
agreement between methods. ``napari_attribution.evaluate`` is the one entry point."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
from torch import nn

from .._attribution import Attribution
from .._errors import Cancelled, CompletenessWarning, ParameterError
from ..methods._lock import model_lock
from ..pipeline import explain, model_and_card
from ._score import Score, Scorer
from .agreement import agreement
from .faithfulness import deletion_insertion, infidelity, max_sensitivity, randomisation, specificity
from .localisation import energy_in_mask, pointing_game, topk_iou
from .tables import (
    LandmarkComparison,
    LandmarkRow,
    LandmarkTable,
    MapLandmarks,
    landmark_comparison,
    landmark_table,
    layer_sweep_table,
    target_region,
)

__all__ = [
    "METRICS",
    "LandmarkComparison",
    "LandmarkRow",
    "LandmarkTable",
    "MapLandmarks",
    "Score",
    "agreement",
    "evaluate",
    "landmark_comparison",
    "landmark_table",
    "layer_sweep_table",
    "target_region",
]

#: metric name -> higher is better
METRICS = {
    "energy_in_mask": True, "pointing_game": True, "topk_iou": True, "deletion": False, "insertion": True,
    "randomisation": False, "infidelity": False, "max_sensitivity": False, "specificity": True,
}


_F = TypeVar("_F", bound=Callable[..., Any])


def _one_run_per_model(fn: _F) -> _F:
    """Hold the model's lock (:func:`~napari_attribution.methods._lock.model_lock`) for the whole call: a metric's
    passes switch the model to eval mode and back, like ``explain``'s, so runs on one model take turns."""

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> Any:
        from ..models._card import LoadedModel

        model = args[0] if args else kwargs.get("model")
        module = model.module if isinstance(model, LoadedModel) else model
        if not isinstance(module, nn.Module):  # the mask metrics need no model
            return fn(*args, **kwargs)
        with model_lock(module, cancel=kwargs.get("cancel"), progress=kwargs.get("progress")):
            return fn(*args, **kwargs)

    return cast(_F, locked)


@_one_run_per_model
def evaluate(model: Any, image: Any, attribution: Attribution | np.ndarray, metric: str, target: Any = None, *,
             progress: Callable[[int, int, str], None] | None = None, cancel: Callable[[], bool] | None = None,
             **params: Any) -> Score:
    """Score one attribution of ``image`` with ``metric``.

    Parameters
    ----------
    model, image : as for :func:`napari_attribution.explain`.
    attribution : Attribution or array
        The map (``.data``, the image's spatial shape). With an :class:`Attribution`, the target, method and
        parameters are taken from it (needed by ``randomisation`` and ``max_sensitivity``, which re-run it).
    metric : str
        ``"energy_in_mask"``, ``"pointing_game"``, ``"topk_iou"`` (need ``mask=``), ``"deletion"``,
        ``"insertion"``, ``"randomisation"``, ``"infidelity"``, ``"max_sensitivity"``, ``"specificity"``.
    target : optional
        Defaults to the attribution's resolved target.
    progress : callable, optional
        ``progress(done, total, message)``, called as the metric runs: per batch of model calls (deletion,
        insertion, infidelity, specificity) or per re-run of the method (randomisation, max_sensitivity, with
        the re-run's own progress in between).
    cancel : callable, optional
        Polled between batches and re-runs; when it returns True the metric raises
        :class:`~napari_attribution.Cancelled` (the model is left as it was, nothing is returned).
    **params
        Metric parameters (see each function in ``napari_attribution.metrics``); ``geometry=`` gives the voxel
        spacing for mm tolerances and blurs.

    Returns
    -------
    Score
        ``.value``, ``.details`` (curves, per-label tables), ``.seconds``, ``.higher_is_better``. Deletion and
        insertion also give ``details["random_auc"]`` (and ``"random_curve"``): the mean over ``random_orders``
        (default 4) random orders of the same units (seeded by ``seed``, default 0), the AUC a map that knows
        nothing gets, with ``details["random_band"]``, the noise (half-width of the 95 % prediction interval of
        one more random order's AUC); ``reference=False`` skips them (a fifth of the model calls).

    Notes
    -----
    Deletion and insertion take ``unit`` (``"auto"``: connected blocks of ``block_mm`` mm, default 3, for a
    segmentation target, single voxels for a classification target; or ``"region"`` / ``"voxel"``), ``baseline``
    (the deletion fill; ``"auto"``: the scan's blurred copy for a segmentation target, the modality's background
    for a classification target: CT air at -1000 HU, or the MRI background; also ``"blur"``, ``"ct_air"``,
    ``"mri_background"``, ``"min"``, ``"mean"``, a number), ``modality`` (``"CT"`` / ``"MRI"``; default: told
    from the scan, HU values being CT), ``blur_mm`` (default 5), ``steps`` (default 50) and ``random_orders``;
    see :func:`napari_attribution.metrics.faithfulness.deletion_insertion`.

    Examples
    --------
    >>> import numpy as np, torch
    >>> import napari_attribution as na
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    >>> image = np.random.default_rng(0).random((8, 8), dtype=np.float32)
    >>> res = na.explain(net, image, "input_x_gradient", 1)
    >>> score = na.evaluate(net, image, res, "deletion", steps=8, progress=lambda done, total, message: None)
    >>> sorted(k for k in score.details if k.startswith("random"))
    ['random_auc', 'random_aucs', 'random_band', 'random_curve', 'random_orders']
    >>> score.details["unit"], score.details["fill"]  # a classifier: voxel by voxel, to the MRI background
    ('voxel', 'MRI background')
    """
    if metric not in METRICS:
        raise ParameterError(f"Unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
    t0 = time.perf_counter()
    att = attribution if isinstance(attribution, Attribution) else None
    data = np.asarray(att.data if att is not None else attribution, np.float32)
    if target is None and att is not None:
        target = att.target
    geometry = params.pop("geometry", None) or (att.geometry if att is not None else None)
    spacing = tuple(geometry.spacing) if geometry is not None and hasattr(geometry, "spacing") else None
    if cancel is not None and cancel():
        raise Cancelled(f"The {metric} check was cancelled; no score was produced.")
    if metric in ("energy_in_mask", "pointing_game", "topk_iou"):
        mask = params.pop("mask", None)
        if mask is None:
            raise ParameterError(f"{metric} compares the map with a mask: pass mask=<boolean or label array>.")
        if metric == "energy_in_mask":
            value, details = energy_in_mask(data, mask)
        elif metric == "pointing_game":
            value, details = pointing_game(data, mask, spacing=spacing, **params)
        else:
            value, details = topk_iou(data, mask, **params)
        if progress is not None:  # no model calls: one step
            progress(1, 1, f"{metric}: done")
    elif metric in ("randomisation", "max_sensitivity"):
        if att is None:
            raise ParameterError(f"{metric} re-runs the method: pass the Attribution returned by explain().")
        module, card = model_and_card(model)
        target = _frozen_target(model, image, target, geometry)
        kwargs: dict[str, Any] = {"layer": att.layer, "params": {k: v for k, v in att.params.items() if v is not None}}
        if metric == "randomisation":
            from ..models._card import LoadedModel

            def run_on(m: Any, **run: Any) -> np.ndarray:
                with warnings.catch_warnings():  # a randomised model's IG map is incomplete: no news
                    warnings.simplefilter("ignore", CompletenessWarning)
                    return explain(LoadedModel(m, card), image, att.method, target, geometry=geometry, **kwargs,
                                   **run).data

            value, details = randomisation(module, run_on, data, progress=progress, cancel=cancel, **params)
        else:
            def run_at(im: np.ndarray, **run: Any) -> np.ndarray:
                with warnings.catch_warnings():  # the check compares maps; the original run already warned
                    warnings.simplefilter("ignore", CompletenessWarning)
                    return explain(model, im, att.method, target, geometry=geometry, **kwargs, **run).data

            value, details = max_sensitivity(run_at, np.asarray(image, np.float32), data, progress=progress,
                                             cancel=cancel, **params)
    else:
        scorer = Scorer(model, np.asarray(image, np.float32), target, geometry=geometry,
                        batch=int(params.pop("batch", 8)))
        if metric in ("deletion", "insertion"):
            value, details = deletion_insertion(scorer, data, kind=metric, spacing=spacing, progress=progress,
                                                cancel=cancel, **params)
        elif metric == "infidelity":
            value, details = infidelity(scorer, data, progress=progress, cancel=cancel, **params)
        else:
            value, details = specificity(scorer, data, progress=progress, cancel=cancel, **params)
        details["model_calls"] = scorer.calls
    return Score(metric, float(value), METRICS[metric], details, time.perf_counter() - t0)


def _frozen_target(model: Any, image: Any, target: Any, geometry: Any) -> Any:
    """A target whose region comes from the model's prediction (``Predicted``, ``ErrorRegion``, ``Contrast``
    without a mask) as the fixed region it has on the original model and image, so that the re-runs of
    randomisation and max-sensitivity explain the same voxels (a randomised model predicts other regions, often
    none). Other targets, and outputs on another grid than the image's, are returned unchanged."""
    from ..targets import Contrast, ErrorRegion, Predicted, Region

    if not (isinstance(target, (Predicted, ErrorRegion)) or (isinstance(target, Contrast) and target.mask is None)):
        return target
    scorer = Scorer(model, np.asarray(image, np.float32), target, geometry=geometry)
    weights = scorer.target.weights
    if scorer.task != "segmentation" or tuple(weights.shape[1:]) != tuple(scorer.spatial):
        return target
    if isinstance(target, Contrast):
        return Contrast(target.k1, target.k2, (weights[target.k1] != 0).cpu().numpy(), target.score)
    return Region(target.k, (weights[target.k] != 0).cpu().numpy(), target.score)
