"""The method tables are generated from the registry: docs/methods/reference.md and README.md's methods table
(between its markers) are what ``scripts/gen_method_docs.py`` writes now, so a method added, or a docstring, label,
cost or parameter changed, without regenerating them fails here."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

import napari_attribution as na

ROOT = Path(__file__).resolve().parents[1]
GEN: dict[str, Any] = runpy.run_path(str(ROOT / "scripts" / "gen_method_docs.py"), run_name="gen_method_docs")
HOW = "stale: run .venv/bin/python scripts/gen_method_docs.py"


def test_the_method_reference_is_generated_from_the_registry() -> None:
    assert (ROOT / "docs" / "methods" / "reference.md").read_text(encoding="utf-8") == GEN["reference_text"](), HOW


def test_the_readme_methods_table_is_generated_from_the_registry() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(GEN["START"]) == 1 and readme.count(GEN["END"]) == 1
    assert GEN["readme_table"]() in readme, HOW
    for m in na.list_methods():  # one row per registered method, with its cost as the registry states it
        assert f"| `{m.name}`" in readme and f"| {m.passes} |" in readme, m.name


def test_the_check_mode_finds_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """On copies: ``--check`` exits 1 naming the stale file, and a plain run regenerates it."""
    main = GEN["main"]
    readme, reference = tmp_path / "README.md", tmp_path / "docs" / "methods" / "reference.md"
    reference.parent.mkdir(parents=True)
    reference.write_text(GEN["reference_text"](), encoding="utf-8")
    good = (ROOT / "README.md").read_text(encoding="utf-8")
    readme.write_text(good.replace("| 1F + 1B |", "| 1F |", 1), encoding="utf-8")
    for name, value in (("ROOT", tmp_path), ("README", readme), ("REFERENCE", reference)):
        monkeypatch.setitem(main.__globals__, name, value)
    assert main(["--check"]) == 1
    assert capsys.readouterr().out.startswith("README.md is stale")
    assert main([]) == 0 and main(["--check"]) == 0
    assert readme.read_text(encoding="utf-8") == good
