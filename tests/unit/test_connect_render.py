"""`tunggal connectors render` and the pieces under it: no Connect worker needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_config
from tunggal.connect.render import connect_config, secret_values
from tunggal.connect.rest import ConnectClient
from tunggal.connectors import ConnectorSpec
from tunggal.devtools.pgcluster import free_port
from tunggal.errors import KafkaConnectError

PASSWORD = "rahasia-sekali-42"

MAPPING = """
source: {name}
tables:
  - from: public.kegiatan
    to: kegiatan
    key: [kode]
    columns: {{kode: kode}}
  - from: keuangan.sp2d
    to: sp2d
    key: [nomor]
    columns: {{nomor: nomor}}
"""


def _setup(tmp_path: Path, properties: str = "") -> Path:
    (tmp_path / "mappings").mkdir()
    for name in ("e_planning", "sipkd"):
        (tmp_path / "mappings" / f"{name}.yaml").write_text(MAPPING.format(name=name))
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\ndatabase:\n  host: db.{name}.local\n  dbname: {name}\n"
            f"  user: tunggal\n  password: ${{RENDER_PW}}\n{properties}"
        )
    return write_config(
        tmp_path,
        "postgresql://u@127.0.0.1:1/target",
        {"e_planning": "e_planning.yaml", "sipkd": "sipkd.yaml"},
        ["mappings/*.yaml"],
    )


def _render(config: Path, *names: str) -> tuple[list[dict[str, object]], str]:
    result = run_cli(
        "connectors", "render", "--config", str(config), *names, env={"RENDER_PW": PASSWORD}
    )
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    documents, text = [], result.stdout.strip()
    while text:
        document, end = decoder.raw_decode(text)
        documents.append(document)
        text = text[end:].strip()
    return documents, result.stdout + result.stderr


def test_render_defaults_tables_from_mappings_and_masked_password(tmp_path: Path) -> None:
    documents, output = _render(_setup(tmp_path))
    assert [d["name"] for d in documents] == ["e_planning", "sipkd"]
    config = documents[0]["config"]
    assert isinstance(config, dict)
    assert config["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert config["name"] == "e_planning"
    assert config["topic.prefix"] == "e_planning"
    assert config["database.hostname"] == "db.e_planning.local"
    assert config["plugin.name"] == "pgoutput"
    assert config["slot.name"] == "tunggal_e_planning"
    assert config["publication.name"] == "tunggal_e_planning_pub"
    assert config["decimal.handling.mode"] == "string"
    assert config["time.precision.mode"] == "adaptive_time_microseconds"
    assert config["skipped.operations"] == "none"
    assert config["tombstones.on.delete"] == "true"
    assert config["value.converter"] == "org.apache.kafka.connect.json.JsonConverter"
    # Every table the mappings read from this source, as whole-name regular expressions.
    assert config["table.include.list"] == r"keuangan\.sp2d,public\.kegiatan"
    # The embedded engine's own converter switch means nothing to a Connect connector.
    assert "converter.schemas.enable" not in config
    assert config["database.password"] == "********"
    assert PASSWORD not in output


def test_render_named_source_only_and_overrides_win(tmp_path: Path) -> None:
    overrides = (
        "properties:\n  decimal.handling.mode: precise\n  converter.schemas.enable: 'false'\n"
        "  table.include.list: public\\.kegiatan\n"
    )
    documents, output = _render(_setup(tmp_path, overrides), "sipkd")
    assert [d["name"] for d in documents] == ["sipkd"]
    config = documents[0]["config"]
    assert isinstance(config, dict)
    assert config["decimal.handling.mode"] == "precise"
    assert config["table.include.list"] == r"public\.kegiatan"
    # Kept when the admin asks for it explicitly.
    assert config["converter.schemas.enable"] == "false"
    assert PASSWORD not in output


def test_render_unknown_source_is_a_config_error(tmp_path: Path) -> None:
    result = run_cli(
        "connectors",
        "render",
        "--config",
        str(_setup(tmp_path)),
        "e_budgeting",
        env={"RENDER_PW": PASSWORD},
    )
    assert result.returncode == 2
    assert "no source named 'e_budgeting' (sources: e_planning, sipkd)" in result.stderr
    assert "Traceback" not in result.stderr


def test_mysql_gets_a_kafka_schema_history_on_connect() -> None:
    spec = ConnectorSpec.model_validate(
        {
            "name": "e_kontrak",
            "kind": "mysql",
            "database": {"host": "h", "dbname": "kontrak", "user": "u", "password": PASSWORD},
        }
    )
    config = connect_config(spec, ["kontrak.kontrak"], kafka_bootstrap=["k1:9092", "k2:9092"])
    assert config["schema.history.internal.kafka.bootstrap.servers"] == "k1:9092,k2:9092"
    assert config["schema.history.internal.kafka.topic"] == "tunggal.e_kontrak.schema-history"
    assert secret_values(config) == [PASSWORD]


def test_unreachable_worker_names_the_url_without_its_password() -> None:
    client = ConnectClient(f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}", timeout_s=5)
    with pytest.raises(KafkaConnectError) as caught:
        client.connectors()
    message = str(caught.value)
    assert f"Kafka Connect at http://127.0.0.1:{client.url.rsplit(':', 1)[1]}" in message
    assert "refused the connection" in message
    assert PASSWORD not in message and "admin" not in message


def test_cli_names_an_unreachable_worker_without_credentials_or_traceback() -> None:
    url = f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}"
    result = run_cli("connectors", "status", "--connect-url", url)
    assert result.returncode == 1
    assert "error: Kafka Connect at http://127.0.0.1:" in result.stderr
    assert "refused the connection" in result.stderr
    assert PASSWORD not in result.stderr and "Traceback" not in result.stderr
