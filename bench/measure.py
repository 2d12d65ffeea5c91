"""What the whole-daemon stages share: the apply rate read from the target's progress table,
and a quiet database server to start from."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import psycopg

from tunggal.devtools.pgcluster import PgCluster


class Applied(NamedTuple):
    """Events and seconds in the measured window, and from the first commit to the last."""

    events: int
    seconds: float
    all_events: int
    all_seconds: float


def applied_rate(
    dsn: str,
    source: str,
    wanted: int,
    procs: Sequence[subprocess.Popen[bytes]],
    logs: str,
    *,
    steady: Callable[[], bool] | None = None,
    window_closed: Callable[[psycopg.Connection[Any]], bool] | None = None,
) -> Applied:
    """The rate of `source` from its first commit until `wanted` events are applied.

    The first commit's events are left out, and so are start-up and the first group join: the
    rate is the steady one. With `steady`, the window opens at the first commit seen once it
    says so (several instances: once the group has settled); with `window_closed`, it closes at
    the first poll where that says so (several instances: once the first partition is drained,
    after which one instance may have less left to read than another). All events are waited
    for either way. Raises, pointing at `logs`, if a daemon exits or it takes 10 min.
    """
    started: float | None = None
    first: float | None = None
    closed: float | None = None
    started_applied = first_applied = closed_applied = applied = 0
    deadline = time.monotonic() + 600
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT events_applied FROM tunggal_progress WHERE source = %s", (source,)
            ).fetchone()
            applied = int(row[0]) if row else 0
            now = time.perf_counter()
            if applied and started is None:
                started, started_applied = now, applied
            if applied and first is None and (steady is None or steady()):
                first, first_applied = now, applied
            if first is not None and closed is None and window_closed and window_closed(conn):
                closed, closed_applied = now, applied
            if applied >= wanted:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a daemon exited early; see {logs}")
            time.sleep(0.02)
    done = time.perf_counter()
    if started is None or first is None or applied < wanted:
        raise RuntimeError(f"only {applied} of {wanted} events applied; see {logs}")
    if closed is None:
        closed, closed_applied = done, wanted
    if closed_applied <= first_applied or closed <= first:
        # Too few events: the first commits held them all, and a rate over nothing is no rate.
        raise RuntimeError(
            f"all {wanted} events were applied before a steady window opened; "
            "measure with more events (--events)"
        )
    return Applied(
        closed_applied - first_applied, closed - first, wanted - started_applied, done - started
    )


def quiesce(cluster: PgCluster) -> None:
    """Vacuum and analyse every database, then checkpoint: the tables an earlier stage filled
    would otherwise get autovacuum and a checkpoint's writes in the middle of the next stage,
    on the same two cores."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
            )
        ]
        for name in names:
            with psycopg.connect(cluster.dsn(name), autocommit=True) as db:
                db.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
