"""Single-sample 3D convolutions on oneDNN (``fast_cpu_conv3d``): same values and gradients as PyTorch's own
convolution, only inside the block, only for the cases it is meant for."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from _nets import Classifier, image, seeded
from torch import nn

import napari_attribution as na
from napari_attribution.methods._hooks import fast_cpu_conv3d

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not in this torch build")

CONFIGS = [
    dict(stride=1, padding=1, dilation=1, groups=1),
    dict(stride=2, padding=1, dilation=1, groups=1),
    dict(stride=(1, 2, 2), padding=(0, 1, 2), dilation=1, groups=1),
    dict(stride=1, padding=2, dilation=2, groups=1),
    dict(stride=1, padding=1, dilation=1, groups=2),
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=1, padding=3, dilation=1, groups=1),  # padding beyond the kernel's reach
    dict(stride=1, padding=(1, 0, 2), dilation=(1, 2, 1), groups=1),
]


@pytest.mark.parametrize("conf", CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_all_gradients_match_pytorch(conf: dict, bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 6, 3, bias=bias, **conf)
    x = torch.randn(1, 4, 11, 13, 12)

    def grads() -> tuple[torch.Tensor, ...]:
        xi = x.clone().requires_grad_(True)
        y = conv(xi)
        w = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
        params = [xi, conv.weight] + ([conv.bias] if bias else [])
        return (y.detach(), *torch.autograd.grad((y * w).sum(), params))

    ref = grads()
    with fast_cpu_conv3d(conv) as mode:
        fast = grads()
    assert mode is not None and mode.count == 1  # the fast path really ran
    for a, b in zip(ref, fast, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_only_single_sample_cpu_float32_and_only_inside_the_block() -> None:
    conv = nn.Conv3d(2, 3, 3, padding=1)
    with fast_cpu_conv3d(conv) as mode:
        assert mode is not None
        conv(torch.randn(2, 2, 6, 6, 6))  # a batch: PyTorch already uses oneDNN
        conv.double()(torch.randn(1, 2, 6, 6, 6, dtype=torch.float64))  # not float32
        conv.float()
        F.conv3d(torch.randn(1, 2, 6, 6, 6), conv.weight, padding="same")  # string padding
        assert mode.count == 0
        conv(torch.randn(1, 2, 6, 6, 6))
        assert mode.count == 1
    conv(torch.randn(1, 2, 6, 6, 6))
    assert mode.count == 1  # the mode is gone after the block


def test_inactive_without_conv3d_or_off_cpu() -> None:
    with fast_cpu_conv3d(nn.Sequential(nn.Conv2d(1, 2, 3))) as mode:
        assert mode is None
    with fast_cpu_conv3d(nn.Conv3d(1, 2, 3), "meta") as mode:
        assert mode is None


def test_thread_local() -> None:
    """Another thread (the napari UI thread, say) keeps PyTorch's own convolution."""
    conv = nn.Conv3d(1, 2, 3)
    seen: list[int] = []
    with fast_cpu_conv3d(conv) as mode:
        assert mode is not None
        t = threading.Thread(target=lambda: (conv(torch.randn(1, 1, 5, 5, 5)), seen.append(mode.count)))
        t.start()
        t.join()
    assert seen == [0]


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "guided_backprop", "grad_cam"])
def test_explain_3d_equals_plain_kernel(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole explanation agrees with the one computed with PyTorch's default kernel choice."""
    model = seeded(Classifier(3), 3)
    img = image((12, 14, 10), 4)
    params = {"steps": 16} if method == "integrated_gradients" else None
    modes = []

    @contextmanager
    def spy(*args, **kwargs):
        with fast_cpu_conv3d(*args, **kwargs) as mode:
            modes.append(mode)
            yield mode

    monkeypatch.setattr("napari_attribution.pipeline.fast_cpu_conv3d", spy)
    fast = na.explain(model, img, method, target=1, params=params).data
    assert modes and modes[0] is not None and modes[0].count > 0  # the pipeline ran its convolutions on oneDNN
    monkeypatch.setattr("napari_attribution.methods._hooks._onednn_usable", lambda: False)
    plain = na.explain(model, img, method, target=1, params=params).data
    scale = float(abs(plain).max())
    assert scale > 0
    assert abs(fast - plain).max() <= 1e-4 * scale


@pytest.mark.parametrize(("shape", "size"), [
    ((1, 1, 4, 4, 4), (64, 64, 64)), ((1, 2, 3, 5, 7), (13, 9, 30)), ((1, 1, 7, 7), (224, 224)),
    ((1, 3, 10, 12), (5, 7)), ((2, 1, 6), (17,)), ((1, 1, 1, 4, 4), (1, 64, 64)), ((1, 1, 16, 8), (96, 96)),
])
def test_separable_upsampling_equals_torch_interpolate(shape: tuple, size: tuple) -> None:
    """Layer maps are upsampled one axis at a time; the result is F.interpolate's (align_corners=False)."""
    from napari_attribution.methods._run import upsample

    m = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    ref = F.interpolate(m, size=size, mode=mode, align_corners=False)
    ours = upsample(m, size)
    assert ours.shape == ref.shape and ours.is_contiguous()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    m64 = m.double()
    torch.testing.assert_close(upsample(m64, size), F.interpolate(m64, size=size, mode=mode, align_corners=False))
