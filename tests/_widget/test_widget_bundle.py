"""A MONAI bundle folder in the Explain dock (real viewer): picked with "Browse for a model folder", it loads with
the bundle's sliding-window inferer (roi_size reversed to numpy order) and intensity window in the card in effect,
the transforms that are not reproduced named in a PreprocessingWarning (a warning notification in the dock), and a
saliency run gives a heatmap on the scan's grid equal to the API's map of the same bundle."""

from __future__ import annotations

import json
import warnings
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
pytest.importorskip("monai")

SHAPE = (40, 48, 44)
SCALE = (1.5, 0.8, 0.8)
UNET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
        "strides": [2], "num_res_units": 0}


def write_bundle(root: Path) -> Path:
    """A bundle folder as MONAI writes one: configs/inference.json (network_def, preprocessing, inferer),
    configs/metadata.json, models/model.pt (seeded weights)."""
    from monai.networks.nets import UNet

    config = {
        "network_def": UNET,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -100, "a_max": 300, "b_min": 0.0,
             "b_max": 1.0, "clip": True},
        ]},
        # MONAI's (x, y, z): the window is 24 x 20 x 16 voxels along x, y, z, smaller than the scan on every axis
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [24, 20, 16], "sw_batch_size": 2,
                    "overlap": 0.25, "mode": "gaussian"},
    }
    metadata = {"name": "tiny lesion segmenter", "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1,
                             "spatial_shape": [24, 20, 16]}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "channel_def": {"0": "background", "1": "lesion"}}}}}
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.manual_seed(0)
    net = UNet(**{k: v for k, v in UNET.items() if k != "_target_"})
    with torch.no_grad():  # "lesion" wins where the scaled scan is bright, so its predicted region is not empty
        net.model[-1].conv.bias[1] += 0.3  # type: ignore[index, union-attr]
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def scan() -> np.ndarray:
    """A CT-like scan in Hounsfield units: a bright blob in soft tissue, noise."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    blob = np.exp(-((z - 0.2) ** 2 + (y + 0.1) ** 2 + x ** 2) * 6.0)
    noise = np.random.default_rng(0).normal(0, 15, SHAPE)
    return (40.0 + 200.0 * blob + noise).astype(np.float32)


def test_a_bundle_folder_goes_from_browse_to_a_heatmap(make_napari_viewer: Any, qtbot: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       notes: list[Any]) -> None:
    from qtpy.QtWidgets import QFileDialog

    from napari_attribution._widget import ExplainWidget
    from napari_attribution._widget._form import BROWSE_FOLDER

    bundle = write_bundle(tmp_path / "lesion_bundle")
    image = scan()
    viewer = make_napari_viewer()
    viewer.add_image(image, name="ct", scale=SCALE)
    dock = ExplainWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Explain")

    # the user picks "Browse for a model folder…" and chooses the bundle folder
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(bundle)))
    combo = dock.model.combo
    i = combo.findText(BROWSE_FOLDER)
    assert i >= 0
    combo.setCurrentIndex(i)
    combo.activated.emit(i)
    wait_model(qtbot, dock)
    assert dock.model_info is not None and dock.model_info.source == str(bundle)
    assert combo.currentData() == str(bundle) and combo.currentText() == "lesion_bundle"
    assert combo.findText(BROWSE_FOLDER) == combo.count() - 1  # the folder is listed before the Browse items
    assert dock.model.recent.list()[0] == str(bundle)  # a folder is a recent model, as a file is
    # the step that is not reproduced is named in a warning when the bundle loads
    [warned_in_dock] = [m for level, m in notes if "asks for steps this tool does not reproduce" in m]
    assert "Orientationd" in warned_in_dock and "ScaleIntensityRanged" not in warned_in_dock
    assert dock.model_status.text().startswith("lesion_bundle: 3D segmentation, classes: background, lesion")

    text = dock.card_view.text()
    assert "sliding window 16x20x24, overlap 0.25, gaussian blending" in text, text  # (x, y, z) -> (z, y, x)
    windows = dock.model_info.model.card.sliding_window.plan(SHAPE).count()
    assert windows > 1 and f"{windows} windows over {SHAPE}" in text, text

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = na.load_model(bundle)
    [warned] = [w for w in caught if issubclass(w.category, na.PreprocessingWarning)]
    assert "Orientationd" in str(warned.message)
    assert loaded.card.preprocess is not None and loaded.card.preprocess["window"] == [-100.0, 300.0]
    assert loaded.card.class_names == ("background", "lesion")

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
    np.testing.assert_allclose(heat.translate, viewer.layers["ct"].translate)
    assert out.results["saliency"].extras.get("windows", windows) == windows
    api = na.explain(loaded, image, "saliency", Predicted(1), geometry=Geometry(spacing=SCALE, origin=(0.0, 0.0, 0.0)))
    data = np.asarray(heat.data)
    assert np.ptp(data) > 0
    r = np.corrcoef(data.ravel(), api.data.ravel())[0, 1]
    assert r > 0.999, r
