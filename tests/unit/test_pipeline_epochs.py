"""The pipeline places PostgreSQL's first transaction after a snapshot in the snapshot's epoch."""

from __future__ import annotations

from pathlib import Path

import orjson

from tunggal.events import EPOCH_SHIFT, ConnectorModes, RawEvent
from tunggal.mapping import load_mappings
from tunggal.runtime.pipeline import Pipeline

MAPPING = """source: s
tables:
  - from: public.t
    to: public.t
    key: [id]
    columns: {id: id, v: v}
"""


def _raw(lsn: int, *, last_commit: int | None = None, snapshot: str = "false") -> RawEvent:
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
    value = {"op": "r" if snapshot != "false" else "u", "after": {"id": 1, "v": str(lsn)}}
    value["source"] = source
    return RawEvent("s.public.t", '{"id": 1}', orjson.dumps(value), offset=lsn)


def _pipeline(tmp_path: Path, lookup: list[int | None], connector: str = "postgresql") -> Pipeline:
    (tmp_path / "m.yaml").write_text(MAPPING)
    calls = iter(lookup)
    return Pipeline(
        load_mappings([tmp_path / "m.yaml"]),
        {"s": ConnectorModes(connector=connector)},
        {},
        epochs=lambda source: next(calls),
    )


def _positions(pipeline: Pipeline, raws: list[RawEvent]) -> list[int]:
    return [op.position for op, _ in pipeline.process("s", raws).ops]


def test_snapshot_seen_in_the_stream_gives_the_epoch(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, [])  # the lookup is never asked: next() would raise
    snapshot, first, second = _positions(
        pipeline, [_raw(5000, snapshot="true"), _raw(4000), _raw(4100, last_commit=5200)]
    )
    assert snapshot == 5000 << EPOCH_SHIFT
    assert first == 5000 << EPOCH_SHIFT | 4000
    assert snapshot < first < second == 5200 << EPOCH_SHIFT | 4100


def test_epoch_committed_by_an_earlier_run_is_looked_up(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, [7000])
    assert _positions(pipeline, [_raw(6000), _raw(6100)]) == [
        7000 << EPOCH_SHIFT | 6000,
        7000 << EPOCH_SHIFT | 6100,
    ]
    # Found once, kept: a second chunk does not ask again.
    assert _positions(pipeline, [_raw(6200)]) == [7000 << EPOCH_SHIFT | 6200]


def test_no_epoch_anywhere_keeps_the_change_lsn_and_asks_once_per_chunk(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, [None, None])
    assert _positions(pipeline, [_raw(6000), _raw(6100)]) == [6000, 6100]
    assert _positions(pipeline, [_raw(6200)]) == [6200]


def test_progress_carries_the_snapshot_epoch(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, [])
    out = pipeline.process("s", [_raw(5000, snapshot="true"), _raw(9000, last_commit=8000)])
    assert out.progress["s"].epoch == 5000
    assert out.progress["s"].position == 8000 << EPOCH_SHIFT | 9000
