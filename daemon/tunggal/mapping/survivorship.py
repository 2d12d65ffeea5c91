"""Survivorship: how the sources that write one target table make each of its rows.

Pure, like the rest of `mapping`. The sink stores each source's latest contribution to a row
(its mapped values, position, commit time and whether it withdrew) and recomputes the visible
row from them in SQL (`sink.merge`); `resolve` below is the same rule in Python, for `tunggal
explain` and the tests. Both must agree, or `explain` would name the wrong source.

The rules, for one target row:
- A source *holds* the row while its latest change to it is not a delete (or a truncate).
- The row exists while any source holds it. A table may name sources whose delete removes the
  row for everyone (`deleted_by`); otherwise a delete withdraws only that source's values, and
  its columns fall back to the sources that remain.
- When nobody holds it, the latest withdrawal decides: a soft one leaves the row, soft-deleted,
  with the values the soft-deleting sources last gave; a hard one removes it.
- Each column takes its value by its rule, among the holding sources that map it:
  `latest` (the source whose latest change committed last; ties go to the greater source name),
  `priority` (the first listed source with a non-NULL value), or `owner` (only that source).

Worked example, `opd` written by e_planning (nama, alamat) and sipkd (nama, singkatan), default
`latest`: e_planning wrote {nama: A, alamat: X} at t=150, sipkd {nama: B, singkatan: S} at t=200.
The row is {nama: B, alamat: X, singkatan: S}, whatever order the changes arrived in. sipkd then
deletes it: {nama: A, alamat: X, singkatan: NULL}, from e_planning alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from tunggal.mapping.spec import ColumnSpec, MergeSpec, OwnerRule, PriorityRule

State = Literal["live", "soft", "hard"]
LIVE: Final = "live"
SOFT: Final = "soft"
HARD: Final = "hard"


@dataclass(frozen=True, slots=True)
class Latest:
    """The value of the holding source whose latest change committed last."""

    eligible: tuple[str, ...]  # the sources that map the column, sorted

    def describe(self) -> str:
        return "latest"

    @property
    def candidates(self) -> tuple[str, ...]:
        return self.eligible


@dataclass(frozen=True, slots=True)
class Priority:
    """The first source in `order` that holds the row with a non-NULL value."""

    order: tuple[str, ...]  # only sources that map the column

    def describe(self) -> str:
        return "priority " + " > ".join(self.order)

    @property
    def candidates(self) -> tuple[str, ...]:
        return self.order


@dataclass(frozen=True, slots=True)
class Owner:
    """Only `source` writes the column."""

    source: str

    def describe(self) -> str:
        return f"owner {self.source}"

    @property
    def candidates(self) -> tuple[str, ...]:
        return (self.source,)


Rule = Latest | Priority | Owner


@dataclass(frozen=True)
class MergeRules:
    """The resolved rules of one target table, as the sink's SQL and `resolve` apply them."""

    table: str
    key: tuple[str, ...]
    sources: tuple[str, ...]  # the sources whose mappings write the table, sorted
    maps: Mapping[str, frozenset[str]]  # source -> the target columns it maps (key included)
    columns: Mapping[str, Rule]  # every mapped non-key column, in target order
    deleted_by: frozenset[str] = frozenset()
    soft_delete_column: str | None = None
    # source -> the columns it maps to a constant (`const:`): they differ by design
    constants: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def multi_source(self) -> bool:
        return len(self.sources) > 1

    def conflict_sources(self, column: str) -> tuple[str, ...]:
        """Sources whose disagreement on `column` is a conflict: those its rule can pick that
        do not map it to a constant (each system's own `sumber_data` differs by design). An
        owned column has none: the admins chose to ignore the other sources."""
        rule = self.columns[column]
        if isinstance(rule, Owner):
            return ()
        return tuple(s for s in rule.candidates if column not in self.constants.get(s, frozenset()))

    def signature(self) -> str:
        """Changes whenever the rows these rules compute could change (rules, writers, the
        columns each maps): the sink then recomputes the whole table from its contributions."""
        data = {
            "table": self.table,
            "key": list(self.key),
            "sources": list(self.sources),
            "maps": {s: sorted(cols) for s, cols in sorted(self.maps.items())},
            "columns": [[c, type(r).__name__, list(r.candidates)] for c, r in self.columns.items()],
            "deleted_by": sorted(self.deleted_by),
            "soft": self.soft_delete_column,
        }
        return hashlib.sha256(orjson.dumps(data)).hexdigest()


def build_rules(
    table: str,
    key: Sequence[str],
    writers: Sequence[tuple[str, Mapping[str, str | ColumnSpec]]],
    merge: MergeSpec | None = None,
    soft_delete_column: str | None = None,
) -> MergeRules:
    """The rules the mappings give a target table; assumes the loader validated them.

    `writers`: (source, its `columns:`) per mapping entry, in file order; a source with
    several entries maps the union of theirs.
    """
    maps: dict[str, set[str]] = {}
    constants: dict[str, set[str]] = {}
    order: list[str] = []
    for source, cols in writers:
        for col, value in cols.items():
            maps.setdefault(source, set()).add(col)
            if isinstance(value, ColumnSpec) and value.has("const"):
                constants.setdefault(source, set()).add(col)
            if col not in order:
                order.append(col)
    sources = tuple(sorted(maps))
    rules: dict[str, Rule] = {}
    for col in order:
        if col in key or col == soft_delete_column:
            continue
        mappers = tuple(s for s in sources if col in maps[s])
        spec = "latest" if merge is None else merge.columns.get(col, merge.default)
        rules[col] = _rule(spec, mappers)
    return MergeRules(
        table=table,
        key=tuple(key),
        sources=sources,
        maps={s: frozenset(c) for s, c in maps.items()},
        columns=rules,
        deleted_by=frozenset(merge.deleted_by if merge is not None else ()),
        soft_delete_column=soft_delete_column,
        constants={s: frozenset(c) for s, c in constants.items()},
    )


def _rule(spec: str | PriorityRule | OwnerRule, mappers: tuple[str, ...]) -> Rule:
    if isinstance(spec, OwnerRule):
        return Owner(spec.owner)
    if isinstance(spec, PriorityRule):
        # A listed source that does not map this column has no value for it; leaving it out
        # means the SQL never reads a value a source left there before its mapping changed.
        return Priority(tuple(s for s in spec.priority if s in mappers))
    return Latest(mappers)


# --- the rules in Python ---------------------------------------------------------------------


@dataclass(frozen=True)
class Contribution:
    """One source's latest change to one target row, as the sink keeps it."""

    source: str
    values: Mapping[str, Any]  # the target columns it maps
    position: int
    commit_ts_us: int
    state: State = LIVE

    @property
    def order(self) -> tuple[int, str]:
        """Later commit first; equal times go to the greater source name (as in SQL)."""
        return (self.commit_ts_us, self.source)


@dataclass(frozen=True)
class Resolved:
    """The visible row the rules make of a row's contributions."""

    state: State  # live: the row exists; soft: it exists soft-deleted; hard: it does not
    values: dict[str, Any] = field(default_factory=dict)  # per rule column
    supplier: dict[str, str | None] = field(default_factory=dict)  # column -> source, or None
    latest: Contribution | None = None  # the row's bookkeeping: the latest considered source
    deleted_ts_us: int | None = None  # soft: when (the deciding withdrawal's commit time)
    conflicts: tuple[str, ...] = ()  # columns whose eligible holders disagree (live rows only)


def resolve(rules: MergeRules, contributions: Iterable[Contribution]) -> Resolved:
    """The visible row. Contributions of sources that no longer write the table are ignored."""
    mine = [c for c in contributions if c.source in rules.maps]
    live = [c for c in mine if c.state == LIVE]
    withdrawn = [c for c in mine if c.state != LIVE]
    removers = [c for c in withdrawn if c.source in rules.deleted_by]
    deciding: Contribution | None = None
    state: State
    if removers:
        deciding = max(removers, key=lambda c: c.order)
        state = deciding.state
    elif live:
        state = LIVE
    elif withdrawn:
        deciding = max(withdrawn, key=lambda c: c.order)
        state = deciding.state
    else:
        return Resolved(HARD)
    if state == HARD:
        return Resolved(HARD)
    considered = {c.source: c for c in (live or [c for c in mine if c.state == SOFT])}
    values: dict[str, Any] = {}
    supplier: dict[str, str | None] = {}
    conflicts: list[str] = []
    for column, rule in rules.columns.items():
        chosen = _choose(rule, column, considered)
        values[column] = None if chosen is None else chosen.values.get(column)
        supplier[column] = None if chosen is None else chosen.source
        if state == LIVE and _disagree(column, rules.conflict_sources(column), considered):
            conflicts.append(column)
    latest = max(considered.values(), key=lambda c: c.order)
    return Resolved(
        state,
        values,
        supplier,
        latest,
        deciding.commit_ts_us if state == SOFT and deciding is not None else None,
        tuple(conflicts),
    )


def _choose(rule: Rule, column: str, held: Mapping[str, Contribution]) -> Contribution | None:
    if isinstance(rule, Latest):
        found = [held[s] for s in rule.eligible if s in held]
        return max(found, key=lambda c: c.order) if found else None
    if isinstance(rule, Priority):
        for source in rule.order:
            c = held.get(source)
            if c is not None and c.values.get(column) is not None:
                return c
        return None
    return held.get(rule.source)


def _disagree(column: str, sources: tuple[str, ...], held: Mapping[str, Contribution]) -> bool:
    seen = {
        _comparable(held[s].values.get(column))
        for s in sources
        if s in held and held[s].values.get(column) is not None
    }
    return len(seen) > 1


def _comparable(value: Any) -> Any:
    """A hashable stand-in for a value (jsonb arrives as dicts and lists)."""
    try:
        hash(value)
    except TypeError:
        return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS)
    return value
