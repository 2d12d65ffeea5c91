"""`tunggal connectors apply` checks the sources before Connect is touched, and a connector's
`topic.prefix` override is the prefix the Kafka engine consumes: real PostgreSQL, a real Kafka
Connect worker on the real (tansu) broker, and `tunggal run` with an `engine: kafka` source."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.integration.test_connect import (  # noqa: F401 - the fixture
    Sources,
    read_ids,
    sources,
)
from tunggal.devtools.kafkaconnect import ConnectStandalone

pytestmark = pytest.mark.integration


def on_worker(connect: ConnectStandalone) -> set[str]:
    with urllib.request.urlopen(f"{connect.url}/connectors", timeout=30) as response:
        return set(json.loads(response.read()))


def test_apply_refuses_tables_and_columns_the_source_lacks_and_creates_nothing(
    sources: Sources,  # noqa: F811
    kafka_connect: ConnectStandalone,
    tmp_path: Path,
) -> None:
    good = sources.add("fine")
    name = sources.add("lacks")
    mapping = tmp_path / "mappings" / f"{name}.yaml"
    mapping.write_text(
        f"source: {name}\n"
        "tables:\n"
        "  - from: public.kv\n"
        "    to: public.kv\n"
        "    key: [id]\n"
        "    columns: {id: id, v: vv}\n"  # line 6: no column vv
        "  - from: public.kegiatan\n"  # line 7: no such table
        "    to: public.kegiatan\n"
        "    key: [id]\n"
        "    columns: {id: id}\n"
    )
    connector = Path(sources.connectors[name])
    connector.write_text(connector.read_text() + "tables: [public.kv, public.kv_old]\n")
    connector_line = len(connector.read_text().splitlines())

    result = sources.cli("apply", "--config", str(sources.config()))

    assert result.returncode == 2, result.stdout + result.stderr
    assert "3 problems found:" in result.stderr
    assert (
        f"{mapping}:7: tables[1].from: source table public.kegiatan does not exist in source "
        f"'{name}'"
    ) in result.stderr
    assert (
        f"{mapping}:6: tables[0].columns.v: source column vv is not in public.kv of source '{name}'"
    ) in result.stderr
    assert (
        f"{connector}:{connector_line}: tables[1]: source table public.kv_old does not exist in "
        f"source '{name}'"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # neither `created` nor anything else
    # Nothing is applied, the good source's connector neither: every connector or none.
    assert not {good, name} & on_worker(kafka_connect)
    assert sources.password not in result.stdout + result.stderr
