"""The whole scale-out path with real components: PostgreSQL -> Debezium on Kafka Connect
(applied with `tunggal connectors apply`) -> Kafka (tansu) -> `tunggal run` with an
`engine: kafka` source -> the target PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until
from tests.integration.test_connect import Sources, sources  # noqa: F401 - the fixture
from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.pgcluster import free_port

pytestmark = pytest.mark.integration


def test_connectors_apply_then_changes_arrive_through_kafka(
    sources: Sources,  # noqa: F811
    kafka_broker: TansuBroker,
    new_db: Any,
    tmp_path: Path,
    daemon_factory: Any,
) -> None:
    name = sources.add("e2e")
    source = sources.dsns[name]
    sql(source, "INSERT INTO kv SELECT g, 'awal ' || g FROM generate_series(1, 200) g")
    applied = sources.cli("apply", "--config", str(sources.config()))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "created" in applied.stdout

    target = new_db("e2e_tgt")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    config = tmp_path / "kafka.yaml"
    config.write_text(
        f"target: {{dsn: '{target}'}}\nmappings: [mappings/*.yaml]\n"
        f"state_dir: {tmp_path / 'state'}\nwatch_mappings: false\n"
        f"metrics: {{port: {free_port()}}}\nbatch: {{max_age_ms: 200}}\n"
        f"kafka:\n  bootstrap_servers: ['{kafka_broker.bootstrap}']\n  group_id: e2e\n"
        "  session_timeout_ms: 6000\n  heartbeat_interval_ms: 1000\n"
        f"sources:\n  - {{name: {name}, engine: kafka, connector: {sources.connectors[name]}}}\n"
    )
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    daemon: Daemon = daemon_factory(config).start().wait_ready()

    def same() -> bool:
        return sql(target, "SELECT id, v FROM kv ORDER BY id") == sql(
            source, "SELECT id, v FROM kv ORDER BY id"
        )

    port = int(config.read_text().split("metrics: {port: ")[1].split("}")[0])

    def context() -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        metrics = [
            ln for ln in text.splitlines() if ln.startswith(("tunggal_events", "tunggal_kafka"))
        ]
        rows = sql(target, "SELECT count(*) FROM kv"), sql(source, "SELECT count(*) FROM kv")
        return (
            f"rows target/source {rows}\n{daemon.output()[-3000:]}\n"
            + "\n".join(metrics)
            + "\n"
            + sources.connect_log()[-1500:]
        )

    wait_until(same, 90, message="snapshot through Kafka", context=context)
    sql(source, "UPDATE kv SET v = 'ubah' WHERE id <= 50")
    sql(source, "DELETE FROM kv WHERE id BETWEEN 51 AND 60")
    sql(source, "UPDATE kv SET id = id + 1000 WHERE id BETWEEN 61 AND 70")  # key changes
    sql(source, "INSERT INTO kv SELECT g, 'baru ' || g FROM generate_series(201, 300) g")
    wait_until(same, 60, message="streamed changes through Kafka", context=context)
    assert sql(target, "SELECT count(*) FROM kv") == [(290,)]
    offsets = sql(target, "SELECT sum(next_offset) FROM tunggal_kafka_offsets")[0][0]
    assert offsets and offsets > 300  # snapshot + changes + tombstones, stored with the rows
    code, _ = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]
