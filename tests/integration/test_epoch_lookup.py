"""The snapshot-epoch lookup waits out a target outage instead of failing the daemon.

It runs at one moment only, the first transaction after a snapshot, on its own connection; a
target that is down then must be retried like a write (nothing is acknowledged meanwhile).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import write_config
from tunggal.config import load_config
from tunggal.devtools.pgcluster import PgCluster
from tunggal.errors import TransientError
from tunggal.metrics import Metrics
from tunggal.runtime.app import epoch_lookup
from tunggal.sink.schema import OWN_TABLES_DDL

EPOCH = 26541248 << 8  # beyond 32 bits, as real LSNs are


@pytest.fixture
def target() -> Iterator[PgCluster]:
    cluster = PgCluster(name="epoch").start()
    dsn = cluster.create_database("target")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for ddl in OWN_TABLES_DDL:
            conn.execute(ddl)
        conn.execute(
            "INSERT INTO tunggal_progress (source, position, commit_ts, snapshot_epoch) "
            "VALUES ('s', %s, 0, %s)",
            (EPOCH << 64, EPOCH),
        )
    yield cluster
    cluster.destroy()


def _retries(metrics: Metrics) -> float:
    found = metrics.registry.get_sample_value("tunggal_retries_total", {"reason": "target"})
    return found or 0.0


def test_lookup_waits_for_the_target_to_come_back(tmp_path: Path, target: PgCluster) -> None:
    config = load_config(write_config(tmp_path, target.dsn("target"), {}, ["m.yaml"]))
    metrics = Metrics()
    lookup = epoch_lookup(config, stop=threading.Event(), metrics=metrics)
    assert lookup("s") == EPOCH
    assert lookup("other") is None

    target.stop()
    found: list[int | None] = []
    asking = threading.Thread(target=lambda: found.append(lookup("s")))
    asking.start()
    time.sleep(2)
    assert asking.is_alive(), "the lookup gave up while the target was down"
    assert _retries(metrics) >= 2
    target.start()
    asking.join(timeout=30)
    assert found == [EPOCH]


def test_lookup_gives_up_on_stop_or_after_its_attempts(tmp_path: Path, target: PgCluster) -> None:
    config = load_config(write_config(tmp_path, target.dsn("target"), {}, ["m.yaml"]))
    target.stop()
    stop = threading.Event()
    lookup = epoch_lookup(config, stop=stop)
    failed: list[BaseException] = []

    def ask() -> None:
        try:
            lookup("s")
        except BaseException as exc:
            failed.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    time.sleep(1)
    started = time.monotonic()
    stop.set()
    asking.join(timeout=10)
    assert time.monotonic() - started < 5, "stopping did not end the backoff"
    assert len(failed) == 1 and isinstance(failed[0], TransientError)

    bounded = epoch_lookup(config, stop=threading.Event(), attempts=3)
    with pytest.raises(TransientError):
        bounded("s")
