"""Debezium change-event JSON, with or without Connect schemas, into `ChangeEvent`s."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_, itemgetter
from typing import Any, Final, TypeAlias

import orjson

from tunggal.errors import DecodeError
from tunggal.events.coerce import converter_for
from tunggal.events.connect import StructDecoder, compile_struct
from tunggal.events.model import (
    UNAVAILABLE,
    ChangeEvent,
    Op,
    ProjectedEvent,
    Projection,
    RawEvent,
)
from tunggal.events.modes import BINLOG_CONNECTORS, ConnectorModes
from tunggal.events.values import (
    FAST_FORMS,
    PLACEHOLDER_LENGTHS,
    PLACEHOLDER_STRINGS,
    Converter,
    Invalid,
    fail,
    is_unavailable,
    show,
)

__all__ = [
    "EPOCH_SHIFT",
    "ConnectorModes",
    "Hints",
    "decode",
    "decode_reference",
    "describe_position",
    "in_epoch",
]

# Column name -> PostgreSQL type name, for one table ("public.t"); None when not known. Return a
# new mapping when the types change: decoders are cached per table and a mapping changed in place
# after use goes unnoticed.
Hints: TypeAlias = Callable[[str], Mapping[str, str] | None]

_DEFAULT_MODES: Final = ConnectorModes()


def decode(
    raw: RawEvent,
    *,
    source: str,
    modes: ConnectorModes = _DEFAULT_MODES,
    hints: Hints | None = None,
) -> ChangeEvent | None:
    """The change event in `raw`, or None for a tombstone.

    `source` is the source system's name from tunggal.yaml. `hints` gives the column types of a
    table; without schemas it is the only way to tell a date from an int (see `coerce`). Raises
    DecodeError, and nothing else, for anything that is not a Debezium change event.
    """
    if raw.value is None:
        return None
    event = _decode_fast(raw, source, modes, hints)
    if event is not None:
        return event
    return decode_reference(raw, source=source, modes=modes, hints=hints)


def decode_reference(
    raw: RawEvent,
    *,
    source: str,
    modes: ConnectorModes = _DEFAULT_MODES,
    hints: Hints | None = None,
) -> ChangeEvent | None:
    """`decode` without its fast path: the definition of every result and every error.

    `decode` falls back to it for any event its fast path is not certain of; the equivalence
    tests compare the two.
    """
    if raw.value is None:
        return None
    try:
        return _decode(raw, source, modes, hints, exact=False)
    except _HintsFailed as failed:  # not `exc`: mypyc types a name once per function
        raise failed.original from None
    except MemoryError:
        raise
    except Exception:
        pass
    # orjson silently reads an integer literal beyond 64 bits as a float. Debezium never writes
    # one, so rather than scan every message for long digit runs, any failure (or a float too
    # large to be a real int64) earns one re-read with the exact stdlib parser. What that attempt
    # raises is what we report.
    try:
        return _decode(raw, source, modes, hints, exact=True)
    except _HintsFailed as failed:  # not `exc`: mypyc types a name once per function
        raise failed.original from None
    except DecodeError as exc:
        if exc.source is None:
            exc.source = source
        raise
    except MemoryError:
        raise
    except Exception as unforeseen:
        # A path we did not foresee. Still one event's problem, not the daemon's; the message
        # says "unexpected" so that the fuzz tests can tell it from the failures we designed.
        raise DecodeError(
            f"unexpected {type(unforeseen).__name__} while decoding {raw.destination!r}: "
            f"{unforeseen}",
            source=source,
        ) from unforeseen


class _HintsFailed(Exception):
    """The caller's hints function raised: its bug, not a poison event, so it propagates as is."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


class _NeedsExactJson(Exception):
    pass


# -- the envelope ------------------------------------------------------------------------------

_OPS: Final = {op.value: op for op in Op}
_NEEDS_AFTER: Final = frozenset({Op.CREATE, Op.READ, Op.UPDATE})
_SNAPSHOT_VALUES: Final = frozenset(
    {"true", "first", "first_in_data_collection", "last_in_data_collection", "last", "incremental"}
)


def _decode(
    raw: RawEvent, source: str, modes: ConnectorModes, hints: Hints | None, exact: bool
) -> ChangeEvent:
    value, rows, with_schema = _read(raw.value, "value", raw.destination, _compile_envelope, exact)

    def error(message: str, table: str | None = None) -> DecodeError:
        return DecodeError(message, source=source, table=table)

    if value.__class__ is not dict:
        raise error(f"value: expected a Debezium change event object, got {_describe(value)}")
    op_name = value.get("op")
    if op_name is None:
        raise error(f"op: missing; not a Debezium change event (it has {_keys(value)})")
    op = _OPS.get(op_name) if op_name.__class__ is str else None
    if op is None:
        raise error(f"op: unknown operation {show(op_name)}; expected one of c, r, u, d, t")
    block = value.get("source")
    if block.__class__ is not dict:
        raise error(f"source: expected the source block (an object), got {show(block)}")

    connector = modes.connector
    declared = block.get("connector")
    if declared is not None and declared != connector:
        raise error(
            f"source.connector: the event comes from a {show(declared)} connector but "
            f"this source is configured with connector {connector!r}"
        )
    try:
        table = _table(block, connector)
    except Invalid as exc:
        raise error(str(exc.at("source"))) from None
    try:
        position = _POSITIONS[connector](block)
        commit_ts_us = _commit_ts_us(block)
    except Invalid as exc:
        raise error(str(exc.at("source")), table) from None
    txid = _txid(block, connector, value.get("transaction"))
    marker = block.get("snapshot")
    snapshot = _is_snapshot(op, marker)

    before = value.get("before")
    after = value.get("after")
    for name, row in (("before", before), ("after", after)):
        if row is not None and row.__class__ is not dict:
            raise error(f"{name}: expected an object or null, got {_describe(row)}", table)
    if after is None and op in _NEEDS_AFTER:
        raise error(f"after: missing, but op {op.value!r} must carry the new row", table)
    if after is not None and op is Op.DELETE:
        raise error("after: expected null for a delete (op 'd')", table)

    try:
        table_hints = hints(table) if hints is not None else None
    except Exception as failed:  # a name of its own: mypyc types a name once per function
        raise _HintsFailed(failed) from failed
    where = (source, table)
    decode_row: Callable[[dict[str, Any]], dict[str, Any]]
    if not with_schema:
        decode_row = _schemaless_rows(where, table_hints, modes, exact)
    elif isinstance(rows, StructDecoder):
        decode_row = rows.with_hints(where, table_hints, modes)
    elif before is not None or after is not None:
        raise error("schema: has no before/after struct to decode the row with", table)
    else:
        decode_row = _schemaless_rows(where, table_hints, modes, exact)  # for a schemaless key
    try:
        before_out = None if before is None else decode_row(before)
    except Invalid as exc:
        raise error(str(exc.at("before")), table) from None
    try:
        after_out = None if after is None else decode_row(after)
    except Invalid as exc:
        raise error(str(exc.at("after")), table) from None

    key = _decode_key(raw, where, table_hints, modes, decode_row, exact, error)
    return ChangeEvent(
        source=source,
        table=table,
        op=op,
        key=key,
        before=before_out,
        after=after_out,
        position=position,
        commit_ts_us=commit_ts_us,
        txid=txid,
        snapshot=snapshot,
        snapshot_done=marker == "last",
        raw=raw,
        incremental=marker == _INCREMENTAL,
    )


def _decode_key(
    raw: RawEvent,
    where: tuple[str, str],
    table_hints: Mapping[str, str] | None,
    modes: ConnectorModes,
    schemaless_row: Callable[[dict[str, Any]], dict[str, Any]],
    exact: bool,
    error: Callable[[str, str | None], DecodeError],
) -> dict[str, Any] | None:
    if raw.key is None:
        return None
    key, decoder, with_schema = _read(raw.key, "key", raw.destination, compile_struct, exact)
    table = where[1]
    if key is None:
        return None
    if key.__class__ is not dict:
        raise error(f"key: expected an object of key columns, got {_describe(key)}", table)
    try:
        if not with_schema:
            # Also when the value had a schema: key and value converters are set separately.
            if schemaless_row.__class__ is StructDecoder:
                schemaless_row = _schemaless_rows(where, table_hints, modes, exact)
            return schemaless_row(key)
        if not isinstance(decoder, StructDecoder):
            raise Invalid("the key has no struct schema")
        return decoder.with_hints(where, table_hints, modes)(key)
    except Invalid as exc:
        raise error(str(exc.at("key")), table) from None


def _table(block: dict[str, Any], connector: str) -> str:
    outer = "db" if connector in BINLOG_CONNECTORS else "schema"
    parts = []
    for name in (outer, "table"):
        part = block.get(name)
        if part.__class__ is not str or not part:
            raise Invalid(f"expected the {name} name, got {show(part)}", name)
        parts.append(part)
    return ".".join(parts)


def _commit_ts_us(block: dict[str, Any]) -> int:
    ts_us = block.get("ts_us")
    if ts_us.__class__ is int:
        return int(ts_us)
    ts_ms = block.get("ts_ms")
    if ts_ms.__class__ is int:
        return int(ts_ms) * 1000
    raise Invalid(f"expected the commit time in ms, got {show(ts_ms)}", "ts_ms")


def _txid(block: dict[str, Any], connector: str, transaction: Any) -> str | None:
    if connector == "postgresql":
        found = block.get("txId")
    elif connector in BINLOG_CONNECTORS:
        found = block.get("gtid")
    else:
        found = block.get("commit_lsn")  # a SQL Server transaction is named by its commit LSN
    if found is None and isinstance(transaction, dict):
        found = transaction.get("id")
    return None if found is None else str(found)


# -- positions ---------------------------------------------------------------------------------
#
# One int per event that grows with every change to a given row, so the sink can refuse to move a
# row back in time on replay.

# A PostgreSQL position is (commit epoch << 64) | change LSN. Change LSNs alone do not order a row
# against the snapshot: a transaction that was already running when the slot reached its
# consistent point S commits after the snapshot but wrote its changes below S. Debezium's
# `source.sequence` is [lastCommitLsn, lsn], where lastCommitLsn is the end of the previous
# transaction in commit order, so the pair grows in commit order. Snapshot rows are (S << 64).
# The first transaction after a snapshot has no lastCommitLsn; its position is the bare change LSN
# (epoch 0) and the pipeline rebases it onto the snapshot's epoch (see `Pipeline`).
EPOCH_SHIFT: Final = 64
_EPOCH_SNAPSHOT_MARKERS: Final = frozenset(
    {"true", "first", "first_in_data_collection", "last_in_data_collection", "last"}
)


def _is_snapshot(op: Op, marker: Any) -> bool:
    """A row of the initial (or a blocking) snapshot. "false" means streamed; Debezium before
    1.x wrote a boolean. A row read by an incremental snapshot is read while streaming goes on,
    and is placed among the streamed changes (`_postgresql_position`): not a snapshot row."""
    if marker == _INCREMENTAL:
        return False
    return (
        op is Op.READ or marker is True or (marker.__class__ is str and marker in _SNAPSHOT_VALUES)
    )


def in_epoch(position: int, epoch: int) -> int:
    """`position` placed in snapshot epoch `epoch` if it has none of its own (PostgreSQL's first
    transaction after a snapshot); every other position is returned as it is."""
    return position if position >> EPOCH_SHIFT else epoch << EPOCH_SHIFT | position


_LSN_END: Final = 1 << EPOCH_SHIFT


def _lsn_value(value: Any, name: str) -> int:
    if value.__class__ is int and 0 <= value < _LSN_END:
        return int(value)
    if value.__class__ is str and value.isascii() and value.isdigit() and len(value) < 21:
        found = int(value)
        if found < _LSN_END:
            return found
    raise Invalid(f"expected the change's LSN as a non-negative integer, got {show(value)}", name)


def _sequence_pair(sequence: Any) -> list[Any] | None:
    """Debezium's `sequence` ('["123","456"]') as its two items, or None when it is null."""
    if sequence is None:
        return None
    pair = None
    if sequence.__class__ is str:
        try:
            pair = orjson.loads(sequence)
        except orjson.JSONDecodeError:
            pair = None
    if pair.__class__ is not list or len(pair) != 2:
        raise Invalid(f"expected [lastCommitLsn, lsn], got {show(sequence)}", "sequence")
    return list(pair)


def _last_commit_lsn(sequence: Any) -> int | None:
    """The first element of Debezium's `sequence`, or None when it (or it all) is null."""
    if sequence.__class__ is str:
        # Every streamed PostgreSQL change carries one: the text Debezium writes,
        # '["<digits>","<digits>"]', is read without the parser (a third of the cost).
        middle = sequence.find('","')
        if 2 < middle < 23 and sequence.startswith('["') and sequence.endswith('"]'):
            first = sequence[2:middle]
            last = sequence[middle + 3 : -2]
            if first.isascii() and first.isdigit() and last.isascii() and last.isdigit():
                return _lsn_value(first, "sequence")
    pair = _sequence_pair(sequence)
    return None if pair is None or pair[0] is None else _lsn_value(pair[0], "sequence")


# An incremental snapshot (Debezium's DBLog watermarks) reads a table in chunks while it streams:
# each chunk is read between an open and a close marker written to the signal table, rows that
# a change streamed inside that window touched are dropped, and the rest are emitted right after
# the close marker. Such a row carries no lsn, but its `sequence` is the close marker's, so it
# sits where it belongs: after every change streamed before the window closed (which it reflects
# or which dropped it), before every change after. Worked example, row 7 read in a window that
# closed at [23020712, 23020712]: an update of row 7 at [23016992, 23020584] is older, one at
# [23020712, 23020900] newer.
_INCREMENTAL: Final = "incremental"


def _postgresql_position(block: dict[str, Any]) -> int:
    marker = block.get("snapshot")
    if marker == _INCREMENTAL:
        pair = _sequence_pair(block.get("sequence"))
        if pair is None or pair[0] is None:
            raise Invalid(
                "an incremental snapshot row needs the close marker's [lastCommitLsn, lsn], got "
                f"{show(block.get('sequence'))}",
                "sequence",
            )
        return _lsn_value(pair[0], "sequence") << EPOCH_SHIFT | _lsn_value(pair[1], "sequence")
    lsn = _lsn_value(block.get("lsn"), "lsn")
    if marker is True or (marker.__class__ is str and marker in _EPOCH_SNAPSHOT_MARKERS):
        return lsn << EPOCH_SHIFT  # a snapshot's rows all sit at its consistent point
    last_commit = _last_commit_lsn(block.get("sequence"))
    return lsn if last_commit is None else last_commit << EPOCH_SHIFT | lsn


_BINLOG_FILE: Final = re.compile(r".*\.([0-9]+)")


def _mysql_position(block: dict[str, Any]) -> int:
    # Binlog coordinates packed into one int: file sequence, byte offset in the file, row within
    # the event. mysql-bin.000003, pos 154, row 2 -> ((3 << 32) + 154) << 16 | 2.
    file = block.get("file")
    found = _BINLOG_FILE.fullmatch(file) if isinstance(file, str) else None
    if found is None:
        raise Invalid(
            f"expected a binlog file name like 'mysql-bin.000003', got {show(file)}", "file"
        )
    pos = block.get("pos")
    if pos.__class__ is not int or not 0 <= pos < 1 << 32:
        raise Invalid(f"expected a binlog offset in [0, 2**32), got {show(pos)}", "pos")
    row = block.get("row", 0)
    row = 0 if row is None else row
    if row.__class__ is not int or not 0 <= row < 1 << 16:
        raise Invalid(f"expected a row number in [0, 2**16), got {show(row)}", "row")
    return (((int(found.group(1)) << 32) + int(pos)) << 16) + int(row)


_SQLSERVER_LSN: Final = re.compile(r"([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{4})")


def _sqlserver_lsn(block: dict[str, Any], name: str) -> int:
    text = block.get(name)
    found = _SQLSERVER_LSN.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise Invalid(f"expected an LSN like '00000027:00000758:0005', got {show(text)}", name)
    return int("".join(found.groups()), 16)


# A SQL Server position is (commit LSN << 96) | (change LSN << 16) | event serial number. LSNs are
# 80 bits. Debezium's `commit_lsn` is the transaction's (cdc `__$start_lsn`), so commit order
# comes first; `change_lsn` (`__$seqval`) orders the changes within it; `event_serial_no` tells
# apart the events of one change: an update that moves the primary key is a delete (1) and a
# create (2) with the same two LSNs. Snapshot rows have neither (null): they sit at their commit
# LSN, before any change committed there. Worked example, one transaction at commit 27:758:7
# holding changes at 27:758:3 and 27:758:5: (27:758:7, 27:758:3, 1) < (27:758:7, 27:758:5, 1) <
# (27:758:7, 27:758:5, 2), and every change of a transaction committed at 27:760:1 comes after.
_SQLSERVER_COMMIT_SHIFT: Final = 96
_SQLSERVER_SERIAL_BITS: Final = 16


def _sqlserver_serial(block: dict[str, Any]) -> int:
    value = block.get("event_serial_no")
    if value is None:
        return 0
    # int64 in the Connect schema; the documentation's examples show it as a string.
    if value.__class__ is str and value.isascii() and value.isdigit() and len(value) < 6:
        value = int(value)
    if value.__class__ is not int or not 0 <= value < 1 << _SQLSERVER_SERIAL_BITS:
        raise Invalid(
            f"expected an event serial number in [0, 2**16), got {show(value)}", "event_serial_no"
        )
    return int(value)


def _sqlserver_position(block: dict[str, Any]) -> int:
    commit = _sqlserver_lsn(block, "commit_lsn")
    change = 0 if block.get("change_lsn") is None else _sqlserver_lsn(block, "change_lsn")
    return (
        commit << _SQLSERVER_COMMIT_SHIFT
        | change << _SQLSERVER_SERIAL_BITS
        | _sqlserver_serial(block)
    )


def describe_position(connector: str, position: int) -> str:
    """A position as the source database writes its log coordinates, for people (`tunggal
    explain`): the change's LSN for PostgreSQL, the binlog file number, offset and row for
    MySQL, the commit LSN for SQL Server. The inverse of the encoders above."""
    if connector == "postgresql":
        lsn = position & ((1 << EPOCH_SHIFT) - 1)
        return f"LSN {lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
    if connector in BINLOG_CONNECTORS:
        row = position & 0xFFFF
        file, offset = position >> 48, (position >> 16) & 0xFFFFFFFF
        return f"binlog .{file:06d} pos {offset}" + (f" row {row}" if row else "")
    if connector == "sqlserver":
        commit = f"{position >> _SQLSERVER_COMMIT_SHIFT:020X}"
        return f"commit LSN {commit[:8]}:{commit[8:16]}:{commit[16:]}"
    return str(position)


_POSITIONS: Final[dict[str, Callable[[dict[str, Any]], int]]] = {
    "postgresql": _postgresql_position,
    "mysql": _mysql_position,
    "mariadb": _mysql_position,
    "sqlserver": _sqlserver_position,
}


# -- rows --------------------------------------------------------------------------------------

# orjson reads integer literals in [-2**63, 2**64) exactly and anything beyond as a float, whose
# magnitude is then at least 2**63 (-2**63 - 1 rounds to -2**63.0, hence the strict bound).
_INT64_MIN: Final = -(2**63)
_UINT64_END: Final = 2**64


def _schemaless_rows(
    where: tuple[str, str],
    table_hints: Mapping[str, str] | None,
    modes: ConnectorModes,
    exact: bool,
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    converters = _converters_for(where, table_hints, modes) if table_hints else {}

    def decode_row(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        get = converters.get
        name = ""
        try:
            for name, value in row.items():
                if value is None:
                    out[name] = None
                    continue
                kind = value.__class__
                if kind is str:
                    if len(value) in PLACEHOLDER_LENGTHS and is_unavailable(value):
                        out[name] = UNAVAILABLE
                        continue
                elif kind is list or kind is dict or kind is bytes:
                    if is_unavailable(value):
                        out[name] = UNAVAILABLE
                        continue
                elif kind is float and not exact and not _INT64_MIN < value < _UINT64_END:
                    raise _NeedsExactJson
                convert = get(name)
                out[name] = value if convert is None else convert(value)
        except Invalid as exc:
            raise exc.at(name) from None
        except (ValueError, TypeError, ArithmeticError) as failed:  # own name: mypyc
            raise Invalid(f"{type(failed).__name__}: {failed}").at(name) from None
        return out

    return decode_row


_HINTED: dict[tuple[str, str], tuple[ConnectorModes, Mapping[str, str], dict[str, Converter]]] = {}


def _converters_for(
    where: tuple[str, str], table_hints: Mapping[str, str], modes: ConnectorModes
) -> dict[str, Converter]:
    # Keyed by (source, table): two sources may both have a public.t, with different columns.
    # The entry keeps the mapping itself, so the `is` test cannot match a recycled object.
    cached = _HINTED.get(where)
    if (
        cached is not None
        and (cached[0] is modes or cached[0] == modes)
        and (cached[1] is table_hints or cached[1] == table_hints)
    ):
        return cached[2]
    converters: dict[str, Converter] = {}
    for column, pg_type in table_hints.items():
        convert = converter_for(pg_type, modes)
        if convert is not None:
            converters[column] = convert
    if len(_HINTED) > 4096:
        _HINTED.clear()
    _HINTED[where] = (modes, table_hints, converters)
    return converters


def _compile_envelope(schema: Any) -> StructDecoder | None:
    """The decoder for the rows of an envelope; before and after always share one schema."""
    if not isinstance(schema, dict) or not isinstance(schema.get("fields"), list):
        raise fail("an envelope schema with fields", schema)
    for field in schema["fields"]:
        name = field.get("field") if isinstance(field, dict) else None
        if name in ("after", "before"):
            try:
                return compile_struct(field)
            except Invalid as exc:
                raise exc.at(str(name)) from None
    return None


# -- the fast path ----------------------------------------------------------------------------
#
# Nearly every event is schemaless JSON text (or bytes) whose rows hold only scalars: null,
# booleans, numbers, strings. `_decode_fast` reads exactly those with as little Python work per
# event as it can, and returns None, so that `decode_reference` runs, for anything else: a
# schema envelope, JSON already parsed, any envelope or row the reference would refuse, a
# placeholder, a value that fails to convert, an integer beyond 64 bits. It therefore never
# reports an error of its own: every poison event is described by the reference. An event it
# does accept gets the reference's result, because it runs the same parser (orjson), the same
# helpers (`_table`, `_POSITIONS`, ...) and the same converters, and only skips checks whose
# outcome it has established another way (tests/unit/test_decode_fast.py compares the two).


class _Envelope:
    """What both fast paths read from a schemaless or known-schema envelope (a plain class: see
    `events.model.RawEvent`)."""

    __slots__ = (
        "after",
        "before",
        "block",
        "commit_ts_us",
        "marker",
        "op",
        "position",
        "rows",
        "table",
        "value",
    )

    def __init__(
        self,
        value: dict[str, Any],
        rows: StructDecoder | None,  # the schema's row decoder; None without a schema
        op: Op,
        block: dict[str, Any],
        table: str,
        position: int,
        commit_ts_us: int,
        marker: Any,  # source.snapshot
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        self.value = value
        self.rows = rows
        self.op = op
        self.block = block
        self.table = table
        self.position = position
        self.commit_ts_us = commit_ts_us
        self.marker = marker
        self.before = before
        self.after = after


def _fast_envelope(raw: RawEvent, connector: str) -> _Envelope | None:
    """The envelope of `raw` if it is text (str or bytes) the fast paths can take, else None."""
    text: Any = raw.value
    kind = text.__class__
    if kind is not bytes and kind is not str:
        return None
    try:
        rows: StructDecoder | None = None
        if text.startswith(_HEAD[kind]):
            # A schema envelope: only one whose schema text this topic has sent before, so
            # that only its payload is parsed (see `_cached_payload`).
            value, rows = _cached_payload(text, "value", raw.destination)
            if rows.__class__ is not StructDecoder:
                return None
        else:
            value = orjson.loads(text)
        # Any other document with a schema envelope has no "op" and ends here too.
        op_name = value.get("op") if value.__class__ is dict else None
        op = _OPS.get(op_name) if op_name.__class__ is str else None
        block = value.get("source")
        if op is None or block.__class__ is not dict:
            return None
        declared = block.get("connector")
        if declared is not None and declared != connector:
            return None
        table = _table(block, connector)
        position = _POSITIONS[connector](block)
        commit_ts_us = _commit_ts_us(block)
        before = value.get("before")
        after = value.get("after")
        if (before is not None and before.__class__ is not dict) or (
            after is not None and after.__class__ is not dict
        ):
            return None
        if (after is None and op in _NEEDS_AFTER) or (after is not None and op is Op.DELETE):
            return None
    except Exception:
        return None
    marker = block.get("snapshot")
    return _Envelope(value, rows, op, block, table, position, commit_ts_us, marker, before, after)


def _decode_fast(
    raw: RawEvent, source: str, modes: ConnectorModes, hints: Hints | None
) -> ChangeEvent | None:
    envelope = _fast_envelope(raw, modes.connector)
    return None if envelope is None else _from_envelope(raw, envelope, source, modes, hints)


def _from_envelope(
    raw: RawEvent, envelope: _Envelope, source: str, modes: ConnectorModes, hints: Hints | None
) -> ChangeEvent | None:
    connector = modes.connector
    try:
        table = envelope.table
        txid = _txid(envelope.block, connector, envelope.value.get("transaction"))
        key, key_rows = _fast_key(raw.key, raw.destination)
    except Exception:
        return None
    if key is _MISS:
        return None
    # Outside the try: an exception from the caller's hints function is theirs, as in `decode`.
    table_hints = hints(table) if hints is not None else None
    where = (source, table)
    rows = envelope.rows
    before = envelope.before
    after = envelope.after
    try:
        decode_row: _RowDecoder
        if rows is None:
            decode_row = _fast_rows(where, table_hints, modes)
        else:
            decode_row = rows.with_hints(where, table_hints, modes)
        before_out = None if before is None else decode_row(before)
        after_out = None if after is None else decode_row(after)
        if key is None:
            key_out = None
        elif key_rows is not None:
            key_out = key_rows.with_hints(where, table_hints, modes)(key)
        elif rows is None:
            key_out = decode_row(key)
        else:
            return None  # a schemaless key beside a schema envelope: rare, the reference's
    except Exception:
        return None
    op = envelope.op
    marker = envelope.marker
    # Positional: measurably cheaper than keywords. A field added or
    # moved in ChangeEvent shows up as a mismatch in test_decode_fast.
    return ChangeEvent(
        source,
        table,
        op,
        key_out,
        before_out,
        after_out,
        envelope.position,
        envelope.commit_ts_us,
        txid,
        _is_snapshot(op, marker),
        marker == "last",
        raw,
        marker == _INCREMENTAL,
    )


# -- the projected fast path ---------------------------------------------------------------
#
# A mapping that only copies columns (no transforms, no filter) takes from a row exactly its
# mapped columns, renamed. For such a table `decode_projected` converts those columns straight
# into the target row's dict: no dict of the source row, no ChangeEvent, no second dict in the
# mapping. It takes inserts, updates and snapshot rows of schemaless text whose mapped values
# are not placeholders. Anything else (deletes, schema envelopes, placeholders, a failed
# conversion, a missing column, the snapshot's last row, an incremental snapshot's) it decodes
# as `decode` does, into a ChangeEvent, from the same parse where `decode`'s fast path can.
# An event it takes is one `decode` accepts too, with the same values: it uses the same parser,
# helpers and converters, and makes sure the key decodes, since a key that does not makes the
# event poison (tests/unit/test_pipeline_projected.py compares the two lanes).

# A table's projection and its column types (what `Hints` gives for it), or None: no projection.
Projections: TypeAlias = Callable[[str], tuple[Projection, Mapping[str, str] | None] | None]


def decode_projected(
    raw: RawEvent,
    *,
    source: str,
    modes: ConnectorModes = _DEFAULT_MODES,
    hints: Hints | None = None,
    projections: Projections,
) -> ProjectedEvent | ChangeEvent | None:
    """`decode`, except that an event this path takes (see above) comes back decoded into the
    target columns of its table's projection (`projections(table)`), as a ProjectedEvent.
    Events it does not take are decoded by `decode` from the same parse where they can be."""
    if raw.value is None:
        return None
    envelope = _fast_envelope(raw, modes.connector)
    if envelope is not None:
        projected = _projected(raw, envelope, source, modes, projections)
        if projected is not None:
            return projected
        event = _from_envelope(raw, envelope, source, modes, hints)
        if event is not None:
            return event
    return decode_reference(raw, source=source, modes=modes, hints=hints)


def _projected(
    raw: RawEvent,
    envelope: _Envelope,
    source: str,
    modes: ConnectorModes,
    projections: Projections,
) -> ProjectedEvent | None:
    if envelope.rows is not None:
        return None
    op = envelope.op
    marker = envelope.marker
    after = envelope.after
    if op is Op.DELETE or op is Op.TRUNCATE or marker == "last" or marker == _INCREMENTAL:
        return None
    table = envelope.table
    # Outside the try: an exception from the caller's function is theirs, as in `decode`.
    plan = projections(table)
    if plan is None or after is None:
        return None
    projection, table_hints = plan
    try:
        key, key_rows = _fast_key(raw.key, raw.destination)
    except Exception:
        return None
    if key is _MISS or key_rows is not None:
        return None
    where = (source, table)
    try:
        project, converted = _projected_rows(where, table_hints, modes, projection)
        before = envelope.before
        before_out = None if before is None else project(before)
        after_out = project(after)
        if key is not None and not _same_as_converted(key, after, converted):
            _fast_rows(where, table_hints, modes)(key)  # only whether it decodes: see above
    except Exception:
        return None
    return ProjectedEvent(
        source,
        table,
        op,
        after_out,
        before_out,
        envelope.position,
        envelope.commit_ts_us,
        _is_snapshot(op, marker),
        raw,
    )


# The converters of a table, and the source columns the projection converts.
_Converted: TypeAlias = tuple[dict[str, Converter], frozenset[str]]


def _same_as_converted(key: dict[str, Any], after: dict[str, Any], converted: _Converted) -> bool:
    """Whether each column of `key` that has a converter is one the projection converted in
    `after`, with the same value there: then the key decodes too, as a column without a
    converter always does. (Debezium's key is the row's primary key, so it usually holds.)"""
    converters, projected = converted
    for name, value in key.items():
        if name in converters:
            other = after.get(name, _MISS)
            if name not in projected or other.__class__ is not value.__class__ or other != value:
                return False
    return True


_PROJECTED: dict[
    tuple[str, str],
    tuple[ConnectorModes, Mapping[str, str] | None, Projection, _RowDecoder, _Converted],
] = {}


def _projected_rows(
    where: tuple[str, str],
    table_hints: Mapping[str, str] | None,
    modes: ConnectorModes,
    projection: Projection,
) -> tuple[_RowDecoder, _Converted]:
    """The projection compiled for `where`, with what it converts."""
    cached = _PROJECTED.get(where)
    if (
        cached is not None
        and cached[0] is modes
        and cached[1] is table_hints
        and cached[2] is projection
    ):
        return cached[3], cached[4]
    converters = _converters_for(where, table_hints, modes) if table_hints else _NO_CONVERTERS
    project = _compile_projection(converters, projection)
    converted = (converters, frozenset(name for _, name in projection if name in converters))
    if len(_PROJECTED) > 4096:
        _PROJECTED.clear()
    _PROJECTED[where] = (modes, table_hints, projection, project, converted)
    return project, converted


class _NotPlain(Exception):
    """A value the projected path leaves to `decode`."""


def _compile_projection(converters: dict[str, Converter], projection: Projection) -> _RowDecoder:
    """row -> {target: decoded row[source], ...}. Raises for anything but values that decode
    as they are: KeyError for a missing column, _NotPlain (a placeholder, a float orjson may
    have rounded), a converter's own error."""
    # (target, source, convert, kind, fast): `fast` for a value of class `kind`, else `convert`;
    # without a converter, the value as it is.
    steps: list[tuple[str, str, Converter | None, type, Converter | None]] = []
    for target, name in projection:
        convert = converters.get(name)
        if convert is None:
            steps.append((target, name, None, _NoFastForm, None))
        else:
            kind, fast = FAST_FORMS.get(convert, (_NoFastForm, convert))
            steps.append((target, name, convert, kind, fast))
    plan = tuple(steps)

    def project(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for target, name, convert, kind, fast in plan:
            value = row[name]
            if value is None:
                out[target] = None
                continue
            cls = value.__class__
            if cls is str:
                if len(value) in PLACEHOLDER_LENGTHS and value in PLACEHOLDER_STRINGS:
                    raise _NotPlain
            elif cls is float:
                if not _INT64_MIN < value < _UINT64_END:
                    raise _NotPlain
            elif cls is list or cls is dict:  # an array, a struct; the same object if kept
                if is_unavailable(value):
                    raise _NotPlain
            elif cls is not int and cls is not bool:
                raise _NotPlain
            if convert is None:
                out[target] = value
            elif cls is kind and fast is not None:
                out[target] = fast(value)
            else:
                out[target] = convert(value)
        return out

    return project


def _fast_key(text: Any, destination: str) -> tuple[Any, StructDecoder | None]:
    """The key's object (None for none) and its schema's decoder (None without a schema), or
    _MISS for anything else: not an object, or a schema envelope not seen before."""
    if text is None:
        return None, None
    kind = text.__class__
    if kind is not bytes and kind is not str:
        return _MISS, None
    if text.startswith(_HEAD[kind]):
        key, decoder = _cached_payload(text, "key", destination)
        if decoder.__class__ is not StructDecoder:
            return _MISS, None
    else:
        key, decoder = orjson.loads(text), None
        if key.__class__ is dict and "schema" in key and "payload" in key and len(key) == 2:
            return _MISS, None
    if key is None:
        return None, None
    return (key, decoder) if key.__class__ is dict else (_MISS, None)


_RowDecoder: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]
_SCALAR_KINDS: Final = frozenset({type(None), bool, int, float, str})
_NO_CONVERTERS: Final[dict[str, Converter]] = {}
_FAST_ROWS: dict[tuple[str, str], tuple[dict[str, Converter], _RowDecoder]] = {}


def _fast_rows(
    where: tuple[str, str], table_hints: Mapping[str, str] | None, modes: ConnectorModes
) -> _RowDecoder:
    # `_converters_for` hands back the same dict while the table's modes and hints stay the
    # same, so that dict's identity says whether the decoder made from it still holds.
    converters = _converters_for(where, table_hints, modes) if table_hints else _NO_CONVERTERS
    cached = _FAST_ROWS.get(where)
    if cached is not None and cached[0] is converters:
        return cached[1]
    reference = _schemaless_rows(where, table_hints, modes, exact=False)
    decode_row = _compile_rows(converters, reference)
    if len(_FAST_ROWS) > 4096:
        _FAST_ROWS.clear()
    _FAST_ROWS[where] = (converters, decode_row)
    return decode_row


def _compile_rows(converters: dict[str, Converter], reference: _RowDecoder) -> _RowDecoder:
    """`reference` (a `_schemaless_rows` decoder over `converters`), specialised to the columns
    of the rows it meets and using the converters' FAST_FORMS where they apply. Raises whatever
    it likes when unsure.
    """
    # (convert, kind, fast): `fast` for a value of class `kind`, else `convert`.
    plan = {
        name: (convert, *FAST_FORMS.get(convert, (_NoFastForm, convert)))
        for name, convert in converters.items()
    }
    by_column = tuple((name, *steps) for name, steps in plan.items())
    plan_of = plan.get
    # A table's rows nearly always have the same columns, and its keys others: one layout per
    # row width, made from the first row of that width.
    layouts: dict[int, _Layout] = {}

    def by_census(row: dict[str, Any]) -> dict[str, Any]:
        # Any row: the per-column checks done for the whole row at once in C.
        values = row.values()
        kinds = set(map(type, values))
        if not kinds <= _SCALAR_KINDS or (
            str in kinds and not PLACEHOLDER_STRINGS.isdisjoint(values)
        ):
            return reference(row)  # lists, objects, placeholders: column by column
        if float in kinds and not _floats_fit(values):
            raise _NeedsExactJson
        # Only the columns with a converter change; assigning to a key keeps the row's order.
        out = row.copy()
        if len(row) < len(by_column):  # a key, or a narrow update
            for name, value in row.items():
                steps = plan_of(name)
                if steps is not None and value is not None:
                    convert, kind, fast = steps
                    out[name] = fast(value) if value.__class__ is kind else convert(value)
        else:
            for name, convert, kind, fast in by_column:
                value = row.get(name)
                if value is not None:
                    out[name] = fast(value) if value.__class__ is kind else convert(value)
        return out

    def decode_row(row: dict[str, Any]) -> dict[str, Any]:
        layout = layouts.get(len(row))
        if layout is None:
            layout = layouts[len(row)] = _Layout.of(row, plan)
        # The layout's columns number len(row), so finding them all proves that the row has
        # exactly those; a KeyError means another set of columns of the same width.
        try:
            plain = layout.plain_values(row)
        except KeyError:
            return by_census(row)
        kinds = set(map(type, plain))
        if not kinds <= _PLAIN_KINDS or (
            str in kinds and not PLACEHOLDER_STRINGS.isdisjoint(plain)
        ):
            return by_census(row)  # floats, lists, objects, placeholders
        out = row.copy()
        # The reference's own checks, for the columns that have a converter.
        try:
            for name, convert, kind, fast in layout.converted:
                value = row[name]
                if value is None:
                    continue
                cls = value.__class__
                if cls is str:
                    if len(value) in PLACEHOLDER_LENGTHS and value in PLACEHOLDER_STRINGS:
                        out[name] = UNAVAILABLE
                        continue
                elif cls is float:
                    if not _INT64_MIN < value < _UINT64_END:
                        raise _NeedsExactJson
                elif cls is not int and cls is not bool:
                    return by_census(row)
                out[name] = fast(value) if cls is kind else convert(value)
        except KeyError:  # as above (a converter's own KeyError recurs in by_census)
            return by_census(row)
        return out

    return decode_row


_PLAIN_KINDS: Final = frozenset({type(None), bool, int, str})


@dataclass(frozen=True, slots=True)
class _Layout:
    """One set of row columns: those without a converter, and the steps of those with one."""

    plain_values: Callable[[dict[str, Any]], tuple[Any, ...]]
    converted: tuple[tuple[str, Converter, type, Converter], ...]

    @classmethod
    def of(
        cls, row: dict[str, Any], plan: Mapping[str, tuple[Converter, type, Converter]]
    ) -> _Layout:
        plain = [name for name in row if name not in plan]
        getter: Callable[[dict[str, Any]], tuple[Any, ...]]
        if not plain:
            getter = _no_values
        elif len(plain) == 1:
            # itemgetter of one name returns the bare value; of the same name twice, a tuple.
            getter = itemgetter(plain[0], plain[0])
        else:
            getter = itemgetter(*plain)
        return cls(getter, tuple((name, *plan[name]) for name in row if name in plan))


def _no_values(row: dict[str, Any]) -> tuple[Any, ...]:
    return ()


class _NoFastForm:
    """The value class of a converter without a fast form: no JSON value has it."""


def _floats_fit(values: Iterable[Any]) -> bool:
    """Whether every float among `values` is certainly one orjson read exactly (_INT64_MIN).

    It may say no to a float in [2**63, 2**64), which then takes the reference path. The floats
    are picked out in C: `compress` keeps the values whose type `is` float.
    """
    floats = compress(values, map(is_, map(type, values), repeat(float)))
    return bool(max(map(abs, floats)) < _FLOAT_CERTAIN)


# abs() folds the range (-2**63, 2**64) into one bound, cutting off the top half of uint64.
_FLOAT_CERTAIN: Final = -_INT64_MIN


# -- JSON --------------------------------------------------------------------------------------


def _read(
    text: Any, where: str, destination: str, compile_schema: Callable[[Any], Any], exact: bool
) -> tuple[Any, Any, bool]:
    """(payload, compiled schema or None, whether the message had a schema envelope)."""
    kind = text.__class__
    if kind is bytearray or kind is memoryview:
        text, kind = bytes(text), bytes
    fast_key = (destination, where, kind)
    if not exact and (kind is str or kind is bytes):
        payload, compiled = _cached_payload(text, where, destination)
        if payload is not _MISS:
            return payload, compiled, True

    # Anything but text is taken to be JSON that the source has parsed already.
    document = _loads(text, where, exact) if kind is str or kind is bytes else text
    if not (
        document.__class__ is dict
        and len(document) == 2
        and "schema" in document
        and "payload" in document
    ):
        return document, None, False
    schema = document["schema"]
    if schema is None:
        return document["payload"], None, False
    try:
        compiled = _compiled(schema, compile_schema)
    except Invalid as exc:
        raise DecodeError(str(exc.at(f"{where}.schema"))) from None
    if not exact and (kind is str or kind is bytes):
        _remember(text, schema, compiled, fast_key)
    return document["payload"], compiled, True


_MISS: Final = object()
_HEAD: Final[dict[type, Any]] = {str: '{"schema":', bytes: b'{"schema":'}
_SEPARATOR: Final[dict[type, Any]] = {str: ',"payload":', bytes: b',"payload":'}
_END: Final[dict[type, Any]] = {str: "}", bytes: b"}"}
_SEPARATOR_LENGTH: Final = len(',"payload":')

# The fast path. Most of a schemas.enable=true message is its schema (6 KB of the 7 KB of the
# fixture's row), and parsing it is most of the cost. So once a message
#     {"schema":S,"payload":P}
# has been parsed the slow way, we remember its text up to the end of S. A later message on the
# same topic that starts with exactly that text, continues with ,"payload": and ends with } has
# the same schema (S is a complete JSON object, so its extent is fixed by its own text), and
# only P needs parsing. Anything else (other key order, whitespace, a changed schema) takes the
# slow path, which is always correct.
_FAST: dict[tuple[str, str, type], list[tuple[Any, Any]]] = {}
_FAST_PER_TOPIC: Final = 4


def _cached_payload(text: Any, where: str, destination: str) -> tuple[Any, Any]:
    """(payload, compiled schema) of a schema envelope (str or bytes) whose schema text was seen
    before on this topic; (_MISS, None) otherwise."""
    for prefix, compiled in _FAST.get((destination, where, text.__class__), ()):
        payload = _fast_payload(text, prefix)
        if payload is not _MISS:
            return payload, compiled
    return _MISS, None


def _fast_payload(text: Any, prefix: Any) -> Any:
    kind = text.__class__
    start = len(prefix)
    if not (
        text.startswith(prefix)
        and text.startswith(_SEPARATOR[kind], start)
        and text.endswith(_END[kind])
    ):
        return _MISS
    body = text[start + _SEPARATOR_LENGTH : -1]
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _MISS


def _remember(text: Any, schema: Any, compiled: Any, fast_key: tuple[str, str, type]) -> None:
    kind = text.__class__
    head, separator = _HEAD[kind], _SEPARATOR[kind]
    if not (text.startswith(head) and text.endswith(_END[kind])):
        return
    start = len(head)
    end = text.find(separator, start)
    # The first ,"payload": can lie inside S (a parameter of that name); try the next few.
    for _ in range(8):
        if end < 0:
            return
        try:
            candidate = orjson.loads(text[start:end])
        except orjson.JSONDecodeError:
            candidate = None
        if candidate.__class__ is dict and candidate == schema:
            break
        end = text.find(separator, end + 1)
    else:
        return
    if len(_FAST) > 4096:
        _FAST.clear()
    prefix = text[:end]
    entries = [entry for entry in _FAST.get(fast_key, ()) if entry[0] != prefix]
    _FAST[fast_key] = [(prefix, compiled), *entries][:_FAST_PER_TOPIC]


_COMPILED: dict[tuple[Callable[[Any], Any], bytes], Any] = {}


def _compiled(schema: Any, compile_schema: Callable[[Any], Any]) -> Any:
    try:
        fingerprint = orjson.dumps(schema)
    except (orjson.JSONEncodeError, TypeError):
        return compile_schema(schema)  # not JSON orjson can write back; compile it every time
    found = _COMPILED.get((compile_schema, fingerprint))
    if found is None:
        found = compile_schema(schema)
        if len(_COMPILED) > 1024:
            _COMPILED.clear()
        _COMPILED[(compile_schema, fingerprint)] = found
    return found


def _loads(text: Any, where: str, exact: bool) -> Any:
    if not exact:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # NaN or Infinity, or a real error that the stdlib will describe
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as bad_utf8:  # each its own name: mypyc
            raise DecodeError(
                f"{where}: not valid UTF-8 ({bad_utf8.reason} at byte {bad_utf8.start})"
            ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as unreadable:
        raise DecodeError(f"{where}: not valid JSON ({unreadable})") from None


def _describe(value: Any) -> str:
    names = {list: "a JSON array", str: "a JSON string", bool: "a JSON boolean"}
    if value is None:
        return "null"
    if value.__class__ in (int, float):
        return f"the number {show(value)}"
    return names.get(value.__class__, type(value).__name__)


def _keys(value: dict[str, Any]) -> str:
    keys = list(value)[:8]
    more = ", ..." if len(value) > len(keys) else ""
    return "no keys" if not keys else "keys " + ", ".join(map(str, keys)) + more
