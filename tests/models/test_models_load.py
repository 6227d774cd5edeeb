"""load_model: every source (TorchScript, state_dict + card, card dict, MONAI networks, demo:), trust semantics and
the error a user meets for each thing that can go wrong."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from _models_helpers import (
    DENSENET_KWARGS,
    OWN,
    UNET_KWARGS,
    classifier,
    same_parameters,
    script,
    write_json,
)
from _nets import Classifier, TinyUNet, seeded
from torch import nn

import napari_attribution as na

RANDOM = {"weights": "random"}  # an untrained network on purpose (a card without weights is refused)

# ------------------------------------------------------------------------------------------------ TorchScript


def test_torchscript_file_loads_in_eval_mode_with_an_inferred_card(tmp_path: Path) -> None:
    net = classifier(2)
    path = tmp_path / "net.ts"
    script(net).save(str(path))
    loaded = na.load_model(path)
    assert isinstance(loaded.module, torch.jit.ScriptModule)
    assert not loaded.module.training
    assert loaded.card.inferred and loaded.card.spatial_dims == 2 and loaded.card.in_channels == 1
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(loaded.module(x), net(x))
    assert loaded.source == str(path)


def test_torchscript_with_a_card_beside_it_uses_the_card(tmp_path: Path) -> None:
    script(classifier(2)).save(str(tmp_path / "net.pt"))
    write_json(tmp_path / "net.card.json", {"task": "classification", "class_names": ["a", "b", "c"]})
    loaded = na.load_model(str(tmp_path / "net.pt"))
    assert not loaded.card.inferred
    assert loaded.card.class_names == ("a", "b", "c") and loaded.card.spatial_dims == 2


# ------------------------------------------------------------------------------------------------ state_dict + card


@pytest.mark.parametrize("card_name", ["model.card.json", "best.card.json"])
def test_state_dict_with_a_card_beside_it(tmp_path: Path, card_name: str) -> None:
    net = classifier(3, classes=2)
    torch.save(net.state_dict(), tmp_path / "best.pt")
    write_json(tmp_path / card_name, {"factory": "_nets:Classifier", "kwargs": {"d": 3, "classes": 2},
                                      "task": "classification", "class_names": ["no lesion", "lesion"]})
    loaded = na.load_model(tmp_path / "best.pt", allow_modules=OWN)
    assert isinstance(loaded.module, Classifier) and not loaded.module.training
    assert same_parameters(loaded.module, net)
    card = loaded.card
    assert card.factory == "_nets:Classifier" and card.weights == str(tmp_path / "best.pt")
    assert card.spatial_dims == 3 and card.in_channels == 1 and not card.inferred


def test_card_file_as_source_names_its_weights_relative_to_itself(tmp_path: Path) -> None:
    net = classifier(2)
    (tmp_path / "w").mkdir()
    torch.save({"epoch": 7, "best_dice": np.float64(0.91), "history": np.zeros(3),
                "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w" / "ckpt.pth")
    card = write_json(tmp_path / "net.card.json", {"factory": "_nets:Classifier", "weights": "w/ckpt.pth"})
    # nested under "state_dict" beside numpy metrics; "module." prefix undone
    loaded = na.load_model(card, allow_modules=OWN)
    assert same_parameters(loaded.module, net) and loaded.source == str(card)
    assert Path(loaded.card.weights or "") == tmp_path / "w" / "ckpt.pth"


def test_card_file_without_weights_finds_the_checkpoint_of_the_same_name(tmp_path: Path) -> None:
    net = classifier(2)
    torch.save(net.state_dict(), tmp_path / "net.pth")
    card = write_json(tmp_path / "net.card.json", {"factory": "_nets:Classifier"})
    assert same_parameters(na.load_model(card, allow_modules=OWN).module, net)


def test_yaml_card_beside_a_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    net = classifier(2)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.card.yaml").write_text("factory: _nets:Classifier\nkwargs: {d: 2}\ntask: classification\n")
    assert same_parameters(na.load_model(tmp_path / "model.pt", allow_modules=OWN).module, net)


def test_explicit_card_argument_replaces_the_sidecar(tmp_path: Path) -> None:
    net = classifier(2)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    write_json(tmp_path / "model.card.json", {"factory": "_nets:Nope"})
    loaded = na.load_model(tmp_path / "model.pt", card={"factory": "_nets:Classifier", "spacing": [1.0, 1.0]},
                           allow_modules=OWN)
    assert same_parameters(loaded.module, net) and loaded.card.spacing == (1.0, 1.0)


# ------------------------------------------------------------------------------------------------ MONAI by name


def test_monai_unet_3d_from_a_card_dict_with_and_without_weights(tmp_path: Path) -> None:
    fresh = na.load_model({"factory": "monai.networks.nets:UNet", "kwargs": UNET_KWARGS, "weights": "random"})
    assert type(fresh.module).__name__ == "UNet" and not fresh.module.training
    card = fresh.card
    assert (card.task, card.spatial_dims, card.in_channels, card.num_classes) == ("segmentation", 3, 1, 2)
    assert fresh.module(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)

    torch.manual_seed(3)
    trained = na.load_model({"factory": "monai:UNet", "kwargs": UNET_KWARGS, "weights": "random"}).module
    torch.save(trained.state_dict(), tmp_path / "unet.pt")
    again = na.load_model({"factory": "monai:UNet", "kwargs": UNET_KWARGS, "weights": str(tmp_path / "unet.pt")})
    assert same_parameters(again.module, trained)


def test_monai_densenet121_short_form() -> None:
    loaded = na.load_model({"factory": "monai:DenseNet121", "kwargs": DENSENET_KWARGS, "weights": "random"})
    assert type(loaded.module).__name__ == "DenseNet121"
    assert (loaded.card.task, loaded.card.spatial_dims, loaded.card.num_classes) == ("classification", 2, 3)
    assert loaded.module(torch.zeros(1, 1, 32, 32)).shape == (1, 3)


def test_a_module_or_loaded_model_passes_through() -> None:
    net = classifier(2).train()
    loaded = na.load_model(net)
    assert loaded.module is net and not net.training and loaded.card.inferred
    assert na.load_model(loaded, card={"task": "classification"}).card.task == "classification"


# ------------------------------------------------------------------------------------------------ demo:


def _fake_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("napari_attribution.models.demo")

    def get_demo(name: str) -> na.LoadedModel:
        if name != "tiny":
            raise KeyError(name)
        return na.LoadedModel(classifier(2).train(), na.ModelCard(task="classification", name="tiny"))

    fake.get_demo = get_demo  # type: ignore[attr-defined]
    fake.list_demos = lambda: ["tiny"]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "napari_attribution.models.demo", fake)


def test_demo_source_uses_get_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_demo(monkeypatch)
    loaded = na.load_model("demo:tiny")
    assert loaded.card.name == "tiny" and not loaded.module.training and loaded.source == "demo:tiny"
    with pytest.raises(na.ModelLoadError, match="no demo model 'nope'. Available: demo:tiny"):
        na.load_model("demo:nope")


def test_demo_models_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "napari_attribution.models.demo", None)
    with pytest.raises(na.ModelLoadError, match="demo models are not installed"):
        na.load_model("demo:vessel-seg")


# ------------------------------------------------------------------------------------------------ trust


def test_pickled_module_is_refused_without_trust_and_loads_with_it(tmp_path: Path) -> None:
    net = classifier(2)
    torch.save(net, tmp_path / "full.pt")
    with pytest.raises(na.ModelLoadError) as info:
        na.load_model(tmp_path / "full.pt")
    message = str(info.value)
    for part in ("pickled", "_nets.Classifier", "arbitrary code", "trust=True", "state_dict", "model.card.json"):
        assert part in message
    loaded = na.load_model(tmp_path / "full.pt", trust=True)
    assert isinstance(loaded.module, Classifier) and same_parameters(loaded.module, net)
    assert loaded.card.inferred


def test_a_factory_function_needs_trust(tmp_path: Path) -> None:
    card = {"factory": "_models_helpers:build_classifier", "kwargs": {"d": 2}, "weights": "random"}
    with pytest.raises(na.ModelLoadError, match="is a function.*trust=True"):
        na.load_model(card, allow_modules=["_models_helpers"])  # allowing the module does not allow its functions
    assert isinstance(na.load_model(card, trust=True).module, Classifier)
    with pytest.raises(na.ModelLoadError, match="trust=True"):
        na.load_model({"factory": "os:getcwd", "weights": "random"})


# ------------------------------------------------------------------------------------------------ errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(na.ModelLoadError, match="No model file or folder at .*nowhere.pt"):
        na.load_model(tmp_path / "nowhere.pt")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("scan.nii", b"\0" * 344 + b"n+1\0" + b"\0" * 200, "medical image"),
        ("weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 64, "Keras"),
        ("model.onnx", b"\x08\x07\x12\x07pytorch" + b"\0" * 64, "ONNX"),
        ("model.pt", b"hello, I am not a model", "not a PyTorch model file"),
        ("empty.pt", b"", "empty"),
    ],
)
def test_wrong_file_type(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(na.ModelLoadError, match=expected):
        na.load_model(tmp_path / name)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    torch.save(classifier(2).state_dict(), tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:300])
    with pytest.raises(na.ModelLoadError, match="damaged or truncated"):
        na.load_model(tmp_path / "cut.pt")


def test_checkpoint_without_a_card_says_how_to_write_one(tmp_path: Path) -> None:
    torch.save(classifier(2).state_dict(), tmp_path / "model.pt")
    with pytest.raises(na.ModelLoadError, match=r"weights only .*model.card.json.*factory"):
        na.load_model(tmp_path / "model.pt")


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        ({"factory": "no_such_package.nets:Net", **RANDOM}, r"cannot be imported .*pip install no_such_package"),
        ({"factory": "_nets:Clasifier", **RANDOM}, "has no 'Clasifier'. Did you mean Classifier"),
        ({"factory": "_nets:Classifier", "kwargs": {"classez": 2}, **RANDOM},
         "unknown 'classez' \\(did you mean 'classes'"),
        ({"factory": "monai:UNet", "kwargs": {**UNET_KWARGS, "strides": [2, 2, 2]}, **RANDOM},
         "Building the network .* failed"),
        ({"factory": "not a factory!", **RANDOM}, "must look like 'package.module:callable'"),
        ({"kwargs": {"d": 2}}, "has no 'factory'"),
    ],
)
def test_factory_errors(card: dict, expected: str) -> None:
    with pytest.raises(na.ModelLoadError, match=expected):
        na.load_model(card, allow_modules=[*OWN, "no_such_package"])


def test_weights_that_do_not_fit_name_the_keys(tmp_path: Path) -> None:
    torch.save(seeded(Classifier(2, classes=5)).state_dict(), tmp_path / "five.pt")
    with pytest.raises(na.ModelLoadError) as info:
        na.load_model({"factory": "_nets:Classifier", "kwargs": {"classes": 3}, "weights": str(tmp_path / "five.pt")},
                      allow_modules=OWN)
    assert "different shape: head.weight (file (5, 8), network (3, 8))" in str(info.value)
    torch.save(seeded(TinyUNet(2)).state_dict(), tmp_path / "unet.pt")
    with pytest.raises(na.ModelLoadError) as info:
        na.load_model({"factory": "_nets:Classifier", "weights": str(tmp_path / "unet.pt")}, allow_modules=OWN)
    message = str(info.value)
    assert "missing from the file: features.0.weight" in message
    assert "not in the network: enc.0.weight" in message and "more" in message


def test_missing_weights_file_named_by_a_card(tmp_path: Path) -> None:
    with pytest.raises(na.ModelLoadError, match="weights file .*gone.pt.* does not exist"):
        na.load_model({"factory": "_nets:Classifier", "weights": str(tmp_path / "gone.pt")}, allow_modules=OWN)


def test_bad_source_type_and_card_given_twice() -> None:
    with pytest.raises(na.ModelLoadError, match="Cannot load a model from a int"):
        na.load_model(3)  # type: ignore[arg-type]
    with pytest.raises(na.ModelLoadError, match="pass the card once"):
        na.load_model({"factory": "_nets:Classifier"}, card={"task": "classification"})


def test_folder_with_one_model_and_its_card(tmp_path: Path) -> None:
    net = classifier(2)
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    write_json(tmp_path / "net.card.json", {"factory": "_nets:Classifier"})
    assert same_parameters(na.load_model(tmp_path, allow_modules=OWN).module, net)
    (tmp_path / "other.pt").write_bytes(b"x")
    (tmp_path / "net.card.json").unlink()
    with pytest.raises(na.ModelLoadError, match="not a MONAI bundle"):
        na.load_model(tmp_path)


def test_loading_leaves_no_grad_flags_changed() -> None:
    loaded = na.load_model({"factory": "_nets:Classifier", "weights": "random"}, allow_modules=OWN)
    assert all(p.requires_grad for p in loaded.module.parameters())
    assert isinstance(loaded.module, nn.Module)
