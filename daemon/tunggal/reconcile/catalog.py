"""Do the sources have what the mappings and connectors name? Read over plain connections.

Run at start-up before any source starts (so before Debezium creates a replication slot or a
publication), before a mapping reload is swapped in, and by `tunggal validate --db`. Without
it a `from:` table that is not in the source is never captured (the daemon runs on, its slot
holding WAL), a source column misspelt in a reload dead-letters every following event, and a
connector `tables:` entry that is not there ends in Java frames that never name it.

Each problem names the mapping or connector file, its line and the fix; all are reported
together. A source that does not answer is an outage, not a mistake in the files: its check is
skipped with one warning, and the daemon retries it as it does any source. A login refused (a
wrong password, an unknown database) is a mistake in the connector file and a problem.

PostgreSQL is read with psycopg and MySQL/MariaDB with PyMySQL. SQL Server is not checked:
Tunggal carries no SQL Server driver (Debezium's JDBC driver lives in the JVM, which is not
started yet), so such a source gets one warning line saying so.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg.conninfo import make_conninfo

from tunggal.connectors import ConnectorSpec
from tunggal.errors import Problem
from tunggal.mapping import MappingSet
from tunggal.mapping.reads import TableRead, source_reads
from tunggal.reconcile.signals import source_conninfo
from tunggal.yamlfile import load_yaml_with_lines

log = logging.getLogger(__name__)

# Seconds to wait for a source to answer: the check runs before streaming starts and, on a
# reload, between two batches; an unreachable source must not hold either for long.
CONNECT_TIMEOUT_S: Final = 5
# How many of a source's table or column names a hint lists.
LISTED: Final = 10


@dataclass(frozen=True)
class Catalog:
    """What one source database holds, as far as the check needs it."""

    where: str  # "database eplan on 127.0.0.1:5432", for messages
    relations: Mapping[str, str]  # schema.table -> "table", "view", ... (every user schema)
    columns: Mapping[str, tuple[str, ...]]  # of the relations asked for, in column order


@dataclass(frozen=True)
class Named:
    """A table named in a file: a mapping's `from:` or a connector's `tables:` entry."""

    table: str
    file: str
    location: str
    line: int | None


class Unavailable(Exception):
    """The source did not answer, or its catalog could not be read: an outage, not a problem
    in the files."""


class LoginRefused(Exception):
    """The source answered and refused the connector's user or database."""


# --- comparing (pure) -------------------------------------------------------------------------


def catalog_problems(
    source: str,
    reads: Sequence[TableRead],
    connector_tables: Sequence[Named],
    catalog: Catalog,
) -> list[Problem]:
    """The tables and columns named for `source` that its catalog does not have."""
    problems: list[Problem] = []
    named = [Named(r.table, r.file, r.location, r.line) for r in reads]
    for entry in [*named, *connector_tables]:
        problem = _table_problem(source, entry, catalog)
        if problem is not None:
            problems.append(problem)
    for read in reads:
        have = catalog.columns.get(read.table)
        if have is None or catalog.relations.get(read.table) != "table":
            continue  # reported above
        for column in read.columns:
            if column.column in have:
                continue
            problems.append(
                Problem(
                    read.file,
                    column.location,
                    f"source column {column.column} is not in {read.table} of source "
                    f"'{source}' ({catalog.where})",
                    column.line,
                    _column_hint(column.column, have),
                )
            )
    return problems


def _table_problem(source: str, entry: Named, catalog: Catalog) -> Problem | None:
    kind = catalog.relations.get(entry.table)
    if kind == "table":
        return None
    where = f"source '{source}' ({catalog.where})"
    if kind is not None:
        message = f"source table {entry.table} is a {kind} in {where}"
        hint = "Debezium captures tables only: map the table(s) it reads from"
    else:
        message = f"source table {entry.table} does not exist in {where}"
        hint = _table_hint(entry.table, catalog)
    return Problem(entry.file, entry.location, message, entry.line, hint)


def _table_hint(table: str, catalog: Catalog) -> str:
    tables = sorted(name for name, kind in catalog.relations.items() if kind == "table")
    if not tables:
        return "it has no tables the connector's user can see"
    schema = table.partition(".")[0]
    guess = _closest(table, tables)
    same = [t for t in tables if t.partition(".")[0] == schema]
    if same:
        listing = f"tables there: {_listing(same)}"
    else:
        schemas = sorted({t.partition(".")[0] for t in tables})
        listing = f"it has no schema {schema} with tables; schemas: {_listing(schemas)}"
    return f"did you mean {guess}? {listing}" if guess else listing


def _column_hint(column: str, have: Sequence[str]) -> str:
    guess = _closest(column, have)
    if guess:
        return f"did you mean `{guess}`?"
    return f"its columns: {_listing(have)}"


def _closest(word: str, candidates: Sequence[str]) -> str | None:
    # A difference of case first: `Nama` for `nama` is the likeliest typo and the hardest to see.
    folded = [c for c in candidates if c.lower() == word.lower()]
    if folded:
        return folded[0]
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if close:
        return close[0]
    # A name with something added or cut off (`val_typo` for `val`, `nama` for `nama_opd`).
    stems = [c for c in candidates if len(c) >= 3 and (word.startswith(c) or c.startswith(word))]
    return max(stems, key=len) if stems else None


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:LISTED])
    more = len(names) - LISTED
    return f"{shown} (and {more} more)" if more > 0 else shown


# --- reading catalogs -------------------------------------------------------------------------

_PG_KINDS: Final = {
    "r": "table",
    "p": "table",  # partitioned: Debezium reads its partitions' changes
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
}
_PG_RELATIONS: Final = """
SELECT n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
"""
_PG_COLUMNS: Final = """
SELECT n.nspname || '.' || c.relname, a.attname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped AND n.nspname || '.' || c.relname = ANY(%s)
ORDER BY 1, a.attnum
"""
# SQLSTATE class 28 (invalid authorization) and 3D000 (no such database), which libpq often
# reports without a SQLSTATE: the connector file is wrong, not the network.
_PG_REFUSED: Final = (
    "authentication failed",  # password, or peer/ident/... as the server's pg_hba.conf says
    "no pg_hba.conf entry",
    "does not exist",  # the role or the database
)


def _where(spec: ConnectorSpec) -> str:
    return f"database {spec.database.dbname} on {spec.database.host}:{spec.port}"


def read_postgres(spec: ConnectorSpec, tables: Iterable[str]) -> Catalog:
    conninfo = make_conninfo(
        source_conninfo(spec, "tunggal-check"), connect_timeout=str(CONNECT_TIMEOUT_S)
    )
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        text = _first_line(exc)
        state = exc.sqlstate or ""
        if state.startswith("28") or state == "3D000" or any(s in text for s in _PG_REFUSED):
            raise LoginRefused(text) from None
        raise Unavailable(text) from None
    columns: dict[str, list[str]] = {}
    try:
        with conn:
            relations = {
                f"{schema}.{name}": _PG_KINDS[kind]
                for schema, name, kind in conn.execute(_PG_RELATIONS)
            }
            for table, column in conn.execute(_PG_COLUMNS, (sorted(set(tables)),)):
                columns.setdefault(table, []).append(column)
    except psycopg.Error as exc:  # the connection lost, a statement timeout
        raise Unavailable(_first_line(exc)) from None
    return Catalog(_where(spec), relations, {t: tuple(c) for t, c in columns.items()})


_MYSQL_KINDS: Final = {
    "BASE TABLE": "table",
    "SYSTEM VERSIONED": "table",  # MariaDB's tables WITH SYSTEM VERSIONING
    "VIEW": "view",
    "SEQUENCE": "sequence",
}
_MYSQL_SYSTEM: Final = ("mysql", "information_schema", "performance_schema", "sys")
# Access denied for the user (1045) or to the database (1044), unknown database (1049).
_MYSQL_REFUSED: Final = (1044, 1045, 1049)


def read_mysql(spec: ConnectorSpec, tables: Iterable[str]) -> Catalog:
    """A MySQL or MariaDB source: its databases are the schemas of `database.table` names."""
    import pymysql

    db = spec.database
    try:
        conn = pymysql.connect(
            host=db.host,
            port=spec.port,
            user=db.user,
            password=db.password,
            database=db.dbname,
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=60,
            charset="utf8mb4",
        )
    except pymysql.err.MySQLError as exc:
        code = exc.args[0] if exc.args else None
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        if code in _MYSQL_REFUSED:
            raise LoginRefused(text) from None
        raise Unavailable(text) from None
    try:
        return _read_mysql(conn, spec, sorted(set(tables)))
    except pymysql.err.MySQLError as exc:
        raise Unavailable(_first_line(exc)) from None


def _read_mysql(conn: Any, spec: ConnectorSpec, wanted: list[str]) -> Catalog:
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA NOT IN %s",
            (_MYSQL_SYSTEM,),
        )
        relations = {
            f"{schema}.{name}": _MYSQL_KINDS.get(kind, kind.lower())
            for schema, name, kind in cur.fetchall()
        }
        columns: dict[str, list[str]] = {}
        if wanted:  # `IN ()` is not SQL
            cur.execute(
                "SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME), COLUMN_NAME "
                "FROM information_schema.COLUMNS "
                "WHERE CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) IN %s "
                "ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
                (tuple(wanted),),
            )
            for table, column in cur.fetchall():
                columns.setdefault(table, []).append(column)
    return Catalog(_where(spec), relations, {t: tuple(c) for t, c in columns.items()})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    # libpq: 'connection failed: connection to server at "h", port 5432 failed: FATAL:  database
    # "x" does not exist': the server's own words are the part that says what to fix.
    return text.splitlines()[0].rpartition("FATAL:")[2].strip()


def read_catalog(spec: ConnectorSpec, tables: Iterable[str]) -> Catalog | None:
    """The source's catalog; None for a kind Tunggal cannot read (SQL Server).

    Raises Unavailable or LoginRefused."""
    if spec.kind == "postgresql":
        return read_postgres(spec, tables)
    if spec.kind in ("mysql", "mariadb"):
        return read_mysql(spec, tables)
    return None


# --- the check --------------------------------------------------------------------------------


def _lines(file: str) -> Mapping[str, int]:
    """The connector file's line of each key, for messages."""
    try:
        return load_yaml_with_lines(Path(file))[1]
    except Exception:  # it loaded a moment ago; lines are a nicety, not worth failing over
        return {}


def connector_tables(spec: ConnectorSpec, file: str, lines: Mapping[str, int]) -> list[Named]:
    """The connector file's `tables:` entries, each with its line."""
    return [
        Named(table, file, f"tables[{i}]", lines.get(f"tables[{i}]"))
        for i, table in enumerate(spec.tables)
    ]


def check_sources(
    mappings: MappingSet,
    sources: Mapping[str, tuple[ConnectorSpec, str]],
) -> list[Problem]:
    """Every table and column the mappings read, and every connector `tables:` entry, that a
    source does not have. `sources`: source name -> (its connector, the connector's file).

    A source that does not answer, or of a kind that cannot be read here, is logged once and
    not checked.
    """
    reads = source_reads(mappings)
    problems: list[Problem] = []
    for name, (spec, file) in sources.items():
        mine = [r for r in reads if r.source == name]
        lines = _lines(file)
        named = connector_tables(spec, file, lines)
        if not mine and not named:
            continue
        try:
            catalog = read_catalog(spec, [*(r.table for r in mine), *(n.table for n in named)])
        except LoginRefused as exc:
            problems.append(
                Problem(
                    file,
                    "database",
                    f"cannot log in to source '{name}' ({_where(spec)}) as "
                    f"{spec.database.user}: {exc}",
                    lines.get("database"),
                    "check database.user, database.password and database.dbname",
                )
            )
            continue
        except Unavailable as exc:
            log.warning(
                "source %s (%s) does not answer (%s): its tables and columns are not checked "
                "now; it is retried as usual",
                name,
                _where(spec),
                exc,
            )
            continue
        if catalog is None:
            log.warning(
                "source %s is %s: its tables and columns are not checked at start-up or reload "
                "(Tunggal has no driver for it outside Debezium); a missing one shows in the "
                "Debezium log",
                name,
                spec.kind,
            )
            continue
        problems.extend(catalog_problems(name, mine, named, catalog))
    return problems
