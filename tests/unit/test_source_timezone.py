"""`timezone:` in a connector file: validated up front, carried to decoding in ConnectorModes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunggal.connectors import load_connector
from tunggal.errors import ConfigError
from tunggal.events.modes import ConnectorModes


def test_known_zone_reaches_the_modes(tmp_path: Path) -> None:
    conn = tmp_path / "c.yaml"
    conn.write_text(
        "name: e_budgeting\ntimezone: Asia/Jakarta\ndatabase: {host: h, dbname: d, user: u}\n"
    )
    assert load_connector(conn).modes().timezone == "Asia/Jakarta"


def test_no_zone_means_utc_as_before(tmp_path: Path) -> None:
    conn = tmp_path / "c.yaml"
    conn.write_text("name: e_budgeting\ndatabase: {host: h, dbname: d, user: u}\n")
    assert load_connector(conn).modes().timezone is None


def test_unknown_zone_is_one_line_naming_file_and_field_with_the_others(tmp_path: Path) -> None:
    conn = tmp_path / "c.yaml"
    conn.write_text(
        "name: e_budgeting\ntimezone: Asia/Jakata\nsnapshot: sometimes\n"
        "database: {host: h, dbname: d, user: u}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_connector(conn)
    text = info.value.render()
    assert "2 problems found" in text
    expected = (
        f"{conn}:2: timezone: unknown time zone 'Asia/Jakata': give an IANA name such as "
        "Asia/Jakarta"
    )
    assert [line for line in text.splitlines() if expected in line]
    assert f"{conn}:3: snapshot" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("name", ["Mars/Olympus", "../etc/passwd", "", "WIB"])
def test_modes_refuse_a_zone_zoneinfo_does_not_know(name: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        ConnectorModes(timezone=name)
