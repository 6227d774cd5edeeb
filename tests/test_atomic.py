"""The one write path (napari_attribution._atomic): groups land together or not at all, existing files are kept,
and CSV cells that a spreadsheet would run as formulas are escaped (OWASP), numbers left as numbers."""

from __future__ import annotations

import csv
import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest

from napari_attribution import _atomic
from napari_attribution._atomic import AtomicFiles, OutputError, atomic_write, csv_cell, csv_writer
from napari_attribution.metrics import landmark_comparison, landmark_table


@pytest.mark.parametrize(("cell", "escaped"), [
    ("=1+2", "'=1+2"), ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'), ("+cmd", "'+cmd"),
    ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("-", "'-"),
    ("a=b", "a=b"), ("", ""), ("scan.nii.gz", "scan.nii.gz"),
    # plain numbers stay numbers, signed ones included
    ("-0.25", "-0.25"), ("-1e-05", "-1e-05"), ("+3", "+3"), ("-inf", "-inf"), ("-nan", "-nan"), (-0.5, -0.5),
    (None, None),
])
def test_csv_cell(cell: object, escaped: object) -> None:
    assert csv_cell(cell) == escaped


def test_landmark_tables_escape_names_a_spreadsheet_would_run() -> None:
    """Landmark names come from the user's label file: the metrics tables' CSV escapes them too."""
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0], heat[3, 3] = 1.0, -2.0
    labels = np.zeros((4, 4), np.int32)
    labels[0, 0] = 1
    table = landmark_table(heat, labels, names={1: "=cmd|'/C calc'!A0"})
    row = list(csv.reader(io.StringIO(table.csv())))[1]
    assert row[1] == "'=cmd|'/C calc'!A0" and float(row[3]) == 1.0
    rows = list(csv.reader(io.StringIO(landmark_comparison({"@sal": table}).csv())))
    assert rows[0][1] == "energy_fraction 1 (=cmd|'/C calc'!A0)"  # not at the start of the cell: harmless
    assert rows[2][0] == "'@sal"


def test_csv_writer_writes_like_csv_writer() -> None:
    buf = io.StringIO()
    csv_writer(buf, lineterminator="\n").writerows([["a", 1, -2.5], ["=x", "b,c", None]])
    assert buf.getvalue() == 'a,1,-2.5\n\'=x,"b,c",\n'


def test_a_group_lands_together_or_not_at_all(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text("kept")
    with pytest.raises(FileExistsError, match="already exists and was kept"), AtomicFiles() as files:
        files.add_text(tmp_path / "a.npy", "new")
        files.add_text(tmp_path / "b.json", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]  # a.npy was not left alone either
    assert (tmp_path / "b.json").read_text() == "kept"
    with AtomicFiles(overwrite=True) as files:
        files.add_text(tmp_path / "a.npy", "new")
        files.add_text(tmp_path / "b.json", "new")
    assert (tmp_path / "a.npy").read_text() == (tmp_path / "b.json").read_text() == "new"


def test_a_failing_writer_leaves_no_file(tmp_path: Path) -> None:
    def broken(fh: object) -> None:
        raise ValueError("not writable")

    with pytest.raises(ValueError, match="not writable"):
        atomic_write(tmp_path / "x.npy", broken)
    assert list(tmp_path.iterdir()) == []


def test_disk_errors_are_one_attribution_error_with_the_errno(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def quota(fd: int, data: memoryview) -> int:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(_atomic, "_write_chunk", quota)
    with pytest.raises(OutputError) as info:
        atomic_write(tmp_path / "x.csv", lambda fh: fh.write(b"a,b\n"))
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.EDQUOT
    assert str(err).startswith(f"Cannot write '{tmp_path / 'x.csv'}': Disk quota exceeded. Nothing was written;")
    assert list(tmp_path.iterdir()) == []


def test_files_keep_the_usual_permissions(tmp_path: Path) -> None:
    """Not mkstemp's 0600: a heatmap is as readable as any file the user writes (the umask decides)."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = atomic_write(tmp_path / "heat.npy", lambda fh: np.save(fh, np.zeros(3)))
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    np.testing.assert_array_equal(np.load(path), np.zeros(3))


def test_a_card_saved_on_a_full_disk_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_attribution.models import ModelCard

    card = ModelCard(factory="monai.networks.nets:UNet", kwargs={"spatial_dims": 3}, task="segmentation")
    (tmp_path / "old.card.json").write_text("{}")

    def full(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_atomic, "_write_chunk", full)
    with pytest.raises(OutputError, match="No space left"):
        card.save(tmp_path / "new.card.json")
    with pytest.raises(OutputError):
        card.save(tmp_path / "old.card.json", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.card.json"]
    assert (tmp_path / "old.card.json").read_text() == "{}"
