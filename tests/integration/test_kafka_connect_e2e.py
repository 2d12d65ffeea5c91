"""The whole scale-out path with real components: PostgreSQL -> Debezium on Kafka Connect
(applied with `tunggal connectors apply`) -> Kafka (tansu) -> `tunggal run` with an
`engine: kafka` source -> the target PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until
from tests.integration.test_connect import (  # noqa: F401 - the fixture
    Sources,
    read_ids,
    sources,
)
from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.pgcluster import free_port

pytestmark = pytest.mark.integration


def kafka_config(
    path: Path,
    target: str,
    broker: TansuBroker,
    group: str,
    source: str,
    connector: Path | str,
    *,
    kafka_extra: str = "  session_timeout_ms: 6000\n  heartbeat_interval_ms: 1000\n",
) -> Path:
    """A tunggal.yaml at `path` reading `source` from the broker as group `group` into
    `target`; `kafka_extra` holds further indented `kafka:` lines."""
    path.write_text(
        f"target: {{dsn: '{target}'}}\nmappings: [mappings/*.yaml]\n"
        f"state_dir: {path.parent / 'state'}\nwatch_mappings: false\n"
        f"metrics: {{port: {free_port()}}}\nbatch: {{max_age_ms: 200}}\n"
        f"kafka:\n  bootstrap_servers: ['{broker.bootstrap}']\n  group_id: {group}\n"
        + kafka_extra
        + f"sources:\n  - {{name: {source}, engine: kafka, connector: {connector}}}\n"
    )
    return path


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
    config = kafka_config(
        tmp_path / "kafka.yaml", target, kafka_broker, "e2e", name, sources.connectors[name]
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


@pytest.mark.parametrize("instances", [1, 2])
def test_truncate_first_after_the_snapshot_empties_the_target(
    sources: Sources,  # noqa: F811
    kafka_broker: TansuBroker,
    new_db: Any,
    tmp_path: Path,
    daemon_factory: Any,
    instances: int,
) -> None:
    """The snapshot reads a row; the first transaction after it is a TRUNCATE, then two rows
    are inserted. The TRUNCATE has a null key: it lands on another partition than most
    snapshot rows, and was taken before any of them, placed below them, and left them all in
    the target (4 of 4 runs with two instances). Everything is on Kafka before the instances
    start, so they take the partitions in whatever order their fetches come back."""
    name = sources.add("trunc")
    mapping = tmp_path / "mappings" / f"{name}.yaml"
    mapping.write_text(
        mapping.read_text().replace("key: [id]\n", "key: [id]\n    truncate: delete_source_rows\n")
    )
    source = sources.dsns[name]
    # One snapshot row, on the last of eight partitions: the TRUNCATE most likely lands on
    # another, read first (see `client:` below), the case that went wrong. On the row's own
    # partition it would come after the row.
    topic = f"{name}.public.kv"
    kafka_broker.create_topic(topic, PARTITIONS)
    row = next(i for i in range(1, 1000) if _partition_of(name, i) == PARTITIONS - 1)
    sql(source, "INSERT INTO kv VALUES (%s, 'satu')", (row,))
    applied = sources.cli("apply", "--config", str(sources.config()))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    read_ids(kafka_broker, topic, {row}, context=sources.connect_log)  # the snapshot
    sql(source, "TRUNCATE kv")
    sql(source, "INSERT INTO kv VALUES (10, 'sepuluh'), (11, 'sebelas')")
    seen = read_ids(kafka_broker, topic, {10, 11}, context=sources.connect_log)
    assert seen[10] == seen[11] == "c"
    layout = _layout(kafka_broker, topic)
    assert layout[PARTITIONS - 1][0] == f"r{row}", layout  # the key's partition as computed

    target = new_db("trunc_tgt")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    configs = []
    for i in range(instances):  # one metrics port each
        config = kafka_config(
            tmp_path / f"kafka-{i}.yaml",
            target,
            kafka_broker,
            "trunc",
            name,
            sources.connectors[name],
            # kafka-python hands out a fetch partition by partition, in order; librdkafka on
            # tansu in the order the records were written, which would hide the bug here.
            kafka_extra="  client: kafka-python\n"
            "  session_timeout_ms: 2000\n  heartbeat_interval_ms: 500\n",
        )
        configs.append(config)
    assert run_cli("schema", "--apply", "--config", str(configs[0])).returncode == 0
    daemons: list[Daemon] = [daemon_factory(c).start() for c in configs]
    for daemon in daemons:
        daemon.wait_ready()

    def rows() -> list[tuple[Any, ...]]:
        return sql(target, "SELECT id, v FROM kv ORDER BY id")

    wait_until(
        lambda: (
            rows() == [(10, "sepuluh"), (11, "sebelas")]
            and sql(target, "SELECT count(*) FROM tunggal_truncations")[0][0] == 1
        ),
        60,
        message="the snapshot's rows truncated, the later rows there",
        context=lambda: (
            f"{rows()}\npartitions: {layout}\n"
            + "\n----\n".join(d.output()[-2000:] for d in daemons)
        ),
    )
    # Settled: nothing that arrives later brings a snapshot row back.
    time.sleep(1)
    assert rows() == [(10, "sepuluh"), (11, "sebelas")]
    [(watermark,)] = sql(target, "SELECT position FROM tunggal_truncations")
    assert int(watermark) >> 64, "the TRUNCATE kept no snapshot epoch"
    for daemon in daemons:
        code, _ = daemon.terminate()
        assert code == 0, daemon.output()[-3000:]


PARTITIONS = 8


def _partition_of(name: str, row: int) -> int:
    """The partition Connect's producer gives the key of row `row` of `name`'s kv table: its
    JsonConverter key with schema, murmur2 as Kafka's default partitioner does."""
    from kafka.partitioner.default import murmur2

    key = {
        "schema": {
            "type": "struct",
            "fields": [{"type": "int32", "optional": False, "field": "id"}],
            "optional": False,
            "name": f"{name}.public.kv.Key",
        },
        "payload": {"id": row},
    }
    return (murmur2(json.dumps(key, separators=(",", ":")).encode()) & 0x7FFFFFFF) % PARTITIONS


def _layout(broker: TansuBroker, topic: str) -> dict[int, list[str]]:
    """partition -> its events (op and id), for the message of a failure."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=2000
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        out: dict[int, list[str]] = {tp.partition: [] for tp in parts}
        for record in consumer:
            if record.value is None:
                continue
            payload = json.loads(record.value)["payload"]
            row = payload["after"] or payload["before"] or {}
            out[record.partition].append(f"{payload['op']}{row.get('id', '')}")
        return out
    finally:
        consumer.close()
