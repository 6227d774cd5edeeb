"""Fuzz: mutated NIfTI / DICOM files give a valid image or one ReaderError, never anything else (issue 11).

A fixed-seed set of 54 cases (24 NIfTI, 24 DICOM files, 6 DICOM series folders) made from the real files in the
nibabel and pydicom wheels, read in a child process under a 2 GiB memory cap with a 10 s alarm per case (see
``_fuzz``). The large run is ``benchmarks/fuzz_readers.py``. On the readers before issue 11 this set gave three
raw exceptions (a DSfloat ``len()``, a missing ``Columns``, an unknown VR) and one image with NaN values
from integer voxels.
"""

from __future__ import annotations

import json
from pathlib import Path

from _capped import capped_available
from _fuzz import FAILURES, make_corpus, run_cases, summarise


def test_mutated_files_give_an_image_or_a_reader_error(tmp_path: Path) -> None:
    capped_available()
    cases = make_corpus(tmp_path, n_nifti=24, n_dicom=24, n_folders=6, seed=0)
    results = run_cases(cases, extra_gib=2.0, timeout=10)
    failures = [r for r in results if r["outcome"] in FAILURES]
    assert not failures, "\n".join(json.dumps(r) for r in failures)
    # pydicom may warn about a malformed file; the readers' own arithmetic must not (no overflow warnings)
    own = [r for r in results if any(w.startswith("napari_attribution:") for w in r["warnings"])]
    assert not own, "\n".join(json.dumps(r) for r in own)
    counts = summarise(results)
    assert sum(counts.values()) == 54
    # the set exercises both paths: files that still read, and files that must be refused
    assert counts.get("image", 0) >= 10 and counts.get("reader_error", 0) >= 10, counts
    refused = {Path(r["file"]).suffix or "folder" for r in results if r["outcome"] == "reader_error"}
    assert {".nii", ".gz", ".dcm"} <= refused, refused
