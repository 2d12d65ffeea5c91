"""Change events: what Debezium sends, decoded into typed `ChangeEvent`s."""

from tunggal.events.coerce import coerce
from tunggal.events.decode import Hints, decode
from tunggal.events.model import (
    UNAVAILABLE,
    UNAVAILABLE_PLACEHOLDER,
    ChangeEvent,
    Op,
    RawEvent,
)
from tunggal.events.modes import ConnectorModes

__all__ = [
    "UNAVAILABLE",
    "UNAVAILABLE_PLACEHOLDER",
    "ChangeEvent",
    "ConnectorModes",
    "Hints",
    "Op",
    "RawEvent",
    "coerce",
    "decode",
]
