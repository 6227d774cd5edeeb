"""The mu-lasso of the interpretation stage (methods.md §A5.1 step 2): ``min_W ||X W - L||_F^2 / 2`` subject to
``||w_c||_1 <= mu`` per class, by FISTA with the exact L1-ball projection of Duchi et al. (2008). NumPy only."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .._errors import Cancelled, ParameterError

__all__ = ["Cancel", "FloatArray", "LassoResult", "Progress", "mu_lasso", "project_l1_ball"]

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]
FloatArray = npt.NDArray[np.float64]


def project_l1_ball(v: npt.ArrayLike, mu: float) -> FloatArray:
    """Euclidean projection onto the L1 ball ``{w : ||w||_1 <= mu}`` (Duchi et al., ICML 2008), column-wise.

    Parameters
    ----------
    v : array, ``(m,)`` or ``(m, C)``
        One vector, or one vector per column.
    mu : float
        The radius, ``>= 0``.

    Returns
    -------
    ndarray
        Same shape as ``v``: ``v`` itself (a copy) where ``||v||_1 <= mu``, else ``sign(v) * max(|v| - theta, 0)``
        with the ``theta`` that puts the result on the sphere ``||w||_1 = mu``.

    Examples
    --------
    >>> project_l1_ball([3.0, -1.0, 0.5], 2.0)
    array([ 2., -0.,  0.])
    """
    arr = np.array(v, dtype=np.float64)
    if mu < 0:
        raise ParameterError(f"The L1 radius mu must be >= 0, got {mu}.")
    one = arr.ndim == 1
    cols = arr[:, None] if one else arr
    if cols.ndim != 2:
        raise ParameterError("project_l1_ball takes a vector (m,) or a matrix of columns (m, C).")
    a = np.abs(cols)
    over = np.flatnonzero(a.sum(0) > mu)
    if over.size:
        if mu == 0:
            cols[:, over] = 0.0
        else:
            sub = a[:, over]
            s = -np.sort(-sub, axis=0)  # descending
            csum = np.cumsum(s, axis=0)
            j = np.arange(1, s.shape[0] + 1, dtype=np.float64)[:, None]
            cond = s - (csum - mu) / j > 0  # true for j = 1..rho, false after
            rho = cond.shape[0] - 1 - np.argmax(cond[::-1], axis=0)  # last true index (0-based)
            theta = (csum[rho, np.arange(over.size)] - mu) / (rho + 1.0)
            cols[:, over] = np.sign(cols[:, over]) * np.maximum(sub - theta, 0.0)
    return cols[:, 0] if one else cols


@dataclass
class LassoResult:
    """The solution of :func:`mu_lasso` and how it was reached.

    ``objective`` is ``||X W - L||_F^2 / 2``; ``gap`` the Frank-Wolfe duality gap, an upper bound on
    ``objective - optimum``; ``converged`` whether ``gap <= tol * ||L||_F^2 / 2`` was reached within ``max_iter``.
    """

    W: FloatArray
    objective: float
    gap: float
    iterations: int
    converged: bool


def _largest_eigenvalue(a: FloatArray, seed: int) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite matrix (exact when small, power iteration else)."""
    if a.shape[0] <= 2000:
        return float(np.linalg.eigvalsh(a)[-1])
    rng = np.random.default_rng(seed)
    x = np.asarray(rng.standard_normal(size=(a.shape[0],)), dtype=np.float64)
    lam = 0.0
    for _ in range(300):
        y = a @ x
        norm = float(np.linalg.norm(y))
        if norm == 0:
            return 0.0
        x = y / norm
        if abs(norm - lam) <= 1e-9 * norm:
            lam = norm
            break
        lam = norm
    return lam * 1.01  # a step a little shorter than 1/L keeps the iteration monotone despite the estimate


def mu_lasso(
    X: npt.ArrayLike,
    L: npt.ArrayLike,
    mu: float,
    *,
    max_iter: int = 5000,
    tol: float = 1e-6,
    w0: npt.ArrayLike | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> LassoResult:
    """Solve ``min_W ||X W - L||_F^2 / 2`` subject to ``||w_c||_1 <= mu`` for every column ``c``.

    FISTA (Beck & Teboulle 2009) with step ``1 / ||X||_2^2``, the exact L1-ball projection of
    :func:`project_l1_ball` per column, and gradient-based adaptive restart (O'Donoghue & Candes 2015). The
    iterates stay feasible; convergence is certified by the Frank-Wolfe gap
    ``sum_c (<g_c, w_c> + mu ||g_c||_inf)`` with ``g = X^T (X W - L)``, which bounds the distance to the optimum
    of the objective. Entries below ``1e-8`` of their column's largest magnitude (round-off) are set to zero.

    Parameters
    ----------
    X : array, ``(N, m)``
        One response vector per row (image).
    L : array, ``(N, C)`` or ``(N,)``
        The labels (one-hot or multi-hot).
    mu : float
        The L1 bound per column (the paper's ``tau``).
    max_iter, tol : int, float
        Stop after ``max_iter`` iterations or when the gap is below ``tol`` times ``||L||_F^2 / 2``.
    w0 : array, ``(m, C)``, optional
        Warm start (projected first).
    seed : int
        Seeds the power iteration for very large problems (everything else is deterministic).
    progress, cancel : callables, optional
        ``progress(iteration, max_iter, message)``; ``cancel()`` polled every 10 iterations.
    """
    x = np.asarray(X, dtype=np.float64)
    lab = np.asarray(L, dtype=np.float64)
    if lab.ndim == 1:
        lab = lab[:, None]
    if x.ndim != 2 or lab.ndim != 2 or lab.shape[0] != x.shape[0]:
        raise ParameterError(f"X must be (N, m) and L (N, C) with the same N; got {x.shape} and {lab.shape}.")
    if not mu > 0:
        raise ParameterError(f"mu must be positive, got {mu}.")
    n, m = x.shape
    c = lab.shape[1]
    if m <= n:  # iterate on the (m, m) Gram matrix
        gram = x.T @ x
        xtl = x.T @ lab

        def grad(w: FloatArray) -> FloatArray:
            return np.asarray(gram @ w - xtl)

        lip = _largest_eigenvalue(gram, seed)
    else:

        def grad(w: FloatArray) -> FloatArray:
            return np.asarray(x.T @ (x @ w - lab))

        lip = _largest_eigenvalue(x @ x.T, seed)
    half_l2 = 0.5 * float(np.sum(lab * lab))
    scale = half_l2 if half_l2 > 0 else 1.0

    def objective(w: FloatArray) -> float:
        r = x @ w - lab
        return 0.5 * float(np.sum(r * r))

    def gap_of(w: FloatArray) -> float:
        g = grad(w)
        return float(np.sum(g * w) + mu * np.abs(g).max(axis=0).sum()) if g.size else 0.0

    w = np.zeros((m, c)) if w0 is None else project_l1_ball(np.asarray(w0, dtype=np.float64).reshape(m, c), mu)
    if lip <= 0 or m == 0:
        return LassoResult(w, objective(w), gap_of(w), 0, True)
    eta = 1.0 / lip
    y = w.copy()
    t = 1.0
    gap = gap_of(w)
    it = 0
    converged = gap <= tol * scale
    while not converged and it < max_iter:
        it += 1
        w_new = project_l1_ball(y - eta * grad(y), mu)
        if float(np.sum((y - w_new) * (w_new - w))) > 0:  # momentum points uphill: restart
            t = 1.0
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = w_new + ((t - 1.0) / t_new) * (w_new - w)
        w, t = w_new, t_new
        if it % 10 == 0 or it == max_iter:
            gap = gap_of(w)
            converged = gap <= tol * scale
            if cancel is not None and cancel():
                raise Cancelled("Fitting the relevant features was cancelled; nothing was produced.")
            if progress is not None:
                progress(it, max_iter, f"mu-lasso (gap {gap:.2e})")
    peak = np.abs(w).max(axis=0, keepdims=True) if w.size else np.zeros((1, c))
    w = np.where(np.abs(w) <= 1e-8 * peak, 0.0, w)
    return LassoResult(w, objective(w), gap_of(w), it, bool(converged))
