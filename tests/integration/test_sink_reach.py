"""Whether a committed batch reached the target: what the runner may take as the target being
up again (`tunggal_target_up`). A batch with nothing to write (a source's heartbeat alone)
commits without a round trip, so it must not count (test_faults has the daemon's side)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import sql
from tunggal.mapping import load_mappings
from tunggal.mapping.ops import RowOp, Upsert
from tunggal.sink.collapse import collapse
from tunggal.sink.postgres import PostgresSink, SourceProgress
from tunggal.sink.schema import apply_schema, plan_schema

pytestmark = pytest.mark.integration


def test_only_a_batch_that_sent_something_reached_the_target(
    new_db: Callable[[str], str], tmp_path: Path
) -> None:
    dsn = new_db("reach")
    sql(dsn, "CREATE TABLE r (id bigint PRIMARY KEY, v text)")
    (tmp_path / "m.yaml").write_text(
        "source: s\ntables:\n  - from: public.r\n    to: public.r\n    key: [id]\n"
        "    columns: {id: id, v: v}\n"
    )
    mappings = load_mappings([tmp_path / "m.yaml"])
    sink = PostgresSink(dsn, mappings.targets())
    try:
        apply_schema(sink.engine, plan_schema(mappings.targets(), sink.introspect()))
        sink.introspect()
        assert sink.write([], {}, []).reached_target is False
        ops: list[tuple[RowOp, None]] = [
            (Upsert("public.r", (1,), {"id": 1, "v": "a"}, "s", 10, 10), None)
        ]
        assert sink.write(collapse(ops), {}, []).reached_target is True
        # progress alone is written too (the source's position)
        assert sink.write([], {"s": SourceProgress(11, 11)}, []).reached_target is True
        assert sink.write([], {}, []).reached_target is False
    finally:
        sink.close()
    assert sql(dsn, "SELECT id, v FROM r") == [(1, "a")]
