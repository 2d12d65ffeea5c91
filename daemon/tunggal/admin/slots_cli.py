"""`tunggal slots` and `tunggal slots drop`: wires click to admin.slots."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tunggal.admin.output import Grid, show
from tunggal.admin.slots import DropRefused, Slot, drop_orphan, list_slots
from tunggal.cliutil import CONFIG_OPTION, _guard


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@click.group("slots", invoke_without_command=True)
@CONFIG_OPTION
@click.pass_context
@_guard
def slots_group(ctx: click.Context, config_path: Path) -> None:
    """The replication slots on the PostgreSQL source servers (no daemon needed)."""
    ctx.obj = {**(ctx.obj or {}), "config_path": config_path}
    if ctx.invoked_subcommand is not None:
        return
    from tunggal.config import load_config

    found = list_slots(load_config(config_path))
    grid = Grid(["server", "slot", "database", "active", "retained WAL", "owner"])
    for slot in found.slots:
        state = slot.state
        over = state.retained_bytes is not None and state.retained_bytes > slot.warn_bytes
        grid.add(
            [
                slot.server,
                state.slot,
                state.database,
                "yes" if state.active else "no",
                _size(state.retained_bytes) + (" (over threshold)" if over else ""),
                f"source {state.source}" if state.source else "ORPHAN",
            ],
            [None] * 4 + ["bold red" if over else None, None if state.source else "yellow"],
        )
    notes: list[tuple[str, str | None]] = []
    if not found.slots:
        notes.append(("no tunggal replication slots on the source servers", None))
    orphans = [s.state.slot for s in found.slots if s.state.source is None]
    if orphans:
        notes.append(
            (f"orphan slots keep WAL until dropped: tunggal slots drop {orphans[0]}", "yellow")
        )
    for server, why in sorted(found.unreadable.items()):
        notes.append((f"cannot read the slots of {server}: {why}", "red"))
    show(grid, notes=notes)
    if found.unreadable:
        sys.exit(1)


@slots_group.command("drop")
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="TUNGGAL_CONFIG",
    help="The daemon's configuration file (default: the one given to `slots`).",
)
@click.argument("name")
@click.option("--server", default=None, help="host:port, when the slot is on several servers.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@_guard
def drop_command(
    ctx: click.Context, config_path: Path | None, name: str, server: str | None, yes: bool
) -> None:
    """Drop an orphan slot (one no configured source owns), after asking."""
    from tunggal.config import load_config

    config = load_config(config_path or ctx.obj["config_path"])

    def confirm(slot: Slot) -> bool:
        if yes:
            return True
        return click.confirm(
            f"drop replication slot {name} on {slot.server} (database {slot.state.database}, "
            f"holding {_size(slot.state.retained_bytes)} of WAL)? Its position is lost",
            default=False,
        )

    try:
        dropped = drop_orphan(config, name, server, confirm)
    except DropRefused as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    if dropped is None:
        click.echo("not dropped")
        sys.exit(1)
    click.echo(f"dropped replication slot {name} on {dropped.server}")
