"""Seed 003 (Zhou & Kainz, arXiv 1801.01693): evidence for and against a decision, "approximately 10 times faster"
than prediction difference analysis (PDA), measured in speed and faithfulness on the 2D and 3D demo tasks, with
ablations of the three candidate causes of the 2D disagreement (window size, patch sampler, conditional-mean
reconstruction).

Every map is cached per (method, settings, case) with the forward passes it took (counted by a hook on the
network) and the seconds of the run that computed it; the metrics (deletion with its random-order reference,
energy in the evidence mask) are cached per map.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import (
    Context,
    Paired,
    Section,
    fmt,
    fmt_ci,
    fmt_p,
    fmt_paired,
    holm,
    paired,
    significant,
    table,
)

KEY = "seed003"
TITLE = "Seed 003: evidence vs prediction difference analysis"
VERSION = "1"       # the report's protocol (scores)
MAP_VERSION = "1"   # the maps (method settings are in the key)


@dataclass(frozen=True)
class Task:
    key: str
    model: str
    label: str
    window: int
    stride: int
    patches: int
    n: int           # cases (full mode)
    n_ceiling: int   # cases with the second PDA seed (the PDA-vs-PDA reference)
    fill: Any        # deletion fill
    fill_text: str


TASKS = {
    "2d": Task("2d", "demo:contrast-phase", "2D contrast phase (96 x 96 CT slice, 3 classes)", 8, 4, 5000, 20, 10,
                "auto", "CT air (-1000 HU, the library's default for a CT classifier)"),
    "3d": Task("3d", "demo:lesion3d", "3D lesion (16 x 28 x 28 CT volume, lesion present)", 4, 2, 5000, 20, 8,
                40.0, "40 HU, the phantom's soft tissue (air, the library's default, turns any deleted region into a "
                "contrast the network reads as a lesion: every order, random included, keeps the deletion AUC "
                "near 1 on lesion cases)"),
}
#: quick mode: one case per task, coarse windows (a few hundred forward passes)
QUICK = {"2d": dict(window=16, stride=16, patches=300), "3d": dict(window=8, stride=8, patches=300)}
#: 2D ablation subset (full mode): the first six portal-venous cases of the 2D task (every third case), the
#: phase in which evidence and PDA part ways in the main comparison
ABLATION_CASES = (2, 5, 8, 11, 14, 17)
ABLATION_WINDOWS = (8, 12, 16, 24)
DELETION_STEPS = 20
SAMPLES = 10

_MODELS: dict[str, Any] = {}


# ---------------------------------------------------------------- cases and maps


def _model(name: str) -> Any:
    import napari_attribution as na

    if name not in _MODELS:
        _MODELS[name] = na.load_model(name)
    return _MODELS[name]


def case_seed(base: int, task: str, i: int) -> int:
    return int(np.random.SeedSequence([base, 3, 0 if task == "2d" else 1, i]).generate_state(1)[0])


def make_case(task: str, base: int, i: int) -> Any:
    """Case ``i`` of ``task``: a phantom (image, label, evidence mask). 2D: the three phases in turn; 3D: a
    lesion in every case (the mask is the lesion, the target class "lesion")."""
    from napari_attribution.models.demo import DEMO_MODELS

    seed = case_seed(base, task, i)
    if task == "2d":
        return DEMO_MODELS["contrast-phase"].generator(seed, i % 3)
    return DEMO_MODELS["lesion3d"].generator(seed, lesion=True)


def _encode(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, np.float32)
    return {"shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def decode(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["b64"]), np.float32).reshape(d["shape"])


def _patches_from(task: str, base: int, n: int) -> list[np.ndarray]:
    """``n`` other phantoms of the task (seeds disjoint from the cases'), for the patch model's fit."""
    return [make_case(task, base + 7919, 1000 + j).image for j in range(n)]


def method_params(spec: dict[str, Any], task: str, base: int) -> tuple[str, dict[str, Any]]:
    """``spec``: method ("pda", "evidence", "screened"), window, stride, patches, padding, samples, seed,
    train_images (patch model also fitted on that many other phantoms)."""
    p: dict[str, Any] = {"window": spec["window"], "stride": spec["stride"], "patches": spec["patches"],
                         "padding": spec.get("padding", 2), "seed": spec.get("seed", 0)}
    if spec.get("train_images"):
        p["patches_from"] = _patches_from(task, base, int(spec["train_images"]))
    if spec["method"] == "pda":
        return "prediction_difference", {**p, "samples": spec.get("samples", SAMPLES)}
    if spec["method"] == "sample":
        return "evidence", {**p, "mode": "conditional_sample"}
    if spec["method"] == "screened":
        return "evidence", {**p, "mode": "screened", "screen": spec.get("screen", 0.5)}
    return "evidence", {**p, "mode": "conditional_mean"}


def compute_map(model_name: str, image: np.ndarray, target: int, method: str, params: dict[str, Any]
                ) -> dict[str, Any]:
    """One map, its forward passes (images through the network, counted by a hook) and the seconds of the
    explanation alone (the patch model is fitted before the clock starts, by an untimed first-order run that
    shares it, so both methods are timed on their window loops)."""
    import torch

    import napari_attribution as na

    loaded = _model(model_name)
    na.explain(loaded, image, "evidence", target, params={**{k: v for k, v in params.items() if k != "samples"},
                                                          "mode": "taylor"})
    count = [0]

    def hook(_m: Any, inputs: tuple[Any, ...], _o: Any) -> None:
        count[0] += int(inputs[0].shape[0])

    handle = loaded.module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            res = na.explain(loaded, image, method, target, params=params)
            sec = time.perf_counter() - t0
    finally:
        handle.remove()
    return {"map": _encode(res.data), "forwards": count[0], "explain_seconds": sec,
            "windows": int(res.extras.get("windows", 0))}


def score_map(model_name: str, image: np.ndarray, target: int, data: np.ndarray, mask: np.ndarray, seed: int,
              steps: int, fill: Any = "auto") -> dict[str, Any]:
    """Deletion AUC (voxels in descending evidence order to the modality's background; lower is better) with
    the library's random-order reference (mean AUC of 4 random orders and the 95 % band of one more), and the
    positive evidence's share inside the evidence mask (higher is better; chance = the mask's share)."""
    import napari_attribution as na

    loaded = _model(model_name)
    d = na.evaluate(loaded, image, data, "deletion", target, steps=steps, seed=seed, baseline=fill)
    e = na.evaluate(loaded, image, data, "energy_in_mask", target, mask=mask)
    return {"deletion": float(d.value), "random": float(d.details["random_auc"]),
            "band": float(d.details["random_band"]), "energy": float(e.value), "chance": float(e.details["chance"])}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.ravel(), b.ravel()).statistic)


class Runner:
    """Maps and scores of one task through the context's cache."""

    def __init__(self, ctx: Context, task: Task, settings: dict[str, Any]) -> None:
        self.ctx, self.task, self.settings = ctx, task, settings
        self.cases: dict[int, Any] = {}

    def case(self, i: int) -> Any:
        if i not in self.cases:
            self.cases[i] = make_case(self.task.key, self.ctx.seed, i)
        return self.cases[i]

    def result(self, i: int, **spec: Any) -> dict[str, Any]:
        spec = {**self.settings, **spec}
        c = self.case(i)
        name, params = method_params(spec, self.task.key, self.ctx.seed)
        key = (KEY, "map", MAP_VERSION, self.task.model, i, self.ctx.seed, tuple(sorted(spec.items())))
        out = dict(self.ctx.timed(key, lambda: compute_map(self.task.model, c.image, int(c.label), name, params)))
        skey = (KEY, "score", VERSION, self.task.model, i, self.ctx.seed, tuple(sorted(spec.items())),
                DELETION_STEPS, str(self.task.fill))
        data = decode(out["map"])
        out.update(self.ctx.cache.get(skey, lambda: score_map(self.task.model, c.image, int(c.label), data, c.mask,
                                                              case_seed(self.ctx.seed, "score", i),
                                                              DELETION_STEPS, self.task.fill)))
        out["data"] = data
        return out


# ---------------------------------------------------------------- statistics helpers


def _ratio_ci(num: list[float], den: list[float]) -> str:
    r = [a / b for a, b in zip(num, den, strict=True) if b > 0]
    return fmt_ci(r, 1) + "x"


def _better_than_random(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """Cases whose deletion AUC is below (better) / above (worse) the random-order band."""
    better = sum(r["deletion"] < r["random"] - r["band"] for r in rows)
    worse = sum(r["deletion"] > r["random"] + r["band"] for r in rows)
    return better, worse


def task_measure(ctx: Context, task: Task) -> dict[str, Any]:
    """The main comparison on one task: PDA (S = 10), evidence (conditional mean) and the screened mode on every
    case; PDA with a second seed on the first ``n_ceiling`` cases."""
    settings = {"window": task.window, "stride": task.stride, "patches": task.patches}
    n, n_ceil = task.n, task.n_ceiling
    if ctx.quick:
        settings = dict(QUICK[task.key])
        n, n_ceil = 1, 1
    run = Runner(ctx, task, settings)
    rows: dict[str, list[dict[str, Any]]] = {"pda": [], "evidence": [], "screened": [], "sample": [],
                                             "pda_seed1": []}
    for i in range(n):
        ctx.log(f"   {KEY} {task.key} case {i + 1}/{n}")
        rows["pda"].append(run.result(i, method="pda"))
        rows["evidence"].append(run.result(i, method="evidence"))
        rows["screened"].append(run.result(i, method="screened"))
        rows["sample"].append(run.result(i, method="sample"))
        if i < n_ceil:
            rows["pda_seed1"].append(run.result(i, method="pda", seed=1))
    for name in ("evidence", "screened", "sample", "pda_seed1"):
        for r, ref in zip(rows[name], rows["pda"], strict=False):
            r["rho_pda"] = spearman(r["data"], ref["data"])
    for r in rows["pda"]:
        r["rho_pda"] = 1.0
    labels = [int(run.case(i).label) for i in range(n)]
    return {"rows": rows, "settings": settings, "n": n, "n_ceiling": n_ceil, "labels": labels,
            "examples": [(run.case(0).image, run.case(0).mask)]}


def task_tests(m: dict[str, Any]) -> list[tuple[str, Paired]]:
    """One family per task, Holm-corrected: speed, faithfulness by deletion (against PDA and against the random
    order), energy in the mask (against PDA and chance), agreement with PDA against PDA's own seed-to-seed
    agreement."""
    rows = m["rows"]
    ev, pda, c1, sm = rows["evidence"], rows["pda"], rows["pda_seed1"], rows["sample"]
    k = len(c1)
    tests = [
        ("seconds: evidence vs PDA (lower is better)",
         paired([r["seconds_explain"] for r in ev], [r["seconds_explain"] for r in pda], higher_is_better=False)),
        ("deletion AUC: evidence vs PDA (lower is better)",
         paired([r["deletion"] for r in ev], [r["deletion"] for r in pda], higher_is_better=False)),
        ("deletion AUC: evidence vs random order (lower is better)",
         paired([r["deletion"] for r in ev], [r["random"] for r in ev], higher_is_better=False)),
        ("deletion AUC: PDA vs random order (lower is better)",
         paired([r["deletion"] for r in pda], [r["random"] for r in pda], higher_is_better=False)),
        ("energy in mask: evidence vs PDA (higher is better)",
         paired([r["energy"] for r in ev], [r["energy"] for r in pda])),
        ("energy in mask: evidence vs chance (higher is better)",
         paired([r["energy"] for r in ev], [r["chance"] for r in ev])),
        (f"Spearman with PDA: evidence vs PDA with another seed (higher is better; first {k} cases)",
         paired([r["rho_pda"] for r in ev[:k]], [r["rho_pda"] for r in c1])),
        ("deletion AUC: one-sample evidence vs PDA (lower is better)",
         paired([r["deletion"] for r in sm], [r["deletion"] for r in pda], higher_is_better=False)),
        ("deletion AUC: one-sample evidence vs random order (lower is better)",
         paired([r["deletion"] for r in sm], [r["random"] for r in sm], higher_is_better=False)),
        ("deletion AUC: one-sample evidence vs conditional-mean evidence (lower is better)",
         paired([r["deletion"] for r in sm], [r["deletion"] for r in ev], higher_is_better=False)),
    ]
    holm([t for _, t in tests])
    return tests


# ---------------------------------------------------------------- 2D ablation


def ablation_variants(task: Task) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(cause, variant, evidence-side spec, PDA-side spec): each varies one cause from the default
    (window 8, stride 4, 5000 patches of the image, frame 2, conditional mean vs 10 samples)."""
    base = {"window": task.window, "stride": task.stride, "patches": task.patches}
    out: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
    for w in ABLATION_WINDOWS:
        s = {**base, "window": w, "stride": w // 2}
        out.append(("window", f"window {w}, stride {w // 2}" + (" (default)" if w == task.window else ""),
                    {**s, "method": "evidence"}, {**s, "method": "pda"}))
    for label, extra in (("frame 4 voxels (instead of 2)", {"padding": 4}),
                         ("20 000 patches, image + 8 other phantoms", {"patches": 20000, "train_images": 8})):
        s = {**base, **extra}
        out.append(("patch sampler", label, {**s, "method": "evidence"}, {**s, "method": "pda"}))
    for label, spec in (("conditional mean, 1 pass per window (evidence)", {"method": "evidence"}),
                        ("1 conditional sample per window", {"method": "pda", "samples": 1, "seed": 1}),
                        ("3 conditional samples per window", {"method": "pda", "samples": 3, "seed": 1}),
                        ("10 conditional samples, another seed (PDA)", {"method": "pda", "seed": 1})):
        out.append(("reconstruction", label, {**base, **spec}, {**base, "method": "pda"}))
    return out


def ablation_measure(ctx: Context, task: Task) -> list[dict[str, Any]]:
    run = Runner(ctx, task, {})
    out = []
    for cause, label, ev_spec, pda_spec in ablation_variants(task):
        ctx.log(f"   {KEY} ablation: {cause}, {label}")
        ev_rows, pda_rows = [], []
        for i in ABLATION_CASES:
            e = run.result(i, **ev_spec)
            p = run.result(i, **pda_spec)
            e["rho_pda"] = spearman(e["data"], p["data"])
            ev_rows.append(e)
            pda_rows.append(p)
        out.append({"cause": cause, "label": label, "ev": ev_rows, "pda": pda_rows})
    return out


# ---------------------------------------------------------------- report


def _main_table(m: dict[str, Any]) -> str:
    rows = m["rows"]
    pda_t = [r["seconds_explain"] for r in rows["pda"]]
    out = []
    names = {"pda": f"PDA, {SAMPLES} samples/window (seed 0: the reference)",
             "evidence": "evidence, conditional mean (1 pass/window)",
             "screened": "evidence, screened (0.5 exact)",
             "sample": "evidence, one conditional sample/window (`mode=\"conditional_sample\"`)",
             "pda_seed1": f"PDA, another seed (first {m['n_ceiling']} cases)"}
    for name, label in names.items():
        rs = rows[name]
        t = [r["seconds_explain"] for r in rs]
        b, w = _better_than_random(rs)
        speed = "1x" if name == "pda" else _ratio_ci(pda_t[:len(t)], t)
        out.append([label, len(rs), fmt(float(np.mean([r["forwards"] for r in rs])), 0),
                    fmt_ci(t, 2), speed, "1 (itself)" if name == "pda" else fmt_ci([r["rho_pda"] for r in rs]),
                    fmt_ci([r["deletion"] for r in rs]), fmt_ci([r["random"] for r in rs]), f"{b} / {w}",
                    fmt_ci([r["energy"] for r in rs]), fmt_ci([r["chance"] for r in rs])])
    return table(["map", "n", "forward passes / case", "seconds (mean [95 % CI])", "speed-up vs PDA (time ratio)",
                  "Spearman with PDA (higher: closer)", "deletion AUC (lower is better)",
                  "random-order deletion AUC (reference)", "cases better / worse than random (95 % band)",
                  "energy in evidence mask (higher is better)", "chance (mask share)"], out)


def _by_class_table(m: dict[str, Any], names: tuple[str, ...]) -> str:
    """The main comparison split by the target class (2D: the phase)."""
    rows = m["rows"]
    out = []
    for k in sorted(set(m["labels"])):
        idx = [i for i, lab in enumerate(m["labels"]) if lab == k]
        ev = [rows["evidence"][i] for i in idx]
        pda = [rows["pda"][i] for i in idx]
        b, w = _better_than_random(ev)
        bp, wp = _better_than_random(pda)
        out.append([names[k] if k < len(names) else k, len(idx), fmt_ci([r["rho_pda"] for r in ev], 2),
                    fmt_ci([r["deletion"] for r in ev], 2), fmt_ci([r["deletion"] for r in pda], 2),
                    fmt_ci([r["random"] for r in ev], 2), f"{b} / {w}", f"{bp} / {wp}",
                    fmt_ci([r["energy"] for r in ev], 2), fmt_ci([r["energy"] for r in pda], 2)])
    return table(["target class", "n", "Spearman evidence-PDA", "deletion AUC evidence (lower is better)",
                  "deletion AUC PDA", "random-order AUC (reference)", "evidence better / worse than random",
                  "PDA better / worse than random", "energy in mask, evidence (higher is better)",
                  "energy in mask, PDA"], out)


def _tests_table(tests: list[tuple[str, Paired]]) -> str:
    return table(["comparison (a vs b)", "mean a - b [95 % CI], wins/ties/losses, Wilcoxon p (Holm)",
                  "effect (rank-biserial)", "direction of a"],
                 [[name, fmt_paired(t), fmt(t.effect, 2), t.direction + (" (significant)" if significant(t)
                                                                          else " (not significant)")]
                  for name, t in tests])


def _ablation_table(abl: list[dict[str, Any]]) -> tuple[str, list[tuple[str, Paired]]]:
    rows = []
    tests: list[tuple[str, Paired]] = []
    default_ev = next(a for a in abl if a["cause"] == "reconstruction")["ev"]
    for a in abl:
        ev, pda = a["ev"], a["pda"]
        b, w = _better_than_random(ev)
        bp, wp = _better_than_random(pda)
        rows.append([a["cause"], a["label"], fmt(float(np.mean([r["forwards"] for r in ev])), 0),
                     fmt_ci([r["rho_pda"] for r in ev], 2), fmt_ci([r["deletion"] for r in ev], 2),
                     fmt_ci([r["deletion"] for r in pda], 2), fmt_ci([r["random"] for r in ev], 2),
                     f"{b} / {w}", f"{bp} / {wp}"])
        if a["ev"] is not default_ev:
            tests.append((f"{a['cause']}: {a['label']} vs evidence at the defaults (deletion AUC, lower is better)",
                          paired([r["deletion"] for r in ev], [r["deletion"] for r in default_ev],
                                 higher_is_better=False)))
    holm([t for _, t in tests])
    md = table(["cause varied", "variant (evidence side)", "forward passes / case",
                "Spearman with PDA at the same setting", "deletion AUC of the variant (lower is better)",
                "deletion AUC of PDA at the same setting", "random-order deletion AUC (reference)",
                "variant better / worse than random", "PDA better / worse than random"], rows)
    return md, tests


def _figure(ctx: Context, measured: dict[str, dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path, link = ctx.figure("seed003_maps.png")
    fig, axes = plt.subplots(2, 4, figsize=(12, 6))
    for r, (tk, m) in enumerate(measured.items()):
        img, mask = m["examples"][0]
        mid = (lambda a: a[a.shape[0] // 2]) if img.ndim == 3 else (lambda a: a)
        axes[r, 0].imshow(mid(img), cmap="gray", vmin=-200, vmax=400)
        axes[r, 0].contour(mid(mask), colors="y", linewidths=0.6)
        axes[r, 0].set_title(f"{tk}: case 0, evidence mask (yellow)", fontsize=8)
        for c, name in enumerate(("pda", "pda_seed1", "evidence")):
            data = mid(m["rows"][name][0]["data"])
            v = float(np.abs(data).max()) or 1.0
            axes[r, c + 1].imshow(data, cmap="bwr", vmin=-v, vmax=v)
            axes[r, c + 1].set_title({"pda": "PDA (seed 0)", "pda_seed1": "PDA (seed 1)",
                                      "evidence": "evidence (conditional mean)"}[name], fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle("Signed maps (red: evidence for the class, blue: against); 3D: middle slice", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return link


def _flatten(m: dict[str, Any]) -> None:
    for rs in m["rows"].values():
        for r in rs:
            r["seconds_explain"] = float(r["explain_seconds"])


def run(ctx: Context) -> Section:
    t0 = time.perf_counter()
    measured: dict[str, dict[str, Any]] = {}
    tests: dict[str, list[tuple[str, Paired]]] = {}
    abl = None
    for tk, task in TASKS.items():
        m = task_measure(ctx, task)
        _flatten(m)
        measured[tk] = m
        tests[tk] = task_tests(m)
        if tk == "2d" and not ctx.quick:
            abl = ablation_measure(ctx, task)
    link = _figure(ctx, measured)
    md, verdict, summary = render(ctx, measured, tests, abl, link)
    ctx.log(f"   {KEY}: {time.perf_counter() - t0:.0f} s")
    return Section(KEY, TITLE, md, verdict, summary, figures=[link])


def _agg(m: dict[str, Any], name: str, field: str) -> float:
    return float(np.mean([r[field] for r in m["rows"][name]]))


def render(ctx: Context, measured: dict[str, dict[str, Any]], tests: dict[str, list[tuple[str, Paired]]],
           abl: list[dict[str, Any]] | None, link: str) -> tuple[str, str, str]:
    parts = [
        "**What the paper claims.** Zhou & Kainz (arXiv 1801.01693) \"illustrate the evidence for or against a "
        "classifier's decision in input pixel space approximately 10 times faster than previous methods\" — the "
        "previous method being prediction difference analysis (PDA, Zintgraf et al.) — with explanations that are "
        "\"less prone to noise\". The paper's algorithm, data and timings are not available; `evidence` is our "
        "reconstruction (design: methods.md §A4.1): PDA's weight of evidence with the 10 conditional samples per "
        "window replaced by one evaluation at the window's conditional mean given its frame. The claim tested "
        "here: about 10x faster than PDA at the same window, stride and input, with comparable (equally "
        "faithful) explanations.",
        "",
        "**How we measured it.** "
        + ("Quick mode: one case per task at a coarse window (a smoke run; the numbers below are not the "
           "report's). " if ctx.quick else "")
        + "Tasks: " + "; ".join(
            f"{t.label} on `{t.model}`, {measured[k]['n']} cases, window {measured[k]['settings']['window']} at "
            f"stride {measured[k]['settings']['stride']}, patch model on {measured[k]['settings']['patches']} "
            f"patches of the explained image, frame 2" for k, t in TASKS.items())
        + f". 2D cases cycle through the three phases, 3D cases all have a lesion; the target is the true class; "
        f"case seeds derive from base seed {ctx.seed}. Each case: PDA ({SAMPLES} conditional samples per window, "
        "seed 0, the reference), `evidence` (conditional mean), `evidence(mode=\"screened\")` and, on the first "
        "cases, PDA with seed 1 (other fitting patches and other samples: how well PDA agrees with itself, the "
        "ceiling for any approximation of it). Speed: forward passes (images through the network, counted by a "
        "hook) and seconds of the explanation alone, on one torch thread, in the same run (the patch model is "
        "fitted before the clock starts; it is shared). Faithfulness: deletion AUC (voxels replaced in "
        f"descending order of the signed map, {DELETION_STEPS} steps; lower is better; fill: 2D "
        f"{TASKS['2d'].fill_text}; 3D {TASKS['3d'].fill_text}) against "
        "the library's random-order reference (mean of 4 random voxel orders; a case counts as better / worse "
        "than random outside the 95 % band of one more random order), and the positive evidence's share inside "
        "the evidence mask (2D: aorta, IVC, portal vein, liver, kidneys; 3D: the lesion; higher is better, "
        "chance = the mask's share of the image). Agreement: Spearman rank correlation of the voxel maps with "
        "the reference PDA map. Paired comparisons: Wilcoxon signed-rank, one Holm family per task.",
        "",
        f"![Signed maps of PDA (two seeds) and evidence]({link})",
        "",
    ]
    for tk, task in TASKS.items():
        m = measured[tk]
        parts += [f"**{task.label}** (`{task.model}`)", "", _main_table(m), "", _tests_table(tests[tk]), ""]
        if len(set(m["labels"])) > 1:
            from napari_attribution.models.demo import PHASES

            parts += ["By target class (the same maps; no test, descriptive):", "",
                      _by_class_table(m, tuple(PHASES)), ""]
    verdict_parts: list[str] = []
    faithful: dict[str, bool] = {}
    for tk in TASKS:
        m = measured[tk]
        t = dict(tests[tk])
        ev_del = t["deletion AUC: evidence vs PDA (lower is better)"]
        ev_rand = t["deletion AUC: evidence vs random order (lower is better)"]
        # comparable faithfulness: not significantly worse than PDA, and better than a random order
        faithful[tk] = not (significant(ev_del) and ev_del.direction == "worse") and \
            significant(ev_rand) and ev_rand.direction == "better"
        ev, pda = m["rows"]["evidence"], m["rows"]["pda"]
        speed = np.mean([p["seconds_explain"] / e["seconds_explain"] for p, e in zip(pda, ev, strict=True)])
        fw = np.mean([p["forwards"] / e["forwards"] for p, e in zip(pda, ev, strict=True)])
        b, w = _better_than_random(ev)
        verdict_parts.append(
            f"{tk.upper()}: evidence is {speed:.1f}x faster than PDA by time ({fw:.1f}x fewer forward passes); "
            f"Spearman with PDA {_agg(m, 'evidence', 'rho_pda'):.2f} (PDA with another seed: "
            f"{_agg(m, 'pda_seed1', 'rho_pda'):.2f}); deletion AUC {_agg(m, 'evidence', 'deletion'):.3f} vs PDA "
            f"{_agg(m, 'pda', 'deletion'):.3f} and random order {_agg(m, 'evidence', 'random'):.3f} (lower is "
            f"better; evidence better / worse than random in {b} / {w} of {len(ev)} cases; evidence vs PDA "
            f"p {fmt_p(ev_del.p_adj)}, vs random p {fmt_p(ev_rand.p_adj)}, Holm); energy in the mask "
            f"{_agg(m, 'evidence', 'energy'):.2f} vs PDA {_agg(m, 'pda', 'energy'):.2f} (chance "
            f"{_agg(m, 'evidence', 'chance'):.2f})")
    if abl is not None:
        md, abl_tests = _ablation_table(abl)
        parts += [
            f"**2D: the three candidate causes, varied one at a time** ({len(ABLATION_CASES)} portal-venous 2D cases, "
            f"numbers {', '.join(map(str, ABLATION_CASES))}; each row "
            "changes one thing from the defaults; the PDA side uses the same window and patch model, 10 samples, "
            "seed 0; \"Spearman with PDA\" compares the variant's map with that PDA map; paired tests against "
            "evidence at the defaults, Holm over the rows).",
            "",
            md,
            "",
            _tests_table(abl_tests),
            "",
            _ablation_reading(abl),
            "",
        ]
    if faithful["2d"] and faithful["3d"]:
        verdict = "reproduced"
    elif faithful["2d"] or faithful["3d"]:
        verdict = "reproduced in part"
    else:
        verdict = "not reproduced"
    where = {True: "reproduced", False: "not reproduced"}
    summary = (f"About 10x faster than PDA in both tasks; comparably faithful in 3D: {where[faithful['3d']]}, "
               f"in 2D: {where[faithful['2d']]}.")
    parts += [f"**Verdict: {verdict}** (speed reproduced in both tasks; faithfulness {where[faithful['3d']]} in "
              f"3D and {where[faithful['2d']]} in 2D). " + " ".join(s + "." for s in verdict_parts)]
    return "\n".join(parts), verdict, summary


def _ablation_reading(abl: list[dict[str, Any]]) -> str:
    """What the ablation shows, from its numbers: for each cause, the variant whose evidence side comes closest
    to PDA in deletion AUC, and whether any variant is better than the random order."""
    lines = []
    for cause in ("window", "patch sampler", "reconstruction"):
        rows = [a for a in abl if a["cause"] == cause and not a["label"].startswith("10 conditional")]
        best = min(rows, key=lambda a: np.mean([r["deletion"] for r in a["ev"]]))
        d = np.mean([r["deletion"] for r in best["ev"]])
        rnd = np.mean([r["random"] for r in best["ev"]])
        rho = np.mean([r["rho_pda"] for r in best["ev"]])
        lines.append(f"{cause}: best variant \"{best['label']}\", deletion AUC {d:.2f} vs random {rnd:.2f}, "
                     f"Spearman with PDA {rho:.2f}")
    return "Best variant per cause (by the evidence side's mean deletion AUC): " + "; ".join(lines) + "."


__all__ = ["KEY", "TITLE", "run", "make_case", "compute_map", "score_map", "spearman", "Runner", "TASKS"]
