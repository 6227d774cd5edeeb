"""Response back-projection seeds what the spec says (issue 11, methods.md §A1 as revised).

- ``mode="dominant"`` seeds each class with the positive part of its logit: seeded with the logit itself, a class
  the model rejects (a large negative logit) held the strongest voxels of the demo classifier in all 12 phantoms
  and the predicted class in none.
- With a ``channel``, each of the ``top_n`` strongest units is seeded alone and back-projected on its own (Zeiler &
  Fergus), not all of them together: the deconvnet's ReLU rule makes the two differ.
"""

from __future__ import annotations

import numpy as np
import torch
from _nets import MODELS, image
from torch import nn

import napari_attribution as na
from napari_attribution.models.demo import abdomen_phantom, get_demo
from napari_attribution.pipeline import network_on_scan


def test_dominant_mode_the_predicted_class_holds_the_strongest_voxels_where_the_model_is_confident() -> None:
    model = get_demo("demo:contrast-phase")
    confident = held = 0
    for seed in range(12):
        img = abdomen_phantom(seed).image
        res = na.explain(model, img, "response_backprojection", None, params={"mode": "dominant"})
        with torch.no_grad():
            logits = network_on_scan(model, img, None, lambda net, x: net(x))[0].numpy()
        per_class, cls = res.extras["per_class"], res.extras["dominant_class"]
        for k in np.flatnonzero(logits <= 0):  # a class the model rejects has no response to back-project
            assert not per_class[k].any() and not (cls == k).any(), (seed, k, logits)
        prob = np.asarray(res.prediction)
        if prob.max() < 0.9:
            continue
        confident += 1
        strongest = res.data >= np.quantile(res.data, 0.99)
        held += float((cls[strongest] == prob.argmax()).mean()) > 0.5
    assert confident >= 10
    assert held >= confident - 1, (held, confident)  # was 0 of 11 when classes were seeded with their logits


def _deconvnet_reference(model: nn.Module, x: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Zeiler-Fergus deconvnet from the tiny UNet's ``bottleneck`` output, written out layer by layer: a
    convolution's backward is its transpose (autograd of that one linear layer), a ReLU's is ``max(g, 0)``."""
    layers = [model.enc[0], model.enc[1], model.down[0], model.down[1], model.bottleneck[0], model.bottleneck[1]]
    inputs, h = [], x
    for m in layers:
        inputs.append(h.detach())
        h = m(h)
    g = seed
    for m, inp in zip(reversed(layers), reversed(inputs), strict=True):
        if isinstance(m, nn.ReLU):
            g = g.clamp(min=0)
        else:
            inp = inp.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(m(inp), inp, g)
    return g[0].clamp(min=0).sum(0)


def test_unit_mode_back_projects_each_of_the_top_units_alone() -> None:
    make, shape = MODELS["unet3d"]
    model, img = make(), image(shape)
    ch, n = 2, 9
    res = na.explain(model, img, "response_backprojection", 1, layer="bottleneck", params={"channel": ch, "top_n": n})
    x = torch.from_numpy(img)[None, None]
    with torch.no_grad():
        act = model.bottleneck(model.down(model.enc(x)))
    values, top = torch.topk(act[0, ch].flatten(), n)
    per_unit = res.extras["per_unit"]
    assert per_unit.shape == (n,) + shape
    singles = []
    for i in range(n):
        seed = torch.zeros_like(act)
        seed[0, ch].view(-1)[top[i]] = values[i]
        ref = _deconvnet_reference(model, x, seed).numpy()
        np.testing.assert_allclose(per_unit[i], ref, rtol=1e-5, atol=1e-7 * np.abs(ref).max())
        singles.append(ref)
    np.testing.assert_allclose(res.data, np.max(singles, 0), rtol=1e-5, atol=1e-7 * res.data.max())
    # seeding the nine units together (what the method did) is a different map
    together = torch.zeros_like(act)
    together[0, ch].view(-1)[top] = values
    joint = _deconvnet_reference(model, x, together).numpy()
    assert not np.allclose(res.data, joint, rtol=1e-2)
    assert res.extras["unit_positions"][0] == tuple(int(v) for v in np.unravel_index(int(top[0]), act.shape[2:]))
