"""`pip install 'tunggal[demo]'` then `tunggal demo`, from a directory that is not the repository:
it streams, and no way out of it (done, failed, Ctrl-C) leaves a temporary directory behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tunggal.demo.data import SYSTEMS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout and its `demo` extra installed
    (from the pip cache where it can: the same packages the project's own venv has)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", REPO],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (root / "dist").glob("tunggal-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    subprocess.run(
        [venv / "bin" / "pip", "install", "-q", f"tunggal[demo] @ {wheel.as_uri()}"],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return venv


@pytest.fixture
def clean(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a user's shell: nothing of this checkout on the path, a TMPDIR of
    its own to see what the demo leaves behind, and a wide terminal for rich."""
    # Outside pytest's 0700 directories: as root, the demo's PostgreSQL servers run as the
    # postgres user, who must reach their data directories.
    temp = Path(tempfile.mkdtemp(prefix="tunggal-test-tmpdir-"))
    temp.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    try:
        yield {**env, "TMPDIR": str(temp), "COLUMNS": "250"}
        assert list(temp.iterdir()) == [], "the demo left files in TMPDIR"
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def demo(venv: Path, *args: str) -> list[str]:
    return [str(venv / "bin" / "tunggal"), "demo", *args]


def test_the_wheel_has_the_demo_and_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [installed / "bin" / "python", "-c", "import tunggal; print(tunggal.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        check=True,
    )
    assert where.stdout.startswith(str(installed)), where.stdout


def test_demo_from_the_wheel_streams_and_leaves_nothing(
    installed: Path, tmp_path: Path, clean: dict[str, str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        demo(installed, "--duration", "25", "--rate", "20"),
        cwd=elsewhere,
        env=clean,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final = result.stdout.rsplit("Tunggal demo", 1)[-1]
    for system in SYSTEMS:
        assert system in final, final
    assert "streaming" in final
    assert "daemon stopped (exit 0)" in result.stdout
    # The hint names this installation's executable, not the checkout's .venv.
    assert f"In another terminal: {installed / 'bin' / 'tunggal'} status" in result.stdout
    assert list(elsewhere.iterdir()) == []


def test_a_failed_demo_is_one_line_and_leaves_nothing(
    installed: Path, tmp_path: Path, clean: dict[str, str]
) -> None:
    # No PostgreSQL server where it is told to look: the demo cannot start its databases.
    env = {**clean, "TUNGGAL_PG_BINDIR": str(tmp_path / "no-postgresql")}
    result = subprocess.run(demo(installed), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "the demo stopped:" in result.stdout and "no-postgresql" in result.stdout


def test_ctrl_c_stops_the_demo_and_leaves_nothing(
    installed: Path, tmp_path: Path, clean: dict[str, str]
) -> None:
    out = tmp_path / "out.txt"
    with open(out, "w") as sink:
        # Its own process group, as a shell gives a foreground job: Ctrl-C signals all of it.
        proc = subprocess.Popen(
            demo(installed),
            cwd=tmp_path,
            env=clean,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Starting the daemon" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        time.sleep(3)  # the daemon is starting its JVM
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=90) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "daemon stopped" in out.read_text()
    assert "Traceback" not in out.read_text()
