from __future__ import annotations

from tunggal.events.model import UNAVAILABLE
from tunggal.mapping.ops import Delete, Truncate, Upsert
from tunggal.sink.collapse import Segment, collapse


def up(key: int, pos: int, source: str = "a", ts: int | None = None, **values: object) -> Upsert:
    return Upsert(
        "public.t", (key,), {"id": key, **values}, source, pos, ts if ts is not None else pos
    )


def de(key: int, pos: int, source: str = "a") -> Delete:
    return Delete("public.t", (key,), source, pos, pos, soft=False)


def test_last_state_per_key_wins() -> None:
    steps = collapse(
        [
            (up(1, 10, v="a"), None),
            (up(1, 12, v="b"), None),
            (de(2, 13), None),
            (up(2, 14, v="c"), None),
        ]
    )
    assert len(steps) == 1 and isinstance(steps[0], Segment)
    ops = {k: p.op for k, p in steps[0].rows.items()}
    assert ops[("public.t", (1,), "a")].values == {"id": 1, "v": "b"}
    assert isinstance(ops[("public.t", (2,), "a")], Upsert)


def test_delete_after_upsert_is_delete() -> None:
    steps = collapse([(up(1, 10), None), (de(1, 11), None)])
    assert isinstance(steps[0], Segment)
    assert isinstance(steps[0].rows[("public.t", (1,), "a")].op, Delete)


def test_unavailable_column_takes_value_from_earlier_event_in_batch() -> None:
    steps = collapse(
        [(up(1, 10, doc="long", v="a"), None), (up(1, 11, doc=UNAVAILABLE, v="b"), None)]
    )
    assert isinstance(steps[0], Segment)
    assert steps[0].rows[("public.t", (1,), "a")].op.values == {"id": 1, "doc": "long", "v": "b"}  # type: ignore[union-attr]


def test_unavailable_stays_when_batch_has_no_earlier_value() -> None:
    steps = collapse([(up(1, 11, doc=UNAVAILABLE), None)])
    assert isinstance(steps[0], Segment)
    assert steps[0].rows[("public.t", (1,), "a")].op.values["doc"] is UNAVAILABLE  # type: ignore[union-attr]


def test_truncate_splits_the_batch() -> None:
    trunc = Truncate("public.t", "a", 20, 20, soft=False)
    steps = collapse([(up(1, 10), None), (trunc, None), (up(1, 21), None)])
    assert [type(s).__name__ for s in steps] == ["Segment", "Truncate", "Segment"]


def test_older_event_of_same_source_does_not_replace_newer() -> None:
    steps = collapse([(up(1, 12, v="new"), None), (up(1, 10, v="old"), None)])
    assert isinstance(steps[0], Segment)
    assert steps[0].rows[("public.t", (1,), "a")].op.values["v"] == "new"  # type: ignore[union-attr]


def test_each_source_keeps_its_own_last_change_of_a_row() -> None:
    """A later commit of b does not hide a's change: both reach the sink, which merges them
    (a table with one source never sees two)."""
    steps = collapse(
        [
            (up(1, 50, "a", ts=100, v="a1"), None),
            (up(1, 7, "b", ts=200, v="b1"), None),
            (up(1, 40, "a", ts=90, v="stale"), None),
        ]
    )
    assert isinstance(steps[0], Segment)
    ops = {k: p.op for k, p in steps[0].rows.items()}
    assert ops[("public.t", (1,), "a")].values["v"] == "a1"  # type: ignore[union-attr]
    assert ops[("public.t", (1,), "b")].values["v"] == "b1"  # type: ignore[union-attr]
    assert len(steps[0].rows[("public.t", (1,), "a")].raws) == 2


def test_a_soft_delete_after_an_upsert_keeps_both_in_order() -> None:
    """The soft-deleted row keeps the values upserted earlier in the batch, as it would if the
    two changes had come in separate batches."""
    soft = Delete("public.t", (1,), "a", 11, 11, soft=True)
    steps = collapse([(up(1, 10, v="x"), None), (up(2, 10, v="y"), None), (soft, None)])
    assert [type(s).__name__ for s in steps] == ["Segment", "Segment"]
    first, second = steps
    assert isinstance(first, Segment) and isinstance(second, Segment)
    assert isinstance(first.rows[("public.t", (1,), "a")].op, Upsert)
    assert second.rows[("public.t", (1,), "a")].op is soft
    # A hard delete needs no values: it replaces the upsert in place.
    steps = collapse([(up(1, 10, v="x"), None), (de(1, 11), None)])
    assert len(steps) == 1
