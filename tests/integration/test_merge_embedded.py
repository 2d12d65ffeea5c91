"""Many sources, one row, through the embedded engine with one kill -9: two real PostgreSQL
source databases (sources `a` and `b`) write one merged target table while `tunggal run`
streams; the daemon is killed mid-workload, the sources keep changing, it restarts and catches
up. The target must then be what the survivorship rules make of the sources' final contents."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_connector
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

SOURCE_A = """CREATE TABLE unit (id int PRIMARY KEY, nama text, alamat text,
  diubah timestamptz NOT NULL, catatan text)"""
SOURCE_B = """CREATE TABLE satker (kd int PRIMARY KEY, nm text, alamat text, singkatan text,
  diubah timestamptz NOT NULL, ket text)"""
TARGET = """CREATE TABLE opd (kode int PRIMARY KEY, nama text, alamat text, singkatan text,
  diubah timestamptz, catatan text)"""
# Both map nama, alamat, diubah and catatan; only b maps singkatan. nama: a's unless NULL,
# else b's (priority); alamat: a's alone (owner; b's is ignored); singkatan: b's (the default
# priority, which only b can satisfy); diubah and catatan: latest; a's delete removes the row.
MAPPING_A = """source: a
tables:
  - from: public.unit
    to: public.opd
    key: [kode]
    merge:
      default: {priority: [a, b]}
      columns:
        alamat: {owner: a}
        diubah: latest
        catatan: latest
      deleted_by: [a]
    columns: {kode: id, nama: nama, alamat: alamat, diubah: diubah, catatan: catatan}
"""
MAPPING_B = """source: b
tables:
  - from: public.satker
    to: public.opd
    key: [kode]
    columns: {kode: kd, nama: nm, alamat: alamat, singkatan: singkatan, diubah: diubah,
      catatan: ket}
"""
COLUMNS = "kode, nama, alamat, singkatan, diubah, catatan, _tunggal_source"
A_KEYS, B_KEYS = range(1, 36), range(15, 51)  # 15..35 both, 1..14 a only, 36..50 b only
STATEMENTS = 3000
RATE = 150  # statements per second: the workload runs about 20 s, across the kill


class Workload(threading.Thread):
    """Inserts, updates (NULLs included) and deletes on both sources, one statement at a time
    from this one thread, each setting `diubah = clock_timestamp()`.

    Why `latest` is decidable from the sources' final rows: the statements, whichever source
    they go to, run strictly one after another on one cluster (one clock), and each commits
    (autocommit) before the next starts. So a row's `diubah` lies before its commit time, and
    that before the next statement's `diubah`: ordering the sources' last changes of a key by
    their `diubah` orders them by commit time (no ties; tunggal gets µs commit times, ts_us).
    The one thing the final rows cannot tell is whether `a` deleted a key or never had it
    (deleted_by); `a_inserted` records which keys `a` ever inserted.
    """

    def __init__(self, dsn_a: str, dsn_b: str) -> None:
        super().__init__(name="merge-workload", daemon=True)
        self.dsn = {"a": dsn_a, "b": dsn_b}
        self.rnd = random.Random(20_260_101)
        self.done = 0
        self.a_inserted: set[int] = set()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                psycopg.connect(self.dsn["a"], autocommit=True) as a,
                psycopg.connect(self.dsn["b"], autocommit=True) as b,
            ):
                started = time.monotonic()
                while self.done < STATEMENTS and not self.stop.is_set():
                    self._statement(a, b)
                    self.done += 1
                    ahead = self.done / RATE - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except BaseException as exc:
            self.error = exc

    def _value(self, prefix: str, null_chance: float) -> str | None:
        return None if self.rnd.random() < null_chance else f"{prefix}{self.done}"

    def _statement(self, a: psycopg.Connection[Any], b: psycopg.Connection[Any]) -> None:
        rnd = self.rnd
        source = rnd.choice("ab")
        key = rnd.choice(A_KEYS if source == "a" else B_KEYS)
        action = rnd.random()
        if source == "a":
            if action < 0.55:
                a.execute(
                    "INSERT INTO unit VALUES (%s, %s, %s, clock_timestamp(), %s) "
                    "ON CONFLICT (id) DO UPDATE SET nama = EXCLUDED.nama, "
                    "alamat = EXCLUDED.alamat, diubah = EXCLUDED.diubah, "
                    "catatan = EXCLUDED.catatan",
                    (key, self._value("na", 0.3), self._value("aa", 0.2), self._value("ca", 0.2)),
                )
                self.a_inserted.add(key)
            elif action < 0.9:
                a.execute(
                    "UPDATE unit SET nama = %s, diubah = clock_timestamp() WHERE id = %s",
                    (self._value("nu", 0.4), key),
                )
            else:
                a.execute("DELETE FROM unit WHERE id = %s", (key,))
        elif action < 0.5:
            values = [self._value(p, 0.25) for p in ("nb", "ab", "sb", "cb")]
            b.execute(
                "INSERT INTO satker VALUES (%s, %s, %s, %s, clock_timestamp(), %s) "
                "ON CONFLICT (kd) DO UPDATE SET nm = EXCLUDED.nm, alamat = EXCLUDED.alamat, "
                "singkatan = EXCLUDED.singkatan, diubah = EXCLUDED.diubah, ket = EXCLUDED.ket",
                (key, *values),
            )
        elif action < 0.75:
            b.execute(
                "UPDATE satker SET ket = %s, diubah = clock_timestamp() WHERE kd = %s",
                (self._value("ku", 0.3), key),
            )
        else:
            b.execute("DELETE FROM satker WHERE kd = %s", (key,))


def expected(src_a: str, src_b: str, a_inserted: set[int]) -> list[tuple[Any, ...]]:
    """The target rows the merge rules make of the sources' final rows."""
    held_a = {r[0]: r for r in sql(src_a, "SELECT id, nama, alamat, diubah, catatan FROM unit")}
    held_b = {
        r[0]: r for r in sql(src_b, "SELECT kd, nm, alamat, singkatan, diubah, ket FROM satker")
    }
    rows = []
    for key in sorted(held_a.keys() | held_b.keys()):
        a, b = held_a.get(key), held_b.get(key)
        if a is None and key in a_inserted:
            continue  # a's latest change is a delete, and a is in deleted_by
        nama = a[1] if a is not None and a[1] is not None else (b[1] if b is not None else None)
        alamat = a[2] if a is not None else None
        singkatan = b[3] if b is not None else None
        # latest: the holder whose last change committed last, i.e. the greater diubah.
        holders = [("a", a[3], a[4])] if a is not None else []
        holders += [("b", b[4], b[5])] if b is not None else []
        source, diubah, catatan = max(holders, key=lambda h: h[1])
        rows.append((key, nama, alamat, singkatan, diubah, catatan, source))
    return rows


def test_two_sources_merged_through_kill_9(
    pg: PgCluster, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    src_a, src_b, target = new_db("msrc_a"), new_db("msrc_b"), new_db("mtarget")
    sql(src_a, SOURCE_A)
    sql(src_b, SOURCE_B)
    sql(target, TARGET)
    (tmp_path / "a.yaml").write_text(MAPPING_A)
    (tmp_path / "b.yaml").write_text(MAPPING_B)
    connectors = {
        name: str(write_connector(tmp_path, name, pg.port, dsn.rsplit("/", 1)[1]))
        for name, dsn in (("a", src_a), ("b", src_b))
    }
    config = write_config(tmp_path, target, connectors, ["a.yaml", "b.yaml"])
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    daemons: list[Daemon] = []
    workload = Workload(src_a, src_b)

    def start() -> Daemon:
        daemons.append(daemon_factory(config).start())
        return daemons[-1]

    def logs() -> str:
        return "\n".join(f"--- {d.log.name}:\n{d.output()[-3000:]}" for d in daemons)

    def contributions(where: str = "true") -> list[tuple[Any, ...]]:
        return sql(
            target,
            "SELECT kode, _tunggal_source, _tunggal_state, diubah, _tunggal_ts "
            f"FROM tunggal_contributions.public__opd WHERE {where} ORDER BY 1, 2",
        )

    try:
        daemon = start().wait_ready(90)
        # A probe row in each source, once seen in the target (the snapshot may have read it),
        # shows that each source's initial snapshot is taken: the workload below is then
        # streamed, with real commit times. The probes are deleted again, a's delete last.
        sql(src_a, "INSERT INTO unit VALUES (0, 'probe', NULL, clock_timestamp(), NULL)")
        sql(src_b, "INSERT INTO satker VALUES (0, 'probe', NULL, NULL, clock_timestamp(), NULL)")
        wait_until(
            lambda: len(contributions("kode = 0")) == 2, 90, message="the probes", context=logs
        )
        sql(src_b, "DELETE FROM satker WHERE kd = 0")
        sql(src_a, "DELETE FROM unit WHERE id = 0")
        workload.a_inserted.add(0)

        workload.start()
        wait_until(
            lambda: {r[1] for r in contributions("kode > 0")} == {"a", "b"},
            30,
            message="the workload streaming from both sources",
            context=logs,
        )
        time.sleep(1.5)
        assert daemon.alive() and workload.is_alive(), logs()
        daemon.kill()  # SIGKILL: no flush, no offset commit, JVM and all
        killed_at = workload.done
        time.sleep(2.0)  # the sources keep changing while the daemon is dead
        daemon = start()
        workload.join(60)
        assert not workload.is_alive() and workload.error is None, workload.error
        assert killed_at < STATEMENTS - 2 * RATE, killed_at  # the kill landed mid-workload

        want = expected(src_a, src_b, workload.a_inserted)
        # Every case is there: both sources hold a key, only a, only b, and a deleted it.
        a_keys = {r[0] for r in sql(src_a, "SELECT id FROM unit")}
        b_keys = {r[0] for r in sql(src_b, "SELECT kd FROM satker")}
        assert a_keys & b_keys and a_keys - b_keys and b_keys - a_keys, (a_keys, b_keys)
        assert b_keys & (workload.a_inserted - a_keys), "no key that a deleted and b holds"
        assert {r[6] for r in want if r[0] in a_keys & b_keys} == {"a", "b"}, want

        def diff() -> str:
            got = {r[0]: r for r in sql(target, f"SELECT {COLUMNS} FROM opd")}
            wanted = {w[0]: w for w in want}
            keys = sorted(k for k in got.keys() | wanted.keys() if got.get(k) != wanted.get(k))
            wrong = [(got.get(k), wanted.get(k)) for k in keys]
            return (
                f"{len(wrong)} rows differ (target, expected): {wrong[:8]}\n"
                f"contributions: {[c for c in contributions() if c[0] in keys][:16]}\n{logs()}"
            )

        wait_until(
            lambda: sql(target, f"SELECT {COLUMNS} FROM opd ORDER BY kode") == want,
            90,
            interval=0.5,
            message="the target merged from the sources' final rows",
            context=diff,
        )
        assert sql(target, "SELECT count(*) FROM public.tunggal_dead_letters") == [(0,)]
        code, _ = daemon.terminate(timeout=30)
        assert code == 0, logs()
    finally:
        workload.stop.set()
        for d in daemons:
            if d.alive():
                d.kill()
