"""The pure half of the source check: what the mappings read (`mapping.reads`) and how it is
compared with a source's catalog (`reconcile.catalog.catalog_problems`). The catalogs are read
from real servers in tests/integration/test_source_check.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunggal.connectors import ConnectorSpec
from tunggal.errors import Problem
from tunggal.mapping import load_mappings
from tunggal.mapping.reads import TableRead, source_reads
from tunggal.reconcile.catalog import Catalog, Named, catalog_problems, check_sources

MAPPING = """\
source: eplan
tables:
  - from: public.kegiatan
    to: public.kegiatan
    key: [id]
    filter: 'row.tahun >= 2024 && has(row.aktif)'
    columns:
      id: id
      nama: {from: nama_kegiatan, transform: [trim]}
      label:
        concat: [kode, {const: " - "}, nama_kegiatan]
      pagu: {expr: 'row.pagu * 2.0 + double(row["pagu_perubahan"])'}
      asal: {const: eplan}
  - from: public.opd
    to: public.opd
    key: [kode]
    filter: 'row.tahun >= 2024'
    columns: {kode: kode_opd, nama: nama}
"""


def load(tmp_path: Path, text: str = MAPPING) -> list[TableRead]:
    path = tmp_path / "eplan.yaml"
    path.write_text(text)
    return source_reads(load_mappings([path]))


def test_every_column_a_rule_reads_with_its_line(tmp_path: Path) -> None:
    first, second = load(tmp_path)
    assert (first.source, first.table, first.location, first.line) == (
        "eplan",
        "public.kegiatan",
        "tables[0].from",
        3,
    )
    found = [(c.column, c.location, c.line) for c in first.columns]
    assert found == [
        ("id", "tables[0].columns.id", 8),
        ("nama_kegiatan", "tables[0].columns.nama.from", 9),
        ("kode", "tables[0].columns.label.concat[0]", 11),
        ("nama_kegiatan", "tables[0].columns.label.concat[2]", 11),
        ("pagu", "tables[0].columns.pagu.expr", 12),
        ("pagu_perubahan", "tables[0].columns.pagu.expr", 12),
        # `has(row.aktif)` reads the row as a map and may be meant for rows without it: the
        # filter's columns are not listed. The second table's filter has no `has`.
    ]
    assert [c.column for c in second.columns] == ["kode_opd", "nama", "tahun"]
    assert second.columns[-1].location == "tables[1].filter"
    assert second.line == 14


KEGIATAN = ("id", "nama_kegiatan", "kode", "pagu", "pagu_perubahan")
OPD = ("kode_opd", "nama", "tahun")


def catalog(**columns: tuple[str, ...]) -> Catalog:
    tables = {name.replace("__", "."): cols for name, cols in columns.items()}
    return Catalog(
        "database eplan on 127.0.0.1:5432",
        {t: "table" for t in tables} | {"public.v_kegiatan": "view"},
        tables,
    )


def test_a_source_that_has_everything_gives_no_problem(tmp_path: Path) -> None:
    reads = load(tmp_path)
    assert (
        catalog_problems("eplan", reads, [], catalog(public__kegiatan=KEGIATAN, public__opd=OPD))
        == []
    )


def test_a_missing_table_names_file_line_source_and_the_tables_there(tmp_path: Path) -> None:
    reads = load(tmp_path, MAPPING.replace("from: public.opd", "from: public.opdx"))
    problems = catalog_problems(
        "eplan", reads, [], catalog(public__kegiatan=KEGIATAN, public__opd=OPD)
    )
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'eplan.yaml'}:14: tables[1].from: source table public.opdx does not exist "
        "in source 'eplan' (database eplan on 127.0.0.1:5432) (did you mean public.opd? "
        "tables there: public.kegiatan, public.opd)"
    ]


def test_a_column_typo_suggests_the_column_and_a_case_slip_first(tmp_path: Path) -> None:
    text = MAPPING.replace("nama: {from: nama_kegiatan,", "nama: {from: nama_kegitan,")
    text = text.replace("{kode: kode_opd, nama: nama}", "{kode: KODE_OPD, nama: nama}")
    problems = catalog_problems(
        "eplan", load(tmp_path, text), [], catalog(public__kegiatan=KEGIATAN, public__opd=OPD)
    )
    assert [(p.location, p.line, p.hint) for p in problems] == [
        ("tables[0].columns.nama.from", 9, "did you mean `nama_kegiatan`?"),
        ("tables[1].columns.kode", 18, "did you mean `kode_opd`?"),
    ]
    assert problems[0].message == (
        "source column nama_kegitan is not in public.kegiatan of source 'eplan' "
        "(database eplan on 127.0.0.1:5432)"
    )


def test_a_column_nothing_like_lists_the_columns(tmp_path: Path) -> None:
    text = MAPPING.replace("{kode: kode_opd, nama: nama}", "{kode: kode_opd, nama: zzz}")
    (problem,) = catalog_problems(
        "eplan", load(tmp_path, text), [], catalog(public__kegiatan=KEGIATAN, public__opd=OPD)
    )
    assert problem.hint == "its columns: kode_opd, nama, tahun"


def test_a_view_is_not_a_table_and_its_columns_are_not_reported_again(tmp_path: Path) -> None:
    text = MAPPING.replace("from: public.kegiatan", "from: public.v_kegiatan")
    problems = catalog_problems(
        "eplan",
        load(tmp_path, text),
        [],
        catalog(public__opd=OPD, public__v_kegiatan=KEGIATAN),
    )
    assert len(problems) == 1
    assert "public.v_kegiatan is a view" in problems[0].message
    assert "Debezium captures tables only" in (problems[0].hint or "")


def test_connector_tables_are_checked_too() -> None:
    named = [
        Named("public.kegiatan", "connectors/eplan.yaml", "tables[0]", 6),
        Named("public.kegiatann", "connectors/eplan.yaml", "tables[1]", 7),
        Named("arsip.kegiatan", "connectors/eplan.yaml", "tables[2]", 8),
    ]
    problems = catalog_problems("eplan", [], named, catalog(public__kegiatan=KEGIATAN))
    assert [(p.file, p.location, p.line) for p in problems] == [
        ("connectors/eplan.yaml", "tables[1]", 7),
        ("connectors/eplan.yaml", "tables[2]", 8),
    ]
    assert problems[0].hint is not None and "did you mean public.kegiatan?" in problems[0].hint
    assert (
        problems[1].hint == "did you mean public.kegiatan? it has no schema arsip with tables; "
        "schemas: public"
    )


NAMES = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)


@given(
    have=st.sets(NAMES, min_size=1, max_size=12),
    read=st.lists(NAMES, min_size=1, max_size=12),
)
def test_exactly_the_columns_the_source_lacks_are_reported(have: set[str], read: list[str]) -> None:
    """For any catalog and any columns read: one problem per read column not in the table,
    none for the others, and a hint that names a real column when it guesses."""
    from tunggal.mapping.reads import ColumnRead

    reads = [
        TableRead(
            "s",
            "public.t",
            "m.yaml",
            "tables[0].from",
            3,
            tuple(ColumnRead(c, f"tables[0].columns.c{i}", 4 + i) for i, c in enumerate(read)),
        )
    ]
    cat = Catalog("database d on h:1", {"public.t": "table"}, {"public.t": tuple(sorted(have))})
    problems: list[Problem] = catalog_problems("s", reads, [], cat)
    assert [p.line for p in problems] == [4 + i for i, c in enumerate(read) if c not in have]
    for p in problems:
        assert p.hint is not None
        if p.hint.startswith("did you mean"):
            assert p.hint.split("`")[1] in have


def test_a_sql_server_source_is_not_checked_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No SQL Server driver outside the JVM: no connection is tried, one warning is logged."""
    path = tmp_path / "sipkd.yaml"
    path.write_text(MAPPING.replace("source: eplan", "source: sipkd"))
    connector = ConnectorSpec.model_validate(
        {
            "name": "sipkd",
            "kind": "sqlserver",
            # Nothing listens there: a connection attempt would be an outage warning instead.
            "database": {"host": "127.0.0.1", "port": 1, "dbname": "sipkd", "user": "sa"},
        }
    )
    with caplog.at_level(logging.WARNING):
        problems = check_sources(load_mappings([path]), {"sipkd": (connector, "c.yaml")})
    assert problems == []
    assert [r.getMessage() for r in caplog.records] == [
        "source sipkd is sqlserver: its tables and columns are not checked at start-up or "
        "reload (Tunggal has no driver for it outside Debezium); a missing one shows in the "
        "Debezium log"
    ]
