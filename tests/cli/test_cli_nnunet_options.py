"""The CLI's nnU-Net options (``--fold``, ``--checkpoint``, ``--no-mirroring``): they load what ``load_model``'s
``fold`` / ``checkpoint`` / ``mirroring`` load, a batch's resume tells runs with other options apart, and a model
that is not an nnU-Net folder refuses them in one line."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution.cli import main
from napari_attribution.io import Geometry, read_nifti, write_nifti

pytest.importorskip("dynamic_network_architectures")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))

import _nnunet_folder as nf  # noqa: E402


@pytest.fixture
def folder_and_scan(tmp_path: Path) -> tuple[Path, Path]:
    root = nf.write_folder(tmp_path, folds=(0, 1))
    torch.save(nf.checkpoint(nf.network(7), 1, nf.plans()), root / "fold_1" / "checkpoint_best.pth")
    rng = np.random.default_rng(3)
    vol = rng.normal(40, 150, (20, 28, 28)).astype(np.float32)
    scan = tmp_path / "scans" / "case0.nii.gz"
    scan.parent.mkdir()
    write_nifti(scan, vol, Geometry(spacing=tuple(nf.SPACING), origin=(0.0, 0.0, 0.0)))
    return root, scan


def _explain(root: Path, scan: Path, out: Path, *options: str) -> np.ndarray:
    rc = main(["explain", "--model", str(root), "--image", str(scan), "--method", "saliency", "--target", "1",
               "-o", str(out), "-q", *options])
    assert rc == 0
    return read_nifti(out)[0]


def _api(root: Path, scan: Path, **options: object) -> np.ndarray:
    data, geometry = read_nifti(scan)[:2]
    return na.explain(na.load_model(root, **options), data, "saliency", 1, geometry=geometry).data


def test_fold_checkpoint_and_mirroring_load_what_the_api_loads(folder_and_scan: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    root, scan = folder_and_scan
    best = _explain(root, scan, tmp_path / "best.nii.gz", "--fold", "1", "--checkpoint", "best", "--no-mirroring")
    np.testing.assert_allclose(best, _api(root, scan, fold=1, checkpoint="best", mirroring=False),
                               rtol=1e-5, atol=1e-6 * float(np.abs(best).max()))
    ensemble = _explain(root, scan, tmp_path / "ensemble.nii.gz")
    np.testing.assert_allclose(ensemble, _api(root, scan), rtol=1e-5, atol=1e-6 * float(np.abs(ensemble).max()))
    # the options change the network, so the maps differ (the test would pass if they were ignored otherwise)
    assert np.abs(best - ensemble).max() > 1e-3 * np.abs(ensemble).max()
    folds = _explain(root, scan, tmp_path / "folds.nii.gz", "--fold", "0", "--fold", "1")
    np.testing.assert_allclose(folds, ensemble, rtol=1e-5, atol=1e-6 * float(np.abs(ensemble).max()))


def test_a_batch_refuses_outputs_of_another_fold_and_skips_its_own(folder_and_scan: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    root, scan = folder_and_scan
    out = tmp_path / "out"
    base = ["batch", "--model", str(root), "--images", str(scan.parent), "--method", "saliency",
            "--target", "voxel:1:10,14,14", "-o", str(out), "--local", "-q", "--no-mirroring"]
    assert main([*base, "--fold", "0"]) == 0
    assert main([*base, "--fold", "0"]) == 0
    with open(out / "summary.csv", newline="") as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["skipped"]
    assert main([*base, "--fold", "1"]) == 3  # refused: the outputs are fold 0's
    with open(out / "summary.csv", newline="") as fh:
        status = [r["status"] for r in csv.DictReader(fh)]
    assert len(status) == 1 and status[0].startswith("refused")


def test_nnunet_options_on_another_model_are_one_error_line(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    scan = tmp_path / "scan.npy"
    np.save(scan, np.zeros((48, 48, 48), np.float32))
    rc = main(["explain", "--model", "demo:vessel-seg", "--image", str(scan), "--method", "saliency",
               "-o", str(tmp_path / "h.nii.gz"), "-q", "--fold", "0"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "only to nnU-Net result folders" in lines[0], err
    assert "Traceback" not in err
