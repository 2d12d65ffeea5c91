"""decode() on hand-written schema envelopes: types and connectors the captured fixtures lack."""

from __future__ import annotations

import base64
import json
import re
import sys
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tunggal.errors import DecodeError
from tunggal.events import UNAVAILABLE, ChangeEvent, ConnectorModes, Op, RawEvent, decode

PG_SOURCE: dict[str, Any] = {
    "version": "3.6.3.Final",
    "connector": "postgresql",
    "name": "cap",
    "ts_ms": 1_700_000_000_123,
    "snapshot": "false",
    "db": "src",
    "ts_us": 1_700_000_000_123_456,
    "schema": "public",
    "table": "x",
    "txId": 9,
    "lsn": 1000,
}


def envelope(
    columns: list[dict[str, Any]],
    row: dict[str, Any] | None,
    *,
    source: dict[str, Any] = PG_SOURCE,
    op: str = "c",
    key: dict[str, Any] | None = None,
) -> RawEvent:
    row_schema = {"type": "struct", "fields": columns, "optional": True, "name": "cap.x.Value"}
    schema = {
        "type": "struct",
        "name": "cap.x.Envelope",
        "fields": [
            {**row_schema, "field": "before"},
            {**row_schema, "field": "after"},
            {"type": "struct", "fields": [], "optional": False, "field": "source"},
            {"type": "string", "optional": False, "field": "op"},
        ],
    }
    payload = {"before": None, "after": row, "source": source, "op": op}
    key_text = None
    if key is not None:
        key_schema = {"type": "struct", "fields": [c for c in columns if c["field"] in key]}
        key_text = compact({"schema": key_schema, "payload": key})
    return RawEvent("cap.x", key_text, compact({"schema": schema, "payload": payload}))


def compact(document: Any) -> str:
    """As Kafka's JsonConverter writes it, so that decode's schema fast path is exercised."""
    return json.dumps(document, separators=(",", ":"))


def column(name: str, kind: str, semantic: str | None = None, **parameters: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind, "optional": True, "field": name}
    if semantic:
        schema["name"] = semantic
    if parameters:
        schema["parameters"] = parameters
    return schema


def one(kind: str, semantic: str | None, value: Any, **kwargs: Any) -> Any:
    parameters = kwargs.pop("parameters", {})
    event = decode(
        envelope([column("v", kind, semantic, **parameters)], {"v": value}), source="s", **kwargs
    )
    assert event is not None and event.after is not None
    return event.after["v"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unscaled(number: int) -> str:
    """Connect's Decimal bytes: two's-complement big-endian, as few bytes as Java's BigInteger."""
    length = (number + (number < 0)).bit_length() // 8 + 1
    return b64(number.to_bytes(length, "big", signed=True))


# -- numbers -----------------------------------------------------------------------------------

DECIMAL = "org.apache.kafka.connect.data.Decimal"


@pytest.mark.parametrize(
    ("number", "scale", "expected"),
    [
        (1234567, 2, "12345.67"),
        (-1234567, 2, "-12345.67"),
        (-1, 0, "-1"),
        (-128, 3, "-0.128"),
        (128, 0, "128"),
        (150, 2, "1.50"),
        (0, 4, "0.0000"),
        (5, -2, "5E+2"),
        (10**40 + 1, 3, "10000000000000000000000000000000000000.001"),
    ],
)
def test_decimal_bytes(number: int, scale: int, expected: str) -> None:
    result = one("bytes", DECIMAL, unscaled(number), parameters={"scale": str(scale)})
    assert isinstance(result, Decimal)
    assert str(result) == expected


def test_decimal_written_as_json_number_keeps_its_scale() -> None:
    # JsonConverter's decimal.format=NUMERIC
    result = one("bytes", DECIMAL, 1.5, parameters={"scale": "2"})
    assert str(result) == "1.50"


def test_decimal_without_scale_parameter_is_refused() -> None:
    with pytest.raises(DecodeError, match=r"value\.schema\..*parameters\.scale"):
        one("bytes", DECIMAL, unscaled(1))


def test_variable_scale_decimal() -> None:
    value = {"scale": 9, "value": unscaled(1000000001)}
    result = one("struct", "io.debezium.data.VariableScaleDecimal", value)
    assert result == Decimal("1.000000001")
    negative = {"scale": 1, "value": unscaled(-15)}
    assert one("struct", "io.debezium.data.VariableScaleDecimal", negative) == Decimal("-1.5")
    with pytest.raises(DecodeError, match=re.escape("io.debezium.data.VariableScaleDecimal")):
        one("struct", "io.debezium.data.VariableScaleDecimal", {"scale": 1})


def test_double_mode_decimal_is_a_float() -> None:
    # decimal.handling.mode=double: no semantic name, just a double.
    assert one("double", None, 12345.67) == 12345.67
    assert one("double", None, 3) == 3.0
    assert type(one("double", None, 3)) is float


def test_string_mode_decimal_is_a_decimal_only_with_a_hint() -> None:
    event = envelope([column("n", "string"), column("t", "string")], {"n": "1.50", "t": "1.50"})
    hinted = decode(event, source="s", hints=lambda table: {"n": "numeric(5,2)", "t": "text"})
    plain = decode(event, source="s")
    assert hinted is not None and plain is not None
    assert hinted.after == {"n": Decimal("1.50"), "t": "1.50"}
    assert plain.after == {"n": "1.50", "t": "1.50"}


def test_hint_never_overrides_a_semantic_type() -> None:
    event = envelope([column("d", "int32", "io.debezium.time.Date")], {"d": 1})
    decoded = decode(event, source="s", hints=lambda table: {"d": "numeric"})
    assert decoded is not None and decoded.after == {"d": date(1970, 1, 2)}


@pytest.mark.parametrize("kind", ["int8", "int16", "int32", "int64"])
def test_integers(kind: str) -> None:
    assert one(kind, None, -5) == -5
    with pytest.raises(DecodeError, match=re.escape("after.v: expected an integer, got True")):
        one(kind, None, True)


def test_boolean_and_string_types_are_checked() -> None:
    assert one("boolean", None, False) is False
    with pytest.raises(DecodeError, match=re.escape("after.v: expected true or false, got 1")):
        one("boolean", None, 1)
    with pytest.raises(DecodeError, match=re.escape("after.v: expected a string, got 1")):
        one("string", None, 1)


# -- dates and times ---------------------------------------------------------------------------

T = "io.debezium.time."
C = "org.apache.kafka.connect.data."


@pytest.mark.parametrize(
    ("kind", "semantic", "value", "expected"),
    [
        ("int32", T + "Date", 19782, date(2024, 2, 29)),
        ("int32", T + "Date", -719162, date(1, 1, 1)),
        ("int32", T + "Time", 47655500, time(13, 14, 15, 500000)),
        ("int64", T + "MicroTime", 47655123456, time(13, 14, 15, 123456)),
        ("int64", T + "NanoTime", 47655123456789, time(13, 14, 15, 123456)),
        ("int64", T + "Timestamp", 1704164645123, datetime(2024, 1, 2, 3, 4, 5, 123000)),
        ("int64", T + "MicroTimestamp", -1, datetime(1969, 12, 31, 23, 59, 59, 999999)),
        ("int64", T + "NanoTimestamp", 1704164645123456789, datetime(2024, 1, 2, 3, 4, 5, 123456)),
        (
            "string",
            T + "ZonedTimestamp",
            "2024-01-02T03:04:05.123456+07:00",
            datetime(2024, 1, 1, 20, 4, 5, 123456, tzinfo=UTC),
        ),
        (
            "string",
            T + "ZonedTimestamp",
            "2024-01-01T20:04:05.1234567Z",  # SQL Server's 100 ns ticks
            datetime(2024, 1, 1, 20, 4, 5, 123456, tzinfo=UTC),
        ),
        ("string", T + "ZonedTime", "06:14:15.25Z", time(6, 14, 15, 250000, tzinfo=UTC)),
        # time.precision.mode=isostring: the Z is formatting, the values are zone-less.
        ("string", T + "IsoDate", "2024-02-29Z", date(2024, 2, 29)),
        ("string", T + "IsoTime", "13:14:15.5Z", time(13, 14, 15, 500000)),
        (
            "string",
            T + "IsoTimestamp",
            "2024-01-02T03:04:05.123456Z",
            datetime(2024, 1, 2, 3, 4, 5, 123456),
        ),
        ("int64", T + "MicroDuration", -1_500_000, timedelta(seconds=-1.5)),
        ("string", T + "Interval", "P1M2DT3H4M5.5S", "P1M2DT3H4M5.5S"),
        ("int32", T + "Year", 2024, 2024),
        # time.precision.mode=connect
        ("int32", C + "Date", 19782, date(2024, 2, 29)),
        ("int32", C + "Time", 47655500, time(13, 14, 15, 500000)),
        ("int64", C + "Timestamp", 1704164645123, datetime(2024, 1, 2, 3, 4, 5, 123000)),
    ],
)
def test_temporal(kind: str, semantic: str, value: Any, expected: Any) -> None:
    result = one(kind, semantic, value)
    assert result == expected
    assert type(result) is type(expected)
    if isinstance(expected, datetime | time):
        assert result.tzinfo == expected.tzinfo


@pytest.mark.parametrize(
    ("kind", "semantic", "value", "message"),
    [
        ("int32", T + "Date", "abc", "expected int days for io.debezium.time.Date, got 'abc'"),
        ("int32", T + "Date", 10**9, "outside what Python's datetime can hold"),
        ("int64", T + "MicroTime", 86_400_000_000, "24:00:00 is a valid PostgreSQL time"),
        ("int64", T + "MicroTime", -1, "not a time of day"),
        ("int64", T + "MicroTimestamp", 9223372036825200000, "outside what Python's datetime"),
        ("int64", T + "Timestamp", 1.5, "expected int milliseconds for io.debezium.time.Timestamp"),
        ("string", T + "ZonedTimestamp", "2024-01-01T00:00:00", "ISO-8601 timestamp with offset"),
        ("string", T + "ZonedTimestamp", "infinity", "ISO-8601 timestamp with offset"),
        ("string", T + "ZonedTime", "06:14:15", "ISO-8601 time with offset"),
        ("string", T + "IsoDate", "29/02/2024", "ISO-8601 date"),
        ("int64", T + "MicroDuration", "1 day", "int microseconds for io.debezium.time.MicroDura"),
    ],
)
def test_temporal_errors(kind: str, semantic: str, value: Any, message: str) -> None:
    with pytest.raises(DecodeError) as caught:
        one(kind, semantic, value)
    assert str(caught.value).startswith("after.v: ")
    assert message in str(caught.value)


# -- strings, bits, binary ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "semantic",
    [
        "io.debezium.data.Json",
        "io.debezium.data.Uuid",
        "io.debezium.data.Enum",
        "io.debezium.data.Xml",
    ],
)
def test_text_types_stay_text(semantic: str) -> None:
    assert one("string", semantic, "null") == "null"


def test_enum_set() -> None:
    assert (
        one("string", "io.debezium.data.EnumSet", "a,b", parameters={"allowed": "a,b,c"}) == "a,b"
    )


@pytest.mark.parametrize(
    ("data", "length", "expected"),
    [
        (b"\x81\x02", "10", "1010000001"),
        (b"\x05", "2147483647", "101"),
        (b"\x05", "8", "00000101"),
        (b"", "3", "000"),
        (b"", "2147483647", ""),
        (b"\x01\x00\x00\x80", "32", "10000000000000000000000000000001"),
    ],
)
def test_bits(data: bytes, length: str, expected: str) -> None:
    assert (
        one("bytes", "io.debezium.data.Bits", b64(data), parameters={"length": length}) == expected
    )


def test_bits_longer_than_declared() -> None:
    with pytest.raises(DecodeError, match=r"10 bits do not fit io\.debezium\.data\.Bits\(3\)"):
        one("bytes", "io.debezium.data.Bits", b64(b"\x81\x02"), parameters={"length": "3"})


@pytest.mark.parametrize(
    ("binary_handling", "text"),
    [
        ("base64", "3q2+7w=="),
        ("base64-url-safe", "3q2-7w=="),
        ("base64-url-safe", "3q2-7w"),
        ("hex", "deadbeef"),
        ("hex", "DEADBEEF"),
    ],
)
def test_binary_modes_need_a_bytea_hint(binary_handling: str, text: str) -> None:
    modes = ConnectorModes(binary_handling=binary_handling)  # type: ignore[arg-type]
    event = envelope([column("b", "string")], {"b": text})
    hinted = decode(event, source="s", modes=modes, hints=lambda table: {"b": "bytea"})
    assert hinted is not None and hinted.after == {"b": b"\xde\xad\xbe\xef"}
    plain = decode(event, source="s", modes=modes)
    assert plain is not None and plain.after == {"b": text}


def test_bytes_field_is_base64_whatever_the_mode() -> None:
    hex_modes = ConnectorModes(binary_handling="hex")
    assert one("bytes", None, "3q2+7w==", modes=hex_modes) == b"\xde\xad\xbe\xef"


def test_bytea_array_with_hint() -> None:
    schema = {"type": "array", "items": {"type": "string", "optional": True}, "field": "a"}
    event = envelope([schema], {"a": ["deadbeef", None]})
    modes = ConnectorModes(binary_handling="hex")
    decoded = decode(event, source="s", modes=modes, hints=lambda table: {"a": "bytea[]"})
    assert decoded is not None and decoded.after == {"a": [b"\xde\xad\xbe\xef", None]}


# -- containers --------------------------------------------------------------------------------


def test_array_of_semantic_items() -> None:
    schema = {
        "type": "array",
        "items": {"type": "int32", "name": "io.debezium.time.Date", "optional": True},
        "field": "v",
    }
    event = decode(envelope([schema], {"v": [0, None, 19782]}), source="s")
    assert event is not None and event.after == {"v": [date(1970, 1, 1), None, date(2024, 2, 29)]}


def test_maps() -> None:
    schema = {
        "type": "map",
        "keys": {"type": "string"},
        "values": {"type": "int32", "name": "io.debezium.time.Date", "optional": True},
        "field": "v",
    }
    event = decode(envelope([schema], {"v": {"a": 0, "b": None}}), source="s")
    assert event is not None and event.after == {"v": {"a": date(1970, 1, 1), "b": None}}
    schema["keys"] = {"type": "int32"}
    event = decode(envelope([schema], {"v": [[1, 0]]}), source="s")
    assert event is not None and event.after == {"v": {1: date(1970, 1, 1)}}


def test_geometry_keeps_a_dict_with_wkb_bytes() -> None:
    schema = {
        "type": "struct",
        "name": "io.debezium.data.geometry.Geometry",
        "fields": [
            {"type": "bytes", "optional": False, "field": "wkb"},
            {"type": "int32", "optional": True, "field": "srid"},
        ],
        "optional": True,
        "field": "g",
    }
    wkb = bytes.fromhex("0101000000000000000000f03f0000000000000040")
    event = decode(envelope([schema], {"g": {"wkb": b64(wkb), "srid": 4326}}), source="s")
    assert event is not None and event.after == {"g": {"wkb": wkb, "srid": 4326}}


def test_missing_field_is_null_like_connect() -> None:
    event = decode(envelope([column("a", "int32"), column("b", "string")], {"a": 1}), source="s")
    assert event is not None and event.after == {"a": 1, "b": None}


def test_unknown_semantic_name_falls_back_to_the_plain_type() -> None:
    assert one("string", "io.debezium.data.Ltree", "a.b.c") == "a.b.c"
    assert one("bytes", "com.example.Custom", "3q0=") == b"\xde\xad"


def test_unknown_connect_type_is_refused() -> None:
    with pytest.raises(
        DecodeError, match=r"value\.schema\.(before|after)\.fields\[0\]\.type: unknown"
    ):
        one("decimal128", None, 1)


def test_schema_key_is_decoded_by_its_schema() -> None:
    columns = [column("id", "int32", "io.debezium.time.Date"), column("v", "string")]
    event = decode(envelope(columns, {"id": 1, "v": "x"}, key={"id": 1}), source="s")
    assert event is not None and event.key == {"id": date(1970, 1, 2)}


def test_toast_placeholder_in_a_struct_schema() -> None:
    columns = [column("t", "string"), column("b", "bytes")]
    placeholder = "__debezium_unavailable_value"
    event = decode(
        envelope(columns, {"t": placeholder, "b": b64(placeholder.encode())}, op="u"), source="s"
    )
    assert event is not None and event.after == {"t": UNAVAILABLE, "b": UNAVAILABLE}


# -- connectors and positions ------------------------------------------------------------------


def decode_with(source_block: dict[str, Any], connector: str, op: str = "c") -> ChangeEvent:
    event = decode(
        envelope([column("id", "int32")], {"id": 1}, source=source_block, op=op),
        source="s",
        modes=ConnectorModes(connector=connector),  # type: ignore[arg-type]
    )
    assert event is not None
    return event


MYSQL_SOURCE: dict[str, Any] = {
    "version": "3.6.3.Final",
    "connector": "mysql",
    "name": "m",
    "ts_ms": 1_700_000_000_000,
    "snapshot": "false",
    "db": "inventory",
    "table": "customers",
    "server_id": 223344,
    "gtid": "3E11FA47-71CA-11E1-9E33-C80AA9429562:23",
    "file": "mysql-bin.000003",
    "pos": 154,
    "row": 2,
    "thread": 7,
}


def test_mysql_source() -> None:
    event = decode_with(MYSQL_SOURCE, "mysql")
    assert event.table == "inventory.customers"
    assert event.position == ((3 * 2**32 + 154) * 2**16) + 2
    assert event.txid == "3E11FA47-71CA-11E1-9E33-C80AA9429562:23"
    assert event.commit_ts_us == 1_700_000_000_000_000
    assert not event.snapshot


def test_mysql_positions_order_by_file_then_offset_then_row() -> None:
    def position(file: str, pos: int, row: int) -> int:
        return decode_with({**MYSQL_SOURCE, "file": file, "pos": pos, "row": row}, "mysql").position

    assert position("mysql-bin.000003", 154, 2) < position("mysql-bin.000003", 154, 3)
    assert position("mysql-bin.000003", 154, 65535) < position("mysql-bin.000003", 155, 0)
    assert position("mysql-bin.000003", 2**32 - 1, 0) < position("mysql-bin.000004", 4, 0)


def test_mysql_without_gtid_or_row() -> None:
    block = {k: v for k, v in MYSQL_SOURCE.items() if k not in {"gtid", "row"}}
    event = decode_with(block, "mysql")
    assert event.txid is None
    assert event.position == (3 * 2**32 + 154) * 2**16


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"file": "binlog"}, "source.file: expected a binlog file name"),
        ({"pos": -1}, "source.pos: expected a binlog offset"),
        ({"pos": 2**32}, "source.pos: expected a binlog offset"),
        ({"row": 2**16}, "source.row: expected a row number"),
        ({"db": None}, "source.db: expected the db name"),
    ],
)
def test_mysql_source_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_with({**MYSQL_SOURCE, **changes}, "mysql")


SQLSERVER_SOURCE: dict[str, Any] = {
    "version": "3.6.3.Final",
    "connector": "sqlserver",
    "name": "ss",
    "ts_ms": 1_700_000_000_000,
    "snapshot": "false",
    "db": "testDB",
    "schema": "dbo",
    "table": "customers",
    "change_lsn": "00000027:00000758:0005",
    "commit_lsn": "00000027:00000758:0007",
    "event_serial_no": 1,
}


def test_sqlserver_source() -> None:
    event = decode_with(SQLSERVER_SOURCE, "sqlserver")
    assert event.table == "dbo.customers"
    assert event.position == (0x00000027_00000758_0007 << 96 | 0x00000027_00000758_0005 << 16 | 1)
    assert event.txid == "00000027:00000758:0007"


def test_sqlserver_snapshot_has_no_change_lsn() -> None:
    block = {**SQLSERVER_SOURCE, "change_lsn": None, "event_serial_no": None, "snapshot": "true"}
    event = decode_with(block, "sqlserver", op="r")
    assert event.position == 0x00000027_00000758_0007 << 96
    assert event.snapshot and event.op is Op.READ


def test_sqlserver_commit_order_wins_over_change_order() -> None:
    early = decode_with({**SQLSERVER_SOURCE, "change_lsn": "00000027:00000760:0001"}, "sqlserver")
    late = decode_with(
        {
            **SQLSERVER_SOURCE,
            "commit_lsn": "00000027:00000800:0001",
            "change_lsn": "00000027:00000700:0001",
        },
        "sqlserver",
    )
    assert early.position < late.position


def test_sqlserver_bad_lsn() -> None:
    with pytest.raises(DecodeError, match=re.escape("source.commit_lsn: expected an LSN like")):
        decode_with({**SQLSERVER_SOURCE, "commit_lsn": "27:758:7"}, "sqlserver")


@pytest.mark.parametrize(
    ("marker", "snapshot"),
    [
        ("true", True),
        ("first", True),
        ("first_in_data_collection", True),
        ("last_in_data_collection", True),
        ("last", True),
        # Read while streaming goes on, and placed among the streamed changes (test_decode).
        ("incremental", False),
        ("false", False),
        (None, False),
        (True, True),
        ([1], False),
    ],
)
def test_snapshot_marker(marker: Any, snapshot: bool) -> None:
    block = {**PG_SOURCE, "snapshot": marker}
    if marker == "incremental":  # positioned by its window's close marker, not an lsn
        block.update(lsn=None, sequence='["900","1000"]')
    assert decode_with(block, "postgresql").snapshot is snapshot


def test_transaction_block_is_the_fallback_txid() -> None:
    block = {k: v for k, v in PG_SOURCE.items() if k != "txId"}
    raw = envelope([column("id", "int32")], {"id": 1}, source=block)
    value = json.loads(str(raw.value))
    value["payload"]["transaction"] = {"id": "571:53195832", "total_order": 1}
    event = decode(RawEvent(raw.destination, None, json.dumps(value)), source="s")
    assert event is not None and event.txid == "571:53195832"


def test_modes_refuse_unknown_values() -> None:
    with pytest.raises(ValueError, match="decimal_handling: 'exact' is not one of"):
        ConnectorModes(decimal_handling="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connector: 'oracle'"):
        ConnectorModes(connector="oracle")  # type: ignore[arg-type]


def test_schema_change_reaches_the_new_decoder() -> None:
    old = envelope([column("v", "int32", "io.debezium.time.Date")], {"v": 1})
    new = envelope([column("v", "string")], {"v": "1"})
    for raw, expected in [(old, date(1970, 1, 2)), (new, "1"), (old, date(1970, 1, 2))]:
        event = decode(raw, source="s")
        assert event is not None and event.after == {"v": expected}


def test_schema_with_payload_parameter_still_decodes() -> None:
    # ,"payload": inside the schema text must not confuse the fast path.
    columns = [column("v", "string", "io.debezium.data.Enum", allowed="a,b", payload="x")]
    raws = [envelope(columns, {"v": text}) for text in ["a", "b", "a"]]
    assert ',"payload":"x"' in str(raws[0].value)
    for raw, text in zip(raws, ["a", "b", "a"], strict=True):
        event = decode(raw, source="s")
        assert event is not None and event.after == {"v": text}
    # White-box: the remembered prefix is the whole schema, not the text up to the parameter.
    prefix, _ = sys.modules["tunggal.events.decode"]._FAST[("cap.x", "value", str)][0]
    assert prefix + ',"payload":' + compact(json.loads(str(raws[0].value))["payload"]) + "}" == (
        raws[0].value
    )
