"""A PostgreSQL source as `tunggal verify` reads it: its catalog, one consistent snapshot with
its WAL position, its rows in the shape Debezium gives them (`reconcile.pgvalues`), and how far
Tunggal's replication slot has confirmed.

Plain connections, read-only except for one Debezium `log` signal that moves an idle source's
stream past a position (`mark`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import psycopg
from psycopg import sql

from tunggal.connectors import ConnectorSpec
from tunggal.errors import TransientError
from tunggal.events.modes import ConnectorModes
from tunggal.reconcile.pgsql import SESSION_SETTINGS, ident
from tunggal.reconcile.pgvalues import (
    AS_TEXT_TYPES,
    TIME_TYPES,
    TIMESTAMP_TYPES,
    TIMESTAMPTZ_TYPES,
    TIMETZ_TYPES,
    base_type,
    column_reader,
)
from tunggal.reconcile.signals import source_conninfo

# Rows fetched per round trip while streaming a table.
FETCH_ROWS: Final = 5000


@dataclass(frozen=True)
class SourceTable:
    """A source table as its catalog describes it."""

    name: str  # schema.table
    columns: Mapping[str, str]  # column -> type as format_type() prints it (domains: their base)
    enums: frozenset[str]  # columns of an enum type (read as text, as Debezium sends them)
    primary_key: tuple[str, ...]
    pages: int  # pg_class.relpages: for progress and for reading in block ranges
    rows: int  # estimated rows (pg_class.reltuples, or the statistics collector's count)


_DESCRIBE: Final = """
SELECT a.attname,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
            ELSE format_type(a.atttypid, a.atttypmod) END,
       t.typtype = 'e' OR (t.typcategory = 'A' AND e.typtype = 'e')
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type e ON e.oid = t.typelem
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_PRIMARY_KEY: Final = """
SELECT array_agg(a.attname ORDER BY k.ord)
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s::regclass AND i.indisprimary
"""

_SIZE: Final = """
SELECT c.relpages, GREATEST(COALESCE(NULLIF(s.n_live_tup, 0), c.reltuples::bigint), 0)
FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = %s::regclass
"""


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class PostgresSource:
    """One PostgreSQL source database, reached with its connector's credentials."""

    spec: ConnectorSpec
    modes: ConnectorModes = field(init=False)
    slot: str = field(init=False)

    def __post_init__(self) -> None:
        self.modes = self.spec.modes()
        self.slot = self.spec.render(()).get("slot.name", self.spec.slot_name)

    def connect(self, application: str = "tunggal-verify") -> psycopg.Connection[Any]:
        conninfo = source_conninfo(self.spec, application, options=SESSION_SETTINGS)
        try:
            return psycopg.connect(conninfo)
        except psycopg.OperationalError as exc:
            raise TransientError(f"source {self.spec.name}: {_short(exc)}") from exc

    # -- the catalog ---------------------------------------------------------------------------

    def describe(self, conn: psycopg.Connection[Any], table: str) -> SourceTable | None:
        """The table, or None if the source has no such table."""
        row = conn.execute("SELECT to_regclass(%s)::text", (_quoted(table),)).fetchone()
        if row is None or row[0] is None:
            return None
        rel = _quoted(table)
        columns: dict[str, str] = {}
        enums: set[str] = set()
        for name, ctype, enum in conn.execute(_DESCRIBE, (rel,)):
            columns[name] = ctype
            if enum:
                enums.add(name)
        pk = conn.execute(_PRIMARY_KEY, (rel,)).fetchone()
        size = conn.execute(_SIZE, (rel,)).fetchone()
        conn.rollback()
        return SourceTable(
            table,
            columns,
            frozenset(enums),
            tuple(pk[0]) if pk and pk[0] else (),
            int(size[0]) if size else 0,
            int(size[1]) if size else 0,
        )

    @staticmethod
    def version(conn: psycopg.Connection[Any]) -> int:
        return int(conn.info.server_version)

    # -- one consistent snapshot ---------------------------------------------------------------

    @staticmethod
    def snapshot(conn: psycopg.Connection[Any]) -> int:
        """Start a read-only REPEATABLE READ transaction; return its WAL position.

        The position is read by the transaction's first statement, after its snapshot was
        taken: every commit the snapshot sees lies at or below it.
        """
        conn.rollback()
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])

    # -- reading rows as Debezium gives them ---------------------------------------------------

    def reader(self, table: SourceTable, hints: Mapping[str, str]) -> RowReader:
        return RowReader.build(table, self.modes, self.spec.schemas, hints)

    # -- where the stream is -------------------------------------------------------------------

    def confirmed(self, conn: psycopg.Connection[Any]) -> int | None:
        """The slot's confirmed_flush_lsn: Debezium confirms a position only once what came
        before it was handled (embedded: committed to the target). None without the slot."""
        row = conn.execute(
            "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (self.slot,),
        ).fetchone()
        conn.rollback()
        return None if row is None or row[0] is None else int(row[0])

    def mark(self, conn: psycopg.Connection[Any]) -> bool:
        """Write a Debezium `log` signal, so that a source with no other change streams a
        transaction after every position read before: the slot's confirmed position can then
        pass them. False when the source has no signal table (or it cannot be written)."""
        if not self.spec.signal_table:
            return False
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, 'log', %s)").format(
                        ident(self.spec.signal_table)
                    ),
                    (
                        f"tunggal-verify-{uuid.uuid4().hex[:16]}",
                        orjson.dumps({"message": "tunggal verify: position mark"}).decode(),
                    ),
                )
        except psycopg.Error:
            conn.rollback()
            return False
        conn.commit()
        return True


def _quoted(table: str) -> str:
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name).as_string(None)


# Python's date and time types hold years 1 to 9999 and times below 24:00. A value outside
# (infinity, BC dates, 24:00:00) fails Debezium's decoding too: the event is dead-lettered, so
# the row is reported as one the mapping cannot take, not compared.
_IN_RANGE: Final[dict[str, str]] = {
    "date": "{c} BETWEEN '0001-01-01' AND '9999-12-31'",
    "timestamp": "{c} >= '0001-01-01' AND {c} < '10000-01-01'",
    "timestamptz": "{c} >= '0001-01-02 00:00:00+00' AND {c} < '9999-12-31 00:00:00+00'",
    "time": "{c} < '24:00:00'",
    "timetz": "{c}::time < '24:00:00'",
}


def _range_kind(base: str) -> str | None:
    if base == "date":
        return "date"
    if base in TIMESTAMP_TYPES:
        return "timestamp"
    if base in TIMESTAMPTZ_TYPES:
        return "timestamptz"
    if base in TIME_TYPES:
        return "time"
    if base in TIMETZ_TYPES:
        return "timetz"
    return None


@dataclass(frozen=True)
class RowReader:
    """The SELECT list reading a source table, and what turns each fetched row into the row
    the mapping gets (a dict), or None when Debezium could not have decoded it either."""

    columns: tuple[str, ...]
    select: sql.Composable  # the columns, then a flag (a value out of range), then the key
    adapt: Callable[[tuple[Any, ...]], dict[str, Any] | None]
    primary_key: tuple[str, ...]

    @classmethod
    def build(
        cls,
        table: SourceTable,
        modes: ConnectorModes,
        schemas: bool,
        hints: Mapping[str, str],
    ) -> RowReader:
        names = tuple(table.columns)
        exprs: list[sql.Composable] = []
        checks: list[sql.Composable] = []
        converters: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(names):
            ctype = table.columns[name]
            column = sql.Identifier(name)
            base, _, is_array = base_type(ctype)
            read_as = ctype
            if name in table.enums or (base in AS_TEXT_TYPES and not is_array):
                expr: sql.Composable = sql.SQL("{}::text").format(column)
                read_as = "text" if name in table.enums else ctype
            elif base in AS_TEXT_TYPES:
                expr = sql.SQL("{}::text[]").format(column)
            elif base == "money":
                expr = sql.SQL("{}::numeric{}").format(column, sql.SQL("[]" if is_array else ""))
            else:
                kind = _range_kind(base)
                if kind is not None and not is_array:
                    check = sql.SQL(_IN_RANGE[kind]).format(c=column)
                    checks.append(sql.SQL("coalesce({}, true)").format(check))
                    expr = sql.SQL("CASE WHEN {} THEN {} END").format(check, column)
                else:
                    expr = column
            exprs.append(expr)
            convert = column_reader(read_as, modes, schemas, hints.get(name))
            if convert is not None:
                converters.append((i, convert))
        flag = (
            sql.SQL("NOT ({})").format(sql.SQL(" AND ").join(checks))
            if checks
            else sql.SQL("false")
        )
        key = sql.SQL("json_build_array({})::text").format(
            sql.SQL(", ").join(
                sql.SQL("{}::text").format(sql.Identifier(c)) for c in table.primary_key
            )
        )
        bad = len(names)

        def adapt(row: tuple[Any, ...]) -> dict[str, Any] | None:
            if row[bad]:
                return None
            values = dict(zip(names, row, strict=False))
            for i, convert in converters:
                value = row[i]
                if value is not None:
                    values[names[i]] = convert(value)
            return values

        return cls(
            names,
            sql.SQL(", ").join([*exprs, flag, key]),
            adapt,
            table.primary_key,
        )

    def stream(
        self,
        conn: psycopg.Connection[Any],
        table: str,
        where: sql.Composable | None = None,
        params: Sequence[Any] = (),
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The table's rows in chunks, through a server-side cursor of the open transaction."""
        query = sql.SQL("SELECT {} FROM {} AS t").format(self.select, ident(table))
        if where is not None:
            query = sql.SQL("{} WHERE {}").format(query, where)
        with conn.cursor(name=f"tunggal_verify_{uuid.uuid4().hex[:8]}") as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(query, list(params))
            while rows := cur.fetchmany(FETCH_ROWS):
                yield rows


def pk_condition(
    columns: Sequence[str], types: Mapping[str, str], keys: Sequence[Sequence[str]]
) -> str:
    """An SQL condition matching exactly these primary keys (text values), for Debezium's
    `additional-conditions`: `id IN ('1'::bigint, ...)` or `(a, b) IN (...)`."""

    def literal(value: str, column: str) -> str:
        return f"{sql.Literal(value).as_string(None)}::{types[column]}"

    names = [sql.Identifier(c).as_string(None) for c in columns]
    if len(columns) == 1:
        items = ", ".join(literal(k[0], columns[0]) for k in keys)
        return f"{names[0]} IN ({items})"
    tuples = ", ".join(
        "(" + ", ".join(literal(v, c) for v, c in zip(k, columns, strict=True)) + ")" for k in keys
    )
    return f"({', '.join(names)}) IN ({tuples})"
