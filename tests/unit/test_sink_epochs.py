"""`sink.epochs.place`: a batch's positions without an epoch go into their source's epoch."""

from __future__ import annotations

from tunggal.events import EPOCH_SHIFT
from tunggal.mapping.ops import Delete, Truncate, Upsert
from tunggal.sink.collapse import Pending, Segment
from tunggal.sink.epochs import place

S = 0x16E1F20


def test_only_positions_without_an_epoch_of_the_sources_given_move() -> None:
    truncate = Truncate("public.t", "a", 0x16E2A10, 1, soft=False)
    segment = Segment()
    for key, source, position in (
        ((1,), "a", 0x16E2A18),  # a's first transaction: placed
        ((2,), "a", 7 << EPOCH_SHIFT | 5),  # has an epoch: kept
        ((3,), "b", 0x10),  # another source: kept
    ):
        segment.rows[("public.t", key, source)] = Pending(
            Upsert("public.t", key, {"id": key[0]}, source, position, 1)
        )
    segment.rows[("public.t", (4,), "a")] = Pending(Delete("public.t", (4,), "a", 0x20, 1, False))
    placed_truncate, placed_segment = place([truncate, segment], {"a": S})
    assert isinstance(placed_truncate, Truncate) and isinstance(placed_segment, Segment)
    assert placed_truncate.position == S << EPOCH_SHIFT | 0x16E2A10
    positions = {k[1]: p.op.position for k, p in placed_segment.rows.items()}
    assert positions == {
        (1,): S << EPOCH_SHIFT | 0x16E2A18,
        (2,): 7 << EPOCH_SHIFT | 5,
        (3,): 0x10,
        (4,): S << EPOCH_SHIFT | 0x20,
    }
    # The caller's steps are left as they were (a failed attempt is written again).
    assert truncate.position == 0x16E2A10
    assert segment.rows[("public.t", (1,), "a")].op.position == 0x16E2A18


def test_nothing_to_place_returns_the_steps_as_they_are() -> None:
    truncate = Truncate("public.t", "a", 5, 1, soft=False)
    assert place([truncate], {}) == [truncate]
