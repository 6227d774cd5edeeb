#!/usr/bin/env python
"""Generate the phantoms and train every bundled demo model, deterministically, on one CPU thread.

    .venv/bin/python scripts/train_demo_models.py                  # all models (about 20-25 min on 1 core)
    .venv/bin/python scripts/train_demo_models.py vessel-seg       # one model
    .venv/bin/python scripts/train_demo_models.py --quick --out /tmp/w   # smoke run: a few iterations
    .venv/bin/python scripts/train_demo_models.py --figure docs/images/demo-models.png   # only the figure

Writes ``<out>/<model>.pt`` (``{"state_dict", "metrics"}``; loaded with ``torch.load(weights_only=True)``) and
the metrics of every model trained in this run to ``--metrics`` (JSON, merged with what is already there).
Defaults: the package's ``models/demo/weights/`` and ``docs/demo-models-metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from napari_attribution.models.demo import DEMO_MODELS, WEIGHTS_DIR  # noqa: E402
from napari_attribution.models.demo import training as T  # noqa: E402

# name -> (training function, full settings, quick settings)
RECIPES = {
    "contrast-phase": (lambda **kw: T.train_contrast_phase(2, **kw),
                       {"iterations": 800, "batch": 24, "held_out": 300}, {"iterations": 3, "held_out": 6}),
    "contrast-phase-3d": (lambda **kw: T.train_contrast_phase(3, **kw),
                          {"iterations": 600, "batch": 8, "held_out": 150}, {"iterations": 2, "held_out": 3}),
    "vessel-seg": (T.train_vessel_seg, {"iterations": 800, "batch": 4, "pool": 160, "held_out": 12},
                   {"iterations": 2, "pool": 2, "held_out": 1}),
    "lesion3d": (T.train_lesion3d, {"iterations": 1200, "held_out": 200}, {"iterations": 2, "held_out": 4}),
    # fine-tuned from the shipped vessel-seg weights: train vessel-seg first when both are retrained
    "vessel-cta": (T.train_vessel_cta, {"iterations": 800, "batch": 4, "pool": 8, "held_out": 3},
                   {"iterations": 2, "pool": 1, "held_out": 0}),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"which models (default: all of {', '.join(RECIPES)})")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="weights folder (default: %(default)s)")
    ap.add_argument("--metrics", type=Path, default=ROOT / "docs" / "demo-models-metrics.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = reproducible bit for bit)")
    ap.add_argument("--quick", action="store_true", help="a few iterations only (smoke test; poor weights)")
    ap.add_argument("--figure", type=Path, help="only draw the overview figure from the shipped weights")
    args = ap.parse_args(argv)
    if args.figure:
        torch.set_num_threads(args.threads)
        figure(args.figure)
        print(f"figure -> {args.figure}")
        return 0
    names = args.models or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(RECIPES)}")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = json.loads(args.metrics.read_text()) if args.metrics.is_file() and not args.quick else {}
    for name in names:
        fn, full, quick = RECIPES[name]
        settings = quick if args.quick else full
        t0 = time.perf_counter()
        model, metrics = fn(seed=args.seed, log=print, **settings)
        metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
        metrics["torch"] = str(torch.__version__)
        metrics["threads"] = args.threads
        metrics["machine"] = platform.machine()
        path = args.out / DEMO_MODELS[name].weights_file
        torch.save({"state_dict": model.state_dict(), "metrics": metrics}, path)
        score = (f"accuracy {metrics['accuracy']:.1%}" if "accuracy" in metrics
                 else f"Dice {metrics['dice_mean']:.3f} (pooled {metrics['dice_pooled']:.3f})")
        print(f"== {name}: held-out {score} on {metrics['n']} cases; {metrics['wall_seconds']} s; "
              f"{path} ({path.stat().st_size / 1024:.0f} KiB)")
        report[name] = metrics
    if not args.quick:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        print(f"metrics -> {args.metrics}")
    return 0


def figure(path: Path) -> None:
    """Phantoms, evidence masks and Grad-CAM of the shipped models (for docs/demo-models.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import napari_attribution as na
    from napari_attribution.models.demo import PHASES, abdomen_phantom, get_demo, vessel_phantom

    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    cp = get_demo("contrast-phase")
    for k in range(3):  # one anatomy, three phases: only the evidence changes
        case = abdomen_phantom(2024, k)
        ax = axes[0, k]
        ax.imshow(case.image, cmap="gray", vmin=-160, vmax=240)
        ax.contour(case.mask, levels=[0.5], colors="lime", linewidths=0.7)
        ax.set_title(f"seed 2024, {PHASES[k]}", fontsize=9)
    case = abdomen_phantom(2024, 2)
    res = na.explain(cp, case.image, "grad_cam", 2)
    pos = np.clip(res.data, 0, None)
    ax = axes[0, 3]
    ax.imshow(case.image, cmap="gray", vmin=-160, vmax=240)
    ax.imshow(res.data, cmap="inferno", alpha=0.55)
    ax.contour(case.mask, levels=[0.5], colors="lime", linewidths=0.7)
    ax.set_title(f"Grad-CAM (portal venous): {pos[case.mask].sum() / pos.sum():.0%} in mask", fontsize=9)
    slab = abdomen_phantom(2025, 1, dims=3)
    cp3 = get_demo("contrast-phase-3d")
    r3 = na.explain(cp3, slab.image, "grad_cam", 1)
    z = slab.image.shape[0] // 2
    axes[1, 0].imshow(slab.image[z], cmap="gray", vmin=-160, vmax=240)
    axes[1, 0].imshow(r3.data[z], cmap="inferno", alpha=0.55)
    axes[1, 0].contour(slab.mask[z], levels=[0.5], colors="lime", linewidths=0.7)
    axes[1, 0].set_title("3D slab, arterial: Grad-CAM, mid slice", fontsize=9)
    vessel = vessel_phantom(2026)
    vs = get_demo("vessel-seg")
    import torch as _t

    with _t.no_grad():
        pred = vs.module(_t.from_numpy(vessel.image)[None, None]).argmax(1)[0].numpy() == 1
    rv = na.explain(vs, vessel.image, "grad_cam")
    axes[1, 1].imshow(vessel.image.max(0), cmap="gray")
    axes[1, 1].set_title("vessel phantom (MIP)", fontsize=9)
    axes[1, 2].imshow(vessel.mask.max(0).astype(float) + 2 * pred.max(0), cmap="viridis", vmin=0, vmax=3)
    axes[1, 2].set_title(f"truth (1) / prediction (2) / both (3), MIP; Dice "
                         f"{T.dice(pred, vessel.mask):.2f}", fontsize=9)
    axes[1, 3].imshow(np.clip(rv.data, 0, None).max(0), cmap="inferno")
    axes[1, 3].set_title("Grad-CAM (dec1, predicted vessels), MIP", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
