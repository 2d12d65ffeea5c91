"""What the wheel is built from: the example mappings `tunggal demo` needs are package data."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tests.unit.test_dockerfile import DOCKERFILE, parse
from tunggal.demo.run import REPO_MAPPINGS, examples_dir

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _force_included() -> dict[str, str]:
    build = tomllib.loads(PYPROJECT.read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    included: dict[str, str] = build["force-include"]
    return included


def test_the_demo_examples_are_force_included_from_the_one_copy() -> None:
    assert _force_included() == {"mappings": "tunggal/demo/examples/mappings"}
    # A checkout (or an editable install) reads the repository's own copy.
    assert examples_dir() == REPO_MAPPINGS


def test_the_image_build_stage_has_every_force_included_source() -> None:
    # hatchling refuses to build a wheel whose force-include source is missing.
    copied = [
        i.args.split()[0]
        for i in parse(DOCKERFILE.read_text())
        if i.keyword == "COPY" and i.stage == 0 and not i.args.startswith("--from")
    ]
    for source in _force_included():
        assert source in copied, f"the Dockerfile's build stage does not COPY {source}"
