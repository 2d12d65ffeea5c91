"""How `tunggal verify` waits for the target to pass a source position (`reconcile.settle`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tunggal.reconcile.settle import wait_for


@dataclass
class FakeWatermark:
    """The target reaches `at` after `needs` nudges (a quiet source), or never (None)."""

    needs: int | None
    tell: bool = True
    nudges: int = 0
    asked: list[int] = field(default_factory=list)

    def reached(self, position: int) -> bool | None:
        self.asked.append(position)
        if not self.tell:
            return None
        return self.needs is not None and self.nudges >= self.needs

    def nudge(self) -> None:
        self.nudges += 1

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Sleep(threading.Event):
    """An event whose wait() moves the fake clock instead of sleeping."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.now += timeout or 0
        return False


def test_already_there_needs_no_nudge() -> None:
    clock = Clock()
    mark = FakeWatermark(needs=0)
    assert wait_for(mark, 7, 60, Sleep(clock), clock=clock) is True
    assert mark.nudges == 0 and mark.asked == [7]


def test_a_quiet_source_is_nudged_once_a_second_until_it_passes() -> None:
    clock = Clock()
    mark = FakeWatermark(needs=2)  # the second signal's commit epoch is past the position
    assert wait_for(mark, 7, 60, Sleep(clock), clock=clock) is True
    assert mark.nudges == 2 and 1.0 <= clock.now < 2.0


def test_the_wait_ends_at_the_deadline() -> None:
    clock = Clock()
    mark = FakeWatermark(needs=None)
    assert wait_for(mark, 7, 5.0, Sleep(clock), clock=clock) is False
    assert clock.now >= 5.0 and 5 <= mark.nudges <= 6


def test_a_source_that_cannot_tell_is_not_waited_for() -> None:
    clock = Clock()
    assert wait_for(FakeWatermark(needs=0, tell=False), 7, 60, Sleep(clock), clock=clock) is None
    assert clock.now == 0


def test_stopping_ends_the_wait() -> None:
    stop = threading.Event()
    stop.set()
    assert wait_for(FakeWatermark(needs=None), 7, 1e9, stop) is False
