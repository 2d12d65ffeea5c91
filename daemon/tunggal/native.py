"""Which build of the per-event path runs: compiled with mypyc, or pure Python.

`python -m tunggal.devtools.compile` (run by `make native`, so by `make demo` and `make test`)
compiles the modules in COMPILED into extension modules next to their sources, and Python's
import system prefers an extension module to a `.py` file of the same name. Pure Python is the
same source, only slower. It runs where nothing was compiled, where `TUNGGAL_PURE=1` is set (to
compare the builds, or to rule the compiled one out), and where a source changed after it was
compiled: a stale compiled module would run other code than its file says, so one changed
source sets the whole build aside (compiled classes are shared by the group, and half a build
would have two ChangeEvent classes).

`tunggal/__init__.py` calls `choose()` before any of these modules can be imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType
from typing import Final

# The per-event path: decoding, value coercion, mapping (with its transforms), the pipeline's
# bookkeeping, collapse, and the sink's row building and merge. Each is `mypy --strict` clean
# and free of what mypyc cannot compile (str subclasses live in events/bits.py for that reason).
# The sink modules gave replay 4-8% more over the first eight (bench/run.py --pure).
COMPILED: Final = (
    "tunggal.events.model",
    "tunggal.events.values",
    "tunggal.events.coerce",
    "tunggal.events.decode",
    "tunggal.mapping.ops",
    "tunggal.mapping.transforms",
    "tunggal.mapping.engine",
    "tunggal.runtime.pipeline",
    "tunggal.sink.collapse",
    "tunggal.sink.merge",
    "tunggal.sink.postgres",
)
# The shared library the compiled modules live in, inside the package (no top-level module).
GROUP: Final = "tunggal._native"
# What was compiled: each module's source digest, written by the build after it succeeded.
MANIFEST: Final = Path(__file__).with_name("_native.json")
PURE_ENV: Final = "TUNGGAL_PURE"
# What a build leaves in the package, as file patterns: never copied with the sources.
BUILT: Final = ("*.so", MANIFEST.name)

_PACKAGE_DIR: Final = Path(__file__).parent


def source_of(module: str) -> Path:
    return _PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def digest(module: str) -> str:
    return hashlib.sha256(source_of(module).read_bytes()).hexdigest()


class _SourceFinder(MetaPathFinder):
    """Finds the compiled modules' `.py` files, ahead of the extension modules beside them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in COMPILED or not path:
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for entry in path:
            file = os.path.join(entry, leaf)
            if os.path.isfile(file):
                return spec_from_file_location(fullname, file)
        return None


_why_pure: str | None = None


def reason_for_pure(
    environ: Mapping[str, str] = os.environ, manifest: Path = MANIFEST
) -> str | None:
    """Why the compiled build must not run, or None when it may."""
    if environ.get(PURE_ENV, "").strip() not in ("", "0"):
        return f"{PURE_ENV} is set"
    try:
        compiled = json.loads(manifest.read_text())
    except FileNotFoundError:
        return "not compiled (no C compiler was found at install, or it was not asked for)"
    except (OSError, ValueError) as exc:
        return f"{manifest.name} unreadable ({exc})"
    for module in COMPILED:
        try:
            changed = not isinstance(compiled, dict) or compiled.get(module) != digest(module)
        except OSError:
            changed = True
        if changed:
            return (
                f"{source_of(module).name} changed since it was compiled "
                "(run `make native` or `python -m tunggal.devtools.compile`)"
            )
    return None


def choose() -> None:
    """Set the compiled build aside when it must not run; at most once per process."""
    global _why_pure
    if any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        return
    _why_pure = reason_for_pure()
    if _why_pure is not None:
        sys.meta_path.insert(0, _SourceFinder())


def build() -> str:
    """Which build runs, for `tunggal --version` and the start-up log line."""
    import importlib

    if (importlib.import_module("tunggal.events.decode").__file__ or "").endswith(".py"):
        return f"pure Python: {_why_pure or 'no compiled module for this Python'}"
    return "compiled with mypyc"
