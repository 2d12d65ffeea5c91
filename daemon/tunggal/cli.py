"""The `tunggal` command: wires click to the runner. No logic of its own lives here."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from tunggal.admin.cli import (
    config_group,
    conflicts_command,
    explain_command,
    mapping_group,
    status_command,
)
from tunggal.admin.kafka_cli import kafka_group
from tunggal.admin.slots_cli import slots_group
from tunggal.cliutil import CONFIG_OPTION, _guard
from tunggal.connect.cli import connectors_group
from tunggal.dlq.cli import dlq_group
from tunggal.errors import ConfigError, FatalError, Problem, TunggalError
from tunggal.reconcile.cli import forget_command, resync_command
from tunggal.reconcile.verify_cli import verify_command

if TYPE_CHECKING:
    from tunggal.metrics import Metrics
    from tunggal.progress import ProgressPoller
    from tunggal.runtime.runner import Runner

log = logging.getLogger("tunggal")


def _exit_after_jvm(error: TunggalError | None) -> None:
    """With a JVM in the process, exit now: everything is committed or unacknowledged, and
    JPype's shutdown at interpreter exit can wait for Debezium threads that never end."""
    from tunggal.sources.embedded import jvm_running

    if not jvm_running():
        return
    code = 0
    if error is not None:
        code = 2 if isinstance(error, ConfigError) else 1
        click.secho(
            error.render() if isinstance(error, ConfigError) else f"error: {error}",
            fg="red",
            err=True,
        )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def install_signal_handlers(stop: threading.Event, reload: threading.Event | None = None) -> None:
    """First SIGTERM/SIGINT: finish the batch in hand and stop. Second: stop at once.
    SIGHUP: reload the mapping files at the next batch boundary.

    The handlers only set a flag (dlt): no logging, no I/O in signal context.
    """

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        stop.set()

    def hangup(signum: int, frame: FrameType | None) -> None:
        if reload is not None:
            reload.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGHUP, hangup)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from tunggal import __version__, native

    click.echo(f"tunggal {__version__} ({native.build()})")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Say the version, and whether the per-event path runs compiled or as pure Python.",
)
@click.option(
    "--log-level",
    default="INFO",
    envvar="TUNGGAL_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format",
    default=None,
    envvar="TUNGGAL_LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    help="Default: the config's logging.format.",
)
@click.pass_context
def main(ctx: click.Context, log_level: str, log_format: str | None) -> None:
    """Tunggal: stream changes from many source databases into one (basis data tunggal)."""
    from tunggal import logs

    ctx.obj = {"log_format": log_format}
    logs.configure(log_level.upper(), log_format or "text")


@main.command()
@CONFIG_OPTION
@click.option("--once", is_flag=True, help="Exit once every source is idle (tests, backfills).")
@_guard
def run(config_path: Path, once: bool) -> None:
    """Run the sync daemon until SIGTERM."""
    _run(config_path, replay=None, once=once)


@main.command()
@CONFIG_OPTION
@click.option("--source", required=True, help="Source name the events belong to.")
@click.argument("events", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_guard
def replay(config_path: Path, source: str, events: Path) -> None:
    """Apply a file of Debezium events (JSON lines) through the mappings, then exit."""
    _run(config_path, replay=(source, events), once=True)


def _run(config_path: Path, *, replay: tuple[str, Path] | None, once: bool) -> None:
    from tunggal import __version__, logs, native
    from tunggal.config import env_bool, load_config
    from tunggal.metrics import Metrics
    from tunggal.runtime.app import build_runner
    from tunggal.runtime.gc_tuning import tune_for_throughput
    from tunggal.runtime.http import StatusServer

    config = load_config(config_path)
    allowed_by_env = env_bool("TUNGGAL_ALLOW_ROOT", os.environ.get("TUNGGAL_ALLOW_ROOT", "0"))
    if replay is None and os.geteuid() == 0 and not (config.allow_root or allowed_by_env):
        raise ConfigError(
            [
                Problem(
                    str(config_path),
                    "allow_root",
                    "refusing to run as root",
                    hint="run as a dedicated user (see ops/tunggal.service), or set "
                    "allow_root: true / TUNGGAL_ALLOW_ROOT=true if you really mean it",
                )
            ]
        )
    ctx = click.get_current_context()
    logs.configure(
        logging.getLevelName(logging.getLogger().level),
        ctx.obj.get("log_format") or config.logging.format,
    )
    log.info("tunggal %s, per-event path %s", __version__, native.build())
    stop = threading.Event()
    install_signal_handlers(stop)
    metrics = Metrics()
    runner = build_runner(config, metrics=metrics, stop=stop, replay=replay)
    install_signal_handlers(stop, runner.reload_requested)
    if replay is None and config.watch_mappings:
        from tunggal.runtime.reload import watch_files

        watch_files(config.mapping_paths(), runner.reload_requested.set, stop)
    server = None
    if config.metrics.enabled and replay is None:
        try:
            server = StatusServer(
                metrics,
                config.metrics.host,
                config.metrics.port,
                ready=lambda: runner.started,
                healthy=lambda: not runner._failed,
            ).start()
        except OSError as exc:  # the port is taken, or the host is not this machine's
            error = FatalError(
                f"cannot listen on {config.metrics.host}:{config.metrics.port} for metrics "
                f"({exc.strerror or exc}): stop what holds it, or set another metrics.port in "
                f"{config_path}"
            )
            _exit_after_jvm(error)
            raise error from None
        log.info("metrics and status on http://%s:%d/", config.metrics.host, server.port)
    progress = _progress_poller(metrics, runner, replay)
    tune_for_throughput()
    try:
        runner.run(until_idle=once)
    except TunggalError as exc:
        progress.close()
        _exit_after_jvm(exc)
        raise
    finally:
        progress.close()
        if server is not None:
            server.close()
    _exit_after_jvm(None)
    if replay is not None:
        click.echo(
            f"replayed {runner.totals['events']} events in {runner.totals['batches']} "
            f"batches; {runner.totals['dead_letters']} dead-lettered"
        )


def _progress_poller(
    metrics: Metrics, runner: Runner, replay: tuple[str, Path] | None
) -> ProgressPoller:
    """Snapshot progress while `run` snapshots; events applied of the file's for `replay`."""
    from tunggal.progress import ProgressDisplay, ProgressPoller, Task

    if replay is not None:
        name, path = replay
        total = _count_lines(path)

        def replayed() -> list[Task]:
            done = runner.totals["events"]
            return [Task("replay", f"replaying {path.name} ({name})", done, total, unit="events")]

        return ProgressPoller(replayed, ProgressDisplay(min_total=1000)).start()

    def snapshots() -> list[Task]:
        tasks = []
        for source in list(metrics.sources):
            snap = metrics.snapshot_status(source)
            tables = snap["tables"] if snap is not None and snap["running"] else {}
            assert isinstance(tables, dict)
            for table, counts in tables.items():
                estimate = counts["estimated_rows"]
                tasks.append(
                    Task(
                        f"{source}:{table}",
                        f"snapshot {source} {table}",
                        counts["rows"],
                        # Never show a table as more than done while it is still read.
                        None if estimate is None else max(estimate, counts["rows"]),
                        estimated=True,
                    )
                )
            incremental = metrics.incremental_status(source)
            if incremental is None or not incremental["running"]:
                continue
            for table, counts in incremental["tables"].items():
                if counts["done"]:
                    continue
                estimate = counts["estimated_rows"]
                tasks.append(
                    Task(
                        f"{source}:incremental:{table}",
                        f"read again {source} {table}",
                        counts["rows"],
                        None if estimate is None else max(estimate, counts["rows"]),
                        estimated=True,
                    )
                )
        return tasks

    return ProgressPoller(snapshots, ProgressDisplay()).start()


def _count_lines(path: Path) -> int | None:
    """Events in a replay file, counted at about 1 GB/s; None if it cannot be read."""
    try:
        with open(path, "rb") as stream:
            return sum(block.count(b"\n") for block in iter(lambda: stream.read(1 << 20), b""))
    except OSError:
        return None


@main.command()
@CONFIG_OPTION
@click.option(
    "--db/--no-db",
    "check_db",
    default=False,
    help="Also check tables, columns, keys and types in the target database, and the tables "
    "and columns the mappings and connectors name in the source databases.",
)
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@_guard
def validate(config_path: Path, check_db: bool, files: tuple[Path, ...]) -> None:
    """Check mapping files (given, or those of the config) and report every problem at once."""
    from tunggal.mapping import load_mappings

    if files:
        mappings = load_mappings(list(files))
        if check_db:
            raise FatalError("--db needs --config (the target's DSN), not a list of files")
    else:
        from tunggal.config import load_config
        from tunggal.runtime.app import load_all, open_checked_sink

        config = load_config(config_path)
        mappings, connectors = load_all(config)
        if check_db:
            open_checked_sink(config, mappings, connectors, every_source=True).close()
    targets = mappings.targets()
    click.echo(
        f"ok: {len(mappings.files)} mapping file(s), {len(targets)} target table(s), "
        f"hash {mappings.content_hash[:12]}"
    )


@main.command()
@CONFIG_OPTION
@click.option("--apply", "apply_", is_flag=True, help="Execute the DDL instead of printing it.")
@_guard
def schema(config_path: Path, apply_: bool) -> None:
    """Print (or apply) the DDL that readies the target: bookkeeping columns, missing tables."""
    from tunggal.config import load_config
    from tunggal.runtime.app import load_all, open_sink
    from tunggal.sink.schema import apply_schema, plan_schema

    config = load_config(config_path)
    mappings, _ = load_all(config)
    sink = open_sink(config, mappings, check=False)
    try:
        plan = plan_schema(mappings.targets(), sink.introspect())
        for problem in plan.unresolved:
            click.secho(f"cannot fix automatically: {problem}", fg="yellow", err=True)
        if apply_:
            apply_schema(sink.engine, plan)
            click.echo(f"applied {len(plan.statements)} statement(s)")
        else:
            for statement in plan.statements:
                click.echo(statement.strip() + ";")
    finally:
        sink.close()
    if plan.unresolved:
        sys.exit(1)


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to keep the throwaway databases (default: a temp dir, removed after).",
)
@click.option("--rate", default=20.0, show_default=True, help="Source changes per second.")
@click.option("--duration", default=0.0, help="Stop after this many seconds (0: until Ctrl-C).")
@_guard
def demo(workdir: Path | None, rate: float, duration: float) -> None:
    """Four source systems and one target on throwaway PostgreSQL, with live changes."""
    from tunggal.demo.run import run_demo

    sys.exit(run_demo(workdir=workdir, rate=rate, duration=duration))


main.add_command(dlq_group)
main.add_command(status_command)
main.add_command(mapping_group)
main.add_command(config_group)
main.add_command(explain_command)
main.add_command(conflicts_command)
main.add_command(resync_command)
main.add_command(forget_command)
main.add_command(verify_command)
main.add_command(connectors_group)
main.add_command(slots_group)
main.add_command(kafka_group)

if __name__ == "__main__":  # pragma: no cover
    main()
