"""Metrics: scrape-time values, slow-poller readings, /status."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tunggal.metrics import Metrics, SnapshotProgress


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(m.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_lag_and_time_since_commit_grow_while_a_source_stalls() -> None:
    clock = Clock(1000.0)
    m = Metrics(clock=clock)
    m.committed("a", 5, 42, commit_ts_us=int(999.5 * 1e6))
    before = samples(m)
    clock.now = 1060.0
    after = samples(m)
    key = ("tunggal_source_lag_seconds", (("source", "a"),))
    assert before[key] == 0.5 and after[key] == 60.5
    since = ("tunggal_seconds_since_last_commit", (("source", "a"),))
    assert after[since] == 60.0


def test_probe_readings_are_exported_and_left_out_when_unknown() -> None:
    m = Metrics()
    values = samples(m)
    assert not any(name.startswith("tunggal_jvm") for name, _ in values)
    m.set_jvm_heap(100, 200)
    m.set_slot_retained("a", "tunggal_a", 4096.0)
    m.set_snapshot(
        "a",
        SnapshotProgress(
            running=True,
            completed=False,
            tables_total=3,
            tables_remaining=1,
            rows_scanned={"public.kv": 7},
        ),
    )
    m.set_row_estimates("a", {"public.kv": 10, "public.never_analyzed": -1})
    values = samples(m)
    assert values[("tunggal_jvm_heap_used_bytes", ())] == 100
    assert (
        values[
            (
                "tunggal_replication_slot_wal_retained_bytes",
                (("slot", "tunggal_a"), ("source", "a")),
            )
        ]
        == 4096
    )
    assert values[("tunggal_snapshot_tables_done", (("source", "a"),))] == 2
    assert values[("tunggal_snapshot_rows_scanned", (("source", "a"), ("table", "public.kv")))] == 7
    estimated = [k for k in values if k[0] == "tunggal_snapshot_rows_estimated"]
    assert estimated == [
        ("tunggal_snapshot_rows_estimated", (("source", "a"), ("table", "public.kv")))
    ]
    # A failed reading: absent, not the last value.
    m.set_slot_retained("a", "tunggal_a", None)
    m.set_jvm_heap(None, None)
    values = samples(m)
    assert not any(
        n in {"tunggal_replication_slot_wal_retained_bytes", "tunggal_jvm_heap_used_bytes"}
        for n, _ in values
    )


def test_process_metrics_and_zero_series_for_alerts() -> None:
    values = samples(Metrics())
    assert ("process_cpu_seconds_total", ()) in values
    assert any(name == "python_info" for name, _ in values)
    assert values[("tunggal_mapping_reloads_total", (("result", "failure"),))] == 0


def test_status_carries_what_tunggal_status_shows() -> None:
    clock = Clock(2000.0)
    m = Metrics(clock=clock)
    m.set_mapping("0123456789abcdef", ["m.yaml"])
    m.set_state("a", "streaming")
    m.committed("a", 3, 77, commit_ts_us=int(1999 * 1e6))
    m.table_rows("public.kv", "upsert", 3)
    m.dead_letters.labels("a").inc()
    m.set_snapshot(
        "a", SnapshotProgress(False, True, tables_total=1, rows_scanned={"public.kv": 3})
    )
    m.set_row_estimates("a", {"public.kv": 3})
    clock.now = 2005.0
    status = m.status()
    (source,) = status["sources"]  # type: ignore[misc]
    assert source["state"] == "streaming" and source["position"] == "77"
    assert source["lag_seconds"] == 6.0 and source["seconds_since_commit"] == 5.0
    assert "events_per_second" in source and source["last_commit"] == 2000.0
    assert source["snapshot"]["completed"] is True
    assert source["snapshot"]["tables"] == {"public.kv": {"rows": 3, "estimated_rows": 3}}
    assert status["tables"] == {"public.kv": {"upsert": 3}}
    assert status["dead_letters"] == 1
    assert status["mapping"]["hash"] == "0123456789ab"


def test_slot_probe_reads_postgres_sources_only_and_survives_an_unreachable_one() -> None:
    import threading

    from tunggal.sources.pgstats import SlotProbe, SourceDatabase

    props = {
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": "127.0.0.1",
        "database.port": "1",  # nothing listens: connection refused at once
        "database.user": "u",
        "database.password": "secret",
        "database.dbname": "d",
        "slot.name": "tunggal_a",
    }
    mysql = {**props, "connector.class": "io.debezium.connector.mysql.MySqlConnector"}
    assert SourceDatabase.from_properties("b", mysql, ["d.t"]) is None
    db = SourceDatabase.from_properties("a", props, ["public.kv"])
    assert db is not None and db.slot == "tunggal_a" and db.tables == ("public.kv",)
    m = Metrics()
    m.set_slot_retained("a", "tunggal_a", 5.0)
    probe = SlotProbe(m, [db], threading.Event())
    assert probe.poll_one(db) is False
    assert not any(n == "tunggal_replication_slot_wal_retained_bytes" for n, _ in samples(m))


def test_snapshot_rows_done_counts_committed_reads_between_debezium_updates() -> None:
    m = Metrics()
    m.set_snapshot("a", SnapshotProgress(True, False, tables_total=1, rows_scanned={}))
    m.set_row_estimates("a", {"public.kv": 1000})
    m.events.labels("a", "public.kv", "r", "applied").inc(400)
    m.events.labels("a", "public.kv", "r", "skipped").inc(100)
    m.events.labels("a", "public.kv", "c", "applied").inc(7)  # streamed: not the snapshot
    status = m.snapshot_status("a")
    assert status is not None
    assert status["tables"] == {"public.kv": {"rows": 500, "estimated_rows": 1000}}
