"""Attribution -> napari ``LayerDataTuple``: colormap by sign, contrast limits, blending, geometry, provenance.

The maps stay raw (principle 6): nothing here rescales ``Attribution.data``. What makes a raw map readable is
display state that napari applies on top of the data:

* **signed** maps (evidence for and against) get a diverging colormap whose centre is *transparent* (blue =
  against, red = for) with **symmetric** contrast limits ``[-m, m]``, ``m`` the ``percentile`` of ``|data|``;
* **unsigned** maps get a sequential map that starts transparent (dark red -> yellow) with limits
  ``[0, percentile]``;
* both use translucent blending and an opacity that leaves the scan visible; NaN (slices or voxels that were not
  explained) is drawn transparent by napari and ignored by the limits;
* **what is shown, not what is stored**: :func:`body_mask` (the patient: CT above -500 HU, other scans above an
  Otsu threshold, then the largest connected component with its holes filled) hides the map outside the patient
  in the *layer* (NaN there) — the default for perturbation methods (:func:`masks_by_default`), whose "evidence
  against" in the air is an artefact of filling air with air. The limits come from the map's values inside the
  body (or inside the prediction, :func:`prediction_region`), so a hot spot outside the patient does not set them.
  ``Attribution.data`` is never changed; ``metadata["napari_attribution"]["display_mask"]`` says what the layer
  hides. The heatmap's ``interpolation2d`` / ``interpolation3d`` are the scan layer's (napari's defaults without
  one), so a nearest-neighbour scan does not get a smoothed map;
* the heatmap takes the source layer's ``scale`` / ``translate`` / ``rotate`` / ``affine`` (or, without a
  source layer, ``Attribution.geometry.to_napari()``), so it lies exactly on the scan;
* everything needed to trust and reproduce the map goes in ``metadata["napari_attribution"]`` (method, target,
  params, timing, layer, model file and sha256, seed, versions), JSON-safe so the writer can save it as a sidecar.

No Qt and no napari import here (an import-linter contract checks it): the tuples are plain data, turned into
layers by napari (``Layer.create(*tuple)``) or by a reader/sample-data contribution.

Examples
--------
>>> import numpy as np
>>> from napari_attribution import Attribution
>>> from napari_attribution.targets import Class
>>> att = Attribution(np.array([[-2.0, 1.0], [0.5, 0.0]], np.float32), "integrated_gradients", Class(1), None,
...                   {"steps": 8, "seed": 0}, True, 0.01)
>>> data, kwargs, kind = attribution_layer(att, source="scan", source_geometry={"scale": [2.0, 0.5]})
>>> kind, kwargs["name"], kwargs["contrast_limits"][0] == -kwargs["contrast_limits"][1]
('image', 'integrated_gradients · class 1 · scan', True)
>>> kwargs["scale"]
[2.0, 0.5]
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata as _metadata
from typing import Any

import numpy as np

from ._attribution import Attribution

__all__ = [
    "DIVERGING",
    "FULL_MAP_KEY",
    "GEOMETRY_KEYS",
    "LABEL_COLOURS",
    "OWNER_KEY",
    "SEQUENTIAL",
    "SWEEP_AXES",
    "LayerDataTuple",
    "attribution_layer",
    "body_mask",
    "display_heatmap",
    "full_map",
    "masks_by_default",
    "prediction_region",
    "region_limits",
    "class_probabilities",
    "contrast_limits",
    "geometry_kwargs",
    "heatmap_name",
    "json_safe",
    "layer_sweep_layer",
    "prepend_axes",
    "prediction_layer",
    "provenance",
    "used_settings",
    "target_label",
    "versions",
]

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: Colours of predicted classes 1, 2, ... (class 0, the background, is transparent).
LABEL_COLOURS = ("cyan", "lime", "magenta", "white", "deepskyblue", "springgreen", "violet", "lightgrey")

#: ``layer.metadata[OWNER_KEY]`` marks layers made by this plugin (so re-runs replace only those).
OWNER_KEY = "napari_attribution"

#: ``layer.metadata[FULL_MAP_KEY]``: the unmasked map of a heatmap layer whose data is hidden outside a display mask
#: (a reference to the array the layer was made from, usually ``Attribution.data`` itself: no copy). The landmark
#: tables and the writer use it (:func:`full_map`), so hiding is a display choice and loses no value.
FULL_MAP_KEY = "napari_attribution_full_map"

#: The layer attributes that place a layer in the world.
GEOMETRY_KEYS = ("scale", "translate", "rotate", "shear", "affine")

#: Diverging, transparent at zero: blue (against the target) -> clear -> red (for the target).
DIVERGING: dict[str, Any] = {
    "name": "attribution diverging",
    "colors": [
        [0.02, 0.44, 1.0, 1.0],
        [0.35, 0.70, 1.0, 0.75],
        [0.60, 0.85, 1.0, 0.0],
        [1.0, 0.75, 0.55, 0.0],
        [1.0, 0.45, 0.2, 0.75],
        [0.9, 0.05, 0.05, 1.0],
    ],
    "controls": [0.0, 0.25, 0.5, 0.5, 0.75, 1.0],
    "interpolation": "linear",
}

#: Sequential, transparent at zero: clear -> dark red -> orange -> yellow.
SEQUENTIAL: dict[str, Any] = {
    "name": "attribution sequential",
    "colors": [
        [0.35, 0.0, 0.0, 0.0],
        [0.7, 0.05, 0.0, 0.6],
        [1.0, 0.45, 0.0, 0.9],
        [1.0, 1.0, 0.3, 1.0],
    ],
    "controls": [0.0, 0.3, 0.65, 1.0],
    "interpolation": "linear",
}


# ------------------------------------------------------------------------------------------------ display


#: mantissas the colour bar's limits are rounded up to (times a power of ten). napari's colour bar (vispy's axis)
#: labels only ticks inside the limits and picks its tick step by itself: at limits of +-4.62 or +-8 it chooses a
#: step of 5 or 10, so the only label is "0". At these mantissas it labels the ends or a round tick near them
#: (checked in a real viewer for each); rounding up enlarges the limits by at most 1.43x (7 -> 10).
NICE_MANTISSAS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 10.0)


def nice_limit(value: float) -> float:
    """The smallest ``mantissa x 10^k`` (:data:`NICE_MANTISSAS`) at least ``value`` (> 0); ``value`` otherwise.

    >>> nice_limit(4.62), nice_limit(0.00556), nice_limit(8.0), nice_limit(0.157)
    (5.0, 0.006, 10.0, 0.2)
    """
    if not np.isfinite(value) or value <= 0:
        return float(value)
    exp = math.floor(math.log10(value))
    for mant in NICE_MANTISSAS:
        nice = float(f"{mant * 10.0 ** exp:.12g}")  # no 0.30000000000000004 in the colour bar
        if nice >= value * (1 - 1e-12):
            return nice
    return float(f"{10.0 ** (exp + 1):.12g}")


def contrast_limits(data: Any, signed: bool, percentile: float = 99.5, *, nice: bool = False) -> tuple[float, float]:
    """Display limits from a percentile of the finite values (NaN ignored).

    Parameters
    ----------
    data : array
        The raw map, any shape.
    signed : bool
        Symmetric limits ``(-m, m)`` with ``m`` the ``percentile`` of ``|data|``; otherwise
        ``(0, percentile of data)`` (or ``(low percentile, high percentile)`` when the map has negative values).
    percentile : float
        In (0, 100]; 100 means the maximum.
    nice : bool
        Round the limits outward to :func:`nice_limit` values, so that napari's colour bar labels them.

    Returns
    -------
    (float, float)
        ``low < high`` always (an all-zero map gets ``(-1, 1)`` or ``(0, 1)``).

    Examples
    --------
    >>> contrast_limits(np.array([-4.0, 1.0, np.nan]), signed=True, percentile=100)
    (-4.0, 4.0)
    >>> contrast_limits(np.zeros(3), signed=False)
    (0.0, 1.0)
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must lie in (0, 100], got {percentile}.")
    arr = np.asarray(data, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return (-1.0, 1.0) if signed else (0.0, 1.0)
    if signed:
        m = float(np.percentile(np.abs(finite), percentile))
        if m <= 0:
            m = float(np.abs(finite).max()) or 1.0
        m = nice_limit(m) if nice else m
        return (-m, m)
    low = 0.0 if finite.min() >= 0 else float(np.percentile(finite, 100 - percentile))
    high = float(np.percentile(finite, percentile))
    if high <= low:
        high = float(finite.max()) if finite.max() > low else low + 1.0
    if nice:
        low = -nice_limit(-low) if low < 0 else low
        high = nice_limit(high) if high > 0 else high
    return (low, high)


# ------------------------------------------------------------------------------------------------ what is shown

#: HU threshold of the CT body mask: fat is about -100 HU, lung about -850 HU, air -1000 HU.
CT_BODY_HU = -500.0

#: napari's own defaults for an image layer's interpolation (used when there is no source layer to follow).
NAPARI_INTERPOLATION = {"interpolation2d": "nearest", "interpolation3d": "linear"}


def masks_by_default(method: str) -> bool:
    """Whether a heatmap of ``method`` is hidden outside the body unless the user says otherwise: the perturbation
    methods (occlusion, RISE, prediction difference, evidence), whose scores outside the patient come from filling
    air with air.

    >>> masks_by_default("occlusion"), masks_by_default("integrated_gradients")
    (True, False)
    """
    from .methods._registry import get_method

    try:
        return get_method(method).family == "perturbation"
    except Exception:  # an unknown or unloadable method name: show the map as it is
        return False


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D array (the split that maximises the between-class variance of the histogram)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _looks_like_ct(finite: np.ndarray) -> bool:
    """Values in HU: air near -1000 present (1 % of the voxels below -800) and soft tissue near 0."""
    return bool(finite.min() < -800 and (finite < -800).mean() > 0.01 and finite.max() > -200)


#: above this many voxels :func:`body_mask` works on every second voxel in-plane and brings the mask back to the
#: scan's grid (a 200 x 512 x 512 CT on one core: 0.8 s instead of 2.9 s at full resolution)
BODY_MASK_FULL_VOXELS = 16_000_000


def body_mask(scan: Any, *, modality: str | None = None) -> tuple[np.ndarray, str]:
    """The patient in ``scan`` ``(*S)``: a boolean mask and how it was found, in words.

    CT (``modality`` "CT", or values in HU when the modality is unknown): voxels above -500 HU; any other scan:
    voxels above Otsu's threshold. Then the largest connected component, its holes filled (slice by slice along the
    first axis of a volume, so lungs and bowel gas open at the volume's ends count as inside) and one voxel of
    margin. A scan of more than :data:`BODY_MASK_FULL_VOXELS` voxels is masked on every second voxel in-plane (the
    margin is then two voxels). An empty result (a blank scan) gives everything.

    Examples
    --------
    >>> ct = np.full((5, 5), -1000.0); ct[1:4, 1:4] = 40.0; ct[2, 2] = -900.0  # a body with air inside
    >>> mask, how = body_mask(ct, modality="CT")
    >>> int(mask.sum()), how
    (21, 'the body: CT above -500 HU, largest connected part, holes filled, 1 voxel margin')
    """
    from scipy import ndimage

    arr = np.asarray(scan)
    full = arr.shape
    step = 2 if arr.size > BODY_MASK_FULL_VOXELS and arr.ndim >= 2 else 1
    if step > 1:
        arr = arr[(Ellipsis, slice(None, None, step), slice(None, None, step))]
    arr = np.asarray(arr, dtype=np.float32)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0 or finite.min() == finite.max():
        return np.ones(full, bool), "everything (the scan is blank)"
    ct = modality.upper().startswith("CT") if modality else _looks_like_ct(finite)
    if ct:
        fg = arr > CT_BODY_HU
        how = f"the body: CT above {CT_BODY_HU:.0f} HU"
    else:
        sample = finite if finite.size <= 2_000_000 else finite[:: finite.size // 2_000_000 + 1]
        t = _otsu(sample)
        fg = arr > t
        how = f"the foreground: above Otsu's threshold {t:.4g}"
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.ones(full, bool), "everything (no foreground found)"
    if n > 1:
        sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
        fg = labels == int(np.argmax(sizes)) + 1
    fg = _fill_holes(fg, in_plane=fg.ndim == 3)
    fg = ndimage.binary_dilation(fg, iterations=1)
    if step > 1:
        for axis in (-2, -1):
            fg = np.repeat(fg, step, axis=axis)
        fg = fg[tuple(slice(0, s) for s in full)]
        return np.asarray(fg, bool), (f"{how} (every {step}nd voxel in-plane), largest connected part, holes "
                                      f"filled, {step} voxel margin")
    return np.asarray(fg, bool), f"{how}, largest connected part, holes filled, 1 voxel margin"


def _fill_holes(fg: np.ndarray, *, in_plane: bool) -> np.ndarray:
    """``fg`` with every background part that does not touch the array's border added (as
    ``ndimage.binary_fill_holes``, by one labelling instead of iterated dilations). ``in_plane``: the parts of each
    slice along the first axis that do not touch the slice's border."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(fg.ndim, 1)
    if in_plane:
        structure[0] = structure[-1] = False
    labels, n = ndimage.label(~fg, structure=structure)
    if n == 0:
        return fg
    border = np.zeros(n + 1, bool)
    for axis in range(1 if in_plane else 0, fg.ndim):
        for end in (0, -1):
            border[np.take(labels, end, axis=axis).ravel()] = True
    border[0] = True  # label 0 is the foreground itself
    return np.asarray(fg | ~border[labels], bool)


def prediction_region(label_map: Any, *, margin: int = 3, min_voxels: int = 27) -> np.ndarray | None:
    """The predicted foreground (label > 0) grown by ``margin`` voxels — a segmenter's evidence lies on and just
    outside its boundary; None when less than ``min_voxels`` are predicted (too few for display limits).

    >>> lab = np.zeros((9, 9), int); lab[3:6, 3:6] = 1
    >>> int(prediction_region(lab, margin=1, min_voxels=4).sum())
    21
    """
    from scipy import ndimage

    fg = np.asarray(label_map) > 0
    if int(fg.sum()) < min_voxels:
        return None
    return np.asarray(ndimage.binary_dilation(fg, iterations=margin) if margin > 0 else fg, bool)


def region_limits(data: np.ndarray, signed: bool, percentile: float, region: np.ndarray | None) -> tuple[float, float]:
    """:func:`contrast_limits` (rounded) of the values inside ``region`` (broadcast over leading axes), or of the
    whole map when the region is None or holds no finite value."""
    if region is not None:
        inside = data[..., region] if region.shape == data.shape[data.ndim - region.ndim:] else None
        if inside is not None and np.isfinite(inside).any():
            return contrast_limits(inside, signed, percentile, nice=True)
    return contrast_limits(data, signed, percentile, nice=True)


def full_map(data: Any, metadata: Mapping[str, Any] | None) -> Any:
    """The unmasked map of a heatmap layer: ``metadata[FULL_MAP_KEY]`` when the layer hides part of it (an array of
    the data's shape), else ``data`` itself.

    >>> from napari_attribution.targets import Class
    >>> att = Attribution(np.array([[9.0, 1.0]], np.float32), "occlusion", Class(1), None, {}, True, 0.1)
    >>> data, kw, _ = display_heatmap(attribution_layer(att), mask=np.array([[False, True]]))
    >>> data.tolist(), full_map(data, kw["metadata"]).tolist(), full_map(data, kw["metadata"]) is att.data
    ([[nan, 1.0]], [[9.0, 1.0]], True)
    """
    full = metadata.get(FULL_MAP_KEY) if isinstance(metadata, Mapping) else None
    if full is not None and np.shape(full) == np.shape(data):
        return full
    return data


def display_heatmap(
    ldt: LayerDataTuple,
    *,
    mask: np.ndarray | None = None,
    mask_note: str = "",
    limits_region: np.ndarray | None = None,
    limits_note: str = "the whole map",
    interpolation: Mapping[str, str] | None = None,
) -> LayerDataTuple:
    """A heatmap tuple (from :func:`attribution_layer` or :func:`layer_sweep_layer`) as it should be shown.

    Parameters
    ----------
    ldt : (data, kwargs, "image")
        Not modified; the returned tuple holds new objects.
    mask : bool array of the map's spatial shape, optional
        Voxels outside are NaN in the returned layer data (napari draws NaN transparent); ``metadata[OWNER_KEY]
        ["display_mask"]`` records it. ``Attribution.data`` is a different array and stays as it was;
        ``metadata[FULL_MAP_KEY]`` refers to it (:func:`full_map`). A tuple that already hides part of its map is
        shown again from its full map, so the tuple of a layer can be re-shown with another mask or none.
    mask_note : str
        What the mask is (e.g. :func:`body_mask`'s description).
    limits_region : bool array of the map's spatial shape, optional
        The contrast limits (and a sweep's per-layer limits) come from the values inside it.
    limits_note : str
        What the region is, recorded as ``contrast_region``.
    interpolation : mapping, optional
        The scan layer's ``interpolation2d`` / ``interpolation3d``, copied onto the heatmap.

    Examples
    --------
    >>> from napari_attribution.targets import Class
    >>> m = np.array([[9.0, 1.0], [-2.0, 0.5]], np.float32)
    >>> att = Attribution(m, "occlusion", Class(1), None, {}, True, 0.1)
    >>> body = np.array([[False, True], [True, True]])
    >>> data, kw, _ = display_heatmap(attribution_layer(att), mask=body, mask_note="body", limits_region=body)
    >>> data.tolist(), kw["contrast_limits"], float(att.data[0, 0])
    ([[nan, 1.0], [-2.0, 0.5]], [-2.0, 2.0], 9.0)
    """
    data, kwargs, kind = ldt
    kwargs = dict(kwargs)
    md = dict(kwargs.get("metadata") or {})
    info = dict(md.get(OWNER_KEY) or {})
    data = full_map(data, md)
    md.pop(FULL_MAP_KEY, None)
    arr = np.asarray(data)
    spatial = arr.shape[1:] if info.get("sweep") else arr.shape
    if mask is not None and np.shape(mask) == spatial:
        shown = np.array(arr, dtype=np.float32 if arr.dtype.itemsize <= 4 else np.float64)
        shown[..., ~np.asarray(mask, bool)] = np.nan
        md[FULL_MAP_KEY] = data  # the map as it was made (a reference, not a copy)
        data = shown
        info["display_mask"] = {
            "region": mask_note or "a mask",
            "voxels_inside": int(np.count_nonzero(mask)),
            "outside": "NaN in this layer (drawn clear); the map itself (Attribution.data) is unchanged",
        }
        info["explained_fraction"] = float(np.isfinite(shown).mean()) if shown.size else 0.0
    elif info.pop("display_mask", None) is not None:  # shown again in full
        info["explained_fraction"] = float(np.isfinite(arr).mean()) if arr.size else 0.0
    region = limits_region if limits_region is not None and np.shape(limits_region) == spatial else None
    signed = bool(info.get("signed"))
    pct = float(info.get("contrast_percentile", 99.5))
    shown_arr = np.asarray(data)
    if info.get("sweep"):
        limits = [list(region_limits(shown_arr[i], signed, pct, region)) for i in range(shown_arr.shape[0])]
        info["layer_contrast_limits"] = limits
        kwargs["contrast_limits"] = limits[0]
    else:
        kwargs["contrast_limits"] = list(region_limits(shown_arr, signed, pct, region))
    info["contrast_region"] = limits_note if region is not None else "the whole map"
    for key in NAPARI_INTERPOLATION:
        if interpolation is not None and interpolation.get(key):
            kwargs[key] = str(interpolation[key])
    md[OWNER_KEY] = info
    kwargs["metadata"] = md
    return data, kwargs, kind


def geometry_kwargs(source: Mapping[str, Any] | None = None, geometry: Any = None, *,
                    ndim: int | None = None) -> dict[str, Any]:
    """The placement of a new layer: the source layer's geometry keys, else ``geometry.to_napari()``.

    Parameters
    ----------
    source : mapping, optional
        The source layer's attributes (``{"scale": ..., "translate": ..., "rotate": ..., "affine": ...}``, any
        subset; arrays or lists).
    geometry : Geometry, optional
        Used when ``source`` is None (e.g. a map computed from a file outside napari).
    ndim : int, optional
        When given, only geometry of that dimensionality is kept (a 2D map cannot take a 3D scale).

    Returns
    -------
    dict
        Plain lists (JSON-safe), ready to pass as layer keyword arguments.
    """
    out: dict[str, Any] = {}
    if source is not None:
        for key in GEOMETRY_KEYS:
            value = source.get(key)
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float64)
            out[key] = arr.tolist()
    elif geometry is not None:
        out = {k: (np.asarray(v, dtype=np.float64).tolist()) for k, v in geometry.to_napari().items()}
    if ndim is not None:
        out = {k: v for k, v in ((k, _trim(k, v, ndim)) for k, v in out.items()) if v is not None}
    return out


def _trim(key: str, value: Any, n: int) -> Any:
    """The part of a layer transform that acts on the last ``n`` axes (a leading channel or time axis of the
    source is dropped); None when the transform has fewer axes or couples the dropped axes with the kept ones."""
    arr = np.asarray(value, dtype=np.float64)
    if key in ("scale", "translate"):
        return arr[-n:].tolist() if arr.shape[0] >= n else None
    if key == "rotate":
        if arr.shape[0] < n:
            return None
        k = arr.shape[0] - n
        if k and not (np.allclose(arr[:k, k:], 0) and np.allclose(arr[k:, :k], 0)):
            return None
        return arr[k:, k:].tolist()
    if key == "affine":
        m = arr.shape[0] - 1
        if m < n:
            return None
        k = m - n
        lin = arr[:m, :m]
        if k and not (np.allclose(lin[:k, k:], 0) and np.allclose(lin[k:, :k], 0)):
            return None
        out = np.eye(n + 1)
        out[:n, :n] = lin[k:, k:]
        out[:n, n] = arr[k:m, m]
        return out.tolist()
    if key == "shear":  # kept only when non-zero and of the map's dimensionality
        return arr.tolist() if not np.allclose(arr, 0) and _shear_ndim(arr) == n else None
    return value


def prepend_axes(geometry: Mapping[str, Any], k: int = 1) -> dict[str, Any]:
    """The placement of a layer whose data gets ``k`` new leading axes (e.g. one map per network layer): the
    new axes have scale 1 and translate 0 and are not rotated, sheared or coupled to the others; the spatial axes
    keep their geometry.

    Examples
    --------
    >>> geo = prepend_axes({"scale": [2.0, 0.5], "translate": [1.0, 3.0], "rotate": [[0.0, -1.0], [1.0, 0.0]]})
    >>> geo["scale"], geo["translate"]
    ([1.0, 2.0, 0.5], [0.0, 1.0, 3.0])
    >>> geo["rotate"]
    [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    """
    out: dict[str, Any] = {}
    for key, value in geometry.items():
        arr = np.asarray(value, dtype=np.float64)
        if key == "scale":
            out[key] = [1.0] * k + arr.tolist()
        elif key == "translate":
            out[key] = [0.0] * k + arr.tolist()
        elif key in ("rotate", "affine") or (key == "shear" and arr.ndim == 2):
            n = arr.shape[0]
            full = np.eye(n + k)
            full[k:, k:] = arr
            out[key] = full.tolist()
        elif key == "shear":  # the upper triangle, row by row: the new rows come first, all zero
            n = _shear_ndim(arr)
            out[key] = [0.0] * ((n + k) * (n + k - 1) // 2 - arr.shape[0]) + arr.tolist()
        else:
            out[key] = value
    return out


def _shear_ndim(arr: np.ndarray) -> int:
    if arr.ndim == 2:
        return int(arr.shape[0])
    return int(round((1 + math.sqrt(1 + 8 * arr.shape[0])) / 2))


def _class_name(k: int, class_names: Sequence[str] | None) -> str:
    if class_names and 0 <= k < len(class_names):
        return str(class_names[k])
    return f"class {k}"


def target_label(target: Any, class_names: Sequence[str] | None = None) -> str:
    """A short name of a resolved target for layer names (``"lesion"``, ``"predicted tumour"``, ``"a vs b"``).

    Examples
    --------
    >>> from napari_attribution.targets import Contrast, Predicted
    >>> target_label(Predicted(1), ["background", "vessel"])
    'predicted vessel'
    >>> target_label(Contrast(1, 0), ["no lesion", "lesion"])
    'lesion vs no lesion'
    """
    kind = type(target).__name__
    if target is None:
        return "predicted"
    if isinstance(target, (int, np.integer)):
        return _class_name(int(target), class_names)
    k = getattr(target, "k", None)
    name = _class_name(int(k), class_names) if k is not None else ""
    if kind == "Class":
        return name
    if kind == "Predicted":
        return f"predicted {name}"
    if kind == "Region":
        mask = np.asarray(target.mask)
        return f"{name} in region ({int(mask.astype(bool).sum())} vox)"
    if kind == "Voxel":
        return f"{name} at ({','.join(str(int(i)) for i in target.index)})"
    if kind == "Contrast":
        return f"{_class_name(int(target.k1), class_names)} vs {_class_name(int(target.k2), class_names)}"
    if kind == "ErrorRegion":
        return f"{name} {str(target.kind).upper()}"
    return str(target)


def heatmap_name(method: str, target: str, source: str) -> str:
    """``"<method> · <target> · <source>"`` — the name a re-run with the same settings replaces."""
    return f"{method} · {target} · {source}"


def _random_mark(provenance: Mapping[str, Any] | None) -> str:
    """``" · random weights"`` when the provenance says the network was untrained on purpose, else ``""``."""
    return " · random weights" if provenance is not None and provenance.get("random_weights") else ""


# ------------------------------------------------------------------------------------------------ provenance


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on (read from the installed metadata, nothing imported)."""
    out = {"python": platform.python_version()}
    for dist in ("napari-attribution", "torch", "numpy", "captum", "monai", "napari"):
        try:
            out[dist] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            continue
    return out


def json_safe(obj: Any, *, max_list: int = 64) -> Any:
    """A JSON-serialisable copy: numpy scalars -> numbers, small arrays -> lists, large arrays -> a summary,
    dataclasses (targets) -> dicts with their type, anything else -> ``str``. Keys that mention a patient are
    dropped."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, np.ndarray):
        if obj.size <= max_list:
            return json_safe(obj.tolist())
        return {"array": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items() if "patient" not in str(k).lower()}
    if isinstance(obj, (list, tuple, set)):
        items = list(obj)
        if len(items) > max_list * 16:
            return {"list": len(items)}
        return [json_safe(v) for v in items]
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields is not None:
        out = {"type": type(obj).__name__}
        out.update({f: json_safe(getattr(obj, f)) for f in fields})
        return out
    return str(obj)


#: the result's extras that say what a run actually used where a parameter was left to its default
USED_KEYS = ("window", "stride", "windows", "masks", "cells", "steps", "window_note", "preprocessing",
             "model_grid_shape", "output_channels")


def used_settings(extras: Mapping[str, Any]) -> dict[str, Any]:
    """What the run actually used (window, stride, steps, the input path's steps...), JSON-safe, for sidecars: the
    parameters record what was asked (``None`` = the default), this records what the default became."""
    out = {k: json_safe(extras[k]) for k in USED_KEYS if k in extras}
    completeness = extras.get("completeness")
    if isinstance(completeness, Mapping) and "steps" in completeness:
        out.setdefault("steps", json_safe(completeness["steps"]))
    return out


def provenance(
    *,
    method: str,
    params: Mapping[str, Any],
    target: Any,
    seconds: float,
    model: str | None = None,
    model_sha256: str | None = None,
    layer: str | None = None,
    device: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything needed to reproduce one map, JSON-safe (the writer saves it as a sidecar).

    ``model`` is the model's source (a file path or ``demo:<name>``), ``model_sha256`` its weights' hash.
    """
    out = {
        "method": method,
        "params": json_safe(dict(params)),
        "seed": json_safe(params.get("seed", 0)),
        "target": json_safe(target),
        "layer": layer,
        "seconds": float(seconds),
        "model": model,
        "model_sha256": model_sha256,
        "device": device,
        "versions": versions(),
    }
    out.update({k: json_safe(v) for k, v in extra.items()})
    return out


# ------------------------------------------------------------------------------------------------ layers


def attribution_layer(
    att: Attribution,
    *,
    source: str = "image",
    source_geometry: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    percentile: float = 99.5,
    name: str | None = None,
    opacity: float | None = None,
    blending: str = "translucent",
    metadata: Mapping[str, Any] | None = None,
    interpolation: Mapping[str, str] | None = None,
    mask: np.ndarray | None = None,
    mask_note: str = "",
    limits_region: np.ndarray | None = None,
    limits_note: str = "",
) -> LayerDataTuple:
    """One :class:`~napari_attribution.Attribution` as an image ``LayerDataTuple``.

    Parameters
    ----------
    att : Attribution
        ``att.data`` ``(*S)`` is passed through unchanged (raw; NaN where nothing was explained).
    source : str
        The source layer's name (used in the layer name).
    source_geometry : mapping, optional
        The source layer's ``scale`` / ``translate`` / ``rotate`` / ``affine``; default ``att.geometry``.
    class_names : sequence of str, optional
        For the target's name.
    provenance : mapping, optional
        From :func:`provenance`; stored under ``metadata["napari_attribution"]["provenance"]``.
    percentile : float
        Contrast limits from this percentile of ``|data|`` (signed) or ``data`` (unsigned).
    name : str, optional
        Default ``"<method> · <target> · <source>"``.
    opacity, blending : optional
        Default opacity 0.75 (signed) / 0.7 (unsigned), translucent blending (zero is transparent).
    metadata : mapping, optional
        Extra metadata (e.g. the source's ``original_affine`` so the writer saves the map aligned).
    interpolation : mapping, optional
        The source layer's ``interpolation2d`` / ``interpolation3d`` (default napari's: nearest in 2D).
    mask, mask_note, limits_region, limits_note : optional
        What the layer hides and where its limits come from (see :func:`display_heatmap`); the layer's data is then
        a masked copy and ``att.data`` stays as it is.

    Returns
    -------
    (data, kwargs, "image")
    """
    if mask is not None or limits_region is not None or interpolation is not None:
        ldt = attribution_layer(att, source=source, source_geometry=source_geometry, class_names=class_names,
                                provenance=provenance, percentile=percentile, name=name, opacity=opacity,
                                blending=blending, metadata=metadata)
        return display_heatmap(ldt, mask=mask, mask_note=mask_note, limits_region=limits_region,
                               limits_note=limits_note or "a region", interpolation=interpolation)
    data = np.asarray(att.data)
    signed = bool(att.signed)
    tname = target_label(att.target, class_names)
    info: dict[str, Any] = {
        "role": "heatmap",
        "method": att.method,
        "target": tname,
        "target_description": att.description,
        "signed": signed,
        "layer": att.layer,
        "params": json_safe(dict(att.params)),
        "seconds": float(att.seconds),
        "source": source,
        "contrast_percentile": percentile,
        "explained_fraction": float(np.isfinite(data).mean()) if data.size else 0.0,
    }
    if att.per_slice is not None:
        info["slices"] = [int(s) for s in att.per_slice.slices]
    completeness = completeness_record(att)
    if completeness is not None:
        info["completeness"] = completeness
    probs = class_probabilities(att, class_names)
    if probs is not None:
        info["probabilities"] = probs
    if provenance is not None:
        info["provenance"] = dict(provenance)
    md = dict(metadata or {})
    md[OWNER_KEY] = info
    kwargs: dict[str, Any] = {
        "name": name or heatmap_name(att.method, tname, source) + _random_mark(provenance),
        "colormap": dict(DIVERGING if signed else SEQUENTIAL),
        "contrast_limits": list(contrast_limits(data, signed, percentile, nice=True)),
        "blending": blending,
        "opacity": opacity if opacity is not None else (0.75 if signed else 0.7),
        **NAPARI_INTERPOLATION,
        "metadata": md,
    }
    kwargs.update(geometry_kwargs(source_geometry, att.geometry, ndim=data.ndim))
    return data, kwargs, "image"


#: Axis names of a layer sweep's heatmap (the first is the network layer).
SWEEP_AXES = ("layer", "z", "y", "x")


def layer_sweep_layer(
    atts: Sequence[Any],
    *,
    source: str = "image",
    source_geometry: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    percentile: float = 99.5,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    table: Sequence[Mapping[str, Any]] | None = None,
) -> LayerDataTuple:
    """One method's maps at several network layers (same target, same scan) as ONE image ``LayerDataTuple`` with a
    leading ``"layer"`` axis: ``data`` ``(n_layers, *S)``, the spatial axes placed like the scan (:func:`prepend_axes`),
    ``axis_labels`` ``("layer", "z", "y", "x")`` so napari's slider moves through the network.

    The maps stay raw. Their magnitudes differ from layer to layer, so ``metadata["napari_attribution"]`` holds
    ``layer_contrast_limits`` (one pair per network layer, as :func:`contrast_limits` computes them) for a viewer to
    apply when the slider moves; the initial limits are the first layer's. Also stored: ``layers`` (names, shallow to
    deep, the order of ``atts``), ``layer_seconds`` and ``table`` (e.g. :func:`~napari_attribution.metrics.tables.
    layer_sweep_table`).

    Examples
    --------
    >>> from napari_attribution import Attribution
    >>> from napari_attribution.targets import Class
    >>> maps = [Attribution(np.full((2, 3), v, np.float32), "grad_cam", Class(1), f"l{v}", {}, False, 0.1)
    ...         for v in (1, 10)]
    >>> data, kwargs, kind = layer_sweep_layer(maps, source="scan", source_geometry={"scale": [2.0, 0.5]})
    >>> data.shape, kwargs["axis_labels"], kwargs["scale"], kwargs["name"]
    ((2, 2, 3), ('layer', 'y', 'x'), [1.0, 2.0, 0.5], 'grad_cam by layer · class 1 · scan')
    >>> kwargs["metadata"]["napari_attribution"]["layer_contrast_limits"]
    [[0.0, 1.0], [0.0, 10.0]]
    """
    if not atts:
        raise ValueError("A layer sweep needs at least one attribution.")
    first = atts[0]
    shape = np.shape(first.data)
    if any(np.shape(a.data) != shape for a in atts):
        raise ValueError("All maps of a layer sweep must have the same shape.")
    data = np.stack([np.asarray(a.data, dtype=np.float32) for a in atts])
    _, kwargs, _ = attribution_layer(first, source=source, source_geometry=source_geometry, class_names=class_names,
                                     provenance=provenance, percentile=percentile, metadata=metadata)
    signed = bool(first.signed)
    limits = [list(contrast_limits(a.data, signed, percentile, nice=True)) for a in atts]
    md = dict(kwargs["metadata"])
    info = dict(md[OWNER_KEY])
    info.update({
        "sweep": True,
        "layer": None,
        "layers": [str(a.layer) for a in atts],
        "layer_seconds": [float(a.seconds) for a in atts],
        "layer_contrast_limits": limits,
        "seconds": float(sum(a.seconds for a in atts)),
        "explained_fraction": float(np.isfinite(data).mean()) if data.size else 0.0,
    })
    if table is not None:
        info["table"] = json_safe([dict(r) for r in table])
    md[OWNER_KEY] = info
    geo = {k: kwargs.pop(k) for k in GEOMETRY_KEYS if k in kwargs}
    kwargs.update(prepend_axes(geo, 1))
    kwargs.update({
        "name": name or f"{first.method} by layer · {info['target']} · {source}" + _random_mark(provenance),
        "contrast_limits": limits[0],
        "metadata": md,
        "axis_labels": SWEEP_AXES[:1] + SWEEP_AXES[len(SWEEP_AXES) - len(shape):],
    })
    return data, kwargs, "image"


def completeness_record(att: Attribution) -> Any:
    """Integrated gradients' completeness of a result, JSON-safe: the whole image's dict, or for a slice-wise run
    ``{slice: dict}`` over the explained slices that have one; None when the method reports none."""
    if att.per_slice is None:
        comp = att.extras.get("completeness")
        return json_safe(comp) if isinstance(comp, Mapping) else None
    per = {str(z): json_safe(e["completeness"]) for z, e in att.per_slice.extras.items()
           if isinstance(e.get("completeness"), Mapping)}
    return per or None


def class_probabilities(att: Attribution, class_names: Sequence[str] | None = None) -> Any:
    """Classification probabilities of a result as ``{name: p}``; for a slice-wise run ``{slice: {name: p}}`` over
    its explained slices (``att.prediction[z]``); None for segmentation (a label map) and without a prediction.

    Examples
    --------
    >>> from napari_attribution.targets import Class
    >>> att = Attribution(np.zeros((4, 4), np.float32), "saliency", Class(1), None, {}, False, 0.1,
    ...                   prediction=np.array([0.25, 0.75], np.float32))
    >>> class_probabilities(att, ["healthy", "lesion"])
    {'healthy': 0.25, 'lesion': 0.75}
    """
    pred = att.prediction
    if pred is None or att.label_map is not None or not np.issubdtype(pred.dtype, np.floating):
        return None

    def named(p: np.ndarray) -> dict[str, float]:
        return {_class_name(i, class_names): float(v) for i, v in enumerate(p)}

    if att.per_slice is None:
        return named(pred)
    return {str(z): named(pred[z]) for z in att.per_slice.slices}


def prediction_layer(
    att: Attribution,
    *,
    source: str = "image",
    model: str = "model",
    source_geometry: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> LayerDataTuple | None:
    """The segmentation the model predicted, as a labels ``LayerDataTuple`` (None for classification, or when
    the prediction's grid differs from the image's). Slices that a slice-wise run did not run are 0.

    Label values are those of the prediction: the argmax class with several output channels; with one output
    channel (a sigmoid or a single logit) its foreground is label 1 and stands for class 0 (napari shows label 0 as
    clear). ``metadata["label_names"]`` names each label value by its class (``{1: "brain"}`` for a one-channel
    model named ``["brain"]``), so the landmark tables name them too."""
    pred = att.label_map
    if pred is None or pred.ndim < 2:
        return None
    labels = pred.astype(np.int32)
    md = dict(metadata or {})
    md[OWNER_KEY] = {
        "role": "prediction",
        "model": model,
        "source": source,
        "class_names": list(class_names) if class_names else None,
        "voxels_per_label": {str(int(k)): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)},
    }
    present = [int(v) for v in np.unique(labels) if v > 0]
    if class_names:
        from .targets import class_of_label

        channels = len(class_names)  # a card names every output class
        md["label_names"] = {v: str(class_names[class_of_label(v, channels)]) for v in present
                             if class_of_label(v, channels) < channels}
    kwargs: dict[str, Any] = {
        "name": name or f"prediction · {model} · {source}",
        "opacity": 0.8,
        # colours that stand out on both colormaps of the heatmaps (which use red, blue and yellow)
        "colormap": {None: "transparent", 0: "transparent",
                     **{k: LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)] for k in present}},
        "metadata": md,
    }
    kwargs.update(geometry_kwargs(source_geometry, att.geometry, ndim=labels.ndim))
    return labels, kwargs, "labels"
