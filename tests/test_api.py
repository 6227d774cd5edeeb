"""The public contract: exported names, import hygiene, errors, compare, layouts, chunking, progress."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from _nets import MODELS, Classifier, TinyUNet, image, seeded
from torch import nn

import napari_attribution as na

CANONICAL = ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "deconvnet",
             "cam", "grad_cam", "grad_cam_pp", "hires_cam", "score_cam", "guided_grad_cam", "layer_activation",
             "occlusion", "rise"]


def test_all_is_sorted_and_exported() -> None:
    assert na.__all__ == sorted(na.__all__)
    for name in na.__all__:
        assert hasattr(na, name), name
    for name in ["explain", "compare", "list_methods", "Attribution", "targets", "MethodInfo", "AttributionError",
                 "TargetError", "LayerNotFoundError", "InputShapeError", "ModelLoadError", "ReaderError", "Cancelled"]:
        assert name in na.__all__


def test_import_does_not_pull_in_qt_magicgui_or_napari() -> None:
    code = ("import sys, napari_attribution as na; na.list_methods(); "
            "bad = [m for m in ('qtpy', 'magicgui', 'napari', 'PyQt5', 'PyQt6', 'PySide6') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_registry_lists_the_canonical_methods() -> None:
    infos = {m.name: m for m in na.list_methods()}
    for name in CANONICAL:
        assert name in infos
        info = infos[name]
        assert info.label and info.paper and info.passes and info.family
    assert infos["grad_cam"].needs_layer and not infos["saliency"].needs_layer
    assert infos["integrated_gradients"].signed and not infos["saliency"].signed
    assert not infos["guided_backprop"].supports_torchscript and infos["occlusion"].supports_torchscript
    assert na.get_method("captum:Saliency").family == "captum"


def test_errors_are_one_family_with_actionable_messages() -> None:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    with pytest.raises(na.MethodError, match="Known methods"):
        na.explain(model, img, "gradcam")
    with pytest.raises(na.ParameterError, match="does not take the parameter 'stepz'"):
        na.explain(model, img, "integrated_gradients", params={"stepz": 3})
    with pytest.raises(na.LayerNotFoundError, match="features"):
        na.explain(model, img, "grad_cam", layer="featurez")
    with pytest.raises(na.TargetError, match="3 output classes"):
        na.explain(model, img, "saliency", 7)
    with pytest.raises(na.InputShapeError, match="does not fit"):
        na.explain(model, np.zeros((2, 3, 8, 8), np.float32), "saliency")
    with pytest.raises(na.InputShapeError, match="NaN"):
        na.explain(model, np.full(shape, np.nan, np.float32), "saliency")
    with pytest.raises(na.TargetError, match="segmentation"):
        na.explain(model, img, "saliency", na.targets.Predicted(1))
    for err in (na.MethodError, na.ParameterError, na.LayerNotFoundError, na.TargetError, na.InputShapeError,
                na.Cancelled, na.ReaderError, na.ModelLoadError):
        assert issubclass(err, na.AttributionError)


def test_empty_predicted_region_suggests_region_or_voxel() -> None:
    class Background(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x + 10, x - 10], 1)

    with pytest.raises(na.TargetError, match="Region"):
        na.explain(Background(), np.zeros((8, 8, 8), np.float32), "saliency")
    with pytest.raises(na.TargetError, match="empty"):
        na.explain(Background(), np.zeros((8, 8, 8), np.float32), "saliency",
                   na.targets.Region(1, np.zeros((8, 8, 8), bool)))


def test_default_target_and_prediction() -> None:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    res = na.explain(model, img, "saliency")
    with torch.no_grad():
        logits = model(torch.from_numpy(img)[None, None])[0]
    assert res.target == na.targets.Class(int(logits.argmax()))
    np.testing.assert_allclose(res.prediction, torch.softmax(logits, 0).numpy(), rtol=1e-5)
    make, shape = MODELS["unet3d"]
    seg, img3 = make(), image(shape)
    res = na.explain(seg, img3, "saliency")
    assert isinstance(res.target, na.targets.Predicted) and res.target.k != 0
    assert res.prediction.shape == shape


def test_default_layer_is_last_spatial_layer_before_head() -> None:
    make, shape = MODELS["cnn2d"]
    assert na.explain(make(), image(shape), "grad_cam").layer == "features"
    make, shape = MODELS["unet3d"]
    assert na.explain(make(), image(shape), "grad_cam").layer == "dec"
    names = [c.name for c in na.find_layers(make(), torch.zeros((1, 1) + shape))]
    assert "out" not in names and "bottleneck" in names


class CountingModel(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.net(x)


def test_compare_shares_one_forward_and_matches_explain() -> None:
    make, shape = MODELS["cnn3d"]
    model = CountingModel(make())
    img = image(shape)
    methods = ["saliency", "input_x_gradient", "grad_cam", "hires_cam", "grad_cam_pp", "layer_activation"]
    res = na.compare(model, img, methods, 1, layer="net.features")
    assert model.batches == [1], "shared-pass methods must use one forward pass"
    for m in methods:
        single = na.explain(model, img, m, 1, layer="net.features")
        np.testing.assert_allclose(res[m].data, single.data, rtol=1e-6, atol=1e-9)


def test_compare_routes_params() -> None:
    make, shape = MODELS["cnn2d"]
    model, img = make(), image(shape)
    res = na.compare(model, img, ["integrated_gradients", "smoothgrad", "occlusion"], 1,
                     params={"seed": 4, "integrated_gradients": {"steps": 5}, "samples": 2, "window": 4})
    assert res["integrated_gradients"].params["steps"] == 5
    assert res["smoothgrad"].params["samples"] == 2 and res["occlusion"].params["window"] == 4
    assert all(r.params["seed"] == 4 for r in res.values())
    with pytest.raises(na.ParameterError, match="No method"):
        na.compare(model, img, ["saliency", "grad_cam"], params={"steps": 3})


def test_chunking_follows_max_batch_and_memory_budget() -> None:
    make, shape = MODELS["cnn3d"]
    model = CountingModel(make())
    img = image(shape)
    ref = na.explain(model, img, "integrated_gradients", 1, params={"steps": 10, "max_batch": 10}).data
    model.batches.clear()
    small = na.explain(model, img, "integrated_gradients", 1, params={"steps": 10, "max_batch": 3}).data
    assert max(model.batches[1:]) == 3
    scale = 1e-5 * float(np.abs(ref).max())  # chunk sizes pick different convolution kernels: float32 rounding
    np.testing.assert_allclose(small, ref, rtol=1e-5, atol=scale)
    model.batches.clear()
    tiny = na.explain(model, img, "integrated_gradients", 1, params={"steps": 10, "memory_budget": 1}).data
    assert max(model.batches[1:]) == 1
    np.testing.assert_allclose(tiny, ref, rtol=1e-5, atol=scale)
    model.batches.clear()
    na.explain(model, img, "occlusion", 1, params={"window": 4, "memory_budget": 10**9})
    assert max(model.batches) > 1  # a generous budget batches the windows


def test_chunks_on_the_cpu_stop_at_the_efficient_size() -> None:
    """Chunks hold no more samples than needed to reach ``EFFICIENT_BYTES`` of activations (bigger ones only cost
    memory and cache misses on the CPU); the memory budget still caps them, an explicit ``max_batch`` decides."""
    import torch

    from napari_attribution.methods._run import Run

    run = Run(torch.nn.Identity(), torch.zeros(1, 1, 4, 4), layer=None, layer_name=None, params={})
    run.sample_bytes = Run.EFFICIENT_BYTES // 4
    assert run.batch_size(100) == 4
    run.sample_bytes = Run.EFFICIENT_BYTES * 2
    assert run.batch_size(100) == 1
    assert run.batch_size(100, factor=1.0) == 1
    run.sample_bytes = Run.EFFICIENT_BYTES // 8
    run.params = {"memory_budget": Run.EFFICIENT_BYTES}
    assert run.batch_size(100) == 3  # the budget (with 2.5x for the backward pass) is tighter than 8 samples
    run.params = {"max_batch": 7}
    assert run.batch_size(100) == 7


def test_progress_is_monotone_and_complete() -> None:
    make, shape = MODELS["cnn2d"]
    seen: list[tuple[int, int, str]] = []
    na.explain(make(), image(shape), "occlusion", 1, params={"window": 4, "max_batch": 4},
               progress=lambda d, t, m: seen.append((d, t, m)))
    assert len(seen) > 3
    done = [d / t for d, t, _ in seen]
    assert done == sorted(done) and done[-1] == 1.0
    assert all(isinstance(m, str) and m for _, _, m in seen)


def test_depth_one_volume_equals_2d_image() -> None:
    model = seeded(Classifier(2))
    img = image((20, 20))
    for m in ["saliency", "grad_cam", "integrated_gradients", "occlusion"]:
        p = {"steps": 8} if m == "integrated_gradients" else {}
        a = na.explain(model, img, m, 1, params=p).data
        b = na.explain(model, img[None], m, 1, params=p).data
        np.testing.assert_allclose(b[0], a, rtol=1e-6, atol=1e-9)


def test_2d_model_on_volume_runs_slicewise_with_nan_elsewhere() -> None:
    model = seeded(Classifier(2))
    vol = np.stack([image((20, 20), seed=s) for s in range(4)])
    res = na.explain(model, vol, "saliency", 1, params={"slices": [1, 3]})
    assert res.data.shape == vol.shape
    assert np.isnan(res.data[0]).all() and np.isnan(res.data[2]).all()
    np.testing.assert_allclose(res.data[3], na.explain(model, vol[3], "saliency", 1).data, rtol=1e-6)
    assert res.prediction.shape == (4, 3) and np.isnan(res.prediction[0]).all() and np.isfinite(res.prediction[1]).all()
    assert res.target == na.targets.Class(1) and res.per_slice.targets[1] == na.targets.Class(1)
    seg = seeded(TinyUNet(2))
    vox = na.explain(seg, vol, "saliency", na.targets.Voxel(1, (2, 5, 6)))
    assert np.isfinite(vox.data[2]).all() and np.isnan(vox.data[0]).all()


def test_multichannel_reduction_and_per_channel() -> None:
    model = seeded(Classifier(2, in_ch=3))
    img = np.stack([image((16, 16), seed=s) for s in range(3)])
    sal = na.explain(model, img, "saliency", 1)
    assert sal.per_channel.shape == (3, 16, 16)
    np.testing.assert_allclose(sal.data, np.abs(sal.per_channel).max(0), rtol=1e-6)
    ixg = na.explain(model, img, "input_x_gradient", 1)
    np.testing.assert_allclose(ixg.data, ixg.per_channel.sum(0), rtol=1e-5, atol=1e-9)
    ig = na.explain(model, img, "integrated_gradients", 1, params={"steps": 64, "baseline": 0.0})
    c = ig.extras["completeness"]
    assert abs(c["sum"] - c["delta"]) <= 0.01 * abs(c["delta"]) + 1e-4
    with pytest.raises(na.InputShapeError, match="3 channels"):
        na.explain(model, img[:2], "saliency", 1)


def test_torchscript_models_take_gradient_and_perturbation_methods_only() -> None:
    make, shape = MODELS["cnn2d"]
    model = make()
    with warnings.catch_warnings():  # torch 2.13 deprecates scripting; users still bring TorchScript files
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    img = image(shape)
    np.testing.assert_allclose(na.explain(scripted, img, "saliency", 1).data,
                               na.explain(model, img, "saliency", 1).data, rtol=1e-5)
    assert na.explain(scripted, img, "occlusion", 1).data.shape == shape
    for m in ("grad_cam", "guided_backprop"):
        with pytest.raises(na.MethodError, match="TorchScript"):
            na.explain(scripted, img, m, 1)


def test_attribution_is_raw_and_carries_metadata() -> None:
    make, shape = MODELS["cnn2d"]
    geometry = na.Geometry(spacing=(2.0, 0.5), origin=(1.0, 3.0))
    res = na.explain(make(), image(shape), "input_x_gradient", 1, geometry=geometry)
    assert res.geometry is geometry and res.signed and res.method == "input_x_gradient"
    assert res.data.min() < 0 < res.data.max()  # signed and not min-max normalised
    assert res.seconds > 0 and "class 1" in res.description and "input_x_gradient" in repr(res)


def test_slicewise_segmentation_skips_slices_without_the_structure() -> None:
    class Blob2D(nn.Module):
        """Predicts class 1 where the pixel is bright (2 output channels)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor([[[[0.0]]], [[[1.0]]]]))
                self.conv.bias.copy_(torch.tensor([0.0, -0.5]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    vol = np.zeros((3, 8, 8), np.float32)
    vol[1, 2:5, 2:5] = 1.0
    res = na.explain(Blob2D(), vol, "saliency")
    assert res.per_slice.slices == (1,) and set(res.per_slice.skipped) == {0, 2}
    assert np.isnan(res.data[0]).all() and np.isfinite(res.data[1]).all()
    with pytest.raises(na.TargetError, match="No slice"):
        na.explain(Blob2D(), np.zeros((3, 8, 8), np.float32), "saliency")


def test_card_resampling_is_inside_the_differentiable_forward() -> None:
    """The map is the gradient with respect to the scan's own voxels of the target on the output resampled back to
    the scan: d/dx T(to_scan(net(to_model(window(x))))), computed here by hand in torch."""
    import torch
    import torch.nn.functional as F

    from napari_attribution.inputs import prepare
    from napari_attribution.io import Geometry

    make, _ = MODELS["unet3d"]
    net = make()
    card = na.ModelCard(spatial_dims=3, in_channels=1, spacing=(1.0, 1.0, 1.0),
                        preprocess={"window": [-1.0, 1.0], "pad_to_multiple": 4})
    loaded = na.LoadedModel(net, card)
    img = image((6, 10, 10))
    geometry = Geometry(spacing=(2.0, 0.8, 0.8), origin=(0.0, 0.0, 0.0))
    mask = np.zeros(img.shape, bool)
    mask[2:4, 3:7, 3:7] = True
    res = na.explain(loaded, img, "saliency", na.targets.Region(1, mask), geometry=geometry)
    assert res.data.shape == img.shape and res.geometry is geometry
    assert res.prediction.shape == img.shape
    prep = prepare(img, geometry, card)
    assert prep.shape == (12, 8, 8) and prep.resampled_shape == (12, 8, 8)
    assert res.extras["preprocessing"] and res.extras["model_grid_shape"] == prep.shape

    x = torch.from_numpy(np.clip(img, -1, 1) / 2 + 0.5).float()[None, None].requires_grad_(True)
    inner = F.interpolate(x, size=(12, 8, 8), mode="trilinear", align_corners=False)  # no padding needed: 12, 8, 8
    out = F.interpolate(net(inner), size=img.shape, mode="trilinear", align_corners=False)
    (grad,) = torch.autograd.grad((out[0, 1] * torch.from_numpy(mask)).sum(), x)
    np.testing.assert_allclose(res.data, grad[0, 0].abs().numpy(), rtol=1e-4, atol=1e-6)
    labels = out[0].argmax(0).numpy()
    np.testing.assert_array_equal(res.prediction, labels)  # the prediction on the scan's grid
    # integrated gradients' completeness holds on the scan's grid (it did not when maps were interpolated after)
    ig = na.explain(loaded, img, "integrated_gradients", na.targets.Region(1, mask), geometry=geometry,
                    params={"steps": 64})
    assert ig.extras["completeness"]["relative_error"] < 0.01
    # without a geometry there is nothing to resample from: intensity only, same grid (padding to 4 still applies)
    plain = na.explain(loaded, img, "saliency", 1)
    assert plain.data.shape == img.shape and plain.extras["model_grid_shape"] == (8, 12, 12)


def test_channel_argmax_equals_torch_argmax_including_ties() -> None:
    import torch

    from napari_attribution.targets import channel_argmax

    g = torch.Generator().manual_seed(0)
    for k in (2, 3, 7):
        t = torch.randint(0, 3, (k, 5, 6, 4), generator=g).float()  # many ties
        assert torch.equal(channel_argmax(t), t.argmax(0))
    t = torch.randn(1, 4, 4, generator=g)
    assert torch.equal(channel_argmax(t), torch.zeros(4, 4, dtype=torch.long))
