"""The mapping file format as frozen pydantic models.

Field descriptions are user documentation: they become the JSON Schema that editors use for
completion (`# yaml-language-server: $schema=...`) and the hints of validation problems.

Checks that need one field only live here (names, type names, CEL syntax); checks across a
table or across files live in `loader.py`, which can point at the exact line.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tunggal.mapping.pgtypes import parse_type
from tunggal.mapping.transforms import CASTS, NAMED, ValueFailure, compile_cel

RESERVED_PREFIX: Final = "_tunggal_"  # bookkeeping columns the sink writes itself
DEFAULT_SCHEMA: Final = "public"
DEFAULT_SOFT_DELETE_COLUMN: Final = "deleted_at"
CEL_HINT: Final = (
    'CEL syntax: strings in "double quotes", && || ! for and/or/not, == for equality, '
    "row.<column> for a column; see https://github.com/google/cel-spec/blob/master/doc/langdef.md"
)
CAST_NAMES: Final = (
    "text, smallint, integer, bigint, numeric, double, boolean, date, timestamp, timestamptz, "
    "time, json, jsonb, uuid"
)


def problem(message: str, hint: str | None = None) -> PydanticCustomError:
    """A validation error that the loader reports as `message` with `hint`, unchanged.

    The message travels in the context, not the template, because pydantic formats the
    template and CEL messages contain braces.
    """
    return PydanticCustomError("tunggal", "{message}", {"message": message, "hint": hint})


_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A source table as Debezium names it: schema (or database) and table, each a plain name.
# ASCII: the same class in Python, pydantic (Rust) and JSON Schema (ECMA) regular expressions.
PLAIN_TABLE: Final = re.compile(r"[A-Za-z0-9_$-]+\.[A-Za-z0-9_$-]+")


def _identifier(name: str, what: str) -> str:
    # Target names end up in SQL; plain names need no quoting rules anywhere downstream.
    if not _IDENTIFIER.fullmatch(name):
        raise problem(
            f"{what} {name!r} is not a plain SQL name",
            "use letters, digits and underscores, starting with a letter",
        )
    if len(name.encode()) > 63:
        raise problem(f"{what} {name!r} is longer than 63 bytes", "PostgreSQL would truncate it")
    return name


def _target_column(name: str) -> str:
    _identifier(name, "column name")
    if name.startswith(RESERVED_PREFIX):
        raise problem(
            f"column name {name!r} is reserved",
            f"columns starting with {RESERVED_PREFIX} are written by tunggal itself",
        )
    return name


def _target_table(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 2:
        raise problem(f"target table {name!r} has too many dots", "write schema.table or table")
    for part in parts:
        _identifier(part, "target table name")
    return name


def _source_table(name: str) -> str:
    schema, dot, table = name.partition(".")
    if not (dot and schema and table):
        raise problem(
            f"source table {name!r} needs its schema",
            f"write it as schema.table, e.g. public.{name or 'kegiatan'}; database.table for MySQL",
        )
    if not PLAIN_TABLE.fullmatch(name):
        # Debezium reads the table list as regular expressions joined by commas: a comma, `|`
        # or `*` here would capture tables no mapping names.
        raise problem(
            f"source table {name!r} is not a plain table name",
            "one table per entry, as schema.table (database.table for MySQL and MariaDB) of "
            "letters, digits, _, $ or -; no lists, patterns or wildcards",
        )
    return name


def _source_column(name: str) -> str:
    if not name:
        raise problem("source column name is empty")
    return name


def _cel(source: str) -> str:
    try:
        compile_cel(source)
    except ValueFailure as exc:
        hint = "did you mean `row`?" if "unknown name" in str(exc) else CEL_HINT
        raise problem(str(exc), hint) from None
    return source


FLOW_COMMA_HINT: Final = (
    'inside {...} a comma ends the value: quote the type, type: "numeric(18,2)"'
)


def _pg_type(text: str) -> str:
    if parse_type(text) is None:
        raise problem(
            f"{text!r} is not a PostgreSQL type name",
            FLOW_COMMA_HINT
            if re.search(r"\(\s*\d+$", text)
            else "e.g. text, varchar(200), integer, bigint, numeric(18,2), date, timestamptz",
        )
    return text


def _cast(text: str) -> str:
    parsed = parse_type(text)
    if parsed is None or parsed.family not in CASTS:
        hint = FLOW_COMMA_HINT if re.search(r"\(\s*\d+$", text) else f"casts: {CAST_NAMES}"
        raise problem(f"cannot cast to {text!r}", hint)
    return text


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise problem(
            f"unknown time zone {name!r}",
            "e.g. Asia/Jakarta (WIB), Asia/Makassar (WITA), Asia/Jayapura (WIT)",
        ) from None
    return name


TargetColumn = Annotated[str, AfterValidator(_target_column)]
TargetTable = Annotated[str, AfterValidator(_target_table)]
SourceTable = Annotated[str, AfterValidator(_source_table)]
SourceColumn = Annotated[str, AfterValidator(_source_column)]
CelExpression = Annotated[str, AfterValidator(_cel)]
PgTypeName = Annotated[str, AfterValidator(_pg_type)]
CastName = Annotated[str, AfterValidator(_cast)]
# What YAML gives for an unquoted scalar. Dates stay dates (`2024-01-01` unquoted).
Scalar = bool | int | float | str | datetime | date | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- transform steps --------------------------------------------------------------------------


class DatePartStep(_Model):
    """Extract a field of a date or timestamp, as PostgreSQL's date_part()."""

    date_part: Literal[
        "year",
        "quarter",
        "month",
        "week",
        "day",
        "dow",
        "isodow",
        "doy",
        "hour",
        "minute",
        "second",
    ] = Field(
        description="Field to extract: year, quarter, month, week (ISO), day, dow (Sunday=0), "
        "isodow (Monday=1), doy, hour, minute, second (whole seconds)."
    )
    timezone: Annotated[str, AfterValidator(_zone)] | None = Field(
        default=None,
        description="Read timestamps with a time zone in this zone first, e.g. Asia/Jakarta; "
        "without it they are read in UTC, as Debezium delivers them.",
    )


class LookupStep(_Model):
    """Replace a code by its label through a table."""

    lookup: dict[str | int | bool, Scalar] = Field(
        min_length=1,
        description="Code -> replacement. Codes are compared as text, so 1 and '1' are one "
        "key; quote codes such as '01' that YAML would read as numbers. NULL stays NULL.",
    )
    default: Scalar = Field(
        default=None,
        description="Replacement for codes missing from `lookup`; without it a missing code "
        "is a mapping error for that row.",
    )


class DefaultIfNullStep(_Model):
    """Replace NULL by a fixed value."""

    default_if_null: Scalar = Field(description="Value used when the input is NULL.")


class CastStep(_Model):
    """Convert to a PostgreSQL type."""

    cast: CastName = Field(description=f"Target type: one of {CAST_NAMES} (modifiers allowed).")


def _step_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "<name>"
    if isinstance(value, dict | BaseModel):
        keys = value.keys() if isinstance(value, dict) else type(value).model_fields.keys()
        for key in STEP_MODELS:
            if key in keys:
                return f"<{key}>"
    return None


STEP_MODELS: Final[dict[str, type[_Model]]] = {
    "date_part": DatePartStep,
    "lookup": LookupStep,
    "default_if_null": DefaultIfNullStep,
    "cast": CastStep,
}
TRANSFORM_NAMES: Final = (*NAMED, *STEP_MODELS)

Step = Annotated[
    Annotated[Literal["trim", "upper", "lower"], Tag("<name>")]
    | Annotated[DatePartStep, Tag("<date_part>")]
    | Annotated[LookupStep, Tag("<lookup>")]
    | Annotated[DefaultIfNullStep, Tag("<default_if_null>")]
    | Annotated[CastStep, Tag("<cast>")],
    Discriminator(_step_tag),
]


# --- columns ----------------------------------------------------------------------------------


class ConstPart(_Model):
    """A fixed piece of text inside `concat`."""

    const: Scalar = Field(description="The fixed value, e.g. ' / '.")


ConcatPart = Annotated[
    Annotated[SourceColumn, Tag("<column>")] | Annotated[ConstPart, Tag("<const>")],
    Discriminator(lambda v: "<column>" if isinstance(v, str) else "<const>"),
]


class ColumnSpec(_Model):
    """How one target column gets its value. Exactly one of from, const, expr or concat.

    The value then goes through `transform` in order, then `lookup`/`default`,
    `default_if_null` and `cast`.
    """

    from_: SourceColumn | None = Field(default=None, alias="from", description="Source column.")
    const: Scalar = Field(default=None, description="A fixed value, e.g. the source system name.")
    expr: CelExpression | None = Field(
        default=None,
        description="CEL expression over `row`, e.g. 'row.kode + \" - \" + row.nama'. Dates "
        "are 'YYYY-MM-DD' text, numeric values doubles, timestamps CEL timestamps.",
    )
    concat: tuple[ConcatPart, ...] | None = Field(
        default=None,
        min_length=1,
        description="Source columns and {const: ...} pieces joined as text; NULL counts as ''.",
    )
    transform: tuple[Step, ...] = Field(
        default=(),
        description="Steps applied in order: trim, upper, lower, {date_part: ...}, "
        "{lookup: {...}, default: ...}, {default_if_null: ...}, {cast: ...}.",
    )
    lookup: dict[str | int | bool, Scalar] | None = Field(
        default=None,
        min_length=1,
        description="Code -> replacement, after `transform`. Codes compare as text.",
    )
    default: Scalar = Field(
        default=None, description="Replacement for codes missing from `lookup`."
    )
    default_if_null: Scalar = Field(default=None, description="Value used instead of NULL.")
    cast: CastName | None = Field(
        default=None, description=f"Convert last, to one of {CAST_NAMES}."
    )
    type: PgTypeName | None = Field(
        default=None,
        description="PostgreSQL type of the target column, used by `tunggal schema` to create "
        "it, e.g. varchar(200) or numeric(18,2). Defaults to the `cast` type.",
    )

    @model_validator(mode="after")
    def _one_value(self) -> ColumnSpec:
        given = [name for name in ("from", "const", "expr", "concat") if self.has(name)]
        if not given:
            raise problem(
                "column has no value",
                "give one of from: <source column>, const:, expr: or concat:",
            )
        if len(given) > 1:
            raise problem(
                f"column has both {given[0]} and {given[1]}",
                "give only one of from, const, expr, concat",
            )
        if "default" in self.model_fields_set and self.lookup is None:
            raise problem("`default` only applies with `lookup`", "did you mean default_if_null?")
        return self

    def has(self, key: str) -> bool:
        """Whether the file sets `key` (a YAML key: `from`, not `from_`); null counts as set."""
        name = "from_" if key == "from" else key
        return name in self.model_fields_set

    @property
    def steps(self) -> tuple[Step, ...]:
        """The whole pipeline: `transform`, then the shorthand keys in their fixed order."""
        extra: list[Step] = []
        if self.lookup is not None:
            extra.append(
                LookupStep(lookup=self.lookup, default=self.default)
                if self.has("default")
                else LookupStep(lookup=self.lookup)
            )
        if self.has("default_if_null"):
            extra.append(DefaultIfNullStep(default_if_null=self.default_if_null))
        if self.cast is not None:
            extra.append(CastStep(cast=self.cast))
        return (*self.transform, *extra)


ColumnValue = Annotated[
    Annotated[SourceColumn, Tag("<rename>")] | Annotated[ColumnSpec, Tag("<spec>")],
    Discriminator(lambda v: "<rename>" if isinstance(v, str) else "<spec>"),
]


# --- merging the sources of one target table -----------------------------------------------


SourceName = Annotated[str, AfterValidator(lambda s: _identifier(s, "source name"))]


class PriorityRule(_Model):
    """The first listed source that holds the row with a non-NULL value wins."""

    priority: tuple[SourceName, ...] = Field(
        min_length=1,
        description="Sources in order of trust, e.g. [e_planning, sipkd]; every source that "
        "maps the column must be listed. Later sources fill the gaps the earlier leave NULL.",
    )


class OwnerRule(_Model):
    """Only one source writes the column; the others' values are never used."""

    owner: SourceName = Field(description="The source that owns the column; it must map it.")


def _rule_tag(value: Any) -> str:
    if isinstance(value, str):
        return "<latest>"
    keys = value.keys() if isinstance(value, dict) else type(value).model_fields.keys()
    return "<owner>" if "owner" in keys else "<priority>"


MergeRule = Annotated[
    Annotated[Literal["latest"], Tag("<latest>")]
    | Annotated[PriorityRule, Tag("<priority>")]
    | Annotated[OwnerRule, Tag("<owner>")],
    Discriminator(_rule_tag),
]


class MergeSpec(_Model):
    """How the sources that write one target table make each row (survivorship rules).

    Given once per target table, in the entry of any one source that writes it.
    """

    default: MergeRule = Field(
        default="latest",
        description="Rule for every column not under `columns`: latest (the value of the "
        "holding source whose latest change committed last), {priority: [a, b]} or "
        "{owner: a}.",
    )
    columns: dict[TargetColumn, MergeRule] = Field(
        default_factory=dict,
        description="Per-column rules: latest, {priority: [a, b]} or {owner: a}.",
    )
    deleted_by: tuple[SourceName, ...] = Field(
        default=(),
        description="Sources whose delete (or truncate) removes the row for every source. "
        "Without it a row stays while any source holds it, and a delete only withdraws that "
        "source's values.",
    )


# --- tables and files -------------------------------------------------------------------------


class TableMapping(_Model):
    """One source table written into one target table."""

    from_: SourceTable = Field(
        alias="from", description="Source table as schema.table, e.g. public.kegiatan."
    )
    to: TargetTable = Field(
        description="Target table, schema.table or a bare name in the public schema."
    )
    key: tuple[TargetColumn, ...] = Field(
        min_length=1,
        description="Target columns that identify a row; they must be mapped in `columns` and "
        "be the target's primary key or a unique constraint.",
    )
    delete: Literal["hard", "soft", "ignore"] = Field(
        default="hard",
        description="What a source delete does: hard removes the target row, soft sets "
        "`soft_delete_column`, ignore keeps the row. Also applies when a row's key changes "
        "or it stops matching `filter`.",
    )
    soft_delete_column: TargetColumn = Field(
        default=DEFAULT_SOFT_DELETE_COLUMN,
        description="Timestamp column set by soft deletes and cleared by upserts "
        "(delete: soft only).",
    )
    truncate: Literal["ignore", "delete_source_rows"] = Field(
        default="ignore",
        description="What a source TRUNCATE does: ignore, or delete_source_rows to delete "
        "(soft-delete with delete: soft) the target rows this source wrote.",
    )
    filter: CelExpression | None = Field(
        default=None,
        description="CEL condition over `row` (the new row; the old one for deletes). Rows "
        "for which it is false are not written, and removed if they were.",
    )
    columns: dict[TargetColumn, ColumnValue] = Field(
        min_length=1,
        description="Target column -> a source column name, or a column spec.",
    )
    merge: MergeSpec | None = Field(
        default=None,
        description="Survivorship rules for a target table written by several sources: which "
        "source's value each column takes, and which deletes remove the row. Give them in one "
        "writer's entry only.",
    )

    @property
    def source_table(self) -> str:
        return self.from_

    @property
    def target(self) -> str:
        """Qualified target table name, "schema.table"."""
        return self.to if "." in self.to else f"{DEFAULT_SCHEMA}.{self.to}"


class MappingFile(_Model):
    """How one source system's tables map into the consolidated database."""

    source: SourceName = Field(
        description="Source system name, as in tunggal.yaml, e.g. e_planning."
    )
    tables: tuple[TableMapping, ...] = Field(
        min_length=1, description="The source tables this file maps."
    )


def json_schema() -> dict[str, Any]:
    """JSON Schema of a mapping file, for editors.

    The name rules the validators above enforce are added as patterns, so that an editor
    underlines `from: kegiatan` (no schema) or a column named `kode-opd` while it is typed.
    They are set here rather than as pydantic constraints: those would replace the validators'
    messages and hints, and a pattern on dict keys becomes `patternProperties`, under which
    a non-matching column would not be checked at all.
    """
    name = f"^{_IDENTIFIER.pattern}$"
    column = f"^(?!{RESERVED_PREFIX}){_IDENTIFIER.pattern}$"
    schema = MappingFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Tunggal mapping file"
    schema["properties"]["source"]["pattern"] = name
    table = schema["$defs"]["TableMapping"]["properties"]
    table["from"]["pattern"] = f"^{PLAIN_TABLE.pattern}$"
    table["to"]["pattern"] = f"^{_IDENTIFIER.pattern}(\\.{_IDENTIFIER.pattern})?$"
    table["key"]["items"]["pattern"] = column
    table["soft_delete_column"]["pattern"] = column
    table["columns"]["propertyNames"] = {"pattern": column}
    return schema
