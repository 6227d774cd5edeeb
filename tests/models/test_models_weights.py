"""Weights are never silent: a card without weights is refused unless it says "random"; a weights file of an
unexpected name is named in the error; weights_sha256 pins the file; LoadedModel.weights_sha256 is the hash of the
weights actually read. And the card keys input_shape and weights_sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from _models_helpers import OWN, UNET_KWARGS, classifier, same_parameters, script, write_json
from _nets import Classifier

import napari_attribution as na
from napari_attribution.models import ModelCard


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ no weights


@pytest.mark.parametrize("card", [{"factory": "_nets:Classifier"}, {"factory": "monai:UNet", "kwargs": UNET_KWARGS},
                                  {"factory": "_nets:Classifier", "weights": None}])
def test_a_factory_dict_without_weights_is_refused_and_says_how_to_give_them(card: dict) -> None:
    with pytest.raises(na.ModelLoadError) as info:
        na.load_model(card)
    message = str(info.value)
    assert "names no weights" in message and "random, untrained weights" in message
    assert '"weights": "model.pt"' in message  # how to give weights
    assert '"weights": "random"' in message and "on purpose" in message  # how to ask for an untrained network


def test_random_weights_on_purpose_are_marked_on_the_loaded_model() -> None:
    loaded = na.load_model({"factory": "_nets:Classifier", "kwargs": {"d": 2}, "weights": "random"}, allow_modules=OWN)
    assert isinstance(loaded.module, Classifier) and not loaded.module.training
    assert loaded.random_weights and loaded.card.random_weights and loaded.card.weights == "random"
    assert loaded.weights_sha256 is None  # no file was read
    assert loaded.card.to_dict()["weights"] == "random"
    # two loads are two different random networks: nothing pretends otherwise
    again = na.load_model({"factory": "_nets:Classifier", "kwargs": {"d": 2}, "weights": "random"}, allow_modules=OWN)
    assert not same_parameters(loaded.module, again.module)


def test_card_file_without_weights_is_refused_and_names_the_files_it_looked_for(tmp_path: Path) -> None:
    card = write_json(tmp_path / "net.card.json", {"factory": "_nets:Classifier"})
    with pytest.raises(na.ModelLoadError) as info:
        na.load_model(card)
    message = str(info.value)
    assert "'net.card.json' names no weights" in message
    assert "looked for net.pt, net.pth, net.ckpt, net.safetensors" in message
    assert '"weights": "random"' in message


def test_a_weights_file_with_an_unexpected_name_is_an_error_not_random_weights(tmp_path: Path) -> None:
    torch.save(classifier(2).state_dict(), tmp_path / "final_epoch.pth")
    card = write_json(tmp_path / "net.card.json", {"factory": "_nets:Classifier"})
    with pytest.raises(na.ModelLoadError) as info:
        na.load_model(card)
    message = str(info.value)
    assert "looked for net.pt, net.pth, net.ckpt, net.safetensors" in message
    assert "'final_epoch.pth'" in message and '"weights": "final_epoch.pth"' in message
    # named in the card, it loads
    net = classifier(2)
    torch.save(net.state_dict(), tmp_path / "final_epoch.pth")
    write_json(card, {"factory": "_nets:Classifier", "weights": "final_epoch.pth"})
    assert same_parameters(na.load_model(card, allow_modules=OWN).module, net)


def test_a_folder_with_a_card_and_several_weights_files_names_none_silently(tmp_path: Path) -> None:
    torch.save(classifier(2).state_dict(), tmp_path / "a.pt")
    torch.save(classifier(2, seed=1).state_dict(), tmp_path / "b.pt")
    write_json(tmp_path / "net.card.json", {"factory": "_nets:Classifier"})
    with pytest.raises(na.ModelLoadError, match=r"looked for net.pt.*'a.pt', 'b.pt'.*several weights files"):
        na.load_model(tmp_path)


def test_random_next_to_real_weights_is_a_contradiction(tmp_path: Path) -> None:
    torch.save(classifier(2).state_dict(), tmp_path / "model.pt")
    write_json(tmp_path / "model.card.json", {"factory": "_nets:Classifier", "weights": "random"})
    with pytest.raises(na.ModelLoadError, match=r"says \"weights\": \"random\".*'model.pt' being loaded.*Remove"):
        na.load_model(tmp_path / "model.pt")
    # the card alone is an untrained network, and says so
    assert na.load_model(tmp_path / "model.card.json", allow_modules=OWN).random_weights
    script(classifier(2)).save(str(tmp_path / "net.ts"))
    with pytest.raises(na.ModelLoadError, match="'net.ts' being loaded"):
        na.load_model(tmp_path / "net.ts", card={"weights": "random"})


def test_random_card_file_round_trip_keeps_the_word(tmp_path: Path) -> None:
    card = ModelCard(factory="_nets:Classifier", weights="random")
    path = card.save(tmp_path / "x.card.json")
    assert '"weights": "random"' in path.read_text()
    back = ModelCard.from_file(path)  # not turned into a path relative to the card
    assert back == card and back.random_weights


# ------------------------------------------------------------------------------------------------ the hash read


def test_weights_sha256_is_that_of_the_checkpoint_not_of_the_card(tmp_path: Path) -> None:
    torch.save(classifier(2).state_dict(), tmp_path / "net.pt")
    card = write_json(tmp_path / "net.card.json", {"factory": "_nets:Classifier"})
    for source in (card, tmp_path / "net.pt", tmp_path):
        loaded = na.load_model(source, allow_modules=OWN)
        assert loaded.weights_sha256 == sha(tmp_path / "net.pt") != sha(card)
        assert not loaded.random_weights
    script(classifier(2)).save(str(tmp_path / "net.ts"))
    assert na.load_model(tmp_path / "net.ts").weights_sha256 == sha(tmp_path / "net.ts")


def test_demo_model_ships_weights_and_records_their_hash() -> None:
    loaded = na.load_model("demo:lesion3d")
    assert not loaded.random_weights
    assert loaded.weights_sha256 == sha(Path(loaded.card.weights or ""))


# ------------------------------------------------------------------------------------------------ weights_sha256


def test_weights_sha256_is_checked_on_load(tmp_path: Path) -> None:
    net = classifier(2)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    right = sha(tmp_path / "net.pt")
    card = write_json(tmp_path / "net.card.json", {"factory": "_nets:Classifier", "weights_sha256": right.upper()})
    loaded = na.load_model(card, allow_modules=OWN)
    assert same_parameters(loaded.module, net) and loaded.card.weights_sha256 == right  # normalised to lower case
    torch.save(classifier(2, seed=5).state_dict(), tmp_path / "net.pt")  # another training run, same name
    wrong = sha(tmp_path / "net.pt")
    for source in (card, tmp_path / "net.pt", tmp_path):
        with pytest.raises(na.ModelLoadError) as info:
            na.load_model(source, allow_modules=OWN)
        message = str(info.value)
        assert wrong in message and right in message and "'net.pt'" in message


def test_weights_sha256_is_checked_for_torchscript_and_bundles(tmp_path: Path) -> None:
    script(classifier(2)).save(str(tmp_path / "net.ts"))
    good = sha(tmp_path / "net.ts")
    assert na.load_model(tmp_path / "net.ts", card={"weights_sha256": good}).weights_sha256 == good
    with pytest.raises(na.ModelLoadError, match=f"sha256 {good}.*says weights_sha256 {'0' * 64}"):
        na.load_model(tmp_path / "net.ts", card={"weights_sha256": "0" * 64})
    bundle = tmp_path / "bundle"
    write_json(bundle / "configs" / "inference.json", {"network_def": {"_target_": "UNet", **UNET_KWARGS}})
    unet = na.load_model({"factory": "monai:UNet", "kwargs": UNET_KWARGS, "weights": "random"}).module
    (bundle / "models").mkdir()
    torch.save(unet.state_dict(), bundle / "models" / "model.pt")
    assert na.load_model(bundle).weights_sha256 == sha(bundle / "models" / "model.pt")
    write_json(bundle / "model.card.json", {"task": "segmentation", "weights_sha256": "1" * 64})
    with pytest.raises(na.ModelLoadError, match="says weights_sha256 1111"):
        na.load_model(bundle)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"weights_sha256": "abc"}, "'weights_sha256' must be the weights file's sha256 as 64 hex digits"),
        ({"weights_sha256": "g" * 64}, "64 hex digits"),
        ({"weights_sha256": 12}, "64 hex digits"),
        ({"weights": "random", "weights_sha256": "a" * 64}, "random weights have no file to check"),
        ({"weights": 3}, "file path \\(or \"random\" for an untrained network\\)"),
    ],
)
def test_invalid_weights_fields(fields: dict, expected: str) -> None:
    with pytest.raises(na.ModelLoadError, match=expected):
        ModelCard.from_dict(fields)


# ------------------------------------------------------------------------------------------------ input_shape


def test_input_shape_is_validated_and_round_trips(tmp_path: Path) -> None:
    card = ModelCard(spatial_dims=3, input_shape=[128, 128.0, 96], weights="model.pt", weights_sha256="ab" * 32)
    assert card.input_shape == (128, 128, 96) and all(type(v) is int for v in card.input_shape)
    data = card.to_dict()
    assert data["input_shape"] == [128, 128, 96] and data["weights_sha256"] == "ab" * 32
    assert ModelCard.from_dict(data) == card
    assert ModelCard.from_file(card.save(tmp_path / "m.card.json")).input_shape == (128, 128, 96)
    assert ModelCard(spatial_dims=2, input_shape=(256, 256)).input_shape == (256, 256)
    assert ModelCard(input_shape=(64, 64, 64)).input_shape == (64, 64, 64)  # dims unknown: 2 or 3 values
    assert "input_shape" not in ModelCard().to_dict()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"spatial_dims": 2, "input_shape": [64, 64, 64]}, r"'input_shape' \[64, 64, 64\] needs .* 2 values for a 2D"),
        ({"spatial_dims": 3, "input_shape": [64, 64]}, "3 values for a 3D model"),
        ({"input_shape": [64]}, "2 values for a 2D model, 3 for a 3D one"),
        ({"input_shape": [64, 0, 64]}, "'input_shape' must be at least 1"),
        ({"input_shape": [64, -2]}, "'input_shape' must be at least 1"),
        ({"input_shape": [64, 6.5]}, "'input_shape' must be a whole number"),
        ({"input_shape": "128"}, "'input_shape' must be a list"),
        ({"input_shape": []}, "'input_shape' must not be empty"),
        ({"input_shape": [128, 128, 128], "spacing": [1.0, 1.0, 1.0]},
         "both 'input_shape' .* and 'spacing' .* input_shape .* replaces spacing .* Remove one of them"),
    ],
)
def test_invalid_input_shape(fields: dict, expected: str) -> None:
    with pytest.raises(na.ModelLoadError, match=expected):
        ModelCard.from_dict(fields)


def test_input_shape_and_spacing_in_a_card_file_fail_on_load(tmp_path: Path) -> None:
    script(classifier(2)).save(str(tmp_path / "net.ts"))
    write_json(tmp_path / "net.card.json", {"input_shape": [32, 32], "spacing": [1.0, 1.0]})
    with pytest.raises(na.ModelLoadError, match="input_shape .* replaces spacing"):
        na.load_model(tmp_path / "net.ts")


def test_a_pipe_as_weights_or_as_the_card_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    (tmp_path / "w.pt").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "w.pt")
    os.mkfifo(tmp_path / "c.json")
    spec = {"factory": "torch.nn:Conv3d", "kwargs": {"in_channels": 1, "out_channels": 2, "kernel_size": 3},
            "weights": str(tmp_path / "w.pt")}
    with pytest.raises(na.ModelLoadError, match="not a regular file"):
        na.load_model(spec)
    with pytest.raises(na.ModelLoadError, match="not a regular file"):
        na.load_model("demo:lesion3d", card=tmp_path / "c.json")
