"""Small tables that put a heatmap next to anatomy or next to other layers of the network, for the widget and for
scripts: a per-landmark table (how much of the map's positive energy each landmark holds, where the map's peak
is, how far it is from each landmark in mm) and a per-layer table for a sweep of a layer method over the network.

They reuse the localisation metrics' definitions (:func:`~napari_attribution.metrics.localisation.energy_in_mask`
and :func:`~napari_attribution.metrics.localisation.pointing_game`) but compute all landmarks in one pass over the
volume (``np.bincount`` and a distance to the peak per labelled voxel instead of one mask and one distance
transform per label), so that a 128^3 volume with several landmarks takes milliseconds.
:func:`landmark_comparison` puts the landmark tables of several heatmaps (e.g. the methods of a comparison) side
by side, one row per heatmap.

>>> import numpy as np
>>> heat = np.zeros((4, 4), np.float32); heat[1, 1] = 3.0; heat[2, 3] = 1.0
>>> labels = np.zeros((4, 4), np.int32); labels[1, 1] = 1; labels[3, 3] = 2
>>> table = landmark_table(heat, labels, spacing=(2.0, 1.0))
>>> [(r.label, r.voxels, r.volume_mm3, r.energy, r.peak_inside, r.distance_mm) for r in table.rows]
[(1, 1, 2.0, 0.75, True, 0.0), (2, 1, 2.0, 0.0, False, 4.47213595499958)]
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .._atomic import csv_writer  # cells escaped against spreadsheet formulas
from .._errors import ParameterError
from .localisation import energy_in_mask

__all__ = ["LandmarkComparison", "LandmarkRow", "LandmarkTable", "MapLandmarks", "landmark_comparison",
           "landmark_table", "layer_sweep_table", "target_region"]


@dataclass
class LandmarkRow:
    """One landmark (one label value of a label map) against a heatmap.

    Attributes
    ----------
    label : int
        The label value.
    name : str
        The landmark's name when known (``names``), else ``""``.
    voxels : int
        Voxels carrying the label.
    volume_mm3 : float
        ``voxels`` times the volume of one voxel (from ``spacing``).
    energy : float or None
        Fraction of the map's positive energy inside the landmark, ``sum_{u in M} max(R, 0) / sum_u max(R, 0)``
        (``energy_in_mask``); None when the map has no positive value.
    volume_fraction : float
        The landmark's share of the volume: the ``energy`` a map spread evenly would give (chance).
    peak_inside : bool
        The map's maximum lies in the landmark (pointing game with tolerance 0).
    distance_mm : float
        Distance from the map's maximum to the nearest voxel centre of the landmark, in mm (0 inside).
    """

    label: int
    name: str
    voxels: int
    volume_mm3: float
    energy: float | None
    volume_fraction: float
    peak_inside: bool
    distance_mm: float


@dataclass
class LandmarkTable:
    """:func:`landmark_table`'s result: one row per landmark, and where the map's maximum is."""

    rows: list[LandmarkRow]
    peak: tuple[int, ...]
    peak_value: float
    positive_energy: float
    spacing: tuple[float, ...]
    seconds: float = 0.0
    columns: tuple[str, ...] = field(default=("label", "name", "voxels", "volume_mm3", "energy_fraction",
                                              "volume_fraction", "peak_inside", "distance_mm"))

    @property
    def energy_in_landmarks(self) -> float | None:
        """Fraction of the positive energy inside any landmark (None when the map has none)."""
        if self.positive_energy <= 0:
            return None
        return float(sum(r.energy or 0.0 for r in self.rows))

    def csv(self) -> str:
        """The table as CSV text (header, one line per landmark; numbers unrounded)."""
        buf = io.StringIO()
        writer = csv_writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for r in self.rows:
            writer.writerow([r.label, r.name, r.voxels, repr(r.volume_mm3), "" if r.energy is None else repr(r.energy),
                             repr(r.volume_fraction), "yes" if r.peak_inside else "no", repr(r.distance_mm)])
        return buf.getvalue()


def _label_ids(labels: npt.NDArray[Any]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """``(ids, values)``: a non-negative index per voxel (0 = background) and the label value of each index."""
    if labels.dtype == bool:
        return labels.astype(np.intp).ravel(), np.array([0, 1], np.int64)
    flat = labels.ravel()
    lo, hi = (int(flat.min()), int(flat.max())) if flat.size else (0, 0)
    if lo >= 0 and hi <= max(4 * flat.size, 1 << 16):
        return flat.astype(np.intp, copy=False), np.arange(hi + 1, dtype=np.int64)
    values, inverse = np.unique(flat, return_inverse=True)  # negative or very large label values
    nonzero = values != 0
    index = np.zeros(values.size, np.intp)
    index[nonzero] = np.arange(1, int(nonzero.sum()) + 1)
    return index[inverse.ravel()], np.concatenate([[0], values[nonzero]]).astype(np.int64)


def landmark_table(heatmap: Any, labels: Any, *, spacing: Sequence[float] | None = None,
                   names: Mapping[Any, Any] | None = None) -> LandmarkTable:
    """Compare a heatmap with landmarks drawn as a label map (one label value per landmark).

    Parameters
    ----------
    heatmap : array ``(*S)``
        The raw map (``Attribution.data``); NaN (not explained) counts as no energy and is never the peak.
    labels : integer array ``(*S)``
        0 = no landmark; each other value is one landmark (a boolean mask is one landmark, label 1).
    spacing : sequence of float, optional
        Voxel size in mm in numpy axis order (default 1 mm): volumes and distances.
    names : mapping, optional
        Label value (int or str key) -> name, e.g. a Labels layer's ``metadata["label_names"]``.

    Returns
    -------
    LandmarkTable
        Rows in increasing label order; ``peak`` is the voxel index of the map's maximum (the first one if tied).

    Raises
    ------
    ParameterError
        The label map's shape differs from the heatmap's, the label map has no landmark, or the heatmap has no
        finite value.
    """
    t0 = time.perf_counter()
    data = np.asarray(heatmap)
    lab = np.asarray(labels)
    if lab.shape != data.shape:
        raise ParameterError(f"The landmarks have shape {lab.shape} but the heatmap has shape {data.shape}.")
    if not (lab.dtype == bool or np.issubdtype(lab.dtype, np.integer)):
        raise ParameterError(f"Landmarks must be integer labels (one value per landmark), got {lab.dtype}.")
    sp = tuple(float(abs(s)) for s in spacing) if spacing is not None else (1.0,) * data.ndim
    if len(sp) != data.ndim:
        raise ParameterError(f"spacing has {len(sp)} values but the heatmap has {data.ndim} axes.")
    ids, values = _label_ids(lab)
    counts = np.bincount(ids, minlength=values.size)
    present = np.flatnonzero(counts[1:]) + 1
    if present.size == 0:
        raise ParameterError("The landmark layer is empty: paint each landmark with its own label value.")
    flat = data.reshape(-1).astype(np.float32, copy=False)
    finite = np.isfinite(flat)
    if not finite.any():
        raise ParameterError("The heatmap has no explained voxel (all NaN).")
    with np.errstate(invalid="ignore"):
        pos = np.where(flat > 0, flat, np.float32(0))
    energy = np.bincount(ids, weights=pos, minlength=values.size)
    total = float(energy.sum())
    peak_flat = int(np.argmax(np.where(finite, flat, -np.inf)))
    peak = tuple(int(i) for i in np.unravel_index(peak_flat, data.shape))
    # distance from the peak to every labelled voxel centre, then the minimum per label
    from scipy import ndimage

    nz = np.flatnonzero(ids)
    coords = np.unravel_index(nz, data.shape)
    d2 = np.zeros(nz.size, np.float64)
    for axis, c in enumerate(coords):
        d2 += ((c - peak[axis]) * sp[axis]) ** 2
    mins = np.asarray(ndimage.minimum(d2, labels=ids[nz], index=present), np.float64).reshape(-1)
    voxel_mm3 = float(np.prod(sp))
    n = flat.size
    peak_id = int(ids[peak_flat])
    label_names = {str(k): str(v) for k, v in (names or {}).items()}
    rows = []
    for i, d in zip(present, mins, strict=True):
        value = int(values[i])
        rows.append(LandmarkRow(
            label=value, name=label_names.get(str(value), ""), voxels=int(counts[i]),
            volume_mm3=float(counts[i]) * voxel_mm3, energy=float(energy[i] / total) if total > 0 else None,
            volume_fraction=float(counts[i]) / n, peak_inside=bool(peak_id == i), distance_mm=float(math.sqrt(d)),
        ))
    rows.sort(key=lambda r: r.label)
    return LandmarkTable(rows, peak, float(flat[peak_flat]), total, sp, time.perf_counter() - t0)


@dataclass
class MapLandmarks:
    """One heatmap (e.g. one method of a comparison) against all landmarks: a row of :class:`LandmarkComparison`.

    Attributes
    ----------
    name : str
        The heatmap's name (e.g. the method).
    energy : list of float or None
        Share of the map's positive energy inside each landmark, in the order of ``LandmarkComparison.labels``
        (None when the map has no positive value).
    energy_in_landmarks : float or None
        Share inside any landmark.
    peak_in : int or None
        The label of the landmark holding the map's maximum, None if it lies outside every landmark.
    distance_mm : float
        Distance from the map's maximum to the nearest landmark in mm (0 inside one).
    nearest : int
        The label of that nearest landmark (the lowest label if tied).
    """

    name: str
    energy: list[float | None]
    energy_in_landmarks: float | None
    peak_in: int | None
    distance_mm: float
    nearest: int


@dataclass
class LandmarkComparison:
    """:func:`landmark_comparison`'s result: the landmarks (columns) and one row per heatmap."""

    labels: list[int]
    names: list[str]
    chance: list[float]  # each landmark's share of the volume (what an even map would give)
    rows: list[MapLandmarks]

    def label_text(self, label: int | None) -> str:
        """``"2 · aorta"`` (the name when known), ``"none"`` for None."""
        if label is None:
            return "none"
        name = self.names[self.labels.index(label)] if label in self.labels else ""
        return f"{label} · {name}" if name else str(label)

    def csv(self) -> str:
        """The table as CSV text: a header, a ``chance`` line (each landmark's share of the volume), one line per
        heatmap (numbers unrounded)."""
        buf = io.StringIO()
        writer = csv_writer(buf, lineterminator="\n")
        marks = [f"energy_fraction {lab}" + (f" ({name})" if name else "") for lab, name in
                 zip(self.labels, self.names, strict=True)]
        writer.writerow(["map", *marks, "energy_in_landmarks", "peak_in", "peak_in_name", "peak_distance_mm",
                         "nearest_landmark"])
        writer.writerow(["chance", *(repr(c) for c in self.chance), repr(float(sum(self.chance))), "", "", "", ""])
        for r in self.rows:
            name = "" if r.peak_in is None else self.names[self.labels.index(r.peak_in)]
            writer.writerow([r.name, *("" if e is None else repr(e) for e in r.energy),
                             "" if r.energy_in_landmarks is None else repr(r.energy_in_landmarks),
                             "none" if r.peak_in is None else r.peak_in, name, repr(r.distance_mm), r.nearest])
        return buf.getvalue()


def landmark_comparison(tables: Mapping[str, LandmarkTable]) -> LandmarkComparison:
    """Put several heatmaps' :func:`landmark_table` results (``{name: table}``, all made with one label map, e.g.
    one per method of a comparison) side by side: one row per heatmap with its energy share per landmark, the
    landmark holding its peak and the distance from its peak to the nearest landmark.

    >>> import numpy as np
    >>> labels = np.zeros((4, 4), np.int32); labels[0, 0] = 1; labels[3, 3] = 2
    >>> a = np.zeros((4, 4)); a[0, 0] = 3.0; a[3, 3] = 1.0
    >>> b = np.zeros((4, 4)); b[1, 2] = 1.0
    >>> cmp = landmark_comparison({"a": landmark_table(a, labels), "b": landmark_table(b, labels)})
    >>> [(r.name, r.energy, r.peak_in, round(r.distance_mm, 3), r.nearest) for r in cmp.rows]
    [('a', [0.75, 0.25], 1, 0.0, 1), ('b', [0.0, 0.0], None, 2.236, 1)]

    Raises
    ------
    ParameterError
        No table, or tables made with different landmarks (label values or voxel counts differ).
    """
    items = list(tables.items())
    if not items:
        raise ParameterError("No landmark table to compare.")
    first = items[0][1]
    key = [(r.label, r.voxels, r.volume_fraction) for r in first.rows]
    out = []
    for name, table in items:
        if [(r.label, r.voxels, r.volume_fraction) for r in table.rows] != key:
            raise ParameterError(f"The landmark table of {name!r} was made with other landmarks than that of "
                                 f"{items[0][0]!r}: compare tables of one label map.")
        inside = [r.label for r in table.rows if r.peak_inside]
        nearest = min(table.rows, key=lambda r: r.distance_mm)
        out.append(MapLandmarks(name=str(name), energy=[r.energy for r in table.rows],
                                energy_in_landmarks=table.energy_in_landmarks,
                                peak_in=inside[0] if inside else None, distance_mm=nearest.distance_mm,
                                nearest=nearest.label))
    return LandmarkComparison(labels=[r.label for r in first.rows], names=[r.name for r in first.rows],
                              chance=[r.volume_fraction for r in first.rows], rows=out)


def target_region(att: Any, target: Any = None, *, channels: int | None = None) -> npt.NDArray[np.bool_] | None:
    """The region a segmentation target sums over, on the attribution's grid, or None (classification targets,
    single voxels, an unknown region). A slice-wise result's target and prediction are on the volume's grid too
    (its label maps stacked, 0 on slices not run): a ``Predicted`` region lies on the slices that were run.

    ``Region(k, mask)`` -> the mask; ``Predicted(k)`` -> class ``k``'s region of ``att.prediction``;
    ``ErrorRegion`` -> the false positives or negatives of class ``k``. The region of class ``k`` in a label map is
    :func:`~napari_attribution.targets.class_region`: ``labels == k`` with several output channels, the foreground
    (label 1) of a one-channel model, whose only class is 0. ``target`` overrides ``att.target`` (e.g. the
    full-image target of a run on a box, whose resolved target was cropped).

    ``channels`` is the model's number of output channels (``ModelInfo.n_classes``, the card's ``num_classes``);
    without it, ``att.extras["output_channels"]`` when recorded. When neither is known, a class ``k >= 1`` can only
    come from a model with several channels (a one-channel model refuses it), so its region is ``labels == k``;
    class 0 would be the background of a multi-class model but the foreground of a one-channel one, so it gives
    None rather than a guess.
    """
    from ..targets import ErrorRegion, Predicted, Region, class_region

    t = att.target if target is None else target
    shape = np.shape(att.data)
    pred_map = att.label_map
    if channels is None:
        recorded = getattr(att, "extras", {}).get("output_channels")
        channels = int(recorded) if recorded is not None else None
    mask: npt.NDArray[np.bool_] | None = None
    if isinstance(t, Region):
        mask = np.asarray(t.mask).astype(bool)
    elif isinstance(t, (Predicted, ErrorRegion)) and pred_map is not None:
        k = int(t.k)
        n = channels if channels is not None else (k + 1 if k >= 1 else None)
        if n is None or k >= n:
            return None
        pred_k = class_region(pred_map, k, n)
        if isinstance(t, Predicted):
            mask = pred_k
        else:
            truth_k = class_region(np.asarray(t.truth_mask), k, n)
            mask = (pred_k & ~truth_k) if t.kind == "fp" else (truth_k & ~pred_k)
    if mask is None or mask.shape != shape or not mask.any():
        return None
    return mask


def layer_sweep_table(results: Mapping[str, Any], region: Any = None) -> list[dict[str, Any]]:
    """One row per network layer of a layer sweep (``{layer name: Attribution}``, shallow to deep).

    Each row: ``layer``, ``seconds``, ``peak`` (the map's maximum, NaN ignored), and ``energy`` — the fraction of
    the map's positive energy inside ``region`` (a boolean mask of the map's shape, e.g. :func:`target_region`),
    or None without a region.
    """
    rows = []
    for name, att in results.items():
        data = np.asarray(getattr(att, "data", att), np.float32)
        finite = data[np.isfinite(data)]
        energy = None
        if region is not None:
            energy, _ = energy_in_mask(data, np.asarray(region, bool))
        rows.append({"layer": str(name), "seconds": float(getattr(att, "seconds", 0.0)),
                     "peak": float(finite.max()) if finite.size else float("nan"), "energy": energy})
    return rows
