"""What a PostgreSQL source database says about us: the WAL our replication slot holds back,
and how many rows each captured table has (the "of total" of snapshot progress).

Beyond each source's own slot, every `tunggal_*` slot on each source server is watched
(`read_server_slots`): a slot left behind by a source that was renamed or removed from the
config holds WAL just the same, and nothing else would report it.

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
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tunggal.config import SlotsConfig
from tunggal.metrics import Metrics, ServerSlots, SlotState

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


# Every slot of ours on the server, whichever database it decodes (pg_replication_slots is
# cluster-wide): those named like ours, and those the sources name with slot.name.
SERVER_SLOTS = r"""
SELECT slot_name, COALESCE(database, ''), active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8
FROM pg_replication_slots
WHERE slot_name LIKE 'tunggal\_%%' OR slot_name = ANY(%s)
ORDER BY slot_name
"""
# In MB; -1 is unlimited. No row before PostgreSQL 13.
MAX_KEEP = """
SELECT setting::float8 * 1024 * 1024 FROM pg_settings
WHERE name = 'max_slot_wal_keep_size' AND setting::float8 >= 0
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

    @property
    def server(self) -> str:
        return f"{self.conninfo['host']}:{self.conninfo['port']}"

    @property
    def dbname(self) -> str:
        return self.conninfo["dbname"]


def by_server(databases: Sequence[SourceDatabase]) -> dict[str, list[SourceDatabase]]:
    """The source databases grouped by the server ("host:port") they live on."""
    servers: dict[str, list[SourceDatabase]] = {}
    for db in databases:
        servers.setdefault(db.server, []).append(db)
    return servers


def _connect(db: SourceDatabase, dbname: str | None = None) -> psycopg.Connection[Any]:
    conninfo = make_conninfo(
        "",
        **{**db.conninfo, **({"dbname": dbname} if dbname else {})},
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


@dataclass(frozen=True)
class ServerReading:
    server: str
    slots: tuple[SlotState, ...]
    max_keep_bytes: float | None


def slot_owners(databases: Sequence[SourceDatabase]) -> dict[tuple[str, str], str]:
    """(slot, database) -> the configured source that reads it, over every server: one server
    can be named two ways ("db1", "10.0.0.5"), and a slot must never look orphaned (and so
    droppable) because its owner wrote the other name."""
    return {(db.slot, db.dbname): db.name for db in databases}


def read_server_slots(
    databases: Sequence[SourceDatabase], owners: Mapping[tuple[str, str], str]
) -> ServerReading:
    """Every watched slot on the server of `databases` (all on one server), each with the
    configured source that owns it (`owners`, see slot_owners). Read with the first source's
    credentials that connect (the view is readable by every user)."""
    error: Exception | None = None
    for db in databases:
        try:
            with _connect(db) as conn:
                named = sorted({slot for slot, _ in owners})
                rows = conn.execute(SERVER_SLOTS, (named,)).fetchall()
                keep = conn.execute(MAX_KEEP).fetchone()
        except psycopg.Error as exc:
            error = exc
            continue
        slots = tuple(
            SlotState(
                slot=str(name),
                database=str(database),
                active=bool(active),
                retained_bytes=None if retained is None else float(retained),
                source=owners.get((str(name), str(database))),
            )
            for name, database, active, retained in rows
        )
        return ServerReading(db.server, slots, None if keep is None else float(keep[0]))
    assert error is not None
    raise error


def drop_slot(db: SourceDatabase, slot: str, database: str) -> None:
    """Drop one inactive logical slot; PostgreSQL drops a logical slot from its own database."""
    with _connect(db, database or None) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            (slot,),
        )


def slot_active(db: SourceDatabase) -> bool | None:
    """Whether a reader holds the source's slot; None when there is no such slot."""
    with _connect(db) as conn:
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (db.slot,)
        ).fetchone()
    return None if row is None else bool(row[0])


def drop_publication(db: SourceDatabase, publication: str) -> bool:
    """Drop the publication from the source database; False when there was none."""
    with _connect(db) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)
        ).fetchone()
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))
    return found is not None


class SlotProbe:
    """Polls every source database every `interval_s` (30 s), and every `first_s` until a
    source's slot exists (Debezium creates it at its first start); with each round, every
    watched slot of every source server (see `read_server_slots`)."""

    def __init__(
        self,
        metrics: Metrics,
        databases: Sequence[SourceDatabase],
        stop: threading.Event,
        interval_s: float | None = None,
        first_s: float = 2.0,
        settings: SlotsConfig | None = None,
    ) -> None:
        self.metrics = metrics
        self.databases = list(databases)
        self.stop = stop
        self.settings = settings or SlotsConfig()
        self.interval_s = self.settings.interval_s if interval_s is None else interval_s
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
            for server, databases in by_server(self.databases).items():
                self.poll_server(server, databases)
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

    def poll_server(self, server: str, databases: Sequence[SourceDatabase]) -> None:
        try:
            reading = read_server_slots(databases, slot_owners(self.databases))
        except Exception as exc:
            log.debug("cannot read the replication slots of %s: %s", server, _short(exc))
            self.metrics.set_server_slots(
                server, ServerSlots(None, self.settings.warn_bytes(None), None)
            )
            return
        self.metrics.set_server_slots(
            server,
            ServerSlots(
                reading.slots,
                self.settings.warn_bytes(reading.max_keep_bytes),
                reading.max_keep_bytes,
            ),
        )


def _short(exc: Any) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
