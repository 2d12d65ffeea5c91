"""`tunggal verify` maps a source row read with psycopg into exactly what the daemon maps from
Debezium's event of the same row (`reconcile.pgvalues`).

The reference is the real Debezium 3.6 capture of `tests/events/`: psycopg's values of that
row (as `reconcile.pgsource` reads them: jsonb, intervals and bit strings as text, money as
numeric, enums as text) must spell out as the captured JSON, and read into the values the
decoder gives. The shortcuts (`column_reader` returning None or a cheap function) must agree
with that composition for any value.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_decode import HINTS, ROW_1, lines
from tunggal.events.model import BitString
from tunggal.events.modes import ConnectorModes
from tunggal.reconcile.pgvalues import (
    column_reader,
    interval_micros,
    reference_reader,
    spelling,
)

TYPES = HINTS["public.t"]
# Captured with interval.handling.mode=numeric, the decoder's default.
MODES = ConnectorModes()

# The captured row 1 as psycopg returns it from the SELECT that reconcile.pgsource builds.
PSYCOPG_ROW_1: dict[str, Any] = {
    "id": 1,
    "n": Decimal("12345.67"),
    "nv": Decimal("1.000000001"),
    "d": date(2024, 2, 29),
    "ts": datetime(2024, 1, 2, 3, 4, 5, 123456),
    "tstz": datetime(2024, 1, 1, 20, 4, 5, 123456, tzinfo=UTC),
    "tm": time(13, 14, 15, 500000),
    "tmtz": time(13, 14, 15, tzinfo=timezone(timedelta(hours=7))),
    "iv": "P1M2DT3H4M5.5S",  # ::text under IntervalStyle iso_8601
    "j": '{"a": [1, 2, {"b": null}]}',  # ::text
    "js": '{"x":1}',
    "u": UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    "b": b"\xde\xad\xbe\xef",
    "arr": [1, 2, 3],
    "tarr": ["a", "b c"],
    "e": "senang",  # an enum, ::text
    "bt": BitString("1010000001"),  # ::text
    "vb": BitString("101"),
    "f8": 1e-07,
    "f4": 3.5,
    "big": 9007199254740993,
    "sm": 7,
    "bo": True,
    "txt": "héllo",
    "money_": Decimal("12.34"),  # ::numeric
    "ch": "ab ",
    "inet_": "10.0.0.1",  # ::text
    "xm": "<a/>",
}
# The type reconcile.pgsource reads each column as (an enum as text).
READ_AS = {**TYPES, "e": "text"}


def captured_after(mode: str) -> dict[str, Any]:
    value = lines(mode)[1]["value"]
    document = json.loads(value)
    return dict((document.get("payload") or document)["after"])


def test_the_spelling_is_debeziums() -> None:
    after = captured_after("schemaless")
    for column, value in PSYCOPG_ROW_1.items():
        assert spelling(READ_AS[column], MODES)(value) == after[column], column


@pytest.mark.parametrize("schemas", [True, False])
def test_the_mapping_gets_what_the_decoder_gives(schemas: bool) -> None:
    for column, value in PSYCOPG_ROW_1.items():
        hint = TYPES[column]
        reference = reference_reader(READ_AS[column], MODES, schemas, hint)(value)
        reader = column_reader(READ_AS[column], MODES, schemas, hint)
        fast = value if reader is None else reader(value)
        expected = ROW_1[column]
        # Equality alone would let 1 == 1.0 or a naive/aware mix-up through.
        assert (reference, type(reference)) == (expected, type(expected)), column
        assert (fast, type(fast)) == (expected, type(expected)), column
        if isinstance(expected, datetime | time):
            assert fast.utcoffset() == expected.utcoffset(), column


def test_without_hints_numeric_stays_text() -> None:
    # decimal.handling.mode=string: only a type hint makes the string a Decimal.
    reader = column_reader("numeric(12,2)", MODES, True, None)
    assert reader is not None and reader(Decimal("1.50")) == "1.50"
    reader = column_reader("numeric(12,2)", MODES, True, "text")
    assert reader is not None and reader(Decimal("1.50")) == "1.50"
    assert column_reader("numeric(12,2)", MODES, True, "numeric(18,2)") is None


def test_schemaless_dates_without_hints_stay_day_numbers() -> None:
    reader = column_reader("date", MODES, False, None)
    assert reader is not None and reader(date(2024, 2, 29)) == 19782


def test_interval_as_debezium_counts_it() -> None:
    assert interval_micros("P1M2DT3H4M5.5S") == 2813645500000
    assert interval_micros("P-1Y") == -int(12 * 30.4375 * 86_400_000_000)
    assert interval_micros("PT0S") == 0


MODE_CHOICES = [
    ConnectorModes(time_precision=t, decimal_handling=d, interval_handling=i)
    for t in ("adaptive", "adaptive_time_microseconds", "connect", "isostring")
    for d in ("string", "precise", "double")
    for i in ("numeric", "string")
]
TYPED_VALUES = [
    ("date", st.dates()),
    ("timestamp without time zone", st.datetimes()),
    (
        "timestamp(3) without time zone",
        st.datetimes().map(lambda v: v.replace(microsecond=v.microsecond // 1000 * 1000)),
    ),
    (
        "timestamp with time zone",
        st.datetimes(
            timezones=st.just(UTC), min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)
        ),
    ),
    ("time without time zone", st.times()),
    (
        "time(3) without time zone",
        st.times().map(lambda v: v.replace(microsecond=v.microsecond // 1000 * 1000)),
    ),
    ("numeric", st.decimals(allow_nan=False, allow_infinity=False, places=4)),
    (
        "numeric(18,2)",
        st.decimals(
            allow_nan=False, allow_infinity=False, places=2, min_value=-(10**15), max_value=10**15
        ),
    ),
    ("bigint", st.integers(-(2**63), 2**63 - 1)),
    ("text", st.text()),
    ("uuid", st.uuids()),
    ("bytea", st.binary()),
    ("integer[]", st.lists(st.integers(-(2**31), 2**31 - 1) | st.none())),
]


@given(
    data=st.data(),
    typed=st.sampled_from(TYPED_VALUES),
    modes=st.sampled_from(MODE_CHOICES),
    schemas=st.booleans(),
    hint=st.sampled_from([None, "same", "text", "numeric(18,2)"]),
)
def test_shortcuts_agree_with_the_definition(
    data: st.DataObject,
    typed: tuple[str, Any],
    modes: ConnectorModes,
    schemas: bool,
    hint: str | None,
) -> None:
    pg_type, values = typed
    value = data.draw(values)
    hint_type = pg_type if hint == "same" else hint
    reference = reference_reader(pg_type, modes, schemas, hint_type)
    try:
        expected: Any = reference(value)
    except Exception as exc:  # the decoder refuses it: so must the shortcut
        reader = column_reader(pg_type, modes, schemas, hint_type)
        if reader is not None:
            with pytest.raises(type(exc)):
                reader(value)
        return
    reader = column_reader(pg_type, modes, schemas, hint_type)
    got = value if reader is None else reader(value)
    assert (got, type(got)) == (expected, type(expected))


@pytest.mark.parametrize(
    ("pg_type", "hint", "value"),
    [
        ("text", "numeric(18,2)", "0"),
        ("character varying(20)", "numeric(18,2)", "12.50"),
        ("text[]", "numeric(18,2)[]", ["0", "12.50"]),
    ],
)
@pytest.mark.parametrize("decimal_handling", ["string", "double"])
def test_text_into_a_numeric_target_is_read_as_the_decoder_reads_it(
    pg_type: str, hint: str, value: Any, decimal_handling: str
) -> None:
    """A text column mapped into a numeric one: the decoder turns the string into the target's
    type, so `verify` must too (hypothesis found the shortcut leaving '0' a string)."""
    modes = ConnectorModes(decimal_handling=decimal_handling)  # type: ignore[arg-type]
    expected = reference_reader(pg_type, modes, True, hint)(value)
    assert expected != value  # the case: the decoder does change it
    reader = column_reader(pg_type, modes, True, hint)
    got = value if reader is None else reader(value)
    assert (got, type(got)) == (expected, type(expected))
