"""Helpers for the fault-injection tests: a bounded source workload and table comparisons."""

from __future__ import annotations

import random
import re
import threading
import time
import urllib.request
from typing import Any

import psycopg

from tests.conftest import sql

KV_DDL = "CREATE TABLE kv (id int PRIMARY KEY, v text, n bigint NOT NULL DEFAULT 0)"


def kv_mapping(source: str) -> str:
    return (
        f"source: {source}\ntables:\n  - from: public.kv\n    to: public.kv\n    key: [id]\n"
        "    columns: {id: id, v: v, n: n}\n"
    )


class ChangeWriter(threading.Thread):
    """Writes `total` row changes into `kv`: inserts, updates, deletes and key changes.

    Each statement touches `rows` random keys (multi-row statements keep 50,000 changes
    quick), `per_txn` statements go in one transaction, and `rate` (changes per second)
    paces it, None for as fast as PostgreSQL takes them. A change is a row a statement
    affected, i.e. one Debezium event. Bounded by `total` and `max_seconds`; an error is kept
    and raised by `finish()`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        total: int,
        seed: int,
        keys: int = 5000,
        rows: int = 1,
        per_txn: int = 1,
        rate: float | None = None,
        key_changes: bool = True,
        max_seconds: float = 120,
    ) -> None:
        super().__init__(name="change-writer", daemon=True)
        self.dsn = dsn
        self.total = total
        self.rnd = random.Random(seed)
        self.keys = keys
        self.rows = rows
        self.per_txn = per_txn
        self.rate = rate
        self.key_changes = key_changes
        self.max_seconds = max_seconds
        self.stop = threading.Event()
        self.changes = 0
        self.transactions = 0
        self.counts = {"upsert": 0, "update": 0, "delete": 0, "key": 0}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        started = time.monotonic()
        with psycopg.connect(self.dsn) as conn:
            while self.changes < self.total and not self.stop.is_set():
                if time.monotonic() - started > self.max_seconds:
                    raise AssertionError(
                        f"writer took over {self.max_seconds}s ({self.changes} changes)"
                    )
                with conn.transaction():
                    for _ in range(self.per_txn):
                        self.changes += self._statement(conn)
                self.transactions += 1
                if self.rate:
                    ahead = self.changes / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        self.stop.wait(ahead)

    def _statement(self, conn: psycopg.Connection[Any]) -> int:
        rnd, n = self.rnd, self.rows
        action = rnd.random()
        tag = f"w{self.transactions}-{rnd.getrandbits(24):x}"
        if action < 0.45:
            ids = rnd.sample(range(1, self.keys + 1), n)
            cur = conn.execute(
                "INSERT INTO kv (id, v, n) SELECT i, %s || '-' || i, 0 FROM unnest(%s::int[]) i "
                "ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v, n = kv.n + 1",
                (tag, ids),
            )
            kind = "upsert"
        elif action < 0.7:
            ids = rnd.sample(range(1, self.keys + 1), n)
            cur = conn.execute("UPDATE kv SET v = %s, n = n + 1 WHERE id = ANY(%s)", (tag, ids))
            kind = "update"
        elif action < 0.85 or not self.key_changes:
            ids = rnd.sample(range(1, self.keys + 1), n)
            cur = conn.execute("DELETE FROM kv WHERE id = ANY(%s)", (ids,))
            kind = "delete"
        else:
            # Old and new keys drawn without overlap, so a statement never collides with
            # itself; a new key that already exists is skipped.
            both = rnd.sample(range(1, self.keys + 1), 2 * n)
            cur = conn.execute(
                "UPDATE kv SET id = m.new, v = %s FROM unnest(%s::int[], %s::int[]) "
                "AS m(old, new) WHERE kv.id = m.old "
                "AND NOT EXISTS (SELECT 1 FROM kv k WHERE k.id = m.new)",
                (tag, both[:n], both[n:]),
            )
            kind = "key"
        affected = max(cur.rowcount, 0)
        self.counts[kind] += affected
        return affected

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        if self.is_alive():
            self.stop.set()
            self.join(10)
            raise AssertionError(f"writer still running after {timeout}s ({self.changes})")
        if self.error is not None:
            raise self.error


# Run without parameters, so psycopg passes '%' through to format() as it is.
DIGEST = (
    "SELECT count(*), md5(coalesce(string_agg(format('%s|%s|%s', id, v, n), ',' "
    "ORDER BY id), '')) FROM kv"
)


def digest(dsn: str) -> tuple[int, str]:
    count, md5 = sql(dsn, DIGEST)[0]
    return int(count), str(md5)


def same_kv(target: str, source: str) -> bool:
    return digest(target) == digest(source)


def kv_diff(target: str, source: str) -> str:
    got = {r[0]: r[1:] for r in sql(target, "SELECT id, v, n FROM kv")}
    want = {r[0]: r[1:] for r in sql(source, "SELECT id, v, n FROM kv")}
    wrong = {
        k: (got.get(k), want.get(k)) for k in got.keys() | want.keys() if got.get(k) != want.get(k)
    }
    sample = dict(sorted(wrong.items())[:10])
    return (
        f"target {len(got)} rows, source {len(want)} rows; {len(wrong)} differ "
        f"(key: (target, source)): {sample}"
    )


def progress(target: str, source: str) -> int:
    """tunggal_progress.events_applied for `source` (-1 before its first batch)."""
    try:
        found = sql(
            target,
            "SELECT events_applied FROM public.tunggal_progress WHERE source = %s",
            (source,),
        )
    except psycopg.OperationalError:
        return -1
    return int(found[0][0]) if found else -1


def metrics_port(config_text: str) -> int:
    m = re.search(r"^metrics:\n  port: (\d+)", config_text, re.MULTILINE)
    assert m, config_text
    return int(m.group(1))


def metric_sum(port: int, name: str) -> float:
    """Sum over every label set of `name` on the daemon's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return sum(float(v) for v in values)
