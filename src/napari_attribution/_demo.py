"""The headless demo: a head CT angiogram of clinical size whose vessels are known by construction, the bundled
CTA vessel segmenter run window by window over it, and heatmaps written aligned with the scan.

The scan (:func:`~napari_attribution.models.demo.head_cta_phantom`, 100 x 256 x 256 voxels at 0.5 x 0.7 x 0.7 mm)
is a head in air: scalp, skull, grey and white matter, ventricles, and branching contrast-filled vessels (330-400
HU). The segmenter ``demo:vessel-cta`` (:func:`~napari_attribution.models.demo.vessel_cta_model`) is the vessel
UNet fine-tuned on other head CTA phantoms, skull included; its card windows the CT, resamples it to 0.6 mm and
runs the network on 48^3 windows (the sliding-window inferer). The demo explains the vessel class summed over the
voxels the model labels vessel (``Predicted(1)``) and reports how many of each map's top voxels lie in the vessels,
against the vessels' share of the scan (chance). The lesion phantom and classifier (:func:`phantom`,
:func:`load_demo_classifier`) stay for the docs' small examples.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .models.demo import DEMO_MODELS, get_demo, head_cta_phantom, lesion_phantom, vessel_cta_model
from .models.demo.phantoms import HEAD_CTA_SPACING, LESION_SHAPE, LESION_SPACING

__all__ = ["WEIGHTS", "demo_figure", "load_demo_classifier", "load_demo_model", "phantom", "run_headless_demo"]

SHAPE = LESION_SHAPE
SPACING = LESION_SPACING  # mm, (z, y, x): the lesion phantom's voxel size
WEIGHTS = DEMO_MODELS["lesion3d"].weights
#: the demo scan's seed (the figure in the README is this scan)
SEED = 7


def phantom(rng: np.random.Generator, lesion: bool, shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """One small synthetic CT volume of the lesion demo in HU ``(D, H, W)`` and its lesion mask (all False without
    a lesion)."""
    case = lesion_phantom(rng, lesion, shape)
    return case.image, case.mask


def load_demo_classifier() -> tuple[nn.Module, float]:
    """The bundled ``demo:lesion3d`` classifier (eval mode) and its held-out accuracy."""
    loaded = get_demo("lesion3d")
    blob = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    metrics = blob.get("metrics", {}) if isinstance(blob, dict) else {}
    acc = float(metrics.get("accuracy", metrics.get("test_accuracy", float("nan"))))
    return loaded.module, acc


def load_demo_model() -> Any:
    """The demo's model: ``demo:vessel-cta`` with its sliding-window CTA card (a ``LoadedModel``)."""
    return vessel_cta_model()


def threshold_segmenter() -> nn.Module:
    """A tiny 3D lesion segmenter with a known answer, for the docs' screenshots and the tests: class 1 where the
    local 3x3x3 mean exceeds about 120 HU (the phantom's lesion), class 0 elsewhere. Conv -> ReLU -> 1x1 conv, so
    gradient and CAM methods apply; hand-set weights, no training."""
    mean, head = nn.Conv3d(1, 2, 3, padding=1), nn.Conv3d(2, 2, 1)
    weight = torch.zeros(2, 2, 1, 1, 1)
    weight[1] = 1.0
    mean.load_state_dict({"weight": torch.full((2, 1, 3, 3, 3), 1.0 / 27 / 100), "bias": torch.full((2,), -1.2)})
    head.load_state_dict({"weight": weight, "bias": torch.tensor([0.0, -0.01])})
    return nn.Sequential(mean, nn.ReLU(), head).eval()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def run_headless_demo(out_dir: str | Path, *, methods: tuple[str, ...] = ("grad_cam", "saliency"),
                      overwrite: bool = False, log: Any = print) -> dict[str, float]:
    """Generate the head CT angiogram, segment and explain it with the sliding-window vessel segmenter, write the
    scan, the vessels' truth, the prediction and the heatmaps as NIfTI (aligned, same affine) plus a PNG of the
    slice with the most vessel; return, per method, the fraction of the vessel-sized set of highest-attributed
    voxels that lies in the vessels (and ``"dice"``: the prediction's Dice against the truth inside the skull,
    ``"dice_whole_scan"``: over the whole scan, ``"skull_labelled_vessel"``: the share of skull voxels predicted
    vessel).

    Without ``overwrite`` an existing output is refused before any work (``FileExistsError``); all files are
    written through :mod:`._atomic` and land together or not at all (a full disk leaves none)."""
    import napari_attribution as na
    from napari_attribution.io import Geometry
    from napari_attribution.io._nifti import nifti_writer
    from napari_attribution.targets import Predicted

    from ._atomic import AtomicFiles

    out = Path(out_dir)
    planned = [out / "phantom.nii.gz", out / "vessel_mask.nii.gz", out / "prediction.nii.gz",
               *(out / f"heatmap_{m}.nii.gz" for m in methods), out / "demo.png"]
    existing = [p.name for p in planned if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s) in '{out}'.")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    model = load_demo_model()
    case = head_cta_phantom(SEED)
    vol, mask = case.image, case.mask
    assert case.structures is not None
    brain = case.structures >= 3  # intracranial: grey and white matter, ventricles, vessels
    spacing = tuple(float(s) for s in HEAD_CTA_SPACING)
    log(f"head CT angiogram {'x'.join(map(str, vol.shape))} voxels at {' x '.join(f'{s:g}' for s in spacing)} mm "
        f"generated in {time.perf_counter() - t0:.1f} s; {model.card.name}: 48^3 windows at 0.6 mm")
    geometry = Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0))
    target = Predicted(1)  # the vessel class summed over the voxels the model labels vessel
    t1 = time.perf_counter()
    results = na.compare(model, vol, list(methods), target=target, geometry=geometry)
    first = next(iter(results.values()))
    pred = np.asarray(first.prediction) == 1
    skull = case.structures == 2
    scores: dict[str, float] = {"dice": dice(pred & brain, mask), "dice_whole_scan": dice(pred, mask),
                                "skull_labelled_vessel": float(pred[skull].mean())}
    log(f"vessel prediction: Dice {scores['dice']:.2f} against the generator's vessels inside the skull, "
        f"{scores['dice_whole_scan']:.2f} over the whole scan (higher is better, 1 = the truth); "
        f"{int((pred & ~brain).sum())} voxels outside the brain labelled vessel "
        f"({scores['skull_labelled_vessel']:.2%} of the skull's)")
    n_vessel = int(mask.sum())
    for name, res in results.items():
        path = out / f"heatmap_{name}.nii.gz"
        pos = np.clip(res.data, 0, None)
        top = np.argsort(res.data, axis=None)[-n_vessel:]  # the vessel-sized set of highest-ranked voxels
        precision = float(mask.ravel()[top].mean())
        peak = bool(mask.ravel()[int(np.argmax(res.data))])
        scores[name] = precision
        log(f"{name:22s} {res.seconds:6.1f} s   top-{n_vessel} voxels in the vessels: {precision:4.0%}   "
            f"peak inside: {'yes' if peak else 'no ':3s}   positive mass inside: "
            f"{pos[mask].sum() / max(pos.sum(), 1e-12):4.0%}   -> {path.name}")
    log(f"(the vessels are {mask.mean():.2%} of the scan: a map that ignores them scores about that; "
        f"explained in {time.perf_counter() - t1:.0f} s)")
    png = _figure(vol, mask, results, scores, spacing=spacing, what="vessels",
                  title=f"head CTA, {'x'.join(map(str, vol.shape))} voxels")
    with AtomicFiles(overwrite=overwrite) as files:
        files.add(out / "phantom.nii.gz", nifti_writer(out / "phantom.nii.gz", vol, geometry))
        files.add(out / "vessel_mask.nii.gz", nifti_writer(out / "vessel_mask.nii.gz", mask.astype(np.uint8),
                                                           geometry))
        files.add(out / "prediction.nii.gz", nifti_writer(out / "prediction.nii.gz", pred.astype(np.uint8),
                                                          geometry))
        for name, res in results.items():
            path = out / f"heatmap_{name}.nii.gz"
            files.add(path, nifti_writer(path, res.data, geometry))
        if png is not None:
            files.add_bytes(out / "demo.png", png)
    if png is not None:
        log(f"wrote {out / 'demo.png'}")
    return scores


#: the scan's window in the figure (HU): soft tissue dark grey, air black, contrast-filled vessels and bone bright
WINDOW = (-100.0, 500.0)


def _overlay_cmap(signed: bool) -> Any:
    """The napari layer's colormap (:data:`~napari_attribution.layers.DIVERGING` / ``SEQUENTIAL``) for
    matplotlib: the same colours, clear at zero."""
    from matplotlib.colors import LinearSegmentedColormap

    from .layers import DIVERGING, SEQUENTIAL

    spec = DIVERGING if signed else SEQUENTIAL
    stops = list(zip(spec["controls"], (tuple(c) for c in spec["colors"]), strict=True))
    return LinearSegmentedColormap.from_list(str(spec["name"]), stops, N=511)  # odd: an entry at 0


def demo_figure(vol: np.ndarray, mask: np.ndarray, results: dict[str, Any], scores: dict[str, float], *,
                spacing: tuple[float, ...] = SPACING, what: str = "lesion", title: str = "phantom CT") -> Any:
    """The slice with the most of ``mask`` (``what``: the lesion, the vessels): the scan in its own window, then
    each map over it (clear at zero, in the napari layer's colours), as a matplotlib ``Figure``.

    Maps of one kind (signed / unsigned) sit side by side and share one scale and one colour bar: each map is
    divided by its mean |map| inside the body (so maps in different units compare), and the kind's limit is the
    99.5th percentile of those values inside the body. Each caption gives the map's score and its chance level (the
    mask's share of the volume: what a map that ignores it scores). Perturbation methods' maps are clear
    outside the body, as in the viewer. ``fig.napari_attribution`` holds the
    same facts for tests and the PNG's metadata."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from .layers import body_mask, masks_by_default

    body, _ = body_mask(vol, modality="CT")
    z = int(np.argmax(mask.sum((1, 2))))
    chance = float(mask.mean())
    scaled = {}
    for name, res in results.items():
        data = np.asarray(res.data, np.float64)
        unit = float(np.nanmean(np.abs(data[body]))) or 1.0
        scaled[name] = data / unit
        if masks_by_default(str(res.method)):  # as in the viewer: a perturbation map is clear outside the body
            scaled[name][~body] = np.nan
    kinds: dict[str, list[str]] = {}  # the panels grouped by kind (first kind first), each group by its colour bar
    for name, res in results.items():
        kinds.setdefault("signed" if res.signed else "unsigned", []).append(name)
    order = [n for names in kinds.values() for n in names]
    limits = {k: float(np.nanpercentile(np.abs(np.concatenate([scaled[n][body] for n in v])), 99.5)) or 1.0
              for k, v in kinds.items()}
    n = len(results) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.9 * n + 1.4, 3.9), layout="constrained")
    aspect = spacing[1] / spacing[2]
    share = f"{chance:.1%}" if chance >= 0.01 else f"{chance:.2%}"
    line = 0.8 if what == "lesion" else 0.5
    grey = {"cmap": "gray", "vmin": WINDOW[0], "vmax": WINDOW[1], "aspect": aspect, "interpolation": "nearest"}
    axes[0].imshow(vol[z], **grey)
    axes[0].contour(mask[z], levels=[0.5], colors="lime", linewidths=line)
    axes[0].set_title(f"{title}, slice {z}\nwindow {WINDOW[0]:.0f} to {WINDOW[1]:.0f} HU ({what} outlined)",
                      fontsize=9)
    captions = []
    kind_axes: dict[str, list[Any]] = {k: [] for k in kinds}
    for ax, name in zip(axes[1:], order, strict=True):
        res = results[name]
        kind = "signed" if res.signed else "unsigned"
        lim = limits[kind]
        ax.imshow(vol[z], **grey)
        ax.imshow(scaled[name][z], cmap=_overlay_cmap(bool(res.signed)), vmin=-lim if res.signed else 0.0,
                  vmax=lim, aspect=aspect, interpolation="nearest")
        if what == "lesion":  # one outline; many small vessels' outlines would hide the map under them
            ax.contour(mask[z], levels=[0.5], colors="lime", linewidths=line)
        clear = ", clear outside the body" if masks_by_default(str(res.method)) else ""
        caption = f"{name} ({kind}{clear})\ntop voxels in {what}: {scores[name]:.0%} (chance {share})"
        ax.set_title(caption, fontsize=9)
        captions.append(caption)
        kind_axes[kind].append(ax)
    bars = []
    for kind, axs in kind_axes.items():
        lim = limits[kind]
        sm = ScalarMappable(Normalize(-lim if kind == "signed" else 0.0, lim), _overlay_cmap(kind == "signed"))
        label = ("signed: red for, blue against" if kind == "signed" else "unsigned: brighter = more") + \
            "\nmap ÷ its mean |map| in the body"
        cbar = fig.colorbar(sm, ax=axs, shrink=0.8, pad=0.02, aspect=25)
        cbar.ax.set_facecolor(str((40.0 - WINDOW[0]) / (WINDOW[1] - WINDOW[0])))  # as over soft tissue
        cbar.set_label(label, fontsize=8)
        cbar.ax.tick_params(labelsize=7)
        bars.append({"kind": kind, "methods": [n for n in kinds[kind]], "limits": [-lim if kind == "signed" else 0.0,
                                                                                  lim], "label": label})
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.napari_attribution = {"slice": z, "chance": chance, "window": list(WINDOW), "captions": captions,  # type: ignore[attr-defined]
                              "colour_bars": bars}
    return fig


def _figure(vol: np.ndarray, mask: np.ndarray, results: dict[str, Any], scores: dict[str, float],
            **how: Any) -> bytes | None:
    """:func:`demo_figure` as PNG bytes, its facts as JSON in the PNG's ``Description`` (None without
    matplotlib)."""
    import io
    import json

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional
        return None
    fig = demo_figure(vol, mask, results, scores, **how)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15,
                metadata={"Description": json.dumps(fig.napari_attribution)})
    plt.close(fig)
    return buf.getvalue()
