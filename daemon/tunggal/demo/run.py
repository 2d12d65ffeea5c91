"""`tunggal demo`: the four city systems and the consolidated database on throwaway PostgreSQL.

It starts two PostgreSQL servers (sources, target), loads the example schemas from
`mappings/sql/` (in a wheel: package data, see `examples_dir`), seeds them, runs the real
daemon (`tunggal run`, embedded Debezium) in a subprocess, keeps changing the sources, and
shows rows synced per source and table with lag, and how many rows of a table several systems
write (opd) come from more than one.
Ctrl-C stops the daemon gracefully and removes everything: the working directory is removed
on every way out, success, failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tunggal.demo.data import SYSTEMS, ChangeGenerator, seed
from tunggal.devtools.pgcluster import PgCluster, free_port
from tunggal.mapping.dbinfo import CONTRIBUTIONS_SCHEMA as CONTRIBUTIONS

REPO_MAPPINGS = Path(__file__).resolve().parents[3] / "mappings"


def examples_dir() -> Path:
    """The example mappings and their source schemas (`sql/`).

    A wheel carries the repository's `mappings/` as `tunggal/demo/examples/mappings` (the
    force-include of pyproject.toml, so there is one copy in the repository); a checkout,
    or an editable install of it, reads them in place.
    """
    packaged = Path(str(resources.files("tunggal.demo") / "examples" / "mappings"))
    for candidate in (packaged, REPO_MAPPINGS):
        if (candidate / "sql").is_dir():
            return candidate
    raise DemoError(f"the example mappings are missing: neither {packaged} nor {REPO_MAPPINGS}")


class DemoError(Exception):
    """The demo cannot go on; one line for the terminal."""


def tunggal_command() -> str:
    """How the user can run this same tunggal in another terminal (the hints name it)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "tunggal":
        found = shutil.which(sys.argv[0]) or sys.argv[0]
        return str(Path(found).absolute())
    return f"{sys.executable} -m tunggal"  # python -m tunggal, or tunggal from a test


def _write_config(
    work: Path, mappings: Path, sources: PgCluster, target_dsn: str, metrics_port: int
) -> Path:
    for system in SYSTEMS:
        (work / f"{system}.connector.yaml").write_text(
            f"name: {system}\nkind: postgresql\ndatabase:\n  host: 127.0.0.1\n"
            f"  port: {sources.port}\n  dbname: {system}\n  user: postgres\n"
            "  password: ${TUNGGAL_DEMO_PASSWORD}\nproperties:\n  poll.interval.ms: '100'\n"
        )
    config = work / "tunggal.yaml"
    lines = [
        "target:",
        f"  dsn: {target_dsn}",
        "mappings:",
        *[f"  - {mappings / (s + '.yaml')}" for s in SYSTEMS],
        f"state_dir: {work / 'state'}",
        "batch:",
        "  max_size: 2000",
        "  max_age_ms: 200",
        "metrics:",
        "  host: 127.0.0.1",
        f"  port: {metrics_port}",
        "java:",
        "  heap: 384m",
        "sources:",
    ]
    for system in SYSTEMS:
        lines += [f"  - name: {system}", f"    connector: {work / (system + '.connector.yaml')}"]
    config.write_text("\n".join(lines) + "\n")
    return config


def _default_port_or_free(port: int) -> int:
    """The daemon's default port, so that `tunggal status` and `curl` work as the README
    says; another free one if something already listens there."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def _status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as resp:
            data: dict[str, Any] = orjson.loads(resp.read())
            return data
    except OSError:
        return None


def _lag_quantiles(port: int) -> tuple[float | None, float | None]:
    """p50/p99 of end-to-end lag from the daemon's histogram (upper bucket bounds)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None, None
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("tunggal_end_to_end_lag_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    if not buckets:
        return None, None
    total = buckets[max(buckets)]
    if not total:
        return None, None

    def quantile(q: float) -> float:
        return next(b for b in sorted(buckets) if buckets[b] >= q * total)

    return quantile(0.5), quantile(0.99)


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _view(target_dsn: str, port: int, changes: int) -> Table:
    table = Table(title="Tunggal demo — basis data tunggal", caption="Ctrl-C to stop")
    for col in ("source", "target table", "rows", "state", "lag (s)", "events/s"):
        table.add_column(col, justify="right" if col in ("rows", "lag (s)", "events/s") else "left")
    status = _status(port) or {"sources": []}
    by_source = {s["name"]: s for s in status.get("sources", [])}
    counts: list[tuple[str, str, int]] = []
    merged: list[str] = []
    with contextlib.suppress(psycopg.Error), psycopg.connect(target_dsn, connect_timeout=2) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_schema || '.' || table_name FROM information_schema.columns "
                "WHERE column_name = '_tunggal_source' AND table_schema <> %s ORDER BY 1",
                (CONTRIBUTIONS,),
            )
        ]
        for name in tables:
            schema, tbl = name.split(".", 1)
            for source, n in conn.execute(
                f'SELECT _tunggal_source, count(*) FROM "{schema}"."{tbl}" GROUP BY 1 ORDER BY 1'
            ):
                counts.append((source, name, n))
        merged = _merged(conn)
    for source, name, n in counts:
        s = by_source.get(source, {})
        lag = s.get("lag_seconds")
        table.add_row(
            source,
            name,
            str(n),
            s.get("state", "?"),
            f"{lag:.2f}" if isinstance(lag, float) else "-",
            str(s.get("events_per_second", "-")),
        )
    table.caption = " · ".join([*merged, f"{changes} source changes made", "Ctrl-C to stop"])
    return table


def _merged(conn: psycopg.Connection[Any]) -> list[str]:
    """For each table several systems write (opd: e-Planning and SIPKD), how many of its rows
    two or more of them hold at once: their values merged by the rules in the mappings."""
    found: list[str] = []
    for (table,) in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
        (CONTRIBUTIONS,),
    ).fetchall():
        # The contributions table's primary key: the target key, then _tunggal_source.
        key = [
            r[0]
            for r in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indisprimary AND i.indrelid = %s::regclass "
                "AND a.attname <> '_tunggal_source'",
                (f'"{CONTRIBUTIONS}"."{table}"',),
            )
        ]
        if not key:
            continue
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM (SELECT 1 FROM {} WHERE _tunggal_state = 'live' "
                "GROUP BY {} HAVING count(*) > 1) AS held"
            ).format(
                sql.Identifier(CONTRIBUTIONS, table), sql.SQL(", ").join(map(sql.Identifier, key))
            )
        ).fetchone()
        if row is not None:
            found.append(f"{table.replace('__', '.', 1)}: {row[0]} rows from two systems or more")
    return found


def run_demo(workdir: Path | None = None, rate: float = 20.0, duration: float = 0.0) -> int:
    console = Console(stderr=False)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    work: Path | None = None
    try:
        mappings = examples_dir()
        work = Path(tempfile.mkdtemp(prefix="tunggal-demo-")) if workdir is None else workdir
        return _run(console, work, mappings, stop, rate, duration)
    except (DemoError, RuntimeError, OSError, psycopg.Error) as exc:
        # RuntimeError: a PostgreSQL server that would not start (pgcluster's one line).
        console.print(f"[red]the demo stopped: {exc}[/]")
        return 1
    finally:
        if workdir is None and work is not None:
            shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(
    console: Console,
    work: Path,
    mappings: Path,
    stop: threading.Event,
    rate: float,
    duration: float,
) -> int:
    work.mkdir(parents=True, exist_ok=True)
    # The PostgreSQL servers run as an unprivileged user that must reach their directories.
    work.chmod(0o755)
    clusters: list[PgCluster] = []
    daemon: subprocess.Popen[bytes] | None = None
    generator: ChangeGenerator | None = None
    try:
        console.print("[bold]Starting PostgreSQL for the four source systems and the target…")
        sources = PgCluster(name="demo-sources", base_dir=work / "pg-sources")
        clusters.append(sources)
        sources.start()
        target_pg = PgCluster(name="demo-target", base_dir=work / "pg-target")
        clusters.append(target_pg)
        target_pg.start()
        for system in SYSTEMS:
            dsn = sources.create_database(system)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute((mappings / "sql" / f"{system}.sql").read_text())
                seed(conn, system)
        target_dsn = target_pg.create_database("tunggal")
        metrics_port = _default_port_or_free(9464)
        config = _write_config(work, mappings, sources, target_dsn, metrics_port)
        # A throwaway demo may run as root; a real deployment runs as its own user.
        env = {**os.environ, "TUNGGAL_DEMO_PASSWORD": "demo", "TUNGGAL_ALLOW_ROOT": "1"}
        tunggal = [sys.executable, "-m", "tunggal"]
        schema = subprocess.run(
            [*tunggal, "schema", "--apply", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            start_new_session=True,  # a Ctrl-C now is ours to act on (below), not its
        )
        if schema.returncode != 0:
            console.print(f"[red]tunggal schema failed:[/]\n{schema.stderr}")
            return 1
        if stop.is_set():
            console.print("stopped before the daemon started")
            return 130
        log_path = work / "daemon.log"
        console.print(
            f"[bold]Starting the daemon[/] (log: {log_path}, metrics: "
            f"http://127.0.0.1:{metrics_port}/metrics)\n"
            f"In another terminal: [bold]{tunggal_command()} status"
            f"{'' if metrics_port == 9464 else f' --url http://127.0.0.1:{metrics_port}'}[/]"
        )
        with open(log_path, "ab") as log_file:
            daemon = subprocess.Popen(
                [*tunggal, "run", "--config", str(config)],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Ctrl-C goes to the terminal's whole process group: the daemon would get it
                # and then our SIGTERM too, and a second signal means "exit at once". In its
                # own session it gets one SIGTERM from us and stops gracefully.
                start_new_session=True,
            )
        generator = ChangeGenerator({s: sources.dsn(s) for s in SYSTEMS}, rate=rate, stop=stop)
        generator.start()
        started = time.monotonic()
        interactive = console.is_terminal
        with (
            Live(console=console, refresh_per_second=2, auto_refresh=False)
            if interactive
            else contextlib.nullcontext() as live
        ):
            last_print = 0.0
            while not stop.is_set():
                if daemon.poll() is not None:
                    console.print(
                        f"[red]the daemon exited with {daemon.returncode}; see {log_path}[/]"
                    )
                    console.print(log_path.read_text(errors="replace")[-3000:])
                    return 1
                if duration and time.monotonic() - started >= duration:
                    break
                view = _view(target_dsn, metrics_port, generator.changes)
                if live is not None:
                    live.update(view, refresh=True)
                elif time.monotonic() - last_print > 5:
                    console.print(view)
                    last_print = time.monotonic()
                stop.wait(1.0)
        p50, p99 = _lag_quantiles(metrics_port)
        rss = _peak_rss_mb(daemon.pid)
        if rss is not None:
            console.print(f"daemon peak RSS (JVM included): {rss:.0f} MB")
        console.print(_view(target_dsn, metrics_port, generator.changes))
        if p50 is not None:
            console.print(f"end-to-end lag: p50 ≤ {p50}s, p99 ≤ {p99}s (histogram bucket bounds)")
        return 0
    finally:
        stop.set()
        if generator is not None:
            generator.join()
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(timeout=30)
                console.print(f"daemon stopped (exit {code})")
            except subprocess.TimeoutExpired:
                daemon.kill()
        for cluster in clusters:
            cluster.destroy()
