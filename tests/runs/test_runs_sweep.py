"""The layer sweep without a viewer: the stacked layer data tuple (raw maps, leading "layer" axis, geometry of the
scan on the spatial axes, per-layer contrast limits) and the job (progress layer i of n, cancel between layers,
the per-layer table, fitting vebi features)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import napari_attribution as na
from napari_attribution import Attribution
from napari_attribution import layers as L
from napari_attribution import targets as T
from napari_attribution.io import Geometry
from napari_attribution.runs.jobs import ExplainRequest, FitRequest, fit_job, run_job
from napari_attribution.runs.model_info import model_info


def _att(value: float, layer: str, signed: bool = False) -> Attribution:
    data = np.full((3, 4, 5), value, np.float32)
    data[0, 0, 0] = -value if signed else 0.0
    return Attribution(data, "grad_cam", T.Class(1), layer, {"seed": 0}, signed, 0.25,
                       geometry=Geometry(spacing=(2.0, 1.0, 0.5), origin=(1.0, 2.0, 3.0)))


def test_prepend_axes_keeps_the_spatial_geometry() -> None:
    affine = np.eye(4)
    affine[:3, 3] = [5, 6, 7]
    geo = L.prepend_axes({"scale": [2, 1, 0.5], "translate": [1, 2, 3], "affine": affine.tolist(),
                          "shear": [0.1, 0.2, 0.3]})
    assert geo["scale"] == [1.0, 2.0, 1.0, 0.5] and geo["translate"] == [0.0, 1.0, 2.0, 3.0]
    full = np.asarray(geo["affine"])
    assert full.shape == (5, 5) and full[0, 0] == 1 and (full[1:, 1:] == affine).all()
    assert geo["shear"] == [0.0, 0.0, 0.0, 0.1, 0.2, 0.3]


def test_layer_sweep_layer_stacks_raw_maps_with_per_layer_limits() -> None:
    atts = [_att(1.0, "features.0", signed=True), _att(100.0, "features.4", signed=True)]
    table = [{"layer": "features.0", "seconds": 0.25, "peak": 1.0, "energy": None}]
    data, kwargs, kind = L.layer_sweep_layer(atts, source="scan", source_geometry={"scale": [2, 1, 0.5]},
                                             class_names=["no", "yes"], table=table)
    assert kind == "image" and data.shape == (2, 3, 4, 5) and data.dtype == np.float32
    np.testing.assert_array_equal(data[1], atts[1].data)  # raw, not rescaled
    assert kwargs["axis_labels"] == ("layer", "z", "y", "x")
    assert kwargs["scale"] == [1.0, 2.0, 1.0, 0.5]
    assert kwargs["name"] == "grad_cam by layer · yes · scan"
    info = kwargs["metadata"][L.OWNER_KEY]
    assert info["sweep"] and info["role"] == "heatmap" and info["layers"] == ["features.0", "features.4"]
    assert info["layer_contrast_limits"] == [[-1.0, 1.0], [-100.0, 100.0]]
    assert kwargs["contrast_limits"] == [-1.0, 1.0] and info["seconds"] == pytest.approx(0.5)
    assert info["table"][0]["layer"] == "features.0"
    # without a source layer, the Attribution's geometry places it
    _, kw2, _ = L.layer_sweep_layer(atts)
    assert kw2["scale"] == [1.0, 2.0, 1.0, 0.5] and kw2["translate"] == [0.0, 1.0, 2.0, 3.0]


def _segmenter() -> Any:
    from napari_attribution._demo import threshold_segmenter

    return threshold_segmenter()


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    from napari_attribution._demo import phantom

    return phantom(np.random.default_rng(7), lesion=True)


def test_sweep_job_runs_each_layer_and_tables_energy_in_the_target() -> None:
    vol, lesion = _phantom()
    info = model_info(_segmenter(), "seg")
    assert info.layers[:2] == ["0", "1"]
    seen: list[str] = []
    req = ExplainRequest(model=info, image=vol, source="phantom", methods=["grad_cam"], target=T.Predicted(1),
                         sweep_layers=["0", "1"], source_geometry={"scale": [2.0, 0.8, 0.8]})
    out = run_job(req, progress=lambda d, t, m: seen.append(m))
    assert out.status == "ok", out.message
    assert list(out.results) == ["0", "1"] and [r["layer"] for r in out.sweep] == ["0", "1"]
    assert any(m.startswith("2 layers in one pass") for m in seen)  # grad_cam: both layers from one pass
    for name, row in zip(out.results, out.sweep, strict=True):
        single = na.explain(info.model, vol.astype(np.float32), "grad_cam", T.Predicted(1), layer=name)
        np.testing.assert_allclose(out.results[name].data, single.data, rtol=1e-5, atol=1e-6)
        pred = np.asarray(single.prediction) == 1
        pos = np.clip(single.data, 0, None)
        assert row["energy"] == pytest.approx(pos[pred].sum() / pos.sum(), rel=1e-4)
    heat, pred = out.layers
    assert heat[2] == "image" and heat[0].shape == (2,) + vol.shape and pred[2] == "labels"
    assert heat[1]["scale"] == [1.0, 2.0, 0.8, 0.8]


@pytest.mark.parametrize("probabilities", [False, True])
def test_sweep_job_one_channel_measures_the_foreground_of_class_0(probabilities: bool) -> None:
    """One sigmoid channel / one logit: "in target" is the share inside the foreground (output > 0, > 0.5) that
    an independent threshold of the output gives, not inside label 0 (the background it used to measure)."""
    from _one_channel import OneChannelSegmenter, energy_inside, foreground, phantom

    net = OneChannelSegmenter(probabilities)
    vol = phantom()
    fg = foreground(net, vol, probabilities)
    card = na.ModelCard(task="segmentation", spatial_dims=3, in_channels=1,
                        output="probabilities" if probabilities else "logits")
    info = model_info(na.LoadedModel(net, card), "one channel")
    assert info.n_classes == 1 and info.layers[:2] == ["mean", "act"]
    for method in ("grad_cam", "layer_activation"):
        req = ExplainRequest(model=info, image=vol, source="t1", methods=[method], target=T.Predicted(0),
                             sweep_layers=["mean", "act"])
        out = run_job(req)
        assert out.status == "ok", out.message
        for row, att in zip(out.sweep, out.results.values(), strict=True):
            assert row["energy"] == pytest.approx(energy_inside(att.data, fg), rel=1e-5)
            assert 0.5 < row["energy"] < 0.99 and energy_inside(att.data, ~fg) < 0.5  # not the background
        pred = out.layers[1]
        assert pred[2] == "labels" and (pred[0] == fg).all()  # the foreground drawn as label 1
    # Predicted(1) does not exist on one channel: the message says what to ask for instead
    bad = run_job(ExplainRequest(model=info, image=vol, source="t1", methods=["grad_cam"], target=T.Predicted(1),
                                 sweep_layers=["mean", "act"]))
    assert bad.status == "failed" and "Predicted(0)" in bad.message, bad.message


def test_sweep_job_on_a_box_uses_the_full_region() -> None:
    vol, lesion = _phantom()
    info = model_info(_segmenter(), "seg")
    req = ExplainRequest(model=info, image=vol, source="phantom", methods=["layer_activation"],
                         target=T.Region(1, lesion), sweep_layers=["0"], roi=((0, 16), (4, 24), (4, 24)))
    out = run_job(req)
    assert out.status == "ok", out.message
    data = out.results["0"].data
    assert np.isnan(data[:, :4]).all() and np.isfinite(data[:, 4:24, 4:24]).all()
    pos = np.clip(np.nan_to_num(data), 0, None)
    assert out.sweep[0]["energy"] == pytest.approx(pos[lesion].sum() / pos.sum(), rel=1e-4)


def test_sweep_job_cancels_between_layers_and_refuses_non_layer_methods() -> None:
    vol, _ = _phantom()
    info = model_info(_segmenter(), "seg")
    calls: list[str] = []

    def cancel() -> bool:  # True once the second layer starts
        return any(m.startswith("layer 2 of") for m in calls)

    # layer conductance runs once per layer: cancelling between layers stops the sweep
    req = ExplainRequest(model=info, image=vol, source="phantom", methods=["layer_conductance"],
                         target=T.Predicted(1), sweep_layers=["0", "1"], params={"layer_conductance": {"steps": 2}})
    out = run_job(req, progress=lambda d, t, m: calls.append(m), cancel=cancel)
    assert out.status == "cancelled" and not out.layers
    assert any(m.startswith("layer 1 of 2 (0)") for m in calls)
    # grad_cam takes every layer from one pass, which stops on cancel as any run does
    req.methods = ["grad_cam"]
    out = run_job(req, cancel=lambda: True)
    assert out.status == "cancelled" and not out.layers
    req.methods = ["saliency"]
    out = run_job(req)
    assert out.status == "failed" and "layer method" in out.message


def test_sweep_job_on_a_classifier_has_no_region_and_asks_before_a_long_sweep() -> None:
    from _nets import Classifier

    torch.manual_seed(0)
    info = model_info(Classifier(d=3, classes=2).eval(), "clf")
    image = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    req = ExplainRequest(model=info, image=image, source="x", methods=["grad_cam"], target=T.Class(1),
                         sweep_layers=info.layers)
    out = run_job(req)
    assert out.status == "ok" and len(out.sweep) == len(info.layers)
    assert all(r["energy"] is None and np.isfinite(r["peak"]) for r in out.sweep)
    req.methods, req.params, req.confirm_above = ["layer_conductance"], {"layer_conductance": {"steps": 4}}, 1e-9
    out = run_job(req)
    assert out.status == "confirm" and out.estimate.passes == 5 * len(info.layers)


def test_fit_job_writes_features_beside_and_never_over_a_file(tmp_path: Path) -> None:
    info = model_info(na.load_model("demo:lesion3d"), "demo:lesion3d")
    target = tmp_path / "lesion3d.vebi.npz"
    out = fit_job(FitRequest(model=info, data="demo", path=str(target), n_cases=8))
    assert out.status == "ok", out.message
    assert Path(out.path) == target and target.is_file()
    again = fit_job(FitRequest(model=info, data="demo", path=str(target), n_cases=8))
    assert again.status == "ok" and again.path.endswith("lesion3d.vebi-2.npz") and "already existed" in again.message
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = fit_job(FitRequest(model=info, data=str(empty), path=str(tmp_path / "x.vebi.npz")))
    assert bad.status == "failed" and "No scans" in bad.message and not (tmp_path / "x.vebi.npz").exists()
    cancelled = fit_job(FitRequest(model=info, data="demo", path=str(tmp_path / "c.vebi.npz"), n_cases=8),
                        cancel=lambda: True)
    assert cancelled.status == "cancelled" and not (tmp_path / "c.vebi.npz").exists()
