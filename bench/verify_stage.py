"""Benchmark of `tunggal verify` on a table in sync, beside a plain full comparison.

A source and a target table of N rows (the narrow table: 8 columns), equal, on one PostgreSQL
cluster. Measured, each in its own `tunggal verify --json --wait 0` process as users run it:

- **sql**: the mapping copies every column, so both sides' checksums are computed by the
  databases (`reconcile.plan`);
- **mapped**: the same table with `nama: {from: nama, transform: [trim]}`, so the source's
  rows go through the real mapping in Python and are checksummed by the target;
- the same two at N/10 rows, to show that verify's memory does not grow with the table;
- the plain comparison: `SELECT count(*), md5(string_agg(md5(ROW(...)::text), '' ORDER BY
  id))` on each side, both sides at once (what one would write by hand; it says whether the
  tables differ, not where).

Rates are rows per second per side: each side reads all N rows, concurrently with the other.

Standalone: `python bench/verify_stage.py --rows 1000000`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from tunggal.devtools.pgcluster import PgCluster
from tunggal.devtools.procstat import peak_rss_mb
from tunggal.devtools.synth import NARROW_COLUMNS, NARROW_DDL

TUNGGAL = [sys.executable, "-m", "tunggal"]
ENV = {**os.environ, "TUNGGAL_ALLOW_ROOT": "1"}
COLUMNS = ", ".join(NARROW_COLUMNS)
FILL = f"""INSERT INTO kegiatan ({COLUMNS})
SELECT g, 'KEG.' || lpad(g::text, 7, '0'), 'Kegiatan pembangunan ' || g || ' versi 1',
  2024 + g %% 3, (g * 37 %% 900000000) / 100.0, date '2025-01-01' + g %% 700,
  timestamp '2026-01-01' + g * interval '1 second', g %% 10 <> 0
FROM generate_series(1, %s) g"""


def _prepare(cluster: PgCluster, work: Path, name: str, rows: int, transform: bool) -> Path:
    source = cluster.create_database(f"{name}_src")
    target = cluster.create_database(f"{name}_tgt")
    for dsn in (source, target):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(NARROW_DDL.format(name="kegiatan"))
    run = work / name
    run.mkdir(parents=True, exist_ok=True)
    nama = "{from: nama, transform: [trim]}" if transform else "nama"
    columns = ", ".join(f"{c}: {nama if c == 'nama' else c}" for c in NARROW_COLUMNS)
    (run / "m.yaml").write_text(
        f"source: {name}\ntables:\n  - from: public.kegiatan\n    to: public.kegiatan\n"
        f"    key: [id]\n    columns: {{{columns}}}\n"
    )
    (run / "connector.yaml").write_text(
        f"name: {name}\nkind: postgresql\n"
        f"database: {{host: 127.0.0.1, port: {cluster.port}, dbname: {name}_src, "
        "user: postgres}\n"
    )
    config = run / "tunggal.yaml"
    config.write_text(
        f"target:\n  dsn: {target}\nmappings: [m.yaml]\nstate_dir: {run}/state\n"
        f"metrics:\n  enabled: false\nsources:\n  - {{name: {name}, connector: connector.yaml}}\n"
    )
    subprocess.run(
        [*TUNGGAL, "schema", "--apply", "-c", str(config)], check=True, env=ENV, capture_output=True
    )
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(FILL, (rows,))
        conn.execute("VACUUM ANALYZE kegiatan")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(FILL, (rows,))
        conn.execute(
            "UPDATE kegiatan SET _tunggal_source = %s, _tunggal_position = 1, _tunggal_ts = 1",
            (name,),
        )
        conn.execute("VACUUM FULL ANALYZE kegiatan")
    return config


def _verify(config: Path) -> dict[str, Any]:
    """One `tunggal verify` process: its report, wall time and peak RSS."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*TUNGGAL, "verify", "-c", str(config), "--json", "--wait", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    peak = 0.0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, peak_rss_mb(proc.pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=1800)
    done.set()
    watcher.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"verify exited {proc.returncode}: {err.decode()[-2000:]}")
    (table,) = json.loads(out)["tables"]
    return {
        "mode": table["mode"],
        "rows": table["source_rows"],
        "seconds": table["seconds"],
        "wall_s": round(wall, 3),
        "rows_per_s_per_side": round(table["source_rows"] / table["seconds"]),
        "peak_rss_mb": round(peak, 1),
    }


def _plain(config: Path) -> dict[str, Any]:
    """count(*) + md5(string_agg(...)) on both sides at once."""
    text = config.read_text()
    target = text.split("dsn: ")[1].split()[0]
    source = target.rsplit("_tgt", 1)[0] + "_src"
    query = (
        f"SELECT count(*), md5(string_agg(md5(ROW({COLUMNS})::text), '' ORDER BY id)) FROM kegiatan"
    )

    def one(dsn: str) -> tuple[float, Any]:
        with psycopg.connect(dsn) as conn:
            started = time.perf_counter()
            row = conn.execute(query).fetchone()
            return time.perf_counter() - started, row

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        (source_s, a), (target_s, b) = pool.map(one, (source, target))
    wall = time.perf_counter() - started
    assert a == b, (a, b)
    rows = int(a[0])
    return {
        "rows": rows,
        "source_s": round(source_s, 3),
        "target_s": round(target_s, 3),
        "wall_s": round(wall, 3),
        "rows_per_s_per_side": round(rows / wall),
    }


def bench_verify(cluster: PgCluster, work: Path, rows: int) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": rows}
    for label, transform in (("sql", False), ("mapped", True)):
        for size, suffix in ((rows, ""), (max(rows // 10, 1000), "_tenth")):
            config = _prepare(cluster, work, f"vb_{label}{suffix}", size, transform)
            out[f"{label}{suffix}"] = _verify(config)
            if label == "sql" and not suffix:
                out["plain"] = _plain(config)
            print(f"verify {label}{suffix}: {out[f'{label}{suffix}']}", file=sys.stderr)
    return out


def print_verify(result: dict[str, Any]) -> None:
    rows = result["rows"]
    print(
        f"\n{'verify, narrow table in sync':<52}{'rows/s per side':>18}{'seconds':>9}"
        f"{'peak RSS':>11}"
    )
    for key, label in (
        ("sql", f"verify, copied columns (SQL on both sides), {rows:,} rows"),
        ("mapped", f"verify, through the mapping (trim), {rows:,} rows"),
        ("sql_tenth", f"verify, copied columns, {result['sql_tenth']['rows']:,} rows"),
        ("mapped_tenth", f"verify, through the mapping, {result['mapped_tenth']['rows']:,} rows"),
    ):
        r = result[key]
        print(
            f"{label:<52}{r['rows_per_s_per_side']:>18,}{r['seconds']:>9.2f}"
            f"{r['peak_rss_mb']:>8.0f} MB"
        )
    p = result["plain"]
    print(
        f"{'count(*) + md5(string_agg) on both sides at once':<52}"
        f"{p['rows_per_s_per_side']:>18,}{p['wall_s']:>9.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunggal-bench-verify-"))
    cluster = PgCluster(name="bench-verify", fsync=True).start()
    try:
        result = bench_verify(cluster, work, args.rows)
    finally:
        cluster.destroy()
    print_verify(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"verify-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
