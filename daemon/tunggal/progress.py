"""Progress of long work (initial snapshots, `tunggal replay`, `tunggal dlq replay`): rich bars
in a terminal, a log line every ~10 s otherwise (journald, CI, a pipe).

This is the CLI's layer: the core only counts (runner totals, `Metrics`), and the commands hand
those counts to a `ProgressDisplay`, directly or through a `ProgressPoller`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

log = logging.getLogger("tunggal.progress")


@dataclass(frozen=True)
class Task:
    key: str
    description: str
    done: int
    total: int | None  # None: unknown; an estimate may be passed
    unit: str = "rows"
    estimated: bool = False  # the total is an estimate (pg_class.reltuples): say "~"


def describe(task: Task) -> str:
    """'snapshot s public.kv: 1,200 of ~5,000 rows (24%)'."""
    if task.total is None:
        return f"{task.description}: {task.done:,} {task.unit}"
    approx = "~" if task.estimated else ""
    share = f" ({min(100.0, 100.0 * task.done / task.total):.0f}%)" if task.total > 0 else ""
    return f"{task.description}: {task.done:,} of {approx}{task.total:,} {task.unit}{share}"


class ProgressDisplay:
    """Shows the current set of tasks. `update` takes the whole set each time: tasks missing
    from it are finished and taken off the screen.

    In a terminal (stderr is one) the tasks are rich progress bars; otherwise each task that
    moved is logged at most every `log_every_s`. `min_total` keeps small jobs quiet.
    """

    def __init__(
        self,
        *,
        terminal: bool | None = None,
        log_every_s: float = 10.0,
        min_total: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.log_every_s = log_every_s
        self.min_total = min_total
        self.clock = clock
        self._last_log = clock()
        self._logged: dict[str, int] = {}
        self._bars: Progress | None = None
        self._ids: dict[str, TaskID] = {}
        self._moved: list[tuple[logging.StreamHandler[Any], Any]] = []
        self._lock = threading.Lock()

    def update(self, tasks: Iterable[Task]) -> None:
        shown = [t for t in tasks if t.total is None or t.total >= self.min_total]
        with self._lock:
            if self.terminal:
                self._draw(shown)
            else:
                self._log(shown)

    def _log(self, tasks: list[Task], force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_log < self.log_every_s:
            return
        self._last_log = now
        for task in tasks:
            if self._logged.get(task.key) != task.done:
                self._logged[task.key] = task.done
                log.info("%s", describe(task))

    def _draw(self, tasks: list[Task]) -> None:
        if self._bars is None:
            if not tasks:
                return
            self._start_bars()
        assert self._bars is not None
        if not tasks:
            # All finished (a snapshot is over): give the terminal back to the log.
            self._stop_bars()
            return
        keys = {t.key for t in tasks}
        for key in [k for k in self._ids if k not in keys]:
            self._bars.remove_task(self._ids.pop(key))
        for task in tasks:
            label = task.description + (" (est.)" if task.estimated else "")
            if task.key not in self._ids:
                self._ids[task.key] = self._bars.add_task(label, total=task.total)
            self._bars.update(
                self._ids[task.key], completed=task.done, total=task.total, description=label
            )

    def _start_bars(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        original = sys.stderr
        self._bars = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bars.start()
        # The bars swap sys.stderr for a proxy that prints above them; log lines must go
        # through that proxy too, or they tear the bars apart.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                self._moved.append((handler, original))
                handler.setStream(sys.stderr)

    def _stop_bars(self) -> None:
        for handler, stream in self._moved:
            handler.setStream(stream)
        self._moved = []
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
            self._ids = {}

    def close(self, final: Iterable[Task] = ()) -> None:
        """Stop drawing; without a terminal, log the final state of tasks still moving."""
        with self._lock:
            self._stop_bars()
            if not self.terminal:
                self._log([t for t in final if t.key in self._logged], force=True)


class ProgressPoller:
    """Feeds a display from `poll` every `interval_s`, on a daemon thread, until closed."""

    def __init__(
        self,
        poll: Callable[[], list[Task]],
        display: ProgressDisplay,
        interval_s: float = 1.0,
    ) -> None:
        self.poll = poll
        self.display = display
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tunggal-progress", daemon=True)

    def start(self) -> ProgressPoller:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.display.update(self.poll())
            except Exception as exc:  # progress is a nicety: never let it take anything down
                log.debug("progress display failed: %s", exc)

    def close(self) -> None:
        """Safe to call more than once."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        final: list[Task] = []
        try:
            final = self.poll()
        except Exception as exc:
            log.debug("progress display failed: %s", exc)
        self.display.close(final)
