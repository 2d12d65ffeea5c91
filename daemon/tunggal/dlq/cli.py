"""`tunggal dlq ...`: wires click to `dlq.store` and `dlq.replay`, and renders for people.

Kept free of module-level imports of `tunggal.cli` (which registers this group), so that either
module can be imported first.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from tunggal.cliutil import CONFIG_OPTION, _guard
from tunggal.errors import TunggalError

if TYPE_CHECKING:
    import psycopg

    from tunggal.config import TunggalConfig
    from tunggal.dlq.store import Entry
    from tunggal.progress import Task

# Below this many entries a replay is over before a bar would be worth reading.
_PROGRESS_FROM = 200
_SHORT_ERROR = 100

SOURCE_OPTION = click.option("--source", help="Only entries of this source.")
TABLE_OPTION = click.option(
    "--table", help="Only entries of this source table: schema.table, or a bare name (any schema)."
)


def _load(config_path: Path) -> TunggalConfig:
    from tunggal.config import load_config

    return load_config(config_path)


def _connect(config: TunggalConfig) -> psycopg.Connection[Any]:
    from tunggal.dlq import store

    return store.connect(config.target.dsn, connect_timeout_s=config.target.connect_timeout_s)


def _stamp(value: dt.datetime) -> str:
    """Local time for people; `--json` gives ISO 8601 with the offset."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _short(error: str) -> str:
    first = error.strip().splitlines()[0] if error.strip() else ""
    # A mapping error begins "<file>:<line>: <source> <table> -> <target>.<column>: ...";
    # in a one-line summary the target column and the reason are what tell entries apart.
    _, arrow, rest = first.partition(" -> ")
    first = rest if arrow else first
    return first if len(first) <= _SHORT_ERROR else first[: _SHORT_ERROR - 3] + "..."


def _plural(n: int) -> str:
    return f"{n} dead letter{'' if n == 1 else 's'}"


@click.group("dlq")
def dlq_group() -> None:
    """Inspect, re-apply and purge dead letters (events that could not be applied)."""


# -- list ----------------------------------------------------------------------------------------


@dlq_group.command("list")
@CONFIG_OPTION
@SOURCE_OPTION
@TABLE_OPTION
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, every field.")
@_guard
def list_command(
    config_path: Path, source: str | None, table: str | None, limit: int, as_json: bool
) -> None:
    """The newest dead letters, and how many there are in total."""
    from tunggal.dlq import store

    config = _load(config_path)
    selection = store.Selection(source=source, table=table)
    with _connect(config) as conn:
        total = store.count(conn, selection)
        entries = store.fetch(conn, selection, limit=limit, newest_first=True)
    summary = f"{_plural(total)} in total" + (
        f", showing the newest {len(entries)}" if len(entries) < total else ""
    )
    if as_json:
        for entry in entries:
            click.echo(orjson.dumps(entry.as_json()).decode())
        click.echo(summary, err=True)  # stdout stays pure JSON lines
    elif sys.stdout.isatty():
        from rich.console import Console

        console = Console()
        console.print(entries_table(entries, console.width))
        console.print(summary)
    else:
        for entry in entries:
            click.echo("\t".join(_list_cells(entry)))
        click.echo(summary, err=True)  # stdout stays one tab-separated line per entry


def _list_cells(entry: Entry) -> list[str]:
    return [
        str(entry.id),
        entry.source,
        entry.table or "-",
        entry.error_class,
        _short(entry.error),
        _stamp(entry.created_at),
    ]


def entries_table(entries: list[Entry], width: int) -> Any:
    """A rich table `width` columns wide at most: the error column alone gives way, since
    rich crops rows rather than shrink a column that must not wrap."""
    from rich.table import Table

    headers = ("id", "source", "table", "error class", "error", "created")
    rows = [_list_cells(entry) for entry in entries]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    error = headers.index("error")
    room = width - (sum(widths) - widths[error]) - 2 * (len(headers) - 1)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for i, header in enumerate(headers):
        if i == error:
            table.add_column(header, overflow="ellipsis", no_wrap=True, max_width=max(12, room))
        else:
            table.add_column(header, no_wrap=True, min_width=widths[i])
    for row in rows:
        table.add_row(*row)
    return table


# -- show ----------------------------------------------------------------------------------------


@dlq_group.command("show")
@CONFIG_OPTION
@click.argument("entry_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="Every field as one JSON object.")
@_guard
def show_command(config_path: Path, entry_id: int, as_json: bool) -> None:
    """Every field of one dead letter, with its raw key and value pretty-printed."""
    from tunggal.dlq import store

    config = _load(config_path)
    with _connect(config) as conn:
        entry = store.get(conn, entry_id)
    if entry is None:
        raise TunggalError(f"no dead letter with id {entry_id} (see `tunggal dlq list`)")
    if as_json:
        click.echo(orjson.dumps(entry.as_json(), option=orjson.OPT_INDENT_2).decode())
        return
    fields = [
        ("id", str(entry.id)),
        ("source", entry.source),
        ("table", entry.table or "-"),
        ("destination", entry.destination or "-"),
        ("position", "-" if entry.position is None else str(entry.position)),
        ("error class", entry.error_class),
        ("mapping hash", entry.mapping_hash or "-"),
        ("first failed", _stamp(entry.first_failed_at)),
        ("created", _stamp(entry.created_at)),
        ("attempts", str(entry.attempts)),
        ("last failed", _stamp(entry.last_failed_at)),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        click.echo(f"{name + ':':<{width + 1}} {value}")
    click.echo(f"\nerror:\n{_indent(entry.error)}")
    click.echo(f"\nraw key:\n{_indent(pretty_json(entry.raw_key))}")
    click.echo(f"\nraw value:\n{_indent(pretty_json(entry.raw_value))}")


def pretty_json(text: str | None) -> str:
    """Indented JSON when the text parses (Debezium's key and value), else the text as stored."""
    if text is None:
        return "(null)"
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines() or [""])


# -- replay --------------------------------------------------------------------------------------


@dlq_group.command("replay")
@CONFIG_OPTION
@SOURCE_OPTION
@TABLE_OPTION
@click.option("--id", "ids", type=int, multiple=True, metavar="ID", help="Only this entry; repeat.")
@_guard
def replay_command(
    config_path: Path, source: str | None, table: str | None, ids: tuple[int, ...]
) -> None:
    """Re-apply dead letters, oldest first, through the current mapping files.

    Entries that apply now leave the queue in the same transaction as the rows they write;
    entries that fail again stay, with the new error. Exits 0 either way.
    """
    from tunggal.dlq import store
    from tunggal.dlq.replay import Replayer, open_dead_letter_sink

    config = _load(config_path)
    _configure_logging(config)
    sink, pipeline = open_dead_letter_sink(config)
    bar = _Bar()
    try:
        with _connect(config) as conn:
            report = Replayer(config, sink, pipeline).run(
                conn,
                store.Selection(source=source, table=table, ids=ids),
                on_start=bar.start,
                on_batch=bar.advance,
            )
    finally:
        bar.close()
        sink.close()
    click.echo(f"replayed {report.replayed}, still failing {report.still_failing}")
    if report.no_rows:
        click.echo(
            f"{report.no_rows} of the replayed wrote no row (filtered out, no longer mapped, "
            "or superseded in their batch)"
        )
    if report.not_replayable:
        click.echo(
            f"{report.not_replayable} of the failing hold no recorded event and cannot be "
            "replayed; remove them with `tunggal dlq purge`"
        )


def _configure_logging(config: TunggalConfig) -> None:
    from tunggal import logs

    ctx = click.get_current_context()
    chosen = (ctx.find_root().obj or {}).get("log_format")
    level = logging.getLogger().level
    logs.configure(logging.getLevelName(level), chosen or config.logging.format)
    if level > logging.DEBUG:
        # The pipeline logs every poison event; for entries that fail again the summary line
        # and `tunggal dlq list` say it once instead of one error line per entry.
        logging.getLogger("tunggal.runtime.pipeline").setLevel(logging.CRITICAL)


class _Bar:
    """Replay progress: a bar on stderr in a terminal (from `_PROGRESS_FROM` entries on),
    a log line every ~10 s otherwise."""

    def __init__(self) -> None:
        from tunggal.progress import ProgressDisplay

        self._display = ProgressDisplay(min_total=_PROGRESS_FROM)
        self._total: int | None = None
        self._done = 0

    def _task(self) -> Task:
        from tunggal.progress import Task

        return Task("dlq", "replaying dead letters", self._done, self._total, unit="entries")

    def start(self, total: int) -> None:
        self._total = total
        self._display.update([self._task()])

    def advance(self, n: int) -> None:
        self._done += n
        self._display.update([self._task()])

    def close(self) -> None:
        self._display.close([self._task()])


# -- purge ---------------------------------------------------------------------------------------


def _parse_before(ctx: click.Context, param: click.Parameter, value: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO date or datetime (e.g. 2026-03-01 or 2026-03-01T08:00)"
        ) from None
    # A date or datetime without an offset means the admin's local time.
    return moment if moment.tzinfo is not None else moment.astimezone()


@dlq_group.command("purge")
@CONFIG_OPTION
@click.option(
    "--before",
    required=True,
    metavar="DATE",
    callback=_parse_before,
    help="Delete entries created before this ISO date or datetime (local time unless given).",
)
@SOURCE_OPTION
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_guard
def purge_command(config_path: Path, before: dt.datetime, source: str | None, yes: bool) -> None:
    """Delete dead letters created before a date, e.g. after they were dealt with."""
    from tunggal.dlq import store

    if not yes and not sys.stdin.isatty():
        raise click.UsageError("not a terminal, so nobody can confirm: pass --yes")
    config = _load(config_path)
    selection = store.Selection(source=source, created_before=before)
    with _connect(config) as conn:
        if not yes:
            n = store.count(conn, selection)
            if n == 0:
                click.echo("purged 0 dead letters")
                return
            scope = f" of source {source}" if source else ""
            click.confirm(
                f"delete {_plural(n)}{scope} created before {_stamp(before)}?", abort=True
            )
        deleted = store.purge(conn, selection)
    click.echo(f"purged {_plural(deleted)}")
