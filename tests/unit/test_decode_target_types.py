"""Values whose Python form depends on the target column and the source: MySQL TIME, zone-less
timestamps with a source `timezone:`, BIT(n), intervals. Events shaped as Debezium 3.6 sends
them (see the type tables in Debezium's MySQL and PostgreSQL connector documentation)."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunggal.errors import DecodeError
from tunggal.events import ConnectorModes, RawEvent, decode
from tunggal.events.values import MYSQL_TIME_MAX_US, duration_text

from .test_decode_types import MYSQL_SOURCE, PG_SOURCE, column, compact, envelope

MYSQL = ConnectorModes(connector="mysql")
JAKARTA = ZoneInfo("Asia/Jakarta")
PROPERTY = settings(max_examples=300, deadline=None)


def value_of(
    schema: dict[str, Any],
    value: Any,
    hint: str | None,
    modes: ConnectorModes = MYSQL,
) -> Any:
    source = MYSQL_SOURCE if modes.connector == "mysql" else PG_SOURCE
    hints: Mapping[str, str] | None = None if hint is None else {"v": hint}
    event = decode(
        envelope([{**schema, "field": "v"}], {"v": value}, source=source),
        source="s",
        modes=modes,
        hints=lambda table: hints,
    )
    assert event is not None and event.after is not None
    return event.after["v"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


MICRO_TIME = column("v", "int64", "io.debezium.time.MicroTime")
MICRO_TIMESTAMP = column("v", "int64", "io.debezium.time.MicroTimestamp")
H838 = MYSQL_TIME_MAX_US  # 838:59:59


# -- MySQL TIME --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (H838, "838:59:59"),
        (-H838, "-838:59:59"),
        (1, "00:00:00.000001"),
        (-1, "-00:00:00.000001"),
        (25 * 3600 * 10**6 + 500_000, "25:00:00.500000"),
        (0, "00:00:00"),
    ],
)
@pytest.mark.parametrize("hint", ["interval", "text", "character varying(20)"])
def test_mysql_time_into_interval_or_text_keeps_its_hours(us: int, text: str, hint: str) -> None:
    assert value_of(MICRO_TIME, us, hint) == text


def test_mysql_time_into_time_is_a_time_of_day_when_it_is_one() -> None:
    assert value_of(MICRO_TIME, (13 * 3600 + 14 * 60 + 15) * 10**6 + 5, "time") == time(
        13, 14, 15, 5
    )
    assert value_of(MICRO_TIME, 24 * 3600 * 10**6, "time without time zone") == "24:00:00"


@pytest.mark.parametrize("us", [-1, -H838, 24 * 3600 * 10**6 + 1, H838])
def test_mysql_time_outside_a_day_into_time_is_poison_naming_the_column(us: int) -> None:
    with pytest.raises(DecodeError) as info:
        value_of(MICRO_TIME, us, "time")
    message = str(info.value)
    assert re.search(r"\bafter\.v\b", message), message
    assert duration_text(us) in message and "interval column" in message


def test_mysql_time_elsewhere_is_a_duration() -> None:
    assert value_of(MICRO_TIME, -H838, None) == -timedelta(hours=838, minutes=59, seconds=59)
    # MySQL TIME(0..3) under time.precision.mode=adaptive is io.debezium.time.Time (millis)
    millis = column("v", "int32", "io.debezium.time.Time")
    assert value_of(millis, -1500, "interval") == "-00:00:01.500000"


def test_postgresql_time_is_still_a_time_of_day() -> None:
    pg = ConnectorModes(connector="postgresql")
    assert value_of(MICRO_TIME, 3_600_000_000, None, pg) == time(1)
    assert value_of(MICRO_TIME, 3_600_000_000, "interval", pg) == time(1)


def parse_duration(text: str) -> int:
    """Reference: how PostgreSQL reads '[-]H:MM:SS[.ffffff]' into an interval, in µs."""
    m = re.fullmatch(r"(-?)(\d+):([0-5]\d):([0-5]\d)(?:\.(\d{6}))?", text)
    assert m is not None, text
    us = ((int(m[2]) * 60 + int(m[3])) * 60 + int(m[4])) * 10**6 + int(m[5] or 0)
    return -us if m[1] else us


@PROPERTY
@given(us=st.integers(-H838, H838))
def test_mysql_time_round_trips_through_its_interval_text(us: int) -> None:
    text = value_of(MICRO_TIME, us, "interval")
    assert parse_duration(text) == us
    as_time: Any
    try:
        as_time = value_of(MICRO_TIME, us, "time")
    except DecodeError:
        assert not 0 <= us <= 86_400 * 10**6
    else:
        assert 0 <= us <= 86_400 * 10**6
        if isinstance(as_time, time):
            back = ((as_time.hour * 60 + as_time.minute) * 60 + as_time.second) * 10**6
            assert back + as_time.microsecond == us
        else:
            assert as_time == "24:00:00" and us == 86_400 * 10**6


# -- zone-less timestamps and the source's time zone -------------------------------------------

WIB = ConnectorModes(connector="mysql", timezone="Asia/Jakarta")
NOON_US = int((datetime(2024, 3, 1, 12, 0) - datetime(1970, 1, 1)).total_seconds()) * 10**6


def test_datetime_into_timestamptz_is_read_in_the_source_zone() -> None:
    got = value_of(MICRO_TIMESTAMP, NOON_US, "timestamp with time zone", WIB)
    assert got == datetime(2024, 3, 1, 5, 0, tzinfo=UTC)  # 12:00 WIB is 05:00 UTC
    assert got.utcoffset() == timedelta(hours=7)  # and keeps its local fields


def test_datetime_into_timestamp_keeps_its_wall_clock() -> None:
    for hint in ("timestamp without time zone", "timestamp(3)", "date", "text"):
        assert value_of(MICRO_TIMESTAMP, NOON_US, hint, WIB) == datetime(2024, 3, 1, 12, 0)


def test_datetime_for_cel_or_steps_is_an_instant_in_the_source_zone() -> None:
    got = value_of(MICRO_TIMESTAMP, NOON_US, None, WIB)
    assert got == datetime(2024, 3, 1, 12, 0, tzinfo=JAKARTA)


def test_without_a_timezone_zone_less_values_stay_naive_read_as_utc() -> None:
    for hint in (None, "timestamptz", "timestamp"):
        assert value_of(MICRO_TIMESTAMP, NOON_US, hint, MYSQL) == datetime(2024, 3, 1, 12, 0)


def test_postgresql_timestamp_with_timezone_too() -> None:
    modes = ConnectorModes(connector="postgresql", timezone="Asia/Jakarta")
    millis = column("v", "int64", "io.debezium.time.Timestamp")
    got = value_of(millis, NOON_US // 1000, "timestamptz", modes)
    assert got == datetime(2024, 3, 1, 5, 0, tzinfo=UTC)


def test_a_timestamptz_source_is_never_shifted_again() -> None:
    zoned = column("v", "string", "io.debezium.time.ZonedTimestamp")
    got = value_of(zoned, "2024-03-01T05:00:00Z", "timestamptz", WIB)
    assert got == datetime(2024, 3, 1, 5, 0, tzinfo=UTC)


def test_year_one_in_a_zone_east_of_utc_is_poison_not_a_crash() -> None:
    first = int((datetime(1, 1, 1) - datetime(1970, 1, 1)).total_seconds()) * 10**6
    with pytest.raises(DecodeError, match=r"after\.v: .*outside what Python"):
        value_of(MICRO_TIMESTAMP, first, "timestamptz", WIB)


def test_schemaless_datetime_into_timestamptz_is_read_in_the_source_zone() -> None:
    row = {"id": 1, "v": NOON_US}
    raw = RawEvent(
        "m.inventory.x",
        None,
        compact({"before": None, "after": row, "source": MYSQL_SOURCE, "op": "c"}),
    )
    event = decode(raw, source="s", modes=WIB, hints=lambda t: {"v": "timestamptz"})
    assert event is not None and event.after is not None
    assert event.after["v"] == datetime(2024, 3, 1, 5, 0, tzinfo=UTC)


ZONES = st.sampled_from(["Asia/Jakarta", "Asia/Makassar", "Europe/Berlin", "America/New_York"])


@PROPERTY
@given(
    local=st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(9999, 12, 30)),
    name=ZONES,
)
def test_zone_conversion_agrees_with_zoneinfo(local: datetime, name: str) -> None:
    """Reference: the instant whose wall clock in the zone is the source's value (for a local
    time that exists once; at a DST change PostgreSQL and PEP 495 both take the earlier offset)."""
    us = (local - datetime(1970, 1, 1)) // timedelta(microseconds=1)
    modes = ConnectorModes(connector="mysql", timezone=name)
    got = value_of(MICRO_TIMESTAMP, us, "timestamptz", modes)
    zone = ZoneInfo(name)
    instant = got.astimezone(UTC)
    offset = zone.utcoffset(local.replace(fold=0))
    assert offset is not None
    assert instant.replace(tzinfo=None) == local - offset
    back = instant.astimezone(zone).replace(tzinfo=None)
    if offset == zone.utcoffset(local.replace(fold=1)):
        assert back == local  # an unambiguous local time comes back unchanged


# -- BIT(n) ------------------------------------------------------------------------------------


def bits_schema(length: int) -> dict[str, Any]:
    return column("v", "bytes", "io.debezium.data.Bits", length=str(length))


def debezium_bits(number: int, length: int) -> str:
    """MySQL BIT(n) as Debezium sends it: little-endian, n/8 rounded up bytes, base64."""
    return b64(number.to_bytes((length + 7) // 8, "little"))


def test_bit8_into_bytea_is_its_byte_not_its_ascii_digits() -> None:
    assert value_of(bits_schema(8), debezium_bits(0b10100101, 8), "bytea") == b"\xa5"


def test_bit10_into_bytea_is_big_endian_like_mysql() -> None:
    assert value_of(bits_schema(10), debezium_bits(0b1010000001, 10), "bytea") == b"\x02\x81"


@pytest.mark.parametrize("hint", ["bit(10)", "bit varying", "varbit(16)", "text", None])
def test_bits_into_bit_columns_are_the_bit_string(hint: str | None) -> None:
    assert value_of(bits_schema(10), debezium_bits(0b0010000001, 10), hint) == "0010000001"


def test_bits_into_an_integer_column_are_the_number() -> None:
    assert value_of(bits_schema(64), debezium_bits(2**64 - 1, 64), "numeric") == 2**64 - 1


@pytest.mark.parametrize(
    ("hint", "true", "false"),
    [
        ("bit(1)", "1", "0"),
        ("varbit", "1", "0"),
        ("bytea", b"\x01", b"\x00"),
        ("boolean", True, False),
    ],
)
def test_bit1_boolean_into_bit_bytea_or_boolean(hint: str, true: Any, false: Any) -> None:
    boolean = column("v", "boolean")  # MySQL BIT(1): a plain Connect boolean
    assert value_of(boolean, True, hint) == true
    assert value_of(boolean, False, hint) == false


@PROPERTY
@given(data=st.data(), length=st.integers(2, 64))
def test_bits_reach_every_target_with_their_bits(data: st.DataObject, length: int) -> None:
    """Reference: MySQL's b'...' literal of the value, and its binary string (big-endian)."""
    number = data.draw(st.integers(0, 2**length - 1))
    literal = format(number, f"0{length}b")
    sent = debezium_bits(number, length)
    assert value_of(bits_schema(length), sent, f"bit({length})") == literal
    as_bytes = value_of(bits_schema(length), sent, "bytea")
    assert len(as_bytes) == (length + 7) // 8
    assert "".join(format(b, "08b") for b in as_bytes)[-length:] == literal
    assert value_of(bits_schema(length), sent, "bigint") == int(literal, 2)


# -- PostgreSQL interval -----------------------------------------------------------------------

PG = ConnectorModes(connector="postgresql")


def test_interval_iso_string_is_passed_exactly() -> None:
    iso = column("v", "string", "io.debezium.time.Interval")
    assert value_of(iso, "P1Y2M3DT4H5M6.78S", "interval", PG) == "P1Y2M3DT4H5M6.78S"


def test_interval_numeric_form_still_decodes_with_debeziums_month() -> None:
    numeric = column("v", "int64", "io.debezium.time.MicroDuration")
    # 1 mon 2 days 03:04:05: Debezium counts the month as 30.4375 days
    us = int((30.4375 + 2) * 86_400 * 10**6) + (3 * 3600 + 4 * 60 + 5) * 10**6
    assert value_of(numeric, us, "interval", PG) == timedelta(
        days=32, hours=10, minutes=30
    ) + timedelta(hours=3, minutes=4, seconds=5)


def test_postgresql_time_24_00_reaches_a_time_column() -> None:
    pg = ConnectorModes(connector="postgresql")
    assert value_of(MICRO_TIME, 86_400 * 10**6, "time", pg) == "24:00:00"


def test_bits_without_a_bytea_target_still_know_their_bytes() -> None:
    """Copied into bit(n) and bytea at once, the decoder cannot pick: the sink turns the bit
    string into bytes for the bytea column (`BitString.to_bytes`)."""
    got = value_of(bits_schema(10), debezium_bits(0b1010000001, 10), None)
    assert got == "1010000001" and got.to_bytes() == b"\x02\x81"


def test_mariadb_time_is_a_duration_too() -> None:
    modes = ConnectorModes(connector="mariadb")
    source = {**MYSQL_SOURCE, "connector": "mariadb"}
    event = decode(
        envelope([{**MICRO_TIME, "field": "v"}], {"v": -H838}, source=source),
        source="s",
        modes=modes,
        hints=lambda table: {"v": "interval"},
    )
    assert event is not None and event.after is not None
    assert event.after["v"] == "-838:59:59"
