"""The value functions behind mapping transforms, casts and CEL expressions.

Each function takes one value and returns one value. They raise `ValueFailure` with a short
reason; the engine turns it into a `MappingError` naming the file, table and column. None
(SQL NULL) goes through every function unchanged, except `default_if_null`. UNAVAILABLE never
reaches them: the engine stops a pipeline at the first UNAVAILABLE.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from zoneinfo import ZoneInfo

import cel

from tunggal.events.model import BitString
from tunggal.mapping.pgtypes import Family

ValueFn = Callable[[Any], Any]


class ValueFailure(ValueError):
    """One value could not be transformed; the message says why, without the file context."""


def _kind(v: Any) -> str:
    return type(v).__name__


# --- text -------------------------------------------------------------------------------------


def to_text(v: Any) -> Any:
    """The text PostgreSQL would print for `v` (`true`, `2024-01-31`, `\\x0a0b`, `12.50`)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Decimal):
        return format(v, "f")  # never exponent notation: Decimal("1E+3") -> "1000"
    if isinstance(v, datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, date | time):
        return v.isoformat()
    if isinstance(v, bytes):
        return "\\x" + v.hex()
    if isinstance(v, list | dict):
        return json.dumps(v, default=str, ensure_ascii=False)
    return str(v)


def _text_only(name: str, fn: Callable[[str], str]) -> ValueFn:
    def apply(v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueFailure(f"{name} needs text, got {_kind(v)} (add `cast: text` before it)")
        return fn(v)

    return apply


NAMED: Final[Mapping[str, ValueFn]] = {
    "trim": _text_only("trim", str.strip),
    "upper": _text_only("upper", str.upper),
    "lower": _text_only("lower", str.lower),
}


def concat(parts: tuple[Any, ...]) -> str:
    """PostgreSQL's concat(): NULL parts count as empty text, other values as their text."""
    return "".join(p if isinstance(p, str) else ("" if p is None else to_text(p)) for p in parts)


# --- date_part --------------------------------------------------------------------------------

_DATE_ONLY: Final[Mapping[str, Callable[[date], int]]] = {
    "year": lambda d: d.year,
    "quarter": lambda d: (d.month - 1) // 3 + 1,
    "month": lambda d: d.month,
    "week": lambda d: d.isocalendar().week,  # ISO week, as PostgreSQL's `week`
    "day": lambda d: d.day,
    "dow": lambda d: d.isoweekday() % 7,  # Sunday = 0, as PostgreSQL
    "isodow": lambda d: d.isoweekday(),
    "doy": lambda d: d.timetuple().tm_yday,
}
_TIME_ONLY: Final[Mapping[str, Callable[[time | datetime], int]]] = {
    "hour": lambda t: t.hour,
    "minute": lambda t: t.minute,
    "second": lambda t: t.second,  # whole seconds (PostgreSQL adds the fraction)
}
DATE_PARTS: Final = (*_DATE_ONLY, *_TIME_ONLY)  # spec.DatePartStep spells them out for the schema


def date_part(part: str, zone: str | None) -> ValueFn:
    """`part` of a date/timestamp. With `zone`, aware timestamps are read in that zone first.

    Why the zone matters: Debezium delivers timestamptz in UTC, so an SP2D paid on
    2024-01-01 06:00 WIB arrives as 2023-12-31 23:00Z and would count for the wrong year.
    """
    tz = ZoneInfo(zone) if zone else None
    on_date = _DATE_ONLY.get(part)
    on_time = _TIME_ONLY.get(part)

    def apply(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, datetime):
            if tz is not None and v.tzinfo is not None:
                v = v.astimezone(tz)
            return on_date(v) if on_date else on_time(v)  # type: ignore[misc]
        if isinstance(v, date):
            return on_date(v) if on_date else 0  # a date is midnight, as in PostgreSQL
        if isinstance(v, time) and on_time:
            return on_time(v)
        raise ValueFailure(
            f"date_part {part} needs a date or timestamp, got {_kind(v)}"
            " (add `cast: date` or `cast: timestamp` before it)"
        )

    return apply


# --- lookup -----------------------------------------------------------------------------------


def lookup_key(v: Any) -> str:
    """Lookup tables are keyed by text, so status 1, "1" and Decimal("1.0") all find "1"."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        v = Decimal(repr(v))
    if isinstance(v, Decimal) and v.is_finite():
        return str(int(v)) if v == v.to_integral_value() else format(v.normalize(), "f")
    return str(to_text(v))


_MISSING: Final = object()


def lookup(table: Mapping[Any, Any], default: Any = _MISSING) -> ValueFn:
    keyed = {lookup_key(k): v for k, v in table.items()}
    known = ", ".join(sorted(keyed)[:10]) + (", ..." if len(keyed) > 10 else "")

    def apply(v: Any) -> Any:
        if v is None:
            return None
        found = keyed.get(lookup_key(v), _MISSING)
        if found is not _MISSING:
            return found
        if default is not _MISSING:
            return default
        raise ValueFailure(f"not in the lookup table (known: {known}); add it or set `default:`")

    return apply


def default_if_null(replacement: Any) -> ValueFn:
    return lambda v: replacement if v is None else v


# --- cast -------------------------------------------------------------------------------------


def _integer(lo: int, hi: int, name: str) -> ValueFn:
    def apply(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool):
            n = int(v)
        elif isinstance(v, int):
            n = v
        elif isinstance(v, Decimal | float | str):
            try:
                d = Decimal(v.strip()) if isinstance(v, str) else Decimal(v)
                whole = d.is_finite() and d == d.to_integral_value()
            except InvalidOperation:
                whole = False
            if not whole:
                raise ValueFailure(f"cannot cast {_kind(v)} to {name}: not a whole number")
            n = int(d)
        else:
            raise ValueFailure(f"cannot cast {_kind(v)} to {name}")
        if not lo <= n <= hi:
            raise ValueFailure(f"out of range for {name}")
        return n

    return apply


def _numeric(v: Any) -> Any:
    if v is None or isinstance(v, Decimal):
        return v
    if isinstance(v, bool):
        raise ValueFailure("cannot cast boolean to numeric")
    try:
        if isinstance(v, int):
            return Decimal(v)
        if isinstance(v, float):
            return Decimal(repr(v))  # 0.1 -> Decimal("0.1"), not its binary expansion
        if isinstance(v, str):
            return Decimal(v.strip())
    except InvalidOperation:
        raise ValueFailure("cannot cast str to numeric: not a number") from None
    raise ValueFailure(f"cannot cast {_kind(v)} to numeric")


def _float(v: Any) -> Any:
    if v is None or isinstance(v, float):
        return v
    if isinstance(v, int | Decimal | str) and not isinstance(v, bool):
        try:
            return float(v)
        except ValueError:
            raise ValueFailure("cannot cast str to double precision: not a number") from None
    raise ValueFailure(f"cannot cast {_kind(v)} to double precision")


_TRUE: Final = frozenset({"t", "true", "y", "yes", "on", "1"})
_FALSE: Final = frozenset({"f", "false", "n", "no", "off", "0"})


def _boolean(v: Any) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        word = v.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueFailure(f"cannot cast {_kind(v)} to boolean (PostgreSQL's true/false words or 0/1)")


def _parse_iso(v: str, what: str) -> datetime:
    try:
        return datetime.fromisoformat(v.strip())
    except ValueError:
        raise ValueFailure(f"cannot cast str to {what}: not an ISO 8601 date/time") from None


def _date(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    if isinstance(v, str):
        return _parse_iso(v, "date").date()
    raise ValueFailure(f"cannot cast {_kind(v)} to date")


def _timestamp(aware: bool) -> ValueFn:
    name = "timestamptz" if aware else "timestamp"

    def apply(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, str):
            v = _parse_iso(v, name)
        elif isinstance(v, date) and not isinstance(v, datetime):
            v = datetime.combine(v, time())
        elif not isinstance(v, datetime):
            raise ValueFailure(f"cannot cast {_kind(v)} to {name}")
        # Naive values are taken as UTC, which is how Debezium delivers them.
        if aware:
            return v if v.tzinfo is not None else v.replace(tzinfo=UTC)
        return v if v.tzinfo is None else v.astimezone(UTC).replace(tzinfo=None)

    return apply


def _time(v: Any) -> Any:
    if v is None or isinstance(v, time):
        return v
    if isinstance(v, datetime):
        return v.time()
    if isinstance(v, timedelta) and timedelta(0) <= v < timedelta(days=1):
        return (datetime.min + v).time()  # MySQL TIME arrives as a duration
    if isinstance(v, str):
        try:
            return time.fromisoformat(v.strip())
        except ValueError:
            raise ValueFailure("cannot cast str to time: not an ISO 8601 time") from None
    raise ValueFailure(f"cannot cast {_kind(v)} to time")


def _json(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            raise ValueFailure("cannot cast str to json: not valid JSON") from None
    if isinstance(v, date | time):
        return v.isoformat()
    return v


def _uuid(v: Any) -> Any:
    try:
        if isinstance(v, str):
            return str(uuid.UUID(v.strip()))
        if isinstance(v, bytes) and len(v) == 16:
            return str(uuid.UUID(bytes=v))
    except ValueError:
        raise ValueFailure("cannot cast str to uuid: not a UUID") from None
    if v is None or isinstance(v, uuid.UUID):
        return v if v is None else str(v)
    raise ValueFailure(f"cannot cast {_kind(v)} to uuid")


CASTS: Final[Mapping[Family, ValueFn]] = {
    Family.TEXT: to_text,
    Family.SMALLINT: _integer(-(2**15), 2**15 - 1, "smallint"),
    Family.INTEGER: _integer(-(2**31), 2**31 - 1, "integer"),
    Family.BIGINT: _integer(-(2**63), 2**63 - 1, "bigint"),
    Family.NUMERIC: _numeric,
    Family.FLOAT: _float,
    Family.BOOLEAN: _boolean,
    Family.DATE: _date,
    Family.TIMESTAMP: _timestamp(aware=False),
    Family.TIMESTAMPTZ: _timestamp(aware=True),
    Family.TIME: _time,
    Family.JSON: _json,
    Family.UUID: _uuid,
}


# --- CEL --------------------------------------------------------------------------------------
#
# The CEL library takes str, int, float, bool, None, bytes, Decimal (as double), datetime (as
# timestamp; naive means UTC) and timedelta (as duration), and refuses date and time. Our
# choice for those: ISO text. "YYYY-MM-DD" strings compare in date order, so
# `row.tanggal >= "2024-01-01"` works, they concatenate into labels, and
# `timestamp(row.tanggal + "T00:00:00Z")` gives a timestamp where one is needed.
# Decimal becomes a double: exact to the cent below 9e13, plenty for rupiah amounts in a filter,
# but arithmetic on money belongs in the database, not in a CEL `expr`.

# One token at a time: a whole string literal (so that "row.x" inside a string stays text), a
# `row.x` / `row["x"]` reference, an identifier, or any other character.
_TOKEN: Final = re.compile(
    r"""
    (?P<string>[rRbB]{0,2}(?:"{3}(?:\\.|[^\\])*?"{3}|'{3}(?:\\.|[^\\])*?'{3}
        |"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
    | (?P<ref>\brow\s*(?:\.\s*(?P<field>[A-Za-z_]\w*)
        |\[\s*(?:"(?P<dq>[^"\\]*)"|'(?P<sq>[^'\\]*)')\s*\]))
    | (?P<word>[A-Za-z_]\w*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_BOUND: Final = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
FLAT_PREFIX: Final = "__row_"


def flatten_row(source: str) -> tuple[str, tuple[str, ...]] | None:
    """`source` with each `row.x` / `row["x"]` replaced by a plain variable, and the columns
    those variables stand for; None when `row` is used any other way (`has(row.x)`,
    `size(row)`, `row[name]`), which needs the row as a CEL map.

    Why: the CEL binding converts a Python dict into a CEL map at about 3 µs a call, while
    plain variables cost a fraction of that, and only the columns read are converted.
    Worked example:
    'row.kode + " - " + row["nama"]' -> ('__row_0 + " - " + __row_1', ("kode", "nama")).
    """
    out: list[str] = []
    columns: dict[str, str] = {}
    previous = ""
    for m in _TOKEN.finditer(source):
        text = m.group()
        if m["ref"] is not None and previous != ".":  # not a field `row` of something else
            name = next(g for g in (m["field"], m["dq"], m["sq"]) if g is not None)
            out.append(columns.setdefault(name, f"{FLAT_PREFIX}{len(columns)}"))
        elif m["word"] in ("row", "has") and previous != ".":
            return None
        else:
            out.append(text)
        previous = text.strip() or previous
    return "".join(out), tuple(columns)


def compile_cel(source: str) -> Any:
    """A compiled CEL program, or ValueFailure with the parser's message made readable."""
    try:
        program = cel.compile(source)
    except ValueError as exc:
        # "Failed to parse expression '...': ERROR: <input>:1:8: Syntax error: mismatched
        # input '<EOF>' expecting {...}\n| ..." -> "1:8: mismatched input '<EOF>'"
        text = str(exc)
        m = re.search(r"<input>:(\d+):(\d+): (?:Syntax error: )?([^\n]*)", text)
        if m is None:
            raise ValueFailure(text.splitlines()[0]) from None
        what = re.sub(r"\s*expecting \{.*$", "", m[3])
        raise ValueFailure(f"CEL syntax error at {m[1]}:{m[2]}: {what}") from None
    bound = set(_BOUND.findall(source))
    unknown = sorted(set(program.variables()) - bound - {"row"})
    if unknown:
        raise ValueFailure(f"unknown name `{unknown[0]}`: the only variable is `row`")
    return program


def _date_to_cel(v: date) -> str:
    return v.isoformat()


def _list_to_cel(v: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [to_cel(x) for x in v]


def _dict_to_cel(v: dict[Any, Any]) -> dict[Any, Any]:
    return {k: to_cel(x) for k, x in v.items()}


def _datetime_to_cel(v: datetime) -> datetime:
    # The binding takes naive (as UTC) and UTC datetimes only: a source's zone-less value read
    # in its `timezone:` arrives in that zone.
    zone = v.tzinfo
    return v if zone is None or zone is UTC else v.astimezone(UTC)


_TO_CEL: Final[Mapping[type, Callable[[Any], Any]]] = {
    BitString: str,
    datetime: _datetime_to_cel,
    date: _date_to_cel,
    time: _date_to_cel,
    list: _list_to_cel,
    tuple: _list_to_cel,
    dict: _dict_to_cel,
}


def to_cel(v: Any) -> Any:
    conv = _TO_CEL.get(type(v))  # exact type: datetime is a date subclass but CEL takes it
    return v if conv is None else conv(v)


def from_cel(v: Any, family: Family | None) -> Any:
    """CEL hands timestamps back as aware UTC; a `timestamp` column wants them naive."""
    if family is Family.TIMESTAMP and isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC).replace(tzinfo=None)
    return v
