"""The npe2 manifest in a real viewer: the docks, the reader, the writer and the sample data; the CLI demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _widget_helpers import heatmaps, wait_idle, wait_model

from napari_attribution.targets import Predicted

pytestmark = pytest.mark.gui


def test_manifest_is_valid() -> None:
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-attribution")
    names = {w.display_name for w in manifest.contributions.widgets}
    assert names == {"Explain", "Compare methods"}
    assert manifest.contributions.readers and manifest.contributions.writers and manifest.contributions.sample_data


def test_docks_open_through_the_plugin_and_work_on_the_proxy_viewer(phantom_viewer: Any, qtbot: Any) -> None:
    """napari hands plugin widgets a proxy of the viewer: layer identities differ, names do not."""
    from napari_attribution._widget import CompareWidget, ExplainWidget
    from napari_attribution.layers import OWNER_KEY

    viewer = phantom_viewer
    _, explain = viewer.window.add_plugin_dock_widget("napari-attribution", "Explain")
    _, comp = viewer.window.add_plugin_dock_widget("napari-attribution", "Compare methods")
    assert isinstance(explain, ExplainWidget) and isinstance(comp, CompareWidget)
    wait_model(qtbot, explain)
    wait_model(qtbot, comp)
    explain.run()
    wait_idle(qtbot, explain)
    [heat] = heatmaps(viewer)
    assert heat.colorbar.visible
    comp.set_methods(["saliency", "grad_cam"])
    comp.run()
    wait_idle(qtbot, comp)
    assert comp.last_outcome.status == "ok"
    visible = [la for la in viewer.layers if la.visible]
    roles = sorted(la.metadata.get(OWNER_KEY, {}).get("role", "user") for la in visible)
    assert roles == ["heatmap", "heatmap", "underlay", "underlay"] and viewer.canvas.grid.enabled
    comp.side_by_side.setChecked(False)
    assert viewer.layers["phantom"].visible and viewer.layers["lesion"].visible


def test_sample_reader_and_writer_in_the_viewer(make_napari_viewer: Any, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample("napari-attribution", "lesion-ct")
    scan = viewer.layers["lesion phantom CT"]
    np.testing.assert_allclose(scan.scale, (2.0, 0.8, 0.8))
    out = tmp_path / "phantom.nii.gz"
    written = scan.save(str(out), plugin="napari-attribution")
    assert written and Path(written[0]).exists()
    [layer] = viewer.open(str(out), plugin="napari-attribution")
    np.testing.assert_allclose(layer.scale, scan.scale, rtol=1e-6)
    np.testing.assert_allclose(layer.data, scan.data, rtol=1e-6)


def test_cli_demo_opens_the_viewer_with_dock_scan_and_model(make_napari_viewer: Any, qtbot: Any) -> None:
    from napari_attribution._widget._launch import DEMO_SOURCE, open_demo

    viewer = make_napari_viewer()
    viewer, explain = open_demo(viewer)
    wait_model(qtbot, explain)
    assert explain.model_info.source == DEMO_SOURCE  # the vessel segmenter with its sliding-window card
    assert explain.image.currentText() == "head CTA"
    assert viewer.layers["head CTA"].data.shape == (100, 256, 256)  # a scan of clinical size
    assert not viewer.layers["vessel truth"].visible
    # the target: the vessel class summed over the voxels the model labels vessel, as in the headless demo
    target = explain.target.target(viewer.layers["head CTA"], (100, 256, 256))
    assert isinstance(target, Predicted) and target.k == 1
    explain.run()  # the big scan's estimated cost asks first; the demo itself starts without asking
    wait_idle(qtbot, explain)
    assert explain.last_outcome.status == "confirm" and not heatmaps(viewer)
    explain.run(confirm=False)
    wait_idle(qtbot, explain, timeout=600_000)
    assert explain.last_outcome.status == "ok" and len(heatmaps(viewer)) == 1
    assert heatmaps(viewer)[0].colorbar.visible
