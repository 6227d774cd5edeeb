"""The validation report's one command, in its quick mode: every section runs, ends in a verdict where it makes
a claim, links only figures that exist, and the page's summary table agrees with the sections."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "validate.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

from validation.common import VERDICTS  # noqa: E402

SEEDS = ["seed000", "seed001", "seed002", "seed003", "seed004"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("validation")
    out = tmp / "docs" / "validation.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--cache", str(tmp / "cache")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out.read_text(), tmp


def test_every_section_is_generated(quick_report: tuple[str, Path]) -> None:
    text, tmp = quick_report
    assert "has not been generated" not in text
    for key in ["tasks", *SEEDS]:
        stored = json.loads((tmp / "cache" / "quick" / "sections" / f"{key}.json").read_text())
        assert stored["markdown"].strip(), key
        assert f"## {stored['title']}" in text


def test_each_seed_section_ends_in_a_verdict(quick_report: tuple[str, Path]) -> None:
    _, tmp = quick_report
    for key in SEEDS:
        stored = json.loads((tmp / "cache" / "quick" / "sections" / f"{key}.json").read_text())
        assert stored["verdict"] in VERDICTS, (key, stored["verdict"])
        assert "verdict" in stored["markdown"].lower(), key


def test_summary_table_lists_the_verdicts(quick_report: tuple[str, Path]) -> None:
    text, tmp = quick_report
    rows = [ln for ln in text.splitlines() if ln.startswith("| [")]
    assert len(rows) == 1 + len(SEEDS)
    for key in SEEDS:
        stored = json.loads((tmp / "cache" / "quick" / "sections" / f"{key}.json").read_text())
        assert any(stored["title"] in r and f"| {stored['verdict']} |" in r for r in rows), key


def test_linked_figures_exist_next_to_the_page(quick_report: tuple[str, Path]) -> None:
    text, tmp = quick_report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for link in links:
        assert (tmp / "docs" / link).is_file(), link


def test_a_rerun_takes_every_result_from_the_cache(quick_report: tuple[str, Path]) -> None:
    _, tmp = quick_report
    out = tmp / "again.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--figures", str(tmp / "fig2"),
                           "--cache", str(tmp / "cache")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"\((\d+) cached results, (\d+) computed\)", proc.stdout)
    assert m, proc.stdout[-2000:]
    assert int(m.group(1)) > 0 and int(m.group(2)) == 0, m.group(0)
