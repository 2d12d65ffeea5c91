"""The connector settings that decide how Debezium spells a value in JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Connector = Literal["postgresql", "mysql", "mariadb", "sqlserver"]
# The MySQL family: binlog positions, `db` names the database, a GTID names the transaction.
BINLOG_CONNECTORS = frozenset({"mysql", "mariadb"})
DecimalHandling = Literal["precise", "string", "double"]
TimePrecision = Literal["adaptive", "adaptive_time_microseconds", "connect", "isostring"]
BinaryHandling = Literal["bytes", "base64", "base64-url-safe", "hex"]
IntervalHandling = Literal["numeric", "string"]


@dataclass(frozen=True, slots=True)
class ConnectorModes:
    """Must match the Debezium connector's settings of the same names.

    With `schemas.enable=true` every value carries its own type and only `connector` matters
    (plus `decimal_handling` and `binary_handling` for columns a hint marks as numeric or
    bytea). Without schemas these modes are the only way to read a column correctly.
    """

    connector: Connector = "postgresql"
    decimal_handling: DecimalHandling = "string"  # decimal.handling.mode
    time_precision: TimePrecision = "adaptive_time_microseconds"  # time.precision.mode
    binary_handling: BinaryHandling = "bytes"  # binary.handling.mode
    interval_handling: IntervalHandling = "numeric"  # interval.handling.mode
    # The IANA zone the source's zone-less values (MySQL DATETIME, PostgreSQL `timestamp`) are
    # wall-clock times in; None reads them as UTC. Not a Debezium setting: Tunggal's own.
    timezone: str | None = None

    def __post_init__(self) -> None:
        # Literal types are only checked by mypy; these values come from YAML.
        for name, allowed in (
            ("connector", Connector),
            ("decimal_handling", DecimalHandling),
            ("time_precision", TimePrecision),
            ("binary_handling", BinaryHandling),
            ("interval_handling", IntervalHandling),
        ):
            value = getattr(self, name)
            choices = get_args(allowed)
            if value not in choices:
                raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}")
        if self.timezone is not None:
            zone(self.timezone)


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError saying so when zoneinfo does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: give an IANA name such as Asia/Jakarta"
        ) from None
