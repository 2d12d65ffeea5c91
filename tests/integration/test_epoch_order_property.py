"""A PostgreSQL source's first transaction after its snapshot is ordered after the snapshot's rows
whatever the order the events arrive in, as a property: Kafka spreads the snapshot's rows over
partitions by key, and a TRUNCATE (null key) lands on any partition. Random assignments of
partitions to one or two instances, random interleavings of their partitions, batches, and
commit orders, through the real pipeline, collapse and sink into a real PostgreSQL, always
leave what the source holds: the rows inserted after the TRUNCATE, none of the snapshot's.

Before `sink.epochs`, an instance that took the TRUNCATE before any snapshot row left it at its
bare LSN (epoch 0), below every snapshot row: the snapshot's rows stayed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tunggal.devtools.pgcluster import PgCluster
from tunggal.events import ConnectorModes, RawEvent
from tunggal.mapping import MappingSet, load_mappings
from tunggal.runtime.pipeline import Pipeline, Processed
from tunggal.sink.collapse import collapse
from tunggal.sink.postgres import PostgresSink, read_snapshot_epoch
from tunggal.sink.schema import apply_schema, plan_schema

pytestmark = pytest.mark.integration

MAPPING = """source: s
tables:
  - from: public.t
    to: public.t
    key: [id]
    truncate: delete_source_rows
    columns: {id: id, v: v}
"""
PARTITIONS = 4
SNAPSHOT_KEYS = (1, 2, 3, 4, 5)
S = 0x16E1F20  # the snapshot's consistent point


def _event(
    op: str, lsn: int, key: int | None, *, last_commit: int | None = None, partition: int = 0
) -> RawEvent:
    snapshot = "true" if op == "r" else "false"
    sequence = orjson.dumps([None if last_commit is None else str(last_commit), str(lsn)])
    source = {
        "connector": "postgresql",
        "schema": "public",
        "table": "t",
        "lsn": lsn,
        "ts_us": lsn,
        "snapshot": snapshot,
        "sequence": sequence.decode(),
    }
    after = None if key is None else {"id": key, "v": f"{op}{lsn}"}
    value = orjson.dumps({"op": op, "before": None, "after": after, "source": source})
    partition = partition if key is None else key % PARTITIONS
    return RawEvent(
        "s.public.t", None if key is None else f'{{"id": {key}}}', value, partition=partition
    )


def history(truncate_partition: int, truncate_lsn: int) -> list[list[RawEvent]]:
    """Per partition, its events in order.

    The snapshot reads keys 1-5 at S; the first transaction after it (no lastCommitLsn) is the
    TRUNCATE and an insert of key 10; the next (lastCommitLsn = the first's commit) inserts 11.
    A transaction that was running at S can have changes below S: `truncate_lsn` is either."""
    parts: list[list[RawEvent]] = [[] for _ in range(PARTITIONS)]
    for key in SNAPSHOT_KEYS:
        parts[key % PARTITIONS].append(_event("r", S, key))
    parts[truncate_partition].append(_event("t", truncate_lsn, None, partition=truncate_partition))
    parts[10 % PARTITIONS].append(_event("c", truncate_lsn + 8, 10))
    commit = max(S, truncate_lsn) + 100
    parts[11 % PARTITIONS].append(_event("c", commit + 40, 11, last_commit=commit))
    return parts


@pytest.fixture(scope="module")
def target(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    dsn = pg.create_database("epoch_order")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    folder = tmp_path_factory.mktemp("epoch_order")
    (folder / "m.yaml").write_text(MAPPING)
    mappings = load_mappings([folder / "m.yaml"])
    sink = PostgresSink(dsn, mappings.targets())
    try:
        plan = plan_schema(mappings.targets(), sink.introspect())
        assert not plan.unresolved, plan.unresolved
        apply_schema(sink.engine, plan)
    finally:
        sink.close()
    yield dsn, folder / "m.yaml"


class Instance:
    """One `tunggal run`: its own pipeline (epochs seen, target lookups) and sink connection."""

    def __init__(self, dsn: str, mappings: MappingSet) -> None:
        self.pipeline = Pipeline(
            mappings,
            {"s": ConnectorModes(connector="postgresql")},
            {},
            epochs=lambda source: read_snapshot_epoch(dsn, source),
        )
        self.sink = PostgresSink(dsn, mappings.targets())
        self.sink.introspect()
        self.taken: list[Processed] = []

    def take(self, raws: list[RawEvent]) -> None:
        self.taken.append(self.pipeline.process("s", raws))

    def write(self) -> None:
        processed = self.taken.pop(0)
        self.sink.write(collapse(processed.ops), processed.progress, processed.dead_letters)


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, str, list[RawEvent]]]]:
    """(truncate partition, truncate LSN, the actions: (instance, take|write, events))."""
    truncate_partition = draw(st.integers(0, PARTITIONS - 1))
    truncate_lsn = draw(st.sampled_from([S - 0x400, S + 0x200]))
    parts = history(truncate_partition, truncate_lsn)
    instances = draw(st.integers(1, 2))
    owner = [draw(st.integers(0, instances - 1)) for _ in range(PARTITIONS)]
    actions: list[list[tuple[int, str, list[RawEvent]]]] = []
    for i in range(instances):
        queues = [list(parts[p]) for p in range(PARTITIONS) if owner[p] == i]
        stream: list[RawEvent] = []
        while any(queues):  # the partitions' events interleaved, each partition in order
            queue = draw(st.sampled_from([q for q in queues if q]))
            stream.append(queue.pop(0))
        mine: list[tuple[int, str, list[RawEvent]]] = []
        while stream:
            n = draw(st.integers(1, len(stream)))
            mine += [(i, "take", stream[:n]), (i, "write", [])]
            stream = stream[n:]
        actions.append(mine)
    schedule: list[tuple[int, str, list[RawEvent]]] = []
    while any(actions):  # the instances' takes and commits interleaved
        queue = draw(st.sampled_from([a for a in actions if a]))
        schedule.append(queue.pop(0))
    return truncate_partition, truncate_lsn, schedule


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(arrival=arrivals())
@example(  # the run: the TRUNCATE taken and committed before any snapshot row
    arrival=(
        0,
        S + 0x200,
        [
            (0, "take", [_event("t", S + 0x200, None)]),
            (0, "write", []),
            (0, "take", [_event("r", S, k) for k in SNAPSHOT_KEYS]),
            (0, "write", []),
        ],
    )
)
def test_first_transaction_after_the_snapshot_is_after_its_rows(
    target: tuple[str, Path], arrival: tuple[int, int, list[tuple[int, str, list[RawEvent]]]]
) -> None:
    dsn, mapping = target
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE t, public.tunggal_truncations, public.tunggal_tombstones, "
            "public.tunggal_progress"
        )
    _, _, schedule = arrival
    mappings = load_mappings([mapping])
    instances = [Instance(dsn, mappings) for _ in range(2)]
    try:
        for i, action, raws in schedule:
            if action == "take":
                instances[i].take(raws)
            else:
                instances[i].write()
    finally:
        for instance in instances:
            instance.sink.close()
    with psycopg.connect(dsn) as conn:
        kept = {row[0] for row in conn.execute("SELECT id FROM t")}
    inserted_after = {k for _, a, raws in schedule for r in raws if (k := _key(r)) in (10, 11)}
    shown = [(i, a, [_key(r) for r in rs]) for i, a, rs in schedule]
    assert kept == inserted_after, f"schedule (instance, action, keys): {shown}"


def _key(raw: RawEvent) -> int | None:
    return None if raw.key is None else int(orjson.loads(raw.key)["id"])
