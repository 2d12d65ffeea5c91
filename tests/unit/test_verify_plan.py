"""Which mappings `tunggal verify` computes in SQL on the source (`reconcile.plan`): only those
whose values the decoder and the sink leave exactly as the source holds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunggal.events.modes import ConnectorModes
from tunggal.mapping import load_mappings
from tunggal.reconcile.pgsource import SourceTable, pk_condition
from tunggal.reconcile.plan import entry_pushdown, source_expression
from tunggal.reconcile.repair import SIGNAL_DATA_LIMIT, plan_conditions, signal_size

MODES = ConnectorModes(interval_handling="string")


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("bigint", "bigint", "plain"),
        ("integer", "bigint", "cast"),
        ("bigint", "integer", None),  # narrowing: the sink would refuse what does not fit
        ("integer", "numeric(18,2)", "cast"),
        ("numeric(12,2)", "numeric(18,2)", "cast"),
        ("character varying(50)", "text", "cast"),
        ("text", "text", "plain"),
        ("character(3)", "text", None),  # char -> text drops the padding; Debezium keeps it
        ("character(3)", "character(3)", "plain"),
        ("double precision", "double precision", "plain"),
        ("real", "double precision", None),  # 0.1::real::float8 is not 0.1
        ("timestamp(3) without time zone", "timestamp without time zone", "cast"),
        ("time with time zone", "time with time zone", None),  # Debezium moves it to UTC
        ("interval", "interval", "plain"),
        ("jsonb", "jsonb", "plain"),
        ("json", "jsonb", None),
        ("integer[]", "integer[]", "plain"),
        ("integer[]", "bigint[]", None),
        ("mood", "mood", None),  # a type of the source's own
        ("money", "money", None),
    ],
)
def test_source_expression(source: str, target: str, expected: str | None) -> None:
    found = source_expression("c", source, target, MODES)
    if expected is None:
        assert found is None
    else:
        text = found.as_string(None) if found is not None else None
        assert text == ('t."c"' if expected == "plain" else f't."c"::{target}')


def test_intervals_need_the_exact_mode() -> None:
    assert source_expression("c", "interval", "interval", ConnectorModes()) is None


MAPPING = """
source: s
tables:
  - from: public.a
    to: public.a
    key: [id]
    columns: {id: id, nama: nama, sumber: {const: s}}
  - from: public.b
    to: public.b
    key: [id]
    columns: {id: id, nama: {from: nama, transform: [trim]}}
  - from: public.c
    to: public.c
    key: [id]
    filter: 'row.id > 0'
    columns: {id: id, nama: nama}
  - from: public.d
    to: public.d
    key: [kode]
    columns: {kode: {expr: 'row.a + row.b'}, nama: nama}
"""


@pytest.fixture
def entries(tmp_path: Path) -> dict[str, object]:
    path = tmp_path / "s.yaml"
    path.write_text(MAPPING)
    mappings = load_mappings([path])
    return {t.source_table: t for doc in mappings.documents for t in doc.spec.tables}


def table(name: str) -> SourceTable:
    return SourceTable(
        name, {"id": "bigint", "nama": "text", "a": "text", "b": "text"}, frozenset(), ("id",), 0, 0
    )


TYPES = {"id": "bigint", "nama": "text", "sumber": "text", "kode": "text"}


def test_copies_and_constants_go_to_sql(entries: dict[str, object]) -> None:
    rows, key = entry_pushdown(
        entries["public.a"], table("public.a"), TYPES, ["nama", "sumber"], MODES
    )  # type: ignore[arg-type]
    assert rows is not None and key is not None
    assert rows["sumber"].as_string(None) == "'s'::text"


def test_transforms_and_filters_go_through_the_mapping(entries: dict[str, object]) -> None:
    rows, key = entry_pushdown(entries["public.b"], table("public.b"), TYPES, ["nama"], MODES)  # type: ignore[arg-type]
    assert rows is None and key is not None  # the key is still a copy: rows found by key
    rows, key = entry_pushdown(entries["public.c"], table("public.c"), TYPES, ["nama"], MODES)  # type: ignore[arg-type]
    assert rows is None and key is not None
    rows, key = entry_pushdown(entries["public.d"], table("public.d"), TYPES, ["nama"], MODES)  # type: ignore[arg-type]
    assert rows is None and key is None  # a computed key: the mapping finds the rows


def test_repair_asks_once_and_reads_whole_what_does_not_fit() -> None:
    types = {"id": "bigint"}
    small = pk_condition(("id",), types, [("1",), ("2",)])
    assert small == "\"id\" IN ('1'::bigint, '2'::bigint)"
    large = pk_condition(("id",), types, [(str(i),) for i in range(3000)])
    plan = plan_conditions({"public.a": small, "public.b": large})
    assert plan == {"public.a": small, "public.b": None}  # b is read again whole
    assert signal_size(list(plan), {"public.a": small}) <= SIGNAL_DATA_LIMIT
    assert plan_conditions({"public.a": small}) == {"public.a": small}
    two = pk_condition(("a", "b"), {"a": "text", "b": "date"}, [("x'y", "2024-01-01")])
    assert two == "(\"a\", \"b\") IN (('x''y'::text, '2024-01-01'::date))"
