"""`tunggal replay`: recorded Debezium streams through the same mapping and sink, then exit."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EVENTS, run_cli, sql, write_config
from tunggal.devtools.synth import NARROW_COLUMNS, NARROW_DDL, mixed_workload, narrow_mapping

pytestmark = pytest.mark.integration

# Positions in the captured stream: the TRUNCATE is change LSN 26545240 of the transaction after
# the one that ended at 26542344 (its `sequence`); the snapshot ran at LSN 26541248.
TRUNCATE_POSITION = 26542344 << 64 | 26545240
SNAPSHOT_LSN = 26541248
CAPTURED_T_COLUMNS = [
    "id",
    "n",
    "nv",
    "d",
    "ts",
    "tstz",
    "tm",
    "tmtz",
    "iv",
    "j",
    "js",
    "u",
    "b",
    "arr",
    "tarr",
    "e",
    "bt",
    "vb",
    "f8",
    "f4",
    "big",
    "sm",
    "bo",
    "txt",
    "money_",
    "ch",
    "inet_",
    "xm",
]
CAPTURED_TARGET = """
CREATE TYPE mood AS ENUM ('senang', 'sedih');
CREATE TABLE t (id bigint PRIMARY KEY, n numeric(12,2), nv numeric, d date, ts timestamp,
  tstz timestamptz, tm time, tmtz timetz, iv interval, j jsonb, js json, u uuid, b bytea,
  arr int[], tarr text[], e mood, bt bit(10), vb varbit, f8 float8, f4 real, big bigint,
  sm smallint, bo boolean, txt text, money_ money, ch char(3), inet_ inet, xm xml);
CREATE TABLE k (id int PRIMARY KEY, v text);
"""
CAPTURED_MAPPING = """
source: cap
tables:
  - from: public.t
    to: public.t
    key: [id]
    columns: {COLUMNS}
  - from: public.k
    to: public.k
    key: [id]
    truncate: delete_source_rows
    columns: {id: id, v: v}
""".replace("{COLUMNS}", "{" + ", ".join(f"{c}: {c}" for c in CAPTURED_T_COLUMNS) + "}")


def _setup(tmp_path: Path, target: str, mapping: str, ddl: str) -> Path:
    sql(target, ddl)
    (tmp_path / "m.yaml").write_text(mapping)
    config = write_config(tmp_path, target, {}, ["m.yaml"])
    result = run_cli("schema", "--apply", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return config


def _all(dsn: str, table: str) -> list[tuple[Any, ...]]:
    return sql(dsn, f"SELECT * FROM {table} ORDER BY 1")


def test_recorded_stream_leaves_target_equal_and_prefix_replay_changes_nothing(
    new_db: Any, tmp_path: Path
) -> None:
    target = new_db("replay")
    config = _setup(tmp_path, target, narrow_mapping(), NARROW_DDL.format(name="kegiatan"))
    work = mixed_workload(6000, seed=3)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(work.lines) + b"\n")

    result = run_cli("replay", "--config", str(config), "--source", "bench", str(events))
    assert result.returncode == 0, result.stderr
    assert f"replayed {len(work.lines)} events" in result.stdout
    columns = ", ".join(NARROW_COLUMNS)
    assert sql(target, f"SELECT {columns} FROM kegiatan ORDER BY id") == [
        work.final[k] for k in sorted(work.final)
    ]
    assert work.counts["d"] > 0 and work.counts["u"] > 0

    before = _all(target, "kegiatan")
    for cut in (len(work.lines) // 3, len(work.lines)):
        prefix = tmp_path / f"prefix-{cut}.jsonl"
        prefix.write_bytes(b"\n".join(work.lines[:cut]) + b"\n")
        again = run_cli("replay", "--config", str(config), "--source", "bench", str(prefix))
        assert again.returncode == 0, again.stderr
        # Older inserts must not resurrect deleted rows, older updates must not win.
        assert _all(target, "kegiatan") == before


@pytest.mark.parametrize("fixture", ["pg_alltypes_schemas", "pg_alltypes_schemaless"])
def test_captured_debezium_stream_every_type(new_db: Any, tmp_path: Path, fixture: str) -> None:
    target = new_db("captured")
    config = _setup(tmp_path, target, CAPTURED_MAPPING, CAPTURED_TARGET)
    result = run_cli(
        "replay", "--config", str(config), "--source", "cap", str(EVENTS / f"{fixture}.jsonl")
    )
    assert result.returncode == 0, result.stderr
    assert "0 dead-lettered" in result.stdout
    got = sql(
        target,
        "SELECT " + ", ".join(f"{c}::text" for c in CAPTURED_T_COLUMNS) + " FROM t ORDER BY id",
    )
    assert got == [
        (
            "1",
            "1.50",
            "1.000000001",
            "2024-02-29",
            "2024-01-02 03:04:05.123456",
            "2024-01-01 20:04:05.123456+00",
            "13:14:15.5",
            "06:14:15+00",
            "32 days 13:34:05.5",  # recorded with interval.handling.mode=numeric
            '{"a": [1, 2, {"b": null}]}',
            '{"x":1}',
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "\\xdeadbeef",
            "{1,2,3}",
            '{a,"b c"}',
            "senang",
            "1010000001",
            "101",
            "1e-07",
            "3.5",
            "9007199254740993",
            "7",
            "true",
            "x",
            "$12.34",
            "ab",  # char(3)::text drops the padding
            "10.0.0.1/32",
            "<a/>",
        )
    ]
    # The key change (1 -> 2) happened, then TRUNCATE emptied this source's rows of k.
    assert sql(target, "SELECT count(*) FROM k") == [(0,)]
    # The TRUNCATE leaves a watermark; the end of the snapshot removes rows but leaves none.
    assert sql(
        target,
        "SELECT target_table, position FROM tunggal_truncations WHERE source = 'cap' ORDER BY 1",
    ) == [("public.k", TRUNCATE_POSITION)]
    progress = sql(target, "SELECT position, events_applied, snapshot_epoch FROM tunggal_progress")
    # 12 lines: 10 change events and 2 tombstones; the last change is the TRUNCATE. The snapshot
    # at LSN 26541248 started the epoch that the first transaction after it was placed in.
    assert progress == [(TRUNCATE_POSITION, 10, SNAPSHOT_LSN)]


def test_poison_lines_are_dead_lettered_and_good_rows_land(new_db: Any, tmp_path: Path) -> None:
    target = new_db("poison")
    config = _setup(tmp_path, target, narrow_mapping(), NARROW_DDL.format(name="kegiatan"))
    work = mixed_workload(300, seed=5)
    lines = list(work.lines)
    lines.insert(10, b"this is not json")
    lines.insert(20, b'{"destination": "bench.public.kegiatan", "key": "{}", "value": "[1,2]"}')
    lines.insert(
        30,
        b'{"destination": "bench.public.kegiatan", "key": null, '
        b'"value": {"op": "c", "after": {"id": 1}}}',
    )
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    result = run_cli("replay", "--config", str(config), "--source", "bench", str(events))
    assert result.returncode == 0, result.stderr
    assert "3 dead-lettered" in result.stdout
    columns = ", ".join(NARROW_COLUMNS)
    assert sql(target, f"SELECT {columns} FROM kegiatan ORDER BY id") == [
        work.final[k] for k in sorted(work.final)
    ]
    letters = sql(
        target, "SELECT error_class, error, raw_value FROM tunggal_dead_letters ORDER BY id"
    )
    assert [c for c, _, _ in letters] == ["DecodeError"] * 3
    assert letters[0][2] == "this is not json"
    assert all(error for _, error, _ in letters)


def test_row_rejected_by_target_is_isolated(new_db: Any, tmp_path: Path) -> None:
    target = new_db("reject")
    ddl = NARROW_DDL.format(name="kegiatan") + ";ALTER TABLE kegiatan ADD CHECK (pagu < 80000000)"
    config = _setup(tmp_path, target, narrow_mapping(), ddl)
    work = mixed_workload(200, seed=9)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(work.lines) + b"\n")
    result = run_cli("replay", "--config", str(config), "--source", "bench", str(events))
    assert result.returncode == 0, result.stderr
    bad = {k for k, row in work.final.items() if row[4] >= Decimal(80000000)}
    assert bad, "the workload should contain rows the CHECK rejects"
    got = {r[0] for r in sql(target, "SELECT id FROM kegiatan")}
    assert got == set(work.final) - bad
    letters = sql(target, "SELECT count(*), min(error) FROM tunggal_dead_letters")
    assert letters[0][0] >= len(bad)
    assert "kegiatan_pagu_check" in letters[0][1]


def test_broken_mapping_is_refused_with_file_and_line(new_db: Any, tmp_path: Path) -> None:
    target = new_db("broken")
    sql(target, NARROW_DDL.format(name="kegiatan"))
    broken = narrow_mapping().replace("key: [id]", "keys: [id]")
    (tmp_path / "m.yaml").write_text(broken)
    result = run_cli("validate", str(tmp_path / "m.yaml"))
    assert result.returncode == 2
    assert f"{tmp_path / 'm.yaml'}:5" in result.stderr
    assert "unknown key `keys`" in result.stderr and "did you mean `key`" in result.stderr
    assert "Traceback" not in result.stderr
    config = write_config(tmp_path, target, {}, ["m.yaml"])
    events = tmp_path / "e.jsonl"
    events.write_bytes(b"\n".join(mixed_workload(10).lines))
    refused = run_cli("replay", "--config", str(config), "--source", "bench", str(events))
    assert refused.returncode == 2 and "did you mean `key`" in refused.stderr
    assert sql(target, "SELECT count(*) FROM kegiatan") == [(0,)]
