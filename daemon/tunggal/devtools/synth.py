"""Synthetic Debezium change events, shaped like Debezium 3.6's PostgreSQL connector output
(JSON converter without schemas, `decimal.handling.mode=string`,
`time.precision.mode=adaptive_time_microseconds`, REPLICA IDENTITY DEFAULT).

Used by the replay tests and `bench/`: a mixed workload of inserts, updates (some hitting the
same keys again) and deletes, together with the final table state it must produce, for a narrow
table (8 columns) or a wide one (40 columns: numerics, timestamps, jsonb).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

NARROW_DDL = """CREATE TABLE {name} (
  id bigint PRIMARY KEY, kode text NOT NULL, nama text, tahun integer, pagu numeric(18,2),
  tgl_mulai date, diubah timestamp, aktif boolean)"""
NARROW_COLUMNS = ("id", "kode", "nama", "tahun", "pagu", "tgl_mulai", "diubah", "aktif")
EPOCH = dt.date(1970, 1, 1)
_BASE_TS_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


@dataclass
class Workload:
    """Events as replay-file lines and the final rows they leave (id -> typed row)."""

    lines: list[bytes] = field(default_factory=list)
    final: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"c": 0, "u": 0, "d": 0})


def _row(rnd: random.Random, key: int, version: int) -> dict[str, Any]:
    day = dt.date(2025, 1, 1) + dt.timedelta(days=rnd.randint(0, 700))
    changed = dt.datetime(2026, 1, 1) + dt.timedelta(seconds=version, microseconds=key % 1000)
    return {
        "id": key,
        "kode": f"KEG.{key:07d}",
        "nama": f"Kegiatan pembangunan {key} versi {version}",
        "tahun": 2024 + key % 3,
        "pagu": f"{rnd.randint(1_000_000, 9_000_000_000) / 100:.2f}",
        "tgl_mulai": (day - EPOCH).days,
        "diubah": int((changed - dt.datetime(1970, 1, 1)).total_seconds()) * 1_000_000
        + changed.microsecond,
        "aktif": rnd.random() < 0.9,
    }


def _typed(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["id"],
        row["kode"],
        row["nama"],
        row["tahun"],
        Decimal(row["pagu"]),
        EPOCH + dt.timedelta(days=row["tgl_mulai"]),
        dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=row["diubah"]),
        row["aktif"],
    )


# -- the wide table: 40 columns ------------------------------------------------------------

_WIDE_TYPES: tuple[tuple[str, str], ...] = (
    ("id", "bigint PRIMARY KEY"),
    *((f"teks_{i}", "text") for i in range(1, 8)),
    *((f"angka_{i}", "integer") for i in range(1, 4)),
    *((f"besar_{i}", "bigint") for i in range(1, 4)),
    *((f"nilai_{i}", "numeric(18,2)") for i in range(1, 9)),
    *((f"rasio_{i}", "double precision") for i in range(1, 5)),
    *((f"tgl_{i}", "date") for i in range(1, 4)),
    *((f"waktu_{i}", "timestamp") for i in range(1, 5)),
    *((f"zona_{i}", "timestamptz") for i in range(1, 4)),
    ("aktif", "boolean"),
    ("final", "boolean"),
    ("atribut", "jsonb"),
    ("riwayat", "jsonb"),
)
WIDE_COLUMNS = tuple(name for name, _ in _WIDE_TYPES)
WIDE_DDL = (
    "CREATE TABLE {name} (" + ", ".join(f"{name} {ctype}" for name, ctype in _WIDE_TYPES) + ")"
)
_EPOCH_DT = dt.datetime(1970, 1, 1)


def _wide_row(rnd: random.Random, key: int, version: int) -> dict[str, Any]:
    # Shaped as Debezium writes each type: numeric as a string (decimal.handling.mode=string),
    # date as days, timestamp as µs, timestamptz as an ISO string, jsonb as JSON text.
    changed = dt.datetime(2026, 1, 1) + dt.timedelta(seconds=version, microseconds=key % 1000)
    micros = int((changed - _EPOCH_DT).total_seconds()) * 1_000_000 + changed.microsecond
    row: dict[str, Any] = {"id": key}
    for name, ctype in _WIDE_TYPES[1:]:
        if ctype == "text":
            row[name] = f"{name} {key} versi {version} {rnd.randrange(10**6)}"
        elif ctype == "integer":
            row[name] = rnd.randrange(-(2**31), 2**31)
        elif ctype == "bigint":
            row[name] = rnd.randrange(-(2**62), 2**62)
        elif ctype.startswith("numeric"):
            row[name] = f"{rnd.randint(-9_000_000_000, 9_000_000_000) / 100:.2f}"
        elif ctype == "double precision":
            row[name] = rnd.random() * 1000
        elif ctype == "date":
            row[name] = 20_000 + rnd.randrange(1000)
        elif ctype == "timestamp":
            row[name] = micros - rnd.randrange(10**12)
        elif ctype == "timestamptz":
            moment = changed - dt.timedelta(microseconds=rnd.randrange(10**12))
            row[name] = moment.isoformat(timespec="microseconds") + "Z"
        elif ctype == "boolean":
            row[name] = rnd.random() < 0.5
        else:
            row[name] = orjson.dumps(
                {"versi": version, "label": f"k{key}", "tags": [rnd.randrange(100) for _ in "ab"]}
            ).decode()
    return row


def _wide_typed(row: dict[str, Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    for name, ctype in _WIDE_TYPES:
        value = row[name]
        if ctype.startswith("numeric"):
            value = Decimal(value)
        elif ctype == "date":
            value = EPOCH + dt.timedelta(days=value)
        elif ctype == "timestamp":
            value = _EPOCH_DT + dt.timedelta(microseconds=value)
        elif ctype == "timestamptz":
            value = dt.datetime.fromisoformat(value)
        out.append(value)
    return tuple(out)


@dataclass(frozen=True)
class Shape:
    """A benchmark table: its columns, DDL (with a {name} slot) and row generator."""

    columns: tuple[str, ...]
    ddl: str
    row: Callable[[random.Random, int, int], dict[str, Any]]
    typed: Callable[[dict[str, Any]], tuple[Any, ...]]


NARROW = Shape(NARROW_COLUMNS, NARROW_DDL, _row, _typed)
WIDE = Shape(WIDE_COLUMNS, WIDE_DDL, _wide_row, _wide_typed)


def change_line(
    op: str, before: Any, after: Any, lsn: int, ts_us: int, source: str, table: str
) -> bytes:
    # One transaction per event; the previous one committed just after its own change (Debezium's
    # `sequence` is [end of the previous commit, this change's LSN]).
    schema, _, name = table.partition(".")
    value = {
        "before": before,
        "after": after,
        "source": {
            "version": "3.6.3.Final",
            "connector": "postgresql",
            "name": source,
            "ts_ms": ts_us // 1000,
            "snapshot": "false",
            "db": "src",
            "sequence": f'["{lsn - 16}","{lsn}"]',
            "ts_us": ts_us,
            "ts_ns": ts_us * 1000,
            "schema": schema,
            "table": name,
            "txId": lsn // 100,
            "lsn": lsn,
            "xmin": None,
            "origin": None,
            "origin_lsn": None,
        },
        "transaction": None,
        "op": op,
        "ts_ms": ts_us // 1000 + 50,
    }
    key = after["id"] if after is not None else before["id"]
    return orjson.dumps(
        {
            "destination": f"{source}.{table}",
            "key": orjson.dumps({"id": key}).decode(),
            "value": orjson.dumps(value).decode(),
        }
    )


def mixed_workload(
    n: int,
    *,
    source: str = "bench",
    table: str = "public.kegiatan",
    seed: int = 1,
    shape: Shape = NARROW,
) -> Workload:
    """n events: about 70% inserts, 25% updates (a third on hot keys), 5% deletes."""
    rnd = random.Random(seed)
    work = Workload()
    live: list[int] = []
    live_set: set[int] = set()
    next_key = 1
    lsn = 30_000_000
    for i in range(n):
        lsn += rnd.randint(40, 400)
        ts = _BASE_TS_US + i * 200
        roll = rnd.random()
        if roll < 0.70 or len(live) < 10:
            key = next_key
            next_key += 1
            row = shape.row(rnd, key, i)
            work.lines.append(change_line("c", None, row, lsn, ts, source, table))
            live.append(key)
            live_set.add(key)
            work.final[key] = shape.typed(row)
            work.counts["c"] += 1
        elif roll < 0.95:
            hot = rnd.random() < 0.33
            key = live[rnd.randrange(max(1, len(live) // 20))] if hot else rnd.choice(live)
            row = shape.row(rnd, key, i)
            work.lines.append(change_line("u", None, row, lsn, ts, source, table))
            work.final[key] = shape.typed(row)
            work.counts["u"] += 1
        else:
            index = rnd.randrange(len(live))
            key = live[index]
            live[index] = live[-1]
            live.pop()
            live_set.discard(key)
            before = dict.fromkeys(shape.columns)
            before["id"] = key
            work.lines.append(change_line("d", before, None, lsn, ts, source, table))
            work.lines.append(
                orjson.dumps(
                    {
                        "destination": f"{source}.{table}",
                        "key": orjson.dumps({"id": key}).decode(),
                        "value": None,
                    }
                )
            )
            del work.final[key]
            work.counts["d"] += 1
    return work


def narrow_mapping(
    source: str = "bench", table: str = "public.kegiatan", shape: Shape = NARROW
) -> str:
    """A mapping that copies every column of `shape` unchanged."""
    cols = ", ".join(f"{c}: {c}" for c in shape.columns)
    return (
        f"source: {source}\ntables:\n  - from: {table}\n    to: {table}\n    key: [id]\n"
        f"    columns: {{{cols}}}\n"
    )
