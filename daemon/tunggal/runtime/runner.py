"""The main loop: take chunks from the sources, batch, write, then acknowledge.

Shape (arq/huey): `start()`, `run_once()`, `run()`, with `close()` in a `finally`. Sources run
in their own threads and hand chunks over through one bounded queue. Decoding and mapping
happen here, on the loop's thread; a batch is written, committed and acknowledged on one writer
thread, so that the loop decodes the next batch while PostgreSQL works on this one (psycopg
releases the GIL while it waits for the server). At most one batch is in flight: `flush` waits
for the previous write before it hands over the next, so batches commit in the order they
were taken and the order of one source's events is kept. Worked example, batches A, B, C:
    loop: decode A | flush A -> writer | decode B            | flush B: wait A, -> writer | ...
    writer:                           | write A, commit, ack A | write B, commit, ack B     | ...
Work that must not overlap a write (a mapping reload, a source restart) first waits for the
writer to be idle, so a reload never changes the mapping or the sink's targets under a batch.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import tenacity

from tunggal.config import BatchConfig, FloodStopConfig, RetryConfig
from tunggal.errors import FatalError, TransientError, TunggalError
from tunggal.metrics import Metrics
from tunggal.runtime.gc_tuning import SWEEP_EVERY_S
from tunggal.runtime.pause import Pauses
from tunggal.runtime.pipeline import Pipeline, Processed, report_poison
from tunggal.runtime.systemd import Notifier, status_line
from tunggal.sink.collapse import collapse
from tunggal.sink.postgres import BatchResult, PostgresSink, RequestUpdate
from tunggal.sources.base import Chunk, Source, SourceConnected, SourceFailure

log = logging.getLogger(__name__)

# A refused mapping reload is tried again after this long, doubling up to the maximum.
RELOAD_RETRY_S = 15.0
RELOAD_RETRY_MAX_S = 120.0
# How often, between batches, the target is read (its dead letters counted): how soon a target
# gone down shows while nothing is written.
TARGET_CHECK_S = 15.0


class Runner:
    def __init__(
        self,
        sources: Sequence[Source],
        pipeline: Pipeline,
        sink: PostgresSink,
        metrics: Metrics,
        *,
        batch: BatchConfig | None = None,
        retry: RetryConfig | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        shutdown_grace_s: float = 8.0,
        on_batch: Callable[[], None] | None = None,
        notifier: Notifier | None = None,
        reloader: Callable[[], bool] | None = None,
        flood_stop: FloodStopConfig | None = None,
    ) -> None:
        self.sources = list(sources)
        self.pipeline = pipeline
        self.sink = sink
        self.metrics = metrics
        self.batch = batch or BatchConfig()
        self.retry = retry or RetryConfig()
        self.stop = stop or threading.Event()
        self.clock = clock
        self.shutdown_grace_s = shutdown_grace_s
        # Called on the writer thread after each commit.
        self.on_batch = on_batch
        self.notifier = notifier or Notifier({})
        self.reloader = reloader
        # Set by SIGHUP or the file watcher; honoured between batches.
        self.reload_requested = threading.Event()
        self._by_name = {s.name: s for s in self.sources}
        self._streamed: set[str] = set()
        self._restart_at: dict[str, float] = {}
        self._restart_attempts: dict[str, int] = {}
        self._dead_count_at = 0.0
        self._target_read_failed = False
        self._swept_at = clock()
        # A refused reload is tried again by itself: what made it fail (a table the mapping
        # needs, `tunggal schema --apply` not run yet) is often fixed outside the files.
        self._reload_retry_at: float | None = None
        self._reload_backoff = RELOAD_RETRY_S
        self.inbox: queue.Queue[Chunk | SourceFailure | SourceConnected] = queue.Queue(maxsize=16)
        # The flood stop (`runtime.flood`, `runtime.pause`); None when switched off (and for
        # `tunggal replay`, which an operator runs on purpose, file by file).
        self.pauses = (
            Pauses(flood_stop, metrics, self._by_name)
            if flood_stop is not None and flood_stop.enabled
            else None
        )
        # Sources that reached their database (said `ready` once each).
        self._connected: set[str] = set()
        self._status_text = ""
        self._status_lock = threading.Lock()
        self._closing = threading.Event()
        self._chunks: list[Chunk] = []
        self._pending = Processed()
        self._pending_events = 0
        self._oldest: float | None = None
        # The one batch being written, and how many events it holds (for the last words).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunggal-writer")
        self._writing: Future[None] | None = None
        self._writing_events = 0
        self.started = False
        self._failed = False
        # Set by the writer after a failure that is not transient: the sink reads the target's
        # tables again before the next attempt (the casts it writes with follow the fix).
        self._reread_target = False
        self.totals = {"events": 0, "batches": 0, "dead_letters": 0}

    # -- wiring ------------------------------------------------------------------------
    def deliver(self, item: Chunk | SourceFailure | SourceConnected) -> None:
        """Called by source threads. Blocks while the runner is behind (back-pressure)."""
        if isinstance(item, Chunk) and self.pauses is not None and self.pauses.refuse(item):
            # Refused at once, on the source's thread: a paused source never waits on a full
            # inbox, so it stops when asked. Not acknowledged: delivered again on resume.
            return
        while not self._closing.is_set():
            try:
                self.inbox.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        if isinstance(item, Chunk):
            # Never settled, so never acknowledged: the source delivers it again next start.
            item.settle(FatalError("shutting down"))

    def start(self) -> None:
        self.sink.check_ready()
        self.metrics.target_ok()
        for source in self.sources:
            self.metrics.source(source.name, source.engine)
            source.start(self.deliver)
        self.started = True

    # -- the loop -------------------------------------------------------------------------
    def run(self, *, until_idle: bool = False) -> None:
        try:
            self.start()
            # Start-up checks passed (config, mappings, target): systemd's READY. The sources
            # say `ready` each once they reach their database (`_connected_now`).
            self.notifier.ready()
            if self.sources:
                log.info("started: connecting to %s", ", ".join(s.name for s in self.sources))
            else:
                log.info("ready: reading from -")  # nothing to connect to
            while not self.stop.is_set():
                self.notifier.watchdog()
                self.run_once()
                self._watch_connections()
                self._report_status()
                if until_idle and self._idle():
                    break
        except BaseException:
            # A fatal error acknowledges nothing: don't try to commit the batch in hand again.
            # Stopping also ends the retries of a batch still in flight, so close() returns.
            self._failed = True
            self.stop.set()
            raise
        finally:
            self.close()

    def _idle(self) -> bool:
        return all(s.finished() for s in self.sources) and self.inbox.empty() and not self._chunks

    def run_once(self) -> None:
        if not self._chunks:
            self._between_batches()
        timeout = 0.1
        if self._oldest is not None:
            age_left = self._oldest + self.batch.max_age_ms / 1000 - self.clock()
            timeout = max(0.0, min(timeout, age_left))
        try:
            item = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            item = None
        if isinstance(item, SourceConnected):
            self._connected_now(item.source)
            item = None
        if isinstance(item, SourceFailure):
            if self.pauses is not None and item.source in self.pauses.paused:
                # Stopped on purpose; it starts afresh when the mapping is fixed.
                log.debug("paused source %s: %s", item.source, item.message)
            else:
                self._source_failed(item)
            item = None
        if item is not None:
            self._take(item)
        if self._due():
            self.flush()

    def _between_batches(self) -> None:
        """Work that must not split a batch: mapping reloads, source restarts, housekeeping.

        No event is decoded and unwritten here (`_chunks` is empty), and a reload or restart
        first waits for the batch in flight: events decoded with the old mapping are written
        and committed with the old mapping and targets, and the new mapping applies to every
        event taken afterwards. Nothing is decoded twice or by both mappings.
        """
        now = self.clock()
        reload = self.reload_requested.is_set() and self.reloader is not None
        stopping = self.pauses is not None and bool(self.pauses.to_stop)
        if reload or stopping or any(now >= due for due in self._restart_at.values()):
            self._wait_written()
        if self.pauses is not None and stopping:
            # Paused: what it delivered before the trip is committed now (and acknowledged by
            # the source as it stops); the rest was refused, so it is delivered again.
            for name in self.pauses.to_stop:
                self._restart_at.pop(name, None)
            self.pauses.stop_paused()
        if reload:
            assert self.reloader is not None
            self.reload_requested.clear()
            if self.reloader():
                self._reload_retry_at, self._reload_backoff = None, RELOAD_RETRY_S
                if self.pauses is not None:
                    self.pauses.resume_all(self.deliver)
            else:
                self._reload_retry_at = now + self._reload_backoff
                self._reload_backoff = min(self._reload_backoff * 2, RELOAD_RETRY_MAX_S)
        elif self._reload_retry_at is not None and now >= self._reload_retry_at:
            self._reload_retry_at = None
            self.reload_requested.set()  # taken at the next boundary
        for name, due in list(self._restart_at.items()):
            if now >= due:
                del self._restart_at[name]
                source = self._by_name[name]
                log.info("restarting source %s", name)
                self.metrics.restarts.labels(name).inc()
                self.metrics.set_state(name, "starting")
                source.close()
                source.start(self.deliver)
        if now - self._swept_at >= SWEEP_EVERY_S:
            # Bounds how long a garbage cycle holds memory under the raised thresholds
            # (runtime.gc_tuning). On this thread rather than one of its own: JPype's collector
            # hooks run on the collecting thread, and this one is attached to the JVM.
            self._swept_at = now
            log.debug("collector sweep: %d unreachable objects", gc.collect())
        if now - self._dead_count_at >= TARGET_CHECK_S:
            self._dead_count_at = now
            self._check_target()

    def _check_target(self) -> None:
        """Count the dead letters; that read is also what shows a target gone down while
        nothing is written (a quiet night), as a failed write would: `tunggal_target_up` 0,
        /readyz 503, one WARNING. Its success undoes only its own failure, and not while a
        write is in flight: a failing write is retried until it succeeds, and shows till then."""
        try:
            count = self.sink.count_dead_letters()
        except TransientError as down:
            if self.metrics.target_is_up():
                log.warning("target unreachable: %s; changes wait for it", down)
                self.metrics.target_failed(str(down))
                self._report_status()
            self._target_read_failed = True
            return
        except Exception as exc:
            log.debug("cannot count dead letters: %s", exc)
            return
        self.metrics.dead_letters_current.set(count)
        writing = self._writing is not None and not self._writing.done()
        if self._target_read_failed and not writing:  # else the write in flight says
            self._target_read_failed = False
            if not self.metrics.target_is_up():
                log.info("target reachable again")
                self.metrics.target_ok()
                self._report_status()

    def reconfigure_source(self, name: str, prepare: Callable[[Source], None]) -> None:
        """Stop one source, let `prepare` change it, start it again; the others go on. Called
        between batches (a mapping reload), when nothing of it is in hand or being written:
        what it delivered and was not acknowledged is delivered again by the new start."""
        source = self._by_name[name]
        if self.pauses is not None:
            self.pauses.release(name)  # started here, with the new properties
        source.close()
        prepare(source)
        self.metrics.restarts.labels(name).inc()
        self.metrics.set_state(name, "starting")
        source.start(self.deliver)

    def _source_failed(self, failure: SourceFailure) -> None:
        """A source that streamed before is restarted with backoff while the others go on.
        One that fails before its first streamed change (bad DSN, slot in use, a failing
        snapshot) is a start-up problem: stop and say so."""
        self.metrics.set_state(failure.source, "failed", failure.message)
        if failure.source not in self._streamed or failure.source not in self._by_name:
            raise FatalError(f"source {failure.source}: {failure.message}")
        attempt = self._restart_attempts.get(failure.source, 0)
        self._restart_attempts[failure.source] = attempt + 1
        delay = min(60.0, 5.0 * 2**attempt)
        log.error(
            "source %s failed: %s; restarting it in %.0fs", failure.source, failure.message, delay
        )
        self._restart_at[failure.source] = self.clock() + delay

    def _take(self, chunk: Chunk) -> None:
        if self.pauses is not None and self.pauses.refuse(chunk):
            return  # refused, so never acknowledged: delivered again when it resumes
        self._connected_now(chunk.source)
        self.metrics.received.labels(chunk.source).inc(len(chunk.events))
        if self.pauses is None:
            self.pipeline.process(chunk.source, chunk.events, into=self._pending)
        else:
            # Mapped apart first: a chunk that trips the flood stop is held back whole, so its
            # events are neither dead-lettered nor acknowledged.
            processed = self.pipeline.process(chunk.source, chunk.events, log_poison=False)
            if self.pauses.check(chunk, processed, self.clock()):
                if self._chunks:
                    self._chunks[-1].flush_requested = True  # write what came before now
                return
            for letter in processed.dead_letters:
                report_poison(letter)
            self._pending.merge(processed)
        if chunk.source in self._pending.live:
            self._streamed.add(chunk.source)
            self._restart_attempts.pop(chunk.source, None)
        # A source that has sent nothing but snapshot reads (or heartbeats) is snapshotting.
        now = "streaming" if chunk.source in self._streamed else "snapshot"
        if self.metrics.source(chunk.source).state != now:
            self.metrics.set_state(chunk.source, now)
        # The latest chunk's offset, not the highest: a partition's chunks arrive in the order
        # it was read, and one read again from the start (its topic re-created) must not keep
        # the old incarnation's higher offset, which would skip the new records below it.
        self._pending.offsets.update(chunk.offsets)
        self._pending.topic_ids.update(chunk.topic_ids)
        self._chunks.append(chunk)
        self._pending_events += len(chunk.events)
        if self._oldest is None:
            self._oldest = chunk.received_at

    def _due(self) -> bool:
        if not self._chunks:
            return False
        if self._pending_events >= self.batch.max_size:
            return True
        if any(c.flush_requested for c in self._chunks):
            return True
        if self._oldest is not None and (
            self.clock() - self._oldest >= self.batch.max_age_ms / 1000
        ):
            return True
        # A source that waits for our answer cannot send more than it has (the embedded
        # engine sends at most one more batch while this one is written), and one that has
        # read all there is has nothing more to send: a fuller batch would only add latency.
        # Under a backlog, polls come back full and batches grow to max_size as before.
        if not self.inbox.empty():
            return False
        caught_up = self.batch.when_caught_up and self._chunks[-1].caught_up
        return caught_up or any(c.holds_source for c in self._chunks)

    # -- connections, status ------------------------------------------------------------------
    def _connected_now(self, name: str) -> None:
        if name in self._connected or name not in self._by_name:
            return
        self._connected.add(name)
        log.info("ready: reading from %s", name)

    def _watch_connections(self) -> None:
        # A Kafka source says so itself in its state once it has joined its group.
        if len(self._connected) < len(self.sources):
            for source in self.sources:
                if self.metrics.source(source.name).state == "streaming":
                    self._connected_now(source.name)

    def _report_status(self) -> None:
        """systemd's STATUS= line (`systemctl status`), sent when it changes; any thread."""
        text = status_line(
            self.metrics.target,
            {s.name: self.metrics.source(s.name).state for s in self.sources},
            self.pauses.describe() if self.pauses is not None else [],
        )
        with self._status_lock:
            if text == self._status_text:
                return
            self._status_text = text
        self.notifier.status(text)

    # -- writing ----------------------------------------------------------------------------
    def _retrying(self, deadline: float | None, sources: Sequence[str]) -> tenacity.Retrying:
        """Every failed attempt is reported at once, from the writer thread (log line, /status,
        `tunggal_target_write_failing`), not when the loop next hands over a batch, which may
        be long after on a quiet source. The batch is held, unacknowledged, and tried again:
        a transient failure (connection, deadlock) fixes itself; any other (a target table
        dropped, a column's type changed, a privilege revoked) needs the operator, and the
        retry reads the target's tables again first so that the fix takes effect. A row the
        target rejects never gets here: the sink sets it aside (dead letter) and commits the
        rest. Stopping (or the shutdown deadline) ends the retries and raises the error."""

        def give_up(state: tenacity.RetryCallState) -> bool:
            if deadline is not None:
                return self.clock() >= deadline
            return self.stop.is_set()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.metrics.write_failed(sources, str(exc))
            self.metrics.target_failed(str(exc))
            self._report_status()  # the loop may be waiting on this very write
            if isinstance(exc, TransientError):
                self.metrics.retries.labels("target").inc()
                log.warning(
                    "target write failed (%s); retry %d in %.1fs",
                    exc,
                    state.attempt_number,
                    state.upcoming_sleep,
                )
            else:
                self._reread_target = True
                log.error(
                    "target write failed: %s; the batch is held, nothing of it acknowledged, "
                    "and tried again in %.1fs (attempt %d)",
                    exc,
                    state.upcoming_sleep,
                    state.attempt_number,
                )

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TunggalError),
            wait=tenacity.wait_exponential_jitter(
                multiplier=self.retry.initial_delay_s, max=self.retry.max_delay_s
            ),
            stop=give_up,
            sleep=self._sleep_for(deadline),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _sleep_for(self, deadline: float | None) -> Callable[[float], None]:
        def sleep(seconds: float) -> None:
            if deadline is None:
                self.stop.wait(seconds)  # Event.wait: SIGTERM ends a backoff sleep at once (dlt)
            else:
                # Shutting down: the stop flag is already set, so sleep for real, briefly.
                time.sleep(max(0.0, min(seconds, deadline - self.clock())))

        return sleep

    def flush(self, *, deadline: float | None = None) -> None:
        """Hand the batch in hand to the writer, once the batch before it is committed.

        Raises what the write of the previous batch raised; the writer has then settled that
        batch's chunks with the error, and the batch in hand stays here, unacknowledged."""
        if not self._chunks:
            return
        self._wait_written()
        pending, chunks, events = self._pending, self._chunks, self._pending_events
        self._pending, self._chunks = Processed(), []
        self._pending_events, self._oldest = 0, None
        self._writing_events = events
        self._writing = self._writer.submit(self._write, pending, chunks, events, deadline)

    def _wait_written(self) -> None:
        """Wait until the batch in flight is committed; raise its error if it failed."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()
        self._writing_events = 0

    def _write(
        self, pending: Processed, chunks: list[Chunk], events: int, deadline: float | None
    ) -> None:
        """Writer thread: commit one batch, then let its sources acknowledge it."""
        sources = sorted({c.source for c in chunks})
        requests = [
            RequestUpdate(n.id, n.source, n.kind, n.tables[0] if n.tables else None, n.rows)
            for n in pending.notices
        ]

        def attempt() -> BatchResult:
            if self._reread_target:
                # The previous attempt failed for a reason the operator fixes in the target.
                self.sink.introspect()
                self._reread_target = False
            return self.sink.write(
                steps,
                pending.progress,
                pending.dead_letters,
                pending.offsets,
                requests,
                pending.topic_ids,
            )

        try:
            steps = collapse(pending.ops)
            started = time.perf_counter()
            result: BatchResult = self._retrying(deadline, sources)(attempt)
            elapsed = time.perf_counter() - started
        except BaseException as exc:
            for chunk in chunks:
                chunk.settle(exc)
            raise
        # Committed: only now may the sources acknowledge upstream.
        for chunk in chunks:
            chunk.settle()
        self.metrics.write_recovered(sources)
        if result.reached_target and not self.metrics.target_is_up():
            self.metrics.target_ok()
            self._report_status()
        self._record(pending, result, elapsed, events)
        if self.on_batch is not None:
            self.on_batch()

    def _record(self, pending: Processed, result: BatchResult, elapsed: float, events: int) -> None:
        m = self.metrics
        m.batch_seconds.observe(elapsed)
        m.batch_size.observe(events)
        for (source, table, op, outcome), n in pending.counts.items():
            m.events.labels(source, table, op, outcome).inc(n)
        for table, n in result.upserted.items():
            m.table_rows(table, "upsert", n)
        for table, n in result.deleted.items():
            m.table_rows(table, "delete", n)
        for (table, column), n in result.conflicts.items():
            m.merge_conflicts.labels(table, column).inc(n)
        for (source, table), n in pending.incremental_rows.items():
            m.incremental_committed(source, table, n)
        for notice in pending.notices:
            m.incremental_notice(
                notice.source, notice.id, notice.kind, notice.tables, notice.status, notice.rows
            )
            if notice.kind == "STARTED":
                log.info(
                    "source %s: reading %s again (incremental snapshot %s)",
                    notice.source,
                    ", ".join(notice.tables),
                    notice.id,
                )
            elif notice.kind == "TABLE_SCAN_COMPLETED":
                log.info(
                    "source %s: %s read again: %s rows (%s)",
                    notice.source,
                    ", ".join(notice.tables),
                    notice.rows if notice.rows is not None else "?",
                    (notice.status or "?").lower(),
                )
            elif notice.kind in ("COMPLETED", "ABORTED"):
                log.info(
                    "source %s: incremental snapshot %s %s",
                    notice.source,
                    notice.id,
                    "done" if notice.kind == "COMPLETED" else "aborted",
                )
        dead = [*pending.dead_letters, *result.dead_letters]
        for letter in dead:
            m.dead_letters.labels(letter.source).inc()
        for source, progress in pending.progress.items():
            m.committed(source, progress.events, progress.position, progress.commit_ts_us)
        for source, beat_us in pending.heartbeats.items():
            m.heartbeat(source, beat_us)
        self.totals["events"] += events
        self.totals["batches"] += 1
        self.totals["dead_letters"] += len(dead)
        log.debug("batch of %d events committed in %.3fs", events, elapsed)

    # -- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Finish the work in hand, then stop the sources. Safe to call more than once."""
        if self._closing.is_set():
            return
        self.notifier.stopping()
        try:
            if self.started and not self._failed:
                n = self._writing_events + self._pending_events
                try:
                    self._wait_written()
                    self._drain_inbox()
                    n = self._pending_events
                    self.flush(deadline=self.clock() + self.shutdown_grace_s)
                    self._wait_written()
                except Exception as exc:
                    log.error(
                        "could not commit the last %d events before stopping (%s); "
                        "they were not acknowledged and will be delivered again",
                        n,
                        exc,
                    )
                    raise
        finally:
            self._closing.set()
            # After a failure, the batch in flight ends too: committed, or given up on stop.
            try:
                self._wait_written()
            except Exception as exc:
                log.debug("the batch in flight failed while stopping: %s", exc)
            finally:
                self._writer.shutdown()
            if self.pauses is not None:
                self.pauses.wait_stopped()
            for chunk in [*self._chunks, *self._drain_unsettled()]:
                chunk.settle(FatalError("shutting down"))
            self._chunks = []
            for source in self.sources:
                try:
                    source.close()
                except Exception:
                    log.exception("error while closing source %s", source.name)
                self.metrics.set_state(source.name, "stopped")
            self.sink.close()
            log.info(
                "stopped: %d events in %d batches, %d dead-lettered",
                self.totals["events"],
                self.totals["batches"],
                self.totals["dead_letters"],
            )

    def _drain_inbox(self) -> None:
        """Chunks already handed over by a source that is blocked on them get committed too."""
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Chunk):
                self._take(item)

    def _drain_unsettled(self) -> list[Chunk]:
        out: list[Chunk] = []
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, Chunk):
                out.append(item)
