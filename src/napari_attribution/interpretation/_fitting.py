"""Fitting the relevant features (methods.md §A5.1): the feature layers of a model, each image's response vector
over them, the label matrix, and the mu-lasso that says which features are relevant to each class."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._errors import Cancelled, MethodError, ParameterError
from ..methods._features import layer_modules, responses_from_energy
from ..methods._features_file import RelevantFeatures
from ..methods._hooks import model_guard, record_channel_energy, record_module_outputs
from ..methods._run import first_output
from ..models._card import LoadedModel
from ..pipeline import model_and_card, model_device, task_of
from ._data import image_batches, label_row, labels_for
from ._solver import Cancel, FloatArray, Progress, mu_lasso

__all__ = ["feature_layers", "fit_relevant_features"]


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
    module, card = model_and_card(model)
    home = model_device(module)
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
            for xb_np, items, idx in image_batches(images, card, max(1, int(batch_size)), cancel):
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
                    task = task_of(out, xb, card)
                    n_classes = int(out.shape[1])
                elif int(out.shape[1]) != n_classes:
                    raise MethodError("The model's number of outputs changed between images.")
                labs = labels_for(labels, items, idx)
                for i, (lab, item) in enumerate(zip(labs, items, strict=True)):
                    rows_l.append(label_row(lab, task, out[i], card, n_classes, item.name))
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
