"""The user guide's display screenshots from the real viewer: RISE on the abdominal CT slab phantom with the 3D
contrast-phase demo, clear outside the body (the default for perturbation methods), then the same map shown
everywhere.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/make_display_screenshot.py

Writes docs/images/explain_body_mask.png and docs/images/explain_body_mask_off.png. Look at them before
committing.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/make_display_screenshot.py --mri

writes docs/images/display_mri.png instead: saliency of the brain-extraction network tests/data/brain_unet64.ts
(with its card) for Predicted(0) on nilearn's MNI152 template as the tests load it (tests/_real_mri.py), hidden
outside the body, limits from inside the prediction, the prediction layer shown; it prints the share of positive
values of the layer inside the prediction and the prediction's share of the volume.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def _helpers() -> tuple[object, object]:
    """``wait(cond)`` (processing Qt events) and ``shot(viewer, name)``: docs/make_screenshots.py's helpers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_screenshots", OUT.parents[0] / "make_screenshots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, wait, shot = module._app(timeout=600.0)
    return wait, shot


def mri() -> int:
    """The display screenshot on a real MRI: see the module's docstring."""
    import napari
    from PIL import Image
    from qtpy.QtWidgets import QScrollArea

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _real_mri import NET, SPACING, load_mri

    from napari_attribution._widget import ExplainWidget

    wait, _ = _helpers()
    scan, _, _ = load_mri()
    viewer = napari.Viewer(title="napari-attribution")
    viewer.window.resize(1500, 980)
    viewer.add_image(scan, name="t1", scale=SPACING)
    dock = ExplainWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Explain").setMinimumWidth(560)
    dock.load_model(str(NET))
    wait(lambda: dock.model_info is not None and dock.model_info.source == str(NET) and not dock.busy)
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(0)
    dock.display.outside.setCurrentIndex(dock.display.outside.findData("all"))
    dock.display.region.setCurrentIndex(dock.display.region.findData("auto"))
    dock.set_method("saliency")
    dock.run(confirm=False)
    wait(lambda: not dock.busy and dock.last_outcome is not None)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    owned = [(la, (la.metadata.get("napari_attribution") or {}).get("role")) for la in viewer.layers]
    [heat] = [la for la, role in owned if role == "heatmap"]
    [pred] = [la for la, role in owned if role == "prediction"]
    shown, inside = np.asarray(heat.data), np.asarray(pred.data) == 1
    finite = np.isfinite(shown)
    positive = finite & (shown > 0)
    print(f"prediction: {inside.mean():.1%} of the volume; layer shown (not hidden) on {finite.mean():.1%}")
    mass = np.where(finite, shown, 0.0)
    print(f"positive values of the layer inside the prediction: {(positive & inside).sum() / positive.sum():.1%} "
          f"of {int(positive.sum())}; sum of the layer inside it: {mass[inside].sum() / mass.sum():.1%}")
    print("limits", heat.contrast_limits, "from", heat.metadata["napari_attribution"].get("contrast_region"))
    viewer.canvas.overlays.text.visible = False
    viewer.dims.set_current_step(0, scan.shape[0] // 2)
    viewer.reset_view()
    area = dock.findChild(QScrollArea)
    if area is not None:
        area.ensureWidgetVisible(dock.display, 0, 120)
        area.horizontalScrollBar().setValue(0)
    wait(lambda: True)
    Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(OUT / "display_mri.png")
    print("wrote", OUT / "display_mri.png")
    viewer.close()
    return 0


def main() -> int:
    if "--mri" in sys.argv[1:]:
        return mri()
    import napari
    from napari.layers import Layer
    from PIL import Image
    from qtpy.QtWidgets import QScrollArea

    from napari_attribution._sample_data import contrast_phase_slab
    from napari_attribution._widget import ExplainWidget


    wait, _ = _helpers()

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
