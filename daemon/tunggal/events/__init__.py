"""Change events: what Debezium sends, decoded into typed `ChangeEvent`s."""

from tunggal.events.coerce import coerce
from tunggal.events.decode import EPOCH_SHIFT, Hints, decode, in_epoch
from tunggal.events.model import (
    UNAVAILABLE,
    UNAVAILABLE_PLACEHOLDER,
    ChangeEvent,
    Op,
    RawEvent,
)
from tunggal.events.modes import ConnectorModes

__all__ = [
    "EPOCH_SHIFT",
    "UNAVAILABLE",
    "UNAVAILABLE_PLACEHOLDER",
    "ChangeEvent",
    "ConnectorModes",
    "Hints",
    "Op",
    "RawEvent",
    "coerce",
    "decode",
    "in_epoch",
]
