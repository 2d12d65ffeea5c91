"""Has the target caught up with a source position? The in-flight half of `tunggal verify`.

A row that differs may only be on its way: changed in the source, not yet applied. Verify
therefore confirms a difference only when, after the target has applied everything the source
committed up to a snapshot taken *after* the target row was read, the row still differs and
the target row has not changed meanwhile (`reconcile.verify`). This module answers "has the
target applied everything up to position P?":

- **embedded**: the replication slot's `confirmed_flush_lsn` >= P: the engine confirms a
  position only once the target committed what came before it (`sources.embedded`). Or the
  newest position committed in `tunggal_progress` is in a commit epoch >= P (the embedded
  stream arrives in commit order). A source with no change of its own since P gets Debezium
  `log` signals (the connector's `signal_table`), so that its stream, and the slot, pass P.
- **kafka**: Connect's slot confirmed P (so everything up to P is in Kafka), then every
  partition of the table's topic was consumed up to its end as read after that
  (`tunggal_kafka_offsets`, committed with the rows).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from tunggal.config import KafkaConfig
from tunggal.events.decode import EPOCH_SHIFT
from tunggal.reconcile.dialects import SourceDatabase

log = logging.getLogger(__name__)


class Watermark(Protocol):
    def reached(self, position: int) -> bool | None:
        """True once the target applied everything up to `position`; None: cannot tell."""

    def nudge(self) -> None:
        """Make the source's stream move (a source with no changes of its own)."""

    def close(self) -> None: ...


def _progress_epoch(target: psycopg.Connection[Any], source: str) -> int | None:
    row = target.execute(
        "SELECT position::text FROM public.tunggal_progress WHERE source = %s", (source,)
    ).fetchone()
    target.rollback()
    return None if row is None else int(row[0]) >> EPOCH_SHIFT


@dataclass
class EmbeddedWatermark:
    database: SourceDatabase
    source_conn: psycopg.Connection[Any]
    target_conn: psycopg.Connection[Any]
    source: str

    def reached(self, position: int) -> bool | None:
        confirmed = self.database.confirmed(self.source_conn)
        if confirmed is not None and confirmed >= position:
            return True
        epoch = _progress_epoch(self.target_conn, self.source)
        return epoch is not None and epoch >= position

    def nudge(self) -> None:
        self.database.mark(self.source_conn)

    def close(self) -> None:
        pass


@dataclass
class KafkaWatermark:
    database: SourceDatabase
    source_conn: psycopg.Connection[Any]
    target_conn: psycopg.Connection[Any]
    source: str
    kafka: KafkaConfig
    topics: Sequence[str]
    _ends: dict[int, dict[tuple[str, int], int]] = field(default_factory=dict)

    def reached(self, position: int) -> bool | None:
        confirmed = self.database.confirmed(self.source_conn)
        if confirmed is None:
            return None  # Connect's slot is not there: no way to tell what is in Kafka
        if confirmed < position:
            return False
        ends = self._ends.get(position)
        if ends is None:
            try:
                ends = self._ends[position] = topic_ends(self.kafka, self.topics)
            except Exception as exc:
                log.warning("verify: cannot read the ends of %s: %s", ", ".join(self.topics), exc)
                return None
        group = f"{self.kafka.group_id}.{self.source}"
        rows = self.target_conn.execute(
            "SELECT topic, partition, next_offset FROM public.tunggal_kafka_offsets "
            "WHERE consumer_group = %s AND topic = ANY(%s)",
            (group, list(self.topics)),
        ).fetchall()
        self.target_conn.rollback()
        stored = {(t, int(p)): int(o) for t, p, o in rows}
        return all(stored.get(tp, 0) >= end for tp, end in ends.items() if end > 0)

    def nudge(self) -> None:
        self.database.mark(self.source_conn)

    def close(self) -> None:
        pass


def topic_ends(kafka: KafkaConfig, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of `topics` (a partition's next offset)."""
    if kafka.client == "confluent-kafka":
        from confluent_kafka import Consumer, TopicPartition

        from tunggal.sources.kafka_clients import confluent_settings

        consumer = Consumer(confluent_settings(kafka, "tunggal-verify"))
        try:
            ends = {}
            for topic in topics:
                meta = consumer.list_topics(topic, timeout=10)
                for partition in meta.topics[topic].partitions:
                    _, high = consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=10
                    )
                    ends[(topic, int(partition))] = int(high)
            return ends
        finally:
            consumer.close()
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KafkaTopicPartition

    from tunggal.sources.kafka_clients import kafka_python_settings

    settings = kafka_python_settings(kafka, "tunggal-verify")
    settings.pop("group_id", None)
    settings.pop("group_instance_id", None)  # kafka-python refuses it without a group
    consumer = KafkaConsumer(**settings)
    try:
        parts = [
            KafkaTopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        return {(tp.topic, tp.partition): int(o) for tp, o in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def wait_for(
    watermark: Watermark,
    position: int,
    deadline: float,
    stop: threading.Event,
    *,
    clock: Callable[[], float] = time.monotonic,
    interval_s: float = 0.25,
    nudge_every_s: float = 1.0,
) -> bool | None:
    """Wait until the target passed `position` or `deadline`; True, False (not in time) or
    None (this source cannot tell).

    A source with no change of its own since `position` is nudged, once a second: the first
    nudge streams a transaction after `position`, the next one a transaction whose commit
    epoch (the end of the one before) is past it, so that once it is applied the target's
    progress says so; the slot confirms it too, a batch later.
    """
    next_nudge = clock()
    while True:
        try:
            done = watermark.reached(position)
        except psycopg.Error as exc:
            log.warning("verify: cannot read how far the target is: %s", exc)
            done = None
        if done is None or done:
            return done
        now = clock()
        if now >= next_nudge:
            with contextlib.suppress(psycopg.Error):
                watermark.nudge()
            next_nudge = now + nudge_every_s
        remaining = deadline - now
        if remaining <= 0:
            return False
        if stop.wait(min(interval_s, remaining)):
            return False
