"""`tunggal status` rendering: tolerant of daemons older or newer than the command."""

from __future__ import annotations

from tunggal.admin.output import plain
from tunggal.admin.status import (
    notes,
    partitions_grids,
    seconds,
    sources_grid,
    tables_grid,
    url_for,
)


def test_missing_keys_show_as_dash_and_unknown_ones_are_ignored() -> None:
    status = {
        "sources": [{"name": "sipkd", "state": "failed", "error": "slot in use", "new_key": 1}],
        "tables": {"public.opd": {"upsert": 5, "merge": 2}},
        "something_new": {"x": 1},
    }
    grid = sources_grid(status)
    assert grid.rows == [["sipkd", "-", "failed", "-", "-", "-", "-", "-"]]
    tables = tables_grid(status)
    assert tables.headers == ["table", "upserted", "merge"]
    assert tables.rows == [["public.opd", "5", "2"]]
    lines = [text for text, _ in notes(status, "http://h:1")]
    assert lines == [
        "source sipkd: slot in use",
        "dead letters: - since start",
        "mapping: -",
        "daemon: http://h:1",
    ]


def test_an_empty_status_still_renders() -> None:
    assert plain(sources_grid({})).splitlines()[0] == "Sources"
    assert tables_grid({}).rows == []
    assert [t for t, _ in notes({}, "u")][1:] == ["mapping: -", "daemon: u"]


def test_snapshot_progress_and_dead_letters_in_the_table_when_the_daemon_reports_them() -> None:
    status = {
        "sources": [
            {
                "name": "e_planning",
                "state": "snapshot",
                "snapshot": {"running": True, "tables_done": 2, "tables_total": 5},
                "last_commit": 1_700_000_000.0,
                "seconds_since_commit": 3.5,
                "lag_seconds": 400.0,
            }
        ],
        "dead_letters": 3.0,
        "dead_letters_current": 7.0,
        "mapping": {"hash": "0123456789ab", "files": "a.yaml,b.yaml"},
    }
    (row,) = sources_grid(status).rows
    assert row[2] == "snapshot (2/5 tables)"
    assert row[4] == "6m 40s"
    assert row[5].endswith("(3.50 s ago)")
    assert sources_grid(status).styles[0][4] == "red"  # a lag of minutes stands out
    lines = [t for t, _ in notes(status, "u")]
    assert lines[0] == "dead letters: 3 since start, 7 in tunggal_dead_letters  (tunggal dlq list)"
    assert lines[1] == "mapping: 0123456789ab (2 files)"


def test_seconds_and_urls() -> None:
    assert [seconds(v) for v in (None, 0.123, 45.67, 125, 7300)] == [
        "-",
        "0.12 s",
        "45.7 s",
        "2m 05s",
        "2h 01m",
    ]
    assert url_for("0.0.0.0", 9464) == "http://127.0.0.1:9464"
    assert url_for("::", 1) == "http://[::1]:1"
    assert url_for("10.1.2.3", 2) == "http://10.1.2.3:2"


def test_a_running_incremental_snapshot_is_shown() -> None:
    from tunggal.admin.status import notes

    found = {
        "sources": [
            {
                "name": "src",
                "incremental_snapshot": {
                    "id": "tunggal-abc",
                    "running": True,
                    "tables": {"public.t1": 1500, "public.t2": 20},
                    "done": ["public.t1"],
                },
            }
        ],
        "dead_letters": 0,
    }
    lines = [text for text, _ in notes(found, "http://127.0.0.1:9464")]
    assert (
        "source src reads again: public.t1 1500 rows (done), public.t2 20 rows"
        "  (request tunggal-abc)"
    ) in lines


def test_the_target_line_says_down_since_when_and_why_and_a_paused_source_its_reason() -> None:
    status = {
        "target": {
            "up": False,
            "down_since": 1_700_000_000.0,
            "seconds_down": 125.0,
            "error": "connection refused",
        },
        "sources": [
            {
                "name": "sipkd",
                "state": "paused",
                "error": "paused: 20 of 20 events of public.t failed with MappingError",
            }
        ],
    }
    lines = notes(status, "u")
    text, style = lines[0]
    assert text.startswith("target: DOWN since ") and text.endswith(
        " (2m 05s): connection refused"
    ), text
    assert style == "bold red"
    assert (
        lines[1][0] == "source sipkd: paused: 20 of 20 events of public.t failed with MappingError"
    )
    assert sources_grid(status).styles[0][2] == "bold red"
    up = notes({"target": {"up": True, "down_since": None, "error": None}}, "u")
    assert up[0] == ("target: up", "green")


def test_kafka_partitions_are_listed_and_a_source_without_them_adds_no_table() -> None:
    assert partitions_grids({"sources": [{"name": "sipkd", "partitions": None}]}) == []
    status = {
        "sources": [
            {
                "name": "kf",
                "partitions": [
                    {"topic": "kf.public.opd", "partition": 0, "offset": 7, "end": 9, "lag": 2},
                    {"topic": "kf.public.opd", "partition": 1, "offset": None, "end": None},
                ],
            }
        ]
    }
    [grid] = partitions_grids(status)
    assert grid.rows == [
        ["kf", "kf.public.opd", "0", "7", "9", "2"],
        ["kf", "kf.public.opd", "1", "-", "-", "-"],
    ]
