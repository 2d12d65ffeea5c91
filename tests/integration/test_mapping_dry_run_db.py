"""`tunggal mapping test --db`: schemaless events decoded with the target's column types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EVENTS, run_cli, sql, write_config
from tests.unit.test_mapping_tools import CAPTURED

pytestmark = pytest.mark.integration

TARGET = """
CREATE TABLE t (id bigint PRIMARY KEY, n numeric(12,2), d date, txt text);
CREATE TABLE k (id int PRIMARY KEY, v text);
"""


def test_target_types_decode_schemaless_events_and_nothing_is_written(
    new_db: Any, tmp_path: Path
) -> None:
    target = new_db("dryrun")
    sql(target, TARGET)
    (tmp_path / "cap.yaml").write_text(CAPTURED)
    config = write_config(tmp_path, target, {}, ["cap.yaml"])
    events = str(EVENTS / "pg_alltypes_schemaless.jsonl")

    result = run_cli(
        "mapping", "test", "--db", "--config", str(config), "--source", "cap", "--json", events
    )
    assert result.returncode == 0, result.stderr
    by_line = {r["line"]: r for r in map(json.loads, result.stdout.splitlines())}
    row = by_line[2]
    assert row["outcome"] == "mapped", row
    assert row["ops"][0]["values"] == {
        "id": 1,
        "n": "12345.67",
        "d": "2024-02-29",  # days since 1970 in the event, a date in the target
        "txt": "HÉLLO",
    }
    assert "needs target types" not in result.stderr
    assert sql(target, "SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM k)") == [(0,)]

    without = run_cli("mapping", "test", "--config", str(config), "--source", "cap", events)
    assert without.returncode == 0, without.stderr
    assert "9 needs target types" in without.stderr

    files_and_db = run_cli(
        "mapping", "test", "--db", "--source", "cap", str(tmp_path / "cap.yaml"), events
    )
    assert files_and_db.returncode == 1
    assert "--db needs --config" in files_and_db.stderr
