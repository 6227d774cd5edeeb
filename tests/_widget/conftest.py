"""Fixtures for the widget tests: a real napari viewer (make_napari_viewer, under Xvfb) with the demo phantom, a
recorder of napari notifications, recent models kept out of the user's config."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _widget_helpers import PHANTOM_SCALE, PHANTOM_TRANSLATE, wait_model

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recent models go to a temporary folder, never to the user's config."""
    monkeypatch.setenv("NAPARI_ATTRIBUTION_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def notes() -> Iterator[list[Any]]:
    """Every napari notification shown during the test (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen: list[Any] = []

    def record(event: Any) -> None:
        n = getattr(event, "value", event)
        seen.append((str(n.severity), str(n.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def phantom_viewer(make_napari_viewer: Any) -> Any:
    """A viewer with the lesion phantom (3D, 2 x 0.8 x 0.8 mm, shifted origin) and its lesion mask."""
    from napari_attribution._demo import phantom

    viewer = make_napari_viewer()
    vol, mask = phantom(np.random.default_rng(7), lesion=True)
    viewer.add_image(vol, name="phantom", scale=PHANTOM_SCALE, translate=PHANTOM_TRANSLATE,
                     metadata={"original_affine": np.diag([0.8, 0.8, 2.0, 1.0]).tolist()})
    viewer.add_labels(mask.astype(np.int32), name="lesion", scale=PHANTOM_SCALE, translate=PHANTOM_TRANSLATE)
    viewer.layers.selection.active = viewer.layers["phantom"]
    return viewer


@pytest.fixture
def compare(phantom_viewer: Any, qtbot: Any) -> Any:
    """The Compare dock, docked in the phantom viewer, with its default demo model loaded."""
    from napari_attribution._widget import CompareWidget

    widget = CompareWidget(phantom_viewer)
    phantom_viewer.window.add_dock_widget(widget, name="Compare")
    wait_model(qtbot, widget)
    return widget


@pytest.fixture
def dock(phantom_viewer: Any, qtbot: Any) -> Any:
    """The Explain dock, docked in the phantom viewer, with its default demo model loaded."""
    from napari_attribution._widget import ExplainWidget

    widget = ExplainWidget(phantom_viewer)
    phantom_viewer.window.add_dock_widget(widget, name="Explain")
    wait_model(qtbot, widget)
    return widget
