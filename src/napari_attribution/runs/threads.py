"""How many torch threads a dock's background job computes with, and giving the caller's setting back afterwards.

A job uses all cores but one (one is left to napari's GUI thread), or ``$NAPARI_ATTRIBUTION_THREADS``, or what the
request asks for. ``torch.set_num_threads`` is process-wide for threads started later (PyTorch keeps the last value
and every new thread starts with it), so a job that set it and left it would slow every later torch computation in
the napari session: :func:`torch_threads` restores the value it found, also when the job fails or is cancelled.
Qt-free.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .._errors import ParameterError

__all__ = ["THREADS_ENV", "job_thread_count", "torch_threads"]

log = logging.getLogger(__name__)

#: environment variable: the number of torch threads the docks' jobs compute with
THREADS_ENV = "NAPARI_ATTRIBUTION_THREADS"


def _cores() -> int:
    """Cores this process may run on (the affinity mask where the platform has one: containers, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def job_thread_count(requested: int | None = None, *, strict: bool = True) -> int:
    """The torch threads of a job: ``requested``, else ``$NAPARI_ATTRIBUTION_THREADS``, else all cores but one
    (at least one: a single thread on a 2-core machine, fifteen on a 16-core workstation).

    Raises
    ------
    ParameterError
        ``requested`` or the environment variable is not a positive whole number (with ``strict=False`` a bad
        environment variable is logged and ignored instead: for work that has no way to report it).

    Examples
    --------
    >>> job_thread_count(3)
    3
    """
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ParameterError(f"threads must be a positive whole number of torch threads, got {requested!r}.")
        return requested
    text = os.environ.get(THREADS_ENV, "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1 and not strict:
            log.warning("ignoring %s=%r: not a positive whole number", THREADS_ENV, text)
        elif value < 1:
            raise ParameterError(f"{THREADS_ENV}={text!r}: set it to a positive whole number of torch threads, or "
                                 "unset it (then jobs use all cores but one).")
        else:
            return value
    return max(1, _cores() - 1)


_lock = threading.Lock()
_active = 0
_saved: int | None = None


@contextmanager
def torch_threads(count: int) -> Iterator[int]:
    """Compute with ``count`` torch threads inside the block, then give back the setting found on entry (also on
    an exception). Nested or overlapping blocks (an Explain and a Compare job at once) restore the setting found
    by the first one when the last one ends, so the order in which they end does not matter."""
    import torch

    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = torch.get_num_threads()
        _active += 1
        torch.set_num_threads(count)
    try:
        yield count
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                torch.set_num_threads(_saved)
                _saved = None
