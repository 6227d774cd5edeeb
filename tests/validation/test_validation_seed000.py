"""Seed 000's section of the validation report (``benchmarks/validation/seed000.py``): the directions it measured
that a few seconds can check, with the report's own functions.

Training the report's two networks takes minutes (a few dozen iterations leave them at chance accuracy), so the
depth comparison of *trained* max-pool networks is not re-run here. What is pinned: the landmark scores against a
hand count; the deconvnet map of a network without max-pooling is one fixed pattern whatever the image (the
report's reason for scoring the shipped demo network as a control only), max-pool switches make it depend on the
image; the architecture-only directions of the untrained networks (the shallow map above an even map, the deep
one below the shallow one); and, for the one trained network cheap enough for a test (the shipped
``demo:contrast-phase``), that its back-projection puts more energy on the phase landmarks than an even map over
the body, as the report measures on all 30 slices.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

torch = pytest.importorskip("torch")

from validation import seed000 as s0  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def slices():
    """Six held-out slices of the report (two per phase), with their landmarks."""
    return [s0.case_phantom(0, i) for i in range(6)]


def test_landmark_scores_match_a_hand_count():
    structures = np.zeros((4, 4), np.int16)
    structures[0, :2] = 1  # aorta (a phase landmark)
    structures[1, :2] = 7  # spine (a distractor)
    structures[2:, :] = 11  # soft tissue
    heat = np.zeros((4, 4))
    heat[0, 0], heat[1, 1], heat[3, 3] = 3.0, 1.0, -5.0
    s = s0.landmark_scores(heat, structures, (1.0, 1.0))
    assert s["evidence"] == pytest.approx(0.75) and s["distractors"] == pytest.approx(0.25)
    assert s["hit"] == 1.0 and s["peak_label"] == 1
    assert s["chance_body"] == pytest.approx(2 / 12) and s["chance_image"] == pytest.approx(2 / 16)


def test_without_max_pool_the_deconvnet_map_is_one_pattern_whatever_the_image(slices):
    # strided convolutions and ReLUs only: the deconvnet's backward pass never looks at the image, except where the
    # HU window clamps; so two slices of one phase give the same map up to scale
    assert s0.same_class_correlation(s0.shipped_net(), slices) > 0.9999


def test_max_pool_switches_make_the_map_depend_on_the_image(slices):
    for name in s0.DEPTHS:
        assert s0.same_class_correlation(s0.untrained_net(name, 0), slices) < 0.99


def test_architecture_alone_directions_of_the_untrained_networks(slices):
    # the report measures, before any training: the shallow map above an even map over the body, the deep map
    # below the shallow one (first replicate's initialisation, the report's slices)
    shallow = [s0.score_case(s0.untrained_net("shallow", 0), c) for c in slices]
    deep = [s0.score_case(s0.untrained_net("deep", 0), c) for c in slices]
    chance = np.array([r["chance_body"] for r in shallow])
    ev_shallow = np.array([r["evidence"] for r in shallow])
    ev_deep = np.array([r["evidence"] for r in deep])
    assert (ev_shallow > chance).sum() >= 5
    assert (ev_deep < ev_shallow).sum() >= 5


def test_a_trained_network_back_projects_more_onto_the_landmarks_than_an_even_map(slices):
    net = s0.shipped_net()
    rows = [s0.score_case(net, c) for c in slices]
    assert all(r["correct"] == 1.0 for r in rows)  # a trained network: it gets the six phases right
    share = np.array([r["evidence"] for r in rows])
    assert (share > np.array([r["chance_body"] for r in rows])).all()
    assert (share > np.array([r["chance_image"] for r in rows])).all()
