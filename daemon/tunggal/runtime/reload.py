"""Hot reload of mapping files: validated first, swapped in only at a batch boundary.

A reload request comes from SIGHUP or from the file watcher; the runner calls the reloader
between batches, when no event is in hand and the batch being written has committed, so an
event is never mapped by half of each set and the sink's targets never change under a write.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from tunggal.config import TunggalConfig
from tunggal.errors import ConfigError, Problem, TunggalError
from tunggal.mapping import MappingSet, check_against_database, load_mappings
from tunggal.metrics import Metrics
from tunggal.runtime.capture import CaptureFollower
from tunggal.runtime.pipeline import Pipeline
from tunggal.sink.postgres import PostgresSink

log = logging.getLogger(__name__)


class MappingReloader:
    def __init__(
        self,
        config: TunggalConfig,
        pipeline: Pipeline,
        sink: PostgresSink,
        metrics: Metrics,
        capture: CaptureFollower | None = None,
        check_sources: Callable[[MappingSet], list[Problem]] | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.sink = sink
        self.metrics = metrics
        self.capture = capture
        # The new set's tables and columns against the source catalogs (`reconcile.catalog`):
        # a misspelt source column would dead-letter every event of its table.
        self.check_sources = check_sources
        # The problems of the last refused reload: a retry that finds the same ones says so in
        # one line instead of listing them again.
        self.refused: list[str] | None = None

    def __call__(self) -> bool:
        """Try the mapping files as they are now. True if the active set is valid and current."""
        problems: list[Problem]
        try:
            mappings = load_mappings(self.config.mapping_paths())
            problems = check_against_database(mappings, self.sink.introspect())
            changed = mappings.content_hash != self.pipeline.mappings.content_hash
            if changed and self.check_sources is not None:
                problems = [*problems, *self.check_sources(mappings)]
        except ConfigError as exc:
            problems = exc.problems
        except TunggalError as exc:
            problems = [Problem("", "", f"cannot check the mappings against the target: {exc}")]
        if problems:
            self.metrics.reloads.labels("failure").inc()
            lines = [str(p) for p in problems]
            if lines == self.refused:
                log.warning(
                    "mapping reload still refused (the same %d problem(s)), still running on %s",
                    len(lines),
                    self.pipeline.mappings.content_hash[:12],
                )
                return False
            self.refused = lines
            log.error(
                "mapping reload refused, still running on %s: %d problem(s)",
                self.pipeline.mappings.content_hash[:12],
                len(problems),
            )
            for line in lines:
                log.error("  %s", line)
            return False
        self.refused = None
        old = self.pipeline.mappings
        if mappings.content_hash == old.content_hash:
            log.info("mapping files unchanged (%s)", old.content_hash[:12])
            return True
        try:
            # Tables written by several sources are recomputed here if their rules changed.
            self.sink.set_targets(mappings.targets(), mappings.content_hash)
        except TunggalError as exc:
            self.metrics.reloads.labels("failure").inc()
            log.error(
                "mapping reload refused, still running on %s: cannot apply the merge rules in "
                "the target: %s",
                old.content_hash[:12],
                exc,
            )
            return False
        self.pipeline.swap(mappings, {t: i.columns for t, i in self.sink.tables.items()})
        self.metrics.set_mapping(mappings.content_hash, mappings.files)
        self.metrics.reloads.labels("success").inc()
        log.info("mappings reloaded: %s -> %s", old.content_hash[:12], mappings.content_hash[:12])
        if self.capture is not None:
            # Tables added to or removed from a source: only that source restarts.
            self.capture.mappings_changed(old, mappings)
        return True


def watch_files(
    paths: list[Path], on_change: Callable[[], None], stop: threading.Event
) -> threading.Thread:
    """Request a reload when a mapping file changes (editors save by rename: watch dirs)."""
    import watchfiles

    directories = sorted({p.parent.resolve() for p in paths} or {Path.cwd()})

    def relevant(change: watchfiles.Change, path: str) -> bool:
        return path.endswith((".yaml", ".yml"))

    def run() -> None:
        try:
            for _ in watchfiles.watch(
                *directories,
                watch_filter=relevant,
                stop_event=stop,
                debounce=500,
                raise_interrupt=False,
            ):
                on_change()
        except Exception:
            log.exception("mapping file watcher stopped; reload with SIGHUP instead")

    thread = threading.Thread(target=run, name="mapping-watcher", daemon=True)
    thread.start()
    return thread
