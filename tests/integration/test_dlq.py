"""`tunggal dlq`: poison events are set aside, inspected, re-applied after a fix, and purged."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import run_cli, sql, tunggal_cmd, write_config
from tunggal.devtools.synth import NARROW_COLUMNS, NARROW_DDL, mixed_workload

pytestmark = pytest.mark.integration

# The narrow table plus two columns that only some events break: a status code looked up
# without a default (an unknown code is a mapping error) and a text column cast to integer.
MAPPING = """source: bench
tables:
  - from: public.kegiatan
    to: public.kegiatan
    key: [id]
    columns:
      id: id
      kode: kode
      nama: nama
      tahun: tahun
      pagu: pagu
      tgl_mulai: tgl_mulai
      diubah: diubah
      aktif: aktif
      status: {from: status, lookup: {"1": AKTIF, "2": NONAKTIF}}
      urusan: {from: urusan, cast: integer}
"""
FIXED = MAPPING.replace('"2": NONAKTIF}}', '"2": NONAKTIF}, default: LAIN}')
DDL = NARROW_DDL.format(name="kegiatan") + "; ALTER TABLE kegiatan ADD status text, ADD urusan int"
COLUMNS = ", ".join(NARROW_COLUMNS)


def _setup(tmp_path: Path, target: str) -> Path:
    sql(target, DDL)
    (tmp_path / "m.yaml").write_text(MAPPING)
    config = write_config(tmp_path, target, {}, ["m.yaml"])
    result = run_cli("schema", "--apply", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return config


def _dlq(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # stdin is not a terminal, as under cron or CI: purge must then insist on --yes.
    return subprocess.run(
        tunggal_cmd("dlq", *args, "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ),
    )


def _replay(config: Path, events: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("replay", "--config", str(config), "--source", "bench", str(events))


def _with_columns(line: bytes, status: str, urusan: str) -> bytes:
    record = orjson.loads(line)
    if record["value"] is None:
        return line
    value = orjson.loads(record["value"])
    if value["after"] is not None:
        value["after"].update(status=status, urusan=urusan)
    record["value"] = orjson.dumps(value).decode()
    return orjson.dumps(record)


def _key_and_op(line: bytes) -> tuple[int, str] | None:
    record = orjson.loads(line)
    if record["value"] is None:
        return None
    value = orjson.loads(record["value"])
    row = value["after"] if value["after"] is not None else value["before"]
    return int(row["id"]), str(value["op"])


def _letters(target: str) -> list[tuple[Any, ...]]:
    return sql(
        target,
        "SELECT id, error_class, error, raw_value, mapping_hash, first_failed_at "
        "FROM tunggal_dead_letters ORDER BY id",
    )


def test_poison_mix_is_dead_lettered_then_fixed_replayed_listed_and_purged(
    new_db: Any, tmp_path: Path
) -> None:
    target = new_db("dlq")
    config = _setup(tmp_path, target)
    work = mixed_workload(3000, seed=11)
    rnd = random.Random(11)
    lines = [_with_columns(x, rnd.choice("12"), str(rnd.randint(1, 40))) for x in work.lines]

    # Where each key's events are, to poison both a key's last change (so the row is missing
    # or stale until the fix) and earlier ones (whose replay must not roll the row back).
    per_key: dict[int, list[int]] = {}
    for i, line in enumerate(lines):
        found = _key_and_op(line)
        if found is not None:
            per_key.setdefault(found[0], []).append(i)
    last = {positions[-1] for positions in per_key.values()}
    writes = [i for i, x in enumerate(lines) if (_key_and_op(x) or (0, "d"))[1] in "cu"]
    last_writes = sorted(set(writes) & last)
    earlier_writes = sorted(set(writes) - last)
    lookup_last = rnd.sample(last_writes, 6)
    lookup_earlier = rnd.sample(earlier_writes, 6)
    cast_earlier = rnd.sample(sorted(set(earlier_writes) - set(lookup_earlier)), 6)
    for i in [*lookup_last, *lookup_earlier]:
        lines[i] = _with_columns(lines[i], "9", "7")  # "9" is not in the lookup
    for i in cast_earlier:
        lines[i] = _with_columns(lines[i], "1", "tidak ada")  # not a whole number
    # Keys whose final state comes from a poisoned event: stale or missing until the fix.
    stale = {_key_and_op(lines[i])[0] for i in lookup_last}  # type: ignore[index]

    undecodable = [f"not json at all {n} {{".encode() for n in range(6)] + [
        b'{"destination": "bench.public.kegiatan", "key": "{}", "value": "[1,2]"}',
        b'{"destination": "bench.public.kegiatan", "key": null, "value": {"op": "c"}}',
        b'{"destination": "bench.public.kegiatan", "key": "{}", "value": "\\"text\\""}',
        b'{"destination": "bench.public.kegiatan", "key": "{}", "value": {"after": {"id": 5}}}',
        b'["an", "array", "line"]',
        b"42",
    ]
    for n, junk in enumerate(undecodable):
        lines.insert(len(lines) * (n + 1) // (len(undecodable) + 1), junk)
    poison = len(undecodable) + len(lookup_last) + len(lookup_earlier) + len(cast_earlier)
    assert poison == 30 and 0.009 < poison / len(lines) < 0.011
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")

    result = _replay(config, events)
    assert result.returncode == 0, result.stderr
    assert f"replayed {len(lines)} events" in result.stdout
    assert f"{poison} dead-lettered" in result.stdout
    good = {k: row for k, row in work.final.items() if k not in stale}
    got = {r[0]: r for r in sql(target, f"SELECT {COLUMNS} FROM kegiatan")}
    assert {k: got[k] for k in good if k in got} == good
    assert all(got.get(k) != work.final[k] for k in stale)
    assert set(got) - stale == set(good)
    letters = _letters(target)
    assert len(letters) == poison
    classes = [c for _, c, *_ in letters]
    assert classes.count("DecodeError") == len(undecodable)
    assert classes.count("MappingError") == 18
    assert sum("not in the lookup table" in e for _, _, e, *_ in letters) == 12
    assert sum("cannot cast" in e and "urusan" in e for _, _, e, *_ in letters) == 6
    old_hash = letters[0][4]
    progress = sql(target, "SELECT * FROM tunggal_progress")

    # The admin adds the missing default, then replays the queue.
    (tmp_path / "m.yaml").write_text(FIXED)
    fixed = _dlq(config, "replay")
    assert fixed.returncode == 0, fixed.stderr
    assert "replayed 12, still failing 18" in fixed.stdout
    # Every row is now what the stream meant, old replayed changes included (position rule).
    assert sql(target, f"SELECT {COLUMNS} FROM kegiatan ORDER BY id") == [
        work.final[k] for k in sorted(work.final)
    ]
    statuses = dict(sql(target, "SELECT id, status FROM kegiatan"))
    assert {statuses[k] for k in stale} == {"LAIN"}
    after = _letters(target)
    before_by_id = {x[0]: x for x in letters}
    assert [c for _, c, *_ in after].count("DecodeError") == len(undecodable)
    assert [c for _, c, *_ in after].count("MappingError") == 6
    # Entries that failed again keep first_failed_at and carry the new mapping's hash.
    assert {x[4] for x in after} != {old_hash} and len({x[4] for x in after}) == 1
    for entry_id, error_class, error, _, _, first_failed in after:
        assert before_by_id[entry_id][5] == first_failed
        assert before_by_id[entry_id][1:3] == (error_class, error)
    assert sql(target, "SELECT * FROM tunggal_progress") == progress

    # Each failed replay is counted on the entry: written once, failed twice since.
    assert sql(target, "SELECT DISTINCT attempts FROM tunggal_dead_letters") == [(2,)]
    again = _dlq(config, "replay")
    assert again.returncode == 0 and "replayed 0, still failing 18" in again.stdout
    assert sql(
        target,
        "SELECT DISTINCT attempts, last_failed_at > first_failed_at FROM tunggal_dead_letters",
    ) == [(3, True)]
    assert len(_letters(target)) == 18  # failing again never duplicates an entry

    listed = _dlq(config, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(x) for x in listed.stdout.splitlines()]
    assert [r["id"] for r in rows] == sorted((x[0] for x in after), reverse=True)
    assert "18 dead letters in total" in listed.stderr
    assert set(rows[0]) >= {"id", "source", "table", "error_class", "error", "raw_value"}
    assert {r["source"] for r in rows} == {"bench"}
    by_table = _dlq(config, "list", "--json", "--table", "kegiatan", "--limit", "5")
    assert len(by_table.stdout.splitlines()) == 5
    # 6 cast failures + 4 undecodable events that still name their topic
    assert "10 dead letters in total, showing the newest 5" in by_table.stderr
    plain = _dlq(config, "list")
    assert len(plain.stdout.splitlines()) == 18
    assert all(len(x.split("\t")) == 6 for x in plain.stdout.splitlines())

    not_json = next(r for r in rows if r["raw_value"].startswith("not json at all"))
    shown = _dlq(config, "show", str(not_json["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "DecodeError" in shown.stdout and not_json["raw_value"] in shown.stdout
    assert not_json["error"] in shown.stdout
    cast = next(r for r in rows if r["error_class"] == "MappingError")
    shown = _dlq(config, "show", str(cast["id"]), "--json")
    assert json.loads(shown.stdout) == cast
    shown = _dlq(config, "show", str(cast["id"]))
    assert '"urusan": "tidak ada"' in shown.stdout  # the raw value, pretty-printed
    assert cast["error"] in shown.stdout and "public.kegiatan" in shown.stdout
    missing = _dlq(config, "show", "999999")
    assert missing.returncode == 1 and "no dead letter with id 999999" in missing.stderr
    assert "Traceback" not in missing.stderr

    tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    refused = _dlq(config, "purge", "--before", tomorrow)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    kept = _dlq(config, "purge", "--before", yesterday, "--yes")
    assert kept.returncode == 0 and "purged 0 dead letters" in kept.stdout
    purged = _dlq(config, "purge", "--before", tomorrow, "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 18 dead letters" in purged.stdout
    assert _letters(target) == []


def _line(template: bytes, op: str, key: int, lsn: int, status: str | None, nama: str) -> bytes:
    """One change event shaped like the synthetic ones, at a chosen position."""
    record = orjson.loads(template)
    value = orjson.loads(record["value"])
    row = dict(value["after"], id=key, kode=f"K{key}", nama=nama, status=status, urusan="3")
    value["op"] = op
    value["before"], value["after"] = (row, None) if op == "d" else (None, row)
    # No lastCommitLsn (as for a first transaction): the position is the bare change LSN.
    value["source"].update(lsn=lsn, ts_us=lsn * 1000, ts_ms=lsn, sequence=f'[null,"{lsn}"]')
    record.update(key=orjson.dumps({"id": key}).decode(), value=orjson.dumps(value).decode())
    return orjson.dumps(record)


def test_replayed_dead_letter_older_than_the_row_does_not_overwrite_it(
    new_db: Any, tmp_path: Path
) -> None:
    target = new_db("dlqpos")
    config = _setup(tmp_path, target)
    sql(target, "ALTER TABLE kegiatan ADD CONSTRAINT nama_ok CHECK (nama <> 'four bad')")
    template = mixed_workload(1).lines[0]
    tombstone = b'{"destination": "bench.public.kegiatan", "key": "{\\"id\\": 2}", "value": null}'
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b"\n".join(
            [
                _line(template, "c", 1, 100_000, "1", "one v1"),
                _line(template, "c", 2, 110_000, "1", "two v1"),
                _line(template, "c", 3, 120_000, "9", "three v1"),  # poison, never superseded
                _line(
                    template, "c", 4, 130_000, "9", "four bad"
                ),  # poison, then the target refuses
                _line(template, "u", 1, 200_000, "9", "one v2"),  # poison, superseded below
                _line(template, "u", 2, 210_000, "9", "two v2"),  # poison, row deleted below
                _line(template, "u", 1, 300_000, "2", "one v3"),
                _line(template, "d", 2, 310_000, None, ""),
                tombstone,
            ]
        )
        + b"\n"
    )
    result = _replay(config, events)
    assert result.returncode == 0 and "4 dead-lettered" in result.stdout, result.stderr
    state = "SELECT id, nama, status, _tunggal_position FROM kegiatan ORDER BY id"
    assert sql(target, state) == [(1, "one v3", "NONAKTIF", 300_000)]
    (tmp_path / "m.yaml").write_text(FIXED)

    other = _dlq(config, "replay", "--source", "elsewhere")
    assert other.returncode == 0 and "replayed 0, still failing 0" in other.stdout
    (three,) = sql(target, "SELECT id FROM tunggal_dead_letters WHERE raw_value LIKE '%three%'")
    one = _dlq(config, "replay", "--id", str(three[0]))
    assert one.returncode == 0 and "replayed 1, still failing 0" in one.stdout, one.stderr
    rest = _dlq(config, "replay")
    assert rest.returncode == 0 and "replayed 2, still failing 1" in rest.stdout, rest.stderr
    # Row 1 keeps its newer state, row 2 stays deleted (its tombstone is newer), row 3 lands.
    assert sql(target, state) == [
        (1, "one v3", "NONAKTIF", 300_000),
        (3, "three v1", "LAIN", 120_000),
    ]
    # The row the target refuses was isolated; its entry stays, now saying why, in the same
    # transaction that applied and removed the others.
    (four,) = sql(target, "SELECT error_class, error, position FROM tunggal_dead_letters")
    assert four[0] == "PoisonEventError" and "nama_ok" in four[1] and four[2] == 130_000
