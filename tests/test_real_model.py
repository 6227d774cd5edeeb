"""A user's own network on a real scan, the same in Python, the CLI and the Explain dock.

The network: ``tests/data/brain_unet64.ts`` (made by ``scripts/make_brain_unet.py``), a 3D U-Net brain extractor
exported to TorchScript that raises on any input but 64^3, with ONE logit channel, and its card beside it
(``input_shape`` [64, 64, 64], percentile preprocessing, class_names ["brain"]). The scan: nilearn's MNI152 T1
template resampled to an anisotropic 90 x 110 x 80 grid at 2.0 x 1.6 x 2.2 mm. Target ``Predicted(0)``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _real_mri import NET, OCCLUSION, SHAPE, independent_foreground, independent_saliency, load_mri

import napari_attribution as na
from napari_attribution.metrics.tables import target_region
from napari_attribution.targets import Predicted

pytest.importorskip("nilearn")
pytest.importorskip("nibabel")



@pytest.fixture(scope="module")
def mri() -> tuple[np.ndarray, np.ndarray, na.Geometry]:
    return load_mri()


@pytest.fixture(scope="module")
def model() -> na.LoadedModel:
    return na.load_model(NET)


@pytest.fixture(scope="module")
def api_maps(model: na.LoadedModel, mri: Any) -> dict[str, na.Attribution]:
    scan, _, geometry = mri
    return na.compare(model, scan, ["saliency", "occlusion"], Predicted(0), geometry=geometry,
                      params={"occlusion": OCCLUSION})


def share_inside(data: np.ndarray, region: np.ndarray) -> float:
    pos = np.clip(np.nan_to_num(data), 0, None)
    return float(pos[region].sum() / pos.sum())


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_the_card_and_the_network_are_what_users_bring(model: na.LoadedModel) -> None:
    assert isinstance(model.module, torch.jit.ScriptModule)
    assert model.card.input_shape == (64, 64, 64) and model.card.class_names == ("brain",)
    with pytest.raises(Exception, match="64, 64, 64"):  # the archive itself refuses other sizes
        model.module(torch.zeros(1, 1, 64, 64, 63))


def test_python_api_explains_on_the_scans_grid_and_in_target_matches_an_independent_threshold(
        model: na.LoadedModel, mri: Any, api_maps: dict[str, na.Attribution]) -> None:
    scan, brain, geometry = mri
    maps = api_maps
    fg = independent_foreground(model.module, scan)
    dice = 2 * (fg & brain).sum() / (fg.sum() + brain.sum())
    assert dice > 0.85, f"the test network should find the brain (Dice {dice:.3f})"
    for res in maps.values():
        assert res.data.shape == SHAPE and res.geometry is geometry
        assert np.array_equal(res.prediction == 1, fg)  # the brain is drawn as label 1
        assert any("resized (90, 110, 80) to the model's input shape (64, 64, 64)" in s
                   for s in res.extras["preprocessing"])
        region = target_region(res)
        assert region is not None and np.array_equal(region, fg)
        energy = na.evaluate(model, scan, res, "energy_in_mask", mask=fg, geometry=geometry)
        assert energy.value == pytest.approx(share_inside(res.data, fg), rel=1e-5)
    # the saliency map is the gradient with respect to the scan's own voxels through both resizes
    # (float32 rounding flips a few ReLUs: 0.1 % of voxels differ by up to 3 %, the rest agree to 1e-3)
    ref = independent_saliency(model.module, scan, fg)
    close = np.isclose(maps["saliency"].data, ref, rtol=1e-3, atol=1e-4 * float(ref.max()))
    assert close.mean() > 0.995 and corr(maps["saliency"].data, ref) > 0.9999


def test_cli_and_api_give_the_same_maps(mri: Any, api_maps: dict[str, na.Attribution], tmp_path: Path) -> None:
    from napari_attribution import cli
    from napari_attribution.io import read_image, write_nifti

    scan, _, geometry = mri
    image = write_nifti(tmp_path / "t1.nii.gz", scan, geometry)
    out = tmp_path / "heat.nii.gz"
    code = cli.main(["explain", "--model", str(NET), "--image", str(image), "--method", "saliency", "--method",
                     "occlusion", "--target", "predicted:0", "--param", f"window={OCCLUSION['window']}", "--param",
                     f"stride={OCCLUSION['stride']}", "-o", str(out)])
    assert code == 0
    api = api_maps
    for method in ("saliency", "occlusion"):
        [path] = sorted(tmp_path.glob(f"heat*{method}*.nii.gz"))
        data = np.asarray(read_image(path)[0], np.float32)
        assert data.shape == SHAPE
        assert corr(data, api[method].data) > 0.999


def test_without_its_card_the_network_fails_before_the_run_naming_input_shape(mri: Any, tmp_path: Path) -> None:
    scan, _, geometry = mri
    alone = tmp_path / "brain.ts"
    shutil.copy(NET, alone)
    bare = na.load_model(alone)
    seen: list[str] = []
    with pytest.raises(na.InputShapeError, match="input_shape") as info:
        na.explain(bare, scan, "occlusion", Predicted(0), geometry=geometry, params=OCCLUSION,
                   progress=lambda d, t, m: seen.append(m))
    assert "64, 64, 64" in str(info.value) and not seen  # the network's own words; no window ran
