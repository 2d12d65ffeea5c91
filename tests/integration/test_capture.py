"""The mapping's whole life on a streaming source, with the real embedded engine and PostgreSQL:
a table added to the mappings is captured and backfilled while writes race the backfill, with
only its source restarted; a removed table is no longer captured and its target rows can be
forgotten; a table added while the daemon was stopped is backfilled at start."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_connector
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

SOURCE = """
CREATE TABLE t1 (id int PRIMARY KEY, v text);
CREATE TABLE t2 (id int PRIMARY KEY, v text, n int);
CREATE TABLE t3 (id int PRIMARY KEY, v text);
CREATE TABLE tunggal_signal (id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL,
  data varchar(2048));
INSERT INTO t1 SELECT g, 'satu ' || g FROM generate_series(1, 20) g;
INSERT INTO t2 SELECT g, 'dua ' || g, g FROM generate_series(1, 1500) g;
INSERT INTO t3 SELECT g, 'tiga ' || g FROM generate_series(1, 300) g;
"""
OTHER = "CREATE TABLE o1 (id int PRIMARY KEY, v text);"
TARGET = """
CREATE TABLE t1 (id int PRIMARY KEY, v text);
CREATE TABLE o1 (id int PRIMARY KEY, v text);
"""
T1 = "  - {from: public.t1, to: t1, key: [id], columns: {id: id, v: v}}\n"
T2 = (
    "  - {from: public.t2, to: t2, key: [id], columns: "
    "{id: {from: id, type: integer}, v: {from: v, type: text}, n: {from: n, type: integer}}}\n"
)
T3 = (
    "  - {from: public.t3, to: t3, key: [id], columns: "
    "{id: {from: id, type: integer}, v: {from: v, type: text}}}\n"
)
O1 = "  - {from: public.o1, to: o1, key: [id], columns: {id: id, v: v}}\n"


class Writer(threading.Thread):
    def __init__(self, dsn: str, table: str, keys: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.table, self.keys = dsn, table, keys
        self.stop, self.changes = threading.Event(), 0

    def run(self) -> None:
        rnd = random.Random(7)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                key, roll = rnd.randint(1, self.keys), rnd.random()
                if roll < 0.6:
                    conn.execute(
                        f"UPDATE {self.table} SET v = %s, n = n + 1 WHERE id = %s",
                        (f"baru {key}", key),
                    )
                elif roll < 0.85:
                    conn.execute(
                        f"INSERT INTO {self.table} VALUES (%s, %s, 0) ON CONFLICT DO NOTHING",
                        (key, f"sisip {key}"),
                    )
                else:
                    conn.execute(f"DELETE FROM {self.table} WHERE id = %s", (key,))
                self.changes += 1


def _published(source: str) -> list[str]:
    return [
        r[0]
        for r in sql(
            source,
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'tunggal_src_pub' "
            "ORDER BY 1",
        )
    ]


def test_tables_added_and_removed_while_streaming(
    pg: PgCluster, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    source, other, target = new_db("cap_src"), new_db("cap_other"), new_db("cap_tgt")
    sql(source, SOURCE)
    sql(other, OTHER)
    sql(target, TARGET)
    mapping = tmp_path / "src.yaml"
    mapping.write_text("source: src\ntables:\n" + T1)
    (tmp_path / "other.yaml").write_text("source: other\ntables:\n" + O1)
    connector = write_connector(tmp_path, "src", pg.port, source.rsplit("/", 1)[1])
    connector.write_text(connector.read_text() + "signal_table: public.tunggal_signal\n")
    other_connector = write_connector(tmp_path, "other", pg.port, other.rsplit("/", 1)[1])
    config = write_config(
        tmp_path,
        target,
        {"src": str(connector), "other": str(other_connector)},
        ["src.yaml", "other.yaml"],
    )
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    daemon: Daemon = daemon_factory(config).start()
    log = lambda: daemon.output()[-5000:]  # noqa: E731
    wait_until(lambda: sql(target, "SELECT count(*) FROM t1") == [(20,)], 90, context=log)
    assert _published(source) == ["t1", "tunggal_signal"]

    # t2 added to the mappings before its target table exists: refused, then taken by itself
    # once `schema --apply` made it, with no SIGHUP.
    mapping.write_text("source: src\ntables:\n" + T1 + T2)
    wait_until(lambda: "mapping reload refused" in daemon.output(), 30, context=log)
    assert "target table public.t2 does not exist" in daemon.output()
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    writer = Writer(source, "t2", 1800)
    writer.start()
    try:
        wait_until(
            lambda: "backfilling public.t2 through an incremental snapshot" in daemon.output(),
            60,
            context=log,
        )
        # The other source streams on meanwhile, and is never restarted.
        sql(other, "INSERT INTO o1 VALUES (1, 'jalan terus')")
        wait_until(lambda: sql(target, "SELECT v FROM o1"), 30, context=log)
        wait_until(
            lambda: sql(target, "SELECT state FROM tunggal_snapshot_requests") == [("done",)],
            120,
            message="backfill of t2",
            context=log,
        )
        time.sleep(1)  # a few more racing writes after the backfill ended
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.changes > 100
    sql(source, "INSERT INTO t1 VALUES (1000, 'penanda')")
    wait_until(lambda: sql(target, "SELECT 1 FROM t1 WHERE id = 1000"), 60, context=log)
    want = sql(source, "SELECT id, v, n FROM t2 ORDER BY id")
    got = sql(target, "SELECT id, v, n FROM t2 ORDER BY id")
    assert set(want) == set(got), f"{len(set(want) ^ set(got))} rows differ"
    assert _published(source) == ["t1", "t2", "tunggal_signal"]
    output = daemon.output()
    assert "source src captures now also public.t2; restarting only it" in output
    assert output.count("starting Debezium for other") == 1  # never restarted
    assert output.count("starting Debezium for src") == 2

    # t2 removed: no longer captured; its target rows stay, said in a WARNING, until forgotten.
    mapping.write_text("source: src\ntables:\n" + T1)
    wait_until(lambda: _published(source) == ["t1", "tunggal_signal"], 60, context=log)
    assert (
        "source src no longer maps public.t2 -> public.t2: the target table keeps the rows it "
        "wrote; `tunggal forget --source src --table public.t2 --yes` removes them"
    ) in daemon.output()
    held = sql(target, "SELECT count(*) FROM t2")[0][0]
    dry = run_cli("forget", "--config", str(config), "--source", "src", "--table", "t2")
    assert dry.returncode == 0 and f"{held} row(s)" in dry.stdout, dry.stdout + dry.stderr
    assert sql(target, "SELECT count(*) FROM t2") == [(held,)]
    done = run_cli("forget", "--config", str(config), "--source", "src", "--table", "t2", "--yes")
    assert done.returncode == 0, done.stderr
    assert sql(target, "SELECT count(*) FROM t2") == [(0,)]
    refused = run_cli("forget", "--config", str(config), "--source", "src", "--table", "t1")
    assert refused.returncode == 1 and "src still writes public.t1" in refused.stderr
    code, _ = daemon.terminate()
    assert code == 0, log()

    # t3 added while the daemon is stopped: backfilled when it starts.
    mapping.write_text("source: src\ntables:\n" + T1 + T3)
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    again: Daemon = daemon_factory(config).start()
    wait_until(lambda: sql(target, "SELECT count(*) FROM t3") == [(300,)], 90, context=again.output)
    assert sql(target, "SELECT count(*) FROM t1") == [(21,)]  # t1 was not read again
    assert sql(target, "SELECT count(*) FROM tunggal_dead_letters") == [(0,)]
    code, _ = again.terminate()
    assert code == 0, again.output()[-3000:]
