"""A layer sweep in one pass: ``na.explain_layers`` (every layer from one forward and one backward pass) against
the loop it replaces (``na.explain`` once per layer), on the demo models and a MONAI UNet, for the shared-pass
layer methods. Prints, per row, both times, their ratio (goal: a sweep of N layers costs well under N single
explanations; the ratio to one single explanation is printed too) and checks the maps are equal.

    .venv/bin/python benchmarks/bench_sweep.py [--repeats 5] [--quick]

Times are medians of interleaved runs in the same process on one torch thread; the ratios are what count.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import napari_attribution as na


def _timed(fn: Callable[..., Any], times: list[float], *args: Any, **kwargs: Any) -> Any:
    t0 = time.perf_counter()
    res = fn(*args, **kwargs)
    times.append(time.perf_counter() - t0)
    return res


def _loop(model: Any, img: np.ndarray, method: str, target: Any, layers: list[str]) -> dict[str, Any]:
    return {n: na.explain(model, img, method, target, layer=n) for n in layers}


def _rows(quick: bool) -> list[tuple[str, Any, np.ndarray, Any]]:
    from napari_attribution.models.demo import DEMO_MODELS

    rows = []
    for name in ("contrast-phase", "lesion3d", "vessel-seg"):
        loaded = na.load_model(f"demo:{name}")
        case = DEMO_MODELS[name].generator(11)
        target = int(case.label) if case.label is not None else na.targets.Predicted(1)
        rows.append((f"demo:{name} {case.image.shape}", loaded, case.image, target))
    if not quick:
        from monai.networks.nets import UNet

        torch.manual_seed(0)
        net = UNet(3, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1).eval()
        img = np.random.default_rng(0).normal(size=(64, 64, 64)).astype(np.float32)
        rows.append(("MONAI UNet (64, 64, 64)", net, img, na.targets.Predicted(1)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="demo models only, 2 repeats")
    parser.add_argument("--methods", default="grad_cam,layer_gradient_x_activation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 2 if args.quick else args.repeats
    print(f"median of {repeats} interleaved runs, 1 torch thread")
    print()
    print("| model | method | layers | loop of explain (s) | explain_layers (s) | sweep / loop | sweep / one explain |"
          " maps equal |")
    print("|---|---|---|---|---|---|---|---|")
    for label, model, img, target in _rows(args.quick):
        module = model.module if isinstance(model, na.LoadedModel) else model
        x = torch.from_numpy(np.ascontiguousarray(img, np.float32))[None, None]
        layers = [c.name for c in na.find_layers(module, x)]
        for method in args.methods.split(","):
            na.explain(model, img, method, target, layer=layers[-1])  # warm-up
            loop_t: list[float] = []
            sweep_t: list[float] = []
            one_t: list[float] = []
            loop: dict[str, Any] = {}
            sweep: dict[str, Any] = {}
            for r in range(repeats):
                for which in (("loop", "sweep") if r % 2 == 0 else ("sweep", "loop")):
                    if which == "loop":
                        loop = _timed(_loop, loop_t, model, img, method, target, layers)
                    else:
                        sweep = _timed(na.explain_layers, sweep_t, model, img, method, layers, target)
                _timed(na.explain, one_t, model, img, method, target, layer=layers[-1])
            equal = all(np.allclose(sweep[n].data, loop[n].data, rtol=1e-4,
                                    atol=1e-6 * (float(np.abs(loop[n].data).max()) or 1.0)) for n in layers)
            t_loop, t_sweep, t_one = (float(np.median(t)) for t in (loop_t, sweep_t, one_t))
            print(f"| {label} | {method} | {len(layers)} | {t_loop:.3f} | {t_sweep:.3f} | {t_sweep / t_loop:.2f}x "
                  f"| {t_sweep / t_one:.2f}x | {'yes' if equal else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
