"""The target side of `tunggal verify`: the rows a source holds in a target table, their
checksums, the source's mapped rows staged beside them, and the row-by-row comparison.

The source's mapped rows go into session temp tables of the target exactly as the sink's
staging copies them (COPY text, dates and timestamps staged as timestamptz then cast), so the
target's own casts, equality and hashes decide what is equal: numeric 1.5 is 1.50 in a
numeric(18,2), a timestamptz is an instant, a jsonb compares by value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
import psycopg
from psycopg import sql

from tunggal.reconcile.pgsql import (
    Hashed,
    ident,
    read_sums,
    record_hash,
    regions_predicate,
    sums_query,
)
from tunggal.reconcile.plan import Check
from tunggal.sink.postgres import stage_type  # the sink's own staging rule

STAGE: Final = "tunggal_verify_stage"  # one chunk of mapped rows, checksummed then emptied
ROWS: Final = "tunggal_verify_rows"  # the mapped rows of the regions being compared
SUMS: Final = "tunggal_verify_sums"  # the staged chunks' region sums, added up in the target
# the sink's key text, the source primary key (a JSON array of its values as text), the table
_BOOKKEEPING: Final = (("_k", "text"), ("_pk", "text"), ("_st", "text"))

Kind = Literal["missing", "extra", "differing"]


@dataclass
class Difference:
    """One row that differs between the source (mapped) and the target."""

    kind: Kind
    key: tuple[str, ...]  # the target key's values, as text
    columns: tuple[str, ...] = ()  # differing: the columns that differ
    source: dict[str, str | None] = field(default_factory=dict)  # column -> value as text
    target: dict[str, str | None] = field(default_factory=dict)
    position: int | None = None  # the target row's _tunggal_position (extra, differing)
    ts: int | None = None  # the target row's _tunggal_ts
    key_json: str | None = None  # the sink's key text (missing, differing): tombstones
    pk: tuple[str, ...] | None = None  # the source row's primary key, as text
    source_table: str | None = None


# -- the rows a source holds -------------------------------------------------------------------


def held(check: Check) -> tuple[sql.Composable, sql.Composable]:
    """(FROM item aliased t, condition): the rows of the check's source in its target."""
    src = sql.Literal(check.source)
    if check.contributions is not None:
        return (
            sql.SQL("{} AS t").format(ident(check.contributions)),
            sql.SQL("t._tunggal_source = {} AND t._tunggal_state = 'live'").format(src),
        )
    where = sql.SQL("t._tunggal_source = {}").format(src)
    if check.soft_column is not None:
        # A soft-deleted row is one the source deleted: not expected in the source.
        where = sql.SQL("{} AND t.{} IS NULL").format(where, sql.Identifier(check.soft_column))
    return sql.SQL("{} AS t").format(ident(check.target.name)), where


def _hashed(check: Check, columns: Sequence[str], typed: bool = False) -> list[Hashed]:
    """The columns over rows aliased t; `typed`: staged rows, cast back to the target types."""
    out = []
    for c in columns:
        ctype = check.types[c]
        expr: sql.Composable = sql.SQL("t.{}").format(sql.Identifier(c))
        if typed and stage_type(ctype) != ctype:
            expr = sql.SQL("({})::{}").format(expr, sql.SQL(ctype))
        out.append(Hashed(expr, ctype in check.hashable))
    return out


def target_sums(
    cur: psycopg.Cursor[Any],
    check: Check,
    bits: int,
    regions: Mapping[int, Sequence[int]] | None = None,
    block_range: tuple[int, int | None] | None = None,
) -> Iterator[tuple[int, int, int]]:
    source, where = held(check)
    query = sums_query(
        source,
        where,
        _hashed(check, check.key),
        _hashed(check, check.columns),
        bits,
        regions,
        block_range,
    )
    return read_sums(cur.execute(query))


def target_pages(cur: psycopg.Cursor[Any], check: Check) -> tuple[int, int]:
    """(heap pages, estimated rows) of the table the check reads in the target."""
    table = check.contributions or check.target.name
    row = cur.execute(
        "SELECT c.relpages, GREATEST(COALESCE(NULLIF(s.n_live_tup, 0), c.reltuples::bigint), 0) "
        "FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "WHERE c.oid = %s::regclass",
        (ident(table).as_string(None),),
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


# -- the source's mapped rows, staged ----------------------------------------------------------


class Stage:
    """Session temp tables of the target that hold mapped source rows of one check."""

    def __init__(self, conn: psycopg.Connection[Any], check: Check) -> None:
        self.conn = conn
        self.check = check
        self.names = (*check.key, *check.columns)
        columns = [
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(stage_type(check.types[c])))
            for c in self.names
        ] + [sql.SQL(f"{name} {ctype}") for name, ctype in _BOOKKEEPING]
        with conn.cursor() as cur:
            for table in (STAGE, ROWS, SUMS):
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            for table in (STAGE, ROWS):
                cur.execute(
                    sql.SQL("CREATE TEMP TABLE {} ({})").format(
                        sql.Identifier(table), sql.SQL(", ").join(columns)
                    )
                )
            cur.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} (region bigint PRIMARY KEY, n bigint, s numeric)"
                ).format(sql.Identifier(SUMS))
            )
        conn.commit()
        self._copy = {
            table: sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(table),
                sql.SQL(", ").join(
                    [*map(sql.Identifier, self.names), *(sql.SQL(n) for n, _ in _BOOKKEEPING)]
                ),
            )
            for table in (STAGE, ROWS)
        }
        self.key_hash = record_hash(_hashed(check, check.key, typed=True), 0)

    def write(self, rows: Sequence[tuple[Any, ...]], table: str = STAGE) -> list[int]:
        """COPY rows (the staged columns, then key text, primary key, source table) in; the
        indexes of rows the target refuses (a value that does not fit its column), which the
        sink would dead-letter, are returned and left out."""
        if not rows:
            return []
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                self._write(cur, rows, table)
            return []
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError):
            pass
        refused = []
        for i, row in enumerate(rows):
            try:
                with self.conn.transaction(), self.conn.cursor() as cur:
                    self._write(cur, [row], table)
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError):
                refused.append(i)
        return refused

    def _write(self, cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]], table: str) -> None:
        with cur.copy(self._copy[table]) as copy:
            for row in rows:
                copy.write_row(row)

    def accumulate(self, bits: int, regions: Mapping[int, Sequence[int]] | None = None) -> None:
        """Add the staged chunk's region sums to those kept in the target; empty the chunk.
        The sums stay in the target: a chunk of 20,000 rows has about as many regions."""
        check = self.check
        query = sums_query(
            sql.SQL("{} AS t").format(sql.Identifier(STAGE)),
            sql.SQL("true"),
            _hashed(check, check.key, typed=True),
            _hashed(check, check.columns, typed=True),
            bits,
            regions,
        )
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {sums} AS a SELECT * FROM ({query}) AS q ON CONFLICT (region) "
                    "DO UPDATE SET n = a.n + EXCLUDED.n, s = a.s + EXCLUDED.s"
                ).format(sums=sql.Identifier(SUMS), query=query)
            )
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(STAGE)))
        self.conn.commit()

    def take_sums(self) -> list[tuple[int, int, int]]:
        """The sums added up so far; then they are emptied."""
        with self.conn.cursor() as cur:
            query = sql.SQL("SELECT region, n, s FROM {}").format(sql.Identifier(SUMS))
            found = list(read_sums(cur.execute(query)))
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(SUMS)))
        self.conn.commit()
        return found

    def keep(self, regions: Mapping[int, Sequence[int]]) -> None:
        """Move the staged chunk's rows of `regions` to the compared rows; empty the chunk."""
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("INSERT INTO {} SELECT * FROM {} AS t WHERE {}").format(
                    sql.Identifier(ROWS),
                    sql.Identifier(STAGE),
                    regions_predicate(self.key_hash, regions),
                )
            )
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(STAGE)))
        self.conn.commit()

    def keep_keys(self, keys: Sequence[tuple[str, ...]]) -> None:
        """As `keep`, for rows with these keys."""
        with self.conn.cursor() as cur:
            match, params = keys_predicate(self.check, keys, "t", typed=True)
            cur.execute(
                sql.SQL("INSERT INTO {} SELECT * FROM {} AS t WHERE {}").format(
                    sql.Identifier(ROWS), sql.Identifier(STAGE), match
                ),
                params,
            )
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(STAGE)))
        self.conn.commit()

    def clear(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("TRUNCATE {}, {}").format(sql.Identifier(STAGE), sql.Identifier(ROWS))
            )
        self.conn.commit()

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()
            with self.conn.cursor() as cur:
                cur.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}, {}, {}").format(
                        sql.Identifier(STAGE), sql.Identifier(ROWS), sql.Identifier(SUMS)
                    )
                )
            self.conn.commit()


def keys_predicate(
    check: Check, keys: Sequence[tuple[str, ...]], alias: str, typed: bool = False
) -> tuple[sql.Composable, list[Any]]:
    """`(k1, k2) IN (the keys)`, the keys given as text and cast to the key's types."""
    names = check.key
    columns = []
    for c in names:
        column: sql.Composable = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c))
        if typed and stage_type(check.types[c]) != check.types[c]:
            column = sql.SQL("({})::{}").format(column, sql.SQL(check.types[c]))
        columns.append(column)
    unnest = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in names)
    casts = sql.SQL(", ").join(
        sql.SQL("u.{}::{}").format(sql.Identifier(f"k{i}"), sql.SQL(check.types[c]))
        for i, c in enumerate(names)
    )
    alias_list = sql.SQL(", ").join(sql.Identifier(f"k{i}") for i in range(len(names)))
    predicate = sql.SQL("({}) IN (SELECT {} FROM unnest({}) AS u({}))").format(
        sql.SQL(", ").join(columns), casts, unnest, alias_list
    )
    return predicate, [[k[i] for k in keys] for i in range(len(names))]


# -- row by row --------------------------------------------------------------------------------


def compare(
    cur: psycopg.Cursor[Any],
    check: Check,
    regions: Mapping[int, Sequence[int]] | None = None,
    keys: Sequence[tuple[str, ...]] | None = None,
) -> list[Difference]:
    """The staged rows of `ROWS` against the target's rows of the same regions (or keys)."""
    source, where = held(check)
    params: list[Any] = []
    if keys is not None:
        predicate, params = keys_predicate(check, keys, "t")
    else:
        assert regions is not None
        predicate = regions_predicate(record_hash(_hashed(check, check.key), 0), regions)
    ids = sql.Identifier
    names = (*check.key, *check.columns)
    staged = [
        sql.SQL("{} AS {}").format(h.expr, ids(c))
        for c, h in zip(names, _hashed(check, names, typed=True), strict=True)
    ]

    def differs(c: str) -> sql.Composable:
        if check.types[c] in check.hashable:
            return sql.SQL("s.{c} IS DISTINCT FROM t.{c}").format(c=ids(c))
        return sql.SQL("s.{c}::text IS DISTINCT FROM t.{c}::text").format(c=ids(c))

    first = ids(check.key[0])
    join = sql.SQL(" AND ").join(sql.SQL("s.{c} = t.{c}").format(c=ids(c)) for c in check.key)
    flags = [
        sql.SQL("CASE WHEN {} THEN {} END").format(differs(c), sql.Literal(c))
        for c in check.columns
    ]
    any_diff = (
        sql.SQL(" OR ").join(differs(c) for c in check.columns)
        if check.columns
        else sql.SQL("false")
    )
    query = sql.SQL(
        "WITH s AS (SELECT {staged}, _k, _pk, _st FROM {rows} AS t), "
        "tt AS (SELECT {tcols}, t._tunggal_position AS _pos, t._tunggal_ts AS _ts "
        "  FROM {source} WHERE {where} AND {predicate}) "
        "SELECT ARRAY[{keytext}], s.{first} IS NULL, t.{first} IS NULL, "
        "array_remove(ARRAY[{flags}]::text[], NULL), ARRAY[{svals}]::text[], "
        "ARRAY[{tvals}]::text[], t._pos::text, t._ts, s._k, s._pk, s._st "
        "FROM s FULL JOIN tt AS t ON {join} "
        "WHERE s.{first} IS NULL OR t.{first} IS NULL OR {any_diff}"
    ).format(
        staged=sql.SQL(", ").join(staged),
        rows=ids(ROWS),
        tcols=sql.SQL(", ").join(
            sql.SQL("t.{}").format(ids(c)) for c in (*check.key, *check.columns)
        ),
        source=source,
        where=where,
        predicate=predicate,
        keytext=sql.SQL(", ").join(
            sql.SQL("coalesce(s.{c}, t.{c})::text").format(c=ids(c)) for c in check.key
        ),
        first=first,
        flags=sql.SQL(", ").join(flags) if flags else sql.SQL(""),
        svals=sql.SQL(", ").join(sql.SQL("s.{}::text").format(ids(c)) for c in check.columns),
        tvals=sql.SQL(", ").join(sql.SQL("t.{}::text").format(ids(c)) for c in check.columns),
        join=join,
        any_diff=any_diff,
    )
    out = []
    for key, extra, missing, columns, svals, tvals, pos, ts, k, pk, st in cur.execute(
        query, params
    ):
        kind: Kind = "extra" if extra else "missing" if missing else "differing"
        svals = svals or []
        tvals = tvals or []
        out.append(
            Difference(
                kind=kind,
                key=tuple(key),
                columns=tuple(columns or ()) if kind == "differing" else (),
                source={} if extra else dict(zip(check.columns, svals, strict=True)),
                target={} if missing else dict(zip(check.columns, tvals, strict=True)),
                position=None if pos is None else int(pos),
                ts=None if ts is None else int(ts),
                key_json=k,
                pk=None if pk is None else tuple(orjson.loads(pk)),
                source_table=st,
            )
        )
    return out


# -- what the target holds now, for the settle step --------------------------------------------


State = tuple[int | None, str | None, int | None]  # row position, row state, tombstone position


def states(
    cur: psycopg.Cursor[Any], check: Check, rows: Iterable[Difference]
) -> dict[tuple[str, ...], State]:
    """Per key, what the target holds for the check's source now: the row's (or for a table
    several sources write, the source's contribution's) position and state, and the
    tombstone's position; a change applied since shows as a different state."""
    rows = list(rows)
    keys = [r.key for r in rows]
    found: dict[tuple[str, ...], State] = {k: (None, None, None) for k in keys}
    if not keys:
        return found
    predicate, params = keys_predicate(check, keys, "t")
    keytext = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in check.key)
    if check.contributions is not None:
        query = sql.SQL(
            "SELECT ARRAY[{}], t._tunggal_position::text, t._tunggal_state FROM {} AS t "
            "WHERE t._tunggal_source = {} AND {}"
        ).format(keytext, ident(check.contributions), sql.Literal(check.source), predicate)
    else:
        soft = (
            sql.SQL("CASE WHEN t.{} IS NULL THEN 'live' ELSE 'soft' END").format(
                sql.Identifier(check.soft_column)
            )
            if check.soft_column
            else sql.SQL("'live'")
        )
        query = sql.SQL(
            "SELECT ARRAY[{}], t._tunggal_position::text, t._tunggal_source || ':' || {} "
            "FROM {} AS t WHERE {}"
        ).format(keytext, soft, ident(check.target.name), predicate)
    for key, pos, state in cur.execute(query, params):
        found[tuple(key)] = (None if pos is None else int(pos), state, None)
    if check.contributions is None:
        texts = {r.key_json: r.key for r in rows if r.key_json is not None}
        if texts:
            for key_json, pos in cur.execute(
                "SELECT key_json, position::text FROM public.tunggal_tombstones "
                "WHERE target_table = %s AND key_json = ANY(%s)",
                (check.target.name, list(texts)),
            ):
                key = texts[key_json]
                position, state, _ = found[key]
                found[key] = (position, state, int(pos))
    return found
