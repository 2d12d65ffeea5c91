"""Debezium connector definitions (`connectors/*.yaml`) and the properties we render from them.

The defaults are the ones Tunggal's decoder expects; an admin only names the database,
the credentials and, optionally, extra Debezium properties to override.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunggal.config import _expand_tree, pydantic_problems
from tunggal.errors import ConfigError
from tunggal.events.model import NOTIFICATION_PREFIX
from tunggal.events.modes import ConnectorModes, zone
from tunggal.yamlfile import load_settings_file

SECRET_KEYS = ("password", "secret", "sasl.jaas.config", "token")


class DatabaseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str = Field(description="Source database host.")
    port: int = Field(5432, ge=1, le=65535, description="Source database port.")
    dbname: str = Field(description="Database to capture.")
    user: str = Field(description="Replication user (needs REPLICATION and SELECT).")
    password: str = Field("", description="Use ${ENV_VAR} or ${file:/path}; never a literal.")


class ConnectorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,40}$",
        description="Source name; the topic prefix and the slot name derive from it.",
    )
    kind: Literal["postgresql", "mysql", "sqlserver"] = Field("postgresql")
    database: DatabaseSpec
    tables: tuple[str, ...] = Field(
        (),
        description="schema.table to capture; default: every "
        "table the mappings read from this source.",
    )
    snapshot: Literal["initial", "no_data", "when_needed", "always", "initial_only"] = Field(
        "initial", description="Debezium snapshot.mode."
    )
    schemas: bool = Field(True, description="Send Connect schemas with each event (exact types).")
    server_id: int | None = Field(None, description="MySQL: unique replica server id.")
    signal_table: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$",
        description="schema.table of Debezium's signal table on the source, e.g. "
        "public.tunggal_signal: needed to backfill tables added to the mappings and for "
        "`tunggal resync` (incremental snapshots). Create it with: CREATE TABLE "
        "public.tunggal_signal (id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL, "
        "data varchar(2048)); the connector's user needs INSERT on it.",
    )
    timezone: str | None = Field(
        None,
        description="IANA time zone (e.g. Asia/Jakarta) of the source's zone-less date-times "
        "(MySQL DATETIME, PostgreSQL timestamp without time zone): used where one goes into a "
        "timestamptz column or a CEL timestamp. Default: they are read as UTC.",
    )
    properties: dict[str, str] = Field(
        default_factory=dict, description="Extra Debezium properties; these win."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)  # ValueError, reported with the file and the field
        return value

    @property
    def slot_name(self) -> str:
        # PostgreSQL slot names allow only lowercase letters, digits and underscores.
        return f"tunggal_{self.name}"

    @property
    def publication_name(self) -> str:
        return f"tunggal_{self.name}_pub"

    @property
    def notification_topic(self) -> str:
        """Where Debezium reports incremental snapshots (started, a table scanned, ...): a
        topic beside the data, so that the notices come in order with the rows (embedded)."""
        return f"{NOTIFICATION_PREFIX}.{self.name}"

    def modes(self) -> ConnectorModes:
        props = self.render(())
        return ConnectorModes(
            connector=self.kind,
            decimal_handling=props.get("decimal.handling.mode", "string"),  # type: ignore[arg-type]
            time_precision=props.get(
                "time.precision.mode",  # type: ignore[arg-type]
                "adaptive_time_microseconds",
            ),
            binary_handling=props.get("binary.handling.mode", "bytes"),  # type: ignore[arg-type]
            interval_handling=props.get("interval.handling.mode", "string"),  # type: ignore[arg-type]
            timezone=self.timezone,
        )

    def render(self, mapped_tables: Iterable[str]) -> dict[str, str]:
        """Debezium connector properties, our safe defaults first, the admin's overrides last."""
        tables = list(self.tables) or sorted(set(mapped_tables))
        db = self.database
        schemas = "true" if self.schemas else "false"
        props: dict[str, str] = {
            "name": self.name,
            "topic.prefix": self.name,
            "database.hostname": db.host,
            "database.port": str(db.port),
            "database.user": db.user,
            "database.password": db.password,
            "snapshot.mode": self.snapshot,
            # Our decoder is exact with these; `precise` decimals need schemas to be decoded.
            "decimal.handling.mode": "string",
            "time.precision.mode": "adaptive_time_microseconds",
            # Numeric intervals count a month as 30.4375 days; ISO 8601 strings keep months exact.
            "interval.handling.mode": "string",
            # Debezium 3.6 skips truncates by default; the mapping decides what they mean.
            "skipped.operations": "none",
            "tombstones.on.delete": "true",
            "heartbeat.interval.ms": "10000",
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": schemas,
            "value.converter.schemas.enable": schemas,
            "converter.schemas.enable": schemas,
        }
        if tables:
            props["table.include.list"] = ",".join(_regex_literal(t) for t in tables)
        if self.signal_table:
            # schema.table (PostgreSQL) or database.table (MySQL), as mapped tables are named;
            # SQL Server wants the database in front.
            props["signal.data.collection"] = (
                f"{db.dbname}.{self.signal_table}"
                if self.kind == "sqlserver"
                else self.signal_table
            )
            props["signal.enabled.channels"] = "source"
            props["notification.enabled.channels"] = "sink"
            props["notification.sink.topic.name"] = self.notification_topic
        if self.kind == "postgresql":
            props.update(
                {
                    "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
                    "database.dbname": db.dbname,
                    "plugin.name": "pgoutput",
                    "slot.name": self.slot_name,
                    "publication.name": self.publication_name,
                    "publication.autocreate.mode": "filtered",
                }
            )
        elif self.kind == "mysql":
            props.update(
                {
                    "connector.class": "io.debezium.connector.mysql.MySqlConnector",
                    "database.include.list": db.dbname,
                    "database.server.id": str(self.server_id or 5400 + sum(map(ord, self.name))),
                    "bigint.unsigned.handling.mode": "precise",
                    "include.schema.changes": "false",
                }
            )
        else:
            props.update(
                {
                    "connector.class": "io.debezium.connector.sqlserver.SqlServerConnector",
                    "database.names": db.dbname,
                    "database.encrypt": "false",
                    "include.schema.changes": "false",
                }
            )
        props.update(self.properties)
        return props


def _regex_literal(table: str) -> str:
    # table.include.list entries are regular expressions matched against the whole name.
    return table.replace(".", r"\.")


def mask(props: Mapping[str, str]) -> dict[str, str]:
    """A copy safe to print or log: every secret-looking value replaced."""
    return {
        k: ("********" if any(s in k.lower() for s in SECRET_KEYS) and v else v)
        for k, v in props.items()
    }


def load_connector(path: Path) -> ConnectorSpec:
    file = str(path)
    data, lines = load_settings_file(path, "connector file")
    data = _expand_tree(data, file=file)
    try:
        return ConnectorSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            pydantic_problems(exc, file=file, lines=lines, model=ConnectorSpec)
        ) from None
