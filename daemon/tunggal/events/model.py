"""The typed change event every source produces and the mapping consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final

# Re-exported: a subclass of str cannot be a compiled (mypyc) class, so it lives apart.
from tunggal.events.bits import BitString as BitString


class Op(StrEnum):
    READ = "r"  # a row read by the initial snapshot
    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    TRUNCATE = "t"


class _Unavailable:
    """Marks a column whose value Debezium did not send (unchanged TOASTed value).

    The sink never writes it: the target keeps the value it has.
    """

    _instance: ClassVar[_Unavailable | None] = None

    def __new__(cls) -> _Unavailable:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNAVAILABLE"

    def __reduce__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE: Final = _Unavailable()


# Debezium's heartbeat topics are `__debezium-heartbeat.<topic prefix>`.
HEARTBEAT_PREFIX: Final = "__debezium-heartbeat"
# Where Tunggal has Debezium put its notices (incremental snapshots): see ConnectorSpec.
NOTIFICATION_PREFIX: Final = "__debezium-notification"
# What Debezium puts in place of an unchanged TOASTed column (`unavailable.value.placeholder`).
UNAVAILABLE_PLACEHOLDER: Final = "__debezium_unavailable_value"


# RawEvent and ChangeEvent are made once per event and never changed afterwards, but are not
# frozen: a frozen dataclass sets each field through object.__setattr__, and that alone cost
# 1.8 µs of the ~30 µs an event takes on the Kafka path (12 fields: 1.5 µs instead of 0.26).
# They write their own __init__ (init=False): compiled, mypyc makes it native, while the one
# dataclass generates stays interpreted and takes 3-4 times as long to build an object.
@dataclass(slots=True, init=False)
class RawEvent:
    """One message as the source delivered it: Kafka-style key/value JSON text."""

    destination: str  # topic name, e.g. "e_planning.public.kegiatan"
    # JSON text as str, bytes or bytearray, or a document already parsed: `decode` reads each.
    # Any, not a union: compiled (mypyc), a field checks its declared type on every write.
    key: Any
    value: Any  # None is a tombstone
    partition: int = 0
    offset: int | None = None  # Kafka offset, or line number for replay files

    def __init__(
        self,
        destination: str,
        key: Any,
        value: Any,
        partition: int = 0,
        offset: int | None = None,
    ) -> None:
        self.destination = destination
        self.key = key
        self.value = value
        self.partition = partition
        self.offset = offset


@dataclass(slots=True, init=False)
class ChangeEvent:
    source: str  # source system name from tunggal.yaml, e.g. "e_planning"
    table: str  # source table as "schema.table" (PostgreSQL) or "db.table" (MySQL)
    op: Op
    key: dict[str, Any] | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    # Monotonic per source and per row: the PostgreSQL LSN of the change, MySQL's binlog
    # coordinates, SQL Server's commit+change LSN. Replays compare it to stay idempotent.
    position: int
    commit_ts_us: int  # source commit time, microseconds since the epoch (UTC)
    txid: str | None = None
    snapshot: bool = False
    # The snapshot's last record (Debezium's marker "last"): every row this source wrote
    # before the snapshot's position and that the snapshot did not read is gone.
    snapshot_done: bool = False
    raw: RawEvent | None = field(default=None, compare=False, repr=False)
    # Read by an incremental snapshot (a table added, `tunggal resync`): placed among the
    # streamed changes by its position, counted apart for progress.
    incremental: bool = False

    def __init__(
        self,
        source: str,
        table: str,
        op: Op,
        key: dict[str, Any] | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        position: int,
        commit_ts_us: int,
        txid: str | None = None,
        snapshot: bool = False,
        snapshot_done: bool = False,
        raw: RawEvent | None = None,
        incremental: bool = False,
    ) -> None:
        self.source = source
        self.table = table
        self.op = op
        self.key = key
        self.before = before
        self.after = after
        self.position = position
        self.commit_ts_us = commit_ts_us
        self.txid = txid
        self.snapshot = snapshot
        self.snapshot_done = snapshot_done
        self.raw = raw
        self.incremental = incremental


# A mapping that only copies columns reads a table's rows as (target column, source column)
# pairs, in the target row's column order: `decode_projected` builds that row directly.
Projection = tuple[tuple[str, str], ...]


class ProjectedEvent:
    """An insert, update or snapshot row decoded straight into a mapping's target columns
    (`decode_projected`): what `ChangeEvent` would hold, after `Projection` was applied to it.
    A plain class, for the reason given at RawEvent: it lives only between decode and map."""

    __slots__ = (
        "after",
        "before",
        "commit_ts_us",
        "op",
        "position",
        "raw",
        "snapshot",
        "source",
        "table",
    )

    def __init__(
        self,
        source: str,
        table: str,  # the source table
        op: Op,  # READ, CREATE or UPDATE
        after: dict[str, Any],  # target column -> value, in the projection's order
        before: dict[str, Any] | None,  # the same for the old row, if the event carries it
        position: int,
        commit_ts_us: int,
        snapshot: bool,
        raw: RawEvent,
    ) -> None:
        self.source = source
        self.table = table
        self.op = op
        self.after = after
        self.before = before
        self.position = position
        self.commit_ts_us = commit_ts_us
        self.snapshot = snapshot
        self.raw = raw
