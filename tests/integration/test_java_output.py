"""What Java prints on its own (printStackTrace, System.out, java.util.logging) goes through
our logging: a stack trace only at DEBUG, never on the terminal at the default level.

A real JVM (JPype, one per process), so in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = """
import logging, sys, time
from pathlib import Path
from tunggal import logs
from tunggal.sources.embedded import start_jvm
logs.configure(sys.argv[2])
start_jvm(Path(sys.argv[1]), None, "128m")
import jpype
System = jpype.JClass("java.lang.System")
try:  # an exception thrown inside Java, so that it has frames
    jpype.JClass("java.lang.Integer").parseInt("bukan angka")
except jpype.JException as exc:
    thrown = exc
thrown.printStackTrace()
System.out.println("hello from System.out")
Level = jpype.JClass("java.util.logging.Level")
jul = jpype.JClass("java.util.logging.Logger").getLogger("org.postgresql.Driver")
jul.log(Level.WARNING, "a driver warning", thrown)
log4j = jpype.JClass("org.apache.logging.log4j.LogManager").getLogger("io.debezium.Probe")
log4j.error("a Debezium error", thrown)
System.err.flush()
time.sleep(1.0)
"""


def _run(tmp_path: Path, level: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "state"), level],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_java_output_is_logged_without_traces(tmp_path: Path) -> None:
    out = _run(tmp_path, "INFO")
    assert "java: hello from System.out" in out, out
    assert "debezium.org.postgresql.Driver: a driver warning" in out, out
    assert "ERROR   debezium.Probe: a Debezium error" in out, out
    assert "\tat " not in out and "Exception" not in out, out


def test_java_traces_are_logged_at_debug(tmp_path: Path) -> None:
    out = _run(tmp_path, "DEBUG")
    # The one exception, printed by printStackTrace, java.util.logging and log4j.
    assert out.count('NumberFormatException: For input string: "bukan angka"') == 3, out
    assert out.count("\tat java.base/java.lang.Integer.parseInt") >= 3, out
