"""What every section of the validation report shares: the run context, the per-(method, case) cache, the
statistics (bootstrap confidence intervals, the paired Wilcoxon signed-rank test, Holm's correction) and the
markdown helpers. Written by hand because the report must not depend on anything the package does not install
(numpy and scipy only)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
VERDICTS = ("reproduced", "reproduced in part", "not reproduced")


@dataclass
class Section:
    """One section of the report. ``markdown`` is the body (no title); ``verdict`` is one of ``VERDICTS`` for a
    seed's claim (None for sections that make no claim); ``summary`` is one sentence for the page's summary
    table; ``figures`` are paths relative to the repository root."""

    key: str
    title: str
    markdown: str
    verdict: str | None = None
    summary: str = ""
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    #: this run's seconds plus the recorded compute time of the cached results it reused: about what the section
    #: takes from an empty cache
    compute_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Section:
        return cls(**d)


class Cache:
    """Results per key, as JSON files under ``root``. ``get(key, fn)`` returns the stored value for ``key`` (a
    tuple of strings and numbers: section, method, case, settings...) or computes ``fn()``, stores and returns it.
    The value must be JSON-serialisable (floats, lists, dicts). Put every setting that changes the result into the
    key; ``VERSION`` strings in a section invalidate its entries when its protocol changes."""

    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        #: compute seconds recorded in the cached results served (``Context.timed`` results): what they cost when
        #: they were computed
        self.hit_seconds = 0.0

    def _path(self, key: Sequence[Any]) -> Path:
        text = json.dumps([str(k) for k in key])
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        head = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(key[0]))[:40]
        return self.root / head / f"{digest}.json"

    def reused(self, seconds: float) -> None:
        """Count ``seconds`` of compute that a result kept outside this cache (e.g. trained weights) saved."""
        self.hit_seconds += float(seconds)

    def get(self, key: Sequence[Any], fn: Callable[[], Any]) -> Any:
        path = self._path(key)
        if self.enabled and path.is_file():
            self.hits += 1
            value = json.loads(path.read_text())["value"]
            if isinstance(value, dict) and isinstance(value.get("seconds"), (int, float)):
                self.reused(value["seconds"])
            return value
        self.misses += 1
        value = fn()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": [str(k) for k in key], "value": value}))
        tmp.replace(path)
        return value


@dataclass
class Context:
    """What a section's ``run`` gets. ``quick``: a few cases and fast methods only (the test runs this; the whole
    quick report must take under a minute). ``seed``: the base seed every case seed derives from. ``fig_dir``:
    where figures go (``docs/images/validation`` for the real report)."""

    quick: bool
    seed: int
    cache: Cache
    fig_dir: Path
    log: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)

    def timed(self, key: Sequence[Any], fn: Callable[[], Any]) -> Any:
        """``cache.get`` for a ``fn`` returning a dict, adding ``seconds`` (the compute time, kept from the run
        that computed it, so cached reruns report the original timing)."""

        def run() -> Any:
            t0 = time.perf_counter()
            out = fn()
            if isinstance(out, dict):
                out = {**out, "seconds": time.perf_counter() - t0}
            return out

        return self.cache.get(key, run)

    def figure(self, name: str) -> tuple[Path, str]:
        """Where to save figure ``name`` (e.g. ``"seed002_layers.png"``) and its link relative to the report."""
        import os

        path = self.fig_dir / name
        out = Path(self.extra.get("out", ROOT / "docs" / "validation.md"))
        return path, os.path.relpath(path, out.parent)


# ---------------------------------------------------------------- statistics


def mean_ci(values: Sequence[float], level: float = 0.95, n_boot: int = 4000,
            seed: int = 0) -> tuple[float, float, float]:
    """Mean and its bootstrap percentile confidence interval. NaNs are dropped; one value gives (v, v, v)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    boots = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


@dataclass
class Paired:
    """A paired comparison of ``a`` against ``b`` on the same cases: mean difference a - b with its bootstrap
    95 % CI, wins / ties / losses of a (``higher_is_better`` decides what a win is; a tie is |a - b| <= tol),
    the two-sided Wilcoxon signed-rank p value (zero differences dropped; nan when all differences are zero),
    ``p_adj`` (set by :func:`holm`), and the matched-pairs rank-biserial correlation as the effect size
    (+1: a better on every case, -1: worse on every case, in the direction of ``higher_is_better``)."""

    n: int
    diff: float
    lo: float
    hi: float
    wins: int
    ties: int
    losses: int
    p: float
    effect: float
    p_adj: float = float("nan")

    @property
    def direction(self) -> str:
        """"better", "worse" or "no difference" (by the sign of the effect size)."""
        if self.effect > 0:
            return "better"
        if self.effect < 0:
            return "worse"
        return "no difference"


def paired(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True, tol: float = 0.0) -> Paired:
    from scipy.stats import rankdata, wilcoxon

    x = np.asarray(a, float)
    y = np.asarray(b, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    d = x - y
    sign = 1.0 if higher_is_better else -1.0
    better = sign * d
    wins = int((better > tol).sum())
    losses = int((better < -tol).sum())
    ties = int(d.size - wins - losses)
    mean, lo, hi = mean_ci(d.tolist())
    nz = d[d != 0]
    if nz.size == 0:
        p, effect = float("nan"), 0.0
    else:
        p = float(wilcoxon(nz).pvalue) if nz.size > 0 else float("nan")
        r = rankdata(np.abs(nz))
        effect = float(sign * (r[nz > 0].sum() - r[nz < 0].sum()) / r.sum())
    return Paired(int(d.size), mean, lo, hi, wins, ties, losses, p, effect)


def holm(results: Sequence[Paired]) -> list[Paired]:
    """Holm's step-down correction over one family of comparisons; sets ``p_adj`` on each (in place) and returns
    them. NaN p values stay NaN and do not count towards the family size."""
    idx = [i for i, r in enumerate(results) if np.isfinite(r.p)]
    m = len(idx)
    order = sorted(idx, key=lambda i: results[i].p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * results[i].p))
        results[i].p_adj = running
    return list(results)


def significant(r: Paired, alpha: float = 0.05) -> bool:
    p = r.p_adj if np.isfinite(r.p_adj) else r.p
    return bool(np.isfinite(p) and p < alpha)


# ---------------------------------------------------------------- formatting


def fmt(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "—"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def fmt_ci(values: Sequence[float], digits: int = 3) -> str:
    """"mean [lo, hi]" with the bootstrap 95 % CI."""
    m, lo, hi = mean_ci(values)
    return f"{fmt(m, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def fmt_paired(r: Paired, digits: int = 3) -> str:
    """"+0.012 [0.004, 0.02], 14/6/4, p 0.02 (Holm 0.08)"."""
    holm_txt = f" (Holm {fmt_p(r.p_adj)})" if np.isfinite(r.p_adj) else ""
    return (f"{r.diff:+.{digits}f} [{r.lo:+.{digits}f}, {r.hi:+.{digits}f}], "
            f"{r.wins}/{r.ties}/{r.losses}, p {fmt_p(r.p)}{holm_txt}")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
