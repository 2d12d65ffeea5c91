"""`tunggal kafka offsets show|reset` against a real broker (tansu) and a real PostgreSQL target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Daemon, run_cli, wait_until
from tests.integration.test_kafka import (
    CLIENTS,
    TABLE,
    Topic,
    _config,
    _final_rows,
    _name,
    _received,
    _schema_apply,
    _setup_narrow,
    _stored_offsets,
)
from tunggal.config import KafkaConfig
from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.synth import mixed_workload
from tunggal.sources.kafka_clients import partition_bounds

pytestmark = pytest.mark.integration


def _offsets(config: Path, source: str, *args: str) -> Any:
    return run_cli("kafka", "offsets", *args, "--config", str(config), "--source", source)


def test_reset_to_earliest_reads_again_and_leaves_the_target_as_it_was(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    source, target = _name(), new_db("kafka_offsets")
    _setup_narrow(tmp_path, target, source)
    group = f"g{source}"
    config = _config(tmp_path, target, kafka_broker, source, group=group)
    _schema_apply(config)
    work = mixed_workload(1500, source=source, seed=16)
    topic = Topic(kafka_broker, f"{source}.{TABLE}", partitions=2)
    topic.send_lines(work.lines)
    topic.seal(2)  # so that tansu answers the partitions' true ends
    topic.close()
    ends = dict(topic.per_partition)
    total = sum(ends.values())

    daemon: Daemon = daemon_factory(config).start().wait_ready()
    wait_until(
        lambda: _stored_offsets(target, group, source) == ends,
        60,
        message="topic consumed",
        context=lambda: daemon.output()[-3000:],
    )
    refused = _offsets(config, source, "reset", "--to", "earliest", "--yes")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"source {source} is running" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    code, _ = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]
    assert _stored_offsets(target, group, source) == ends  # the refused reset wrote nothing

    shown = _offsets(config, source, "show", "--json")
    assert shown.returncode == 0, shown.stderr
    parts = orjson.loads(shown.stdout)
    assert parts["group"] == f"{group}.{source}"
    assert {
        (p["partition"], p["stored"], p["beginning"], p["end"], p["lag"])
        for p in parts["partitions"]
    } == {(p, n, 0, n, 0) for p, n in ends.items()}

    table = _offsets(config, source, "show", "--topic", topic.name)
    assert table.returncode == 0 and topic.name in table.stdout, table.stderr
    other = _offsets(config, source, "show", "--topic", "elsewhere")
    assert other.returncode == 2, other.stderr
    assert other.stderr.strip() == f"error: source {source} does not consume topic elsewhere"

    beyond = _offsets(config, source, "reset", "--to", str(max(ends.values()) + 1), "--yes")
    assert beyond.returncode == 2 and "is beyond the end of" in beyond.stderr, beyond.stderr
    rows_before = _final_rows(target)
    assert rows_before == [work.final[k] for k in sorted(work.final)]

    reset = _offsets(config, source, "reset", "--to", "earliest", "--yes")
    assert reset.returncode == 0, reset.stderr
    assert f"{topic.name}[0]: {ends[0]} -> 0" in reset.stdout
    assert _stored_offsets(target, group, source) == dict.fromkeys(ends, 0)

    daemon = daemon_factory(config).start().wait_ready()
    # Everything is read again: this run receives every record on the topic.
    wait_until(
        lambda: _received(config, source) >= total,
        60,
        message="records read again after the reset",
        context=lambda: daemon.output()[-3000:],
    )
    wait_until(lambda: _stored_offsets(target, group, source) == ends, 30)
    code, _ = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]
    # Old events applied again change nothing: writes are guarded by source position.
    assert _final_rows(target) == rows_before


@CLIENTS
def test_partition_bounds_are_asked_of_the_broker(kafka_broker: TansuBroker, client: str) -> None:
    name = _name()
    topic = Topic(kafka_broker, f"{name}.public.t", partitions=2)
    topic.seal(2)
    topic.send_lines([])
    topic.seal(2)
    topic.close()
    kafka = KafkaConfig(bootstrap_servers=[kafka_broker.bootstrap], client=client)
    bounds = partition_bounds(kafka, f"{name}.probe", lambda t: t == topic.name)
    assert bounds == {(topic.name, 0): (0, 2), (topic.name, 1): (0, 2)}


def test_a_target_from_before_topic_ids_runs_on_and_schema_apply_adds_the_column(
    new_db: Any,
) -> None:
    """tunggal_kafka_offsets as it was created before topic ids: offsets are written and read
    as before (no id), and `schema --apply` adds the nullable column, after which ids are kept."""
    from tests.conftest import sql
    from tunggal.sink.postgres import PostgresSink, read_kafka_offsets
    from tunggal.sink.schema import OWN_TABLES_DDL, apply_schema, plan_schema

    target = new_db("kafka_old_offsets")
    for ddl in OWN_TABLES_DDL:
        if "tunggal_kafka_offsets" not in ddl:
            sql(target, ddl)
    sql(
        target,
        "CREATE TABLE IF NOT EXISTS public.tunggal_kafka_offsets (consumer_group text NOT NULL, "
        "topic text NOT NULL, partition integer NOT NULL, next_offset bigint NOT NULL, "
        "updated_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (consumer_group, topic, partition))",
    )
    sink = PostgresSink(target, {})
    try:
        sink.introspect()
        assert "topic_id" not in sink.tables["public.tunggal_kafka_offsets"].columns
        sink.write([], {}, [], {("g", "t", 0): 5}, (), {("g", "t"): "AAAAAAAAAAAAAAAAAAAAAQ"})
        assert read_kafka_offsets(target, "g", [("t", 0)]) == {("t", 0): (5, None)}

        apply_schema(sink.engine, plan_schema({}, sink.introspect()))
        nullable = sql(
            target,
            "SELECT is_nullable FROM information_schema.columns WHERE table_name = "
            "'tunggal_kafka_offsets' AND column_name = 'topic_id'",
        )
        assert nullable == [("YES",)]
        assert read_kafka_offsets(target, "g", [("t", 0)]) == {("t", 0): (5, None)}
        sink.introspect()
        sink.write([], {}, [], {("g", "t", 0): 7}, (), {("g", "t"): "AAAAAAAAAAAAAAAAAAAAAQ"})
        assert read_kafka_offsets(target, "g", [("t", 0)]) == {
            ("t", 0): (7, "AAAAAAAAAAAAAAAAAAAAAQ")
        }
    finally:
        sink.close()
