"""ops/: the alert rules and the Grafana dashboard parse, and every metric (and label) they
name exists in the daemon's registry, so they cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import yaml

from tunggal.metrics import Metrics, ServerSlots, SlotState, SnapshotProgress, VerifyRun

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "prometheus" / "tunggal-alerts.yml"
DASHBOARD = OPS / "grafana" / "tunggal-dashboard.json"

# Prometheus's own series: `up` is what the scrape of the daemon itself records.
PROMETHEUS_BUILTINS = {"up": {"job", "instance"}}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def exposed() -> dict[str, set[str]]:
    """Every series name a scrape of the daemon can hold -> its label names."""
    m = Metrics()
    # One value everywhere, so that every family has samples and shows its labels.
    m.source("s")
    m.set_state("s", "streaming")
    m.committed("s", 1, 1, 1)
    m.events.labels("s", "public.t", "c", "applied").inc()
    m.received.labels("s").inc()
    m.table_rows("public.t", "upsert", 1)
    m.batch_seconds.observe(0.1)
    m.batch_size.observe(1)
    m.dead_letters.labels("s").inc()
    m.restarts.labels("s").inc()
    m.set_mapping("abc", ["m.yaml"])
    m.set_snapshot("s", SnapshotProgress(True, False, tables_total=1, rows_scanned={"public.t": 1}))
    m.set_row_estimates("s", {"public.t": 1})
    m.set_slot_retained("s", "tunggal_s", 1.0)
    m.set_server_slots(
        "h:5432",
        ServerSlots((SlotState("tunggal_s", "db", True, 1.0, "s"),), 1.0, 2.0),
    )
    m.set_jvm_heap(1, 2)
    m.kafka_rebalances.labels("s").inc()
    m.kafka_assigned("s", [("s.public.t", 0)])
    m.kafka_lag("s", {("s.public.t", 0): 1})
    m.set_verify_runs([VerifyRun("s", "public.t", 1.0, 1.0, 1, 0, 0, 1, 0, 0)])
    names: dict[str, set[str]] = {}
    for family in m.registry.collect():
        # A counter's family is `tunggal_events`, its series `tunggal_events_total`: only the
        # series names may appear in a query.
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
            "info": ["_info"],
        }.get(family.type, [""])
        for suffix in suffixes:
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched on it) for each series a PromQL expression reads.

    Rough but sufficient for our files: drop quoted strings, ranges, grouping clauses and
    Grafana variables, then every identifier not called like a function is a metric name.
    """
    # label_values(metric, label) in a Grafana variable names a metric and a label.
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = []
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?", expr):
        name, matchers, call = match.groups()
        if call or name.lower() in KEYWORDS:
            continue
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))
        found.append((name, labels))
    return found


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dash = orjson.loads(DASHBOARD.read_bytes())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def check_names(exprs: list[str], where: str) -> None:
    known = {**exposed(), **PROMETHEUS_BUILTINS}
    problems = []
    for expr in exprs:
        for name, labels in selectors(expr):
            if name not in known:
                problems.append(f"{where}: unknown metric {name!r} in {expr!r}")
            elif labels - known[name] - {"job", "instance"}:
                problems.append(f"{where}: {name} has no label {labels - known[name]} ({expr!r})")
    assert not problems, "\n".join(problems)


def test_selector_parser_sees_metrics_not_functions_or_labels() -> None:
    expr = (
        'sum by (source) (rate(tunggal_events_total{outcome="applied",source=~"$source"}'
        '[$__rate_interval])) and up{job="tunggal"} > 10 * 1024'
    )
    assert selectors(expr) == [
        ("tunggal_events_total", {"outcome", "source"}),
        ("up", {"job"}),
    ]


def test_rules_have_the_fields_an_alert_needs() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert doc["groups"] and all(g["name"] and g["rules"] for g in doc["groups"])
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        runbook = rule["annotations"]["runbook"].strip()
        assert runbook and "\n" not in runbook, f"{rule['alert']}: runbook is one line"
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]


def test_rules_cover_what_operators_asked_for() -> None:
    exprs = " ".join(r["expr"] for r in rules())
    for metric in (
        "tunggal_source_up",
        "tunggal_source_lag_seconds",
        "tunggal_seconds_since_last_commit",
        "tunggal_dead_letters_total",
        "tunggal_mapping_reloads_total",
        "tunggal_replication_slot_wal_retained_bytes",
        # every slot of every source server against its server's threshold, orphans apart
        "tunggal_replication_slot_retained_wal_bytes > on(server) group_left() "
        "tunggal_replication_slot_warn_bytes",
        'tunggal_replication_slot_retained_wal_bytes{orphan="true"}',
        "absent(tunggal_replication_slot_warn_bytes)",
        "tunggal_target_up",
        "tunggal_source_paused",
    ):
        assert metric in exprs, metric
    names = {r["alert"] for r in rules()}
    assert {"TunggalTargetDown", "TunggalSourcePaused"} <= names


def test_rules_name_only_metrics_the_daemon_exposes() -> None:
    check_names([r["expr"] for r in rules()], RULES.name)


def test_dashboard_parses_and_every_panel_has_a_query() -> None:
    dash = orjson.loads(DASHBOARD.read_bytes())
    assert dash["title"] and dash["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    graphs = [p for p in dash["panels"] if p["type"] != "row"]
    assert graphs
    for panel in graphs:
        assert panel["title"] and panel["targets"], panel["title"]
        assert all(t["expr"].strip() and t["refId"] for t in panel["targets"]), panel["title"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("throughput", "lag", "dead letters", "sources up", "batch", "snapshot", "jvm"):
        assert topic in titles, topic


def test_dashboard_names_only_metrics_the_daemon_exposes() -> None:
    check_names(dashboard_exprs(), DASHBOARD.name)


UNIT = OPS / "tunggal.service"
DEPLOY_GUIDE = OPS.parent / "docs" / "deploy.md"


def test_unit_names_the_paths_the_deploy_guide_lays_out() -> None:
    # tests/integration/test_deploy_guide.py runs the unit on the guide's layout; this is the
    # quick check that neither changes its paths alone.
    settings = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    executable, command, *args = settings["ExecStart"].split()
    assert command == "run" and args[0] == "--config", settings["ExecStart"]
    guide = DEPLOY_GUIDE.read_text()
    named = {
        "ExecStart": executable,
        "--config": args[1],
        "EnvironmentFile": settings["EnvironmentFile"].lstrip("-"),
        "WorkingDirectory": settings["WorkingDirectory"],
        "StateDirectory": f"/var/lib/{settings['StateDirectory']}",
        "User": f"User={settings['User']}",
    }
    missing = {key: path for key, path in named.items() if path not in guide}
    assert not missing, f"docs/deploy.md does not name the unit's {missing}"
    assert executable.startswith("/opt/tunggal/current/"), "the guide's link to the release"
