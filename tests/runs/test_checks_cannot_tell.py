"""The verdict of a deletion or insertion check that cannot tell maps apart: every map's AUC within the noise of the
random orders (their 95 % prediction band) reads "cannot tell maps apart here", in the dock's rows, the CLI's
metrics CSV and the batch summary alike (one verdict, ``runs.checks.verdict``)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _seg_phantom import UNET_KWARGS, phantom, trained_unet

import napari_attribution as na
from napari_attribution.runs.checks import (
    CANNOT_TELL,
    CheckRequest,
    Explained,
    check_job,
    rows_from,
    verdict,
    verdicts_of_maps,
)
from napari_attribution.targets import Predicted

pytest.importorskip("monai")


def _details(ref: float, band: float | None, unit: str = "region") -> dict[str, Any]:
    # curves spanning [0, 1]: a tenth of the span is 0.1
    return {"random_auc": ref, "random_band": band, "random_orders": 4, "unit": unit, "curve": [0.0, 1.0],
            "random_curve": [1.0, 0.0]}


@pytest.mark.parametrize(("check", "value", "start"), [
    ("deletion", 0.46, CANNOT_TELL),  # within 0.50 ± 0.05
    ("deletion", 0.54, CANNOT_TELL),
    ("insertion", 0.549, CANNOT_TELL),
    ("deletion", 0.30, "faithful: deleting the map's top regions first"),
    ("deletion", 0.70, "worse than a random order: the map's top regions"),
    ("insertion", 0.70, "faithful: restoring the map's top regions first"),
    ("insertion", 0.43, "no better than a random order of the regions"),  # beyond the noise, under a tenth
])
def test_within_the_random_orders_noise_the_check_cannot_tell_maps_apart(check: str, value: float,
                                                                         start: str) -> None:
    said = verdict(check, value, _details(0.50, 0.05))
    assert said.startswith(start), said
    if start == CANNOT_TELL:
        assert said.endswith(f"AUC {value:.3f} against 0.500 ± 0.050 for 4 random orders")


def test_without_a_band_the_tenth_of_the_span_decides_and_flat_curves_stay_not_informative() -> None:
    # one random order (no spread to judge noise by): the gain rule alone, as for voxels
    assert verdict("deletion", 0.46, _details(0.50, float("nan"), "voxel")).startswith(
        "no better than a random order of the voxels")
    flat = {**_details(0.50, 0.3), "curve": [0.5, 0.52], "random_curve": [0.5, 0.51]}
    assert verdict("deletion", 0.5, flat).startswith("not informative")


def test_several_maps_cannot_be_told_apart_only_when_every_one_is_within_noise() -> None:
    score = {name: na.Score("deletion", v, False, _details(0.50, 0.05)) for name, v in
             (("a", 0.48), ("b", 0.53), ("c", 0.20))}
    said = verdicts_of_maps("deletion", score)
    assert said["c"].startswith("faithful") and said["c"] == verdict("deletion", 0.20, _details(0.50, 0.05))
    for name in ("a", "b"):  # the check tells c apart: a and b are no better than a random order, not untellable
        assert said[name].startswith("no better than a random order of the regions (within noise: AUC")
        assert said[name].endswith("where other maps are told apart")
    both = verdicts_of_maps("deletion", {k: score[k] for k in ("a", "b")})
    assert all(text.startswith(CANNOT_TELL) for text in both.values())
    assert verdicts_of_maps("randomisation", {"a": na.Score("randomisation", 0.2, False, {})}) == {
        "a": verdict("randomisation", 0.2)}


@pytest.fixture(scope="module")
def case() -> tuple[torch.nn.Module, np.ndarray, na.Attribution, list[np.ndarray]]:
    net = trained_unet()
    image, _ = phantom(np.random.default_rng(99))
    att = na.explain(net, image, "saliency", Predicted(1))
    maps = [np.random.default_rng(s).random(image.shape).astype(np.float32) for s in (11, 12, 13)]
    return net, image, att, maps


def test_every_random_map_reads_cannot_tell_in_the_docks_rows(case: Any) -> None:
    from napari_attribution.runs.model_info import model_info

    net, image, att, maps = case
    info = model_info(net, "monai unet")
    for m in maps:
        params = {"deletion": {"steps": 10}, "insertion": {"steps": 10}}
        out = check_job(CheckRequest(Explained(dataclasses.replace(att, data=m), info, image),
                                     ["deletion", "insertion"], params))
        assert out.status == "ok", out.message
        for c in ("deletion", "insertion"):
            row = out.rows[c]
            assert row["verdict"].startswith(CANNOT_TELL), row["verdict"]
            assert abs(row["value"] - row["reference"]) <= row["reference_band"]
            assert "mean AUC of 4 random orders of the blocks" in row["reference_kind"]


def test_the_evidence_map_is_told_apart_on_the_same_scan(case: Any) -> None:
    """The check can tell maps apart here: the known evidence is faithful where random maps are not."""
    net, image, att, _ = case
    _, label = phantom(np.random.default_rng(99))
    score = na.evaluate(net, image, label.astype(np.float32), "deletion", target=Predicted(1), steps=10)
    row = rows_from({"deletion": score}, None, {})["deletion"]
    assert row["verdict"].startswith("faithful: deleting the map's top regions first"), row["verdict"]


@pytest.fixture
def random_maps_cli(case: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """The trained UNet as a model file with its card and the phantom as a NIfTI scan; every map the CLI makes is
    replaced by a random map (one seed per method), or in a test named "...evidence..." input x gradient's by the
    known evidence (the spheres)."""
    from napari_attribution.io import write_nifti

    net, image, _, _ = case
    torch.save(net.state_dict(), tmp_path / "unet.pt")
    (tmp_path / "unet.card.json").write_text(json.dumps(
        {"factory": "monai.networks.nets:UNet", "kwargs": UNET_KWARGS, "task": "segmentation", "weights": "unet.pt"}))
    scan = tmp_path / "scans" / "case0.nii.gz"
    scan.parent.mkdir()
    write_nifti(scan, image, na.Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)))
    real = na.compare

    def compare(*args: Any, **kwargs: Any) -> dict[str, na.Attribution]:
        got = real(*args, **kwargs)
        maps = {k: np.random.default_rng(20 + i).random(a.data.shape).astype(np.float32)
                for i, (k, a) in enumerate(got.items())}
        if "evidence" in request.node.name and "input_x_gradient" in maps:  # this one is the known evidence
            maps["input_x_gradient"] = phantom(np.random.default_rng(99))[1].astype(np.float32)
        return {k: dataclasses.replace(a, data=maps[k]) for k, a in got.items()}

    monkeypatch.setattr(na, "compare", compare)
    return tmp_path / "unet.pt", scan


def test_the_metrics_csv_and_the_batch_summary_say_cannot_tell_when_every_map_is_random(
        random_maps_cli: tuple[Path, Path], tmp_path: Path) -> None:
    from napari_attribution._cli_run import explain_file, run_batch

    model, scan = random_maps_cli
    methods = ["saliency", "input_x_gradient"]
    res = explain_file(str(model), str(scan), methods, str(tmp_path / "one" / "heat.nii.gz"), target="predicted:1",
                       metrics=["deletion", "insertion"])
    with open(tmp_path / "one" / "heat_saliency_metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == methods
    for r in rows:
        for m in ("deletion", "insertion"):
            assert r[f"{m}_verdict"].startswith(CANNOT_TELL), r[f"{m}_verdict"]
            assert r[f"{m}_verdict"] == res.verdicts[r["method"]][m]
    out = run_batch(str(model), str(scan.parent), ["saliency"], str(tmp_path / "batch"), local=True,
                    target="predicted:1", metrics=["deletion"], log=lambda line: None)
    assert out[0]["status"] == "ok"
    with open(tmp_path / "batch" / "summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert len(summary) == 1 and summary[0]["deletion_verdict"].startswith(CANNOT_TELL)


def test_beside_the_evidence_a_random_map_is_no_better_than_random_in_the_metrics_csv(
        random_maps_cli: tuple[Path, Path], tmp_path: Path) -> None:
    from napari_attribution._cli_run import explain_file

    model, scan = random_maps_cli
    res = explain_file(str(model), str(scan), ["saliency", "input_x_gradient"], str(tmp_path / "m" / "h.nii.gz"),
                       target="predicted:1", metrics=["deletion"])
    assert res.verdicts["input_x_gradient"]["deletion"].startswith("faithful: deleting the map's top regions")
    said = res.verdicts["saliency"]["deletion"]
    assert said.startswith("no better than a random order of the regions (within noise") and CANNOT_TELL not in said
    with open(tmp_path / "m" / "h_saliency_metrics.csv", newline="") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert rows["saliency"]["deletion_verdict"] == said
