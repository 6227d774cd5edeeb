"""The demo's big scan (a head CT angiogram of clinical size) and the sliding-window card of the vessel segmenter
that reads it."""

from __future__ import annotations

import numpy as np

from napari_attribution.models.demo import CTA_WINDOW, get_demo, head_cta_phantom, vessel_cta_model
from napari_attribution.models.demo.phantoms import HEAD_CTA_SPACING, VESSEL_SHAPE, VESSEL_SPACING


def test_the_head_cta_is_clinical_size_seeded_and_its_vessels_are_where_the_truth_says() -> None:
    a, b = head_cta_phantom(3), head_cta_phantom(3)
    assert a.image.shape == (100, 256, 256) and a.image.dtype == np.float32 and a.spacing == HEAD_CTA_SPACING
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, head_cta_phantom(4).mask)
    s = a.structures
    assert s is not None and np.array_equal(s == 6, a.mask)
    assert 0.001 < a.mask.mean() < 0.01  # thin vessels: a small share of the scan
    # HU: air, bone, brain and the contrast-filled vessels (their cores: voxels whose 6 neighbours are vessel too)
    assert np.median(a.image[s == 0]) < -950 and np.median(a.image[s == 2]) > 500
    assert 25 < np.median(a.image[s == 3]) < 50
    core = a.mask.copy()
    for axis in range(3):
        core &= np.roll(a.mask, 1, axis) & np.roll(a.mask, -1, axis)
    assert 300 < np.median(a.image[core]) < 420
    # the vessels lie inside the skull (grey / white matter voxels around them), never in bone or air
    grown = a.mask | np.roll(a.mask, 1, 1) | np.roll(a.mask, -1, 1)
    assert set(np.unique(s[grown])) <= {3, 4, 5, 6}


def test_the_cta_card_windows_resamples_and_slides_over_the_training_shape() -> None:
    loaded, plain = vessel_cta_model(), get_demo("vessel-seg")
    card = loaded.card
    assert card.spacing == VESSEL_SPACING and card.patch_size == VESSEL_SHAPE
    assert card.inferer is not None and list(card.inferer["roi_size"]) == list(VESSEL_SHAPE)
    assert card.inferer["type"] == "sliding_window" and card.inferer["overlap"] == 0.25
    assert card.inferer["mode"] == "gaussian"
    assert card.preprocess is not None and list(card.preprocess["window"]) == list(CTA_WINDOW)
    # the same weights as the bundled model
    for (k, v), (k2, v2) in zip(loaded.module.state_dict().items(), plain.module.state_dict().items(), strict=True):
        assert k == k2 and np.array_equal(v.numpy(), v2.numpy())
