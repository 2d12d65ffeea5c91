"""Convergence, as a property: random histories of 2-3 sources writing one target table, applied
in random interleavings, batches, replays and restarts through the real mapping, collapse and
sink into a real PostgreSQL, always leave the same target, equal to the small model below.

The model is written out here on purpose, plainly, apart from `mapping.survivorship`: it is the
rules as the README states them. The test also checks that `survivorship.resolve` (what
`tunggal explain` uses) names the same values as the SQL produced.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tunggal.devtools.pgcluster import PgCluster
from tunggal.events.model import ChangeEvent, Op
from tunggal.mapping import MappingSet, load_mappings
from tunggal.mapping.survivorship import resolve
from tunggal.sink.collapse import collapse
from tunggal.sink.merge import read_contributions
from tunggal.sink.postgres import PostgresSink
from tunggal.sink.schema import apply_schema, plan_schema

pytestmark = pytest.mark.integration

COLUMNS = ("v1", "v2", "v3")
KEYS = (1, 2, 3, 4)
BASE_TS = 1_767_225_600_000_000
TARGET_DDL = (
    "CREATE TABLE t (id integer PRIMARY KEY, v1 text, v2 integer, v3 text, deleted_at timestamptz)"
)


# --- the scenario: mappings and histories ---------------------------------------------------


@dataclass
class Scenario:
    sources: list[str]
    maps: dict[str, list[str]]  # source -> value columns it maps
    soft: dict[str, bool]  # source -> delete: soft
    rules: dict[str, tuple[str, Any]]  # column -> ("latest", None) | ("priority", [..]) | ...
    deleted_by: list[str]
    # source -> its history: (op, key, new key, values, position, commit ts)
    history: dict[str, list[tuple[str, int | None, int | None, dict[str, Any], int, int]]] = field(
        default_factory=dict
    )

    def mapping_files(self, folder: Path) -> list[Path]:
        paths = []
        for i, source in enumerate(self.sources):
            cols = {"id": "id", **{c: c for c in self.maps[source]}}
            text = (
                f"source: {source}\ntables:\n  - from: public.t\n    to: t\n    key: [id]\n"
                f"    truncate: delete_source_rows\n"
                f"    delete: {'soft' if self.soft[source] else 'hard'}\n"
                f"    columns: {{{', '.join(f'{k}: {v}' for k, v in cols.items())}}}\n"
            )
            if i == 0:
                text += "    merge:\n      columns:" + ("\n" if self.rules else " {}\n")
                for column, (kind, arg) in self.rules.items():
                    rule = (
                        "latest"
                        if kind == "latest"
                        else f"{{priority: [{', '.join(arg)}]}}"
                        if kind == "priority"
                        else f"{{owner: {arg}}}"
                    )
                    text += f"        {column}: {rule}\n"
                text += f"      deleted_by: [{', '.join(self.deleted_by)}]\n"
            path = folder / f"{source}.yaml"
            path.write_text(text)
            paths.append(path)
        return paths


values_st = st.fixed_dictionaries(
    {
        "v1": st.sampled_from([None, "x", "y"]),
        "v2": st.sampled_from([None, 1, 2]),
        "v3": st.sampled_from([None, "p", "q"]),
    }
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    sources = ["a", "b", "c"][: draw(st.integers(2, 3))]
    maps = {}
    for source in sources:
        maps[source] = draw(
            st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=3, unique=True).map(
                lambda cols: sorted(cols)
            )
        )
    rules: dict[str, tuple[str, Any]] = {}
    for column in COLUMNS:
        mappers = [s for s in sources if column in maps[s]]
        if not mappers:
            continue
        kind = draw(st.sampled_from(["latest", "priority", "owner"]))
        if kind == "priority":
            rules[column] = ("priority", draw(st.permutations(mappers)))
        elif kind == "owner":
            rules[column] = ("owner", draw(st.sampled_from(mappers)))
        else:
            rules[column] = ("latest", None)
    scenario = Scenario(
        sources=sources,
        maps=maps,
        soft={s: draw(st.booleans()) for s in sources},
        rules=rules,
        deleted_by=draw(st.lists(st.sampled_from(sources), max_size=1, unique=True)),
    )
    for n, source in enumerate(sources):
        present: set[int] = set()
        events = []
        position = 1000
        # Commit times from a narrow range, so that different sources often commit at once
        # (ties go to the greater source name).
        ts = BASE_TS
        for _ in range(draw(st.integers(1, 12))):
            position += 10 + n  # positions of different sources never line up by design
            ts += draw(st.sampled_from([0, 1000]))
            kinds = ["insert"] if len(present) < len(KEYS) else []
            if present:
                kinds += (
                    ["update", "update", "delete", "rekey"]
                    if len(present) < len(KEYS)
                    else [
                        "update",
                        "delete",
                    ]
                )
            kinds.append("truncate")
            kind = draw(st.sampled_from(kinds))
            values = {c: v for c, v in draw(values_st).items() if c in maps[source]}
            if kind == "insert":
                key = draw(st.sampled_from([k for k in KEYS if k not in present]))
                present.add(key)
                events.append(("c", None, key, values, position, ts))
            elif kind == "update":
                key = draw(st.sampled_from(sorted(present)))
                events.append(("u", key, key, values, position, ts))
            elif kind == "delete":
                key = draw(st.sampled_from(sorted(present)))
                present.discard(key)
                events.append(("d", key, None, {}, position, ts))
            elif kind == "rekey":
                old = draw(st.sampled_from(sorted(present)))
                new = draw(st.sampled_from([k for k in KEYS if k not in present]))
                present.discard(old)
                present.add(new)
                events.append(("u", old, new, values, position, ts))
            else:
                present.clear()
                events.append(("t", None, None, {}, position, ts))
        scenario.history[source] = events
    return scenario


# Both sources commit their change at the same time: `latest` takes the greater source name.
TIE = Scenario(
    sources=["a", "b"],
    maps={"a": ["v1", "v2"], "b": ["v1", "v2"]},
    soft={"a": False, "b": False},
    rules={"v1": ("latest", None), "v2": ("priority", ["a", "b"])},
    deleted_by=[],
    history={
        "a": [("c", None, 1, {"v1": "x", "v2": 1}, 1010, BASE_TS)],
        "b": [("c", None, 1, {"v1": "y", "v2": 2}, 1011, BASE_TS)],
    },
)


def change_event(source: str, event: tuple[Any, ...], maps: list[str]) -> ChangeEvent:
    op, old, new, values, position, ts = event
    row = {"id": new, **{c: values.get(c) for c in maps}} if new is not None else None
    before = {"id": old, **dict.fromkeys(maps)} if old is not None else None
    return ChangeEvent(
        source=source,
        table="public.t",
        op=Op(op),
        key={"id": new if new is not None else old} if op != "t" else None,
        before=before,
        after=row,
        position=position,
        commit_ts_us=ts,
    )


# --- the model --------------------------------------------------------------------------------


@dataclass
class Held:
    values: dict[str, Any]
    position: int
    ts: int
    state: str  # live, soft, hard


def model(scenario: Scenario) -> dict[int, tuple[Any, ...]]:
    """The target the rules make of the sources' histories: id -> row as SELECTed below."""
    held: dict[str, dict[int, Held]] = {}
    for source, events in scenario.history.items():
        mine: dict[int, Held] = held.setdefault(source, {})
        withdraw = "soft" if scenario.soft[source] else "hard"
        for op, old, new, values, position, ts in events:
            if op == "t":
                for h in mine.values():
                    if h.state == "live" or (withdraw == "hard" and h.state == "soft"):
                        h.state, h.ts = withdraw, ts
                continue
            if old is not None and (op == "d" or old != new):
                was = mine.get(old)
                mine[old] = Held(was.values if was else {}, position, ts, withdraw)
            if new is not None:
                kept = mine[new].values if new in mine else {}
                merged = {**kept, **values}
                mine[new] = Held(merged, position, ts, "live")
    target: dict[int, tuple[Any, ...]] = {}
    for key in KEYS:
        rows = {s: held[s][key] for s in scenario.sources if key in held[s]}
        if not rows:
            continue
        live = {s: h for s, h in rows.items() if h.state == "live"}
        gone = {s: h for s, h in rows.items() if h.state != "live"}
        removers = {s: h for s, h in gone.items() if s in scenario.deleted_by}
        latest_gone = removers or gone
        deciding = max(latest_gone.items(), key=lambda i: (i[1].ts, i[0])) if latest_gone else None
        if removers:
            assert deciding is not None
            status = deciding[1].state
        elif live:
            status = "live"
        else:
            assert deciding is not None
            status = deciding[1].state
        if status == "hard":
            continue
        considered = live or {s: h for s, h in rows.items() if h.state == "soft"}
        out: dict[str, Any] = {}
        for column, (kind, arg) in scenario.rules.items():
            mappers = [s for s in scenario.sources if column in scenario.maps[s]]
            if kind == "latest":
                found = [(h.ts, s) for s, h in considered.items() if s in mappers]
                out[column] = considered[max(found)[1]].values.get(column) if found else None
            elif kind == "priority":
                out[column] = next(
                    (
                        considered[s].values[column]
                        for s in arg
                        if s in considered and considered[s].values.get(column) is not None
                    ),
                    None,
                )
            else:
                out[column] = considered[arg].values.get(column) if arg in considered else None
        last_ts, last = max((h.ts, s) for s, h in considered.items())
        deleted_at = None
        if status == "soft":
            assert deciding is not None
            deleted_at = dt.datetime.fromtimestamp(deciding[1].ts / 1e6, dt.UTC)
        target[key] = (
            key,
            *(out.get(c) for c in COLUMNS),
            deleted_at,
            last,
            considered[last].position,
            last_ts,
        )
    return target


# --- the system under test ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def merge_db(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One database for every example: the target table, and a contributions table with
    every column (a source that maps fewer leaves the others NULL)."""
    dsn = pg.create_database("merge_property")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TARGET_DDL)
    every = Scenario(
        sources=["a", "b", "c"],
        maps={s: list(COLUMNS) for s in "abc"},
        soft={"a": True, "b": False, "c": False},
        rules={},
        deleted_by=[],
    )
    mappings = load_mappings(every.mapping_files(tmp_path_factory.mktemp("every")))
    sink = PostgresSink(dsn, mappings.targets())
    try:
        plan = plan_schema(mappings.targets(), sink.introspect())
        assert not plan.unresolved, plan.unresolved
        apply_schema(sink.engine, plan)
    finally:
        sink.close()
    return dsn


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE t, tunggal_contributions.public__t, public.tunggal_truncations, "
            "public.tunggal_tombstones, public.tunggal_merge_state, public.tunggal_progress"
        )


def deliveries(scenario: Scenario, rnd: random.Random) -> Iterator[list[tuple[str, Any]] | None]:
    """Batches of (source, event) in a random interleaving that keeps each source's order, with
    replays of earlier events of a source and, as None, restarts."""
    queues = {s: list(scenario.history[s]) for s in scenario.sources}
    sent: dict[str, list[Any]] = {s: [] for s in scenario.sources}
    batch: list[tuple[str, Any]] = []
    while any(queues.values()):
        roll = rnd.random()
        if roll < 0.12:
            source = rnd.choice(scenario.sources)
            if sent[source]:
                start = rnd.randrange(len(sent[source]))
                batch.extend((source, e) for e in sent[source][start : start + rnd.randint(1, 4)])
        elif roll < 0.3 and batch:
            yield batch
            batch = []
        elif roll < 0.34:
            yield batch
            batch = []
            yield None
        else:
            source = rnd.choice([s for s, q in queues.items() if q])
            event = queues[source].pop(0)
            sent[source].append(event)
            batch.append((source, event))
    yield batch


def apply(dsn: str, mappings: MappingSet, scenario: Scenario, rnd: random.Random) -> None:
    sink = PostgresSink(dsn, mappings.targets())
    sink.check_ready()
    try:
        for batch in deliveries(scenario, rnd):
            if batch is None:  # a restart: a new sink, as a new process has
                sink.close()
                sink = PostgresSink(dsn, mappings.targets())
                sink.check_ready()
                continue
            ops = []
            for source, event in batch:
                change = change_event(source, event, scenario.maps[source])
                ops.extend((op, None) for op in mappings.map_event(change))
            sink.write(collapse(ops), {}, [])
    finally:
        sink.close()


def target_rows(dsn: str) -> dict[int, tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, v1, v2, v3, deleted_at, _tunggal_source, _tunggal_position::bigint, "
            "_tunggal_ts FROM t ORDER BY id"
        ).fetchall()
    return {row[0]: tuple(row) for row in rows}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios(), seed=st.integers(0, 2**32))
@example(scenario=TIE, seed=0)
def test_every_interleaving_with_replays_gives_the_models_target(
    merge_db: str, tmp_path_factory: pytest.TempPathFactory, scenario: Scenario, seed: int
) -> None:
    folder = tmp_path_factory.mktemp("mappings")
    mappings = load_mappings(scenario.mapping_files(folder))
    expected = model(scenario)
    rnd = random.Random(seed)
    for attempt in range(3):
        reset(merge_db)
        apply(merge_db, mappings, scenario, rnd)
        assert target_rows(merge_db) == expected, f"interleaving {attempt}"
    # `tunggal explain`'s reading of the rules agrees with the SQL that made the rows.
    spec = mappings.targets()["public.t"]
    sink = PostgresSink(merge_db, mappings.targets())
    try:
        tables = sink.introspect()
        types, stored = tables["public.t"].columns, tables["tunggal_contributions.public__t"]
        with sink.cursor() as cur:
            for key in KEYS:
                given_ = read_contributions(cur, spec, types, stored.columns, [str(key)])
                resolved = resolve(spec.merge, given_)
                if key not in expected:
                    assert resolved.state == "hard"
                    continue
                row = expected[key]
                assert [resolved.values.get(c) for c in COLUMNS if c in spec.merge.columns] == [
                    row[1 + COLUMNS.index(c)] for c in COLUMNS if c in spec.merge.columns
                ]
                assert resolved.latest is not None and resolved.latest.source == row[5]
    finally:
        sink.close()
