"""What a heatmap layer shows (layers.py, no viewer): hidden outside the patient, interpolation of the scan, limits
from inside the body or the prediction — and the map itself untouched."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_attribution import Attribution
from napari_attribution import layers as L
from napari_attribution.models.demo.phantoms import lesion_phantom
from napari_attribution.targets import Class


def att(data: np.ndarray, signed: bool = True, method: str = "occlusion", layer: str | None = None) -> Attribution:
    return Attribution(np.asarray(data, np.float32), method, Class(1), layer, {}, signed, 0.1)


def ct_with_lung() -> tuple[np.ndarray, np.ndarray]:
    """A CT body (40 HU) in air with an air-filled 'lung' inside that opens at the first and last slice, and the
    true body."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in (8, 40, 40)], indexing="ij")
    body = (yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1
    lung = (yy / 0.3) ** 2 + ((xx - 0.2) / 0.2) ** 2 < 1
    ct = np.where(body, 40.0, -1000.0) + np.random.default_rng(0).normal(0, 20, body.shape)
    ct[lung] = -850.0
    ct[0, 0, 0] = 300.0  # a speck of something bright in the air: not the body
    return ct.astype(np.float32), body


def test_ct_body_is_the_patient_with_its_lungs_and_without_the_air() -> None:
    ct, body = ct_with_lung()
    mask, how = L.body_mask(ct, modality="CT")
    assert "-500 HU" in how
    assert mask[body].all()  # the lung (air inside the patient, open at both ends of the volume) counts as inside
    # only the one-voxel margin lies outside the true body; the bright speck in the corner is not kept
    assert not mask[0, 0, 0] and not (mask & ~ndimage.binary_dilation(body, iterations=1)).any()
    assert (~mask).sum() > 0.3 * body.size


def test_a_large_scan_is_masked_on_a_coarser_grid_within_two_voxels(monkeypatch: pytest.MonkeyPatch) -> None:
    ct, body = ct_with_lung()
    full, _ = L.body_mask(ct, modality="CT")
    monkeypatch.setattr(L, "BODY_MASK_FULL_VOXELS", ct.size - 1)
    coarse, how = L.body_mask(ct, modality="CT")
    assert coarse.shape == ct.shape and "every 2nd voxel in-plane" in how and "2 voxel margin" in how
    assert coarse[body].all() and not coarse[0, 0, 0]
    grown = ndimage.binary_dilation(full, structure=np.ones((1, 5, 5), bool))  # two voxels in-plane
    assert not (coarse & ~grown).any()


def test_modality_unknown_hu_values_are_treated_as_ct() -> None:
    case = lesion_phantom(7, True)
    mask, how = L.body_mask(case.image)
    truth = case.structures > 0
    assert "CT above -500 HU" in how
    assert mask[truth].all() and (mask & ~truth).sum() < 0.25 * truth.sum()


def test_mri_foreground_uses_otsu_and_the_largest_part() -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
    head = (yy / 0.8) ** 2 + (xx / 0.6) ** 2 < 1
    mri = np.where(head, 600.0, 15.0) + rng.normal(0, 30, head.shape)
    mri[2:4, 2:4] = 900.0  # a bright artefact in the background: a separate, smaller part
    mask, how = L.body_mask(mri, modality="MR")
    assert "Otsu" in how and "CT" not in how
    assert mask[head].all() and not mask[2:4, 2:4].any()
    assert (mask & ~head).sum() < 0.1 * head.sum()


def test_mask_hides_the_map_only_outside_and_leaves_the_attribution_alone() -> None:
    ct, body = ct_with_lung()
    mask, how = L.body_mask(ct, modality="CT")
    raw = np.random.default_rng(2).normal(0, 1, ct.shape).astype(np.float32)
    a = att(raw)
    before = a.data.copy()
    data, kw, _ = L.attribution_layer(a, mask=mask, mask_note=how)
    np.testing.assert_array_equal(data[mask], raw[mask])  # inside: the raw values, exactly
    assert np.isnan(data[~mask]).all()  # outside: NaN (napari draws NaN clear)
    np.testing.assert_array_equal(a.data, before)  # the map itself is unchanged
    assert data is not a.data and not np.shares_memory(data, a.data)
    info = kw["metadata"][L.OWNER_KEY]
    assert info["display_mask"]["region"] == how and info["display_mask"]["voxels_inside"] == int(mask.sum())
    assert "unchanged" in info["display_mask"]["outside"]
    # without a mask the layer's data is the raw map and nothing says it is masked
    plain, kw2, _ = L.attribution_layer(a)
    np.testing.assert_array_equal(plain, raw)
    assert "display_mask" not in kw2["metadata"][L.OWNER_KEY]


def test_a_mask_of_another_shape_is_not_applied() -> None:
    a = att(np.ones((4, 4)))
    data, kw, _ = L.display_heatmap(L.attribution_layer(a), mask=np.ones((5, 5), bool), mask_note="x")
    assert np.isfinite(data).all() and "display_mask" not in kw["metadata"][L.OWNER_KEY]


@pytest.mark.parametrize("scan", [{"interpolation2d": "nearest", "interpolation3d": "nearest"},
                                  {"interpolation2d": "linear", "interpolation3d": "cubic"}])
def test_interpolation_is_copied_from_the_scan(scan: dict[str, str]) -> None:
    _, kw, _ = L.attribution_layer(att(np.ones((3, 4, 4))), interpolation=scan)
    assert kw["interpolation2d"] == scan["interpolation2d"] and kw["interpolation3d"] == scan["interpolation3d"]


def test_without_a_scan_the_heatmap_takes_napari_defaults_not_linear_2d() -> None:
    _, kw, _ = L.attribution_layer(att(np.ones((4, 4))))
    assert kw["interpolation2d"] == "nearest" and kw["interpolation3d"] == "linear"


def test_limits_from_inside_the_body_ignore_a_hot_spot_outside() -> None:
    ct, body = ct_with_lung()
    mask, how = L.body_mask(ct, modality="CT")
    rng = np.random.default_rng(3)
    raw = rng.normal(0, 1, ct.shape)
    outside = np.flatnonzero(~mask)
    raw.ravel()[outside[: outside.size // 10]] = 100.0  # "skull base": 100x the signal, outside the body
    a = att(raw)
    whole = L.attribution_layer(a)[1]["contrast_limits"]
    _, kw, _ = L.attribution_layer(a, limits_region=mask, limits_note=how)
    inside = np.percentile(np.abs(raw[mask]), 99.5)
    assert whole[1] >= 100  # the whole map's limits are set by the hot spot
    assert kw["contrast_limits"] == [-L.nice_limit(inside), L.nice_limit(inside)] and kw["contrast_limits"][1] < 5
    assert kw["metadata"][L.OWNER_KEY]["contrast_region"] == how
    # unsigned: limits (0, percentile inside)
    _, kw, _ = L.attribution_layer(att(np.abs(raw), signed=False), limits_region=mask, limits_note=how)
    assert kw["contrast_limits"][0] == 0.0 and kw["contrast_limits"][1] == L.nice_limit(
        np.percentile(np.abs(raw[mask]), 99.5))


def test_limits_inside_the_prediction_and_per_network_layer_of_a_sweep() -> None:
    lab = np.zeros((20, 20), int)
    lab[8:12, 8:12] = 1
    region = L.prediction_region(lab, margin=2, min_voxels=4)
    # the 4x4 square grown by 2 voxels (city-block): 8x8 less 3 voxels at each corner
    assert region is not None and region.sum() == 8 * 8 - 4 * 3 and region[6:14, 6:14].sum() == region.sum()
    assert L.prediction_region(np.zeros((5, 5), int)) is None  # nothing predicted: no region
    maps = [att(np.where(region, s, 50.0 * s), signed=False, method="grad_cam", layer=f"l{s}") for s in (1.0, 10.0)]
    ldt = L.layer_sweep_layer(maps)
    data, kw, _ = L.display_heatmap(ldt, limits_region=region, limits_note="inside the prediction")
    info = kw["metadata"][L.OWNER_KEY]
    assert info["layer_contrast_limits"] == [[0.0, 1.0], [0.0, 10.0]] and kw["contrast_limits"] == [0.0, 1.0]
    data, kw, _ = L.display_heatmap(ldt, mask=region, mask_note="pred")
    assert np.isnan(data[:, ~region]).all() and np.isfinite(data[:, region]).all() and data.shape == (2, 20, 20)


def test_perturbation_methods_are_masked_by_default_and_the_others_are_not() -> None:
    import napari_attribution as na

    masked = {m.name for m in na.list_methods() if L.masks_by_default(m.name)}
    assert masked == {"occlusion", "rise", "prediction_difference", "evidence"}
    assert not L.masks_by_default("no such method")
