"""The seam between `tunggal verify` and the kinds of source database.

Everything verify asks of a source is below (`SourceDatabase`); `reconcile.pgsource` answers
it for PostgreSQL. MySQL/MariaDB and SQL Server sources need the same answers in their own SQL
(a consistent snapshot with its binlog or LSN position, the catalog, rows spelt as Debezium
spells them) and the settle step a position their Debezium connectors confirm; until then
`source_database` says so in one line, before anything is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import psycopg

from tunggal.connectors import ConnectorSpec
from tunggal.errors import Problem
from tunggal.events.modes import ConnectorModes
from tunggal.reconcile.pgsource import PostgresSource, RowReader, SourceTable


class SourceDatabase(Protocol):
    spec: ConnectorSpec
    modes: ConnectorModes
    slot: str

    def connect(self, application: str = ...) -> psycopg.Connection[Any]: ...

    def describe(self, conn: psycopg.Connection[Any], table: str) -> SourceTable | None: ...

    def snapshot(self, conn: psycopg.Connection[Any]) -> int: ...

    def reader(self, table: SourceTable, hints: Mapping[str, str]) -> RowReader: ...

    def confirmed(self, conn: psycopg.Connection[Any]) -> int | None: ...

    def mark(self, conn: psycopg.Connection[Any]) -> bool: ...


SUPPORTED = ("postgresql",)


def source_database(spec: ConnectorSpec) -> SourceDatabase:
    """The source's database, for the kinds verify reads (see `unsupported_kind` first)."""
    assert spec.kind in SUPPORTED, spec.kind
    return PostgresSource(spec)


def unsupported_kind(spec: ConnectorSpec, where: str) -> Problem | None:
    if spec.kind in SUPPORTED:
        return None
    return Problem(
        where,
        "kind",
        f"source {spec.name} is a {spec.kind} database: `tunggal verify` reads PostgreSQL "
        "sources only so far",
        hint="verify its tables with `--source` set to a PostgreSQL source, or leave this one out",
    )


__all__ = [
    "SUPPORTED",
    "RowReader",
    "SourceDatabase",
    "SourceTable",
    "source_database",
    "unsupported_kind",
]
