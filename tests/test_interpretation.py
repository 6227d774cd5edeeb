"""The interpretation package's public functions (napari_attribution.interpretation): the mu-lasso against closed
forms, the L1-ball projection against its optimality condition, the responses and labels that fitting builds
against a hand computation, the relevant-features file format, the labels CSV, and the average visualisations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_attribution import Cancelled, ParameterError, ReaderError
from napari_attribution.interpretation import (
    FeaturesExistError,
    RelevantFeatures,
    average_visualisations,
    features_file,
    features_path_for,
    fit_relevant_features,
    mu_lasso,
    project_l1_ball,
    read_labels_csv,
    save_features_beside,
)

# ------------------------------------------------------------------------------------------------ the L1 ball


def test_projection_is_the_nearest_point_of_the_ball() -> None:
    """p = P(v) iff <v - p, w - p> <= 0 for every w in the ball; the ball is the convex hull of its 2m vertices
    +-mu e_i, so checking them is checking every w."""
    rng = np.random.default_rng(4)
    for _ in range(50):
        m = int(rng.integers(1, 12))
        v = rng.normal(size=m) * 3
        mu = float(rng.uniform(0.1, 1.2) * np.abs(v).sum())
        p = project_l1_ball(v, mu)
        assert np.abs(p).sum() <= mu * (1 + 1e-12)
        vertices = np.concatenate([mu * np.eye(m), -mu * np.eye(m)])
        assert ((vertices - p) @ (v - p) <= 1e-9 * (1 + np.abs(v).sum() ** 2)).all()
        if np.abs(v).sum() > mu:  # outside: lands on the sphere
            assert np.abs(p).sum() == pytest.approx(mu, rel=1e-12)


def test_projection_edge_cases() -> None:
    np.testing.assert_array_equal(project_l1_ball(np.array([[1.0, -3.0], [2.0, 0.5]]), 0.0), np.zeros((2, 2)))
    np.testing.assert_allclose(project_l1_ball([0.5, -0.25], 1.0), [0.5, -0.25])  # inside: unchanged
    np.testing.assert_allclose(project_l1_ball([4.0, 1.0], 1.0), [1.0, 0.0])  # theta = 3
    with pytest.raises(ParameterError, match=">= 0"):
        project_l1_ball([1.0], -1.0)
    with pytest.raises(ParameterError, match="vector"):
        project_l1_ball(np.zeros((2, 2, 2)), 1.0)


# ------------------------------------------------------------------------------------------------ the mu-lasso


def test_mu_lasso_without_an_active_bound_is_least_squares() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    L = rng.normal(size=(30, 2))
    ls = np.linalg.lstsq(X, L, rcond=None)[0]
    mu = 10 * float(np.abs(ls).sum(0).max())
    res = mu_lasso(X, L, mu, tol=1e-13, max_iter=50000)
    assert res.converged
    np.testing.assert_allclose(res.W, ls, atol=1e-6)
    assert res.objective == pytest.approx(0.5 * float(np.sum((X @ ls - L) ** 2)), rel=1e-9)
    # the wide case (m = 4 features > N = 2 images) iterates on X X^T; with a bound that is not active it fits the
    # labels exactly
    wide = mu_lasso(X[:2], L[:2], 1e6, tol=1e-14, max_iter=50000)
    assert wide.objective < 1e-10


def test_mu_lasso_one_feature_is_the_clipped_least_squares_coefficient() -> None:
    """m = 1: min (x w - l)^2 / 2 subject to |w| <= mu is w = clip(<x, l> / <x, x>, -mu, mu)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, 1))
    lab = 3.0 * x[:, 0] + 0.1 * rng.normal(size=25)
    free = float(x[:, 0] @ lab / (x[:, 0] @ x[:, 0]))
    for mu in (0.5, 2.0, 100.0):
        res = mu_lasso(x, lab, mu, tol=1e-14, max_iter=20000)
        assert res.W.shape == (1, 1)  # a 1-D label vector is one column
        assert res.W[0, 0] == pytest.approx(np.clip(free, -mu, mu), rel=1e-8)


def test_mu_lasso_orthonormal_design_is_soft_thresholding() -> None:
    """With X^T X = I the objective is ||w - X^T l||^2 / 2 + const: the solution is the projection of b = X^T l on
    the ball, soft-thresholding by theta with sum(max(|b| - theta, 0)) = mu (here b = (3, -1, 0.5), mu = 2:
    theta = 1, w = (2, 0, 0))."""
    Q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(10, 3)))
    b = np.array([3.0, -1.0, 0.5])
    lab = Q @ b
    res = mu_lasso(Q, lab, 2.0, tol=1e-14, max_iter=20000)
    np.testing.assert_allclose(res.W[:, 0], [2.0, 0.0, 0.0], atol=1e-9)
    assert res.W[1, 0] == 0.0 and res.W[2, 0] == 0.0  # exact zeros: the relevant features are the non-zero rows
    # gap bounds the distance to the optimum; at the optimum it is ~0
    assert 0 <= res.gap <= 1e-8


def test_mu_lasso_checks_its_input_warm_starts_and_cancels() -> None:
    X = np.random.default_rng(3).normal(size=(12, 5))
    L = np.eye(3)[np.arange(12) % 3]
    with pytest.raises(ParameterError, match="same N"):
        mu_lasso(X, L[:5], 1.0)
    with pytest.raises(ParameterError, match="positive"):
        mu_lasso(X, L, 0.0)
    cold = mu_lasso(X, L, 1.0, tol=1e-12, max_iter=20000)
    warm = mu_lasso(X, L, 1.0, tol=1e-12, max_iter=20000, w0=cold.W)
    assert warm.iterations < cold.iterations
    np.testing.assert_allclose(warm.W, cold.W, atol=1e-6)
    seen: list[int] = []
    with pytest.raises(Cancelled):
        mu_lasso(X, L, 1.0, tol=0.0, max_iter=1000, cancel=lambda: len(seen) >= 2,
                 progress=lambda i, n, msg: seen.append(i))
    assert seen == [10, 20]


# ------------------------------------------------------------------------------------------------ fitting


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(3, 2)).eval()


def _images(n: int, size: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.normal(size=(size, size)).astype(np.float32) * rng.uniform(0.5, 2.0) for _ in range(n)]


def _responses(net: nn.Sequential, images: list[np.ndarray]) -> np.ndarray:
    """By hand: each channel's sum of squares after the ReLU, L1-normalised over the layer, then L2-normalised."""
    rows = []
    for img in images:
        with torch.no_grad():
            a = net[1](net[0](torch.from_numpy(img)[None, None])).double()[0]
        e = (a ** 2).sum((1, 2)).numpy()
        v = e / e.sum()
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


def test_fit_is_the_mu_lasso_of_the_responses_and_labels() -> None:
    net = _net()
    images = _images(10)
    labels = [0, 1, 1, 0, 1, 0, 0, 1, 1, 0]
    feats = fit_relevant_features(net, images, labels, mu=1.5, tol=1e-12, max_iter=20000)
    assert feats.layers == ("1",) and feats.layer_channels == (3,) and feats.W.shape == (3, 2)
    X = _responses(net, images)
    L = np.eye(2)[labels]
    ref = mu_lasso(X, L, 1.5, tol=1e-12, max_iter=20000)
    np.testing.assert_allclose(feats.W, ref.W, atol=1e-8)
    assert feats.info["n_images"] == 10 and feats.info["images_per_class"] == [5, 5]
    assert feats.info["relevant_per_class"] == [int(np.count_nonzero(ref.W[:, k])) for k in range(2)]
    assert feats.class_names == ("0", "1") and feats.mu == 1.5
    # the model's own predictions as labels: the argmax of its logits
    with torch.no_grad():
        pred = [int(net(torch.from_numpy(x)[None, None]).argmax()) for x in images]
    own = fit_relevant_features(net, images, None, mu=1.5, tol=1e-12, max_iter=20000)
    np.testing.assert_allclose(own.W, mu_lasso(X, np.eye(2)[pred], 1.5, tol=1e-12, max_iter=20000).W, atol=1e-8)


def test_fit_labels_are_checked_against_the_images() -> None:
    net = _net()
    images = _images(4)
    with pytest.raises(ParameterError, match="more labels than images"):
        fit_relevant_features(net, images, [0, 1, 0, 1, 1])
    with pytest.raises(ParameterError, match="more images than labels"):
        fit_relevant_features(net, images, [0, 1])
    with pytest.raises(ParameterError, match="not one of the model's 2 classes"):
        fit_relevant_features(net, images, [0, 1, 2, 0])
    with pytest.raises(ParameterError, match="No label for image"):
        fit_relevant_features(net, images, {"0": 1})
    # a mapping keyed by the items' names ("0", "1", ...), pairs carrying their labels: the same fit
    by_name = fit_relevant_features(net, images, {str(i): i % 2 for i in range(4)}, mu=1.0)
    pairs = fit_relevant_features(net, [(x, i % 2) for i, x in enumerate(images)], None, mu=1.0)
    np.testing.assert_array_equal(by_name.W, pairs.W)


def test_segmentation_labels_are_the_classes_each_image_contains() -> None:
    """A segmentation label mask becomes the image-level row "contains class c"; without labels the classes of
    the model's predicted segmentation are used."""
    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    images = _images(6, size=8)
    masks = [np.zeros((8, 8), np.int64) for _ in images]
    masks[0][2, 2] = 1
    masks[1][3, 3] = 2
    masks[2][1, 1], masks[2][5, 5] = 1, 2
    feats = fit_relevant_features(seg, images, masks, mu=2.0)
    assert feats.info["task"] == "segmentation" and feats.W.shape == (4, 3)
    assert feats.info["images_per_class"] == [6, 2, 2]  # every mask has background; class 1 in 2, class 2 in 2
    with torch.no_grad():
        pred = [seg(torch.from_numpy(x)[None, None])[0].argmax(0).numpy() for x in images]
    own = fit_relevant_features(seg, images, None, mu=2.0)
    assert own.info["images_per_class"] == [sum(int((p == k).any()) for p in pred) for k in range(3)]


def test_read_labels_csv(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("file,label\ncase1.nii.gz,lesion\ncase2,0\ncase3.nii,1\n", encoding="utf-8")
    assert read_labels_csv(path, ["healthy", "lesion"]) == {"case1.nii.gz": 1, "case2": 0, "case3.nii": 1}
    path.write_text("case1,1\ncase2,maybe\n", encoding="utf-8")
    with pytest.raises(ReaderError, match="line 2: the label 'maybe'"):
        read_labels_csv(path)
    path.write_text("file,label\n", encoding="utf-8")
    with pytest.raises(ReaderError, match="no 'file,label' line"):
        read_labels_csv(path)
    with pytest.raises(ReaderError, match="Cannot read"):
        read_labels_csv(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------------------------ the file format


def _features() -> RelevantFeatures:
    W = np.zeros((5, 2))
    W[1, 0], W[3, 0], W[4, 1] = 0.5, -0.25, 1.0
    return RelevantFeatures(("a.conv", "b"), (2, 3), W, ("healthy", "lesion"), 2.0,
                            {"n_images": 7, "gap": np.float64(1e-9), "per_class": np.array([2, 1])})


def test_features_round_trip_and_no_silent_overwrite(tmp_path: Path) -> None:
    feats = _features()
    written = feats.save(tmp_path / "model.pt")
    assert written == tmp_path / "model.vebi.npz"
    back = RelevantFeatures.load(tmp_path / "model.pt")  # the model's path finds the file beside it
    assert back.layers == feats.layers and back.layer_channels == feats.layer_channels
    np.testing.assert_array_equal(back.W, feats.W)
    assert back.class_names == feats.class_names and back.mu == feats.mu
    assert back.info == {"n_images": 7, "gap": 1e-9, "per_class": [2, 1]}  # numpy values read back as JSON
    before = written.read_bytes()
    other = RelevantFeatures(("x",), (5,), np.ones((5, 2)), ("healthy", "lesion"), 1.0)
    with pytest.raises(FeaturesExistError, match="kept"):
        other.save(written)
    assert written.read_bytes() == before
    other.save(written, overwrite=True)
    np.testing.assert_array_equal(RelevantFeatures.load(written).W, np.ones((5, 2)))
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["model.vebi.npz"]  # no temporary file left
    # beside the model without replacing: the next free numbered name
    assert save_features_beside(feats, tmp_path / "model.pt").name == "model.vebi-2.npz"


def test_features_paths_and_bad_files(tmp_path: Path) -> None:
    assert features_path_for("m/net.pt") == Path("m/net.vebi.npz")
    assert features_path_for("m/net.card.json") == Path("m/net.vebi.npz")
    assert features_path_for("m/net") == Path("m/net.vebi.npz")
    assert features_file("m/feats.npz") == Path("m/feats.npz") and features_file("m/net.ts") == Path("m/net.vebi.npz")
    with pytest.raises(ReaderError, match="fit_relevant_features"):
        RelevantFeatures.load(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", W=np.zeros(3))
    with pytest.raises(ReaderError, match="not a relevant-features file"):
        RelevantFeatures.load(tmp_path / "other.npz")


def test_features_lookups() -> None:
    feats = _features()
    assert feats.n_features == 5
    assert list(feats.feature_layer) == ["a.conv", "a.conv", "b", "b", "b"]
    assert list(feats.feature_channel) == [0, 1, 0, 1, 2]
    assert list(feats.relevant("healthy")) == [1, 3] and list(feats.relevant(1)) == [4]
    assert [(f.index, f.layer, f.channel) for f in feats.for_class(0)] == [(1, "a.conv", 1)]  # positive only
    assert [f.index for f in feats.for_class(0, positive=False)] == [1, 3]  # by |weight|
    with pytest.raises(ParameterError, match="Unknown class"):
        feats.class_index("tumour")
    with pytest.raises(ParameterError, match="one row per feature"):
        RelevantFeatures(("a",), (2,), np.zeros((3, 1)), ("c",), 1.0)


# ------------------------------------------------------------------------------------------------ visualisation


def test_average_visualisations_average_over_the_most_responsive_images() -> None:
    net = _net()
    images = _images(8)
    X = _responses(net, images)
    W = np.zeros((3, 2))
    W[0, 0], W[2, 1] = 1.0, 0.5
    feats = RelevantFeatures(("1",), (3,), W, ("a", "b"), 2.0)
    vis = average_visualisations(net, feats, images, top=3, feature_ids=[0, 2])
    assert [v.feature.index for v in vis] == [0, 2]
    assert vis[0].classes == {"a": 1.0} and vis[1].classes == {"b": 0.5}
    for v, j in zip(vis, (0, 2), strict=True):
        order = [int(i) for i in np.argsort(-X[:, j], kind="stable")[:3]]
        assert v.images == order
        np.testing.assert_allclose(v.responses, X[order, j], rtol=1e-6)  # energies summed in float32
        assert v.heatmap.shape == (12, 12) and 0.0 <= v.heatmap.min() and v.heatmap.max() <= 1.0
        assert v.masked_image is not None and v.masked_image.shape == (1, 12, 12)
    # one image: the heatmap is that image's map and the masked image is the image under H >= threshold
    one = average_visualisations(net, feats, images, top=1, feature_ids=[0], threshold=0.5)[0]
    best = images[one.images[0]]
    np.testing.assert_allclose(one.masked_image[0], best * (one.heatmap >= 0.5), atol=1e-6)
    assert one.heatmap.max() == pytest.approx(1.0)  # min-max normalised
    with pytest.raises(ParameterError, match="feature_ids"):
        average_visualisations(net, feats, images, feature_ids=[3])
