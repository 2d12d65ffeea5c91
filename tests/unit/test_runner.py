"""The runner's hand-off to its writer thread: the loop decodes the next batch while one is
written, and still acknowledges nothing before its commit, keeps batches in order, swaps a
mapping only between writes and commits the work in hand on a graceful stop.

The sink here is gated: a write blocks until the test opens the gate, so "while batch 1 is
being written" is a state the test holds the runner in, not a race it hopes to hit."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import pytest

from tunggal.config import BatchConfig, RetryConfig
from tunggal.errors import FatalError, TransientError
from tunggal.events.model import RawEvent
from tunggal.mapping.ops import Upsert
from tunggal.metrics import Metrics
from tunggal.runtime.gc_tuning import SWEEP_EVERY_S
from tunggal.runtime.pipeline import Processed
from tunggal.runtime.runner import Runner
from tunggal.runtime.systemd import Notifier
from tunggal.sink.collapse import Segment
from tunggal.sink.postgres import BatchResult
from tunggal.sources.base import Chunk, Deliver


class VersionedPipeline:
    """Maps event n to row n holding the mapping version it was decoded with."""

    def __init__(self) -> None:
        self.version = 1
        self.decoded: list[int] = []

    def process(self, source: str, raws: list[RawEvent], into: Processed) -> Processed:
        for raw in raws:
            assert raw.offset is not None
            self.decoded.append(raw.offset)
            op = Upsert("public.t", (raw.offset,), {"v": self.version}, source, raw.offset, 0)
            into.ops.append((op, raw))
        return into


class GatedSink:
    """Records each committed batch as [(row, mapping version)]; a write waits for `gate`."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()
        self.batches: list[list[tuple[int, int]]] = []
        self.failures: list[BaseException] = []  # raised by the next writes, in turn
        self.offsets: list[dict[tuple[str, str, int], int]] = []  # committed with each batch
        self.introspected = 0

    def check_ready(self) -> None:
        pass

    def introspect(self) -> dict[str, Any]:
        self.introspected += 1
        return {}

    def count_dead_letters(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def write(
        self,
        steps: Sequence[Any],
        progress: Any,
        dead_letters: Any,
        offsets: dict[tuple[str, str, int], int] | None = None,
        *_: Any,
    ) -> BatchResult:
        self.writing.set()
        try:
            assert self.gate.wait(10), "the test never opened the gate"
            if self.failures:
                raise self.failures.pop(0)
            rows = [
                (p.op.key[0], p.op.values["v"])
                for step in steps
                if isinstance(step, Segment)
                for p in step.rows.values()
            ]
            self.batches.append(sorted(rows))
            self.offsets.append(dict(offsets or {}))
            return BatchResult(reached_target=True)
        finally:
            self.writing.clear()


class ListSource:
    name = "s"
    engine = "replay"

    def __init__(self, chunks: list[Chunk]) -> None:
        self.chunks = chunks
        self.done = threading.Event()

    def start(self, deliver: Deliver) -> None:
        def run() -> None:
            for chunk in self.chunks:
                deliver(chunk)
            self.done.set()

        threading.Thread(target=run, daemon=True).start()

    def finished(self) -> bool:
        return self.done.is_set()

    def close(self) -> None:
        pass


def chunk(first: int, end: int, acks: dict[int, int], sink: GatedSink) -> Chunk:
    """Events first..end-1; `acks[first]` records how many batches were committed when the
    chunk was settled, so a test sees whether an acknowledgement came before its commit."""

    def settled(c: Chunk) -> None:
        acks[first] = len(sink.batches)

    events = [RawEvent("s.public.t", None, "{}", offset=n) for n in range(first, end)]
    return Chunk("s", events, on_settled=settled)


def make_runner(
    sink: GatedSink, pipeline: VersionedPipeline, sources: list[ListSource] | None = None
) -> Runner:
    return Runner(
        sources or [],
        pipeline,  # type: ignore[arg-type]
        sink,  # type: ignore[arg-type]
        Metrics(),
        batch=BatchConfig(max_size=3, max_age_ms=60_000),
        retry=RetryConfig(initial_delay_s=0.01, max_delay_s=0.02),
        notifier=Notifier({}),
    )


def test_next_batch_is_decoded_while_one_is_written_and_acked_only_after_its_commit() -> None:
    sink, pipeline, acks = GatedSink(), VersionedPipeline(), {}
    runner = make_runner(sink, pipeline)
    runner.start()
    sink.gate.clear()
    a, b = chunk(0, 3, acks, sink), chunk(3, 5, acks, sink)
    runner.inbox.put(a)
    runner.run_once()  # three events: due, handed to the writer, which blocks
    assert sink.writing.wait(5)
    runner.inbox.put(b)
    runner.run_once()
    assert pipeline.decoded == [0, 1, 2, 3, 4]  # b decoded while a is being written
    assert not a.done.is_set() and sink.batches == []  # nothing acknowledged before its commit
    sink.gate.set()
    assert a.done.wait(5) and a.error is None
    runner.close()  # a graceful stop commits b too
    assert sink.batches == [[(0, 1), (1, 1), (2, 1)], [(3, 1), (4, 1)]]
    assert acks == {0: 1, 3: 2} and b.error is None


def test_a_partition_read_again_from_the_start_commits_its_new_offset() -> None:
    """A Kafka topic re-created while a batch holds records of its old incarnation: the source
    reads the partition again from offset 0 (`KafkaSource._restart_partition`), and the batch
    must store the new incarnation's offset. The old, higher one would make the next start
    skip every new record below it (kafka-python stores no topic id to catch that)."""
    sink, pipeline, acks = GatedSink(), VersionedPipeline(), {}
    runner = make_runner(sink, pipeline)
    runner.start()
    partition = ("g", "s.public.t", 0)
    old, new = chunk(0, 2, acks, sink), chunk(2, 3, acks, sink)
    old.offsets[partition] = 1000  # the old topic, read up to 999
    new.offsets[partition] = 1  # the new one, read from 0
    runner.inbox.put(old)
    runner.inbox.put(new)
    runner.run_once()  # the old records; the new ones wait in the inbox: not due
    runner.run_once()  # three events: due
    runner.close()
    assert sink.batches == [[(0, 1), (1, 1), (2, 1)]]
    assert sink.offsets == [{partition: 1}]


def test_reload_applies_from_a_batch_boundary_after_the_write_in_flight() -> None:
    """Events decoded with the old mapping before the reload are written with it; the swap
    waits for that write, and every event is written once, by one mapping."""
    sink, pipeline, acks = GatedSink(), VersionedPipeline(), {}
    runner = make_runner(sink, pipeline)
    seen: list[tuple[bool, int]] = []

    def reload() -> bool:
        seen.append((sink.writing.is_set(), len(sink.batches)))
        pipeline.version = 2
        return True

    runner.reloader = reload
    runner.start()
    sink.gate.clear()
    runner.inbox.put(chunk(0, 3, acks, sink))
    runner.run_once()  # batch 1 in flight
    assert sink.writing.wait(5)
    runner.inbox.put(chunk(3, 5, acks, sink))
    runner.run_once()  # decoded ahead with mapping 1, not due yet
    runner.reload_requested.set()  # arrives in the middle of batch 2
    runner.inbox.put(chunk(5, 6, acks, sink))
    threading.Timer(0.2, sink.gate.set).start()
    runner.run_once()  # batch 2 due: waits for batch 1, then goes to the writer
    assert seen == []  # not in the middle of a batch
    runner.inbox.put(chunk(6, 9, acks, sink))
    runner.run_once()  # boundary: waits for batch 2, reloads, decodes with mapping 2
    assert seen == [(False, 2)]
    runner.close()
    assert sink.batches == [
        [(0, 1), (1, 1), (2, 1)],
        [(3, 1), (4, 1), (5, 1)],
        [(6, 2), (7, 2), (8, 2)],
    ]
    assert acks == {0: 1, 3: 2, 5: 2, 6: 3}


def test_failed_write_acknowledges_neither_it_nor_the_batch_decoded_behind_it() -> None:
    """A write that keeps failing holds its batch until the daemon stops; stopping raises the
    error and nothing, neither the batch nor the one decoded behind it, is acknowledged."""
    sink, pipeline, acks = GatedSink(), VersionedPipeline(), {}
    sink.failures = [FatalError("boom")] * 1000
    a, b = chunk(0, 3, acks, sink), chunk(3, 6, acks, sink)
    runner = make_runner(sink, pipeline, [ListSource([a, b])])
    threading.Timer(0.5, runner.stop.set).start()
    with pytest.raises(FatalError, match="boom"):
        runner.run()
    assert sink.batches == []
    assert a.done.is_set() and isinstance(a.error, FatalError)
    assert b.done.is_set() and b.error is not None
    assert acks == {0: 0, 3: 0}


def test_a_failed_write_is_reported_at_once_and_the_batch_held_until_it_commits() -> None:
    """The last batch fails and no event follows it: the loop, idle, is not what notices.
    /status, tunggal_source_up and the failure metrics say so while the batch is held (the
    gate keeps it in its backoff), and the retry after a non-transient failure reads the
    target's tables again; the commit clears them."""
    sink, pipeline, acks = GatedSink(), VersionedPipeline(), {}
    sink.failures = [FatalError("target table public.t does not exist")]
    runner = Runner(
        [],
        pipeline,  # type: ignore[arg-type]
        sink,  # type: ignore[arg-type]
        Metrics(),
        batch=BatchConfig(max_size=3, max_age_ms=60_000),
        retry=RetryConfig(initial_delay_s=1.0, max_delay_s=1.0),
        notifier=Notifier({}),
    )
    runner.start()
    runner.metrics.set_state("s", "streaming")
    a = chunk(0, 3, acks, sink)
    runner.inbox.put(a)
    runner.run_once()  # due: handed to the writer, which fails, then sleeps before its retry
    m = runner.metrics

    def sample(name: str) -> float | None:
        return m.registry.get_sample_value(name, {"source": "s"})

    deadline = time.monotonic() + 0.8  # well inside the 1 s backoff: no retry yet
    while sample("tunggal_target_write_failing") != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    status = m.status()["sources"][0]  # type: ignore[index]
    assert "does not exist" in status["error"]
    assert sample("tunggal_source_up") == 0
    assert sample("tunggal_target_write_failures_total") == 1
    assert not a.done.is_set()  # held, not acknowledged
    assert a.done.wait(5) and a.error is None  # the retry commits it
    assert sink.introspected == 1 and sink.batches == [[(0, 1), (1, 1), (2, 1)]]
    assert m.status()["sources"][0]["error"] is None  # type: ignore[index]
    assert sample("tunggal_source_up") == 1 and sample("tunggal_target_write_failing") == 0
    runner.close()


def test_transient_failure_is_retried_on_the_writer_thread_in_order() -> None:
    sink, pipeline, acks = GatedSink(), VersionedPipeline(), {}
    sink.failures = [TransientError("connection lost")]
    chunks = [chunk(n, n + 3, acks, sink) for n in (0, 3, 6)]
    runner = make_runner(sink, pipeline, [ListSource(chunks)])
    runner.run(until_idle=True)
    assert [rows[0][0] for rows in sink.batches] == [0, 3, 6]
    assert acks == {0: 1, 3: 2, 6: 3}
    assert all(c.error is None for c in chunks)
    assert runner.totals == {"events": 9, "batches": 3, "dead_letters": 0}


def test_a_caught_up_chunk_is_written_at_once_unless_more_is_waiting() -> None:
    sink, pipeline, acks = GatedSink(), VersionedPipeline(), {}
    runner = make_runner(sink, pipeline)
    runner.batch = BatchConfig(max_size=100, max_age_ms=60_000)
    runner.start()
    a, b, c, d = (chunk(n, n + 1, acks, sink) for n in range(4))
    b.caught_up = d.caught_up = True
    runner.inbox.put(a)
    runner.run_once()
    assert not a.done.wait(0.3)  # one event and 60 s to go: it waits for more
    # b says the source has read all there is, but c is already waiting behind it; and c,
    # taken next, came from a full poll.
    runner.inbox.put(b)
    runner.inbox.put(c)
    runner.run_once()
    runner.run_once()
    assert runner._chunks == [a, b, c] and not a.done.wait(0.3)
    runner.inbox.put(d)
    runner.run_once()
    assert a.done.wait(5) and d.done.wait(5)
    assert sink.batches == [[(0, 1), (1, 1), (2, 1), (3, 1)]]
    runner.close()


class _Node:
    cycle: _Node | None = None


def test_cyclic_garbage_is_swept_between_batches_about_once_a_minute() -> None:
    # The daemon raises the collector's thresholds (runtime.gc_tuning); this sweep is what
    # bounds how long a garbage cycle can hold memory. With automatic collection off, only the
    # sweep can free the cycle below.
    now = [1000.0]
    runner = Runner(
        [],
        VersionedPipeline(),  # type: ignore[arg-type]
        GatedSink(),  # type: ignore[arg-type]
        Metrics(),
        notifier=Notifier({}),
        clock=lambda: now[0],
    )
    node = _Node()
    node.cycle = node
    alive = weakref.ref(node)
    del node
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        now[0] += SWEEP_EVERY_S - 1
        runner.run_once()
        assert alive() is not None, "swept before a minute had passed"
        now[0] += 1
        runner.run_once()
        assert alive() is None, "not swept after a minute"
    finally:
        if was_enabled:
            gc.enable()
    runner.close()
