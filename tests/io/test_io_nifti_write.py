"""write_nifti never loses or half-writes a file: exclusive creation between processes, a full disk leaves nothing,
and a writer killed mid-write leaves a hidden .partial file that the next write to the folder removes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_attribution import _atomic
from napari_attribution.io import read_nifti, write_nifti

_RACER = """
import sys, time
import numpy as np
from napari_attribution.io import write_nifti
me, path, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
data = np.full((16, 16, 16), me, np.float32)
print("ready", flush=True)
start = float(sys.stdin.readline())
for i in range(rounds):
    while time.time() < start + 0.05 * i:  # both processes write round i at the same moment
        pass
    try:
        write_nifti(f"{path}.{i}.nii.gz", data)
        print("ok", flush=True)
    except FileExistsError:
        print("exists", flush=True)
"""


def test_two_processes_writing_one_path_exactly_one_wins(tmp_path: Path) -> None:
    rounds = 20
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(k), str(tmp_path / "heat"), str(rounds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for k in (1, 2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    start = time.time() + 0.3
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"{start}\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(len(o) == rounds for o in outs)
    for i in range(rounds):
        said = [outs[0][i], outs[1][i]]
        assert sorted(said) == ["exists", "ok"], f"round {i}: {said}"
        winner = 1 if said[0] == "ok" else 2
        assert np.all(read_nifti(tmp_path / f"heat.{i}.nii.gz")[0] == winner)  # the winner's file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"heat.{i}.nii.gz" for i in range(rounds))


def _full_disk_after(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """The disk takes ``room`` more bytes, then says ENOSPC (never the real disk)."""
    left = [room]

    def write(fd: int, data: memoryview) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(data), left[0])
        left[0] -= n
        return os.write(fd, data[:n])

    monkeypatch.setattr(_atomic, "_write_chunk", write)


def test_a_full_disk_leaves_nothing_and_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.nii"
    write_nifti(path, np.zeros((8, 8, 8), np.float32))
    before = path.read_bytes()
    _full_disk_after(monkeypatch, 500)
    with pytest.raises(OSError, match="No space left") as info:
        write_nifti(path, np.ones((8, 8, 8), np.float32), overwrite=True)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, _atomic.OutputError)
    with pytest.raises(_atomic.OutputError):
        write_nifti(tmp_path / "new.nii.gz", np.ones((8, 8, 8), np.float32))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii"]  # no partial file, no new file


_KILLED = """
import gzip, sys, time
import numpy as np
from napari_attribution.io import write_nifti
real = gzip.GzipFile.write
def slow(self, data):
    n = real(self, data)
    print("writing", flush=True)
    time.sleep(60)  # killed here, mid-write
    return n
gzip.GzipFile.write = slow
write_nifti(sys.argv[1], np.ones((8, 8, 8), np.float32))
"""


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_a_killed_writers_partial_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(tmp_path / "heat.nii.gz")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".heat.nii.gz.") and ".partial" in left[0]
    write_nifti(tmp_path / "other.nii.gz", np.zeros((2, 2, 2), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.nii.gz"]


def test_stale_partials_go_and_live_writers_keep_theirs(tmp_path: Path) -> None:
    """Removed: a partial whose writer (on this machine) is gone, and one older than an hour. Kept: a live
    writer's, one written on another machine (its pid means nothing here), and files that are not ours."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = _atomic._host()
        names = {
            "dead": f".a.nii.gz.{host}_{dead_pid}_0123456789ab.partial",
            "old": f".b.nii.gz.{host}_{live.pid}_0123456789ab.partial",
            "live": f".c.nii.gz.{host}_{live.pid}_0123456789ab.partial",
            "remote": f".d.nii.gz.elsewhere_{dead_pid}_0123456789ab.partial",
            "not_ours": ".notes.partial",
            "legacy_old": f".e.nii.gz.{'f' * 32}.partial.nii.gz",
            "legacy_new": f".f.nii.gz.{'f' * 32}.partial.nii.gz",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        two_hours_ago = time.time() - 7200
        for key in ("old", "legacy_old", "not_ours"):
            os.utime(tmp_path / names[key], (two_hours_ago, two_hours_ago))
        write_nifti(tmp_path / "heat.nii.gz", np.zeros((2, 2, 2), np.float32))
        kept = {p.name for p in tmp_path.iterdir()}
        assert kept == {"heat.nii.gz", names["live"], names["remote"], names["not_ours"], names["legacy_new"]}
    finally:
        live.kill()
        live.wait()
