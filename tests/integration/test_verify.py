"""`tunggal verify` against real PostgreSQL sources and target, and, where changes must stream
while it checks, the real embedded Debezium engine in a `tunggal run` subprocess."""

from __future__ import annotations

import json
import random
import threading
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_connector
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

SIGNAL = """CREATE TABLE tunggal_signal (id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL,
  data varchar(2048));"""
SOURCE_A = (
    """
CREATE TABLE barang (id bigint PRIMARY KEY, nama text, pagu numeric(12,2), tgl date,
  diubah timestamptz, j jsonb, u uuid, aktif boolean);
CREATE TABLE kegiatan (id int PRIMARY KEY, kode text NOT NULL, nama text, tahun int);
CREATE TABLE opd (kode text PRIMARY KEY, nama text NOT NULL);
INSERT INTO barang SELECT g, 'barang ' || g, g * 1.5, date '2025-01-01' + g,
  timestamptz '2026-01-01 07:00+07' + g * interval '1 minute',
  jsonb_build_object('n', g, 'tag', 'x'), md5(g::text)::uuid, g % 3 = 0
  FROM generate_series(1, 2000) g;
INSERT INTO kegiatan SELECT g, 'KEG.' || g, '  kegiatan ' || g || ' ', 2016 + g % 10
  FROM generate_series(1, 1000) g;
INSERT INTO opd SELECT '1.' || lpad(g::text, 2, '0'), 'dinas ' || g FROM generate_series(1, 20) g;
"""
    + SIGNAL
)
SOURCE_B = (
    """
CREATE TABLE ref_opd (kd text PRIMARY KEY, nm text NOT NULL);
INSERT INTO ref_opd SELECT '1.' || lpad(g::text, 2, '0'), 'DINAS ' || g || ' (B)'
  FROM generate_series(10, 30) g;
"""
    + SIGNAL
)
TARGET = """
CREATE TABLE barang (id bigint PRIMARY KEY, nama text, pagu numeric(12,2), tgl date,
  diubah timestamptz, j jsonb, u uuid, aktif boolean);
CREATE TABLE kegiatan (id int PRIMARY KEY, kode text NOT NULL, nama text, tahun int);
CREATE TABLE opd (kode_opd text PRIMARY KEY, nama_opd text, sumber text);
"""
MAPPING_A = """
source: sys_a
tables:
  - from: public.barang
    to: barang
    key: [id]
    columns: {id: id, nama: nama, pagu: pagu, tgl: tgl, diubah: diubah, j: j, u: u, aktif: aktif}
  - from: public.kegiatan
    to: kegiatan
    key: [id]
    filter: 'row.tahun >= 2020'
    columns: {id: id, kode: kode, nama: {from: nama, transform: [trim, upper]}, tahun: tahun}
  - from: public.opd
    to: opd
    key: [kode_opd]
    merge:
      default: {priority: [sys_a, sys_b]}
    columns: {kode_opd: kode, nama_opd: {from: nama, transform: [upper]}, sumber: {const: sys_a}}
"""
MAPPING_B = """
source: sys_b
tables:
  - from: public.ref_opd
    to: opd
    key: [kode_opd]
    columns: {kode_opd: kd, nama_opd: nm, sumber: {const: sys_b}}
"""


def setup(pg: PgCluster, new_db: Any, tmp_path: Path) -> dict[str, Any]:
    src_a, src_b, target = new_db("v_src_a"), new_db("v_src_b"), new_db("v_target")
    sql(src_a, SOURCE_A)
    sql(src_b, SOURCE_B)
    sql(target, TARGET)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "sys_a.yaml").write_text(MAPPING_A)
    (tmp_path / "mappings" / "sys_b.yaml").write_text(MAPPING_B)
    connectors = {}
    for name, dsn in (("sys_a", src_a), ("sys_b", src_b)):
        path = write_connector(tmp_path, name, pg.port, dsn.rsplit("/", 1)[1])
        path.write_text(path.read_text() + "signal_table: public.tunggal_signal\n")
        connectors[name] = str(path)
    config = write_config(tmp_path, target, connectors, ["mappings/*.yaml"])
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    return {"src_a": src_a, "src_b": src_b, "target": target, "config": config}


def verify(config: Path, *args: str, timeout: float = 240) -> tuple[int, dict[str, Any], str]:
    done = run_cli("verify", "--config", str(config), "--json", *args, timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"no JSON (exit {done.returncode}): {done.stdout}{done.stderr}"
        ) from None
    return done.returncode, report, done.stderr


def drifted(report: dict[str, Any]) -> set[tuple[str, str, str, str, tuple[str, ...]]]:
    """(source, table, kind, key, columns) of every drifted row; "(merge)" for a row of a
    table several sources write that differs from what its contributions give."""
    found = {
        (
            t["source"],
            t["target_table"],
            r["kind"],
            ",".join(r["key"].values()),
            tuple(r["columns"]),
        )
        for t in report["tables"]
        for r in t["rows"]
    }
    return found | {
        ("(merge)", m["target_table"], r["kind"], ",".join(r["key"].values()), tuple(r["columns"]))
        for m in report["merged_rows"]
        for r in m["drift_rows"]
    }


class Workload(threading.Thread):
    """Changes to every table of sys_a, as the source systems make them all day."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.changes = dsn, threading.Event(), 0

    def run(self) -> None:
        rnd = random.Random(11)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.003):
                key = rnd.randint(1, 2300)
                roll = rnd.random()
                if roll < 0.5:
                    conn.execute(
                        "UPDATE barang SET nama = %s, pagu = pagu + 1, diubah = now(), "
                        "j = j || jsonb_build_object('v', %s) WHERE id = %s",
                        (f"barang {key} v{self.changes}", self.changes, key),
                    )
                elif roll < 0.65:
                    conn.execute(
                        "INSERT INTO barang (id, nama, pagu) VALUES (%s, 'baru', 1) "
                        "ON CONFLICT (id) DO NOTHING",
                        (key,),
                    )
                elif roll < 0.7:
                    conn.execute("DELETE FROM barang WHERE id = %s", (key,))
                elif roll < 0.9:
                    # Rows move in and out of kegiatan's filter (tahun >= 2020).
                    conn.execute(
                        "UPDATE kegiatan SET tahun = 2016 + (tahun + 3) %% 10, nama = %s "
                        "WHERE id = %s",
                        (f" k{self.changes} ", key % 1000 + 1),
                    )
                else:
                    conn.execute(
                        "UPDATE opd SET nama = %s WHERE kode = %s",
                        (f"dinas v{self.changes}", f"1.{key % 20 + 1:02d}"),
                    )
                self.changes += 1


def _metric(port: int, name: str, **labels: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_verify_while_changes_stream_then_finds_and_repairs_hand_edits(
    pg: PgCluster, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    env = setup(pg, new_db, tmp_path)
    daemon: Daemon = daemon_factory(env["config"]).start()
    try:
        _stream_find_and_repair(env, daemon)
    finally:
        if daemon.alive():
            daemon.kill()
        # The slots are named after the sources: leave none on the shared cluster.
        sql(
            pg.dsn(),
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name IN ('tunggal_sys_a', 'tunggal_sys_b') AND NOT active",
        )


def _stream_find_and_repair(env: dict[str, Any], daemon: Daemon) -> None:
    src_a, target, config = env["src_a"], env["target"], env["config"]
    port = int(config.read_text().split("port: ")[1].split()[0])
    log = lambda: daemon.output()[-4000:]  # noqa: E731
    wait_until(lambda: sql(target, "SELECT count(*) FROM barang") == [(2000,)], 120, context=log)
    wait_until(lambda: sql(target, "SELECT count(*) FROM opd") == [(30,)], 60, context=log)

    # (a) In sync while every table of sys_a changes: no drift reported.
    workload = Workload(src_a)
    workload.start()
    try:
        wait_until(lambda: workload.changes > 300, 30)
        code, report, stderr = verify(config)
        assert code == 0, (json.dumps(report, indent=1)[:4000], stderr)
        assert report["in_sync"] is True
        assert [(m["target_table"], m["rows"]) for m in report["merged_rows"]] == [
            ("public.opd", 30)
        ]
        tables = {(t["source"], t["target_table"]): t for t in report["tables"]}
        assert set(tables) == {
            ("sys_a", "public.barang"),
            ("sys_a", "public.kegiatan"),
            ("sys_a", "public.opd"),
            ("sys_b", "public.opd"),
        }
        assert tables[("sys_a", "public.barang")]["mode"] == "sql"
        assert tables[("sys_a", "public.kegiatan")]["mode"] == "mapped"
        assert tables[("sys_a", "public.barang")]["source_rows"] > 1500
        # Only kegiatan rows in the filter count: the filtered ones are not in the target.
        assert 300 < tables[("sys_a", "public.kegiatan")]["source_rows"] < 700
    finally:
        workload.stop.set()
        workload.join(10)
    assert workload.changes > 300, workload.changes
    # A last change: once it is in the target, so is everything the workload did.
    sql(src_a, "INSERT INTO barang (id, nama) VALUES (5000, 'penanda')")
    wait_until(lambda: sql(target, "SELECT 1 FROM barang WHERE id = 5000"), 60, context=log)

    # (b) Rows deleted, changed and inserted in the target by hand.
    sql(target, "DELETE FROM barang WHERE id = 3")
    sql(target, "UPDATE barang SET nama = 'ubah tangan', j = '{\"a\": 1}' WHERE id = 4")
    sql(
        target,
        "INSERT INTO barang (id, nama, _tunggal_source, _tunggal_position, _tunggal_ts) "
        "VALUES (99999, 'hantu', 'sys_a', 1, 1)",
    )
    (kegiatan_id,) = sql(target, "SELECT min(id) FROM kegiatan")[0]
    sql(target, "UPDATE kegiatan SET nama = 'TANGAN' WHERE id = %s", (kegiatan_id,))
    # sys_a's contribution to one OPD lost (sys_b still holds the row), and another OPD's
    # merged row changed by hand.
    sql(
        target,
        "DELETE FROM tunggal_contributions.public__opd "
        "WHERE kode_opd = '1.12' AND _tunggal_source = 'sys_a'",
    )
    sql(target, "UPDATE opd SET nama_opd = 'TANGAN' WHERE kode_opd = '1.05'")
    code, report, stderr = verify(config, "--source", "sys_a")
    assert code == 1, stderr
    assert drifted(report) == {
        ("sys_a", "public.barang", "missing", "3", ()),
        ("sys_a", "public.barang", "differing", "4", ("nama", "j")),
        ("sys_a", "public.barang", "extra", "99999", ()),
        ("sys_a", "public.kegiatan", "differing", str(kegiatan_id), ("nama",)),
        ("sys_a", "public.opd", "missing", "1.12", ()),
        # The row still has sys_a's values, which its contributions no longer give.
        ("(merge)", "public.opd", "differing", "1.12", ("nama_opd", "sumber")),
        ("(merge)", "public.opd", "differing", "1.05", ("nama_opd",)),
    }, json.dumps(report, indent=1)[:4000]
    barang = next(t for t in report["tables"] if t["target_table"] == "public.barang")
    row = next(r for r in barang["rows"] if r["kind"] == "differing")
    assert row["target"]["nama"] == "ubah tangan" and row["source"]["nama"].startswith("barang 4")

    # --repair: the daemon reads the missing and differing rows again; verify removes the
    # extra one (unchanged since it saw it).
    code, report, stderr = verify(config, "--source", "sys_a", "--repair")
    assert code == 1, stderr
    repairs = {t["target_table"]: t["repair"] for t in report["tables"]}
    assert repairs["public.barang"]["reread"] == 2 and repairs["public.barang"]["removed"] == 1
    assert repairs["public.opd"]["reread"] == 1
    (merged,) = report["merged_rows"]
    assert merged["repair"] == {"recomputed": 2}
    last: list[Any] = []

    def repaired() -> bool:
        last[:] = verify(config)
        return last[0] == 0

    wait_until(
        repaired,
        180,
        message="repaired",
        context=lambda: json.dumps(last[1], indent=1)[:6000] + log(),
    )
    assert sql(target, "SELECT nama FROM barang WHERE id = 99999") == []
    # One request for the source, whatever the number of tables.
    assert sql(src_a, "SELECT count(*) FROM tunggal_signal WHERE type = 'execute-snapshot'") == [
        (1,)
    ]

    # Each run is kept, and the daemon exports the newest.
    runs = sql(
        target,
        "SELECT count(*), max(differing) FROM tunggal_verify_runs "
        "WHERE target_table = 'public.barang'",
    )
    assert runs[0][0] >= 3 and runs[0][1] == 1
    # The daemon reads the runs every 30 s: a read made before the last run shows an older one.
    wait_until(
        lambda: (
            _metric(port, "tunggal_verify_rows", source="sys_a", table="public.barang")
            and _metric(
                port,
                "tunggal_verify_drift_rows",
                source="sys_a",
                table="public.barang",
                kind="missing",
            )
            == 0
        ),
        90,
        message="the newest run exported: tunggal_verify_rows, and no missing rows",
    )
    code, _ = daemon.terminate()
    assert code == 0, log()


def test_bad_input_is_one_line_and_starts_nothing(
    pg: PgCluster, new_db: Any, tmp_path: Path
) -> None:
    env = setup(pg, new_db, tmp_path)
    config, src_a, target = env["config"], env["src_a"], env["target"]
    sql(src_a, "CREATE TABLE tanpa_kunci (id int, v text)")
    sql(target, "CREATE TABLE tanpa_kunci (id int PRIMARY KEY, v text)")
    (tmp_path / "mappings" / "sys_c.yaml").write_text(
        "source: sys_a\ntables:\n  - {from: public.tanpa_kunci, to: tanpa_kunci, key: [id], "
        "columns: {id: id, v: v}}\n"
    )
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    for args, message in (
        (["--source", "sys_aa"], "no source named sys_aa (did you mean sys_a?)"),
        (
            ["--table", "barnag"],
            "no mapping writes target table barnag (did you mean public.barang?)",
        ),
        (["--source", "sys_b", "--table", "barang"], "source sys_b does not write public.barang"),
        (["--table", "tanpa_kunci"], "source table public.tanpa_kunci of sys_a has no primary key"),
    ):
        refused = run_cli("verify", "--config", str(config), *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert message in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr
    # --repair re-reads rows through the signal table: without one, nothing starts.
    connector = tmp_path / "connector-sys_a.yaml"
    with_signal = connector.read_text()
    connector.write_text(with_signal.replace("signal_table: public.tunggal_signal\n", ""))
    refused = run_cli(
        "verify", "--config", str(config), "--source", "sys_a", "--table", "barang", "--repair"
    )
    assert refused.returncode == 2, refused.stderr
    assert "source sys_a has no signal table" in refused.stderr
    assert "CREATE TABLE public.tunggal_signal" in refused.stderr
    connector.write_text(with_signal)
    kind = tmp_path / "connector-sys_b.yaml"
    kind.write_text(kind.read_text().replace("kind: postgresql", "kind: mysql"))
    refused = run_cli("verify", "--config", str(config), "--source", "sys_b")
    assert refused.returncode == 2, refused.stderr
    assert "source sys_b is a mysql database: `tunggal verify` reads PostgreSQL" in refused.stderr
    assert sql(target, "SELECT count(*) FROM tunggal_verify_runs") == [(0,)]


def test_hand_edits_with_the_daemon_stopped(pg: PgCluster, new_db: Any, tmp_path: Path) -> None:
    """No daemon: the target filled by hand as Tunggal would have, then edited. With --wait 0
    verify compares what is there; equal values spelt differently are not drift."""
    env = setup(pg, new_db, tmp_path)
    src_a, target, config = env["src_a"], env["target"], env["config"]
    rows = sql(src_a, "SELECT id, nama, pagu, tgl, diubah, j::text, u, aktif FROM barang")
    with psycopg.connect(target, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO barang VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, 'sys_a', 5, 5)",
                rows,
            )
        # Equal values in other spellings: numeric scale, key order, another time zone.
        conn.execute(
            "UPDATE barang SET pagu = pagu::numeric(14,4), j = jsonb_build_object("
            "'tag', j->'tag', 'n', j->'n'), diubah = diubah AT TIME ZONE 'Asia/Jakarta' "
            "AT TIME ZONE 'Asia/Jakarta' WHERE id <= 10"
        )
        conn.execute("UPDATE barang SET pagu = 0.01 WHERE id = 20")
        conn.execute("DELETE FROM barang WHERE id = 21")
        # A row another source wrote: not sys_a's.
        conn.execute("INSERT INTO kegiatan VALUES (1, 'x', 'x', 2020, 'sys_b', 1, 1)")
    code, report, stderr = verify(config, "--source", "sys_a", "--table", "barang", "--wait", "0")
    assert code == 1, stderr
    assert drifted(report) == {
        ("sys_a", "public.barang", "differing", "20", ("pagu",)),
        ("sys_a", "public.barang", "missing", "21", ()),
    }
    (table,) = report["tables"]
    assert table["source_rows"] == 2000 and table["target_rows"] == 1999

    # kegiatan's row of another source is not sys_a's: sys_a's rows are all missing.
    code, report, _ = verify(config, "--source", "sys_a", "--table", "kegiatan", "--wait", "0")
    (table,) = report["tables"]
    assert table["target_rows"] == 0 and table["missing"] == table["source_rows"] > 300
    assert code == 1
