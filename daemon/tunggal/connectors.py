"""Debezium connector definitions (`connectors/*.yaml`) and the properties we render from them.

The defaults are the ones Tunggal's decoder expects; an admin only names the database,
the credentials and, optionally, extra Debezium properties to override.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tunggal.config import _expand_tree, pydantic_problems
from tunggal.errors import ConfigError, Problem
from tunggal.events.model import NOTIFICATION_PREFIX
from tunggal.events.modes import ConnectorModes, zone
from tunggal.mapping.spec import PLAIN_TABLE
from tunggal.yamlfile import load_settings_file

# Words in a setting's name that mark its value secret, for every place a config is printed.
# The last three are Kafka client settings (kafka.client_config): a private key given inline
# (ssl.key.pem, sasl.oauthbearer.assertion.private.key.pem), its passphrase, and the
# OAUTHBEARER config string, which can carry credentials.
SECRET_KEYS = (
    "password",
    "secret",
    "sasl.jaas.config",
    "token",
    "passphrase",
    "key.pem",
    "oauthbearer.config",
)
SERVER_ID_BASE = 5400
# Each kind's usual port, taken when the connector file names none.
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "sqlserver": 1433}
# Both read the binlog with schema history; MariaDB's keeps GTIDs in MariaDB's own format
# (domain-server-sequence), which it uses to resume without further settings.
BINLOG_CONNECTOR_CLASSES = {
    "mysql": "io.debezium.connector.mysql.MySqlConnector",
    "mariadb": "io.debezium.connector.mariadb.MariaDbConnector",
}


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
        description="Source name; the slot name derives from it, and the topic prefix unless "
        "properties set topic.prefix.",
    )
    kind: Literal["postgresql", "mysql", "mariadb", "sqlserver"] = Field(
        "postgresql",
        description="mysql: Debezium's MySQL connector (MySQL 8.0+); mariadb: its MariaDB "
        "connector (MariaDB 10+; its jars go into java.classpath).",
    )
    database: DatabaseSpec
    tables: tuple[Annotated[str, StringConstraints(pattern=f"^{PLAIN_TABLE.pattern}$")], ...] = (
        Field(
            (),
            description="schema.table to capture; default: every "
            "table the mappings read from this source.",
        )
    )
    trust_server_certificate: bool = Field(
        False,
        description="SQL Server: accept the server's TLS certificate without validating it "
        "(a self-signed certificate on a test server). The connection is encrypted either way; "
        "leave it false in production and give the JVM a trust store instead.",
    )
    snapshot: Literal["initial", "no_data", "when_needed", "always", "initial_only"] = Field(
        "initial", description="Debezium snapshot.mode."
    )
    schemas: bool = Field(True, description="Send Connect schemas with each event (exact types).")
    server_id: int | None = Field(
        None,
        ge=1,
        le=2**32 - 1,
        description="MySQL/MariaDB: the replica server id Debezium reads the binlog as; "
        "default: derived from the source name (stable, and distinct per name).",
    )
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

    @field_validator("trust_server_certificate")
    @classmethod
    def _only_for_sql_server(cls, value: bool, info: ValidationInfo) -> bool:
        kind = info.data.get("kind")
        if value and kind != "sqlserver":
            raise ValueError(f"only for kind sqlserver, not {kind}")
        return value

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
    def port(self) -> int:
        """The source's port: as set, else the kind's usual one (DatabaseSpec's default is
        PostgreSQL's)."""
        if "port" in self.database.model_fields_set:
            return self.database.port
        return DEFAULT_PORTS[self.kind]

    @property
    def replica_server_id(self) -> int:
        """The server id Debezium's binlog client presents: set, or derived from the name.

        A hash, not a sum of the name's characters, so that anagrams (`opd_a` and `dpo_a`) do
        not share one: the server drops one of two readers with the same id. Above 5400, clear
        of the small ids servers are usually given, and below 2**31 for tools that read it as
        signed.
        """
        if self.server_id is not None:
            return self.server_id
        digest = hashlib.blake2b(self.name.encode(), digest_size=8).digest()
        return SERVER_ID_BASE + int.from_bytes(digest, "big") % (2**31 - SERVER_ID_BASE)

    @property
    def topic_prefix(self) -> str:
        """The prefix of the source's Kafka topics (`<prefix>.<schema>.<table>`): its name,
        unless `properties` sets `topic.prefix` (Debezium's property, which wins in `render`).
        The consumer subscribes by it; events are still keyed by the source's name."""
        return self.properties.get("topic.prefix", self.name)

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
            "database.port": str(self.port),
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
        elif self.kind in ("mysql", "mariadb"):
            props.update(
                {
                    "connector.class": BINLOG_CONNECTOR_CLASSES[self.kind],
                    "database.include.list": db.dbname,
                    "database.server.id": str(self.replica_server_id),
                    "bigint.unsigned.handling.mode": "precise",
                    "include.schema.changes": "false",
                }
            )
        else:
            props.update(
                {
                    "connector.class": "io.debezium.connector.sqlserver.SqlServerConnector",
                    "database.names": db.dbname,
                    # The SQL Server docs name only adaptive, connect and isostring. adaptive
                    # sends datetime2(7) (the default) in nanoseconds but datetime in millis,
                    # which bare JSON cannot tell apart; isostring is exact and unambiguous.
                    "time.precision.mode": "isostring",
                    # JDBC pass-through ("Encrypting connections"): TLS always, the server's
                    # certificate validated unless the connector file says otherwise.
                    "driver.encrypt": "true",
                    "driver.trustServerCertificate": (
                        "true" if self.trust_server_certificate else "false"
                    ),
                    "include.schema.changes": "false",
                }
            )
            # PostgreSQL's; the SQL Server connector has no interval type.
            del props["interval.handling.mode"]
        props.update(self.properties)
        if self.kind == "sqlserver":
            # Debezium passes both database.* and driver.* to the JDBC driver, driver.* winning:
            # an override in the older database.* spelling must not be undone by our default.
            for option in ("encrypt", "trustServerCertificate"):
                if f"database.{option}" in self.properties:
                    props.pop(f"driver.{option}", None)
        return props


def server_id_clashes(specs: Mapping[str, tuple[ConnectorSpec, str]]) -> list[Problem]:
    """Sources that would read one MySQL/MariaDB server with the same replica server id (the
    server drops one of two readers with one id). `specs`: source name -> (spec, its file)."""
    problems: list[Problem] = []
    seen: dict[tuple[str, int, int], str] = {}
    for name, (spec, file) in specs.items():
        if spec.kind not in BINLOG_CONNECTOR_CLASSES:
            continue
        key = (spec.database.host, spec.port, spec.replica_server_id)
        other = seen.setdefault(key, name)
        if other != name:
            problems.append(
                Problem(
                    file,
                    "server_id",
                    f"server id {key[2]} is also used by source {other} on "
                    f"{key[0]}:{key[1]}; give one of them another server_id",
                )
            )
    return problems


def _regex_literal(table: str) -> str:
    # table.include.list entries are regular expressions matched against the whole name, and
    # the list is split at commas: each name is matched literally (names are plain, see
    # mapping.spec.PLAIN_TABLE, but `$` and `-` are regex characters).
    schema, _, name = table.partition(".")
    return f"{re.escape(schema)}\\.{re.escape(name)}"


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
