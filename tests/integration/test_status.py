"""`tunggal status` against a real daemon streaming from a real source through Debezium."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, run_cli, sql, wait_until, write_config, write_connector
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

MAPPING = """source: NAME
tables:
  - from: public.kv
    to: public.kv
    key: [id]
    columns: {id: id, v: {from: v, transform: [upper]}}
"""


@pytest.fixture
def running(pg: PgCluster, new_db: Any, tmp_path: Path, daemon_factory: Any) -> dict[str, Any]:
    source, target = new_db("src"), new_db("target")
    sql(source, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    sql(target, "CREATE TABLE kv (id int PRIMARY KEY, v text)")
    name = f"st_{uuid.uuid4().hex[:6]}"  # replication slots are per cluster: one per test
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "m.yaml").write_text(MAPPING.replace("NAME", name))
    connector = write_connector(tmp_path, name, pg.port, source.rsplit("/", 1)[1])
    config = write_config(tmp_path, target, {name: str(connector)}, ["maps/*.yaml"])
    assert run_cli("schema", "--apply", "--config", str(config)).returncode == 0
    port = int(re.search(r"port: (\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    daemon: Daemon = daemon_factory(config).start().wait_ready(120)

    # Two batches: in one, the insert and delete of id 3 would collapse into one write.
    def rows_in_target(count: int) -> None:
        wait_until(
            lambda: sql(target, "SELECT count(*) FROM kv") == [(count,)],
            90,
            message=f"{count} rows streamed",
            context=lambda: daemon.output()[-3000:],
        )

    sql(source, "INSERT INTO kv SELECT i, 'nilai ' || i FROM generate_series(1, 3) i")
    rows_in_target(3)
    sql(source, "DELETE FROM kv WHERE id = 3")
    rows_in_target(2)
    validated = run_cli("validate", "--config", str(config))
    mapping_hash = re.search(r"hash (\w+)", validated.stdout).group(1)  # type: ignore[union-attr]
    return {
        "name": name,
        "config": config,
        "url": f"http://127.0.0.1:{port}",
        "daemon": daemon,
        "hash": mapping_hash,
    }


def test_status_json_plain_and_daemon_gone(running: dict[str, Any]) -> None:
    name, url, daemon = running["name"], running["url"], running["daemon"]

    def status() -> dict[str, Any]:
        result = run_cli("status", "--config", str(running["config"]), "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    # The progress is recorded after the commit that put the rows in: wait for it too.
    seen: list[dict[str, Any]] = []

    def counted_the_delete() -> dict[str, Any] | None:
        seen.append(status())
        return seen[-1] if seen[-1]["tables"].get("public.kv", {}).get("delete") else None

    found = wait_until(
        counted_the_delete, 30, message="a counted delete", context=lambda: str(seen[-1:])
    )
    (source,) = found["sources"]
    assert source["name"] == name and source["state"] == "streaming"
    assert source["events_applied"] >= 4  # 3 inserts and a delete
    assert isinstance(source["position"], str) and int(source["position"]) > 0
    assert source["lag_seconds"] is not None and source["seconds_since_commit"] is not None
    assert found["tables"]["public.kv"] == {"upsert": 3, "delete": 1}
    assert found["dead_letters"] == 0
    assert found["mapping"]["hash"] == running["hash"]

    # Piped, as in a script or `| less`: plain text, no colour codes. The URL comes from the
    # environment this time.
    plain = run_cli("status", env={"TUNGGAL_STATUS_URL": url})
    assert plain.returncode == 0, plain.stderr
    assert "\x1b[" not in plain.stdout
    lines = plain.stdout.splitlines()
    assert lines[0] == "Sources"
    assert lines[1].split() == [
        "source", "engine", "state", "position", "lag", "last", "commit", "events/s", "events"
    ]  # fmt: skip
    row = lines[2].split()
    assert row[:4] == [name, "embedded", "streaming", str(source["position"])]
    assert "ago)" in lines[2]
    assert re.search(r"^public\.kv\s+3\s+1$", plain.stdout, re.M)
    assert "dead letters: 0 since start" in plain.stdout
    assert f"mapping: {running['hash']} (1 file)" in plain.stdout
    assert f"daemon: {url}" in plain.stdout

    code, _ = daemon.terminate()
    assert code == 0
    gone = run_cli("status", "--url", url)
    assert gone.returncode == 1
    assert gone.stdout == ""
    (line,) = gone.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach the daemon at {url}/status")
    assert "is `tunggal run` running?" in line
