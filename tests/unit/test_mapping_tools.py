"""`tunggal mapping schema|test|diff`: the editor schema, dry runs and diffs of mapping files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import EVENTS, run_cli
from tunggal.mapping import load_mappings
from tunggal.mapping.diff import diff

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
SCHEMA = MAPPINGS / "tunggal-mapping.schema.json"

CAPTURED = """\
source: cap
tables:
  - from: public.t
    to: public.t
    key: [id]
    columns:
      id: id
      n: {from: n, type: "numeric(12,2)"}
      d: d
      txt: {from: txt, transform: [upper]}
  - from: public.k
    to: public.k
    key: [id]
    truncate: delete_source_rows
    columns: {id: id, v: v}
"""


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_schema_command_writes_the_shipped_file(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    result = run_cli("mapping", "schema", "-o", str(out))
    assert result.returncode == 0, result.stderr
    # Byte for byte: the shipped file is regenerated with this command, never by hand.
    assert out.read_text() == SCHEMA.read_text()
    assert run_cli("mapping", "schema").stdout == SCHEMA.read_text()


def test_schema_is_made_for_editors(validator: Any) -> None:
    schema = validator.schema
    models = [schema, *schema["$defs"].values()]
    for model in models:
        assert model["additionalProperties"] is False, model["title"]
        for name, prop in model["properties"].items():
            assert prop.get("description"), f"{model['title']}.{name} has no description"
    table = schema["$defs"]["TableMapping"]["properties"]
    assert table["delete"]["enum"] == ["hard", "soft", "ignore"]
    assert table["truncate"]["enum"] == ["ignore", "delete_source_rows"]


@pytest.mark.parametrize("path", sorted(MAPPINGS.glob("*.yaml")), ids=lambda p: p.name)
def test_schema_accepts_the_shipped_examples(validator: Any, path: Path) -> None:
    assert path.read_text().startswith("# yaml-language-server: $schema=./tunggal-mapping")
    validator.validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        ({"delete": "purge"}, "'purge' is not one of"),
        ({"colums": {"id": "id"}}, "Additional properties are not allowed"),
        ({"columns": {"id": {"from": "id", "transfrom": ["trim"]}}}, "Additional properties"),
        ({"key": []}, "should be non-empty"),
        ({"columns": {"id": {"from": "id", "transform": ["capitalize"]}}}, "is not valid"),
        ({"from": "kegiatan"}, "does not match"),  # no schema
        ({"to": "public.kv.x"}, "does not match"),
        ({"columns": {"id": "id", "kode-opd": "kd"}}, "does not match"),
        ({"columns": {"id": "id", "_tunggal_ts": "ts"}}, "does not match"),
    ],
)
def test_schema_rejects_a_broken_mapping(
    validator: Any, broken: dict[str, Any], complaint: str
) -> None:
    table = {"from": "public.kv", "to": "kv", "key": ["id"], "columns": {"id": "id"}, **broken}
    # An editor shows the innermost reason too: a column is a name *or* a spec (oneOf).
    errors = [*validator.iter_errors({"source": "s", "tables": [table]})]
    messages = [m for e in errors for m in [e.message, *(c.message for c in e.context or ())]]
    assert errors and any(complaint in m for m in messages), messages


def test_mapping_test_shows_the_rows_of_a_recorded_stream(tmp_path: Path) -> None:
    mapping = tmp_path / "cap.yaml"
    mapping.write_text(CAPTURED)
    events = EVENTS / "pg_alltypes_schemas.jsonl"
    result = run_cli("mapping", "test", "--source", "cap", "--json", str(mapping), str(events))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["line"], r["op"], r["outcome"]) for r in lines] == [
        (1, "r", "mapped"),
        (2, "r", "mapped"),
        (3, "r", "mapped"),
        (4, "u", "mapped"),
        (5, "d", "mapped"),
        (6, None, "tombstone"),
        (7, "c", "mapped"),
        (8, "d", "mapped"),
        (9, None, "tombstone"),
        (10, "c", "mapped"),
        (11, "u", "mapped"),
        (12, "t", "mapped"),
    ]
    assert lines[1]["ops"] == [
        {
            "action": "upsert",
            "table": "public.t",
            "key": {"id": 1},
            "values": {"id": 1, "n": "12345.67", "d": "2024-02-29", "txt": "HÉLLO"},
        }
    ]
    assert lines[4]["ops"] == [{"action": "delete", "table": "public.k", "key": {"id": 1}}]
    assert lines[11]["ops"] == [{"action": "truncate", "table": "public.k"}]
    assert "12 events: 10 mapped, 2 tombstone" in result.stderr

    # Piped without --json: one plain line per row operation, no colour codes.
    plain = run_cli("mapping", "test", "--source", "cap", str(mapping), str(events))
    assert plain.returncode == 0, plain.stderr
    assert "\x1b[" not in plain.stdout
    rows = plain.stdout.splitlines()
    assert rows[0].split() == [
        "line",
        "source",
        "table",
        "op",
        "outcome",
        "target",
        "action",
        "key",
        "values",
    ]
    assert rows[2].split() == [
        "2", "public.t", "r", "mapped", "public.t", "upsert", "id=1",
        "id=1,", "n=12345.67,", "d=2024-02-29,", "txt=HÉLLO",
    ]  # fmt: skip


def test_mapping_test_flags_schemaless_events_that_need_target_types(tmp_path: Path) -> None:
    mapping = tmp_path / "cap.yaml"
    mapping.write_text(CAPTURED)
    events = EVENTS / "pg_alltypes_schemaless.jsonl"
    result = run_cli("mapping", "test", "--source", "cap", "--json", str(mapping), str(events))
    assert result.returncode == 0, result.stderr
    by_line = {r["line"]: r for r in map(json.loads, result.stdout.splitlines())}
    t_row = by_line[2]
    assert t_row["outcome"] == "needs target types"
    # `n` has `type:` in the mapping, so it is decoded; `d` and the others are not.
    assert "the types of d, id, txt are known only to the target database" in t_row["note"]
    assert t_row["ops"][0]["values"]["d"] == 19782  # days since 1970, as Debezium sent it
    assert t_row["ops"][0]["values"]["n"] == "12345.67"
    # A truncate carries no row: nothing to type.
    assert by_line[12]["outcome"] == "mapped"


def test_mapping_test_shows_poison_events_with_their_error(tmp_path: Path) -> None:
    mapping = tmp_path / "cap.yaml"
    mapping.write_text(CAPTURED.replace("v: v}", "v: {from: v, lookup: {satu: SATU}}}"))
    events = tmp_path / "events.jsonl"
    good = (EVENTS / "pg_alltypes_schemas.jsonl").read_text().splitlines()
    # line 3: public.k id=5 v='lima', a code the lookup does not know
    events.write_text("\n".join([good[0], "this is not json", good[9], ""]))
    result = run_cli("mapping", "test", "--source", "cap", str(mapping), str(events))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    rows = result.stdout.splitlines()
    assert rows[1].split()[:4] == ["1", "public.k", "r", "mapped"]
    assert rows[2].split()[:4] == ["2", "-", "-", "poison"] and "DecodeError: " in rows[2]
    assert rows[3].split()[:4] == ["3", "public.k", "-", "poison"]
    assert "MappingError: " in rows[3] and "'lima'" in rows[3] and f"{mapping}:" in rows[3]
    assert "3 events: 1 mapped, 2 poison" in result.stderr


def test_mapping_test_names_the_closest_source(tmp_path: Path) -> None:
    mapping = tmp_path / "cap.yaml"
    mapping.write_text(CAPTURED)
    events = EVENTS / "pg_alltypes_schemas.jsonl"
    result = run_cli("mapping", "test", "--source", "cpa", str(mapping), str(events))
    assert result.returncode == 2
    assert "no mapping file is for source 'cpa' (did you mean cap?)" in result.stderr


def test_mapping_test_reports_a_broken_mapping_with_file_and_line(tmp_path: Path) -> None:
    mapping = tmp_path / "cap.yaml"
    mapping.write_text(CAPTURED.replace("truncate: delete_source_rows", "truncat: ignore"))
    events = EVENTS / "pg_alltypes_schemas.jsonl"
    result = run_cli("mapping", "test", "--source", "cap", str(mapping), str(events))
    assert result.returncode == 2
    assert f"{mapping}:14" in result.stderr and "did you mean `truncate`" in result.stderr


def _edited(tmp_path: Path, name: str, edits: list[tuple[str, str]]) -> Path:
    folder = tmp_path / name
    shutil.copytree(MAPPINGS, folder)
    path = folder / "e_planning.yaml"
    text = path.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    return folder


# opd's merge rules in the shipped e_planning.yaml: from `merge:` to the entry's `columns:`.
MERGE_BLOCK = re.search(
    r"^    merge:\n.*?(?=^    columns:)", (MAPPINGS / "e_planning.yaml").read_text(), re.M | re.S
)[0]  # type: ignore[index]


def test_diff_names_merge_rule_changes(tmp_path: Path) -> None:
    assert MERGE_BLOCK.startswith("    merge:\n")
    new = _edited(
        tmp_path,
        "new",
        [
            ("default: {priority: [e_planning, sipkd]}", "default: latest"),
            ("deleted_by: [e_planning]", "deleted_by: []"),
        ],
    )
    result = run_cli("mapping", "diff", str(MAPPINGS), str(new))
    assert result.returncode == 0, result.stderr
    assert (
        "~ table public.opd\n"
        "    merge nama_opd: priority e_planning > sipkd -> latest\n"
        "    merge alamat: priority e_planning > sipkd -> latest\n"
    ) in result.stdout
    assert "    merge aktif: priority e_planning -> latest\n" in result.stdout
    assert "merge singkatan" not in result.stdout
    assert "    merge deleted_by: [e_planning] -> []\n" in result.stdout


def test_diff_of_identical_sets_is_empty() -> None:
    assert diff(load_mappings([MAPPINGS]), load_mappings([MAPPINGS])) == []
    result = run_cli("mapping", "diff", str(MAPPINGS), str(MAPPINGS))
    assert result.returncode == 0 and "no changes" in result.stdout


def test_diff_names_tables_columns_and_rules(tmp_path: Path) -> None:
    text = (MAPPINGS / "e_planning.yaml").read_text()
    assert "nama_program: {from: nm_program, transform: [trim]" in text
    new = _edited(
        tmp_path,
        "new",
        [
            (
                "nama_program: {from: nm_program, transform: [trim]",
                "nama_program: {from: nm_program, transform: [trim, upper]",
            ),
            ("filter: 'row.tahun >= 2020'", "filter: 'row.tahun >= 2022'\n    delete: soft"),
            ("      tahun: {from: tahun, type: smallint}\n", ""),
            ("      indikator:", "      catatan: {const: baru}\n      indikator:"),
            # Without sipkd, opd's merge rules would name a source that no longer writes it.
            (MERGE_BLOCK, ""),
        ],
    )
    (new / "sipkd.yaml").unlink()
    result = run_cli("mapping", "diff", str(MAPPINGS), str(new))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "- table public.realisasi" in out
    assert (
        "~ table public.opd\n    no longer merged: e_planning alone writes it\n"
        "    no longer written by sipkd sipkd.daftunit"
    ) in out
    assert "- column kode_opd (sipkd sipkd.daftunit): from: kdunit, transform: [trim]" in out
    assert (
        "~ table public.kegiatan\n"
        "    e_planning public.kegiatan: delete: hard -> soft\n"
        "    e_planning public.kegiatan: filter: row.tahun >= 2020 -> row.tahun >= 2022\n"
        "  - column tahun: from: tahun, type: smallint\n"
    ) in out
    assert "~ table public.sub_kegiatan\n  + column catatan: const: baru\n" in out
    assert (
        "~ column nama_program: from: nm_program, transform: [trim], type: varchar(500)  ->  "
        "from: nm_program, transform: [trim, upper], type: varchar(500)"
    ) in out

    as_json = json.loads(run_cli("mapping", "diff", "--json", str(new), str(MAPPINGS)).stdout)
    assert {c["table"]: c["kind"] for c in as_json} == {
        "public.opd": "changed",
        "public.program": "changed",
        "public.realisasi": "added",
        "public.kegiatan": "changed",
        "public.sub_kegiatan": "changed",
    }
