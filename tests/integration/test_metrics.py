"""/metrics after a real sync through the embedded Debezium engine: every metric operators
and the ops/ files rely on is there, and the values move. One daemon start (the JVM is slow)."""

from __future__ import annotations

import re
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import run_cli, sql, wait_until, write_config, write_connector
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

MAPPING = """source: SOURCE
tables:
  - from: public.kv
    to: public.kv
    key: [id]
    columns:
      id: id
      v: v
"""

EXPECTED = [
    "tunggal_events_total",
    "tunggal_events_received_total",
    "tunggal_rows_applied_total",
    "tunggal_batch_size_bucket",
    "tunggal_batch_apply_seconds_bucket",
    "tunggal_end_to_end_lag_seconds_bucket",
    "tunggal_source_lag_seconds",
    "tunggal_seconds_since_last_commit",
    "tunggal_source_up",
    "tunggal_retries_total",
    "tunggal_dead_letters_total",
    "tunggal_dead_letters_current",
    "tunggal_mapping_info",
    "tunggal_mapping_reloads_total",
    "tunggal_source_restarts_total",
    "tunggal_snapshot_running",
    "tunggal_snapshot_completed",
    "tunggal_snapshot_tables",
    "tunggal_snapshot_tables_done",
    "tunggal_snapshot_rows_scanned",
    "tunggal_snapshot_rows_estimated",
    "tunggal_jvm_heap_used_bytes",
    "tunggal_jvm_heap_max_bytes",
    "tunggal_replication_slot_wal_retained_bytes",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "python_info",
]


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> labels -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: dict[str, dict[Any, float]], name: str, **labels: str) -> float:
    return sum(
        v
        for k, v in samples.get(name, {}).items()
        if all((key, value) in k for key, value in labels.items())
    )


def test_metrics_after_a_real_sync(
    pg: PgCluster, new_db: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    source_dsn, target = new_db("msrc"), new_db("mtgt")
    sql(source_dsn, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    sql(source_dsn, "INSERT INTO kv SELECT g, 'row ' || g FROM generate_series(1, 300) g")
    sql(source_dsn, "ANALYZE kv")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    # Replication slots are per cluster and named after the source: one name per test.
    name = f"met_{uuid.uuid4().hex[:6]}"
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "m.yaml").write_text(MAPPING.replace("SOURCE", name))
    connector = write_connector(tmp_path, name, pg.port, source_dsn.rsplit("/", 1)[1])
    config = write_config(tmp_path, target, {name: str(connector)}, ["maps/*.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    port = int(re.search(r"port: (\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"

    daemon = daemon_factory(config).start().wait_ready(timeout=120)
    context = lambda: daemon.output()[-3000:]  # noqa: E731
    wait_until(
        lambda: sql(target, "SELECT count(*) FROM kv")[0][0] == 300,
        90,
        message="snapshot applied",
        context=context,
    )
    # The JVM probe reads every 5 s, the slot probe every 2 s until the slot exists.
    samples = wait_until(
        lambda: (
            (s := scrape(f"{base}/metrics"))
            and total(s, "tunggal_snapshot_completed", source=name) == 1
            and s.get("tunggal_replication_slot_wal_retained_bytes")
            and s
        ),
        60,
        message="snapshot completed and slot read",
        context=context,
    )
    missing = [n for n in EXPECTED if n not in samples]
    assert not missing, f"missing from /metrics: {missing}"

    assert total(samples, "tunggal_source_up", source=name) == 1
    assert total(samples, "tunggal_snapshot_tables_done", source=name) == 1
    assert total(samples, "tunggal_snapshot_rows_scanned", source=name, table="public.kv") == 300
    assert total(samples, "tunggal_snapshot_rows_estimated", source=name, table="public.kv") == 300
    assert total(samples, "tunggal_jvm_heap_used_bytes") > 0
    slot = f"tunggal_{name}"
    assert (
        samples["tunggal_replication_slot_wal_retained_bytes"][(("slot", slot), ("source", name))]
        >= 0
    )
    assert total(samples, "tunggal_events_total", source=name, op="r", outcome="applied") == 300
    assert total(samples, "tunggal_rows_applied_total", table="public.kv", action="upsert") == 300
    assert total(samples, "tunggal_mapping_info") == 1

    # Streaming: counters move after source inserts.
    received = total(samples, "tunggal_events_received_total", source=name)
    batches = total(samples, "tunggal_batch_size_count")
    sql(source_dsn, "INSERT INTO kv SELECT g, 'new' FROM generate_series(301, 310) g")
    after = wait_until(
        lambda: (
            (s := scrape(f"{base}/metrics"))
            and total(s, "tunggal_rows_applied_total", table="public.kv", action="upsert") == 310
            and s
        ),
        60,
        message="streamed inserts counted",
        context=context,
    )
    assert total(after, "tunggal_events_total", source=name, op="c", outcome="applied") == 10
    assert total(after, "tunggal_events_received_total", source=name) >= received + 10
    assert total(after, "tunggal_batch_size_count") > batches
    assert total(after, "tunggal_end_to_end_lag_seconds_count", source=name) > 0
    assert total(after, "tunggal_source_lag_seconds", source=name) >= 0

    with urllib.request.urlopen(f"{base}/status", timeout=5) as response:
        status = orjson.loads(response.read())
    (source,) = status["sources"]
    assert source["state"] == "streaming" and source["position"]
    assert source["seconds_since_commit"] is not None and source["lag_seconds"] is not None
    assert source["snapshot"]["completed"] is True
    kv = source["snapshot"]["tables"]["public.kv"]
    assert kv["rows"] == 300 and kv["estimated_rows"] >= 300
    assert source["slot_wal_retained_bytes"] is not None
    assert status["tables"]["public.kv"]["upsert"] == 310
    assert status["mapping"]["hash"] and status["jvm_heap_used_bytes"] > 0

    code, _ = daemon.terminate()
    assert code == 0, context()
