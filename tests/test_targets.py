"""Targets own their place in the image: the part on one slice, the part inside a box (ROI), the slices needed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import napari_attribution as na
from napari_attribution import targets as T

ROI = (slice(0, 4), slice(3, 8), slice(2, 9))
ROI_2D = (slice(3, 8), slice(2, 9))


def volume_mask(dtype: Any = bool) -> np.ndarray:
    """A (4, 10, 10) mask that touches slices 1 and 3 (label 2 on slice 3, for int label maps)."""
    m = np.zeros((4, 10, 10), dtype)
    m[1, 5, 5] = 1
    m[3, 4:6, 3] = 2 if dtype is not bool else True
    return m


# ------------------------------------------------------------------------------------------------ on_slice


@pytest.mark.parametrize("dtype", [bool, np.int64])
def test_region_on_slice_is_the_masks_slice(dtype: Any) -> None:
    mask = volume_mask(dtype)
    part = T.Region(1, mask, "probability").on_slice(3)
    assert isinstance(part, T.Region) and (part.k, part.score) == (1, "probability")
    assert part.mask.dtype == mask.dtype  # an int label map stays one
    np.testing.assert_array_equal(part.mask, mask[3])


def test_error_region_on_slice_keeps_the_label_map_and_kind() -> None:
    truth = volume_mask(np.int64)
    part = T.ErrorRegion(2, truth, "fn", "logit").on_slice(3)
    assert isinstance(part, T.ErrorRegion) and (part.k, part.kind, part.score) == (2, "fn", "logit")
    assert part.truth_mask.dtype == np.int64 and part.truth_mask.max() == 2
    np.testing.assert_array_equal(part.truth_mask, truth[3])


def test_contrast_on_slice_slices_its_mask_and_keeps_the_predicted_region_without_one() -> None:
    mask = volume_mask()
    part = T.Contrast(1, 0, mask).on_slice(1)
    assert (part.k1, part.k2) == (1, 0)
    np.testing.assert_array_equal(part.mask, mask[1])
    bare = T.Contrast(1, 0)
    assert bare.on_slice(1) is bare


def test_voxel_on_slice_drops_the_slice_axis() -> None:
    assert T.Voxel(1, (2, 5, 6), "logit").on_slice(2) == T.Voxel(1, (5, 6), "logit")


@pytest.mark.parametrize("target", [T.Class(1), T.Predicted(1), 1, None])
def test_targets_without_a_mask_are_the_same_on_every_slice(target: Any) -> None:
    assert T.on_slice(target, 2) is target
    assert T.cropped(target, ROI) is target
    assert T.slices_needed(target, 4) is None


def test_module_functions_call_the_targets_methods() -> None:
    mask = volume_mask()
    np.testing.assert_array_equal(T.on_slice(T.Region(1, mask), 1).mask, mask[1])
    assert T.cropped(T.Voxel(1, (1, 5, 5)), ROI) == T.Voxel(1, (1, 2, 3))
    assert T.slices_needed(T.Region(1, mask), 4) == [1, 3]


# ------------------------------------------------------------------------------------------------ cropped


@pytest.mark.parametrize("dtype", [bool, np.int64])
def test_region_cropped_moves_the_mask_into_the_box(dtype: Any) -> None:
    mask = volume_mask(dtype)
    region = T.Region(1, mask).cropped(ROI)
    assert region.mask.shape == (4, 5, 7) and region.mask[1, 2, 3] and region.mask.dtype == mask.dtype
    np.testing.assert_array_equal(region.mask, mask[ROI])


def test_region_cropped_in_2d_and_a_mask_of_another_rank_is_left_as_it_is() -> None:
    mask = volume_mask()[1]
    np.testing.assert_array_equal(T.Region(1, mask).cropped(ROI_2D).mask, mask[ROI_2D])
    assert T.Region(1, mask).cropped(ROI).mask.shape == (10, 10)


def test_error_region_and_contrast_cropped() -> None:
    truth = volume_mask(np.int64)
    err = T.ErrorRegion(2, truth, "fn").cropped(ROI)
    assert err.kind == "fn" and err.truth_mask.dtype == np.int64
    np.testing.assert_array_equal(err.truth_mask, truth[ROI])
    mask = volume_mask()
    np.testing.assert_array_equal(T.Contrast(1, 0, mask).cropped(ROI).mask, mask[ROI])
    bare = T.Contrast(1, 0)
    assert bare.cropped(ROI) is bare


def test_voxel_cropped_shifts_its_index_in_2d_and_3d() -> None:
    assert T.Voxel(1, (1, 5, 5), "probability").cropped(ROI) == T.Voxel(1, (1, 2, 3), "probability")
    assert T.Voxel(0, (7, 8)).cropped(ROI_2D) == T.Voxel(0, (4, 6))


@pytest.mark.parametrize("index", [(1, 0, 0), (1, 8, 5), (1, 5, 9)])
def test_voxel_outside_the_box_is_a_target_error(index: tuple[int, ...]) -> None:
    with pytest.raises(na.TargetError, match=r"^The target point lies outside the box \(ROI\) to explain; "
                                             r"move the point or the box\.$"):
        T.Voxel(1, index).cropped(ROI)


# ------------------------------------------------------------------------------------------------ slices_needed


@pytest.mark.parametrize("dtype", [bool, np.int64])
def test_region_needs_the_slices_its_mask_touches(dtype: Any) -> None:
    mask = volume_mask(dtype)
    assert T.Region(1, mask).slices_needed(4) == [1, 3]
    assert T.Region(1, np.zeros((4, 10, 10), bool)).slices_needed(4) == []  # empty: the run explains every slice
    assert T.Region(1, mask).slices_needed(5) is None  # not a volume of this depth
    assert T.Region(1, mask[1]).slices_needed(10) is None  # a 2D mask


def test_voxel_needs_its_slice_and_masked_contrast_and_error_region_every_slice() -> None:
    assert T.Voxel(1, (2, 5, 6)).slices_needed(4) == [2]
    mask = volume_mask()
    assert T.Contrast(1, 0, mask).slices_needed(4) is None
    assert T.ErrorRegion(1, mask).slices_needed(4) is None


@pytest.mark.parametrize(("target", "found"), [
    (None, True), (1, True), (np.int64(1), True), (T.Predicted(1), True), (T.Contrast(1, 0), True),
    (T.Contrast(1, 0, volume_mask()), True), (T.ErrorRegion(1, volume_mask()), True),
    (T.Class(1), False), (T.Region(1, volume_mask()), False), (T.Voxel(1, (0, 1, 1)), False),
])
def test_found_per_slice(target: Any, found: bool) -> None:
    assert T.found_per_slice(target) is found
