"""The shipped example mappings: they load, fit the shipped SQL, and map realistic events."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tunggal.events.model import ChangeEvent, Op
from tunggal.mapping import (
    Delete,
    MappingSet,
    TableInfo,
    Truncate,
    Upsert,
    check_against_database,
    json_schema,
    load_mappings,
)

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
SYSTEMS = ("e_planning", "e_budgeting", "e_kontrak", "sipkd")


@pytest.fixture(scope="module")
def mset() -> MappingSet:
    return load_mappings([MAPPINGS])


def parse_sql(path: Path) -> dict[str, TableInfo]:
    """CREATE TABLE statements as TableInfo: just enough SQL for the shipped files."""
    text = re.sub(r"--[^\n]*", "", path.read_text())
    tables: dict[str, TableInfo] = {}
    for name, body in re.findall(r"CREATE TABLE (\S+) \((.*?)\n\);", text, re.S):
        items, depth, current = [], 0, ""
        for char in body:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                items.append(current.strip())
                current = ""
            else:
                current += char
        items.append(current.strip())
        columns: dict[str, str] = {}
        keys: list[tuple[str, ...]] = []
        for item in items:
            found = re.match(r"(PRIMARY KEY|UNIQUE) \(([^)]*)\)", item)
            if found:
                keys.append(tuple(c.strip() for c in found[2].split(",")))
                continue
            column, rest = item.split(None, 1)
            stop = re.search(r"\s+(PRIMARY|NOT|DEFAULT|REFERENCES|UNIQUE|CHECK|NULL)\b", rest)
            columns[column] = (rest[: stop.start()] if stop else rest).strip()
            if re.search(r"\b(PRIMARY KEY|UNIQUE)\b", rest):
                keys.append((column,))
        tables[name] = TableInfo(name, columns, tuple(keys))
    return tables


def replica_identity_full(path: Path) -> set[str]:
    """The tables a shipped SQL file gives REPLICA IDENTITY FULL (whole old rows in the log)."""
    text = re.sub(r"--[^\n]*", "", path.read_text())
    return set(re.findall(r"ALTER TABLE (\S+) REPLICA IDENTITY FULL;", text))


def test_examples_load_without_problems(mset: MappingSet) -> None:
    assert [Path(f).name for f in mset.files] == [f"{s}.yaml" for s in sorted(SYSTEMS)]
    assert mset.sources() == frozenset(SYSTEMS)


def test_opd_is_written_by_e_planning_and_sipkd(mset: MappingSet) -> None:
    opd = mset.targets()["public.opd"]
    assert opd.key == ("kode_opd",)
    assert [(w.source, w.source_table) for w in opd.writers] == [
        ("e_planning", "public.ref_skpd"),
        ("sipkd", "sipkd.daftunit"),
    ]


def test_every_target_column_has_a_type(mset: MappingSet) -> None:
    untyped = {
        (name, column)
        for name, target in mset.targets().items()
        for column, type_name in target.columns.items()
        if type_name is None
    }
    assert untyped == set()


def test_examples_fit_the_target_schema(mset: MappingSet) -> None:
    assert check_against_database(mset, parse_sql(MAPPINGS / "sql" / "target.sql")) == []


def test_the_checker_finds_drift_from_the_examples(mset: MappingSet) -> None:
    tables = parse_sql(MAPPINGS / "sql" / "target.sql")
    del tables["public.pagu_indikatif"]
    kontrak = tables["public.kontrak"]
    tables["public.kontrak"] = TableInfo(
        kontrak.name, {**kontrak.columns, "tahun": "date"}, kontrak.unique_keys
    )
    found = check_against_database(mset, tables)
    assert [(Path(p.file).name, p.location, p.message) for p in found] == [
        ("e_budgeting.yaml", "tables[1].to", "target table public.pagu_indikatif does not exist"),
        (
            "e_kontrak.yaml",
            "tables[1].columns.tahun.type",
            "public.kontrak.tahun is date but `type:` says smallint",
        ),
    ]


@pytest.mark.parametrize("system", SYSTEMS)
def test_examples_read_only_columns_the_source_schema_has(mset: MappingSet, system: str) -> None:
    sources = parse_sql(MAPPINGS / "sql" / f"{system}.sql")
    full = replica_identity_full(MAPPINGS / "sql" / f"{system}.sql")
    assert full <= set(sources)
    assert mset.source_tables(system) == frozenset(sources)
    for doc in mset.documents:
        if doc.spec.source != system:
            continue
        for table in doc.spec.tables:
            have = sources[table.source_table].columns
            for value in table.columns.values():
                read = [value] if isinstance(value, str) else [value.from_, *(value.concat or ())]
                for column in read:
                    assert not isinstance(column, str) or column in have, (table.from_, column)
            # A delete must carry what the target key needs. Under REPLICA IDENTITY DEFAULT
            # it carries only the source primary key (the first key of a table here), so the
            # key comes from it; a table with REPLICA IDENTITY FULL logs the whole old row,
            # and any unique key of it will do (else two source rows could share a target row).
            if table.delete != "ignore":
                keys = sources[table.source_table].unique_keys
                allowed = keys if table.source_table in full else keys[:1]
                key_sources = {
                    v if isinstance(v, str) else v.from_
                    for k, v in table.columns.items()
                    if k in table.key
                }
                assert any(key_sources <= set(k) for k in allowed), (table.from_, allowed)


def test_replica_identity_full_where_the_key_is_not_the_primary_key(mset: MappingSet) -> None:
    """sipkd.daftunit: kode_opd comes from the unique kdunit, so the table needs FULL."""
    full = replica_identity_full(MAPPINGS / "sql" / "sipkd.sql")
    assert full == {"sipkd.daftunit"}
    daftunit = parse_sql(MAPPINGS / "sql" / "sipkd.sql")["sipkd.daftunit"]
    assert daftunit.unique_keys == (("unitkey",), ("kdunit",))
    for system in ("e_planning", "e_budgeting", "e_kontrak"):
        assert replica_identity_full(MAPPINGS / "sql" / f"{system}.sql") == set()
    (writer,) = [w for w in mset.targets()["public.opd"].writers if w.source == "sipkd"]
    assert writer.source_table == "sipkd.daftunit"


def test_json_schema_file_is_current() -> None:
    shipped = json.loads((MAPPINGS / "tunggal-mapping.schema.json").read_text())
    assert shipped == json_schema(), "regenerate: see tunggal.mapping.spec.json_schema"


def event(source: str, table: str, op: str, after: Any = None, before: Any = None) -> ChangeEvent:
    return ChangeEvent(source, table, Op(op), None, before, after, 7, 1_700_000_000_000_000)


def test_e_planning_kegiatan(mset: MappingSet) -> None:
    row = {
        "kode": "1.01.01.2.01",
        "nama": " penyediaan gaji ",
        "kd_program": "1.01.01",
        "tahun": 2024,
        "tgl_mulai": date(2024, 3, 1),
        "tgl_selesai": None,
        "status_code": 2,
        "catatan": None,
    }
    (upsert,) = mset.map_event(event("e_planning", "public.kegiatan", "c", row))
    assert isinstance(upsert, Upsert)
    assert upsert.values == {
        "kode_kegiatan": "1.01.01.2.01",
        "nama_kegiatan": "PENYEDIAAN GAJI",
        "label": "1.01.01.2.01 -  penyediaan gaji ",
        "kode_program": "1.01.01",
        "tahun": 2024,
        "tanggal_mulai": date(2024, 3, 1),
        "tanggal_selesai": None,
        "bulan_mulai": 3,
        "status": "DISETUJUI",
        "sumber_data": "e-Planning",
    }
    old = {**row, "tahun": 2019}
    assert mset.map_event(event("e_planning", "public.kegiatan", "r", old)) == []


def test_e_budgeting(mset: MappingSet) -> None:
    row = {
        "kd_keg": "1.01.01.2.01 ",
        "thn": "2025",
        "pagu_murni": Decimal("1500000000.00"),
        "pagu_perubahan": None,
        "kd_sumber_dana": "dau",
        "tgl_input": datetime(2024, 11, 1, 2, 0, tzinfo=UTC),
    }
    (upsert,) = mset.map_event(event("e_budgeting", "budget.rka_kegiatan", "c", row))
    assert isinstance(upsert, Upsert)
    assert upsert.key == ("1.01.01.2.01", 2025)
    assert upsert.values["pagu_perubahan"] == 0
    assert upsert.values["sumber_dana"] == "Dana Alokasi Umum"
    assert mset.map_event(event("e_budgeting", "budget.pagu_indikatif", "t")) == [
        Truncate("public.pagu_indikatif", "e_budgeting", 7, 1_700_000_000_000_000, soft=False)
    ]
    assert mset.map_event(event("e_budgeting", "budget.rka_kegiatan", "t")) == []


def test_e_kontrak_drafts_stay_out(mset: MappingSet) -> None:
    row = {
        "no_kontrak": "027/SPK/DPUPR/2024 ",
        "kd_sub_kegiatan": "1.03.10.2.01.01",
        "npwp_penyedia": "01.234.567.8-901.000",
        "nama_penyedia": "cv karya mandiri",
        "nm_pekerjaan": "Rehabilitasi Jalan",
        "nilai_kontrak": Decimal("875000000.00"),
        "tgl_kontrak": date(2024, 4, 2),
        "tgl_mulai_kerja": date(2024, 4, 3),
        "tgl_akhir_kerja": date(2024, 8, 30),
        "status_kontrak": "D",
        "metode": 4,
    }
    table = "kontrak.t_kontrak"
    assert mset.map_event(event("e_kontrak", table, "c", row)) == []
    (upsert,) = mset.map_event(event("e_kontrak", table, "u", {**row, "status_kontrak": "A"}))
    assert isinstance(upsert, Upsert)
    assert upsert.key == ("027/SPK/DPUPR/2024",)
    assert (upsert.values["status"], upsert.values["metode_pengadaan"]) == (
        "AKTIF",
        "Pengadaan Langsung",
    )
    assert upsert.values["tahun"] == 2024
    assert mset.map_event(event("e_kontrak", table, "u", row)) == [
        Delete(
            "public.kontrak", ("027/SPK/DPUPR/2024",), "e_kontrak", 7, 1_700_000_000_000_000, False
        )
    ]


def test_sipkd(mset: MappingSet) -> None:
    unit = {
        "unitkey": "12_",
        "kdunit": "1.01.01             ",
        "nmunit": "Dinas Pendidikan",
        "akrounit": "DISDIK",
        "alamat": None,
        "kdlevel": 3,
        "type": "D",
    }
    (upsert,) = mset.map_event(event("sipkd", "sipkd.daftunit", "r", unit))
    assert isinstance(upsert, Upsert)
    assert upsert.table == "public.opd" and upsert.key == ("1.01.01",)
    assert upsert.values["sumber_data"] == "SIPKD"
    header = {**unit, "type": "H"}
    assert mset.map_event(event("sipkd", "sipkd.daftunit", "r", header)) == []
    # A delete (REPLICA IDENTITY FULL: the whole old row) withdraws SIPKD's values of the OPD;
    # e-Planning's stay, by the merge rules. So does a unit that becomes a header, and one
    # whose kdunit changes leaves its old code.
    withdraw = Delete("public.opd", ("1.01.01",), "sipkd", 7, 1_700_000_000_000_000, False)
    assert mset.map_event(event("sipkd", "sipkd.daftunit", "d", before=unit)) == [withdraw]
    assert mset.map_event(event("sipkd", "sipkd.daftunit", "d", before=header)) == []
    assert mset.map_event(event("sipkd", "sipkd.daftunit", "u", header, unit)) == [withdraw]
    moved = {**unit, "kdunit": "1.01.02             "}
    (gone, upsert) = mset.map_event(event("sipkd", "sipkd.daftunit", "u", moved, unit))
    assert gone == withdraw
    assert isinstance(upsert, Upsert) and upsert.key == ("1.01.02",)

    sp2d = {
        "nosp2d": "00123/SP2D/LS/2024",
        "unitkey": "12_",
        "kdkegunit": "1.01.01.2.01      ",
        "tglsp2d": date(2024, 6, 30),
        "nilai": Decimal("25000000.00"),
        "keperluan": "Belanja ATK ",
        "kdstatus": "3",
        "tglvalid": datetime(2024, 6, 30, 18, 15, tzinfo=UTC),
    }
    (upsert,) = mset.map_event(event("sipkd", "sipkd.sp2d", "c", sp2d))
    assert isinstance(upsert, Upsert)
    assert upsert.values["jam_validasi"] == 1  # 18:15 UTC is 01:15 WIB the next day
    assert (upsert.values["tahun"], upsert.values["bulan"]) == (2024, 6)
    assert upsert.values["dihapus_pada"] is None
    partial = {k: (v if k == "nosp2d" else None) for k, v in sp2d.items()}
    assert mset.map_event(event("sipkd", "sipkd.sp2d", "d", before=partial)) == [
        Delete("public.realisasi", ("00123/SP2D/LS/2024",), "sipkd", 7, 1_700_000_000_000_000, True)
    ]


def test_hints_for_the_examples(mset: MappingSet) -> None:
    target = parse_sql(MAPPINGS / "sql" / "target.sql")
    types = {name: info.columns for name, info in target.items()}
    assert mset.hints("e_budgeting", "budget.rka_kegiatan", types) == {
        "kd_keg": "varchar(30)",
        "thn": "integer",
        "pagu_murni": "numeric(18,2)",
        "pagu_perubahan": "numeric(18,2)",
        "tgl_input": "timestamptz",
    }
