"""`tunggal connectors apply --prune` and `tunggal connectors delete` against a real Kafka Connect
worker on the real (tansu) broker, with real PostgreSQL sources: what is deleted from Connect,
and which slots and publications stay on the source."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import sql, wait_until
from tests.integration.test_connect import (  # noqa: F401 - the fixture
    Sources,
    sources,
)
from tests.integration.test_connect_apply_checks import on_worker
from tunggal.connect.prune import MARKER
from tunggal.devtools.kafkaconnect import ConnectStandalone

pytestmark = pytest.mark.integration


def slot_exists(made: Sources, name: str) -> bool:
    query = "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s"
    return bool(sql(made.pg.dsn("postgres"), query, (f"tunggal_{name}",)))


def publication_exists(made: Sources, name: str) -> bool:
    query = "SELECT 1 FROM pg_publication WHERE pubname = %s"
    return bool(sql(made.dsns[name], query, (f"tunggal_{name}_pub",)))


def test_prune_deletes_the_removed_source_with_its_slot_and_publication_and_delete_keeps_a_slot(
    sources: Sources,  # noqa: F811
    kafka_connect: ConnectStandalone,
    tmp_path: Path,
) -> None:
    keep = sources.add("keep")
    gone = sources.add("gone")
    applied = sources.cli("apply", "--config", str(sources.config()))
    assert applied.returncode == 0, applied.stderr
    for name in (keep, gone):  # the tasks make them when they start
        wait_until(
            lambda name=name: slot_exists(sources, name) and publication_exists(sources, name),
            60,
            message=f"slot and publication of {name}",
            context=sources.connect_log,
        )

    # Someone else's connector on the same worker (no tunggal.target): never pruned.
    url = f"{kafka_connect.url}/connectors/{keep}/config"
    with urllib.request.urlopen(url, timeout=30) as response:
        theirs = json.loads(response.read())
    other = f"other_{uuid.uuid4().hex[:8]}"
    del theirs[MARKER]
    theirs |= {
        "name": other,
        "slot.name": f"tunggal_{other}",
        "publication.name": f"tunggal_{other}_pub",
        "topic.prefix": other,
    }
    sources.dsns[other] = sources.dsns[keep]  # for the fixture's cleanup of connector and slot
    put = urllib.request.Request(
        f"{kafka_connect.url}/connectors/{other}/config",
        data=json.dumps(theirs).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(put, timeout=30).close()

    # The source leaves tunggal.yaml (its mapping with it).
    del sources.connectors[gone]
    (tmp_path / "mappings" / f"{gone}.yaml").unlink()
    config = sources.config()
    pruned = sources.cli(
        "apply", "--config", str(config), "--prune", "--drop-slot", "--drop-publication", "--yes"
    )

    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    lines = pruned.stdout.splitlines()
    assert lines[0] == f"{keep}: unchanged"
    assert f"{gone}: deleted" in lines
    assert any(
        line.startswith(f"{gone}: dropped replication slot tunggal_{gone} ") for line in lines
    )
    assert any(
        line.startswith(f"{gone}: dropped publication tunggal_{gone}_pub ") for line in lines
    )
    assert keep not in pruned.stdout.replace(f"{keep}: unchanged", "")  # the other one untouched
    worker = on_worker(kafka_connect)
    assert gone not in worker and {keep, other} <= worker
    assert other not in pruned.stdout
    assert not slot_exists(sources, gone) and not publication_exists(sources, gone)
    assert slot_exists(sources, keep) and publication_exists(sources, keep)

    # Pruning again finds nothing more to do.
    again = sources.cli("apply", "--config", str(config), "--prune", "--yes")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{keep}: unchanged"

    # Without drop flags, delete keeps the slot and says where to find it later.
    deleted = sources.cli("delete", keep, "--yes")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert deleted.stdout.splitlines()[0] == f"{keep}: deleted"
    assert f"replication slot tunggal_{keep} on " in deleted.stdout
    assert "`tunggal slots`" in deleted.stdout
    assert keep not in on_worker(kafka_connect)
    assert slot_exists(sources, keep) and publication_exists(sources, keep)

    # A connector Connect does not have: one line, exit 2.
    missing = sources.cli("delete", keep, "--yes")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: Kafka Connect at {kafka_connect.url} has no connector named {keep!r} "
        "(leftover slots: `tunggal slots`)"
    ]
    assert sources.password not in "".join(sources.outputs)
