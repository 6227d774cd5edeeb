"""Fixtures for the tests of the Qt-free runs layer (no napari needed): recent models and features kept out of the
user's config."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recent models and default features files go to a temporary folder, never to the user's config."""
    monkeypatch.setenv("NAPARI_ATTRIBUTION_CONFIG_DIR", str(tmp_path / "config"))
