"""What the whole-daemon stages share: the apply rate read from the target's progress table."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence

import psycopg


def applied_rate(
    dsn: str,
    source: str,
    wanted: int,
    procs: Sequence[subprocess.Popen[bytes]],
    logs: str,
    *,
    steady: Callable[[], bool] | None = None,
) -> tuple[int, float]:
    """(events, seconds) from the first commit of `source` until `wanted` events are applied.

    The first commit's events are left out, and so are start-up and the first group join: the
    rate is the steady one. With `steady`, the clock starts at the first commit seen once it
    says so (several instances: once the group has settled). Raises, pointing at `logs`, if a
    daemon exits or it takes 10 min.
    """
    first: float | None = None
    first_applied = applied = 0
    deadline = time.monotonic() + 600
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT events_applied FROM tunggal_progress WHERE source = %s", (source,)
            ).fetchone()
            applied = int(row[0]) if row else 0
            if applied and first is None and (steady is None or steady()):
                first, first_applied = time.perf_counter(), applied
            if applied >= wanted:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a daemon exited early; see {logs}")
            time.sleep(0.02)
    done = time.perf_counter()
    if first is None or applied < wanted:
        raise RuntimeError(f"only {applied} of {wanted} events applied; see {logs}")
    return wanted - first_applied, done - first
