"""`tunggal verify` with Debezium on Kafka Connect and `tunggal run` (engine: kafka): rows in
flight are settled through Connect's slot and the consumer's committed offsets, and --repair
goes through the signal table and Kafka like any change.

Real components throughout: PostgreSQL -> Debezium on Kafka Connect (standalone) -> Kafka
(tansu, 4 partitions per topic) -> `tunggal run` -> the target PostgreSQL.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until
from tests.integration.test_connect import Sources, sources  # noqa: F401 - the fixture
from tests.integration.test_resync_kafka import CONNECTOR_EXTRA, SIGNAL, _config, _mapping
from tests.integration.test_verify import drifted, verify
from tunggal.devtools.kafkabroker import TansuBroker

pytestmark = pytest.mark.integration


class Writer(threading.Thread):
    """About 100 updates, inserts and deletes of t1 a second."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.changes = dsn, threading.Event(), 0

    def run(self) -> None:
        rnd = random.Random(3)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.01):
                key = rnd.randint(1, 3400)
                roll = rnd.random()
                if roll < 0.6:
                    conn.execute("UPDATE t1 SET v = %s, n = n + 1 WHERE id = %s", (f"v{key}", key))
                elif roll < 0.85:
                    conn.execute(
                        "INSERT INTO t1 VALUES (%s, 'sisip', 0) ON CONFLICT (id) DO NOTHING", (key,)
                    )
                else:
                    conn.execute("DELETE FROM t1 WHERE id = %s", (key,))
                self.changes += 1


def test_verify_through_kafka_settles_rows_in_flight_and_repairs(
    sources: Sources,  # noqa: F811
    kafka_broker: TansuBroker,
    new_db: Any,
    tmp_path: Path,
    daemon_factory: Any,
) -> None:
    name = sources.add("vk", properties=CONNECTOR_EXTRA)
    source = sources.dsns[name]
    sql(
        source,
        "CREATE TABLE t1 (id int PRIMARY KEY, v text, n int);"
        + SIGNAL
        + "INSERT INTO t1 SELECT g, 'awal ' || g, g FROM generate_series(1, 3000) g;",
    )
    (tmp_path / "mappings" / f"{name}.yaml").write_text(_mapping(name, "t1"))
    target = new_db("vk_tgt")
    sql(target, "CREATE TABLE t1 (id int PRIMARY KEY, v text, n int);")
    config, _ = _config(tmp_path, target, kafka_broker, sources, name)
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    applied = sources.cli("apply", "--config", str(config))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    daemon: Daemon = daemon_factory(config).start().wait_ready()
    log = lambda: daemon.output()[-3000:] + sources.connect_log()[-1500:]  # noqa: E731
    wait_until(lambda: sql(target, "SELECT count(*) FROM t1") == [(3000,)], 120, context=log)

    # Changes at a rate Connect and the test broker keep up with on a small machine: a row that
    # changes again before the last change of it arrives cannot be settled (it stays in flight).
    writer = Writer(source)
    writer.start()
    try:
        wait_until(lambda: writer.changes > 300, 30)
        code, report, stderr = verify(config, "--source", name)
        assert code == 0, (json.dumps(report, indent=1)[:3000], stderr, log())
    finally:
        writer.stop.set()
        writer.join(10)

    sql(source, "INSERT INTO t1 VALUES (5000, 'penanda', 0)")
    wait_until(lambda: sql(target, "SELECT 1 FROM t1 WHERE id = 5000"), 60, context=log)
    (kept,) = sql(target, "SELECT min(id) FROM t1 WHERE id > 10")[0]
    sql(target, "DELETE FROM t1 WHERE id = %s", (kept,))
    sql(target, "UPDATE t1 SET v = 'tangan' WHERE id = %s", (kept + 1,))
    sql(
        target,
        "INSERT INTO t1 (id, v, n, _tunggal_source, _tunggal_position, _tunggal_ts) "
        "VALUES (99999, 'hantu', 0, %s, 1, 1)",
        (name,),
    )
    code, report, stderr = verify(config, "--source", name, "--repair")
    assert code == 1, stderr
    assert drifted(report) == {
        (name, "public.t1", "missing", str(kept), ()),
        (name, "public.t1", "differing", str(kept + 1), ("v",)),
        (name, "public.t1", "extra", "99999", ()),
    }, json.dumps(report, indent=1)[:3000]
    last: list[Any] = []

    def repaired() -> bool:
        last[:] = verify(config, "--source", name)
        return last[0] == 0

    wait_until(
        repaired, 120, message="repaired", context=lambda: json.dumps(last[1])[:3000] + log()
    )
    code, _ = daemon.terminate()
    assert code == 0, log()
