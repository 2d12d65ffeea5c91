"""Progress display: log lines at most every 10 s off a terminal, bars on one."""

from __future__ import annotations

import logging

import pytest

from tunggal.progress import ProgressDisplay, Task, describe


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_describe_says_what_is_done_of_the_estimated_total() -> None:
    task = Task("k", "snapshot s public.kv", 1200, 5000, estimated=True)
    assert describe(task) == "snapshot s public.kv: 1,200 of ~5,000 rows (24%)"
    assert describe(Task("k", "replay", 3, None, unit="events")) == "replay: 3 events"


def test_without_a_terminal_it_logs_moving_tasks_every_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    display = ProgressDisplay(terminal=False, clock=clock)
    caplog.set_level(logging.INFO, logger="tunggal.progress")
    display.update([Task("a", "job", 10, 100)])
    assert caplog.messages == []  # the first 10 s are quiet: short work says nothing
    clock.now = 10.0
    display.update([Task("a", "job", 20, 100)])
    clock.now = 15.0
    display.update([Task("a", "job", 30, 100)])
    clock.now = 20.0
    display.update([Task("a", "job", 30, 100), Task("b", "other", 1, None)])
    clock.now = 30.0
    display.update([Task("a", "job", 30, 100)])  # did not move: not repeated
    display.close([Task("a", "job", 100, 100)])
    assert caplog.messages == [
        "job: 20 of 100 rows (20%)",
        "job: 30 of 100 rows (30%)",
        "other: 1 rows",
        "job: 100 of 100 rows (100%)",
    ]


def test_min_total_keeps_small_jobs_quiet(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    display = ProgressDisplay(terminal=False, clock=clock, min_total=200)
    caplog.set_level(logging.INFO, logger="tunggal.progress")
    clock.now = 60.0
    display.update([Task("a", "job", 10, 100)])
    assert caplog.messages == []


def test_in_a_terminal_it_draws_and_removes_bars() -> None:
    display = ProgressDisplay(terminal=True)
    display.update([Task("a", "job", 1, 10), Task("b", "other", 2, None)])
    assert display._bars is not None and set(display._ids) == {"a", "b"}
    display.update([Task("b", "other", 3, None)])
    assert set(display._ids) == {"b"}
    display.update([])  # everything finished: the bars go, the log has the terminal again
    assert display._bars is None
    display.update([Task("c", "again", 0, 5)])
    assert display._bars is not None and set(display._ids) == {"c"}
    display.close()
    assert display._bars is None
