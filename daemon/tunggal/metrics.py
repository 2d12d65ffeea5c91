"""Prometheus metrics, owned by one injected object with its own registry.

Lag is computed at scrape time (a custom collector), so a stalled source shows a growing lag
instead of the last value it happened to have.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
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
    rate: float = 0.0  # events/s, exponentially smoothed
    _rate_mark: tuple[float, int] = field(default=(0.0, 0), repr=False)


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
        self.restarts = Counter(
            "tunggal_source_restarts", "Sources restarted after a failure", ["source"], registry=r
        )
        r.register(_LagCollector(self))
        # -- Kafka sources ------------------------------------------------------------------
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
        r.register(_KafkaLagCollector(self))

    def kafka_assigned(self, source: str, partitions: list[tuple[str, int]]) -> None:
        self.kafka_partitions.labels(source).set(len(partitions))
        with self.lock:
            keep = set(partitions)
            lags = self._kafka_lag.get(source, {})
            self._kafka_lag[source] = {k: v for k, v in lags.items() if k in keep}

    def kafka_lag(self, source: str, lags: dict[tuple[str, int], int]) -> None:
        """Records between what this instance has read and the high watermark the consumer
        last saw in a fetch response (not ListOffsets, which some brokers answer badly)."""
        with self.lock:
            self._kafka_lag.setdefault(source, {}).update(lags)

    def set_mapping(self, content_hash: str, files: tuple[str, ...] | list[str]) -> None:
        self.mapping.info({"hash": content_hash[:12], "files": ",".join(map(str, files))})

    def source(self, name: str, engine: str = "embedded") -> SourceState:
        with self.lock:
            state = self.sources.get(name)
            if state is None:
                state = self.sources[name] = SourceState(name, engine)
                self.up.labels(name).set(0)
            return state

    def set_state(self, name: str, state: str, error: str | None = None) -> None:
        s = self.source(name)
        s.state, s.error = state, error
        self.up.labels(name).set(1 if state in ("snapshot", "streaming") else 0)

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

    def status(self) -> dict[str, object]:
        now = self.clock()
        with self.lock:
            sources = []
            for s in self.sources.values():
                lag = (now - s.last_event_commit_ts_us / 1e6) if s.last_event_commit_ts_us else None
                sources.append(
                    {
                        "name": s.name,
                        "engine": s.engine,
                        "state": s.state,
                        "error": s.error,
                        "position": s.position,
                        "lag_seconds": lag,
                        "last_commit": s.last_target_commit,
                        "seconds_since_commit": (now - s.last_target_commit)
                        if s.last_target_commit
                        else None,
                        "events_applied": s.events_applied,
                        "events_per_second": round(s.rate, 1),
                    }
                )
            tables = {t: dict(c) for t, c in self.tables.items()}
        dead = _counter_total(self.dead_letters)
        return {
            "sources": sources,
            "tables": tables,
            "dead_letters": dead,
            "mapping": _info_value(self.mapping),
        }


def _counter_total(counter: Counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


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
