"""One error hierarchy for the whole daemon.

The branch an error belongs to decides what the runner does with it:

- `TransientError`: retry with backoff (tenacity); nothing is dead-lettered, nothing acknowledged.
- `PoisonEventError`: this one event can never be applied as it is; set it aside and keep going.
- `FatalError`: stop cleanly with a clear message and a non-zero exit code, acknowledging nothing.

`ConfigError` is fatal and carries every problem found, so that an admin fixes a mapping file
in one round instead of one error per restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class TunggalError(Exception):
    """Root of every error Tunggal raises on purpose."""


class TransientError(TunggalError):
    """The operation may succeed if retried later (connection lost, deadlock, failover)."""


class PoisonEventError(TunggalError):
    """This event cannot be decoded or mapped; retrying will not help."""

    def __init__(self, message: str, *, source: str | None = None, table: str | None = None):
        super().__init__(message)
        self.source = source
        self.table = table


class DecodeError(PoisonEventError):
    """A change event is not a Debezium envelope we understand."""


class MappingError(PoisonEventError):
    """A mapping rule failed for one row (a cast, a transform, a missing key column)."""


class FatalError(TunggalError):
    """Continuing would risk data; stop the daemon."""


@dataclass(frozen=True)
class Problem:
    """One configuration problem, located precisely enough for an admin to fix it."""

    file: str
    location: str  # dotted path inside the file, e.g. "tables[2].columns.nama"
    message: str
    line: int | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        # A problem of no file (a command's arguments) is its message alone, not ": message".
        text = ": ".join(part for part in (where, self.location, self.message) if part)
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(FatalError):
    """Configuration or mapping files are invalid. Holds every problem found, not just the first."""

    def __init__(self, problems: Iterable[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(file="", location="", message=problems)]
        self.problems: list[Problem] = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} found:"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


class KafkaConnectError(TunggalError):
    """The Kafka Connect REST API could not be reached or refused a request.

    `status` is the HTTP status, or None when no answer came (refused, timed out). The message
    names the worker's URL without credentials and never holds a connector's secrets.
    """

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status
