"""What mapping produces and the sink consumes: operations on target rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


# Upsert and Delete are not frozen: a frozen dataclass sets each field through
# object.__setattr__, which tripled the cost of building one per mapped row. Treat them as
# immutable all the same (collapse makes a changed copy with dataclasses.replace). Their own
# __init__ (init=False), as `events.model.RawEvent` says: native when compiled.
@dataclass(slots=True, init=False)
class Upsert:
    table: str  # qualified target table, "schema.table"
    key: tuple[Any, ...]  # values of the target key columns, in the declared key order
    # Every mapped target column, key columns included; may hold UNAVAILABLE.
    values: dict[str, Any]
    source: str
    position: int
    commit_ts_us: int

    def __init__(
        self,
        table: str,
        key: tuple[Any, ...],
        values: dict[str, Any],
        source: str,
        position: int,
        commit_ts_us: int,
    ) -> None:
        self.table = table
        self.key = key
        self.values = values
        self.source = source
        self.position = position
        self.commit_ts_us = commit_ts_us


@dataclass(slots=True, init=False)
class Delete:
    table: str
    key: tuple[Any, ...]
    source: str
    position: int
    commit_ts_us: int
    soft: bool  # soft: set the table's soft-delete column instead of removing the row

    def __init__(
        self,
        table: str,
        key: tuple[Any, ...],
        source: str,
        position: int,
        commit_ts_us: int,
        soft: bool,
    ) -> None:
        self.table = table
        self.key = key
        self.source = source
        self.position = position
        self.commit_ts_us = commit_ts_us
        self.soft = soft


@dataclass(frozen=True, slots=True)
class Truncate:
    """Remove (or soft-delete) every row of `table` that `source` wrote before `position`."""

    table: str
    source: str
    position: int
    commit_ts_us: int
    soft: bool
    # A TRUNCATE leaves a watermark that keeps older changes out for good. The end of a
    # snapshot must not: a transaction still running when the slot was created streams after
    # the snapshot with change positions below the snapshot's own.
    watermark: bool = True


RowOp = Upsert | Delete | Truncate
