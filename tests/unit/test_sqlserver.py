"""SQL Server, without a server: events as Debezium's SQL Server connector documents them.

No SQL Server can run on these machines, so the facts come from Debezium's SQL Server
connector documentation (documentation/modules/ROOT/pages/connectors/sqlserver.adoc at
v3.6.1.Final; the wheel ships 3.6.3) and its SqlServerValueConverters: the `source` block
(`commit_lsn`, `change_lsn`, `event_serial_no`), the value of each type with and without Connect
schemas, and the connector properties Tunggal renders for `kind: sqlserver`.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunggal.connectors import ConnectorSpec, load_connector
from tunggal.errors import ConfigError, DecodeError
from tunggal.events import ChangeEvent, ConnectorModes, RawEvent, decode
from tunggal.events.decode import describe_position

# -- the source block and positions ----------------------------------------------------------------

# The create event of the docs' "Data change events" section, as Debezium 3.6 writes it.
SOURCE: dict[str, Any] = {
    "version": "3.6.3.Final",
    "connector": "sqlserver",
    "name": "server1",
    "ts_ms": 1559729468470,
    "ts_us": 1559729468470000,
    "ts_ns": 1559729468470000000,
    "snapshot": False,
    "db": "testDB",
    "schema": "dbo",
    "table": "customers",
    "change_lsn": "00000027:00000758:0003",
    "commit_lsn": "00000027:00000758:0005",
    "event_serial_no": "1",
}
MODES = ConnectorModes(connector="sqlserver")


def payload_event(source: dict[str, Any], op: str = "c", after: Any = None) -> ChangeEvent:
    """A schemaless event (bare JSON), as JsonConverter writes it with schemas.enable=false."""
    row = after or {"id": 1005}
    value = {
        "before": row if op == "d" else None,
        "after": None if op == "d" else row,
        "source": source,
        "op": op,
    }
    raw = RawEvent("server1.testDB.dbo.customers", None, json.dumps(value))
    event = decode(raw, source="sipkd", modes=MODES)
    assert event is not None
    return event


def at(commit: str, change: str | None, serial: Any, op: str = "c") -> int:
    block = {**SOURCE, "commit_lsn": commit, "change_lsn": change, "event_serial_no": serial}
    return payload_event(block, op).position


def test_the_documented_create_event() -> None:
    event = payload_event(SOURCE)
    assert event.table == "dbo.customers"
    assert event.txid == "00000027:00000758:0005"  # a transaction is named by its commit LSN
    assert event.commit_ts_us == 1559729468470000
    assert not event.snapshot
    assert describe_position("sqlserver", event.position) == "commit LSN 00000027:00000758:0005"


def test_changes_within_one_transaction_follow_their_change_lsn() -> None:
    commit = "00000027:00000758:0005"
    first = at(commit, "00000027:00000758:0002", 1)
    second = at(commit, "00000027:00000758:0003", 1)
    third = at(commit, "00000027:00000759:0001", 1)  # a later log block, same transaction
    assert first < second < third


def test_a_later_commit_wins_over_an_earlier_change_lsn() -> None:
    """Transactions interleave in the log: B starts (and writes) before A but commits after
    it. Each of B's changes comes after every change of A."""
    a = at("00000027:00000800:0001", "00000027:00000790:0004", 1)
    b = at("00000027:00000810:0001", "00000027:00000700:0001", 1)
    assert a < b


def test_a_primary_key_update_is_a_delete_then_a_create_with_one_change_lsn() -> None:
    """The docs: both events share the commit and change LSN, their serial numbers are 1 and
    2; the create must sort after the delete."""
    commit, change = "00000027:00000758:0005", "00000027:00000758:0003"
    delete = at(commit, change, "1", op="d")
    create = at(commit, change, "2", op="c")
    assert delete < create
    assert at(commit, change, 2) == create  # int64 in the schema, a string in the examples
    # ... and before the transaction's next change.
    assert create < at(commit, "00000027:00000758:0004", 1)


def test_snapshot_rows_have_neither_change_lsn_nor_serial_number() -> None:
    """The docs' snapshot record: `change_lsn` and `event_serial_no` are null. The row sits at
    the snapshot's LSN, before any change committed later."""
    block = {**SOURCE, "snapshot": "true", "change_lsn": None, "event_serial_no": None}
    block["commit_lsn"] = "00000025:00000d98:00a2"
    row = payload_event(block, op="r")
    assert row.snapshot
    assert row.position < at("00000025:00000d98:00a3", "00000025:00000d98:00a3", 1)
    assert row.position == 0x00000025_00000D98_00A2 << 96


@pytest.mark.parametrize("serial", [-1, 1 << 16, "x", 1.5, [1]])
def test_a_bad_serial_number_is_refused_naming_the_field(serial: Any) -> None:
    with pytest.raises(DecodeError, match=r"source\.event_serial_no"):
        at("00000027:00000758:0005", "00000027:00000758:0003", serial)


LSN = st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF)).map(
    lambda t: f"{t[0]:08x}:{t[1]:08X}:{t[2]:04x}"
)
CHANGE = st.tuples(LSN, st.one_of(st.none(), LSN), st.integers(1, 0xFFFF))


def reference_key(commit: str, change: str | None, serial: int) -> tuple[int, int, int]:
    """The order Debezium's SqlServerOffsetContext compares by: commit LSN, change LSN, serial
    number (a missing change LSN is the lowest), each LSN compared as an unsigned number."""
    return (
        int(commit.replace(":", ""), 16),
        -1 if change is None else int(change.replace(":", ""), 16),
        serial if change is not None else 0,
    )


@given(CHANGE, CHANGE)
def test_positions_order_as_commit_then_change_then_serial(
    x: tuple[str, str | None, int], y: tuple[str, str | None, int]
) -> None:
    px = at(x[0], x[1], x[2] if x[1] is not None else None)
    py = at(y[0], y[1], y[2] if y[1] is not None else None)
    kx = reference_key(*x)
    ky = reference_key(*y)
    assert (px < py) == (kx < ky) and (px == py) == (kx == ky)
    assert describe_position("sqlserver", px).endswith(x[0].upper())


# -- values ------------------------------------------------------------------------------------

DECIMAL = "org.apache.kafka.connect.data.Decimal"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unscaled(number: int) -> str:
    length = (number + (number < 0)).bit_length() // 8 + 1
    return b64(number.to_bytes(length, "big", signed=True))


# (column, Connect schema, value as JsonConverter writes it, expected Python value). The schema
# types are the docs' "Data type mappings" tables; time.precision.mode=adaptive is Debezium's
# default for SQL Server, decimal.handling.mode=precise too.
ADAPTIVE_PRECISE: list[tuple[str, dict[str, Any], Any, Any]] = [
    # DATETIME2(7), the default precision: NanoTimestamp; 100 ns do not fit a Python (or a
    # PostgreSQL) timestamp and are truncated to microseconds.
    (
        "datetime2_7",
        {"type": "int64", "name": "io.debezium.time.NanoTimestamp"},
        1709212455123456700,
        datetime(2024, 2, 29, 13, 14, 15, 123456),
    ),
    (
        "datetime2_3",
        {"type": "int64", "name": "io.debezium.time.Timestamp"},
        1709212455123,
        datetime(2024, 2, 29, 13, 14, 15, 123000),
    ),
    (
        "datetime2_6",
        {"type": "int64", "name": "io.debezium.time.MicroTimestamp"},
        1709212455123456,
        datetime(2024, 2, 29, 13, 14, 15, 123456),
    ),
    # SMALLDATETIME: minutes; Timestamp in milliseconds.
    (
        "smalldatetime",
        {"type": "int64", "name": "io.debezium.time.Timestamp"},
        1709212440000,
        datetime(2024, 2, 29, 13, 14),
    ),
    # DATETIMEOFFSET: ZonedTimestamp whatever the precision mode, with the column's offset.
    (
        "datetimeoffset",
        {"type": "string", "name": "io.debezium.time.ZonedTimestamp"},
        "2024-02-29T13:14:15.1234567+07:00",
        datetime(2024, 2, 29, 6, 14, 15, 123456, tzinfo=UTC),
    ),
    # MONEY and SMALLMONEY: decimals of scale 4 (SpecialValueDecimal), like DECIMAL(p, s).
    (
        "money",
        {
            "type": "bytes",
            "name": DECIMAL,
            "parameters": {"scale": "4", "connect.decimal.precision": "19"},
        },
        unscaled(9223372036854775807),
        Decimal("922337203685477.5807"),
    ),
    (
        "smallmoney",
        {
            "type": "bytes",
            "name": DECIMAL,
            "parameters": {"scale": "4", "connect.decimal.precision": "10"},
        },
        unscaled(-2147483648),
        Decimal("-214748.3648"),
    ),
    (
        "decimal_38_10",
        {
            "type": "bytes",
            "name": DECIMAL,
            "parameters": {"scale": "10", "connect.decimal.precision": "38"},
        },
        unscaled(-(10**37) - 1),
        Decimal("-1000000000000000000000000000.0000000001"),
    ),
    # UNIQUEIDENTIFIER is a string, in SQL Server's own (upper case) spelling.
    (
        "uniqueidentifier",
        {"type": "string"},
        "6F9619FF-8B86-D011-B42D-00C04FC964FF",
        "6F9619FF-8B86-D011-B42D-00C04FC964FF",
    ),
    ("bit", {"type": "boolean"}, True, True),
    (
        "nvarchar",
        {"type": "string"},
        "Belanja Daerah — Kab. Ende, NTT ✓ 😀",
        "Belanja Daerah — Kab. Ende, NTT ✓ 😀",
    ),
    ("varbinary", {"type": "bytes"}, b64(b"\x00\xffSIPKD\x80"), b"\x00\xffSIPKD\x80"),
]

# The same columns under Tunggal's defaults for SQL Server: isostring times, string decimals.
ISOSTRING_STRING: list[tuple[str, dict[str, Any], Any, Any]] = [
    (
        "datetime2_7",
        {"type": "string", "name": "io.debezium.time.IsoTimestamp"},
        "2024-02-29T13:14:15.1234567Z",
        datetime(2024, 2, 29, 13, 14, 15, 123456),
    ),
    (
        "smalldatetime",
        {"type": "string", "name": "io.debezium.time.IsoTimestamp"},
        "2024-02-29T13:14:00Z",
        datetime(2024, 2, 29, 13, 14),
    ),
    (
        "date",
        {"type": "string", "name": "io.debezium.time.IsoDate"},
        "2024-02-29Z",
        date(2024, 2, 29),
    ),
    (
        "time_7",
        {"type": "string", "name": "io.debezium.time.IsoTime"},
        "13:14:15.1234567Z",
        time(13, 14, 15, 123456),
    ),
    (
        "datetimeoffset",
        {"type": "string", "name": "io.debezium.time.ZonedTimestamp"},
        "2024-02-29T13:14:15.1234567+07:00",
        datetime(2024, 2, 29, 6, 14, 15, 123456, tzinfo=UTC),
    ),
    # decimal.handling.mode=string: a plain string in the schema; the sink casts it exactly.
    ("money", {"type": "string"}, "922337203685477.5807", "922337203685477.5807"),
    ("decimal_38_10", {"type": "string"}, "-1.0000000001", "-1.0000000001"),
    (
        "uniqueidentifier",
        {"type": "string"},
        "6F9619FF-8B86-D011-B42D-00C04FC964FF",
        "6F9619FF-8B86-D011-B42D-00C04FC964FF",
    ),
    ("bit", {"type": "boolean"}, False, False),
    ("nvarchar", {"type": "string"}, "Pendapatan Asli Daerah 😀", "Pendapatan Asli Daerah 😀"),
    ("varbinary", {"type": "bytes"}, b64(b"\x01\x02"), b"\x01\x02"),
]


def with_schema(columns: list[tuple[str, dict[str, Any], Any, Any]]) -> RawEvent:
    fields = [{**schema, "optional": True, "field": name} for name, schema, _, _ in columns]
    row_schema = {"type": "struct", "fields": fields, "optional": True, "name": "v.Value"}
    schema = {
        "type": "struct",
        "name": "server1.testDB.dbo.customers.Envelope",
        "fields": [
            {**row_schema, "field": "before"},
            {**row_schema, "field": "after"},
            {"type": "struct", "fields": [], "optional": False, "field": "source"},
            {"type": "string", "optional": False, "field": "op"},
        ],
    }
    row = {name: value for name, _, value, _ in columns}
    document = {"before": None, "after": row, "source": SOURCE, "op": "c"}
    value = json.dumps({"schema": schema, "payload": document}, separators=(",", ":"))
    return RawEvent("server1.testDB.dbo.customers", None, value)


@pytest.mark.parametrize(
    ("columns", "modes"),
    [
        (ADAPTIVE_PRECISE, ConnectorModes("sqlserver", "precise", "adaptive")),
        (ISOSTRING_STRING, ConnectorModes("sqlserver", "string", "isostring")),
    ],
    ids=["debezium-defaults", "tunggal-defaults"],
)
def test_values_with_connect_schemas(
    columns: list[tuple[str, dict[str, Any], Any, Any]], modes: ConnectorModes
) -> None:
    event = decode(with_schema(columns), source="sipkd", modes=modes)
    assert event is not None and event.after is not None
    for name, _, _, expected in columns:
        got = event.after[name]
        assert got == expected and type(got) is type(expected), name


# Without schemas only the target column's type (a hint) and the connector's modes tell how to
# read a value: bare JSON under the properties Tunggal renders for kind sqlserver.
SCHEMALESS: list[tuple[str, str, Any, Any]] = [
    (
        "datetime2_7",
        "timestamp",
        "2024-02-29T13:14:15.1234567Z",
        datetime(2024, 2, 29, 13, 14, 15, 123456),
    ),
    (
        "datetime2_7_ms",
        "timestamp(3)",
        "2024-02-29T13:14:15.1234567Z",
        datetime(2024, 2, 29, 13, 14, 15, 123456),
    ),
    (
        "smalldatetime",
        "timestamp without time zone",
        "2024-02-29T13:14:00Z",
        datetime(2024, 2, 29, 13, 14),
    ),
    ("date", "date", "2024-02-29Z", date(2024, 2, 29)),
    ("time_7", "time", "13:14:15.1234567Z", time(13, 14, 15, 123456)),
    (
        "datetimeoffset",
        "timestamptz",
        "2024-02-29T13:14:15.1234567+07:00",
        datetime(2024, 2, 29, 6, 14, 15, 123456, tzinfo=UTC),
    ),
    ("money", "numeric(19,4)", "922337203685477.5807", Decimal("922337203685477.5807")),
    ("smallmoney", "numeric(10,4)", "-214748.3648", Decimal("-214748.3648")),
    ("decimal_38_10", "numeric(38,10)", "-1.0000000001", Decimal("-1.0000000001")),
    (
        "uniqueidentifier",
        "uuid",
        "6F9619FF-8B86-D011-B42D-00C04FC964FF",
        "6F9619FF-8B86-D011-B42D-00C04FC964FF",
    ),
    ("bit", "boolean", True, True),
    ("nvarchar", "text", "Belanja Modal 😀", "Belanja Modal 😀"),
    ("varbinary", "bytea", b64(b"\x00\xff"), b"\x00\xff"),
]


def rendered_modes(**fields: Any) -> ConnectorModes:
    return spec(**fields).modes()


def test_values_without_schemas_under_the_rendered_modes() -> None:
    modes = rendered_modes()
    hints = {name: pg for name, pg, _, _ in SCHEMALESS}
    row = {name: value for name, _, value, _ in SCHEMALESS}
    document = {"before": None, "after": row, "source": SOURCE, "op": "c"}
    raw = RawEvent("server1.testDB.dbo.customers", None, json.dumps(document))
    event = decode(raw, source="sipkd", modes=modes, hints={"dbo.customers": hints}.get)
    assert event is not None and event.after is not None
    for name, _, _, expected in SCHEMALESS:
        got = event.after[name]
        assert got == expected and type(got) is type(expected), name


def test_adaptive_would_be_ambiguous_without_schemas() -> None:
    """Why Tunggal asks for isostring: under adaptive, DATETIME2(7) counts nanoseconds and
    DATETIME milliseconds, both bare ints; a `timestamp` target column cannot tell which."""
    adaptive = ConnectorModes("sqlserver", "string", "adaptive")
    nanos = {"before": None, "after": {"t": 1709212455123456700}, "source": SOURCE, "op": "c"}
    raw = RawEvent("server1.testDB.dbo.customers", None, json.dumps(nanos))
    hints = {"dbo.customers": {"t": "timestamp"}}.get
    with pytest.raises(DecodeError):
        decode(raw, source="sipkd", modes=adaptive, hints=hints)
    assert rendered_modes().time_precision == "isostring"


# -- the connector properties ------------------------------------------------------------------

# The property table of the SQL Server connector docs (v3.6.1.Final), names only.
DOCUMENTED = frozenset(
    [
        "name",
        "connector.class",
        "tasks.max",
        "database.hostname",
        "database.port",
        "driver.authentication",
        "database.user",
        "database.password",
        "database.instance",
        "database.names",
        "topic.prefix",
        "schema.include.list",
        "schema.exclude.list",
        "table.include.list",
        "table.exclude.list",
        "column.include.list",
        "column.exclude.list",
        "skip.messages.without.change",
        "time.precision.mode",
        "decimal.handling.mode",
        "include.schema.changes",
        "tombstones.on.delete",
        "binary.handling.mode",
        "snapshot.mode",
        "snapshot.isolation.mode",
        "poll.interval.ms",
        "max.batch.size",
        "heartbeat.interval.ms",
        "skipped.operations",
        "signal.data.collection",
        "signal.enabled.channels",
        "notification.enabled.channels",
    ]
)
# Documented elsewhere: JDBC pass-through ("Encrypting connections": driver.*), the
# notification sink channel (Debezium's notification docs) and the Kafka Connect converters,
# which are the worker's, not the connector's.
PASS_THROUGH = ("driver.", "key.converter", "value.converter", "converter.")
ALSO_DOCUMENTED = frozenset({"notification.sink.topic.name"})

# Each documented value set, from the same page.
DOCUMENTED_VALUES = {
    # The property table lists adaptive and connect; "Temporal types" adds isostring.
    # adaptive_time_microseconds is the MySQL/PostgreSQL connectors'.
    "time.precision.mode": {"adaptive", "connect", "isostring"},
    "decimal.handling.mode": {"precise", "double", "string"},
    "binary.handling.mode": {"bytes", "base64", "base64-url-safe", "hex"},
    "snapshot.mode": {
        "always",
        "initial",
        "initial_only",
        "schema_only",
        "no_data",
        "recovery",
        "when_needed",
        "when_needed_no_data",
        "configuration_based",
        "custom",
    },
    "skipped.operations": {"none"},
    "tombstones.on.delete": {"true", "false"},
    "include.schema.changes": {"true", "false"},
    "driver.encrypt": {"true", "false"},
    "driver.trustServerCertificate": {"true", "false"},
    "signal.enabled.channels": {"source", "kafka", "file", "jmx"},
    "notification.enabled.channels": {"sink", "log", "jmx"},
}


def spec(**fields: Any) -> ConnectorSpec:
    return ConnectorSpec.model_validate(
        {
            "name": "sipkd",
            "kind": "sqlserver",
            "database": {
                "host": "db.pemda.go.id",
                "port": 1433,
                "dbname": "SIPKD",
                "user": "tunggal",
            },
            **fields,
        }
    )


@pytest.mark.parametrize(
    "fields",
    [{}, {"schemas": False}, {"signal_table": "dbo.tunggal_signal"}, {"snapshot": "no_data"}],
)
def test_every_rendered_property_is_a_documented_sql_server_one(fields: dict[str, Any]) -> None:
    props = spec(**fields).render(["dbo.anggaran", "dbo.realisasi"])
    for key, value in props.items():
        assert key in DOCUMENTED or key in ALSO_DOCUMENTED or key.startswith(PASS_THROUGH), (
            f"{key} is not a SQL Server connector property"
        )
        if key in DOCUMENTED_VALUES:
            assert value in DOCUMENTED_VALUES[key], f"{key}={value}"
    assert props["connector.class"] == "io.debezium.connector.sqlserver.SqlServerConnector"
    assert props["database.names"] == "SIPKD"
    assert props["table.include.list"] == r"dbo\.anggaran,dbo\.realisasi"  # schemaName.tableName
    assert "interval.handling.mode" not in props  # PostgreSQL's
    if "signal_table" in fields:
        # SQL Server wants databaseName.schemaName.tableName here.
        assert props["signal.data.collection"] == "SIPKD.dbo.tunggal_signal"


def test_tls_is_on_and_the_certificate_checked_by_default() -> None:
    props = spec().render([])
    assert props["driver.encrypt"] == "true"
    assert props["driver.trustServerCertificate"] == "false"


def test_the_certificate_is_trusted_only_when_the_file_asks() -> None:
    props = spec(trust_server_certificate=True).render([])
    assert props["driver.encrypt"] == "true"
    assert props["driver.trustServerCertificate"] == "true"


def test_an_override_in_either_spelling_wins() -> None:
    """Debezium gives the driver database.* and driver.* alike, driver.* winning: an admin's
    database.encrypt must not be undone by the default Tunggal renders as driver.encrypt."""
    old = spec(properties={"database.encrypt": "false"}).render([])
    assert old["database.encrypt"] == "false" and "driver.encrypt" not in old
    assert old["driver.trustServerCertificate"] == "false"
    new = spec(properties={"driver.trustServerCertificate": "true"}).render([])
    assert new["driver.trustServerCertificate"] == "true" and new["driver.encrypt"] == "true"


def test_the_embedded_engine_keeps_sql_server_schema_history_in_its_state_dir(
    tmp_path: Path,
) -> None:
    """The SQL Server connector is historized: without a schema history of its own the
    embedded engine would fall back on Debezium's default, a Kafka topic it has not got."""
    from tunggal.sources.embedded import EmbeddedSource

    source = EmbeddedSource("sipkd", spec().render(["dbo.anggaran"]), tmp_path)
    history = source.properties["schema.history.internal"]
    assert history == "io.debezium.storage.file.history.FileSchemaHistory"
    assert source.properties["schema.history.internal.file.filename"] == str(
        tmp_path / "sipkd.schema-history"
    )


def test_trusting_the_certificate_is_refused_for_other_kinds(tmp_path: Path) -> None:
    path = tmp_path / "e_planning.yaml"
    path.write_text(
        "name: e_planning\nkind: postgresql\ndatabase: {host: h, dbname: d, user: u}\n"
        "trust_server_certificate: true\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_connector(path)
    (problem,) = caught.value.problems
    assert problem.location == "trust_server_certificate" and problem.line == 4
    assert "only for kind sqlserver" in problem.message


def test_on_kafka_connect_the_schema_history_is_a_topic_and_tls_stays_on() -> None:
    from tunggal.connect.render import connect_config

    config = connect_config(spec(), ["dbo.anggaran"], kafka_bootstrap=["k1:9092"])
    assert config["schema.history.internal.kafka.bootstrap.servers"] == "k1:9092"
    assert config["schema.history.internal.kafka.topic"] == "tunggal.sipkd.schema-history"
    assert config["driver.encrypt"] == "true"
    assert config["driver.trustServerCertificate"] == "false"
    assert config["time.precision.mode"] == "isostring"
