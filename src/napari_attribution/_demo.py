"""The headless demo: a synthetic CT phantom whose evidence is known by construction, the bundled lesion
classifier ``demo:lesion3d``, and heatmaps written aligned with the phantom.

The phantom is a soft-tissue body (about 40 HU) in air (-1000 HU) with noise; "positive" volumes carry one
enhancing lesion (about +200 HU sphere). The classifier learns lesion vs no lesion, so a faithful heatmap must
put its mass on the lesion: the demo reports how many of each map's top voxels lie inside the lesion mask. The
phantom generator and the model live in :mod:`napari_attribution.models.demo` (``scripts/train_demo_models.py``
trains it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .models.demo import DEMO_MODELS, get_demo, lesion_phantom
from .models.demo.phantoms import LESION_SHAPE, LESION_SPACING

__all__ = ["WEIGHTS", "demo_figure", "load_demo_classifier", "phantom", "run_headless_demo"]

SHAPE = LESION_SHAPE
SPACING = LESION_SPACING  # mm, (z, y, x): anisotropic like a clinical CT
WEIGHTS = DEMO_MODELS["lesion3d"].weights


def phantom(rng: np.random.Generator, lesion: bool, shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic CT volume in HU ``(D, H, W)`` and its lesion mask (all False without a lesion)."""
    case = lesion_phantom(rng, lesion, shape)
    return case.image, case.mask


def load_demo_classifier() -> tuple[nn.Module, float]:
    """The bundled ``demo:lesion3d`` classifier (eval mode) and its held-out accuracy."""
    loaded = get_demo("lesion3d")
    blob = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    metrics = blob.get("metrics", {}) if isinstance(blob, dict) else {}
    acc = float(metrics.get("accuracy", metrics.get("test_accuracy", float("nan"))))
    return loaded.module, acc


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


def run_headless_demo(out_dir: str | Path, *, methods: tuple[str, ...] = ("grad_cam", "integrated_gradients",
                      "saliency"), overwrite: bool = False, log: Any = print) -> dict[str, float]:
    """Load the demo model, explain one positive phantom, write the scan and heatmaps as NIfTI (aligned, same
    affine) plus a PNG of the lesion's central slice; return, per method, the fraction of the lesion-sized set of
    highest-attributed voxels that lies inside the lesion.

    Without ``overwrite`` an existing output is refused before any work (``FileExistsError``); all files are
    written through :mod:`._atomic` and land together or not at all (a full disk leaves none)."""
    import napari_attribution as na
    from napari_attribution.io import Geometry
    from napari_attribution.io._nifti import nifti_writer

    from ._atomic import AtomicFiles

    out = Path(out_dir)
    planned = [out / "phantom.nii.gz", out / "lesion_mask.nii.gz", *(out / f"heatmap_{m}.nii.gz" for m in methods),
               out / "demo.png"]
    existing = [p.name for p in planned if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s) in '{out}'.")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    model, acc = load_demo_classifier()
    log(f"demo lesion classifier ready in {time.perf_counter() - t0:.1f} s; held-out accuracy {acc:.0%}")
    vol, mask = phantom(np.random.default_rng(7), lesion=True)
    geometry = Geometry(spacing=SPACING, origin=(0.0, 0.0, 0.0))
    results = na.compare(model, vol, list(methods), target=1, geometry=geometry,
                         params={"integrated_gradients": {"steps": "auto", "baseline": -1000.0}})
    scores = {}
    n_lesion = int(mask.sum())
    for name, res in results.items():
        path = out / f"heatmap_{name}.nii.gz"
        pos = np.clip(res.data, 0, None)
        top = np.argsort(res.data, axis=None)[-n_lesion:]  # the lesion-sized set of highest-ranked voxels
        precision = float(mask.ravel()[top].mean())
        peak = bool(mask.ravel()[int(np.argmax(res.data))])
        scores[name] = precision
        log(f"{name:22s} {res.seconds * 1000:7.1f} ms   top-{n_lesion} voxels inside the lesion: {precision:4.0%}   "
            f"peak inside: {'yes' if peak else 'no ':3s}   positive mass inside: "
            f"{pos[mask].sum() / max(pos.sum(), 1e-12):4.0%}   -> {path.name}")
    log(f"(the lesion is {mask.mean():.1%} of the volume: a map that ignores it scores about that)")
    ig = results.get("integrated_gradients")
    if ig is not None:
        c = ig.extras["completeness"]
        log(f"integrated gradients: {c['steps']} adaptive steps, completeness error {c['relative_error']:.2%} (the map "
            "adds up to the score change from the baseline)")
    png = _figure(vol, mask, results, scores)
    with AtomicFiles(overwrite=overwrite) as files:
        files.add(out / "phantom.nii.gz", nifti_writer(out / "phantom.nii.gz", vol, geometry))
        files.add(out / "lesion_mask.nii.gz", nifti_writer(out / "lesion_mask.nii.gz", mask.astype(np.uint8),
                                                           geometry))
        for name, res in results.items():
            path = out / f"heatmap_{name}.nii.gz"
            files.add(path, nifti_writer(path, res.data, geometry))
        if png is not None:
            files.add_bytes(out / "demo.png", png)
    if png is not None:
        log(f"wrote {out / 'demo.png'}")
    return scores


#: the scan's window in the figure (HU): soft tissue mid-grey, air black, the enhancing lesion bright
WINDOW = (-200.0, 400.0)


def _overlay_cmap(signed: bool) -> Any:
    """The napari layer's colormap (:data:`~napari_attribution.layers.DIVERGING` / ``SEQUENTIAL``) for
    matplotlib: the same colours, clear at zero."""
    from matplotlib.colors import LinearSegmentedColormap

    from .layers import DIVERGING, SEQUENTIAL

    spec = DIVERGING if signed else SEQUENTIAL
    stops = list(zip(spec["controls"], (tuple(c) for c in spec["colors"]), strict=True))
    return LinearSegmentedColormap.from_list(str(spec["name"]), stops, N=511)  # odd: an entry at 0


def demo_figure(vol: np.ndarray, mask: np.ndarray, results: dict[str, Any], scores: dict[str, float]) -> Any:
    """The lesion's central slice: the scan in its own window, then each map over it (clear at zero, in the napari
    layer's colours), as a matplotlib ``Figure``.

    Maps of one kind (signed / unsigned) sit side by side and share one scale and one colour bar: each map is
    divided by its mean |map| inside the body (so maps in different units compare), and the kind's limit is the
    99.5th percentile of those values inside the body. Each caption gives the map's score and its chance level (the
    lesion's share of the volume: what a map that ignores the lesion scores). Perturbation methods' maps are clear
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
    aspect = SPACING[1] / SPACING[2]
    grey = {"cmap": "gray", "vmin": WINDOW[0], "vmax": WINDOW[1], "aspect": aspect, "interpolation": "nearest"}
    axes[0].imshow(vol[z], **grey)
    axes[0].contour(mask[z], levels=[0.5], colors="lime", linewidths=0.8)
    axes[0].set_title(f"phantom CT, slice {z}\nwindow {WINDOW[0]:.0f} to {WINDOW[1]:.0f} HU (lesion outlined)",
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
        ax.contour(mask[z], levels=[0.5], colors="lime", linewidths=0.8)
        clear = ", clear outside the body" if masks_by_default(str(res.method)) else ""
        caption = f"{name} ({kind}{clear})\ntop voxels in lesion: {scores[name]:.0%} (chance {chance:.1%})"
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


def _figure(vol: np.ndarray, mask: np.ndarray, results: dict[str, Any], scores: dict[str, float]) -> bytes | None:
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
    fig = demo_figure(vol, mask, results, scores)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15,
                metadata={"Description": json.dumps(fig.napari_attribution)})
    plt.close(fig)
    return buf.getvalue()
