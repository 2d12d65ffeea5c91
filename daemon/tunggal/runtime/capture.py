"""What Debezium captures follows the mappings: a table added to a source's mappings is captured
and its existing rows backfilled; a table removed is no longer captured. Only that source
restarts; the others stream on.

Embedded: the source's engine restarts with the new `table.include.list`, and Debezium sets its
filtered publication to exactly those tables at start (`ALTER PUBLICATION ... SET TABLE`, which
needs ownership of the tables). PostgreSQL decodes a table's changes only from the moment the
publication includes it, so the rows it already has are read by an incremental snapshot. That is
requested between the old engine's stop and the new one's start: the new engine resumes from
its stored offset, before the signal, so it is the one that reads it, with the new table list.
The changes made between the edit and the capture are in what the snapshot reads.

Kafka: the consumer follows the new topics (the default topic pattern), while the connector on
Connect is widened by `tunggal connectors apply`, which requests the backfill.

Which tables each embedded source captured is kept beside its offsets (`<name>.tables`), so a
table added while the daemon was stopped is backfilled at start too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import orjson

from tunggal.config import SourceConfig, TunggalConfig
from tunggal.connectors import ConnectorSpec
from tunggal.errors import ConfigError, TunggalError
from tunggal.mapping import MappingSet
from tunggal.sources.base import Source

log = logging.getLogger(__name__)

# Stop a source, change it, start it again: `Runner.reconfigure_source`.
Restart = Callable[[str, Callable[[Source], None]], None]


class CaptureFollower:
    def __init__(
        self,
        config: TunggalConfig,
        connectors: Mapping[str, ConnectorSpec],
        restart: Restart | None = None,
    ) -> None:
        self.config = config
        self.connectors = dict(connectors)
        self.restart = restart

    # -- at start --------------------------------------------------------------------------
    def at_start(self, mappings: MappingSet) -> None:
        """Backfill the tables added to an embedded source's mappings while it was stopped."""
        for source in self._embedded():
            tables = sorted(mappings.source_tables(source.name))
            spec = self.connectors[source.name]
            if spec.tables:
                continue  # an explicit list: the admin decides what is captured
            stored = self._stored(source.name)
            offsets = self._state_dir / f"{source.name}.offsets"
            if stored is None or not offsets.exists():
                # A new source takes an initial snapshot of everything; a target set up before
                # this file existed starts keeping it now.
                self._store(source.name, tables)
                continue
            added = sorted(set(tables) - set(stored))
            if added and not self._backfill(spec, added, "tables added to the mappings"):
                continue  # asked again at the next start
            self._store(source.name, tables)

    # -- on a reload -----------------------------------------------------------------------
    def mappings_changed(self, old: MappingSet, new: MappingSet) -> None:
        """Widen or narrow what each source captures to what the new mappings read."""
        for source in self.config.sources:
            spec = self.connectors.get(source.name)
            if spec is None or spec.tables:
                continue
            before, after = old.source_tables(source.name), new.source_tables(source.name)
            added, removed = sorted(after - before), sorted(before - after)
            if not added and not removed:
                continue
            self._left_alone(source.name, removed, old, new)
            if source.engine == "kafka":
                self._kafka(source, spec, sorted(after), added, removed)
            else:
                self._embedded_changed(source, spec, sorted(after), added, removed)

    def _embedded_changed(
        self,
        source: SourceConfig,
        spec: ConnectorSpec,
        tables: list[str],
        added: list[str],
        removed: list[str],
    ) -> None:
        if self.restart is None:
            return
        properties = spec.render(tables)
        backfilled: list[bool] = []

        def prepare(running: Source) -> None:
            reconfigure = getattr(running, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(properties)
            backfilled.append(
                not added or self._backfill(spec, added, "tables added to the mappings")
            )

        change = [f"now also {', '.join(added)}"] if added else []
        change += [f"no longer {', '.join(removed)}"] if removed else []
        log.info("source %s captures %s; restarting only it", source.name, "; ".join(change))
        self.restart(source.name, prepare)
        if all(backfilled):
            self._store(source.name, tables)

    def _kafka(
        self,
        source: SourceConfig,
        spec: ConnectorSpec,
        tables: list[str],
        added: list[str],
        removed: list[str],
    ) -> None:
        if source.topics or source.topic_pattern or self.restart is None:
            log.warning(
                "source %s: its mappings now read %s; it consumes the topics its configuration "
                "names: add theirs, and widen its connector with `tunggal connectors apply`",
                source.name,
                ", ".join(tables),
            )
            return
        from tunggal.sources.kafka import default_topic_pattern

        pattern = default_topic_pattern(spec.topic_prefix, tables, spec.notification_topic)

        def prepare(running: Source) -> None:
            if hasattr(running, "topic_pattern"):
                running.topic_pattern = pattern

        self.restart(source.name, prepare)
        if added:
            log.warning(
                "source %s: consuming the topics of %s too; widen its connector on Kafka "
                "Connect with `tunggal connectors apply`, which also backfills their rows",
                source.name,
                ", ".join(added),
            )

    def _left_alone(
        self, source: str, removed: Sequence[str], old: MappingSet, new: MappingSet
    ) -> None:
        """A removed table's target keeps what it has; say which, and how to clear it."""
        if not removed:
            return
        fed = sorted(
            {
                writer.source_table + " -> " + target
                for target, spec in old.targets().items()
                for writer in spec.writers
                if writer.source == source and writer.source_table in removed
            }
        )
        for line in fed:
            target = line.rsplit(" -> ", 1)[1]
            still = target in new.targets() and source in new.targets()[target].merge.sources
            if still:
                continue
            log.warning(
                "source %s no longer maps %s: the target table keeps the rows it wrote; "
                "`tunggal forget --source %s --table %s --yes` removes them",
                source,
                line,
                source,
                target,
            )

    # -- shared --------------------------------------------------------------------------------
    def _backfill(self, spec: ConnectorSpec, tables: Sequence[str], reason: str) -> bool:
        """Request an incremental snapshot of `tables`; False (and say why) if it cannot be."""
        from tunggal.reconcile.signals import request_snapshot

        try:
            request = request_snapshot(spec, self.config.target.dsn, tables, reason=reason)
        except ConfigError as exc:
            log.warning(
                "source %s: %s are captured from now on, but their existing rows are not "
                "backfilled: %s",
                spec.name,
                ", ".join(tables),
                "; ".join(str(p) for p in exc.problems),
            )
            return True  # nothing to retry until the admin fixes it: resync then
        except TunggalError as exc:
            log.error(
                "source %s: cannot ask for the backfill of %s (%s); it is asked again at the "
                "next start, or run `tunggal resync --source %s` yourself",
                spec.name,
                ", ".join(tables),
                exc,
                spec.name,
            )
            return False
        log.info(
            "source %s: backfilling %s through an incremental snapshot (request %s)",
            spec.name,
            ", ".join(tables),
            request.id,
        )
        return True

    def _embedded(self) -> list[SourceConfig]:
        return [s for s in self.config.sources if s.engine != "kafka"]

    @property
    def _state_dir(self) -> Path:
        return self.config.resolve(self.config.state_dir)

    def _stored(self, source: str) -> list[str] | None:
        path = self._state_dir / f"{source}.tables"
        try:
            found = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return [str(t) for t in found] if isinstance(found, list) else None

    def _store(self, source: str, tables: Sequence[str]) -> None:
        path = self._state_dir / f"{source}.tables"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tables.tmp")
        tmp.write_bytes(orjson.dumps(sorted(tables)))
        tmp.replace(path)
