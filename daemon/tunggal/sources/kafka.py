"""Debezium topics on Kafka, consumed in a consumer group (kafka-python).

Exactly-once into the target: the offsets of the records in a batch are written in the same
target transaction as the rows (`tunggal_kafka_offsets`). On every partition assignment the
consumer seeks to the offsets stored in the target; Kafka's own committed offsets are only the
fallback for a partition the target has never seen. After each target commit the offsets are
also committed to Kafka, so that standard lag tools see the group's progress.

Rebalances: when partitions are revoked, the listener waits until every chunk already handed
to the runner is settled (the runner flushes within `batch.max_age_ms`), so the next owner of a
partition starts exactly where this instance's last committed batch ended. If waiting times
out, a late commit is still harmless: row writes are guarded by source position, so events
applied twice change nothing.

kafka-python's consumer is not thread-safe: everything that touches it runs on this source's
own thread; the runner only marks chunks settled.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener

from tunggal.config import KafkaConfig
from tunggal.events.model import RawEvent
from tunggal.metrics import Metrics
from tunggal.sources.base import Chunk, Deliver, SourceFailure

log = logging.getLogger(__name__)

# (topic, partition) -> the next offset to read
Offsets = dict[tuple[str, int], int]
LoadOffsets = Callable[[str, Sequence[tuple[str, int]]], Offsets]

HEARTBEAT_TOPIC = "__debezium-heartbeat.{prefix}"


def default_topic_pattern(prefix: str, tables: Iterable[str]) -> str:
    """`<prefix>.<schema>.<table>` for every mapped table, plus Debezium's heartbeat topic,
    as one pattern: topics that do not exist yet are picked up when Connect creates them."""
    names = [f"{prefix}.{t}" for t in sorted(set(tables))]
    names.append(HEARTBEAT_TOPIC.format(prefix=prefix))
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def consumer_settings(kafka: KafkaConfig, group_id: str) -> dict[str, Any]:
    """kafka-python keyword arguments; offsets are ours to commit, never automatic."""
    settings: dict[str, Any] = {
        "bootstrap_servers": list(kafka.bootstrap_servers),
        "group_id": group_id,
        "client_id": kafka.client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": kafka.auto_offset_reset,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": min(kafka.heartbeat_interval_ms, kafka.session_timeout_ms // 3),
        "max_poll_records": kafka.max_poll_records,
        "fetch_max_bytes": kafka.fetch_max_bytes,
        "max_partition_fetch_bytes": min(kafka.fetch_max_bytes, 8 * 1024 * 1024),
        # kafka-python's default frame limit (1 MB) is below its own default fetch size:
        # a full fetch response would be refused as an "invalid frame".
        "receive_message_max_bytes": kafka.fetch_max_bytes + 1024 * 1024,
        # New Debezium topics (a table added to the mappings) are found within this time.
        "metadata_max_age_ms": 30_000,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        settings["sasl_mechanism"] = kafka.sasl_mechanism
        settings["sasl_plain_username"] = kafka.sasl_username
        settings["sasl_plain_password"] = kafka.sasl_password
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        settings["ssl_check_hostname"] = kafka.ssl_check_hostname
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(kafka, key):
                settings[key] = getattr(kafka, key)
    return settings


class KafkaSource:
    engine = "kafka"

    def __init__(
        self,
        name: str,
        kafka: KafkaConfig,
        *,
        topics: Sequence[str] = (),
        topic_pattern: str | None = None,
        load_offsets: LoadOffsets,
        metrics: Metrics,
        revoke_timeout_s: float = 30.0,
    ) -> None:
        if not topics and not topic_pattern:
            raise ValueError("a Kafka source needs topics or a topic pattern")
        self.name = name
        self.kafka = kafka
        self.group_id = f"{kafka.group_id}.{name}"
        self.topics = tuple(topics)
        self.topic_pattern = topic_pattern
        self.load_offsets = load_offsets
        self.metrics = metrics
        self.revoke_timeout_s = revoke_timeout_s
        self._deliver: Deliver | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outstanding: list[Chunk] = []
        # offsets committed to the target, not yet to Kafka
        self._to_commit: Offsets = {}
        self._consumed: Offsets = {}
        self._unreachable_since: float | None = None
        self._reported_down = False

    # -- Source protocol ---------------------------------------------------------------
    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._stop.clear()
        self.metrics.source(self.name, engine="kafka")
        self.metrics.set_state(self.name, "starting")
        self._thread = threading.Thread(
            target=self._run, name=f"tunggal-kafka-{self.name}", daemon=True
        )
        self._thread.start()

    def finished(self) -> bool:
        return False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            if self._thread.is_alive():
                log.warning("kafka consumer for %s did not stop in time", self.name)
            self._thread = None

    # -- the consumer thread -------------------------------------------------------------
    def _run(self) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        assert self._deliver is not None
        if not log.isEnabledFor(logging.DEBUG):
            # kafka-python logs every failed reconnect attempt as an ERROR; _watch_connection
            # reports a lost broker once, with the source's name.
            logging.getLogger("kafka.conn").setLevel(logging.CRITICAL)
            logging.getLogger("kafka.client").setLevel(logging.ERROR)
        try:
            consumer = KafkaConsumer(**consumer_settings(self.kafka, self.group_id))
        except KafkaError as exc:
            self._deliver(SourceFailure(self.name, f"cannot reach Kafka: {exc}"))
            return
        listener = _Rebalance(self, consumer)
        if self.topic_pattern:
            consumer.subscribe(pattern=self.topic_pattern, listener=listener)
        else:
            consumer.subscribe(topics=list(self.topics), listener=listener)
        log.info(
            "source %s: consuming %s in group %s",
            self.name,
            self.topic_pattern or ", ".join(self.topics),
            self.group_id,
        )
        self.metrics.set_state(self.name, "streaming")
        try:
            while not self._stop.is_set():
                self._commit_to_kafka(consumer)
                batch = consumer.poll(timeout_ms=200, max_records=self.kafka.max_poll_records)
                if batch:
                    self._hand_over(batch)
                self._record_lag(consumer)
                self._watch_connection(consumer)
        except Exception as exc:  # a consumer bug or a lost group: restart the source
            log.exception("kafka consumer for %s failed", self.name)
            self._deliver(SourceFailure(self.name, f"kafka consumer failed: {exc}"))
        finally:
            self._commit_to_kafka(consumer)
            self.metrics.kafka_assigned(self.name, [])
            try:
                consumer.close(autocommit=False)
            except Exception as exc:
                log.debug("closing kafka consumer: %s", exc)

    def _hand_over(self, batch: Mapping[Any, list[Any]]) -> None:
        raws: list[RawEvent] = []
        offsets: Offsets = {}
        for tp, records in batch.items():
            for record in records:
                raws.append(
                    RawEvent(
                        destination=record.topic,
                        key=record.key,
                        value=record.value,
                        partition=record.partition,
                        offset=record.offset,
                    )
                )
            offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
        self._consumed.update(offsets)
        chunk = Chunk(
            self.name,
            raws,
            offsets={(self.group_id, t, p): o for (t, p), o in offsets.items()},
            on_settled=self._settled,
        )
        with self._lock:
            self._outstanding.append(chunk)
        assert self._deliver is not None
        self._deliver(chunk)

    def _settled(self, chunk: Chunk) -> None:
        """Runner thread: the chunk's rows and offsets are in the target (or failed)."""
        with self._lock:
            if chunk in self._outstanding:
                self._outstanding.remove(chunk)
            if chunk.error is None:
                for (_, topic, partition), offset in chunk.offsets.items():
                    key = (topic, partition)
                    self._to_commit[key] = max(offset, self._to_commit.get(key, 0))

    def _commit_to_kafka(self, consumer: Any) -> None:
        with self._lock:
            pending, self._to_commit = self._to_commit, {}
        if not pending or not self.kafka.commit_to_kafka:
            return
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        assigned = consumer.assignment()
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for (t, p), o in pending.items()
            if TopicPartition(t, p) in assigned
        }
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except Exception as exc:
            # Informational only: the target holds the offsets that count.
            log.warning("source %s: committing offsets to Kafka failed: %s", self.name, exc)

    def _restart_partition(self, consumer: Any, tp: Any, offset: int, high: int) -> None:
        """The next offset to read lies beyond the partition's end: the topic was deleted and
        re-created (or truncated). Kafka answers such a fetch with OFFSET_OUT_OF_RANGE, some
        brokers with nothing at all; either way, the records now there are new: read them all."""
        log.warning(
            "source %s: %s[%d] ends at %d, before the stored offset %d: the topic was "
            "re-created; reading it from the beginning",
            self.name,
            tp.topic,
            tp.partition,
            high,
            offset,
        )
        consumer.seek_to_beginning(tp)
        self._consumed[(tp.topic, tp.partition)] = 0

    def _watch_connection(self, consumer: Any) -> None:
        """kafka-python retries a lost broker forever without raising: turn a coordinator
        that stays unreachable longer than the session timeout into `up 0` and a log line."""
        try:
            connected = bool(consumer._coordinator.connected())
        except Exception:  # private API: never let a change in it stop consumption
            return
        now = time.monotonic()
        if connected:
            self._unreachable_since = None
            if self._reported_down:
                self._reported_down = False
                log.info("source %s: Kafka reachable again", self.name)
                self.metrics.set_state(self.name, "streaming")
            return
        if self._unreachable_since is None:
            self._unreachable_since = now
        elif not self._reported_down and (
            now - self._unreachable_since > self.kafka.session_timeout_ms / 1000
        ):
            self._reported_down = True
            message = (
                f"Kafka group coordinator unreachable ({', '.join(self.kafka.bootstrap_servers)})"
            )
            log.error("source %s: %s; still retrying", self.name, message)
            self.metrics.set_state(self.name, "failed", message)

    def _record_lag(self, consumer: Any) -> None:
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            done = self._consumed.get((tp.topic, tp.partition))
            if done is None:
                continue
            if done > high:
                self._restart_partition(consumer, tp, done, high)
                done = 0
            lags[(tp.topic, tp.partition)] = max(0, high - done)
        self.metrics.kafka_lag(self.name, lags)

    # -- rebalances (called inside consumer.poll, on this thread) ------------------------
    def wait_settled(self) -> bool:
        deadline = time.monotonic() + self.revoke_timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                waiting = list(self._outstanding)
            if not waiting:
                return True
            waiting[0].done.wait(0.1)
        return False

    def seek_to_stored(self, consumer: Any, assigned: Sequence[Any]) -> None:
        keys = [(tp.topic, tp.partition) for tp in assigned]
        stored: Offsets | None = None
        delay = 0.5
        while stored is None:
            try:
                stored = self.load_offsets(self.group_id, keys)
            except Exception as exc:
                if self._stop.is_set():
                    raise
                log.warning(
                    "source %s: cannot read stored offsets from the target (%s); retry in %.0fs",
                    self.name,
                    exc,
                    delay,
                )
                self.metrics.retries.labels("offsets").inc()
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None:
                consumer.seek(tp, offset)
                self._consumed[(tp.topic, tp.partition)] = offset
        log.info(
            "source %s: assigned %s (from target offsets: %s)",
            self.name,
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in assigned) or "nothing",
            ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(stored.items())) or "none",
        )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Flush before giving partitions away; seek to the target's offsets on receiving them."""

    def __init__(self, source: KafkaSource, consumer: Any) -> None:
        self.source = source
        self.consumer = consumer

    def on_partitions_revoked(self, revoked: Sequence[Any]) -> None:
        source = self.source
        if not source.wait_settled():
            log.warning(
                "source %s: batch in hand not committed within %.0fs of a rebalance; the next "
                "owner may apply it again (harmless: writes are guarded by position)",
                source.name,
                source.revoke_timeout_s,
            )
        source._commit_to_kafka(self.consumer)
        for tp in revoked:
            source._consumed.pop((tp.topic, tp.partition), None)

    def on_partitions_assigned(self, assigned: Sequence[Any]) -> None:
        source = self.source
        source.metrics.kafka_rebalances.labels(source.name).inc()
        source.seek_to_stored(self.consumer, assigned)
        source.metrics.kafka_assigned(
            source.name, [(tp.topic, tp.partition) for tp in self.consumer.assignment()]
        )
