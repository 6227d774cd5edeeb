"""Regenerate the user guide's screenshot of an nnU-Net v2 result folder in the Explain dock, from the real viewer.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/make_nnunet_screenshot.py

The folder and the scan are tests/data/nnunet/ (scripts/make_nnunet_folder.py: a result folder nnU-Net trained on CT
phantoms, and a test scan at 2 x 1.3 x 1.3 mm that the network's 2.5 x 1 x 1 mm grid resamples). The scan is opened
with the plugin's reader; the model is picked as **Browse...** picks a file: the fold's ``checkpoint_final.pth``,
whose result folder is read around it. Target: the predicted region of class 1 (organ_a); method: saliency, with
nnU-Net's mirroring. Writes docs/images/explain_nnunet.png and prints the numbers the user guide quotes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "nnunet"


def _own() -> object:
    """scripts/make_own_model_screenshots.py (its viewer helpers)."""
    spec = importlib.util.spec_from_file_location("make_own_model_screenshots",
                                                  ROOT / "scripts" / "make_own_model_screenshots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    own = _own()
    [model] = sorted(DATA.glob("Dataset*/*__*__*/fold_0/checkpoint_final.pth"))
    image = DATA / "scans" / "scan_resampled.nii.gz"
    viewer, scan, dock, wait, shot = own._open(image, model)  # type: ignore[attr-defined]
    print(dock.card_view.text())
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(1)  # "1: organ_a"
    dock.set_method("saliency")
    own._run(dock, wait)  # type: ignore[attr-defined]
    print(f"saliency: {dock.last_outcome.results['saliency'].seconds:.1f} s")
    pred = own._prediction(viewer)  # type: ignore[attr-defined]
    own._shares(viewer, "saliency")  # type: ignore[attr-defined]
    viewer.dims.set_current_step(0, int(np.argmax((np.asarray(pred.data) == 1).sum((1, 2)))))  # most organ_a
    viewer.reset_view()
    shot(viewer, "explain_nnunet.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
