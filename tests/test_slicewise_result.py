"""A 2D model's slice-by-slice run over a volume gives a result of the same field types as a whole-image run: one
target object, one prediction array on the scan's grid (slices stacked), one value per extra; what only a slice-wise
run has is in ``per_slice``. Each explained slice equals the whole-image run on that slice, and the layers, the
box paste and the checks treat both kinds alike."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from _nets import Classifier, TinyUNet, image, seeded
from torch import nn

import napari_attribution as na
from napari_attribution import layers as L
from napari_attribution import targets as T
from napari_attribution._attribution import SliceWise
from napari_attribution.runs.checks import explained_from
from napari_attribution.runs.jobs import ExplainRequest, _paste
from napari_attribution.runs.model_info import model_info

GEO = na.Geometry(spacing=(3.0, 0.5, 0.5), origin=(10.0, 1.0, 2.0))
TARGET_TYPES = (T.Class, T.Region, T.Voxel, T.Predicted, T.Contrast, T.ErrorRegion)


def volume(depth: int = 4, size: int = 16) -> np.ndarray:
    return np.stack([image((size, size), seed=s) for s in range(depth)])


def models() -> dict[str, nn.Module]:
    return {"classification": seeded(Classifier(2)), "segmentation": seeded(TinyUNet(2))}


def same_extras(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert a[k] == pytest.approx(b[k], rel=1e-5), k
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_slicewise_and_whole_image_results_have_the_same_field_types(task: str, method: str) -> None:
    net = models()[task]
    vol = volume()
    params = {"steps": 8} if method == "integrated_gradients" else {}
    sw = na.explain(net, vol, method, 1, params={**params, "slices": [1, 3]}, geometry=GEO)
    whole = na.explain(net, vol[3], method, 1, params=params, geometry=na.Geometry((0.5, 0.5), (1.0, 2.0)))
    for field in dataclasses.fields(na.Attribution):
        if field.name == "per_slice":
            continue
        assert type(getattr(sw, field.name)) is type(getattr(whole, field.name)), field.name
    assert isinstance(sw.target, TARGET_TYPES) and sw.target == whole.target
    assert isinstance(sw.prediction, np.ndarray) and sw.prediction.dtype == whole.prediction.dtype
    assert isinstance(sw.geometry, na.Geometry) and sw.geometry is GEO
    # no extra is keyed by slice: the values that are the same on every slice are lifted, the rest is per slice
    assert not any(isinstance(v, dict) and v and all(isinstance(k, int) for k in v) for v in sw.extras.values())
    assert sw.extras["output_channels"] == whole.extras["output_channels"]
    assert whole.per_slice is None
    assert sw.per_slice is not None and sw.per_slice.slices == (1, 3) and sw.per_slice.skipped == {}
    assert set(sw.per_slice.targets) == set(sw.per_slice.extras) == set(sw.per_slice.descriptions) == {1, 3}
    if method == "integrated_gradients":  # completeness differs per slice: kept per slice, not at the top
        assert "completeness" not in sw.extras and "completeness" in whole.extras


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_each_explained_slice_is_the_whole_image_run_on_that_slice(task: str) -> None:
    net = models()[task]
    vol = volume()
    sw = na.explain(net, vol, "integrated_gradients", None, params={"steps": 8, "slices": [0, 2]}, geometry=GEO)
    for z in (0, 2):
        whole = na.explain(net, vol[z], "integrated_gradients", None, params={"steps": 8})
        one = sw.on_slice(z)
        np.testing.assert_allclose(one.data, whole.data, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(sw.prediction[z], whole.prediction, rtol=1e-6)
        assert one.target == whole.target == sw.per_slice.targets[z]
        assert one.description == whole.description
        same_extras(one.extras, whole.extras)
        assert one.geometry == na.Geometry(spacing=(0.5, 0.5), origin=(1.0, 2.0)) and one.per_slice is None
    # slices not run: NaN map; label maps 0 (no label), class probabilities NaN
    assert np.isnan(sw.data[[1, 3]]).all()
    if task == "segmentation":
        assert sw.prediction.shape == vol.shape and sw.label_map is sw.prediction
        assert not sw.prediction[[1, 3]].any()
    else:
        assert sw.prediction.shape == (4, 3) and sw.label_map is None
        assert np.isnan(sw.prediction[[1, 3]]).all()
        np.testing.assert_allclose(sw.prediction[[0, 2]].sum(1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="Slice 1 was not explained"):
        sw.on_slice(1)
    with pytest.raises(ValueError, match="not a slice-wise result"):
        na.explain(net, vol[0], "saliency", 1).on_slice(0)


def test_a_target_given_in_volume_space_is_the_result_target() -> None:
    net = models()["segmentation"]
    vol = volume()
    mask = np.zeros(vol.shape, bool)
    mask[1, 4:8, 4:8] = True
    region = T.Region(1, mask)
    res = na.explain(net, vol, "saliency", region)
    assert res.target is region  # the volume's target; each slice's own is in per_slice
    np.testing.assert_array_equal(res.per_slice.targets[1].mask, mask[1])
    voxel = na.explain(net, vol, "saliency", T.Voxel(1, (2, 5, 6)))
    assert voxel.target == T.Voxel(1, (2, 5, 6)) and voxel.per_slice.targets[2] == T.Voxel(1, (5, 6))


def test_slices_predicting_different_classes_keep_each_slice_target() -> None:
    """``None`` resolves per slice: a slice-mean classifier predicts class 0 on bright slices, 1 on dark ones."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():  # a 2D identity, the slice mean, logits (mean, -mean)
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
        net[3].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[3].bias.zero_()
    vol = np.stack([np.full((6, 6), v, np.float32) for v in (1.0, -1.0, 2.0)])
    res = na.explain(net, vol, "saliency")
    assert dict(res.per_slice.targets) == {0: T.Class(0), 1: T.Class(1), 2: T.Class(0)}
    assert res.target == T.Class(0)  # the first explained slice's
    assert res.description.startswith("slice 0: class 0; slice 1: class 1; ...")
    assert res.description.endswith("(slice-wise, 3 slices)")
    same = na.explain(net, vol[[0, 2]], "saliency")
    assert same.description == "class 0 (slice-wise, 2 slices)"


def test_skipped_slices_have_no_prediction_and_no_target() -> None:
    class Blob2D(nn.Module):
        """Class 1 where the pixel is bright (2 output channels)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor([[[[0.0]]], [[[1.0]]]]))
                self.conv.bias.copy_(torch.tensor([0.0, -0.5]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    vol = np.zeros((3, 8, 8), np.float32)
    vol[1, 2:5, 2:5] = 1.0
    res = na.explain(Blob2D(), vol, "saliency")
    assert res.per_slice.slices == (1,) and set(res.per_slice.skipped) == {0, 2}
    assert set(res.per_slice.targets) == {1} and res.target == T.Predicted(1)
    expected = np.zeros(vol.shape, np.int16)
    expected[1, 2:5, 2:5] = 1
    np.testing.assert_array_equal(res.prediction, expected)


# ------------------------------------------------------------------------------------------------ consumers


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_layers_are_the_same_kinds_for_both_runs(task: str) -> None:
    net = models()[task]
    vol = volume()
    sw = na.explain(net, vol, "saliency", 1, params={"slices": [2]})
    whole = na.explain(net, vol[2], "saliency", 1)
    names = ["a", "b", "c"] if task == "classification" else ["bg", "fg"]
    heat_sw = L.attribution_layer(sw, source="ct", class_names=names)
    heat_whole = L.attribution_layer(whole, source="ct", class_names=names)
    assert heat_sw[2] == heat_whole[2] == "image"
    assert heat_sw[1]["name"] == heat_whole[1]["name"]  # the same target names the layer
    info_sw, info_whole = heat_sw[1]["metadata"][L.OWNER_KEY], heat_whole[1]["metadata"][L.OWNER_KEY]
    assert info_sw["slices"] == [2] and "slices" not in info_whole
    pred_sw = L.prediction_layer(sw, class_names=names)
    pred_whole = L.prediction_layer(whole, class_names=names)
    probs_sw, probs_whole = L.class_probabilities(sw, names), L.class_probabilities(whole, names)
    if task == "segmentation":
        assert pred_sw is not None and pred_whole is not None and pred_sw[2] == pred_whole[2] == "labels"
        np.testing.assert_array_equal(pred_sw[0][2], pred_whole[0])
        assert not pred_sw[0][[0, 1, 3]].any()
        assert probs_sw is None and probs_whole is None
    else:
        assert pred_sw is None and pred_whole is None
        assert set(probs_whole) == set(names) and list(probs_sw) == ["2"]
        assert probs_sw["2"] == pytest.approx(probs_whole, rel=1e-6)


def test_completeness_is_recorded_per_slice() -> None:
    net = models()["classification"]
    vol = volume()
    sw = na.explain(net, vol, "integrated_gradients", 1, params={"steps": 8, "slices": [0, 3]})
    rec = L.completeness_record(sw)
    assert set(rec) == {"0", "3"} and rec["3"]["steps"] == 8
    whole = na.explain(net, vol[3], "integrated_gradients", 1, params={"steps": 8})
    assert rec["3"]["sum"] == pytest.approx(L.completeness_record(whole)["sum"], rel=1e-5)
    assert L.completeness_record(na.explain(net, vol, "saliency", 1, params={"slices": [0]})) is None


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_a_box_run_is_pasted_in_the_scan_with_its_slices_renumbered(task: str) -> None:
    net = models()[task]
    scan = volume(6, 20)
    roi = (slice(2, 5), slice(3, 19), slice(2, 18))
    att = na.explain(net, scan[roi], "saliency", 1, params={"slices": [0, 2]})
    pasted = _paste(att, scan.shape, roi)
    assert pasted.per_slice.slices == (2, 4) and pasted.per_slice.targets[4] == att.per_slice.targets[2]
    assert pasted.extras["roi"] == [[2, 5], [3, 19], [2, 18]]
    np.testing.assert_array_equal(pasted.data[roi], att.data)
    if task == "segmentation":
        assert pasted.prediction.shape == scan.shape
        np.testing.assert_array_equal(pasted.prediction[roi], att.prediction)
        assert not pasted.prediction[0].any()
    else:
        assert pasted.prediction.shape == (6, 3)
        np.testing.assert_array_equal(pasted.prediction[2:5], att.prediction)
        assert np.isnan(pasted.prediction[[0, 1, 3, 5]]).all()
    # the checks cut the pasted map into the box's slices: each part is the box's slice of the map and the scan
    request = ExplainRequest(model=model_info(net, "net"), image=scan, source="scan", methods=["saliency"], roi=roi,
                             slices=[2, 4])
    ex = explained_from(pasted, request, "heat")
    assert ex.kind == "slice" and list(ex.parts) == ["slice 2", "slice 4"]
    part = ex.parts["slice 4"].attribution
    np.testing.assert_array_equal(part.data, att.data[2])
    np.testing.assert_array_equal(ex.parts["slice 4"].image, scan[4][roi[1:]])
    assert part.target == att.per_slice.targets[2]
    if task == "segmentation":
        np.testing.assert_array_equal(part.prediction, att.prediction[2])


def test_slicewise_record_shifts_every_index() -> None:
    sw = SliceWise((0, 2), {0: T.Class(1), 2: T.Class(0)}, {0: "a", 2: "b"}, {0: {"k": 1}, 2: {}}, {1: "why"})
    moved = sw.shifted(5)
    assert moved == SliceWise((5, 7), {5: T.Class(1), 7: T.Class(0)}, {5: "a", 7: "b"}, {5: {"k": 1}, 7: {}},
                              {6: "why"})


def test_the_task_is_learnt_from_either_kind_of_prediction() -> None:
    vol = volume()
    for task, net in models().items():
        runs = (na.explain(net, vol, "saliency", 1, params={"slices": [1]}), na.explain(net, vol[1], "saliency", 1))
        for att in runs:
            info = model_info(net, "net")
            info.task = None
            assert info.learn_from_result(att) and info.task == task
