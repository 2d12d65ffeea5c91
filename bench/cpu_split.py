"""Where `replay`'s CPU goes, thread by thread: `python bench/cpu_split.py [--table narrow]`.

`replay` runs three threads in one process: the source reads the file (`read_events`), the
runner decodes and maps (`Pipeline.process`), and the writer collapses each batch and writes it
(`PostgresSink.write`: the rows' COPY text, psycopg's protocol work, then waiting for the
target). Only one of them holds the GIL at a time, so the sum of their CPU per event bounds
`replay`'s rate however well they overlap; the writer's waits for the target can overlap with
the others' CPU, and the target's own CPU runs on the other core.

This runs each part alone, in one process, on the bench's events (bench/run.py's `prepare`,
same seed) and batches of the bench's size, best of `--repeat` runs (each write on a database
of its own, since a second write of the same rows would be skipped by the sink's guard):
  - read: the events file through `read_events`, as the replay source reads it;
  - then batch by batch, as `replay` does: decode+map (`Pipeline.process`), `collapse` of its
    row operations, and `PostgresSink.write`: this thread's CPU (time.thread_time) for each,
    and the rest of the write's wall time, spent waiting for the target.
Then it prints the rate one GIL allows (events / the CPU sum) beside the rate the issue's goal
asks for (a share of raw COPY's rows/s, bench/run.py's COPY stage, measured here too).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from run import decode_map_inputs, prepare, stage_copy_pg

from tunggal.config import load_config
from tunggal.devtools.pgcluster import PgCluster
from tunggal.events.model import RawEvent
from tunggal.runtime.app import load_all, open_sink
from tunggal.runtime.gc_tuning import tune_for_throughput
from tunggal.sink.collapse import collapse
from tunggal.sources.replay import read_events


def _read_cpu(events_file: Path) -> float:
    """CPU seconds of reading the events file as the replay source does."""
    cpu = time.thread_time()
    with open(events_file, "rb") as stream:
        for item in read_events(stream, "bench"):
            assert isinstance(item, RawEvent)
    return time.thread_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", default="narrow", choices=("narrow", "wide"))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--goal", type=float, default=0.15, help="the share of raw COPY's rate asked for"
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="tunggal-cpu-split-"))
    cluster = PgCluster(name="cpusplit", fsync=True).start()
    best: dict[str, float] = {}

    def keep(part: str, seconds: float) -> None:
        best[part] = min(best.get(part, seconds), seconds)

    try:
        copy_rate = 0.0
        events = 0
        for run in range(args.repeat):
            dsn = cluster.create_database(f"split{run}")
            case = prepare(args.table, args.events, dsn, root / str(run), args.batch)
            pipeline, _, raws = decode_map_inputs(case)
            events = len(raws)
            tune_for_throughput()

            keep("read", _read_cpu(case.events_file))
            config = load_config(case.work / "tunggal.yaml")
            mappings, _ = load_all(config)
            sink = open_sink(config, mappings)
            # Batch by batch, each dropped once written, as `replay` holds them: kept all
            # at once, they would make the collector's passes walk them all.
            spent = dict.fromkeys(("decode+map", "collapse", "write (CPU)", "wall"), 0.0)
            try:
                sink.check_ready()
                for start in range(0, events, args.batch):
                    chunk = raws[start : start + args.batch]
                    cpu = time.thread_time()
                    processed = pipeline.process("bench", chunk)
                    mapped = time.thread_time()
                    steps = collapse(processed.ops)
                    collapsed, wall = time.thread_time(), time.perf_counter()
                    sink.write(steps, processed.progress, processed.dead_letters)
                    spent["wall"] += time.perf_counter() - wall
                    spent["decode+map"] += mapped - cpu
                    spent["collapse"] += collapsed - mapped
                    spent["write (CPU)"] += time.thread_time() - collapsed
            finally:
                sink.close()
            for part in ("decode+map", "collapse", "write (CPU)"):
                keep(part, spent[part])
            keep("write (waiting for the target)", spent["wall"] - spent["write (CPU)"])
            copy_rate = max(copy_rate, stage_copy_pg(case).rate)
    finally:
        cluster.destroy()

    from tunggal.native import build as which_build

    cpu_parts = ("read", "decode+map", "collapse", "write (CPU)")
    print(f"tunggal's per-event path: {which_build()}")
    print(f"{args.table}: {events} events, batch {args.batch}, best of {args.repeat}")
    for part, seconds in best.items():
        marker = "" if part in cpu_parts else "  (not CPU)"
        print(f"  {part:<32} {seconds:6.2f} s  {seconds / events * 1e6:6.2f} µs/event{marker}")
    cpu_sum = sum(best[p] for p in cpu_parts)
    print(
        f"  {'CPU under one GIL':<32} {cpu_sum:6.2f} s  {cpu_sum / events * 1e6:6.2f} µs/event"
        f"  -> at most {events / cpu_sum:,.0f} events/s"
    )
    goal = copy_rate * args.goal
    print(
        f"  raw COPY {copy_rate:,.0f} rows/s; {args.goal:.0%} of it is {goal:,.0f} events/s: "
        f"{1e6 / goal:.2f} µs/event for all of the above"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
