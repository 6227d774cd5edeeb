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
    """Factory of a tiny 3D segmenter with a known answer: class 1 where the local mean exceeds ~120 HU (the
    phantom's lesion), class 0 elsewhere; conv -> ReLU -> 1x1 conv, so gradient and CAM methods apply."""

    @staticmethod
    def make() -> Any:
        import torch
        from torch import nn

        net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv3d(2, 2, 1))
        with torch.no_grad():
            net[0].weight.fill_(1.0 / 27 / 100)
            net[0].bias.fill_(-1.2)
            net[2].weight.zero_()
            net[2].bias.zero_()
            net[2].weight[1, :, 0, 0, 0] = 1.0
            net[2].bias[1] = -0.01
        return net.eval()
