"""The result type of ``explain`` and ``compare``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Attribution"]


@dataclass
class Attribution:
    """One attribution map with everything needed to display, save and trust it.

    Attributes
    ----------
    data : np.ndarray
        float32, the image's spatial shape ``(*S)``: raw values, signed where the method is signed, upsampled
        to the input grid for layer methods, never min-max normalised. A 2D model on a volume gives the full
        ``(D, H, W)`` volume with NaN on slices that were not explained.
    method : str
        Canonical method name.
    target : object
        The resolved target (a ``napari_attribution.targets`` object; a list per slice for slice-wise runs).
    layer : str or None
        The layer a layer method used.
    params : dict
        All parameters, defaults included.
    signed : bool
        Whether the sign of ``data`` is meaningful.
    seconds : float
        Wall-clock time of the computation (shared passes included).
    prediction : np.ndarray or list or None
        Class probabilities ``(K,)`` (classification) or the predicted label map (segmentation); a list per
        slice for slice-wise runs.
    per_channel : np.ndarray or None
        ``(C, *S)`` per-input-channel maps when the input has several channels and the method is computed per
        channel.
    geometry : Geometry or None
        The input's geometry, passed through so the map lines up with the scan.
    extras : dict
        Method-specific arrays and numbers (e.g. ``layer_map``, ``completeness``).
    description : str
        The target in words.
    """

    data: np.ndarray
    method: str
    target: Any
    layer: str | None
    params: dict[str, Any]
    signed: bool
    seconds: float
    prediction: Any = None
    per_channel: np.ndarray | None = None
    geometry: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __repr__(self) -> str:
        finite = self.data[np.isfinite(self.data)]
        rng = f"[{finite.min():.3g}, {finite.max():.3g}]" if finite.size else "[]"
        return (
            f"Attribution(method={self.method!r}, shape={self.data.shape}, range={rng}, "
            f"target={self.description or self.target!r}, layer={self.layer!r}, seconds={self.seconds:.3f})"
        )
