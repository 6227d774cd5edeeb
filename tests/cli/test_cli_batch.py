"""``batch`` on a cohort: one model load per worker, resume (skip what exists from the same model and request,
refuse what exists from anything else unless --overwrite), the summary's per-scan prediction facts, and a 2-worker
Dask cluster that gives the serial results."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution._cli_run import run_batch
from napari_attribution.cli import main
from napari_attribution.io import Geometry, read_nifti, write_nifti
from napari_attribution.targets import Predicted

KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
          "num_res_units": 0}
SPACING = (1.5, 0.8, 0.8)  # mm: a voxel is 0.96 mm^3


def _model(folder: Path, seed: int) -> Path:
    from monai.networks.nets import UNet

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(UNet(**KWARGS).eval().state_dict(), folder / "unet.pt")
    (folder / "unet.card.json").write_text(json.dumps(
        {"factory": "monai.networks.nets:UNet", "kwargs": KWARGS, "task": "segmentation", "weights": "unet.pt",
         "class_names": ["background", "vessel"]}))
    return folder / "unet.pt"


def _scan(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 1, (8, 12, 12)).astype(np.float32)
    vol[2:6, 3:9, 3:9] += 2.0  # a bright block, so the prediction is neither empty nor everything
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, vol, Geometry(spacing=SPACING, origin=(0.0, 0.0, 0.0)))
    return path


@pytest.fixture
def cohort(tmp_path: Path) -> tuple[Path, list[Path]]:
    return _model(tmp_path / "model", 0), [_scan(tmp_path / "scans" / f"case{i}.nii.gz", i) for i in range(4)]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = na.load_model

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(na, "load_model", counting)
    return calls


def test_a_serial_batch_loads_the_model_once_and_the_summary_has_each_scans_prediction_facts(
        cohort: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, scans = cohort
    calls = _count_loads(monkeypatch)
    results = run_batch(str(model), str(scans[0].parent), ["saliency", "grad_cam"], str(tmp_path / "out"),
                        local=True, target="predicted:1", log=lambda _: None)
    assert len(calls) == 1  # one load for 4 scans (it was one per scan)
    assert [r["loaded"] for r in results] == [True, False, False, False]
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert list(rows[0])[:9] == ["scan", "status", "method", "output", "seconds", "target", "volume_ml_vessel",
                                 "energy_in_prediction", "prediction_share"]
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    loaded = na.load_model(str(model))
    shares = []
    for row in rows:
        data, geometry, _ = read_nifti(Path(row["scan"]))
        ref = na.explain(loaded, data, row["method"], Predicted(1), geometry=geometry)
        foreground = ref.prediction == 1
        assert 0 < foreground.sum() < foreground.size
        # mL from the label map and the voxel spacing: voxels x 1.5 x 0.8 x 0.8 mm^3 / 1000
        assert float(row["volume_ml_vessel"]) == pytest.approx(foreground.sum() * 0.96e-3, rel=1e-5)
        assert float(row["prediction_share"]) == pytest.approx(foreground.mean(), rel=1e-5)
        heat = read_nifti(Path(row["output"]))[0]
        energy = na.evaluate(loaded, data, heat, "energy_in_mask", mask=foreground).value
        assert float(row["energy_in_prediction"]) == pytest.approx(energy, rel=1e-5)
        shares.append(float(row["energy_in_prediction"]))
    assert len(set(shares)) > 1  # per map: saliency and Grad-CAM put different shares inside


def test_resume_skips_what_exists_from_the_same_model_and_request_and_refuses_the_rest(
        cohort: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    model, scans = cohort
    out = tmp_path / "out"
    argv = ["batch", "--model", str(model), "--images", str(scans[0].parent), "--method", "saliency",
            "--method", "integrated_gradients", "--param", "steps=2", "--param", "rule=riemann_left",
            "--target", "predicted:1", "--metric", "deletion", "-o", str(out), "--local"]
    assert main(argv) == 0
    first = _rows(out / "summary.csv")
    assert any(r["warnings"] for r in first)  # 2 left-Riemann steps: an incomplete map, said on its scan's rows
    maps = sorted(out.glob("case*"))
    assert len(maps) == 4 * 5  # per scan: 2 heatmaps, 2 sidecars, the metrics CSV
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in maps}
    capsys.readouterr()

    # the same command again: every scan skipped, nothing rewritten, the summary's rows read back from the sidecars
    calls = _count_loads(monkeypatch)
    assert main(argv) == 0
    assert len(calls) == 1  # the model is loaded once (its sha256 is compared), never per scan
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in maps} == before
    again = _rows(out / "summary.csv")
    assert [r["status"] for r in again] == ["skipped"] * 8
    assert [{**r, "status": "ok"} for r in again] == first  # seconds included: the ones the sidecars recorded
    assert "replacing the previous summary" in capsys.readouterr().err

    # other parameters: every scan refused, one message each naming the file and what differs; the batch goes on
    other = [a if a != "steps=2" else "steps=3" for a in argv]
    assert main(other) == 3
    err = capsys.readouterr().err
    refused = [line for line in err.splitlines() if ": refused: " in line]
    assert len(refused) == 4 and all("steps" in line and "--overwrite" in line for line in refused)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in maps} == before
    assert {r["status"].split(":")[0] for r in _rows(out / "summary.csv")} == {"refused"}

    # a scan without outputs runs, the others are refused (exit code 3: some were refused, none failed)
    for p in out.glob("case0*"):
        p.unlink()
    assert main(other) == 3
    statuses = {Path(r["scan"]).name: r["status"].split(":")[0] for r in _rows(out / "summary.csv")}
    assert statuses == {"case0.nii.gz": "ok", "case1.nii.gz": "refused", "case2.nii.gz": "refused",
                        "case3.nii.gz": "refused"}

    # a batch of fewer scans into this folder would drop the others' rows from the summary: refused before any work
    kept = (out / "summary.csv").read_bytes()
    capsys.readouterr()
    assert main([a if a != str(scans[0].parent) else str(scans[1]) for a in other]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "reports other scans" in err and "case0.nii.gz and 2 more" in err
    assert (out / "summary.csv").read_bytes() == kept

    # --overwrite replaces them: the sidecars now record the new request
    assert main([*other, "--overwrite"]) == 0
    assert {r["status"] for r in _rows(out / "summary.csv")} == {"ok"}
    side = json.loads((out / "case1_integrated_gradients.json").read_text())
    assert side["request"]["params"] == {"steps": 3, "rule": "riemann_left"}


def test_outputs_from_another_model_or_another_scan_are_refused(cohort: tuple[Path, list[Path]],
                                                               tmp_path: Path) -> None:
    model, scans = cohort
    out = tmp_path / "out"
    logged: list[str] = []
    kwargs: dict[str, Any] = dict(local=True, target="predicted:1", log=logged.append)
    run_batch(str(model), str(scans[0].parent), ["saliency"], str(out), **kwargs)
    heat = (out / "case2.nii.gz").read_bytes()
    other = _model(tmp_path / "other", 1)  # other weights
    results = run_batch(str(other), str(scans[0].parent), ["saliency"], str(out), **kwargs)
    assert all(r["status"].startswith("refused: ") and "another model (weights sha256" in r["status"]
               for r in results)
    assert (out / "case2.nii.gz").read_bytes() == heat
    scans[2].unlink()
    _scan(scans[2], 99)  # case2 changed on disk
    results = run_batch(str(model), str(scans[0].parent), ["saliency"], str(out), **kwargs)
    assert [r["status"].split(":")[0] for r in results] == ["skipped", "skipped", "refused", "skipped"]
    assert "another version of the scan" in results[2]["status"] and str(out / "case2.nii.gz") in results[2]["status"]
    assert "(0 ok, 3 skipped, 1 refused, 0 failed)" in logged[-2]


def _patch_load_model(dask_worker: Any = None) -> None:
    """On a Dask worker: count the calls of na.load_model (the batch's own code calls it through the package)."""
    import napari_attribution as na

    if getattr(na.load_model, "calls", None) is None:
        real = na.load_model

        def counting(*args: Any, **kwargs: Any) -> Any:
            counting.calls += 1  # type: ignore[attr-defined]
            return real(*args, **kwargs)

        counting.calls = 0  # type: ignore[attr-defined]
        na.load_model = counting


def _load_calls(dask_worker: Any = None) -> int:
    import napari_attribution as na

    return int(na.load_model.calls)  # type: ignore[attr-defined]


def _pools(dask_worker: Any = None) -> int:
    from napari_attribution import _cli_run

    return len(_cli_run._POOLS)


def test_four_scans_on_a_two_worker_cluster_give_the_serial_results_with_one_load_per_worker(
        cohort: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """A LocalCluster of 2 single-threaded worker processes (the default kind), reached by its address as with
    --scheduler: the heatmaps equal the serial run's (1e-6), the summaries' rows are equal but for the seconds and
    the output folder, and each worker called load_model once (counted inside the workers)."""
    import cloudpickle
    from dask.distributed import Client, LocalCluster

    model, scans = cohort
    kwargs: dict[str, Any] = dict(target="predicted:1", params={"steps": 2, "rule": "riemann_left"},
                                  log=lambda _: None)
    methods = ["saliency", "integrated_gradients"]
    t0 = time.perf_counter()
    serial = run_batch(str(model), str(scans[0].parent), methods, str(tmp_path / "serial"), local=True, **kwargs)
    serial_s = time.perf_counter() - t0
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                          dashboard_address=None) as cluster, Client(cluster) as client:  # type: ignore
            client.run(_patch_load_model)
            t0 = time.perf_counter()
            dask = run_batch(str(model), str(scans[0].parent), methods, str(tmp_path / "dask"),
                             scheduler=cluster.scheduler_address, **kwargs)
            dask_s = time.perf_counter() - t0
            calls = client.run(_load_calls)
            pools = client.run(_pools)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    print(f"4 scans x 2 methods: serial {serial_s:.2f} s, 2 workers {dask_s:.2f} s (cluster running); loads per "
          f"worker {calls}")
    used = {r["worker"] for r in dask}
    assert len(used) == 2 and set(calls) == used  # both workers ran scans
    assert list(calls.values()) == [1, 1]  # one load per worker, not one per scan
    assert list(pools.values()) == [0, 0]  # the batch done, its models are freed on the running cluster
    assert {w: sum(r["loaded"] for r in dask if r["worker"] == w) for w in used} == calls
    assert [r["status"] for r in dask] == [r["status"] for r in serial] == ["ok"] * 4
    for s, d in zip(serial, dask, strict=True):
        for m in methods:
            a, b = read_nifti(Path(s["outputs"][m]))[0], read_nifti(Path(d["outputs"][m]))[0]
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    rows = {name: _rows(tmp_path / name / "summary.csv") for name in ("serial", "dask")}
    assert any(r["warnings"] for r in rows["dask"])  # the workers' per-scan warnings reach the summary

    def comparable(row: dict[str, str], name: str) -> dict[str, str]:
        return {**row, "seconds": "", "output": str(Path(row["output"]).relative_to(tmp_path / name))}

    assert [comparable(r, "dask") for r in rows["dask"]] == [comparable(r, "serial") for r in rows["serial"]]
