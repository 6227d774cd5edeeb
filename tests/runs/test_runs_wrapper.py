"""The one "run a job, never raise" wrapper (``runs/wrapper.py``, issue 12): its order of failures, and the four
jobs that use it — Explain, fitting the relevant features, each check, loading a model in the dock — keep their
own words for a cancel, a library error, running out of memory, a file not written and anything else."""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import napari_attribution as na
from napari_attribution.runs import checks, jobs
from napari_attribution.runs.wrapper import Failures, never_raise

PACKAGE = Path(na.__file__).parent

SPEC = Failures("demo", cancelled="stopped", library=lambda e: f"lib: {e}", out_of_memory="oom",
                os_error=lambda e: f"os: {e}", unexpected=lambda e: f"odd ({type(e).__name__}): {e}")


def _outcome(err: BaseException, spec: Failures = SPEC) -> tuple[str, str]:
    def body() -> tuple[str, str]:
        raise err

    return never_raise(body, lambda status, message: (status, message), spec)


@pytest.mark.parametrize(("err", "expected"), [
    (na.Cancelled("c"), ("cancelled", "stopped")),
    (na.ParameterError("bad"), ("failed", "lib: bad")),  # a library error is a ValueError too: library first
    (na.ReaderError("unreadable"), ("failed", "lib: unreadable")),
    (MemoryError(), ("failed", "oom")),
    (PermissionError("read-only"), ("failed", "os: read-only")),
    (RuntimeError("boom"), ("failed", "odd (RuntimeError): boom")),
])
def test_each_failure_gets_its_words(err: BaseException, expected: tuple[str, str]) -> None:
    assert _outcome(err) == expected


def test_what_a_job_does_not_name_falls_through() -> None:
    plain = Failures("demo", unexpected=lambda e: f"odd ({type(e).__name__})")
    assert _outcome(na.Cancelled("stop now"), plain) == ("failed", "stop now")  # a cancel is a library error
    assert _outcome(MemoryError(), plain) == ("failed", "odd (MemoryError)")
    assert _outcome(OSError("disk"), plain) == ("failed", "odd (OSError)")


def test_the_body_s_outcome_passes_and_only_the_unexpected_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert never_raise(lambda: "done", lambda s, m: m, SPEC) == "done"
    with caplog.at_level(logging.DEBUG, logger="napari_attribution.runs.wrapper"):
        _outcome(na.ParameterError("bad"))
        assert caplog.records == []
        _outcome(RuntimeError("boom"))
    assert [r.getMessage() for r in caplog.records] == ["demo failed"] and caplog.records[0].exc_info


def test_an_interrupt_is_not_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt):
        _outcome(KeyboardInterrupt())


def _raising(err: BaseException) -> Any:
    def fn(*args: Any, **kwargs: Any) -> Any:
        raise err

    return fn


@pytest.mark.parametrize(("err", "status", "message"), [
    (na.Cancelled("c"), "cancelled", "Explain cancelled: no layer was added."),
    (na.TargetError("Pick a class."), "failed", "Pick a class."),
    (MemoryError(), "failed", "Out of memory. Explain a box (ROI) or a slice, or lower max_batch."),
    (OSError("disk"), "failed", "Explain failed (OSError): disk"),
    (RuntimeError("boom"), "failed", "Explain failed (RuntimeError): boom"),
])
def test_explain_keeps_its_words(monkeypatch: pytest.MonkeyPatch, err: BaseException, status: str,
                                 message: str) -> None:
    monkeypatch.setattr(jobs, "_run", _raising(err))
    got = jobs._run_job(SimpleNamespace(sweep_layers=False), None, None)  # type: ignore[arg-type]
    assert (got.status, got.message) == (status, message)


@pytest.mark.parametrize(("err", "status", "message"), [
    (na.Cancelled("c"), "cancelled", "Fitting the relevant features was cancelled: no file was written."),
    (na.ReaderError("No scans."), "failed", "Fitting the relevant features failed: No scans."),
    (MemoryError(), "failed", "Out of memory while fitting the relevant features; use fewer or smaller scans."),
    (OSError("disk full"), "failed", "The relevant features could not be saved: disk full"),
    (RuntimeError("boom"), "failed", "Fitting the relevant features failed (RuntimeError): boom"),
])
def test_fitting_keeps_its_words(monkeypatch: pytest.MonkeyPatch, err: BaseException, status: str,
                                 message: str) -> None:
    monkeypatch.setattr(jobs, "_fit_data", _raising(err))
    got = jobs._fit_job(SimpleNamespace(path="x.pt"), None, None)  # type: ignore[arg-type]
    assert (got.status, got.message) == (status, message)


def _check_request() -> Any:
    explained = SimpleNamespace(image=np.zeros((4, 4)), model=SimpleNamespace(model=None), attribution=None)
    return SimpleNamespace(explained=explained, checks=["deletion", "insertion"], params={})


def test_a_cancelled_check_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(na, "evaluate", _raising(na.Cancelled("c")))
    got = checks._check_job(_check_request(), None, None)
    assert (got.status, got.message) == ("cancelled", "Checks cancelled: nothing was stored.")


@pytest.mark.parametrize(("err", "why"), [
    (na.ParameterError("Pass the map.\nmore"), "Pass the map"),
    (MemoryError(), "out of memory; explain a box (ROI) and check that"),
    (KeyError("k"), "KeyError: 'k'"),
])
def test_a_failed_check_says_why(monkeypatch: pytest.MonkeyPatch, err: BaseException, why: str) -> None:
    monkeypatch.setattr(na, "evaluate", _raising(err))
    got = checks._check_job(_check_request(), None, None)
    assert got.status == "failed" and got.failed == {"deletion": why, "insertion": why}


def test_loading_a_model_in_the_dock_keeps_its_words() -> None:
    pytest.importorskip("napari")
    from napari_attribution._widget import _dock

    assert _dock._safe_load("/no/such/model.pt")[0] is None
    assert "model.pt" in _dock._safe_load("/no/such/model.pt")[1]
    unexpected = ("failed", "Cannot load the model (RuntimeError): boom")
    assert _dock.LOAD_FAILURES.describe(RuntimeError("boom")) == unexpected
    assert _dock.LOAD_FAILURES.describe(na.Cancelled("stopped")) == ("failed", "stopped")


@pytest.mark.parametrize(("path", "function"), [
    ("runs/jobs.py", "_run_job"), ("runs/jobs.py", "_fit_job"), ("runs/checks.py", "_check_job"),
    ("_widget/_dock.py", "_safe_load"),
])
def test_the_four_jobs_have_no_wrapper_of_their_own(path: str, function: str) -> None:
    """Only never_raise turns an error into an outcome: the jobs catch no Exception or Cancelled themselves."""
    tree = ast.parse((PACKAGE / path).read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    caught = [ast.unparse(h.type) for n in ast.walk(fn) if isinstance(n, ast.Try) for h in n.handlers if h.type]
    assert [c for c in caught if c.split(".")[-1] in ("Exception", "Cancelled", "AttributionError")] == []
    assert "never_raise" in ast.unparse(fn)
