"""The daemon's garbage-collector settings (runtime.gc_tuning), each check in a fresh
interpreter so that this test process keeps CPython's defaults. The runner's periodic sweep is
tested in test_runner.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tunggal.runtime.gc_tuning import THRESHOLDS

_PRELUDE = """
import gc, weakref
from tunggal.runtime.gc_tuning import THRESHOLDS, tune_for_throughput

class Node:
    pass

def garbage_cycle():
    node = Node()
    node.self = node
    return weakref.ref(node)
"""


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_start_up_objects_are_frozen_and_the_young_pass_is_rarer() -> None:
    out = _run(
        """
        before = gc.get_threshold()
        tune_for_throughput()
        print(before[0], gc.get_threshold() == THRESHOLDS, gc.get_freeze_count() > 1000)
        """
    )
    default_young, thresholds_set, frozen = out.split()
    assert (thresholds_set, frozen) == ("True", "True")
    assert int(default_young) < THRESHOLDS[0]


def test_a_cycle_is_collected_once_enough_is_allocated() -> None:
    out = _run(
        """
        tune_for_throughput()
        alive = garbage_cycle()
        held, when = [], None
        for i in range(THRESHOLDS[0] * 2):
            held.append({"i": i})  # net allocations, as a batch in hand makes them
            if alive() is None:
                when = i
                break
        print(when)
        """
    )
    assert out != "None", "the collector never ran"
    assert int(out) > THRESHOLDS[0] // 2, "collected too early: thresholds not raised"
