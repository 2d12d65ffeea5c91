"""Type fidelity from a real MySQL-family server (MariaDB 10.11 behind the tests-only
`mariadb_as_mysql` disguise, see test_mysql_source.py) through Debezium's MySQL connector, the
embedded engine and a real PostgreSQL target: each source type into the target type it belongs
in, at the edges of its range, with `timezone: Asia/Jakarta` on the source."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_mysql_connector
from tunggal.devtools.mariadb import MariaDbServer

pytestmark = pytest.mark.integration

SOURCE_DDL = """CREATE TABLE t (
  id INT PRIMARY KEY, dec65 DECIMAL(65,30), dt DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL,
  d DATE, tm TIME, tm_day TIME, flag TINYINT(1), e ENUM('merah','hijau'), s SET('a','b','c'),
  j JSON, emoji VARCHAR(50) CHARACTER SET utf8mb4, latin VARCHAR(50) CHARACTER SET latin1,
  bl BLOB, b8 BIT(8), b10 BIT(10), b64 BIT(64), b1 BIT(1), y YEAR, ubig BIGINT UNSIGNED,
  dbl DOUBLE, n INT)"""
TARGET_DDL = """CREATE TABLE t (
  id int PRIMARY KEY, dec65 numeric(65,30), dt_wall timestamp(6), dt_tz timestamptz,
  ts timestamptz, d date, tm interval, tm_day time, flag smallint, e text, s text, j jsonb,
  emoji text, latin text, bl bytea, b8 bytea, b10 bit(10), b64 numeric(20,0), b1 boolean,
  y int, ubig numeric(20,0), dbl double precision, n int)"""
MAPPING = """
source: {name}
tables:
  - from: {db}.t
    to: public.t
    key: [id]
    columns:
      id: id
      dec65: dec65
      dt_wall: dt
      dt_tz: dt
      ts: ts
      d: d
      tm: tm
      tm_day: tm_day
      flag: flag
      e: e
      s: s
      j: j
      emoji: emoji
      latin: latin
      bl: bl
      b8: b8
      b10: b10
      b64: b64
      b1: b1
      y: y
      ubig: ubig
      dbl: dbl
      n: n
"""
COLUMNS = [c.split(":")[0].strip() for c in MAPPING.split("columns:")[1].strip().splitlines()]

BIG = "12345678901234567890123456789012345.123456789012345678901234567890"
ROWS = {
    1: (
        f"(1, '{BIG}', '2024-03-01 12:00:00.123456', '2024-03-01 12:00:00.654321', "
        "'2024-02-29', '838:59:59', '13:14:15.5', 1, 'hijau', 'a,c', '{\"k\": [1, 2, null]}', "
        "'halo 👋🏽 dunia', 'café', x'00ff10', b'10100101', b'1010000001', "
        "b'1111111111111111111111111111111111111111111111111111111111111111', b'1', 2024, "
        "18446744073709551615, 1.5e-7, 42)"
    ),
    2: (
        "(2, '-0.000000000000000000000000000001', '1000-01-01 00:00:00', "
        "'1970-01-01 07:00:01', '9999-12-31', '-838:59:59', '00:00:00', 0, 'merah', '', "
        "'[]', '', 'ÿ', x'', b'00000000', b'0000000000', b'0', b'0', 1901, 0, "
        "-1.7976931348623157e308, -2147483648)"
    ),
    3: "(3" + ", NULL" * 21 + ")",
    # TIME outside a day into a `time` column
    4: "(4" + ", NULL" * 5 + ", '-00:00:01'" + ", NULL" * 15 + ")",
}
EXPECTED = {
    1: (
        1,
        Decimal(BIG),
        datetime(2024, 3, 1, 12, 0, 0, 123456),  # DATETIME into timestamp: the wall clock
        datetime(2024, 3, 1, 5, 0, 0, 123456, tzinfo=UTC),  # into timestamptz: 12:00 WIB
        datetime(2024, 3, 1, 5, 0, 0, 654321, tzinfo=UTC),  # TIMESTAMP is an instant already
        date(2024, 2, 29),
        timedelta(hours=838, minutes=59, seconds=59),
        time(13, 14, 15),  # TIME has no fraction: MariaDB dropped the .5
        1,
        "hijau",
        "a,c",
        {"k": [1, 2, None]},
        "halo 👋🏽 dunia",
        "café",
        b"\x00\xff\x10",
        b"\xa5",  # BIT(8) into bytea: its byte, not the text '10100101'
        "1010000001",
        Decimal(2**64 - 1),
        True,
        2024,
        Decimal(2**64 - 1),
        1.5e-7,
        42,
    ),
    2: (
        2,
        Decimal("-0.000000000000000000000000000001"),
        datetime(1000, 1, 1),
        datetime(999, 12, 31, 16, 52, 48, tzinfo=UTC),  # WIB was UTC+07:07:12 in 1000 (LMT)
        datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
        date(9999, 12, 31),
        -timedelta(hours=838, minutes=59, seconds=59),
        time(0),
        0,
        "merah",
        "",
        [],
        "",
        "ÿ",
        b"",
        b"\x00",
        "0000000000",
        Decimal(0),
        False,
        1901,
        Decimal(0),
        -1.7976931348623157e308,
        -2147483648,
    ),
    3: (3, *([None] * 22)),
}


@pytest.fixture
def setup(mariadb_as_mysql: MariaDbServer, new_db: Any, tmp_path: Path) -> dict[str, Any]:
    server = mariadb_as_mysql
    name = f"ty_{uuid.uuid4().hex[:6]}"
    db = server.create_database(f"src_{uuid.uuid4().hex[:8]}")
    server.execute(SOURCE_DDL, database=db)
    target = new_db("target")
    sql(target, TARGET_DDL)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / f"{name}.yaml").write_text(MAPPING.format(name=name, db=db))
    connector = write_mysql_connector(tmp_path, name, server, db, extra="timezone: Asia/Jakarta\n")
    config = write_config(tmp_path, target, {name: str(connector)}, ["mappings/*.yaml"])
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    return {"server": server, "db": db, "target": target, "config": config}


def insert(server: MariaDbServer, db: str, row: str) -> None:
    with server.connect(db, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+07:00'")  # TIMESTAMP literals are read in this zone
        cur.execute(f"INSERT INTO t VALUES {row}")


def test_mysql_types_arrive_exactly(setup: dict[str, Any], daemon_factory: Any) -> None:
    server, db, target, config = (setup[k] for k in ("server", "db", "target", "config"))
    insert(server, db, ROWS[1])  # read by the snapshot
    daemon: Daemon = daemon_factory(config).start()

    def log_tail() -> str:
        return daemon.output()[-4000:]

    def count() -> int:
        return int(sql(target, "SELECT count(*) FROM t")[0][0])

    wait_until(lambda: count() == 1, 90, message="snapshot row", context=log_tail)
    insert(server, db, ROWS[2])  # streamed from the binlog
    insert(server, db, ROWS[3])
    # TIME outside a day into a `time` column: poison naming the column, never wrapped around
    insert(server, db, ROWS[4])
    wait_until(lambda: count() == 3, 60, message="streamed rows", context=log_tail)

    def dead() -> list[tuple[Any, ...]]:
        return sql(target, "SELECT error FROM tunggal_dead_letters")

    wait_until(lambda: len(dead()) == 1, 30, message="TIME -00:00:01 dead-lettered")
    (error,) = dead()[0]
    assert "after.tm_day" in error and "-00:00:01" in error and "interval column" in error
    got = sql(target, f"SELECT {', '.join(COLUMNS)} FROM t ORDER BY id")
    assert len(got) == len(EXPECTED)
    for row, (index, want) in zip(got, EXPECTED.items(), strict=True):
        for column, g, w in zip(COLUMNS, row, want, strict=True):
            assert g == w, f"row {index} {column}: {g!r} != {w!r}"
    assert daemon.alive(), log_tail()


ZERO_DDL = """CREATE TABLE z (
  id INT PRIMARY KEY, dn DATE NULL, dnn DATE NOT NULL, tn DATETIME NULL, tnn DATETIME NOT NULL,
  sn TIMESTAMP NULL DEFAULT NULL, snn TIMESTAMP NOT NULL DEFAULT '2000-01-01 00:00:00')"""
ZERO_TARGET = """CREATE TABLE z (
  id int PRIMARY KEY, dn date, dnn date, tn timestamp, tnn timestamp, sn timestamptz,
  snn timestamptz)"""


def test_zero_dates_land_as_debezium_sends_them(
    mariadb_as_mysql: MariaDbServer, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    """The README's zero-date policy, pinned down: Debezium replaces '0000-00-00' and dates with
    a zero part before Tunggal sees them, with NULL in a nullable column and 1970-01-01 (DATE,
    DATETIME) or the column default (TIMESTAMP) in a NOT NULL one; nothing else is changed and
    nothing is dead-lettered. If Debezium ever sends them differently, this fails and the README
    must change with it."""
    server = mariadb_as_mysql
    name = f"zd_{uuid.uuid4().hex[:6]}"
    db = server.create_database(f"src_{uuid.uuid4().hex[:8]}")
    server.execute(ZERO_DDL, database=db)
    target = new_db("target")
    sql(target, ZERO_TARGET)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / f"{name}.yaml").write_text(
        f"source: {name}\ntables:\n  - from: {db}.z\n    to: public.z\n    key: [id]\n"
        "    columns: {id: id, dn: dn, dnn: dnn, tn: tn, tnn: tnn, sn: sn, snn: snn}\n"
    )
    connector = write_mysql_connector(tmp_path, name, server, db)
    config = write_config(tmp_path, target, {name: str(connector)}, ["mappings/*.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0

    def insert_loose(row: str) -> None:
        with server.connect(db, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute("SET sql_mode = ''")  # what lets a source hold zero dates at all
            cur.execute(f"INSERT INTO z VALUES {row}")

    zero = "'0000-00-00 00:00:00'"
    insert_loose(f"(1, '0000-00-00', '0000-00-00', {zero}, {zero}, {zero}, {zero})")
    daemon: Daemon = daemon_factory(config).start()
    wait_until(
        lambda: len(sql(target, "SELECT 1 FROM z")) == 1,
        90,
        message="snapshot",
        context=lambda: daemon.output()[-4000:],
    )
    insert_loose(f"(2, '0000-00-00', '0000-00-00', {zero}, {zero}, {zero}, {zero})")
    insert_loose(
        "(3, '2024-00-15', '2024-02-00', '2024-00-15 01:00:00', '2024-02-00 00:00:00', NULL, "
        "'2001-01-01 00:00:00')"
    )
    insert_loose(  # real values around them are untouched
        "(4, '1970-01-01', '2024-02-29', '1970-01-01 00:00:00', '2024-02-29 23:59:59', "
        "'2024-02-29 23:59:59', '2024-02-29 23:59:59')"
    )
    wait_until(lambda: len(sql(target, "SELECT 1 FROM z")) == 4, 60, message="streamed")
    epoch, epoch_day = datetime(1970, 1, 1), date(1970, 1, 1)
    default = datetime(2000, 1, 1, tzinfo=UTC)
    wall = datetime(2024, 2, 29, 23, 59, 59)
    assert sql(target, "SELECT id, dn, dnn, tn, tnn, sn, snn FROM z ORDER BY id") == [
        (1, None, epoch_day, None, epoch, None, default),
        (2, None, epoch_day, None, epoch, None, default),
        (3, None, epoch_day, None, epoch, None, datetime(2001, 1, 1, tzinfo=UTC)),
        (
            4,
            epoch_day,
            date(2024, 2, 29),
            epoch,
            wall,
            wall.replace(tzinfo=UTC),
            wall.replace(tzinfo=UTC),
        ),
    ]
    assert sql(target, "SELECT count(*) FROM tunggal_dead_letters") == [(0,)]


def test_time_into_interval_and_time_at_once_is_never_wrapped(
    mariadb_as_mysql: MariaDbServer, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    """One TIME column copied into an interval and a time column: the decoder has no single
    target type, so the sink decides per column. PostgreSQL's own interval-to-time cast would
    turn -00:00:01 into 23:59:59; here a row whose TIME is not a time of day is refused and
    dead-lettered, and the others land."""
    server = mariadb_as_mysql
    name = f"tm_{uuid.uuid4().hex[:6]}"
    db = server.create_database(f"src_{uuid.uuid4().hex[:8]}")
    server.execute("CREATE TABLE w (id INT PRIMARY KEY, tm TIME)", database=db)
    target = new_db("target")
    sql(target, "CREATE TABLE w (id int PRIMARY KEY, tm_iv interval, tm_t time)")
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / f"{name}.yaml").write_text(
        f"source: {name}\ntables:\n  - from: {db}.w\n    to: public.w\n    key: [id]\n"
        "    columns: {id: id, tm_iv: tm, tm_t: tm}\n"
    )
    connector = write_mysql_connector(tmp_path, name, server, db)
    config = write_config(tmp_path, target, {name: str(connector)}, ["mappings/*.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    daemon: Daemon = daemon_factory(config).start()
    wait_until(
        lambda: "ready: reading" in daemon.output(), 60, message="ready", context=daemon.output
    )
    server.execute(
        "INSERT INTO w VALUES (1, '13:14:15'), (2, '-00:00:01'), (3, '838:59:59')", database=db
    )

    def settled() -> bool:
        landed = sql(target, "SELECT count(*) FROM w")[0][0]
        dead = sql(target, "SELECT count(*) FROM tunggal_dead_letters")[0][0]
        return bool(landed + dead >= 3)

    wait_until(settled, 60, message="rows settled", context=lambda: daemon.output()[-4000:])
    assert sql(target, "SELECT id, tm_iv, tm_t FROM w") == [
        (1, timedelta(hours=13, minutes=14, seconds=15), time(13, 14, 15))
    ]
    errors = sql(target, "SELECT error FROM tunggal_dead_letters ORDER BY position")
    assert len(errors) == 2, errors
    assert all("public.w" in e and "time" in e for (e,) in errors), errors
