#!/usr/bin/env python
"""Where does the time go? Profiles behind the rows of ``bench_core.py`` that miss their goals.

Same models, inputs and targets as ``bench_core.py``. Three views::

    # aten ops of na.explain against one plain forward + backward (torch.profiler, self CPU time per call)
    .venv/bin/python benchmarks/profile_core.py ops --method deconvnet --setting 2d

    # Python overhead of the pipeline per call, on a tiny model where the passes cost ~nothing (cProfile)
    .venv/bin/python benchmarks/profile_core.py python --method saliency

    # multi-pass methods: wall time, system time and page faults by chunk size (``max_batch``)
    .venv/bin/python benchmarks/profile_core.py batch --method occlusion --setting 2d

``--setting`` is ``2d`` (224 x 224), ``3d_small`` (64^3) or ``3d`` (96^3); ``--quick`` uses the tiny sizes;
``--threads`` as in ``bench_core.py`` (default 1, ``0`` = torch's default).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_core as bc  # noqa: E402

MULTI_PASS_PARAMS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 32, "baseline": 0.0},
    "smoothgrad": {"samples": 16},
    "occlusion": {"window": 56, "stride": 28},
    "rise": {"masks": 200},
    "score_cam": {},
}


def op_table(fn: Callable[[], object], runs: int) -> dict[str, tuple[float, float]]:
    """``{op name: (self CPU ms per call, calls per call)}`` over ``runs`` calls of ``fn``."""
    for _ in range(3):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    return {
        e.key: (e.self_cpu_time_total / 1e3 / runs, e.count / runs)
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    }


def ops(case: bc.Case, method: str, runs: int, top: int) -> None:
    """Print the aten ops where ``na.explain`` spends more self CPU time than the plain pass."""
    ours = op_table(bc.ours(case, method, **MULTI_PASS_PARAMS.get(method, {})), runs)
    plain = op_table(bc.plain_forward_backward(case), runs)
    names = sorted(set(ours) | set(plain), key=lambda n: ours.get(n, (0, 0))[0] - plain.get(n, (0, 0))[0], reverse=True)
    total_o = sum(v[0] for v in ours.values())
    total_p = sum(v[0] for v in plain.values())
    print(f"{method} on {case.setting.label}: self CPU per call, ours {total_o:.1f} ms, plain F+B {total_p:.1f} ms\n")
    print("| op | ours (ms) | plain (ms) | extra (ms) | calls ours | calls plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names[:top]:
        o, p = ours.get(n, (0.0, 0.0)), plain.get(n, (0.0, 0.0))
        print(f"| {n} | {o[0]:.2f} | {p[0]:.2f} | {o[0] - p[0]:+.2f} | {o[1]:.0f} | {p[1]:.0f} |")


def python_overhead(method: str, calls: int, top: int) -> None:
    """Per-call Python overhead of the pipeline, measured on a tiny 3D model whose passes cost ~nothing."""
    s = bc.Setting(3, (2, 2, 2, 2), (16, 16, 16), 2, 4, 0)
    case = bc.make_case(s)
    fn = bc.ours(case, method)
    t = bc.paired(fn, bc.plain_forward_backward(case), repeats=101, warmup=20)
    print(
        f"{method} on a tiny model: ours {t.ours_ms:.2f} ms, plain F+B {t.base_ms:.2f} ms, "
        f"overhead {t.ours_ms - t.base_ms:.2f} ms per call\n"
    )
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(r"napari_attribution|module\.py.*(train|__setattr__)", top)
    print(f"(cProfile, {calls} calls; divide times by {calls} for ms per call)")
    print(out.getvalue())


def _run_counters(fn: Callable[[], object]) -> tuple[float, float, int]:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall * 1e3, (r1.ru_stime - r0.ru_stime) * 1e3, r1.ru_minflt - r0.ru_minflt


def batch(case: bc.Case, method: str, sizes: Sequence[int | None], repeats: int) -> None:
    """Wall time, system time and minor page faults of a multi-pass method by chunk size."""
    params = MULTI_PASS_PARAMS[method]
    fns = {b: bc.ours(case, method, **(params if b is None else {**params, "max_batch": b})) for b in sizes}
    for fn in fns.values():
        fn()
    rows: dict[int | None, list[tuple[float, float, int]]] = {b: [] for b in sizes}
    for _ in range(repeats):  # interleaved, so that load from other processes hits every size alike
        for b, fn in fns.items():
            rows[b].append(_run_counters(fn))
    print(f"{method} on {case.setting.label} {params}\n")
    print("| max_batch | wall (ms) | system (ms) | minor page faults |")
    print("|---|---:|---:|---:|")
    for b, r in rows.items():
        med = [statistics.median(x[i] for x in r) for i in range(3)]
        print(f"| {'default' if b is None else b} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} |")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("view", choices=["ops", "python", "batch"])
    parser.add_argument("--method", required=True)
    parser.add_argument("--setting", default="2d", choices=["2d", "3d_small", "3d"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=10, help="profiled calls (ops) or repeats (batch)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--sizes", default="default,1,2,4,8,16", help="max_batch values for the batch view")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.view == "python":
        python_overhead(args.method, 500, args.top)
        return 0
    cfg = bc.QUICK if args.quick else bc.FULL
    case = bc.make_case(bc.settings(cfg)[args.setting])
    if args.view == "ops":
        ops(case, args.method, args.runs, args.top)
    else:
        sizes = [None if s == "default" else int(s) for s in args.sizes.split(",")]
        batch(case, args.method, sizes, max(1, args.runs // 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
