"""What the mappings read from their sources: each `from:` table and the source columns its
rules name, with the file and line that names them. Pure: the start-up check
(`reconcile.catalog`) compares this with the source databases' catalogs.

A column counts as read where a missing one would fail every event: a rename, `from:`, a
`concat` part, and `row.x` / `row["x"]` in an `expr` or a `filter`. An expression that uses
`row` any other way (`has(row.x)`, `row[name]`) may be written for rows without the column,
so its columns are not listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tunggal.mapping.engine import MappingSet, iter_tables, location
from tunggal.mapping.spec import ColumnSpec, ConstPart, TableMapping
from tunggal.mapping.transforms import flatten_row

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class ColumnRead:
    column: str  # the source column
    location: str  # where in the file, e.g. "tables[0].columns.nama.concat[2]"
    line: int | None


@dataclass(frozen=True)
class TableRead:
    """One `tables:` entry: the source table it reads and the columns its rules name."""

    source: str
    table: str  # schema.table (database.table for MySQL and MariaDB)
    file: str
    location: str  # "tables[0].from"
    line: int | None
    columns: tuple[ColumnRead, ...]


def source_reads(mappings: MappingSet) -> list[TableRead]:
    """Every mapping entry's source table and columns, in file order."""
    reads: list[TableRead] = []
    for doc, index, table in iter_tables(mappings.documents):
        base: Path = ("tables", index)
        columns = [
            ColumnRead(name, location((*base, *path)), doc.line(*base, *path))
            for name, path in _columns(table)
        ]
        reads.append(
            TableRead(
                doc.spec.source,
                table.source_table,
                doc.path,
                location((*base, "from")),
                doc.line(*base, "from"),
                tuple(columns),
            )
        )
    return reads


def _columns(table: TableMapping) -> Iterator[tuple[str, Path]]:
    """(source column, its place in the table entry) for every column the rules read."""
    for target, value in table.columns.items():
        at: Path = ("columns", target)
        if isinstance(value, str):
            yield value, at
        else:
            yield from _spec_columns(value, at)
    if table.filter is not None:
        yield from _cel_columns(table.filter, ("filter",))


def _spec_columns(spec: ColumnSpec, at: Path) -> Iterator[tuple[str, Path]]:
    if spec.from_ is not None:
        yield spec.from_, (*at, "from")
    elif spec.concat is not None:
        for j, part in enumerate(spec.concat):
            if not isinstance(part, ConstPart):
                yield part, (*at, "concat", j)
    elif spec.expr is not None:
        yield from _cel_columns(spec.expr, (*at, "expr"))


def _cel_columns(source: str, at: Path) -> Iterator[tuple[str, Path]]:
    flat = flatten_row(source)
    if flat is not None:
        for name in flat[1]:
            yield name, at
