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
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    Context,
    Paired,
    Section,
    fmt,
    fmt_ci,
    fmt_paired,
    holm,
    mean_ci,
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


FULL = Recipe(iterations=600, batch=24, lr=2e-3, pool=3000, held_out=300, cases=30, replicates=2)
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
    """Adam (cosine decay to 5 %), cross-entropy, batches drawn from the shared pool by ``default_rng(seed)``
    (both networks see the same batches in the same order)."""
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


def trained_name(name: str, replicate: int) -> str:
    return f"{name} (trained)" if replicate == 0 else f"{name} (trained, replicate {replicate + 1})"


def claim_family(deep: list[dict[str, Any]], shallow: list[dict[str, Any]]) -> dict[str, Paired]:
    """The claim's comparisons, deep against shallow on the same slices (Holm over the three)."""
    fam = {
        "share on the phase landmarks (higher is better)": paired(_col(deep, "evidence"), _col(shallow, "evidence")),
        "share on spine + bowel (lower is better)": paired(_col(deep, "distractors"), _col(shallow, "distractors"),
                                                           higher_is_better=False),
        "pointing game on the phase landmarks (higher is better)": paired(_col(deep, "hit"), _col(shallow, "hit")),
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
    nets: dict[str, Any] = {trained_name(n, r): trained[n, r][0] for r in range(recipe.replicates) for n in DEPTHS}
    nets.update({f"{n} (untrained)": untrained_net(n, ctx.seed) for n in DEPTHS})
    nets[SHIPPED] = shipped_net()
    cases = [case_phantom(ctx.seed, i) for i in range(recipe.cases)]
    scores: dict[str, list[dict[str, Any]]] = {}
    for name, net in nets.items():
        scores[name] = [ctx.timed((KEY, VERSION, "case", name, digest, ctx.seed, i),
                                  lambda net=net, c=c: score_case(net, c)) for i, c in enumerate(cases)]
    pairs = cases[:6]  # two slices per phase
    constancy = {name: ctx.cache.get((KEY, VERSION, "constancy-nan", name, digest, ctx.seed, len(pairs)),
                                     lambda net=net: same_class_correlation(net, pairs)) for name, net in nets.items()}
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


def _figure(ctx: Context, cases: list[Any], nets: dict[str, Any]) -> tuple[list[str], str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case = next((c for c in cases if c.label == 1), cases[0])
    names = ["shallow (trained)", "deep (trained)", "deep (untrained)"]
    fig, axes = plt.subplots(1, 4, figsize=(13, 4.0))
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
        ax.set_title(f"{name}: back-projection\non phase landmarks {s['evidence']:.2f}, spine + bowel "
                     f"{s['distractors']:.2f}\n(even map over the body: {s['chance_body']:.2f}, "
                     f"{s['chance_distractors_body']:.2f})", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    path, link = ctx.figure("seed000_backprojections.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [str(path)], link


def _write(ctx: Context, recipe: Recipe, trained: dict[tuple[str, int], tuple[Any, dict[str, Any]]],
           scores: dict[str, list[dict[str, Any]]], cases: list[Any],
           nets: dict[str, Any], constancy: dict[str, float]) -> tuple[str, str, str, list[str]]:
    n = recipe.cases
    reps = range(recipe.replicates)
    first = scores["deep (trained)"]
    chance_body = _col(first, "chance_body")
    chance_image = _col(first, "chance_image")
    chance_dis = _col(first, "chance_distractors_body")

    # family 1 (one per training replicate): the claim, deep vs shallow (trained) on the same slices
    fam1 = [claim_family(scores[trained_name("deep", r)], scores[trained_name("shallow", r)]) for r in reps]
    # family 2: is each map above an evenly spread one (its per-case chance)?
    fam2 = {name: paired(_col(rows, "evidence"), chance_body) for name, rows in scores.items()}
    holm(list(fam2.values()))
    # family 3: does training matter, does the architecture alone matter (first replicate)?
    fam3 = {f"{d}: trained vs untrained": paired(_col(scores[f"{d} (trained)"], "evidence"),
                                                 _col(scores[f"{d} (untrained)"], "evidence")) for d in DEPTHS}
    fam3["untrained: deep vs shallow"] = paired(_col(scores["deep (untrained)"], "evidence"),
                                                _col(scores["shallow (untrained)"], "evidence"))
    holm(list(fam3.values()))

    figs, link = _figure(ctx, cases, nets)
    quick_note = ("\n\n> **Quick mode: not meaningful.** The networks are trained for a few iterations on a few "
                  "dozen phantoms and scored on 2 cases; only the full report's numbers mean anything.\n"
                  if ctx.quick else "")
    metrics = {(d, r): trained[d, r][1] for r in reps for d in DEPTHS}
    acc = {k: v["correct"] for k, v in metrics.items()}
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
        f"Both networks are trained here from base seed {ctx.seed} on one thread: the same {recipe.pool} training "
        f"phantoms and the same {recipe.iterations} batches of {recipe.batch} (Adam {recipe.lr:g}, cosine decay "
        f"to 5 %), from the same initialisation seed; {recipe.replicates} independent training replicate(s) "
        "(another initialisation and batch order), the first one being the main result; the weights are cached by "
        f"recipe. Held-out accuracy on {recipe.held_out} phantoms of another seed stream. Then "
        "`response_backprojection` (mode `target`: the true phase's positive logit back-projected) on "
        f"{n} further held-out phantoms (phases in turn, seeds {CASE_SEED0 + 1000 * ctx.seed} to "
        f"{CASE_SEED0 + 1000 * ctx.seed + n - 1}), each scored with `landmark_table` against "
        "`Phantom.structures`: the share of the map's positive energy on the phase landmarks (higher is better) "
        "and on spine + bowel (lower is better), and the pointing game (the map's maximum inside a phase landmark; "
        "higher is better). References: an evenly spread map (its share is the landmarks' share of the body: "
        f"{fmt_ci(chance_body)}; of the whole image {fmt_ci(chance_image)} — the HU window's clamp gives air no "
        "gradient, so the body is the fair reference; for the pointing game it is the hit rate of a peak placed "
        "at random in the body), and the same two architectures with their untrained weights. Comparisons are "
        "paired over the same slices (mean difference, 95 % bootstrap CI, wins / ties / losses, two-sided "
        "Wilcoxon signed-rank p, rank-biserial effect), with Holm's correction within each family (a family = the "
        "comparisons answering one question, as grouped in the tables below).",
        "",
        "**The networks.** Held-out accuracy (higher is better; chance 0.333):",
        "",
        table(["network", "held-out accuracy", "training time (1 thread)", "final training loss"], [
            [trained_name(d, r), fmt_ci(acc[d, r]), f"{metrics[d, r]['train_seconds']:.0f} s",
             fmt(metrics[d, r]['final_loss'])] for r in reps for d in DEPTHS]),
        "",
        f"**Landmark scores of the back-projections** ({n} held-out slices; mean [95 % CI]):",
        "",
        table(["map", "share on phase landmarks ↑", "share on spine + bowel ↓", "pointing game ↑",
               "peak on spine / bowel ↓", "slice classified correctly"], [
            [name, fmt_ci(_col(rows, "evidence")), fmt_ci(_col(rows, "distractors")), fmt_ci(_col(rows, "hit")),
             fmt_ci(_col(rows, "peak_distractor")), fmt_ci(_col(rows, "correct"))]
            for name, rows in scores.items()]
            + [["even map over the body (chance)", fmt_ci(chance_body), fmt_ci(chance_dis), fmt_ci(chance_body),
                fmt_ci(chance_dis), "—"]]),
        "",
    ]
    for r in reps:
        lines += [
            f"**The claim: deep against shallow, trained{'' if r == 0 else f' (replicate {r + 1})'}**, paired over "
            "the same slices, Holm over these 3:",
            "",
            table(["metric", "deep − shallow: mean [95 % CI], wins/ties/losses of deep, p (Holm)",
                   "effect (rank-biserial, + = deep better)"],
                  [[k, fmt_paired(v), f"{v.effect:+.2f}"] for k, v in fam1[r].items()]),
            "",
        ]
    lines += [
        f"**Is each map above chance?** Share on the phase landmarks against an even map over the body, Holm over "
        f"these {len(fam2)}:",
        "",
        table(["map", "map − even map: mean [95 % CI], wins/ties/losses, p (Holm)", "effect"],
              [[k, fmt_paired(v), f"{v.effect:+.2f}"] for k, v in fam2.items()]),
        "",
        "**Does training matter, does the architecture alone?** Share on the phase landmarks, first replicate, Holm "
        "over these 3:",
        "",
        table(["comparison", "difference: mean [95 % CI], wins/ties/losses, p (Holm)", "effect"],
              [[k, fmt_paired(v), f"{v.effect:+.2f}"] for k, v in fam3.items()]),
        "",
        f"![one arterial slice: the landmarks and the back-projections of the two trained networks and of the "
        f"untrained deep one]({link})",
        "",
        "*One held-out arterial slice: the phase landmarks (green) and spine + bowel (orange), then the "
        "back-projection of the trained shallow and deep networks (first replicate) and of the deep network before "
        "training.*",
        "",
        "**By phase** (share on the phase landmarks, mean [95 % CI] over the slices of each phase; for "
        "non-contrast the evidence is an absence of enhancement):",
        "",
        _by_phase(scores, cases, [trained_name(d, 0) for d in DEPTHS] + ["deep (untrained)"]),
        "",
        "**Per structure** (share of the positive energy, mean over the slices; chance = its share of the body):",
        "",
        _per_landmark(scores),
        "",
        "**Does the map depend on the image?** The smallest correlation between the back-projections of two slices "
        "of the same phase (first two slices of each phase, over the voxels inside the HU window's linear range in "
        "both; 1.000 = one fixed pattern whatever the image, up to scale):",
        "",
        table(["map", "smallest same-phase correlation"], [[k, fmt(v, 4)] for k, v in constancy.items()]),
    ]

    # verdict: a criterion holds when it holds in every training replicate
    depth_ok = all(_better(f["share on the phase landmarks (higher is better)"]) for f in fam1)
    chance_ok = all(_better(fam2[trained_name("deep", r)]) for r in reps)
    learn_ok = _better(fam3["deep: trained vs untrained"])
    if depth_ok and chance_ok and learn_ok:
        verdict = "reproduced"
    elif depth_ok or chance_ok:
        verdict = "reproduced in part"
    else:
        verdict = "not reproduced"
    m = {k: mean_ci(_col(v, "evidence"))[0] for k, v in scores.items()}
    md_ = {k: mean_ci(_col(v, "distractors"))[0] for k, v in scores.items()}
    even = float(np.mean(chance_body))
    words = [f"Verdict: **{verdict}**."]
    for r in reps:
        f = fam1[r]
        ev_, di_, pg_ = f.values()
        dn, sn = trained_name("deep", r), trained_name("shallow", r)
        words.append(
            f"{'Main training' if r == 0 else f'Replicate {r + 1}'}: the deep network (held-out accuracy "
            f"{fmt(float(np.mean(acc['deep', r])))}) puts {fmt(m[dn])} of its back-projection's energy on the "
            f"phase landmarks, the shallow one (accuracy {fmt(float(np.mean(acc['shallow', r])))}) {fmt(m[sn])}, "
            f"an even map {fmt(even)}: deep − shallow {ev_.diff:+.3f} [{ev_.lo:+.3f}, {ev_.hi:+.3f}], deep higher "
            f"on {ev_.wins} of {ev_.n} slices, Holm p {_p(ev_)}; deep vs even map Holm p {_p(fam2[dn])}, shallow "
            f"vs even map Holm p {_p(fam2[sn])}. On spine + bowel the deep map puts {fmt(md_[dn])} against "
            f"{fmt(md_[sn])} (lower is better; Holm p {_p(di_)}, an even map {fmt(float(np.mean(chance_dis)))}); "
            f"pointing game {fmt(mean_ci(_col(scores[dn], 'hit'))[0])} against "
            f"{fmt(mean_ci(_col(scores[sn], 'hit'))[0])} (Holm p {_p(pg_)}).")
    learn = fam3["deep: trained vs untrained"]
    words.append(
        f"Before training, the same architectures give {fmt(m['shallow (untrained)'])} (shallow) and "
        f"{fmt(m['deep (untrained)'])} (deep); trained vs untrained deep {learn.diff:+.3f} (Holm p {_p(learn)}), "
        + ("so the deep network's landmark agreement comes with what it learnt."
           if learn_ok else "so the deep network's landmark agreement is not shown to come from what it learnt.")
        + f" The shipped strided network (no max-pool) scores {fmt(m[SHIPPED])}"
        + (f": its map is one fixed pattern whatever the image (smallest same-phase correlation "
           f"{fmt(constancy[SHIPPED], 4)}), so its deconvnet map says nothing about what it reads."
           if constancy[SHIPPED] > 0.999 else f" (smallest same-phase correlation {fmt(constancy[SHIPPED], 4)})."))
    words.append("Criteria (each must hold in every replicate): deep above shallow on the landmarks "
                 f"({'yes' if depth_ok else 'no'}), deep above an even map ({'yes' if chance_ok else 'no'}), trained "
                 f"deep above untrained deep ({'yes' if learn_ok else 'no'}); all three = reproduced, the first or "
                 "the second = reproduced in part.")
    if ctx.quick:
        words.append("(Quick mode: not meaningful.)")
    lines += ["", " ".join(words)]
    summary = (f"Deep vs shallow back-projection on the phase landmarks: {fmt(m['deep (trained)'])} vs "
               f"{fmt(m['shallow (trained)'])} (even map {fmt(even)}; Holm p {_p(fam1[0][next(iter(fam1[0]))])}); "
               f"on spine + bowel {fmt(md_['deep (trained)'])} vs {fmt(md_['shallow (trained)'])}.")
    return "\n".join(lines), verdict, summary, figs


def _by_phase(scores: dict[str, list[dict[str, Any]]], cases: list[Any], names: list[str]) -> str:
    from napari_attribution.models.demo import PHASES

    rows = []
    for k, phase in enumerate(PHASES):
        idx = [i for i, c in enumerate(cases) if int(c.label) == k]
        if not idx:
            continue
        ref = scores[names[0]]
        rows.append([f"{phase} (n = {len(idx)})", fmt_ci([ref[i]["chance_body"] for i in idx])]
                    + [fmt_ci([scores[nm][i]["evidence"] for i in idx]) for nm in names])
    return table(["phase", "even map", *names], rows)


def _per_landmark(scores: dict[str, list[dict[str, Any]]]) -> str:
    from napari_attribution.models.demo import STRUCTURES

    labels = [*EVIDENCE, *DISTRACTORS]
    names = list(scores)
    any_rows = scores[names[0]]

    def mean_of(rows: list[dict[str, Any]], field: str, lab: int) -> float:
        return float(np.mean([r[field].get(str(lab), 0.0) for r in rows]))

    rows = []
    for lab in labels:
        rows.append([f"{lab} {STRUCTURES[lab]}", fmt(mean_of(any_rows, "chance_label_body", lab))]
                    + [fmt(mean_of(scores[k], "energy", lab)) for k in names])
    return table(["structure", "chance (body)", *names], rows)
