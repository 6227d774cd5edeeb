"""The window loop and the conditional patch sampler shared by ``prediction_difference`` and ``evidence``.

The sampler is the conditional Gaussian of Zintgraf et al. (arXiv:1702.04595): a multivariate Gaussian over
``(k + 2l)^d`` patches, fitted per input channel on random patches (of the explained image by default, or of
``patches_from`` images), conditioned on the ``l``-voxel frame around each ``k^d`` window::

    mu_{w|f} = mu_w + S_wf S_ff^-1 (f - mu_f),     S_{w|f} = S_ww - S_wf S_ff^-1 S_fw

``S_{w|f}`` does not depend on the frame's values, so its Cholesky factor and the matrix ``S_wf S_ff^-1`` are
computed once per fit. Images are padded by ``l`` (edge values) so that border windows have a frame.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._errors import ParameterError, ScaledDefaultsWarning

if TYPE_CHECKING:
    from ._run import MethodOutput

__all__ = ["MAX_PASSES", "PatchGaussian", "WindowGrid", "Windows", "log2_odds", "scaled_windows", "window_and_stride"]


def _starts(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


@dataclass
class WindowGrid:
    """All ``window``-sized windows inside the image at ``stride`` (the last one flush with the border).

    Windows are addressed by flat voxel indices (the offset of the window's corner plus the offsets of its voxels
    in C order), so that pasting replacement values into a chunk of images, reading windows out of a map and
    averaging window values into a map are each one indexed tensor operation rather than one Python slice per
    window. Measured on the 3D lesion demo (1183 windows of 4^3): the average took 72 ms as a loop of slices and
    pasting 120 ms over a whole ``evidence`` run, out of about 1 s.
    """

    spatial: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]

    #: windows per step of :meth:`average` (bounds its index memory on large grids)
    _CHUNK = 4096

    def __post_init__(self) -> None:
        if any(w > s for w, s in zip(self.window, self.spatial, strict=True)):
            raise ParameterError(f"The window {self.window} is larger than the image {self.spatial}.")
        self.corners = list(itertools.product(*[_starts(s, w, st) for s, w, st in
                                                zip(self.spatial, self.window, self.stride, strict=True)]))
        nd = len(self.spatial)
        strides = torch.tensor([math.prod(self.spatial[a + 1:]) for a in range(nd)])
        self._corner_flat = (torch.tensor(self.corners, dtype=torch.long).view(-1, nd) * strides).sum(1)
        offsets = torch.stack(torch.meshgrid(*[torch.arange(w) for w in self.window], indexing="ij"), -1)
        self._offsets = (offsets.view(-1, nd) * strides).sum(1)  # (P,) window voxels in C order

    def __len__(self) -> int:
        return len(self.corners)

    def slices(self, i: int) -> tuple[slice, ...]:
        """The spatial slices of window ``i``."""
        return tuple(slice(c, c + w) for c, w in zip(self.corners[i], self.window, strict=True))

    def flat_index(self, windows: Tensor) -> Tensor:
        """Flat spatial voxel indices ``(n, P)`` of the windows numbered ``windows`` ``(n,)``."""
        return self._corner_flat[windows][:, None] + self._offsets[None]

    def paste(self, xs: Tensor, windows: Tensor, values: Tensor) -> Tensor:
        """Write ``values`` ``(B, C, P)`` into window ``windows[b]`` of image ``b`` of the contiguous batch ``xs``
        ``(B, C, *S)``, in place; returns ``xs``."""
        b, c = xs.shape[:2]
        idx = self.flat_index(windows.cpu()).to(xs.device)[:, None, :].expand(b, c, -1)
        xs.view(b, c, -1).scatter_(2, idx, values.to(device=xs.device, dtype=xs.dtype))
        return xs

    def take(self, image: Tensor, start: int, stop: int) -> Tensor:
        """The voxels of windows ``start:stop`` of ``image`` ``(C, *S)`` as ``(n, C, P)``."""
        idx = self.flat_index(torch.arange(start, stop))  # (n, P)
        return image.reshape(image.shape[0], -1)[:, idx].transpose(0, 1)

    def average(self, values: Sequence[float] | Tensor) -> Tensor:
        """Per-voxel mean of the window values over the windows that cover the voxel."""
        vals = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        n, p = len(self), len(self._offsets)
        total = torch.zeros(math.prod(self.spatial), dtype=torch.float64)
        count = torch.zeros_like(total)
        ones = torch.ones(min(n, self._CHUNK) * p, dtype=torch.float64)
        for start in range(0, n, self._CHUNK):
            stop = min(n, start + self._CHUNK)
            idx = self.flat_index(torch.arange(start, stop)).reshape(-1)
            total.index_add_(0, idx, vals[start:stop].repeat_interleave(p))
            count.index_add_(0, idx, ones[: idx.numel()])
        return (total / count.clamp(min=1)).view(self.spatial)


#: default windows are sized so that one input costs at most this many forward passes (the first, unperturbed one
#: included). A fixed 8^3 occlusion window at stride 4 would need 29,792 passes on a 128^3 scan (~22 h on a CPU);
#: explicit ``window`` / ``stride`` parameters are always used as given.
MAX_PASSES = 4096

#: a grown default window of ``prediction_difference`` / ``evidence`` may have at most this many voxels with its
#: frame, ``prod(k + 2l)``: the dimension of the conditional Gaussian fitted on 20 000 patches (measured on one
#: thread: 729 dimensions 1.8 s, 2,197 7 s, 4,913 27 s and 0.9 GB; 8,000 about a minute and 1.5 GB)
MAX_GAUSSIAN = 8000


@dataclass(frozen=True)
class Windows:
    """The windows a sliding-window method evaluates on one input.

    Attributes
    ----------
    window, stride : tuple of int
        Per spatial axis.
    count : int
        Number of windows (the last one per axis flush with the border).
    passes : int
        Forward passes of the run (the unperturbed pass included).
    note : str
        Empty when the window is the method's default (or the caller's); else what was used instead of the
        default, why, and how to choose (also the text of the :class:`ScaledDefaultsWarning`).
    """

    window: tuple[int, ...]
    stride: tuple[int, ...]
    count: int
    passes: int
    note: str = ""


def n_windows(spatial: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> int:
    """``prod_d ceil((S_d - w_d) / s_d) + 1``: the windows of the grid of :func:`_starts` (and of
    ``captum.attr.Occlusion``)."""
    return math.prod(int(math.ceil((s - w) / st)) + 1 for s, w, st in zip(spatial, window, stride, strict=True))


def _shape(t: Sequence[int]) -> str:
    return " x ".join(str(v) for v in t)


def scaled_windows(params: Mapping[str, Any], spatial: tuple[int, ...], *, default: int,
                   passes: Callable[[int], int], tile: bool, what: str) -> Windows:
    """The window and stride of a sliding-window method: as given; else the method's ``default`` window (cubic,
    clipped to the image) at half its size as stride when that costs at most :data:`MAX_PASSES` forward passes;
    else the smallest larger window (or stride) that fits, with a note that says so.

    ``passes(n)`` is the run's forward passes for ``n`` windows. A given ``window`` is never changed (its stride
    defaults to half of it); a given ``stride`` is kept while the window grows. Without ``tile`` the window grows
    at stride half the window. With ``tile`` the stride first grows up to the default window, then window and
    stride grow together (the windows tile the image) — for the window methods whose cost is the conditional
    Gaussian of the window and its frame, ``(k + 2l)^d`` dimensions: overlapping by half needs a window twice as
    wide for the same number of windows, a Gaussian 2^d times larger (8,000 dimensions instead of 2,197 for
    ``evidence`` at 128^3), for a map of about the same block size.
    """
    nd = len(spatial)
    given_stride = params.get("stride")

    def make(w: int, step: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Window ``w`` (clipped to the image) at stride ``step`` (None: half the window), or the given stride."""
        win = tuple(min(w, s) for s in spatial)
        if given_stride:
            return win, per_axis(given_stride, nd, "stride")
        return win, tuple(max(1, v // 2) if step is None else min(step, v) for v in win)

    if params.get("window"):
        window = per_axis(params["window"], nd, "window")
        if any(w > s for w, s in zip(window, spatial, strict=True)):
            raise ParameterError(f"The window {window} is larger than the image {spatial}.")
        stride = per_axis(given_stride, nd, "stride") if given_stride else tuple(max(1, w // 2) for w in window)
        n = n_windows(spatial, window, stride)
        return Windows(window, stride, n, passes(n))
    window, stride = make(default, None)
    n0 = n_windows(spatial, window, stride)
    if passes(n0) <= MAX_PASSES:
        return Windows(window, stride, n0, passes(n0))
    first, first_stride, n = window, stride, n0
    larger = range(default + 1, max(spatial) + 1)
    steps: list[tuple[int, int | None]]
    if tile and not given_stride:  # first the stride grows to the window, then both together
        steps = [(default, st) for st in range(default // 2 + 1, default + 1)]
        steps += [(w, w) for w in larger]
    else:
        steps = [(w, None) for w in larger]
    for w, step in steps:
        window, stride = make(w, step)
        n = n_windows(spatial, window, stride)
        if passes(n) <= MAX_PASSES:
            break
    how = "pass window= (and stride=) to choose" + (", or mode='taylor' / 'screened' (fewer passes)"
                                                     if tile else "")
    note = (f"{what}: window {_shape(window)} at stride {_shape(stride)} ({n:,} windows, {passes(n):,} forward "
            f"passes) instead of the default {_shape(first)} at stride {_shape(first_stride)}, which needs "
            f"{passes(n0):,} passes on this {_shape(spatial)} image; the default grows with the image to stay "
            f"within {MAX_PASSES:,} passes ({how}).")
    return Windows(window, stride, n, passes(n), note)


def window_passes(method: str, params: Mapping[str, Any]) -> Callable[[int], int]:
    """Forward passes of ``prediction_difference`` / ``evidence`` (by ``params["mode"]``) for ``n`` windows, the
    unperturbed pass included: PDA ``1 + n * samples``, conditional mean ``1 + n``, screened
    ``2 + ceil(screen * n)`` (one forward and one backward for the ranking), taylor 2."""
    mode = params.get("mode", "sample") if method == "evidence" else "sample"
    if mode == "taylor":
        return lambda n: 2
    if mode == "screened":
        screen = float(params.get("screen", 0.5))
        return lambda n: 2 + max(1, math.ceil(screen * n))
    samples = max(1, int(params.get("samples") or 10)) if method == "prediction_difference" else 1
    return lambda n: 1 + n * samples


def window_and_stride(params: Mapping[str, Any], spatial: tuple[int, ...], method: str = "evidence") -> Windows:
    """The windows of ``prediction_difference`` / ``evidence``: ``params["window"]`` (stride ``params["stride"]``
    or half the window), else the paper's window, 10 (2D) / 5 (3D) voxels clipped to the image, at stride half the
    window (methods.md §A4.1, §B10) while the run stays within :data:`MAX_PASSES` forward passes; on larger images
    the smallest window that tiles the image within that many passes (see :func:`scaled_windows`)."""
    nd = len(spatial)
    default_k = 10 if nd <= 2 else 5
    passes = window_passes(method, params)
    wins = scaled_windows(params, spatial, default=default_k, passes=passes, tile=True, what=method)
    pad = int(params.get("padding", 2))
    dims = math.prod(w + 2 * pad for w in wins.window)
    if wins.note and dims > MAX_GAUSSIAN:
        # the grown default is affordable in passes but not in its fit: say so before any work, with a way out
        k = max(1, round(MAX_GAUSSIAN ** (1 / nd)) - 2 * pad)
        fallback = tuple(min(k, s) for s in spatial)
        n = n_windows(spatial, fallback, fallback)
        raise ParameterError(
            f"{method} on this {_shape(spatial)} image: to stay within {MAX_PASSES:,} forward passes its default "
            f"window would grow to {_shape(wins.window)}, whose conditional Gaussian ({dims:,} dimensions) is too "
            f"large to fit (the limit is {MAX_GAUSSIAN:,}). Use evidence"
            + (" with mode='screened' or 'taylor'" if method == "evidence" else " (the same weight of evidence, "
               "one pass per window)")
            + f", explain a box (ROI), or choose the windows: e.g. window={k}, stride={k} needs {passes(n):,} "
            "passes.")
    return wins


def gaussian_flops(params: Mapping[str, Any], spatial: tuple[int, ...], method: str = "evidence") -> float:
    """Floating-point operations of ``prediction_difference`` / ``evidence`` besides the model: fitting the
    conditional Gaussian (the patch covariance, ``2 N P^2`` for ``N`` patches of ``P`` voxels, and solving for the
    window given its frame) and conditioning every window it evaluates (``2 Pw Pf`` each, plus ``2 S Pw^2`` for
    ``S`` samples), per input channel. For the docks' cost estimate: on a 48^3 image a window of 8 makes the fit
    take longer than the 28 forward passes of the run."""
    wins = window_and_stride(params, spatial, method)
    pad = int(params.get("padding", 2))
    size = math.prod(w + 2 * pad for w in wins.window)
    inner = math.prod(wins.window)
    frame = size - inner
    n = int(params.get("patches") or 20000)
    fit = 2.0 * n * size * size + (2 / 3) * frame**3 + 2.0 * inner * frame * frame + 2.0 * inner * inner * frame
    conditioned = wins.count  # taylor conditions every window once; screened again for the exact ones
    if method == "evidence" and params.get("mode") == "screened":
        conditioned += max(1, math.ceil(float(params.get("screen", 0.5)) * wins.count))
    samples = max(1, int(params.get("samples") or 10)) if method == "prediction_difference" else 0
    return fit + conditioned * (2.0 * inner * frame + 2.0 * samples * inner * inner)


def count_windows(params: Mapping[str, Any], spatial: tuple[int, ...], method: str = "evidence") -> int:
    """How many windows ``prediction_difference`` / ``evidence`` evaluate on an image of shape ``spatial``."""
    return window_and_stride(params, spatial, method).count


def per_axis(value: Any, nd: int, name: str) -> tuple[int, ...]:
    """An int or one int per spatial axis, validated."""
    vals = (value,) * nd if isinstance(value, (int, np.integer)) else tuple(value)
    if len(vals) != nd or any(int(v) < 1 for v in vals):
        raise ParameterError(f"{name} must be a positive integer or one per spatial axis ({nd}), got {value!r}.")
    return tuple(int(v) for v in vals)


class PatchGaussian:
    """Conditional Gaussian of a window given its frame, per input channel.

    Parameters
    ----------
    images : list of Tensor
        ``(C, *S)`` images to draw fitting patches from.
    window : tuple of int
        Window size per axis ``k``.
    pad : int
        Frame width ``l``.
    n_patches : int
        Number of random patches to fit on (Zintgraf et al.: 20 000).
    generator : torch.Generator
        For the patch positions.
    """

    def __init__(self, images: list[Tensor], window: tuple[int, ...], pad: int, n_patches: int,
                 generator: torch.Generator) -> None:
        self.window = window
        self.pad = pad
        nd = len(window)
        self.patch = tuple(w + 2 * pad for w in window)
        inner = np.zeros(self.patch, bool)
        inner[tuple(slice(pad, pad + w) for w in window)] = True
        self.win_idx = torch.from_numpy(np.flatnonzero(inner.ravel()))
        self.frame_idx = torch.from_numpy(np.flatnonzero(~inner.ravel()))
        channels = images[0].shape[0]
        size = int(np.prod(self.patch))
        # the covariance is accumulated over chunks of patches (memory: a chunk and the P x P matrices, not all
        # 20 000 patches with their gather indices: 5.7 GB at P = 17^3), of the patches less the first image's
        # per-channel mean (so the one-pass formula loses no precision to large intensities such as HU)
        shift = images[0].reshape(channels, -1).double().mean(1)[:, None]  # (C, 1)
        total = torch.zeros(channels, size, dtype=torch.float64)
        outer = torch.zeros(channels, size, size, dtype=torch.float64)
        chunk = max(64, 2**22 // size)
        n_fit = 0
        per_image = max(1, n_patches // len(images))
        for img in images:
            padded = self.pad_image(img[None])[0]
            starts = [padded.shape[1 + a] - self.patch[a] + 1 for a in range(nd)]
            if any(s < 1 for s in starts):
                raise ParameterError(f"The image {tuple(img.shape[1:])} is smaller than the patch {self.patch}.")
            corners = torch.stack([torch.randint(0, s, (per_image,), generator=generator) for s in starts], 1)
            for c0 in range(0, per_image, chunk):
                d = self._gather(padded, corners[c0:c0 + chunk]).double() - shift  # (n, C, P)
                total += d.sum(0)
                outer.baddbmm_(d.permute(1, 2, 0), d.permute(1, 0, 2))
                n_fit += d.shape[0]
        mean = total / n_fit
        self.mean = mean + shift  # (C, P)
        cov = outer.sub_(n_fit * mean[:, :, None] * mean[:, None, :]).div_(max(1, n_fit - 1))
        del outer
        cov.diagonal(dim1=1, dim2=2).add_((1e-6 * cov.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1e-12))[:, None])
        w, f = self.win_idx, self.frame_idx
        s_wf = cov[:, w][:, :, f]
        s_ff = cov[:, f][:, :, f]
        self.gain = torch.linalg.solve(s_ff, s_wf.transpose(1, 2)).transpose(1, 2)  # (C, Pw, Pf)
        del s_ff
        cond = cov[:, w][:, :, w] - self.gain @ s_wf.transpose(1, 2)
        del cov, s_wf
        cond = 0.5 * (cond + cond.transpose(1, 2))
        cond.diagonal(dim1=1, dim2=2).add_(1e-9)
        self.chol = torch.linalg.cholesky(cond)  # (C, Pw, Pw)
        self.channels = channels
        self.n_fit = n_fit

    def pad_image(self, x: Tensor) -> Tensor:
        """Pad ``(B, C, *S)`` by the frame width with edge values."""
        nd = x.ndim - 2
        if self.pad == 0:
            return x
        return F.pad(x, (self.pad,) * (2 * nd), mode="replicate")

    def _gather(self, padded: Tensor, corners: Tensor) -> Tensor:
        """Patches ``(n, C, P)`` of a padded image ``(C, *Sp)`` at ``corners`` ``(n, d)``."""
        nd = corners.shape[1]
        offsets = torch.stack(torch.meshgrid(*[torch.arange(p) for p in self.patch], indexing="ij"), -1).view(-1, nd)
        idx = corners[:, None, :] + offsets[None]  # (n, P, d)
        spatial = padded.shape[1:]
        strides = torch.tensor([math.prod(spatial[a + 1:]) for a in range(nd)])
        flat = (idx * strides).sum(-1)  # (n, P)
        return padded.flatten(1)[:, flat].permute(1, 0, 2)  # (n, C, P)

    def frames(self, padded: Tensor, corners: list[tuple[int, ...]]) -> Tensor:
        """Frame values ``(n, C, Pf)`` around windows at ``corners`` (window corners in image coordinates) of a
        padded batch ``(1, C, *Sp)`` from :meth:`pad_image`."""
        c = torch.tensor(corners, dtype=torch.long).view(len(corners), -1)
        return self._gather(padded[0], c)[:, :, self.frame_idx].double()

    def conditional_mean(self, frames: Tensor) -> Tensor:
        """``(n, C, Pf) -> (n, C, Pw)``."""
        mu_w = self.mean[:, self.win_idx]
        mu_f = self.mean[:, self.frame_idx]
        return mu_w + torch.einsum("cwf,ncf->ncw", self.gain, frames - mu_f)

    def sample(self, frames: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``n`` conditional samples per frame: ``(m, C, Pf) -> (m, n, C, Pw)``."""
        mu = self.conditional_mean(frames)
        z = torch.randn((frames.shape[0], n, self.channels, len(self.win_idx)), generator=generator, dtype=mu.dtype)
        return mu[:, None] + torch.einsum("cwv,mncv->mncw", self.chol, z)


def log2_odds(p: Tensor, n_train: int, n_classes: int) -> Tensor:
    """``log2(p / (1 - p))`` after Laplace correction ``p <- (p N + 1) / (N + K)`` (Zintgraf et al.)."""
    q = (p * n_train + 1) / (n_train + n_classes)
    return torch.log2(q) - torch.log2(1 - q)


_FITS: dict[tuple[Any, ...], PatchGaussian] = {}


def _fitted(images: list[Tensor], window: tuple[int, ...], pad: int, n_patches: int, seed: int) -> PatchGaussian:
    """The patch model for these images, fitted once and shared by ``prediction_difference`` and ``evidence``
    (and by repeated runs on the same image): the fit depends only on the images, the window and the seed."""
    import hashlib

    digest = hashlib.sha1()
    for im in images:
        digest.update(str(tuple(im.shape)).encode())
        digest.update(im.numpy().tobytes())
    key = (digest.hexdigest(), window, pad, n_patches, seed)
    if key not in _FITS:
        if len(_FITS) >= 4:
            _FITS.pop(next(iter(_FITS)))
        _FITS[key] = PatchGaussian(images, window, pad, n_patches, torch.Generator().manual_seed(seed))
    return _FITS[key]


def weight_of_evidence(run: Any, params: dict[str, Any], mode: str) -> MethodOutput:
    """Window weight of evidence ``WE_w = log2odds p(c|x) - log2odds p(c|x without w)``, averaged per voxel over
    the windows that cover it. ``mode``: ``"sample"`` (Zintgraf et al.: mean probability over ``samples``
    conditional samples of the window), ``"one_sample"`` (one conditional sample per window, whatever
    ``samples`` says: ``evidence(mode="conditional_sample")``), ``"mean"`` (one evaluation with the window set to
    its conditional mean)
    or ``"taylor"`` (first-order: ``sum_{u in w} d log2odds / dx(u) * (x(u) - mu_{w|f}(u))``, one backward pass).

    Scores are the target's probability normalised by the sum of its weights (the mean probability over a
    segmentation region), so log-odds apply; targets with negative weights (contrasts) use the plain
    difference of probability scores, as Zintgraf et al. do for non-probability units, and so does a target
    that asks for the logit (``score="logit"``: the plain difference of logit scores, ``extras["log_odds"]``
    False).
    """
    from ._run import MethodOutput

    x = run.x
    spatial = tuple(x.shape[2:])
    wins = window_and_stride(params, spatial, "prediction_difference" if mode == "sample" else "evidence")
    window, stride = wins.window, wins.stride
    if wins.note:
        warnings.warn(ScaledDefaultsWarning(wins.note), stacklevel=2)
    pad = int(params["padding"])
    if pad < 1:
        raise ParameterError("padding (the frame width l) must be at least 1.")
    images = [x[0].detach().cpu()]
    if params["patches_from"] is not None:
        extra = params["patches_from"]
        for arr in (extra if isinstance(extra, (list, tuple)) else [extra]):
            t = torch.as_tensor(np.asarray(arr), dtype=x.dtype)
            images.append(t if t.ndim == x.ndim - 1 else t[None])
    gauss = _fitted(images, window, pad, int(params["patches"]), int(params.get("seed") or 0))
    grid = WindowGrid(spatial, window, stride)
    padded = gauss.pad_image(x.detach().cpu())
    target = run.target
    weights = target.weights
    # log-odds are defined on probabilities: a target that asks for the logit gets the plain difference instead
    logodds = bool((weights >= 0).all()) and float(weights.sum()) > 0 and target.uses_probability(True)
    norm = float(weights.sum()) if logodds else 1.0
    out0 = run.output
    n_classes = out0.shape[1] if out0.shape[1] > 1 else 2
    n_train = int(params["train_size"])

    def transform(p: Tensor) -> Tensor:
        return log2_odds(p / norm, n_train, n_classes) if logodds else p

    full = transform(target(out0, probability=True).double())[0]
    n_win = len(grid)
    extras: dict[str, Any] = {"windows": n_win, "window": window, "stride": stride, "padding": pad,
                              "fit_patches": gauss.n_fit, "log_odds": logodds}
    if wins.note:
        extras["window_note"] = wins.note
    if mode in ("taylor", "screened"):
        screen = float(params.get("screen", 0.5)) if mode == "screened" else 0.0
        if mode == "screened" and not 0.0 < screen <= 1.0:
            raise ParameterError(f"screen (the fraction of windows evaluated exactly) must be in (0, 1], got {screen}.")
        n_exact = max(1, math.ceil(screen * n_win)) if mode == "screened" else 0
        run.expected_total(1 + n_win + n_exact)
        we_taylor = _taylor_evidence(run, grid, gauss, padded, transform)
        if mode == "taylor":
            return MethodOutput(grid.average(we_taylor).to(x.dtype)[None], extras)
        # screened: the exact (conditional-mean) evidence of the windows with the largest first-order |WE|; the
        # others keep their first-order value, rescaled by the least-squares factor between the two on the
        # evaluated windows
        order = torch.sort(torch.argsort(we_taylor.abs(), descending=True, stable=True)[:n_exact]).values
        exact = full - transform(run.scores(_window_maker(run, grid, gauss, padded, "mean", 1, order), n_exact,
                                            probability=True, message="screened windows").double())
        t_sel = we_taylor[order]
        denom = float((t_sel * t_sel).sum())
        scale = float((t_sel * exact).sum()) / denom if denom > 0 else 0.0
        we = we_taylor * scale
        we[order] = exact
        rho = float("nan")  # how far the first-order ranking held on the evaluated windows
        if n_exact >= 3 and float(t_sel.std()) > 0 and float(exact.std()) > 0:
            from scipy.stats import spearmanr

            rho = float(spearmanr(t_sel.numpy(), exact.numpy()).statistic)
        extras.update(evaluated=n_exact, screen=screen, taylor_scale=scale, screen_rank_correlation=rho)
        return MethodOutput(grid.average(we).to(x.dtype)[None], extras)

    samples = int(params["samples"]) if mode == "sample" else 1
    if samples < 1:
        raise ParameterError("samples must be at least 1.")
    run.expected_total(n_win * samples)
    make = _window_maker(run, grid, gauss, padded, "sample" if mode == "one_sample" else mode, samples,
                         torch.arange(n_win))
    scores = run.scores(make, n_win * samples, probability=True, message="windows").double()
    p_without = scores.view(n_win, samples).mean(1)
    we = full - transform(p_without)
    extras["samples"] = samples
    return MethodOutput(grid.average(we).to(x.dtype)[None], extras)


def _taylor_evidence(run: Any, grid: WindowGrid, gauss: PatchGaussian, padded: Tensor,
                     transform: Callable[[Tensor], Tensor]) -> Tensor:
    """First-order window evidence ``sum_{u in w} d log2odds / dx(u) (x(u) - mu_{w|f}(u))`` of every window of
    ``grid`` from one forward and one backward pass; ``(n_windows,)`` float64."""
    from ._run import first_output

    x = run.x
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        lo = transform(run.target(first_output(run.model(xg)), probability=True).double()).sum()
        (g,) = torch.autograd.grad(lo, xg)
    run.advance(1, "gradient")
    n_win = len(grid)
    we = torch.empty(n_win, dtype=torch.float64)
    image, grad = x[0].detach().cpu(), g[0].cpu()
    chunk = 4096
    for start in range(0, n_win, chunk):
        stop = min(n_win, start + chunk)
        mu = gauss.conditional_mean(gauss.frames(padded, grid.corners[start:stop]))  # (n, C, Pw)
        wins = grid.take(image, start, stop).double()  # (n, C, Pw)
        gw = grid.take(grad, start, stop).double()
        we[start:stop] = (gw * (wins - mu)).flatten(1).sum(1)
        run.advance(stop - start, "windows")
    return we


def _window_maker(run: Any, grid: WindowGrid, gauss: PatchGaussian, padded: Tensor, mode: str, samples: int,
                  order: Tensor) -> Callable[[int, int], Tensor]:
    """``make(start, stop)`` for :meth:`Run.scores`: item ``i`` is the image with window ``order[i // samples]``
    replaced by its conditional mean (``mode="mean"``) or by conditional sample ``i % samples``
    (``mode="sample"``). ``order`` must be increasing: replacement values are made in blocks of windows (a fixed
    block size, so results do not depend on the chunking), each block once."""
    x = run.x
    cache: dict[int, Tensor] = {}
    block = 256

    def block_values(b0: int) -> Tensor:
        """Replacement values ``(n, S, C, Pw)`` of windows ``b0:b0 + block`` (the last block made is kept)."""
        if b0 not in cache:
            frames = gauss.frames(padded, grid.corners[b0:b0 + block])
            vals = gauss.sample(frames, samples, run.generator) if mode == "sample" else \
                gauss.conditional_mean(frames)[:, None]
            cache.clear()
            cache[b0] = vals.to(x.dtype)
        return cache[b0]

    def make(start: int, stop: int) -> Tensor:
        xs: Tensor = x.repeat(stop - start, *([1] * (x.ndim - 1)))
        idx = torch.arange(start, stop)
        windows, which = order[idx // samples], idx % samples
        parts = []
        for b0 in range(int(windows[0]) // block * block, int(windows[-1]) + 1, block):
            sel = (windows >= b0) & (windows < b0 + block)
            if bool(sel.any()):
                parts.append(block_values(b0)[windows[sel] - b0, which[sel]])
        return grid.paste(xs, windows, torch.cat(parts))

    return make

