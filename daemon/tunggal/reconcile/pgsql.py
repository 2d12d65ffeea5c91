"""The checksum SQL of `tunggal verify`, the same on every PostgreSQL it runs on: the target,
and a PostgreSQL source whose mapping it computes there (`reconcile.plan`).

A row's key hash and row hash are `hash_record_extended` over the row's values in the target's
column types (PostgreSQL 14+). Each type's extended hash agrees with its equality, so values
that the target holds equal hash alike however they are spelt (numeric 1.5 and 1.50, a jsonb's
key order, an interval of '1 mon' and '30 days'). Types without such a hash (json, xml, money,
bit, the geometric types) take part as their text. A region's checksum is the count and the
sum of its rows' hashes (see `reconcile.buckets`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from psycopg import sql

KEY_SEED: Final = 0  # seeds of the key hash and the row hash: independent hashes
ROW_SEED: Final = 1
MIN_VERSION: Final = 140000  # hash_record_extended; TID range scans


def ident(qualified: str) -> sql.Identifier:
    schema, _, table = qualified.partition(".")
    return sql.Identifier(schema, table)


@dataclass(frozen=True)
class Hashed:
    """One compared value as SQL over the rows of some FROM clause, in the target's type."""

    expr: sql.Composable
    hashable: bool  # has an extended hash (and equality); else it takes part as text

    @property
    def hashed(self) -> sql.Composable:
        return self.expr if self.hashable else sql.SQL("({})::text").format(self.expr)


def record_hash(values: Sequence[Hashed], seed: int) -> sql.Composed:
    return sql.SQL("hash_record_extended(ROW({}), {})").format(
        sql.SQL(", ").join(v.hashed for v in values), sql.Literal(seed)
    )


def regions_predicate(
    key_hash: sql.Composable, regions: Mapping[int, Sequence[int]]
) -> sql.Composed:
    """`key_hash` in any of the regions ({bits: values}, see `buckets.by_bits`)."""
    arms = [
        sql.SQL("({} & {}) = ANY({})").format(
            key_hash, sql.Literal((1 << bits) - 1), sql.Literal(list(values))
        )
        for bits, values in sorted(regions.items())
    ]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(arms) if arms else sql.SQL("false"))


def sums_query(
    source: sql.Composable,
    where: sql.Composable,
    key: Sequence[Hashed],
    row: Sequence[Hashed],
    bits: int,
    regions: Mapping[int, Sequence[int]] | None = None,
    block_range: tuple[int, int | None] | None = None,
) -> sql.Composed:
    """(region value, rows, sum of row hashes) per region of `bits` bits, over the rows of
    `source` (a FROM item aliased t) matching `where`; only `regions` if given; only the heap
    blocks [first, last) if `block_range` is given (a TID range scan: progress, and no sort of
    the whole table)."""
    kh = record_hash(key, KEY_SEED)
    conditions: list[sql.Composable] = [where]
    if regions is not None:
        conditions.append(regions_predicate(kh, regions))
    if block_range is not None:
        first, last = block_range
        conditions.append(sql.SQL("t.ctid >= {}::tid").format(sql.Literal(f"({first},0)")))
        if last is not None:
            conditions.append(sql.SQL("t.ctid < {}::tid").format(sql.Literal(f"({last},0)")))
    return sql.SQL(
        "SELECT (h.kh & {mask}) AS region, count(*) AS n, sum(h.rh) AS s FROM "
        "(SELECT {kh} AS kh, {rh} AS rh FROM {source} WHERE {where}) AS h GROUP BY 1"
    ).format(
        mask=sql.Literal((1 << bits) - 1),
        kh=kh,
        rh=record_hash([*key, *row], ROW_SEED),
        source=source,
        where=sql.SQL(" AND ").join(conditions),
    )


def read_sums(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[int, int, int]]:
    """The rows of `sums_query` as ints, one at a time (a level has up to 65,536)."""
    for region, n, total in rows:
        yield int(region), int(n), int(total)


# Set on every connection verify opens, source or target: values read as text (and hashed as
# text) come out alike, and timestamps are read in UTC like the sink writes them.
SESSION_SETTINGS: Final = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3 "
    "-c bytea_output=hex"
)

_PROBE: Final = "SELECT hash_record_extended(ROW(NULL::{}), 0)"


def hashable_types(cur: Any, types: Sequence[str]) -> set[str]:
    """Which of these column types have an extended hash, asked of the database itself.
    Each probe runs in a savepoint: a type without one fails its statement."""
    found: set[str] = set()
    for ctype in sorted(set(types)):
        try:
            with cur.connection.transaction():
                cur.execute(sql.SQL(_PROBE).format(sql.SQL(ctype)))
        except Exception:
            continue
        found.add(ctype)
    return found
