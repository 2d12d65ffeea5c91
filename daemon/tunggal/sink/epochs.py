"""PostgreSQL snapshot epochs settled in the target, in the transaction of the batch.

A PostgreSQL source's first transaction after a snapshot carries no commit epoch of its own
(`events.decode`); it belongs in the epoch of that snapshot, just above the snapshot's rows.
The pipeline places it when this process has seen a snapshot row, or finds the epoch committed
in the target. On Kafka that is not enough: a TRUNCATE has a null key and lands on another
partition than the snapshot's rows, so it can be taken, here or by another instance, before any
snapshot row. Left at its bare LSN (epoch 0) it ranks below every snapshot row, and does
nothing. Worked example: snapshot at S = 0x16E1F20, its rows at S << 64; the TRUNCATE at LSN
0x16E2A10 must sit at S << 64 | 0x16E2A10, not at 0x16E2A10.

So the order in which batches commit decides, under one lock per source:
- a batch holding events left without an epoch takes the epoch committed in the target (if
  any) before it writes them: its TRUNCATE then removes the snapshot rows already written;
- a batch that brings a snapshot epoch newer than the target's first moves every position
  committed without an epoch (truncation watermarks, tombstones, rows) into it: the snapshot
  rows it writes are then kept out by the TRUNCATE's watermark, and the snapshot's cleanup
  (rows older than the snapshot) leaves the rows of the first transaction alone.

Events without an epoch are rare (one transaction per snapshot), so the lock is taken only by
batches that hold them or hold snapshot rows. Moving positions into a new epoch reads each
target table once per snapshot (a scan: positions without an epoch are not indexed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import psycopg
from psycopg import sql

from tunggal.events.decode import EPOCH_SHIFT, in_epoch
from tunggal.mapping.ops import Truncate
from tunggal.sink.collapse import Segment, Step

# Positions below this have no epoch (PostgreSQL only: other sources never take part).
_NO_EPOCH = 1 << EPOCH_SHIFT


class EpochProgress(Protocol):
    epoch: int | None  # the newest snapshot epoch among the batch's rows
    unplaced: bool  # the batch holds events the pipeline left without an epoch


def settle(
    cur: psycopg.Cursor[Any],
    progress: Mapping[str, EpochProgress],
    tables: Iterable[str],
) -> dict[str, int]:
    """Lock and settle each source of the batch that takes part; return the epoch to place the
    batch's own epoch-less events in, by source (only where one is known)."""
    placed: dict[str, int] = {}
    tables = sorted(set(tables))
    for source in sorted(progress):  # one order for every instance: no deadlock
        p = progress[source]
        if p.epoch is None and not p.unplaced:
            continue
        # Held until commit; a second batch of the same source waits for this one.
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"tunggal-epoch {source}",)
        )
        row = cur.execute(
            "SELECT snapshot_epoch FROM public.tunggal_progress WHERE source = %s", (source,)
        ).fetchone()
        stored = None if row is None or row[0] is None else int(row[0])
        if p.epoch is not None and (stored is None or p.epoch > stored):
            _move_into(cur, source, p.epoch, tables)
        epoch = max((e for e in (stored, p.epoch) if e is not None), default=None)
        if p.unplaced and epoch is not None:
            placed[source] = epoch
    return placed


def place(steps: Sequence[Step], epochs: Mapping[str, int]) -> list[Step]:
    """The batch's steps with their epoch-less positions placed in their source's epoch."""
    if not epochs:
        return list(steps)
    out: list[Step] = []
    for step in steps:
        if isinstance(step, Truncate):
            epoch = epochs.get(step.source)
            if epoch is not None and step.position < _NO_EPOCH:
                step = replace(step, position=in_epoch(step.position, epoch))
            out.append(step)
            continue
        segment = Segment()
        for key, pending in step.rows.items():
            epoch = epochs.get(pending.op.source)
            if epoch is not None and pending.op.position < _NO_EPOCH:
                op = replace(pending.op, position=in_epoch(pending.op.position, epoch))
                pending = replace(pending, op=op)
            segment.rows[key] = pending
        out.append(segment)
    return out


def _move_into(cur: psycopg.Cursor[Any], source: str, epoch: int, tables: Sequence[str]) -> None:
    """Every position `source` committed without an epoch, into `epoch`."""
    shift = epoch << EPOCH_SHIFT
    for own in ("tunggal_truncations", "tunggal_tombstones"):
        cur.execute(
            sql.SQL(
                "UPDATE public.{} SET position = position + %s WHERE source = %s AND position < %s"
            ).format(sql.Identifier(own)),
            (shift, source, _NO_EPOCH),
        )
    for table in tables:
        schema, name = table.split(".", 1)
        cur.execute(
            sql.SQL(
                "UPDATE {}.{} SET _tunggal_position = _tunggal_position + %s "
                "WHERE _tunggal_source = %s AND _tunggal_position < %s"
            ).format(sql.Identifier(schema), sql.Identifier(name)),
            (shift, source, _NO_EPOCH),
        )
