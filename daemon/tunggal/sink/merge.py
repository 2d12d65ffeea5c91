"""The SQL of tables written by several sources: contributions, and the rows made from them.

Each source's latest change to each row is kept in the table's contributions table
(`mapping.dbinfo.contributions_table`): its mapped values, position, commit time and state
(live, soft or hard). A change from source S is compared only with S's own contribution, so
the order in which different sources' changes arrive cannot matter. After a batch has written
its contributions, the rows it touched are recomputed from them, set-based, by the rules of
`mapping.survivorship` (whose `resolve` is this file's Python twin):

    batch:  contributions upserted/withdrawn ──RETURNING key──▶ touched (temp table)
    end:    lock the table ─▶ recompute the touched keys ─▶ upsert / delete the target rows

The lock is a transaction-scoped advisory lock per target table, taken only for the
recompute: two Kafka instances may write contributions to the same row at once, and each
must recompute it after the other's commit, or one contribution would be missing from it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import psycopg
from psycopg import sql

from tunggal.mapping import TargetSpec
from tunggal.mapping.dbinfo import contributions_table
from tunggal.mapping.pgtypes import Family, parse_type
from tunggal.mapping.survivorship import (
    HARD,
    LIVE,
    SOFT,
    Contribution,
    Latest,
    MergeRules,
    Owner,
    Priority,
)

log = logging.getLogger(__name__)

# pg_advisory_xact_lock(int4, int4): our class of locks ('tung'), then hashtext(table).
_LOCK_CLASS: Final = 0x74756E67
# Key types that the text of a tombstone's key (`postgres.key_json`) casts back to exactly.
_TOMBSTONE_KEY_FAMILIES: Final = frozenset(
    {
        Family.TEXT,
        Family.SMALLINT,
        Family.INTEGER,
        Family.BIGINT,
        Family.NUMERIC,
        Family.BOOLEAN,
        Family.DATE,
        Family.UUID,
    }
)


def _ident(qualified: str) -> sql.Identifier:
    schema, _, table = qualified.partition(".")
    return sql.Identifier(schema, table)


def _ids(names: Sequence[str], prefix: str = "") -> sql.Composable:
    if prefix:
        return sql.SQL(", ").join(
            sql.SQL(f"{prefix}.{{}}").format(sql.Identifier(n)) for n in names
        )
    return sql.SQL(", ").join(map(sql.Identifier, names))


def _texts(values: Sequence[str]) -> sql.Composable:
    return sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(map(sql.Literal, values)))


def _match(names: Sequence[str], left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL(f"{left}.{{c}} = {right}.{{c}}").format(c=sql.Identifier(n)) for n in names
    )


@dataclass
class Recomputed:
    """What recomputing some rows did to the target."""

    upserted: int = 0
    deleted: int = 0
    conflicts: dict[str, int] = field(default_factory=dict)  # column -> rows in conflict


class MergeTable:
    """The statements of one target table written through contributions. Built once per
    mapping version; the texts are cached by the sink like its other statements."""

    def __init__(self, spec: TargetSpec, types: Mapping[str, str]) -> None:
        self.spec = spec
        self.rules: MergeRules = spec.merge
        self.name = spec.name
        self.key = spec.key
        self.values = tuple(self.rules.columns)
        self.types = types
        self.contributions = contributions_table(spec.name)
        digest = hashlib.blake2b(
            repr((self.name, self.key, [types.get(k) for k in self.key])).encode(), digest_size=8
        ).hexdigest()
        self.touched = f"tunggal_touched_{digest}"

    # -- the batch: contributions --------------------------------------------------------------

    def create_touched(self) -> sql.Composed:
        """The session's list of keys whose contributions this transaction changed."""
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(self.types[k])) for k in self.key
        )
        return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            sql.Identifier(self.touched), columns
        )

    def _into_touched(self, statement: sql.Composable) -> sql.Composed:
        return sql.SQL("WITH w AS ({}) INSERT INTO {} SELECT * FROM w").format(
            statement, sql.Identifier(self.touched)
        )

    def upsert(
        self,
        cols: tuple[str, ...],
        missing: frozenset[str],
        values: sql.Composable,
        alias: sql.Composable,
    ) -> sql.Composed:
        """Each row's source contribution, if newer than the one that source already gave.

        `values AS v(alias)` yields the mapped columns `cols` then _src, _pos, _ts, _k, as the
        sink's other upserts do. Unchanged TOAST values (`missing`) keep the stored value.
        """
        data = [c for c in cols if c not in self.key]
        updates: list[sql.Composable] = [
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
            for c in data
            if c not in missing
        ]
        updates += [
            sql.SQL("_tunggal_position = EXCLUDED._tunggal_position"),
            sql.SQL("_tunggal_ts = EXCLUDED._tunggal_ts"),
            sql.SQL("_tunggal_state = 'live'"),
        ]
        body = sql.SQL(
            "INSERT INTO {tbl} AS t ({key}, _tunggal_source, {data}_tunggal_position, _tunggal_ts,"
            " _tunggal_state) SELECT {vkey}, v._src, {vdata}v._pos, v._ts, 'live' "
            "FROM {values} AS v({alias}) "
            # A TRUNCATE's watermark keeps that source's older changes out for good.
            "WHERE NOT EXISTS (SELECT 1 FROM public.tunggal_truncations r "
            "  WHERE r.target_table = {name} AND r.source = v._src AND r.position > v._pos) "
            "ON CONFLICT ({key}, _tunggal_source) DO UPDATE SET {updates} "
            "WHERE t._tunggal_position < EXCLUDED._tunggal_position RETURNING {tkey}"
        ).format(
            tbl=_ident(self.contributions),
            key=_ids(self.key),
            data=sql.SQL("").join(sql.SQL("{}, ").format(sql.Identifier(c)) for c in data),
            vkey=_ids(self.key, "v"),
            vdata=sql.SQL("").join(sql.SQL("v.{}, ").format(sql.Identifier(c)) for c in data),
            values=values,
            alias=alias,
            name=sql.Literal(self.name),
            updates=sql.SQL(", ").join(updates),
            tkey=_ids(self.key, "t"),
        )
        return self._into_touched(body)

    def delete(self, soft: bool, values: sql.Composable, alias: sql.Composable) -> sql.Composed:
        """Withdraw each row's source contribution (keeping its values, for a soft row), or
        record the withdrawal when that source gave none: it keeps the source's own older
        changes out, as a tombstone does."""
        body = sql.SQL(
            "INSERT INTO {tbl} AS t ({key}, _tunggal_source, _tunggal_position, _tunggal_ts, "
            "_tunggal_state) SELECT {vkey}, v._src, v._pos, v._ts, {state} "
            "FROM {values} AS v({alias}) "
            # Replayed from before a TRUNCATE: that already withdrew it, at its own time.
            "WHERE NOT EXISTS (SELECT 1 FROM public.tunggal_truncations r "
            "  WHERE r.target_table = {name} AND r.source = v._src AND r.position > v._pos) "
            "ON CONFLICT ({key}, _tunggal_source) DO UPDATE SET "
            "_tunggal_position = EXCLUDED._tunggal_position, _tunggal_ts = EXCLUDED._tunggal_ts, "
            "_tunggal_state = EXCLUDED._tunggal_state "
            "WHERE t._tunggal_position < EXCLUDED._tunggal_position RETURNING {tkey}"
        ).format(
            tbl=_ident(self.contributions),
            key=_ids(self.key),
            vkey=_ids(self.key, "v"),
            state=sql.Literal(SOFT if soft else HARD),
            values=values,
            alias=alias,
            name=sql.Literal(self.name),
            tkey=_ids(self.key, "t"),
        )
        return self._into_touched(body)

    def withdraw(self, soft: bool) -> sql.Composed:
        """A TRUNCATE (or the end of a snapshot): every contribution the source gave before
        the position is withdrawn, at the truncate's commit time. Parameters: state's commit
        time, source, position."""
        body = sql.SQL(
            "UPDATE {tbl} AS t SET _tunggal_state = {state}, _tunggal_ts = %s "
            "WHERE _tunggal_source = %s AND _tunggal_position < %s AND _tunggal_state IN ({was}) "
            "RETURNING {tkey}"
        ).format(
            tbl=_ident(self.contributions),
            state=sql.Literal(SOFT if soft else HARD),
            was=sql.SQL(", ").join(map(sql.Literal, (LIVE,) if soft else (LIVE, SOFT))),
            tkey=_ids(self.key, "t"),
        )
        return self._into_touched(body)

    # -- the end of the batch: the visible rows ---------------------------------------------------

    def lock(self) -> sql.Composed:
        return sql.SQL("SELECT pg_advisory_xact_lock({}, hashtext({}))").format(
            sql.Literal(_LOCK_CLASS), sql.Literal(self.name)
        )

    def recompute(self, signature: str | None = None) -> sql.Composed:
        """Recompute the target rows of every touched key from their contributions.

        Returns one row: target rows deleted, target rows upserted, then per rule column the
        live rows whose eligible sources disagree on it.

        A row has at most one contribution per source, so the contributions are joined once
        per source (`p`: st_i, ts_i, p_i and each column the source maps, c_i_<n>) and the
        rules become scalar expressions over them, written out here for the table's sources:
        no sort, no window. For sources a, b and `latest` over both:
            CASE WHEN held_a AND (NOT held_b OR ts_a > ts_b) THEN c_a
                 WHEN held_b AND (NOT held_a OR ts_b >= ts_a) THEN c_b END
        (on equal commit times the greater source name wins: b).

        With `signature` (the rules the batch used), it also marks the table mixed when the
        stored rules are others (another instance's, or a reload's that failed half-way), so
        that the next start or reload under the stored rules recomputes it whole.
        """
        rules = self.rules
        sources = rules.sources
        index = {s: i for i, s in enumerate(sources)}

        def ref(name: str) -> sql.Composable:
            return sql.Identifier(name)

        def null(column: str) -> sql.Composable:
            # Typed: an untyped NULL in a CTE is text, which no other column type accepts.
            return sql.SQL("NULL::{}").format(sql.SQL(self.types[column]))

        def value(source: str, column: str) -> sql.Composable:
            if column not in rules.maps.get(source, ()):
                return null(column)
            return ref(f"c{index[source]}_{self.values.index(column)}")

        def live(i: int) -> sql.Composable:
            return sql.SQL("coalesce({} = 'live', false)").format(ref(f"st{i}"))

        def gone(i: int) -> sql.Composable:
            return sql.SQL("coalesce({} IN ('soft', 'hard'), false)").format(ref(f"st{i}"))

        def held(i: int) -> sql.Composable:
            return ref(f"h{i}")

        def latest(
            among: Sequence[str],
            cond: Callable[[int], sql.Composable],
            pick: Callable[[str], sql.Composable],
            none: sql.Composable,
        ) -> sql.Composable:
            """The `pick` of the source with the latest (commit time, name) where `cond`, or
            `none` when `among` is empty."""
            if not among:
                return none
            arms = []
            for s in among:
                i = index[s]
                beats = [
                    sql.SQL("(NOT {} OR {} {} {})").format(
                        cond(index[t]),
                        ref(f"ts{i}"),
                        sql.SQL(">" if s < t else ">="),
                        ref(f"ts{index[t]}"),
                    )
                    for t in among
                    if t != s
                ]
                arms.append(
                    sql.SQL("WHEN {} THEN {}").format(
                        sql.SQL(" AND ").join([cond(i), *beats]), pick(s)
                    )
                )
            return sql.SQL("CASE {} END").format(sql.SQL(" ").join(arms))

        # p: one row per touched key, each source's contribution side by side.
        joined: list[sql.Composable] = []
        picked: list[sql.Composable] = []
        for s in sources:
            i = index[s]
            alias = f"j{i}"
            picked += [
                sql.SQL(
                    "{a}._tunggal_state AS {st}, {a}._tunggal_ts AS {ts}, "
                    "{a}._tunggal_position AS {p}"
                ).format(
                    a=sql.Identifier(alias), st=ref(f"st{i}"), ts=ref(f"ts{i}"), p=ref(f"p{i}")
                ),
                *(
                    sql.SQL("{}.{} AS {}").format(
                        sql.Identifier(alias), sql.Identifier(c), value(s, c)
                    )
                    for c in self.values
                    if c in rules.maps[s]
                ),
            ]
            joined.append(
                sql.SQL("LEFT JOIN {tbl} {a} ON {match} AND {a}._tunggal_source = {src}").format(
                    tbl=_ident(self.contributions),
                    a=sql.Identifier(alias),
                    match=_match(self.key, alias, "k"),
                    src=sql.Literal(s),
                )
            )
        any_live = sql.SQL("({})").format(
            sql.SQL(" OR ").join(live(i) for i in range(len(sources)))
        )
        # q: who holds the row, and the withdrawal that decides a row nobody holds.
        removers = [s for s in sources if s in rules.deleted_by]
        gone_by = [gone(index[s]) for s in removers]
        q_exprs: list[sql.Composable] = [
            sql.SQL("{} AS _any_live").format(any_live),
            sql.SQL("{} AS _removed").format(
                sql.SQL(" OR ").join(gone_by) if gone_by else sql.SQL("false")
            ),
            sql.SQL("{} AS _rst, {} AS _rts").format(
                latest(removers, gone, lambda s: ref(f"st{index[s]}"), sql.SQL("NULL::text")),
                latest(removers, gone, lambda s: ref(f"ts{index[s]}"), sql.SQL("NULL::bigint")),
            ),
            sql.SQL("{} AS _gst, {} AS _gts").format(
                latest(sources, gone, lambda s: ref(f"st{index[s]}"), sql.SQL("NULL::text")),
                latest(sources, gone, lambda s: ref(f"ts{index[s]}"), sql.SQL("NULL::bigint")),
            ),
            *(
                sql.SQL(
                    "CASE WHEN {any} THEN {live} ELSE coalesce({st} = 'soft', false) END AS {h}"
                ).format(any=any_live, live=live(i), st=ref(f"st{i}"), h=held(i))
                for i in range(len(sources))
            ),
        ]
        # m: the visible row.
        columns: list[sql.Composable] = []
        flags: list[sql.Composable] = []
        for n, (column, rule) in enumerate(rules.columns.items()):
            if isinstance(rule, Latest):
                expr = latest(
                    rule.eligible, held, functools.partial(value, column=column), null(column)
                )
            elif isinstance(rule, Priority):
                arms = [
                    sql.SQL("WHEN {h} AND {v} IS NOT NULL THEN {v}").format(
                        h=held(index[s]), v=value(s, column)
                    )
                    for s in rule.order
                ]
                expr = (
                    sql.SQL("CASE {} END").format(sql.SQL(" ").join(arms)) if arms else null(column)
                )
            else:
                assert isinstance(rule, Owner)
                owner = rule.source
                expr = (
                    sql.SQL("CASE WHEN {} THEN {} END").format(
                        held(index[owner]), value(owner, column)
                    )
                    if owner in index
                    else null(column)
                )
            columns.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(column)))
            judged = [s for s in rules.conflict_sources(column) if column in rules.maps.get(s, ())]
            pairs = [
                sql.SQL("({la} AND {lb} AND {va}::text <> {vb}::text)").format(
                    la=live(index[a]), lb=live(index[b]), va=value(a, column), vb=value(b, column)
                )
                for x, a in enumerate(judged)
                for b in judged[x + 1 :]
            ]
            flags.append(
                sql.SQL("coalesce({}, false) AS {}").format(
                    sql.SQL(" OR ").join(pairs) if pairs else sql.SQL("false"),
                    sql.Identifier(f"_c{n}"),
                )
            )
        status = sql.SQL(
            "CASE WHEN _removed THEN _rst WHEN _any_live THEN 'live' "
            "WHEN _gst IS NOT NULL THEN _gst ELSE 'hard' END"
        )
        bookkeeping = [
            sql.SQL("{} AS _src").format(latest(sources, held, sql.Literal, sql.SQL("NULL::text"))),
            sql.SQL("{} AS _pos").format(
                latest(sources, held, lambda s: ref(f"p{index[s]}"), sql.SQL("NULL::numeric"))
            ),
            sql.SQL("{} AS _lts").format(
                latest(sources, held, lambda s: ref(f"ts{index[s]}"), sql.SQL("NULL::bigint"))
            ),
        ]
        soft = rules.soft_delete_column
        target_cols = [
            *self.key,
            *self.values,
            "_tunggal_source",
            "_tunggal_position",
            "_tunggal_ts",
        ]
        selected = [
            *(sql.SQL("m.{}").format(sql.Identifier(c)) for c in [*self.key, *self.values]),
            sql.SQL("m._src"),
            sql.SQL("m._pos"),
            sql.SQL("m._lts"),
        ]
        if soft is not None:
            target_cols.append(soft)
            selected.append(
                sql.SQL("CASE WHEN m._status = 'soft' THEN to_timestamp(m._dts / 1000000.0) END")
            )
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
            for c in target_cols
            if c not in self.key
        )
        counts = [
            sql.SQL("count(*) FILTER (WHERE m._status = 'live' AND m.{})").format(
                sql.Identifier(f"_c{n}")
            )
            for n in range(len(self.values))
        ]
        return sql.SQL(
            "WITH k AS (SELECT DISTINCT {key} FROM {touched}), "
            "p AS (SELECT {kkey}, {picked} FROM k {joined}), "
            "q AS (SELECT p.*, {q} FROM p), "
            "m AS (SELECT {key}, {status} AS _status, "
            "  CASE WHEN _removed THEN _rts ELSE _gts END AS _dts, "
            "  {bookkeeping}{columns}{flags} FROM q), "
            "d AS (DELETE FROM {target} AS t USING m WHERE {tmatch} AND m._status = 'hard' "
            "  RETURNING 1), "
            "u AS (INSERT INTO {target} AS t ({target_cols}) SELECT {selected} FROM m "
            "  WHERE m._status <> 'hard' ON CONFLICT ({key}) DO UPDATE SET {updates} RETURNING 1)"
            "{state} SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM u){counts} FROM m"
        ).format(
            key=_ids(self.key),
            touched=sql.Identifier(self.touched),
            kkey=_ids(self.key, "k"),
            picked=sql.SQL(", ").join(picked),
            joined=sql.SQL(" ").join(joined),
            q=sql.SQL(", ").join(q_exprs),
            status=status,
            bookkeeping=sql.SQL(", ").join(bookkeeping),
            columns=sql.SQL("").join(sql.SQL(", {}").format(c) for c in columns),
            flags=sql.SQL("").join(sql.SQL(", {}").format(f) for f in flags),
            target=_ident(self.name),
            tmatch=_match(self.key, "t", "m"),
            target_cols=_ids(target_cols),
            selected=sql.SQL(", ").join(selected),
            updates=updates,
            counts=sql.SQL("").join(sql.SQL(", {}").format(c) for c in counts),
            state=sql.SQL("")
            if signature is None
            else sql.SQL(
                ", s AS (UPDATE public.tunggal_merge_state SET signature = {sig}, "
                "rules = {rules}::jsonb, updated_at = now() "
                "WHERE target_table = {name} AND signature <> {sig})"
            ).format(
                sig=sql.Literal(signature),
                rules=sql.Literal(rules_json(self.rules)),
                name=sql.Literal(self.name),
            ),
        )

    def recomputed(self, row: Sequence[Any]) -> Recomputed:
        out = Recomputed(deleted=int(row[0]), upserted=int(row[1]))
        for column, n in zip(self.values, row[2:], strict=True):
            if n:
                out.conflicts[column] = int(n)
        return out

    # -- start-up and mapping changes --------------------------------------------------------------

    def touch_all(self) -> sql.Composed:
        """Every key with a contribution, for a whole-table recompute."""
        return sql.SQL("INSERT INTO {} SELECT DISTINCT {} FROM {}").format(
            sql.Identifier(self.touched), _ids(self.key), _ident(self.contributions)
        )

    def seed(self) -> list[sql.Composed]:
        """Contributions for rows written before the table had any (an upgrade, or a second
        source added to its mappings); README "Many sources, one row" gives the rules.

        1. The source that wrote a row last (`_tunggal_source`) gets it, at its position.
        2. Another writer gets it at position 0 and time 0 (so that any real change of its own
           replaces it) when a column that only it could have written holds a value.
        3. Tombstones become that source's withdrawals.
        """
        rules, soft = self.rules, self.rules.soft_delete_column
        statements = []
        state = (
            sql.SQL("CASE WHEN {} IS NULL THEN 'live' ELSE 'soft' END").format(sql.Identifier(soft))
            if soft
            else sql.Literal(LIVE)
        )
        for source in rules.sources:
            cols = [c for c in self.values if c in rules.maps[source]]
            statements.append(
                self._seed_insert(
                    cols,
                    sql.SQL(
                        "SELECT {key}, _tunggal_source, {cols}_tunggal_position, _tunggal_ts, "
                        "{state} FROM {target} WHERE _tunggal_source = {src} "
                        "AND _tunggal_position IS NOT NULL AND _tunggal_ts IS NOT NULL"
                    ).format(
                        key=_ids(self.key),
                        cols=sql.SQL("").join(
                            sql.SQL("{}, ").format(sql.Identifier(c)) for c in cols
                        ),
                        state=state,
                        target=_ident(self.name),
                        src=sql.Literal(source),
                    ),
                    update=[*cols, "_tunggal_position", "_tunggal_ts", "_tunggal_state"],
                )
            )
            # Columns this source maps that the row's last writer does not: their values came
            # from another source, and if only this one maps them, from this one.
            own = {
                c: sql.SQL("CASE WHEN _tunggal_source = ANY({}) THEN NULL ELSE {} END").format(
                    _texts([s for s in rules.sources if c in rules.maps[s]]), sql.Identifier(c)
                )
                for c in cols
                if sum(c in rules.maps[s] for s in rules.sources) == 1
            }
            if not own:
                continue
            statements.append(
                self._seed_insert(
                    cols,
                    sql.SQL(
                        "SELECT {key}, {src}, {values}0, 0, 'live' FROM {target} "
                        "WHERE _tunggal_source <> {src} AND _tunggal_source = ANY({sources}) "
                        "AND ({any})"
                    ).format(
                        key=_ids(self.key),
                        src=sql.Literal(source),
                        values=sql.SQL("").join(
                            sql.SQL("{}, ").format(own.get(c, sql.NULL)) for c in cols
                        ),
                        target=_ident(self.name),
                        sources=_texts(rules.sources),
                        any=sql.SQL(" OR ").join(
                            sql.SQL("({}) IS NOT NULL").format(p) for p in own.values()
                        ),
                    ),
                    update=None,
                )
            )
        key_types = [self.types[k] for k in self.key]
        families = [parse_type(t) for t in key_types]
        if all(f is not None and f.family in _TOMBSTONE_KEY_FAMILIES for f in families):
            keys = sql.SQL(", ").join(
                sql.SQL("(d.key_json::jsonb ->> {})::{}").format(sql.Literal(i), sql.SQL(t))
                for i, t in enumerate(key_types)
            )
            statements.append(
                self._seed_insert(
                    [],
                    sql.SQL(
                        "SELECT {keys}, d.source, d.position, d.ts, 'hard' "
                        "FROM public.tunggal_tombstones d WHERE d.target_table = {name} "
                        "AND d.source = ANY({sources})"
                    ).format(keys=keys, name=sql.Literal(self.name), sources=_texts(rules.sources)),
                    update=["_tunggal_position", "_tunggal_ts", "_tunggal_state"],
                )
            )
        else:
            log.warning(
                "%s: its key types (%s) do not come back from tunggal_tombstones exactly; "
                "rows deleted before it had contributions are not carried over",
                self.name,
                ", ".join(key_types),
            )
        return statements

    def _seed_insert(
        self, cols: Sequence[str], select: sql.Composable, *, update: Sequence[str] | None
    ) -> sql.Composed:
        """INSERT the rows of `select` (key, source, `cols`, position, time, state) as
        contributions: a newer one replaces the stored one (`update`: its columns), or
        with `update` None an existing one is kept."""
        conflict = (
            sql.SQL("NOTHING")
            if update is None
            else sql.SQL(
                "UPDATE SET {} WHERE t._tunggal_position < EXCLUDED._tunggal_position"
            ).format(
                sql.SQL(", ").join(
                    sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in update
                )
            )
        )
        return self._into_touched(
            sql.SQL(
                "INSERT INTO {tbl} AS t ({key}, _tunggal_source, {cols}_tunggal_position, "
                "_tunggal_ts, _tunggal_state) {select} "
                "ON CONFLICT ({key}, _tunggal_source) DO {conflict} RETURNING {tkey}"
            ).format(
                tbl=_ident(self.contributions),
                key=_ids(self.key),
                cols=sql.SQL("").join(sql.SQL("{}, ").format(sql.Identifier(c)) for c in cols),
                select=select,
                conflict=conflict,
                tkey=_ids(self.key, "t"),
            )
        )


def rules_json(rules: MergeRules) -> str:
    """The rules as `tunggal_merge_state.rules` keeps them, for people reading the table."""
    return orjson.dumps(
        {
            "sources": list(rules.sources),
            "columns": {c: r.describe() for c, r in rules.columns.items()},
            "deleted_by": sorted(rules.deleted_by),
        }
    ).decode()


# --- reading, for `tunggal explain` and `tunggal conflicts` -------------------------------------


def _key_where(spec: TargetSpec, types: Mapping[str, str], alias: str = "") -> sql.Composable:
    prefix = f"{alias}." if alias else ""
    return sql.SQL(" AND ").join(
        sql.SQL(f"{prefix}{{}} = %s::{{}}").format(sql.Identifier(k), sql.SQL(types[k]))
        for k in spec.key
    )


def read_row(
    cur: psycopg.Cursor[Any], spec: TargetSpec, types: Mapping[str, str], key: Sequence[str]
) -> dict[str, Any] | None:
    """The target row with key `key` (values as text, cast by the database): its mapped
    columns and bookkeeping, or None."""
    columns = [
        c
        for c in [
            *spec.columns,
            spec.soft_delete_column,
            "_tunggal_source",
            "_tunggal_position",
            "_tunggal_ts",
        ]
        if c is not None and c in types
    ]
    row = cur.execute(
        sql.SQL("SELECT {} FROM {} WHERE {}").format(
            _ids(list(dict.fromkeys(columns))), _ident(spec.name), _key_where(spec, types)
        ),
        list(key),
    ).fetchone()
    return None if row is None else dict(zip(dict.fromkeys(columns), row, strict=True))


def read_contributions(
    cur: psycopg.Cursor[Any],
    spec: TargetSpec,
    types: Mapping[str, str],
    stored: Mapping[str, str],
    key: Sequence[str],
) -> list[Contribution]:
    """Every stored contribution to one row, whether its source still writes the table or not.
    `stored`: the contributions table's columns (one added to the mappings since may lack)."""
    values = [c for c in stored if c not in spec.key and not c.startswith("_tunggal_")]
    rows = cur.execute(
        sql.SQL(
            "SELECT _tunggal_source, _tunggal_position, _tunggal_ts, _tunggal_state{} "
            "FROM {} WHERE {} ORDER BY _tunggal_source"
        ).format(
            sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(c)) for c in values),
            _ident(contributions_table(spec.name)),
            _key_where(spec, types),
        ),
        list(key),
    ).fetchall()
    return [
        Contribution(
            source=row[0],
            values=dict(zip(values, row[4:], strict=True)),
            position=int(row[1]),
            commit_ts_us=int(row[2]),
            state=row[3],
        )
        for row in rows
    ]


@dataclass(frozen=True)
class Disagreement:
    """One column of one existing row on which the holding sources disagree."""

    table: str
    key: dict[str, Any]
    column: str
    values: list[dict[str, Any]]  # {"source", "value" (as text), "ts" (µs), "position"}


def read_conflicts(
    cur: psycopg.Cursor[Any], spec: TargetSpec, types: Mapping[str, str], limit: int
) -> list[Disagreement]:
    """The live rows of a merged table whose holding sources give a column different non-NULL
    values, as the conflicts metric counts them (sources the column's rule can pick)."""
    rules = spec.merge
    judged = [(c, rules.conflict_sources(c)) for c in rules.columns]
    judged = [(c, sources) for c, sources in judged if len(sources) > 1 and c in types]
    if not judged:
        return []
    pairs = sql.SQL(", ").join(
        sql.SQL("({}, c.{}::text, {})").format(sql.Literal(c), sql.Identifier(c), _texts(sources))
        for c, sources in judged
    )
    live: sql.Composable = sql.SQL("")
    if rules.soft_delete_column is not None:
        live = sql.SQL(" AND t.{} IS NULL").format(sql.Identifier(rules.soft_delete_column))
    rows = cur.execute(
        sql.SQL(
            "SELECT {ckey}, x.col, jsonb_agg(jsonb_build_object('source', c._tunggal_source, "
            "'value', x.val, 'ts', c._tunggal_ts, 'position', c._tunggal_position::text) "
            "ORDER BY c._tunggal_source) FROM {contributions} c "
            "CROSS JOIN LATERAL (VALUES {pairs}) AS x(col, val, judged) "
            "WHERE c._tunggal_state = 'live' AND x.val IS NOT NULL "
            "AND c._tunggal_source = ANY(x.judged) "
            "AND EXISTS (SELECT 1 FROM {target} t WHERE {tmatch}{live}) "
            "GROUP BY {ckey}, x.col HAVING count(DISTINCT x.val) > 1 "
            "ORDER BY x.col, {ckey} LIMIT %s"
        ).format(
            ckey=_ids(spec.key, "c"),
            contributions=_ident(contributions_table(spec.name)),
            pairs=pairs,
            target=_ident(spec.name),
            tmatch=_match(spec.key, "t", "c"),
            live=live,
        ),
        (limit,),
    ).fetchall()
    n = len(spec.key)
    return [
        Disagreement(spec.name, dict(zip(spec.key, row[:n], strict=True)), row[n], row[n + 1])
        for row in rows
    ]
