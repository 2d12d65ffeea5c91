"""The pipeline's projected lane gives exactly what decoding whole and then mapping gives.

For a table whose one mapping only copies columns, `Pipeline.process` decodes inserts, updates
and snapshot rows straight into target rows (`decode_projected`, `TableMapper.map_projected`).
Every test here runs the same events through a pipeline with that lane and one without it
(`projected=False`: `decode`, then `MappingSet.map_event`), and compares all they produce: row
operations down to value types and dict order, dead letters and their messages, counts,
progress and snapshot epochs. The workload tests also check that the lane took its events.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_decode_fast import ODD, ddl_types, mutated_event
from tests.unit.test_decode_fuzz import FUZZ, JSON
from tunggal.devtools.synth import NARROW, WIDE, mixed_workload, narrow_mapping
from tunggal.errors import DecodeError
from tunggal.events import ConnectorModes, RawEvent
from tunggal.events.decode import decode, decode_projected
from tunggal.events.model import ProjectedEvent
from tunggal.mapping import MappingSet, load_mappings
from tunggal.runtime.pipeline import Pipeline, Processed

COLUMNS = ("id", "kode", "n", "d", "ts", "s", "b")
TYPES = {
    "id": "bigint",
    "kode": "text",
    "n": "numeric(12,2)",
    "d": "date",
    "ts": "timestamp",
    "s": "text",
    "b": "boolean",
}
# Mappings of public.t, each to a target of its own (the target's types are TYPES, renamed).
MAPPINGS = {
    "copy": "key: [id]\n    columns: {id: id, kode: kode, n: n, d: d, ts: ts, s: s, b: b}",
    # renamed, keyed on a column that updates change, soft deletes, a column left unmapped
    "renamed": (
        "key: [code]\n    delete: soft\n    soft_delete_column: dihapus\n"
        "    columns: {code: kode, nomor: id, jumlah: n, tanggal: {from: d, type: date},"
        " waktu: ts, aktif: b}"
    ),
    "ignore": "key: [kode]\n    delete: ignore\n    columns: {kode: kode, n: n, s: s}",
    # not projected: the control, which must give the same as well
    "filtered": 'key: [id]\n    filter: "row.b == true"\n    columns: {id: id, n: n}',
    "derived": "key: [id]\n    columns: {id: id, s: {from: s, transform: [trim]}, n: n}",
}


def _target_types(name: str) -> dict[str, dict[str, str]]:
    """The target's column types, as the database would report them: TYPES, renamed."""
    sources = {
        "renamed": {"code": "kode", "nomor": "id", "jumlah": "n", "tanggal": "d", "waktu": "ts"},
    }.get(name, {})
    renamed = {"aktif": "b", **sources}
    types = {column: TYPES[renamed.get(column, column)] for column in _TARGET_COLUMNS[name]}
    return {f"public.{name}": {**types, "dihapus": "timestamptz"}}


_TARGET_COLUMNS = {
    "copy": COLUMNS,
    "renamed": ("code", "nomor", "jumlah", "tanggal", "waktu", "aktif"),
    "ignore": ("kode", "n", "s"),
    "filtered": ("id", "n"),
    "derived": ("id", "s", "n"),
}
_ROOT = Path(tempfile.mkdtemp(prefix="tunggal-projected-"))


def _mappings(name: str) -> MappingSet:
    path = _ROOT / f"{name}.yaml"
    path.write_text(
        f"source: s\ntables:\n  - from: public.t\n    to: public.{name}\n    {MAPPINGS[name]}\n"
    )
    return load_mappings([path])


_MAPPING_SETS = {name: _mappings(name) for name in MAPPINGS}


def _pipelines(
    mappings: MappingSet, types: dict[str, dict[str, str]], connector: str = "postgresql"
) -> tuple[Pipeline, Pipeline]:
    modes = {"s": ConnectorModes(connector=connector)}
    return (
        Pipeline(mappings, modes, types, epochs=lambda source: None),
        Pipeline(mappings, modes, types, epochs=lambda source: None, projected=False),
    )


def _seen(processed: Processed) -> str:
    """All of `processed`, in a form that tells apart values that compare equal (1, True,
    Decimal("1.0") and Decimal("1.00"), dict order)."""
    ops = [
        (repr(op), [type(v) for v in getattr(op, "values", {}).values()], raw)
        for op, raw in processed.ops
    ]
    letters = [
        (d.source, d.error_class, d.error, d.raw, d.source_table, d.position)
        for d in processed.dead_letters
    ]
    return repr(
        (
            ops,
            letters,
            processed.progress,
            sorted(processed.live),
            sorted(processed.counts.items()),
            processed.incremental_rows,
        )
    )


def agree(lane: Pipeline, reference: Pipeline, raws: list[RawEvent]) -> None:
    seen = _seen(lane.process("s", raws, log_poison=False))
    assert seen == _seen(reference.process("s", raws, log_poison=False))


def _taken(
    raw: RawEvent,
    mappings: MappingSet,
    types: dict[str, dict[str, str]],
    table: str,
    modes: ConnectorModes,
) -> bool:
    """Whether `decode_projected` takes `raw` (given what the pipeline would give it)."""
    hints = mappings.hints("s", table, types)
    mapper = mappings.projected_mapper("s", table)
    plans = {} if mapper is None or mapper.projection is None else {table: mapper.projection}
    projections = {t: (projection, hints) for t, projection in plans.items()}.get
    try:
        decoded = decode_projected(
            raw, source="s", modes=modes, hints={table: hints}.get, projections=projections
        )
    except DecodeError:
        return False
    return isinstance(decoded, ProjectedEvent)


def same(
    mappings: MappingSet,
    types: dict[str, dict[str, str]],
    raws: list[RawEvent],
    table: str = "public.t",
    connector: str = "postgresql",
) -> int:
    """Assert both lanes agree on `raws`, taken in one chunk and one event at a time; the
    number of events the projected lane took."""
    agree(*_pipelines(mappings, types, connector), raws)
    lane, reference = _pipelines(mappings, types, connector)
    for raw in raws:
        agree(lane, reference, [raw])
    modes = ConnectorModes(connector=connector)
    return sum(_taken(raw, mappings, types, table, modes) for raw in raws)


# -- events ------------------------------------------------------------------------------------

VALUES = {
    "id": st.integers(min_value=-3, max_value=5),
    "kode": st.sampled_from(["A", "B", "C"]),
    "n": st.sampled_from(["12.30", "0", "-1.5", "1e3", "NaN", 12, 1.25]),
    "d": st.integers(min_value=-800_000, max_value=3_000_000),
    "ts": st.integers(min_value=-(10**17), max_value=10**17),
    "s": st.text(max_size=5),
    "b": st.booleans(),
}


def _row(draw: st.DrawFn, odd: bool) -> dict[str, Any]:
    row = {c: draw(st.none() | VALUES[c]) if c != "id" else draw(VALUES[c]) for c in COLUMNS}
    if odd and draw(st.booleans()):
        column = draw(st.sampled_from(COLUMNS))
        if draw(st.booleans()):
            del row[column]  # a partial image
        else:
            row[column] = draw(st.sampled_from(ODD) | JSON)
    if draw(st.booleans()):  # a column no mapping reads
        row["extra"] = draw(st.sampled_from(ODD) | JSON if odd else st.text(max_size=3))
    return row


@st.composite
def events(draw: st.DrawFn, odd: bool = True, connector: str = "postgresql") -> list[RawEvent]:
    out = []
    lsn = 1000
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        lsn += draw(st.integers(min_value=1, max_value=50))
        op = draw(st.sampled_from("crud"))
        marker = draw(st.sampled_from(["false", "false", "true", "last", "incremental"]))
        before = _row(draw, odd) if op in "ud" and draw(st.booleans()) else None
        after = None if op == "d" else _row(draw, odd)
        last_commit = draw(st.none() | st.just(lsn - 1))
        block: dict[str, Any] = {"connector": connector, "table": "t", "snapshot": marker}
        if connector == "mysql":  # binlog coordinates, in the database `public`
            block |= {"db": "public", "file": "mysql-bin.000003", "pos": lsn, "ts_ms": lsn}
        else:
            sequence = [None if last_commit is None else str(last_commit), str(lsn)]
            block |= {"schema": "public", "lsn": lsn, "ts_us": lsn * 10}
            block["sequence"] = json.dumps(sequence, separators=(",", ":"))
        value = {"op": op, "before": before, "after": after, "source": block}
        image = after or before or {}
        key = draw(
            st.just({"id": image.get("id")}) | st.none() | st.sampled_from([{"id": "x"}, [1]])
        )
        text: str | bytes = json.dumps(value, separators=(",", ":"))
        if draw(st.booleans()):
            text = text.encode()  # bytes, as Kafka hands it over
        out.append(RawEvent("s.public.t", None if key is None else json.dumps(key), text, 0, lsn))
    return out


@FUZZ
@given(name=st.sampled_from(sorted(MAPPINGS)), raws=events())
def test_both_lanes_agree_on_drawn_events(name: str, raws: list[RawEvent]) -> None:
    same(_MAPPING_SETS[name], _target_types(name), raws)


@FUZZ
@given(name=st.sampled_from(sorted(MAPPINGS)), raws=events(connector="mysql"))
def test_both_lanes_agree_on_drawn_mysql_events(name: str, raws: list[RawEvent]) -> None:
    # No snapshot epochs, other positions, MySQL's readings of the same column types.
    same(_MAPPING_SETS[name], _target_types(name), raws, connector="mysql")


@FUZZ
@given(name=st.sampled_from(["copy", "renamed", "ignore"]), raws=events(odd=False))
def test_plain_events_take_the_projected_lane(name: str, raws: list[RawEvent]) -> None:
    mappings, types = _MAPPING_SETS[name], _target_types(name)
    taken = same(mappings, types, raws)
    # Every insert, update and snapshot row that decodes, but the snapshot's last row and an
    # incremental snapshot's. Its mapping may still refuse it: the lanes agree on that too.
    hints = {"public.t": mappings.hints("s", "public.t", types)}.get
    plain = [
        raw
        for raw in raws
        if (document := orjson.loads(raw.value))["op"] != "d"
        and document["source"]["snapshot"] not in ("last", "incremental")
        and _decodes(raw, hints)
    ]
    assert taken == len(plain)


def _decodes(raw: RawEvent, hints: Any) -> bool:
    try:
        decode(raw, source="s", hints=hints)
    except DecodeError:
        return False
    return True


# -- the benchmark's workload, and its events mutated ---------------------------------------

SHAPES = {"narrow": (NARROW, "public.kegiatan"), "wide": (WIDE, "public.lebar")}


def _workload(name: str) -> tuple[MappingSet, dict[str, Any], list[RawEvent]]:
    shape, table = SHAPES[name]
    path = _ROOT / f"bench-{name}.yaml"
    path.write_text(narrow_mapping(source="s", table=table, shape=shape))
    lines = mixed_workload(300, seed=11, table=table, shape=shape).lines
    raws = [RawEvent(**orjson.loads(line)) for line in lines]
    return load_mappings([path]), {table: ddl_types(shape)}, raws


@pytest.mark.parametrize("name", SHAPES)
def test_the_benchmark_workload_takes_the_projected_lane(name: str) -> None:
    mappings, types, raws = _WORKLOADS[name]
    table = SHAPES[name][1]
    agree(*_pipelines(mappings, types), raws)
    assert mappings.projected_mapper("s", table) is not None
    modes = ConnectorModes()
    inserts_and_updates = [
        r for r in raws if r.value is not None and orjson.loads(r.value)["op"] != "d"
    ]
    assert inserts_and_updates
    for raw in inserts_and_updates:
        assert _taken(raw, mappings, types, table, modes), raw.value


@FUZZ
@given(
    data=st.data(),
    name=st.sampled_from(sorted(SHAPES)),
    index=st.integers(min_value=0, max_value=299),
    replacement=st.sampled_from(ODD) | JSON,
    delete=st.booleans(),
)
def test_mutated_benchmark_events(
    data: st.DataObject,
    name: str,
    index: int,
    replacement: Any,
    delete: bool,
) -> None:
    mappings, types, raws = _WORKLOADS[name]
    raw = raws[index]
    if raw.value is None:
        return
    # After the event before it: an update's old key is then a row the lanes both wrote.
    mutated_raw = mutated_event(data, raw, replacement, delete)
    same(mappings, types, [raws[index - 1], mutated_raw], SHAPES[name][1])


_WORKLOADS = {name: _workload(name) for name in SHAPES}
