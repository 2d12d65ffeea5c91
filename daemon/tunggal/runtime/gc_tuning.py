"""The cyclic garbage collector's settings for a daemon that moves many small objects.

Every event allocates a handful of containers (the decoded dicts, a ChangeEvent, a row
operation) that reference counting frees on its own: they hold no cycles. With CPython's
default thresholds the collector still runs a young-generation pass every 700 net
allocations, and each pass walks every young object, the batch in hand included. Measured with
`bench/run.py`, replaying 210k narrow events: 24% of the daemon's CPU went to those passes
(4.61 CPU-s with the defaults, 3.53 with the collector off).

So the daemon freezes what start-up allocated (config, mappings, compiled decoders, imported
modules: never garbage, yet walked by every full pass), and runs the young pass every 100,000
net allocations instead of 700. A cycle that does become garbage (an exception's traceback,
say, holding a batch) then waits longer for the collector, so the runner also makes a full
collection every `SWEEP_EVERY_S` between batches (`Runner._between_batches`): cyclic garbage
lives about a minute at most. A frozen object is never collected, only freed by reference
counting; so a start-up object that is later dropped inside a cycle (the first mapping set,
after a reload) stays, once: a few hundred KB at most, against a quarter of the CPU.
"""

from __future__ import annotations

import gc
import logging
from typing import Final

log = logging.getLogger(__name__)

# (young, middle, old): a young pass every 100k net allocations; the older generations as
# often, relative to it, as CPython's defaults (10, 10) would make them.
THRESHOLDS: Final = (100_000, 10, 10)
SWEEP_EVERY_S: Final = 60.0


def tune_for_throughput() -> None:
    """Called once, after start-up and before the first event."""
    gc.collect()  # start-up's own garbage goes now, not into the frozen generation
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    log.debug("collector: %d objects frozen, thresholds %s", gc.get_freeze_count(), THRESHOLDS)
