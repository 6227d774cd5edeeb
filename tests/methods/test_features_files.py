"""interpretation helpers for the widget: saving features without replacing a file (no partial file on failure),
labels of a folder of scans from a CSV, and generated demo cases as a data set to fit on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import napari_attribution as na
from napari_attribution.interpretation import (
    RelevantFeatures,
    demo_cases,
    features_path_for,
    read_labels_csv,
    save_features_beside,
)


def _features() -> RelevantFeatures:
    return RelevantFeatures(("a", "b"), (2, 1), np.arange(6, dtype=float).reshape(3, 2), ("x", "y"), 10.0)


def test_save_beside_never_replaces_a_file(tmp_path: Path) -> None:
    model = tmp_path / "net.pt"
    model.write_bytes(b"weights")
    first = save_features_beside(_features(), model)
    assert first == features_path_for(model) == tmp_path / "net.vebi.npz"
    before = first.read_bytes()
    second = save_features_beside(_features(), model)
    third = save_features_beside(_features(), first)  # the .npz path itself works the same way
    assert second.name == "net.vebi-2.npz" and third.name == "net.vebi-3.npz"
    assert first.read_bytes() == before
    assert RelevantFeatures.load(second).W.tolist() == _features().W.tolist()
    # a folder that does not exist yet (the config folder's features/) is created
    nested = save_features_beside(_features(), tmp_path / "cfg" / "features" / "demo.vebi.npz")
    assert nested.is_file()


def test_failed_save_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise OSError("disk full")

    target = tmp_path / "m.vebi.npz"
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_features_beside(_features(), target)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_read_labels_csv(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\ncase01.nii.gz,1\ncase02,lesion\n\ncase03.nii,0\n")
    assert read_labels_csv(csv, ("no lesion", "lesion")) == {"case01.nii.gz": 1, "case02": 1, "case03.nii": 0}
    csv.write_text("case01.nii.gz,1\ncase02,maybe\n")
    with pytest.raises(na.ReaderError, match="line 2.*'maybe'"):
        read_labels_csv(csv, ("no lesion", "lesion"))
    csv.write_text("file,label\n")
    with pytest.raises(na.ReaderError, match="no 'file,label' line"):
        read_labels_csv(csv)


def test_demo_cases_are_a_lazy_labelled_data_set_to_fit_on() -> None:
    cases = demo_cases("demo:lesion3d", 6)
    assert len(cases) == 6 and len(cases[1:3]) == 2
    again = demo_cases("lesion3d", 6)
    np.testing.assert_array_equal(cases[2].image, again[2].image)  # deterministic
    assert {cases[i].label for i in range(6)} <= {0, 1}
    with pytest.raises(IndexError):
        cases[6]
    feats = na.fit_relevant_features(na.load_model("demo:lesion3d"), cases)
    assert feats.info["n_images"] == 6 and feats.class_names == ("no lesion", "lesion")
    with pytest.raises(na.ModelLoadError, match="no demo model"):
        demo_cases("demo:nope", 3)
