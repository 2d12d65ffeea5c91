"""The Kafka offsets stored in the target, seen from outside the daemon: `tunggal kafka offsets`.

Who is running: a running Kafka source holds a *shared* session-level advisory lock on the
target, one per consumer group, for as long as it consumes (`hold_group_lock`). A reset takes
the same lock *exclusively* and only for its own transaction, so it is refused while any
instance of the group is running, on any machine, and a daemon starting meanwhile waits for the
reset's commit. Kafka's own view of the group is no help: tansu's DescribeGroups lists no
members, and a member that died keeps its place there for a session timeout. The lock goes
with the connection: a daemon that loses its target connection stops holding it until the
source restarts (then a reset is not refused: stop the daemon first, as the README says).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import psycopg

from tunggal.sink.postgres import classify

log = logging.getLogger(__name__)

# pg_advisory_lock(bigint): hashtextextended('tunggal-kafka <group>', 0), a class of its own
# beside the epoch locks ('tunggal-epoch <source>').
_LOCK_KEY = "SELECT hashtextextended(%s, 0)"


def _conninfo(dsn: str) -> str:
    return dsn.replace("postgresql+psycopg://", "postgresql://", 1)


def _lock_name(group: str) -> str:
    return f"tunggal-kafka {group}"


class GroupRunning(Exception):
    """An instance of the consumer group holds its lock on the target."""


def hold_group_lock(dsn: str, group: str, *, connect_timeout_s: float = 10) -> psycopg.Connection:
    """Take the group's shared lock on a connection of its own and return it: closing the
    connection lets the lock go. Waits while a reset is being written."""
    try:
        conn = psycopg.connect(
            _conninfo(dsn),
            connect_timeout=int(connect_timeout_s),
            autocommit=True,
            application_name=f"tunggal-kafka {group}"[:63],
        )
        conn.execute(f"SELECT pg_advisory_lock_shared(({_LOCK_KEY}))", (_lock_name(group),))
    except psycopg.Error as exc:
        raise classify(exc) from exc
    return conn


def stored_offsets(dsn: str, group: str) -> dict[tuple[str, int], int]:
    """Every partition's next offset the target holds for the group."""
    try:
        with psycopg.connect(_conninfo(dsn), connect_timeout=10) as conn:
            rows = conn.execute(
                "SELECT topic, partition, next_offset FROM public.tunggal_kafka_offsets "
                "WHERE consumer_group = %s",
                (group,),
            ).fetchall()
    except psycopg.Error as exc:
        raise classify(exc) from exc
    return {(t, int(p)): int(o) for t, p, o in rows}


def write_offsets(dsn: str, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
    """Overwrite the group's offsets in one transaction, refused (`GroupRunning`) while an
    instance of the group holds its shared lock."""
    try:
        with psycopg.connect(_conninfo(dsn), connect_timeout=10) as conn, conn.transaction():
            got = conn.execute(
                f"SELECT pg_try_advisory_xact_lock(({_LOCK_KEY}))", (_lock_name(group),)
            ).fetchone()
            if not (got and got[0]):
                raise GroupRunning(group)
            with conn.cursor() as cur:
                # The offsets given are of the topic as it is now, whose id the command does
                # not ask: NULL, which the daemon's next commit fills (a stale id would make it
                # take the topic for re-created and read it all again).
                has_id = cur.execute(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = 'public' "
                    "AND table_name = 'tunggal_kafka_offsets' AND column_name = 'topic_id'"
                ).fetchone()
                if has_id:
                    cur.execute(
                        "UPDATE public.tunggal_kafka_offsets SET topic_id = NULL "
                        "WHERE consumer_group = %s AND (topic, partition) IN "
                        "(SELECT * FROM unnest(%s::text[], %s::int[]))",
                        (group, [t for t, _ in offsets], [p for _, p in offsets]),
                    )
                cur.executemany(
                    "INSERT INTO public.tunggal_kafka_offsets (consumer_group, topic, "
                    "partition, next_offset, updated_at) VALUES (%s, %s, %s, %s, now()) "
                    "ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "
                    "next_offset = EXCLUDED.next_offset, updated_at = now()",
                    [(group, t, p, o) for (t, p), o in sorted(offsets.items())],
                )
    except psycopg.Error as exc:
        raise classify(exc) from exc


def group_running(dsn: str, group: str) -> bool:
    """True while an instance of the group holds its lock (asked before the confirmation)."""
    try:
        with psycopg.connect(_conninfo(dsn), connect_timeout=10) as conn:
            row = conn.execute(
                f"SELECT pg_try_advisory_xact_lock(({_LOCK_KEY}))", (_lock_name(group),)
            ).fetchone()
    except psycopg.Error as exc:
        raise classify(exc) from exc
    return not (row and row[0])
