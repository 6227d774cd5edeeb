"""Seed 002 (Philbrick et al., AJR 2018): is SAM more specific than guided backprop, CAM and Grad-CAM at
identifying the voxels the model used, and more specific than Grad-CAM at shallow layers? Measured on the
contrast-phase demo with our reconstructions of SAM and of the specificity protocol (methods.md §A3).

Per case: one batch of occluded copies (8 x 8 blocks set to the slice mean) gives both ground truths at once, the
class-level one (blocks whose occlusion moves the target's log-odds by more than 1) and the layer-level one of
§A3.2 (per ReLU layer, the blocks whose occlusion changes the layer's activation norm most). Every map is reduced to
its 144 block means (cached per method, variant, layer and case), from which specificity at the top q of blocks,
specificity at half the map's range and the block ROC AUC follow without another forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .common import (
    VERDICTS,
    Context,
    Paired,
    Section,
    fmt,
    fmt_ci,
    fmt_p,
    fmt_paired,
    holm,
    mean_ci,
    paired,
    significant,
    table,
)

KEY = "seed002"
TITLE = "Seed 002: SAM specificity (Philbrick et al., AJR 2018)"
VERSION = "v1"

#: case seeds: SEED_BASE + 1000 * base seed + i (the demo was trained on the streams of seeds 0 and 10 000)
SEED_BASE = 2_002_000
N_FULL = 36
N_QUICK = 2
BLOCK = 8
#: the class-level "used" threshold: the target's log-odds moves by more than this (the odds by a factor e)
EPS_LOG_ODDS = 1.0
#: top fraction of blocks a map flags (the primary metric) and the sweep of §A3.2
Q = 0.1
QS = (0.01, 0.05, 0.1, 0.2)
#: the layer-level ground truth: the fraction of blocks whose occlusion changes ||A^l|| most
LAYER_USED_FRACTION = 0.1
DELETE = (0.01, 0.05)
#: the robustness check's occluder: soft tissue at the centre of the model's HU window (methods.md §A3.2 prefers
#: it to air; the slice mean, the library's default and the primary occluder here, lies below the window's floor)
SOFT_TISSUE_HU = 40.0
MODEL = "demo:contrast-phase"
DEFAULT_LAYER = "features.relu3"
RELUS = ("features.relu1a", "features.relu1", "features.relu2a", "features.relu2", "features.relu3a",
         "features.relu3")
SHALLOW = RELUS[:4]  # the first two of the three conv stages
#: (label, method, params) of the maps at the default layer; the first two are SAM's variants
MAPS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("SAM (voxel)", "sam", {}),
    ("SAM (layer)", "sam", {"variant": "layer"}),
    ("CAM", "cam", {}),
    ("Grad-CAM", "grad_cam", {}),
    ("saliency", "saliency", {}),
    ("guided backprop", "guided_backprop", {}),
)
OTHERS = ("CAM", "Grad-CAM", "saliency", "guided backprop")
PAPER = ("guided backprop", "CAM", "Grad-CAM")  # the comparisons the paper states
#: the layer sweep: SAM's two variants and Grad-CAM at every ReLU layer
SWEEP: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("SAM (voxel)", "sam", {}),
    ("SAM (layer)", "sam", {"variant": "layer"}),
    ("Grad-CAM", "grad_cam", {}),
)


# ---------------------------------------------------------------- computation (the direction test uses these)


def case_seeds(base_seed: int, n: int) -> list[tuple[int, int]]:
    """``(seed, phase)`` of the ``n`` cases: seeds ``SEED_BASE + 1000 * base_seed + i``, phases cycling 0, 1, 2."""
    return [(SEED_BASE + 1000 * base_seed + i, i % 3) for i in range(n)]


def load() -> Any:
    import napari_attribution as na

    return na.load_model(MODEL)


def make_case(seed: int, phase: int) -> Any:
    from napari_attribution.models.demo.phantoms import abdomen_phantom

    return abdomen_phantom(seed, phase, dims=2)


def _corners(shape: Sequence[int], block: int = BLOCK) -> list[tuple[int, int]]:
    return [(i, j) for i in range(0, shape[0], block) for j in range(0, shape[1], block)]


def block_means(data: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Mean of the map over each ``block`` x ``block`` block, row-major (NaN counts as the lowest value)."""
    clean = np.nan_to_num(np.asarray(data, np.float64), nan=-np.inf)
    return np.array([clean[i:i + block, j:j + block].mean() for i, j in _corners(clean.shape, block)])


def occlusion_truth(model: Any, image: np.ndarray, target: int, layers: Sequence[str] = RELUS,
                    block: int = BLOCK, fill: float | None = None) -> dict[str, Any]:
    """One batch of occluded copies (each ``block`` x ``block`` block set to ``fill``, by default the slice mean,
    the library's ``specificity`` baseline) and what each occlusion changes: ``class_delta``, the change of the target's
    log-odds (computed from the logits); ``layer_delta[l]``, the relative change of the activation norm
    ``||A^l||`` of each layer (§A3.2's layer-level "voxels the layer used"); also the clean probability and the
    predicted class."""
    import torch

    net = model.module if hasattr(model, "module") else model
    fill = float(image.mean()) if fill is None else float(fill)
    imgs = [image]
    for i, j in _corners(image.shape, block):
        im = image.copy()
        im[i:i + block, j:j + block] = fill
        imgs.append(im)
    x = torch.from_numpy(np.stack(imgs).astype(np.float32))[:, None]
    modules = dict(net.named_modules())
    norms: dict[str, list[Any]] = {ly: [] for ly in layers}
    hooks = [modules[ly].register_forward_hook(
        lambda _m, _i, out, ly=ly: norms[ly].append(out.detach().flatten(1).double().norm(dim=1)))
        for ly in layers]
    try:
        with torch.no_grad():
            logits = torch.cat([net(x[s:s + 48]) for s in range(0, len(x), 48)]).double()
    finally:
        for h in hooks:
            h.remove()
    lp = torch.log_softmax(logits, 1)
    rest = torch.cat([lp[:, :target], lp[:, target + 1:]], 1)
    log_odds = (lp[:, target] - torch.logsumexp(rest, 1)).numpy()
    layer_delta = {}
    for ly in layers:
        n = torch.cat(norms[ly]).numpy()
        layer_delta[ly] = (np.abs(n[1:] - n[0]) / max(float(n[0]), 1e-30)).tolist()
    return {"class_delta": np.abs(log_odds[1:] - log_odds[0]).tolist(), "layer_delta": layer_delta,
            "p": float(torch.exp(lp[0, target])), "pred": int(logits[0].argmax()), "fill": fill}


def class_used(truth: dict[str, Any], eps: float = EPS_LOG_ODDS) -> np.ndarray:
    """Blocks the model used: occluding them moves the target's log-odds by more than ``eps``."""
    return np.asarray(truth["class_delta"]) > eps


def layer_used(truth: dict[str, Any], layer: str, fraction: float = LAYER_USED_FRACTION) -> np.ndarray:
    """Blocks layer ``layer`` used: the ``fraction`` of blocks whose occlusion changes ``||A^l||`` most."""
    d = np.asarray(truth["layer_delta"][layer])
    k = max(1, int(round(fraction * d.size)))
    used = np.zeros(d.size, bool)
    used[np.argsort(d, kind="stable")[::-1][:k]] = True
    return used


def top_flags(means: np.ndarray, q: float) -> np.ndarray:
    """The map's top ``q`` fraction of blocks by mean (ties broken as the library's ``specificity`` does)."""
    k = max(1, int(round(q * means.size)))
    flagged = np.zeros(means.size, bool)
    flagged[np.argsort(means, kind="stable")[::-1][:k]] = True
    return flagged


def half_max_flags(means: np.ndarray) -> np.ndarray:
    """Blocks whose mean is at least half the map's largest block mean: as many as the map's own shape says (a
    map concentrated on few blocks flags few). None when no block mean is positive."""
    fin = means[np.isfinite(means)]
    if fin.size == 0 or fin.max() <= 0:
        return np.zeros(means.size, bool)
    return means >= 0.5 * fin.max()


def specificity(flagged: np.ndarray, used: np.ndarray) -> float:
    """TN / (TN + FP) at block level (higher is better; 1.0 when every block is used)."""
    tn = int((~flagged & ~used).sum())
    fp = int((flagged & ~used).sum())
    return tn / (tn + fp) if tn + fp else 1.0


def block_auc(means: np.ndarray, used: np.ndarray) -> float:
    """P(a used block's mean outranks an unused one's), ties half (0.5 = chance, higher is better); NaN when
    all or no blocks are used."""
    from scipy.stats import rankdata

    if not used.any() or used.all():
        return float("nan")
    ranks = rankdata(np.nan_to_num(means.astype(np.float64), neginf=-1e300))
    n_pos, n_neg = int(used.sum()), int((~used).sum())
    return float((ranks[used].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def scores(means: np.ndarray, used: np.ndarray) -> dict[str, float]:
    """Every block-level score of one map against one ground truth."""
    out = {f"spec@{q:g}": specificity(top_flags(means, q), used) for q in QS}
    half = half_max_flags(means)
    out.update({"spec@half": specificity(half, used), "flagged@half": float(half.sum()),
                "auc": block_auc(means, used)})
    return out


def deletion_drops(model: Any, image: np.ndarray, target: int, data: np.ndarray,
                   fracs: Sequence[float] = DELETE) -> dict[str, float]:
    """§A3.2's top-k deletion: the drop of the target's probability when the map's top ``frac`` pixels are set to
    the slice mean (higher = the flagged pixels matter more)."""
    import torch

    net = model.module if hasattr(model, "module") else model
    order = np.argsort(np.nan_to_num(data, nan=-np.inf).ravel(), kind="stable")[::-1]
    imgs = [image]
    for f in fracs:
        pert = image.copy().ravel()
        pert[order[: max(1, int(f * data.size))]] = image.mean()
        imgs.append(pert.reshape(image.shape))
    with torch.no_grad():
        p = torch.softmax(net(torch.from_numpy(np.stack(imgs).astype(np.float32))[:, None]).double(), 1)[:, target]
    return {f"{f:g}": float(p[0] - p[i + 1]) for i, f in enumerate(fracs)}


def default_maps(model: Any, image: np.ndarray, target: int, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """The maps ``labels`` (of :data:`MAPS`) at the default layer, as arrays."""
    import napari_attribution as na

    spec = {lab: (m, p) for lab, m, p in MAPS}
    out: dict[str, np.ndarray] = {}
    plain = [lab for lab in labels if not spec[lab][1]]
    if plain:
        res = na.compare(model, image, [spec[lab][0] for lab in plain], target, layer=DEFAULT_LAYER)
        out.update({lab: np.asarray(res[spec[lab][0]].data) for lab in plain})
    for lab in labels:
        if spec[lab][1]:
            out[lab] = np.asarray(na.explain(model, image, spec[lab][0], target, layer=DEFAULT_LAYER,
                                             params=spec[lab][1]).data)
    return {lab: out[lab] for lab in labels}


def sweep_maps(model: Any, image: np.ndarray, target: int, method: str, params: dict[str, Any],
               layers: Sequence[str] = RELUS) -> dict[str, np.ndarray]:
    """One method at every layer of ``layers`` (one shared forward pass, ``na.explain_layers``)."""
    import napari_attribution as na

    res = na.explain_layers(model, image, method, list(layers), target, params=params or None)
    return {ly: np.asarray(r.data) for ly, r in res.items()}


def compare_family(a: dict[str, list[float]], keys: Sequence[str], ref: str) -> dict[str, Paired]:
    """``ref`` against each of ``keys`` (higher is better), Holm-corrected over the family."""
    out = {k: paired(a[ref], a[k], higher_is_better=True) for k in keys}
    holm(list(out.values()))
    return out


# ---------------------------------------------------------------- the section


def _cache_key(*parts: Any) -> tuple[Any, ...]:
    return (KEY, VERSION, MODEL, f"block{BLOCK}", "fill=mean", *parts)


def _case_data(ctx: Context, model: Any, seed: int, phase: int, sweep: bool) -> dict[str, Any]:
    """Ground truth, block means and deletion drops of one case, every piece cached on its own key."""
    import time

    case: Any = None

    def image() -> np.ndarray:
        nonlocal case
        if case is None:
            case = make_case(seed, phase)
        return np.asarray(case.image, np.float32)

    truth = ctx.timed(_cache_key("truth", seed, phase, RELUS),
                      lambda: occlusion_truth(model, image(), phase))
    soft = None
    if sweep:  # the robustness check: the same ground truth with a soft-tissue occluder
        soft = ctx.timed(_cache_key("truth", seed, phase, RELUS, f"fill={SOFT_TISSUE_HU:g}HU"),
                         lambda: occlusion_truth(model, image(), phase, fill=SOFT_TISSUE_HU))
    labels = [lab for lab, _, _ in MAPS] if not ctx.quick else [lab for lab, _, p in MAPS if not p]
    maps: dict[str, Any] = {}
    memo: dict[str, np.ndarray] = {}

    def one(lab: str) -> dict[str, Any]:
        if not memo:
            t0 = time.perf_counter()
            memo.update(default_maps(model, image(), phase, labels))
            memo["_seconds"] = np.array(time.perf_counter() - t0)
        data = memo[lab]
        return {"blocks": block_means(data).tolist(), "drop": deletion_drops(model, image(), phase, data),
                "seconds": float(memo["_seconds"]) / len(labels)}

    for lab, method, params in MAPS:
        if lab in labels:
            maps[lab] = ctx.cache.get(_cache_key("map", method, params.get("variant", "-"), DEFAULT_LAYER, seed,
                                                 phase), lambda lab=lab: one(lab))
    layers: dict[str, dict[str, list[float]]] = {}
    if sweep:
        for lab, method, params in SWEEP:
            smemo: dict[str, Any] = {}

            def get(ly: str, method: str = method, params: dict[str, Any] = params,
                    smemo: dict[str, Any] = smemo) -> dict[str, Any]:
                if not smemo:
                    t0 = time.perf_counter()
                    smemo.update(sweep_maps(model, image(), phase, method, params))
                    smemo["_seconds"] = (time.perf_counter() - t0) / len(RELUS)
                return {"blocks": block_means(smemo[ly]).tolist(), "seconds": smemo["_seconds"]}

            layers[lab] = {ly: ctx.cache.get(_cache_key("layer", method, params.get("variant", "-"), ly, seed,
                                                         phase), lambda ly=ly, get=get: get(ly))["blocks"]
                           for ly in RELUS}
    return {"truth": truth, "truth_soft": soft, "maps": maps, "layers": layers}


def _paired_row(name: str, r: Paired) -> list[str]:
    sig = "Holm p < 0.05" if significant(r) else "not significant"
    return [name, fmt_paired(r), fmt(r.effect, 2), r.direction if r.direction == "no difference" else
            f"{r.direction} ({sig})"]


def _analyse(data: list[dict[str, Any]], labels: list[str], variants: list[str], truth_key: str,
             sweep: bool) -> dict[str, Any]:
    """Scores and paired comparisons against the ground truth ``truth_key`` of each case: at the default layer
    (``families``: variant -> metric -> other map -> Paired, Holm over the four other maps) and layer by layer
    (``layer_fam``: (variant, "class" | "layer", metric) -> layer -> Paired, Holm over the six layers)."""
    used = [class_used(d[truth_key]) for d in data]
    sc = {lab: [scores(np.asarray(d["maps"][lab]["blocks"]), u) for d, u in zip(data, used, strict=True)]
          for lab in labels}
    families: dict[str, dict[str, dict[str, Paired]]] = {}
    for v in variants:
        families[v] = {metric: compare_family({lab: [s[metric] for s in sc[lab]] for lab in labels}, OTHERS, v)
                       for metric in ("spec@0.1", "auc", "spec@half")}
    layer_fam: dict[tuple[str, str, str], dict[str, Paired]] = {}
    layer_sc: dict[tuple[str, str, str, str], list[float]] = {}  # (label, layer, truth, metric) -> per case
    if sweep:
        for lab, _, _ in SWEEP:
            for ly in RELUS:
                for truth_name in ("class", "layer"):
                    vals = []
                    for d, u in zip(data, used, strict=True):
                        gt = u if truth_name == "class" else layer_used(d[truth_key], ly)
                        vals.append(scores(np.asarray(d["layers"][lab][ly]), gt))
                    for metric in ("spec@0.1", "auc"):
                        layer_sc[(lab, ly, truth_name, metric)] = [v[metric] for v in vals]
        for lab in ("saliency", "guided backprop"):  # layer-free maps against each layer's own ground truth
            for ly in RELUS:
                vals = [scores(np.asarray(d["maps"][lab]["blocks"]), layer_used(d[truth_key], ly)) for d in data]
                for metric in ("spec@0.1", "auc"):
                    layer_sc[(lab, ly, "layer", metric)] = [v[metric] for v in vals]
                    layer_sc[(lab, ly, "class", metric)] = [s[metric] for s in sc[lab]]
        for v in ("SAM (voxel)", "SAM (layer)"):
            for truth_name in ("class", "layer"):
                for metric in ("spec@0.1", "auc"):
                    fam = {ly: paired(layer_sc[(v, ly, truth_name, metric)],
                                      layer_sc[("Grad-CAM", ly, truth_name, metric)]) for ly in RELUS}
                    holm(list(fam.values()))
                    layer_fam[(v, truth_name, metric)] = fam
    return {"sc": sc, "used": used, "families": families, "layer_fam": layer_fam, "layer_sc": layer_sc}


def run(ctx: Context) -> Section:
    import time

    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    n = N_QUICK if ctx.quick else N_FULL
    sweep = not ctx.quick
    model = load()
    cases = case_seeds(ctx.seed, n)
    data = [_case_data(ctx, model, s, ph, sweep) for s, ph in cases]
    ctx.log(f"   seed002: {n} cases scored ({time.perf_counter() - t_start:.1f} s)")
    labels = list(data[0]["maps"])
    variants = [lab for lab in labels if lab.startswith("SAM")]

    res = _analyse(data, labels, variants, "truth", sweep)
    sc, used, families, layer_fam, layer_sc = (res[k] for k in ("sc", "used", "families", "layer_fam", "layer_sc"))

    def col(lab: str, metric: str) -> list[float]:
        return [s[metric] for s in sc[lab]]

    drops = {lab: {f: [d["maps"][lab]["drop"][f"{f:g}"] for d in data] for f in DELETE} for lab in labels}
    correct = sum(d["truth"]["pred"] == ph for d, (_, ph) in zip(data, cases, strict=True))
    n_used = [int(u.sum()) for u in used]
    main_rows = []
    for lab in labels:
        main_rows.append([lab, fmt_ci(col(lab, "spec@0.1")), fmt_ci(col(lab, "auc")), fmt_ci(col(lab, "spec@half")),
                          f"{np.mean(col(lab, 'flagged@half')):.1f}",
                          fmt_ci(drops[lab][0.01]), fmt_ci(drops[lab][0.05])])
    q_rows = [[lab] + [fmt(float(np.mean(col(lab, f"spec@{q:g}")))) for q in QS] for lab in labels]
    for v in variants:
        families[v]["drop@0.05"] = compare_family({lab: drops[lab][0.05] for lab in labels}, OTHERS, v)
    soft = _analyse(data, labels, variants, "truth_soft", sweep) if sweep else None
    figures = [_figure(ctx, layer_sc, layer_fam)] if sweep else []

    # ---- verdict
    claims = _claims(families, layer_fam, variants)
    claim_a, claim_b, b_holds = claims["a"], claims["b"], claims["b_holds"]
    a_full = any(len(claim_a[v]) == len(PAPER) for v in variants)
    a_any = any(claim_a[v] for v in variants)
    b_any = any(b for b, _ in claim_b.values())
    if a_full and any(b_holds.values()):
        verdict = VERDICTS[0]
    elif a_any or b_any:
        verdict = VERDICTS[1]
    else:
        verdict = VERDICTS[2]

    md = _markdown(ctx, n, cases, correct, n_used, main_rows, q_rows, families, layer_fam, layer_sc, figures,
                   claims, verdict, variants, data, soft)
    summary = _summary(families, claims, variants, verdict, sweep)
    return Section(KEY, TITLE, md, verdict, summary, figures=[f[0] for f in figures])


def _claims(families: dict[str, dict[str, dict[str, Paired]]],
            layer_fam: dict[tuple[str, str, str], dict[str, Paired]], variants: list[str]) -> dict[str, Any]:
    """Which comparisons of each claim are significant (Holm p < 0.05, top-10 % specificity) in SAM's favour:
    ``a``: variant -> the paper's maps SAM beats at the default layer; ``b``: (variant, ground truth) ->
    (shallow layers where SAM beats Grad-CAM, those where it loses); ``b_holds``: three or more wins, no loss."""
    a = {v: [o for o in PAPER if significant(families[v]["spec@0.1"][o])
             and families[v]["spec@0.1"][o].effect > 0] for v in variants}
    b: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for (v, truth_name, metric), fam in layer_fam.items():
        if metric == "spec@0.1":
            b[(v, truth_name)] = ([ly for ly in SHALLOW if significant(fam[ly]) and fam[ly].effect > 0],
                                  [ly for ly in SHALLOW if significant(fam[ly]) and fam[ly].effect < 0])
    return {"a": a, "b": b, "b_holds": {k: len(w) >= 3 and not lo for k, (w, lo) in b.items()}}


def _figure(ctx: Context, layer_sc: dict[tuple[str, str, str, str], list[float]],
            layer_fam: dict[tuple[str, str, str], dict[str, Paired]]) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .common import ROOT

    path, link = ctx.figure("seed002_layers.png")
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    xs = np.arange(len(RELUS))
    styles = {"SAM (voxel)": ("C0", "o", -0.12), "SAM (layer)": ("C1", "s", -0.04), "Grad-CAM": ("C3", "^", 0.04),
              "guided backprop": ("C2", "d", 0.12)}
    chance = 1 - round(Q * 144) / 144
    for c, (truth_name, title) in enumerate((("class", "blocks used by the model (class log-odds)"),
                                              ("layer", "blocks used by the layer (‖A^l‖, top 10 %)"))):
        ax = axes[0, c]
        for lab, (colr, mk, dx) in styles.items():
            stats = [mean_ci(layer_sc[(lab, ly, truth_name, "spec@0.1")]) for ly in RELUS]
            m = np.array([st[0] for st in stats])
            err = np.array([[st[0] - st[1] for st in stats], [st[2] - st[0] for st in stats]])
            ax.errorbar(xs + dx, m, yerr=err, color=colr, marker=mk, ms=4, capsize=2, lw=1,
                        ls="--" if lab == "guided backprop" else "-", label=lab)
        ax.axhline(chance, color="0.5", lw=0.8, ls=":", label=f"random map ({chance:.3f})")
        ax.set_title(f"ground truth: {title}", fontsize=9)
        ax.grid(alpha=0.3)
        ax = axes[1, c]
        for v in ("SAM (voxel)", "SAM (layer)"):
            colr, mk, dx = styles[v]
            fam = layer_fam[(v, truth_name, "spec@0.1")]
            for k, ly in enumerate(RELUS):
                r = fam[ly]
                filled = significant(r)
                ax.errorbar([k + dx * 2], [r.diff], yerr=[[r.diff - r.lo], [r.hi - r.diff]], color=colr, marker=mk,
                            ms=5, capsize=2, mfc=colr if filled else "white",
                            label=f"{v} − Grad-CAM" if k == 0 else None)
        ax.axhline(0, color="k", lw=0.8)
        ax.grid(alpha=0.3)
        ax.set_xticks(xs, [_lay(ly) for ly in RELUS])
        ax.set_xlabel("layer (shallow → deep)")
    axes[0, 0].set_ylabel("specificity, top 10 % flagged\n(higher is better; mean, 95 % CI)")
    axes[1, 0].set_ylabel("SAM − Grad-CAM, paired\n(mean, 95 % CI; filled: Holm p < 0.05)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    axes[1, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Seed 002 on the contrast-phase demo: SAM vs Grad-CAM layer by layer", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    try:
        rel = str(path.resolve().relative_to(ROOT))
    except ValueError:
        rel = str(path)
    return rel, link


def _lay(ly: str) -> str:
    return ly.split(".")[-1]


def _markdown(ctx: Context, n: int, cases: list[tuple[int, int]], correct: int, n_used: list[int],
              main_rows: list[list[str]], q_rows: list[list[str]],
              families: dict[str, dict[str, dict[str, Paired]]],
              layer_fam: dict[tuple[str, str, str], dict[str, Paired]],
              layer_sc: dict[tuple[str, str, str, str], list[float]], figures: list[tuple[str, str]],
              claims: dict[str, Any], verdict: str, variants: list[str], data: list[dict[str, Any]],
              soft: dict[str, Any] | None) -> str:
    claim_a, claim_b, b_holds = claims["a"], claims["b"], claims["b_holds"]
    seeds = f"{cases[0][0]}–{cases[-1][0]}"
    largest = {ly: 100 * float(np.median([max(d["truth"]["layer_delta"][ly]) for d in data])) for ly in RELUS}
    none = sum(u == 0 for u in n_used)
    out = [
        "**What the paper claims.** Philbrick et al. (AJR 2018) report that saliency activation maps (SAMs) "
        "\"had greater specificity than did guided backpropagation maps, CAMs, and Grad-CAMs at identifying voxels "
        "… that the model used\", and that \"at shallow network layers, SAMs had greater specificity than "
        "Grad-CAMs\" (methods.md §A3). Neither the SAM formula nor the specificity protocol was available: **both "
        "are our reconstructions** — `sam` (§A3.1: by default the voxel-level saliency of the class-weighted "
        "activation at layer l; `variant=\"layer\"` the channel-summed gradient ⊙ activation at the layer's "
        "resolution, which equals HiResCAM) and the protocol (§A3.2). A result here says what our reading of "
        "SAM does on our demo, not whether the paper's maps did what it says.",
        "",
        "**How we measured it.** "
        f"{n} generated slices of the contrast-phase demo (`{MODEL}`, 96 × 96 at 3.5 mm, HU), seeds {seeds} "
        f"(`{SEED_BASE} + 1000 × base seed + i`, disjoint from the training streams of seeds 0 and 10 000), "
        f"phases balanced (i mod 3); the target is the true phase (the model predicts it in {correct} of {n} "
        f"cases). Maps at the default layer `{DEFAULT_LAYER}`: SAM in both variants, CAM, Grad-CAM, saliency and "
        "guided backprop (saliency is not in the paper's list; it is here because voxel SAM at the output is "
        "saliency, and it counts in the Holm families); layer by layer ("
        + ", ".join(f"`{_lay(ly)}`" for ly in RELUS) + ", every ReLU of the network), SAM's two variants and "
        "Grad-CAM. Ground truth, from occlusion (8 × 8 blocks, 144 per slice, each set to the slice mean, the "
        "library's `specificity` baseline): a block is **used by the model** when its "
        f"occlusion moves the target's log-odds by more than {EPS_LOG_ODDS:g} (the odds by a factor e; the demo is "
        f"confident, so probability changes vanish): {np.mean(n_used):.1f} blocks per case on average "
        f"(range {min(n_used)}–{max(n_used)}; {none} {'case' if none == 1 else 'cases'} with none, where "
        "every map scores the chance specificity 0.903 and the AUC is undefined and left out). The "
        "**layer-level ground truth** of §A3.2 (\"voxels the layer used\") replaces the class score by the "
        "layer's activation norm ‖A^l‖: a block is used by layer l when it is among the "
        f"{100 * LAYER_USED_FRACTION:.0f} % of blocks whose occlusion changes ‖A^l‖ most. §A3.2 suggests a "
        "threshold ε on the change; one ε cannot serve every depth here (the largest relative change of ‖A^l‖ "
        f"that one block makes is {largest[RELUS[0]]:.1f} % at `{_lay(RELUS[0])}` and "
        f"{largest[RELUS[-1]]:.1f} % at `{_lay(RELUS[-1])}`, medians over the cases), so the fraction is fixed "
        "instead and the layer-level specificity measures how well a map's ranking matches the layer's.",
        "",
        "Metrics, all at block level and **higher is better**: *specificity* TN / (TN + FP) with each map "
        "flagging its top 10 % of blocks (14 of 144; the primary metric, the protocol of §A3.2). Because every map "
        "flags the same number of blocks, this specificity is a function of the map's ranking only (a map cannot "
        "be more specific by flagging fewer blocks); so two further views: the *block ROC AUC* (threshold-free: the "
        "chance that a used block outranks an unused one; 0.5 = chance) and the *specificity at half the map's "
        "maximum* (a block is flagged when its mean is at least half the map's largest block mean: a concentrated "
        "map flags few blocks). Reference for specificity: a random map flagging 10 % of the "
        "blocks has an expected specificity of 0.90; for the AUC, 0.5. §A3.2's top-k deletion: the drop of the "
        "target's probability when the map's top 1 % / 5 % of pixels are set to the slice mean (higher = the "
        "flagged pixels matter more per pixel removed).",
        "",
        "Comparisons are paired over cases: SAM minus the other map, mean difference with its bootstrap 95 % CI, "
        "wins / ties / losses of SAM, two-sided Wilcoxon signed-rank p, Holm's correction over each family (the "
        "four comparisons of one SAM variant on one metric at the default layer; the six layers of one variant, "
        "ground truth and metric), and the matched-pairs rank-biserial effect (+1: SAM more specific on every "
        "case).",
        "",
    ]
    if ctx.quick:
        out += ["*Quick mode: two cases, the default layer, voxel variant only — these numbers test the code, not "
                "the claim.*", ""]
    out += [f"**Default layer `{DEFAULT_LAYER}`, ground truth: blocks used by the model** (mean [95 % CI] over "
            f"{n} cases; flagged@half = blocks flagged at half the maximum, of 144).", "",
            table(["map", "specificity, top 10 %", "block ROC AUC", "specificity, half max", "flagged@half",
                   "Δp, top 1 % deleted", "Δp, top 5 % deleted"], main_rows), "",
            "Specificity at other top fractions q (§A3.2's sweep; means; a random map: 1 − q roughly):", "",
            table(["map"] + [f"q = {100 * q:.0f} %" for q in QS], q_rows), ""]
    names = {"spec@0.1": "specificity, top 10 %", "auc": "block ROC AUC", "spec@half": "specificity, half max",
             "drop@0.05": "Δp, top 5 % deleted"}
    for v in variants:
        rows = []
        for metric, fam in families[v].items():
            for other, r in fam.items():
                rows.append([names[metric]] + _paired_row(f"{v} − {other}", r))
        out += [f"**{v} against the other maps at `{DEFAULT_LAYER}`** (Holm over the four comparisons of each "
                "metric):", "", table(["metric", "comparison", "difference [95 % CI], W/T/L, p (Holm)",
                                       "effect (rank-biserial)", "SAM is"], rows), ""]
    if "SAM (layer)" in variants:
        out += ["At `relu3`, the last layer before the global average pooling and the linear head, the gradient "
                "of the class score is the same at every position, so SAM's layer variant *is* Grad-CAM there "
                "(ties on every case); its differences can only show at other layers.", ""]
    if layer_fam:
        for truth_name, what in (("class", "blocks used by the model (class log-odds)"),
                                 ("layer", "blocks used by the layer (‖A^l‖, top 10 %)")):
            rows = []
            for ly in RELUS:
                row = [f"`{_lay(ly)}`" + (" (shallow)" if ly in SHALLOW else "")]
                for lab in ("SAM (voxel)", "SAM (layer)", "Grad-CAM", "guided backprop"):
                    row.append(fmt_ci(layer_sc[(lab, ly, truth_name, "spec@0.1")]))
                for v in ("SAM (voxel)", "SAM (layer)"):
                    r = layer_fam[(v, truth_name, "spec@0.1")][ly]
                    row.append(f"{fmt_paired(r)}, r {fmt(r.effect, 2)}")
                rows.append(row)
            out += [f"**Layer by layer, ground truth: {what}** — specificity, top 10 % (mean [95 % CI]); "
                    "SAM − Grad-CAM at the same layer, Holm over the six layers:", "",
                    table(["layer", "SAM (voxel)", "SAM (layer)", "Grad-CAM", "guided backprop",
                           "SAM (voxel) − Grad-CAM", "SAM (layer) − Grad-CAM"], rows), ""]
            rows = []
            for ly in RELUS:
                row = [f"`{_lay(ly)}`"]
                for lab in ("SAM (voxel)", "SAM (layer)", "Grad-CAM"):
                    row.append(fmt_ci(layer_sc[(lab, ly, truth_name, "auc")]))
                for v in ("SAM (voxel)", "SAM (layer)"):
                    r = layer_fam[(v, truth_name, "auc")][ly]
                    row.append(f"{r.diff:+.3f}, Holm p {fmt_p(r.p_adj)}")
                rows.append(row)
            out += [f"The same with the threshold-free block ROC AUC (ground truth: {what}):", "",
                    table(["layer", "SAM (voxel)", "SAM (layer)", "Grad-CAM", "SAM (voxel) − Grad-CAM",
                           "SAM (layer) − Grad-CAM"], rows), ""]
        for _path, link in figures:
            out += [f"![Specificity layer by layer, SAM's two variants, Grad-CAM and guided backprop, with 95 % "
                    f"CIs]({link})", ""]
    if soft is not None:
        rows = []
        for v in variants:
            for o in PAPER:
                a, b = families[v]["spec@0.1"][o], soft["families"][v]["spec@0.1"][o]
                rows.append([f"1: {v} − {o}, `{_lay(DEFAULT_LAYER)}`", "model",
                             f"{a.diff:+.4f} (Holm p {fmt_p(a.p_adj)})", f"{b.diff:+.4f} (Holm p {fmt_p(b.p_adj)})"])
        for v in ("SAM (voxel)", "SAM (layer)"):
            for truth_name in ("class", "layer"):
                for ly in SHALLOW:
                    a = layer_fam[(v, truth_name, "spec@0.1")][ly]
                    b = soft["layer_fam"][(v, truth_name, "spec@0.1")][ly]
                    rows.append([f"2: {v} − Grad-CAM, `{_lay(ly)}`", "model" if truth_name == "class" else "layer",
                                 f"{a.diff:+.4f} (Holm p {fmt_p(a.p_adj)})",
                                 f"{b.diff:+.4f} (Holm p {fmt_p(b.p_adj)})"])
        n_soft = [int(u.sum()) for u in soft["used"]]
        mean_fill = np.mean([d["truth"]["fill"] for d in data])
        out += [f"**Robustness: the occluder.** The slice mean ({mean_fill:.0f} HU on average) lies below the "
                "floor of the model's HU window (−360 HU), so to the network the primary occluder "
                "is a dark patch; methods.md §A3.2 prefers a soft-tissue value. The same comparisons with every "
                f"block set to {SOFT_TISSUE_HU:g} HU (soft tissue, the window's centre; "
                f"{np.mean(n_soft):.1f} used blocks per case, range {min(n_soft)}–{max(n_soft)}), top-10 % "
                "specificity, SAM minus the other map, Holm as above:", "",
                table(["claim: comparison", "ground truth: blocks used by the", "slice-mean occluder (primary)",
                       f"{SOFT_TISSUE_HU:g} HU occluder"], rows), ""]
    secs = sum(d["truth"]["seconds"] for d in data)
    out += [f"Time: the occlusion ground truth took {secs:.1f} s for {n} cases (one batch of 145 forward passes "
            "per case, every layer's norm from the same passes); the maps take well under a second per case.", ""]

    # ---- verdict in words
    words = ["**Verdict: " + verdict + ".** " + _summary(families, claims, variants, verdict, bool(layer_fam))]
    for v in variants:
        fam = families[v]["spec@0.1"]
        bits = []
        for o in PAPER:
            r = fam[o]
            state = ("more specific" if significant(r) and r.effect > 0 else
                     "less specific" if significant(r) and r.effect < 0 else "no significant difference")
            bits.append(f"vs {o}: {state} ({r.diff:+.4f} [{r.lo:+.4f}, {r.hi:+.4f}], {r.wins}/{r.ties}/"
                        f"{r.losses}, Holm p {fmt_p(r.p_adj)})")
        auc = families[v]["auc"]
        auc_bits = ", ".join(f"{o} {auc[o].diff:+.3f} (Holm p {fmt_p(auc[o].p_adj)})" for o in PAPER)
        n_ok = len(claim_a[v])
        state = ("holds" if n_ok == len(PAPER) else f"holds for {n_ok} of {len(PAPER)} comparisons" if n_ok
                 else "not reproduced")
        words.append(f"*Claim 1, {v} at `{DEFAULT_LAYER}`* — {state}: specificity at the top 10 %, SAM "
                     + "; ".join(bits) + f". By block ROC AUC, SAM − other: {auc_bits}. By §A3.2's top-k deletion "
                     "(top 5 %), SAM − other: " + ", ".join(
                         f"{o} {families[v]['drop@0.05'][o].diff:+.3f} (Holm p "
                         f"{fmt_p(families[v]['drop@0.05'][o].p_adj)})" for o in PAPER) + ".")
    for (v, truth_name), (better, worse) in claim_b.items():
        fam = layer_fam[(v, truth_name, "spec@0.1")]
        lays = "; ".join(f"`{_lay(ly)}` {fam[ly].diff:+.4f} (Holm p {fmt_p(fam[ly].p_adj)})" for ly in SHALLOW)
        gt = "used by the model" if truth_name == "class" else "used by the layer"
        state = ("holds" if b_holds[(v, truth_name)] else
                 f"holds at {len(better)} of {len(SHALLOW)} shallow layers" if better else "not reproduced")
        if worse:
            state += f", SAM significantly less specific at {len(worse)}"
        words.append(f"*Claim 2, {v} vs Grad-CAM at the shallow layers, blocks {gt}* — {state}: {lays}.")
    if soft is not None:
        sc = _claims(soft["families"], soft["layer_fam"], variants)
        same = all(sorted(sc["a"][v]) == sorted(claim_a[v]) for v in variants) and all(
            sc["b"][k] == claim_b[k] for k in claim_b)
        if same:
            words.append(f"With the {SOFT_TISSUE_HU:g} HU occluder every comparison of both claims keeps its "
                         "significance and direction.")
        else:
            changed = [f"claim 2, {v}, blocks used by the {'model' if t == 'class' else 'layer'}: wins at "
                       f"{len(sc['b'][(v, t)][0])}, losses at {len(sc['b'][(v, t)][1])} of the shallow layers "
                       f"(primary occluder: {len(claim_b[(v, t)][0])}, {len(claim_b[(v, t)][1])})"
                       for v, t in claim_b if sc["b"][(v, t)] != claim_b[(v, t)]]
            changed += [f"claim 1, {v}: SAM significantly more specific than {len(sc['a'][v])} of the paper's three "
                        f"maps (primary occluder: {len(claim_a[v])})" for v in variants
                        if sorted(sc["a"][v]) != sorted(claim_a[v])]

            def losses(fams: dict[str, dict[str, dict[str, Paired]]], v: str) -> list[str]:
                return [o for o in PAPER if significant(fams[v]["spec@0.1"][o]) and fams[v]["spec@0.1"][o].effect < 0]

            changed += [f"claim 1, {v}: SAM significantly less specific than "
                        f"{' and '.join(losses(soft['families'], v)) or 'none of the three'} (primary occluder: "
                        f"{' and '.join(losses(families, v)) or 'none'})" for v in variants
                        if losses(soft["families"], v) != losses(families, v)]
            words.append(f"With the {SOFT_TISSUE_HU:g} HU occluder: " + "; ".join(changed) + " — the verdict "
                         "follows the primary occluder; the table above shows how far the result depends on it.")
    words.append("The rule: claim 1 holds for a variant when SAM is significantly more specific (Holm p < 0.05, "
                 "top-10 % specificity) than all three of guided backprop, CAM and Grad-CAM; claim 2 holds for a "
                 "variant and ground truth when SAM is significantly more specific than Grad-CAM at three or more "
                 "of the four shallow layers and significantly less at none. Reproduced = claim 1 holds for some "
                 "variant and claim 2 for some variant and ground truth; not reproduced = no comparison of either "
                 "claim is significant in SAM's favour; otherwise reproduced in part.")
    out += ["\n\n".join(words), ""]
    return "\n".join(out)


def _summary(families: dict[str, dict[str, dict[str, Paired]]], claims: dict[str, Any], variants: list[str],
             verdict: str, sweep: bool) -> str:
    r = families["SAM (voxel)"]["spec@0.1"]["Grad-CAM"]
    beaten = sorted({o for v in variants for o in claims["a"][v]})
    what = (f"SAM is significantly more specific than {', '.join(beaten)} only" if beaten else
            "no SAM variant is significantly more specific than guided backprop, CAM or Grad-CAM")
    text = (f"At the default layer {what} (voxel SAM − Grad-CAM {r.diff:+.4f} top-10 % specificity, Holm p "
            f"{fmt_p(r.p_adj)})")
    drop = families["SAM (voxel)"].get("drop@0.05")
    if drop:
        wins = [o for o in PAPER if significant(drop[o]) and drop[o].effect > 0]
        if wins:
            g = drop[wins[-1]]
            text += (f"; by §A3.2's top-k deletion voxel SAM's top 5 % matters more than that of {' and '.join(wins)} "
                     f"({wins[-1]}: {g.diff:+.3f} Δp, Holm p {fmt_p(g.p_adj)})")
            rest = [o for o in PAPER if o not in wins]
            if rest:
                text += f" but not more than that of {' and '.join(rest)}"
    if sweep:
        b = claims["b"]
        text += ("; at the 4 shallow layers the layer variant is more specific than Grad-CAM at "
                 f"{len(b[('SAM (layer)', 'class')][0])} against the blocks the model used but less specific at "
                 f"{len(b[('SAM (layer)', 'layer')][1])} against the blocks each layer used (§A3.2's layer-level "
                 f"truth), the voxel variant more specific at {len(b[('SAM (voxel)', 'class')][0])} and less "
                 f"specific at {len(b[('SAM (voxel)', 'layer')][1])} (Holm over the six layers)")
    return text + "."


__all__ = ["KEY", "TITLE", "run", "case_seeds", "occlusion_truth", "class_used", "layer_used", "block_means",
           "scores", "specificity", "block_auc", "default_maps", "sweep_maps", "compare_family"]
