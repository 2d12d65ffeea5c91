"""The MySQL family (`kind: mysql`, `kind: mariadb`): connector properties, server ids, plain
table names escaped into Debezium's include list, MariaDB events, and start-up hints."""

from __future__ import annotations

import re
import textwrap
from itertools import permutations
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_decode_types import MYSQL_SOURCE, decode_with
from tunggal.config import load_config
from tunggal.connect.render import connect_config
from tunggal.connectors import ConnectorSpec, load_connector, server_id_clashes
from tunggal.errors import ConfigError
from tunggal.events.decode import describe_position
from tunggal.mapping import load_mappings
from tunggal.sources.embedded import classpath_entries
from tunggal.sources.hints import explain_failure, missing_connector

MARIADB_CLASS = "io.debezium.connector.mariadb.MariaDbConnector"


def spec(**changes: Any) -> ConnectorSpec:
    return ConnectorSpec.model_validate(
        {
            "name": "e_kontrak",
            "kind": "mariadb",
            "database": {"host": "h", "port": 3306, "dbname": "kontrak", "user": "u"},
            **changes,
        }
    )


def test_mariadb_renders_its_connector_with_the_binlog_defaults() -> None:
    props = spec().render(["kontrak.kontrak", "kontrak.vendor"])
    assert props["connector.class"] == MARIADB_CLASS
    assert props["database.include.list"] == "kontrak"
    assert props["table.include.list"] == r"kontrak\.kontrak,kontrak\.vendor"
    assert props["bigint.unsigned.handling.mode"] == "precise"
    assert props["database.server.id"] == str(spec().replica_server_id)
    assert spec().modes().connector == "mariadb"
    mysql = spec(kind="mysql").render([])
    assert mysql["connector.class"] == "io.debezium.connector.mysql.MySqlConnector"
    assert mysql["database.port"] == "3306"


def test_the_port_defaults_to_the_kinds_own() -> None:
    unset = {"host": "h", "dbname": "kontrak", "user": "u"}
    assert spec(database=unset).render([])["database.port"] == "3306"
    assert spec(kind="mysql", database=unset).render([])["database.port"] == "3306"
    assert spec(kind="postgresql", database=unset).render([])["database.port"] == "5432"
    assert spec(database={**unset, "port": 3307}).render([])["database.port"] == "3307"


def test_mariadb_on_kafka_connect_keeps_schema_history_in_kafka() -> None:
    config = connect_config(spec(), ["kontrak.kontrak"], kafka_bootstrap=["k1:9092"])
    assert config["connector.class"] == MARIADB_CLASS
    assert config["schema.history.internal.kafka.bootstrap.servers"] == "k1:9092"
    assert config["schema.history.internal.kafka.topic"] == "tunggal.e_kontrak.schema-history"


# -- server ids --------------------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,40}", fullmatch=True)


@given(NAMES)
def test_server_id_is_stable_and_in_range(name: str) -> None:
    first = spec(name=name).replica_server_id
    assert first == spec(name=name, kind="mysql").replica_server_id
    assert 5400 <= first < 2**31
    assert spec(name=name).render([])["database.server.id"] == str(first)


def test_anagram_names_get_different_server_ids() -> None:
    # The old default (5400 + the sum of the characters) gave all of these one id.
    names = ["".join(p) for p in permutations("opd_ab")]
    ids = {spec(name=n).replica_server_id for n in names if re.fullmatch("[a-z].*", n)}
    assert len(ids) == len([n for n in names if re.fullmatch("[a-z].*", n)])


def test_server_id_can_be_set_and_is_checked() -> None:
    assert spec(server_id=184054).render([])["database.server.id"] == "184054"
    with pytest.raises(ValueError, match="server_id"):
        spec(server_id=0)


def test_two_sources_with_one_server_id_on_one_server_are_refused() -> None:
    a, b = spec(name="sipd_a", server_id=7000), spec(name="sipd_b", server_id=7000)
    elsewhere = spec(
        name="sipd_c",
        server_id=7000,
        database={"host": "other", "port": 3306, "dbname": "d", "user": "u"},
    )
    pg = ConnectorSpec.model_validate(
        {"name": "pg", "database": {"host": "h", "dbname": "d", "user": "u"}}
    )
    (problem,) = server_id_clashes(
        {
            "sipd_a": (a, "a.yaml"),
            "sipd_b": (b, "b.yaml"),
            "sipd_c": (elsewhere, "c.yaml"),
            "pg": (pg, "pg.yaml"),
        }
    )
    assert str(problem).startswith(
        "b.yaml: server_id: server id 7000 is also used by source sipd_a"
    )
    # Defaults differ per name, so sources that set nothing never clash.
    assert server_id_clashes({"x": (spec(name="x"), "x"), "y": (spec(name="y"), "y")}) == []


# -- plain table names -------------------------------------------------------------------------

PART = st.from_regex(r"[A-Za-z0-9_$-]+", fullmatch=True)


@given(PART, PART)
def test_a_plain_name_matches_itself_and_nothing_else(schema: str, table: str) -> None:
    """The rendered include list read as Debezium reads it (comma-separated regular expressions,
    each matched against the whole name) selects exactly the named table."""
    listed = spec(tables=[f"{schema}.{table}"]).render([])["table.include.list"]
    (pattern,) = listed.split(",")
    assert re.fullmatch(pattern, f"{schema}.{table}")
    assert not re.fullmatch(pattern, f"{schema}x{table}")
    assert not re.fullmatch(pattern, f"{schema}.{table}.x")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    "source",
    ["'a.b,c.d|public.*'", "public.*", "'public.kv,public.opd'", "public.k.v", "'public.k v'"],
)
def test_from_must_be_a_plain_table_name(tmp_path: Path, source: str) -> None:
    mapping = write(
        tmp_path,
        "m.yaml",
        f"""\
        source: sipd
        tables:
          - from: {source}
            to: kv
            key: [id]
            columns: {{id: id}}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_mappings([mapping])
    (problem,) = info.value.problems
    text = str(problem)
    assert str(mapping) in text and "tables[0].from" in text, text
    assert "not a plain table name" in text, text


def test_connector_tables_must_be_plain_table_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yaml",
        """\
        name: sipd
        kind: mysql
        database: {host: h, dbname: d, user: u}
        tables: [d.ok, 'd.a|d.b']
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_connector(path)
    (problem,) = info.value.problems
    assert str(path) in str(problem) and "tables[1]" in str(problem), str(problem)


# -- MariaDB events ----------------------------------------------------------------------------

MARIADB_SOURCE = {**MYSQL_SOURCE, "connector": "mariadb", "gtid": "0-1-42", "file": "binlog.000007"}


def test_mariadb_events_decode_as_mysql_ones() -> None:
    event = decode_with(MARIADB_SOURCE, "mariadb")
    assert event.table == "inventory.customers"
    assert event.txid == "0-1-42"
    assert event.position == ((7 * 2**32 + 154) * 2**16) + 2
    mysql = decode_with({**MARIADB_SOURCE, "connector": "mysql"}, "mysql")
    assert (mysql.table, mysql.position, mysql.txid) == (event.table, event.position, event.txid)


def test_mariadb_positions_read_as_binlog_coordinates() -> None:
    event = decode_with(MARIADB_SOURCE, "mariadb")
    assert describe_position("mariadb", event.position) == "binlog .000007 pos 154 row 2"


def test_a_mariadb_event_on_a_mysql_source_is_refused() -> None:
    with pytest.raises(Exception, match="mariadb"):
        decode_with(MARIADB_SOURCE, "mysql")


# -- start-up: hints and the classpath ---------------------------------------------------------


def test_mysql_connector_on_mariadb_says_use_kind_mariadb() -> None:
    message = (
        "DebeziumException: Connector configuration is not valid. Error during connection "
        "validation: io.debezium.DebeziumException: MySQL version 10.11.19-MariaDB-0+deb12u1-log"
        " should support SHOW BINARY LOG STATUS but it failed."
    )
    props = spec(kind="mysql").render([])
    line = explain_failure(props, message, "connectors/sipd.yaml")
    assert line is not None
    assert "10.11.19-MariaDB-0+deb12u1-log" in line
    assert "`kind: mariadb` in connectors/sipd.yaml" in line
    assert explain_failure(spec().render([]), message) is None  # already the MariaDB connector
    assert explain_failure(props, "Access denied for user 'u'") is None


def test_missing_mariadb_connector_names_the_jars() -> None:
    line = missing_connector(MARIADB_CLASS, "connectors/sipd.yaml")
    assert "debezium-connector-mariadb" in line and "mariadb-java-client" in line
    assert "java.classpath" in line and "connectors/sipd.yaml" in line
    assert "\n" not in line


def test_classpath_directories_stand_for_their_jars(tmp_path: Path) -> None:
    (tmp_path / "jars").mkdir()
    for jar in ("b.jar", "a.jar", "notes.txt"):
        (tmp_path / "jars" / jar).write_text("")
    single = tmp_path / "one.jar"
    single.write_text("")
    assert classpath_entries([tmp_path / "jars", single]) == [
        str(tmp_path / "jars" / "a.jar"),
        str(tmp_path / "jars" / "b.jar"),
        str(tmp_path / "jars"),
        str(single),
    ]


def test_a_missing_classpath_entry_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "here.jar").write_text("")
    config = write(
        tmp_path,
        "tunggal.yaml",
        """\
        target: {dsn: postgresql://localhost/t}
        mappings: [m.yaml]
        sources: []
        java:
          classpath: [here.jar, jars/mariadb]
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    (problem,) = info.value.problems
    assert "java.classpath[1]" in str(problem) and str(tmp_path / "jars" / "mariadb") in str(
        problem
    )
    config.write_text(config.read_text().replace(", jars/mariadb", ""))
    assert load_config(config).java.classpath == ("here.jar",)
