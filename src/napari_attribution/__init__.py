"""napari-attribution: explain medical-imaging deep-learning models (2D and 3D, classification and segmentation).

The public API is this module's ``__all__``. Importing it imports neither Qt, magicgui nor napari.

>>> import napari_attribution as na
>>> na.get_method("grad_cam").family, na.get_method("grad_cam").needs_layer
('cam', True)
"""

from __future__ import annotations

from . import targets
from ._attribution import Attribution, SliceWise
from ._errors import (
    AttributionError,
    Cancelled,
    CompletenessWarning,
    InputShapeError,
    LayerNotFoundError,
    MemoryBudgetError,
    MethodError,
    ModelLoadError,
    ParameterError,
    PreprocessingWarning,
    ReaderError,
    ScaledDefaultsWarning,
    TargetError,
)
from .interpretation import RelevantFeatures, fit_relevant_features
from .io._geometry import Geometry
from .methods._registry import MethodInfo, get_method, list_methods
from .metrics import Score, agreement, evaluate
from .models import LoadedModel, ModelCard, find_layers, load_model
from .pipeline import compare, explain, explain_layers

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "AttributionError",
    "Cancelled",
    "CompletenessWarning",
    "Geometry",
    "InputShapeError",
    "LayerNotFoundError",
    "LoadedModel",
    "MemoryBudgetError",
    "MethodError",
    "MethodInfo",
    "ModelCard",
    "ModelLoadError",
    "ParameterError",
    "PreprocessingWarning",
    "ReaderError",
    "RelevantFeatures",
    "ScaledDefaultsWarning",
    "Score",
    "SliceWise",
    "TargetError",
    "__version__",
    "agreement",
    "compare",
    "evaluate",
    "explain",
    "explain_layers",
    "find_layers",
    "fit_relevant_features",
    "get_method",
    "list_methods",
    "load_model",
    "targets",
]
