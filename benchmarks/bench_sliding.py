#!/usr/bin/env python
"""Attribution through a network's own sliding-window inference: time and peak memory, side by side in one run.

The model is a MONAI ``UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(16, 32, 64, 128),
strides=(2, 2, 2))`` with random but seeded weights (``torch.manual_seed(0)``, PyTorch's default initialisation),
one output channel read as a sigmoid (``num_classes: 1``, logits), run by its card's inferer: 96^3 windows,
overlap 0.25, Gaussian blending. The target is a ``Region(0, body)``: the foreground logit summed over the body
of a generated CT-like volume (body ellipse, organs, bone, noise; intensities HU / 1000), the same on every side.
``na.explain`` gets ``memory_budget`` = 2 GiB in parts B, C and D, the default budget in part A (which times).

Parts (every ratio is measured in the same run, on the same network, volume and target)::

    A  saliency and grad_cam at 256^3 and 512x512x300 against the method's own pass count done plainly: MONAI's
       sliding_window_inference under torch.no_grad (the stitched prediction), then for every window one forward
       with gradients and one backward with the window's share of the target's gradient (grad_cam: a backward that
       stops at the layer, then the window's Grad-CAM map blended with the same weights). Goal <= 1.15x.
    B  against what a user writes today: Captum's Saliency and IntegratedGradients on a forward function that
       wraps monai.inferers.sliding_window_inference (every window's graph is kept), at 128^3 and 256^3.
       Goals: time <= 1x, peak memory <= 0.25x. The baseline runs under an address-space limit
       (RLIMIT_AS = its resting size + --limit-gib): "ran out of memory" is a valid result.
    C  every method that runs through an inferer at 128^3 with 48^3 windows (multi-pass methods with quick
       settings), time and peak memory; then each at 512x512x300 (96^3 windows), stopped through ``cancel``
       after one pass over all windows plus N more windows, its peak against the 2 GiB budget (a refusal,
       MemoryBudgetError, is a valid result: the budget it asks for is printed).
    D  saliency at 512x512x300 within memory_budget = 2 GiB: peak <= budget + 20 %; when refused, again with the
       budget the refusal asks for, its peak compared with 2 GiB.

Run::

    .venv/bin/python benchmarks/bench_sliding.py                       # long: see docs/performance.md
    .venv/bin/python benchmarks/bench_sliding.py --quick               # tiny sizes, < 60 s (smoke test)
    .venv/bin/python benchmarks/bench_sliding.py --write docs/performance.md   # and regenerate the page's tables
    .venv/bin/python benchmarks/bench_sliding.py --parts DA            # some parts, in this order
    .venv/bin/python benchmarks/bench_sliding.py --where-memory 4      # the large tensors of saliency at 512x512x300

How it measures: times by ``time.perf_counter``; at 256^3 ours and the plain loop run interleaved in this process
(ours, plain, plain, ours, ...; the median), the other cases once each in a fresh process. Peak memory: every
memory case runs in a fresh process (this script with ``--case``), after the network, the volume and a warm-up
window (one forward + backward, not counted) are in place: peak = ``VmHWM`` after resetting it through
``/proc/self/clear_refs``, minus the resident set just before the case (so the input volume itself is not
counted; what the method allocates, its outputs included, is). The children run with
``MALLOC_MMAP_THRESHOLD_=131072`` so that freed blocks leave the resident set at once (as in bench_core.py).
Threads: ``--threads`` (default 2, this machine's cores) torch threads, ``OMP_NUM_THREADS`` set to the same.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import napari_attribution as na
from napari_attribution import targets as T

GiB = 2**30
MiB = 2**20
BUDGET = 2 * GiB
LAYER = "model.1"  # the card's default layer for this UNet (everything below the first convolution)
BEGIN = "<!-- bench_sliding:begin -->"
END = "<!-- bench_sliding:end -->"
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    quick: bool
    roi: int  # the windows of parts A, B, D and C's 512x512x300 runs
    small_roi: int  # C's windows
    cube_a: int  # A's cube
    ct: tuple[int, int, int]  # the CT-like volume, numpy order (z, y, x)
    cubes_b: tuple[int, ...]
    cube_c: int
    ig_steps: int  # B's integrated gradients, both sides
    repeats: int  # A's interleaved repeats at cube_a
    extra_windows: int  # C at ct size: windows run after the first full pass before cancelling
    limit_gib: float  # B's baseline: address space above the resting process


FULL = Config(False, 96, 48, 256, (300, 512, 512), (128, 256), 128, 4, 2, 16, 8.0)
QUICK = Config(True, 32, 24, 48, (40, 72, 64), (40,), 48, 2, 1, 2, 8.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- model and data
def build_net() -> nn.Module:
    """The MONAI UNet, seeded, eval mode, frozen (what ``na.explain`` does too)."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def card(roi: int) -> dict[str, Any]:
    return {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "num_classes": 1, "output": "logits",
            "inferer": {"type": "sliding_window", "roi_size": [roi] * 3, "overlap": 0.25, "mode": "gaussian"}}


def ct_volume(shape: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume ``(z, y, x)`` in HU / 1000 and its body mask: air, an elliptic body (soft tissue), liver,
    kidneys, spleen, a spine and Gaussian noise. Built one axial slice at a time (little memory)."""
    nz, ny, nx = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    vol = np.empty((nz, ny, nx), np.float32)
    body = np.empty((nz, ny, nx), bool)
    yy, xx = np.ogrid[-1:1:ny * 1j, -1:1:nx * 1j]
    yy = yy.astype(np.float32)
    xx = xx.astype(np.float32)
    #  (centre y, centre x, centre z, radius y, radius x, radius z, HU)
    organs = [(0.05, -0.35, 0.55, 0.35, 0.3, 0.35, 60.0),  # liver
              (0.25, 0.3, 0.5, 0.12, 0.1, 0.2, 30.0),  # kidney
              (0.25, -0.3, 0.45, 0.12, 0.1, 0.2, 30.0),  # kidney
              (-0.05, 0.45, 0.6, 0.15, 0.12, 0.15, 45.0),  # spleen
              (0.4, 0.0, 0.5, 0.09, 0.09, 2.0, 700.0)]  # spine
    for z in range(nz):
        zz = -1 + 2 * z / max(1, nz - 1)
        inside = (yy / 0.62) ** 2 + (xx / 0.85) ** 2 <= 1
        s = np.where(inside, np.float32(20.0), np.float32(-1000.0))
        for cy, cx, cz, ry, rx, rz, hu in organs:
            dz = ((zz - (cz * 2 - 1)) / rz) ** 2
            if dz < 1:
                s = np.where(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + dz <= 1, np.float32(hu), s)
        s = s + rng.normal(0.0, 25.0, size=(ny, nx)).astype(np.float32)
        vol[z] = s / 1000.0
        body[z] = inside
    return vol, body


def window_grid(shape: Sequence[int], roi: int) -> tuple[list[tuple[slice, ...]], Tensor, Tensor]:
    """MONAI's window placement and Gaussian weights, written out: the slices, the importance map, the summed
    weights. (Every size here is at least the window, so nothing is padded.)"""
    from monai.data.utils import compute_importance_map, dense_patch_slices

    rois = (roi,) * 3
    interval = [r if r == n else max(1, int(r * 0.75)) for n, r in zip(shape, rois, strict=True)]
    slices = dense_patch_slices(tuple(shape), rois, interval)
    w = compute_importance_map(rois, mode="gaussian", sigma_scale=0.125, device="cpu").float()
    count = torch.zeros(tuple(shape))
    for sl in slices:
        count[sl] += w
    return slices, w, count


# ------------------------------------------------------------------------------------------------- the cases
def ours(net: nn.Module, roi: int, vol: np.ndarray, body: np.ndarray, method: str, params: dict[str, Any],
         progress: Callable[[int, int, str], None] | None = None,
         cancel: Callable[[], bool] | None = None) -> na.Attribution:
    loaded = na.LoadedModel(net, na.ModelCard.from_dict(card(roi)))
    layer = LAYER if na.get_method(method).needs_layer else None
    return na.explain(loaded, vol, method, T.Region(0, body), layer=layer,
                      params={"memory_budget": BUDGET, **params}, progress=progress, cancel=cancel)


def plain(net: nn.Module, roi: int, vol: np.ndarray, body: np.ndarray, method: str) -> tuple[Tensor, Tensor]:
    """The method's own passes, done plainly: MONAI's stitched prediction without gradients, then per window one
    forward with gradients and a backward with the window's share ``body * w / count`` of the target's gradient.
    Windows the target does not reach are skipped (ours skips them too)."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(vol)[None, None]
    with torch.no_grad():
        pred = sliding_window_inference(x, (roi,) * 3, 1, net, overlap=0.25, mode="gaussian")
    slices, w, count = window_grid(vol.shape, roi)
    mask = torch.from_numpy(body)
    out = torch.zeros(vol.shape)
    den = torch.zeros(vol.shape) if method == "grad_cam" else None
    layer = dict(net.named_modules())[LAYER]
    for sl in slices:
        m = mask[sl]
        if not bool(m.any()):
            continue
        cot = (m * w / count[sl])[None, None]
        xs = x[(slice(None), slice(None), *sl)].clone()
        if method == "saliency":
            xs.requires_grad_(True)
            (g,) = torch.autograd.grad(net(xs), xs, cot)
            out[sl] += g[0, 0]
        else:  # grad_cam: the backward stops at the layer; the window's map, blended with the same weights
            acts: list[Tensor] = []

            def leaf(_m: nn.Module, _i: Any, o: Tensor, acts: list[Tensor] = acts) -> Tensor:
                acts.append(o.detach().requires_grad_(True))  # the graph starts at the layer
                return acts[-1]

            handle = layer.register_forward_hook(leaf)
            with torch.enable_grad():
                y = net(xs)
            handle.remove()
            (ga,) = torch.autograd.grad(y, acts[0], cot)
            a = acts[0].detach()
            cam = F.relu((ga.mean(dim=(2, 3, 4), keepdim=True) * a).sum(1, keepdim=True))
            cam = F.interpolate(cam, size=(roi,) * 3, mode="trilinear", align_corners=False)
            out[sl] += cam[0, 0] * w
            assert den is not None
            den[sl] += w
    if den is not None:
        out /= den.clamp(min=1e-12)
    else:
        out.abs_()
    return pred, out


class _Budget(RuntimeError):
    pass


def captum(net: nn.Module, roi: int, vol: np.ndarray, body: np.ndarray, method: str, steps: int) -> Tensor:
    """What a user writes today: Captum on a forward function around MONAI's sliding_window_inference."""
    from captum.attr import IntegratedGradients, Saliency
    from monai.inferers import sliding_window_inference

    mask = torch.from_numpy(body).float()

    def forward(x: Tensor) -> Tensor:
        y = sliding_window_inference(x, (roi,) * 3, 1, net, overlap=0.25, mode="gaussian")
        return (y[:, 0] * mask).sum(dim=(1, 2, 3))

    x = torch.from_numpy(vol)[None, None]
    if method == "saliency":
        return Saliency(forward).attribute(x, abs=True)
    return IntegratedGradients(forward).attribute(x, baselines=0.0, n_steps=steps, internal_batch_size=1)


# ------------------------------------------------------------------------------------------- memory children
def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
        "not enough memory" in str(exc) or "can't allocate" in str(exc) or "allocate" in str(exc).lower()))


def run_case(c: dict[str, Any], data: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """One case in this process: time, peak resident set above the resting one, and how it ended."""
    shape = tuple(c["shape"])
    if shape not in data:
        data.clear()
        data[shape] = ct_volume(shape)
    vol, body = data[shape]
    net = build_net()
    roi = int(c["roi"])
    xw = torch.from_numpy(np.ascontiguousarray(vol[:roi, :roi, :roi]))[None, None].requires_grad_(True)
    torch.autograd.grad(net(xw).sum(), xw)  # warm-up: the kernels' first call, not counted
    del xw
    windows = {"n": 0}
    last: dict[str, int] = {}
    stop_after = c.get("stop_after")

    def progress(done: int, total: int, message: str) -> None:
        m = re.match(r"(.*windows) (\d+)/(\d+)$", message)
        if m:
            what, d = m.group(1), int(m.group(2))
            prev = last.get(what, 0)
            windows["n"] += d - prev if d >= prev else d
            last[what] = d

    def cancel() -> bool:
        return stop_after is not None and windows["n"] >= stop_after

    limit = None
    previous = resource.getrlimit(resource.RLIMIT_AS)
    if c.get("limit_gib"):
        rest = _status("VmSize")
        limit = rest + int(float(c["limit_gib"]) * GiB)
        resource.setrlimit(resource.RLIMIT_AS, (limit, previous[1]))
    gc.collect()
    _reset_peak()
    before = _rss()
    t0 = time.perf_counter()
    status, detail = "ok", ""
    try:
        if c["kind"] == "ours":
            att = ours(net, roi, vol, body, c["method"], dict(c.get("params") or {}),
                       progress=progress if stop_after is not None else None,
                       cancel=cancel if stop_after is not None else None)
            detail = f"{att.extras.get('windows', '')}"
            del att
        elif c["kind"] == "plain":
            res = plain(net, roi, vol, body, c["method"])
            del res
        else:
            res_c = captum(net, roi, vol, body, c["method"], int(c.get("steps") or 4))
            del res_c
    except na.Cancelled:
        status, detail = "stopped", f"after {windows['n']} windows"
    except na.MethodError as exc:  # a method that does not apply to this network (CAM needs GAP + linear)
        status, detail = "n/a", str(exc).split(". ")[0]
    except na.MemoryBudgetError as exc:
        need = re.search(r"at least (\d+) bytes", str(exc))
        status, detail = "refused", (f"asks for {int(need.group(1)) / GiB:.2f} GiB" if need else str(exc))
    except Exception as exc:  # noqa: BLE001 - an out-of-memory baseline is a result; anything else is reported
        status, detail = ("oom", f"ran out of memory at +{c['limit_gib']} GiB") if _is_oom(exc) \
            else ("error", f"{type(exc).__name__}: {str(exc)[:200]}")
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_AS, previous)
    gc.collect()
    return {"seconds": seconds, "peak": max(0, peak - before), "status": status, "detail": detail,
            "windows_seen": windows["n"]}


def child_main(payload: str) -> int:
    cases = json.loads(payload)
    data: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
    for c in cases:
        torch.set_num_threads(int(c.get("threads") or 2))
        print(json.dumps(run_case(c, data)), flush=True)
    return 0


def in_children(cases: list[dict[str, Any]], fresh: bool) -> list[dict[str, Any]]:
    """Run ``cases`` in child processes, one each (``fresh``), or else in this process (quick mode: a smoke test,
    whose peaks are then deltas over whatever this process already holds)."""
    if not fresh:
        data: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        return [run_case(c, data) for c in cases]
    groups = [[c] for c in cases]
    out: list[dict[str, Any]] = []
    for group in groups:
        env = {**os.environ, **FIXED_MMAP_THRESHOLD, "OMP_NUM_THREADS": str(group[0].get("threads") or 2)}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(group)],
                              capture_output=True, text=True, timeout=1800, check=False, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        for i, c in enumerate(group):
            if i < len(lines):
                out.append(json.loads(lines[i]))
            else:  # the child died (e.g. killed by the kernel's OOM killer)
                err = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
                out.append({"seconds": float("nan"), "peak": float("nan"), "status": "died",
                            "detail": f"child exited {proc.returncode}: {err[0][:160]}", "windows_seen": 0})
                log(f"  case {c} died: {proc.stderr[-600:]}")
    return out


# ------------------------------------------------------------------------------------------------- the report
@dataclass
class Report:
    machine: dict[str, Any]
    part: str = ""  # the part being measured: sections and goals go to it
    sections: dict[str, list[str]] = field(default_factory=dict)
    goals: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)  # per part: when and how it was measured

    def section(self, text: str) -> None:
        self.sections.setdefault(self.part, []).append(text)

    def goal(self, item: tuple[str, bool]) -> None:
        """``(what, met)``."""
        self.goals.setdefault(self.part, []).append(item)


def _gib(b: float) -> str:
    if b != b:  # nan
        return "—"
    return f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / MiB:.0f} MiB"


def _sec(v: float) -> str:
    """Seconds: to 0.001 s below 1 s, 0.01 s below 10 s, 0.1 s below 100 s, else whole."""
    return "—" if v != v else (f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100
                               else f"{v:.0f}")


def _met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def shape_label(shape: Sequence[int]) -> str:
    s = tuple(shape)
    if len(set(s)) == 1:
        return f"{s[0]}^3"
    return "x".join(map(str, reversed(s))) + f" (numpy {s})"


def windows_of(shape: Sequence[int], roi: int) -> int:
    from napari_attribution.inferers import SlidingWindow

    return SlidingWindow(roi_size=(roi,) * 3, overlap=0.25, mode="gaussian").plan(tuple(shape)).count()


def part_a(cfg: Config, threads: int, report: Report) -> None:
    """Saliency and grad_cam vs the plain loop: interleaved in this process at cube_a, fresh processes at ct."""
    rows = []
    net = build_net()
    cube = (cfg.cube_a,) * 3
    vol, body = ct_volume(cube)
    xw = torch.from_numpy(np.ascontiguousarray(vol[:cfg.roi, :cfg.roi, :cfg.roi]))[None, None].requires_grad_(True)
    torch.autograd.grad(net(xw).sum(), xw)
    for method in ("saliency", "grad_cam"):
        log(f"A: {method} at {shape_label(cube)}")
        t_ours: list[float] = []
        t_plain: list[float] = []
        for r in range(cfg.repeats):
            order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
            for side in order:
                gc.collect()
                t0 = time.perf_counter()
                if side == "ours":
                    ours(net, cfg.roi, vol, body, method, {"memory_budget": None})
                    t_ours.append(time.perf_counter() - t0)
                else:
                    plain(net, cfg.roi, vol, body, method)
                    t_plain.append(time.perf_counter() - t0)
        a, b = statistics.median(t_ours), statistics.median(t_plain)
        rows.append((method, shape_label(cube), windows_of(cube, cfg.roi), a, b, None, None,
                     f"median of {cfg.repeats}, interleaved in one process"))
    del vol, body
    gc.collect()
    log(f"A/D: saliency and grad_cam at {shape_label(cfg.ct)} (fresh processes)")
    cases = [{"kind": k, "method": m, "shape": list(cfg.ct), "roi": cfg.roi, "threads": threads,
              "params": {"memory_budget": None}}
             for m, order in (("saliency", ("ours", "plain")), ("grad_cam", ("plain", "ours"))) for k in order]
    res = in_children(cases, fresh=not cfg.quick)
    by = {(c["kind"], c["method"]): r for c, r in zip(cases, res, strict=True)}
    for method in ("saliency", "grad_cam"):
        o, p = by[("ours", method)], by[("plain", method)]
        rows.append((method, shape_label(cfg.ct), windows_of(cfg.ct, cfg.roi), o["seconds"], p["seconds"],
                     o["peak"], p["peak"], "one run each, fresh processes"))
    lines = ["| method | volume | windows | ours (s) | plain (s) | ours / plain | goal | met? | ours peak | plain peak "
             "| timing |", "|---|---|---:|---:|---:|---:|:---:|:---:|---:|---:|---|"]
    for method, label, n, a, b, pa, pb, how in rows:
        ratio = a / b
        ok = ratio <= 1.15
        report.goal((f"A {method} {label}: {ratio:.2f}x of the plain passes (goal <= 1.15x)", ok))
        lines.append(f"| {method} | {label} | {n} | {_sec(a)} | {_sec(b)} | {ratio:.2f}x | <= 1.15x | {_met(ok)} | "
                     f"{_gib(pa) if pa is not None else '—'} | {_gib(pb) if pb is not None else '—'} | {how} |")
    report.section("\n".join(lines))


def part_b(cfg: Config, threads: int, report: Report) -> None:
    """Ours against Captum on a forward function around MONAI's sliding_window_inference."""
    lines = ["| method | volume | windows | ours (s) | Captum (s) | time ours / Captum | ours peak | Captum peak | "
             "memory ours / Captum | time <= 1x | memory <= 0.25x |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|"]
    for n in cfg.cubes_b:
        shape = (n,) * 3
        cases = []
        for method in ("saliency", "integrated_gradients"):
            params = {} if method == "saliency" else {"steps": cfg.ig_steps, "baseline": 0.0}
            for kind in ("ours", "captum"):
                cases.append({"kind": kind, "method": method, "shape": list(shape), "roi": cfg.roi,
                              "threads": threads, "params": params, "steps": cfg.ig_steps,
                              "limit_gib": cfg.limit_gib})
        log(f"B: ours vs Captum at {shape_label(shape)}")
        res = in_children(cases, fresh=not cfg.quick)
        for method in ("saliency", "integrated_gradients"):
            o, c = (res[i] for i, k in enumerate(cases) if k["method"] == method)
            name = method if method == "saliency" else f"integrated_gradients, {cfg.ig_steps} steps"
            label = shape_label(shape)
            if c["status"] == "ok" and o["status"] == "ok":
                tr, mr = o["seconds"] / c["seconds"], o["peak"] / max(1, c["peak"])
                t_ok, m_ok = tr <= 1.0, mr <= 0.25
                cells = (f"{_sec(o['seconds'])} | {_sec(c['seconds'])} | {tr:.2f}x | {_gib(o['peak'])} | "
                         f"{_gib(c['peak'])} | {mr:.3f}x | {_met(t_ok)} | {_met(m_ok)}")
                report.goal((f"B {name} {label}: time {tr:.2f}x of Captum (goal <= 1x)", t_ok))
                report.goal((f"B {name} {label}: memory {mr:.3f}x of Captum (goal <= 0.25x)", m_ok))
            elif o["status"] == "ok":
                m_ok = True
                bound = o["peak"] / (cfg.limit_gib * GiB)
                cells = (f"{_sec(o['seconds'])} | {c['detail'] or c['status']} after {c['seconds']:.0f} s | — | "
                         f"{_gib(o['peak'])} | > +{cfg.limit_gib:g} GiB ({c['status']}; resident peak "
                         f"{_gib(c['peak'])}) | < {bound:.3f}x | — | {_met(m_ok)}")
                report.goal((f"B {name} {label}: Captum ran out of memory at +{cfg.limit_gib:g} GiB, ours "
                                     f"{_gib(o['peak'])} (memory goal <= 0.25x)", m_ok))
            else:
                cells = f"{o['status']}: {o['detail']} | {_sec(c['seconds'])} | — | — | {_gib(c['peak'])} | — | — | —"
                report.goal((f"B {name} {label}: ours did not finish ({o['detail']})", False))
            lines.append(f"| {name} | {label} | {windows_of(shape, cfg.roi)} | {cells} |")
    report.section("\n".join(lines))


C_PARAMS_FULL = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 3},
                 "occlusion": {"window": 32, "stride": 48}, "rise": {"masks": 16},
                 "prediction_difference": {"window": 8, "stride": 40, "samples": 2, "patches": 300},
                 "evidence": {"window": 8, "stride": 40, "patches": 300}}
C_PARAMS_QUICK = {"integrated_gradients": {"steps": 2}, "smoothgrad": {"samples": 2},
                  "occlusion": {"window": 16, "stride": 24}, "rise": {"masks": 4},
                  "prediction_difference": {"window": 4, "stride": 20, "samples": 2, "patches": 300},
                  "evidence": {"window": 4, "stride": 20, "patches": 300}}


#: --quick runs part C for one method of each way through the inferer
QUICK_METHODS = ["saliency", "integrated_gradients", "grad_cam", "occlusion"]


def _params_text(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items()) or "defaults"


def part_c(cfg: Config, threads: int, report: Report, methods: Sequence[str], small: bool = True,
           large: bool = True) -> None:
    quick_params = C_PARAMS_QUICK if cfg.quick else C_PARAMS_FULL
    if small:
        part_c_small(cfg, threads, report, methods, quick_params)
    if large:
        part_c_large(cfg, threads, report, methods, quick_params)


def part_c_small(cfg: Config, threads: int, report: Report, methods: Sequence[str],
                 quick_params: dict[str, dict[str, Any]]) -> None:
    """Every method at cube_c with small_roi windows: time and peak memory."""
    how = {i.name: i.sliding_window for i in na.list_methods()}
    shape = (cfg.cube_c,) * 3
    log(f"C: {len(methods)} methods at {shape_label(shape)}, {cfg.small_roi}^3 windows")
    cases = [{"kind": "ours", "method": m, "shape": list(shape), "roi": cfg.small_roi, "threads": threads,
              "params": quick_params.get(m, {})} for m in methods]
    res = in_children(cases, fresh=not cfg.quick)
    n = windows_of(shape, cfg.small_roi)
    lines = [f"{shape_label(shape)} volume, {cfg.small_roi}^3 windows ({n} windows), memory_budget 2 GiB", "",
             "| method | through the inferer | params | time (s) | peak memory | result |",
             "|---|---|---|---:|---:|---|"]
    for m, r in zip(methods, res, strict=True):
        lines.append(f"| {m} | {how[m]} | {_params_text(quick_params.get(m, {}))} | {_sec(r['seconds'])} | "
                     f"{_gib(r['peak'])} | {r['status']}{': ' + r['detail'] if r['status'] != 'ok' else ''} |")
    report.section("\n".join(lines))


def _asked(r: dict[str, Any]) -> int | None:
    """The budget a refusal asks for (bytes, rounded up to 0.01 GiB), or None."""
    m = re.search(r"asks for ([\d.]+) GiB", r["detail"]) if r["status"] == "refused" else None
    return int(math.ceil(float(m.group(1)) * 100) / 100 * GiB) if m else None


def part_c_large(cfg: Config, threads: int, report: Report, methods: Sequence[str],
                 quick_params: dict[str, dict[str, Any]]) -> None:
    """Each method at the CT-like volume in 2 GiB, stopped after its first windows; a refused one again with the
    budget it asks for."""
    n_ct = windows_of(cfg.ct, cfg.roi)
    stop = n_ct + cfg.extra_windows
    log(f"C: {len(methods)} methods at {shape_label(cfg.ct)}, first {stop} windows")
    cases = [{"kind": "ours", "method": m, "shape": list(cfg.ct), "roi": cfg.roi, "threads": threads,
              "params": quick_params.get(m, {}), "stop_after": stop} for m in methods]
    first = in_children(cases, fresh=not cfg.quick)
    again = [(i, _asked(r)) for i, r in enumerate(first) if _asked(r)]
    if again:
        log(f"C: {len(again)} refused methods again with the budget they ask for")
        retried = in_children([{**cases[i], "params": {**cases[i]["params"], "memory_budget": b}}
                               for i, b in again], fresh=not cfg.quick)
    runs: list[tuple[str, int, dict[str, Any]]] = []
    for i, (m, r) in enumerate(zip(methods, first, strict=True)):
        runs.append((m, BUDGET, r))
        for k, (j, b) in enumerate(again):
            if j == i and b is not None:
                runs.append((m, b, retried[k]))
    lines = [f"{shape_label(cfg.ct)} volume, {cfg.roi}^3 windows ({n_ct} windows); each method stopped through "
             f"`cancel` once it had run {stop} windows (one pass over all windows plus {cfg.extra_windows}), or "
             "finished; a method refused at 2 GiB runs again with the budget it asks for", "",
             "| method | params | memory_budget | ended | windows run | time (s) | peak memory | peak / 2 GiB "
             "| within 2 GiB + 20 % or refused? |",
             "|---|---|---:|---|---:|---:|---:|---:|:---:|"]
    for m, budget, r in runs:
        ended = {"ok": "finished", "stopped": "stopped (cancel)", "refused": f"refused: {r['detail']}",
                 "n/a": f"does not apply: {r['detail']}"}.get(r["status"], f"{r['status']}: {r['detail']}")
        where = f"C {m} {shape_label(cfg.ct)}, memory_budget {budget / GiB:.2f} GiB"
        if r["status"] == "n/a":
            within, ratio = "—", "—"
        elif r["status"] == "refused":
            within, ratio = "refused before running", "—"
            report.goal((f"{where}: refused ({r['detail']})", True))
        elif r["status"] in ("ok", "stopped"):
            q = r["peak"] / BUDGET
            ok = q <= 1.2
            within, ratio = _met(ok), f"{q:.2f}x"
            report.goal((f"{where}: peak {_gib(r['peak'])} = {q:.2f}x of 2 GiB (goal <= 1.2x or refused)", ok))
        else:
            within, ratio = "**NO**", "—"
            report.goal((f"{where}: {r['status']} ({r['detail']})", False))
        lines.append(f"| {m} | {_params_text(quick_params.get(m, {}))} | {budget / GiB:.2f} GiB | {ended} | "
                     f"{r['windows_seen'] or '—'} | {_sec(r['seconds'])} | {_gib(r['peak'])} | {ratio} | {within} |")
    report.section("\n".join(lines))


def part_d(cfg: Config, threads: int, report: Report) -> None:
    """Saliency at the CT-like volume with memory_budget = 2 GiB; when refused, again with the budget it asks for."""
    label = shape_label(cfg.ct)
    n = windows_of(cfg.ct, cfg.roi)
    log(f"D: saliency at {label} in 2 GiB (fresh process)")
    case = {"kind": "ours", "method": "saliency", "shape": list(cfg.ct), "roi": cfg.roi, "threads": threads}
    runs = [(BUDGET, in_children([case], fresh=True)[0])]
    asked = re.search(r"asks for ([\d.]+) GiB", runs[0][1]["detail"]) if runs[0][1]["status"] == "refused" else None
    if asked:
        budget = int(math.ceil(float(asked.group(1)) * 100) / 100 * GiB)
        log(f"D: again with the {budget / GiB:.2f} GiB it asks for")
        runs.append((budget, in_children([{**case, "params": {"memory_budget": budget}}], fresh=True)[0]))
    lines = ["| method | volume | windows | memory_budget | ended | time (s) | peak memory | peak / 2 GiB "
             "| within 2 GiB + 20 %? |", "|---|---|---:|---:|---|---:|---:|---:|:---:|"]
    for budget, r in runs:
        if r["status"] == "ok":
            q = r["peak"] / BUDGET
            ok = q <= 1.2
            lines.append(f"| saliency | {label} | {n} | {budget / GiB:.2f} GiB | finished | {_sec(r['seconds'])} | "
                         f"{_gib(r['peak'])} | {q:.2f}x | {_met(ok)} |")
            report.goal((f"D saliency {label}, memory_budget {budget / GiB:.2f} GiB: peak {_gib(r['peak'])} = "
                         f"{q:.2f}x of 2 GiB (goal <= 1.2x)", ok))
        else:
            lines.append(f"| saliency | {label} | {n} | {budget / GiB:.2f} GiB | {r['status']}: {r['detail']} | "
                         f"{_sec(r['seconds'])} | {_gib(r['peak'])} | — | **NO** |")
            report.goal((f"D saliency {label} within memory_budget {budget / GiB:.2f} GiB: {r['status']} "
                         f"({r['detail']})", False))
    report.section("\n".join(lines))


def where_memory(cfg: Config, budget: float, threads: int) -> None:
    """Where the memory of saliency at the CT-like volume goes: every tensor an operator returns that holds a quarter
    of a float32 scan or more (views left out), with the resident set at that moment and its callers in this package,
    in order."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    torch.set_num_threads(threads)
    vol, body = ct_volume(cfg.ct)
    net = build_net()
    t0 = time.perf_counter()
    base = _rss()
    least = math.prod(cfg.ct)  # a quarter of a float32 scan
    views = ("slice", "select", "detach", "view", "expand", "alias", "lift_fresh", "as_strided", "unsqueeze",
             "squeeze", "permute", "_unsafe_view", "t")

    class Big(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            name = func.__name__.split(".")[0]
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, Tensor) and o.numel() * o.element_size() >= least and name not in views:
                    calls = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-1]
                             if "napari_attribution" in f.filename and "_hooks.py" not in f.filename]
                    print(f"{time.perf_counter() - t0:7.1f} s  resident +{(_rss() - base) / GiB:5.2f} GiB  "
                          f"{func.__name__:24s} {tuple(o.shape)!s:24s} {o.dtype!s:14s} "
                          f"{_gib(o.numel() * o.element_size()):>9s}  {' <- '.join(reversed(calls[-3:]))}",
                          flush=True)
            return out

    _reset_peak()
    try:
        with Big():
            ours(net, cfg.roi, vol, body, "saliency", {"memory_budget": int(budget * GiB)})
        print(f"finished; peak resident set {_gib(_status('VmHWM') - base)} over the resting process")
    except na.MemoryBudgetError as exc:
        print(f"refused: {exc}")


def machine_info(threads: int) -> dict[str, Any]:
    import captum
    import monai

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    ram = _meminfo("MemTotal")
    return {"cpu": cpu, "cores": os.cpu_count(), "ram": ram, "available": _meminfo("MemAvailable"),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "monai": monai.__version__, "captum": captum.__version__, "napari_attribution": na.__version__,
            "threads": threads, "load_before": os.getloadavg(), "date": time.strftime("%Y-%m-%d")}


def _meminfo(key: str) -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


TITLES = {
    "A": "A. Saliency and Grad-CAM against the method's own passes done plainly (goal: ours <= 1.15x)",
    "B": "B. Against Captum on a forward function around MONAI's `sliding_window_inference` (goals: time <= 1x, "
         "peak memory <= 0.25x)",
    "C": "C. Every method through the inferer",
    "D": "D. Saliency at 512x512x300 within memory_budget = 2 GiB (goal: peak <= budget + 20 %)",
}


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram'] / GiB:.0f} GiB RAM, {m['platform']}; python {m['python']}, "
            f"torch {m['torch']}, MONAI {m['monai']}, Captum {m['captum']}, napari-attribution "
            f"{m['napari_attribution']}")


def part_block(report: Report, cfg: Config, part: str) -> str:
    """One part's text: how it was run, its tables, its goals."""
    out = [f"<!-- part {part} -->", f"**{TITLES[part]}**", "", report.runs[part], ""]
    for text in report.sections.get(part, []):
        out += [text, ""]
    goals = report.goals.get(part, [])
    missed = [g for g, ok in goals if not ok]
    out.append(f"Goals met: {len(goals) - len(missed)}, not met: {len(missed)}.")
    out += [f"- not met: {g}" for g in missed]
    out.append(f"<!-- /part {part} -->")
    return "\n".join(out)


def render(report: Report, cfg: Config, parts: str) -> dict[str, str]:
    """The machine line and one block per part run."""
    blocks = {"machine": f"<!-- machine -->\nMachine: {machine_line(report.machine)}.\n<!-- /machine -->"}
    for p in parts:
        blocks[p] = part_block(report, cfg, p)
    return blocks


def write_page(path: Path, blocks: dict[str, str]) -> None:
    """Replace the blocks just measured inside the page's bench_sliding markers; keep the other parts' blocks (from
    an earlier run of other ``--parts``) and everything outside the markers."""
    page = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        inside, tail = rest.split(END, 1)
    else:
        head, inside, tail = page + "\n", "", "\n"
    kept = {}
    for key in ("machine", *"ABCD"):
        tag = "machine" if key == "machine" else f"part {key}"
        m = re.search(f"<!-- {tag} -->.*?<!-- /{tag} -->", inside, flags=re.S)
        if m:
            kept[key] = m.group(0)
    kept.update(blocks)
    body = "\n\n".join(kept[k] for k in ("machine", *"ABCD") if k in kept)
    path.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (< 60 s): a smoke test")
    parser.add_argument("--parts", default="ABCD", help="which parts: letters A-D (default all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default 2; --quick: 1, steady on a shared machine)")
    parser.add_argument("--methods", default=None, help="part C: comma-separated methods (default: every method "
                        "that runs through an inferer)")
    parser.add_argument("--limit-gib", type=float, default=None,
                        help="part B: address space the Captum baseline may add (default 8 GiB)")
    parser.add_argument("--write", type=Path, default=None,
                        help="also write the tables into this page, between its bench_sliding markers")
    parser.add_argument("--c-tables", default="small,large",
                        help="part C: small (128^3 volume), large (512x512x300) or both (default)")
    parser.add_argument("--where-memory", type=float, default=None, metavar="GIB",
                        help="only list the large tensors of saliency at the CT-like volume with this memory_budget")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case is not None:
        return child_main(args.case)
    cfg = QUICK if args.quick else FULL
    if args.limit_gib is not None:
        cfg = Config(**{**cfg.__dict__, "limit_gib": args.limit_gib})
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    if args.where_memory is not None:
        where_memory(cfg, args.where_memory, args.threads)
        return 0
    parts = "".join(dict.fromkeys(p for p in args.parts.upper() if p in "ABCD"))  # in the order given
    every = [i.name for i in na.list_methods() if i.sliding_window]
    methods = args.methods.split(",") if args.methods else (QUICK_METHODS if args.quick else every)
    report = Report(machine=machine_info(args.threads))
    for p in parts:
        report.part = p
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        if p == "A":
            part_a(cfg, args.threads, report)
        elif p == "B":
            part_b(cfg, args.threads, report)
        elif p == "C":
            part_c(cfg, args.threads, report, methods, small="small" in args.c_tables,
                   large="large" in args.c_tables)
        else:
            part_d(cfg, args.threads, report)
        cmd = "benchmarks/bench_sliding.py" + (" --quick" if cfg.quick else "") + (
            f" --parts {parts}" if sorted(parts) != list("ABCD") else "") + (
            f" --c-tables {args.c_tables}" if p == "C" and args.c_tables != "small,large" else "") + (
            f" --methods {args.methods}" if args.methods and p == "C" else "") + f" --threads {args.threads}"
        report.runs[p] = (f"Measured {report.machine['date']} by `.venv/bin/python {cmd}` "
                          f"({'quick' if cfg.quick else 'full'} sizes; this part {(time.perf_counter() - t0) / 60:.1f}"
                          f" min; {args.threads} torch thread{'s' if args.threads > 1 else ''}, "
                          f"OMP_NUM_THREADS={args.threads}; load average {load0:.1f} before, "
                          f"{os.getloadavg()[0]:.1f} after, on {report.machine['cores']} cores).")
        if args.write is not None:  # after every part: a long run leaves what it measured on the page
            write_page(args.write, render(report, cfg, p))
    blocks = render(report, cfg, parts)
    print("\n\n".join(blocks.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
