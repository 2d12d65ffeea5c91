"""Shared fixtures: real PostgreSQL clusters started by the suite itself, on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.kafkaconnect import ConnectStandalone
from tunggal.devtools.mariadb import ROOT_PASSWORD as MARIADB_ROOT_PASSWORD
from tunggal.devtools.mariadb import MariaDbServer
from tunggal.devtools.pgcluster import PgCluster, free_port

REPO = Path(__file__).resolve().parent.parent
EVENTS = Path(__file__).resolve().parent / "events"


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """One throwaway cluster; every test makes its own databases in it."""
    cluster = PgCluster(name="tests").start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDbServer]:
    """One throwaway MariaDB server (ROW binlog, FULL row image, its own port and data
    directory); every test makes its own databases in it. The machine's service is untouched."""
    server = MariaDbServer().start()
    try:
        yield server
    finally:
        server.destroy()


# What the fixture below reports as its version: Debezium 3.6's MySQL connector picks its SQL by
# the version number, and for "10.11" (>= 8.4) it sends SHOW BINARY LOG STATUS, which MariaDB
# lacks. A MySQL 8.0 number makes it use SHOW MASTER STATUS, which MariaDB has.
MYSQL_COMPATIBLE_VERSION = "5.7.19-tunggal-test"


@pytest.fixture(scope="session")
def mariadb_as_mysql() -> Iterator[MariaDbServer]:
    """A throwaway MariaDB server that reports a MySQL 8.0 version number, so that Debezium's
    MySQL connector (`kind: mysql`) can read it: no MySQL server runs on this machine. ONLY for
    the tests; a real MariaDB server is read with `kind: mariadb`, and `kind: mysql` pointed
    at one stops with a line saying so (tests/integration/test_mysql_source.py)."""
    server = MariaDbServer(version=MYSQL_COMPATIBLE_VERSION).start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TansuBroker]:
    """One Kafka-protocol broker (tansu, memory storage); tests use their own topic names."""
    broker = TansuBroker().start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_connect(kafka_broker: TansuBroker) -> Iterator[ConnectStandalone]:
    """One Kafka Connect worker (standalone) on the broker; 10-20 s to start, paid once."""
    with ConnectStandalone(kafka_broker.bootstrap) as connect:
        yield connect


@pytest.fixture
def new_db(pg: PgCluster) -> Iterator[Callable[[str], str]]:
    """A fresh database per call. Replication slots are cluster-wide and named after the source
    (`tunggal_<source>`), so at teardown the slots these databases hold are dropped: a later
    test's source of the same name would otherwise find its slot taken."""
    made: list[str] = []

    def make(prefix: str) -> str:
        dsn = pg.create_database(f"{prefix}_{uuid.uuid4().hex[:8]}")
        made.append(dsn)
        return dsn

    yield make
    for dsn in made:
        _drop_slots(dsn)


def _drop_slots(dsn: str, timeout: float = 15.0) -> None:
    """Drop the logical slots of `dsn`'s database once their reader let go. A logical slot is
    dropped from its own database; a slot still held (a connector another fixture stops later)
    is left to its owner."""
    here = "FROM pg_replication_slots WHERE database = current_database()"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + timeout
            while conn.execute(f"SELECT 1 {here} AND active").fetchone():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            conn.execute(f"SELECT pg_drop_replication_slot(slot_name) {here} AND NOT active")
    except psycopg.Error:
        pass  # the database is gone already (the test dropped it): so are its slots


def sql(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.25,
    message: str = "condition",
    context: Callable[[], str] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    extra = f"\n{context()}" if context is not None else ""
    raise AssertionError(
        f"timed out after {timeout}s waiting for {message} (last: {last!r}){extra}"
    )


def tunggal_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunggal", *args]


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tunggal_cmd(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class Daemon:
    """`tunggal run` in a subprocess, as an operator runs it."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        self._logfile = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            tunggal_cmd("run", "--config", str(self.config)),
            stdout=self._logfile,
            stderr=subprocess.STDOUT,
            cwd=self.config.parent,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60) -> Daemon:
        """Until the runner logged that it started (signal handlers are in place by then)."""
        wait_until(
            lambda: "ready: reading from" in self.output() or not self.alive(),
            timeout,
            message="daemon ready",
            context=lambda: self.output()[-3000:],
        )
        assert self.alive(), self.output()[-3000:]
        return self

    def terminate(self, timeout: float = 20) -> tuple[int, float]:
        assert self.proc is not None
        started = time.monotonic()
        self.proc.terminate()
        code = self.proc.wait(timeout=timeout)
        self._logfile.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=20)
        self._logfile.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def daemon_factory(
    tmp_path: Path, new_db: Callable[[str], str]
) -> Iterator[Callable[[Path], Daemon]]:
    # new_db is requested so that its teardown (dropping the slots) runs after the daemons die.
    daemons: list[Daemon] = []

    def make(config: Path) -> Daemon:
        d = Daemon(config, tmp_path / f"daemon-{len(daemons)}.log")
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        if d.alive():
            d.kill()


def write_config(
    tmp_path: Path,
    target_dsn: str,
    sources: dict[str, str],
    mappings: list[str],
    *,
    batch_age_ms: int = 200,
) -> Path:
    """A tunggal.yaml for the test; sources maps source name -> connector file path."""
    lines = [
        "target:",
        f"  dsn: {target_dsn}",
        "mappings:",
        *[f"  - {m}" for m in mappings],
        f"state_dir: {tmp_path / 'state'}",
        "batch:",
        "  max_size: 2000",
        f"  max_age_ms: {batch_age_ms}",
        "retry:",
        "  initial_delay_s: 0.2",
        "  max_delay_s: 2",
        "metrics:",
        f"  port: {free_port()}",
        "java:",
        "  heap: 384m",
        "sources:",
    ]
    for name, connector in sources.items():
        lines += [f"  - name: {name}", f"    connector: {connector}"]
    if not sources:
        lines[-1] = "sources: []"
    path = tmp_path / "tunggal.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_connector(tmp_path: Path, name: str, port: int, dbname: str) -> Path:
    path = tmp_path / f"connector-{name}.yaml"
    path.write_text(
        f"name: {name}\nkind: postgresql\ndatabase:\n  host: 127.0.0.1\n  port: {port}\n"
        f"  dbname: {dbname}\n  user: postgres\n  password: ${{TEST_PG_PASSWORD}}\n"
        "properties:\n  poll.interval.ms: '100'\n"
    )
    return path


def write_mysql_connector(
    tmp_path: Path,
    name: str,
    server: MariaDbServer,
    dbname: str,
    *,
    kind: str = "mysql",
    extra: str = "",
    properties: dict[str, str] | None = None,
    user: str = "root",
) -> Path:
    """A connector file for a MySQL-family source on a test server (`user`, password from
    TEST_MYSQL_PASSWORD, which is root's). `extra` is appended verbatim (YAML lines at the top
    level, e.g. "timezone: Asia/Jakarta\\n"); `properties` are extra Debezium properties."""
    props = {"poll.interval.ms": "100", **(properties or {})}
    path = tmp_path / f"connector-{name}.yaml"
    path.write_text(
        f"name: {name}\nkind: {kind}\ndatabase:\n  host: 127.0.0.1\n  port: {server.port}\n"
        f"  dbname: {dbname}\n  user: {user}\n  password: ${{TEST_MYSQL_PASSWORD}}\n"
        "properties:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in props.items()) + extra
    )
    return path


os.environ.setdefault("TEST_PG_PASSWORD", "unused-trust-auth")
os.environ.setdefault("TEST_MYSQL_PASSWORD", MARIADB_ROOT_PASSWORD)
# The suite runs as root in CI; `tunggal run` refuses that unless told (tested separately).
os.environ.setdefault("TUNGGAL_ALLOW_ROOT", "1")
