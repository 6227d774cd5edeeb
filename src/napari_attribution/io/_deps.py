"""Lazy imports of the optional readers' libraries, with an install hint when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from .._errors import ReaderError

__all__ = ["MissingDependencyError", "import_optional"]


class MissingDependencyError(ReaderError, ImportError):
    """A library needed to read or write a format is not installed (the message says what to install)."""


def import_optional(module: str, package: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with a ``pip install`` hint.

    Parameters
    ----------
    module : str
        Importable module name, e.g. ``"nibabel"``.
    package : str
        Name of the distribution to install, e.g. ``"nibabel"``.
    purpose : str
        What it is needed for, e.g. ``"read NIfTI files"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"The '{package}' package is needed to {purpose} but it is not installed. "
            f"Install it with: pip install {package}"
        ) from exc
