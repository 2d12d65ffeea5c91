"""Read, select and delete rows of `public.tunggal_dead_letters` (DDL in `sink.schema`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from tunggal.errors import FatalError
from tunggal.sink.postgres import classify

# The source table of an entry: the mapping names it when a rule failed; an undecodable event
# has only its topic, "<source>.<schema>.<table>" (the source name is the topic prefix).
_TABLE = sql.SQL(
    "COALESCE(source_table, CASE WHEN left(destination, length(source) + 1) = source || '.' "
    "THEN substr(destination, length(source) + 2) ELSE NULLIF(destination, '') END)"
)
_COLUMNS = sql.SQL(
    "id, source, {table}, source_table, destination, position, raw_key, raw_value, "
    "error_class, error, mapping_hash, first_failed_at, created_at, attempts, last_failed_at"
).format(table=_TABLE)


@dataclass(frozen=True)
class Entry:
    id: int
    source: str
    table: str | None  # source_table, else read off the topic name
    source_table: str | None
    destination: str | None
    position: int | None
    raw_key: str | None
    raw_value: str | None
    error_class: str
    error: str
    mapping_hash: str | None
    first_failed_at: dt.datetime
    created_at: dt.datetime
    attempts: int  # 1 when written; each `dlq replay` that fails it again adds one
    last_failed_at: dt.datetime

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Entry:
        values = list(row)
        if isinstance(values[5], Decimal):
            values[5] = int(values[5])
        return cls(*values)

    def as_json(self) -> dict[str, Any]:
        """Every field; timestamps in ISO 8601 with offset; raw key/value exactly as stored."""
        return {
            "id": self.id,
            "source": self.source,
            "table": self.table,
            "source_table": self.source_table,
            "destination": self.destination,
            "position": None if self.position is None else str(self.position),  # may be 128-bit
            "raw_key": self.raw_key,
            "raw_value": self.raw_value,
            "error_class": self.error_class,
            "error": self.error,
            "mapping_hash": self.mapping_hash,
            "first_failed_at": self.first_failed_at.isoformat(),
            "created_at": self.created_at.isoformat(),
            "attempts": self.attempts,
            "last_failed_at": self.last_failed_at.isoformat(),
        }


@dataclass(frozen=True)
class Selection:
    """Which entries a command acts on; every given criterion must hold."""

    source: str | None = None
    # "schema.table", or a bare table name in any schema
    table: str | None = None
    ids: tuple[int, ...] = ()
    created_before: dt.datetime | None = None

    def where(self) -> tuple[sql.Composable, list[Any]]:
        clauses: list[sql.Composable] = []
        params: list[Any] = []
        if self.source is not None:
            clauses.append(sql.SQL("source = %s"))
            params.append(self.source)
        if self.table is not None:
            if "." in self.table:
                clauses.append(sql.SQL("{} = %s").format(_TABLE))
            else:
                clauses.append(sql.SQL("split_part({}, '.', 2) = %s").format(_TABLE))
            params.append(self.table)
        if self.ids:
            clauses.append(sql.SQL("id = ANY(%s)"))
            params.append(list(self.ids))
        if self.created_before is not None:
            clauses.append(sql.SQL("created_at < %s"))
            params.append(self.created_before)
        if not clauses:
            return sql.SQL("TRUE"), params
        return sql.SQL(" AND ").join(clauses), params


@contextmanager
def translated() -> Iterator[None]:
    """Driver errors become Tunggal's (transient, fatal...), so the CLI prints them cleanly."""
    try:
        yield
    except psycopg.errors.UndefinedTable as exc:
        raise FatalError(
            "the target has no public.tunggal_dead_letters table yet; "
            "run `tunggal schema --apply --config <tunggal.yaml>`"
        ) from exc
    except psycopg.Error as exc:
        raise classify(exc) from exc


def libpq_dsn(dsn: str) -> str:
    """The config accepts SQLAlchemy's spelling too; libpq knows only postgresql://."""
    return dsn.replace("postgresql+psycopg://", "postgresql://", 1)


def connect(dsn: str, *, connect_timeout_s: float = 10) -> psycopg.Connection[Any]:
    with translated():
        return psycopg.connect(
            libpq_dsn(dsn),
            autocommit=True,
            connect_timeout=max(1, int(connect_timeout_s)),
            options="-c TimeZone=UTC",
        )


def count(conn: psycopg.Connection[Any], selection: Selection) -> int:
    where, params = selection.where()
    with translated():
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM public.tunggal_dead_letters WHERE {}").format(where),
            params,
        ).fetchone()
    return int(row[0]) if row else 0


def max_id(conn: psycopg.Connection[Any], selection: Selection) -> int | None:
    where, params = selection.where()
    with translated():
        row = conn.execute(
            sql.SQL("SELECT max(id) FROM public.tunggal_dead_letters WHERE {}").format(where),
            params,
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def fetch(
    conn: psycopg.Connection[Any],
    selection: Selection,
    *,
    limit: int | None = None,
    newest_first: bool = False,
    after_id: int | None = None,
    up_to_id: int | None = None,
) -> list[Entry]:
    where, params = selection.where()
    if after_id is not None:
        where = sql.SQL("{} AND id > %s").format(where)
        params.append(after_id)
    if up_to_id is not None:
        where = sql.SQL("{} AND id <= %s").format(where)
        params.append(up_to_id)
    statement = sql.SQL(
        "SELECT {} FROM public.tunggal_dead_letters WHERE {} ORDER BY id {}"
    ).format(_COLUMNS, where, sql.SQL("DESC" if newest_first else "ASC"))
    if limit is not None:
        statement = sql.SQL("{} LIMIT %s").format(statement)
        params.append(limit)
    with translated():
        return [Entry.from_row(row) for row in conn.execute(statement, params)]


def get(conn: psycopg.Connection[Any], entry_id: int) -> Entry | None:
    found = fetch(conn, Selection(ids=(entry_id,)))
    return found[0] if found else None


def purge(conn: psycopg.Connection[Any], selection: Selection) -> int:
    where, params = selection.where()
    with translated():
        cur = conn.execute(
            sql.SQL("DELETE FROM public.tunggal_dead_letters WHERE {}").format(where), params
        )
    return max(cur.rowcount, 0)
