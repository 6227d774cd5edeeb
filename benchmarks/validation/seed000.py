"""Seed 000 (Kumar et al., arXiv 1611.06284; methods.md §A1): do the deconvnet back-projections
(``response_backprojection``) of a deeper network fall on the anatomical landmarks more than those of a shallower
one trained on the same task?

Two max-pooling networks that differ only in depth (2 and 5 convolution + max-pool blocks, global average
pooling, one linear layer) learn the 2D contrast-phase task of the demo (the phase is decided by the enhancement
of aorta, IVC, portal vein, liver and kidneys; spine and bowel with oral contrast are bright distractors). Each
is trained here, deterministically from the base seed on one thread (the weights are cached by recipe), scored on
held-out phantoms, and its back-projection of the true class is compared with the phantom's structures
(``Phantom.structures``) through the library's ``landmark_table``. Controls: the same two architectures with
their untrained (random-initialisation) weights, and the shipped ``demo:contrast-phase`` network (strided
convolutions, no max-pooling).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    ROOT,
    Context,
    Paired,
    Section,
    fmt,
    fmt_ci,
    fmt_paired,
    holm,
    paired,
    significant,
    table,
)

KEY = "seed000"
TITLE = "Seed 000: network depth and anatomical landmarks (Kumar et al.)"
VERSION = "1"

#: convolution + ReLU + 2x2 max-pool blocks of the two networks (widths 16, 32, 48, 64, 64 in turn)
DEPTHS = {"shallow": 2, "deep": 5}
WIDTHS = (16, 32, 48, 64, 64)
#: the phantom's structures (``STRUCTURES``) whose enhancement decides the phase, and the bright distractors
EVIDENCE = (1, 2, 3, 4, 5, 6)
DISTRACTORS = (7, 8)
SHIPPED = "demo:contrast-phase (shipped; no max-pool)"
CASE_SEED0 = 70_000  # back-projection cases: seeds CASE_SEED0 + base seed * 1000 + i (disjoint from training)


@dataclass(frozen=True)
class Recipe:
    """How both networks are trained and scored (every field that changes a network or a score is in its cache
    key: ``digest`` for the fields shared by all replicates, the replicate's index on top)."""

    iterations: int
    batch: int
    lr: float
    pool: int  # training phantoms, generated once and shared by both networks (the same batches in the same order)
    held_out: int  # phantoms for the held-out accuracy
    cases: int  # held-out phantoms back-projected and scored against the landmarks
    replicates: int = 1  # independent trainings (initialisation and batch order) of each network

    def digest(self, seed: int) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "replicates"}
        text = json.dumps({**fields, "seed": seed, "version": VERSION, "depths": DEPTHS, "widths": WIDTHS},
                          sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


FULL = Recipe(iterations=600, batch=24, lr=2e-3, pool=3000, held_out=300, cases=30, replicates=5)
QUICK = Recipe(iterations=4, batch=8, lr=2e-3, pool=32, held_out=24, cases=2, replicates=1)


def make_net(blocks: int, classes: int = 3) -> Any:
    """A VGG-like classifier for ``(B, 1, H, W)`` CT slices in HU: the demo's HU window (``(HU - 40) / 200``
    clamped to ``[-2, 3]``), then ``blocks`` times conv 3x3 + ReLU + 2x2 max-pool, global average pooling and one
    linear layer. Max-pooling gives the deconvnet its switches, through which its back-projection depends on the
    image (Zeiler & Fergus)."""
    import torch
    from torch import nn

    class PoolNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[tuple[str, nn.Module]] = []
            cin = 1
            for i, w in enumerate(WIDTHS[:blocks], 1):
                layers += [(f"conv{i}", nn.Conv2d(cin, w, 3, padding=1)), (f"relu{i}", nn.ReLU()),
                           (f"pool{i}", nn.MaxPool2d(2))]
                cin = w
            self.features = nn.Sequential(OrderedDict(layers))
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(cin, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.clamp((x - 40.0) / 200.0, -2.0, 3.0)
            out: torch.Tensor = self.head(self.gap(self.features(x)).flatten(1))
            return out

    return PoolNet()


def init_seed(seed: int, replicate: int = 0) -> int:
    return 1000 + seed + 100 * replicate


def untrained_net(name: str, seed: int, replicate: int = 0) -> Any:
    """The network's weights before training (the same initialisation the trained one starts from)."""
    import torch

    torch.manual_seed(init_seed(seed, replicate))
    net = make_net(DEPTHS[name])
    net.eval()
    return net


def train_net(name: str, recipe: Recipe, seed: int, pool_x: np.ndarray, pool_y: np.ndarray,
              log: Any = None, replicate: int = 0) -> tuple[Any, dict[str, Any]]:
    """Adam (cosine decay to 5 %), cross-entropy, batches drawn from the shared pool by
    ``default_rng(2000 + seed + 100 * replicate)`` (both networks see the same batches in the same order)."""
    import torch
    import torch.nn.functional as F

    net = untrained_net(name, seed, replicate)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    n_it = recipe.iterations
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(i / max(n_it, 1), 1.0))))
    rng = np.random.default_rng(2000 + seed + 100 * replicate)
    net.train()
    t0 = time.perf_counter()
    running = float("nan")
    for it in range(n_it):
        idx = rng.choice(len(pool_y), size=min(recipe.batch, len(pool_y)), replace=False)
        loss = F.cross_entropy(net(torch.from_numpy(pool_x[idx])), torch.from_numpy(pool_y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = float(loss.detach()) if it == 0 else 0.95 * running + 0.05 * float(loss.detach())
        if log is not None and (it + 1) % 100 == 0:
            log(f"   {name}: it {it + 1}/{n_it} loss {running:.3f} {time.perf_counter() - t0:.0f} s")
    net.eval()
    return net, {"train_seconds": time.perf_counter() - t0, "final_loss": running}


def held_out_correct(net: Any, recipe: Recipe, seed: int) -> list[int]:
    """1/0 per held-out phantom (balanced phases, their own seed stream): is the predicted phase right?"""
    import torch

    from napari_attribution.models.demo import abdomen_batch

    x, y, _ = abdomen_batch(5000 + seed, recipe.held_out, dims=2)
    with torch.no_grad():
        pred = np.concatenate([net(torch.from_numpy(x[i:i + 50])).argmax(1).numpy() for i in range(0, len(x), 50)])
    return [int(v) for v in (pred == y)]


def trained_nets(ctx: Context, recipe: Recipe) -> dict[tuple[str, int], tuple[Any, dict[str, Any]]]:
    """Both networks in every replicate, trained (or loaded from the cache folder: the weights are keyed by the
    recipe's digest and the replicate), with their training time and held-out correctness."""
    import torch

    digest = recipe.digest(ctx.seed)
    folder = Path(ctx.cache.root) / f"{KEY}-weights"
    out: dict[tuple[str, int], tuple[Any, dict[str, Any]]] = {}
    pool: tuple[np.ndarray, np.ndarray] | None = None
    for r in range(recipe.replicates):
        for name in DEPTHS:
            path = folder / (f"{name}-{digest}.pt" if r == 0 else f"{name}-r{r}-{digest}.pt")
            if ctx.cache.enabled and path.is_file():
                blob = torch.load(path, map_location="cpu", weights_only=True)
                net = make_net(DEPTHS[name])
                net.load_state_dict(blob["state_dict"])
                net.eval()
                out[name, r] = (net, json.loads(blob["metrics"]))
                ctx.cache.reused(out[name, r][1].get("train_seconds", 0.0))  # the report's time column
                continue
            if pool is None:
                from napari_attribution.models.demo import abdomen_batch

                t0 = time.perf_counter()
                px, py, _ = abdomen_batch(3000 + ctx.seed, recipe.pool, dims=2)
                pool = (px, py)
                ctx.log(f"   {KEY}: {recipe.pool} training phantoms in {time.perf_counter() - t0:.1f} s")
            torch.set_num_threads(1)
            net, metrics = train_net(name, recipe, ctx.seed, pool[0], pool[1], log=ctx.log, replicate=r)
            metrics["correct"] = held_out_correct(net, recipe, ctx.seed)
            metrics["parameters"] = int(sum(p.numel() for p in net.parameters()))
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": net.state_dict(), "metrics": json.dumps(metrics)}, path)
            out[name, r] = (net, metrics)
    return out


def case_phantom(seed: int, i: int) -> Any:
    from napari_attribution.models.demo import abdomen_phantom

    return abdomen_phantom(CASE_SEED0 + 1000 * seed + i, i % 3, dims=2)


def landmark_scores(heatmap: np.ndarray, structures: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """One map against the phantom's structures (``landmark_table``): share of the positive energy on the
    phase-deciding structures and on the distractors, the structure holding the peak, and the chance levels (the
    share an evenly spread map would give, over the image and over the body)."""
    from napari_attribution.metrics import landmark_table
    from napari_attribution.models.demo import STRUCTURES

    t = landmark_table(heatmap, structures, spacing=spacing, names=STRUCTURES)
    energy = {r.label: (r.energy or 0.0) for r in t.rows}
    vox = {r.label: r.voxels for r in t.rows}
    body = float((structures > 0).sum())
    n = float(structures.size)
    peak = next((r.label for r in t.rows if r.peak_inside), 0)
    ev = sum(vox.get(k, 0) for k in EVIDENCE)
    di = sum(vox.get(k, 0) for k in DISTRACTORS)
    return {
        "energy": {str(k): v for k, v in energy.items()},
        "evidence": float(sum(energy.get(k, 0.0) for k in EVIDENCE)),
        "distractors": float(sum(energy.get(k, 0.0) for k in DISTRACTORS)),
        "outside_body": float(1.0 - sum(energy.values())) if t.positive_energy > 0 else float("nan"),
        "peak_label": int(peak),
        "hit": float(peak in EVIDENCE),
        "peak_distractor": float(peak in DISTRACTORS),
        "chance_image": ev / n,
        "chance_body": ev / body,
        "chance_distractors_body": di / body,
        "chance_label_body": {str(k): vox[k] / body for k in vox},
    }


def backprojection(net: Any, case: Any) -> np.ndarray:
    """``response_backprojection`` (deconvnet back-projection of the true class's positive logit, mode
    ``"target"``) of one slice."""
    import napari_attribution as na

    return np.asarray(na.explain(net, case.image, "response_backprojection", int(case.label)).data)


def score_case(net: Any, case: Any) -> dict[str, Any]:
    import torch

    with torch.no_grad():
        logits = net(torch.from_numpy(case.image)[None, None]).numpy()[0]
    out = landmark_scores(backprojection(net, case), case.structures, case.spacing)
    out["correct"] = float(int(np.argmax(logits)) == int(case.label))
    return out


def unclamped(image: np.ndarray) -> np.ndarray:
    """Voxels inside the HU window's linear range (-360 to 640 HU): elsewhere the clamp passes no gradient."""
    out: np.ndarray = (image > -360.0) & (image < 640.0)
    return out


def same_class_correlation(net: Any, cases: Sequence[Any]) -> float:
    """The smallest Pearson correlation, over pairs of cases of the same class, between the two back-projections
    on the voxels inside the window's linear range in both: 1.0 means the map is one fixed pattern whatever the
    image (up to scale), as for a deconvnet without max-pool switches."""
    maps = [backprojection(net, c) for c in cases]
    worst = float("nan")
    for i in range(len(cases)):
        for j in range(i + 1, len(cases)):
            if cases[i].label != cases[j].label:
                continue
            ok = unclamped(cases[i].image) & unclamped(cases[j].image)
            r = float(np.corrcoef(maps[i][ok], maps[j][ok])[0, 1])
            worst = r if not np.isfinite(worst) else min(worst, r)
    return worst


def shipped_net() -> Any:
    from napari_attribution.models.demo import get_demo

    return get_demo("contrast-phase").module


def map_key(kind: str, depth: str, replicate: int) -> str:
    """The cache name of one network's maps: ``"deep (trained)"``, ``"shallow (untrained, replicate 3)"``..."""
    return f"{depth} ({kind})" if replicate == 0 else f"{depth} ({kind}, replicate {replicate + 1})"


def pooled(per_replicate: list[list[dict[str, Any]]], key: str) -> list[float]:
    """Per slice, the mean of ``key`` over the training replicates (so one number per slice and network depth)."""
    return [float(v) for v in np.mean([_col(rows, key) for rows in per_replicate], axis=0)]


def claim_family(deep: list[float], shallow: list[float], deep_dis: list[float], shallow_dis: list[float],
                 deep_hit: list[float], shallow_hit: list[float]) -> dict[str, Paired]:
    """The claim's comparisons, deep against shallow on the same slices (Holm over the three)."""
    fam = {
        "share on the phase landmarks (higher is better)": paired(deep, shallow),
        "share on spine + bowel (lower is better)": paired(deep_dis, shallow_dis, higher_is_better=False),
        "pointing game on the phase landmarks (higher is better)": paired(deep_hit, shallow_hit),
    }
    holm(list(fam.values()))
    return fam


def run(ctx: Context) -> Section:
    import torch

    torch.set_num_threads(1)
    recipe = QUICK if ctx.quick else FULL
    digest = recipe.digest(ctx.seed)
    t_train = time.perf_counter()
    trained = trained_nets(ctx, recipe)
    ctx.log(f"   {KEY}: networks ready in {time.perf_counter() - t_train:.1f} s")
    nets: dict[str, Any] = {}
    for r in range(recipe.replicates):
        for d in DEPTHS:
            nets[map_key("trained", d, r)] = trained[d, r][0]
            nets[map_key("untrained", d, r)] = untrained_net(d, ctx.seed, r)
    nets[SHIPPED] = shipped_net()
    cases = [case_phantom(ctx.seed, i) for i in range(recipe.cases)]
    scores: dict[str, list[dict[str, Any]]] = {}
    for name, net in nets.items():
        scores[name] = [ctx.timed((KEY, VERSION, "case", name, digest, ctx.seed, i),
                                  lambda net=net, c=c: score_case(net, c)) for i, c in enumerate(cases)]
    pairs = cases[:6]  # two slices per phase
    constancy = {name: ctx.cache.get((KEY, VERSION, "constancy-nan", name, digest, ctx.seed, len(pairs)),
                                     lambda net=net: same_class_correlation(net, pairs))
                 for name, net in nets.items() if "replicate" not in name}
    md, verdict, summary, figs = _write(ctx, recipe, trained, scores, cases, nets, constancy)
    return Section(KEY, TITLE, md, verdict, summary, figures=figs)


# ----------------------------------------------------------------------------------------------- the page


def _col(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows]


def _p(r: Paired) -> str:
    from .common import fmt_p

    return fmt_p(r.p_adj if np.isfinite(r.p_adj) else r.p)


def _better(r: Paired) -> bool:
    return significant(r) and r.effect > 0


def _parse_key(name: str) -> tuple[str, str, int]:
    """``"deep (trained, replicate 2)"`` -> ``("trained", "deep", 2)`` (replicates counted from 1)."""
    depth, rest = name.split(" (", 1)
    parts = rest.rstrip(")").split(", replicate ")
    return parts[0], depth, int(parts[1]) if len(parts) > 1 else 1


def _figure(ctx: Context, cases: list[Any], nets: dict[str, Any], replicates: int) -> tuple[list[str], str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = next((c for c in cases if c.label == 1), cases[0])
    names = [map_key("trained", "shallow", 0), *(map_key("trained", "deep", r) for r in range(min(replicates, 2))),
             map_key("untrained", "deep", 0)]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.3 * (len(names) + 1), 4.0))
    axes[0].imshow(case.image, cmap="gray", vmin=-160, vmax=240)
    ev = np.isin(case.structures, EVIDENCE)
    di = np.isin(case.structures, DISTRACTORS)
    axes[0].contour(ev, levels=[0.5], colors="lime", linewidths=0.8)
    axes[0].contour(di, levels=[0.5], colors="orange", linewidths=0.8)
    axes[0].set_title(f"held-out {['non-contrast', 'arterial', 'portal venous'][int(case.label)]} slice\n"
                      "green: phase landmarks\norange: spine + bowel", fontsize=9)
    for ax, name in zip(axes[1:], names, strict=True):
        m = backprojection(nets[name], case)
        s = landmark_scores(m, case.structures, case.spacing)
        ax.imshow(case.image, cmap="gray", vmin=-160, vmax=240)
        ax.imshow(np.ma.masked_less_equal(m, 0), cmap="hot", alpha=0.75,
                  vmax=float(np.quantile(m[m > 0], 0.995)) if (m > 0).any() else 1.0)
        ax.contour(ev, levels=[0.5], colors="lime", linewidths=0.5)
        kind, depth, rep = _parse_key(name)
        ax.set_title(f"{depth}, {kind}, replicate {rep}\n"
                     f"on landmarks {s['evidence']:.2f} (even {s['chance_body']:.2f})\n"
                     f"spine + bowel {s['distractors']:.2f} (even {s['chance_distractors_body']:.2f})", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    path, link = ctx.figure("seed000_backprojections.png")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return [os.path.relpath(path, ROOT)], link


def _write(ctx: Context, recipe: Recipe, trained: dict[tuple[str, int], tuple[Any, dict[str, Any]]],
           scores: dict[str, list[dict[str, Any]]], cases: list[Any],
           nets: dict[str, Any], constancy: dict[str, float]) -> tuple[str, str, str, list[str]]:
    n = recipe.cases
    k = recipe.replicates
    reps = range(k)
    first = scores[map_key("trained", "deep", 0)]
    chance_body = _col(first, "chance_body")
    chance_image = _col(first, "chance_image")
    chance_dis = _col(first, "chance_distractors_body")
    per = {(kind, d): [scores[map_key(kind, d, r)] for r in reps] for kind in ("trained", "untrained") for d in DEPTHS}
    pool = {(kind, d, key): pooled(per[kind, d], key) for (kind, d) in per
            for key in ("evidence", "distractors", "hit", "peak_distractor", "correct")}
    label = {("trained", "shallow"): f"shallow, trained (mean of {k})", ("trained", "deep"): f"deep, trained (mean of "
             f"{k})", ("untrained", "shallow"): f"shallow, untrained (mean of {k})",
             ("untrained", "deep"): f"deep, untrained (mean of {k})"}

    # family 1: the claim, deep vs shallow (trained; per slice the mean over the replicates)
    fam1 = claim_family(*(pool["trained", d, key] for key in ("evidence", "distractors", "hit")
                          for d in ("deep", "shallow")))
    # family 1b: the same comparison of the share on the landmarks within each replicate (Holm over the replicates)
    fam1r = [paired(_col(scores[map_key("trained", "deep", r)], "evidence"),
                    _col(scores[map_key("trained", "shallow", r)], "evidence")) for r in reps]
    holm(fam1r)
    fam1r_dis = [paired(_col(scores[map_key("trained", "deep", r)], "distractors"),
                        _col(scores[map_key("trained", "shallow", r)], "distractors"), higher_is_better=False)
                 for r in reps]
    holm(fam1r_dis)
    # family 2: is each map above an evenly spread one (its per-case chance)?
    fam2 = {label[kd]: paired(pool[(*kd, "evidence")], chance_body) for kd in per}
    fam2[SHIPPED] = paired(_col(scores[SHIPPED], "evidence"), chance_body)
    holm(list(fam2.values()))
    # family 3: does training matter, does the architecture alone?
    fam3 = {f"{d}: trained vs untrained": paired(pool["trained", d, "evidence"], pool["untrained", d, "evidence"])
            for d in DEPTHS}
    fam3["untrained: deep vs shallow"] = paired(pool["untrained", "deep", "evidence"],
                                                pool["untrained", "shallow", "evidence"])
    holm(list(fam3.values()))

    figs, link = _figure(ctx, cases, nets, k)
    quick_note = ("\n\n> **Quick mode: not meaningful.** The networks are trained for a few iterations on a few "
                  "dozen phantoms and scored on 2 cases; only the full report's numbers mean anything.\n"
                  if ctx.quick else "")
    metrics = {(d, r): trained[d, r][1] for r in reps for d in DEPTHS}
    acc = {key: float(np.mean(v["correct"])) for key, v in metrics.items()}
    acc_all = {d: [c for r in reps for c in metrics[d, r]["correct"]] for d in DEPTHS}
    secs = {d: float(np.mean([metrics[d, r]["train_seconds"] for r in reps])) for d in DEPTHS}
    lines = [
        "**What the paper claims** (methods.md §A1). Kumar et al. (arXiv 1611.06284, ISBI 2018) compare "
        "\"attentive response maps obtained using a fractional stride convolution technique\" (a deconvnet "
        "back-projection: `response_backprojection`, our reconstruction) of anatomy classifiers \"with known imaging "
        "landmarks from the medical literature\", across models of different depth, and state that deep enough "
        "models \"use the same medical landmarks a human expert would use\" and that the maps can guide the choice "
        "of architecture. The paper's evaluation is qualitative (no metric, no numbers; data, architectures and "
        "landmarks were not available). Stated as a measurable claim: *the back-projection of a deeper network "
        "trained on a task falls on that task's landmarks more than the back-projection of a shallower network "
        "trained on the same task, and more than an evenly spread map would.*" + quick_note,
        "",
        "**How we measured it.** Task: the demo's 2D contrast phase (96 x 96 abdominal CT phantoms in HU, 3 phases; "
        "the phase changes the HU of aorta, IVC, portal vein, liver and kidneys only, so these are the landmarks a "
        "radiologist reads; spine and bowel with oral contrast are equally bright and say nothing about the phase). "
        f"Two networks differing only in depth: {DEPTHS['shallow']} and {DEPTHS['deep']} blocks of conv 3x3 + ReLU + "
        "2x2 max-pool (widths 16-32-48-64-64), global average pooling, a linear head, and the demo's HU window "
        f"inside `forward` ({metrics['shallow', 0]['parameters']:,} and {metrics['deep', 0]['parameters']:,} "
        "parameters). Max-pooling is what makes a deconvnet's map depend on the image (its switches); the shipped "
        "`demo:contrast-phase` has strided convolutions and no pooling, so it is scored as a control only. "
        f"Both networks are trained here from base seed {ctx.seed} on one thread, in {k} independent training "
        f"replicates r = 0..{k - 1} (initialisation seed {init_seed(ctx.seed)} + 100 r, batch order seed "
        f"{2000 + ctx.seed} + 100 r): in each, the "
        f"same {recipe.pool} training phantoms and the same {recipe.iterations} batches of {recipe.batch} for both "
        f"depths (Adam {recipe.lr:g}, cosine decay to 5 %); the weights are cached by recipe. Held-out accuracy on "
        f"{recipe.held_out} phantoms of another seed stream. Then `response_backprojection` (mode `target`: the "
        f"true phase's positive logit back-projected) on {n} further held-out phantoms (phases in turn, seeds "
        f"{CASE_SEED0 + 1000 * ctx.seed} to {CASE_SEED0 + 1000 * ctx.seed + n - 1}), each scored with "
        "`landmark_table` against `Phantom.structures`: the share of the map's positive energy on the phase "
        "landmarks (higher is better) and on spine + bowel (lower is better), and the pointing game (the map's "
        "maximum inside a phase landmark; higher is better). The main comparison takes, per slice, the mean over "
        "the replicates of each depth; each replicate is also tested on its own. References: an evenly spread map "
        f"(its share is the landmarks' share of the body: {fmt_ci(chance_body)}; of the whole image "
        f"{fmt_ci(chance_image)} — the HU window's clamp gives air no gradient, so the body is the fair reference; "
        "for the pointing game it is the hit rate of a peak placed at random in the body), and the same "
        "architectures with their untrained weights. Comparisons are paired over the same slices (mean difference, "
        "95 % bootstrap CI, wins / ties / losses, two-sided Wilcoxon signed-rank p, rank-biserial effect), with "
        "Holm's correction within each family (a family = the comparisons answering one question, as grouped in "
        "the tables below).",
        "",
        f"**The networks.** Held-out accuracy (higher is better; chance 0.333), over the {k} replicates' "
        f"{k * recipe.held_out} predictions: shallow {fmt_ci(acc_all['shallow'])}, deep "
        f"{fmt_ci(acc_all['deep'])}; training takes {secs['shallow']:.0f} s (shallow) and {secs['deep']:.0f} s "
        "(deep) per replicate on one thread (wall time on a shared machine).",
        "",
        f"**Landmark scores of the back-projections** ({n} held-out slices; per slice the mean over the {k} "
        "replicates; mean [95 % CI] over the slices):",
        "",
        table(["map", "share on phase landmarks ↑", "share on spine + bowel ↓", "pointing game ↑",
               "peak on spine / bowel ↓", "slice classified correctly"], [
            [label[kd], fmt_ci(pool[(*kd, "evidence")]), fmt_ci(pool[(*kd, "distractors")]),
             fmt_ci(pool[(*kd, "hit")]), fmt_ci(pool[(*kd, "peak_distractor")]), fmt_ci(pool[(*kd, "correct")])]
            for kd in per]
            + [[SHIPPED] + [fmt_ci(_col(scores[SHIPPED], key)) for key in
                            ("evidence", "distractors", "hit", "peak_distractor", "correct")]]
            + [["even map over the body (chance)", fmt_ci(chance_body), fmt_ci(chance_dis), fmt_ci(chance_body),
                fmt_ci(chance_dis), "—"]]),
        "",
        "**The claim: deep against shallow, trained** (per slice the mean over the replicates), paired over the "
        "same slices, Holm over these 3:",
        "",
        table(["metric", "deep − shallow: mean [95 % CI], wins/ties/losses of deep, p (Holm)",
               "effect (rank-biserial, + = deep better)"],
              [[key, fmt_paired(v), f"{v.effect:+.2f}"] for key, v in fam1.items()]),
        "",
        "**Replicate by replicate** (held-out accuracy; share on the phase landmarks and on spine + bowel, deep − "
        f"shallow paired over the slices, Holm over the {k} replicates of each column):",
        "",
        table(["replicate", "accuracy shallow / deep", "landmarks: shallow / deep", "deep − shallow (landmarks ↑)",
               "spine + bowel: shallow / deep", "deep − shallow (spine + bowel ↓)"], [
            [str(r + 1), f"{fmt(acc['shallow', r])} / {fmt(acc['deep', r])}",
             f"{fmt(float(np.mean(_col(scores[map_key('trained', 'shallow', r)], 'evidence'))))} / "
             f"{fmt(float(np.mean(_col(scores[map_key('trained', 'deep', r)], 'evidence'))))}",
             fmt_paired(fam1r[r]),
             f"{fmt(float(np.mean(_col(scores[map_key('trained', 'shallow', r)], 'distractors'))))} / "
             f"{fmt(float(np.mean(_col(scores[map_key('trained', 'deep', r)], 'distractors'))))}",
             fmt_paired(fam1r_dis[r])] for r in reps]),
        "",
        f"**Is each map above chance?** Share on the phase landmarks against an even map over the body, Holm over "
        f"these {len(fam2)}:",
        "",
        table(["map", "map − even map: mean [95 % CI], wins/ties/losses, p (Holm)", "effect"],
              [[key, fmt_paired(v), f"{v.effect:+.2f}"] for key, v in fam2.items()]),
        "",
        "**Does training matter, does the architecture alone?** Share on the phase landmarks (means over the "
        "replicates), Holm over these 3:",
        "",
        table(["comparison", "difference: mean [95 % CI], wins/ties/losses, p (Holm)", "effect"],
              [[key, fmt_paired(v), f"{v.effect:+.2f}"] for key, v in fam3.items()]),
        "",
        f"![one arterial slice: the landmarks and the back-projections of trained shallow and deep networks and of "
        f"an untrained deep one]({link})",
        "",
        "*One held-out arterial slice: the phase landmarks (green) and spine + bowel (orange), then the "
        "back-projection of the trained shallow network (replicate 1), of the trained deep network of replicates 1 "
        "and 2, and of the deep network of replicate 1 before training.*",
        "",
        "**By phase** (share on the phase landmarks, mean [95 % CI] over the slices of each phase, means over the "
        "replicates; for non-contrast the evidence is an absence of enhancement):",
        "",
        _by_phase(pool, cases, chance_body, label),
        "",
        "**Per structure** (share of the positive energy, mean over the slices; chance = its share of the body; "
        "each trained deep replicate shown):",
        "",
        _per_landmark(scores, [map_key("trained", "shallow", 0)] + [map_key("trained", "deep", r) for r in reps]
                      + [map_key("untrained", "deep", 0), SHIPPED]),
        "",
        "**Does the map depend on the image?** The smallest correlation between the back-projections of two slices "
        "of the same phase (first two slices of each phase, over the voxels inside the HU window's linear range in "
        "both; 1.000 = one fixed pattern whatever the image, up to scale; replicate 1):",
        "",
        table(["map", "smallest same-phase correlation"], [[key, fmt(v, 4)] for key, v in constancy.items()]),
    ]

    # verdict
    d_ev, d_dis, d_pg = fam1.values()
    depth_ok = _better(d_ev)
    n_rep_ok = sum(_better(r) for r in fam1r)
    chance_ok = _better(fam2[label["trained", "deep"]])
    learn_ok = _better(fam3["deep: trained vs untrained"])
    if depth_ok and chance_ok and learn_ok and n_rep_ok == k:
        verdict = "reproduced"
    elif depth_ok or chance_ok:
        verdict = "reproduced in part"
    else:
        verdict = "not reproduced"
    mean = {kd: float(np.mean(pool[(*kd, "evidence")])) for kd in per}
    mdis = {kd: float(np.mean(pool[(*kd, "distractors")])) for kd in per}
    even = float(np.mean(chance_body))
    spine = [float(np.mean([r["energy"].get("7", 0.0) for r in scores[map_key("trained", "deep", i)]]))
             for i in reps]
    spine_chance = float(np.mean([r["chance_label_body"].get("7", 0.0) for r in first]))
    hit = {d: float(np.mean(pool["trained", d, "hit"])) for d in DEPTHS}
    learn = fam3["deep: trained vs untrained"]
    words = [
        f"Verdict: **{verdict}**. Averaged over {k} training replicates, the deep network (held-out accuracy "
        f"{fmt(float(np.mean(acc_all['deep'])))}) puts {fmt(mean['trained', 'deep'])} of its back-projection's "
        f"positive energy on the phase landmarks, the shallow one (accuracy {fmt(float(np.mean(acc_all['shallow'])))}"
        f") {fmt(mean['trained', 'shallow'])}, an evenly spread map {fmt(even)}: deep − shallow {d_ev.diff:+.3f} "
        f"[{d_ev.lo:+.3f}, {d_ev.hi:+.3f}], deep higher on {d_ev.wins} of {d_ev.n} slices, Holm p {_p(d_ev)}; deep "
        f"vs even map Holm p {_p(fam2[label['trained', 'deep']])}. Pointing game {fmt(hit['deep'])} "
        f"vs {fmt(hit['shallow'])} (Holm p {_p(d_pg)}); on spine + bowel "
        f"{fmt(mdis['trained', 'deep'])} vs {fmt(mdis['trained', 'shallow'])} (lower is better, even map "
        f"{fmt(float(np.mean(chance_dis)))}; Holm p {_p(d_dis)})"
        + ("; so the deep maps also fall more on the distractors, chiefly the spine (bright bone), than the "
           "shallow ones do." if significant(d_dis) and d_dis.effect < 0 else "."),
        f"Replicate by replicate the deep map is significantly more on the landmarks than the shallow one in "
        f"{n_rep_ok} of {k} (Holm over the replicates); the deep networks' share on the spine ranges "
        f"{fmt(min(spine))}–{fmt(max(spine))} (an even map {fmt(spine_chance)}"
        ")" + (": networks of one architecture and about equal accuracy differ in where their back-projection falls."
               if k > 1 and max(spine) > 2 * min(spine) else "."),
        f"Before training the same architectures give {fmt(mean['untrained', 'shallow'])} (shallow) and "
        f"{fmt(mean['untrained', 'deep'])} (deep); trained vs untrained deep {learn.diff:+.3f} (Holm p {_p(learn)})"
        + (", so the deep network's landmark agreement comes with what it learnt, not with the architecture alone."
           if learn_ok else ", so the deep network's landmark agreement is not shown to come from what it learnt."),
        f"The shipped strided network (no max-pool) scores {fmt(float(np.mean(_col(scores[SHIPPED], 'evidence'))))}"
        + (f": its deconvnet map is one fixed pattern whatever the image (smallest same-phase correlation "
           f"{fmt(constancy[SHIPPED], 4)}), so it says nothing about what that network reads."
           if constancy[SHIPPED] > 0.999 else f" (smallest same-phase correlation {fmt(constancy[SHIPPED], 4)})."),
        "Limits: depth comes here with capacity ("
        f"{metrics['deep', 0]['parameters'] / metrics['shallow', 0]['parameters']:.0f} times the parameters) and "
        "receptive field, as it does in the "
        "paper's comparison of models; the shallow network solves the task less well, so part of the difference "
        "may be that of a better classifier rather than of depth as such; the landmarks are a phantom's, not a "
        "radiologist's annotation of real scans.",
        f"Criteria: deep above shallow on the landmarks, over the replicates ({'yes' if depth_ok else 'no'}) and "
        f"in every replicate ({'yes' if n_rep_ok == k else 'no'}); deep above an even map "
        f"({'yes' if chance_ok else 'no'}); trained deep above untrained deep ({'yes' if learn_ok else 'no'}). All = "
        "reproduced; the first or the third = reproduced in part.",
    ]
    if ctx.quick:
        words.append("(Quick mode: not meaningful.)")
    lines += ["", " ".join(words)]
    summary = (f"Deep vs shallow back-projection on the phase landmarks, mean of {k} trainings: "
               f"{fmt(mean['trained', 'deep'])} vs {fmt(mean['trained', 'shallow'])} (even map {fmt(even)}; Holm p "
               f"{_p(d_ev)}); deep better in {n_rep_ok} of {k} replicates.")
    return "\n".join(lines), verdict, summary, figs


def _by_phase(pool: dict[tuple[str, str, str], list[float]], cases: list[Any], chance: list[float],
              label: dict[tuple[str, str], str]) -> str:
    from napari_attribution.models.demo import PHASES

    rows = []
    for k, phase in enumerate(PHASES):
        idx = [i for i, c in enumerate(cases) if int(c.label) == k]
        if not idx:
            continue
        rows.append([f"{phase} (n = {len(idx)})", fmt_ci([chance[i] for i in idx])]
                    + [fmt_ci([pool[(*kd, "evidence")][i] for i in idx]) for kd in label])
    return table(["phase", "even map", *label.values()], rows)


def _per_landmark(scores: dict[str, list[dict[str, Any]]], names: list[str]) -> str:
    from napari_attribution.models.demo import STRUCTURES

    labels = [*EVIDENCE, *DISTRACTORS]
    any_rows = scores[names[0]]

    def mean_of(rows: list[dict[str, Any]], field: str, lab: int) -> float:
        return float(np.mean([r[field].get(str(lab), 0.0) for r in rows]))

    rows = []
    for lab in labels:
        rows.append([f"{lab} {STRUCTURES[lab]}", fmt(mean_of(any_rows, "chance_label_body", lab))]
                    + [fmt(mean_of(scores[k], "energy", lab)) for k in names])
    return table(["structure", "chance (body)", *names], rows)
