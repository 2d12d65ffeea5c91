"""Many sources, one row, through Kafka: two sources write one target table, two `tunggal run`
instances share both sources' partitions, and one of them is killed (-9) mid-stream.

The target must end equal to a small reference model of the survivorship rules (each source's
latest change per row, then the rules per column), whatever order the instances happened to
apply the two sources' changes in.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until
from tests.integration.test_kafka import (
    Topic,
    _change_events,
    _events_applied,
    _last_assignment,
    _stored_offsets,
    _with_metrics_port,
)
from tunggal.devtools.kafkabroker import TansuBroker
from tunggal.devtools.pgcluster import free_port
from tunggal.devtools.synth import change_line

pytestmark = pytest.mark.integration

TABLE = "public.kegiatan"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, in µs
TARGET_DDL = """CREATE TABLE kegiatan (id bigint PRIMARY KEY, kode text NOT NULL, nama text,
  tahun integer, pagu numeric(18,2), aktif boolean)"""
# A maps kode, nama, tahun, pagu; B those and aktif. Keys overlap: 301..700 are written by both.
COLUMNS = {"a": ("kode", "nama", "tahun", "pagu"), "b": ("kode", "nama", "tahun", "pagu", "aktif")}
KEYS = {"a": range(1, 701), "b": range(301, 1001)}
EVENTS_PER_RUN = 8000  # both sources together, tombstones not counted


def _mapping(source: str, role: str, a: str, b: str) -> str:
    cols = ", ".join(f"{c}: {c}" for c in ("id", *COLUMNS[role]))
    text = (
        f"source: {source}\ntables:\n  - from: {TABLE}\n    to: {TABLE}\n    key: [id]\n"
        f"    columns: {{{cols}}}\n"
    )
    if role == "a":
        # kode and aktif by the default (aktif: B alone maps it), the rest by their own rule.
        text += (
            "    merge:\n"
            f"      default: {{priority: [{a}, {b}]}}\n"
            "      columns:\n"
            "        nama: latest\n"
            f"        pagu: {{priority: [{b}, {a}]}}\n"
            f"        tahun: {{owner: {a}}}\n"
            f"      deleted_by: [{a}]\n"
        )
    return text


def _config(tmp_path: Path, target: str, broker: TansuBroker, a: str, b: str, group: str) -> Path:
    for source in (a, b):
        (tmp_path / f"connector-{source}.yaml").write_text(
            f"name: {source}\nkind: postgresql\nschemas: false\n"
            "database: {host: 127.0.0.1, dbname: src, user: cdc}\n"
        )
    (tmp_path / "ma.yaml").write_text(_mapping(a, "a", a, b))
    (tmp_path / "mb.yaml").write_text(_mapping(b, "b", a, b))
    lines = [
        f"target: {{dsn: '{target}'}}",
        "mappings: [ma.yaml, mb.yaml]",
        f"state_dir: {tmp_path / 'state'}",
        # Small batches: many target transactions of both sources interleave on the same rows.
        "batch: {max_size: 300, max_age_ms: 200, when_caught_up: true}",
        "retry: {initial_delay_s: 0.2, max_delay_s: 2}",
        "watch_mappings: false",
        f"metrics: {{port: {free_port()}}}",
        "kafka:",
        f"  bootstrap_servers: ['{broker.bootstrap}']",
        f"  group_id: {group}",
        "  session_timeout_ms: 2000",  # tansu: a join takes half the session timeout
        "  heartbeat_interval_ms: 500",
        "sources:",
    ]
    for source in (a, b):
        lines += [
            f"  - name: {source}",
            "    engine: kafka",
            f"    connector: connector-{source}.yaml",
        ]
    path = tmp_path / "tunggal.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the histories and the reference model ---------------------------------------------------


@dataclass
class Latest:
    """One source's latest change to one row: live with its values, or deleted."""

    live: bool
    ts: int
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Histories:
    lines: dict[str, list[bytes]]  # role -> replay-file lines, in the source's log order
    final: dict[str, dict[int, Latest]]  # role -> key -> its latest change


def _values(rnd: random.Random, role: str, key: int, version: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": key,
        "kode": f"KEG.{key:05d}.{role.upper()}",  # never NULL: the target's NOT NULL
        "nama": None if rnd.random() < 0.15 else f"kegiatan {key} dari {role} v{version}",
        "tahun": None if rnd.random() < 0.1 else rnd.randint(2020, 2026),
        "pagu": None if rnd.random() < 0.25 else f"{rnd.randint(100, 10**9) / 100:.2f}",
    }
    if role == "b":
        row["aktif"] = None if rnd.random() < 0.2 else rnd.random() < 0.5
    return row


def _histories(names: dict[str, str], seed: int) -> Histories:
    """Both sources' changes on one timeline (commit times shared by neighbours, so that some
    latest changes of A and B commit at the same µs), each with its own log positions."""
    rnd = random.Random(seed)
    out = Histories({"a": [], "b": []}, {"a": {}, "b": {}})
    lsn = {"a": 20_000_000, "b": 90_000_000}

    def change(role: str, key: int, ts: int, version: int, may_delete: bool) -> None:
        source = names[role]
        lsn[role] += rnd.randint(40, 400)
        now = out.final[role].get(key)
        if now is not None and now.live and may_delete and rnd.random() < 0.15:
            before = dict.fromkeys(("id", *COLUMNS[role]))
            before["id"] = key
            out.lines[role].append(change_line("d", before, None, lsn[role], ts, source, TABLE))
            key_json = orjson.dumps({"id": key}).decode()
            tombstone = {"destination": f"{source}.{TABLE}", "key": key_json, "value": None}
            out.lines[role].append(orjson.dumps(tombstone))
            out.final[role][key] = Latest(False, ts)
            return
        op = "u" if now is not None and now.live else "c"  # a deleted key may come back
        row = _values(rnd, role, key, version)
        out.lines[role].append(change_line(op, None, row, lsn[role], ts, source, TABLE))
        out.final[role][key] = Latest(True, ts, {c: row[c] for c in COLUMNS[role]})

    for i in range(EVENTS_PER_RUN - 80):
        role = "a" if rnd.random() < 0.5 else "b"
        change(role, rnd.choice(KEYS[role]), T0 + (i // 2) * 1000, i, may_delete=True)
    # Last, 40 shared keys changed by both sources in the same µs: `latest` goes to B (the
    # greater source name), and so does the row's bookkeeping.
    ts = T0 + EVENTS_PER_RUN * 1000
    for key in range(301, 341):
        change("a", key, ts, EVENTS_PER_RUN, may_delete=False)
        change("b", key, ts, EVENTS_PER_RUN, may_delete=False)
    return out


def _expected(work: Histories, names: dict[str, str]) -> list[tuple[Any, ...]]:
    """The visible rows the rules make, as (id, kode, nama, tahun, pagu, aktif, source, ts)."""
    rows = []
    for key in sorted(set(work.final["a"]) | set(work.final["b"])):
        a, b = work.final["a"].get(key), work.final["b"].get(key)
        if a is not None and not a.live:
            continue  # deleted_by [a]: A's delete removes the row whoever else holds it
        held = {role: c for role, c in (("a", a), ("b", b)) if c is not None and c.live}
        if not held:
            continue
        # Latest: the later commit; at the same µs the greater source name (B's).
        last = max(held, key=lambda role: (held[role].ts, names[role]))
        rows.append(
            (
                key,
                _first(held, "kode", "a", "b"),
                held[last].values["nama"],  # latest, even when NULL
                held["a"].values["tahun"] if "a" in held else None,  # owner A
                _first(held, "pagu", "b", "a"),
                _first(held, "aktif", "b"),  # the default's priority, among those who map it
                names[last],
                held[last].ts,
            )
        )
    return rows


def _first(held: dict[str, Latest], column: str, *order: str) -> Any:
    """Priority: the first listed holder with a non-NULL value."""
    for role in order:
        if role in held and held[role].values.get(column) is not None:
            return held[role].values[column]
    return None


def _rows(target: str) -> list[tuple[Any, ...]]:
    return sql(
        target,
        "SELECT id, kode, nama, tahun, pagu::text, aktif, _tunggal_source, _tunggal_ts "
        "FROM kegiatan ORDER BY id",
    )


def _contributions(target: str) -> list[tuple[Any, ...]]:
    return sql(
        target,
        "SELECT id, _tunggal_source, _tunggal_state, _tunggal_ts "
        "FROM tunggal_contributions.public__kegiatan ORDER BY id, _tunggal_source",
    )


def _expected_contributions(work: Histories, names: dict[str, str]) -> list[tuple[Any, ...]]:
    return sorted(
        (key, names[role], "live" if c.live else "hard", c.ts)
        for role in ("a", "b")
        for key, c in work.final[role].items()
    )


def _diff(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> str:
    got_by, want_by = {r[0]: r for r in got}, {r[0]: r for r in want}
    wrong = [
        f"id {k}: got {got_by.get(k)} want {want_by.get(k)}"
        for k in sorted(set(got_by) | set(want_by))
        if got_by.get(k) != want_by.get(k)
    ]
    return f"{len(wrong)} rows differ:\n" + "\n".join(wrong[:20])


# -- the test ---------------------------------------------------------------------------------


def test_two_sources_two_instances_one_kill_9(
    kafka_broker: TansuBroker, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    suffix = uuid.uuid4().hex[:8]
    names = {"a": f"a{suffix}", "b": f"b{suffix}"}  # a < b, as the tie-break expects
    target, group = new_db("merge_kafka"), f"g{suffix}"
    sql(target, TARGET_DDL)
    config = _config(tmp_path, target, kafka_broker, names["a"], names["b"], group)
    result = run_cli("schema", "--apply", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr

    work = _histories(names, seed=21)
    expected = _expected(work, names)
    # The model has rows of every kind the rules make (else a broken rule could pass unseen).
    assert {r[6] for r in expected} == set(names.values())
    only_b = [k for k, c in work.final["b"].items() if c.live and c.values["tahun"] is not None]
    only_b = [k for k in only_b if k not in work.final["a"]]  # owner A: tahun NULL though B has one
    assert any(r[0] in only_b and r[3] is None for r in expected)
    assert any(r[2] is None for r in expected)  # latest, NULL included
    topics = {role: Topic(kafka_broker, f"{names[role]}.{TABLE}", partitions=3) for role in "ab"}
    # Three parts per source: before the instances start, while they run (one is killed in
    # its middle), and after the killed one is back.
    cuts = {
        role: (len(work.lines[role]) * 3 // 10, len(work.lines[role]) * 8 // 10) for role in "ab"
    }
    for role in "ab":
        topics[role].send_lines(work.lines[role][: cuts[role][0]])

    first: Daemon = daemon_factory(config).start().wait_ready()
    second: Daemon = daemon_factory(_with_metrics_port(config)).start().wait_ready()

    def logs(*daemons: Daemon) -> str:
        return "\n----\n".join(d.output()[-2000:] for d in daemons)

    wait_until(
        lambda: all(_last_assignment(d, s) for d in (first, second) for s in names.values()),
        60,
        message="both sources' partitions shared by both instances",
        context=lambda: logs(first, second),
    )
    wait_until(
        lambda: all(_events_applied(target, s) for s in names.values()),
        30,
        message="both sources applied",
        context=lambda: logs(first, second),
    )

    halfway = threading.Event()

    def stream() -> None:
        """The middle part, both sources interleaved in small pieces, over about 3 s."""
        middle = {r: _chunks(work.lines[r][cuts[r][0] : cuts[r][1]], 100) for r in "ab"}
        pieces = [
            (role, piece)
            for pair in zip_longest(middle["a"], middle["b"])
            for role, piece in zip("ab", pair, strict=True)
            if piece is not None
        ]
        for n, (role, piece) in enumerate(pieces):
            topics[role].send_lines(piece)
            if n == len(pieces) // 2:
                halfway.set()
            time.sleep(0.05)

    writer = threading.Thread(target=stream)
    writer.start()
    assert halfway.wait(60)
    first.kill()  # SIGKILL mid-stream: what it read and had not committed is read again
    writer.join(timeout=120)
    assert not writer.is_alive()
    # The survivor takes over every partition of both sources.
    wait_until(
        lambda: all(_last_assignment(second, s).count("[") == 3 for s in names.values()),
        60,
        message="the survivor assigned all partitions",
        context=lambda: logs(second),
    )
    third: Daemon = daemon_factory(config).start().wait_ready()
    wait_until(
        lambda: all(_last_assignment(d, s) for d in (second, third) for s in names.values()),
        60,
        message="partitions shared again with the restarted instance",
        context=lambda: logs(second, third),
    )
    for role in "ab":
        topics[role].send_lines(work.lines[role][cuts[role][1] :])
        topics[role].close()

    def offsets_at_end() -> bool:
        return all(
            _stored_offsets(target, group, names[role]) == dict(topics[role].per_partition)
            for role in "ab"
        )

    wait_until(
        offsets_at_end,
        60,
        message="stored offsets at the end of every partition of both sources",
        context=lambda: (
            "\n".join(
                f"{names[r]}: {_stored_offsets(target, group, names[r])} of "
                f"{dict(topics[r].per_partition)}"
                for r in "ab"
            )
            + "\n"
            + logs(second, third)
        ),
    )
    # Offsets are stored with the rows: at the end of the topics the target is final.
    got = _rows(target)
    assert got == expected, _diff(got, expected)
    assert _contributions(target) == _expected_contributions(work, names)
    assert sql(target, "SELECT count(*) FROM tunggal_dead_letters") == [(0,)]
    # Exactly once per source: no batch applied twice across the kill, none lost.
    for role in "ab":
        assert _events_applied(target, names[role]) == _change_events(work.lines[role])
    for d in (second, third):
        code, _ = d.terminate()
        assert code == 0, d.output()[-3000:]


def _chunks(lines: list[bytes], size: int) -> list[list[bytes]]:
    return [lines[i : i + size] for i in range(0, len(lines), size)]
