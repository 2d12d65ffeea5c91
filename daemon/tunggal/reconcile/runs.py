"""Each `tunggal verify` run, kept in the target (`public.tunggal_verify_runs`), and the slow
probe through which the daemon exports the latest run per table as `tunggal_verify_*` gauges.

The probe is a daemon thread polling the target every `interval_s` (30 s); a target that
cannot be read leaves the gauges as they were and is logged at debug, never worse.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import psycopg

from tunggal.metrics import Metrics, VerifyRun

if TYPE_CHECKING:  # the daemon imports the probe, not verify itself
    from tunggal.reconcile.mergecheck import MergeResult
    from tunggal.reconcile.verify import TableResult

MERGE_SOURCE: Final = "(merge)"  # as `reconcile.mergecheck` names it

log = logging.getLogger(__name__)

RUNS_TABLE: Final = "public.tunggal_verify_runs"

_INSERT: Final = (
    f"INSERT INTO {RUNS_TABLE} (source, source_tables, target_table, mode, started_at, "
    "finished_at, seconds, position, source_rows, target_rows, missing, extra, differing, "
    "unsettled, unmappable, repaired) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s, %s, %s, %s, %s)"
)

# The newest run of every (source, target table) pair.
_LATEST: Final = f"""
SELECT DISTINCT ON (source, target_table) source, target_table,
       extract(epoch FROM finished_at)::float8, seconds, source_rows, target_rows,
       missing, extra, differing, unsettled, unmappable
FROM {RUNS_TABLE} ORDER BY source, target_table, finished_at DESC
"""


def record(
    conn: psycopg.Connection[Any],
    results: Sequence[TableResult],
    merges: Sequence[MergeResult],
    repaired: dict[str, int],
) -> bool:
    """Keep the runs; False when the target has no runs table yet (`tunggal schema --apply`)."""
    try:
        with conn.transaction():
            for m in merges:
                name = f"{MERGE_SOURCE} {m.target.name}"
                conn.execute(
                    _INSERT,
                    (
                        MERGE_SOURCE,
                        [],
                        m.target.name,
                        "merge",
                        m.started_at,
                        _at(m.started_at.timestamp() + m.seconds),
                        m.seconds,
                        0,
                        m.rows,
                        m.rows,
                        m.count("missing"),
                        m.count("extra"),
                        m.count("differing") + m.beyond,
                        0,
                        0,
                        repaired.get(name, 0),
                    ),
                )
            for r in results:
                check = r.check
                finished = r.started_at.timestamp() + r.seconds
                conn.execute(
                    _INSERT,
                    (
                        check.source,
                        [e.source_table for e in check.entries],
                        check.target.name,
                        r.mode,
                        r.started_at,
                        _at(finished),
                        r.seconds,
                        r.position,
                        r.source_rows,
                        r.target_rows,
                        r.count("missing"),
                        r.count("extra"),
                        r.count("differing"),
                        len(r.unsettled),
                        r.unmappable,
                        repaired.get(check.name, 0),
                    ),
                )
    except psycopg.errors.UndefinedTable:
        return False
    return True


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def latest(conn: psycopg.Connection[Any]) -> list[VerifyRun]:
    rows = conn.execute(_LATEST).fetchall()
    return [
        VerifyRun(
            source=r[0],
            table=r[1],
            finished=float(r[2]),
            seconds=float(r[3]),
            rows=int(max(r[4], r[5])),
            missing=int(r[6]),
            extra=int(r[7]),
            differing=int(r[8]),
            unsettled=int(r[9]),
            unmappable=int(r[10]),
        )
        for r in rows
    ]


@dataclass
class VerifyProbe:
    """Reads the newest verify runs from the target into `metrics` every `interval_s`."""

    metrics: Metrics
    dsn: str
    stop: threading.Event
    interval_s: float = 30.0
    first_s: float = 5.0

    def start(self) -> VerifyProbe:
        threading.Thread(target=self._loop, name="tunggal-verify-probe", daemon=True).start()
        return self

    def _loop(self) -> None:
        wait = self.first_s
        while not self.stop.wait(wait):
            wait = self.interval_s
            self.poll()

    def poll(self) -> None:
        conninfo = self.dsn.replace("postgresql+psycopg://", "postgresql://", 1)
        try:
            with psycopg.connect(
                conninfo, connect_timeout=5, application_name="tunggal-verify-probe"
            ) as conn:
                runs = latest(conn)
        except psycopg.errors.UndefinedTable:
            return  # no runs table: verify was never set up
        except Exception as exc:
            log.debug("cannot read the verify runs: %s", str(exc).strip().splitlines()[0:1])
            return
        self.metrics.set_verify_runs(runs)
