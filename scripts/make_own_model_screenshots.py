"""Regenerate the screenshots of the user guide's section "Your own model" from the real viewer.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/make_own_model_screenshots.py [brain] [monai]
    .venv/bin/python scripts/make_own_model_screenshots.py files --work DIR   # only the files, no viewer

Two cases, each as a user brings it, written to a work folder (default: a ``napari-attribution-own-model``
folder in the system's temporary folder; ``--work DIR`` chooses) and opened through the plugin's own reader:

- ``brain``: ``tests/data/brain_unet64.ts`` with its card beside it (a TorchScript brain extractor that takes
  exactly 64^3 voxels, one logit channel) on nilearn's MNI152 T1 template resampled to 90 x 110 x 80 at
  2.0 x 1.6 x 2.2 mm (``tests/_real_mri.py``), written as NIfTI. Saliency and occlusion for the predicted brain.
  Writes own_model_brain_saliency.png and own_model_brain_occlusion.png.
- ``monai``: a ``monai.networks.nets.UNet`` trained here for about a minute (seeded) on generated vessel
  phantoms, saved as ``unet.pt`` (a state_dict) with ``unet.card.json`` beside it, explained on an odd-sized
  MRA-like scan (45 x 50 x 47 at 0.8 x 0.6 x 0.6 mm) with Grad-CAM at the default layer and at the bottleneck.
  Prints the network's Dice on held-out phantoms. Writes own_model_monai_default.png and
  own_model_monai_layer.png.

Look at the images before committing: they are what a new user sees.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
DATA = ROOT / "tests" / "data"
#: Occlusion for the screenshot: 20-voxel windows at stride 10 (3 min on one core from the command line); the default
#: window (at most 4,096 windows) took 25 min on this scan.
OCCLUSION = {"window": 20, "stride": 10}
#: The MONAI UNet of the second case (two poolings: sizes must be multiples of 4).
UNET_KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32],
               "strides": [2, 2], "num_res_units": 1}
MRA_SPACING = (0.8, 0.6, 0.6)


def main(argv: list[str]) -> int:
    work = Path(argv[argv.index("--work") + 1]) if "--work" in argv else \
        Path(tempfile.gettempdir()) / "napari-attribution-own-model"
    work.mkdir(parents=True, exist_ok=True)
    if "files" in argv:  # the walkthrough's files, to follow the user guide by hand
        for path in (*brain_files(work), *monai_files(work)):
            print("wrote", path)
        return 0
    cases = [a for a in argv if a in CASES] or list(CASES)
    for name in cases:
        CASES[name](work)
    return 0


# ------------------------------------------------------------------------------------------------ the data


def brain_files(work: Path) -> tuple[Path, Path]:
    """The TorchScript file with its card beside it, and the MNI152 scan as NIfTI with its spacing."""
    import shutil

    sys.path.insert(0, str(ROOT / "tests"))
    from _real_mri import load_mri

    from napari_attribution.io import write_nifti

    for name in ("brain_unet64.ts", "brain_unet64.card.json"):
        shutil.copy(DATA / name, work / name)
    # the way to layer methods: a card naming the Python network, with the archive as its weights
    card = json.loads((DATA / "brain_unet64.card.json").read_text())
    card.update({"factory": "make_brain_unet:BrainUNet", "weights": "brain_unet64.ts"})
    (work / "brain_unet64_py.card.json").write_text(json.dumps(card, indent=2) + "\n")
    scan, _, geometry = load_mri()
    image = write_nifti(work / "t1_mni_2mm.nii.gz", scan, geometry, overwrite=True)
    return work / "brain_unet64.ts", image


def _zscore(x: np.ndarray) -> np.ndarray:
    """The card's ``{"zscore": true}``: whole volume, mean 0, standard deviation 1."""
    return ((x - x.mean()) / x.std()).astype(np.float32)


def train_unet(iterations: int = 600, seed: int = 0) -> tuple[object, float]:
    """A MONAI UNet trained on random 32^3 crops of 60 generated 48^3 vessel phantoms (z-scored, random axis
    permutations), cross-entropy + soft Dice of the vessel class, as the demo vessel segmenter is trained.
    Returns the network and its mean Dice on 6 held-out phantoms."""
    import torch
    import torch.nn.functional as F
    from monai.networks.nets import UNet

    from napari_attribution.models.demo import vessel_batch
    from napari_attribution.models.demo.training import HELD_OUT_OFFSET, dice

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, truth = vessel_batch(rng, 60)
    images = np.stack([_zscore(v) for v in images])
    net = UNet(**UNET_KWARGS)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * i / iterations)))
    t0 = time.perf_counter()
    for _ in range(iterations):
        xs, ys = [], []
        for _ in range(4):
            i, o, perm = int(rng.integers(0, len(images))), rng.integers(0, 48 - 32 + 1, 3), rng.permutation(3)
            box = tuple(slice(int(a), int(a) + 32) for a in o)
            xs.append(np.ascontiguousarray(images[i, 0][box].transpose(perm)))
            ys.append(np.ascontiguousarray(truth[i][box].transpose(perm)))
        logits = net(torch.from_numpy(np.stack(xs))[:, None])
        y = torch.from_numpy(np.stack(ys)).long()
        p = torch.softmax(logits, 1)[:, 1]
        loss = F.cross_entropy(logits, y) + 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    held, held_truth = vessel_batch(np.random.default_rng(seed + HELD_OUT_OFFSET), 6)
    with torch.no_grad():
        pred = net(torch.from_numpy(np.stack([_zscore(v) for v in held]))).argmax(1).numpy() == 1
    score = float(np.mean([dice(a, b) for a, b in zip(pred, held_truth, strict=True)]))
    print(f"MONAI UNet: {iterations} iterations in {time.perf_counter() - t0:.0f} s, held-out Dice {score:.3f}")
    return net, score


def monai_files(work: Path) -> tuple[Path, Path]:
    """``unet.pt`` (a state_dict) with ``unet.card.json`` beside it, and an odd-sized MRA-like scan: a vessel
    phantom made at 0.6 mm (60 x 50 x 47) and resampled to 0.8 mm slices (45 x 50 x 47), in MRI-like units."""
    import torch
    import torch.nn.functional as F

    from napari_attribution.io import Geometry, write_nifti
    from napari_attribution.models.demo import vessel_phantom

    net, _ = train_unet()
    torch.save(net.state_dict(), work / "unet.pt")  # type: ignore[attr-defined]
    card = {"factory": "monai.networks.nets:UNet", "kwargs": UNET_KWARGS, "weights": "unet.pt",
            "task": "segmentation", "class_names": ["background", "vessel"], "spacing": [0.6, 0.6, 0.6],
            "preprocess": {"zscore": True}}
    (work / "unet.card.json").write_text(json.dumps(card, indent=2) + "\n")
    case = vessel_phantom(7, shape=(60, 50, 47))
    thick = F.interpolate(torch.from_numpy(case.image)[None, None], size=(45, 50, 47), mode="trilinear",
                          align_corners=False)[0, 0].numpy() * 1000.0
    image = write_nifti(work / "mra.nii.gz", thick.astype(np.float32), Geometry(spacing=MRA_SPACING,
                                                                               origin=(0.0, 0.0, 0.0)), overwrite=True)
    return work / "unet.pt", image


# ------------------------------------------------------------------------------------------------ the viewer


def _app() -> tuple[object, object]:
    """``wait(cond)`` (processing Qt events) and ``shot(viewer, name)``: docs/make_screenshots.py's helpers, with a
    longer timeout (occlusion on the MNI scan takes minutes) and this script's output folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_screenshots", ROOT / "docs" / "make_screenshots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.OUT = OUT
    _, wait, shot = module._app(timeout=900.0)
    return wait, shot


def _open(image: Path, model: Path, width: int = 560):
    """A viewer with ``image`` opened by the plugin's reader (spacing as scale) and the Explain dock on ``model``."""
    import napari

    from napari_attribution._widget import ExplainWidget

    wait, shot = _app()
    viewer = napari.Viewer(title="napari-attribution")
    viewer.window.resize(1500, 980)
    [scan] = viewer.open(str(image), plugin="napari-attribution")
    dock = ExplainWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Explain").setMinimumWidth(width)
    wait(lambda: dock.model_info is not None and not dock.busy)  # the demo model it starts with
    dock.model.set_source(str(model))  # what "Browse for a model file…" does with the chosen file
    wait(lambda: dock.model_info is not None and dock.model_info.source == str(model) and not dock.busy)
    return viewer, scan, dock, wait, shot


def _run(dock, wait) -> None:
    dock.run(confirm=False)
    wait(lambda: not dock.busy)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    print(dock.input_used.text())


def _shares(viewer, method: str) -> None:
    """Print the numbers the user guide quotes for the newest ``method`` heatmap: the share of its positive values
    inside the predicted region and within 3 voxels of the region's border, each against that region's share of the
    volume (what a map spread evenly would get: the chance level)."""
    from scipy import ndimage

    heat = [la for la in viewer.layers if la.name.startswith(method)][-1]
    fg = np.asarray(next(la for la in viewer.layers if la.name.startswith("prediction")).data) == 1
    pos = np.clip(np.nan_to_num(np.asarray(heat.data, np.float64)), 0, None)
    band = ndimage.binary_dilation(fg, iterations=3) & ~ndimage.binary_erosion(fg, iterations=3)
    print(f"{heat.name}: {pos[fg].sum() / pos.sum():.0%} of the positive values inside the prediction "
          f"({fg.mean():.1%} of the volume), {pos[band].sum() / pos.sum():.0%} within 3 voxels of its border "
          f"({band.mean():.0%} of the volume)")


def _prediction(viewer):
    """The prediction layer outlined, on top of the heatmaps."""
    pred = next(la for la in viewer.layers if la.name.startswith("prediction"))
    pred.contour, pred.opacity = 1, 0.8
    viewer.layers.move(viewer.layers.index(pred), len(viewer.layers))
    return pred


def _only(viewer, prefix: str) -> None:
    """Show the scan, the prediction and the heatmaps whose name starts with ``prefix``; hide the other heatmaps."""
    for la in viewer.layers:
        if la.metadata.get("napari_attribution", {}).get("role") not in (None, "prediction"):
            la.visible = la.name.startswith(prefix)


def brain(work: Path) -> None:
    """The TorchScript brain extractor: the card in effect, then saliency and occlusion for the predicted brain."""
    model, image = brain_files(work)
    viewer, scan, dock, wait, shot = _open(image, model)
    print(dock.card_view.text())
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(0)  # "0: brain"
    dock.set_method("saliency")
    _run(dock, wait)
    _prediction(viewer)
    _shares(viewer, "saliency")
    viewer.dims.set_current_step(0, 45)  # an axial slice through the ventricles
    viewer.reset_view()
    shot(viewer, "own_model_brain_saliency.png")
    dock.set_method("occlusion", **OCCLUSION)
    _run(dock, wait)
    _prediction(viewer)
    _shares(viewer, "occlusion")
    _only(viewer, "occlusion")
    from qtpy.QtWidgets import QScrollArea

    area = dock.findChild(QScrollArea)
    if area is not None:
        area.ensureWidgetVisible(dock.colour_bar, 0, 10)
    shot(viewer, "own_model_brain_occlusion.png")
    viewer.close()


def monai(work: Path) -> None:
    """The MONAI checkpoint: Grad-CAM for the predicted vessels at the default layer, then at the bottleneck."""
    model, image = monai_files(work)
    viewer, scan, dock, wait, shot = _open(image, model)
    print(dock.card_view.text())
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(1)  # "1: vessel"
    dock.set_method("grad_cam")
    _run(dock, wait)
    pred = _prediction(viewer)
    _shares(viewer, "grad_cam")
    viewer.dims.set_current_step(0, int(np.argmax((np.asarray(pred.data) == 1).sum((1, 2)))))  # most vessel
    viewer.reset_view()
    shot(viewer, "own_model_monai_default.png")
    dock.layer.setCurrentIndex(dock.layer.findData("model.1.submodule.1"))  # the bottleneck, quarter resolution
    _run(dock, wait)
    _prediction(viewer)
    _shares(viewer, "grad_cam")
    shot(viewer, "own_model_monai_layer.png")
    viewer.close()


CASES = {"brain": brain, "monai": monai}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
