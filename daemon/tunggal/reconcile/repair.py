"""`tunggal verify --repair`: put exactly the drifted rows right, through the normal stream.

- Rows the source has and the target lacks or holds wrong are read again by Debezium: an
  incremental snapshot limited to their primary keys (`reconcile.signals`), which the running
  daemon applies like any change, in order with the stream, through the mapping and the sink.
- Rows the target holds and the source does not are removed by verify itself, each only if
  it is still as verify saw it (its source and position unchanged), so that a row streaming
  in meanwhile is never lost: a compare-and-delete in `sink.postgres` for a table with one
  source; for a table several sources write, the source's contribution is withdrawn through
  the sink (at the position just after the one observed, which the newer-than rule lets
  through only if nothing newer came) and the row recomputed from the others.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import orjson
from psycopg import sql

from tunggal.config import TunggalConfig
from tunggal.connectors import ConnectorSpec
from tunggal.events.model import RawEvent
from tunggal.mapping import Delete, MappingSet, RowOp
from tunggal.reconcile.compare import Difference, keys_predicate
from tunggal.reconcile.mergecheck import MERGE_SOURCE, MergeResult
from tunggal.reconcile.pgsource import pk_condition
from tunggal.reconcile.pgsql import ident
from tunggal.reconcile.plan import Check
from tunggal.reconcile.signals import request_snapshot
from tunggal.reconcile.verify import TableResult
from tunggal.sink.collapse import collapse
from tunggal.sink.postgres import PostgresSink

log = logging.getLogger(__name__)

# Debezium's signal table keeps a signal's data in varchar(2048) (the DDL it documents and
# `signals.SIGNAL_TABLE_DDL` use).
SIGNAL_DATA_LIMIT: Final = 2048


@dataclass
class Repaired:
    check: str
    reread: int = 0  # rows asked to be read again
    requests: list[str] = field(default_factory=list)  # incremental snapshot request ids
    whole: list[str] = field(default_factory=list)  # source tables read again whole
    removed: int = 0  # extra rows removed
    changed: int = 0  # extra rows left alone: changed since verify saw them

    @property
    def total(self) -> int:
        return self.reread + self.removed


def signal_size(tables: Sequence[str], conditions: Mapping[str, str]) -> int:
    """The length of the `execute-snapshot` signal's data, as `signals.request_snapshot`
    writes it."""
    data: dict[str, object] = {
        "type": "incremental",
        "data-collections": [_regex(t) for t in tables],
    }
    if conditions:
        data["additional-conditions"] = [
            {"data-collection": _regex(t), "filter": f} for t, f in conditions.items()
        ]
    return len(orjson.dumps(data))


def _regex(table: str) -> str:
    return table.replace(".", r"\.")


def plan_conditions(wanted: Mapping[str, str]) -> dict[str, str | None]:
    """Per source table, the condition its rows are read again with, or None: read it whole.

    All of a source's tables go in one signal. Debezium adds the tables of a signal that
    arrives while an incremental snapshot runs to the running one and reports them under its
    id, so that a second request of ours could be taken for the first; one signal per repair
    avoids that. When the conditions do not fit in it (varchar(2048)), the tables with the
    longest are read whole instead, which the daemon also handles (rows not read again are
    gone from the source).
    """
    plan: dict[str, str | None] = dict(wanted)
    while True:
        kept = {t: c for t, c in plan.items() if c is not None}
        if not kept or signal_size(list(plan), kept) <= SIGNAL_DATA_LIMIT:
            return plan
        longest = max(kept, key=lambda t: len(kept[t]))
        plan[longest] = None


def repair(
    config: TunggalConfig,
    mappings: MappingSet,
    connectors: Mapping[str, ConnectorSpec],
    results: Sequence[TableResult],
    merges: Sequence[MergeResult] = (),
) -> list[Repaired]:
    """Ask each source once to read its drifted rows again; remove the extra rows; recompute
    the rows of tables several sources write that differ from their contributions."""

    reports = {r.check.name: Repaired(r.check.name) for r in results}
    # source -> source table -> (primary key columns, their types, the keys)
    wanted: dict[str, dict[str, tuple[Sequence[str], Mapping[str, str], set[tuple[str, ...]]]]]
    wanted = {}
    readers: dict[str, dict[str, list[Repaired]]] = {}
    for result in results:
        check = result.check
        entries = {e.source_table: e for e in check.entries}
        for d in result.drift:
            if d.kind not in ("missing", "differing") or not d.pk or d.source_table not in entries:
                continue
            entry = entries[d.source_table]
            tables = wanted.setdefault(check.source, {})
            _, _, keys = tables.setdefault(
                entry.source_table, (entry.table.primary_key, entry.table.columns, set())
            )
            keys.add(d.pk)
            reports[check.name].reread += 1
            by_table = readers.setdefault(check.source, {}).setdefault(entry.source_table, [])
            if reports[check.name] not in by_table:
                by_table.append(reports[check.name])
    for source, tables in wanted.items():
        conditions = plan_conditions(
            {t: pk_condition(pk, types, sorted(keys)) for t, (pk, types, keys) in tables.items()}
        )
        request = request_snapshot(
            connectors[source],
            config.target.dsn,
            sorted(tables),
            reason="verify --repair",
            conditions={t: c for t, c in conditions.items() if c is not None},
        )
        for table, asked in readers[source].items():
            for report in asked:
                if request.id not in report.requests:
                    report.requests.append(request.id)
                if conditions.get(table) is None:
                    report.whole.append(table)
    sink: PostgresSink | None = None
    try:
        for merge in merges:
            if sink is None:
                sink = _open(config, mappings)
            name = f"{MERGE_SOURCE} {merge.target.name}"
            done = sink.recompute_rows(merge.target.name, [d.key for d in merge.drift])
            reports[name] = Repaired(name, removed=done.upserted + done.deleted)
        for result in results:
            check = result.check
            extra = [d for d in result.drift if d.kind == "extra" and d.position is not None]
            if not extra:
                continue
            if sink is None:
                sink = _open(config, mappings)
            if check.contributions is None:
                removed = sink.remove_unchanged(
                    check.target.name,
                    check.source,
                    [(d.key, d.position) for d in extra if d.position is not None],
                    soft=check.delete == "soft",
                )
            else:
                removed = _withdraw(sink, check, extra)
            reports[check.name].removed += removed
            reports[check.name].changed += len(extra) - removed
    finally:
        if sink is not None:
            sink.close()
    return list(reports.values())


def _open(config: TunggalConfig, mappings: MappingSet) -> PostgresSink:
    from tunggal.runtime.app import open_sink

    sink = open_sink(config, mappings, check=False)
    sink.introspect()
    sink.prepare_merges()
    return sink


def _withdraw(sink: PostgresSink, check: Check, rows: Sequence[Difference]) -> int:
    """Withdraw the source's contribution to each row unless it changed since it was seen;
    the rows are recomputed from the other sources' contributions in the same transaction."""
    table, source = check.target.name, check.source
    ops: list[tuple[RowOp, RawEvent | None]] = [
        (Delete(table, d.key, source, d.position + 1, d.ts or 0, check.delete == "soft"), None)
        for d in rows
        if d.position is not None
    ]
    sink.write(collapse(ops), {}, [])
    assert check.contributions is not None
    predicate, params = keys_predicate(check, [d.key for d in rows], "t")
    wanted = {d.key: d.position + 1 for d in rows if d.position is not None}
    with sink.cursor() as cur:
        found = cur.execute(
            sql.SQL(
                "SELECT ARRAY[{}], t._tunggal_position::text FROM {} AS t "
                "WHERE t._tunggal_source = {} AND t._tunggal_state <> 'live' AND {}"
            ).format(
                sql.SQL(", ").join(
                    sql.SQL("t.{}::text").format(sql.Identifier(k)) for k in check.key
                ),
                ident(check.contributions),
                sql.Literal(source),
                predicate,
            ),
            params,
        ).fetchall()
    return sum(1 for key, pos in found if wanted.get(tuple(key)) == int(pos))
