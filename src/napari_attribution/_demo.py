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

__all__ = ["WEIGHTS", "load_demo_classifier", "phantom", "run_headless_demo"]

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


def _figure(vol: np.ndarray, mask: np.ndarray, results: dict[str, Any], scores: dict[str, float]) -> bytes | None:
    """The lesion's central slice with each map over it, as PNG bytes (None without matplotlib)."""
    import io

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional
        return None
    z = int(np.argmax(mask.sum((1, 2))))
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(3.2 * (len(results) + 1), 3.6), layout="constrained")
    aspect = SPACING[1] / SPACING[2]
    axes[0].imshow(vol[z], cmap="gray", vmin=-200, vmax=400, aspect=aspect)
    axes[0].contour(mask[z], levels=[0.5], colors="lime", linewidths=0.8)
    axes[0].set_title(f"phantom CT, slice {z}\n(lesion outlined)", fontsize=10)
    for ax, (name, res) in zip(axes[1:], results.items(), strict=True):
        data = res.data[z]
        lim = float(np.nanpercentile(np.abs(res.data), 99.5)) or 1.0
        ax.imshow(vol[z], cmap="gray", vmin=-200, vmax=400, aspect=aspect)
        cmap, vmin = ("RdBu_r", -lim) if res.signed else ("inferno", 0.0)
        ax.imshow(data, cmap=cmap, vmin=vmin, vmax=lim, alpha=0.6, aspect=aspect)
        ax.contour(mask[z], levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(f"{name}\ntop voxels in lesion: {scores[name]:.0%}", fontsize=10)
    for ax in axes:
        ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return buf.getvalue()

