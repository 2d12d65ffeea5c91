"""Whatever arrives, decode() returns an event, returns None, or raises DecodeError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunggal.errors import DecodeError
from tunggal.events import ChangeEvent, ConnectorModes, RawEvent, decode

EVENTS = Path(__file__).parent.parent / "events"
LINES = [
    json.loads(line)
    for name in ("pg_alltypes_schemaless.jsonl", "pg_alltypes_schemas.jsonl")
    for line in (EVENTS / name).read_text().splitlines()
]
ENVELOPES = [line for line in LINES if line["value"] is not None]

HINTS = {
    "public.t": {
        "n": "numeric(12,2)",
        "d": "date",
        "ts": "timestamp",
        "tstz": "timestamptz",
        "tm": "time",
        "tmtz": "timetz",
        "iv": "interval",
        "b": "bytea",
        "arr": "integer[]",
        "bt": "bit(10)",
        "vb": "varbit",
        "f8": "float8",
        "money_": "money",
    },
    "public.k": {"id": "integer", "v": "text"},
}

# Keys Debezium and Connect use, so that random objects often look nearly right.
ENVELOPE_KEYS = ["op", "before", "after", "source", "schema", "payload", "lsn", "ts_ms", "table"]
SCHEMA_KEYS = ["type", "fields", "field", "name", "parameters", "items", "scale", "value", "id"]
KEYS = st.sampled_from(ENVELOPE_KEYS + SCHEMA_KEYS) | st.text(max_size=6)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["c", "u", "d", "r", "t", "struct", "__debezium_unavailable_value", "gQI="])
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)
MODES = st.builds(
    ConnectorModes,
    connector=st.sampled_from(["postgresql", "mysql", "sqlserver"]),
    decimal_handling=st.sampled_from(["precise", "string", "double"]),
    time_precision=st.sampled_from(
        ["adaptive", "adaptive_time_microseconds", "connect", "isostring"]
    ),
    binary_handling=st.sampled_from(["bytes", "base64", "base64-url-safe", "hex"]),
    interval_handling=st.sampled_from(["numeric", "string"]),
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


DEFAULT_MODES = ConnectorModes()


def survives(raw: RawEvent, modes: ConnectorModes = DEFAULT_MODES, hinted: bool = True) -> None:
    try:
        event = decode(raw, source="s", modes=modes, hints=HINTS.get if hinted else None)
    except DecodeError as exc:
        # Our own safety net says "unexpected ..."; reaching it means a path we did not handle.
        assert not str(exc).startswith("unexpected"), str(exc)
        return
    assert event is None or isinstance(event, ChangeEvent)


@FUZZ
@given(value=JSON, key=JSON | st.none(), modes=MODES, hinted=st.booleans())
def test_arbitrary_json(value: Any, key: Any, modes: ConnectorModes, hinted: bool) -> None:
    key_text = None if key is None else json.dumps(key)
    survives(RawEvent("cap.public.t", key_text, json.dumps(value)), modes, hinted)
    survives(RawEvent("cap.public.t", key, value), modes, hinted)  # already parsed


@FUZZ
@given(value=st.binary(max_size=64) | st.text(max_size=64))
def test_arbitrary_bytes_and_text(value: bytes | str) -> None:
    survives(RawEvent("cap.public.t", value, value))


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths(child, (*prefix, index))
    return found


def mutate(document: Any, path: tuple[Any, ...], replacement: Any, delete: bool) -> Any:
    if not path:
        return replacement
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return document


@FUZZ
@given(
    data=st.data(),
    line=st.sampled_from(ENVELOPES),
    replacement=JSON,
    delete=st.booleans(),
    in_key=st.booleans(),
    modes=MODES,
    as_bytes=st.booleans(),
)
def test_mutated_real_envelopes(
    data: st.DataObject,
    line: dict[str, Any],
    replacement: Any,
    delete: bool,
    in_key: bool,
    modes: ConnectorModes,
    as_bytes: bool,
) -> None:
    target = "key" if in_key and line["key"] is not None else "value"
    document = json.loads(line[target])
    path = data.draw(st.sampled_from(paths(document)))
    mutated = json.dumps(mutate(document, path, replacement, delete and bool(path)))
    texts = {**line, target: mutated}

    def encode(text: str | None) -> str | bytes | None:
        return text.encode() if as_bytes and text is not None else text

    # Once with the untouched event first, so a schema fast path is in place for the mutant.
    survives(RawEvent(line["destination"], encode(line["key"]), encode(line["value"])), modes)
    survives(RawEvent(line["destination"], encode(texts["key"]), encode(texts["value"])), modes)


@FUZZ
@given(
    line=st.sampled_from(ENVELOPES),
    start=st.integers(min_value=0, max_value=8000),
    length=st.integers(min_value=0, max_value=40),
    junk=st.binary(max_size=8),
)
def test_damaged_bytes(line: dict[str, Any], start: int, length: int, junk: bytes) -> None:
    text = line["value"].encode()
    survives(RawEvent(line["destination"], line["key"], text))
    damaged = text[:start] + junk + text[start + length :]
    survives(RawEvent(line["destination"], line["key"], damaged))


SEMANTIC_NAMES = [
    None,
    "org.apache.kafka.connect.data.Decimal",
    "io.debezium.data.VariableScaleDecimal",
    "io.debezium.data.Bits",
    "io.debezium.time.Date",
    "io.debezium.time.MicroTime",
    "io.debezium.time.NanoTimestamp",
    "io.debezium.time.ZonedTimestamp",
    "io.debezium.time.ZonedTime",
    "io.debezium.time.IsoDate",
    "io.debezium.time.IsoTime",
    "io.debezium.time.IsoTimestamp",
    "io.debezium.time.MicroDuration",
    "io.debezium.data.Json",
    "org.apache.kafka.connect.data.Timestamp",
]
CONNECT_TYPES = ["int32", "int64", "double", "boolean", "string", "bytes", "weird"]


def field_schemas(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {"type": st.sampled_from(["struct", "array", "map"])},
        optional={
            "fields": st.lists(children, max_size=3),
            "items": children,
            "keys": children,
            "values": children,
            "name": st.sampled_from(SEMANTIC_NAMES),
            "field": st.sampled_from(["v", "w"]),
        },
    )


CONNECT_SCHEMA = st.recursive(
    st.fixed_dictionaries(
        {"type": st.sampled_from(CONNECT_TYPES), "field": st.sampled_from(["v", "w"])},
        optional={
            "name": st.sampled_from(SEMANTIC_NAMES),
            "parameters": st.dictionaries(
                st.sampled_from(["scale", "length", "x"]), st.sampled_from(["2", "-1", "x", "10"])
            ),
        },
    ),
    field_schemas,
    max_leaves=6,
)


@FUZZ
@given(
    columns=st.lists(CONNECT_SCHEMA, max_size=3),
    row=st.dictionaries(st.sampled_from(["v", "w"]), JSON) | st.none(),
    key=st.none() | st.dictionaries(st.sampled_from(["v", "w"]), JSON),
    op=st.sampled_from(["c", "u", "d", "r", "t"]),
    keep_rows=st.booleans(),
)
def test_random_connect_schemas(
    columns: list[dict[str, Any]], row: Any, key: Any, op: str, keep_rows: bool
) -> None:
    row_schema = {"type": "struct", "fields": columns, "optional": True}
    fields: list[dict[str, Any]] = [{"type": "string", "field": "op"}]
    if keep_rows:
        fields += [{**row_schema, "field": "before"}, {**row_schema, "field": "after"}]
    source = {"connector": "postgresql", "schema": "public", "table": "t", "lsn": 5, "ts_ms": 1}
    payload = {"before": None, "after": row, "source": source, "op": op}
    value = json.dumps({"schema": {"type": "struct", "fields": fields}, "payload": payload})
    key_text = None if key is None else json.dumps({"schema": row_schema, "payload": key})
    survives(RawEvent("cap.public.t", key_text, value))
    survives(RawEvent("cap.public.t", key_text, value))
