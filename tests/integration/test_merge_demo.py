"""The example `opd` (e_planning + sipkd) converges under the demo's workload.

Real components throughout: the e-Planning and SIPKD source schemas (`mappings/sql/`), the
shipped mappings (`mappings/e_planning.yaml`, which holds opd's merge rules, and
`mappings/sipkd.yaml`), the demo's seed and ChangeGenerator (whose OPD codes overlap between
the two systems), and `tunggal run` with the embedded Debezium engine in a subprocess. Once the
workload stops and the daemon has caught up, the target `opd` must be what the merge rules make
of the two source tables' final rows, computed here by a small model of the mapping and rules.

What the final rows cannot tell, side tables (not in the connectors' publications) filled by
triggers do: whether e-Planning deleted an OPD (`deleted_by: [e_planning]`: then it is gone,
whatever SIPKD holds), and when each system last changed it (the row's `_tunggal_source` is the
holding source whose change committed last). The ChangeGenerator runs one autocommit statement
at a time from one thread on one cluster, so the trigger's clock_timestamp() orders the changes
as their commits do.

The workload gives rows both systems hold, rows one holds, values the rules take from SIPKD
and SIPKD withdrawals (deletes, units turned into headers, kdunit changes); e-Planning's own
deletes rarely get past ref_program's foreign key. So after it the test adds one change of each
delete rule: SIPKD lets go of an OPD both hold (it stays), and e-Planning deletes one SIPKD
holds (it is gone).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from tests.conftest import REPO, Daemon, run_cli, sql, wait_until, write_config, write_connector
from tunggal.demo import data
from tunggal.demo.data import ChangeGenerator, seed
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

MAPPINGS = REPO / "mappings"
SYSTEMS = ("e_planning", "sipkd")
RATE = 40.0  # changes per second over both systems, as the demo makes them
WORKLOAD_S = 18.0
COLUMNS = "kode_opd, nama_opd, singkatan, alamat, aktif, sumber_data, _tunggal_source"

# One row per change of an OPD in the source: the code it changed (for a SIPKD update also the
# code it left, when kdunit changed), the unit's type after and before (SIPKD), and when.
# Committed or rolled back with the change. The ChangeGenerator, which changes every table it
# finds, is kept away from them.
AUDIT = {
    "e_planning": """
CREATE SCHEMA test_audit;
CREATE TABLE test_audit.opd (
    seq bigserial PRIMARY KEY, kode text NOT NULL, op text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION test_audit.record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO test_audit.opd (kode, op) VALUES (OLD.kd_skpd, 'delete');
    ELSE
        INSERT INTO test_audit.opd (kode, op) VALUES (NEW.kd_skpd, lower(TG_OP));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER test_opd_audit AFTER INSERT OR UPDATE OR DELETE ON public.ref_skpd
    FOR EACH ROW EXECUTE FUNCTION test_audit.record();
""",
    "sipkd": """
CREATE SCHEMA test_audit;
CREATE TABLE test_audit.opd (
    seq bigserial PRIMARY KEY, kode text NOT NULL, op text NOT NULL, type text, old_type text,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION test_audit.record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.kdunit <> NEW.kdunit) THEN
        INSERT INTO test_audit.opd (kode, op, old_type)
        VALUES (trim(OLD.kdunit), 'left', OLD.type);
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO test_audit.opd (kode, op, type)
        VALUES (trim(NEW.kdunit), 'insert', NEW.type);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO test_audit.opd (kode, op, type, old_type)
        VALUES (trim(NEW.kdunit), 'update', NEW.type,
                CASE WHEN OLD.kdunit = NEW.kdunit THEN OLD.type END);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER test_opd_audit AFTER INSERT OR UPDATE OR DELETE ON sipkd.daftunit
    FOR EACH ROW EXECUTE FUNCTION test_audit.record();
""",
}


def _status(port: int) -> dict[str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
            data = orjson.loads(resp.read())
    except OSError:
        return {}
    return {s["name"]: s["state"] for s in data["sources"]}


def expected(
    dsn: dict[str, str],
) -> tuple[list[tuple[Any, ...]], dict[str, dict[str, Any]]]:
    """The target rows the mappings and opd's merge rules make of the sources' final rows.

    Each row ends with the set of sources `_tunggal_source` may name: one, except when both
    systems hold the OPD and neither changed it since the initial snapshots (then the
    snapshots' own times decide). Also returns, per code, facts for the test's assertions.
    """
    # Each system's contribution, as its mapping makes it (sipkd: type D units only).
    e_held = {
        kode: {
            "nama_opd": nama.strip().upper(),
            "singkatan": singkatan,
            "alamat": alamat,
            "aktif": True if aktif is None else aktif,  # default_if_null: true
            "sumber_data": "e-Planning",
        }
        for kode, nama, singkatan, alamat, aktif in sql(
            dsn["e_planning"],
            "SELECT kd_skpd, nm_skpd, singkatan, alamat, is_aktif FROM public.ref_skpd",
        )
    }
    s_held = {
        kdunit.strip(): {
            "nama_opd": nama.strip().upper(),
            "singkatan": akro,
            "alamat": alamat,
            "sumber_data": "SIPKD",
        }
        for kdunit, nama, akro, alamat in sql(
            dsn["sipkd"],
            "SELECT kdunit, nmunit, akrounit, alamat FROM sipkd.daftunit WHERE type = 'D'",
        )
    }
    e_deleted = {
        r[0] for r in sql(dsn["e_planning"], "SELECT kode FROM test_audit.opd WHERE op = 'delete'")
    }
    # When each system last wrote each code it holds (streamed changes only; none: the
    # snapshot). For SIPKD the last change that gave a unit this code.
    e_last = dict(sql(dsn["e_planning"], "SELECT kode, max(at) FROM test_audit.opd GROUP BY 1"))
    s_last = dict(
        sql(dsn["sipkd"], "SELECT kode, max(at) FROM test_audit.opd WHERE op <> 'left' GROUP BY 1")
    )
    # The codes SIPKD held as a detail unit before some streamed change.
    s_had = {
        r[0]
        for r in sql(dsn["sipkd"], "SELECT DISTINCT kode FROM test_audit.opd WHERE old_type = 'D'")
    }
    priority = {
        "nama_opd": ("e_planning", "sipkd"),
        "singkatan": ("sipkd", "e_planning"),
        "alamat": ("e_planning", "sipkd"),
        "aktif": ("e_planning",),  # sipkd does not map it
        "sumber_data": ("e_planning", "sipkd"),
    }
    rows: list[tuple[Any, ...]] = []
    facts: dict[str, dict[str, Any]] = {}
    for kode in sorted(e_held.keys() | s_held.keys()):
        held = {
            s: c for s, c in (("e_planning", e_held.get(kode)), ("sipkd", s_held.get(kode))) if c
        }
        facts[kode] = {
            "held": frozenset(held),
            "contributions": held,
            "sipkd_had": kode in s_had,
            # e-Planning's latest change is a delete, and it is in deleted_by: gone
            "gone": "e_planning" not in held and kode in e_deleted,
        }
        if facts[kode]["gone"]:
            continue
        values: dict[str, Any] = {}
        supplier: dict[str, str | None] = {}
        for column, order in priority.items():
            chosen = next((s for s in order if s in held and held[s][column] is not None), None)
            values[column] = None if chosen is None else held[chosen][column]
            supplier[column] = chosen
        times = {"e_planning": e_last.get(kode), "sipkd": s_last.get(kode)}
        streamed = {s: times[s] for s in held if times[s] is not None}
        if len(held) == 1 or streamed:
            latest = {max(streamed, key=lambda s: streamed[s])} if streamed else set(held)
        else:
            latest = set(held)
        rows.append((kode, *values.values(), frozenset(latest)))
        facts[kode]["supplier"] = supplier
    return rows, facts


def cases(facts: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """The codes in each situation the rules tell apart."""
    visible = {k: f for k, f in facts.items() if not f["gone"]}
    both = [k for k, f in visible.items() if f["held"] == {"e_planning", "sipkd"}]
    return {
        "both": both,
        "e_planning only": [k for k, f in visible.items() if f["held"] == {"e_planning"}],
        "sipkd only": [k for k, f in visible.items() if f["held"] == {"sipkd"}],
        # The rules picked SIPKD's value over a different one e-Planning holds (singkatan:
        # SIPKD first), or filled e-Planning's gap (alamat: e-Planning first, but NULL).
        "sipkd's value": [
            (k, c)
            for k in both
            for c, s in visible[k]["supplier"].items()
            if s == "sipkd"
            and visible[k]["contributions"]["e_planning"][c]
            != visible[k]["contributions"]["sipkd"][c]
        ],
        # SIPKD let go of it (a delete, type H, another kdunit); e-Planning holds it: it stays.
        "withdrawn by sipkd": [
            k for k, f in visible.items() if f["held"] == {"e_planning"} and f["sipkd_had"]
        ],
        # e-Planning deleted it, SIPKD holds it: gone (deleted_by).
        "deleted by e_planning": [k for k, f in facts.items() if f["gone"]],
    }


def matches(got: tuple[Any, ...] | None, want: tuple[Any, ...] | None) -> bool:
    """A target row (or None) is the model's: the same values, and a source it allows."""
    if got is None or want is None:
        return got is want
    return got[:-1] == want[:-1] and got[-1] in want[-1]


def differ(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> list[str]:
    """The codes whose target row is not the model's."""
    have, wanted = {r[0]: r for r in got}, {w[0]: w for w in want}
    return sorted(k for k in have.keys() | wanted.keys() if not matches(have.get(k), wanted.get(k)))


def test_example_opd_converges_under_the_demo_workload(
    pg: PgCluster,
    new_db: Any,
    tmp_path: Path,
    daemon_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = time.monotonic()
    # The ChangeGenerator changes every table it finds; the test's side tables are not its.
    every_table = data.introspect
    monkeypatch.setattr(
        data,
        "introspect",
        lambda conn: [t for t in every_table(conn) if not t.name.startswith("test_audit.")],
    )
    dsn: dict[str, str] = {}
    for system in SYSTEMS:
        dsn[system] = new_db(system)
        with psycopg.connect(dsn[system], autocommit=True) as conn:
            conn.execute((MAPPINGS / "sql" / f"{system}.sql").read_text())
            seed(conn, system)
            conn.execute(AUDIT[system])  # after the seed: the snapshot reads the seed
    assert sql(
        dsn["sipkd"],
        "SELECT relreplident FROM pg_class WHERE oid = 'sipkd.daftunit'::regclass",
    ) == [("f",)]
    target = new_db("merge_demo")
    connectors = {
        s: str(write_connector(tmp_path, s, pg.port, dsn[s].rsplit("/", 1)[1])) for s in SYSTEMS
    }
    config = write_config(
        tmp_path, target, connectors, [str(MAPPINGS / f"{s}.yaml") for s in SYSTEMS]
    )
    metrics = re.search(r"^metrics:\n  port: (\d+)$", config.read_text(), re.M)
    assert metrics is not None
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    stop = threading.Event()
    generator = ChangeGenerator(dsn, rate=RATE, stop=stop)
    daemon: Daemon = daemon_factory(config)

    def logs() -> str:
        return daemon.output()[-4000:]

    def touch() -> None:
        # A change in each system, to an OPD both may hold: streamed once the snapshot is done.
        sql(
            dsn["e_planning"],
            "UPDATE public.ref_skpd SET tgl_update = now() "
            "WHERE kd_skpd = (SELECT min(kd_skpd) FROM public.ref_skpd)",
        )
        sql(
            dsn["sipkd"],
            "UPDATE sipkd.daftunit SET kdlevel = kdlevel "
            "WHERE unitkey = (SELECT min(unitkey) FROM sipkd.daftunit WHERE type = 'D')",
        )

    try:
        daemon.start().wait_ready(120)

        def streaming() -> bool:
            touch()
            return _status(int(metrics[1])) == dict.fromkeys(SYSTEMS, "streaming")

        # Both snapshots are done once each source has streamed a change: from here on,
        # every change the model reads a time for commits after every snapshot row.
        wait_until(streaming, 120, interval=1.0, message="both sources streaming", context=logs)
        touch()
        generator.start()
        time.sleep(WORKLOAD_S)
        stop.set()
        generator.join(30)
        assert not generator.is_alive()
        assert daemon.alive(), logs()
        workload = {"changes": generator.changes, "workload_done_at_s": time.monotonic() - started}

        _, facts = expected(dsn)
        seen = cases(facts)
        assert seen["both"] and seen["e_planning only"] and seen["sipkd only"], seen
        assert seen["sipkd's value"], [(k, facts[k]) for k in seen["both"]]
        assert generator.changes > RATE * WORKLOAD_S / 4, workload
        # Whatever the workload did, both delete rules once more, on rows that stay visible
        # until then: SIPKD lets go of an OPD both hold (it stays, e-Planning's values), and
        # e-Planning takes one SIPKD alone holds and deletes it again (gone).
        (kode_both,) = seen["both"][:1]
        sql(
            dsn["sipkd"],
            "UPDATE sipkd.daftunit SET type = 'H' WHERE trim(kdunit) = %s",
            (kode_both,),
        )
        (kode_sipkd,) = seen["sipkd only"][:1]
        sql(
            dsn["e_planning"],
            "INSERT INTO public.ref_skpd (kd_skpd, nm_skpd) VALUES (%s, 'Unit Uji')",
            (kode_sipkd,),
        )
        sql(dsn["e_planning"], "DELETE FROM public.ref_skpd WHERE kd_skpd = %s", (kode_sipkd,))

        want, facts = expected(dsn)
        final = cases(facts)
        assert kode_both in final["withdrawn by sipkd"], facts[kode_both]
        assert kode_sipkd in final["deleted by e_planning"], facts[kode_sipkd]

        def diff() -> str:
            got = {r[0]: r for r in sql(target, f"SELECT {COLUMNS} FROM public.opd")}
            wanted = {w[0]: w for w in want}
            keys = differ(list(got.values()), want)
            contributions = sql(
                target,
                "SELECT kode_opd, _tunggal_source, _tunggal_state, nama_opd, singkatan, alamat, "
                "to_timestamp(_tunggal_ts / 1e6), _tunggal_position "
                "FROM tunggal_contributions.public__opd WHERE kode_opd = ANY(%s) ORDER BY 1, 2",
                (keys,),
            )
            audit = {
                s: sql(
                    dsn[s],
                    "SELECT * FROM test_audit.opd WHERE kode = ANY(%s) ORDER BY seq",
                    (keys,),
                )
                for s in SYSTEMS
            }
            return (
                f"{len(keys)} rows differ (target, expected): "
                f"{[(got.get(k), wanted.get(k)) for k in keys][:8]}\n"
                f"contributions: {contributions[:16]}\naudit: {audit}\n{logs()}"
            )

        wait_until(
            lambda: not differ(sql(target, f"SELECT {COLUMNS} FROM public.opd"), want),
            60,
            interval=0.5,
            message="opd merged from the sources' final rows",
            context=diff,
        )
        assert sql(target, "SELECT count(*) FROM public.tunggal_dead_letters") == [(0,)]
        # The contributions agree with the model on which system holds which OPD.
        held = sql(
            target,
            "SELECT kode_opd, array_agg(_tunggal_source ORDER BY _tunggal_source) "
            "FROM tunggal_contributions.public__opd WHERE _tunggal_state = 'live' GROUP BY 1",
        )
        assert {k: frozenset(s) for k, s in held} == {k: f["held"] for k, f in facts.items()}
        code, _ = daemon.terminate(timeout=30)
        assert code == 0, logs()
        print(
            f"merge demo: {workload}, workload: "
            f"{ {case: len(found) for case, found in seen.items()} }, final: "
            f"{ {case: len(found) for case, found in final.items()} }, "
            f"{len(want)} rows ({sum(len(w[-1]) == 1 for w in want)} with one possible "
            f"_tunggal_source), {time.monotonic() - started:.1f}s"
        )
    finally:
        stop.set()
        if daemon.alive():
            daemon.kill()
