"""Collapse a batch of row operations to the last state per target row and source.

Pure code, mirrored by the SQL in `sink.postgres` and `sink.merge`: within one source the log
position decides, and nothing compares one source's change with another's. Keeping each
source's last change (rather than the last change of any source) is what lets a table written
by several sources merge their contributions instead of letting one hide another.

Worked example, one batch from source a for target table `opd`, key (kode_opd,):
    Upsert(1.01, nama="Dinas A")   pos 10
    Upsert(1.01, alamat=UNAVAILABLE, nama="Dinas B") pos 12
    Delete(1.02)                   pos 13
    Upsert(1.02, ...)              pos 14
collapses to Upsert(1.01, nama="Dinas B", alamat=<value from pos 10>) and Upsert(1.02, ...):
an unchanged TOAST column takes the value an earlier event of the same batch carried.
A Truncate is a barrier: the batch is split around it, so that rows written before it are
removed and rows written after it survive. A soft delete of a row upserted earlier in the batch
splits it too: the soft-deleted row keeps the upserted values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tunggal.events.model import UNAVAILABLE, RawEvent
from tunggal.mapping.ops import Delete, RowOp, Truncate, Upsert


@dataclass
class Pending:
    """The surviving operation for one target row and source, with the raw events that
    produced it."""

    op: Upsert | Delete
    raws: list[RawEvent | None] = field(default_factory=list)


@dataclass
class Segment:
    """Row operations between two truncates, at most one per (table, key, source)."""

    rows: dict[tuple[str, tuple[Any, ...], str], Pending] = field(default_factory=dict)


Step = Segment | Truncate


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
        slot = (op.table, op.key, op.source)
        pending = current.rows.get(slot)
        if (
            pending is not None
            and isinstance(op, Delete)
            and op.soft
            and isinstance(pending.op, Upsert)
            and op.position >= pending.op.position
        ):
            # A soft-deleted row keeps the values it had: write them before the delete, as
            # separate batches would, or the row's values would depend on where batches end.
            steps.append(current)
            current = Segment()
            pending = None
        if pending is None:
            current.rows[slot] = Pending(op, [raw])
        elif op.position >= pending.op.position:  # equal: the later one in stream order
            merged = _merge_unavailable(op, pending.op) if isinstance(op, Upsert) else op
            pending.op = merged
            pending.raws.append(raw)
        else:
            pending.raws.append(raw)
    if current.rows:
        steps.append(current)
    return steps
