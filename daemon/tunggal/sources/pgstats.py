"""What a PostgreSQL source database says about us: the WAL our replication slot holds back,
and how many rows each captured table has (the "of total" of snapshot progress).

A slot that is not advancing makes the source keep WAL until its disk fills, which takes the
source system down with it: the most important alert an operator of CDC can have. It is
polled on a slow timer in a daemon thread; a source that cannot be reached is logged at debug
and its metric left out, never anything worse.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from tunggal.metrics import Metrics

log = logging.getLogger(__name__)

SLOT_RETAINED = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8
FROM pg_replication_slots WHERE slot_name = %s
"""

# reltuples is -1 until the first ANALYZE (0 before PostgreSQL 14); the statistics
# collector's n_live_tup follows inserts without one, so it answers first.
ROW_ESTIMATES = """
SELECT n.nspname || '.' || c.relname,
       COALESCE(NULLIF(s.n_live_tup, 0), GREATEST(c.reltuples, 0))::bigint
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE n.nspname || '.' || c.relname = ANY(%s)
"""


@dataclass(frozen=True)
class SourceDatabase:
    """How to reach one PostgreSQL source, taken from its rendered Debezium properties."""

    name: str
    slot: str
    tables: tuple[str, ...]
    conninfo: Mapping[str, str]

    @classmethod
    def from_properties(
        cls, name: str, properties: Mapping[str, str], tables: Sequence[str]
    ) -> SourceDatabase | None:
        if "PostgresConnector" not in properties.get("connector.class", ""):
            return None
        conninfo = {
            "host": properties.get("database.hostname", "localhost"),
            "port": properties.get("database.port", "5432"),
            "user": properties.get("database.user", ""),
            "password": properties.get("database.password", ""),
            "dbname": properties.get("database.dbname", ""),
        }
        if "database.sslmode" in properties:
            conninfo["sslmode"] = properties["database.sslmode"]
        slot = properties.get("slot.name", f"tunggal_{name}")
        return cls(name, slot, tuple(tables), conninfo)


def _connect(db: SourceDatabase) -> psycopg.Connection[Any]:
    conninfo = make_conninfo(
        "",
        **db.conninfo,
        connect_timeout=5,
        application_name="tunggal-stats",
        options="-c statement_timeout=5000",
    )
    return psycopg.connect(conninfo, autocommit=True)


def slot_exists(db: SourceDatabase) -> bool:
    with _connect(db) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (db.slot,)
        ).fetchone()
    return row is not None


def read_source(db: SourceDatabase) -> tuple[float | None, dict[str, int]]:
    """(WAL bytes retained by the slot, or None while it does not exist; row estimates)."""
    with _connect(db) as conn:
        row = conn.execute(SLOT_RETAINED, (db.slot,)).fetchone()
        retained = float(row[0]) if row is not None and row[0] is not None else None
        estimates = {
            str(table): int(n) for table, n in conn.execute(ROW_ESTIMATES, (list(db.tables),))
        }
    return retained, estimates


class SlotProbe:
    """Polls every source database every `interval_s` (30 s), and every `first_s` until a
    source's slot exists (Debezium creates it at its first start)."""

    def __init__(
        self,
        metrics: Metrics,
        databases: Sequence[SourceDatabase],
        stop: threading.Event,
        interval_s: float = 30.0,
        first_s: float = 2.0,
    ) -> None:
        self.metrics = metrics
        self.databases = list(databases)
        self.stop = stop
        self.interval_s = interval_s
        self.first_s = first_s
        self._thread = threading.Thread(target=self._loop, name="tunggal-slot-probe", daemon=True)

    def start(self) -> SlotProbe:
        if self.databases:
            self._thread.start()
        return self

    def _loop(self) -> None:
        seen: set[str] = set()
        wait = self.first_s
        while not self.stop.wait(wait):
            for db in self.databases:
                if self.poll_one(db):
                    seen.add(db.name)
            all_seen = len(seen) == len(self.databases)
            wait = self.interval_s if all_seen else self.first_s

    def poll_one(self, db: SourceDatabase) -> bool:
        """True once the slot was found."""
        retained: float | None = None
        try:
            retained, estimates = read_source(db)
        except Exception as exc:
            log.debug("cannot read slot and table statistics of %s: %s", db.name, _short(exc))
        else:
            self.metrics.set_row_estimates(db.name, estimates)
        self.metrics.set_slot_retained(db.name, db.slot, retained)
        return retained is not None


def _short(exc: Any) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
