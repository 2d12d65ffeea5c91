"""The pure parts of `tunggal kafka offsets`: parsing --to, planning a reset, merging rows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunggal.admin.kafka_offsets import (
    OffsetsRefused,
    PartitionOffsets,
    merge,
    parse_to,
    plan_reset,
)

PARTS = [
    PartitionOffsets("s.public.t", 0, stored=40, beginning=10, end=50),
    PartitionOffsets("s.public.t", 1, stored=None, beginning=0, end=30),
    PartitionOffsets("s.public.gone", 0, stored=7, beginning=None, end=None),
]


def test_parse_to() -> None:
    assert parse_to("earliest") == "earliest"
    assert parse_to("latest") == "latest"
    assert parse_to("12") == 12
    for bad in ("-1", "first", "1.5", ""):
        with pytest.raises(OffsetsRefused, match="give earliest, latest or an offset"):
            parse_to(bad)


def test_earliest_and_latest_take_each_partitions_bounds_and_skip_those_not_on_the_broker() -> None:
    assert plan_reset(PARTS, "earliest") == {("s.public.t", 0): 10, ("s.public.t", 1): 0}
    assert plan_reset(PARTS, "latest") == {("s.public.t", 0): 50, ("s.public.t", 1): 30}


def test_an_explicit_offset_outside_any_partition_is_refused_naming_it() -> None:
    assert plan_reset(PARTS, 20) == {("s.public.t", 0): 20, ("s.public.t", 1): 20}
    with pytest.raises(
        OffsetsRefused, match=r"offset 31 is beyond the end of s.public.t\[1\] \(30\)"
    ):
        plan_reset(PARTS, 31)
    with pytest.raises(OffsetsRefused, match=r"offset 5 is below the beginning of s.public.t\[0\]"):
        plan_reset(PARTS, 5)


@given(
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), min_size=1, max_size=5),
    st.integers(0, 2000),
)
def test_a_planned_offset_always_lies_within_its_partition(
    spans: list[tuple[int, int]], to: int
) -> None:
    parts = [PartitionOffsets("t", i, None, min(a, b), max(a, b)) for i, (a, b) in enumerate(spans)]
    try:
        plan = plan_reset(parts, to)
    except OffsetsRefused:
        assert any(
            not (p.beginning <= to <= p.end)
            for p in parts
            if p.beginning is not None and p.end is not None
        )
        return
    for p in parts:
        assert p.beginning is not None and p.end is not None
        assert p.beginning <= plan[("t", p.partition)] <= p.end


def test_merge_keeps_partitions_only_the_target_remembers_and_computes_lag() -> None:
    rows = merge(
        {("a", 0): 5, ("gone", 0): 9, ("other", 0): 1},
        {("a", 0): (0, 8), ("a", 1): (2, 2)},
        lambda t: t != "other",
    )
    assert [(r.topic, r.partition, r.stored, r.beginning, r.end, r.lag) for r in rows] == [
        ("a", 0, 5, 0, 8, 3),
        ("a", 1, None, 2, 2, None),
        ("gone", 0, 9, None, None, None),
    ]
