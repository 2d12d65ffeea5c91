"""`engine: kafka` sources against a real Kafka-protocol broker (tansu) and real PostgreSQL.

Debezium's messages are produced into the topics as Connect would write them (the connector
itself on Connect is covered by the connectors tests); these tests are about the consumer:
consumer groups, offsets stored with the rows, rebalances, kills and poison messages.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
import urllib.request
import uuid
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from tests.conftest import EVENTS, Daemon, run_cli, sql, wait_until
from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.pgcluster import free_port
from tunggal.devtools.synth import (
    NARROW_COLUMNS,
    NARROW_DDL,
    Workload,
    mixed_workload,
    narrow_mapping,
)

pytestmark = pytest.mark.integration

TABLE = "public.kegiatan"
# Both consumer libraries behind the Kafka source run the consumer-side tests.
CLIENTS = pytest.mark.parametrize("client", ["confluent-kafka", "kafka-python"])


def _config(
    tmp_path: Path,
    target: str,
    broker: TansuBroker,
    source: str,
    *,
    group: str,
    topics: list[str] | None = None,
    schemas: bool = False,
    batch_age_ms: int = 200,
    batch_size: int = 2000,
    when_caught_up: bool = True,
    client: str = "confluent-kafka",
    session_timeout_ms: int = 2000,  # tansu: a join takes half the session timeout
) -> Path:
    connector = tmp_path / f"connector-{source}.yaml"
    connector.write_text(
        f"name: {source}\nkind: postgresql\nschemas: {str(schemas).lower()}\n"
        "database: {host: 127.0.0.1, dbname: src, user: cdc}\n"
    )
    lines = [
        f"target: {{dsn: '{target}'}}",
        "mappings: [m.yaml]",
        f"state_dir: {tmp_path / 'state'}",
        f"batch: {{max_size: {batch_size}, max_age_ms: {batch_age_ms}, "
        f"when_caught_up: {str(when_caught_up).lower()}}}",
        "retry: {initial_delay_s: 0.2, max_delay_s: 2}",
        "watch_mappings: false",
        f"metrics: {{port: {free_port()}}}",
        "kafka:",
        f"  bootstrap_servers: ['{broker.bootstrap}']",
        f"  group_id: {group}",
        f"  client: {client}",
        f"  session_timeout_ms: {session_timeout_ms}",
        "  heartbeat_interval_ms: 500",
        "sources:",
        f"  - name: {source}",
        "    engine: kafka",
        f"    connector: {connector.name}",
    ]
    if topics:
        lines.append(f"    topics: [{', '.join(topics)}]")
    path = tmp_path / "tunggal.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _with_metrics_port(config: Path) -> Path:
    """A copy of the config with its own metrics port, for a second instance."""
    copy = config.with_name(f"tunggal-{uuid.uuid4().hex[:6]}.yaml")
    text = re.sub(
        r"metrics: \{port: \d+\}", f"metrics: {{port: {free_port()}}}", config.read_text()
    )
    copy.write_text(text)
    return copy


def _metrics_port(config: Path) -> int:
    """The metrics port `_config` gave the instance running `config`."""
    port = re.search(r"metrics: \{port: (\d+)\}", config.read_text())
    assert port is not None, config.read_text()
    return int(port.group(1))


def _received(config: Path, source: str) -> float:
    """tunggal_events_received_total of the instance running `config`."""
    port = _metrics_port(config)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    found = re.search(rf'^tunggal_events_received_total{{source="{source}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _setup_narrow(tmp_path: Path, target: str, source: str) -> None:
    sql(target, NARROW_DDL.format(name="kegiatan"))
    (tmp_path / "m.yaml").write_text(narrow_mapping(source=source))


def _schema_apply(config: Path) -> None:
    result = run_cli("schema", "--apply", "--config", str(config))
    assert result.returncode == 0, result.stderr


class Topic:
    """Produces replay-file lines into a topic and remembers how many landed per partition."""

    def __init__(self, broker: TansuBroker, name: str, partitions: int) -> None:
        broker.create_topic(name, partitions)
        self.name = name
        self.producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        self.per_partition: Counter[int] = Counter()

    def send_lines(self, lines: list[bytes]) -> None:
        futures = []
        for line in lines:
            record = orjson.loads(line) if line.startswith(b"{") else None
            if record is None or "destination" not in record:
                futures.append(self.producer.send(self.name, key=b"poison", value=line))
                continue
            key, value = record["key"], record["value"]
            futures.append(
                self.producer.send(
                    self.name,
                    key=_bytes(key),
                    value=_bytes(value),
                )
            )
        self.producer.flush()
        for future in futures:
            self.per_partition[future.get(timeout=30).partition] += 1

    def seal(self, partitions: int) -> None:
        """One tombstone per partition, each in a batch of its own: tansu answers ListOffsets
        LATEST with the last batch's first offset + 1, the end only when that batch holds one
        record (real Kafka answers the end). Tombstones change no row."""
        for partition in range(partitions):
            sent = self.producer.send(self.name, key=b'{"id": 0}', value=None, partition=partition)
            self.producer.flush()
            self.per_partition[sent.get(timeout=30).partition] += 1

    def close(self) -> None:
        self.producer.close()


def _bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else orjson.dumps(value)


def _final_rows(target: str) -> list[tuple[Any, ...]]:
    return sql(target, f"SELECT {', '.join(NARROW_COLUMNS)} FROM kegiatan ORDER BY id")


def _stored_offsets(target: str, group: str, source: str) -> dict[int, int]:
    # Each source consumes in its own group, <group_id>.<source>.
    rows = sql(
        target,
        "SELECT partition, next_offset FROM tunggal_kafka_offsets WHERE consumer_group = %s",
        (f"{group}.{source}",),
    )
    return {p: o for p, o in rows}


def _events_applied(target: str, source: str) -> int:
    rows = sql(target, "SELECT events_applied FROM tunggal_progress WHERE source = %s", (source,))
    return int(rows[0][0]) if rows else 0


def _change_events(lines: list[bytes]) -> int:
    """Events the progress table counts: every change, not tombstones."""
    return sum(1 for line in lines if orjson.loads(line)["value"] is not None)


def _applied_exactly(
    target: str,
    topic: Topic,
    work: Workload,
    group_source: tuple[str, str],
    daemons: list[Daemon],
    what: str,
    timeout: float = 60,
) -> None:
    """Every change of `work` applied once: the target's rows are the workload's final ones,
    the stored offsets are the partitions' ends, and the events counted are the changes sent."""
    group, source = group_source
    expected = [work.final[k] for k in sorted(work.final)]
    wait_until(
        lambda: _final_rows(target) == expected,
        timeout,
        message=what,
        context=lambda: "\n----\n".join(d.output()[-3000:] for d in daemons),
    )
    wait_until(lambda: _stored_offsets(target, group, source) == dict(topic.per_partition), 30)
    assert _events_applied(target, source) == _change_events(work.lines)


def _down_within(seconds: float, port: int, source: str, daemon: Daemon, what: str) -> None:
    """`tunggal_source_up` of `source` drops to 0 within `seconds` from now."""
    started = time.monotonic()
    wait_until(
        lambda: _source_up(port, source) == 0,
        seconds,
        message=f"source down {what}",
        context=lambda: daemon.output()[-3000:],
    )
    assert time.monotonic() - started < seconds


def _warnings(daemon: Daemon, text: str) -> list[str]:
    return [line for line in daemon.output().splitlines() if "WARNING" in line and text in line]


def _up_again_and_applying(
    seconds: float,
    port: int,
    daemon: Daemon,
    topic: Topic,
    work: Workload,
    sent: int,
    target: str,
    what: str,
) -> None:
    """The source is up again within `seconds`, says so, and applies the rest of `work` (the
    lines from `sent` on, sent now)."""
    source = topic.name.split(".", 1)[0]
    wait_until(
        lambda: _source_up(port, source) == 1, seconds, context=lambda: daemon.output()[-3000:]
    )
    assert "Kafka reachable again" in daemon.output()
    topic.send_lines(work.lines[sent:])
    expected = [work.final[k] for k in sorted(work.final)]
    wait_until(
        lambda: _final_rows(target) == expected,
        60,
        message=f"all changes {what}",
        context=lambda: daemon.output()[-3000:],
    )


def _name() -> str:
    return f"kf{uuid.uuid4().hex[:8]}"


@CLIENTS
def test_two_instances_share_partitions_and_survive_kill_9(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any, client: str
) -> None:
    source, target = _name(), new_db("kafka_two")
    _setup_narrow(tmp_path, target, source)
    group = f"g{source}"
    config = _config(
        tmp_path, target, kafka_broker, source, group=group, batch_age_ms=300, client=client
    )
    _schema_apply(config)
    work = mixed_workload(30_000, source=source, seed=11)
    topic = Topic(kafka_broker, f"{source}.{TABLE}", partitions=4)
    topic.send_lines(work.lines[:10_000])

    first: Daemon = daemon_factory(config).start().wait_ready()
    second: Daemon = daemon_factory(_with_metrics_port(config)).start().wait_ready()
    # Both instances hold partitions once the group has settled.
    wait_until(
        lambda: all(_last_assignment(d, source) for d in (first, second)),
        60,
        message="partitions shared by both instances",
        context=lambda: first.output()[-2000:] + "\n----\n" + second.output()[-2000:],
    )
    shared = {d: _last_assignment(d, source) for d in (first, second)}
    assert all(shared.values()), shared

    rest = work.lines[10_000:]
    writer = threading.Thread(
        target=lambda: [topic.send_lines(rest[i : i + 2000]) for i in range(0, len(rest), 2000)]
    )
    writer.start()
    time.sleep(1.0)
    first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    first.kill()
    writer.join(timeout=120)
    topic.close()

    expected = [work.final[k] for k in sorted(work.final)]
    wait_until(
        lambda: _final_rows(target) == expected,
        120,
        message="target equal to the workload's final state after kill -9",
        context=lambda: second.output()[-3000:],
    )
    # No offset skipped, none missing: every partition's stored offset is its message count.
    wait_until(
        lambda: _stored_offsets(target, group, source) == dict(topic.per_partition),
        30,
        message="stored offsets at the end of every partition",
        context=lambda: f"{_stored_offsets(target, group, source)} vs {dict(topic.per_partition)}",
    )
    # Exactly once: no batch was applied twice, none was lost.
    assert _events_applied(target, source) == _change_events(work.lines)
    code, _ = second.terminate()
    assert code == 0, second.output()[-3000:]


def _last_assignment(daemon: Daemon, source: str) -> str:
    """The partitions the instance holds, as its newest assigned/revoked line says."""
    lines = [
        ln
        for ln in daemon.output().splitlines()
        if f"source {source}: " in ln and "; holding " in ln
    ]
    if not lines:
        return ""
    held = lines[-1].rsplit("; holding ", 1)[1].strip()
    return "" if held == "nothing" else held


@CLIENTS
def test_restart_resumes_from_offsets_stored_in_the_target(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any, client: str
) -> None:
    source, target = _name(), new_db("kafka_resume")
    _setup_narrow(tmp_path, target, source)
    group = f"g{source}"
    config = _config(tmp_path, target, kafka_broker, source, group=group, client=client)
    _schema_apply(config)
    work = mixed_workload(8000, source=source, seed=12)
    topic = Topic(kafka_broker, f"{source}.{TABLE}", partitions=2)
    half = len(work.lines) // 2
    topic.send_lines(work.lines[:half])

    daemon: Daemon = daemon_factory(config).start().wait_ready()
    wait_until(
        lambda: _stored_offsets(target, group, source) == dict(topic.per_partition),
        60,
        message="first half consumed",
        context=lambda: daemon.output()[-3000:],
    )
    code, _ = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]
    applied_first = _events_applied(target, source)
    assert applied_first == _change_events(work.lines[:half])

    # Kafka's committed offsets go back to 0; only the target's offsets are right now.
    rewind = KafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap, group_id=f"{group}.{source}", **_quick()
    )
    parts = [TopicPartition(topic.name, p) for p in range(2)]
    rewind.assign(parts)
    rewind.commit({tp: OffsetAndMetadata(0, "", -1) for tp in parts})
    assert rewind.committed(parts[0]) == 0
    rewind.close()

    topic.send_lines(work.lines[half:])
    topic.close()
    daemon = daemon_factory(config).start().wait_ready()
    _applied_exactly(
        target, topic, work, (group, source), [daemon], "second half applied after restart"
    )
    log = daemon.output()
    assert "from target offsets: " + topic.name in log, log[-3000:]
    # After a target commit the offsets also go to Kafka, for standard lag tools.
    check = KafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap, group_id=f"{group}.{source}", **_quick()
    )
    wait_until(
        lambda: sum(check.committed(tp) or 0 for tp in parts) == sum(topic.per_partition.values()),
        30,
        message="offsets committed to Kafka too",
    )
    check.close()
    daemon.terminate()


def _quick() -> dict[str, Any]:
    return {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "enable_auto_commit": False}


@CLIENTS
def test_poison_message_is_dead_lettered_and_the_partition_goes_on(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any, client: str
) -> None:
    source, target = _name(), new_db("kafka_poison")
    _setup_narrow(tmp_path, target, source)
    group = f"g{source}"
    config = _config(tmp_path, target, kafka_broker, source, group=group, client=client)
    _schema_apply(config)
    work = mixed_workload(2000, source=source, seed=13)
    lines = list(work.lines)
    lines.insert(100, b"this is not json \xff\xfe")
    lines.insert(
        500, orjson.dumps({"destination": "x", "key": '{"id": 1}', "value": '{"not": "debezium"}'})
    )
    topic = Topic(kafka_broker, f"{source}.{TABLE}", partitions=1)
    topic.send_lines(lines)
    topic.close()

    daemon: Daemon = daemon_factory(config).start().wait_ready()
    expected = [work.final[k] for k in sorted(work.final)]
    wait_until(
        lambda: _final_rows(target) == expected,
        60,
        message="good rows around the poison landed",
        context=lambda: daemon.output()[-3000:],
    )
    wait_until(
        lambda: _stored_offsets(target, group, source) == {0: len(lines)},
        30,
        message="offset past the last message",
        context=lambda: f"{_stored_offsets(target, group, source)}\n{daemon.output()[-3000:]}",
    )
    letters = sql(
        target,
        "SELECT source, destination, error_class, raw_value FROM tunggal_dead_letters ORDER BY id",
    )
    assert [(s, d, c) for s, d, c, _ in letters] == [
        (source, topic.name, "DecodeError"),
        (source, topic.name, "DecodeError"),
    ]
    assert letters[0][3].startswith("this is not json")
    assert '"not": "debezium"' in letters[1][3]
    assert daemon.alive()
    daemon.terminate()


@CLIENTS
def test_rebalance_flushes_the_batch_in_hand(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any, client: str
) -> None:
    """A holds a batch (long max_age) when B joins: A must commit it before giving up its
    partitions, or B would apply the same events again from the target's older offsets."""
    source, target = _name(), new_db("kafka_rebalance")
    _setup_narrow(tmp_path, target, source)
    group = f"g{source}"
    config = _config(
        tmp_path,
        target,
        kafka_broker,
        source,
        group=group,
        batch_age_ms=15_000,
        batch_size=100_000,
        when_caught_up=False,  # so that A holds what it read
        client=client,
    )
    _schema_apply(config)
    work = mixed_workload(12_000, source=source, seed=14)
    topic = Topic(kafka_broker, f"{source}.{TABLE}", partitions=4)
    # Sent before A starts, so that how long sending takes does not eat into A's batch age.
    topic.send_lines(work.lines[:6000])
    first: Daemon = daemon_factory(config).start().wait_ready()
    wait_until(lambda: _last_assignment(first, source), 30, message="first instance assigned")
    wait_until(lambda: _received(config, source) >= 6000, 15, message="A to read the first 6000")
    assert _events_applied(target, source) == 0  # A holds them all in one batch

    second: Daemon = daemon_factory(_with_metrics_port(config)).start().wait_ready()
    wait_until(
        lambda: _last_assignment(second, source),
        60,
        message="second instance assigned",
        context=lambda: second.output()[-2000:],
    )
    topic.send_lines(work.lines[6000:])
    topic.close()
    _applied_exactly(
        target, topic, work, (group, source), [first, second], "all rows after the rebalance"
    )
    for d in (first, second):
        code, _ = d.terminate()
        assert code == 0, d.output()[-2000:]


def test_kafka_and_replay_produce_identical_rows(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    """A real Debezium capture arriving through Kafka and through the replay path (the
    embedded engine's decoder) leaves the same target rows."""
    from tests.integration.test_replay import CAPTURED_MAPPING, CAPTURED_T_COLUMNS, CAPTURED_TARGET

    source = _name()
    via_kafka, via_replay = new_db("kafka_same"), new_db("replay_same")
    mapping = CAPTURED_MAPPING.replace("source: cap", f"source: {source}")
    (tmp_path / "m.yaml").write_text(mapping)
    for dsn in (via_kafka, via_replay):
        sql(dsn, CAPTURED_TARGET)
    lines = (EVENTS / "pg_alltypes_schemas.jsonl").read_bytes().splitlines()
    topics = [f"{source}.public.k", f"{source}.public.t"]
    producers = {t: Topic(kafka_broker, t, partitions=1) for t in topics}
    for line in lines:
        record = orjson.loads(line)
        producers[record["destination"].replace("cap.", f"{source}.", 1)].send_lines([line])
    for p in producers.values():
        p.close()

    config = _config(
        tmp_path, via_kafka, kafka_broker, source, group=f"g{source}", topics=topics, schemas=True
    )
    _schema_apply(config)
    daemon: Daemon = daemon_factory(config).start().wait_ready()
    wait_until(
        lambda: _events_applied(via_kafka, source) == 10,
        60,
        message="capture consumed",
        context=lambda: daemon.output()[-3000:],
    )
    daemon.terminate()

    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    (replay_dir / "m.yaml").write_text(mapping)
    replay_config = replay_dir / "tunggal.yaml"
    replay_config.write_text(
        f"target: {{dsn: '{via_replay}'}}\nmappings: [m.yaml]\nstate_dir: {replay_dir}\n"
    )
    _schema_apply(replay_config)
    events = replay_dir / "events.jsonl"
    events.write_bytes(b"\n".join(_renamed(line, source) for line in lines) + b"\n")
    result = run_cli("replay", "--config", str(replay_config), "--source", source, str(events))
    assert result.returncode == 0, result.stderr

    columns = ", ".join(f"{c}::text" for c in CAPTURED_T_COLUMNS)
    got_kafka = sql(via_kafka, f"SELECT {columns}, _tunggal_position FROM t ORDER BY id")
    got_replay = sql(via_replay, f"SELECT {columns}, _tunggal_position FROM t ORDER BY id")
    assert got_kafka and got_kafka == got_replay
    assert sql(via_kafka, "SELECT * FROM k") == sql(via_replay, "SELECT * FROM k") == []


def _renamed(line: bytes, source: str) -> bytes:
    record = orjson.loads(line)
    record["destination"] = record["destination"].replace("cap.", f"{source}.", 1)
    return orjson.dumps(record)


def test_target_outage_pauses_consumption_and_loses_nothing(
    kafka_broker: TansuBroker, tmp_path: Path, daemon_factory: Any
) -> None:
    """The target stops for 10 s mid-stream: retries, no dead letters, nothing lost, no offset
    committed for rows that were not written."""
    from tunggal.devtools.pgcluster import PgCluster

    cluster = PgCluster(name="kafka-outage").start()
    try:
        source = _name()
        target = cluster.create_database("outage")
        _setup_narrow(tmp_path, target, source)
        group = f"g{source}"
        config = _config(tmp_path, target, kafka_broker, source, group=group)
        _schema_apply(config)
        work = mixed_workload(20_000, source=source, seed=15)
        topic = Topic(kafka_broker, f"{source}.{TABLE}", partitions=2)
        topic.send_lines(work.lines[:4000])
        daemon: Daemon = daemon_factory(config).start().wait_ready()
        wait_until(lambda: _events_applied(target, source) > 0, 60, context=daemon.output)

        cluster.stop()
        topic.send_lines(work.lines[4000:16_000])  # arrives while the target is down
        time.sleep(10)
        cluster.start()
        topic.send_lines(work.lines[16_000:])
        topic.close()

        _applied_exactly(
            target,
            topic,
            work,
            (group, source),
            [daemon],
            "target equal after the outage",
            timeout=90,
        )
        assert sql(target, "SELECT count(*) FROM tunggal_dead_letters") == [(0,)]
        assert "target write failed" in daemon.output()
        code, _ = daemon.terminate()
        assert code == 0, daemon.output()[-3000:]
    finally:
        cluster.destroy()


@CLIENTS
def test_broker_lost_with_its_topics_recovers_without_restart(
    new_db: Any, tmp_path: Path, daemon_factory: Any, client: str
) -> None:
    """The broker goes away (memory storage: its topics go with it) and comes back; Connect
    re-creates the topic. The source shows up 0 meanwhile, then resumes: the stored offsets
    are beyond the new topic's end, so the partitions start again from the beginning."""
    broker = TansuBroker().start()
    try:
        source, target = _name(), new_db("kafka_lost")
        _setup_narrow(tmp_path, target, source)
        group = f"g{source}"
        config = _config(tmp_path, target, broker, source, group=group, client=client)
        _schema_apply(config)
        port = _metrics_port(config)
        work = mixed_workload(6000, source=source, seed=16)
        topic = Topic(broker, f"{source}.{TABLE}", partitions=2)
        topic.send_lines(work.lines[:4000])
        topic.close()
        daemon: Daemon = daemon_factory(config).start().wait_ready()
        wait_until(
            lambda: _events_applied(target, source) == _change_events(work.lines[:4000]),
            60,
            context=daemon.output,
        )
        assert _source_up(port, source) == 1

        broker.stop()
        wait_until(
            lambda: _source_up(port, source) == 0,
            60,
            message="source down while the broker is gone",
            context=lambda: daemon.output()[-3000:],
        )
        assert "Kafka unreachable" in daemon.output()

        broker = TansuBroker(broker.port).start()
        topic = Topic(broker, f"{source}.{TABLE}", partitions=2)
        topic.send_lines(work.lines[4000:])
        topic.close()
        expected = [work.final[k] for k in sorted(work.final)]
        wait_until(
            lambda: _final_rows(target) == expected,
            90,
            message="changes from the re-created topic",
            context=lambda: daemon.output()[-3000:],
        )
        wait_until(lambda: _source_up(port, source) == 1, 30, context=daemon.output)
        # The stored offsets now describe the new topic.
        wait_until(lambda: _stored_offsets(target, group, source) == dict(topic.per_partition), 30)
        code, _ = daemon.terminate()
        assert code == 0, daemon.output()[-3000:]
    finally:
        broker.stop()


@CLIENTS
def test_frozen_broker_shows_down_within_the_session_timeout(
    new_db: Any, tmp_path: Path, daemon_factory: Any, client: str
) -> None:
    """A hung broker (SIGSTOP: its connections stay open, nothing is refused) is reported
    within the session timeout: `tunggal_source_up` 0 and one WARNING; after SIGCONT it is
    up again and nothing is lost. `/status` and `tunggal status` list the assigned
    partitions with their offsets and lag."""
    session_s = 6.0
    broker = TansuBroker().start()  # its own: freezing it must not stall other tests
    assert broker.proc is not None
    try:
        source, target = _name(), new_db("kafka_frozen")
        _setup_narrow(tmp_path, target, source)
        config = _config(
            tmp_path,
            target,
            broker,
            source,
            group=f"g{source}",
            client=client,
            session_timeout_ms=int(session_s * 1000),
        )
        _schema_apply(config)
        port = _metrics_port(config)
        work = mixed_workload(3000, source=source, seed=4)
        topic = Topic(broker, f"{source}.{TABLE}", partitions=2)
        topic.send_lines(work.lines[:2000])
        daemon: Daemon = daemon_factory(config).start().wait_ready()
        wait_until(
            lambda: _events_applied(target, source) == _change_events(work.lines[:2000]),
            60,
            context=daemon.output,
        )
        assert _source_up(port, source) == 1

        def partitions() -> list[dict[str, Any]]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
                found = orjson.loads(r.read())
            [mine] = [s for s in found["sources"] if s["name"] == source]
            return list(mine["partitions"] or [])

        caught_up = [
            {"topic": topic.name, "partition": p, "offset": n, "end": n, "lag": 0}
            for p, n in sorted(topic.per_partition.items())
        ]
        wait_until(lambda: partitions() == caught_up, 30, context=lambda: str(partitions()))
        shown = run_cli("status", "--config", str(config))
        assert shown.returncode == 0, shown.stderr
        for p, n in sorted(topic.per_partition.items()):
            assert re.search(
                rf"^{source}\s+{re.escape(topic.name)}\s+{p}\s+{n}\s+{n}\s+0$", shown.stdout, re.M
            ), shown.stdout

        broker.proc.send_signal(signal.SIGSTOP)
        _down_within(session_s + 6, port, source, daemon, "while the broker is frozen")
        warned = _warnings(daemon, f"source {source}: Kafka")
        assert any("still retrying" in line for line in warned), daemon.output()[-3000:]

        broker.proc.send_signal(signal.SIGCONT)
        _up_again_and_applying(60, port, daemon, topic, work, 2000, target, "after the freeze")
        topic.close()
        code, _ = daemon.terminate()
        assert code == 0, daemon.output()[-3000:]
    finally:
        if broker.proc.poll() is None:
            broker.proc.send_signal(signal.SIGCONT)
        broker.stop()


class _LeaderThatNeverSyncs:
    """A bare group member speaking Kafka's group protocol (kafka-python's wire classes). It
    joins first, so the broker makes it the group's leader, and hands every partition to the
    other member. After `withhold()` it lets a newcomer ask in, which starts a rebalance, and
    from then on sends no SyncGroup while it heartbeats on: the other members' join never
    completes, as in a broker stuck in "rebalance in progress". `complete()` ends that: it
    joins once more and syncs. (Leaving instead does not do: tansu then waits on the newcomer,
    which never joined.)"""

    CLIENT_ID = "stuck-leader"

    def __init__(
        self, broker: TansuBroker, group: str, topic: str, partitions: int, protocol: str
    ) -> None:
        from kafka.client_async import KafkaClient
        from kafka.protocol.types import Array, Bytes, Int16, Int32, Schema, String

        self.group, self.topic, self.partitions = group, topic, partitions
        self.protocol = protocol  # the assignor's name: all members must offer it
        # The consumer protocol's subscription (v1, as cooperative-sticky members send it) and
        # assignment: librdkafka's assignor reads both.
        self._subscription = Schema(
            ("version", Int16),
            ("topics", Array(String("utf-8"))),
            ("user_data", Bytes),
            ("owned_partitions", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))),
        )
        self._assignment = Schema(
            ("version", Int16),
            ("assignment", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))),
            ("user_data", Bytes),
        )
        self.client = KafkaClient(bootstrap_servers=[broker.bootstrap], client_id=self.CLIENT_ID)
        self.node = self.client.least_loaded_node()
        self.member_id, self.generation = "", -1
        self.joins = 0
        self.error: BaseException | None = None
        self._withhold, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _LeaderThatNeverSyncs:
        self._thread.start()
        wait_until(lambda: self.joins > 0 or self.error is not None, 30, message="leader joined")
        assert self.error is None, self.error
        return self

    def withhold(self) -> None:
        self._withhold.set()

    def complete(self) -> None:
        self._withhold.clear()

    def leave(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert self.error is None, self.error

    def _call(self, request: Any) -> Any:
        while not self.client.ready(self.node):
            self.client.poll(timeout_ms=100)
        future = self.client.send(self.node, request)
        deadline = time.monotonic() + 30
        while not future.is_done and time.monotonic() < deadline:
            self.client.poll(timeout_ms=100)
        if not future.is_done or future.failed():
            raise RuntimeError(f"{type(request).__name__}: {future.exception or 'no answer'}")
        return future.value

    def _join(self, member_id: str) -> Any:
        from kafka.protocol.group import JoinGroupRequest

        metadata = self._subscription.encode([1, [self.topic], None, []])
        protocols = [(self.protocol, metadata)]
        return self._call(
            JoinGroupRequest[4](self.group, 6000, 60000, member_id, "consumer", protocols)
        )

    def _join_as_member(self) -> list[str]:
        while True:
            answer = self._join(self.member_id)
            self.member_id = answer.member_id
            if answer.error_code != 79:  # MEMBER_ID_REQUIRED: ask again with the id given
                break
        assert answer.error_code == 0, answer
        assert answer.leader_id == self.member_id, "the stuck leader must join first"
        self.generation = answer.generation_id
        self.joins += 1
        return [m[0] for m in answer.members]

    def _sync(self, members: list[str]) -> bool:
        """False: a newer generation began meanwhile."""
        from kafka.protocol.group import SyncGroupRequest

        everything = [(self.topic, list(range(self.partitions)))]
        assignments = [
            (
                m,
                self._assignment.encode(
                    [0, [] if m.startswith(self.CLIENT_ID) else everything, None]
                ),
            )
            for m in members
        ]
        answer = self._call(
            SyncGroupRequest[2](self.group, self.generation, self.member_id, assignments)
        )
        assert answer.error_code in (0, 27), answer
        return bool(answer.error_code == 0)

    def _run(self) -> None:
        from kafka.protocol.group import HeartbeatRequest, LeaveGroupRequest

        try:
            self._sync(self._join_as_member())
            newcomer_asked = owe_sync = False
            while not self._stop.wait(0.3):
                if self._withhold.is_set() and not newcomer_asked:
                    self._join("")  # answered MEMBER_ID_REQUIRED; enough to start a rebalance
                    newcomer_asked = True
                if owe_sync and not self._withhold.is_set():
                    # The generation withheld is gone by now: join the current one, and sync.
                    owe_sync = not self._sync(self._join_as_member())
                    continue
                beat = self._call(HeartbeatRequest[1](self.group, self.generation, self.member_id))
                if beat.error_code == 27:  # REBALANCE_IN_PROGRESS: join the new generation
                    members = self._join_as_member()
                    owe_sync = self._withhold.is_set() or not self._sync(members)
                else:
                    assert beat.error_code == 0, beat
            self._call(LeaveGroupRequest[1](self.group, self.member_id))
        except BaseException as exc:
            self.error = exc


@CLIENTS
def test_join_that_never_completes_shows_down_within_the_session_timeout(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any, client: str
) -> None:
    """A group join that never completes (the group's leader never sends its SyncGroup, so the
    broker keeps answering "rebalance in progress"): the broker and the coordinator answer
    everything else, so nothing looks silent. `tunggal_source_up` is 0 and one WARNING says so
    within the session timeout; when the join completes, up 1 again and the rows flow."""
    session_s = 6.0
    source, target = _name(), new_db("kafka_join")
    _setup_narrow(tmp_path, target, source)
    group = f"g{source}"
    config = _config(
        tmp_path,
        target,
        kafka_broker,
        source,
        group=group,
        client=client,
        session_timeout_ms=int(session_s * 1000),
    )
    _schema_apply(config)
    port = _metrics_port(config)
    work = mixed_workload(3000, source=source, seed=7)
    topic = Topic(kafka_broker, f"{source}.{TABLE}", partitions=2)
    topic.send_lines(work.lines[:2000])
    # The source's own group: `<group_id>.<source>`.
    protocol = "cooperative-sticky" if client == "confluent-kafka" else "range"
    leader = _LeaderThatNeverSyncs(
        kafka_broker, f"{group}.{source}", topic.name, 2, protocol
    ).start()
    try:
        daemon: Daemon = daemon_factory(config).start().wait_ready()
        wait_until(
            lambda: _events_applied(target, source) == _change_events(work.lines[:2000]),
            60,
            context=daemon.output,
        )
        assert _source_up(port, source) == 1

        leader.withhold()
        _down_within(session_s + 6, port, source, daemon, "while the join does not complete")
        warned = _warnings(daemon, f"source {source}: Kafka group join not completed")
        assert len(warned) == 1, daemon.output()[-3000:]
        # Nothing else was wrong: the broker and the coordinator answered throughout.
        assert "silent" not in daemon.output() and "unreachable" not in daemon.output()
        wait_until(lambda: leader.joins >= 3, 10, message="the leader in the stuck generation")

        leader.complete()
        _up_again_and_applying(
            30, port, daemon, topic, work, 2000, target, "after the join completed"
        )
        code, _ = daemon.terminate()
        assert code == 0, daemon.output()[-3000:]
    finally:
        topic.close()
        leader.leave()


def _source_up(port: int, source: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f'tunggal_source_up{{source="{source}"}}'):
            return float(line.split()[-1])
    return -1.0


def test_metrics_port_in_use_stops_run_with_one_line(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path
) -> None:
    source, target = _name(), new_db("kafka_port")
    _setup_narrow(tmp_path, target, source)
    config = _config(tmp_path, target, kafka_broker, source, group=f"g{source}")
    _schema_apply(config)
    port = _metrics_port(config)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert str(port) in errors[0] and "metrics.port" in errors[0], errors[0]


def test_stale_cached_end_is_not_taken_for_a_recreated_topic(kafka_broker: TansuBroker) -> None:
    """librdkafka keeps a partition's end from when the consumer last owned it, until the
    first fetch after it is assigned again: a partition given back by a rebalance after
    others read on looks as if its topic was re-created. The source must ask the broker
    before it reads the partition again from offset 0 (the issue: 50k events read twice).

    The consumer's cache is primed by hand (assign, read, unassign, more records, assign
    again) and the source looks at it at once, as its loop does right after a rebalance.
    kafka-python forgets the end on unassign (None until the next fetch): not at risk."""
    from confluent_kafka import TopicPartition as CTP

    from tunggal.config import KafkaConfig
    from tunggal.metrics import Metrics
    from tunggal.sources.kafka import KafkaSource
    from tunggal.sources.kafka_clients import ConfluentClient

    def primed() -> tuple[Topic, ConfluentClient] | None:
        """A consumer whose cached end (5) lags the stored offset (10), or None when the
        client's background fetch refreshed it before it could be looked at."""
        topic = Topic(kafka_broker, f"{_name()}.{TABLE}", partitions=1)
        tp = (topic.name, 0)
        for _ in range(5):
            topic.seal(1)
        client = ConfluentClient(kafka, "stale")
        consumer = client._consumer
        consumer.assign([CTP(*tp, 0)])
        wait_until(lambda: len(client.poll(10, 0.5)) == 0 and client.highwater(tp) == 5, 30)
        consumer.unassign()
        for _ in range(5):  # read by another instance meanwhile; stored offset 10
            topic.seal(1)
        consumer.assign([CTP(*tp, 10)])
        # Assigning starts a fetch in the background: paused at once, the end mostly stays
        # the old one; any end below 10 is what makes the partition look re-created.
        consumer.pause([CTP(*tp, 10)])
        high = client.highwater(tp)
        if high is not None and high < 10:
            return topic, client
        client.close()
        topic.close()
        return None

    kafka = KafkaConfig(bootstrap_servers=[kafka_broker.bootstrap], group_id="stale")
    ready = None
    for _ in range(5):
        ready = primed()
        if ready is not None:
            break
    assert ready is not None, "the client refreshed its cached end before it was looked at, 5 times"
    topic, client = ready
    tp = (topic.name, 0)
    try:
        source = KafkaSource("stale", kafka, topics=[tp[0]], load_offsets=dict, metrics=Metrics())
        source._client = client
        source._consumed[tp] = 10
        source._record_lag()
        assert source._consumed[tp] == 10, "taken for a re-created topic"
        assert client.end_offset(tp) == 10
    finally:
        client.close()
        topic.close()


@CLIENTS
def test_end_offset_is_asked_of_the_broker(kafka_broker: TansuBroker, client: str) -> None:
    """What the re-created-topic check trusts: the end as the broker says it now, without a
    fetch or an assignment that would fill the client's cache."""
    from tunggal.config import KafkaConfig
    from tunggal.sources.kafka_clients import open_client

    topic = Topic(kafka_broker, f"{_name()}.{TABLE}", partitions=2)
    topic.send_lines([])
    topic.seal(2)
    topic.seal(2)
    topic.close()
    kafka = KafkaConfig(bootstrap_servers=[kafka_broker.bootstrap], group_id="ends", client=client)
    consumer = open_client(kafka, "ends")
    try:
        assert [consumer.end_offset((topic.name, p)) for p in range(2)] == [2, 2]
        # a partition the broker does not have: no end, and soon (not request_timeout_ms)
        started = time.monotonic()
        assert consumer.end_offset((topic.name, 7)) in (None, 0)
        assert time.monotonic() - started < 15
    finally:
        consumer.close()


def test_joining_instance_does_not_stop_the_other_instances_commits(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    """Cooperative-sticky (confluent-kafka's default): while a second instance joins, the first
    gives away only the partitions that move and goes on reading and committing the others.
    With an eager assignment every instance gives up everything for the whole join (on tansu
    a join round takes about half the session timeout), so its commits stop meanwhile.
    Nothing is lost or applied twice."""
    session_s = 6.0
    source, target = _name(), new_db("kafka_coop")
    _setup_narrow(tmp_path, target, source)
    group = f"g{source}"
    config = _config(
        tmp_path,
        target,
        kafka_broker,
        source,
        group=group,
        session_timeout_ms=int(session_s * 1000),
    )
    _schema_apply(config)
    work = mixed_workload(40_000, source=source, seed=17)
    topic = Topic(kafka_broker, f"{source}.{TABLE}", partitions=4)
    topic.send_lines(work.lines[:2000])
    first: Daemon = daemon_factory(config).start().wait_ready()
    wait_until(
        lambda: _last_assignment(first, source).count("[") == 4,
        60,
        message="the first instance holding all partitions",
        context=lambda: first.output()[-2000:],
    )

    # The stored offsets, sampled every 50 ms while changes stream in steadily.
    samples: list[tuple[float, dict[int, int]]] = []
    done = threading.Event()

    def sample() -> None:
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            while not done.is_set():
                rows = conn.execute(
                    "SELECT partition, next_offset FROM tunggal_kafka_offsets "
                    "WHERE consumer_group = %s",
                    (f"{group}.{source}",),
                ).fetchall()
                samples.append((time.monotonic(), {p: o for p, o in rows}))
                done.wait(0.05)

    rest = work.lines[2000:]
    joined_event = threading.Event()

    def stream() -> None:
        """About 1500 changes/s until a second after the join, then the rest at once."""
        i = 0
        while i < len(rest) and not joined_event.wait(0.1):
            topic.send_lines(rest[i : i + 150])
            i += 150
        time.sleep(1.0)
        topic.send_lines(rest[i:])

    sampler, writer = threading.Thread(target=sample), threading.Thread(target=stream)
    sampler.start()
    writer.start()
    try:
        time.sleep(2.0)
        join_started = time.monotonic()
        second: Daemon = daemon_factory(_with_metrics_port(config)).start().wait_ready()
        wait_until(
            lambda: _last_assignment(second, source),
            60,
            message="second instance assigned",
            context=lambda: second.output()[-2000:],
        )
        joined = time.monotonic()
        assert writer.is_alive(), "the changes stopped streaming before the join ended"
    finally:
        joined_event.set()
        writer.join(timeout=120)
        done.set()
        sampler.join(timeout=10)
    topic.close()

    kept = {int(p) for p in re.findall(r"\[(\d+)\]", _last_assignment(first, source))}
    moved = {int(p) for p in re.findall(r"\[(\d+)\]", _last_assignment(second, source))}
    assert kept and moved and kept | moved == {0, 1, 2, 3} and not kept & moved, (kept, moved)
    # Only the partitions that moved were revoked from the first instance.
    revoked = [ln for ln in first.output().splitlines() if f"source {source}: revoked" in ln]
    assert revoked, first.output()[-3000:]
    for line in revoked:
        assert not any(f"[{p}]" in line.split("; holding")[0] for p in kept), line

    # The first instance's commits on the partitions it kept went on during the join.
    during = [(t, {p: o for p, o in s.items() if p in kept}) for t, s in samples]
    during = [(t, s) for t, s in during if join_started <= t <= joined]
    advances = [t for (_, before), (t, s) in pairwise(during) if s != before]
    assert len(advances) >= 3, f"{len(advances)} commits in {joined - join_started:.1f}s"
    gaps = [b - a for a, b in zip([join_started, *advances], [*advances, joined], strict=True)]
    assert max(gaps) < session_s / 3, (
        f"the first instance's commits stopped for {max(gaps):.1f}s during the join "
        f"({joined - join_started:.1f}s)"
    )

    _applied_exactly(
        target, topic, work, (group, source), [first, second], "all rows after the join"
    )
    for d in (first, second):
        code, _ = d.terminate()
        assert code == 0, d.output()[-2000:]


def _topic_id(broker: TansuBroker, topic: str) -> str:
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    found = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=10)
    return str(found.topic_id)


def _stored_topic_ids(target: str, group: str, source: str) -> set[str | None]:
    rows = sql(
        target,
        "SELECT DISTINCT topic_id FROM tunggal_kafka_offsets WHERE consumer_group = %s",
        (f"{group}.{source}",),
    )
    return {r[0] for r in rows}


def test_recreated_topic_longer_than_the_stored_offsets_is_read_from_the_beginning(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    """A topic deleted and re-created while the daemon is stopped, which holds more records
    than the stored offsets by the time the daemon looks: its end says nothing (the issue:
    17 of 40 rows missing). Its id, stored with the offsets, differs: read from the start."""
    from confluent_kafka.admin import AdminClient

    source, target = _name(), new_db("kafka_topic_id")
    _setup_narrow(tmp_path, target, source)
    group = f"g{source}"
    config = _config(tmp_path, target, kafka_broker, source, group=group)
    _schema_apply(config)
    work = mixed_workload(8000, source=source, seed=18)
    cut = len(work.lines) // 5
    name = f"{source}.{TABLE}"
    topic = Topic(kafka_broker, name, partitions=2)
    topic.send_lines(work.lines[:cut])
    topic.close()
    old_id = _topic_id(kafka_broker, name)
    daemon: Daemon = daemon_factory(config).start().wait_ready()
    wait_until(
        lambda: _stored_offsets(target, group, source) == dict(topic.per_partition),
        60,
        message="the first part consumed",
        context=lambda: daemon.output()[-3000:],
    )
    assert _stored_topic_ids(target, group, source) == {old_id}
    code, _ = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]
    stored = _stored_offsets(target, group, source)

    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    admin.delete_topics([name])[name].result(timeout=10)
    wait_until(lambda: _gone(kafka_broker, name), 30, message="the topic deleted")
    topic = Topic(kafka_broker, name, partitions=2)
    topic.send_lines(work.lines[cut:])
    topic.close()
    new_id = _topic_id(kafka_broker, name)
    assert new_id != old_id
    # The case the end cannot tell: every partition now holds more than its stored offset.
    assert all(topic.per_partition[p] > o for p, o in stored.items()), (stored, topic.per_partition)

    daemon = daemon_factory(config).start().wait_ready()
    expected = [work.final[k] for k in sorted(work.final)]
    wait_until(
        lambda: _final_rows(target) == expected,
        60,
        message="every change of the re-created topic",
        context=lambda: daemon.output()[-3000:],
    )
    wait_until(lambda: _stored_offsets(target, group, source) == dict(topic.per_partition), 30)
    assert _stored_topic_ids(target, group, source) == {new_id}
    warned = [
        line
        for line in daemon.output().splitlines()
        if "WARNING" in line and f"topic {name} was re-created" in line
    ]
    assert len(warned) == 1 and "partitions 0, 1 from the beginning" in warned[0], warned
    code, _ = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]


def _gone(broker: TansuBroker, topic: str) -> bool:
    from confluent_kafka.admin import AdminClient

    listed = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    return topic not in listed.topics
