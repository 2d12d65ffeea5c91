"""Configuration mistakes and secrets through the CLI, against a real PostgreSQL that checks
passwords (scram-sha-256): every mistake is one line and exit 2, never a traceback."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import run_cli, sql
from tunggal.devtools.pgcluster import PgCluster

pytestmark = pytest.mark.integration

ROLE = "cfg_pw"
# Every character a DSN would need encoded: the password only works if nothing mangles it.
PASSWORD = "p/@ss w#rd%?:"
MAPPING = """source: sys_c
tables:
  - from: public.barang
    to: public.barang
    key: [id]
    columns: {id: id, nama: nama}
"""


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[PgCluster]:
    """A cluster where ROLE must give its password over TCP (the shared one trusts everyone)."""
    cluster = PgCluster(name="cfg-scram").start()
    try:
        hba = cluster.datadir / "pg_hba.conf"
        hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
            conn.execute("SELECT pg_reload_conf()")
            for db in ("cfg_src", "cfg_tgt"):
                conn.execute(f"CREATE DATABASE {db} OWNER {ROLE}")
        sql(cluster.dsn("cfg_src"), "CREATE TABLE barang (id int PRIMARY KEY, nama text)")
        sql(
            cluster.dsn("cfg_src"),
            "INSERT INTO barang SELECT g, 'b' || g FROM generate_series(1, 7) g",
        )
        sql(cluster.dsn("cfg_tgt"), "CREATE TABLE barang (id int PRIMARY KEY, nama text)")
        yield cluster
    finally:
        cluster.destroy()


def mounted_secret(path: Path, text: str) -> Path:
    """A secret as Docker mounts it: 0444, owned by someone else than the daemon's user."""
    path.write_text(text + "\n")
    path.chmod(0o444)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    return path


def write_files(
    tmp_path: Path, target: str, connector_password: str = "", port: int = 5432
) -> Path:
    (tmp_path / "maps").mkdir(exist_ok=True)
    (tmp_path / "maps" / "sys_c.yaml").write_text(MAPPING)
    (tmp_path / "sys_c.yaml").write_text(
        f"name: sys_c\ndatabase:\n  host: 127.0.0.1\n  port: {port}\n  dbname: cfg_src\n"
        f"  user: {ROLE}\n  password: '{connector_password}'\n"
    )
    config = tmp_path / "tunggal.yaml"
    config.write_text(
        f"target:\n{target}mappings: [maps/*.yaml]\nstate_dir: {tmp_path / 'state'}\n"
        "sources:\n  - {name: sys_c, connector: sys_c.yaml}\n"
    )
    return config


def one_line(result: object, *needles: str) -> str:
    """The single problem line of a config failure (exit 2, no traceback)."""
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 2, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines[0] == "1 problem found:", stderr
    assert len(lines) == 2, stderr
    for needle in needles:
        assert needle in lines[1], stderr
    return lines[1]


def test_passwords_from_mounted_secret_files_connect_for_real(
    scram_pg: PgCluster, tmp_path: Path
) -> None:
    target_secret = mounted_secret(tmp_path / "target_pw", PASSWORD)
    source_secret = mounted_secret(tmp_path / "source_pw", PASSWORD)
    config = write_files(
        tmp_path,
        f"  dsn: postgresql://{ROLE}@127.0.0.1:{scram_pg.port}/cfg_tgt\n"
        f"  password: ${{file:{target_secret}}}\n",
        connector_password=f"${{file:{source_secret}}}",
        port=scram_pg.port,
    )
    applied = run_cli("schema", "--apply", "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    # verify reads the source (connector password) and the target (target.password).
    done = run_cli("verify", "--config", str(config), "--json", "--wait", "0")
    assert "Traceback" not in done.stderr, done.stderr
    (table,) = json.loads(done.stdout)["tables"]
    assert (table["source_rows"], table["target_rows"], table["missing"]) == (7, 0, 7)
    assert PASSWORD not in done.stdout + done.stderr

    # The server really checks: a wrong password from the environment is refused, in words.
    wrong = run_cli(
        "schema", "--apply", "--config", str(config), env={"TUNGGAL_TARGET__PASSWORD": "nope"}
    )
    assert wrong.returncode != 0
    assert "password authentication failed" in wrong.stderr
    assert "Traceback" not in wrong.stderr and "nope" not in wrong.stderr


def test_an_override_rescues_a_value_whose_variable_is_unset(
    scram_pg: PgCluster, tmp_path: Path
) -> None:
    config = write_files(
        tmp_path, f"  dsn: postgresql://{ROLE}:${{TGT_PW}}@127.0.0.1:{scram_pg.port}/cfg_tgt\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TGT_PW"}
    override = f"postgresql://postgres@127.0.0.1:{scram_pg.port}/cfg_tgt"
    unset = run_cli("schema", "--apply", "--config", str(config), env=env)
    one_line(unset, f"{config}: target.dsn: environment variable TGT_PW is not set")
    rescued = run_cli(
        "schema", "--apply", "--config", str(config), env={**env, "TUNGGAL_TARGET__DSN": override}
    )
    assert rescued.returncode == 0, rescued.stderr


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        (
            "postgresql://u:pw@127.0.0.1:notaport/db",
            "target.dsn: the port after `127.0.0.1` is not a number",
        ),
        ("postgresql://u:pa/ss@127.0.0.1/db", "target.dsn: the password in the URL seems to"),
        ("postgresql://u:p@ss@127.0.0.1/db", "target.dsn: the user or password in the URL"),
    ],
)
def test_a_bad_dsn_is_one_line_and_exit_2(tmp_path: Path, dsn: str, message: str) -> None:
    config = write_files(tmp_path, f"  dsn: '{dsn}'\n")
    for command in (("schema", "--apply"), ("validate", "--db")):
        line = one_line(run_cli(*command, "--config", str(config)), f"{config}:2: {message}")
        if "password" in message:
            assert "URL-encode it" in line and "target.password" in line


def test_yes_no_variables_and_the_root_refusal(scram_pg: PgCluster, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the refusal applies to root only")  # the suite runs as root
    config = write_files(
        tmp_path, f"  dsn: postgresql://postgres@127.0.0.1:{scram_pg.port}/cfg_tgt\n"
    )
    refused = run_cli("run", "--config", str(config), env={"TUNGGAL_ALLOW_ROOT": "no"})
    one_line(refused, f"  - {config}: allow_root: refusing to run as root (run as a dedicated")
    bad = run_cli("run", "--config", str(config), env={"TUNGGAL_ALLOW_ROOT": "maybe"})
    one_line(bad, "environment variable TUNGGAL_ALLOW_ROOT: 'maybe' is not a yes or no")
    # `true` lets it past the refusal: it stops on the next problem, this config's missing jar.
    config.write_text(config.read_text() + "java: {classpath: [no-such.jar]}\n")
    allowed = run_cli("run", "--config", str(config), env={"TUNGGAL_ALLOW_ROOT": "TRUE"})
    one_line(allowed, "java.classpath[0]: no such file or directory")
    overridden = run_cli("run", "--config", str(config), env={"TUNGGAL_WATCH_MAPPINGS": "nah"})
    one_line(overridden, "TUNGGAL_WATCH_MAPPINGS: watch_mappings: 'nah' is not a yes or no")


def test_yaml_syntax_errors_name_the_file_line_and_column(tmp_path: Path) -> None:
    config = write_files(tmp_path, "  dsn: postgresql://db/x\n")
    config.write_text(config.read_text().replace("mappings: [maps/*.yaml]", "mappings: [maps/*"))
    line = one_line(run_cli("validate", "--config", str(config)), f"{config}:4: YAML syntax error")
    assert "(column 10)" in line and "<unicode string>" not in line

    config = write_files(tmp_path, "  dsn: postgresql://db/x\n")
    connector = tmp_path / "sys_c.yaml"
    connector.write_text(connector.read_text().replace("  dbname:", " dbname:"))
    line = one_line(run_cli("connectors", "render", "--config", str(config)), f"{connector}:5:")
    assert "YAML syntax error" in line and "column" in line and "<unicode" not in line

    mapping = tmp_path / "maps" / "sys_c.yaml"
    mapping.write_text(MAPPING.replace("key: [id]", "key: [id"))
    line = one_line(run_cli("validate", str(mapping)), f"{mapping}:")
    assert "YAML syntax error: expected ',' or ']'" in line and "(column 12)" in line
