"""A dead-letter flood stops: a mapping that fails on every row pauses its source after a few
dead letters, nothing acknowledged past what was written; the fixed mapping resumes it and
every row arrives. A single poison row among good ones is still dead-lettered alone.

Real PostgreSQL for source and target, the real Debezium engine in `tunggal run`."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_connector
from tests.faults_helpers import KV_DDL, kv_diff, kv_mapping, metric_sum, metrics_port, same_kv
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

# `n` computed by a CEL expression that fails on every row (`v` is text such as 'awal-7'): the
# mapping validates and loads, and breaks at run time, as no start-up check can see.
BROKEN = "    columns: {id: id, v: v, n: {expr: 'int(row.v)'}}\n"
# Fails on the one row whose `v` is 'racun' (poison), and maps every other row as it is.
ONE_POISON = "    columns: {id: id, v: v, n: {expr: 'row.v == \"racun\" ? int(row.v) : row.n'}}\n"


@dataclass
class Kv:
    name: str
    source: str
    target: str
    mapping: Path
    config: Path
    port: int
    daemon: Daemon

    def logs(self) -> str:
        return self.daemon.output()[-6000:]

    def write_mapping(self, columns: str | None) -> None:
        text = kv_mapping(self.name)
        if columns is not None:
            text = re.sub(r"    columns: .*\n", columns, text)
        # Saved by rename, as editors do: the watcher never reads half a file.
        tmp = self.mapping.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.mapping)

    def dead_letters(self) -> int:
        return int(sql(self.target, "SELECT count(*) FROM public.tunggal_dead_letters")[0][0])

    def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/status"
        body = urllib.request.urlopen(url, timeout=5).read()
        (found,) = [s for s in json.loads(body)["sources"] if s["name"] == self.name]
        return dict(found)

    def reloads(self) -> int:
        return self.daemon.output().count("mappings reloaded:")


@pytest.fixture
def kv(
    pg: PgCluster,
    new_db: Callable[[str], str],
    tmp_path: Path,
    daemon_factory: Callable[[Path], Daemon],
) -> Kv:
    source, target = new_db("flsrc"), new_db("fltgt")
    sql(source, KV_DDL)
    sql(target, KV_DDL)
    name = f"fl_{uuid.uuid4().hex[:6]}"
    mapping = tmp_path / "kv.yaml"
    mapping.write_text(kv_mapping(name))
    connector = write_connector(tmp_path, name, pg.port, source.rsplit("/", 1)[1])
    config = write_config(tmp_path, target, {name: str(connector)}, ["kv.yaml"])
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    sql(source, "INSERT INTO kv SELECT g, 'awal-' || g, 0 FROM generate_series(1, 200) g")
    daemon = daemon_factory(config).start()
    s = Kv(name, source, target, mapping, config, metrics_port(config.read_text()), daemon)
    wait_until(lambda: same_kv(target, source), 90, message="snapshot", context=lambda: s.logs())
    return s


def _reload(s: Kv, columns: str | None) -> None:
    before = s.reloads()
    s.write_mapping(columns)
    wait_until(lambda: s.reloads() > before, 30, message="mapping reloaded", context=s.logs)


def test_a_mapping_failing_on_every_row_pauses_the_source_until_it_is_fixed(kv: Kv) -> None:
    s = kv
    _reload(s, BROKEN)
    # Under load: 3,000 new rows and 1,000 updates in 8 transactions, as a bulk job makes them.
    for first in range(201, 3201, 500):
        sql(
            s.source,
            "INSERT INTO kv SELECT g, 'baru-' || g, 0 FROM generate_series(%s::int, %s::int) g",
            (first, first + 499),
        )
    sql(s.source, "UPDATE kv SET v = 'ubah-' || id, n = n + 1 WHERE id <= 1000")

    def paused() -> bool:
        return "paused:" in (s.status()["error"] or "") and (
            metric_sum(s.port, "tunggal_source_paused") == 1
        )

    wait_until(paused, 60, interval=0.3, message="the source paused", context=s.logs)
    time.sleep(3)  # long enough for a flood to show, had it not stopped
    assert s.daemon.alive(), s.logs()
    status = s.status()
    assert status["state"] == "paused", status
    assert status["paused"]["since"] and "public.kv" in status["paused"]["reason"], status
    assert "public.kv" in status["error"] and "MappingError" in status["error"], status
    assert metric_sum(s.port, "tunggal_source_up") == 0
    out = s.daemon.output()
    pause_lines = [x for x in out.splitlines() if f"source {s.name} paused:" in x]
    assert len(pause_lines) == 1, pause_lines
    assert " ERROR " in pause_lines[0] and "public.kv" in pause_lines[0], pause_lines[0]
    # 4,000 failing events; a handful dead-lettered before the rule tripped, the rest held.
    letters = s.dead_letters()
    assert letters < 40, letters
    errors = [x for x in out.splitlines() if " ERROR " in x]
    assert len(errors) <= letters + 1, errors[:5]
    assert "Traceback" not in out
    # Nothing of the held events reached the target.
    assert int(sql(s.target, "SELECT count(*) FROM kv")[0][0]) == 200

    # The fix: the plain mapping again. The source resumes from its last commit.
    _reload(s, None)
    wait_until(
        lambda: same_kv(s.target, s.source),
        90,
        interval=0.5,
        message="every row after the fix",
        context=lambda: kv_diff(s.target, s.source) + "\n" + s.logs(),
    )
    wait_until(
        lambda: s.status()["state"] == "streaming" and s.status()["error"] is None,
        30,
        message="the source streaming again",
        context=s.logs,
    )
    assert metric_sum(s.port, "tunggal_source_paused") == 0
    assert metric_sum(s.port, "tunggal_source_up") == 1
    assert f"source {s.name} resumes after the mapping reload" in s.daemon.output()
    # Nothing more was dead-lettered after the pause: the held events were mapped anew.
    assert s.dead_letters() == letters
    code, _ = s.daemon.terminate()
    assert code == 0, s.logs()


def test_a_single_poison_row_among_good_ones_is_only_dead_lettered(kv: Kv) -> None:
    s = kv
    _reload(s, ONE_POISON)
    sql(s.source, "INSERT INTO kv SELECT g, 'baru-' || g, 0 FROM generate_series(201, 1200) g")
    sql(s.source, "INSERT INTO kv VALUES (1201, 'racun', 0)")
    sql(s.source, "INSERT INTO kv SELECT g, 'baru-' || g, 0 FROM generate_series(1202, 2200) g")
    wait_until(
        lambda: int(sql(s.target, "SELECT count(*) FROM kv")[0][0]) == 2199,
        60,
        interval=0.5,
        message="every good row",
        context=s.logs,
    )
    wait_until(lambda: s.dead_letters() == 1, 10, message="the poison row dead-lettered")
    letter = sql(s.target, "SELECT source_table, error FROM public.tunggal_dead_letters")
    assert letter[0][0] == "public.kv", letter
    assert sql(s.target, "SELECT count(*) FROM kv WHERE id = 1201") == [(0,)]
    status = s.status()
    assert status["state"] == "streaming" and status["paused"] is None, status
    assert metric_sum(s.port, "tunggal_source_paused") == 0
    assert "paused:" not in s.daemon.output()
    code, _ = s.daemon.terminate()
    assert code == 0, s.logs()


def test_ready_is_said_only_once_the_source_has_connected(
    new_db: Callable[[str], str], tmp_path: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    """A source database nobody listens on: the daemon starts, the engine cannot connect and
    the daemon stops with one line, without ever saying `ready: reading from` it."""
    target = new_db("rdtgt")
    sql(target, KV_DDL)
    name = f"rd_{uuid.uuid4().hex[:6]}"
    (tmp_path / "kv.yaml").write_text(kv_mapping(name))
    connector = write_connector(tmp_path, name, 1, "nope")  # port 1: refused at once
    config = write_config(tmp_path, target, {name: str(connector)}, ["kv.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    daemon = daemon_factory(config).start()
    wait_until(lambda: not daemon.alive(), 90, message="the daemon stopped", context=daemon.output)
    out = daemon.output()
    assert "started: connecting to " + name in out, out[-3000:]
    assert "ready: reading from" not in out, out[-3000:]
    assert daemon.proc is not None and daemon.proc.returncode == 1, out[-3000:]
