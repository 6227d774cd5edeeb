#!/usr/bin/env python
"""Is the docks' cost estimate right? The Explain dock asks before a run it estimates to take long; this script
checks that estimate against the measured time of the same run, at 128^3 (goal: within 2x either way).

    .venv/bin/python benchmarks/bench_estimate.py            # 128^3, about 5 minutes on a 2-core CPU
    .venv/bin/python benchmarks/bench_estimate.py --quick    # 48^3, under a minute (smoke run)

For every row the script builds the request the dock would build (``ExplainRequest``) and asks the dock's own
estimate, ``runs.jobs._estimate`` — passes counted by ``estimate_passes`` (with the scaled window defaults) times one
forward + backward pass, forward-only passes times one forward, both timed on this input the way the dock times them
(once, cold, in the run's thread setting) — then runs the request with ``run_job`` (what pressing Explain runs, minus
adding the layer) and times it. The estimate is measured fresh for every row, and the window methods' patch model
fitted anew, as for the first run in a session (a second run on the same image reuses the fit: the estimate then
errs on the long side).

Rows: the single-pass methods, and the multi-pass ones with reduced steps / windows (so that the script ends in
minutes; the estimate is linear in the pass count, and the ratio is what is checked), on two models:

* ``demo:lesion3d`` (the demo 3D classifier) on a 128^3 lesion phantom, target class 1;
* a MONAI UNet (channels 8, 16, 32; one residual unit; random weights: timing only) on the same volume, target the
  predicted foreground region;
* the same UNet through a sliding-window inferer (``unet-sw``: 48^3 Gaussian windows, overlap 0.25; 32^3 with
  ``--quick``), where the estimate times one window and counts the window runs.

Adaptive integrated gradients is shown for information: its estimate is an upper bound (``max_steps``), not a
prediction. Ratio = measured / estimated: above 1 the run took longer than announced. A measurement script: the
seconds depend on the machine and its load, the ratio much less (both sides are timed on the same model, input,
machine and thread count, in the same run).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np


def _unet() -> Any:
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
                num_res_units=1).eval()


def rows(quick: bool) -> list[tuple[str, str, dict[str, Any], bool]]:
    """``(model, method, params, checked)``: the runs of the table; ``checked``: the 2x goal applies."""
    occ = {"window": 32, "stride": 48} if not quick else {"window": 16, "stride": 16}
    win = {"window": 8, "stride": 40} if not quick else {"window": 8, "stride": 20}
    single = ["saliency", "input_x_gradient", "guided_backprop", "grad_cam", "layer_activation"]
    out: list[tuple[str, str, dict[str, Any], bool]] = [("lesion3d", m, {}, True) for m in single]
    out += [
        ("lesion3d", "integrated_gradients", {"steps": 8}, True),
        ("lesion3d", "smoothgrad", {"samples": 4}, True),
        ("lesion3d", "occlusion", occ, True),
        ("lesion3d", "rise", {"masks": 32}, True),
        ("lesion3d", "score_cam", {}, True),
        ("lesion3d", "evidence", win, True),
        ("lesion3d", "evidence", {**win, "mode": "taylor"}, True),
        ("lesion3d", "prediction_difference", {**win, "samples": 2}, True),
        ("lesion3d", "integrated_gradients", {"steps": "auto", "max_steps": 32}, False),
        ("unet", "saliency", {}, True),
        ("unet", "grad_cam", {}, True),
        ("unet", "integrated_gradients", {"steps": 8}, True),
        ("unet", "occlusion", occ, True),
        ("unet-sw", "saliency", {}, True),
        ("unet-sw", "grad_cam", {}, True),
        ("unet-sw", "integrated_gradients", {"steps": 4}, True),
        ("unet-sw", "occlusion", occ, True),
    ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="48^3 instead of 128^3 (smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the runs and of the timed pass (1: steady on a shared machine)")
    parser.add_argument("--only", help="comma-separated methods (default: all rows)")
    args = parser.parse_args()

    import torch

    import napari_attribution as na
    from napari_attribution import targets as T
    from napari_attribution._demo import phantom
    from napari_attribution.methods import _windows
    from napari_attribution.runs.jobs import ExplainRequest, _estimate, run_job
    from napari_attribution.runs.model_info import model_info
    from napari_attribution.runs.threads import torch_threads

    size = 48 if args.quick else 128
    vol, _mask = phantom(np.random.default_rng(7), lesion=True, shape=(size,) * 3)
    vol = np.asarray(vol, np.float32)
    roi = [32] * 3 if args.quick else [48] * 3
    windowed = na.LoadedModel(_unet(), na.ModelCard.from_dict({
        "task": "segmentation", "spatial_dims": 3, "in_channels": 1, "num_classes": 2,
        "inferer": {"type": "sliding_window", "roi_size": roi, "overlap": 0.25, "mode": "gaussian"}}))
    models = {"lesion3d": model_info(na.load_model("demo:lesion3d"), "demo:lesion3d"),
              "unet": model_info(_unet(), "MONAI UNet (random weights)"),
              "unet-sw": model_info(windowed, "MONAI UNet through a sliding window (random weights)")}
    targets = {"lesion3d": 1, "unet": T.Predicted(1), "unet-sw": T.Predicted(1)}
    wanted = set(args.only.split(",")) if args.only else None
    print(f"volume {size}^3, {args.threads} torch thread(s), torch {torch.__version__}")
    header = ("model", "method", "params", "passes (F only)", "estimate s", "measured s", "measured / estimate",
              "within 2x")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    misses = 0
    for name, method, params, checked in rows(args.quick):
        if wanted is not None and method not in wanted:
            continue
        info = models[name]
        req = ExplainRequest(model=info, image=vol, source="phantom", methods=[method], params={method: params},
                             target=targets[name], threads=args.threads)
        info.pass_seconds.clear()  # timed fresh for every row, as for the first run of a session
        _windows._FITS.clear()  # and the window methods fit their patch model anew (a later run reuses it)
        with torch_threads(args.threads):
            est = _estimate(req, vol, 0, vol.shape, cheap=0)
        assert est is not None
        t0 = time.perf_counter()
        out = run_job(req)
        measured = time.perf_counter() - t0
        if out.status != "ok":
            print(f"{name} {method} {params}: {out.status}: {out.message}")
            return 1
        ratio = measured / est.seconds
        ok = 0.5 <= ratio <= 2.0
        misses += int(checked and not ok)
        verdict = ("yes" if ok else "**NO**") if checked else ("— (upper bound)" if est.upper_bound else "—")
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        passes = f"{est.passes:.0f} ({est.forward_passes:.0f})"
        lines.append(f"| {name} | {method} | {shown} | {passes} | {est.seconds:.2f} | {measured:.2f} | "
                     f"{ratio:.2f}x | {verdict} |")
        print(lines[-1], flush=True)
    print()
    print("\n".join(lines))
    print(f"\n{misses} checked row(s) outside 2x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
