"""Deterministic phantoms whose evidence is known by construction (numpy only: no scipy, no torch).

Four generators, each driven by a ``numpy.random.Generator`` (or an int seed) and nothing else:

- :func:`abdomen_phantom`: a synthetic abdominal CT in Hounsfield units, 2D ``(H, W)`` or 3D ``(D, H, W)``,
  in one of three contrast phases. The phase changes the HU of five structures only (aorta, inferior vena
  cava, portal vein, liver, kidneys); everything else (air, fat, bowel with gas, fluid or *oral* contrast,
  muscles, spine) is drawn from the same random numbers whatever the phase. The random numbers are drawn in
  the same order for every phase, so one seed rendered in two phases differs **only** inside the evidence
  mask: that mask is where the decision lives.
- :func:`vessel_phantom`: a TOF-MRA-like volume in ``[0, 1]`` with random branching tubes (radius tapering
  along the tree, partial-volume edges), non-tubular bright distractors, a smooth bias field and Rician noise;
  the ground truth is the set of voxels whose centre lies inside a tube.
- :func:`lesion_phantom`: a soft-tissue ellipsoid with an optional enhancing sphere, the phantom of the lesion
  demo (:func:`napari_attribution._demo.phantom` draws from it).
- :func:`head_cta_phantom`: a head CT angiogram of clinical size (100 x 256 x 256 voxels, HU) whose vessels are
  grown as :func:`vessel_phantom`'s trees at the same physical size: the scan of ``napari-attribution demo``.

Axis order is numpy order (``(z, y, x)``); rows run anterior -> posterior and columns the patient's right ->
left (radiological display), so the liver is on the image's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ABDOMEN_2D_SHAPE",
    "ABDOMEN_2D_SPACING",
    "ABDOMEN_3D_SHAPE",
    "ABDOMEN_3D_SPACING",
    "EVIDENCE_STRUCTURES",
    "HEAD_CTA_SHAPE",
    "HEAD_CTA_SPACING",
    "LESION_SHAPE",
    "LESION_SPACING",
    "PHASES",
    "STRUCTURES",
    "VESSEL_SHAPE",
    "VESSEL_SPACING",
    "Phantom",
    "abdomen_batch",
    "abdomen_phantom",
    "head_cta_phantom",
    "lesion_phantom",
    "vessel_batch",
    "vessel_phantom",
]

Seed = int | np.random.Generator | None
FloatArray = npt.NDArray[np.float32]

PHASES: tuple[str, ...] = ("non-contrast", "arterial", "portal venous")

#: Label values of :attr:`Phantom.structures` for the abdominal phantom (0 = air).
STRUCTURES: dict[int, str] = {
    1: "aorta",
    2: "inferior vena cava",
    3: "portal vein",
    4: "liver",
    5: "kidney cortex",
    6: "kidney medulla",
    7: "spine",
    8: "bowel",
    9: "muscle",
    10: "subcutaneous fat",
    11: "abdominal soft tissue",
}
#: The structures whose enhancement decides the phase (the evidence mask is their union).
EVIDENCE_STRUCTURES: tuple[int, ...] = (1, 2, 3, 4, 5, 6)

ABDOMEN_2D_SHAPE = (96, 96)
ABDOMEN_2D_SPACING = (3.5, 3.5)  # mm: a 336 mm field of view
ABDOMEN_3D_SHAPE = (24, 48, 48)
ABDOMEN_3D_SPACING = (5.0, 7.0, 7.0)  # mm: 120 mm cranio-caudal, the same 336 mm in-plane field of view
VESSEL_SHAPE = (48, 48, 48)
VESSEL_SPACING = (0.6, 0.6, 0.6)  # mm, isotropic like a TOF-MRA
LESION_SHAPE = (16, 28, 28)
LESION_SPACING = (2.0, 0.8, 0.8)

# HU per phase (non-contrast, arterial, portal venous) as (low, high) ranges: one value of each range is drawn
# for every case whatever its phase, then the case's phase picks one. The ranges of the deciding structures
# (aorta, portal vein, kidney cortex) do not overlap between phases.
_ENHANCEMENT: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "aorta": ((35, 50), (230, 400), (130, 185)),
    "ivc": ((35, 50), (40, 75), (110, 160)),
    "portal_vein": ((35, 50), (65, 105), (160, 230)),
    "liver": ((50, 65), (60, 80), (100, 130)),
    "kidney_cortex": ((25, 40), (160, 260), (135, 190)),
    "kidney_medulla": ((25, 40), (55, 95), (135, 190)),
}


@dataclass
class Phantom:
    """One generated case.

    Attributes
    ----------
    image : float32 array in numpy axis order (HU for the CT phantoms, ``[0, 1]`` for the vessel phantom).
    label : the class (index into ``class_names``) for classification phantoms; None for segmentation.
    mask : boolean evidence mask (classification) or ground truth (segmentation), same shape as ``image``.
    structures : int16 label map of the drawn structures (see :data:`STRUCTURES`), or None.
    spacing : voxel size in mm, numpy order.
    info : the drawn parameters that matter to a reader (noise level, phase name, ...).
    """

    image: FloatArray
    label: int | None
    mask: npt.NDArray[np.bool_]
    structures: npt.NDArray[np.int16] | None
    spacing: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _smooth(a: npt.NDArray[np.float64], passes: int = 1) -> npt.NDArray[np.float64]:
    """Binomial [1, 2, 1] / 4 filter along every axis, ``passes`` times (edge values repeated)."""
    out = a
    for _ in range(passes):
        for ax in range(out.ndim):
            p = np.pad(out, [(1, 1) if i == ax else (0, 0) for i in range(out.ndim)], mode="edge")
            lo = np.take(p, range(0, out.shape[ax]), axis=ax)
            mid = np.take(p, range(1, out.shape[ax] + 1), axis=ax)
            hi = np.take(p, range(2, out.shape[ax] + 2), axis=ax)
            out = 0.25 * lo + 0.5 * mid + 0.25 * hi
    return out


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float,
                      passes: int = 1) -> npt.NDArray[np.float64]:
    n = _smooth(rng.standard_normal(shape), passes)
    return n * (sigma / max(float(n.std()), 1e-12))


def _ellipse(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], cx: float, cy: float, ax: float, ay: float,
             angle: float = 0.0) -> npt.NDArray[np.bool_]:
    c, s = np.cos(angle), np.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    inside: npt.NDArray[np.bool_] = (u / ax) ** 2 + (v / ay) ** 2 < 1.0
    return inside


def _segment_distance(pts: npt.NDArray[np.float64], p0: npt.NDArray[np.float64],
                      p1: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Distance of points ``(..., n)`` to the segment p0-p1 and the position ``t`` in [0, 1] of the nearest point."""
    d = p1 - p0
    t = np.clip(((pts - p0) @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)
    near = p0 + t[..., None] * d
    return np.sqrt(((pts - near) ** 2).sum(-1)), t


# --------------------------------------------------------------------------------------------- abdomen (CT)


def abdomen_phantom(seed: Seed, phase: int | None = None, *, dims: int = 2,
                    shape: tuple[int, ...] | None = None) -> Phantom:
    """A synthetic abdominal CT (HU) in one contrast phase, with the evidence mask of the phase.

    Parameters
    ----------
    seed : int or numpy.random.Generator
        The only source of randomness. With an int seed, the same seed in two phases gives two images that
        differ only inside the evidence mask.
    phase : 0, 1 or 2, optional
        Index into :data:`PHASES` (non-contrast, arterial, portal venous); drawn from ``seed`` when None
        (drawn *after* everything else, so the anatomy does not depend on it).
    dims : 2 or 3
        A single axial slice ``(96, 96)`` at 3.5 mm or a slab ``(24, 48, 48)`` at 5 x 7 x 7 mm.
    shape : tuple, optional
        Another grid over the same field of view (the spacing is scaled accordingly).

    Returns
    -------
    Phantom
        ``label`` = the phase index; ``mask`` = voxels of aorta, IVC, portal vein, liver and kidneys (the
        structures whose enhancement decides the phase); ``structures`` = :data:`STRUCTURES` label map.
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    rng = _rng(seed)
    base_shape = ABDOMEN_2D_SHAPE if dims == 2 else ABDOMEN_3D_SHAPE
    base_spacing = ABDOMEN_2D_SPACING if dims == 2 else ABDOMEN_3D_SPACING
    shape = tuple(shape or base_shape)
    if len(shape) != dims:
        raise ValueError(f"shape {shape} does not have {dims} axes")
    spacing = tuple(float(sp * b / s) for sp, b, s in zip(base_spacing, base_shape, shape, strict=True))

    # ---- geometry (mm). x: columns (patient's right -> left), y: rows (anterior -> posterior), z: slices
    u = rng.uniform
    # the slice (2D) or slab centre: a 2D slice lies anywhere a slab slice can (so the 2D model also reads
    # every slice of a slab), a slab is centred within 20 mm of the hilum level
    z_centre = u(-20, 20) * (2.75 if dims == 2 else 1.0)
    ax_ = [(np.arange(n) - (n - 1) / 2) * sp for n, sp in zip(shape, spacing, strict=True)]
    if dims == 2:
        y, x = np.meshgrid(ax_[0], ax_[1], indexing="ij")
        z = np.full_like(x, z_centre)
    else:
        z, y, x = np.meshgrid(ax_[0] + z_centre, ax_[1], ax_[2], indexing="ij")
    zr = z - z_centre  # position in the slab, for drifts

    bx, by = u(-6, 6), u(-8, 8)
    body_a, body_b = u(135, 160), u(92, 120)
    fat = u(8, 24)
    body = _ellipse(x, y, bx, by, body_a, body_b)
    inner = _ellipse(x, y, bx, by, body_a - fat, body_b - fat)

    spine_x, spine_y, spine_r = bx + u(-5, 5), by + body_b * u(0.35, 0.5), u(16, 22)
    spine_drift = rng.uniform(-0.08, 0.08, 2)
    sx, sy = spine_x + spine_drift[0] * zr, spine_y + spine_drift[1] * zr
    vert_body = (x - sx) ** 2 + (y - sy) ** 2 < spine_r**2
    vert_inner = (x - sx) ** 2 + (y - sy) ** 2 < (spine_r - u(2.5, 4)) ** 2
    process = _ellipse(x, y, sx + u(-3, 3), sy + spine_r + u(14, 22), u(6, 9), u(12, 18))
    paraspinal = [_ellipse(x, y, sx + s * u(22, 32), sy + spine_r + u(5, 15), u(14, 22), u(12, 18), u(-0.4, 0.4))
                  for s in (-1, 1)]
    psoas = [_ellipse(x, y, sx + s * u(24, 32), sy - u(0, 8), u(8, 13), u(9, 14)) for s in (-1, 1)]

    ao_r = u(9, 14)
    ao_x, ao_y = sx + u(8, 22), sy - spine_r - ao_r - u(2, 8)
    aorta = (x - ao_x) ** 2 + (y - ao_y) ** 2 < ao_r**2
    ivc = _ellipse(x, y, sx - u(16, 30), sy - spine_r - u(6, 14), u(10, 14), u(7, 11), u(-0.5, 0.5))

    lv_cx, lv_cy = bx - u(70, 98), by - u(5, 32)
    lv_a, lv_b, lv_ang = u(52, 75), u(62, 88), u(-0.35, 0.35)
    lv_zc, lv_zr = u(20, 80), u(110, 170)  # an ellipsoid centred above the slab: smaller towards the feet
    lv_scale = np.sqrt(np.clip(1 - ((z - lv_zc) / lv_zr) ** 2, 0.05, 1))
    c, s = np.cos(lv_ang), np.sin(lv_ang)
    lu, lw = (x - lv_cx) * c + (y - lv_cy) * s, -(x - lv_cx) * s + (y - lv_cy) * c
    liver = ((lu / (lv_a * lv_scale)) ** 2 + (lw / (lv_b * lv_scale)) ** 2 < 1) & inner

    # portal vein: a main trunk from the hepatic hilum into the liver and one branch from its tip
    pv_r = u(5.5, 8.5)
    if dims == 2:  # in 70 % of the slices the portal vein is in plane, otherwise anywhere within 30 mm
        pv_z = z_centre + (u(-3, 3) if rng.random() < 0.7 else u(-30, 30))
    else:
        pv_z = z_centre + u(-30, 30)
    p0 = np.array([pv_z + u(-8, 8), lv_cy + u(0, 22), lv_cx + lv_a * u(0.55, 0.95)])
    p1 = np.array([pv_z, lv_cy + u(-12, 12), lv_cx + u(-10, 20)])
    p2 = p1 + np.array([u(-10, 10), u(-35, 35), u(-30, -10)])
    pts = np.stack([z, y, x], -1)
    d1, _ = _segment_distance(pts, p0, p1)
    d2, t2 = _segment_distance(pts, p1, p2)
    portal = ((d1 < pv_r) | (d2 < pv_r * (1 - 0.35 * t2))) & inner

    kidneys, medullas = np.zeros(x.shape, bool), np.zeros(x.shape, bool)
    for side in (-1, 1):
        kx, ky = sx + side * u(52, 72), sy + u(-8, 12)
        ka, kb, kang = u(18, 26), u(28, 38), side * u(0.1, 0.6)
        kzc, kzr = z_centre + u(-35, 15) * (2.0 if dims == 2 else 1.0), u(45, 62)  # 2D: sometimes no kidney
        ks = np.sqrt(np.clip(1 - ((z - kzc) / kzr) ** 2, 0, 1))
        kc, ksn = np.cos(kang), np.sin(kang)
        ku, kw = (x - kx) * kc + (y - ky) * ksn, -(x - kx) * ksn + (y - ky) * kc
        rr = (ku / np.maximum(ka * ks, 1e-6)) ** 2 + (kw / np.maximum(kb * ks, 1e-6)) ** 2
        kid = (rr < 1) & (ks > 0.05)
        kidneys |= kid
        medullas |= kid & (rr < u(0.25, 0.45))

    # bowel loops: gas, fluid or oral contrast (as bright as an enhanced aorta), phase-independent
    n_bowel = int(rng.integers(4, 10))
    bowel_params = [(bx + u(-70, 110), by + u(-body_b + fat + 10, 25), u(9, 24), u(7, 18), u(0, np.pi),
                     int(rng.choice(3, p=[0.35, 0.35, 0.30])), u(0, 1)) for _ in range(n_bowel)]

    # ---- intensities: every random number is drawn whatever the phase
    hu = {k: [u(*rng_) for rng_ in v] for k, v in _ENHANCEMENT.items()}
    fat_hu, soft_hu, muscle_hu = u(-115, -85), u(15, 45), u(45, 60)
    cortical_hu, cancellous_hu = u(500, 850), u(150, 260)
    noise_sigma = u(8, 25)
    texture = _correlated_noise(rng, x.shape, u(6, 15), passes=3)
    noise = _correlated_noise(rng, x.shape, noise_sigma, passes=1)
    if phase is None:
        phase = int(rng.integers(0, 3))
    if phase not in (0, 1, 2):
        raise ValueError(f"phase must be 0, 1 or 2 ({', '.join(PHASES)}), got {phase}")

    # ---- paint (later structures overwrite earlier ones)
    img = np.full(x.shape, -1000.0)
    lab = np.zeros(x.shape, np.int16)

    def paint(m: npt.NDArray[np.bool_], value: float | npt.NDArray[np.float64], code: int) -> None:
        img[m] = value if np.isscalar(value) else np.asarray(value)[m]
        lab[m] = code

    paint(body, fat_hu, 10)
    paint(inner, soft_hu + texture, 11)
    for cx, cy, a, b, ang, kind, level in bowel_params:
        m = _ellipse(x, y, cx, cy, a, b, ang) & inner
        content = (-900 + 500 * level, 5 + 25 * level, 180 + 270 * level)[kind]
        paint(m, content, 8)
    for m in (*paraspinal, *psoas):
        paint(m & body, muscle_hu, 9)
    paint(vert_body | (process & body), cortical_hu, 7)
    paint(vert_inner, cancellous_hu, 7)
    paint(liver, hu["liver"][phase], 4)
    paint(kidneys & inner, hu["kidney_cortex"][phase], 5)
    paint(medullas & inner, hu["kidney_medulla"][phase], 6)
    paint(ivc & inner, hu["ivc"][phase], 2)
    paint(aorta & inner, hu["aorta"][phase], 1)
    paint(portal, hu["portal_vein"][phase], 3)

    image = (img + noise).astype(np.float32)
    evidence = np.isin(lab, EVIDENCE_STRUCTURES)
    info = {"phase": PHASES[phase], "noise_sigma_hu": round(noise_sigma, 2), "z_centre_mm": round(z_centre, 2),
            "enhancement_hu": {k: round(v[phase], 1) for k, v in hu.items()}}
    return Phantom(image, phase, evidence, lab, spacing, info)


def abdomen_batch(seed: Seed, n: int, *, dims: int = 2, balanced: bool = True
                  ) -> tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """``n`` cases: images ``(n, 1, *S)``, phases ``(n,)`` and evidence masks ``(n, *S)``.

    With ``balanced`` the phases cycle 0, 1, 2, ... in a random order fixed by ``seed``.
    """
    rng = _rng(seed)
    labels = (rng.permutation(np.arange(n) % 3) if balanced else rng.integers(0, 3, n)).astype(np.int64)
    cases = [abdomen_phantom(rng, int(k), dims=dims) for k in labels]
    return (np.stack([c.image for c in cases])[:, None], labels, np.stack([c.mask for c in cases]))


# --------------------------------------------------------------------------------------------- vessels (MRA)


def _random_unit(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _turn(rng: np.random.Generator, d: npt.NDArray[np.float64], angle: float) -> npt.NDArray[np.float64]:
    """``d`` rotated by ``angle`` (radians) towards a random perpendicular direction."""
    p = _random_unit(rng)
    p -= (p @ d) * d
    p /= max(float(np.linalg.norm(p)), 1e-12)
    out: npt.NDArray[np.float64] = np.cos(angle) * d + np.sin(angle) * p
    return out / float(np.linalg.norm(out))


def vessel_phantom(seed: Seed, *, shape: tuple[int, int, int] = VESSEL_SHAPE, max_segments: int = 220) -> Phantom:
    """A TOF-MRA-like volume in ``[0, 1]`` with random branching vessel trees and their ground truth.

    1-3 trees enter from the faces of the volume; each is a random walk of straight segments (3-6 voxels)
    whose direction turns by up to ~25 degrees, whose radius (1.6-3 voxels at the root) tapers by ~3 % per
    segment, and which branches with probability 0.22 per segment (child radius 55-80 % of the parent,
    turned 35-75 degrees). Intensities: vessels 0.55-0.95 with partial-volume edges, tissue 0.12-0.3 under a
    smooth multiplicative bias field with texture, 0-4 non-tubular bright blobs (0.35-0.65) as distractors,
    Rician noise of sigma 0.02-0.07. Ground truth (``mask``): voxel centre inside a tube.
    """
    rng = _rng(seed)
    u = rng.uniform
    size = np.asarray(shape, float)
    field_ = np.full(shape, -np.inf)  # max over segments of (radius - distance to the centreline)
    grid_idx = np.indices(shape).reshape(3, -1).T.astype(float)
    n_segments = 0
    stack: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, int]] = []
    for _ in range(int(rng.integers(1, 4))):
        face = int(rng.integers(0, 6))
        axis, side = face // 2, face % 2
        start = rng.uniform(0.2, 0.8, 3) * (size - 1)
        start[axis] = -2.0 if side == 0 else size[axis] + 1.0
        inward = np.zeros(3)
        inward[axis] = 1.0 if side == 0 else -1.0
        stack.append((start, _turn(rng, inward, u(0, 0.6)), u(1.6, 3.0), 0))
    while stack and n_segments < max_segments:
        p, d, r, depth = stack.pop()
        while r >= 0.55 and n_segments < max_segments:
            length = u(3, 6)
            d = _turn(rng, d, u(0, 0.45))
            q = p + length * d
            r_end = r * u(0.95, 0.99)
            lo = np.maximum(np.floor(np.minimum(p, q) - r - 2), 0).astype(int)
            hi = np.minimum(np.ceil(np.maximum(p, q) + r + 2) + 1, size).astype(int)
            if np.all(hi > lo):
                sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
                sub = np.stack(np.meshgrid(*[np.arange(a, b, dtype=float) for a, b in zip(lo, hi, strict=True)],
                                           indexing="ij"), -1)
                dist, t = _segment_distance(sub, p, q)
                field_[sl] = np.maximum(field_[sl], r + (r_end - r) * t - dist)
            n_segments += 1
            if rng.random() < 0.22 and depth < 6:
                stack.append((q.copy(), _turn(rng, d, u(0.6, 1.3)), r * u(0.55, 0.8), depth + 1))
            p, r = q, r_end
            if np.any(p < -6) or np.any(p > size + 5):
                break
    del grid_idx
    occupancy = np.clip(field_ + 0.5, 0.0, 1.0)
    truth = field_ > 0

    tissue = u(0.12, 0.3)
    vessel_level = u(0.55, 0.95)
    bias = 1.0 + _correlated_noise(rng, shape, u(0.04, 0.12), passes=6)
    bg = tissue * bias + _correlated_noise(rng, shape, u(0.01, 0.03), passes=2)
    zz, yy, xx = np.indices(shape, dtype=float)
    for _ in range(int(rng.integers(0, 5))):
        c = rng.uniform(4, 44, 3) * size / 48.0
        radii = rng.uniform(2.0, 5.0, 3)
        blob = ((zz - c[0]) / radii[0]) ** 2 + ((yy - c[1]) / radii[1]) ** 2 + ((xx - c[2]) / radii[2]) ** 2
        bg = np.where(blob < 1, u(0.35, 0.65), bg)
    clean = bg * (1 - occupancy) + vessel_level * occupancy * (1 + _smooth(rng.normal(0, 0.05, shape), 2))
    sigma = u(0.02, 0.07)
    noisy = np.sqrt((clean + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    image = np.clip(noisy, 0.0, 1.0).astype(np.float32)
    info = {"noise_sigma": round(sigma, 4), "segments": n_segments, "vessel_fraction": round(float(truth.mean()), 4)}
    return Phantom(image, None, truth, truth.astype(np.int16), VESSEL_SPACING, info)


def vessel_batch(seed: Seed, n: int, *, shape: tuple[int, int, int] = VESSEL_SHAPE
                 ) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """``n`` vessel volumes ``(n, 1, *S)`` and their ground truth ``(n, *S)``."""
    rng = _rng(seed)
    cases = [vessel_phantom(rng, shape=shape) for _ in range(n)]
    return np.stack([c.image for c in cases])[:, None], np.stack([c.mask for c in cases])


# --------------------------------------------------------------------------------------------- lesion (CT)


def lesion_phantom(seed: Seed, lesion: bool, shape: tuple[int, ...] = LESION_SHAPE) -> Phantom:
    """The lesion demo's phantom: a soft-tissue body (40 HU) in air with noise; with ``lesion`` an enhancing
    sphere (+200 HU). ``mask`` = the lesion (all False without one); ``label`` = 1 with a lesion, else 0."""
    rng = _rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = (yy / 0.8) ** 2 + (xx / 0.9) ** 2 + (zz / 1.1) ** 2 < 1
    vol = np.where(body, 40.0, -1000.0) + rng.normal(0, 25, shape)
    mask = np.zeros(shape, bool)
    if lesion:
        c = rng.uniform(-0.35, 0.35, 3)
        r = rng.uniform(0.3, 0.42)
        mask = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < r**2
        vol[mask] += 200.0
    structures = np.where(body, 1, 0).astype(np.int16)
    structures[mask] = 2
    return Phantom(vol.astype(np.float32), int(lesion), mask, structures, LESION_SPACING, {})


# --------------------------------------------------------------------------------------------- head CTA (clinical size)

HEAD_CTA_SHAPE = (100, 256, 256)
HEAD_CTA_SPACING = (0.5, 0.7, 0.7)  # mm: a head CT angiogram's thin slices; 50 x 179 x 179 mm


def head_cta_phantom(seed: Seed, *, shape: tuple[int, int, int] = HEAD_CTA_SHAPE,
                     spacing: tuple[float, float, float] = HEAD_CTA_SPACING) -> Phantom:
    """A head CT angiogram of clinical size in HU, with the vessel trees' ground truth: the big scan of the demo.

    Air (-1000 HU) around a head ellipse: scalp (40 HU), skull (inner and outer tables about 1100 HU around a
    diploe of about 550 HU), grey matter (38 HU) around white matter (28 HU) and two ventricles (8 HU). Vessels
    enhanced by contrast (330-400 HU) are random branching trees grown as :func:`vessel_phantom` grows them, in
    millimetres at the same physical size (root radius 1.0-1.8 mm, segments 1.8-3.6 mm, about 3 % taper per
    segment, branching probability 0.22), ten of them rising from the skull base and six starting on the brain's
    surface, kept inside the brain. Partial-volume edges, then correlated noise (about 12 HU). Ground truth
    (``mask``): voxel centre inside a tube. ``structures``: 0 air, 1 scalp, 2 skull, 3 grey matter, 4 white
    matter, 5 ventricle, 6 vessel. Seeded and numpy only (about 4 s for the default shape).
    """
    rng = _rng(seed)
    u = rng.uniform
    sp = np.asarray(spacing, float)
    size = np.asarray(shape, float)
    z1, y1, x1 = ((np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, sp, strict=True))
    zz, yy, xx = z1[:, None, None], y1[None, :, None], x1[None, None, :]

    def shell(a: float, b: float, c: float, dz: float = 0.0) -> npt.NDArray[np.float64]:
        # the ellipsoid's level (< 1 inside): in-plane semi-axes a (x) and b (y), c along z (the head's top above)
        out: npt.NDArray[np.float64] = ((xx / a) ** 2 + (yy / b) ** 2 + ((zz - dz) / c) ** 2)
        return out

    a, b, c = u(66, 72), u(80, 86), 140.0
    head = shell(a, b, c, -60.0) < 1
    skull_out = shell(a - 3.5, b - 3.5, c - 3.5, -60.0) < 1
    diploe = shell(a - 5.5, b - 5.5, c - 5.5, -60.0) < 1
    skull_in = shell(a - 7.5, b - 7.5, c - 7.5, -60.0) < 1
    brain = shell(a - 8.5, b - 8.5, c - 8.5, -60.0) < 1
    white = shell(a - 22, b - 24, c - 22, -60.0) < 1
    vent = np.zeros(shape, bool)
    for side in (-1, 1):
        vent |= ((xx - side * 9) / 6) ** 2 + ((yy + 6) / 26) ** 2 + ((zz - 8) / 14) ** 2 < 1
    structures = np.zeros(shape, np.int16)
    structures[head] = 1
    structures[skull_out] = 2
    structures[skull_in] = 3
    structures[white] = 4
    structures[vent & white] = 5
    hu = np.select([structures == 5, structures == 4, structures == 3, skull_in, diploe, skull_out, head],
                   [8.0, 28.0, 38.0, 38.0, 550.0, 1100.0, 40.0], -1000.0)
    hu += np.where(structures >= 3, _correlated_noise(rng, shape, 3.0, passes=4), 0.0)  # soft parenchymal texture

    # vessels: the signed field max(radius - distance) in mm, segment by segment inside its bounding box
    field_ = np.full(shape, -np.inf)
    inside_brain = brain & ~vent

    def in_brain(p: npt.NDArray[np.float64]) -> bool:
        idx = np.round(p / sp + (size - 1) / 2).astype(int)
        return bool(np.all(idx >= 0) and np.all(idx < size) and inside_brain[tuple(idx)])

    starts: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
    while len(starts) < 16:
        p = np.array([u(-0.45, 0.45) * shape[0] * sp[0] if len(starts) >= 10 else z1[0] + 2.0,
                      u(-0.6, 0.6) * b, u(-0.6, 0.6) * a])
        if in_brain(p):
            up = np.array([1.0, 0.0, 0.0]) if len(starts) < 10 else _turn(rng, np.array([1.0, 0.0, 0.0]), u(0, 3.1))
            starts.append((p, up))
    stack = [(p, _turn(rng, d, u(0, 0.5)), u(1.0, 1.8), 0) for p, d in starts]
    n_segments = 0
    while stack and n_segments < 3000:
        p, d, r, depth = stack.pop()
        while r >= 0.33 and n_segments < 3000:
            q = p + u(1.8, 3.6) * d
            d = _turn(rng, d, u(0, 0.45))
            r_end = r * u(0.95, 0.99)
            if not in_brain(q):
                break
            ip, iq = p / sp + (size - 1) / 2, q / sp + (size - 1) / 2
            lo = np.maximum(np.floor(np.minimum(ip, iq) - (r + 2) / sp), 0).astype(int)
            hi = np.minimum(np.ceil(np.maximum(ip, iq) + (r + 2) / sp) + 1, size).astype(int)
            sl = tuple(slice(int(i), int(j)) for i, j in zip(lo, hi, strict=True))
            sub = np.stack(np.meshgrid(z1[sl[0]], y1[sl[1]], x1[sl[2]], indexing="ij"), -1)
            dist, t = _segment_distance(sub, p, q)
            field_[sl] = np.maximum(field_[sl], r + (r_end - r) * t - dist)
            n_segments += 1
            if rng.random() < 0.22 and depth < 8:
                stack.append((q.copy(), _turn(rng, d, u(0.6, 1.3)), r * u(0.55, 0.8), depth + 1))
            p, r = q, r_end
    truth = (field_ > 0) & inside_brain
    occupancy = np.clip(field_ / float(sp.mean()) + 0.5, 0.0, 1.0) * inside_brain
    vessel_hu = u(330, 400)
    hu = hu * (1 - occupancy) + vessel_hu * occupancy
    structures[truth] = 6
    image = (hu + _correlated_noise(rng, shape, 12.0, passes=1)).astype(np.float32)
    info = {"segments": n_segments, "vessel_hu": round(vessel_hu, 1), "vessel_fraction": round(float(truth.mean()), 5)}
    return Phantom(image, None, truth, structures, tuple(float(s) for s in spacing), info)
