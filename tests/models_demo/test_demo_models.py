"""The bundled demo models: loading, cards consistent with a forward pass, held-out accuracy / Dice on fresh
phantoms (small batches; no training here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution.models.demo import (
    CTA_WINDOW,
    DEMO_MODELS,
    PHASES,
    abdomen_batch,
    demo_metrics,
    get_demo,
    lesion_phantom,
    list_demos,
    vessel_batch,
)
from napari_attribution.models.demo.training import dice

NAMES = ["contrast-phase", "contrast-phase-3d", "vessel-seg", "lesion3d", "vessel-cta"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_list_demos():
    assert list_demos() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_get_demo_card_matches_forward(name):
    loaded = get_demo(name)
    assert isinstance(loaded, na.LoadedModel)
    model, card = loaded.module, loaded.card
    assert not model.training
    assert card.output == "logits"
    if name == "vessel-cta":  # HU in, windowed by the card (the others window inside their forward)
        assert card.preprocess is not None and list(card.preprocess["window"]) == list(CTA_WINDOW)
    else:
        assert card.preprocess is None
    assert card.spatial_dims == len(card.patch_size) == len(card.spacing)
    first = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    assert first.in_channels == card.in_channels == 1
    assert isinstance(first, torch.nn.Conv2d if card.spatial_dims == 2 else torch.nn.Conv3d)
    assert card.default_layer in dict(model.named_modules())
    assert card.factory and card.weights and card.weights.endswith(".pt")
    with torch.no_grad():
        out = model(torch.zeros(2, card.in_channels, *card.patch_size))
    if card.task == "classification":
        assert out.shape == (2, len(card.class_names))
    else:
        assert card.task == "segmentation"
        assert out.shape == (2, len(card.class_names), *card.patch_size)
    metrics = demo_metrics(name)
    assert metrics.get("accuracy", metrics.get("dice_mean", 0)) > 0.8


def test_get_demo_prefix_and_fresh_module():
    a, b = get_demo("demo:contrast-phase"), get_demo("contrast-phase")
    assert a.module is not b.module and a.card == b.card
    assert a.card.class_names == PHASES


def test_unknown_demo_lists_the_demos():
    with pytest.raises(na.ModelLoadError) as err:
        get_demo("demo:nope")
    for name in NAMES:
        assert f"demo:{name}" in str(err.value)


def test_card_factory_rebuilds_the_model():
    import importlib

    card = get_demo("vessel-seg").card
    module_name, cls_name = card.factory.split(":")
    net = getattr(importlib.import_module(module_name), cls_name)(**card.kwargs)
    net.load_state_dict(torch.load(card.weights, weights_only=True)["state_dict"])


@pytest.mark.parametrize("name,dims", [("contrast-phase", 2), ("contrast-phase-3d", 3)])
def test_contrast_phase_held_out_accuracy(name, dims):
    x, y, _ = abdomen_batch(98_765 + dims, 30, dims=dims)
    model = get_demo(name).module
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    assert (pred == y).mean() >= 0.8  # chance: 1/3


def test_lesion_held_out_accuracy():
    rng = np.random.default_rng(4242)
    labels = rng.integers(0, 2, 30)
    x = np.stack([lesion_phantom(rng, bool(k)).image for k in labels])[:, None]
    with torch.no_grad():
        pred = get_demo("lesion3d").module(torch.from_numpy(x)).argmax(1).numpy()
    assert (pred == labels).mean() >= 0.8


def test_vessel_seg_held_out_dice():
    x, truth = vessel_batch(31_337, 3)
    with torch.no_grad():
        pred = get_demo("vessel-seg").module(torch.from_numpy(x)).argmax(1).numpy() == 1
    scores = [dice(p, t) for p, t in zip(pred, truth, strict=True)]
    assert min(scores) >= 0.7, scores


def test_grad_cam_concentrates_on_the_evidence():
    """Grad-CAM (default layer) of the true phase, on enhanced phantoms: the fraction of its mass inside the
    evidence mask is well above the mask's share of the image (what a map blind to the evidence gets)."""
    loaded = get_demo("contrast-phase")
    spec = DEMO_MODELS["contrast-phase"]
    inside, share = [], []
    for seed in range(6):
        for phase in (1, 2):
            case = spec.generator(50_000 + seed, phase)
            res = na.explain(loaded, case.image, "grad_cam", phase)
            assert res.data.shape == case.image.shape and res.layer == "features.relu3"
            heat = np.clip(res.data, 0, None)
            inside.append(heat[case.mask].sum() / heat.sum())
            share.append(case.mask.mean())
    print(f"Grad-CAM mass inside the evidence mask: {np.mean(inside):.2f} (mask share {np.mean(share):.2f})")
    assert np.mean(inside) > 2.5 * np.mean(share)
