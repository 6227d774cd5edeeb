"""Open napari with the plugin docked, the demo scan and the demo model loaded (``napari-attribution demo``)."""

from __future__ import annotations

from typing import Any

from napari.layers import Layer

__all__ = ["open_demo", "run_demo"]


def open_demo(viewer: Any = None, *, model: str = "demo:lesion3d", compare: bool = True) -> tuple[Any, Any]:
    """Add the lesion phantom sample (``lesion-ct``: layers ``lesion phantom CT`` and ``lesion mask``, the mask
    hidden so the heatmap is seen first) to ``viewer`` (a new one by default), dock Explain (and Compare) with
    the demo model selected; returns ``(viewer, explain_widget)``."""
    import napari

    from .._sample_data import lesion_ct

    if viewer is None:
        viewer = napari.Viewer(title="napari-attribution demo")
    layers = [viewer.add_layer(Layer.create(*ldt)) for ldt in lesion_ct()]
    layers[1].visible = False  # the answer: the user ticks its eye after looking at the heatmap
    if compare:  # Compare first, Explain tabified over it: Explain is the tab in front
        viewer.window.add_plugin_dock_widget("napari-attribution", "Compare methods")
    _dock, explain = viewer.window.add_plugin_dock_widget("napari-attribution", "Explain", tabify=compare)
    viewer.layers.selection.active = layers[0]
    explain.image.select(layers[0])
    if explain.model.source() != model:
        explain.model.set_source(model)
    return viewer, explain


def run_demo() -> None:
    """``napari-attribution demo``: open the demo viewer and run napari's event loop until the window closes."""
    import sys

    import napari

    open_demo()
    print("napari is open with the lesion phantom and the demo model: press Explain (close the window to quit).",
          file=sys.stderr)
    napari.run()
