"""The exception family of napari-attribution.

Every error the library raises on purpose derives from :class:`AttributionError`, and its message says
what to do next::

    AttributionError
     ├── TargetError          the target cannot be formed (class out of range, empty region, ...)
     ├── LayerNotFoundError   a layer name that the model does not have (lists the candidates)
     ├── InputShapeError      the image does not fit the model (dimensions, channels)
     ├── MethodError          unknown method, or a method that does not apply to this model
     ├── ParameterError       a parameter the method does not accept, or an invalid value
     ├── ModelLoadError       a model file or card that cannot be loaded
     ├── ReaderError          a scan that cannot be read
     └── Cancelled            the caller's ``cancel()`` returned True; nothing was produced

Warnings: :class:`CompletenessWarning` (a path method's map does not add up to the score change it explains);
:class:`ScaledDefaultsWarning` (a default window was scaled to the scan to keep the run affordable).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AttributionError",
    "Cancelled",
    "CompletenessWarning",
    "InputShapeError",
    "LayerNotFoundError",
    "MemoryBudgetError",
    "MethodError",
    "ModelLoadError",
    "ParameterError",
    "PreprocessingWarning",
    "ReaderError",
    "ScaledDefaultsWarning",
    "TargetError",
    "own_warnings",
]


class AttributionError(Exception):
    """Root of all errors raised on purpose by napari-attribution."""


class TargetError(AttributionError, ValueError):
    """The target cannot be formed for this model output."""


class LayerNotFoundError(AttributionError, KeyError):
    """The requested layer does not exist in the model (the message lists the candidates)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class InputShapeError(AttributionError, ValueError):
    """The image's shape does not fit the model."""


class MethodError(AttributionError, ValueError):
    """Unknown method, or a method that cannot be applied to this model."""


class ParameterError(AttributionError, ValueError):
    """A method parameter that is unknown or has an invalid value."""


class ModelLoadError(AttributionError):
    """A model source that cannot be loaded."""


class ReaderError(AttributionError):
    """A scan that cannot be read."""


class MemoryBudgetError(ParameterError):
    """The job would need more memory than its budget (``memory_budget``); the message gives what it needs."""


class Cancelled(AttributionError):
    """The run was cancelled by the caller; no result was produced."""


class CompletenessWarning(UserWarning):
    """Integrated gradients' map does not add up to the score change from the baseline (completeness error above
    5 %): too few steps for this model and path. The message says how far off it is and what to do."""


class ScaledDefaultsWarning(UserWarning):
    """A method's paper default (e.g. ``evidence``'s 5-voxel window) would need more than 4,096 forward passes on
    this scan, so a larger window was used; the message says which, and how to choose one (explicit parameters are
    always used as given)."""


class PreprocessingWarning(UserWarning):
    """A model's own preprocessing or inference steps (a MONAI bundle's transforms or inferer) that this tool does
    not reproduce; the message lists them, so that a difference from the model's own predictions is explained."""


def own_warnings(caught: list[Any]) -> list[str]:
    """The messages of the warnings this package raised (incomplete maps, scans read with a caveat) among
    ``warnings.catch_warnings(record=True)`` records, sorted and without repeats; other libraries' warnings
    (deprecations, ...) are left out: they are not about the user's result."""
    ours = {str(w.message) for w in caught if issubclass(w.category, UserWarning)
            and (issubclass(w.category, (CompletenessWarning, ScaledDefaultsWarning, PreprocessingWarning))
                 or "napari_attribution" in str(w.filename))}
    return sorted(ours)
