"""`tunggal connectors ...`: our connector files on a Kafka Connect cluster, through its REST API.

Kept free of module-level imports of `tunggal.cli` (which registers this group), so that either
module can be imported first. Secrets never reach the terminal: printed configs are masked and
error messages from Connect are scrubbed of the passwords we sent.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from tunggal.cliutil import CONFIG_OPTION, _guard
from tunggal.connect.prune import MARKER, deployment, to_prune
from tunggal.connect.render import connect_config, connector_document, secret_values
from tunggal.connect.rest import ConnectClient
from tunggal.connectors import ConnectorSpec
from tunggal.errors import ConfigError, Problem
from tunggal.mapping import MappingSet

CONNECT_URL_OPTION = click.option(
    "--connect-url",
    required=True,
    envvar="TUNGGAL_CONNECT_URL",
    metavar="URL",
    help="Kafka Connect REST URL, e.g. http://connect:8083 (or TUNGGAL_CONNECT_URL).",
)
NAMES_ARGUMENT = click.argument("names", nargs=-1, metavar="[NAME]...")


@dataclass(frozen=True)
class Rendered:
    name: str
    file: str  # the connector file, for error messages
    config: dict[str, str]
    spec: ConnectorSpec
    target_dsn: str


def _render_all(config_path: Path, names: tuple[str, ...]) -> list[Rendered]:
    """The Connect configs of the named sources (every source when none are named)."""
    return _load(config_path, names)[1]


def _load(
    config_path: Path, names: tuple[str, ...]
) -> tuple[MappingSet, list[Rendered], frozenset[str]]:
    """The mappings, the Connect configs of the named sources (every source when none are
    named), and the names of every source."""
    from tunggal.config import load_config
    from tunggal.runtime.app import load_all

    config = load_config(config_path)
    mappings, specs = load_all(config)
    files = {source.name: str(config.resolve(source.connector)) for source in config.sources}
    unknown = [n for n in names if n not in specs]
    if unknown:
        known = ", ".join(sorted(specs)) or "none"
        raise ConfigError(
            [
                Problem(str(config_path), "sources", f"no source named {n!r} (sources: {known})")
                for n in unknown
            ]
        )
    if not specs:
        raise ConfigError([Problem(str(config_path), "sources", "no sources: nothing to render")])
    bootstrap = config.kafka.bootstrap_servers if config.kafka is not None else ()
    ours = {MARKER: deployment(config.target.dsn)}  # what `apply --prune` knows ours by
    rendered = [
        Rendered(
            name,
            files[name],
            connect_config(specs[name], mappings.source_tables(name), kafka_bootstrap=bootstrap)
            | ours,
            specs[name],
            config.target.dsn,
        )
        for name in (names or tuple(specs))
    ]
    return mappings, rendered, frozenset(specs)


@click.group("connectors")
def connectors_group() -> None:
    """Render, apply and operate the sources' Debezium connectors on Kafka Connect."""


@connectors_group.command("render")
@CONFIG_OPTION
@NAMES_ARGUMENT
@_guard
def render_command(config_path: Path, names: tuple[str, ...]) -> None:
    """Print each source's Kafka Connect connector JSON (passwords masked).

    One JSON document per connector, in the shape `POST /connectors` takes.
    """
    for rendered in _render_all(config_path, names):
        document = connector_document(rendered.name, rendered.config)
        click.echo(json.dumps(document, indent=2))


DROP_SLOT_OPTION = click.option(
    "--drop-slot", is_flag=True, help="Drop the deleted connectors' replication slots too."
)
DROP_PUBLICATION_OPTION = click.option(
    "--drop-publication", is_flag=True, help="Drop the deleted connectors' publications too."
)
YES_OPTION = click.option("--yes", is_flag=True, help="Do not ask for confirmation.")


@connectors_group.command("apply")
@CONFIG_OPTION
@CONNECT_URL_OPTION
@click.option(
    "--prune",
    is_flag=True,
    help="Then delete the connectors this config applied whose source is gone from it.",
)
@DROP_SLOT_OPTION
@DROP_PUBLICATION_OPTION
@YES_OPTION
@NAMES_ARGUMENT
@_guard
def apply_command(
    config_path: Path,
    connect_url: str,
    prune: bool,
    drop_slot: bool,
    drop_publication: bool,
    yes: bool,
    names: tuple[str, ...],
) -> None:
    """Check the sources' catalogs and validate every connector on Connect, then create or
    update them.

    Nothing is applied unless every mapped table, column and `tables:` entry is in its source
    and every connector is valid; each problem is printed with its file and field. A source
    that does not answer from here gets one warning and is not checked.
    Applying the same files twice changes nothing and says `unchanged`.

    With --prune, connectors applied from this config (they carry its `tunggal.target`)
    whose source is no longer in it are deleted afterwards, after asking; other connectors
    on the worker are never touched.
    """
    from tunggal.reconcile.catalog import check_sources

    if (drop_slot or drop_publication) and not prune:
        raise click.UsageError("--drop-slot and --drop-publication go with --prune")
    mappings, rendered, configured = _load(config_path, names)
    # The source's catalog first, as `tunggal run` does for an embedded source: a mapped table
    # that is not there would be created on Connect, said `created`, and fail in its task
    # seconds later (`Unable to create filtered publication`). Read from this host; a source
    # that does not answer here (Connect may sit on another network) gets one warning.
    problems = check_sources(mappings, {one.name: (one.spec, one.file) for one in rendered})
    client = ConnectClient(connect_url)
    for one in rendered:
        client.add_secrets(secret_values(one.config))
    problems += [
        Problem(one.file, field, message)
        for one in rendered
        for field, message in client.validate(one.config["connector.class"], one.config)
    ]
    if problems:
        raise ConfigError(problems)
    for one in rendered:
        current = client.get_config(one.name)
        if current == one.config:
            outcome = "unchanged"
        else:
            outcome = "created" if client.put_config(one.name, one.config) else "updated"
        click.echo(f"{one.name}: {outcome}")
        added = _tables(one.config) - _tables(current or {})
        if current is not None and added:
            _backfill(client, one, sorted(added))
    if prune:
        on_connect = client.configs()
        ours = rendered[0].config[MARKER]
        _delete(
            client,
            to_prune(on_connect, configured, ours),
            on_connect,
            drop_slot,
            drop_publication,
            yes,
        )


@connectors_group.command("delete")
@CONNECT_URL_OPTION
@DROP_SLOT_OPTION
@DROP_PUBLICATION_OPTION
@YES_OPTION
@click.argument("name")
@_guard
def delete_command(
    connect_url: str, drop_slot: bool, drop_publication: bool, yes: bool, name: str
) -> None:
    """Delete a connector from Connect, after asking; with the flags, its replication slot
    and publication on the source too (else they stay: see `tunggal slots`)."""
    client = ConnectClient(connect_url)
    config = client.get_config(name)
    if config is None:
        click.secho(
            f"error: Kafka Connect at {client.url} has no connector named {name!r} (leftover "
            "slots: `tunggal slots`)",
            fg="red",
            err=True,
        )
        sys.exit(2)
    _delete(client, [name], {name: config}, drop_slot, drop_publication, yes)


def _delete(
    client: ConnectClient,
    names: list[str],
    configs: Mapping[str, Mapping[str, str]],
    drop_slot: bool,
    drop_publication: bool,
    yes: bool,
) -> None:
    """Delete the connectors, then drop what was asked of what they leave on their sources."""
    from tunggal.admin.slots import DropRefused, Leftovers, drop_leftovers

    if not names:
        return
    for name in names:
        client.add_secrets(secret_values(configs[name]))
    also = [w for w, asked in (("slots", drop_slot), ("publications", drop_publication)) if asked]
    question = f"delete connector(s) {', '.join(names)} from {client.url}"
    question += f" and drop their {' and '.join(also)}" if also else ""
    if not yes and not click.confirm(question + "?", default=False):
        click.echo("not deleted")
        sys.exit(1)
    for name in names:
        leftovers = Leftovers.of(name, configs[name])
        client.delete(name)
        _wait_gone(client, name)
        click.echo(f"{name}: deleted")
        if leftovers is None:
            if also:
                click.echo(f"{name}: not a PostgreSQL connector: no slot or publication to drop")
            continue
        try:
            done = drop_leftovers(leftovers, slot=drop_slot, publication=drop_publication)
        except DropRefused as exc:
            click.secho(f"error: {name}: {exc}", fg="red", err=True)
            sys.exit(2)
        for line in done:
            click.echo(f"{name}: {line}")
        if not drop_slot:
            db = leftovers.source
            click.echo(
                f"{name}: replication slot {db.slot} on {db.server} kept (it holds WAL until "
                f"dropped): see `tunggal slots`"
            )


def _wait_gone(client: ConnectClient, name: str, timeout_s: float = 30) -> None:
    """Connect answers DELETE before the connector and its tasks have stopped."""
    from tunggal.errors import KafkaConnectError

    deadline = time.monotonic() + timeout_s
    while client.get_config(name) is not None:
        if time.monotonic() > deadline:
            raise KafkaConnectError(
                f"Kafka Connect at {client.url} still has connector {name!r} {timeout_s:g} s "
                "after deleting it"
            )
        time.sleep(0.5)


def _tables(config: Mapping[str, str]) -> set[str]:
    listed = config.get("table.include.list", "")
    # Undo connectors._regex_literal: every character of a name is escaped or plain.
    return {re.sub(r"\\(.)", r"\1", t) for t in listed.split(",") if t}


def _backfill(client: ConnectClient, one: Rendered, tables: list[str]) -> None:
    """The rows the added tables already hold: an incremental snapshot, asked for once the
    connector's tasks run with the new table list (a task still on the old one would take the
    signal and skip tables it does not know)."""
    from tunggal.errors import TunggalError
    from tunggal.reconcile.signals import request_snapshot

    wanted = one.config.get("table.include.list")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        configs = client.task_configs(one.name)
        if configs and all(c.get("table.include.list") == wanted for c in configs):
            break
        time.sleep(1)
    else:
        click.secho(
            f"{one.name}: its tasks did not take the new table list within 60 s; backfill "
            f"{', '.join(tables)} later with `tunggal resync --source {one.name}`",
            fg="yellow",
            err=True,
        )
        return
    try:
        request = request_snapshot(
            one.spec,
            one.target_dsn,
            tables,
            reason="connectors apply: tables added",
            where=one.file,
        )
    except TunggalError as exc:
        click.secho(
            f"{one.name}: {', '.join(tables)} are captured from now on, but their existing rows "
            f"are not backfilled: {exc}",
            fg="yellow",
            err=True,
        )
        return
    click.echo(f"{one.name}: backfilling {', '.join(tables)} (request {request.id})")


# -- status --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateRow:
    connector: str
    task: str  # "-" for the connector itself
    state: str
    worker: str
    trace: str  # the first line of a failure's stack trace, else ""


def state_rows(status: dict[str, Any]) -> list[StateRow]:
    name = str(status.get("name", "?"))
    rows = [_row(name, "-", status.get("connector", {}))]
    for task in sorted(status.get("tasks", []), key=lambda t: int(t.get("id", 0))):
        rows.append(_row(name, str(task.get("id", "?")), task))
    return rows


def _row(connector: str, task: str, entry: dict[str, Any]) -> StateRow:
    trace = str(entry.get("trace") or "").strip()
    return StateRow(
        connector,
        task,
        str(entry.get("state", "UNKNOWN")),
        str(entry.get("worker_id", "-")),
        trace.splitlines()[0] if trace else "",
    )


@connectors_group.command("status")
@CONNECT_URL_OPTION
@click.option("--json", "as_json", is_flag=True, help="Connect's status objects, one JSON array.")
@NAMES_ARGUMENT
@_guard
def status_command(connect_url: str, as_json: bool, names: tuple[str, ...]) -> None:
    """State of each connector and task (RUNNING, PAUSED, FAILED, ...) and where it runs.

    Every connector on the worker unless NAMEs are given. Exits 1 if any is FAILED.
    """
    client = ConnectClient(connect_url)
    statuses = [client.status(name) for name in (names or sorted(client.connectors()))]
    rows = [row for status in statuses for row in state_rows(status)]
    if as_json:
        click.echo(json.dumps(statuses, indent=2))
    elif sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for header in ("connector", "task", "state", "worker", "trace"):
            table.add_column(header, overflow="ellipsis", no_wrap=header != "trace")
        colours = {"RUNNING": "green", "PAUSED": "yellow", "FAILED": "red"}
        for row in rows:
            colour = colours.get(row.state, "")
            state = f"[{colour}]{row.state}[/]" if colour else row.state
            table.add_row(row.connector, row.task, state, row.worker, row.trace)
        Console().print(table)
    else:
        for row in rows:
            click.echo("\t".join([row.connector, row.task, row.state, row.worker, row.trace]))
    if not statuses:
        click.echo(f"no connectors on {client.url}", err=True)
    if any(row.state == "FAILED" for row in rows):
        sys.exit(1)


# -- restart, pause, resume ----------------------------------------------------------------------


@connectors_group.command("restart")
@CONNECT_URL_OPTION
@click.option(
    "--include-tasks", is_flag=True, help="Restart the tasks too, not the connector only."
)
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@_guard
def restart_command(connect_url: str, include_tasks: bool, names: tuple[str, ...]) -> None:
    """Restart connectors (after fixing what made them fail)."""
    client = ConnectClient(connect_url)
    for name in names:
        client.restart(name, include_tasks=include_tasks)
        click.echo(f"{name}: restart requested" + (" (with tasks)" if include_tasks else ""))


@connectors_group.command("pause")
@CONNECT_URL_OPTION
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@_guard
def pause_command(connect_url: str, names: tuple[str, ...]) -> None:
    """Pause connectors: they stop reading the source; their slot keeps its place (and WAL)."""
    client = ConnectClient(connect_url)
    for name in names:
        client.pause(name)
        click.echo(f"{name}: pause requested")


@connectors_group.command("resume")
@CONNECT_URL_OPTION
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@_guard
def resume_command(connect_url: str, names: tuple[str, ...]) -> None:
    """Resume paused connectors."""
    client = ConnectClient(connect_url)
    for name in names:
        client.resume(name)
        click.echo(f"{name}: resume requested")
