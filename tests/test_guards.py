"""The project's own guards: the import contract covers every core module, and the widget package holds only Qt.

CI runs ruff, mypy (strict), import-linter (pyproject's contract) and the doctests from scripts/test.sh; these tests
keep the contract complete as modules are added and list the modules under ``_widget/`` that import no Qt/napari."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_attribution"
GUI = ("qtpy", "napari", "magicgui", "superqt", "vispy")

#: Modules under _widget/ without a Qt/napari import: only the package's __init__ (it imports only its Qt modules).
#: Qt-free logic belongs in napari_attribution.runs; a module added here is a defect.
QT_FREE_IN_WIDGET = {"__init__"}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of the file (function-level imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_the_import_contract_lists_every_core_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    [contract] = [c for c in config["contracts"] if c["type"] == "forbidden"]
    listed = {m.removeprefix("napari_attribution.") for m in contract["source_modules"]}
    present = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    present |= {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    core = present - {"_widget"}
    assert core - listed == set(), "core modules missing from the Qt-free import contract"
    assert listed - core == set(), "the contract names modules that do not exist"
    assert {"qtpy", "napari", "magicgui", "napari_attribution._widget"} <= set(contract["forbidden_modules"])


def test_widget_modules_without_a_qt_import_are_only_the_known_ones() -> None:
    qt_free = {p.stem for p in (PKG / "_widget").glob("*.py") if not _imports(p) & set(GUI)}
    assert qt_free == QT_FREE_IN_WIDGET
