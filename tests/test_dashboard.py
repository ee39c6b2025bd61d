"""The shipped Grafana dashboard: importable, and every query is valid PromQL on exported metrics.

``monitoring/dashboard.json`` is provisioned by users into Grafana 10+ and shipped by the Helm
chart; ``monitoring/dashboard-import.json`` is the same dashboard for Grafana's import (a data
source input), written by ``tools/monitoring.py sync``. A query on a metric the exporter does
not export shows an empty panel forever, so every metric name in every panel and variable
query is checked against the exporter's contract, and every expression is parsed by promtool.

Grafana's dashboard linter (github.com/grafana/dashboard-linter) is a Go program with no
package on PyPI or npm, so its rules are checked here, one test each, by the linter's rule
names: template-datasource, template-job, template-instance, template-label-promql,
panel-datasource, panel-title-description, panel-units, target-promql, target-rate-interval,
target-job and target-instance; plus no hard-coded data source and unique panel titles.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.live_exporter import BACKUP_FAMILIES
from tests.promtool import promtool
from tools import monitoring as monitoring_tool

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "monitoring" / "dashboard.json"
DASHBOARD_IMPORT = REPO / "monitoring" / "dashboard-import.json"
RULES = REPO / "monitoring" / "alerts.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana's unit ids that the dashboard uses (grafana-data's valueFormats categories).
GRAFANA_UNITS = frozenset({"none", "short", "s", "bytes", "percentunit", "dateTimeAsIso"})
#: The panel types dashboard-linter's panel rules look at.
LINTED_PANEL_TYPES = {"stat", "singlestat", "graph", "table", "timeseries", "gauge", "bargauge"}

#: What the exporter exports (its public contract, docs/metrics.md's table) that the
#: dashboard and the alert rules may read, plus Prometheus' own ``up``.
EXPORTED_METRICS = frozenset(
    {
        # issue 18: names cut to a bounded length
        "simplivity_label_values_truncated",
        # issue 11: odd records and adaptive polling
        "simplivity_unreadable_records",
        "simplivity_poll_concurrency",
        "simplivity_poll_page_size",
        # issue 12: every live VM judged against its own policy
        "simplivity_vm_info",
        "simplivity_vm_created_timestamp_seconds",
        "simplivity_vm_policy_scheduled",
        "simplivity_vm_backup_expected_interval_seconds",
        "simplivity_vm_destination_backup_newest_timestamp_seconds",
        "simplivity_vm_backup_newest_failed_timestamp_seconds",
        "simplivity_vms",
        "simplivity_policy_rules",
        "simplivity_policy_vms",
        "simplivity_host_policy_enabled",
        "simplivity_federation_daily_backups",
        "simplivity_federation_daily_backups_limit",
        "simplivity_federation_retained_backups_projected",
        "simplivity_federation_retained_backups_limit",
        # issue 20: application consistency, recovery depth, backups nobody owns
        "simplivity_vm_destination_app_consistent_backup_newest_timestamp_seconds",
        "simplivity_vm_destination_restore_points",
        "simplivity_vm_destination_oldest_restore_point_timestamp_seconds",
        "simplivity_vm_destination_recovery_window_seconds",
        "simplivity_backups_orphaned",
        "simplivity_backups_orphaned_size_bytes",
        "simplivity_backups_never_expiring",
        "simplivity_backups_never_expiring_size_bytes",
        # issue 17: one verdict, the exporter's, exported per VM
        "simplivity_vm_protection_status",
        "simplivity_protection_overdue_factor",
        "simplivity_protection_grace_seconds",
        # issue 2
        *BACKUP_FAMILIES,
        "simplivity_up",
        "simplivity_poll_duration_seconds",
        "simplivity_poll_last_success_timestamp_seconds",
        "simplivity_poll_errors_total",
        "simplivity_exporter_build_info",
        "simplivity_exporter_shard_index",
        "simplivity_exporter_shards",
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
        "VMs at risk",
        "VMs never backed up",
        "Failed backups",
        "Total backup size",
        "Controllers down",
        # issues 11 and 12
        "Hosts with policy backups disabled",
        "Unreadable records",
    }
    assert by_title["Backups by state"]["type"] == "timeseries"
    assert by_title["Backup size by cluster"]["type"] == "timeseries"
    assert "Newest PROTECTED backup age per cluster" in by_title
    table = by_title["VMs by age of their newest PROTECTED backup"]
    assert table["type"] == "table"
    assert table["options"]["sortBy"][0]["desc"] is True
    age = table["fieldConfig"]["overrides"][0]
    assert age["matcher"]["options"] == table["options"]["sortBy"][0]["displayName"]
    health = {"Controller polls", "Poll duration", "Poll errors by reason"}
    assert health <= set(by_title)
    # issue 11: the adaptive polling per controller
    assert by_title["Requests in flight per controller"]["type"] == "timeseries"
    assert by_title["Page size per controller"]["type"] == "timeseries"


def test_the_protection_row() -> None:
    """Issue 12: VMs by status per cluster, the at-risk VMs with policy, cluster, destination,
    age and expected interval, and the federation limits as a percentage."""
    dashboard = load_dashboard()
    by_title = {p["title"]: p for p in all_panels(dashboard)}
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert rows[0]["title"] == "Protection", "the protection row comes first"
    status = by_title["VMs by protection status per cluster"]
    assert status["type"] == "table"
    (grouping,) = [t for t in status["transformations"] if t["id"] == "groupingToMatrix"]
    assert grouping["options"]["rowField"] == "omnistack_cluster"
    assert grouping["options"]["columnField"] == "protection"
    assert "sum by (omnistack_cluster, protection)" in status["targets"][0]["expr"]
    at_risk = by_title["At-risk VMs by destination"]
    columns = at_risk["transformations"][-1]["options"]["renameByName"]
    assert {"vm", "policy", "omnistack_cluster", "destination", "Value #A", "Value #B"} <= set(
        columns
    )
    age, interval = (t["expr"] for t in at_risk["targets"])
    assert "simplivity_vm_destination_backup_newest_timestamp_seconds" in age
    assert "simplivity_vm_backup_expected_interval_seconds" in interval
    # The same rule as the exporter's and the alert's, with the factor and grace the exporter
    # judged with (its series), not a copy of them.
    for expr in (age, interval):
        assert "group_left () simplivity_protection_overdue_factor{" in expr
        assert "group_left () simplivity_protection_grace_seconds{" in expr
        assert "group_left (policy, omnistack_cluster)" in expr
    assert not [v for v in dashboard["templating"]["list"] if v["type"] == "constant"]
    for title in ("Daily backups, % of limit", "Retained backups, % of limit"):
        panel = by_title[title]
        assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
        assert panel["fieldConfig"]["defaults"]["max"] == 1
        assert "/ (simplivity_federation_" in panel["targets"][0]["expr"]


def test_every_query_uses_only_metrics_the_exporter_exports() -> None:
    dashboard = load_dashboard()
    used: set[str] = set()
    for where, expr in queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= EXPORTED_METRICS, f"{where}: {sorted(names - EXPORTED_METRICS)}"
        used |= names
    # Every metric family shows up somewhere on the dashboard, but those only the alerts and
    # the runbook read (a VM whose last backup failed counts in simplivity_vms), and a
    # controller's cut names, which its log explains.
    assert used == EXPORTED_METRICS - {
        "simplivity_label_values_truncated",
        "simplivity_exporter_shard_index",
        "simplivity_exporter_shards",
        "simplivity_policy_rules",
        "simplivity_policy_vms",
        "simplivity_vm_backup_newest_failed_timestamp_seconds",
        "simplivity_vm_policy_scheduled",
        # issue 20: per VM and destination, for queries and the runbook; the dashboard shows
        # the verdicts made of them (app_inconsistent, the recovery window's ratio)
        "simplivity_vm_destination_restore_points",
        "simplivity_vm_destination_app_consistent_backup_newest_timestamp_seconds",
    }


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each expression as it would reach Prometheus (variables substituted)."""
    dashboard = load_dashboard()
    found = queries(dashboard)
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr, "labels": {"where": where}}
        for i, (where, expr) in enumerate(found)
    ]
    rule_file = tmp_path / "dashboard_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(found)} rules found" in result.stdout


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, its matchers between braces or "") for every selector of an expression."""
    text = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    found = []
    for match in re.finditer(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?", text):
        name, matchers = match.group(1), match.group(2) or ""
        rest = text[match.end() :].lstrip()
        if name.lower() in _KEYWORDS or (not matchers and rest.startswith("(")):
            continue
        found.append((name, matchers))
    return found


def raw_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) as written, variables not substituted; variable queries' selectors."""
    found = [
        (f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable_query(variable))
            assert match, variable["name"]
            found.append((f"variable {variable['name']}", match.group(1)))
    return found


def test_the_selector_extraction_finds_every_selector() -> None:
    expr = (
        'sum by (a) (rate(foo_total{job=~"$job"}[5m])) / on (x) group_left (y) bar '
        'and max_over_time(baz{a="b"}[1h:5m]) or vector(0)'
    )
    assert selectors(expr) == [("foo_total", '{job=~"$job"}'), ("bar", ""), ("baz", '{a="b"}')]


# ------------------------------------------------ Grafana's dashboard-linter rules


def test_template_datasource_rule() -> None:
    dashboard = load_dashboard()
    sources = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert len(sources) == 1
    assert sources[0]["name"] == "datasource"
    assert sources[0]["label"].lower() == "data source"
    assert sources[0]["query"] == "prometheus"


@pytest.mark.parametrize("name", ["job", "instance"])
def test_template_job_and_instance_rules(name: str) -> None:
    """Two exporters (two jobs, or two instances of one) never mix on the dashboard."""
    variable = variables(load_dashboard())[name]
    assert variable["type"] == "query"
    assert variable["label"] == name
    assert variable["datasource"] == DATASOURCE
    assert variable_query(variable).startswith("label_values(")
    assert variable_query(variable).endswith(f", {name})")
    assert variable["multi"] is True
    assert variable["includeAll"] is True
    assert variable["allValue"] == ".+"
    assert variable["hide"] == 0


def test_target_job_and_instance_rules() -> None:
    """Every selector of every query filters by the job and instance variables (the job and
    instance variables' own queries by what comes before them)."""
    required = {
        "job": ['job=~"$job"'],
        "instance": ['job=~"$job"', 'instance=~"$instance"'],
    }
    checked = 0
    for where, expr in raw_queries(load_dashboard()):
        if where == "variable job":
            continue
        wanted = required["job"] if where == "variable instance" else required["instance"]
        for name, matchers in selectors(expr):
            for matcher in wanted:
                assert matcher in matchers, f"{where}: {name} lacks {matcher}: {expr}"
            checked += 1
    assert checked >= 20


def test_template_label_promql_rule(tmp_path: Path) -> None:
    """Variable queries are label_values(selector, label) with a selector promtool parses;
    test_every_query_parses feeds them to promtool with the panels' queries."""
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
            assert re.fullmatch(r"label_values\(.+, \w+\)", variable_query(variable))


def test_panel_datasource_rule_and_no_hard_coded_data_source() -> None:
    """Every reference to a data source anywhere in the file is the variable (or Grafana's
    built-in annotations), so the dashboard works with whatever the user's Prometheus is."""

    def references(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    yield value
                yield from references(value)
        elif isinstance(node, list):
            for item in node:
                yield from references(item)

    dashboard = load_dashboard()
    grafana_builtin = {"type": "grafana", "uid": "-- Grafana --"}
    for reference in references({k: v for k, v in dashboard.items() if k != "annotations"}):
        assert reference == DATASOURCE, reference
    for annotation in dashboard["annotations"]["list"]:
        assert annotation["datasource"] == grafana_builtin
    assert "__inputs" not in dashboard, "the import variant is dashboard-import.json"


def test_panel_title_description_rule_and_unique_titles() -> None:
    panels = [p for p in all_panels(load_dashboard()) if p["type"] != "row"]
    for panel in panels:
        assert panel["title"].strip()
        assert len(panel.get("description", "").split()) >= 4, panel["title"]
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "two panels share a title"


def test_panel_units_rule() -> None:
    for panel in all_panels(load_dashboard()):
        if panel["type"] not in LINTED_PANEL_TYPES:
            continue
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in GRAFANA_UNITS, f"{panel['title']}: unit {unit!r}"
        for override in panel["fieldConfig"].get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in GRAFANA_UNITS, panel["title"]


def test_target_rate_interval_rule() -> None:
    for where, expr in raw_queries(load_dashboard()):
        for match in re.finditer(r"\b(rate|irate|increase)\s*\(", expr):
            window = re.search(r"\[([^\]]*)\]", expr[match.end() :])
            assert window, where
            assert window.group(1) == "$__rate_interval", f"{where}: {expr}"


# ------------------------------------------------ runbook links, alert thresholds, import


def alert_thresholds() -> dict[str, float]:
    """Alert -> the number that ends its expression, for alerts with one above zero."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    found = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            match = re.search(r"(?:>|<|>=|<=)\s*([0-9.]+)\s*$", rule["expr"])
            if match and float(match.group(1)) > 0:
                found[rule["alert"]] = float(match.group(1))
    return found


def test_panels_name_real_alerts_and_show_their_thresholds() -> None:
    """A panel's last sentence names the alerts it shows (the runbook links and the Helm
    chart's thresholds hang on it); an alert with a threshold is drawn at that threshold on
    at least one of its panels, which the chart moves when the threshold is overridden."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    shown: dict[str, set[float]] = {}
    for panel in all_panels(load_dashboard()):
        named = monitoring_tool.panel_alerts(panel)
        assert set(named) <= alerts, (panel["title"], set(named) - alerts)
        config = panel.get("fieldConfig", {})
        thresholds = [config.get("defaults", {}).get("thresholds", {})]
        thresholds += [
            prop["value"]
            for override in config.get("overrides", [])
            for prop in override["properties"]
            if prop["id"] == "thresholds"
        ]
        for alert in named:
            shown.setdefault(alert, set()).update(
                step["value"] for t in thresholds for step in t.get("steps", [])
            )
    assert len(shown) >= 8
    for alert, threshold in alert_thresholds().items():
        if alert in shown:
            assert threshold in shown[alert], f"{alert}: no panel step at {threshold:g}"


def test_the_tool_links_each_panel_to_the_runbook_of_its_alerts() -> None:
    base = "https://git.example.com/simplivity-exporter/blob/main/docs/runbook.md"
    dashboard = load_dashboard()
    linked = monitoring_tool.with_runbook_links(dashboard, base)
    runbook = (REPO / "docs" / "runbook.md").read_text(encoding="utf-8")
    anchors = {h.lower() for h in re.findall(r"^## (Simplivity\w+)\s*$", runbook, re.M)}
    count = 0
    for before, after in zip(all_panels(dashboard), all_panels(linked), strict=True):
        named = monitoring_tool.panel_alerts(before)
        if not named:
            assert "links" not in after
            continue
        assert [link["url"] for link in after["links"]] == [f"{base}#{a.lower()}" for a in named]
        assert all(link["url"].split("#")[1] in anchors for link in after["links"])
        assert all(link["targetBlank"] is True for link in after["links"])
        count += 1
    assert count >= 10
    assert "links" not in json.dumps(list(all_panels(dashboard))), "no link without an address"


def test_the_import_variant_is_the_dashboard_with_a_data_source_input() -> None:
    text = DASHBOARD_IMPORT.read_text(encoding="utf-8")
    assert text == monitoring_tool.dashboard_text(monitoring_tool.for_import(load_dashboard())), (
        "monitoring/dashboard-import.json is out of step with monitoring/dashboard.json; "
        "rewrite it with: python3 tools/monitoring.py sync"
    )
    imported = json.loads(text)
    (source_input,) = imported["__inputs"]
    assert source_input == source_input | {
        "name": "DS_PROMETHEUS",
        "type": "datasource",
        "pluginId": "prometheus",
    }
    # Grafana's import puts the chosen data source's uid wherever ${DS_PROMETHEUS} stands:
    # the datasource variable starts on it, and every panel still goes through the variable.
    after_import = json.loads(text.replace("${DS_PROMETHEUS}", "P1809F7CD0C75ACF3"))
    datasource = variables(after_import)["datasource"]
    assert datasource["current"]["value"] == "P1809F7CD0C75ACF3"
    assert "${DS_PROMETHEUS}" not in json.dumps(after_import)
    for panel in all_panels(after_import):
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE
    without_inputs = {k: v for k, v in imported.items() if k != "__inputs"}
    variables(without_inputs)["datasource"]["current"] = {}
    assert without_inputs == load_dashboard()


def panel_expr(title: str, ref: str = "A") -> str:
    """A panel's query as Prometheus gets it, every variable at its default (all values)."""
    dashboard = load_dashboard()
    (panel,) = [p for p in all_panels(dashboard) if p["title"] == title]
    (target,) = [t for t in panel["targets"] if t["refId"] == ref]
    return substitute(target["expr"], dashboard)


def test_the_at_risk_table_lists_the_overdue_destinations(tmp_path: Path) -> None:
    """The at-risk table's rows, evaluated by promtool on the overdue alert's scenario (hourly
    policies: overdue past 3600 x 1.5 + 3600 = 9000 s): each late destination once, with the
    VM's policy and cluster; a destination never reached counts from the VM's creation."""
    where = 'job="svt", instance="e:10025", controller="boston"'
    vms = {  # vm: (created, {destination: newest PROTECTED there}, interval)
        "dr-stopped": (100, {"cl1": 10000, "dr-cluster": 1000}, 3600),
        "never-at-dr": (100, {"cl1": 5000, "dr-cluster": 0}, 3600),
        "new-with-local": (8000, {"cl1": 8500, "dr-cluster": 0}, 3600),
        "weekly": (100, {"storeonce": 1000}, 604800),
        "none-yet": (100, {"cl1": 0}, 3600),
    }
    newest_metric = "simplivity_vm_destination_backup_newest_timestamp_seconds"
    # The settings the exporter judged with, which the table reads rather than copies.
    series = [
        {"series": f"simplivity_protection_overdue_factor{{{where}}}", "values": "1.5x200"},
        {"series": f"simplivity_protection_grace_seconds{{{where}}}", "values": "3600x200"},
    ]
    for number, (vm, (created, newest, interval)) in enumerate(vms.items()):
        labels = f'{where}, vm="{vm}", vm_id="v{number}"'
        info = f'{labels}, omnistack_cluster="cl1", policy="p-{vm}", datastore="ds", host="h1"'
        series += [
            {
                "series": f"simplivity_vm_created_timestamp_seconds{{{labels}}}",
                "values": f"{created}x200",
            },
            {"series": f"simplivity_vm_info{{{info}}}", "values": "1x200"},
        ]
        for destination, timestamp in newest.items():
            dest = f'{labels}, destination="{destination}"'
            series += [
                {
                    "series": f"{newest_metric}{{{dest}}}",
                    "values": f"{timestamp}x200",
                },
                {
                    "series": f"simplivity_vm_backup_expected_interval_seconds{{{dest}}}",
                    "values": f"{interval}x200",
                },
            ]

    def row(vm: str, destination: str, value: float) -> dict[str, Any]:
        number = list(vms).index(vm)
        labels = (
            f'{{{where}, vm="{vm}", vm_id="v{number}", destination="{destination}", '
            f'omnistack_cluster="cl1", policy="p-{vm}"}}'
        )
        return {"labels": labels, "value": value}

    at = 177 * 60  # seconds since the epoch, promtool's clock
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": panel_expr("At-risk VMs by destination", "A"),
                        "eval_time": "177m",
                        "exp_samples": [
                            row("dr-stopped", "dr-cluster", at - 1000),
                            row("never-at-dr", "dr-cluster", at),
                            row("none-yet", "cl1", at),
                        ],
                    },
                    {
                        "expr": panel_expr("At-risk VMs by destination", "B"),
                        "eval_time": "177m",
                        "exp_samples": [
                            row("dr-stopped", "dr-cluster", 3600),
                            row("never-at-dr", "dr-cluster", 3600),
                            row("none-yet", "cl1", 3600),
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "at_risk_test.yml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
