"""`tunggal status`, `tunggal mapping ...` and `tunggal config show`: click wiring only.

Like `dlq.cli`, it does not import `tunggal.cli` (which registers these), so either module
can be imported first.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from tunggal.cliutil import CONFIG_OPTION, _guard
from tunggal.errors import ConfigError, FatalError, Problem

if TYPE_CHECKING:
    from tunggal.admin.dryrun import EventResult
    from tunggal.admin.output import Grid
    from tunggal.mapping import MappingSet

OPTIONAL_CONFIG = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="TUNGGAL_CONFIG",
    help="The daemon's configuration file.",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


# -- status --------------------------------------------------------------------------------------


@click.command("status")
@click.option(
    "--url",
    envvar="TUNGGAL_STATUS_URL",
    default=None,
    help="The daemon's HTTP address. Default: from --config's metrics host and port, "
    "else http://127.0.0.1:9464.",
)
@OPTIONAL_CONFIG
@JSON_OPTION
@_guard
def status_command(url: str | None, config_path: Path | None, as_json: bool) -> None:
    """What the running daemon is doing: sources, lag, rows applied, dead letters."""
    from tunggal.admin import output, status

    if url is None and config_path is not None:
        from tunggal.config import load_config

        config = load_config(config_path)
        url = status.url_for(config.metrics.host, config.metrics.port)
    url = url or status.DEFAULT_URL
    found = status.fetch(url)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    output.show(
        status.sources_grid(found),
        *status.partitions_grids(found),
        status.tables_grid(found),
        notes=status.notes(found, url),
    )


# -- mapping -------------------------------------------------------------------------------------


@click.group("mapping")
def mapping_group() -> None:
    """Tools for mapping files: JSON Schema, dry runs over recorded events, diffs."""


@mapping_group.command("schema")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write it to this file (e.g. mappings/tunggal-mapping.schema.json), not stdout.",
)
def schema_command(output: Path | None) -> None:
    """The JSON Schema of mapping files, for editors (yaml-language-server)."""
    from tunggal.mapping import json_schema

    text = schema_text(json_schema())
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"wrote {output}", err=True)


def schema_text(schema: object) -> str:
    """The shipped file's exact layout, so that `mapping schema -o` leaves no diff."""
    return json.dumps(schema, indent=2) + "\n"


@mapping_group.command("test")
@click.option("--source", required=True, help="Source name the events come from.")
@OPTIONAL_CONFIG
@click.option(
    "--db",
    "use_db",
    is_flag=True,
    help="Read column types from the config's target database (read-only), as the daemon "
    "does; needed for schemaless events.",
)
@JSON_OPTION
@click.argument("files", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.argument("events", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_guard
def test_command(
    source: str,
    config_path: Path | None,
    use_db: bool,
    as_json: bool,
    files: tuple[Path, ...],
    events: Path,
) -> None:
    """Show the target rows each event of EVENTS (JSON lines) would produce; writes nothing.

    The mappings are FILES (files or directories), else those of --config.
    """
    from tunggal.admin import dryrun, output
    from tunggal.events.model import RawEvent
    from tunggal.events.modes import ConnectorModes
    from tunggal.mapping import load_mappings
    from tunggal.sources.replay import read_events
    from tunggal.yamlfile import suggest

    modes = ConnectorModes()
    target_types: dict[str, Mapping[str, str]] = {}
    if files and use_db:
        raise FatalError("--db needs --config (the target's DSN), not a list of files")
    if files:
        mappings = load_mappings(list(files))
    else:
        from tunggal.config import load_config
        from tunggal.connectors import load_connector

        config = load_config(config_path or Path("tunggal.yaml"))
        mappings = load_mappings(config.mapping_paths())
        for configured in config.sources:
            if configured.name == source:
                modes = load_connector(config.resolve(configured.connector)).modes()
        if use_db:
            from tunggal.runtime.app import open_sink

            sink = open_sink(config, mappings, check=False)
            try:
                target_types = {t: info.columns for t, info in sink.introspect().items()}
            finally:
                sink.close()
    if source not in mappings.sources():
        guess = suggest(source, sorted(mappings.sources()))
        raise ConfigError(
            [
                Problem(
                    "--source",
                    "",
                    f"no mapping file is for source {source!r}",
                    hint=f"did you mean {guess}?"
                    if guess
                    else f"sources: {', '.join(sorted(mappings.sources()))}",
                )
            ]
        )
    with open(events, "rb") as stream:
        raws = [raw for raw in read_events(stream, source) if isinstance(raw, RawEvent)]
    results = list(dryrun.dry_run(mappings, source, raws, modes, target_types))
    counts = {outcome: 0 for outcome in dryrun.OUTCOMES}
    for result in results:
        counts[result.outcome] += 1
    summary = f"{len(results)} events: " + ", ".join(f"{n} {o}" for o, n in counts.items() if n)
    if as_json:
        for result in results:
            click.echo(dryrun.as_json(result, mappings).decode())
        click.echo(summary, err=True)  # stdout stays pure JSON lines
        return
    grid = _dry_run_grid(results, mappings)
    if output.to_terminal():
        output.show(grid, notes=[(summary, "bold")])
    else:
        click.echo(output.plain(grid))
        click.echo(summary, err=True)


_OUTCOME_STYLES = {
    "mapped": "green",
    "needs target types": "yellow",
    "poison": "bold red",
    "no rows": "dim",
    "tombstone": "dim",
    "heartbeat": "dim",
}


def _dry_run_grid(results: list[EventResult], mappings: MappingSet) -> Grid:
    from tunggal.admin import dryrun
    from tunggal.admin.output import Grid
    from tunggal.mapping import Upsert

    grid = Grid(["line", "source table", "op", "outcome", "target", "action", "key", "values"])
    for result in results:
        head = [
            "-" if result.line is None else str(result.line),
            result.table or result.destination or "-",
            result.op or "-",
            result.outcome,
        ]
        style = _OUTCOME_STYLES.get(result.outcome)
        head_styles = [None, None, None, style]
        if not result.ops:
            detail = f"{result.error_class}: {result.error}" if result.error else result.note
            grid.add([*head, "-", "-", "-", detail or "-"], [*head_styles, None, None, None, style])
            continue
        for i, op in enumerate(result.ops):
            values = dryrun.pairs(op.values) if isinstance(op, Upsert) else "-"
            key = dryrun.pairs(dryrun.key_of(op, mappings)) or "-"
            cells = head if i == 0 else ["", "", "", ""]
            row = [*cells, op.table, dryrun.action(op), key, values]
            grid.add(row, [*head_styles, None, None, None, None])
        if result.note:
            grid.add(["", "", "", "", "", "", "", result.note], [None] * 7 + [style])
    return grid


@mapping_group.command("diff")
@JSON_OPTION
@click.argument("old", type=click.Path(exists=True, path_type=Path))
@click.argument("new", type=click.Path(exists=True, path_type=Path))
@_guard
def diff_command(as_json: bool, old: Path, new: Path) -> None:
    """Target tables and columns that going from OLD to NEW (files or directories) adds,
    removes or changes."""
    from tunggal.mapping import load_mappings
    from tunggal.mapping.diff import diff, render

    changes = diff(load_mappings([old]), load_mappings([new]))
    if as_json:
        click.echo(orjson.dumps([c.as_dict() for c in changes], option=orjson.OPT_INDENT_2))
        return
    if not changes:
        click.echo("no changes to target tables or columns")
        return
    lines = render(changes)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.text import Text

        console = Console()
        for text, style in lines:
            console.print(Text(text, style=style or ""))
    else:
        for text, _ in lines:
            click.echo(text)


# -- many sources, one row ---------------------------------------------------------------------


@click.command("explain")
@CONFIG_OPTION
@JSON_OPTION
@click.argument("table")
@click.argument("key", nargs=-1, required=True)
@_guard
def explain_command(config_path: Path, as_json: bool, table: str, key: tuple[str, ...]) -> None:
    """Where each value of one target row comes from: TABLE and the values of its KEY.

    Per column: the value, the source that supplied it by the table's merge rules, that
    source's commit time and position, and what every other source holds. Exit 1 if no row
    and no source's trace of it exists.
    """
    from tunggal.admin import output, provenance
    from tunggal.config import load_config
    from tunggal.runtime.app import load_all, open_sink

    config = load_config(config_path)
    mappings, connectors = load_all(config)
    spec = provenance.target_spec(mappings, table)
    kinds = {name: c.kind for name, c in connectors.items()}
    sink = open_sink(config, mappings, check=False)
    try:
        sink.introspect()
        found = provenance.explain(sink, spec, key, kinds)
    finally:
        sink.close()
    if as_json:
        click.echo(found.as_json())
    elif found.found:
        output.show(*found.grids(), notes=[(n, "yellow") for n in found.notes])
    if not found.found:
        keys = ", ".join(f"{k}={v}" for k, v in found.key.items())
        click.secho(f"{spec.name} has no row {keys}, and no source has written one", err=True)
        sys.exit(1)


@click.command("conflicts")
@CONFIG_OPTION
@click.option("--table", "table", default=None, help="Only this target table.")
@click.option("--limit", default=100, show_default=True, help="At most this many per table.")
@JSON_OPTION
@_guard
def conflicts_command(config_path: Path, table: str | None, limit: int, as_json: bool) -> None:
    """Rows whose sources disagree on a column (both non-NULL, different): what the admins
    must fix in the source systems. Only tables written by several sources have them."""
    from tunggal.admin import output, provenance
    from tunggal.config import load_config
    from tunggal.runtime.app import load_all, open_sink

    config = load_config(config_path)
    mappings, _ = load_all(config)
    specs = (
        [provenance.target_spec(mappings, table, "--table")]
        if table
        else [s for s in mappings.targets().values() if s.multi_source]
    )
    sink = open_sink(config, mappings, check=False)
    try:
        sink.introspect()
        found = provenance.conflicts(sink, specs, limit)
    finally:
        sink.close()
    if as_json:
        click.echo(provenance.conflicts_json(found))
        return
    rows = len({(d.table, tuple(d.key.values())) for d in found})
    summary = (
        f"{len(found)} disagreement(s) in {rows} row(s)"
        if found
        else "no disagreements: the sources agree on every merged row"
    )
    if found:
        output.show(provenance.conflicts_grid(found), notes=[(summary, "bold")])
    else:
        click.echo(summary)


# -- config --------------------------------------------------------------------------------------


@click.group("config")
def config_group() -> None:
    """The daemon's effective configuration."""


@config_group.command("show")
@CONFIG_OPTION
@JSON_OPTION
@_guard
def show_command(config_path: Path, as_json: bool) -> None:
    """The configuration as the daemon sees it (file, then TUNGGAL_*__* overrides), with
    every secret masked."""
    import yaml

    from tunggal.admin.masking import mask_tree
    from tunggal.config import load_config, override_names

    config = load_config(config_path)
    data = mask_tree(config.model_dump(mode="json"))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    overrides = override_names(os.environ)
    click.echo(f"# {config_path}, secrets masked")
    if overrides:
        click.echo(f"# overridden by the environment: {', '.join(overrides)}")
    click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
