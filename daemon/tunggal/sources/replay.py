"""A file of recorded Debezium events, one JSON object per line (backfills, tests, DLQ replay).

Each line holds `destination` (or `topic`), `key` and `value`; key and value may be JSON
text or JSON objects, and a null value is a tombstone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from tunggal.events.model import RawEvent
from tunggal.sources.base import Chunk, Deliver, SourceFailure


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def read_events(stream: IO[bytes], name: str) -> Iterator[RawEvent | SourceFailure]:
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            # The line still becomes an event, so that it is dead-lettered rather than lost.
            yield RawEvent(destination="", key=None, value=line.rstrip(b"\n"), offset=lineno)
            del exc
            continue
        if not isinstance(record, dict):
            yield RawEvent(destination="", key=None, value=line.rstrip(b"\n"), offset=lineno)
            continue
        destination = record.get("destination") or record.get("topic") or ""
        yield RawEvent(
            destination=str(destination),
            key=_as_text(record.get("key")),
            value=_as_text(record.get("value")),
            offset=lineno,
            partition=int(record.get("partition") or 0),
        )


class ReplaySource:
    engine = "replay"

    def __init__(self, name: str, path: Path, chunk_size: int = 5000) -> None:
        self.name = name
        self.path = path
        self.chunk_size = chunk_size
        self._done = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, deliver: Deliver) -> None:
        def produce() -> None:
            try:
                with open(self.path, "rb") as stream:
                    batch: list[RawEvent] = []
                    for item in read_events(stream, self.name):
                        if self._stop.is_set():
                            return
                        if isinstance(item, SourceFailure):
                            deliver(item)
                            return
                        batch.append(item)
                        if len(batch) >= self.chunk_size:
                            deliver(Chunk(self.name, batch))
                            batch = []
                    if batch:
                        deliver(Chunk(self.name, batch))
            except OSError as exc:
                deliver(SourceFailure(self.name, f"cannot read {self.path}: {exc.strerror}"))
            finally:
                self._done.set()

        self._thread = threading.Thread(target=produce, name=f"replay-{self.name}", daemon=True)
        self._thread.start()

    def finished(self) -> bool:
        return self._done.is_set()

    def close(self) -> None:
        self._stop.set()
