"""The ``napari-attribution`` command line.

::

    napari-attribution methods                   # the registry: family, layer need, sign, cost
    napari-attribution methods evidence          # one method's parameters, defaults and choices
    napari-attribution demo --headless -o OUT    # explain a synthetic CT phantom, write aligned NIfTI heatmaps
    napari-attribution demo                      # napari with the Explain dock, the phantom and the demo model
    napari-attribution explain --model M --image SCAN --method NAME [--target T] [--layer L ...]
                               [--param key=value ...] [--metric NAME ...] -o OUT.nii.gz
    napari-attribution batch --model M --images DIR|GLOB|LIST.csv --method NAME [...] -o OUTDIR
                             [--scheduler ADDRESS | --workers N | --local]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _describe(name: str) -> int:
    """One method: what it computes, its paper and cost, and each parameter with its default and choices."""
    import inspect
    import json

    import napari_attribution as na

    from .methods._registry import COMMON_PARAMS

    try:
        m = na.get_method(name)
    except na.MethodError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{m.name}: {m.label}")
    print(f"  family {m.family}; layer {'required' if m.needs_layer else ('optional' if m.layer_optional else 'no')}; "
          f"{'signed' if m.signed else 'unsigned'}; cost {m.passes}")
    print(f"  paper: {m.paper}")
    print("  parameters (--param key=value, value as JSON):")
    for key, default in {**m.params, **COMMON_PARAMS}.items():
        if key == "*":
            continue
        listed, other = m.choice_list(key)
        choices = ""
        if key in m.choices:
            choices = "; one of " + ", ".join(json.dumps(v) for v in listed) + (", or another value" if other else "")
        print(f"    {key} = {json.dumps(default)}{choices}")
    doc = inspect.getdoc(m.fn) if m.fn is not None else None
    if doc:
        print()
        print("\n".join("  " + line for line in doc.split("\n\n")[0].splitlines()))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    import napari_attribution as na

    if args.name:
        return _describe(args.name)
    rows = [("name", "family", "layer", "signed", "passes", "what it computes")]
    for m in na.list_methods():
        rows.append((m.name, m.family, "yes" if m.needs_layer else "-", "yes" if m.signed else "-", m.passes, m.label))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    print("\nAlso: captum:<ClassName> for any captum.attr primary or layer attribution class.")
    print("`napari-attribution methods NAME` lists one method's parameters, defaults and choices.")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_headless_demo

    if not args.headless:
        try:  # the viewer lives in _widget/ (the only package that imports napari / Qt)
            from ._widget._launch import run_demo
        except ImportError as err:
            print(f"napari is not installed here ({err}), so the demo runs headless (pip install "
                  "'napari-attribution[napari]' for the viewer).", file=sys.stderr)
        else:
            run_demo()
            return 0
    try:
        run_headless_demo(args.output, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"error: {err} On the command line: --overwrite, or another folder with -o.", file=sys.stderr)
        return 2
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from ._cli_run import explain_file, parse_params
    from ._progress import ProgressLine

    # progress with the elapsed time and an ETA, per stage (each method, then each metric), on stderr
    line = None if args.quiet else ProgressLine(sys.stderr)
    try:
        res = explain_file(args.model, args.image, args.method, args.output, target=args.target, layer=args.layer,
                           params=parse_params(args.param), metrics=args.metric or (), overwrite=args.overwrite,
                           device=args.device, trust=args.trust, progress=line)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if line is not None:
            line.finish()
    for m, path in res.outputs.items():
        extra = "  ".join(f"{k}={v:.4g}" if v is not None else f"{k}=failed"  # a failed metric: an empty cell
                          for k, v in res.metrics.get(m, {}).items())
        print(f"{m}: {path}  ({res.seconds[m]:.2f} s; {res.description}) {extra}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from ._cli_run import parse_params, run_batch
    from ._progress import ProgressLine

    # a line per finished scan with the batch's elapsed time and ETA; with --local also each scan's own progress
    line = None if args.quiet else ProgressLine(sys.stderr)
    try:
        results = run_batch(args.model, args.images, args.method, args.output, scheduler=args.scheduler,
                            workers=args.workers, local=args.local, target=args.target, layer=args.layer,
                            params=parse_params(args.param), metrics=args.metric or (), overwrite=args.overwrite,
                            device=args.device, trust=args.trust,
                            log=(lambda m: None) if line is None else line.log, scan_progress=line)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if line is not None:
            line.finish()
    return 0 if all(r["status"] == "ok" for r in results) else 1


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model file (TorchScript, checkpoint + card), a card, a MONAI "
                   "bundle folder, or demo:<name>")
    p.add_argument("--method", required=True, action="append", help="a method name (repeat for several)")
    p.add_argument("--target", help="3, predicted:1, region:1:MASK.nii.gz, voxel:1:z,y,x, contrast:1,2, "
                   "error:1:TRUTH.nii.gz:fp (default: the predicted class or region)")
    p.add_argument("--layer", action="append", help="dotted layer name for layer methods; repeat it to sweep "
                   "several layers (one heatmap per layer and a <output>_layers.csv table)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a method parameter; VALUE is JSON")
    p.add_argument("--metric", action="append", help="add a metrics CSV (e.g. deletion, insertion, infidelity)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--trust", action="store_true", help="allow pickled full-model files (they can run code)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="napari-attribution", description=__doc__.split("\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("methods", help="list the attribution methods (or one, with its parameters)")
    p.add_argument("name", nargs="?", help="a method name: its parameters, defaults and choices")
    p.set_defaults(func=_cmd_methods)
    p = sub.add_parser("demo", help="explain a synthetic CT phantom with a small 3D CNN")
    p.add_argument("--headless", action="store_true", help="no viewer: write NIfTI heatmaps and a PNG")
    p.add_argument("-o", "--output", default="napari-attribution-demo", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("explain", help="explain one scan; write an aligned NIfTI heatmap")
    _add_run_options(p)
    p.add_argument("--image", required=True, help="NIfTI file, DICOM file or series folder, or .npy")
    p.add_argument("-o", "--output", required=True, help="output heatmap (.nii.gz or .npy)")
    p.set_defaults(func=_cmd_explain)
    p = sub.add_parser("batch", help="explain a cohort (Dask: local cluster by default)")
    _add_run_options(p)
    p.add_argument("--images", required=True, help="a folder, a glob or a CSV list of scans")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--scheduler", help="address of a running Dask scheduler")
    p.add_argument("--workers", type=int, help="local Dask workers (default: one per core)")
    p.add_argument("--local", action="store_true", help="no Dask: one scan after the other in this process")
    p.set_defaults(func=_cmd_batch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-attribution`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # one clear line instead of a traceback for the library's own errors
        from ._errors import AttributionError

        if isinstance(err, AttributionError):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
