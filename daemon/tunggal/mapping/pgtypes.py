"""PostgreSQL type names as mapping files spell them: syntax check, family and canonical form.

A mapping names types in three places: `type:` (DDL for `tunggal schema`), `cast:` (a value
conversion) and, through the database check, the types `format_type()` prints. All three go
through `parse_type`, so `int`, `int4` and `integer` are one type everywhere, and
`character varying(100)` is compared with `text` by family instead of by spelling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Family(StrEnum):
    TEXT = "text"
    SMALLINT = "smallint"
    INTEGER = "integer"
    BIGINT = "bigint"
    NUMERIC = "numeric"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    TIME = "time"
    INTERVAL = "interval"
    JSON = "json"
    UUID = "uuid"
    BYTEA = "bytea"
    ARRAY = "array"
    OTHER = "other"  # enums, domains, PostGIS...: accepted, never judged


INTEGERS: Final = frozenset({Family.SMALLINT, Family.INTEGER, Family.BIGINT})

# alias -> (family, canonical spelling as format_type() prints it)
_BASES: Final[dict[str, tuple[Family, str]]] = {
    "text": (Family.TEXT, "text"),
    "varchar": (Family.TEXT, "character varying"),
    "character varying": (Family.TEXT, "character varying"),
    "char": (Family.TEXT, "character"),
    "character": (Family.TEXT, "character"),
    "bpchar": (Family.TEXT, "character"),
    "citext": (Family.TEXT, "citext"),
    "name": (Family.TEXT, "name"),
    "smallint": (Family.SMALLINT, "smallint"),
    "int2": (Family.SMALLINT, "smallint"),
    "integer": (Family.INTEGER, "integer"),
    "int": (Family.INTEGER, "integer"),
    "int4": (Family.INTEGER, "integer"),
    "bigint": (Family.BIGINT, "bigint"),
    "int8": (Family.BIGINT, "bigint"),
    "numeric": (Family.NUMERIC, "numeric"),
    "decimal": (Family.NUMERIC, "numeric"),
    "double precision": (Family.FLOAT, "double precision"),
    "double": (Family.FLOAT, "double precision"),
    "float8": (Family.FLOAT, "double precision"),
    "float": (Family.FLOAT, "double precision"),
    "real": (Family.FLOAT, "real"),
    "float4": (Family.FLOAT, "real"),
    "boolean": (Family.BOOLEAN, "boolean"),
    "bool": (Family.BOOLEAN, "boolean"),
    "date": (Family.DATE, "date"),
    "timestamp": (Family.TIMESTAMP, "timestamp without time zone"),
    "timestamp without time zone": (Family.TIMESTAMP, "timestamp without time zone"),
    "timestamptz": (Family.TIMESTAMPTZ, "timestamp with time zone"),
    "timestamp with time zone": (Family.TIMESTAMPTZ, "timestamp with time zone"),
    "time": (Family.TIME, "time without time zone"),
    "time without time zone": (Family.TIME, "time without time zone"),
    "timetz": (Family.TIME, "time with time zone"),
    "time with time zone": (Family.TIME, "time with time zone"),
    "interval": (Family.INTERVAL, "interval"),
    "json": (Family.JSON, "json"),
    "jsonb": (Family.JSON, "jsonb"),
    "uuid": (Family.UUID, "uuid"),
    "bytea": (Family.BYTEA, "bytea"),
}

# Words, an optional (n) or (p,s) modifier anywhere after the first word, optional [] suffixes.
# Strict on purpose: `type:` ends up in CREATE TABLE, so nothing but a type name may pass.
_WORD = r"[a-z_][a-z0-9_]*"
_TYPE_RE: Final = re.compile(
    rf"^(?P<head>{_WORD}(?:\.{_WORD})?(?: {_WORD})*?)"
    r"(?:\((?P<args>\d+(?:,\d+)?)\))?"
    rf"(?P<tail>(?: {_WORD})*)"
    r"(?P<array>(?:\[\])*)$"
)


@dataclass(frozen=True, slots=True)
class PgType:
    family: Family
    canonical: str  # format_type() spelling, modifiers kept: "numeric(18,2)"


def _normalize(text: str) -> str:
    text = " ".join(text.lower().split())
    # Spaces go inside and before brackets, not after ")": "timestamp(3) with time zone".
    return re.sub(r"\s*([(,\[\]])\s*|\s*(\))", r"\1\2", text)


def parse_type(text: str) -> PgType | None:
    """The type `text` names, or None when it is not a plausible PostgreSQL type name."""
    m = _TYPE_RE.match(_normalize(text))
    if m is None:
        return None
    base = f"{m['head']}{m['tail']}"
    if base in _BASES:
        family, canonical = _BASES[base]
    elif " " in base:
        return None  # only built-in types have names of several words
    else:
        family, canonical = Family.OTHER, base
    if m["args"]:
        if " with" in canonical:  # timestamp(3) with time zone
            head, _, rest = canonical.partition(" with")
            canonical = f"{head}({m['args']}) with{rest}"
        else:
            canonical = f"{canonical}({m['args']})"
    if m["array"]:
        return PgType(Family.ARRAY, canonical + m["array"])
    return PgType(family, canonical)


def compatible(produced: Family, column: Family) -> bool:
    """Whether PostgreSQL stores a `produced` value in a `column` without surprises.

    Deliberately lenient (varchar lengths, integer widths and timestamp time zones are not
    judged): the check is there to catch a date written into an integer column, not to lint.
    """
    if Family.OTHER in (produced, column) or produced is column:
        return True
    if column is Family.TEXT:
        return True  # every type has an assignment cast to text
    if produced in INTEGERS:
        return column in INTEGERS or column in (Family.NUMERIC, Family.FLOAT)
    if produced in (Family.NUMERIC, Family.FLOAT):
        return column in (Family.NUMERIC, Family.FLOAT)
    stamps = (Family.DATE, Family.TIMESTAMP, Family.TIMESTAMPTZ)
    if produced in stamps:
        return column in stamps[1:]
    return False
