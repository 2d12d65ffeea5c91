"""How fast decode+map could go without its per-row Python objects: `python bench/floor.py`.

Measures, on the bench's events (bench/run.py's `prepare`, same seed) and in one process,
per event and in chunks of the batch size as the pipeline takes them:
  - parse: orjson.loads of each event's value, kept for the chunk as the pipeline keeps it;
  - floor: that parse, then the after image's columns converted with Tunggal's own converters
    (the target's column types as hints) straight into one tuple per row, with the key, the
    LSN and the commit time beside it: no row dicts, no ChangeEvent, no Upsert;
  - decode+map: `Pipeline.process`, as bench/run.py's decode+map stage runs it; the bench's
    mapping only copies columns, so its inserts and updates take the projected lane
    (`decode_projected`);
  - general: the same with that lane turned off (`Pipeline(..., projected=False)`), as a
    mapping with a transform or a filter is decoded and mapped.

The floor is not a decoder: it checks nothing, reads no schema envelope or placeholder, maps no
column and assumes every row has every column. It bounds what decoding without per-row Python
objects could reach on this machine: the parse and the conversions any design must do. The
projected lane goes part of that way (no source-row dict, no ChangeEvent, no second dict);
what still separates it from the floor is the target row's dict and Upsert that the sink
takes, the envelope's checks and the pipeline's bookkeeping.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from run import decode_map_inputs, prepare

from tunggal.devtools.pgcluster import PgCluster
from tunggal.events.coerce import converter_for
from tunggal.events.model import RawEvent
from tunggal.events.modes import ConnectorModes
from tunggal.runtime.gc_tuning import tune_for_throughput
from tunggal.runtime.pipeline import Pipeline

Chunk = list[RawEvent]


def _best_of(runs: int, raws: Chunk, batch: int, step: Callable[[Chunk], Any]) -> float:
    """Seconds per event, the best of `runs` passes over `raws` in chunks of `batch`."""
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        for start in range(0, len(raws), batch):
            kept = step(raws[start : start + batch])
            del kept  # freed as the pipeline frees a written batch: part of the cost
        best = min(best, time.perf_counter() - started)
    return best / len(raws)


def measure(shape: str, events: int, batch: int, runs: int) -> list[tuple[str, float]]:
    cluster = PgCluster(name="floor", fsync=False).start()
    try:
        root = Path(tempfile.mkdtemp(prefix="tunggal-floor-"))
        case = prepare(shape, events, cluster.create_database("floor"), root, batch)
        pipeline, types, raws = decode_map_inputs(case)
    finally:
        cluster.destroy()
    raws = [r for r in raws if r.value is not None]
    modes = ConnectorModes()
    plan = tuple(
        (column, converter_for(pg_type, modes))
        for column, pg_type in types[case.table].items()
        if not column.startswith("_tunggal")
    )
    loads = orjson.loads

    def parse(chunk: Chunk) -> list[Any]:
        return [loads(r.value) for r in chunk]

    def floor(chunk: Chunk) -> list[tuple[Any, ...]]:
        out = []
        for r in chunk:
            event = loads(r.value)
            block = event["source"]
            image = event["after"] or event["before"]
            row = tuple(
                [
                    None if (value := image[column]) is None or convert is None else convert(value)
                    for column, convert in plan
                ]
            )
            out.append((event["op"], (image["id"],), row, block["lsn"], block["ts_us"]))
        return out

    def decode_map(chunk: Chunk) -> Any:
        return pipeline.process("bench", chunk)

    general_pipeline = Pipeline(pipeline.mappings, {}, types, projected=False)

    def general(chunk: Chunk) -> Any:
        return general_pipeline.process("bench", chunk)

    tune_for_throughput()  # as `tunggal run` and the decode+map stage do
    return [
        (what, _best_of(runs, raws, batch, step))
        for what, step in (
            ("parse", parse),
            ("floor", floor),
            ("decode+map", decode_map),
            ("general", general),
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", default="narrow,wide", help="comma-separated: narrow,wide")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3, help="passes; the best is reported")
    args = parser.parse_args()
    from tunggal.native import build

    print(f"tunggal's per-event path: {build()}")
    print(f"{'table':<8}{'what':<12}{'µs/event':>10}{'events/s':>12}{'of decode+map':>15}")
    for shape in args.tables.split(","):
        results = measure(shape, args.events, args.batch, args.runs)
        whole = dict(results)["decode+map"]
        for what, seconds in results:
            print(
                f"{shape:<8}{what:<12}{seconds * 1e6:>10.2f}{1 / seconds:>12,.0f}"
                f"{seconds / whole:>15.0%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
