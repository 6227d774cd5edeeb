"""Regenerate the user guide's screenshot of a MONAI bundle folder in the Explain dock, from the real viewer.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/make_bundle_screenshot.py [--work DIR]

The bundle is written to a work folder (default: ``napari-attribution-bundle`` in the system's temporary folder):
the segmenter of ``tests/_seg_phantom.py`` (a MONAI UNet trained here, seeded, for about a second on 24^3 MRI-like
phantoms whose bright spheres are the label) saved as a bundle as MONAI writes one: ``configs/inference.json``
(``network_def``, a preprocessing with ``Orientationd`` and ``ScaleIntensityRanged`` from scanner units 0..1000 to
the network's 0..1, a ``SlidingWindowInferer`` with 24^3 windows, the training patch), ``configs/metadata.json``
and ``models/model.pt``. The scan is a phantom of the same kind at 48 x 72 x 72 voxels (1.2 x 0.9 x 0.9 mm) in
scanner units, written as NIfTI and opened with the plugin's reader; the model is picked as **Browse for a model
folder…** picks the bundle folder. Target: the predicted region of class 1 (lesion); method: saliency. Writes
docs/images/explain_bundle.png and prints the card in effect, the load warning and the numbers the user guide quotes.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (48, 72, 72)
SPACING = (1.2, 0.9, 0.9)
SCANNER = 1000.0  # the scan's units per unit of the phantom's intensity (tissue 300, lesions 800)
#: the lesions: centre (z, y, x) and radius in voxels, within the training range of tests/_seg_phantom.py
LESIONS = (((16, 30, 24), 4.0), ((30, 44, 46), 3.5), ((24, 22, 50), 3.0), ((34, 50, 26), 4.5))


def _module(name: str, path: Path) -> object:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_bundle(folder: Path) -> Path:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from _seg_phantom import UNET_KWARGS, trained_unet

    net = trained_unet()
    config = {
        "network_def": {"_target_": "UNet", **UNET_KWARGS},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": SCANNER, "b_min": 0.0,
             "b_max": 1.0, "clip": True},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [24, 24, 24], "sw_batch_size": 4,
                    "overlap": 0.25, "mode": "gaussian"},
    }
    metadata = {"name": "phantom lesion segmenter", "version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": 1,
                             "spatial_shape": [24, 24, 24]}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "channel_def": {"0": "background", "1": "lesion"}}}}}
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def write_scan(path: Path) -> Path:
    """The phantom of tests/_seg_phantom.py at the scan's size: a ball of tissue, the lesions, Rician noise."""
    from napari_attribution.io import Geometry, write_nifti

    rng = np.random.default_rng(3)
    zz, yy, xx = np.indices(SHAPE)
    c = np.asarray(SHAPE, float) / 2
    body = ((zz - c[0]) / (0.6 * SHAPE[0])) ** 2 + ((yy - c[1]) / (0.6 * SHAPE[1])) ** 2 + \
        ((xx - c[2]) / (0.6 * SHAPE[2])) ** 2 < 1
    lesion = np.zeros(SHAPE, bool)
    for (z, y, x), r in LESIONS:
        lesion |= (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < r * r
    clean = np.where(lesion, 0.8, np.where(body, 0.3, 0.0))
    image = np.hypot(clean + rng.normal(0.0, 0.05, SHAPE), rng.normal(0.0, 0.05, SHAPE)) * SCANNER
    return write_nifti(path, image.astype(np.float32), Geometry(spacing=SPACING, origin=(0.0, 0.0, 0.0)),
                       overwrite=True)


def main(argv: list[str]) -> int:
    import napari_attribution as na

    work = Path(argv[argv.index("--work") + 1]) if "--work" in argv else \
        Path(tempfile.gettempdir()) / "napari-attribution-bundle"
    bundle = write_bundle(work / "lesion_bundle")
    image = write_scan(work / "scan.nii.gz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        na.load_model(bundle)
    for w in caught:
        print(f"{w.category.__name__}: {w.message}")
    own = _module("make_own_model_screenshots", ROOT / "scripts" / "make_own_model_screenshots.py")
    viewer, scan, dock, wait, shot = own._open(image, bundle)  # type: ignore[attr-defined]
    print(dock.model_status.text())
    print(dock.card_view.text())
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(1)  # "1: lesion"
    dock.set_method("saliency")
    own._run(dock, wait)  # type: ignore[attr-defined]
    print(f"saliency: {dock.last_outcome.results['saliency'].seconds:.1f} s")
    pred = own._prediction(viewer)  # type: ignore[attr-defined]
    truth = np.zeros(SHAPE, bool)
    zz, yy, xx = np.indices(SHAPE)
    for (z, y, x), r in LESIONS:
        truth |= (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 < r * r
    got = np.asarray(pred.data) == 1
    print(f"prediction: Dice {2 * (got & truth).sum() / (got.sum() + truth.sum()):.3f} against the drawn lesions")
    own._shares(viewer, "saliency")  # type: ignore[attr-defined]
    viewer.dims.set_current_step(0, LESIONS[0][0][0])  # through the first lesion
    viewer.reset_view()
    shot(viewer, "explain_bundle.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
