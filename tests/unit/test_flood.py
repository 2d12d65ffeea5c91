"""The flood-stop rule (`runtime.flood`): a table whose events fail as a broken mapping makes
them trips it; a poison row, or a few scattered ones, never do."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunggal.runtime.flood import FloodRule, FloodWatch

RULE = FloodRule(min_failures=20, window_s=60.0, min_ratio=0.5)

# One chunk of one table: seconds since the previous chunk, events, failures of class A and B.
chunks = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=90, allow_nan=False),
        st.integers(min_value=0, max_value=60),
        st.integers(min_value=0, max_value=30),
        st.integers(min_value=0, max_value=30),
    ).map(lambda c: (c[0], max(c[1], c[2] + c[3]), c[2], c[3])),
    max_size=60,
)


def reference(seen: list[tuple[float, int, int, int]], now: float, rule: FloodRule) -> bool:
    """The rule written out plainly: every run of the newest chunks within the window, per
    error class."""
    recent = [s for s in seen if s[0] > now - rule.window_s]
    runs = [recent[i:] for i in range(len(recent))]
    return any(
        rule.trips(sum(s[k] for s in run), sum(s[1] for s in run)) for run in runs for k in (2, 3)
    )


@given(chunks)
def test_it_trips_exactly_when_a_run_of_the_newest_chunks_breaks_the_rule(
    steps: list[tuple[float, int, int, int]],
) -> None:
    watch, now, seen = FloodWatch(RULE), 1000.0, []
    for gap, events, a, b in steps:
        now += gap
        seen.append((now, events, a, b))
        trip = watch.observe("s", "public.t", events, {"A": a, "B": b}, now)
        assert (trip is not None) == reference(seen, now, RULE), seen


@given(chunks)
def test_failures_below_the_ratio_in_every_chunk_never_trip(
    steps: list[tuple[float, int, int, int]],
) -> None:
    """A window's ratio is a weighted mean of its chunks' ratios: chunks that each stay under
    it (scattered poison rows among good ones) never pause the source, however many."""
    watch, now = FloodWatch(RULE), 0.0
    for gap, events, a, _ in steps:
        now += gap
        a = min(a, max(0, (events - 1) // 2))  # strictly under half of the chunk's events
        assert watch.observe("s", "public.t", events, {"A": a}, now) is None


@given(st.lists(st.integers(min_value=1, max_value=5_000), max_size=50))
def test_a_single_poison_row_per_window_never_trips(goods: list[int]) -> None:
    watch = FloodWatch(RULE)
    for i, good in enumerate(goods):
        # one bad row a minute and a bit, with any number of good ones around it
        assert watch.observe("s", "public.t", good + 1, {"A": 1}, i * 61.0) is None


def test_good_events_before_a_break_do_not_delay_the_trip() -> None:
    """A busy table whose mapping breaks: the first chunk of failures trips it, although the
    window still holds thousands of good events from before."""
    watch = FloodWatch(RULE)
    for t in range(50):
        assert watch.observe("s", "public.t", 200, {}, float(t)) is None
    trip = watch.observe("s", "public.t", 25, {"MappingError": 25}, 50.0)
    assert trip is not None and (trip.failures, trip.events) == (25, 25)


def test_a_table_failing_on_every_row_trips_on_the_chunk_with_enough_failures() -> None:
    watch = FloodWatch(RULE)
    for i in range(19):
        assert watch.observe("s", "public.t", 1, {"MappingError": 1}, float(i)) is None
    trip = watch.observe("s", "public.t", 1, {"MappingError": 1}, 19.0, "no such column")
    assert trip is not None
    assert (trip.table, trip.error_class, trip.failures, trip.events) == (
        "public.t",
        "MappingError",
        20,
        20,
    )
    assert trip.example == "no such column"
    # One chunk of a flood trips alone.
    assert FloodWatch(RULE).observe("s", "public.u", 500, {"DecodeError": 500}, 0.0) is not None


def test_tables_and_sources_are_counted_apart_and_forget_starts_afresh() -> None:
    watch = FloodWatch(RULE)
    for t in range(10):
        # 10 + 10 failures, but in two tables and two sources: none has 20
        assert watch.observe("s", "public.a", 1, {"E": 1}, float(t)) is None
        assert watch.observe("s", "public.b", 1, {"E": 1}, float(t)) is None
        assert watch.observe("r", "public.a", 1, {"E": 1}, float(t)) is None
    # Different error classes of one table are counted apart too.
    assert watch.observe("s", "public.a", 9, {"F": 9}, 10.0) is None
    watch.forget("s")
    for t in range(19):
        assert watch.observe("s", "public.a", 1, {"E": 1}, 20.0 + t) is None
    # "r" was not forgotten: its count goes on, and 10 more make its 20.
    assert watch.observe("r", "public.a", 10, {"E": 10}, 20.0) is not None
