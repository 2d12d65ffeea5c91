"""Benchmark stage: Kafka -> PostgreSQL through N `tunggal run` processes in one group.

A topic pre-filled with N Debezium change events (the mixed narrow workload) on the test broker
(tansu), then `instances` daemons consume it into a fresh table. The rate counts change events
while every instance is busy: from the first target commit once the group has settled (every
daemon's newest assignment holds partitions, all of them together), to the first partition
read to its end. Process start-up and group joins are left out, and so is the tail: tansu
hands the instances their partitions up to a second apart, so the first to start also runs
out of work first, and on a topic read in 2-3 s that one-off made the two-instance rate swing
between 1.2x and 1.9x one instance from run to run. The rate from the first commit to the
last is reported too (`drain_events_per_s`).

Standalone: `python bench/kafka_stage.py --events 200000 --instances 1 2`
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
from kafka import KafkaProducer
from measure import applied_rate

from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.pgcluster import PgCluster, free_port
from tunggal.devtools.procstat import cpu_seconds, peak_rss_mb
from tunggal.devtools.synth import NARROW_DDL, mixed_workload, narrow_mapping

PARTITIONS = 4


def fill_topic(broker: TansuBroker, topic: str, lines: list[bytes]) -> dict[str, Any]:
    broker.create_topic(topic, PARTITIONS)
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, linger_ms=20, batch_size=512 * 1024
    )
    started = time.perf_counter()
    futures = []
    for line in lines:
        record = orjson.loads(line)
        value = record["value"]
        futures.append(
            producer.send(
                topic,
                key=record["key"].encode(),
                value=None if value is None else value.encode(),
            )
        )
    producer.flush()
    per_partition: Counter[int] = Counter(f.get(timeout=60).partition for f in futures)
    producer.close()
    return {
        "messages": len(lines),
        "seconds": time.perf_counter() - started,
        "per_partition": dict(per_partition),
    }


def _config(work: Path, dsn: str, broker: TansuBroker, source: str, mapping: Path) -> Path:
    connector = work / "connector.yaml"
    connector.write_text(
        f"name: {source}\nkind: postgresql\nschemas: false\n"
        "database: {host: 127.0.0.1, dbname: src, user: cdc}\n"
    )
    config = work / "tunggal.yaml"
    config.write_text(
        f"target: {{dsn: '{dsn}'}}\nmappings: ['{mapping}']\nstate_dir: {work}/state\n"
        "watch_mappings: false\nbatch: {max_size: 5000, max_age_ms: 500}\n"
        "metrics: {enabled: false}\nallow_root: true\n"
        f"kafka:\n  bootstrap_servers: ['{broker.bootstrap}']\n  group_id: bench\n"
        # tansu: a group join takes half the session timeout
        "  session_timeout_ms: 2000\n  heartbeat_interval_ms: 500\n"
        f"sources:\n  - {{name: {source}, engine: kafka, connector: {connector}}}\n"
    )
    return config


# The partitions an instance holds, from each of its assigned / revoked lines: "...; holding
# t[0], t[1]", or, from commits before cooperative-sticky (--baseline), "assigned t[0], t[1]
# (from target offsets: ...)", which named the whole assignment.
_HOLDING = re.compile(r"; holding (.+)$")
_ASSIGNED = re.compile(r": assigned (.+?) \(from target offsets")


_STOPPED = re.compile(r"stopped: (\d+) events in (\d+) batches")


def _held(line: str) -> re.Match[str] | None:
    return _HOLDING.search(line) or _ASSIGNED.search(line)


def group_settled(logs: list[Path]) -> Callable[[], bool]:
    """True once every daemon's newest assignment (its INFO log) holds partitions, and they
    hold all PARTITIONS together."""

    def settled() -> bool:
        total = 0
        for log in logs:
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            found = [m.group(1) for m in map(_held, lines) if m is not None]
            if not found or found[-1] == "nothing":
                return False
            total += len(found[-1].split(", "))
        return total == PARTITIONS

    return settled


def first_partition_drained(
    topic: str, ends: dict[int, int]
) -> Callable[[psycopg.Connection[Any]], bool]:
    """True once the offsets committed with the rows show a partition read to its end."""

    def drained(conn: psycopg.Connection[Any]) -> bool:
        committed = conn.execute(
            "SELECT partition, next_offset FROM tunggal_kafka_offsets WHERE topic = %s", (topic,)
        ).fetchall()
        return any(offset >= ends[partition] for partition, offset in committed)

    return drained


def bench_kafka(
    cluster: PgCluster,
    broker: TansuBroker,
    lines: list[bytes],
    final_rows: int,
    instances: int,
    work: Path,
    run: int = 0,
) -> dict[str, Any]:
    source = f"kbench{instances}r{run}"
    run_dir = work / source
    run_dir.mkdir(parents=True, exist_ok=True)
    dsn = cluster.create_database(f"kafka_bench_{instances}_{run}_{os.getpid()}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(NARROW_DDL.format(name="kegiatan"))
    mapping = run_dir / "m.yaml"
    mapping.write_text(narrow_mapping(source=source))
    config = _config(run_dir, dsn, broker, source, mapping)
    tunggal = [sys.executable, "-m", "tunggal"]
    subprocess.run([*tunggal, "schema", "--apply", "--config", str(config)], check=True)
    topic = f"{source}.public.kegiatan"
    filled = fill_topic(broker, topic, lines)
    changes = sum(1 for line in lines if b'"value":null' not in line)

    env = {**os.environ, "TUNGGAL_ALLOW_ROOT": "1"}
    logs = [run_dir / f"daemon-{i}.log" for i in range(instances)]
    # What a user sees: from starting the processes to the backlog drained, start-up, group
    # joins and the uneven tail included (to the poll that saw the last commit, every 20 ms).
    launched = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*tunggal, "--log-level", "INFO", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "wb"),  # noqa: SIM115 - lives with the process
        )
        for log in logs
    ]
    try:
        events, seconds, all_events, all_seconds = applied_rate(
            dsn,
            source,
            changes,
            procs,
            f"{run_dir}/daemon-*.log",
            steady=group_settled(logs),
            window_closed=first_partition_drained(topic, filled["per_partition"]),
        )
        drained = time.perf_counter()
        rss = [peak_rss_mb(p.pid) for p in procs]
        cpu = [cpu_seconds(p.pid) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM kegiatan").fetchone()
    assert rows is not None and rows[0] == final_rows, (rows, final_rows)
    # Each daemon's last words on SIGTERM: "stopped: N events in M batches, ...".
    stopped = [_STOPPED.search(log.read_text(errors="replace")) for log in logs]
    batches = sum(int(m.group(2)) for m in stopped if m)
    consumed = sum(int(m.group(1)) for m in stopped if m)
    return {
        "instances": instances,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        # From the first commit to the last, the uneven tail included (see the module's doc).
        "drain_events_per_s": all_events / all_seconds,
        "user_seconds": drained - launched,
        "user_events_per_s": changes / (drained - launched),
        "peak_rss_mb_per_instance": max(rss),
        "cpu_s": sum(cpu),
        "produce_seconds": filled["seconds"],
        "partitions": PARTITIONS,
        # The mean batch: under a backlog, a runner that hands over small batches waits on
        # the writer for each of them.
        "batches": batches,
        "events_per_batch": consumed / batches if batches else 0.0,
    }


def bench_kafka_lag(
    cluster: PgCluster, broker: TansuBroker, work: Path, rate: int, seconds: int, warmup: int
) -> dict[str, Any]:
    """Rows inserted at a fixed offered rate into a real source table, through Debezium on
    Kafka Connect and the broker, into the target: exact per-row lag, Connect's poll included."""
    from embedded_stage import offered_lags, setup

    from tunggal.devtools.kafkaconnect import ConnectStandalone

    name = "kafka_lag"
    source, target, config = setup(cluster, work, name, kafka=broker.bootstrap)
    tunggal = [sys.executable, "-m", "tunggal"]
    env = {**os.environ, "TUNGGAL_ALLOW_ROOT": "1"}
    # Made up front: a topic that Connect creates on its first record would be found by the
    # consumer's pattern only at its next metadata refresh (30 s), skewing the first minute.
    broker.create_topic(f"{name}.public.kegiatan", PARTITIONS)
    with ConnectStandalone(broker.bootstrap) as connect:
        subprocess.run(
            [
                *tunggal,
                "connectors",
                "apply",
                "--config",
                str(config),
                "--connect-url",
                connect.url,
            ],
            check=True,
            env=env,
        )
        proc = subprocess.Popen(
            [*tunggal, "--log-level", "WARNING", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "kafka-lag.log", "wb"),  # noqa: SIM115 - lives with the process
        )
        try:
            # The connector's slot streams and the consumer has joined its group.
            deadline = time.monotonic() + 120
            with psycopg.connect(source, autocommit=True) as conn:
                while time.monotonic() < deadline:
                    row = conn.execute(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                        (f"tunggal_{name}",),
                    ).fetchone()
                    if row and row[0]:
                        break
                    time.sleep(0.2)
            time.sleep(5.0)
            lags = offered_lags(source, target, rate, seconds, warmup)
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {**lags, "peak_rss_mb": rss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs of each instance count, alternating, each reported",
    )
    parser.add_argument("--lag-rate", type=int, default=5000, help="0 skips the lag stage")
    parser.add_argument("--lag-seconds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20, help="seconds offered before measuring")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunggal-kbench-"))
    cluster = PgCluster(name="kbench", fsync=True).start()
    broker = TansuBroker(free_port()).start()
    results: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            for n in args.instances:
                workload = mixed_workload(args.events, source=f"kbench{n}r{run}", seed=11)
                # A broker per measurement: tansu's memory storage slows down as topics grow.
                fresh = TansuBroker(free_port()).start()
                try:
                    result = bench_kafka(
                        cluster, fresh, workload.lines, len(workload.final), n, work, run
                    )
                finally:
                    fresh.stop()
                results.append(result)
                print(
                    f"kafka -> PostgreSQL, {n} instance(s), run {run + 1}: "
                    f"{result['events_per_s']:,.0f} ev/s busy "
                    f"({result['events']} events in {result['seconds']:.1f}s); "
                    f"{result['user_events_per_s']:,.0f} ev/s from start to drained "
                    f"({result['user_seconds']:.1f}s); peak RSS "
                    f"{result['peak_rss_mb_per_instance']:.0f} MB per instance"
                )
        if args.lag_rate:
            lag = bench_kafka_lag(
                cluster, broker, work, args.lag_rate, args.lag_seconds, args.warmup
            )
            results.append({"lag": lag})
            print(
                f"kafka lag at {args.lag_rate}/s (Connect included): p50 {lag['lag_p50_s']:.3f}s "
                f"p99 {lag['lag_p99_s']:.3f}s max {lag['lag_max_s']:.3f}s"
            )
    finally:
        broker.stop()
        cluster.destroy()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
