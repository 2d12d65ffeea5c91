"""The one line for each PostgreSQL start-up failure, from Debezium's real messages (the
innermost cause, as embedded._root_cause gives it; captured from Debezium 3.6 and pgjdbc
42.7 against PostgreSQL 15)."""

from __future__ import annotations

import pytest

from tunggal.sources.hints import captured_tables, explain_failure

PROPS = {
    "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
    "database.hostname": "10.1.2.3",
    "database.port": "5433",
    "database.user": "tunggal",
    "database.dbname": "simda",
    "table.include.list": r"public\.kv,keuangan\.anggaran",
}
FILE = "connectors/simda.yaml"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "DebeziumException: Connector configuration is not valid. Error while validating "
            "connector config: Connection to 10.1.2.3:5433 refused. Check that the hostname "
            "and port are correct and that the postmaster is accepting TCP/IP connections.",
            ["cannot reach PostgreSQL at 10.1.2.3:5433", "connection refused", FILE],
        ),
        (
            "DebeziumException: Connector configuration is not valid. Error while validating "
            'connector config: FATAL: password authentication failed for user "tunggal"',
            ["refused the password of user tunggal", "database.password", FILE],
        ),
        (
            'PSQLException: FATAL: database "simda" does not exist',
            ["has no database simda", "database.dbname"],
        ),
        (
            'PSQLException: FATAL: role "tunggal" does not exist',
            ["has no user tunggal", "database.user"],
        ),
        (
            "PSQLException: FATAL: must be superuser or replication role to start walsender",
            ["ALTER ROLE tunggal REPLICATION", "10.1.2.3:5433"],
        ),
        (
            "PSQLException: ERROR: logical decoding requires wal_level >= logical",
            ["wal_level = logical", "restart the server"],
        ),
        (
            "DebeziumException: No table filters found for filtered publication tunggal_s_pub",
            ["public.kv, keuangan.anggaran", "simda", "tunggal_s_pub"],
        ),
        (
            'PSQLException: ERROR: replication slot "tunggal_s" is active for PID 4242',
            ["tunggal_s", "in use", "4242", "slot.name"],
        ),
        (
            "PSQLException: FATAL: no pg_hba.conf entry for replication connection from host "
            '"10.9.9.9", user "tunggal", no encryption',
            ["pg_hba.conf", "tunggal"],
        ),
        (
            "UnknownHostException: db.simda.local",
            ["cannot reach PostgreSQL at 10.1.2.3:5433", "db.simda.local"],
        ),
    ],
)
def test_each_failure_is_one_line_that_says_what_to_do(message: str, expected: list[str]) -> None:
    line = explain_failure(PROPS, message, FILE)
    assert line is not None
    assert "\n" not in line and "Exception" not in line, line
    for part in expected:
        assert part in line, line


def test_an_unknown_failure_keeps_debeziums_words() -> None:
    assert explain_failure(PROPS, "DebeziumException: something new") is None


def test_captured_tables_unescape_the_include_list() -> None:
    assert captured_tables(PROPS) == ["public.kv", "keuangan.anggaran"]
    assert captured_tables({}) == []
