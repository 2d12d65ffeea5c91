"""Large upsert groups go through COPY into a staging table; small ones through unnest().
(And what a written batch reports back to the runner.)

The same batches written both ways must leave the same rows: the "newer" guard, TOAST-unavailable
columns, tombstones and aware timestamps in a timestamp column behave alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import sql
from tunggal.events.model import UNAVAILABLE
from tunggal.mapping import load_mappings
from tunggal.mapping.ops import Delete, RowOp, Upsert
from tunggal.sink import postgres
from tunggal.sink.collapse import collapse
from tunggal.sink.postgres import PostgresSink, SourceProgress
from tunggal.sink.schema import apply_schema, plan_schema

pytestmark = pytest.mark.integration

DDL = """CREATE TABLE t (id bigint PRIMARY KEY, txt text, big text, ts timestamp,
  tstz timestamptz, d date, n numeric(12,2))"""
MAPPING = """
source: s
tables:
  - from: public.t
    to: public.t
    key: [id]
    columns: {id: id, txt: txt, big: big, ts: ts, tstz: tstz, d: d, n: n}
"""
N = 600
WIB = dt.timezone(dt.timedelta(hours=7))


def _upsert(key: int, position: int, version: str, big: Any = None) -> Upsert:
    values = {
        "id": key,
        "txt": f"{version} {key}",
        "big": f"big {version} {key}" if big is None else big,
        # an aware value for a timestamp column: stored as its UTC wall time
        "ts": dt.datetime(2026, 1, 1, 10, 0, tzinfo=WIB) + dt.timedelta(seconds=key),
        "tstz": dt.datetime(2026, 1, 1, 10, 0, tzinfo=WIB),
        "d": dt.date(2026, 1, 1) + dt.timedelta(days=key % 30),
        "n": Decimal(key) / 100,
    }
    return Upsert("public.t", (key,), values, "s", position, 1_000_000 + position)


def _batches() -> list[list[RowOp]]:
    first: list[RowOp] = [_upsert(k, 1000 + k, "v1") for k in range(1, N + 1)]
    # keys 1..50 older than what the table holds (ignored); the others newer, every second one
    # without its TOAST column (kept from v1)
    second: list[RowOp] = [
        _upsert(k, (10 if k <= 50 else 5000) + k, "v2", UNAVAILABLE if k % 2 else None)
        for k in range(1, N + 1)
    ]
    deletes: list[RowOp] = [
        Delete("public.t", (k,), "s", 9000 + k, 1_000_000 + 9000 + k, False)
        for k in range(N - 20, N + 1)
    ]
    # older than the deletes: the tombstones keep the rows gone
    late: list[RowOp] = [_upsert(k, 8000 + k, "late") for k in range(N - 250, N + 1)]
    return [first, second, deletes, late]


def _load(dsn: str, tmp_path: Path) -> list[tuple[Any, ...]]:
    sql(dsn, DDL)
    (tmp_path / "m.yaml").write_text(MAPPING)
    mappings = load_mappings([tmp_path / "m.yaml"])
    sink = PostgresSink(dsn, mappings.targets())
    try:
        apply_schema(sink.engine, plan_schema(mappings.targets(), sink.introspect()))
        sink.introspect()
        for ops in _batches():
            sink.write(collapse([(op, None) for op in ops]), {}, [])
    finally:
        sink.close()
    return sql(dsn, "SELECT id, txt, big, ts, tstz, d, n, _tunggal_position FROM t ORDER BY id")


def test_staged_and_unnest_paths_leave_the_same_rows(
    new_db: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    staged = _load(new_db("staged"), tmp_path / "a")
    monkeypatch.setattr(postgres, "_STAGE_ROWS", 10**9)
    unnested = _load(new_db("unnest"), tmp_path / "b")
    assert staged == unnested

    rows = {r[0]: r for r in staged}
    assert len(rows) == N - 21
    assert rows[1][1] == "v1 1"  # the older v2 was refused
    assert rows[51][1:3] == ("v2 51", "big v1 51")  # TOAST column kept
    assert rows[52][1:3] == ("v2 52", "big v2 52")
    assert rows[1][3] == dt.datetime(2026, 1, 1, 3, 0, 1)  # 10:00+07:00 in UTC
    assert N - 20 not in rows


def _sink_of_r(dsn: str, tmp_path: Path, v_type: str) -> PostgresSink:
    """A sink for one source's table r (id, v), created with v of `v_type`, ready to write."""
    sql(dsn, f"CREATE TABLE r (id bigint PRIMARY KEY, v {v_type})")
    (tmp_path / "m.yaml").write_text(
        "source: s\ntables:\n  - from: public.r\n    to: public.r\n    key: [id]\n"
        "    columns: {id: id, v: v}\n"
    )
    mappings = load_mappings([tmp_path / "m.yaml"])
    sink = PostgresSink(dsn, mappings.targets())
    apply_schema(sink.engine, plan_schema(mappings.targets(), sink.introspect()))
    sink.introspect()
    return sink


def test_staging_table_follows_a_column_type_change(
    new_db: Callable[[str], str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = new_db("retype")
    sink = _sink_of_r(dsn, tmp_path, "integer")

    def batch(v: int, position: int) -> None:
        ops: list[tuple[RowOp, None]] = [
            (Upsert("public.r", (k,), {"id": k, "v": v}, "s", position + k, position + k), None)
            for k in range(300)
        ]
        sink.write(collapse(ops), {}, [])

    try:
        batch(1, 1000)
        # `tunggal schema --apply` or an operator widens the column; the sink re-reads types
        sql(dsn, "ALTER TABLE r ALTER COLUMN v TYPE bigint")
        sink.introspect()
        batch(2**40, 2000)  # same session: its staging table from the first batch has integer
    finally:
        sink.close()
    assert sql(dsn, "SELECT DISTINCT v FROM r") == [(2**40,)]
    # an integer staging column would reject 2**40 and send the batch down the row-by-row path
    assert "row by row" not in caplog.text


def test_only_a_batch_that_sent_something_reached_the_target(
    new_db: Callable[[str], str], tmp_path: Path
) -> None:
    """What the runner may take as the target being up again (`tunggal_target_up`): a batch
    with nothing to write (a source's heartbeat alone) commits without a round trip, so it
    must not count (test_faults has the daemon's side)."""
    dsn = new_db("reach")
    sink = _sink_of_r(dsn, tmp_path, "text")
    try:
        assert sink.write([], {}, []).reached_target is False
        upsert = Upsert("public.r", (1,), {"id": 1, "v": "a"}, "s", 10, 10)
        assert sink.write(collapse([(upsert, None)]), {}, []).reached_target is True
        # the source's position alone is written too
        assert sink.write([], {"s": SourceProgress(11, 11)}, []).reached_target is True
        assert sink.write([], {}, []).reached_target is False
    finally:
        sink.close()
    assert sql(dsn, "SELECT id, v FROM r") == [(1, "a")]
