"""Asking a source to be read again: a Debezium incremental snapshot through its signal table.

Debezium reads the tables in chunks while streaming goes on (`events.decode` places the rows).
Tunggal records each request in the target first, with a watermark: the source's log position
read just before the signal is written, in the same transaction. Every change committed after
the signal sorts after it (a PostgreSQL position's epoch is the end of the previous commit,
which is at least the signal's), and a row not changed since before it sorts before it. So when
a table's scan completes, the source's rows of that table still below the watermark were
neither read again nor changed: they are gone from the source, and are removed as the delete
policy says (`runtime.pipeline`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tunggal.connectors import ConnectorSpec
from tunggal.errors import ConfigError, FatalError, Problem, TransientError
from tunggal.events.decode import EPOCH_SHIFT

SIGNAL_TABLE_DDL = (
    "CREATE TABLE {table} (id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL, "
    "data varchar(2048))"
)


@dataclass(frozen=True)
class SnapshotRequest:
    id: str
    source: str
    tables: tuple[str, ...]
    position: int  # the watermark (see the module docstring)
    conditions: Mapping[str, str] = field(default_factory=dict)  # table -> SQL filter


def no_signal_table(spec: ConnectorSpec, where: str) -> ConfigError:
    """The error for a source without a signal table, with the statement that creates one."""
    table = "public.tunggal_signal"
    return ConfigError(
        [
            Problem(
                where,
                "signal_table",
                f"source {spec.name} has no signal table, which incremental snapshots need",
                hint=f"on the source run {SIGNAL_TABLE_DDL.format(table=table)}; grant the "
                f"connector's user INSERT on it; then add `signal_table: {table}` to its "
                "connector file",
            )
        ]
    )


def source_conninfo(spec: ConnectorSpec, application: str = "tunggal", **extra: str) -> str:
    """How to reach the connector's own database, as Tunggal's tool named `application`."""
    db = spec.database
    return make_conninfo(
        "",
        host=db.host,
        port=str(spec.port),
        dbname=db.dbname,
        user=db.user,
        password=db.password,
        connect_timeout=10,
        application_name=application,
        **extra,
    )


def request_snapshot(
    spec: ConnectorSpec,
    target_dsn: str,
    tables: Sequence[str],
    *,
    reason: str,
    conditions: Mapping[str, str] | None = None,
    where: str = "",
) -> SnapshotRequest:
    """Record the request in the target, then write Debezium's `execute-snapshot` signal.

    `conditions`: per table, an SQL condition limiting the rows read (`verify --repair`).
    Raises ConfigError without a signal table, TransientError when a database is down.
    """
    if not spec.signal_table:
        raise no_signal_table(spec, where or f"connector {spec.name}")
    if spec.kind != "postgresql":
        raise FatalError(
            f"source {spec.name}: incremental snapshots are supported for PostgreSQL sources; "
            f"{spec.kind} is not yet"
        )
    request_id = f"tunggal-{uuid.uuid4().hex[:20]}"
    data: dict[str, Any] = {
        "type": "incremental",
        # Names are regular expressions, matched against schema.table.
        "data-collections": [t.replace(".", r"\.") for t in tables],
    }
    if conditions:
        data["additional-conditions"] = [
            {"data-collection": t.replace(".", r"\."), "filter": f} for t, f in conditions.items()
        ]
    schema, _, name = spec.signal_table.partition(".")
    try:
        with psycopg.connect(source_conninfo(spec, "tunggal-signal")) as src:
            exists = src.execute("SELECT to_regclass(%s) IS NOT NULL", (spec.signal_table,))
            row = exists.fetchone()
            if row is None or not row[0]:
                raise ConfigError(
                    [
                        Problem(
                            where or f"connector {spec.name}",
                            "signal_table",
                            f"signal table {spec.signal_table} does not exist on source "
                            f"{spec.name}",
                            hint="create it there: "
                            + SIGNAL_TABLE_DDL.format(table=spec.signal_table),
                        )
                    ]
                )
            _check_tables(src, spec, tables, where or f"connector {spec.name}")
            lsn = src.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
            assert lsn is not None
            request = SnapshotRequest(
                request_id,
                spec.name,
                tuple(tables),
                int(lsn[0]) << EPOCH_SHIFT,
                dict(conditions or {}),
            )
            _record(target_dsn, request, reason)
            # The watermark was read in this transaction, before the signal it precedes.
            src.execute(
                sql.SQL(
                    "INSERT INTO {} (id, type, data) VALUES (%s, 'execute-snapshot', %s)"
                ).format(sql.Identifier(schema, name)),
                (request_id, orjson.dumps(data).decode()),
            )
    except psycopg.OperationalError as exc:
        raise TransientError(f"source {spec.name}: {str(exc).strip().splitlines()[0]}") from exc
    except psycopg.Error as exc:
        raise FatalError(f"source {spec.name}: {str(exc).strip().splitlines()[0]}") from exc
    return request


def _check_tables(
    src: psycopg.Connection[Any], spec: ConnectorSpec, tables: Sequence[str], where: str
) -> None:
    """Every table exists on the source and has a primary key (Debezium reads an incremental
    snapshot in key order; without one it skips the table)."""
    problems = []
    for table in tables:
        row = src.execute(
            "SELECT c.oid IS NOT NULL, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
            "AND i.indisprimary) FROM (SELECT to_regclass(%s) AS oid) AS c",
            (table,),
        ).fetchone()
        if row is None or not row[0]:
            problems.append(
                Problem(where, "tables", f"table {table} does not exist on source {spec.name}")
            )
        elif not row[1]:
            problems.append(
                Problem(
                    where,
                    "tables",
                    f"table {table} of source {spec.name} has no primary key",
                    hint="an incremental snapshot reads a table in primary key order: add one",
                )
            )
    if problems:
        raise ConfigError(problems)


def _record(target_dsn: str, request: SnapshotRequest, reason: str) -> None:
    conninfo = target_dsn.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            conn.execute(
                "INSERT INTO public.tunggal_snapshot_requests (id, source, tables, position, "
                "conditions, reason) VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    request.id,
                    request.source,
                    list(request.tables),
                    request.position,
                    orjson.dumps(request.conditions).decode() if request.conditions else None,
                    reason,
                ),
            )
    except psycopg.errors.UndefinedTable as exc:
        raise FatalError(
            "the target has no table public.tunggal_snapshot_requests: run "
            "`tunggal schema --apply --config <tunggal.yaml>`"
        ) from exc


def scan_watermark(
    target_dsn: str, request_id: str, source: str, table: str
) -> tuple[int, bool] | None:
    """What a table's scan ending under `request_id` lets us conclude: the watermark to clean
    below, and whether only some rows were read; None for a snapshot Tunggal did not ask for.

    Debezium folds a request that arrives while a snapshot runs into the running one and
    reports its tables under the first request's id, so every pending request of the source
    that names the table counts: the oldest watermark (cleaning below it removes the least),
    and partial if any of them limited the rows (`verify --repair`).
    """
    conninfo = target_dsn.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT min(position), coalesce(bool_or(conditions ? %(table)s), false) "
                "FROM public.tunggal_snapshot_requests WHERE source = %(source)s "
                "AND (id = %(id)s OR (state IN ('requested', 'running') "
                "AND %(table)s = ANY(tables)))",
                {"id": request_id, "source": source, "table": table},
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    except psycopg.OperationalError as exc:
        raise TransientError(f"target database: {exc}") from exc
    if row is None or row[0] is None:
        return None
    return int(row[0]), bool(row[1])
