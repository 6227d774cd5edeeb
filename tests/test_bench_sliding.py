"""benchmarks/bench_sliding.py --quick: the sliding-window benchmark runs end to end at tiny sizes, prints every
part's table rows with ratios that are the quotient of their own columns, and rewrites only the marked section of
a page (``--write``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("monai")
pytest.importorskip("captum")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_sliding.py"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _half_unit(text: str) -> float:
    """Half of the last printed digit's unit: ``"0.15"`` -> 0.005, ``"12.3"`` -> 0.05, ``"7"`` -> 0.5."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10.0 ** -decimals


def test_quick_run_prints_every_table_and_writes_only_the_marked_section(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text("# Title\n\nkept above\n\n<!-- bench_sliding:begin -->\nold tables\n<!-- bench_sliding:end -->\n"
                    "\nkept below\n", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--write", str(page)], capture_output=True,
                          text=True, timeout=300, check=False, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for title in ("A. Saliency and Grad-CAM", "B. Against Captum", "C. Every method", "D. Saliency at 512x512x300"):
        assert f"**{title}" in out, title
    rows = [_cells(ln) for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    # A: saliency and grad_cam at the cube and at the CT-like volume; the ratio is ours / plain
    a_rows = [r for r in rows if len(r) == 11 and r[6] == "<= 1.15x"]
    assert {(r[0], r[1]) for r in a_rows} == {(m, v) for m in ("saliency", "grad_cam")
                                             for v in ("48^3", "64x72x40 (numpy (40, 72, 64))")}
    for r in a_rows:
        ours, plain, ratio = float(r[3]), float(r[4]), float(r[5].rstrip("x"))
        # the columns are rounded to their last printed digit: the ratio lies between the extremes they allow
        h_ours, h_plain = _half_unit(r[3]), _half_unit(r[4])
        low, high = (ours - h_ours) / (plain + h_plain), (ours + h_ours) / max(plain - h_plain, 1e-9)
        assert low - 0.005 <= ratio <= high + 0.005, r
        assert r[7] in ("yes", "**NO**")
        if abs(ratio - 1.15) > 0.005:  # the printed ratio is rounded: at the goal itself either verdict is right
            assert (r[7] == "yes") == (ratio <= 1.15), r
    # B: ours against Captum for saliency and integrated gradients, with both peaks in memory units
    b_rows = [r for r in rows if r[1] == "40^3"]
    assert [r[0] for r in b_rows] == ["saliency", "integrated_gradients, 2 steps"]
    assert all(re.fullmatch(r"\d+ MiB|\d+\.\d\d GiB", r[6]) for r in b_rows), b_rows
    # C: each quick method at 48^3 and then stopped (or finished) at the CT-like volume, with its peak
    for method in ("saliency", "integrated_gradients", "grad_cam", "occlusion"):
        assert sum(r[0] == method and len(r) == 6 for r in rows) == 1, method
        stopped = [r for r in rows if r[0] == method and len(r) == 9 and not r[2].isdigit()]
        assert len(stopped) == 1 and stopped[0][2:4] in (["2.00 GiB", "stopped (cancel)"], ["2.00 GiB", "finished"])
        assert stopped[0][8] == "yes" and re.fullmatch(r"\d\.\d\dx", stopped[0][7]), stopped
    # D: the saliency run within the budget
    d_rows = [r for r in rows if len(r) == 9 and r[2].isdigit()]
    assert len(d_rows) == 1 and d_rows[0][:5] == ["saliency", "64x72x40 (numpy (40, 72, 64))", "18", "2.00 GiB",
                                                  "finished"], d_rows
    assert re.fullmatch(r"\d\.\d\dx", d_rows[0][7]), d_rows
    assert re.search(r"Goals met: \d+, not met: \d+\.", out)
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\nkept above\n\n<!-- bench_sliding:begin -->\n")
    assert text.endswith("<!-- bench_sliding:end -->\n\nkept below\n")
    assert "old tables" not in text and "**A. Saliency and Grad-CAM" in text


def test_writing_some_parts_keeps_the_other_parts_blocks(tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_sliding
    finally:
        sys.path.remove(str(SCRIPT.parent))
    page = tmp_path / "performance.md"
    blocks = {key: f"<!-- {tag} -->\n{key} first\n<!-- /{tag} -->"
              for key, tag in [("machine", "machine"), *((p, f"part {p}") for p in "ABCD")]}
    page.write_text("above\n<!-- bench_sliding:begin -->\nold\n<!-- bench_sliding:end -->\nbelow\n", encoding="utf-8")
    bench_sliding.write_page(page, blocks)
    bench_sliding.write_page(page, {"machine": "<!-- machine -->\nmachine again\n<!-- /machine -->",
                                    "B": "<!-- part B -->\nB again\n<!-- /part B -->"})
    text = page.read_text(encoding="utf-8")
    assert text.startswith("above\n<!-- bench_sliding:begin -->\n")
    assert text.endswith("<!-- bench_sliding:end -->\nbelow\n")
    body = text.split("<!-- bench_sliding:begin -->\n")[1].split("\n<!-- bench_sliding:end -->")[0]
    assert [ln for ln in body.splitlines() if ln and not ln.startswith("<!--")] == [
        "machine again", "A first", "B again", "C first", "D first"]
