"""Guards that keep a broken or hostile file from hanging the reader or exhausting the machine.

A scan's header says how large its voxel data is; a 66-byte ``.nii.gz`` can claim 16 GiB and a 39 KB DICOM file
50 million frames. The readers check those claims *before* allocating anything: against the bytes the file
really holds (for gzip, counted by stream-decompressing with a cap, never trusting the trailer's ``ISIZE``) and
against the memory this process can still get. They also open regular files only: a named pipe, a socket or
a device would block ``open()`` / ``read()`` forever.
"""

from __future__ import annotations

import os
import stat
import zlib
from pathlib import Path
from typing import Any

from .._errors import ReaderError

__all__ = [
    "available_memory",
    "check_memory",
    "deflate_size_up_to",
    "format_bytes",
    "gzip_size_up_to",
    "is_regular_file",
    "require_regular_file",
]

_CHUNK = 1 << 20


def format_bytes(count: int) -> str:
    """``"16 GiB"``, ``"39.1 KiB"``: a byte count for messages."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------- files
def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """True for a regular file (after following symlinks); False for folders, pipes, sockets, devices."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def require_regular_file(path: Path) -> None:
    """Raise ReaderError unless ``path`` is a regular file (opening a pipe would block forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as exc:
        raise ReaderError(f"No such file: '{path}'.") from exc
    except OSError as exc:
        raise ReaderError(f"Cannot open '{path.name}': {exc.strerror or exc}.") from exc
    if not stat.S_ISREG(mode):
        raise ReaderError(
            f"'{path.name}' is not a regular file (a named pipe, socket or device); scans are read from files "
            "on disk only. Copy the data to a file and open that."
        )


def gzip_size_up_to(path: Path, limit: int) -> int:
    """Decompressed size of a gzip file, counted until it reaches ``limit`` bytes (it stops there).

    The data are decompressed chunk by chunk and thrown away, so memory stays at one chunk whatever the file
    claims; concatenated gzip members are followed like ``gzip`` does. The trailer's ``ISIZE`` is not used:
    it is modulo 2**32 and a hostile file can set it to anything.

    Raises
    ------
    ReaderError
        The stream is corrupt before ``limit`` bytes were produced.
    """
    return _inflated_size_up_to(path, limit, offset=0, gzip_members=True)


def deflate_size_up_to(path: Path, limit: int, offset: int) -> int:
    """Inflated size of the raw deflate stream that starts at byte ``offset`` of a file, counted up to ``limit``."""
    return _inflated_size_up_to(path, limit, offset=offset, gzip_members=False)


def _inflated_size_up_to(path: Path, limit: int, *, offset: int, gzip_members: bool) -> int:
    wbits = 16 + zlib.MAX_WBITS if gzip_members else -zlib.MAX_WBITS
    total = 0
    decompressor: Any = None  # None between gzip members
    pending = b""
    with open(path, "rb") as handle:
        handle.seek(offset)
        while total < limit:
            if not pending:
                pending = handle.read(_CHUNK)
                if not pending:
                    break
            if decompressor is None:  # gzip allows zero padding between and after members
                pending = pending.lstrip(b"\x00") if gzip_members else pending
                if not pending:
                    continue
                decompressor = zlib.decompressobj(wbits)
            try:
                total += len(decompressor.decompress(pending, _CHUNK))
            except zlib.error as exc:
                message = f"'{path.name}' has a corrupt compressed stream ({exc}); the file is damaged."
                raise ReaderError(message) from exc
            pending = decompressor.unconsumed_tail
            if decompressor.eof:
                if not gzip_members:
                    break
                pending, decompressor = decompressor.unused_data, None
    return total


# ---------------------------------------------------------------------------------------------- memory
def _meminfo_available() -> int | None:
    """MemAvailable (Linux), else psutil's figure when psutil is installed, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional: only for systems without /proc/meminfo
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _cgroup_headroom() -> int | None:
    """What the container's memory limit (cgroup v2 ``memory.max``) still allows, when one is set."""
    try:
        limit_text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit_text == "max":
            return None
        current = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(int(limit_text) - current, 0)
    except (OSError, ValueError):
        return None


def _address_space_headroom() -> int | None:
    """What ``RLIMIT_AS`` still allows this process (limit - current virtual size), when a limit is set."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return max(soft - int(line.split()[1]) * 1024, 0)
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes this process can still allocate, as well as can be told; None when unknown.

    The smallest of the system's available memory, the container's memory limit headroom and the address
    space left under ``RLIMIT_AS``.
    """
    figures = [f for f in (_meminfo_available(), _cgroup_headroom(), _address_space_headroom()) if f is not None]
    return min(figures) if figures else None


def check_memory(nbytes: int, subject: str, what: str, file_size: int | None = None) -> None:
    """Raise ReaderError when ``nbytes`` (what reading ``what`` of ``subject``, e.g. ``"'scan.nii.gz'"``, needs)
    cannot fit in memory."""
    available = available_memory()
    if available is not None and nbytes > available:
        size = "" if file_size is None else f" ({format_bytes(file_size)} on disk)"
        raise ReaderError(
            f"{subject}{size} declares {what} of {format_bytes(nbytes)}, more than the {format_bytes(available)} of "
            "memory available; it cannot be read here. If the header is right, read the file on a machine with "
            "more memory; a small file that claims this much is corrupt."
        )
