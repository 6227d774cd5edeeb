"""One lock per user model, so that runs on the same model from several threads take turns.

:func:`~napari_attribution.methods._hooks.model_guard` switches the model to eval mode and freezes its
parameters for a run and restores both afterwards. Two threads on one model interleave those switches: the
first to finish restores train mode while the other still computes (its BatchNorm layers then normalise with
batch statistics and overwrite their running statistics for good, and the maps differ from serial runs), and in
eval mode ``layer_conductance`` failed with a raw ``RuntimeError`` in 3 of 20 runs (hooks are registered on the
module, so the layer hooks of one run also fire in the other's passes). ``explain``, ``compare``,
``explain_layers`` and ``evaluate`` therefore hold :func:`model_lock` on the user's module for the whole run,
and ``model_guard`` itself takes it (for passes outside those entry points: fitting vebi's features, the input
path's trial passes): runs on one model are serialised, runs on different models stay parallel. The lock is
re-entrant, so a metric that re-runs ``explain`` on the same model in the same thread (max-sensitivity) does
not wait for itself; a run that waits still answers ``cancel``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from .._errors import Cancelled

__all__ = ["model_lock"]

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()  # creating a model's lock is itself a race between threads
#: for the rare module that cannot be weakly referenced: one lock for all of them (correct, only less parallel)
_FALLBACK = threading.RLock()
_POLL = 0.1  # seconds between cancel polls while waiting


def _lock_for(module: nn.Module) -> threading.RLock:
    with _GUARD:
        try:
            lock = _LOCKS.get(module)
            if lock is None:
                lock = _LOCKS[module] = threading.RLock()
            return lock
        except TypeError:  # pragma: no cover - modules that cannot be weakly referenced
            return _FALLBACK


@contextmanager
def model_lock(module: nn.Module, *, cancel: Callable[[], bool] | None = None,
               progress: Callable[[int, int, str], None] | None = None) -> Iterator[None]:
    """Hold ``module``'s lock for the block (re-entrant within one thread; the entry lives as long as the
    module). Pass the user's own module, not a wrapper around it, so every entry point takes the same lock.

    While another thread's run holds it, ``progress(0, 1, message)`` says so once and ``cancel`` is polled
    every 0.1 s, so a waiting run can still be cancelled (:class:`~napari_attribution.Cancelled`)."""
    lock = _lock_for(module)
    told = False
    while not lock.acquire(timeout=_POLL):
        if cancel is not None and cancel():
            raise Cancelled("The run was cancelled while it waited for another run on the same model; no result "
                            "was produced.")
        if progress is not None and not told:
            progress(0, 1, "waiting for another run on the same model to finish")
            told = True
    try:
        yield
    finally:
        lock.release()
