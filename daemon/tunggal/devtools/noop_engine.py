"""The embedded Debezium engine with a handler that does nothing: the benchmark's reference
for how fast the engine itself delivers events (the daemon must never be the bottleneck).

`python -m tunggal.devtools.noop_engine CONFIG SOURCE N` starts the source's engine as
`tunggal run` would, acknowledges every batch at once, and prints one JSON line when N change
events have arrived: the rate from the first event to the N-th.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import orjson

from tunggal.config import load_config
from tunggal.events.model import HEARTBEAT_PREFIX
from tunggal.runtime.app import load_all
from tunggal.sources.base import Chunk, SourceConnected, SourceFailure
from tunggal.sources.embedded import EmbeddedSource


def main(argv: list[str]) -> int:
    config_path, source_name, wanted = argv[0], argv[1], int(argv[2])
    config = load_config(config_path)
    mappings, connectors = load_all(config)
    spec = connectors[source_name]
    source = EmbeddedSource(
        source_name,
        spec.render(mappings.source_tables(source_name)),
        config.resolve(config.state_dir),
        jvm_path=config.java.jvm_path,
        heap=config.java.heap,
        jvm_options=config.java.options,
        max_batch_size=config.batch.max_size,
        poll_interval_ms=min(config.batch.max_age_ms, 500),
    )
    done = threading.Event()
    seen = {"events": 0, "first": 0.0, "last": 0.0}

    def deliver(item: Chunk | SourceFailure | SourceConnected) -> None:
        if isinstance(item, SourceConnected):
            return
        if isinstance(item, SourceFailure):
            print(f"source failed: {item.message}", file=sys.stderr)
            done.set()
            return
        now = time.perf_counter()
        changes = sum(1 for raw in item.events if raw.value is not None)
        changes -= sum(1 for raw in item.events if raw.destination.startswith(HEARTBEAT_PREFIX))
        if changes and not seen["events"]:
            seen["first"] = now
        seen["events"] += changes
        seen["last"] = now
        item.settle()
        if seen["events"] >= wanted:
            done.set()

    source.start(deliver)
    print("ready", file=sys.stderr, flush=True)
    done.wait(float(os.environ.get("TUNGGAL_NOOP_TIMEOUT", "600")))
    elapsed = seen["last"] - seen["first"]
    print(
        orjson.dumps(
            {
                "events": seen["events"],
                "seconds": elapsed,
                "events_per_s": seen["events"] / elapsed if elapsed > 0 else 0.0,
            }
        ).decode(),
        flush=True,
    )
    # As `tunggal run` does after the JVM: exit now, JPype's shutdown can wait on Debezium.
    os._exit(0 if seen["events"] >= wanted else 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
