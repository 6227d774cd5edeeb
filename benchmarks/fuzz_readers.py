#!/usr/bin/env python
"""Fuzz the scan readers: a few hundred mutated NIfTI / DICOM files must each give a valid image or one ReaderError.

Run it with::

    .venv/bin/python benchmarks/fuzz_readers.py                 # 300 NIfTI + 300 DICOM files + 60 series folders
    .venv/bin/python benchmarks/fuzz_readers.py --seed 7 --nifti 1000 --dicom 1000 --folders 200

The mutations (truncations, header fields at extremes, bit flips, transfer syntaxes that do not match the data,
pixel data cut short, named pipes in series folders) are made from the real files in the installed nibabel and
pydicom wheels by ``tests/io/_fuzz.py``, which the suite's ``tests/io/test_io_fuzz.py`` runs on a small fixed set.
Every file is read by ``napari_attribution.io.read_image`` in a child process whose address space is capped
(``RLIMIT_AS``: its resting size plus ``--extra-gib``) with a per-file alarm (``--timeout``); a child that dies is
replaced and its file counted as a crash. Linux only (``RLIMIT_AS``, ``/proc``).

Printed: counts per outcome (``image``, ``reader_error``; failures: ``other_error``, ``invalid_image``, ``timeout``,
``crash``), the same per seed file and per kind of mutation, the slowest files, the warnings other than
``ReaderWarning`` by the package that raised them (pydicom's own are reported; one raised by napari_attribution
itself is a failure), and every failure with how to reproduce it. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "io"))

from _fuzz import FAILURES, make_corpus, run_cases, summarise  # noqa: E402  (the mutators live with the tests)


def _kind(mutation: str) -> str:
    """A short label for the first mutation step: ``dim``, ``truncate``, ``flip``, ``NumberOfFrames``, ..."""
    first = mutation.split(";")[0].strip()
    match = re.match(r"(slice\d: )?([A-Za-z_ ]+?)(\[|=| at | \d| to |$)", first)
    return (match.group(2) if match else first).strip() or "other"


def _table(title: str, counter: dict[str, collections.Counter[str]]) -> None:
    print(f"\n{title}")
    outcomes = ("image", "reader_error", *FAILURES)
    print(f"  {'':34s}" + "".join(f"{o:>14s}" for o in outcomes))
    for key in sorted(counter):
        print(f"  {key[:34]:34s}" + "".join(f"{counter[key].get(o, 0):14d}" for o in outcomes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nifti", type=int, default=300, help="mutated NIfTI files (default 300)")
    parser.add_argument("--dicom", type=int, default=300, help="mutated DICOM files (default 300)")
    parser.add_argument("--folders", type=int, default=60, help="DICOM series folders with mutated slices")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (the suite uses 0)")
    parser.add_argument("--timeout", type=int, default=20, help="seconds per file before it counts as a hang")
    parser.add_argument("--extra-gib", type=float, default=2.0, help="memory cap over the reader's resting size")
    parser.add_argument("--keep", type=Path, default=None, help="write the corpus here and keep it")
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("fuzz_readers.py needs Linux (RLIMIT_AS and /proc).")
        return 2

    with tempfile.TemporaryDirectory(prefix="fuzz-readers-") as scratch:
        folder = args.keep or Path(scratch)
        start = time.perf_counter()
        cases = make_corpus(folder, args.nifti, args.dicom, args.folders, seed=args.seed)
        made = time.perf_counter() - start
        start = time.perf_counter()
        results = run_cases(cases, extra_gib=args.extra_gib, timeout=args.timeout)
        ran = time.perf_counter() - start

    counts = summarise(results)
    failures = [r for r in results if r["outcome"] in FAILURES]
    print(f"fuzz_readers: seed {args.seed}, {len(results)} cases ({args.nifti} NIfTI, {args.dicom} DICOM, "
          f"{args.folders} series folders), cap {args.extra_gib:g} GiB over the resting size, "
          f"{args.timeout} s per file")
    print(f"made in {made:.1f} s, read in {ran:.1f} s")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; failures {len(failures)}")

    by_seed: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in results:
        by_seed[r["seed"]][r["outcome"]] += 1
        by_kind[_kind(r["mutation"])][r["outcome"]] += 1
    _table("per seed file", by_seed)
    _table("per kind of (first) mutation", by_kind)

    timed = sorted((r for r in results if r.get("seconds") is not None), key=lambda r: -r["seconds"])[:5]
    print("\nslowest files: " + ", ".join(f"{r['file']} {r['seconds']:.2f} s ({r['outcome']})" for r in timed))
    foreign: collections.Counter[str] = collections.Counter()
    for r in results:
        foreign.update(re.sub(r"\d+", "N", w)[:110] for w in r["warnings"])
    own = [r for r in results if any(w.startswith("napari_attribution:") for w in r["warnings"])]
    print(f"warnings other than ReaderWarning: {sum(foreign.values())} in {sum(1 for r in results if r['warnings'])} "
          f"files, {len(own)} of them from napari_attribution itself (a failure: the suite turns them into errors)")
    for text, n in foreign.most_common(8):
        print(f"  {n:4d}  {text}")
    failures += [dict(r, outcome="own_warning", detail="; ".join(r["warnings"])) for r in own]

    if failures:
        print("\nFAILURES (reproduce: tests/io/_fuzz.make_corpus with the same seed and sizes, then read the case):")
        for r in failures:
            print("  " + json.dumps({k: r[k] for k in ("file", "seed", "mutation", "outcome", "detail")}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
