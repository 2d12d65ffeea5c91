"""Target schema: introspection, bookkeeping columns and Tunggal's own tables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from psycopg import sql

from tunggal.mapping import BOOKKEEPING_COLUMNS as BOOKKEEPING
from tunggal.mapping import TableInfo, TargetSpec
from tunggal.mapping.dbinfo import (
    CONTRIBUTION_BOOKKEEPING,
    CONTRIBUTIONS_SCHEMA,
    contributions_table,
)

# Tunggal's own tables live in the target's public schema, beside the data they guard.
OWN_TABLES_DDL = [
    """CREATE TABLE IF NOT EXISTS public.tunggal_tombstones (
        target_table text NOT NULL,
        key_json text NOT NULL,
        source text NOT NULL,
        position numeric NOT NULL,
        ts bigint NOT NULL,
        PRIMARY KEY (target_table, key_json))""",
    """CREATE TABLE IF NOT EXISTS public.tunggal_truncations (
        target_table text NOT NULL,
        source text NOT NULL,
        position numeric NOT NULL,
        ts bigint NOT NULL,
        PRIMARY KEY (target_table, source))""",
    """CREATE TABLE IF NOT EXISTS public.tunggal_progress (
        source text PRIMARY KEY,
        position numeric NOT NULL,
        commit_ts bigint NOT NULL,
        events_applied bigint NOT NULL DEFAULT 0,
        snapshot_epoch numeric,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    # Added after the first release; targets set up before it get the column here.
    "ALTER TABLE public.tunggal_progress ADD COLUMN IF NOT EXISTS snapshot_epoch numeric",
    # Kafka sources: where each partition resumes, written in the same transaction as the rows.
    """CREATE TABLE IF NOT EXISTS public.tunggal_kafka_offsets (
        consumer_group text NOT NULL,
        topic text NOT NULL,
        partition integer NOT NULL,
        next_offset bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        topic_id text,
        PRIMARY KEY (consumer_group, topic, partition))""",
    # Added after the first release: the id (KIP-516) of the topic next_offset is an offset
    # of, so that a topic deleted and re-created under the same name is told apart exactly.
    # NULL when the client or broker gives none, or after `tunggal kafka offsets reset`.
    "ALTER TABLE public.tunggal_kafka_offsets ADD COLUMN IF NOT EXISTS topic_id text",
    """CREATE TABLE IF NOT EXISTS public.tunggal_dead_letters (
        id bigserial PRIMARY KEY,
        source text NOT NULL,
        source_table text,
        destination text,
        position numeric,
        raw_key text,
        raw_value text,
        error_class text NOT NULL,
        error text NOT NULL,
        mapping_hash text,
        first_failed_at timestamptz NOT NULL DEFAULT now(),
        created_at timestamptz NOT NULL DEFAULT now(),
        attempts integer NOT NULL DEFAULT 1,
        last_failed_at timestamptz NOT NULL DEFAULT now())""",
    # Added after the first release, like snapshot_epoch above.
    "ALTER TABLE public.tunggal_dead_letters ADD COLUMN IF NOT EXISTS "
    "attempts integer NOT NULL DEFAULT 1",
    "ALTER TABLE public.tunggal_dead_letters ADD COLUMN IF NOT EXISTS "
    "last_failed_at timestamptz NOT NULL DEFAULT now()",
    # Incremental snapshots Tunggal asked a source for (`tunggal resync`, a table added to the
    # mappings, `verify --repair`): when each table's scan completes, that source's rows of it
    # older than `position` that the scan did not read again are gone from the source.
    """CREATE TABLE IF NOT EXISTS public.tunggal_snapshot_requests (
        id text PRIMARY KEY,
        source text NOT NULL,
        tables text[] NOT NULL,
        position numeric NOT NULL,
        conditions jsonb,
        reason text NOT NULL,
        state text NOT NULL DEFAULT 'requested',
        tables_done text[] NOT NULL DEFAULT '{}',
        rows_read bigint NOT NULL DEFAULT 0,
        requested_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz)""",
    # Tables written by several sources: the rules their rows were last computed with
    # (`sink.merge`); a change recomputes the table from its contributions.
    """CREATE TABLE IF NOT EXISTS public.tunggal_merge_state (
        target_table text PRIMARY KEY,
        signature text NOT NULL,
        rules jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now())""",
    # `tunggal verify`: one row per source and target table per run; the daemon exports the
    # newest as tunggal_verify_* gauges (`reconcile.runs`).
    """CREATE TABLE IF NOT EXISTS public.tunggal_verify_runs (
        id bigserial PRIMARY KEY,
        source text NOT NULL,
        source_tables text[] NOT NULL,
        target_table text NOT NULL,
        mode text NOT NULL,
        started_at timestamptz NOT NULL,
        finished_at timestamptz NOT NULL,
        seconds float8 NOT NULL,
        position numeric NOT NULL,
        source_rows bigint NOT NULL,
        target_rows bigint NOT NULL,
        missing bigint NOT NULL,
        extra bigint NOT NULL,
        differing bigint NOT NULL,
        unsettled bigint NOT NULL,
        unmappable bigint NOT NULL,
        repaired bigint NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS tunggal_verify_runs_latest "
    "ON public.tunggal_verify_runs (source, target_table, finished_at DESC)",
]
OWN_TABLES = (
    "tunggal_tombstones",
    "tunggal_truncations",
    "tunggal_progress",
    "tunggal_kafka_offsets",
    "tunggal_dead_letters",
    "tunggal_merge_state",
    "tunggal_snapshot_requests",
    "tunggal_verify_runs",
)
# Added after the first release: a target set up before runs on without them until a feature
# needs them (several sources on one table; an incremental snapshot), which then says so.
OPTIONAL_OWN_TABLES = frozenset(
    {"tunggal_merge_state", "tunggal_snapshot_requests", "tunggal_verify_runs"}
)

_INTROSPECT = sa.text("""
SELECT n.nspname || '.' || c.relname AS table_name,
       a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS column_type
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, a.attnum
""")

_UNIQUE_KEYS = sa.text("""
SELECT n.nspname || '.' || c.relname AS table_name,
       array_agg(a.attname ORDER BY k.ord) AS columns
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
GROUP BY n.nspname, c.relname, i.indexrelid
""")


def introspect(engine: sa.Engine) -> dict[str, TableInfo]:
    """Every user table of the target: columns with their PostgreSQL types, and unique keys."""
    columns: dict[str, dict[str, str]] = {}
    keys: dict[str, list[tuple[str, ...]]] = {}
    with engine.connect() as conn:
        for table, column, ctype in conn.execute(_INTROSPECT):
            columns.setdefault(table, {})[column] = ctype
        for table, cols in conn.execute(_UNIQUE_KEYS):
            keys.setdefault(table, []).append(tuple(cols))
    return {
        name: TableInfo(name=name, columns=cols, unique_keys=tuple(keys.get(name, ())))
        for name, cols in columns.items()
    }


@dataclass(frozen=True)
class SchemaPlan:
    """DDL that makes the target ready for the mappings, and what cannot be done automatically."""

    statements: tuple[str, ...]
    unresolved: tuple[str, ...]


def _ident(qualified: str) -> sql.Composable:
    schema, _, table = qualified.partition(".")
    return sql.Identifier(schema, table)


def plan_schema(
    targets: Mapping[str, TargetSpec], tables: Mapping[str, TableInfo], as_string: bool = True
) -> SchemaPlan:
    statements: list[sql.Composable] = [sql.SQL(ddl) for ddl in OWN_TABLES_DDL]
    unresolved: list[str] = []
    for name, spec in sorted(targets.items()):
        info = tables.get(name)
        if info is None:
            untyped = [c for c, t in spec.columns.items() if not t]
            if untyped:
                unresolved.append(
                    f"table {name} does not exist and columns {', '.join(untyped)} have no "
                    f"`type:` in the mapping; add types or create the table yourself"
                )
                continue
            schema = name.partition(".")[0]
            if schema != "public":
                statements.append(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
            cols = [
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(str(t)))
                for c, t in spec.columns.items()
            ]
            if spec.soft_delete_column and spec.soft_delete_column not in spec.columns:
                cols.append(
                    sql.SQL("{} timestamptz").format(sql.Identifier(spec.soft_delete_column))
                )
            cols += [
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
                for c, t in BOOKKEEPING.items()
            ]
            cols.append(
                sql.SQL("PRIMARY KEY ({})").format(
                    sql.SQL(", ").join(map(sql.Identifier, spec.key))
                )
            )
            statements.append(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                    _ident(name), sql.SQL(", ").join(cols)
                )
            )
            continue
        for column, ctype in BOOKKEEPING.items():
            if column not in info.columns:
                statements.append(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        _ident(name), sql.Identifier(column), sql.SQL(ctype)
                    )
                )
        soft = spec.soft_delete_column
        if soft and soft not in info.columns:
            statements.append(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} timestamptz").format(
                    _ident(name), sql.Identifier(soft)
                )
            )
    statements.extend(_contribution_ddl(targets, tables, unresolved))
    rendered = tuple(s.as_string(None) for s in statements)
    return SchemaPlan(rendered, tuple(unresolved))


def _contribution_ddl(
    targets: Mapping[str, TargetSpec], tables: Mapping[str, TableInfo], unresolved: list[str]
) -> list[sql.Composable]:
    """Contributions tables for the targets several sources write, with their columns typed as
    in the target (the types the mapping declares, for a target created by this plan)."""
    statements: list[sql.Composable] = []
    for name, spec in sorted(targets.items()):
        if not spec.multi_source:
            continue
        info = tables.get(name)
        types = dict(spec.columns) if info is None else dict(info.columns)
        wanted = [*spec.key, *spec.merge.columns]
        untyped = [c for c in wanted if not types.get(c)]
        if untyped:
            if info is not None:  # else `plan_schema` already said the table needs types
                unresolved.append(
                    f"table {name} has no column {', '.join(untyped)}; "
                    "fix the mapping or add the column"
                )
            continue
        contributions = contributions_table(name)
        existing = tables.get(contributions)
        if not statements:
            statements.append(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(CONTRIBUTIONS_SCHEMA)
                )
            )
        if existing is None:
            key = [
                sql.SQL("{} {} NOT NULL").format(sql.Identifier(c), sql.SQL(str(types[c])))
                for c in spec.key
            ]
            values = [
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(str(types[c])))
                for c in spec.merge.columns
            ]
            statements.append(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ({}, _tunggal_source text NOT NULL, {}"
                    "_tunggal_position numeric NOT NULL, _tunggal_ts bigint NOT NULL, "
                    "_tunggal_state text NOT NULL DEFAULT 'live' "
                    "CHECK (_tunggal_state IN ('live', 'soft', 'hard')), "
                    "PRIMARY KEY ({}, _tunggal_source))"
                ).format(
                    _ident(contributions),
                    sql.SQL(", ").join(key),
                    sql.SQL("").join(sql.SQL("{}, ").format(v) for v in values),
                    sql.SQL(", ").join(map(sql.Identifier, spec.key)),
                )
            )
            continue
        for column in [*spec.merge.columns, *CONTRIBUTION_BOOKKEEPING]:
            if column not in existing.columns:
                ctype = CONTRIBUTION_BOOKKEEPING.get(column) or types[column]
                statements.append(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        _ident(contributions), sql.Identifier(column), sql.SQL(str(ctype))
                    )
                )
    return statements


def missing_bookkeeping(
    targets: Mapping[str, TargetSpec], tables: Mapping[str, TableInfo]
) -> list[str]:
    """Target tables that `run` cannot write yet, as readable reasons."""
    reasons = []
    for name in sorted(targets):
        info = tables.get(name)
        if info is None:
            reasons.append(f"target table {name} does not exist")
            continue
        lacking = [c for c in BOOKKEEPING if c not in info.columns]
        if lacking:
            reasons.append(f"target table {name} lacks bookkeeping columns {', '.join(lacking)}")
    merging = any(spec.multi_source for spec in targets.values()) or bool(
        merged_tables(targets, tables)
    )
    for own in OWN_TABLES:
        if own in OPTIONAL_OWN_TABLES and not (own == "tunggal_merge_state" and merging):
            continue
        if f"public.{own}" not in tables:
            reasons.append(f"Tunggal's table public.{own} does not exist")
    return reasons


def merged_tables(targets: Mapping[str, TargetSpec], tables: Mapping[str, TableInfo]) -> set[str]:
    """The targets written through contributions: those that have a contributions table.

    A table stays on that path once it has one, even if a mapping change leaves it one source:
    its contributions are then kept current, and never stale when a second source returns.
    """
    return {name for name in targets if contributions_table(name) in tables}


def apply_schema(engine: sa.Engine, plan: SchemaPlan) -> None:
    with engine.begin() as conn:
        for statement in plan.statements:
            conn.exec_driver_sql(statement)
