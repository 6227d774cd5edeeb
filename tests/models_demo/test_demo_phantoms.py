"""The phantom generators: deterministic per seed; evidence masks are exactly where the phases differ."""

from __future__ import annotations

import numpy as np
import pytest

from napari_attribution.models.demo import (
    EVIDENCE_STRUCTURES,
    STRUCTURES,
    abdomen_batch,
    abdomen_phantom,
    lesion_phantom,
    vessel_phantom,
)


@pytest.mark.parametrize("dims,shape", [(2, (96, 96)), (3, (24, 48, 48))])
def test_abdomen_deterministic(dims, shape):
    a, b = abdomen_phantom(3, dims=dims), abdomen_phantom(3, dims=dims)
    assert a.image.shape == shape and a.image.dtype == np.float32
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.label == b.label
    assert not np.array_equal(a.image, abdomen_phantom(4, dims=dims).image)
    x1, y1, m1 = abdomen_batch(11, 6, dims=dims)
    x2, y2, m2 = abdomen_batch(11, 6, dims=dims)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert sorted(y1.tolist()) == [0, 0, 1, 1, 2, 2] and x1.shape == (6, 1, *shape) and m1.shape == (6, *shape)


@pytest.mark.parametrize("dims", [2, 3])
def test_phases_differ_only_inside_the_evidence_mask(dims):
    for seed in range(3):
        cases = [abdomen_phantom(seed, phase, dims=dims) for phase in range(3)]
        mask = cases[0].mask
        assert 0.03 < mask.mean() < 0.3
        for other in cases[1:]:
            np.testing.assert_array_equal(other.mask, mask)
            np.testing.assert_array_equal(other.structures, cases[0].structures)
            diff = other.image != cases[0].image
            assert not diff[~mask].any()  # nothing outside the evidence changes
            assert diff[mask].mean() == 1.0  # every evidence voxel changes
        np.testing.assert_array_equal(mask, np.isin(cases[0].structures, EVIDENCE_STRUCTURES))
        # the deciding vessel is the brightest in its phase: aorta arterial, portal vein portal-venous
        s = cases[0].structures
        for phase, code in ((1, 1), (2, 3)):
            if (s == code).any():
                assert cases[phase].image[s == code].mean() > cases[0].image[s == code].mean() + 60


def test_abdomen_structures_present_and_hu_plausible():
    case = abdomen_phantom(0, 0)
    present = set(np.unique(case.structures).tolist()) - {0}
    assert {1, 2, 4, 7, 10, 11} <= present <= set(STRUCTURES)
    # the portal vein lies in most 2D slices (out of plane in some, as in a real slab)
    assert np.mean([(abdomen_phantom(s, 0).structures == 3).any() for s in range(20)]) > 0.6
    assert case.image[case.structures == 0].mean() < -900  # air
    assert case.image[case.structures == 7].mean() > 150  # bone


def test_abdomen_rejects_bad_arguments():
    with pytest.raises(ValueError):
        abdomen_phantom(0, 3)
    with pytest.raises(ValueError):
        abdomen_phantom(0, dims=4)


def test_vessel_phantom_deterministic_and_truth_is_bright():
    a, b = vessel_phantom(5), vessel_phantom(5)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.image.shape == (48, 48, 48) and a.label is None
    assert 0.2 > a.mask.mean() > 0.003
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    assert a.image[a.mask].mean() > a.image[~a.mask].mean() + 0.2
    assert not np.array_equal(a.mask, vessel_phantom(6).mask)


def test_lesion_phantom_matches_the_original_demo():
    from napari_attribution import _demo

    vol, mask = _demo.phantom(np.random.default_rng(1), True)
    case = lesion_phantom(np.random.default_rng(1), True)
    np.testing.assert_array_equal(case.image, vol)
    np.testing.assert_array_equal(case.mask, mask)
    assert case.label == 1 and case.mask.any()
