"""`tunggal verify`: click wiring and output only (`reconcile.verify` does the work).

Exit 0: every table in sync; 1: drift (or rows that could not be settled, or an error);
2: bad input (unknown source or table, a source table without a primary key, a kind of
source verify cannot read), reported before anything is read.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import orjson

from tunggal.cliutil import CONFIG_OPTION, _guard
from tunggal.errors import ConfigError, TunggalError
from tunggal.reconcile.compare import Difference
from tunggal.reconcile.mergecheck import MERGE_SOURCE, MergeResult
from tunggal.reconcile.plan import Check
from tunggal.reconcile.repair import Repaired
from tunggal.reconcile.verify import Progress, TableResult


@click.command("verify")
@CONFIG_OPTION
@click.option("--source", default=None, help="Only this source (default: every source).")
@click.option(
    "--table",
    default=None,
    help="Only this target table (as in `explain`; a bare name is in public).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--repair",
    is_flag=True,
    help="Re-read the missing and differing rows through the running daemon; remove extra "
    "rows that did not change since verify saw them.",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds a differing row may take to arrive before it counts as drift; 0: do not "
    "wait for the daemon (it is stopped, or the source is quiet).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Drifted rows listed per table in the text output (--json lists all it kept).",
)
@_guard
def verify_command(
    config_path: Path,
    source: str | None,
    table: str | None,
    as_json: bool,
    repair: bool,
    wait_s: float,
    limit: int,
) -> None:
    """Compare each source's mapped tables with the rows it holds in the target."""
    from tunggal.config import load_config
    from tunggal.progress import ProgressDisplay, ProgressPoller, Task
    from tunggal.reconcile import plan
    from tunggal.reconcile.verify import Options, Verifier
    from tunggal.runtime.app import load_all

    config = load_config(config_path)
    mappings, connectors = load_all(config)
    checks = plan.load_checks(config, mappings, connectors, plan.Request(source, table))
    if repair:
        _signal_tables(config, connectors, checks)
    verifier = Verifier(config, mappings, Options(wait_s=wait_s), stop=threading.Event())
    current: list[tuple[Check, Progress]] = []

    def tasks() -> list[Task]:
        if not current:
            return []
        check, p = current[-1]
        label = f"verify {check.source} {check.target.name}"
        return [
            Task(
                f"{label}:source",
                f"{label} (source, {p.phase})",
                p.source_rows,
                max(p.source_total or 0, p.source_rows) or None,
                estimated=True,
            ),
            Task(
                f"{label}:target",
                f"{label} (target, {p.phase})",
                p.target_rows,
                max(p.target_total or 0, p.target_rows) or None,
                estimated=True,
            ),
        ]

    poller = ProgressPoller(tasks, ProgressDisplay(min_total=10_000)).start()
    results: list[TableResult] = []
    try:
        for check in checks:
            progress = Progress()
            current.append((check, progress))
            results.append(verifier.run(check, progress))
        merges = verifier.merged_rows(checks)
    finally:
        poller.close()
    repaired: list[Repaired] = []
    failed: TunggalError | None = None
    if repair:
        from tunggal.reconcile.repair import repair as do_repair

        try:
            repaired = do_repair(
                config,
                mappings,
                connectors,
                [r for r in results if not r.in_sync],
                [m for m in merges if not m.in_sync],
            )
        except TunggalError as exc:  # the results are shown all the same
            failed = exc
    recorded = _record(config.target.dsn, results, merges, repaired)
    if as_json:
        report = _json(results, merges, repaired)
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        _text(results, merges, repaired, limit)
        if not recorded:
            click.secho(
                "note: the target has no public.tunggal_verify_runs, so this run was not kept "
                "for the tunggal_verify_* metrics: run `tunggal schema --apply`",
                fg="yellow",
                err=True,
            )
    if failed is not None:
        click.secho(f"error: repair failed: {failed}", fg="red", err=True)
    in_sync = all(r.in_sync for r in results) and all(m.in_sync for m in merges)
    sys.exit(0 if in_sync and failed is None else 1)


def _signal_tables(config: Any, connectors: Any, checks: Sequence[Check]) -> None:
    """--repair re-reads rows through the sources' signal tables: refuse up front, before
    anything is read, when a source to verify has none."""
    from tunggal.reconcile.signals import no_signal_table

    problems = []
    for name in sorted({c.source for c in checks}):
        spec = connectors[name]
        if not spec.signal_table:
            source = next(s for s in config.sources if s.name == name)
            where = str(config.resolve(source.connector))
            problems += no_signal_table(spec, where).problems
    if problems:
        raise ConfigError(problems)


def _record(
    dsn: str,
    results: Sequence[TableResult],
    merges: Sequence[MergeResult],
    repaired: Sequence[Repaired],
) -> bool:
    import psycopg

    from tunggal.reconcile.runs import record

    conninfo = dsn.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        return record(conn, results, merges, {r.check: r.total for r in repaired})


# -- output ------------------------------------------------------------------------------------


def _value(value: str | None) -> str:
    if value is None:
        return "NULL"
    return value if len(value) <= 40 else value[:37] + "..."


def _summary(r: TableResult) -> str:
    parts = [
        f"{r.count('missing'):,} missing",
        f"{r.count('extra'):,} extra",
        f"{r.count('differing'):,} differing",
    ]
    if r.unsettled:
        parts.append(f"{len(r.unsettled):,} unsettled")
    if r.unmappable:
        parts.append(f"{r.unmappable:,} unmappable")
    if r.retained:
        parts.append(f"{r.retained:,} kept by delete: ignore")
    rows = max(r.source_rows, r.target_rows)
    return (
        f"{r.check.name}: {rows:,} rows checked ({r.source_rows:,} source, "
        f"{r.target_rows:,} target): {', '.join(parts)} in {r.seconds:.1f}s [{r.mode}]"
    )


def _grid(
    key: Sequence[str], rows: Sequence[Difference], unsettled: Sequence[Difference], limit: int
) -> None:
    from tunggal.admin import output
    from tunggal.admin.output import Grid

    if not rows or not limit:
        return
    grid = Grid(["kind", "key", "column", "source", "target"])
    for d in rows[:limit]:
        kind = "unsettled " + d.kind if d in unsettled else d.kind
        text = ", ".join(f"{c}={v}" for c, v in zip(key, d.key, strict=True))
        for i, column in enumerate(d.columns or ("",)):
            grid.add(
                [
                    kind if i == 0 else "",
                    text if i == 0 else "",
                    column,
                    _value(d.source.get(column)) if column else "",
                    _value(d.target.get(column)) if column else "",
                ]
            )
    output.show(grid)
    if len(rows) > limit:
        click.echo(f"... and {len(rows) - limit:,} more (--limit, or --json)")


def _text(
    results: Sequence[TableResult],
    merges: Sequence[MergeResult],
    repaired: Sequence[Repaired],
    limit: int,
) -> None:
    by_check = {r.check: r for r in repaired}
    for r in results:
        click.secho(_summary(r), fg=None if r.in_sync else "red")
        _grid(r.check.key, [*r.drift, *r.unsettled], r.unsettled, limit)
        if r.unsettled_reason and r.unsettled:
            click.echo(f"unsettled: {r.unsettled_reason}")
        for example in r.examples:
            click.echo(f"unmappable: {example}")
        done = by_check.get(r.check.name)
        if done is not None and done.total:
            click.echo(
                f"repair: asked {r.check.source} to read {done.reread:,} row(s) again "
                f"({', '.join(done.requests) or 'no request'}"
                + (f"; whole: {', '.join(done.whole)}" if done.whole else "")
                + f"); removed {done.removed:,} extra row(s)"
                + (f", {done.changed:,} changed since and left alone" if done.changed else "")
            )
    for m in merges:
        click.secho(
            f"{MERGE_SOURCE} {m.target.name}: {m.rows:,} rows checked against their "
            f"contributions: {m.count('missing'):,} missing, {m.count('extra'):,} extra, "
            f"{m.count('differing'):,} differing in {m.seconds:.1f}s",
            fg=None if m.in_sync else "red",
        )
        _grid(m.target.key, m.drift, (), limit)
        done = by_check.get(f"{MERGE_SOURCE} {m.target.name}")
        if done is not None and done.total:
            click.echo(f"repair: recomputed {done.removed:,} row(s) from their contributions")
    drifted = [*(r for r in results if not r.in_sync), *(m for m in merges if not m.in_sync)]
    total = sum(len(r.drift) + sum(r.beyond.values()) for r in results)
    total += sum(len(m.drift) + m.beyond for m in merges)
    checked = len(results) + len(merges)
    if drifted:
        click.secho(f"drift in {len(drifted)} of {checked} check(s): {total:,} row(s)", fg="red")
    else:
        click.secho(f"in sync: {checked} check(s)", fg="green")


def _difference(check: Check, d: Difference) -> dict[str, Any]:
    return _difference_of(check.key, check.columns, d)


def _difference_of(key: Sequence[str], columns: Sequence[str], d: Difference) -> dict[str, Any]:
    shown = d.columns or columns or tuple(d.source or d.target)
    return {
        "kind": d.kind,
        "key": dict(zip(key, d.key, strict=True)),
        "columns": list(d.columns),
        "source": {c: d.source.get(c) for c in shown} if d.source else None,
        "target": {c: d.target.get(c) for c in shown} if d.target else None,
        "position": None if d.position is None else str(d.position),
        "source_table": d.source_table,
        "source_key": list(d.pk) if d.pk else None,
    }


def _json(
    results: Sequence[TableResult], merges: Sequence[MergeResult], repaired: Sequence[Repaired]
) -> dict[str, Any]:
    by_check = {r.check: r for r in repaired}
    tables = []
    for r in results:
        check = r.check
        done = by_check.get(check.name)
        tables.append(
            {
                "source": check.source,
                "source_tables": [e.source_table for e in check.entries],
                "target_table": check.target.name,
                "mode": r.mode,
                "started_at": r.started_at.isoformat(),
                "seconds": round(r.seconds, 3),
                "position": str(r.position),
                "source_rows": r.source_rows,
                "target_rows": r.target_rows,
                "in_sync": r.in_sync,
                "missing": r.count("missing"),
                "extra": r.count("extra"),
                "differing": r.count("differing"),
                "unsettled": len(r.unsettled),
                "unmappable": r.unmappable,
                "retained": r.retained,
                "rows": [_difference(check, d) for d in r.drift],
                "unsettled_rows": [_difference(check, d) for d in r.unsettled],
                "unsettled_reason": r.unsettled_reason or None,
                "unmappable_examples": r.examples,
                "repair": None
                if done is None
                else {
                    "reread": done.reread,
                    "requests": done.requests,
                    "whole_tables": done.whole,
                    "removed": done.removed,
                    "changed_since": done.changed,
                },
            }
        )
    merged = []
    for m in merges:
        done = by_check.get(f"{MERGE_SOURCE} {m.target.name}")
        merged.append(
            {
                "target_table": m.target.name,
                "seconds": round(m.seconds, 3),
                "rows": m.rows,
                "in_sync": m.in_sync,
                "missing": m.count("missing"),
                "extra": m.count("extra"),
                "differing": m.count("differing"),
                "drift_rows": [_difference_of(m.target.key, (), d) for d in m.drift],
                "repair": None if done is None else {"recomputed": done.removed},
            }
        )
    in_sync = all(r.in_sync for r in results) and all(m.in_sync for m in merges)
    return {"in_sync": in_sync, "tables": tables, "merged_rows": merged}
