"""Open napari with the plugin docked, the demo scan and the demo model loaded (``napari-attribution demo``)."""

from __future__ import annotations

from typing import Any

from napari.layers import Layer

__all__ = ["DEMO_SOURCE", "demo_layers", "open_demo", "run_demo"]

#: the model of the demo: ``demo:vessel-cta``, the vessel UNet for head CTA with a CT window and a 48^3 sliding-window
#: inferer
DEMO_SOURCE = "demo:vessel-cta"


def demo_layers() -> list[Any]:
    """The demo scan as layer data tuples: the head CT angiogram (``head CTA``, HU, 100 x 256 x 256 at
    0.5 x 0.7 x 0.7 mm) and the generator's vessels (``vessel truth``)."""
    from .._demo import SEED
    from .._sample_data import _pair
    from ..io import Geometry
    from ..models.demo import head_cta_phantom

    case = head_cta_phantom(SEED)
    geometry = Geometry(spacing=case.spacing, origin=(0.0, 0.0, 0.0))
    meta = {"source": "napari-attribution phantom (synthetic, no patient)", "generator": "head_cta_phantom",
            "seed": SEED, "units": "HU", "modality": "CT", "class_index": 1, "class_names": ["background", "vessel"],
            "demo_model": DEMO_SOURCE}
    mask_meta = {"source": meta["source"], "label_names": {1: "vessel"},
                 "description": "the generator's vessels: voxel centres inside a contrast-filled tube"}
    layers = _pair(case.image, case.mask.astype("uint8"), geometry, "head CTA", "vessel truth", meta, mask_meta,
                   (-100.0, 500.0))
    layers[1][1]["colormap"] = {None: "transparent", 0: "transparent", 1: "lime"}
    return list(layers)


def open_demo(viewer: Any = None, *, model: str = DEMO_SOURCE, compare: bool = True,
              explain: bool = False) -> tuple[Any, Any]:
    """Add the demo scan (:func:`demo_layers`; the truth hidden so the heatmap is seen first) to ``viewer`` (a new
    one by default), dock Explain (and Compare) with the demo model selected, and with ``explain`` start the
    explanation at once (it runs in the dock's worker: the viewer stays responsive); returns
    ``(viewer, explain_widget)``. ``model`` another source (``"demo:lesion3d"``) loads that model instead."""
    import napari

    if viewer is None:
        viewer = napari.Viewer(title="napari-attribution demo")
    layers = [viewer.add_layer(Layer.create(*ldt)) for ldt in demo_layers()]
    layers[1].visible = False  # the answer: the user ticks its eye after looking at the heatmap
    for extra in layers[2:]:
        extra.visible = False
    if compare:  # Compare first, Explain tabified over it: Explain is the tab in front
        viewer.window.add_plugin_dock_widget("napari-attribution", "Compare methods")
    _dock, dock = viewer.window.add_plugin_dock_widget("napari-attribution", "Explain", tabify=compare)
    viewer.layers.selection.active = layers[0]
    dock.image.select(layers[0])
    if model == DEMO_SOURCE:
        from ..models.demo import vessel_cta_model

        dock.set_model(vessel_cta_model(), source=DEMO_SOURCE)
        # the vessel class summed over the voxels the model labels vessel, as the headless demo explains it
        dock.target.set_kind("predicted region of class")
        dock.target.k1.setCurrentIndex(1)
    elif dock.model.source() != model:
        dock.model.set_source(model)
    if explain:
        dock.run(confirm=False)
    return viewer, dock


def run_demo() -> None:
    """``napari-attribution demo``: open the demo viewer, start explaining, and run napari's event loop until the
    window closes."""
    import sys

    import napari

    open_demo(explain=True)
    print("napari is open with a head CT angiogram and the demo vessel segmenter; the explanation runs in the "
          "background (close the window to quit).", file=sys.stderr)
    napari.run()
