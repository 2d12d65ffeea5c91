"""What every event source hands the runner, and how the runner answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tunggal.events.model import RawEvent


@dataclass
class Chunk:
    """Raw events from one source. The source learns through `done` whether they were
    committed downstream (`error is None`) and may acknowledge them upstream only then."""

    source: str
    events: list[RawEvent]
    # True when the source soon blocks until this chunk is settled (the embedded engine
    # sends one more batch, then waits): waiting for a fuller batch would only add latency.
    holds_source: bool = False
    # True when the source had nothing more to read as it took this chunk (a Kafka poll that
    # came back short): while it stays so, a fuller batch would only add latency.
    caught_up: bool = False
    # Set by the source, from any thread: write this chunk's batch now rather than at its
    # maximum age (a Kafka rebalance waits for it before handing the partitions over).
    flush_requested: bool = False
    received_at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    # Kafka: (consumer group, topic, partition) -> next offset, stored with the rows
    offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # Kafka: (consumer group, topic) -> the topic's id those offsets belong to, if known
    topic_ids: dict[tuple[str, str], str | None] = field(default_factory=dict)
    on_settled: Callable[[Chunk], None] | None = None

    def settle(self, error: BaseException | None = None) -> None:
        self.error = error
        if self.on_settled is not None:
            self.on_settled(self)
        self.done.set()


@dataclass
class SourceFailure:
    """A source stopped on its own: the runner turns this into a fatal error."""

    source: str
    message: str


@dataclass
class SourceConnected:
    """A source reached its database and reads (Debezium's task started): until then, or
    its first chunk, it is only starting, and the daemon does not say it is ready."""

    source: str


Deliver = Callable[[Chunk | SourceFailure | SourceConnected], None]


class Source(Protocol):
    name: str
    engine: str  # "embedded", "kafka" or "replay": shown in /status and `tunggal status`

    def start(self, deliver: Deliver) -> None:
        """Begin producing; call `deliver` from any thread."""

    def finished(self) -> bool:
        """True once a bounded source (a replay file) has delivered everything."""

    def close(self) -> None:
        """Stop producing; events not yet settled will be delivered again next time."""
