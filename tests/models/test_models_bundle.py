"""MONAI bundle folders built in tmp_path: network_def without evaluating code, weights, the card from
metadata.json and the preprocessing transforms, expressions only with trust."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _models_helpers import UNET_KWARGS, classifier, same_parameters, script, write_json

import napari_attribution as na

METADATA = {
    "name": "tiny vessel segmenter",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1,
                             "spatial_shape": [32, 32, 16], "is_patch_data": True}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "channel_def": {"0": "background", "1": "vessel"}}},
    },
}


def make_bundle(root: Path, network_def: Any, *, weights: torch.nn.Module | None = None,
                extra: dict[str, Any] | None = None) -> Path:
    config = {"dims": 3, "network_def": network_def, **(extra or {})}
    write_json(root / "configs" / "inference.json", config)
    write_json(root / "configs" / "metadata.json", METADATA)
    if weights is not None:
        (root / "models").mkdir(parents=True, exist_ok=True)
        torch.save(weights.state_dict(), root / "models" / "model.pt")
    return root


def unet_def(**overrides: Any) -> dict[str, Any]:
    return {"_target_": "UNet", **UNET_KWARGS, "spatial_dims": "@dims", **overrides}


def test_bundle_loads_network_weights_and_card(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = na.load_model({"factory": "monai:UNet", "kwargs": UNET_KWARGS, "weights": "random"}).module
    preprocessing = {"transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [0.8, 0.8, 2.0]},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -100, "a_max": 300, "b_min": 0.0,
         "b_max": 1.0, "clip": True},
        {"_target_": "DivisiblePadd", "keys": "image", "k": 16},
    ]}
    bundle = make_bundle(tmp_path / "b", unet_def(), weights=trained,
                         extra={"preprocessing": preprocessing,
                                "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [48, 48, 24]},
                                "network": "$@network_def.to(@device)"})
    loaded = na.load_model(bundle)
    assert same_parameters(loaded.module, trained) and not loaded.module.training
    card = loaded.card
    assert card.name == "tiny vessel segmenter" and not card.inferred
    assert (card.task, card.spatial_dims, card.in_channels, card.num_classes) == ("segmentation", 3, 1, 2)
    assert card.class_names == ("background", "vessel")
    assert card.spacing == (2.0, 0.8, 0.8)  # MONAI's (x, y, z) reversed to numpy order
    assert card.patch_size == (24, 48, 48)  # the inferer's roi_size wins over metadata's spatial_shape
    assert card.preprocess == {"window": [-100.0, 300.0], "scale_to": [0.0, 1.0], "pad_to_multiple": 16}
    assert card.factory == "monai.networks.nets:UNet" and card.kwargs["spatial_dims"] == 3
    assert card.weights == str(bundle / "models" / "model.pt")
    # the card derived from the bundle rebuilds the same model
    assert same_parameters(na.load_model(card.to_dict()).module, trained)


def test_bundle_with_a_dotted_target_and_a_literal_expression(tmp_path: Path) -> None:
    net_def = {**unet_def(_target_="monai.networks.nets.UNet"), "channels": "$[4, 8]"}
    trained = na.load_model({"factory": "monai:UNet", "kwargs": UNET_KWARGS, "weights": "random"}).module
    loaded = na.load_model(make_bundle(tmp_path, net_def, weights=trained))
    assert same_parameters(loaded.module, trained)
    assert loaded.card.kwargs["channels"] == [4, 8]


def test_bundle_expressions_need_trust(tmp_path: Path) -> None:
    torch.manual_seed(2)
    trained = na.load_model({"factory": "monai:UNet", "kwargs": UNET_KWARGS, "weights": "random"}).module
    bundle = make_bundle(tmp_path, unet_def(channels="$[4 * 1, 4 * 2]"), weights=trained)
    with pytest.raises(na.ModelLoadError, match=r"Python expression '\$\[4 \* 1, 4 \* 2\]'.*trust=True"):
        na.load_model(bundle)
    loaded = na.load_model(bundle, trust=True)  # evaluated by monai.bundle.ConfigParser
    assert same_parameters(loaded.module, trained)


def test_bundle_with_torchscript_only_and_a_card_in_the_folder(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    write_json(tmp_path / "configs" / "inference.json", {"imports": []})
    (tmp_path / "models").mkdir()
    script(classifier(2)).save(str(tmp_path / "models" / "model.ts"))
    write_json(tmp_path / "model.card.json", {"task": "classification", "class_names": ["a", "b", "c"]})
    loaded = na.load_model(tmp_path)
    assert isinstance(loaded.module, torch.jit.ScriptModule)
    assert loaded.card.class_names == ("a", "b", "c") and loaded.card.spatial_dims == 2


def test_bundle_errors(tmp_path: Path) -> None:
    (tmp_path / "a" / "configs").mkdir(parents=True)
    with pytest.raises(na.ModelLoadError, match="no inference.json .* no TorchScript"):
        na.load_model(tmp_path / "a")
    with pytest.raises(na.ModelLoadError, match="has no weights: expected models/model.pt"):
        na.load_model(make_bundle(tmp_path / "b", unet_def()))
    with pytest.raises(na.ModelLoadError, match="refers to '@nowhere'"):
        na.load_model(make_bundle(tmp_path / "c", unet_def(spatial_dims="@nowhere")))
    with pytest.raises(na.ModelLoadError, match="'NoSuchNet' is not a network in monai.networks.nets"):
        na.load_model(make_bundle(tmp_path / "d", {"_target_": "NoSuchNet"}))
    other = na.load_model({"factory": "monai:UNet", "kwargs": {**UNET_KWARGS, "channels": [4, 6]},
                           "weights": "random"}).module
    with pytest.raises(na.ModelLoadError, match="do not fit .*different shape"):
        na.load_model(make_bundle(tmp_path / "e", unet_def(), weights=other))
    (tmp_path / "f" / "configs").mkdir(parents=True)
    (tmp_path / "f" / "configs" / "inference.json").write_text("{\"network_def\": {,}")
    with pytest.raises(na.ModelLoadError, match="not valid JSON: .* line 1, column"):
        na.load_model(tmp_path / "f")


def test_metadata_json_alone_gives_class_names_even_when_it_is_odd(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, unet_def(), weights=na.load_model(
        {"factory": "monai:UNet", "kwargs": UNET_KWARGS, "weights": "random"}).module)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "bg"}  # inconsistent: ignored
    write_json(bundle / "configs" / "metadata.json", meta)
    card = na.load_model(bundle).card
    assert card.class_names is None and card.num_classes == 2


def test_a_bundles_sliding_window_inferer_becomes_the_cards_and_runs_window_by_window(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = na.load_model({"factory": "monai:UNet", "kwargs": UNET_KWARGS, "weights": "random"}).module
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16], "overlap": [0.5, 0.25, 0.25],
               "mode": "gaussian", "sigma_scale": 0.2, "sw_batch_size": 2}
    bundle = make_bundle(tmp_path / "b", unet_def(), weights=trained, extra={"inferer": inferer})
    loaded = na.load_model(bundle)
    assert loaded.card.inferer == {"type": "sliding_window", "roi_size": [16, 32, 32], "overlap": [0.25, 0.25, 0.5],
                                   "mode": "gaussian", "sigma_scale": 0.2, "padding_mode": "constant", "cval": 0.0,
                                   "sw_batch_size": 2}
    scan = torch.randn(20, 40, 37).numpy()
    att = na.explain(loaded, scan, "saliency", na.targets.Class(1))
    assert att.data.shape == scan.shape
    assert any(step.startswith("sliding window 16x32x32") for step in att.extras["preprocessing"])


def test_steps_a_bundle_asks_for_that_are_not_reproduced_are_listed_in_one_warning(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = na.load_model({"factory": "monai:UNet", "kwargs": UNET_KWARGS, "weights": "random"}).module
    preprocessing = {"transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"},
        {"_target_": "NormalizeIntensityd", "keys": "image"},
    ]}
    bundle = make_bundle(tmp_path / "b", unet_def(), weights=trained,
                         extra={"preprocessing": preprocessing, "inferer": {"_target_": "SaliencyInferer"}})
    with pytest.warns(na.PreprocessingWarning) as caught:
        loaded = na.load_model(bundle)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "Orientationd" in text and "CropForegroundd" in text and "inferer SaliencyInferer" in text
    assert "LoadImaged" not in text and "NormalizeIntensityd" not in text  # read / reproduced
    assert loaded.card.preprocess == {"zscore": True}
