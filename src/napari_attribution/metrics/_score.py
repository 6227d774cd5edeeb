"""The result type of ``evaluate`` and the scorer that turns perturbed images into target probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._errors import InputShapeError
from ..methods._hooks import model_guard
from ..methods._run import first_output
from ..pipeline import as_image, model_and_card, prepared_input, task_of
from ..targets import ResolvedTarget, Target, resolve_target

if TYPE_CHECKING:
    from ..inputs import Prepared

__all__ = ["Score", "Scorer"]


@dataclass
class Score:
    """A metric's result.

    Attributes
    ----------
    metric : str
        The metric's name.
    value : float
        The headline number.
    higher_is_better : bool
        How to read ``value``.
    details : dict
        Curves, per-label tables, per-layer values, counts.
    seconds : float
        Wall-clock time of the evaluation.
    """

    metric: str
    value: float
    higher_is_better: bool
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __repr__(self) -> str:
        arrow = "higher is better" if self.higher_is_better else "lower is better"
        return f"Score({self.metric}={self.value:.4g}, {arrow}, {self.seconds:.2f} s)"


class Scorer:
    """Scores images with the model's target probability (or logit).

    The target is resolved once on the unperturbed image and held fixed (methods.md §1.4: the region is frozen
    at the original prediction). Scores of a segmentation region are the mean probability over the region
    (the target's score divided by the sum of its weights, ``norm``, when the weights are non-negative);
    ``mean=False`` gives the plain weighted sum, which is what gradient maps explain. A target with an explicit
    ``score`` (``Class(k, score="logit")``) is scored that way, whatever the metric's natural score.
    """

    def __init__(self, model: Any, image: np.ndarray, target: Target, *, geometry: Any = None,
                 batch: int = 8) -> None:
        from ..inputs import fit_network, layout
        from ..io._geometry import Geometry

        self.user_module, self.card = model_and_card(model)
        arr = as_image(image)
        lay = layout(arr.shape, self.card)
        if lay.slicewise:
            raise InputShapeError(
                "Metrics run on the model's own dimensionality: for a 2D model on a volume, evaluate one slice "
                "(image[z]) with that slice's attribution."
            )
        self.channel_axis = lay.channel_axis
        self.channels = lay.channels
        self.geometry = geometry if isinstance(geometry, Geometry) else None
        self.image = arr
        self.spatial = lay.spatial(arr.shape)
        self.batch = batch
        # the input path explain uses: perturbed copies are normalised with the scan's own numbers and the network
        # sees them through the same differentiable grid change, so scores and targets live on the scan's grid
        prep = prepared_input(self.user_module, arr, self.geometry, self.card, lay)
        try:
            out = self._first(prep)
        except Exception as err:
            prep = fit_network(self.user_module, prep, self.card, err)
            out = self._first(prep)
        x = self._tensor(prep.scan)
        task = task_of(out, x, self.card)
        self.target: ResolvedTarget = resolve_target(
            target, out, task=task, output_kind=self.card.output, background=self.card.background,
        )
        w = self.target.weights
        self.norm = float(w.sum()) if bool((w >= 0).all()) and float(w.sum()) > 0 else 1.0
        self.task = task
        self.calls = 0

    def _first(self, prep: Prepared) -> torch.Tensor:
        self.prepared = prep
        self.module: nn.Module = prep.network(self.user_module)
        with model_guard(self.user_module), torch.no_grad():
            return first_output(self.module(self._tensor(prep.scan)))

    def _input(self, image: np.ndarray) -> torch.Tensor:
        """A perturbed copy of the image, normalised as the scan was (on the scan's grid)."""
        return self._tensor(self.prepared.intensity(np.asarray(image, dtype=np.float32)))

    def _tensor(self, data: np.ndarray) -> torch.Tensor:
        shape = data.shape[1:] if self.channel_axis else data.shape
        return torch.from_numpy(np.ascontiguousarray(data.reshape((1, self.channels) + tuple(shape))))

    def __call__(self, images: np.ndarray, probability: bool = True, *, mean: bool = True,
                 force: bool = False) -> np.ndarray:
        """Scores of ``images`` ``(N, *image.shape)`` on the image grid, ``(N,)``.

        ``probability``: the metric's natural score (the target's explicit ``score`` overrides it unless
        ``force``, for quantities defined on probabilities only); ``mean``: divide by ``norm`` (a region's mean
        rather than its sum)."""
        use_prob = probability if force else self.target.uses_probability(probability)
        scale = self.norm if mean else 1.0
        out = np.empty(len(images), np.float64)
        with model_guard(self.user_module), torch.no_grad():
            for start in range(0, len(images), self.batch):
                chunk = images[start:start + self.batch]
                xs = torch.cat([self._input(im) for im in chunk])
                y = first_output(self.module(xs))
                out[start:start + len(chunk)] = (self.target.score_as(y, use_prob) / scale).double().numpy()
                self.calls += len(chunk)
        return out

    def log_odds(self, images: np.ndarray) -> np.ndarray:
        """Log-odds ``log(p / (1 - p))`` of the target's probability, computed from the logits so that saturated
        models (p = 1.0 in float32) still show changes: exact for a one-class classification target, else from
        the float64 probability clipped to [1e-12, 1 - 1e-12]."""
        w = self.target.weights
        one_hot = self.task == "classification" and w.ndim == 1 and int((w != 0).sum()) == 1 and float(w.max()) == 1
        if not one_hot or self.target.activation != "softmax":
            p = np.clip(self(images, force=True), 1e-12, 1 - 1e-12)
            result: np.ndarray = np.log(p) - np.log1p(-p)
            return result
        k = int(w.argmax())
        out = np.empty(len(images), np.float64)
        with model_guard(self.user_module), torch.no_grad():
            for start in range(0, len(images), self.batch):
                chunk = images[start:start + self.batch]
                xs = torch.cat([self._input(im) for im in chunk])
                y = first_output(self.module(xs)).double()
                others = torch.cat([y[:, :k], y[:, k + 1:]], 1)
                out[start:start + len(chunk)] = (y[:, k] - torch.logsumexp(others, 1)).numpy()
                self.calls += len(chunk)
        return out

    @property
    def model(self) -> nn.Module:
        """The network as the scorer runs it (on the scan's grid)."""
        return self.module
