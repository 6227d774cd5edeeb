"""The card in effect in the Explain dock (real viewer): the card's grid / intensity / padding rules, which facts
were guessed from the network, what the input path will do to the picked image (the same steps as
``inputs.prepare`` on the real scan), the steps a run actually used, and fixed-size networks: the class count from a
test pass at the card's ``input_shape``, from the card, or learnt from the first run when the test pass fails."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from _widget_helpers import wait_idle, wait_model
from torch import Tensor, nn

import napari_attribution as na
from napari_attribution.inputs import prepare

pytestmark = pytest.mark.gui

SPACING = (2.0, 1.6, 2.2)
SHAPE = (90, 110, 80)


class Fixed64(nn.Module):
    """A one-logit 3D segmenter that refuses any input but (N, 1, 64, 64, 64), like a fixed-size export; its logit
    is the input's local mean minus 0.5 (after the card's [0, 1] rescaling: the bright blob is the foreground)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.head = nn.Conv3d(4, 1, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0].fill_(1.0 / 27)
            self.conv.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[0, 0] = 1.0
            self.head.bias.fill_(-0.5)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[2] != 64 or x.shape[3] != 64 or x.shape[4] != 64:
            raise RuntimeError("this network takes (N, 1, 64, 64, 64) only")
        return self.head(torch.relu(self.conv(x)))


class EvenOnly(nn.Module):
    """Two classes; one pooling and a skip connection, so odd sizes fail (``Sizes of tensors must match``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        down = torch.relu(self.conv(nn.functional.max_pool3d(x, 2)))
        return self.head(torch.cat([nn.functional.interpolate(down, scale_factor=2.0), x], 1))


def _scripted() -> Any:
    torch.manual_seed(0)
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit.script; users still bring such archives
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(Fixed64().eval())


def _card(**kw: Any) -> na.ModelCard:
    base: dict[str, Any] = dict(spatial_dims=3, in_channels=1, input_shape=(64, 64, 64), task="segmentation",
                                class_names=("brain",), preprocess={"percentile": [0.5, 99.5]})
    base.update(kw)
    return na.ModelCard(**base)


@pytest.fixture
def mri() -> np.ndarray:
    """A smooth anisotropic stand-in volume (values like an MRI's: 0 - 1000)."""
    rng = np.random.default_rng(3)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    blob = 800.0 * np.exp(-(z**2 + y**2 + x**2) * 3.0)
    return (blob + 20.0 * rng.random(SHAPE)).astype(np.float32)


@pytest.fixture
def mri_dock(make_napari_viewer: Any, qtbot: Any, mri: np.ndarray) -> Any:
    from napari_attribution._widget import ExplainWidget

    viewer = make_napari_viewer()
    viewer.add_image(mri, name="mri", scale=SPACING)
    widget = ExplainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Explain")
    wait_model(qtbot, widget)
    return widget


def _classes(dock: Any) -> list[str]:
    return [dock.target.k1.itemText(i) for i in range(dock.target.k1.count())]


def test_card_in_effect_and_the_plan_for_the_image(mri_dock: Any, qtbot: Any, mri: np.ndarray,
                                                   notes: list[Any]) -> None:
    dock = mri_dock
    card = _card()
    dock.set_model(na.LoadedModel(_scripted(), card), source="brain_unet64.ts")
    view = dock.card_view
    text = view.text()
    assert view.isVisibleTo(dock)
    assert "Card in effect (from the card): input shape 64x64x64 (scan resized to it)" in text
    assert "percentiles [0.5, 99.5] clipped and rescaled to [0, 1]" in text
    assert "Nothing guessed" in text and "failed" not in text
    # what will be done to the picked image: the input path's own steps on the real scan and its geometry
    expected = list(prepare(mri, na.Geometry(spacing=SPACING, origin=(0.0, 0.0, 0.0)), card).steps)
    assert view.plan == expected
    assert expected[-1] == "resized (90, 110, 80) to the model's input shape (64, 64, 64)"
    assert f"For 'mri': {'; '.join(expected)}." in text
    tip = view.toolTip()
    assert "input shape: 64x64x64 — given" in tip and "classes: 0: brain — given" in tip
    # the test pass ran at the card's input shape: one class, "0: brain" (not "class 1" and ten classes)
    info = dock.model_info
    assert info.probe_shape == (64, 64, 64) and not info.probe_error and info.n_classes == 1
    assert _classes(dock) == ["0: brain"]
    # an image the model cannot take: said before any run, in the run's own words
    flat = dock.viewer.add_image(np.zeros((64, 64), np.float32), name="flat")
    dock.image.select(flat)
    assert view.plan is None and "'flat' does not fit: An image of shape (64, 64)" in view.text()
    dock.image.select(dock.viewer.layers["mri"])
    assert view.plan == expected
    # after a run, the steps actually used are in the result text
    dock.target.set_kind("predicted region of class")
    dock.set_method("saliency")
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    out = dock.last_outcome
    assert out.status == "ok", out.message
    att = next(iter(out.results.values()))
    assert att.extras["preprocessing"] == expected
    assert dock.input_used.text() == f"Input used (the network saw (64, 64, 64)): {'; '.join(expected)}."
    assert not [n for n in notes if n[0] == "error"]


def test_guessed_facts_are_named(mri_dock: Any) -> None:
    dock = mri_dock
    # a card with the input shape but no task or classes: the test pass at 64^3 tells them, marked as guessed
    card = na.ModelCard(input_shape=(64, 64, 64))
    dock.set_model(na.LoadedModel(_scripted(), card), source="fixed.ts")
    info = dock.model_info
    assert info.task == "segmentation" and info.n_classes == 1
    assert {"dimensions", "input channels", "task", "class count"} <= set(info.guessed)
    text = dock.card_view.text()
    assert "Guessed from the network: dimensions, input channels, task, class count (test pass at 64x64x64)" in text
    tip = dock.card_view.toolTip()
    assert "task: segmentation — guessed (test pass at 64x64x64)" in tip and "input shape: 64x64x64 — given" in tip
    # a plain module with no card at all: the whole card is a guess
    dock.set_model(EvenOnly(), source="even only")
    assert "(guessed: no card)" in dock.card_view.text()
    assert "the scan's own grid (no spacing or input shape)" in dock.card_view.text()
    assert "output: logits — guessed" in dock.card_view.toolTip()


def test_fixed_size_network_without_card_says_class_count_unknown(mri_dock: Any, qtbot: Any,
                                                                 notes: list[Any]) -> None:
    dock = mri_dock
    dock.set_model(_scripted(), source="fixed.ts")
    info = dock.model_info
    assert info.n_classes is None and info.task is None and "64, 64, 64" in info.probe_error
    assert "class count unknown until the first run" in dock.model_status.text()
    text = dock.card_view.text()
    assert "The test pass at 32x32x32 failed" in text and "needs the card's input_shape" in text
    assert "unknown until the first run" in dock.target.k1.toolTip()
    # the run on the 90x110x80 scan fails before computing, with the error naming input_shape
    dock.set_method("saliency")
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    assert dock.last_outcome.status == "failed" and "input_shape" in dock.last_outcome.message
    assert info.n_classes is None
    # the card's num_classes stands when the test pass fails
    dock.set_model(na.LoadedModel(_scripted(), na.ModelCard(num_classes=1, task="segmentation")), source="k.ts")
    assert dock.model_info.n_classes == 1 and _classes(dock) == ["class 0"]
    assert "class count from the card" in dock.card_view.text()


def test_class_count_learnt_from_the_first_run(make_napari_viewer: Any, qtbot: Any, notes: list[Any]) -> None:
    from napari_attribution._widget import ExplainWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((64, 64, 64)).astype(np.float32), name="cube")
    dock = ExplainWidget(viewer)
    qtbot.addWidget(dock)
    wait_model(qtbot, dock)
    torch.manual_seed(0)
    dock.set_model(Fixed64().eval(), source="fixed python net")  # takes 64^3: the 32^3 test pass fails
    info = dock.model_info
    assert info.n_classes is None and info.layers == []
    assert "class count unknown until the first run" in dock.model_status.text()
    dock.set_method("saliency")
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    out = dock.last_outcome
    assert out.status == "ok", out.message
    att = next(iter(out.results.values()))
    assert att.extras["output_channels"] == 1
    assert info.n_classes == 1 and info.task == "segmentation" and info.classes_from_run
    assert "unknown" not in dock.model_status.text() and "segmentation" in dock.model_status.text()
    assert _classes(dock) == ["class 0"]
    assert "predicted region of class" in [dock.target.kind.itemText(i) for i in range(dock.target.kind.count())]
    assert "class count 1 learnt from the first run" in dock.card_view.text()
    assert dock.input_used.text() == "Input used: the scan as it is, on its own grid."
    assert not [n for n in notes if n[0] == "error"]


def test_padding_found_by_a_trial_pass_is_shown(make_napari_viewer: Any, qtbot: Any, notes: list[Any]) -> None:
    from napari_attribution._widget import ExplainWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).random((15, 16, 17)).astype(np.float32), name="odd")
    dock = ExplainWidget(viewer)
    qtbot.addWidget(dock)
    wait_model(qtbot, dock)
    torch.manual_seed(0)
    dock.set_model(EvenOnly().eval(), source="even only")
    assert dock.card_view.plan == []
    assert "For 'odd': fed as it is, (15, 16, 17)." in dock.card_view.text()
    dock.set_method("saliency")
    dock.target.set_kind("whole output of class")
    dock.run(confirm=False)
    wait_idle(qtbot, dock)
    out = dock.last_outcome
    assert out.status == "ok", out.message
    padded = ("padded (15, 16, 17) to (16, 16, 18) (multiple of 2: the network failed unpadded)")
    att = next(iter(out.results.values()))
    assert att.extras["preprocessing"] == [padded]
    assert dock.input_used.text() == f"Input used (the network saw (16, 16, 18)): {padded}."
    # the next run will pad the same way: the plan for the image says so now
    assert dock.card_view.plan is not None and len(dock.card_view.plan) == 1
    assert dock.card_view.plan[0].startswith("padded (15, 16, 17) to (16, 16, 18)")


def test_card_editor_sets_the_input_shape(mri_dock: Any, notes: list[Any]) -> None:
    dock = mri_dock
    dock.set_model(_scripted(), source="fixed.ts")
    assert dock.model_info.n_classes is None
    editor = dock.card_editor
    editor.setChecked(True)
    editor.input_shape.setText("64, 64, 64")
    editor.task.setCurrentText("segmentation")
    editor.class_names.setText("brain")
    editor.apply()
    info = dock.model_info
    assert info.card.input_shape == (64, 64, 64) and info.n_classes == 1 and not info.probe_error
    assert dock.card_view.plan == ["resized (90, 110, 80) to the model's input shape (64, 64, 64)"]
    # both a spacing and an input shape: one error that names input_shape, and the model stays
    editor.spacing.setText("1, 1, 1")
    editor.apply()
    assert dock.model_info is info
    assert any(lvl == "error" and "input_shape" in msg for lvl, msg in notes)
