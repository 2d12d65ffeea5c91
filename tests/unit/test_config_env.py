"""TUNGGAL_<SECTION>__<KEY> overrides and `tunggal config show` masking."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tunggal.admin.masking import MASK, mask_text
from tunggal.config import env_bool, load_config
from tunggal.errors import ConfigError

BASE = """\
target:
  dsn: postgresql://tunggal:filepw@db:5432/tunggal
mappings: [m/*.yaml]
batch:
  max_size: 100
sources:
  - {name: e_planning, connector: c.yaml}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tunggal.yaml"
    path.write_text(BASE)
    return path


def test_overrides_reach_every_level(config_file: Path) -> None:
    config = load_config(
        config_file,
        {
            "TUNGGAL_TARGET__DSN": "postgresql://u:envpw@other/db",
            "TUNGGAL_BATCH__MAX_SIZE": "7",
            "TUNGGAL_METRICS__PORT": "9999",
            "TUNGGAL_METRICS__HOST": "0.0.0.0",
            "TUNGGAL_LOGGING__FORMAT": "json",
            "TUNGGAL_WATCH_MAPPINGS": "false",
            "TUNGGAL_STATE_DIR": "/data",
            "TUNGGAL_MAPPINGS": "a.yaml, b/*.yaml",
            # A section the file does not have, and a list as comma-separated text:
            "TUNGGAL_KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "TUNGGAL_KAFKA__SASL_PASSWORD": "hush",
            # An entry of a list by its index:
            "TUNGGAL_SOURCES__0__ENGINE": "kafka",
        },
    )
    assert config.target.dsn == "postgresql://u:envpw@other/db"
    assert config.batch.max_size == 7 and config.batch.max_age_ms == 500
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9999)
    assert config.logging.format == "json"
    assert config.watch_mappings is False
    assert config.state_dir == "/data"
    assert config.mappings == ("a.yaml", "b/*.yaml")
    assert config.kafka is not None
    assert config.kafka.bootstrap_servers == ("k1:9092", "k2:9092")
    assert config.kafka.sasl_password == "hush"
    assert config.sources[0].engine == "kafka"


def test_override_values_take_secret_references(config_file: Path, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    secret.chmod(0o600)
    config = load_config(
        config_file, {"TUNGGAL_TARGET__DSN": f"postgresql://u:${{file:{secret}}}@h/db"}
    )
    assert config.target.dsn == "postgresql://u:from-file@h/db"


def test_other_tunggal_variables_are_not_overrides(config_file: Path) -> None:
    config = load_config(
        config_file,
        {
            "TUNGGAL_ALLOW_ROOT": "1",  # read by `tunggal run` itself
            "TUNGGAL_PG_BINDIR": "/usr/lib/postgresql/15/bin",
            "TUNGGAL_TANSU": "/opt/tansu",
            "TUNGGAL_CONNECT_URL": "http://x",
            "TUNGGAL_STATUS_URL": "http://127.0.0.1:9464",
            "TUNGGAL_LOG_FORMAT": "json",
            "TUNGGAL_CONFIG": "/etc/tunggal/tunggal.yaml",
            "TUNGGAL_TARGET_PASSWORD": "used by ${TUNGGAL_TARGET_PASSWORD} in the example",
        },
    )
    assert config.allow_root is False
    assert config.logging.format == "text"


def test_unknown_override_is_an_error_with_did_you_mean(config_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            config_file,
            {"TUNGGAL_BATCH__MAX_SIZ": "1", "TUNGGAL_METRIC__PORT": "1", "TUNGGAL_BATCH__": "x"},
        )
    text = info.value.render()
    assert "3 problems found" in text
    assert (
        "environment variable TUNGGAL_BATCH__MAX_SIZ: no setting `max_siz` in `batch` "
        "(did you mean TUNGGAL_BATCH__MAX_SIZE?)" in text
    )
    assert "TUNGGAL_METRIC__PORT: no setting `metric` (did you mean TUNGGAL_METRICS__PORT?)" in text


def test_bad_overrides_and_file_problems_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "tunggal.yaml"
    path.write_text(BASE.replace("max_size: 100", "max_size: many"))
    with pytest.raises(ConfigError) as info:
        load_config(path, {"TUNGGAL_RETRY__MAX_DELAY": "5"})
    text = info.value.render()
    assert "2 problems found" in text
    assert "(did you mean TUNGGAL_RETRY__MAX_DELAY_S?)" in text
    assert f"{path}:5: batch.max_size" in text


def test_override_beyond_a_value_or_a_missing_list_entry_is_refused(config_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            config_file,
            {"TUNGGAL_BATCH__MAX_SIZE__X": "1", "TUNGGAL_SOURCES__3__ENGINE": "kafka"},
        )
    text = info.value.render()
    assert "TUNGGAL_BATCH__MAX_SIZE__X: `batch.max_size` has no settings below it" in text
    assert "TUNGGAL_SOURCES__3__ENGINE: sources: needs the index of one of the 1 entries" in text


def test_invalid_override_value_names_the_variable_not_the_file(config_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config_file, {"TUNGGAL_BATCH__MAX_SIZE": "lots"})
    (problem,) = info.value.problems
    assert problem.file == "environment variable TUNGGAL_BATCH__MAX_SIZE"
    assert problem.location == "batch.max_size"
    assert "valid integer" in problem.message


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:pw@h:5432/db", f"postgresql://u:{MASK}@h:5432/db"),
        ("postgresql+psycopg://u:p%40ss@h/db", f"postgresql+psycopg://u:{MASK}@h/db"),
        (
            "postgresql://u@h/db?password=pw&sslmode=require",
            f"postgresql://u@h/db?password={MASK}&sslmode=require",
        ),
        ("host=h user=u password=pw dbname=d", f"host=h user=u password={MASK} dbname=d"),
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)
def test_mask_text(text: str, masked: str) -> None:
    assert mask_text(text) == masked


def test_config_show_masks_every_secret_and_shows_overrides(config_file: Path) -> None:
    result = run_cli(
        "config",
        "show",
        "--config",
        str(config_file),
        env={
            "TUNGGAL_KAFKA__BOOTSTRAP_SERVERS": "k1:9092",
            "TUNGGAL_KAFKA__SASL_PASSWORD": "kafkapw",
            "TUNGGAL_BATCH__MAX_SIZE": "42",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "filepw" not in result.stdout and "kafkapw" not in result.stdout
    assert "TUNGGAL_BATCH__MAX_SIZE" in result.stdout  # the header names the overrides
    shown = yaml.safe_load(result.stdout)
    assert shown["target"]["dsn"] == f"postgresql://tunggal:{MASK}@db:5432/tunggal"
    assert shown["kafka"]["sasl_password"] == MASK
    assert shown["batch"]["max_size"] == 42
    assert "base_dir" not in shown

    as_json = run_cli("config", "show", "--json", "--config", str(config_file))
    assert as_json.returncode == 0, as_json.stderr
    assert '"dsn": "postgresql://tunggal:********@db:5432/tunggal"' in as_json.stdout


def test_config_show_reports_a_bad_override_without_traceback(config_file: Path) -> None:
    result = run_cli(
        "config", "show", "--config", str(config_file), env={"TUNGGAL_BATCH__MAX_AGE": "1"}
    )
    assert result.returncode == 2
    assert "did you mean TUNGGAL_BATCH__MAX_AGE_MS?" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_override_replaces_a_value_before_its_variables_are_read(tmp_path: Path) -> None:
    # The README: the override wins. So the file's ${TGT_PW} is never needed.
    path = tmp_path / "tunggal.yaml"
    path.write_text(BASE.replace("tunggal:filepw@", "tunggal:${TGT_PW_NOT_SET}@"))
    config = load_config(path, {"TUNGGAL_TARGET__DSN": "postgresql://u:envpw@other/db"})
    assert config.target.dsn == "postgresql://u:envpw@other/db"
    # Without the override, the unset variable is the one problem, named once.
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert [str(p) for p in info.value.problems] == [
        f"{path}: target.dsn: environment variable TGT_PW_NOT_SET is not set "
        "(export TGT_PW_NOT_SET=... or use ${file:/path})"
    ]


def test_every_unset_variable_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "tunggal.yaml"
    path.write_text(
        BASE.replace("tunggal:filepw@", "tunggal:${PW_UNSET}@").replace(
            "max_size: 100", "max_size: ${SIZE_UNSET}"
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert [(p.location, p.message) for p in info.value.problems] == [
        ("target.dsn", "environment variable PW_UNSET is not set"),
        ("batch.max_size", "environment variable SIZE_UNSET is not set"),
    ]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *((t, True) for t in ("1", "true", "TRUE", "Yes", "on")),
        *((t, False) for t in ("0", "false", "No", "OFF")),
    ],
)
def test_yes_no_from_the_environment(config_file: Path, text: str, value: bool) -> None:
    assert env_bool("TUNGGAL_ALLOW_ROOT", text) is value
    config = load_config(
        config_file, {"TUNGGAL_WATCH_MAPPINGS": text, "TUNGGAL_METRICS__ENABLED": text}
    )
    assert config.watch_mappings is value and config.metrics.enabled is value


@pytest.mark.parametrize("text", ["maybe", "y", "t", "", "2"])
def test_anything_else_is_one_line_naming_the_variable(config_file: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config_file, {"TUNGGAL_BATCH__WHEN_CAUGHT_UP": text})
    (problem,) = info.value.problems
    assert str(problem) == (
        f"environment variable TUNGGAL_BATCH__WHEN_CAUGHT_UP: batch.when_caught_up: {text!r} is "
        "not a yes or no (use one of 1, true, yes, on or 0, false, no, off)"
    )


def test_target_password_from_the_environment(config_file: Path) -> None:
    path = config_file
    path.write_text(BASE.replace("tunggal:filepw@", "tunggal@"))
    config = load_config(path, {"TUNGGAL_TARGET__PASSWORD": "a/b@c"})
    assert config.target.dsn == "postgresql://tunggal:a%2Fb%40c@db:5432/tunggal"
