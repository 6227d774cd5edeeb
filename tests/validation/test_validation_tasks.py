"""The tasks section's direction test (benchmarks/validation/tasks.py): on fixed cases of the report, the directions
the full report measured — a map that concentrates on the vessels scores energy far above chance and deletes the
prediction faster than a random order of the blocks; the target-independent layer activation does not; on the lesion
classifier, deletion to the library's default fill (CT air) is not informative while a soft-tissue fill is — so that
a change that reverses one of them fails here. The same functions make the report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from validation import tasks as T  # noqa: E402
from validation.common import Cache, Context  # noqa: E402


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Context:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("tasks")
    return Context(quick=True, seed=0, cache=Cache(tmp / "cache"), fig_dir=tmp / "fig", log=lambda m: None)


def _run(ctx: Context, name: str, index: int, method: str, metrics: tuple[str, ...], layer: str | None = None
         ) -> tuple[dict[str, Any], dict[str, Any]]:
    task = T.TASKS[name]
    seed = T.case_seeds(task, 0, index + 1)[index]
    s = T.settings(ctx, task)
    row = T.method_result(ctx, name, seed, index, T.MethodPlan(method, layer=layer), s, metrics)
    ref = T.case_reference(ctx, name, seed, index, s) if "deletion" in metrics else T.case_chance(ctx, name, seed,
                                                                                                    index)
    return row, ref


def test_cases_are_fresh_and_fixed() -> None:
    """Case seeds derive from the base seed and stay clear of the training / held-out streams' integer seeds."""
    for task in T.TASKS.values():
        seeds = T.case_seeds(task, 0)
        assert len(seeds) == task.n_cases >= 20
        assert min(seeds) >= 900_000 and len(set(seeds)) == len(seeds)
    assert T.case_seeds(T.TASKS["lesion3d"], 1)[0] != T.case_seeds(T.TASKS["lesion3d"], 0)[0]
    # contrast-phase cases cycle through the three phases, so any first 3k cases are balanced
    labels = [T.case("contrast-phase", s, i).label for i, s in enumerate(T.case_seeds(T.TASKS["contrast-phase"], 0, 6))]
    assert labels == [0, 1, 2, 0, 1, 2]


def test_vessel_grad_cam_concentrates_and_deletes_faster_than_random(ctx: Context) -> None:
    row, ref = _run(ctx, "vessel-seg", 0, "grad_cam", ("energy", "pointing", "deletion"))
    assert row["energy"] > 10 * ref["chance_energy"]  # measured: 0.93 against 0.03
    assert row["pointing"] == 1.0
    assert row["deletion"] < ref["deletion"]["random_auc"]  # lower is better


def test_vessel_layer_activation_does_not_point_at_the_vessels(ctx: Context) -> None:
    """``layer_activation`` ignores the target: its energy in the vessels stays below chance (measured 0.006 against
    0.03), the negative control of the table."""
    row, ref = _run(ctx, "vessel-seg", 0, "layer_activation", ("energy",))
    assert row["energy"] < ref["chance_energy"]


def test_lesion_deletion_needs_a_tissue_fill(ctx: Context) -> None:
    """On the lesion classifier the library's default deletion fill (CT air) leaves the lesion probability near 1
    (the model calls a volume of air a lesion): "not informative"; with the 40 HU fill Grad-CAM's deletion AUC is
    below the random orders'."""
    for index in range(2):
        row, ref = _run(ctx, "lesion3d", index, "grad_cam", ("energy", "deletion"))
        assert row["deletion_default_verdict"].startswith("not informative")
        assert row["deletion"] < ref["deletion"]["random_auc"] - 0.1
        assert row["energy"] > ref["chance_energy"]


def test_verdict_in_words_follows_the_tests() -> None:
    """The per-method verdict says "better" only where the Holm-corrected test is significant and in that
    direction."""
    from validation.common import holm, paired

    plan = T.MethodPlan("grad_cam")
    rows = [{"energy": 0.5 + 0.01 * i, "deletion": 0.1, "explain_s": 0.0} for i in range(10)]
    refs = [{"chance_energy": 0.1, "deletion": {"random_auc": 0.4}} for _ in range(10)]
    ms = T.MethodSummary(plan, 10, rows, refs)
    ms.tests["energy"] = holm([paired(ms.values("energy"), ms.ref_values("energy"))])[0]
    ms.tests["deletion"] = holm([paired(ms.values("deletion"), ms.ref_values("deletion"), higher_is_better=False)])[0]
    said = T.method_verdict(ms)
    assert said.startswith("concentrates on the evidence, 5.")
    assert "deletion better than a random order" in said
    few = T.MethodSummary(plan, 3, rows[:3], refs[:3])
    few.tests["energy"] = holm([paired(few.values("energy"), few.ref_values("energy"))])[0]
    assert T.method_verdict(few).startswith("energy 5.")  # above chance, but three cases cannot show it
    assert "above it on 3 of 3 cases, too few for the test" in T.method_verdict(few)
