"""Kafka source settings: validation of the kafka block, and what kafka-python is given."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tunggal.config import KafkaConfig, load_config
from tunggal.connect.render import connect_config
from tunggal.connectors import ConnectorSpec
from tunggal.errors import ConfigError
from tunggal.sources import kafka_client_config as kcc
from tunggal.sources.kafka import default_topic_pattern
from tunggal.sources.kafka_client_config import client_config_problems
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
    assert config.kafka.client_config == {
        "client.rack": "dc-balaikota",
        "max.poll.interval.ms": 600000,
    }
    # The client takes it (less the CA file, which this machine has not: librdkafka reads it).
    here = config.kafka.model_copy(update={"ssl_cafile": None})
    assert client_config_problems(here, file=str(enabled)) == []
    (problem,) = client_config_problems(config.kafka, file=str(enabled))
    assert problem.location == "kafka" and "ssl.ca.location" in problem.message


# -- kafka.client_config -------------------------------------------------------------------------


def _client_config(tmp_path: Path, client: str, lines: str) -> Path:
    path = tmp_path / "tunggal.yaml"
    path.write_text(
        "target: {dsn: 'postgresql://t@localhost/t'}\nmappings: []\n"
        f"kafka:\n  bootstrap_servers: ['k:9092']\n  client: {client}\n  client_config:\n"
        + "".join(f"    {line}\n" for line in lines.strip().splitlines())
    )
    return path


def _problems(path: Path) -> list[str]:
    config = load_config(path)
    assert config.kafka is not None
    return [str(p) for p in client_config_problems(config.kafka, file=config.file)]


def test_client_config_is_applied_last_in_the_clients_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLL_MS", "600000")
    path = _client_config(
        tmp_path,
        "confluent-kafka",
        "client.rack: az-1\nmax.poll.interval.ms: ${POLL_MS}\nfetch.wait.max.ms: 250",
    )
    kafka = load_config(path).kafka
    assert kafka is not None
    rd = confluent_settings(kafka, "g")
    assert rd["client.rack"] == "az-1"
    assert rd["max.poll.interval.ms"] == "600000"  # ${VAR}: librdkafka parses the text
    assert rd["fetch.wait.max.ms"] == 250  # over Tunggal's 100
    assert _problems(path) == []
    # kafka-python: its own argument names, or the dotted Kafka name of one; a value from the
    # environment (text) becomes the type of the argument's default.
    path = _client_config(
        tmp_path,
        "kafka-python",
        "group.instance.id: kota-1\nmax_poll_interval_ms: ${POLL_MS}\n"
        "fetch.max.wait.ms: 250\ncheck.crcs: 'false'\napi_version: 2.6",
    )
    kafka = load_config(path).kafka
    assert kafka is not None
    kp = kafka_python_settings(kafka, "g")
    assert kp["group_instance_id"] == "kota-1"
    assert kp["max_poll_interval_ms"] == 600000
    assert kp["fetch_max_wait_ms"] == 250
    assert kp["check_crcs"] is False
    assert kp["api_version"] == (2, 6)
    assert not any("." in key for key in kp)
    assert _problems(path) == []


@pytest.mark.parametrize(
    ("client", "line", "expected"),
    [
        ("confluent-kafka", "enable.auto.commit: true", "offsets are Tunggal's"),
        ("confluent-kafka", "group.id: other", "set kafka.group_id instead"),
        ("confluent-kafka", "client.id: other", "set kafka.client_id instead"),
        ("confluent-kafka", "sasl.password: x", "set kafka.sasl_password instead"),
        ("confluent-kafka", "error_cb: x", "takes a Python object"),
        ("confluent-kafka", "group.protocol: consumer", "classic group protocol"),
        ("kafka-python", "enable_auto_commit: true", "offsets are Tunggal's"),
        ("kafka-python", "enable.auto.commit: true", "offsets are Tunggal's"),
        ("kafka-python", "max_poll_records: 10", "set kafka.max_poll_records instead"),
        ("kafka-python", "sasl_plain_password: x", "set kafka.sasl_password instead"),
        ("kafka-python", "value_deserializer: json", "takes a Python object"),
        ("kafka-python", "partition_assignment_strategy: range", "takes a Python object"),
    ],
)
def test_keys_tunggal_owns_are_refused_naming_the_key(
    tmp_path: Path, client: str, line: str, expected: str
) -> None:
    key = line.split(":")[0]
    path = _client_config(tmp_path, client, line)
    (problem,) = _problems(path)
    assert f"kafka.client_config.{key}: " in problem and expected in problem
    # ...and never reaches the client: Tunggal's value, or none, is what it is given.
    kafka = load_config(path).kafka
    assert kafka is not None
    ours = kafka.model_copy(update={"client_config": {}})
    if client == "confluent-kafka":
        assert confluent_settings(kafka, "g") == confluent_settings(ours, "g")
    else:
        assert kafka_python_settings(kafka, "g") == kafka_python_settings(ours, "g")


@pytest.mark.parametrize(
    ("client", "lines", "key", "expected"),
    [
        (
            "confluent-kafka",
            "client.rack: a\nfetch.wait.max.msx: 5",
            "fetch.wait.max.msx",
            'No such configuration property: "fetch.wait.max.msx"',
        ),
        ("confluent-kafka", "debug: everything", "debug", 'Invalid value "everything"'),
        # Checked with Tunggal's own settings: below kafka.session_timeout_ms (10 s).
        (
            "confluent-kafka",
            "client.rack: a\nmax.poll.interval.ms: 1000",
            "max.poll.interval.ms",
            "must be >= `session.timeout.ms`",
        ),
        (
            "kafka-python",
            "fetch_max_wait_msx: 5",
            "fetch_max_wait_msx",
            "kafka-python has no setting `fetch_max_wait_msx`",
        ),
        ("kafka-python", "client.rack: a", "client.rack", "kafka-python has no setting"),
        (
            "kafka-python",
            "max.poll.interval.ms: soon",
            "max.poll.interval.ms",
            "needs a whole number here: 'soon' is not a whole number",
        ),
        # Refused by kafka-python itself, with Tunggal's session timeout.
        (
            "kafka-python",
            "check_crcs: true\nrequest_timeout_ms: 5000",
            "request_timeout_ms",
            "must be larger than session timeout",
        ),
    ],
)
def test_the_client_checks_the_rest_and_the_key_is_named(
    tmp_path: Path, client: str, lines: str, key: str, expected: str
) -> None:
    (problem,) = _problems(_client_config(tmp_path, client, lines))
    assert f"kafka.client_config.{key}: " in problem
    assert expected in problem


def test_a_refused_value_of_a_secret_is_masked(tmp_path: Path) -> None:
    # librdkafka quotes a value it refuses; a secret's must not reach the terminal.
    (problem,) = _problems(
        _client_config(
            tmp_path,
            "confluent-kafka",
            "sasl.oauthbearer.client.secret: s3cr3t\nsasl.oauthbearer.method: s3cr3t",
        )
    )
    assert "s3cr3t" not in problem and "********" in problem


def test_client_config_secrets_are_masked_in_config_show(tmp_path: Path) -> None:
    from tunggal.admin.masking import mask_tree

    path = _client_config(
        tmp_path,
        "confluent-kafka",
        "ssl.key.password: p1\nssl.key.pem: p2\nsasl.oauthbearer.client.secret: p3\n"
        "sasl.oauthbearer.config: p4\nclient.rack: az-1",
    )
    shown = mask_tree(load_config(path).model_dump(mode="json"))["kafka"]["client_config"]
    assert shown == {
        "ssl.key.password": "********",
        "ssl.key.pem": "********",
        "sasl.oauthbearer.client.secret": "********",
        "sasl.oauthbearer.config": "********",
        "client.rack": "az-1",
    }


def test_oauthbearer_and_gssapi_need_no_user_name_but_kafka_python_no_oauthbearer(
    tmp_path: Path,
) -> None:
    config = _load(
        tmp_path,
        "kafka: {bootstrap_servers: ['k:9092'], security_protocol: SASL_SSL, "
        "sasl_mechanism: OAUTHBEARER}\n",
    )
    rd = confluent_settings(config.kafka, "g")  # type: ignore[attr-defined]
    assert rd["sasl.mechanism"] == "OAUTHBEARER" and "sasl.username" not in rd
    with pytest.raises(ConfigError, match="kafka-python takes an OAUTHBEARER token"):
        _load(
            tmp_path,
            "kafka: {bootstrap_servers: ['k:9092'], client: kafka-python, "
            "security_protocol: SASL_SSL, sasl_mechanism: OAUTHBEARER}\n",
        )


_REFUSED_KEYS = sorted(
    {
        *kcc._OURS_CONFLUENT,
        *kcc._OWNED_CONFLUENT,
        *kcc._OURS_KAFKA_PYTHON,
        *kcc._OWNED_KAFKA_PYTHON,
        "error_cb",
        "logger",
        "key_deserializer",
        "partition_assignment_strategy",
    }
)
_SCALARS = st.one_of(
    st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=12), st.floats(allow_nan=False)
)


@settings(max_examples=200, deadline=None)
@given(
    client=st.sampled_from(["confluent-kafka", "kafka-python"]),
    refused=st.dictionaries(st.sampled_from(_REFUSED_KEYS), _SCALARS, min_size=1),
)
def test_no_refused_key_ever_reaches_a_client(client: str, refused: dict[str, object]) -> None:
    """Whatever a refused key's spelling (kafka-python's dotted names too) and value, the client
    is given Tunggal's settings: refused keys are dropped even where the start-up check was
    not run (a command that skips it must not commit offsets the Kafka way)."""
    ours = KafkaConfig(bootstrap_servers=("k:9092",), client=client)  # type: ignore[arg-type]
    known = kcc._kafka_python_defaults()
    # Keys of the other client are unknown to this one, not refused: leave them out.
    if client == "confluent-kafka":
        table = {*kcc._OURS_CONFLUENT, *kcc._OWNED_CONFLUENT, "error_cb", "logger"}
        mine = {k: v for k, v in refused.items() if k in table}
    else:
        table = {*kcc._OURS_KAFKA_PYTHON, *kcc._OWNED_KAFKA_PYTHON, "key_deserializer"}
        table.add("partition_assignment_strategy")
        mine = {k: v for k, v in refused.items() if kcc.kafka_python_name(k, known) in table}
    assume(mine)
    theirs = ours.model_copy(update={"client_config": mine})
    build = confluent_settings if client == "confluent-kafka" else kafka_python_settings
    assert build(theirs, "g") == build(ours, "g")
    problems = client_config_problems(theirs, file="t.yaml")
    assert {p.location for p in problems} >= {f"kafka.client_config.{k}" for k in mine}


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


def test_confluent_assignment_is_cooperative_unless_set_eager(tmp_path: Path) -> None:
    kafka = KafkaConfig(bootstrap_servers=["b:9092"], group_id="g")
    assert confluent_settings(kafka, "g")["partition.assignment.strategy"] == "cooperative-sticky"
    path = _client_config(tmp_path, "confluent-kafka", "partition.assignment.strategy: range")
    assert _problems(path) == []
    eager = load_config(path).kafka
    assert eager is not None
    assert confluent_settings(eager, "g")["partition.assignment.strategy"] == "range"
    # Eager and cooperative in one setting: librdkafka refuses it, naming the key.
    mixed = _client_config(
        tmp_path, "confluent-kafka", "partition.assignment.strategy: range,cooperative-sticky"
    )
    (problem,) = _problems(mixed)
    assert "kafka.client_config.partition.assignment.strategy" in problem
    assert "same protocol type" in problem
