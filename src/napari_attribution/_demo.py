"""The headless demo: a synthetic CT phantom whose evidence is known by construction, a small 3D CNN trained on
it in seconds, and heatmaps written aligned with the phantom.

The phantom is a soft-tissue body (about 40 HU) in air (-1000 HU) with noise; "positive" volumes carry one
enhancing lesion (about +200 HU sphere). The classifier learns lesion vs no lesion, so a faithful heatmap must
put its mass on the lesion: the demo reports the fraction of positive attribution inside the lesion mask.
Until the bundled demo models exist (issue 3) the network is trained on the fly, deterministically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["DemoClassifier", "phantom", "run_headless_demo", "train_demo_classifier"]

SHAPE = (16, 28, 28)
SPACING = (2.0, 0.8, 0.8)  # mm, (z, y, x): anisotropic like a clinical CT


def phantom(rng: np.random.Generator, lesion: bool, shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic CT volume in HU ``(D, H, W)`` and its lesion mask (all False without a lesion)."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = (yy / 0.8) ** 2 + (xx / 0.9) ** 2 + (zz / 1.1) ** 2 < 1
    vol = np.where(body, 40.0, -1000.0) + rng.normal(0, 25, shape)
    mask = np.zeros(shape, bool)
    if lesion:
        c = rng.uniform(-0.35, 0.35, 3)
        r = rng.uniform(0.3, 0.42)
        mask = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < r**2
        vol[mask] += 200.0
    return vol.astype(np.float32), mask


class DemoClassifier(nn.Module):
    """A small 3D CNN with a GAP + linear head (so CAM applies). Input: HU windowed to [-1, 1] inside."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv3d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv3d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = torch.clamp((x - 40.0) / 300.0, -1.0, 1.0)  # soft-tissue window, part of the model
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


def train_demo_classifier(iterations: int = 300, seed: int = 0) -> tuple[DemoClassifier, float]:
    """Train :class:`DemoClassifier` on freshly generated phantoms; returns the model and its held-out accuracy."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = DemoClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(iterations):
        labels = rng.integers(0, 2, 8)
        x = torch.from_numpy(np.stack([phantom(rng, bool(lab))[0] for lab in labels]))[:, None]
        loss = nn.functional.cross_entropy(model(x), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test_rng = np.random.default_rng(seed + 1000)
    labels = test_rng.integers(0, 2, 40)
    x = torch.from_numpy(np.stack([phantom(test_rng, bool(lab))[0] for lab in labels]))[:, None]
    with torch.no_grad():
        acc = float((model(x).argmax(1).numpy() == labels).mean())
    return model, acc


WEIGHTS = Path(__file__).parent / "models" / "weights" / "demo_lesion3d.pt"


def load_demo_classifier() -> tuple[DemoClassifier, float]:
    """The shipped demo weights (trained by :func:`train_demo_classifier`, see ``python -m
    napari_attribution._demo --train``) and their held-out accuracy; trains on the fly if they are missing."""
    if WEIGHTS.exists():
        blob = torch.load(WEIGHTS, weights_only=True)
        model = DemoClassifier()
        model.load_state_dict(blob["state_dict"])
        return model.eval(), float(blob["accuracy"])
    return train_demo_classifier()


def run_headless_demo(out_dir: str | Path, *, methods: tuple[str, ...] = ("grad_cam", "integrated_gradients",
                      "saliency"), overwrite: bool = False, log: Any = print) -> dict[str, float]:
    """Load the demo model, explain one positive phantom, write the scan and heatmaps as NIfTI (aligned, same
    affine) plus a PNG of the lesion's central slice; return, per method, the fraction of the lesion-sized set of
    highest-attributed voxels that lies inside the lesion."""
    import napari_attribution as na
    from napari_attribution.io import Geometry, write_nifti

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    model, acc = load_demo_classifier()
    log(f"demo lesion classifier ready in {time.perf_counter() - t0:.1f} s; held-out accuracy {acc:.0%}")
    vol, mask = phantom(np.random.default_rng(7), lesion=True)
    geometry = Geometry(spacing=SPACING, origin=(0.0, 0.0, 0.0))
    write_nifti(out / "phantom.nii.gz", vol, geometry, overwrite=overwrite)
    write_nifti(out / "lesion_mask.nii.gz", mask.astype(np.uint8), geometry, overwrite=overwrite)
    results = na.compare(model, vol, list(methods), target=1, geometry=geometry,
                         params={"integrated_gradients": {"steps": 32, "baseline": -1000.0}})
    scores = {}
    n_lesion = int(mask.sum())
    for name, res in results.items():
        path = out / f"heatmap_{name}.nii.gz"
        write_nifti(path, res.data, geometry, overwrite=overwrite)
        pos = np.clip(res.data, 0, None)
        top = np.argsort(res.data, axis=None)[-n_lesion:]  # the lesion-sized set of highest-ranked voxels
        precision = float(mask.ravel()[top].mean())
        peak = bool(mask.ravel()[int(np.argmax(res.data))])
        scores[name] = precision
        log(f"{name:22s} {res.seconds * 1000:7.1f} ms   top-{n_lesion} voxels inside the lesion: {precision:4.0%}   "
            f"peak inside: {'yes' if peak else 'no ':3s}   positive mass inside: "
            f"{pos[mask].sum() / max(pos.sum(), 1e-12):4.0%}   -> {path.name}")
    log(f"(the lesion is {mask.mean():.1%} of the volume: a map that ignores it scores about that)")
    _figure(out / "demo.png", vol, mask, results)
    log(f"wrote {out / 'demo.png'}")
    return scores


def _figure(path: Path, vol: np.ndarray, mask: np.ndarray, results: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - optional
        return
    z = int(np.argmax(mask.sum((1, 2))))
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(3.2 * (len(results) + 1), 3.4))
    aspect = SPACING[1] / SPACING[2]
    axes[0].imshow(vol[z], cmap="gray", vmin=-200, vmax=400, aspect=aspect)
    axes[0].contour(mask[z], levels=[0.5], colors="lime", linewidths=0.8)
    axes[0].set_title(f"phantom CT, slice {z}")
    for ax, (name, res) in zip(axes[1:], results.items()):
        data = res.data[z]
        lim = float(np.nanpercentile(np.abs(res.data), 99.5)) or 1.0
        ax.imshow(vol[z], cmap="gray", vmin=-200, vmax=400, aspect=aspect)
        cmap, vmin = ("RdBu_r", -lim) if res.signed else ("inferno", 0.0)
        ax.imshow(data, cmap=cmap, vmin=vmin, vmax=lim, alpha=0.6, aspect=aspect)
        ax.contour(mask[z], levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(name)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # regenerate the shipped weights
    import sys

    if "--train" in sys.argv:
        torch.set_num_threads(2)
        trained, accuracy = train_demo_classifier()
        WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": trained.state_dict(), "accuracy": accuracy}, WEIGHTS)
        print(f"saved {WEIGHTS} (held-out accuracy {accuracy:.1%})")
