"""The timing benchmark of seed 003: ``evidence`` (one forward pass per window at the conditional mean; our
reconstruction of Zhou & Kainz) against ``prediction_difference`` (Zintgraf et al., 10 conditional samples per
window) at the same window, stride and input, as the median of interleaved repeated runs on one case. Prints the
speed-up (goal >= 10x), the maps' Spearman rank correlation with PDA and each map's deletion AUC (lower is better)
next to the random-voxel-order reference, plus the one-sample, Taylor and screened variants.

    .venv/bin/python benchmarks/bench_evidence.py [--model demo:contrast-phase] [--case 0] [--quick]

The case, the target (its true class) and the deletion fill are the validation report's (case ``--case`` of its
2D or 3D task, ``benchmarks/validation/seed003.py``). Claim and verdict over 20 cases per task, with paired tests,
the PDA-vs-PDA reference and the 2D ablations, are in the report (``benchmarks/validate.py --only seed003``,
docs/validation.md); this script only times one case more carefully (median of interleaved runs). Both maps are
computed in the same run on the same model and image; the ratio is what counts, not the seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import napari_attribution as na

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validation.seed003 import TASKS, make_case  # noqa: E402


def _model_and_image(name: str, index: int) -> tuple[Any, np.ndarray, np.ndarray | None, int, Any]:
    """The validation report's case ``index`` of the task on ``name``, its true class and deletion fill."""
    task = next((t for t in TASKS.values() if t.model == name), None)
    if task is None:
        models = ", ".join(t.model for t in TASKS.values())
        raise SystemExit(f"--model must be one of the report's seed-003 models: {models}")
    case = make_case(task.key, 0, index)
    return na.load_model(name), case.image, case.mask, int(case.label), task.fill


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo:contrast-phase")
    parser.add_argument("--case", type=int, default=0, help="the validation report's case number (base seed 0)")
    parser.add_argument("--quick", action="store_true", help="small window count, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method, interleaved; the median")
    parser.add_argument("--screen", type=float, default=0.5,
                        help="fraction of windows the screened mode evaluates exactly")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady ratios on a shared machine)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, image, mask, k, fill = _model_and_image(args.model, args.case)
    label = f"{args.model} case {args.case}"
    nd = image.ndim
    window = 4 if nd == 3 else 8
    stride = (4 if args.quick else 2) if nd == 3 else (8 if args.quick else 4)
    params = {"window": window, "stride": stride, "patches": 5000, "seed": 0}
    print(f"model {label}, image {image.shape}, target class {k}, window {window}, stride {stride}")
    na.explain(model, image, "evidence", k, params=params)  # warm-up (and the patch-model fit path)
    runs = {
        "pda": lambda: na.explain(model, image, "prediction_difference", k, params={**params, "samples": 10}),
        "ev": lambda: na.explain(model, image, "evidence", k, params=params),
        "tay": lambda: na.explain(model, image, "evidence", k, params={**params, "mode": "taylor"}),
        "smp": lambda: na.explain(model, image, "evidence", k, params={**params, "mode": "conditional_sample"}),
        "scr": lambda: na.explain(model, image, "evidence", k,
                                  params={**params, "mode": "screened", "screen": args.screen}),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, Any] = {}
    for r in range(args.repeats):  # interleaved (and reversed every other round): load hits every method alike
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            results[name] = runs[name]()
            times[name].append(time.perf_counter() - t0)
    t_pda, t_ev, t_tay, t_scr, t_smp = (float(np.median(times[n])) for n in ("pda", "ev", "tay", "scr", "smp"))
    pda, ev, tay, scr, smp = (results[n] for n in ("pda", "ev", "tay", "scr", "smp"))
    print(f"median of {args.repeats} interleaved runs, {torch.get_num_threads()} torch thread(s); all runs (s): "
          + "; ".join(f"{n} " + ", ".join(f"{t:.2f}" for t in ts) for n, ts in times.items()))
    from scipy.stats import spearmanr

    rows = []
    for name, res, sec in (("prediction_difference (S=10)", pda, t_pda), ("evidence (conditional mean)", ev, t_ev),
                           ("evidence (one conditional sample)", smp, t_smp),
                           (f"evidence (screened, {args.screen:g} exact)", scr, t_scr),
                           ("evidence (taylor)", tay, t_tay)):
        score = na.evaluate(model, image, res, "deletion", steps=20, baseline=fill)
        d = (score.value, score.details["random_auc"])
        extra = ""
        if mask is not None and mask.any():
            extra = f"{na.evaluate(model, image, res, 'energy_in_mask', mask=mask).value:.2f}"
        rho_pda = spearmanr(pda.data.ravel(), res.data.ravel()).statistic
        rho_ev = spearmanr(ev.data.ravel(), res.data.ravel()).statistic
        rows.append((name, sec, t_pda / sec, rho_pda, rho_ev, d, extra))
    print()
    print(f"windows: {pda.extras['windows']}; screened: {scr.extras['evaluated']} evaluated exactly, Spearman(taylor, "
          f"exact) on them {scr.extras['screen_rank_correlation']:.3f} (the method's own screening check)")
    print()
    print("| method | seconds | speed-up vs PDA | map Spearman vs PDA | vs conditional mean | deletion AUC (lower "
          "better) | random-order deletion AUC (reference) | positive mass in evidence mask |")
    print("|---|---|---|---|---|---|---|---|")
    for name, sec, ratio, r_pda, r_ev, d, extra in rows:
        print(f"| {name} | {sec:.2f} | {ratio:.1f}x | {r_pda:.3f} | {r_ev:.3f} | {d[0]:.3f} | {d[1]:.3f} | {extra} |")
    for name, t in (("evidence (conditional mean)", t_ev), (f"evidence (screened, {args.screen:g})", t_scr)):
        print(f"goal: {name} >= 10x faster than prediction_difference: "
              f"{'met' if t_pda / t >= 10 else 'NOT met'} ({t_pda / t:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
