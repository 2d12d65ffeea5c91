"""Start-up, reload and `validate --db` check the sources as well as the target
(`reconcile.catalog`): real PostgreSQL and MariaDB sources, `tunggal` in subprocesses.

What this prevents: a `from:` table missing in the source ran on without a word while its
replication slot held WAL; a reload with a misspelt source column was accepted and
dead-lettered every following event; a connector `tables:` entry missing in the source ended in
Java frames that never named it.
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    Daemon,
    run_cli,
    sql,
    wait_until,
    write_config,
    write_connector,
    write_mysql_connector,
)
from tunggal.devtools.mariadb import MariaDbServer
from tunggal.devtools.pgcluster import PgCluster, free_port

pytestmark = pytest.mark.integration

MAPPING = """\
source: {name}
tables:
  - from: {table}
    to: public.kv
    key: [id]
    columns:
      id: id
      v: {{from: {column}, transform: [upper]}}
"""


def write_mapping(where: Path, name: str, table: str = "public.kv", column: str = "val") -> Path:
    path = where / "mappings" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(MAPPING.format(name=name, table=table, column=column))
    return path


@pytest.fixture
def pg_source(pg: PgCluster, new_db: Any, tmp_path: Path) -> dict[str, Any]:
    """A PostgreSQL source with one table `kv`, its target (schema applied) and a connector;
    the test writes the mapping."""
    source, target = new_db("src"), new_db("target")
    sql(source, "CREATE TABLE kv (id int PRIMARY KEY, val text)")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    # Replication slots are per cluster and named after the source: one name per test.
    name = f"chk_{uuid.uuid4().hex[:6]}"
    dbname = source.rsplit("/", 1)[1]
    connector = write_connector(tmp_path, name, pg.port, dbname)
    config = write_config(tmp_path, target, {name: str(connector)}, ["mappings/*.yaml"])
    return {
        "source": source,
        "target": target,
        "name": name,
        "dbname": dbname,
        "port": pg.port,
        "connector": connector,
        "config": config,
    }


def apply_schema(config: Path) -> None:
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr


def run_must_stop(config: Path) -> str:
    """`tunggal run` that must stop at start with exit 2: its stderr, without a stack trace."""
    result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "\tat " not in result.stderr, result.stderr
    return result.stderr


def slot_and_publication(source: str, name: str) -> list[tuple[Any, ...]]:
    return sql(
        source,
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s "
        "UNION ALL SELECT pubname FROM pg_publication WHERE pubname = %s",
        (f"tunggal_{name}", f"tunggal_{name}_pub"),
    )


def test_a_missing_source_table_stops_the_start_with_its_line_and_no_slot(
    pg_source: dict[str, Any], tmp_path: Path
) -> None:
    """One table there, one not (the issue's case: the daemon streamed the one, never said a
    word about the other, and left its slot holding WAL)."""
    name = pg_source["name"]
    mapping = write_mapping(tmp_path, name)
    with mapping.open("a") as extra:
        extra.write(
            "  - from: public.kvx\n    to: public.kv\n    key: [id]\n    columns: {id: id}\n"
        )
    apply_schema(pg_source["config"])
    stderr = run_must_stop(pg_source["config"])
    where = f"database {pg_source['dbname']} on 127.0.0.1:{pg_source['port']}"
    assert "1 problem found" in stderr, stderr
    assert (
        f"{mapping}:9: tables[1].from: source table public.kvx does not exist in source "
        f"'{name}' ({where}) (did you mean public.kv? tables there: public.kv)"
    ) in stderr, stderr
    # Stopped before Debezium started: no slot holds WAL, no publication was made.
    assert slot_and_publication(pg_source["source"], name) == []


def test_a_source_column_typo_stops_the_start_and_validate_db_says_the_same(
    pg_source: dict[str, Any], tmp_path: Path
) -> None:
    name = pg_source["name"]
    mapping = write_mapping(tmp_path, name, column="val_typo")
    apply_schema(pg_source["config"])
    line = (
        f"{mapping}:8: tables[0].columns.v.from: source column val_typo is not in public.kv "
        f"of source '{name}'"
    )
    stderr = run_must_stop(pg_source["config"])
    assert line in stderr and "(did you mean `val`?)" in stderr, stderr
    assert slot_and_publication(pg_source["source"], name) == []

    validated = run_cli("validate", "--db", "--config", str(pg_source["config"]))
    assert validated.returncode == 2 and line in validated.stderr, validated.stderr
    # Without --db nothing is read: the files alone are fine.
    assert run_cli("validate", "--config", str(pg_source["config"])).returncode == 0


def test_a_missing_connector_table_is_named_with_its_line(
    pg_source: dict[str, Any], tmp_path: Path
) -> None:
    name = pg_source["name"]
    write_mapping(tmp_path, name)
    connector: Path = pg_source["connector"]
    connector.write_text(connector.read_text() + "tables:\n  - public.kv\n  - public.kegiatan\n")
    apply_schema(pg_source["config"])
    stderr = run_must_stop(pg_source["config"])
    line = next(
        n for n, text in enumerate(connector.read_text().splitlines(), 1) if "kegiatan" in text
    )
    assert (
        f"{connector}:{line}: tables[1]: source table public.kegiatan does not exist in source "
        f"'{name}'"
    ) in stderr, stderr
    assert "public.kv does not exist" not in stderr
    assert slot_and_publication(pg_source["source"], name) == []


def test_every_problem_is_reported_at_once_target_and_source(
    pg_source: dict[str, Any], tmp_path: Path
) -> None:
    name = pg_source["name"]
    write_mapping(tmp_path, name, column="val_typo")
    apply_schema(pg_source["config"])
    sql(pg_source["target"], "ALTER TABLE kv RENAME COLUMN v TO w")  # a target problem too
    stderr = run_must_stop(pg_source["config"])
    assert "2 problems found" in stderr, stderr
    assert "column v does not exist in public.kv" in stderr, stderr  # the target's
    assert "source column val_typo is not in public.kv" in stderr, stderr  # the source's


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url).read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_reload_with_a_source_column_typo_is_refused_and_the_old_mapping_streams(
    pg_source: dict[str, Any], tmp_path: Path, daemon_factory: Any
) -> None:
    name, source, target = pg_source["name"], pg_source["source"], pg_source["target"]
    mapping = write_mapping(tmp_path, name)
    apply_schema(pg_source["config"])
    port = re.search(r"port: (\d+)", pg_source["config"].read_text())
    assert port is not None
    metrics = f"http://127.0.0.1:{port.group(1)}/metrics"
    sql(source, "INSERT INTO kv VALUES (1, 'satu')")
    daemon: Daemon = daemon_factory(pg_source["config"]).start().wait_ready()

    def log_tail() -> str:
        return daemon.output()[-3000:]

    wait_until(
        lambda: sql(target, "SELECT v FROM kv WHERE id = 1") == [("SATU",)],
        60,
        message="the snapshot",
        context=log_tail,
    )
    write_mapping(tmp_path, name, column="val_typo")
    wait_until(
        lambda: metric(metrics, 'tunggal_mapping_reloads_total{result="failure"}') >= 1,
        30,
        message="the reload refused",
        context=log_tail,
    )
    assert (
        f"{mapping}:8: tables[0].columns.v.from: source column val_typo is not in public.kv"
    ) in daemon.output(), log_tail()
    assert metric(metrics, 'tunggal_mapping_reloads_total{result="success"}') == 0
    # The old mapping keeps streaming, and nothing is dead-lettered.
    sql(source, "INSERT INTO kv VALUES (2, 'dua')")
    sql(source, "UPDATE kv SET val = 'siji' WHERE id = 1")
    wait_until(
        lambda: sql(target, "SELECT id, v FROM kv ORDER BY id") == [(1, "SIJI"), (2, "DUA")],
        60,
        message="streaming on the old mapping",
        context=log_tail,
    )
    assert sql(target, "SELECT count(*) FROM tunggal_dead_letters") == [(0,)]
    assert daemon.alive()
    code, _ = daemon.terminate()
    assert code == 0


def test_a_source_that_does_not_answer_is_an_outage_not_a_config_error(
    pg_source: dict[str, Any], tmp_path: Path, daemon_factory: Any
) -> None:
    """A down source keeps today's behaviour (the source's own start-up failure, or its
    retries): the check is skipped with one warning and never turns it into exit 2."""
    name = pg_source["name"]
    write_mapping(tmp_path, name)
    apply_schema(pg_source["config"])
    connector: Path = pg_source["connector"]
    closed = free_port()
    connector.write_text(
        connector.read_text().replace(f"port: {pg_source['port']}", f"port: {closed}")
    )
    daemon: Daemon = daemon_factory(pg_source["config"]).start()
    wait_until(
        lambda: "are not checked now" in daemon.output() or not daemon.alive(),
        60,
        message="the warning",
        context=lambda: daemon.output()[-3000:],
    )
    warnings = [line for line in daemon.output().splitlines() if "are not checked now" in line]
    assert len(warnings) == 1, daemon.output()[-3000:]
    assert "WARNING" in warnings[0] and f"source {name} (database " in warnings[0], warnings
    wait_until(lambda: not daemon.alive() or "Debezium" in daemon.output(), 60, message="start")
    assert daemon.proc is not None
    if not daemon.alive():
        assert daemon.proc.returncode not in (0, 2), daemon.output()[-3000:]
    assert "problem found" not in daemon.output() and "problems found" not in daemon.output()


# --- MySQL / MariaDB --------------------------------------------------------------------------

MYSQL_MAPPING = """\
source: {name}
tables:
  - from: {db}.kv
    to: public.kv
    key: [id]
    columns: {{id: id, v: nilai}}
  - from: {db}.pos
    to: public.pos
    key: [id]
    columns: {{id: id}}
"""


@pytest.fixture
def mysql_source(mariadb_as_mysql: MariaDbServer, new_db: Any, tmp_path: Path) -> dict[str, Any]:
    """A MariaDB source (read as `kind: mysql`) with `kv`, a target with `kv` and `pos`, and a
    mapping that reads a column `kv` lacks and a table the source lacks."""
    server = mariadb_as_mysql
    db = server.create_database(f"src_{uuid.uuid4().hex[:8]}")
    server.execute("CREATE TABLE kv (id INT PRIMARY KEY, v VARCHAR(100))", database=db)
    target = new_db("target")
    sql(
        target,
        "CREATE TABLE kv (id int PRIMARY KEY, v text); CREATE TABLE pos (id int PRIMARY KEY)",
    )
    name = f"my_{uuid.uuid4().hex[:6]}"
    (tmp_path / "mappings").mkdir()
    mapping = tmp_path / "mappings" / f"{name}.yaml"
    mapping.write_text(MYSQL_MAPPING.format(name=name, db=db))
    connector = write_mysql_connector(tmp_path, name, server, db)
    config = write_config(tmp_path, target, {name: str(connector)}, ["mappings/*.yaml"])
    apply_schema(config)
    return {
        "server": server,
        "db": db,
        "name": name,
        "mapping": mapping,
        "config": config,
        "connector": connector,
    }


def test_mysql_missing_table_and_column_typo_are_reported_together(
    mysql_source: dict[str, Any],
) -> None:
    db, name, mapping = mysql_source["db"], mysql_source["name"], mysql_source["mapping"]
    stderr = run_must_stop(mysql_source["config"])
    port = mysql_source["server"].port
    assert "2 problems found" in stderr, stderr
    assert (
        f"{mapping}:6: tables[0].columns.v: source column nilai is not in {db}.kv of source "
        f"'{name}' (database {db} on 127.0.0.1:{port}) (its columns: id, v)"
    ) in stderr, stderr
    assert (
        f"{mapping}:7: tables[1].from: source table {db}.pos does not exist in source '{name}'"
    ) in stderr, stderr
    # Fixed in the source, the same files start.
    mysql_source["server"].execute("ALTER TABLE kv ADD COLUMN nilai INT", database=db)
    mysql_source["server"].execute("CREATE TABLE pos (id INT PRIMARY KEY)", database=db)
    validated = run_cli("validate", "--db", "--config", str(mysql_source["config"]))
    assert validated.returncode == 0, validated.stderr


def test_mysql_wrong_password_is_one_line_not_an_outage(
    mysql_source: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_MYSQL_PASSWORD", "not-the-password")
    stderr = run_must_stop(mysql_source["config"])
    assert "1 problem found" in stderr, stderr
    assert (
        f"{mysql_source['connector']}:3: database: cannot log in to source "
        f"'{mysql_source['name']}' (database {mysql_source['db']} on 127.0.0.1:"
    ) in stderr, stderr
    assert "as root: Access denied for user 'root'" in stderr, stderr
    assert "check database.user, database.password" in stderr
