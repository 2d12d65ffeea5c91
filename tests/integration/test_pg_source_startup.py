"""A PostgreSQL source that cannot start: one line on the terminal, the Java trace in the log.

`tunggal run` in a subprocess against real PostgreSQL servers and the real embedded Debezium
engine. A source that fails before its first streamed change is a start-up problem, so the
daemon stops (exit 1) with one `error:` line saying what failed and what to do; Debezium's
stack trace is written only when the log level is DEBUG (see sources/embedded.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, sql, wait_until, write_config
from tunggal.devtools.pgcluster import PgCluster, free_port

pytestmark = pytest.mark.integration

MAPPING = """source: {name}
tables:
  - from: public.kv
    to: public.kv
    key: [id]
    columns: {{id: id, v: v}}
{extra}"""

PASSWORD = "rahasia-benar"


def _connector(
    tmp_path: Path,
    name: str,
    port: int,
    dbname: str,
    *,
    user: str = "postgres",
    password: str = "${TEST_PG_PASSWORD}",
    tables: str = "",
) -> Path:
    path = tmp_path / f"connector-{name}.yaml"
    path.write_text(
        f"name: {name}\nkind: postgresql\ndatabase:\n  host: 127.0.0.1\n  port: {port}\n"
        f"  dbname: {dbname}\n  user: {user}\n  password: {password}\n{tables}"
        "properties:\n  poll.interval.ms: '100'\n"
    )
    return path


def _setup(new_db: Any, tmp_path: Path, extra_mapping: str = "") -> tuple[str, str, str]:
    """(source name, source dbname, target dsn): a source db with `kv`, its target and mapping."""
    source, target = new_db("src"), new_db("target")
    sql(source, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    name = f"sys_{uuid.uuid4().hex[:6]}"
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "m.yaml").write_text(MAPPING.format(name=name, extra=extra_mapping))
    return name, source.rsplit("/", 1)[1], target


def _stops_with_one_line(
    tmp_path: Path, name: str, connector: Path, target: str, *, debug: bool = False
) -> tuple[str, str]:
    """`tunggal run` that must stop at start: (its one `error:` line, all of stderr)."""
    config = write_config(tmp_path, target, {name: str(connector)}, ["maps/*.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    level = ("--log-level", "debug") if debug else ()
    result = run_cli(*level, "run", "--config", str(config), timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    if not debug:
        assert_no_trace(result.stderr)
    return errors[0], result.stderr


def _refused_by_the_check(tmp_path: Path, name: str, connector: Path, target: str) -> str:
    """`tunggal run` stopped by the source catalog check (reconcile/catalog.py), before Debezium
    starts: exit 2, no trace; its stderr. Debezium's own words for the same causes, should one
    reach it anyway (a table dropped after the check), are tests/unit/test_pg_hints.py's."""
    config = write_config(tmp_path, target, {name: str(connector)}, ["maps/*.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    result = run_cli("run", "--config", str(config), timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert_no_trace(result.stderr)
    assert "Debezium" not in result.stderr, result.stderr[-3000:]
    return result.stderr


def assert_no_trace(stderr: str) -> None:
    """No Java frame, no Java exception dump, no Python traceback."""
    for line in stderr.splitlines():
        bare = line.strip()
        assert not bare.startswith(("at org.", "at io.", "at java.", "at com.", "...")), stderr
        assert not bare.startswith(("Caused by:", "Traceback")), stderr
        assert "Exception in thread" not in bare, stderr


def test_a_source_that_is_down_is_one_line(new_db: Any, tmp_path: Path) -> None:
    name, dbname, target = _setup(new_db, tmp_path)
    port = free_port()  # nothing listens here
    connector = _connector(tmp_path, name, port, dbname)
    error, _ = _stops_with_one_line(tmp_path, name, connector, target)
    assert f"127.0.0.1:{port}" in error and "connection refused" in error, error
    assert name in error and str(connector) in error, error


def test_the_trace_is_in_the_log_at_debug(new_db: Any, tmp_path: Path) -> None:
    name, dbname, target = _setup(new_db, tmp_path)
    connector = _connector(tmp_path, name, free_port(), dbname)
    error, stderr = _stops_with_one_line(tmp_path, name, connector, target, debug=True)
    assert "connection refused" in error, error
    # Debezium's exception with its frames, at DEBUG.
    assert "\tat org.postgresql.Driver.connect" in stderr, stderr[-3000:]
    assert "Caused by: java.net.ConnectException" in stderr, stderr[-3000:]


def test_a_missing_database_is_one_line(new_db: Any, tmp_path: Path, pg: PgCluster) -> None:
    name, _, target = _setup(new_db, tmp_path)
    connector = _connector(tmp_path, name, pg.port, "tidak_ada")
    stderr = _refused_by_the_check(tmp_path, name, connector, target)
    assert f"{connector}:3: database:" in stderr and "tidak_ada" in stderr, stderr


def test_a_missing_table_is_named(new_db: Any, tmp_path: Path, pg: PgCluster) -> None:
    """Every mapped table is missing, which Debezium would only call an empty publication:
    each is named, with its mapping line, before any slot or publication is made."""
    extra = "  - from: keuangan.anggaran\n    to: public.kv\n    key: [id]\n    columns: {id: id}\n"
    name, dbname, target = _setup(new_db, tmp_path, extra)
    sql(f"{pg.dsn(dbname)}", "DROP TABLE kv")
    stderr = _refused_by_the_check(
        tmp_path, name, _connector(tmp_path, name, pg.port, dbname), target
    )
    for table in ("public.kv", "keuangan.anggaran"):
        assert f"source table {table} does not exist in source '{name}'" in stderr, stderr
    slots = sql(
        pg.dsn(dbname),
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
        (f"tunggal_{name}",),
    )
    assert slots == [(0,)], slots


def test_a_user_without_replication_is_one_line(new_db: Any, tmp_path: Path, pg: PgCluster) -> None:
    name, dbname, target = _setup(new_db, tmp_path)
    user = f"baca_{uuid.uuid4().hex[:6]}"
    sql(pg.dsn(dbname), f"CREATE ROLE {user} LOGIN")
    sql(pg.dsn(dbname), f"GRANT SELECT ON kv TO {user}")
    connector = _connector(tmp_path, name, pg.port, dbname, user=user)
    error, _ = _stops_with_one_line(tmp_path, name, connector, target)
    assert f"ALTER ROLE {user} REPLICATION" in error, error


@pytest.fixture(scope="module")
def password_pg() -> Iterator[PgCluster]:
    """A server that checks passwords over TCP (the session's cluster trusts everyone)."""
    cluster = PgCluster(name="passwords").init()
    (cluster.datadir / "pg_hba.conf").write_text(
        "local all all trust\nlocal replication all trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "host replication all 127.0.0.1/32 scram-sha-256\n"
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_a_wrong_password_is_one_line(password_pg: PgCluster, new_db: Any, tmp_path: Path) -> None:
    name, _, target = _setup(new_db, tmp_path)
    local = f"host={password_pg.sockdir} port={password_pg.port} user=postgres"
    dbname = f"src_{uuid.uuid4().hex[:6]}"
    sql(f"{local} dbname=postgres", f"CREATE DATABASE {dbname}")
    sql(f"{local} dbname={dbname}", "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    sql(f"{local} dbname={dbname}", f"CREATE ROLE pembaca LOGIN REPLICATION PASSWORD '{PASSWORD}'")
    connector = _connector(
        tmp_path, name, password_pg.port, dbname, user="pembaca", password="salah"
    )
    stderr = _refused_by_the_check(tmp_path, name, connector, target)
    assert f"{connector}:3: database: cannot log in to source '{name}'" in stderr, stderr
    assert f"127.0.0.1:{password_pg.port}" in stderr and "database.password" in stderr, stderr
    assert "salah" not in stderr, stderr  # the password itself is never printed


@pytest.fixture
def own_pg() -> Iterator[PgCluster]:
    """A source server of the test's own, to stop and start."""
    cluster = PgCluster(name="outage").start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_an_outage_after_streaming_is_retried_in_one_line_each(
    own_pg: PgCluster, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    """Not fatal: the source is restarted with backoff, and each failure is one line."""
    source = own_pg.create_database("src")
    sql(source, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    target = new_db("target")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    name = "sys_outage"
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "m.yaml").write_text(MAPPING.format(name=name, extra=""))
    connector = _connector(tmp_path, name, own_pg.port, "src")
    config = write_config(tmp_path, target, {name: str(connector)}, ["maps/*.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    daemon = daemon_factory(config).start().wait_ready(90)
    sql(source, "INSERT INTO kv VALUES (1, 'satu')")
    wait_until(lambda: sql(target, "SELECT v FROM kv") == [("satu",)], 90, message="snapshot")
    # A live change (the row above may have come with the snapshot): the runner treats a
    # source that never streamed as a start-up failure, and stops.
    sql(source, "INSERT INTO kv VALUES (2, 'dua')")
    wait_until(lambda: sql(target, "SELECT count(*) FROM kv") == [(2,)], 90, message="streaming")

    own_pg.stop("fast")
    line = wait_until(
        lambda: next(
            (ln for ln in daemon.output().splitlines() if f"source {name} failed:" in ln), None
        ),
        120,
        message="the failure reported",
        context=lambda: daemon.output()[-3000:],
    )
    assert f"cannot reach PostgreSQL at 127.0.0.1:{own_pg.port}" in line, line
    assert "restarting it in" in line, line
    assert daemon.alive()

    own_pg.start()
    sql(source, "INSERT INTO kv VALUES (3, 'tiga')")
    wait_until(
        lambda: sql(target, "SELECT count(*) FROM kv") == [(3,)],
        180,
        message="streaming again after the outage",
        context=lambda: daemon.output()[-3000:],
    )
    assert daemon.alive()
    assert_no_trace(daemon.output())
