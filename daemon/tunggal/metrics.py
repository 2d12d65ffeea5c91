"""Prometheus metrics, owned by one injected object with its own registry.

Lag is computed at scrape time (a custom collector), so a stalled source shows a growing lag
instead of the last value it happened to have.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
SIZE_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 50_000)


@dataclass
class SourceState:
    """What /status and the lag collector know about one source."""

    name: str
    engine: str = "embedded"
    state: str = "starting"  # starting, snapshot, streaming, stopped, failed
    position: int | None = None
    last_event_commit_ts_us: int | None = None  # commit time of the newest applied change
    last_target_commit: float | None = None  # wall time of our last transaction with its events
    events_applied: int = 0
    error: str | None = None
    # Set while a batch holding this source's events failed to commit and is being retried:
    # the source is not down, but nothing of it moves until the target takes the batch.
    write_error: str | None = None
    # Set while the source is paused by the flood stop (`runtime.flood`): why, and since when.
    paused: str | None = None
    paused_since: float | None = None
    rate: float = 0.0  # events/s, exponentially smoothed
    _rate_mark: tuple[float, int] = field(default=(0.0, 0), repr=False)


@dataclass
class TargetState:
    """The target as the last write or connection found it, for /status, /readyz and
    `tunggal_target_up`: down from the first failed attempt until one succeeds."""

    up: bool = True
    down_since: float | None = None  # wall time of the first failure of this outage
    error: str | None = None


# The one reason a source is paused today; a label value, so bounded.
PAUSED_FLOOD = "dead_letter_flood"


@dataclass(frozen=True)
class SnapshotProgress:
    """One source's initial snapshot, as Debezium's snapshot MBean reports it."""

    running: bool
    completed: bool
    aborted: bool = False
    tables_total: int = 0
    tables_remaining: int = 0
    rows_scanned: Mapping[str, int] = field(default_factory=dict)  # "schema.table" -> rows
    duration_s: float | None = None

    @property
    def tables_done(self) -> int:
        return max(0, self.tables_total - self.tables_remaining)


@dataclass(frozen=True)
class SlotState:
    """One replication slot on a source server, as the slot probe last read it."""

    slot: str
    database: str
    active: bool
    # current WAL position - restart_lsn; None when the slot holds no position (lost).
    retained_bytes: float | None
    source: str | None  # the configured source that owns it; None: an orphan


@dataclass(frozen=True)
class ServerSlots:
    """Every watched slot of one PostgreSQL server ("host:port"), read at once; `slots` is
    None when the server could not be read."""

    slots: tuple[SlotState, ...] | None
    warn_bytes: float
    max_keep_bytes: float | None


@dataclass
class Probes:
    """Readings taken off the main loop by slow pollers (JMX, the source databases) and
    exported at scrape time. None means "could not read": the metric is left out rather than
    showing a stale or made-up value."""

    snapshots: dict[str, SnapshotProgress] = field(default_factory=dict)
    # source -> "schema.table" -> pg_class.reltuples (an estimate; -1 means never analyzed)
    row_estimates: dict[str, dict[str, int]] = field(default_factory=dict)
    slot_retained_bytes: dict[str, float | None] = field(default_factory=dict)
    slot_names: dict[str, str] = field(default_factory=dict)
    server_slots: dict[str, ServerSlots] = field(default_factory=dict)
    jvm_heap_used: int | None = None
    jvm_heap_max: int | None = None


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        self.sources: dict[str, SourceState] = {}
        self.tables: dict[str, dict[str, int]] = {}
        self.lock = threading.Lock()
        r = self.registry
        self.events = Counter(
            "tunggal_events",
            "Change events by source, table, op and outcome",
            ["source", "table", "op", "outcome"],
            registry=r,
        )
        self.rows = Counter(
            "tunggal_rows_applied",
            "Target rows changed by table and action",
            ["table", "action"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "tunggal_batch_apply_seconds",
            "Time to write one batch into the target",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tunggal_batch_size", "Events per batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.lag = Histogram(
            "tunggal_end_to_end_lag_seconds",
            "Source commit to target commit, per applied event batch",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.up = Gauge("tunggal_source_up", "1 while the source streams", ["source"], registry=r)
        self.retries = Counter(
            "tunggal_retries", "Transient failures retried", ["reason"], registry=r
        )
        self.dead_letters = Counter(
            "tunggal_dead_letters", "Events set aside as poison", ["source"], registry=r
        )
        self.mapping = Info("tunggal_mapping", "The active mapping set", registry=r)
        self.reloads = Counter(
            "tunggal_mapping_reloads", "Mapping reload attempts by result", ["result"], registry=r
        )
        self.dead_letters_current = Gauge(
            "tunggal_dead_letters_current", "Entries now in tunggal_dead_letters", registry=r
        )
        self.write_failures = Counter(
            "tunggal_target_write_failures",
            "Failed attempts to commit a batch holding the source's events (each retry counts)",
            ["source"],
            registry=r,
        )
        self.write_failing = Gauge(
            "tunggal_target_write_failing",
            "1 while a batch holding the source's events failed to commit and is held for a retry",
            ["source"],
            registry=r,
        )
        self.paused = Gauge(
            "tunggal_source_paused",
            "1 while the source is paused, by reason (dead_letter_flood: a table's events fail "
            "as a broken mapping makes them; resumes on a mapping reload)",
            ["source", "reason"],
            registry=r,
        )
        self.target = TargetState()
        self.target_up = Gauge(
            "tunggal_target_up",
            "1 when the last write or connection to the target succeeded, 0 while they fail",
            registry=r,
        )
        self.restarts = Counter(
            "tunggal_source_restarts", "Sources restarted after a failure", ["source"], registry=r
        )
        self.merge_conflicts = Counter(
            "tunggal_merge_conflicts",
            "Rows written whose holding sources disagree on a column (both non-NULL, "
            "different); `tunggal conflicts` lists the current ones",
            ["table", "column"],
            registry=r,
        )
        r.register(_LagCollector(self))
        self._add_operations_metrics(r)
        self._add_kafka_metrics(r)
        # (source, target table) -> the newest `tunggal verify` run (reconcile.runs.VerifyProbe)
        self.verify_runs: dict[tuple[str, str], VerifyRun] = {}
        r.register(_VerifyCollector(self))

    def _add_kafka_metrics(self, r: CollectorRegistry) -> None:
        """Kafka sources: rebalances, assigned partitions, consumer lag per partition."""
        self.kafka_rebalances = Counter(
            "tunggal_kafka_rebalances",
            "Partition assignments received by a Kafka source",
            ["source"],
            registry=r,
        )
        self.kafka_partitions = Gauge(
            "tunggal_kafka_assigned_partitions",
            "Partitions this instance consumes",
            ["source"],
            registry=r,
        )
        # (source) -> {(topic, partition): records behind the high watermark}
        self._kafka_lag: dict[str, dict[tuple[str, int], int]] = {}
        # (source) -> {(topic, partition): (next offset to read, cached end)}, for /status
        self._kafka_positions: dict[str, dict[tuple[str, int], tuple[int | None, int | None]]] = {}
        r.register(_KafkaLagCollector(self))

    def set_verify_runs(self, runs: Iterable[VerifyRun]) -> None:
        with self.lock:
            self.verify_runs = {(r.source, r.table): r for r in runs}

    def kafka_assigned(self, source: str, partitions: list[tuple[str, int]]) -> None:
        self.kafka_partitions.labels(source).set(len(partitions))
        with self.lock:
            keep = set(partitions)
            lags = self._kafka_lag.get(source, {})
            self._kafka_lag[source] = {k: v for k, v in lags.items() if k in keep}
            known = self._kafka_positions.get(source, {})
            self._kafka_positions[source] = {tp: known.get(tp, (None, None)) for tp in keep}

    def kafka_positions(
        self, source: str, positions: dict[tuple[str, int], tuple[int | None, int | None]]
    ) -> None:
        """The assigned partitions: the next offset this instance reads, and the partition's
        end as the client last saw it in a fetch response (cached, may lag a little)."""
        with self.lock:
            self._kafka_positions[source] = dict(positions)

    def _partitions_view(self, source: str) -> list[dict[str, object]] | None:
        positions = self._kafka_positions.get(source)
        if positions is None:
            return None
        return [
            {
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "end": end,
                "lag": None if offset is None or end is None else max(0, end - offset),
            }
            for (topic, partition), (offset, end) in sorted(positions.items())
        ]

    def kafka_lag(self, source: str, lags: dict[tuple[str, int], int]) -> None:
        """Records between what this instance has read and the high watermark the consumer
        last saw in a fetch response (not ListOffsets, which some brokers answer badly)."""
        with self.lock:
            self._kafka_lag.setdefault(source, {}).update(lags)

    def _add_operations_metrics(self, r: CollectorRegistry) -> None:
        """Metrics for operators: raw intake, snapshot progress, the JVM, replication slots
        and the process itself. Grouped here so other groups (Kafka) merge beside them."""
        self.received = Counter(
            "tunggal_events_received",
            "Raw events handed over by a source, before decoding (heartbeats included)",
            ["source"],
            registry=r,
        )
        self.probes = Probes()
        r.register(_ProbeCollector(self))
        self.incremental_rows = Counter(
            "tunggal_incremental_snapshot_rows",
            "Rows read again by incremental snapshots (a table added to the mappings, "
            "`tunggal resync`, `verify --repair`) and committed",
            ["source", "table"],
            registry=r,
        )
        self.incremental_running = Gauge(
            "tunggal_incremental_snapshot_running",
            "1 while an incremental snapshot of the source runs",
            ["source"],
            registry=r,
        )
        # source -> the incremental snapshot it runs or ran last, for /status and the bar
        self.incremental: dict[str, dict[str, Any]] = {}
        # client_python's defaults, in our registry rather than the global one (tests make many).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        if GC_COLLECTOR is not None:
            GCCollector(registry=r)
        # Zero series exist from the start, so `increase()` in an alert sees the first failure.
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.retries.labels("target")

    def set_snapshot(self, source: str, progress: SnapshotProgress | None) -> None:
        with self.lock:
            if progress is None:
                self.probes.snapshots.pop(source, None)
            else:
                self.probes.snapshots[source] = progress

    def set_row_estimates(self, source: str, estimates: Mapping[str, int]) -> None:
        with self.lock:
            self.probes.row_estimates[source] = dict(estimates)

    def set_slot_retained(self, source: str, slot: str, retained_bytes: float | None) -> None:
        with self.lock:
            self.probes.slot_names[source] = slot
            self.probes.slot_retained_bytes[source] = retained_bytes

    def set_server_slots(self, server: str, reading: ServerSlots) -> None:
        with self.lock:
            previous = self.probes.server_slots.get(server)
            if reading.slots is None and previous is not None:
                # Unreadable: keep the threshold, drop the slots (no stale values).
                reading = ServerSlots(None, previous.warn_bytes, previous.max_keep_bytes)
            self.probes.server_slots[server] = reading

    def set_jvm_heap(self, used: int | None, maximum: int | None) -> None:
        with self.lock:
            self.probes.jvm_heap_used, self.probes.jvm_heap_max = used, maximum

    def snapshot_status(self, source: str) -> dict[str, object] | None:
        """Per-table rows done of the estimated total, for /status and the progress display."""
        with self.lock:
            return self._snapshot_status(source)

    def _snapshot_status(self, source: str) -> dict[str, object] | None:
        snap = self.probes.snapshots.get(source)
        if snap is None:
            return None
        estimates = self.probes.row_estimates.get(source, {})
        # Debezium updates RowsScanned only every 10 s and at the end of a table; the snapshot
        # reads we committed tell more in between (and are what is really in the target).
        committed = self._snapshot_reads(source)
        tables: dict[str, dict[str, int | None]] = {}
        for table in sorted(set(snap.rows_scanned) | set(estimates) | set(committed)):
            estimate = estimates.get(table)
            tables[table] = {
                "rows": max(snap.rows_scanned.get(table, 0), committed.get(table, 0)),
                "estimated_rows": estimate if estimate is not None and estimate >= 0 else None,
            }
        return {
            "running": snap.running,
            "completed": snap.completed,
            "aborted": snap.aborted,
            "tables_done": snap.tables_done,
            "tables_total": snap.tables_total,
            "duration_seconds": snap.duration_s,
            "tables": tables,
        }

    def incremental_notice(
        self,
        source: str,
        request_id: str,
        kind: str,
        tables: Sequence[str],
        status: str | None,
        rows: int | None,
    ) -> None:
        """A committed notice about an incremental snapshot (see `Pipeline._notice`)."""
        with self.lock:
            current = self.incremental.get(source)
            if kind == "STARTED" or current is None or current["id"] != request_id:
                current = self.incremental[source] = {
                    "id": request_id,
                    "running": True,
                    "tables": list(tables),
                    "done": {},
                    "rows": {},
                }
            if kind == "TABLE_SCAN_COMPLETED" and tables:
                current["done"][tables[0]] = {"status": status, "rows": rows}
            elif kind in ("COMPLETED", "ABORTED"):
                current["running"] = False
                current["ended"] = kind.lower()
            running = current["running"]
        self.incremental_running.labels(source).set(1 if running else 0)

    def incremental_committed(self, source: str, table: str, rows: int) -> None:
        self.incremental_rows.labels(source, table).inc(rows)
        with self.lock:
            current = self.incremental.get(source)
            if current is not None:
                current["rows"][table] = current["rows"].get(table, 0) + rows

    def incremental_status(self, source: str) -> dict[str, Any] | None:
        """The source's incremental snapshot: per table rows read of the estimate, and done."""
        with self.lock:
            current = self.incremental.get(source)
            if current is None:
                return None
            estimates = self.probes.row_estimates.get(source, {})
            return {
                "id": current["id"],
                "running": current["running"],
                "ended": current.get("ended"),
                "tables": {
                    table: {
                        "rows": current["rows"].get(table, 0),
                        "estimated_rows": estimates.get(table),
                        "done": table in current["done"],
                        "status": current["done"].get(table, {}).get("status"),
                    }
                    for table in current["tables"] or sorted(current["rows"])
                },
            }

    def set_mapping(self, content_hash: str, files: tuple[str, ...] | list[str]) -> None:
        self.mapping.info({"hash": content_hash[:12], "files": ",".join(map(str, files))})

    def source(self, name: str, engine: str = "embedded") -> SourceState:
        with self.lock:
            state = self.sources.get(name)
            if state is None:
                state = self.sources[name] = SourceState(name, engine)
                self.up.labels(name).set(0)
                self.write_failing.labels(name).set(0)
                self.paused.labels(name, PAUSED_FLOOD).set(0)
                # Zero series per source, so `increase()` in an alert sees the first one.
                for counter in (self.dead_letters, self.restarts, self.received):
                    counter.labels(name)
                self.write_failures.labels(name)
            return state

    def set_state(self, name: str, state: str, error: str | None = None) -> None:
        s = self.source(name)
        s.state, s.error = state, error
        self._set_up(s)

    def _set_up(self, s: SourceState) -> None:
        streams = s.state in ("snapshot", "streaming") and s.write_error is None
        self.up.labels(s.name).set(1 if streams else 0)

    def source_paused(self, name: str, reason: str, text: str) -> None:
        s = self.source(name)
        s.paused, s.paused_since = text, self.clock()
        self.paused.labels(name, reason).set(1)
        self.set_state(name, "paused", text)

    def source_resumed(self, name: str) -> None:
        s = self.source(name)
        s.paused, s.paused_since = None, None
        for reason in (PAUSED_FLOOD,):
            self.paused.labels(name, reason).set(0)
        self.set_state(name, "starting")

    def target_failed(self, error: str) -> None:
        """A write or a read of the target failed (any thread): down until one succeeds."""
        with self.lock:
            if self.target.up:
                self.target.down_since = self.clock()
            self.target.up, self.target.error = False, error
        self.target_up.set(0)

    def target_ok(self) -> None:
        with self.lock:
            self.target = TargetState()
        self.target_up.set(1)

    def target_is_up(self) -> bool:
        with self.lock:
            return self.target.up

    def write_failed(self, sources: Iterable[str], error: str) -> None:
        """A batch holding these sources' events failed to commit; it is held and retried.
        Shown at once, from the writer thread, not when the next event arrives."""
        for name in sources:
            s = self.source(name)
            s.write_error = f"target write failed: {error}"
            self.write_failures.labels(name).inc()
            self.write_failing.labels(name).set(1)
            self._set_up(s)

    def write_recovered(self, sources: Iterable[str]) -> None:
        for name in sources:
            s = self.source(name)
            if s.write_error is not None:
                s.write_error = None
                self.write_failing.labels(name).set(0)
                self._set_up(s)

    def committed(
        self, source: str, events: int, position: int | None, commit_ts_us: int | None
    ) -> None:
        now = self.clock()
        s = self.source(source)
        with self.lock:
            s.events_applied += events
            if position is not None:
                s.position = position
            if commit_ts_us is not None:
                s.last_event_commit_ts_us = commit_ts_us
                self.lag.labels(source).observe(max(0.0, now - commit_ts_us / 1e6))
            s.last_target_commit = now
            mark_t, mark_n = s._rate_mark
            if mark_t and now > mark_t:
                instant = (s.events_applied - mark_n) / (now - mark_t)
                s.rate = instant if not s.rate else 0.7 * s.rate + 0.3 * instant
            s._rate_mark = (now, s.events_applied)

    def heartbeat(self, source: str, ts_us: int) -> None:
        """Everything the source committed up to `ts_us` has been applied: an idle source
        with heartbeats shows a small lag, a stalled one a growing lag."""
        s = self.source(source)
        with self.lock:
            s.last_event_commit_ts_us = max(s.last_event_commit_ts_us or 0, ts_us)

    def table_rows(self, table: str, action: str, count: int) -> None:
        if count:
            self.rows.labels(table, action).inc(count)
            with self.lock:
                counts = self.tables.setdefault(table, {})
                counts[action] = counts.get(action, 0) + count

    def _snapshot_reads(self, source: str) -> dict[str, int]:
        """Committed snapshot reads (op "r", any outcome) of the source, by table."""
        reads: dict[str, int] = {}
        for metric in self.events.collect():
            for sample in metric.samples:
                labels = sample.labels
                if (
                    sample.name.endswith("_total")
                    and labels["op"] == "r"
                    and labels["source"] == source
                ):
                    reads[labels["table"]] = reads.get(labels["table"], 0) + int(sample.value)
        return reads

    def _incremental_view(self, source: str) -> dict[str, Any] | None:
        # Called with the lock held (status); incremental_status takes it itself.
        current = self.incremental.get(source)
        if current is None:
            return None
        return {
            "id": current["id"],
            "running": current["running"],
            "tables": {t: current["rows"].get(t, 0) for t in current["tables"]},
            "done": sorted(current["done"]),
        }

    def status(self) -> dict[str, object]:
        now = self.clock()
        with self.lock:
            sources = []
            for s in self.sources.values():
                lag = (
                    max(0.0, now - s.last_event_commit_ts_us / 1e6)
                    if s.last_event_commit_ts_us
                    else None
                )
                # The rate is updated on commits: a source idle for a while has none.
                idle = s.last_target_commit is None or now - s.last_target_commit > 10
                sources.append(
                    {
                        "name": s.name,
                        "engine": s.engine,
                        "state": s.state,
                        "error": s.error or s.write_error,
                        # A string: PostgreSQL positions are 128-bit (commit epoch, change LSN),
                        # beyond what JSON readers take as a number.
                        "position": None if s.position is None else str(s.position),
                        "lag_seconds": lag,
                        "last_commit": s.last_target_commit,
                        "seconds_since_commit": (now - s.last_target_commit)
                        if s.last_target_commit
                        else None,
                        "events_applied": s.events_applied,
                        "paused": None
                        if s.paused is None
                        else {"reason": s.paused, "since": s.paused_since},
                        "events_per_second": 0.0 if idle else round(s.rate, 1),
                        "snapshot": self._snapshot_status(s.name),
                        "incremental_snapshot": self._incremental_view(s.name),
                        "slot_wal_retained_bytes": self.probes.slot_retained_bytes.get(s.name),
                        # Kafka sources: assigned partitions with offset, cached end and lag.
                        "partitions": self._partitions_view(s.name),
                    }
                )
            heap = self.probes.jvm_heap_used
            tables = {t: dict(c) for t, c in self.tables.items()}
            target = {
                "up": self.target.up,
                "down_since": self.target.down_since,
                "seconds_down": None
                if self.target.down_since is None
                else max(0.0, now - self.target.down_since),
                "error": self.target.error,
            }
        dead = _counter_total(self.dead_letters)
        return {
            "sources": sources,
            "target": target,
            "tables": tables,
            "dead_letters": dead,
            "mapping": _info_value(self.mapping),
            "dead_letters_current": _gauge_value(self.dead_letters_current),
            "jvm_heap_used_bytes": heap,
        }


def _counter_total(counter: Counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def _gauge_value(gauge: Gauge) -> float:
    return sum(s.value for m in gauge.collect() for s in m.samples)


def _info_value(info: Info) -> dict[str, str]:
    for metric in info.collect():
        for sample in metric.samples:
            return dict(sample.labels)
    return {}


class _LagCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        now = self.metrics.clock()
        lag = GaugeMetricFamily(
            "tunggal_source_lag_seconds",
            "Now minus the source commit time of the newest applied change",
            labels=["source"],
        )
        since = GaugeMetricFamily(
            "tunggal_seconds_since_last_commit",
            "Seconds since the last target transaction for the source",
            labels=["source"],
        )
        with self.metrics.lock:
            for s in self.metrics.sources.values():
                if s.last_event_commit_ts_us:
                    lag.add_metric([s.name], max(0.0, now - s.last_event_commit_ts_us / 1e6))
                if s.last_target_commit:
                    since.add_metric([s.name], now - s.last_target_commit)
        yield lag
        yield since


class _ProbeCollector(Collector):
    """Exports the latest readings of the slow pollers; a failed reading is left out."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        running = gauge(
            "tunggal_snapshot_running", "1 while the source's initial snapshot runs", ["source"]
        )
        completed = gauge(
            "tunggal_snapshot_completed", "1 once the source's snapshot completed", ["source"]
        )
        tables_total = gauge(
            "tunggal_snapshot_tables", "Tables the source's snapshot covers", ["source"]
        )
        tables_done = gauge(
            "tunggal_snapshot_tables_done", "Tables the source's snapshot finished", ["source"]
        )
        rows = gauge(
            "tunggal_snapshot_rows_scanned",
            "Rows the snapshot read so far, per source table",
            ["source", "table"],
        )
        estimated = gauge(
            "tunggal_snapshot_rows_estimated",
            "Estimated rows per source table (pg_class.reltuples)",
            ["source", "table"],
        )
        retained = gauge(
            "tunggal_replication_slot_wal_retained_bytes",
            "WAL the source keeps for the replication slot (current LSN - restart_lsn)",
            ["source", "slot"],
        )
        heap_used = gauge("tunggal_jvm_heap_used_bytes", "JVM heap in use (embedded engine)")
        heap_max = gauge("tunggal_jvm_heap_max_bytes", "JVM maximum heap (-Xmx)")
        probes = self.metrics.probes
        with self.metrics.lock:
            for source, snap in probes.snapshots.items():
                running.add_metric([source], float(snap.running))
                completed.add_metric([source], float(snap.completed))
                tables_total.add_metric([source], snap.tables_total)
                tables_done.add_metric([source], snap.tables_done)
                for table, n in snap.rows_scanned.items():
                    rows.add_metric([source, table], n)
            for source, estimates in probes.row_estimates.items():
                for table, n in estimates.items():
                    if n >= 0:
                        estimated.add_metric([source, table], n)
            for source, value in probes.slot_retained_bytes.items():
                if value is not None:
                    retained.add_metric([source, probes.slot_names[source]], value)
            if probes.jvm_heap_used is not None:
                heap_used.add_metric([], probes.jvm_heap_used)
            if probes.jvm_heap_max is not None and probes.jvm_heap_max >= 0:
                heap_max.add_metric([], probes.jvm_heap_max)
        yield from (running, completed, tables_total, tables_done, rows, estimated)
        yield from (retained, heap_used, heap_max)
        yield from _server_slot_families(probes.server_slots, self.metrics.lock)


def _server_slot_families(
    servers: Mapping[str, ServerSlots], lock: threading.Lock
) -> Iterable[Metric]:
    """Every watched slot of every source server, orphans included, and each server's
    threshold, so that one alert rule compares them (`... > on(server) group_left ...`)."""
    labels = ["server", "slot", "database", "source", "orphan"]
    retained = GaugeMetricFamily(
        "tunggal_replication_slot_retained_wal_bytes",
        "WAL the server keeps for each tunggal slot on it (current LSN - restart_lsn), "
        "orphans included (source empty, orphan=true)",
        labels=labels,
    )
    active = GaugeMetricFamily(
        "tunggal_replication_slot_active", "1 while a reader holds the slot", labels=labels
    )
    warn = GaugeMetricFamily(
        "tunggal_replication_slot_warn_bytes",
        "Retained WAL above which a slot is alerted on (slots.* settings, by default half "
        "of max_slot_wal_keep_size)",
        labels=["server"],
    )
    max_keep = GaugeMetricFamily(
        "tunggal_replication_slot_max_keep_bytes",
        "The server's max_slot_wal_keep_size (absent when unlimited)",
        labels=["server"],
    )
    readable = GaugeMetricFamily(
        "tunggal_replication_slot_server_readable",
        "1 when the server's slots were read at the last attempt",
        labels=["server"],
    )
    with lock:
        for server, reading in sorted(servers.items()):
            warn.add_metric([server], reading.warn_bytes)
            if reading.max_keep_bytes is not None:
                max_keep.add_metric([server], reading.max_keep_bytes)
            readable.add_metric([server], float(reading.slots is not None))
            for slot in reading.slots or ():
                key = [
                    server,
                    slot.slot,
                    slot.database,
                    slot.source or "",
                    "false" if slot.source else "true",
                ]
                active.add_metric(key, float(slot.active))
                if slot.retained_bytes is not None:
                    retained.add_metric(key, slot.retained_bytes)
    yield from (retained, active, warn, max_keep, readable)


@dataclass(frozen=True)
class VerifyRun:
    """The newest `tunggal verify` run of one source's rows in one target table."""

    source: str
    table: str
    finished: float  # unix time
    seconds: float
    rows: int
    missing: int
    extra: int
    differing: int
    unsettled: int
    unmappable: int


class _VerifyCollector(Collector):
    """`tunggal verify`'s latest results, as the probe last read them from the target."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        labels = ["source", "table"]
        rows = GaugeMetricFamily(
            "tunggal_verify_rows",
            "Rows the newest verify compared (the larger side)",
            labels=labels,
        )
        drift = GaugeMetricFamily(
            "tunggal_verify_drift_rows",
            "Rows the newest verify found drifted, by kind: missing, extra, differing, and "
            "unmappable (source rows the mapping or the target refuses)",
            labels=[*labels, "kind"],
        )
        unsettled = GaugeMetricFamily(
            "tunggal_verify_unsettled_rows",
            "Rows that differed but could not be confirmed (the target did not catch up)",
            labels=labels,
        )
        finished = GaugeMetricFamily(
            "tunggal_verify_last_run_timestamp_seconds",
            "When the newest verify of the table finished",
            labels=labels,
        )
        seconds = GaugeMetricFamily(
            "tunggal_verify_duration_seconds", "How long the newest verify took", labels=labels
        )
        with self.metrics.lock:
            runs = list(self.metrics.verify_runs.values())
        for run in runs:
            key = [run.source, run.table]
            rows.add_metric(key, run.rows)
            for kind in ("missing", "extra", "differing", "unmappable"):
                drift.add_metric([*key, kind], getattr(run, kind))
            unsettled.add_metric(key, run.unsettled)
            finished.add_metric(key, run.finished)
            seconds.add_metric(key, run.seconds)
        yield from (rows, drift, unsettled, finished, seconds)


class _KafkaLagCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            "tunggal_kafka_consumer_lag",
            "Records behind the partition's high watermark",
            labels=["source", "topic", "partition"],
        )
        with self.metrics.lock:
            for source, lags in self.metrics._kafka_lag.items():
                for (topic, partition), n in sorted(lags.items()):
                    lag.add_metric([source, topic, str(partition)], n)
        yield lag
