"""`tunggal resync`: a Debezium incremental snapshot of one table while streaming goes on, with
the real embedded engine and real PostgreSQL. Writes race the snapshot; the table's target
must end equal to its source, with the replication slot kept and no other table read again."""

from __future__ import annotations

import json
import random
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_connector
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

SOURCE = """
CREATE TABLE t1 (id int PRIMARY KEY, v text, n int);
CREATE TABLE t2 (id int PRIMARY KEY, v text);
CREATE TABLE tanpa_kunci (id int, v text);
CREATE TABLE tunggal_signal (id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL,
  data varchar(2048));
INSERT INTO t1 SELECT g, 'awal ' || g, g FROM generate_series(1, 3000) g;
INSERT INTO t2 SELECT g, 'dua ' || g FROM generate_series(1, 50) g;
"""
TARGET = """
CREATE TABLE t1 (id int PRIMARY KEY, v text, n int);
CREATE TABLE t2 (id int PRIMARY KEY, v text);
CREATE TABLE tanpa_kunci (id int PRIMARY KEY, v text);
"""
MAPPING = """
source: src
tables:
  - {from: public.t1, to: t1, key: [id], columns: {id: id, v: v, n: n}}
  - {from: public.t2, to: t2, key: [id], columns: {id: id, v: v}}
  - {from: public.tanpa_kunci, to: tanpa_kunci, key: [id], columns: {id: id, v: v}}
"""


class Writer(threading.Thread):
    """Updates, inserts and deletes rows of t1 (id, v, n) while the snapshot reads it."""

    def __init__(self, dsn: str, keys: int = 3400) -> None:
        super().__init__(daemon=True)
        self.dsn, self.keys, self.stop, self.changes = dsn, keys, threading.Event(), 0

    def run(self) -> None:
        rnd = random.Random(5)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                key = rnd.randint(1, self.keys)
                roll = rnd.random()
                if roll < 0.6:
                    conn.execute(
                        "UPDATE t1 SET v = %s, n = n + 1 WHERE id = %s", (f"baru {key}", key)
                    )
                elif roll < 0.85:
                    conn.execute(
                        "INSERT INTO t1 VALUES (%s, %s, 0) ON CONFLICT (id) DO UPDATE "
                        "SET v = EXCLUDED.v",
                        (key, f"sisip {key}"),
                    )
                else:
                    conn.execute("DELETE FROM t1 WHERE id = %s", (key,))
                self.changes += 1


def resync_and_wait(
    config: Path, source: str, table: str, target: str, context: Callable[[], str]
) -> str:
    """`tunggal resync` of one table, then wait until its request is done; the request id."""
    asked = run_cli("resync", "--config", str(config), "--source", source, "--table", table)
    assert asked.returncode == 0, asked.stdout + asked.stderr
    request = asked.stdout.split("(request ")[1].split(")")[0]
    wait_until(
        lambda: (
            sql(target, "SELECT state FROM tunggal_snapshot_requests WHERE id = %s", (request,))
            == [("done",)]
        ),
        120,
        message="incremental snapshot done",
        context=context,
    )
    return request


def _metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    assert want is not None
    return 0.0


def test_resync_refills_an_emptied_table_while_writes_race_it(
    pg: PgCluster, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    source, target = new_db("resync_src"), new_db("resync_tgt")
    sql(source, SOURCE)
    sql(target, TARGET)
    (tmp_path / "m.yaml").write_text(MAPPING)
    connector = write_connector(tmp_path, "src", pg.port, source.rsplit("/", 1)[1])
    connector.write_text(connector.read_text() + "signal_table: public.tunggal_signal\n")
    config = write_config(tmp_path, target, {"src": str(connector)}, ["m.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    port = int(config.read_text().split("port: ")[1].split()[0])
    daemon: Daemon = daemon_factory(config).start()
    log = lambda: daemon.output()[-4000:]  # noqa: E731
    wait_until(lambda: sql(target, "SELECT count(*) FROM t1") == [(3000,)], 90, context=log)
    slot = sql(source, "SELECT slot_name FROM pg_replication_slots")

    # Bad requests say what is wrong in one line and start nothing.
    for args, message in (
        (["--source", "srcc"], "no source srcc"),
        (["--source", "src", "--table", "public.t3"], "no mapping reads public.t3"),
        (["--source", "src", "--table", "public.tanpa_kunci"], "has no primary key"),
    ):
        refused = run_cli("resync", "--config", str(config), *args)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr

    # The target table emptied by mistake, and a row the source never had.
    sql(target, "DELETE FROM t1")
    sql(
        target,
        "INSERT INTO t1 VALUES (99999, 'hantu', 0, 'src', 1, 1)",
    )
    reads_of_t2 = _metric(port, "tunggal_events_total", source="src", table="public.t2", op="r")
    writer = Writer(source)
    writer.start()
    try:
        resync_and_wait(config, "src", "public.t1", target, log)
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.changes > 200, writer.changes
    marker = sql(source, "SELECT max(id) FROM t1")  # a last change, to know we caught up
    sql(source, "INSERT INTO t2 VALUES (1000, 'penanda')")
    wait_until(lambda: sql(target, "SELECT 1 FROM t2 WHERE id = 1000"), 60, context=log)
    assert marker

    want = sql(source, "SELECT id, v, n FROM t1 ORDER BY id")
    got = sql(target, "SELECT id, v, n FROM t1 ORDER BY id")
    missing = set(want) - set(got)
    extra = set(got) - set(want)
    assert not missing and not extra, f"missing {sorted(missing)[:10]}, extra {sorted(extra)[:10]}"
    # Kept: the same slot, and t2 was not read again; the request says what it did.
    assert sql(source, "SELECT slot_name FROM pg_replication_slots") == slot
    assert (
        _metric(port, "tunggal_events_total", source="src", table="public.t2", op="r")
        == reads_of_t2
    )
    done = sql(target, "SELECT tables, tables_done, rows_read > 0 FROM tunggal_snapshot_requests")
    assert done == [(["public.t1"], ["public.t1"], True)]
    assert (
        _metric(port, "tunggal_incremental_snapshot_rows_total", source="src", table="public.t1")
        > 0
    )
    status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status").read())
    (state,) = [s for s in status["sources"] if s["name"] == "src"]
    assert state["incremental_snapshot"]["running"] is False
    assert state["incremental_snapshot"]["done"] == ["public.t1"]
    assert sql(target, "SELECT count(*) FROM tunggal_dead_letters") == [(0,)]
    code, _ = daemon.terminate()
    assert code == 0, log()


def test_resync_without_a_signal_table_says_how_to_create_one(
    pg: PgCluster, new_db: Any, tmp_path: Path
) -> None:
    source, target = new_db("resync_nosig"), new_db("resync_nosig_tgt")
    sql(source, "CREATE TABLE t1 (id int PRIMARY KEY, v text)")
    sql(target, "CREATE TABLE t1 (id int PRIMARY KEY, v text)")
    (tmp_path / "m.yaml").write_text(
        "source: src\ntables:\n  - {from: public.t1, to: t1, key: [id], columns: {id: id, v: v}}\n"
    )
    connector = write_connector(tmp_path, "src", pg.port, source.rsplit("/", 1)[1])
    plain = connector.read_text()
    config = write_config(tmp_path, target, {"src": str(connector)}, ["m.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0

    refused = run_cli("resync", "--config", str(config), "--source", "src")
    assert refused.returncode == 2, refused.stderr
    assert "source src has no signal table" in refused.stderr
    assert "CREATE TABLE public.tunggal_signal (id varchar(42) PRIMARY KEY" in refused.stderr

    connector.write_text(plain + "signal_table: public.isyarat\n")
    missing = run_cli("resync", "--config", str(config), "--source", "src")
    assert missing.returncode == 2, missing.stderr
    assert "signal table public.isyarat does not exist on source src" in missing.stderr
    assert "CREATE TABLE public.isyarat" in missing.stderr
    assert "Traceback" not in refused.stderr + missing.stderr
    assert sql(target, "SELECT count(*) FROM tunggal_snapshot_requests") == [(0,)]


def test_a_request_folded_into_a_running_snapshot_is_tracked_and_a_partial_one_cleans_nothing(
    pg: PgCluster, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    """Debezium folds a request that arrives while a snapshot runs into the running one, and
    reports its tables under the first request's id. A row-filtered request for t2 (as
    `verify --repair` sends) folded into a whole-table resync of t1 must not make t2's other
    rows look gone, and both requests must end done."""
    from tunggal.connectors import load_connector
    from tunggal.reconcile.signals import request_snapshot

    source, target = new_db("fold_src"), new_db("fold_tgt")
    sql(source, SOURCE.replace("generate_series(1, 3000)", "generate_series(1, 20000)"))
    sql(target, TARGET)
    (tmp_path / "m.yaml").write_text(MAPPING)
    connector = write_connector(tmp_path, "src", pg.port, source.rsplit("/", 1)[1])
    connector.write_text(
        connector.read_text().replace(
            "properties:\n", "properties:\n  incremental.snapshot.chunk.size: '500'\n"
        )
        + "signal_table: public.tunggal_signal\n"
    )
    config = write_config(tmp_path, target, {"src": str(connector)}, ["m.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    daemon: Daemon = daemon_factory(config).start()
    log = lambda: daemon.output()[-4000:]  # noqa: E731
    wait_until(lambda: sql(target, "SELECT count(*) FROM t2") == [(50,)], 90, context=log)
    wait_until(lambda: sql(target, "SELECT count(*) FROM t1") == [(20000,)], 90, context=log)

    spec = load_connector(connector)
    whole = request_snapshot(spec, target, ["public.t1"], reason="test: whole")
    wait_until(lambda: "reading public.t1 again" in daemon.output(), 60, context=log)
    partial = request_snapshot(
        spec,
        target,
        ["public.t2"],
        reason="test: partial",
        conditions={"public.t2": "id IN (1, 2)"},
    )
    states = "SELECT id, state FROM tunggal_snapshot_requests ORDER BY requested_at"
    wait_until(
        lambda: sql(target, states) == [(whole.id, "done"), (partial.id, "done")],
        120,
        message="both requests done",
        context=log,
    )
    sql(source, "INSERT INTO t1 VALUES (99999, 'penanda', 0)")
    wait_until(lambda: sql(target, "SELECT 1 FROM t1 WHERE id = 99999"), 60, context=log)
    # Only two rows of t2 were read again: the other 48 are not gone.
    assert sql(target, "SELECT count(*) FROM t2") == [(50,)]
    assert sql(target, "SELECT count(*) FROM t1") == [(20001,)]
    code, _ = daemon.terminate()
    assert code == 0, log()
