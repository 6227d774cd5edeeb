"""Sample data for napari (``sample_data`` contributions) and for scripts: phantoms whose evidence is known by
construction, and real scans that ship inside installed wheels. Qt-free; napari is not imported.

Every function takes no argument and returns a list of napari ``LayerDataTuple``\\ s
``(data, {"name", "scale", "translate", ["rotate" | "affine"], "metadata", ...}, "image" | "labels")``; the
scan and its mask share one geometry, so they overlay in world coordinates. ``metadata["geometry"]`` holds the
geometry as plain lists (``napari_attribution.io.Geometry(**metadata["geometry"])`` rebuilds it) and, for the
real scans, ``metadata["original_affine"]`` the file's affine for writing heatmaps back. No metadata field
identifies a patient.

=========================  ==========================================================================
``contrast_phase_ct``      abdominal CT phantom (24 x 96 x 96, 5 x 3.5 x 3.5 mm, HU), portal venous phase,
                           + the evidence mask (labels = deciding structures); fits ``demo:contrast-phase``
                           slice by slice
``contrast_phase_slab``    the 24 x 48 x 48 slab (5 x 7 x 7 mm) in the arterial phase + evidence mask;
                           fits ``demo:contrast-phase-3d``
``vessel_mra``             TOF-MRA-like vessel volume (48^3, 0.6 mm, [0, 1]) + ground truth;
                           fits ``demo:vessel-seg``
``lesion_ct``              soft-tissue phantom with an enhancing lesion + lesion mask; fits ``demo:lesion3d``
``real_mri_t1``            nibabel's ``anatomical.nii`` (a real T1 brain MRI, 33 x 41 x 25 at 2 mm; MIT)
``real_ct_slice``          pydicom's ``CT_small.dcm`` (a real 128 x 128 CT slice in HU; MIT)
=========================  ==========================================================================

:data:`SAMPLES` maps a key to ``(function, display name)`` for the napari manifest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from .io import Geometry
from .models.demo.phantoms import (
    EVIDENCE_STRUCTURES,
    PHASES,
    STRUCTURES,
    abdomen_phantom,
    lesion_phantom,
    vessel_phantom,
)

__all__ = [
    "SAMPLES",
    "contrast_phase_ct",
    "contrast_phase_slab",
    "lesion_ct",
    "real_ct_slice",
    "real_mri_t1",
    "vessel_mra",
]

LayerDataTuple = tuple[Any, dict[str, Any], str]

# the seeds of the shown phantoms (fixed so the samples are the same everywhere)
_CT_SEED, _SLAB_SEED, _VESSEL_SEED, _LESION_SEED = 2024, 2025, 2026, 7

_IDENTIFYING = re.compile(r"patient|birth|uid|accession|institution|physician|operator|referring|"
                          r"study_?date|acquisition_?date|series_?date|content_?date|station|device_?serial", re.I)


def _geometry_kwargs(geometry: Geometry) -> dict[str, Any]:
    return dict(geometry.to_napari())


def _geometry_meta(geometry: Geometry) -> dict[str, Any]:
    return {"spacing": list(geometry.spacing), "origin": list(geometry.origin),
            "direction": None if geometry.direction is None else [list(r) for r in geometry.direction]}


def _clean(meta: dict[str, Any]) -> dict[str, Any]:
    """Drop any reader field that could identify a patient (the readers keep none; this is a second guard)."""
    return {k: v for k, v in meta.items() if not _IDENTIFYING.search(str(k))}


def _pair(image: np.ndarray, mask: np.ndarray, geometry: Geometry, name: str, mask_name: str,
          meta: dict[str, Any], mask_meta: dict[str, Any], contrast: tuple[float, float]) -> list[LayerDataTuple]:
    g = _geometry_kwargs(geometry)
    gm = _geometry_meta(geometry)
    image_kw = {"name": name, **g, "colormap": "gray", "contrast_limits": list(contrast),
                "metadata": {**meta, "geometry": gm}}
    mask_kw = {"name": mask_name, **g, "opacity": 0.4, "metadata": {**mask_meta, "geometry": gm}}
    return [(image, image_kw, "image"), (mask, mask_kw, "labels")]


def _abdomen(seed: int, phase: int, dims: int, shape: tuple[int, ...] | None, model: str,
             title: str) -> list[LayerDataTuple]:
    case = abdomen_phantom(seed, phase, dims=dims, shape=shape)
    geometry = Geometry(spacing=case.spacing, origin=(0.0,) * case.image.ndim)
    assert case.structures is not None
    labels = np.where(case.mask, case.structures, 0).astype(np.uint8)
    names = {k: STRUCTURES[k] for k in EVIDENCE_STRUCTURES}
    meta = {"source": "napari-attribution phantom (synthetic, no patient)", "generator": "abdomen_phantom",
            "seed": seed, "units": "HU", "modality": "CT", "phase": PHASES[phase], "class_index": phase,
            "class_names": list(PHASES), "demo_model": model, "phantom": case.info}
    mask_meta = {"source": meta["source"], "label_names": names,
                 "description": "evidence mask: the structures whose enhancement decides the phase "
                                "(the image differs between phases only here)"}
    return _pair(case.image, labels, geometry, f"{title} ({PHASES[phase]})", "evidence mask", meta, mask_meta,
                 (-160.0, 240.0))


def contrast_phase_ct() -> list[LayerDataTuple]:
    """Abdominal CT phantom, portal venous phase, 24 x 96 x 96 at 5 x 3.5 x 3.5 mm, with its evidence mask
    (labels 1-6: aorta, IVC, portal vein, liver, kidney cortex, kidney medulla). Each axial slice matches
    ``demo:contrast-phase``'s training slices (same field of view and pixel size)."""
    return _abdomen(_CT_SEED, 2, 3, (24, 96, 96), "demo:contrast-phase", "abdominal CT phantom")


def contrast_phase_slab() -> list[LayerDataTuple]:
    """Abdominal CT slab phantom, arterial phase, 24 x 48 x 48 at 5 x 7 x 7 mm (``demo:contrast-phase-3d``'s
    training grid), with its evidence mask."""
    return _abdomen(_SLAB_SEED, 1, 3, None, "demo:contrast-phase-3d", "abdominal CT slab phantom")


def vessel_mra() -> list[LayerDataTuple]:
    """TOF-MRA-like phantom with branching vessels (48^3 at 0.6 mm, intensities in [0, 1]) and the vessel
    ground truth (label 1)."""
    case = vessel_phantom(_VESSEL_SEED)
    geometry = Geometry(spacing=case.spacing, origin=(0.0, 0.0, 0.0))
    meta = {"source": "napari-attribution phantom (synthetic, no patient)", "generator": "vessel_phantom",
            "seed": _VESSEL_SEED, "units": "normalised intensity [0, 1]", "modality": "MR (TOF-MRA-like)",
            "demo_model": "demo:vessel-seg", "phantom": case.info}
    mask_meta = {"source": meta["source"], "label_names": {1: "vessel"},
                 "description": "ground truth: voxel centres inside a vessel tube"}
    return _pair(case.image, case.mask.astype(np.uint8), geometry, "vessel phantom (MRA)", "vessel ground truth",
                 meta, mask_meta, (0.0, 1.0))


def lesion_ct() -> list[LayerDataTuple]:
    """The lesion phantom CT (16 x 28 x 28 at 2 x 0.8 x 0.8 mm, HU) with its enhancing lesion mask."""
    case = lesion_phantom(np.random.default_rng(_LESION_SEED), lesion=True)
    geometry = Geometry(spacing=case.spacing, origin=(0.0, 0.0, 0.0))
    meta = {"source": "napari-attribution phantom (synthetic, no patient)", "generator": "lesion_phantom",
            "seed": _LESION_SEED, "units": "HU", "modality": "CT", "class_index": 1,
            "class_names": ["no lesion", "lesion"], "demo_model": "demo:lesion3d"}
    mask_meta = {"source": meta["source"], "label_names": {1: "lesion"},
                 "description": "the enhancing lesion (+200 HU): the only evidence of the class 'lesion'"}
    layers = _pair(case.image, case.mask.astype(np.uint8), geometry, "lesion phantom CT", "lesion mask", meta,
                   mask_meta, (-200.0, 400.0))
    layers[1][1]["colormap"] = {None: "transparent", 0: "transparent", 1: "lime"}  # stands out on a red heatmap
    return layers


def _scan(data: np.ndarray, geometry: Geometry, meta: dict[str, Any], name: str, source: str,
          contrast: tuple[float, float]) -> list[LayerDataTuple]:
    kw = {"name": name, **_geometry_kwargs(geometry), "colormap": "gray", "contrast_limits": list(contrast),
          "metadata": {**_clean(meta), "source": source, "geometry": _geometry_meta(geometry)}}
    return [(data, kw, "image")]


def real_mri_t1() -> list[LayerDataTuple]:
    """A real T1-weighted brain MRI: ``nibabel/tests/data/anatomical.nii`` from the installed nibabel wheel
    (MIT licence), read with its geometry (2 mm voxels; the file's x axis is flipped)."""
    from .io import read_nifti

    try:
        import nibabel
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("This sample needs nibabel: pip install 'napari-attribution[io]'.") from exc
    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
    data, geometry, meta = read_nifti(path)
    data = np.asarray(data, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(data, [1, 99.5]))
    return _scan(data, geometry, meta, "T1 MRI (nibabel anatomical.nii)",
                 "nibabel test data anatomical.nii (MIT licence)", (lo, hi))


def real_ct_slice() -> list[LayerDataTuple]:
    """A real CT slice in HU: ``CT_small.dcm`` from the installed pydicom wheel (MIT licence), 128 x 128,
    0.66 mm pixels, with its patient-space geometry."""
    from .io import read_dicom

    try:
        from pydicom.data import get_testdata_file
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("This sample needs pydicom: pip install 'napari-attribution[io]'.") from exc
    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:  # pragma: no cover - a pydicom build without its test files
        raise FileNotFoundError("pydicom's test file CT_small.dcm is not installed.")
    data, geometry, meta = read_dicom(str(path))
    return _scan(np.asarray(data, dtype=np.float32), geometry, meta, "CT slice (pydicom CT_small.dcm)",
                 "pydicom test data CT_small.dcm (MIT licence)", (-160.0, 240.0))


SAMPLES: dict[str, tuple[Callable[[], list[LayerDataTuple]], str]] = {
    "contrast-phase-ct": (contrast_phase_ct, "Abdominal CT phantom + evidence mask (contrast phase)"),
    "contrast-phase-slab": (contrast_phase_slab, "Abdominal CT slab phantom + evidence mask (3D contrast phase)"),
    "vessel-mra": (vessel_mra, "Vessel MRA phantom + ground truth"),
    "lesion-ct": (lesion_ct, "Lesion CT phantom + lesion mask"),
    "real-mri-t1": (real_mri_t1, "Real T1 brain MRI (nibabel test data)"),
    "real-ct-slice": (real_ct_slice, "Real CT slice (pydicom test data)"),
}
