"""Write collapsed batches into the PostgreSQL target, one transaction per batch.

Every statement is guarded per source, by the same rule as `sink.collapse`: a change applies
only when it is newer than what its own source last wrote (a source's own order is its log
position). Hard deletes leave a tombstone, so replaying any prefix of a source's events is a
no-op. A table written by several sources goes through its contributions (`sink.merge`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
import sqlalchemy as sa
from mypy_extensions import mypyc_attr
from psycopg import sql
from psycopg.pq import TransactionStatus

from tunggal.errors import FatalError, PoisonEventError, TransientError
from tunggal.events.model import UNAVAILABLE, BitString, RawEvent
from tunggal.events.values import duration_text
from tunggal.mapping import BOOKKEEPING_COLUMNS as BOOKKEEPING
from tunggal.mapping import TableInfo, TargetSpec
from tunggal.mapping.dbinfo import contributions_table
from tunggal.mapping.ops import Delete, Truncate, Upsert
from tunggal.sink import epochs
from tunggal.sink.collapse import Pending, Segment, Step
from tunggal.sink.merge import MergeTable, Recomputed, rules_json
from tunggal.sink.schema import introspect, merged_tables, missing_bookkeeping

log = logging.getLogger(__name__)

# PostgreSQL's wire protocol allows at most 65535 parameters per statement.
_MAX_PARAMS = 60_000
_MAX_ROWS_PER_STATEMENT = 1000
# Rows per unnest() statement: one array parameter per column, so only memory limits it.
_UNNEST_ROWS = 5000
# From this many rows of one shape on, upserts go through COPY into a temporary staging table
# and one INSERT ... SELECT. psycopg dumps unnest()'s arrays in Python, element by element; COPY
# formats rows in C. Below it, the extra CREATE/COPY round trips cost more than they save.
_STAGE_ROWS = 200
# The sink analyses tunggal_tombstones itself once this process has added this many tombstones
# since the statistics it last read, and at least as many as those knew of (it doubled).
_TOMBSTONES_ANALYSED_AFTER = 10_000
_TOMBSTONES_GROWTH = 1.0

# Postgres SQLSTATE classes that a retry can fix: connection exceptions, insufficient
# resources, operator intervention (shutdown, failover), serialization failure and deadlock,
# lock not available, and a standby that is read-only during a failover.
_TRANSIENT_SQLSTATES = ("08", "53", "57", "40001", "40P01", "55P03", "25006")
# A privilege or schema problem will not fix itself: stop and tell the operator.
_FATAL_SQLSTATES = ("42501", "42P01", "42703", "42704", "3F000", "28")


def classify(exc: BaseException) -> Exception:
    """Map a driver exception onto our hierarchy: transient, poison (row data) or fatal."""
    if isinstance(exc, (TransientError, PoisonEventError, FatalError)):
        return exc
    state = getattr(exc, "sqlstate", None) or ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and (
        not state or state.startswith(_TRANSIENT_SQLSTATES)
    ):
        return TransientError(f"target database: {message}")
    if state.startswith(_TRANSIENT_SQLSTATES):
        return TransientError(f"target database: {message} (SQLSTATE {state})")
    if state.startswith(_FATAL_SQLSTATES):
        return FatalError(f"target database: {message} (SQLSTATE {state})")
    if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)) or state.startswith(
        ("22", "23")
    ):
        return PoisonEventError(f"target database rejected the row: {message} (SQLSTATE {state})")
    if isinstance(exc, OSError):
        return TransientError(f"target database: {message}")
    return FatalError(f"target database: {message} (SQLSTATE {state or 'none'})")


@dataclass(frozen=True)
class DeadLetter:
    source: str
    error_class: str
    error: str
    raw: RawEvent | None
    source_table: str | None = None
    position: int | None = None


@dataclass
class SourceProgress:
    position: int
    commit_ts_us: int
    events: int = 0
    epoch: int | None = None  # PostgreSQL: the newest snapshot epoch in the batch (see Pipeline)
    # PostgreSQL: the batch holds events the pipeline found no epoch for (`sink.epochs`)
    unplaced: bool = False


@dataclass(frozen=True)
class RequestUpdate:
    """Progress of an incremental snapshot Tunggal asked for (`tunggal_snapshot_requests`),
    from Debezium's notices: committed with the rows they follow."""

    id: str
    source: str
    kind: str  # STARTED, TABLE_SCAN_COMPLETED, COMPLETED, ABORTED
    table: str | None = None
    rows: int | None = None


@dataclass(frozen=True)
class KafkaOffsets:
    """What a batch read from Kafka: (group, topic, partition) -> next offset, and the id of
    each (group, topic) it was read from (None when the client gives none)."""

    offsets: Mapping[tuple[str, str, int], int]
    topic_ids: Mapping[tuple[str, str], str | None]


@dataclass
class BatchResult:
    upserted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    deleted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # (table, column) -> rows this batch changed whose sources disagree on the column
    conflicts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    # Whether the batch sent the target anything. One with nothing to write (a source's
    # heartbeat alone) commits without a round trip, so it says nothing of the target's health.
    reached_target: bool = False

    def add(self, table: str, done: Recomputed) -> None:
        self.upserted[table] += done.upserted
        self.deleted[table] += done.deleted
        for column, n in done.conflicts.items():
            self.conflicts[(table, column)] += n


def _tbl(qualified: str) -> sql.Composable:
    schema, _, table = qualified.partition(".")
    return sql.Identifier(schema, table)


def _newer(v_src: str, v_pos: str, t: str) -> sql.Composable:
    """Does v supersede the row t? Only what v's own source wrote is compared: a table with
    one source holds nothing of another's, but what a source no longer mapped left there."""
    return sql.SQL(
        "({t}._tunggal_source IS DISTINCT FROM {src} OR {t}._tunggal_position < {pos})"
    ).format(t=sql.Identifier(t), src=sql.SQL(v_src), pos=sql.SQL(v_pos))


# A tombstone keeps out what its own source wrote before the delete.
_TOMB_NOT_NEWER = sql.SQL("d.source = v._src AND d.position >= v._pos")


_STAGE_BOOKKEEPING = (("_src", "text"), ("_pos", "numeric"), ("_ts", "bigint"), ("_k", "text"))


def stage_type(ctype: str) -> str:
    """The staging column type for a target column type (see `PostgresSink._stage`)."""
    if ctype == "date" or (ctype.startswith("timestamp") and ctype.endswith("without time zone")):
        return "timestamptz"
    return ctype


def _is_zone_free(ctype: str) -> bool:
    return ctype.startswith("timestamp") and ctype.endswith("without time zone")


def _is_bytea(ctype: str) -> bool:
    return ctype == "bytea"


def _is_bits(ctype: str) -> bool:
    return ctype.startswith("bit")


def _is_time(ctype: str) -> bool:
    return ctype.startswith("time") and ctype.endswith("without time zone") and "stamp" not in ctype


def _needs_care(ctype: str) -> bool:
    return _is_zone_free(ctype) or _is_bytea(ctype) or _is_bits(ctype) or _is_time(ctype)


def _in_source_zone(value: Any) -> bool:
    """A zone-less source value read in its source's `timezone:` (`values.in_zone`)."""
    return value.__class__ is datetime and isinstance(value.tzinfo, ZoneInfo)


def _wall_clock(value: Any) -> Any:
    return value.replace(tzinfo=None) if _in_source_zone(value) else value


_FIXABLE = frozenset((BitString, bool, timedelta))


def _needs_fixing(value: Any) -> bool:
    kind = value.__class__
    return kind in _FIXABLE or _in_source_zone(value)


_DAY = timedelta(days=1)


def _fixed(value: Any, ctype: str) -> Any:
    """`value` as its target column of type `ctype` needs it (see `PostgresSink._fix_values`)."""
    if value.__class__ is BitString and _is_bytea(ctype):
        return value.to_bytes()
    if value.__class__ is timedelta and _is_time(ctype):
        # A duration (MySQL TIME) into `time`: PostgreSQL's interval-to-time cast would wrap it
        # around the clock (-00:00:01 -> 23:59:59). A time of day only when it is one; else its
        # hours as text, which PostgreSQL refuses, so the row is dead-lettered.
        if timedelta(0) <= value < _DAY:
            return (datetime.min + value).time()
        return duration_text(value // timedelta(microseconds=1))
    if value.__class__ is bool:  # BIT(1) arrives as a boolean; PostgreSQL has no such cast
        if _is_bytea(ctype):
            return b"\x01" if value else b"\x00"
        if _is_bits(ctype):
            return "1" if value else "0"
    if _is_zone_free(ctype):
        return _wall_clock(value)
    return value


def _key_fixed(key: tuple[Any, ...], types: Mapping[int, str]) -> tuple[Any, ...]:
    if not types:
        return key
    return tuple(_fixed(v, types[i]) if i in types else v for i, v in enumerate(key))


def _tables_of(steps: Sequence[Step]) -> set[str]:
    tables: set[str] = set()
    for step in steps:
        if isinstance(step, Truncate):
            tables.add(step.table)
        else:
            tables.update(table for table, _, _ in step.rows)
    return tables


def _without(rows: list[Upsert], column: str) -> list[Upsert]:
    """The upserts without `column` (a merged table computes its soft-delete column)."""
    if not any(column in r.values for r in rows):
        return rows
    return [
        Upsert(
            r.table,
            r.key,
            {c: v for c, v in r.values.items() if c != column},
            r.source,
            r.position,
            r.commit_ts_us,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class _Care:
    """A target table's columns whose values may need fixing before they are written (see
    `_fixed`): by name, and by position in the key."""

    columns: Mapping[str, str]
    in_key: Mapping[int, str]


def key_json(key: Sequence[Any]) -> str:
    # orjson writes a tuple as an array: no list copy per row (tuple() of a tuple is itself).
    return orjson.dumps(tuple(key), default=str).decode()


# Compiled (tunggal.native), a class is closed to subclasses that are not compiled unless it
# says so: the dead-letter replay's sink (dlq/replay.py) is one.
@mypyc_attr(allow_interpreted_subclasses=True)
class PostgresSink:
    def __init__(
        self,
        dsn: str,
        targets: Mapping[str, TargetSpec],
        *,
        connect_timeout_s: float = 10,
        mapping_hash: str = "",
    ) -> None:
        url = dsn.replace("postgresql://", "postgresql+psycopg://", 1).replace(
            "postgres://", "postgresql+psycopg://", 1
        )
        self.engine = sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=0,
            connect_args={"connect_timeout": int(connect_timeout_s), "options": "-c TimeZone=UTC"},
        )
        self.targets = dict(targets)
        self.mapping_hash = mapping_hash
        self.tables: dict[str, TableInfo] = {}
        self._said_no_topic_ids = False
        self._conn: psycopg.Connection[Any] | None = None
        self._dbapi: Any = None
        self._statements: dict[tuple[Any, ...], bytes] = {}
        # Per target table, its columns whose values may need fixing (see `_care`).
        self._cares: dict[str, _Care] = {}
        # Staging tables filled in the current transaction: a second use must empty them first.
        self._staged: set[str] = set()
        # Temporary tables of the session, and those created by the current transaction (gone
        # if it rolls back). Each CREATE is a round trip, and a round trip costs the writer
        # thread a wait for the GIL while the loop decodes the next batch.
        self._temp_tables: set[str] = set()
        self._temp_created: set[str] = set()
        # Target tables written through contributions, and those whose rows the current
        # transaction must recompute.
        self.merged: dict[str, MergeTable] = {}
        self._touched: set[str] = set()
        # Per merged table, the rules its rows were last recomputed with by this process.
        self._merge_applied: dict[str, str] = {}
        self._merges_prepared = False
        # Tombstones this process wrote since it last analysed the table (or read that its
        # statistics knew of `_tombstones_known` rows); those of the open transaction apart.
        self._tombstones_added = 0
        self._tombstones_in_transaction = 0
        self._tombstones_known: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def introspect(self) -> dict[str, TableInfo]:
        self._statements.clear()
        self._cares.clear()
        try:
            self.tables = introspect(self.engine)
        except sa.exc.DBAPIError as exc:
            raise classify(exc.orig or exc) from exc
        except psycopg.Error as failed:  # a name of its own: mypyc types one per function
            raise classify(failed) from failed
        return self.tables

    def check_ready(self) -> None:
        """Refuse to run while a target table cannot hold bookkeeping; say how to fix it.
        Then bring the tables written by several sources up to their current rules."""
        reasons = missing_bookkeeping(self.targets, self.introspect())
        if reasons:
            raise FatalError(
                "the target database is not ready:\n  - "
                + "\n  - ".join(reasons)
                + "\nrun `tunggal schema --apply --config <tunggal.yaml>` to add them"
            )
        self.prepare_merges()

    def set_targets(self, targets: Mapping[str, TargetSpec], mapping_hash: str) -> None:
        """Use new mappings from the next batch on (the caller introspected the target). The
        tables written by several sources are recomputed first if their rules changed."""
        before = (self.targets, self.mapping_hash, self.merged, dict(self._merge_applied))
        self.targets = dict(targets)
        self.mapping_hash = mapping_hash
        self._statements.clear()
        self._cares.clear()
        try:
            self.prepare_merges()
        except BaseException:
            # Still on the old mappings. A table already recomputed under the new rules is
            # recomputed again by the next reload: `_merge_applied` says what the old used.
            self.targets, self.mapping_hash, self.merged, self._merge_applied = before
            self._statements.clear()
            self._cares.clear()
            raise

    # -- tables written by several sources -----------------------------------------------------
    def prepare_merges(self) -> None:
        """Recompute every merged table whose rules (or writers) changed, from its
        contributions, and fill the contributions of a table that has none yet from its rows.

        One transaction per table. The stored signature tells whether another process (or an
        earlier run) already recomputed a table with these rules; `_merge_applied` tells
        whether this process's own earlier batches used other rules (a reload), in which case
        it recomputes again, so that every Kafka instance's batches end up under the new rules.
        """
        before = set(self.merged)
        self.merged = {
            name: MergeTable(self.targets[name], self.tables[name].columns)
            for name in sorted(merged_tables(self.targets, self.tables))
            if name in self.tables
        }
        if not self.merged:
            self._merges_prepared = True
            return
        conn = self._connection()
        try:
            stored = dict(
                conn.execute(
                    "SELECT target_table, signature FROM public.tunggal_merge_state"
                ).fetchall()
            )
            conn.commit()
            for name, table in self.merged.items():
                signature = table.rules.signature()
                # A table this process wrote directly until now: its rows are newer than its
                # contributions (a second source was just added), so they are read back first.
                # So are the rows of a table whose contributions table is new or was emptied.
                switched = self._merges_prepared and name not in before
                seed = stored.get(name) is None or switched or self._no_contributions(table)
                applied = self._merge_applied.get(name, signature)
                if seed or stored.get(name) != signature or applied != signature:
                    self._recompute_all(conn, table, seed=seed)
                self._merge_applied[name] = signature
        except BaseException as exc:
            self._ended(committed=False)
            with contextlib.suppress(Exception):
                conn.rollback()
            if isinstance(exc, Exception):
                mapped = classify(exc)
                if isinstance(mapped, TransientError):
                    self.reset()
                if mapped is not exc:
                    raise mapped from exc
            raise
        self._merges_prepared = True

    def _no_contributions(self, table: MergeTable) -> bool:
        conn = self._connection()
        row = conn.execute(
            sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(_tbl(table.contributions))
        ).fetchone()
        conn.commit()
        return bool(row and row[0])

    def _recompute_all(
        self, conn: psycopg.Connection[Any], table: MergeTable, *, seed: bool
    ) -> None:
        started = time.perf_counter()
        with conn.cursor() as cur:
            self._create_temp(cur, table.touched, table.create_touched)
            cur.execute(table.lock())
            seeded = 0
            if seed:
                for statement in table.seed():
                    cur.execute(statement)
                    seeded += max(cur.rowcount, 0)
                cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table.touched)))
            cur.execute(table.touch_all())
            row = cur.execute(table.recompute()).fetchone()
            assert row is not None
            done = table.recomputed(row)
            cur.execute(
                "INSERT INTO public.tunggal_merge_state AS s (target_table, signature, rules, "
                "updated_at) VALUES (%s, %s, %s::jsonb, now()) ON CONFLICT (target_table) DO "
                "UPDATE SET signature = EXCLUDED.signature, rules = EXCLUDED.rules, "
                "updated_at = now()",
                (table.name, table.rules.signature(), rules_json(table.rules)),
            )
        conn.commit()
        self._ended(committed=True)
        log.info(
            "%s: rows recomputed from the contributions of %s under its current merge rules "
            "(%d upserted, %d deleted%s) in %.1fs",
            table.name,
            ", ".join(table.rules.sources),
            done.upserted,
            done.deleted,
            f"; {seeded} contributions read from rows written before" if seed else "",
            time.perf_counter() - started,
        )

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._dbapi = self.engine.raw_connection()
            except sa.exc.DBAPIError as exc:
                raise classify(exc.orig or exc) from exc
            except psycopg.Error as failed:  # a name of its own: mypyc
                # The pool hands back the driver's error unwrapped when connecting fails.
                raise classify(failed) from failed
            self._conn = self._dbapi.driver_connection
            assert self._conn is not None
            self._conn.autocommit = False
            self._temp_tables.clear()
        return self._conn

    def _create_temp(
        self, cur: psycopg.Cursor[Any], name: str, build: Callable[[], sql.Composable]
    ) -> None:
        """Create a session temp table once (outside any savepoint: one rolled back drops it)."""
        if name in self._temp_tables or name in self._temp_created:
            return
        cur.execute(self._statement(("temp", name), build))
        self._temp_created.add(name)

    def _ended(self, committed: bool) -> None:
        if committed:
            self._temp_tables |= self._temp_created
            self._tombstones_added += self._tombstones_in_transaction
        self._tombstones_in_transaction = 0
        self._temp_created.clear()

    def reset(self) -> None:
        """Drop the connection after a failure; the next batch reconnects."""
        if self._dbapi is not None:
            with contextlib.suppress(Exception):
                self._dbapi.invalidate()
        self._conn = None
        self._dbapi = None

    def close(self) -> None:
        if self._dbapi is not None:
            with contextlib.suppress(Exception):
                self._dbapi.close()
        self._conn = None
        self._dbapi = None
        self.engine.dispose()

    @contextlib.contextmanager
    def cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor for reading (the admin commands); whatever it did is rolled back."""
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise classify(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()

    def forget(self, table: str, source: str, *, apply: bool) -> int:
        """What `source` wrote in `table` (a table it no longer writes): its rows, tombstones
        and truncate watermarks, or its contributions; how many rows that is, deleted only
        with `apply`. Call after `introspect`."""
        contributions = contributions_table(table)
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                if contributions in self.tables:
                    # Its contributions no longer count (`sink.merge`): dropping them leaves the
                    # rows as they are.
                    statements = [
                        sql.SQL("DELETE FROM {} WHERE _tunggal_source = %s").format(
                            _tbl(contributions)
                        )
                    ]
                else:
                    statements = [
                        sql.SQL("DELETE FROM {} WHERE _tunggal_source = %s").format(_tbl(table))
                    ]
                count = (
                    statements[0].as_string(conn).replace("DELETE FROM", "SELECT count(*) FROM", 1)
                )
                row = cur.execute(count, (source,)).fetchone()
                found = int(row[0]) if row else 0
                if apply:
                    for statement in statements:
                        cur.execute(statement, (source,))
                    for own in ("tunggal_tombstones", "tunggal_truncations"):
                        cur.execute(
                            sql.SQL(
                                "DELETE FROM {} WHERE target_table = %s AND source = %s"
                            ).format(sql.Identifier("public", own)),
                            (table, source),
                        )
            if apply:
                conn.commit()
            else:
                conn.rollback()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            if isinstance(exc, psycopg.Error):
                raise classify(exc) from exc
            raise
        return found

    def count_dead_letters(self) -> int:
        """The dead letters the target holds; raises TunggalError (classified) when it cannot
        be read, so the caller can tell an unreachable target (TransientError)."""
        try:
            with self.engine.connect() as conn:
                return int(
                    conn.exec_driver_sql(
                        "SELECT count(*) FROM public.tunggal_dead_letters"
                    ).scalar_one()
                )
        except sa.exc.DBAPIError as exc:
            raise classify(exc.orig or exc) from exc

    def remove_unchanged(
        self, table: str, source: str, rows: Sequence[tuple[Sequence[str], int]], *, soft: bool
    ) -> int:
        """`tunggal verify --repair` of rows the target holds and `source` does not: remove
        (or soft-delete) each row (key values as text, position) only while its source and
        position are still the ones observed, so that a change streaming in meanwhile is
        never lost. A hard delete leaves a tombstone at that position, so that a replay of
        older events cannot bring the row back. For a table with one source; rows removed."""
        if not rows:
            return 0
        key = self._spec(table).key
        values = sql.SQL("unnest({}, %s::numeric[]) AS v({}, _pos)").format(
            sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in key),
            sql.SQL(", ").join(sql.Identifier(f"k{i}") for i in range(len(key))),
        )
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{} = v.{}::{}").format(
                sql.Identifier(c), sql.Identifier(f"k{i}"), sql.SQL(self._type(table, c))
            )
            for i, c in enumerate(key)
        )
        returning = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in key)
        parts = {
            "tbl": _tbl(table),
            "values": values,
            "match": match,
            "src": sql.Literal(source),
            "returning": returning,
        }
        if soft:
            statement = sql.SQL(
                "UPDATE {tbl} AS t SET {soft} = now() FROM {values} WHERE {match} "
                "AND t._tunggal_source = {src} AND t._tunggal_position = v._pos "
                "AND t.{soft} IS NULL RETURNING {returning}, t._tunggal_position, t._tunggal_ts"
            ).format(
                soft=sql.Identifier(self._spec(table).soft_delete_column or "deleted_at"),
                **parts,
            )
        else:
            statement = sql.SQL(
                "DELETE FROM {tbl} AS t USING {values} WHERE {match} "
                "AND t._tunggal_source = {src} AND t._tunggal_position = v._pos "
                "RETURNING {returning}, t._tunggal_position, t._tunggal_ts"
            ).format(**parts)
        params: list[Any] = [[k[i] for k, _ in rows] for i in range(len(key))]
        params.append([p for _, p in rows])
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                done = cur.execute(statement, params).fetchall()
                if not soft:
                    n = len(key)
                    gone = [
                        Delete(table, tuple(r[:n]), source, int(r[n]), int(r[n + 1]), False)
                        for r in done
                    ]
                    self._tombstones(cur, table, gone)
            conn.commit()
            self._ended(committed=True)
        except BaseException as exc:
            self._ended(committed=False)
            with contextlib.suppress(Exception):
                conn.rollback()
            if isinstance(exc, Exception):
                raise classify(exc) from exc
            raise
        return len(done)

    def recompute_rows(self, table: str, keys: Sequence[Sequence[str]]) -> Recomputed:
        """`tunggal verify --repair` of rows of a table several sources write that differ from
        what its contributions give (edited by hand): recompute them, as after a batch."""
        merged = self.merged[table]
        conn = self._connection()
        result = BatchResult()
        try:
            with conn.cursor() as cur:
                self._touched.clear()
                self._touch(cur, merged)
                cur.execute(
                    sql.SQL("INSERT INTO {} SELECT {} FROM unnest({}) AS u({})").format(
                        sql.Identifier(merged.touched),
                        sql.SQL(", ").join(
                            sql.SQL("u.{}::{}").format(sql.Identifier(f"k{i}"), sql.SQL(ctype))
                            for i, ctype in enumerate(self._type(table, k) for k in merged.key)
                        ),
                        sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in merged.key),
                        sql.SQL(", ").join(sql.Identifier(f"k{i}") for i in range(len(merged.key))),
                    ),
                    [[k[i] for k in keys] for i in range(len(merged.key))],
                )
                self._recompute_touched(cur, result)
            conn.commit()
            self._ended(committed=True)
        except BaseException as exc:
            self._ended(committed=False)
            with contextlib.suppress(Exception):
                conn.rollback()
            if isinstance(exc, Exception):
                raise classify(exc) from exc
            raise
        return Recomputed(upserted=result.upserted[table], deleted=result.deleted[table])

    # -- writing ------------------------------------------------------------------------
    def write(
        self,
        steps: Sequence[Step],
        progress: Mapping[str, SourceProgress],
        dead_letters: Sequence[DeadLetter],
        offsets: Mapping[tuple[str, str, int], int] | None = None,
        requests: Sequence[RequestUpdate] = (),
        topic_ids: Mapping[tuple[str, str], str | None] | None = None,
    ) -> BatchResult:
        """Apply one batch atomically, with the Kafka offsets it came from (if any, with the
        ids of their topics) and the progress of incremental snapshots it saw. Rows the
        database rejects are isolated and dead-lettered."""
        kafka = KafkaOffsets(offsets or {}, topic_ids or {})
        try:
            return self._write(steps, progress, dead_letters, kafka, requests, isolate=False)
        except PoisonEventError:
            # One row's data broke the batch; apply row by row so the good rows land.
            log.warning("a row in the batch was rejected; retrying row by row to isolate it")
            return self._write(steps, progress, dead_letters, kafka, requests, isolate=True)

    def _write(
        self,
        steps: Sequence[Step],
        progress: Mapping[str, SourceProgress],
        dead_letters: Sequence[DeadLetter],
        offsets: KafkaOffsets,
        requests: Sequence[RequestUpdate],
        *,
        isolate: bool,
    ) -> BatchResult:
        conn = self._connection()
        result = BatchResult()
        self._staged.clear()
        self._touched.clear()
        try:
            with conn.cursor() as cur:
                placed = epochs.settle(cur, progress, self._position_tables())
                steps = epochs.place(steps, placed)
                # Outside any savepoint: a temp table created in one that rolls back is gone.
                if self.merged:
                    for name in sorted(_tables_of(steps) & self.merged.keys()):
                        self._touch(cur, self.merged[name])
                for step in steps:
                    if isinstance(step, Truncate):
                        self._truncate(cur, step, result)
                    elif isolate:
                        self._segment_isolated(conn, cur, step, result)
                    else:
                        self._segment(cur, step, result)
                self._recompute_touched(cur, result, isolate=isolate)
                self._dead_letters(cur, [*dead_letters, *result.dead_letters])
                self._progress(cur, progress)
                self._kafka_offsets(cur, offsets)
                self._requests(cur, requests)
            result.reached_target = conn.info.transaction_status != TransactionStatus.IDLE
            conn.commit()
            self._ended(committed=True)
        except BaseException as exc:
            self._ended(committed=False)
            try:
                conn.rollback()
            except Exception:
                self.reset()
            if isinstance(exc, Exception):
                mapped = classify(exc)
                if isinstance(mapped, TransientError):
                    self.reset()
                if mapped is exc:
                    raise
                raise mapped from exc
            raise
        self._analyse_tombstones(conn)
        return result

    def _analyse_tombstones(self, conn: psycopg.Connection[Any]) -> None:
        """ANALYZE tunggal_tombstones after the batches that doubled it.

        The guarded upsert's `NOT EXISTS` on it is planned from its statistics. A mass delete in
        a source adds tombstones faster than autovacuum analyses them (a minute at best, never
        where it is off). Planned as if the table were still small, every batch's upsert then
        hashes all of the table's tombstones: with a million unanalysed, 915 ms per 5,000 rows
        against 50 ms analysed (a nested loop over its index). Between analyses PostgreSQL
        scales the row counts it knows by the table's size, so what goes stale is the share
        of each target table, and once per doubling keeps that within a factor of two: about
        three ANALYZEs per tenfold growth, each a sample of at most 30,000 rows.
        The batch is committed already: a failure here only leaves the statistics to
        autovacuum, and so does a role that does not own the table (PostgreSQL skips it)."""
        if self._tombstones_added < _TOMBSTONES_ANALYSED_AFTER:
            return
        try:
            if self._tombstones_known is None:
                self._tombstones_known = self._tombstone_statistics(conn)
            if self._tombstones_added < _TOMBSTONES_GROWTH * self._tombstones_known:
                return
            started = time.perf_counter()
            # Never waits long behind another ANALYZE of it (a second instance, autovacuum).
            conn.execute("SET LOCAL lock_timeout = '2s'")
            conn.execute("ANALYZE public.tunggal_tombstones")
            self._tombstones_known = self._tombstone_statistics(conn)
            log.debug(
                "analysed tunggal_tombstones after %d new tombstones: %.0f rows, %.3fs",
                self._tombstones_added,
                self._tombstones_known,
                time.perf_counter() - started,
            )
        except psycopg.Error as exc:
            log.debug("could not analyse tunggal_tombstones: %s", exc)
            with contextlib.suppress(Exception):
                conn.rollback()
            self._tombstones_known = None  # read again before the next attempt
        self._tombstones_added = 0

    def _tombstone_statistics(self, conn: psycopg.Connection[Any]) -> float:
        """The rows the statistics of tunggal_tombstones know of (0 before any ANALYZE)."""
        row = conn.execute(
            "SELECT greatest(reltuples, 0) FROM pg_class "
            "WHERE oid = 'public.tunggal_tombstones'::regclass"
        ).fetchone()
        conn.commit()
        return float(row[0]) if row is not None else 0.0

    def _position_tables(self) -> list[str]:
        """Where rows keep their source position: the target table, or its contributions."""
        return [
            self.merged[name].contributions if name in self.merged else name
            for name in self.targets
        ]

    def _segment(self, cur: psycopg.Cursor[Any], segment: Segment, result: BatchResult) -> None:
        upserts: dict[str, list[Upsert]] = defaultdict(list)
        deletes: dict[str, list[Delete]] = defaultdict(list)
        for pending in segment.rows.values():
            op = pending.op
            if isinstance(op, Upsert):
                upserts[op.table].append(op)
            else:
                deletes[op.table].append(op)
        for table, deleted in deletes.items():
            self._deletes(cur, table, deleted, result)
        for table, upserted in upserts.items():
            merged = self.merged.get(table)
            if merged is not None and merged.rules.soft_delete_column is not None:
                upserted = _without(upserted, merged.rules.soft_delete_column)
            self._upserts(cur, table, upserted, result)

    def _touch(self, cur: psycopg.Cursor[Any], table: MergeTable) -> None:
        """Ready the table's list of touched keys for this transaction."""
        self._create_temp(cur, table.touched, table.create_touched)
        self._touched.add(table.name)

    def _recompute_touched(
        self, cur: psycopg.Cursor[Any], result: BatchResult, *, isolate: bool = False
    ) -> None:
        """The visible rows of every merged table this transaction touched, recomputed from
        their contributions. Tables in name order, so two writers lock them alike.

        The lock is its own statement, so that the recompute's snapshot is taken after it is
        granted; the two go in one pipeline, one round trip.
        """
        for name in sorted(self._touched):
            table = self.merged[name]
            signature = self._merge_applied[name]
            with cur.connection.pipeline():
                cur.execute(self._statement(("lock", name), table.lock))
                cur.execute(self._statement(("recompute", name), table.recompute, signature))
                row = cur.fetchone()
            assert row is not None
            result.add(name, table.recomputed(row))
            if isolate:  # the next row's recompute must not do this one's again
                cur.execute(
                    self._statement(
                        ("untouch", name),
                        lambda t=table: sql.SQL("DELETE FROM {}").format(sql.Identifier(t.touched)),
                    )
                )

    def _segment_isolated(
        self,
        conn: psycopg.Connection[Any],
        cur: psycopg.Cursor[Any],
        segment: Segment,
        result: BatchResult,
    ) -> None:
        for pending in segment.rows.values():
            one = Segment(rows={(pending.op.table, pending.op.key, pending.op.source): pending})
            try:
                with conn.transaction():
                    self._segment(cur, one, result)
                    # A merged row is built from every source: recompute it here, so that a
                    # row the target refuses is set aside with the change that made it.
                    if pending.op.table in self.merged:
                        self._recompute_touched(cur, result, isolate=True)
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                self._reject(pending, exc, result)

    def _reject(self, pending: Pending, exc: Exception, result: BatchResult) -> None:
        op = pending.op
        message = f"{op.table} key {list(op.key)}: {classify(exc)}"
        log.error("dead-lettering %d event(s): %s", len(pending.raws), message)
        for raw in pending.raws:
            result.dead_letters.append(
                DeadLetter(
                    source=op.source,
                    error_class="PoisonEventError",
                    error=message,
                    raw=raw,
                    source_table=None,
                    position=op.position,
                )
            )

    def _types(self, table: str) -> Mapping[str, str]:
        info = self.tables.get(table)
        if info is None:
            raise FatalError(f"target table {table} does not exist; run `tunggal schema --apply`")
        return info.columns

    def _spec(self, table: str) -> TargetSpec:
        spec = self.targets.get(table)
        if spec is None:
            raise FatalError(f"no mapping declares target table {table}")
        return spec

    def _type(self, table: str, column: str) -> str:
        ctype = self._types(table).get(column)
        if ctype is None:
            raise FatalError(
                f"target table {table} has no column {column}; "
                f"fix the mapping or run `tunggal schema --apply`"
            )
        return ctype

    def _cast(self, table: str, column: str) -> sql.Composable:
        return sql.SQL("%s::{}").format(sql.SQL(self._type(table, column)))

    def _care(self, table: str) -> _Care:
        """The columns of `table` whose values may need fixing, worked out once per
        introspection or mapping change rather than per batch."""
        care = self._cares.get(table)
        if care is None:
            columns = {c: t for c, t in self._types(table).items() if _needs_care(t)}
            in_key = {i: columns[c] for i, c in enumerate(self._spec(table).key) if c in columns}
            care = self._cares[table] = _Care(columns, in_key)
        return care

    def _fix_values(self, table: str, rows: list[Upsert]) -> list[Upsert]:
        """Values the decoder made without knowing their target column's type (the source column
        also feeds a column of another type, or a computed one):
        - a zone-less source value read as an instant in the source's zone, into a `timestamp`
          column, is written as the wall clock the source holds, not as its UTC time;
        - a bit string into a `bytea` column is written as the bits' bytes, not ASCII digits;
        - a BIT(1) boolean into a bit or bytea column as its bit;
        - a duration into a `time` column only when it is a time of day, else refused."""
        care = self._care(table)
        columns = care.columns
        if not columns:
            return rows
        out = rows
        for index, row in enumerate(rows):
            values = row.values
            # Inlined `_needs_fixing`: this runs for every row of a table with a timestamp,
            # time, bit or bytea column, and almost never finds anything.
            for c in columns:
                value: Any = values.get(c)
                kind = value.__class__
                if kind in _FIXABLE or (kind is datetime and isinstance(value.tzinfo, ZoneInfo)):
                    break
            else:
                continue
            if out is rows:
                out = list(rows)
            fixed = dict(values)
            for c, ctype in columns.items():
                if c in fixed:
                    fixed[c] = _fixed(fixed[c], ctype)
            # The key too: tombstones and deletes compare it as the delete spells it.
            out[index] = replace(row, values=fixed, key=_key_fixed(row.key, care.in_key))
        return out

    def _upserts(
        self, cur: psycopg.Cursor[Any], table: str, rows: list[Upsert], result: BatchResult
    ) -> None:
        rows = self._fix_values(table, rows)
        # Rows whose unchanged-TOAST columns differ need different UPDATE lists.
        groups: dict[tuple[tuple[str, ...], frozenset[str]], list[Upsert]] = defaultdict(list)
        for row in rows:
            cols = tuple(row.values)
            missing = frozenset(c for c, v in row.values.items() if v is UNAVAILABLE)
            groups[(cols, missing)].append(row)
        spec = self._spec(table)
        for (cols, missing), group in groups.items():
            # unnest() flattens multi-dimensional arrays, so array columns need row-wise VALUES.
            columnar = not any(self._types(table).get(c, "").endswith("]") for c in cols)
            if columnar and len(group) >= _STAGE_ROWS:
                self._upsert_staged(cur, table, cols, missing, group, spec, result)
                continue
            chunk = (
                _UNNEST_ROWS
                if columnar
                else max(1, min(_MAX_ROWS_PER_STATEMENT, _MAX_PARAMS // (len(cols) + 4)))
            )
            for start in range(0, len(group), chunk):
                part = group[start : start + chunk]
                n = 0 if columnar else len(part)
                statement = self._statement(
                    ("upsert", table, cols, missing, n),
                    self._upsert_sql,
                    table,
                    cols,
                    missing,
                    n,
                    spec,
                )
                params: list[Any]
                if columnar:
                    params = [
                        [None if r.values[c] is UNAVAILABLE else r.values[c] for r in part]
                        for c in cols
                    ]
                    params += [
                        [r.source for r in part],
                        [r.position for r in part],
                        [r.commit_ts_us for r in part],
                        [key_json(r.key) for r in part],
                    ]
                else:
                    params = []
                    for r in part:
                        params.extend(
                            None if r.values[c] is UNAVAILABLE else r.values[c] for c in cols
                        )
                        params.extend((r.source, r.position, r.commit_ts_us, key_json(r.key)))
                # Binary arrays: no text escaping of every element on either side.
                cur.execute(statement, params, binary=columnar)
                if table not in self.merged:  # else counted when the rows are recomputed
                    result.upserted[table] += cur.rowcount if cur.rowcount > 0 else 0

    def _upsert_staged(
        self,
        cur: psycopg.Cursor[Any],
        table: str,
        cols: tuple[str, ...],
        missing: frozenset[str],
        rows: list[Upsert],
        spec: TargetSpec,
        result: BatchResult,
    ) -> None:
        """COPY the rows into a temporary table, then the same guarded upsert reads from it."""
        stage = self._stage(cur, table, cols)
        if stage in self._staged:
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(stage)))
        self._staged.add(stage)
        names = sql.SQL(", ").join(
            [*map(sql.Identifier, cols), *map(sql.Identifier, ("_src", "_pos", "_ts", "_k"))]
        )
        copy_sql = self._statement(
            ("copy", stage, cols),
            lambda: sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(stage), names),
        )
        with cur.copy(copy_sql) as copy:
            write = copy.write_row
            if missing:
                for r in rows:
                    values = r.values
                    write(
                        (
                            *[None if values[c] is UNAVAILABLE else values[c] for c in cols],
                            r.source,
                            r.position,
                            r.commit_ts_us,
                            key_json(r.key),
                        )
                    )
            else:
                # Every row of the group has exactly `cols`, in that order (the group's key is
                # tuple(values)) and none is UNAVAILABLE: the values go as they are.
                for r in rows:
                    write(
                        (*r.values.values(), r.source, r.position, r.commit_ts_us, key_json(r.key))
                    )
        statement = self._statement(
            ("upsert-staged", table, cols, missing),
            self._upsert_sql,
            table,
            cols,
            missing,
            -1,
            spec,
            stage,
        )
        cur.execute(statement)
        if table not in self.merged:
            result.upserted[table] += cur.rowcount if cur.rowcount > 0 else 0

    def _stage(self, cur: psycopg.Cursor[Any], table: str, cols: tuple[str, ...]) -> str:
        """The session's staging table for rows of this shape, created on first use.

        Its timestamp and date columns are timestamptz, cast in the INSERT ... SELECT: COPY's
        text form of an aware datetime would otherwise lose its offset in a timestamp column,
        where the unnest() path converts it to UTC.
        """
        types = [stage_type(self._type(table, c)) for c in cols]
        # The types are in the name: after `tunggal schema --apply` changes a column, the
        # session's old staging table must not convert values to the old type.
        digest = hashlib.blake2b(repr((table, cols, types)).encode(), digest_size=8).hexdigest()
        stage = f"tunggal_stage_{digest}"
        columns: list[sql.Composable] = [
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
            for c, t in zip(cols, types, strict=True)
        ]
        columns += [sql.SQL(f"{c} {t}") for c, t in _STAGE_BOOKKEEPING]
        self._create_temp(
            cur,
            stage,
            lambda: sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
                sql.Identifier(stage), sql.SQL(", ").join(columns)
            ),
        )
        return stage

    def _statement(
        self, key: tuple[Any, ...], build: Callable[..., sql.Composable], *args: Any
    ) -> bytes:
        """SQL text built once per shape: composing and parsing it per batch costs more than
        the database's work for a small batch, and identical text lets psycopg prepare it."""
        text = self._statements.get(key)
        if text is None:
            text = self._statements[key] = build(*args).as_bytes(self._connection())
        return text

    def _upsert_sql(
        self,
        table: str,
        cols: tuple[str, ...],
        missing: frozenset[str],
        n: int,
        spec: TargetSpec,
        stage: str = "",
    ) -> sql.Composed:
        """n == 0: one array parameter per column, unnest()ed; n < 0: the staging table `stage`;
        else n rows of VALUES."""
        soft, key = spec.soft_delete_column, spec.key
        bookkeeping = ["text", "numeric", "bigint", "text"]
        alias = sql.SQL(", ").join(
            [
                *map(sql.Identifier, cols),
                sql.SQL("_src"),
                sql.SQL("_pos"),
                sql.SQL("_ts"),
                sql.SQL("_k"),
            ]
        )
        if n < 0:
            values = sql.SQL("(SELECT {} FROM {})").format(
                sql.SQL(", ").join(
                    [
                        *(
                            sql.SQL("{}::{}").format(sql.Identifier(c), sql.SQL(ctype))
                            if stage_type(ctype := self._type(table, c)) != ctype
                            else sql.Identifier(c)
                            for c in cols
                        ),
                        *(sql.Identifier(c) for c, _ in _STAGE_BOOKKEEPING),
                    ]
                ),
                sql.Identifier(stage),
            )
        elif n == 0:
            arrays: list[sql.Composable] = [
                sql.SQL("%s::{}[]").format(sql.SQL(self._type(table, c))) for c in cols
            ]
            arrays += [sql.SQL(f"%s::{t}[]") for t in bookkeeping]
            values = sql.SQL("unnest({})").format(sql.SQL(", ").join(arrays))
        else:
            one = sql.SQL("({})").format(
                sql.SQL(", ").join(
                    [self._cast(table, c) for c in cols]
                    + [sql.SQL(f"%s::{t}") for t in bookkeeping]
                )
            )
            values = sql.SQL("(VALUES {})").format(sql.SQL(", ").join([one] * n))
        merged = self.merged.get(table)
        if merged is not None:
            return merged.upsert(cols, missing, values, alias)
        all_cols = [*cols, *BOOKKEEPING]
        insert_cols = list(map(sql.Identifier, all_cols))
        select_cols = [sql.SQL("v.{}").format(sql.Identifier(c)) for c in cols] + [
            sql.SQL("v._src"),
            sql.SQL("v._pos"),
            sql.SQL("v._ts"),
        ]
        updates = [
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
            for c in all_cols
            if c not in missing and c not in key
        ]
        if soft and soft not in cols:
            # A newer upsert brings a soft-deleted row back to life.
            insert_cols.append(sql.Identifier(soft))
            select_cols.append(sql.SQL("NULL"))
            updates.append(sql.SQL("{c} = NULL").format(c=sql.Identifier(soft)))
        return sql.SQL(
            "INSERT INTO {tbl} AS t ({insert_cols}) "
            "SELECT {select_cols} FROM {values} AS v({alias}) "
            "WHERE NOT EXISTS (SELECT 1 FROM public.tunggal_tombstones d "
            "  WHERE d.target_table = {name} AND d.key_json = v._k AND {tomb_not_newer}) "
            # Strictly older than the watermark: a completed snapshot leaves one at its own
            # position, and its rows from other Kafka partitions may still arrive after it.
            "AND NOT EXISTS (SELECT 1 FROM public.tunggal_truncations r "
            "  WHERE r.target_table = {name} AND r.source = v._src AND r.position > v._pos) "
            "ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE {newer}"
        ).format(
            tbl=_tbl(table),
            insert_cols=sql.SQL(", ").join(insert_cols),
            select_cols=sql.SQL(", ").join(select_cols),
            values=values,
            alias=alias,
            name=sql.Literal(table),
            tomb_not_newer=_TOMB_NOT_NEWER,
            key=sql.SQL(", ").join(map(sql.Identifier, key)),
            updates=sql.SQL(", ").join(updates),
            newer=_newer("EXCLUDED._tunggal_source", "EXCLUDED._tunggal_position", "t"),
        )

    def _deletes(
        self, cur: psycopg.Cursor[Any], table: str, rows: list[Delete], result: BatchResult
    ) -> None:
        spec = self._spec(table)
        in_key = self._care(table).in_key
        if in_key and any(_needs_fixing(r.key[i]) for r in rows for i in in_key):
            rows = [replace(r, key=_key_fixed(r.key, in_key)) for r in rows]  # see _fix_values
        # As for upserts: one array per column and a statement text that does not depend on the
        # number of rows, unless a key column is itself an array.
        columnar = not any(self._type(table, c).endswith("]") for c in spec.key)
        chunk = _UNNEST_ROWS if columnar else _MAX_ROWS_PER_STATEMENT
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            for soft in (False, True):
                sub = [r for r in part if r.soft == soft]
                if not sub:
                    continue
                n = 0 if columnar else len(sub)
                statement = self._statement(
                    ("delete", table, soft, n), self._delete_sql, table, soft, n, spec
                )
                params: list[Any]
                if columnar:
                    params = [[r.key[i] for r in sub] for i in range(len(spec.key))]
                    params += [
                        [r.source for r in sub],
                        [r.position for r in sub],
                        [r.commit_ts_us for r in sub],
                    ]
                else:
                    params = []
                    for r in sub:
                        params.extend(r.key)
                        params.extend((r.source, r.position, r.commit_ts_us))
                cur.execute(statement, params)
                if table not in self.merged:  # else counted when the rows are recomputed
                    result.deleted[table] += cur.rowcount if cur.rowcount > 0 else 0
            if table not in self.merged:  # a withdrawn contribution is its own tombstone
                self._tombstones(cur, table, part)

    def _delete_sql(self, table: str, soft: bool, n: int, spec: TargetSpec) -> sql.Composed:
        """n == 0: one array parameter per column, unnest()ed; else n rows of VALUES."""
        key = spec.key
        if n == 0:
            values = sql.SQL("unnest({})").format(
                sql.SQL(", ").join(
                    [sql.SQL("%s::{}[]").format(sql.SQL(self._type(table, c))) for c in key]
                    + [sql.SQL("%s::text[]"), sql.SQL("%s::numeric[]"), sql.SQL("%s::bigint[]")]
                )
            )
        else:
            one = sql.SQL("({})").format(
                sql.SQL(", ").join(
                    [self._cast(table, c) for c in key]
                    + [sql.SQL("%s::text"), sql.SQL("%s::numeric"), sql.SQL("%s::bigint")]
                )
            )
            values = sql.SQL("(VALUES {})").format(sql.SQL(", ").join([one] * n))
        alias = sql.SQL(", ").join(
            [*map(sql.Identifier, key), sql.SQL("_src"), sql.SQL("_pos"), sql.SQL("_ts")]
        )
        merged = self.merged.get(table)
        if merged is not None:
            return merged.delete(soft, values, alias)
        match = sql.SQL(" AND ").join(
            sql.SQL("t.{c} = v.{c}").format(c=sql.Identifier(c)) for c in key
        )
        newer = _newer("v._src", "v._pos", "t")
        if soft:
            column = spec.soft_delete_column or "deleted_at"
            return sql.SQL(
                "UPDATE {tbl} AS t SET {soft} = to_timestamp(v._ts / 1000000.0), "
                "_tunggal_source = v._src, _tunggal_position = v._pos, _tunggal_ts = v._ts "
                "FROM {values} AS v({alias}) WHERE {match} AND {newer}"
            ).format(
                tbl=_tbl(table),
                soft=sql.Identifier(column),
                values=values,
                alias=alias,
                match=match,
                newer=newer,
            )
        return sql.SQL(
            "DELETE FROM {tbl} AS t USING {values} AS v({alias}) WHERE {match} AND {newer}"
        ).format(tbl=_tbl(table), values=values, alias=alias, match=match, newer=newer)

    def _tombstones(self, cur: psycopg.Cursor[Any], table: str, rows: list[Delete]) -> None:
        cur.execute(
            "INSERT INTO public.tunggal_tombstones AS d (target_table, key_json, source, "
            "position, ts) SELECT %s, v.* FROM unnest(%s::text[], %s::text[], %s::numeric[], "
            "%s::bigint[]) AS v ON CONFLICT (target_table, key_json) DO UPDATE SET "
            "source = EXCLUDED.source, position = EXCLUDED.position, ts = EXCLUDED.ts "
            # One tombstone per row, for the table's one source (another's is a leftover).
            "WHERE d.source <> EXCLUDED.source OR d.position < EXCLUDED.position",
            [
                table,
                [key_json(r.key) for r in rows],
                [r.source for r in rows],
                [r.position for r in rows],
                [r.commit_ts_us for r in rows],
            ],
        )
        self._tombstones_in_transaction += max(cur.rowcount, 0)

    def _truncate(self, cur: psycopg.Cursor[Any], op: Truncate, result: BatchResult) -> None:
        spec = self._spec(op.table)
        merged = self.merged.get(op.table)
        if merged is not None:
            cur.execute(
                self._statement(("withdraw", op.table, op.soft), merged.withdraw, op.soft),
                (op.commit_ts_us, op.source, op.position),
            )
        elif op.soft:
            column = spec.soft_delete_column or "deleted_at"
            statement = sql.SQL(
                "UPDATE {tbl} SET {soft} = to_timestamp(%s / 1000000.0) "
                "WHERE _tunggal_source = %s AND _tunggal_position < %s AND {soft} IS NULL"
            ).format(tbl=_tbl(op.table), soft=sql.Identifier(column))
            cur.execute(statement, (op.commit_ts_us, op.source, op.position))
        else:
            cur.execute(
                sql.SQL(
                    "DELETE FROM {tbl} WHERE _tunggal_source = %s AND _tunggal_position < %s"
                ).format(tbl=_tbl(op.table)),
                (op.source, op.position),
            )
        if merged is None:
            result.deleted[op.table] += max(cur.rowcount, 0)
        if not op.watermark:
            return
        cur.execute(
            "INSERT INTO public.tunggal_truncations AS r (target_table, source, position, ts) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (target_table, source) DO UPDATE SET "
            "position = GREATEST(r.position, EXCLUDED.position), ts = GREATEST(r.ts, EXCLUDED.ts)",
            (op.table, op.source, op.position, op.commit_ts_us),
        )

    def _dead_letters(self, cur: psycopg.Cursor[Any], letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        cur.executemany(
            "INSERT INTO public.tunggal_dead_letters (source, source_table, destination, position,"
            " raw_key, raw_value, error_class, error, mapping_hash) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    d.source,
                    d.source_table,
                    d.raw.destination if d.raw else None,
                    d.position,
                    _text(d.raw.key) if d.raw else None,
                    _text(d.raw.value) if d.raw else None,
                    d.error_class,
                    d.error,
                    self.mapping_hash,
                )
                for d in letters
            ],
        )

    def _progress(self, cur: psycopg.Cursor[Any], progress: Mapping[str, SourceProgress]) -> None:
        for source, p in progress.items():
            cur.execute(
                "INSERT INTO public.tunggal_progress AS p (source, position, commit_ts, "
                "events_applied, snapshot_epoch, updated_at) VALUES (%s, %s, %s, %s, %s, now()) "
                "ON CONFLICT (source) DO UPDATE SET position = GREATEST(p.position, "
                "EXCLUDED.position), commit_ts = GREATEST(p.commit_ts, EXCLUDED.commit_ts), "
                "events_applied = p.events_applied + EXCLUDED.events_applied, "
                "snapshot_epoch = GREATEST(p.snapshot_epoch, EXCLUDED.snapshot_epoch), "
                "updated_at = now()",
                (source, p.position, p.commit_ts_us, p.events, p.epoch),
            )

    def _requests(self, cur: psycopg.Cursor[Any], updates: Sequence[RequestUpdate]) -> None:
        # A target set up before incremental snapshots has no such table: nothing to record
        # (`tunggal schema --apply` adds it; `tunggal resync` asks for it).
        if not updates or "public.tunggal_snapshot_requests" not in self.tables:
            return
        for u in updates:
            if u.kind == "STARTED":
                cur.execute(
                    "UPDATE public.tunggal_snapshot_requests SET state = 'running' "
                    "WHERE id = %s AND state = 'requested'",
                    (u.id,),
                )
            elif u.kind == "TABLE_SCAN_COMPLETED" and u.table:
                # Debezium reports a request that arrived while another ran under the first
                # one's id (see reconcile.signals.scan_watermark): every pending request of
                # the source that names the table has it read now.
                cur.execute(
                    "UPDATE public.tunggal_snapshot_requests SET "
                    "tables_done = array_append(tables_done, %(table)s), "
                    "rows_read = rows_read + %(rows)s WHERE source = %(source)s "
                    "AND (id = %(id)s OR state IN ('requested', 'running')) "
                    "AND %(table)s = ANY(tables) AND NOT %(table)s = ANY(tables_done)",
                    {"table": u.table, "rows": u.rows or 0, "source": u.source, "id": u.id},
                )
                cur.execute(
                    "UPDATE public.tunggal_snapshot_requests SET state = 'done', "
                    "finished_at = now() WHERE source = %s "
                    "AND state IN ('requested', 'running') AND tables <@ tables_done",
                    (u.source,),
                )
            elif u.kind in ("COMPLETED", "ABORTED"):
                cur.execute(
                    "UPDATE public.tunggal_snapshot_requests SET state = %s, finished_at = now() "
                    "WHERE id = %s AND state IN ('requested', 'running')",
                    ("done" if u.kind == "COMPLETED" else "aborted", u.id),
                )

    def _kafka_offsets(self, cur: psycopg.Cursor[Any], kafka: KafkaOffsets) -> None:
        if not kafka.offsets:
            return
        own = self.tables.get("public.tunggal_kafka_offsets")
        if own is not None and "topic_id" not in own.columns:
            # A target set up before topic ids: offsets as before, ids once the operator runs
            # `tunggal schema --apply` (a re-created topic is then still found by its end).
            if not self._said_no_topic_ids:
                self._said_no_topic_ids = True
                log.warning(
                    "public.tunggal_kafka_offsets has no topic_id column: a re-created topic "
                    "is found only when it is shorter than the stored offset; run `tunggal "
                    "schema --apply` to add it"
                )
            cur.executemany(
                "INSERT INTO public.tunggal_kafka_offsets AS o (consumer_group, topic, "
                "partition, next_offset, updated_at) VALUES (%s, %s, %s, %s, now()) "
                "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
                "next_offset = EXCLUDED.next_offset, updated_at = now()",
                [(g, t, p, o) for (g, t, p), o in sorted(kafka.offsets.items())],
            )
            return
        # Overwrite, not GREATEST: a topic deleted and re-created starts again at 0, and a
        # position that can only grow would skip its first messages. Moving back is the safe
        # direction: re-applied rows are no-ops under the position guard. The topic id is
        # overwritten too (with NULL when the client gives none): it names the topic these
        # offsets were read from.
        cur.executemany(
            "INSERT INTO public.tunggal_kafka_offsets AS o (consumer_group, topic, partition, "
            "next_offset, updated_at, topic_id) VALUES (%s, %s, %s, %s, now(), %s) "
            "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
            "next_offset = EXCLUDED.next_offset, updated_at = now(), "
            "topic_id = EXCLUDED.topic_id",
            [
                (g, t, p, o, kafka.topic_ids.get((g, t)))
                for (g, t, p), o in sorted(kafka.offsets.items())
            ],
        )


def read_kafka_offsets(
    dsn: str, group: str, partitions: Sequence[tuple[str, int]], *, connect_timeout_s: float = 10
) -> dict[tuple[str, int], tuple[int, str | None]]:
    """The next offset to read for each partition, as committed with the rows, and the id of
    the topic it was read from (None if not known) (own connection: called from a consumer
    thread while the runner holds the sink's)."""
    if not partitions:
        return {}
    conninfo = dsn.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo, connect_timeout=int(connect_timeout_s)) as conn:
            # to_jsonb(o): the id is NULL on a target without the column yet (see
            # _kafka_offsets), rather than an error.
            rows = conn.execute(
                "SELECT topic, partition, next_offset, to_jsonb(o) ->> 'topic_id' "
                "FROM public.tunggal_kafka_offsets o "
                "WHERE consumer_group = %s AND (topic, partition) IN "
                "(SELECT * FROM unnest(%s::text[], %s::int[]))",
                (group, [t for t, _ in partitions], [p for _, p in partitions]),
            ).fetchall()
    except psycopg.Error as exc:
        raise classify(exc) from exc
    return {(t, int(p)): (int(o), i) for t, p, o, i in rows}


def read_snapshot_epoch(dsn: str, source: str, *, connect_timeout_s: float = 10) -> int | None:
    """The newest PostgreSQL snapshot epoch committed for `source`, or None (own connection, so
    that any thread may ask; asked only for a first transaction after a snapshot)."""
    conninfo = dsn.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo, connect_timeout=int(connect_timeout_s)) as conn:
            row = conn.execute(
                "SELECT snapshot_epoch FROM public.tunggal_progress WHERE source = %s", (source,)
            ).fetchone()
    except psycopg.Error as exc:
        raise classify(exc) from exc
    return None if row is None or row[0] is None else int(row[0])


def _text(value: str | bytes | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        # PostgreSQL text cannot hold NUL; a poison event may contain one.
        return value.replace("\x00", "\\x00")
    # Keep undecodable bytes inspectable instead of failing the dead-letter write.
    return value.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")
