"""The main job's headless variant (``napari-attribution demo --headless``, what ``scripts/demo.sh --headless``
runs): a head CT angiogram of clinical size, the vessel segmenter run window by window over it, aligned NIfTI
heatmaps and a PNG, honest numbers, and no file overwritten without --overwrite."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_attribution._demo import SEED, dice
from napari_attribution.cli import main
from napari_attribution.models.demo import head_cta_phantom


def test_headless_demo_segments_the_big_scan_writes_aligned_heatmaps_and_never_overwrites(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--headless", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    scan = nib.load(out / "phantom.nii.gz")
    # clinical size and resolution: at least 100 x 256 x 256 voxels, sub-millimetre in-plane, in HU
    assert sorted(scan.shape) >= [100, 256, 256] and np.prod(scan.shape) >= 100 * 256 * 256
    assert max(scan.header.get_zooms()) <= 1.0
    data = np.asarray(scan.dataobj)
    assert data.min() < -900 and data.max() > 300  # air and contrast-filled vessels / bone, in HU
    truth = np.asarray(nib.load(out / "vessel_mask.nii.gz").dataobj) > 0
    pred = np.asarray(nib.load(out / "prediction.nii.gz").dataobj) > 0
    for name in ("vessel_mask", "prediction", "heatmap_grad_cam", "heatmap_saliency"):
        img = nib.load(out / f"{name}.nii.gz")
        assert img.shape == scan.shape and np.allclose(img.affine, scan.affine)
        assert np.isfinite(np.asarray(img.dataobj)).all()
    assert (out / "demo.png").stat().st_size > 10_000
    # the demo segmenter on the big scan: its vessels inside the skull match the generator's truth
    case = head_cta_phantom(SEED)
    assert case.structures is not None and np.array_equal(case.mask.T, truth)  # NIfTI stores x, y, z
    brain = (case.structures >= 3).T
    line = next(ln for ln in printed.splitlines() if ln.startswith("vessel prediction: Dice"))
    assert float(line.split("Dice ")[1].split(" ")[0]) == pytest.approx(dice(pred & brain, truth), abs=0.006)
    assert dice(pred & brain, truth) > 0.7
    # and over the whole scan: the skull (bone, 550-1100 HU) is not labelled vessel
    skull = (case.structures == 2).T
    assert dice(pred, truth) > 0.7 and pred[skull].mean() < 0.01
    # Grad-CAM through the inferer ranks the vessels far above chance (they are < 1 % of the scan)
    cam = np.asarray(nib.load(out / "heatmap_grad_cam.nii.gz").dataobj)
    top = np.argsort(cam, axis=None)[-int(truth.sum()):]
    assert truth.mean() < 0.01 and truth.ravel()[top].mean() > 20 * truth.mean()
    sal = np.asarray(nib.load(out / "heatmap_saliency.nii.gz").dataobj)
    top = np.argsort(sal, axis=None)[-int(truth.sum()):]
    assert truth.ravel()[top].mean() > 3 * truth.mean()
    # neither map lights the skull: under 1 % of each map's positive mass lies in the skull (5 % of the scan)
    assert skull.mean() > 0.03
    for heat in (cam, sal):
        pos = np.clip(heat, 0, None)
        assert pos[skull].sum() < 0.01 * pos.sum()
    # a second run into the same folder refuses and leaves the files as they were
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["demo", "--headless", "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
