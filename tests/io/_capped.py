"""Run reader code in a child process under a memory cap (``RLIMIT_AS``) and a timeout.

A hostile file that makes a reader allocate 16 GiB, or loop for ever, must never be tried on the real machine:
the child caps its address space at its resting size plus ``extra_gib`` and is killed after ``timeout`` seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

# the child imports napari_attribution as this interpreter would (installed package, or PYTHONPATH)
PRELUDE = """
import json, resource, sys
import numpy as np
import nibabel, pydicom
import napari_attribution.io
from napari_attribution._errors import ReaderError


def _vm_size():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


import tracemalloc
tracemalloc.start()  # numpy, zlib and bytearray buffers are traced: the peak of one call is measurable


def start_peak():  # resets the traced peak; returns the traced memory now (pass it to grown_mib)
    tracemalloc.reset_peak()
    return tracemalloc.get_traced_memory()[0]


def grown_mib(start):  # MiB allocated at the peak since start_peak(), above what was allocated then
    return (tracemalloc.get_traced_memory()[1] - start) / 2**20


def emit(**fields):
    print(json.dumps(fields), flush=True)


resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + int({extra_gib} * 2**30), resource.RLIM_INFINITY))
"""


def capped_available() -> None:
    """Skip the calling test where ``RLIMIT_AS`` and ``/proc`` are not available (Windows, macOS)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the memory cap needs Linux (RLIMIT_AS and /proc/self/status)")


def run_capped(code: str, *, extra_gib: float = 2.0, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Run ``code`` after :data:`PRELUDE` in a fresh interpreter; return the JSON lines it printed with ``emit``.

    The test fails (not hangs) when the child runs out of time, and shows the child's stderr when it crashes.
    """
    capped_available()
    script = PRELUDE.format(extra_gib=extra_gib) + textwrap.dedent(code)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the reader did not finish within {timeout:.0f} s (output so far: {exc.stdout!r})")
    if done.returncode != 0:
        pytest.fail(f"the child process failed (exit code {done.returncode}):\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
