"""What a model card's ``factory`` or a MONAI bundle's ``_target_`` may import: the loader's security model.

Importing a module runs its top-level code, so the name a file gives is checked *before* anything is imported.
Without ``trust=True``:

- only names inside the network libraries (:data:`NETWORK_LIBRARIES`: ``torch.nn``, ``monai.networks``,
  ``dynamic_network_architectures``, the demo nets in ``napari_attribution.models.demo``) or inside a module the
  user allowed by name (``allow_modules=["mypkg"]``, CLI ``--allow-module mypkg``) are imported. A card cannot allow
  a module itself: the allow-list comes only from the caller;
- a network library is never imported from the model's folder or the working directory (a ``monai/`` folder or a
  ``torch_nn.py`` shipped beside a model, found first because the working directory is on ``sys.path`` in Jupyter,
  ``python -c`` and ``python -m``): while a library is imported, any module Python would find directly in one of
  those folders is refused (:class:`_FolderGuard`, active only in the loading thread), so neither the library nor
  anything it imports on the way is taken from there;
- the object named must be defined inside an allowed module (no walking from an allowed module's attributes to,
  say, ``torch.hub.load``) and no name part may start with ``_``.

A module the user allows by name is imported wherever Python finds it (the user chose it). ``trust=True`` allows
everything, as for pickled models.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .._errors import ModelLoadError

__all__ = ["NETWORK_LIBRARIES", "ImportPolicy", "allowed_modules", "refused_import"]

#: The libraries whose network classes a card or a bundle may name without ``trust=True``.
NETWORK_LIBRARIES = ("torch.nn", "monai.networks", "dynamic_network_architectures", "napari_attribution.models.demo")

_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _within(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` or inside it (``torch.nn.modules`` is inside ``torch.nn``; ``torch.nnx`` is not)."""
    return name == prefix or name.startswith(prefix + ".")


def allowed_modules(names: str | Iterable[str] | None) -> tuple[str, ...]:
    """The user's ``allow_modules`` as a tuple of checked dotted module names (one string is one name)."""
    if names is None:
        return ()
    items = [names] if isinstance(names, str) else list(names)
    bad = [n for n in items if not isinstance(n, str) or not _NAME.match(n.strip())]
    if bad:
        raise ModelLoadError(
            f"allow_modules takes Python module names such as 'mypkg' or 'mypkg.nets', got "
            f"{', '.join(repr(b) for b in bad)}."
        )
    return tuple(dict.fromkeys(n.strip() for n in items))


@dataclass(frozen=True)
class ImportPolicy:
    """What loading one model may import (see the module docstring).

    Attributes
    ----------
    trust : everything may be imported (``load_model(..., trust=True)``).
    allowed : the user's own modules, by name (``allow_modules``); each allows itself and its submodules.
    folders : the model's folder(s) (of the card, the weights, the bundle); with the working directory, the folders
        no network library is imported from.
    """

    trust: bool = False
    allowed: tuple[str, ...] = ()
    folders: tuple[Path, ...] = ()

    def with_folder(self, path: str | os.PathLike[str] | None) -> ImportPolicy:
        """The same policy with one more model folder (that of ``path``, a file or a folder)."""
        if path is None:
            return self
        p = Path(path).expanduser()
        folder = p if p.is_dir() else p.parent
        return ImportPolicy(self.trust, self.allowed, (*self.folders, folder))

    def user_allowed(self, name: str) -> bool:
        return any(_within(name, a) for a in self.allowed)

    def library(self, name: str) -> bool:
        return any(_within(name, lib) for lib in NETWORK_LIBRARIES)

    def may_import(self, name: str) -> bool:
        """A module that may be imported: inside an allowed module, or a parent package of a network library
        (``monai`` for ``monai.networks``, which importing ``monai.networks`` imports anyway)."""
        return self.user_allowed(name) or self.library(name) or any(_within(lib, name) for lib in NETWORK_LIBRARIES)

    def check_name(self, spec: str, what: str, dotted: str, module: str | None = None) -> None:
        """Refuse, before any import, a name outside the allowed modules. ``dotted``: the full dotted name of the
        object (``torch.nn.Conv2d``); ``module``: the module that will be imported for it, if known."""
        if not _NAME.match(dotted):  # also with trust: '../x' or 'a..b' would be a raw import error
            raise ModelLoadError(f"{what} {spec!r} must name a class as 'package.module.Class'.")
        if self.trust:
            return
        # dunder attributes (Module.__subclasses__, __globals__ ...) lead out of any module
        dunder = any(p.startswith("__") for p in (dotted[len(module):] if module else dotted).split("."))
        inside = self.user_allowed(dotted) or self.library(dotted)
        if inside and not dunder and (module is None or self.may_import(module)):
            return
        top = dotted.split(".")[0]
        raise ModelLoadError(
            f"{what} {spec!r} is not inside the network libraries napari-attribution imports on its own "
            f"({', '.join(NETWORK_LIBRARIES)}), so it was not imported: importing a module runs its code, and a card "
            "or a bundle could name any module, for example one shipped beside the model. If it is your own package "
            f"of networks, allow it by name with allow_modules=['{top}']; trust=True allows every module (only for "
            "files from a source you trust)."
        )

    def check_defined(self, obj: Any, spec: str, what: str) -> None:
        """The object found must be defined inside an allowed module (not reached through an attribute chain)."""
        if self.trust:
            return
        where = getattr(obj, "__module__", None)
        if not isinstance(where, str) or not (self.user_allowed(where) or self.library(where)):
            raise ModelLoadError(
                f"{what} {spec!r} leads to {getattr(obj, '__qualname__', type(obj).__name__)} from the module "
                f"{where!r}, which is not inside the network libraries napari-attribution imports on its own "
                f"({', '.join(NETWORK_LIBRARIES)}) nor a module you allowed with allow_modules=[...]. Name the "
                "network class where it is defined; trust=True allows everything (only for files you trust)."
            )

    def import_module(self, name: str) -> ModuleType:
        """``importlib.import_module(name)``; a network library (not a module the user allowed) is imported with
        the model's folders and the working directory refused (:class:`_FolderGuard`)."""
        if self.trust or self.user_allowed(name):
            return importlib.import_module(name)
        with _GUARD.refusing(self._refused()):
            return importlib.import_module(name)

    def _refused(self) -> dict[Path, str]:
        out: dict[Path, str] = {}
        for folder in self.folders:
            with contextlib.suppress(OSError):
                out.setdefault(folder.resolve(), "the model's folder")
        with contextlib.suppress(OSError):
            out[Path.cwd().resolve()] = "the working directory"
        return out


class RefusedImport(ModuleNotFoundError):
    """A module that would have been imported from the model's folder or the working directory."""


def refused_import(err: BaseException) -> RefusedImport | None:
    """The :class:`RefusedImport` behind ``err`` (a library's own import may have wrapped it), if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, RefusedImport):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class _FolderGuard(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that, in a thread that is importing a network library for a model, refuses any
    top-level module Python would find directly in the model's folder or the working directory. Inactive (it finds
    nothing and refuses nothing) in every other thread and at every other time."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def refusing(self, folders: dict[Path, str]) -> Iterator[None]:
        with self._lock:  # first in line, so that no finder before it takes the module from those folders
            if not sys.meta_path or sys.meta_path[0] is not self:
                with contextlib.suppress(ValueError):
                    sys.meta_path.remove(self)
                sys.meta_path.insert(0, self)
        stack: list[dict[Path, str]] = self._local.__dict__.setdefault("stack", [])
        stack.append(folders)
        try:
            yield
        finally:
            stack.pop()

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        stack = self._local.__dict__.get("stack")
        if not stack or path is not None:  # submodules are found inside their (already checked) package
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname)
        if spec is None:
            return None
        locations = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
        for location in locations:
            try:
                folder = Path(location).resolve().parent
            except OSError:
                continue
            where = stack[-1].get(folder)
            if where is not None:
                raise RefusedImport(
                    f"'{fullname}' would be imported from {where} ({folder}), and importing it would run code from "
                    f"there: napari-attribution does not import from the model's folder or the working directory "
                    f"without trust=True. Rename or move '{Path(location).name}' there, or run from another folder "
                    f"(if it is your own copy of that package, allow it by name: allow_modules=['{fullname}']).",
                    name=fullname,
                )
        return None  # the regular finders import it


_GUARD = _FolderGuard()
