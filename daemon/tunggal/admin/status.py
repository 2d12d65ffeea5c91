"""`tunggal status`: the running daemon's /status JSON, fetched and laid out for people.

Rendering is tolerant on purpose: the daemon and this command may be of different versions,
so unknown keys are ignored and missing ones show as `-`.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from tunggal.admin.output import Grid
from tunggal.errors import FatalError

DEFAULT_URL = "http://127.0.0.1:9464"
MISSING = "-"
_STATE_STYLES = {
    "streaming": "green",
    "snapshot": "cyan",
    "starting": "yellow",
    "stopped": "dim",
    "failed": "bold red",
    "paused": "bold red",
}


def url_for(host: str, port: int) -> str:
    """Where to reach a daemon that binds `host`: a wildcard bind is reached on loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def fetch(base_url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET {base_url}/status; one-line FatalErrors for a daemon that is down or not ours."""
    url = base_url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise FatalError(f"{url} answered HTTP {exc.code}: is that a Tunggal daemon?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FatalError(
            f"cannot reach the daemon at {url} ({reason}): is `tunggal run` running? "
            "(--url or TUNGGAL_STATUS_URL says where)"
        ) from None
    try:
        status = json.loads(body)
    except ValueError:
        raise FatalError(f"{url} did not answer JSON: is that a Tunggal daemon?") from None
    if not isinstance(status, dict):
        raise FatalError(f"{url} answered {type(status).__name__}, not a status object")
    return status


def seconds(value: Any) -> str:
    """12.3 s, 4m 05s, 2h 10m: lags and ages at a glance."""
    if not isinstance(value, int | float):
        return MISSING
    value = max(0.0, float(value))
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{int(value // 60)}m {int(value % 60):02d}s"
    return f"{int(value // 3600)}h {int(value % 3600 // 60):02d}m"


def _text(value: Any) -> str:
    if value is None or value == "":
        return MISSING
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _clock(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return MISSING
    return dt.datetime.fromtimestamp(epoch).astimezone().strftime("%H:%M:%S")


def _lag_style(lag: Any) -> str | None:
    if not isinstance(lag, int | float):
        return None
    return "red" if lag > 300 else "yellow" if lag > 30 else None


def _state(source: Mapping[str, Any]) -> str:
    state = _text(source.get("state"))
    snapshot = source.get("snapshot")
    if isinstance(snapshot, Mapping) and snapshot.get("running"):
        done, total = snapshot.get("tables_done"), snapshot.get("tables_total")
        if isinstance(done, int) and isinstance(total, int) and total:
            state += f" ({done}/{total} tables)"
    return state


def sources_grid(status: Mapping[str, Any]) -> Grid:
    grid = Grid(
        ["source", "engine", "state", "position", "lag", "last commit", "events/s", "events"],
        title="Sources",
    )
    sources = status.get("sources")
    for source in sources if isinstance(sources, list) else []:
        if not isinstance(source, Mapping):
            continue
        since = source.get("seconds_since_commit")
        last = _clock(source.get("last_commit"))
        if last != MISSING and isinstance(since, int | float):
            last += f" ({seconds(since)} ago)"
        grid.add(
            [
                _text(source.get("name")),
                _text(source.get("engine")),
                _state(source),
                _text(source.get("position")),
                seconds(source.get("lag_seconds")),
                last,
                _text(source.get("events_per_second")),
                _text(source.get("events_applied")),
            ],
            [
                "bold",
                None,
                _STATE_STYLES.get(str(source.get("state"))),
                None,
                _lag_style(source.get("lag_seconds")),
                None,
                None,
                None,
            ],
        )
    return grid


def partitions_grids(status: Mapping[str, Any]) -> list[Grid]:
    """Kafka sources: each assigned partition with the next offset read and its lag behind
    the partition's end as the consumer last saw it (cached: it can trail the broker's by a
    fetch). No grid when no source has partitions to show."""
    grid = Grid(["source", "topic", "partition", "offset", "end (cached)", "lag"], title="Kafka")
    sources = status.get("sources")
    for source in sources if isinstance(sources, list) else []:
        if not isinstance(source, Mapping) or not isinstance(source.get("partitions"), list):
            continue
        for p in source["partitions"]:
            if not isinstance(p, Mapping):
                continue
            lag = p.get("lag")
            grid.add(
                [
                    _text(source.get("name")),
                    _text(p.get("topic")),
                    _text(p.get("partition")),
                    _text(p.get("offset")),
                    _text(p.get("end")),
                    _text(lag),
                ],
                [
                    "bold",
                    None,
                    None,
                    None,
                    None,
                    "yellow" if isinstance(lag, int) and lag else None,
                ],
            )
    return [grid] if grid.rows else []


def tables_grid(status: Mapping[str, Any]) -> Grid:
    tables = status.get("tables")
    tables = tables if isinstance(tables, Mapping) else {}
    counts = {t: c for t, c in tables.items() if isinstance(c, Mapping)}
    found = {action for c in counts.values() for action in c}
    # The two actions the sink reports first, in this order; any new ones after them.
    actions = [a for a in ("upsert", "delete") if a in found] + sorted(found - {"upsert", "delete"})
    actions = actions or ["upsert", "delete"]
    grid = Grid(["table", *(_action_header(a) for a in actions)], title="Rows applied since start")
    for table in sorted(counts):
        grid.add([table, *(_text(counts[table].get(a, 0)) for a in actions)])
    return grid


def _action_header(action: str) -> str:
    return {"upsert": "upserted", "delete": "deleted"}.get(action, action)


def target_line(target: Mapping[str, Any]) -> tuple[str, str | None]:
    """`target: up`, or `target: DOWN since 10:42:07 (1m 30s): <error>` while writes fail."""
    if target.get("up", True):
        return ("target: up", "green")
    text = f"target: DOWN since {_clock(target.get('down_since'))}"
    if isinstance(target.get("seconds_down"), int | float):
        text += f" ({seconds(target['seconds_down'])})"
    return (f"{text}: {_text(target.get('error'))}", "bold red")


def notes(status: Mapping[str, Any], url: str) -> list[tuple[str, str | None]]:
    """The lines under the tables: failures, dead letters, the active mapping set."""
    out: list[tuple[str, str | None]] = []
    target = status.get("target")
    if isinstance(target, Mapping):
        out.append(target_line(target))
    sources = status.get("sources")
    for source in sources if isinstance(sources, list) else []:
        if isinstance(source, Mapping) and source.get("error"):
            out.append((f"source {_text(source.get('name'))}: {source['error']}", "red"))
        reading = source.get("incremental_snapshot") if isinstance(source, Mapping) else None
        if isinstance(reading, Mapping) and reading.get("running"):
            tables = reading.get("tables")
            done = set(reading.get("done") or ())
            parts = [
                f"{table} {_text(rows)} rows" + (" (done)" if table in done else "")
                for table, rows in (tables.items() if isinstance(tables, Mapping) else ())
            ]
            out.append(
                (
                    f"source {_text(source.get('name'))} reads again: {', '.join(parts) or '-'}"
                    f"  (request {_text(reading.get('id'))})",
                    "cyan",
                )
            )
    dead = _text(status.get("dead_letters"))
    current = status.get("dead_letters_current")
    text = f"dead letters: {dead} since start"
    if isinstance(current, int | float):
        text += f", {_text(current)} in tunggal_dead_letters"
    style = "yellow" if dead not in ("0", MISSING) or current else None
    out.append((text + ("  (tunggal dlq list)" if style else ""), style))
    mapping = status.get("mapping")
    mapping = mapping if isinstance(mapping, Mapping) else {}
    files = [f for f in str(mapping.get("files") or "").split(",") if f]
    out.append(
        (
            f"mapping: {_text(mapping.get('hash'))}"
            + (f" ({len(files)} file{'s' if len(files) != 1 else ''})" if files else ""),
            None,
        )
    )
    out.append((f"daemon: {url}", "dim"))
    return out
