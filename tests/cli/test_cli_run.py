"""The command line: methods, explain (aligned NIfTI + sidecar + metrics CSV, no silent overwrite), batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution.cli import main
from napari_attribution.io import Geometry, read_nifti, write_nifti

CARD = {"factory": "monai.networks.nets:UNet",
        "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
                   "num_res_units": 0},
        "task": "segmentation", "spatial_dims": 3, "in_channels": 1, "class_names": ["background", "vessel"]}


@pytest.fixture
def model_and_scans(tmp_path: Path) -> tuple[Path, list[Path]]:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(**CARD["kwargs"]).eval()
    torch.save(net.state_dict(), tmp_path / "unet.pt")
    (tmp_path / "unet.card.json").write_text(json.dumps({**CARD, "weights": "unet.pt"}))
    scans = []
    rng = np.random.default_rng(0)
    affine = np.array([[0, 0, -0.8, 10], [0, 0.8, 0, -5], [1.5, 0, 0, 3], [0, 0, 0, 1]], float)
    for i in range(3):
        vol = rng.normal(0, 1, (8, 12, 12)).astype(np.float32)
        p = tmp_path / "scans" / f"case{i}.nii.gz"
        p.parent.mkdir(exist_ok=True)
        write_nifti(p, vol, Geometry.from_affine(affine))
        scans.append(p)
    return tmp_path / "unet.pt", scans


def test_methods_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "grad_cam" in out and "evidence" in out and "captum:<ClassName>" in out


def test_methods_name_lists_parameters_defaults_and_choices(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # the listing wraps to the terminal's width (60-100 columns)
    assert main(["methods", "evidence"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # one line, whatever the wrapping
    assert 'mode = "conditional_mean"; one of "conditional_mean", "taylor", "screened", "conditional_sample"' in out
    assert "screen = 0.5" in out and "max_batch = null" in out and "Zhou & Kainz" in out
    assert main(["methods", "occlusion"]) == 0
    assert 'baseline = "min"; one of "min", "mean", or another value' in capsys.readouterr().out
    assert main(["methods", "no_such_method"]) == 2
    assert "Unknown method" in capsys.readouterr().err


def test_explain_writes_an_aligned_heatmap_sidecar_and_metrics(model_and_scans, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    model, scans = model_and_scans
    out = tmp_path / "out" / "heat.nii.gz"
    rc = main(["explain", "--model", str(model), "--image", str(scans[0]), "--method", "saliency",
               "--method", "integrated_gradients", "--param", "steps=8", "--target", "voxel:1:4,6,6",
               "--metric", "deletion", "-o", str(out), "-q"])
    assert rc == 0
    for m in ("saliency", "integrated_gradients"):
        path = tmp_path / "out" / f"heat_{m}.nii.gz"
        heat, geo, meta = read_nifti(path)
        scan, sgeo, smeta = read_nifti(scans[0])
        assert heat.shape == scan.shape
        np.testing.assert_allclose(meta["original_affine"], smeta["original_affine"], atol=1e-5)
        side = json.loads((tmp_path / "out" / f"heat_{m}.json").read_text())
        assert side["method"] == m and side["model_sha256"] and "voxel" in side["target"]
        assert side["versions"]["python"]
    rows = (tmp_path / "out" / "heat_saliency_metrics.csv").read_text().splitlines()
    assert rows[0] == "scan,method,deletion,deletion_random,deletion_verdict,seconds" and len(rows) == 3
    # the random-order reference is the one na.evaluate computes
    ig = na.explain(na.load_model(str(model)), read_nifti(scans[0])[0], "integrated_gradients",
                    na.targets.Voxel(1, (4, 6, 6)), params={"steps": 8})
    # with the scan's voxel size, as the CLI passes it (a segmenter's deletion blocks and blur are in mm)
    ref = na.evaluate(na.load_model(str(model)), read_nifti(scans[0])[0], ig, "deletion",
                      geometry=read_nifti(scans[0])[1])
    row = rows[2].split(",")
    assert row[1] == "integrated_gradients"
    assert float(row[2]) == pytest.approx(ref.value, rel=1e-5)
    assert float(row[3]) == pytest.approx(ref.details["random_auc"], rel=1e-5)
    # an existing output is kept unless --overwrite
    rc = main(["explain", "--model", str(model), "--image", str(scans[0]), "--method", "saliency",
               "-o", str(tmp_path / "out" / "heat_saliency.nii.gz"), "-q"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["explain", "--model", str(model), "--image", str(scans[0]), "--method", "saliency",
                 "-o", str(tmp_path / "out" / "heat_saliency.nii.gz"), "-q", "--overwrite"]) == 0


def test_explain_sweeps_layers_into_one_heatmap_each_and_a_layer_table(model_and_scans, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model, scans = model_and_scans
    out = tmp_path / "sweep" / "heat.nii.gz"
    layers = ["model.0", "model.1.submodule"]
    argv = ["explain", "--model", str(model), "--image", str(scans[0]), "--method", "grad_cam", "--method",
            "layer_gradient_x_activation", "--target", "predicted:1", "-o", str(out), "-q"]
    for name in layers:
        argv += ["--layer", name]
    assert main(argv) == 0
    scan = read_nifti(scans[0])[0]
    for m in ("grad_cam", "layer_gradient_x_activation"):
        for name in layers:
            path = tmp_path / "sweep" / f"heat_{m}_{name}.nii.gz"
            heat = read_nifti(path)[0]
            assert heat.shape == scan.shape
            side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
            assert side["method"] == m and side["layer"] == name
            # the map is the one explain gives at that layer
            import napari_attribution as na
            from napari_attribution.targets import Predicted
            ref = na.explain(na.load_model(str(model)), scan, m, Predicted(1), layer=name)
            np.testing.assert_allclose(heat, ref.data, rtol=1e-5, atol=1e-6 * float(np.abs(ref.data).max()))
    rows = (tmp_path / "sweep" / "heat_layers.csv").read_text().splitlines()
    assert rows[0] == "scan,method,layer,seconds,energy_in_target_region,peak"
    body = [r.split(",") for r in rows[1:]]
    assert [(r[1], r[2]) for r in body] == [(m, n) for m in ("grad_cam", "layer_gradient_x_activation")
                                           for n in layers]
    assert all(0.0 <= float(r[4]) <= 1.0 for r in body)  # a predicted-region target: the energy inside it
    # a method that looks at no layer cannot be swept
    argv = ["explain", "--model", str(model), "--image", str(scans[0]), "--method", "saliency", "--layer",
            layers[0], "--layer", layers[1], "-o", str(tmp_path / "s2" / "x.nii.gz"), "-q"]
    assert main(argv) == 2 and "separate run" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists()  # nothing written


def test_explain_bad_input_is_one_clear_line(model_and_scans, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    model, scans = model_and_scans
    rc = main(["explain", "--model", str(model), "--image", str(scans[0]), "--method", "gradcam", "-o",
               str(tmp_path / "x.nii.gz"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: Unknown method 'gradcam'") and "Traceback" not in err
    rc = main(["explain", "--model", str(tmp_path / "missing.pt"), "--image", str(scans[0]), "--method",
               "saliency", "-o", str(tmp_path / "x.nii.gz"), "-q"])
    assert rc == 2 and "error:" in capsys.readouterr().err


def test_batch_local_and_dask(model_and_scans, tmp_path: Path) -> None:
    model, scans = model_and_scans
    rc = main(["batch", "--model", str(model), "--images", str(scans[0].parent), "--method", "saliency",
               "-o", str(tmp_path / "b1"), "--local", "-q"])
    assert rc == 0
    rows = (tmp_path / "b1" / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",ok," in r for r in rows[1:])
    assert sorted(p.name for p in (tmp_path / "b1").glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz",
                                                                         "case2.nii.gz"]
    # the same through a local Dask cluster (2 single-threaded workers), from a CSV list
    listing = tmp_path / "list.csv"
    listing.write_text("image\n" + "\n".join(str(s) for s in scans[:2]) + "\n")
    code = ("import sys; from napari_attribution.cli import main; sys.exit(main(['batch', '--model', sys.argv[1], "
            "'--images', sys.argv[2], '--method', 'grad_cam', '-o', sys.argv[3], '--workers', '2', '-q']))")
    res = subprocess.run([sys.executable, "-c", code, str(model), str(listing), str(tmp_path / "b2")],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = (tmp_path / "b2" / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in r for r in rows[1:])


def test_batch_summary_carries_each_scans_warnings_and_sidecars_the_completeness(model_and_scans,
                                                                                  tmp_path: Path) -> None:
    """Integrated gradients with 2 left-Riemann steps on a random UNet is incomplete: the summary says so on that
    scan's row (the library's own warnings only) and the heatmap's sidecar records the completeness error."""
    import csv

    model, scans = model_and_scans
    rc = main(["batch", "--model", str(model), "--images", str(scans[0].parent), "--method", "integrated_gradients",
               "--param", "steps=2", "--param", "rule=riemann_left", "-o", str(tmp_path / "b"), "--local", "-q"])
    assert rc == 0
    with open(tmp_path / "b" / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    for row in rows:
        side = json.loads((tmp_path / "b" / (Path(row["output"]).name[: -len(".nii.gz")] + ".json")).read_text())
        error = side["completeness"]["relative_error"]
        assert side["completeness"]["steps"] == 2
        if error > 0.05:
            assert "completeness error" in row["warnings"] and f"{error:.0%}" in row["warnings"]
        else:
            assert row["warnings"] == ""
    assert any(row["warnings"] for row in rows)
    assert not any("Deprecat" in row["warnings"] for row in rows)


def test_the_sidecar_records_what_the_defaults_became(model_and_scans, tmp_path: Path) -> None:
    """Occlusion's default window and stride are chosen from the scan's size: the sidecar says which ones ran
    (its params say None, i.e. 'the default')."""
    model, scans = model_and_scans
    out = tmp_path / "occ.nii.gz"
    assert main(["explain", "--model", str(model), "--image", str(scans[0]), "--method", "occlusion",
                 "--target", "voxel:1:4,6,6", "-o", str(out), "-q"]) == 0
    side = json.loads((tmp_path / "occ.json").read_text())
    res = na.explain(na.load_model(str(model)), read_nifti(scans[0])[0], "occlusion", na.targets.Voxel(1, (4, 6, 6)))
    assert side["params"].get("window") is None
    assert side["used"]["window"] == list(res.extras["window"]) and side["used"]["windows"] == res.extras["windows"]
