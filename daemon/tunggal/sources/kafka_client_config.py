"""`kafka.client_config`: the operator's own consumer settings (client.rack, group.instance.id,
max.poll.interval.ms, OAUTHBEARER, ...), in the spelling of the client in use, applied last over
Tunggal's own.

Three things happen to them, in this order:
1. Refused, with the reason, when Tunggal must own the key: one with a `kafka.*` setting of its
   own (one place per value; Tunggal reads several of them itself), the offset settings (the
   offsets that count are written to the target with the rows), a setting that takes a Python
   object (a YAML file cannot give one), and librdkafka's KIP-848 group protocol (Tunggal runs
   the classic protocol, with cooperative-sticky assignment by default: incremental rebalances
   without it).
2. Spelt for the client: librdkafka takes its dotted names as they are; kafka-python takes its
   constructor arguments, or the dotted Kafka name of one (`max.poll.interval.ms` is
   `max_poll_interval_ms`), and a value from `${VAR}` (always text) becomes the type of the
   argument's default.
3. Checked by the client itself, without connecting: librdkafka's consumer is built without
   bootstrap servers, kafka-python's with a fixed api_version (no version probe) and its
   broker connection object (which checks the SASL settings) is built but not connected.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from tunggal.config import KafkaConfig
from tunggal.connectors import SECRET_KEYS
from tunggal.errors import Problem

MASK = "********"
# librdkafka's own lines while the check builds a consumer (a missing CA file, ...): the
# problem it reports says the same, once.
_quiet = logging.getLogger("tunggal.librdkafka.check")
_quiet.propagate = False
_quiet.addHandler(logging.NullHandler())

# Client keys that have a kafka.* setting of their own.
_OURS_CONFLUENT = {
    "bootstrap.servers": "bootstrap_servers",
    "metadata.broker.list": "bootstrap_servers",
    "group.id": "group_id",
    "client.id": "client_id",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.endpoint.identification.algorithm": "ssl_check_hostname",
    "session.timeout.ms": "session_timeout_ms",
    "heartbeat.interval.ms": "heartbeat_interval_ms",
    "fetch.max.bytes": "fetch_max_bytes",
    "auto.offset.reset": "auto_offset_reset",
}
_OURS_KAFKA_PYTHON = {
    "bootstrap_servers": "bootstrap_servers",
    "group_id": "group_id",
    "client_id": "client_id",
    "security_protocol": "security_protocol",
    "sasl_mechanism": "sasl_mechanism",
    "sasl_plain_username": "sasl_username",
    "sasl_plain_password": "sasl_password",
    "ssl_cafile": "ssl_cafile",
    "ssl_certfile": "ssl_certfile",
    "ssl_keyfile": "ssl_keyfile",
    "ssl_check_hostname": "ssl_check_hostname",
    "session_timeout_ms": "session_timeout_ms",
    "heartbeat_interval_ms": "heartbeat_interval_ms",
    "fetch_max_bytes": "fetch_max_bytes",
    "auto_offset_reset": "auto_offset_reset",
    "max_poll_records": "max_poll_records",
}
_OFFSETS = (
    "offsets are Tunggal's: it stores them in the target with the rows, then commits them to "
    "Kafka itself (kafka.commit_to_kafka)"
)
_OWNED_CONFLUENT = {
    "enable.auto.commit": _OFFSETS,
    "enable.auto.offset.store": _OFFSETS,
    "auto.commit.interval.ms": _OFFSETS,
}
_OWNED_KAFKA_PYTHON = {
    "enable_auto_commit": _OFFSETS,
    "auto_commit_interval_ms": _OFFSETS,
}
_OBJECT = "takes a Python object, which a YAML file cannot give"
_CLASSIC = (
    "Tunggal uses the classic group protocol; its default assignment, cooperative-sticky, "
    "already rebalances incrementally (instances keep the partitions they are not giving away)"
)
# kafka-python arguments whose default is None but whose value must be an object.
_KAFKA_PYTHON_OBJECTS = (
    "key_deserializer",
    "value_deserializer",
    "sasl_oauth_token_provider",
    "ssl_context",
)


def refusal(client: str, key: str, value: object) -> str | None:
    """Why `key` (in the client's spelling) may not be set in client_config, or None."""
    if client == "confluent-kafka":
        if key in _OURS_CONFLUENT:
            return f"set kafka.{_OURS_CONFLUENT[key]} instead"
        if key in _OWNED_CONFLUENT:
            return _OWNED_CONFLUENT[key]
        if key.endswith("_cb") or key in ("logger", "on_commit"):
            return _OBJECT
        if key == "group.protocol" and str(value).lower() != "classic":
            return _CLASSIC
        return None
    if key in _OURS_KAFKA_PYTHON:
        return f"set kafka.{_OURS_KAFKA_PYTHON[key]} instead"
    if key in _OWNED_KAFKA_PYTHON:
        return _OWNED_KAFKA_PYTHON[key]
    if key in _KAFKA_PYTHON_OBJECTS or _takes_object(_kafka_python_defaults().get(key)):
        return _OBJECT
    return None


def _kafka_python_defaults() -> dict[str, Any]:
    from kafka import KafkaConsumer

    return dict(KafkaConsumer.DEFAULT_CONFIG)


def _takes_object(default: object) -> bool:
    return default is not None and not isinstance(default, bool | int | float | str)


def kafka_python_name(key: str, known: dict[str, Any]) -> str:
    """kafka-python's argument for `key`: itself, or a dotted Kafka name with `_` for `.` when
    kafka-python has that argument (`group.instance.id` -> `group_instance_id`)."""
    if key in known or "." not in key:
        return key
    snake = key.replace(".", "_").replace("-", "_")
    return snake if snake in known else key


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _kafka_python_value(key: str, value: object, default: object) -> object:
    """`value` as the type kafka-python expects; raises ValueError saying what it needs."""
    if key == "api_version":
        # YAML reads 2.6 as a number; kafka-python wants (2, 6).
        parts = str(value).split(".")
        if not all(p.isdigit() for p in parts):
            raise ValueError(f"{value!r} is not a version such as 2.6")
        return tuple(int(p) for p in parts)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError(f"{value!r} is not true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ValueError(f"{value!r} is not a whole number")
    if isinstance(default, float):
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
    return value


def client_overrides(kafka: KafkaConfig) -> dict[str, Any]:
    """client_config as the client takes it, less what is refused (the start-up check reports
    those): what `confluent_settings` and `kafka_python_settings` apply last."""
    if kafka.client == "confluent-kafka":
        return {k: v for k, v in kafka.client_config.items() if refusal(kafka.client, k, v) is None}
    known = _kafka_python_defaults()
    out: dict[str, Any] = {}
    for key, value in kafka.client_config.items():
        name = kafka_python_name(key, known)
        if refusal(kafka.client, name, value) is not None:
            continue
        try:
            out[name] = _kafka_python_value(name, value, known.get(name))
        except ValueError:
            out[name] = value  # the start-up check reports it; the client refuses it
    return out


def is_secret(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_KEYS)


def scrub(text: str, kafka: KafkaConfig) -> str:
    """`text` with the values of client_config's secret-named keys masked: a client's message
    may quote the value it refuses."""
    for key, value in kafka.client_config.items():
        if is_secret(key) and str(value):
            text = text.replace(str(value), MASK)
    return text


def client_config_problems(kafka: KafkaConfig, *, file: str) -> list[Problem]:
    """Every client_config key Tunggal refuses or the client rejects, each naming the key.
    Builds no connection: `tunggal validate` runs it too."""
    if not kafka.client_config:
        return []
    problems: list[Problem] = []
    known = _kafka_python_defaults() if kafka.client == "kafka-python" else {}
    spelt: dict[str, str] = {}  # the client's name -> the key as written
    for key, value in kafka.client_config.items():
        where = f"kafka.client_config.{key}"
        name = kafka_python_name(key, known) if known else key
        reason = refusal(kafka.client, name, value)
        if reason is None and name in spelt:
            reason = f"the same setting as `{spelt[name]}`: give it once"
        if reason is None and known:
            if name not in known:
                reason = f"kafka-python has no setting `{name}`"
            else:
                try:
                    _kafka_python_value(name, value, known[name])
                except ValueError as exc:
                    reason = f"kafka-python needs {_type_word(known[name])} here: {exc}"
        spelt.setdefault(name, key)
        if reason is not None:
            problems.append(Problem(file, where, scrub(reason, kafka)))
    # The client is asked about the rest, in the same round.
    refused = {p.location.removeprefix("kafka.client_config.") for p in problems}
    rest = {k: v for k, v in kafka.client_config.items() if k not in refused}
    if not rest:
        return problems
    kafka = kafka.model_copy(update={"client_config": rest})
    check = _confluent_check if kafka.client == "confluent-kafka" else _kafka_python_check
    message = check(kafka)
    if message is None:
        return problems
    culprit = _culprit(kafka, message, check)
    where = f"kafka.client_config.{culprit}" if culprit else "kafka"
    what = "it" if culprit else "these settings"
    problems.append(Problem(file, where, scrub(f"{kafka.client} refuses {what}: {message}", kafka)))
    return problems


def _type_word(default: object) -> str:
    if default is None:
        return "a version"  # api_version, the one setting without a default checked here
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "a whole number"
    return "a number"


def _culprit(
    kafka: KafkaConfig, message: str, check: Callable[[KafkaConfig], str | None]
) -> str | None:
    """The client_config key the client's message is about: the one it names, else the first
    whose addition makes the client refuse (one key at a time, in file order); None when the
    client refuses the kafka.* settings without any of them."""
    known = _kafka_python_defaults() if kafka.client == "kafka-python" else {}
    for key in kafka.client_config:
        if key in message or (known and kafka_python_name(key, known) in message):
            return key
    keys = list(kafka.client_config)
    for count in range(len(keys) + 1):
        subset = {k: kafka.client_config[k] for k in keys[:count]}
        if check(kafka.model_copy(update={"client_config": subset})) is not None:
            return keys[count - 1] if count else None
    return None


def _confluent_check(kafka: KafkaConfig) -> str | None:
    from confluent_kafka import Consumer, KafkaException

    from tunggal.sources.kafka_clients import confluent_settings

    settings = confluent_settings(kafka, "tunggal-check")
    # No brokers: librdkafka checks every property, and the settings together, while building
    # the consumer, and connects to nothing.
    settings.pop("bootstrap.servers", None)
    settings["logger"] = _quiet
    try:
        Consumer(settings).close()
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        text = error.str() if hasattr(error, "str") else str(error)
        return str(text).removeprefix("Failed to create consumer: ")
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _kafka_python_check(kafka: KafkaConfig) -> str | None:
    from kafka import KafkaConsumer
    from kafka.conn import BrokerConnection

    from tunggal.sources.kafka_clients import kafka_python_settings

    settings = kafka_python_settings(kafka, "tunggal-check")
    # With an api_version the consumer does not probe the brokers for one while it is built.
    settings.setdefault("api_version", (2, 6))
    try:
        consumer = KafkaConsumer(**settings)
        try:
            # Its SASL and TLS settings are checked when a connection object is made; this
            # one is never connected.
            BrokerConnection("localhost", 9092, socket.AF_UNSPEC, **consumer.config)
        finally:
            consumer.close()
    except Exception as exc:  # kafka-python says "no" with KafkaError, assert, TypeError...
        return str(exc) or type(exc).__name__
    return None
