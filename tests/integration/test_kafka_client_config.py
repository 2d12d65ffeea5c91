"""`kafka.client_config` against the real broker (tansu) and PostgreSQL, through the CLI.

What shows that a setting reaches the client: for librdkafka, how soon it finds a topic
created after it subscribed (its metadata refresh interval, set over Tunggal's own); for
kafka-python, whether its metadata request asks the broker to create a listed topic that does
not exist (kafka-python does not find new topics of a pattern on tansu at all).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from tests.conftest import run_cli, sql, wait_until
from tests.integration.test_kafka import (
    CLIENTS,
    TABLE,
    Topic,
    _config,
    _name,
    _schema_apply,
    _setup_narrow,
    _stored_offsets,
)
from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.pgcluster import free_port
from tunggal.devtools.synth import mixed_workload

pytestmark = pytest.mark.integration


def _with_client_config(config: Path, *lines: str, topics: list[str] | None = None) -> Path:
    """`config` with a kafka.client_config block (and the source's topics replaced)."""
    text = config.read_text()
    block = "  client_config:\n" + "".join(f"    {line}\n" for line in lines)
    text = text.replace("sources:\n", block + "sources:\n", 1)
    if topics is not None:
        text = (
            "\n".join(line for line in text.splitlines() if not line.startswith("    topics:"))
            + f"\n    topics: [{', '.join(topics)}]\n"
        )
    config.write_text(text)
    return config


def _consuming(daemon: Any) -> bool:
    return " consuming " in daemon.output() or not daemon.alive()


def test_a_client_setting_reaches_librdkafka(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    """A topic created after the daemon subscribed to its pattern is found at librdkafka's next
    metadata refresh: within seconds with client_config's 1 s, over Tunggal's own 30 s (checked:
    without the setting, no row arrives within the wait below)."""
    source, target = _name(), new_db("kafka_cc_rd")
    _setup_narrow(tmp_path, target, source)
    config = _config(tmp_path, target, kafka_broker, source, group=f"g{source}")
    _with_client_config(config, "topic.metadata.refresh.interval.ms: 1000")
    _schema_apply(config)
    daemon = daemon_factory(config).start()
    wait_until(lambda: _consuming(daemon), 60, message="consuming")
    assert daemon.alive(), daemon.output()[-2000:]
    time.sleep(2)  # subscribed, and its first metadata answered: the topic is not there yet
    topic = Topic(kafka_broker, f"{source}.{TABLE}", partitions=1)
    topic.send_lines(mixed_workload(20, source=source, seed=5).lines)
    topic.close()
    wait_until(
        lambda: sql(target, "SELECT count(*) FROM kegiatan")[0][0] > 0,
        15,
        message="rows from the topic created after start",
        context=lambda: daemon.output()[-2000:],
    )
    assert daemon.terminate()[0] == 0


def _topics(broker: TansuBroker) -> set[str]:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    return set(admin.list_topics(timeout=10).topics)


def test_a_client_setting_reaches_kafka_python_by_its_dotted_name(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    """kafka-python's metadata request for a listed topic that does not exist asks the broker
    to create it, unless told not to: first without client_config (the broker creates it,
    timed), then with `allow.auto.create.topics: false`, the dotted Kafka name."""
    source, target = _name(), new_db("kafka_cc_kp")
    _setup_narrow(tmp_path, target, source)
    created, kept_out = f"{source}.{TABLE}", f"{source}.public.other"
    config = _config(
        tmp_path,
        target,
        kafka_broker,
        source,
        group=f"g{source}",
        client="kafka-python",
        topics=[created],
    )
    _schema_apply(config)
    control = daemon_factory(config).start()
    wait_until(lambda: _consuming(control), 60, message="consuming")
    started = time.monotonic()
    wait_until(
        lambda: created in _topics(kafka_broker),
        30,
        message=f"{created} created",
        context=lambda: control.output()[-2000:],
    )
    took = time.monotonic() - started
    assert control.terminate()[0] == 0
    _with_client_config(config, "allow.auto.create.topics: false", topics=[kept_out])
    daemon = daemon_factory(config).start()
    wait_until(lambda: _consuming(daemon), 60, message="consuming")
    assert daemon.alive(), daemon.output()[-2000:]
    time.sleep(max(3 * took, 3.0))  # three times what the broker took to create it above
    assert kept_out not in _topics(kafka_broker)
    assert daemon.alive()
    assert daemon.terminate()[0] == 0


@CLIENTS
@pytest.mark.parametrize("kind", ["unknown", "owned"])
def test_a_bad_or_owned_key_exits_2_naming_it_before_anything_is_consumed(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, client: str, kind: str
) -> None:
    bad = {
        ("confluent-kafka", "unknown"): (
            "fetch.wait.max.msx: 5",
            'confluent-kafka refuses it: No such configuration property: "fetch.wait.max.msx"',
        ),
        ("kafka-python", "unknown"): (
            "fetch_max_wait_msx: 5",
            "kafka-python has no setting `fetch_max_wait_msx`",
        ),
        ("confluent-kafka", "owned"): ("enable.auto.commit: true", "offsets are Tunggal's"),
        ("kafka-python", "owned"): ("group.id: other", "set kafka.group_id instead"),
    }
    line, expected = bad[(client, kind)]
    key = line.split(":")[0]
    source, target = _name(), new_db("kafka_cc_bad")
    _setup_narrow(tmp_path, target, source)
    group = f"g{source}"
    config = _config(tmp_path, target, kafka_broker, source, group=group, client=client)
    _schema_apply(config)
    topic = Topic(kafka_broker, f"{source}.{TABLE}", partitions=1)
    topic.send_lines(mixed_workload(50, source=source, seed=3).lines)
    topic.close()
    # Beside a good setting, which is not reported.
    good = "client.rack: az-1" if client == "confluent-kafka" else "check.crcs: true"
    _with_client_config(config, line, good)

    result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # One line, naming the key.
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, result.stderr
    assert f"{config}: kafka.client_config.{key}: " in problems[0] and expected in problems[0]
    # Nothing consumed: no rows, no offsets stored, none committed to Kafka.
    assert sql(target, "SELECT count(*) FROM kegiatan") == [(0,)]
    assert _stored_offsets(target, group, source) == {}

    # `validate` finds it too, and connects to no broker for it.
    dead = config.read_text().replace(kafka_broker.bootstrap, f"127.0.0.1:{free_port()}")
    config.write_text(dead)
    started = time.monotonic()
    checked = run_cli("validate", "--config", str(config), timeout=60)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stderr
    assert f"kafka.client_config.{key}: " in checked.stderr and expected in checked.stderr
    assert time.monotonic() - started < 20
