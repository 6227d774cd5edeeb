"""``vebi``: test-time heatmaps from a class's relevant internal features, after Oramas, Wang & Tuytelaars,
"Visual Explanation by Interpretation: Improving Visual Feedback Capabilities of Deep Neural Networks"
(ICLR 2019, arXiv:1712.06302; methods.md §A5.2-A5.3).

The relevant features are learned once, offline, by :func:`napari_attribution.interpretation.fit_relevant_features`
(responses + mu-lasso, §A5.1) and passed as ``params={"features": feats}`` (or the path of the saved file).

Definition used, for an input ``x`` and the class ``c`` of the resolved target (the predicted class by default;
for segmentation the target's class)::

    v = responses(x) / ||responses(x)||_2          r_{l,k} = sum_u A^l_k(u)^2, L1-normalised within layer l
    rho_j = v_j * W_jc / |sum_j W_jc|              keep rho_j > 0; the top n (default 3) features
    per feature j = (layer l, channel k):
        seed layer l with A^l_k in channel k (0 elsewhere), back-propagate to the input with guided
        backpropagation, strided convolutions with the stride fix (below)
        H_j = minmax( || max(dz/dx, 0) ||_2 over input channels )
    H = max_j H_j                                   (pixel-wise)

``H`` is unsigned and lies in [0, 1] **by construction**: the per-feature min-max is part of the method (it makes
features comparable before the maximum, as in the authors' ``normalizeHeatmap_FAST``), not a display
normalisation. ``extras["decoupled"]`` keeps the raw per-feature maps ``(n, *S)`` (before the min-max, so
``H_j = minmax(decoupled[j])``) and ``extras["features"]`` the ``(layer, channel, relevance)`` of each.

Provenance. [code] (the authors' ``computePredictionJustificationHeatmaps.m``): the responses (``'filterL2L1'``,
L2-normalised on the fly), ``rho``, three features (``showNRelevantFeatures = 3``), seeding one channel with its
own activation, guided backpropagation as the ReLU rule, max-pool switches, the positive part -> L2 over colour
channels -> min-max of each map, the pixel-wise maximum, and the stride fix (``deconvMethod='new'``).
Our choices: the feature layers (every convolution's post-activation output and every linear output, methods.md
§A5.1); dividing by ``|sum_j W_jc|`` rather than ``sum_j W_jc`` (the same ranking; the sign of ``rho_j`` stays
that of ``v_j W_jc`` even for a column with a negative sum); the stride fix uses each strided layer's actual
input size (the released code uses the network's input size, right only for a strided first layer); for
segmentation, image-level class-presence labels and ``c`` = the target's class. The mu-lasso solver (FISTA with the
exact L1-ball projection of Duchi et al. 2008) is ours: the authors' feature-selection code is not released; any
exact solver reaches the same optimum.

The stride fix (§A5.3): the backward pass of a convolution with stride ``s > 1`` resizes the output gradient
(nearest) to the stride-1 output size and applies a stride-1 transposed convolution, which removes the
checkerboard of a strided transposed convolution (2D and 3D). It is a visualisation heuristic, not the gradient;
magnitudes grow by about ``s ** ndim``, which the per-feature min-max absorbs. ``stride_fix=False`` turns it off.

Cost: offline, N forward passes + the lasso; per explanation 2F + n modified backward passes. Needs hooks (no
TorchScript) and a ReLU-type CNN for the heatmaps (responses work for any layer).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import MethodError, ParameterError
from ..targets import Class, Contrast, ErrorRegion, Predicted, Region, Voxel
from ._features import backproject_features, layer_modules, model_responses, normalise_maps
from ._features_file import RelevantFeatures, features_file
from ._registry import register
from ._run import MethodOutput, Run

__all__ = ["resolve_features", "vebi"]

_HOW = (
    "vebi explains with the relevant features of each class, learned once over a data set. Fit them first: "
    "`from napari_attribution.interpretation import fit_relevant_features; "
    "feats = fit_relevant_features(model, images, labels); feats.save('model.vebi.npz')`, then pass "
    "params={'features': feats} or params={'features': 'model.vebi.npz'} (or the model file's path, next to "
    "which the features were saved)."
)

_CACHE: dict[tuple[str, int, int], RelevantFeatures] = {}


def resolve_features(value: Any) -> RelevantFeatures:
    """``params["features"]`` as a :class:`RelevantFeatures`: the object itself, or loaded from a path (cached
    per file version, so a slice-wise run reads the file once)."""
    if value is None:
        raise MethodError(_HOW)
    if isinstance(value, RelevantFeatures):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = features_file(value)
        try:
            st = path.stat()
        except OSError:
            raise MethodError(f"No relevant-features file at '{path}'. " + _HOW) from None
        key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
        if key not in _CACHE:
            if len(_CACHE) > 8:
                _CACHE.clear()
            _CACHE[key] = RelevantFeatures.load(path)
        return _CACHE[key]
    raise ParameterError(
        f"params['features'] must be a RelevantFeatures object or the path of a saved one, got "
        f"{type(value).__name__}."
    )


def _target_class(spec: Any) -> int:
    if isinstance(spec, (Class, Predicted, Region, Voxel, ErrorRegion)):
        return int(spec.k)
    if isinstance(spec, Contrast):
        return int(spec.k1)
    if isinstance(spec, (int, np.integer)):
        return int(spec)
    raise MethodError(f"vebi explains one class; cannot take the class of the target {spec!r}.")


@register(
    "vebi",
    label="VEBI (guided back-projection of the class's top relevant features, mu-lasso interpretation; in [0, 1])",
    family="backward_rule",
    passes="2F + n_features modified B (offline: N F + mu-lasso)",
    paper="Oramas, Wang & Tuytelaars, ICLR 2019, arXiv:1712.06302",
    signed=False,
    supports_torchscript=False,
    params={"features": None, "n_features": 3, "stride_fix": True},
    short="VEBI",
    quick_params={"n_features": 2},
)
def vebi(run: Run, params: dict[str, Any]) -> MethodOutput:
    """Visual explanation by interpretation (see the module docstring): the pixel-wise maximum of the min-max
    normalised guided back-projections of the class's ``n_features`` most relevant features in this image;
    unsigned, in [0, 1] by construction. ``extras``: ``features`` [(layer, channel, relevance)], ``decoupled``
    ``(n, *S)`` raw per-feature maps, ``class`` the explained class."""
    assert run.target is not None
    feats = resolve_features(params.get("features"))
    n = params.get("n_features", 3)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise ParameterError(f"n_features must be a whole number >= 1, got {n!r}.")
    c = _target_class(run.target.spec)
    if not 0 <= c < feats.W.shape[1]:
        raise MethodError(
            f"The features were fitted for {feats.W.shape[1]} classes ({', '.join(feats.class_names)}); class {c} "
            "is not among them. Fit them for this model's outputs."
        )
    w = feats.W[:, c]
    if not np.any(w):
        raise MethodError(
            f"Class {feats.class_names[c]!r} has no relevant features (its lasso column is zero): it had too few "
            "training images, or mu is too small. Fit again with more images of this class or a larger mu."
        )
    layer_modules(run.model, feats.layers)  # a clear error when the features belong to another model
    run.expected_total(int(n) + 1)
    v = model_responses(run.model, run.x, feats.layers, feats.layer_channels)[0].numpy()
    run.advance(1, "responses")
    total = float(w.sum())
    rho = v * w / (abs(total) if total != 0 else float(np.abs(w).sum()))
    order = [int(j) for j in np.argsort(-rho, kind="stable") if rho[j] > 0][: int(n)]
    names, chans = feats.feature_layer, feats.feature_channel
    chosen = [(str(names[j]), int(chans[j]), float(rho[j])) for j in order]
    spatial = run.spatial()
    if not chosen:  # none of the class's relevant features responds in this image
        zeros = torch.zeros((1, *spatial), dtype=torch.float32)
        return MethodOutput(zeros, {"features": [], "decoupled": np.zeros((0, *spatial), np.float32), "class": c,
                                    "note": f"none of class {feats.class_names[c]!r}'s relevant features responds"})
    raw = backproject_features(
        run.model, run.x, [(layer, ch) for layer, ch, _ in chosen], stride_fix=bool(params.get("stride_fix", True)),
        after_each=lambda: run.advance(1, "feature back-projection"),
    )[0]  # (n, *S)
    combined = normalise_maps(raw, len(spatial)).max(0).values
    return MethodOutput(
        combined[None].float(),
        {"features": chosen, "decoupled": raw.cpu().numpy().astype(np.float32), "class": c,
         "feature_index": order},
    )
