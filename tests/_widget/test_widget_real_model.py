"""The Explain dock on the real-scan test case (issue 10): a 64^3-only TorchScript brain extractor with one logit
channel and its card, on nilearn's MNI152 template at 90 x 110 x 80, 2.0 x 1.6 x 2.2 mm, opened with that spacing
as the layer's scale. The dock must apply the card (resize to the network's input shape) exactly as the API does:
the same maps (r > 0.999), the brain drawn as label 1, and the predicted-voxel count of an independent threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _real_mri import NET, OCCLUSION, SPACING, independent_foreground, load_mri
from _widget_helpers import heatmaps, wait_idle, wait_model

import napari_attribution as na
from napari_attribution.layers import OWNER_KEY
from napari_attribution.targets import Predicted

pytestmark = pytest.mark.gui
pytest.importorskip("nilearn")


def test_dock_gives_the_api_maps_on_a_real_scan_with_a_fixed_size_torchscript_net(make_napari_viewer: Any,
                                                                                   qtbot: Any) -> None:
    from napari_attribution._widget import ExplainWidget

    scan, _, geometry = load_mri()
    viewer = make_napari_viewer()
    viewer.add_image(scan, name="t1", scale=SPACING)
    dock = ExplainWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Explain")
    dock.load_model(str(NET))
    wait_model(qtbot, dock)
    assert dock.image.currentText() == "t1"
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(0)
    api = na.compare(na.load_model(NET), scan, ["saliency", "occlusion"], Predicted(0), geometry=geometry,
                     params={"occlusion": OCCLUSION})
    fg = independent_foreground(na.load_model(NET).module, scan)
    for method, params in (("saliency", {}), ("occlusion", OCCLUSION)):
        dock.set_method(method, **params)
        dock.run(confirm=False)
        wait_idle(qtbot, dock, timeout=120_000)
        out = dock.last_outcome
        assert out.status == "ok", out.message
        [heat] = [h for h in heatmaps(viewer) if h.metadata[OWNER_KEY]["method"] == method]
        assert heat.data.shape == scan.shape
        np.testing.assert_allclose(heat.scale, SPACING)
        shown = np.asarray(heat.data)
        ok = np.isfinite(shown)  # occlusion's layer is clear outside the head (the map itself is not)
        assert ok.all() if method == "saliency" else 0.2 < ok.mean() < 1
        r = np.corrcoef(shown[ok], api[method].data[ok])[0, 1]
        assert r > 0.999, (method, r)
        [pred] = [la for la in viewer.layers if la.metadata.get(OWNER_KEY, {}).get("role") == "prediction"]
        assert np.array_equal(np.asarray(pred.data) == 1, fg)
        assert dock.prediction.text() == f"predicted voxels: 0: brain: {int(fg.sum())}"


def test_loading_a_model_from_python_shows_it_in_the_model_drop_down(dock: Any, qtbot: Any) -> None:
    dock.load_model(str(NET))
    wait_model(qtbot, dock)
    assert dock.model.combo.currentData() == str(NET) and dock.model.combo.currentText() == NET.name
    assert dock.model_info.source == str(NET)
