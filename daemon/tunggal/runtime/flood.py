"""The flood-stop rule: when a table's dead letters say the mapping is broken, not the data.

One poison row, or a few scattered ones, are set aside one by one (the dead-letter queue). A
mapping that fails on every row of a table (a CEL expression that errors, a cast the values
never fit) would set aside the whole stream the same way, thousands a second, and the target
falls behind until someone replays them all. This rule tells the two apart; the runner pauses
the source when it trips (see `Runner._pause`).

It trips for one (source, table, error class) when the table's most recent events (a run of
them up to now, none older than `window_s` seconds) hold at least `min_failures` failures of
that class AND those are at least `min_ratio` of the run. Worked example with the defaults
(20, 60 s, 0.5):
  - one bad row among 10,000 good ones: 1 failure, never trips;
  - 30 bad dates in a bulk load of 40 rows: 30 failures, 75 % of 40: trips;
  - 30 bad rows spread over a busy hour (3,000 events a minute): never 20 in a run where they
    are half: never trips;
  - a transform failing on every row: trips on the first chunk holding 20 of them, however
    many good events the table had just before (a run that starts at the break counts; a
    ratio over the whole window would let thousands through while it caught up).
Chunks are the unit: a source hands its events over in chunks, and a run is whole chunks.

Pure: no I/O, the time is an argument (huey's `loop(now=...)`), so tests drive it directly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FloodRule:
    min_failures: int = 20
    window_s: float = 60.0
    min_ratio: float = 0.5

    def trips(self, failures: int, events: int) -> bool:
        """The rule itself, over one window's totals of one table and one error class."""
        return failures >= self.min_failures and failures >= self.min_ratio * max(events, 1)


@dataclass(frozen=True)
class FloodTrip:
    """Why a source was paused: shown in the log line, /status and the metric."""

    source: str
    table: str
    error_class: str
    failures: int  # of that class in the window, the chunk that tripped it included
    events: int  # all of the table's events in the window
    window_s: float
    example: str  # one of the errors, as dead-lettered


@dataclass
class _Seen:
    """One observation of one table: when, how many events, failures by error class."""

    at: float
    events: int
    failures: dict[str, int]


@dataclass
class _TableWindow:
    seen: deque[_Seen] = field(default_factory=deque)
    events: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def add(self, item: _Seen) -> None:
        self.seen.append(item)
        self.events += item.events
        for cls, n in item.failures.items():
            self.failures[cls] = self.failures.get(cls, 0) + n

    def expire(self, before: float) -> None:
        while self.seen and self.seen[0].at <= before:
            old = self.seen.popleft()
            self.events -= old.events
            for cls, n in old.failures.items():
                left = self.failures[cls] - n
                if left:
                    self.failures[cls] = left
                else:
                    del self.failures[cls]


class FloodWatch:
    """The rule over a sliding window per (source, table): fed one chunk's counts at a time."""

    def __init__(self, rule: FloodRule | None = None) -> None:
        self.rule = rule or FloodRule()
        self._tables: dict[tuple[str, str], _TableWindow] = {}

    def observe(
        self,
        source: str,
        table: str,
        events: int,
        failures: Mapping[str, int],
        now: float,
        example: str = "",
    ) -> FloodTrip | None:
        """Count `events` of the table (failed ones included) and their failures by error
        class; the trip if the window, this observation included, breaks the rule."""
        window = self._tables.setdefault((source, table), _TableWindow())
        window.expire(now - self.rule.window_s)
        window.add(_Seen(now, events, {c: n for c, n in failures.items() if n}))
        # Runs ending now, newest chunk first: the shortest one that breaks the rule trips it.
        run_events, run_failures = 0, dict.fromkeys(window.failures, 0)
        for seen in reversed(window.seen):
            run_events += seen.events
            for cls, n in seen.failures.items():
                run_failures[cls] += n
            for cls, n in sorted(run_failures.items()):
                if self.rule.trips(n, run_events):
                    return FloodTrip(source, table, cls, n, run_events, self.rule.window_s, example)
            # A longer run adds no more failures than the window holds: once even all of
            # them would be under the ratio, no longer run trips.
            if all(total < self.rule.min_ratio * run_events for total in window.failures.values()):
                break
        return None

    def failures_before_newest(self, source: str, table: str) -> int:
        """The table's failures in the window before its newest chunk: after a trip, the ones
        dead-lettered before the pause."""
        window = self._tables.get((source, table))
        if window is None or not window.seen:
            return 0
        return sum(window.failures.values()) - sum(window.seen[-1].failures.values())

    def forget(self, source: str) -> None:
        """A fixed mapping starts the source's count afresh."""
        for key in [k for k in self._tables if k[0] == source]:
            del self._tables[key]
