"""Regenerate docs/methods/reference.md from the method registry and the methods' docstrings.

    .venv/bin/python scripts/gen_method_docs.py
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import napari_attribution as na


def _param(m: na.MethodInfo, key: str, default: object) -> str:
    """``key=default``, followed by the listed choices when the method declares some."""
    listed, open_ = m.choice_list(key)
    if not listed:
        return f"`{key}={default!r}`"
    values = " / ".join(f"`{v!r}`" for v in listed)
    return f"`{key}={default!r}` ({values} or another value)" if open_ else f"`{key}={default!r}` (one of {values})"


def main() -> int:
    out = Path(__file__).resolve().parents[1] / "docs" / "methods" / "reference.md"
    lines = [
        "# Method reference",
        "",
        "Generated from the registry and the docstrings by `scripts/gen_method_docs.py`; do not edit by hand.",
        "Methods marked *reconstruction* implement our documented reading of a paper whose exact formula was not",
        "available (see the method's text).",
        "",
        "| name | family | layer | signed | cost | TorchScript |",
        "|---|---|---|---|---|---|",
    ]
    infos = na.list_methods()
    for m in infos:
        lines.append(f"| [`{m.name}`](#{m.name}) | {m.family} "
                     f"| {'yes' if m.needs_layer else ('optional' if m.layer_optional else '')} "
                     f"| {'yes' if m.signed else ''} | {m.passes} | {'yes' if m.supports_torchscript else 'no'} |")
    lines.append("")
    for m in infos:
        assert m.fn is not None
        module = sys.modules[m.fn.__module__]
        lines += [f"## {m.name}", "", f"**{m.label}**", "", f"Reference: {m.paper}.", ""]
        params = {k: v for k, v in m.params.items() if k != "*"}
        if params:
            lines.append("Parameters (defaults): " + ", ".join(_param(m, k, v) for k, v in params.items()) + ".")
            lines.append("")
        doc = inspect.getdoc(m.fn) or ""
        lines += [doc, ""]
        mod_doc = inspect.getdoc(module) or ""
        if "reconstruction" in mod_doc.lower() and m.name in mod_doc:
            lines += ["<details><summary>Definition used (module notes)</summary>", "", mod_doc, "", "</details>", ""]
    from napari_attribution.methods import captum as captum_adapter

    lines += ["## captum:&lt;ClassName&gt;", "", inspect.getdoc(captum_adapter) or "", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
