"""Many sources, one row: `tunggal replay` of two sources into one target table, against a real
PostgreSQL. The target must not depend on the order the sources' changes arrive in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import run_cli, sql, write_config
from tunggal.devtools.synth import change_line

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, in µs

TARGET_DDL = """CREATE TABLE opd (kode text PRIMARY KEY, nama text, alamat text, singkatan text,
  sumber_data text)"""
# A maps nama, alamat; B maps nama, singkatan; both a constant sumber_data (the case).
MAPPING_A = """source: a
tables:
  - from: public.unit
    to: opd
    key: [kode]
    columns: {kode: id, nama: nama, alamat: alamat, sumber_data: {const: A}}
"""
MAPPING_B = """source: b
tables:
  - from: public.unit
    to: opd
    key: [kode]
    columns: {kode: id, nama: nama, singkatan: singkatan, sumber_data: {const: B}}
"""


def _line(
    source: str, op: str, lsn: int, t: int, row: dict[str, Any] | None, key: str = "1"
) -> bytes:
    """One Debezium change of `public.unit` committed at T0 + t seconds."""
    before = {"id": key} if op == "d" else None
    return change_line(op, before, row, lsn, T0 + t * 1_000_000, source, "public.unit")


def _setup(tmp_path: Path, target: str, *mappings: str) -> Path:
    sql(target, TARGET_DDL)
    names = []
    for i, text in enumerate(mappings):
        (tmp_path / f"m{i}.yaml").write_text(text)
        names.append(f"m{i}.yaml")
    config = write_config(tmp_path, target, {}, names)
    result = run_cli("schema", "--apply", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return config


def _replay(config: Path, source: str, lines: list[bytes], name: str) -> None:
    path = config.parent / f"{name}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = run_cli("replay", "--config", str(config), "--source", source, str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    return sql(dsn, "SELECT kode, nama, alamat, singkatan, sumber_data FROM opd ORDER BY kode")


A_EVENTS = [
    _line("a", "c", 1000, 100, {"id": "1", "nama": "Dinas A", "alamat": "Jl. Pahlawan 1"}),
    _line("a", "u", 1100, 150, {"id": "1", "nama": "Dinas A2", "alamat": "Jl. Pahlawan 2"}),
]
B_EVENTS = [_line("b", "c", 5000, 200, {"id": "1", "nama": "DINAS B", "singkatan": "DB"})]
B_DELETE = [_line("b", "d", 5100, 250, None)]


def test_two_sources_give_one_target_whatever_the_arrival_order(
    new_db: Any, tmp_path: Path
) -> None:
    results = []
    for order in (("b", "a"), ("a", "b")):
        target = new_db("merge")
        work = tmp_path / "".join(order)
        work.mkdir()
        config = _setup(work, target, MAPPING_A, MAPPING_B)
        for source in order:
            _replay(config, source, A_EVENTS if source == "a" else B_EVENTS, source)
        results.append(_rows(target))
        # Replaying a source's history again changes nothing.
        _replay(config, "a", A_EVENTS, "again")
        assert _rows(target) == results[-1]
    # `alamat` only A gives; the rest is B's, whose change committed last (t=200 > 150).
    assert results[0] == results[1] == [("1", "DINAS B", "Jl. Pahlawan 2", "DB", "B")]


def test_a_delete_withdraws_only_its_own_source(new_db: Any, tmp_path: Path) -> None:
    target = new_db("merge")
    config = _setup(tmp_path, target, MAPPING_A, MAPPING_B)
    _replay(config, "b", B_EVENTS, "b")
    _replay(config, "a", A_EVENTS, "a")
    _replay(config, "b", B_DELETE, "b-delete")
    # A still holds the row: its values come back, and B's singkatan goes with B.
    assert _rows(target) == [("1", "Dinas A2", "Jl. Pahlawan 2", None, "A")]
    # An older event of B replayed after its delete does not bring B's values back.
    _replay(config, "b", B_EVENTS, "b-again")
    assert _rows(target) == [("1", "Dinas A2", "Jl. Pahlawan 2", None, "A")]
    contributions = sql(
        target,
        "SELECT _tunggal_source, _tunggal_state FROM tunggal_contributions.public__opd ORDER BY 1",
    )
    assert contributions == [("a", "live"), ("b", "hard")]
    # When the last holder deletes it, the row goes.
    _replay(config, "a", [_line("a", "d", 1200, 300, None)], "a-delete")
    assert _rows(target) == []


RULES = """    merge:
      default: {priority: [a, b]}
      columns:
        singkatan: {owner: b}
        sumber_data: latest
      deleted_by: [a]
"""


def test_rules_priority_owner_latest_and_deleted_by(new_db: Any, tmp_path: Path) -> None:
    target = new_db("merge")
    config = _setup(tmp_path, target, MAPPING_A + RULES, MAPPING_B)
    _replay(config, "b", B_EVENTS, "b")
    _replay(config, "a", A_EVENTS, "a")
    # nama by priority: A first; sumber_data latest: B (t=200); singkatan owned by B.
    assert _rows(target) == [("1", "Dinas A2", "Jl. Pahlawan 2", "DB", "B")]
    # A's NULL nama lets B fill the gap.
    _replay(
        config,
        "a",
        [_line("a", "u", 1150, 160, {"id": "1", "nama": None, "alamat": None})],
        "a-null",
    )
    assert _rows(target) == [("1", "DINAS B", None, "DB", "B")]
    # A's delete removes the row for every source (deleted_by), though B still holds it.
    _replay(config, "a", [_line("a", "d", 1200, 300, None)], "a-delete")
    assert _rows(target) == []


def test_changed_rules_recompute_the_rows_without_new_events(new_db: Any, tmp_path: Path) -> None:
    target = new_db("merge")
    config = _setup(tmp_path, target, MAPPING_A, MAPPING_B)
    _replay(config, "a", A_EVENTS, "a")
    _replay(config, "b", B_EVENTS, "b")
    assert _rows(target) == [("1", "DINAS B", "Jl. Pahlawan 2", "DB", "B")]
    (tmp_path / "m0.yaml").write_text(MAPPING_A + RULES)
    _replay(config, "a", [], "nothing")
    assert _rows(target) == [("1", "Dinas A2", "Jl. Pahlawan 2", "DB", "B")]
    state = sql(target, "SELECT rules FROM public.tunggal_merge_state")
    assert state[0][0]["columns"]["nama"] == "priority a > b"


def test_upgrade_fills_contributions_from_rows_written_before(new_db: Any, tmp_path: Path) -> None:
    """A table written by A alone gains B: A's rows, deletes included, carry over."""
    target = new_db("merge")
    config = _setup(tmp_path, target, MAPPING_A)
    _replay(
        config,
        "a",
        [
            *A_EVENTS,
            _line("a", "c", 1300, 170, {"id": "2", "nama": "Dinas Dua", "alamat": "Jl. 2"}, "2"),
            _line("a", "d", 1400, 180, None, "2"),
        ],
        "a",
    )
    assert sql(target, "SELECT count(*) FROM public.tunggal_tombstones") == [(1,)]
    (tmp_path / "m1.yaml").write_text(MAPPING_B)
    config = write_config(tmp_path, target, {}, ["m0.yaml", "m1.yaml"])
    refused = run_cli("replay", "--config", str(config), "--source", "b", str(tmp_path / "a.jsonl"))
    assert refused.returncode == 2
    assert "tunggal schema --apply" in refused.stderr and "Traceback" not in refused.stderr
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    _replay(config, "b", B_EVENTS, "b")
    assert _rows(target) == [("1", "DINAS B", "Jl. Pahlawan 2", "DB", "B")]
    # A's old insert of row 2 was deleted before the upgrade: replaying it does not revive it.
    _replay(config, "a", [_line("a", "c", 1300, 170, {"id": "2", "nama": "x"}, "2")], "a-old")
    assert [r[0] for r in _rows(target)] == ["1"]
    assert orjson.loads(orjson.dumps(sql(target, "SELECT count(*) FROM opd"))) == [[1]]


def test_explain_and_conflicts_say_where_each_value_comes_from(new_db: Any, tmp_path: Path) -> None:
    target = new_db("merge")
    config = _setup(tmp_path, target, MAPPING_A + RULES, MAPPING_B)
    _replay(config, "b", B_EVENTS, "b")
    _replay(config, "a", A_EVENTS, "a")
    explained = run_cli("explain", "--config", str(config), "opd", "1", "--json")
    assert explained.returncode == 0, explained.stderr
    found = orjson.loads(explained.stdout)
    assert (found["state"], found["merged"], found["source"]) == ("live", True, "b")
    columns = {c["column"]: c for c in found["columns"]}
    nama = columns["nama"]
    assert (nama["value"], nama["source"], nama["rule"]) == ("Dinas A2", "a", "priority a > b")
    # A PostgreSQL position: (end of the previous commit << 64) | the change's LSN.
    assert nama["commit_ts"] == "2026-01-01T00:02:30Z"
    assert nama["position"] == str((1100 - 16) << 64 | 1100)
    assert nama["others"] == [{"source": "b", "value": "DINAS B", "state": "live", "mapped": True}]
    assert nama["conflict"] is True
    assert (columns["singkatan"]["source"], columns["singkatan"]["rule"]) == ("b", "owner b")
    assert (columns["alamat"]["value"], columns["alamat"]["source"]) == ("Jl. Pahlawan 2", "a")
    # sumber_data differs by design (each file's constant): not a disagreement.
    assert columns["sumber_data"]["conflict"] is False
    assert [(c["source"], c["state"]) for c in found["contributions"]] == [
        ("a", "live"),
        ("b", "live"),
    ]
    plain = run_cli("explain", "--config", str(config), "opd", "1")
    assert plain.returncode == 0, plain.stderr
    assert "nama" in plain.stdout and "priority a > b" in plain.stdout
    assert "b: DINAS B" in plain.stdout and "disagree on nama" in plain.stdout

    listed = run_cli("conflicts", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    disagreements = orjson.loads(listed.stdout)
    assert [(d["table"], d["key"], d["column"]) for d in disagreements] == [
        ("public.opd", {"kode": "1"}, "nama")
    ]
    assert [(v["source"], v["value"], v["commit_ts"]) for v in disagreements[0]["values"]] == [
        ("a", "Dinas A2", "2026-01-01T00:02:30Z"),
        ("b", "DINAS B", "2026-01-01T00:03:20Z"),
    ]
    text = run_cli("conflicts", "--config", str(config))
    assert "1 disagreement(s) in 1 row(s)" in text.stdout, text.stdout + text.stderr

    missing = run_cli("explain", "--config", str(config), "opd", "9")
    assert missing.returncode == 1 and "no row kode=9" in missing.stderr
    wrong = run_cli("explain", "--config", str(config), "opdd", "1")
    assert wrong.returncode == 2 and "did you mean public.opd" in wrong.stderr
    assert "Traceback" not in missing.stderr + wrong.stderr


def test_a_merged_row_the_target_refuses_is_dead_lettered_with_its_change(
    new_db: Any, tmp_path: Path
) -> None:
    """The target checks what the contributions table cannot: the change that makes the row
    break it is set aside, the batch's other rows land, and the row keeps its last state."""
    target = new_db("merge")
    config = _setup(tmp_path, target, MAPPING_A, MAPPING_B)
    sql(target, "ALTER TABLE opd ADD CONSTRAINT nama_pendek CHECK (length(nama) < 20)")
    _replay(config, "a", A_EVENTS, "a")
    long_name = {"id": "1", "nama": "DINAS YANG NAMANYA SANGAT PANJANG", "singkatan": "DP"}
    _replay(
        config,
        "b",
        [
            _line("b", "c", 5000, 200, long_name),
            _line("b", "c", 5100, 210, {"id": "2", "nama": "DINAS DUA", "singkatan": "D2"}, "2"),
        ],
        "b",
    )
    assert _rows(target) == [
        ("1", "Dinas A2", "Jl. Pahlawan 2", None, "A"),
        ("2", "DINAS DUA", None, "D2", "B"),
    ]
    letters = sql(target, "SELECT source, error FROM public.tunggal_dead_letters")
    assert len(letters) == 1 and letters[0][0] == "b" and "nama_pendek" in letters[0][1]
    # B's refused change left no contribution behind: a later A change recomputes cleanly.
    _replay(
        config, "a", [_line("a", "u", 1200, 300, {"id": "1", "nama": "X", "alamat": "Y"})], "a2"
    )
    assert _rows(target)[0] == ("1", "X", "Y", None, "A")
