"""Decoders compiled from Kafka Connect schemas (converter `schemas.enable=true`).

A schema is compiled once into a tree of converters; the per-event work is then one loop over
a table's fields with no lookups by type name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

from tunggal.events.coerce import (
    DURATION_TIME,
    Retype,
    bits_retype,
    boolean_retype,
    local_timestamp_retype,
    plain_string_retype,
    time_retype,
)
from tunggal.events.model import UNAVAILABLE
from tunggal.events.modes import ConnectorModes
from tunggal.events.values import (
    PLACEHOLDER_LENGTHS,
    Converter,
    Invalid,
    as_bool,
    as_float,
    as_int,
    as_str,
    bits,
    bytes_from_base64,
    days_to_date,
    decimal_bytes,
    fail,
    is_unavailable,
    iso_date,
    iso_time,
    iso_timestamp,
    local_timestamp,
    micro_duration,
    show,
    time_of_day,
    variable_scale_decimal,
    zoned_time,
    zoned_timestamp,
)


class StructDecoder:
    """Decodes one struct value (a table row, a key, a geometry) field by field."""

    __slots__ = ("_hinted", "fields", "retypable")

    def __init__(self, fields: tuple[Field, ...], retypable: Mapping[str, Retype]):
        self.fields = fields
        # Fields whose Python value depends on the target column (see `with_hints`): plain
        # strings (numeric under decimal.handling.mode=string, bytea under
        # binary.handling.mode=base64/hex: only a type hint tells them from text), zone-less
        # timestamps, MySQL TIME, bits and booleans.
        self.retypable = retypable
        self._hinted: dict[
            tuple[str, str], tuple[ConnectorModes, Mapping[str, str] | None, StructDecoder]
        ] = {}

    def __call__(self, value: Any) -> dict[str, Any]:
        if value.__class__ is not dict:
            raise fail("an object", value)
        out: dict[str, Any] = {}
        get = value.get
        name = ""
        try:
            # Like Connect's JsonConverter: the schema's fields, a missing one being null.
            for name, convert, same in self.fields:
                item = get(name)
                if item is None:
                    out[name] = None
                    continue
                kind = item.__class__
                if kind is str:
                    if len(item) in PLACEHOLDER_LENGTHS and is_unavailable(item):
                        out[name] = UNAVAILABLE
                    else:
                        out[name] = item if same is str else convert(item)
                elif kind is same:
                    out[name] = item
                elif (kind is list or kind is dict or kind is bytes) and is_unavailable(item):
                    out[name] = UNAVAILABLE
                else:
                    out[name] = convert(item)
        except Invalid as exc:
            raise exc.at(name) from None
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise Invalid(f"{type(exc).__name__}: {exc}").at(name) from None
        return out

    def with_hints(
        self, where: tuple[str, str], hints: Mapping[str, str] | None, modes: ConnectorModes
    ) -> StructDecoder:
        """This decoder refined by a table's target column types and the source's modes;
        `where` is (source, table).

        Cached per table, keeping the hints mapping itself: a new mapping is compared by
        value, but one changed in place after use would go unnoticed.
        """
        if not self.retypable or (
            not hints and modes.timezone is None and modes.connector not in DURATION_TIME
        ):
            return self
        cached = self._hinted.get(where)
        if (
            cached is not None
            and (cached[0] is modes or cached[0] == modes)
            and (cached[1] is hints or cached[1] == hints)
        ):
            return cached[2]
        fields = []
        changed = False
        for name, convert, same in self.fields:
            retype = self.retypable.get(name)
            hinted = None if retype is None else retype(hints.get(name) if hints else None, modes)
            if hinted is None:
                fields.append((name, convert, same))
            else:
                fields.append((name, hinted, None))
                changed = True
        decoder = StructDecoder(tuple(fields), {}) if changed else self
        if len(self._hinted) > 64:
            self._hinted.clear()
        self._hinted[where] = (modes, hints, decoder)
        return decoder


def compile_struct(schema: Any) -> StructDecoder:
    if not isinstance(schema, dict) or schema.get("type") != "struct":
        raise fail("a struct schema", schema)
    fields = schema.get("fields")
    if not isinstance(fields, list):
        raise Invalid(f"expected a list of fields, got {show(fields)}", "fields")
    compiled: list[Field] = []
    retypable: dict[str, Retype] = {}
    for index, field in enumerate(fields):
        try:
            if not isinstance(field, dict):
                raise fail("a field schema", field)
            name = field.get("field")
            if not isinstance(name, str):
                raise Invalid(f"expected a field name, got {show(name)}", "field")
            convert = compile_schema(field)
            compiled.append((name, convert, _SAME.get(convert)))
        except Invalid as exc:
            raise exc.at(f"fields[{index}]") from None
        retype = _retype(field, convert)
        if retype is not None:
            retypable[name] = retype
    return StructDecoder(tuple(compiled), retypable)


_LOCAL_TIMESTAMPS: Final = frozenset(
    {
        "io.debezium.time.Timestamp",
        "io.debezium.time.MicroTimestamp",
        "io.debezium.time.NanoTimestamp",
        "io.debezium.time.IsoTimestamp",
        "org.apache.kafka.connect.data.Timestamp",
    }
)
_TIMES: Final = {
    "io.debezium.time.Time": 1_000,
    "io.debezium.time.MicroTime": 1_000_000,
    "io.debezium.time.NanoTime": 1_000_000_000,
    "org.apache.kafka.connect.data.Time": 1_000,
}


def _retype(field: dict[str, Any], convert: Converter) -> Retype | None:
    """How the field's value may depend on the target column (`StructDecoder.with_hints`)."""
    if _is_plain_string(field) or (
        field.get("type") == "array" and _is_plain_string(field.get("items"))
    ):
        return plain_string_retype
    name = field.get("name")
    if name is not None and not isinstance(name, str):
        return None  # a malformed schema: the field's own converter reports it
    if name in _LOCAL_TIMESTAMPS:
        return local_timestamp_retype(convert)
    if name in _TIMES:
        return time_retype(name, _TIMES[name])
    if name == "io.debezium.data.Bits":
        parameters = field.get("parameters")
        try:
            length: int | None = _parameter(
                parameters if isinstance(parameters, dict) else {}, "length"
            )
        except Invalid:
            length = None
        return bits_retype(length)
    if field.get("type") == "boolean" and name is None:
        return boolean_retype
    return None


def _is_plain_string(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "string" and not schema.get("name")


def compile_schema(schema: Any) -> Converter:
    """The converter for non-null values of `schema`; it checks the JSON type as it goes."""
    if not isinstance(schema, dict):
        raise fail("a schema object", schema)
    name = schema.get("name")
    if name is not None:
        factory = _NAMED.get(name) if isinstance(name, str) else None
        if factory is not None:
            parameters = schema.get("parameters")
            return factory(parameters if isinstance(parameters, dict) else {})
    kind = schema.get("type")
    if kind == "struct":
        return compile_struct(schema)
    if kind == "array":
        try:
            return _array_of(compile_schema(schema.get("items")))
        except Invalid as exc:
            raise exc.at("items") from None
    if kind == "map":
        return _map_of(compile_schema(schema.get("keys")), compile_schema(schema.get("values")))
    simple = _SIMPLE.get(kind) if isinstance(kind, str) else None
    if simple is None:
        raise Invalid(f"unknown Connect schema type {show(kind)}", "type")
    return simple


# (field name, converter, the JSON class whose values need no converting)
Field: TypeAlias = tuple[str, Converter, type | None]

_SIMPLE: Final[dict[str, Converter]] = {
    "int8": as_int,
    "int16": as_int,
    "int32": as_int,
    "int64": as_int,
    "float": as_float,
    "float32": as_float,
    "double": as_float,
    "float64": as_float,
    "boolean": as_bool,
    "string": as_str,
    # JsonConverter writes bytes as base64 whatever binary.handling.mode says; the other modes
    # turn the column into a plain "string" field instead.
    "bytes": bytes_from_base64,
}


# Converters that only check the JSON type: a value of that class is already the answer.
_SAME: Final[dict[Converter, type]] = {as_int: int, as_float: float, as_bool: bool, as_str: str}


def _array_of(convert: Converter) -> Converter:
    same = _SAME.get(convert)

    def convert_array(value: Any) -> list[Any]:
        if value.__class__ is not list:
            raise fail("a JSON array", value)
        if same is not None and all(item.__class__ is same for item in value):
            return list(value)  # int[], text[]: nothing to convert, only to check
        out: list[Any] = []
        for index, item in enumerate(value):
            try:
                out.append(None if item is None else convert(item))
            except Invalid as exc:
                raise exc.at(f"[{index}]") from None
        return out

    return convert_array


def _map_of(keys: Converter, values: Converter) -> Converter:
    def one(convert: Converter, item: Any) -> Any:
        return None if item is None else convert(item)

    def convert_map(value: Any) -> dict[Any, Any]:
        # JsonConverter writes a map with string keys as an object, any other as [[k, v], ...].
        if value.__class__ is dict:
            return {key: one(values, item) for key, item in value.items()}
        if value.__class__ is list:
            out: dict[Any, Any] = {}
            for pair in value:
                if pair.__class__ is not list or len(pair) != 2:
                    raise fail("[key, value] pairs", pair)
                key = one(keys, pair[0])
                try:
                    out[key] = one(values, pair[1])
                except TypeError:
                    raise Invalid(f"map key {show(key)} cannot be a dict key") from None
            return out
        raise fail("a JSON object or [[key, value], ...]", value)

    return convert_map


def _parameter(parameters: Mapping[str, Any], name: str) -> int:
    raw: Any = parameters.get(name)
    try:
        return int(raw)  # Connect writes parameters as strings: {"scale": "2"}
    except (TypeError, ValueError):
        raise Invalid(
            f"expected an integer parameter, got {show(raw)}", f"parameters.{name}"
        ) from None


_Factory = Callable[[Mapping[str, Any]], Converter]


def _fixed(convert: Converter) -> _Factory:
    return lambda _parameters: convert


_NAMED: Final[dict[str, _Factory]] = {
    "org.apache.kafka.connect.data.Decimal": lambda p: decimal_bytes(_parameter(p, "scale")),
    "io.debezium.data.VariableScaleDecimal": _fixed(variable_scale_decimal),
    "io.debezium.data.Bits": lambda p: bits(_parameter(p, "length")),
    "io.debezium.time.Date": _fixed(days_to_date("io.debezium.time.Date")),
    "io.debezium.time.Time": _fixed(time_of_day("io.debezium.time.Time", 1_000)),
    "io.debezium.time.MicroTime": _fixed(time_of_day("io.debezium.time.MicroTime", 1_000_000)),
    "io.debezium.time.NanoTime": _fixed(time_of_day("io.debezium.time.NanoTime", 1_000_000_000)),
    "io.debezium.time.Timestamp": _fixed(local_timestamp("io.debezium.time.Timestamp", 1_000)),
    "io.debezium.time.MicroTimestamp": _fixed(
        local_timestamp("io.debezium.time.MicroTimestamp", 1_000_000)
    ),
    "io.debezium.time.NanoTimestamp": _fixed(
        local_timestamp("io.debezium.time.NanoTimestamp", 1_000_000_000)
    ),
    "io.debezium.time.ZonedTimestamp": _fixed(zoned_timestamp),
    "io.debezium.time.ZonedTime": _fixed(zoned_time),
    "io.debezium.time.IsoDate": _fixed(iso_date),
    "io.debezium.time.IsoTime": _fixed(iso_time),
    "io.debezium.time.IsoTimestamp": _fixed(iso_timestamp),
    "io.debezium.time.MicroDuration": _fixed(micro_duration),
    "io.debezium.time.Year": _fixed(as_int),
    "org.apache.kafka.connect.data.Date": _fixed(
        days_to_date("org.apache.kafka.connect.data.Date")
    ),
    "org.apache.kafka.connect.data.Time": _fixed(
        time_of_day("org.apache.kafka.connect.data.Time", 1_000)
    ),
    "org.apache.kafka.connect.data.Timestamp": _fixed(
        local_timestamp("org.apache.kafka.connect.data.Timestamp", 1_000)
    ),
    # Text that must stay exactly as sent: a jsonb 'null' is the string "null", not None.
    "io.debezium.data.Json": _fixed(as_str),
    "io.debezium.data.Uuid": _fixed(as_str),
    "io.debezium.data.Enum": _fixed(as_str),
    "io.debezium.data.EnumSet": _fixed(as_str),
    "io.debezium.data.Xml": _fixed(as_str),
    "io.debezium.time.Interval": _fixed(as_str),
}
