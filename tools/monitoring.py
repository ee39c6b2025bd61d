"""The shipped alert rules and Grafana dashboard, in the forms users deploy them.

``monitoring/alerts.yml`` and ``monitoring/dashboard.json`` are the sources. They carry no
runbook links, since a relative link is dead in Alertmanager, Slack or Grafana: these commands
add absolute ones from the address where docs/runbook.md (one section per
alert) is published. Python 3.11+ and its standard library only.

    # the rules with runbook_url: <base>#<alert name in lower case> on every alert
    python3 tools/monitoring.py rules --runbook-base-url URL > simplivity-rules.yml

    # the dashboard for Grafana's import (a data source input), with runbook links on panels
    python3 tools/monitoring.py dashboard --import --runbook-base-url URL > dashboard.json

    # after editing monitoring/: rewrite the files generated from it (the import variant and
    # the Helm chart's copies), which the tests keep in step
    python3 tools/monitoring.py sync

A panel links to the runbook of the alerts its description names in its last sentence,
``Alert: SimplivityX.`` or ``Alerts: SimplivityX, SimplivityY.``; the Helm chart reads the same
sentence to add the same links and to move the panel's thresholds with the alert's.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "alerts.yml"
DASHBOARD = ROOT / "monitoring" / "dashboard.json"
DASHBOARD_IMPORT = ROOT / "monitoring" / "dashboard-import.json"
CHART_FILES = ROOT / "helm" / "simplivity-exporter" / "files"

#: The data source input of the import variant: Grafana asks for it and puts its uid
#: wherever ``${DS_PROMETHEUS}`` stands.
DS_INPUT = "DS_PROMETHEUS"

_ALERT = re.compile(r"^(\s*)- alert:\s*(\w+)\s*$")
_ANNOTATIONS = re.compile(r"^(\s*)annotations:\s*$")
_PANEL_ALERTS = re.compile(r"Alerts?: (Simplivity\w+(?:, Simplivity\w+)*)\.$")


class MonitoringFileError(ValueError):
    """A source file is not in the shape these tools rely on."""


def check_base_url(base_url: str) -> str:
    """An absolute http(s) address without a fragment (the alert's anchor is added to it)."""
    if not re.fullmatch(r"https?://[^\s#\"'\\<>]+", base_url):
        raise MonitoringFileError(
            f"runbook base URL {base_url!r}: expected an absolute http:// or https:// address "
            "without '#', e.g. https://github.com/ORG/simplivity-exporter/blob/main/docs/runbook.md"
        )
    return base_url


def runbook_url(base_url: str, alert: str) -> str:
    """The address of an alert's runbook section: docs/runbook.md's heading anchor."""
    return f"{check_base_url(base_url)}#{alert.lower()}"


def rules_with_runbook_urls(text: str, base_url: str) -> str:
    """The rule file's text with ``runbook_url`` added to each alert's annotations.

    Line by line, so that the file's comments and layout stay as they are. Each alert must
    have an ``annotations:`` block and no ``runbook_url`` yet.
    """
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    alert: str | None = None
    block_indent: int | None = None  # of the current alert's `annotations:` line
    last_in_block = -1  # index in `out` of the block's last non-blank line
    done: set[str] = set()

    def close_block() -> None:
        nonlocal block_indent
        if alert is None or block_indent is None:
            return
        line = f'{" " * (block_indent + 2)}runbook_url: "{runbook_url(base_url, alert)}"\n'
        out.insert(last_in_block + 1, line)
        done.add(alert)
        block_indent = None

    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if block_indent is not None and stripped and indent <= block_indent:
            close_block()
        match = _ALERT.match(line)
        if match:
            alert = match.group(2)
        elif (found := _ANNOTATIONS.match(line)) and alert is not None and alert not in done:
            block_indent = len(found.group(1))
        elif block_indent is not None and stripped.startswith("runbook_url:"):
            raise MonitoringFileError(f"{alert}: already has a runbook_url")
        out.append(line)
        if block_indent is not None and stripped:
            last_in_block = len(out) - 1
    close_block()
    alerts = {m.group(2) for line in lines if (m := _ALERT.match(line))}
    if alerts - done:
        raise MonitoringFileError(f"alerts without annotations: {sorted(alerts - done)}")
    return "".join(out)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_alerts(panel: dict[str, Any]) -> list[str]:
    """The alerts a panel's description names in its last sentence."""
    match = _PANEL_ALERTS.search(str(panel.get("description", "")).strip())
    return match.group(1).split(", ") if match else []


def with_runbook_links(dashboard: dict[str, Any], base_url: str) -> dict[str, Any]:
    """A copy of the dashboard whose panels link to the runbook of the alerts they show."""
    linked = copy.deepcopy(dashboard)
    for panel in panels(linked):
        alerts = panel_alerts(panel)
        if alerts:
            panel["links"] = [
                {
                    "title": f"Runbook: {alert}",
                    "url": runbook_url(base_url, alert),
                    "targetBlank": True,
                }
                for alert in alerts
            ]
    return linked


def for_import(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The dashboard as Grafana's import wants it: a Prometheus data source input.

    Panels keep querying through the ``datasource`` variable (so the data source can still be
    switched on the dashboard); the input becomes that variable's initial value.
    """
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    if variables.get("datasource", {}).get("type") != "datasource":
        raise MonitoringFileError("the dashboard has no 'datasource' variable")
    imported: dict[str, Any] = {
        "__inputs": [
            {
                "name": DS_INPUT,
                "label": "Prometheus",
                "description": "The Prometheus that scrapes simplivity-exporter",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        **copy.deepcopy(dashboard),
    }
    for variable in imported["templating"]["list"]:
        if variable["name"] == "datasource":
            reference = "${" + DS_INPUT + "}"
            variable["current"] = {"selected": False, "text": reference, "value": reference}
    return imported


def dashboard_text(dashboard: dict[str, Any]) -> str:
    """The JSON layout of the shipped files: two-space indent, a final newline."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def sync() -> list[Path]:
    """Rewrite every file generated from monitoring/; returns those that changed."""
    changed = []
    wanted = {
        DASHBOARD_IMPORT: dashboard_text(for_import(load_dashboard())),
        CHART_FILES / RULES.name: RULES.read_text(encoding="utf-8"),
        CHART_FILES / DASHBOARD.name: DASHBOARD.read_text(encoding="utf-8"),
    }
    for path, text in wanted.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rules = sub.add_parser("rules", help="the alert rules with absolute runbook links")
    rules.add_argument("--runbook-base-url", required=True, metavar="URL")
    rules.add_argument("--rules", type=Path, default=RULES, metavar="FILE")
    dashboard = sub.add_parser("dashboard", help="the dashboard, for import or with links")
    dashboard.add_argument("--runbook-base-url", metavar="URL")
    dashboard.add_argument("--import", dest="for_import", action="store_true")
    dashboard.add_argument("--dashboard", type=Path, default=DASHBOARD, metavar="FILE")
    sub.add_parser("sync", help="rewrite the files generated from monitoring/")
    args = parser.parse_args(argv)
    try:
        if args.command == "rules":
            text = args.rules.read_text(encoding="utf-8")
            sys.stdout.write(rules_with_runbook_urls(text, args.runbook_base_url))
        elif args.command == "dashboard":
            result = load_dashboard(args.dashboard)
            if args.runbook_base_url:
                result = with_runbook_links(result, args.runbook_base_url)
            if args.for_import:
                result = for_import(result)
            sys.stdout.write(dashboard_text(result))
        else:
            for path in sync():
                print(f"wrote {path.relative_to(ROOT)}")
    except (MonitoringFileError, OSError, json.JSONDecodeError) as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
