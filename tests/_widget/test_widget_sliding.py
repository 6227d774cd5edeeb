"""A model whose card has a sliding-window inferer in the Explain dock (real viewer): from the card file to heatmap
layers that line up with the scan and equal the API's maps, the inferer shown in the card in effect, the status
counting windows with a progress bar that never goes back, Cancel answering within one chunk of windows, and a 2D
model with a 2D inferer on a volume explaining only the current slice."""

from __future__ import annotations

import hashlib
import json
import time
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


def write_card(tmp_path: Path, dims: int, roi: list[int], **inferer: Any) -> Path:
    """A small MONAI UNet, its seeded weights and a card with a sliding-window inferer."""
    from monai.networks.nets import UNet

    kwargs = {"spatial_dims": dims, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
              "num_res_units": 0}
    torch.manual_seed(0)
    weights = tmp_path / f"unet{dims}d.pt"
    torch.save(UNet(**kwargs).eval().state_dict(), weights)
    card = {"factory": "monai.networks.nets:UNet", "kwargs": kwargs, "task": "segmentation", "spatial_dims": dims,
            "in_channels": 1, "num_classes": 2, "class_names": ["background", "lesion"],
            "weights": weights.name, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "inferer": {"type": "sliding_window", "roi_size": roi, "overlap": 0.25, "mode": "gaussian", **inferer}}
    path = tmp_path / f"unet{dims}d.card.json"
    path.write_text(json.dumps(card))
    return path


def scan() -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    blob = np.exp(-((z - 0.2) ** 2 + (y + 0.1) ** 2 + x ** 2) * 6.0)
    return (blob + 0.1 * np.random.default_rng(0).normal(size=SHAPE)).astype(np.float32)


def open_dock(make_napari_viewer: Any, qtbot: Any, card: Path, image: np.ndarray) -> tuple[Any, Any]:
    from napari_attribution._widget import ExplainWidget

    viewer = make_napari_viewer()
    viewer.add_image(image, name="ct", scale=SCALE)
    dock = ExplainWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Explain")
    dock.load_model(str(card))
    wait_model(qtbot, dock)
    assert dock.model_info.source == str(card)
    return viewer, dock


def record_progress(dock: Any) -> list[tuple[int, str]]:
    """What the dock shows at each progress report: the bar's value and the status line."""
    seen: list[tuple[int, str]] = []
    relay = dock.runner._on_progress

    def show(done: int, total: int, message: str) -> None:
        relay(done, total, message)
        seen.append((dock.progress.value(), dock.status.text()))

    dock.runner._on_progress = show
    return seen


def test_a_sliding_window_card_goes_to_heatmaps_that_line_up_with_the_scan(make_napari_viewer: Any, qtbot: Any,
                                                                           tmp_path: Path) -> None:
    card = write_card(tmp_path, 3, [24, 24, 24], sw_batch_size=1)  # one window per chunk: a report per window
    image = scan()
    viewer, dock = open_dock(make_napari_viewer, qtbot, card, image)
    windows = na.load_model(card).card.sliding_window.plan(SHAPE).count()
    text = dock.card_view.text()
    assert "sliding window 24x24x24, overlap 0.25, gaussian blending" in text
    assert f"{windows} windows over {SHAPE}" in text and "attribution of the stitched output" in text
    assert '"roi_size": [24, 24, 24]' in dock.card_view.toolTip()
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(1)
    seen = record_progress(dock)
    loaded = na.load_model(card)
    api = {m: na.explain(loaded, image, m, Predicted(1), geometry=Geometry(spacing=SCALE, origin=(0.0, 0.0, 0.0)))
           for m in ("saliency", "grad_cam")}
    for method in ("saliency", "grad_cam"):
        seen.clear()
        dock.set_method(method)
        dock.run(confirm=False)
        wait_idle(qtbot, dock, timeout=120_000)
        out = dock.last_outcome
        assert out.status == "ok", out.message
        [heat] = [h for h in heatmaps(viewer) if h.metadata[OWNER_KEY]["method"] == method]
        assert heat.data.shape == image.shape
        np.testing.assert_allclose(heat.scale, SCALE)
        np.testing.assert_allclose(heat.translate, viewer.layers["ct"].translate)
        r = np.corrcoef(np.asarray(heat.data).ravel(), api[method].data.ravel())[0, 1]
        assert r > 0.999, (method, r)
        assert out.results[method].extras.get("windows", windows) == windows
        # the status counts windows; the bar never goes back through the stitched forward and the windows' backward
        assert any(f"windows {windows}/{windows}" in status for _, status in seen), seen
        bars = [v for v, _ in seen]
        assert bars == sorted(bars), seen
        second = "backward" if method == "saliency" else "layer"
        assert any(f"{second}: windows" in status for _, status in seen)


def test_cancel_answers_within_one_chunk_of_windows(make_napari_viewer: Any, qtbot: Any, tmp_path: Path) -> None:
    card = write_card(tmp_path, 3, [24, 24, 24])  # chunks by time: each at most about 2 s
    viewer, dock = open_dock(make_napari_viewer, qtbot, card, scan())
    dock.set_method("integrated_gradients", steps=64)
    seen = record_progress(dock)
    dock.run(confirm=False)
    qtbot.waitUntil(lambda: any("windows" in status for _, status in seen), timeout=60_000)
    t0 = time.perf_counter()
    dock.cancel()
    wait_idle(qtbot, dock, timeout=30_000)
    answered = time.perf_counter() - t0
    assert dock.last_outcome.status == "cancelled"
    assert heatmaps(viewer) == []
    assert answered < 2.0 + 1.0, answered  # one chunk (at most about 2 s), and the event loop's turn


def test_a_2d_inferer_on_a_volume_runs_only_the_current_slice(make_napari_viewer: Any, qtbot: Any,
                                                               tmp_path: Path) -> None:
    card = write_card(tmp_path, 2, [24, 24])
    image = scan()
    viewer, dock = open_dock(make_napari_viewer, qtbot, card, image)
    assert dock.scope.slices.currentText() == "current slice"
    net = dock.model_info.model.module
    runs: list[int] = []
    handle = net.register_forward_hook(lambda m, i, o: runs.append(int(i[0].shape[0])))
    viewer.dims.set_current_step(0, 17)
    dock.set_method("saliency")
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    handle.remove()
    out = dock.last_outcome
    assert out.status == "ok", out.message
    att = out.results["saliency"]
    assert att.per_slice is not None and list(att.per_slice.slices) == [17]
    windows = na.load_model(card).card.sliding_window.plan(SHAPE[1:]).count()
    # the slice's windows: one stitched forward, each window's forward + backward, one window measured
    assert 2 * windows <= sum(runs) <= 2 * windows + 2, (runs, windows)  # the whole volume: 40 times that
    [heat] = heatmaps(viewer)
    data = np.asarray(heat.data)
    assert np.isfinite(data[17]).all() and np.abs(data[17]).max() > 0
    assert not np.isfinite(data[:17]).any() and not np.isfinite(data[18:]).any()


def test_the_status_line_counts_windows_with_the_time_left(make_napari_viewer: Any, qtbot: Any,
                                                           tmp_path: Path) -> None:
    """Windows of 1 s forward and 3 s forward + backward, reported as the library reports them: the bar goes once
    through both passes and the status line says the time really left."""
    from napari_attribution._progress import Eta, WindowStages

    card = write_card(tmp_path, 3, [24, 24, 24])
    viewer, dock = open_dock(make_napari_viewer, qtbot, card, scan())
    now = [0.0]
    dock._window_stages, dock._eta = WindowStages(), Eta(clock=lambda: now[0])
    shown = []
    for kind, seconds in (("forward", 1.0), ("backward", 3.0)):
        for k in range(1, 5):
            now[0] += seconds
            dock._on_progress(k, 4, f"saliency: {kind}: windows {k}/4")
            shown.append((dock.progress.value(), dock.status.text()))
    assert shown[1] == (125, "saliency: forward: windows 2/4 (about 14 s left)")
    assert shown[5] == (625, "saliency: backward: windows 2/4 (about 6.0 s left)")
    assert shown[-1] == (1000, "saliency: backward: windows 4/4")
