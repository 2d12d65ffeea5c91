"""Faults under load: the target goes away, the daemon is killed, the daemon is stopped.

Real PostgreSQL for source and target, the real Debezium engine in `tunggal run`
subprocesses. The target runs on its own cluster so that it can be stopped and started again
on the same port and data directory. Every loop is bounded and every daemon is stopped by the
fixtures, whatever happens.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_connector
from tests.faults_helpers import (
    KV_DDL,
    ChangeWriter,
    digest,
    kv_diff,
    kv_mapping,
    metric_sum,
    metrics_port,
    progress,
    same_kv,
)
from tunggal.devtools.pgcluster import PgCluster
from tunggal.runtime.runner import TARGET_CHECK_S

pytestmark = pytest.mark.integration


def _accepting(cluster: PgCluster) -> bool:
    try:
        with psycopg.connect(cluster.dsn(), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="module")
def target_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster(name="faults-target").start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@dataclass
class KvSync:
    name: str  # source name (also its replication slot's name)
    source: str
    target: str
    config: Path
    port: int  # the daemon's /metrics
    daemons: list[Daemon]
    start_daemon: Callable[[], Daemon]
    writers: list[ChangeWriter]

    def writer(self, **options: Any) -> ChangeWriter:
        """A started ChangeWriter on the source; the fixture stops it if the test fails."""
        writer = ChangeWriter(self.source, **options)
        self.writers.append(writer)
        writer.start()
        return writer

    def logs(self, chars: int = 4000) -> str:
        return "\n".join(
            f"--- {d.log.name}:\n{d.output()[-chars:]}" for d in self.daemons if d.log.exists()
        )


@pytest.fixture
def kv_sync(
    pg: PgCluster,
    new_db: Any,
    target_cluster: PgCluster,
    tmp_path: Path,
    daemon_factory: Callable[[Path], Daemon],
) -> Iterator[KvSync]:
    if not _accepting(target_cluster):  # a previous test failed while it was down
        target_cluster.start()
    source = new_db("fsrc")
    target = target_cluster.create_database(f"ftgt_{uuid.uuid4().hex[:8]}")
    sql(source, KV_DDL)
    sql(target, KV_DDL)
    # Replication slots are per cluster and named after the source: one name per test.
    name = f"flt_{uuid.uuid4().hex[:6]}"
    (tmp_path / "kv.yaml").write_text(kv_mapping(name))
    connector = write_connector(tmp_path, name, pg.port, source.rsplit("/", 1)[1])
    config = write_config(tmp_path, target, {name: str(connector)}, ["kv.yaml"])
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    daemons: list[Daemon] = []

    def start_daemon() -> Daemon:
        daemon = daemon_factory(config).start()
        daemons.append(daemon)
        return daemon

    writers: list[ChangeWriter] = []
    yield KvSync(
        name,
        source,
        target,
        config,
        metrics_port(config.read_text()),
        daemons,
        start_daemon,
        writers,
    )
    for writer in writers:
        writer.stop.set()
        writer.join(15)
    if not _accepting(target_cluster):
        target_cluster.start()
    # Drop the slot, so that a failed test leaves no WAL pinned on the shared source cluster.
    for d in daemons:
        if d.alive():
            d.kill()
    sql(
        pg.dsn(),
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE slot_name = %s AND NOT active",
        (f"tunggal_{name}",),
    )


def _wait_equal(s: KvSync, timeout: float, what: str) -> None:
    wait_until(
        lambda: same_kv(s.target, s.source),
        timeout,
        interval=0.5,
        message=what,
        context=lambda: kv_diff(s.target, s.source) + "\n" + s.logs(),
    )


def _dead_letters(target: str) -> int:
    return int(sql(target, "SELECT count(*) FROM public.tunggal_dead_letters")[0][0])


def test_target_outage_is_retried_without_loss(kv_sync: KvSync, target_cluster: PgCluster) -> None:
    s = kv_sync
    sql(s.source, "INSERT INTO kv SELECT g, 'awal', 0 FROM generate_series(1, 500) g")
    daemon = s.start_daemon()
    _wait_equal(s, 90, "snapshot")
    # 3000 changes at 75/s: the stream runs before, during and after the outage.
    writer = s.writer(total=3000, seed=11, keys=800, rate=75, max_seconds=90)
    try:
        before = progress(s.target, s.name)
        wait_until(
            lambda: progress(s.target, s.name) > before + 50,
            30,
            message="streaming before the outage",
            context=s.logs,
        )
        target_cluster.stop()
        down_at = time.monotonic()
        assert not _accepting(target_cluster)
        while time.monotonic() - down_at < 30:
            assert daemon.alive(), "daemon died while the target was down\n" + s.logs()
            time.sleep(1)
        retries_while_down = metric_sum(s.port, "tunggal_retries_total")
        written_while_down = writer.changes
    finally:
        if not _accepting(target_cluster):
            target_cluster.start()  # same port, same data directory
    assert _accepting(target_cluster)
    writer.finish(90)
    _wait_equal(s, 120, "target equal to the source after the outage")

    assert daemon.alive(), s.logs()
    assert retries_while_down > 0, s.logs()
    assert metric_sum(s.port, "tunggal_retries_total") >= retries_while_down
    assert _dead_letters(s.target) == 0, sql(
        s.target, "SELECT error FROM public.tunggal_dead_letters LIMIT 5"
    )
    assert written_while_down > 100 and writer.changes >= 3000, writer.counts
    code, _ = daemon.terminate()
    assert code == 0, s.logs()


def test_kill_9_at_random_points_loses_nothing(kv_sync: KvSync) -> None:
    s = kv_sync
    rnd = random.Random(20_240_607)
    sql(s.source, "INSERT INTO kv SELECT g, 'awal', 0 FROM generate_series(1, 3000) g")
    daemon = s.start_daemon()
    # Kills during the initial snapshot have their own test below; these land while streaming.
    _wait_equal(s, 90, "initial snapshot")
    # 50,000 changes (about 1/7 of them key changes) in multi-row statements, 100 per
    # transaction; paced so that the kills below land while changes stream in.
    writer = s.writer(
        total=50_000, seed=5, keys=10_000, rows=25, per_txn=4, rate=1200, max_seconds=100
    )
    kills: list[tuple[int, int]] = []  # (source changes written, events applied) at each kill
    for _ in range(5):
        at_start = progress(s.target, s.name)
        # Streaming again (a fresh daemon has committed a batch), then a random moment.
        wait_until(
            lambda at=at_start: progress(s.target, s.name) > at,  # type: ignore[misc]
            90,
            message="a committed batch before the next kill",
            context=s.logs,
        )
        time.sleep(rnd.uniform(0.1, 3.0))
        assert daemon.alive(), s.logs()
        daemon.kill()  # SIGKILL: no flush, no offset commit, JVM and all
        kills.append((writer.changes, progress(s.target, s.name)))
        daemon = s.start_daemon()
    writer.finish(120)
    assert writer.changes >= 50_000 and writer.counts["key"] > 1000, writer.counts
    _wait_equal(s, 120, "target equal to the source after 5 kills")
    assert _dead_letters(s.target) == 0
    # The kills landed while changes were still streaming in, not only after the writer.
    assert sum(1 for written, _ in kills if written < 50_000) >= 3, kills
    code, _ = daemon.terminate()
    assert code == 0, s.logs()


def test_kill_9_during_initial_snapshot_then_changes(kv_sync: KvSync) -> None:
    """A snapshot cut short is taken again on restart; rows deleted (or re-keyed) in the
    source between the two snapshots must not survive in the target."""
    s = kv_sync
    rows = 50_000
    sql(s.source, f"INSERT INTO kv SELECT g, 'awal', 0 FROM generate_series(1, {rows}) g")
    daemon = s.start_daemon()
    wait_until(
        lambda: progress(s.target, s.name) > 0, 90, message="first snapshot batch", context=s.logs
    )
    time.sleep(random.Random(7).uniform(0.0, 0.5))
    daemon.kill()
    copied = digest(s.target)[0]
    assert 0 < copied < rows, f"the kill missed the snapshot ({copied} rows copied)"
    # While the daemon is down: deletes, key changes and updates, among the rows copied.
    sql(s.source, "DELETE FROM kv WHERE id % 3 = 0 AND id <= 3000")
    sql(s.source, "UPDATE kv SET id = id + 100000, v = 'pindah' WHERE id % 3 = 1 AND id <= 3000")
    sql(s.source, "UPDATE kv SET v = 'ubah', n = n + 1 WHERE id % 3 = 2 AND id <= 3000")
    s.start_daemon()
    # The new snapshot has copied every row once the target holds at least as many rows as
    # the source; from then on, a short wait is enough for the rest.
    source_rows = digest(s.source)[0]
    wait_until(
        lambda: digest(s.target)[0] >= source_rows, 90, message="second snapshot", context=s.logs
    )
    _wait_equal(s, 20, "target equal to the source after a snapshot cut short")
    assert _dead_letters(s.target) == 0


def test_sigterm_under_load_exits_cleanly_and_resumes(kv_sync: KvSync) -> None:
    s = kv_sync
    sql(s.source, "INSERT INTO kv SELECT g, 'awal', 0 FROM generate_series(1, 2000) g")
    daemon = s.start_daemon()
    wait_until(lambda: progress(s.target, s.name) >= 0, 90, message="first batch", context=s.logs)
    writer = s.writer(
        total=15_000, seed=3, keys=5000, rows=10, per_txn=2, rate=1000, max_seconds=60
    )
    seen: list[int] = []

    def applied() -> int:
        seen.append(progress(s.target, s.name))
        return seen[-1]

    start = applied()
    wait_until(lambda: applied() > start + 2000, 60, message="streaming", context=s.logs)
    assert writer.is_alive(), "the writer finished before the signal: not under load"
    code, took = daemon.terminate(timeout=30)
    assert code == 0, s.logs()
    assert took < 10, f"SIGTERM took {took:.1f}s\n{s.logs()}"
    assert "stopped:" in daemon.output(), daemon.output()[-2000:]
    applied()

    daemon = s.start_daemon()
    writer.finish(60)
    wait_until(
        lambda: applied() >= 0 and same_kv(s.target, s.source),
        120,
        interval=0.5,
        message="target equal to the source after SIGTERM and restart",
        context=lambda: kv_diff(s.target, s.source) + "\n" + s.logs(),
    )
    # events_applied only grows: the graceful stop lost no committed count.
    assert seen == sorted(seen), seen
    assert _dead_letters(s.target) == 0
    assert digest(s.target)[0] > 0
    code, took = daemon.terminate(timeout=30)
    assert code == 0 and took < 10, (code, took, s.logs())


def test_nothing_acknowledged_before_the_target_commits(kv_sync: KvSync) -> None:
    """The target is blocked by a lock while changes stream in, so batches reach the daemon
    but cannot commit. If anything were marked processed before its commit (stored offsets
    and the slot's confirmed position ahead of the target), kill -9 would lose it."""
    s = kv_sync
    sql(s.source, "INSERT INTO kv SELECT g, 'awal', 0 FROM generate_series(1, 500) g")
    daemon = s.start_daemon()
    _wait_equal(s, 90, "snapshot")
    offsets = s.config.parent / "state" / f"{s.name}.offsets"
    with psycopg.connect(s.target) as blocker:
        blocker.execute("LOCK TABLE kv IN ACCESS EXCLUSIVE MODE")
        writer = s.writer(total=3000, seed=13, keys=800, rows=10, per_txn=2, rate=600)
        # The first blocked batch may still mark the last one committed before the lock.
        time.sleep(2.0)
        stored = offsets.read_bytes()
        writer.finish(60)
        time.sleep(3.0)  # many poll intervals and batches: time enough to store offsets
        assert daemon.alive(), s.logs()
        assert offsets.read_bytes() == stored, "offsets stored while the target was blocked"
        daemon.kill()
        blocker.rollback()
    s.start_daemon()
    _wait_equal(s, 90, "target equal to the source after kill -9 with the target blocked")
    assert _dead_letters(s.target) == 0


def test_graceful_stop_redelivers_nothing(kv_sync: KvSync) -> None:
    """The embedded engine marks a batch processed only once the next one is committed; a
    graceful stop must still mark the last one, so a restart starts after it."""
    s = kv_sync
    sql(s.source, "INSERT INTO kv SELECT g, 'awal', 0 FROM generate_series(1, 300) g")
    daemon = s.start_daemon()
    _wait_equal(s, 90, "snapshot")
    sql(s.source, "UPDATE kv SET v = 'ubah', n = n + 1 WHERE id <= 200")
    _wait_equal(s, 30, "the update streamed")
    applied = progress(s.target, s.name)
    code, _ = daemon.terminate(timeout=30)
    assert code == 0, s.logs()
    daemon = s.start_daemon().wait_ready()
    sql(s.source, "UPDATE kv SET v = 'lagi' WHERE id = 300")
    _wait_equal(s, 30, "the next change streamed")
    # One event more: the UPDATE after the restart; the 200 before it were not re-delivered.
    assert progress(s.target, s.name) == applied + 1, s.logs()
    code, _ = daemon.terminate(timeout=30)
    assert code == 0, s.logs()


def _status_of(port: int, source: str) -> dict[str, Any]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read()
    found = [x for x in json.loads(body)["sources"] if x["name"] == source]
    assert found, body
    return dict(found[0])


def test_a_failed_write_is_reported_at_once_and_the_batch_held(kv_sync: KvSync) -> None:
    """The target table is dropped under the daemon, then one change arrives and nothing
    after it: the write of that last batch fails (`relation ... does not exist`, which no
    retry of the same statement fixes). Within a few seconds, and without another source
    change, the log says so, /status shows the error, tunggal_source_up drops to 0 and the
    write-failure metrics count it. Nothing is acknowledged: once the table is back (`tunggal
    schema --apply`), the held batch lands and the error clears, with no restart."""
    s = kv_sync
    sql(s.source, "INSERT INTO kv SELECT g, 'awal', 0 FROM generate_series(1, 20) g")
    daemon = s.start_daemon()
    _wait_equal(s, 90, "snapshot")
    sql(s.target, "DROP TABLE kv")
    sql(s.source, "INSERT INTO kv VALUES (21, 'terakhir', 1)")
    changed_at = time.monotonic()

    def reported() -> bool:
        try:
            status = _status_of(s.port, s.name)
        except OSError:  # the daemon stopped: not reported where an operator looks
            return False
        return (
            "target write failed" in daemon.output()
            and "does not exist" in (status["error"] or "")
            and metric_sum(s.port, "tunggal_source_up") == 0
            and metric_sum(s.port, "tunggal_target_write_failing") == 1
            and metric_sum(s.port, "tunggal_target_write_failures_total") >= 1
        )

    # Debezium's poll interval (100 ms) plus one batch age (200 ms): seconds, not the next
    # event. Without it, nothing is said until another change arrives.
    wait_until(reported, 10, interval=0.2, message="the failed write reported", context=s.logs)
    assert time.monotonic() - changed_at < 10
    assert daemon.alive(), s.logs()
    line = next(x for x in daemon.output().splitlines() if "target write failed" in x)
    assert "does not exist" in line, line
    assert "Traceback" not in daemon.output()

    sql(s.target, KV_DDL)
    applied = run_cli("schema", "--apply", "--config", str(s.config))
    assert applied.returncode == 0, applied.stderr
    wait_until(
        lambda: sql(s.target, "SELECT v FROM kv WHERE id = 21") == [("terakhir",)],
        30,
        message="the held batch written once the table is back",
        context=s.logs,
    )
    wait_until(
        lambda: (
            _status_of(s.port, s.name)["error"] is None
            and metric_sum(s.port, "tunggal_source_up") == 1
        ),
        10,
        message="the error cleared after the commit",
        context=s.logs,
    )
    assert metric_sum(s.port, "tunggal_target_write_failing") == 0
    assert _dead_letters(s.target) == 0
    code, _ = daemon.terminate()
    assert code == 0, s.logs()


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class _SystemdSocket:
    """What systemd's NOTIFY_SOCKET receives from the daemon: READY=1, STATUS=..., in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def statuses(self) -> list[str]:
        return [m.removeprefix("STATUS=") for m in list(self.messages) if m.startswith("STATUS=")]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def test_a_target_outage_shows_in_status_readyz_metrics_and_systemd(
    kv_sync: KvSync, target_cluster: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target stopped for a while under a stream of changes: at the first failed write,
    `tunggal_target_up` is 0, /readyz 503 (/healthz stays 200: the process is fine and
    retrying), /status and `tunggal status` say the target is down since when and why, and
    systemd's STATUS= says so. Once it is back, all of it returns to normal and nothing is
    lost."""
    s = kv_sync
    notify = _SystemdSocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    try:
        sql(s.source, "INSERT INTO kv SELECT g, 'awal', 0 FROM generate_series(1, 300) g")
        daemon = s.start_daemon()
        _wait_equal(s, 90, "snapshot")
        assert metric_sum(s.port, "tunggal_target_up") == 1
        assert _get(s.port, "/readyz") == 200
        writer = s.writer(total=2000, seed=5, keys=600, rate=60, max_seconds=90)
        try:
            wait_until(
                lambda: any(x.startswith("streaming ") for x in notify.statuses()),
                30,
                message="STATUS= streaming",
                context=lambda: str(notify.messages),
            )
            target_cluster.stop()
            down_at = time.time()

            def down() -> bool:
                target = json.loads(
                    urllib.request.urlopen(f"http://127.0.0.1:{s.port}/status", timeout=5).read()
                )["target"]
                return bool(
                    target["up"] is False
                    and target["down_since"] >= down_at - 1
                    and target["error"]
                    and metric_sum(s.port, "tunggal_target_up") == 0
                    and _get(s.port, "/readyz") == 503
                    and any(x.startswith("target down since ") for x in notify.statuses())
                )

            wait_until(down, 20, interval=0.3, message="the target shown down", context=s.logs)
            assert _get(s.port, "/healthz") == 200
            shown = run_cli("status", "--url", f"http://127.0.0.1:{s.port}")
            assert shown.returncode == 0, shown.stderr
            line = next(x for x in shown.stdout.splitlines() if x.startswith("target:"))
            assert line.startswith("target: DOWN since "), shown.stdout
            time.sleep(10)  # a while down, still retrying
            assert daemon.alive(), s.logs()
            assert _get(s.port, "/healthz") == 200 and _get(s.port, "/readyz") == 503
        finally:
            if not _accepting(target_cluster):
                target_cluster.start()
        writer.finish(90)
        _wait_equal(s, 120, "target equal to the source after the outage")
        wait_until(
            lambda: (
                metric_sum(s.port, "tunggal_target_up") == 1
                and _get(s.port, "/readyz") == 200
                and notify.statuses()[-1].startswith("streaming ")
            ),
            20,
            message="all back to normal",
            context=lambda: s.logs() + str(notify.statuses()[-3:]),
        )
        status = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{s.port}/status", timeout=5).read()
        )
        assert status["target"] == {
            "up": True,
            "down_since": None,
            "seconds_down": None,
            "error": None,
        }
        shown = run_cli("status", "--url", f"http://127.0.0.1:{s.port}")
        assert "target: up" in shown.stdout, shown.stdout
        assert _dead_letters(s.target) == 0
        code, _ = daemon.terminate()
        assert code == 0, s.logs()
    finally:
        notify.close()


def _target_shown(s: KvSync, *, up: bool, what: str) -> None:
    """Within the check made between batches (and some slack): `tunggal_target_up` and
    /readyz say the target is `up`, or down."""
    wait_until(
        lambda: (
            metric_sum(s.port, "tunggal_target_up") == int(up)
            and _get(s.port, "/readyz") == (200 if up else 503)
        ),
        TARGET_CHECK_S + 15,
        interval=0.5,
        message=what,
        context=s.logs,
    )


def test_a_target_down_while_nothing_is_written_shows_all_the_same(
    kv_sync: KvSync, target_cluster: PgCluster
) -> None:
    """A quiet night: no change to write, and the target stops. It shows down within the check
    made between batches (`tunggal_target_up` 0, /readyz 503, one WARNING however many checks
    fail), not only at the next write; started again, it shows up without a write, and a change
    made afterwards arrives. Before, an idle daemon said ready with its target down."""
    s = kv_sync
    sql(s.source, "INSERT INTO kv SELECT g, 'awal', 0 FROM generate_series(1, 50) g")
    daemon = s.start_daemon()
    _wait_equal(s, 90, "snapshot")
    assert metric_sum(s.port, "tunggal_target_up") == 1
    assert _get(s.port, "/readyz") == 200
    try:
        target_cluster.stop()
        _target_shown(s, up=False, what="the idle daemon's target shown down")
        assert _get(s.port, "/healthz") == 200
        time.sleep(TARGET_CHECK_S + 2)  # another check fails: still one WARNING
    finally:
        if not _accepting(target_cluster):
            target_cluster.start()
    _target_shown(s, up=True, what="the target shown up again without a write")
    log = s.logs(chars=100_000)
    assert log.count("target unreachable:") == 1, log
    assert log.count("target reachable again") == 1, log
    assert "target write failed" not in log, log  # nothing was written meanwhile
    sql(s.source, "UPDATE kv SET v = 'baru' WHERE id <= 10")
    _wait_equal(s, 60, "a change after the target came back")
    code, _ = daemon.terminate()
    assert code == 0, s.logs()
