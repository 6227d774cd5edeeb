"""``explain`` and ``compare`` over a whole image: input layout, slice-wise 2D on 3D, target resolution,
layer resolution, shared passes, device, progress and cancellation.

Data flows one way: numpy image -> ``(1, C, *S)`` tensor -> methods -> :class:`Attribution` (numpy, the image's
spatial shape). The user's model is guarded (eval mode, frozen parameters, all restored afterwards) and the
user's image is never modified.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from ._attribution import Attribution, SliceWise, TargetSpec
from ._errors import InputShapeError, MethodError, ParameterError, TargetError
from .inferers import sliding_window_of
from .inputs import Layout, OnScanGrid, Prepared, fit_network, is_script, known_multiple, layout, prepare, unwrap
from .io._geometry import Geometry
from .methods._hooks import activation_rule, fast_cpu_conv3d, model_guard
from .methods._lock import model_lock
from .methods._registry import COMMON_PARAMS, MethodInfo, get_method, list_methods
from .methods._run import MethodOutput, Run
from .models._card import LoadedModel, ModelCard, infer_card
from .models._layers import resolve_layer
from .targets import (
    Class,
    Contrast,
    ErrorRegion,
    Predicted,
    Region,
    ResolvedTarget,
    Target,
    Voxel,
    channel_argmax,
    found_per_slice,
    on_slice,
    predicted_labels,
    resolve_target,
    slices_needed,
)

__all__ = ["compare", "explain"]

_T = TypeVar("_T")
Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]

_DEFAULT_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()


def explain(
    model: nn.Module | LoadedModel,
    image: Any,
    method: str,
    target: Target = None,
    *,
    layer: str | None = None,
    params: Mapping[str, Any] | None = None,
    geometry: Any = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> Attribution:
    """Explain one image with one method.

    Parameters
    ----------
    model : nn.Module or LoadedModel
        Classification ``(B, C, *S) -> (B, K)`` or segmentation ``(B, C, *S) -> (B, K, *S)``, 2D or 3D.
    image : array
        ``(*S)`` (one channel) or ``(C, *S)``. A 2D model on a volume ``(D, H, W)`` runs slice by slice along
        axis 0 (``params={"slices": [...]}`` limits the slices).
    method : str
        A registered method name (``na.list_methods()``) or ``"captum:<ClassName>"``.
    target : int or target object or None
        What to explain (see :mod:`napari_attribution.targets`); None = the predicted class or region.
    layer : str, optional
        Dotted layer name for layer methods; default: the card's layer or the last spatial layer.
    params : dict, optional
        Method parameters (``na.get_method(name).params``) and the common ``seed``, ``max_batch``,
        ``memory_budget``, ``slices``.
    geometry : Geometry, optional
        Passed through to the result so the map lines up with the scan.
    device : str, optional
        Where to compute; default the model's device. The model is moved back afterwards.
    progress : callable, optional
        ``progress(done, total, message)``.
    cancel : callable, optional
        Polled between chunks, windows and slices; when it returns True, :class:`Cancelled` is raised.

    Returns
    -------
    Attribution
        ``.data`` has the image's spatial shape.

    Examples
    --------
    >>> import numpy as np, torch, napari_attribution as na
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> na.explain(net, np.zeros((32, 32), np.float32), "grad_cam", 1).data.shape
    (32, 32)
    """
    return _explain_many(
        model, image, [method], target, layer=layer, params={method: dict(params or {})}, geometry=geometry,
        device=device, progress=progress, cancel=cancel,
    )[method]


def compare(
    model: nn.Module | LoadedModel,
    image: Any,
    methods: Sequence[str],
    target: Target = None,
    *,
    layer: str | None = None,
    params: Mapping[str, Any] | None = None,
    geometry: Any = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> dict[str, Attribution]:
    """Explain one image with several methods, sharing passes where the methods allow.

    Methods computed from the activations, layer gradients and input gradient of the same target (saliency,
    input_x_gradient, grad_cam, grad_cam_pp, hires_cam, cam, layer_activation) get them from one forward and
    one backward pass. ``params``: keys that are method names hold that method's params; other keys go to
    every method that accepts them; a key that no method accepts is a :class:`ParameterError`.
    """
    names = list(dict.fromkeys(methods))
    if not names:
        raise MethodError("compare needs at least one method.")
    per = split_params(names, params)
    return _explain_many(
        model, image, names, target, layer=layer, params=per, geometry=geometry, device=device,
        progress=progress, cancel=cancel,
    )


def split_params(names: Sequence[str], params: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """One parameter dict for several methods, as :func:`compare` takes it: a key named after a method holds that
    method's parameters, any other key goes to every method that takes it; a key that none takes is a
    :class:`ParameterError`."""
    infos = {n: get_method(n) for n in names}
    per: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in (params or {}).items():
        if key in per:
            if not isinstance(value, Mapping):
                raise ParameterError(f"params[{key!r}] must be a dict of that method's parameters.")
            per[key].update(value)
            continue
        takers = [n for n, i in infos.items() if key in i.params or key in COMMON_PARAMS or "*" in i.params]
        if not takers:
            raise ParameterError(f"No method in {list(names)} takes the parameter {key!r}.")
        for n in takers:
            per[n].setdefault(key, value)
    return per


def explain_layers(
    model: nn.Module | LoadedModel,
    image: Any,
    method: str,
    layers: Sequence[str],
    target: Target = None,
    *,
    params: Mapping[str, Any] | None = None,
    geometry: Any = None,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> dict[str, Attribution]:
    """Explain one image with one layer method at several network layers (a layer sweep, e.g. shallow to deep).

    Methods computed from the shared pass (``grad_cam``, ``hires_cam``, ``grad_cam_pp``, ``cam``,
    ``layer_activation``, ``layer_gradient_x_activation``) get every layer from one forward pass that captures
    all of them and one backward pass that stops at the shallowest: a sweep costs about one explanation, not one
    per layer. ``sam`` keeps that one forward graph and runs its own backward passes per layer (29 layers of the
    vessel demo: 1.7 s instead of 3.4 s). Other layer methods (``layer_conductance``, ``score_cam``,
    ``response_backprojection``, Captum layer classes) run once per layer. Each result's ``seconds`` is its own
    work plus an even share of the shared pass, so they add up to the sweep's time.

    Parameters
    ----------
    layers : sequence of str
        Dotted layer names (:func:`napari_attribution.find_layers`), each at most once.
    model, image, target, params, geometry, device, progress, cancel
        As for :func:`explain`.

    Returns
    -------
    dict of str to Attribution
        Keyed by layer name, in the order given; each ``.layer`` is that layer.

    Examples
    --------
    >>> import numpy as np, torch, napari_attribution as na
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> maps = na.explain_layers(net, np.zeros((32, 32), np.float32), "grad_cam", ["1", "3"], 1)
    >>> [(name, a.layer, a.data.shape) for name, a in maps.items()]
    [('1', '1', (32, 32)), ('3', '3', (32, 32))]
    """
    info = get_method(method)
    names = [str(n) for n in layers]
    if not names:
        raise ParameterError("explain_layers needs at least one layer name.")
    if len(set(names)) != len(names):
        raise ParameterError(f"Each layer may appear once; got {names}.")
    if not (info.needs_layer or info.layer_optional):
        raise MethodError(f"{method} does not work on an internal layer; choose a layer method "
                          f"({', '.join(m.name for m in list_methods() if m.needs_layer)}).")
    keys = {f"{method}@{n}": (method, n) for n in names}
    results = _explain_many(model, image, list(keys), target, layer=None,
                            params={k: dict(params or {}) for k in keys}, geometry=geometry, device=device,
                            progress=progress, cancel=cancel, sweep=keys)
    return {keys[k][1]: results[k] for k in keys}


# ------------------------------------------------------------------------------------------------
# layout


_INFERRED: weakref.WeakKeyDictionary[nn.Module, ModelCard] = weakref.WeakKeyDictionary()


def model_and_card(model: Any) -> tuple[nn.Module, ModelCard]:
    """The network and its card, as :func:`explain` runs them.

    Parameters
    ----------
    model : torch.nn.Module or LoadedModel
        A bare module (its card is inferred from the architecture, once per model) or a loaded model (its card,
        completed from the architecture where it says nothing).

    Returns
    -------
    tuple of (torch.nn.Module, ModelCard)
        The module itself (not a copy) and its card.

    Raises
    ------
    MethodError
        ``model`` is neither a module nor a loaded model.

    Examples
    --------
    >>> import torch
    >>> module, card = model_and_card(torch.nn.Conv2d(1, 2, 3))
    >>> isinstance(card, ModelCard)
    True
    """
    if isinstance(model, LoadedModel):
        return model.module, infer_card(model.module, model.card)
    if isinstance(model, nn.Module):
        try:  # inferring walks all modules: once per model (a card depends only on the architecture)
            card = _INFERRED[model]
        except (KeyError, TypeError):
            card = infer_card(model)
            try:
                _INFERRED[model] = card
            except TypeError:  # pragma: no cover - modules that cannot be weakly referenced
                pass
        return model, card
    raise MethodError(
        f"model must be a torch.nn.Module or a napari_attribution LoadedModel, got {type(model).__name__}."
    )


def as_image(image: Any) -> np.ndarray:
    """The user's image as a finite float32 numpy array (a tensor is detached and copied to the CPU; the
    user's array is never modified).

    Parameters
    ----------
    image : array-like or torch.Tensor
        The image, any shape with at least one axis.

    Returns
    -------
    numpy.ndarray
        float32, the image's shape.

    Raises
    ------
    InputShapeError
        The image is not numeric, is empty, or holds NaN or infinite values (the message says what to do).

    Examples
    --------
    >>> as_image([[0, 1], [2, 3]]).dtype
    dtype('float32')
    """
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    try:
        arr = np.asarray(image, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InputShapeError(f"The image must be a numeric array, got {type(image).__name__}.") from err
    if arr.ndim < 1 or arr.size == 0:
        raise InputShapeError(f"The image is empty (shape {arr.shape}).")
    if not np.isfinite(arr).all():
        raise InputShapeError("The image contains NaN or infinite values; fill or crop them before explaining.")
    return arr


# ------------------------------------------------------------------------------------------------
# running


def _explain_many(model: Any, image: Any, names: list[str], target: Target, **kwargs: Any) -> dict[str, Attribution]:
    """:func:`_explain_unlocked` holding the model's lock: runs on one model take turns, because
    :func:`model_guard` switches the model itself (eval mode, frozen parameters), not a per-thread copy."""
    with model_lock(model_and_card(model)[0], cancel=kwargs.get("cancel"), progress=kwargs.get("progress")):
        return _explain_unlocked(model, image, names, target, **kwargs)


def _explain_unlocked(
    model: Any,
    image: Any,
    names: list[str],
    target: Target,
    *,
    layer: str | None,
    params: dict[str, dict[str, Any]],
    geometry: Any,
    device: Any,
    progress: Progress | None,
    cancel: Cancel | None,
    sweep: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Attribution]:
    """``names`` are method names, or with ``sweep`` (key -> (method, layer)) the keys of a layer sweep."""
    module, card = model_and_card(model)
    infos = {n: get_method(sweep[n][0] if sweep else n) for n in names}
    layer_of: dict[str, str | None] = {n: (sweep[n][1] if sweep else layer) for n in names}
    resolved = {n: infos[n].resolve_params(params.get(n)) for n in names}
    script = is_script(module)
    for n, info in infos.items():
        if script and not info.supports_torchscript:
            raise MethodError(
                f"{n} needs Python module hooks or activation rules, which TorchScript archives do not take. Use "
                "a gradient method (saliency, input_x_gradient, integrated_gradients, smoothgrad) or a "
                "perturbation method (occlusion, rise); or load the archive's weights into the Python network "
                "with a card that names its factory, e.g. na.load_model({\"factory\": "
                "\"monai.networks.nets:UNet\", \"kwargs\": {...}, \"weights\": \"model.ts\"}) (the archive's "
                "state_dict is copied into the network the factory builds, so the kwargs must be those it was "
                "exported with), and run it on that."
            )
    patch_local = any(bool((params.get(n) or {}).get("patch_local")) for n in names)
    if card.inferer is not None and not patch_local:
        for n, info in infos.items():
            if info.sliding_window is None:
                usable = ", ".join(i.name for i in list_methods() if i.sliding_window is not None)
                raise MethodError(
                    f"{n} cannot explain a global target through the model card's sliding-window inferer (it needs "
                    f"the whole network's graph or a layer's single activation). Methods that can: {usable}. Or "
                    "explain each window on its own with params patch_local=True."
                )
        if sweep is not None and len({layer for _, layer in sweep.values()}) > 1:
            raise MethodError("A layer sweep cannot run through the model card's sliding-window inferer yet; "
                              "explain one layer at a time.")
    if geometry is not None and not isinstance(geometry, Geometry):
        raise ParameterError(
            f"geometry must be a napari_attribution.Geometry (voxel spacing, origin, direction), got "
            f"{type(geometry).__name__}; e.g. na.Geometry(spacing=(2.0, 1.6, 2.2), origin=(0.0, 0.0, 0.0)), or the "
            "one na.io.read_image gives."
        )
    device = _checked_device(device)
    arr = as_image(image)
    lay = layout(arr.shape, card)
    geo = geometry
    prep = prepared_input(module, arr, geo, card, lay)
    try:
        return _explain_prepared(module, card, prep, lay, infos, resolved, target, layer_of, geometry, device,
                                 progress, cancel)
    except Exception as err:
        # the network failed on the scan's size: pad it to what the network runs on, or one clear error
        better = fit_network(module, prep, card, err)
        return _explain_prepared(module, card, better, lay, infos, resolved, target, layer_of, geometry, device,
                                 progress, cancel)


def _checked_device(device: Any) -> torch.device | None:
    """``device`` as a torch device, or one clear error for a name torch does not know or a device this machine
    does not have."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ParameterError(f"device {device!r} is not a device name; use 'cpu', 'cuda', 'cuda:1' or 'mps'.") from err
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ParameterError(f"device {device!r} is not available on this machine (no such CUDA device); use 'cpu'.")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ParameterError(f"device {device!r} is not available on this machine; use 'cpu'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ParameterError(f"device {device!r} is not supported; use 'cpu', 'cuda' or 'mps'.")
    return dev


def prepared_input(module: nn.Module, arr: np.ndarray, geometry: Geometry | None, card: ModelCard,
                   lay: Layout) -> Prepared:
    """The input path for one image (:func:`napari_attribution.inputs.prepare`), with the padding a trial forward
    already found this network needs at this grid."""
    prep = prepare(arr, geometry, card, channel_axis=lay.channel_axis, slicewise=lay.slicewise)
    multiple = known_multiple(module, prep)
    return prep.padded_to(multiple) if multiple and not prep.padded else prep


def network_on_scan(model: nn.Module | LoadedModel, image: Any, geometry: Geometry | None,
                    use: Callable[[nn.Module, Tensor], _T]) -> _T:
    """``use(network, x)`` with the network as :func:`explain` runs it on ``image``, e.g. to time its passes.

    ``network`` is the network on the scan's grid (the card's resampling / resizing / padding inside its forward, or
    the network itself when nothing changes the grid); ``x`` is ``(1, C, *S)`` float32 after the card's intensity
    step (for a 2D model on a volume, the middle slice ``(1, C, H, W)``). When ``use`` fails because the network
    does not run on the scan's size, the network is fitted as :func:`explain` fits it (padding found by a trial
    pass, or one :class:`InputShapeError`) and ``use`` runs again: no separate trial pass when it runs at once.
    """
    module, card = model_and_card(model)
    arr = as_image(image)
    lay = layout(arr.shape, card)
    prep = prepared_input(module, arr, geometry, card, lay)
    data = prep.scan if lay.channel_axis else prep.scan[None]
    if lay.slicewise:
        data = data[:, data.shape[1] // 2]
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    with model_lock(module):  # trial passes switch the model too: not while another thread runs on it
        try:
            return use(prep.network(module), x)
        except Exception as err:
            return use(fit_network(module, prep, card, err).wrap(module), x)


def _explain_prepared(
    module: nn.Module,
    card: ModelCard,
    prep: Prepared,
    lay: Layout,
    infos: dict[str, MethodInfo],
    resolved: dict[str, dict[str, Any]],
    target: Target,
    layer_of: Mapping[str, str | None],
    geometry: Any,
    device: Any,
    progress: Progress | None,
    cancel: Cancel | None,
) -> dict[str, Attribution]:
    """Run the methods on the scan's grid; the network sees the model grid through :meth:`Prepared.wrap`, so maps,
    targets and predictions stay on the scan's grid."""
    names = list(infos)
    net = prep.network(module)
    arr = prep.scan
    spatial = lay.spatial(arr.shape)
    home = model_device(module)
    dev = torch.device(device) if device is not None else home
    moved = home != dev
    try:
        if moved:
            module.to(dev)
        with model_guard(module), fast_cpu_conv3d(module, dev):
            patch_local = any(bool(p.get("patch_local")) for p in resolved.values())
            if patch_local and (prep.inferer is None or lay.slicewise):
                raise ParameterError(
                    "patch_local explains each window of the model card's sliding-window inferer on its own; this "
                    + ("model card has no inferer." if prep.inferer is None else
                       "a 2D model run slice by slice cannot use it: leave patch_local out (a global target).")
                )
            if patch_local:
                x = torch.from_numpy(np.ascontiguousarray(arr.reshape((1, lay.channels) + tuple(spatial)))).to(dev)
                results = _run_patch_local(module, net, card, prep, x, infos, resolved, target, layer_of, geometry,
                                           progress, cancel)
            elif not lay.slicewise:
                x = torch.from_numpy(np.ascontiguousarray(arr.reshape((1, lay.channels) + tuple(spatial)))).to(dev)
                parts = _run_methods(net, card, x, infos, resolved, target, layer_of, progress, cancel)
                results = {n: _finish(parts[n], infos[n], resolved[n], geometry) for n in names}
            else:
                results = _run_slicewise(net, card, arr, lay, tuple(spatial), infos, resolved, target, layer_of,
                                         geometry, dev, progress, cancel)
    finally:
        if moved:
            module.to(home)
    if prep.steps:
        for r in results.values():
            r.extras["preprocessing"] = list(prep.steps)
            r.extras["model_grid_shape"] = prep.shape
    return results


def _run_patch_local(
    module: nn.Module,
    net: nn.Module,
    card: ModelCard,
    prep: Prepared,
    x: Tensor,
    infos: dict[str, MethodInfo],
    params: dict[str, dict[str, Any]],
    target: Target,
    layer_of: Mapping[str, str | None],
    geometry: Any,
    progress: Progress | None,
    cancel: Cancel | None,
) -> dict[str, Attribution]:
    """methods.md §1.5's patch-local option: every window of the inferer is explained on its own, by the network
    alone on that window, for the target restricted to the window (a drawn region's part in it, a point only in the
    windows that hold it, the region the window's own output predicts), and the windows' maps are blended with the
    inferer's weights, like TorchEsegeta's ``GridAggregator``. Any method runs this way; the caveat is that each
    window's target is local. The prediction is the stitched one."""
    spec = prep.inferer
    assert spec is not None
    if prep.resampled and not isinstance(target, (int, np.integer, type(None), Class, Predicted)) and not (
            isinstance(target, Contrast) and target.mask is None):
        raise TargetError(
            "patch_local with a drawn region or point needs the scan at the model's own grid (this card resamples "
            "it); use a class or the predicted region, or leave patch_local out (the default global target)."
        )
    with torch.no_grad():
        xm = prep.to_model(x) if not prep.is_identity else x
        stitched = net(x)
    plan = spec.plan(xm.shape[2:])
    xp = plan.pad_input(xm)
    weights, _ = plan.weights(xp.device)
    # scan voxel -> padded window grid: the input path's padding, then the plan's (no resampling here)
    offset = [a + b for (a, _), b in zip(prep.pad[-len(plan.padded):], plan.pad[::2][::-1], strict=True)]
    acc: dict[str, Tensor] = {}
    acc_c: dict[str, Tensor] = {}
    den = torch.zeros(plan.padded, dtype=torch.float32)
    last: dict[str, Attribution] = {}
    skipped: dict[int, str] = {}
    n = len(plan)
    seconds: dict[str, float] = dict.fromkeys(infos, 0.0)
    for i, window in enumerate(plan.slices):
        def report(done: int, total: int, message: str, _i: int = i) -> None:
            if progress is not None:
                progress(_i * 1000 + int(1000 * done / max(total, 1)), n * 1000, f"window {_i + 1}/{n}: {message}")

        local = _window_target(target, window, offset, prep.image_shape[-len(window):])
        if local is _OUTSIDE:
            skipped[i] = "the target point is not in this window"
            continue
        xw = xp[(slice(0, 1), slice(None), *window)].contiguous()
        try:
            parts = _run_methods(module, card, xw, infos, params, local, layer_of, report, cancel)
        except TargetError as err:
            # a window without the predicted structure, or without any of a drawn region: nothing to explain there
            if not (found_per_slice(target) or isinstance(target, (Region, ErrorRegion, Contrast))):
                raise
            skipped[i] = str(err)
            continue
        for name in infos:
            att = _finish(parts[name], infos[name], params[name], None)
            last[name] = att
            seconds[name] += att.seconds
            m = torch.from_numpy(att.data).float()
            acc.setdefault(name, torch.zeros(plan.padded))[window] += m * weights.cpu()
            if att.per_channel is not None:
                pc = torch.from_numpy(att.per_channel).float()
                acc_c.setdefault(name, torch.zeros((pc.shape[0],) + plan.padded))[(slice(None), *window)] += \
                    pc * weights.cpu()
        den[window] += weights.cpu()
    if not last:
        raise TargetError(f"No window has anything to explain for this target ({next(iter(skipped.values()))}).")
    crop = plan.crop()
    out: dict[str, Attribution] = {}
    for name, info in infos.items():
        att = last[name]

        def on_scan(a: Tensor) -> np.ndarray:
            blended = torch.where(den > 0, a / den.clamp(min=1e-12), torch.zeros(()))  # windows never run: 0
            m = blended[(slice(None), *crop)] if a.ndim > len(crop) else blended[crop]
            m = m[None] if m.ndim == len(crop) else m
            scan = prep.to_scan(m[None])[0] if not prep.is_identity else m
            return scan.numpy().astype(np.float32)

        data = on_scan(acc[name])[0]
        per_channel = on_scan(acc_c[name]) if name in acc_c else None
        # the stitched prediction (a patch classifier's windows each predict: no one label map)
        pred = None if stitched.ndim == 2 else \
            predicted_labels(stitched.detach().float().cpu()[0], card.output).to(torch.int16).numpy()
        out[name] = Attribution(
            data=data, method=info.name, target=att.target, layer=att.layer, params=dict(params[name]),
            signed=info.signed, seconds=seconds[name], prediction=pred, per_channel=per_channel,
            geometry=geometry if isinstance(geometry, Geometry) else None,
            extras={"windows": n, "windows_explained": n - len(skipped), "skipped_windows": skipped,
                    "patch_local": True},
            description=f"{att.description}, patch-local in each of {n - len(skipped)} of {n} windows",
        )
    return out


#: a window that does not hold the target point
_OUTSIDE = object()


def _window_target(target: Target, window: tuple[slice, ...], offset: Sequence[int],
                   spatial: tuple[int, ...]) -> Any:
    """``target`` restricted to one window of the padded window grid (scan voxel ``i`` sits at ``i + offset``)."""
    if isinstance(target, Voxel):
        idx = [int(v) + o for v, o in zip(target.index[-len(window):], offset, strict=True)]
        if not all(sl.start <= j < sl.stop for j, sl in zip(idx, window, strict=True)):
            return _OUTSIDE
        return Voxel(target.k, tuple(j - sl.start for j, sl in zip(idx, window, strict=True)), target.score)

    def on_window(mask: Any) -> np.ndarray:
        m = np.asarray(mask)
        full = np.zeros(_padded_of(window, m, offset), m.dtype)
        full[tuple(slice(o, o + s) for o, s in zip(offset, m.shape[-len(window):], strict=True))] = m
        return full[window]

    if isinstance(target, Region):
        return Region(target.k, on_window(target.mask), target.score)
    if isinstance(target, ErrorRegion):
        return ErrorRegion(target.k, on_window(target.truth_mask), target.kind, target.score)
    if isinstance(target, Contrast) and target.mask is not None:
        return Contrast(target.k1, target.k2, on_window(target.mask), target.score)
    return target


def _padded_of(window: tuple[slice, ...], mask: np.ndarray, offset: Sequence[int]) -> tuple[int, ...]:
    """A shape that holds both the mask at its offset and the window."""
    return tuple(max(sl.stop, o + s) for sl, o, s in zip(window, offset, mask.shape[-len(window):], strict=True))


def model_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter (else buffer); the CPU for a module with neither."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


@dataclass
class _Part:
    output: MethodOutput
    target: ResolvedTarget
    seconds: float
    layer: str | None
    prediction: Any
    channels: int
    finite_output: bool = True


def _prediction(out: Tensor, target: ResolvedTarget, task: str, card: ModelCard) -> np.ndarray:
    """Class probabilities ``(K,)`` float32 (classification) or the predicted label map ``(*S)`` int16
    (segmentation) of one unperturbed output ``(1, K, ...)``."""
    o = out.detach().float().cpu()[0]
    if task == "classification":
        probs: np.ndarray = target.probabilities(o[None])[0].numpy().astype(np.float32, copy=False)
        return probs
    labels: np.ndarray = predicted_labels(o, card.output).to(torch.int16).numpy()
    return labels


def task_of(out: Tensor, x: Tensor, card: ModelCard) -> str:
    """``"classification"`` or ``"segmentation"``: the card's task, else told from the output shape (one rule for
    the pipeline, the metrics and the fitting of relevant features)."""
    if card.task is not None:
        return card.task
    if out.ndim == 2:
        return "classification"
    if out.ndim == x.ndim:
        return "segmentation"
    raise MethodError(
        f"Cannot tell the task from the output shape {tuple(out.shape)} for input {tuple(x.shape)}: expected "
        "(B, K) for classification or (B, K, *spatial) for segmentation. Provide a model card."
    )


def _run_methods(
    module: nn.Module,
    card: ModelCard,
    x: Tensor,
    infos: dict[str, MethodInfo],
    params: dict[str, dict[str, Any]],
    target: Target,
    layer_of: Mapping[str, str | None],
    progress: Progress | None,
    cancel: Cancel | None,
) -> dict[str, _Part]:
    """Run every method on one input ``x`` ``(1, C, *S)``; methods that share a pass share it, also across
    layers (a layer sweep of a shared-pass method is one forward and one backward pass)."""
    no_layer: tuple[str | None, nn.Module | None] = (None, None)
    at: dict[str, tuple[str | None, nn.Module | None]] = {}
    for n, info in infos.items():
        want = layer_of.get(n)
        if info.needs_layer or (want is not None and info.layer_optional):
            at[n] = _layer_for(module, card, x, want)
        else:
            at[n] = no_layer

    groups: list[list[str]] = []
    shared: dict[str, list[str]] = {}
    windowed_net = sliding_window_of(module) is not None
    for n, info in infos.items():
        if info.shared_pass or info.needs_graph:
            # a needs_graph method (sam) at several layers of a sweep shares one kept forward graph
            key = f"graph:{info.name}" if info.needs_graph else f"{info.rule}:{bool(params[n].get('stride_fix'))}"
            if windowed_net and info.needs_layer:
                key += ":layer"  # through a sliding window, layer maps come from their own per-window passes
            if key not in shared:
                shared[key] = []
                groups.append(shared[key])
            shared[key].append(n)
        else:
            groups.append([n])

    parts: dict[str, _Part] = {}
    n_groups = len(groups)
    for gi, group in enumerate(groups):
        label = ", ".join(group)

        def report(done: int, total: int, message: str, _gi: int = gi, _label: str = label) -> None:
            if progress is not None:
                progress(_gi * 1000 + int(1000 * done / max(total, 1)), n_groups * 1000, f"{_label}: {message}")

        first = infos[group[0]]
        group_layers = {name: mod for name, mod in (at[n] for n in group) if name is not None and mod is not None}
        layer_name, layer_module = next((at[n] for n in group if at[n][0] is not None), no_layer)
        sweep = group_layers if len(group_layers) > 1 else None
        run = Run(module, x, layer=layer_module, layer_name=layer_name, params=params[group[0]],
                  progress=report if progress else None, cancel=cancel)
        run.check_cancel()
        needs_layer = any(infos[n].needs_layer for n in group)
        needs_backward = any(infos[n].needs_grad and (infos[n].shared_pass or infos[n].needs_layer)
                             for n in group)
        if gi == 0:
            run.check_memory(backward=any(infos[n].needs_grad for n in infos))
        input_grad = any(infos[n].needs_input_grad for n in group)
        measure = first.family in ("gradient", "backward_rule", "captum") and not needs_backward
        task_box: list[str] = []

        def resolve(out: Tensor, _task_box: list[str] = task_box) -> ResolvedTarget:
            task = task_of(out, x, card)
            _task_box.append(task)
            return resolve_target(target, out, task=task, output_kind=card.output, background=card.background,
                                  class_names=list(card.class_names) if card.class_names else None)

        t0 = time.perf_counter()
        chunks = not all(infos[n].shared_pass for n in group)  # single-pass methods need no memory estimate
        stride_fix = bool(params[group[0]].get("stride_fix"))
        windowed: dict[str, MethodOutput] | None = None
        if run.windows is not None and needs_layer:
            need_grad = any(infos[n].needs_grad for n in group)
            windowed = run.windowed_layer_maps(resolve, {n: (_fn(infos[n]), params[n]) for n in group},
                                               need_grad=need_grad)
        elif first.shared_pass and (first.rule is not None or stride_fix):
            with activation_rule(first.rule, stride_fix=stride_fix):
                run.first_pass(resolve, backward=needs_backward, layer=needs_layer, input_grad=input_grad or measure,
                               measure=chunks, layers=sweep)
        elif first.needs_graph:
            run.first_pass(resolve, backward=False, layer=needs_layer, input_grad=True, keep_graph=True, layers=sweep)
        else:
            run.first_pass(resolve, backward=needs_backward, layer=needs_layer, input_grad=input_grad or measure,
                           measure=chunks, layers=sweep)
        shared_seconds = time.perf_counter() - t0
        assert run.target is not None and run.output is not None
        pred = _prediction(run.output, run.target, task_box[0], card)
        finite = bool(torch.isfinite(run.output).all())
        for n in group:
            info = infos[n]
            if run.params is not params[n]:
                run.params = params[n]
                run.generator.manual_seed(int(params[n].get("seed") or 0))
            name_n, module_n = at[n]
            if sweep is not None and name_n is not None and module_n is not None:
                run.use_layer(name_n, module_n)
            t1 = time.perf_counter()
            out = windowed[n] if windowed is not None else _fn(info)(run, params[n])
            run.check_cancel()
            # in a sweep the layers split the shared pass evenly, so their seconds add up to the sweep's time
            seconds = shared_seconds / (len(group) if sweep is not None else 1) + time.perf_counter() - t1
            used = info.needs_layer or (info.layer_optional and name_n is not None)
            parts[n] = _Part(out, run.target, seconds, name_n if used else None, pred, x.shape[1], finite)
        if progress is not None:
            progress((gi + 1) * 1000, n_groups * 1000, f"{label}: done")
    return parts


def _fn(info: MethodInfo) -> Callable[[Run, dict[str, Any]], MethodOutput]:
    assert info.fn is not None
    return info.fn


def _layer_for(module: nn.Module, card: ModelCard, x: Tensor, layer: str | None) -> tuple[str, nn.Module]:
    windows = sliding_window_of(module)
    if windows is not None:
        # a sliding-window network is walked on one window, never on the whole scan (minutes at full size)
        module = unwrap(module)
        x = torch.zeros((1, x.shape[1]) + windows.spec.roi_size, dtype=x.dtype, device=x.device)
    if layer is None and card.default_layer is None and not is_script(module):
        # the automatic choice walks the network with a forward pass: once per network and input grid
        net = unwrap(module)
        grid = module.prepared.shape if isinstance(module, OnScanGrid) else ()
        key = (tuple(x.shape), grid)
        cached = _DEFAULT_LAYERS.get(net, {}).get(key)
        if cached is not None:
            return resolve_layer(module, x, cached)
        name, mod = resolve_layer(module, x, None)
        _DEFAULT_LAYERS.setdefault(net, {})[key] = name
        return name, mod
    return resolve_layer(module, x, layer, card.default_layer)


def _reduce(maps: Tensor, signed: bool) -> Tensor:
    if maps.shape[0] == 1:
        return maps[0]
    if signed:
        return maps.sum(0)
    idx = channel_argmax(maps.abs())
    return maps.gather(0, idx[None])[0]


def _check_finite(maps: Tensor, info: MethodInfo, part: _Part) -> None:
    """A map with NaN or infinite values is an error, never a result (a heatmap of NaN would look like a success)."""
    bad = int((~torch.isfinite(maps)).sum())
    if bad == 0:
        return
    why = ("the model's output on this image is itself not finite: check the model (its weights) and the image's "
           "intensities against what the model expects (the card's preprocessing)") if not part.finite_output else (
           "the model's output on this image is finite, so the method's passes on changed inputs (a baseline, noise, "
           "occluded windows) gave them: check its parameters (e.g. the baseline) and that the model is defined on "
           "such inputs")
    raise MethodError(f"{info.name} gave a map with {bad} of {maps.numel()} values NaN or infinite; {why}. "
                      "No result was produced.")


def _finish(part: _Part, info: MethodInfo, params: dict[str, Any], geometry: Any) -> Attribution:
    maps = part.output.maps.detach().float().cpu()
    _check_finite(maps, info, part)
    data = _reduce(maps, info.signed).numpy().astype(np.float32, copy=False)
    per_channel = maps.numpy().astype(np.float32) if maps.shape[0] > 1 else None
    return Attribution(
        data=data,
        method=info.name,
        target=part.target.spec,
        layer=part.layer,
        params=dict(params),
        signed=info.signed,
        seconds=part.seconds,
        prediction=part.prediction,
        per_channel=per_channel,
        geometry=geometry if isinstance(geometry, Geometry) else None,
        extras={**part.output.extras, "output_channels": int(part.target.weights.shape[0])},
        description=part.target.description,
    )


def _stacked(per_slice: Mapping[int, np.ndarray], depth: int) -> np.ndarray | None:
    """The slices' predictions as one array with a leading slice axis of ``depth``: label maps ``(D, H, W)`` with 0
    (no label) on slices without one, class probabilities ``(D, K)`` with NaN there."""
    if not per_slice:
        return None
    first = next(iter(per_slice.values()))
    fill = np.nan if np.issubdtype(first.dtype, np.floating) else 0
    out = np.full((depth, *first.shape), fill, first.dtype)
    for s, p in per_slice.items():
        out[s] = p
    return out


def _common_extras(per_slice: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The extras that every explained slice has with the same plain value (a number, a string, or a tuple or list
    of them: ``window``, ``steps``, ``output_channels``); arrays and dicts stay per slice."""
    def plain(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (bool, int, float, str, np.integer, np.floating))

    if not per_slice:
        return {}
    first = per_slice[0]
    return {k: v for k, v in first.items()
            if plain(v) and all(k in e and plain(e[k]) and e[k] == v for e in per_slice[1:])}


def _volume_target(target: Target, per_slice: Mapping[int, TargetSpec]) -> TargetSpec:
    """A slice-wise run's target in the volume's voxel space: the target object the user gave; for ``int`` /
    ``None``, what the explained slices resolved to (the first explained slice's when they differ)."""
    if target is None or isinstance(target, (int, np.integer)):
        return next(iter(per_slice.values()))
    return target


def _slicewise_description(descriptions: Mapping[int, str]) -> str:
    """``"<target> (slice-wise, N slices)"``; when the slices' targets differ in words, the first two slices'."""
    n = len(descriptions)
    unit = "slice" if n == 1 else "slices"
    words = list(dict.fromkeys(descriptions.values()))
    if len(words) == 1:
        return f"{words[0]} (slice-wise, {n} {unit})"
    shown = "; ".join(f"slice {z}: {d}" for z, d in list(descriptions.items())[:2])
    return f"{shown}{'; ...' if n > 2 else ''} (slice-wise, {n} {unit})"


def _run_slicewise(
    module: nn.Module,
    card: ModelCard,
    arr: np.ndarray,
    lay: Layout,
    spatial: tuple[int, ...],
    infos: dict[str, MethodInfo],
    params: dict[str, dict[str, Any]],
    target: Target,
    layer_of: Mapping[str, str | None],
    geometry: Any,
    dev: torch.device,
    progress: Progress | None,
    cancel: Cancel | None,
) -> dict[str, Attribution]:
    """A 2D model over a volume, slice by slice (axis 0): one :class:`Attribution` per method with the same field
    types as a whole-image run (the maps and predictions stacked on the volume's grid) and the slices' own targets
    and extras in ``per_slice``."""
    depth = spatial[0]
    first_params = next(iter(params.values()))
    chosen = first_params.get("slices")
    if chosen is None:
        chosen = slices_needed(target, depth) or list(range(depth))
    slices = sorted({int(s) for s in ([chosen] if isinstance(chosen, (int, np.integer)) else chosen)})
    if any(not 0 <= s < depth for s in slices):
        raise ParameterError(f"slices must lie in 0..{depth - 1}, got {slices}.")
    names = list(infos)
    data = {n: np.full(spatial, np.nan, np.float32) for n in names}
    per_ch = {n: (np.full((lay.channels,) + spatial, np.nan, np.float32) if lay.channels > 1 else None) for n in names}
    done_slices: dict[str, dict[int, Attribution]] = {n: {} for n in names}
    preds: dict[int, np.ndarray] = {}
    skipped: dict[int, str] = {}
    for j, s in enumerate(slices):
        def report(done: int, total: int, message: str, _j: int = j, _s: int = s) -> None:
            if progress is not None:
                progress(_j * total + done, len(slices) * total, f"slice {_s}: {message}")

        sl = arr[:, s] if lay.channels > 1 else arr[s]
        x = torch.from_numpy(np.ascontiguousarray(sl.reshape((1, lay.channels) + sl.shape[-2:]))).to(dev)
        try:
            parts = _run_methods(module, card, x, infos, params, on_slice(target, s), layer_of, report, cancel)
        except TargetError as err:
            # a slice without the predicted structure has nothing to explain: leave it NaN, say why
            if len(slices) == 1 or not found_per_slice(target):
                raise
            skipped[s] = str(err)
            continue
        for n in names:
            att = _finish(parts[n], infos[n], params[n], None)
            data[n][s] = att.data
            pc = per_ch[n]
            if pc is not None and att.per_channel is not None:
                pc[:, s] = att.per_channel
            done_slices[n][s] = att
            if att.prediction is not None:
                preds[s] = att.prediction
    if len(skipped) == len(slices):
        raise TargetError(
            f"No slice has anything to explain for this target ({next(iter(skipped.values()))}). "
            "Draw a region (Region) or pick a voxel (Voxel) instead."
        )
    prediction = _stacked(preds, depth)
    results: dict[str, Attribution] = {}
    for n in names:
        each = done_slices[n]
        per_slice = SliceWise(
            slices=tuple(each), targets={s: a.target for s, a in each.items()},
            descriptions={s: a.description for s, a in each.items()},
            extras={s: a.extras for s, a in each.items()}, skipped=skipped,
        )
        last = list(each.values())[-1]
        results[n] = Attribution(
            data=data[n], method=infos[n].name, target=_volume_target(target, per_slice.targets), layer=last.layer,
            params=dict(params[n]), signed=infos[n].signed, seconds=sum(a.seconds for a in each.values()),
            prediction=prediction, per_channel=per_ch[n],
            geometry=geometry if isinstance(geometry, Geometry) else None,
            extras=_common_extras([a.extras for a in each.values()]),
            description=_slicewise_description(per_slice.descriptions), per_slice=per_slice,
        )
    return results
