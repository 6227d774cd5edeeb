"""The documentation describes the project as it is; its history lives in CHANGELOG.md, by version.

README.md, CONTRIBUTING.md and every page under docs/ must not narrate how the project was built ("Session 3
rerun", "session-2 medians", "(issue 11)", "a bug, now fixed"): a reader needs what the project does and what
it measures, not in which work session it happened. Benchmark tables keep the date (or the commit) they were
measured on instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: phrases that narrate development history; each names what it catches
HISTORY = {
    "a work session": re.compile(r"\bsessions?[ -]?\d", re.IGNORECASE),  # Session 1, session-3, sessions 2 and 3
    "an issue number": re.compile(r"\bissues? #?\d+", re.IGNORECASE),  # (issue 11), issue #4
    "a fix as news": re.compile(r"\b(?:now|was|were) fixed\b", re.IGNORECASE),  # a bug, now fixed
}


def documentation() -> list[Path]:
    """README.md, CONTRIBUTING.md (when there is one) and every Markdown page under docs/ (not CHANGELOG.md)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    contributing = ROOT / "CONTRIBUTING.md"
    return [*pages, contributing] if contributing.exists() else pages


def history_phrases(text: str) -> list[tuple[int, str, str]]:
    """``(line number, what, the phrase)`` for every history phrase in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for what, pattern in HISTORY.items():
            found += [(number, what, m.group(0)) for m in pattern.finditer(line)]
    return found


def test_the_documentation_pages_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in documentation()}
    assert {"README.md", "docs/user-guide.md", "docs/benchmarks.md", "docs/evidence-benchmark.md"} <= names
    assert "CHANGELOG.md" not in names


@pytest.mark.parametrize("page", documentation(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_describe_the_project_not_its_history(page: Path) -> None:
    found = history_phrases(page.read_text(encoding="utf-8"))
    where = "; ".join(f"line {n}: {what} ({phrase!r})" for n, what, phrase in found)
    assert not found, (f"{page.relative_to(ROOT)} narrates development history ({where}): describe the project as "
                       "it is, label a measurement by its date or commit, and put the history in CHANGELOG.md")


@pytest.mark.parametrize("sentence", [
    "## Session 3 rerun: all 23 goals still met",
    "docs/evidence-benchmark.md: session-2 medians (9.2x 2D, 9.3x 3D)",
    "just over 10 depending on the run (9.2-10.4x over sessions 2 and 3)",
    "SESSION 4 (jobs on all cores but one)",
    "Reader fuzz (issue 11): mutated files",
    "Running the MONAI UNet row uncovered a bug, now fixed: a layer that returns its input",
])
def test_history_phrases_are_caught(sentence: str) -> None:
    assert history_phrases(sentence)


@pytest.mark.parametrize("sentence", [
    "Check this map works on heatmaps the Explain dock made in this session with its current model",
    "a fixed 32 steps leaves 33 % on this model",
    "`issues` lists what remains",
    "Measured at commit `7315100`, 2026-11-22",
])
def test_descriptions_of_the_project_pass(sentence: str) -> None:
    assert not history_phrases(sentence)


def test_the_changelog_starts_with_the_package_version() -> None:
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    declared = re.search(r'^version = "([^"]+)"', project, flags=re.M)
    assert declared, "pyproject.toml declares no version"
    version = declared.group(1)
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"^## (\S+)", text, flags=re.M)
    assert versions and versions[0] == version, f"CHANGELOG.md's first section should be ## {version}"
    first = text.split("\n## ")[1]
    groups = re.findall(r"^### (\w+)", first, flags=re.M)
    assert groups and set(groups) <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
