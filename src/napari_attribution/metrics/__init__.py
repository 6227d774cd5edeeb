"""Metrics that say whether a heatmap can be trusted: localisation against masks, faithfulness (deletion,
insertion, infidelity, max-sensitivity), the model-randomisation sanity check, SAM-style specificity, and the
agreement between methods. ``napari_attribution.evaluate`` is the one entry point."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .._attribution import Attribution
from .._errors import ParameterError
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


def evaluate(model: Any, image: Any, attribution: Attribution | np.ndarray, metric: str, target: Any = None,
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
    **params
        Metric parameters (see each function in ``napari_attribution.metrics``); ``geometry=`` gives the voxel
        spacing for mm tolerances and blurs.

    Returns
    -------
    Score
        ``.value``, ``.details`` (curves, per-label tables), ``.seconds``, ``.higher_is_better``.
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
    elif metric in ("randomisation", "max_sensitivity"):
        if att is None:
            raise ParameterError(f"{metric} re-runs the method: pass the Attribution returned by explain().")
        from ..pipeline import _model_and_card, explain

        module, card = _model_and_card(model)
        kwargs: dict[str, Any] = {"layer": att.layer, "params": {k: v for k, v in att.params.items() if v is not None}}
        if metric == "randomisation":
            from ..models._card import LoadedModel

            def run_on(m: Any) -> np.ndarray:
                return explain(LoadedModel(m, card), image, att.method, target, **kwargs).data

            value, details = randomisation(module, run_on, data, **params)
        else:
            def run_at(im: np.ndarray) -> np.ndarray:
                return explain(model, im, att.method, target, geometry=geometry, **kwargs).data

            value, details = max_sensitivity(run_at, np.asarray(image, np.float32), data, **params)
    else:
        scorer = Scorer(model, np.asarray(image, np.float32), target, geometry=geometry,
                        batch=int(params.pop("batch", 8)))
        if metric in ("deletion", "insertion"):
            value, details = deletion_insertion(scorer, data, kind=metric, spacing=spacing, **params)
        elif metric == "infidelity":
            value, details = infidelity(scorer, data, **params)
        else:
            value, details = specificity(scorer, data, **params)
        details["model_calls"] = scorer.calls
    return Score(metric, float(value), METRICS[metric], details, time.perf_counter() - t0)
