"""Layering (architecture.md: io -> models -> inputs -> methods -> pipeline -> metrics -> runs -> layers -> widget):
no module under ``methods/`` imports a module above it, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_attribution

PACKAGE = Path(napari_attribution.__file__).parent
ABOVE_METHODS = ("interpretation", "pipeline", "metrics", "runs", "layers", "_widget", "cli", "_cli_run")


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module that ``path`` imports (top level and inside functions), as absolute dotted names."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)  # `from .. import pipeline`
    return out


def test_imported_modules_resolves_relative_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("from ..interpretation import x\ndef g():\n    from .. import pipeline\n")
    got = imported_modules(f, "napari_attribution.methods")
    assert "napari_attribution.interpretation" in got and "napari_attribution.pipeline" in got


def test_methods_import_nothing_above_them() -> None:
    bad = []
    for path in sorted((PACKAGE / "methods").rglob("*.py")):
        package = "napari_attribution." + ".".join(path.relative_to(PACKAGE).parent.parts)
        for mod in imported_modules(path, package):
            parts = mod.split(".")
            if parts[0] == "napari_attribution" and len(parts) > 1 and parts[1] in ABOVE_METHODS:
                bad.append(f"{path.relative_to(PACKAGE)} imports {mod}")
    assert bad == []
