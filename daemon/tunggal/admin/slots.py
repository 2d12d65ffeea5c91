"""`tunggal slots`: the replication slots on the PostgreSQL source servers, read directly.

It needs no running daemon: the slots hold WAL whether Tunggal runs or not, and an operator
checking a full disk at night must see which slot holds it. Each slot is shown with the
configured source that owns it, or as an orphan (a source renamed or removed, a leftover of a
test), which `tunggal slots drop` removes after asking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tunggal.config import TunggalConfig
from tunggal.connectors import load_connector
from tunggal.errors import ConfigError, FatalError
from tunggal.metrics import SlotState
from tunggal.sources.pgstats import (
    SourceDatabase,
    by_server,
    drop_publication,
    drop_slot,
    read_server_slots,
    slot_active,
    slot_owners,
)


@dataclass(frozen=True)
class Slot:
    server: str
    state: SlotState
    warn_bytes: float


@dataclass(frozen=True)
class SlotList:
    slots: list[Slot]
    # server -> why it could not be read
    unreadable: dict[str, str]


class DropRefused(FatalError):
    """The slot must not be dropped (it is active or a configured source's): exit 2."""


def source_databases(config: TunggalConfig) -> list[SourceDatabase]:
    """Every configured PostgreSQL source, from its connector file (the mappings are not
    needed: which tables a source reads does not matter to its slot)."""
    databases, problems = [], []
    for source in config.sources:
        try:
            spec = load_connector(config.resolve(source.connector))
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        db = SourceDatabase.from_properties(source.name, spec.render([]), ())
        if db is not None:
            databases.append(db)
    if problems:
        raise ConfigError(problems)
    return databases


def list_slots(config: TunggalConfig) -> SlotList:
    slots: list[Slot] = []
    unreadable: dict[str, str] = {}
    configured = source_databases(config)
    owners = slot_owners(configured)
    for server, databases in by_server(configured).items():
        try:
            reading = read_server_slots(databases, owners)
        except Exception as exc:
            unreadable[server] = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            continue
        warn = config.slots.warn_bytes(reading.max_keep_bytes)
        slots += [Slot(server, state, warn) for state in reading.slots]
    return SlotList(slots, unreadable)


def drop_orphan(
    config: TunggalConfig, name: str, server: str | None, confirm: Callable[[Slot], bool]
) -> Slot | None:
    """Drop the orphan slot `name` once `confirm` agrees; None when it declined.

    Refused (DropRefused) for a slot a configured source owns, or one a reader holds."""
    databases = source_databases(config)
    found = [
        slot
        for slot in list_slots(config).slots
        if slot.state.slot == name and (server is None or slot.server == server)
    ]
    if not found:
        where = f" on {server}" if server else " on any source server"
        raise DropRefused(f"no replication slot {name}{where} (see `tunggal slots`)")
    if len(found) > 1:
        servers = ", ".join(slot.server for slot in found)
        raise DropRefused(f"slot {name} is on several servers ({servers}): add --server")
    slot = found[0]
    if slot.state.source is not None:
        raise DropRefused(
            f"slot {name} on {slot.server} belongs to source {slot.state.source}: it holds that "
            "source's position; remove the source from tunggal.yaml first if it is retired"
        )
    if slot.state.active:
        raise DropRefused(
            f"slot {name} on {slot.server} is in use by a reader right now; stop that reader "
            "first (pg_stat_replication shows it)"
        )
    if not confirm(slot):
        return None
    owner = by_server(databases)[slot.server][0]
    try:
        drop_slot(owner, name, slot.state.database)
    except Exception as exc:
        raise FatalError(
            f"cannot drop slot {name} on {slot.server} as user {owner.conninfo['user']}: "
            f"{str(exc).strip().splitlines()[0]}"
        ) from exc
    return slot


@dataclass(frozen=True)
class Leftovers:
    """What a deleted Kafka Connect connector leaves on its PostgreSQL source."""

    source: SourceDatabase
    publication: str | None  # None: Debezium's default, which other connectors may share

    @classmethod
    def of(cls, name: str, properties: Mapping[str, str]) -> Leftovers | None:
        """From the connector's configuration as Connect stored it (it holds the connection,
        which a source removed from tunggal.yaml no longer has); None for a non-PostgreSQL one."""
        db = SourceDatabase.from_properties(name, properties, ())
        return None if db is None else cls(db, properties.get("publication.name"))


def drop_leftovers(
    leftovers: Leftovers, *, slot: bool, publication: bool, release_s: float = 30
) -> list[str]:
    """Drop the slot and/or the publication; one line per thing done, for the operator.

    The connector was deleted, but its task lets go of the slot a few seconds later: wait up
    to `release_s` for that, and refuse (DropRefused) a slot still held after it."""
    db, done = leftovers.source, []
    where = f"{db.server}/{db.dbname}"
    try:
        if slot:
            deadline = time.monotonic() + release_s
            while (active := slot_active(db)) and time.monotonic() < deadline:
                time.sleep(0.5)
            if active is None:
                done.append(f"no replication slot {db.slot} on {where}")
            elif active:
                raise DropRefused(
                    f"slot {db.slot} on {where} is still in use {release_s:g} s after the "
                    "connector was deleted; drop it later with `tunggal slots drop "
                    f"{db.slot}`"
                )
            else:
                drop_slot(db, db.slot, db.dbname)
                done.append(f"dropped replication slot {db.slot} on {where}")
        if publication and leftovers.publication:
            dropped = drop_publication(db, leftovers.publication)
            what = "dropped publication" if dropped else "no publication"
            done.append(f"{what} {leftovers.publication} on {where}")
    except DropRefused:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FatalError(f"cannot clean up after the connector on {where}: {first}") from exc
    return done
