"""Benchmark stages with the real embedded Debezium engine and a real source table.

- throughput: N rows inserted into the source in one statement, streamed (no snapshot) by
  (a) the engine with a no-op handler (`tunggal.devtools.noop_engine`) and (b) `tunggal run`
  into PostgreSQL; the goal is (b) >= 90% of (a).
- lag: rows inserted at a fixed offered rate for a fixed time while `tunggal run` streams them;
  each target row records when it was written (`synced_at DEFAULT clock_timestamp()`), so
  lag = synced_at - source commit time, exact per row (p50/p99), plus the daemon's peak RSS.

Standalone: `python bench/embedded_stage.py --events 100000 --rate 5000 --seconds 60`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from measure import applied_rate

from tunggal.devtools.pgcluster import PgCluster
from tunggal.devtools.procstat import peak_rss_mb
from tunggal.devtools.synth import NARROW_DDL, narrow_mapping

TUNGGAL = [sys.executable, "-m", "tunggal"]
ENV = {**os.environ, "TUNGGAL_ALLOW_ROOT": "1"}


def setup(
    cluster: PgCluster, work: Path, name: str, kafka: str | None = None
) -> tuple[str, str, Path]:
    """A source database, a target database with a `synced_at` column, and a config (for
    the embedded engine, or for an `engine: kafka` source on the brokers in `kafka`)."""
    source = cluster.create_database(f"{name}_src")
    target = cluster.create_database(f"{name}_tgt")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(NARROW_DDL.format(name="kegiatan"))
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(NARROW_DDL.format(name="kegiatan"))
        conn.execute("ALTER TABLE kegiatan ADD synced_at timestamptz DEFAULT clock_timestamp()")
    run = work / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "m.yaml").write_text(narrow_mapping(source=name))
    (run / "connector.yaml").write_text(
        f"name: {name}\nkind: postgresql\nsnapshot: no_data\n"
        f"database: {{host: 127.0.0.1, port: {cluster.port}, dbname: {name}_src, "
        "user: postgres}\nproperties: {poll.interval.ms: '50'}\n"
    )
    config = run / "tunggal.yaml"
    engine = ""
    brokers = ""
    if kafka:
        engine = ", engine: kafka"
        # tansu: a group join takes half the session timeout
        brokers = f"kafka: {{bootstrap_servers: ['{kafka}'], session_timeout_ms: 2000}}\n"
    config.write_text(
        f"target: {{dsn: '{target}'}}\nmappings: [m.yaml]\nstate_dir: {run}/state\n"
        "watch_mappings: false\nbatch: {max_size: 5000, max_age_ms: 200}\n"
        f"metrics: {{enabled: false}}\njava: {{heap: 512m}}\n{brokers}"
        f"sources:\n  - {{name: {name}, connector: connector.yaml{engine}}}\n"
    )
    subprocess.run([*TUNGGAL, "schema", "--apply", "--config", str(config)], check=True, env=ENV)
    return source, target, config


def _wait_slot_active(source: str, slot: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    with psycopg.connect(source, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            if row and row[0]:
                time.sleep(2.0)  # the streaming loop is up once the slot is active
                return
            if proc.poll() is not None:
                raise RuntimeError("the engine exited before streaming")
            time.sleep(0.2)
    raise RuntimeError(f"slot {slot} never became active")


def _insert(source: str, first: int, n: int) -> None:
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO kegiatan SELECT g, 'KEG.' || g, 'kegiatan ' || g, 2026, g * 1.5, "
            "'2026-01-01', now(), true FROM generate_series(%s::bigint, %s::bigint) g",
            (first, first + n - 1),
        )


def _start_daemon(source: str, name: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`tunggal run`, returned once its replication slot streams."""
    proc = subprocess.Popen(
        [*TUNGGAL, "--log-level", "WARNING", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115 - lives with the process
        env=ENV,
    )
    try:
        _wait_slot_active(source, f"tunggal_{name}", proc)
    except BaseException:
        proc.kill()
        raise
    return proc


def bench_noop(cluster: PgCluster, work: Path, n: int) -> dict[str, Any]:
    name = "emb_noop"
    source, _, config = setup(cluster, work, name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunggal.devtools.noop_engine", str(config), name, str(n)],
        stdout=subprocess.PIPE,
        stderr=open(work / "noop.log", "wb"),  # noqa: SIM115 - lives with the process
        env=ENV,
    )
    _wait_slot_active(source, f"tunggal_{name}", proc)
    _insert(source, 1, n)
    out, _ = proc.communicate(timeout=600)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if result["events"] < n:
        raise RuntimeError(f"no-op engine saw {result['events']} of {n}; see {work}/noop.log")
    return result


def bench_daemon(cluster: PgCluster, work: Path, n: int) -> dict[str, Any]:
    name = "emb_daemon"
    source, target, config = setup(cluster, work, name)
    proc = _start_daemon(source, name, config, work / "daemon.log")
    try:
        _insert(source, 1, n)
        events, seconds, _, _ = applied_rate(target, name, n, [proc], f"{work}/daemon.log")
        return {
            "events": events,
            "seconds": seconds,
            "events_per_s": events / seconds,
            "peak_rss_mb": peak_rss_mb(proc.pid),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def bench_lag(
    cluster: PgCluster, work: Path, rate: int, seconds: int, warmup: int
) -> dict[str, Any]:
    name = "emb_lag"
    source, target, config = setup(cluster, work, name)
    proc = _start_daemon(source, name, config, work / "lag.log")
    try:
        lags = offered_lags(source, target, rate, seconds, warmup)
        return {**lags, "peak_rss_mb": peak_rss_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def offered_lags(source: str, target: str, rate: int, seconds: int, warmup: int) -> dict[str, Any]:
    """Rows offered at `rate` for `warmup` seconds right after start, then for `seconds` more;
    the lag of each part on its own. The first seconds of a JVM run cold code (Debezium's, and
    Connect's) and show a backlog that a daemon running for days does not have; a start-up is
    still worth knowing, so it is reported too, apart."""
    warm = offer(source, rate, warmup)
    total = offer(source, rate, seconds, first=warm + 1)
    wait_rows(target, total)
    p50, p99, worst = row_lags(target, warm + 1, total)
    result: dict[str, Any] = {
        "offered_per_s": rate,
        "seconds": seconds,
        "rows": total - warm,
        "lag_p50_s": p50,
        "lag_p99_s": p99,
        "lag_max_s": worst,
    }
    if warm:
        p50, p99, worst = row_lags(target, 1, warm)
        result["warmup"] = {
            "seconds": warmup,
            "rows": warm,
            "lag_p50_s": p50,
            "lag_p99_s": p99,
            "lag_max_s": worst,
        }
    return result


def wait_rows(target: str, total: int) -> None:
    deadline = time.monotonic() + 120
    with psycopg.connect(target, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM kegiatan").fetchone()
            if row and row[0] >= total:
                return
            time.sleep(0.2)


def row_lags(target: str, first: int, last: int) -> tuple[float, float, float]:
    """p50, p99 and max of (target write time - source commit time) over rows first..last."""
    with psycopg.connect(target, autocommit=True) as conn:
        row = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lag), max(lag) "
            "FROM (SELECT extract(epoch FROM synced_at) - _tunggal_ts / 1e6 AS lag "
            "FROM kegiatan WHERE id BETWEEN %s AND %s) l",
            (first, last),
        ).fetchone()
    assert row is not None
    (p50, p99), worst = row[0], row[1]
    return float(p50), float(p99), float(worst)


def offer(source: str, rate: int, seconds: int, first: int = 1) -> int:
    """Insert `rate` rows/s for `seconds`, in 20 transactions a second, with ids from `first`;
    returns the last id."""
    per_tick = max(1, rate // 20)
    next_id, started = first, time.perf_counter()
    stop = started + seconds
    with psycopg.connect(source, autocommit=True) as conn:
        while time.perf_counter() < stop:
            conn.execute(
                "INSERT INTO kegiatan SELECT g, 'KEG.' || g, 'kegiatan ' || g, 2026, g * 1.5, "
                "'2026-01-01', now(), true FROM generate_series(%s::bigint, %s::bigint) g",
                (next_id, next_id + per_tick - 1),
            )
            next_id += per_tick
            behind = started + (next_id - first) / rate - time.perf_counter()
            if behind > 0:
                time.sleep(behind)
    return next_id - 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20, help="seconds offered before measuring")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunggal-ebench-"))
    cluster = PgCluster(name="ebench", fsync=True).start()
    results: dict[str, Any] = {}
    try:
        results["noop"] = bench_noop(cluster, work, args.events)
        results["daemon"] = bench_daemon(cluster, work, args.events)
        results["lag"] = bench_lag(cluster, work, args.rate, args.seconds, args.warmup)
    finally:
        cluster.destroy()
    ratio = results["daemon"]["events_per_s"] / results["noop"]["events_per_s"]
    results["daemon_to_noop_ratio"] = ratio
    print(json.dumps(results, indent=2))
    print(
        f"embedded engine, no-op handler: {results['noop']['events_per_s']:,.0f} ev/s; "
        f"tunggal run -> PostgreSQL: {results['daemon']['events_per_s']:,.0f} ev/s "
        f"({ratio:.0%}); lag at {args.rate}/s: p50 {results['lag']['lag_p50_s']:.3f}s "
        f"p99 {results['lag']['lag_p99_s']:.3f}s; peak RSS {results['lag']['peak_rss_mb']:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
