"""Validation of mapping files: every problem at once, each with file, line, place and fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from tunggal.errors import ConfigError, Problem
from tunggal.mapping import load_mappings, spec


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems(*paths: str | Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_mappings([Path(p) for p in paths])
    return info.value.problems


def only(*paths: str | Path) -> Problem:
    (problem,) = problems(*paths)
    return problem


GOOD = """\
source: e_planning
tables:
  - from: public.kegiatan
    to: kegiatan
    key: [kode_kegiatan]
    columns:
      kode_kegiatan: kode
      nama_kegiatan: {from: nama, transform: [trim, upper]}
"""


def test_good_file_loads(tmp_path: Path) -> None:
    m = load_mappings([Path(write(tmp_path, "ok.yaml", GOOD))])
    assert list(m.targets()) == ["public.kegiatan"]


def test_typo_in_a_key_suggests_the_right_one(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", GOOD.replace("transform:", "tranform:"))
    assert only(f) == Problem(
        f,
        "tables[0].columns.nama_kegiatan.tranform",
        "unknown key `tranform`",
        8,
        "did you mean `transform`?",
    )


def test_typo_in_a_table_key_is_one_problem_not_two(tmp_path: Path) -> None:
    # `colums` is unknown and `columns` missing: one problem says both.
    f = write(tmp_path, "a.yaml", GOOD.replace("    columns:", "    colums:"))
    assert only(f) == Problem(
        f, "tables[0].colums", "unknown key `colums`", 6, "did you mean `columns`?"
    )


def test_bad_cel_is_reported_with_its_line(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "a.yaml",
        GOOD.replace("    columns:", "    filter: 'row.tahun >= '\n    columns:"),
    )
    problem = only(f)
    assert (problem.file, problem.line, problem.location) == (f, 6, "tables[0].filter")
    assert problem.message == "CEL syntax error at 1:14: mismatched input '<EOF>'"
    assert problem.hint is not None and problem.hint.startswith('CEL syntax: strings in "double')


def test_cel_with_an_unknown_variable(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", GOOD + "      label: {expr: 'rows.kode'}\n")
    assert only(f) == Problem(
        f,
        "tables[0].columns.label.expr",
        "unknown name `rows`: the only variable is `row`",
        9,
        "did you mean `row`?",
    )


def test_key_column_not_mapped(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", GOOD.replace("key: [kode_kegiatan]", "key: [kode_kegiatn]"))
    assert only(f) == Problem(
        f,
        "tables[0].key[0]",
        "key column `kode_kegiatn` is not mapped",
        5,
        "did you mean `kode_kegiatan`?",
    )


def test_unknown_transform(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", GOOD.replace("[trim, upper]", "[trim, uper, {date_prt: year}]"))
    assert problems(f) == [
        Problem(
            f,
            "tables[0].columns.nama_kegiatan.transform[1]",
            "unknown transform 'uper'",
            8,
            "did you mean 'upper'? one of trim, upper, lower",
        ),
        Problem(
            f,
            "tables[0].columns.nama_kegiatan.transform[2]",
            "unknown transform `date_prt`",
            8,
            "did you mean `date_part`?",
        ),
    ]


def test_transform_written_as_a_column_key(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", GOOD + "      bulan: {from: tgl, date_part: month}\n")
    assert only(f).hint == "it is a transform step: transform: [{date_part: month}]"


def test_bad_delete_policy(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", GOOD.replace("    columns:", "    delete: sof\n    columns:"))
    assert only(f) == Problem(
        f,
        "tables[0].delete",
        "unknown value for `delete` 'sof'",
        6,
        "did you mean 'soft'? one of hard, soft, ignore",
    )


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", GOOD.replace("key: [kode_kegiatan]", "key: [kode_kegiatan"))
    problem = only(f)
    assert (problem.file, problem.line, problem.location) == (f, 6, "")
    assert problem.message.startswith("YAML syntax error: expected ',' or ']'")
    assert problem.hint == (
        "check the indentation, colons and brackets around here; indent with spaces, not tabs"
    )


def test_unquoted_numeric_type_in_a_flow_mapping(tmp_path: Path) -> None:
    # {type: numeric(18,2)}: YAML ends the value at the comma.
    f = write(tmp_path, "a.yaml", GOOD + "      pagu: {from: pagu, type: numeric(18,2)}\n")
    hint = 'inside {...} a comma ends the value: quote the type, type: "numeric(18,2)"'
    assert [(p.location, p.line, p.hint) for p in problems(f)] == [
        ("tables[0].columns.pagu.type", 9, hint),
        ("tables[0].columns.pagu.2)", 9, hint),
    ]


def test_two_files_disagreeing_on_a_key_name_both(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", GOOD.replace("to: kegiatan", "to: opd"))
    b = write(
        tmp_path,
        "b.yaml",
        """\
        source: sipkd
        tables:
          - from: sipkd.daftunit
            to: public.opd
            key: [kode_opd]
            columns:
              kode_opd: kdunit
        """,
    )
    assert only(a, b) == Problem(
        b,
        "tables[0].key",
        f"key [kode_opd] for public.opd disagrees with key [kode_kegiatan] at {a}:5",
        5,
        "every mapping that writes public.opd must use the same key",
    )


def test_files_disagreeing_on_a_column_type(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", GOOD + "      tahun: {from: thn, type: smallint}\n")
    b = write(
        tmp_path,
        "b.yaml",
        GOOD.replace("source: e_planning", "source: sipkd")
        + "      tahun: {from: thn, cast: integer}\n",
    )
    problem = only(a, b)
    assert (problem.file, problem.line) == (b, 9)
    assert problem.message == f"public.kegiatan.tahun is integer here but smallint at {a}:9"


def test_duplicate_from_to_pair(tmp_path: Path) -> None:
    table = GOOD.split("tables:\n")[1]
    f = write(tmp_path, "a.yaml", GOOD + table)
    assert only(f) == Problem(
        f,
        "tables[1].to",
        f"public.kegiatan -> public.kegiatan is mapped twice for source e_planning (also at {f}:4)",
        10,
        "merge the two entries into one",
    )


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", GOOD + "      kode_kegiatan: kd\n")
    assert only(f) == Problem(
        f,
        "tables[0].columns.kode_kegiatan",
        "duplicate key `kode_kegiatan` (first at line 7)",
        9,
        "YAML keeps only the last one; remove or rename one of them",
    )


def test_soft_delete_column_without_soft_delete(tmp_path: Path) -> None:
    f = write(
        tmp_path, "a.yaml", GOOD.replace("    columns:", "    soft_delete_column: x\n    columns:")
    )
    assert only(f) == Problem(
        f,
        "tables[0].soft_delete_column",
        "soft_delete_column: x has no effect with delete: hard",
        6,
        "set delete: soft, or remove soft_delete_column",
    )


def test_column_spec_shape_errors(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "a.yaml",
        GOOD
        + "      a: {from: x, const: 1}\n"
        + "      b: {}\n"
        + "      c: {const: 1, default: 2}\n"
        + "      d:\n"
        + "      _tunggal_x: x\n"
        + "      e: {from: x, cast: integr}\n",
    )
    assert [(p.line, p.location, p.message, p.hint) for p in problems(f)] == [
        (9, "tables[0].columns.a", "column has both from and const",
         "give only one of from, const, expr, concat"),
        (10, "tables[0].columns.b", "column has no value",
         "give one of from: <source column>, const:, expr: or concat:"),
        (11, "tables[0].columns.c", "`default` only applies with `lookup`",
         "did you mean default_if_null?"),
        (12, "tables[0].columns.d", "expected a mapping (key: value lines), got nothing (null)",
         "write `target_column: source_column` or `target_column: {from: source_column, ...}`"),
        (13, "tables[0].columns._tunggal_x", "column name '_tunggal_x' is reserved",
         "columns starting with _tunggal_ are written by tunggal itself"),
        (14, "tables[0].columns.e.cast", "cannot cast to 'integr'",
         "casts: text, smallint, integer, bigint, numeric, double, boolean, date, timestamp, "
         "timestamptz, time, json, jsonb, uuid"),
    ]  # fmt: skip


def test_names_that_do_not_fit(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "a.yaml",
        GOOD.replace("from: public.kegiatan", "from: kegiatan").replace(
            "to: kegiatan", "to: keg-iatan"
        ),
    )
    assert [(p.line, p.location, p.message, p.hint) for p in problems(f)] == [
        (3, "tables[0].from", "source table 'kegiatan' needs its schema",
         "write it as schema.table, e.g. public.kegiatan; database.table for MySQL"),
        (4, "tables[0].to", "target table name 'keg-iatan' is not a plain SQL name",
         "use letters, digits and underscores, starting with a letter"),
    ]  # fmt: skip


def test_missing_and_empty_things(tmp_path: Path) -> None:
    empty = write(tmp_path, "empty.yaml", "# nothing yet\n")
    listed = write(tmp_path, "list.yaml", "- a\n")
    bare = write(tmp_path, "bare.yaml", "source: x\n")
    no_tables = write(tmp_path, "none.yaml", "source: x\ntables: []\n")
    assert [(p.file, p.line, p.message) for p in problems(empty, listed, bare, no_tables)] == [
        (bare, 1, "missing required key `tables`"),
        (empty, 1, "the file is empty"),
        (listed, 1, "expected a mapping at the top, got a list"),
        (no_tables, 2, "`tables` must not be empty"),
    ]


def test_unreadable_file_and_no_files(tmp_path: Path) -> None:
    assert only(tmp_path / "nope.yaml").message.startswith("cannot read:")
    assert only(tmp_path).message == "no mapping files given"


def test_every_problem_in_every_file_at_once(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        """\
        source: e_planning
        tables:
          - from: public.kegiatan
            to: kegiatan
            key: [kode_kegiatan]
            delete: sof
            filter: 'row.tahun >= '
            columns:
              kode: kode
              nama: {from: nama, tranform: [trim]}
          - from: public.program
            to: program
            key: [kode_program]
            columns:
              kode_program: kd_program
              nama: {from: nm, transform: [uper]}
          - from: public.opd
            to: opd
            key: [kode_opd]
            columns:
              kode: kd
        """,
    )
    b = write(tmp_path, "b.yaml", "source: sipkd\ntables:\n  - from: [\n")
    assert [(p.file, p.line, p.location) for p in problems(a, b)] == [
        (a, 6, "tables[0].delete"),
        (a, 7, "tables[0].filter"),
        (a, 10, "tables[0].columns.nama.tranform"),
        (a, 16, "tables[1].columns.nama.transform[0]"),
        (a, 19, "tables[2].key[0]"),  # found although other tables are broken
        (b, 4, ""),
    ]


def test_yaml_12_booleans_keep_codes_as_text(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "a.yaml",
        GOOD + "      status: {from: st, lookup: {ON: Aktif, OFF: Nonaktif, true: Ya}}\n",
    )
    m = load_mappings([Path(f)])
    (doc,) = m.documents
    status = doc.spec.tables[0].columns["status"]
    assert not isinstance(status, str)
    assert status.lookup == {"ON": "Aktif", "OFF": "Nonaktif", True: "Ya"}


def test_directories_expand_to_their_yaml_files(tmp_path: Path) -> None:
    write(tmp_path, "b.yml", GOOD.replace("e_planning", "sipkd"))
    write(tmp_path, "a.yaml", GOOD)
    (tmp_path / "notes.txt").write_text("not a mapping")
    m = load_mappings([tmp_path])
    assert m.files == (str(tmp_path / "a.yaml"), str(tmp_path / "b.yml"))
    assert m.sources() == frozenset({"e_planning", "sipkd"})


def test_config_error_renders_one_line_per_problem(tmp_path: Path) -> None:
    f = write(tmp_path, "a.yaml", GOOD.replace("transform:", "tranform:"))
    with pytest.raises(ConfigError) as info:
        load_mappings([Path(f)])
    assert str(info.value) == (
        "1 problem found:\n"
        f"  - {f}:8: tables[0].columns.nama_kegiatan.tranform: unknown key `tranform` "
        "(did you mean `transform`?)"
    )


def test_writers_must_agree_on_the_soft_delete_column(tmp_path: Path) -> None:
    soft = GOOD.replace(
        "    columns:", "    delete: soft\n    soft_delete_column: {}\n    columns:"
    )
    a = write(tmp_path, "a.yaml", soft.replace("{}", "deleted_at"))
    b = write(tmp_path, "b.yaml", GOOD.replace("source: e_planning", "source: b"))
    c = write(tmp_path, "c.yaml", soft.replace("{}", "dihapus").replace("e_planning", "c"))
    problem = only(a, b, c)
    assert (problem.file, problem.line, problem.location) == (c, 7, "tables[0].soft_delete_column")
    assert problem.message == (
        f"soft_delete_column dihapus for public.kegiatan disagrees with deleted_at at {a}:3"
    )


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "a.yaml",
        """\
        source: e_planning
        tables:
          - &kegiatan
            from: public.kegiatan
            to: kegiatan
            key: [kode_kegiatan]
            columns:
              kode_kegiatan: kode
              sumber_data: &sumber {const: e-Planning, type: varchar(30)}
          - <<: *kegiatan
            to: arsip.kegiatan
            delete: ignore
            columns:
              kode_kegiatan: kode
              sumber_data: *sumber
        """,
    )
    m = load_mappings([Path(f)])
    assert list(m.targets()) == ["public.kegiatan", "arsip.kegiatan"]
    assert m.documents[0].spec.tables[1].delete == "ignore"


@pytest.mark.parametrize(
    "model",
    [
        spec.MappingFile,
        spec.TableMapping,
        spec.ColumnSpec,
        spec.ConstPart,
        spec.DatePartStep,
        spec.LookupStep,
        spec.DefaultIfNullStep,
        spec.CastStep,
        spec.MergeSpec,
        spec.PriorityRule,
        spec.OwnerRule,
    ],
)
def test_every_field_is_described_and_models_are_strict(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid" and model.model_config.get("frozen")
    assert [name for name, f in model.model_fields.items() if not f.description] == []


# --- merge rules: one target table written by several sources --------------------------------

OPD_A = """\
source: a
tables:
  - from: public.unit
    to: opd
    key: [kode]
    merge:
      default: {priority: [a, b]}
      columns:
        alamat: {owner: a}
        nama: latest
      deleted_by: [a]
    columns: {kode: id, nama: nama, alamat: alamat, sumber: {const: A}}
"""
OPD_B = """\
source: b
tables:
  - from: public.satker
    to: opd
    key: [kode]
    columns: {kode: id, nama: nama, singkatan: akro, sumber: {const: B}}
"""


def test_merge_rules_load_into_per_column_rules(tmp_path: Path) -> None:
    m = load_mappings(
        [Path(write(tmp_path, "a.yaml", OPD_A)), Path(write(tmp_path, "b.yaml", OPD_B))]
    )
    rules = m.targets()["public.opd"].merge
    assert rules.sources == ("a", "b") and rules.deleted_by == frozenset({"a"})
    assert {c: r.describe() for c, r in rules.columns.items()} == {
        "nama": "latest",
        "alamat": "owner a",
        "sumber": "priority a > b",
        "singkatan": "priority b",  # only b maps it: the list keeps the sources that do
    }
    # Constants differ by design: never a disagreement.
    assert rules.conflict_sources("sumber") == () and rules.conflict_sources("nama") == ("a", "b")


def test_merge_rules_that_name_what_they_cannot_are_refused_with_line_and_fix(
    tmp_path: Path,
) -> None:
    bad = OPD_A.replace("[a, b]}", "[a, sipkd]}").replace("{owner: a}", "{owner: b}")
    bad = bad.replace("nama: latest", "nama: latest\n        kode: latest\n        namaa: latest")
    bad = bad.replace("deleted_by: [a]", "deleted_by: [a, a]")
    a, b = write(tmp_path, "a.yaml", bad), write(tmp_path, "b.yaml", OPD_B)
    assert [(p.location, p.line, p.message, p.hint) for p in problems(a, b)] == [
        (
            "tables[0].merge.default.priority[1]",
            7,
            "source sipkd does not write public.opd",
            "the sources that write it: a, b",
        ),
        (
            "tables[0].merge.columns.alamat.owner",
            9,
            "owner b does not map public.opd.alamat",
            "pick a source that maps it: a",
        ),
        (
            "tables[0].merge.columns.kode",
            11,
            "key column kode takes no merge rule",
            "every source gives the same key; remove it from merge.columns",
        ),
        (
            "tables[0].merge.columns.namaa",
            12,
            "no mapping of public.opd maps column namaa",
            "did you mean `nama`?",
        ),
        ("tables[0].merge.deleted_by[1]", 13, "source a is listed twice", "list each source once"),
    ]


def test_a_priority_list_must_name_every_source_that_maps_the_column(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", OPD_A.replace("nama: latest", "nama: {priority: [a]}"))
    b = write(tmp_path, "b.yaml", OPD_B)
    assert only(a, b) == Problem(
        a,
        "tables[0].merge.columns.nama.priority",
        "priority for public.opd.nama misses b, which maps nama",
        10,
        "list every source that writes it: [a, b]",
    )
    # The table-wide default must name every source that maps a column it decides.
    a = write(tmp_path, "a.yaml", OPD_A.replace("{priority: [a, b]}", "{priority: [a]}"))
    (problem,) = problems(a, b)
    assert problem.location == "tables[0].merge.default.priority"
    assert problem.message == "priority for public.opd misses b, which maps columns of it"


def test_merge_rules_given_in_two_files_and_keys_that_disagree(tmp_path: Path) -> None:
    rules = "    merge: {default: latest}\n"
    b_text = OPD_B.replace("    columns:", rules + "    columns:").replace("[kode]", "[nama]")
    a, b = write(tmp_path, "a.yaml", OPD_A), write(tmp_path, "b.yaml", b_text)
    found = {(p.file, p.location): p for p in problems(a, b)}
    assert found[(b, "tables[0].merge")].message == (
        f"merge rules for public.opd are also given at {a}:6"
    )
    assert found[(b, "tables[0].key")].message.startswith("key [nama] for public.opd disagrees")


def test_a_misspelt_rule_says_what_a_rule_is(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", OPD_A.replace("nama: latest", "nama: lastest"))
    b = write(tmp_path, "b.yaml", OPD_B)
    problem = only(a, b)
    assert problem.location == "tables[0].merge.columns.nama" and problem.line == 10
    assert problem.hint == (
        "did you mean 'latest'? a merge rule is latest, {priority: [a, b]} or {owner: a}"
    )
