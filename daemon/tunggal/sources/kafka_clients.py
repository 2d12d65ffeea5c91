"""Two Kafka consumer libraries behind one small interface, for `sources/kafka.py`.

- `kafka-python` (pure Python): the reference client.
- `confluent-kafka` (librdkafka): measured 19x faster at consuming Debezium messages on the
  development machine (271,000 vs 14,000 messages/s, 200,000 messages, 4 partitions), which is
  what lets one instance keep up with a busy source. The default.

Both are driven from one thread only (neither consumer is thread-safe); rebalance callbacks
run inside `poll()` on that thread.

Rebalances: confluent-kafka uses cooperative-sticky assignment by default (KIP-429, over the
classic group protocol): a join moves only the partitions that change owner, and the others are
read on throughout, so `on_revoke` and `on_assign` receive what is taken away and what is
added. kafka-python has no cooperative protocol: every rebalance revokes everything and assigns
everything again (eager), which the same callbacks handle as a special case.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from tunggal.config import KafkaConfig
from tunggal.events.model import RawEvent
from tunggal.sources.kafka_client_config import client_overrides

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
# How long asking the broker for a partition's end may take.
_END_OFFSET_TIMEOUT_MS = 5000
# confluent-kafka: ask the broker for metadata when nothing came for this long, waiting so long.
_PROBE_EVERY_S = 2.0
_PROBE_TIMEOUT_S = 1.0
# confluent-kafka: how often librdkafka reports its state (the group join's among it).
_STATS_EVERY_MS = 1000
OnPartitions = Callable[[list[TopicPartition]], None]
# The all-zero topic id (base64), which a broker without topic ids answers.
_NO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"


class _ConsumerOnly(logging.Filter):
    """The admin client (for topic ids) is given the consumer's settings, connection and
    security alike; librdkafka says of each consumer-only one that it ignores it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is a consumer property and will be ignored" not in record.getMessage()


_admin_log = logging.getLogger("tunggal.librdkafka.admin")
_admin_log.addFilter(_ConsumerOnly())


class ClientError(Exception):
    """The consumer could not be created (bad settings, no broker reachable at all)."""


class ConsumerClient(Protocol):
    def subscribe(
        self,
        topics: Sequence[str],
        pattern: str | None,
        on_assign: OnPartitions,
        on_revoke: OnPartitions,
    ) -> None:
        """`on_assign` gets the partitions added, `on_revoke` those taken away (everything,
        then everything again, in an eager rebalance)."""

    def poll(self, max_records: int, timeout_s: float) -> list[RawEvent]: ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Where an assigned partition starts; may be called from `on_assign`."""

    def seek_to_beginning(self, tp: TopicPartition) -> None: ...

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit to Kafka (informational: the target holds the offsets that count)."""

    def assignment(self) -> list[TopicPartition]: ...

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end as seen in the last fetch response; None if not known yet.
        Cheap, for the lag metric, but may be stale: after a partition comes back to this
        consumer it can still be the end seen when the consumer last owned it."""

    def end_offset(self, tp: TopicPartition) -> int | None:
        """The partition's end asked of the broker now (ListOffsets); None if it does not
        answer. For decisions, such as concluding that a topic was re-created."""

    def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        """Each topic's id (KIP-516) as the broker says it now; a topic whose id the client or
        broker cannot give is left out. Re-creating a topic gives it a new id."""

    def connected(self) -> bool:
        """False while the group coordinator / brokers cannot be reached."""

    def silent_for(self) -> float:
        """Seconds since the broker last answered (the group coordinator's heartbeat, or a
        probe). A frozen broker keeps its connections open, so `connected()` stays True: this
        is what tells a hung broker from an idle topic."""

    def joining_for(self) -> float:
        """Seconds the consumer has been in a group join that has not completed (0: none, or
        the client cannot tell). The coordinator answers everything meanwhile, so neither
        `connected()` nor `silent_for()` sees a join that never ends."""

    def close(self) -> None: ...


def open_client(kafka: KafkaConfig, group_id: str) -> ConsumerClient:
    if kafka.client == "confluent-kafka":
        return ConfluentClient(kafka, group_id)
    return KafkaPythonClient(kafka, group_id)


# -- kafka-python -----------------------------------------------------------------------------


def kafka_python_settings(kafka: KafkaConfig, group_id: str) -> dict[str, Any]:
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
        # An idle partition's fetch returns after this long: it bounds the added lag.
        "fetch_max_wait_ms": 100,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        settings["sasl_mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username is not None:
        settings["sasl_plain_username"] = kafka.sasl_username
    if kafka.sasl_password is not None:
        settings["sasl_plain_password"] = kafka.sasl_password
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        settings["ssl_check_hostname"] = kafka.ssl_check_hostname
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(kafka, key):
                settings[key] = getattr(kafka, key)
    # The operator's own settings, last: they may replace Tunggal's tuning above.
    settings.update(client_overrides(kafka))
    return settings


class KafkaPythonClient:
    def __init__(self, kafka: KafkaConfig, group_id: str) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        if not log.isEnabledFor(logging.DEBUG):
            # kafka-python logs every failed reconnect attempt as an ERROR; the source
            # reports a lost broker once, with its name.
            logging.getLogger("kafka.conn").setLevel(logging.CRITICAL)
            logging.getLogger("kafka.client").setLevel(logging.ERROR)
        try:
            self._consumer = KafkaConsumer(**kafka_python_settings(kafka, group_id))
        except KafkaError as exc:
            raise ClientError(str(exc)) from exc

    def subscribe(
        self,
        topics: Sequence[str],
        pattern: str | None,
        on_assign: OnPartitions,
        on_revoke: OnPartitions,
    ) -> None:
        from kafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Sequence[Any]) -> None:
                on_revoke([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned: Sequence[Any]) -> None:
                on_assign([(tp.topic, tp.partition) for tp in assigned])

        if pattern:
            self._consumer.subscribe(pattern=pattern, listener=Listener())
        else:
            self._consumer.subscribe(topics=list(topics), listener=Listener())

    def poll(self, max_records: int, timeout_s: float) -> list[RawEvent]:
        batch = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [
            RawEvent(r.topic, r.key, r.value, partition=r.partition, offset=r.offset)
            for records in batch.values()
            for r in records
        ]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        from kafka import TopicPartition as KTP

        self._consumer.seek(KTP(*tp), offset)

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        from kafka import TopicPartition as KTP

        self._consumer.seek_to_beginning(KTP(*tp))

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        from kafka import TopicPartition as KTP
        from kafka.structs import OffsetAndMetadata

        self._consumer.commit({KTP(*tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})

    def assignment(self) -> list[TopicPartition]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def highwater(self, tp: TopicPartition) -> int | None:
        from kafka import TopicPartition as KTP

        high = self._consumer.highwater(KTP(*tp))
        return None if high is None else int(high)

    def end_offset(self, tp: TopicPartition) -> int | None:
        from kafka import TopicPartition as KTP
        from kafka.errors import KafkaError

        try:
            # end_offsets() waits up to request_timeout_ms (305 s by default) for a partition
            # the broker does not know, as a deleted topic's: this loop must not stall so long.
            ends = self._consumer._fetcher.end_offsets([KTP(*tp)], _END_OFFSET_TIMEOUT_MS)
        except KafkaError as exc:
            log.debug("end offset of %s[%d]: %s", tp[0], tp[1], exc)
            return None
        high = ends.get(KTP(*tp))
        return None if high is None else int(high)

    def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        # kafka-python asks for metadata up to version 8; topic ids came with version 10.
        return {}

    def connected(self) -> bool:
        try:
            return bool(self._consumer._coordinator.connected())
        except Exception:  # private API: never let a change in it stop consumption
            return True

    def silent_for(self) -> float:
        # The heartbeat thread records each answer of the group coordinator (and resets the
        # clock when a coordinator is found or a join completes); wall-clock times, theirs.
        try:
            coordinator = self._consumer._coordinator
            if coordinator.rebalance_in_progress():
                # No heartbeats are sent while joining: a join that does not complete is
                # timed by the source from on_revoke, which begins every (eager) join.
                return 0.0
            heartbeat = coordinator.heartbeat
            answered = max(heartbeat.last_receive, heartbeat.last_reset)
        except Exception:  # private API: never let a change in it stop consumption
            return 0.0
        return max(0.0, time.time() - float(answered))

    def joining_for(self) -> float:
        # Eager rebalances only: every join starts with on_revoke, which the source times.
        return 0.0

    def close(self) -> None:
        self._consumer.close(autocommit=False)


# -- confluent-kafka ----------------------------------------------------------------------------


def confluent_settings(kafka: KafkaConfig, group_id: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "bootstrap.servers": ",".join(kafka.bootstrap_servers),
        "group.id": group_id,
        "client.id": kafka.client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": min(kafka.heartbeat_interval_ms, kafka.session_timeout_ms // 3),
        # An instance joining or leaving moves only the partitions that change owner; the
        # others' instances go on reading and committing meanwhile (range, the librdkafka
        # default, stops the whole group for every join). client_config may set an eager one.
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.max.bytes": kafka.fetch_max_bytes,
        "max.partition.fetch.bytes": min(kafka.fetch_max_bytes, 8 * 1024 * 1024),
        "topic.metadata.refresh.interval.ms": 30_000,
        # An idle partition's fetch returns after this long: it bounds the added lag.
        "fetch.wait.max.ms": 100,
        # librdkafka prefetches up to 64 MB by default: peak RSS 247-256 MB at full speed,
        # 191-206 MB with 16 MB (still ~30,000 messages, six batches), at the same rate.
        "queued.max.messages.kbytes": 16384,
        "security.protocol": kafka.security_protocol.lower(),
    }
    if kafka.sasl_mechanism:
        settings["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username is not None:
        settings["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password is not None:
        settings["sasl.password"] = kafka.sasl_password
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        settings["ssl.endpoint.identification.algorithm"] = (
            "https" if kafka.ssl_check_hostname else "none"
        )
        for ours, theirs in (
            ("ssl_cafile", "ssl.ca.location"),
            ("ssl_certfile", "ssl.certificate.location"),
            ("ssl_keyfile", "ssl.key.location"),
        ):
            if getattr(kafka, ours):
                settings[theirs] = getattr(kafka, ours)
    # The operator's own settings, last: they may replace Tunggal's tuning above.
    settings.update(client_overrides(kafka))
    return settings


class ConfluentClient:
    def __init__(self, kafka: KafkaConfig, group_id: str) -> None:
        from confluent_kafka import Consumer, KafkaException

        self._down = False
        self._probed_at = 0.0
        self._answered_at = time.monotonic()
        # Since when librdkafka's group join has not been steady, as its statistics say.
        self._joining_since: float | None = None
        settings = confluent_settings(kafka, group_id)
        settings["error_cb"] = self._on_error
        # A cooperative join calls no callback until its SyncGroup is answered, and librdkafka
        # shows its join state nowhere else. client_config may change the interval.
        settings.setdefault("statistics.interval.ms", _STATS_EVERY_MS)
        settings["stats_cb"] = self._on_stats
        settings["logger"] = logging.getLogger("tunggal.librdkafka")
        # Cooperative (incremental) or eager rebalances: librdkafka refuses a mix of the two.
        strategy = str(settings.get("partition.assignment.strategy", ""))
        self.incremental = "cooperative" in strategy.lower()
        try:
            self._consumer = Consumer(settings)
        except KafkaException as exc:
            raise ClientError(str(exc)) from exc
        # Offsets chosen inside on_assign, applied when the partitions are assigned.
        self._seeks: dict[TopicPartition, int] | None = None
        # For topic ids (the consumer's metadata does not carry them): made when first asked.
        self._settings = settings
        self._admin: Any = None

    def _on_error(self, error: Any) -> None:
        from confluent_kafka import KafkaError

        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._down = True
        log.debug("librdkafka: %s", error)

    def _on_stats(self, stats: str) -> None:
        """Called inside poll(), on the consumer's thread."""
        try:
            state = orjson.loads(stats).get("cgrp", {}).get("join_state")
        except (orjson.JSONDecodeError, AttributeError) as exc:
            log.debug("librdkafka statistics: %s", exc)
            return
        if state is None or state == "steady":
            self._joining_since = None
        elif self._joining_since is None:
            self._joining_since = time.monotonic()

    def subscribe(
        self,
        topics: Sequence[str],
        pattern: str | None,
        on_assign: OnPartitions,
        on_revoke: OnPartitions,
    ) -> None:
        from confluent_kafka import OFFSET_INVALID

        def assigned(consumer: Any, partitions: list[Any]) -> None:
            # Cooperative: only the partitions added (librdkafka calls this with none too, at
            # the end of every rebalance); eager: the whole new assignment.
            self._joining_since = None  # a join the statistics have not reported steady yet
            self._seeks = {}
            try:
                on_assign([(p.topic, p.partition) for p in partitions])
                for p in partitions:
                    p.offset = self._seeks.get((p.topic, p.partition), OFFSET_INVALID)
            finally:
                self._seeks = None
            # OFFSET_INVALID: the group's committed offset, else auto.offset.reset.
            if self.incremental:
                consumer.incremental_assign(partitions)
            else:
                consumer.assign(partitions)

        def revoked(consumer: Any, partitions: list[Any]) -> None:
            # Also called for partitions lost (the session expired): the flush it triggers
            # may then race the next owner, which the target's position guard makes harmless.
            on_revoke([(p.topic, p.partition) for p in partitions])
            if self.incremental:
                consumer.incremental_unassign(partitions)
            else:
                consumer.unassign()

        # librdkafka reads a subscription that starts with ^ as a regular expression.
        names = [pattern if pattern.startswith("^") else f"^{pattern}"] if pattern else topics
        self._consumer.subscribe(list(names), on_assign=assigned, on_revoke=revoked)

    def poll(self, max_records: int, timeout_s: float) -> list[RawEvent]:
        # consume() waits for max_records or the whole timeout, which delays every message by
        # up to the timeout when traffic is light. So: what librdkafka has fetched already; if
        # that is nothing, wait for one message only, then take what came with it.
        messages = self._consumer.consume(num_messages=max_records, timeout=0)
        if not messages:
            first = self._consumer.poll(timeout_s)
            if first is not None:
                messages = [first]
                if max_records > 1:
                    messages += self._consumer.consume(num_messages=max_records - 1, timeout=0)
        out: list[RawEvent] = []
        for m in messages:
            error = m.error()
            if error is not None:
                if not error.retriable() and error.fatal():
                    raise RuntimeError(f"Kafka consumer: {error}")
                log.debug("consume error (retried by librdkafka): %s", error)
                continue
            out.append(
                RawEvent(
                    str(m.topic()),
                    m.key(),
                    m.value(),
                    partition=int(m.partition() or 0),
                    offset=m.offset(),
                )
            )
        if out:
            self._down = False
            self._answered_at = time.monotonic()
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._seeks is not None:  # inside on_assign
            self._seeks[tp] = offset
            return
        from confluent_kafka import TopicPartition as CTP

        self._consumer.seek(CTP(tp[0], tp[1], offset))

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        from confluent_kafka import OFFSET_BEGINNING
        from confluent_kafka import TopicPartition as CTP

        if self._seeks is not None:  # inside on_assign
            self._seeks[tp] = OFFSET_BEGINNING
            return
        self._consumer.seek(CTP(tp[0], tp[1], OFFSET_BEGINNING))

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        from confluent_kafka import TopicPartition as CTP

        self._consumer.commit(
            offsets=[CTP(t, p, o) for (t, p), o in offsets.items()], asynchronous=True
        )

    def assignment(self) -> list[TopicPartition]:
        return [(p.topic, p.partition) for p in self._consumer.assignment()]

    def highwater(self, tp: TopicPartition) -> int | None:
        from confluent_kafka import TopicPartition as CTP

        try:
            _, high = self._consumer.get_watermark_offsets(CTP(*tp), cached=True)
        except Exception:
            return None
        return int(high) if high is not None and high >= 0 else None

    def end_offset(self, tp: TopicPartition) -> int | None:
        from confluent_kafka import KafkaException
        from confluent_kafka import TopicPartition as CTP

        try:
            _, high = self._consumer.get_watermark_offsets(
                CTP(*tp), timeout=_END_OFFSET_TIMEOUT_MS / 1000, cached=False
            )
        except KafkaException as exc:
            log.debug("end offset of %s[%d]: %s", tp[0], tp[1], exc)
            return None
        return int(high) if high is not None and high >= 0 else None

    def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        from confluent_kafka import KafkaException, TopicCollection
        from confluent_kafka.admin import AdminClient

        if not topics:
            return {}
        if self._admin is None:
            settings = {k: v for k, v in self._settings.items() if k != "error_cb"}
            settings["logger"] = _admin_log
            self._admin = AdminClient(settings)
        ids: dict[str, str] = {}
        timeout = _END_OFFSET_TIMEOUT_MS / 1000
        futures = self._admin.describe_topics(
            TopicCollection(sorted(set(topics))), request_timeout=timeout
        )
        for name, future in futures.items():
            try:
                topic_id = future.result(timeout=timeout).topic_id
            except (KafkaException, TimeoutError) as exc:  # gone, or the broker is slow
                log.debug("topic id of %s: %s", name, exc)
                continue
            # A broker without topic ids answers the all-zero id.
            if topic_id is not None and str(topic_id) not in ("", _NO_TOPIC_ID):
                ids[name] = str(topic_id)
        return ids

    def connected(self) -> bool:
        if self._down and time.monotonic() - self._probed_at > 2.0:
            # librdkafka reconnects by itself but says nothing when it succeeds: ask.
            self._probed_at = time.monotonic()
            try:
                self._consumer.list_topics(timeout=1.0)
                self._down = False
            except Exception:
                pass
        return not self._down

    def silent_for(self) -> float:
        # librdkafka shows no heartbeat answers, and a request to a frozen broker only times
        # out after socket.timeout.ms (60 s): ask for metadata, briefly, when nothing came.
        now = time.monotonic()
        if now - self._answered_at > _PROBE_EVERY_S:
            try:
                self._consumer.list_topics(timeout=_PROBE_TIMEOUT_S)
                self._answered_at = time.monotonic()
            except Exception as exc:
                log.debug("metadata probe: %s", exc)
        return max(0.0, time.monotonic() - self._answered_at)

    def joining_for(self) -> float:
        if self._joining_since is None:
            return 0.0
        return time.monotonic() - self._joining_since

    def close(self) -> None:
        self._consumer.close()


# -- partition bounds, for `tunggal kafka offsets` ------------------------------------------------

Bounds = dict[TopicPartition, tuple[int, int]]


def partition_bounds(kafka: KafkaConfig, group_id: str, wanted: Callable[[str], bool]) -> Bounds:
    """Each partition's beginning and end, asked of the broker now, for the topics `wanted`
    accepts. The consumer made for this never subscribes, so it never joins the group."""
    if kafka.client == "confluent-kafka":
        return _confluent_bounds(kafka, group_id, wanted)
    return _kafka_python_bounds(kafka, group_id, wanted)


def _kafka_python_bounds(
    kafka: KafkaConfig, group_id: str, wanted: Callable[[str], bool]
) -> Bounds:
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(**kafka_python_settings(kafka, group_id))
        try:
            parts = [
                KTP(topic, p)
                for topic in sorted(t for t in consumer.topics() if wanted(t))
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            if not parts:
                return {}
            low = consumer.beginning_offsets(parts)
            high = consumer.end_offsets(parts)
        finally:
            consumer.close(autocommit=False)
    except KafkaError as exc:
        raise ClientError(str(exc)) from exc
    return {(tp.topic, tp.partition): (int(low[tp]), int(high[tp])) for tp in parts}


def _confluent_bounds(kafka: KafkaConfig, group_id: str, wanted: Callable[[str], bool]) -> Bounds:
    from confluent_kafka import Consumer, KafkaException
    from confluent_kafka import TopicPartition as CTP

    timeout = _END_OFFSET_TIMEOUT_MS / 1000
    try:
        consumer = Consumer(confluent_settings(kafka, group_id))
        try:
            topics = consumer.list_topics(timeout=timeout).topics
            bounds: Bounds = {}
            for name in sorted(t for t in topics if wanted(t)):
                for p in sorted(topics[name].partitions):
                    low, high = consumer.get_watermark_offsets(
                        CTP(name, p), timeout=timeout, cached=False
                    )
                    bounds[(name, p)] = (int(low), int(high))
        finally:
            consumer.close()
    except KafkaException as exc:
        raise ClientError(str(exc)) from exc
    return bounds
