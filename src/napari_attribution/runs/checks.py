"""The checks of a heatmap, without Qt or napari: deletion and insertion against random orders of the same units
(connected blocks of a few mm on a segmenter, single voxels on a classifier), the model-randomisation sanity check,
max-sensitivity, and integrated gradients' completeness, each with a verdict in words (:func:`verdict`, the one place
of the thresholds and the wording), and the deletion fill the box offers for a heatmap (:func:`fill_choices`, read
back by :func:`deletion_fill`).

The Explain dock's "Check this map" box (:mod:`napari_attribution._widget._trust`) runs :func:`check_job` in a
worker and shows its rows; the command line's metrics CSV and the batch summary write the same verdict next to each
metric that has one (:data:`VERDICTS`, :func:`verdict`), so a score reads the same wherever it was computed.

:class:`Explained` is what a check needs of a heatmap (the Attribution, its model, the scan cropped to the explained
box; a layer sweep or a slice-wise map as parts checked one at a time); :func:`check_job` runs the ticked checks with
:func:`napari_attribution.evaluate`, never raises, and returns a :class:`CheckOutcome` whose rows come from
:func:`rows_from` (a failed check: :func:`failed_row`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import napari_attribution as na

from .._attribution import plane_geometry
from ..layers import json_safe
from ..metrics import METRICS
from .jobs import ExplainRequest, in_low_priority_thread, spatial_offset
from .model_info import ModelInfo
from .wrapper import Failures, never_raise

__all__ = ["CANNOT_TELL", "CHECKS", "DEFAULT_CHECKS", "FILL_LABELS", "LABELS", "PARAMS", "TIPS", "VERDICTS",
           "CheckOutcome", "CheckRequest", "Explained", "check_job", "deletion_fill", "explained_from", "failed_row",
           "fill_choices", "rows_from", "slice_key", "verdict", "verdicts_of_maps"]


Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]

#: The checks (and ``na.evaluate`` metrics) that have a verdict in words; the others have none.
VERDICTS = ("deletion", "insertion", "randomisation", "max_sensitivity", "completeness")
#: The checks the box offers, in table order (``completeness`` is added for integrated gradients).
CHECKS = ("deletion", "insertion", "randomisation", "max_sensitivity")
DEFAULT_CHECKS = ("deletion", "insertion", "randomisation")
LABELS = {"deletion": "deletion", "insertion": "insertion", "randomisation": "randomisation",
          "max_sensitivity": "max-sensitivity", "completeness": "IG completeness"}
#: Cheap settings: 21 model calls for deletion and insertion each, and as many for each of their four random orders;
#: five re-runs of the method for randomisation and max-sensitivity.
PARAMS: dict[str, dict[str, Any]] = {"deletion": {"steps": 20}, "insertion": {"steps": 20},
                                     "randomisation": {"max_layers": 5}, "max_sensitivity": {"samples": 5}}
TIPS = {
    "deletion": "Delete the scan in the map's order (most important first) and follow the target's probability: "
                "the area under that curve (AUC). A segmenter's scan is deleted in blocks of 3 mm filled with its "
                "blurred copy (or the modality's background when blurring changes nothing), a classifier's voxel by "
                "voxel. Lower is better; the reference is the mean AUC of four random orders, and AUCs within their "
                "noise cannot be told apart.",
    "insertion": "Start from a blurred scan and put it back in the map's order (blocks of 3 mm on a segmenter, "
                 "voxels on a classifier): the AUC of the target's probability. Higher is better; the reference "
                 "is the mean AUC of four random orders, and AUCs within their noise cannot be told apart.",
    "randomisation": "Randomise the model's weights layer by layer (from the output back, on a copy) and "
                     "re-run the method: the mean rank correlation with the original map. Low = the map depends "
                     "on the model; the reference is the correlation with every layer randomised.",
    "max_sensitivity": "Re-run the method on the scan with ±2 % noise: the largest relative change of the map. "
                       "Lower is better.",
    "completeness": "Integrated gradients: how far the map's sum is from the score difference it explains "
                    "(relative error). The reference is that difference.",
}


# ------------------------------------------------------------------------------------------------ what to check


@dataclass
class Explained:
    """A heatmap this dock made: the attribution on the image it was computed on (cropped to the explained box),
    the model it came from, and ``note``, why it cannot be checked ("" when it can).

    A layer sweep (``kind`` "network layer") or a slice-wise map (``kind`` "slice") is checked one part at a
    time: ``parts`` maps the key its checks are stored under (the network layer's name, ``"slice <k>"``) to that
    part as an ordinary :class:`Explained` (its own Attribution and image). ``accumulates``: the run explained
    chosen slices, which join the layer's earlier ones (see :meth:`TrustBox.remember`)."""

    attribution: Any  # na.Attribution
    model: ModelInfo
    image: Any  # the layer's array (numpy or dask: read in the worker), cropped to the box
    note: str = ""
    kind: str = ""  # "" (one map), "network layer" (a layer sweep) or "slice" (slice by slice)
    parts: dict[str, Explained] = field(default_factory=dict)
    accumulates: bool = False
    modality: str = ""  # the reader's word for the scan ("CT", "MR", ...), "" when it gave none


def slice_key(index: int) -> str:
    """The key a slice-wise map's checks of slice ``index`` (of the scan) are stored under."""
    return f"slice {int(index)}"


def _box(attribution: Any) -> tuple[slice, ...] | None:
    roi = attribution.extras.get("roi")
    return None if roi is None else tuple(slice(int(a), int(b)) for a, b in roi)


def _cropped(attribution: Any, model: ModelInfo, image: Any, off: int) -> Explained:
    """``attribution`` and ``image`` cropped to the box (ROI) the map was explained on, if any."""
    box = _box(attribution)
    if box is not None:
        image = image[(slice(None),) * off + box]
        attribution = dataclasses.replace(attribution, data=np.asarray(attribution.data)[box])
    return Explained(attribution, model, image)


#: the geometry of one slice of a volume (the widget tests read it under this name)
_plane_geometry = plane_geometry


def _slice_parts(attribution: na.Attribution, model: ModelInfo, image: Any, off: int) -> dict[str, Explained]:
    """One 2D :class:`Explained` per explained slice of a slice-wise map (``Attribution.on_slice``: that slice's map,
    target, prediction and extras) with the same slice of the scan; for a box run, both cut to the box's plane (the
    slice's target is already in the box's voxel space)."""
    if attribution.per_slice is None:
        return {}
    box = _box(attribution)
    plane = box[1:] if box is not None else (slice(None), slice(None))
    parts: dict[str, Explained] = {}
    for z in attribution.per_slice.slices:
        att = attribution.on_slice(z)
        if box is not None:
            label_map = att.label_map
            att = dataclasses.replace(
                att, data=att.data[plane], prediction=label_map[plane] if label_map is not None else att.prediction,
                per_channel=None if att.per_channel is None else att.per_channel[(slice(None), *plane)])
        parts[slice_key(z)] = Explained(att, model, image[(slice(None),) * off + (z, *plane)])
    return parts


def explained_from(attribution: Any, request: ExplainRequest, name: str,
                   results: Mapping[str, Any] | None = None) -> Explained:
    """What :func:`check_job` needs for the heatmap ``name`` made by ``request``: a box (ROI) run is checked on
    the box, as it was explained. For a layer sweep, ``results`` are the sweep's maps ({network layer: its
    Attribution}); a slice-wise map is cut into its explained slices."""
    ex = _explained_from(attribution, request, name, results)
    hint = str(request.source_metadata.get("modality") or "")
    return dataclasses.replace(ex, modality=hint,
                               parts={k: dataclasses.replace(p, modality=hint) for k, p in ex.parts.items()})


def _explained_from(attribution: Any, request: ExplainRequest, name: str,
                    results: Mapping[str, Any] | None) -> Explained:
    image = request.image[0] if isinstance(request.image, (list, tuple)) else request.image  # multiscale: level 0
    off = spatial_offset(request.model, tuple(np.shape(image)))
    slicewise = request.slices is not None or attribution.per_slice is not None
    if request.sweep_layers:
        maps = dict(results or {})
        if slicewise or not maps or any(a.per_slice is not None for a in maps.values()):
            note = (f"'{name}' is a layer sweep of maps explained slice by slice with a 2D model. Run Explain at "
                    "one network layer (without the sweep) and check that heatmap slice by slice."
                    if maps or slicewise else
                    f"'{name}' is a layer sweep whose maps are not known here: run the sweep again, then check it.")
            return Explained(attribution, request.model, image, note)
        parts = {str(layer): _cropped(att, request.model, image, off) for layer, att in maps.items()}
        first = next(iter(parts.values()))
        return Explained(first.attribution, request.model, first.image, kind="network layer", parts=parts)
    if slicewise:
        data_shape = tuple(np.shape(attribution.data))
        box = _box(attribution)
        shape = tuple(b.stop - b.start for b in box) if box is not None else data_shape
        grid = attribution.extras.get("model_grid_shape")
        if grid is not None and tuple(int(g) for g in grid) != shape:
            note = (f"'{name}' was explained slice by slice on the model's resampled grid, whose slices are not "
                    "the scan's, so the checks cannot check it slice by slice.")
            return Explained(attribution, request.model, image, note)
        return Explained(attribution, request.model, image, kind="slice",
                         parts=_slice_parts(attribution, request.model, image, off),
                         accumulates=request.slices is not None)
    return _cropped(attribution, request.model, image, off)


@dataclass
class CheckRequest:
    explained: Explained
    checks: list[str]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per check, for na.evaluate


@dataclass
class CheckOutcome:
    """What a check run gave: ``status`` "ok" when at least one check gave a number (the others that failed are in
    ``failed``, check -> why, and have a row that says so), "failed" when none did, "cancelled"."""

    status: str  # "ok" | "cancelled" | "failed"
    message: str = ""
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # check -> row (see rows_from)
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # check -> why it failed (one line)


# ------------------------------------------------------------------------------------------------ verdicts


def _span(*curves: Any) -> float:
    values = np.concatenate([np.asarray(c, float).ravel() for c in curves])
    return float(values.max() - values.min()) if values.size else 0.0


#: The verdict of a deletion or insertion AUC that lies within the noise of the random orders' AUCs: the check cannot
#: rank this map against a map that knows nothing (where every map checked on a scan reads so, it cannot rank them).
CANNOT_TELL = "cannot tell maps apart here (all within noise of a random order)"


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def verdict(check: str, value: float, details: Mapping[str, Any] | None = None) -> str:
    """What a check's numbers say, in words (the thresholds are rules of thumb, stated in the user guide).

    Deletion and insertion: "not informative" when the target's probability moves by less than 0.05 along both
    curves; :data:`CANNOT_TELL` when the map's AUC lies within the noise of the random orders (``random_band``:
    the 95 % prediction interval of one more random order's AUC, from the random orders' spread); else "faithful"
    or "worse than a random order" when the AUC beats (or trails) the random orders' mean by more than a tenth of
    the curves' span, and "no better than a random order" in between.

    Parameters
    ----------
    check : str
        The check or ``na.evaluate`` metric (one of :data:`VERDICTS`; any other gets ``""``).
    value : float
        Its :attr:`~napari_attribution.Score.value` (completeness: the relative error).
    details : mapping, optional
        The :attr:`~napari_attribution.Score.details`; deletion and insertion read their random-order reference and
        both curves from them.

    Returns
    -------
    str
        The verdict the Explain dock shows, the CLI's metrics CSV and the batch summary write.
    """
    details = details or {}
    if check in ("deletion", "insertion"):
        ref = details.get("random_auc")
        if ref is None:
            return "no random reference to compare with"
        span = _span(details.get("curve", [value]), details.get("random_curve", [ref]))
        if span < 0.05:
            fix = " or another fill value" if check == "deletion" else ""
            return ("not informative: the target's probability hardly changes along either curve (the model is "
                    f"saturated, or does not react to the {'deletion' if check == 'deletion' else 'blur'}); try "
                    f"another target{fix}")
        band = _finite(details.get("random_band"))
        if band is not None and abs(value - float(ref)) <= band:
            n = int(details.get("random_orders") or 0)
            return f"{CANNOT_TELL}: AUC {value:.3f} against {float(ref):.3f} ± {band:.3f} for {n} random orders"
        units = "regions" if details.get("unit") == "region" else "voxels"
        gain = (ref - value if check == "deletion" else value - ref) / span
        if gain > 0.1:
            return (f"faithful: deleting the map's top {units} first drops the score faster than a random order"
                    if check == "deletion" else
                    f"faithful: restoring the map's top {units} first brings the score back faster than a random "
                    "order")
        if gain < -0.1:
            return f"worse than a random order: the map's top {units} matter less to the model than random ones"
        return f"no better than a random order of the {units}"
    if check == "randomisation":
        if value < 0.3:
            return "passes the sanity check: the map changes when the model is randomised (it depends on the model)"
        if value < 0.6:
            return "partly passes: the map keeps some of its structure when the model is randomised"
        return ("fails the sanity check: the map barely changes when the model is randomised (it shows the image "
                "more than the model)")
    if check == "max_sensitivity":
        pct = f"{100 * value:.0f} %"
        if value < 0.1:
            return f"stable: ±2 % noise on the scan changes the map by at most {pct}"
        if value < 0.5:
            return f"fairly stable: ±2 % noise on the scan changes the map by up to {pct}"
        return f"unstable: ±2 % noise on the scan changes the map by up to {pct}"
    if check == "completeness":
        pct = f"{100 * value:.2g} %"
        if value <= 0.01:
            return f"complete: the map adds up to the score difference it explains (error {pct})"
        if value <= 0.1:
            return f"nearly complete (error {pct}); more steps make the numbers exact"
        return f"incomplete: the map's sum misses the score difference by {pct}; use more steps (or steps 'auto')"
    return ""


def verdicts_of_maps(check: str, scores: Mapping[str, Any]) -> dict[str, str]:
    """The verdicts of several maps of one scan and target (``{name: Score}``, e.g. the methods of one command-line
    run): each map's :func:`verdict`, except that where some map lies outside the random orders' noise — so the
    check can tell maps apart here — a deletion or insertion map inside it reads "no better than a random order"
    (within noise) rather than :data:`CANNOT_TELL`, which then holds only when every map is within noise."""
    said = {name: verdict(check, float(score.value), score.details) for name, score in scores.items()}
    if check not in ("deletion", "insertion"):
        return said
    within = {name for name, text in said.items() if text.startswith(CANNOT_TELL)}
    told = [name for name, text in said.items() if name not in within and not text.startswith(("not informative",
                                                                                                "no random"))]
    if not told:
        return said
    for name in within:
        d = scores[name].details
        units = "regions" if d.get("unit") == "region" else "voxels"
        said[name] = (f"no better than a random order of the {units} (within noise: AUC "
                      f"{float(scores[name].value):.3f} against {float(d['random_auc']):.3f} ± "
                      f"{float(d['random_band']):.3f}), where other maps are told apart")
    return said


def _reference_kind(details: Mapping[str, Any]) -> str:
    n = int(details.get("random_orders") or 1)
    units = "blocks" if details.get("unit") == "region" else "voxels"
    fill = details.get("fill")
    note = f"; {details['fill_note']}" if details.get("fill_note") else ""
    if fill and not str(fill).startswith("the scan"):  # deletion: what the deleted units became
        units += f" (deleted to {fill}{note})"
    if n == 1:
        return f"AUC of a random order of the {units}"
    band = _finite(details.get("random_band"))
    noise = f" (noise ± {band:.3f}: 95 % prediction band)" if band is not None else ""
    return f"mean AUC of {n} random orders of the {units}{noise}"


def rows_from(scores: Mapping[str, Any], attribution: Any, params: Mapping[str, Mapping[str, Any]]
              ) -> dict[str, dict[str, Any]]:
    """One JSON-safe row per check (``value``, ``reference``, ``reference_kind``, ``verdict``, ``better``,
    ``seconds``, ``params``) from the :class:`~napari_attribution.Score` of each, plus integrated gradients'
    completeness from the attribution's extras when it has them."""
    rows: dict[str, dict[str, Any]] = {}
    for check, score in scores.items():
        reference: float | None = None
        kind = ""
        band: float | None = None
        if check in ("deletion", "insertion"):
            reference, kind = score.details.get("random_auc"), _reference_kind(score.details)
            band = _finite(score.details.get("random_band"))
        elif check == "randomisation" and score.details.get("per_layer"):
            reference, kind = score.details["per_layer"][-1][1], "correlation with every layer randomised"
        rows[check] = {
            "value": float(score.value), "reference": None if reference is None else float(reference),
            "reference_kind": kind, "verdict": verdict(check, float(score.value), score.details),
            "better": "higher" if score.higher_is_better else "lower", "seconds": float(score.seconds),
            "params": json_safe(dict(params.get(check, {}))),
        }
        if band is not None:
            rows[check]["reference_band"] = band
    comp = attribution.extras.get("completeness") if attribution is not None else None
    if isinstance(comp, Mapping) and "relative_error" in comp:
        err = float(comp["relative_error"])
        rows["completeness"] = {
            "value": err, "reference": float(comp.get("delta", float("nan"))),
            "reference_kind": "score difference f(x) - f(baseline)", "verdict": verdict("completeness", err, {}),
            "better": "lower", "seconds": 0.0, "params": {"steps": json_safe(comp.get("steps"))},
        }
    return rows


# ------------------------------------------------------------------------------------------------ the job


def check_job(request: CheckRequest, progress: Progress | None = None, cancel: Cancel | None = None
              ) -> CheckOutcome:
    """Run the checks and return a :class:`CheckOutcome`; never raises. Called in napari's worker thread, at a
    lower CPU priority as Explain jobs are."""
    outcome: CheckOutcome = in_low_priority_thread(
        _check_job, request, progress, cancel,
        fallback=CheckOutcome("failed", "The checks stopped unexpectedly; nothing was stored."))
    return outcome


def _why(err: BaseException) -> str:
    """Why a check failed, in one line: the library's own message (it says what to do), else the error's type and
    first line (the traceback goes to the log)."""
    if isinstance(err, MemoryError):
        return "out of memory; explain a box (ROI) and check that"
    text = str(err).strip().splitlines()
    first = text[0].rstrip(".") if text else ""
    if isinstance(err, na.AttributionError):
        return first or type(err).__name__
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _check_failures(check: str) -> Failures:
    """What one check says when it does not finish: the whole run stops on a cancel, a failure is its row's why."""
    return Failures(f"check {check}", cancelled="Checks cancelled: nothing was stored.", library=_why, unexpected=_why)


def failed_row(check: str, why: str, seconds: float, params: Mapping[str, Any]) -> dict[str, Any]:
    """The row of a check that failed: no value, the reason as its verdict (and under ``error``)."""
    return {"value": None, "reference": None, "reference_kind": "", "verdict": f"failed: {why}",
            "better": "higher" if METRICS.get(check) else "lower", "seconds": float(seconds),
            "params": json_safe(dict(params)), "error": why}


def _check_job(request: CheckRequest, progress: Progress | None, cancel: Cancel | None) -> CheckOutcome:
    # torch threads: in_low_priority_thread's (all cores but one, the caller's setting restored afterwards)
    t0 = time.perf_counter()
    ex = request.explained
    n = len(request.checks)
    params = {c: dict(request.params.get(c, {})) for c in request.checks}
    modality = getattr(ex, "modality", "")  # the reader's modality, which the scan's values cannot always tell
    for c in ("deletion", "insertion"):
        if c in params and modality and "modality" not in params[c]:
            params[c]["modality"] = modality
    scores: dict[str, Any] = {}
    failed: dict[str, tuple[str, float]] = {}
    try:
        image = np.asarray(ex.image)  # a dask array is read here, not on the GUI thread
    except MemoryError:
        return CheckOutcome("failed", "Out of memory while reading the scan; explain a box (ROI) and check that.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, check in enumerate(request.checks):
            def step(done: int, total: int, message: str, i: int = i) -> None:
                if progress is not None:
                    frac = done / max(total, 1)
                    progress(int(1000 * (i + frac)), 1000 * n, f"check {i + 1} of {n}, {message}")

            t1 = time.perf_counter()

            def body(check: str = check, step: Progress = step) -> tuple[str, Any]:
                return "ok", na.evaluate(ex.model.model, image, ex.attribution, check,
                                         progress=step, cancel=cancel, **params[check])

            # one check's failure must not throw away the others
            status, got = never_raise(body, lambda status, why: (status, why), _check_failures(check))
            if status == "cancelled":  # the user stopped the run: nothing is stored, not even the checks done
                return CheckOutcome("cancelled", got)
            if status == "failed":
                failed[check] = (got, time.perf_counter() - t1)
            else:
                scores[check] = got
    why = {c: w for c, (w, _) in failed.items()}
    reasons = "; ".join(f"{LABELS.get(c, c)} failed: {w}" for c, w in why.items())
    seconds = time.perf_counter() - t0
    if not scores:
        return CheckOutcome("failed", f"The checks failed: {reasons}.", seconds=seconds, failed=why)
    rows = rows_from(scores, ex.attribution, params)
    for check, (w, s) in failed.items():
        rows[check] = failed_row(check, w, s, params.get(check, {}))
    order = [*request.checks, "completeness"]
    rows = {c: rows[c] for c in sorted(rows, key=lambda c: order.index(c) if c in order else len(order))}
    done = f"{len(scores)} of {n} checks" if failed else f"{n} check{'s' if n != 1 else ''}"
    message = f"{done} in {seconds:.1f} s." + (f" {reasons}; the other checks' results are kept." if failed else "")
    return CheckOutcome("ok", message, rows, seconds, why)


#: The deletion fills the box offers, by ``na.evaluate``'s ``baseline`` word (CT air's label when the scan is in HU).
FILL_LABELS = {"blur": "blurred copy", "ct_air": "CT air (\u22121000 HU)", "mri_background": "MRI background",
               "min": "min", "mean": "mean"}


def _is_segmentation(attribution: Any) -> bool:
    return getattr(attribution, "label_map", None) is not None


def fill_choices(explained: Explained | None) -> list[str]:
    """The deletion fills the box offers for a heatmap, the one ``na.evaluate`` would take first (its ``"auto"``):
    for a segmenter the scan's blurred copy, or the modality's background when blurring leaves the target's score
    unchanged ("blurred copy (MRI background if blur changes nothing)"); for a classifier the background of the
    modality assumed — "CT air (−1000 HU)" for a scan in HU (or "CT air (scan minimum)" for a CT whose values are
    not in HU), else "MRI background" — then the others, "min" and "mean". The modality is the reader's
    (``Explained.modality``) when it gave one, else told from the scan's values
    (:func:`~napari_attribution.metrics.faithfulness.modality_of`)."""
    from ..metrics.faithfulness import default_fill, in_hu, modality_of

    if explained is None:
        return [FILL_LABELS[k] for k in ("blur", "ct_air", "mri_background", "min", "mean")]
    image = explained.image
    if not isinstance(image, np.ndarray):  # a dask array: a strided sample tells HU from other values
        image = np.asarray(image[tuple(slice(None, None, max(1, int(s) // 32)) for s in np.shape(image))])
    modality, _ = modality_of(image, explained.modality or None)
    air = FILL_LABELS["ct_air"] if in_hu(image) else "CT air (scan minimum)"
    labels = {**FILL_LABELS, "ct_air": air}
    background = "ct_air" if modality == "CT" else "mri_background"
    if _is_segmentation(explained.attribution):
        short = "CT air" if background == "ct_air" else "MRI background"
        return [f"{labels['blur']} ({short} if blur changes nothing)",
                *(labels[k] for k in ("blur", background, "min", "mean"))]
    first = default_fill("classification", modality)
    order = [first, *(k for k in ("blur", background, "min", "mean") if k != first)]
    return [labels[k] for k in order]


def deletion_fill(text: str) -> Any:
    """The deletion fill value from the editable choice (:func:`fill_choices`): "blurred copy (... if blur changes
    nothing)" (``"auto"``), "blurred copy", "CT air ...", "MRI background", "min", "mean" (a label may carry words in
    brackets after it) or a number."""
    low = text.strip().lower()
    if low.startswith("blurred copy ("):  # the segmenter's default: na.evaluate's "auto"
        return "auto"
    for prefix, word in (("blurred copy", "blur"), ("ct air", "ct_air"), ("mri background", "mri_background")):
        if low.startswith(prefix):
            return word
    word = low.split(" ")[0]
    if word in ("min", "mean", ""):
        return word or "min"
    try:
        return float(text)
    except ValueError:
        raise na.ParameterError(f"The deletion fill value {text!r} is not 'min', 'mean' or a number (nor blurred "
                                "copy, CT air or MRI background).") from None
