"""Layering (issue 12): the pipeline's helpers used by other modules are public (``model_and_card``, ``as_image``);
no module imports a private name from the pipeline, the layers above it import it at module top (not hidden in a
function), and the interpretation package uses the pipeline's ``model_and_card`` instead of a private copy."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_attribution
from napari_attribution import pipeline
from napari_attribution._errors import InputShapeError, MethodError

PACKAGE = Path(napari_attribution.__file__).parent
#: modules above the pipeline that use it (io -> models -> inputs -> methods -> pipeline -> metrics -> runs -> ...)
ABOVE = ["metrics/__init__.py", "metrics/_score.py", "runs/jobs.py", "_widget/_card.py", "_cli_run.py",
         "interpretation/_fitting.py", "interpretation/_visualisation.py"]


def _pipeline_imports(path: Path) -> list[tuple[ast.ImportFrom, bool]]:
    """Every ``from ...pipeline import ...`` in ``path``, with whether it sits inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inner = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(fn)}
    return [(n, id(n) in inner) for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[-1] == "pipeline"]


def test_no_module_imports_a_private_pipeline_name() -> None:
    found = [f"{p.relative_to(PACKAGE)}: {a.name}" for p in sorted(PACKAGE.rglob("*.py"))
             for node, _ in _pipeline_imports(p) for a in node.names if a.name.startswith("_")]
    assert found == []


@pytest.mark.parametrize("entry", ABOVE)
def test_the_layers_above_import_the_pipeline_at_module_top(entry: str) -> None:
    imports = _pipeline_imports(PACKAGE / entry)
    assert imports, f"{entry} no longer uses the pipeline: drop it from ABOVE"
    assert [node.lineno for node, hidden in imports if hidden] == []


def test_interpretation_has_no_copy_of_model_and_card() -> None:
    from napari_attribution.interpretation import _data, _fitting, _visualisation

    assert not hasattr(_data, "model_and_card")
    assert _fitting.model_and_card is pipeline.model_and_card
    assert _visualisation.model_and_card is pipeline.model_and_card


def test_model_and_card_and_as_image() -> None:
    module = torch.nn.Conv2d(1, 2, 3)
    got, card = pipeline.model_and_card(module)
    assert got is module and pipeline.model_and_card(module)[1] is card  # inferred once per model
    with pytest.raises(MethodError, match="torch.nn.Module or a napari_attribution LoadedModel"):
        pipeline.model_and_card("model.pt")
    image = np.arange(4, dtype=np.int64).reshape(2, 2)
    arr = pipeline.as_image(image)
    assert arr.dtype == np.float32 and arr.tolist() == [[0, 1], [2, 3]] and image.dtype == np.int64
    assert pipeline.as_image(torch.ones(2, 3)).shape == (2, 3)
    with pytest.raises(InputShapeError, match="NaN or infinite"):
        pipeline.as_image([1.0, np.nan])
