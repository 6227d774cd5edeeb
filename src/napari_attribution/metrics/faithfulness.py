"""Faithfulness metrics: deletion / insertion curves (Petsiuk et al.), infidelity and max-sensitivity (Yeh et
al., with the project's recommended settings), the cascading model-randomisation sanity check (Adebayo et al.)
and the block-level specificity of SAM's evaluation (methods.md §A3.2, our reconstruction).

Each takes ``progress(done, total, message)`` and ``cancel()`` (both optional): progress is reported per batch of
model calls (or per re-run of the method), ``cancel`` is polled in between and raises
:class:`~napari_attribution.Cancelled`; the values do not depend on either."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .._errors import Cancelled, ParameterError
from ._score import Scorer

__all__ = ["Meter", "deletion_insertion", "infidelity", "max_sensitivity", "randomisation", "score_batches",
           "specificity"]

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]


#: Progress units per re-run of the method (randomisation, max-sensitivity): the re-run's own progress fills them.
RERUN_UNITS = 100


class Meter:
    """Progress over ``total`` units of work and the cancel poll of one metric.

    ``step(n)`` reports ``n`` more units done (never beyond ``total``, never backwards); ``check()`` raises
    :class:`~napari_attribution.Cancelled` once ``cancel()`` returns True; ``within(message, units)`` is a
    progress callback for a nested run (``explain``) that fills the next ``units`` units."""

    def __init__(self, total: int, progress: Progress | None = None, cancel: Cancel | None = None,
                 label: str = "") -> None:
        self.total = max(int(total), 1)
        self.done = 0
        self.progress = progress
        self.cancel = cancel
        self.label = label
        self._last = 0

    def check(self) -> None:
        """Raise ``Cancelled`` when the caller asked to stop."""
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"{self.label or 'The metric'} was cancelled; no score was produced.")

    def _report(self, done: int, message: str) -> None:
        done = min(max(int(done), self._last), self.total)
        self._last = done
        if self.progress is not None:
            self.progress(done, self.total, f"{self.label}: {message}" if self.label else message)

    def step(self, n: int = 1, message: str = "") -> None:
        """``n`` more units done."""
        self.done = min(self.done + int(n), self.total)
        self._report(self.done, message or f"{self.done} of {self.total}")

    def within(self, message: str, units: int = 1) -> Progress:
        """A progress callback for a nested run that fills the next ``units`` units (as a fraction of them)."""
        start = self.done

        def nested(done: int, total: int, inner: str) -> None:
            frac = min(max(done / max(total, 1), 0.0), 1.0)
            self._report(start + int(units * frac), f"{message} ({inner})" if inner else message)

        return nested

    def finish(self, message: str = "done") -> None:
        """All units done."""
        self.done = self.total
        self._report(self.total, message)


def score_batches(measure: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int,
                  meter: Meter | None = None, what: str = "images") -> np.ndarray:
    """``measure(images)`` in chunks of ``batch`` (the model-call batches the scorer would make anyway, so the
    values are the same), polling ``meter.check()`` before each and reporting each one."""
    out = np.empty(len(images), np.float64)
    batch = max(int(batch), 1)
    for start in range(0, len(images), batch):
        if meter is not None:
            meter.check()
        chunk = images[start:start + batch]
        out[start:start + len(chunk)] = measure(chunk)
        if meter is not None:
            meter.step(len(chunk), f"{meter.done + len(chunk)} of {meter.total} {what}")
    return out


def _auc(curve: np.ndarray) -> float:
    n = len(curve)
    return float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / (n - 1)) if n > 1 else float(curve[0])


def _background(image: np.ndarray, baseline: Any) -> np.ndarray:
    if baseline is None or (isinstance(baseline, str) and baseline == "min"):
        return np.full_like(image, image.min())
    if isinstance(baseline, str):
        if baseline == "mean":
            return np.full_like(image, image.mean())
        raise ParameterError(f"Unknown baseline {baseline!r}: use 'min', 'mean', a number or an array.")
    if isinstance(baseline, (int, float, np.number)):
        return np.full_like(image, float(baseline))
    arr = np.asarray(baseline, image.dtype)
    return np.broadcast_to(arr, image.shape).copy()


def deletion_insertion(scorer: Scorer, data: np.ndarray, *, kind: str = "deletion", steps: int = 50,
                       baseline: Any = "min", blur_mm: float | tuple[float, ...] = 5.0,
                       spacing: tuple[float, ...] | None = None, reference: bool = True, seed: int = 0,
                       progress: Progress | None = None, cancel: Cancel | None = None
                       ) -> tuple[float, dict[str, Any]]:
    """Deletion: replace voxels in descending attribution order by the background (default: the image minimum,
    i.e. air in CT) and record the target's probability (its logit for a target with ``score="logit"``; a
    region's mean probability for a segmentation target); insertion: start from a blurred image (Gaussian, sigma
    in mm per axis) and put the original voxels back in the same order. ``steps + 1`` points; AUC by the
    trapezoid rule normalised to [0, 1] along the x axis (Petsiuk et al.'s formula). Deletion: lower is better;
    insertion: higher is better. All input channels of a voxel are changed together.

    With ``reference`` (default), the same curve for a random order of the voxels (seeded by ``seed``; the
    voxels the map explained first, in random order, then the others — NaN marks voxels a map did not explain)
    goes in ``details["random_curve"]`` / ``details["random_auc"]``: the AUC a map that knows nothing gets, so
    that "deletion AUC 0.12 against 0.45 for a random order" can be read. It doubles the model calls."""
    from scipy.ndimage import gaussian_filter

    image = scorer.image
    spatial = scorer.spatial
    if data.shape != tuple(spatial):
        raise ParameterError(f"The attribution {data.shape} does not match the image's spatial shape {spatial}.")
    if kind not in ("deletion", "insertion"):
        raise ParameterError("kind must be 'deletion' or 'insertion'.")
    if int(steps) < 1:
        raise ParameterError("steps must be at least 1.")
    flat = np.nan_to_num(data, nan=-np.inf).ravel()
    order = np.argsort(flat, kind="stable")[::-1]
    n = order.size
    counts = np.linspace(0, n, steps + 1).round().astype(int)
    if kind == "deletion":
        start, fill = image, _background(image, baseline)
    else:
        sp = np.asarray(spacing if spacing is not None else (1.0,) * len(spatial), float)
        sig = np.broadcast_to(np.asarray(blur_mm, float), sp.shape) / sp
        if scorer.channel_axis:
            start = np.stack([gaussian_filter(c, sig) for c in image])
        else:
            start = gaussian_filter(image, sig)
        fill = image
    meter = Meter(len(counts) * (2 if reference else 1), progress, cancel, kind)

    def curve_of(voxels: np.ndarray, what: str) -> np.ndarray:
        curve = np.empty(len(counts))
        for first in range(0, len(counts), scorer.batch):
            meter.check()
            batch = []
            for c in counts[first:first + scorer.batch]:
                img = start.copy()
                idx = np.unravel_index(voxels[:c], spatial)
                if scorer.channel_axis:
                    img[(slice(None),) + idx] = fill[(slice(None),) + idx]
                else:
                    img[idx] = fill[idx]
                batch.append(img)
            curve[first:first + len(batch)] = scorer(np.stack(batch))
            meter.step(len(batch), f"{what}, {min(first + len(batch), len(counts))} of {len(counts)} steps")
        return curve

    curve = curve_of(order, "the map's order")
    details: dict[str, Any] = {"curve": curve, "fraction": counts / n, "kind": kind}
    if reference:
        rng = np.random.default_rng(seed)
        explained = np.isfinite(flat)
        shuffled = np.concatenate([rng.permutation(np.flatnonzero(explained)),
                                   rng.permutation(np.flatnonzero(~explained))])
        random_curve = curve_of(shuffled, "a random order")
        details.update(random_curve=random_curve, random_auc=_auc(random_curve), seed=seed)
    meter.finish()
    return _auc(curve), details


def infidelity(scorer: Scorer, data: np.ndarray, *, sigma: float = 0.05, samples: int = 10, seed: int = 0,
               normalize: bool = True, progress: Progress | None = None, cancel: Cancel | None = None
               ) -> tuple[float, dict[str, Any]]:
    """``E_I[(sum_u I(u) Phi(u) - (T(x) - T(x - I)))^2]`` with Gaussian ``I ~ N(0, (sigma * range)^2)`` and the
    target's logit score ``T`` (what gradient methods explain; the probability for a target with
    ``score="probability"``). For a region target ``T`` is the *sum* of the output over the region, as for the
    methods (not the region's mean, which the other metrics score), so the exact gradient of a locally linear
    model scores ~0 with ``normalize=False``. ``normalize=True`` rescales ``Phi`` by the optimal
    factor ``beta = E[<I,Phi> dT] / E[<I,Phi>^2]`` first (Yeh et al.; Captum's ``normalize``), so maps of
    different scales are comparable. Lower is better. Defaults are the project's (methods.md §A2.4), not
    TorchEsegeta's sigma = 1e-4, at which plain saliency scores ~0 by construction."""
    rng = np.random.default_rng(seed)
    image = scorer.image
    rng_range = float(image.max() - image.min()) or 1.0
    phi = np.nan_to_num(data, nan=0.0)
    if scorer.channel_axis:
        phi = np.broadcast_to(phi, image.shape) / image.shape[0]
    noise = rng.normal(0.0, sigma * rng_range, (samples,) + image.shape).astype(np.float32)
    meter = Meter(1 + samples, progress, cancel, "infidelity")

    def logit(images: np.ndarray) -> np.ndarray:
        # the sum over a region (mean=False): the scalar a gradient map explains, not the region's mean
        return scorer(images, probability=False, mean=False)

    t0 = score_batches(logit, image[None], scorer.batch, meter)[0]
    tp = score_batches(logit, image[None] - noise, scorer.batch, meter, "perturbed images")
    meter.finish()
    dots = (noise * phi).reshape(samples, -1).sum(1).astype(np.float64)
    diffs = t0 - tp
    beta = float((dots * diffs).mean() / (dots * dots).mean()) if normalize and (dots * dots).mean() > 0 else 1.0
    value = float(((beta * dots - diffs) ** 2).mean())
    return value, {"beta": beta, "sigma_abs": sigma * rng_range, "samples": samples}


def max_sensitivity(explain_fn: Callable[..., np.ndarray], image: np.ndarray, data: np.ndarray, *,
                    radius: float = 0.02, samples: int = 10, seed: int = 0, progress: Progress | None = None,
                    cancel: Cancel | None = None) -> tuple[float, dict[str, Any]]:
    """``max_j ||Phi(x + d_j) - Phi(x)||_F / ||Phi(x)||_F`` with ``d_j`` uniform in an L-infinity ball of
    ``radius * range`` (Captum's ``sensitivity_max`` perturbation). Lower is better. Re-runs the method
    ``samples`` times: ``explain_fn(perturbed_image)``, or with ``progress`` / ``cancel`` given
    ``explain_fn(perturbed_image, progress=..., cancel=...)`` (forward them to ``explain``)."""
    rng = np.random.default_rng(seed)
    r = radius * (float(image.max() - image.min()) or 1.0)
    base = np.nan_to_num(data, nan=0.0)
    norm = float(np.linalg.norm(base)) or 1.0
    values = []
    meter = Meter(RERUN_UNITS * samples, progress, cancel, "max-sensitivity")
    nested = progress is not None or cancel is not None
    for j in range(samples):
        meter.check()
        pert = (image + rng.uniform(-r, r, image.shape)).astype(np.float32)
        what = f"re-run {j + 1} of {samples} on a perturbed image"
        meter.step(0, what)
        run = meter.within(what, RERUN_UNITS)
        got = explain_fn(pert, progress=run, cancel=cancel) if nested else explain_fn(pert)
        values.append(float(np.linalg.norm(np.nan_to_num(got, nan=0.0) - base)) / norm)
        meter.step(RERUN_UNITS, what)
    meter.finish()
    return float(max(values)), {"per_sample": values, "radius_abs": r}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = np.nan_to_num(a.ravel()), np.nan_to_num(b.ravel())
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def _independent_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters are leaves of their own (randomising them leaves ``model`` as it was).

    ``copy.deepcopy`` of a TorchScript module gives parameters that are clones *with a gradient history*
    (``CloneBackward``), which the pipeline cannot mark as not needing gradients: a TorchScript archive is copied
    by saving it to memory and loading it back instead."""
    if not isinstance(model, torch.jit.ScriptModule):
        return copy.deepcopy(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the user's archive is one all the same
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(model, buffer)
        buffer.seek(0)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        clone: nn.Module = torch.jit.load(buffer, map_location=device)  # type: ignore[no-untyped-call]
    return clone.train(model.training)


def _cascade(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """The model's parameters by name, grouped by the module that owns them (the name without its last part), in
    the order ``named_parameters`` gives (the modules' registration order), reversed: from the output towards the
    input. Works alike for Python and TorchScript modules (only parameter names are used)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        groups.setdefault(owner, []).append((name, p))
    return list(groups.items())[::-1]


def randomisation(model: nn.Module, explain_fn: Callable[..., np.ndarray], data: np.ndarray, *,
                  max_layers: int = 8, seed: int = 0, progress: Progress | None = None,
                  cancel: Cancel | None = None) -> tuple[float, dict[str, Any]]:
    """Cascading model randomisation (Adebayo et al., arXiv:1810.03292; TorchEsegeta's variant): on a *copy* of
    the model, re-initialise the parameters layer by layer from the output towards the input, uniformly in
    ``[mean - std, mean + std]`` of each tensor, re-run the method after each layer and record the Spearman rank
    correlation of |map| with the original |map|. A method that explains the model, not the image, decorrelates:
    the value is the mean correlation (lower is better); ``details["per_layer"]`` lists ``(layer, correlation)``
    in cascade order, the last entry with every layer randomised. The user's model is never touched.

    Layers are found from the parameter names (``named_parameters``), so TorchScript archives are randomised the
    same way as Python modules (the same layers, the same random values for the same weights), on a copy saved to
    and loaded from memory. ``explain_fn(model_copy)`` re-runs the method, or with ``progress`` / ``cancel``
    given ``explain_fn(model_copy, progress=..., cancel=...)`` (forward them to ``explain``)."""
    clone = _independent_copy(model)
    gen = torch.Generator().manual_seed(seed)
    layers = _cascade(clone)
    if len(layers) > max_layers:
        keep = np.linspace(0, len(layers) - 1, max_layers).round().astype(int)
        chosen = set(int(i) for i in keep)
    else:
        chosen = set(range(len(layers)))
    base = np.abs(np.nan_to_num(data, nan=0.0))
    table: list[tuple[str, float]] = []
    meter = Meter(RERUN_UNITS * len(chosen), progress, cancel, "randomisation")
    nested = progress is not None or cancel is not None
    for i, (name, params) in enumerate(layers):
        meter.check()
        with torch.no_grad():
            for _, p in params:
                mean, std = float(p.mean()), float(p.std()) if p.numel() > 1 else 0.0
                p.copy_((torch.rand(p.shape, generator=gen) * 2 * std + (mean - std)).to(p.device, p.dtype))
        if i in chosen:
            what = f"re-run {len(table) + 1} of {len(chosen)}, model randomised down to {name or 'the input'}"
            meter.step(0, what)
            run = meter.within(what, RERUN_UNITS)
            got = explain_fn(clone, progress=run, cancel=cancel) if nested else explain_fn(clone)
            table.append((name, _spearman(base, np.abs(got))))
            meter.step(RERUN_UNITS, what)
    meter.finish()
    value = float(np.mean([c for _, c in table])) if table else 0.0
    return value, {"per_layer": table}


def specificity(scorer: Scorer, data: np.ndarray, *, block: int = 8, q: float = 0.1, eps: float | None = None,
                baseline: Any = "mean", score: str = "log_odds", progress: Progress | None = None,
                cancel: Cancel | None = None) -> tuple[float, dict[str, Any]]:
    """Block-level specificity of a map at identifying the voxels the model used (methods.md §A3.2, our
    reconstruction of Philbrick et al.'s evaluation). "Used" blocks: occluding the ``block``-sized cube with the
    ``baseline`` (default the image mean: neutral tissue rather than air) changes the target's score by more
    than ``eps``: with ``score="log_odds"`` (default, eps 1.0: the odds change by a factor e) the log-odds of the
    target probability, computed from the logits, so that a confident (saturated) model's changes are still seen;
    with ``score="probability"`` (eps 0.01, methods.md §A3.2's suggestion) the probability itself. Flagged blocks:
    the top ``q`` fraction of blocks by mean attribution.
    Returns specificity TN / (TN + FP) (higher is better); details hold sensitivity, the confusion counts and the
    threshold-free block-level ROC AUC of the map's block means against the used blocks."""
    image = scorer.image
    spatial = scorer.spatial
    nd = len(spatial)
    grid = [range(0, s, block) for s in spatial]
    corners = list(np.array(np.meshgrid(*grid, indexing="ij")).reshape(nd, -1).T)
    fill = _background(image, baseline)
    if score not in ("log_odds", "probability"):
        raise ParameterError("score must be 'log_odds' or 'probability'.")
    if scorer.target.score == "logit":  # both scores are of the probability: never swap the target's logit for it
        raise ParameterError(
            "specificity measures the change of the target's probability (score='log_odds' or 'probability'), but "
            "the target asks for the logit (score='logit'). Leave the target's score out, or use "
            "score='probability' on it."
        )
    eps = (1.0 if score == "log_odds" else 0.01) if eps is None else float(eps)
    measure = scorer.log_odds if score == "log_odds" else scorer
    meter = Meter(1 + len(corners), progress, cancel, "specificity")
    p0 = score_batches(measure, image[None], scorer.batch, meter)[0]
    imgs = []
    for c in corners:
        sl = tuple(slice(int(o), int(o) + block) for o in c)
        im = image.copy()
        if scorer.channel_axis:
            im[(slice(None),) + sl] = fill[(slice(None),) + sl]
        else:
            im[sl] = fill[sl]
        imgs.append(im)
    probs = score_batches(measure, np.stack(imgs), scorer.batch, meter, "occluded blocks")
    meter.finish()
    used = np.abs(p0 - probs) > eps
    clean = np.nan_to_num(data, nan=-np.inf)
    means = np.array([clean[tuple(slice(int(o), int(o) + block) for o in c)].mean() for c in corners])
    k = max(1, int(round(q * len(corners))))
    flagged = np.zeros(len(corners), bool)
    flagged[np.argsort(means, kind="stable")[::-1][:k]] = True
    tp = int((flagged & used).sum())
    fp = int((flagged & ~used).sum())
    tn = int((~flagged & ~used).sum())
    fn = int((~flagged & used).sum())
    spec = tn / (tn + fp) if tn + fp else 1.0
    sens = tp / (tp + fn) if tp + fn else 0.0
    auc = float("nan")
    if used.any() and (~used).any():  # threshold-free: P(a used block outranks an unused one), ties count half
        from scipy.stats import rankdata

        ranks = rankdata(np.nan_to_num(means.astype(np.float64), neginf=-1e300))
        n_pos, n_neg = int(used.sum()), int((~used).sum())
        auc = float((ranks[used].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(spec), {"sensitivity": sens, "auc": auc, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
                         "used_blocks": int(used.sum()), "blocks": len(corners), "block": block, "q": q,
                         "score": score, "eps": eps}
