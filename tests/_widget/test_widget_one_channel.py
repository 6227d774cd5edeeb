"""The Explain dock on a one-output-channel segmenter (brain-extraction style) in a real viewer: the class list is
"0: brain" only (no contrast), the prediction draws the brain as label 1 and the dock says "predicted voxels:
0: brain", and the layer sweep's "in target" column is the share inside the brain that an independent threshold of
the output gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _one_channel import OneChannelSegmenter, energy_inside, foreground
from _widget_helpers import heatmaps, wait_idle

import napari_attribution as na
from napari_attribution.layers import OWNER_KEY

pytestmark = pytest.mark.gui


def test_one_channel_dock_names_class_0_and_sweeps_inside_the_foreground(dock: Any, qtbot: Any,
                                                                        notes: list[Any]) -> None:
    viewer = dock.viewer
    net = OneChannelSegmenter()
    card = na.ModelCard(task="segmentation", spatial_dims=3, in_channels=1, class_names=["brain"])
    dock.set_model(na.LoadedModel(net, card), source="brain extraction")
    assert dock.model_info.n_classes == 1
    form = dock.target
    assert [form.k1.itemText(i) for i in range(form.k1.count())] == ["0: brain"]
    kinds = [form.kind.itemText(i) for i in range(form.kind.count())]
    assert "class vs class" not in kinds and "predicted region of class" in kinds
    assert "label 1" in form.k1.toolTip()
    form.set_kind("predicted region of class")
    dock.set_method("grad_cam")
    dock.set_sweep(["mean", "act"])
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    out = dock.last_outcome
    assert out.status == "ok", out.message
    fg = foreground(net, np.asarray(viewer.layers["phantom"].data, np.float32))
    [pred] = [la for la in viewer.layers if la.metadata.get(OWNER_KEY, {}).get("role") == "prediction"]
    assert (pred.data == fg).all() and pred.metadata["label_names"] == {1: "brain"}
    assert dock.prediction.text() == f"predicted voxels: 0: brain: {int(fg.sum())}"
    [heat] = heatmaps(viewer)
    assert heat.name.startswith("grad_cam by layer · predicted brain")
    table = dock.sweep_table
    assert not table.isColumnHidden(2)
    for r, att in enumerate(out.results.values()):
        expected = energy_inside(att.data, fg)
        assert table.item(r, 2).text() == f"{100 * expected:.1f} %"
        assert out.sweep[r]["energy"] == pytest.approx(expected, rel=1e-5)
    assert not [n for n in notes if n[0] == "error"]
