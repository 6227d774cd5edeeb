"""Localisation metrics against a ground-truth mask: energy in the mask, the pointing game (tolerance in mm)
and the IoU of the top-q % voxels (Oramas et al.'s IoU@threshold, Kumar-style landmark checks)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import ParameterError

__all__ = ["energy_in_mask", "pointing_game", "topk_iou"]


def _check(data: np.ndarray, mask: Any) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != data.shape:
        raise ParameterError(f"The mask has shape {m.shape} but the attribution has shape {data.shape}.")
    m = m.astype(bool) if m.dtype == bool or m.max() <= 1 else m
    return m


def energy_in_mask(data: np.ndarray, mask: Any) -> tuple[float, dict[str, Any]]:
    """``sum_{u in M} max(R, 0) / sum_u max(R, 0)`` (per label for an integer label mask); chance = mask fraction."""
    m = _check(data, mask)
    pos = np.clip(np.nan_to_num(data, nan=0.0), 0, None)
    total = float(pos.sum())
    labels = [1] if m.dtype == bool else [int(v) for v in np.unique(m) if v != 0]
    table = {}
    for lab in labels:
        region = m if m.dtype == bool else m == lab
        table[lab] = {"energy": float(pos[region].sum() / total) if total > 0 else 0.0,
                      "fraction_of_volume": float(region.mean())}
    value = float(pos[m.astype(bool)].sum() / total) if total > 0 else 0.0
    return value, {"per_label": table, "chance": float(m.astype(bool).mean())}


def pointing_game(data: np.ndarray, mask: Any, *, tolerance_mm: float = 5.0,
                  spacing: tuple[float, ...] | None = None) -> tuple[float, dict[str, Any]]:
    """Hit (1.0) if the map's maximum lies within ``tolerance_mm`` of the mask (Zhang et al.: 15 px; here in mm
    with the voxel spacing), else 0.0. Ties: the first maximum; the number of tied maxima is reported."""
    from scipy.ndimage import distance_transform_edt

    m = _check(data, mask).astype(bool)
    if not m.any():
        raise ParameterError("The mask is empty: the pointing game needs at least one voxel of the structure.")
    sp = tuple(spacing) if spacing is not None else (1.0,) * data.ndim
    clean = np.nan_to_num(data, nan=-np.inf)
    peak = np.unravel_index(int(np.argmax(clean)), data.shape)
    ties = int((clean == clean[peak]).sum())
    dist = distance_transform_edt(~m, sampling=sp)
    d = float(dist[peak])
    return float(d <= tolerance_mm), {"peak": tuple(int(i) for i in peak), "distance_mm": d, "ties": ties,
                                      "tolerance_mm": tolerance_mm}


def topk_iou(data: np.ndarray, mask: Any, *, q: float | None = None,
             sweep: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)) -> tuple[float, dict[str, Any]]:
    """IoU of the top-``q`` fraction of voxels (by value) with the mask; default ``q`` = the mask's fraction
    (then IoU = precision = recall). ``details["sweep"]`` gives the IoU for each fraction in ``sweep``."""
    m = _check(data, mask).astype(bool)
    flat = np.nan_to_num(data, nan=-np.inf).ravel()
    order = np.argsort(flat, kind="stable")[::-1]

    def iou(frac: float) -> float:
        k = max(1, int(round(frac * flat.size)))
        top = np.zeros(flat.size, bool)
        top[order[:k]] = True
        inter = np.logical_and(top, m.ravel()).sum()
        union = np.logical_or(top, m.ravel()).sum()
        return float(inter / union) if union else 0.0

    frac = float(m.mean()) if q is None else float(q)
    return iou(frac), {"q": frac, "sweep": {f: iou(f) for f in sweep}}
