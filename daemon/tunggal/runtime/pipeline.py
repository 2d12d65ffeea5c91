"""Decode and map raw events: the pure middle of the daemon, with no I/O."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, TypeAlias

import orjson

from tunggal.errors import PoisonEventError
from tunggal.events.decode import (
    EPOCH_SHIFT,
    Hints,
    Projections,
    decode,
    decode_projected,
    in_epoch,
)
from tunggal.events.model import (
    HEARTBEAT_PREFIX,
    NOTIFICATION_PREFIX,
    ProjectedEvent,
    Projection,
    RawEvent,
)
from tunggal.events.modes import ConnectorModes
from tunggal.mapping import MappingSet
from tunggal.mapping.engine import TableMapper
from tunggal.mapping.ops import RowOp
from tunggal.sink.postgres import DeadLetter, SourceProgress

log = logging.getLogger(__name__)
# One object, not one per chunk: the decoder's caches take the same modes by identity, and
# compare a new object field by field on every event.
_DEFAULT_MODES: Final = ConnectorModes()


@dataclass
class Processed:
    ops: list[tuple[RowOp, RawEvent | None]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    progress: dict[str, SourceProgress] = field(default_factory=dict)
    # sources past their snapshot: a failure after this point is worth a restart
    live: set[str] = field(default_factory=set)
    # source -> newest heartbeat time (µs): the source was read up to then, even if idle
    heartbeats: dict[str, int] = field(default_factory=dict)
    # Kafka: (consumer group, topic, partition) -> next offset, committed with the batch
    offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # Kafka: (consumer group, topic) -> the topic's id, stored with those offsets
    topic_ids: dict[tuple[str, str], str | None] = field(default_factory=dict)
    # (source, table, op, outcome) -> count, for the events metric
    counts: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    # Incremental snapshots: Debezium's notices, and rows read per (source, source table)
    notices: list[SnapshotNotice] = field(default_factory=list)
    incremental_rows: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, key: tuple[str, str, str, str], n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def merge(self, other: Processed) -> None:
        """Add a later chunk's work (the runner decides per chunk whether to keep it)."""
        self.ops.extend(other.ops)
        self.dead_letters.extend(other.dead_letters)
        for source, theirs in other.progress.items():
            mine = self.progress.get(source)
            if mine is None:
                self.progress[source] = theirs
                continue
            mine.position = max(mine.position, theirs.position)
            mine.commit_ts_us = max(mine.commit_ts_us, theirs.commit_ts_us)
            mine.events += theirs.events
            if theirs.epoch is not None:
                mine.epoch = theirs.epoch  # the later chunk's is the newer snapshot
        self.live |= other.live
        for source, beat in other.heartbeats.items():
            self.heartbeats[source] = max(beat, self.heartbeats.get(source, 0))
        # Later, not higher: a partition read again from the start (see Runner._take).
        self.offsets.update(other.offsets)
        self.topic_ids.update(other.topic_ids)
        for counted, n in other.counts.items():
            self.count(counted, n)
        self.notices.extend(other.notices)
        for read, n in other.incremental_rows.items():
            self.incremental_rows[read] = self.incremental_rows.get(read, 0) + n

    def table_counts(self, source: str) -> dict[str, tuple[int, dict[str, int], str]]:
        """By source table: events seen (failed ones included), failures by error class and
        one error: what the flood-stop rule is fed. Tables as dead letters name them."""
        out: dict[str, tuple[int, dict[str, int], str]] = {}
        for (src, table, _op, _outcome), n in self.counts.items():
            if src == source:
                events, failures, example = out.get(table, (0, {}, ""))
                out[table] = (events + n, failures, example)
        for letter in self.dead_letters:
            if letter.source != source:
                continue
            destination = letter.raw.destination if letter.raw is not None else None
            table = letter.source_table or destination or "?"
            events, failures, example = out.get(table, (0, {}, ""))
            failures[letter.error_class] = failures.get(letter.error_class, 0) + 1
            out[table] = (events, failures, example or letter.error)
        return out


# A projected table's mapper, and what `decode_projected` is given for it.
_Plan: TypeAlias = tuple[TableMapper, tuple[Projection, Mapping[str, str] | None]]
# Reads a source's snapshot epoch as committed in the target (None when it has none yet).
EpochLookup = Callable[[str], int | None]
# What a table's scan ending lets us conclude, by (request id, source, table): the watermark to
# clean below and whether only some rows were read, or None for a snapshot Tunggal did not
# ask for (`reconcile.signals.scan_watermark`).
RequestLookup = Callable[[str, str, str], tuple[int, bool] | None]
# What a table's scan ending means for its rows.
_SCANNED: Final = frozenset({"SUCCEEDED", "EMPTY"})


@dataclass(frozen=True)
class SnapshotNotice:
    """One of Debezium's notices about an incremental snapshot (its `sink` channel)."""

    source: str
    id: str
    kind: str  # STARTED, IN_PROGRESS, TABLE_SCAN_COMPLETED, COMPLETED, ABORTED, PAUSED...
    tables: tuple[str, ...] = ()  # the snapshot's tables (STARTED), or the one concerned
    status: str | None = None  # TABLE_SCAN_COMPLETED: SUCCEEDED, EMPTY, SKIPPED, ...
    rows: int | None = None  # TABLE_SCAN_COMPLETED: rows the scan read


class Pipeline:
    """Decode and map chunks of one source's raw events, in order.

    PostgreSQL snapshot epochs: the first transaction streamed after a snapshot carries no
    commit epoch (see `events.decode`), so it is placed in the epoch of the newest snapshot of its
    source: the one whose rows this process saw, or else the one `epochs` finds committed in the
    target (another process, or an earlier run, wrote the snapshot). If neither knows one yet
    (on Kafka the snapshot's rows may be on partitions read later, or by another instance), the
    batch says so and the sink places the event when it commits (`sink.epochs`).
    """

    def __init__(
        self,
        mappings: MappingSet,
        modes: Mapping[str, ConnectorModes],
        target_types: Mapping[str, Mapping[str, str]],
        epochs: EpochLookup | None = None,
        requests: RequestLookup | None = None,
        *,
        projected: bool = True,
    ) -> None:
        self.mappings = mappings
        self.modes = dict(modes)
        self.target_types = target_types
        self._hints: dict[tuple[str, str], Mapping[str, str] | None] = {}
        # Tables whose one mapping only copies columns: decoded straight into target rows
        # (`decode_projected`). `projected=False` keeps every event on the general path, which
        # the tests compare it with.
        self._projected = projected
        # source -> source table -> its projected mapper, and what `decode_projected` is given
        # for it: the projection and the table's hints (None: not projected)
        self._plans: dict[str, dict[str, _Plan | None]] = {}
        self._lookup_epoch = epochs
        self._epochs: dict[str, int] = {}
        self._lookup_request = requests

    def swap(self, mappings: MappingSet, target_types: Mapping[str, Mapping[str, str]]) -> None:
        """Use a new mapping set from the next event on (called between batches)."""
        self.mappings = mappings
        self.target_types = target_types
        self._hints.clear()
        self._plans.clear()

    def _place_in_epoch(
        self, source: str, position: int, snapshot: bool, unknown: bool
    ) -> tuple[int, bool]:
        """A PostgreSQL event's position, placed in its source's newest snapshot epoch if it
        has no epoch of its own; a snapshot row makes its epoch the newest. `unknown` says the
        target was asked during this chunk and had none (so it is asked once per chunk at
        most), and is returned updated."""
        epoch = position >> EPOCH_SHIFT
        if epoch:
            if snapshot and epoch > self._epochs.get(source, 0):
                self._epochs[source] = epoch
            return position, unknown
        known = self._epochs.get(source)
        if known is None and not unknown and self._lookup_epoch is not None:
            known = self._lookup_epoch(source)
            if known is None:
                return position, True
            self._epochs[source] = known
        if known is None:
            return position, unknown
        return in_epoch(position, known), unknown

    def _hint_lookup(self, source: str) -> Hints:
        def lookup(table: str) -> Mapping[str, str] | None:
            key = (source, table)
            if key not in self._hints:
                self._hints[key] = self.mappings.hints(source, table, self.target_types)
            return self._hints[key]

        return lookup

    def _plans_of(self, source: str, hints: Hints) -> tuple[dict[str, _Plan | None], Projections]:
        """The source's projected tables as found so far, and the lookup `decode_projected`
        takes, which fills them in."""
        plans = self._plans.setdefault(source, {})

        def lookup(table: str) -> tuple[Projection, Mapping[str, str] | None] | None:
            if table in plans:
                plan = plans[table]
            else:
                plan = plans[table] = self._plan(source, table, hints)
            return None if plan is None else plan[1]

        return plans, lookup

    def _plan(self, source: str, table: str, hints: Hints) -> _Plan | None:
        mapper = self.mappings.projected_mapper(source, table)
        if mapper is None or mapper.projection is None:
            return None
        return mapper, (mapper.projection, hints(table))

    def process(
        self,
        source: str,
        raws: list[RawEvent],
        into: Processed | None = None,
        *,
        log_poison: bool = True,
    ) -> Processed:
        """Decode and map `raws`; `log_poison=False` leaves the poison lines to the caller
        (the runner says them only for the dead letters it keeps: `report_poison`)."""
        out = into if into is not None else Processed()
        modes = self.modes.get(source, _DEFAULT_MODES)
        hints = self._hint_lookup(source)
        epochs = modes.connector == "postgresql"
        epoch_unknown = False  # looked up once per chunk at most while there is none
        plans, projections = self._plans_of(source, hints)
        for raw in raws:
            if raw.destination.startswith(NOTIFICATION_PREFIX):
                self._notice(source, raw, out)
                continue
            if raw.destination.startswith(HEARTBEAT_PREFIX):
                beat = _heartbeat_ts_us(raw)
                if beat is not None:
                    out.heartbeats[source] = max(beat, out.heartbeats.get(source, 0))
                # Not `live`: Debezium also sends a heartbeat when a snapshot completes.
                continue
            position: int | None = None  # the event's, once decoded (and placed)
            try:
                if self._projected:
                    decoded = decode_projected(
                        raw, source=source, modes=modes, hints=hints, projections=projections
                    )
                else:
                    decoded = decode(raw, source=source, modes=modes, hints=hints)
                if decoded is None:  # tombstone: the delete before it did the work
                    continue
                if isinstance(decoded, ProjectedEvent):
                    table, op, snapshot = decoded.table, decoded.op, decoded.snapshot
                    position, commit_ts_us = decoded.position, decoded.commit_ts_us
                    incremental = False  # not taken by decode_projected
                    if epochs:
                        position, epoch_unknown = self._place_in_epoch(
                            source, position, snapshot, epoch_unknown
                        )
                        decoded.position = position
                    plan = plans[table]
                    assert plan is not None  # the projection came from it
                    ops = self.mappings.map_projected(plan[0], decoded)
                else:
                    event = decoded
                    table, op, snapshot = event.table, event.op, event.snapshot
                    position, commit_ts_us = event.position, event.commit_ts_us
                    incremental = event.incremental
                    if epochs:
                        position, epoch_unknown = self._place_in_epoch(
                            source, position, snapshot, epoch_unknown
                        )
                        if position != event.position:
                            event = replace(event, position=position)
                    ops = self.mappings.map_event(event)
            except PoisonEventError as exc:
                where = exc.table or raw.destination or "?"
                letter = DeadLetter(
                    source=source,
                    error_class=type(exc).__name__,
                    error=str(exc),
                    raw=raw,
                    source_table=exc.table,
                    position=position,
                )
                if log_poison:
                    report_poison(letter)
                out.dead_letters.append(letter)
                out.count((source, where, "?", "dead_letter"))
                continue
            if not snapshot:
                out.live.add(source)
            if incremental:
                counted = (source, table)
                out.incremental_rows[counted] = out.incremental_rows.get(counted, 0) + 1
            progress = out.progress.get(source)
            if progress is None:
                progress = out.progress[source] = SourceProgress(position, commit_ts_us)
            progress.position = max(progress.position, position)
            progress.commit_ts_us = max(progress.commit_ts_us, commit_ts_us)
            progress.events += 1
            if epochs:
                if snapshot:
                    # committed with the rows, for a process that never sees them
                    progress.epoch = self._epochs.get(source, progress.epoch)
                elif not position >> EPOCH_SHIFT:
                    # No snapshot row seen yet, none in the target: the sink places it when it
                    # commits, under a lock (`sink.epochs`). On Kafka the snapshot's rows may
                    # be on other partitions, taken later or by another instance.
                    progress.unplaced = True
            # Op's str value, not `.value`: the enum property costs more than the rest here.
            if not ops:
                out.count((source, table, str(op), "skipped"))
                continue
            out.count((source, table, str(op), "applied"))
            if len(ops) == 1:
                out.ops.append((ops[0], raw))
            else:
                out.ops.extend((row_op, raw) for row_op in ops)
        return out

    def _notice(self, source: str, raw: RawEvent, out: Processed) -> None:
        """A notice about an incremental snapshot, in order with the rows (see
        `ConnectorSpec.notification_topic`). When a table's scan ends, the rows of it that the
        source wrote before the request's watermark and the scan did not read again are gone
        from the source: they are removed here, in stream order, after the scan's last row."""
        notice = _parse_notice(source, raw)
        if notice is None:
            return
        out.notices.append(notice)
        if notice.kind != "TABLE_SCAN_COMPLETED" or not notice.tables:
            return
        (table,) = notice.tables
        if notice.status not in _SCANNED:
            log.warning(
                "source %s: the incremental snapshot of %s ended with %s; its rows are as "
                "streamed (run `tunggal resync --source %s --table %s` once the cause is fixed)",
                source,
                table,
                notice.status,
                source,
                table,
            )
            return
        found = self._lookup_request(notice.id, source, table) if self._lookup_request else None
        if found is None:
            log.info(
                "source %s: incremental snapshot %s of %s was not asked for by Tunggal; rows "
                "deleted from the source while it was not captured stay in the target",
                source,
                notice.id,
                table,
            )
            return
        position, partial = found
        if partial:
            return  # only some rows were read again (verify --repair): nothing to conclude
        ops, shared = self.mappings.table_cleanup(source, table, position, _notice_ts_us(raw))
        out.ops.extend((op, None) for op in ops)
        for target in shared:
            log.warning(
                "source %s: %s was read again, but rows of %s that %s no longer has are not "
                "removed: another table of %s writes %s too",
                source,
                table,
                target,
                table,
                source,
                target,
            )


def report_poison(letter: DeadLetter) -> None:
    """The one line a dead-lettered event gets."""
    raw = letter.raw
    table = letter.source_table or (raw.destination if raw is not None else None) or "?"
    offset = raw.offset if raw is not None else None
    log.error(
        "poison event from %s (%s, offset %s): %s", letter.source, table, offset, letter.error
    )


def _parse_notice(source: str, raw: RawEvent) -> SnapshotNotice | None:
    """Debezium's notification record ({id, aggregate_type, type, additional_data, timestamp},
    inside "payload" with schemas), or None for anything else."""
    try:
        value = orjson.loads(raw.value) if raw.value is not None else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("payload"), dict):
        value = value["payload"]
    if not isinstance(value, dict) or value.get("aggregate_type") != "Incremental Snapshot":
        return None
    data = value.get("additional_data")
    data = data if isinstance(data, dict) else {}
    kind = str(value.get("type", ""))
    tables: tuple[str, ...] = ()
    if kind == "STARTED":
        tables = tuple(
            _table_name(t) for t in str(data.get("data_collections", "")).split(",") if t
        )
    elif "scanned_collection" in data:
        tables = (_table_name(str(data["scanned_collection"])),)
    elif "current_collection_in_progress" in data:
        tables = (_table_name(str(data["current_collection_in_progress"])),)
    rows = data.get("total_rows_scanned")
    return SnapshotNotice(
        source=source,
        id=str(value.get("id", "")),
        kind=kind,
        tables=tables,
        status=str(data["status"]) if "status" in data else None,
        rows=int(rows) if isinstance(rows, (int, str)) and str(rows).isdigit() else None,
    )


def _table_name(collection: str) -> str:
    """Debezium's data collection id as mappings name tables: schema.table (a PostgreSQL id
    may carry the database in front, SQL Server's always does)."""
    return ".".join(collection.strip().split(".")[-2:])


def _notice_ts_us(raw: RawEvent) -> int:
    """The notice's time (ms since the epoch, as text or a number), in µs; 0 if unreadable."""
    try:
        value = orjson.loads(raw.value) if raw.value is not None else None
    except orjson.JSONDecodeError:
        return 0
    if isinstance(value, dict) and isinstance(value.get("payload"), dict):
        value = value["payload"]
    ts = value.get("timestamp") if isinstance(value, dict) else None
    return int(ts) * 1000 if isinstance(ts, int) or (isinstance(ts, str) and ts.isdigit()) else 0


def _heartbeat_ts_us(raw: RawEvent) -> int | None:
    """Debezium heartbeats carry only {"ts_ms": ...} (inside "payload" with schemas)."""
    try:
        value = orjson.loads(raw.value) if raw.value is not None else None
        if isinstance(value, dict) and isinstance(value.get("payload"), dict):
            value = value["payload"]
        ts_ms = value.get("ts_ms") if isinstance(value, dict) else None
        return int(ts_ms) * 1000 if isinstance(ts_ms, int) else None
    except orjson.JSONDecodeError:
        return None
