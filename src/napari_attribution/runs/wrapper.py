"""The one "run a job, never raise" wrapper of the docks' and the CLI's jobs (Explain, fitting the relevant
features, each check, loading a model).

A job's body either returns its outcome or raises; :func:`never_raise` turns what it raised into an outcome with a
message for the user, in one fixed order: the user's cancel, the library's own errors (their message says what to
do), running out of memory, a file that could not be written, anything else (one line for the user, the traceback
in the log). Each job keeps its own words in a :class:`Failures`. Qt-free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .._errors import AttributionError, Cancelled

__all__ = ["Failures", "never_raise"]

log = logging.getLogger(__name__)

O = TypeVar("O")  # noqa: E741 - the job's outcome type


@dataclass(frozen=True)
class Failures:
    """What a job says when it does not finish.

    Parameters
    ----------
    what : str
        The job, for the log ("explain", "check deletion").
    unexpected : callable
        The message for an error that is none of the others (the traceback goes to the log at debug level).
    cancelled : str or None
        The message when the user cancelled; None: a cancel is reported as the library error it is.
    library : callable
        The message for the library's own errors (:class:`~napari_attribution.AttributionError`); default its
        text, which says what to do.
    out_of_memory : str or None
        The message for a ``MemoryError``; None: reported as unexpected.
    os_error : callable or None
        The message for an ``OSError`` (a file that could not be written); None: reported as unexpected.
    """

    what: str
    unexpected: Callable[[Exception], str]
    cancelled: str | None = None
    library: Callable[[AttributionError], str] = str
    out_of_memory: str | None = None
    os_error: Callable[[OSError], str] | None = None

    def describe(self, err: Exception) -> tuple[str, str]:
        """``(status, message)`` for ``err``: status "cancelled" or "failed".

        Examples
        --------
        >>> Failures("demo", unexpected=lambda e: "odd", cancelled="stopped").describe(Cancelled("x"))
        ('cancelled', 'stopped')
        >>> Failures("demo", unexpected=lambda e: f"odd: {e}").describe(KeyError("k"))
        ('failed', "odd: 'k'")
        """
        if isinstance(err, Cancelled) and self.cancelled is not None:
            return "cancelled", self.cancelled
        if isinstance(err, AttributionError):
            return "failed", self.library(err)
        if isinstance(err, MemoryError) and self.out_of_memory is not None:
            return "failed", self.out_of_memory
        if isinstance(err, OSError) and self.os_error is not None:
            return "failed", self.os_error(err)
        log.debug("%s failed", self.what, exc_info=err)
        return "failed", self.unexpected(err)


def never_raise(body: Callable[[], O], make: Callable[[str, str], O], failures: Failures) -> O:
    """``body()``, or ``make(status, message)`` for what it raised (:meth:`Failures.describe`); never raises an
    ``Exception`` (a ``KeyboardInterrupt`` or ``SystemExit`` still ends the program).

    Parameters
    ----------
    body : callable
        The job: returns its outcome.
    make : callable
        Builds the outcome of a job that raised from ``(status, message)``; status is "cancelled" or "failed".
    failures : Failures
        The job's words.

    Returns
    -------
    The body's outcome, or the one ``make`` built.

    Examples
    --------
    >>> never_raise(lambda: 1 / 0, lambda status, message: (status, message),
    ...             Failures("divide", unexpected=lambda e: f"Divide failed ({type(e).__name__})"))
    ('failed', 'Divide failed (ZeroDivisionError)')
    """
    try:
        return body()
    except Exception as err:  # noqa: BLE001 - a job reports, it never raises
        return make(*failures.describe(err))
