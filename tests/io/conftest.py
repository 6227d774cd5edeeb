"""Fixtures for the io tests: files that ship inside the nibabel and pydicom wheels."""

from __future__ import annotations

from pathlib import Path

import pytest
from _io_helpers import NIBABEL_DATA, bundled_dicom


@pytest.fixture
def ct_small() -> Path:
    return bundled_dicom("CT_small.dcm")


@pytest.fixture
def mr_small() -> Path:
    return bundled_dicom("MR_small.dcm")


@pytest.fixture
def anatomical() -> Path:
    return NIBABEL_DATA / "anatomical.nii"


@pytest.fixture
def example4d() -> Path:
    return NIBABEL_DATA / "example4d.nii.gz"
