"""Regenerate the user guide's screenshots from the real viewer (``viewer.screenshot``).

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python docs/make_screenshots.py [landmarks] [sweep] [trust]

Writes docs/images/explain_classification.png, explain_segmentation.png, compare_grid.png and
explain_2d_on_3d.png, then explain_landmarks.png and explain_layer_sweep.png; with arguments, only the named
extra screenshots (``landmarks``, ``sweep``, ``trust``: explain_trust.png). Look at them before committing: they
are what a new user sees.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"


def main(argv: list[str] | None = None) -> int:
    extra = [a for a in (argv or []) if a in EXTRA]
    if extra:
        for name in extra:
            EXTRA[name]()
        return 0
    classic()
    for fn in EXTRA.values():
        fn()
    return 0


def _app(timeout: float = 300.0) -> tuple[object, object, object]:
    """The Qt application and two helpers: ``wait(cond)`` (processing events) and ``shot(viewer, name)``."""
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv)
    OUT.mkdir(parents=True, exist_ok=True)

    def wait(cond, timeout: float = timeout) -> None:
        t0 = time.perf_counter()
        while not cond():
            app.processEvents()
            time.sleep(0.005)
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError
        for _ in range(30):
            app.processEvents()
            time.sleep(0.01)

    def shot(viewer, name: str) -> None:
        wait(lambda: True)
        Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(OUT / name)
        print("wrote", OUT / name)

    return app, wait, shot


def _show_results(dock) -> None:
    """Scroll the dock to its end, where the result tables are."""
    from qtpy.QtWidgets import QScrollArea

    area = dock.findChild(QScrollArea)
    bar = area.verticalScrollBar() if area is not None else None
    if bar is not None:
        bar.setValue(bar.maximum())


def _sample_with_dock(sample, model: str, dock_class, name: str, width: int | None = None):
    """A viewer with a sample's layers (scan first, its mask second) and a dock of ``dock_class`` set to ``model``."""
    import napari
    from napari.layers import Layer

    _app_, wait, shot = _app()
    viewer = napari.Viewer(title="napari-attribution")
    viewer.window.resize(1500, 980)
    for ldt in sample():
        viewer.add_layer(Layer.create(*ldt))
    scan, marks = viewer.layers[0], viewer.layers[1]
    viewer.layers.selection.active = scan
    dock = dock_class(viewer)
    widget = viewer.window.add_dock_widget(dock, name=name)
    if width is not None:
        widget.setMinimumWidth(width)
    wait(lambda: dock.model_info is not None and not dock.busy)
    dock.model.set_source(model)
    wait(lambda: dock.model_info is not None and dock.model_info.source == model and not dock.busy)
    return viewer, scan, marks, dock, wait, shot


def _slab_with_dock(dock_class, name: str, width: int):
    """The abdominal slab phantom (its evidence structures as outlined landmarks) with the 3D contrast-phase demo."""
    from napari_attribution._sample_data import contrast_phase_slab

    out = _sample_with_dock(contrast_phase_slab, "demo:contrast-phase-3d", dock_class, name, width)
    out[2].opacity, out[2].contour = 1.0, 1
    return out


def _landmark_shot(viewer, marks, dock, wait, shot, name: str) -> None:
    """Show the slice where the landmarks are largest and the dock's result tables, take the shot, close."""
    viewer.dims.set_current_step(0, int(np.argmax((marks.data > 0).sum((1, 2)))))
    viewer.reset_view()
    wait(lambda: True)
    _show_results(dock)
    shot(viewer, name)
    viewer.close()


def landmarks() -> None:
    """The 3D contrast-phase demo on the abdominal slab phantom: response back-projection, compared with the
    evidence structures (aorta, IVC, portal vein, liver, kidney) painted as landmarks."""
    from napari_attribution._widget import ExplainWidget

    viewer, scan, marks, dock, wait, shot = _slab_with_dock(ExplainWidget, "Explain", 540)  # room for every column
    dock.set_method("response_backprojection")
    dock.run(confirm=False)
    wait(lambda: not dock.busy)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    viewer.layers.move(viewer.layers.index(marks), len(viewer.layers))  # the outlines on top
    dock.landmarks.choose(labels=marks.name)
    viewer.canvas.overlays.text.visible = False  # the class probabilities: in the dock too
    _landmark_shot(viewer, marks, dock, wait, shot, "explain_landmarks.png")


def layer_sweep() -> None:
    """The vessel segmentation demo: Grad-CAM for the predicted vessels at six layers, shallow to deep, in one
    layer whose slider moves through the network, with the per-layer table."""
    from napari_attribution._sample_data import vessel_mra
    from napari_attribution._widget import ExplainWidget

    viewer, scan, truth, dock, wait, shot = _sample_with_dock(vessel_mra, "demo:vessel-seg", ExplainWidget, "Explain")
    truth.visible = False
    dock.set_method("grad_cam")
    dock.set_sweep(["enc1", "enc2", "bottleneck", "dec2", "dec1.relu1", "dec1"])
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(1)
    dock.run(confirm=False)
    wait(lambda: not dock.busy)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    pred = next(la for la in viewer.layers if la.name.startswith("prediction"))
    pred.contour, pred.opacity = 1, 0.5
    viewer.dims.set_point(0, 4)  # the network layer "dec1.relu1"
    viewer.dims.set_current_step(1, 24)
    viewer.reset_view()
    wait(lambda: True)
    _show_results(dock)
    shot(viewer, "explain_layer_sweep.png")
    viewer.close()


def compare_landmarks() -> None:
    """The 3D contrast-phase demo on the abdominal slab: four methods compared side by side and against the evidence
    structures painted as landmarks (seed 000's comparison, across methods)."""
    from napari_attribution._widget import CompareWidget

    viewer, scan, marks, dock, wait, shot = _slab_with_dock(CompareWidget, "Compare methods", 560)
    dock.set_methods(["response_backprojection", "grad_cam", "integrated_gradients", "occlusion"])
    dock.run(confirm=False)
    wait(lambda: not dock.busy)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    dock.landmarks.choose(labels=marks.name)
    wait(lambda: dock.landmarks.result is not None)
    marks.visible = False  # the grid shows the maps; the table compares them with the landmarks
    viewer.canvas.overlays.text.visible = False
    _landmark_shot(viewer, marks, dock, wait, shot, "compare_landmarks.png")


def trust() -> None:
    """The vessel segmentation demo: integrated gradients for the predicted vessels, then "Check this map" with
    every check — deletion and insertion against a random order of the voxels, the randomisation sanity check,
    max-sensitivity — and the completeness integrated gradients reports."""
    from qtpy.QtWidgets import QScrollArea

    from napari_attribution._sample_data import vessel_mra
    from napari_attribution._widget import ExplainWidget
    from napari_attribution._widget._trust import CHECKS

    viewer, scan, truth, dock, wait, shot = _sample_with_dock(vessel_mra, "demo:vessel-seg", ExplainWidget, "Explain",
                                                              560)  # room for the verdicts
    truth.visible = False
    dock.set_method("integrated_gradients", steps=16)
    dock.target.set_kind("predicted region of class")
    dock.target.k1.setCurrentIndex(1)
    dock.run(confirm=False)
    wait(lambda: not dock.busy)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    pred = next(la for la in viewer.layers if la.name.startswith("prediction"))
    pred.contour, pred.opacity = 1, 0.5  # the predicted vessels outlined over the heatmap
    dock.trust.choose(checks=list(CHECKS))
    assert dock.trust.run()
    wait(lambda: not dock.busy)
    assert dock.trust.last is not None and dock.trust.last.status == "ok", dock.trust.message
    print(f"checks in {dock.trust.last.seconds:.1f} s\n{dock.trust.csv()}")
    viewer.dims.set_current_step(0, 24)
    viewer.reset_view()
    wait(lambda: True)
    area = dock.findChild(QScrollArea)
    if area is not None:  # the whole box in view, down to the line under its table
        area.ensureWidgetVisible(dock.trust.summary, 0, 10)
        area.ensureWidgetVisible(dock.trust, 0, 0)
    shot(viewer, "explain_trust.png")
    viewer.close()


EXTRA = {"landmarks": landmarks, "sweep": layer_sweep, "compare_landmarks": compare_landmarks, "trust": trust}


def classic() -> int:
    import napari

    from napari_attribution._demo import phantom, threshold_segmenter
    from napari_attribution._widget._launch import open_demo

    app, wait, shot = _app()

    def run(dock) -> None:
        dock.run(confirm=False)
        wait(lambda: not dock.busy)
        assert dock.last_outcome.status == "ok", dock.last_outcome.message

    # 1. the demo: Explain a classification (lesion vs no lesion) with integrated gradients
    viewer = napari.Viewer(title="napari-attribution")
    viewer.window.resize(1500, 980)
    viewer, explain = open_demo(viewer)
    wait(lambda: explain.model_info is not None and not explain.busy)
    lesion = viewer.layers["lesion mask"].data
    z = int(np.argmax(lesion.sum((1, 2))))
    viewer.dims.set_current_step(0, z)
    explain.set_method("integrated_gradients", steps="auto")  # adaptive: the map is complete (error < 1 %)
    explain.target.set_kind("class")
    explain.target.k1.setCurrentIndex(1)
    run(explain)
    truth = viewer.layers["lesion mask"]
    truth.visible, truth.contour, truth.opacity = True, 1, 1.0
    viewer.layers.move(viewer.layers.index(truth), len(viewer.layers))  # the lesion outline on top
    viewer.layers.selection.active = viewer.layers[[la.name for la in viewer.layers].index(
        next(la.name for la in viewer.layers if la.name.startswith("integrated")))]
    viewer.reset_view()
    shot(viewer, "explain_classification.png")

    # 2. a segmentation model from Python (dock.set_model): explain a region drawn as a Labels layer
    net = threshold_segmenter()  # class 1 where the local mean exceeds ~120 HU: a stand-in lesion segmenter
    for la in [la for la in viewer.layers if la.name.startswith("integrated")]:
        viewer.layers.remove(la)
    viewer.canvas.overlays.text.visible = False
    explain.set_model(net, source="lesion segmenter (Python)")
    explain.set_method("input_x_gradient")
    explain.target.set_kind("region from Labels layer")
    explain.target.labels.setCurrentText("lesion mask")
    explain.target.k1.setCurrentIndex(1)
    run(explain)
    viewer.layers["lesion mask"].visible = False
    shot(viewer, "explain_segmentation.png")

    # 3. Compare: four methods side by side, the scan under each map, agreement table
    for la in [la for la in viewer.layers if la.name not in ("lesion phantom CT", "lesion mask")]:
        viewer.layers.remove(la)
    compare_dock, compare = viewer.window.add_plugin_dock_widget("napari-attribution", "Compare methods")
    compare_dock.raise_()
    wait(lambda: compare.model_info is not None and not compare.busy)
    compare.set_methods(["saliency", "integrated_gradients", "grad_cam", "occlusion"])
    compare.target.set_kind("class")
    compare.target.k1.setCurrentIndex(1)
    run(compare)
    viewer.reset_view()
    _show_results(compare)  # the agreement tables in full (the dock's inputs scroll out at the top)
    shot(viewer, "compare_grid.png")
    compare.side_by_side.setChecked(False)
    viewer.close()

    # 4. a 2D model on a volume: the current slice, following the slider
    viewer = napari.Viewer(title="napari-attribution")
    viewer.window.resize(1500, 980)
    viewer, explain = open_demo(viewer, compare=False)
    wait(lambda: explain.model_info is not None and not explain.busy)
    net2d = train_2d_classifier(phantom)
    explain.set_model(net2d.eval(), source="2D lesion classifier (Python)")
    explain.set_method("grad_cam")
    explain.target.set_kind("class")
    explain.target.k1.setCurrentIndex(1)
    truth = viewer.layers["lesion mask"]
    truth.visible, truth.contour, truth.opacity = True, 1, 1.0
    explain.scope.slices.setCurrentIndex(1)  # follow the slider
    for zz in (z - 3, z):
        viewer.dims.set_current_step(0, zz)
        run(explain)
    viewer.reset_view()
    shot(viewer, "explain_2d_on_3d.png")
    viewer.close()
    return 0


def train_2d_classifier(phantom, seconds: float = 20.0):
    """A small 2D CNN trained for a few seconds on phantom slices (lesion in the slice or not)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2),
                        nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        xs, ys = [], []
        for _ in range(16):
            vol, mask = phantom(rng, bool(rng.integers(0, 2)))
            k = int(rng.integers(0, vol.shape[0]))
            xs.append(np.clip((vol[k] - 40) / 300, -1, 1))
            ys.append(int(mask[k].any()))
        logits = net(torch.from_numpy(np.stack(xs)[:, None].astype(np.float32)))
        loss = nn.functional.cross_entropy(logits, torch.tensor(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
    class Window(nn.Module):  # the soft-tissue window, part of the model (as in the 3D demo)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.clamp((x - 40.0) / 300.0, -1.0, 1.0)

    return nn.Sequential(Window(), net).eval()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
