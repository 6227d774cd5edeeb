"""Seed 001 (Chatterjee et al., ISMRM 2021 #2400; TorchEsegeta; methods.md §A2): classification attribution
methods extended to 3D segmentation, compared with infidelity and sensitivity, on vessel segmentation.

The method x metric table on the vessel segmenter (``demo:vessel-seg``, target: the predicted vessels): the input
attributions TorchEsegeta's 3D configuration runs, and its layer attributions at the matching layers of the demo
UNet (``layer_conductance`` at ``enc2`` for TorchEsegeta's ``Conv2``, ``layer_activation`` at ``bottleneck`` for
``Conv5``, Grad-CAM at ``enc1`` for ``Conv1``), each with infidelity and max-sensitivity and, as the known-answer
column, the energy inside the true vessels. The input attributions' numbers are the ``tasks`` section's (same cases,
same cache entries, :func:`validation.tasks.method_result`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import Context, Paired, Section, fmt, fmt_ci, fmt_p, fmt_paired, holm, mean_ci, paired, significant, table
from .tasks import (
    TASKS,
    MethodPlan,
    _engine,
    _key,
    case,
    case_chance,
    case_reference,
    case_seeds,
    method_result,
    model,
    settings,
    target_of,
)

KEY = "seed001"
TITLE = "Seed 001: method x metric table on the vessel segmenter (Chatterjee et al.)"
VERSION = "seed001-v1"
TASK = "vessel-seg"

#: metrics of the seed's table: the known answer (energy in the vessels) and the paper's pair
METRICS = ("energy", "infidelity", "max_sensitivity")
SEED_METRICS = ("energy", "pointing", "infidelity", "max_sensitivity")

#: infidelity's perturbation scales compared (sigma as a fraction of the scan's range, ``normalize=True``):
#: TorchEsegeta's 1e-4 (methods.md §A2.4; there with ``normalize=False``), an intermediate 0.005, and the
#: library's default 0.05 (the tasks section's)
SCALES = (1e-4, 0.005)


@dataclass(frozen=True)
class Row:
    plan: MethodPlan
    kind: str  # "input" or "layer"
    torchesegeta: str  # what it stands for in TorchEsegeta's configuration
    reuse: bool  # the tasks section's cache entry (same plan and metrics)
    cases: int | None = None  # None: the seed's n


def _rows() -> list[Row]:
    task = TASKS[TASK]
    by_name = {p.name: p for p in task.methods}
    rows = [
        Row(by_name["saliency"], "input", "Saliency", True),
        Row(by_name["input_x_gradient"], "input", "InputXGradient", True),
        Row(MethodPlan("integrated_gradients", (("steps", 8),), metrics=SEED_METRICS), "input",
            "Integrated Gradients (50 steps there)", False, cases=5),
        Row(by_name["guided_backprop"], "input", "Guided Backprop", True),
        Row(by_name["deconvnet"], "input", "Deconvolution", True),
        Row(by_name["guided_grad_cam"], "input", "Guided Grad-CAM (at Conv5 there)", True),
        Row(by_name["occlusion"], "input", "Occlusion (1x11x11x11, stride 3 there)", True, cases=5),
        Row(by_name["grad_cam"], "layer", "LayerGradCam at the output block (the library's default layer)", True),
        Row(MethodPlan("grad_cam", metrics=SEED_METRICS, layer="enc1"), "layer", "LayerGradCam at Conv1", False),
        Row(MethodPlan("layer_conductance", (("steps", 8),), metrics=SEED_METRICS, layer="enc2"), "layer",
            "LayerConductance at Conv2 (50 steps there)", False),
        Row(MethodPlan("layer_activation", metrics=SEED_METRICS, layer="bottleneck"), "layer",
            "LayerActivation at Conv5 (the bottleneck)", False),
    ]
    return rows


QUICK_ROWS = ("saliency", "grad_cam")
#: the reference method of the paired tests (methods.md Part D: "paired Wilcoxon tests against Grad-CAM")
REFERENCE = "`grad_cam` @ dec1"


def _label(row: Row) -> str:
    layer = row.plan.layer or ("dec1" if row.plan.name in ("grad_cam", "guided_grad_cam") else None)
    extra = ", ".join(f"{k} {v}" for k, v in row.plan.params)
    return f"`{row.plan.name}`" + (f" @ {layer}" if layer else "") + (f" ({extra})" if extra else "")


def infidelity_scales(ctx: Context, seed: int, index: int, plan: MethodPlan | None, s: dict[str, Any]
                      ) -> dict[str, float]:
    """Infidelity of one map (``plan``; None: the Gaussian-noise map of :func:`validation.tasks.case_reference`)
    at each scale of :data:`SCALES`, with ``normalize=True`` and the section's number of samples."""

    def run() -> dict[str, float]:
        import napari_attribution as na

        ph = case(TASK, seed, index)
        m = model(TASK)
        tgt = target_of(TASK, ph)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if plan is None:
                data: Any = np.random.default_rng(seed).normal(size=ph.image.shape).astype(np.float32)
            else:
                data = na.explain(m, ph.image, plan.name, tgt, layer=plan.layer, params=plan.kwargs)
            ctxm, batch = _engine(TASK)
            out = {}
            with ctxm:
                for sigma in SCALES:
                    sc = na.evaluate(m, ph.image, data, "infidelity", tgt, sigma=sigma,
                                     samples=s["infid_samples"], seed=seed, batch=batch)
                    out[f"{sigma:g}"] = sc.value
        return out

    name = "noise" if plan is None else plan.name
    params = () if plan is None else plan.params
    layer = None if plan is None else plan.layer
    return ctx.timed(_key(KEY, VERSION, "scales", seed, index, name, params, layer, SCALES, s), run)


def noise_reference(ctx: Context, seed: int, index: int, s: dict[str, Any]) -> dict[str, Any]:
    """The chance level of energy and the infidelity of the Gaussian-noise map of
    :func:`validation.tasks.case_reference`, without its deletion and insertion curves (quick mode)."""

    def run() -> dict[str, Any]:
        import napari_attribution as na

        ph = case(TASK, seed, index)
        noise = np.random.default_rng(seed).normal(size=ph.image.shape).astype(np.float32)
        ctxm, batch = _engine(TASK)
        with warnings.catch_warnings(), ctxm:
            warnings.simplefilter("ignore")
            sc = na.evaluate(model(TASK), ph.image, noise, "infidelity", target_of(TASK, ph),
                             sigma=s["infid_sigma"], samples=s["infid_samples"], seed=seed, batch=batch)
        return {**case_chance(ctx, TASK, seed, index), "infidelity_noise": sc.value}

    return ctx.timed(_key(KEY, VERSION, "noise", seed, index, s), run)


def _sig_ci(values: list[float]) -> str:
    """"mean [lo, hi]" with four significant digits (infidelity's values are sums of squared logit changes)."""
    m, lo, hi = mean_ci(values)
    return f"{m:.4g} [{lo:.4g}, {hi:.4g}]"


def _friedman(table_: dict[str, list[float]]) -> tuple[float, float, int]:
    """Friedman's test that the methods' values differ (cases as blocks): (p, Kendall's W, n cases)."""
    from scipy.stats import friedmanchisquare

    keys = [k for k, v in table_.items() if v]
    n = min(len(table_[k]) for k in keys) if keys else 0
    if len(keys) < 3 or n < 2:
        return float("nan"), float("nan"), n
    data = [table_[k][:n] for k in keys]
    stat, p = friedmanchisquare(*data)
    w = float(stat / (n * (len(keys) - 1)))
    return float(p), w, n


def run(ctx: Context) -> Section:
    t0 = time.perf_counter()
    task = TASKS[TASK]
    s = settings(ctx, task)
    n = 1 if ctx.quick else (task.faith_cases or task.n_cases)
    seeds = case_seeds(task, ctx.seed, n)
    if ctx.quick:  # one case, two one-pass methods, the paper's pair of metrics
        rows = [Row(MethodPlan(name, metrics=METRICS), "input" if name == "saliency" else "layer", "", False)
                for name in QUICK_ROWS]
        refs = [noise_reference(ctx, sd, i, s) for i, sd in enumerate(seeds)]
    else:
        rows = _rows()
        refs = [case_reference(ctx, TASK, sd, i, s) for i, sd in enumerate(seeds)]
    results: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        k = min(n, row.cases or n)
        out = []
        for i, sd in enumerate(seeds[:k]):
            ctx.log(f"   seed001 case {i + 1}/{k} {_label(row)}")
            mets = row.plan.metrics
            out.append(method_result(ctx, TASK, sd, i, row.plan, s, mets))
        results[_label(row)] = out
    labels = [_label(r) for r in rows]

    def vals(label: str, metric: str) -> list[float]:
        return [float(r[metric]) for r in results[label] if metric in r]

    # paired tests against Grad-CAM at dec1, Holm over the methods, per metric
    tests: dict[str, dict[str, Paired]] = {m: {} for m in METRICS}
    if REFERENCE in results:
        for metric in METRICS:
            hib = metric == "energy"
            fam = []
            for label in labels:
                if label == REFERENCE:
                    continue
                a, b = vals(label, metric), vals(REFERENCE, metric)[:len(vals(label, metric))]
                if len(a) >= 2 and len(a) == len(b):
                    tests[metric][label] = paired(a, b, higher_is_better=hib)
                    fam.append(tests[metric][label])
            holm(fam)
    # energy and infidelity against their references (chance; the noise map), Holm over the methods
    chance = [r["chance_energy"] for r in refs]
    noise_inf = [r["infidelity_noise"] for r in refs]
    vs_ref: dict[str, dict[str, Paired]] = {"energy": {}, "infidelity": {}}
    for metric, ref, hib in (("energy", chance, True), ("infidelity", noise_inf, False)):
        fam = []
        for label in labels:
            a = vals(label, metric)
            if len(a) >= 2:
                vs_ref[metric][label] = paired(a, ref[:len(a)], higher_is_better=hib)
                fam.append(vs_ref[metric][label])
        holm(fam)

    # infidelity's scales: on the first cases, the fast rows (and the noise map), normalize=True
    n_scale = 0 if ctx.quick else 5
    scale_rows = [r for r in rows if (r.cases or n) >= n and r.plan.name != "layer_conductance"]
    scales: dict[str, dict[str, list[float]]] = {f"{sg:g}": {} for sg in SCALES}
    scales[f"{s['infid_sigma']:g}"] = {}
    scale_seconds: list[dict[str, float]] = []
    for row in scale_rows + [None]:
        label = "Gaussian-noise map" if row is None else _label(row)
        for i, sd in enumerate(seeds[:n_scale]):
            got = infidelity_scales(ctx, sd, i, None if row is None else row.plan, s)
            scale_seconds.append(got)
            for key, v in got.items():
                if key in scales:  # not the "seconds" ctx.timed adds
                    scales[key].setdefault(label, []).append(v)
            base = refs[i]["infidelity_noise"] if row is None else results[label][i]["infidelity"]
            scales[f"{s['infid_sigma']:g}"].setdefault(label, []).append(base)

    own = {_label(r) for r in rows if not r.reuse}
    compute = sum(r.get("seconds", 0.0) for lab, v in results.items() if lab in own for r in v)
    shared = sum(r.get("seconds", 0.0) for lab, v in results.items() if lab not in own for r in v)
    compute += sum(float(x.get("seconds", 0.0)) for x in scale_seconds)
    md = _markdown(ctx, rows, results, refs, tests, vs_ref, scales, s, n, n_scale, labels, vals)
    if n_scale:
        link = _figure(ctx, scales)
        md += [f"![infidelity over the noise map's, by perturbation scale]({link})", "",
               "*Infidelity of each map divided by a Gaussian-noise map's on the same case and perturbations "
               f"(mean of {n_scale} cases, log scales; lower is better, 1 = no better than noise), against the "
               "perturbation's sigma as a fraction of the scan's range.*", ""]
    verdict, summary, because = _verdict(rows, results, vs_ref, scales, labels, vals, s,
                                         [r["infidelity_noise"] for r in refs], [r["chance_energy"] for r in refs])
    if ctx.quick:
        because = "Quick mode (one case, no test can reach significance): " + because
    md += ["", f"**Verdict: {verdict}.** {because}", "",
           f"Compute time of this section's own results (its layer rows, integrated gradients and the infidelity "
           f"scales): {compute:.0f} s of wall-clock time on one torch thread, plus {shared:.0f} s for the rows it "
           "shares with the tasks section (as first computed, on a machine shared with other jobs; this run took "
           f"{time.perf_counter() - t0:.0f} s)."]
    return Section(KEY, TITLE, "\n".join(md), verdict, summary)


def _markdown(ctx: Context, rows: list[Row], results: dict[str, list[dict[str, Any]]], refs: list[dict[str, Any]],
              tests: dict[str, dict[str, Paired]], vs_ref: dict[str, dict[str, Paired]],
              scales: dict[str, dict[str, list[float]]], s: dict[str, Any], n: int, n_scale: int,
              labels: list[str], vals: Any) -> list[str]:
    chance = mean_ci([r["chance_energy"] for r in refs])
    noise = [r["infidelity_noise"] for r in refs]
    md = [
        "**What the paper claims.** Chatterjee et al. (ISMRM 2021 #2400, and the TorchEsegeta library that "
        "implements it; methods.md §A2) extend classification attribution methods \"to segmentation tasks\", "
        "\"adapted to 3D models\", and compare them with \"infidelity and sensitivity metrics\", on vessel "
        "segmentation in brain TOF-MRA. They publish no headline numbers (methods.md §A2.4: not available), so "
        "the claim tested here is the qualitative one: the methods give maps of a 3D segmenter's output that "
        "explain it, and infidelity and sensitivity tell the methods apart. TorchEsegeta's own target (the "
        "`threshold_based` wrapper, methods.md §A2.1) has a zero gradient, so its exact setting cannot be "
        "reproduced for the gradient methods; the target here is the sum of the vessel logit over the "
        "predicted vessels (methods.md §1.4, S2).",
        "",
        f"**How we measured it.** The vessel segmenter (`demo:vessel-seg`, 48^3 at 0.6 mm), the tasks section's "
        f"first {n} vessel cases (fresh seeds from 940,000; the slower rows on the first 5). Methods: "
        "TorchEsegeta's 3D input attributions with the library's parameters (TorchEsegeta's in brackets), and "
        "its layer attributions at the demo UNet's matching layers. Metrics: energy in the true vessels (the "
        f"known answer; higher is better; chance = the vessels' share, {fmt(chance[0])}); infidelity "
        f"(Gaussian perturbations of {s['infid_sigma']:g} x the range, {s['infid_samples']} samples, "
        "`normalize=True`, so maps of different scales compare; lower is better; reference: a Gaussian-noise "
        f"map, {_sig_ci(noise)}); max-sensitivity ({s['ms_samples']} re-runs at ± 2 % of the range; lower is "
        "better). The method's map is re-run for max-sensitivity, so the slowest rows have fewer cases. Paired "
        f"Wilcoxon tests of each method against {REFERENCE} (methods.md Part D's protocol) and against the "
        "references (chance; the noise map), Holm-corrected over the methods, per metric.",
        "",
    ]
    headers = ["method", "kind", "TorchEsegeta", "n", "energy in vessels ↑", "infidelity ↓",
               "infidelity / noise map's", "max-sensitivity ↓"]
    trows = []
    by_label = {_label(r): r for r in rows}
    for label in labels:
        row = by_label[label]
        inf = vals(label, "infidelity")
        ratio = [a / b for a, b in zip(inf, noise, strict=False)]
        trows.append([label, row.kind, row.torchesegeta, len(results[label]),
                      fmt_ci(vals(label, "energy")), _sig_ci(inf) if inf else "—",
                      fmt_ci(ratio, 4) if ratio else "—",
                      fmt_ci(vals(label, "max_sensitivity"), 3) if vals(label, "max_sensitivity") else "—"])
    md += [table(headers, trows), ""]
    # paired tests
    prow = []
    for label in labels:
        cells = [label]
        for metric in METRICS:
            t = tests[metric].get(label)
            cells.append(fmt_paired(t, 3 if metric != "infidelity" else 1) if t is not None else
                         ("reference" if label == REFERENCE else "—"))
        for t in (vs_ref["energy"].get(label), vs_ref["infidelity"].get(label)):
            cells.append("—" if t is None else
                         f"{t.direction if significant(t) else 'not shown'} ({t.wins}/{t.ties}/{t.losses}, "
                         f"Holm p {fmt_p(t.p_adj)})")
        prow.append(cells)
    md += [f"Paired comparisons (method minus {REFERENCE}: mean difference [95 % CI], wins / ties / losses in the "
           "metric's direction, Wilcoxon p, Holm over the methods), and against the references:", "",
           table(["method", "energy vs Grad-CAM", "infidelity vs Grad-CAM", "max-sensitivity vs Grad-CAM",
                  "energy vs chance", "infidelity vs noise map"], prow), ""]
    # scales
    srows = []
    for key in sorted(scales, key=float):
        tab = scales[key]
        p, w, k = _friedman({lab: v for lab, v in tab.items() if lab != "Gaussian-noise map"})
        noise_k = tab.get("Gaussian-noise map", [])
        ratios = {lab: np.mean([a / b for a, b in zip(v, noise_k, strict=False)])
                  for lab, v in tab.items() if lab != "Gaussian-noise map" and v}
        lo = min(ratios.values()) if ratios else float("nan")
        hi = max(ratios.values()) if ratios else float("nan")
        best = min(ratios, key=lambda lab: ratios[lab]) if ratios else "—"
        srows.append([f"{float(key):g}", k, f"{fmt(lo, 3)} - {fmt(hi, 3)}", best, fmt_p(p), fmt(w, 2)])
    md += [f"**Does infidelity separate the methods, and at which scale?** On the first {n_scale} cases, the "
           "input and layer rows that ran on every case, infidelity at three perturbation scales (sigma as a "
           "fraction of the scan's range; `normalize=True`). Each method's infidelity divided by the "
           "Gaussian-noise map's on the same case and perturbations (1 = no better than noise; lower is "
           "better), the best method, and Friedman's test that the methods differ (cases as blocks) with "
           "Kendall's W (0 = no agreement between cases on the ranking, 1 = the same ranking on every case):", "",
           table(["sigma", "cases", "infidelity / noise map's (range over methods)", "lowest", "Friedman p",
                  "Kendall's W"], srows), ""]
    return md


def _figure(ctx: Context, scales: dict[str, dict[str, list[float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = sorted(scales, key=float)
    labels = [lab for lab in scales[sigmas[0]] if lab != "Gaussian-noise map"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for lab in labels:
        ys = []
        for key in sigmas:
            v, noise = scales[key].get(lab, []), scales[key].get("Gaussian-noise map", [])
            ys.append(float(np.mean([a / b for a, b in zip(v, noise, strict=False)])) if v else np.nan)
        ax.plot([float(k) for k in sigmas], ys, "o-", ms=3, label=lab.replace("`", ""))
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("perturbation sigma / the scan's range")
    ax.set_ylabel("infidelity / noise map's (lower is better)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path, link = ctx.figure("seed001_infidelity_scales.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return link


def _small_scale_words(scales: dict[str, dict[str, list[float]]]) -> str:
    """What the scale table says at the smallest scale, in words."""
    key = min(scales, key=float)
    tab = scales[key]
    noise = tab.get("Gaussian-noise map", [])
    ratios = {lab: float(np.mean([a / b for a, b in zip(v, noise, strict=False)]))
              for lab, v in tab.items() if lab != "Gaussian-noise map" and v}
    if not ratios:
        return ""
    p, w, k = _friedman({lab: v for lab, v in tab.items() if lab != "Gaussian-noise map"})
    order = sorted(ratios, key=lambda lab: ratios[lab])
    return (f"At sigma {float(key):g} x the range (TorchEsegeta's scale; {k} cases) infidelity does separate the "
            f"methods: {min(ratios.values()):.2f}-{max(ratios.values()):.2f} times the noise map's, Friedman p "
            f"{fmt_p(p)}, Kendall's W {fmt(w, 2)}; lowest {order[0]} ({ratios[order[0]]:.2f}) and {order[1]} "
            f"({ratios[order[1]]:.2f}), highest {order[-1]} ({ratios[order[-1]]:.2f}) — at so small a "
            "perturbation the model responds almost linearly, and the gradient-based input maps predict it.")


def _verdict(rows: list[Row], results: dict[str, list[dict[str, Any]]], vs_ref: dict[str, dict[str, Paired]],
             scales: dict[str, dict[str, list[float]]], labels: list[str], vals: Any, s: dict[str, Any],
             noise_values: list[float], chance_values: list[float]) -> tuple[str, str, str]:
    """The verdict from the rows that ran on every case: the input attributions' energy in the vessels against
    chance (the extension to a 3D segmenter), whether infidelity at the default scale tells any method from a
    noise map (Holm) and separates the methods (Friedman), and whether max-sensitivity separates them."""
    n_max = max(len(v) for v in results.values())
    full = [lab for lab in labels if len(results[lab]) == n_max]  # the rows on every case (the tests' power)
    inputs = [_label(r) for r in rows if r.kind == "input" and _label(r) in full]
    chance = float(np.mean(chance_values))
    if n_max < 2:  # quick mode: one case, no test; the direction of the means only
        above = [lab for lab in inputs if np.mean(vals(lab, "energy")) > chance]
    else:
        above = [lab for lab in inputs if lab in vs_ref["energy"] and significant(vs_ref["energy"][lab])
                 and vs_ref["energy"][lab].direction == "better"]
    noise = noise_values
    default = {lab: vals(lab, "infidelity") for lab in full if vals(lab, "infidelity")}
    ratios = {lab: float(np.mean([a / b for a, b in zip(v, noise, strict=False)])) for lab, v in default.items()}
    p_def, w_def, _ = _friedman(default)
    beat_noise = [lab for lab in labels if lab in vs_ref["infidelity"] and significant(vs_ref["infidelity"][lab])
                  and vs_ref["infidelity"][lab].direction == "better"]
    ms = {lab: vals(lab, "max_sensitivity") for lab in full if vals(lab, "max_sensitivity")}
    p_ms, w_ms, _ = _friedman(ms)
    ms_means = {lab: float(np.mean(v)) for lab, v in ms.items()}
    energy_means = {lab: float(np.mean(vals(lab, "energy"))) for lab in labels if vals(lab, "energy")}
    rho = float("nan")
    common = [lab for lab in ms_means if lab in energy_means]
    if len(common) >= 3:
        from scipy.stats import spearmanr

        rho = float(spearmanr([ms_means[c] for c in common], [energy_means[c] for c in common]).statistic)
    extended = len(above) == len(inputs) and len(inputs) > 0
    beat_noise = [lab for lab in beat_noise if lab in full]
    inf_separates = bool(np.isfinite(p_def) and p_def < 0.05 and beat_noise)
    ms_separates = bool(np.isfinite(p_ms) and p_ms < 0.05)
    if not above:
        verdict = "not reproduced"
    elif extended and inf_separates and ms_separates:
        verdict = "reproduced"
    else:
        verdict = "reproduced in part"
    spread = (f"{min(ratios.values()):.3f}-{max(ratios.values()):.3f} times the noise map's" if ratios else "—")
    because = (
        f"On the {n_max} cases of the rows that ran on all of them: extension to a 3D segmenter: {len(above)} of "
        f"{len(inputs)} input attributions put more of their mass on the true vessels than chance "
        "(Holm-corrected Wilcoxon, p < 0.05). Infidelity at the library's "
        f"default scale ({s['infid_sigma']:g} x the range): the methods score {spread} (mean ratio; lower is "
        f"better), {len(beat_noise)} of {len(full)} rows below the noise map after Holm; Friedman p "
        f"{fmt_p(p_def)} (Kendall's W {fmt(w_def, 2)}) — "
        + ("it separates the methods, though by a few per cent of the noise map's value"
           if inf_separates else "it does not tell any method from a map of Gaussian noise") +
        f". Max-sensitivity: Friedman p {fmt_p(p_ms)} (W {fmt(w_ms, 2)}), "
        + ("it separates them" if ms_separates else "it does not separate them") +
        f"; over the methods, its means and the energy in the vessels have Spearman's rho {fmt(rho, 2)} ("
        + ("no clear relation: a stable map is not thereby on the vessels" if not abs(rho) >= 0.3 else
           "the more stable maps tend to be the ones on the vessels" if rho < 0 else
           "the more stable maps tend to be off the vessels") + "). "
        + _small_scale_words(scales) + " So the methods do extend to a 3D segmenter and max-sensitivity ranks "
        "them, but infidelity at the library's default scale does not: it separates them only at small "
        "perturbations."
    )
    summary = (f"{len(above)}/{len(inputs)} input attributions concentrate on the vessels; default infidelity "
               f"{'separates methods only marginally' if inf_separates else 'does not separate methods'} "
               f"({spread}); max-sensitivity {'separates' if ms_separates else 'does not separate'} them.")
    return verdict, summary, because
