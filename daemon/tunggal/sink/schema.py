"""Target schema: introspection, bookkeeping columns and Tunggal's own tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from psycopg import sql

from tunggal.mapping import BOOKKEEPING_COLUMNS as BOOKKEEPING
from tunggal.mapping import TableInfo, TargetSpec

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
        PRIMARY KEY (consumer_group, topic, partition))""",
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
]
OWN_TABLES = (
    "tunggal_tombstones",
    "tunggal_truncations",
    "tunggal_progress",
    "tunggal_kafka_offsets",
    "tunggal_dead_letters",
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
    rendered = tuple(s.as_string(None) for s in statements)
    return SchemaPlan(rendered, tuple(unresolved))


def missing_bookkeeping(targets: Iterable[str], tables: Mapping[str, TableInfo]) -> list[str]:
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
    for own in OWN_TABLES:
        if f"public.{own}" not in tables:
            reasons.append(f"Tunggal's table public.{own} does not exist")
    return reasons


def apply_schema(engine: sa.Engine, plan: SchemaPlan) -> None:
    with engine.begin() as conn:
        for statement in plan.statements:
            conn.exec_driver_sql(statement)
