"""Regenerate tests/data/nnunet/: a real nnU-Net v2 result folder and nnU-Net's own predictions beside it.

    python3 scripts/make_nnunet_folder.py                 # everything: venv, data, plan, train, copy, predict
    python3 scripts/make_nnunet_folder.py venv            # only the separate .venv-nnunet
    python3 scripts/make_nnunet_folder.py predict         # only the references, from the committed folder

Stages (``all`` runs them in this order; each later one re-runs this file under .venv-nnunet's python):

``venv``
    A separate virtual environment ``.venv-nnunet`` (nnunetv2 never goes into the project's ``.venv``): the CPU
    torch of the project (scripts/constraints.txt's pin, checked against ``.venv``'s torch, from the same wheel
    source as scripts/setup.sh), then ``nnunetv2==2.8.1`` and ``dynamic-network-architectures==0.4.4`` with
    ``--no-deps`` (a plain install pulls timm -> torchvision -> a multi-GB CUDA torch), then what nnunetv2's
    planner, preprocessor, trainer and predictor import, every pip call constrained to that torch. Left out:
    timm, torchvision, requests, graphviz, yacs, imagecodecs. nnU-Net finds a trainer by importing its trainer
    folder module by module and its ``primus`` trainers import timm, so a one-line module
    ``nnunetv2/training/nnUNetTrainer/short_trainers.py`` re-exports ``nnUNetTrainer_5epochs`` where the search
    looks first.
``train``
    16 generated CT-like phantoms (fixed seed; <= 22x28x28 voxels at 2.5x1x1 mm; labels 1 "organ_a", 2
    "organ_b"; HU-like values) in nnU-Net's raw format in a work folder, ``nnUNetv2_plan_and_preprocess -d 901
    -c 3d_fullres``, ``nnUNetv2_train 901 3d_fullres 0 -tr nnUNetTrainer_5epochs -device cpu`` (timed), and the
    result folder copied to tests/data/nnunet/ with only plans.json, dataset.json, dataset_fingerprint.json and
    fold_0/checkpoint_final.pth.
``predict``
    Two test scans made the same way but not trained on (one at 2.5x1x1 mm, one at 2.0x1.3x1.3 mm with an odd
    size, so nnU-Net resamples it), written to tests/data/nnunet/scans/, and nnU-Net's own ``nnUNetPredictor``
    (CPU, fold 0, checkpoint_final.pth, step 0.5, Gaussian) run on each with and without mirroring. Saved per
    scan in ``references/<scan>.npz``: ``input`` (the preprocessed array the network saw), ``logits_<m>`` (float32
    logits on the network grid, float32 accumulation), ``probabilities_<m>`` and ``seg_<m>`` (nnU-Net's resampling
    back of those logits to the scan's grid), ``seg_nnunet_<m>`` (the unmodified predictor's end-to-end
    segmentation, float16 accumulation), for ``<m>`` in ``mirror``/``nomirror``; plus references/summary.json.

Float32 accumulation: nnU-Net 2.8.1's ``_internal_predict_sliding_window_return_logits`` allocates its
accumulators (``predicted_logits``, ``n_predictions``) and builds its Gaussian importance map in float16
(``torch.half``) and adds the tiles there. ``float32_predictor_class()`` makes a subclass whose only change is that
method, taken from nnU-Net's installed source with ``dtype=torch.half`` replaced by ``dtype=torch.float32`` and
``compute_gaussian(..., dtype=torch.float32)`` (text substitution, checked to apply exactly; everything else,
tiling, step, mirroring, the division by the summed weights, is nnU-Net's own code).

Training is not bit-reproducible (data-augmentation workers, no seed), so the references are remade from the
committed folder (``predict``), never from a new training run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-nnunet"
VENV_PY = VENV / "bin" / "python"
OUT = ROOT / "tests" / "data" / "nnunet"
CONSTRAINTS = ROOT / "scripts" / "constraints.txt"
DATASET_ID = 901
DATASET = f"Dataset{DATASET_ID:03d}_Phantom"
TRAINER = "nnUNetTrainer_5epochs"
RESULT = f"{TRAINER}__nnUNetPlans__3d_fullres"
NNUNET = ["nnunetv2==2.8.1", "dynamic-network-architectures==0.4.4"]
# what nnunetv2's planner, preprocessor, trainer and predictor import (environment.md), with no pins of their own
NNUNET_DEPS = ["acvl-utils", "batchgenerators", "batchgeneratorsv2", "SimpleITK", "nibabel", "numpy", "scipy",
               "scikit-image", "scikit-learn", "pandas", "tqdm", "blosc2", "matplotlib", "seaborn", "einops"]
REEXPORT = ("# re-exports the short trainers so nnU-Net's trainer search finds them without importing timm\n"
            "from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import (  # noqa\n"
            "    nnUNetTrainer_5epochs,\n)\n")

TRAIN_SPACING = (2.5, 1.0, 1.0)  # mm, numpy (z, y, x) order = SimpleITK's array order
N_TRAIN = 16
SEED = 20261202
LABELS = {"background": 0, "organ_a": 1, "organ_b": 2}
# name: (shape (z, y, x), spacing (z, y, x) mm, seed). Larger than the patch (20, 28, 28) in some axes (several
# sliding-window tiles) and smaller in another (nnU-Net pads): 4 tiles at the training spacing, 12 after resampling
SCANS = {
    "scan_train_spacing": ((24, 33, 27), (2.5, 1.0, 1.0), SEED + 1001),
    "scan_resampled": ((27, 33, 31), (2.0, 1.3, 1.3), SEED + 1002),
}


# ---------------------------------------------------------------------------------------------------- venv stage

def _pip(*args: str) -> None:
    cmd = [str(VENV_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(CONSTRAINTS), *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def make_venv() -> None:
    """.venv-nnunet: the project's CPU torch, nnunetv2 and dynamic-network-architectures (no deps), their imports."""
    project_torch = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c",
                                    "import torch; print(torch.__version__)"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    pin = next(line.strip() for line in CONSTRAINTS.read_text().splitlines() if line.startswith("torch=="))
    if project_torch.split("+")[0] != pin.split("==")[1]:
        raise SystemExit(f"scripts/constraints.txt pins {pin} but .venv has torch {project_torch}")
    if not VENV_PY.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    _pip("torch")  # the CPU wheel that scripts/setup.sh installs (same pip sources, same pin)
    _pip("--no-deps", *NNUNET)
    _pip(*NNUNET_DEPS)
    got = subprocess.run([str(VENV_PY), "-c", "import torch; print(torch.__version__)"],
                         check=True, capture_output=True, text=True).stdout.strip()
    if got != project_torch:
        raise SystemExit(f".venv-nnunet has torch {got}, the project's .venv {project_torch}")
    folder = subprocess.run([str(VENV_PY), "-c", "import nnunetv2.training.nnUNetTrainer as m; print(m.__path__[0])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    (Path(folder) / "short_trainers.py").write_text(REEXPORT)
    print(f".venv-nnunet ready: torch {got}, {' '.join(NNUNET)}", flush=True)



# ----------------------------------------------------------------------------------------------------- phantoms

def phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int) -> tuple[Any, Any]:
    """A CT-like phantom in numpy (z, y, x) order: image (int16, HU) and labels (uint8).

    An elliptic body of soft tissue (~40 HU) in air (-1000 HU) with a fat rim (~-100 HU), a spine-like bone
    cylinder (~700 HU, background label), organ_a (label 1, ~90 HU, a large ellipsoid on one side), organ_b (label
    2, ~160 HU like a contrast-enhanced kidney, a small ellipsoid on the other side), Gaussian noise (sd 15 HU).
    Sizes are in mm, so a scan at another spacing shows the same anatomy; ``seed`` draws positions and sizes.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    z, y, x = (((np.arange(n) + 0.5) - n / 2) * s for n, s in zip(shape, spacing, strict=True))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    ry, rx = rng.uniform(10.5, 12.5), rng.uniform(11.5, 13.0)
    body = (yy / ry) ** 2 + (xx / rx) ** 2
    img = np.full(shape, -1000.0)
    img[body <= 1.0] = -100.0
    img[body <= 0.8] = 40.0
    spine = ((yy - 0.62 * ry) / 2.2) ** 2 + (xx / 2.2) ** 2 <= 1.0
    img[spine] = 700.0
    side = rng.choice([-1.0, 1.0])
    ca = (rng.uniform(-6, 6), rng.uniform(-2.5, 0.5), side * rng.uniform(3.0, 4.5))
    aa = (rng.uniform(12, 18), rng.uniform(4.5, 6.5), rng.uniform(4.0, 5.5))
    cb = (rng.uniform(-8, 8), rng.uniform(0.0, 2.5), -side * rng.uniform(4.5, 6.0))
    ab = (rng.uniform(5, 9), rng.uniform(2.5, 3.5), rng.uniform(2.5, 3.5))
    organ_a = sum(((g - c) / a) ** 2 for g, c, a in zip((zz, yy, xx), ca, aa, strict=True)) <= 1.0
    organ_b = sum(((g - c) / a) ** 2 for g, c, a in zip((zz, yy, xx), cb, ab, strict=True)) <= 1.0
    organ_b &= ~organ_a
    img[organ_a] = rng.uniform(85, 100)
    img[organ_b] = rng.uniform(150, 175)
    img += rng.normal(0.0, 15.0, shape)
    labels = np.zeros(shape, np.uint8)
    labels[organ_a] = 1
    labels[organ_b] = 2
    return np.round(img).astype(np.int16), labels


def write_nifti(path: Path, array: Any, spacing: tuple[float, float, float]) -> None:
    """Write a numpy (z, y, x) array as SimpleITK does (nnU-Net's reader for .nii.gz): spacing given as (x, y, z)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    sitk.WriteImage(image, str(path), useCompression=True)


# -------------------------------------------------------------------------------------------------- train stage

def _nnunet_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1",
               PATH=f"{VENV / 'bin'}:{env.get('PATH', '')}")
    return env


def make_raw(work: Path) -> None:
    """nnUNet_raw/Dataset901_Phantom: N_TRAIN phantoms of 18..22 x 24..28 x 24..28 voxels at 2.5x1x1 mm."""
    import numpy as np

    raw = work / "nnUNet_raw" / DATASET
    if raw.exists():
        shutil.rmtree(raw)
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(SEED)
    for i in range(N_TRAIN):
        shape = (int(rng.integers(18, 23)), int(rng.integers(24, 29)), int(rng.integers(24, 29)))
        img, lab = phantom(shape, TRAIN_SPACING, SEED + i)
        write_nifti(raw / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz", img, TRAIN_SPACING)
        write_nifti(raw / "labelsTr" / f"phantom_{i:03d}.nii.gz", lab, TRAIN_SPACING)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": N_TRAIN, "file_ending": ".nii.gz",
        "name": "Phantom", "description": "generated CT-like phantoms (scripts/make_nnunet_folder.py)"}, indent=2))


def train(work: Path) -> None:
    """Plan, preprocess and train fold 0 for 5 epochs on CPU; copy the result folder's four files to OUT."""
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("nnUNet_preprocessed", "nnUNet_results"):
        shutil.rmtree(work / sub, ignore_errors=True)
    make_raw(work)
    env = _nnunet_env(work)
    for cmd in (["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1",
                 "--verify_dataset_integrity"],
                ["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"]):
        print("+", " ".join(cmd), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        seconds = time.perf_counter() - start
        print(f"{cmd[0]}: {seconds:.0f} s", flush=True)
    src = work / "nnUNet_results" / DATASET / RESULT
    dst = OUT / DATASET / RESULT
    shutil.rmtree(OUT / DATASET, ignore_errors=True)
    (dst / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy2(src / name, dst / name)
    shutil.copy2(src / "fold_0" / "checkpoint_final.pth", dst / "fold_0" / "checkpoint_final.pth")
    (OUT / "training_time.json").write_text(json.dumps({"nnUNetv2_train_seconds": round(seconds),
                                                        "threads": os.cpu_count()}, indent=2) + "\n")
    print(f"copied {src} -> {dst}", flush=True)


def float32_predictor_class(dtype: str = "float32") -> type:
    """nnUNetPredictor whose sliding window accumulates in float32 (or ``dtype``): its only change to nnU-Net's code.

    The method ``_internal_predict_sliding_window_return_logits`` is nnU-Net 2.8.1's own source with two edits, made
    here by text substitution so nothing else can differ: the accumulators ``predicted_logits`` and ``n_predictions``
    are allocated with ``dtype=torch.float32`` instead of ``dtype=torch.half``, and ``compute_gaussian`` is called with
    ``dtype=torch.float32`` (its default is float16). The source is compiled in the globals of nnU-Net's module, so
    it calls the same helpers.
    """
    import inspect
    import textwrap

    import nnunetv2.inference.predict_from_raw_data as module

    name = "_internal_predict_sliding_window_return_logits"
    source = textwrap.dedent(inspect.getsource(getattr(module.nnUNetPredictor, name)))
    half, gauss = "dtype=torch.half", "value_scaling_factor=10,"
    if source.count(half) != 2 or source.count(gauss) != 1:
        raise SystemExit(f"nnunetv2's {name} changed: the float32 edit no longer applies")
    source = source.replace(half, f"dtype=torch.{dtype}").replace(gauss, gauss + f" dtype=torch.{dtype},")
    namespace: dict[str, Any] = {}
    exec(compile(source, module.__file__ or name, "exec"), dict(vars(module)), namespace)
    return type(f"{dtype.capitalize()}Predictor", (module.nnUNetPredictor,), {name: namespace[name]})


def predict(work: Path) -> None:
    """The two test scans, and nnU-Net's predictions for them (references/<scan>.npz); see the module docstring."""
    import numpy as np
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = OUT / DATASET / RESULT
    scans, refs = OUT / "scans", OUT / "references"
    for d in (scans, refs):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    float32_predictor, float64_predictor = float32_predictor_class(), float32_predictor_class("float64")
    summary: dict[str, Any] = {}
    for name, (shape, spacing, seed) in SCANS.items():
        img, lab = phantom(shape, spacing, seed)
        scan = scans / f"{name}.nii.gz"
        write_nifti(scan, img, spacing)
        write_nifti(scans / f"{name}_labels.nii.gz", lab, spacing)
        out: dict[str, Any] = {}
        info: dict[str, Any] = {}
        for mirror in (True, False):
            tag = "mirror" if mirror else "nomirror"
            predictors = {}
            for kind, cls in (("nnunet", nnUNetPredictor), ("f32", float32_predictor), ("f64", float64_predictor)):
                p = cls(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                        perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
                p.initialize_from_trained_model_folder(str(folder), use_folds=(0,),
                                                       checkpoint_name="checkpoint_final.pth")
                predictors[kind] = p
            # nnU-Net's own end-to-end path: reads the file, preprocesses, predicts (float16 accumulation), resamples
            seg_nnunet = predictors["nnunet"].predict_from_files(
                [[str(scan)]], None, save_probabilities=False, overwrite=True,
                num_processes_preprocessing=1, num_processes_segmentation_export=1)[0]
            # the same path stage by stage with the float32 predictor
            f32 = predictors["f32"]
            preprocessor = f32.configuration_manager.preprocessor_class(verbose=False)
            data, _, props = preprocessor.run_case([str(scan)], None, f32.plans_manager, f32.configuration_manager,
                                                   f32.dataset_json)
            logits = f32.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()
            seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits.clone(), f32.plans_manager, f32.configuration_manager, f32.label_manager, dict(props),
                return_probabilities=True)
            logits16 = predictors["nnunet"].predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()
            # the float32 run against float64 accumulation (how far the saved logits are from exact tile sums)
            logits64 = predictors["f64"].predict_logits_from_preprocessed_data(torch.from_numpy(data))
            if "input" in out and not np.array_equal(out["input"], data):
                raise SystemExit("preprocessing is not deterministic")
            out["input"] = data.astype(np.float32)
            out[f"logits_{tag}"] = logits.numpy().astype(np.float32)
            out[f"probabilities_{tag}"] = np.asarray(probs, np.float32)
            out[f"seg_{tag}"] = np.asarray(seg, np.uint8)
            out[f"seg_nnunet_{tag}"] = np.asarray(seg_nnunet, np.uint8)
            diff = (logits16 - logits).abs()
            info[tag] = {
                "voxels": int(seg.size),
                "seg_equal_nnunet_default": float(np.mean(np.asarray(seg) == np.asarray(seg_nnunet))),
                "logits_float16_accumulation_minus_float32_max_abs": float(diff.max()),
                "logits_float16_accumulation_minus_float32_median_abs": float(diff.median()),
                "logits_float32_accumulation_minus_float64_max_abs": float((logits.double() - logits64).abs().max()),
                "logits_abs_max": float(logits.abs().max()),
                "dice_vs_phantom_labels": {
                    str(k): float(2 * np.sum((seg == k) & (lab == k)) / max(1, np.sum(seg == k) + np.sum(lab == k)))
                    for k in (1, 2)},
            }
        out["spacing"] = np.asarray(spacing, np.float64)
        out["network_spacing"] = np.asarray(f32.configuration_manager.spacing, np.float64)
        out["shape_before_cropping"] = np.asarray(props["shape_before_cropping"], np.int64)
        out["bbox_used_for_cropping"] = np.asarray(props["bbox_used_for_cropping"], np.int64)
        out["shape_after_cropping_and_before_resampling"] = np.asarray(
            props["shape_after_cropping_and_before_resampling"], np.int64)
        np.savez_compressed(refs / f"{name}.npz", **out)
        info["shapes"] = {k: list(v.shape) for k, v in out.items()}
        summary[name] = info
        print(name, json.dumps(info, indent=1), flush=True)
    (refs / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", nargs="?", default="all", choices=["all", "venv", "train", "predict"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnunet-phantom-work"),
                        help="nnUNet_raw / nnUNet_preprocessed / nnUNet_results go here (default: %(default)s)")
    args = parser.parse_args()
    if args.stage in ("all", "venv"):
        make_venv()
    in_venv = Path(sys.prefix).resolve() == VENV.resolve()
    for stage in ("train", "predict"):
        if args.stage not in ("all", stage):
            continue
        if in_venv:
            {"train": train, "predict": predict}[stage](args.work)
        else:
            subprocess.run([str(VENV_PY), __file__, stage, "--work", str(args.work)], check=True)


if __name__ == "__main__":
    main()
