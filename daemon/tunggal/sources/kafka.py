"""Debezium topics on Kafka, consumed in a consumer group (confluent-kafka or kafka-python).

Exactly-once into the target: the offsets of the records in a batch are written in the same
target transaction as the rows (`tunggal_kafka_offsets`). On every partition assignment the
consumer seeks to the offsets stored in the target; Kafka's own committed offsets are only the
fallback for a partition the target has never seen. After each target commit the offsets are
also committed to Kafka, so that standard lag tools see the group's progress.

Rebalances: when partitions are revoked, the listener asks the runner to write the batch in
hand at once and waits until every chunk already handed to the runner is settled, so the next
owner of a partition starts exactly where this instance's last committed batch ended. With
cooperative-sticky assignment (confluent-kafka's default here) only the partitions changing
owner are revoked and assigned, and the others are read on throughout; the whole batch in hand
is still written at a revocation (the simplest safe choice: it may hold the revoked partitions'
records anywhere in it). Waiting
for the batch's maximum age instead could outlast the group's patience. If waiting times
out, a late commit is still harmless: row writes are guarded by source position, so events
applied twice change nothing.

Neither client's consumer is thread-safe: everything that touches it runs on this source's own
thread (rebalance callbacks included, inside poll); the runner only marks chunks settled.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import tenacity

from tunggal.config import KafkaConfig
from tunggal.events.model import HEARTBEAT_PREFIX, RawEvent
from tunggal.metrics import Metrics
from tunggal.sources.base import Chunk, Deliver, SourceFailure
from tunggal.sources.kafka_client_config import scrub
from tunggal.sources.kafka_clients import ClientError, ConsumerClient, open_client

log = logging.getLogger(__name__)

# (topic, partition) -> the next offset to read
Offsets = dict[tuple[str, int], int]
# (topic, partition) -> the next offset to read and the id of the topic it is an offset of
# (None when not known), as stored in the target with the rows
LoadOffsets = Callable[
    [str, Sequence[tuple[str, int]]], Mapping[tuple[str, int], tuple[int, str | None]]
]


class Held(Protocol):
    def close(self) -> None: ...


# Takes the group's "running" lock on the target (`tunggal kafka offsets reset` is refused
# while it is held); closing what it returns lets it go.
HoldGroupLock = Callable[[str], Held]
# How long the broker's answer about a partition's end stands in for a stale cached one.
END_ASKED_FOR_S = 5.0


def default_topic_pattern(prefix: str, tables: Iterable[str], notification_topic: str) -> str:
    """`<prefix>.<schema>.<table>` for every mapped table, plus Debezium's heartbeat topic
    (`__debezium-heartbeat.<prefix>`) and the notification topic, as one pattern: topics that
    do not exist yet are picked up when Connect creates them.

    `prefix` is the connector's `topic.prefix` (`ConnectorSpec.topic_prefix`: the source's name
    unless overridden); the notification topic is named by the source, not by the prefix
    (`ConnectorSpec.notification_topic`)."""
    names = [f"{prefix}.{t}" for t in sorted(set(tables))]
    names.append(f"{HEARTBEAT_PREFIX}.{prefix}")
    names.append(notification_topic)
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


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
        hold_group_lock: HoldGroupLock | None = None,
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
        self.hold_group_lock = hold_group_lock
        self._deliver: Deliver | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outstanding: list[Chunk] = []
        # offsets committed to the target, not yet to Kafka
        self._to_commit: Offsets = {}
        self._consumed: Offsets = {}
        # The partitions this instance holds: rebalances add and take away (incrementally).
        self._held: set[tuple[str, int]] = set()
        # topic -> its id when its partitions were assigned (None: the client gives none)
        self._topic_ids: dict[str, str | None] = {}
        self._client: ConsumerClient | None = None
        self._unreachable_since: float | None = None
        # (topic, partition) -> (when, end): the broker's answer, while the cached end lags
        self._ends_asked: dict[tuple[str, int], tuple[float, int]] = {}
        self._reported_down = False
        # Since when a group join is under way (subscribed, or partitions revoked) without
        # an assignment yet: None once one came, even an empty one.
        self._joining_since: float | None = None

    # -- Source protocol ---------------------------------------------------------------
    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._stop.clear()
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
        held = self._hold_group_lock()
        try:
            self._consume()
        finally:
            if held is not None:
                try:
                    held.close()
                except Exception as exc:
                    log.debug("letting the group lock go: %s", exc)

    def _hold_group_lock(self) -> Held | None:
        """Before any partition is read: an offsets reset must not run under us."""
        if self.hold_group_lock is None:
            return None
        try:
            return self.hold_group_lock(self.group_id)
        except Exception as exc:
            # Not a reason to stop consuming: the lock only guards the reset command.
            log.warning(
                "source %s: cannot take the group's lock on the target (%s); "
                "`tunggal kafka offsets reset` will not see this instance running",
                self.name,
                exc,
            )
            return None

    def _consume(self) -> None:
        assert self._deliver is not None
        try:
            client = open_client(self.kafka, self.group_id)
        except ClientError as exc:
            message = scrub(str(exc), self.kafka)  # a client may quote a refused value
            self._deliver(SourceFailure(self.name, f"cannot reach Kafka: {message}"))
            return
        self._client = client
        self._held.clear()
        self._joining_since = time.monotonic()
        client.subscribe(self.topics, self.topic_pattern, self._on_assign, self._on_revoke)
        log.info(
            "source %s: consuming %s in group %s (%s)",
            self.name,
            self.topic_pattern or ", ".join(self.topics),
            self.group_id,
            self.kafka.client,
        )
        self.metrics.set_state(self.name, "streaming")
        try:
            while not self._stop.is_set():
                self._commit_to_kafka()
                raws = client.poll(self.kafka.max_poll_records, 0.2)
                if raws:
                    self._hand_over(raws, caught_up=len(raws) < self.kafka.max_poll_records)
                self._record_lag()
                self._watch_connection()
        except Exception as exc:  # a consumer bug or a lost group: restart the source
            log.exception("kafka consumer for %s failed", self.name)
            self._deliver(SourceFailure(self.name, f"kafka consumer failed: {exc}"))
        finally:
            self._commit_to_kafka()
            self.metrics.kafka_assigned(self.name, [])
            try:
                client.close()
            except Exception as exc:
                log.debug("closing kafka consumer: %s", exc)

    def _hand_over(self, raws: list[RawEvent], *, caught_up: bool) -> None:
        offsets: Offsets = {}
        for raw in raws:
            assert raw.offset is not None
            offsets[(raw.destination, raw.partition)] = raw.offset + 1
        self._consumed.update(offsets)
        chunk = Chunk(
            self.name,
            raws,
            offsets={(self.group_id, t, p): o for (t, p), o in offsets.items()},
            on_settled=self._settled,
            caught_up=caught_up,
            topic_ids={(self.group_id, t): self._topic_ids.get(t) for t, _ in offsets},
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

    def _commit_to_kafka(self) -> None:
        with self._lock:
            pending, self._to_commit = self._to_commit, {}
        if not pending or not self.kafka.commit_to_kafka or self._client is None:
            return
        assigned = set(self._client.assignment())
        offsets = {tp: o for tp, o in pending.items() if tp in assigned}
        if not offsets:
            return
        try:
            self._client.commit(offsets)
        except Exception as exc:
            # Informational only: the target holds the offsets that count.
            log.warning("source %s: committing offsets to Kafka failed: %s", self.name, exc)

    def _restart_partition(self, tp: tuple[str, int], offset: int, high: int) -> None:
        """The next offset to read lies beyond the partition's end: the topic was deleted and
        re-created (or truncated). Kafka answers such a fetch with OFFSET_OUT_OF_RANGE, some
        brokers with nothing at all; either way, the records now there are new: read them all."""
        log.warning(
            "source %s: %s[%d] ends at %d, before the stored offset %d: the topic was "
            "re-created; reading it from the beginning",
            self.name,
            tp[0],
            tp[1],
            high,
            offset,
        )
        assert self._client is not None
        self._client.seek_to_beginning(tp)
        self._consumed[tp] = 0

    def _watch_connection(self) -> None:
        """Both clients retry a lost broker forever without raising, and a frozen (hung)
        broker keeps its connections open, so nothing fails at all: turn a broker that is
        unreachable, silent, or a group join that does not complete, for longer than the
        session timeout, into `up 0` and one WARNING; and back, with one INFO line."""
        assert self._client is not None
        now = time.monotonic()
        limit = self.kafka.session_timeout_ms / 1000
        if self._client.connected():
            self._unreachable_since = None
        elif self._unreachable_since is None:
            self._unreachable_since = now
        problem: str | None = None
        servers = ", ".join(self.kafka.bootstrap_servers)
        silent = self._client.silent_for()
        joining = self._client.joining_for()
        if self._joining_since is not None:
            joining = max(joining, now - self._joining_since)
        if (
            self._unreachable_since is not None
            and max(now - self._unreachable_since, silent) > limit
        ):
            problem = f"Kafka unreachable ({servers})"
        elif silent > limit:
            problem = f"Kafka broker or group coordinator silent for {silent:.0f}s ({servers})"
        elif joining > limit:
            problem = (
                f"Kafka group join not completed in {joining:.0f}s "
                f"(rebalance in progress?) ({servers})"
            )
        if problem is None:
            if self._reported_down:
                self._reported_down = False
                log.info("source %s: Kafka reachable again", self.name)
                self.metrics.set_state(self.name, "streaming")
            return
        if not self._reported_down:
            self._reported_down = True
            log.warning("source %s: %s; still retrying", self.name, problem)
            self.metrics.set_state(self.name, "failed", problem)

    def _record_lag(self) -> None:
        assert self._client is not None
        lags: dict[tuple[str, int], int] = {}
        positions: dict[tuple[str, int], tuple[int | None, int | None]] = {}
        for tp in self._client.assignment():
            high = self._client.highwater(tp)
            done = self._consumed.get(tp)
            positions[tp] = (done, high)
            if high is None or done is None:
                continue
            if done > high:
                high = self._end_asked(tp)
                if high is None:
                    continue  # the broker does not answer: conclude nothing yet
                if done > high:
                    self._restart_partition(tp, done, high)
                    done = 0
            lags[tp] = max(0, high - done)
            positions[tp] = (done, high)
        self.metrics.kafka_lag(self.name, lags)
        self.metrics.kafka_positions(self.name, positions)

    def _end_asked(self, tp: tuple[str, int]) -> int | None:
        """The partition's end as the broker says it now. The client's cached end can be the
        one from when this consumer last owned the partition (a rebalance gave it back), and
        stays so while no record comes: asked at most every few seconds per partition."""
        assert self._client is not None
        now = time.monotonic()
        asked = self._ends_asked.get(tp)
        if asked is not None and now - asked[0] < END_ASKED_FOR_S:
            return asked[1]
        high = self._client.end_offset(tp)
        if high is not None:
            self._ends_asked[tp] = (now, high)
        return high

    # -- rebalances (called inside consumer.poll, on this thread) ------------------------
    def wait_settled(self) -> bool:
        with self._lock:
            for chunk in self._outstanding:
                chunk.flush_requested = True
        deadline = time.monotonic() + self.revoke_timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                waiting = list(self._outstanding)
            if not waiting:
                return True
            waiting[0].done.wait(0.1)
        return False

    def _on_revoke(self, revoked: list[tuple[str, int]]) -> None:
        """Flush before giving partitions away: the next owner starts after our last commit."""
        if not self.wait_settled():
            log.warning(
                "source %s: batch in hand not committed within %.0fs of a rebalance; the next "
                "owner may apply it again (harmless: writes are guarded by position)",
                self.name,
                self.revoke_timeout_s,
            )
        self._commit_to_kafka()
        self._joining_since = time.monotonic()
        for tp in revoked:
            self._consumed.pop(tp, None)
            self._ends_asked.pop(tp, None)
        if not revoked:
            return  # kafka-python's first join: nothing held yet
        self._held.difference_update(revoked)
        self.metrics.kafka_assigned(self.name, sorted(self._held))
        log.info(
            "source %s: revoked %s; holding %s",
            self.name,
            _names(revoked),
            _names(sorted(self._held)),
        )

    def _on_assign(self, assigned: list[tuple[str, int]]) -> None:
        """Seek every partition added to the offset stored in the target with the rows."""
        assert self._client is not None
        self._joining_since = None
        self.metrics.kafka_rebalances.labels(self.name).inc()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.metrics.retries.labels("offsets").inc()
            log.warning(
                "source %s: cannot read stored offsets from the target (%s); retry in %.0fs",
                self.name,
                state.outcome.exception() if state.outcome else None,
                state.upcoming_sleep,
            )

        def sleep(seconds: float) -> None:
            self._stop.wait(seconds)  # stopping ends the wait at once

        # Until the target answers or we are stopping: reading no offsets would start the
        # partitions from Kafka's older committed ones.
        stored = tenacity.Retrying(
            wait=tenacity.wait_exponential(multiplier=0.5, max=30),
            stop=lambda _: self._stop.is_set(),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )(self.load_offsets, self.group_id, assigned)
        # Asked of the broker now, not cached: a topic deleted and re-created under the same
        # name has a new id, whatever its size.
        current = self._client.topic_ids(sorted({t for t, _ in assigned}))
        recreated: dict[str, list[int]] = {}
        for tp in assigned:
            self._topic_ids[tp[0]] = current.get(tp[0])
            if tp not in stored:
                continue
            offset, stored_id = stored[tp]
            if stored_id is not None and tp[0] in current and current[tp[0]] != stored_id:
                recreated.setdefault(tp[0], []).append(tp[1])
                self._client.seek_to_beginning(tp)
                self._consumed[tp] = 0
                continue
            self._client.seek(tp, offset)
            self._consumed[tp] = offset
        for topic, partitions in sorted(recreated.items()):
            log.warning(
                "source %s: topic %s was re-created (its id is %s, the stored offsets are of "
                "%s); reading partitions %s from the beginning",
                self.name,
                topic,
                current[topic],
                stored[(topic, partitions[0])][1],
                ", ".join(map(str, sorted(partitions))),
            )
        self._held.update(assigned)
        self.metrics.kafka_assigned(self.name, sorted(self._held))
        log.info(
            "source %s: assigned %s (from target offsets: %s); holding %s",
            self.name,
            _names(assigned),
            ", ".join(f"{t}[{p}]@{o}" for (t, p), (o, _) in sorted(stored.items())) or "none",
            _names(sorted(self._held)),
        )


def _names(partitions: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in partitions) or "nothing"
