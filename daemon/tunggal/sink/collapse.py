"""Collapse a batch of row operations to the last state per target row.

Pure code, mirrored by the SQL in `sink.postgres`: the rule for "newer" must be the same in
both places, or a replay could move a row back in time.

Worked example, one batch for target table `opd`, key (kode_opd,):
    Upsert(1.01, nama="Dinas A")   pos 10
    Upsert(1.01, alamat=UNAVAILABLE, nama="Dinas B") pos 12
    Delete(1.02)                   pos 13
    Upsert(1.02, ...)              pos 14
collapses to Upsert(1.01, nama="Dinas B", alamat=<value from pos 10>) and Upsert(1.02, ...):
an unchanged TOAST column takes the value an earlier event of the same batch carried.
A Truncate is a barrier: the batch is split around it, so that rows written before it are
removed and rows written after it survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tunggal.events.model import UNAVAILABLE, RawEvent
from tunggal.mapping.ops import Delete, RowOp, Truncate, Upsert


def is_newer(
    source: str,
    position: int,
    ts: int,
    than_source: str | None,
    than_position: int | None,
    than_ts: int | None,
) -> bool:
    """Does a change (source, position, ts) supersede what a row currently holds?

    Within one source, the log position decides. Across sources, the later source commit wins,
    ties broken by source name so that every replay order gives the same answer.
    """
    if than_source is None or than_position is None or than_ts is None:
        return True
    if source == than_source:
        return position > than_position
    return (ts, source) > (than_ts, than_source)


@dataclass
class Pending:
    """The surviving operation for one target row, with the raw events that produced it."""

    op: Upsert | Delete
    raws: list[RawEvent | None] = field(default_factory=list)


@dataclass
class Segment:
    """Row operations between two truncates, at most one per (table, key)."""

    rows: dict[tuple[str, tuple[Any, ...]], Pending] = field(default_factory=dict)


Step = Segment | Truncate


def _supersedes(new: Upsert | Delete, old: Upsert | Delete) -> bool:
    return is_newer(
        new.source, new.position, new.commit_ts_us, old.source, old.position, old.commit_ts_us
    ) or (
        # Equal positions inside one source: the later one in stream order wins.
        new.source == old.source and new.position == old.position
    )


def _merge_unavailable(new: Upsert, old: Upsert | Delete) -> Upsert:
    if not isinstance(old, Upsert) or UNAVAILABLE not in new.values.values():
        return new
    merged = {
        col: (old.values.get(col, UNAVAILABLE) if val is UNAVAILABLE else val)
        for col, val in new.values.items()
    }
    return replace(new, values=merged)


def collapse(ops: Sequence[tuple[RowOp, RawEvent | None]]) -> list[Step]:
    steps: list[Step] = []
    current = Segment()
    for op, raw in ops:
        if isinstance(op, Truncate):
            if current.rows:
                steps.append(current)
                current = Segment()
            steps.append(op)
            continue
        slot = (op.table, op.key)
        pending = current.rows.get(slot)
        if pending is None:
            current.rows[slot] = Pending(op, [raw])
        elif _supersedes(op, pending.op):
            merged = _merge_unavailable(op, pending.op) if isinstance(op, Upsert) else op
            pending.op = merged
            pending.raws.append(raw)
        else:
            pending.raws.append(raw)
    if current.rows:
        steps.append(current)
    return steps
