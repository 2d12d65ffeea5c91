"""Where two sides of a table differ, by checksums over regions of the key hash: the
bisection of `tunggal verify`. Pure: the databases compute the sums, this decides what next.

Each row has a key hash (64 bits, from the target key's values) and a row hash (from every
compared column). A region is the set of rows whose key hash has a given value in its low
`bits` bits; a region's checksum is (rows, sum of row hashes). Worked example, one row changed
by hand in a table of 1,000,000 rows:

    level 0, 16 bits: 65,536 regions of ~15 rows each, one pair of sums per region and side;
                      region 0x2a41 differs (15 rows on each side, other sums)
    leaves:           15 rows <= LEAF_ROWS, so the rows of region (16, 0x2a41) are compared

For 10^9 rows a region holds ~15,000 rows: it is split into 256 by the next 8 bits and only
those sub-regions' sums are read again, until each differing region holds at most LEAF_ROWS.
Memory holds the sums of one level: O(regions), never O(rows).

Unlike key *ranges* (data-diff), hash regions need no order shared by both sides: the target
key is computed by the mapping, so the source is not sorted by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

TOP_BITS: Final = 16  # the first level: 65,536 regions
SPLIT_BITS: Final = 8  # each bisection step splits a region in 256
MAX_BITS: Final = 48  # beyond this a region is compared row by row whatever its size
LEAF_ROWS: Final = 4096  # a differing region this small is compared row by row


@dataclass(frozen=True, order=True, slots=True)
class Region:
    """The rows whose key hash ends in `value` (its low `bits` bits)."""

    bits: int
    value: int

    def __post_init__(self) -> None:
        if not 0 < self.bits <= 63 or not 0 <= self.value < 1 << self.bits:
            raise ValueError(f"no region {self.value} of {self.bits} bits")

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    def contains(self, key_hash: int) -> bool:
        return key_hash & self.mask == self.value

    def children(self, bits: int) -> Iterable[Region]:
        """Its sub-regions of `bits` bits (more than its own)."""
        step = 1 << self.bits
        return (Region(bits, v) for v in range(self.value, 1 << bits, step))


# region value -> (rows, sum of row hashes), for one side and one level (bits)
Sums = Mapping[int, tuple[int, int]]


def add_sums(into: dict[int, tuple[int, int]], more: Iterable[tuple[int, int, int]]) -> int:
    """Add (region value, rows, hash sum) triples into `into` (several source tables of one
    source writing one target table: their union's sums are the sums of their sums); the
    rows added."""
    added = 0
    for value, rows, total in more:
        have = into.get(value)
        into[value] = (rows, total) if have is None else (have[0] + rows, have[1] + total)
        added += rows
    return added


def differing(source: Sums, target: Sums) -> list[tuple[int, int]]:
    """(region value, the larger side's rows) of every region whose checksums differ."""
    out = []
    for value in source.keys() | target.keys():
        a = source.get(value, (0, 0))
        b = target.get(value, (0, 0))
        if a != b:
            out.append((value, max(a[0], b[0])))
    out.sort()
    return out


def next_step(bits: int, found: Iterable[tuple[int, int]]) -> tuple[list[Region], list[Region]]:
    """(leaves, regions to split) among the differing regions `found` at level `bits`."""
    leaves: list[Region] = []
    split: list[Region] = []
    for value, rows in found:
        region = Region(bits, value)
        if rows <= LEAF_ROWS or bits + SPLIT_BITS > MAX_BITS:
            leaves.append(region)
        else:
            split.append(region)
    return leaves, split


def by_bits(regions: Iterable[Region]) -> dict[int, list[int]]:
    """Regions grouped as {bits: sorted values}: one `key_hash & mask = ANY(values)` each."""
    out: dict[int, list[int]] = {}
    for region in regions:
        out.setdefault(region.bits, []).append(region.value)
    for values in out.values():
        values.sort()
    return out


def batches(regions: Iterable[tuple[Region, int]], max_rows: int) -> Iterable[list[Region]]:
    """Regions (with their row counts) in groups of about `max_rows` rows at most (one region
    larger than that is a group of its own), so that each group's rows fit in one pass."""
    group: list[Region] = []
    rows = 0
    for region, n in regions:
        if group and rows + n > max_rows:
            yield group
            group, rows = [], 0
        group.append(region)
        rows += n
    if group:
        yield group
