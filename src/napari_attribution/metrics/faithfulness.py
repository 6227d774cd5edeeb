"""Faithfulness metrics: deletion / insertion curves (Petsiuk et al.), infidelity and max-sensitivity (Yeh et
al., with the project's recommended settings), the cascading model-randomisation sanity check (Adebayo et al.)
and the block-level specificity of SAM's evaluation (methods.md §A3.2, our reconstruction)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .._errors import ParameterError
from ._score import Scorer

__all__ = ["deletion_insertion", "infidelity", "max_sensitivity", "randomisation", "specificity"]


def _auc(curve: np.ndarray) -> float:
    n = len(curve)
    return float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / (n - 1)) if n > 1 else float(curve[0])


def _background(image: np.ndarray, baseline: Any) -> np.ndarray:
    if baseline == "min" or baseline is None:
        return np.full_like(image, image.min())
    if baseline == "mean":
        return np.full_like(image, image.mean())
    if isinstance(baseline, (int, float)):
        return np.full_like(image, float(baseline))
    arr = np.asarray(baseline, image.dtype)
    return np.broadcast_to(arr, image.shape).copy()


def deletion_insertion(scorer: Scorer, data: np.ndarray, *, kind: str = "deletion", steps: int = 50,
                       baseline: Any = "min", blur_mm: float | tuple[float, ...] = 5.0,
                       spacing: tuple[float, ...] | None = None) -> tuple[float, dict[str, Any]]:
    """Deletion: replace voxels in descending attribution order by the background (default: the image minimum,
    i.e. air in CT) and record the target's probability; insertion: start from a blurred image (Gaussian, sigma
    in mm per axis) and put the original voxels back in the same order. ``steps + 1`` points; AUC by the
    trapezoid rule normalised to [0, 1] along the x axis (Petsiuk et al.'s formula). Deletion: lower is better;
    insertion: higher is better. All input channels of a voxel are changed together."""
    from scipy.ndimage import gaussian_filter

    image = scorer.image
    spatial = scorer.spatial
    if data.shape != tuple(spatial):
        raise ParameterError(f"The attribution {data.shape} does not match the image's spatial shape {spatial}.")
    if kind not in ("deletion", "insertion"):
        raise ParameterError("kind must be 'deletion' or 'insertion'.")
    order = np.argsort(np.nan_to_num(data, nan=-np.inf).ravel(), kind="stable")[::-1]
    n = order.size
    counts = np.linspace(0, n, steps + 1).round().astype(int)
    if kind == "deletion":
        start, fill = image, _background(image, baseline)
    else:
        sp = np.asarray(spacing if spacing is not None else (1.0,) * len(spatial), float)
        sig = np.broadcast_to(np.asarray(blur_mm, float), sp.shape) / sp
        if scorer.channel_axis:
            start = np.stack([gaussian_filter(c, sig) for c in image])
        else:
            start = gaussian_filter(image, sig)
        fill = image
    curve = np.empty(len(counts))
    batch: list[np.ndarray] = []
    where: list[int] = []

    def flush() -> None:
        if batch:
            curve[where] = scorer(np.stack(batch))
            batch.clear()
            where.clear()

    for i, c in enumerate(counts):
        img = start.copy()
        idx = np.unravel_index(order[:c], spatial)
        if scorer.channel_axis:
            img[(slice(None),) + idx] = fill[(slice(None),) + idx]
        else:
            img[idx] = fill[idx]
        batch.append(img)
        where.append(i)
        if len(batch) >= scorer.batch:
            flush()
    flush()
    return _auc(curve), {"curve": curve, "fraction": counts / n, "kind": kind}


def infidelity(scorer: Scorer, data: np.ndarray, *, sigma: float = 0.05, samples: int = 10, seed: int = 0,
               normalize: bool = True) -> tuple[float, dict[str, Any]]:
    """``E_I[(sum_u I(u) Phi(u) - (T(x) - T(x - I)))^2]`` with Gaussian ``I ~ N(0, (sigma * range)^2)`` and the
    target's logit score ``T`` (what gradient methods explain). ``normalize=True`` rescales ``Phi`` by the optimal
    factor ``beta = E[<I,Phi> dT] / E[<I,Phi>^2]`` first (Yeh et al.; Captum's ``normalize``), so maps of
    different scales are comparable. Lower is better. Defaults are the project's (methods.md §A2.4), not
    TorchEsegeta's sigma = 1e-4, at which plain saliency scores ~0 by construction."""
    rng = np.random.default_rng(seed)
    image = scorer.image
    rng_range = float(image.max() - image.min()) or 1.0
    phi = np.nan_to_num(data, nan=0.0)
    if scorer.channel_axis:
        phi = np.broadcast_to(phi, image.shape) / image.shape[0]
    noise = rng.normal(0.0, sigma * rng_range, (samples,) + image.shape).astype(np.float32)
    t0 = scorer(image[None], probability=False)[0]
    tp = scorer(image[None] - noise, probability=False)
    dots = (noise * phi).reshape(samples, -1).sum(1).astype(np.float64)
    diffs = t0 - tp
    beta = float((dots * diffs).mean() / (dots * dots).mean()) if normalize and (dots * dots).mean() > 0 else 1.0
    value = float(((beta * dots - diffs) ** 2).mean())
    return value, {"beta": beta, "sigma_abs": sigma * rng_range, "samples": samples}


def max_sensitivity(explain_fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, data: np.ndarray, *,
                    radius: float = 0.02, samples: int = 10, seed: int = 0) -> tuple[float, dict[str, Any]]:
    """``max_j ||Phi(x + d_j) - Phi(x)||_F / ||Phi(x)||_F`` with ``d_j`` uniform in an L-infinity ball of
    ``radius * range`` (Captum's ``sensitivity_max`` perturbation). Lower is better. Re-runs the method
    ``samples`` times."""
    rng = np.random.default_rng(seed)
    r = radius * (float(image.max() - image.min()) or 1.0)
    base = np.nan_to_num(data, nan=0.0)
    norm = float(np.linalg.norm(base)) or 1.0
    values = []
    for _ in range(samples):
        pert = (image + rng.uniform(-r, r, image.shape)).astype(np.float32)
        values.append(float(np.linalg.norm(np.nan_to_num(explain_fn(pert), nan=0.0) - base)) / norm)
    return float(max(values)), {"per_sample": values, "radius_abs": r}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = np.nan_to_num(a.ravel()), np.nan_to_num(b.ravel())
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomisation(model: nn.Module, explain_fn: Callable[[nn.Module], np.ndarray], data: np.ndarray, *,
                  max_layers: int = 8, seed: int = 0) -> tuple[float, dict[str, Any]]:
    """Cascading model randomisation (Adebayo et al., arXiv:1810.03292; TorchEsegeta's variant): on a *copy* of
    the model, re-initialise the parameters layer by layer from the output towards the input, uniformly in
    ``[mean - std, mean + std]`` of each tensor, re-run the method after each layer and record the Spearman rank
    correlation of |map| with the original |map|. A method that explains the model, not the image, decorrelates:
    the value is the mean correlation (lower is better). The user's model is never touched."""
    clone = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    layers = [(n, m) for n, m in clone.named_modules() if any(True for _ in m.parameters(recurse=False))]
    layers = layers[::-1]
    if len(layers) > max_layers:
        keep = np.linspace(0, len(layers) - 1, max_layers).round().astype(int)
        chosen = set(int(i) for i in keep)
    else:
        chosen = set(range(len(layers)))
    base = np.abs(np.nan_to_num(data, nan=0.0))
    table: list[tuple[str, float]] = []
    for i, (name, module) in enumerate(layers):
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                mean, std = float(p.mean()), float(p.std()) if p.numel() > 1 else 0.0
                p.copy_(torch.rand(p.shape, generator=gen) * 2 * std + (mean - std))
        if i in chosen:
            table.append((name, _spearman(base, np.abs(explain_fn(clone)))))
    value = float(np.mean([c for _, c in table])) if table else 0.0
    return value, {"per_layer": table}


def specificity(scorer: Scorer, data: np.ndarray, *, block: int = 8, q: float = 0.1, eps: float | None = None,
                baseline: Any = "mean", score: str = "log_odds") -> tuple[float, dict[str, Any]]:
    """Block-level specificity of a map at identifying the voxels the model used (methods.md §A3.2, our
    reconstruction of Philbrick et al.'s evaluation). "Used" blocks: occluding the ``block``-sized cube with the
    ``baseline`` (default the image mean: neutral tissue rather than air) changes the target's score by more
    than ``eps``: with ``score="log_odds"`` (default, eps 1.0: the odds change by a factor e) the log-odds of the
    target probability, computed from the logits, so that a confident (saturated) model's changes are still seen;
    with ``score="probability"`` (eps 0.01, methods.md §A3.2's suggestion) the probability itself. Flagged blocks:
    the top ``q`` fraction of blocks by mean attribution.
    Returns specificity TN / (TN + FP) (higher is better); details hold sensitivity, the confusion counts and the
    threshold-free block-level ROC AUC of the map's block means against the used blocks."""
    image = scorer.image
    spatial = scorer.spatial
    nd = len(spatial)
    grid = [range(0, s, block) for s in spatial]
    corners = list(np.array(np.meshgrid(*grid, indexing="ij")).reshape(nd, -1).T)
    fill = _background(image, baseline)
    if score not in ("log_odds", "probability"):
        raise ParameterError("score must be 'log_odds' or 'probability'.")
    eps = (1.0 if score == "log_odds" else 0.01) if eps is None else float(eps)
    measure = scorer.log_odds if score == "log_odds" else scorer
    p0 = measure(image[None])[0]
    imgs = []
    for c in corners:
        sl = tuple(slice(int(o), int(o) + block) for o in c)
        im = image.copy()
        if scorer.channel_axis:
            im[(slice(None),) + sl] = fill[(slice(None),) + sl]
        else:
            im[sl] = fill[sl]
        imgs.append(im)
    probs = measure(np.stack(imgs))
    used = np.abs(p0 - probs) > eps
    clean = np.nan_to_num(data, nan=-np.inf)
    means = np.array([clean[tuple(slice(int(o), int(o) + block) for o in c)].mean() for c in corners])
    k = max(1, int(round(q * len(corners))))
    flagged = np.zeros(len(corners), bool)
    flagged[np.argsort(means, kind="stable")[::-1][:k]] = True
    tp = int((flagged & used).sum())
    fp = int((flagged & ~used).sum())
    tn = int((~flagged & ~used).sum())
    fn = int((~flagged & used).sum())
    spec = tn / (tn + fp) if tn + fp else 1.0
    sens = tp / (tp + fn) if tp + fn else 0.0
    auc = float("nan")
    if used.any() and (~used).any():  # threshold-free: P(a used block outranks an unused one), ties count half
        from scipy.stats import rankdata

        ranks = rankdata(np.nan_to_num(means.astype(np.float64), neginf=-1e300))
        n_pos, n_neg = int(used.sum()), int((~used).sum())
        auc = float((ranks[used].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(spec), {"sensitivity": sens, "auc": auc, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
                         "used_blocks": int(used.sum()), "blocks": len(corners), "block": block, "q": q,
                         "score": score, "eps": eps}
