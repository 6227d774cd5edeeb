"""The main job's headless variant (``napari-attribution demo --headless``, what ``scripts/demo.sh --headless``
runs): aligned NIfTI heatmaps and a PNG, honest numbers, and no file overwritten without --overwrite."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_attribution.cli import main


def test_headless_demo_writes_aligned_heatmaps_and_never_overwrites(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--headless", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    scan = nib.load(out / "phantom.nii.gz")
    mask = np.asarray(nib.load(out / "lesion_mask.nii.gz").dataobj) > 0
    for method in ("grad_cam", "integrated_gradients", "saliency"):
        heat = nib.load(out / f"heatmap_{method}.nii.gz")
        assert heat.shape == scan.shape and np.allclose(heat.affine, scan.affine)
        assert np.isfinite(np.asarray(heat.dataobj)).all()
    assert (out / "demo.png").stat().st_size > 10_000
    # integrated gradients: complete (adaptive steps) and concentrated on the lesion, far above chance
    line = next(ln for ln in printed.splitlines() if "completeness error" in ln)
    assert float(line.split("completeness error ")[1].split("%")[0]) < 1.0
    ig = np.asarray(nib.load(out / "heatmap_integrated_gradients.nii.gz").dataobj)
    top = np.argsort(ig, axis=None)[-int(mask.sum()):]
    assert mask.ravel()[top].mean() > 10 * mask.mean()
    # a second run into the same folder refuses and leaves the files as they were
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["demo", "--headless", "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
