"""`tunggal verify` of a table several sources write: do its rows still say what its
contributions give by the merge rules?

Each source's rows are verified against its contributions (`reconcile.verify`); this closes the
loop from the contributions to the visible rows, which the daemon writes together in each
transaction. A row edited, deleted or inserted by hand shows here. It reads one REPEATABLE READ
snapshot of the target, so nothing is in flight; the rules are applied by
`mapping.survivorship.resolve`, the Python twin of the sink's SQL (as `tunggal explain` does).

The contributions and the rows come in one query ordered by key, grouped here key by key:
memory holds one key's contributions at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from tunggal.mapping import TargetSpec
from tunggal.mapping.dbinfo import contributions_table
from tunggal.mapping.survivorship import HARD, LIVE, Contribution, resolve
from tunggal.reconcile.compare import Difference
from tunggal.reconcile.pgsql import ident

MERGE_SOURCE: Final = "(merge)"  # what runs and metrics name this check's source


@dataclass
class MergeResult:
    target: TargetSpec
    started_at: datetime
    seconds: float = 0.0
    rows: int = 0  # keys compared
    drift: list[Difference] = field(default_factory=list)
    beyond: int = 0  # drifted rows not kept

    @property
    def in_sync(self) -> bool:
        return not self.drift and not self.beyond

    def count(self, kind: str) -> int:
        return sum(1 for d in self.drift if d.kind == kind)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def check_merged(
    conn: psycopg.Connection[Any],
    spec: TargetSpec,
    stored: Mapping[str, str],
    details: int = 20_000,
) -> MergeResult:
    """Compare the rows of `spec` with what its contributions give. `stored`: the columns of
    its contributions table (one added to the mappings since may be missing there)."""
    result = MergeResult(spec, datetime.now(UTC))
    started = time.monotonic()
    rules = spec.merge
    values = [c for c in rules.columns if c in stored]
    soft = rules.soft_delete_column
    conn.rollback()
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        for key, contributions, row in _groups(conn, spec, values, soft):
            result.rows += 1
            found = _compare(key, contributions, row, rules, values)
            if found is None:
                continue
            if len(result.drift) < details:
                result.drift.append(found)
            else:
                result.beyond += 1
    finally:
        conn.rollback()
    result.seconds = time.monotonic() - started
    return result


def _compare(
    key: tuple[str, ...],
    contributions: list[Contribution],
    row: dict[str, Any] | None,
    rules: Any,
    values: Sequence[str],
) -> Difference | None:
    resolved = resolve(rules, contributions)
    if resolved.state == HARD:
        if row is None:
            return None
        return Difference("extra", key, target=_texts(row, values), position=row["_pos"])
    expected = dict(resolved.values)
    if row is None:
        return Difference("missing", key, source=_texts(expected, values))
    columns = [c for c in values if not _same(expected.get(c), row.get(c))]
    if (resolved.state == LIVE) != (row.get("_soft") is None):
        columns.append(rules.soft_delete_column or "deleted_at")
    if not columns:
        return None
    return Difference(
        "differing",
        key,
        columns=tuple(columns),
        source=_texts(expected, values),
        target=_texts(row, values),
        position=row["_pos"],
    )


def _texts(values: Mapping[str, Any], columns: Sequence[str]) -> dict[str, str | None]:
    return {c: None if values.get(c) is None else str(values.get(c)) for c in columns}


def _groups(
    conn: psycopg.Connection[Any], spec: TargetSpec, values: Sequence[str], soft: str | None
) -> Iterator[tuple[tuple[str, ...], list[Contribution], dict[str, Any] | None]]:
    """(key as text, its contributions, its target row or None), key by key."""
    ids = sql.Identifier
    key = spec.key
    cols = sql.SQL(", ").join(ids(c) for c in values)
    keytext = sql.SQL(", ").join(sql.SQL("{}::text").format(ids(k)) for k in key)
    order = sql.SQL(", ").join(ids(k) for k in key)
    soft_expr = sql.SQL("{}").format(ids(soft)) if soft else sql.SQL("NULL::timestamptz")
    query = sql.SQL(
        "SELECT * FROM ("
        "SELECT 0 AS side, ARRAY[{keytext}] AS kt, {order}, _tunggal_source AS src, "
        "_tunggal_position AS pos, _tunggal_ts AS ts, _tunggal_state AS st, "
        "NULL::timestamptz AS soft, {cols} FROM {contributions} "
        "UNION ALL "
        "SELECT 1, ARRAY[{keytext}], {order}, NULL, _tunggal_position, NULL, NULL, {soft}, {cols} "
        "FROM {target}) AS u ORDER BY {order}, side"
    ).format(
        keytext=keytext,
        order=order,
        cols=cols,
        contributions=ident(contributions_table(spec.name)),
        soft=soft_expr,
        target=ident(spec.name),
    )
    maps = spec.merge.maps
    current: tuple[str, ...] | None = None
    contributions: list[Contribution] = []
    row: dict[str, Any] | None = None
    first = 2 + len(key) + 5  # side, kt, the key, src, pos, ts, st, soft
    with conn.cursor(name="tunggal_verify_merged") as cur:
        cur.itersize = 5000
        cur.execute(query)
        for record in cur:
            kt = tuple(record[1])
            if kt != current:
                if current is not None:
                    yield current, contributions, row
                current, contributions, row = kt, [], None
            data = dict(zip(values, record[first:], strict=True))
            if record[0] == 0:
                source = record[2 + len(key)]
                mapped = maps.get(source, frozenset())
                contributions.append(
                    Contribution(
                        source=source,
                        values={c: v for c, v in data.items() if c in mapped},
                        position=int(record[3 + len(key)]),
                        commit_ts_us=int(record[4 + len(key)]),
                        state=record[5 + len(key)],
                    )
                )
            else:
                row = {**data, "_pos": int(record[3 + len(key)]), "_soft": record[6 + len(key)]}
    if current is not None:
        yield current, contributions, row
