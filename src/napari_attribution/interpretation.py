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

import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import Cancelled, InputShapeError, MethodError, ParameterError, ReaderError
from .inputs import layout, prepare
from .methods._features import (
    backproject_features,
    layer_modules,
    model_responses,
    normalise_maps,
    responses_from_energy,
)
from .methods._features_file import (
    Feature,
    FeaturesExistError,
    RelevantFeatures,
    features_file,
    features_path_for,
    save_features_beside,
)
from .methods._hooks import model_guard, record_channel_energy, record_module_outputs
from .methods._run import first_output
from .models._card import LoadedModel, ModelCard, infer_card
from .targets import predicted_labels

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

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]
FloatArray = npt.NDArray[np.float64]

_SCAN_SUFFIXES = (".nii", ".nii.gz", ".dcm")


def read_labels_csv(path: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> dict[str, int]:
    """Image-level class labels of a folder of scans from a CSV file: one line per scan, ``file,label``, where
    ``file`` is the scan's file name (or its name without extension; a DICOM series: its folder's name) and
    ``label`` a class index or one of ``class_names``. A first line that is not a label (``file,label``) is read
    as a header. The mapping is what :func:`fit_relevant_features` takes as ``labels``.

    Raises
    ------
    ReaderError
        The file cannot be read, or a line has no valid label (the message names the line).
    """
    import csv

    names = [str(n) for n in class_names] if class_names else []

    def label_of(text: str) -> int | None:
        text = text.strip()
        if text in names:
            return names.index(text)
        try:
            return int(text)
        except ValueError:
            return None

    out: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ReaderError(f"Cannot read the labels file '{path}': {err}") from err
    for i, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise ReaderError(f"{path}, line {i}: expected 'file,label', got {','.join(row)!r}.")
        k = label_of(row[1])
        if k is None:
            if i == 1:
                continue  # a header
            choices = f" or one of {', '.join(names)}" if names else ""
            raise ReaderError(f"{path}, line {i}: the label {row[1].strip()!r} is not a class index{choices}.")
        out[row[0].strip()] = k
    if not out:
        raise ReaderError(f"The labels file '{path}' has no 'file,label' line.")
    return out


class DemoCases(Sequence[Any]):
    """``n`` cases of a bundled demo model's task, generated one at a time (``DemoSpec.generator(seed + i)``):
    each a ``Phantom`` with ``.image`` and ``.label`` (classification) or ``.mask`` (segmentation), as
    :func:`fit_relevant_features` takes them."""

    def __init__(self, model: str, n: int, seed: int = 500_000) -> None:
        from .models.demo import _spec_for

        self.spec = _spec_for(model)
        self.n = int(n)
        self.seed = int(seed)
        if self.n < 1:
            raise ParameterError("Generate at least one demo case.")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        j = int(i)
        if j < 0:
            j += self.n
        if not 0 <= j < self.n:
            raise IndexError(i)
        return self.spec.generator(self.seed + j)

    def __repr__(self) -> str:
        return f"DemoCases(demo:{self.spec.name}, n={self.n}, seed={self.seed})"


def demo_cases(model: str, n: int, *, seed: int = 500_000) -> DemoCases:
    """A data set of ``n`` generated cases for the demo model ``model`` (``"demo:lesion3d"`` or ``"lesion3d"``),
    with their labels (classification) or ground truth (segmentation), to fit relevant features on:
    ``fit_relevant_features(na.load_model("demo:lesion3d"), demo_cases("demo:lesion3d", 40))``. Case ``i`` is
    generated from the integer seed ``seed + i`` (the demo weights were trained on the streams of
    ``numpy.random.default_rng(0)``, so these cases are new to the model)."""
    return DemoCases(model, n, seed)


# ------------------------------------------------------------------------------------------------
# the mu-lasso


def project_l1_ball(v: npt.ArrayLike, mu: float) -> FloatArray:
    """Euclidean projection onto the L1 ball ``{w : ||w||_1 <= mu}`` (Duchi et al., ICML 2008), column-wise.

    Parameters
    ----------
    v : array, ``(m,)`` or ``(m, C)``
        One vector, or one vector per column.
    mu : float
        The radius, ``>= 0``.

    Returns
    -------
    ndarray
        Same shape as ``v``: ``v`` itself (a copy) where ``||v||_1 <= mu``, else ``sign(v) * max(|v| - theta, 0)``
        with the ``theta`` that puts the result on the sphere ``||w||_1 = mu``.

    Examples
    --------
    >>> project_l1_ball([3.0, -1.0, 0.5], 2.0)
    array([ 2., -0.,  0.])
    """
    arr = np.array(v, dtype=np.float64)
    if mu < 0:
        raise ParameterError(f"The L1 radius mu must be >= 0, got {mu}.")
    one = arr.ndim == 1
    cols = arr[:, None] if one else arr
    if cols.ndim != 2:
        raise ParameterError("project_l1_ball takes a vector (m,) or a matrix of columns (m, C).")
    a = np.abs(cols)
    over = np.flatnonzero(a.sum(0) > mu)
    if over.size:
        if mu == 0:
            cols[:, over] = 0.0
        else:
            sub = a[:, over]
            s = -np.sort(-sub, axis=0)  # descending
            csum = np.cumsum(s, axis=0)
            j = np.arange(1, s.shape[0] + 1, dtype=np.float64)[:, None]
            cond = s - (csum - mu) / j > 0  # true for j = 1..rho, false after
            rho = cond.shape[0] - 1 - np.argmax(cond[::-1], axis=0)  # last true index (0-based)
            theta = (csum[rho, np.arange(over.size)] - mu) / (rho + 1.0)
            cols[:, over] = np.sign(cols[:, over]) * np.maximum(sub - theta, 0.0)
    return cols[:, 0] if one else cols


@dataclass
class LassoResult:
    """The solution of :func:`mu_lasso` and how it was reached.

    ``objective`` is ``||X W - L||_F^2 / 2``; ``gap`` the Frank-Wolfe duality gap, an upper bound on
    ``objective - optimum``; ``converged`` whether ``gap <= tol * ||L||_F^2 / 2`` was reached within ``max_iter``.
    """

    W: FloatArray
    objective: float
    gap: float
    iterations: int
    converged: bool


def _largest_eigenvalue(a: FloatArray, seed: int) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite matrix (exact when small, power iteration else)."""
    if a.shape[0] <= 2000:
        return float(np.linalg.eigvalsh(a)[-1])
    rng = np.random.default_rng(seed)
    x = np.asarray(rng.standard_normal(size=(a.shape[0],)), dtype=np.float64)
    lam = 0.0
    for _ in range(300):
        y = a @ x
        norm = float(np.linalg.norm(y))
        if norm == 0:
            return 0.0
        x = y / norm
        if abs(norm - lam) <= 1e-9 * norm:
            lam = norm
            break
        lam = norm
    return lam * 1.01  # a step a little shorter than 1/L keeps the iteration monotone despite the estimate


def mu_lasso(
    X: npt.ArrayLike,
    L: npt.ArrayLike,
    mu: float,
    *,
    max_iter: int = 5000,
    tol: float = 1e-6,
    w0: npt.ArrayLike | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> LassoResult:
    """Solve ``min_W ||X W - L||_F^2 / 2`` subject to ``||w_c||_1 <= mu`` for every column ``c``.

    FISTA (Beck & Teboulle 2009) with step ``1 / ||X||_2^2``, the exact L1-ball projection of
    :func:`project_l1_ball` per column, and gradient-based adaptive restart (O'Donoghue & Candes 2015). The
    iterates stay feasible; convergence is certified by the Frank-Wolfe gap
    ``sum_c (<g_c, w_c> + mu ||g_c||_inf)`` with ``g = X^T (X W - L)``, which bounds the distance to the optimum
    of the objective. Entries below ``1e-8`` of their column's largest magnitude (round-off) are set to zero.

    Parameters
    ----------
    X : array, ``(N, m)``
        One response vector per row (image).
    L : array, ``(N, C)`` or ``(N,)``
        The labels (one-hot or multi-hot).
    mu : float
        The L1 bound per column (the paper's ``tau``).
    max_iter, tol : int, float
        Stop after ``max_iter`` iterations or when the gap is below ``tol`` times ``||L||_F^2 / 2``.
    w0 : array, ``(m, C)``, optional
        Warm start (projected first).
    seed : int
        Seeds the power iteration for very large problems (everything else is deterministic).
    progress, cancel : callables, optional
        ``progress(iteration, max_iter, message)``; ``cancel()`` polled every 10 iterations.
    """
    x = np.asarray(X, dtype=np.float64)
    lab = np.asarray(L, dtype=np.float64)
    if lab.ndim == 1:
        lab = lab[:, None]
    if x.ndim != 2 or lab.ndim != 2 or lab.shape[0] != x.shape[0]:
        raise ParameterError(f"X must be (N, m) and L (N, C) with the same N; got {x.shape} and {lab.shape}.")
    if not mu > 0:
        raise ParameterError(f"mu must be positive, got {mu}.")
    n, m = x.shape
    c = lab.shape[1]
    if m <= n:  # iterate on the (m, m) Gram matrix
        gram = x.T @ x
        xtl = x.T @ lab

        def grad(w: FloatArray) -> FloatArray:
            return np.asarray(gram @ w - xtl)

        lip = _largest_eigenvalue(gram, seed)
    else:

        def grad(w: FloatArray) -> FloatArray:
            return np.asarray(x.T @ (x @ w - lab))

        lip = _largest_eigenvalue(x @ x.T, seed)
    half_l2 = 0.5 * float(np.sum(lab * lab))
    scale = half_l2 if half_l2 > 0 else 1.0

    def objective(w: FloatArray) -> float:
        r = x @ w - lab
        return 0.5 * float(np.sum(r * r))

    def gap_of(w: FloatArray) -> float:
        g = grad(w)
        return float(np.sum(g * w) + mu * np.abs(g).max(axis=0).sum()) if g.size else 0.0

    w = np.zeros((m, c)) if w0 is None else project_l1_ball(np.asarray(w0, dtype=np.float64).reshape(m, c), mu)
    if lip <= 0 or m == 0:
        return LassoResult(w, objective(w), gap_of(w), 0, True)
    eta = 1.0 / lip
    y = w.copy()
    t = 1.0
    gap = gap_of(w)
    it = 0
    converged = gap <= tol * scale
    while not converged and it < max_iter:
        it += 1
        w_new = project_l1_ball(y - eta * grad(y), mu)
        if float(np.sum((y - w_new) * (w_new - w))) > 0:  # momentum points uphill: restart
            t = 1.0
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = w_new + ((t - 1.0) / t_new) * (w_new - w)
        w, t = w_new, t_new
        if it % 10 == 0 or it == max_iter:
            gap = gap_of(w)
            converged = gap <= tol * scale
            if cancel is not None and cancel():
                raise Cancelled("Fitting the relevant features was cancelled; nothing was produced.")
            if progress is not None:
                progress(it, max_iter, f"mu-lasso (gap {gap:.2e})")
    peak = np.abs(w).max(axis=0, keepdims=True) if w.size else np.zeros((1, c))
    w = np.where(np.abs(w) <= 1e-8 * peak, 0.0, w)
    return LassoResult(w, objective(w), gap_of(w), it, bool(converged))


# ------------------------------------------------------------------------------------------------
# images in, model inputs out


@dataclass
class _Item:
    array: npt.NDArray[Any]
    label: Any
    geometry: Any
    name: str


_NO_LABEL = object()


def _scan_paths(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or p.name.lower().endswith(_SCAN_SUFFIXES):
            out.append(p)
    if not out:
        raise ReaderError(
            f"No scans in '{folder}': expected NIfTI (.nii, .nii.gz) or DICOM (.dcm) files, or one sub-folder per "
            "DICOM series."
        )
    return out


def _items(images: Any) -> Iterator[_Item]:
    """Yield the data set's images with their labels (when the items carry them)."""
    if isinstance(images, (str, os.PathLike)):
        from .io import read_image

        path = Path(images)
        for p in _scan_paths(path) if path.is_dir() else [path]:
            data, geometry, _meta = read_image(p)
            yield _Item(np.asarray(data), _NO_LABEL, geometry, p.name)
        return
    if callable(images):
        yield from _items(images())
        return
    for i, item in enumerate(images):
        if isinstance(item, tuple) and len(item) == 2:
            yield _Item(np.asarray(item[0]), item[1], None, str(i))
        elif isinstance(item, tuple) and len(item) == 3 and isinstance(item[2], Mapping):  # read_image() output
            yield _Item(np.asarray(item[0]), _NO_LABEL, item[1], str(i))
        elif hasattr(item, "image") and not isinstance(item, np.ndarray):  # a demo Phantom or similar
            label = getattr(item, "label", None)
            if label is None:
                label = getattr(item, "mask", None)
            yield _Item(np.asarray(item.image), _NO_LABEL if label is None else label, None, str(i))
        else:
            yield _Item(np.asarray(item), _NO_LABEL, None, str(i))


def _model_and_card(model: nn.Module | LoadedModel) -> tuple[nn.Module, ModelCard]:
    if isinstance(model, LoadedModel):
        return model.module, infer_card(model.module, model.card)
    if isinstance(model, nn.Module):
        return model, infer_card(model)
    raise MethodError(f"model must be a torch.nn.Module or a LoadedModel, got {type(model).__name__}.")


def _model_input(item: _Item, card: ModelCard) -> npt.NDArray[np.float32]:
    """``(C, *S)`` float32 on the model's grid (the card's preprocessing applied, as ``explain`` does)."""
    arr = np.asarray(item.array, dtype=np.float32)
    try:
        lay = layout(arr.shape, card)  # the one channel rule (napari_attribution.inputs)
    except InputShapeError as err:
        raise InputShapeError(f"Image {item.name}: {err}") from None
    if lay.slicewise:
        raise InputShapeError(f"Image {item.name} has shape {arr.shape}; for a 2D model, give 2D slices.")
    has_c = lay.channel_axis
    if not np.isfinite(arr).all():
        raise InputShapeError(f"Image {item.name} contains NaN or infinite values.")
    prep = prepare(arr, item.geometry, card, channel_axis=has_c)
    data = prep.data if prep.channel_axis else prep.data[None]
    return np.ascontiguousarray(data, dtype=np.float32)


def _batches(
    images: Any, card: ModelCard, batch_size: int, cancel: Cancel | None
) -> Iterator[tuple[npt.NDArray[np.float32], list[_Item], list[int]]]:
    """Consecutive images of equal shape, ``batch_size`` at a time: ``(B, C, *S)``, the items and their indices."""
    xs: list[npt.NDArray[np.float32]] = []
    items: list[_Item] = []
    idx: list[int] = []
    for i, item in enumerate(_items(images)):
        if cancel is not None and cancel():
            raise Cancelled("Cancelled; nothing was produced.")
        x = _model_input(item, card)
        if xs and (x.shape != xs[0].shape or len(xs) >= batch_size):
            yield np.stack(xs), items, idx
            xs, items, idx = [], [], []
        xs.append(x)
        items.append(item)
        idx.append(i)
    if xs:
        yield np.stack(xs), items, idx


# ------------------------------------------------------------------------------------------------
# feature layers and responses

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_LINEAR = (nn.Linear,)
_PASS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
         nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
         nn.AlphaDropout, nn.Identity)
_ACT = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
        nn.Softplus, nn.Hardswish, nn.RReLU)


def feature_layers(
    model: nn.Module, x: Tensor, layers: Sequence[str] | None = None
) -> tuple[list[str], list[int]]:
    """The feature layers of ``model`` for an input ``x`` ``(1, C, *S)`` and their channel counts.

    Default: every convolution and linear module in forward order, each represented by the activation module that
    follows it (through normalisation and dropout modules), or by its own output when no activation module follows
    (functional activations); the last one is left out when it produces the model's output (the logits). Modules
    that run more than once per forward pass (shared activations) are not used. ``layers`` names the modules
    explicitly instead.
    """
    named = dict(model.named_modules())
    with torch.no_grad(), record_module_outputs(model) as records:
        out = first_output(model(x))
    calls = Counter(name for name, _, _ in records)
    shapes = {name: shape for name, shape, _ in records}
    if layers is not None:
        given = [str(n) for n in layers]
        for n in given:
            if n not in named:
                raise MethodError(f"The model has no module {n!r}.")
            if n not in shapes:
                raise MethodError(f"Module {n!r} did not run in the forward pass.")
            if calls[n] > 1:
                raise MethodError(f"Module {n!r} runs {calls[n]} times per forward pass; choose another layer.")
            if len(shapes[n]) < 2:
                raise MethodError(f"Module {n!r} has no channel axis (output shape {shapes[n]}).")
        return given, [int(shapes[n][1]) for n in given]
    leaves = [(n, s) for n, s, _ in records if not any(True for _ in named[n].children())]
    base = [i for i, (n, s) in enumerate(leaves) if isinstance(named[n], _CONV + _LINEAR) and len(s) >= 2]
    if base and tuple(leaves[base[-1]][1]) == tuple(out.shape):
        base = base[:-1]  # the logits
    names: list[str] = []
    chans: list[int] = []
    for i in base:
        name, shape = leaves[i]
        if calls[name] > 1:
            continue
        chosen = name
        j = i + 1
        while j < len(leaves):
            nj, sj = leaves[j]
            mod = named[nj]
            if sj != shape:
                break
            if isinstance(mod, _PASS):
                j += 1
                continue
            if isinstance(mod, _ACT) and calls[nj] == 1:
                chosen = nj
            break
        if chosen not in names:
            names.append(chosen)
            chans.append(int(shape[1]))
    if not names:
        raise MethodError(
            "No convolution or linear layers were found to take responses from; name them with layers=[...]."
        )
    return names, chans


# ------------------------------------------------------------------------------------------------
# fitting


def _task_of(out: Tensor, x: Tensor, card: ModelCard) -> str:
    from .pipeline import _task  # one rule for telling the task from the output shape

    return _task(out, x, card)


def _label_row(label: Any, task: str, out: Tensor, card: ModelCard, n_classes: int, name: str) -> FloatArray:
    """One row of ``L`` ``(C,)``; ``label`` is ``_NO_LABEL`` to use the model's own prediction ``out`` ``(K, ...)``."""
    row = np.zeros(n_classes)
    if task == "classification":
        if label is _NO_LABEL:
            if n_classes == 1:
                thr = 0.5 if card.output == "probabilities" else 0.0
                row[0] = float(out.reshape(-1)[0] > thr)
            else:
                row[int(out.argmax())] = 1.0
            return row
        arr = np.asarray(label)
        if arr.ndim == 0:
            k = int(arr)
            if n_classes == 1:
                if k not in (0, 1):
                    raise ParameterError(f"Image {name}: a one-output model takes labels 0 or 1, got {k}.")
                row[0] = float(k)
            elif not 0 <= k < n_classes:
                raise ParameterError(f"Image {name}: label {k} is not one of the model's {n_classes} classes.")
            else:
                row[k] = 1.0
            return row
        if arr.shape == (n_classes,):
            return arr.astype(np.float64)
        raise ParameterError(f"Image {name}: a classification label is a class index or a vector of {n_classes}.")
    # segmentation: image-level "contains class c" [our choice, methods.md §A5]
    if label is _NO_LABEL:
        labels = predicted_labels(out.detach().float().cpu(), card.output)
        if n_classes == 1:
            row[0] = float(bool((labels == 1).any()))
        else:
            present = torch.unique(labels).numpy()
            row[present[(present >= 0) & (present < n_classes)]] = 1.0
        return row
    if isinstance(label, (set, frozenset)):
        for k in label:
            if not 0 <= int(k) < n_classes:
                raise ParameterError(f"Image {name}: class {k} is not one of the model's {n_classes} classes.")
            row[int(k)] = 1.0
        return row
    arr = np.asarray(label)
    if arr.ndim == 0:
        row[int(arr)] = 1.0
        return row
    if arr.ndim == 1 and arr.shape[0] == n_classes and arr.ndim < out.ndim - 1:
        return np.asarray(arr != 0, dtype=np.float64)
    # a label mask: integer class map (or boolean foreground)
    if arr.dtype == bool:
        if n_classes == 1:
            row[0] = float(arr.any())
        else:
            row[0], row[1] = float((~arr).any()), float(arr.any())
        return row
    if n_classes == 1:
        row[0] = float((arr != 0).any())
        return row
    present = np.unique(arr.astype(np.int64))
    row[present[(present >= 0) & (present < n_classes)]] = 1.0
    return row


def _labels_for(labels: Any, items: list[_Item], indices: list[int]) -> list[Any]:
    if labels is None:
        return [it.label for it in items]
    if isinstance(labels, Mapping):
        out = []
        for it in items:
            stem = it.name.split(".")[0]
            for key in (it.name, stem):
                if key in labels:
                    out.append(labels[key])
                    break
            else:
                raise ParameterError(f"No label for image {it.name!r} in the labels mapping.")
        return out
    out = []
    for i in indices:
        try:
            out.append(labels[i])
        except (IndexError, KeyError):
            raise ParameterError(f"There are more images than labels (no label for image {i}).") from None
    return out


def fit_relevant_features(
    model: nn.Module | LoadedModel,
    images: Any,
    labels: Any = None,
    *,
    layers: Sequence[str] | None = None,
    mu: float = 10.0,
    max_iter: int = 5000,
    tol: float = 1e-6,
    batch_size: int = 8,
    class_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    seed: int = 0,
) -> RelevantFeatures:
    """Find each class's relevant internal features over a data set (Oramas et al., methods.md §A5.1).

    Parameters
    ----------
    model : nn.Module or LoadedModel
        Classification ``(B, C, *S) -> (B, K)`` or segmentation ``(B, C, *S) -> (B, K, *S)``, 2D or 3D. Left as it
        was (eval mode during the passes, flags restored).
    images : list of arrays, array ``(N, ...)``, folder or file, iterable or callable
        Each image ``(*S)`` or ``(C, *S)`` (the card's preprocessing is applied as in ``explain``). A folder holds
        NIfTI (``.nii``, ``.nii.gz``) or DICOM (``.dcm``) files, or one sub-folder per DICOM series, read with
        :func:`napari_attribution.io.read_image` in sorted order. Items may be ``(image, label)`` pairs or objects
        with ``.image`` and ``.label`` (the demo phantoms); a callable is called once to give such an iterable.
    labels : sequence, mapping or None
        Classification: one class index per image (or a vector of ``K`` per image). Segmentation: per image a
        label mask of the image's shape (integer classes; boolean = foreground), a set of the classes present, a
        multi-hot vector of ``K``, or a class index; turned into the image-level label "contains class c". A
        mapping is keyed by file name (or its stem). ``None``: the labels the items carry, else the model's own
        predictions (its predicted class; the classes in its predicted segmentation).
    layers : list of str, optional
        Feature layers (dotted module names); default: every convolution (post-activation) and linear output but
        the logits (:func:`feature_layers`).
    mu : float
        The L1 bound per class (the paper's ``tau``: 10 for most released models, 5 for an8Flower).
    max_iter, tol : int, float
        Solver limits (:func:`mu_lasso`).
    batch_size : int
        Images per forward pass (consecutive images of equal shape are batched).
    class_names : list of str, optional
        Default: the card's, else ``"0"``, ``"1"``, ...
    device : str, optional
        Where to run the forward passes (the model is moved back afterwards).
    progress, cancel : callables, optional
        ``progress(done, total, message)``; ``cancel()`` polled between batches and solver iterations; when it
        returns True, :class:`~napari_attribution.Cancelled` is raised and nothing is produced.
    seed : int
        Seeds the solver's power iteration (everything else is deterministic).

    Returns
    -------
    RelevantFeatures
        ``W`` ``(m, C)``; ``for_class(c, n)`` lists the top features; ``save(path)`` writes them beside the model.
    """
    module, card = _model_and_card(model)
    home = _device_of(module)
    dev = torch.device(device) if device is not None else home
    total = 0  # unknown for folders, generators and callables
    if not isinstance(images, (str, os.PathLike)) and not callable(images):
        try:
            total = len(images)
        except TypeError:
            pass
    rows_v: list[FloatArray] = []
    rows_l: list[FloatArray] = []
    names: list[str] | None = None
    chans: list[int] = []
    task = ""
    n_classes = 0
    done = 0
    try:
        if dev != home:
            module.to(dev)
        with model_guard(module):
            for xb_np, items, idx in _batches(images, card, max(1, int(batch_size)), cancel):
                xb = torch.from_numpy(xb_np).to(dev)
                if names is None:
                    names, chans = feature_layers(module, xb[:1], layers)
                mods = layer_modules(module, names)
                with record_channel_energy(mods) as rec, torch.no_grad():
                    out = first_output(module(xb))
                twice = [n for n in names if rec.calls.get(n, 0) > 1]
                if twice:
                    raise MethodError(f"Layer {twice[0]!r} runs more than once per forward pass; name other layers.")
                v = responses_from_energy(rec.values, names, chans).numpy()
                if not task:
                    task = _task_of(out, xb, card)
                    n_classes = int(out.shape[1])
                elif int(out.shape[1]) != n_classes:
                    raise MethodError("The model's number of outputs changed between images.")
                labs = _labels_for(labels, items, idx)
                for i, (lab, item) in enumerate(zip(labs, items, strict=True)):
                    rows_l.append(_label_row(lab, task, out[i], card, n_classes, item.name))
                rows_v.append(v)
                done += len(items)
                if progress is not None:
                    progress(done, max(total, done), f"responses of {done} images")
                if cancel is not None and cancel():
                    raise Cancelled("Fitting the relevant features was cancelled; nothing was produced.")
    finally:
        if dev != home:
            module.to(home)
    if names is None or not rows_v:
        raise ParameterError("No images were given to fit the relevant features on.")
    X = np.concatenate(rows_v, 0)
    L = np.stack(rows_l, 0)
    if labels is not None and not isinstance(labels, Mapping):
        try:
            extra = len(labels) - X.shape[0]
        except TypeError:
            extra = 0
        if extra > 0:
            raise ParameterError(f"There are {extra} more labels than images.")
    res = mu_lasso(X, L, mu, max_iter=max_iter, tol=tol, seed=seed, cancel=cancel, progress=progress)
    cls = list(class_names) if class_names is not None else (list(card.class_names) if card.class_names else [])
    if len(cls) != n_classes:
        cls = [str(k) for k in range(n_classes)]
    info = {
        "method": "Oramas et al. 2019, arXiv:1712.06302 (mu-lasso relevant features)",
        "task": task,
        "n_images": int(X.shape[0]),
        "images_per_class": [int(s) for s in (L > 0).sum(0)],
        "labels": "given" if labels is not None else "carried by the items, else the model's predictions",
        "responses": "sum of squares per channel, L1 within layer, L2 overall",
        "solver": "FISTA + L1-ball projection (Duchi et al. 2008)",
        "objective": res.objective,
        "gap": res.gap,
        "iterations": res.iterations,
        "converged": res.converged,
        "relevant_per_class": [int(np.count_nonzero(res.W[:, k])) for k in range(n_classes)],
    }
    return RelevantFeatures(tuple(names), tuple(chans), res.W, tuple(cls), float(mu), info)


def _device_of(module: nn.Module) -> torch.device:
    from .pipeline import _model_device

    return _model_device(module)


# ------------------------------------------------------------------------------------------------
# average visualisations


@dataclass
class FeatureVisualisation:
    """The average visualisation of one relevant feature (methods.md §A5.1 step 3).

    Attributes
    ----------
    feature : Feature
        Which channel of which layer (``weight``: its largest lasso weight over the classes).
    classes : dict
        ``{class name: W[j, c]}`` for every class the feature is relevant to.
    heatmap : ndarray ``(*S)``
        Mean over the top images of the feature's min-max normalised heatmap (so in [0, 1]).
    masked_image : ndarray ``(C, *S)`` or None
        Mean over the top images of the model input under the thresholded heatmap (``H >= threshold``).
    images : list of int
        Indices (in the order the images were given) of the images it responds to most strongly.
    responses : list of float
        Their responses ``v_j``.
    """

    feature: Feature
    classes: dict[str, float]
    heatmap: npt.NDArray[np.float32]
    masked_image: npt.NDArray[np.float32] | None
    images: list[int]
    responses: list[float]


def _reiterable(images: Any) -> Any:
    if isinstance(images, (str, os.PathLike, list, tuple, np.ndarray)) or callable(images):
        return images
    if isinstance(images, Iterable):
        return list(images)  # a one-shot iterator is read twice: keep it
    return images


def average_visualisations(
    model: nn.Module | LoadedModel,
    features: RelevantFeatures,
    images: Any,
    top: int = 9,
    *,
    feature_ids: Sequence[int] | None = None,
    n_per_class: int = 3,
    threshold: float = 0.5,
    stride_fix: bool = True,
    batch_size: int = 8,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> list[FeatureVisualisation]:
    """Average each relevant feature's visualisation over the ``top`` images it responds to most.

    Parameters
    ----------
    model, images
        As for :func:`fit_relevant_features` (a one-shot iterator is kept in memory: it is read twice).
    features : RelevantFeatures
        From :func:`fit_relevant_features`.
    top : int
        Images per feature (9 as in Zeiler & Fergus; N_top is not given by the paper).
    feature_ids : list of int, optional
        Rows of ``W`` to visualise; default the top ``n_per_class`` features of every class
        (:meth:`RelevantFeatures.for_class`).
    threshold : float
        Where the normalised heatmap counts as "under the feature" for ``masked_image``.
    stride_fix : bool
        Oramas et al.'s fix for strided convolutions in the backward pass (default on, as in ``vebi``).

    Returns
    -------
    list of FeatureVisualisation
        One per feature, in the order of ``feature_ids``. Heatmaps of images of other shapes than the first of
        a feature's top images are resampled (linearly) to that shape before averaging.
    """
    module, card = _model_and_card(model)
    if feature_ids is None:
        ids = list(dict.fromkeys(f.index for c in range(len(features.class_names))
                                 for f in features.for_class(c, n_per_class)))
    else:
        ids = [int(j) for j in feature_ids]
    if not ids:
        return []
    if any(not 0 <= j < features.n_features for j in ids):
        raise ParameterError(f"feature_ids must lie in 0..{features.n_features - 1}.")
    source = _reiterable(images)
    layer_of, chan_of = features.feature_layer, features.feature_channel
    dev = _device_of(module)
    scores: list[FloatArray] = []
    with model_guard(module):
        for xb_np, _items_b, _idx in _batches(source, card, max(1, batch_size), cancel):
            v = model_responses(module, torch.from_numpy(xb_np).to(dev), features.layers, features.layer_channels)
            scores.append(v.numpy()[:, ids])
        if not scores:
            raise ParameterError("No images were given.")
        S = np.concatenate(scores, 0)  # (N, len(ids))
        tops: list[list[int]] = []
        for col in range(len(ids)):
            order = np.argsort(-S[:, col], kind="stable")
            tops.append([int(i) for i in order[: max(1, int(top))] if S[i, col] > 0])
        wanted: dict[int, list[int]] = {}
        for col, rows in enumerate(tops):
            for i in rows:
                wanted.setdefault(i, []).append(col)
        sums: list[Tensor | None] = [None] * len(ids)
        masked: list[Tensor | None] = [None] * len(ids)
        counts = [0] * len(ids)
        processed = 0
        for xb_np, _items_b, idx in _batches(source, card, max(1, batch_size), cancel):
            keep = [b for b, i in enumerate(idx) if i in wanted]
            if not keep:
                continue
            xb = torch.from_numpy(xb_np[keep]).to(dev)
            cols = sorted({col for b in keep for col in wanted[idx[b]]})
            items = [(str(layer_of[ids[col]]), int(chan_of[ids[col]])) for col in cols]
            raw = backproject_features(module, xb, items, stride_fix=stride_fix)
            nd = xb.ndim - 2
            heat = normalise_maps(raw, nd).cpu()  # (b, n, *S)
            for bi, b in enumerate(keep):
                for ci, col in enumerate(cols):
                    if col not in wanted[idx[b]]:
                        continue
                    h = heat[bi, ci]
                    xi = xb[bi].detach().cpu().float()
                    m = xi * (h >= threshold)
                    if sums[col] is None:
                        sums[col], masked[col] = h.clone(), m.clone()
                    else:
                        ref, ref_m = sums[col], masked[col]
                        assert ref is not None and ref_m is not None
                        if h.shape != ref.shape:
                            h = _resize(h[None, None], tuple(ref.shape))[0, 0]
                            m = _resize(m[None], tuple(ref.shape))[0]
                        sums[col] = ref + h
                        masked[col] = ref_m + m
                    counts[col] += 1
            processed += len(keep)
            if progress is not None:
                progress(processed, len(wanted), "average visualisations")
    out = []
    for col, j in enumerate(ids):
        weights = {features.class_names[c]: float(features.W[j, c]) for c in np.flatnonzero(features.W[j])}
        best = max(weights.values(), key=abs) if weights else 0.0
        feat = Feature(j, str(layer_of[j]), int(chan_of[j]), float(best))
        s = sums[col]
        if s is None:  # no image responds to this feature: nothing to average
            heat_np = np.zeros((0,), np.float32)
            masked_np = None
        else:
            heat_np = (s / counts[col]).numpy().astype(np.float32)
            mk = masked[col]
            masked_np = None if mk is None else (mk / counts[col]).numpy().astype(np.float32)
        out.append(FeatureVisualisation(feat, weights, heat_np, masked_np, tops[col],
                                        [float(S[i, col]) for i in tops[col]]))
    return out


def _resize(t: Tensor, size: tuple[int, ...]) -> Tensor:
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(t, size=size, mode=mode, align_corners=False)
