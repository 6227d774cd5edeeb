"""The report's statistics against values worked out by hand: Holm's step-down adjustment, the paired comparison's
counts, sign and effect size, and the bootstrap interval's coverage."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from validation.common import Paired, holm, mean_ci, paired, significant, table  # noqa: E402


def _p(p: float) -> Paired:
    return Paired(n=10, diff=0.0, lo=0.0, hi=0.0, wins=0, ties=0, losses=0, p=p, effect=0.0)


def test_holm_matches_the_step_down_rule_worked_by_hand() -> None:
    # sorted p: 0.01, 0.02, 0.03, 0.2 with m = 4 -> 0.04, max(0.04, 0.06), max(0.06, 0.06), max(0.06, 0.2)
    res = holm([_p(0.03), _p(0.01), _p(0.2), _p(0.02)])
    assert [r.p_adj for r in res] == pytest.approx([0.06, 0.04, 0.2, 0.06])
    # NaN p values are not part of the family: m = 2 here
    res = holm([_p(0.02), _p(float("nan")), _p(0.04)])
    assert res[0].p_adj == pytest.approx(0.04) and np.isnan(res[1].p_adj) and res[2].p_adj == pytest.approx(0.04)
    assert holm([_p(0.6), _p(0.7)])[1].p_adj == 1.0  # capped at 1
    assert significant(holm([_p(0.01), _p(0.02)])[0]) and not significant(holm([_p(0.03), _p(0.04)])[0])


def test_paired_counts_sign_and_effect() -> None:
    from scipy.stats import wilcoxon

    a = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.4])
    b = np.array([0.4, 0.4, 0.7, 0.5, 0.5, 0.5])  # a wins 4, ties 1, loses 1
    r = paired(a, b)
    assert (r.wins, r.ties, r.losses, r.n) == (4, 1, 1, 6)
    assert r.diff == pytest.approx((a - b).mean())
    d = (a - b)[a != b]
    assert r.p == pytest.approx(wilcoxon(d).pvalue)
    # rank-biserial: ranks of |d| = 0.1, 0.2, 0.3, 0.4, 0.1 -> 1.5, 3, 4, 5, 1.5; the loss holds rank 1.5 of 15
    assert r.effect == pytest.approx((15 - 2 * 1.5) / 15)
    assert r.direction == "better"
    lower = paired(a, b, higher_is_better=False)  # the same numbers when lower is better: a loses
    assert (lower.wins, lower.losses) == (1, 4) and lower.effect == pytest.approx(-r.effect)
    assert lower.direction == "worse"
    same = paired([1.0, 2.0], [1.0, 2.0])
    assert np.isnan(same.p) and same.direction == "no difference" and same.ties == 2


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(200):
        m, lo, hi = mean_ci(rng.normal(1.0, 2.0, 40).tolist(), n_boot=1000, seed=i)
        assert lo <= m <= hi
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99  # the percentile bootstrap is slightly narrow at n = 40
    assert mean_ci([3.0]) == (3.0, 3.0, 3.0)
    assert all(np.isnan(mean_ci([float("nan")])))


def test_table_has_one_row_per_entry() -> None:
    text = table(["a", "b"], [[1, 2], [3, 4]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]
