"""Layering (issue 12): the interpretation package, VEBI's modules and the model loaders import no private name
from another module, and the interpretation package reaches the pipeline only through top-level imports of public
names (no import hidden inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import napari_attribution

PACKAGE = Path(napari_attribution.__file__).parent
CHECKED = [
    "interpretation",
    "methods/vebi.py",
    "methods/_features.py",
    "methods/_features_file.py",
    "models/_load.py",
    "models/_bundle.py",
    "models/_build.py",
]


def _files(entry: str) -> list[Path]:
    path = PACKAGE / entry
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _package(path: Path) -> str:
    return ".".join(["napari_attribution", *path.relative_to(PACKAGE).parent.parts])


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def private_imports(source: str, package: str) -> list[str]:
    """``module: name`` for every private name the module ``source`` (in ``package``) imports from another
    napari_attribution module."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            mod = _absolute(node, package)
            if mod.startswith("napari_attribution"):
                out += [f"{mod}: {a.name}" for a in node.names if a.name.startswith("_")]
    return out


def hidden_imports(source: str, package: str, target: str) -> list[str]:
    """Imports of ``target`` (or a module inside it) made inside a function of the module ``source``."""
    out = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and _absolute(node, package).startswith(target):
                    out.append(f"{fn.name}: {_absolute(node, package)}")
    return out


def test_the_checks_see_private_and_hidden_imports() -> None:
    text = "from ..pipeline import _task, explain\ndef f():\n    from ..pipeline import task_of\n"
    pkg = "napari_attribution.interpretation"
    assert private_imports(text, pkg) == ["napari_attribution.pipeline: _task"]
    assert hidden_imports(text, pkg, "napari_attribution.pipeline") == ["f: napari_attribution.pipeline"]
    assert private_imports("from __future__ import annotations\nfrom ._x import y\n", pkg) == []


@pytest.mark.parametrize("entry", CHECKED)
def test_no_private_name_crosses_a_module(entry: str) -> None:
    found = [f"{p.relative_to(PACKAGE)} imports {hit}" for p in _files(entry)
             for hit in private_imports(p.read_text(encoding="utf-8"), _package(p))]
    assert found == []


def test_interpretation_reaches_the_pipeline_only_at_top_level() -> None:
    assert (PACKAGE / "interpretation").is_dir()
    found = [f"{p.name}: {hit}" for p in _files("interpretation")
             for hit in hidden_imports(p.read_text(encoding="utf-8"), _package(p), "napari_attribution.pipeline")]
    assert found == []


def test_interpretation_keeps_its_public_names() -> None:
    import napari_attribution.interpretation as interp

    assert set(interp.__all__) == {
        "DemoCases", "Feature", "FeatureVisualisation", "FeaturesExistError", "LassoResult", "RelevantFeatures",
        "average_visualisations", "demo_cases", "features_file", "features_path_for", "fit_relevant_features",
        "mu_lasso", "project_l1_ball", "read_labels_csv", "save_features_beside",
    }
    assert all(hasattr(interp, name) for name in interp.__all__)
    assert napari_attribution.RelevantFeatures is interp.RelevantFeatures
    assert napari_attribution.fit_relevant_features is interp.fit_relevant_features


def test_the_model_loaders_import_each_other_one_way() -> None:
    """``_load`` -> ``_bundle`` -> ``_build`` and ``_load`` -> ``_build``; nothing back (not even in a function)."""
    loaders = ("_load", "_bundle", "_build")
    edges = set()
    for name in loaders:
        path = PACKAGE / "models" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                mod = _absolute(node, "napari_attribution.models").rsplit(".", 1)[-1]
                if mod in loaders:
                    edges.add((name, mod))
    assert edges == {("_load", "_bundle"), ("_load", "_build"), ("_bundle", "_build")}
