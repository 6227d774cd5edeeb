"""Metrics: analytic cases where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import MODELS, image
from torch import nn

import napari_attribution as na


class Quadrant(nn.Module):
    """Class 1's logit is driven by the top-left 8x8 quadrant's mean intensity only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x[:, 0, :8, :8].mean((1, 2)) * 6 - 3
        return torch.stack([torch.zeros_like(q), q], 1)


IMG = np.ones((16, 16), np.float32)
MASK = np.zeros((16, 16), bool)
MASK[:8, :8] = True


def test_localisation_metrics() -> None:
    good = MASK.astype(np.float32) + 0.01 * np.arange(256).reshape(16, 16) / 256
    bad = 1 - good
    e_good = na.evaluate(Quadrant(), IMG, good, "energy_in_mask", mask=MASK)
    e_bad = na.evaluate(Quadrant(), IMG, bad, "energy_in_mask", mask=MASK)
    assert e_good.value > 0.97 and e_bad.value < 0.01 and e_good.higher_is_better
    assert e_good.details["chance"] == pytest.approx(0.25)
    assert na.evaluate(Quadrant(), IMG, good, "pointing_game", mask=MASK).value == 1.0
    miss = np.zeros((16, 16), np.float32)
    miss[15, 15] = 1
    pg = na.evaluate(Quadrant(), IMG, miss, "pointing_game", mask=MASK, tolerance_mm=5.0)
    assert pg.value == 0.0 and pg.details["distance_mm"] == pytest.approx(np.hypot(8, 8))
    near = np.zeros((16, 16), np.float32)
    near[10, 5] = 1  # 3 voxels below the mask: a hit at 5 mm with 1 mm voxels, a miss with 2 mm voxels
    assert na.evaluate(Quadrant(), IMG, near, "pointing_game", mask=MASK).value == 1.0
    from napari_attribution.io import Geometry

    geo = Geometry(spacing=(2.0, 2.0), origin=(0.0, 0.0))
    assert na.evaluate(Quadrant(), IMG, near, "pointing_game", mask=MASK, geometry=geo).value == 0.0
    iou = na.evaluate(Quadrant(), IMG, good, "topk_iou", mask=MASK)
    assert iou.value == pytest.approx(1.0) and iou.details["sweep"][0.01] < 0.1
    with pytest.raises(na.ParameterError, match="mask"):
        na.evaluate(Quadrant(), IMG, good, "energy_in_mask")


def test_deletion_and_insertion_rank_a_faithful_map_above_its_inverse() -> None:
    good = MASK.astype(np.float32) + 0.001 * np.random.default_rng(0).random((16, 16)).astype(np.float32)
    bad = -good
    d_good = na.evaluate(Quadrant(), IMG, good, "deletion", target=1, baseline=0.0, steps=16)
    d_bad = na.evaluate(Quadrant(), IMG, bad, "deletion", target=1, baseline=0.0, steps=16)
    assert d_good.value < d_bad.value and not d_good.higher_is_better
    curve = d_good.details["curve"]
    assert len(curve) == 17 and curve[0] == pytest.approx(1 / (1 + np.exp(-3)), rel=1e-5)
    # 16 voxels a step, the quadrant's first: half of it gone -> mean 0.5, logit 0; all of it -> logit -3
    assert curve[2] == pytest.approx(0.5, rel=1e-5)
    assert curve[4] == pytest.approx(1 / (1 + np.exp(3)), rel=1e-5)
    i_good = na.evaluate(Quadrant(), IMG, good, "insertion", target=1, steps=16, blur_mm=2.0)
    i_bad = na.evaluate(Quadrant(), IMG, bad, "insertion", target=1, steps=16, blur_mm=2.0)
    assert i_good.value >= i_bad.value


def test_infidelity_is_zero_for_the_exact_linear_attribution() -> None:
    """For a linear score T(x) = <w, x>, the gradient is exact: sum I*w = T(x) - T(x - I)."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    img = image((8, 8))
    sal = na.explain(lin, img, "input_x_gradient", 1)
    grad = sal.data / np.where(img == 0, 1, img)
    exact = na.evaluate(lin, img, grad, "infidelity", target=1, normalize=False)
    noisy = na.evaluate(lin, img, grad + np.random.default_rng(0).normal(0, 1, grad.shape), "infidelity",
                        target=1, normalize=False)
    assert exact.value < 1e-8 < noisy.value


def test_randomisation_separates_model_dependent_from_edge_detector_like_maps() -> None:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gc = na.explain(model, img, "grad_cam", 1, layer="features")
    score = na.evaluate(model, img, gc, "randomisation", max_layers=3)
    assert len(score.details["per_layer"]) == 3 and -1 <= score.value <= 1
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k])
    with pytest.raises(na.ParameterError, match="Attribution"):
        na.evaluate(model, img, gc.data, "randomisation")


def test_max_sensitivity_zero_for_a_constant_map_method() -> None:
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    img = image((8, 8))
    sal = na.explain(lin, img, "saliency", 1)  # a linear model's gradient does not depend on x
    s = na.evaluate(lin, img, sal, "max_sensitivity", samples=3)
    assert s.value < 1e-6


def test_specificity_of_a_map_that_flags_the_used_quadrant() -> None:
    good = MASK.astype(np.float32)
    bad = 1 - good
    s_good = na.evaluate(Quadrant(), IMG * 0.5, good, "specificity", target=1, block=4, q=0.25, baseline=0.0,
                         score="probability")
    s_bad = na.evaluate(Quadrant(), IMG * 0.5, bad, "specificity", target=1, block=4, q=0.25, baseline=0.0,
                        score="probability")
    assert s_good.details["used_blocks"] == 4
    assert s_good.value == 1.0 and s_good.details["sensitivity"] == 1.0
    assert s_bad.value < s_good.value


def test_agreement_matrix() -> None:
    make, shape = MODELS["cnn3d"]
    res = na.compare(make(), image(shape), ["saliency", "input_x_gradient", "grad_cam"], 1, layer="features")
    ag = na.agreement(res)
    assert ag["methods"] == ["saliency", "input_x_gradient", "grad_cam"]
    rho, ov = ag["spearman"], ag["topk_overlap"]
    assert rho.shape == ov.shape == (3, 3) and np.allclose(np.diag(rho), 1) and np.allclose(rho, rho.T)
    assert ((ov >= 0) & (ov <= 1)).all() and set(ag["seconds"]) == set(res)
    same = na.agreement({"a": res["saliency"], "b": res["saliency"]})
    assert same["spearman"][0, 1] == pytest.approx(1.0) and same["topk_overlap"][0, 1] == pytest.approx(1.0)


def test_unknown_metric() -> None:
    with pytest.raises(na.ParameterError, match="Unknown metric"):
        na.evaluate(Quadrant(), IMG, MASK.astype(np.float32), "auc")
