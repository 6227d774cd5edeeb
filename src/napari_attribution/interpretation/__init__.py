"""The interpretation stage of Oramas, Wang & Tuytelaars, "Visual Explanation by Interpretation" (ICLR 2019,
arXiv:1712.06302; methods.md §A5.1): which internal features of a trained model are *relevant* to each class,
learned once over a data set, saved next to the model and used by the ``vebi`` method at test time.

Three steps, all Qt-free and N-dimensional (2D and 3D, classification and segmentation):

1. **Responses** (``'filterL2L1'`` in the authors' code). For every feature layer ``l`` (each convolution's
   post-activation output and each fully connected output, found automatically) and channel ``k``::

       r_{l,k}(x) = sum_u A^l_k(u)^2,    r^_{l,k} = r_{l,k} / sum_k' r_{l,k'}     (L1 within the layer)
       v(x) = concat_l r^_{l,.} in R^m,  v <- v / ||v||_2

   Only these ``m`` numbers per image are kept (a forward hook that sums squares), never the activations.
2. **mu-lasso**. With ``X in R^{N x m}`` the responses of ``N`` images (one per row here) and ``L in {0,1}^{N x C}``
   the labels::

       W* = argmin_W ||X W - L||_F^2   subject to   ||w_c||_1 <= mu for every class c

   solved by FISTA (accelerated projected gradient with adaptive restart) and an exact column-wise projection onto
   the L1 ball (Duchi et al., ICML 2008), written here by hand. Why not scikit-learn: ``sklearn.linear_model.Lasso``
   solves the *penalised* form ``||XW - L||^2 / 2N + alpha ||W||_1``; the paper constrains each column's L1 norm by
   ``mu`` (``tau`` in the code, 10 for most released models). The two forms share solutions only for an unknown,
   data-dependent ``alpha(mu)``, so we solve the constrained problem directly. The relevant features of class
   ``c`` are the rows with ``W*_{jc} != 0``.
3. **Average visualisations**: per relevant feature, the mean of its test-time heatmaps (the ``vebi`` heatmap of
   that one feature) over the images it responds to most strongly (``top`` = 9, Zeiler & Fergus), plus the mean of
   the image under the thresholded heatmap.

Provenance (methods.md §A5, Part E): the response definition, the per-layer L1 normalisation, ``mu`` and the
test-time procedure are [code]; the constrained formulation is [literature] (the authors' feature-selection code
is not released and their SPGL1 settings are not available). Our choices: every convolution (post-activation)
and linear output is a feature layer (the logits layer excluded); the training vectors are L2-normalised too;
FISTA + Duchi projection as the solver (any exact solver reaches the same optimum); ``top = 9``; segmentation
labels are image-level "contains class c" (from label masks, or from the model's own prediction).

Examples
--------
>>> import numpy as np, torch
>>> from napari_attribution.interpretation import fit_relevant_features
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
>>> images = [np.random.default_rng(i).normal(size=(16, 16)).astype(np.float32) for i in range(6)]
>>> feats = fit_relevant_features(net, images, [0, 1, 0, 1, 0, 1], mu=10.0)
>>> feats.W.shape                       # 4 channels of the ReLU x 2 classes
(4, 2)
>>> path = feats.save("model.vebi.npz")  # doctest: +SKIP
"""

from __future__ import annotations

from ..methods._features_file import (
    Feature,
    FeaturesExistError,
    RelevantFeatures,
    features_file,
    features_path_for,
    save_features_beside,
)
from ._data import DemoCases, demo_cases, read_labels_csv
from ._fitting import fit_relevant_features
from ._solver import LassoResult, mu_lasso, project_l1_ball
from ._visualisation import FeatureVisualisation, average_visualisations

__all__ = [
    "DemoCases",
    "Feature",
    "FeatureVisualisation",
    "FeaturesExistError",
    "LassoResult",
    "RelevantFeatures",
    "average_visualisations",
    "demo_cases",
    "features_file",
    "features_path_for",
    "fit_relevant_features",
    "mu_lasso",
    "project_l1_ball",
    "read_labels_csv",
    "save_features_beside",
]
