"""What to explain: a target turns the model's output into one scalar per batch item.

Every target resolves, at the unperturbed input, to a constant weight tensor ``W`` with the output's shape
(without the batch axis) and a score mode. The scalar is ``T(y) = sum(W * s(y))`` where ``s`` is the identity
(``"logit"``: raw output) or softmax / sigmoid (``"probability"``). A segmentation target is therefore a
weight on the output (the sum of class-k output over a region, methods.md §1.4 S2), and gradient methods get
a real signal through it, unlike a thresholded voxel count whose gradient is zero.

=====================================  =======================================================================
target                                 scalar
=====================================  =======================================================================
``int`` k                              classification: ``Class(k)``; segmentation: ``Predicted(k)``
``Class(k)``                           ``y_k`` (segmentation: ``sum_u y_k(u)`` over the whole output)
``Region(k, mask)``                    ``sum_{u in mask} y_k(u)``; ``mask`` boolean, image voxel space
``Voxel(k, index)``                    ``y_k(index)``
``Predicted(k)``                       ``sum_{u in M} y_k(u)``, ``M`` = where the model predicts k, frozen at x
``Contrast(k1, k2)``                   ``T_k1 - T_k2`` (segmentation: over the region predicted as k1)
``ErrorRegion(k, truth, kind)``        ``sum_{u in E} y_k(u)``, ``E`` = false positives or false negatives of k
``None``                               the predicted class, or ``Predicted`` of the largest foreground class
=====================================  =======================================================================

Which score ``s`` is used: a target's ``score`` defaults to ``None``, "the method's natural score": the logit
for gradient and CAM methods, the probability for perturbation methods and metrics (they call the target with
``probability=True``). An explicit ``score="logit"`` or ``"probability"`` is honoured by every method and metric
(a method that cannot honour it refuses it with a message); it is never silently swapped.

One output channel (a sigmoid or a single logit, e.g. brain extraction) follows one rule everywhere: the class
index is the output channel, so its foreground is class 0 (``Predicted(0)``, the default), the region where the
output is > 0 (logits) or > 0.5 (probabilities). Its predicted label map writes that foreground as 1 (napari
shows label 0 as clear), so a label map's region of class ``k`` is :func:`class_region` ``(labels, k,
channels)``, never ``labels == k``; class 1 does not exist and is a :class:`TargetError` naming class 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from ._errors import TargetError

__all__ = [
    "Class",
    "Contrast",
    "ErrorRegion",
    "Predicted",
    "Region",
    "ResolvedTarget",
    "Target",
    "Voxel",
    "class_of_label",
    "class_region",
    "cropped",
    "found_per_slice",
    "on_slice",
    "resolve_target",
    "slices_needed",
]

Score = Literal["logit", "probability"]
#: ``None``: the method's natural score (logit for gradient / CAM methods, probability for perturbation / metrics)
ScoreChoice = Literal["logit", "probability"] | None


class _Spatial:
    """What a target knows about its place in the image: its part on one slice of a volume, its part inside a box
    (ROI), and the slices a slice-wise run must explain. A target without a mask or index (``Class``,
    ``Predicted``) is the same on every slice and in every box: these defaults."""

    #: whether the target's region is found on each slice (the predicted region, an error region, a contrast),
    #: so a slice without it is skipped by a slice-wise run instead of failing the whole volume
    found_per_slice: ClassVar[bool] = False

    def on_slice(self, i: int) -> Any:
        """The part of this volume-space target on slice ``i`` (axis 0), for a 2D model run slice by slice."""
        return self

    def cropped(self, roi: tuple[slice, ...]) -> Any:
        """This target inside the box ``roi`` (one slice with explicit start and stop per spatial axis), in the
        box's voxel space. A mask of another dimensionality than the box is left as it is."""
        return self

    def slices_needed(self, depth: int) -> list[int] | None:
        """The slices of a volume of ``depth`` slices that a slice-wise run must explain for this target, or
        ``None``: every slice (the default when no slices are chosen)."""
        return None


def _slice_of(mask: Any, i: int) -> Any:
    # an int label map stays an int label map (ErrorRegion reads its class from it)
    return np.asarray(mask)[i]


def _crop(mask: Any, roi: tuple[slice, ...]) -> Any:
    m = np.asarray(mask)
    return m[roi] if m.ndim == len(roi) else m


@dataclass(frozen=True)
class Class(_Spatial):
    """Class ``k``'s output: the method's natural score (default), or the ``"logit"`` / ``"probability"``."""

    k: int
    score: ScoreChoice = None


@dataclass(frozen=True, eq=False)
class Region(_Spatial):
    """Sum of class ``k``'s output over a boolean ``mask`` of the image's spatial shape."""

    k: int
    mask: Any
    score: ScoreChoice = None

    def on_slice(self, i: int) -> Region:
        """The mask's slice ``i``."""
        return replace(self, mask=_slice_of(self.mask, i))

    def cropped(self, roi: tuple[slice, ...]) -> Region:
        """The mask inside the box."""
        return replace(self, mask=_crop(self.mask, roi))

    def slices_needed(self, depth: int) -> list[int] | None:
        """The slices the mask touches, when it is a volume of ``depth`` slices (``[]``: an empty mask)."""
        m = np.asarray(self.mask)
        if m.ndim == 3 and m.shape[0] == depth:
            return [i for i in range(depth) if m[i].any()]
        return None


@dataclass(frozen=True)
class Voxel(_Spatial):
    """Class ``k``'s output at one voxel ``index`` (image voxel space, numpy axis order)."""

    k: int
    index: tuple[int, ...]
    score: ScoreChoice = None

    def on_slice(self, i: int) -> Voxel:
        """The voxel's in-slice index (the slice axis dropped)."""
        return replace(self, index=tuple(self.index[1:]))

    def cropped(self, roi: tuple[slice, ...]) -> Voxel:
        """The voxel's index in the box.

        Raises
        ------
        TargetError
            The voxel lies outside the box.
        """
        idx = tuple(int(i) - int(sl.start) for i, sl in zip(self.index, roi, strict=False))
        if any(i < 0 or i >= sl.stop - sl.start for i, sl in zip(idx, roi, strict=False)):
            raise TargetError("The target point lies outside the box (ROI) to explain; move the point or the box.")
        return replace(self, index=idx)

    def slices_needed(self, depth: int) -> list[int] | None:
        """The voxel's slice."""
        return [int(self.index[0])]


@dataclass(frozen=True)
class Predicted(_Spatial):
    """Sum of class ``k``'s output over the region the model predicts as ``k`` (frozen after the first pass)."""

    k: int
    score: ScoreChoice = None
    found_per_slice: ClassVar[bool] = True


@dataclass(frozen=True, eq=False)
class Contrast(_Spatial):
    """Evidence for ``k1`` against ``k2``: ``T_k1 - T_k2`` (segmentation: over the region predicted as ``k1``,
    or over ``mask`` when given)."""

    k1: int
    k2: int
    mask: Any = None
    score: ScoreChoice = None
    found_per_slice: ClassVar[bool] = True

    def on_slice(self, i: int) -> Contrast:
        """The mask's slice ``i`` (without a mask: the predicted region, found on the slice)."""
        return self if self.mask is None else replace(self, mask=_slice_of(self.mask, i))

    def cropped(self, roi: tuple[slice, ...]) -> Contrast:
        """The mask inside the box (without a mask: the predicted region, found in the box)."""
        return self if self.mask is None else replace(self, mask=_crop(self.mask, roi))


@dataclass(frozen=True, eq=False)
class ErrorRegion(_Spatial):
    """Class ``k``'s output over its false positives (``kind="fp"``) or false negatives (``"fn"``) against a
    ground-truth label mask ``truth_mask`` (an integer label map, or a boolean mask of class ``k``)."""

    k: int
    truth_mask: Any
    kind: Literal["fp", "fn"] = "fp"
    score: ScoreChoice = None
    found_per_slice: ClassVar[bool] = True

    def on_slice(self, i: int) -> ErrorRegion:
        """The ground truth's slice ``i``."""
        return replace(self, truth_mask=_slice_of(self.truth_mask, i))

    def cropped(self, roi: tuple[slice, ...]) -> ErrorRegion:
        """The ground truth inside the box."""
        return replace(self, truth_mask=_crop(self.truth_mask, roi))


Target = int | Class | Region | Voxel | Predicted | Contrast | ErrorRegion | None


# ``int`` and ``None`` stand for Class / Predicted (which one depends on the task), the same on every slice and in
# every box: these functions give them the defaults of :class:`_Spatial` and call the target's method otherwise.

def on_slice(target: Target, i: int) -> Target:
    """The part of a volume-space ``target`` on slice ``i`` (see ``Region.on_slice``)."""
    return target.on_slice(i) if isinstance(target, _Spatial) else target


def cropped(target: Target, roi: tuple[slice, ...]) -> Target:
    """``target`` inside the box ``roi`` (see ``Voxel.cropped``, which raises TargetError outside the box)."""
    return target.cropped(roi) if isinstance(target, _Spatial) else target


def slices_needed(target: Target, depth: int) -> list[int] | None:
    """The slices a slice-wise run must explain for ``target``, or ``None``: every slice."""
    return target.slices_needed(depth) if isinstance(target, _Spatial) else None


def found_per_slice(target: Target) -> bool:
    """Whether ``target``'s region is found on each slice, so a slice without it is skipped, not an error
    (``None`` and ``int`` mean a predicted class or region: yes)."""
    return target.found_per_slice if isinstance(target, _Spatial) else (
        target is None or isinstance(target, (int, np.integer)))


@dataclass
class ResolvedTarget:
    """A target fixed at the unperturbed input: constant output weights and a score mode.

    Attributes
    ----------
    weights : Tensor
        ``(K,)`` for classification or ``(K, *S_out)`` for segmentation.
    score : str or None
        The user's explicit ``"logit"`` or ``"probability"``, or ``None``: each method's natural score (logit for
        gradient and CAM methods, probability for perturbation methods and metrics).
    activation : str
        ``"softmax"``, ``"sigmoid"`` or ``"none"`` (the model already outputs probabilities).
    spec : object
        The resolved user-level target (``int`` and ``None`` replaced by a target object).
    description : str
        Human-readable, e.g. ``"class 1"``, ``"class 1 (probability)"`` or ``"predicted region of class 1 (812
        voxels)"``.
    """

    weights: Tensor
    score: ScoreChoice
    activation: str
    spec: Any
    description: str
    extras: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, out: Tensor) -> Tensor:
        """Turn a batch of raw outputs ``(B, K, ...)`` into probabilities."""
        if self.activation == "softmax":
            return torch.softmax(out, dim=1)
        if self.activation == "sigmoid":
            return torch.sigmoid(out)
        return out

    def uses_probability(self, natural: bool = False) -> bool:
        """Whether scores are probabilities: the target's explicit ``score``, else the caller's ``natural`` one."""
        return natural if self.score is None else self.score == "probability"

    def __call__(self, out: Tensor, probability: bool | None = None) -> Tensor:
        """The target score of each batch item: ``(B, K, ...) -> (B,)``.

        ``probability`` is the calling method's natural score (``True`` for perturbation methods and metrics;
        ``None`` / ``False``: the logit, for gradient and CAM methods). A target with an explicit ``score``
        overrides it, so ``Class(k, score="logit")`` is scored on logits by occlusion too.
        """
        return self.score_as(out, self.uses_probability(bool(probability)))

    def score_as(self, out: Tensor, probability: bool) -> Tensor:
        """The weighted score on probabilities or raw outputs as asked, whatever the target's ``score`` (for
        quantities that are defined on one of them only, e.g. log-odds)."""
        values = self.probabilities(out) if probability else out
        w = self.weights.to(device=values.device, dtype=values.dtype)
        return (values * w).flatten(1).sum(1)


def _as_index_mask(mask: Any, shape: tuple[int, ...], what: str) -> Tensor:
    arr = np.asarray(mask.detach().cpu() if isinstance(mask, Tensor) else mask)
    if arr.shape != shape:
        raise TargetError(
            f"The {what} has shape {arr.shape}, but the model's output has spatial shape {shape}. "
            "Draw the mask on the explained image (same grid) or pass a mask of that shape."
        )
    return torch.from_numpy(arr.astype(bool))


# how each target is written in Python and on the command line, for the one-channel error message
_SPELLING = {"Class": ("Class(0)", "class:0"), "Predicted": ("Predicted(0)", "predicted:0"),
             "Region": ("Region(0, mask)", "region:0:MASK.nii.gz"), "Voxel": ("Voxel(0, index)", "voxel:0:z,y,x"),
             "ErrorRegion": ("ErrorRegion(0, truth)", "error:0:TRUTH.nii.gz:fp")}


def _check_class(k: int, n_classes: int, names: list[str] | None = None, kind: str = "Class") -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TargetError(f"A class index must be an integer, got {k!r}.")
    if n_classes == 1 and int(k) != 0:
        # the label map draws the one channel's foreground as 1, so users ask for class 1: say what to ask instead
        py, cli = _SPELLING.get(kind, _SPELLING["Class"])
        name = f" ({names[0]})" if names else ""
        drawn = "" if kind == "Class" else ", even though the prediction layer draws it as label 1"
        raise TargetError(
            f"Class {k} does not exist: this model has one output channel (a sigmoid or a single logit), so its "
            f"only class{name} is class 0{drawn}. Use {py} (command line: --target {cli})."
        )
    if not 0 <= int(k) < n_classes:
        extra = f" ({', '.join(f'{i}: {n}' for i, n in enumerate(names))})" if names else ""
        raise TargetError(f"Class {k} does not exist: the model has {n_classes} output classes{extra}.")
    return int(k)


def class_region(labels: Any, k: int, channels: int) -> Any:
    """Where a label map shows class (output channel) ``k`` of a model with ``channels`` output channels.

    The one rule for "the region of class ``k``": every target, table, count and CSV uses it. With several
    channels the label map holds the argmax, so the region is ``labels == k``. With one channel (a sigmoid or a
    single logit) the label map writes the channel's foreground (output > 0, or > 0.5 for probabilities) as 1,
    so class 0's region is ``labels > 0``; a ground-truth mask drawn for such a model counts every positive label
    (masks saved as 0/255 included). A boolean mask is already a region and is returned as it is.

    Parameters
    ----------
    labels : numpy array or Tensor ``(*S)``
        A predicted label map (:func:`predicted_labels`, ``Attribution.prediction``), a ground-truth label map or
        a boolean mask.
    k : int
        The class index: the output channel (0 for a one-channel model).
    channels : int
        The model's number of output channels ``K``.

    Returns
    -------
    numpy array or Tensor of bool ``(*S)``, the type of ``labels``

    Raises
    ------
    TargetError
        ``k`` is not a class of the model (for one channel: anything but 0, with a message naming class 0).

    Examples
    --------
    >>> import numpy as np
    >>> pred = np.array([0, 1, 1, 0])          # a one-channel model's prediction: foreground drawn as 1
    >>> class_region(pred, 0, channels=1).tolist()
    [False, True, True, False]
    >>> class_region(np.array([0, 2, 1, 2]), 2, channels=3).tolist()
    [False, True, False, True]
    """
    k = _check_class(k, int(channels))
    if isinstance(labels, Tensor):
        if labels.dtype == torch.bool:
            return labels
        return labels > 0 if channels == 1 else labels == k
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr
    return arr > 0 if channels == 1 else arr == k


def class_of_label(label: int, channels: int | None) -> int:
    """The class (output channel) a value of a predicted label map stands for: the value itself with several
    channels, 0 for the foreground label 1 of a one-channel model (``channels=None``: unknown, the value).

    >>> class_of_label(1, channels=1), class_of_label(1, channels=2)
    (0, 1)
    """
    return 0 if channels == 1 and int(label) > 0 else int(label)


def predicted_labels(out: Tensor, output_kind: str) -> Tensor:
    """The label map predicted by a segmentation output ``(K, *S)``: argmax, or a threshold for one channel; int16
    (a quarter of int64's memory: 150 MiB instead of 600 MiB on a 512 x 512 x 300 scan)."""
    if out.shape[0] == 1:
        thr = 0.5 if output_kind == "probabilities" else 0.0
        return (out[0] > thr).to(torch.int16)
    return channel_argmax(out, torch.int16 if out.shape[0] <= 2**15 else torch.long)


def channel_argmax(t: Tensor, dtype: torch.dtype = torch.long) -> Tensor:
    """``t.argmax(0)`` of a ``(K, *S)`` tensor as ``K - 1`` element-wise passes. PyTorch's CPU argmax over a leading
    axis is a strided reduction: measured on 96^3, 122 ms against 6 ms for K = 2 and 157 ms against 47 ms for
    K = 14 (one thread). Ties go to the first channel, as with ``argmax``."""
    best = t[0]
    idx = torch.zeros(best.shape, dtype=dtype, device=t.device)
    for k in range(1, t.shape[0]):
        idx.masked_fill_(t[k] > best, k)
        best = torch.maximum(best, t[k])
    return idx


def resolve_target(
    target: Target,
    output: Tensor,
    *,
    task: str,
    output_kind: str = "logits",
    background: int | None = 0,
    class_names: list[str] | None = None,
) -> ResolvedTarget:
    """Fix ``target`` against one unperturbed output ``(1, K)`` or ``(1, K, *S_out)``.

    Raises
    ------
    TargetError
        Class out of range, a mask of the wrong shape, or an empty region (the message suggests
        ``Region`` or ``Voxel``).
    """
    out = output.detach()[0]
    n = out.shape[0]
    if output_kind == "probabilities":
        activation = "none"
    elif task == "classification":
        activation = "softmax" if n > 1 else "sigmoid"
    else:
        activation = "softmax" if n > 1 else "sigmoid"
    spatial = tuple(out.shape[1:])
    w = torch.zeros_like(out, dtype=torch.float32)

    def done(spec: Any, description: str, score: ScoreChoice = None, **extras: Any) -> ResolvedTarget:
        if score not in (None, "logit", "probability"):
            raise TargetError(f"A target's score must be 'logit', 'probability' or None (the method's natural "
                              f"score), got {score!r}.")
        if score == "logit" and activation == "none":
            raise TargetError("This model outputs probabilities (its card says output: probabilities), so it has no "
                              "logit to score. Leave score out (the method's natural score) or use "
                              "score='probability'.")
        return ResolvedTarget(w, score, activation, spec, description, dict(extras))

    if task == "classification":
        if target is None:
            target = Class(int(out.argmax()))
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            target = Class(int(target))
        if isinstance(target, Class):
            k = _check_class(target.k, n, class_names)
            w[k] = 1
            return done(target, f"class {_name(k, class_names)}{_scored(target.score)}", target.score)
        if isinstance(target, Contrast):
            k1, k2 = _check_class(target.k1, n, class_names), _check_class(target.k2, n, class_names)
            w[k1] += 1
            w[k2] -= 1
            return done(target, f"class {_name(k1, class_names)} vs {_name(k2, class_names)}", target.score)
        raise TargetError(
            f"{type(target).__name__} targets need a segmentation output; this model classifies "
            f"(output {tuple(output.shape)}). Use a class index, Class(k) or Contrast(k1, k2)."
        )

    # segmentation: the label map only when the target needs it (a full-size scan's map is large)
    labels_box: list[Tensor] = []

    def predicted() -> Tensor:
        if not labels_box:
            labels_box.append(predicted_labels(out, output_kind))
        return labels_box[0]

    if target is None:
        if n == 1:
            target = Predicted(0)
        else:
            counts = torch.bincount(predicted().flatten().long(), minlength=n)
            if background is not None and 0 <= background < n:
                counts[background] = 0
            if int(counts.max()) == 0:
                raise TargetError(
                    "The model predicts no foreground in this image, so there is no default region to explain. "
                    "Pick a region (Region(k, mask)) or a voxel (Voxel(k, index)) instead."
                )
            target = Predicted(int(counts.argmax()))
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        target = Predicted(int(target))

    def region_of(k: int) -> Tensor:
        region: Tensor = class_region(predicted(), k, n)
        return region

    if isinstance(target, Class):
        k = _check_class(target.k, n, class_names)
        w[k] = 1
        return done(target, f"class {_name(k, class_names)} over the whole output{_scored(target.score)}", target.score)
    if isinstance(target, Predicted):
        k = _check_class(target.k, n, class_names, "Predicted")
        region = region_of(k)
        count = int(region.sum())
        if count == 0:
            raise TargetError(
                f"The model predicts no voxel of class {_name(k, class_names)} here, so the predicted region is "
                "empty. Explain a region you draw (Region(k, mask)) or one voxel (Voxel(k, index)) instead."
            )
        w[k].masked_fill_(region, 1.0)  # not w[k][region] = 1: that builds an index of the region
        return done(target, f"predicted region of class {_name(k, class_names)} ({count} voxels)",
                    target.score, region_voxels=count)
    if isinstance(target, Region):
        k = _check_class(target.k, n, class_names, "Region")
        mask = _as_index_mask(target.mask, spatial, "region mask")
        count = int(mask.sum())
        if count == 0:
            raise TargetError("The region mask is empty. Draw at least one voxel of the region to explain.")
        w[k].masked_fill_(mask, 1.0)  # not w[k][mask] = 1: that builds an index of the region
        return done(target, f"class {_name(k, class_names)} in a region of {count} voxels", target.score,
                    region_voxels=count)
    if isinstance(target, Voxel):
        k = _check_class(target.k, n, class_names, "Voxel")
        idx = tuple(int(i) for i in target.index)
        if len(idx) != len(spatial) or any(not 0 <= i < s for i, s in zip(idx, spatial, strict=True)):
            raise TargetError(f"Voxel {idx} lies outside the output grid {spatial}.")
        w[(k, *idx)] = 1
        return done(target, f"class {_name(k, class_names)} at voxel {idx}", target.score)
    if isinstance(target, Contrast):
        if n == 1:
            raise TargetError("A contrast needs two output channels; this model has one. Explain its one class "
                              "with Predicted(0) (command line: --target predicted:0).")
        k1, k2 = _check_class(target.k1, n, class_names), _check_class(target.k2, n, class_names)
        region = region_of(k1) if target.mask is None else _as_index_mask(target.mask, spatial, "contrast mask")
        if int(region.sum()) == 0:
            raise TargetError(
                f"The region for the contrast of class {_name(k1, class_names)} is empty. "
                "Pass a mask (Contrast(k1, k2, mask=...)) where the contrast should be explained."
            )
        w[k1][region] += 1
        w[k2][region] -= 1
        return done(target, f"class {_name(k1, class_names)} vs {_name(k2, class_names)}", target.score)
    if isinstance(target, ErrorRegion):
        k = _check_class(target.k, n, class_names, "ErrorRegion")
        truth_t = _as_index_mask(class_region(np.asarray(target.truth_mask), k, n), spatial, "ground-truth mask")
        pred = region_of(k)
        if target.kind == "fp":
            region = pred & ~truth_t
        elif target.kind == "fn":
            region = ~pred & truth_t
        else:
            raise TargetError(f"ErrorRegion kind must be 'fp' or 'fn', got {target.kind!r}.")
        count = int(region.sum())
        if count == 0:
            word = "false positives" if target.kind == "fp" else "false negatives"
            raise TargetError(f"There are no {word} of class {_name(k, class_names)} against this ground truth.")
        w[k].masked_fill_(region, 1.0)  # not w[k][region] = 1: that builds an index of the region
        return done(target, f"{target.kind.upper()} region of class {_name(k, class_names)} ({count} voxels)",
                    target.score, region_voxels=count)
    raise TargetError(
        f"Cannot use {target!r} as a target. Use a class index or one of Class, Region, Voxel, Predicted, "
        "Contrast, ErrorRegion from napari_attribution.targets."
    )


def _scored(score: ScoreChoice) -> str:
    """`` (logit)`` / `` (probability)`` for an explicit score; nothing for the method's natural one."""
    return "" if score is None else f" ({score})"


def _name(k: int, names: list[str] | None) -> str:
    if names and 0 <= k < len(names):
        return f"{k} ({names[k]})"
    return str(k)
