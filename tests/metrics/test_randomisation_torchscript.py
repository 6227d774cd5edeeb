"""The model-randomisation check on TorchScript archives: the layers are found from the parameter names, so an
archive is randomised exactly as the Python network it was scripted from (same layers, same random values, same
correlations), on a copy: the user's archive is unchanged."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from _nets import Classifier, TinyUNet, image, seeded
from torch import nn

import napari_attribution as na
from napari_attribution.metrics.faithfulness import _cascade, _independent_copy


def _script(module: nn.Module) -> Any:
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(("net", "shape", "method", "target"), [
    (lambda: Classifier(2), (16, 16), "saliency", 1),
    (lambda: TinyUNet(3), (8, 8, 8), "input_x_gradient", na.targets.Predicted(1)),
])
def test_randomisation_on_a_scripted_net_equals_the_python_net(net: Any, shape: tuple[int, ...], method: str,
                                                                target: Any) -> None:
    python = seeded(net(), 4)
    scripted = _script(python)
    img = image(shape, 4)
    before = _state(scripted)
    att_py = na.explain(python, img, method, target)
    att_ts = na.explain(scripted, img, method, target)
    np.testing.assert_allclose(att_ts.data, att_py.data, rtol=1e-4, atol=1e-5)  # float rounding only
    got = na.evaluate(scripted, img, att_ts, "randomisation", max_layers=3)
    ref = na.evaluate(python, img, att_py, "randomisation", max_layers=3)
    names = [n for n, _ in got.details["per_layer"]]
    assert names == [n for n, _ in ref.details["per_layer"]] and len(names) == 3
    assert names[0] == [n for n, _ in _cascade(python)][0]  # from the output towards the input
    for (_, a), (_, b) in zip(got.details["per_layer"], ref.details["per_layer"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert got.value == pytest.approx(ref.value, abs=1e-4)
    assert got.value < 0.9  # the maps did change: the check ran on randomised weights
    after = scripted.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_the_cascade_groups_parameters_by_their_module_from_the_output() -> None:
    net = seeded(Classifier(2), 0)
    cascade = _cascade(_script(net))
    assert [name for name, _ in cascade] == ["head", "features.4", "features.2", "features.0"]
    assert [[p for p, _ in params] for _, params in cascade][0] == ["head.weight", "head.bias"]
    assert [name for name, _ in cascade] == [name for name, _ in _cascade(net)]


def test_the_copy_of_an_archive_has_parameters_of_its_own() -> None:
    scripted = _script(seeded(Classifier(2), 0))
    clone = _independent_copy(scripted)
    assert isinstance(clone, torch.jit.ScriptModule)
    for (name, p), (_, q) in zip(scripted.named_parameters(), clone.named_parameters(), strict=True):
        assert q.is_leaf and torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name
    with torch.no_grad():
        next(clone.parameters()).zero_()
    assert next(scripted.parameters()).abs().sum() > 0
