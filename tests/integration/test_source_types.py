"""Exact types from a real PostgreSQL source through the real embedded Debezium: a `timestamp`
column read in the source's `timezone:`, bit(n)/varbit into bit, varbit and bytea columns, and
an interval connector set to the numeric form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_connector
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

SOURCE = """
CREATE TABLE jadwal (
  id int PRIMARY KEY, ts timestamp, b1 bit(1), b8 bit(8), b10 bit(10), vb varbit(20),
  iv interval);
"""
TARGET = """
CREATE TABLE jadwal (
  id int PRIMARY KEY, ts_tz timestamptz, ts_wall timestamp, ts_cel timestamptz,
  b1 bit(1), b1_bytes bytea, b8 bit(8), b8_bytes bytea, b10_bytes bytea, vb varbit(20),
  iv interval);
"""
MAPPING = """
source: wib
tables:
  - from: public.jadwal
    to: public.jadwal
    key: [id]
    columns:
      id: id
      ts_tz: ts      # one source column into timestamptz and timestamp: each gets its due
      ts_wall: ts
      ts_cel: {expr: 'row.ts + duration("1h")'}
      b1: b1
      b1_bytes: b1   # into bit(1) and bytea at once: each gets the bits
      b8: b8
      b8_bytes: b8
      b10_bytes: b10
      vb: vb
      iv: iv
"""
ROWS = [
    "(1, '2024-03-01 12:00:00.123456', B'1', B'10100101', B'1010000001', B'0011', "
    "'1 mon 2 days 03:04:05.5')",
    "(2, '2024-12-31 23:30:00', B'0', B'00000001', B'0000000000', B'1', '-838:59:59')",
]


@pytest.fixture
def setup(pg: PgCluster, new_db: Any, tmp_path: Path) -> dict[str, Any]:
    src, target = new_db("src_types"), new_db("target_types")
    sql(src, SOURCE)
    sql(target, TARGET)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "wib.yaml").write_text(MAPPING)
    conn = write_connector(tmp_path, "wib", pg.port, src.rsplit("/", 1)[1])
    # Asia/Jakarta (UTC+7, no DST) and the numeric interval form, which Tunggal's connectors do
    # not ask for by default.
    conn.write_text(
        conn.read_text() + "  interval.handling.mode: numeric\ntimezone: Asia/Jakarta\n"
    )
    config = write_config(tmp_path, target, {"wib": str(conn)}, ["mappings/*.yaml"])
    return {"src": src, "target": target, "config": config}


def test_timezone_bits_and_numeric_intervals(setup: dict[str, Any], daemon_factory: Any) -> None:
    src, target, config = setup["src"], setup["target"], setup["config"]
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    sql(src, f"INSERT INTO jadwal VALUES {ROWS[0]}")  # snapshot
    daemon: Daemon = daemon_factory(config).start()
    wait_until(
        lambda: len(sql(target, "SELECT 1 FROM jadwal")) == 1,
        90,
        message="snapshot row",
        context=lambda: daemon.output()[-4000:],
    )
    sql(src, f"INSERT INTO jadwal VALUES {ROWS[1]}")  # streamed
    wait_until(
        lambda: len(sql(target, "SELECT 1 FROM jadwal")) == 2,
        30,
        message="streamed row",
        context=lambda: daemon.output()[-4000:],
    )
    got = sql(
        target,
        "SELECT id, ts_tz, ts_wall, ts_cel, b1::text, b1_bytes, b8::text, b8_bytes, b10_bytes, "
        "vb::text, iv FROM jadwal ORDER BY id",
    )
    assert got[0][:4] == (
        1,
        datetime(2024, 3, 1, 5, 0, 0, 123456, tzinfo=UTC),  # 12:00 WIB
        datetime(2024, 3, 1, 12, 0, 0, 123456),  # the wall clock, unchanged
        datetime(2024, 3, 1, 6, 0, 0, 123456, tzinfo=UTC),  # CEL: the instant, plus an hour
    )
    assert got[1][:4] == (
        2,
        datetime(2024, 12, 31, 16, 30, tzinfo=UTC),
        datetime(2024, 12, 31, 23, 30),
        datetime(2024, 12, 31, 17, 30, tzinfo=UTC),
    )
    # bits: as bit strings into bit/varbit, as the number's bytes into bytea (not '10100101')
    assert got[0][4:9] == ("1", b"\x01", "10100101", b"\xa5", b"\x02\x81")
    assert got[1][4:9] == ("0", b"\x00", "00000001", b"\x01", b"\x00\x00")
    # varbit: Debezium sends the bits but not how many there were, so the value comes padded
    # to the declared length (the README's pitfall; the number is kept)
    assert (got[0][9], got[1][9]) == ("0" * 16 + "0011", "0" * 19 + "1")
    # numeric intervals decode; Debezium counted the month as 30.4375 days, so it is no longer
    # a calendar month (the README says: the ISO-8601 string form, Tunggal's default, is exact)
    month = timedelta(days=30.4375)
    assert got[0][10] == month + timedelta(days=2, hours=3, minutes=4, seconds=5.5)
    assert got[1][10] == -timedelta(hours=838, minutes=59, seconds=59)
    assert "poison" not in daemon.output()


def test_unknown_timezone_stops_run_with_one_line(
    pg: PgCluster, new_db: Any, tmp_path: Path
) -> None:
    target = new_db("target_tz")
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "wib.yaml").write_text(MAPPING)
    conn = write_connector(tmp_path, "wib", pg.port, "nowhere")
    conn.write_text(conn.read_text() + "timezone: Asia/Jakata\n")
    config = write_config(tmp_path, target, {"wib": str(conn)}, ["mappings/*.yaml"])
    result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode != 0
    assert (
        f"{conn}:11: timezone: unknown time zone 'Asia/Jakata': give an IANA name such as "
        "Asia/Jakarta"
    ) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr
