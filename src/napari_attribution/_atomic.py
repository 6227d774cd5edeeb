"""Atomic, exclusive output files: every file the package writes goes through here.

A file is first written under a hidden temporary name in its own folder (``.<name>.<host>_<pid>_<token>.partial``),
flushed to the disk (``fsync``), and only then put in place: with ``overwrite=False`` by a hard link, which fails if
the name exists, so of two writers racing for one name exactly one wins and the other gets ``FileExistsError``;
with ``overwrite=True`` by ``os.replace``. So a reader never sees a half-written file, a full disk leaves nothing
behind, and an existing file is never replaced unless asked.

Several files (a heatmap and its JSON sidecar, a run's CSV tables) can be written as one :class:`AtomicFiles`
group: all are written to their temporary names first, then all are put in place, so they land together or not at
all. A writer killed mid-write (SIGKILL, power cut) leaves its ``.partial`` file; the next write to that folder
removes the ones that are stale — older than an hour, or whose writer (the host and pid in the name) is gone —
and never one that a live writer still owns.

Disk errors (no space, quota, read-only, permission) become :class:`OutputError`, an
:class:`~napari_attribution.AttributionError` that is also an :class:`OSError` with the original ``errno``.

Spreadsheet safety: :func:`csv_writer` escapes cells that a spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from ._errors import AttributionError

__all__ = ["AtomicFiles", "OutputError", "atomic_write", "clean_stale_partials", "csv_cell", "csv_writer"]

STALE_SECONDS = 3600.0  # a .partial file untouched this long is abandoned, whoever wrote it
_BUFFER = 1 << 20
# .<name>.<host>_<pid>_<token>.partial; the host tells whether the pid can be checked on this machine (a folder on
# a network disk is shared by several machines, e.g. a Dask cluster's workers)
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]{0,32})_(?P<pid>\d{1,10})_[0-9a-f]{12}\.partial$")
# the name write_nifti used before (no owner recorded): removed by age only
_OLD_PARTIAL = re.compile(r"^\..+\.[0-9a-f]{32}\.partial(\.nii|\.nii\.gz)$")


class OutputError(AttributionError, OSError):
    """An output file could not be written (no space left, quota, read-only or forbidden folder); nothing of the
    run's output was left behind. ``errno`` is the operating system's."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32]


def _temp_name(path: Path) -> Path:
    # the final name is kept (shortened) for people who look into the folder; the pid and host say who owns it
    return path.with_name(f".{path.name[:120]}.{_host()}_{os.getpid()}_{secrets.token_hex(6)}.partial")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: no safe probe, so count it as alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to another user
        return True
    return True


def clean_stale_partials(folder: str | os.PathLike[str], *, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove the abandoned ``.partial`` files of this package in ``folder`` and return them.

    A file is abandoned when it is older than ``max_age`` seconds (by its modification time: a live writer keeps
    touching it), or when its writer ran on this machine and its process is gone. A file whose writer is alive, or
    runs on another machine, and that is younger than ``max_age`` is kept. Other files are never touched.
    """
    removed: list[Path] = []
    now, host = time.time(), _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _PARTIAL.match(entry.name)
        if match is None and not _OLD_PARTIAL.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            old = now - entry.stat(follow_symlinks=False).st_mtime > max_age
            gone = (match is not None and match["host"] == host and int(match["pid"]) != os.getpid()
                    and not _pid_alive(int(match["pid"])))
            if old or gone:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:  # another cleaner was first
            continue
        except OSError:  # not ours to remove (permissions): leave it
            continue
    return removed


def _write_chunk(fd: int, data: memoryview) -> int:
    """The one low-level write (tests inject a full disk here)."""
    return os.write(fd, data)


class _RawFile(io.RawIOBase):
    """A raw file over ``fd`` whose writes all go through :func:`_write_chunk`. It exposes no ``fileno``, so
    libraries (numpy's ``tofile``) cannot write around it."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            done += _write_chunk(self._fd, view[done:])
        return done

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self._fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def truncate(self, size: int | None = None) -> int:
        size = self.tell() if size is None else size
        os.ftruncate(self._fd, size)
        return size


def _disk_error(err: OSError, path: Path) -> OutputError:
    what = err.strerror or str(err) or type(err).__name__
    hint = {errno.ENOSPC: "free some space or write to another folder",
            errno.EDQUOT: "free some space (disk quota) or write to another folder",
            errno.EROFS: "the folder is read-only: write to another folder",
            errno.EACCES: "you may not write there: write to another folder",
            errno.EPERM: "you may not write there: write to another folder"}.get(err.errno or 0,
                                                                                  "write to another folder")
    out = OutputError(f"Cannot write '{path}': {what}. Nothing was written; {hint}.")
    out.errno = err.errno  # one readable message (no "[Errno 28]" prefix), the errno kept for callers
    return out


def _exists(path: Path) -> FileExistsError:
    out = FileExistsError(f"'{path}' already exists and was kept; pass overwrite=True to replace it.")
    out.errno = errno.EEXIST
    return out


def _fsync_dir(folder: Path) -> None:
    """Make the new names durable (POSIX); folders cannot be opened on Windows, where this is skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFiles:
    """Files that land together or not at all.

    Use as a context manager: each :meth:`add` writes one file to its temporary name at once (so a full disk is
    noticed there, before anything is in place); leaving the block without an error puts them all in place, an
    error removes every temporary file.

    Parameters
    ----------
    overwrite : bool
        Replace existing files. Without it, an existing name raises ``FileExistsError`` at commit and none of the
        group's files is put in place.

    Examples
    --------
    >>> with AtomicFiles() as files:  # doctest: +SKIP
    ...     files.add("heat.npy", lambda fh: np.save(fh, data))
    ...     files.add_text("heat.json", json.dumps(record))
    """

    def __init__(self, *, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._pending: list[tuple[Path, Path]] = []  # (temporary, final)
        self._cleaned: set[Path] = set()

    def __enter__(self) -> AtomicFiles:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def add(self, path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
        """Write ``path``'s content now, to a temporary name beside it: ``write(fh)`` gets a binary file object
        (seekable; no ``fileno``). Returns the final path."""
        final = Path(path)
        if any(final == f for _t, f in self._pending):
            raise ValueError(f"'{final}' is written twice in one group.")
        folder = final.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _disk_error(err, final) from err
        if folder not in self._cleaned:
            clean_stale_partials(folder)
            self._cleaned.add(folder)
        temp = _temp_name(final)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as err:
            self.discard()
            raise _disk_error(err, final) from err
        self._pending.append((temp, final))
        try:
            try:
                with io.BufferedWriter(_RawFile(fd), _BUFFER) as fh:
                    write(fh)
                    fh.flush()
                    os.fsync(fd)  # on the disk before it gets its name (some file systems say ENOSPC only here)
            finally:
                os.close(fd)
        except OSError as err:
            self.discard()
            raise _disk_error(err, final) from err
        except BaseException:
            self.discard()
            raise
        return final

    def add_bytes(self, path: str | os.PathLike[str], data: bytes) -> Path:
        """:meth:`add` for content already in memory."""
        return self.add(path, lambda fh: fh.write(data))

    def add_text(self, path: str | os.PathLike[str], text: str) -> Path:
        """:meth:`add` for text (UTF-8)."""
        return self.add_bytes(path, text.encode("utf-8"))

    def discard(self) -> None:
        """Remove every temporary file of the group; nothing is put in place."""
        for temp, _final in self._pending:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
        self._pending = []

    def commit(self) -> list[Path]:
        """Put every file in place (see the class); returns the final paths."""
        placed: list[Path] = []
        final = Path(".")
        try:
            for temp, final in self._pending:
                self._place(temp, final)
                placed.append(final)
        except BaseException as err:
            for done in placed:  # undo: the files this group created (a replaced file cannot be brought back)
                try:
                    os.unlink(done)
                except OSError:
                    pass
            self.discard()
            if isinstance(err, OSError) and not isinstance(err, (FileExistsError, OutputError)):
                raise _disk_error(err, final) from err
            raise
        for folder in {f.parent for f in placed}:
            _fsync_dir(folder)
        self._pending = []
        return placed

    def _place(self, temp: Path, final: Path) -> None:
        if self.overwrite:
            os.replace(temp, final)
            return
        try:
            os.link(temp, final)  # fails if `final` exists: exclusive, and never a partial file under that name
        except FileExistsError:
            raise _exists(final) from None
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
                                 errno.ENOSYS):
                raise
            # no hard links here (FAT, some network shares): reserve the name exclusively, then move in place
            try:
                os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                raise _exists(final) from None
            os.replace(temp, final)
            return
        os.unlink(temp)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], *, overwrite: bool = False) -> Path:
    """Write one file atomically (see :class:`AtomicFiles`): ``write(fh)`` fills a binary file object.

    Raises
    ------
    FileExistsError
        ``path`` exists (or another writer created it first) and ``overwrite`` is False; it was kept.
    OutputError
        The disk refused (no space, quota, read-only, permission); nothing was left behind.
    """
    with AtomicFiles(overwrite=overwrite) as files:
        return files.add(path, write)


# ------------------------------------------------------------------------------------------------ CSV cells

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text: a string starting with ``= + - @``, a tab or a carriage return gets a
    leading ``'`` (OWASP's advice against CSV injection); numbers, and strings that are plain numbers (``-0.25``,
    ``-1e-3``), are left as they are so that the columns stay numeric."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.match(value):
        return "'" + value
    return value


class _SafeWriter:
    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([csv_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(fh: Any, **kwargs: Any) -> _SafeWriter:
    """``csv.writer(fh, **kwargs)`` whose cells go through :func:`csv_cell` (every CSV of this package)."""
    return _SafeWriter(csv.writer(fh, **kwargs))
