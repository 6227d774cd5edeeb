"""Hostile and careless files (issue 11): nothing a file claims may exhaust the machine or block the reader.

Memory cases run in a child process under ``RLIMIT_AS`` (see ``_capped``), never on the real memory; blocking
cases (named pipes) are unblocked by a watchdog, so a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import gzip
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from _capped import run_capped
from _io_helpers import bundled_dicom, write_series

import napari_attribution as na
from napari_attribution._errors import ModelLoadError, ReaderError
from napari_attribution._napari_io import get_reader, read
from napari_attribution.io import ReaderWarning, read_dicom, read_image, read_nifti

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")


def header_only_nifti(path: Path, shape: tuple[int, ...], extra: int = 4) -> None:
    """A NIfTI file holding only its header (plus ``extra`` bytes) while claiming ``shape`` float32 voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    raw = header.binaryblock + b"\0" * extra
    path.write_bytes(gzip.compress(raw) if path.name.endswith((".gz", ".bin")) else raw)


# ---------------------------------------------------------------------------------------------- items 1, 2
# One child process (importing the package takes seconds) reads every file below under a 2 GiB cap; each file
# gets its own alarm, so a reader that loops for ever fails its own test only. "grew" is the peak of the
# memory allocated during the call (tracemalloc traces numpy, zlib and bytearray buffers).
CLAIMS = ("huge.nii.gz", "claim.nii.gz", "claim.nii", "claim.bin")
VOLUMES = (np.arange(128 * 128 * 64 * 16, dtype=np.int32) % 251).astype(np.int16).reshape(128, 128, 64, 16)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    folder = tmp_path_factory.mktemp("hostile")
    # 4-D, 16 volumes of 2 MiB: reading one must not read them all
    nib.save(nib.Nifti1Image(VOLUMES, np.eye(4)), folder / "series4d.nii.gz")
    # the file: a header claiming 2048 x 2048 x 1024 floats (16 GiB), 53 bytes compressed
    header_only_nifti(folder / "huge.nii.gz", (2048, 2048, 1024))
    # 1 GiB claims fit under the cap: the old reader zero-filled them before noticing the truncation
    for name in CLAIMS[1:]:  # claim.bin: sniffed as gzip-compressed NIfTI
        header_only_nifti(folder / name, (512, 512, 1024), extra=1000)
    # 39 KB of DICOM declaring 50 million frames
    dataset = pydicom.dcmread(bundled_dicom("CT_small.dcm"))
    dataset.NumberOfFrames = 50_000_000
    dataset.save_as(folder / "frames.dcm")
    warm_up = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    results = run_capped(
        f"""
        import signal, time
        from pathlib import Path

        def timeout(signum, frame):
            raise TimeoutError("the reader did not return within 10 s")

        signal.signal(signal.SIGALRM, timeout)
        folder = Path({str(folder)!r})
        napari_attribution.io.read_nifti({str(warm_up)!r})
        before = start_peak()
        volume, _, meta = napari_attribution.io.read_nifti(folder / "series4d.nii.gz", volume=5)
        emit(name="series4d.nii.gz", grew=grown_mib(before), shape=list(volume.shape),
             checksum=int(volume.astype(np.int64).sum()), volume=meta["volume"])
        for name in {CLAIMS + ("frames.dcm",)!r}:
            before, start = start_peak(), time.perf_counter()
            signal.alarm(10)
            try:
                napari_attribution.io.read_image(folder / name)
                outcome, message = "read", ""
            except ReaderError as exc:
                outcome, message = "ReaderError", str(exc)
            except BaseException as exc:
                outcome, message = type(exc).__name__, str(exc)
            finally:
                signal.alarm(0)
            emit(name=name, outcome=outcome, message=message, grew=grown_mib(before),
                 seconds=time.perf_counter() - start)
        """,
        timeout=90,
    )
    return {str(r["name"]): r for r in results}


def test_nifti_claiming_more_than_it_holds_is_refused_before_any_allocation(
    capped: dict[str, dict[str, object]],
) -> None:
    """One ReaderError each, naming the file, and the process grows by a few MiB at most."""
    for name in CLAIMS:
        result = capped[name]
        assert result["outcome"] == "ReaderError", result
        assert f"'{name}'" in str(result["message"])
        assert float(result["grew"]) < 64, result  # MiB: nothing of the claimed 1 GiB / 16 GiB was allocated
    huge = str(capped["huge.nii.gz"]["message"])
    assert "16 GiB" in huge and "memory available" in huge
    for name in CLAIMS[1:]:
        message = str(capped[name]["message"])
        assert "truncated" in message and "1 GiB" in message, message


def test_one_volume_of_a_compressed_4d_nifti_is_read_alone(capped: dict[str, dict[str, object]]) -> None:
    """volume=k reads that volume through nibabel's array proxy, not the whole 4-D file (32 MiB of voxels)."""
    result = capped["series4d.nii.gz"]
    assert result["shape"] == [64, 128, 128] and result["volume"] == 5
    assert result["checksum"] == int(VOLUMES[..., 5].astype(np.int64).sum())
    assert float(result["grew"]) < 16, result  # MiB


def test_dicom_claiming_fifty_million_frames_is_refused_at_once(capped: dict[str, dict[str, object]]) -> None:
    """A 39 KB file with NumberOfFrames=5e7: the old reader built frame records until it was killed."""
    result = capped["frames.dcm"]
    assert result["outcome"] == "ReaderError", result
    assert float(result["seconds"]) < 5
    assert "'frames.dcm'" in str(result["message"]) and "50000000 frame(s)" in str(result["message"])


def test_nifti_scaling_beyond_float32_is_refused(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    image.header.set_slope_inter(1e38, 0.0)
    nib.save(image, tmp_path / "scaled.nii")
    with pytest.raises(ReaderError, match=r"'scaled.nii'.*too large"):
        read_nifti(tmp_path / "scaled.nii")


def test_dicom_in_a_folder_declaring_more_pixels_than_it_holds_is_skipped(tmp_path: Path, ct_small: Path) -> None:
    series = write_series(tmp_path / "s", positions=[0.0, 2.5, 5.0])
    dataset = pydicom.dcmread(ct_small)
    dataset.Rows = 4096  # 4096 x 128 x 16 bit declared, 128 x 128 held
    dataset.save_as(series.folder / "liar.dcm")
    with pytest.warns(ReaderWarning, match="liar.dcm"):
        data, _, _ = read_dicom(series.folder)
    assert data.shape == (3, 128, 128)


def test_dicom_volume_larger_than_the_memory_available_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consistent series that cannot fit: refused before any slice is decoded (here the memory available is a
    pretended 300 KiB; the float32 volume of six 128 x 128 slices needs 384 KiB)."""
    from napari_attribution.io import _limits

    series = write_series(tmp_path / "s")
    monkeypatch.setattr(_limits, "available_memory", lambda: 300 * 1024, raising=False)
    decoded: list[str] = []
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(lambda ds: decoded.append("x") or np.zeros(1)))
    expected = r"series \(6 files, first 'img0001.dcm'\) declares 6 frame\(s\) of \(128, 128\) pixels of 384 KiB, more"
    with pytest.raises(ReaderError, match=expected):
        read_dicom(series.folder)
    assert decoded == []


def deflated_ct(path: Path, padding: int) -> None:
    """CT_small.dcm in Deflated Explicit VR Little Endian, with ``padding`` zero bytes in a private element."""
    dataset = pydicom.dcmread(bundled_dicom("CT_small.dcm"))
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    dataset.private_block(0x0009, "napari-attribution test", create=True).add_new(0x10, "OB", b"\0" * padding)
    dataset.save_as(path, enforce_file_format=True)


def test_deflated_dicom_that_inflates_beyond_memory_is_refused_before_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydicom inflates a deflated dataset in one call: a 65 KB file holding 40 MiB of zeros here, and a few MB
    could hold many GiB. The reader counts the inflated size first, against the memory available (here a
    pretended 64 MiB, so nothing large is allocated)."""
    from napari_attribution.io import _dicom

    deflated_ct(tmp_path / "bomb.dcm", 40 * 2**20)
    deflated_ct(tmp_path / "small.dcm", 1000)
    assert (tmp_path / "bomb.dcm").stat().st_size < 100_000
    monkeypatch.setattr(_dicom, "available_memory", lambda: 64 * 2**20, raising=False)
    with pytest.raises(ReaderError, match=r"'bomb.dcm' is a deflated DICOM file whose content inflates to more"):
        read_dicom(tmp_path / "bomb.dcm")
    data, _, _ = read_dicom(tmp_path / "small.dcm")  # an ordinary deflated file still reads
    assert data.shape == (128, 128)
    (tmp_path / "study").mkdir()
    write_series(tmp_path / "study", positions=[0.0, 2.5])
    (tmp_path / "study" / "bomb.dcm").write_bytes((tmp_path / "bomb.dcm").read_bytes())
    with pytest.warns(ReaderWarning, match="bomb.dcm"):  # in a folder: skipped with the unreadable files
        data, _, _ = read_dicom(tmp_path / "study")
    assert data.shape == (2, 128, 128)


# ---------------------------------------------------------------------------------------------- item 3: pipes
@contextmanager
def watchdog(fifo: Path, seconds: float = 5.0) -> Iterator[threading.Event]:
    """Opens the pipe's write end after ``seconds`` (which releases a reader blocked on it); sets the event then."""
    fired = threading.Event()

    def release() -> None:
        fired.set()
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader is waiting
            pass

    timer = threading.Timer(seconds, release)
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
        timer.join()


@needs_fifo
def test_named_pipe_in_a_dicom_folder_is_skipped_by_get_reader_and_read(tmp_path: Path, ct_small: Path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "zz_ct.dcm").write_bytes(ct_small.read_bytes())
    fifo = folder / "aa.dcm"  # sorted first: get_reader's probe used to open it and block for ever
    os.mkfifo(fifo)
    with watchdog(fifo) as fired:
        reader = get_reader(str(folder))
        assert not fired.is_set(), "get_reader blocked on the named pipe"
        assert reader is read
        with pytest.warns(ReaderWarning, match="1 item.*not regular files"):
            layers = read(str(folder))
        assert not fired.is_set(), "read blocked on the named pipe"
    assert layers[0][0].shape == (128, 128)
    assert "not regular files" in layers[0][1]["metadata"]["warnings"][0]


@needs_fifo
def test_named_pipe_as_the_path_is_refused_without_blocking(tmp_path: Path) -> None:
    for name in ("scan.nii.gz", "scan.dcm", "scan.bin"):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        with watchdog(fifo) as fired:
            assert get_reader(str(fifo)) is None
            with pytest.raises(ReaderError, match=f"'{name}' is not a regular file"):
                read_image(fifo)
            with pytest.raises(ReaderError, match="not a regular file"):
                (read_nifti if name.endswith(".gz") else read_dicom)(fifo)
            assert not fired.is_set(), name


@needs_fifo
def test_load_model_on_a_named_pipe_fails_fast(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with watchdog(fifo) as fired:
        with pytest.raises(ModelLoadError, match="not a regular file"):
            na.load_model(fifo)
        assert not fired.is_set()


# ---------------------------------------------------------------------------------------------- item 4: rescale
@pytest.mark.parametrize("slope", ["1e36", "1e308", "-3e38"])
def test_dicom_rescale_overflow_is_an_error_not_inf(tmp_path: Path, ct_small: Path, slope: str) -> None:
    dataset = pydicom.dcmread(ct_small)
    dataset.RescaleSlope = slope
    dataset.save_as(tmp_path / "overflow.dcm")
    with pytest.raises(ReaderError, match=r"'overflow.dcm'.*RescaleSlope.*too large"):
        read_dicom(tmp_path / "overflow.dcm")


def test_dicom_rescale_slope_that_is_not_a_number(tmp_path: Path, ct_small: Path) -> None:
    dataset = pydicom.dcmread(ct_small)
    dataset.RescaleSlope = "7.123456"
    dataset.save_as(tmp_path / "text.dcm")
    raw = (tmp_path / "text.dcm").read_bytes()
    (tmp_path / "text.dcm").write_bytes(raw.replace(b"7.123456", b"DoeJohn "))  # DS holding text
    with pytest.raises(ReaderError, match="'text.dcm' has a RescaleSlope that is not a finite number") as info:
        read_dicom(tmp_path / "text.dcm")
    assert "DoeJohn" not in str(info.value)


def test_large_but_finite_rescale_still_reads(tmp_path: Path, ct_small: Path) -> None:
    dataset = pydicom.dcmread(ct_small)
    dataset.RescaleSlope = "1e30"
    dataset.save_as(tmp_path / "big.dcm")
    data, _, meta = read_dicom(tmp_path / "big.dcm")
    assert data.dtype == np.float32 and np.all(np.isfinite(data)) and meta["rescale_slope"] == 1e30


# ---------------------------------------------------------------------------------------------- item 5: free text
SECRET = "Doe^Jane"


def test_free_text_dicom_fields_reach_neither_metadata_nor_warnings(tmp_path: Path) -> None:
    """SeriesDescription and other free text can hold patient names: not in the reader's metadata, its warnings,
    its errors, or the napari layer's metadata (coded fields holding text become "other")."""
    study = tmp_path / "study"
    write_series(study / "a", description=f"{SECRET} head")
    write_series(study / "b", positions=[0.0, 3.0], series_number=8, description=f"{SECRET} scout", prefix="b")
    for file in (study / "a").iterdir():
        dataset = pydicom.dcmread(file)
        dataset.RescaleType = SECRET
        dataset.Modality = "DOEJANE"
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.save_as(file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data, _, meta = read_dicom(study)
        layers = read(str(study))
    texts = [str(w.message) for w in caught] + [repr(meta), repr(layers[0][1])]
    assert any("Mixed series" in t for t in texts)
    for text in texts:
        assert "Doe" not in text and "DOE" not in text, text
    assert meta["rescale_type"] == "other" and meta["modality"] == "other" and meta["units"] == "other"
    assert meta["photometric_interpretation"] == "MONOCHROME2" and data.shape[0] == 6
    with pytest.raises(ReaderError) as info:
        read_dicom(study, series=99)
    assert "Doe" not in str(info.value) and "series 7" in str(info.value)


def test_real_files_keep_their_defined_terms(ct_small: Path) -> None:
    _, _, meta = read_dicom(ct_small)
    assert meta["modality"] == "CT" and meta["photometric_interpretation"] == "MONOCHROME2"
    assert "series_description" not in meta
    _, _, rgb = read_dicom(bundled_dicom("SC_rgb_small_odd.dcm"))
    assert rgb["photometric_interpretation"] == "RGB" and rgb["modality"] == "OT"


def test_pydicom_warnings_that_quote_values_are_counted_not_shown(tmp_path: Path, ct_small: Path) -> None:
    """pydicom warns "Invalid value for VR UI: '<the value>'": with a name in a UID field, that warning would
    show the name. The reader replays other warnings and counts pydicom's in one ReaderWarning."""
    dataset = pydicom.dcmread(ct_small)
    dataset.SeriesInstanceUID = "1.2.3.4.5.6.7.8"
    (tmp_path / "study").mkdir()
    dataset.save_as(tmp_path / "study" / "a.dcm")
    raw = (tmp_path / "study" / "a.dcm").read_bytes()
    (tmp_path / "study" / "a.dcm").write_bytes(raw.replace(b"1.2.3.4.5.6.7.8\0", b"Doe^Jane Smith  "))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data, _, meta = read_dicom(tmp_path / "study")
    texts = [str(w.message) for w in caught]
    assert data.shape == (128, 128)
    assert texts == meta["warnings"] and len(texts) == 1 and "pydicom reported 1 problem" in texts[0]
    assert all(issubclass(w.category, ReaderWarning) for w in caught)
