"""``evidence``: fast signed evidence for and against a decision, after Zhou & Kainz (arXiv:1801.01693,
"approximately 10 times faster than previous methods") — **our reconstruction** (methods.md §A4.1, Part E): the
paper's algorithm was not available.

Definition used: the weight of evidence of prediction difference analysis (``prediction_difference``, Zintgraf
et al.) with the Monte-Carlo estimate of ``p(c | x without window)`` — 10 conditional samples per window —
replaced by one deterministic evaluation at the conditional mean of the window given its frame::

    WE_w(c|x) = log2 odds p(c|x) - log2 odds p(c | x with x_w <- mu_{w|frame})
    map(u)    = mean of WE_w over the windows w that contain u

(``mode="conditional_mean"``, 1 forward pass per window: 10x fewer than PDA at the same window and stride). The
first-order form ``mode="taylor"``, ``WE_w ~ sum_{u in w} d log2odds/dx(u) (x(u) - mu_{w|frame}(u))``, needs one
forward and one backward pass in total; with a zero reference it is gradient x input and with an infinitesimal
window the plain gradient — one coherent reading of the paper's link to gradient visualisations. Signed:
positive = evidence for the target, negative = against.

``mode="conditional_sample"`` (our addition, not from the paper) evaluates each window once, at one sample of
its conditional Gaussian instead of at the conditional mean: the same 1 forward pass per window (10x fewer than
PDA), and the map of ``prediction_difference`` with ``samples=1`` (same window, stride and seed give the same
map). Why it exists, as measured by the validation report (docs/validation.md, seed 003): on the 2D
contrast-phase demo in the portal venous phase, the conditional-mean map ranks voxels worse than a random order by
deletion and disagrees with PDA, and of the window size, the patch model and the reconstruction, only replacing
the conditional mean by conditional samples removes that (one sample per window: about as faithful as PDA). Our
reading: the conditional mean keeps a window inside a large uniform organ at the organ's intensity, which its
frame predicts, so the enhanced liver that tells the phase carries no evidence; a sample perturbs it as PDA's
samples do. On the 3D lesion demo both modes agree with PDA. It is stochastic (seeded by ``seed``).

``mode="screened"`` (our addition, not from the paper) ranks the windows by the first-order form, evaluates the
top ``screen`` fraction (default 0.5) exactly at the conditional mean and gives the others their first-order value
rescaled by the least-squares factor between the two forms on the evaluated windows: ``1F + 1B + screen x
#windows F``, about half the exact mode's passes. It is an approximation of the conditional-mean map (the
validation report compares both with PDA): a window the first-order form ranks low keeps an approximate value.
``extras["screen_rank_correlation"]`` (Spearman between the two forms on the evaluated windows) says how far the
first-order ranking can be trusted on this model and image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import ParameterError
from ._registry import register
from ._run import MethodOutput, Run
from ._windows import weight_of_evidence
from .perturbation import window_cost

WINDOW_PARAMS = {"window": None, "stride": None, "padding": 2, "patches": 20000, "patches_from": None,
                 "train_size": 100000}


def _evidence_split(p: Mapping[str, Any], passes: float) -> tuple[float, float]:
    """Forward-only passes, except the one forward + backward that ranks the windows in the taylor and screened
    modes."""
    if p.get("mode") in ("taylor", "screened"):
        return max(0.0, passes - 1.0), 0.0
    return passes, 0.0


@register(
    "evidence",
    label="Evidence (reconstruction: conditional-mean prediction difference)",
    family="perturbation",
    passes="#windows F (taylor: 1F + 1B; screened: 1F + 1B + screen x #windows F)",
    paper="Zhou & Kainz 2018, arXiv:1801.01693 (motivation; reconstruction)",
    signed=True,
    params={**WINDOW_PARAMS, "mode": "conditional_mean", "screen": 0.5},
    choices={"mode": ("conditional_mean", "taylor", "screened", "conditional_sample")},
    short="Evidence",
    stochastic=True,
    cost=window_cost("evidence"),
    pass_kind=_evidence_split,
    quick_params={"window": 4, "patches": 300},
)
def evidence(run: Run, params: dict[str, Any]) -> MethodOutput:
    """Signed weight of evidence per voxel (reconstruction; see the module docstring). Defaults: window 10
    (2D) or 5 (3D) voxels, stride half the window — where that needs more than 4,096 forward passes (in the exact
    mode from 34^3 voxels or 330 x 330 pixels), a larger stride up to the window and then larger tiles (9^3 at
    128^3), with a :class:`~napari_attribution.ScaledDefaultsWarning` and ``extras["window_note"]`` saying so (a
    given ``window`` / ``stride`` is used as given) — frame 2 voxels, conditional Gaussian fitted on up to 20 000
    patches of the explained image (``patches_from`` adds training images), Laplace correction with
    ``train_size`` = 100 000; ``mode`` ``"conditional_mean"`` (exact, 1 forward per window), ``"taylor"``
    (first order, 1F + 1B), ``"screened"`` (exact on the ``screen`` fraction of windows the first-order form
    ranks highest) or ``"conditional_sample"`` (one conditional sample per window, 1 forward per window: PDA with
    one sample)."""
    modes = {"conditional_mean": "mean", "taylor": "taylor", "screened": "screened",
             "conditional_sample": "one_sample"}
    mode = params["mode"]
    if mode not in modes:
        raise ParameterError("mode must be 'conditional_mean', 'taylor', 'screened' or 'conditional_sample'.")
    return weight_of_evidence(run, params, modes[mode])
