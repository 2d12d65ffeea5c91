"""coerce(): schemaless Debezium values read by PostgreSQL type name and connector modes."""

from __future__ import annotations

import base64
import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tunggal.errors import DecodeError
from tunggal.events import UNAVAILABLE, UNAVAILABLE_PLACEHOLDER, ConnectorModes, RawEvent, coerce
from tunggal.events import decode as decode_event
from tunggal.events.coerce import parse_pg_type
from tunggal.events.model import BitString

DEFAULT = ConnectorModes()


def modes(**settings: Any) -> ConnectorModes:
    return ConnectorModes(**settings)


@pytest.mark.parametrize(
    ("pg_type", "parsed"),
    [
        ("numeric(12,2)", ("numeric", (12, 2), False)),
        ("timestamp(3) without time zone", ("timestamp without time zone", (3,), False)),
        ("TIMESTAMP WITH TIME ZONE", ("timestamp with time zone", (), False)),
        ("integer[]", ("integer", (), True)),
        ("_int4", ("int4", (), True)),
        ("character varying(20)[][]", ("character varying", (20,), True)),
        ("pg_catalog.bit varying(5)", ("bit varying", (5,), False)),
        ('"public"."mood"', ("public.mood", (), False)),
        ("int array", ("int", (), True)),
    ],
)
def test_parse_pg_type(pg_type: str, parsed: tuple[str, tuple[int, ...], bool]) -> None:
    assert parse_pg_type(pg_type) == parsed


@pytest.mark.parametrize(
    ("value", "pg_type", "settings", "expected"),
    [
        # numeric and money
        ("12345.67", "numeric(12,2)", {}, Decimal("12345.67")),
        ("1.50", "numeric", {}, Decimal("1.50")),
        ("12.34", "money", {}, Decimal("12.34")),
        (12345.67, "numeric", {"decimal_handling": "double"}, Decimal("12345.67")),
        (7, "decimal(3)", {"decimal_handling": "double"}, Decimal(7)),
        (
            {"scale": 9, "value": base64.b64encode((1000000001).to_bytes(4, "big")).decode()},
            "numeric",
            {"decimal_handling": "precise"},
            Decimal("1.000000001"),
        ),
        # dates and times in each time.precision.mode
        (19782, "date", {}, date(2024, 2, 29)),
        ("2024-02-29Z", "date", {"time_precision": "isostring"}, date(2024, 2, 29)),
        (1704164645123456, "timestamp", {}, datetime(2024, 1, 2, 3, 4, 5, 123456)),
        (
            1704164645123456,
            "timestamp(6) without time zone",
            {"time_precision": "adaptive"},
            datetime(2024, 1, 2, 3, 4, 5, 123456),
        ),
        (
            1704164645123,
            "timestamp(3) without time zone",
            {"time_precision": "adaptive"},
            datetime(2024, 1, 2, 3, 4, 5, 123000),
        ),
        (
            1704164645123,
            "timestamp",
            {"time_precision": "connect"},
            datetime(2024, 1, 2, 3, 4, 5, 123000),
        ),
        (
            "2024-01-02T03:04:05.123456Z",
            "timestamp",
            {"time_precision": "isostring"},
            datetime(2024, 1, 2, 3, 4, 5, 123456),
        ),
        (
            "2024-01-01T20:04:05.123456Z",
            "timestamptz",
            {},
            datetime(2024, 1, 1, 20, 4, 5, 123456, tzinfo=UTC),
        ),
        (47655500000, "time", {}, time(13, 14, 15, 500000)),
        (47655500000, "time(3)", {}, time(13, 14, 15, 500000)),  # adaptive_time_microseconds
        (47655500, "time(3)", {"time_precision": "adaptive"}, time(13, 14, 15, 500000)),
        (47655500000, "time(6)", {"time_precision": "adaptive"}, time(13, 14, 15, 500000)),
        (47655500, "time", {"time_precision": "connect"}, time(13, 14, 15, 500000)),
        ("13:14:15.5Z", "time", {"time_precision": "isostring"}, time(13, 14, 15, 500000)),
        ("06:14:15Z", "time with time zone", {}, time(6, 14, 15, tzinfo=UTC)),
        # interval.handling.mode
        (2813645500000, "interval", {}, timedelta(microseconds=2813645500000)),
        ("P1M2DT3H4M5.5S", "interval", {"interval_handling": "string"}, "P1M2DT3H4M5.5S"),
        # binary.handling.mode
        ("3q2+7w==", "bytea", {}, b"\xde\xad\xbe\xef"),
        ("3q2+7w==", "bytea", {"binary_handling": "base64"}, b"\xde\xad\xbe\xef"),
        ("3q2-7w==", "bytea", {"binary_handling": "base64-url-safe"}, b"\xde\xad\xbe\xef"),
        ("deadbeef", "bytea", {"binary_handling": "hex"}, b"\xde\xad\xbe\xef"),
        # bits
        ("gQI=", "bit(10)", {}, BitString("1010000001")),
        ("BQ==", "bit varying", {}, BitString("101")),
        ("BQ==", "varbit(8)", {}, BitString("101")),
        (True, "bit", {}, BitString("1")),
        (False, "bit(1)", {}, BitString("0")),
        # arrays, including multi-dimensional ones and nulls
        ([19782, None], "date[]", {}, [date(2024, 2, 29), None]),
        ([["1.5"], ["2"]], "numeric[][]", {}, [[Decimal("1.5")], [Decimal("2")]]),
        (["3q0="], "_bytea", {}, [b"\xde\xad"]),
        # floats, NaN and the infinities as Jackson writes them
        (3, "double precision", {}, 3.0),
        (1e-07, "float8", {}, 1e-07),
        ("-Infinity", "real", {}, float("-inf")),
        # kept as they are
        (9007199254740993, "bigint", {}, 9007199254740993),
        ("null", "jsonb", {}, "null"),
        ('{"x":1}', "json", {}, '{"x":1}'),
        ("senang", "mood", {}, "senang"),
        ("ab ", "character(3)", {}, "ab "),
        ([1, 2, 3], "integer[]", {}, [1, 2, 3]),
        (True, "boolean", {}, True),
        # geometry: a dict with its wkb decoded
        ({"wkb": "AQE=", "srid": 4326}, "geometry", {}, {"wkb": b"\x01\x01", "srid": 4326}),
    ],
)
def test_coerce(value: Any, pg_type: str, settings: dict[str, Any], expected: Any) -> None:
    result = coerce(value, pg_type, modes(**settings))
    assert result == expected
    assert type(result) is type(expected)
    if isinstance(expected, Decimal) and expected.is_finite():
        assert str(result) == str(expected)


def test_coerce_nan() -> None:
    assert math.isnan(coerce("NaN", "double precision", DEFAULT))
    assert coerce("NaN", "numeric", DEFAULT).is_nan()


@pytest.mark.parametrize("pg_type", ["text", "numeric", "bytea", "integer[]", "jsonb", "date"])
def test_none_and_unavailable_pass_through(pg_type: str) -> None:
    assert coerce(None, pg_type, DEFAULT) is None
    assert coerce(UNAVAILABLE, pg_type, DEFAULT) is UNAVAILABLE


@pytest.mark.parametrize(
    ("value", "pg_type"),
    [
        (UNAVAILABLE_PLACEHOLDER, "text"),
        (UNAVAILABLE_PLACEHOLDER, "jsonb"),
        (base64.b64encode(UNAVAILABLE_PLACEHOLDER.encode()).decode(), "bytea"),
        ([UNAVAILABLE_PLACEHOLDER], "text[]"),
        (list(UNAVAILABLE_PLACEHOLDER.encode()), "integer[]"),
        (list(UNAVAILABLE_PLACEHOLDER.encode()), "date[]"),
        (UNAVAILABLE_PLACEHOLDER, "unknown_type"),
    ],
)
def test_placeholder_becomes_unavailable(value: Any, pg_type: str) -> None:
    assert coerce(value, pg_type, DEFAULT) is UNAVAILABLE


@pytest.mark.parametrize(
    ("value", "pg_type", "settings", "message"),
    [
        ("abc", "date", {}, "date: expected int days for io.debezium.time.Date, got 'abc'"),
        (1.5, "date", {}, "expected int days for io.debezium.time.Date, got 1.5"),
        (
            True,
            "date",
            {"time_precision": "isostring"},
            "ISO-8601 date for io.debezium.time.IsoDate",
        ),
        ("abc", "numeric", {}, "expected a decimal number, got 'abc'"),
        (
            "AeJA",
            "numeric(12,2)",
            {"decimal_handling": "precise"},
            "set decimal.handling.mode=string or enable schemas",
        ),
        ("zz", "bytea", {"binary_handling": "hex"}, "hex bytes (binary.handling.mode=hex)"),
        ("***", "bytea", {}, "expected base64 bytes, got '***'"),
        ("gQI=", "bit(3)", {}, "10 bits do not fit"),
        (1.5, "interval", {}, "int microseconds for io.debezium.time.MicroDuration"),
        ("1 day", "interval", {}, None),  # kept: PostgreSQL reads interval text itself
        ([1, "x"], "date[]", {}, "date[]: [1]: expected int days"),
        ("x", "integer[]", {}, None),  # kept: integer spellings need no converting
        ("x", "date[]", {}, "expected a JSON array"),
        ("20:04:05", "timestamptz", {}, "ISO-8601 timestamp with offset"),
        ("hello", "double precision", {}, "expected a floating-point number, got 'hello'"),
    ],
)
def test_coerce_errors(
    value: Any, pg_type: str, settings: dict[str, Any], message: str | None
) -> None:
    if message is None:
        assert coerce(value, pg_type, modes(**settings)) == value
        return
    with pytest.raises(DecodeError) as caught:
        coerce(value, pg_type, modes(**settings))
    assert message in str(caught.value)


def test_precise_decimal_without_schema_is_refused_in_a_whole_event() -> None:
    value = (
        '{"before":null,"after":{"n":"AeJA"},"op":"c",'
        '"source":{"connector":"postgresql","schema":"public","table":"t","lsn":1,"ts_ms":1}}'
    )
    with pytest.raises(DecodeError) as caught:
        decode_event(
            RawEvent("cap.public.t", None, value),
            source="cap",
            modes=ConnectorModes(decimal_handling="precise"),
            hints=lambda table: {"n": "numeric(12,2)"},
        )
    assert str(caught.value).startswith("after.n: with decimal.handling.mode=precise and no schema")
    assert caught.value.table == "public.t"


def test_hints_are_cached_but_follow_changes() -> None:
    def event(value: Any) -> RawEvent:
        return RawEvent(
            "cap.public.t",
            None,
            '{"before":null,"after":{"c":' + value + '},"op":"c","source":{"connector":'
            '"postgresql","schema":"public","table":"t","lsn":1,"ts_ms":1}}',
        )

    hints = {"c": "date"}
    first = decode_event(event("1"), source="s", hints=lambda table: hints)
    hints = {"c": "integer"}  # a new mapping object with new content, as after ALTER TABLE
    second = decode_event(event("1"), source="s", hints=lambda table: hints)
    assert first is not None and second is not None
    assert first.after == {"c": date(1970, 1, 2)}
    assert second.after == {"c": 1}
