"""check_against_database with hand-made TableInfo sets."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tunggal.errors import Problem
from tunggal.mapping import (
    BOOKKEEPING_COLUMNS,
    MappingSet,
    TableInfo,
    check_against_database,
    load_mappings,
)

MAPPING = """\
source: e_budgeting
tables:
  - from: budget.rka_kegiatan
    to: anggaran
    key: [kode_kegiatan, tahun]
    delete: soft
    columns:
      kode_kegiatan: {from: kd_keg, type: varchar(30)}
      tahun: {from: thn, cast: integer}
      pagu: {from: pagu, type: "numeric(18,2)"}
      bulan: {from: tgl, transform: [{date_part: month}], type: smallint}
      catatan: {from: catatan, transform: [trim]}
"""
COLUMNS = {
    "kode_kegiatan": "character varying(30)",
    "tahun": "smallint",
    "pagu": "numeric(18,2)",
    "bulan": "integer",
    "catatan": "text",
    "deleted_at": "timestamp with time zone",
    **BOOKKEEPING_COLUMNS,
}


def load(tmp_path: Path, text: str = MAPPING) -> tuple[MappingSet, str]:
    path = tmp_path / "anggaran.yaml"
    path.write_text(textwrap.dedent(text))
    return load_mappings([path]), str(path)


def table(**changes: str | None) -> dict[str, TableInfo]:
    columns = {k: v for k, v in {**COLUMNS, **changes}.items() if v is not None}
    return {
        "public.anggaran": TableInfo(
            "public.anggaran", columns, (("kode_kegiatan", "tahun"), ("pagu",))
        )
    }


def test_a_matching_table_has_no_problems(tmp_path: Path) -> None:
    m, _ = load(tmp_path)
    assert check_against_database(m, table()) == []


def test_missing_table_with_every_column_typed(tmp_path: Path) -> None:
    m, f = load(tmp_path, MAPPING.replace("transform: [trim]}", "transform: [trim], type: text}"))
    assert check_against_database(m, {}) == [
        Problem(
            f,
            "tables[0].to",
            "target table public.anggaran does not exist",
            4,
            "run `tunggal schema --apply` to create it",
        )
    ]


def test_missing_table_with_untyped_columns(tmp_path: Path) -> None:
    m, _ = load(tmp_path)
    (problem,) = check_against_database(m, {})
    assert problem.hint == (
        "add `type:` to catatan so that `tunggal schema --apply` can create it, "
        "or create it yourself"
    )


def test_missing_columns(tmp_path: Path) -> None:
    m, f = load(tmp_path)
    found = check_against_database(m, table(pagu=None, pagu_rp="numeric", catatan=None))
    assert found == [
        Problem(
            f,
            "tables[0].columns.pagu",
            "column pagu does not exist in public.anggaran",
            10,
            "did you mean `pagu_rp`?",
        ),
        Problem(
            f,
            "tables[0].columns.catatan",
            "column catatan does not exist in public.anggaran",
            12,
            "ALTER TABLE public.anggaran ADD COLUMN catatan <type>",
        ),
    ]


def test_key_not_backed_by_a_unique_constraint(tmp_path: Path) -> None:
    m, f = load(tmp_path)
    tables = {"public.anggaran": TableInfo("public.anggaran", COLUMNS, (("id",),))}
    assert check_against_database(m, tables) == [
        Problem(
            f,
            "tables[0].key",
            "key (kode_kegiatan, tahun) is not a primary key or unique constraint of "
            "public.anggaran",
            5,
            "its unique keys are (id); upserts need one: "
            "ALTER TABLE public.anggaran ADD UNIQUE (kode_kegiatan, tahun)",
        )
    ]


def test_incompatible_types(tmp_path: Path) -> None:
    m, _ = load(tmp_path)
    found = check_against_database(m, table(tahun="date", pagu="integer", bulan="date"))
    assert [(p.line, p.location, p.message, p.hint) for p in found] == [
        (9, "tables[0].columns.tahun",
         "public.anggaran.tahun is date but the mapping produces integer (cast: integer)",
         "add `cast: date` last, or change the column type"),
        (10, "tables[0].columns.pagu.type",
         "public.anggaran.pagu is integer but `type:` says numeric(18,2)",
         "change `type:` to integer, or alter the column"),
        (11, "tables[0].columns.bulan.type",
         "public.anggaran.bulan is date but `type:` says smallint",
         "change `type:` to date, or alter the column"),
    ]  # fmt: skip


def test_lenient_about_lengths_widths_and_text(tmp_path: Path) -> None:
    m, _ = load(tmp_path)
    lenient = table(
        kode_kegiatan="text",  # varchar(30) declared
        tahun="bigint",  # cast: integer
        bulan="numeric",  # date_part gives integers
        catatan="character varying(10)",
        pagu="numeric",
    )
    assert check_against_database(m, lenient) == []


def test_text_into_a_date_column(tmp_path: Path) -> None:
    m, _ = load(tmp_path)
    (problem,) = check_against_database(m, table(catatan="date"))
    assert problem.message == "public.anggaran.catatan is date but the mapping produces text (trim)"


def test_missing_soft_delete_and_bookkeeping_columns(tmp_path: Path) -> None:
    m, f = load(tmp_path)
    found = check_against_database(m, table(deleted_at=None, _tunggal_ts=None))
    assert found == [
        Problem(
            f,
            "tables[0].to",
            "public.anggaran lacks tunggal's bookkeeping columns _tunggal_ts",
            4,
            "run `tunggal schema --apply` to add them",
        ),
        Problem(
            f,
            "tables[0].delete",
            "soft-delete column deleted_at does not exist in public.anggaran",
            6,
            "run `tunggal schema --apply` to add it, or "
            "ALTER TABLE public.anggaran ADD COLUMN deleted_at timestamptz",
        ),
    ]
