"""Progress with an ETA for the command line (Qt-free): one line on stderr that says how far a long run is, how long
it has taken and about how long it still needs.

The library reports progress as ``progress(done, total, message)`` calls (``na.explain``, ``na.compare``,
``na.evaluate``). :class:`ProgressLine` turns them into ``" 42%  1 min 10 s elapsed, about 1 min 36 s left  message"``.
The ETA is the elapsed time scaled by the fraction still to do, per stage: when the fraction goes back (the next
method, the next metric) a new stage starts and its clock restarts. On a terminal the line is rewritten in place (at
most five times a second); into a file or a pipe a full line is written at most every ``interval`` seconds and when a
stage ends, so logs stay readable. While the line is being rewritten, :meth:`ProgressLine.finishing_first` makes any
other output (a warning, a message, a result) end it first, so nothing is glued onto it.

A run through a card's sliding-window inferer reports its passes over the windows as ``"... windows k/n"``;
:class:`WindowStages` turns them into one fraction that grows through a gradient method's stitched forward over all
windows and its backward window by window (the library reports each of those from the same start), so that the
percentage, the Explain dock's bar and the ETA run on across the two.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = ["Eta", "ProgressLine", "WindowStages", "eta_seconds", "format_duration"]


def format_duration(seconds: float) -> str:
    """``"8.2 s"``, ``"42 s"``, ``"3 min 10 s"``, ``"1 h 05 min"``.

    Examples
    --------
    >>> format_duration(8.24), format_duration(42), format_duration(190), format_duration(3900)
    ('8.2 s', '42 s', '3 min 10 s', '1 h 05 min')
    """
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        m, r = divmod(int(round(s)), 60)
        return f"{m} min {r:02d} s" if m < 10 else f"{m} min"
    h, r = divmod(int(round(s)) // 60, 60)
    return f"{h} h {r:02d} min"


def eta_seconds(fraction: float, elapsed: float) -> float | None:
    """Seconds still needed when ``fraction`` of the work took ``elapsed`` seconds, at the same rate; None while too
    little is done to tell (under 1 % or under half a second).

    Examples
    --------
    >>> eta_seconds(0.25, 30.0)
    90.0
    """
    if fraction < 0.01 or elapsed < 0.5:
        return None
    return elapsed * (1.0 - min(fraction, 1.0)) / fraction


#: a pass over a sliding-window network's windows (:mod:`napari_attribution.inferers`), after any labels
_WINDOWS = re.compile(r"^(?P<label>.*?)(?P<kind>forward|backward|layer|reference): (?P<changed>changed )?"
                      r"windows (?P<k>\d+)/(?P<n>\d+)$")


class WindowStages:
    """Progress reports of runs through a sliding-window network, as one fraction of the work.

    The library reports each pass over the windows as ``"<label>: <kind>: windows k/n"`` inside one unit of the
    run's progress, and a gradient method's stitched forward over all windows and its backward window by window
    each go from the unit's start to its end: the raw fraction falls back when the backward starts. Here the
    stitched forward takes the first ``forward_share`` of its unit and the pass that follows it the rest: a window's
    forward costs about a third of its forward + backward (``"backward"``, share 1/4) and half of its forward + a
    backward that stops at a layer (``"layer"``, share 1/3). The stitched forward that fixes the target of a method
    with passes of its own (integrated gradients, perturbations) is reported before the method knows how many
    passes follow: it is held at its start. Reports without windows pass through.

    Examples
    --------
    >>> stages = WindowStages()
    >>> [round(stages(d, 18, f"saliency: {kind}: windows {d}/18"), 3)
    ...  for kind, d in [("forward", 9), ("forward", 18), ("backward", 9), ("backward", 18)]]
    [0.125, 0.25, 0.625, 1.0]
    """

    #: the share of a unit's stitched forward when a pass of this kind follows it
    FORWARD_SHARE = {"backward": 0.25, "layer": 1 / 3}

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the current unit (a new run starts)."""
        self._start = 0.0  # raw fraction where the current unit started (the last report without windows)
        self._label: str | None = None
        self._stages: list[tuple[str, bool]] = []
        self._k = self._n = 0
        self._end: float | None = None
        self._floor = 0.0
        self._units: dict[str, int] = {}  # window units seen per label

    def __call__(self, done: int, total: int, message: str) -> float:
        raw = min(1.0, max(0.0, done / total)) if total > 0 else 1.0
        m = _WINDOWS.match(message)
        if m is None:
            self._label = None
            self._start = raw
            return raw
        label, kind, k, n = m["label"], m["kind"], int(m["k"]), int(m["n"])
        stage = (kind, bool(m["changed"]))
        again = bool(self._stages) and stage == self._stages[-1] and n != self._n  # the same pass, other windows
        if self._label != label or again or (
                len(self._stages) > 1 and stage == self._stages[0]):  # the next unit's first pass
            self._label, self._stages, self._k, self._end, self._floor = label, [], 0, None, 0.0
            self._units[label] = self._units.get(label, 0) + 1
        if not self._stages or self._stages[-1] != stage or k < self._k:
            self._stages.append(stage)
        self._k, self._n = k, n
        if k > 0 and raw > self._start and (self._end is None or len(self._stages) == 1):
            self._end = self._start + (raw - self._start) * n / k
        follower = self._follower(label, self._stages[0])
        if follower is None:
            value = raw
        elif follower == "":  # the target's stitched forward of a method with passes of its own
            value = self._start
        else:
            end = self._end if self._end is not None else raw
            share = self.FORWARD_SHARE[follower]
            g = share * k / max(n, 1) if len(self._stages) == 1 else share + (1 - share) * k / max(n, 1)
            value = self._start + (end - self._start) * min(1.0, g)
        self._floor = max(self._floor, value)  # passes of one unit that start again from its start do not go back
        return self._floor

    def _follower(self, label: str, first: tuple[str, bool]) -> str | None:
        """The pass that follows the unit's stitched forward (``"backward"`` or ``"layer"``); ``""`` when the unit
        is the target's forward of a method with passes of its own; None when nothing is known to follow."""
        if first != ("forward", False):
            return None
        facts = _method_facts(label)
        if not facts:
            return None
        if all(shared for _, shared in facts):
            kinds = {fact for fact, _ in facts}
            return "backward" if kinds == {"exact"} else "layer" if kinds == {"per-window"} else None
        if self._units.get(label, 0) == 1:
            return ""
        return "backward" if all(fact == "exact" for fact, _ in facts) else None


@functools.lru_cache(maxsize=256)
def _method_facts(label: str) -> list[tuple[str | None, bool]]:
    """``(sliding-window fact, shared pass)`` of each registered method named in a progress label."""
    from napari_attribution import list_methods  # noqa: PLC0415 - the CLI imports this module before the library

    known = {info.name: info for info in list_methods()}
    return [(known[w].sliding_window, known[w].shared_pass) for w in re.findall(r"[a-z_]+", label) if w in known]


class Eta:
    """Seconds still needed from reported fractions, per stage: when the fraction falls back (the next method, the
    next scan) a new stage starts and its clock restarts from the previous report (see :func:`eta_seconds`).

    Examples
    --------
    >>> ticks = iter([0.0, 10.0, 20.0])
    >>> eta = Eta(clock=lambda: next(ticks))
    >>> eta(0.25), eta(0.5)
    (30.0, 20.0)
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = self._last = clock()
        self._fraction = 0.0

    def __call__(self, fraction: float) -> float | None:
        now = self.clock()
        if fraction < self._fraction:
            self.start = self._last
        self._fraction, self._last = fraction, now
        return None if fraction >= 1.0 else eta_seconds(fraction, now - self.start)


class ProgressLine:
    """A ``progress(done, total, message)`` callback that writes progress with an ETA to ``stream`` (stderr).

    Parameters
    ----------
    stream : text stream, optional
        Where to write (default ``sys.stderr``).
    prefix : str
        Put before every line, e.g. ``"[3/10] scan.nii.gz"``.
    interval : float
        Seconds between two lines when ``stream`` is not a terminal.
    clock : callable
        Seconds (monotonic); tests pass a fake one.
    tty : bool, optional
        Rewrite one line in place; default: whether ``stream`` is a terminal.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> ticks = iter([0.0, 10.0, 40.0])
    >>> line = ProgressLine(out, clock=lambda: next(ticks), tty=False, interval=0)
    >>> line(1, 4, "integrated gradients")
    >>> line(4, 4, "done")
    >>> print(out.getvalue(), end="")
     25%  10 s elapsed, about 30 s left  integrated gradients
    100%  40 s elapsed  done
    """

    def __init__(self, stream: TextIO | None = None, *, prefix: str = "", interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.prefix = prefix
        self.interval = interval
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.start = self._last_call = clock()
        self._fraction = 0.0
        self._last_write = float("-inf")
        self._open = False  # a terminal line is being rewritten (finish() ends it)
        self._ended = False  # the current stage's 100 % line is written
        self._windows = WindowStages()  # a sliding-window run's passes as one fraction

    def __call__(self, done: int, total: int, message: str) -> None:
        now = self.clock()
        fraction = self._windows(done, total, message)
        new_stage = fraction < self._fraction
        if new_stage:  # the next stage (method, metric): its own clock, from the previous stage's last report
            self.start = self._last_call
            self._ended = False
        self._fraction, self._last_call = fraction, now
        finished = fraction >= 1.0
        if finished and self._ended and not self.tty:
            return  # a stage's end is written once (its last steps may report 100 % more than once)
        if not (finished or new_stage) and now - self._last_write < (0.2 if self.tty else self.interval):
            return
        self._ended = finished
        self._last_write = now
        self._write(self.text(fraction, now - self.start, message))

    def text(self, fraction: float, elapsed: float, message: str) -> str:
        """One progress line (without the prefix)."""
        eta = None if fraction >= 1.0 else eta_seconds(fraction, elapsed)
        left = f", about {format_duration(eta)} left" if eta is not None else ""
        return f"{int(100 * fraction):3d}%  {format_duration(elapsed)} elapsed{left}  {message}"

    def log(self, line: str) -> None:
        """A line of its own (a scan finished, a summary written), not overwritten by the progress line; the next
        progress starts a new stage."""
        self.finish()
        print(line, file=self.stream, flush=True)
        self.start = self._last_call = self.clock()
        self._fraction, self._ended = 0.0, False
        self._windows.reset()

    def finish(self) -> None:
        """End the line being rewritten on a terminal (call once the run is over)."""
        if self._open:
            self._open = False  # first: the newline may pass through a _FinishFirst stream
            print(file=self.stream, flush=True)

    @contextlib.contextmanager
    def finishing_first(self) -> Iterator[None]:
        """Within this block, whatever else is written to ``sys.stdout`` or ``sys.stderr`` (a warning, a library's
        message) first ends the line being rewritten, so it starts on a line of its own instead of being glued onto
        the progress text; the next progress report starts a new line below it.

        Examples
        --------
        >>> import io, contextlib
        >>> out = io.StringIO()
        >>> line = ProgressLine(out, tty=True)
        >>> with contextlib.redirect_stderr(out), line.finishing_first():
        ...     line(1, 2, "occlusion")
        ...     print("warning: a window was scaled", file=sys.stderr)
        >>> out.getvalue().split("\\n")[1]
        'warning: a window was scaled'
        """
        with contextlib.redirect_stdout(_FinishFirst(sys.stdout, self)), \
                contextlib.redirect_stderr(_FinishFirst(sys.stderr, self)):
            yield

    def _write(self, text: str) -> None:
        line = f"{self.prefix}  {text}" if self.prefix else text
        if self.tty:
            width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
            print(f"\r{line[:width]:{width}s}", end="", file=self.stream, flush=True)
            self._open = True
        else:
            print(line, file=self.stream, flush=True)


class _FinishFirst:
    """A text stream that ends ``line``'s open terminal line before passing anything on to ``stream``."""

    def __init__(self, stream: TextIO, line: ProgressLine) -> None:
        self._stream = stream
        self._line = line

    def write(self, text: str) -> int:
        if text and self._line._open and not text.startswith("\r"):  # "\r": the progress line itself
            self._line.finish()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ... of the real stream
        return getattr(self._stream, name)
