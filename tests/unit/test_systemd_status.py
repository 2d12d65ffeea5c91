"""systemd's status line: what streams, the target down since when and why, paused sources."""

from __future__ import annotations

import datetime as dt

from tunggal.metrics import TargetState
from tunggal.runtime.systemd import status_line


def test_the_status_line_says_what_streams_or_that_the_target_is_down() -> None:
    states = {"e_planning": "streaming", "sipkd": "streaming", "kontrak": "snapshot"}
    assert status_line(TargetState(), states, []) == (
        "streaming e_planning, sipkd; kontrak snapshot"
    )
    since = dt.datetime(2026, 1, 2, 10, 42, 7).timestamp()
    down = TargetState(up=False, down_since=since, error="connection refused")
    paused = ["source sipkd paused: public.sp2d fails (MappingError)"]
    assert status_line(down, states, paused) == (
        "target down since 10:42:07: connection refused; "
        "source sipkd paused: public.sp2d fails (MappingError)"
    )
    assert status_line(TargetState(), {}, []) == "running"
