"""Bundled demo models, trained on phantoms whose evidence is known by construction.

==========================  ==================================================================================
``demo:contrast-phase``     2D CNN (GAP + linear head, so CAM applies): contrast phase of a synthetic abdominal
                            CT slice in HU (non-contrast / arterial / portal venous); seed 002's task.
``demo:contrast-phase-3d``  the same task on 24 x 48 x 48 slabs (3D CNN, GAP + linear head).
``demo:vessel-seg``         small 3D UNet, background / vessel logits (softmax), on TOF-MRA-like volumes with
                            random branching tubes; seed 001's task.
``demo:lesion3d``           lesion / no-lesion 3D CNN on CT phantoms (the docs' small examples).
``demo:vessel-cta``         ``vessel-seg``'s UNet fine-tuned on head CT angiograms, bone included: the demo's
                            model; its card windows the CT, resamples to 0.6 mm and slides 48^3 windows.
==========================  ==================================================================================

>>> from napari_attribution.models.demo import get_demo, list_demos
>>> list_demos()
['contrast-phase', 'contrast-phase-3d', 'vessel-seg', 'lesion3d', 'vessel-cta']
>>> get_demo("demo:contrast-phase").card.class_names
('non-contrast', 'arterial', 'portal venous')

Each model has a generator (:attr:`DemoSpec.generator`, ``seed -> Phantom``) that draws cases of its task with
the evidence mask (classification) or ground truth (segmentation). ``scripts/train_demo_models.py``
regenerates the weights; ``docs/demo-models.md`` reports how and how well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..._errors import ModelLoadError
from .._card import LoadedModel, ModelCard
from .nets import ContrastPhaseNet, LesionNet3d, VesselUNet3d
from .phantoms import (
    ABDOMEN_2D_SHAPE,
    ABDOMEN_2D_SPACING,
    ABDOMEN_3D_SHAPE,
    ABDOMEN_3D_SPACING,
    EVIDENCE_STRUCTURES,
    LESION_SHAPE,
    LESION_SPACING,
    PHASES,
    STRUCTURES,
    VESSEL_SHAPE,
    VESSEL_SPACING,
    Phantom,
    abdomen_batch,
    abdomen_phantom,
    head_cta_phantom,
    lesion_phantom,
    vessel_batch,
    vessel_phantom,
)

__all__ = [
    "CTA_INFERER",
    "CTA_WINDOW",
    "DEMO_MODELS",
    "EVIDENCE_STRUCTURES",
    "PHASES",
    "STRUCTURES",
    "WEIGHTS_DIR",
    "DemoSpec",
    "Phantom",
    "abdomen_batch",
    "abdomen_phantom",
    "demo_metrics",
    "get_demo",
    "head_cta_phantom",
    "lesion_phantom",
    "list_demos",
    "spec_for",
    "vessel_cta_model",
    "vessel_batch",
    "vessel_phantom",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"


def _lesion_case(seed: Any, lesion: bool | None = None) -> Phantom:
    import numpy as np

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return lesion_phantom(rng, bool(rng.integers(0, 2)) if lesion is None else lesion)


@dataclass(frozen=True)
class DemoSpec:
    """A bundled demo model: how to build it, where its weights are, its card, and its data generator."""

    name: str
    description: str
    network: type[nn.Module]
    kwargs: dict[str, Any]
    weights_file: str
    card: ModelCard
    generator: Callable[..., Phantom]

    @property
    def weights(self) -> Path:
        """Path of the shipped ``.pt`` file (a dict with ``state_dict`` and ``metrics``)."""
        return WEIGHTS_DIR / self.weights_file


def _spec(name: str, description: str, network: type[nn.Module], kwargs: dict[str, Any], weights_file: str,
          generator: Callable[..., Phantom], **card: Any) -> DemoSpec:
    fields = {f.name for f in dataclasses.fields(ModelCard)}
    extra = {"name": f"demo:{name}", "description": description, "num_classes": len(card["class_names"])}
    card.update({k: v for k, v in extra.items() if k in fields})  # card fields that not every version has
    card.setdefault("preprocess", None)
    full = ModelCard(factory=f"{network.__module__}:{network.__name__}", kwargs=dict(kwargs),
                     weights=str(WEIGHTS_DIR / weights_file), output="logits", **card)
    return DemoSpec(name, description, network, dict(kwargs), weights_file, full, generator)


#: the CT window that maps a head CT angiogram to the vessel segmenter's intensities: brain (about 38 HU) -> 0.2,
#: contrast-filled vessels (330-400 HU) -> 0.72-0.84, as tissue and vessels of ``vessel-seg``'s TOF-MRA-like
#: training volumes; bone (550-1100 HU) -> 1, apart from the vessels
CTA_WINDOW = (-80.0, 490.0)
#: the sliding-window inferer of ``vessel-cta``: 48^3 windows (the training shape) on the 0.6 mm model grid
CTA_INFERER = {"type": "sliding_window", "roi_size": list(VESSEL_SHAPE), "overlap": 0.25, "mode": "gaussian"}

DEMO_MODELS: dict[str, DemoSpec] = {
    s.name: s
    for s in (
        _spec("contrast-phase",
              "2D CNN (GAP + linear head) classifying the contrast phase of a synthetic abdominal CT slice in HU",
              ContrastPhaseNet, {"dims": 2, "classes": 3, "width": 16}, "contrast_phase_2d.pt",
              partial(abdomen_phantom, dims=2),
              task="classification", spatial_dims=2, in_channels=1, class_names=PHASES,
              default_layer="features.relu3", patch_size=ABDOMEN_2D_SHAPE, spacing=ABDOMEN_2D_SPACING),
        _spec("contrast-phase-3d",
              "3D CNN (GAP + linear head) classifying the contrast phase of a synthetic abdominal CT slab in HU",
              ContrastPhaseNet, {"dims": 3, "classes": 3, "width": 8}, "contrast_phase_3d.pt",
              partial(abdomen_phantom, dims=3),
              task="classification", spatial_dims=3, in_channels=1, class_names=PHASES,
              default_layer="features.relu3", patch_size=ABDOMEN_3D_SHAPE, spacing=ABDOMEN_3D_SPACING),
        _spec("vessel-seg",
              "3D UNet segmenting synthetic branching vessels in a TOF-MRA-like volume (intensities in [0, 1])",
              VesselUNet3d, {"in_channels": 1, "classes": 2, "width": 8}, "vessel_seg.pt", vessel_phantom,
              task="segmentation", spatial_dims=3, in_channels=1, class_names=("background", "vessel"),
              background=0, default_layer="dec1", patch_size=VESSEL_SHAPE, spacing=VESSEL_SPACING),
        _spec("lesion3d",
              "3D CNN (GAP + linear head): is there an enhancing lesion in a soft-tissue CT phantom (HU)",
              LesionNet3d, {}, "lesion3d.pt", _lesion_case,
              task="classification", spatial_dims=3, in_channels=1, class_names=("no lesion", "lesion"),
              default_layer="features.5", patch_size=LESION_SHAPE, spacing=LESION_SPACING),
        _spec("vessel-cta",
              "3D UNet segmenting contrast-filled vessels in a head CT angiogram (HU), bone included, window by window",
              VesselUNet3d, {"in_channels": 1, "classes": 2, "width": 8}, "vessel_cta.pt", head_cta_phantom,
              task="segmentation", spatial_dims=3, in_channels=1, class_names=("background", "vessel"),
              background=0, default_layer="dec1", patch_size=VESSEL_SHAPE, spacing=VESSEL_SPACING,
              preprocess={"window": list(CTA_WINDOW)}, inferer=dict(CTA_INFERER)),
    )
}


def list_demos() -> list[str]:
    """Names of the bundled demo models (load them as ``"demo:<name>"``)."""
    return list(DEMO_MODELS)


def spec_for(name: str) -> DemoSpec:
    """The demo called ``name`` (``"lesion3d"`` or ``"demo:lesion3d"``); an unknown name is a ModelLoadError."""
    key = name[5:] if name.startswith("demo:") else name
    if key not in DEMO_MODELS:
        raise ModelLoadError(
            f"There is no demo model called {name!r}. The bundled demos are: "
            + ", ".join(f"'demo:{n}'" for n in DEMO_MODELS) + "."
        )
    return DEMO_MODELS[key]


def _blob(spec: DemoSpec) -> dict[str, Any]:
    path = spec.weights
    if not path.is_file():
        raise ModelLoadError(
            f"The weights of demo:{spec.name} are missing ({path}). Reinstall napari-attribution, or regenerate "
            "them with `python scripts/train_demo_models.py` from a source checkout."
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ModelLoadError(f"The weights of demo:{spec.name} ({path}) cannot be read: {exc}") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ModelLoadError(f"{path} is not a demo weights file (no 'state_dict'); regenerate it.")
    return blob


def get_demo(name: str) -> LoadedModel:
    """The bundled demo model ``name`` (``"contrast-phase"`` or ``"demo:contrast-phase"``), in eval mode.

    Raises
    ------
    ModelLoadError
        Unknown name (the message lists the demos), or missing / unreadable weights.
    """
    spec = spec_for(name)
    blob = _blob(spec)
    module = spec.network(**spec.kwargs)
    try:
        module.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise ModelLoadError(
            f"The weights of demo:{spec.name} do not match its network ({exc}); regenerate them with "
            "`python scripts/train_demo_models.py`."
        ) from exc
    module.eval()
    return LoadedModel(module=module, card=spec.card)


def demo_metrics(name: str) -> dict[str, Any]:
    """The held-out metrics stored with the demo's weights (accuracy or Dice, training settings)."""
    return dict(_blob(spec_for(name)).get("metrics", {}))


def vessel_cta_model() -> LoadedModel:
    """The demo's model for a clinical-size head CT angiogram (:func:`head_cta_phantom`): ``demo:vessel-cta``, the
    vessel UNet fine-tuned on whole head CTA phantoms (skull, scalp and air as background), with a card that
    windows the CT (:data:`CTA_WINDOW`), resamples the scan to 0.6 mm isotropic and runs the network window by
    window over its training shape (:data:`CTA_INFERER`)."""
    return get_demo("vessel-cta")
