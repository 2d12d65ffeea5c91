"""The bisection of `tunggal verify` (`reconcile.buckets`): region checksums find every region
holding a changed row, and bisecting them ends in leaves that cover exactly those rows."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunggal.reconcile import buckets
from tunggal.reconcile.buckets import Region

Row = tuple[int, int]  # (key hash, row hash): what the databases compute


def sums(
    rows: Iterable[Row], bits: int, within: dict[int, list[int]] | None = None
) -> dict[int, tuple[int, int]]:
    """What `pgsql.sums_query` computes, in Python."""
    out: dict[int, tuple[int, int]] = {}
    for kh, rh in rows:
        if within is not None and not any(
            Region(b, v).contains(kh) for b, vs in within.items() for v in vs
        ):
            continue
        buckets.add_sums(out, [(kh & ((1 << bits) - 1), 1, rh)])
    return out


def bisect(source: list[Row], target: list[Row]) -> list[Region]:
    """The leaves `reconcile.verify` compares row by row, with the sums computed in Python."""
    bits = buckets.TOP_BITS
    found = buckets.differing(sums(source, bits), sums(target, bits))
    leaves: list[Region] = []
    while found:
        done, split = buckets.next_step(bits, found)
        leaves += done
        if not split:
            break
        parents = buckets.by_bits(split)
        bits += buckets.SPLIT_BITS
        found = buckets.differing(sums(source, bits, parents), sums(target, bits, parents))
    return leaves


hashes = st.integers(0, 2**64 - 1)


@given(
    rows=st.dictionaries(hashes, hashes, max_size=300),
    deleted=st.integers(0, 5),
    changed=st.integers(0, 5),
    added=st.lists(st.tuples(hashes, hashes), max_size=5),
    seed=st.integers(0, 1000),
)
def test_every_changed_row_lies_in_a_leaf(
    rows: dict[int, int], deleted: int, changed: int, added: list[Row], seed: int
) -> None:
    rnd = random.Random(seed)
    source = list(rows.items())
    target = list(source)
    rnd.shuffle(target)
    touched: list[int] = []
    for _ in range(min(deleted, len(target))):
        touched.append(target.pop()[0])
    for i in range(min(changed, len(target))):
        kh, rh = target[i]
        target[i] = (kh, rh ^ 0x5A5A)
        touched.append(kh)
    for kh, rh in added:
        if kh not in rows:
            target.append((kh, rh))
            touched.append(kh)
    leaves = bisect(source, target)
    for kh in touched:
        assert any(leaf.contains(kh) for leaf in leaves), hex(kh)
    # And nothing else: a leaf holds a changed row (64-bit sums do not collide here).
    for leaf in leaves:
        assert any(leaf.contains(kh) for kh in touched), leaf


def test_a_large_region_is_bisected_to_small_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buckets, "LEAF_ROWS", 8)
    rnd = random.Random(7)
    # 2,000 rows in one 16-bit region: only the next bits tell them apart.
    source = [((rnd.getrandbits(40) << 16) | 0x1234, rnd.getrandbits(64)) for _ in range(2000)]
    target = source[:-1]
    leaves = bisect(source, target)
    assert len(leaves) == 1 and leaves[0].bits > buckets.TOP_BITS
    assert leaves[0].contains(source[-1][0])
    assert sum(1 for kh, _ in source if leaves[0].contains(kh)) <= 8


def test_in_sync_sides_have_no_differing_region() -> None:
    rows = [(i * 0x9E3779B97F4A7C15 % 2**64, i) for i in range(1000)]
    assert buckets.differing(sums(rows, 16), sums(list(reversed(rows)), 16)) == []


def test_union_of_tables_adds_up() -> None:
    a = [(1, 10), (2, 20)]
    b = [(3, 30), (65537, 40)]
    into: dict[int, tuple[int, int]] = {}
    buckets.add_sums(into, [(kh & 0xFFFF, 1, rh) for kh, rh in a + b])
    assert into == sums(a + b, 16) == {1: (2, 50), 2: (1, 20), 3: (1, 30)}


def test_regions() -> None:
    region = Region(16, 0x1234)
    children = list(region.children(24))
    assert len(children) == 256 and all(c.value & 0xFFFF == 0x1234 for c in children)
    assert region.contains(0xABCD1234) and not region.contains(0xABCD1235)
    with pytest.raises(ValueError):
        Region(8, 256)


def test_batches_keep_groups_under_the_limit() -> None:
    regions = [(Region(16, i), n) for i, n in enumerate([5, 5, 5, 20, 1, 1])]
    groups = list(buckets.batches(regions, 10))
    assert [[r.value for r in g] for g in groups] == [[0, 1], [2], [3], [4, 5]]
