"""Seed 004 (VEBI, Oramas et al.): the scores of the validation report's section against hand-worked values, and
the directions the report measures, pinned on a small fixed-seed case with the section's own code
(``benchmarks/validation/seed004.py``): VEBI covers the evidence mask far above chance, better than Grad-CAM and
worse than guided backprop on the 2D contrast-phase task; the stride fix lowers its checkerboard score and costs
a little coverage."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from validation.seed004 import (  # noqa: E402
    chance_iou,
    checkerboard,
    energy_in_mask,
    measure,
    threshold_iou,
    topk_iou,
)

# ------------------------------------------------------------------------------------------------ the scores


def test_topk_iou_of_the_mask_itself_is_one_and_of_its_complement_zero() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True  # 12 pixels
    assert topk_iou(mask.astype(float), mask) == 1.0
    assert topk_iou((~mask).astype(float), mask) == 0.0


def test_topk_iou_hand_worked() -> None:
    # mask = pixels 0..3 of 10; the map ranks pixels 2, 3, 4, 5 highest: 2 of the top 4 in the mask
    mask = np.zeros(10, bool)
    mask[:4] = True
    m = np.zeros(10)
    m[[2, 3, 4, 5]] = [4.0, 3.0, 2.0, 1.0]
    assert topk_iou(m, mask) == pytest.approx(2 / 6)


def test_chance_iou_is_the_mean_iou_of_random_maps() -> None:
    rng = np.random.default_rng(3)
    mask = np.zeros((40, 40), bool)
    mask[5:15, 5:21] = True  # q = 0.1
    ious = [topk_iou(rng.random(mask.shape), mask, tie_seed=i) for i in range(400)]
    assert chance_iou(mask) == pytest.approx(0.1 / 1.9)
    assert np.mean(ious) == pytest.approx(chance_iou(mask), abs=0.005)


def test_energy_in_mask_counts_the_positive_part_only() -> None:
    mask = np.array([True, True, False, False])
    m = np.array([3.0, -5.0, 1.0, 0.0])
    assert energy_in_mask(m, mask) == pytest.approx(3 / 4)
    assert np.isnan(energy_in_mask(-np.ones(4), mask))


def test_threshold_iou_hand_worked() -> None:
    mask = np.array([True, True, False, False])
    m = np.array([1.0, 0.5, 0.25, 0.0])
    # t = 0.1, 0.2: {0, 1, 2} -> 2/3; t = 0.3 .. 0.5: {0, 1} -> 1; t = 0.6 .. 0.9: {0} -> 1/2
    expected = (2 * (2 / 3) + 3 * 1.0 + 4 * 0.5) / 9
    assert threshold_iou(m, mask) == pytest.approx(expected)


def test_checkerboard_is_zero_without_the_stride_period_and_matches_the_toy_check() -> None:
    assert checkerboard(np.ones((16, 16)), (8, 8)) == 0.0
    ramp = np.add.outer(np.arange(64.0), np.arange(64.0)) + 10  # smooth: phase means differ by the ramp only
    assert checkerboard(ramp, (8, 8)) < 0.05
    # methods.md §A5.3's toy check: one 3x3, stride-2 convolution back-propagates a uniform seed as the
    # periodic pattern 4, 2, 2, 1 (coefficient of variation 0.485); with any multiple of the period, the same
    toy = np.tile(np.array([[4.0, 2.0], [2.0, 1.0]]), (8, 8))
    assert checkerboard(toy, (2, 2)) == pytest.approx(np.std([4, 2, 2, 1]) / np.mean([4, 2, 2, 1]))
    assert checkerboard(toy, (8, 8)) == pytest.approx(0.4843, abs=1e-4)
    assert checkerboard(np.tile(toy, (1, 1))[None].repeat(4, 0), (2, 2, 2)) == pytest.approx(0.4843, abs=1e-4)
    with pytest.raises(ValueError):
        checkerboard(toy, (2, 2, 2))


# ------------------------------------------------------------------------------------------------ directions


@pytest.fixture(scope="module")
def small() -> dict:
    torch.set_num_threads(1)
    # interpretation fitted on 12 phantoms, 6 test phantoms (2 per phase), the report's seed streams
    return measure(None, "contrast-phase", n_fit=12, n_test=6, seed=0)


def test_vebi_covers_the_evidence_far_above_chance(small: dict) -> None:
    vebi = np.asarray(small["scores"]["vebi"]["iou"])
    chance = np.asarray(small["chance"]["iou"])
    assert np.all(vebi > 3 * chance)
    energy = np.asarray(small["scores"]["vebi"]["energy"])
    assert np.all(energy > 2 * np.asarray(small["chance"]["energy"]))


def test_vebi_covers_less_than_guided_backprop_and_more_than_grad_cam_in_2d(small: dict) -> None:
    sc = small["scores"]
    vebi, gbp, gcam = (np.asarray(sc[m]["iou"]) for m in ("vebi", "guided_backprop", "grad_cam"))
    # the report (60 cases): guided backprop higher on 59 of 60 in 2D, Grad-CAM lower on most
    assert vebi.mean() < gbp.mean()
    assert (vebi < gbp).sum() >= 5
    assert vebi.mean() > gcam.mean()


def test_the_stride_fix_lowers_the_checkerboard_and_costs_a_little_coverage(small: dict) -> None:
    sc = small["scores"]
    fix, nofix = np.asarray(sc["vebi"]["checker"]), np.asarray(sc["vebi_nofix"]["checker"])
    assert np.all(fix < nofix)
    assert fix.mean() < 0.5 * nofix.mean()
    assert np.mean(sc["vebi"]["iou"]) < np.mean(sc["vebi_nofix"]["iou"])
