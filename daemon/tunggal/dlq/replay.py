"""Re-apply dead letters through the current mapping files and the daemon's own sink.

An admin fixes a mapping (adds a lookup `default:`, drops a bad cast), then replays: each
selected entry's recorded event goes through the same decode -> map -> collapse -> write path as
streaming, so the newer-than rule holds and an old dead letter cannot move a row back in time.
Each batch is one target transaction holding the rows it produced and the verdict on every
entry in it: deleted when it applied, updated (error, class, mapping hash) when it failed again.
A crash therefore neither loses an entry nor applies it twice.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import tenacity

from tunggal.config import TunggalConfig
from tunggal.dlq import store
from tunggal.dlq.store import Entry, Selection
from tunggal.errors import ConfigError, TransientError
from tunggal.events.model import RawEvent
from tunggal.mapping import check_against_database
from tunggal.runtime.app import epoch_lookup, load_all, request_lookup
from tunggal.runtime.pipeline import Pipeline, Processed
from tunggal.sink.collapse import Step, collapse
from tunggal.sink.postgres import DeadLetter, PostgresSink, SourceProgress

log = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    replayed: int = 0  # applied now, so removed from the queue
    still_failing: int = 0  # failed again (or hold no event to replay), so kept
    no_rows: int = 0  # of the replayed: produced no row (filtered out, no longer mapped)
    not_replayable: int = 0  # of the still failing: no recorded event (raw value NULL)


def _entry_id(letter: DeadLetter) -> int | None:
    return letter.raw.offset if letter.raw is not None else None


class DeadLetterSink(PostgresSink):
    """The daemon's sink, with the dead-letter step of each batch transaction turned around.

    Streaming inserts new entries there; a replay instead settles the entries it re-applies,
    with the same cursor and in the same transaction as the rows they produced. It never
    inserts an entry for an event that is already one, and it leaves `tunggal_progress` alone:
    re-applying old events says nothing about how far a source has been read.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._replaying: frozenset[int] = frozenset()
        self._failed: dict[int, DeadLetter] = {}

    def write_entries(
        self, ids: Collection[int], steps: Sequence[Step], dead_letters: Sequence[DeadLetter]
    ) -> dict[int, DeadLetter]:
        """Apply one batch of replayed entries; the ones that failed again, by entry id."""
        self._replaying, self._failed = frozenset(ids), {}
        try:
            self.write(steps, {}, dead_letters)
        finally:
            self._replaying = frozenset()
        return self._failed

    def _dead_letters(self, cur: psycopg.Cursor[Any], letters: Sequence[DeadLetter]) -> None:
        # Called once per attempt, inside the transaction: when `write` re-runs a batch row by
        # row to isolate a rejected row, the second call's verdict is the one committed.
        failed: dict[int, DeadLetter] = {}
        strangers: list[DeadLetter] = []
        for letter in letters:
            entry_id = _entry_id(letter)
            if entry_id is not None and entry_id in self._replaying:
                failed.setdefault(entry_id, letter)  # one event, two failing rows: keep the first
            else:
                strangers.append(letter)  # not expected; but never drop a dead letter
        super()._dead_letters(cur, strangers)
        if failed:
            cur.executemany(
                "UPDATE public.tunggal_dead_letters SET error_class = %s, error = %s, "
                "mapping_hash = %s, source_table = COALESCE(%s, source_table), "
                "position = COALESCE(%s, position), attempts = attempts + 1, "
                "last_failed_at = now() WHERE id = %s",
                [
                    (d.error_class, d.error, self.mapping_hash, d.source_table, d.position, i)
                    for i, d in failed.items()
                ],
            )
        applied = sorted(self._replaying - failed.keys())
        if applied:
            cur.execute("DELETE FROM public.tunggal_dead_letters WHERE id = ANY(%s)", (applied,))
        self._failed = failed

    def _progress(self, cur: psycopg.Cursor[Any], progress: Mapping[str, SourceProgress]) -> None:
        return


def open_dead_letter_sink(config: TunggalConfig) -> tuple[DeadLetterSink, Pipeline]:
    """Mirrors `runtime.app.open_sink` + `build_runner`, with the replaying sink."""
    mappings, connectors = load_all(config)
    sink = DeadLetterSink(
        config.target.dsn,
        mappings.targets(),
        connect_timeout_s=config.target.connect_timeout_s,
        mapping_hash=mappings.content_hash,
    )
    try:
        problems = check_against_database(mappings, sink.introspect())
        if problems:
            raise ConfigError(problems)
        sink.check_ready()
    except BaseException:
        sink.close()
        raise
    # A source without a connector file (e.g. fed by `tunggal replay`) gets the defaults there.
    modes = {name: spec.modes() for name, spec in connectors.items()}
    pipeline = Pipeline(
        mappings,
        modes,
        {t: i.columns for t, i in sink.tables.items()},
        # As many tries as a write gets (`Replayer._retrying`).
        epoch_lookup(config, stop=threading.Event(), attempts=5),
        request_lookup(config, stop=threading.Event(), attempts=5),
    )
    return sink, pipeline


def _raw(entry: Entry) -> RawEvent:
    # The entry id rides in `offset`, so every dead letter the pipeline or the sink makes from
    # this event names the entry it came from (and the pipeline's log line shows it).
    return RawEvent(
        destination=entry.destination or "",
        key=entry.raw_key,
        value=entry.raw_value,
        offset=entry.id,
    )


class Replayer:
    def __init__(self, config: TunggalConfig, sink: DeadLetterSink, pipeline: Pipeline) -> None:
        self.config = config
        self.sink = sink
        self.pipeline = pipeline

    def run(
        self,
        conn: psycopg.Connection[Any],
        selection: Selection,
        *,
        on_start: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> ReplayReport:
        """Every selected entry, oldest first, one transaction per `batch.max_size` entries."""
        report = ReplayReport()
        # Entries the running daemon adds meanwhile wait for the next replay.
        up_to = store.max_id(conn, selection)
        if on_start is not None:
            on_start(store.count(conn, selection) if up_to is not None else 0)
        after: int | None = None
        while up_to is not None:
            # Keyset paging: entries that fail again stay behind `after`, not in the next page.
            entries = store.fetch(
                conn, selection, limit=self.config.batch.max_size, after_id=after, up_to_id=up_to
            )
            if not entries:
                break
            after = entries[-1].id
            self._batch(entries, report)
            if on_batch is not None:
                on_batch(len(entries))
        return report

    def _batch(self, entries: list[Entry], report: ReplayReport) -> None:
        replayable = [e for e in entries if e.raw_value is not None]
        report.not_replayable += len(entries) - len(replayable)
        report.still_failing += len(entries) - len(replayable)
        processed = Processed()
        for source, group in itertools.groupby(replayable, key=lambda e: e.source):
            self.pipeline.process(source, [_raw(e) for e in group], into=processed)
        steps = collapse(processed.ops)
        ids = [e.id for e in replayable]
        failed = self._retrying()(self.sink.write_entries, ids, steps, processed.dead_letters)
        producing = {raw.offset for _, raw in processed.ops if raw is not None}
        applied = [i for i in ids if i not in failed]
        report.replayed += len(applied)
        report.still_failing += len(failed)
        report.no_rows += sum(1 for i in applied if i not in producing)

    def _retrying(self) -> tenacity.Retrying:
        """A short retry for a target failover; the batch is atomic, so rerunning is safe."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("target write failed (%s); retry %d", exc, state.attempt_number)

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            wait=tenacity.wait_exponential_jitter(
                multiplier=self.config.retry.initial_delay_s, max=self.config.retry.max_delay_s
            ),
            stop=tenacity.stop_after_attempt(5),
            before_sleep=before_sleep,
            reraise=True,
        )
