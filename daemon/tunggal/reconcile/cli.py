"""`tunggal resync` and `tunggal forget`: click wiring only (see `reconcile.signals`)."""

from __future__ import annotations

from pathlib import Path

import click

from tunggal.cliutil import CONFIG_OPTION, _guard
from tunggal.errors import ConfigError, FatalError, Problem


@click.command("resync")
@CONFIG_OPTION
@click.option("--source", required=True, help="The source to read again.")
@click.option(
    "--table",
    "tables",
    multiple=True,
    help="A source table (schema.table) to read again; repeat for several. Default: every "
    "table the mappings read from the source.",
)
@_guard
def resync_command(config_path: Path, source: str, tables: tuple[str, ...]) -> None:
    """Read tables of a source again while streaming goes on (a Debezium incremental snapshot,
    with the replication slot kept and no other table read). Rows the source no longer has are
    removed, as the delete policy says, when each table's read ends. For a target table
    emptied by mistake, or rows changed there by hand."""
    from tunggal.config import load_config
    from tunggal.reconcile.signals import request_snapshot
    from tunggal.runtime.app import load_all
    from tunggal.yamlfile import suggest

    config = load_config(config_path)
    mappings, connectors = load_all(config)
    configured = {s.name: s for s in config.sources}
    if source not in connectors:
        guess = suggest(source, sorted(connectors))
        raise ConfigError(
            [
                Problem(
                    "--source",
                    "",
                    f"no source {source} in {config_path}",
                    hint=f"did you mean {guess}?" if guess else f"sources: {', '.join(connectors)}",
                )
            ]
        )
    mapped = sorted(mappings.source_tables(source))
    unknown = [t for t in tables if t not in mapped]
    if unknown:
        raise ConfigError(
            [
                Problem(
                    "--table",
                    "",
                    f"no mapping reads {t} from source {source}",
                    hint=f"did you mean {guess}?"
                    if (guess := suggest(t, mapped))
                    else f"mapped tables: {', '.join(mapped)}",
                )
                for t in unknown
            ]
        )
    chosen = list(tables) or mapped
    request = request_snapshot(
        connectors[source],
        config.target.dsn,
        chosen,
        reason="tunggal resync",
        where=str(config.resolve(configured[source].connector)),
    )
    click.echo(
        f"asked {source} to read {', '.join(chosen)} again (request {request.id}); "
        "`tunggal status` shows its progress, and rows the source no longer has are removed "
        "when each table's read ends"
    )


@click.command("forget")
@CONFIG_OPTION
@click.option("--source", required=True, help="The source whose rows to remove.")
@click.option("--table", required=True, help="The target table (schema.table, or a bare name).")
@click.option("--yes", is_flag=True, help="Delete; without it, only say how many rows.")
@_guard
def forget_command(config_path: Path, source: str, table: str, yes: bool) -> None:
    """Remove what a source wrote in a target table it no longer writes (after its mapping was
    removed): its rows, tombstones and truncate watermarks, or its contributions to a table
    that several sources write."""
    from tunggal.config import load_config
    from tunggal.mapping.spec import DEFAULT_SCHEMA
    from tunggal.runtime.app import load_all, open_sink

    config = load_config(config_path)
    mappings, _ = load_all(config)
    qualified = table if "." in table else f"{DEFAULT_SCHEMA}.{table}"
    spec = mappings.targets().get(qualified)
    if spec is not None and source in spec.merge.sources:
        writer = next(w for w in spec.writers if w.source == source)
        raise FatalError(
            f"{source} still writes {qualified} ({writer.file}:{writer.line}): remove that "
            "mapping first, or its next changes write the rows again"
        )
    sink = open_sink(config, mappings, check=False)
    try:
        tables = sink.introspect()
        if qualified not in tables:
            raise FatalError(f"target table {qualified} does not exist")
        found = sink.forget(qualified, source, apply=yes)
    finally:
        sink.close()
    if yes:
        click.echo(f"removed {found} row(s) {source} wrote in {qualified}")
    else:
        click.echo(f"{found} row(s) of {qualified} were written by {source}; add --yes to remove")
