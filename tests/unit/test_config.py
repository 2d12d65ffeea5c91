from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from tunggal.config import dsn_problem, dsn_with_password, load_config
from tunggal.connectors import ConnectorSpec, load_connector, mask
from tunggal.errors import ConfigError, Problem


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


# --- secret files -----------------------------------------------------------------------------


def _connector_with_secret(tmp_path: Path, secret: Path) -> Path:
    conn = tmp_path / "c.yaml"
    conn.write_text(
        f"name: sipkd\ndatabase: {{host: h, dbname: d, user: u, password: '${{file:{secret}}}'}}\n"
    )
    return conn


def test_a_secret_file_loses_one_trailing_newline_only(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("  spaced pw \n\n")
    secret.chmod(0o600)
    spec = load_connector(_connector_with_secret(tmp_path, secret))
    assert spec.database.password == "  spaced pw \n"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_mounted_secret_of_another_user_is_read_as_it_is(tmp_path: Path) -> None:
    # Docker and Kubernetes mount secrets as root's 0444/0644 files: group/other bits are how
    # the daemon's own user reads them, and it could not chmod them anyway.
    secret = tmp_path / "pw"
    secret.write_text("rahasia\n")
    secret.chmod(0o444)
    os.chown(secret, 65534, 65534)
    assert load_connector(_connector_with_secret(tmp_path, secret)).database.password == "rahasia"


def test_an_own_secret_file_readable_by_others_is_still_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    secret.chmod(0o444)
    with pytest.raises(ConfigError, match=f"secret file {secret} is readable by others"):
        load_connector(_connector_with_secret(tmp_path, secret))


def test_a_missing_secret_file_is_one_line_naming_it(tmp_path: Path) -> None:
    conn = _connector_with_secret(tmp_path, tmp_path / "nope")
    with pytest.raises(ConfigError) as info:
        load_connector(conn)
    (problem,) = info.value.problems
    assert str(problem) == (
        f"{conn}: database.password: cannot read secret file {tmp_path / 'nope'}: "
        "No such file or directory"
    )


# --- target.dsn and target.password -----------------------------------------------------------


def _config(tmp_path: Path, target: str) -> Path:
    cfg = tmp_path / "tunggal.yaml"
    cfg.write_text(f"target:\n{target}mappings: []\n")
    return cfg


def _problems(cfg: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(cfg, environ or {})
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://u:pw@127.0.0.1:notaport/db", "the port after `127.0.0.1` is not a number"),
        (
            "postgresql://u:pw@127.0.0.1:70000/db",
            "the port after `127.0.0.1` is not a number from 1 to 65535",
        ),
        ("postgresql://u:pw@db host/db", "`db host` is not a host name or address"),
        # No host: libpq would read the password as the port; the message must not show it.
        ("postgresql://u:s3cret/db", "the port after `u` is not a number"),
        ("postgresql://u:pa/ss@db/x", "the password in the URL seems to contain `/`"),
        ("postgresql://u:p@ss@db/x", "the user or password in the URL contains `@`"),
        ("postgresql://u:100%@db/x", "the user or password in the URL has a `%` that encodes"),
    ],
)
def test_a_bad_dsn_is_one_line_naming_the_setting(tmp_path: Path, dsn: str, message: str) -> None:
    cfg = _config(tmp_path, f"  dsn: '{dsn}'\n")
    (problem,) = _problems(cfg)
    assert problem.startswith(f"{cfg}:2: target.dsn: {message}")
    assert "s3cret" not in problem
    if "password" in message:
        assert "URL-encode it (/ is %2F, @ is %40" in problem
        assert "or give the password in target.password" in problem


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p%40ss%2Fw@db:5432/x",
        "postgresql+psycopg://u@db/x?sslmode=require",
        "postgresql://u:pw@h1:5432,h2:5433/x",
        "postgresql://u:pw@[::1]:5432/x",
        "postgresql:///x?host=/run/postgresql",
        "postgres://%2Frun%2Fpostgresql/x",
    ],
)
def test_good_dsns_pass(tmp_path: Path, dsn: str) -> None:
    assert load_config(_config(tmp_path, f"  dsn: '{dsn}'\n"), {}).target.dsn == dsn


@given(password=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0")))
def test_target_password_reaches_libpq_unchanged(password: str) -> None:
    # Whatever the characters, folded into the URL it is what libpq reads back.
    for dsn in ("postgresql://tunggal@db:5432/x", "postgresql://db/x?sslmode=prefer"):
        folded = dsn_with_password(dsn, password)
        assert dsn_problem(folded) is None
        assert conninfo_to_dict(folded).get("password", "") == password


def test_target_password_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("p/@ss w#rd%\n")
    secret.chmod(0o400)
    cfg = _config(tmp_path, f"  dsn: postgresql://tunggal@db/x\n  password: '${{file:{secret}}}'\n")
    config = load_config(cfg, {})
    assert config.target.dsn == "postgresql://tunggal:p%2F%40ss%20w%23rd%25@db/x"
    assert conninfo_to_dict(config.target.dsn)["password"] == "p/@ss w#rd%"


def test_a_password_in_both_places_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "  dsn: postgresql://tunggal:one@db/x\n  password: two\n")
    (problem,) = _problems(cfg)
    assert "target.dsn has a password and target.password is set too" in problem
    cfg = _config(tmp_path, "  dsn: postgresql://tunggal@db/x?password=one\n  password: two\n")
    assert "give it in one place" in _problems(cfg)[0]


# --- YAML syntax errors -----------------------------------------------------------------------


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    cfg = tmp_path / "tunggal.yaml"
    cfg.write_text("target:\n  dsn: postgresql://db/x\nmappings: [a.yaml\n")
    (problem,) = _problems(cfg)
    assert problem.startswith(f"{cfg}:4: YAML syntax error: expected ',' or ']'")
    assert "(column 1), while parsing a flow sequence at line 3" in problem
    assert "<unicode string>" not in problem
    conn = tmp_path / "c.yaml"
    conn.write_text("name: sipkd\ndatabase:\n  host: h\n dbname: d\n")
    with pytest.raises(ConfigError) as info:
        load_connector(conn)
    (only,) = info.value.problems
    assert str(only).startswith(f"{conn}:4: YAML syntax error:")
    assert "column 2" in str(only) and "<unicode string>" not in str(only)


def test_a_problem_of_no_file_is_its_message_alone() -> None:
    assert str(Problem("", "", "no mapping files given", hint="pass *.yaml files")) == (
        "no mapping files given (pass *.yaml files)"
    )


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs to write a secret into, then remounted read-only, as container runtimes mount
    secrets. Needs root's mount privilege (the suite runs as root)."""
    where = tmp_path / "secrets"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", where])
    if mounted.returncode != 0:
        pytest.skip("mounting needs root with CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", where], check=True)


def test_a_secret_on_a_read_only_mount_is_read_as_it_is(read_only_mount: Path) -> None:
    # The daemon as root in a container: the secret is root's own, 0444, and cannot be chmod-ed.
    secret = read_only_mount / "pw"
    secret.write_text("rahasia\n")
    secret.chmod(0o444)
    subprocess.run(["mount", "-o", "remount,ro", read_only_mount], check=True)
    conn = _connector_with_secret(read_only_mount.parent, secret)
    assert load_connector(conn).database.password == "rahasia"
