from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunggal.config import load_config
from tunggal.connectors import ConnectorSpec, load_connector, mask
from tunggal.errors import ConfigError


def test_env_and_secret_file_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("rahasia\n")
    os.chmod(secret, 0o600)
    monkeypatch.setenv("TARGET_PW", "s3cret")
    cfg = tmp_path / "tunggal.yaml"
    cfg.write_text("target:\n  dsn: postgresql://u:${TARGET_PW}@h/db\nmappings: [m/*.yaml]\n")
    config = load_config(cfg)
    assert config.target.dsn == "postgresql://u:s3cret@h/db"
    assert config.mapping_paths() == []
    conn = tmp_path / "c.yaml"
    conn.write_text(
        f"name: sipkd\ndatabase: {{host: h, dbname: d, user: u, password: '${{file:{secret}}}'}}\n"
    )
    spec = load_connector(conn)
    assert spec.database.password == "rahasia"


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    os.chmod(secret, 0o644)
    conn = tmp_path / "c.yaml"
    conn.write_text(
        f"name: sipkd\ndatabase: {{host: h, dbname: d, user: u, password: '${{file:{secret}}}'}}\n"
    )
    with pytest.raises(ConfigError, match="chmod 600"):
        load_connector(conn)


def test_every_problem_reported_with_line_and_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MISSING_VAR", raising=False)
    cfg = tmp_path / "tunggal.yaml"
    cfg.write_text("target:\n  dsn: mysql://x\nmappings: []\nbatch:\n  max_sise: 10\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    text = info.value.render()
    assert "2 problems found" in text
    assert f"{cfg}:5: batch.max_sise: unknown key `max_sise` (did you mean `max_size`?)" in text
    assert f"{cfg}:2: target.dsn" in text and "only PostgreSQL targets" in text


def test_render_has_safe_defaults_and_masks_password() -> None:
    spec = ConnectorSpec.model_validate(
        {
            "name": "e_planning",
            "database": {"host": "db", "dbname": "eplanning", "user": "dbz", "password": "pw"},
        }
    )
    props = spec.render(["public.kegiatan", "public.opd"])
    assert props["slot.name"] == "tunggal_e_planning"
    assert props["plugin.name"] == "pgoutput"
    assert props["skipped.operations"] == "none"
    assert props["decimal.handling.mode"] == "string"
    assert props["table.include.list"] == r"public\.kegiatan,public\.opd"
    assert mask(props)["database.password"] == "********"
    assert "pw" not in mask(props).values()
