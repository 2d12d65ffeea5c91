"""A PostgreSQL source row as psycopg reads it, turned into the row Debezium's events give the
mapping, so that `tunggal verify` maps exactly what production maps.

The two differ: psycopg hands a jsonb column over parsed (a dict), Debezium as text; a uuid as
`UUID`, Debezium as text; a numeric as `Decimal`, Debezium (decimal.handling.mode=string) as
text that only a type hint turns into a `Decimal`. Each column is read in two steps, as
production reads it:

1. its **spelling**: the JSON value Debezium writes for it under the connector's modes (days
   since 1970 for a date, an ISO string in UTC for a timestamptz, base64 for bytea, ...);
2. the **decoder's own converter** for it (`events.connect` with Connect schemas, else
   `events.coerce` by the same type hints the pipeline gives, from the target's columns).

That composition is the definition. Most columns come out as psycopg read them (an int, a
date, a text), and those are passed through without the two steps: `column_reader` returns
None for them, and the tests check every such shortcut against the composition.

Pure: no database access. The SQL that reads each column (`::text` for jsonb, intervals and
bit strings; out-of-range dates flagged) lives in `reconcile.pgsource`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final

from tunggal.events.coerce import converter_for, parse_pg_type, plain_string_converter
from tunggal.events.connect import compile_schema
from tunggal.events.modes import ConnectorModes

Convert = Callable[[Any], Any]

_EPOCH_DAY: Final = date(1970, 1, 1).toordinal()
_EPOCH: Final = datetime(1970, 1, 1)
_EPOCH_UTC: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_US: Final = 86_400_000_000
# Debezium's MicroDuration counts a month as 30.4375 days (io.debezium.time.MicroDuration).
_MONTH_US: Final = 30.4375 * _DAY_US

INT_TYPES: Final = frozenset(
    {"smallint", "int2", "integer", "int", "int4", "bigint", "int8", "oid"}
    | {"smallserial", "serial2", "serial", "serial4", "bigserial", "serial8"}
)
FLOAT_TYPES: Final = frozenset({"real", "float4", "double precision", "float8", "float"})
DECIMAL_TYPES: Final = frozenset({"numeric", "decimal", "money"})
TEXT_TYPES: Final = frozenset(
    {"text", "character varying", "varchar", "character", "char", "bpchar", "name", "citext"}
)
TIMESTAMP_TYPES: Final = frozenset({"timestamp", "timestamp without time zone"})
TIMESTAMPTZ_TYPES: Final = frozenset({"timestamptz", "timestamp with time zone"})
TIME_TYPES: Final = frozenset({"time", "time without time zone"})
TIMETZ_TYPES: Final = frozenset({"timetz", "time with time zone"})
# Read as text by the SQL (`pgsource`): psycopg would parse them into other Python types.
AS_TEXT_TYPES: Final = frozenset(
    {"json", "jsonb", "interval", "bit", "bit varying", "varbit", "inet", "cidr", "macaddr"}
    | {"macaddr8", "xml", "tsvector", "tsquery", "hstore", "ltree", "point", "geometry"}
    | {"geography", "line", "lseg", "box", "path", "polygon", "circle", "int4range"}
    | {"int8range", "numrange", "tsrange", "tstzrange", "daterange"}
)


def base_type(pg_type: str) -> tuple[str, tuple[int, ...], bool]:
    """('numeric', (18, 2), False) for 'numeric(18,2)'; arrays say True."""
    return parse_pg_type(pg_type)


# -- 1. Debezium's JSON spelling of a value ---------------------------------------------------


def _iso_fraction(us: int) -> str:
    """java.time's ISO formatters: the fraction with as few digits as it needs, or none."""
    return "" if not us else "." + f"{us:06d}".rstrip("0")


def _iso_time(t: time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}{_iso_fraction(t.microsecond)}"


def _days(d: date) -> int:
    return d.toordinal() - _EPOCH_DAY


def _micros(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _time_micros(t: time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def _utc_time(t: time) -> time:
    """A time with an offset, moved to UTC as Debezium's ZonedTime does ('13:14:15+07' is
    '06:14:15Z')."""
    offset = t.utcoffset() or timedelta(0)
    moved = datetime.combine(date(2000, 1, 2), t.replace(tzinfo=None)) - offset
    return moved.time().replace(tzinfo=UTC)


_ISO_INTERVAL: Final = re.compile(
    r"^P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)D)?"
    r"(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?\d+(?:\.\d+)?)S)?)?$"
)


def interval_micros(iso: str) -> int:
    """An interval in PostgreSQL's iso_8601 style ('P1M2DT3H4M5.5S') as Debezium's
    MicroDuration: months of 30.4375 days, years of twelve months."""
    found = _ISO_INTERVAL.match(iso)
    if found is None:
        raise ValueError(f"not an ISO 8601 interval: {iso!r}")
    y, mo, d, h, mi, s = (g or "0" for g in found.groups())
    seconds = Decimal(s)
    months = int(y) * 12 + int(mo)
    rest = ((int(d) * 24 + int(h)) * 60 + int(mi)) * 60_000_000 + int(seconds * 1_000_000)
    return int(months * _MONTH_US) + rest


def _bits_bytes(text: str) -> bytes:
    """A bit string as java.util.BitSet.toByteArray(): little-endian, trailing zero bytes cut."""
    number = int(text, 2) if text else 0
    return number.to_bytes((number.bit_length() + 7) // 8, "little")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _decimal_parts(value: Decimal) -> tuple[int, int]:
    """(unscaled, scale) of a finite Decimal, as java.math.BigDecimal has them."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    return (unscaled * 10**exponent, 0) if exponent > 0 else (unscaled, -exponent)


def _unscaled_b64(unscaled: int) -> str:
    length = max(1, (unscaled.bit_length() + 8) // 8)
    return _b64(unscaled.to_bytes(length, "big", signed=True))


def spelling(pg_type: str, modes: ConnectorModes) -> Convert:
    """psycopg's value of a column of `pg_type` (read as `pgsource` reads it) -> the JSON value
    Debezium writes for it. Arrays are spelt item by item."""
    base, modifiers, is_array = base_type(pg_type)
    one = _scalar_spelling(base, modifiers, modes)
    if not is_array:
        return one

    def each(value: Any) -> Any:
        if isinstance(value, list):
            return [None if v is None else each(v) for v in value]
        return one(value)

    return each


def _scalar_spelling(base: str, modifiers: tuple[int, ...], modes: ConnectorModes) -> Convert:
    precision = modifiers[0] if modifiers else None
    time_mode = modes.time_precision
    if base in DECIMAL_TYPES:
        if modes.decimal_handling == "double":
            return float
        if modes.decimal_handling == "precise":
            if base == "money" or len(modifiers) == 2:
                return lambda v: _unscaled_b64(_decimal_parts(v)[0])

            def variable(value: Decimal) -> dict[str, Any]:
                unscaled, scale = _decimal_parts(value)
                return {"scale": scale, "value": _unscaled_b64(unscaled)}

            return variable
        return lambda v: format(v, "f")
    if base == "date":
        if time_mode == "isostring":
            return lambda v: v.isoformat() + "Z"
        return _days
    if base in TIMESTAMP_TYPES:
        if time_mode == "isostring":
            return lambda v: f"{v.date().isoformat()}T{_iso_time(v.time())}Z"
        if time_mode == "connect" or (precision is not None and precision <= 3):
            return lambda v: _micros(v) // 1000
        return _micros
    if base in TIMESTAMPTZ_TYPES:
        return lambda v: _zoned(v.astimezone(UTC))
    if base in TIME_TYPES:
        if time_mode == "isostring":
            return lambda v: _iso_time(v) + "Z"
        if time_mode == "connect" or (
            time_mode == "adaptive" and precision is not None and precision <= 3
        ):
            return lambda v: _time_micros(v) // 1000
        return _time_micros
    if base in TIMETZ_TYPES:
        return lambda v: _iso_time(_utc_time(v)) + "Z"
    if base == "interval":
        if modes.interval_handling == "string":
            return _same
        return interval_micros
    if base == "uuid":
        return str
    if base == "bytea":
        if modes.binary_handling == "hex":
            return lambda v: bytes(v).hex()
        if modes.binary_handling == "base64-url-safe":
            return lambda v: base64.urlsafe_b64encode(bytes(v)).decode()
        return lambda v: _b64(bytes(v))
    if base == "bit":
        if (precision or 1) == 1:
            return lambda v: v == "1"
        return lambda v: _b64(_bits_bytes(v))
    if base in ("bit varying", "varbit"):
        return lambda v: _b64(_bits_bytes(v))
    return _same


def _zoned(v: datetime) -> str:
    return f"{v.date().isoformat()}T{_iso_time(v.time())}Z"


def _same(value: Any) -> Any:
    return value


# -- 2. the decoder's converter ---------------------------------------------------------------


def connect_schema(pg_type: str, modes: ConnectorModes) -> dict[str, Any]:
    """The Connect schema Debezium's PostgreSQL connector gives a column of `pg_type`."""
    base, modifiers, is_array = base_type(pg_type)
    schema = _scalar_schema(base, modifiers, modes)
    return {"type": "array", "items": schema} if is_array else schema


def _named(kind: str, name: str, **parameters: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind, "name": name}
    if parameters:
        schema["parameters"] = parameters
    return schema


def _scalar_schema(base: str, modifiers: tuple[int, ...], modes: ConnectorModes) -> dict[str, Any]:
    precision = modifiers[0] if modifiers else None
    time_mode = modes.time_precision
    if base in ("smallint", "int2", "smallserial", "serial2"):
        return {"type": "int16"}
    if base in ("integer", "int", "int4", "serial", "serial4"):
        return {"type": "int32"}
    if base in INT_TYPES:
        return {"type": "int64"}
    if base in ("real", "float4"):
        return {"type": "float"}
    if base in FLOAT_TYPES:
        return {"type": "double"}
    if base in ("boolean", "bool"):
        return {"type": "boolean"}
    if base in DECIMAL_TYPES:
        if modes.decimal_handling == "double":
            return {"type": "double"}
        if modes.decimal_handling == "precise":
            if base == "money":
                return _named("bytes", "org.apache.kafka.connect.data.Decimal", scale="2")
            if len(modifiers) == 2:
                scale = str(modifiers[1])
                return _named("bytes", "org.apache.kafka.connect.data.Decimal", scale=scale)
            return _named("struct", "io.debezium.data.VariableScaleDecimal")
        return {"type": "string"}
    if base == "date":
        if time_mode == "isostring":
            return _named("string", "io.debezium.time.IsoDate")
        if time_mode == "connect":
            return _named("int32", "org.apache.kafka.connect.data.Date")
        return _named("int32", "io.debezium.time.Date")
    if base in TIMESTAMP_TYPES:
        if time_mode == "isostring":
            return _named("string", "io.debezium.time.IsoTimestamp")
        if time_mode == "connect":
            return _named("int64", "org.apache.kafka.connect.data.Timestamp")
        if precision is not None and precision <= 3:
            return _named("int64", "io.debezium.time.Timestamp")
        return _named("int64", "io.debezium.time.MicroTimestamp")
    if base in TIMESTAMPTZ_TYPES:
        return _named("string", "io.debezium.time.ZonedTimestamp")
    if base in TIME_TYPES:
        if time_mode == "isostring":
            return _named("string", "io.debezium.time.IsoTime")
        if time_mode == "connect":
            return _named("int32", "org.apache.kafka.connect.data.Time")
        if time_mode == "adaptive" and precision is not None and precision <= 3:
            return _named("int32", "io.debezium.time.Time")
        return _named("int64", "io.debezium.time.MicroTime")
    if base in TIMETZ_TYPES:
        return _named("string", "io.debezium.time.ZonedTime")
    if base == "interval":
        if modes.interval_handling == "string":
            return _named("string", "io.debezium.time.Interval")
        return _named("int64", "io.debezium.time.MicroDuration")
    if base in ("json", "jsonb"):
        return _named("string", "io.debezium.data.Json")
    if base == "uuid":
        return _named("string", "io.debezium.data.Uuid")
    if base == "xml":
        return _named("string", "io.debezium.data.Xml")
    if base == "bytea":
        return {"type": "bytes"} if modes.binary_handling == "bytes" else {"type": "string"}
    if base == "bit":
        if (precision or 1) == 1:
            return {"type": "boolean"}
        return _named("bytes", "io.debezium.data.Bits", length=str(precision))
    if base in ("bit varying", "varbit"):
        return _named("bytes", "io.debezium.data.Bits", length="2147483647")
    return {"type": "string"}


def _decoded(pg_type: str, modes: ConnectorModes, schemas: bool, hint: str | None) -> Convert:
    """The decoder's converter for the spelling of a `pg_type` column (see module docstring)."""
    if not schemas:
        found = converter_for(hint, modes) if hint else None
        return _same if found is None else found
    schema = connect_schema(pg_type, modes)
    plain = schema.get("type") == "string" and "name" not in schema
    items = schema.get("items")
    plain_items = isinstance(items, dict) and items.get("type") == "string" and "name" not in items
    if hint and (plain or plain_items):
        hinted = plain_string_converter(hint, modes)
        if hinted is not None:
            return hinted
    return compile_schema(schema)


def reference_reader(
    pg_type: str, modes: ConnectorModes, schemas: bool, hint: str | None
) -> Convert:
    """psycopg's value -> the mapping's value, by definition: the spelling, then the decoder."""
    spell = spelling(pg_type, modes)
    decode = _decoded(pg_type, modes, schemas, hint)
    return lambda value: decode(spell(value))


# -- the shortcut -----------------------------------------------------------------------------


def column_reader(
    pg_type: str, modes: ConnectorModes, schemas: bool, hint: str | None
) -> Convert | None:
    """What turns psycopg's value of a non-NULL `pg_type` column into the mapping's value;
    None when psycopg's value is already it. Equal to `reference_reader` for every value."""
    base, modifiers, is_array = base_type(pg_type)
    if not schemas:
        return reference_reader(pg_type, modes, schemas, hint)
    # A text column into a target column of another type (text into numeric, say) is read by
    # the target type's converter, as the decoder does with a plain string.
    text_as_is = base in TEXT_TYPES and (
        hint is None or plain_string_converter(hint, modes) is None
    )
    if is_array:
        if base in INT_TYPES or text_as_is or base in ("boolean", "bool"):
            return None
        return reference_reader(pg_type, modes, schemas, hint)
    precision = modifiers[0] if modifiers else None
    time_mode = modes.time_precision
    if base in INT_TYPES or text_as_is or base in ("boolean", "bool"):
        return None
    if base in FLOAT_TYPES:
        return None
    if base in DECIMAL_TYPES:
        if modes.decimal_handling == "precise" or (
            modes.decimal_handling == "string"
            and hint is not None
            and plain_string_converter(hint, modes) is not None
            and base_type(hint)[0] in DECIMAL_TYPES
        ):
            return None  # a Decimal made from the same digits
        return reference_reader(pg_type, modes, schemas, hint)
    if base == "date" and time_mode != "isostring":
        return None
    if base in TIMESTAMP_TYPES and time_mode in ("adaptive", "adaptive_time_microseconds"):
        return None  # timestamp(0..3) holds no more than the milliseconds Debezium sends
    if base in TIME_TYPES and (
        time_mode == "adaptive_time_microseconds"
        or (time_mode == "adaptive" and (precision is None or precision > 3))
    ):
        return None
    if base in TIMESTAMPTZ_TYPES:
        return _as_utc
    if base == "uuid":
        return str
    if base == "bytea" and modes.binary_handling == "bytes":
        return bytes
    if base in ("json", "jsonb", "xml") or (
        base == "interval" and modes.interval_handling == "string"
    ):
        return None  # read as text, sent as text
    return reference_reader(pg_type, modes, schemas, hint)


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)
