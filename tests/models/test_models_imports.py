"""What a card's ``factory`` or a MONAI bundle's ``_target_`` may import without ``trust=True``: only names inside
the network libraries (torch.nn, monai.networks, dynamic_network_architectures, the demo nets) or the modules the
user allows by name (``allow_modules``), checked before anything is imported, and never a module found in the
model's folder or the working directory. Also: a bundle records the weights file it read, and a card whose
``spatial_dims`` contradicts the network is refused when the model is loaded.

Every hostile module here writes a marker file when it is imported: the marker must not appear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _models_helpers import UNET_KWARGS, classifier, same_parameters, write_json
from _nets import Classifier

import napari_attribution as na

RANDOM = {"weights": "random"}
REPO = Path(__file__).resolve().parents[2]


def hostile_module(folder: Path, name: str, marker: Path) -> Path:
    """``folder/name.py``: writes ``marker`` when imported (its top-level code runs), and defines a real network
    class ``Net`` so that nothing after the import would stop it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("imported")
        import torch
        class Net(torch.nn.Linear):
            def __init__(self):
                super().__init__(2, 2)
    """), encoding="utf-8")
    return path


@pytest.fixture
def unique() -> Iterator[str]:
    """A module name no other test uses (so that no cached import hides the behaviour), removed afterwards."""
    name = f"hostile_{uuid.uuid4().hex[:10]}"
    yield name
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


@pytest.fixture
def cwd_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The model's folder is the working directory and the working directory is on sys.path ('' as in Jupyter,
    ``python -c`` and ``python -m``)."""
    folder = tmp_path / "model"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    return folder


# ------------------------------------------------------------------------------------------------ the model's folder


def test_a_module_beside_the_card_is_not_imported_with_the_working_directory_on_sys_path(
        cwd_on_path: Path, unique: str) -> None:
    marker = cwd_on_path.parent / "marker.txt"
    hostile_module(cwd_on_path, unique, marker)
    torch.save(torch.nn.Linear(2, 2).state_dict(), cwd_on_path / "model.pt")
    card = write_json(cwd_on_path / "model.card.json", {"factory": f"{unique}:Net", "weights": "model.pt"})
    for source in (card, cwd_on_path / "model.pt", cwd_on_path, {"factory": f"{unique}:Net", **RANDOM}):
        with pytest.raises(na.ModelLoadError) as info:
            na.load_model(source)
        message = str(info.value)
        assert f"'{unique}'" in message and "torch.nn, monai.networks" in message
        assert f"allow_modules=['{unique}']" in message and "trust=True" in message
        assert not marker.exists() and unique not in sys.modules


def test_a_bundles_scripts_module_is_not_imported(cwd_on_path: Path, unique: str) -> None:
    marker = cwd_on_path.parent / "marker.txt"
    hostile_module(cwd_on_path / "scripts", unique, marker)
    (cwd_on_path / "scripts" / "__init__.py").write_text("", encoding="utf-8")
    write_json(cwd_on_path / "configs" / "inference.json", {"network_def": {"_target_": f"scripts.{unique}.Net"}})
    (cwd_on_path / "models").mkdir()
    torch.save(torch.nn.Linear(2, 2).state_dict(), cwd_on_path / "models" / "model.pt")
    with pytest.raises(na.ModelLoadError, match=r"'scripts\.hostile_\w+\.Net' .*allow_modules"):
        na.load_model(cwd_on_path)
    assert not marker.exists() and "scripts" not in sys.modules


def test_explicitly_allowed_modules_load_and_trust_allows_everything(cwd_on_path: Path, unique: str) -> None:
    """The opt-in is the user's own choice, by name: the module is then imported as Python finds it."""
    marker = cwd_on_path.parent / "marker.txt"
    hostile_module(cwd_on_path, unique, marker)
    loaded = na.load_model({"factory": f"{unique}:Net", **RANDOM}, allow_modules=[unique])
    assert type(loaded.module).__name__ == "Net" and marker.exists()
    marker.unlink()
    del sys.modules[unique]
    assert type(na.load_model({"factory": f"{unique}:Net", **RANDOM}, trust=True).module).__name__ == "Net"
    assert marker.exists()


# ------------------------------------------------------------------------------------------------ installed modules


@pytest.mark.parametrize("factory", ["os:system", "subprocess:Popen", "this:s", "shutil:rmtree",
                                     "torch:load", "monai.bundle:ConfigParser", "torch.nn:Module.__subclasses__",
                                     "torch.nn:modules.module.torch.hub.load"])
def test_a_module_outside_the_network_libraries_is_refused_before_it_is_imported(factory: str) -> None:
    module = factory.split(":")[0]
    was_imported = module in sys.modules
    with pytest.raises(na.ModelLoadError) as info:
        na.load_model({"factory": factory, **RANDOM})
    message = str(info.value)
    assert "not inside the network libraries" in message and "allow_modules" in message and "trust=True" in message
    assert (module in sys.modules) == was_imported  # e.g. 'this' prints the Zen of Python when imported


def test_an_installed_module_that_is_not_allowed_is_never_imported(tmp_path: Path, unique: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker.txt"
    hostile_module(tmp_path / "site", unique, marker)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # "installed": importable from anywhere
    bundle = tmp_path / "bundle"
    write_json(bundle / "configs" / "inference.json", {"network_def": {"_target_": f"{unique}.Net"}})
    (bundle / "models").mkdir()
    torch.save(torch.nn.Linear(2, 2).state_dict(), bundle / "models" / "model.pt")
    for source in ({"factory": f"{unique}:Net", **RANDOM}, {"factory": f"{unique}.Net", **RANDOM}, bundle):
        with pytest.raises(na.ModelLoadError, match="not inside the network libraries"):
            na.load_model(source)
        assert not marker.exists() and unique not in sys.modules
    assert type(na.load_model(bundle, allow_modules=[unique]).module).__name__ == "Net" and marker.exists()


@pytest.mark.parametrize("target", ["subprocess.Popen", "os.system", "builtins.exec"])
def test_a_bundle_target_outside_the_network_libraries_is_refused(tmp_path: Path, target: str) -> None:
    write_json(tmp_path / "configs" / "inference.json", {"network_def": {"_target_": target, "args": "id"}})
    (tmp_path / "models").mkdir()
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "models" / "model.pt")
    with pytest.raises(na.ModelLoadError, match=rf"'{target}' .*not inside the network libraries"):
        na.load_model(tmp_path)


def test_network_library_names_still_load() -> None:
    for factory in ("monai:UNet", "monai.networks.nets:UNet", "monai.networks.nets.UNet", "monai.networks:nets.UNet"):
        assert type(na.load_model({"factory": factory, "kwargs": UNET_KWARGS, **RANDOM}).module).__name__ == "UNet"
    assert isinstance(na.load_model({"factory": "torch.nn:Conv2d", "kwargs": {"in_channels": 1, "out_channels": 2,
                                                                              "kernel_size": 3}, **RANDOM}).module,
                      torch.nn.Conv2d)
    assert isinstance(na.load_model({"factory": "torch:nn.Linear", "kwargs": {"in_features": 2, "out_features": 2},
                                     **RANDOM}).module, torch.nn.Linear)
    demo = na.load_model({"factory": "napari_attribution.models.demo.nets:ContrastPhaseNet",
                          "kwargs": {"dims": 2, "classes": 3, "width": 4}, **RANDOM})
    assert type(demo.module).__name__ == "ContrastPhaseNet"


def test_allow_modules_covers_the_named_package_only(tmp_path: Path) -> None:
    net = classifier(2)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    write_json(tmp_path / "model.card.json", {"factory": "_nets:Classifier"})
    loaded = na.load_model(tmp_path / "model.pt", allow_modules=["_nets"])
    assert isinstance(loaded.module, Classifier) and same_parameters(loaded.module, net)
    assert isinstance(na.load_model(tmp_path / "model.pt", allow_modules="_nets").module, Classifier)  # one name
    for wrong in (["_net"], ["_nets_other"], ["torch"]):
        with pytest.raises(na.ModelLoadError, match="not inside the network libraries"):
            na.load_model(tmp_path / "model.pt", allow_modules=wrong)
    with pytest.raises(na.ModelLoadError, match="allow_modules .*module names.*'my pkg'"):
        na.load_model(tmp_path / "model.pt", allow_modules=["my pkg"])


# ------------------------------------------------------------------------------------------------ a fresh interpreter


SCRIPT = """
import json, sys
import napari_attribution as na
try:
    na.load_model(json.loads(sys.argv[1]))
except na.ModelLoadError as err:
    print("refused:", err)
"""


def run_here(folder: Path, card: dict) -> subprocess.CompletedProcess[str]:
    """``python -c`` in ``folder``: the working directory is sys.path[0], as for a user in a project folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(card)], cwd=folder, env=env, text=True,
                          capture_output=True, timeout=120, check=False)


def test_a_package_in_the_working_directory_does_not_shadow_a_network_library(tmp_path: Path) -> None:
    """A folder named ``monai`` where the user runs Python would be imported instead of the installed MONAI; the
    loader refuses it (and any import it would make from there) without running it."""
    marker = tmp_path / "marker.txt"
    fake = tmp_path / "work" / "monai"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n")
    done = run_here(tmp_path / "work", {"factory": "monai:UNet", "kwargs": UNET_KWARGS, **RANDOM})
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "working directory" in done.stdout, done.stdout
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ bundle provenance


def make_bundle(root: Path, card: dict | None = None, **net: object) -> Path:
    write_json(root / "configs" / "inference.json", {"network_def": {"_target_": "UNet", **UNET_KWARGS, **net}})
    (root / "models").mkdir(parents=True, exist_ok=True)
    trained = na.load_model({"factory": "monai:UNet", "kwargs": UNET_KWARGS, **RANDOM}).module
    torch.save(trained.state_dict(), root / "models" / "model.pt")
    if card is not None:
        write_json(root / "model.card.json", card)
    return root


def test_a_bundle_card_naming_other_weights_is_refused_not_recorded(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", {"weights": "../../etc/passwd"})
    with pytest.raises(na.ModelLoadError) as info:
        na.load_model(bundle)
    message = str(info.value)
    assert "models/model.pt" in message and "passwd" in message and "Remove 'weights'" in message
    with pytest.raises(na.ModelLoadError, match="models/model.pt"):
        na.load_model(make_bundle(tmp_path / "c"), card={"weights": "/etc/passwd"})
    # the card may name the bundle's own file; the provenance is the file read
    same = make_bundle(tmp_path / "d", {"weights": "models/model.pt", "task": "segmentation"})
    loaded = na.load_model(same)
    assert loaded.card.weights == str(same / "models" / "model.pt")
    assert loaded.weights_sha256 is not None


@pytest.mark.parametrize("target", ["../../etc/passwd", "monai..UNet", ".UNet", "monai.networks.nets.", "a b"])
def test_a_bundle_target_that_is_not_a_name_is_a_load_error(tmp_path: Path, target: str) -> None:
    with pytest.raises(na.ModelLoadError, match="must name a class"):
        na.load_model(make_bundle(tmp_path, _target_=target))


def test_a_card_whose_spatial_dims_contradict_the_network_is_refused_on_load(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", {"spatial_dims": 2})
    with pytest.raises(na.ModelLoadError) as info:
        na.load_model(bundle)
    message = str(info.value)
    assert "spatial_dims 2" in message and "Conv3d" in message and "3D" in message
    with pytest.raises(na.ModelLoadError, match="spatial_dims 3.*Conv2d"):
        na.load_model({"factory": "_nets:Classifier", "kwargs": {"d": 2}, "spatial_dims": 3, **RANDOM},
                      allow_modules=["_nets"])
    with pytest.raises(na.ModelLoadError, match="spatial_dims 2.*Conv3d"):
        na.load_model(Classifier(3), card={"spatial_dims": 2})


def test_a_network_that_runs_at_the_cards_dims_despite_its_first_layer_is_kept() -> None:
    """A 2D network that runs its slices through a Conv3d (a wrapper): the card's word stands when a forward pass at
    the card's dims works."""

    class SliceNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x.unsqueeze(2)).squeeze(2)

    loaded = na.load_model(SliceNet(), card={"spatial_dims": 2})
    assert loaded.card.spatial_dims == 2


def test_the_folder_guard_refuses_only_in_the_loading_thread(cwd_on_path: Path, unique: str) -> None:
    """While a network library is imported for a model, nothing is taken from the working directory in that thread
    (also what the library itself imports on the way); another thread's imports are left alone."""
    import importlib
    import threading

    from napari_attribution.models._imports import _GUARD, ImportPolicy, RefusedImport

    marker = cwd_on_path.parent / "marker.txt"
    hostile_module(cwd_on_path, unique, marker)
    other: dict[str, object] = {}
    inside, go_on = threading.Event(), threading.Event()

    def elsewhere() -> None:
        inside.wait(10)
        other["module"] = importlib.import_module(unique)  # not refused: this thread loads no model
        go_on.set()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    with _GUARD.refusing(ImportPolicy()._refused()):
        with pytest.raises(RefusedImport, match="working directory"):
            importlib.import_module(unique)
        inside.set()
        assert go_on.wait(10)
    thread.join(10)
    assert getattr(other["module"], "__name__", None) == unique and marker.exists()
