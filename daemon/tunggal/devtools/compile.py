"""Compile the per-event modules with mypyc, in place: `python -m tunggal.devtools.compile`.

`make native` (so `make demo` and `make test`) runs it. Where it cannot compile (no C compiler,
no Python headers, no mypy, a read-only install, or the compiler fails) it says so in one line
and exits 0: the same source runs as pure Python, only slower (`tunggal.native`).
`--pure` removes a compiled build. Exit 1 only for `--require`, which CI-like callers use to
insist on the compiled build.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from tunggal import native

_PACKAGE_DIR = Path(native.__file__).parent

# mypy's settings for the build, whatever the installation: the repository's pyproject is not
# there in an installed copy, and the build needs only the types, not the strict checks.
_MYPY_CONFIG = """\
[mypy]
plugins = pydantic.mypy
ignore_missing_imports = True
disable_error_code = import-untyped
"""


def _missing_tool() -> str | None:
    # setuptools takes $CC before the compiler Python was built with
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}) found"
    if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
        return "no Python headers (Python.h; on Debian: apt-get install python3-dev)"
    for module in ("mypyc", "setuptools"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install mypy setuptools)"
    return None


def compiled_files() -> list[Path]:
    """The extension modules a build left in the package, whatever Python they were for."""
    found = [
        file
        for module in native.COMPILED
        for file in native.source_of(module).parent.glob(f"{module.rpartition('.')[2]}.*.so")
    ]
    return found + list(_PACKAGE_DIR.glob(f"{native.GROUP.rpartition('.')[2]}__mypyc.*.so"))


def remove() -> None:
    native.MANIFEST.unlink(missing_ok=True)
    for file in compiled_files():
        file.unlink()


def _build(work: Path, log: Path) -> int:
    """The build, in a child process (`--build-in`): mypyc and the C compiler are noisy, and
    their output goes to the log, not the terminal. It compiles a copy of the package's sources
    in `work`: from an installed package's own directory (site-packages) mypy would take every
    module beside it for one of ours. The extension modules are then put beside the sources."""
    shutil.copytree(
        _PACKAGE_DIR,
        work / "src" / "tunggal",
        ignore=shutil.ignore_patterns("__pycache__", *native.BUILT),
    )
    with log.open("w") as out:
        code = subprocess.run(
            [sys.executable, "-m", "tunggal.devtools.compile", "--build-in", str(work)],
            cwd=work / "src",
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    if code == 0:
        built = work / "src" / "tunggal"
        for file in built.rglob("*.so"):
            shutil.copy2(file, _PACKAGE_DIR / file.relative_to(built))
    return code


def _build_here(work: Path) -> None:
    """In the child, from `work/src`: compile the copy in place (build_ext --inplace)."""
    from mypyc.build import mypycify

    setup = importlib.import_module("setuptools").setup  # untyped
    config = work / "mypy.ini"
    config.write_text(_MYPY_CONFIG)
    paths = [str(Path(*module.split(".")).with_suffix(".py")) for module in native.COMPILED]
    extensions = mypycify(
        ["--config-file", str(config), "--cache-dir", str(work / "cache"), *paths],
        group_name=native.GROUP,
        target_dir=str(work / "c"),
    )
    setup(
        name="tunggal-native",
        ext_modules=extensions,
        script_args=[
            *("build_ext", "--inplace", "--parallel", str(os.cpu_count() or 1)),
            *("--build-temp", str(work / "temp"), "--build-lib", str(work / "lib")),
        ],
    )


def up_to_date() -> bool:
    """A build of these very sources, for this Python, is in place."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    present = {file.name for file in compiled_files()}
    if any(f"{module.rpartition('.')[2]}{suffix}" not in present for module in native.COMPILED):
        return False
    return native.reason_for_pure(environ={}) is None


def compile_in_place() -> tuple[bool, str]:
    """(compiled, the line that says so)."""
    if up_to_date():
        return True, f"the {len(native.COMPILED)} compiled modules are up to date"
    missing = _missing_tool()
    if missing is not None:
        remove()
        return False, f"pure Python: {missing}; tunggal runs uncompiled, slower"
    if not os.access(_PACKAGE_DIR, os.W_OK):
        return False, f"pure Python: {_PACKAGE_DIR} is not writable; tunggal runs uncompiled"
    remove()
    # Digests of the sources as they are now: a source edited during the build makes the
    # manifest disagree, and the build is set aside rather than trusted.
    digests = {module: native.digest(module) for module in native.COMPILED}
    work = Path(tempfile.mkdtemp(prefix="tunggal-compile-"))
    handle, name = tempfile.mkstemp(prefix="tunggal-compile-", suffix=".log")
    os.close(handle)
    log = Path(name)  # kept only when the build fails
    started = time.monotonic()
    code = _build(work, log)
    shutil.rmtree(work, ignore_errors=True)
    if code == 0:
        log.unlink()
    else:
        remove()
        return (
            False,
            f"pure Python: compiling failed (exit {code}, see {log}); tunggal runs uncompiled",
        )
    native.MANIFEST.write_text(json.dumps(digests, indent=1) + "\n")
    return True, (
        f"compiled {len(native.COMPILED)} modules with mypyc in {time.monotonic() - started:.0f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunggal.devtools.compile", description=__doc__)
    parser.add_argument("--pure", action="store_true", help="remove the compiled build")
    parser.add_argument("--require", action="store_true", help="exit 1 if it cannot compile")
    parser.add_argument("--build-in", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_in is not None:
        _build_here(args.build_in)
        return 0
    if args.pure:
        remove()
        print("tunggal: compiled build removed; pure Python runs")
        return 0
    compiled, line = compile_in_place()
    print(f"tunggal: {line}")
    return 1 if args.require and not compiled else 0


if __name__ == "__main__":
    sys.exit(main())
