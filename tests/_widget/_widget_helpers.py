"""Helpers shared by the widget tests (constants, waiting, a segmentation model with a known answer)."""

from __future__ import annotations

from typing import Any

PHANTOM_SCALE = (2.0, 0.8, 0.8)
PHANTOM_TRANSLATE = (-10.0, 5.0, 3.0)


def wait_idle(qtbot: Any, dock: Any, timeout: int = 60_000) -> None:
    """Wait until the dock neither loads a model nor runs."""
    qtbot.waitUntil(lambda: not dock.busy, timeout=timeout)


def wait_model(qtbot: Any, dock: Any, timeout: int = 60_000) -> None:
    qtbot.waitUntil(lambda: dock.model_info is not None and not dock.loading, timeout=timeout)


def heatmaps(viewer: Any) -> list[Any]:
    from napari_attribution.layers import OWNER_KEY

    return [la for la in viewer.layers if la.metadata.get(OWNER_KEY, {}).get("role") == "heatmap"]


class ThresholdSegmenter:
    """Factory of the tiny 3D segmenter with a known answer (:func:`napari_attribution._demo.threshold_segmenter`):
    class 1 where the local mean exceeds ~120 HU (the phantom's lesion), class 0 elsewhere."""

    @staticmethod
    def make() -> Any:
        from napari_attribution._demo import threshold_segmenter

        return threshold_segmenter()
