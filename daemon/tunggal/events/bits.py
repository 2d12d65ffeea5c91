"""BIT(n) values as bit strings.

A module of its own, never compiled: mypyc cannot compile a subclass of str (see
`tunggal.native`).
"""

from __future__ import annotations


class BitString(str):
    """A bit(n)/BIT(n) value as its bit string ('0010000001', n characters), decoded for a column
    whose target type was not known to be bytea. The sink writes it into a bytea column as the
    number's bytes (`values.bits_bytes`), never as the ASCII digits."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        return int(self or "0", 2).to_bytes((len(self) + 7) // 8 or 1, "big")
