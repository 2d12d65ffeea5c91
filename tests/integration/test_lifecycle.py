"""Daemon lifecycle: systemd notify/watchdog, refusing root, hot reload of mappings."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_connector
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

MAPPING = """source: sys_r
tables:
  - from: public.kv
    to: public.kv
    key: [id]
    columns:
      id: id
      v: {from: v, transform: [TRANSFORM]}
"""


@pytest.fixture
def streaming(pg: PgCluster, new_db: Any, tmp_path: Path) -> dict[str, Any]:
    source, target = new_db("src"), new_db("target")
    sql(source, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    # Replication slots are per cluster and named after the source: one name per test.
    name = f"sys_{uuid.uuid4().hex[:6]}"
    (tmp_path / "maps").mkdir()
    mapping = tmp_path / "maps" / "sys_r.yaml"
    mapping.write_text(MAPPING.replace("TRANSFORM", "upper").replace("sys_r", name))
    connector = write_connector(tmp_path, name, pg.port, source.rsplit("/", 1)[1])
    config = write_config(tmp_path, target, {name: str(connector)}, ["maps/*.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    port = int(re.search(r"port: (\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    return {
        "source": source,
        "target": target,
        "config": config,
        "mapping": mapping,
        "name": name,
        "metrics": f"http://127.0.0.1:{port}/metrics",
    }


def test_run_refuses_root_unless_allowed(streaming: dict[str, Any]) -> None:
    if os.geteuid() != 0:
        pytest.skip("only meaningful as root")  # CI runs as root, so this always runs there
    result = run_cli("run", "--config", str(streaming["config"]), env={"TUNGGAL_ALLOW_ROOT": "0"})
    assert result.returncode == 2
    assert "refusing to run as root" in result.stderr


def test_systemd_notify_and_watchdog(
    streaming: dict[str, Any], tmp_path: Path, daemon_factory: Any
) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(60)
    os.environ["NOTIFY_SOCKET"] = str(path)
    os.environ["WATCHDOG_USEC"] = "1000000"
    try:
        daemon: Daemon = daemon_factory(streaming["config"]).start()
    finally:
        del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
    messages: list[str] = []

    def receive_until(wanted: str) -> None:
        while wanted not in messages:
            messages.append(listener.recv(256).decode())

    receive_until("READY=1")
    sql(streaming["source"], "INSERT INTO kv VALUES (1, 'satu')")
    wait_until(
        lambda: sql(streaming["target"], "SELECT v FROM kv") == [("SATU",)],
        90,
        message="streaming",
        context=lambda: daemon.output()[-3000:],
    )
    # The main loop pings at half the watchdog interval.
    started = time.monotonic()
    pings = 0
    while pings < 3:
        if listener.recv(256).decode() == "WATCHDOG=1":
            pings += 1
    assert time.monotonic() - started < 5
    # A loop that stops running (here: the whole process frozen) stops the pings.
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGSTOP)
    listener.settimeout(2)
    with pytest.raises(TimeoutError):
        while True:
            listener.recv(256)
    daemon.proc.send_signal(signal.SIGCONT)
    listener.settimeout(30)
    code, took = daemon.terminate()
    receive_until("STOPPING=1")
    assert code == 0 and took < 10
    listener.close()


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url).read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_hot_reload_invalid_then_valid_under_load(
    streaming: dict[str, Any], daemon_factory: Any
) -> None:
    source, target, mapping = streaming["source"], streaming["target"], streaming["mapping"]
    daemon: Daemon = daemon_factory(streaming["config"]).start()
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        with psycopg.connect(source, autocommit=True) as conn:
            i = 0
            while not stop.is_set() and i < 4000:
                i += 1
                conn.execute("INSERT INTO kv VALUES (%s, %s)", (i, f"Nilai {i}"))
                written.append(i)
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_until(
            lambda: sql(target, "SELECT count(*) FROM kv")[0][0] > 50,
            90,
            message="streaming",
            context=lambda: daemon.output()[-3000:],
        )
        # An invalid mapping is refused: the old one keeps working.
        mapping.write_text(
            MAPPING.replace("TRANSFORM", "uppper").replace("sys_r", streaming["name"])
        )
        failures = 'tunggal_mapping_reloads_total{result="failure"}'
        wait_until(
            lambda: _metric(streaming["metrics"], failures) >= 1,
            30,
            message="reload failure counted",
            context=lambda: daemon.output()[-3000:],
        )
        assert "uppper" in daemon.output() and "sys_r.yaml" in daemon.output()
        assert daemon.alive()
        # A valid one is swapped in at a batch boundary; SIGHUP also asks for a reload.
        mapping.write_text(
            MAPPING.replace("TRANSFORM", "lower").replace("sys_r", streaming["name"])
        )
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        successes = 'tunggal_mapping_reloads_total{result="success"}'
        wait_until(
            lambda: _metric(streaming["metrics"], successes) >= 1,
            30,
            message="reload success counted",
            context=lambda: daemon.output()[-3000:],
        )
        marker = max(written)
        wait_until(
            lambda: sql(target, "SELECT count(*) FROM kv WHERE id > %s", (marker + 20,))[0][0] > 0,
            60,
            message="rows after the reload",
        )
    finally:
        stop.set()
        thread.join()
    wait_until(
        lambda: sql(target, "SELECT count(*) FROM kv")[0][0] == len(written),
        60,
        message="every row",
        context=lambda: daemon.output()[-3000:],
    )
    rows = dict(sql(target, "SELECT id, v FROM kv"))
    assert set(rows) == set(written)  # nothing lost
    # Each row went through exactly one mapping set, and the switch happened once.
    styles = [
        ("upper" if rows[i] == f"NILAI {i}" else "lower")
        for i in sorted(rows)
        if rows[i] in (f"NILAI {i}", f"nilai {i}")
    ]
    assert len(styles) == len(rows)
    switch = styles.index("lower")
    assert set(styles[:switch]) == {"upper"} and set(styles[switch:]) == {"lower"}
    assert switch > 50
    code, _ = daemon.terminate()
    assert code == 0


def test_source_database_restart_recovers_without_daemon_restart(
    new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    source_pg = PgCluster(name="flaky-source").start()
    try:
        source = source_pg.create_database("src")
        target = new_db("target")
        sql(source, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
        sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
        (tmp_path / "m.yaml").write_text(MAPPING.replace("TRANSFORM", "trim"))
        connector = write_connector(tmp_path, "sys_r", source_pg.port, "src")
        config = write_config(tmp_path, target, {"sys_r": str(connector)}, ["m.yaml"])
        assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
        daemon: Daemon = daemon_factory(config).start()
        sql(source, "INSERT INTO kv VALUES (1, 'sebelum')")
        wait_until(
            lambda: sql(target, "SELECT count(*) FROM kv") == [(1,)],
            90,
            message="streaming",
            context=lambda: daemon.output()[-3000:],
        )

        source_pg.stop()
        time.sleep(20)
        source_pg.start()
        sql(source, "INSERT INTO kv SELECT g, 'sesudah ' || g FROM generate_series(2, 100) g")
        wait_until(
            lambda: sql(target, "SELECT count(*) FROM kv") == [(100,)],
            150,
            message="changes after the source came back",
            context=lambda: daemon.output()[-4000:],
        )
        assert daemon.alive()
        assert sql(target, "SELECT v FROM kv WHERE id = 100") == [("sesudah 100",)]
        code, _ = daemon.terminate()
        assert code == 0, daemon.output()[-3000:]
    finally:
        source_pg.destroy()


def test_dropped_replication_slot_takes_a_new_snapshot_and_loses_nothing(
    streaming: dict[str, Any], daemon_factory: Any
) -> None:
    s = streaming
    sql(s["source"], "INSERT INTO kv SELECT g, 'awal' || g FROM generate_series(1, 50) g")
    daemon: Daemon = daemon_factory(s["config"]).start()

    def same() -> bool:
        expected = [(i, v.upper()) for i, v in sql(s["source"], "SELECT * FROM kv ORDER BY id")]
        return sql(s["target"], "SELECT id, v FROM kv ORDER BY id") == expected

    wait_until(same, 90, message="first sync", context=lambda: daemon.output()[-3000:])
    code, _ = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]

    # An admin (or max_slot_wal_keep_size) drops the slot; changes go on meanwhile.
    slot = f"tunggal_{s['name']}"
    sql(s["source"], "SELECT pg_drop_replication_slot(%s)", (slot,))
    sql(s["source"], "DELETE FROM kv WHERE id <= 10")
    sql(s["source"], "UPDATE kv SET v = 'ubah' || id WHERE id BETWEEN 11 AND 20")
    sql(s["source"], "INSERT INTO kv SELECT g, 'baru' || g FROM generate_series(51, 60) g")

    daemon = daemon_factory(s["config"]).start()
    wait_until(same, 90, message="target equal after the slot was lost", context=daemon.output)
    assert f"replication slot {slot} is gone" in daemon.output()
    # And it streams again, from the new slot.
    sql(s["source"], "UPDATE kv SET v = 'lagi' WHERE id = 60")
    wait_until(same, 60, message="streaming after the new snapshot", context=daemon.output)
    assert sql(
        s["source"], "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ) == [(1,)]
    code, _ = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]


def _walsender_waits_for(source: str, xid: int) -> bool:
    """Is the slot being created (by the daemon's walsender) waiting for transaction `xid`?"""
    return bool(
        sql(
            source,
            "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE a.backend_type = 'walsender' AND l.locktype = 'transactionid' "
            "AND NOT l.granted AND l.transactionid::text = %s",
            (str(xid),),
        )
    )


def test_transaction_running_at_the_consistent_point_is_not_lost(
    streaming: dict[str, Any], daemon_factory: Any
) -> None:
    """A transaction that starts while the replication slot is being built, writes, and commits
    after the initial snapshot: its changes have LSNs below the snapshot's position, but they are
    newer than the rows the snapshot read, and must win over them.

    PostgreSQL builds a logical slot in steps: it waits for the transactions running when it
    started (A), then for those running at the next step (B); one that starts in between (C) is
    decoded in full but is invisible to the snapshot exported at the consistent point."""
    source, target = streaming["source"], streaming["target"]
    sql(source, "INSERT INTO kv VALUES (1, 'lama'), (2, 'dua')")
    a, b, c = (psycopg.connect(source) for _ in range(3))
    try:
        (xid_a,) = a.execute("SELECT txid_current()").fetchone()  # type: ignore[misc]
        daemon: Daemon = daemon_factory(streaming["config"]).start()
        context = lambda: daemon.output()[-3000:]  # noqa: E731
        wait_until(
            lambda: _walsender_waits_for(source, xid_a),
            90,
            message="slot waits for A",
            context=context,
        )
        (xid_b,) = b.execute("SELECT txid_current()").fetchone()  # type: ignore[misc]
        a.commit()
        wait_until(
            lambda: _walsender_waits_for(source, xid_b),
            60,
            message="slot waits for B",
            context=context,
        )
        c.execute("UPDATE kv SET v = 'baru' WHERE id = 1")
        c.execute("INSERT INTO kv VALUES (3, 'tiga')")
        b.commit()
        # The snapshot (taken at the consistent point, C still running) lands first.
        wait_until(
            lambda: sql(target, "SELECT id, v FROM kv ORDER BY id") == [(1, "LAMA"), (2, "DUA")],
            90,
            message="the snapshot",
            context=context,
        )
        c.commit()
        wait_until(
            lambda: (
                sql(target, "SELECT id, v FROM kv ORDER BY id")
                == [(1, "BARU"), (2, "DUA"), (3, "TIGA")]
            ),
            60,
            message="C's changes to win over the snapshot's rows",
            context=context,
        )
        # Its changes sit in the snapshot's epoch, above the snapshot's own rows.
        (epoch,) = sql(target, "SELECT snapshot_epoch::text FROM tunggal_progress")[0]
        epoch = int(epoch)
        positions = {k: int(p) for k, p in sql(target, "SELECT id, _tunggal_position FROM kv")}
        assert positions[2] == epoch << 64
        assert positions[2] < positions[1] < (epoch + 1) << 64
        assert daemon.terminate()[0] == 0
    finally:
        for conn in (a, b, c):
            conn.close()
