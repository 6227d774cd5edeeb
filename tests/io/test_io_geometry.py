"""Geometry: validation, affine round trips, napari kwargs, slicing."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from _io_helpers import rotation

from napari_attribution.io import Geometry


def oblique_flipped() -> Geometry:
    """Oblique, anisotropic and flipped (determinant -1) 3-D geometry."""
    direction = rotation(0.3, -0.2, 0.5) @ np.diag([1.0, -1.0, 1.0])
    return Geometry(spacing=(3.0, 0.7, 0.9), origin=(10.5, -20.25, 5.0), direction=direction.tolist())


def napari_world(kwargs: dict, index: np.ndarray) -> np.ndarray:
    """napari's data -> world map for these layer kwargs: affine @ (rotate @ (scale * x) + translate)."""
    n = index.shape[-1]
    linear = np.asarray(kwargs.get("rotate", np.eye(n))) @ np.diag(kwargs["scale"])
    inner = index @ linear.T + np.asarray(kwargs["translate"])
    outer = np.asarray(kwargs.get("affine", np.eye(n + 1)))
    return inner @ outer[:n, :n].T + outer[:n, n]


def grid_corners(shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(list(itertools.product(*[(0, s - 1) for s in shape])), dtype=float)


def test_affine_layout_and_ndim() -> None:
    g = Geometry(spacing=(2.0, 0.5, 0.25), origin=(1.0, 2.0, 3.0))
    assert g.ndim == 3
    expected = np.array([[2.0, 0, 0, 1], [0, 0.5, 0, 2], [0, 0, 0.25, 3], [0, 0, 0, 1]])
    np.testing.assert_array_equal(g.affine(), expected)
    np.testing.assert_array_equal(g.index_to_world([1, 2, 4]), [3.0, 3.0, 4.0])


def test_oblique_flipped_round_trip() -> None:
    g = oblique_flipped()
    assert np.linalg.det(g.direction_matrix) < 0
    back = Geometry.from_affine(g.affine())
    np.testing.assert_allclose(back.spacing, g.spacing, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.origin, g.origin, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.direction_matrix, g.direction_matrix, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.affine(), g.affine(), rtol=0, atol=1e-12)


def test_from_affine_of_arbitrary_matrix_round_trips() -> None:
    affine = np.eye(4)
    affine[:3, :3] = rotation(-0.7, 0.1, 1.2) @ np.diag([1.2, -3.5, 0.8])
    affine[:3, 3] = [-90.0, 126.0, -72.0]
    g = Geometry.from_affine(affine)
    np.testing.assert_allclose(g.spacing, [1.2, 3.5, 0.8], atol=1e-12)
    np.testing.assert_allclose(g.affine(), affine, rtol=0, atol=1e-12)


def test_from_affine_identity_direction_is_none() -> None:
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    g = Geometry.from_affine(affine)
    assert g.direction is None
    assert g == Geometry((2.0, 3.0, 4.0), (0.0, 0.0, 0.0))


def test_explicit_identity_is_stored_as_none() -> None:
    assert Geometry((1.0, 1.0), (0.0, 0.0), direction=np.eye(2)).direction is None


def test_to_napari_identity_translate_is_zero_not_one() -> None:
    # napari-nninteractive's compute_affine defaults translate to np.ones: identity must be zeros
    kwargs = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)).to_napari()
    assert kwargs == {"scale": [1.0, 1.0, 1.0], "translate": [0.0, 0.0, 0.0]}


def test_to_napari_axis_aligned_is_scale_and_translate() -> None:
    g = Geometry(spacing=(2.5, 0.8, 0.8), origin=(-40.0, 12.0, 7.5))
    kwargs = g.to_napari()
    assert set(kwargs) == {"scale", "translate"}
    assert kwargs["scale"] == [2.5, 0.8, 0.8]
    assert kwargs["translate"] == [-40.0, 12.0, 7.5]


def test_to_napari_rotation_uses_rotate() -> None:
    g = Geometry(spacing=(2.0, 1.0, 0.5), origin=(1.0, -2.0, 3.0), direction=rotation(0.4, 0.2, -0.3).tolist())
    kwargs = g.to_napari()
    assert "rotate" in kwargs and "affine" not in kwargs
    corners = grid_corners((5, 6, 7))
    np.testing.assert_allclose(napari_world(kwargs, corners), g.index_to_world(corners), atol=1e-12)


def test_to_napari_flip_uses_affine() -> None:
    g = oblique_flipped()
    kwargs = g.to_napari()
    assert "affine" in kwargs and "rotate" not in kwargs
    assert kwargs["scale"] == list(g.spacing)
    corners = grid_corners((4, 9, 11))
    np.testing.assert_allclose(napari_world(kwargs, corners), g.index_to_world(corners), atol=1e-12)


def test_to_napari_2d() -> None:
    g = Geometry(spacing=(0.5, 0.25), origin=(0.0, 0.0))
    assert g.to_napari() == {"scale": [0.5, 0.25], "translate": [0.0, 0.0]}
    flipped = Geometry(spacing=(0.5, 0.25), origin=(3.0, 4.0), direction=[[-1.0, 0.0], [0.0, 1.0]])
    corners = grid_corners((8, 9))
    np.testing.assert_allclose(napari_world(flipped.to_napari(), corners), flipped.index_to_world(corners))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing": (1.0, 1.0), "origin": (0.0, 0.0, 0.0)}, "origin has 3 values"),
        ({"spacing": (1.0, 0.0), "origin": (0.0, 0.0)}, "positive"),
        ({"spacing": (1.0, -2.0), "origin": (0.0, 0.0)}, "positive"),
        ({"spacing": (1.0, float("nan")), "origin": (0.0, 0.0)}, "finite"),
        ({"spacing": (), "origin": ()}, "non-empty"),
        ({"spacing": (1.0, 1.0), "origin": (0.0, 0.0), "direction": np.eye(3)}, "2 x 2"),
        ({"spacing": (1.0, 1.0), "origin": (0.0, 0.0), "direction": [[2.0, 0.0], [0.0, 1.0]]}, "unit vectors"),
        ({"spacing": (1.0, 1.0), "origin": (0.0, 0.0), "direction": [[0.5, 0.0], [0.0, 1.0]]}, "unit vectors"),
        ({"spacing": (1.0, 1.0), "origin": (0.0, 0.0), "direction": [[1.0, 1.0], [0.0, 1e-9]]}, "singular"),
        ({"spacing": "ab", "origin": (0.0, 0.0)}, "numbers"),
    ],
)
def test_invalid_geometry_raises_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Geometry(**kwargs)


@pytest.mark.parametrize(
    "affine",
    [np.eye(3)[:2], np.diag([1.0, 0.0, 1.0]), np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 1.0]])],
)
def test_invalid_affine_raises_value_error(affine: np.ndarray) -> None:
    with pytest.raises(ValueError):
        Geometry.from_affine(affine)


def test_frozen_hashable_and_plain_floats() -> None:
    g = Geometry(spacing=np.array([1, 2, 3]), origin=[0, 0, 0])
    assert g.spacing == (1.0, 2.0, 3.0) and all(type(v) is float for v in g.spacing)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.spacing = (1.0, 1.0, 1.0)  # type: ignore[misc]
    assert hash(g) == hash(Geometry((1.0, 2.0, 3.0), (0.0, 0.0, 0.0)))


def test_slice_axis_aligned_is_exact() -> None:
    g = Geometry(spacing=(2.0, 0.5, 0.7), origin=(1.0, 2.0, 3.0))
    s = g.slice(0)
    assert s == Geometry(spacing=(0.5, 0.7), origin=(2.0, 3.0))
    assert g.slice(axis=-1) == Geometry(spacing=(2.0, 0.5), origin=(1.0, 2.0))
    moved = g.slice(0, index=4)
    assert moved.origin == (2.0, 3.0)


def test_slice_of_flipped_volume_matches_3d_positions() -> None:
    direction = np.diag([1.0, -1.0, -1.0])  # (S, A, R) world of an axial DICOM slice
    g = Geometry(spacing=(5.0, 0.66, 0.66), origin=(-75.0, 179.0, 158.0), direction=direction.tolist())
    s = g.slice(0)
    points = np.array([[0, 0], [3, 7], [127, 127]], dtype=float)
    full = g.index_to_world(np.column_stack([np.zeros(3), points]))
    np.testing.assert_allclose(s.index_to_world(points), full[:, 1:], atol=1e-12)


def test_slice_rejects_bad_axis() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)).slice(3)
    with pytest.raises(ValueError):
        Geometry((1.0,), (0.0,)).slice(0)
