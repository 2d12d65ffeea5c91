"""The value functions behind transforms, casts and CEL, one value at a time."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunggal.mapping.pgtypes import Family, compatible, parse_type
from tunggal.mapping.spec import TRANSFORM_NAMES, DatePartStep
from tunggal.mapping.transforms import (
    CASTS,
    DATE_PARTS,
    NAMED,
    ValueFailure,
    compile_cel,
    concat,
    date_part,
    default_if_null,
    flatten_row,
    from_cel,
    lookup,
    lookup_key,
    to_cel,
    to_text,
)


def test_named_transforms() -> None:
    assert NAMED["trim"]("  Dinas  ") == "Dinas"
    assert NAMED["upper"]("dinas") == "DINAS"
    assert NAMED["lower"]("DINAS") == "dinas"
    assert NAMED["trim"](None) is None
    with pytest.raises(ValueFailure, match=r"trim needs text, got int \(add `cast: text`"):
        NAMED["trim"](5)


def test_concat_is_postgres_concat() -> None:
    assert concat(("a", None, 1, Decimal("2.50"), date(2024, 1, 2), True)) == "a12.502024-01-02true"


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ("year", 2024),
        ("quarter", 2),
        ("month", 5),
        ("week", 20),
        ("day", 17),
        ("dow", 5),  # a Friday; Sunday = 0
        ("isodow", 5),
        ("doy", 138),
        ("hour", 23),
        ("minute", 30),
        ("second", 15),
    ],
)
def test_date_part(part: str, expected: int) -> None:
    assert date_part(part, None)(datetime(2024, 5, 17, 23, 30, 15, 999)) == expected


def test_date_part_on_dates_times_and_zones() -> None:
    assert date_part("hour", None)(date(2024, 5, 17)) == 0
    assert date_part("minute", None)(time(8, 45)) == 45
    assert date_part("year", None)(None) is None
    # 2023-12-31 23:00 UTC is already 2024 in Jakarta (UTC+7).
    new_year = datetime(2023, 12, 31, 23, 0, tzinfo=UTC)
    assert date_part("year", None)(new_year) == 2023
    assert date_part("year", "Asia/Jakarta")(new_year) == 2024
    with pytest.raises(ValueFailure, match="date_part month needs a date or timestamp, got str"):
        date_part("month", None)("2024-01-01")
    with pytest.raises(ValueFailure):
        date_part("year", None)(time(1, 2))


def test_names_match_the_schema() -> None:
    assert get_args(DatePartStep.model_fields["date_part"].annotation) == DATE_PARTS
    assert TRANSFORM_NAMES[: len(NAMED)] == ("trim", "upper", "lower")


def test_lookup_compares_codes_as_text() -> None:
    table = lookup({"1": "AKTIF", 2: "NONAKTIF", True: "YA", "1.5": "SETENGAH"}, default="LAIN")
    assert [table(v) for v in ("1", 1, Decimal("1.00"), 1.0, 2, "2", True, Decimal("1.50"))] == [
        "AKTIF",
        "AKTIF",
        "AKTIF",
        "AKTIF",
        "NONAKTIF",
        "NONAKTIF",
        "YA",
        "SETENGAH",
    ]
    assert table("9") == "LAIN"
    assert table(None) is None
    assert lookup({"1": "A"}, default=None)("2") is None
    with pytest.raises(ValueFailure, match=r"not in the lookup table \(known: 1\)"):
        lookup({"1": "A"})("2")


def test_lookup_key_and_text() -> None:
    assert to_text(Decimal("-0.50")) == "-0.50"
    assert to_text(time(8, 30)) == "08:30:00"
    assert lookup_key(Decimal("NaN")) == "NaN"
    assert lookup_key(float("inf")) == "Infinity"
    assert lookup_key(date(2024, 1, 1)) == "2024-01-01"


def test_default_if_null() -> None:
    fill = default_if_null(0)
    assert (fill(None), fill(5), fill("")) == (0, 5, "")


def cast(type_name: str, value: Any) -> Any:
    parsed = parse_type(type_name)
    assert parsed is not None
    return CASTS[parsed.family](value)


@pytest.mark.parametrize(
    ("type_name", "value", "expected"),
    [
        ("text", 12, "12"),
        ("text", Decimal("1E+3"), "1000"),
        ("text", True, "true"),
        ("text", b"\x0a\x0b", "\\x0a0b"),
        ("text", datetime(2024, 1, 2, 3, 4), "2024-01-02 03:04:00"),
        ("text", {"a": 1}, '{"a": 1}'),
        ("varchar(10)", "x", "x"),
        ("integer", " 2024 ", 2024),
        ("integer", Decimal("2024.00"), 2024),
        ("integer", 7.0, 7),
        ("int", True, 1),
        ("smallint", 32767, 32767),
        ("bigint", 2**40, 2**40),
        ("numeric", 0.1, Decimal("0.1")),
        ("numeric(18,2)", " 12.5 ", Decimal("12.5")),
        ("numeric", 3, Decimal(3)),
        ("double precision", "1.5", 1.5),
        ("double", Decimal("2.25"), 2.25),
        ("boolean", "Y", True),
        ("bool", "f", False),
        ("boolean", 0, False),
        ("boolean", " off ", False),
        ("date", "2024-02-29", date(2024, 2, 29)),
        ("date", datetime(2024, 2, 29, 13, 0), date(2024, 2, 29)),
        ("timestamp", "2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5)),
        ("timestamp", date(2024, 1, 2), datetime(2024, 1, 2)),
        (
            "timestamp",
            datetime(2024, 1, 2, 10, tzinfo=timezone(timedelta(hours=7))),
            datetime(2024, 1, 2, 3),
        ),
        ("timestamptz", datetime(2024, 1, 2), datetime(2024, 1, 2, tzinfo=UTC)),
        ("timestamp with time zone", "2024-01-02 03:04:05+07:00", datetime(
            2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=7)))),
        ("time", "08:30", time(8, 30)),
        ("time", timedelta(hours=8, minutes=30), time(8, 30)),
        ("time", datetime(2024, 1, 1, 8, 30), time(8, 30)),
        ("jsonb", '{"a": [1, 2]}', {"a": [1, 2]}),
        ("json", [1], [1]),
        ("json", date(2024, 1, 1), "2024-01-01"),
        ("uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("uuid", uuid.UUID(int=1).bytes, str(uuid.UUID(int=1))),
    ],
)  # fmt: skip
def test_casts(type_name: str, value: Any, expected: Any) -> None:
    result = cast(type_name, value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("type_name", "value", "message"),
    [
        ("integer", "20x4", "cannot cast str to integer: not a whole number"),
        ("integer", 2.5, "cannot cast float to integer: not a whole number"),
        ("integer", 2**31, "out of range for integer"),
        ("smallint", 40000, "out of range for smallint"),
        ("integer", date(2024, 1, 1), "cannot cast date to integer"),
        ("numeric", "1.234,56", "cannot cast str to numeric: not a number"),
        ("numeric", True, "cannot cast boolean to numeric"),
        ("double", "abc", "cannot cast str to double precision"),
        ("boolean", "mungkin", "cannot cast str to boolean"),
        ("boolean", 2, "cannot cast int to boolean"),
        ("date", "31/12/2024", "cannot cast str to date: not an ISO 8601"),
        ("date", 19000, "cannot cast int to date"),
        ("timestamp", 5, "cannot cast int to timestamp"),
        ("time", "25:00", "cannot cast str to time"),
        ("json", "{bad", "cannot cast str to json: not valid JSON"),
        ("uuid", "xyz", "cannot cast str to uuid: not a UUID"),
    ],
)
def test_cast_failures(type_name: str, value: Any, message: str) -> None:
    with pytest.raises(ValueFailure, match=message):
        cast(type_name, value)


@pytest.mark.parametrize("family", list(CASTS))
def test_casts_keep_null(family: Family) -> None:
    assert CASTS[family](None) is None


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_integer_cast_round_trips_text(n: int) -> None:
    assert cast("integer", cast("text", n)) == n


@given(st.decimals(allow_nan=False, allow_infinity=False, places=2))
def test_numeric_cast_round_trips_text(d: Decimal) -> None:
    assert cast("numeric", cast("text", d)) == d


def test_parse_type() -> None:
    assert parse_type("NUMERIC( 18, 2 )") == parse_type("numeric(18,2)")
    assert parse_type("int4") == parse_type("integer")
    parsed = parse_type("timestamp (3) WITH time zone")
    assert parsed is not None and parsed.canonical == "timestamp(3) with time zone"
    assert parsed.family is Family.TIMESTAMPTZ
    other = parse_type("public.status_kontrak")
    assert other is not None and other.family is Family.OTHER
    array = parse_type("text[]")
    assert array is not None and array.family is Family.ARRAY
    for bad in ("integer; DROP TABLE x", "my own type", "", "numeric(18", "varchar(x)"):
        assert parse_type(bad) is None, bad


def test_compatible_is_lenient_but_not_blind() -> None:
    assert compatible(Family.INTEGER, Family.BIGINT)
    assert compatible(Family.SMALLINT, Family.NUMERIC)
    assert compatible(Family.DATE, Family.TIMESTAMPTZ)
    assert compatible(Family.DATE, Family.TEXT)
    assert compatible(Family.OTHER, Family.DATE)
    assert not compatible(Family.INTEGER, Family.DATE)
    assert not compatible(Family.TEXT, Family.INTEGER)
    assert not compatible(Family.NUMERIC, Family.INTEGER)
    assert not compatible(Family.TIMESTAMP, Family.DATE)


# --- CEL --------------------------------------------------------------------------------------


def test_values_into_and_out_of_cel() -> None:
    assert to_cel(date(2024, 1, 2)) == "2024-01-02"
    assert to_cel(time(8, 30)) == "08:30:00"
    assert to_cel([date(2024, 1, 2), {"d": date(2024, 1, 3)}]) == [
        "2024-01-02",
        {"d": "2024-01-03"},
    ]
    stamp = datetime(2024, 1, 2, 3, 4)
    assert to_cel(stamp) is stamp  # CEL takes datetimes as they are
    aware = datetime(2024, 1, 2, 3, 4, tzinfo=UTC)
    assert from_cel(aware, Family.TIMESTAMP) == stamp
    assert from_cel(aware, Family.TIMESTAMPTZ) is aware
    assert from_cel(aware, None) is aware


def test_flatten_row() -> None:
    assert flatten_row('row.kode + " - " + row["nama"]') == (
        '__row_0 + " - " + __row_1',
        ("kode", "nama"),
    )
    assert flatten_row('"row.x" + row.y + row.y') == ('"row.x" + __row_0 + __row_0', ("y",))
    assert flatten_row("x.row.y == 1") == ("x.row.y == 1", ())
    assert flatten_row("[1].exists(r, r == row.n)") == ("[1].exists(r, r == __row_0)", ("n",))
    for whole_row in ("has(row.x)", "size(row) > 1", "row[name]"):
        assert flatten_row(whole_row) is None


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("row.tahun >= ", "CEL syntax error at 1:14: mismatched input '<EOF>'"),
        ("row.a == 1 and row.b", "CEL syntax error at 1:12: mismatched input 'and'"),
        ("rows.a == 1", "unknown name `rows`: the only variable is `row`"),
    ],
)
def test_compile_cel_errors(source: str, message: str) -> None:
    with pytest.raises(ValueFailure) as info:
        compile_cel(source)
    assert str(info.value) == message


def test_compile_cel_accepts_comprehension_variables() -> None:
    compile_cel("row.items.exists(i, i > 2) && [1, 2].all(x, x > 0)")
