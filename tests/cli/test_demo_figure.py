"""The headless demo's figure: the scan in its own window under maps that are clear at zero, one colour bar per
method kind with panels scaled per kind, and the chance level in every caption (no model needed)."""

from __future__ import annotations

import io
import json
from typing import Any

import matplotlib
import numpy as np
import pytest

from napari_attribution import Attribution
from napari_attribution._demo import WINDOW, _figure, demo_figure, phantom
from napari_attribution.targets import Class

matplotlib.use("Agg")


def maps() -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, float]]:
    vol, mask = phantom(np.random.default_rng(7), lesion=True)
    rng = np.random.default_rng(0)
    lesion = mask.astype(np.float32)
    noise = rng.random(mask.shape, np.float32)
    results = {
        # two unsigned maps of the same pattern in units 1000x apart: scaled per kind they look the same
        "small": Attribution(lesion + 0.1 * noise, "small", Class(1), None, {}, False, 0.1),
        "signed": Attribution(lesion - 0.5 * rng.random(mask.shape, np.float32), "signed", Class(1), None, {}, True,
                              0.1),
        "large": Attribution(1000 * (lesion + 0.1 * noise), "large", Class(1), None, {},
                             False, 0.1),
    }
    return vol, mask, results, {"small": 0.5, "signed": 0.75, "large": 0.25}


def test_one_colour_bar_per_kind_shared_scale_and_chance_in_captions() -> None:
    import matplotlib.pyplot as plt

    vol, mask, results, scores = maps()
    fig = demo_figure(vol, mask, results, scores)
    facts = fig.napari_attribution
    bars = facts["colour_bars"]
    assert [(b["kind"], b["methods"]) for b in bars] == [("unsigned", ["small", "large"]), ("signed", ["signed"])]
    assert bars[1]["limits"][0] == -bars[1]["limits"][1] and bars[0]["limits"][0] == 0.0
    panels = [ax for ax in fig.axes if ax.get_title()]
    colour_bars = [ax for ax in fig.axes if not ax.get_title()]
    assert len(panels) == 4 and len(colour_bars) == 2  # the scan, three maps; two colour bars for two kinds
    # panels grouped by kind (the colour bar beside its group) and captioned with the score and its chance level
    titles = [ax.get_title() for ax in panels[1:]]
    assert [t.split(" ")[0] for t in titles] == ["small", "large", "signed"]
    chance = f"(chance {mask.mean():.1%})"
    assert all(chance in t for t in titles) and "top voxels in lesion: 50%" in titles[0]
    assert facts["captions"] == titles and facts["chance"] == pytest.approx(mask.mean())
    # every panel shows the scan in its window; the maps of one kind share their limits, per kind
    for ax in panels:
        scan = ax.get_images()[0]
        assert scan.get_clim() == WINDOW and scan.get_cmap().name == "gray"
    clims = [ax.get_images()[1].get_clim() for ax in panels[1:]]
    assert clims[0] == clims[1] == (0.0, bars[0]["limits"][1]) and clims[2] == tuple(bars[1]["limits"])
    # scaled per kind, the two unsigned maps 1000x apart in units are drawn alike
    small, large = (np.asarray(ax.get_images()[1].get_array()) for ax in panels[1:3])
    np.testing.assert_allclose(small, large, rtol=1e-4)
    # clear at zero: no white or grey wash over black air
    for ax, signed in zip(panels[1:], (False, False, True), strict=True):
        cmap = ax.get_images()[1].get_cmap()
        assert cmap(0.5 if signed else 0.0)[3] == 0.0 and cmap(1.0)[3] == 1.0
    plt.close(fig)


def test_a_perturbation_map_is_clear_outside_the_body_as_in_the_viewer() -> None:
    import matplotlib.pyplot as plt

    from napari_attribution.layers import body_mask

    vol, mask, _, _ = maps()
    air = np.ones(mask.shape, np.float32)  # "evidence" everywhere, the air included
    results = {"occlusion": Attribution(air, "occlusion", Class(1), None, {}, True, 0.1),
               "saliency": Attribution(air, "saliency", Class(1), None, {}, False, 0.1)}
    fig = demo_figure(vol, mask, results, {"occlusion": 0.1, "saliency": 0.1})
    body, _ = body_mask(vol, modality="CT")
    z = fig.napari_attribution["slice"]
    panels = {ax.get_title().split(" ")[0]: ax for ax in fig.axes if ax.get_title()}
    shown = {k: np.ma.filled(np.ma.asarray(panels[k].get_images()[1].get_array(), float), np.nan)
             for k in results}
    assert (~body[z]).any() and np.isnan(shown["occlusion"][~body[z]]).all()
    assert np.isfinite(shown["occlusion"][body[z]]).all() and np.isfinite(shown["saliency"]).all()
    assert "clear outside the body" in panels["occlusion"].get_title()
    assert "clear outside" not in panels["saliency"].get_title()
    plt.close(fig)


def test_the_png_carries_the_figure_facts() -> None:
    from PIL import Image

    vol, mask, results, scores = maps()
    png = _figure(vol, mask, results, scores)
    assert png is not None
    image = Image.open(io.BytesIO(png))
    facts = json.loads(image.info["Description"])
    assert [b["kind"] for b in facts["colour_bars"]] == ["unsigned", "signed"]
    assert facts["window"] == list(WINDOW) and len(facts["captions"]) == 3
