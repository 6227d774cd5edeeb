"""Sample data: valid napari LayerDataTuples, shared geometry, no patient identifiers (napari not needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_attribution import _sample_data
from napari_attribution._sample_data import SAMPLES

FORBIDDEN = ("patient", "birth", "uid", "accession", "institution", "physician", "operator")


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _keys(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _keys(v)


@pytest.mark.parametrize("key", list(SAMPLES))
def test_layer_data_tuples(key):
    func, title = SAMPLES[key]
    assert title and callable(func)
    layers = func()
    assert isinstance(layers, list) and layers
    first_geometry = None
    for data, kwargs, kind in layers:
        assert kind in ("image", "labels")
        assert isinstance(data, np.ndarray) and data.ndim in (2, 3)
        assert kwargs["name"]
        assert len(kwargs["scale"]) == data.ndim and all(s > 0 for s in kwargs["scale"])
        assert len(kwargs["translate"]) == data.ndim
        if "affine" in kwargs:
            assert np.asarray(kwargs["affine"]).shape == (data.ndim + 1, data.ndim + 1)
        if kind == "labels":
            assert np.issubdtype(data.dtype, np.integer) and data.any()
            assert set(np.unique(data).tolist()) - {0} <= set(kwargs["metadata"]["label_names"])
        else:
            assert np.isfinite(data).all()
        meta = kwargs["metadata"]
        json.dumps(meta)  # plain values only
        assert not [k for k in _keys(meta) if any(f in k.lower() for f in FORBIDDEN)]
        geometry = {k: kwargs[k] for k in ("scale", "translate", "rotate", "affine") if k in kwargs}
        if first_geometry is None:
            first_geometry = geometry, data.shape
        else:
            assert (geometry, data.shape) == first_geometry  # the mask overlays the scan


def test_phantom_masks_mark_the_evidence():
    (ct, ct_kw, _), (mask, mask_kw, _) = _sample_data.contrast_phase_ct()
    assert ct.shape == mask.shape == (24, 96, 96)
    assert ct_kw["metadata"]["phase"] == "portal venous"
    assert ct[mask == 1].mean() > 150 and ct[mask == 0].mean() < 0  # enhanced aorta vs air/fat/tissue
    (vessels, _, _), (truth, _, _) = _sample_data.vessel_mra()
    assert vessels[truth == 1].mean() > vessels[truth == 0].mean() + 0.2
    (lesion_ct, kw, _), (lesion, mkw, _) = _sample_data.lesion_ct()  # the demo's phantom (napari-attribution demo)
    assert lesion_ct.shape == lesion.shape == (16, 28, 28) and kw["scale"] == mkw["scale"] == [2.0, 0.8, 0.8]
    assert (kw["name"], mkw["name"]) == ("lesion phantom CT", "lesion mask")
    assert lesion_ct[lesion == 1].mean() > 150  # the enhancing lesion (soft tissue is about 40 HU)


def test_real_scans():
    (mri, kw, _), = _sample_data.real_mri_t1()
    assert mri.shape == (25, 41, 33) and kw["scale"] == [2.0, 2.0, 2.0]
    assert np.asarray(kw["metadata"]["original_affine"]).shape == (4, 4)
    (ct, kw, _), = _sample_data.real_ct_slice()
    assert ct.shape == (128, 128) and -1100 < ct.min() < -800 and ct.max() > 1000  # HU
    assert kw["metadata"]["modality"] == "CT"


def test_no_napari_or_qt_import():
    """Static check (a subprocess import would cost seconds): the module imports neither napari nor Qt."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(_sample_data.__file__).read_text(encoding="utf-8"))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6")]
