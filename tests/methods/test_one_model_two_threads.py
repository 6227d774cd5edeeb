"""Two threads explaining with one model get the serial result and leave the model as it was (issue 11).

``model_guard`` switches the model itself to eval mode and freezes its parameters for a run; without a per-model
lock a second thread's run interleaved with those switches (BatchNorm then ran in train mode: other maps, running
statistics overwritten for good) and with the first run's layer hooks (a raw ``RuntimeError`` from
``layer_conductance``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from _nets import image
from torch import nn

import napari_attribution as na


class Pause(nn.Identity):
    """Sleeps 1 ms in every forward pass: the other thread runs meanwhile, so two runs interleave in every round
    (as two longer runs on a real network do), not by chance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.001)
        return x


class BatchNormNet(nn.Module):
    """conv -> BatchNorm -> ReLU twice -> GAP -> linear: a network whose train mode changes its output and its
    running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), Pause(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _net() -> BatchNormNet:
    torch.manual_seed(0)
    net = BatchNormNet()
    with torch.no_grad():  # running statistics far from a batch's own, so train mode changes the maps visibly
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return net


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _in_threads(run: Callable[[], np.ndarray], threads: int = 2, rounds: int = 4) -> tuple[list[np.ndarray],
                                                                                           list[BaseException]]:
    maps: list[np.ndarray] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(rounds):
            try:
                maps.append(run())
            except BaseException as err:  # noqa: BLE001 - every failure is a finding
                errors.append(err)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in pool), "a thread did not finish (deadlock?)"
    return maps, errors


@pytest.mark.parametrize("method,layer,params", [
    ("integrated_gradients", None, {"steps": 24, "max_batch": 1}),
    ("layer_conductance", "features.4", {"steps": 24, "max_batch": 1}),
])
@pytest.mark.parametrize("training", [True, False], ids=["train-mode", "eval-mode"])
def test_two_threads_on_one_model_equal_the_serial_run(method: str, layer: str | None, params: dict[str, Any],
                                                       training: bool) -> None:
    net = _net().train(training)
    img = image((24, 24))
    before = _state(net)
    serial = na.explain(net, img, method, 1, layer=layer, params=params).data
    assert net.training is training
    assert all(torch.equal(before[k], v) for k, v in _state(net).items())

    maps, errors = _in_threads(lambda: na.explain(net, img, method, 1, layer=layer, params=params).data)
    assert not errors, errors
    assert len(maps) == 8
    for m in maps:
        np.testing.assert_array_equal(m, serial)
    after = _state(net)
    for k, v in before.items():  # BatchNorm running statistics (and every weight) unchanged
        assert torch.equal(after[k], v), k
    assert net.training is training
    assert all(p.requires_grad for p in net.parameters())


def test_two_threads_evaluate_and_explain_on_one_model() -> None:
    """A metric's passes switch the model too: evaluate in one thread and explain in the other take turns."""
    net = _net().train(True)
    img = image((24, 24))
    before = _state(net)
    att = na.explain(net, img, "saliency", 1)
    serial = na.evaluate(net, img, att, "deletion", steps=16).value
    results: list[Any] = []
    errors: list[BaseException] = []
    start, done = threading.Barrier(2), threading.Event()

    def metric() -> None:
        start.wait()
        try:
            for _ in range(3):
                results.append(na.evaluate(net, img, att, "deletion", steps=16).value)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)
        finally:
            done.set()

    def explain() -> None:  # explains for as long as the metric runs
        start.wait()
        try:
            for _ in range(200):
                na.explain(net, img, "integrated_gradients", 1, params={"steps": 8, "max_batch": 1})
                if done.is_set():
                    break
                time.sleep(0.002)  # between runs (a user's loop, a GUI's next job)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    pool = [threading.Thread(target=metric), threading.Thread(target=explain)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not errors, errors
    assert results == [serial] * 3
    assert all(torch.equal(_state(net)[k], v) for k, v in before.items())
    assert net.training


def test_a_run_waiting_for_the_model_can_be_cancelled_and_says_it_waits() -> None:
    from napari_attribution.methods._lock import model_lock

    net = _net().eval()
    img = image((24, 24))
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with model_lock(net):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        messages: list[str] = []
        polls = []

        def cancel() -> bool:
            polls.append(1)
            return len(polls) >= 3

        with pytest.raises(na.Cancelled, match="waited for another run on the same model"):
            na.explain(net, img, "saliency", 1, cancel=cancel, progress=lambda d, t, m: messages.append(m))
        assert messages == ["waiting for another run on the same model to finish"]
    finally:
        release.set()
        holder.join(30)
    # the same thread may take the lock again (explain inside a metric inside a run)
    with model_lock(net), model_lock(net):
        assert na.explain(net, img, "saliency", 1).data.shape == (24, 24)


def test_model_guard_on_one_model_waits_for_another_threads_guard() -> None:
    """Every pass that switches the model (also outside explain / evaluate: fitting vebi's features, trial passes of
    the input path) goes through model_guard, which takes the model's lock: a second thread's guard waits, so it
    never finds the model in eval mode, records nothing and leaves it switched back under the first one's feet."""
    from napari_attribution.methods._hooks import model_guard

    net = _net().train(True)
    inside, release, entered = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with model_guard(net):
            inside.set()
            release.wait(30)

    def second() -> None:
        with model_guard(net):
            entered.set()
            time.sleep(0.05)
            seen.append(net.training)

    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(30)
    b = threading.Thread(target=second)
    b.start()
    try:
        assert not entered.wait(0.3), "the second guard did not wait for the first"
    finally:
        release.set()
        a.join(30)
        b.join(30)
    assert entered.is_set() and seen == [False]
    assert net.training and all(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())
