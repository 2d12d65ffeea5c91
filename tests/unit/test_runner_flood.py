"""The runner's side of the flood stop: the chunk that trips the rule is held (neither
dead-lettered nor acknowledged), what came before it is committed, the source is stopped and
refused until a mapping reload starts it again. The sink is the gated one of test_runner; the
rule itself is tested in test_flood, the whole path against Debezium and PostgreSQL in
tests/integration/test_flood_stop.py."""

from __future__ import annotations

import logging
import threading

import pytest

from tests.unit.test_runner import GatedSink
from tunggal.config import BatchConfig, FloodStopConfig, RetryConfig
from tunggal.events.model import RawEvent
from tunggal.mapping.ops import Upsert
from tunggal.metrics import Metrics
from tunggal.runtime.pipeline import Processed
from tunggal.runtime.runner import Runner
from tunggal.runtime.systemd import Notifier
from tunggal.sink.postgres import DeadLetter
from tunggal.sources.base import Chunk, Deliver


class SwitchPipeline:
    """Maps event n to row n, or fails every event while `broken` (a broken mapping)."""

    def __init__(self) -> None:
        self.broken = False

    def process(
        self,
        source: str,
        raws: list[RawEvent],
        into: Processed | None = None,
        *,
        log_poison: bool = True,
    ) -> Processed:
        out = into if into is not None else Processed()
        for raw in raws:
            assert raw.offset is not None
            if self.broken:
                out.dead_letters.append(
                    DeadLetter(source, "MappingError", "CEL failed", raw, "public.t")
                )
                out.count((source, "public.t", "?", "dead_letter"))
                continue
            out.count((source, "public.t", "c", "applied"))
            out.ops.append(
                (Upsert("public.t", (raw.offset,), {"v": 1}, source, raw.offset, 0), raw)
            )
        return out


class CountingSource:
    name = "s"
    engine = "replay"

    def __init__(self) -> None:
        self.starts = 0
        self.closes = 0
        self.closed = threading.Event()

    def start(self, deliver: Deliver) -> None:
        self.starts += 1
        self.closed.clear()

    def finished(self) -> bool:
        return False

    def close(self) -> None:
        self.closes += 1
        self.closed.set()


def events(first: int, end: int) -> Chunk:
    return Chunk("s", [RawEvent("s.public.t", None, "{}", offset=n) for n in range(first, end)])


def test_the_chunk_that_trips_the_rule_is_held_and_the_source_resumes_on_reload() -> None:
    sink, pipeline, source = GatedSink(), SwitchPipeline(), CountingSource()
    metrics = Metrics()
    runner = Runner(
        [source],
        pipeline,  # type: ignore[arg-type]
        sink,  # type: ignore[arg-type]
        metrics,
        batch=BatchConfig(max_size=3, max_age_ms=60_000),
        retry=RetryConfig(initial_delay_s=0.01, max_delay_s=0.02),
        notifier=Notifier({}),
        flood_stop=FloodStopConfig(min_failures=5, window_s=60, min_ratio=0.5),
        reloader=lambda: True,
    )
    runner.start()
    good = events(0, 3)
    runner.inbox.put(good)
    runner.run_once()  # due (3 events): written
    assert good.done.wait(5) and good.error is None

    pipeline.broken = True
    few, flood = events(3, 5), events(5, 12)
    runner.inbox.put(few)  # 2 failures: under the rule, kept (dead-lettered), not yet due
    runner.run_once()
    assert not few.done.is_set()
    runner.inbox.put(flood)  # 7 failures in one chunk trip it
    runner.run_once()
    assert flood.done.is_set() and flood.error is not None  # held: not acknowledged
    assert few.done.wait(5) and few.error is None  # what came before it is committed
    assert runner.totals["dead_letters"] == 2  # only those: none of the held chunk's
    status = metrics.source("s")
    assert status.state == "paused" and status.paused is not None
    assert "7 of 7 events of public.t failed with MappingError" in status.paused
    assert metrics.paused.labels("s", "dead_letter_flood")._value.get() == 1
    assert metrics.up.labels("s")._value.get() == 0

    runner.run_once()  # the batch boundary: the source is stopped
    assert source.closed.wait(5) and source.closes == 1
    late = events(12, 14)
    runner.deliver(late)  # what it still sends is refused at once, on its own thread
    assert late.done.is_set() and late.error is not None
    assert runner.inbox.empty()

    pipeline.broken = False  # the mapping fixed...
    runner.reload_requested.set()  # ...and reloaded
    runner.run_once()
    assert source.starts == 2  # started again, from its last commit
    assert runner.pauses is not None and runner.pauses.paused == {}
    assert metrics.source("s").state == "starting"
    assert metrics.paused.labels("s", "dead_letter_flood")._value.get() == 0
    again = events(5, 12)  # the held events, delivered again
    runner.inbox.put(again)
    runner.run_once()
    runner.close()
    assert again.done.is_set() and again.error is None
    written = sorted(row for batch in sink.batches for row, _ in batch)
    assert written == [0, 1, 2, *range(5, 12)]
    assert runner.totals["dead_letters"] == 2


def test_the_pause_line_counts_the_dead_letters_before_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, pipeline, source = GatedSink(), SwitchPipeline(), CountingSource()
    runner = Runner(
        [source],
        pipeline,  # type: ignore[arg-type]
        sink,  # type: ignore[arg-type]
        Metrics(),
        batch=BatchConfig(max_size=100, max_age_ms=60_000),
        notifier=Notifier({}),
        flood_stop=FloodStopConfig(min_failures=5, window_s=60, min_ratio=0.5),
    )
    runner.start()
    pipeline.broken = True
    with caplog.at_level(logging.ERROR):
        for first in range(0, 5):  # one failure a chunk: the fifth trips it
            runner.inbox.put(events(first, first + 1))
            runner.run_once()
    runner.close()
    (line,) = [r.getMessage() for r in caplog.records if "paused:" in r.getMessage()]
    assert "5 of 5 events" in line, line
    assert "4 dead-lettered before the pause stay in tunggal_dead_letters" in line, line
    assert runner.totals["dead_letters"] == 4
    poison = [r for r in caplog.records if "poison event" in r.getMessage()]
    assert len(poison) == 4  # one line per dead letter kept, none for the held event
