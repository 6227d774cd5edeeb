"""Pipeline-level behaviour of targets: slice-wise runs explain what the target needs; a box (ROI) run is the
cropped image's run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from _nets import Classifier, TinyUNet, image, seeded

import napari_attribution as na
from napari_attribution import targets as T
from napari_attribution.runs.jobs import ExplainRequest, run_job
from napari_attribution.runs.model_info import model_info


def volume(depth: int = 4, size: int = 16) -> np.ndarray:
    return np.stack([image((size, size), seed=s) for s in range(depth)])


@pytest.mark.parametrize("dtype", [bool, np.int64])
def test_slicewise_region_explains_only_the_slices_its_mask_touches(dtype: Any) -> None:
    model = seeded(TinyUNet(2))
    vol = volume()
    mask = np.zeros(vol.shape, dtype)
    mask[1, 4:8, 4:8] = 1
    mask[3, 10:12, 2:5] = 1
    res = na.explain(model, vol, "saliency", T.Region(1, mask))
    assert res.per_slice is not None and res.per_slice.slices == (1, 3) and res.per_slice.skipped == {}
    assert np.isnan(res.data[0]).all() and np.isnan(res.data[2]).all()
    for s in (1, 3):
        np.testing.assert_allclose(res.data[s], na.explain(model, vol[s], "saliency", T.Region(1, mask[s])).data,
                                   rtol=1e-6)
    assert set(res.per_slice.targets) == {1, 3} and np.asarray(res.per_slice.targets[3].mask).shape == (16, 16)
    assert isinstance(res.target, T.Region) and np.asarray(res.target.mask).shape == vol.shape  # the volume's


def test_slicewise_error_region_skips_slices_without_errors() -> None:
    model = seeded(TinyUNet(2))
    vol = volume(3)
    pred = na.explain(model, vol, "saliency", T.Class(1)).prediction
    assert pred is not None
    truth = np.stack([p if s != 1 else 1 - p for s, p in enumerate(pred)]).astype(np.int64)
    res = na.explain(model, vol, "saliency", T.ErrorRegion(1, truth, "fp"))
    # the truth equals the prediction on slices 0 and 2: no false positives there, only slice 1 is explained
    assert res.per_slice is not None and res.per_slice.slices == (1,) and set(res.per_slice.skipped) == {0, 2}
    assert np.isfinite(res.data[1]).all() and np.isnan(res.data[0]).all()


def _roi_map(model: torch.nn.Module, img: np.ndarray, roi: tuple[tuple[int, int], ...], target: Any) -> np.ndarray:
    out = run_job(ExplainRequest(model=model_info(model, "test net"), image=img, source="img",
                                 methods=["saliency"], target=target, roi=roi))
    assert out.status == "ok", out.message
    return np.asarray(out.results["saliency"].data)


def test_a_box_run_gives_the_map_of_the_cropped_image() -> None:
    model = seeded(Classifier(3, classes=2))
    img = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    roi = ((1, 7), (2, 10), (4, 12))
    box = tuple(slice(a, b) for a, b in roi)
    full = _roi_map(model, img, roi, 1)
    np.testing.assert_allclose(full[box], na.explain(model, img[box], "saliency", 1).data, rtol=1e-6)
    outside = np.ones(img.shape, bool)
    outside[box] = False
    assert np.isnan(full[outside]).all()


def test_a_box_run_moves_region_and_voxel_targets_into_the_box() -> None:
    model = seeded(TinyUNet(3))
    img = np.random.default_rng(1).normal(size=(8, 16, 16)).astype(np.float32)
    roi = ((0, 8), (4, 12), (2, 10))
    box = tuple(slice(a, b) for a, b in roi)
    mask = np.zeros(img.shape, bool)
    mask[2:5, 6:9, 4:7] = True
    got = _roi_map(model, img, roi, T.Region(1, mask))[box]
    np.testing.assert_allclose(got, na.explain(model, img[box], "saliency", T.Region(1, mask[box])).data, rtol=1e-6)
    got = _roi_map(model, img, roi, T.Voxel(1, (3, 7, 5)))[box]
    np.testing.assert_allclose(got, na.explain(model, img[box], "saliency", T.Voxel(1, (3, 3, 3))).data, rtol=1e-6)
    out = run_job(ExplainRequest(model=model_info(model, "test net"), image=img, source="img",
                                 methods=["saliency"], target=T.Voxel(1, (3, 0, 0)), roi=roi))
    assert out.status == "failed" and "outside the box (ROI)" in out.message


@pytest.mark.parametrize(("device", "words"), [("bogus", "not a device name"), ("cuda:7", "not available"),
                                               ("xla", "not supported")])
def test_a_device_torch_does_not_know_or_this_machine_lacks_gets_one_clear_message(device: str, words: str) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    with pytest.raises(na.ParameterError, match=words):
        na.explain(net, np.zeros((8, 8), np.float32), "saliency", 0, device=device)


def test_a_geometry_that_is_not_a_geometry_is_refused_not_dropped() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    with pytest.raises(na.ParameterError, match="na.Geometry"):
        na.explain(net, np.zeros((8, 8), np.float32), "saliency", 0, geometry={"scale": [1.0, 1.0]})
