"""Assemble a runner from validated configuration: the only place that knows every part."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import tenacity

from tunggal.config import SourceConfig, TunggalConfig
from tunggal.connectors import ConnectorSpec, load_connector, server_id_clashes
from tunggal.errors import ConfigError, Problem, TransientError
from tunggal.events.modes import ConnectorModes
from tunggal.mapping import MappingSet, check_against_database, load_mappings
from tunggal.metrics import Metrics
from tunggal.runtime.capture import CaptureFollower
from tunggal.runtime.pipeline import EpochLookup, Pipeline, RequestLookup
from tunggal.runtime.reload import MappingReloader
from tunggal.runtime.runner import Runner
from tunggal.runtime.systemd import Notifier
from tunggal.sink.postgres import PostgresSink
from tunggal.sources.base import Source

log = logging.getLogger(__name__)


def load_all(config: TunggalConfig) -> tuple[MappingSet, dict[str, ConnectorSpec]]:
    """Mappings and connector definitions, every problem of every file reported together."""
    problems = []
    mappings = None
    try:
        mappings = load_mappings(config.mapping_paths())
    except ConfigError as exc:
        problems.extend(exc.problems)
    connectors: dict[str, ConnectorSpec] = {}
    files: dict[str, tuple[ConnectorSpec, str]] = {}
    for source in config.sources:
        path = config.resolve(source.connector)
        try:
            spec = load_connector(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        connectors[source.name] = spec
        files[source.name] = (spec, str(path))
    problems.extend(server_id_clashes(files))
    if config.kafka is not None:
        from tunggal.sources.kafka_client_config import client_config_problems

        # Checked by the client itself, before anything is consumed (and by `validate`).
        problems.extend(client_config_problems(config.kafka, file=config.file))
    if problems:
        raise ConfigError(problems)
    assert mappings is not None
    return mappings, connectors


def open_sink(config: TunggalConfig, mappings: MappingSet, *, check: bool = True) -> PostgresSink:
    sink = PostgresSink(
        config.target.dsn,
        mappings.targets(),
        connect_timeout_s=config.target.connect_timeout_s,
        mapping_hash=mappings.content_hash,
    )
    if check:
        problems = check_against_database(mappings, sink.introspect())
        if problems:
            sink.close()
            raise ConfigError(problems)
    return sink


def checked_sources(
    config: TunggalConfig, connectors: dict[str, ConnectorSpec], *, every: bool = False
) -> dict[str, tuple[ConnectorSpec, str]]:
    """The sources whose catalogs are checked, each with its connector and the connector's file.

    `run` and reloads check the sources it reads itself (`engine: embedded`), with the
    connector's credentials as Debezium will use them. An `engine: kafka` source is read by
    Kafka Connect, often from another network: `every` (`validate --db`) checks it too."""
    return {
        s.name: (connectors[s.name], str(config.resolve(s.connector)))
        for s in config.sources
        if every or s.engine == "embedded"
    }


def open_checked_sink(
    config: TunggalConfig,
    mappings: MappingSet,
    connectors: dict[str, ConnectorSpec],
    *,
    every_source: bool = False,
) -> PostgresSink:
    """The sink, once the mappings were checked against the target and against the sources
    (`reconcile.catalog`): every problem of both reported together. Before any source starts,
    so that a table missing in a source stops the daemon before Debezium makes a slot."""
    from tunggal.reconcile.catalog import check_sources

    problems = check_sources(mappings, checked_sources(config, connectors, every=every_source))
    try:
        sink = open_sink(config, mappings)
    except ConfigError as exc:
        raise ConfigError([*exc.problems, *problems]) from None
    if problems:
        sink.close()
        raise ConfigError(problems)
    return sink


def epoch_lookup(
    config: TunggalConfig,
    *,
    stop: threading.Event,
    attempts: int | None = None,
    metrics: Metrics | None = None,
) -> EpochLookup:
    """A source's committed snapshot epoch, read from the target (see `Pipeline`)."""
    from tunggal.sink.postgres import read_snapshot_epoch

    dsn, timeout = config.target.dsn, config.target.connect_timeout_s
    retrying = _target_retry(config, stop, attempts, metrics, "the snapshot epoch")

    def lookup(source: str) -> int | None:
        return retrying.copy()(read_snapshot_epoch, dsn, source, connect_timeout_s=timeout)

    return lookup


def request_lookup(
    config: TunggalConfig,
    *,
    stop: threading.Event,
    attempts: int | None = None,
    metrics: Metrics | None = None,
) -> RequestLookup:
    """What Tunggal asked of an incremental snapshot, read from the target when Debezium says
    a table's scan ended (see `Pipeline._notice`): its watermark, and whether it was partial."""
    from tunggal.reconcile.signals import scan_watermark

    dsn = config.target.dsn
    retrying = _target_retry(config, stop, attempts, metrics, "an incremental snapshot request")

    def lookup(request_id: str, source: str, table: str) -> tuple[int, bool] | None:
        return retrying.copy()(scan_watermark, dsn, request_id, source, table)

    return lookup


def _target_retry(
    config: TunggalConfig,
    stop: threading.Event,
    attempts: int | None,
    metrics: Metrics | None,
    what: str,
) -> tenacity.Retrying:
    """A read of the target that the pipeline cannot go on without: retried with the write
    backoff while the target does not answer. The daemon waits until `stop` is set, as it does
    for its writes (nothing is acknowledged meanwhile); `dlq replay` gives up after `attempts`."""

    def give_up(state: tenacity.RetryCallState) -> bool:
        return stop.is_set() or (attempts is not None and state.attempt_number >= attempts)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if metrics is not None:
            metrics.retries.labels("target").inc()
            metrics.target_failed(str(state.outcome.exception() if state.outcome else None))
        log.warning(
            "cannot read %s from the target (%s); retry %d in %.1fs",
            what,
            state.outcome.exception() if state.outcome else None,
            state.attempt_number,
            state.upcoming_sleep,
        )

    def sleep(seconds: float) -> None:
        stop.wait(seconds)  # stopping ends the wait at once

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientError),
        wait=tenacity.wait_exponential_jitter(
            multiplier=config.retry.initial_delay_s, max=config.retry.max_delay_s
        ),
        stop=give_up,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def build_runner(
    config: TunggalConfig,
    *,
    metrics: Metrics,
    stop: threading.Event,
    replay: tuple[str, Path] | None = None,
) -> Runner:
    mappings, connectors = load_all(config)
    # A replay reads a file of events, not the sources.
    sink = (
        open_sink(config, mappings) if replay else open_checked_sink(config, mappings, connectors)
    )
    modes = {name: spec.modes() for name, spec in connectors.items()}
    sources: list[Source] = []
    if replay is not None:
        from tunggal.sources.replay import ReplaySource

        name, path = replay
        modes.setdefault(name, ConnectorModes())
        sources.append(ReplaySource(name, path, chunk_size=config.batch.max_size))
    else:
        for source in config.sources:
            spec = connectors[source.name]
            if source.engine == "kafka":
                sources.append(_kafka_source(config, source, spec, mappings, metrics))
                continue
            from tunggal.sources.embedded import EmbeddedSource

            sources.append(
                EmbeddedSource(
                    source.name,
                    spec.render(mappings.source_tables(source.name)),
                    config.resolve(config.state_dir),
                    jvm_path=config.java.jvm_path,
                    heap=config.java.heap,
                    jvm_options=config.java.options,
                    classpath=[config.resolve(entry) for entry in config.java.classpath],
                    connector_file=str(config.resolve(source.connector)),
                    max_batch_size=config.batch.max_size,
                    poll_interval_ms=min(config.batch.max_age_ms, 500),
                )
            )
    pipeline = Pipeline(
        mappings,
        modes,
        {t: i.columns for t, i in sink.tables.items()},
        epoch_lookup(config, stop=stop, metrics=metrics),
        request_lookup(config, stop=stop, metrics=metrics),
    )
    metrics.set_mapping(mappings.content_hash, mappings.files)
    runner = Runner(
        sources,
        pipeline,
        sink,
        metrics,
        batch=config.batch,
        retry=config.retry,
        stop=stop,
        notifier=Notifier(),
        # `tunggal replay` is run on purpose, file by file: its failures are dead-lettered.
        flood_stop=config.flood_stop if replay is None else None,
    )
    capture = None
    if replay is None:
        capture = CaptureFollower(config, connectors, runner.reconfigure_source)
        # Tables added to a source's mappings while the daemon was stopped are backfilled.
        capture.at_start(mappings)
    check = None
    if replay is None:
        from tunggal.reconcile.catalog import check_sources

        files = checked_sources(config, connectors)

        def check(new: MappingSet) -> list[Problem]:
            return check_sources(new, files)

    runner.reloader = MappingReloader(config, pipeline, sink, metrics, capture, check)
    if replay is None:
        start_probes(config, mappings, connectors, metrics, stop)
    return runner


def _kafka_source(
    config: TunggalConfig,
    source: SourceConfig,
    spec: ConnectorSpec,
    mappings: MappingSet,
    metrics: Metrics,
) -> Source:
    from tunggal.sink.kafka_offsets import hold_group_lock
    from tunggal.sink.postgres import read_kafka_offsets
    from tunggal.sources.kafka import KafkaSource, default_topic_pattern

    assert config.kafka is not None  # the config's validator guarantees it
    pattern = source.topic_pattern
    if not source.topics and not pattern:
        pattern = default_topic_pattern(
            spec.topic_prefix, mappings.source_tables(source.name), spec.notification_topic
        )
    dsn, timeout = config.target.dsn, config.target.connect_timeout_s
    return KafkaSource(
        source.name,
        config.kafka,
        topics=source.topics,
        topic_pattern=pattern,
        load_offsets=lambda group, parts: read_kafka_offsets(
            dsn, group, parts, connect_timeout_s=timeout
        ),
        metrics=metrics,
        # Longer than a batch's age, shorter than the group's patience with a silent member.
        revoke_timeout_s=max(5.0, config.kafka.session_timeout_ms / 1000),
        hold_group_lock=lambda group: hold_group_lock(dsn, group, connect_timeout_s=timeout),
    )


def start_probes(
    config: TunggalConfig,
    mappings: MappingSet,
    connectors: dict[str, ConnectorSpec],
    metrics: Metrics,
    stop: threading.Event,
) -> None:
    """Slow pollers feeding /metrics from outside the main loop: Debezium's snapshot MBeans
    and the JVM heap (every 5 s), the source databases' replication slots and the newest
    `tunggal verify` runs (every 30 s). Daemon threads that end with `stop`."""
    from tunggal.sources.jmx import JvmProbe
    from tunggal.sources.pgstats import SlotProbe, SourceDatabase

    servers: dict[str, str] = {}
    databases: list[SourceDatabase] = []
    for source in config.sources:
        spec = connectors[source.name]
        mapped = mappings.source_tables(source.name)
        properties = spec.render(mapped)
        servers[source.name] = properties.get("topic.prefix", source.name)
        # The tables the connector captures, as `render` chose them.
        tables = list(spec.tables) or sorted(mapped)
        db = SourceDatabase.from_properties(source.name, properties, tables)
        if db is not None:
            databases.append(db)
    if servers:
        JvmProbe(metrics, servers, stop).start()
    SlotProbe(metrics, databases, stop, settings=config.slots).start()
    from tunggal.reconcile.runs import VerifyProbe

    VerifyProbe(metrics, config.target.dsn, stop).start()
