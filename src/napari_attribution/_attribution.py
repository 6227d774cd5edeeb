"""The result type of ``explain`` and ``compare``.

A whole-image run and a 2D model's slice-by-slice run over a volume give the same field types: ``target`` is one
target object, ``prediction`` one array with a slice axis on the scan's grid, ``extras`` one value per key. What
only a slice-wise run has (the explained slices, each slice's own target and extras) is in ``per_slice``, which is
None for a whole-image run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

import numpy as np

from .io._geometry import Geometry
from .targets import Class, Contrast, ErrorRegion, Predicted, Region, Voxel

__all__ = ["Attribution", "SliceWise", "TargetSpec", "plane_geometry"]

#: A resolved target: ``int`` and ``None`` are replaced by the object they stand for (``Class`` / ``Predicted``).
TargetSpec: TypeAlias = Class | Region | Voxel | Predicted | Contrast | ErrorRegion


@dataclass(frozen=True)
class SliceWise:
    """How a 2D model's slice-by-slice run over a volume went, slice by slice.

    Slices are indices along the volume's axis 0 (for a box run pasted into the scan, the scan's slices).

    Attributes
    ----------
    slices : tuple of int
        The explained slices, ascending.
    targets : mapping of int to target
        Each explained slice's resolved target, in that slice's 2D voxel space (e.g. ``Region(k, mask[z])``).
    descriptions : mapping of int to str
        Each explained slice's target in words.
    extras : mapping of int to dict
        Each explained slice's method extras (what a whole-image run keeps in ``Attribution.extras``, e.g.
        integrated gradients' ``completeness``).
    skipped : mapping of int to str
        Slices asked for but left out because they have nothing to explain for the target (no predicted region, no
        errors), with the reason.

    Examples
    --------
    >>> from napari_attribution.targets import Class
    >>> sw = SliceWise((1, 3), {1: Class(1), 3: Class(1)}, {1: "class 1", 3: "class 1"}, {1: {}, 3: {}})
    >>> sw.shifted(2).slices
    (3, 5)
    """

    slices: tuple[int, ...]
    targets: Mapping[int, TargetSpec]
    descriptions: Mapping[int, str]
    extras: Mapping[int, dict[str, Any]]
    skipped: Mapping[int, str] = field(default_factory=dict)

    def shifted(self, offset: int) -> SliceWise:
        """The same record with every slice index moved by ``offset`` (a box's first slice, when the box's result
        is pasted into the scan). The targets stay in their slice's (box's) 2D voxel space."""
        return SliceWise(
            slices=tuple(s + offset for s in self.slices),
            targets={s + offset: t for s, t in self.targets.items()},
            descriptions={s + offset: d for s, d in self.descriptions.items()},
            extras={s + offset: e for s, e in self.extras.items()},
            skipped={s + offset: why for s, why in self.skipped.items()},
        )


def plane_geometry(geometry: Geometry | None) -> Geometry | None:
    """The geometry of one slice (the last two axes) of a volume's ``geometry``; a 2D geometry and None stay as
    they are. The in-plane spacing and origin are kept, the direction is left out (the identity).

    Examples
    --------
    >>> plane_geometry(Geometry(spacing=(5.0, 1.0, 0.5), origin=(1.0, 2.0, 3.0)))
    Geometry(spacing=(1.0, 0.5), origin=(2.0, 3.0), direction=None)
    """
    if geometry is None or len(geometry.spacing) < 3:
        return geometry
    return Geometry(spacing=tuple(geometry.spacing)[-2:], origin=tuple(geometry.origin)[-2:])


@dataclass
class Attribution:
    """One attribution map with everything needed to display, save and trust it.

    A whole-image run and a 2D model's slice-wise run over a volume give the same field types; ``per_slice`` is
    the only field that tells them apart (None for a whole-image run).

    Attributes
    ----------
    data : np.ndarray
        float32, the image's spatial shape ``(*S)``: raw values, signed where the method is signed, upsampled
        to the input grid for layer methods, never min-max normalised. A 2D model on a volume gives the full
        ``(D, H, W)`` volume with NaN on slices that were not explained.
    method : str
        Canonical method name.
    target : Class, Region, Voxel, Predicted, Contrast or ErrorRegion
        The resolved target (``int`` and ``None`` replaced by the target object they stand for). Slice-wise: the
        target in the volume's voxel space — the target object the user gave, or for ``int`` / ``None`` the
        target every explained slice resolved to; when ``None`` resolved to different classes on different slices,
        the first explained slice's (each slice's own is in ``per_slice.targets``).
    layer : str or None
        The layer a layer method used.
    params : dict
        All parameters, defaults included.
    signed : bool
        Whether the sign of ``data`` is meaningful.
    seconds : float
        Wall-clock time of the computation (shared passes included; slice-wise: all slices).
    prediction : np.ndarray or None
        Segmentation: the predicted label map, an integer array of ``data``'s shape; slice-wise, the slices' label
        maps stacked into the volume, with 0 (no label) on slices that were not run or were skipped.
        Classification: class probabilities, float32 ``(K,)``; slice-wise ``(D, K)``, one row per slice, NaN on
        slices that were not run or were skipped. So ``prediction[z]`` is slice ``z``'s prediction of a slice-wise
        run, and a label map is the prediction whose ``ndim`` is ``data``'s.
    per_channel : np.ndarray or None
        ``(C, *S)`` per-input-channel maps when the input has several channels and the method is computed per
        channel.
    geometry : Geometry or None
        The input's geometry, passed through so the map lines up with the scan.
    extras : dict
        Method-specific arrays and numbers (e.g. ``layer_map``, ``completeness``), and what the input path did
        (``preprocessing``, ``model_grid_shape``), ``output_channels``, a box run's ``roi``. Slice-wise: the
        values that are the same on every explained slice (e.g. ``window``, ``output_channels``); each slice's
        own are in ``per_slice.extras``.
    description : str
        The target in words.
    per_slice : SliceWise or None
        Slice-wise runs only: the explained and skipped slices, and each slice's target, description and extras.
    """

    data: np.ndarray
    method: str
    target: TargetSpec
    layer: str | None
    params: dict[str, Any]
    signed: bool
    seconds: float
    prediction: np.ndarray | None = None
    per_channel: np.ndarray | None = None
    geometry: Geometry | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    per_slice: SliceWise | None = None

    @property
    def label_map(self) -> np.ndarray | None:
        """The predicted label map on ``data``'s grid (segmentation), or None (classification, no prediction, or a
        prediction on another grid)."""
        pred = self.prediction
        if pred is None or pred.shape != np.shape(self.data):
            return None
        return pred

    def on_slice(self, z: int) -> Attribution:
        """The 2D result of the explained slice ``z`` of a slice-wise run: that slice of the map (and of
        ``per_channel``), its own target, prediction, extras and description, and the slice's geometry
        (:func:`plane_geometry`).

        Raises
        ------
        ValueError
            This is not a slice-wise result, or slice ``z`` was not explained.

        Examples
        --------
        >>> import numpy as np
        >>> from napari_attribution.targets import Class
        >>> sw = SliceWise((1,), {1: Class(1)}, {1: "class 1"}, {1: {"steps": 8}})
        >>> att = Attribution(np.zeros((3, 4, 4), np.float32), "saliency", Class(1), None, {}, False, 0.1,
        ...                   prediction=np.full((3, 2), np.nan, np.float32), per_slice=sw)
        >>> one = att.on_slice(1)
        >>> one.data.shape, one.prediction.shape, one.extras, one.per_slice is None
        ((4, 4), (2,), {'steps': 8}, True)
        """
        ps = self.per_slice
        if ps is None or z not in ps.targets:
            what = "not a slice-wise result" if ps is None else f"explained slices: {list(ps.slices)}"
            raise ValueError(f"Slice {z} was not explained ({what}).")
        return replace(
            self,
            data=np.asarray(self.data)[z],
            target=ps.targets[z],
            prediction=None if self.prediction is None else self.prediction[z],
            per_channel=None if self.per_channel is None else self.per_channel[:, z],
            geometry=plane_geometry(self.geometry),
            extras=dict(ps.extras.get(z, {})),
            description=ps.descriptions.get(z, self.description),
            per_slice=None,
        )

    def __repr__(self) -> str:
        finite = self.data[np.isfinite(self.data)]
        rng = f"[{finite.min():.3g}, {finite.max():.3g}]" if finite.size else "[]"
        return (
            f"Attribution(method={self.method!r}, shape={self.data.shape}, range={rng}, "
            f"target={self.description or self.target!r}, layer={self.layer!r}, seconds={self.seconds:.3f})"
        )
