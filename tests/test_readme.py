"""The README's Python examples marked ``# runs as is`` run as they are, and say what the README says they say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def runnable_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return [b for b in blocks if b.startswith("# runs as is")]


def test_the_readme_has_a_runnable_example() -> None:
    assert runnable_blocks(), "README.md lost its '# runs as is' example"


def test_readme_examples_run_as_they_are() -> None:
    for code in runnable_blocks():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
        text = out.getvalue()
        found = re.search(r"(\d+)% of the positive attribution lies on the true vessels", text)
        if found:  # the vessel example: the map has the scan's shape and sits on the vessels (95 % when written)
            assert "(48, 48, 48)" in text
            assert int(found.group(1)) >= 50
