"""Deletion and insertion on segmenters: region-aware units (blocks of a few mm ranked by the map's mean, whole
blocks removed or restored, random orders of the same blocks), the fills that match the modality, and the noise
band of the random orders. On the demo vessel segmenter and on a MONAI UNet trained on a phantom, the known
evidence as the map beats a random map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import Classifier
from _seg_phantom import phantom, trained_unet
from scipy.ndimage import gaussian_filter
from scipy.stats import t as student_t
from torch import nn

import napari_attribution as na
from napari_attribution.metrics.faithfulness import (
    deletion_fill_value,
    in_hu,
    modality_of,
    mri_background,
)
from napari_attribution.runs.checks import verdict
from napari_attribution.targets import Predicted, Region

# ------------------------------------------------------------------------------------------------ the maths


def _identity_segmenter() -> nn.Module:
    """Logits (-x, x) per pixel: the probability of class 1 is sigmoid(2 x)."""
    net = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1))
        net.bias.zero_()
    return net.eval()


def _score(image: np.ndarray, region: np.ndarray) -> float:
    return float((1 / (1 + np.exp(-2 * image.astype(np.float64))))[region].mean())


def _blocks(shape: tuple[int, int], b: int) -> list[tuple[slice, slice]]:
    return [(slice(i, i + b), slice(j, j + b)) for i in range(0, shape[0], b) for j in range(0, shape[1], b)]


def test_region_units_remove_whole_blocks_in_the_maps_order_and_random_orders_of_the_same_blocks() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(0, 1, (12, 12)).astype(np.float32)
    region = np.zeros((12, 12), bool)
    region[2:10, 3:11] = True
    blocks = _blocks((12, 12), 3)  # 3 mm at 1 mm per pixel: 16 blocks of 3 x 3
    # a map whose block means rank the blocks in a known order, with noise inside each block
    rank = rng.permutation(len(blocks))
    amap = rng.normal(0, 0.01, (12, 12)).astype(np.float32)
    for b, sl in zip(rank, blocks, strict=True):
        amap[sl] += float(b)
    net = _identity_segmenter()
    s = na.evaluate(net, image, amap, "deletion", target=Region(1, region), steps=16, baseline="blur", blur_mm=2.0,
                    block_mm=3.0, random_orders=3, seed=5, geometry=na.Geometry(spacing=(1.0, 1.0), origin=(0.0, 0.0)))
    d = s.details
    assert d["unit"] == "region" and d["block"] == (3, 3) and d["units"] == 16 and d["fill"] == "blurred copy"
    fill = gaussian_filter(image, 2.0)

    def curve(order: list[int]) -> np.ndarray:
        out = []
        for k in range(17):
            img = image.copy()
            for b in order[:k]:
                img[blocks[b]] = fill[blocks[b]]
            out.append(_score(img, region))
        return np.array(out)

    mine = curve(list(np.argsort(rank)[::-1]))  # the block with the highest mean first
    np.testing.assert_allclose(d["curve"], mine, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d["fraction"], np.arange(17) / 16)
    assert s.value == pytest.approx((mine.sum() - mine[0] / 2 - mine[-1] / 2) / 16, rel=1e-6)
    # the random orders: permutations of the same 16 blocks, from one generator seeded with `seed`
    gen = np.random.default_rng(5)
    randoms = []
    for _ in range(3):
        order = list(np.concatenate([gen.permutation(np.arange(16)), gen.permutation(np.arange(0))]).astype(int))
        randoms.append(curve(order))
    np.testing.assert_allclose(d["random_curve"], np.mean(randoms, axis=0), rtol=1e-5, atol=1e-6)
    aucs = [(c.sum() - c[0] / 2 - c[-1] / 2) / 16 for c in randoms]
    np.testing.assert_allclose(d["random_aucs"], aucs, rtol=1e-5)
    assert d["random_auc"] == pytest.approx(np.mean(aucs), rel=1e-6)
    band = student_t.ppf(0.975, 2) * np.std(aucs, ddof=1) * np.sqrt(1 + 1 / 3)  # 95 % prediction interval
    assert d["random_band"] == pytest.approx(band, rel=1e-5) and d["random_orders"] == 3


def test_blocks_follow_the_spacing_and_unexplained_blocks_go_last() -> None:
    image = np.random.default_rng(0).normal(0, 1, (12, 12)).astype(np.float32)
    region = np.ones((12, 12), bool)
    amap = np.full((12, 12), np.nan, np.float32)
    amap[:6, :] = 1.0  # only the top half explained
    s = na.evaluate(_identity_segmenter(), image, amap, "insertion", target=Region(1, region), steps=4,
                    baseline="blur", block_mm=(3.0, 1.5), random_orders=2,
                    geometry=na.Geometry(spacing=(1.5, 0.5), origin=(0.0, 0.0)))
    # 3 mm at 1.5 mm is 2 rows, 1.5 mm at 0.5 mm is 3 columns: 6 x 4 blocks, the top 3 x 4 explained
    assert s.details["block"] == (2, 3) and s.details["units"] == 24
    # halfway, both the map's order and every random order have restored exactly the explained half
    top = gaussian_filter(image, (5.0 / 1.5, 5.0 / 0.5))
    top[:6] = image[:6]
    assert s.details["curve"][2] == pytest.approx(_score(top, region), rel=1e-5)
    assert s.details["random_curve"][2] == pytest.approx(_score(top, region), rel=1e-5)


# ------------------------------------------------------------------------------------------------ units and fills


def test_the_unit_and_the_fill_follow_the_task_and_the_modality() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    ct = (rng.normal(40, 30, (16, 16)) + np.where(rng.random((16, 16)) < 0.3, -1040, 0)).astype(np.float32)
    assert in_hu(ct) and modality_of(ct) == ("CT", "the scan's values are in HU")
    classifier = Classifier(d=2, classes=2).eval()
    amap = rng.random((16, 16)).astype(np.float32)
    c = na.evaluate(classifier, ct, amap, "deletion", target=1, steps=4, random_orders=2)
    assert c.details["unit"] == "voxel" and c.details["units"] == 256
    assert c.details["fill"] == "CT air (-1000 HU)" and c.details["modality"] == "CT"
    # the fill: -1000 HU, not the scan's minimum (the curve's last point is the all-air image)
    air = np.full_like(ct, -1000.0)
    ref = na.evaluate(classifier, ct, amap, "deletion", target=1, steps=4, baseline=-1000.0, reference=False)
    np.testing.assert_allclose(c.details["curve"], ref.details["curve"])
    assert not np.allclose(deletion_fill_value(ct, "min")[0], air)

    seg = _identity_segmenter()
    image = rng.normal(0, 1, (12, 12)).astype(np.float32)  # the region: the positive pixels
    s = na.evaluate(seg, image, amap[:12, :12], "deletion", target=Predicted(1), steps=4, random_orders=2)
    assert s.details["unit"] == "region" and s.details["fill"] == "blurred copy" and s.details["modality"] == "MRI"
    v = na.evaluate(seg, image, amap[:12, :12], "deletion", target=Predicted(1), steps=4, random_orders=2,
                    unit="voxel")  # the voxel-wise mode stays an option
    assert v.details["unit"] == "voxel" and v.details["units"] == 144 and v.details["block"] == (1, 1)
    with pytest.raises(na.ParameterError, match="unit must be"):
        na.evaluate(seg, image, amap[:12, :12], "deletion", target=Predicted(1), unit="superpixel")


def test_the_modality_is_told_from_a_hint_or_the_values_and_the_mri_background_is_the_noise_floor() -> None:
    image, _ = phantom(np.random.default_rng(2), (32, 32, 32))
    assert modality_of(image) == ("MRI", "assumed: the scan's values are not in HU")
    assert modality_of(image, "CT")[0] == "CT" and modality_of(image * 1000 - 1000, "MR")[0] == "MRI"
    # the background of magnitude images is Rician: with no signal, Rayleigh with its mode at sigma (0.05)
    assert mri_background(image) == pytest.approx(0.05, abs=0.02)  # the tissue is at 0.3, the spheres at 0.8
    fill, name = deletion_fill_value(image, "background", modality="MRI")
    assert name == "MRI background" and np.all(fill == mri_background(image))
    assert deletion_fill_value(image, "ct_air")[1] == "CT air (the scan's minimum)"
    assert deletion_fill_value(image, "ct_air")[0].max() == image.min()
    with pytest.raises(na.ParameterError, match="Unknown baseline"):
        deletion_fill_value(image, "air")


class MeanReader(nn.Module):
    """A segmenter that reads only the image's mean (logits -/+ 8 (mean - 0.5) everywhere): blurring keeps the mean,
    so blurring deletes nothing this model reads — like a brain-extraction network, which segments a blurred head
    as well."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 8 * (x.mean(dim=(2, 3), keepdim=True).expand_as(x) - 0.5)
        return torch.cat([-m, m], 1)


def test_auto_falls_back_to_the_background_when_blurring_changes_nothing() -> None:
    image = (0.5 + 0.3 * np.random.default_rng(5).random((16, 16))).astype(np.float32)  # MRI-like, mean 0.65
    amap = np.random.default_rng(6).random((16, 16)).astype(np.float32)
    net = MeanReader().eval()
    s = na.evaluate(net, image, amap, "deletion", target=Predicted(1), steps=4, random_orders=2)
    assert s.details["fill"] == "MRI background" and "(under 0.05): MRI background instead" in s.details["fill_note"]
    explicit = na.evaluate(net, image, amap, "deletion", target=Predicted(1), steps=4, random_orders=2,
                           baseline="mri_background")
    np.testing.assert_allclose(s.details["curve"], explicit.details["curve"])
    assert s.details["curve"][-1] < s.details["curve"][0] - 0.3  # the background deletes what the model reads
    blur = na.evaluate(net, image, amap, "deletion", target=Predicted(1), steps=4, random_orders=2, baseline="blur")
    assert blur.details["fill"] == "blurred copy" and np.ptp(blur.details["curve"]) < 0.05  # asked for: kept
    # insertion keeps its blurred start
    ins = na.evaluate(net, image, amap, "insertion", target=Predicted(1), steps=4, random_orders=2)
    assert ins.details["fill"] == "the scan, from the blurred copy" and "fill_note" not in ins.details
    # a segmenter that reads the detail keeps the blurred copy
    detail = np.random.default_rng(7).normal(0, 1, (12, 12)).astype(np.float32)  # the region: the positive pixels
    seg = na.evaluate(_identity_segmenter(), detail, amap[:12, :12], "deletion", target=Predicted(1), steps=4,
                      random_orders=2)
    assert seg.details["fill"] == "blurred copy" and "fill_note" not in seg.details


# ------------------------------------------------------------------------------------------------ real segmenters


def _faithful_on(model: object, image: np.ndarray, evidence: np.ndarray, geometry: na.Geometry | None,
                 steps: int, orders: int) -> dict[str, tuple[float, float, float, float]]:
    """Per check: (the evidence map's AUC, a random map's AUC, the random orders' mean AUC, their noise band)."""
    random_map = np.random.default_rng(7).random(image.shape).astype(np.float32)
    out = {}
    for check in ("deletion", "insertion"):
        kw = {"target": Predicted(1), "steps": steps, "geometry": geometry}
        good = na.evaluate(model, image, evidence.astype(np.float32), check, random_orders=orders, **kw)
        rand = na.evaluate(model, image, random_map, check, reference=False, **kw)
        assert good.details["unit"] == "region"
        assert good.details["fill"] in ("blurred copy", "the scan, from the blurred copy")
        said = verdict(check, good.value, good.details)
        assert said.startswith(f"faithful: {'deleting' if check == 'deletion' else 'restoring'} the map's top "
                               "regions first"), said
        out[check] = (good.value, rand.value, good.details["random_auc"], good.details["random_band"])
    return out


def _assert_ranked(got: dict[str, tuple[float, float, float, float]]) -> None:
    d_good, d_rand, d_ref, d_band = got["deletion"]
    assert d_good < d_ref - d_band and d_good < d_rand - 0.2  # deletion: lower is better
    i_good, i_rand, i_ref, i_band = got["insertion"]
    assert i_good > i_ref + i_band and i_good > i_rand + 0.1  # insertion: higher is better
    # the random map is a random order: within the random orders' noise
    assert abs(d_rand - d_ref) <= d_band and abs(i_rand - i_ref) <= i_band


def test_the_vessel_segmenter_ranks_its_evidence_above_a_random_map() -> None:
    from napari_attribution.models.demo.phantoms import vessel_phantom

    model = na.load_model("demo:vessel-seg")
    case = vessel_phantom(1234, shape=(32, 32, 32))  # a smaller crop of the demo's 48^3 at 0.6 mm
    geometry = na.Geometry(spacing=case.spacing, origin=(0.0, 0.0, 0.0))
    got = _faithful_on(model, case.image.astype(np.float32), case.mask, geometry, steps=8, orders=4)
    # measured: deletion 0.074 (random map 0.458; random orders 0.454 ± 0.241), insertion 0.891 (random map
    # 0.504; random orders 0.508 ± 0.244): blocks of 3 mm = 5 voxels, 343 blocks
    _assert_ranked(got)


def test_a_monai_unet_ranks_its_evidence_above_a_random_map() -> None:
    pytest.importorskip("monai")
    net = trained_unet()
    image, label = phantom(np.random.default_rng(99))
    # measured: deletion 0.34 (random map 0.72; 8 random orders 0.74 ± 0.09), insertion 0.92 (random map 0.75;
    # random orders 0.74 ± 0.07); 1 mm per voxel: blocks of 3 voxels, 512 blocks
    _assert_ranked(_faithful_on(net, image, label, None, steps=10, orders=8))



def test_the_docks_fill_choices_name_the_modality_assumed() -> None:
    """The box's deletion fill: the heatmap's default first, named after the modality; each label reads back as
    the baseline na.evaluate takes."""
    from napari_attribution.runs.checks import Explained, deletion_fill, fill_choices
    from napari_attribution.runs.model_info import model_info

    rng = np.random.default_rng(4)
    ct = (rng.normal(40, 30, (16, 16)) - 1040 * (rng.random((16, 16)) < 0.3)).astype(np.float32)
    mri = np.abs(rng.normal(0.2, 0.1, (16, 16))).astype(np.float32)
    classifier = Classifier(d=2, classes=2).eval()
    info = model_info(classifier, "classifier")
    on_ct = fill_choices(Explained(na.explain(classifier, ct, "saliency", 1), info, ct))
    assert on_ct == ["CT air (\u22121000 HU)", "blurred copy", "min", "mean"]
    on_mri = fill_choices(Explained(na.explain(classifier, mri, "saliency", 1), info, mri))
    assert on_mri[0] == "MRI background" and "CT air (\u22121000 HU)" not in on_mri
    # the reader's word wins over the values: a CT not in HU offers its air as the scan's minimum
    told = fill_choices(Explained(na.explain(classifier, mri, "saliency", 1), info, mri, modality="CT"))
    assert told[0] == "CT air (scan minimum)"
    seg = _identity_segmenter()
    on_seg = fill_choices(Explained(na.explain(seg, mri[:12, :12], "saliency", Predicted(1)), model_info(seg, "seg"),
                                    mri[:12, :12]))
    assert on_seg[:3] == ["blurred copy (MRI background if blur changes nothing)", "blurred copy", "MRI background"]
    assert deletion_fill(on_seg[0]) == "auto" and deletion_fill(on_seg[1]) == "blur"
    assert [deletion_fill(label) for label in on_ct] == ["ct_air", "blur", "min", "mean"]
    assert deletion_fill("MRI background") == "mri_background" and deletion_fill("min (air in CT)") == "min"
    for label in on_ct + on_mri + told:  # every label is a fill na.evaluate knows
        deletion_fill_value(ct, deletion_fill(label), task="classification", modality="CT")
