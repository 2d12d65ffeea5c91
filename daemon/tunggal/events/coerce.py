"""Read a schemaless Debezium value by the PostgreSQL type of its column.

Without `schemas.enable=true` an event is bare JSON: `19782` may be a date, `"gQI="` bit(10).
The column's type name plus the connector modes say which; `coerce` applies them.

Types whose JSON spelling is already the right Python value (integers, booleans, text, json,
uuid, enums...) pass through untouched, so a hint that names the target column's type rather
than the source's does no harm there. Types Debezium re-encodes (dates, times, numeric, bytea,
bit, interval) must arrive in the spelling the modes promise, else the value is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, TypeAlias

from tunggal.errors import DecodeError
from tunggal.events.model import UNAVAILABLE
from tunggal.events.modes import ConnectorModes, zone
from tunggal.events.values import (
    FAST_FORMS,
    Converter,
    Invalid,
    as_float,
    bits,
    bits_bytes,
    bits_number,
    bool_bits,
    bytes_from_base64,
    bytes_from_base64_url,
    bytes_from_hex,
    days_to_date,
    decimal_from_number,
    duration_text,
    fail,
    in_zone,
    is_unavailable,
    iso_date,
    iso_time,
    iso_timestamp,
    local_timestamp,
    micro_duration,
    mysql_time,
    time_of_day,
    variable_scale_decimal,
    zoned_time,
    zoned_timestamp,
)

_DEFAULT_MODES: Final = ConnectorModes()


def coerce(value: Any, pg_type: str, modes: ConnectorModes = _DEFAULT_MODES) -> Any:
    """The Python value of one schemaless Debezium column value whose column is `pg_type`.

    None and UNAVAILABLE pass through; an unchanged-TOAST placeholder becomes UNAVAILABLE.
    Raises DecodeError when the value does not have the shape `pg_type` and `modes` promise.
    """
    if value is None or value is UNAVAILABLE:
        return value
    if is_unavailable(value):
        return UNAVAILABLE
    convert = converter_for(pg_type, modes)
    if convert is None:
        return value
    try:
        return convert(value)
    except Invalid as exc:
        raise DecodeError(f"{pg_type}: {exc}") from None
    except (ValueError, TypeError, ArithmeticError) as failed:  # a name of its own: mypyc
        raise DecodeError(f"{pg_type}: {type(failed).__name__}: {failed}") from None


_INT_TYPES: Final = frozenset(
    {"smallint", "int2", "integer", "int", "int4", "bigint", "int8", "oid"}
    | {"smallserial", "serial2", "serial", "serial4", "bigserial", "serial8"}
)
_FLOAT_TYPES: Final = frozenset({"real", "float4", "double precision", "float8", "float"})
_DECIMAL_TYPES: Final = frozenset({"numeric", "decimal", "money"})
_TIMESTAMP_TYPES: Final = frozenset({"timestamp", "timestamp without time zone"})
_TIMESTAMPTZ_TYPES: Final = frozenset({"timestamptz", "timestamp with time zone"})
_TIME_TYPES: Final = frozenset({"time", "time without time zone"})
_TIMETZ_TYPES: Final = frozenset({"timetz", "time with time zone"})
_BIT_TYPES: Final = frozenset({"bit"})
_VARBIT_TYPES: Final = frozenset({"bit varying", "varbit"})
_GEOMETRY_TYPES: Final = frozenset({"point", "geometry", "geography"})
_TEXT_TYPES: Final = frozenset(
    {"text", "character varying", "varchar", "character", "char", "bpchar", "citext", "name"}
)
# Connectors whose TIME is a duration (-838:59:59..838:59:59), not a time of day.
DURATION_TIME: Final = frozenset({"mysql", "mariadb"})
_ARRAY_SUFFIX: Final = re.compile(r"\s*(\[\d*\]|\barray\b)$")
_MODIFIERS: Final = re.compile(r"\(([^)]*)\)")


def parse_pg_type(pg_type: str) -> tuple[str, tuple[int, ...], bool]:
    """'timestamp(3) without time zone' -> ('timestamp without time zone', (3,), False)."""
    text = " ".join(pg_type.replace('"', "").lower().split())
    text = text.removeprefix("pg_catalog.")
    is_array = False
    while (suffix := _ARRAY_SUFFIX.search(text)) is not None:
        is_array = True
        text = text[: suffix.start()]
    if text.startswith("_"):  # the catalog's own name for arrays: _int4 is integer[]
        is_array = True
        text = text[1:]
    modifiers: tuple[int, ...] = ()
    found = _MODIFIERS.search(text)
    if found is not None:
        try:
            modifiers = tuple(int(part) for part in found.group(1).split(",") if part.strip())
        except ValueError:
            modifiers = ()
        text = " ".join((text[: found.start()] + text[found.end() :]).split())
    return text, modifiers, is_array


@lru_cache(maxsize=4096)
def converter_for(pg_type: str, modes: ConnectorModes) -> Converter | None:
    """The converter for non-null values of `pg_type`, or None when the JSON value is kept."""
    base, modifiers, is_array = parse_pg_type(pg_type)
    convert = _scalar_converter(base, modifiers, modes)
    if convert is None or not is_array:
        return convert
    return _array_of(convert)


def _array_of(convert: Converter) -> Converter:
    def convert_array(value: Any) -> list[Any]:
        if value.__class__ is not list:
            raise fail("a JSON array", value)
        out: list[Any] = []
        for index, item in enumerate(value):
            try:
                if item is None:
                    out.append(None)
                elif item.__class__ is list:  # a multi-dimensional array
                    out.append(convert_array(item))
                else:
                    out.append(convert(item))
            except Invalid as exc:
                raise exc.at(f"[{index}]") from None
        return out

    return convert_array


def _scalar_converter(
    base: str, modifiers: tuple[int, ...], modes: ConnectorModes
) -> Converter | None:
    precision = modifiers[0] if modifiers else None
    if base in _INT_TYPES:
        return None
    if base in _FLOAT_TYPES:
        return as_float
    if base in _DECIMAL_TYPES:
        return _decimal(modes)
    if base == "date":
        return _either(days_to_date("io.debezium.time.Date"), iso_date, modes)
    if base in _TIMESTAMP_TYPES:
        return _either(_timestamp_units(precision, modes), iso_timestamp, modes)
    if base in _TIMESTAMPTZ_TYPES:
        local = _either(_timestamp_units(precision, modes), iso_timestamp, modes)
        return _zoned_or_local(local, modes)
    if base in _TIME_TYPES:
        if modes.connector in DURATION_TIME:
            return mysql_time("io.debezium.time.MicroTime", _time_unit(modes), "time")
        return _either(_time_units(precision, modes), iso_time, modes)
    if base in _TIMETZ_TYPES:
        return zoned_time
    if base.startswith("interval"):
        return _mysql_interval if modes.connector in DURATION_TIME else _interval
    if base == "bytea":
        return _binary(modes)
    if base in _BIT_TYPES:
        return bits(precision or 1)
    if base in _VARBIT_TYPES:
        return bits(None)
    if base in _GEOMETRY_TYPES:
        return _geometry
    return None


# -- refining a schema's converter by the target column ------------------------------------------

# (target column type or None, modes) -> the converter to use instead, or None to keep it.
Retype: TypeAlias = Callable[[str | None, ConnectorModes], Converter | None]


def _hint_base(pg_type: str | None) -> str | None:
    if pg_type is None:
        return None
    base, _, is_array = parse_pg_type(pg_type)
    return "[]" if is_array else base


def local_timestamp_retype(naive: Converter) -> Retype:
    """A zone-less timestamp (PostgreSQL `timestamp`, MySQL DATETIME) is wall-clock time in
    the source's `timezone:`. It becomes an instant where one is wanted: a timestamptz column,
    or a column computed by CEL or steps (no hint). Into `timestamp`, `date` or text it stays
    the wall-clock value the source holds."""

    def retype(pg_type: str | None, modes: ConnectorModes) -> Converter | None:
        if modes.timezone is None:
            return None  # read as UTC, as it always was
        if pg_type is None or _hint_base(pg_type) in _TIMESTAMPTZ_TYPES:
            return in_zone(naive, zone(modes.timezone))
        return None

    return retype


def time_retype(label: str, units_per_second: int) -> Retype:
    """MySQL TIME: see `values.mysql_time`."""

    def retype(pg_type: str | None, modes: ConnectorModes) -> Converter | None:
        base = _hint_base(pg_type)
        if modes.connector not in DURATION_TIME:
            # A time of day already; only 24:00:00 needs the text form datetime.time lacks.
            return mysql_time(label, units_per_second, "time") if base in _TIME_TYPES else None
        target = None
        if base in _TIME_TYPES:
            target = "time"
        elif base is not None and (base.startswith("interval") or base in _TEXT_TYPES):
            target = "text"
        return mysql_time(label, units_per_second, target)

    return retype


def bits_retype(length: int | None) -> Retype:
    def retype(pg_type: str | None, modes: ConnectorModes) -> Converter | None:
        base = _hint_base(pg_type)
        if base == "bytea":
            return bits_bytes(length)
        if base in _INT_TYPES or base in _DECIMAL_TYPES:
            return bits_number
        return None  # the bit string: right for bit(n), varbit and text

    return retype


def boolean_retype(pg_type: str | None, modes: ConnectorModes) -> Converter | None:
    base = _hint_base(pg_type)
    if base in _BIT_TYPES or base in _VARBIT_TYPES:
        return bool_bits("bit")
    if base == "bytea":
        return bool_bits("bytea")
    return None


def plain_string_retype(pg_type: str | None, modes: ConnectorModes) -> Converter | None:
    return None if pg_type is None else plain_string_converter(pg_type, modes)


def plain_string_converter(pg_type: str, modes: ConnectorModes) -> Converter | None:
    """For a column whose Connect schema says only "string": numeric under
    decimal.handling.mode=string and bytea under binary.handling.mode=base64/hex look like text,
    and only the column's type tells them apart. Everything else keeps the string.
    """
    base, _, _ = parse_pg_type(pg_type)
    if base in _DECIMAL_TYPES or base == "bytea":
        return converter_for(pg_type, modes)
    return None


def _binary(modes: ConnectorModes) -> Converter:
    if modes.binary_handling == "hex":
        return bytes_from_hex
    if modes.binary_handling == "base64-url-safe":
        return bytes_from_base64_url
    # "bytes" is base64 too once Kafka's JsonConverter has written it.
    return bytes_from_base64


def _decimal(modes: ConnectorModes) -> Converter:
    precise = modes.decimal_handling == "precise"

    def convert(value: Any) -> Any:
        if value.__class__ is dict:
            return variable_scale_decimal(value)
        if precise and value.__class__ is str:
            raise Invalid(
                "with decimal.handling.mode=precise and no schema the value is base64 bytes "
                "whose scale is only in the schema, so it cannot be read; set "
                "decimal.handling.mode=string or enable schemas (schemas.enable=true)"
            )
        return decimal_from_number(value)

    if not precise:
        FAST_FORMS[convert] = (str, Decimal)
    return convert


def _timestamp_units(precision: int | None, modes: ConnectorModes) -> Converter:
    mode = modes.time_precision
    if mode == "connect":
        return local_timestamp("org.apache.kafka.connect.data.Timestamp", 1_000)
    # adaptive modes choose the unit from the column's precision; PostgreSQL's default is 6.
    if precision is not None and precision <= 3 and mode != "isostring":
        return local_timestamp("io.debezium.time.Timestamp", 1_000)
    return local_timestamp("io.debezium.time.MicroTimestamp", 1_000_000)


def _time_units(precision: int | None, modes: ConnectorModes) -> Converter:
    mode = modes.time_precision
    if mode == "connect":
        return time_of_day("org.apache.kafka.connect.data.Time", 1_000)
    if mode == "adaptive" and precision is not None and precision <= 3:
        return time_of_day("io.debezium.time.Time", 1_000)
    return time_of_day("io.debezium.time.MicroTime", 1_000_000)


def _either(numeric: Converter, iso: Converter, modes: ConnectorModes) -> Converter:
    """Accept the spelling the configured mode promises, and the other one as well: an int and
    an ISO string cannot be mistaken for each other. A failure names the promised spelling.
    """
    first, second = (iso, numeric) if modes.time_precision == "isostring" else (numeric, iso)

    def convert(value: Any) -> Any:
        try:
            return first(value)
        except Invalid as exc:
            problem = exc
        try:
            return second(value)
        except Invalid:
            raise problem from None

    # The ISO converters refuse anything but a string, so for an int both orders give what
    # `numeric` gives.
    numeric_form = FAST_FORMS.get(numeric)
    if numeric_form is not None and numeric_form[0] is int:
        FAST_FORMS[convert] = numeric_form
    return convert


def _zoned_or_local(local: Converter, modes: ConnectorModes) -> Converter:
    """A timestamptz column: an offset-carrying string as it says; a zone-less value (a
    `timestamp` or DATETIME copied into it, which arrives as a number) read in the source's
    `timezone:`, else as UTC."""
    tz = zone(modes.timezone) if modes.timezone is not None else UTC

    def convert(value: Any) -> Any:
        if value.__class__ is str:
            return zoned_timestamp(value)
        return in_zone(local, tz)(value)

    return convert


def _time_unit(modes: ConnectorModes) -> int:
    return 1_000 if modes.time_precision == "connect" else 1_000_000


def _mysql_interval(value: Any) -> Any:
    if value.__class__ is int:  # a MySQL TIME copied into an interval column
        return duration_text(value)
    return _interval(value)


def _interval(value: Any) -> Any:
    if value.__class__ is str:  # interval.handling.mode=string: ISO-8601, which PostgreSQL reads
        return value
    return micro_duration(value)


def _geometry(value: Any) -> dict[str, Any]:
    if value.__class__ is not dict:
        raise fail('a geometry object {"wkb": base64, "srid": int}', value)
    out = dict(value)
    wkb = out.get("wkb")
    if wkb is not None:
        try:
            out["wkb"] = bytes_from_base64(wkb)
        except Invalid as exc:
            raise exc.at("wkb") from None
    return out
