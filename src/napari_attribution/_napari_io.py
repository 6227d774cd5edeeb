"""npe2 reader and writers (Qt-free; no napari import): NIfTI / DICOM in, NIfTI out, aligned.

* Reader: ``.nii``, ``.nii.gz``, ``.dcm`` and folders holding a DICOM series, through
  :func:`napari_attribution.io.read_image`. The layer gets the scan's geometry (``Geometry.to_napari()``: scale =
  spacing, translate = origin, rotate / affine for oblique scans) and the reader's metadata, which names no
  patient (no name, ID, birth date or UID); the layer's name comes from the file name, never from DICOM tags.
  Integer volumes with few values (masks, segmentations) open as Labels layers.
* Writers: an image or labels layer to ``.nii`` / ``.nii.gz``, with ``metadata["original_affine"]`` when the
  layer has it (so the file lines up with its source in other tools), else the layer's scale / translate /
  rotate / affine. An existing file is never overwritten silently: the layer is written under the next free name
  (``scan-2.nii.gz``) with a warning. Heatmaps made by this plugin get a JSON sidecar with their provenance: the
  method and parameters, the sha256 of the weights actually read, whether they are random (``"random_weights"``),
  the card in effect, and the scan's file name (never its folder) with its sha256 (``metadata["source_sha256"]``,
  recorded when the reader opened it). A heatmap and its sidecar share one free name and land together or not at
  all (:mod:`._atomic`: written to a hidden temporary name, then put in place exclusively).
* A heatmap layer hidden outside the body (a display choice of the docks) is saved with its full map
  (:func:`~napari_attribution.layers.full_map`: every value, also outside the body), and the sidecar's
  ``display_mask`` says which mask the viewer used and ``"saved"`` that the file keeps the values it hid. Only a
  layer whose full map is gone (its data replaced by hand) is saved as shown, with a warning and ``"saved"``
  saying so.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._provenance import scan_sha256
from .layers import OWNER_KEY, LayerDataTuple, full_map, json_safe

__all__ = ["get_reader", "read", "write_image", "write_labels"]

_NIFTI = (".nii", ".nii.gz")
_DICOM = (".dcm", ".dicom", ".ima")
_LABEL_MAX_VALUES = 64


def _name_of(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm", ".dicom", ".ima"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _is_dicom_folder(path: Path, probe: int = 20) -> bool:
    from .io._dicom import is_dicom_file

    checked = 0
    for root, _dirs, files in os.walk(path):
        for f in sorted(files):
            if is_dicom_file(Path(root) / f):
                return True
            checked += 1
            if checked >= probe:
                return False
    return False


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerDataTuple]] | None:
    """npe2 ``get_reader``: :func:`read` for NIfTI files, DICOM files and DICOM folders, else None.

    Named pipes, sockets and devices are never opened (napari's File > Open would block on one forever): such
    a path gets None, and inside a folder they are skipped.
    """
    from .io._limits import is_regular_file

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in map(Path, paths):
        low = p.name.lower()
        if p.is_dir():
            if not _is_dicom_folder(p):
                return None
        elif p.exists() and not is_regular_file(p):
            return None
        elif not (low.endswith(_NIFTI) or low.endswith(_DICOM)):
            return None
    return read


def _looks_like_labels(data: np.ndarray, meta: dict[str, Any]) -> bool:
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
        return False
    if meta.get("intent") == "label" or data.dtype == bool:
        return True
    if meta.get("format") == "dicom" or meta.get("modality"):
        return False
    flat = data.ravel()[:: max(1, data.size // 1_000_000)]  # a sample is enough to tell a CT from a mask
    values = np.unique(flat)
    return values.size <= _LABEL_MAX_VALUES and values.min() >= 0


def read(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """Read each path into one layer data tuple (image or labels), placed by the scan's geometry."""
    from .io import read_image

    out: list[LayerDataTuple] = []
    for p in map(Path, [path] if isinstance(path, (str, os.PathLike)) else path):
        data, geometry, meta = read_image(p)
        kwargs = {k: np.asarray(v, dtype=float).tolist() for k, v in geometry.to_napari().items()}
        extra = data.ndim - geometry.ndim  # a leading channel / time axis
        if extra:
            kwargs = _pad_geometry(kwargs, extra)
        meta = dict(json_safe(meta))
        meta["source_file"] = p.name  # the file name only: folder names can hold patient names
        meta["source_sha256"] = scan_sha256(p)  # for the heatmaps' sidecars (which scan, byte for byte)
        kwargs["name"] = _name_of(p)
        kwargs["metadata"] = meta
        kind = "labels" if _looks_like_labels(data, meta) else "image"
        if kind == "labels":
            data = data.astype(np.int32) if data.dtype == bool or data.dtype.itemsize > 4 else data
        out.append((data, kwargs, kind))
    return out


def _pad_geometry(kwargs: dict[str, Any], extra: int) -> dict[str, Any]:
    """Geometry of a scan with ``extra`` leading non-spatial axes (unit scale, no rotation on them)."""
    out = dict(kwargs)
    out["scale"] = [1.0] * extra + list(kwargs["scale"])
    out["translate"] = [0.0] * extra + list(kwargs["translate"])
    for key in ("rotate", "affine"):
        if key in kwargs:
            m = np.asarray(kwargs[key])
            big = np.eye(m.shape[0] + extra)
            big[extra:, extra:] = m
            out[key] = big.tolist()
    return out


# ---------------------------------------------------------------------------------------------- writing


def _sidecar_path(path: Path) -> Path:
    """``heat.nii.gz`` -> ``heat.json`` (the provenance sidecar beside a heatmap)."""
    name = path.name
    cut = len(".nii.gz") if name.lower().endswith(".nii.gz") else len(path.suffix)
    return path.with_name((name[:-cut] if cut else name) + ".json")


def _free_path(path: Path, *, sidecar: bool = False, taken: Container[Path] = ()) -> Path:
    """``path``, or the first of ``scan-2.nii.gz``, ``scan-3.nii.gz``, ... that is free (and not in ``taken``);
    with ``sidecar``, its ``.json`` must be free too (a heatmap and its sidecar keep one name)."""

    def free(p: Path) -> bool:
        return p not in taken and not p.exists() and not (sidecar and _sidecar_path(p).exists())

    if free(path):
        return path
    name = path.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else path.suffix
    stem = name[: -len(suffix)] if suffix else name
    i = 2
    while True:
        candidate = path.with_name(f"{stem}-{i}{suffix}")
        if free(candidate):
            return candidate
        i += 1


def _layer_geometry(meta: dict[str, Any], ndim: int) -> Any:
    """The layer's world transform as a Geometry (scale, then rotate, translate, then the extra affine)."""
    from .io import Geometry

    scale = np.asarray(meta.get("scale", np.ones(ndim)), dtype=float)[-ndim:]
    translate = np.asarray(meta.get("translate", np.zeros(ndim)), dtype=float)[-ndim:]
    rotate = np.asarray(meta.get("rotate", np.eye(ndim)), dtype=float)
    rotate = rotate[-ndim:, -ndim:] if rotate.shape[0] >= ndim else np.eye(ndim)
    inner = np.eye(ndim + 1)
    inner[:ndim, :ndim] = rotate @ np.diag(scale)
    inner[:ndim, ndim] = translate
    outer = np.asarray(meta.get("affine", np.eye(ndim + 1)), dtype=float)
    if outer.shape[0] != ndim + 1:
        outer = np.eye(ndim + 1)
    return Geometry.from_affine(outer @ inner)


def _write(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """The layer as NIfTI (plus a provenance sidecar for this plugin's heatmaps), written through
    :mod:`._atomic`: both files land together or not at all, and an existing name is never replaced: if another
    writer takes the free name first, the next one is used."""
    from ._atomic import AtomicFiles
    from .io._nifti import nifti_writer

    target = Path(path)
    low = target.name.lower()
    if not low.endswith(_NIFTI):
        target = target.with_name(target.name + ".nii.gz")
    layer_md = meta.get("metadata") or {}
    array = np.asarray(full_map(data, layer_md))  # a heatmap hidden outside the body: every value, not the display
    spatial = array.ndim if array.ndim <= 3 else 3
    original = layer_md.get("original_affine")
    if original is not None and np.asarray(original).shape != (4, 4):
        original = None
    if original is not None and spatial == 2 and array.ndim == 2:
        original = None  # a 2-D layer cannot take a volume's affine
    geometry = _layer_geometry(meta, spatial)
    info = layer_md.get(OWNER_KEY)
    record = {"layer": meta.get("name"), "napari_attribution": json_safe(info)} if isinstance(info, dict) else None
    if isinstance(info, dict) and record is not None and isinstance(info.get("display_mask"), dict):
        _record_saved_values(record, info["display_mask"], full=full_map(data, layer_md) is not data,
                             name=str(meta.get("name")))
    taken: set[Path] = set()
    while True:
        free = _free_path(target, sidecar=record is not None, taken=taken)
        write = nifti_writer(free, array, None if original is not None else geometry, original_affine=original)
        try:
            with AtomicFiles() as files:
                written = [str(files.add(free, write))]
                if record is not None:
                    written.append(str(files.add_text(_sidecar_path(free),
                                                      json.dumps(record, indent=1, default=str))))
        except FileExistsError:  # taken between the check and the write (another writer): try the next name
            taken.add(free)
            continue
        break
    if free != target:
        warnings.warn(f"'{target.name}' exists and was kept; the layer was saved as '{free.name}'.", UserWarning,
                      stacklevel=2)
    return written


def _record_saved_values(record: dict[str, Any], mask: dict[str, Any], *, full: bool, name: str) -> None:
    """Say in the sidecar ``record`` what a heatmap hidden outside ``mask`` (its ``display_mask``) was saved with:
    the full map, or (``full`` False: the layer no longer holds it) the values shown, with a warning."""
    region = str(mask.get("region") or "a mask")
    shown = dict(record["napari_attribution"]["display_mask"])
    if full:
        shown["saved"] = (f"the full map: every value, also outside {region}; the viewer hid those (a display "
                          "choice), the file keeps them")
    else:
        shown["saved"] = f"as shown in the viewer: NaN outside {region} (the layer no longer held its full map)"
        warnings.warn(f"'{name}' is saved as shown, NaN outside {region}: the layer no longer holds its full map "
                      "(its data was replaced). Choose 'outside the body: shown' and explain again to save every "
                      "value.", UserWarning, stacklevel=3)
    record["napari_attribution"]["display_mask"] = shown


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for image layers (NIfTI)."""
    return _write(path, data, meta)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for labels layers (NIfTI, integer)."""
    return _write(path, np.asarray(data), meta)

