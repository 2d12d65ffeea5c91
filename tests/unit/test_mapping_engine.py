"""map_event semantics, with small mapping files written per test."""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tunggal.errors import MappingError, PoisonEventError
from tunggal.events.model import UNAVAILABLE, ChangeEvent, Op
from tunggal.mapping import Delete, MappingSet, Truncate, Upsert, load_mappings


def load(tmp_path: Path, text: str, name: str = "m.yaml") -> MappingSet:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_mappings([path])


def event(
    op: str,
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    key: dict[str, Any] | None = None,
    table: str = "public.src",
    source: str = "s",
) -> ChangeEvent:
    return ChangeEvent(source, table, Op(op), key, before, after, 42, 1_700_000_000_000_000)


BASIC = textwrap.dedent("""\
    source: s
    tables:
      - from: public.src
        to: dst
        key: [id]
        columns:
          id: kode
          nama: {from: nama, transform: [trim, upper]}
    """)


def test_create_and_read_become_upserts(tmp_path: Path) -> None:
    m = load(tmp_path, BASIC)
    for op in ("c", "r"):
        assert m.map_event(event(op, {"kode": "K1", "nama": " dinas ", "extra": 1})) == [
            Upsert(
                table="public.dst",
                key=("K1",),
                values={"id": "K1", "nama": "DINAS"},
                source="s",
                position=42,
                commit_ts_us=1_700_000_000_000_000,
            )
        ]


def test_unknown_tables_and_sources_map_to_nothing(tmp_path: Path) -> None:
    m = load(tmp_path, BASIC)
    assert m.map_event(event("c", {"kode": "K1"}, table="public.other")) == []
    assert m.map_event(event("c", {"kode": "K1", "nama": "x"}, source="other")) == []


def test_update_without_key_change_is_one_upsert(tmp_path: Path) -> None:
    m = load(tmp_path, BASIC)
    ops = m.map_event(event("u", {"kode": "K1", "nama": "b"}, before={"kode": "K1", "nama": "a"}))
    assert [type(op) for op in ops] == [Upsert]


def test_key_change_deletes_the_old_key_first(tmp_path: Path) -> None:
    m = load(tmp_path, BASIC)
    ops = m.map_event(event("u", {"kode": "K2", "nama": "x"}, before={"kode": "K1", "nama": "x"}))
    assert ops == [
        Delete("public.dst", ("K1",), "s", 42, 1_700_000_000_000_000, soft=False),
        Upsert("public.dst", ("K2",), {"id": "K2", "nama": "X"}, "s", 42, 1_700_000_000_000_000),
    ]


def test_key_change_with_delete_ignore_keeps_the_old_row(tmp_path: Path) -> None:
    m = load(tmp_path, BASIC.replace("key: [id]", "key: [id]\n    delete: ignore"))
    ops = m.map_event(event("u", {"kode": "K2", "nama": "x"}, before={"kode": "K1", "nama": "x"}))
    assert [type(op) for op in ops] == [Upsert]


def test_update_with_partial_before_image_is_one_upsert(tmp_path: Path) -> None:
    # REPLICA IDENTITY DEFAULT: a before image holds the key columns only.
    m = load(tmp_path, BASIC)
    ops = m.map_event(event("u", {"kode": "K1", "nama": "x"}, before={"kode": None}))
    assert [type(op) for op in ops] == [Upsert]


@pytest.mark.parametrize(
    ("policy", "expected"), [("hard", [False]), ("soft", [True]), ("ignore", [])]
)
def test_delete_policies(tmp_path: Path, policy: str, expected: list[bool]) -> None:
    m = load(tmp_path, BASIC.replace("key: [id]", f"key: [id]\n    delete: {policy}"))
    assert m.map_event(event("d", before={"kode": "K1", "nama": "x"})) == [
        Delete("public.dst", ("K1",), "s", 42, 1_700_000_000_000_000, soft=soft)
        for soft in expected
    ]


def test_soft_delete_upserts_clear_the_soft_delete_column(tmp_path: Path) -> None:
    text = BASIC.replace("key: [id]", "key: [id]\n    delete: soft\n    soft_delete_column: gone")
    m = load(tmp_path, text)
    (upsert,) = m.map_event(event("c", {"kode": "K1", "nama": "x"}))
    assert isinstance(upsert, Upsert)
    assert upsert.values == {"id": "K1", "nama": "X", "gone": None}
    assert m.targets()["public.dst"].soft_delete_column == "gone"


def test_delete_key_comes_from_before_then_from_the_event_key(tmp_path: Path) -> None:
    m = load(tmp_path, BASIC)
    by_key = m.map_event(event("d", key={"kode": "K9"}))
    partial = m.map_event(event("d", before={"kode": None, "nama": None}, key={"kode": "K8"}))
    assert [op.key for op in by_key + partial if isinstance(op, Delete)] == [("K9",), ("K8",)]


def test_delete_without_any_key_is_a_mapping_error(tmp_path: Path) -> None:
    m = load(tmp_path, BASIC)
    with pytest.raises(MappingError, match="neither a before image nor a key"):
        m.map_event(event("d"))


def test_delete_whose_target_key_is_not_in_a_partial_image_names_replica_identity(
    tmp_path: Path,
) -> None:
    text = BASIC.replace("id: kode", "id: kode\n      nomor: nomor").replace(
        "key: [id]", "key: [nomor]"
    )
    m = load(tmp_path, text)
    with pytest.raises(MappingError) as info:
        m.map_event(event("d", before={"kode": "K1", "nomor": None, "nama": None}))
    text = str(info.value)
    assert "m.yaml:8: s public.src -> public.dst.nomor: key column is NULL" in text
    assert "REPLICA IDENTITY FULL" in text
    assert isinstance(info.value, PoisonEventError)
    assert (info.value.source, info.value.table) == ("s", "public.src")


@pytest.mark.parametrize(("policy", "soft"), [("hard", False), ("soft", True)])
def test_truncate_delete_source_rows(tmp_path: Path, policy: str, soft: bool) -> None:
    text = BASIC.replace(
        "key: [id]", f"key: [id]\n    delete: {policy}\n    truncate: delete_source_rows"
    )
    m = load(tmp_path, text)
    assert m.map_event(event("t")) == [
        Truncate("public.dst", "s", 42, 1_700_000_000_000_000, soft=soft)
    ]


def test_truncate_is_ignored_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, BASIC).map_event(event("t")) == []


# --- filters ----------------------------------------------------------------------------------

FILTERED = textwrap.dedent("""\
    source: s
    tables:
      - from: public.src
        to: dst
        key: [id]
        filter: 'row.tahun >= 2020'
        columns:
          id: kode
          tahun: tahun
    """)


def test_filter_drops_inserts_that_fail_it(tmp_path: Path) -> None:
    m = load(tmp_path, FILTERED)
    assert m.map_event(event("c", {"kode": "K1", "tahun": 2019})) == []
    assert len(m.map_event(event("r", {"kode": "K1", "tahun": 2020}))) == 1


def test_update_leaving_the_filter_deletes_the_row(tmp_path: Path) -> None:
    m = load(tmp_path, FILTERED)
    ops = m.map_event(event("u", {"kode": "K1", "tahun": 2019}))
    assert ops == [Delete("public.dst", ("K1",), "s", 42, 1_700_000_000_000_000, soft=False)]


def test_update_leaving_the_filter_with_a_key_change_deletes_both_keys(tmp_path: Path) -> None:
    m = load(tmp_path, FILTERED)
    ops = m.map_event(
        event("u", {"kode": "K2", "tahun": 2019}, before={"kode": "K1", "tahun": 2021})
    )
    assert [(type(op), op.key) for op in ops if isinstance(op, Delete)] == [
        (Delete, ("K1",)),
        (Delete, ("K2",)),
    ]


def test_delete_of_a_row_that_clearly_failed_the_filter_is_skipped(tmp_path: Path) -> None:
    m = load(tmp_path, FILTERED)
    assert m.map_event(event("d", before={"kode": "K1", "tahun": 2019})) == []
    assert len(m.map_event(event("d", before={"kode": "K1", "tahun": 2021}))) == 1


def test_delete_with_a_partial_before_image_is_not_filtered(tmp_path: Path) -> None:
    # tahun is NULL only because the image is partial: deleting is the safe side.
    m = load(tmp_path, FILTERED)
    ops = m.map_event(event("d", before={"kode": "K1", "tahun": None}))
    assert [op.key for op in ops if isinstance(op, Delete)] == [("K1",)]


def test_filter_that_does_not_give_a_boolean_is_a_mapping_error(tmp_path: Path) -> None:
    m = load(tmp_path, FILTERED.replace("row.tahun >= 2020", "row.tahun"))
    with pytest.raises(MappingError, match=r"m\.yaml:6: .*dst\.filter: the filter must give"):
        m.map_event(event("c", {"kode": "K1", "tahun": 2021}))


def test_filter_over_null_is_a_mapping_error_with_the_expression(tmp_path: Path) -> None:
    m = load(tmp_path, FILTERED)
    with pytest.raises(MappingError, match=re.escape("CEL 'row.tahun >= 2020' failed")):
        m.map_event(event("c", {"kode": "K1", "tahun": None}))


def test_filter_on_dates_and_decimals(tmp_path: Path) -> None:
    # Dates reach CEL as "YYYY-MM-DD" text, Decimals as doubles.
    text = FILTERED.replace(
        "row.tahun >= 2020", 'row.tgl >= "2024-01-01" && row.nilai > 1000.0'
    ).replace("tahun: tahun", "tgl: tgl")
    m = load(tmp_path, text)
    row = {"kode": "K", "tgl": date(2024, 3, 1), "nilai": Decimal("1500.50")}
    assert len(m.map_event(event("c", row))) == 1
    assert m.map_event(event("c", {**row, "tgl": date(2023, 12, 31)})) == []


def test_filter_using_has_gets_the_whole_row(tmp_path: Path) -> None:
    m = load(tmp_path, FILTERED.replace("row.tahun >= 2020", "has(row.tahun) && row.tahun > 0"))
    assert len(m.map_event(event("c", {"kode": "K", "tahun": 1, "tgl": date(2024, 1, 1)}))) == 1


# --- derived columns --------------------------------------------------------------------------

DERIVED = textwrap.dedent("""\
    source: s
    tables:
      - from: public.src
        to: dst
        key: [id]
        columns:
          id: kode
          label: {expr: 'row.kode + " - " + row.nama'}
          uraian: {concat: [kode, {const: " / "}, nama, {const: " / "}, nilai]}
          sumber: {const: e-Planning}
          bulan: {from: tgl, transform: [{date_part: month}]}
          status: {from: st, lookup: {"1": AKTIF, 2: NONAKTIF}, default: LAIN}
          nilai: {from: nilai, default_if_null: 0, cast: numeric}
          tahun: {from: thn, transform: [trim, {cast: integer}]}
          waktu: {expr: 'timestamp(row.tgl + "T07:00:00Z")', type: timestamp}
    """)


def test_every_kind_of_derived_column(tmp_path: Path) -> None:
    m = load(tmp_path, DERIVED)
    row = {
        "kode": "K1",
        "nama": "Dinas",
        "tgl": date(2024, 5, 17),
        "st": 2,
        "nilai": None,
        "thn": " 2024 ",
    }
    (upsert,) = m.map_event(event("c", row))
    assert isinstance(upsert, Upsert)
    assert upsert.values == {
        "id": "K1",
        "label": "K1 - Dinas",
        "uraian": "K1 / Dinas / ",
        "sumber": "e-Planning",
        "bulan": 5,
        "status": "NONAKTIF",
        "nilai": Decimal(0),
        "tahun": 2024,
        "waktu": datetime(2024, 5, 17, 7, 0),  # naive: the column is `timestamp`
    }
    (other,) = m.map_event(event("c", {**row, "st": "9", "nilai": Decimal("12.50")}))
    assert isinstance(other, Upsert)
    assert other.values["status"] == "LAIN"
    assert other.values["uraian"] == "K1 / Dinas / 12.50"


def test_failing_cast_names_file_line_table_column_and_value(tmp_path: Path) -> None:
    m = load(tmp_path, DERIVED)
    row = {"kode": "K1", "nama": "x", "tgl": date(2024, 1, 1), "st": 1, "nilai": 1, "thn": "20x4"}
    with pytest.raises(MappingError) as info:
        m.map_event(event("c", row))
    assert str(info.value) == (
        f"{tmp_path / 'm.yaml'}:14: s public.src -> public.dst.tahun: cannot cast str to integer: "
        "not a whole number; value '20x4'"
    )


def test_lookup_without_default_fails_on_unknown_codes(tmp_path: Path) -> None:
    m = load(tmp_path, DERIVED.replace(", default: LAIN", ""))
    row = {"kode": "K1", "nama": "x", "tgl": date(2024, 1, 1), "st": 7, "nilai": 1, "thn": "1"}
    with pytest.raises(MappingError, match=r"status: not in the lookup table \(known: 1, 2\)"):
        m.map_event(event("c", row))


def test_missing_source_column_suggests_the_near_one(tmp_path: Path) -> None:
    m = load(tmp_path, BASIC)
    with pytest.raises(
        MappingError, match=r"source column `nama` is not in the event \(did you mean `namaa`"
    ):
        m.map_event(event("c", {"kode": "K1", "namaa": "x"}))
    with pytest.raises(MappingError, match=r"dst\.id: source column `kode` is not in the event"):
        m.map_event(event("c", {"nama": "x"}))


def test_null_key_is_a_mapping_error(tmp_path: Path) -> None:
    m = load(tmp_path, BASIC)
    with pytest.raises(MappingError, match=r"dst\.id: key column is NULL in the new row"):
        m.map_event(event("c", {"kode": None, "nama": "x"}))


# --- unchanged TOAST values -------------------------------------------------------------------


def test_unavailable_passes_through_renames_and_spreads_through_derived_columns(
    tmp_path: Path,
) -> None:
    m = load(tmp_path, DERIVED)
    row = {
        "kode": "K1",
        "nama": UNAVAILABLE,
        "tgl": date(2024, 1, 1),
        "st": UNAVAILABLE,
        "nilai": 5,
        "thn": "2024",
    }
    (upsert,) = m.map_event(event("u", row))
    assert isinstance(upsert, Upsert)
    values = upsert.values
    assert values["label"] is UNAVAILABLE  # expr reading nama
    assert values["uraian"] is UNAVAILABLE  # concat reading nama
    assert values["status"] is UNAVAILABLE  # lookup of st
    assert values["bulan"] == 1 and values["nilai"] == Decimal(5)

    plain = load(
        tmp_path, BASIC.replace("nama: {from: nama, transform: [trim, upper]}", "nama: nama")
    )
    (upsert,) = plain.map_event(event("u", {"kode": "K1", "nama": UNAVAILABLE}))
    assert isinstance(upsert, Upsert)
    assert upsert.values["nama"] is UNAVAILABLE


def test_unavailable_key_or_filter_column_is_a_mapping_error(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="key column is unavailable"):
        load(tmp_path, BASIC).map_event(event("u", {"kode": UNAVAILABLE, "nama": "x"}))
    with pytest.raises(MappingError, match="unchanged TOAST value"):
        load(tmp_path, FILTERED).map_event(event("u", {"kode": "K", "tahun": UNAVAILABLE}))


# --- one source table, several targets; one target, several sources --------------------------


def test_one_source_table_can_feed_several_targets(tmp_path: Path) -> None:
    text = BASIC + textwrap.indent(
        textwrap.dedent("""\
          - from: public.src
            to: arsip.dst
            key: [kode]
            columns:
              kode: kode
        """),
        "  ",
    )
    m = load(tmp_path, text)
    ops = m.map_event(event("c", {"kode": "K1", "nama": "x"}))
    assert [(op.table, op.key) for op in ops if isinstance(op, Upsert)] == [
        ("public.dst", ("K1",)),
        ("arsip.dst", ("K1",)),
    ]


def test_writers_of_one_target_share_its_key_order(tmp_path: Path) -> None:
    a = """\
        source: a
        tables:
          - from: public.src
            to: opd
            key: [kode, tahun]
            columns: {kode: kd, tahun: thn}
        """
    b = a.replace("source: a", "source: b").replace("[kode, tahun]", "[tahun, kode]")
    (tmp_path / "a.yaml").write_text(textwrap.dedent(a))
    (tmp_path / "b.yaml").write_text(textwrap.dedent(b))
    m = load_mappings([tmp_path])
    target = m.targets()["public.opd"]
    assert target.key == ("kode", "tahun")
    assert [w.source for w in target.writers] == ["a", "b"]
    (upsert,) = m.map_event(event("c", {"kd": "1.01", "thn": 2024}, source="b"))
    assert upsert.key == ("1.01", 2024)  # type: ignore[union-attr]


def test_renames_are_compiled_safely_for_any_source_column_name(tmp_path: Path) -> None:
    """Renames run as a generated dict display: source names with quotes, backslashes or
    newlines are data, never code, and a missing one is still reported by name."""
    m = load(
        tmp_path,
        """\
        source: s
        tables:
          - from: public.src
            to: dst
            key: [id]
            columns: {id: "a'b", nama: "c\\"d", kota: "e\\nf"}
        """,
    )
    (upsert,) = m.map_event(event("c", {"a'b": 1, 'c"d': "x", "e\nf": "y", "other": 2}))
    assert upsert.values == {"id": 1, "nama": "x", "kota": "y"}  # type: ignore[union-attr]
    assert upsert.key == (1,)  # type: ignore[union-attr]
    with pytest.raises(MappingError, match="source column `e\\nf` is not in the event"):
        m.map_event(event("c", {"a'b": 1, 'c"d': "x"}))


def test_sources_tables_and_content_hash(tmp_path: Path) -> None:
    m = load(tmp_path, BASIC)
    assert m.sources() == frozenset({"s"})
    assert m.source_tables("s") == frozenset({"public.src"})
    assert m.source_tables("other") == frozenset()
    assert m.files == (str(tmp_path / "m.yaml"),)
    same = load(tmp_path, BASIC)
    changed = load(tmp_path, BASIC + "\n# a comment\n")
    assert m.content_hash == same.content_hash != changed.content_hash
    assert len(m.content_hash) == 64


def test_timestamps_from_cel_keep_their_zone_for_timestamptz(tmp_path: Path) -> None:
    text = DERIVED.replace("type: timestamp}", "type: timestamptz}")
    m = load(tmp_path, text)
    row = {"kode": "K", "nama": "x", "tgl": date(2024, 1, 2), "st": 1, "nilai": 1, "thn": "1"}
    (upsert,) = m.map_event(event("c", row))
    assert upsert.values["waktu"] == datetime(2024, 1, 2, 7, tzinfo=UTC)  # type: ignore[union-attr]


# --- hints for schemaless decoding ------------------------------------------------------------


def test_hints(tmp_path: Path) -> None:
    m = load(
        tmp_path,
        """\
        source: s
        tables:
          - from: public.src
            to: dst
            key: [id]
            columns:
              id: kode
              nama: {from: nama, transform: [trim]}
              tahun: {from: thn, cast: integer}
              bulan: {from: tgl, transform: [{date_part: month}]}
              status: {from: st, lookup: {"1": A}}
              pagu: {from: pagu, type: "numeric(18,2)"}
              dua: {from: ganda, type: date}
              tiga: {from: ganda, type: text}
        """,
    )
    actual = {"public.dst": {"id": "character varying(30)", "nama": "character varying(200)"}}
    hints = m.hints("s", "public.src", actual)
    assert hints == {
        "kode": "character varying(30)",  # copied: the target column's type
        "nama": "character varying(200)",  # trim keeps the type
        "thn": "integer",  # cast first: the cast's type
        "pagu": "numeric(18,2)",  # not in the database: the declared type
    }
    assert "ganda" not in hints  # mapped two ways that disagree
    assert "tgl" not in hints and "st" not in hints
    assert m.hints("s", "public.other", {}) == {}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("hard", [False]), ("soft", [True]), ("ignore", [])],
)
def test_end_of_snapshot_removes_older_rows_of_every_table_by_delete_policy(
    tmp_path: Path, policy: str, expected: list[bool]
) -> None:
    """Rows written before this snapshot and not read by it again were deleted in the source
    (e.g. while a daemon killed mid-snapshot was down): the completed snapshot removes them,
    in every table of the source, whichever table its last record came from."""
    soft = "    soft_delete_column: dihapus\n" if policy == "soft" else ""
    text = BASIC.replace("    key: [id]\n", f"    key: [id]\n    delete: {policy}\n{soft}")
    text += "  - from: public.lain\n    to: lain\n    key: [id]\n    columns: {id: id}\n"
    m = load(tmp_path, text)

    def last(table: str, after: dict[str, Any]) -> ChangeEvent:
        return ChangeEvent(
            "s", table, Op.READ, None, None, after, 42, 7, snapshot=True, snapshot_done=True
        )

    ops = m.map_event(last("public.src", {"kode": "K9", "nama": "x"}))
    assert isinstance(ops[0], Upsert) and ops[0].key == ("K9",)
    truncates = {op.table: op for op in ops[1:] if isinstance(op, Truncate)}
    assert truncates["public.lain"].soft is False  # the other table keeps the hard default
    assert [truncates[t].soft for t in truncates if t == "public.dst"] == expected
    assert all((t.source, t.position) == ("s", 42) for t in truncates.values())
    # No watermark: changes of transactions running at the snapshot's start stream after it.
    assert not any(t.watermark for t in truncates.values())
    # The last record of an unmapped table still ends the snapshot.
    unmapped = m.map_event(last("public.unmapped", {"id": 1}))
    assert {op.table for op in unmapped} == set(truncates)
    # Any other snapshot row is a plain upsert.
    assert len(m.map_event(event("r", {"kode": "K1", "nama": "y"}))) == 1
