"""A model whose card has a sliding-window inferer on the command line: ``explain`` runs it, and the progress line
counts windows, with one percentage and one ETA across a gradient method's stitched forward over all windows and
its backward window by window (:class:`~napari_attribution._progress.WindowStages`)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution._progress import Eta, ProgressLine, WindowStages
from napari_attribution.cli import main
from napari_attribution.io import Geometry, read_image, write_nifti

pytest.importorskip("monai")

KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
          "num_res_units": 0}
INFERER = {"type": "sliding_window", "roi_size": [16, 16, 16], "overlap": 0.25, "mode": "gaussian",
           "sw_batch_size": 1}
SHAPE = (20, 30, 28)


def card() -> dict:
    return {"factory": "monai.networks.nets:UNet", "kwargs": KWARGS, "task": "segmentation", "spatial_dims": 3,
            "in_channels": 1, "num_classes": 2, "inferer": INFERER}


@pytest.fixture
def model_and_scan(tmp_path: Path) -> tuple[Path, Path]:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    torch.save(UNet(**KWARGS).eval().state_dict(), tmp_path / "unet.pt")
    (tmp_path / "unet.card.json").write_text(json.dumps({**card(), "weights": "unet.pt"}))
    scan = tmp_path / "case0.nii.gz"
    write_nifti(scan, np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32),
                Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)))
    return tmp_path / "unet.card.json", scan


def test_a_gradient_methods_forward_and_backward_windows_are_one_stage() -> None:
    """Windows that take 1 s forward and 3 s forward + backward (the shares the stages assume): the fraction grows
    through both passes and the ETA is the time really left, at every window."""
    n, now = 12, [0.0]
    stages, eta = WindowStages(), Eta(clock=lambda: now[0])
    seen = []
    for kind, seconds in (("forward", 1.0), ("backward", 3.0)):
        for k in range(1, n + 1):
            now[0] += seconds
            fraction = stages(k, n, f"saliency: {kind}: windows {k}/{n}")
            seen.append((fraction, eta(fraction)))
    total = n * 4.0
    elapsed = np.cumsum([1.0] * n + [3.0] * n)
    assert [f for f, _ in seen] == pytest.approx(elapsed / total)
    assert [e for _, e in seen[:-1]] == pytest.approx(total - elapsed[:-1])
    assert seen[-1] == (1.0, None)


def test_a_layer_method_and_a_perturbation_stay_monotone() -> None:
    stages = WindowStages()
    grad_cam = [stages(k, 4, f"grad_cam: forward: windows {k}/4") for k in range(1, 5)]
    grad_cam += [stages(k, 4, f"grad_cam: layer: windows {k}/4") for k in range(1, 5)]
    assert grad_cam == pytest.approx([1 / 12, 2 / 12, 3 / 12, 4 / 12, 6 / 12, 8 / 12, 10 / 12, 1.0])
    stages.reset()
    # a perturbation: the target's forward is held at the start (its passes are not known yet); then each chunk's
    # windows report from the chunk's start, and the fraction never goes back
    seen = [stages(4, 4, "occlusion: forward: windows 4/4"), stages(0, 10, "occlusion: starting")]
    seen += [stages(k, 20, f"occlusion: reference: windows {k}/4") for k in (1, 2)]
    seen += [stages(1, 20, "occlusion: forward: changed windows 1/2"), stages(2, 20, "occlusion windows")]
    assert seen == pytest.approx([0.0, 0.0, 0.05, 0.1, 0.1, 0.1])


def test_the_progress_of_a_real_run_never_goes_back_and_ends_at_one() -> None:
    """The reports of real runs through the inferer (one window per chunk: a report per window), as the CLI's
    progress line and the Explain dock's bar see them."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    loaded = na.LoadedModel(UNet(**KWARGS).eval(), na.ModelCard.from_dict(
        {k: v for k, v in card().items() if k not in ("factory", "kwargs")}))
    scan = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    windows = na.ModelCard.from_dict({"spatial_dims": 3, "inferer": INFERER}).sliding_window.plan(SHAPE).count()
    for method, params in [("saliency", {}), ("grad_cam", {}), ("integrated_gradients", {"steps": 4})]:
        stages, raw, seen = WindowStages(), [], []

        def record(done: int, total: int, message: str, stages=stages, raw=raw, seen=seen) -> None:
            raw.append(done / total)
            seen.append((stages(done, total, message), message))

        na.explain(loaded, scan, method, params=params, progress=record)
        fractions = [f for f, _ in seen]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0, (method, seen)
        assert any(b < a for a, b in zip(raw, raw[1:], strict=False))  # what the library reports does go back
        assert sum("windows" in m for _, m in seen) >= 2 * windows
        if method == "saliency":  # the stitched forward is the first quarter, the backward the rest
            last_forward = max(f for f, m in seen if "forward: windows" in m)
            assert last_forward == pytest.approx(0.25, abs=1e-3)


def test_explain_with_an_inferer_card_counts_windows(model_and_scan, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    model, scan = model_and_scan
    out = tmp_path / "heat.nii.gz"
    rc = main(["explain", "--model", str(model), "--image", str(scan), "--method", "saliency", "-o", str(out)])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    assert any("elapsed" in line and "saliency: forward: windows" in line for line in err), err
    heat, geometry, _ = read_image(out)
    assert heat.shape == SHAPE and geometry.spacing == (1.0, 1.0, 1.0)
    assert np.isfinite(heat).all() and heat.max() > 0


def test_the_progress_line_counts_windows_with_one_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    out = io.StringIO()
    line = ProgressLine(out, clock=lambda: now[0], tty=False, interval=0)
    for kind, seconds in (("forward", 1.0), ("backward", 3.0)):
        for k in (1, 2):
            now[0] += seconds
            line(k, 2, f"saliency: {kind}: windows {k}/2")
    assert out.getvalue().splitlines() == [
        " 12%  1.0 s elapsed, about 7.0 s left  saliency: forward: windows 1/2",
        " 25%  2.0 s elapsed, about 6.0 s left  saliency: forward: windows 2/2",
        " 62%  5.0 s elapsed, about 3.0 s left  saliency: backward: windows 1/2",
        "100%  8.0 s elapsed  saliency: backward: windows 2/2",
    ]


def test_explain_patch_local_from_the_command_line(model_and_scan, tmp_path: Path) -> None:
    """``--param patch_local=true``: each window explained on its own (the sidecar says so), on the scan's grid."""
    model, scan = model_and_scan
    out = tmp_path / "local.nii.gz"
    rc = main(["explain", "--model", str(model), "--image", str(scan), "--method", "saliency", "--param",
               "patch_local=true", "--quiet", "-o", str(out)])
    assert rc == 0
    heat, _, _ = read_image(out)
    assert heat.shape == SHAPE and np.isfinite(heat).all() and heat.max() > 0
    side = out.with_name("local.json").read_text()
    assert '"patch_local": true' in side and "patch-local in each of 12 of 12 windows" in side
