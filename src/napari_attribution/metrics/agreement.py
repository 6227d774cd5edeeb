"""Agreement between methods: pairwise Spearman rank correlation and top-k overlap of their maps."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._attribution import Attribution

__all__ = ["agreement"]


def agreement(results: dict[str, Attribution] | dict[str, np.ndarray], *, top: float = 0.05,
              absolute: bool = False, max_voxels: int = 1_000_000, seed: int = 0) -> dict[str, Any]:
    """Pairwise agreement of several maps of the same image (the output of ``compare``).

    Returns a dict with ``methods`` (names), ``spearman`` (K x K rank correlation over the finite voxels),
    ``topk_overlap`` (K x K IoU of each map's top ``top`` fraction of voxels) and ``seconds`` (each method's
    runtime when Attributions are given). ``absolute=True`` ranks |map| (compare unsigned with signed maps by
    magnitude). Volumes with more than ``max_voxels`` finite voxels are compared on a seeded random subset of
    that size (rank statistics converge long before; keeps big 3D comparisons interactive).
    """
    from scipy.stats import spearmanr

    names = list(results)
    arrays = [np.asarray(r.data if isinstance(r, Attribution) else r, np.float64) for r in results.values()]
    if absolute:
        arrays = [np.abs(a) for a in arrays]
    finite = np.logical_and.reduce([np.isfinite(a) for a in arrays]) if arrays else None
    k = len(names)
    rho = np.eye(k)
    overlap = np.eye(k)
    flat = [a[finite] for a in arrays] if finite is not None else []
    if flat and flat[0].size > max_voxels:
        pick = np.random.default_rng(seed).choice(flat[0].size, max_voxels, replace=False)
        flat = [f[pick] for f in flat]
    n = flat[0].size if flat else 0
    m = max(1, int(round(top * n)))
    tops = [set(np.argsort(f, kind="stable")[::-1][:m].tolist()) for f in flat]
    for i in range(k):
        for j in range(i + 1, k):
            if flat[i].std() == 0 or flat[j].std() == 0:
                r = 0.0
            else:
                r = float(spearmanr(flat[i], flat[j]).statistic)
            rho[i, j] = rho[j, i] = r
            inter = len(tops[i] & tops[j])
            overlap[i, j] = overlap[j, i] = inter / (2 * m - inter)
    seconds = {n_: float(r.seconds) for n_, r in results.items() if isinstance(r, Attribution)}
    return {"methods": names, "spearman": rho, "topk_overlap": overlap, "top": top, "seconds": seconds}
