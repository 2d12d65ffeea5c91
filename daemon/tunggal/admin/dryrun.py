"""`tunggal mapping test`: what each recorded event would write, with nothing written.

Events go through the daemon's own `Pipeline` one at a time, so what is shown is what
`tunggal run` would do with them. Without a target database the only column types are the
ones the events carry (`schemas.enable=true`) and those the mapping declares (`type:`, a
first `cast:`); a schemaless event that reads other columns is flagged, not guessed at.
With `target_types` (read from the target, as the daemon does) nothing needs guessing.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import orjson

from tunggal.events.model import HEARTBEAT_PREFIX, UNAVAILABLE, RawEvent
from tunggal.events.modes import ConnectorModes
from tunggal.mapping import Delete, MappingSet, RowOp, Truncate, Upsert
from tunggal.mapping.engine import iter_tables
from tunggal.mapping.spec import ColumnSpec, ConstPart
from tunggal.runtime.pipeline import Pipeline

# Outcomes, in the order the summary lists them.
MAPPED: Final = "mapped"
NO_ROWS: Final = "no rows"
NEEDS_TYPES: Final = "needs target types"
POISON: Final = "poison"
TOMBSTONE: Final = "tombstone"
HEARTBEAT: Final = "heartbeat"
OUTCOMES: Final = (MAPPED, NEEDS_TYPES, NO_ROWS, POISON, TOMBSTONE, HEARTBEAT)

_ROW_REF: Final = re.compile(r"""\brow\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*["']([^"']+)["']\s*\])""")


@dataclass
class EventResult:
    line: int | None
    destination: str
    table: str | None = None
    op: str | None = None
    outcome: str = MAPPED
    ops: list[RowOp] = field(default_factory=list)
    error_class: str | None = None
    error: str | None = None
    note: str | None = None


def dry_run(
    mappings: MappingSet,
    source: str,
    raws: Iterable[RawEvent],
    modes: ConnectorModes | None = None,
    target_types: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[EventResult]:
    """One result per event. `target_types`: table -> column -> PostgreSQL type."""
    types = target_types or {}
    pipeline = Pipeline(mappings, {source: modes or ConnectorModes()}, types)
    # The pipeline logs every poison event at ERROR for the daemon's log; here the result
    # row says it, and a log line in the middle of the table would only get in the way.
    pipeline_log = logging.getLogger("tunggal.runtime.pipeline")
    previous = pipeline_log.disabled
    pipeline_log.disabled = True
    try:
        for raw in raws:
            yield _one(pipeline, mappings, source, raw, types)
    finally:
        pipeline_log.disabled = previous


def _one(
    pipeline: Pipeline,
    mappings: MappingSet,
    source: str,
    raw: RawEvent,
    target_types: Mapping[str, Mapping[str, str]],
) -> EventResult:
    result = EventResult(line=raw.offset, destination=raw.destination)
    if raw.destination.startswith(HEARTBEAT_PREFIX):
        result.outcome = HEARTBEAT
        return result
    processed = pipeline.process(source, [raw])
    if processed.dead_letters:
        letter = processed.dead_letters[0]
        result.outcome = POISON
        result.table = letter.source_table
        result.error_class, result.error = letter.error_class, letter.error
        return result
    if not processed.counts:
        result.outcome = TOMBSTONE
        return result
    (_, table, op, _) = next(iter(processed.counts))
    result.table, result.op = table, op
    result.ops = [op for op, _ in processed.ops]
    if not result.ops:
        result.outcome = NO_ROWS
        result.note = (
            "the mapping writes nothing for it (filter, or delete: ignore)"
            if table in mappings.source_tables(source)
            else f"no mapping of source {source} reads {table}"
        )
        return result
    untyped = _untyped_columns(mappings, source, table, raw, target_types)
    if untyped:
        result.outcome = NEEDS_TYPES
        result.note = (
            f"schemaless event: the types of {', '.join(untyped)} are known only to the target "
            "database; values shown as Debezium sent them (use --db, declare `type:` in the "
            "mapping, or use schemas.enable=true)"
        )
    return result


def _untyped_columns(
    mappings: MappingSet,
    source: str,
    table: str,
    raw: RawEvent,
    target_types: Mapping[str, Mapping[str, str]],
) -> list[str]:
    """Source columns the mapping reads whose type neither the event nor the mapping gives."""
    try:
        value = orjson.loads(raw.value) if raw.value is not None else None
    except orjson.JSONDecodeError:
        return []
    if not isinstance(value, dict) or ("schema" in value and "payload" in value):
        return []
    present: set[str] = set()
    for image in ("before", "after"):
        row = value.get(image)
        if isinstance(row, dict):
            present.update(row)
    typed = mappings.hints(source, table, target_types)
    return sorted((read_columns(mappings, source, table) & present) - set(typed))


def read_columns(mappings: MappingSet, source: str, table: str) -> set[str]:
    """Every source column the mappings of (source, table) read, CEL references included."""
    found: set[str] = set()

    def cel(text: str | None) -> None:
        for match in _ROW_REF.finditer(text or ""):
            found.add(match.group(1) or match.group(2))

    for doc, _, mapping in iter_tables(mappings.documents):
        if doc.spec.source != source or mapping.source_table != table:
            continue
        cel(mapping.filter)
        for value in mapping.columns.values():
            if isinstance(value, str):
                found.add(value)
            elif isinstance(value, ColumnSpec):
                if value.from_ is not None:
                    found.add(value.from_)
                cel(value.expr)
                for part in value.concat or ():
                    if not isinstance(part, ConstPart):
                        found.add(part)
    return found


# --- presenting values ------------------------------------------------------------------------


def action(op: RowOp) -> str:
    if isinstance(op, Upsert):
        return "upsert"
    if isinstance(op, Delete):
        return "soft delete" if op.soft else "delete"
    return "truncate (soft)" if op.soft else "truncate"


def key_of(op: RowOp, mappings: MappingSet) -> dict[str, Any]:
    if isinstance(op, Truncate):
        return {}
    names = mappings.targets()[op.table].key
    return dict(zip(names, op.key, strict=True))


def text(value: Any) -> str:
    """A value as a person reads it in a table cell."""
    if value is None:
        return "NULL"
    if value is UNAVAILABLE:
        return "(unchanged)"
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=_json_default).decode()
    return str(value)


def pairs(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={text(v)}" for k, v in values.items())


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if value is UNAVAILABLE:
        return {"unchanged": True}
    return str(value)


def as_json(result: EventResult, mappings: MappingSet) -> bytes:
    """One event as a JSON line; decimals as strings, bytes as base64, unchanged TOASTed
    columns as {"unchanged": true}."""
    ops = []
    for op in result.ops:
        item: dict[str, Any] = {"action": action(op), "table": op.table}
        if not isinstance(op, Truncate):
            item["key"] = key_of(op, mappings)
        if isinstance(op, Upsert):
            item["values"] = op.values
        ops.append(item)
    return orjson.dumps(
        {
            "line": result.line,
            "destination": result.destination,
            "table": result.table,
            "op": result.op,
            "outcome": result.outcome,
            "ops": ops,
            "error_class": result.error_class,
            "error": result.error,
            "note": result.note,
        },
        default=_json_default,
        option=orjson.OPT_NON_STR_KEYS,
    )
