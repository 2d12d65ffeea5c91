"""decode()'s fast path gives exactly what the reference decoder gives: the same event, or the
same error.

`decode` tries `_decode_fast` and falls back to `decode_reference`; every test here compares
`decode` with `decode_reference` called directly, down to the types and order of row values
(`1` vs `True`, `Decimal('1.0')` vs `Decimal('1.00')`), and the synthetic workload also checks
that the fast path handled its events rather than passing them all on.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_decode_fuzz import ENVELOPES, FUZZ, HINTS, JSON, MODES, mutate, paths
from tunggal.devtools.synth import NARROW, WIDE, Shape, mixed_workload
from tunggal.errors import DecodeError
from tunggal.events import UNAVAILABLE_PLACEHOLDER, ChangeEvent, ConnectorModes, Op, RawEvent
from tunggal.events.decode import _decode_fast, _last_commit_lsn, decode, decode_reference
from tunggal.events.values import Invalid

DEFAULT_MODES = ConnectorModes()
Hints = Callable[[str], Mapping[str, str] | None]


def outcome(
    decoder: Callable[..., ChangeEvent | None],
    raw: RawEvent,
    modes: ConnectorModes = DEFAULT_MODES,
    hints: Hints | None = None,
) -> tuple[Any, ...]:
    """What a decoder made of `raw`, in a form that tells apart values that compare equal."""
    try:
        event = decoder(raw, source="s", modes=modes, hints=hints)
    except DecodeError as exc:
        return ("error", type(exc).__name__, str(exc), exc.source, exc.table)
    if event is None:
        return ("none",)
    assert event.raw is raw
    return ("event", event, strict(event))


def strict(event: ChangeEvent) -> str:
    # repr keeps what == forgets: dict order, 1 vs True vs 1.0, a Decimal's exponent, tzinfo.
    return repr(
        (event, [type(v) for row in (event.key, event.before, event.after) for v in row or {}])
    )


def same(raw: RawEvent, modes: ConnectorModes = DEFAULT_MODES, hints: Hints | None = None) -> bool:
    """Assert decode == decode_reference for `raw`; True when the fast path took it."""
    expected = outcome(decode_reference, raw, modes, hints)
    assert outcome(decode, raw, modes, hints) == expected
    fast = _decode_fast(raw, "s", modes, hints) if raw.value is not None else None
    if fast is not None:
        assert ("event", fast, strict(fast)) == expected
    return fast is not None


def test_strict_tells_apart_what_equality_does_not() -> None:
    def event(value: Any) -> ChangeEvent:
        return ChangeEvent("s", "public.t", Op.CREATE, None, None, {"v": value}, 1, 1)

    assert event(1) == event(True) and strict(event(1)) != strict(event(True))
    assert event(Decimal("1.0")) == event(Decimal("1.00"))
    assert strict(event(Decimal("1.0"))) != strict(event(Decimal("1.00")))


# -- captured Debezium events -------------------------------------------------------------------


@pytest.mark.parametrize("hinted", [True, False])
@pytest.mark.parametrize("as_bytes", [False, True])
@pytest.mark.parametrize(
    "modes",
    [DEFAULT_MODES, ConnectorModes(decimal_handling="precise", time_precision="isostring")],
)
def test_captured_events(hinted: bool, as_bytes: bool, modes: ConnectorModes) -> None:
    taken = 0
    for line in ENVELOPES:
        key, value = line["key"], line["value"]
        if as_bytes:
            key = None if key is None else key.encode()
            value = value.encode()
        raw = RawEvent(line["destination"], key, value)
        taken += same(raw, modes, HINTS.get if hinted else None)
    assert taken > 0  # the schemaless half, unless a value does not convert


# -- the benchmark's synthetic workload ---------------------------------------------------------


def ddl_types(shape: Shape) -> dict[str, str]:
    """Column -> type from the shape's CREATE TABLE, as the target database would report it."""
    body = shape.ddl[shape.ddl.index("(") + 1 : shape.ddl.rindex(")")]
    found = re.findall(r"([a-z0-9_]+) ((?:double precision|[a-z]+)(?:\(\d+,\d+\))?)", body)
    return dict(found)


SHAPES = {"narrow": (NARROW, "public.kegiatan"), "wide": (WIDE, "public.lebar")}


def workload(name: str, n: int = 400) -> tuple[list[RawEvent], Hints]:
    shape, table = SHAPES[name]
    lines = mixed_workload(n, seed=7, table=table, shape=shape).lines
    raws = [RawEvent(**orjson.loads(line)) for line in lines]
    return raws, {table: ddl_types(shape)}.get


@pytest.mark.parametrize("name", SHAPES)
def test_synthetic_workload_takes_the_fast_path(name: str) -> None:
    raws, hints = workload(name)
    assert len(ddl_types(SHAPES[name][0])) == len(SHAPES[name][0].columns)
    for raw in raws:
        for table_hints in (hints, None):
            taken = same(raw, DEFAULT_MODES, table_hints)
            assert taken or raw.value is None, raw.value


_WORKLOADS = {name: workload(name) for name in SHAPES}

# Values that look like a row's usual ones but are not: placeholders in each spelling Debezium
# uses, integers orjson turns into floats, a float where an int is expected and the like.
ODD = (
    UNAVAILABLE_PLACEHOLDER,
    base64.b64encode(UNAVAILABLE_PLACEHOLDER.encode()).decode(),
    UNAVAILABLE_PLACEHOLDER.encode().hex(),
    [UNAVAILABLE_PLACEHOLDER],
    list(UNAVAILABLE_PLACEHOLDER.encode()),
    {UNAVAILABLE_PLACEHOLDER: UNAVAILABLE_PLACEHOLDER},
    2**63,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**30,
    1e300,
    -1e19,
    18446744073709551615.0,
    19782.0,
    1.5,
    "",
    "12.3e5",
    "2024-01-01T00:00:00+07:00",
    "2024-01-01",
    True,
    [1, 2],
    {"scale": 2, "value": "AQ=="},
)
ODD_VALUES = st.sampled_from(ODD)


# With schemas (`schemas.enable=true`, the embedded default) a topic repeats one schema text;
# once the reference has seen it, the fast path parses only the payload of later messages.
SCHEMA_LINES = [line for line in ENVELOPES if line["value"].startswith('{"schema":')]


def with_payload(text: str, payload: Any) -> str:
    """The schema envelope `text` with another payload and its schema text unchanged."""
    head = text[: text.rindex(',"payload":')]
    return f'{head},"payload":{json.dumps(payload, separators=(",", ":"))}}}'


@pytest.mark.parametrize("hinted", [True, False])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_schema_envelopes_take_the_fast_path_once_seen(hinted: bool, as_bytes: bool) -> None:
    assert SCHEMA_LINES
    for line in SCHEMA_LINES:
        key, value = line["key"], line["value"]
        if as_bytes:
            key, value = None if key is None else key.encode(), value.encode()
        same(RawEvent(line["destination"], key, value), DEFAULT_MODES, HINTS.get)
        # A new message with the same schema text, as the next row on the topic would be.
        again = RawEvent(line["destination"], key, value[:-1] + value[-1:])
        assert same(again, DEFAULT_MODES, HINTS.get if hinted else None), line["value"][-300:]


@FUZZ
@given(
    data=st.data(),
    line=st.sampled_from(SCHEMA_LINES),
    replacement=ODD_VALUES | JSON,
    delete=st.booleans(),
    in_key=st.booleans(),
    modes=MODES,
    hinted=st.booleans(),
)
def test_mutated_payloads_behind_a_known_schema(
    data: st.DataObject,
    line: dict[str, Any],
    replacement: Any,
    delete: bool,
    in_key: bool,
    modes: ConnectorModes,
    hinted: bool,
) -> None:
    hints = HINTS.get if hinted else None
    same(RawEvent(line["destination"], line["key"], line["value"]), modes, hints)
    target = "key" if in_key and line["key"] is not None else "value"
    payload = json.loads(line[target])["payload"]
    path = data.draw(st.sampled_from(paths(payload)))
    mutated = mutate(payload, path, replacement, delete and bool(path))
    texts = {**line, target: with_payload(line[target], mutated)}
    same(RawEvent(line["destination"], texts["key"], texts["value"]), modes, hints)


@FUZZ
@given(
    data=st.data(),
    name=st.sampled_from(sorted(SHAPES)),
    index=st.integers(min_value=0, max_value=399),
    replacement=ODD_VALUES | JSON,
    delete=st.booleans(),
    hinted=st.booleans(),
)
def test_mutated_synthetic_events(
    data: st.DataObject, name: str, index: int, replacement: Any, delete: bool, hinted: bool
) -> None:
    raws, hints = _WORKLOADS[name]
    raw = raws[index]
    if raw.value is None:
        return
    same(mutated_event(data, raw, replacement, delete), DEFAULT_MODES, hints if hinted else None)


def mutated_event(data: st.DataObject, raw: RawEvent, replacement: Any, delete: bool) -> RawEvent:
    """`raw` with one drawn place of its key or value replaced by `replacement` (or deleted)."""
    part = data.draw(st.sampled_from(["value", "key"]))
    document = json.loads(getattr(raw, part))
    path = data.draw(st.sampled_from(paths(document)))
    texts = {"key": raw.key, "value": raw.value}
    texts[part] = json.dumps(mutate(document, path, replacement, delete and bool(path)))
    return RawEvent(raw.destination, texts["key"], texts["value"])


# Hints that give some columns of the captured public.t a converter that accepts a list or an
# object (bytea[], geometry), so that a placeholder there is not refused by the converter.
MORE_HINTS = {"public.t": {**HINTS["public.t"], "tarr": "bytea[]", "js": "geometry"}}


def every_column_odd(raw: RawEvent) -> list[RawEvent]:
    """`raw` with each value of each row (and of the key) replaced by each of ODD in turn."""
    assert raw.value is not None
    texts = {"value": json.loads(raw.value), "key": json.loads(raw.key or "null")}
    rows = [texts["key"], *(texts["value"][part] for part in ("before", "after"))]
    out = []
    for row in rows:
        for column in list(row or ()):
            kept = row[column]
            for odd in ODD:
                row[column] = odd
                mutated = {name: json.dumps(document) for name, document in texts.items()}
                out.append(RawEvent(raw.destination, raw.key and mutated["key"], mutated["value"]))
            row[column] = kept
    return out


@pytest.mark.parametrize("name", ["captured", *SHAPES])
def test_odd_values_in_every_column(name: str) -> None:
    if name == "captured":
        cases = [
            (RawEvent(line["destination"], line["key"], line["value"]), hints)
            for line in ENVELOPES
            if not line["value"].startswith('{"schema"')
            for hints in (HINTS.get, MORE_HINTS.get)
        ]
    else:
        raws, hints = _WORKLOADS[name]
        first = {}  # one event of each op
        for raw in raws:
            if raw.value is not None:
                first.setdefault(json.loads(raw.value)["op"], raw)
        cases = [(raw, hints) for raw in first.values()]
    for raw, hints in cases:
        for mutated in every_column_odd(raw):
            same(mutated, DEFAULT_MODES, hints)


# -- hypothesis: mutated captured envelopes, arbitrary JSON --------------------------------------


@FUZZ
@given(
    data=st.data(),
    line=st.sampled_from(ENVELOPES),
    replacement=ODD_VALUES | JSON,
    delete=st.booleans(),
    in_key=st.booleans(),
    modes=MODES,
    hinted=st.booleans(),
)
def test_mutated_captured_envelopes(
    data: st.DataObject,
    line: dict[str, Any],
    replacement: Any,
    delete: bool,
    in_key: bool,
    modes: ConnectorModes,
    hinted: bool,
) -> None:
    target = "key" if in_key and line["key"] is not None else "value"
    document = json.loads(line[target])
    path = data.draw(st.sampled_from(paths(document)))
    mutated = json.dumps(mutate(document, path, replacement, delete and bool(path)))
    texts = {**line, target: mutated}
    same(
        RawEvent(line["destination"], texts["key"], texts["value"]),
        modes,
        HINTS.get if hinted else None,
    )


@FUZZ
@given(value=JSON, key=JSON | st.none(), modes=MODES, hinted=st.booleans())
def test_arbitrary_json(value: Any, key: Any, modes: ConnectorModes, hinted: bool) -> None:
    key_text = None if key is None else json.dumps(key)
    same(
        RawEvent("cap.public.t", key_text, json.dumps(value)), modes, HINTS.get if hinted else None
    )


@FUZZ
@given(
    op=st.sampled_from(["c", "u", "d", "r", "t"]),
    before=st.none()
    | st.dictionaries(st.sampled_from(["id", "n", "d", "ts", "b"]), ODD_VALUES | JSON),
    after=st.none()
    | st.dictionaries(st.sampled_from(["id", "n", "d", "ts", "b"]), ODD_VALUES | JSON),
    key=st.none() | st.dictionaries(st.sampled_from(["id", "n"]), ODD_VALUES | JSON),
    block=st.dictionaries(
        st.sampled_from(["connector", "snapshot", "txId", "ts_us", "ts_ms", "lsn", "db"]),
        ODD_VALUES | JSON,
    ),
    modes=MODES,
)
def test_envelopes_around_random_rows(
    op: str, before: Any, after: Any, key: Any, block: dict[str, Any], modes: ConnectorModes
) -> None:
    # A valid source block that the drawn entries partly override, so that most envelopes get
    # as far as the rows.
    source = {"connector": modes.connector, "schema": "public", "db": "public", "table": "t"}
    source |= {"lsn": 5, "ts_us": 7, "file": "mysql-bin.000003", "pos": 4}
    source |= {"commit_lsn": "00000027:00000758:0005"}
    value = {"op": op, "before": before, "after": after, "source": source | block}
    key_text = None if key is None else json.dumps(key)
    same(RawEvent("cap.public.t", key_text, json.dumps(value)), modes, HINTS.get)


# -- hints --------------------------------------------------------------------------------------


def test_new_hints_for_a_table_take_effect() -> None:
    raws, _ = workload("narrow", 20)
    raw = raws[0]
    first = {"public.kegiatan": {"pagu": "numeric", "tgl_mulai": "date"}}
    second = {"public.kegiatan": {"pagu": "text", "tgl_mulai": "integer", "diubah": "timestamp"}}
    for hints in (first, second, first, {}):
        assert same(raw, DEFAULT_MODES, hints.get)


def test_an_exception_from_hints_propagates_unchanged() -> None:
    raws, _ = workload("narrow", 20)

    def broken(table: str) -> Mapping[str, str] | None:
        raise KeyError(table)

    for decoder in (decode, decode_reference):
        with pytest.raises(KeyError, match=r"public\.kegiatan"):
            decoder(raws[0], source="s", hints=broken)


# -- fast forms of converters -------------------------------------------------------------------

PG_TYPES = [
    *("numeric", "numeric(18,2)", "decimal", "money", "float8", "real", "double precision"),
    *("date", "timestamp", "timestamp(3)", "timestamp(6)", "timestamp(0) without time zone"),
    *("time", "timetz", "timestamptz", "interval", "bytea", "bit(3)", "integer[]", "numeric[]"),
]
ALL_MODES = [
    ConnectorModes(decimal_handling=d, time_precision=t)  # type: ignore[arg-type]
    for d in ("precise", "string", "double")
    for t in ("adaptive", "adaptive_time_microseconds", "connect", "isostring")
]
SAMPLES: dict[type, st.SearchStrategy[Any]] = {
    int: st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 2_932_896, 2_932_897, -719_163, -719_162, 253_402_300_799_999_999])
    | st.integers(min_value=-(10**17), max_value=10**17),
    float: st.floats() | st.sampled_from([0.0, -0.0, 2.0**63, 1e300]),
    str: st.decimals().map(str)
    | st.text(max_size=12)
    | st.sampled_from(["1e5", "NaN", "-0", "1_000", "sNaN", "Infinity", " 1.5 ", "12.30"]),
}


def attempt(convert: Callable[[Any], Any], value: Any) -> str:
    try:
        return "value " + repr(convert(value))
    except Exception:
        return "raised"


def test_fast_forms_exist_for_the_common_types() -> None:
    from tunggal.events.coerce import converter_for
    from tunggal.events.values import FAST_FORMS

    for pg_type in ("numeric(18,2)", "date", "timestamp", "float8"):
        assert converter_for(pg_type, DEFAULT_MODES) in FAST_FORMS, pg_type


@FUZZ
@given(data=st.data(), pg_type=st.sampled_from(PG_TYPES), modes=st.sampled_from(ALL_MODES))
def test_fast_forms_agree_with_their_converters(
    data: st.DataObject, pg_type: str, modes: ConnectorModes
) -> None:
    from tunggal.events.coerce import converter_for
    from tunggal.events.values import FAST_FORMS

    convert = converter_for(pg_type, modes)
    form = FAST_FORMS.get(convert) if convert is not None else None
    if form is None:
        return
    kind, fast = form
    value = data.draw(SAMPLES[kind])
    expected = attempt(convert, value)
    # A fast form may raise anything, but only where its converter raises.
    assert attempt(fast, value) == expected, (pg_type, modes, value)


def test_rows_of_one_width_with_other_columns() -> None:
    raws, hints = _WORKLOADS["narrow"]
    created = next(raw for raw in raws if raw.value and '"op":"c"' in raw.value)
    assert same(created, DEFAULT_MODES, hints)
    value = json.loads(created.value or "")
    for old, new in (("pagu", "lain"), ("kode", "lain"), ("id", "nomor")):
        after = value["after"]
        value["after"] = {new if name == old else name: item for name, item in after.items()}
        assert same(
            RawEvent(created.destination, created.key, json.dumps(value)), DEFAULT_MODES, hints
        )
        value["after"] = after


# -- PostgreSQL's source.sequence ---------------------------------------------------------------


def _last_commit_parsed(sequence: Any) -> Any:
    """The reference: Debezium's `sequence` read with the parser, its first item as an LSN."""
    if sequence is None:
        return None
    try:
        pair = orjson.loads(sequence) if isinstance(sequence, str) else None
    except orjson.JSONDecodeError:
        pair = None
    if not isinstance(pair, list) or len(pair) != 2:
        return "invalid"
    first = pair[0]
    if first is None:
        return None
    if type(first) is int and 0 <= first < 2**64:
        return first
    digits = type(first) is str and first.isascii() and first.isdigit() and len(first) < 21
    return int(first) if digits and int(first) < 2**64 else "invalid"


_SEQUENCE_PIECES = st.sampled_from(['["', '","', '"]', "[", "]", ",", "null", '"', " ", "١", "\\"])


_SEQUENCE_ITEMS = st.text("0123456789", max_size=22) | st.lists(_SEQUENCE_PIECES).map("".join)


@FUZZ
@given(
    first=st.none() | st.integers(min_value=0, max_value=2**70),
    last=st.integers(min_value=0, max_value=2**70),
    items=st.tuples(_SEQUENCE_ITEMS, _SEQUENCE_ITEMS),
    pieces=st.lists(_SEQUENCE_PIECES | st.text("0123456789", max_size=22), max_size=7),
)
def test_the_sequence_read_without_the_parser_as_with_it(
    first: int | None, last: int, items: tuple[str, str], pieces: list[str]
) -> None:
    head = "null" if first is None else f'"{first}"'
    # As written, nearly as written (odd items in its quotes), and any text.
    texts = (f'[{head},"{last}"]', '["{}","{}"]'.format(*items), "".join(pieces))
    for text in texts:
        try:
            found: Any = _last_commit_lsn(text)
        except Invalid:
            found = "invalid"
        assert found == _last_commit_parsed(text), text
