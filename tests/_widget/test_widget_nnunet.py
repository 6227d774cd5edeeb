"""An nnU-Net v2 result folder in the Explain dock (real viewer): the fold's checkpoint picked as Browse picks a file
loads the folder around it without trust, the card in effect names nnU-Net's sliding window and mirroring, and a
saliency run gives a heatmap on the scan's grid equal to the API's map (the scan resampled to the network's
spacing inside the forward)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _widget_helpers import heatmaps, wait_idle, wait_model

import napari_attribution as na
from napari_attribution import Geometry
from napari_attribution.layers import OWNER_KEY
from napari_attribution.targets import Predicted

pytestmark = pytest.mark.gui
pytest.importorskip("dynamic_network_architectures")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import _nnunet_folder as nf  # noqa: E402

SCALE = (2.5, 0.9, 1.1)  # not the network's 2 x 1 x 1 mm: the dock's run resamples


def test_an_nnunet_fold_goes_from_browse_to_a_heatmap(make_napari_viewer: Any, qtbot: Any, tmp_path: Path) -> None:
    from napari_attribution._widget import ExplainWidget

    root = nf.write_folder(tmp_path)
    ckpt = root / "fold_0" / "checkpoint_final.pth"
    net = nf.network(0)
    with torch.no_grad():  # class 1 ("liver") wins wherever the scan is bright, so its predicted region is not empty
        net.decoder.seg_layers[-1].bias[1] += 2.0
    torch.save(nf.checkpoint(net, 0, nf.plans()), ckpt)
    rng = np.random.default_rng(0)
    image = np.full((8, 22, 20), -1000.0, np.float32)
    image[2:6, 5:17, 4:16] = 60.0
    image += rng.normal(0, 20, image.shape).astype(np.float32)

    viewer = make_napari_viewer()
    viewer.add_image(image, name="ct", scale=SCALE)
    dock = ExplainWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Explain")
    dock.load_model(str(ckpt))
    wait_model(qtbot, dock)
    assert dock.model_info.source == str(ckpt)
    text = dock.card_view.text()
    assert "nnU-Net sliding window 16x20x20, step 0.5" in text and "mirroring along axes [0, 1, 2]" in text, text

    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(1)
    dock.set_method("saliency")
    dock.run(confirm=False)
    wait_idle(qtbot, dock, timeout=120_000)
    out = dock.last_outcome
    assert out.status == "ok", out.message
    [heat] = [h for h in heatmaps(viewer) if h.metadata[OWNER_KEY]["method"] == "saliency"]
    assert heat.data.shape == image.shape
    np.testing.assert_allclose(heat.scale, SCALE)
    api = na.explain(na.load_model(ckpt), image, "saliency", Predicted(1),
                     geometry=Geometry(spacing=SCALE, origin=(0.0, 0.0, 0.0)))
    r = np.corrcoef(np.asarray(heat.data).ravel(), api.data.ravel())[0, 1]
    assert r > 0.999, r
