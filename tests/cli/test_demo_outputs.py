"""The headless demo's files: refused before any work when one exists (the PNG too), and all or none on a full
disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from napari_attribution import _atomic, _demo
from napari_attribution.cli import main


def test_an_existing_png_is_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "demo.png").write_bytes(b"my figure")

    def no_work() -> None:
        raise AssertionError("the model was loaded: work started although an output exists")

    monkeypatch.setattr(_demo, "load_demo_model", no_work)
    assert main(["demo", "--headless", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: demo.png already exist") and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.png"]
    assert (tmp_path / "demo.png").read_bytes() == b"my figure"


def test_a_full_disk_leaves_no_demo_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Room for the NIfTI files but not the PNG (the last file): one error line and nothing in the folder."""
    seen: list[int] = []

    def write(fd: int, data: memoryview) -> int:
        inode = os.fstat(fd).st_ino
        if inode not in seen:
            seen.append(inode)
        if seen.index(inode) >= 5:  # phantom, vessel mask, prediction, two heatmaps fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    monkeypatch.setattr(_atomic, "_write_chunk", write)
    out = tmp_path / "demo"
    assert main(["demo", "--headless", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: Cannot write") and "demo.png" in err
    assert [p.name for p in out.iterdir()] == []
