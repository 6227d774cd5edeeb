"""The docks' jobs (Qt-free part): torch threads (all cores but one, configurable, the caller's setting restored also
after a failure or a cancel), the cost estimate's pass kinds, and the README walkthrough's run without a warning."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution.runs import threads as _threads
from napari_attribution.runs.jobs import (
    Estimate,
    ExplainRequest,
    FitRequest,
    _estimate,
    fit_job,
    pass_kinds,
    run_job,
)
from napari_attribution.runs.model_info import model_info
from napari_attribution.runs.threads import THREADS_ENV, job_thread_count, torch_threads

#: a thread count the tests set before a job, so that "restored" cannot pass by chance
CALLER = 3


@pytest.fixture
def caller_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(CALLER)
    yield CALLER
    torch.set_num_threads(before)


def seen_by_a_new_thread() -> int:
    """What a thread started now computes with (PyTorch starts new threads with the last value set anywhere)."""
    box: list[int] = []
    t = threading.Thread(target=lambda: box.append(torch.get_num_threads()))
    t.start()
    t.join()
    return box[0]


class Recording(torch.nn.Module):
    """A 3D classifier that records the torch threads it runs with, and can fail on purpose."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 2)
        self.threads: list[int] = []
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(torch.get_num_threads())
        if self.fail and x.requires_grad:  # the widget's probe runs without gradients; the job with
            raise RuntimeError("boom")
        return self.head(self.conv(x).relu().mean((2, 3, 4)))


def test_job_thread_count_all_cores_but_one_or_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    for cores, expected in [(16, 15), (2, 1), (1, 1)]:
        monkeypatch.setattr(_threads, "_cores", lambda cores=cores: cores)
        assert job_thread_count() == expected
    monkeypatch.setenv(THREADS_ENV, "6")
    assert job_thread_count() == 6 and job_thread_count(2) == 2  # a request beats the environment
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(na.ParameterError, match=THREADS_ENV):
        job_thread_count()
    assert job_thread_count(strict=False) == 1  # ignored (logged): all cores but one (of 1 patched core)
    with pytest.raises(na.ParameterError, match="positive whole number"):
        job_thread_count(0)


def test_run_job_computes_with_the_asked_threads_and_restores_the_callers(caller_threads: int) -> None:
    net = Recording()
    info = model_info(net, "recording net")
    img = np.random.default_rng(0).normal(size=(6, 8, 8)).astype(np.float32)
    net.threads.clear()
    out = run_job(ExplainRequest(model=info, image=img, source="img", methods=["saliency"], target=1, threads=2))
    assert out.status == "ok" and net.threads and set(net.threads) == {2}
    assert torch.get_num_threads() == caller_threads and seen_by_a_new_thread() == caller_threads


def test_run_job_reads_the_environment(caller_threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    net = Recording()
    info = model_info(net, "recording net")
    img = np.zeros((6, 8, 8), np.float32)
    monkeypatch.setenv(THREADS_ENV, "2")
    net.threads.clear()
    assert run_job(ExplainRequest(model=info, image=img, source="img", methods=["saliency"], target=1)).status == "ok"
    assert set(net.threads) == {2} and seen_by_a_new_thread() == caller_threads
    monkeypatch.setenv(THREADS_ENV, "-1")
    bad = run_job(ExplainRequest(model=info, image=img, source="img", methods=["saliency"], target=1))
    assert bad.status == "failed" and THREADS_ENV in bad.message


def test_threads_are_restored_after_a_failure_and_a_cancel(caller_threads: int) -> None:
    net = Recording(fail=True)
    info = model_info(net, "failing net")
    img = np.zeros((6, 8, 8), np.float32)
    failed = run_job(ExplainRequest(model=info, image=img, source="img", methods=["saliency"], target=1, threads=2))
    assert failed.status == "failed" and "boom" in failed.message and 2 in net.threads
    assert torch.get_num_threads() == caller_threads and seen_by_a_new_thread() == caller_threads
    ok_net = Recording()
    calls: list[int] = []

    def cancel() -> bool:  # stops the run at its second poll
        calls.append(torch.get_num_threads())
        return len(calls) > 1

    cancelled = run_job(ExplainRequest(model=model_info(ok_net, "net"), image=img, source="img",
                                       methods=["integrated_gradients"], target=1, threads=2), cancel=cancel)
    assert cancelled.status == "cancelled" and calls and set(calls) == {2}
    assert seen_by_a_new_thread() == caller_threads
    fitted = fit_job(FitRequest(model=info, data="/nonexistent", path="x.vebi.npz", threads=2))
    assert fitted.status == "failed" and seen_by_a_new_thread() == caller_threads


def test_overlapping_jobs_restore_the_first_setting_whatever_ends_first(caller_threads: int) -> None:
    """An Explain and a Compare job at once: the one that ends first must not restore the caller's setting under
    the other, and the last one restores it."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def job_a() -> None:
        with torch_threads(2):
            a_in.set()
            b_in.wait()
        a_out.set()

    def job_b() -> None:
        a_in.wait()
        with torch_threads(1):
            b_in.set()
            a_out.wait()
            seen["b after a ended"] = torch.get_num_threads()
            seen["new thread while b runs"] = seen_by_a_new_thread()

    threads = [threading.Thread(target=job_a), threading.Thread(target=job_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"b after a ended": 1, "new thread while b runs": 1}
    assert seen_by_a_new_thread() == caller_threads


# ------------------------------------------------------------------------------------------------ the estimate


def test_pass_kinds_and_the_estimate_formula() -> None:
    assert pass_kinds("saliency", {}, 1) == (0.0, 0.0)
    assert pass_kinds("grad_cam", {}, 1) == (0.0, 1.0)
    assert pass_kinds("occlusion", {}, 28) == (28.0, 0.0)
    assert pass_kinds("evidence", {"mode": "taylor"}, 2) == (1.0, 0.0)
    assert pass_kinds("integrated_gradients", {}, 8) == (0.0, 0.0)
    est = Estimate(passes=10, pass_seconds=0.9, forward_passes=6, forward_seconds=0.4, partial_passes=1,
                   other_seconds=2.0)
    assert est.seconds == pytest.approx(3 * 0.9 + 6 * 0.4 + math.sqrt(0.9 * 0.4) + 2.0)
    assert "6 of them forward only" in est.text() and "patch model" in est.text()


def test_estimate_times_a_forward_and_a_forward_backward() -> None:
    from napari_attribution.methods.perturbation import occlusion_windows

    info = model_info(Recording(), "net")
    img = np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)
    req = ExplainRequest(model=info, image=img, source="img", methods=["occlusion"], target=1)
    est = _estimate(req, img, 0, img.shape, cheap=0)
    assert est is not None and 0 < est.forward_seconds <= est.pass_seconds
    assert est.passes == est.forward_passes == occlusion_windows({}, img.shape).passes
    assert _estimate(ExplainRequest(model=info, image=img, source="img", methods=["saliency"]), img, 0,
                     img.shape) is None  # one pass: not worth timing


# ------------------------------------------------------------------------------------------------ README walkthrough


def test_readme_walkthrough_ends_without_a_warning() -> None:
    """The README's 60-second walkthrough: integrated gradients on the lesion phantom, target class 1, with the
    Explain dock's defaults (the dock sends no parameter it shows as default). With 50 fixed steps the map was
    36 % incomplete and the dock warned."""
    from napari_attribution._sample_data import lesion_ct

    scan = lesion_ct()[0][0]
    info = model_info(na.load_model("demo:lesion3d"), "demo:lesion3d")
    out = run_job(ExplainRequest(model=info, image=scan, source="lesion phantom CT",
                                 methods=["integrated_gradients"], target=1))
    assert out.status == "ok" and out.warnings == []
    comp = out.results["integrated_gradients"].extras["completeness"]
    assert comp["relative_error"] < 0.01 and comp["steps"] <= 128
    with pytest.warns(na.CompletenessWarning):  # the old default, for contrast
        na.explain(info.model, np.asarray(scan, np.float32), "integrated_gradients", 1, params={"steps": 50})
