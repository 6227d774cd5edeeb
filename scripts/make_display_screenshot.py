"""The user guide's display screenshots from the real viewer: RISE on the abdominal CT slab phantom with the 3D
contrast-phase demo, clear outside the body (the default for perturbation methods), then the same map shown
everywhere.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/make_display_screenshot.py

Writes docs/images/explain_body_mask.png and docs/images/explain_body_mask_off.png. Look at them before
committing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def main() -> int:
    import napari
    from napari.layers import Layer
    from PIL import Image
    from qtpy.QtWidgets import QApplication, QScrollArea

    from napari_attribution._sample_data import contrast_phase_slab
    from napari_attribution._widget import ExplainWidget

    app = QApplication.instance() or QApplication(sys.argv)

    def wait(cond, timeout: float = 600.0) -> None:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        while not cond():
            app.processEvents()
            time.sleep(0.005)
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError
        for _ in range(30):
            app.processEvents()
            time.sleep(0.01)

    viewer = napari.Viewer(title="napari-attribution")
    viewer.window.resize(1500, 980)
    for ldt in contrast_phase_slab():
        viewer.add_layer(Layer.create(*ldt))
    scan, marks = viewer.layers[0], viewer.layers[1]
    marks.visible = False
    viewer.layers.selection.active = scan
    dock = ExplainWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Explain").setMinimumWidth(560)
    wait(lambda: dock.model_info is not None and not dock.busy)
    dock.model.set_source("demo:contrast-phase-3d")
    wait(lambda: dock.model_info is not None and dock.model_info.source == "demo:contrast-phase-3d" and not dock.busy)
    viewer.canvas.overlays.text.visible = False
    for mode, name in (("auto", "explain_body_mask.png"), ("none", "explain_body_mask_off.png")):
        dock.display.outside.setCurrentIndex(dock.display.outside.findData(mode))
        dock.set_method("rise", masks=1000)
        dock.run(confirm=False)
        wait(lambda: not dock.busy and dock.last_outcome is not None)
        assert dock.last_outcome.status == "ok", dock.last_outcome.message
        viewer.canvas.overlays.text.visible = False
        heat = [la for la in viewer.layers if (la.metadata.get("napari_attribution") or {}).get("role") == "heatmap"]
        hidden = int(np.isnan(np.asarray(heat[-1].data)).sum())
        print(name, "hidden voxels:", hidden, "limits", heat[-1].contrast_limits)
        viewer.dims.set_current_step(0, np.shape(scan.data)[0] // 2)
        viewer.reset_view()
        area = dock.findChild(QScrollArea)
        if area is not None:  # the Result section with the display row
            area.ensureWidgetVisible(dock.display, 0, 120)
            area.horizontalScrollBar().setValue(0)
        wait(lambda: True)
        Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(OUT / name)
        print("wrote", OUT / name)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
