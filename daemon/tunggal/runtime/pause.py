"""Sources paused by the flood stop: which ones, why, stopping them and starting them again.

The rule that decides is `runtime.flood` (pure); this is what the runner does about it. A
paused source is refused everything it still sends (never acknowledged, so delivered again),
stopped at the next batch boundary once what it sent before the trip is committed, and started
again when the mappings are reloaded: from its last committed position, so the events held
back are read again and mapped with the fixed mapping.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from tunggal.config import FloodStopConfig
from tunggal.errors import FatalError
from tunggal.metrics import PAUSED_FLOOD, Metrics
from tunggal.runtime.flood import FloodRule, FloodTrip, FloodWatch
from tunggal.runtime.pipeline import Processed
from tunggal.sources.base import Chunk, Deliver, Source

log = logging.getLogger(__name__)


class Pauses:
    def __init__(
        self, config: FloodStopConfig, metrics: Metrics, sources: Mapping[str, Source]
    ) -> None:
        self.watch = FloodWatch(FloodRule(config.min_failures, config.window_s, config.min_ratio))
        self.metrics = metrics
        self.sources = sources
        self.paused: dict[str, FloodTrip] = {}
        # Paused, still to be stopped at the next batch boundary; and those being stopped.
        self.to_stop: set[str] = set()
        self._stoppers: dict[str, threading.Thread] = {}

    def refuse(self, chunk: Chunk) -> bool:
        """Settle a paused source's chunk as not written (any thread); True if it was one."""
        if chunk.source not in self.paused:
            return False
        chunk.settle(FatalError(f"source {chunk.source} is paused"))
        return True

    def check(self, chunk: Chunk, processed: Processed, now: float) -> bool:
        """Feed the rule with one chunk's counts; pause its source if they trip it. True if
        the chunk is then held (settled as not written): the caller drops its work."""
        tripped = None
        for table, (events, failures, example) in processed.table_counts(chunk.source).items():
            trip = self.watch.observe(chunk.source, table, events, failures, now, example)
            tripped = tripped or trip
        if tripped is None:
            return False
        self._pause(chunk, tripped)
        return True

    def _pause(self, chunk: Chunk, trip: FloodTrip) -> None:
        name = trip.source
        self.paused[name] = trip
        self.to_stop.add(name)
        self.refuse(chunk)
        before = self.watch.failures_before_newest(name, trip.table)
        reason = (
            f"{trip.failures} of {trip.events} events of {trip.table} failed with "
            f"{trip.error_class} within {trip.window_s:g}s: the mapping looks broken, not the "
            "data"
        )
        self.metrics.source_paused(name, PAUSED_FLOOD, f"paused: {reason}")
        log.error(
            "source %s paused: %s (e.g. %s); nothing after its last committed position is "
            "acknowledged, the %d events in hand are held, not dead-lettered%s; fix the "
            "mapping and reload (SIGHUP, or save the file): the source resumes from there",
            name,
            reason,
            trip.example or "-",
            len(chunk.events),
            f"; {before} dead-lettered before the pause stay in tunggal_dead_letters "
            "(`tunggal dlq replay` once fixed)"
            if before > 0
            else "",
        )

    def stop_paused(self) -> None:
        """At a batch boundary, with what they sent before the trip committed: stop the newly
        paused sources, each on a thread of its own (the loop goes on meanwhile, refusing what
        they still send, so none waits on a full inbox and every one stops)."""
        for name in sorted(self.to_stop):
            self.to_stop.discard(name)
            stopper = threading.Thread(
                target=self.sources[name].close, name=f"tunggal-pause-{name}", daemon=True
            )
            stopper.start()
            self._stoppers[name] = stopper

    def resume_all(self, deliver: Deliver) -> None:
        """The mappings were reloaded: every paused source starts again from its last commit.
        A mapping still broken pauses it again after `min_failures` more failures at most."""
        for name in sorted(self.paused):
            self.release(name)
            log.info("source %s resumes after the mapping reload, from its last commit", name)
            self.metrics.restarts.labels(name).inc()
            self.sources[name].start(deliver)

    def release(self, name: str) -> None:
        """Unpause without starting (the caller starts it): once stopped, forgotten."""
        self.wait_stopped(name)
        if self.paused.pop(name, None) is None:
            return
        self.to_stop.discard(name)
        self.watch.forget(name)
        self.metrics.source_resumed(name)

    def wait_stopped(self, name: str | None = None) -> None:
        """Until the source (every paused one, for None) has stopped."""
        for key in [name] if name is not None else list(self._stoppers):
            stopper = self._stoppers.pop(key, None)
            if stopper is not None:
                stopper.join(30)

    def describe(self) -> list[str]:
        """For systemd's status line (any thread: a copy of the dict is taken first)."""
        return [
            f"source {name} paused: {trip.table} fails ({trip.error_class})"
            for name, trip in sorted(dict(self.paused).items())
        ]
