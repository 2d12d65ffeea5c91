"""The embedded default end to end: real PostgreSQL sources and target, real Debezium in-process,
driven through the `tunggal` CLI in subprocesses (JPype starts one JVM per process)."""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import (
    Daemon,
    run_cli,
    sql,
    wait_until,
    write_config,
    write_connector,
)
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

TYPES_DDL = """
CREATE TYPE mood AS ENUM ('senang', 'sedih');
CREATE TABLE {name} (
  id bigint PRIMARY KEY, n numeric(12,2), nv numeric, d date, ts timestamp, tstz timestamptz,
  tm time, iv interval, j jsonb, u uuid, b bytea, arr int[], tarr text[], e mood,
  f8 float8, big bigint, bo boolean, txt text, doc text);
"""
TYPE_COLUMNS = [
    "id",
    "n",
    "nv",
    "d",
    "ts",
    "tstz",
    "tm",
    "iv",
    "j",
    "u",
    "b",
    "arr",
    "tarr",
    "e",
    "f8",
    "big",
    "bo",
    "txt",
    "doc",
]

SOURCE_A = (
    TYPES_DDL.format(name="barang")
    + """
CREATE TABLE kv (id int PRIMARY KEY, v text);
CREATE TABLE opd (kode text PRIMARY KEY, nama text NOT NULL);
"""
)
SOURCE_B = "CREATE TABLE ref_opd (kd_opd text PRIMARY KEY, nm_opd text NOT NULL);"

TARGET = (
    TYPES_DDL.format(name="barang")
    + """
CREATE TABLE kv (id int PRIMARY KEY, v text);
CREATE TABLE opd (kode_opd text PRIMARY KEY, nama_opd text NOT NULL, sumber text);
"""
)

TYPE_COLUMNS_YAML = ", ".join(f"{c}: {c}" for c in TYPE_COLUMNS)
MAPPING_A = (
    """
source: sys_a
tables:
  - from: public.barang
    to: public.barang
    key: [id]
    columns: {TYPE_COLUMNS}
  - from: public.kv
    to: public.kv
    key: [id]
    truncate: delete_source_rows
    columns: {id: id, v: v}
  - from: public.opd
    to: public.opd
    key: [kode_opd]
    columns:
      kode_opd: kode
      nama_opd: {from: nama, transform: [trim, upper]}
      sumber: {const: sys_a}
"""
).replace("{TYPE_COLUMNS}", "{" + TYPE_COLUMNS_YAML + "}")

MAPPING_B = """
source: sys_b
tables:
  - from: public.ref_opd
    to: public.opd
    key: [kode_opd]
    columns:
      kode_opd: kd_opd
      nama_opd: {from: nm_opd, transform: [trim, upper]}
      sumber: {const: sys_b}
"""

ROW1 = """INSERT INTO barang VALUES (1, 12345.67, 1.000000001, '2024-02-29',
  '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456+07', '13:14:15.5',
  '1 mon 2 days 03:04:05.5', '{"a": [1, 2, {"b": null}]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '\\xdeadbeef', '{1,2,3}', '{"a","b c"}', 'senang', 1.0e-7, 9007199254740993, true, 'héllo',
  NULL)"""


def rows(dsn: str, table: str, columns: list[str], key: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(columns)
    return sql(dsn, f"SELECT {cols} FROM {table} ORDER BY {key}")


def _diff(target: str, source: str) -> str:
    got = dict(rows(target, "kv", ["id", "v"], "id"))
    want = dict(rows(source, "kv", ["id", "v"], "id"))
    wrong = {
        k: (got.get(k), want.get(k)) for k in got.keys() | want.keys() if got.get(k) != want.get(k)
    }
    return f"{len(wrong)} rows differ (target, source): {dict(list(wrong.items())[:10])}"


def big_text(seed: int) -> str:
    # Random hex does not compress well, so PostgreSQL stores it out of line (TOAST).
    rnd = random.Random(seed)
    return "".join(f"{rnd.getrandbits(64):016x}" for _ in range(8000))


@pytest.fixture
def setup(pg: PgCluster, new_db: Any, tmp_path: Path) -> dict[str, Any]:
    src_a, src_b, target = new_db("src_a"), new_db("src_b"), new_db("target")
    sql(src_a, SOURCE_A)
    sql(src_b, SOURCE_B)
    sql(target, TARGET)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "sys_a.yaml").write_text(MAPPING_A)
    (tmp_path / "mappings" / "sys_b.yaml").write_text(MAPPING_B)
    conn_a = write_connector(tmp_path, "sys_a", pg.port, src_a.rsplit("/", 1)[1])
    conn_b = write_connector(tmp_path, "sys_b", pg.port, src_b.rsplit("/", 1)[1])
    config = write_config(
        tmp_path, target, {"sys_a": str(conn_a), "sys_b": str(conn_b)}, ["mappings/*.yaml"]
    )
    return {"src_a": src_a, "src_b": src_b, "target": target, "config": config}


def test_run_refuses_target_without_bookkeeping(setup: dict[str, Any]) -> None:
    result = run_cli("run", "--config", str(setup["config"]), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "sys_a.yaml:5: tables[0].to: public.barang lacks tunggal's bookkeeping" in result.stderr
    assert "run `tunggal schema --apply` to add them" in result.stderr
    assert "Traceback" not in result.stderr


def test_embedded_end_to_end(setup: dict[str, Any], daemon_factory: Any) -> None:
    src_a, src_b, target, config = (setup[k] for k in ("src_a", "src_b", "target", "config"))
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr

    # Snapshot data, present before the daemon first starts.
    sql(src_a, ROW1)
    sql(src_a, "INSERT INTO barang (id, j) VALUES (2, 'null')")
    sql(src_a, "INSERT INTO barang (id, txt, doc) VALUES (3, 'toast', %s)", (big_text(3),))
    sql(src_a, "INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 50) g")
    sql(src_a, "INSERT INTO opd VALUES ('1.01', ' dinas pendidikan ')")
    sql(src_b, "INSERT INTO ref_opd VALUES ('1.02', 'dinas kesehatan')")

    daemon: Daemon = daemon_factory(config).start()

    def log_tail() -> str:
        return daemon.output()[-4000:]

    wait_until(
        lambda: sql(target, "SELECT count(*) FROM kv")[0][0] == 50,
        90,
        message="snapshot of kv",
        context=log_tail,
    )
    wait_until(
        lambda: len(sql(target, "SELECT 1 FROM barang")) == 3,
        30,
        message="barang rows",
        context=log_tail,
    )

    # Every type arrives exactly, including jsonb 'null' (not SQL NULL).
    assert rows(target, "barang", TYPE_COLUMNS, "id") == rows(src_a, "barang", TYPE_COLUMNS, "id")
    assert sql(target, "SELECT j::text, j IS NULL FROM barang WHERE id = 2") == [("null", False)]
    assert sql(target, "SELECT _tunggal_source FROM barang WHERE id = 1") == [("sys_a",)]
    # Two sources write one table, each with its transforms.
    wait_until(
        lambda: len(sql(target, "SELECT 1 FROM opd")) == 2, 30, message="opd rows", context=log_tail
    )
    assert sql(target, "SELECT kode_opd, nama_opd, sumber FROM opd ORDER BY 1") == [
        ("1.01", "DINAS PENDIDIKAN", "sys_a"),
        ("1.02", "DINAS KESEHATAN", "sys_b"),
    ]

    # Streaming: update, TOAST-unchanged update, key change, delete, insert, truncate.
    sql(src_a, "UPDATE barang SET n = 1.5, txt = 'diubah' WHERE id = 1")
    sql(src_a, "UPDATE barang SET txt = 'toast diubah' WHERE id = 3")  # doc unchanged (TOAST)
    sql(src_a, "UPDATE kv SET id = 1000 WHERE id = 1")
    sql(src_a, "DELETE FROM kv WHERE id = 2")
    sql(src_a, "DELETE FROM barang WHERE id = 2")
    sql(src_a, "INSERT INTO kv VALUES (51, 'baru')")
    sql(src_b, "UPDATE ref_opd SET nm_opd = 'Dinas Kesehatan Kota' WHERE kd_opd = '1.02'")
    wait_until(
        lambda: (
            rows(target, "barang", TYPE_COLUMNS, "id") == rows(src_a, "barang", TYPE_COLUMNS, "id")
        ),
        30,
        message="barang streamed",
    )
    assert sql(target, "SELECT doc = %s FROM barang WHERE id = 3", (big_text(3),)) == [(True,)]
    wait_until(
        lambda: rows(target, "kv", ["id", "v"], "id") == rows(src_a, "kv", ["id", "v"], "id"),
        30,
        message="kv streamed",
        context=log_tail,
    )
    wait_until(
        lambda: (
            sql(target, "SELECT nama_opd FROM opd WHERE kode_opd = '1.02'")
            == [("DINAS KESEHATAN KOTA",)]
        ),
        30,
        message="opd update from sys_b",
    )

    # The first-cut metrics and health endpoints of the running daemon.
    port = int(re.search(r"port: (\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/healthz") as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"{base}/readyz") as resp:
        assert resp.status == 200
    metrics = urllib.request.urlopen(f"{base}/metrics").read().decode()
    applied = re.search(
        r'tunggal_events_total\{op="u",outcome="applied",source="sys_a",table="public.barang"\} '
        r"(\S+)",
        metrics,
    )
    assert applied and float(applied.group(1)) >= 2, metrics[:2000]
    assert 'tunggal_rows_applied_total{action="upsert",table="public.kv"}' in metrics
    assert re.search(r'tunggal_source_lag_seconds\{source="sys_b"\} \d', metrics)
    assert re.search(r"tunggal_batch_apply_seconds_count [1-9]", metrics)
    assert 'tunggal_source_up{source="sys_a"} 1.0' in metrics
    status = json.loads(urllib.request.urlopen(f"{base}/status").read())
    assert {s["name"]: s["state"] for s in status["sources"]} == {
        "sys_a": "streaming",
        "sys_b": "streaming",
    }

    sql(src_a, "TRUNCATE kv")
    wait_until(
        lambda: sql(target, "SELECT count(*) FROM kv")[0][0] == 0,
        30,
        message="truncate applied",
        context=log_tail,
    )

    # Graceful stop under SIGTERM: flush, commit, exit 0 quickly.
    code, took = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]
    assert took < 10, f"SIGTERM took {took:.1f}s"

    # Changes while stopped arrive after a restart; nothing lost, nothing doubled.
    sql(src_a, "INSERT INTO kv SELECT g, 'lagi' || g FROM generate_series(1, 20) g")
    sql(src_a, "UPDATE barang SET big = big + 1 WHERE id = 1")
    daemon = daemon_factory(config).start()
    wait_until(
        lambda: rows(target, "kv", ["id", "v"], "id") == rows(src_a, "kv", ["id", "v"], "id"),
        60,
        message="changes made while stopped",
        context=log_tail,
    )
    wait_until(
        lambda: (
            rows(target, "barang", TYPE_COLUMNS, "id") == rows(src_a, "barang", TYPE_COLUMNS, "id")
        ),
        30,
        message="barang after restart",
    )

    # kill -9 in the middle of a stream, then restart: the target equals the source.
    stop = threading.Event()

    def write_stream() -> None:
        rnd = random.Random(7)
        with psycopg.connect(src_a, autocommit=True) as conn:
            i = 0
            while not stop.is_set() and i < 20_000:
                i += 1
                time.sleep(0.001)  # keep writing past the kill, at a pace the test can bound
                k = rnd.randint(1, 400)
                action = rnd.random()
                if action < 0.6:
                    conn.execute(
                        "INSERT INTO kv VALUES (%s, %s) ON CONFLICT (id) DO UPDATE "
                        "SET v = EXCLUDED.v",
                        (k, f"w{i}"),
                    )
                elif action < 0.8:
                    conn.execute("DELETE FROM kv WHERE id = %s", (k,))
                else:
                    conn.execute(
                        "UPDATE kv SET id = %s WHERE id = %s AND NOT EXISTS "
                        "(SELECT 1 FROM kv WHERE id = %s)",
                        (k + 1000, k, k + 1000),
                    )

    writer = threading.Thread(target=write_stream)
    writer.start()
    time.sleep(2.0)
    daemon.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    daemon.kill()
    time.sleep(1.0)  # changes made while the daemon is dead must arrive after the restart
    stop.set()
    writer.join(timeout=60)
    daemon = daemon_factory(config).start().wait_ready()
    wait_until(
        lambda: rows(target, "kv", ["id", "v"], "id") == rows(src_a, "kv", ["id", "v"], "id"),
        120,
        message="target equal to source after kill -9",
        context=lambda: _diff(target, src_a) + "\n" + daemon.output()[-4000:],
    )
    code, _ = daemon.terminate()
    assert code == 0, daemon.output()[-3000:]


def test_bad_source_dsn_is_a_clear_error(pg: PgCluster, new_db: Any, tmp_path: Path) -> None:
    target = new_db("target")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    (tmp_path / "m.yaml").write_text(
        "source: sys_x\ntables:\n  - from: public.kv\n    to: public.kv\n    key: [id]\n"
        "    columns: {id: id, v: v}\n"
    )
    connector = write_connector(tmp_path, "sys_x", pg.port, "no_such_database")
    config = write_config(tmp_path, target, {"sys_x": str(connector)}, ["m.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    result = run_cli("run", "--config", str(config), timeout=120)
    # Found by the source check before Debezium starts (tests/integration/test_source_check.py):
    # a mistake in the connector file, not an outage.
    assert result.returncode == 2
    assert "source 'sys_x'" in result.stderr and str(connector) in result.stderr
    assert "no_such_database" in result.stderr.strip().splitlines()[-1], result.stderr[-1500:]


def test_replication_slot_in_use_is_a_clear_error(
    pg: PgCluster, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    source, target = new_db("src"), new_db("target")
    sql(source, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    (tmp_path / "m.yaml").write_text(
        "source: sys_s\ntables:\n  - from: public.kv\n    to: public.kv\n    key: [id]\n"
        "    columns: {id: id, v: v}\n"
    )
    connector = write_connector(tmp_path, "sys_s", pg.port, source.rsplit("/", 1)[1])
    first = write_config(tmp_path, target, {"sys_s": str(connector)}, ["m.yaml"])
    assert run_cli("schema", "--apply", "--config", str(first)).returncode == 0
    daemon = daemon_factory(first).start()
    sql(source, "INSERT INTO kv VALUES (1, 'satu')")
    wait_until(lambda: sql(target, "SELECT v FROM kv") == [("satu",)], 90, message="first run")
    # A second daemon (own state and port) on the same source finds the slot taken.
    other = tmp_path / "other"
    other.mkdir()
    impatient = other / "connector.yaml"
    impatient.write_text(
        connector.read_text() + "  slot.max.retries: '1'\n  slot.retry.delay.ms: '500'\n"
        "  errors.max.retries: '1'\n"
    )
    second = write_config(other, target, {"sys_s": str(impatient)}, [str(tmp_path / "m.yaml")])
    result = run_cli("run", "--config", str(second), timeout=180)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "source sys_s" in result.stderr
    final = result.stderr.strip().splitlines()[-1]
    assert final.startswith("error: source sys_s: replication slot tunggal_sys_s"), final
    assert "in use by another reader" in final and "slot.name" in final, final
    assert "Traceback" not in result.stderr and "\tat " not in result.stderr
    assert daemon.alive()
