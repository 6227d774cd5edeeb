"""Regenerate the user guide's screenshot of a sliding-window model in the Explain dock, from the real viewer.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/make_sliding_window_screenshot.py
    .venv/bin/python scripts/make_sliding_window_screenshot.py files --work DIR   # only the files, no viewer

The case, as a user brings it, written to a work folder (default: a ``napari-attribution-sliding-window`` folder in
the system's temporary folder; ``--work DIR`` chooses): the MONAI UNet of ``make_own_model_screenshots.py`` (trained
here for about a minute, seeded, on random 32^3 crops of generated vessel phantoms: a network trained on patches),
saved as ``unet_sw.pt`` with ``unet_sw.card.json`` beside it, whose ``inferer`` runs it in 32^3 windows with
Gaussian blending; and a larger vessel phantom than it was trained on, 96 x 128 x 128 at 0.6 mm. Saliency for the
predicted vessels, through the inferer. Prints the card in effect, the steps the run used, the dock's cost estimate
against the run's measured time, and the share of the map's values on the predicted vessels. Writes
docs/images/explain_sliding_window.png.

Look at the image before committing: it is what a user sees.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (96, 128, 128)
SPACING = (0.6, 0.6, 0.6)
INFERER = {"type": "sliding_window", "roi_size": [32, 32, 32], "overlap": 0.25, "mode": "gaussian"}


def _own() -> object:
    """scripts/make_own_model_screenshots.py (its training and viewer helpers)."""
    spec = importlib.util.spec_from_file_location("make_own_model_screenshots",
                                                  ROOT / "scripts" / "make_own_model_screenshots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files(work: Path) -> tuple[Path, Path]:
    """``unet_sw.pt`` with its card beside it (the inferer, the weights' sha256), and the vessel scan as NIfTI."""
    import torch

    from napari_attribution.io import Geometry, write_nifti
    from napari_attribution.models.demo import vessel_phantom

    own = _own()
    net, _ = own.train_unet()  # type: ignore[attr-defined]
    weights = work / "unet_sw.pt"
    torch.save(net.state_dict(), weights)
    card = {"factory": "monai.networks.nets:UNet", "kwargs": own.UNET_KWARGS,  # type: ignore[attr-defined]
            "weights": weights.name, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "task": "segmentation", "class_names": ["background", "vessel"], "spacing": list(SPACING),
            "preprocess": {"zscore": True}, "inferer": INFERER}
    (work / "unet_sw.card.json").write_text(json.dumps(card, indent=2) + "\n")
    case = vessel_phantom(11, shape=SHAPE)
    image = write_nifti(work / "mra_large.nii.gz", (case.image * 1000.0).astype(np.float32),
                        Geometry(spacing=SPACING, origin=(0.0, 0.0, 0.0)), overwrite=True)
    return weights, image


def screenshot(work: Path) -> None:
    from napari_attribution.runs.jobs import _estimate

    own = _own()
    model, image = files(work)
    viewer, scan, dock, wait, shot = own._open(image, model)  # type: ignore[attr-defined]
    print(dock.card_view.text())
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(1)  # "1: vessel"
    dock.set_method("saliency")
    request = dock.build_request()
    est = _estimate(request, np.asarray(scan.data), 0, tuple(scan.data.shape), cheap=0)
    own._run(dock, wait)  # type: ignore[attr-defined]
    seconds = dock.last_outcome.results["saliency"].seconds
    if est is not None:
        print(f"estimate: {est.text()}; measured {seconds:.1f} s (estimate / measured {est.seconds / seconds:.2f})")
    pred = own._prediction(viewer)  # type: ignore[attr-defined]
    own._shares(viewer, "saliency")  # type: ignore[attr-defined]
    viewer.dims.set_current_step(0, int(np.argmax((np.asarray(pred.data) == 1).sum((1, 2)))))  # most vessel
    viewer.reset_view()
    shot(viewer, "explain_sliding_window.png")
    viewer.close()


def main(argv: list[str]) -> int:
    work = Path(argv[argv.index("--work") + 1]) if "--work" in argv else \
        Path(tempfile.gettempdir()) / "napari-attribution-sliding-window"
    work.mkdir(parents=True, exist_ok=True)
    if "files" in argv:
        for path in files(work):
            print("wrote", path)
        return 0
    screenshot(work)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
