"""prepare(): the card's intensity preprocessing (exact maths), resampling to the model spacing and back, padding
and its crop-back (the differentiable ``Prepared.to_model`` / ``Prepared.to_scan``), and how masks and voxel
indices on the scan line up with the model grid in world space."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution.inputs import Prepared, prepare
from napari_attribution.io import Geometry
from napari_attribution.models import ModelCard

# an anisotropic CT-like grid: 1.2 mm slices, 0.4 mm in plane, (z, y, x)
ANISO = Geometry(spacing=(1.2, 0.4, 0.4), origin=(5.0, -3.0, 2.0))
SHAPE = (20, 60, 60)  # a 24 mm cube


def blob(world: np.ndarray) -> np.ndarray:
    """A smooth function of world position (mm): a Gaussian of 5 mm around the cube's centre plus a gentle ramp."""
    centre = np.array([5.0 + 11.4, -3.0 + 11.8, 2.0 + 11.8])
    r2 = ((world - centre) ** 2).sum(-1)
    return np.exp(-r2 / (2 * 5.0**2)) + 0.01 * (world[..., 0] - centre[0])


def sample(geometry: Geometry, shape: tuple[int, ...]) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return blob(geometry.index_to_world(index)).astype(np.float32)


def batch(arr: np.ndarray) -> torch.Tensor:
    """``(*S) -> (1, 1, *S)``: one single-channel map as the torch path takes it."""
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]


def world_centre(geometry: Geometry, weights: np.ndarray) -> np.ndarray:
    """The weighted centre (mm) of the voxels of a non-negative array on ``geometry``'s grid."""
    index = np.argwhere(weights > 0)
    w = weights[tuple(index.T)]
    return np.asarray(geometry.index_to_world((index * w[:, None]).sum(0) / w.sum()))


# ------------------------------------------------------------------------------------------------ identity


def test_nothing_asked_is_the_identity_without_copies() -> None:
    image = np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32)
    prepared = prepare(image, ANISO.with_spacing((1, 1, 1)), ModelCard())
    assert prepared.data is image and prepared.is_identity and prepared.steps == ()
    heat = batch(np.ones_like(image))
    assert prepared.to_scan(heat) is heat and prepared.to_model(heat) is heat
    net = torch.nn.Conv3d(1, 1, 1)
    assert prepared.network(net) is net  # the grid does not change: the network is not wrapped
    assert prepared.geometry == ANISO.with_spacing((1, 1, 1))
    # a card spacing equal to the scan's is no resampling either
    same = prepare(image, ANISO, ModelCard(spacing=ANISO.spacing))
    assert same.data is image and same.is_identity


# ------------------------------------------------------------------------------------------------ intensity


def test_ct_window_clips_and_rescales() -> None:
    hu = np.array([-1000, -100, 0, 40, 300, 1000], np.float32)
    out = prepare(hu, None, ModelCard(preprocess={"window": [-100, 300]})).data
    np.testing.assert_allclose(out, [0, 0, 0.25, 0.35, 1, 1], atol=1e-7)
    out = prepare(hu, None, ModelCard(preprocess={"window": [-100, 300], "scale_to": [-1, 1]})).data
    np.testing.assert_allclose(out, [-1, -1, -0.5, -0.3, 1, 1], atol=1e-6)
    assert hu[0] == -1000  # the input is untouched


def test_zscore_whole_image_and_over_nonzero_voxels() -> None:
    g = np.random.default_rng(1)
    image = (g.normal(size=(6, 20, 20)) * 5 + 3).astype(np.float32)
    out = prepare(image, None, ModelCard(preprocess={"zscore": True})).data
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5
    image[:, :5] = 0  # background outside a skull-stripped brain
    out = prepare(image, None, ModelCard(preprocess={"zscore": True, "mask_nonzero": True})).data
    inside = image != 0
    assert np.all(out[~inside] == 0)
    assert abs(out[inside].mean()) < 1e-5 and abs(out[inside].std() - 1) < 1e-5


def test_zscore_is_per_channel() -> None:
    g = np.random.default_rng(2)
    image = np.stack([g.normal(10, 2, (4, 8, 8)), g.normal(-5, 7, (4, 8, 8))]).astype(np.float32)
    prepared = prepare(image, Geometry((1, 1, 1), (0, 0, 0)), ModelCard(preprocess={"zscore": True}))
    assert prepared.channel_axis and prepared.shape == (4, 8, 8)
    np.testing.assert_allclose(prepared.data.reshape(2, -1).mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(prepared.data.reshape(2, -1).std(1), 1, atol=1e-5)


def test_percentile_and_scale_shift() -> None:
    values = np.arange(101, dtype=np.float32)  # percentiles of 0..100 are the values themselves
    out = prepare(values, None, ModelCard(preprocess={"percentile": [1, 99]})).data
    np.testing.assert_allclose(out[[0, 1, 50, 99, 100]], [0, 0, 0.5, 1, 1], atol=1e-6)
    out = prepare(values, None, ModelCard(preprocess={"scale": 2, "shift": 1})).data
    np.testing.assert_allclose(out, values * 2 + 1)
    flat = prepare(np.full(5, 7, np.float32), None, ModelCard(preprocess={"percentile": [1, 99]})).data
    np.testing.assert_array_equal(flat, 0)


# ------------------------------------------------------------------------------------------------ resampling


def test_resampling_anisotropic_scan_to_model_spacing_and_back() -> None:
    image = sample(ANISO, SHAPE)
    card = ModelCard(spatial_dims=3, spacing=(1.0, 1.0, 1.0))
    prepared = prepare(image, ANISO, card)
    assert prepared.shape == (24, 24, 24) and prepared.resampled_shape == (24, 24, 24)
    assert prepared.geometry is not None
    np.testing.assert_allclose(prepared.geometry.spacing, (1.0, 1.0, 1.0))
    # the model grid holds the same function at its own voxels' world positions
    np.testing.assert_allclose(prepared.data, sample(prepared.geometry, prepared.shape), atol=0.01)
    np.testing.assert_array_equal(prepared.to_model(batch(image))[0, 0].numpy(), prepared.data)
    back = prepared.to_scan(prepared.to_model(batch(image)))[0, 0].numpy()
    assert back.shape == SHAPE and back.dtype == np.float32
    np.testing.assert_allclose(back, image, atol=0.025)
    assert np.abs(back - image).mean() < 3e-3
    # a batch of several maps with several channels each is kept
    two = torch.from_numpy(np.stack([prepared.data] * 3))[None].expand(2, 3, *prepared.shape)
    assert prepared.to_scan(two).shape == (2, 3, *SHAPE)


def test_resampling_keeps_the_field_of_view_when_lengths_round() -> None:
    geometry = Geometry(spacing=(1.0, 0.7), origin=(0.0, 0.0))
    prepared = prepare(np.zeros((17, 33), np.float32), geometry, ModelCard(spacing=(1.5, 1.5)))
    assert prepared.shape == (11, 15)  # round(17 / 1.5), round(33 * 0.7 / 1.5)
    assert prepared.geometry is not None
    fov = np.array(prepared.shape) * np.array(prepared.geometry.spacing)
    np.testing.assert_allclose(fov, [17.0, 33 * 0.7])
    assert prepared.to_scan(batch(prepared.data)).shape[2:] == (17, 33)


def test_2d_model_on_a_volume_resamples_and_pads_in_plane_only() -> None:
    card = ModelCard(spatial_dims=2, spacing=(0.8, 0.8), preprocess={"pad_to_multiple": 16})
    image = sample(ANISO, (5, 40, 40))
    prepared = prepare(image, ANISO.with_spacing((3.0, 0.4, 0.4)), card, slicewise=True)
    assert prepared.resampled_shape == (5, 20, 20) and prepared.shape == (5, 32, 32)
    assert prepared.pad == ((0, 0), (6, 6), (6, 6)) and prepared.model_axes == 2
    # the slices go through the 2D model as a batch of in-plane images
    slices = torch.from_numpy(image)[:, None]
    model = prepared.to_model(slices)
    assert model.shape == (5, 1, 32, 32)
    np.testing.assert_allclose(model[:, 0].numpy(), prepared.data, atol=1e-6)  # slice by slice = trilinear
    heat = torch.ones((5, 1, 32, 32))
    back = prepared.to_scan(heat)
    assert back.shape == (5, 1, 40, 40)
    np.testing.assert_allclose(back.numpy(), 1.0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ padding


def test_padding_is_cropped_back_exactly() -> None:
    image = np.random.default_rng(3).normal(size=(20, 37, 45)).astype(np.float32)
    card = ModelCard(spatial_dims=3, preprocess={"window": [-1, 1], "pad_to_multiple": 16})
    prepared = prepare(image, None, card)
    assert prepared.shape == (32, 48, 48) and prepared.pad == ((6, 6), (5, 6), (1, 2))
    windowed = (np.clip(image, -1, 1) + 1) / 2
    np.testing.assert_allclose(prepared.to_scan(batch(prepared.data))[0, 0].numpy(), windowed, atol=1e-6)
    assert prepared.data[0].max() == 0 and prepared.data[:, :, 0].max() == 0  # constant padding with 0
    edge = prepare(image, None, ModelCard(spatial_dims=3, preprocess={"pad_to_multiple": [1, 8, 8],
                                                                      "pad_mode": "edge"}))
    assert edge.shape == (20, 40, 48)
    np.testing.assert_array_equal(edge.data[:, 0], edge.data[:, 1])
    # scan voxel (0, 0, 0) is model voxel (6, 5, 1): the gradient of that scan voxel is one-hot there
    y = torch.zeros((1, 1, *prepared.shape), requires_grad=True)
    prepared.to_scan(y)[0, 0, 0, 0, 0].backward()
    assert y.grad is not None
    assert y.grad.count_nonzero() == 1 and y.grad[0, 0, 6, 5, 1] == 1
    # what lies on the padding is cropped away: it never reaches the scan
    on_padding = torch.ones((1, 1, *prepared.shape))
    on_padding[:, :, 6:26, 5:42, 1:46] = 0
    assert prepared.to_scan(on_padding).abs().max() == 0


# ------------------------------------------------------------------------------------------------ masks and indices


def test_mask_and_index_on_the_scan_line_up_with_the_model_grid_in_world_space() -> None:
    card = ModelCard(spatial_dims=3, spacing=(1.0, 1.0, 1.0), preprocess={"pad_to_multiple": 16})
    prepared = prepare(np.zeros(SHAPE, np.float32), ANISO, card)
    assert prepared.shape == (32, 32, 32) and prepared.geometry is not None
    mask = np.zeros(SHAPE, bool)
    mask[5:12, 10:40, 20:50] = True
    model_mask = prepared.to_model(batch(mask))[0, 0].numpy() >= 0.5
    assert model_mask.shape == prepared.shape
    assert not model_mask[:4].any() and not model_mask[-4:].any()  # padding is False
    volume = mask.sum() * np.prod(ANISO.spacing)
    assert abs(model_mask.sum() * np.prod(prepared.geometry.spacing) - volume) < 0.15 * volume
    centre_image = ANISO.index_to_world(np.argwhere(mask).mean(0))
    centre_model = prepared.geometry.index_to_world(np.argwhere(model_mask).mean(0))
    assert np.all(np.abs(centre_image - centre_model) <= 0.5)

    # a target at a scan voxel reads the model grid around that voxel's world position
    for index in [(0, 0, 0), (7, 31, 12), (19, 59, 59)]:
        y = torch.zeros((1, 1, *prepared.shape), requires_grad=True)
        prepared.to_scan(y)[(0, 0, *index)].backward()
        assert y.grad is not None
        grad = y.grad[0, 0].numpy()
        assert grad.min() >= 0 and abs(grad.sum() - 1) < 1e-6  # interpolation weights
        assert not grad[:4].any() and not grad[-4:].any()  # never the padding
        gap = np.abs(ANISO.index_to_world(np.array(index)) - world_centre(prepared.geometry, grad))
        assert np.all(gap <= 0.5 + 1e-6), (index, gap)  # within half a model voxel


def test_shape_errors() -> None:
    prepared = prepare(np.zeros((10, 12), np.float32), Geometry((1.0, 1.0), (0, 0)), ModelCard(spacing=(2.0, 2.0)))
    assert isinstance(prepared, Prepared)
    with pytest.raises(na.InputShapeError, match="spatial shape \\(5, 6\\) is not the scan's \\(10, 12\\)"):
        prepared.to_model(torch.zeros((1, 1, 5, 6)))
    with pytest.raises(na.InputShapeError, match="A 3D tensor does not fit the prepared grid \\(10, 12\\)"):
        prepared.to_scan(torch.zeros((1, 1, 5, 5, 6)))
    with pytest.raises(na.InputShapeError, match="spacing .* has 3 values but the image has 2 spatial axes"):
        prepare(np.zeros((10, 12), np.float32), Geometry((1.0, 1.0), (0, 0)), ModelCard(spacing=(1.0, 1.0, 1.0)))
    with pytest.raises(na.InputShapeError, match="geometry has 3"):
        prepare(np.zeros((1, 2, 2, 10, 12), np.float32), ANISO, ModelCard())
