"""Kafka source settings: validation of the kafka block, and what kafka-python is given."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunggal.config import load_config
from tunggal.connect.render import connect_config
from tunggal.connectors import ConnectorSpec
from tunggal.errors import ConfigError
from tunggal.sources.kafka import default_topic_pattern
from tunggal.sources.kafka_clients import confluent_settings, kafka_python_settings


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "tunggal.yaml"
    path.write_text("target: {dsn: 'postgresql://t@localhost/t'}\nmappings: []\n" + text)
    return load_config(path)


def test_sasl_ssl_settings_reach_the_consumer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_PW", "s3cret")
    config = _load(
        tmp_path,
        "kafka:\n  bootstrap_servers: [b1:9093, b2:9093]\n  group_id: kota\n"
        "  security_protocol: SASL_SSL\n  sasl_mechanism: SCRAM-SHA-512\n"
        "  sasl_username: tunggal\n  sasl_password: ${KAFKA_PW}\n  ssl_cafile: /etc/ca.pem\n"
        "sources:\n  - {name: sipkd, engine: kafka, connector: c.yaml}\n",
    )
    kafka = config.kafka  # type: ignore[attr-defined]
    settings = kafka_python_settings(kafka, "kota.sipkd")
    assert settings["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert settings["group_id"] == "kota.sipkd"
    assert settings["security_protocol"] == "SASL_SSL"
    assert settings["sasl_mechanism"] == "SCRAM-SHA-512"
    assert settings["sasl_plain_username"] == "tunggal"
    assert settings["sasl_plain_password"] == "s3cret"
    assert settings["ssl_cafile"] == "/etc/ca.pem"
    assert settings["enable_auto_commit"] is False
    # A full fetch response must fit in one network frame.
    assert settings["receive_message_max_bytes"] > settings["fetch_max_bytes"]
    assert "ssl_certfile" not in settings
    # The same settings for librdkafka, under its names.
    rd = confluent_settings(kafka, "kota.sipkd")
    assert rd["bootstrap.servers"] == "b1:9093,b2:9093"
    assert rd["group.id"] == "kota.sipkd"
    assert rd["security.protocol"] == "sasl_ssl"
    assert rd["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (rd["sasl.username"], rd["sasl.password"]) == ("tunggal", "s3cret")
    assert rd["ssl.ca.location"] == "/etc/ca.pem"
    assert rd["ssl.endpoint.identification.algorithm"] == "https"
    assert rd["enable.auto.commit"] is False and rd["enable.auto.offset.store"] is False
    assert kafka.client == "confluent-kafka"  # the default


def test_plaintext_has_no_sasl_or_tls(tmp_path: Path) -> None:
    config = _load(tmp_path, "kafka: {bootstrap_servers: ['k:9092']}\n")
    settings = kafka_python_settings(config.kafka, "g")  # type: ignore[attr-defined]
    assert settings["security_protocol"] == "PLAINTEXT"
    assert not any(k.startswith(("sasl_", "ssl_")) for k in settings)
    rd = confluent_settings(config.kafka, "g")  # type: ignore[attr-defined]
    assert rd["security.protocol"] == "plaintext"
    assert not any(k.startswith(("sasl.", "ssl.")) for k in rd)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sources:\n  - {name: sipkd, engine: kafka, connector: c.yaml}\n",
            "use engine: kafka; add a kafka: block",
        ),
        (
            "kafka: {bootstrap_servers: ['k:9092'], security_protocol: SASL_PLAINTEXT}\n",
            "SASL_PLAINTEXT needs sasl_mechanism, sasl_username, sasl_password",
        ),
        (
            "sources:\n  - {name: sipkd, connector: c.yaml, topics: [a]}\n",
            "topics and topic_pattern apply to engine: kafka only",
        ),
        (
            "kafka: {bootstrap_servers: []}\n",
            "bootstrap_servers",
        ),
        (
            "sources:\n  - {name: a, connector: c.yaml}\n  - {name: a, connector: d.yaml}\n",
            "source names must be unique: a",
        ),
    ],
)
def test_kafka_config_mistakes_are_reported(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert expected in str(info.value)


def test_default_topics_are_the_mapped_tables_and_the_heartbeat() -> None:
    pattern = re.compile(
        default_topic_pattern(
            "e_planning", ["public.kegiatan", "public.opd"], "__debezium-notification.e_planning"
        )
    )
    assert pattern.match("e_planning.public.kegiatan")
    assert pattern.match("e_planning.public.opd")
    assert pattern.match("__debezium-heartbeat.e_planning")
    assert not pattern.match("e_planning.public.kegiatanX")
    assert not pattern.match("e_planningXpublic.opd")  # dots are literal
    assert not pattern.match("e_budgeting.public.opd")


def test_example_config_and_its_kafka_block_are_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNGGAL_TARGET_PASSWORD", "x")
    monkeypatch.setenv("KAFKA_PASSWORD", "y")
    example = Path(__file__).parents[2] / "tunggal.example.yaml"
    assert load_config(example).kafka is None
    # The commented-out kafka block, switched on.
    lines = [
        line[2:] if line.startswith(("# kafka:", "#   ")) else line
        for line in example.read_text().splitlines()
    ]
    enabled = tmp_path / "tunggal.yaml"
    enabled.write_text("\n".join(lines) + "\n")
    config = load_config(enabled)
    assert config.kafka is not None
    assert config.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert config.kafka.sasl_password == "y"


def test_a_topic_prefix_override_is_what_connect_is_sent_and_what_the_consumer_reads() -> None:
    spec = ConnectorSpec.model_validate(
        {
            "name": "e_planning",
            "database": {"host": "db", "dbname": "eplan", "user": "u"},
            "signal_table": "public.tunggal_signal",
            "properties": {"topic.prefix": "kota.eplan"},
        }
    )
    config = connect_config(spec, ["public.opd"])
    assert config["topic.prefix"] == spec.topic_prefix == "kota.eplan"
    pattern = re.compile(
        default_topic_pattern(spec.topic_prefix, ["public.opd"], spec.notification_topic)
    )
    assert pattern.match("kota.eplan.public.opd")
    assert pattern.match("__debezium-heartbeat.kota.eplan")
    # The notification topic is named by the source, and rendered so.
    assert pattern.match(config["notification.sink.topic.name"])
    assert not pattern.match("e_planning.public.opd")
    assert not pattern.match("__debezium-heartbeat.e_planning")
