"""Checks mappings against the target database's tables, as the database describes them.

Pure: the caller reads the catalog (format_type(), primary key and unique constraints) into
`TableInfo`s; this module only compares, so `tunggal check` and the tests share one code path.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from tunggal.errors import Problem
from tunggal.mapping.engine import MappingDocument, MappingSet, TargetSpec, iter_tables, location
from tunggal.mapping.pgtypes import Family, compatible, parse_type
from tunggal.mapping.spec import (
    CastStep,
    ColumnSpec,
    DatePartStep,
    DefaultIfNullStep,
    LookupStep,
    TableMapping,
)

# Written by the sink on every row it upserts; `tunggal schema` adds them.
BOOKKEEPING_COLUMNS: Final[Mapping[str, str]] = {
    "_tunggal_source": "text",
    "_tunggal_position": "numeric",
    "_tunggal_ts": "bigint",
}


# Each source's latest contribution to each row of a table written by several sources
# (`mapping.survivorship`, `sink.merge`) lives in a table of this schema, one per target table.
CONTRIBUTIONS_SCHEMA: Final = "tunggal_contributions"
CONTRIBUTION_BOOKKEEPING: Final[Mapping[str, str]] = {
    "_tunggal_source": "text",
    "_tunggal_position": "numeric",
    "_tunggal_ts": "bigint",
    "_tunggal_state": "text",  # live, soft (soft-deleted) or hard (deleted): mapping.survivorship
}


def contributions_table(target: str) -> str:
    """Where the contributions to `target` ("schema.table") live, as "schema.table".

    `public.opd` -> `tunggal_contributions.public__opd`; a name past PostgreSQL's 63 bytes is
    cut and given a hash, so that two long names do not meet.
    """
    schema, _, table = target.partition(".")
    name = f"{schema}__{table}"
    if len(name) > 63:  # plain ASCII names (spec._identifier)
        name = f"{name[:54]}_{hashlib.sha256(target.encode()).hexdigest()[:8]}"
    return f"{CONTRIBUTIONS_SCHEMA}.{name}"


@dataclass(frozen=True)
class TableInfo:
    """A target table as it exists in the database."""

    name: str  # "schema.table"
    columns: Mapping[str, str]  # column -> type as format_type() prints it
    # The primary key and each unique constraint or unique index: what ON CONFLICT can use.
    unique_keys: tuple[tuple[str, ...], ...]


def _family_of_value(value: Any) -> Family | None:
    if isinstance(value, bool):
        return Family.BOOLEAN
    if isinstance(value, int):
        return Family.BIGINT
    if isinstance(value, float):
        return Family.FLOAT
    if isinstance(value, str):
        return Family.TEXT
    return None


def _produced(spec: ColumnSpec) -> tuple[Family | None, str]:
    """The family of the values a column spec produces, and the rule that decides it."""
    family: Family | None = None
    why = ""
    if spec.concat is not None:
        family, why = Family.TEXT, "concat"
    elif spec.has("const"):
        family, why = _family_of_value(spec.const), "const"
    for step in spec.steps:
        if isinstance(step, str):
            family, why = Family.TEXT, step
        elif isinstance(step, DatePartStep):
            family, why = Family.INTEGER, "date_part"
        elif isinstance(step, LookupStep):
            results = [*step.lookup.values()]
            if "default" in step.model_fields_set:
                results.append(step.default)
            kinds = {_family_of_value(v) for v in results if v is not None}
            family, why = (kinds.pop() if len(kinds) == 1 else None), "lookup"
        elif isinstance(step, DefaultIfNullStep):
            continue
        elif isinstance(step, CastStep):
            parsed = parse_type(step.cast)
            family, why = (None if parsed is None else parsed.family), f"cast: {step.cast}"
    return family, why


def _column_problems(
    doc: MappingDocument, index: int, table: TableMapping, info: TableInfo
) -> list[Problem]:
    problems: list[Problem] = []
    for column, value in table.columns.items():
        path = ("tables", index, "columns", column)
        actual_text = info.columns.get(column)
        if actual_text is None:
            close = difflib.get_close_matches(column, list(info.columns), n=1)
            declared = None if isinstance(value, str) else value.type
            hint = (
                f"did you mean `{close[0]}`?"
                if close
                else f"ALTER TABLE {info.name} ADD COLUMN {column} {declared or '<type>'}"
            )
            problems.append(
                Problem(
                    doc.path,
                    location(path),
                    f"column {column} does not exist in {info.name}",
                    doc.line(*path),
                    hint,
                )
            )
            continue
        parsed = parse_type(actual_text)
        if parsed is None or isinstance(value, str):
            continue
        actual = parsed.family
        declared_type = parse_type(value.type) if value.type else None
        produced, why = _produced(value)
        if declared_type is not None and not compatible(declared_type.family, actual):
            problems.append(
                Problem(
                    doc.path,
                    location((*path, "type")),
                    f"{info.name}.{column} is {actual_text} but `type:` says {value.type}",
                    doc.line(*path, "type"),
                    f"change `type:` to {actual_text}, or alter the column",
                )
            )
        elif produced is not None and not compatible(produced, actual):
            fix = f"cast: {actual_text}" if parse_type(actual_text) else "cast"
            problems.append(
                Problem(
                    doc.path,
                    location(path),
                    f"{info.name}.{column} is {actual_text} but the mapping produces "
                    f"{produced.value} ({why})",
                    doc.line(*path),
                    f"add `{fix}` last, or change the column type",
                )
            )
    if table.delete == "soft" and table.soft_delete_column not in info.columns:
        key = "soft_delete_column" if "soft_delete_column" in table.model_fields_set else "delete"
        problems.append(
            Problem(
                doc.path,
                location(("tables", index, key)),
                f"soft-delete column {table.soft_delete_column} does not exist in {info.name}",
                doc.line("tables", index, key),
                "run `tunggal schema --apply` to add it, or ALTER TABLE "
                f"{info.name} ADD COLUMN {table.soft_delete_column} timestamptz",
            )
        )
    return problems


def check_against_database(mset: MappingSet, tables: Mapping[str, TableInfo]) -> list[Problem]:
    """What in the target database does not fit the mappings, each at its mapping line."""
    problems: list[Problem] = []
    entries: dict[str, list[tuple[MappingDocument, int, TableMapping]]] = {}
    for doc, index, table in iter_tables(mset.documents):
        entries.setdefault(table.target, []).append((doc, index, table))
    for name, target in mset.targets().items():
        doc, index, _ = entries[name][0]
        info = tables.get(name)
        if info is None:
            untyped = [c for c, t in target.columns.items() if t is None]
            problems.append(
                Problem(
                    doc.path,
                    location(("tables", index, "to")),
                    f"target table {name} does not exist",
                    doc.line("tables", index, "to"),
                    "run `tunggal schema --apply` to create it"
                    if not untyped
                    else f"add `type:` to {', '.join(untyped)} so that `tunggal schema --apply`"
                    " can create it, or create it yourself",
                )
            )
            continue
        if frozenset(target.key) not in {frozenset(k) for k in info.unique_keys}:
            key = ", ".join(target.key)
            existing = "; ".join(f"({', '.join(k)})" for k in info.unique_keys)
            problems.append(
                Problem(
                    doc.path,
                    location(("tables", index, "key")),
                    f"key ({key}) is not a primary key or unique constraint of {name}",
                    doc.line("tables", index, "key"),
                    (f"its unique keys are {existing}; " if existing else "")
                    + f"upserts need one: ALTER TABLE {name} ADD UNIQUE ({key})",
                )
            )
        missing = [c for c in BOOKKEEPING_COLUMNS if c not in info.columns]
        if missing:
            problems.append(
                Problem(
                    doc.path,
                    location(("tables", index, "to")),
                    f"{name} lacks tunggal's bookkeeping columns {', '.join(missing)}",
                    doc.line("tables", index, "to"),
                    "run `tunggal schema --apply` to add them",
                )
            )
        for entry in entries[name]:
            problems.extend(_column_problems(*entry, info))
        if target.multi_source:
            problems.extend(_contribution_problems(target, tables, entries[name][0]))
    return problems


def _contribution_problems(
    target: TargetSpec,
    tables: Mapping[str, TableInfo],
    entry: tuple[MappingDocument, int, TableMapping],
) -> list[Problem]:
    """A table written by several sources needs its contributions table, with every column."""
    doc, index, _ = entry
    path = ("tables", index, "to")
    name = contributions_table(target.name)
    info = tables.get(name)
    wanted = [*target.key, *target.merge.columns, *CONTRIBUTION_BOOKKEEPING]
    lacking = wanted if info is None else [c for c in wanted if c not in info.columns]
    if not lacking:
        return []
    sources = ", ".join(target.merge.sources)
    message = (
        f"{target.name} is written by {sources} but has no contributions table {name}"
        if info is None
        else f"contributions table {name} lacks columns {', '.join(lacking)}"
    )
    return [
        Problem(
            doc.path,
            location(path),
            message,
            doc.line(*path),
            "run `tunggal schema --apply`: each source's values are kept there and merged",
        )
    ]
