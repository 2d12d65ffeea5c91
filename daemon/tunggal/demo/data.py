"""Realistic-looking data for the demo's source systems, generated from their live schemas.

The generator reads each table's columns, keys and foreign keys from the catalog, so the
example schemas in `mappings/sql/` can change without touching this file.

OPD codes are the one thing the systems share: e-Planning (`ref_skpd.kd_skpd`), SIPKD
(`daftunit.kdunit`) and e-Budgeting (`pagu_indikatif.kd_skpd`) draw them from one list of the
city's perangkat daerah (`OPDS`), so many OPDs are in both e-Planning and SIPKD, which both
write the target `opd`, under names, addresses and abbreviations that sometimes differ.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

SYSTEMS = ("e_planning", "e_budgeting", "e_kontrak", "sipkd")
_IN_CHECK = re.compile(r"\(\(?(\w+)\)?(?:::\w+)? = ANY \(\(?ARRAY\[(.*?)\]")
_USER_SCHEMAS = "table_schema NOT IN ('pg_catalog', 'information_schema')"

_WORDS = (
    "pembangunan jalan lingkungan",
    "rehabilitasi gedung sekolah",
    "pengadaan alat kesehatan",
    "peningkatan kapasitas aparatur",
    "pemeliharaan drainase",
    "penyediaan air bersih",
    "sosialisasi perencanaan",
    "pengembangan UMKM",
    "penataan taman kota",
    "digitalisasi layanan publik",
    "bantuan sosial",
    "operasional kantor",
)
_PLACES = (
    "Kelurahan Manguharjo",
    "Kelurahan Kartoharjo",
    "Kelurahan Taman",
    "Kecamatan Taman",
    "Kelurahan Nambangan Lor",
    "Kelurahan Oro-oro Ombo",
    "Balai Kota",
)
# The city's perangkat daerah: code (urusan.bidang.unit), name, abbreviation.
OPDS: tuple[tuple[str, str, str], ...] = (
    ("1.01.01", "Dinas Pendidikan dan Kebudayaan", "DISDIKBUD"),
    ("1.02.01", "Dinas Kesehatan", "DINKES"),
    ("1.02.02", "Rumah Sakit Umum Daerah", "RSUD"),
    ("1.03.01", "Dinas Pekerjaan Umum dan Penataan Ruang", "DPUPR"),
    ("1.04.01", "Dinas Perumahan dan Kawasan Permukiman", "DISPERKIM"),
    ("1.05.01", "Satuan Polisi Pamong Praja", "SATPOL PP"),
    ("1.05.02", "Badan Penanggulangan Bencana Daerah", "BPBD"),
    ("1.05.03", "Dinas Pemadam Kebakaran", "DAMKAR"),
    ("1.06.01", "Dinas Sosial", "DINSOS"),
    ("2.07.01", "Dinas Tenaga Kerja", "DISNAKER"),
    ("2.08.01", "Dinas Pemberdayaan Perempuan dan Perlindungan Anak", "DP3A"),
    ("2.09.01", "Dinas Ketahanan Pangan", "DKP"),
    ("2.11.01", "Dinas Lingkungan Hidup", "DLH"),
    ("2.12.01", "Dinas Kependudukan dan Pencatatan Sipil", "DISDUKCAPIL"),
    ("2.14.01", "Dinas Pengendalian Penduduk dan Keluarga Berencana", "DPPKB"),
    ("2.15.01", "Dinas Perhubungan", "DISHUB"),
    ("2.16.01", "Dinas Komunikasi dan Informatika", "DISKOMINFO"),
    ("2.17.01", "Dinas Koperasi dan Usaha Mikro", "DINKOP UM"),
    ("2.18.01", "Dinas Penanaman Modal dan Pelayanan Terpadu Satu Pintu", "DPMPTSP"),
    ("2.19.01", "Dinas Pemuda dan Olahraga", "DISPORA"),
    ("2.21.01", "Dinas Statistik dan Persandian", "DISTIKSAN"),
    ("2.23.01", "Dinas Perpustakaan dan Kearsipan", "DISPERPUSIP"),
    ("3.25.01", "Dinas Pertanian dan Perikanan", "DISPERTAN"),
    ("3.26.01", "Dinas Pariwisata", "DISPAR"),
    ("3.30.01", "Dinas Perdagangan", "DISDAG"),
    ("3.31.01", "Dinas Perindustrian", "DISPERIN"),
    ("4.01.01", "Sekretariat Daerah", "SETDA"),
    ("4.01.02", "Bagian Pengadaan Barang dan Jasa", "BAG. PBJ"),
    ("4.01.03", "Bagian Hukum", "BAG. HUKUM"),
    ("4.02.01", "Sekretariat DPRD", "SETWAN"),
    ("5.01.01", "Badan Perencanaan Pembangunan Daerah", "BAPPEDA"),
    ("5.02.01", "Badan Keuangan dan Aset Daerah", "BKAD"),
    ("5.02.02", "Badan Pendapatan Daerah", "BAPENDA"),
    ("5.03.01", "Badan Kepegawaian dan Pengembangan Sumber Daya Manusia", "BKPSDM"),
    ("6.01.01", "Inspektorat Daerah", "INSPEKTORAT"),
    ("7.01.01", "Kecamatan Manguharjo", "KEC. MANGUHARJO"),
    ("7.01.02", "Kecamatan Taman", "KEC. TAMAN"),
    ("7.01.03", "Kecamatan Kartoharjo", "KEC. KARTOHARJO"),
    ("7.01.04", "Kelurahan Manguharjo", "KEL. MANGUHARJO"),
    ("7.01.05", "Kelurahan Nambangan Lor", "KEL. NAMBANGAN LOR"),
    ("7.01.06", "Kelurahan Taman", "KEL. TAMAN"),
    ("7.01.07", "Kelurahan Oro-oro Ombo", "KEL. ORO-ORO OMBO"),
    ("7.01.08", "Kelurahan Kartoharjo", "KEL. KARTOHARJO"),
    ("8.01.01", "Badan Kesatuan Bangsa dan Politik", "BAKESBANGPOL"),
)
OPD_CODES = tuple(code for code, _, _ in OPDS)
_OPD_BY_CODE = {code: (name, short) for code, name, short in OPDS}
# The columns that hold an OPD code, where they are not a foreign key to one.
_OPD_CODE_COLUMNS = frozenset({"kd_skpd", "kdunit"})
_STREETS = (
    "Jl. Pahlawan",
    "Jl. Perintis Kemerdekaan",
    "Jl. Mayjend Panjaitan",
    "Jl. Sulawesi",
    "Jl. Salak",
    "Jl. Hayam Wuruk",
    "Jl. Cokroaminoto",
)
_COMPANIES = (
    "CV Maju Jaya",
    "PT Karya Madiun",
    "CV Sumber Rejeki",
    "PT Bangun Persada",
    "CV Mitra Sejahtera",
    "PT Delta Konstruksi",
)


@dataclass
class Column:
    name: str
    type: str
    nullable: bool
    max_length: int | None
    has_default: bool


@dataclass
class TableShape:
    name: str
    columns: list[Column]
    key: list[str]
    foreign: dict[str, tuple[str, str]] = field(default_factory=dict)  # col -> (table, col)
    choices: dict[str, list[str]] = field(default_factory=dict)  # col -> CHECK (col IN (...))


def _ident(qualified: str) -> sql.Identifier:
    return sql.Identifier(*qualified.split(".", 1))


def introspect(conn: psycopg.Connection[Any]) -> list[TableShape]:
    shapes: dict[str, TableShape] = {}
    for table, col, ctype, nullable, maxlen, default in conn.execute(
        "SELECT table_schema || '.' || table_name, column_name, data_type, "
        "is_nullable = 'YES', character_maximum_length, column_default IS NOT NULL "
        "FROM information_schema.columns c JOIN information_schema.tables t "
        "USING (table_schema, table_name) WHERE t.table_type = 'BASE TABLE' "
        f"AND {_USER_SCHEMAS} ORDER BY 1, ordinal_position"
    ):
        shapes.setdefault(table, TableShape(table, [], [])).columns.append(
            Column(col, ctype, nullable, maxlen, default)
        )
    for table, col in conn.execute(
        "SELECT tc.table_schema || '.' || tc.table_name, kcu.column_name "
        "FROM information_schema.table_constraints tc "
        "JOIN information_schema.key_column_usage kcu USING (constraint_schema, "
        "constraint_name) WHERE tc.constraint_type = 'PRIMARY KEY' "
        "ORDER BY kcu.ordinal_position"
    ):
        if table in shapes:
            shapes[table].key.append(col)
    for table, col, ref_table, ref_col in conn.execute(
        "SELECT cn.nspname || '.' || cl.relname, a.attname, rn.nspname || '.' || rc.relname, "
        "ra.attname FROM pg_constraint c "
        "JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_class rc ON rc.oid = c.confrelid "
        "JOIN pg_namespace cn ON cn.oid = cl.relnamespace "
        "JOIN pg_namespace rn ON rn.oid = rc.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1] "
        "WHERE c.contype = 'f'"
    ):
        if table in shapes:
            shapes[table].foreign[col] = (ref_table, ref_col)
    for table, definition in conn.execute(
        "SELECT n.nspname || '.' || cl.relname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_namespace n ON n.oid = cl.relnamespace "
        "WHERE c.contype = 'c'"
    ):
        # PostgreSQL prints `col IN ('D', 'A')` as `(col = ANY (ARRAY['D'::bpchar, ...]))`.
        found = _IN_CHECK.search(definition)
        if found and table in shapes:
            shapes[table].choices[found.group(1)] = re.findall(r"'([^']*)'", found.group(2))
    ordered: list[TableShape] = []
    pending = dict(shapes)
    while pending:  # parents before children, so foreign keys find their rows
        ready = [
            t
            for t in pending.values()
            if all(ref == t.name or ref not in pending for ref, _ in t.foreign.values())
        ]
        for t in ready or list(pending.values()):
            ordered.append(t)
            pending.pop(t.name)
    return ordered


def _value(rnd: random.Random, col: Column, table: str, serial: int) -> Any:
    name, ctype = col.name.lower(), col.type
    if name in ("thn", "tahun", "tahun_anggaran") and ctype in (
        "character varying",
        "text",
        "character",
    ):
        return str(rnd.choice((2024, 2025, 2026)))
    if ctype in ("integer", "bigint", "smallint"):
        if "tahun" in name:
            return rnd.choice((2024, 2025, 2026))
        if "bulan" in name:
            return rnd.randint(1, 12)
        return rnd.randint(1, 500)
    if ctype == "numeric":
        return Decimal(rnd.randint(5_000_000, 2_500_000_000)).scaleb(-2).quantize(Decimal("0.01"))
    if ctype in ("double precision", "real"):
        return round(rnd.uniform(0, 100), 2)
    if ctype == "boolean":
        if col.nullable and rnd.random() < 0.1:
            return None  # unknown: e.g. e-Planning's is_aktif, which the mapping defaults
        return rnd.random() < 0.8
    if ctype == "date":
        return dt.date(2025, 1, 1) + dt.timedelta(days=rnd.randint(0, 600))
    if ctype.startswith("timestamp"):
        now = dt.datetime.now(dt.UTC)
        return now if "with time zone" in ctype else now.replace(tzinfo=None)
    if ctype in ("json", "jsonb"):
        return orjson.dumps({"catatan": rnd.choice(_WORDS), "versi": serial}).decode()
    if ctype == "uuid":
        return f"{rnd.getrandbits(128):032x}"
    text: str
    if name in _OPD_CODE_COLUMNS:
        text = rnd.choice(OPD_CODES)
    elif "kode" in name or name.startswith(("kd_", "no", "id_")) or name.endswith("key"):
        text = f"{table.rsplit('.', 1)[-1][:3].upper()}.{serial:05d}"
    elif "penyedia" in name or "rekanan" in name or "perusahaan" in name:
        text = rnd.choice(_COMPANIES)
    elif "lokasi" in name or "alamat" in name:
        text = rnd.choice(_PLACES)
    elif "status" in name:
        text = rnd.choice(("1", "2", "3"))
    else:
        text = f"  {rnd.choice(_WORDS)} {serial}  " if "nama" in name else rnd.choice(_WORDS)
    return text[: col.max_length] if col.max_length else text


def _opd_code_column(shape: TableShape) -> str | None:
    """The column of `shape` that names an OPD by its code (not as a foreign key), if any."""
    for col in shape.columns:
        if col.name in _OPD_CODE_COLUMNS and col.name not in shape.foreign:
            return col.name
    return None


def _opd_value(rnd: random.Random, col: Column, code: str) -> tuple[bool, Any]:
    """(True, value) for a column describing the OPD `code` (name, abbreviation, address), in
    one of the spellings the systems use; (False, None) for any other column. Each system
    picks its own spelling, so e-Planning and SIPKD often disagree about the same OPD."""
    name = col.name.lower()
    opd = _OPD_BY_CODE.get(code.strip())
    if opd is None:
        return False, None
    full, short = opd
    choices: tuple[str | None, ...]
    if name.startswith("nm") or "nama" in name:
        choices = (full, full.upper(), f"{full} Kota Madiun", f"  {full} ")
    elif "singkatan" in name or name.startswith("akro"):
        choices = (short, short, short.capitalize(), None)
    elif "alamat" in name:
        choices = (f"{rnd.choice(_STREETS)} No. {rnd.randint(1, 120)}", None)
    else:
        return False, None
    value = rnd.choice([c for c in choices if c is not None or col.nullable])
    return True, value[: col.max_length] if value is not None and col.max_length else value


def _row(
    rnd: random.Random, conn: psycopg.Connection[Any], shape: TableShape, serial: int
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    opd_column = _opd_code_column(shape)
    for col in shape.columns:
        if opd_column is not None and col.name != opd_column and opd_column in row:
            described, value = _opd_value(rnd, col, row[opd_column])
            if described:
                row[col.name] = value
                continue
        if col.name in shape.foreign:
            ref_table, ref_col = shape.foreign[col.name]
            found = conn.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY random() LIMIT 1").format(
                    sql.Identifier(ref_col), _ident(ref_table)
                )
            ).fetchone()
            row[col.name] = found[0] if found else None
        elif col.has_default and col.name in shape.key:
            continue  # serial key
        elif col.has_default and rnd.random() < 0.7:
            continue  # let the source's own default speak, as most inserts do
        elif col.name in shape.choices:
            row[col.name] = rnd.choice(shape.choices[col.name])
        else:
            row[col.name] = _value(rnd, col, shape.name, serial)
    return row


def _insert(conn: psycopg.Connection[Any], shape: TableShape, row: dict[str, Any]) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
            _ident(shape.name),
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
        ),
        list(row.values()),
    )


def seed(conn: psycopg.Connection[Any], system: str, rows_per_table: int = 40) -> None:
    rnd = random.Random(system)
    for shape in introspect(conn):
        for i in range(1, rows_per_table + 1):
            try:
                _insert(conn, shape, _row(rnd, conn, shape, i))
            except psycopg.Error as exc:
                log.debug("seed %s.%s: %s", system, shape.name, exc)


class ChangeGenerator(threading.Thread):
    """Inserts, updates and deletes spread over every source table, at a steady rate."""

    def __init__(self, dsns: dict[str, str], rate: float, stop: threading.Event) -> None:
        super().__init__(name="demo-changes", daemon=True)
        self.dsns = dsns
        self.rate = rate
        self.stop = stop
        self.changes = 0

    def run(self) -> None:
        rnd = random.Random(42)
        conns = {s: psycopg.connect(dsn, autocommit=True) for s, dsn in self.dsns.items()}
        shapes = {s: introspect(c) for s, c in conns.items()}
        serial = 10_000
        try:
            while not self.stop.wait(1.0 / self.rate if self.rate > 0 else 1.0):
                system = rnd.choice([s for s in conns if shapes[s]])
                conn, shape = conns[system], rnd.choice(shapes[system])
                serial += 1
                try:
                    self._change(rnd, conn, shape, serial)
                    self.changes += 1
                except psycopg.Error as exc:
                    log.debug("demo change on %s.%s: %s", system, shape.name, exc)
        finally:
            for c in conns.values():
                c.close()

    def _change(
        self, rnd: random.Random, conn: psycopg.Connection[Any], shape: TableShape, serial: int
    ) -> None:
        roll = rnd.random()
        if roll < 0.35 or not shape.key:
            _insert(conn, shape, _row(rnd, conn, shape, serial))
            return
        opd_column = _opd_code_column(shape)
        read = [*shape.key, *([opd_column] if opd_column and opd_column not in shape.key else [])]
        found = conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY random() LIMIT 1").format(
                sql.SQL(", ").join(map(sql.Identifier, read)), _ident(shape.name)
            )
        ).fetchone()
        if found is None:
            return
        key = list(found[: len(shape.key)])
        code = found[read.index(opd_column)] if opd_column else None
        where = sql.SQL(" AND ").join(
            sql.SQL("{} = %s").format(sql.Identifier(k)) for k in shape.key
        )
        if roll < 0.92:
            editable = [
                c for c in shape.columns if c.name not in shape.key and c.name not in shape.foreign
            ]
            if not editable:
                return
            col = rnd.choice(editable)
            described, value = (False, None) if code is None else _opd_value(rnd, col, code)
            if not described:
                value = (
                    rnd.choice(shape.choices[col.name])
                    if col.name in shape.choices
                    else _value(rnd, col, shape.name, serial)
                )
            conn.execute(
                sql.SQL("UPDATE {} SET {} = %s WHERE {}").format(
                    _ident(shape.name), sql.Identifier(col.name), where
                ),
                [value, *key],
            )
        else:
            conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(_ident(shape.name), where), key)
