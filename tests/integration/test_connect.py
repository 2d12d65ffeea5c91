"""`tunggal connectors ...` against a real Kafka Connect worker on the real (tansu) broker, with
a real PostgreSQL source: the Debezium events land on the topics Tunggal's Kafka engine reads."""

from __future__ import annotations

import contextlib
import json
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.conftest import run_cli, sql, wait_until, write_config, write_connector
from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.kafkaconnect import ConnectStandalone
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

MAPPING = """
source: {name}
tables:
  - from: public.kv
    to: public.kv
    key: [id]
    columns: {{id: id, v: v}}
"""


class Sources:
    """Source databases with one `kv` table each, their connector files and one tunggal.yaml.

    Source names carry a random suffix: replication slots are cluster-wide, and connectors
    live on the session's Connect worker. Teardown deletes the connectors and drops the slots.
    """

    def __init__(
        self,
        pg: PgCluster,
        new_db: Callable[[str], str],
        tmp_path: Path,
        connect: ConnectStandalone,
    ):
        self.pg, self.new_db, self.tmp_path = pg, new_db, tmp_path
        self.connect_url = connect.url
        self.connect_log = connect.log_tail  # shown when a wait times out
        self.password = f"pw-{uuid.uuid4().hex}"  # trust auth: any password logs in
        self.dsns: dict[str, str] = {}
        self.connectors: dict[str, str] = {}
        self.outputs: list[str] = []
        (tmp_path / "mappings").mkdir()

    def add(self, prefix: str, *, port: int | None = None, properties: str = "") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        dsn = self.new_db(name)
        sql(dsn, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
        (self.tmp_path / "mappings" / f"{name}.yaml").write_text(MAPPING.format(name=name))
        path = write_connector(self.tmp_path, name, port or self.pg.port, dsn.rsplit("/", 1)[1])
        if properties:
            path.write_text(path.read_text() + properties)
        self.dsns[name] = dsn
        self.connectors[name] = str(path)
        return name

    def config(self) -> Path:
        return write_config(
            self.tmp_path, self.pg.dsn("postgres"), self.connectors, ["mappings/*.yaml"]
        )

    def cli(self, *args: str) -> Any:
        result = run_cli(
            "connectors",
            *args,
            env={"TEST_PG_PASSWORD": self.password, "TUNGGAL_CONNECT_URL": self.connect_url},
        )
        self.outputs += [result.stdout, result.stderr]
        return result

    def close(self) -> None:
        for name in self.dsns:
            url = f"{self.connect_url}/connectors/{name}"
            # OSError (HTTP 404): never created, as in the invalid-config test.
            with contextlib.suppress(OSError):
                urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30)
        admin = self.pg.dsn("postgres")
        for name in self.dsns:
            slot = f"tunggal_{name}"

            def released(slot: str = slot) -> bool:
                active = "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active"
                return not sql(admin, active, (slot,))

            # The task lets go of its slot a moment after the connector is deleted.
            wait_until(released, 30, message=f"slot {slot} released")
            sql(
                admin,
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (slot,),
            )


@pytest.fixture
def sources(
    pg: PgCluster, new_db: Callable[[str], str], tmp_path: Path, kafka_connect: ConnectStandalone
) -> Iterator[Sources]:
    made = Sources(pg, new_db, tmp_path, kafka_connect)
    try:
        yield made
    finally:
        made.close()


def read_ids(
    broker: TansuBroker,
    topic: str,
    want: set[int],
    timeout: float = 60,
    context: Callable[[], str] | None = None,
) -> dict[int, str]:
    """id -> Debezium op of the change events on `topic`, once every wanted id was seen.

    Partitions are assigned by hand: a group join costs half the session timeout on tansu,
    and the topics Connect makes there have 4 partitions, so every one is read from offset 0.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=1000
    )
    try:
        partitions = wait_until(
            lambda: consumer.partitions_for_topic(topic),
            timeout,
            message=f"topic {topic}",
            context=context,
        )
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        for tp in assigned:
            consumer.seek(tp, 0)
        seen: dict[int, str] = {}

        def poll() -> bool:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.value is None:
                        continue  # a tombstone
                    payload = json.loads(record.value)["payload"]
                    row = payload["after"] or payload["before"]
                    if row is None:
                        continue  # a truncate: no row
                    seen[row["id"]] = payload["op"]
            return want <= seen.keys()

        wait_until(
            poll, timeout, interval=0, message=f"ids {sorted(want)} on {topic}", context=context
        )
        return seen
    finally:
        consumer.close()


def states(source: Sources, name: str) -> list[str]:
    result = source.cli("status", "--json", name)
    assert result.returncode in (0, 1), result.stderr
    [status] = json.loads(result.stdout)
    return [status["connector"]["state"], *(t["state"] for t in status["tasks"])]


def wait_for_state(source: Sources, name: str, state: str) -> None:
    """Until the connector and its one task are in `state`."""
    wait_until(
        lambda: states(source, name) == [state, state],
        60,
        message=f"{name} {state}",
        context=source.connect_log,
    )


def test_apply_streams_to_kafka_and_operates_the_connector(
    sources: Sources, kafka_broker: TansuBroker
) -> None:
    name = sources.add("cx")
    dsn = sources.dsns[name]
    sql(dsn, "INSERT INTO kv VALUES (1, 'satu'), (2, 'dua')")  # before: the snapshot reads them
    config = sources.config()
    topic = f"{name}.public.kv"  # Debezium's <prefix>.<schema>.<table>; prefix = source name

    applied = sources.cli("apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == f"{name}: created"

    assert read_ids(kafka_broker, topic, {1, 2}, context=sources.connect_log) == {1: "r", 2: "r"}
    sql(dsn, "INSERT INTO kv VALUES (3, 'tiga')")  # after the snapshot: streamed
    assert read_ids(kafka_broker, topic, {1, 2, 3}, context=sources.connect_log)[3] == "c"

    again = sources.cli("apply", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{name}: unchanged"

    wait_for_state(sources, name, "RUNNING")
    plain = sources.cli("status", name)  # piped: one tab-separated line per connector and task
    assert plain.returncode == 0, plain.stderr
    assert [line.split("\t")[:3] for line in plain.stdout.splitlines()] == [
        [name, "-", "RUNNING"],
        [name, "0", "RUNNING"],
    ]

    paused = sources.cli("pause", name)
    assert paused.returncode == 0, paused.stderr
    wait_for_state(sources, name, "PAUSED")
    resumed = sources.cli("resume", name)
    assert resumed.returncode == 0, resumed.stderr
    wait_for_state(sources, name, "RUNNING")
    sql(dsn, "INSERT INTO kv VALUES (4, 'empat')")  # streaming again after the pause
    assert read_ids(kafka_broker, topic, {4}, context=sources.connect_log)[4] == "c"

    # An edited connector file is an update (Connect restarts the connector with it).
    connector = Path(sources.connectors[name])
    connector.write_text(connector.read_text().replace("'100'", "'250'"))
    updated = sources.cli("apply", "--config", str(config), name)
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout.strip() == f"{name}: updated"
    restarted = sources.cli("restart", "--include-tasks", name)
    assert restarted.returncode == 0, restarted.stderr
    wait_for_state(sources, name, "RUNNING")

    rendered = sources.cli("render", "--config", str(config))
    assert '"database.password": "********"' in rendered.stdout
    assert all(sources.password not in output for output in sources.outputs)


def test_invalid_connectors_are_reported_field_by_field_and_nothing_is_applied(
    sources: Sources, kafka_connect: ConnectStandalone
) -> None:
    good = sources.add("ok")
    wrong_port = sources.add("port", port=1)
    bad_mode = sources.add("mode", properties="  snapshot.mode: sometimes\n")
    config = sources.config()

    result = sources.cli("apply", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "2 problems found:" in result.stderr
    assert (
        f"connector-{wrong_port}.yaml: database.hostname: Error while validating connector "
        "config: Connection to 127.0.0.1:1 refused"
    ) in result.stderr
    assert (
        f"connector-{bad_mode}.yaml: snapshot.mode: The 'snapshot.mode' value is invalid: "
        "Value must be one of"
    ) in result.stderr
    # A source that does not answer from here (Connect may be on another network) is not a
    # problem of the files: one warning, and Connect's validation speaks for it.
    [warning] = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert f"source {wrong_port} (database {wrong_port}_" in warning
    assert "on 127.0.0.1:1) does not answer" in warning
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    with urllib.request.urlopen(f"{kafka_connect.url}/connectors", timeout=30) as response:
        on_worker = set(json.loads(response.read()))
    assert not {good, wrong_port, bad_mode} & on_worker
    assert sources.password not in result.stdout + result.stderr


def test_status_shows_a_failed_task_with_its_trace_and_exits_1(sources: Sources) -> None:
    # Valid to Connect, fails only once the task starts: nobody created the publication.
    name = sources.add("failing", properties="  publication.autocreate.mode: disabled\n")
    applied = sources.cli("apply", "--config", str(sources.config()))
    assert applied.returncode == 0, applied.stderr

    def failed_line() -> str | None:
        result = sources.cli("status", name)
        lines = [line.split("\t") for line in result.stdout.splitlines()]
        failed = [cells for cells in lines if cells[2] == "FAILED"]
        return "\t".join(failed[0]) if failed and result.returncode == 1 else None

    line = wait_until(failed_line, 60, message="FAILED task", context=sources.connect_log)
    assert line.startswith(f"{name}\t0\tFAILED\t")
    assert line.endswith(
        "org.apache.kafka.connect.errors.ConnectException: Publication autocreation is "
        "disabled, please create one and restart the connector."
    )
    assert all(sources.password not in output for output in sources.outputs)
