"""What `tunggal verify` compares, decided and checked before any row is read.

A check is one source and one target table: the source's mapped tables that write it (their
union), against the rows that source holds in it. Every problem with the request (an unknown
source or table, a source table missing or without a primary key, a kind of source verify
cannot read yet) is found here and reported together, so that nothing starts on bad input.

Each mapping entry is read one of two ways (README "Verifying the consolidated database"):

- **in SQL on the source**, when the mapping is nothing but columns copied unchanged (or cast
  within one type family) and constants, with no filter: the source computes the checksums
  itself, as fast as it can scan;
- **through the mapping**, otherwise: rows read in the source's snapshot, shaped as Debezium
  gives them (`reconcile.pgvalues`), mapped by the real `MappingSet`, and checksummed in the
  target's column types by the target (`reconcile.compare`).

Rows that the checksums show differ are always compared through the mapping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from psycopg import sql

from tunggal.config import TunggalConfig
from tunggal.connectors import ConnectorSpec
from tunggal.errors import ConfigError, Problem
from tunggal.events.modes import ConnectorModes
from tunggal.mapping import MappingSet, TableInfo, TargetSpec
from tunggal.mapping.dbinfo import BOOKKEEPING_COLUMNS, contributions_table
from tunggal.mapping.engine import iter_tables
from tunggal.mapping.spec import DEFAULT_SCHEMA, ColumnSpec, TableMapping
from tunggal.reconcile.dialects import SourceDatabase, SourceTable, unsupported_kind
from tunggal.reconcile.pgsql import Hashed
from tunggal.reconcile.pgvalues import FLOAT_TYPES, INT_TYPES, TEXT_TYPES, base_type
from tunggal.yamlfile import suggest

Delete = Literal["hard", "soft", "ignore"]


@dataclass(frozen=True)
class Entry:
    """One mapping entry of the check's source that writes its target table."""

    source_table: str
    where: str  # file:line of its `to:`, for messages
    mapping: TableMapping
    table: SourceTable
    hints: Mapping[str, str]  # source column -> type, as the pipeline hints the decoder
    # target column -> SQL over the source row (alias t), when the whole entry is SQL
    pushdown: Mapping[str, sql.Composable] | None
    # the target key as SQL over the source row, when its columns are copied
    key_pushdown: tuple[sql.Composable, ...] | None


@dataclass(frozen=True)
class Check:
    """One source against one target table."""

    source: str
    engine: str  # embedded | kafka
    database: SourceDatabase
    target: TargetSpec
    entries: tuple[Entry, ...]
    key: tuple[str, ...]
    columns: tuple[str, ...]  # the compared non-key columns
    types: Mapping[str, str]  # target (or contributions) column -> type
    hashable: frozenset[str]  # the types with an extended hash
    contributions: str | None  # the contributions table, for a table several sources write
    soft_column: str | None
    delete: Delete  # the entries' delete policy (extra rows under `ignore` are kept by design)
    versions: tuple[int, int] = (0, 0)  # server versions: source, target

    @property
    def name(self) -> str:
        tables = ", ".join(e.source_table for e in self.entries)
        return f"{self.source} {tables} -> {self.target.name}"

    def hashed(self, column: str, expr: sql.Composable | None = None) -> Hashed:
        ctype = self.types[column]
        return Hashed(
            sql.SQL("t.{}").format(sql.Identifier(column)) if expr is None else expr,
            ctype in self.hashable,
        )

    @property
    def sql_pushdown(self) -> bool:
        return all(e.pushdown is not None for e in self.entries)


# -- the SQL a mapping entry can be computed as ---------------------------------------------------

# Column types whose value the decoder and the sink leave exactly as the source holds it, so
# that the source's own value (cast to the target's type within the family) is the target's.
_EXACT_BASES: Final = (
    INT_TYPES
    | TEXT_TYPES
    | {"numeric", "decimal", "boolean", "bool", "date", "timestamp", "timestamptz", "time"}
    | {"timestamp without time zone", "timestamp with time zone", "time without time zone"}
    | {"uuid", "jsonb", "json", "bytea", "inet", "cidr", "macaddr", "xml"}
)
_SAME_TYPE_ONLY: Final = FLOAT_TYPES | {"character", "char", "bpchar", "bit"}
_WIDENS: Final = {
    **{"smallint": 1, "int2": 1, "integer": 2, "int": 2, "int4": 2},
    **{"bigint": 3, "int8": 3, "numeric": 4, "decimal": 4},
}
_FAMILIES: Final = (
    frozenset({"text", "character varying", "varchar"}),
    frozenset({"numeric", "decimal"}),
    frozenset({"timestamp", "timestamp without time zone"}),
    frozenset({"timestamptz", "timestamp with time zone"}),
    frozenset({"time", "time without time zone"}),
)


def source_expression(
    column: str, source_type: str, target_type: str, modes: ConnectorModes
) -> sql.Composable | None:
    """The source column as the target holds it, in SQL, or None when only the mapping
    (the decoder, Python, the sink's cast) can say."""
    sbase, _, sarray = base_type(source_type)
    tbase, _, tarray = base_type(target_type)
    plain = sql.SQL("t.{}").format(sql.Identifier(column))
    cast = sql.SQL("t.{}::{}").format(sql.Identifier(column), sql.SQL(target_type))
    if sarray != tarray:
        return None
    interval_exact = modes.interval_handling == "string"
    if source_type == target_type and (
        sbase in _EXACT_BASES
        or sbase in _SAME_TYPE_ONLY
        or (sbase == "interval" and interval_exact)
    ):
        return plain
    if sarray:
        return None
    if sbase in _WIDENS and tbase in _WIDENS and _WIDENS[sbase] <= _WIDENS[tbase]:
        return cast
    for family in _FAMILIES:
        if sbase in family and tbase in family:
            return cast
    if sbase == tbase == "interval" and interval_exact:
        return cast
    return None


def _const_expression(value: Any, target_type: str) -> sql.Composable | None:
    tbase, _, tarray = base_type(target_type)
    if tarray or not (tbase in _EXACT_BASES or tbase in FLOAT_TYPES):
        return None
    return sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(target_type))


def entry_pushdown(
    mapping: TableMapping,
    table: SourceTable,
    types: Mapping[str, str],
    compared: Sequence[str],
    modes: ConnectorModes,
) -> tuple[dict[str, sql.Composable] | None, tuple[sql.Composable, ...] | None]:
    """(every compared target column as SQL, or None; the key as SQL, or None)."""
    exprs: dict[str, sql.Composable | None] = {}
    for column, value in mapping.columns.items():
        if column not in types:
            continue
        if isinstance(value, str) or (
            isinstance(value, ColumnSpec) and value.from_ is not None and not value.steps
        ):
            name = value if isinstance(value, str) else value.from_
            assert name is not None
            source_type = table.columns.get(name)
            exprs[column] = (
                None
                if source_type is None or name in table.enums
                else source_expression(name, source_type, types[column], modes)
            )
        elif isinstance(value, ColumnSpec) and value.has("const") and not value.steps:
            exprs[column] = _const_expression(value.const, types[column])
        else:
            exprs[column] = None
    key = tuple(exprs.get(k) for k in mapping.key)
    key_sql = None if any(k is None for k in key) else tuple(k for k in key if k is not None)
    wanted = [*mapping.key, *compared]
    if mapping.filter is not None or any(exprs.get(c) is None for c in wanted):
        return None, key_sql
    return {c: e for c in wanted if (e := exprs[c]) is not None}, key_sql


# -- choosing and checking -----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    source: str | None = None
    table: str | None = None  # a target table; bare names are in `public`


def _qualified(name: str) -> str:
    return name if "." in name else f"{DEFAULT_SCHEMA}.{name}"


def choose(
    config: TunggalConfig, mappings: MappingSet, request: Request
) -> list[tuple[str, TargetSpec]]:
    """(source, target table) pairs to check, or a ConfigError naming what was not found."""
    configured = [s.name for s in config.sources]
    problems: list[Problem] = []
    sources = [s for s in configured if s in mappings.sources()]
    if request.source is not None:
        if request.source not in configured:
            guess = suggest(request.source, configured)
            problems.append(
                Problem(
                    "--source",
                    "",
                    f"no source {request.source} in {config.base_dir or 'the config'}"
                    if not configured
                    else f"no source named {request.source}",
                    hint=f"did you mean {guess}?"
                    if guess
                    else f"sources: {', '.join(configured) or 'none'}",
                )
            )
        elif request.source not in mappings.sources():
            problems.append(
                Problem("--source", "", f"no mapping reads from source {request.source}")
            )
        sources = [request.source]
    targets = mappings.targets()
    chosen: list[str] = list(targets)
    if request.table is not None:
        qualified = _qualified(request.table)
        if qualified not in targets:
            guess = suggest(qualified, sorted(targets))
            problems.append(
                Problem(
                    "--table",
                    "",
                    f"no mapping writes target table {request.table}",
                    hint=f"did you mean {guess}?"
                    if guess
                    else f"target tables: {', '.join(targets)}",
                )
            )
            chosen = []
        else:
            chosen = [qualified]
            writers = sorted({w.source for w in targets[qualified].writers})
            if request.source is not None and not problems and request.source not in writers:
                problems.append(
                    Problem(
                        "--table",
                        "",
                        f"source {request.source} does not write {qualified}",
                        hint=f"it is written by {', '.join(writers)}",
                    )
                )
    if problems:
        raise ConfigError(problems)
    pairs = [
        (source, targets[name])
        for name in chosen
        for source in sorted({w.source for w in targets[name].writers})
        if source in sources
    ]
    if not pairs:
        raise ConfigError(
            [Problem("--source", "", "nothing to verify: no configured source writes a table")]
        )
    return pairs


@dataclass
class Catalogs:
    """What the databases say, gathered once: the target's tables and hashable types, each
    source's tables and server version."""

    target: Mapping[str, TableInfo]
    target_hashable: frozenset[str]
    target_version: int
    sources: dict[str, dict[str, SourceTable | None]] = field(default_factory=dict)
    source_versions: dict[str, int] = field(default_factory=dict)


def build_checks(
    pairs: Sequence[tuple[str, TargetSpec]],
    mappings: MappingSet,
    config: TunggalConfig,
    connectors: Mapping[str, ConnectorSpec],
    databases: Mapping[str, SourceDatabase],
    catalogs: Catalogs,
) -> list[Check]:
    """The checks, or one ConfigError with every problem found."""
    problems: list[Problem] = []
    checks: list[Check] = []
    engines = {s.name: s.engine for s in config.sources}
    target_types = {name: info.columns for name, info in catalogs.target.items()}
    for source, spec in pairs:
        where = f"connector {config.resolve(_connector_file(config, source))}"
        kind_problem = unsupported_kind(connectors[source], where)
        if kind_problem is not None:
            if kind_problem not in problems:
                problems.append(kind_problem)
            continue
        info = catalogs.target.get(spec.name)
        if info is None:
            problems.append(
                Problem(
                    spec.writers[0].file,
                    "",
                    f"target table {spec.name} does not exist",
                    spec.writers[0].line,
                    "run `tunggal schema --apply`",
                )
            )
            continue
        missing = [c for c in BOOKKEEPING_COLUMNS if c not in info.columns]
        if frozenset(spec.key) not in {frozenset(k) for k in info.unique_keys} or missing:
            problems.append(
                Problem(
                    spec.writers[0].file,
                    "",
                    f"{spec.name} has no unique key ({', '.join(spec.key)})"
                    if not missing
                    else f"{spec.name} lacks {', '.join(missing)}",
                    spec.writers[0].line,
                    "run `tunggal validate --db` to see what to fix",
                )
            )
            continue
        contributions = contributions_table(spec.name) if spec.multi_source else None
        types: Mapping[str, str] = info.columns
        if contributions is not None:
            stored = catalogs.target.get(contributions)
            if stored is None:
                problems.append(
                    Problem(
                        spec.writers[0].file,
                        "",
                        f"{spec.name} is written by several sources but has no "
                        f"contributions table {contributions}",
                        spec.writers[0].line,
                        "run `tunggal schema --apply`",
                    )
                )
                continue
            types = stored.columns
        entries_of = [
            (doc, index, table)
            for doc, index, table in iter_tables(mappings.documents)
            if doc.spec.source == source and table.target == spec.name
        ]
        soft = spec.soft_delete_column
        mapped = [
            {c for c in table.columns if c in types and c not in spec.key and c != soft}
            for _, _, table in entries_of
        ]
        common = set.intersection(*mapped) if mapped else set()
        columns = tuple(c for c in spec.columns if c in common)
        entries: list[Entry] = []
        database = databases[source]
        for doc, index, table in entries_of:
            at = f"{doc.path}:{doc.line('tables', index, 'from') or '?'}"
            described = catalogs.sources.get(source, {}).get(table.source_table)
            if described is None:
                problems.append(
                    Problem(
                        doc.path,
                        f"tables[{index}].from",
                        f"source {source} has no table {table.source_table}",
                        doc.line("tables", index, "from"),
                        "check the name, or that the connector's user can see it",
                    )
                )
                continue
            if not described.primary_key:
                problems.append(
                    Problem(
                        doc.path,
                        f"tables[{index}].from",
                        f"source table {table.source_table} of {source} has no primary key: "
                        "verify finds and re-reads rows by it",
                        doc.line("tables", index, "from"),
                        f"ALTER TABLE {table.source_table} ADD PRIMARY KEY (...) on the source",
                    )
                )
                continue
            hints = mappings.hints(source, table.source_table, target_types)
            pushdown, key_sql = entry_pushdown(table, described, types, columns, database.modes)
            versions_ok = (
                catalogs.source_versions.get(source, 0) >= 140000
                and catalogs.target_version >= 140000
            )
            if not versions_ok:
                pushdown, key_sql = None, None
            entries.append(
                Entry(table.source_table, at, table, described, hints, pushdown, key_sql)
            )
        if len(entries) != len(entries_of):
            continue
        policies = {table.delete for _, _, table in entries_of}
        delete: Delete = (
            "ignore" if policies == {"ignore"} else ("soft" if "soft" in policies else "hard")
        )
        checks.append(
            Check(
                source=source,
                engine=engines.get(source, "embedded"),
                database=database,
                target=spec,
                entries=tuple(entries),
                key=spec.key,
                columns=columns,
                types=types,
                hashable=catalogs.target_hashable,
                contributions=contributions,
                soft_column=soft if contributions is None and soft in types else None,
                delete=delete,
                versions=(catalogs.source_versions.get(source, 0), catalogs.target_version),
            )
        )
    if catalogs.target_version and catalogs.target_version < 140000:
        problems.append(
            Problem(
                "target",
                "dsn",
                f"the target runs PostgreSQL {catalogs.target_version // 10000}: "
                "`tunggal verify` needs 14 or later (hash_record_extended)",
            )
        )
    if problems:
        raise ConfigError(problems)
    return checks


def _connector_file(config: TunggalConfig, source: str) -> str:
    for s in config.sources:
        if s.name == source:
            return s.connector
    return "?"


def load_checks(
    config: TunggalConfig,
    mappings: MappingSet,
    connectors: Mapping[str, ConnectorSpec],
    request: Request,
) -> list[Check]:
    """The checks `request` asks for, with every database asked what it has. ConfigError for
    bad input (all of it at once), TransientError when a database cannot be reached."""
    import psycopg
    import sqlalchemy as sa

    from tunggal.errors import TransientError
    from tunggal.reconcile.dialects import source_database
    from tunggal.reconcile.pgsql import SESSION_SETTINGS, hashable_types
    from tunggal.sink.schema import introspect

    pairs = choose(config, mappings, request)
    dsn = config.target.dsn.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(
            dsn,
            connect_timeout=int(config.target.connect_timeout_s),
            options=SESSION_SETTINGS,
        ) as conn:
            version = int(conn.info.server_version)
            engine = sa.create_engine(
                dsn.replace("postgresql://", "postgresql+psycopg://", 1).replace(
                    "postgres://", "postgresql+psycopg://", 1
                ),
                poolclass=sa.pool.NullPool,
                connect_args={"connect_timeout": int(config.target.connect_timeout_s)},
            )
            try:
                tables = introspect(engine)
            finally:
                engine.dispose()
            types = [t for info in tables.values() for t in info.columns.values()]
            with conn.cursor() as cur:
                hashable = hashable_types(cur, types) if version >= 140000 else set()
    except (psycopg.OperationalError, sa.exc.OperationalError) as exc:
        raise TransientError(f"target database: {_first_line(exc)}") from exc
    catalogs = Catalogs(tables, frozenset(hashable), version)
    databases: dict[str, SourceDatabase] = {}
    for source in sorted({s for s, _ in pairs}):
        spec = connectors[source]
        if unsupported_kind(spec, "") is not None:
            continue
        database = databases[source] = source_database(spec)
        wanted = sorted(
            {
                table.source_table
                for doc, _, table in iter_tables(mappings.documents)
                if doc.spec.source == source and any(t.name == table.target for _, t in pairs)
            }
        )
        with database.connect() as conn:
            catalogs.source_versions[source] = int(conn.info.server_version)
            catalogs.sources[source] = {t: database.describe(conn, t) for t in wanted}
    return build_checks(pairs, mappings, config, connectors, databases, catalogs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
