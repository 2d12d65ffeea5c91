"""`tunggal connectors apply` checks the sources before Connect is touched, and a connector's
`topic.prefix` override is the prefix the Kafka engine consumes: real PostgreSQL, a real Kafka
Connect worker on the real (tansu) broker, and `tunggal run` with an `engine: kafka` source."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until
from tests.integration.test_connect import (  # noqa: F401 - the fixture
    Sources,
    read_ids,
    sources,
)
from tests.integration.test_kafka_connect_e2e import kafka_config
from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.kafkaconnect import ConnectStandalone

pytestmark = pytest.mark.integration


def on_worker(connect: ConnectStandalone) -> set[str]:
    with urllib.request.urlopen(f"{connect.url}/connectors", timeout=30) as response:
        return set(json.loads(response.read()))


def test_apply_refuses_tables_and_columns_the_source_lacks_and_creates_nothing(
    sources: Sources,  # noqa: F811
    kafka_connect: ConnectStandalone,
    tmp_path: Path,
) -> None:
    good = sources.add("fine")
    name = sources.add("lacks")
    mapping = tmp_path / "mappings" / f"{name}.yaml"
    mapping.write_text(
        f"source: {name}\n"
        "tables:\n"
        "  - from: public.kv\n"
        "    to: public.kv\n"
        "    key: [id]\n"
        "    columns: {id: id, v: vv}\n"  # line 6: no column vv
        "  - from: public.kegiatan\n"  # line 7: no such table
        "    to: public.kegiatan\n"
        "    key: [id]\n"
        "    columns: {id: id}\n"
    )
    connector = Path(sources.connectors[name])
    connector.write_text(connector.read_text() + "tables: [public.kv, public.kv_old]\n")
    connector_line = len(connector.read_text().splitlines())

    result = sources.cli("apply", "--config", str(sources.config()))

    assert result.returncode == 2, result.stdout + result.stderr
    assert "3 problems found:" in result.stderr
    assert (
        f"{mapping}:7: tables[1].from: source table public.kegiatan does not exist in source "
        f"'{name}'"
    ) in result.stderr
    assert (
        f"{mapping}:6: tables[0].columns.v: source column vv is not in public.kv of source '{name}'"
    ) in result.stderr
    assert (
        f"{connector}:{connector_line}: tables[1]: source table public.kv_old does not exist in "
        f"source '{name}'"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # neither `created` nor anything else
    # Nothing is applied, the good source's connector neither: every connector or none.
    assert not {good, name} & on_worker(kafka_connect)
    assert sources.password not in result.stdout + result.stderr


def test_a_topic_prefix_override_is_consumed_and_rows_reach_the_target(
    sources: Sources,  # noqa: F811
    kafka_broker: TansuBroker,
    new_db: Any,
    tmp_path: Path,
    daemon_factory: Any,
) -> None:
    name = sources.add("prefixed")
    prefix = f"kota_{name}"
    connector = Path(sources.connectors[name])
    connector.write_text(
        connector.read_text().replace("properties:\n", f"properties:\n  topic.prefix: {prefix}\n")
    )
    source = sources.dsns[name]
    sql(source, "INSERT INTO kv SELECT g, 'awal ' || g FROM generate_series(1, 20) g")
    applied = sources.cli("apply", "--config", str(sources.config()))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    # Connect writes to the overridden prefix's topic.
    read_ids(kafka_broker, f"{prefix}.public.kv", {1, 20}, context=sources.connect_log)

    target = new_db("prefixed_tgt")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    config = kafka_config(
        tmp_path / "kafka.yaml", target, kafka_broker, "prefixed", name, connector
    )
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    daemon: Daemon = daemon_factory(config).start().wait_ready()

    def same() -> bool:
        return sql(target, "SELECT id, v FROM kv ORDER BY id") == sql(
            source, "SELECT id, v FROM kv ORDER BY id"
        )

    def context() -> str:
        return daemon.output()[-3000:] + "\n" + sources.connect_log()[-1500:]

    wait_until(same, 60, message="the snapshot through the prefixed topic", context=context)
    sql(source, "UPDATE kv SET v = 'ubah' WHERE id <= 5")
    sql(source, "INSERT INTO kv VALUES (21, 'baru')")
    wait_until(same, 60, message="streamed changes through the prefixed topic", context=context)
    assert f"{prefix}\\.public\\.kv" in daemon.output()  # the subscription it logs
    # Keyed by the source's name: its consumer group; the topics read are the prefix's.
    read = sql(target, "SELECT DISTINCT consumer_group, topic FROM tunggal_kafka_offsets")
    assert (f"prefixed.{name}", f"{prefix}.public.kv") in read, read
    ours = (f"{prefix}.public.kv", f"__debezium-heartbeat.{prefix}")
    assert all(topic in ours for _, topic in read), read
    code, _ = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]
