"""decode() against real Debezium 3.6.3 PostgreSQL events, with and without Connect schemas."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tunggal.errors import DecodeError
from tunggal.events import (
    EPOCH_SHIFT,
    UNAVAILABLE,
    UNAVAILABLE_PLACEHOLDER,
    ChangeEvent,
    ConnectorModes,
    Op,
    RawEvent,
    decode,
    in_epoch,
)
from tunggal.events.model import BitString

EVENTS = Path(__file__).parent.parent / "events"
MODES = ["schemaless", "schemas"]

# The source tables' column types, as the mapping layer would hand them over.
HINTS: dict[str, dict[str, str]] = {
    "public.t": {
        "id": "bigint",
        "n": "numeric(12,2)",
        "nv": "numeric",
        "d": "date",
        "ts": "timestamp without time zone",
        "tstz": "timestamp with time zone",
        "tm": "time without time zone",
        "tmtz": "time with time zone",
        "iv": "interval",
        "j": "jsonb",
        "js": "json",
        "u": "uuid",
        "b": "bytea",
        "arr": "integer[]",
        "tarr": "text[]",
        "e": "mood",
        "bt": "bit(10)",
        "vb": "bit varying",
        "f8": "double precision",
        "f4": "real",
        "big": "bigint",
        "sm": "smallint",
        "bo": "boolean",
        "txt": "text",
        "money_": "money",
        "ch": "character(3)",
        "inet_": "inet",
        "xm": "xml",
    },
    "public.k": {"id": "integer", "v": "text"},
}

ROW_1 = {
    "id": 1,
    "n": Decimal("12345.67"),
    "nv": Decimal("1.000000001"),
    "d": date(2024, 2, 29),
    "ts": datetime(2024, 1, 2, 3, 4, 5, 123456),
    "tstz": datetime(2024, 1, 1, 20, 4, 5, 123456, tzinfo=UTC),
    "tm": time(13, 14, 15, 500000),
    "tmtz": time(6, 14, 15, tzinfo=UTC),
    # '1 mon 2 days 03:04:05.5': Debezium counts the month as 30.4375 days.
    "iv": timedelta(days=30.4375) + timedelta(days=2, hours=3, minutes=4, seconds=5.5),
    "j": '{"a": [1, 2, {"b": null}]}',
    "js": '{"x":1}',
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "b": b"\xde\xad\xbe\xef",
    "arr": [1, 2, 3],
    "tarr": ["a", "b c"],
    "e": "senang",
    "bt": BitString("1010000001"),
    "vb": BitString("101"),
    "f8": 1e-07,
    "f4": 3.5,
    "big": 9007199254740993,
    "sm": 7,
    "bo": True,
    "txt": "héllo",
    "money_": Decimal("12.34"),
    "ch": "ab ",
    "inet_": "10.0.0.1",
    "xm": "<a/>",
}


def lines(mode: str) -> list[dict[str, Any]]:
    path = EVENTS / f"pg_alltypes_{mode}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def raw_event(line: dict[str, Any], offset: int = 0) -> RawEvent:
    return RawEvent(line["destination"], line["key"], line["value"], offset=offset)


def decode_all(mode: str, **kwargs: Any) -> list[ChangeEvent | None]:
    kwargs.setdefault("hints", HINTS.get)
    return [
        decode(raw_event(line, i), source="cap", **kwargs) for i, line in enumerate(lines(mode))
    ]


def decoded(mode: str, index: int, **kwargs: Any) -> ChangeEvent:
    event = decode_all(mode, **kwargs)[index]
    assert event is not None
    return event


@pytest.mark.parametrize("mode", MODES)
def test_every_type_of_the_first_row(mode: str) -> None:
    event = decoded(mode, 1)
    assert event.after == ROW_1
    # Equality alone would let 1 == 1.0 or a naive/aware mix-up through.
    for column, expected in ROW_1.items():
        assert type(event.after[column]) is type(expected), column
    assert event.after["tstz"].utcoffset() == timedelta(0)
    assert event.after["tmtz"].utcoffset() == timedelta(0)
    assert event.after["ts"].tzinfo is None
    assert event.after["tm"].tzinfo is None
    assert event.after["iv"] == timedelta(seconds=2813645.5)


@pytest.mark.parametrize("mode", MODES)
def test_row_of_nulls_keeps_jsonb_null_as_text(mode: str) -> None:
    event = decoded(mode, 2)
    assert event.after is not None
    assert event.after["j"] == "null"  # jsonb 'null' is a value, not SQL NULL
    assert event.after["id"] == 2
    assert all(value is None for column, value in event.after.items() if column not in {"id", "j"})


@pytest.mark.parametrize("mode", MODES)
def test_snapshot_reads(mode: str) -> None:
    events = decode_all(mode)
    for event in events[:3]:
        assert event is not None
        assert event.op is Op.READ
        assert event.snapshot
        # a snapshot row sits at the snapshot's consistent point: epoch 26541248, change LSN 0
        assert event.position == 26541248 << EPOCH_SHIFT
        assert event.txid == "727"
        assert event.before is None
    assert [e.table for e in events[:3] if e] == ["public.k", "public.t", "public.t"]
    # Debezium marks the snapshot's last record "last": the end of the whole snapshot.
    assert [e.snapshot_done for e in events[:3] if e] == [False, False, True]
    assert all(e is None or not e.snapshot for e in events[3:])


@pytest.mark.parametrize("mode", MODES)
def test_update(mode: str) -> None:
    event = decoded(mode, 3)
    assert event.op is Op.UPDATE
    assert event.key == {"id": 1}
    assert event.before is None  # REPLICA IDENTITY DEFAULT sends no old row for an update
    assert event.after is not None
    assert event.after["n"] == Decimal("1.50")
    assert str(event.after["n"]) == "1.50"  # the scale survives
    assert event.after["txt"] == "x"
    # The first transaction after the snapshot has no lastCommitLsn ("sequence": [null, ...]):
    # its position is the bare change LSN until the pipeline places it in the snapshot's epoch.
    assert event.position == 26541288
    assert in_epoch(event.position, 26541248) == 26541248 << EPOCH_SHIFT | 26541288
    assert event.txid == "728"
    assert not event.snapshot


@pytest.mark.parametrize("mode", MODES)
def test_primary_key_change_is_delete_tombstone_create(mode: str) -> None:
    deleted, tombstone, created = decode_all(mode)[4:7]
    assert deleted is not None and created is not None
    assert tombstone is None
    assert (deleted.op, deleted.key, deleted.before, deleted.after) == (
        Op.DELETE,
        {"id": 1},
        {"id": 1, "v": None},
        None,
    )
    assert (created.op, created.key, created.after) == (
        Op.CREATE,
        {"id": 2},
        {"id": 2, "v": "satu"},
    )
    assert deleted.table == created.table == "public.k"
    # sequence ["26541736","26541736"]: the previous transaction ended where this one's first
    # change starts
    assert deleted.position == created.position == 26541736 << EPOCH_SHIFT | 26541736
    assert deleted.txid == created.txid == "729"


@pytest.mark.parametrize("mode", MODES)
def test_delete_under_replica_identity_default_has_only_the_key(mode: str) -> None:
    event = decoded(mode, 7)
    assert event.op is Op.DELETE
    assert event.key == {"id": 2}
    assert event.after is None
    assert event.before is not None
    assert event.before["id"] == 2
    assert all(value is None for column, value in event.before.items() if column != "id")


@pytest.mark.parametrize("mode", MODES)
def test_transaction_with_two_statements(mode: str) -> None:
    insert, update = decode_all(mode)[9:11]
    assert insert is not None and update is not None
    assert insert.after == {"id": 5, "v": "lima"}
    assert update.after == {"id": 5, "v": "LIMA"}
    assert insert.txid == update.txid == "731"
    assert insert.position < update.position


@pytest.mark.parametrize("mode", MODES)
def test_truncate(mode: str) -> None:
    event = decoded(mode, 11)
    assert event.op is Op.TRUNCATE
    assert event.table == "public.k"
    assert (event.key, event.before, event.after) == (None, None, None)
    assert event.position == 26542344 << EPOCH_SHIFT | 26545240
    assert event.txid == "732"


@pytest.mark.parametrize("mode", MODES)
def test_envelope_fields(mode: str) -> None:
    line = lines(mode)[1]
    raw = raw_event(line, 42)
    event = decode(raw, source="e_planning", hints=HINTS.get)
    assert event is not None
    assert event.source == "e_planning"
    assert event.raw is raw
    source_block = json.loads(line["value"])
    source_block = source_block.get("payload", source_block)["source"]
    assert event.commit_ts_us == source_block["ts_us"]


@pytest.mark.parametrize("mode", MODES)
def test_positions_never_go_backwards_in_the_capture(mode: str) -> None:
    events = [event for event in decode_all(mode) if event is not None]
    epoch = events[0].position >> EPOCH_SHIFT
    positions = [in_epoch(event.position, epoch) for event in events]
    assert positions == sorted(positions)
    assert len(set(positions[3:])) > 5  # streamed changes are told apart


def test_commit_order_beats_change_lsn_order() -> None:
    """A transaction that was running when the slot reached its consistent point (the snapshot's
    position) wrote below it, but committed after: it must sort after the snapshot's rows."""
    snapshot = decode_with_source({"lsn": 5000, "snapshot": "true", "sequence": '[null,"5000"]'})
    first = decode_with_source({"lsn": 4000, "sequence": '[null,"4000"]'})
    second = decode_with_source({"lsn": 4100, "sequence": '["5200","4100"]'})
    assert snapshot < in_epoch(first, snapshot >> EPOCH_SHIFT) < second
    # Change LSN alone would have put both below the snapshot.
    assert first < snapshot


@pytest.mark.parametrize(
    "sequence",
    ["[1]", "nonsense", '["x","1"]', '["-1","1"]', 5, '["99999999999999999999999","1"]'],
)
def test_bad_sequence_is_a_decode_error(sequence: object) -> None:
    with pytest.raises(DecodeError, match=r"source\.sequence: expected"):
        decode_with_source({"lsn": 1, "sequence": sequence})


def test_both_converter_modes_agree_on_every_event() -> None:
    for with_schema, without in zip(decode_all("schemas"), decode_all("schemaless"), strict=True):
        if with_schema is None or without is None:
            assert with_schema is without is None
            continue
        assert (with_schema.op, with_schema.key, with_schema.before, with_schema.after) == (
            without.op,
            without.key,
            without.before,
            without.after,
        )


def test_schemaless_without_hints_keeps_the_json_values() -> None:
    event = decoded("schemaless", 1, hints=None)
    assert event.after is not None
    assert event.after["d"] == 19782
    assert event.after["n"] == "12345.67"
    assert event.after["b"] == "3q2+7w=="
    assert event.after["big"] == 9007199254740993


def test_schemas_without_hints_decode_all_but_string_numerics() -> None:
    event = decoded("schemas", 1, hints=None)
    assert event.after is not None
    # decimal.handling.mode=string leaves numeric a plain string field in the schema.
    assert event.after["n"] == "12345.67"
    assert event.after["money_"] == "12.34"
    expected = {k: v for k, v in ROW_1.items() if k not in {"n", "nv", "money_"}}
    assert {k: v for k, v in event.after.items() if k in expected} == expected


def test_hints_for_other_tables_are_not_used() -> None:
    calls: list[str] = []

    def hints(table: str) -> dict[str, str] | None:
        calls.append(table)
        return HINTS.get(table)

    decode_all("schemaless", hints=hints)
    assert set(calls) == {"public.k", "public.t"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("as_type", ["str", "bytes", "bytearray", "parsed"])
def test_accepts_text_bytes_and_parsed_json(mode: str, as_type: str) -> None:
    line = lines(mode)[1]
    conversions: dict[str, Callable[[str], Any]] = {
        "str": str,
        "bytes": str.encode,
        "bytearray": lambda text: bytearray(text.encode()),
        "parsed": json.loads,
    }
    convert = conversions[as_type]
    raw = RawEvent(line["destination"], convert(line["key"]), convert(line["value"]))
    for _ in range(2):  # the second time through the schema cache
        event = decode(raw, source="cap", hints=HINTS.get)
        assert event is not None
        assert event.key == {"id": 1}
        assert event.after == ROW_1


# -- unchanged TOASTed values ------------------------------------------------------------------

PLACEHOLDER_BYTES = UNAVAILABLE_PLACEHOLDER.encode()
TOASTED = {
    "txt": UNAVAILABLE_PLACEHOLDER,
    "j": UNAVAILABLE_PLACEHOLDER,
    "xm": UNAVAILABLE_PLACEHOLDER,
    "b": base64.b64encode(PLACEHOLDER_BYTES).decode(),
    "tarr": [UNAVAILABLE_PLACEHOLDER],
    "arr": list(PLACEHOLDER_BYTES),  # int[]: one int per placeholder byte
}


def with_after(line: dict[str, Any], changes: dict[str, Any]) -> RawEvent:
    document = json.loads(line["value"])
    payload = document.get("payload", document)
    payload["after"].update(changes)
    return RawEvent(line["destination"], line["key"], json.dumps(document))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hints", [HINTS.get, None], ids=["hints", "no-hints"])
def test_unchanged_toast_values_become_unavailable(mode: str, hints: Any) -> None:
    line = lines(mode)[3]
    decode(raw_event(line), source="cap", hints=hints)  # warm the schema fast path
    event = decode(with_after(line, TOASTED), source="cap", hints=hints)
    assert event is not None and event.after is not None
    for column in TOASTED:
        assert event.after[column] is UNAVAILABLE, column
    assert event.after["id"] == 1
    assert event.after["u"] == ROW_1["u"]


def test_placeholder_forms_without_schema() -> None:
    line = lines("schemaless")[3]
    forms = {
        "txt": json.dumps(
            {UNAVAILABLE_PLACEHOLDER: UNAVAILABLE_PLACEHOLDER}, separators=(",", ":")
        ),
        "tarr": ["b68a35a7-17ad-35b3-af2a-ae46edb4545a"],  # uuid[]: a name-based UUID of it
        "b": PLACEHOLDER_BYTES.hex(),
        "j": {UNAVAILABLE_PLACEHOLDER: UNAVAILABLE_PLACEHOLDER},  # hstore.handling.mode=map
    }
    event = decode(with_after(line, forms), source="cap")
    assert event is not None and event.after is not None
    assert all(event.after[column] is UNAVAILABLE for column in forms)


def test_text_that_merely_contains_the_placeholder_is_kept() -> None:
    line = lines("schemaless")[3]
    text = UNAVAILABLE_PLACEHOLDER + " "
    event = decode(with_after(line, {"txt": text}), source="cap", hints=HINTS.get)
    assert event is not None and event.after is not None
    assert event.after["txt"] == text


# -- failures ----------------------------------------------------------------------------------


def value_event(value: Any, key: Any = None) -> RawEvent:
    return RawEvent("cap.public.t", key, value)


def valid_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(lines("schemaless")[3]["value"])
    payload.update(changes)
    return payload


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not json", "value: not valid JSON"),
        (b"\xff\xfe{}", "value: not valid UTF-8"),
        (b'{"op": "c", "x": "\xc3\x28"}', "value: not valid UTF-8"),
        ("", "value: not valid JSON"),
        ("[1, 2]", "value: expected a Debezium change event object, got a JSON array"),
        ('"c"', "got a JSON string"),
        ("42", "got the number 42"),
        ("null", "got null"),
        ('{"hello": "world"}', "op: missing; not a Debezium change event (it has keys hello)"),
        ("{}", "op: missing; not a Debezium change event (it has no keys)"),
        ('{"schema": {"type": "struct", "fields": []}, "payload": [1]}', "got a JSON array"),
    ],
)
def test_not_a_change_event(value: Any, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(value_event(value), source="cap")
    assert message in str(caught.value)
    assert caught.value.source == "cap"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"op": None}, "op: missing"),
        ({"op": "x"}, "op: unknown operation 'x'; expected one of c, r, u, d, t"),
        ({"op": "m"}, "op: unknown operation 'm'"),
        ({"op": ["u"]}, "op: unknown operation ['u']"),
        ({"after": None}, "after: missing, but op 'u' must carry the new row"),
        ({"op": "c", "after": None}, "after: missing, but op 'c'"),
        ({"op": "r", "after": None}, "after: missing, but op 'r'"),
        ({"op": "d"}, "after: expected null for a delete"),
        ({"after": [1]}, "after: expected an object or null, got a JSON array"),
        ({"before": "x"}, "before: expected an object or null, got a JSON string"),
        ({"source": None}, "source: expected the source block (an object), got None"),
        ({"source": "x"}, "source: expected the source block"),
    ],
)
def test_invalid_envelope(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(value_event(json.dumps(valid_payload(**changes))), source="cap")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lsn": None}, "source.lsn: expected the change's LSN as a non-negative integer"),
        ({"lsn": -1}, "source.lsn: expected the change's LSN"),
        ({"lsn": "0/16B3748"}, "source.lsn: expected the change's LSN"),
        ({"table": None}, "source.table: expected the table name, got None"),
        ({"schema": ""}, "source.schema: expected the schema name, got ''"),
        ({"ts_ms": None, "ts_us": None}, "source.ts_ms: expected the commit time in ms"),
        ({"connector": "mysql"}, "source.connector: the event comes from a 'mysql' connector"),
    ],
)
def test_invalid_source_block(changes: dict[str, Any], message: str) -> None:
    payload = valid_payload()
    payload["source"].update(changes)
    with pytest.raises(DecodeError) as caught:
        decode(value_event(json.dumps(payload)), source="cap")
    assert message in str(caught.value)


def decode_with_source(changes: dict[str, Any]) -> int:
    """The position of a streamed change whose source block has `changes`."""
    payload = valid_payload()
    payload["source"].update(changes)
    event = decode(value_event(json.dumps(payload)), source="cap")
    assert event is not None
    return event.position


def test_lsn_as_digit_string_and_ts_ms_fallback() -> None:
    payload = valid_payload()
    payload["source"].update(lsn="123", ts_us=None, ts_ms=5)
    event = decode(value_event(json.dumps(payload)), source="cap")
    assert event is not None
    assert (event.position, event.commit_ts_us) == (123, 5000)


def test_bad_column_value_names_the_field_and_table() -> None:
    line = lines("schemaless")[3]
    with pytest.raises(DecodeError) as caught:
        decode(with_after(line, {"d": "abc"}), source="cap", hints=HINTS.get)
    assert str(caught.value) == "after.d: expected int days for io.debezium.time.Date, got 'abc'"
    assert (caught.value.source, caught.value.table) == ("cap", "public.t")


def test_bad_column_value_in_schema_mode() -> None:
    line = lines("schemas")[3]
    with pytest.raises(DecodeError) as caught:
        decode(with_after(line, {"b": "not base64!"}), source="cap")
    assert str(caught.value) == "after.b: expected base64 bytes, got 'not base64!'"
    assert caught.value.table == "public.t"


def test_bad_array_item_names_its_index() -> None:
    line = lines("schemas")[3]
    with pytest.raises(DecodeError, match=r"after\.arr\[1\]: expected an integer, got 'x'"):
        decode(with_after(line, {"arr": [1, "x"]}), source="cap")


def test_invalid_key() -> None:
    line = lines("schemaless")[3]
    for key, message in [
        ("{", "key: not valid JSON"),
        ("[1]", "key: expected an object of key columns, got a JSON array"),
    ]:
        with pytest.raises(DecodeError, match=message):
            decode(RawEvent(line["destination"], key, line["value"]), source="cap")
    event = decode(RawEvent(line["destination"], "null", line["value"]), source="cap")
    assert event is not None and event.key is None


def test_hints_function_errors_are_not_poison() -> None:
    def broken(table: str) -> dict[str, str]:
        raise RuntimeError("hints are broken")

    with pytest.raises(RuntimeError, match="hints are broken"):
        decode(raw_event(lines("schemaless")[1]), source="cap", hints=broken)


def test_tombstone() -> None:
    assert decode(RawEvent("cap.public.k", '{"id": 1}', None), source="cap") is None


# -- exact JSON --------------------------------------------------------------------------------


def test_nan_and_infinity_tokens() -> None:
    text = lines("schemaless")[3]["value"].replace('"f8":1.0E-7', '"f8":NaN')
    text = text.replace('"f4":3.5', '"f4":-Infinity')
    event = decode(value_event(text), source="cap", hints=HINTS.get)
    assert event is not None and event.after is not None
    assert event.after["f8"] != event.after["f8"]
    assert event.after["f4"] == float("-inf")


def test_quoted_nan_in_a_double_field() -> None:
    line = lines("schemas")[3]
    event = decode(with_after(line, {"f8": "NaN", "f4": "Infinity"}), source="cap")
    assert event is not None and event.after is not None
    assert event.after["f8"] != event.after["f8"]
    assert event.after["f4"] == float("inf")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("number", [2**64, 2**64 + 1, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits_stay_exact(mode: str, number: int) -> None:
    # orjson would hand these over as floats; decode must notice and re-read exactly.
    line = lines(mode)[3]
    text = line["value"].replace("9007199254740993", str(number))
    for as_bytes in (False, True):
        value = text.encode() if as_bytes else text
        event = decode(RawEvent(line["destination"], line["key"], value), source="cap")
        assert event is not None and event.after is not None
        assert event.after["big"] == number
        assert type(event.after["big"]) is int


def test_schemas_flag_is_detected_per_message() -> None:
    schemaless, with_schema = lines("schemaless")[1], lines("schemas")[1]
    modes = ConnectorModes()
    first = decode(raw_event(with_schema), source="cap", modes=modes, hints=HINTS.get)
    second = decode(raw_event(schemaless), source="cap", modes=modes, hints=HINTS.get)
    assert first is not None and second is not None
    assert first.after == second.after == ROW_1


# Captured from Debezium 3.6.3 (embedded, PostgreSQL 15): a streamed update, a row read by an
# incremental snapshot (`execute-snapshot`, type incremental), and a later streamed change.
STREAMED_BEFORE = {
    "before": None,
    "after": {"id": 3190, "v": 2},
    "source": {
        "version": "3.6.3.Final",
        "connector": "postgresql",
        "name": "exp",
        "ts_ms": 1796413236772,
        "snapshot": "false",
        "db": "postgres",
        "sequence": '["23016992","23020584"]',
        "ts_us": 1796413236772102,
        "schema": "public",
        "table": "t1",
        "txId": 1203,
        "lsn": 23020584,
        "xmin": None,
    },
    "op": "u",
    "ts_ms": 1796413236775,
}
INCREMENTAL_ROW = {
    "before": None,
    "after": {"id": 1, "v": 0},
    "source": {
        "version": "3.6.3.Final",
        "connector": "postgresql",
        "name": "exp",
        "ts_ms": 1796413236776,
        "snapshot": "incremental",
        "db": "postgres",
        "sequence": '["23020712","23020712"]',
        "ts_us": 1796413236776252,
        "ts_ns": 1796413236776252942,
        "schema": "public",
        "table": "t1",
        "txId": None,
        "lsn": None,
        "xmin": None,
        "origin": None,
        "origin_lsn": None,
    },
    "transaction": None,
    "op": "r",
    "ts_ms": 1796413236777,
}


def _raw(value: dict[str, Any], key: int) -> RawEvent:
    return RawEvent("exp.public.t1", json.dumps({"id": key}), json.dumps(value))


@pytest.mark.parametrize("fast", [True, False])
def test_incremental_snapshot_rows_sit_at_their_window_s_close(fast: bool) -> None:
    """No lsn: the close marker's [lastCommitLsn, lsn] from `sequence` places the row after
    every change streamed before its window closed, and it is not an initial-snapshot row."""
    hints = {"id": "integer", "v": "integer"} if fast else None
    row = decode(_raw(INCREMENTAL_ROW, 1), source="exp", hints=lambda _: hints)
    assert row is not None
    assert (row.op, row.snapshot, row.snapshot_done) == (Op.READ, False, False)
    assert row.position == 23020712 << EPOCH_SHIFT | 23020712
    assert row.after == {"id": 1, "v": 0}
    before = decode(_raw(STREAMED_BEFORE, 3190), source="exp")
    assert before is not None and before.position < row.position
    later = json.loads(json.dumps(STREAMED_BEFORE))
    later["source"].update(sequence='["23020712","23020900"]', lsn=23020900)
    after = decode(_raw(later, 3190), source="exp")
    assert after is not None and after.position > row.position


def test_an_incremental_snapshot_row_without_its_sequence_is_poison() -> None:
    broken = json.loads(json.dumps(INCREMENTAL_ROW))
    broken["source"]["sequence"] = None
    with pytest.raises(DecodeError, match=r"incremental snapshot row needs the close marker"):
        decode(_raw(broken, 1), source="exp")
