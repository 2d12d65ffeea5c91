"""Every tunggal replication slot on a source server is watched, orphans included.

A PostgreSQL server of its own (slots are per server, and this one has a
max_slot_wal_keep_size the thresholds derive from), `tunggal run` and `tunggal slots` in
subprocesses.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_connector
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

MAPPING = """source: {name}
tables:
  - from: public.kv
    to: public.kv
    key: [id]
    columns: {{id: id, v: v}}
"""
MAX_KEEP_MB = 64


@pytest.fixture(scope="module")
def slots_pg() -> Iterator[PgCluster]:
    cluster = PgCluster(
        name="slots", extra_settings={"max_slot_wal_keep_size": f"'{MAX_KEEP_MB}MB'"}
    ).start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def setup(slots_pg: PgCluster, new_db: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A source on `slots_pg` with its own database, a target, and an orphan slot made by
    hand in the source database (as a source renamed long ago leaves one behind)."""
    dbname = f"src_{uuid.uuid4().hex[:8]}"
    source = slots_pg.create_database(dbname)
    sql(source, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    target = new_db("target")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    name = f"sys_{uuid.uuid4().hex[:6]}"
    orphan = f"tunggal_lama_{uuid.uuid4().hex[:6]}"
    sql(source, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (orphan,))
    # WAL written after the orphan's position: what it holds back.
    sql(source, "CREATE TABLE filler AS SELECT repeat('x', 500) AS t FROM generate_series(1, 4000)")
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "m.yaml").write_text(MAPPING.format(name=name))
    connector = write_connector(tmp_path, name, slots_pg.port, dbname)
    config = write_config(tmp_path, target, {name: str(connector)}, ["maps/*.yaml"])
    yield {
        "source": source,
        "config": config,
        "name": name,
        "orphan": orphan,
        "server": f"127.0.0.1:{slots_pg.port}",
        "cluster": slots_pg,
    }
    for slot in (orphan, f"tunggal_{name}"):
        sql(
            source,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active",
            (slot,),
        )


def _slots(source: str) -> set[str]:
    return {row[0] for row in sql(source, "SELECT slot_name FROM pg_replication_slots")}


def test_the_daemon_exports_every_slot_with_orphans_and_thresholds(
    setup: dict[str, Any], daemon_factory: Any
) -> None:
    config: Path = setup["config"]
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    port = re.search(r"port: (\d+)", config.read_text()).group(1)  # type: ignore[union-attr]
    daemon: Daemon = daemon_factory(config).start().wait_ready(90)
    server, orphan, name = setup["server"], setup["orphan"], setup["name"]

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def line(slot: str, source: str, is_orphan: str) -> re.Pattern[str]:
        labels = (
            f'database="{setup["source"].rsplit("/", 1)[1]}",orphan="{is_orphan}",'
            f'server="{server}",slot="{slot}",source="{source}"'
        )
        return re.compile(
            r"^tunggal_replication_slot_retained_wal_bytes\{" + re.escape(labels) + r"\} (\S+)$",
            re.MULTILINE,
        )

    def when_own_slot_shows() -> str | None:
        text = scrape()
        return text if line(f"tunggal_{name}", name, "false").search(text) else None

    text = wait_until(
        when_own_slot_shows,
        60,
        message="the source's own slot in the metrics",
        context=lambda: daemon.output()[-2000:],
    )
    held = line(orphan, "", "true").search(text)
    assert held is not None, text
    assert float(held.group(1)) > 1_000_000  # the filler table's WAL, at least
    assert 'tunggal_replication_slot_active{database="' in text
    # Half of max_slot_wal_keep_size (64 MB), the default threshold.
    warn = f'tunggal_replication_slot_warn_bytes{{server="{server}"}} '
    assert f"{warn}{MAX_KEEP_MB * 1024 * 1024 / 2:.1f}" in text or (
        f"{warn}3.3554432e+07" in text
    ), text
    max_keep = f'tunggal_replication_slot_max_keep_bytes{{server="{server}"}} '
    assert max_keep in text, text


def test_slots_lists_and_drops_orphans_without_the_daemon(setup: dict[str, Any]) -> None:
    config, source, orphan, name = (
        str(setup["config"]),
        setup["source"],
        setup["orphan"],
        setup["name"],
    )
    # The source's slot as Debezium leaves it when the daemon is stopped.
    sql(source, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"tunggal_{name}",))
    listed = run_cli("slots", "--config", config)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert orphan in rows and "ORPHAN" in rows[orphan], listed.stdout
    assert setup["server"] in rows[orphan], listed.stdout
    assert f"source {name}" in rows[f"tunggal_{name}"], listed.stdout
    assert "MiB" in rows[orphan], listed.stdout

    # A configured source's slot: refused, one line, exit 2, still there.
    own = run_cli("slots", "drop", f"tunggal_{name}", "--yes", "--config", config)
    assert own.returncode == 2, own.stderr
    assert own.stderr.strip().splitlines() == [
        line for line in own.stderr.splitlines() if line.startswith("error:")
    ]
    assert f"belongs to source {name}" in own.stderr, own.stderr
    assert f"tunggal_{name}" in _slots(source)

    # The orphan: asks first; "n" keeps it, "y" drops it.
    kept = _drop(config, orphan, "n\n")
    assert kept.returncode == 1 and "not dropped" in kept.stdout, kept.stdout + kept.stderr
    assert orphan in _slots(source)
    dropped = _drop(config, orphan, "y\n")
    assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    assert f"drop replication slot {orphan}" in dropped.stdout
    assert orphan not in _slots(source)


def test_an_active_orphan_is_not_dropped(setup: dict[str, Any]) -> None:
    cluster: PgCluster = setup["cluster"]
    source = setup["source"]
    # A slot of its own made after the publication: pgoutput looks publications up as of the
    # slot's position.
    sql(source, "CREATE PUBLICATION for_the_reader FOR ALL TABLES")
    orphan = f"tunggal_aktif_{uuid.uuid4().hex[:6]}"
    sql(source, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (orphan,))
    reader = subprocess.Popen(
        [
            str(cluster.bindir / "pg_recvlogical"),
            *("-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"),
            *("-d", source.rsplit("/", 1)[1], "-S", orphan, "--start", "-f", "/dev/null"),
            *("-o", "proto_version=1", "-o", "publication_names=for_the_reader"),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: (
                sql(
                    source,
                    "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                    (orphan,),
                )
                == [(True,)]
            ),
            30,
            message="the reader holding the orphan slot",
        )
        result = run_cli("slots", "drop", orphan, "--yes", "--config", str(setup["config"]))
    finally:
        reader.terminate()
        reader.wait(10)
    assert result.returncode == 2, result.stderr
    assert "in use by a reader" in result.stderr, result.stderr
    assert orphan in _slots(source)
    wait_until(
        lambda: sql(source, "SELECT 1 FROM pg_replication_slots WHERE active") == [],
        30,
        message="the reader gone",
    )
    sql(source, "SELECT pg_drop_replication_slot(%s)", (orphan,))


def test_a_fixed_threshold_marks_the_slots_over_it(setup: dict[str, Any]) -> None:
    config: Path = setup["config"]
    config.write_text(config.read_text() + "slots:\n  warn_retained_wal: 1MiB\n")
    listed = run_cli("slots", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if setup["orphan"] in line)
    assert "(over threshold)" in row, listed.stdout


def _drop(config: str, slot: str, answer: str) -> subprocess.CompletedProcess[str]:
    from tests.conftest import tunggal_cmd

    return subprocess.run(
        tunggal_cmd("slots", "drop", slot, "--config", config),
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_server_named_two_ways_shows_no_false_orphan(setup: dict[str, Any]) -> None:
    """A second source reads the same server as `localhost`: its slot, seen through the
    first source's `127.0.0.1`, is still that source's, and so not droppable."""
    config: Path = setup["config"]
    cluster: PgCluster = setup["cluster"]
    dbname = setup["source"].rsplit("/", 1)[1]
    other = f"sys_{uuid.uuid4().hex[:6]}"
    connector = write_connector(config.parent, other, cluster.port, dbname)
    connector.write_text(connector.read_text().replace("127.0.0.1", "localhost"))
    config.write_text(config.read_text() + f"  - name: {other}\n    connector: {connector}\n")
    slot = f"tunggal_{other}"
    sql(setup["source"], "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    try:
        listed = run_cli("slots", "--config", str(config))
        assert listed.returncode == 0, listed.stderr
        rows = [line for line in listed.stdout.splitlines() if f" {slot} " in line]
        assert len(rows) == 2, listed.stdout  # once per name of the server
        assert all(f"source {other}" in row for row in rows), listed.stdout
        refused = run_cli(
            "slots", "drop", slot, "--yes", "--server", setup["server"], "--config", str(config)
        )
        assert refused.returncode == 2 and f"belongs to source {other}" in refused.stderr
        assert slot in _slots(setup["source"])
    finally:
        sql(setup["source"], "SELECT pg_drop_replication_slot(%s)", (slot,))
