"""nnU-Net's resampling as per-axis matrices (napari_attribution._resample) against the calls nnU-Net 2.8.1's
``resample_data_or_seg`` makes (transcribed: skimage's ``resize(order, mode="edge", anti_aliasing=False)`` per
channel, or per slice with ``map_coordinates(order_z, mode="nearest")`` along an anisotropic axis, the skimage clip
to the input's range included), on random volumes with flat saturated regions (where the clip acts)."""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch

skimage_transform = pytest.importorskip("skimage.transform")

from napari_attribution._resample import (  # noqa: E402
    nnunet_new_shape,
    nnunet_resampler,
    separate_z_axis,
)


def _reference(data: np.ndarray, new_shape: tuple[int, ...], axis: int | None, order: int, order_z: int
               ) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    kwargs = {"mode": "edge", "anti_aliasing": False}
    shape = np.array(data[0].shape)
    new = np.array(new_shape)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    data = data.astype(float)
    for c in range(data.shape[0]):
        if axis is None:
            out[c] = skimage_transform.resize(data[c], new_shape, order, **kwargs)
            continue
        tmp = deepcopy(new)
        tmp[axis] = shape[axis]
        here = np.zeros(tmp)
        for s in range(shape[axis]):
            idx: list[object] = [slice(None)] * 3
            idx[axis] = s
            here[tuple(idx)] = skimage_transform.resize(data[c][tuple(idx)], np.delete(new, axis), order, **kwargs)
        if shape[axis] != new[axis]:
            grids = np.mgrid[:new_shape[0], :new_shape[1], :new_shape[2]]
            coords = np.array([o / n * (g + 0.5) - 0.5 for o, n, g in zip(here.shape, new_shape, grids, strict=True)])
            out[c] = map_coordinates(here, coords, order=order_z, mode="nearest")
        else:
            out[c] = here
    return out


@pytest.mark.parametrize(("shape", "spacing", "target", "order"), [
    ((13, 17, 15), (2.5, 1.0, 1.0), (2.0, 1.2, 0.9), 3),    # isotropic enough: all axes at once
    ((9, 20, 18), (5.0, 1.0, 1.0), (2.5, 0.8, 0.8), 3),     # anisotropic: in-plane per slice, then z with order 0
    ((12, 14, 16), (1.0, 1.0, 1.0), (1.3, 0.7, 1.1), 3),    # down and up
    ((10, 12, 9), (1.0, 4.0, 1.0), (1.0, 1.0, 1.0), 1),     # the low-resolution axis in the middle, order 1
])
def test_equals_resample_data_or_seg(shape: tuple[int, int, int], spacing: tuple[float, ...],
                                     target: tuple[float, ...], order: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *shape)).astype(np.float32)
    x[:, :, :4] = x.min()  # a flat region at the minimum: cubic overshoot below it is clipped
    new_shape = nnunet_new_shape(shape, spacing, target)
    r = nnunet_resampler(shape, new_shape, spacing, target, order=order)
    assert r.separate == separate_z_axis(None, spacing, target)
    ours = r(torch.from_numpy(x)[None])[0].numpy()
    theirs = _reference(x, new_shape, r.separate, order, 0)
    assert ours.shape == theirs.shape == (2, *new_shape)
    assert float(np.abs(ours - theirs).max()) < 1e-5


def test_separate_axis_and_shapes_follow_nnunet() -> None:
    assert nnunet_new_shape((10, 20, 30), (2.5, 1.0, 1.0), (2.0, 0.5, 1.5)) == (12, 40, 20)
    assert separate_z_axis(None, (5.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == 0
    assert separate_z_axis(None, (1.0, 1.0, 1.0), (1.0, 1.0, 4.0)) == 2       # from the new spacing
    assert separate_z_axis(None, (3.0, 3.0, 0.5), (1.0, 1.0, 1.0)) is None    # two low-resolution axes
    assert separate_z_axis(False, (5.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None
    assert separate_z_axis(True, (1.0, 1.2, 1.0), (1.0, 1.0, 1.0)) == 1


def test_differentiable() -> None:
    r = nnunet_resampler((5, 6, 4), (7, 4, 6), (1.0, 1.0, 1.0), (0.7, 1.5, 0.66))
    torch.manual_seed(0)
    x = torch.rand(1, 1, 5, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: r(t), (x,), eps=1e-6, atol=1e-6)
