"""The guarded upsert's `NOT EXISTS` on tunggal_tombstones is planned from that table's
statistics. A mass delete in a source adds tombstones faster than autovacuum analyses them (a
minute at best; never where it is off on the target). Planned as if the table were still
small, every later batch's upsert then hashes all of the table's tombstones: with a million
unanalysed, 915 ms per 5,000 rows against 50 ms analysed (bench run, 2026-12-06). So the sink
analyses the table itself after the batches that doubled it (10,000 tombstones at least), and
only then.

Autovacuum is switched off for the table here, as on a target where it is off or behind: the
only statistics the table gets are the sink's own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import sql, wait_until
from tests.integration.test_sink_staging import _sink_of_r
from tunggal.mapping.ops import Delete, RowOp, Upsert
from tunggal.sink.collapse import collapse
from tunggal.sink.postgres import PostgresSink

pytestmark = pytest.mark.integration


def _reltuples(dsn: str) -> float:
    """The rows the table's statistics know of (-1: never analysed). Set by ANALYZE in its own
    transaction, so seen as soon as the sink's write returns."""
    row = sql(
        dsn, "SELECT reltuples FROM pg_class WHERE oid = 'public.tunggal_tombstones'::regclass"
    )
    return float(row[0][0])


def _analyses(dsn: str) -> int:
    row = sql(
        dsn,
        "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'tunggal_tombstones'",
    )
    return int(row[0][0])


def _write(sink: PostgresSink, ops: list[RowOp]) -> None:
    sink.write(collapse([(op, None) for op in ops]), {}, [])


def test_a_mass_delete_leaves_the_tombstones_analysed(
    new_db: Callable[[str], str], tmp_path: Path
) -> None:
    dsn = new_db("tombstats")
    sink = _sink_of_r(dsn, tmp_path, "text")
    sql(dsn, "ALTER TABLE public.tunggal_tombstones SET (autovacuum_enabled = false)")
    keys = range(40_000)
    try:
        _write(sink, [Upsert("public.r", (k,), {"id": k, "v": "x"}, "s", 10 + k, 0) for k in keys])
        # The mass delete, in batches as a source's stream brings it.
        for start in range(0, len(keys), 5000):
            _write(
                sink,
                [Delete("public.r", (k,), "s", 100_000 + k, 0, False) for k in keys[start:][:5000]],
            )
        assert _reltuples(dsn) == len(keys), "the statistics do not see the tombstones"

        # A few more deletes, far from doubling what the statistics know: no ANALYZE.
        _write(
            sink,
            [Delete("public.r", (k,), "s", 200_000 + k, 0, False) for k in range(50_000, 50_050)],
        )
        _write(sink, [Upsert("public.r", (1,), {"id": 1, "v": "y"}, "s", 300_000, 0)])
        assert _reltuples(dsn) == len(keys)
    finally:
        sink.close()
    assert sql(dsn, "SELECT count(*) FROM r") == [(1,)]
    # Not after every batch: at 10,000, 20,000 and 40,000 tombstones, not eight times. The
    # count reaches the server's statistics when the sink's session ends.
    assert wait_until(lambda: _analyses(dsn) >= 1, timeout=10)
    assert _analyses(dsn) < 8
