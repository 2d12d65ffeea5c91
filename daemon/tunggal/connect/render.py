"""Connector definitions (`connectors/*.yaml`) as Kafka Connect connector configs. Pure: no I/O.

`ConnectorSpec.render` gives the Debezium properties the embedded engine runs with; a Connect
worker takes the same properties, less the few that only the embedded engine reads, plus a
Kafka-backed schema history where the embedded engine keeps a local file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tunggal.connectors import SECRET_KEYS, ConnectorSpec, mask

# The embedded engine's own output converter; a Connect connector has key./value.converter.
EMBEDDED_ONLY = ("converter.schemas.enable",)


def connect_config(
    spec: ConnectorSpec, mapped_tables: Iterable[str], *, kafka_bootstrap: Sequence[str] = ()
) -> dict[str, str]:
    props = spec.render(mapped_tables)
    for key in EMBEDDED_ONLY:
        if key not in spec.properties:
            props.pop(key, None)
    if spec.kind in ("mysql", "mariadb", "sqlserver") and kafka_bootstrap:
        # The embedded engine keeps MySQL/MariaDB/SQL Server schema history in a file of its
        # state dir (sources/embedded.py); on Connect, Debezium's default is a Kafka topic,
        # which must be told where Kafka is. Without a kafka: block Connect's validation names
        # the field.
        props.setdefault(
            "schema.history.internal.kafka.bootstrap.servers", ",".join(kafka_bootstrap)
        )
        props.setdefault(
            "schema.history.internal.kafka.topic", f"tunggal.{spec.name}.schema-history"
        )
    return props


def connector_document(name: str, config: Mapping[str, str]) -> dict[str, Any]:
    """`{"name": ..., "config": {...}}`, secrets masked: what `connectors render` prints."""
    return {"name": name, "config": mask(config)}


def secret_values(config: Mapping[str, str]) -> list[str]:
    """The values `mask` hides, to scrub them from anything else that might quote them."""
    return [v for k, v in config.items() if v and any(s in k.lower() for s in SECRET_KEYS)]
