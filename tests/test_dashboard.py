"""The shipped Grafana dashboard: importable, and every query is valid PromQL on exported metrics.

``monitoring/dashboard.json`` is imported by users into Grafana 10+ and shipped by the Helm
chart. A query on a metric the exporter does not export shows an empty panel forever, so
every metric name in every panel and variable query is checked against the exporter's
contract (issue 2's table), and every expression is parsed by promtool.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "monitoring" / "dashboard.json"

#: What the exporter exports (its public contract), plus Prometheus' own ``up``.
EXPORTED_METRICS = frozenset(
    {
        "simplivity_backups",
        "simplivity_backup_size_bytes",
        "simplivity_backup_newest_timestamp_seconds",
        "simplivity_backup_newest_age_seconds",
        "simplivity_vm_backup_newest_timestamp_seconds",
        "simplivity_vm_backup_newest_age_seconds",
        "simplivity_up",
        "simplivity_poll_duration_seconds",
        "simplivity_poll_last_success_timestamp_seconds",
        "simplivity_poll_errors_total",
        "simplivity_exporter_build_info",
        "up",
    }
)

#: Grafana's built-in variables, replaced by something PromQL accepts where they stand.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "60000",
}

PANEL_TYPES = {"row", "stat", "timeseries", "bargauge", "table", "state-timeline", "text"}

# PromQL words that look like metric names but are not.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left"}
    | {"group_right", "offset", "inf", "nan", "atan2", "start", "end"}
)
_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        dashboard: dict[str, Any] = json.load(f)
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def substitute(expr: str, dashboard: dict[str, Any]) -> str:
    """The expression as Prometheus would get it, with every variable replaced."""
    defined = variables(dashboard)

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTIN_VARIABLES:
            return BUILTIN_VARIABLES[name]
        assert name in defined, f"undefined variable ${name} in {expr!r}"
        variable = defined[name]
        if variable["type"] == "constant":
            return str(variable["query"])
        # Query variables are multi-value: Grafana puts a regex of the chosen values here.
        return str(variable.get("allValue") or ".+")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names that a PromQL expression selects: the identifiers that are no function,
    keyword, label name or duration."""
    text = re.sub(_STRING, '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", text):
        word = match.group(0)
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable, variables substituted."""
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel['title']!r} target {target['refId']}"
            found.append((where, substitute(target["expr"], dashboard)))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable_query(variable)
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip(), flags=re.DOTALL)
        assert match, f"variable {variable['name']}: expected label_values(selector, label)"
        found.append((f"variable {variable['name']}", substitute(match.group(1), dashboard)))
    return found


def test_the_name_extraction_finds_names_and_only_names() -> None:
    expr = (
        'sum by (state) (rate(foo_total{a="b(c) bar_x", b=~"x|y"}[5m] offset 1h)) '
        "/ on (x) group_left (y) bar:ratio > bool 1e12 and baz unless max(qux[1h:5m]) or +Inf"
    )
    assert metric_names(expr) == {"foo_total", "bar:ratio", "baz", "qux"}
    assert metric_names("time() - (up == 0)") == {"up"}


def test_dashboard_is_importable_json() -> None:
    dashboard = load_dashboard()
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    assert dashboard["id"] is None, "an exported dashboard carries no database id"
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36  # Grafana 9.x and 10.x
    grafana = [r for r in dashboard["__requires"] if r["type"] == "grafana"]
    assert grafana
    assert int(grafana[0]["version"].split(".")[0]) >= 10
    panel_types = {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
    assert panel_types >= {p["type"] for p in all_panels(dashboard)} - {"row"}


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    dashboard = load_dashboard()
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    occupied: dict[tuple[int, int], int] = {}
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["title"]
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert pos["w"] > 0
        assert pos["h"] > 0
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in occupied, f"{panel['title']} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = panel["id"]


def test_every_data_panel_queries_prometheus_through_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    data_panels = [p for p in all_panels(dashboard) if p["type"] != "row"]
    assert len(data_panels) >= 10
    for panel in data_panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"]


def test_variables_datasource_controller_and_cluster() -> None:
    dashboard = load_dashboard()
    defined = variables(dashboard)
    assert defined["datasource"]["type"] == "datasource"
    assert defined["datasource"]["query"] == "prometheus"
    for name in ("controller", "omnistack_cluster"):
        variable = defined[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable_query(variable).startswith("label_values(")
        assert variable_query(variable).endswith(f", {name})")
    # The cluster list follows the chosen controllers.
    assert "$controller" in variable_query(defined["omnistack_cluster"])


def test_the_issue_s_panels_are_there() -> None:
    dashboard = load_dashboard()
    by_title = {p["title"]: p for p in all_panels(dashboard)}
    stats = {t for t, p in by_title.items() if p["type"] == "stat"}
    assert stats >= {
        "VMs without a recent good backup",
        "Failed backups",
        "Total backup size",
        "Controllers down",
    }
    assert by_title["Backups by state"]["type"] == "timeseries"
    assert by_title["Backup size by cluster"]["type"] == "timeseries"
    assert "Newest PROTECTED backup age per cluster" in by_title
    table = by_title["VMs by age of their newest PROTECTED backup"]
    assert table["type"] == "table"
    assert table["options"]["sortBy"][0]["desc"] is True
    age = table["fieldConfig"]["overrides"][0]
    assert age["matcher"]["options"] == table["options"]["sortBy"][0]["displayName"]
    assert {p["id"] for p in age["properties"]} >= {"thresholds", "custom.cellOptions"}
    health = {"Controller polls", "Poll duration", "Poll errors by reason"}
    assert health <= set(by_title)


def test_every_query_uses_only_metrics_the_exporter_exports() -> None:
    dashboard = load_dashboard()
    used: set[str] = set()
    for where, expr in queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= EXPORTED_METRICS, f"{where}: {sorted(names - EXPORTED_METRICS)}"
        used |= names
    # Every backup metric family shows up somewhere on the dashboard.
    assert used == EXPORTED_METRICS


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each expression as it would reach Prometheus (variables substituted)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found on PATH: it comes with Debian's prometheus package, "
            "which `./dev setup` installs (or: apt-get install prometheus)"
        )
    dashboard = load_dashboard()
    found = queries(dashboard)
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr, "labels": {"where": where}}
        for i, (where, expr) in enumerate(found)
    ]
    rule_file = tmp_path / "dashboard_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(found)} rules found" in result.stdout
