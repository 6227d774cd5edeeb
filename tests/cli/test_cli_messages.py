"""Command-line messages: mistakes that need no model (a device this computer lacks, an output name that cannot be
written, a .npy scan that holds no numbers, a malformed target) are one ``error:`` line before any work starts;
the library's advice reaches the command line in its own syntax (``--target region:k:MASK.nii.gz``, not
``Region(k, mask)``); warnings never glue onto the progress line; ``methods`` fits 100 columns."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution.cli import main
from napari_attribution.io import Geometry, write_nifti


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model counts as work: a check that comes first never gets here."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the mistake was reported")

    monkeypatch.setattr(na, "load_model", refuse)


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    path = tmp_path / "scan.npy"
    np.save(path, np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    return path


def one_error_line(err: str) -> str:
    """The one ``error:`` line (no traceback, nothing else)."""
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def explain(scan: Path, out: Path, *extra: str) -> int:
    return main(["explain", "--model", "demo:vessel-seg", "--image", str(scan), "--method", "saliency",
                 "--method", "integrated_gradients", "-o", str(out), "-q", *extra])


# ---- 1. one error line before any work ---------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "says"), [
    ("bogus", "--device 'bogus' is not a device name. Use cpu, cuda, cuda:1 or mps"),
    ("cuda", "--device cuda: this PyTorch is built without CUDA. Use --device cpu"),
    ("cuda:0", "--device cuda:0: this PyTorch is built without CUDA"),
    ("meta", "--device meta: napari-attribution computes on cpu, cuda or mps"),
])
def test_a_device_this_computer_lacks_is_one_error_line_before_the_model_loads(
        device: str, says: str, scan: Path, tmp_path: Path, no_model: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    monkeypatch.setattr(torch.version, "cuda", None)
    assert explain(scan, tmp_path / "heat.nii.gz", "--device", device) == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert not list(tmp_path.glob("heat*"))


def test_a_gpu_number_past_the_last_gpu_is_refused(scan: Path, tmp_path: Path, no_model: None,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert explain(scan, tmp_path / "heat.nii.gz", "--device", "cuda:2") == 2
    assert "this computer has 2 CUDA GPU(s), numbered 0 to 1" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("name", "says"), [
    ("heat.txt", "-o {out}: a heatmap is written as NIfTI (.nii.gz or .nii, aligned with the scan) or NumPy (.npy)"),
    ("heat", "e.g. -o {dir}/heat.nii.gz"),
    ("folder", "-o {out} is a folder; explain writes one heatmap file, e.g. -o {out}/heat.nii.gz"),
])
def test_an_output_name_that_cannot_be_written_is_refused_before_any_method_runs(
        name: str, says: str, scan: Path, tmp_path: Path, no_model: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    # before: -o heat.txt with one method failed in write_nifti after the run (a traceback); with two methods it
    # silently wrote heat.txt_saliency.nii.gz
    (tmp_path / "folder").mkdir()
    out = tmp_path / name
    assert explain(scan, out) == 2
    assert says.format(out=out, dir=tmp_path) in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "scan.npy"]


def _npy_with_header(path: Path, shape: tuple[int, ...], dtype: str, data: bytes = b"") -> None:
    """A .npy file whose header declares ``shape`` and ``dtype`` followed by ``data`` (maybe far too short)."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": dtype, "fortran_order": False, "shape": shape})
        fh.write(data)


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
     "holds Python objects (dtype object), not numbers; reading them would unpickle code, so it is refused"),
    (lambda p: np.save(p, np.full((4, 4, 4), "a")), "holds text (<U1), not numbers"),
    (lambda p: np.save(p, np.zeros((4, 4, 4), complex)), "holds complex numbers (complex128); save the magnitude"),
    (lambda p: np.save(p, np.zeros((0, 16, 16), np.float32)), "is empty (shape (0, 16, 16))"),
    (lambda p: np.save(p, np.zeros(5, np.float32)), "has shape (5,): an image has 2 or 3 spatial axes"),
    (lambda p: p.write_bytes(b"not a numpy file at all"), "is not a readable .npy file"),
    # 66 bytes that declare 32 GiB: refused from the header, nothing allocated
    (lambda p: _npy_with_header(p, (2048, 2048, 2048), "<f4", b"\0" * 10),
     "is truncated: its header declares shape (2048, 2048, 2048) of float32 (34359738368 bytes) but it holds 10"),
    (lambda p: os.mkfifo(p), "is not a regular file"),  # np.load on a pipe would block for ever
    (lambda p: None, "does not exist"),
])
def test_a_npy_scan_without_numbers_is_one_error_line_before_the_model_loads(
        make: object, says: str, tmp_path: Path, no_model: None, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npy"
    make(bad)  # type: ignore[operator]
    assert explain(bad, tmp_path / "heat.nii.gz") == 2
    assert f"error: The scan {bad} {says}" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(("target", "says"), [
    ("voxel:1:a,b,c", "Cannot read the target 'voxel:1:a,b,c': write it as voxel:k:z,y,x"),
    ("class:1:prob", "write it as class:k, class:k:logit or class:k:probability, e.g. --target class:1:probability"),
    ("lesion:1", "Unknown target 'lesion:1'. --target takes 3, class:3"),
    ("1.5", "Cannot read the target '1.5': --target takes 3, class:3"),
    ("region:1:{tmp}/missing.nii.gz", "The mask {tmp}/missing.nii.gz named by --target"),
])
def test_a_malformed_target_is_refused_before_the_model_loads(target: str, says: str, scan: Path, tmp_path: Path,
                                                              no_model: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert explain(scan, tmp_path / "heat.nii.gz", "--target", target.format(tmp=tmp_path)) == 2
    assert says.format(tmp=tmp_path) in one_error_line(capsys.readouterr().err)


def test_parse_target_reads_every_form(tmp_path: Path) -> None:
    from napari_attribution._cli_run import parse_target
    from napari_attribution.targets import Class, Contrast, ErrorRegion, Predicted, Voxel

    mask = np.zeros((4, 5, 6), bool)
    mask[1, 2, 3] = True
    np.save(tmp_path / "m.npy", mask)
    shape = (4, 5, 6)
    assert parse_target("2", shape) == 2 and parse_target("auto", shape) is None
    assert parse_target("class:2", shape) == Class(2, None)  # the method's natural score, as in the API
    assert parse_target("class:2:probability", shape) == Class(2, "probability")
    assert parse_target("predicted:1", shape) == Predicted(1)
    assert parse_target("voxel:1:3,4,5", shape) == Voxel(1, (3, 4, 5))
    contrast = parse_target(f"contrast:1,0:{tmp_path}/m.npy", shape)
    assert isinstance(contrast, Contrast) and (contrast.k1, contrast.k2) == (1, 0)
    np.testing.assert_array_equal(contrast.mask, mask)
    err = parse_target(f"error:1:{tmp_path}/m.npy:fn", shape)
    assert isinstance(err, ErrorRegion) and err.kind == "fn"
    with pytest.raises(na.TargetError, match=r"gives 2 voxel coordinate\(s\), but the scan has 3 spatial axes"):
        parse_target("voxel:1:3,4", shape)


def test_batch_checks_the_device_before_any_scan_or_cluster(scan: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["batch", "--model", "demo:vessel-seg", "--images", str(scan.parent), "--method", "saliency",
               "-o", str(tmp_path / "out"), "--local", "-q", "--device", "bogus"])
    assert rc == 2 and "--device 'bogus' is not a device name" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_batch_scan_without_numbers_is_reported_and_the_others_run(tmp_path: Path) -> None:
    from napari_attribution._cli_run import run_batch

    (tmp_path / "scans").mkdir()
    np.save(tmp_path / "scans" / "a.npy", np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    np.save(tmp_path / "scans" / "b.npy", np.array([None, None], dtype=object), allow_pickle=True)
    rows = {Path(r["scan"]).name: r for r in run_batch("demo:vessel-seg", str(tmp_path / "scans"), ["saliency"],
                                                        str(tmp_path / "out"), local=True, log=lambda m: None)}
    assert rows["a.npy"]["status"] == "ok"
    assert rows["b.npy"]["status"].startswith("error: ReaderError: The scan") and "Python objects" in \
        rows["b.npy"]["status"]


def test_an_os_error_is_one_error_line(scan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    from napari_attribution import _cli_run

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "heat.nii.gz")

    monkeypatch.setattr(_cli_run, "explain_file", full)
    assert explain(scan, tmp_path / "heat.nii.gz") == 2
    assert one_error_line(capsys.readouterr().err) == "error: heat.nii.gz: No space left on device\n"


    class Both(na.AttributionError, OSError):
        """A library error that is also an OSError (the atomic writer's): its own message is kept."""

        def __str__(self) -> str:
            return str(self.args[0])

    def own(*args: object, **kwargs: object) -> None:
        err = Both("Cannot write heat.json: no space left. Nothing was written (or pass overwrite=True).")
        err.filename, err.strerror = "heat.json", os.strerror(errno.ENOSPC)
        raise err

    monkeypatch.setattr(_cli_run, "explain_file", own)
    assert explain(scan, tmp_path / "heat.nii.gz") == 2
    assert one_error_line(capsys.readouterr().err) == \
        "error: Cannot write heat.json: no space left. Nothing was written (or pass --overwrite).\n"


# ---- 2. command-line syntax; warnings on a line of their own ------------------------------------------------------


@pytest.mark.parametrize(("python", "cli"), [
    ("Use a class index, Class(k) or Contrast(k1, k2).", "Use a class index (--target k) or --target contrast:k1,k2."),
    ("Use Class(3) or Class(k, score=\"probability\").", "Use --target 3 or --target class:k:probability."),
    ("the region (Predicted(1))", "the region (--target predicted:1)"),
    ("Pick a region (Region(k, mask)) or a voxel (Voxel(k, index)) instead.",
     "Pick a region (--target region:k:MASK.nii.gz) or a voxel (--target voxel:k:z,y,x) instead."),
    ("Voxel(1, (4, 6, 6))", "--target voxel:1:4,6,6"),
    ("Pass a mask (Contrast(k1, k2, mask=...)) where", "Pass a mask (--target contrast:k1,k2:MASK.nii.gz) where"),
    ("ErrorRegion(k, truth)", "--target error:k:TRUTH.nii.gz:fp"),
    ("ErrorRegion(1, truth, kind=\"fn\")", "--target error:1:TRUTH.nii.gz:fn"),
    ("Region targets need a segmentation output", "Targets such as --target region:k:MASK.nii.gz need a segmentation "
     "output"),
    # the library already gave the command-line form: only it is kept
    ("its only class is class 0. Use Predicted(0) (command line: --target predicted:0).",
     "its only class is class 0. Use --target predicted:0."),
    ("load it with load_model(..., trust=True). Or", "load it with --trust. Or"),
    ("Load the bundle with trust=True if", "Load the bundle with --trust if"),
    ("already exists; pass overwrite=True to replace it.", "already exists; pass --overwrite to replace it."),
    ("pass params={'features': 'model.vebi.npz'}", "pass --param features=model.vebi.npz"),
    ("Pass constructor arguments as params={'init': {...}}.", "Pass constructor arguments as --param init={...}."),
    ("pass layer= as well.", "pass --layer as well."),
    ("allow_modules=['mynets']", "--allow-module mynets"),
    ("pass a LoadedModel with a ModelCard.", "give the model a card file (MODEL.card.json beside it, naming "
     "spatial_dims and in_channels)."),
    ("Class 7 does not exist: the model has 3 output classes.", "Class 7 does not exist: the model has 3 output "
     "classes."),
])
def test_python_spellings_become_command_line_syntax(python: str, cli: str) -> None:
    from napari_attribution.cli import cli_words

    assert cli_words(python) == cli


def test_a_library_target_error_reaches_the_command_line_in_its_syntax(scan: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "mask.npy", np.ones((16, 16, 16), bool))
    rc = main(["explain", "--model", "demo:contrast-phase-3d", "--image", str(scan), "--method", "saliency",
               "--target", f"region:0:{tmp_path}/mask.npy", "-o", str(tmp_path / "heat.nii.gz"), "-q"])
    err = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "Use a class index (--target k) or --target contrast:k1,k2." in err
    assert "Class(" not in err and "Contrast(" not in err and "Region" not in err
    # a segmenter that finds nothing: the library says Region(k, mask) / Voxel(k, index)
    np.save(tmp_path / "zeros.npy", np.zeros((16, 16, 16), np.float32))
    rc = main(["explain", "--model", "demo:vessel-seg", "--image", str(tmp_path / "zeros.npy"), "--method",
               "saliency", "-o", str(tmp_path / "heat.nii.gz"), "-q"])
    err = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "(--target region:k:MASK.nii.gz) or a voxel (--target voxel:k:z,y,x)" in err


def test_batch_log_lines_are_in_command_line_syntax(scan: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "mask.npy", np.ones((16, 16, 16), bool))
    (tmp_path / "scans").mkdir()
    scan.rename(tmp_path / "scans" / "a.npy")
    rc = main(["batch", "--model", "demo:contrast-phase-3d", "--images", str(tmp_path / "scans"), "--method",
               "saliency", "--target", f"region:0:{tmp_path}/mask.npy", "-o", str(tmp_path / "out"), "--local"])
    err = capsys.readouterr().err
    assert rc == 1 and "a.npy: error: TargetError: Targets such as --target region:k:MASK.nii.gz need" in err
    assert "Class(" not in err and "Contrast(" not in err


class _Terminal(io.StringIO):
    """stderr as a terminal: the progress line is rewritten in place with \\r."""

    def isatty(self) -> bool:
        return True


KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
          "num_res_units": 0}


def test_a_warning_during_a_run_starts_on_its_own_line_in_command_line_words(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    torch.save(UNet(**KWARGS).eval().state_dict(), tmp_path / "unet.pt")
    (tmp_path / "unet.card.json").write_text(json.dumps(
        {"factory": "monai.networks.nets:UNet", "kwargs": KWARGS, "task": "segmentation", "weights": "unet.pt"}))
    write_nifti(tmp_path / "case0.nii.gz", np.random.default_rng(0).normal(0, 1, (8, 12, 12)).astype(np.float32),
                Geometry(spacing=(1.5, 0.8, 0.8), origin=(0.0, 0.0, 0.0)))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    # how Python shows a warning when nobody records it (pytest does record them: show them as Python would)
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None, line=None:
                        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # pointing_game needs a mask the command line does not pass: the metric fails with a warning mid-run
        rc = main(["explain", "--model", str(tmp_path / "unet.pt"), "--image", str(tmp_path / "case0.nii.gz"),
                   "--method", "saliency", "--metric", "pointing_game",
                   "-o", str(tmp_path / "heat.nii.gz")])
    text = terminal.getvalue()
    assert rc == 0 and "\r" in text and "elapsed" in text  # the progress line was being rewritten
    lines = [line for line in text.split("\n") if "pointing_game failed" in line]
    assert len(lines) == 1
    assert lines[0].startswith("warning: The metric pointing_game failed for saliency on case0.nii.gz: ")
    assert not re.search(r"\r[^\n]*warning", text, re.IGNORECASE)  # nothing glued onto a progress line
    assert "UserWarning" not in text and "warnings.warn(" not in text  # one line, no source line


def test_progress_line_is_ended_before_any_other_output() -> None:
    import contextlib

    from napari_attribution._progress import ProgressLine

    ticks = iter([0.0, 1.0, 2.0, 3.0, 4.0])
    err, out = io.StringIO(), io.StringIO()
    line = ProgressLine(err, tty=True, clock=lambda: next(ticks))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), line.finishing_first():
        line(1, 4, "occlusion windows")
        print("warning: a window was scaled", file=sys.stderr)  # on stderr, like the progress line
        line(2, 4, "occlusion windows")
        print("result")  # on stdout: the terminal shows both streams, so the line is ended as well
    lines = err.getvalue().split("\n")
    assert lines[0].startswith("\r 25%") and lines[1] == "warning: a window was scaled"
    assert lines[2].startswith("\r 50%") and lines[3] == ""  # ended before "result" was printed
    assert out.getvalue() == "result\n" and not line._open


# ---- 3. methods fits 100 columns ------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", ["250", "100", "80"])
def test_methods_fits_the_terminal_up_to_100_columns_and_keeps_every_word(
        columns: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    width = min(100, int(columns))
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= width
    flat = " ".join(out.split())
    for m in na.list_methods():  # every label and cost, whole (wrapped, never cut)
        assert " ".join(m.label.split()) in flat and " ".join(m.passes.split()) in flat, m.name
    assert "captum:<ClassName>" in out and "napari-attribution methods NAME" in out


def test_methods_name_fits_100_columns_and_shows_the_full_row(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    for m in na.list_methods():
        assert main(["methods", m.name]) == 0
        out = capsys.readouterr().out
        assert max(len(line) for line in out.splitlines()) <= 100, m.name
        flat = " ".join(out.split())
        assert " ".join(m.label.split()) in flat and " ".join(m.passes.split()) in flat
        assert " ".join(m.paper.split()) in flat
