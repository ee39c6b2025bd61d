"""The shipped alert rules: promtool accepts them, their unit tests pass, and they are complete.

``monitoring/alerts.yml`` is loaded by users' Prometheus servers and by the Helm chart, and
``monitoring/tests/alerts_test.yml`` holds its ``promtool test rules`` cases. promtool comes
from Debian's ``prometheus`` package, which ``./dev setup`` installs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter import protection, restapi
from exporter.collector import BackupCollector, ExporterState
from exporter.exposition import Exposition
from exporter.model import ControllerStatus
from tests import snapshots
from tests.promtool import promtool
from tests.snapshots import rendered
from tools import monitoring as monitoring_tool

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "tests" / "alerts_test.yml"
RUNBOOK = MONITORING.parent / "docs" / "runbook.md"
TOOL = REPO / "tools" / "monitoring.py"

SEVERITIES = {"critical", "warning"}


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        rule for group in load_yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule
    ]
    return rules


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alert_rules()]


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return promtool(*args, cwd=REPO)


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    """``tools/monitoring.py ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_check_rules_accepts_the_rule_file() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout, result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "FAILED" not in result.stdout


def test_the_issue_s_alerts_are_all_there() -> None:
    assert set(alert_names()) >= {
        "SimplivityExporterDown",
        "SimplivityControllerDown",
        "SimplivityControllerDataStale",
        "SimplivityClusterBackupTooOld",
        "SimplivityNewFailedBackups",
        "SimplivityBackupsDegraded",
        # issue 11
        "SimplivityUnreadableRecords",
        # issue 12: each VM judged against its own policy
        "SimplivityVMNotScheduled",
        "SimplivityVMNeverBackedUp",
        "SimplivityVMBackupOverdue",
        "SimplivityVMLastBackupFailed",
        "SimplivityHostPolicyDisabled",
        "SimplivityFederationDailyBackupsNearLimit",
        "SimplivityFederationRetainedBackupsNearLimit",
        # issue 20: application consistency and recovery depth
        "SimplivityVMAppConsistencyFailing",
        "SimplivityVMRecoveryWindowShort",
    }
    # Replaced by the policy-aware SimplivityVMBackupOverdue, SimplivityVMNeverBackedUp and
    # SimplivityVMLastBackupFailed: one fixed 26 h threshold misjudges every non-daily policy,
    # and "no PROTECTED backup" would fire for every new VM once the inventory lists them all.
    assert not set(alert_names()) & {"SimplivityVMBackupTooOld", "SimplivityVMNoProtectedBackup"}
    assert len(alert_names()) == len(set(alert_names())), "an alert name is used twice"


def subject_labels(expr: str) -> list[str]:
    """The labels that name what an alert is about, from the metrics its expression reads."""
    if "simplivity_vm_" in expr:
        return ["vm", "vm_id", "controller"]
    if "simplivity_host_" in expr:
        return ["host", "omnistack_cluster", "controller"]
    if re.search(r"simplivity_(federation|unreadable)_", expr):
        return ["controller"]
    if re.search(r"simplivity_backup(s|_)", expr):
        return ["omnistack_cluster", "controller"]
    if re.search(r"simplivity_(up|poll_)", expr):
        return ["controller"]
    if re.search(r"\bup\b", expr):
        return ["instance"]
    return []


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_each_alert_has_severity_summary_and_a_description_that_says_what_to_check(
    rule: dict[str, Any],
) -> None:
    name = rule["alert"]
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    # No runbook_url in the plain file: a relative one is dead wherever the alert is read,
    # and an absolute one needs the user's address (tools/monitoring.py rules adds it).
    assert set(annotations) == {"summary", "description"}, name
    assert annotations["summary"].strip(), name
    # Without the runbook at hand, the description still says where to start.
    first_check = re.search(r"First check: (.+)$", annotations["description"].strip(), re.S)
    assert first_check, f"{name}: the description must end with 'First check: ...'"
    assert len(first_check.group(1).split()) >= 5, name
    for label in subject_labels(rule["expr"]):
        assert f"$labels.{label}" in annotations["description"], (name, label)
    # The summary names the main subject too (the controller, cluster or VM).
    subject = subject_labels(rule["expr"])
    if subject:
        assert f"$labels.{subject[0]}" in annotations["summary"], name


def runbook_text() -> str:
    """The runbook, docs/runbook.md: one section per alert."""
    return RUNBOOK.read_text(encoding="utf-8")


def runbook_sections() -> list[str]:
    return re.findall(r"^## (Simplivity\S+)\s*$", runbook_text(), flags=re.MULTILINE)


def test_runbook_has_one_section_per_alert_that_says_what_to_check() -> None:
    sections = runbook_sections()
    assert sorted(sections) == sorted(alert_names())
    text = runbook_text()
    for body in re.split(r"^## Simplivity\S+\s*$", text, flags=re.MULTILINE)[1:]:
        assert "**Means:**" in body
        assert "**Check:**" in body


def header_thresholds() -> dict[str, list[str]]:
    """The threshold table in the rule file's leading comment: alert -> its literals."""
    table: dict[str, list[str]] = {}
    for line in RULES.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s+(Simplivity\w+)\s+(for: \w+|> [\d.]+)\s", line)
        if match:
            table.setdefault(match.group(1), []).append(match.group(2))
    return table


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_each_threshold_is_documented_and_is_one_literal_in_its_alert(
    rule: dict[str, Any],
) -> None:
    """The contract the Helm chart relies on to substitute thresholds from its values."""
    name = rule["alert"]
    documented = header_thresholds().get(name)
    assert documented, f"{name} is missing from the threshold table at the top of {RULES.name}"
    fors = [literal.removeprefix("for: ") for literal in documented if literal.startswith("for")]
    assert fors == ([rule["for"]] if "for" in rule else []), name
    for literal in documented:
        if literal.startswith(">"):
            assert len(re.findall(re.escape(literal) + r"(?![\d.])", rule["expr"])) == 1, (
                name,
                literal,
            )
            # The Helm chart replaces the number that ends the expression.
            assert rule["expr"].rstrip().endswith(literal), (name, literal)
    runbook_rows = re.findall(rf"^\| {name} \|", runbook_text(), re.M)
    assert len(runbook_rows) == 1, f"{name} has no row in the runbook's threshold table"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired >= set(alert_names()), set(alert_names()) - fired
    assert quiet >= set(alert_names()), set(alert_names()) - quiet


def test_unit_tests_load_the_shipped_rule_file() -> None:
    rule_files = load_yaml(RULE_TESTS)["rule_files"]
    assert [(RULE_TESTS.parent / f).resolve() for f in rule_files] == [RULES.resolve()]


BASE_URL = "https://git.example.com/storage/simplivity-exporter/blob/v0.1.0/docs/runbook.md"


def test_the_runbook_tool_adds_an_absolute_link_to_every_alert(tmp_path: Path) -> None:
    """``tools/monitoring.py rules`` as a user runs it: the file with a runbook_url per alert,
    each docs/runbook.md's anchor of the alert's section, and nothing else changed."""
    result = run_tool("rules", "--runbook-base-url", BASE_URL)
    assert result.returncode == 0, result.stderr
    linked = tmp_path / "alerts.yml"
    linked.write_text(result.stdout, encoding="utf-8")
    check = run_promtool("check", "rules", str(linked))
    assert check.returncode == 0, check.stdout + check.stderr
    # Comments and layout kept: only the runbook_url lines are new.
    lines = result.stdout.splitlines()
    added = [line for line in lines if re.match(r"\s+runbook_url: ", line)]
    kept = [line for line in lines if line not in added]
    assert kept == RULES.read_text(encoding="utf-8").splitlines()
    assert len(added) == len(alert_names())
    anchors = {section.lower() for section in runbook_sections()}
    expected = copy.deepcopy(load_yaml(RULES))
    for group in expected["groups"]:
        for rule in group["rules"]:
            url = f"{BASE_URL}#{rule['alert'].lower()}"
            rule["annotations"]["runbook_url"] = url
            assert url.rsplit("#", 1)[1] in anchors
    assert load_yaml(linked) == expected


@pytest.mark.parametrize(
    "base_url",
    ["README.md", "git.example.com/README.md", "ftp://example.com/README.md", "https://a/b#c"],
)
def test_the_runbook_tool_refuses_an_address_that_is_not_absolute(base_url: str) -> None:
    result = run_tool("rules", "--runbook-base-url", base_url)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "expected an absolute http:// or https:// address" in result.stderr


def test_the_runbook_tool_refuses_an_alert_without_annotations() -> None:
    text = "groups:\n  - name: g\n    rules:\n      - alert: SimplivityX\n        expr: up\n"
    with pytest.raises(monitoring_tool.MonitoringFileError, match="SimplivityX"):
        monitoring_tool.rules_with_runbook_urls(text, BASE_URL)


def test_no_rule_judges_again_or_holds_a_copy_of_the_protection_settings() -> None:
    """The VM alerts read the exporter's verdict (simplivity_vm_protection_status); the one
    rule that needs the overdue factor and grace (to name an overdue VM's late destinations)
    reads the values the exporter judged with, so changing them in the exporter's config is
    the only edit, and the Helm chart substitutes nothing."""
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    verdicts = {
        "SimplivityVMNotScheduled": "not_scheduled",
        "SimplivityVMNeverBackedUp": "never_backed_up",
        "SimplivityVMBackupOverdue": "overdue",
        "SimplivityVMLastBackupFailed": "last_failed",
        "SimplivityVMAppConsistencyFailing": "app_inconsistent",
    }
    for name, status in verdicts.items():
        assert re.search(
            rf'simplivity_vm_protection_status\{{status=~?"[^"]*\b{status}\b', rules[name]
        )
    for name, expr in rules.items():
        assert "simplivity_vm_policy_scheduled" not in expr, name
        if "simplivity_vm_" in expr:
            # No number in a VM rule: every threshold is the exporter's, but for a rule's own
            # documented one (the recovery window's half, which no status judges).
            numbers = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", expr)
            own = {t.removeprefix("> ") for t in header_thresholds()[name] if t.startswith(">")}
            assert set(numbers) <= {"0", *own}, (name, numbers)
    overdue = rules["SimplivityVMBackupOverdue"]
    assert "simplivity_protection_overdue_factor" in overdue
    assert "simplivity_protection_grace_seconds" in overdue
    header = RULES.read_text(encoding="utf-8").split("\ngroups:", 1)[0]
    assert "* 1.5 + 3600" not in header


def test_rules_read_only_metrics_the_exporter_exports() -> None:
    from tests.test_dashboard import EXPORTED_METRICS, metric_names

    for rule in alert_rules():
        names = metric_names(rule["expr"]) - {"time"}
        assert names, rule["alert"]
        assert names <= EXPORTED_METRICS, (rule["alert"], names - EXPORTED_METRICS)


# --- the VM alerts judge as the exporter does (exporter/protection.py) ---------------------

#: "now" of the cross-check, on an hourly grid of samples (promtool's clock starts at 0).
NOW = 60 * 3600
HOURLY, DAILY = 3600, 86400
#: intervals, created, newest PROTECTED at cl, at dr and elsewhere, newest FAILED, host enabled
_Case = tuple[
    dict[str, int], float | None, float | None, float | None, float | None, float | None, bool
]


def _vm_cases() -> list[tuple[str, protection.VMFacts]]:
    """VMs around every threshold of :func:`protection.judge`: every combination of these."""
    # None: the controller gave no creation time. 7200 s: exactly the end of "new" for hourly.
    created: list[float | None] = [None, NOW - 600, NOW - 7200, NOW - 7199, NOW - 200_000]
    # Newest PROTECTED at cl: none, fresh, exactly at the hourly threshold (9000 s), past it,
    # past the daily one too; at dr, past the daily threshold (133,200 s) or not.
    at_cl: list[float | None] = [None, NOW - 1000, NOW - 9000, NOW - 9001, NOW - 200_000]
    at_dr: list[float | None] = [None, NOW - 1000, NOW - 100_000, NOW - 200_000]
    # A destination the policy no longer sends backups to.
    elsewhere: list[float | None] = [None, NOW - 500]
    failed: list[float | None] = [None, NOW - 100, NOW - 150_000]
    scheduled: list[_Case] = [
        (ivs, made, cl, dr, other, fail, True)
        for ivs, dr_options in (({"cl": HOURLY}, [None]), ({"cl": HOURLY, "dr": DAILY}, at_dr))
        for made, cl, dr, other, fail in itertools.product(
            created, at_cl, dr_options, elsewhere, failed
        )
    ]
    # Not scheduled: a policy without rules, or a host with policy backups disabled.
    unscheduled: list[_Case] = [
        (ivs, NOW - 200_000, cl, None, None, fail, enabled)
        for ivs, enabled in (({}, True), ({"cl": HOURLY}, False))
        for cl, fail in itertools.product([None, NOW - 200_000], [None, NOW - 100])
    ]
    cases = []
    for index, (ivs, made, cl, dr, other, fail, enabled) in enumerate(scheduled + unscheduled):
        newest = {k: v for k, v in {"cl": cl, "dr": dr, "old": other}.items() if v is not None}
        latest = max(newest.values(), default=None)
        newest_backup = None
        if fail is not None and (latest is None or fail > latest):
            newest_backup = protection.NewestBackup("FAILED", fail, "cl")
        elif latest is not None:
            newest_backup = protection.NewestBackup("PROTECTED", latest, "cl")
        facts = protection.VMFacts(made, ivs, newest, newest_backup, enabled)
        cases.append((f"v{index}", facts))
    # Application consistency asked for at dr only, everything else fresh: the newest
    # application-consistent backup there none, fresh, past the daily threshold or far past
    # it, or not said (the controller gives no consistency_type: not judged).
    fresh = {"cl": NOW - 1000, "dr": NOW - 1000}
    app_cases: list[dict[str, float | None]] = [
        {"dr": None},
        {"dr": NOW - 1000},
        {"dr": NOW - 100_000},
        {"dr": NOW - 200_000},
        {},
    ]
    for made, app in itertools.product([None, NOW - 7200, NOW - 200_000], app_cases):
        facts = protection.VMFacts(
            made,
            {"cl": HOURLY, "dr": DAILY},
            fresh,
            protection.NewestBackup("PROTECTED", NOW - 1000, "cl"),
            app_intervals={"dr": DAILY},
            newest_app_consistent=app,
        )
        cases.append((f"v{len(cases)}", facts))
    return cases


def _series(vm_id: str, facts: protection.VMFacts) -> list[tuple[str, str]]:
    """The series the exporter writes for a VM (issue 12's table), as promtool input."""
    ids = f'controller="c", vm="{vm_id}-name", vm_id="{vm_id}"'
    host = "on" if facts.policy_enabled else "off"
    anywhere = max(facts.newest_protected.values(), default=0.0)
    failed = facts.newest_backup.created if facts.newest_backup else 0.0
    if facts.newest_backup is None or facts.newest_backup.state != "FAILED":
        failed = 0.0
    out = [
        (f'simplivity_vm_protection_status{{{ids}, status="{_judged(facts)}"}}', "1"),
        (
            f'simplivity_vm_info{{{ids}, omnistack_cluster="cl", policy="p", datastore="d", '
            f'host="{host}", app_aware_status="INVALID_CREDS"}}',
            "1",
        ),
        (f"simplivity_vm_backup_newest_timestamp_seconds{{{ids}}}", f"{anywhere:g}"),
        (
            f"simplivity_vm_backup_newest_age_seconds{{{ids}}}",
            f"{NOW - anywhere:g}" if anywhere else "Inf",
        ),
        (f"simplivity_vm_backup_newest_failed_timestamp_seconds{{{ids}}}", f"{failed:g}"),
        (
            f"simplivity_vm_policy_scheduled{{{ids}}}",
            "1" if facts.intervals and facts.policy_enabled else "0",
        ),
    ]
    if facts.created_at is not None:
        out.append((f"simplivity_vm_created_timestamp_seconds{{{ids}}}", f"{facts.created_at:g}"))
    for destination, interval in facts.intervals.items():
        where = f'{ids}, destination="{destination}"'
        held = facts.newest_protected.get(destination, 0.0)
        out.append((f"simplivity_vm_backup_expected_interval_seconds{{{where}}}", str(interval)))
        out.append(
            (f"simplivity_vm_destination_backup_newest_timestamp_seconds{{{where}}}", f"{held:g}")
        )
    return out


def _judged(facts: protection.VMFacts, **intervals: int) -> str:
    changed = dataclasses.replace(facts, intervals=intervals) if intervals else facts
    return protection.judge(changed, now=NOW, overdue_factor=1.5, grace_seconds=3600).status


def test_the_vm_alerts_fire_for_the_vms_the_exporter_judges_at_risk(tmp_path: Path) -> None:
    """Each VM alert's expression, evaluated by promtool on the series of about 800 VMs
    around every threshold, names exactly the VMs (and destinations) whose protection status
    ``protection.judge`` gives: the rules and the exporter's own judgement cannot drift apart.
    The one documented difference: SimplivityVMLastBackupFailed also fires beside
    SimplivityVMBackupOverdue when the overdue VM's newest backup failed."""
    cases = _vm_cases()
    statuses = {vm_id: _judged(facts) for vm_id, facts in cases}
    assert set(statuses.values()) == set(protection.PROTECTION_STATUSES), "widen the grid"
    expected: dict[str, set[tuple[str, ...]]] = {
        "SimplivityVMNotScheduled": {
            (vm_id,)
            for vm_id, facts in cases
            if statuses[vm_id] == "not_scheduled" and facts.policy_enabled
        },
        "SimplivityVMNeverBackedUp": {
            (vm_id,) for vm_id in statuses if statuses[vm_id] == "never_backed_up"
        },
        # Per destination: overdue with the policy narrowed to that destination.
        "SimplivityVMBackupOverdue": {
            (vm_id, destination)
            for vm_id, facts in cases
            for destination, interval in facts.intervals.items()
            if _judged(facts, **{destination: interval}) == "overdue"
        },
        "SimplivityVMAppConsistencyFailing": {
            (vm_id,) for vm_id in statuses if statuses[vm_id] == "app_inconsistent"
        },
        "SimplivityVMLastBackupFailed": {
            (vm_id,)
            for vm_id, facts in cases
            if statuses[vm_id] == "last_failed"
            or (
                statuses[vm_id] == "overdue"
                and facts.newest_backup is not None
                and facts.newest_backup.state == "FAILED"
            )
        },
    }
    overdue_vms = {vm_id for vm_id, _ in expected["SimplivityVMBackupOverdue"]}
    assert overdue_vms == {vm_id for vm_id in statuses if statuses[vm_id] == "overdue"}
    for name, alerted in expected.items():
        assert alerted, f"no case fires {name}: widen the grid"

    hours = NOW // 3600
    input_series = [
        {"series": series, "values": f"{value}+0x{hours}"}
        for vm_id, facts in cases
        for series, value in _series(vm_id, facts)
    ]
    input_series += [
        {"series": f'simplivity_protection_{name}{{controller="c"}}', "values": f"{value}x{hours}"}
        for name, value in (("overdue_factor", 1.5), ("grace_seconds", 3600))
    ]
    input_series += [
        {
            "series": f'simplivity_host_policy_enabled{{controller="c", host="{host}", '
            f'omnistack_cluster="cl"}}',
            "values": f"{value}x{hours}",
        }
        for host, value in (("on", 1), ("off", 0))
    ]
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    expr_tests = []
    for name, alerted in expected.items():
        by = "vm_id, destination" if name == "SimplivityVMBackupOverdue" else "vm_id"
        expr_tests.append(
            {
                "expr": f"count by ({by}) ({exprs[name]})",
                "eval_time": f"{hours}h",
                "exp_samples": [
                    {
                        "labels": "{"
                        + ", ".join(
                            f'{label}="{value}"'
                            for label, value in sorted(zip(by.split(", "), key, strict=True))
                        )
                        + "}",
                        "value": 1,
                    }
                    for key in sorted(alerted)
                ],
            }
        )
    tests = tmp_path / "judge_test.yml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": [],
                "evaluation_interval": "1h",
                "tests": [
                    {"interval": "1h", "input_series": input_series, "promql_expr_test": expr_tests}
                ],
            }
        ),
        encoding="utf-8",
    )
    result = run_promtool("test", "rules", str(tests))
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]


# --- the rules on the series the exporter writes for real-shaped objects ----------------------

DASHBOARD = MONITORING / "dashboard.json"


def _exported(version: str) -> str:
    """The /metrics text of one poll of real-shaped records (HPE's schema): hosts name their
    cluster by id only from REST API 1.9, not at all before; the cluster listing names the ids
    (it is not asked for before 1.9). Boston DC holds a VM on a policy without rules and one
    on a host whose policy backups are suspended; DR Site, only hosts (replicated backups)."""
    newer = restapi.documented(
        restapi.HOSTS, "omnistack_cluster_id", restapi.parse_version(version)
    )
    vm = snapshots.vm_record
    vms = [
        vm("v1", "no-rules-vm", "p0", host_id="h1", omnistack_cluster_name="Boston DC"),
        vm("v2", "suspended-vm", "p1", host_id="h2", omnistack_cluster_name="Boston DC"),
    ]
    policies = [
        snapshots.policy_record("p0", "Default (no rules)"),
        snapshots.policy_record("p1", "Hourly", snapshots.rule(60)),
    ]
    clusters = [{"id": "c-bos", "name": "Boston DC"}, {"id": "c-dr", "name": "DR Site"}]
    hosts = [
        {"id": "h1", "name": "esx-01", "omnistack_cluster_id": "c-bos", "policy_enabled": True},
        {"id": "h2", "name": "esx-02", "omnistack_cluster_id": "c-bos", "policy_enabled": False},
        {"id": "h3", "name": "dr-esx-01", "omnistack_cluster_id": "c-dr", "policy_enabled": True},
    ]
    if not newer:
        hosts = [{k: v for k, v in h.items() if k != "omnistack_cluster_id"} for h in hosts]
    read = snapshots.read_of(vms, policies, hosts, clusters if newer else [])
    snapshot = read.judge(
        read.inventory(None),
        snapshots.aggregate([]),
        now=NOW_EXPORTED,
        overdue_factor=1.5,
        grace_seconds=3600,
    )
    status = ControllerStatus(
        name="c", url="https://ovc", up=True, last_success=NOW_EXPORTED, snapshot=snapshot
    )
    state = ExporterState(interval_seconds=300, stale_after_seconds=1800)
    backups = BackupCollector(lambda: [status], lambda: state, clock=lambda: NOW_EXPORTED)
    registry = CollectorRegistry(auto_describe=False)
    exposition = Exposition(registry, lambda: 0, backups=backups, clock=lambda: NOW_EXPORTED)
    return rendered(exposition).decode()


NOW_EXPORTED = 1_700_000_000.0


def _promtool_value(value: float) -> str:
    return {math.inf: "Inf", -math.inf: "-Inf"}.get(value, f"{value:g}")


def _dashboard_expr(fragment: str) -> str:
    exprs = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
        for target in panel.get("targets", ())
        if fragment in target.get("expr", "")
    ]
    assert len(exprs) == 1, exprs
    expr: str = exprs[0]
    for variable in ("$job", "$instance", "$controller"):
        expr = expr.replace(variable, ".*")
    return expr.replace("$omnistack_cluster", "Boston DC")


@pytest.mark.parametrize("version", ["1.25", "1.8"])
def test_not_scheduled_the_hosts_panel_and_vm_counts_hold_on_real_shaped_series(
    version: str, tmp_path: Path
) -> None:
    text = _exported(version)
    input_series = [
        {
            "series": sample.name
            + "{"
            + ", ".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            + "}",
            "values": f"{_promtool_value(sample.value)}+0x90",
        }
        for family in text_string_to_metric_families(text)
        for sample in family.samples  # every series of the poll, as Prometheus would scrape it
    ]
    hosts = {s["series"] for s in input_series if "host_policy_enabled" in s["series"]}
    assert all('omnistack_cluster=""' not in series for series in hosts) is (version == "1.25")
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    vm_counts = [
        {"labels": '{omnistack_cluster="Boston DC"}', "value": 2},
        *([{"labels": '{omnistack_cluster="DR Site"}', "value": 0}] if version == "1.25" else []),
    ]
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "promql_expr_test": [
                    # Only the VM whose policy has no rules: the one on the suspended host is
                    # SimplivityHostPolicyDisabled's.
                    {
                        "expr": "count by (vm, omnistack_cluster, host) ("
                        + exprs["SimplivityVMNotScheduled"]
                        + ")",
                        "eval_time": "60m",
                        "exp_samples": [
                            {
                                "labels": '{host="esx-01", omnistack_cluster="Boston DC", '
                                'vm="no-rules-vm"}',
                                "value": 1,
                            }
                        ],
                    },
                    # The suspended host's own alert, with its cluster.
                    {
                        "expr": "count by (host, omnistack_cluster) ("
                        + exprs["SimplivityHostPolicyDisabled"]
                        + ")",
                        "eval_time": "60m",
                        "exp_samples": [
                            {"labels": '{host="esx-02", omnistack_cluster="Boston DC"}', "value": 1}
                        ],
                    },
                    # The dashboard's "hosts with policy backups disabled", Boston DC selected.
                    {
                        "expr": _dashboard_expr("simplivity_host_policy_enabled"),
                        "eval_time": "60m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    },
                    # Live VMs by cluster: no cluster without a name.
                    {
                        "expr": "sum by (omnistack_cluster) (simplivity_vms)",
                        "eval_time": "60m",
                        "exp_samples": vm_counts,
                    },
                ],
            }
        ],
    }
    path = tmp_path / "real_shaped_test.yml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = run_promtool("test", "rules", str(path))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
