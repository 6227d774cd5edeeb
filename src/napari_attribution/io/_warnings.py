"""Warning category of the readers."""

from __future__ import annotations

__all__ = ["ReaderWarning"]


class ReaderWarning(UserWarning):
    """A scan was read, but something about it deserves attention (missing slices, mixed series, ...).

    The same messages are listed in the reader's ``metadata["warnings"]``.
    """
