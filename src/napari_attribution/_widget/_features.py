"""vebi's relevant features in the Explain dock: the file the method reads (next to the model by default, or
chosen) and a button that fits them over a data set. The fit itself runs in the dock's worker
(:func:`~napari_attribution.runs.jobs.fit_job`); this box only collects the choices."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtGui import QStandardItemModel
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..runs.model_info import ModelInfo, default_features_path

__all__ = ["FeaturesBox"]

FEATURES_FILTER = "Relevant features (*.npz);;All files (*)"


class FeaturesBox(QWidget):
    """The features file of ``vebi`` and how to make one: **Features file…** picks a saved file; **Fit relevant
    features…** calls ``on_fit(data)`` with ``"demo"`` (generated cases of a demo model) or a folder of scans."""

    DATA = ("generated demo cases", "a folder of scans…")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.on_fit: Callable[[str], object] | None = None
        self.default: Path | None = None
        self.path = QLineEdit()
        self.path.setPlaceholderText("none yet: choose a file or fit them")
        self.path.setToolTip("The relevant-features file (.npz) vebi reads; made by 'Fit relevant features…' or by "
                             "napari_attribution.interpretation.fit_relevant_features")
        self.choose = QPushButton("Features file…")
        self.data = QComboBox()
        self.data.addItems(self.DATA)
        self.data.setToolTip("What to fit the features on: cases generated for a demo model (with their labels), or "
                             "a folder of NIfTI / DICOM scans (labels from a labels.csv in the folder, else the "
                             "model's own predictions)")
        self.cases = QSpinBox()
        self.cases.setRange(2, 100_000)
        self.cases.setValue(40)
        self.cases.setSuffix(" cases")
        self.cases.setToolTip("How many demo cases to generate")
        self.mu = QDoubleSpinBox()
        self.mu.setRange(0.01, 1000.0)
        self.mu.setDecimals(2)
        self.mu.setValue(10.0)
        self.mu.setToolTip("mu: the L1 bound of each class's weights (the paper's tau = 10); smaller = fewer "
                           "relevant features")
        self.fit_button = QPushButton("Fit relevant features…")
        self.note = QLabel("")
        self.note.setWordWrap(True)

        file_row = QWidget()
        row = QHBoxLayout(file_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path, 1)
        row.addWidget(self.choose)
        data_row = QWidget()
        row = QHBoxLayout(data_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.data, 1)
        row.addWidget(self.cases)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("features", file_row)
        form.addRow("fit on", data_row)
        form.addRow("mu", self.mu)
        form.addRow(self.fit_button)
        form.addRow(self.note)

        self.choose.clicked.connect(self._choose)
        self.fit_button.clicked.connect(self._fit)
        self.data.currentIndexChanged.connect(self._update)
        self.set_model(None)

    # ------------------------------------------------------------------ state
    def set_model(self, info: ModelInfo | None) -> None:
        """A new model: its default features file (filled in when it exists) and the data sets it can use."""
        demo = info is not None and info.source.startswith("demo:")
        model = self.data.model()
        if isinstance(model, QStandardItemModel):
            item = model.item(0)
            if item is not None:
                item.setEnabled(demo)
        self.data.setCurrentIndex(0 if demo else 1)
        self.default = default_features_path(info.source, info.label) if info is not None else None
        self.path.setText(str(self.default) if self.default is not None and self.default.is_file() else "")
        self._update()

    def _update(self, *_: Any) -> None:
        self.cases.setVisible(self.data.currentIndex() == 0)
        where = f"Fitted features are saved as '{self.default}'" if self.default else ""
        if where and self.default is not None and self.default.exists():
            where += " (exists: a new fit gets a numbered name, the file is kept)"
        self.note.setText(where + "." if where else "")

    def features(self) -> str | None:
        """The features path (None when empty)."""
        text = self.path.text().strip()
        return text or None

    def set_features(self, path: str | Path | None) -> None:
        self.path.setText("" if path is None else str(path))
        self._update()

    # ------------------------------------------------------------------ actions
    def _choose(self) -> None:
        start = self.features() or (str(self.default.parent) if self.default is not None else "")
        path, _ = QFileDialog.getOpenFileName(self, "Relevant features for vebi", start, FEATURES_FILTER)
        if path:
            self.set_features(path)

    def _fit(self) -> None:
        data = "demo"
        if self.data.currentIndex() == 1:
            data = QFileDialog.getExistingDirectory(self, "Folder of scans to fit the relevant features on")
            if not data:
                return
        if self.on_fit is not None:
            self.on_fit(data)
