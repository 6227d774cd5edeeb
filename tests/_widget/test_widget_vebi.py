"""vebi from the Explain dock in a real viewer: the features file (default next to the model, or chosen), fitting
the relevant features in the worker (demo cases or a folder of scans) with progress and Cancel, never over an
existing file; a cancelled or failed fit writes nothing and gives one notification."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _widget_helpers import heatmaps, wait_idle, wait_model
from qtpy.QtCore import Qt

from napari_attribution.runs.model_info import config_dir

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(dock: Any) -> Any:
    """The conftest's Explain dock, with vebi selected."""
    widget = dock
    assert widget.model_info.source == "demo:lesion3d"
    widget.set_method("vebi")
    return widget


def features_dir() -> Path:
    return config_dir() / "features"


def fit(qtbot: Any, dock: Any, cases: int = 12) -> Any:
    dock.features.cases.setValue(cases)
    qtbot.mouseClick(dock.features.fit_button, Qt.MouseButton.LeftButton)
    assert dock.busy
    wait_idle(qtbot, dock)
    return dock.last_fit


def test_fit_from_the_gui_then_explain_with_vebi(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    box = dock.features
    assert box.isVisibleTo(dock) and "features" not in dock.params.edits
    assert box.features() is None and box.default == features_dir() / "lesion3d.vebi.npz"
    # without features: one notification that says what to do, no layer
    n = len(dock.viewer.layers)
    dock.run()
    wait_idle(qtbot, dock)
    assert len(dock.viewer.layers) == n and len(notes) == 1 and "Fit relevant features" in notes[0][1]
    notes.clear()

    out = fit(qtbot, dock)
    assert out.status == "ok", out.message
    saved = features_dir() / "lesion3d.vebi.npz"
    assert saved.is_file() and box.features() == str(saved) and out.features.info["n_images"] == 12
    assert dock.progress.value() == 1000 and len(notes) == 1 and "saved as" in notes[0][1]
    notes.clear()

    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "ok", dock.last_outcome.message
    [heat] = heatmaps(dock.viewer)
    info = heat.metadata["napari_attribution"]
    assert info["method"] == "vebi" and info["params"]["features"] == str(saved)
    assert np.nanmin(heat.data) >= 0 and np.nanmax(heat.data) == pytest.approx(1.0)  # vebi's map is in [0, 1]
    assert not notes

    # a second fit keeps the first file and says so; the new file is used from now on
    before = saved.read_bytes()
    out = fit(qtbot, dock, cases=6)
    assert out.status == "ok" and saved.read_bytes() == before
    assert box.features() == str(features_dir() / "lesion3d.vebi-2.npz") and "already existed" in notes[-1][1]

    # the default file is filled in when the model is loaded again
    box.set_features(None)
    dock.load_model("demo:lesion3d")
    wait_model(qtbot, dock)
    assert box.features() == str(saved)


def test_cancel_a_fit_leaves_no_file(dock: Any, qtbot: Any, notes: list[Any]) -> None:
    dock.features.cases.setValue(20_000)  # about a minute of work
    qtbot.mouseClick(dock.features.fit_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.progress.value() > 0, timeout=30_000)
    assert dock.cancel_button.isEnabled() and not dock.run_button.isEnabled()
    assert not dock.features.fit_button.isEnabled()
    qtbot.mouseClick(dock.cancel_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, dock)
    assert dock.last_fit.status == "cancelled"
    assert not features_dir().exists() or not list(features_dir().iterdir())
    assert dock.features.features() is None
    assert len(notes) == 1 and "cancelled" in notes[0][1] and "no file" in notes[0][1]


def test_fit_on_a_folder_of_scans_and_choose_a_file(dock: Any, qtbot: Any, notes: list[Any],
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qtpy.QtWidgets import QFileDialog

    from napari_attribution.interpretation import demo_cases
    from napari_attribution.io import Geometry, write_nifti

    folder = tmp_path / "scans"
    folder.mkdir()
    lines = ["file,label"]
    for i, case in enumerate(demo_cases("demo:lesion3d", 6, seed=7)):
        write_nifti(folder / f"case{i}.nii.gz", case.image, Geometry(spacing=case.spacing, origin=(0.0, 0.0, 0.0)))
        lines.append(f"case{i}.nii.gz,{'lesion' if case.label else 'no lesion'}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder)))
    dock.features.data.setCurrentIndex(1)
    out = fit(qtbot, dock)
    assert out.status == "ok", out.message
    assert out.features.info["n_images"] == 6 and out.features.info["labels"] == "given"
    assert "labels.csv" in out.message and Path(dock.features.features()).is_file()

    # an empty folder: one error notification, no file
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(empty)))
    files = sorted(features_dir().iterdir())
    notes.clear()
    out = fit(qtbot, dock)
    assert out.status == "failed" and sorted(features_dir().iterdir()) == files
    assert len(notes) == 1 and "No scans" in notes[0][1] and "Traceback" not in notes[0][1]

    # Features file… picks an existing file
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(files[0]), "")))
    dock.features.set_features(None)
    qtbot.mouseClick(dock.features.choose, Qt.MouseButton.LeftButton)
    assert dock.features.features() == str(files[0])
    assert dock.method_params()["vebi"]["features"] == str(files[0])
