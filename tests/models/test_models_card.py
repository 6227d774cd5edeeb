"""ModelCard: validation with clear messages, dict / JSON / YAML round trips, and inference of a card."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _nets import Classifier, TinyUNet, seeded
from torch import nn

import napari_attribution as na
from napari_attribution.models import ModelCard, infer_card

FULL = ModelCard(
    task="segmentation", spatial_dims=3, in_channels=2, class_names=("background", "liver", "tumour"),
    output="probabilities", background=0, default_layer="model.1", factory="monai.networks.nets:UNet",
    kwargs={"spatial_dims": 3, "channels": [4, 8]}, weights="model.pt",
    preprocess={"window": [-100, 300], "pad_to_multiple": 16}, patch_size=(64, 96, 96), spacing=(2.0, 0.8, 0.8),
    num_classes=3, name="liver", description="test card",
)


def test_existing_defaults_still_work() -> None:
    card = ModelCard()
    assert card.task is None and card.output == "logits" and card.background == 0 and card.kwargs == {}
    assert not card.inferred and ModelCard(inferred=True).inferred


def test_dict_round_trip_and_json_ready() -> None:
    data = FULL.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["class_names"] == ["background", "liver", "tumour"] and data["spacing"] == [2.0, 0.8, 0.8]
    assert ModelCard.from_dict(data) == FULL
    minimal = ModelCard(background=None, inferred=True)
    assert minimal.to_dict() == {"output": "logits", "background": None, "inferred": True}
    assert ModelCard.from_dict(minimal.to_dict()) == minimal


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_file_round_trip_keeps_weights_relative(tmp_path: Path, suffix: str) -> None:
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    card = FULL.__class__(**{**FULL.__dict__, "weights": str(tmp_path / "w" / "model.pt")})
    path = card.save(tmp_path / f"model.card{suffix}")
    text = path.read_text()
    assert "w/model.pt" in text and str(tmp_path) not in text
    assert ModelCard.from_file(path) == card
    with pytest.raises(FileExistsError, match="overwrite=True"):
        card.save(path)
    card.save(path, overwrite=True)


def test_yaml_without_pyyaml_gives_an_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.card.yaml").write_text("task: classification\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(na.ModelLoadError, match="PyYAML .* pip install pyyaml .* JSON"):
        ModelCard.from_file(tmp_path / "m.card.yaml")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"task": "clasification"}, "'task' must be one of .* \\(did you mean 'classification'\\?\\)"),
        ({"output": "softmax"}, "'output' must be one of 'logits', 'probabilities'"),
        ({"spatial_dims": 4}, "'spatial_dims' must be 2 or 3"),
        ({"in_channels": 0}, "'in_channels' must be at least 1"),
        ({"in_channels": 1.5}, "'in_channels' must be a whole number"),
        ({"class_names": ["a", "b"], "num_classes": 3}, "names 2 classes but says num_classes=3"),
        ({"class_names": "ab"}, "'class_names' must be a list"),
        ({"background": 2, "class_names": ["a", "b"]}, "'background' is 2 but the model has 2 classes"),
        ({"spacing": [1.0, -1.0, 1.0]}, "'spacing' must hold positive sizes in mm"),
        ({"spatial_dims": 3, "spacing": [1.0, 1.0]}, "3 values for a 3D model"),
        ({"spatial_dims": 2, "patch_size": [64, 64, 64]}, "'patch_size' .* needs 2 values"),
        ({"kwargs": [1, 2]}, "'kwargs' must be a dictionary"),
        ({"preprocess": {"windw": [0, 1]}}, "Unknown preprocess key 'windw' \\(did you mean 'window'\\?\\)"),
        ({"preprocess": {"window": [300, -100]}}, "low < high"),
        ({"preprocess": {"window": [0, 1], "zscore": True}}, "only one of 'window', 'percentile' and 'zscore'"),
        ({"preprocess": {"mask_nonzero": True}}, "'mask_nonzero' only applies to 'zscore'"),
        ({"preprocess": {"pad_to_multiple": 0}}, "'pad_to_multiple' must be a positive integer"),
        ({"preprocess": {"scale_to": [0, 1]}}, "'scale_to' needs a 'window' or a 'percentile'"),
        ({"preprocess": {"percentile": [1, 101]}}, "must lie in \\[0, 100\\]"),
    ],
)
def test_invalid_values_raise_clear_errors(fields: dict, expected: str) -> None:
    with pytest.raises(na.ModelLoadError, match=expected):
        ModelCard.from_dict(fields)


def test_unknown_field_suggests_the_right_one() -> None:
    with pytest.raises(na.ModelLoadError, match="Unknown model card field 'spacng' \\(did you mean 'spacing'\\?\\)"):
        ModelCard.from_dict({"spacng": [1, 1, 1]})


def test_class_names_as_monai_channel_def() -> None:
    card = ModelCard.from_dict({"class_names": {"1": "spleen", "0": "background"}})
    assert card.class_names == ("background", "spleen")
    with pytest.raises(na.ModelLoadError, match="0..K-1 without gaps"):
        ModelCard.from_dict({"class_names": {"0": "a", "2": "b"}})


def test_bad_card_files(tmp_path: Path) -> None:
    (tmp_path / "a.card.json").write_text('{"task": "classification",\n "spacing": [1, 1,]}')
    with pytest.raises(na.ModelLoadError, match="not valid JSON: .* line 2"):
        ModelCard.from_file(tmp_path / "a.card.json")
    (tmp_path / "b.card.json").write_text("[1, 2]")
    with pytest.raises(na.ModelLoadError, match="must hold one object of card fields"):
        ModelCard.from_file(tmp_path / "b.card.json")
    with pytest.raises(na.ModelLoadError, match="does not exist"):
        ModelCard.from_file(tmp_path / "none.card.json")


# ------------------------------------------------------------------------------------------------ inference


def test_infer_card_without_a_shape_is_a_guess_of_dims_and_channels() -> None:
    card = infer_card(seeded(Classifier(3, in_ch=2)))
    assert card.inferred and card.spatial_dims == 3 and card.in_channels == 2 and card.task is None


@pytest.mark.parametrize(
    ("net", "shape", "task", "k"),
    [(Classifier(2, classes=4), (16, 16), "classification", 4), (TinyUNet(3, classes=3), (8, 8, 8), "segmentation", 3)],
)
def test_infer_card_probes_task_and_class_count(net: nn.Module, shape: tuple, task: str, k: int) -> None:
    net = seeded(net).train()
    before = {n: p.clone() for n, p in net.state_dict().items()}
    card = infer_card(net, spatial_shape=shape)
    assert card.inferred and (card.task, card.num_classes) == (task, k)
    assert net.training and all(m.training for m in net.modules())  # left as it was
    assert all(torch.equal(before[n], p) for n, p in net.state_dict().items())


def test_infer_card_keeps_known_fields_and_tolerates_a_failing_probe() -> None:
    net = seeded(Classifier(2))
    known = ModelCard(task="segmentation", num_classes=3)
    assert infer_card(net, known, spatial_shape=(16, 16)).task == "segmentation"
    assert not infer_card(net, known).inferred
    bad = infer_card(net, spatial_shape=(16, 16, 16))  # a 2D net on a 3D shape: the probe fails
    assert bad.task is None and bad.num_classes is None and bad.spatial_dims == 2


def test_infer_card_sees_a_final_softmax() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Softmax(dim=1))
    card = infer_card(net, spatial_shape=(4, 4))
    assert card.output == "probabilities" and card.task == "segmentation" and card.num_classes == 2
