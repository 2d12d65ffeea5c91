"""Reproducible benchmark: `python bench/run.py [--events N]` (or `make bench`).

Generates N synthetic Debezium change events for a narrow table (70% inserts, 25% updates,
some on hot keys, 5% deletes), then measures on this machine, in one run:
  - decode+map only, no database;
  - `replay` into PostgreSQL through the real runner, sink and batching (batch 5000);
  - raw COPY of the same final rows into the same table: the physical limit.
Prints a table and writes JSON to bench/results/ so runs can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from tunggal.config import load_config
from tunggal.devtools.pgcluster import PgCluster
from tunggal.devtools.synth import NARROW_COLUMNS, NARROW_DDL, mixed_workload, narrow_mapping
from tunggal.events.decode import decode
from tunggal.events.model import RawEvent
from tunggal.mapping import load_mappings
from tunggal.metrics import Metrics
from tunggal.runtime.app import build_runner
from tunggal.sources.replay import read_events


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_decode_map(events_file: Path, mapping_file: Path) -> dict[str, float]:
    mappings = load_mappings([mapping_file])
    with open(events_file, "rb") as stream:
        raws = [r for r in read_events(stream, "bench") if isinstance(r, RawEvent)]
    started, cpu = time.perf_counter(), _cpu()
    n = 0
    for raw in raws:
        event = decode(raw, source="bench")
        if event is not None:
            mappings.map_event(event)
            n += 1
    elapsed = time.perf_counter() - started
    return {
        "events": len(raws),
        "seconds": elapsed,
        "events_per_s": len(raws) / elapsed,
        "cpu_s": _cpu() - cpu,
    }


def bench_replay(work: Path, dsn: str, events_file: Path) -> dict[str, float]:
    config = load_config(work / "tunggal.yaml")
    runner = build_runner(
        config, metrics=Metrics(), stop=threading.Event(), replay=("bench", events_file)
    )
    started, cpu = time.perf_counter(), _cpu()
    runner.run(until_idle=True)
    elapsed = time.perf_counter() - started
    events = runner.totals["events"]
    return {
        "events": events,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "cpu_s": _cpu() - cpu,
        "batches": runner.totals["batches"],
    }


def bench_copy(dsn: str, rows: list[tuple[object, ...]]) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(NARROW_DDL.format(name="kegiatan_copy"))
        started = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(f"COPY kegiatan_copy ({', '.join(NARROW_COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        elapsed = time.perf_counter() - started
    return {"rows": len(rows), "seconds": elapsed, "rows_per_s": len(rows) / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tunggal-bench-"))
    workload = mixed_workload(args.events, seed=11)
    events_file = work / "events.jsonl"
    events_file.write_bytes(b"\n".join(workload.lines) + b"\n")
    mapping_file = work / "bench.yaml"
    mapping_file.write_text(narrow_mapping())
    results: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "workload": {
            "events": len(workload.lines),
            **workload.counts,
            "final_rows": len(workload.final),
        },
    }
    print(
        f"workload: {len(workload.lines)} events ({workload.counts}), "
        f"{len(workload.final)} final rows",
        file=sys.stderr,
    )
    results["decode_map"] = bench_decode_map(events_file, mapping_file)

    cluster = PgCluster(name="bench", fsync=True).start()
    try:
        dsn = cluster.create_database("bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(NARROW_DDL.format(name="kegiatan"))
        (work / "tunggal.yaml").write_text(
            f"target:\n  dsn: {dsn}\nmappings: [{mapping_file}]\nstate_dir: {work}/state\n"
            "batch:\n  max_size: 5000\n  max_age_ms: 1000\nmetrics:\n  enabled: false\n"
        )
        from tunggal.runtime.app import load_all, open_sink
        from tunggal.sink.schema import apply_schema, plan_schema

        mappings, _ = load_all(load_config(work / "tunggal.yaml"))
        sink = open_sink(load_config(work / "tunggal.yaml"), mappings, check=False)
        apply_schema(sink.engine, plan_schema(mappings.targets(), sink.introspect()))
        sink.close()
        results["replay_pg"] = bench_replay(work, dsn, events_file)
        rows = [workload.final[k] for k in sorted(workload.final)]
        results["copy_pg"] = bench_copy(dsn, rows)
    finally:
        cluster.destroy()
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    replay = results["replay_pg"]
    copy = results["copy_pg"]
    assert isinstance(replay, dict) and isinstance(copy, dict)
    dm = results["decode_map"]
    assert isinstance(dm, dict)
    ratio = replay["events_per_s"] / copy["rows_per_s"]
    results["replay_to_copy_ratio"] = ratio
    print(f"{'stage':<28}{'rate':>16}{'seconds':>10}")
    print(f"{'decode+map (no DB)':<28}{dm['events_per_s']:>12,.0f} ev/s{dm['seconds']:>10.2f}")
    print(
        f"{'replay -> PostgreSQL':<28}{replay['events_per_s']:>12,.0f} ev/s"
        f"{replay['seconds']:>10.2f}"
    )
    print(
        f"{'raw COPY (final rows)':<28}{copy['rows_per_s']:>12,.0f} rows/s{copy['seconds']:>8.2f}"
    )
    print(f"replay / COPY: {ratio:.1%}   peak RSS: {results['peak_rss_mb']:.0f} MB")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
