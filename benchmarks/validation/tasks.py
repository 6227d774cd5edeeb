"""The demo tasks with known evidence, scored method by method.

Four bundled demo models whose evidence is known by construction (``docs/demo-models.md``): the lesion CT
classifier (``demo:lesion3d``, evidence: the enhancing sphere), the contrast-phase classifiers in 2D and 3D
(``demo:contrast-phase``, ``demo:contrast-phase-3d``, evidence: the enhancing organs and vessels, the only voxels
that differ between phases) and the vessel segmenter (``demo:vessel-seg``, target: the predicted vessels, evidence:
the true vessels). Every registered method that applies is run on fresh phantoms and scored with the library's own
``na.evaluate``: energy in the evidence, the pointing game, deletion and insertion against random orders of the
same units (``runs/checks.py``'s reference and verdict wording), the cascading model-randomisation check,
infidelity and max-sensitivity. Each (task, case, method) result is cached.

``seed001`` imports :func:`method_result`, :func:`case_reference`, :data:`TASKS` and :func:`case_seeds` from here
so that the vessel segmenter's numbers are computed once.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from .common import (
    Context,
    Paired,
    Section,
    fmt,
    fmt_ci,
    fmt_p,
    holm,
    mean_ci,
    paired,
    significant,
    table,
)

KEY = "tasks"
TITLE = "Demo tasks with known evidence"
#: bump when the protocol changes: every cached result of this section is then recomputed
VERSION = "tasks-v1"

#: metric settings (full mode). Deletion / insertion: ``steps`` + 1 points, ``orders`` random orders as the
#: reference (the library's check box uses 4); infidelity: Gaussian perturbations of ``infid_sigma`` x the scan's
#: range, ``infid_samples`` of them, ``normalize=True`` (the library's defaults, methods.md §A2.4); max-sensitivity:
#: ``ms_samples`` re-runs at +-2 % of the range (the check box's 5); randomisation: ``rand_layers`` re-runs (the
#: check box's 5).
FULL = {"steps": 10, "orders": 4, "infid_sigma": 0.05, "infid_samples": 10, "ms_samples": 5, "rand_layers": 5}
QUICK = {"steps": 5, "orders": 2, "infid_sigma": 0.05, "infid_samples": 3, "ms_samples": 2, "rand_layers": 2}

ALL_METRICS = ("energy", "pointing", "deletion", "insertion", "infidelity", "max_sensitivity", "randomisation")
#: the metrics that re-run the method (5 times each); skipped for the perturbation methods whose one map costs
#: hundreds to thousands of model passes on the 3D tasks
RERUN = ("max_sensitivity", "randomisation")
NO_RERUN = tuple(m for m in ALL_METRICS if m not in RERUN)


@dataclass(frozen=True)
class MethodPlan:
    """How a method is run on a task: its parameters, on how many cases (None: all), which metrics."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    cases: int | None = None
    metrics: tuple[str, ...] = ALL_METRICS
    layer: str | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.params)
        at = f" @ {self.layer}" if self.layer else ""
        return f"`{self.name}`{at}" + (f" ({extra})" if extra else "")


LOCAL = ("energy", "pointing")


def _fast(names: Sequence[str], local: Sequence[str] = ()) -> tuple[MethodPlan, ...]:
    return tuple(MethodPlan(n) for n in names) + tuple(MethodPlan(n, metrics=LOCAL) for n in local)


#: the one-pass methods (one forward and one backward, or a partial one) that get every metric on all cases
FAST = ("saliency", "input_x_gradient", "guided_backprop", "deconvnet", "grad_cam", "grad_cam_pp", "sam",
        "guided_grad_cam")
#: one-pass methods scored on energy and pointing only (the budget): ``cam`` and ``hires_cam`` give Grad-CAM's
#: map up to where the ReLU sits on a global-average-pooling head, ``layer_gradient_x_activation`` is
#: ``hires_cam`` summed without the ReLU, ``layer_activation`` does not depend on the target
LOCAL_CLS = ("cam", "hires_cam", "layer_cam", "layer_gradient_x_activation", "layer_activation")
#: on the vessel segmenter a forward pass of the 48^3 UNet costs 70-200 ms (against 1-10 ms for the classifiers):
#: six one-pass methods get the faithfulness metrics on the first ``faith_cases`` cases, all get energy and
#: pointing on every case
FAST_SEG = ("saliency", "input_x_gradient", "guided_backprop", "deconvnet", "grad_cam", "guided_grad_cam")
LOCAL_SEG = ("grad_cam_pp", "sam", "hires_cam", "layer_cam", "layer_gradient_x_activation", "layer_activation")


@dataclass(frozen=True)
class Task:
    """One demo task: the model, how a case is drawn, how many, which methods."""

    name: str  # demo name
    label: str
    n_cases: int
    seed_base: int
    methods: tuple[MethodPlan, ...]
    #: cases (the first ones) on which the fast methods get the faithfulness metrics (None: all)
    faith_cases: int | None = None
    not_run: tuple[tuple[str, str], ...] = ()
    evidence: str = ""
    #: the deletion fill when the library's default (``baseline="auto"``) is not informative on this model; the
    #: default's curves are then measured too (``deletion_default``)
    fill: float | None = None
    #: settings that differ from :data:`FULL` on this task (the segmenter's costly passes)
    overrides: tuple[tuple[str, Any], ...] = ()


_SKIP_CLS = (("vebi", "needs relevant features learned offline over a data set (`fit_relevant_features`); "
              "seed 004's section measures it"),)
_SLOW_LESION = (
    MethodPlan("integrated_gradients", (("steps", 16),)),
    MethodPlan("smoothgrad", (("samples", 16),)),
    MethodPlan("score_cam"),
    MethodPlan("layer_conductance", (("steps", 16),)),
    MethodPlan("response_backprojection", cases=10),
    MethodPlan("occlusion"),
    MethodPlan("rise", (("masks", 300),), cases=10),
    MethodPlan("evidence", (("stride", 4),), cases=6, metrics=NO_RERUN),
    MethodPlan("prediction_difference", (("stride", 4), ("samples", 4)), cases=6, metrics=NO_RERUN),
)
_SLOW_2D = (
    MethodPlan("integrated_gradients", (("steps", 16),)),
    MethodPlan("smoothgrad", (("samples", 16),)),
    MethodPlan("score_cam"),
    MethodPlan("layer_conductance", (("steps", 16),)),
    MethodPlan("response_backprojection", cases=9),
    MethodPlan("occlusion"),
    MethodPlan("rise", (("masks", 300),), cases=9),
    MethodPlan("evidence", cases=6, metrics=NO_RERUN),
    MethodPlan("prediction_difference", (("samples", 4),), cases=6, metrics=NO_RERUN),
)
_SLOW_3D = (
    MethodPlan("integrated_gradients", (("steps", 16),), cases=9),
    MethodPlan("smoothgrad", (("samples", 16),), cases=6),
    MethodPlan("score_cam", cases=9),
    MethodPlan("layer_conductance", (("steps", 16),), cases=9),
    MethodPlan("response_backprojection", cases=6),
    MethodPlan("occlusion", (("window", 8), ("stride", 8)), cases=9, metrics=NO_RERUN),
    MethodPlan("rise", (("masks", 300),), cases=6, metrics=NO_RERUN),
    MethodPlan("evidence", (("stride", 8),), cases=3, metrics=NO_RERUN),
)
_SLOW_SEG = (
    MethodPlan("integrated_gradients", (("steps", 16),), cases=5, metrics=NO_RERUN),
    MethodPlan("score_cam", cases=5, metrics=NO_RERUN),
    MethodPlan("occlusion", (("window", 12), ("stride", 12)), cases=5, metrics=NO_RERUN),
)

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("lesion3d", "lesion CT classifier (`demo:lesion3d`, 16 x 28 x 28, target: the lesion class)", 20,
             910_000, _fast(FAST, LOCAL_CLS) + _SLOW_LESION,
             not_run=_SKIP_CLS, evidence="the enhancing sphere (lesion cases only)", fill=40.0),
        Task("contrast-phase", "contrast phase, 2D (`demo:contrast-phase`, 96 x 96, target: the true phase)", 21,
             920_000, _fast(FAST, LOCAL_CLS) + _SLOW_2D,
             not_run=_SKIP_CLS, evidence="aorta, IVC, portal vein, liver and kidneys (the voxels that differ "
                                         "between phases)"),
        Task("contrast-phase-3d", "contrast phase, 3D (`demo:contrast-phase-3d`, 24 x 48 x 48, target: the true "
             "phase)", 21, 930_000, _fast(FAST, LOCAL_CLS) + _SLOW_3D,
             not_run=_SKIP_CLS + (("prediction_difference", "about 2,600 forward passes per map at the default "
                                   "windows (13 s), and the same as `evidence` in its conditional-mean mode"),),
             evidence="as in 2D"),
        Task("vessel-seg", "vessel segmenter (`demo:vessel-seg`, 48^3, target: the predicted vessels)", 20,
             940_000, _fast(FAST_SEG, LOCAL_SEG) + _SLOW_SEG, faith_cases=10,
             overrides=(("orders", 3), ("infid_samples", 5), ("ms_samples", 3), ("rand_layers", 3)),
             not_run=_SKIP_CLS + (
                 ("cam", "needs a global-average-pooling head; a UNet has none"),
                 ("smoothgrad", "16-50 backward passes of the 48^3 UNet per map (13 s at 50 samples)"),
                 ("response_backprojection", "one backward pass per unit"),
                 ("layer_conductance", "measured in seed 001's section, at the layer TorchEsegeta used"),
                 ("rise", "hundreds of UNet passes per map"),
                 ("evidence", "the default windows need a conditional Gaussian of over 8,000 dimensions on 48^3 "
                              "(the library refuses); thousands of UNet passes with other windows"),
                 ("prediction_difference", "as `evidence`")),
             evidence="the true vessels (the ground truth)"),
    )
}

QUICK_TASKS = {"lesion3d": (2, (MethodPlan("saliency"), MethodPlan("grad_cam")))}


def settings(ctx: Context, task: Task | None = None) -> dict[str, Any]:
    """The metric settings of ``task`` in this mode (:data:`FULL` with the task's overrides, or :data:`QUICK`)."""
    if ctx.quick:
        return dict(QUICK)
    return {**FULL, **dict(task.overrides if task is not None else ())}


def case_seeds(task: Task, base_seed: int, n: int | None = None) -> list[int]:
    """The generator seeds of a task's cases: ``seed_base + 1000 * base_seed + i``. Integer seeds from 910,000
    up: training draws from ``default_rng(0)``'s stream, the held-out sets from ``default_rng(10000)``'s, and the
    docs' tables from seeds 50,000-60,003 (``docs/demo-models.md``), so none of these cases was seen before."""
    n = task.n_cases if n is None else n
    return [task.seed_base + 1000 * int(base_seed) + i for i in range(n)]


@lru_cache(maxsize=8)
def model(name: str) -> Any:
    from napari_attribution.models.demo import get_demo

    return get_demo(name)


@lru_cache(maxsize=64)
def case(name: str, seed: int, index: int) -> Any:
    """The phantom of case ``index``: lesion cases always carry a lesion (the evidence); contrast-phase cases
    cycle through the three phases (so any first k cases are balanced)."""
    from napari_attribution.models.demo import DEMO_MODELS

    gen = DEMO_MODELS[name].generator
    if name == "lesion3d":
        return gen(seed, True)
    if name.startswith("contrast-phase"):
        return gen(seed, index % 3)
    return gen(seed)


def target_of(name: str, phantom: Any) -> Any:
    from napari_attribution.targets import Predicted

    return Predicted(1) if name == "vessel-seg" else int(phantom.label)


def tolerance_mm(phantom: Any) -> float:
    """The pointing game's tolerance: one voxel along the coarsest axis."""
    return float(max(phantom.spacing))


def pointing_chance(phantom: Any, tol: float) -> float:
    """The hit rate of a map whose maximum falls on a uniformly random voxel: the share of voxels within ``tol``
    mm of the evidence."""
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(~phantom.mask, sampling=phantom.spacing)
    return float((dist <= tol).mean())


def _engine(name: str) -> Any:
    """The vessel UNet's 48^3 forward passes run one volume at a time on oneDNN (``fast_cpu_conv3d``, the mode
    ``explain`` uses): measured here at about 70 ms per volume against 110-160 ms per volume in batches of 8."""
    from contextlib import nullcontext

    if name != "vessel-seg":
        return nullcontext(), 8
    from napari_attribution.methods._hooks import fast_cpu_conv3d

    return fast_cpu_conv3d(model(name).module), 1


def _key(*parts: Any) -> tuple[Any, ...]:
    return tuple(json.dumps(p, sort_keys=True) if isinstance(p, (dict, list, tuple)) else p for p in parts)


#: the per-case references already read in this process: every method of a case needs them, and reading them
#: from the cache once keeps the report's "time from an empty cache" from counting them once per method
_SEEN: dict[tuple[Any, ...], Any] = {}


def _once(ctx: Context, key: tuple[Any, ...], fn: Any) -> Any:
    memo = (str(ctx.cache.root), *key)
    if memo not in _SEEN:
        _SEEN[memo] = ctx.timed(key, fn)
    return _SEEN[memo]


def case_reference(ctx: Context, name: str, seed: int, index: int, s: dict[str, Any]) -> dict[str, Any]:
    """What a map that knows nothing scores on this case: the random orders of deletion and insertion (from
    ``na.evaluate``'s own reference, evaluated on a Gaussian-noise map, whose own AUC is one more random order),
    the infidelity of that noise map, and the chance levels of energy (the evidence's share of the image) and of
    the pointing game."""

    def run() -> dict[str, Any]:
        import napari_attribution as na

        ph = case(name, seed, index)
        m = model(name)
        tgt = target_of(name, ph)
        noise = np.random.default_rng(seed).normal(size=ph.image.shape).astype(np.float32)
        out: dict[str, Any] = dict(case_chance(ctx, name, seed, index))
        ctxm, batch = _engine(name)
        with warnings.catch_warnings(), ctxm:
            warnings.simplefilter("ignore")
            for kind in _kinds(name):
                sc = na.evaluate(m, ph.image, noise, _metric(kind), tgt, steps=s["steps"], random_orders=s["orders"],
                                 seed=seed, batch=batch, geometry=_geometry(ph), **_fill(name, kind))
                d = sc.details
                out[kind] = {"noise_auc": sc.value, "random_auc": float(d["random_auc"]),
                             "random_aucs": [float(v) for v in d["random_aucs"]],
                             "random_band": float(d["random_band"]), "random_curve": _floats(d["random_curve"]),
                             "unit": d["unit"], "fill": d["fill"], "fill_note": d.get("fill_note", ""),
                             "units": int(d["units"])}
            sc = na.evaluate(m, ph.image, noise, "infidelity", tgt, sigma=s["infid_sigma"],
                             samples=s["infid_samples"], seed=seed, batch=batch)
            out["infidelity_noise"] = sc.value
        return out

    return _once(ctx, _key(KEY, VERSION, "reference", name, seed, index, s), run)


def case_chance(ctx: Context, name: str, seed: int, index: int) -> dict[str, Any]:
    """The chance levels of one case: energy (the evidence's share of the image) and the pointing game."""

    def run() -> dict[str, Any]:
        ph = case(name, seed, index)
        return {"seed": seed, "chance_energy": float(ph.mask.mean()),
                "chance_pointing": pointing_chance(ph, tolerance_mm(ph)), "tolerance_mm": tolerance_mm(ph)}

    return _once(ctx, _key(KEY, VERSION, "chance", name, seed, index), run)


def _kinds(name: str) -> tuple[str, ...]:
    """The deletion / insertion curves measured on task ``name``: with a task fill, deletion uses it and
    ``deletion_default`` is the library's default fill."""
    return ("deletion", "insertion") + (("deletion_default",) if TASKS[name].fill is not None else ())


def _metric(kind: str) -> str:
    return "deletion" if kind.startswith("deletion") else kind


def _fill(name: str, kind: str) -> dict[str, Any]:
    fill = TASKS[name].fill
    return {"baseline": fill} if kind == "deletion" and fill is not None else {}


def _geometry(ph: Any) -> Any:
    import napari_attribution as na

    sp = tuple(float(v) for v in ph.spacing)
    return na.Geometry(spacing=sp, origin=(0.0,) * len(sp))


def _floats(a: Any) -> list[float]:
    return [float(v) for v in np.asarray(a, float).ravel()]


def method_result(ctx: Context, name: str, seed: int, index: int, plan: MethodPlan, s: dict[str, Any],
                  metrics: Sequence[str] | None = None, extra_infidelity: Sequence[float] = ()) -> dict[str, Any]:
    """One method on one case: the map's time and every metric in ``metrics`` (default: the plan's), cached.

    ``extra_infidelity``: further perturbation scales (sigma, as a fraction of the scan's range) at which
    infidelity is also measured (seed 001's scale comparison); ``s["infid_sigma"]`` is always measured."""
    mets = tuple(plan.metrics if metrics is None else metrics)
    extra = tuple(float(v) for v in extra_infidelity)

    def run() -> dict[str, Any]:
        import napari_attribution as na
        from napari_attribution.runs.checks import verdict

        ph = case(name, seed, index)
        m = model(name)
        tgt = target_of(name, ph)
        geo = _geometry(ph)
        ctxm, batch = _engine(name)
        out: dict[str, Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            att = na.explain(m, ph.image, plan.name, tgt, layer=plan.layer, params=plan.kwargs, geometry=geo)
            out["explain_s"] = time.perf_counter() - t0
            data = np.asarray(att.data, np.float32)
            out["finite"] = bool(np.isfinite(data).all())
            if "energy" in mets:
                out["energy"] = na.evaluate(m, ph.image, att, "energy_in_mask", mask=ph.mask).value
            if "pointing" in mets:
                out["pointing"] = na.evaluate(m, ph.image, att, "pointing_game", mask=ph.mask,
                                              tolerance_mm=tolerance_mm(ph)).value
            ref = case_reference(ctx, name, seed, index, s) if ({"deletion", "insertion"} & set(mets)) else None
            with ctxm:
                for kind in _kinds(name):
                    if _metric(kind) not in mets or ref is None:
                        continue
                    sc = na.evaluate(m, ph.image, att, _metric(kind), steps=s["steps"], reference=False, batch=batch,
                                     **_fill(name, kind))
                    r = ref[kind]
                    details = {"curve": sc.details["curve"], "random_curve": r["random_curve"],
                               "random_auc": r["random_auc"], "random_band": r["random_band"],
                               "random_orders": len(r["random_aucs"]), "unit": r["unit"]}
                    out[kind] = sc.value
                    out[f"{kind}_verdict"] = verdict(_metric(kind), sc.value, details)
                    out[f"{kind}_curve"] = _floats(sc.details["curve"])
                if "infidelity" in mets:
                    for sigma in (s["infid_sigma"], *extra):
                        sc = na.evaluate(m, ph.image, att, "infidelity", sigma=sigma, samples=s["infid_samples"],
                                         seed=seed, batch=batch)
                        out["infidelity" if sigma == s["infid_sigma"] else f"infidelity@{sigma:g}"] = sc.value
            if "max_sensitivity" in mets:
                sc = na.evaluate(m, ph.image, att, "max_sensitivity", samples=s["ms_samples"], seed=seed)
                out["max_sensitivity"] = sc.value
            if "randomisation" in mets:
                sc = na.evaluate(m, ph.image, att, "randomisation", max_layers=s["rand_layers"], seed=seed)
                out["randomisation"] = sc.value
                out["randomisation_all"] = float(sc.details["per_layer"][-1][1])
        return out

    return ctx.timed(_key(KEY, VERSION, "method", name, seed, index, plan.name, plan.params, plan.layer, mets,
                          extra, s), run)


# ------------------------------------------------------------------------------------------------ aggregation


@dataclass
class MethodSummary:
    """One method on one task, over its cases."""

    plan: MethodPlan
    n: int
    rows: list[dict[str, Any]]
    refs: list[dict[str, Any]]
    tests: dict[str, Paired] = field(default_factory=dict)

    def values(self, metric: str) -> list[float]:
        return [float(r[metric]) for r in self.rows if metric in r]

    def ref_values(self, metric: str) -> list[float]:
        """The per-case reference of ``metric``, on the cases that have the metric."""
        out = []
        for r, ref in zip(self.rows, self.refs, strict=True):
            if metric not in r:
                continue
            if metric == "energy":
                out.append(ref["chance_energy"])
            elif metric == "pointing":
                out.append(ref["chance_pointing"])
            elif metric in ("deletion", "insertion"):
                out.append(ref[metric]["random_auc"])
            elif metric == "infidelity":
                out.append(ref["infidelity_noise"])
            elif metric == "randomisation":
                out.append(r["randomisation_all"])
        return out


#: metric -> (higher is better, the reference's name)
DIRECTION = {"energy": (True, "chance (the evidence's share)"), "pointing": (True, "chance"),
             "deletion": (False, "random order"), "insertion": (True, "random order"),
             "infidelity": (False, "a Gaussian-noise map"), "randomisation": (False, "all layers randomised"),
             "max_sensitivity": (False, "")}
TESTED = ("energy", "pointing", "deletion", "insertion", "infidelity")


def summarise(ctx: Context, task: Task, plans: Sequence[MethodPlan], n_cases: int, s: dict[str, Any],
              faith_cases: int | None) -> list[MethodSummary]:
    seeds = case_seeds(task, ctx.seed, n_cases)
    out = []
    for plan in plans:
        n = min(n_cases, plan.cases or n_cases)
        rows, refs = [], []
        for i, sd in enumerate(seeds[:n]):
            mets = plan.metrics
            if faith_cases is not None and plan.cases is None and i >= faith_cases:
                mets = ("energy", "pointing")  # the fast methods' extra cases on the segmenter
            ctx.log(f"   {task.name} case {i + 1}/{n} {plan.name}")
            # the reference first, timed on its own (the method's result then reads it, not computes it)
            needs_ref = bool({"deletion", "insertion", "infidelity"} & set(mets))
            refs.append(case_reference(ctx, task.name, sd, i, s) if needs_ref else case_chance(ctx, task.name, sd, i))
            rows.append(method_result(ctx, task.name, sd, i, plan, s, mets))
        out.append(MethodSummary(plan, n, rows, refs))
    # paired tests against each metric's reference; Holm over the methods of this task, per metric
    for metric in TESTED:
        family = []
        for ms in out:
            a, b = ms.values(metric), ms.ref_values(metric)
            if len(a) >= 2:
                ms.tests[metric] = paired(a, b, higher_is_better=DIRECTION[metric][0])
                family.append(ms.tests[metric])
        holm(family)
    return out


def _p_text(t: Paired) -> str:
    p = t.p_adj if np.isfinite(t.p_adj) else t.p
    return f"Holm p {fmt_p(p)}"


def _compare(t: Paired | None, better: str, worse: str, same: str) -> str:
    if t is None:
        return ""
    if significant(t):
        return f"{better if t.direction == 'better' else worse} ({_p_text(t)})"
    if t.n < 6:  # the smallest two-sided Wilcoxon p with 5 pairs is 0.0625: the test cannot decide
        return (f"{better if t.direction == 'better' else worse} on "
                f"{t.wins if t.direction == 'better' else t.losses} of {t.n} cases, too "
                f"few for the test ({_p_text(t)})") if t.direction != "no difference" else f"{same} ({_p_text(t)})"
    return f"{same} ({_p_text(t)})"


def method_verdict(ms: MethodSummary) -> str:
    """The verdict of one method on one task, in words, from its paired tests against the references."""
    from napari_attribution.runs.checks import verdict as check_verdict

    parts = []
    e, ch = ms.values("energy"), ms.ref_values("energy")
    if e:
        ratio = np.mean(e) / max(np.mean(ch), 1e-12)
        t = ms.tests.get("energy")
        if t is not None and significant(t) and t.direction == "better":
            parts.append(f"concentrates on the evidence, {ratio:.1f}x chance ({_p_text(t)})")
        elif t is not None and significant(t):
            parts.append(f"avoids the evidence, {ratio:.1f}x chance ({_p_text(t)})")
        elif t is not None and ratio > 1 and t.n < 6:
            parts.append(f"energy {ratio:.1f}x chance, above it on {t.wins} of {t.n} cases, too few for the test "
                         f"({_p_text(t)})")
        elif t is not None and ratio > 1:
            parts.append(f"energy {ratio:.1f}x chance, not significant with {len(e)} cases ({_p_text(t)})")
        else:
            parts.append(f"energy not above chance ({ratio:.1f}x, {_p_text(t) if t else 'untested'})")
    for metric, word in (("deletion", "deletion"), ("insertion", "insertion")):
        t = ms.tests.get(metric)
        said = [r.get(f"{metric}_verdict", "") for r in ms.rows if f"{metric}_verdict" in r]
        flat = sum(1 for v in said if v.startswith("not informative"))
        if t is not None and flat * 2 > len(said):
            parts.append(f"{word} not informative on this model (the library's check, {flat} of {len(said)} "
                         "maps: the probability hardly moves)")
        elif t is not None:
            parts.append(_compare(t, f"{word} better than a random order", f"{word} worse than a random order",
                                  f"{word} not distinguishable from a random order"))
    t = ms.tests.get("infidelity")
    if t is not None:
        parts.append(_compare(t, "infidelity below a noise map's", "infidelity above a noise map's",
                              "infidelity no different from a noise map's"))
    r = ms.values("randomisation")
    if r:
        parts.append("randomisation: " + check_verdict("randomisation", float(np.mean(r))).split(":")[0])
    v = ms.values("max_sensitivity")
    if v:
        parts.append(check_verdict("max_sensitivity", float(np.mean(v))).split(":")[0] + " under noise")
    return "; ".join(p for p in parts if p)


def _cell(ms: MethodSummary, metric: str, digits: int = 3) -> str:
    v = ms.values(metric)
    if not v:
        return "—"
    return fmt_ci(v, digits)


def _faithful_count(ms: MethodSummary, kind: str) -> str:
    said = [r.get(f"{kind}_verdict", "") for r in ms.rows if f"{kind}_verdict" in r]
    if not said:
        return ""
    good = sum(1 for t in said if t.startswith("faithful"))
    flat = sum(1 for t in said if t.startswith("not informative"))
    return f" ({good}/{len(said)} faithful" + (f", {flat} not informative)" if flat else ")")


def task_markdown(task: Task, sums: list[MethodSummary], n_cases: int, faith_cases: int | None,
                  s: dict[str, Any]) -> str:
    chances = list({r["seed"]: r for ms in sums for r in ms.refs}.values())
    all_refs = list({r["seed"]: r for ms in sums for r in ms.refs if "deletion" in r}.values())
    chance_e = mean_ci([r["chance_energy"] for r in chances])
    chance_p = mean_ci([r["chance_pointing"] for r in chances])
    r0 = all_refs[0]
    del_ref = [r["deletion"]["random_auc"] for r in all_refs]
    ins_ref = [r["insertion"]["random_auc"] for r in all_refs]
    inf_ref = [r["infidelity_noise"] for r in all_refs]
    band = np.mean([r["deletion"]["random_band"] for r in all_refs])
    lines = [
        f"**{task.label}.** {n_cases} cases; evidence: {task.evidence}. Chance: energy "
        f"{fmt(chance_e[0])} (the evidence's share of the image), pointing game {fmt(chance_p[0])} (the share of "
        f"voxels within the tolerance, {fmt(r0['tolerance_mm'], 2)} mm, of the evidence). Random-order reference "
        f"(mean of {len(r0['deletion']['random_aucs'])} random orders of the "
        f"{'3 mm blocks' if r0['deletion']['unit'] == 'region' else 'voxels'}, deleted to "
        f"{_fill_words(task, r0)}): deletion AUC {fmt_ci(del_ref)}, insertion AUC {fmt_ci(ins_ref)} (one "
        f"random order's noise: ± {fmt(float(band))}, the 95 % prediction band); infidelity of a Gaussian-noise "
        f"map {fmt_ci(inf_ref)}.",
        "",
    ]
    if task.overrides and not set(dict(task.overrides)) - set(s):
        words = {"orders": "random orders", "infid_samples": "infidelity samples", "ms_samples":
                 "max-sensitivity re-runs", "rand_layers": "randomisation re-runs"}
        lines += ["Settings on this task (its forward passes cost 10-100 times the classifiers'): "
                  + ", ".join(f"{s[k]} {words.get(k, k)}" for k, _ in task.overrides) + ".", ""]
    if faith_cases is not None:
        lines += [f"One-pass methods: energy and pointing on all {n_cases} cases, the other metrics on the first "
                  f"{faith_cases}.", ""]
    subsets = [f"{ms.plan.label}: cases 1-{ms.n} (seeds {ms.refs[0]['seed']}-{ms.refs[-1]['seed']})"
               + (", without the re-run metrics" if not set(RERUN) & set(ms.plan.metrics) else "")
               for ms in sums if ms.n < n_cases]
    if subsets:
        lines += ["Slow methods on a subset: " + "; ".join(subsets) + ".", ""]
    if task.fill is not None:
        lines += [_default_fill_paragraph(task, sums), ""]
    headers = ["method", "cases", "s / map", "energy ↑ (x chance)", "pointing ↑", "deletion AUC ↓",
               "insertion AUC ↑", "randomisation ↓", "infidelity ↓", "max-sens. ↓"]
    rows = []
    for ms in sums:
        e = ms.values("energy")
        ratio = np.mean(e) / max(np.mean(ms.ref_values("energy")), 1e-12) if e else float("nan")
        n_faith = len(ms.values("deletion"))
        cases = f"{ms.n}" if n_faith in (0, ms.n) else f"{ms.n} / {n_faith}"
        rows.append([
            ms.plan.label, cases, fmt(float(np.mean([r["explain_s"] for r in ms.rows])), 2),
            f"{_cell(ms, 'energy')} ({ratio:.1f}x)", _cell(ms, "pointing", 2),
            _cell(ms, "deletion") + _faithful_count(ms, "deletion"),
            _cell(ms, "insertion") + _faithful_count(ms, "insertion"),
            _cell(ms, "randomisation", 2), _cell(ms, "infidelity"), _cell(ms, "max_sensitivity", 2),
        ])
    lines += [table(headers, rows), ""]
    vrows = [[ms.plan.label, method_verdict(ms)] for ms in sums]
    lines += [table(["method", f"verdict on {task.name}"], vrows), ""]
    return "\n".join(lines)


def _fill_words(task: Task, ref: dict[str, Any]) -> str:
    if task.fill is not None:
        return f"{task.fill:g} HU, soft tissue"
    note = ref["deletion"].get("fill_note")
    return f"the {ref['deletion']['fill']}" + (f"; {note}" if note else "")


def _default_fill_paragraph(task: Task, sums: list[MethodSummary]) -> str:
    """What deletion with the library's default fill (CT air) gives on this task, next to the task's fill."""
    said = [r.get("deletion_default_verdict", "") for ms in sums for r in ms.rows if "deletion_default_verdict" in r]
    flat = sum(1 for t in said if t.startswith("not informative"))
    refs = list({r["seed"]: r for ms in sums for r in ms.refs if "deletion_default" in r}.values())
    ref = [r["deletion_default"]["random_auc"] for r in refs]
    vals = [r["deletion_default"] for ms in sums for r in ms.rows if "deletion_default" in r]
    return (f"Deletion uses a {task.fill:g} HU fill here, not the library's default (CT air, -1000 HU): this model "
            "answers \"lesion\" for a volume of air (probability 0.9995), so deleting voxels to air never lowers "
            f"its probability. With the default fill, the maps' deletion AUCs average {fmt_ci(vals)} against "
            f"{fmt_ci(ref)} for random orders (lower is better), and the library's check reads \"not informative\" "
            f"on {flat} of {len(said)} maps. Insertion starts from the scan's blurred copy, in which the lesion "
            "still shows: its curves stay near 1 (see the column).")


def _figure(ctx: Context, results: dict[str, list[MethodSummary]]) -> str:
    """Energy in the evidence (x chance, log scale) and the deletion AUC's gain over the random order, per method
    and task, with 95 % CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for sums in results.values():
        for ms in sums:
            if ms.plan.name not in names:
                names.append(ms.plan.name)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.28 * len(names) + 1.6), sharey=True)
    colors = {"lesion3d": "tab:red", "contrast-phase": "tab:blue", "contrast-phase-3d": "tab:purple",
              "vessel-seg": "tab:green"}
    for j, (task, sums) in enumerate(results.items()):
        for ms in sums:
            y = names.index(ms.plan.name) + (j - 1.5) * 0.18
            e, ch = ms.values("energy"), ms.ref_values("energy")
            if e:
                ratio = [a / b for a, b in zip(e, ch, strict=True) if b > 0]
                m, lo, hi = mean_ci(ratio)
                axes[0].errorbar(m, y, xerr=[[m - lo], [hi - m]], fmt="o", ms=3, color=colors[task],
                                 label=task if ms is sums[0] else None)
            d, dr = ms.values("deletion"), ms.ref_values("deletion")
            if d:
                gain = [b - a for a, b in zip(d, dr, strict=True)]
                m, lo, hi = mean_ci(gain)
                axes[1].errorbar(m, y, xerr=[[m - lo], [hi - m]], fmt="o", ms=3, color=colors[task])
    axes[0].set_xscale("log")
    axes[0].axvline(1.0, color="k", lw=0.8, ls="--")
    axes[0].set_xlabel("energy in the evidence / chance\n(higher is better; 1 = chance)")
    axes[1].axvline(0.0, color="k", lw=0.8, ls="--")
    axes[1].set_xlabel("random orders' deletion AUC - the map's\n(higher is better; 0 = no better than random)")
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="upper center", ncol=4, frameon=False)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path, link = ctx.figure("tasks_overview.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return link


def run(ctx: Context) -> Section:
    t0 = time.perf_counter()
    s = settings(ctx)
    results: dict[str, list[MethodSummary]] = {}
    plan_of: dict[str, tuple[int, tuple[MethodPlan, ...], int | None]] = {}
    if ctx.quick:
        for name, (n, plans) in QUICK_TASKS.items():
            plan_of[name] = (n, plans, None)
    else:
        for name, task in TASKS.items():
            plan_of[name] = (task.n_cases, task.methods, task.faith_cases)
    for name, (n, plans, faith) in plan_of.items():
        results[name] = summarise(ctx, TASKS[name], plans, n, settings(ctx, TASKS[name]), faith)
    compute = sum(r.get("seconds", 0.0) for sums in results.values() for ms in sums for r in ms.rows)
    compute += sum(ref.get("seconds", 0.0) for sums in results.values()
                   for ref in {(x["seed"], "deletion" in x): x for ms in sums for x in ms.refs}.values())
    link = _figure(ctx, results)
    md = [
        "This section makes no claim of a paper: it scores every method that applies on the four demo models "
        "whose evidence is known by construction (`docs/demo-models.md`), so that each seed's section below "
        "stands on measured ground.",
        "",
        "**How we measured it.** Fresh phantoms from the models' own generators, with integer seeds from "
        "910,000 up (`case_seeds`: training drew from `default_rng(0)`'s stream, the held-out sets from "
        "`default_rng(10000)`'s, the docs' tables from seeds 50,000-60,003), derived from the report's base "
        f"seed ({ctx.seed}). Target: the true class (lesion cases all carry a lesion; contrast-phase cases cycle "
        "through the three phases), or on the segmenter the predicted vessels (`Predicted(1)`). Every metric "
        "is the library's own `na.evaluate`: energy in the evidence (share of the map's positive mass inside "
        "the evidence mask; higher is better; chance = the mask's share of the image); the pointing game (hit "
        "if the map's maximum lies within one voxel of the coarsest axis of the evidence; higher is better; "
        "chance = the share of voxels within that distance); deletion (lower is better) and insertion (higher "
        f"is better) AUCs with {s['steps']} steps ({s['steps'] + 1} points), voxel by voxel on the classifiers "
        "and in 3 mm blocks on the segmenter (the library's `unit=\"auto\"`, deleted to CT air or to the "
        "scan's blurred copy, `baseline=\"auto\"`; on the lesion classifier a 40 HU fill, see there), against "
        "the mean AUC of "
        f"{s['orders']} random orders of the same units on the same case (computed once per case); the "
        "model-randomisation check (mean Spearman correlation of |map| with the maps of the model randomised "
        f"layer by layer from the output, {s['rand_layers']} re-runs; lower is better); infidelity "
        f"(Gaussian perturbations of {s['infid_sigma']:g} x the scan's range, {s['infid_samples']} samples, "
        "`normalize=True`; lower is better; reference: the same for a Gaussian-noise map) and max-sensitivity "
        f"({s['ms_samples']} re-runs at ± 2 % of the range; lower is better). Each mean has its bootstrap 95 % "
        "CI. Paired Wilcoxon signed-rank tests compare each method with the metric's reference on the same "
        "cases (energy and pointing: chance; deletion and insertion: the random orders; infidelity: the noise "
        "map), Holm-corrected over the methods of one task, per metric; the verdicts below say \"better\" "
        "or \"worse\" only where the corrected p is under 0.05. Randomisation and max-sensitivity are read with "
        "the library's own thresholds (`runs/checks.py`: randomisation < 0.3 passes, < 0.6 partly passes; "
        "max-sensitivity < 0.1 stable, < 0.5 fairly stable). The number of cases on which the library's "
        "per-map deletion / insertion verdict says \"faithful\" (outside the random orders' noise by more than "
        "a tenth of the curves' span) is given in brackets, with those where it says \"not informative\" (the "
        "target's probability moves by less than 0.05 along both curves: on the classifiers, insertion's blurred "
        "start is often classified as well as the scan). \"s / map\" is the mean time of one map (one "
        "torch thread).",
        "",
        "Slow methods run on the first cases only (named in the \"cases\" column; the same cases for every "
        "method, so each paired test is on matched cases); the slowest of them also skip the two metrics that "
        "re-run the method several times (randomisation and max-sensitivity, \"—\"; named in each task's "
        "subset line).",
        "",
    ]
    for name, sums in results.items():
        task = TASKS[name]
        n, _, faith = plan_of[name]
        md += [f"### {name}", "", task_markdown(task, sums, n, faith, settings(ctx, task))]
        if not ctx.quick and task.not_run:
            md += ["Not run here: " + "; ".join(f"`{m}` ({why})" for m, why in task.not_run) + ".", ""]
    md += [f"![energy and deletion per method and task]({link})", "",
           "*Left: energy in the evidence over chance, per case then averaged, with its 95 % CI (log scale). "
           "Right: how much lower the map's deletion AUC is than the random orders' (above 0: the map's top "
           "units matter more than random ones; on the lesion classifier with the 40 HU fill).*", ""]
    md += [_headline(results), ""]
    md += [f"Compute time of this section's results: {compute:.0f} s of wall-clock time on one torch thread (the "
           "sum of the cached per-case results' times, as first computed; on a machine shared with other jobs "
           f"they overstate a quiet core's); this run took {time.perf_counter() - t0:.0f} s."]
    summary = _summary(results)
    return Section(KEY, TITLE, "\n".join(md), None, summary)


def _flat(ms: MethodSummary, metric: str) -> bool:
    """The library's per-map check reads "not informative" on most of the method's maps (deletion, insertion)."""
    said = [r.get(f"{metric}_verdict", "") for r in ms.rows if f"{metric}_verdict" in r]
    return sum(1 for v in said if v.startswith("not informative")) * 2 > len(said) > 0


def _headline(results: dict[str, list[MethodSummary]]) -> str:
    """A paragraph: per task, how many methods beat chance on energy and the random order on deletion /
    insertion (Holm)."""
    parts = []
    for name, sums in results.items():
        def count(metric: str, sums: list[MethodSummary] = sums) -> str:
            tested = [ms for ms in sums if metric in ms.tests and not _flat(ms, metric)]
            good = sum(1 for ms in tested if significant(ms.tests[metric]) and ms.tests[metric].direction == "better")
            bad = sum(1 for ms in tested if significant(ms.tests[metric]) and ms.tests[metric].direction == "worse")
            flat = sum(1 for ms in sums if metric in ms.tests and _flat(ms, metric))
            if not tested:
                return f"not informative for all {flat} methods (the library's check)"
            return (f"{good} of {len(tested)} better" + (f", {bad} worse" if bad else "")
                    + (f"; {flat} more not informative" if flat else ""))
        best = max((ms for ms in sums if ms.values("energy")), key=lambda ms: np.mean(ms.values("energy")))
        parts.append(f"on `{name}`, energy above chance: {count('energy')}; deletion vs random order: "
                     f"{count('deletion')}; insertion: {count('insertion')}; infidelity vs a noise map: "
                     f"{count('infidelity')}; most concentrated: `{best.plan.name}` "
                     f"({fmt(float(np.mean(best.values('energy'))))})")
    ratios = []
    for name, sums in results.items():
        r = [a / b for ms in sums for a, b in zip(ms.values("infidelity"), ms.ref_values("infidelity"), strict=True)
             if b > 0]
        if r:
            lo, hi = (float(np.min([np.mean([a / b for a, b in zip(ms.values("infidelity"),
                                                                       ms.ref_values("infidelity"), strict=True)])
                                    for ms in sums if ms.values("infidelity")])),
                      float(np.max([np.mean([a / b for a, b in zip(ms.values("infidelity"),
                                                                       ms.ref_values("infidelity"), strict=True)])
                                    for ms in sums if ms.values("infidelity")])))
            ratios.append(f"`{name}` {lo:.2f}-{hi:.2f}")
    return ("**In short** (Holm-corrected Wilcoxon against the reference, p < 0.05): " + "; ".join(parts) + ". "
            "Infidelity at the library's default perturbation (0.05 x the scan's range) barely separates the "
            "maps from a map of Gaussian noise: each method's mean infidelity over the noise map's, on the same "
            "cases and perturbations (1 = no better than noise; lower is better), ranges over the methods "
            f"{'; '.join(ratios)}. Seed 001's section measures it at smaller perturbations on the vessel "
            "segmenter.")


def _summary(results: dict[str, list[MethodSummary]]) -> str:
    n_tasks = len(results)
    good = sum(1 for sums in results.values() for ms in sums
               if "deletion" in ms.tests and significant(ms.tests["deletion"])
               and ms.tests["deletion"].direction == "better")
    tested = sum(1 for sums in results.values() for ms in sums if "deletion" in ms.tests)
    e_good = sum(1 for sums in results.values() for ms in sums if "energy" in ms.tests
                 and significant(ms.tests["energy"]) and ms.tests["energy"].direction == "better")
    e_tested = sum(1 for sums in results.values() for ms in sums if "energy" in ms.tests)
    return (f"{n_tasks} demo task(s): {e_good} of {e_tested} method-task pairs put their mass on the evidence above "
            f"chance, {good} of {tested} delete it faster than a random order (Holm); insertion is mostly not "
            "informative on the classifiers, and default infidelity hardly differs from a noise map's.")
