"""The one-channel rule (a sigmoid or a single logit, e.g. brain extraction): the class index is the output channel,
so the foreground is class 0 (``Predicted(0)``, the default); the prediction draws it as label 1; every region,
count and table measures that channel's region (output > 0 for logits, > 0.5 for probabilities), never
``label == 0``; class 1 is refused with a message naming class 0. Several channels: unchanged (``label == k``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _one_channel import OneChannelSegmenter, energy_inside, foreground, phantom

import napari_attribution as na
from napari_attribution import Attribution
from napari_attribution.metrics import layer_sweep_table, target_region
from napari_attribution.targets import (
    Class,
    Contrast,
    ErrorRegion,
    Predicted,
    Region,
    Voxel,
    class_of_label,
    class_region,
    predicted_labels,
    resolve_target,
)


def test_class_region_one_channel_is_the_foreground_several_channels_the_label() -> None:
    labels = np.array([[0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(class_region(labels, 0, 1), labels == 1)
    np.testing.assert_array_equal(class_region(labels, 0, 2), labels == 0)  # a 2-class model's background
    np.testing.assert_array_equal(class_region(labels, 1, 2), labels == 1)
    # a ground-truth mask saved as 0/255 for a one-channel model: every positive label is foreground
    np.testing.assert_array_equal(class_region(labels * 255, 0, 1), labels == 1)
    mask = labels.astype(bool)
    assert class_region(mask, 0, 1) is mask  # a boolean mask is already a region
    t = torch.tensor([0, 1, 2])
    assert class_region(t, 0, 1).tolist() == [False, True, True]
    assert class_region(t, 2, 3).tolist() == [False, False, True]
    with pytest.raises(na.TargetError, match=r"one output channel.*Class\(0\)"):
        class_region(labels, 1, 1)
    with pytest.raises(na.TargetError, match="3 output classes"):
        class_region(labels, 3, 3)
    assert [class_of_label(v, 1) for v in (0, 1)] == [0, 0]
    assert [class_of_label(v, 3) for v in (1, 2)] == [1, 2] and class_of_label(1, None) == 1


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
def test_resolve_one_channel_default_is_the_foreground_of_class_0(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    raw = torch.randn((1, 1, 6, 7, 8), generator=g)
    out = torch.sigmoid(raw) if kind == "probabilities" else raw
    fg = (raw[0, 0] > 0).numpy()  # the same voxels either way: sigmoid(x) > 0.5 iff x > 0
    assert 0 < fg.sum() < fg.size
    np.testing.assert_array_equal(predicted_labels(out[0], kind).numpy(), fg.astype(int))  # foreground drawn as 1
    for target in (None, 0, Predicted(0)):
        res = resolve_target(target, out, task="segmentation", output_kind=kind, class_names=["brain"])
        assert res.spec == Predicted(0)
        np.testing.assert_array_equal(res.weights[0].numpy() != 0, fg)
        assert res.extras["region_voxels"] == int(fg.sum())
        assert "class 0 (brain)" in res.description
    # false positives / negatives against a 0/1 ground-truth label map: the foreground of the truth, not label 0
    truth = np.zeros(fg.shape, np.uint8)
    truth[:3] = 1
    fp = resolve_target(ErrorRegion(0, truth, "fp"), out, task="segmentation", output_kind=kind)
    fn = resolve_target(ErrorRegion(0, truth, "fn"), out, task="segmentation", output_kind=kind)
    np.testing.assert_array_equal(fp.weights[0].numpy() != 0, fg & (truth == 0))
    np.testing.assert_array_equal(fn.weights[0].numpy() != 0, ~fg & (truth == 1))


def test_class_1_on_one_channel_names_class_0_in_python_and_on_the_command_line() -> None:
    out = torch.randn((1, 1, 4, 5, 6), generator=torch.Generator().manual_seed(1))
    for target, py, cli in ((Predicted(1), "Predicted(0)", "predicted:0"), (1, "Predicted(0)", "predicted:0"),
                            (Voxel(1, (0, 0, 0)), "Voxel(0, index)", "voxel:0:z,y,x"),
                            (Region(1, np.ones((4, 5, 6), bool)), "Region(0, mask)", "region:0:MASK.nii.gz"),
                            (ErrorRegion(1, np.ones((4, 5, 6), bool)), "ErrorRegion(0, truth)", "error:0:")):
        with pytest.raises(na.TargetError) as err:
            resolve_target(target, out, task="segmentation", class_names=["brain"])
        text = str(err.value)
        assert py in text and f"--target {cli}" in text and "brain" in text and "label 1" in text, text
    with pytest.raises(na.TargetError, match=r"two output channels.*predicted:0"):
        resolve_target(Contrast(0, 1), out, task="segmentation")
    # a one-output classifier: class 0 is its only class too
    with pytest.raises(na.TargetError, match=r"Class\(0\).*class:0"):
        resolve_target(Class(1), out[:, :, 0, 0, 0], task="classification")
    # several channels: the old message, class 1 exists
    two = torch.randn((1, 2, 4, 5, 6), generator=torch.Generator().manual_seed(2))
    assert resolve_target(Predicted(1), two, task="segmentation").spec == Predicted(1)
    with pytest.raises(na.TargetError, match="the model has 2 output classes"):
        resolve_target(Predicted(2), two, task="segmentation")


def _att(data: np.ndarray, target: object, prediction: np.ndarray, **extras: object) -> Attribution:
    return Attribution(np.asarray(data, np.float32), "grad_cam", target, "l", {}, False, 0.1,
                       prediction=prediction, extras=dict(extras))


def test_target_region_one_channel_and_several_channels() -> None:
    pred = np.zeros((4, 5), np.int16)
    pred[1:3, 1:4] = 1  # one channel: the foreground, class 0
    data = np.ones((4, 5))
    truth = np.zeros((4, 5), np.uint8)
    truth[2:4, 2:4] = 1
    fg = pred == 1
    np.testing.assert_array_equal(target_region(_att(data, Predicted(0), pred), channels=1), fg)
    np.testing.assert_array_equal(target_region(_att(data, Predicted(0), pred, output_channels=1)), fg)
    fp = target_region(_att(data, ErrorRegion(0, truth, "fp"), pred), channels=1)
    np.testing.assert_array_equal(fp, fg & (truth == 0))
    # unknown channel count: class 0 is the foreground of one channel or the background of several: no guess
    assert target_region(_att(data, Predicted(0), pred)) is None
    # several channels: label == k, as before (class 0 is the background there)
    multi = np.zeros((4, 5), np.int16)
    multi[0, :2] = 2
    multi[1:3, 1:4] = 1
    for k in (0, 1, 2):
        np.testing.assert_array_equal(target_region(_att(data, Predicted(k), multi), channels=3), multi == k)
    np.testing.assert_array_equal(target_region(_att(data, Predicted(2), multi)), multi == 2)  # k >= 1: no doubt
    assert target_region(_att(data, Predicted(1), pred), channels=1) is None  # not a class of that model


@pytest.mark.parametrize("probabilities", [False, True])
def test_one_channel_explain_and_layer_table_measure_the_foreground(probabilities: bool) -> None:
    net = OneChannelSegmenter(probabilities)
    card = na.ModelCard(task="segmentation", spatial_dims=3, in_channels=1, class_names=["brain"],
                        output="probabilities" if probabilities else "logits")
    model = na.LoadedModel(net, card)
    vol = phantom()
    fg = foreground(net, vol, probabilities)
    res = na.explain(model, vol, "saliency")  # the default target: Predicted(0)
    assert res.target == Predicted(0) and f"({int(fg.sum())} voxels)" in res.description
    np.testing.assert_array_equal(np.asarray(res.prediction), fg.astype(np.int16))  # foreground drawn as 1
    layers = ["mean", "act"]
    sweep = na.explain_layers(model, vol, "grad_cam", layers, Predicted(0))
    region = target_region(next(iter(sweep.values())), channels=1)
    np.testing.assert_array_equal(region, fg)
    rows = layer_sweep_table(sweep, region)
    for row, att in zip(rows, sweep.values(), strict=True):
        assert row["energy"] == pytest.approx(energy_inside(att.data, fg), rel=1e-6)
        # the map spills over the foreground, so a wrong region changes the number; the background (label 0),
        # which the table used to measure, gives the small remainder
        assert 0.5 < row["energy"] < 0.99 and energy_inside(att.data, ~fg) < 0.5
