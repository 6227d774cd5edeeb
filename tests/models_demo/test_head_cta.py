"""The demo's big scan (a head CT angiogram of clinical size) and the demo's vessel segmenter ``demo:vessel-cta``
with its sliding-window card: it segments the vessels of a held-out scan and leaves the skull alone, where
``demo:vessel-seg`` (trained on MRA-like volumes without bone) labels the skull vessel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_attribution.io import Geometry
from napari_attribution.models import LoadedModel
from napari_attribution.models.demo import (
    CTA_INFERER,
    CTA_WINDOW,
    demo_metrics,
    get_demo,
    head_cta_phantom,
    vessel_cta_model,
)
from napari_attribution.models.demo.phantoms import HEAD_CTA_SPACING, VESSEL_SHAPE, VESSEL_SPACING
from napari_attribution.models.demo.training import CTA_TRAIN_OFFSET, dice
from napari_attribution.pipeline import network_on_scan

#: a head CTA phantom no model saw in training (training: seeds 100-107; held-out metrics: 10000-10002 and 7)
TEST_SEED = 31_337
#: a block of it with skull, brain and vessels: 58 x 96 x 72 voxels (29 x 67 x 50 mm) at the skull's side
CROP = (slice(20, 78), slice(64, 160), slice(24, 96))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    assert card.name == "demo:vessel-cta" and card.task == "segmentation" and card.default_layer == "dec1"
    assert card.spacing == VESSEL_SPACING and card.patch_size == VESSEL_SHAPE
    assert card.inferer is not None and list(card.inferer["roi_size"]) == list(VESSEL_SHAPE)
    assert card.inferer["type"] == "sliding_window" and card.inferer["overlap"] == CTA_INFERER["overlap"] == 0.25
    assert card.inferer["mode"] == "gaussian"
    assert card.preprocess is not None and list(card.preprocess["window"]) == list(CTA_WINDOW)
    # the window keeps bone (550-1100 HU) apart from contrast (330-400 HU): both would be 1 if it clipped them alike
    lo, hi = CTA_WINDOW
    assert (400 - lo) / (hi - lo) < 0.9 and 550 >= hi
    # vessel-seg's architecture with weights of its own (fine-tuned from vessel-seg's)
    assert type(loaded.module) is type(plain.module)
    own, base = loaded.module.state_dict(), plain.module.state_dict()
    assert own.keys() == base.keys() and any(not torch.equal(own[k], base[k]) for k in own)
    # its stored metrics: whole held-out scans from seeds it never trained on
    metrics = demo_metrics("vessel-cta")
    train = set(metrics["train_seeds"])
    assert train == {CTA_TRAIN_OFFSET + i for i in range(metrics["pool"])}
    assert not train & {int(s) for s in metrics["per_seed"]} and "7" in metrics["per_seed"]


def _predict(model: LoadedModel, image: np.ndarray) -> np.ndarray:
    geometry = Geometry(spacing=HEAD_CTA_SPACING, origin=(0.0, 0.0, 0.0))
    with torch.no_grad():
        out = network_on_scan(model, image, geometry, lambda net, x: net(x))
    pred: np.ndarray = out[0].argmax(0).numpy() == 1
    return pred


def test_vessel_cta_segments_a_held_out_scan_and_leaves_the_skull_alone() -> None:
    """Over the whole block (skull, brain, vessels; no intracranial mask), the demo model's vessels match the
    truth and almost no skull voxel is labelled vessel; the MRA-trained vessel-seg, same card, labels most of the
    skull vessel (so the skull part of this test can fail)."""
    case = head_cta_phantom(TEST_SEED)
    assert case.structures is not None
    image, truth, skull = case.image[CROP], case.mask[CROP], case.structures[CROP] == 2
    assert truth.sum() > 1000 and skull.sum() > 10_000  # the block holds both
    cta = vessel_cta_model()
    pred = _predict(cta, image)
    print(f"vessel-cta: Dice {dice(pred, truth):.3f} over the block, skull labelled vessel {pred[skull].mean():.2%}")
    # higher is better, 1 = the truth; 0.71 measured (whole held-out scans: 0.82-0.85, docs/demo-models.md): the
    # block's cut faces leave the vessels crossing them without context
    assert dice(pred, truth) >= 0.65
    assert pred[skull].mean() < 0.01
    mra = LoadedModel(module=get_demo("vessel-seg").module, card=dataclasses.replace(cta.card, name="mra"))
    before = _predict(mra, image)
    print(f"vessel-seg, same card: Dice {dice(before, truth):.3f}, skull labelled vessel {before[skull].mean():.0%}")
    assert before[skull].mean() > 0.5
