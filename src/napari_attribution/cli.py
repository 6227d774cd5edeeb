"""The ``napari-attribution`` command line.

::

    napari-attribution methods                   # the registry: family, layer need, sign, cost
    napari-attribution demo --headless -o OUT    # explain a synthetic CT phantom, write aligned NIfTI heatmaps
    napari-attribution demo                      # the same, opened in napari when the plugin's GUI is installed
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_methods(args: argparse.Namespace) -> int:
    import napari_attribution as na

    rows = [("name", "family", "layer", "signed", "passes", "what it computes")]
    for m in na.list_methods():
        rows.append((m.name, m.family, "yes" if m.needs_layer else "-", "yes" if m.signed else "-", m.passes, m.label))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    print("\nAlso: captum:<ClassName> for any captum.attr primary or layer attribution class.")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_headless_demo

    if not args.headless:
        try:
            import napari  # noqa: F401
        except ImportError:
            print("napari is not installed here, so the demo runs headless (pip install 'napari-attribution[napari]' "
                  "for the viewer).", file=sys.stderr)
        else:
            print("The napari widgets arrive with the plugin GUI; running the headless demo.", file=sys.stderr)
    try:
        run_headless_demo(args.output, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"error: {err} On the command line: --overwrite, or another folder with -o.", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="napari-attribution", description=__doc__.split("\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("methods", help="list the attribution methods")
    p.set_defaults(func=_cmd_methods)
    p = sub.add_parser("demo", help="explain a synthetic CT phantom with a small 3D CNN")
    p.add_argument("--headless", action="store_true", help="no viewer: write NIfTI heatmaps and a PNG")
    p.add_argument("-o", "--output", default="napari-attribution-demo", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_cmd_demo)
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
