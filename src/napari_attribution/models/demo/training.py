"""Deterministic training and evaluation of the demo models (used by ``scripts/train_demo_models.py``).

Everything is seeded: the phantoms come from ``numpy.random.default_rng(seed)`` streams, the weights from
``torch.manual_seed(seed)``; with one torch thread (``torch.set_num_threads(1)``) a run is reproducible bit for
bit on the same machine. Training and held-out data come from disjoint seed streams (``seed`` and
``seed + 10_000``), so the held-out scores are on phantoms the network never saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .nets import ContrastPhaseNet, LesionNet3d, VesselUNet3d
from .phantoms import abdomen_batch, head_cta_phantom, lesion_phantom, vessel_batch

__all__ = [
    "CTA_HELD_OUT_SEEDS",
    "CTA_TRAIN_OFFSET",
    "HELD_OUT_OFFSET",
    "cta_volume",
    "dice",
    "evaluate_classifier",
    "evaluate_vessel_cta",
    "evaluate_vessel_seg",
    "train_contrast_phase",
    "train_lesion3d",
    "train_vessel_cta",
    "train_vessel_seg",
]

HELD_OUT_OFFSET = 10_000
#: head CTA phantoms for training ``vessel-cta`` are seeds ``CTA_TRAIN_OFFSET + 1000 * seed + i`` (100, 101, ...
#: for seed 0): disjoint from the demo's scan (seed 7) and from the held-out seeds
CTA_TRAIN_OFFSET = 100
#: the held-out head CTA phantoms of ``vessel-cta``'s metrics (``seed + HELD_OUT_OFFSET + i``) are joined by the
#: demo's own scan, seed 7
CTA_HELD_OUT_SEEDS = (7,)
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@torch.no_grad()
def _predict(model: nn.Module, x: np.ndarray, batch: int = 16) -> np.ndarray:
    outs = [model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def evaluate_classifier(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                        class_names: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, per-class recall and the confusion matrix (rows: truth, columns: prediction)."""
    model.eval()
    pred = _predict(model, images).argmax(1)
    k = len(class_names)
    confusion = np.zeros((k, k), int)
    for t, p in zip(labels, pred, strict=True):
        confusion[int(t), int(p)] += 1
    recall = {name: float(confusion[i, i] / max(confusion[i].sum(), 1)) for i, name in enumerate(class_names)}
    return {"accuracy": float((pred == labels).mean()), "n": int(len(labels)), "recall": recall,
            "confusion": confusion.tolist()}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays (1.0 when both are empty)."""
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def evaluate_vessel_seg(model: nn.Module, images: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Dice per volume (vessel = argmax class 1), their mean and the pooled Dice over all volumes."""
    model.eval()
    pred = _predict(model, images, batch=2).argmax(1) == 1
    per = [dice(p, t) for p, t in zip(pred, truth, strict=True)]
    return {"dice_mean": float(np.mean(per)), "dice_pooled": dice(pred, truth), "dice_min": float(np.min(per)),
            "n": int(len(per))}


def train_contrast_phase(dims: int = 2, *, iterations: int = 800, batch: int = 24, lr: float = 2e-3, seed: int = 0,
                         held_out: int = 300, log: Log = _quiet) -> tuple[ContrastPhaseNet, dict[str, Any]]:
    """Train the contrast-phase classifier on fresh phantoms (each batch newly generated, balanced phases).

    Adam (``lr``, cosine decay to 5 %), cross-entropy. Returns the model in eval mode and its metrics on
    ``held_out`` phantoms from the held-out seed stream.
    """
    from .phantoms import PHASES

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ContrastPhaseNet(dims, width=16 if dims == 2 else 8)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(i / max(iterations, 1), 1.0))))
    t0 = time.perf_counter()
    model.train()
    running = 0.0
    for it in range(iterations):
        x, y, _ = abdomen_batch(rng, batch, dims=dims)
        loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        running = 0.95 * running + 0.05 * float(loss.detach()) if it else float(loss.detach())
        if (it + 1) % 50 == 0:
            log(f"contrast-phase {dims}D  it {it + 1:4d}/{iterations}  loss {running:.3f}  "
                f"{time.perf_counter() - t0:5.1f} s")
    seconds = time.perf_counter() - t0
    model.eval()
    xv, yv, _ = abdomen_batch(seed + HELD_OUT_OFFSET, held_out, dims=dims)
    metrics = evaluate_classifier(model, xv, yv, PHASES)
    metrics.update(train_seconds=round(seconds, 1), iterations=iterations, batch=batch, lr=lr, seed=seed,
                   train_cases=iterations * batch)
    return model, metrics


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, 1)[:, 1]
    t = target.float()
    inter = (p * t).sum()
    return 1 - (2 * inter + 1) / (p.sum() + t.sum() + 1)


def _train_segmenter(model: nn.Module, draw: Callable[[], tuple[list[np.ndarray], list[np.ndarray]]], *,
                     iterations: int, lr: float, name: str, log: Log) -> None:
    """The vessel segmenters' training loop: ``iterations`` steps of Adam (``lr``, cosine decay to 5 %) on the
    batches ``draw()`` returns (crops and their labels), loss = cross-entropy + soft Dice of the vessel class; logs
    the running loss every 50 steps. Leaves the model in train mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(i / max(iterations, 1), 1.0))))
    model.train()
    running = 0.0
    t1 = time.perf_counter()
    for it in range(iterations):
        xs, ys = draw()
        xt = torch.from_numpy(np.stack(xs))[:, None]
        yt = torch.from_numpy(np.stack(ys)).long()
        logits = model(xt)
        loss = F.cross_entropy(logits, yt) + _soft_dice_loss(logits, yt)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        running = 0.95 * running + 0.05 * float(loss.detach()) if it else float(loss.detach())
        if (it + 1) % 50 == 0:
            log(f"{name}  it {it + 1:4d}/{iterations}  loss {running:.3f}  {time.perf_counter() - t1:5.1f} s")


def train_vessel_seg(*, iterations: int = 800, batch: int = 4, crop: int = 32, pool: int = 160, lr: float = 3e-3,
                     seed: int = 0, held_out: int = 12, log: Log = _quiet) -> tuple[VesselUNet3d, dict[str, Any]]:
    """Train the vessel UNet on random ``crop``-cubed crops (with random flips and axis permutations) from a
    pool of ``pool`` generated 48^3 volumes; loss = cross-entropy + soft Dice of the vessel class.

    Returns the model and its Dice on ``held_out`` full 48^3 volumes from the held-out seed stream.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    images, truth = vessel_batch(rng, pool)
    log(f"vessel-seg: generated {pool} training volumes in {time.perf_counter() - t0:.1f} s")
    model = VesselUNet3d()
    size = images.shape[-1]

    def draw() -> tuple[list[np.ndarray], list[np.ndarray]]:
        xs, ys = [], []
        for _ in range(batch):
            i = int(rng.integers(0, pool))
            o = rng.integers(0, size - crop + 1, 3)
            sl = tuple(slice(int(a), int(a) + crop) for a in o)
            x, y = images[i, 0][sl], truth[i][sl]
            perm = rng.permutation(3)
            x, y = x.transpose(perm), y.transpose(perm)
            for ax in range(3):
                if rng.random() < 0.5:
                    x, y = np.flip(x, ax), np.flip(y, ax)
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return xs, ys

    _train_segmenter(model, draw, iterations=iterations, lr=lr, name="vessel-seg", log=log)
    seconds = time.perf_counter() - t0
    model.eval()
    xv, yv = vessel_batch(seed + HELD_OUT_OFFSET, held_out)
    metrics = evaluate_vessel_seg(model, xv, yv)
    metrics.update(train_seconds=round(seconds, 1), iterations=iterations, batch=batch, crop=crop,
                   pool=pool, lr=lr, seed=seed)
    return model, metrics


def train_lesion3d(*, iterations: int = 1200, seed: int = 0, held_out: int = 200,
                   log: Log = _quiet) -> tuple[LesionNet3d, dict[str, Any]]:
    """The lesion recipe: Adam 3e-3, batches of 8 fresh lesion phantoms, with the cosine decay of the other demos
    (300 constant-rate iterations instead miss about 1 small lesion in 6); metrics on ``held_out`` phantoms from
    the held-out seed stream."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LesionNet3d()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(i / max(iterations, 1), 1.0))))
    t0 = time.perf_counter()
    for it in range(iterations):
        labels = rng.integers(0, 2, 8)
        x = torch.from_numpy(np.stack([lesion_phantom(rng, bool(lab)).image for lab in labels]))[:, None]
        loss = F.cross_entropy(model(x), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        if (it + 1) % 100 == 0:
            log(f"lesion3d  it {it + 1:4d}/{iterations}  loss {float(loss.detach()):.3f}")
    seconds = time.perf_counter() - t0
    model.eval()
    test = np.random.default_rng(seed + HELD_OUT_OFFSET)
    labels = test.integers(0, 2, held_out)
    xv = np.stack([lesion_phantom(test, bool(lab)).image for lab in labels])[:, None]
    metrics = evaluate_classifier(model, xv, labels, ("no lesion", "lesion"))
    metrics.update(train_seconds=round(seconds, 1), iterations=iterations, batch=8, lr=3e-3, seed=seed)
    return model, metrics


# --------------------------------------------------------------------------------------------- vessel-cta


def cta_volume(seed: Any, card: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One head CTA phantom (:func:`head_cta_phantom`) as the model sees it through ``card``: the scan after the
    card's window and resampling (:func:`napari_attribution.inputs.prepare`, the inference path itself), and the
    vessel truth, the skull and the intracranial space brought to that grid (linear interpolation, >= 0.5)."""
    from ...inputs import prepare
    from ...io import Geometry

    case = head_cta_phantom(seed)
    assert case.structures is not None
    prep = prepare(case.image, Geometry(spacing=case.spacing, origin=(0.0, 0.0, 0.0)), card)
    masks = np.stack([case.mask, case.structures == 2, case.structures >= 3]).astype(np.float32)
    with torch.no_grad():
        grid = prep.to_model(torch.from_numpy(masks)[None])[0].numpy() >= 0.5
    return np.ascontiguousarray(prep.data, dtype=np.float32), grid[0], grid[1], grid[2]


def evaluate_vessel_cta(model: Any, seeds: list[int], log: Log = _quiet) -> dict[str, Any]:
    """``model`` (a ``LoadedModel`` with the CTA card) on whole head CTA phantoms, through the card's window,
    resampling and sliding-window inferer (what the demo runs): per seed the Dice over the whole scan, the Dice
    inside the skull (the prediction restricted to the intracranial space), and the share of skull voxels labelled
    vessel; their means (``dice_mean`` is the whole-scan Dice) and the pooled whole-scan Dice."""
    from ...io import Geometry
    from ...pipeline import network_on_scan

    per: dict[str, dict[str, float]] = {}
    inter = total = 0.0
    for s in seeds:
        case = head_cta_phantom(s)
        assert case.structures is not None
        with torch.no_grad():
            out = network_on_scan(model, case.image, Geometry(spacing=case.spacing, origin=(0.0, 0.0, 0.0)),
                                  lambda net, x: net(x))
        pred = out[0].argmax(0).numpy() == 1
        brain, skull = case.structures >= 3, case.structures == 2
        per[str(s)] = {"dice": dice(pred, case.mask), "dice_inside_skull": dice(pred & brain, case.mask),
                       "skull_labelled_vessel": float(pred[skull].mean()),
                       "outside_brain_voxels_labelled_vessel": int((pred & ~brain).sum())}
        inter += float((pred & case.mask).sum())
        total += float(pred.sum() + case.mask.sum())
        log(f"vessel-cta  held-out seed {s}: " + ", ".join(f"{k} {v:.4g}" for k, v in per[str(s)].items()))
    whole = [v["dice"] for v in per.values()]
    return {"dice_mean": float(np.mean(whole)), "dice_min": float(np.min(whole)),
            "dice_pooled": 2.0 * inter / total if total else 1.0,
            "dice_inside_skull_mean": float(np.mean([v["dice_inside_skull"] for v in per.values()])),
            "skull_labelled_vessel_mean": float(np.mean([v["skull_labelled_vessel"] for v in per.values()])),
            "n": len(seeds), "per_seed": per}


def _cta_crop(rng: np.random.Generator, image: np.ndarray, truth: np.ndarray, centres: list[np.ndarray],
              crop: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop``-cubed crop centred (+- crop / 4) on a voxel of one of ``centres`` (vessel, skull) or anywhere,
    with a random axis permutation and flips."""
    shape = np.asarray(image.shape)
    kind = rng.random()
    if kind < 0.4:
        pool = centres[0]
    elif kind < 0.8:
        pool = centres[1]
    else:
        pool = np.empty((0, 3), np.int64)
    if len(pool):
        c = pool[int(rng.integers(0, len(pool)))] + rng.integers(-crop // 4, crop // 4 + 1, 3)
    else:
        c = rng.integers(0, shape)
    lo = np.clip(c - crop // 2, 0, shape - crop)
    sl = tuple(slice(int(a), int(a) + crop) for a in lo)
    x, y = image[sl], truth[sl]
    perm = rng.permutation(3)
    x, y = x.transpose(perm), y.transpose(perm)
    for ax in range(3):
        if rng.random() < 0.5:
            x, y = np.flip(x, ax), np.flip(y, ax)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def train_vessel_cta(*, iterations: int = 800, batch: int = 4, crop: int = 32, pool: int = 8, lr: float = 1e-3,
                     seed: int = 0, held_out: int = 3, log: Log = _quiet) -> tuple[VesselUNet3d, dict[str, Any]]:
    """Fine-tune the shipped ``vessel-seg`` weights into ``vessel-cta``: the vessel UNet for a whole head CT
    angiogram, bone included.

    ``pool`` head CTA phantoms (seeds ``CTA_TRAIN_OFFSET + 1000 * seed + i``) are brought to the card's model
    grid by the card itself (window, resampling to 0.6 mm: :func:`cta_volume`); each iteration takes ``batch``
    random ``crop``-cubed crops, 40 % centred near a vessel voxel, 40 % near a skull voxel, 20 % anywhere, with
    random flips and axis permutations. Labels: the vessel truth (skull, scalp, air and brain = background).
    Adam (``lr``, cosine decay to 5 %), cross-entropy + soft Dice of the vessel class. Returns the model and its
    whole-scan results (:func:`evaluate_vessel_cta`) on ``held_out`` phantoms from the held-out seed stream
    (``seed + HELD_OUT_OFFSET + i``) and on the demo's scan (:data:`CTA_HELD_OUT_SEEDS`).
    """
    from .._card import LoadedModel
    from . import DEMO_MODELS, get_demo

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    card = DEMO_MODELS["vessel-cta"].card
    t0 = time.perf_counter()
    images, truths, centres = [], [], []
    for i in range(pool):
        image, truth, skull, _ = cta_volume(CTA_TRAIN_OFFSET + 1000 * seed + i, card)
        skull_idx = np.argwhere(skull)
        skull_idx = skull_idx[rng.choice(len(skull_idx), min(len(skull_idx), 50_000), replace=False)]
        images.append(image)
        truths.append(truth)
        centres.append([np.argwhere(truth), skull_idx])
    log(f"vessel-cta: generated {pool} head CTA phantoms on the model grid {images[0].shape} in "
        f"{time.perf_counter() - t0:.1f} s")
    model = VesselUNet3d()
    model.load_state_dict(get_demo("vessel-seg").module.state_dict())

    def draw() -> tuple[list[np.ndarray], list[np.ndarray]]:
        xs, ys = [], []
        for _ in range(batch):
            i = int(rng.integers(0, pool))
            x, y = _cta_crop(rng, images[i], truths[i], centres[i], crop)
            xs.append(x)
            ys.append(y)
        return xs, ys

    _train_segmenter(model, draw, iterations=iterations, lr=lr, name="vessel-cta", log=log)
    seconds = time.perf_counter() - t0
    model.eval()
    for held in (images, truths, centres):  # the training volumes, before the held-out scans are made
        held.clear()
    seeds = [seed + HELD_OUT_OFFSET + i for i in range(held_out)] + list(CTA_HELD_OUT_SEEDS)
    metrics = evaluate_vessel_cta(LoadedModel(module=model, card=card), seeds, log=log)
    metrics.update(train_seconds=round(seconds, 1), iterations=iterations, batch=batch, crop=crop, pool=pool,
                   lr=lr, seed=seed, init="vessel-seg",
                   train_seeds=[CTA_TRAIN_OFFSET + 1000 * seed + i for i in range(pool)])
    return model, metrics
