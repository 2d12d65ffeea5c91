"""Debezium's JSON spellings of column values, and the Python values they stand for.

Every converter here takes one non-null JSON value and returns the Python value, or raises
`Invalid` saying what it expected. The callers (schema-driven in `connect`, type-name-driven in
`coerce`) add the field path and turn it into a `DecodeError`.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Final, TypeAlias
from weakref import WeakKeyDictionary

from tunggal.events.model import UNAVAILABLE_PLACEHOLDER, BitString

Converter: TypeAlias = Callable[[Any], Any]

# Cheaper equivalents of some converters, for the value class a column nearly always holds:
# FAST_FORMS[convert] = (kind, fast) promises that for a value whose class is exactly `kind`,
# fast(value) returns what convert(value) returns, and raises (anything at all) when convert
# raises. decode's fast path uses them; each is defined next to its converter, and
# test_decode_fast checks every one against its converter.
FAST_FORMS: Final[WeakKeyDictionary[Converter, tuple[type, Converter]]] = WeakKeyDictionary()


class Invalid(ValueError):
    """One value does not have the shape its type promises."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def at(self, segment: str) -> Invalid:
        """The same problem, one level further out: `at("after")` on "d: ..." is "after.d: ..."."""
        if not self.path:
            path = segment
        elif self.path.startswith("["):
            path = segment + self.path
        else:
            path = f"{segment}.{self.path}"
        return Invalid(self.message, path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(expected: str, value: Any) -> Invalid:
    return Invalid(f"expected {expected}, got {show(value)}")


# -- unchanged TOASTed values ------------------------------------------------------------------
#
# Debezium puts the placeholder where a column's value was not sent, converted to something that
# fits the column's type (io.debezium.connector.postgresql.UnchangedToastedPlaceholder, 3.6):
# text/json -> the string; bytea -> its bytes (base64 or hex in JSON); text[]/json[] -> [string];
# bytea[] -> [bytes]; int[]/bigint[]/date[] -> one int per placeholder byte; uuid[] ->
# [UUID.nameUUIDFromBytes(placeholder)]; hstore -> {placeholder: placeholder}, which the json
# hstore mode writes as a JSON string.
_PH: Final = UNAVAILABLE_PLACEHOLDER
_PH_BYTES: Final = _PH.encode()
_PH_INTS: Final = list(_PH_BYTES)
_PH_MAP: Final = {_PH: _PH}
_PH_UUID: Final = str(
    uuid.UUID(bytes=hashlib.md5(_PH_BYTES, usedforsecurity=False).digest(), version=3)
)
_PH_SCALARS: Final = frozenset(
    {
        _PH,
        base64.b64encode(_PH_BYTES).decode(),
        base64.urlsafe_b64encode(_PH_BYTES).decode(),
        _PH_BYTES.hex(),
        json.dumps(_PH_MAP, separators=(",", ":")),
    }
)
# A string of any other length cannot be a placeholder; lets hot loops skip the call.
PLACEHOLDER_LENGTHS: Final = frozenset(len(s) for s in _PH_SCALARS)
# For a whole row of hashable values at once: `PLACEHOLDER_STRINGS.isdisjoint(row.values())`.
PLACEHOLDER_STRINGS: Final = _PH_SCALARS
_PH_ITEMS: Final = _PH_SCALARS | {_PH_UUID}


def is_unavailable(value: Any) -> bool:
    kind = value.__class__
    if kind is str:
        return len(value) in PLACEHOLDER_LENGTHS and value in _PH_SCALARS
    if kind is list:
        if len(value) == 1:
            item = value[0]
            return item.__class__ is str and item in _PH_ITEMS
        return len(value) == len(_PH_INTS) and value == _PH_INTS
    if kind is dict:
        return len(value) == 1 and bool(value == _PH_MAP)
    if kind is bytes:
        return bool(value == _PH_BYTES)
    return False


# -- plain JSON types --------------------------------------------------------------------------

_FLOAT_WORDS: Final = frozenset({"NaN", "Infinity", "-Infinity"})


def as_int(value: Any) -> int:
    if value.__class__ is int:
        return int(value)
    raise fail("an integer", value)


def as_float(value: Any) -> float:
    kind = value.__class__
    if kind is float:
        return float(value)
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise fail("a floating-point number", value) from None
    # Jackson writes NaN and the infinities as strings unless told otherwise.
    if kind is str and value in _FLOAT_WORDS:
        return float(value)
    raise fail("a floating-point number", value)


FAST_FORMS[as_float] = (float, float)


def as_bool(value: Any) -> bool:
    if value is True or value is False:
        return bool(value)
    raise fail("true or false", value)


def as_str(value: Any) -> str:
    if value.__class__ is str:
        return str(value)
    raise fail("a string", value)


# -- binary ------------------------------------------------------------------------------------


def bytes_from_base64(value: Any) -> bytes:
    if value.__class__ is bytes:
        return bytes(value)
    if value.__class__ is str:
        try:
            return binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            pass
    raise fail("base64 bytes", value)


def bytes_from_base64_url(value: Any) -> bytes:
    if value.__class__ is str:
        try:
            padded = value + "=" * (-len(value) % 4)
            return base64.b64decode(padded, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            pass
    raise fail("url-safe base64 bytes (binary.handling.mode=base64-url-safe)", value)


def bytes_from_hex(value: Any) -> bytes:
    if value.__class__ is str:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise fail("hex bytes (binary.handling.mode=hex)", value)


# Debezium sends bit(n) as java.util.BitSet.toByteArray(): little-endian, bit i of the number is
# character n-1-i of the PostgreSQL bit string. B'1010000001' -> bytes 81 02 -> 0x0281 -> the
# same ten characters again once printed most significant bit first.
_BITS_UNKNOWN_LENGTH: Final = 2147483647  # Integer.MAX_VALUE: bit varying without a limit


def bits(length: int | None) -> Converter:
    if length is not None and (length <= 0 or length >= _BITS_UNKNOWN_LENGTH):
        length = None

    def convert(value: Any) -> str:
        if value is True or value is False:  # bit(1) arrives as a boolean
            return BitString("1" if value else "0")
        number = int.from_bytes(bytes_from_base64(value), "little")
        if length is None:
            # bit varying: the length is not sent, and leading zeros are lost before we see them.
            return BitString(format(number, "b") if number else "")
        if number.bit_length() > length:
            raise Invalid(f"{number.bit_length()} bits do not fit io.debezium.data.Bits({length})")
        return BitString(format(number, f"0{length}b"))

    return convert


# -- decimals ----------------------------------------------------------------------------------

# Wide enough that scaleb never rounds: numeric has up to 131072 digits.
_EXACT: Final = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[]
)


def _scaled(unscaled: int, scale: int) -> Decimal:
    if not -(2**31) <= scale < 2**31:  # a Java BigDecimal's scale is an int
        raise Invalid(f"scale {scale} is out of range")
    return Decimal(unscaled).scaleb(-scale, _EXACT)


def decimal_from_number(value: Any) -> Decimal:
    kind = value.__class__
    if kind is int:
        return Decimal(value)
    if kind is float:
        # repr is the shortest string that reads back as the same float: 0.1 -> Decimal('0.1').
        return Decimal(repr(value))
    if kind is str:
        try:
            return Decimal(value)
        except decimal.InvalidOperation:
            pass
    raise fail("a decimal number", value)


def decimal_bytes(scale: int) -> Converter:
    """org.apache.kafka.connect.data.Decimal: two's-complement big-endian unscaled value."""

    def convert(value: Any) -> Decimal:
        if value.__class__ is str or value.__class__ is bytes:
            try:
                raw = bytes_from_base64(value)
            except Invalid:
                raise fail(f"base64 bytes for Decimal(scale={scale})", value) from None
            return _scaled(int.from_bytes(raw, "big", signed=True), scale)
        if value.__class__ is int or value.__class__ is float:
            # JsonConverter with decimal.format=NUMERIC writes a JSON number instead.
            return decimal_from_number(value).quantize(_scaled(1, scale), context=_EXACT)
        raise fail(f"base64 bytes for Decimal(scale={scale})", value)

    return convert


def variable_scale_decimal(value: Any) -> Decimal:
    """io.debezium.data.VariableScaleDecimal: {"scale": int, "value": base64 unscaled}."""
    if value.__class__ is dict:
        scale = value.get("scale")
        raw = value.get("value")
        if scale.__class__ is int and raw.__class__ is str:
            try:
                unscaled = int.from_bytes(bytes_from_base64(raw), "big", signed=True)
            except Invalid:
                pass
            else:
                return _scaled(unscaled, scale)
    raise fail('{"scale": int, "value": base64} for io.debezium.data.VariableScaleDecimal', value)


# -- dates and times ---------------------------------------------------------------------------

_EPOCH: Final = datetime(1970, 1, 1)
_EPOCH_ORDINAL: Final = _EPOCH.toordinal()
_DAY_US: Final = 86_400_000_000
_OUT_OF_RANGE: Final = (
    "is outside what Python's datetime can hold (years 1-9999); "
    "PostgreSQL 'infinity' and far-off dates cannot be decoded"
)


def days_to_date(label: str) -> Converter:
    def convert(value: Any) -> date:
        if value.__class__ is not int:
            raise fail(f"int days for {label}", value)
        try:
            return date.fromordinal(_EPOCH_ORDINAL + value)
        except (ValueError, OverflowError):
            raise Invalid(f"{value} days since 1970-01-01 {_OUT_OF_RANGE}") from None

    FAST_FORMS[convert] = (int, _date_from_days)
    return convert


def _date_from_days(value: int) -> date:
    return date.fromordinal(_EPOCH_ORDINAL + value)


def _time_of_day(us: int) -> time:
    if not 0 <= us < _DAY_US:
        if us == _DAY_US:
            raise Invalid("24:00:00 is a valid PostgreSQL time but has no datetime.time value")
        raise Invalid(f"{us} µs is not a time of day")
    seconds, micros = divmod(us, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return time(hours, minutes, seconds, micros)


def _since_epoch(us: int) -> datetime:
    try:
        return _EPOCH + timedelta(0, 0, us)  # positional: measurably faster than keywords
    except OverflowError:
        raise Invalid(f"{us} µs since 1970-01-01 {_OUT_OF_RANGE}") from None


def time_of_day(label: str, units_per_second: int) -> Converter:
    """Time since midnight in millis, micros or nanos; nanos are truncated to micros."""

    def convert(value: Any) -> time:
        if value.__class__ is not int:
            raise fail(f"int {_UNIT_NAMES[units_per_second]} for {label}", value)
        return _time_of_day(_to_micros(value, units_per_second))

    return convert


def local_timestamp(label: str, units_per_second: int) -> Converter:
    """A zone-less timestamp counted from the epoch as if it were UTC; returns a naive datetime."""

    def convert(value: Any) -> datetime:
        if value.__class__ is not int:
            raise fail(f"int {_UNIT_NAMES[units_per_second]} for {label}", value)
        return _since_epoch(_to_micros(value, units_per_second))

    if units_per_second <= 1_000_000:
        factor = 1_000_000 // units_per_second

        def since_epoch(value: int) -> datetime:
            return _EPOCH + timedelta(0, 0, value * factor)

        FAST_FORMS[convert] = (int, since_epoch)
    return convert


_UNIT_NAMES: Final = {
    1_000: "milliseconds",
    1_000_000: "microseconds",
    1_000_000_000: "nanoseconds",
}


def _to_micros(value: int, units_per_second: int) -> int:
    if units_per_second == 1_000_000:
        return value
    if units_per_second == 1_000:
        return value * 1000
    return value // 1000


def zoned_timestamp(value: Any) -> datetime:
    """io.debezium.time.ZonedTimestamp, e.g. '2024-01-01T20:04:05.123456Z' -> aware, in UTC."""
    if value.__class__ is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is UTC:  # the usual '...Z'
                return parsed
            offset = parsed.utcoffset()
            if offset is not None:
                try:
                    return parsed.astimezone(UTC) if offset else parsed.replace(tzinfo=UTC)
                except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC
                    raise Invalid(f"{show(value)} {_OUT_OF_RANGE}") from None
    raise fail("an ISO-8601 timestamp with offset for io.debezium.time.ZonedTimestamp", value)


def zoned_time(value: Any) -> time:
    """io.debezium.time.ZonedTime, e.g. '06:14:15Z' -> an aware time."""
    if value.__class__ is str:
        try:
            parsed = time.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    raise fail("an ISO-8601 time with offset for io.debezium.time.ZonedTime", value)


# time.precision.mode=isostring formats zone-less values as if they were UTC and appends a 'Z'
# ('2024-02-29Z', '13:14:15.5Z'). The Z is not information about the value, so these decode to
# naive values, the same as the numeric modes give for the same column.


def iso_date(value: Any) -> date:
    if value.__class__ is str:
        try:
            return date.fromisoformat(value[:-1] if value.endswith("Z") else value)
        except ValueError:
            pass
    raise fail("an ISO-8601 date for io.debezium.time.IsoDate", value)


def iso_time(value: Any) -> time:
    if value.__class__ is str:
        try:
            parsed = time.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed.replace(tzinfo=None) if parsed.utcoffset() == timedelta(0) else parsed
    raise fail("an ISO-8601 time for io.debezium.time.IsoTime", value)


def iso_timestamp(value: Any) -> datetime:
    if value.__class__ is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                return parsed
            try:
                return parsed.astimezone(UTC).replace(tzinfo=None)
            except OverflowError:
                raise Invalid(f"{show(value)} {_OUT_OF_RANGE}") from None
    raise fail("an ISO-8601 timestamp for io.debezium.time.IsoTimestamp", value)


def micro_duration(value: Any) -> timedelta:
    """io.debezium.time.MicroDuration; Debezium counts a month as 30.4375 days."""
    if value.__class__ is not int:
        raise fail("int microseconds for io.debezium.time.MicroDuration", value)
    try:
        return timedelta(0, 0, value)
    except OverflowError:
        raise Invalid(f"{value} µs is longer than datetime.timedelta can hold") from None


# -- values whose Python form depends on the target column -------------------------------------
#
# Some source types mean different things depending on where they go: a MySQL TIME is a
# duration that is a time of day only in a `time` column; a zone-less timestamp is wall-clock
# time that becomes an instant only in a `timestamptz` column; BIT(n) is a bit string, a
# number or bytes. `connect.StructDecoder.with_hints` and `coerce` pick among these by the
# target column's type (the hint).


def in_zone(convert: Converter, zone: tzinfo) -> Converter:
    """A zone-less timestamp converter whose naive result is wall-clock time in `zone`.

    The value stays in `zone` (so `date_part` without a zone of its own reads the source's
    local fields); instants compare and convert correctly from there. Ambiguous or skipped
    local times take the offset before the change (PEP 495 fold=0), as PostgreSQL does.
    """

    def convert_in_zone(value: Any) -> datetime:
        local: datetime = convert(value).replace(tzinfo=zone)
        try:
            local.astimezone(UTC)
        except OverflowError:  # 0001-01-01 00:00 in UTC+7 is in year 0
            raise Invalid(f"{show(value)} in {zone} {_OUT_OF_RANGE}") from None
        return local

    return convert_in_zone


# MySQL's TIME range; TIME(6) stops at 838:59:59.000000 as well.
MYSQL_TIME_MAX_US: Final = (838 * 3600 + 59 * 60 + 59) * 1_000_000


def duration_text(us: int) -> str:
    """MySQL's spelling of a TIME, which PostgreSQL also reads as an interval of that many
    hours: -3020399000000 -> '-838:59:59'. (A timedelta would reach PostgreSQL as
    '-35 days +01:00:01': equal, but not what the source holds.)"""
    sign = "-" if us < 0 else ""
    seconds, micros = divmod(abs(us), 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{text}.{micros:06d}" if micros else text


def mysql_time(label: str, units_per_second: int, target: str | None) -> Converter:
    """MySQL TIME (a duration, -838:59:59..838:59:59) for a target column of kind `target`:
    "time" -> a time of day, and only when it is one (00:00:00..24:00:00, 24:00:00 as text);
    "text" (interval or text columns) -> `duration_text`; None -> a timedelta."""

    def micros(value: Any) -> int:
        if value.__class__ is not int:
            raise fail(f"int {_UNIT_NAMES[units_per_second]} for {label}", value)
        return _to_micros(value, units_per_second)

    if target == "time":

        def to_time(value: Any) -> time | str:
            us = micros(value)
            if us == _DAY_US:
                return "24:00:00"  # a valid PostgreSQL time, which datetime.time cannot hold
            if not 0 <= us < _DAY_US:
                raise Invalid(
                    f"TIME {duration_text(us)} is not a time of day (00:00:00..24:00:00); "
                    "map it into an interval column"
                )
            return _time_of_day(us)

        return to_time
    if target == "text":
        return lambda value: duration_text(micros(value))

    def to_timedelta(value: Any) -> timedelta:
        return timedelta(0, 0, micros(value))

    return to_timedelta


def _bit_number(value: Any) -> int:
    if value is True or value is False:  # BIT(1) arrives as a boolean
        return int(value)
    return int.from_bytes(bytes_from_base64(value), "little")


def bits_bytes(length: int | None) -> Converter:
    """BIT(n) as bytea: the number's bytes most significant first, ceil(n/8) of them, as MySQL
    itself gives a BIT(n) as a binary string (b'1010000001' -> 02 81)."""
    known = length is not None and 0 < length < _BITS_UNKNOWN_LENGTH

    def convert(value: Any) -> bytes:
        number = _bit_number(value)
        if known:
            assert length is not None
            size = (length + 7) // 8
        else:
            size = (number.bit_length() + 7) // 8 or 1
        try:
            return number.to_bytes(size, "big")
        except OverflowError:
            raise Invalid(f"{number.bit_length()} bits do not fit BIT({length})") from None

    return convert


def bits_number(value: Any) -> int:
    """BIT(n) as the unsigned number MySQL reads it as in numeric context."""
    return _bit_number(value)


def bool_bits(target: str) -> Converter:
    """A boolean (MySQL BIT(1), PostgreSQL bit(1) or boolean) for a bit or bytea column."""
    if target == "bytea":
        return lambda value: b"\x01" if as_bool(value) else b"\x00"
    return lambda value: "1" if as_bool(value) else "0"
