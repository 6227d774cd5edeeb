"""nnU-Net v2 result folders (models/_nnunet.py) on a folder written in tmp_path the way nnU-Net writes one (a
randomly initialised PlainConvUNet): loading without trust, the allow-lists, the refusals, and the prediction
against nnU-Net's predictor transcribed here from nnunetv2 2.8.1's source (DefaultPreprocessor.run_case_npy without
the crop, resample_data_or_seg, compute_steps_for_sliding_window, compute_gaussian,
_internal_maybe_mirror_and_predict, the float32 accumulation, the logits resampled back with order 1). The parity
with nnU-Net's own predictions on a trained folder is tests/models/test_nnunet_reference.py."""

from __future__ import annotations

import itertools
import json
import sys
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("dynamic_network_architectures")
skimage_transform = pytest.importorskip("skimage.transform")

import napari_attribution as na  # noqa: E402
from napari_attribution import ModelLoadError  # noqa: E402
from napari_attribution.inferers import SlidingWindowNet  # noqa: E402
from napari_attribution.inputs import prepare  # noqa: E402
from napari_attribution.io import Geometry  # noqa: E402
from napari_attribution.models._nnunet import FoldEnsemble, Transposed  # noqa: E402
from napari_attribution.targets import Class  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _nnunet_folder as nf  # noqa: E402

# ------------------------------------------------------------------------------------------------
# nnU-Net's predictor, transcribed (no code shared with the package)


def _ref_resample(data: np.ndarray, new_shape: tuple[int, ...], current: list[float], new: list[float],
                  order: int, order_z: int = 0) -> np.ndarray:
    """resample_data_or_seg_to_shape (force_separate_z None, is_seg False)."""
    from scipy.ndimage import map_coordinates

    def lowres(sp: list[float]) -> list[int]:
        return list(np.where(max(sp) / np.array(sp) == 1)[0])

    axis = None
    if max(current) / min(current) > 3:
        axis = lowres(current)
    elif max(new) / min(new) > 3:
        axis = lowres(new)
    separate = axis is not None and len(axis) == 1
    shape = np.array(data[0].shape)
    new_shape_a = np.array(new_shape)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    if not np.any(shape != new_shape_a):
        return data
    data = data.astype(float)
    kwargs = {"mode": "edge", "anti_aliasing": False}
    for c in range(data.shape[0]):
        if separate:
            a = axis[0]  # type: ignore[index]
            tmp = new_shape_a.copy()
            tmp[a] = shape[a]
            here = np.zeros(tmp)
            for s in range(shape[a]):
                idx: list[Any] = [slice(None)] * 3
                idx[a] = s
                here[tuple(idx)] = skimage_transform.resize(data[c][tuple(idx)], np.delete(new_shape_a, a), order,
                                                            **kwargs)
            if shape[a] != new_shape_a[a]:
                grids = np.mgrid[:new_shape[0], :new_shape[1], :new_shape[2]]
                coords = np.array([o / n * (g + 0.5) - 0.5
                                   for o, n, g in zip(here.shape, new_shape, grids, strict=True)])
                out[c] = map_coordinates(here, coords, order=order_z, mode="nearest")
            else:
                out[c] = here
        else:
            out[c] = skimage_transform.resize(data[c], new_shape, order, **kwargs)
    return out


def _ref_steps(image: tuple[int, ...], tile: list[int], step: float) -> list[list[int]]:
    target = [i * step for i in tile]
    num = [int(np.ceil((i - k) / j)) + 1 for i, j, k in zip(image, target, tile, strict=True)]
    steps = []
    for d in range(len(tile)):
        mx = image[d] - tile[d]
        actual = mx / (num[d] - 1) if num[d] > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(num[d])])
    return steps


def _ref_gaussian(tile: list[int]) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(tile)
    tmp[tuple(i // 2 for i in tile)] = 1
    g = gaussian_filter(tmp, [i / 8 for i in tile], 0, mode="constant", cval=0)
    g /= np.max(g) / 10
    t = torch.from_numpy(g).float()
    t[t == 0] = torch.min(t[t != 0])
    return t


def _ref_sliding(net: torch.nn.Module, data: np.ndarray, tile: list[int], mirror: tuple[int, ...] | None
                 ) -> np.ndarray:
    shape = data.shape[1:]
    padded_shape = [max(s, t) for s, t in zip(shape, tile, strict=True)]
    diff = [p - s for p, s in zip(padded_shape, shape, strict=True)]
    pads = [(0, 0)] + [(d // 2, d // 2 + d % 2) for d in diff]
    x = torch.from_numpy(np.pad(data, pads, constant_values=0)).float()
    gaussian = _ref_gaussian(tile)
    with torch.no_grad():
        k = net(x[None, :, :tile[0], :tile[1], :tile[2]]).shape[1]
        logits = torch.zeros((k, *x.shape[1:]))
        n = torch.zeros(x.shape[1:])
        steps = _ref_steps(tuple(x.shape[1:]), tile, 0.5)
        for sx in steps[0]:
            for sy in steps[1]:
                for sz in steps[2]:
                    sl = tuple(slice(s, s + t) for s, t in zip((sx, sy, sz), tile, strict=True))
                    w = x[(slice(None), *sl)][None]
                    pred = net(w)
                    if mirror is not None:
                        axes = [m + 2 for m in mirror]
                        combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
                        for c in combos:
                            pred += torch.flip(net(torch.flip(w, c)), c)
                        pred /= len(combos) + 1
                    pred = pred[0] * gaussian
                    logits[(slice(None), *sl)] += pred
                    n[sl] += gaussian
        logits /= n
    crop = tuple(slice(p[0], p[0] + s) for p, s in zip(pads[1:], shape, strict=True))
    return logits[(slice(None), *crop)].numpy()


def _reference(net: torch.nn.Module, image: np.ndarray, spacing: tuple[float, ...], transpose: list[int],
               mirror: tuple[int, ...] | None) -> dict[str, np.ndarray]:
    """nnUNetPredictor on one single-channel CT scan ``(z, y, x)`` (no crop: the scan has no zero border)."""
    data = image[None].astype(np.float32).transpose([0, *[i + 1 for i in transpose]])
    sp = [spacing[i] for i in transpose]
    target = list(nf.SPACING)  # the plans' spacing is in the transposed frame
    new_shape = tuple(int(round(i / j * k)) for i, j, k in zip(sp, target, data.shape[1:], strict=True))
    p = nf.INTENSITY
    np.clip(data, p["percentile_00_5"], p["percentile_99_5"], out=data)
    data -= p["mean"]
    data /= max(p["std"], 1e-8)
    pre = _ref_resample(data, new_shape, sp, target, 3)
    logits = _ref_sliding(net, pre, nf.PATCH, mirror)
    back = _ref_resample(logits, tuple(data.shape[1:]), target, sp, 1)
    backward = list(np.argsort(transpose))
    return {"input": pre, "logits": logits, "back": back.transpose([0, *[i + 1 for i in backward]]),
            "seg": back.argmax(0).transpose(backward)}


def _phantom(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    ct = np.full(shape, -1000.0, np.float32)
    ct[(z / 0.9) ** 2 + (y / 0.8) ** 2 + (x / 0.7) ** 2 < 1] = 40.0
    ct[(z / 0.4) ** 2 + ((y - 0.2) / 0.3) ** 2 + ((x + 0.1) / 0.35) ** 2 < 1] = 180.0
    ct[((y + 0.5) / 0.15) ** 2 + (x / 0.15) ** 2 < 1] = 1100.0
    return ct + rng.normal(0, 25, shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# loading


def test_loads_without_trust_card_and_weights(tmp_path: Path) -> None:
    root = nf.write_folder(tmp_path)
    m = na.load_model(root)
    assert type(m.module).__name__ == "PlainConvUNet" and not m.module.training
    c = m.card
    assert (c.task, c.spatial_dims, c.in_channels, c.num_classes) == ("segmentation", 3, 1, 3)
    assert c.class_names == ("background", "liver", "lesion") and c.background == 0
    assert c.spacing == (2.0, 1.0, 1.0) and c.patch_size == (16, 20, 20)
    assert c.inferer == {"type": "nnunet", "roi_size": [16, 20, 20], "step": 0.5, "mode": "gaussian",
                         "sigma_scale": 0.125, "mirror_axes": [0, 1, 2], "sw_batch_size": None}
    mean, std = nf.INTENSITY["mean"], nf.INTENSITY["std"]
    assert c.preprocess is not None
    assert c.preprocess["window"] == [-900.0, 900.0]
    assert c.preprocess["scale_to"] == pytest.approx([(-900 - mean) / std, (900 - mean) / std])
    assert c.preprocess["resample"]["order"] == 3 and c.preprocess["resample"]["back_order"] == 1
    import hashlib

    ckpt = root / "fold_0" / "checkpoint_final.pth"
    assert m.weights_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    state = nf.network(0).state_dict()
    assert all(torch.equal(v, state[k]) for k, v in m.module.state_dict().items())
    assert na.load_model(root, mirroring=False).card.inferer["mirror_axes"] == []  # type: ignore[index]


def test_folds_checkpoints_and_the_ensemble(tmp_path: Path) -> None:
    root = nf.write_folder(tmp_path, folds=(0, 1))
    torch.save(nf.checkpoint(nf.network(7), 1, nf.plans()), root / "fold_1" / "checkpoint_best.pth")
    both = na.load_model(root)
    assert isinstance(both.module, FoldEnsemble) and len(both.module.folds) == 2
    x = torch.randn(1, 1, 16, 20, 20)
    with torch.no_grad():
        expected = (nf.network(0)(x) + nf.network(1)(x)) / 2
        assert torch.allclose(both.module(x), expected, atol=1e-6)
        one = na.load_model(root, fold=1)
        assert torch.allclose(one.module(x), nf.network(1)(x), atol=1e-6)
        assert torch.allclose(na.load_model(root / "fold_1").module(x), nf.network(1)(x), atol=1e-6)
        best = na.load_model(root / "fold_1" / "checkpoint_best.pth")
        assert torch.allclose(best.module(x), nf.network(7)(x), atol=1e-6)
        assert torch.allclose(na.load_model(root, fold=1, checkpoint="best").module(x), nf.network(7)(x), atol=1e-6)
        # as nnU-Net's auto_detect_available_folds: the folds that have that checkpoint
        assert torch.allclose(na.load_model(root, checkpoint="best").module(x), nf.network(7)(x), atol=1e-6)
    with pytest.raises(ModelLoadError, match="fold_0/checkpoint_best.pth"):
        na.load_model(root, fold=0, checkpoint="best")
    with pytest.raises(ModelLoadError, match="only to nnU-Net result folders"):
        na.load_model({"factory": "torch.nn:Conv3d", "weights": "random",
                       "kwargs": {"in_channels": 1, "out_channels": 2, "kernel_size": 1}}, fold=0)


def test_refuses_code_pickles(tmp_path: Path) -> None:
    import os

    root = nf.write_folder(tmp_path)
    ckpt = root / "fold_0" / "checkpoint_final.pth"
    torch.save(nf.checkpoint(nf.network(0), 0, nf.plans(), extra={"hook": os.system}), ckpt)
    with pytest.raises(ModelLoadError, match="could run code"):
        na.load_model(root)


def test_class_names_come_from_the_allow_list(tmp_path: Path) -> None:
    for arch_change, match in (({"network_class_name": "subprocess.Popen"}, "not inside the network libraries"),
                               ({"arch_kwargs": {**nf.ARCH["arch_kwargs"], "nonlin": "builtins.eval"}},
                                "not inside the network libraries"),
                               ({"network_class_name": "torch.nn.functional.relu"}, "not a torch.nn.Module class")):
        arch = {**deepcopy(nf.ARCH), **arch_change}
        root = nf.write_folder(tmp_path / str(len(list(tmp_path.iterdir()))), architecture=arch)
        with pytest.raises(ModelLoadError, match=match):
            na.load_model(root)


def test_missing_dynamic_network_architectures_says_how_to_install(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = nf.write_folder(tmp_path)
    for name in [n for n in sys.modules if n.startswith("dynamic_network_architectures")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures", None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps dynamic-network-architectures==0.4.4"):
        na.load_model(root)


@pytest.mark.parametrize(("labels", "config", "match"), [
    ({"background": 0, "whole": [1, 2], "core": [2]}, {}, "region-based"),
    (None, {"previous_stage": "3d_lowres"}, "cascade"),
    (None, {"normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [True]}, "non-zero region"),
    (None, {"normalization_schemes": ["MyNormalization"]}, "'MyNormalization' is not reproduced"),
    (None, {"resampling_fn_data": "resample_torch_fornnunet"}, "'resample_torch_fornnunet' is not reproduced"),
    (None, {"patch_size": [20, 20]}, "2D configuration"),
])
def test_refuses_what_is_not_reproduced(tmp_path: Path, labels: Any, config: dict[str, Any], match: str) -> None:
    root = nf.write_folder(tmp_path, labels=labels, **config)
    with pytest.raises(ModelLoadError, match=match):
        na.load_model(root)


def test_old_plans_format_is_converted(tmp_path: Path) -> None:
    arch = nf.ARCH["arch_kwargs"]
    old = {"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 4, "unet_max_num_features": 16,
           "n_conv_per_stage_encoder": arch["n_conv_per_stage"], "n_conv_per_stage_decoder":
           arch["n_conv_per_stage_decoder"], "num_pool_per_axis": [1, 2, 2], "pool_op_kernel_sizes": arch["strides"],
           "conv_kernel_sizes": arch["kernel_sizes"]}
    root = nf.write_folder(tmp_path)
    plans = json.loads((root / "plans.json").read_text())
    del plans["configurations"]["3d_fullres"]["architecture"]
    plans["configurations"]["3d_fullres"].update(old)
    (root / "plans.json").write_text(json.dumps(plans))
    m = na.load_model(root)
    x = torch.randn(1, 1, 16, 20, 20)
    with torch.no_grad():
        assert torch.allclose(m.module(x), nf.network(0)(x), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# the prediction against nnU-Net's predictor (transcribed)


@pytest.mark.parametrize(("transpose", "shape", "spacing"), [
    ([0, 1, 2], (13, 30, 26), (2.5, 0.8, 1.1)),     # resampled, several windows
    ([0, 1, 2], (6, 18, 22), (2.0, 1.0, 1.0)),      # at the training spacing, smaller than the patch: padded
    ([2, 0, 1], (30, 14, 24), (0.9, 2.0, 1.0)),     # nnU-Net's transposed axes
])
def test_prediction_equals_nnunet_predictor(tmp_path: Path, transpose: list[int], shape: tuple[int, int, int],
                                            spacing: tuple[float, float, float]) -> None:
    root = nf.write_folder(tmp_path, transpose=transpose)
    net = nf.network(0)
    ct = _phantom(shape, 1)
    geometry = Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0))
    for mirroring in (True, False):
        loaded = na.load_model(root, mirroring=mirroring)
        if transpose != [0, 1, 2]:
            assert isinstance(loaded.module, Transposed)
        ref = _reference(net, ct, spacing, transpose, (0, 1, 2) if mirroring else None)
        prepared = prepare(ct, geometry, loaded.card)
        ours_in = prepared.data.transpose(transpose)
        assert ours_in.shape == ref["input"][0].shape
        np.testing.assert_allclose(ours_in, ref["input"][0], atol=1e-5, rtol=0)
        with torch.no_grad():
            sw = SlidingWindowNet(loaded.module, loaded.card.sliding_window)  # type: ignore[arg-type]
            logits = sw(torch.from_numpy(prepared.data)[None, None])[0].numpy()
            on_scan = prepared.wrap(loaded.module)(torch.from_numpy(prepared.scan)[None, None])[0].numpy()
        logits_t = logits.transpose([0, *[i + 1 for i in transpose]])
        assert float(np.abs(logits_t - ref["logits"]).max()) < 1e-4
        assert float(np.abs(on_scan - ref["back"]).max()) < 1e-4
        assert (on_scan.argmax(0) == ref["seg"]).mean() >= 0.999


def test_mirroring_changes_the_prediction_and_averages_the_gradient(tmp_path: Path) -> None:
    root = nf.write_folder(tmp_path)
    ct = _phantom((8, 20, 20), 2)
    geometry = Geometry(spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    on = na.load_model(root)
    off = na.load_model(root, mirroring=False)
    maps = {}
    for name, m in (("on", on), ("off", off)):
        a = na.explain(m, ct, "saliency", target=Class(1), geometry=geometry)
        assert a.data.shape == ct.shape and np.isfinite(a.data).all() and np.abs(a.data).max() > 0
        maps[name] = a.data
    assert not np.allclose(maps["on"], maps["off"])
    # the gradient of the mirrored prediction is the mean of the mirrored networks' gradients (linearity)
    net = nf.network(0)
    x = torch.from_numpy(prepare(ct, geometry, on.card).scan)[None, None]
    prepared = prepare(ct, geometry, on.card)

    def grad(module: torch.nn.Module, dims: tuple[int, ...]) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        y = torch.flip(module(torch.flip(xg, dims)), dims) if dims else module(xg)
        y[:, 1].sum().backward()
        assert xg.grad is not None
        return xg.grad

    sw_off = SlidingWindowNet(net, off.card.sliding_window)  # type: ignore[arg-type]
    wrapped_on = prepared.wrap(on.module)
    combos = [()] + [c for i in range(3) for c in itertools.combinations((2, 3, 4), i + 1)]
    # flipping a 16 x 20 x 20 scan commutes with the window placement only when one window covers it; this scan is
    # padded up to the window, so the check holds exactly
    plain = prepare(ct, geometry, off.card)
    expected = sum(grad(plain.wrap(sw_off.net), c) for c in combos) / len(combos)
    got = grad(wrapped_on, ())
    assert torch.allclose(got, expected, atol=1e-5)


def test_nnunet_inferer_card_round_trip_and_mirror_passes() -> None:
    from napari_attribution.inferers import SlidingWindow

    spec = SlidingWindow.from_card({"type": "nnunet", "roi_size": [8, 8, 8], "mirror_axes": [0, 2]})
    assert (spec.kind, spec.step, spec.mode, spec.passes_per_window) == ("nnunet", 0.5, "gaussian", 4)
    assert SlidingWindow.from_card(spec.to_dict()) == spec
    with pytest.raises(ModelLoadError, match="mirror_axes"):
        SlidingWindow.from_card({"type": "nnunet", "roi_size": [8, 8, 8], "mirror_axes": [3]})
    with pytest.raises(ModelLoadError, match="'step'"):
        SlidingWindow.from_card({"type": "nnunet", "roi_size": [8, 8, 8], "step": 0})
    with pytest.raises(ModelLoadError, match="unknown key"):
        SlidingWindow.from_card({"type": "nnunet", "roi_size": [8, 8, 8], "overlap": 0.5})
    calls = []
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    net.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    sw = SlidingWindowNet(net, spec)
    with torch.no_grad():
        sw(torch.randn(1, 1, 8, 12, 8))  # the first call also measures one window's memory
        calls.clear()
        sw(torch.randn(1, 1, 8, 12, 8))  # 2 windows, each with its 3 mirrors
    assert sum(calls) == 2 * 4  # window passes (a window and its mirrors go in one call)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        expected = sum(torch.flip(net(torch.flip(x, d)), d) if d else net(x)
                       for d in [(), (2,), (4,), (2, 4)]) / 4
        assert torch.allclose(sw(x), expected, atol=1e-6)


def test_a_zero_border_that_nnunet_would_crop_is_warned(tmp_path: Path) -> None:
    loaded = na.load_model(nf.write_folder(tmp_path))
    assert loaded.card.preprocess is not None and loaded.card.preprocess["crop_nonzero"] is True
    geometry = Geometry(spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    ct = _phantom((8, 20, 20), 3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(ct, geometry, loaded.card)  # a CT in HU: no zero voxel, nothing cropped, no warning
    padded = np.zeros((8, 24, 20), np.float32)
    padded[:, 2:22] = ct
    with pytest.warns(na.PreprocessingWarning, match=r"\(8, 20, 20\) of \(8, 24, 20\)"):
        prepare(padded, geometry, loaded.card)


def test_residual_encoder_unet_and_a_moved_class_path(tmp_path: Path) -> None:
    """nnU-Net's ResEnc presets; plans converted from the old format name ``architectures.residual_unet``, which
    dynamic-network-architectures 0.4 keeps in ``architectures.unet`` (nnU-Net looks the class up by name)."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    arch = deepcopy(nf.ARCH)
    arch["network_class_name"] = "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"
    kw = arch["arch_kwargs"]
    kw["n_blocks_per_stage"] = kw.pop("n_conv_per_stage")
    kw["n_conv_per_stage_decoder"] = [1, 1]
    root = nf.write_folder(tmp_path, folds=(), architecture=arch)
    built = dict(kw, conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)
    torch.manual_seed(3)
    net = ResidualEncoderUNet(input_channels=1, num_classes=3, deep_supervision=False, **built).eval()
    (root / "fold_0").mkdir()
    torch.save(nf.checkpoint(net, 0, nf.plans(architecture=arch)), root / "fold_0" / "checkpoint_final.pth")
    m = na.load_model(root)
    assert type(m.module) is ResidualEncoderUNet
    x = torch.randn(1, 1, 16, 20, 20)
    with torch.no_grad():
        assert torch.allclose(m.module(x), net(x), atol=1e-6)


def test_the_checkpoints_mirror_axes_are_the_networks_transposed_axes(tmp_path: Path) -> None:
    transpose = [2, 0, 1]
    root = nf.write_folder(tmp_path, transpose=transpose)
    net = nf.network(0)
    torch.save(nf.checkpoint(net, 0, nf.plans(transpose), extra={"inference_allowed_mirroring_axes": (0, 1)}),
               root / "fold_0" / "checkpoint_final.pth")
    loaded = na.load_model(root)
    assert loaded.card.inferer is not None and loaded.card.inferer["mirror_axes"] == [0, 2]  # scan axes t[0], t[1]
    ct = _phantom((26, 14, 22), 4)
    spacing = (1.0, 2.0, 1.0)
    ref = _reference(net, ct, spacing, transpose, (0, 1))
    prepared = prepare(ct, Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0)), loaded.card)
    with torch.no_grad():
        on_scan = prepared.wrap(loaded.module)(torch.from_numpy(prepared.scan)[None, None])[0].numpy()
    assert float(np.abs(on_scan - ref["back"]).max()) < 1e-4
