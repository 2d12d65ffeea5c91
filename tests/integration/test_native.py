"""The two builds of the per-event path (tunggal.native): compiled with mypyc where a C
compiler is found, the same source as pure Python otherwise. The suite runs against whichever
`make test` built (the compiled one on these machines); the pure one is run here too, on the
unit tests, so that both stay correct."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import tunggal
from tests.conftest import run_cli
from tunggal import native
from tunggal.devtools import compile as native_compile

PACKAGE = Path(tunggal.__file__).parent
REPO = PACKAGE.parent.parent


def _run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """This Python, as `python ARGS`, with `env` over the test's environment."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=900,
        check=False,
    )


def _build_of(env: dict[str, str] | None = None) -> str:
    result = _run("-c", "from tunggal import native; print(native.build())", env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_suite_runs_the_compiled_build_where_a_compiler_is() -> None:
    """CI must not pass on the pure build by accident: these machines have gcc and the headers."""
    missing = native_compile._missing_tool()
    if missing is None:
        assert native.build() == "compiled with mypyc", (
            f"{native.build()}: run `make native` (python -m tunggal.devtools.compile)"
        )
        decode_module = sys.modules["tunggal.events.decode"]
        assert (decode_module.__file__ or "").endswith(".so")
    else:
        assert native.build().startswith("pure Python"), native.build()


def test_version_says_which_build_runs() -> None:
    pure = run_cli("--version", env={native.PURE_ENV: "1"})
    assert pure.returncode == 0, pure.stderr
    assert (
        pure.stdout.strip() == f"tunggal {tunggal.__version__} (pure Python: TUNGGAL_PURE is set)"
    )
    default = run_cli("--version", env={native.PURE_ENV: ""})
    assert default.stdout.strip() == f"tunggal {tunggal.__version__} ({native.build()})"


def test_the_pure_build_passes_the_unit_tests() -> None:
    """The decoder's comparison with its reference decoder, the mapping and collapse tests and
    the rest of tests/unit, on the pure modules."""
    env = {native.PURE_ENV: "1"}
    assert _build_of(env) == "pure Python: TUNGGAL_PURE is set"
    result = _run(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "tests/unit", env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout.splitlines()[-1]


def test_a_changed_source_sets_the_compiled_build_aside(tmp_path: Path) -> None:
    digests = {module: native.digest(module) for module in native.COMPILED}
    manifest = tmp_path / "_native.json"
    manifest.write_text(json.dumps(digests))
    assert native.reason_for_pure(environ={}, manifest=manifest) is None
    assert native.reason_for_pure(environ={native.PURE_ENV: "1"}, manifest=manifest) == (
        "TUNGGAL_PURE is set"
    )
    manifest.write_text(json.dumps({**digests, "tunggal.events.decode": "0" * 64}))
    reason = native.reason_for_pure(environ={}, manifest=manifest)
    assert reason is not None and reason.startswith("decode.py changed since it was compiled")
    reason = native.reason_for_pure(environ={}, manifest=tmp_path / "absent.json")
    assert reason is not None and reason.startswith("not compiled")


def _copy_package(to: Path, *, with_build: bool) -> Path:
    """A copy of the package that `tunggal` imports from (PYTHONPATH comes before the
    editable install), with or without the build in place."""
    ignored = ["__pycache__"] if with_build else ["__pycache__", *native.BUILT]
    shutil.copytree(PACKAGE, to / "tunggal", ignore=shutil.ignore_patterns(*ignored))
    return to / "tunggal"


def test_without_a_compiler_it_says_so_in_one_line_and_runs_pure(tmp_path: Path) -> None:
    copy = _copy_package(tmp_path, with_build=False)
    env = {"PYTHONPATH": str(tmp_path), "CC": "/nonexistent/cc", native.PURE_ENV: ""}
    result = _run("-m", "tunggal.devtools.compile", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "tunggal: pure Python: no C compiler (/nonexistent/cc) found; tunggal runs uncompiled, "
        "slower"
    ]
    assert result.stderr == ""
    assert not list(copy.rglob("*.so"))
    assert _build_of(env).startswith("pure Python: not compiled")
    required = _run("-m", "tunggal.devtools.compile", "--require", env=env)
    assert required.returncode == 1


def test_a_stale_compiled_build_never_runs(tmp_path: Path) -> None:
    """A source edited after the build (a checkout, a hand fix) runs as written: the whole
    compiled group is set aside, never half of it."""
    if native_compile._missing_tool() is not None or not native_compile.up_to_date():
        assert native.build().startswith("pure Python")
        return
    copy = _copy_package(tmp_path, with_build=True)
    env = {"PYTHONPATH": str(tmp_path), native.PURE_ENV: ""}
    assert _build_of(env) == "compiled with mypyc"
    source = copy / "events" / "decode.py"
    source.write_text(source.read_text() + "\n# edited after the build\n")
    assert _build_of(env) == (
        "pure Python: decode.py changed since it was compiled "
        "(run `make native` or `python -m tunggal.devtools.compile`)"
    )
    loaded = _run(
        "-c",
        "import importlib; from tunggal import native;"
        "print([importlib.import_module(m).__file__.rpartition('.')[2] for m in native.COMPILED])",
        env=env,
    )
    assert loaded.stdout.strip() == str(["py"] * len(native.COMPILED)), loaded.stderr


def test_each_exception_type_has_its_own_name_in_the_compiled_modules() -> None:
    """mypyc gives a name one type per function: `except A as exc` then `except B as exc`
    compiles, and raises TypeError when B is caught (the suite found it in the decoder). A
    nested function is checked with the one around it, as mypyc's error was."""
    clashes = []
    for module in native.COMPILED:
        path = native.source_of(module)
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            caught: dict[str, set[str]] = {}
            for node in ast.walk(function):
                if isinstance(node, ast.ExceptHandler) and node.name:
                    kind = ast.unparse(node.type) if node.type else "BaseException"
                    caught.setdefault(node.name, set()).add(kind)
            clashes += [
                f"{path.name}:{function.lineno} {function.name}: {name} for {sorted(kinds)}"
                for name, kinds in caught.items()
                if len(kinds) > 1
            ]
    assert not clashes, clashes
