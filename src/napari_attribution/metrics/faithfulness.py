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

__all__ = ["BLUR_UNCHANGED", "CT_AIR_HU", "FILLS", "MODALITIES", "Meter", "blurred", "default_fill",
           "deletion_fill_value", "deletion_insertion", "in_hu", "infidelity", "max_sensitivity", "modality_of",
           "mri_background", "randomisation", "score_batches", "specificity"]

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


#: What a deletion fill can be asked for by name (besides a number or an array), see :func:`deletion_fill_value`.
FILLS = ("auto", "blur", "ct_air", "mri_background", "background", "min", "mean")
#: The modalities :func:`modality_of` tells apart.
MODALITIES = ("CT", "MRI")
#: Air in CT, in Hounsfield units.
CT_AIR_HU = -1000.0


def in_hu(image: np.ndarray) -> bool:
    """Whether the scan's values look like Hounsfield units: air near -1000 (its minimum at or below -500) and
    tissue or bone above 100."""
    lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
    return lo <= -500.0 and lo >= -4000.0 and hi >= 100.0


def modality_of(image: np.ndarray, hint: str | None = None) -> tuple[str, str]:
    """``(modality, how it was told)``: ``"CT"`` or ``"MRI"``.

    ``hint`` (a reader's ``metadata["modality"]``, e.g. DICOM's ``"CT"`` / ``"MR"``, or the user's word) wins;
    else a scan in Hounsfield units (:func:`in_hu`) is CT; else MRI is assumed (non-HU intensities: MRI, or a
    normalised scan, whose darkest region is its background all the same)."""
    if hint:
        word = str(hint).strip().upper()
        if word.startswith("CT"):
            return "CT", "given"
        if word.startswith("MR"):
            return "MRI", "given"
    if in_hu(image):
        return "CT", "the scan's values are in HU"
    return "MRI", "assumed: the scan's values are not in HU"


def mri_background(image: np.ndarray) -> float:
    """The intensity of an MRI's background: the mode of the darker half of the voxels (a 64-bin histogram of the
    values up to the median), which is the noise floor of the air around the head or body (the peak of its
    Rayleigh distribution in a magnitude image, 0 where the background was masked)."""
    values = np.asarray(image, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0
    dark = values[values <= np.percentile(values, 50)]
    lo, hi = float(dark.min()), float(dark.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(dark, bins=64, range=(lo, hi))
    k = int(np.argmax(counts))
    return float((edges[k] + edges[k + 1]) / 2)


def blurred(image: np.ndarray, blur_mm: float | tuple[float, ...], spacing: tuple[float, ...] | None,
            channel_axis: bool) -> np.ndarray:
    """The scan's own Gaussian-blurred copy (sigma ``blur_mm`` in mm per axis; ``spacing`` in mm, default 1)."""
    from scipy.ndimage import gaussian_filter

    nd = image.ndim - (1 if channel_axis else 0)
    sp = np.asarray(spacing if spacing is not None else (1.0,) * nd, float)
    sig = np.broadcast_to(np.asarray(blur_mm, float), sp.shape) / sp
    if channel_axis:
        return np.stack([gaussian_filter(c, sig) for c in image]).astype(image.dtype)
    return np.asarray(gaussian_filter(image, sig), image.dtype)


#: With ``baseline="auto"`` on a segmentation target: when the fully blurred scan moves the target's score by less
#: than this, blurring deletes nothing the model reads and the modality's background is used instead.
BLUR_UNCHANGED = 0.05


def default_fill(task: str, modality: str) -> str:
    """The deletion fill ``baseline="auto"`` stands for: the scan's blurred copy for a segmentation target (an
    in-distribution fill: removing a region's detail, not painting a hole a segmenter has never seen; see
    :data:`BLUR_UNCHANGED` for when the modality's background replaces it), else the modality's background
    (``"ct_air"`` for CT, ``"mri_background"`` for MRI)."""
    if task == "segmentation":
        return "blur"
    return "ct_air" if modality == "CT" else "mri_background"


def deletion_fill_value(image: np.ndarray, baseline: Any, *, task: str = "classification", modality: str = "MRI",
                        blur_mm: float | tuple[float, ...] = 5.0, spacing: tuple[float, ...] | None = None,
                        channel_axis: bool = False) -> tuple[np.ndarray, str]:
    """The image deleted voxels take their values from, and its name: ``"auto"`` (:func:`default_fill`),
    ``"blur"`` (the scan's Gaussian-blurred copy), ``"ct_air"`` (-1000 HU when the scan is in HU, else its
    minimum), ``"mri_background"`` (:func:`mri_background`), ``"background"`` (the modality's: CT air or MRI
    background), ``"min"``, ``"mean"``, a number or an array."""
    if baseline is None:
        baseline = "min"
    if isinstance(baseline, str):
        word = baseline.strip().lower()
        if word == "auto":
            word = default_fill(task, modality)
        if word == "background":
            word = "ct_air" if modality == "CT" else "mri_background"
        if word == "blur":
            return blurred(image, blur_mm, spacing, channel_axis), "blurred copy"
        if word == "ct_air":
            value = CT_AIR_HU if in_hu(image) else float(np.nanmin(image))
            return np.full_like(image, value), ("CT air (-1000 HU)" if in_hu(image) else "CT air (the scan's minimum)")
        if word == "mri_background":
            if channel_axis:
                return np.stack([np.full_like(c, mri_background(c)) for c in image]), "MRI background"
            return np.full_like(image, mri_background(image)), "MRI background"
        if word in ("min", "mean"):
            return _background(image, word), word
        raise ParameterError(f"Unknown baseline {baseline!r}: use {', '.join(repr(f) for f in FILLS)}, a number or "
                             "an array.")
    return _background(image, baseline), "value"


def _block_shape(spatial: tuple[int, ...], block_mm: float | tuple[float, ...],
                 spacing: tuple[float, ...] | None) -> tuple[int, ...]:
    sp = np.asarray(spacing if spacing is not None else (1.0,) * len(spatial), float)
    mm = np.broadcast_to(np.asarray(block_mm, float), sp.shape)
    return tuple(int(max(1, min(s, round(float(m) / float(p))))) for s, m, p in zip(spatial, mm, sp, strict=True))


def _block_ids(spatial: tuple[int, ...], block: tuple[int, ...]) -> np.ndarray:
    """The block index of every voxel (C order of the block grid), flat."""
    grid = [-(-s // b) for s, b in zip(spatial, block, strict=True)]
    idx = np.meshgrid(*[np.arange(s) // b for s, b in zip(spatial, block, strict=True)], indexing="ij")
    return np.ravel_multi_index(tuple(idx), grid).ravel()


def _prediction_band(aucs: np.ndarray) -> float:
    """Half-width of the 95 % prediction interval of one more random order's AUC from ``aucs`` (Student's t with
    n - 1 degrees of freedom: ``t * s * sqrt(1 + 1/n)``); NaN with fewer than two."""
    n = len(aucs)
    if n < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1) * np.std(aucs, ddof=1) * np.sqrt(1 + 1 / n))


def deletion_insertion(scorer: Scorer, data: np.ndarray, *, kind: str = "deletion", steps: int = 50,
                       baseline: Any = "auto", blur_mm: float | tuple[float, ...] = 5.0,
                       spacing: tuple[float, ...] | None = None, unit: str = "auto",
                       block_mm: float | tuple[float, ...] = 3.0, modality: str | None = None,
                       reference: bool = True, random_orders: int = 4, seed: int = 0,
                       progress: Progress | None = None, cancel: Cancel | None = None
                       ) -> tuple[float, dict[str, Any]]:
    """Deletion: replace the image in descending attribution order by a fill (``baseline``) and record the target's
    probability (its logit for a target with ``score="logit"``; a region's mean probability for a segmentation
    target); insertion: start from the scan's blurred copy (Gaussian, sigma ``blur_mm`` in mm per axis) and put the
    original values back in the same order (``baseline`` is deletion's only). ``steps + 1`` points; AUC by the
    trapezoid rule normalised to [0, 1] along the x axis (Petsiuk et al.'s formula). Deletion: lower is better;
    insertion: higher is better. All input channels of a voxel are changed together.

    What is removed or restored (``unit``):

    * ``"voxel"``: single voxels, in the map's voxel order (Petsiuk et al.'s pixels).
    * ``"region"``: blocks of ``block_mm`` mm per axis (from ``spacing``, 1 mm per voxel without it) ranked by the
      map's mean inside each block; a step removes or restores whole blocks. A segmenter's prediction collapses
      once scattered single voxels are changed, whatever their order, so voxel-wise curves cannot tell maps apart
      on segmenters; changing connected regions degrades the prediction as evidence goes.
    * ``"auto"`` (default): ``"region"`` for a segmentation target, ``"voxel"`` for a classification target.

    The deletion fill (``baseline``): ``"auto"`` (default) is the scan's blurred copy (``"blur"``, sigma
    ``blur_mm``) for a segmentation target — unless the fully blurred scan moves the target's score by less than
    :data:`BLUR_UNCHANGED` (two model calls tell): a model that segments a blurred scan as well (a brain mask)
    reads nothing blurring deletes, and the modality's background is used, with ``details["fill_note"]`` saying
    so (insertion keeps its blurred start: restoring a hollow boundary first into an empty background measures
    something else) — and the modality's background for a classification target:
    ``"ct_air"`` (-1000 HU when the scan is in HU, else its minimum) or ``"mri_background"`` (the mode of the
    darker half of the voxels); also ``"background"`` (the modality's), ``"min"``, ``"mean"``, a number or an
    array. The modality is ``modality`` when given (``"CT"``, ``"MR"``/``"MRI"``, or a reader's
    ``metadata["modality"]``), else told from the scan (:func:`modality_of`: HU values are CT, others MRI).

    With ``reference`` (default), the same curve for ``random_orders`` random orders of the same units (blocks or
    voxels; one generator seeded by ``seed``; the units the map explained first, in random order, then the others —
    NaN marks voxels a map did not explain): ``details["random_auc"]`` is their mean AUC and
    ``details["random_curve"]`` their mean curve, the AUC a map that knows nothing gets; ``details["random_aucs"]``
    each one's AUC and ``details["random_band"]`` the noise: the half-width of the 95 % prediction interval of one
    more random order's AUC (Student's t over the random orders; NaN with one). It costs ``random_orders`` times
    the map's own model calls."""
    image = scorer.image
    spatial = tuple(scorer.spatial)
    if data.shape != spatial:
        raise ParameterError(f"The attribution {data.shape} does not match the image's spatial shape {spatial}.")
    if kind not in ("deletion", "insertion"):
        raise ParameterError("kind must be 'deletion' or 'insertion'.")
    if int(steps) < 1:
        raise ParameterError("steps must be at least 1.")
    if unit == "auto":
        unit = "region" if scorer.task == "segmentation" else "voxel"
    if unit not in ("voxel", "region"):
        raise ParameterError(f"unit must be 'auto', 'voxel' or 'region', not {unit!r}.")
    n_random = int(random_orders) if reference else 0
    if reference and n_random < 1:
        raise ParameterError("random_orders must be at least 1 (or pass reference=False).")
    mod, told = modality_of(image, modality)
    flat = np.nan_to_num(data, nan=-np.inf).ravel()
    n = flat.size
    if unit == "voxel":
        block: tuple[int, ...] = (1,) * len(spatial)
        ids = np.arange(n)
        unit_score, unit_explained, sizes = flat, np.isfinite(flat), np.ones(n, int)
    else:
        block = _block_shape(spatial, block_mm, spacing)
        ids = _block_ids(spatial, block)
        finite = np.isfinite(data).ravel()
        counted = np.bincount(ids, weights=finite.astype(float))
        sums = np.bincount(ids, weights=np.where(finite, data.ravel(), 0.0).astype(float))
        unit_explained = counted > 0
        unit_score = np.where(unit_explained, sums / np.maximum(counted, 1), -np.inf)
        sizes = np.bincount(ids)
    n_units = unit_score.size
    marks = np.linspace(0, n_units, steps + 1).round().astype(int)

    def voxels(unit_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The voxels in the units' order and the voxel counts at each step (whole units)."""
        if unit == "voxel":
            return unit_order, marks
        rank = np.empty(n_units, np.int64)
        rank[unit_order] = np.arange(n_units)
        bounds = np.concatenate([[0], np.cumsum(sizes[unit_order])])
        return np.argsort(rank[ids], kind="stable"), bounds[marks]

    fill_note = ""
    if kind == "deletion":
        fill, fill_name = deletion_fill_value(image, baseline, task=scorer.task, modality=mod, blur_mm=blur_mm,
                                              spacing=spacing, channel_axis=scorer.channel_axis)
    else:
        fill, fill_name = blurred(image, blur_mm, spacing, scorer.channel_axis), "blurred copy"
    auto = isinstance(baseline, str) and baseline.strip().lower() == "auto"
    if kind == "deletion" and auto and scorer.task == "segmentation" and fill_name == "blurred copy":
        if cancel is not None and cancel():
            raise Cancelled(f"{kind} was cancelled; no score was produced.")
        before, after = scorer(np.stack([image, fill]))
        if abs(after - before) < BLUR_UNCHANGED:  # a blur the model does not read deletes nothing
            fill, fill_name = deletion_fill_value(image, "background", modality=mod, channel_axis=scorer.channel_axis)
            fill_note = (f"the fully blurred scan changed the target's score by {abs(after - before):.3f} "
                         f"(under {BLUR_UNCHANGED}): {fill_name} instead")
    if kind == "deletion":
        start = image
    else:  # insertion: from the fill (the blurred copy) back to the scan
        start, fill, fill_name = fill, image, f"the scan, from the {fill_name}"
    meter = Meter(len(marks) * (1 + n_random), progress, cancel, kind)
    rows = (image.shape[0], n) if scorer.channel_axis else (1, n)
    start_rows, fill_rows = start.reshape(rows), fill.reshape(rows)

    def curve_of(order: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        vox, counts = voxels(order)
        curve = np.empty(len(counts))
        for first in range(0, len(counts), scorer.batch):
            meter.check()
            batch = []
            for c in counts[first:first + scorer.batch]:
                img = start_rows.copy()
                img[:, vox[:c]] = fill_rows[:, vox[:c]]
                batch.append(img.reshape(image.shape))
            curve[first:first + len(batch)] = scorer(np.stack(batch))
            meter.step(len(batch), f"{what}, {min(first + len(batch), len(counts))} of {len(counts)} steps")
        return curve, counts

    order = np.argsort(unit_score, kind="stable")[::-1]
    curve, counts = curve_of(order, "the map's order")
    details: dict[str, Any] = {
        "curve": curve, "fraction": counts / n, "kind": kind, "unit": unit, "block": block,
        "fill": fill_name, "modality": mod, "modality_from": told, "units": n_units,
    }
    if fill_note:
        details["fill_note"] = fill_note
    if n_random:
        rng = np.random.default_rng(seed)
        curves = []
        for r in range(n_random):
            shuffled = np.concatenate([rng.permutation(np.flatnonzero(unit_explained)),
                                       rng.permutation(np.flatnonzero(~unit_explained))])
            what = "a random order" if n_random == 1 else f"random order {r + 1} of {n_random}"
            curves.append(curve_of(shuffled, what)[0])
        aucs = np.array([_auc(c) for c in curves])
        random_curve = np.mean(curves, axis=0)
        details.update(random_curve=random_curve, random_auc=_auc(random_curve), random_aucs=aucs.tolist(),
                       random_band=_prediction_band(aucs), random_orders=n_random, seed=seed)
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
