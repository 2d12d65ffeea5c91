"""Turns change events into row operations, with rules compiled once from validated mappings.

Pure on purpose: no database, Kafka or metrics imports, so it is tested with plain dicts.

The work per event is kept small because it runs for every row of every snapshot: the
rules for each (source, source table) are compiled into closures at load time, plain renames
are one dict comprehension, and CEL only sees the columns it reads.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from types import MappingProxyType
from typing import Any, Final

import cel

from tunggal.errors import MappingError
from tunggal.events.model import UNAVAILABLE, ChangeEvent, Op, ProjectedEvent, Projection
from tunggal.mapping.ops import Delete, RowOp, Truncate, Upsert
from tunggal.mapping.pgtypes import Family, parse_type
from tunggal.mapping.spec import (
    CastStep,
    ColumnSpec,
    ConstPart,
    DatePartStep,
    DefaultIfNullStep,
    LookupStep,
    MappingFile,
    MergeSpec,
    Step,
    TableMapping,
)
from tunggal.mapping.survivorship import MergeRules, build_rules
from tunggal.mapping.transforms import (
    CASTS,
    FLAT_PREFIX,
    NAMED,
    ValueFailure,
    ValueFn,
    compile_cel,
    concat,
    date_part,
    default_if_null,
    flatten_row,
    from_cel,
    lookup,
    to_cel,
)

Row = Mapping[str, Any]


Lines = Mapping[tuple[str, ...], int]  # ("tables", "0", "key") -> line, keys as text


def line_of(lines: Lines, *where: str | int) -> int | None:
    """Line of `where`, or of its nearest ancestor present in the file."""
    key = tuple(str(p) for p in where)
    while key and key not in lines:
        key = key[:-1]
    return lines.get(key)


def location(where: Iterable[str | int]) -> str:
    """A place in a file as messages show it: ("tables", 1, "key") -> "tables[1].key"."""
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True)
class MappingDocument:
    """One validated mapping file with the line of every key, for messages."""

    path: str
    spec: MappingFile
    lines: Lines = field(repr=False)

    def line(self, *where: str | int) -> int | None:
        return line_of(self.lines, *where)


@dataclass(frozen=True, slots=True)
class Writer:
    """One mapping entry that writes a target table."""

    file: str
    line: int | None  # line of its `to:`
    source: str
    source_table: str


@dataclass(frozen=True)
class TargetSpec:
    """A target table as all the mappings that write it describe it together."""

    name: str  # "schema.table"
    key: tuple[str, ...]
    # column -> PostgreSQL type: `type:`, else the type of a final `cast:`, else None.
    columns: Mapping[str, str | None]
    # Set when any writer soft-deletes; `tunggal schema` creates it as timestamptz.
    soft_delete_column: str | None
    writers: tuple[Writer, ...]
    # How the writers' sources make each row (every table has rules; with one source they
    # pick that source's values, and only tables with contributions use them: `sink.merge`).
    merge: MergeRules

    @property
    def multi_source(self) -> bool:
        """Written by two or more sources: needs the merge (contributions) path."""
        return self.merge.multi_source


def effective_type(value: str | ColumnSpec) -> str | None:
    """The PostgreSQL type a column's `type:` declares, or its final cast implies."""
    if isinstance(value, str):
        return None
    if value.type is not None:
        return _canonical(value.type)
    steps = value.steps
    if steps and isinstance(steps[-1], CastStep):
        return _canonical(steps[-1].cast)
    return None


def _canonical(type_name: str) -> str:
    parsed = parse_type(type_name)
    return type_name if parsed is None else parsed.canonical


def iter_tables(
    documents: Iterable[MappingDocument],
) -> Iterator[tuple[MappingDocument, int, TableMapping]]:
    for doc in documents:
        for index, table in enumerate(doc.spec.tables):
            yield doc, index, table


def merge_targets(documents: Sequence[MappingDocument]) -> dict[str, TargetSpec]:
    """Target tables in file order. Assumes the loader checked that writers agree."""
    keys: dict[str, tuple[str, ...]] = {}
    columns: dict[str, dict[str, str | None]] = {}
    soft: dict[str, str | None] = {}
    writers: dict[str, list[Writer]] = {}
    mapped: dict[str, list[tuple[str, Mapping[str, str | ColumnSpec]]]] = {}
    merges: dict[str, MergeSpec] = {}
    for doc, index, table in iter_tables(documents):
        name = table.target
        mapped.setdefault(name, []).append((doc.spec.source, table.columns))
        if table.merge is not None:
            merges.setdefault(name, table.merge)
        keys.setdefault(name, table.key)
        cols = columns.setdefault(name, {})
        for column, value in table.columns.items():
            if cols.get(column) is None:
                cols[column] = effective_type(value)
        if soft.get(name) is None:
            soft[name] = table.soft_delete_column if table.delete == "soft" else None
        writers.setdefault(name, []).append(
            Writer(doc.path, doc.line("tables", index, "to"), doc.spec.source, table.source_table)
        )
    return {
        name: TargetSpec(
            name=name,
            key=keys[name],
            columns=MappingProxyType(columns[name]),
            soft_delete_column=soft[name],
            writers=tuple(writers[name]),
            merge=build_rules(name, keys[name], mapped[name], merges.get(name), soft[name]),
        )
        for name in keys
    }


def content_hash(files: Mapping[str, bytes]) -> str:
    """sha256 over each file's sha256, in path order: content moved between files changes it."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(hashlib.sha256(files[path]).digest())
    return digest.hexdigest()


# --- compiling one table mapping --------------------------------------------------------------


_ABSENT: Final = object()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True, slots=True)
class _Where:
    """What a run-time failure message names: file and line, source table, target column."""

    file: str
    line: int | None
    source: str
    source_table: str
    target: str
    column: str  # target column, or "filter"

    def error(self, reason: str, value: Any = _ABSENT) -> MappingError:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = f"{where}: {self.source} {self.source_table} -> {self.target}.{self.column}: "
        text += reason if value is _ABSENT else f"{reason}; value {_short(value)}"
        return MappingError(text, source=self.source, table=self.source_table)

    def missing_column(self, name: str, row: Row) -> MappingError:
        close = difflib.get_close_matches(name, [str(k) for k in row], n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return self.error(f"source column `{name}` is not in the event{hint}")


def _step_fn(step: Step) -> ValueFn:
    if isinstance(step, str):
        return NAMED[step]
    if isinstance(step, DatePartStep):
        return date_part(step.date_part, step.timezone)
    if isinstance(step, LookupStep):
        if "default" in step.model_fields_set:
            return lookup(step.lookup, step.default)
        return lookup(step.lookup)
    if isinstance(step, DefaultIfNullStep):
        return default_if_null(step.default_if_null)
    parsed = parse_type(step.cast)
    assert parsed is not None  # validated by spec._cast
    return CASTS[parsed.family]


class _Cel:
    """A CEL program over `row`, fed only the columns it reads (see transforms.flatten_row)."""

    __slots__ = ("columns", "program", "source", "variables")

    def __init__(self, source: str) -> None:
        self.source = source
        flat = flatten_row(source)
        # columns: the row columns the program reads as plain variables; None: it gets `row`.
        if flat is None:
            self.program = compile_cel(source)
            self.columns: tuple[str, ...] | None = None
            self.variables: tuple[tuple[str, str], ...] = ()
        else:
            compile_cel(source)  # the user's spelling in messages, not the rewrite's
            self.program = cel.compile(flat[0])
            self.columns = flat[1]
            self.variables = tuple((f"{FLAT_PREFIX}{i}", c) for i, c in enumerate(flat[1]))

    def evaluate(self, row: Row, where: _Where) -> Any:
        """The result, or UNAVAILABLE when a column it reads is an unchanged TOAST value."""
        data: dict[str, Any] = {}
        if self.columns is None:
            for name, value in row.items():
                if value is not UNAVAILABLE:  # if it is read, CEL reports a KeyError
                    data[name] = to_cel(value)
            data = {"row": data}
        else:
            for variable, name in self.variables:
                value = row.get(name, _ABSENT)
                if value is UNAVAILABLE:
                    return UNAVAILABLE
                if value is not _ABSENT:  # if absent, CEL reports an undefined variable
                    data[variable] = to_cel(value)
        try:
            return self.program.execute(data)
        # The CEL binding raises KeyError, TypeError, ValueError, RuntimeError or
        # ArithmeticError; each means "this row broke the expression".
        except Exception as exc:
            missing = self._missing(exc)
            if missing is None:
                raise where.error(f"CEL {self.source!r} failed: {exc}") from None
            if row.get(missing, _ABSENT) is UNAVAILABLE:
                return UNAVAILABLE
            raise where.missing_column(missing, row) from None

    def _missing(self, exc: Exception) -> str | None:
        """The row column whose absence `exc` reports, if that is what it reports."""
        if isinstance(exc, KeyError) and exc.args:
            return str(exc.args[0])
        m = re.search(rf"'{FLAT_PREFIX}(\d+)'", str(exc))
        return None if m is None or self.columns is None else self.columns[int(m[1])]


def _column_fn(spec: ColumnSpec, where: _Where, family: Family | None) -> Callable[[Row], Any]:
    """One closure computing a derived column from a row."""
    source: Callable[[Row], Any]
    if spec.from_ is not None:
        name = spec.from_

        def source(row: Row) -> Any:
            return row[name]

    elif spec.expr is not None:
        program = _Cel(spec.expr)

        def source(row: Row) -> Any:
            return from_cel(program.evaluate(row, where), family)

    elif spec.concat is not None:
        parts = tuple(
            (None, p.const) if isinstance(p, ConstPart) else (p, None) for p in spec.concat
        )

        def source(row: Row) -> Any:
            values = [value if name is None else row[name] for name, value in parts]
            return UNAVAILABLE if UNAVAILABLE in values else concat(tuple(values))

    else:
        constant = spec.const

        def source(row: Row) -> Any:
            return constant

    steps = tuple(_step_fn(s) for s in spec.steps)

    def compute(row: Row) -> Any:
        try:
            value = source(row)
        except KeyError as missing:  # each handler its own name: mypyc types one per function
            raise where.missing_column(str(missing.args[0]), row) from None
        if value is UNAVAILABLE:
            return value  # an unchanged TOAST value in, an unchanged target value out
        for step in steps:
            try:
                value = step(value)
            except ValueFailure as exc:
                raise where.error(str(exc), value) from None
            except (ArithmeticError, ValueError, TypeError) as failed:
                # A value at the edge of its type (a date in year 1 shifted to another time
                # zone, a huge number) is this row's problem, not the daemon's.
                raise where.error(f"{type(failed).__name__}: {failed}", value) from None
        return value

    return compute


def _output_family(spec: ColumnSpec) -> Family | None:
    type_name = spec.type or next(
        (s.cast for s in reversed(spec.steps) if isinstance(s, CastStep)), None
    )
    parsed = parse_type(type_name) if type_name else None
    return None if parsed is None else parsed.family


class TableMapper:
    """The compiled rules of one `tables:` entry."""

    __slots__ = (
        "_copy",
        "_delete",
        "_derived",
        "_filter",
        "_filter_where",
        "_key",
        "_key_fns",
        "_key_of_values",
        "_key_where",
        "_renames",
        "_soft",
        "_soft_column",
        "_table",
        "_truncate",
        "_where",
        "projection",
        "where_text",
    )

    def __init__(self, doc: MappingDocument, index: int, table: TableMapping, key: tuple[str, ...]):
        source = doc.spec.source

        def where(column: str, *path: str | int) -> _Where:
            line = doc.line("tables", index, *path)
            return _Where(doc.path, line, source, table.source_table, table.target, column)

        self.where_text = (
            f"{doc.path}:{doc.line('tables', index)}: {source} {table.source_table} -> "
            f"{table.target}"
        )
        self._table = table.target
        self._key = key  # the target's key order, shared by every file writing it
        self._delete = table.delete
        self._soft = table.delete == "soft"
        self._soft_column = table.soft_delete_column if self._soft else None
        self._truncate = table.truncate == "delete_source_rows"
        renames: list[tuple[str, str]] = []
        derived: list[tuple[str, Callable[[Row], Any]]] = []
        by_column: dict[str, Callable[[Row], Any]] = {}
        self._where: dict[str, _Where] = {}
        for column, value in table.columns.items():
            at = where(column, "columns", column)
            self._where[column] = at
            # `{from: x, type: ...}` copies like a plain rename: `type:` only matters to DDL.
            if isinstance(value, ColumnSpec) and (value.from_ is None or value.steps):
                fn = _column_fn(value, at, _output_family(value))
                derived.append((column, fn))
                by_column[column] = fn
            else:
                copied = value if isinstance(value, str) else value.from_
                assert copied is not None
                renames.append((column, copied))
                by_column[column] = _getter(copied)
        self._renames = tuple(renames)
        self._copy = _compile_copy(self._renames)
        self._key_of_values = _tuple_getter(key)
        self._derived = tuple(derived)
        self._key_fns = tuple(by_column[k] for k in key)
        self._key_where = where("key", "key")
        self._filter = None if table.filter is None else _Cel(table.filter)
        self._filter_where = where("filter", "filter")
        # Only copies, no filter: the decoder may build the target row itself (`map_projected`).
        self.projection: Projection | None = (
            self._renames if not self._derived and self._filter is None else None
        )

    # -- building blocks --

    def _upsert(self, event: ChangeEvent, row: Row) -> Upsert:
        try:
            values = self._copy(row)
        except KeyError as exc:
            name = str(exc.args[0])
            column = next(t for t, s in self._renames if s == name)
            raise self._where[column].missing_column(name, row) from None
        for target, fn in self._derived:
            values[target] = fn(row)
        return self._upsert_of(values, event.source, event.position, event.commit_ts_us)

    def _upsert_of(
        self, values: dict[str, Any], source: str, position: int, commit_ts_us: int
    ) -> Upsert:
        """The Upsert of a mapped row (`values` is its own, and is completed here)."""
        key = self._key_of_values(values)
        if None in key or UNAVAILABLE in key:
            raise self._bad_key(key, "the new row")
        if self._soft_column is not None:
            values[self._soft_column] = None  # a row that comes back is live again
        return Upsert(self._table, key, values, source, position, commit_ts_us)

    def _key_of(self, row: Row, image: str) -> tuple[Any, ...]:
        """The key a row has; MappingError when it lacks a key column (a partial image)."""
        key = tuple([fn(row) for fn in self._key_fns])
        if None in key or UNAVAILABLE in key:
            raise self._bad_key(key, image)
        return key

    def _bad_key(self, key: tuple[Any, ...], image: str) -> MappingError:
        column, value = next(
            (k, v) for k, v in zip(self._key, key, strict=True) if v is None or v is UNAVAILABLE
        )
        what = "NULL" if value is None else "unavailable"
        return self._where[column].error(
            f"key column is {what} in {image}"
            " (with REPLICA IDENTITY DEFAULT deletes carry only the source primary key:"
            " map the target key from it, or set REPLICA IDENTITY FULL on the source table)"
        )

    def _delete_op(self, event: ChangeEvent, key: tuple[Any, ...]) -> Delete:
        return self._delete_of(key, event.source, event.position, event.commit_ts_us)

    def _delete_of(
        self, key: tuple[Any, ...], source: str, position: int, commit_ts_us: int
    ) -> Delete:
        return Delete(self._table, key, source, position, commit_ts_us, self._soft)

    def _passes(self, row: Row) -> bool:
        assert self._filter is not None
        result = self._filter.evaluate(row, self._filter_where)
        if result is True or result is False:
            return result
        if result is UNAVAILABLE:
            raise self._filter_where.error(
                "the filter reads a column Debezium did not send (an unchanged TOAST value);"
                " filter on small columns only"
            )
        raise self._filter_where.error("the filter must give true or false", result)

    def _surely_filtered_out(self, row: Row) -> bool:
        """For a delete: was the row certainly outside the filter, so never written?

        A before image may be partial (REPLICA IDENTITY DEFAULT: key columns only, the rest
        NULL), and a filter on NULLs can say false for a row that was written. Deleting a
        row that is not there is harmless; keeping a deleted row is not. So only a clean
        `false` over real values skips the delete.
        """
        assert self._filter is not None
        columns = self._filter.columns
        if columns is None or any(row.get(c) is None or row.get(c) is UNAVAILABLE for c in columns):
            return False
        try:
            return self._passes(row) is False
        except MappingError:
            return False

    # -- one event --

    def map(self, event: ChangeEvent) -> list[RowOp]:
        op = event.op
        if op is Op.CREATE or op is Op.READ or op is Op.UPDATE:
            after = event.after
            if after is None:
                raise self._key_where.error(f"a {op.name} event has no after image")
            if op is not Op.UPDATE:
                if self._filter is not None and not self._passes(after):
                    return []
                return [self._upsert(event, after)]
            return self._update(event, after)
        if op is Op.DELETE:
            return self._on_delete(event)
        if op is Op.TRUNCATE and self._truncate:
            return [
                Truncate(self._table, event.source, event.position, event.commit_ts_us, self._soft)
            ]
        return []

    def map_projected(self, event: ProjectedEvent) -> list[RowOp]:
        """What `map` gives for the same event decoded whole, from its rows already in this
        mapper's `projection` (tests/unit/test_pipeline_projected.py compares the two)."""
        old = None
        if event.op is Op.UPDATE and event.before is not None:
            old = self._key_of_values(event.before)
            if None in old or UNAVAILABLE in old:
                old = None  # as `_update`: a partial before image is not this row's failure
        source, position, commit_ts_us = event.source, event.position, event.commit_ts_us
        upsert = self._upsert_of(event.after, source, position, commit_ts_us)
        if old is not None and old != upsert.key and self._delete != "ignore":
            return [self._delete_of(old, source, position, commit_ts_us), upsert]
        return [upsert]

    @property
    def target(self) -> str:
        return self._table

    def snapshot_cleanup(self, event: ChangeEvent) -> Truncate | None:
        """After a completed snapshot: rows this source wrote before it (an earlier snapshot
        cut short, or streaming before a re-snapshot) that the snapshot did not read again
        were deleted in the source meanwhile. Remove them as the delete policy says."""
        return self.cleanup_before(event.source, event.position, event.commit_ts_us)

    def cleanup_before(self, source: str, position: int, commit_ts_us: int) -> Truncate | None:
        """Remove (as the delete policy says) this source's rows older than `position`; no
        watermark, so a change of theirs that still streams in afterwards applies."""
        if self._delete == "ignore":
            return None
        return Truncate(self._table, source, position, commit_ts_us, self._soft, watermark=False)

    def _update(self, event: ChangeEvent, after: Row) -> list[RowOp]:
        old = None
        if event.before is not None:
            # A partial before image (no old key to compare) is not this row's failure.
            with contextlib.suppress(MappingError):
                old = self._key_of(event.before, "the old row")
        if self._filter is not None and not self._passes(after):
            # The row left the filtered set: remove it under its old and new key.
            if self._delete == "ignore":
                return []
            new = self._key_of(after, "the new row")
            ops: list[RowOp] = [self._delete_op(event, new)]
            if old is not None and old != new:
                ops.insert(0, self._delete_op(event, old))
            return ops
        upsert = self._upsert(event, after)
        if old is not None and old != upsert.key and self._delete != "ignore":
            # The key changed: the row under the old key is gone (worked example: kegiatan
            # 1.01.01 renumbered to 1.01.02 gives Delete(1.01.01), Upsert(1.01.02)).
            return [self._delete_op(event, old), upsert]
        return [upsert]

    def _on_delete(self, event: ChangeEvent) -> list[RowOp]:
        if self._delete == "ignore":
            return []
        row: dict[str, Any] = dict(event.before or {})
        for name, value in (event.key or {}).items():
            if row.get(name) is None:
                row[name] = value  # the Debezium key fills what a partial before image lacks
        if not row:
            raise self._key_where.error("a delete event has neither a before image nor a key")
        if self._filter is not None and self._surely_filtered_out(row):
            return []
        return [self._delete_op(event, self._key_of(row, "the deleted row"))]


def _compile_copy(renames: Sequence[tuple[str, str]]) -> Callable[[Row], dict[str, Any]]:
    """`row -> {target: row[source], ...}` as one dict display, compiled once per table.

    It runs for every row: a comprehension over the pairs costs nearly twice as much. Names
    enter the source text only through repr(), which always gives a plain string literal.
    Like the comprehension, a missing source column raises KeyError with its name.
    """
    items = ", ".join(f"{target!r}: row[{source!r}]" for target, source in renames)
    copy: Callable[[Row], dict[str, Any]] = eval(f"lambda row: {{{items}}}", {})
    return copy


def _tuple_getter(names: Sequence[str]) -> Callable[[Row], tuple[Any, ...]]:
    """`values -> (values[names[0]], ...)`; itemgetter gives a bare value for one name."""
    if len(names) == 1:
        (name,) = names
        return lambda values: (values[name],)
    get: Callable[[Row], tuple[Any, ...]] = itemgetter(*names)
    return get


def _getter(name: str) -> Callable[[Row], Any]:
    # .get, not [ ]: a partial before image may lack the column; the key check reports it.
    return lambda row: row.get(name)


# --- the mapping set --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MappingSet:
    """Every loaded mapping file, compiled. Build it with `loader.load_mappings`."""

    documents: tuple[MappingDocument, ...]
    content_hash: str
    _targets: Mapping[str, TargetSpec] = field(init=False, repr=False)
    _mappers: Mapping[tuple[str, str], tuple[TableMapper, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        targets = merge_targets(self.documents)
        mappers: dict[tuple[str, str], list[TableMapper]] = {}
        for doc, index, table in iter_tables(self.documents):
            mapper = TableMapper(doc, index, table, targets[table.target].key)
            mappers.setdefault((doc.spec.source, table.source_table), []).append(mapper)
        object.__setattr__(self, "_targets", MappingProxyType(targets))
        object.__setattr__(
            self, "_mappers", MappingProxyType({k: tuple(v) for k, v in mappers.items()})
        )

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(doc.path for doc in self.documents)

    def sources(self) -> frozenset[str]:
        return frozenset(doc.spec.source for doc in self.documents)

    def source_tables(self, source: str) -> frozenset[str]:
        """The source's tables that some mapping reads: the connector's table include list."""
        return frozenset(table for s, table in self._mappers if s == source)

    def targets(self) -> Mapping[str, TargetSpec]:
        return self._targets

    def map_event(self, event: ChangeEvent) -> list[RowOp]:
        """The row operations for one change event; [] for tables no mapping reads.

        Raises MappingError when a rule fails for this row (the event is poison).
        """
        mappers = self._mappers.get((event.source, event.table))
        if event.snapshot_done:
            return [*self._map(event, mappers or ()), *self._snapshot_cleanup(event)]
        if mappers is None:
            return []
        return self._map(event, mappers)

    def projected_mapper(self, source: str, source_table: str) -> TableMapper | None:
        """The one mapper of a table whose rows it only copies (see `TableMapper.projection`),
        or None: no mapping reads the table, several do, or one transforms or filters."""
        mappers = self._mappers.get((source, source_table))
        if mappers is None or len(mappers) != 1 or mappers[0].projection is None:
            return None
        return mappers[0]

    def map_projected(self, mapper: TableMapper, event: ProjectedEvent) -> list[RowOp]:
        """`map_event` for an event `decode_projected` read with `mapper.projection`."""
        try:
            return mapper.map_projected(event)
        except MappingError:
            raise
        except (ValueFailure, ArithmeticError, ValueError, TypeError, RecursionError) as exc:
            raise _unmappable(mapper, event.source, event.table, exc) from None

    def table_cleanup(
        self, source: str, source_table: str, position: int, commit_ts_us: int
    ) -> tuple[list[RowOp], list[str]]:
        """After an incremental snapshot read `source_table` again: its rows this source wrote
        before `position` and did not read again are gone from the source. Removed as each
        delete policy says, in every target table this source table feeds, except those that
        another table of the same source also writes (their rows cannot be told apart by
        position): those come back as the second list, to be reported."""
        ops: list[RowOp] = []
        shared: list[str] = []
        mine = self._mappers.get((source, source_table), ())
        for mapper in mine:
            target = mapper.target
            others = [
                table
                for (s, table), mappers in self._mappers.items()
                if s == source
                and table != source_table
                and any(m.target == target for m in mappers)
            ]
            if others:
                shared.append(target)
                continue
            op = mapper.cleanup_before(source, position, commit_ts_us)
            if op is not None:
                ops.append(op)
        return ops, shared

    def _snapshot_cleanup(self, event: ChangeEvent) -> list[RowOp]:
        # Every table of the source: the snapshot read them all, empty ones included (whose
        # rows Debezium never marks), and the last record may belong to an unmapped table.
        cleanups: dict[str, RowOp] = {}
        for (source, _), mappers in self._mappers.items():
            if source != event.source:
                continue
            for mapper in mappers:
                op = mapper.snapshot_cleanup(event)
                if op is not None:
                    cleanups.setdefault(op.table, op)
        return list(cleanups.values())

    def _map(self, event: ChangeEvent, mappers: tuple[TableMapper, ...]) -> list[RowOp]:
        if not mappers:
            return []
        try:
            if len(mappers) == 1:
                return mappers[0].map(event)
            ops: list[RowOp] = []
            for mapper in mappers:
                ops.extend(mapper.map(event))
            return ops
        except MappingError:
            raise
        except (ValueFailure, ArithmeticError, ValueError, TypeError, RecursionError) as exc:
            raise _unmappable(mappers[0], event.source, event.table, exc) from None

    def hints(
        self,
        source: str,
        source_table: str,
        target_types: Mapping[str, Mapping[str, str]],
    ) -> dict[str, str]:
        """source column -> PostgreSQL type to decode it as, for schemaless events.

        A column copied (or only trimmed, case-changed or defaulted) into a target column
        takes that column's type: from `target_types` (the database), else from `type:`.
        A column whose first step is a cast takes the cast's type. A column mapped two ways
        that disagree gets no hint.
        """
        found: dict[str, set[str]] = {}
        for doc, _, table in iter_tables(self.documents):
            if doc.spec.source != source or table.source_table != source_table:
                continue
            declared = self._targets[table.target].columns
            actual = target_types.get(table.target, {})
            for column, value in table.columns.items():
                hint = _hint(value, actual.get(column) or declared.get(column))
                if hint is not None:
                    found.setdefault(hint[0], set()).add(hint[1])
        return {name: types.pop() for name, types in found.items() if len(types) == 1}


def _unmappable(mapper: TableMapper, source: str, table: str, exc: Exception) -> MappingError:
    # The last line of defence for hostile values (a signalling NaN in a key, nesting deeper
    # than Python recurses): this event is poison, the daemon keeps running.
    return MappingError(
        f"{mapper.where_text}: cannot map this row: {type(exc).__name__}: {str(exc)[:200]}",
        source=source,
        table=table,
    )


_KEEPS_TYPE: Final = (str, DefaultIfNullStep)  # trim/upper/lower are named (str) steps


def _hint(value: str | ColumnSpec, column_type: str | None) -> tuple[str, str] | None:
    if isinstance(value, str):
        return None if column_type is None else (value, column_type)
    if value.from_ is None:
        return None
    steps = value.steps
    if steps and isinstance(steps[0], CastStep):
        return value.from_, _canonical(steps[0].cast)
    if all(isinstance(s, _KEEPS_TYPE) for s in steps) and column_type is not None:
        return value.from_, column_type
    return None
