"""The signal path with Debezium on Kafka Connect: `tunggal resync` and the backfill of
`tunggal connectors apply` are Debezium incremental snapshots asked for through the source's
signal table, whose notices reach `tunggal run` (engine: kafka) on the notification topic.

Real components throughout: PostgreSQL -> Debezium on Kafka Connect (standalone, applied with
`tunggal connectors apply`) -> Kafka (tansu) -> `tunggal run` -> the target PostgreSQL.

In Kafka mode the notices and the rows travel on separate topics, so a table's cleanup may run
before the last chunk's rows are consumed: rows it removes then come back with those rows. Only
the final state is checked.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until
from tests.integration.test_connect import Sources, sources  # noqa: F401 - the fixture
from tests.integration.test_resync import Writer, resync_and_wait
from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.pgcluster import free_port

pytestmark = pytest.mark.integration

SIGNAL = """CREATE TABLE tunggal_signal (id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL,
  data varchar(2048));"""
# Top-level key appended to the connector file (after its `properties:` block); small chunks so
# that the writes race several of them.
CONNECTOR_EXTRA = "  incremental.snapshot.chunk.size: '500'\nsignal_table: public.tunggal_signal\n"


def _mapping(name: str, *tables: str) -> str:
    lines = [f"source: {name}", "tables:"]
    for table in tables:
        columns = "{id: id, v: v, n: n}" if table == "t1" else "{id: id, v: v}"
        lines.append(f"  - {{from: public.{table}, to: {table}, key: [id], columns: {columns}}}")
    return "\n".join(lines) + "\n"


def _config(
    tmp_path: Path, target: str, broker: TansuBroker, made: Sources, name: str
) -> tuple[Path, int]:
    port = free_port()
    config = tmp_path / "kafka.yaml"
    config.write_text(
        f"target: {{dsn: '{target}'}}\nmappings: [mappings/*.yaml]\n"
        f"state_dir: {tmp_path / 'state'}\nwatch_mappings: false\n"
        f"metrics: {{port: {port}}}\nbatch: {{max_age_ms: 200}}\n"
        "retry: {initial_delay_s: 0.2, max_delay_s: 2}\n"
        f"kafka:\n  bootstrap_servers: ['{broker.bootstrap}']\n  group_id: rs\n"
        "  session_timeout_ms: 6000\n  heartbeat_interval_ms: 1000\n"
        f"sources:\n  - {{name: {name}, engine: kafka, connector: {made.connectors[name]}}}\n"
    )
    return config, port


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _metric(port: int, name: str, **labels: str) -> float:
    """The sum of `name` over the series carrying these labels (0 when there is none)."""
    total = 0.0
    for line in _metrics(port).splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _rows(dsn: str, table: str, columns: str) -> list[tuple[Any, ...]]:
    return sql(dsn, f"SELECT {columns} FROM {table} ORDER BY id")


def _diff(source: str, target: str, table: str, columns: str) -> str:
    want, got = set(_rows(source, table, columns)), set(_rows(target, table, columns))
    missing, extra = sorted(want - got), sorted(got - want)
    return f"{table}: {len(missing)} missing {missing[:5]}, {len(extra)} extra {extra[:5]}"


def _context(daemon: Daemon, made: Sources, port: int, *diffs: Any) -> Any:
    def show() -> str:
        try:
            metrics = "\n".join(
                ln for ln in _metrics(port).splitlines() if ln.startswith("tunggal_kafka")
            )
        except OSError as exc:
            metrics = f"(no metrics: {exc})"
        return "\n".join(
            [*(d() for d in diffs), daemon.output()[-4000:], metrics, made.connect_log()[-2000:]]
        )

    return show


def _caught_up(port: int, name: str) -> bool:
    """Every partition the consumer fetched from is read to its end (the lag gauge is 0)."""
    lines = [
        ln
        for ln in _metrics(port).splitlines()
        if ln.startswith("tunggal_kafka_consumer_lag{") and f'source="{name}"' in ln
    ]
    return bool(lines) and all(float(ln.rsplit(" ", 1)[1]) == 0 for ln in lines)


def _settled(
    source: str, target: str, table: str, columns: str, port: int, name: str, context: Any
) -> None:
    """The target table equals the source's, the consumer is caught up, and both stay so."""

    def same() -> bool:
        return _rows(source, table, columns) == _rows(target, table, columns) and _caught_up(
            port, name
        )

    wait_until(same, 90, message=f"{table} equal to the source", context=context)
    time.sleep(3)  # nothing still in flight changes it (a late notice, a late chunk)
    assert same(), context()


def test_resync_through_connect_refills_an_emptied_table_while_writes_race_it(
    sources: Sources,  # noqa: F811
    kafka_broker: TansuBroker,
    new_db: Any,
    tmp_path: Path,
    daemon_factory: Any,
) -> None:
    name = sources.add("rsk", properties=CONNECTOR_EXTRA)
    source = sources.dsns[name]
    sql(
        source,
        "CREATE TABLE t1 (id int PRIMARY KEY, v text, n int);"
        "CREATE TABLE t2 (id int PRIMARY KEY, v text);"
        + SIGNAL
        + "INSERT INTO t1 SELECT g, 'awal ' || g, g FROM generate_series(1, 3000) g;"
        "INSERT INTO t2 SELECT g, 'dua ' || g FROM generate_series(1, 50) g;",
    )
    (tmp_path / "mappings" / f"{name}.yaml").write_text(_mapping(name, "t1", "t2"))
    target = new_db("rsk_tgt")
    sql(
        target,
        "CREATE TABLE t1 (id int PRIMARY KEY, v text, n int);"
        "CREATE TABLE t2 (id int PRIMARY KEY, v text);",
    )
    config, port = _config(tmp_path, target, kafka_broker, sources, name)
    schema = run_cli("schema", "--apply", "--config", str(config))
    assert schema.returncode == 0, schema.stdout + schema.stderr
    applied = sources.cli("apply", "--config", str(config))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.strip() == f"{name}: created"
    assert (
        'signal.data.collection": "public.tunggal_signal'
        in sources.cli("render", "--config", str(config)).stdout
    )

    daemon: Daemon = daemon_factory(config).start().wait_ready()
    t1 = lambda: _diff(source, target, "t1", "id, v, n")  # noqa: E731
    context = _context(daemon, sources, port, t1)
    wait_until(
        lambda: (
            sql(target, "SELECT count(*) FROM t1") == [(3000,)]
            and sql(target, "SELECT count(*) FROM t2") == [(50,)]
        ),
        90,
        message="initial snapshot through Kafka",
        context=context,
    )
    slot = sql(
        source,
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s",
        (f"tunggal_{name}",),
    )
    assert slot
    reads_of_t2 = _metric(port, "tunggal_events_total", source=name, table="public.t2", op="r")

    # The target table emptied by mistake, and a row the source never had, written long ago.
    sql(target, "DELETE FROM t1")
    sql(
        target,
        "INSERT INTO t1 (id, v, n, _tunggal_source, _tunggal_position, _tunggal_ts) "
        "VALUES (99999, 'hantu', 0, %s, 1, 1)",
        (name,),
    )
    writer = Writer(source, 3400)
    writer.start()
    try:
        time.sleep(0.5)  # some writes before the request too
        resync_and_wait(config, name, "public.t1", target, context)
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.changes > 100, writer.changes

    # A last change on another table, then everything consumed and the target settled.
    sql(source, "INSERT INTO t2 VALUES (1000, 'penanda')")
    wait_until(lambda: sql(target, "SELECT 1 FROM t2 WHERE id = 1000"), 60, context=context)
    _settled(source, target, "t1", "id, v, n", port, name, context)
    assert sql(target, "SELECT 1 FROM t1 WHERE id = 99999") == []  # the stray row is gone
    assert _rows(source, "t2", "id, v") == _rows(target, "t2", "id, v")

    done = sql(
        target,
        "SELECT tables, tables_done, rows_read > 0 FROM tunggal_snapshot_requests",
    )
    assert done == [(["public.t1"], ["public.t1"], True)]
    # Kept: the connector's slot; t2 was not read again.
    assert (
        sql(
            source,
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name = %s",
            (f"tunggal_{name}",),
        )
        == slot
    )
    assert (
        _metric(port, "tunggal_events_total", source=name, table="public.t2", op="r") == reads_of_t2
    )
    assert _metric(port, "tunggal_incremental_snapshot_rows_total", source=name) > 0
    assert sql(target, "SELECT count(*) FROM tunggal_dead_letters") == [(0,)]
    output = daemon.output()
    assert "was not asked for by Tunggal" not in output
    assert "Traceback" not in output
    code, _ = daemon.terminate()
    assert code == 0, context()


def test_connectors_apply_backfills_a_table_added_to_the_mappings(
    sources: Sources,  # noqa: F811
    kafka_broker: TansuBroker,
    new_db: Any,
    tmp_path: Path,
    daemon_factory: Any,
) -> None:
    name = sources.add("bfk", properties=CONNECTOR_EXTRA)
    source = sources.dsns[name]
    sql(
        source,
        "CREATE TABLE t1 (id int PRIMARY KEY, v text, n int);"
        "CREATE TABLE t3 (id int PRIMARY KEY, v text);"
        + SIGNAL
        + "INSERT INTO t1 SELECT g, 'satu ' || g, g FROM generate_series(1, 20) g;"
        "INSERT INTO t3 SELECT g, 'tiga ' || g FROM generate_series(1, 1200) g;",
    )
    mapping = tmp_path / "mappings" / f"{name}.yaml"
    mapping.write_text(_mapping(name, "t1"))
    target = new_db("bfk_tgt")
    sql(
        target,
        "CREATE TABLE t1 (id int PRIMARY KEY, v text, n int);"
        "CREATE TABLE t3 (id int PRIMARY KEY, v text);",
    )
    config, port = _config(tmp_path, target, kafka_broker, sources, name)
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    applied = sources.cli("apply", "--config", str(config))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert applied.stdout.strip() == f"{name}: created"  # a new connector: no backfill line

    daemon: Daemon = daemon_factory(config).start().wait_ready()
    t3 = lambda: _diff(source, target, "t3", "id, v")  # noqa: E731
    context = _context(daemon, sources, port, t3)
    wait_until(
        lambda: sql(target, "SELECT count(*) FROM t1") == [(20,)],
        90,
        message="initial snapshot of t1",
        context=context,
    )

    # t3 added to the mappings; the daemon reloads them and follows t3's topic; then Connect's
    # connector is widened, which asks for t3's existing rows. The operator's order: the topic
    # does not exist yet when the consumer re-subscribes, so Connect creates it with the
    # backfill's first chunk and the consumer's pattern picks it up at its next metadata
    # refresh (up to 30 s: most of this test's time).
    mapping.write_text(_mapping(name, "t1", "t3"))
    schema = run_cli("schema", "--apply", "--config", str(config))
    assert schema.returncode == 0, schema.stdout + schema.stderr
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: f"source {name}: consuming the topics of public.t3 too" in daemon.output(),
        30,
        context=context,
    )
    widened = sources.cli("apply", "--config", str(config))
    assert widened.returncode == 0, widened.stdout + widened.stderr
    lines = widened.stdout.strip().splitlines()
    assert lines[0] == f"{name}: updated", widened.stdout
    assert re.fullmatch(rf"{name}: backfilling public\.t3 \(request tunggal-[0-9a-f]+\)", lines[1])
    assert len(lines) == 2, widened.stdout
    request = lines[1].split("(request ")[1].rstrip(")")

    # Changes made after the backfill was asked for stream in with it.
    sql(source, "UPDATE t3 SET v = 'ubah' WHERE id <= 10")
    sql(source, "DELETE FROM t3 WHERE id BETWEEN 11 AND 20")
    sql(source, "INSERT INTO t3 VALUES (5000, 'baru')")
    wait_until(
        lambda: (
            sql(target, "SELECT state FROM tunggal_snapshot_requests WHERE id = %s", (request,))
            == [("done",)]
        ),
        120,
        message="backfill of t3 done",
        context=context,
    )
    _settled(source, target, "t3", "id, v", port, name, context)
    assert sql(target, "SELECT count(*) FROM t3") == [(1191,)]
    assert sql(target, "SELECT reason, tables, tables_done FROM tunggal_snapshot_requests") == [
        ("connectors apply: tables added", ["public.t3"], ["public.t3"])
    ]
    assert sql(target, "SELECT count(*) FROM t1") == [(20,)]  # t1 not read again
    assert sql(target, "SELECT count(*) FROM tunggal_dead_letters") == [(0,)]

    again = sources.cli("apply", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{name}: unchanged"  # no second backfill
    assert sql(target, "SELECT count(*) FROM tunggal_snapshot_requests") == [(1,)]
    assert "Traceback" not in daemon.output()
    code, _ = daemon.terminate()
    assert code == 0, context()
