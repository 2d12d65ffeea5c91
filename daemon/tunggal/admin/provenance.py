"""`tunggal explain` and `tunggal conflicts`: where a consolidated value comes from, and where
the sources disagree.

An auditor asks "where does this number come from?": `explain` shows each column of one target
row, the source that supplied it by the table's rules, that source's commit time and position,
and what every other source holds for the row. The supplier is worked out by
`mapping.survivorship.resolve` from the stored contributions, the Python twin of the SQL that
made the row; where the row and its contributions differ (someone edited the target by hand),
it says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tunggal.admin.output import Grid
from tunggal.errors import ConfigError, Problem
from tunggal.events.decode import describe_position
from tunggal.mapping import MappingSet, TargetSpec
from tunggal.mapping.dbinfo import contributions_table
from tunggal.mapping.spec import DEFAULT_SCHEMA
from tunggal.mapping.survivorship import HARD, LIVE, Contribution, resolve
from tunggal.sink.merge import Disagreement, read_conflicts, read_contributions, read_row
from tunggal.sink.postgres import PostgresSink
from tunggal.yamlfile import suggest


def when(ts_us: int | None) -> str | None:
    """A commit time as ISO 8601 UTC, to the second (µs in JSON would be noise for people)."""
    if ts_us is None:
        return None
    moment = dt.datetime.fromtimestamp(ts_us / 1_000_000, dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


def target_spec(mappings: MappingSet, name: str, option: str = "TABLE") -> TargetSpec:
    """The mapped target table `name` ("opd" is public.opd), or a ConfigError with a guess."""
    qualified = name if "." in name else f"{DEFAULT_SCHEMA}.{name}"
    targets = mappings.targets()
    spec = targets.get(qualified)
    if spec is None:
        guess = suggest(qualified, sorted(targets))
        raise ConfigError(
            [
                Problem(
                    option,
                    "",
                    f"no mapping writes target table {name}",
                    hint=f"did you mean {guess}?" if guess else f"tables: {', '.join(targets)}",
                )
            ]
        )
    return spec


@dataclass
class Holding:
    """What one other source holds for one column."""

    source: str
    value: Any
    state: str
    mapped: bool  # whether the source maps the column in today's mappings


@dataclass
class ColumnOrigin:
    column: str
    value: Any
    rule: str | None  # None: the table has one source
    source: str | None
    commit_ts_us: int | None
    position: int | None
    conflict: bool = False
    others: list[Holding] = field(default_factory=list)


@dataclass
class Explanation:
    table: str
    key: dict[str, str]
    state: str  # live, soft-deleted or absent
    merged: bool
    columns: list[ColumnOrigin] = field(default_factory=list)
    contributions: list[Contribution] = field(default_factory=list)
    writers: tuple[str, ...] = ()
    bookkeeping: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kinds: Mapping[str, str] = field(default_factory=dict)  # source -> connector kind

    def position(self, source: str | None, position: Any) -> str | None:
        """A position as its source's database writes it (an LSN, binlog coordinates)."""
        if position is None:
            return None
        kind = self.kinds.get(source or "")
        return describe_position(kind, int(position)) if kind else str(int(position))

    @property
    def found(self) -> bool:
        return self.state != "absent" or bool(self.contributions)

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "table": self.table,
                "key": self.key,
                "state": self.state,
                "merged": self.merged,
                "source": self.bookkeeping.get("_tunggal_source"),
                "commit_ts": when(self.bookkeeping.get("_tunggal_ts")),
                "position": _position(self.bookkeeping.get("_tunggal_position")),
                "position_text": self.position(
                    self.bookkeeping.get("_tunggal_source"),
                    self.bookkeeping.get("_tunggal_position"),
                ),
                "columns": [
                    {
                        "column": c.column,
                        "value": c.value,
                        "rule": c.rule,
                        "source": c.source,
                        "commit_ts": when(c.commit_ts_us),
                        "position": _position(c.position),
                        "position_text": self.position(c.source, c.position),
                        "conflict": c.conflict,
                        "others": [h.__dict__ for h in c.others],
                    }
                    for c in self.columns
                ],
                "contributions": [
                    {
                        "source": c.source,
                        "state": c.state,
                        "commit_ts": when(c.commit_ts_us),
                        "position": str(c.position),
                        "position_text": self.position(c.source, c.position),
                        "writes_table": c.source in self.writers,
                        "values": dict(c.values),
                    }
                    for c in self.contributions
                ],
                "notes": self.notes,
            },
            default=str,
            option=orjson.OPT_INDENT_2,
        )

    def grids(self) -> list[Grid]:
        key = ", ".join(f"{k}={v}" for k, v in self.key.items())
        columns = Grid(
            ["column", "value", "from", "committed (UTC)", "position", "rule", "other sources"],
            title=f"{self.table} {key}: {self.state}",
        )
        for c in self.columns:
            others = "; ".join(
                f"{h.source}: {text(h.value)}"
                + ("" if h.state == LIVE else f" ({h.state}-deleted)")
                + ("" if h.mapped else " (no longer mapped)")
                for h in c.others
            )
            columns.add(
                [
                    c.column,
                    text(c.value),
                    c.source or "-",
                    when(c.commit_ts_us) or "-",
                    self.position(c.source, c.position) or "-",
                    c.rule or "-",
                    others or "-",
                ],
                [None, "bold red" if c.conflict else None, None, None, None, "dim", None],
            )
        grids = [columns]
        if self.contributions:
            held = Grid(
                ["source", "state", "committed (UTC)", "position", "writes the table"],
                title="what each source holds",
            )
            for given in self.contributions:
                held.add(
                    [
                        given.source,
                        given.state,
                        when(given.commit_ts_us) or "-",
                        self.position(given.source, given.position) or "-",
                        "yes" if given.source in self.writers else "no (its values are not used)",
                    ]
                )
            grids.append(held)
        return grids


def _position(value: Any) -> str | None:
    return None if value is None else str(int(value))


def explain(
    sink: PostgresSink,
    spec: TargetSpec,
    key: Sequence[str],
    kinds: Mapping[str, str] | None = None,
) -> Explanation:
    """One target row, column by column, with its sources. `key`: the key values as text;
    `kinds`: each source's connector kind, to show positions as its database does."""
    if len(key) != len(spec.key):
        raise ConfigError(
            [
                Problem(
                    "KEY",
                    "",
                    f"{spec.name} has key ({', '.join(spec.key)}): give {len(spec.key)} value(s), "
                    f"got {len(key)}",
                )
            ]
        )
    info = sink.tables.get(spec.name)
    if info is None:
        raise ConfigError(
            [Problem("TABLE", "", f"target table {spec.name} does not exist", None, None)]
        )
    stored = sink.tables.get(contributions_table(spec.name))
    with sink.cursor() as cur:
        row = read_row(cur, spec, info.columns, key)
        contributions = (
            []
            if stored is None
            else read_contributions(cur, spec, info.columns, stored.columns, key)
        )
    soft = spec.soft_delete_column
    state = "absent" if row is None else "soft-deleted" if soft and row.get(soft) else LIVE
    out = Explanation(
        table=spec.name,
        key=dict(zip(spec.key, key, strict=True)),
        state=state,
        merged=stored is not None,
        contributions=contributions,
        writers=spec.merge.sources,
        bookkeeping={k: v for k, v in (row or {}).items() if k.startswith("_tunggal_")},
        kinds=kinds or {},
    )
    if stored is None:
        _single(out, spec, row)
    else:
        _merged(out, spec, row, contributions)
    return out


def _single(out: Explanation, spec: TargetSpec, row: dict[str, Any] | None) -> None:
    if row is None:
        return
    source = row.get("_tunggal_source")
    for column in spec.columns:
        if column in spec.key:
            continue
        out.columns.append(
            ColumnOrigin(
                column,
                row.get(column),
                None,
                source,
                row.get("_tunggal_ts"),
                row.get("_tunggal_position"),
            )
        )


def _merged(
    out: Explanation,
    spec: TargetSpec,
    row: dict[str, Any] | None,
    contributions: list[Contribution],
) -> None:
    rules = spec.merge
    resolved = resolve(rules, contributions)
    by_source = {c.source: c for c in contributions}
    for column, rule in rules.columns.items():
        supplier = resolved.supplier.get(column)
        given = by_source.get(supplier) if supplier else None
        value = row.get(column) if row is not None else resolved.values.get(column)
        out.columns.append(
            ColumnOrigin(
                column,
                value,
                rule.describe(),
                supplier,
                given.commit_ts_us if given else None,
                given.position if given else None,
                conflict=column in resolved.conflicts,
                others=[
                    Holding(c.source, c.values.get(column), c.state, mapped)
                    for c in contributions
                    # A source that no longer maps the column but left a value there says so.
                    if c.source != supplier
                    and (
                        (mapped := column in rules.maps.get(c.source, ()))
                        or c.values.get(column) is not None
                    )
                ],
            )
        )
    expected = (
        "absent" if resolved.state == HARD else "soft-deleted" if resolved.state != LIVE else LIVE
    )
    if expected != out.state:
        out.notes.append(
            f"the contributions make this row {expected}, but it is {out.state} in the target"
        )
    elif row is not None:
        differ = [
            c for c in rules.columns if c in row and text(row[c]) != text(resolved.values.get(c))
        ]
        if differ:
            out.notes.append(
                f"the target differs from what its contributions give on {', '.join(differ)} "
                "(edited by hand?); the next change of the row recomputes it"
            )
    if resolved.conflicts:
        out.notes.append(
            f"the sources disagree on {', '.join(resolved.conflicts)}: fix it in the source "
            "systems (`tunggal conflicts` lists every such row)"
        )


def conflicts(sink: PostgresSink, specs: Sequence[TargetSpec], limit: int) -> list[Disagreement]:
    """The current disagreements of the given merged tables, at most `limit` per table."""
    found: list[Disagreement] = []
    with sink.cursor() as cur:
        for spec in specs:
            info = sink.tables.get(spec.name)
            if info is None or contributions_table(spec.name) not in sink.tables:
                continue
            found.extend(read_conflicts(cur, spec, info.columns, limit))
    return found


def conflicts_grid(found: Sequence[Disagreement]) -> Grid:
    grid = Grid(["table", "key", "column", "source", "value", "committed (UTC)"])
    for d in found:
        for i, v in enumerate(d.values):
            head = (
                [d.table, ", ".join(f"{k}={text(x)}" for k, x in d.key.items()), d.column]
                if i == 0
                else ["", "", ""]
            )
            grid.add([*head, v["source"], text(v["value"]), when(v["ts"]) or "-"])
    return grid


def conflicts_json(found: Sequence[Disagreement]) -> bytes:
    return orjson.dumps(
        [
            {
                "table": d.table,
                "key": d.key,
                "column": d.column,
                "values": [
                    {
                        "source": v["source"],
                        "value": v["value"],
                        "commit_ts": when(v["ts"]),
                        "position": v["position"],
                    }
                    for v in d.values
                ],
            }
            for d in found
        ],
        default=str,
        option=orjson.OPT_INDENT_2,
    )
