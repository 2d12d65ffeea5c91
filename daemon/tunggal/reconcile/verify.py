"""`tunggal verify`: does the target hold, for a source, exactly what its mapped tables say?

One check (a source, a target table; `reconcile.plan`) runs in four steps:

1. **Checksums.** The source is read in one REPEATABLE READ snapshot, whose WAL position P0 is
   noted. Both sides are summed per region of the target key's hash (`reconcile.buckets`),
   concurrently: the target in SQL; the source in SQL where its mapping is plain copies, else
   row by row through the real mapping, staged in the target and summed there.
2. **Bisection.** Regions whose sums differ are split until small, then their rows are
   compared one by one through the mapping: missing, extra, differing (with the columns).
3. **Settling.** Each such row may only be on its way. Verify reads the target's state of
   those rows (position, tombstone), takes a new source snapshot at P, re-reads their source
   rows, waits until the target has applied everything up to P (`reconcile.settle`) and
   compares again. A row that still differs while the target state read *before* P is
   unchanged is drift: whatever the source committed for it up to P had been applied, and
   its change came before P. Rows that moved meanwhile go round again, until `wait_s`.
4. **Result**: counts, the drifted rows, what could not be settled or mapped, the time.

Memory holds one level of region sums and the drifted rows, never the table.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Final

import psycopg
from psycopg import sql

from tunggal.config import TunggalConfig
from tunggal.errors import FatalError, MappingError, TransientError
from tunggal.events.model import ChangeEvent, Op
from tunggal.mapping import MappingSet, Upsert
from tunggal.reconcile import buckets, compare
from tunggal.reconcile.buckets import Region
from tunggal.reconcile.compare import ROWS, STAGE, Difference, Stage
from tunggal.reconcile.mergecheck import MergeResult, check_merged
from tunggal.reconcile.pgsql import (
    SESSION_SETTINGS,
    Hashed,
    ident,
    read_sums,
    record_hash,
    regions_predicate,
    sums_query,
)
from tunggal.reconcile.plan import Check, Entry
from tunggal.reconcile.settle import EmbeddedWatermark, KafkaWatermark, Watermark, wait_for
from tunggal.sink.postgres import key_json

log = logging.getLogger(__name__)

EXAMPLES: Final = 5  # unmappable rows shown by reason


@dataclass(frozen=True)
class Options:
    wait_s: float = 60.0  # how long the target may take to catch up (0: do not wait)
    details: int = 20_000  # drifted rows kept (and settled) per check; the rest are counted
    chunk_rows: int = 20_000  # mapped rows staged (COPY) per round trip
    leaf_rows: int = 200_000  # rows of the compared regions staged at once
    range_pages: int = 4096  # heap pages read per checksum query (progress, short queries)


@dataclass
class Progress:
    """Counts the CLI's progress bar reads from another thread."""

    source_rows: int = 0
    target_rows: int = 0
    source_total: int | None = None
    target_total: int | None = None
    phase: str = "checksums"


@dataclass
class TableResult:
    check: Check
    started_at: datetime
    seconds: float = 0.0
    position: int = 0  # the source snapshot's WAL position
    mode: str = "sql"  # sql: checksums computed by the source; mapped: through the mapping
    source_rows: int = 0  # rows the source's mapped tables give the target table
    target_rows: int = 0  # rows the source holds in it
    drift: list[Difference] = field(default_factory=list)
    unsettled: list[Difference] = field(default_factory=list)
    retained: int = 0  # extra rows kept by `delete: ignore`
    beyond: dict[str, int] = field(default_factory=dict)  # kind -> drifted rows not kept
    unmappable: int = 0
    examples: list[str] = field(default_factory=list)
    unsettled_reason: str = ""

    def count(self, kind: str) -> int:
        return sum(1 for d in self.drift if d.kind == kind) + self.beyond.get(kind, 0)

    @property
    def in_sync(self) -> bool:
        return not (self.drift or self.beyond or self.unsettled or self.unmappable)


class _Unmappable:
    """Rows the mapping refuses, counted with a few examples."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []
        self.lock = threading.Lock()

    def add(self, table: str, pk: str | None, reason: str) -> None:
        """`pk`: the source row's primary key, as a JSON array of text."""
        with self.lock:
            self.count += 1
            if len(self.examples) < EXAMPLES:
                self.examples.append(f"{table} {pk or '[]'}: {reason}")


class Verifier:
    def __init__(
        self,
        config: TunggalConfig,
        mappings: MappingSet,
        options: Options,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.mappings = mappings
        self.options = options
        self.stop = stop or threading.Event()
        self.target_dsn = config.target.dsn.replace("postgresql+psycopg://", "postgresql://", 1)

    def _target(self, application: str = "tunggal-verify") -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self.target_dsn,
                connect_timeout=int(self.config.target.connect_timeout_s),
                application_name=application,
                options=SESSION_SETTINGS,
            )
        except psycopg.OperationalError as exc:
            raise TransientError(f"target database: {_short(exc)}") from exc

    def merged_rows(self, checks: Sequence[Check]) -> list[MergeResult]:
        """Each table several sources write among `checks`: its rows against what its
        contributions give (`reconcile.mergecheck`)."""
        tables = {c.target.name: c for c in checks if c.contributions is not None}
        out = []
        for name in sorted(tables):
            check = tables[name]
            conn = self._target()
            try:
                out.append(check_merged(conn, check.target, check.types, self.options.details))
            except psycopg.OperationalError as exc:
                raise TransientError(f"{name}: {_short(exc)}") from exc
            except psycopg.Error as exc:
                raise FatalError(f"{name}: {_short(exc)}") from exc
            finally:
                conn.close()
        return out

    # -- one check ---------------------------------------------------------------------------

    def run(self, check: Check, progress: Progress | None = None) -> TableResult:
        progress = progress or Progress()
        result = TableResult(check, datetime.now(UTC))
        started = time.monotonic()
        result.mode = "sql" if check.sql_pushdown else "mapped"
        source = check.database.connect()
        target = self._target()
        stage_conn = self._target()
        try:
            stage = Stage(stage_conn, check)
            run = _Run(self, check, source, target, stage, progress, result)
            run.checksums_and_compare()
            run.settle()
            stage.close()
        except psycopg.OperationalError as exc:
            raise TransientError(f"{check.name}: {_short(exc)}") from exc
        except psycopg.Error as exc:
            raise FatalError(f"{check.name}: {_short(exc)}") from exc
        finally:
            for conn in (source, target, stage_conn):
                with contextlib.suppress(Exception):
                    conn.close()
        result.seconds = time.monotonic() - started
        return result


class _Run:
    """The state of one check while it runs."""

    def __init__(
        self,
        verifier: Verifier,
        check: Check,
        source: psycopg.Connection[Any],
        target: psycopg.Connection[Any],
        stage: Stage,
        progress: Progress,
        result: TableResult,
    ) -> None:
        self.v = verifier
        self.check = check
        self.source = source
        self.target = target
        self.stage = stage
        self.progress = progress
        self.result = result
        self.unmappable = _Unmappable()
        self.names = (*check.key, *check.columns)
        self.readers = {
            e.source_table: check.database.reader(e.table, e.hints) for e in check.entries
        }
        self.candidates: list[Difference] = []
        self._aux: tuple[psycopg.Connection[Any], ...] = ()

    # -- step 1 and 2 --------------------------------------------------------------------------

    def checksums_and_compare(self) -> None:
        check, opts = self.check, self.v.options
        self.result.position = check.database.snapshot(self.source)
        self.progress.source_total = sum(e.table.rows for e in check.entries)
        with self.target.cursor() as cur:
            pages, rows = compare.target_pages(cur, check)
        self.target.rollback()
        self.progress.target_total = rows
        bits = buckets.TOP_BITS
        with ThreadPoolExecutor(1, thread_name_prefix="tunggal-verify-target") as pool:
            target_side = pool.submit(self._target_sums, bits, None, pages)
            source_sums = self._source_sums(bits, None, count=True)
            target_sums = target_side.result()
        self.result.source_rows = sum(n for n, _ in source_sums.values())
        self.result.target_rows = sum(n for n, _ in target_sums.values())
        self.progress.phase = "comparing"
        leaves: list[tuple[Region, int]] = []
        found = buckets.differing(source_sums, target_sums)
        while found:
            done, split = buckets.next_step(bits, found)
            sizes = dict(found)
            leaves += [(r, sizes[r.value]) for r in done]
            if not split:
                break
            parents = buckets.by_bits(split)
            bits += buckets.SPLIT_BITS
            with ThreadPoolExecutor(1, thread_name_prefix="tunggal-verify-target") as pool:
                target_side = pool.submit(self._target_sums, bits, parents, None)
                source_sums = self._source_sums(bits, parents, count=False)
                target_sums = target_side.result()
            found = buckets.differing(source_sums, target_sums)
        for group in buckets.batches(leaves, opts.leaf_rows):
            regions = buckets.by_bits(group)
            self._stage_regions(regions)
            with self.stage.conn.cursor() as cur:
                self._collect(compare.compare(cur, check, regions=regions))
            self.stage.conn.commit()
        self.result.unmappable = self.unmappable.count
        self.result.examples = self.unmappable.examples

    def _collect(self, found: Sequence[Difference]) -> list[Difference]:
        """Keep up to `details` drifted rows; count the others; extra rows under `delete:
        ignore` are kept by design."""
        kept: list[Difference] = []
        for d in found:
            if d.kind == "extra" and self.check.delete == "ignore":
                self.result.retained += 1
            elif len(self.candidates) + len(kept) < self.v.options.details:
                kept.append(d)
            else:
                self.result.beyond[d.kind] = self.result.beyond.get(d.kind, 0) + 1
        self.candidates += kept
        return kept

    def _target_sums(
        self, bits: int, regions: Mapping[int, Sequence[int]] | None, pages: int | None
    ) -> dict[int, tuple[int, int]]:
        """The target's region sums, in one REPEATABLE READ snapshot of its own."""
        sums: dict[int, tuple[int, int]] = {}
        conn = self.target
        conn.rollback()
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            with conn.cursor() as cur:
                for block_range in _ranges(pages, self.v.options.range_pages):
                    found = compare.target_sums(cur, self.check, bits, regions, block_range)
                    added = buckets.add_sums(sums, found)
                    if regions is None:
                        self.progress.target_rows += added
                    if self.v.stop.is_set():
                        raise FatalError("verify stopped")
        finally:
            conn.rollback()
        return sums

    def _source_sums(
        self, bits: int, regions: Mapping[int, Sequence[int]] | None, *, count: bool
    ) -> dict[int, tuple[int, int]]:
        sums: dict[int, tuple[int, int]] = {}
        for entry in self.check.entries:
            if entry.pushdown is not None:
                self._pushdown_sums(entry, bits, regions, sums, count)
            else:
                self._mapped_sums(entry, bits, regions, count)
                buckets.add_sums(sums, self.stage.take_sums())
        return sums

    def _mapped_sums(
        self, entry: Entry, bits: int, regions: Mapping[int, Sequence[int]] | None, count: bool
    ) -> None:
        """Map the entry's rows here while a second thread stages the previous chunk and has
        the target add up its sums: the target's work and its round trips overlap ours."""

        def stage(chunk: list[tuple[Any, ...]]) -> None:
            self._refused(chunk, self.stage.write(chunk), note=count)
            self.stage.accumulate(bits, regions)

        with ThreadPoolExecutor(1, thread_name_prefix="tunggal-verify-stage") as writer:
            pending: Future[None] | None = None
            for chunk in self._mapped(entry, count=count, note=count):
                if pending is not None:
                    pending.result()
                pending = writer.submit(stage, chunk)
            if pending is not None:
                pending.result()

    def _pushdown_sums(
        self,
        entry: Entry,
        bits: int,
        regions: Mapping[int, Sequence[int]] | None,
        into: dict[int, tuple[int, int]],
        count: bool,
    ) -> None:
        check = self.check
        assert entry.pushdown is not None
        key = [check.hashed(k, entry.pushdown[k]) for k in check.key]
        row = [check.hashed(c, entry.pushdown[c]) for c in check.columns]
        source = sql.SQL("{} AS t").format(ident(entry.source_table))
        pages = entry.table.pages if regions is None else None
        with self.source.cursor() as cur:
            for block_range in _ranges(pages, self.v.options.range_pages):
                query = sums_query(source, sql.SQL("true"), key, row, bits, regions, block_range)
                added = buckets.add_sums(into, read_sums(cur.execute(query)))
                if count:
                    self.progress.source_rows += added
                if self.v.stop.is_set():
                    raise FatalError("verify stopped")

    # -- rows through the mapping --------------------------------------------------------------

    def _mapped(
        self,
        entry: Entry,
        *,
        count: bool = False,
        note: bool = False,
        where: sql.Composable | None = None,
        params: Sequence[Any] = (),
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Chunks of the entry's source rows mapped to the target's staged columns, then the
        key text (not while summing: only the compared rows need it), the source primary key
        and the source table. Rows the decoder or the mapping refuse are counted
        (`unmappable`, with `note`), as the daemon dead-letters them: once per check, when
        the row is first read."""
        reader = self.readers[entry.source_table]
        adapt = reader.adapt
        map_event = self.v.mappings.map_event
        source, table, target = self.check.source, entry.source_table, self.check.target.name
        pick = _picker(self.names)
        keyed = not count
        out: list[tuple[Any, ...]] = []
        for rows in reader.stream(self.source, table, where, params):
            for raw in rows:
                values = adapt(raw)
                if values is None:
                    if note:
                        self.unmappable.add(table, raw[-1], "a date or time outside years 1-9999")
                    continue
                try:
                    ops = map_event(ChangeEvent(source, table, Op.READ, None, None, values, 0, 0))
                except MappingError as exc:
                    if note:
                        self.unmappable.add(table, raw[-1], str(exc))
                    continue
                for op in ops:
                    if type(op) is Upsert and op.table == target:
                        k = key_json(op.key) if keyed else None
                        out.append((*pick(op.values), k, raw[-1], table))
            if count:
                self.progress.source_rows += len(rows)
            if len(out) >= self.v.options.chunk_rows:
                yield out
                out = []
            if self.v.stop.is_set():
                raise FatalError("verify stopped")
        if out:
            yield out

    def _refused(
        self, chunk: Sequence[tuple[Any, ...]], refused: Sequence[int], note: bool
    ) -> None:
        if note:
            for i in refused:
                row = chunk[i]
                self.unmappable.add(row[-1], row[-2], "the target refuses a value of this row")

    def _stage_rows(
        self,
        into: str,
        entry: Entry,
        where: sql.Composable | None = None,
        params: Sequence[Any] = (),
        note: bool = False,
    ) -> None:
        for chunk in self._mapped(entry, where=where, params=params, note=note):
            self._refused(chunk, self.stage.write(chunk, into), note)

    def _stage_regions(self, regions: Mapping[int, Sequence[int]]) -> None:
        """The mapped source rows of `regions`, into the compared rows (`ROWS`)."""
        self.stage.clear()
        for entry in self.check.entries:
            if entry.key_pushdown is not None:
                key = [
                    Hashed(e, self.check.types[k] in self.check.hashable)
                    for k, e in zip(self.check.key, entry.key_pushdown, strict=True)
                ]
                # Rows its checksums could not have seen refused: first read through the mapping.
                note = entry.pushdown is not None
                predicate = regions_predicate(record_hash(key, 0), regions)
                self._stage_rows(ROWS, entry, predicate, note=note)
            else:
                for chunk in self._mapped(entry):
                    self.stage.write(chunk, STAGE)
                    self.stage.keep(regions)

    def _stage_keys(self, keys: Sequence[tuple[str, ...]]) -> None:
        self.stage.clear()
        for entry in self.check.entries:
            if entry.key_pushdown is not None:
                where, params = _source_keys(self.check, entry, keys)
                self._stage_rows(ROWS, entry, where, params)
            else:
                for chunk in self._mapped(entry):
                    self.stage.write(chunk, STAGE)
                    self.stage.keep_keys(keys)

    # -- step 3 --------------------------------------------------------------------------------

    def settle(self) -> None:
        result, opts = self.result, self.v.options
        pending = self.candidates
        if not pending:
            return
        self.progress.phase = "settling"
        deadline = time.monotonic() + opts.wait_s
        watermark = self._watermark() if opts.wait_s > 0 else None
        rounds = 0
        while pending:
            rounds += 1
            with self.stage.conn.cursor() as cur:
                before = compare.states(cur, self.check, pending)
            self.stage.conn.commit()
            position = self.check.database.snapshot(self.source)
            keys = [d.key for d in pending]
            self._stage_keys(keys)
            if watermark is None:
                reached: bool | None = True
            else:
                reached = wait_for(watermark, position, deadline, self.v.stop)
            with self.stage.conn.cursor() as cur:
                now = compare.compare(cur, self.check, keys=keys)
                after = compare.states(cur, self.check, now)
            self.stage.conn.commit()
            still = []
            for d in now:
                if d.kind == "extra" and self.check.delete == "ignore":
                    result.retained += 1
                elif reached and before.get(d.key) == after.get(d.key):
                    result.drift.append(d)
                else:
                    still.append(d)
            pending = still
            if reached is None:
                result.unsettled_reason = (
                    f"cannot tell how far the target is behind source {self.check.source}"
                )
                break
            if not reached:
                result.unsettled_reason = (
                    f"the target did not reach source {self.check.source}'s position within "
                    f"{opts.wait_s:g}s (is the daemon running and caught up?)"
                )
                break
            if time.monotonic() >= deadline or watermark is None:
                result.unsettled_reason = "these rows kept changing while verify checked them"
                break
        result.unsettled = pending
        self.source.rollback()
        for conn in self._aux:
            with contextlib.suppress(Exception):
                conn.close()

    def _watermark(self) -> Watermark:
        check = self.check
        source_conn = check.database.connect("tunggal-verify-watermark")
        source_conn.autocommit = False
        target_conn = self.v._target("tunggal-verify-watermark")
        self._aux = (source_conn, target_conn)
        if check.engine == "kafka" and self.v.config.kafka is not None:
            prefix = check.database.spec.topic_prefix
            topics = [f"{prefix}.{e.source_table}" for e in check.entries]
            return KafkaWatermark(
                check.database, source_conn, target_conn, check.source, self.v.config.kafka, topics
            )
        return EmbeddedWatermark(check.database, source_conn, target_conn, check.source)


def _source_keys(
    check: Check, entry: Entry, keys: Sequence[tuple[str, ...]]
) -> tuple[sql.Composable, list[Any]]:
    """Source rows whose mapped key is one of `keys` (the key is copied from the source)."""
    assert entry.key_pushdown is not None
    names = [sql.Identifier(f"k{i}") for i in range(len(check.key))]
    predicate = sql.SQL("({}) IN (SELECT {} FROM unnest({}) AS u({}))").format(
        sql.SQL(", ").join(entry.key_pushdown),
        sql.SQL(", ").join(
            sql.SQL("u.{}::{}").format(n, sql.SQL(check.types[k]))
            for n, k in zip(names, check.key, strict=True)
        ),
        sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in names),
        sql.SQL(", ").join(names),
    )
    return predicate, [[k[i] for k in keys] for i in range(len(check.key))]


def _picker(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """`values -> (values[names[0]], ...)` in C; itemgetter of one name gives a bare value."""
    if len(names) == 1:
        (name,) = names
        return lambda values: (values[name],)
    get: Callable[[Mapping[str, Any]], tuple[Any, ...]] = itemgetter(*names)
    return get


def _ranges(pages: int | None, step: int) -> list[tuple[int, int | None] | None]:
    """Block ranges covering a table of `pages` pages (the last one open: it may have grown);
    [None] (the whole table at once) when the size is not known."""
    if not pages:
        return [None]
    starts = list(range(0, pages, step))
    return [(s, starts[i + 1] if i + 1 < len(starts) else None) for i, s in enumerate(starts)]


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
