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
import re
import shutil
import sys
import textwrap
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["cli_words", "main"]

# --- the library's Python spellings, said in the command line's own syntax -------------------------------------
# The library's messages are written for Python callers ("Use Region(k, mask)", "pass trust=True"); on the command
# line the same advice must be an option a user can type. This is the one place that translates them.

_CALL = r"\((?:[^()]|\([^()]*\))*\)"  # a call's parentheses, with one level of nested ones: Voxel(1, (4, 6, 6))
_TARGET_CALL = re.compile(r"\b(Class|Predicted|Region|Voxel|Contrast|ErrorRegion)(" + _CALL + ")")
_CLI_PHRASES: list[tuple[re.Pattern[str], Any]] = [
    # "Use Predicted(0) (command line: --target predicted:0)": the library already gave the command-line form
    (re.compile(r"\b[A-Z]\w*" + _CALL + r" \(command line: ([^()]*)\)"), r"\1"),
    (re.compile(r"\ba class index, Class\(k\) or\b"), "a class index (--target k) or"),
    (re.compile(r"\b(Region|Voxel|Predicted|Contrast|ErrorRegion) targets\b"),
     lambda m: f"Targets such as {_target_option(m.group(1), '(k1, k2)' if m.group(1) == 'Contrast' else '(k)')}"),
    (re.compile(r"\bload_model\(\.\.\., trust=True\)"), "--trust"),
    (re.compile(r"\btrust=True\b"), "--trust"),
    (re.compile(r"\boverwrite=True\b"), "--overwrite"),
    (re.compile(r"\ballow_modules=\[\s*['\"]([\w.]+)['\"]\s*\]"), r"--allow-module \1"),
    (re.compile(r"\ballow_modules=(\[[^\]]*\]|\.\.\.)?"), "--allow-module NAME"),
    (re.compile(r"\bpass layer=(?=[\s.,;)]|$)"), "pass --layer"),
    (re.compile(r"\bpass a LoadedModel with a ModelCard\b"), "give the model a card file (MODEL.card.json beside "
     "it, naming spatial_dims and in_channels)"),
    (re.compile(r"\bpass card=\{\.\.\.\}"), "pass the card file as --model"),
]
_QUOTES = "'\""
_PARAMS = re.compile(r"\bparams=\{\s*(['\"])(\w+)\1\s*:\s*((?:[^{}]|\{[^{}]*\})*?)\s*\}")


def _split_args(text: str) -> list[str]:
    """The top-level comma-separated arguments of a call's text (without its parentheses)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [a for a in [*out, cur.strip()] if a]


def _target_option(name: str, call: str) -> str:
    """``Voxel(1, (4, 6, 6))`` -> ``--target voxel:1:4,6,6``; ``Region(k, mask)`` -> ``--target
    region:k:MASK.nii.gz``; ``Class(k)`` -> ``--target k``; ..."""
    args = _split_args(call[1:-1])
    named = {a.split("=", 1)[0].strip(): a.split("=", 1)[1].strip().strip("'\"") for a in args if "=" in a}
    pos = [a for a in args if "=" not in a]
    k = pos[0] if pos else "k"
    if name == "Class":
        score = named.get("score")
        return f"--target class:{k}:{score}" if score in ("logit", "probability") else f"--target {k}"
    if name == "Predicted":
        return f"--target predicted:{k}"
    if name == "Region":
        return f"--target region:{k}:MASK.nii.gz"
    if name == "Voxel":
        index = pos[1] if len(pos) > 1 else "index"
        numbers = re.fullmatch(r"\(?\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*,?\s*\)?", index)
        where = "".join(numbers.group(1).split()) if numbers else "z,y,x"
        return f"--target voxel:{k}:{where}"
    if name == "Contrast":
        k2 = pos[1] if len(pos) > 1 else "k2"
        mask = ":MASK.nii.gz" if "mask" in named or len(pos) > 2 else ""
        return f"--target contrast:{k},{k2}{mask}"
    kind = "fn" if "fn" in (named.get("kind"), *(p.strip("'\"") for p in pos[2:])) else "fp"
    return f"--target error:{k}:TRUTH.nii.gz:{kind}"  # ErrorRegion


def cli_words(message: str) -> str:
    """``message`` (the library's words for Python callers) with its Python spellings replaced by command-line
    syntax: targets as ``--target`` values, keyword arguments as options.

    Examples
    --------
    >>> cli_words("Use a class index, Class(k) or Contrast(k1, k2).")
    'Use a class index (--target k) or --target contrast:k1,k2.'
    >>> cli_words("Pick a region (Region(k, mask)) or a voxel (Voxel(k, index)) instead.")
    'Pick a region (--target region:k:MASK.nii.gz) or a voxel (--target voxel:k:z,y,x) instead.'
    >>> cli_words("Use Predicted(0) (command line: --target predicted:0).")
    'Use --target predicted:0.'
    >>> cli_words("pass params={'features': 'model.vebi.npz'}; load it with load_model(..., trust=True)")
    'pass --param features=model.vebi.npz; load it with --trust'
    """
    for pattern, repl in _CLI_PHRASES:
        message = pattern.sub(repl, message)
    message = _TARGET_CALL.sub(lambda m: _target_option(m.group(1), m.group(2)), message)
    return _PARAMS.sub(lambda m: f"--param {m.group(2)}={m.group(3).strip(_QUOTES)}", message)



def _width() -> int:
    """Columns for tables and wrapped text: the terminal's, at most 100 (and at least 60)."""
    return max(60, min(100, shutil.get_terminal_size((100, 24)).columns))


def _wrap(text: str, indent: str = "", more: str = "    ", width: int | None = None) -> str:
    """``text`` wrapped to the table width; continuation lines indented by ``indent + more``."""
    return textwrap.fill(text, width or _width(), initial_indent=indent, subsequent_indent=indent + more,
                         break_long_words=False, break_on_hyphens=False)


def _describe(name: str) -> int:
    """One method: what it computes, its paper and cost, and each parameter with its default and choices (the full
    text of its row in ``methods``)."""
    import inspect
    import json

    import napari_attribution as na

    from .methods._registry import COMMON_PARAMS

    try:
        m = na.get_method(name)
    except na.MethodError as err:
        print(f"error: {cli_words(str(err))}", file=sys.stderr)
        return 2
    print(_wrap(f"{m.name}: {m.label}"))
    layer = "required" if m.needs_layer else ("optional" if m.layer_optional else "no")
    print(_wrap(f"family {m.family}; layer {layer}; {'signed' if m.signed else 'unsigned'}; cost {m.passes}", "  "))
    print(_wrap(f"paper: {m.paper}", "  "))
    print("  parameters (--param key=value, value as JSON):")
    for key, default in {**m.params, **COMMON_PARAMS}.items():
        if key == "*":
            continue
        listed, other = m.choice_list(key)
        choices = ""
        if key in m.choices:
            choices = "; one of " + ", ".join(json.dumps(v) for v in listed) + (", or another value" if other else "")
        print(_wrap(f"{key} = {json.dumps(default)}{choices}", "    "))
    doc = inspect.getdoc(m.fn) if m.fn is not None else None
    if doc:
        print()
        print(_wrap(" ".join(doc.split("\n\n")[0].split()), "  ", ""))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    import napari_attribution as na

    if args.name:
        return _describe(args.name)
    # one row of short columns per method, then what it computes on the next line(s): the full label and cost fit
    # the table width (wrapped, never cut); `methods NAME` adds the paper and the parameters
    width = _width()
    infos = na.list_methods()
    rows = [("name", "family", "layer", "signed", "cost")]
    rows += [(m.name, m.family, "yes" if m.needs_layer else ("optional" if m.layer_optional else "-"),
              "yes" if m.signed else "-", m.passes) for m in infos]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lead = sum(widths) + 2 * len(widths)
    for i, r in enumerate(rows):
        # a count and its pass ("N F", "#windows F") stay on one line: a no-break space until wrapped
        kept = re.sub(r" (?=[FB]\b)", "\u00a0", r[4])
        cost = [c.replace("\u00a0", " ") for c in textwrap.wrap(kept, max(12, width - lead), break_long_words=False,
                                                                 break_on_hyphens=False)]
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + cost[0])
        for rest in cost[1:]:
            print(" " * lead + rest)
        if i:
            print(_wrap(infos[i - 1].label, "    ", "  ", width))
    print()
    print(_wrap("Also: captum:<ClassName> for any captum.attr primary or layer attribution class.", width=width))
    print(_wrap("`napari-attribution methods NAME` shows one method's paper, parameters, defaults and choices.",
                width=width))
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
    from ._cli_run import check_request, explain_file, parse_params
    from ._progress import ProgressLine

    # mistakes that need no model are one message before any work starts (not a traceback after the methods ran)
    check_request(device=args.device, target=args.target, image=args.image, output=args.output)
    params = parse_params(args.param)
    # progress with the elapsed time and an ETA, per stage (each method, then each metric), on stderr; anything
    # else written meanwhile (a warning) ends the progress line first
    line = None if args.quiet else ProgressLine(sys.stderr)
    try:
        with _finishing_first(line):
            res = explain_file(args.model, args.image, args.method, args.output, target=args.target,
                               layer=args.layer,
                               params=params, metrics=args.metric or (), overwrite=args.overwrite,
                               device=args.device, trust=args.trust, allow_modules=args.allow_module or (),
                               model_options=_model_options(args), progress=line)
    finally:
        if line is not None:
            line.finish()
    for m, path in res.outputs.items():
        extra = "  ".join(f"{k}={v:.4g}" if v is not None else f"{k}=failed"  # a failed metric: an empty cell
                          for k, v in res.metrics.get(m, {}).items())
        print(f"{m}: {path}  ({res.seconds[m]:.2f} s; {res.description}) {extra}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from ._cli_run import check_request, parse_params, run_batch
    from ._progress import ProgressLine

    # before a cluster starts or a scan is read (each scan's own problems go to the summary: the cohort goes on)
    check_request(device=args.device, target=args.target, outdir=args.output)
    params = parse_params(args.param)
    # a line per finished scan with the batch's elapsed time and ETA; with --local also each scan's own progress
    line = None if args.quiet else ProgressLine(sys.stderr)

    def log(message: str) -> None:  # "[2/9] scan: error: TargetError: ..." in command-line words
        if line is not None:
            line.log(cli_words(message))

    try:
        with _finishing_first(line):
            results = run_batch(args.model, args.images, args.method, args.output, scheduler=args.scheduler,
                                workers=args.workers, local=args.local, target=args.target, layer=args.layer,
                                params=params, metrics=args.metric or (), overwrite=args.overwrite,
                                device=args.device, trust=args.trust, allow_modules=args.allow_module or (),
                                model_options=_model_options(args), log=log, scan_progress=line)
    finally:
        if line is not None:
            line.finish()
    return _batch_exit_code(results)


def _batch_exit_code(results: Sequence[dict[str, Any]]) -> int:
    """0: every scan ran or was skipped (its outputs exist from the same model and parameters); 1: a scan failed;
    3: none failed but some were refused (their outputs exist from another model, scan or parameters)."""
    statuses = [str(r["status"]).split(":")[0] for r in results]
    if "error" in statuses:
        return 1
    return 3 if "refused" in statuses else 0


def _finishing_first(line: Any) -> Any:
    """``line.finishing_first()`` (other output ends the progress line first), or nothing to do without a line."""
    import contextlib

    return contextlib.nullcontext() if line is None else line.finishing_first()


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """A warning on the command line: one ``warning:`` line in command-line words (no source line); another
    library's warning also says where it comes from."""
    from ._errors import CompletenessWarning, ScaledDefaultsWarning

    text = " ".join(cli_words(str(message)).split())
    if issubclass(category, (CompletenessWarning, ScaledDefaultsWarning)) or "napari_attribution" in filename:
        return f"warning: {text}\n"
    return f"warning: {text} ({category.__name__}, {filename}:{lineno})\n"


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
    p.add_argument("--trust", action="store_true", help="allow what can run code from the model's files: pickled "
                   "full-model files, a card's factory from any module")
    p.add_argument("--allow-module", action="append", metavar="NAME", help="your own Python package of networks "
                   "that the model card's factory may name (repeat for several; importing it runs its code)")
    p.add_argument("--fold", action="append", metavar="K", help="nnU-Net result folder: use fold K (repeat for "
                   "several, averaged; 'all' for fold_all; default: every fold found, averaged)")
    p.add_argument("--checkpoint", choices=["final", "best"], help="nnU-Net result folder: checkpoint_final.pth "
                   "(default) or checkpoint_best.pth")
    p.add_argument("--no-mirroring", action="store_true", help="nnU-Net result folder: no test-time mirroring "
                   "(on by default, as nnU-Net predicts)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    """``load_model``'s nnU-Net options from ``--fold`` / ``--checkpoint`` / ``--no-mirroring`` (only those given).

    >>> _model_options(argparse.Namespace(fold=["0", "2"], checkpoint=None, no_mirroring=True))
    {'fold': [0, 2], 'mirroring': False}
    >>> _model_options(argparse.Namespace(fold=None, checkpoint=None, no_mirroring=False))
    {}
    """
    from .models._nnunet import nnunet_options

    folds = [int(f) if f.strip().isdigit() else f.strip() for f in args.fold or ()]
    fold = None if not folds else folds
    return nnunet_options(fold, args.checkpoint, False if args.no_mirroring else None)


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
    p = sub.add_parser("batch", help="explain a cohort (Dask: local cluster by default)",
                       epilog="A scan whose outputs exist from the same model, scan and parameters is skipped; "
                       "outputs from anything else are refused unless --overwrite. Exit code: 0 every scan ran or "
                       "was skipped, 1 a scan failed, 3 none failed but some were refused.")
    _add_run_options(p)
    p.add_argument("--images", required=True, help="a folder, a glob or a CSV list of scans")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--scheduler", help="address of a running Dask scheduler")
    p.add_argument("--workers", type=int, help="local Dask workers (default: one per core); each loads the model "
                   "once")
    p.add_argument("--local", action="store_true", help="no Dask: one scan after the other in this process")
    p.set_defaults(func=_cmd_batch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-attribution`` console script."""
    args = build_parser().parse_args(argv)
    # warnings are shown as one line in command-line words; only how they look changes (filters, and callers that
    # record them, are left alone)
    shown = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # one clear line instead of a traceback for the library's own errors
        from ._errors import AttributionError

        if isinstance(err, AttributionError):  # first: some are OSErrors too, with a message of their own
            print(f"error: {cli_words(str(err))}", file=sys.stderr)
            return 2
        if isinstance(err, OSError):  # an output that exists, a full disk, a folder without write permission
            text = f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err)
            print(f"error: {cli_words(text)}", file=sys.stderr)
            return 2
        raise
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    sys.exit(main())
