"""What a heatmap's sidecar records about the model and the scan (Qt-free, no napari import).

One place for the facts that the CLI's sidecar and the napari writer's sidecar share:

* the weights: the sha256 of the weights file actually read (not of a card file; None for weights made in memory
  or asked for as ``"weights": "random"``), whether the network is untrained on purpose, and the card in effect;
* the scan: its file name only, never its folder (folder names often hold patient names), and the sha256 of its
  bytes (for a DICOM series folder, of its files in name order).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["RANDOM_WEIGHTS_LABEL", "file_sha256", "model_fields", "scan_fields", "scan_fields_from_metadata",
           "scan_sha256", "weights_label"]

#: The words every output uses for a network that was built without trained weights.
RANDOM_WEIGHTS_LABEL = "random weights"


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (read in chunks, so a large checkpoint is not held in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, _size: int, _mtime_ns: int) -> str:
    """A scan explained with several methods is hashed once (the key changes when the file does)."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    # a DICOM series folder: each file's relative name and hash, in name order, so that the same series copied
    # elsewhere gives the same hash and a changed, added or removed file gives another
    h = hashlib.sha256()
    for f in sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.relative_to(p).as_posix()):
        h.update(f.relative_to(p).as_posix().encode("utf-8") + b"\0" + bytes.fromhex(file_sha256(f)))
    return h.hexdigest()


def scan_sha256(path: str | os.PathLike[str]) -> str | None:
    """sha256 of a scan file, or of a DICOM series folder's files (names relative to the folder, in order); None
    when the path is neither."""
    p = Path(path)
    if not p.exists():
        return None
    stat = p.stat()
    return _cached_sha256(str(p.resolve()), stat.st_size, stat.st_mtime_ns)


def scan_fields(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"scan": <file name only>, "scan_sha256": ...}`` for a sidecar: the folder is never recorded."""
    return {"scan": Path(path).name, "scan_sha256": scan_sha256(path)}


def model_fields(model: Any) -> dict[str, Any]:
    """``{"weights_sha256", "random_weights", "card"}`` of a ``LoadedModel`` (or a plain module: no hash, no card).

    ``weights_sha256`` is the hash of the weights file that was read (``LoadedModel.weights_sha256``), and
    ``card`` the card in effect as a dict.
    """
    card = getattr(model, "card", None)
    random = bool(getattr(card, "random_weights", False))
    out: dict[str, Any] = {"weights_sha256": getattr(model, "weights_sha256", None), "random_weights": random}
    if random:
        out["weights"] = RANDOM_WEIGHTS_LABEL
    out["card"] = card.to_dict() if card is not None and hasattr(card, "to_dict") else None
    return out


def weights_label(model: Any) -> str:
    """One cell for a summary table: ``"random weights"``, else the sha256 of the weights read (or "")."""
    if bool(getattr(getattr(model, "card", None), "random_weights", False)):
        return RANDOM_WEIGHTS_LABEL
    return str(getattr(model, "weights_sha256", None) or "")


def scan_fields_from_metadata(metadata: Any) -> dict[str, Any]:
    """The scan fields of a napari image layer opened by this plugin's reader (its metadata's ``source_file`` and
    ``source_sha256``); empty for a layer from elsewhere (nothing is guessed)."""
    if not hasattr(metadata, "get") or not metadata.get("source_file"):
        return {}
    return {"scan": Path(str(metadata["source_file"])).name, "scan_sha256": metadata.get("source_sha256")}
