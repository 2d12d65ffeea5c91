"""`tunggal dlq`: the parts that need no database (rendering, selection, the sink's verdicts)."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from tunggal.cli import main
from tunggal.dlq.cli import _parse_before, _short, dlq_group, entries_table, pretty_json
from tunggal.dlq.replay import DeadLetterSink
from tunggal.dlq.store import Entry, Selection
from tunggal.events.model import RawEvent
from tunggal.sink.postgres import DeadLetter, SourceProgress

NOW = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def _entry(entry_id: int, error: str = "boom", table: str | None = "public.kegiatan") -> Entry:
    return Entry(
        id=entry_id,
        source="e_planning",
        table=table,
        source_table=table,
        destination="e_planning.public.kegiatan",
        position=None,
        raw_key='{"id": 1}',
        raw_value='{"op": "c"}',
        error_class="MappingError",
        error=error,
        mapping_hash="abc",
        first_failed_at=NOW,
        created_at=NOW,
        attempts=1,
        last_failed_at=NOW,
    )


def test_pretty_json_indents_json_and_keeps_anything_else() -> None:
    assert pretty_json('{"id":1,"a":[1,2]}') == '{\n  "id": 1,\n  "a": [\n    1,\n    2\n  ]\n}'
    assert pretty_json("not json {") == "not json {"
    assert pretty_json(None) == "(null)"


def test_short_error_keeps_the_target_column_and_reason() -> None:
    error = (
        "/etc/tunggal/mappings/e_planning.yaml:15: e_planning public.kegiatan -> "
        "public.kegiatan.status: not in the lookup table (known: 1, 2); value '9'\nmore"
    )
    assert _short(error) == (
        "public.kegiatan.status: not in the lookup table (known: 1, 2); value '9'"
    )
    assert _short("x" * 300).endswith("...") and len(_short("x" * 300)) == 100
    assert _short("") == ""


def test_before_is_a_local_date_or_an_exact_moment() -> None:
    ctx: Any = None
    param: Any = None
    midnight = _parse_before(ctx, param, "2026-03-01")
    assert midnight.tzinfo is not None
    assert midnight.replace(tzinfo=None) == dt.datetime(2026, 3, 1)
    exact = _parse_before(ctx, param, "2026-03-01T08:00:00+07:00")
    assert exact == dt.datetime(2026, 3, 1, 1, 0, tzinfo=dt.UTC)
    with pytest.raises(click.BadParameter, match="not an ISO date"):
        _parse_before(ctx, param, "last tuesday")


def test_selection_combines_every_criterion() -> None:
    where, params = Selection().where()
    assert where.as_string(None) == "TRUE" and params == []
    where, params = Selection(
        source="sipkd", table="kegiatan", ids=(3, 4), created_before=NOW
    ).where()
    text = where.as_string(None)
    assert text.startswith("source = %s AND split_part(COALESCE(source_table")
    assert text.endswith("AND id = ANY(%s) AND created_at < %s")
    assert params == ["sipkd", "kegiatan", [3, 4], NOW]
    where, _ = Selection(table="public.kegiatan").where()
    assert where.as_string(None).startswith("COALESCE(source_table")


@pytest.mark.parametrize("width", [80, 120, 200])
def test_table_fits_the_terminal_and_only_the_error_gives_way(width: int) -> None:
    entries = [_entry(i, "public.kegiatan.status: " + "very long reason " * 20) for i in (7, 1234)]
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False).print(entries_table(entries, width))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= width for line in lines)
    assert lines[0].split() == ["id", "source", "table", "error", "class", "error", "created"]
    assert lines[2].split()[:4] == ["1234", "e_planning", "public.kegiatan", "MappingError"]
    assert lines[2].rstrip().endswith("2026-03-01 08:00:00 UTC") or width < 100


class _Cursor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def execute(self, statement: str, params: Any = None) -> None:
        self.calls.append((statement, params))

    def executemany(self, statement: str, params: Any) -> None:
        self.calls.append((statement, list(params)))


def _letter(entry_id: int | None, error: str) -> DeadLetter:
    raw = RawEvent(destination="e_planning.public.kegiatan", key=None, value="{}", offset=entry_id)
    return DeadLetter(source="e_planning", error_class="MappingError", error=error, raw=raw)


def test_sink_settles_replayed_entries_instead_of_adding_new_ones() -> None:
    sink = DeadLetterSink("postgresql://u@127.0.0.1:1/db", {}, mapping_hash="new")
    sink._replaying = frozenset({1, 2, 3})
    cur: Any = _Cursor()
    letters = [_letter(2, "first"), _letter(2, "second row of event 2"), _letter(None, "other")]
    sink._dead_letters(cur, letters)
    insert, update, delete = cur.calls
    # A dead letter that is not one of the entries replayed is still written, never dropped.
    assert insert[0].startswith("INSERT INTO public.tunggal_dead_letters")
    assert [row[7] for row in insert[1]] == ["other"]
    assert update[0].startswith("UPDATE public.tunggal_dead_letters SET error_class")
    assert "first_failed_at" not in update[0]
    assert update[1] == [("MappingError", "first", "new", None, None, 2)]
    assert delete == ("DELETE FROM public.tunggal_dead_letters WHERE id = ANY(%s)", ([1, 3],))
    assert sink._failed.keys() == {2}
    progress = {"e_planning": SourceProgress(10, 10)}
    cur = _Cursor()
    sink._progress(cur, progress)
    assert cur.calls == []
    sink.close()


def test_dlq_group_is_registered_and_reports_config_problems_without_traceback(
    tmp_path: Any,
) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["dlq", "--help"]).exit_code == 0
    missing = str(tmp_path / "nope.yaml")
    result = runner.invoke(dlq_group, ["list", "-c", missing])
    assert result.exit_code == 2 and "cannot read config file" in result.output
    assert result.exc_info is None or result.exc_info[0] is SystemExit


def test_purge_asks_for_yes_when_nobody_can_confirm(tmp_path: Any) -> None:
    runner = CliRunner()
    missing = str(tmp_path / "nope.yaml")
    refused = runner.invoke(dlq_group, ["purge", "--before", "2026-03-01", "-c", missing])
    assert refused.exit_code == 2 and "pass --yes" in refused.output
    bad = runner.invoke(dlq_group, ["purge", "--before", "soon", "--yes", "-c", missing])
    assert bad.exit_code == 2 and "not an ISO date" in bad.output
