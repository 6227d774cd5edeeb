"""vebi (Oramas et al., arXiv:1712.06302): the L1-ball projection and the mu-lasso against references, relevant
features found on a model whose evidence is known, saving next to the model, and the test-time heatmaps (range,
concentration on the evidence, the stride fix in 2D and 3D, 3D and segmentation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import Classifier, TinyUNet, conv, image, seeded
from scipy.optimize import brentq, minimize
from torch import nn

import napari_attribution as na
from napari_attribution.interpretation import (
    FeaturesExistError,
    RelevantFeatures,
    average_visualisations,
    features_path_for,
    fit_relevant_features,
    mu_lasso,
    project_l1_ball,
)

# ------------------------------------------------------------------------------------------------ projection


def _project_reference(v: np.ndarray, mu: float) -> np.ndarray:
    """Projection from its optimality condition: the threshold theta solving sum(max(|v| - theta, 0)) = mu."""
    a = np.abs(v)
    if a.sum() <= mu:
        return v.copy()
    theta = brentq(lambda t: np.maximum(a - t, 0).sum() - mu, 0.0, a.max(), xtol=1e-14)
    return np.sign(v) * np.maximum(a - theta, 0)


def test_l1_ball_projection_matches_references() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(1, 40))
        v = rng.normal(size=m) * rng.uniform(0.1, 5)
        mu = float(rng.uniform(0.05, 1.5) * np.abs(v).sum())
        p = project_l1_ball(v, mu)
        np.testing.assert_allclose(p, _project_reference(v, mu), atol=1e-10)
        assert np.abs(p).sum() <= mu + 1e-9
        if np.abs(v).sum() <= mu:  # inside the ball: the identity
            np.testing.assert_array_equal(p, v)
    # the projection is the minimiser of ||w - v||^2 on the ball: compare with a generic QP solver
    for seed in range(5):
        g = np.random.default_rng(seed)
        v = g.normal(size=6) * 2
        mu = 0.4 * np.abs(v).sum()
        def obj(z: np.ndarray, v: np.ndarray = v) -> float:  # w = p - n with p, n >= 0
            return float(np.sum((z[:6] - z[6:] - v) ** 2))

        res = minimize(obj, np.zeros(12), method="SLSQP", bounds=[(0, None)] * 12,
                       constraints=[{"type": "ineq", "fun": lambda z, mu=mu: mu - z.sum()}], options={"ftol": 1e-14})
        np.testing.assert_allclose(project_l1_ball(v, mu), res.x[:6] - res.x[6:], atol=1e-5)
    # columns are projected independently; ties and zero vectors
    cols = np.random.default_rng(1).normal(size=(10, 4))
    proj = project_l1_ball(cols, 1.0)
    for c in range(4):
        np.testing.assert_allclose(proj[:, c], project_l1_ball(cols[:, c], 1.0))
    np.testing.assert_allclose(project_l1_ball([2.0, 2.0, -2.0], 3.0), [1.0, 1.0, -1.0])
    np.testing.assert_array_equal(project_l1_ball(np.zeros(3), 1.0), np.zeros(3))


# ------------------------------------------------------------------------------------------------ mu-lasso


def test_mu_lasso_recovers_planted_weights_exactly() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(80, 15))
    W = np.zeros((15, 3))
    W[[2, 7], 0] = [1.0, 0.5]
    W[[4], 1] = [1.5]
    W[[1, 9, 12], 2] = [0.5, 0.75, 0.25]
    res = mu_lasso(X, X @ W, mu=1.5, tol=1e-14, max_iter=50000)
    np.testing.assert_allclose(res.W, W, atol=1e-6)
    support = np.abs(res.W) > 1e-5
    np.testing.assert_array_equal(support, W != 0)
    assert res.objective < 1e-9


def test_mu_lasso_objective_matches_a_generic_solver() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20, 6))
    y = rng.normal(size=20)
    mu = 0.8
    res = mu_lasso(X, y, mu, tol=1e-12, max_iter=50000)
    assert res.converged and np.abs(res.W).sum() <= mu + 1e-9
    obj = lambda z: 0.5 * float(np.sum((X @ (z[:6] - z[6:]) - y) ** 2))  # noqa: E731
    ref = minimize(obj, np.zeros(12), method="SLSQP", bounds=[(0, None)] * 12,
                   constraints=[{"type": "ineq", "fun": lambda z: mu - z.sum()}], options={"ftol": 1e-15,
                                                                                          "maxiter": 1000})
    assert res.objective <= ref.fun + 1e-7
    np.testing.assert_allclose(res.W[:, 0], ref.x[:6] - ref.x[6:], atol=1e-3)


def test_mu_lasso_selects_the_planted_class_features() -> None:
    rng = np.random.default_rng(1)
    n, m = 90, 40
    y = np.arange(n) % 3
    X = rng.uniform(0, 0.3, size=(n, m))
    planted = [5, 17, 31]
    for c, j in enumerate(planted):
        X[y == c, j] += 1.0
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    L = np.eye(3)[y]
    res = mu_lasso(X, L, mu=10.0)
    assert res.converged
    for c, j in enumerate(planted):
        assert int(np.argmax(res.W[:, c])) == j
        assert res.W[j, c] > 0
    # the wide case (more features than images) runs through the other code path and agrees in objective
    wide = mu_lasso(X[:30], L[:30], mu=2.0, tol=1e-10, max_iter=20000)
    assert wide.converged


# ---------------------------------------------------------------------------------- a model whose evidence is known


class SquareNet(nn.Module):
    """Class 1 = "a bright square is present" in input channel 0. conv1 channel 0 is a box filter on input channel 0
    with a threshold: it responds to the square only; channels 1-3 are zero-mean filters on input channel 1, a
    texture whose strength varies from image to image but not with the class. A strided conv2 passes each channel
    on (box filter), GAP, and a head reading channel 0."""

    def __init__(self, d: int = 2) -> None:
        super().__init__()
        C = conv(d)
        self.conv1 = C(2, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = C(4, 4, 3, padding=1, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(4, 2)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            k = 3**d
            self.conv1.weight.zero_()
            self.conv1.weight[0, 0] = 1.0 / k
            for c in (1, 2, 3):
                w = torch.randn(self.conv1.weight[c, 1].shape, generator=g)
                self.conv1.weight[c, 1] = 0.05 * (w - w.mean())
            self.conv1.bias.copy_(torch.tensor([-0.5, 0.0, 0.0, 0.0]))
            self.conv2.weight.zero_()
            for c in range(4):
                self.conv2.weight[c, c] = 1.0 / k
            self.conv2.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[:, 0] = torch.tensor([-100.0, 100.0])
            self.head.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(a.flatten(2).mean(2))


def square_data(n: int, d: int = 2, size: int = 24, seed: int = 0) -> tuple[list[np.ndarray], list[int], list]:
    """Two-channel images ``(2, *S)``: channel 0 holds a bright 6^d square in every other image (class 1) on faint
    noise; channel 1 a texture of random strength."""
    rng = np.random.default_rng(seed)
    images, labels, boxes = [], [], []
    for i in range(n):
        img = np.stack([rng.normal(0, 0.05, (size,) * d), rng.normal(0, rng.uniform(0.2, 1.0), (size,) * d)])
        box = None
        if i % 2:
            lo = rng.integers(3, size - 9, d)
            box = tuple(slice(int(a), int(a) + 6) for a in lo)
            img[(0, *box)] += 1.0
        images.append(img.astype(np.float32))
        labels.append(i % 2)
        boxes.append(box)
    return images, labels, boxes


@pytest.fixture(scope="module")
def square() -> tuple[SquareNet, RelevantFeatures, list, list, list]:
    net = SquareNet(2).eval()
    images, labels, boxes = square_data(24)
    return net, fit_relevant_features(net, images, labels, mu=10.0), images, labels, boxes


def test_fit_selects_the_channel_that_distinguishes_the_classes(square) -> None:
    net, feats, images, labels, _ = square
    assert feats.layers == ("act1", "act2")  # post-activation outputs; the logits are not a feature layer
    assert feats.layer_channels == (4, 4)
    assert feats.info["converged"] and feats.info["n_images"] == 24
    top = feats.for_class(1, 2)
    assert (top[0].layer, top[0].channel) == ("act2", 0) and top[0].weight > 0  # the square detector
    # a tighter bound keeps only the square detector as evidence for class 1
    tight = fit_relevant_features(net, images, labels, mu=1.0)
    assert [(f.layer, f.channel) for f in tight.for_class(1)] == [("act2", 0)]
    assert np.count_nonzero(tight.W[:, 1]) == 1
    # every image is classified right by the net, so predicted labels give the same features
    again = fit_relevant_features(net, images, None, mu=10.0)
    np.testing.assert_allclose(again.W, feats.W)


def test_fit_leaves_the_model_as_it_was_and_cancels() -> None:
    net = SquareNet(2)
    net.train()
    flags = [p.requires_grad for p in net.parameters()]
    images, labels, _ = square_data(6)
    fit_relevant_features(net, images, labels)
    assert net.training and [p.requires_grad for p in net.parameters()] == flags
    assert not any(m._forward_hooks for m in net.modules())
    with pytest.raises(na.Cancelled):
        fit_relevant_features(net, images, labels, batch_size=2, cancel=lambda: True)
    assert net.training and not any(m._forward_hooks for m in net.modules())


def test_vebi_concentrates_on_the_evidence_and_is_in_unit_range(square) -> None:
    net, feats, train, labels, _ = square
    tight = fit_relevant_features(net, train, labels, mu=1.0)  # the square detector alone
    images, _, boxes = square_data(6, seed=5)
    for img, box in zip(images, boxes, strict=True):
        if box is None:
            continue
        res = na.explain(net, img, "vebi", params={"features": feats})
        h = res.data
        spatial = img.shape[1:]
        assert h.shape == spatial and h.dtype == np.float32
        assert h.min() >= 0 and h.max() <= 1 and np.isclose(h.max(), 1)
        assert res.extras["class"] == 1 and res.target == na.targets.Class(1)
        layer, channel, relevance = res.extras["features"][0]
        assert channel == 0 and relevance > 0
        n = len(res.extras["features"])
        assert 1 <= n <= 3 and res.extras["decoupled"].shape == (n, *spatial)
        near = np.zeros(spatial, bool)
        near[tuple(slice(s.start - 2, s.stop + 2) for s in box)] = True
        # the top feature's map lies on the square; with mu = 10 the other two features are texture detectors
        # (weaker evidence), whose maps cover the image
        top = res.extras["decoupled"][0]
        assert top[near].sum() > 0.99 * top.sum()
        only = na.explain(net, img, "vebi", params={"features": tight}).data
        assert only[near].mean() > 20 * only[~near].mean()
        np.testing.assert_allclose(only, res.extras["decoupled"][0] / top.max(), atol=1e-6)
        # the combined map is the maximum of the min-max normalised decoupled maps
        dec = res.extras["decoupled"]
        lo, hi = dec.reshape(n, -1).min(1), dec.reshape(n, -1).max(1)
        norm = (dec - lo[:, None, None]) / (hi - lo)[:, None, None]
        np.testing.assert_allclose(h, norm.max(0), atol=1e-6)


def test_average_visualisations_use_the_images_with_the_evidence(square) -> None:
    net, feats, images, labels, _ = square
    top = feats.for_class(1, 1)[0]
    (vis,) = average_visualisations(net, feats, images, top=5, feature_ids=[top.index])
    assert vis.feature.layer == top.layer and vis.feature.channel == 0
    assert len(vis.images) == 5 and all(labels[i] == 1 for i in vis.images)
    assert vis.heatmap.shape == images[0].shape[1:] and 0 <= vis.heatmap.min() and vis.heatmap.max() <= 1
    assert vis.masked_image is not None and vis.masked_image.shape == images[0].shape
    # under the thresholded heatmap lies the bright square (input channel 0)
    assert vis.masked_image[0].sum() > 5 * abs(vis.masked_image[1].sum())
    assert "1" in vis.classes and vis.classes["1"] > 0
    assert sorted(vis.responses, reverse=True) == vis.responses
    default = average_visualisations(net, feats, iter(images), top=2)  # a one-shot iterator is read twice
    assert {v.feature.index for v in default} >= {top.index}


# ---------------------------------------------------------------------------------- stride fix inside vebi


class OneStridedConv(nn.Module):
    """One k=3, s=2 convolution without padding, all-ones weights, ReLU, global sum: on a constant image the seed
    (the layer's own activation) is uniform."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.conv = (nn.Conv2d if d == 2 else nn.Conv3d)(1, 1, 3, stride=2, padding=0, bias=False)
        nn.init.ones_(self.conv.weight)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x)).flatten(1).sum(1, keepdim=True)
        return torch.cat([-y, y], 1)


@pytest.mark.parametrize("d", [2, 3])
def test_vebi_stride_fix_removes_the_checkerboard(d: int) -> None:
    model = OneStridedConv(d)
    feats = RelevantFeatures(("act",), (1,), np.array([[0.0, 1.0]]), ("no", "yes"), mu=10.0)
    img = np.ones((13,) * d, np.float32)
    interior = (slice(2, -2),) * d
    cv = lambda a: float(a.std() / a.mean())  # noqa: E731
    plain = na.explain(model, img, "vebi", 1, params={"features": feats, "stride_fix": False})
    fixed = na.explain(model, img, "vebi", 1, params={"features": feats})  # on by default
    assert cv(plain.extras["decoupled"][0][interior]) > 0.4  # the periodic {1, 2, 4(, 8)} x seed pattern
    assert cv(plain.data[interior]) > 0.4
    assert cv(fixed.extras["decoupled"][0][interior]) < 1e-6
    np.testing.assert_allclose(fixed.extras["decoupled"][0][interior], 9.0**d)  # 3^d windows x seed 3^d
    np.testing.assert_allclose(fixed.data[interior], 1.0)


# ---------------------------------------------------------------------------------- 3D, segmentation, errors, files


def test_vebi_3d_classification_and_segmentation() -> None:
    net = seeded(Classifier(3))
    vols = [image((8, 12, 12), seed=i) for i in range(6)]
    feats = fit_relevant_features(net, vols, [0, 1, 2, 0, 1, 2])
    assert feats.layers == ("features.1", "features.3", "features.5")
    res = na.explain(net, vols[0], "vebi", params={"features": feats, "n_features": 2})
    assert res.data.shape == (8, 12, 12) and 0 <= res.data.min() and res.data.max() <= 1
    assert len(res.extras["features"]) <= 2 and res.extras["decoupled"].shape[1:] == (8, 12, 12)
    # segmentation: image-level "contains class c" from label masks
    unet = seeded(TinyUNet(3))
    masks = [np.zeros((8, 12, 12), np.int64) for _ in range(4)]
    for i, m in enumerate(masks):
        if i % 2:
            m[2:5, 3:7, 3:7] = 1
    seg = fit_relevant_features(unet, vols[:4], masks)
    assert seg.info["task"] == "segmentation" and seg.info["images_per_class"] == [4, 2]
    assert "out" not in seg.layers  # the logits layer is left out
    with torch.no_grad():
        pred = unet(torch.from_numpy(vols[1])[None, None]).argmax(1)[0].numpy()
    k = 1 if (pred == 1).any() else 0
    out = na.explain(unet, vols[1], "vebi", k, params={"features": seg})
    assert out.data.shape == (8, 12, 12) and out.extras["class"] == k
    assert out.target == na.targets.Predicted(k)


def test_vebi_without_features_says_how_to_fit_them(tmp_path) -> None:
    net = seeded(Classifier(2))
    img = image((16, 16))
    with pytest.raises(na.MethodError, match="fit_relevant_features"):
        na.explain(net, img, "vebi")
    with pytest.raises(na.MethodError, match="No relevant-features file"):
        na.explain(net, img, "vebi", params={"features": tmp_path / "missing.vebi.npz"})
    other = RelevantFeatures(("nope",), (2,), np.ones((2, 3)), ("a", "b", "c"), 10.0)
    with pytest.raises(na.MethodError, match="another model"):
        na.explain(net, img, "vebi", params={"features": other})
    info = na.get_method("vebi")
    assert (info.family, info.needs_layer, info.signed, info.supports_torchscript) == (
        "backward_rule", False, False, False)
    assert dict(info.params) == {"features": None, "n_features": 3, "stride_fix": True}


def test_save_load_round_trip_next_to_the_model_and_no_silent_overwrite(square, tmp_path) -> None:
    net, feats, images, _, _ = square
    model_file = tmp_path / "model.pt"
    written = feats.save(model_file)
    assert written == tmp_path / "model.vebi.npz" == features_path_for(model_file)
    assert features_path_for(tmp_path / "model.card.json") == written
    back = RelevantFeatures.load(model_file)
    assert back.layers == feats.layers and back.layer_channels == feats.layer_channels
    assert back.class_names == feats.class_names and back.mu == feats.mu
    np.testing.assert_array_equal(back.W, feats.W)
    assert back.info == feats.info
    assert back.for_class(1, 2) == feats.for_class(1, 2)
    with pytest.raises(FeaturesExistError, match="overwrite=True"):
        feats.save(written)
    assert isinstance(FeaturesExistError("x"), (na.AttributionError, FileExistsError))
    changed = RelevantFeatures(feats.layers, feats.layer_channels, feats.W * 2, feats.class_names, 3.0)
    changed.save(written, overwrite=True)
    assert RelevantFeatures.load(written).mu == 3.0
    # a path is accepted by vebi and gives the same map as the object
    a = na.explain(net, images[1], "vebi", params={"features": changed})
    b = na.explain(net, images[1], "vebi", params={"features": str(written)})
    np.testing.assert_array_equal(a.data, b.data)


def test_fit_from_a_folder_of_nifti_scans(tmp_path) -> None:
    from napari_attribution.io import write_nifti

    net = seeded(Classifier(2))
    images = [image((16, 16), seed=i) for i in range(6)]
    labels = [0, 1, 2, 2, 1, 0]
    for i, img in enumerate(images):
        write_nifti(tmp_path / f"case{i:02d}.nii.gz", img)
    by_name = {f"case{i:02d}": lab for i, lab in enumerate(labels)}
    from_files = fit_relevant_features(net, tmp_path, by_name)
    from_arrays = fit_relevant_features(net, images, labels)
    assert from_files.info["n_images"] == 6
    np.testing.assert_allclose(from_files.W, from_arrays.W, atol=1e-6)
    # (image, label) pairs and a callable that yields them give the same features
    pairs = fit_relevant_features(net, lambda: zip(images, labels, strict=True))
    np.testing.assert_array_equal(pairs.W, from_arrays.W)
