"""The shipped alert rules: promtool accepts them, their unit tests pass, and they are complete.

``monitoring/alerts.yml`` is loaded by users' Prometheus servers and by the Helm chart, and
``monitoring/tests/alerts_test.yml`` holds its ``promtool test rules`` cases. promtool comes
from Debian's ``prometheus`` package, which ``./dev setup`` installs.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import monitoring as monitoring_tool

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "tests" / "alerts_test.yml"
README = MONITORING.parent / "README.md"
TOOL = REPO / "tools" / "monitoring.py"

SEVERITIES = {"critical", "warning"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: it comes with Debian's prometheus package, "
            "which `./dev setup` installs (or: apt-get install prometheus)"
        )
    return path


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
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
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
    """The README's runbook: from its heading to the next section of the same level."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n### Alert runbook\n")
    end = text.find("\n## ", start)
    return text[start : end if end >= 0 else len(text)]


def runbook_sections() -> list[str]:
    return re.findall(r"^### (Simplivity\S+)\s*$", runbook_text(), flags=re.MULTILINE)


def test_runbook_has_one_section_per_alert_that_says_what_to_check() -> None:
    sections = runbook_sections()
    assert sorted(sections) == sorted(alert_names())
    text = runbook_text()
    for body in re.split(r"^### Simplivity\S+\s*$", text, flags=re.MULTILINE)[1:]:
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


BASE_URL = "https://git.example.com/storage/simplivity-exporter/blob/v0.1.0/README.md"


def test_the_runbook_tool_adds_an_absolute_link_to_every_alert(tmp_path: Path) -> None:
    """``tools/monitoring.py rules`` as a user runs it: the file with a runbook_url per alert,
    each the README's anchor of the alert's runbook section, and nothing else changed."""
    result = subprocess.run(
        [sys.executable, str(TOOL), "rules", "--runbook-base-url", BASE_URL],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
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
    result = subprocess.run(
        [sys.executable, str(TOOL), "rules", "--runbook-base-url", base_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "expected an absolute http:// or https:// address" in result.stderr


def test_the_runbook_tool_refuses_an_alert_without_annotations() -> None:
    text = "groups:\n  - name: g\n    rules:\n      - alert: SimplivityX\n        expr: up\n"
    with pytest.raises(monitoring_tool.MonitoringFileError, match="SimplivityX"):
        monitoring_tool.rules_with_runbook_urls(text, BASE_URL)


#: The overdue rule as issue 12 defines it, and the exporter's defaults (protection.*).
OVERDUE_FACTOR = "1.5"
GRACE_SECONDS = "3600"


def test_policy_aware_rules_use_the_exporters_overdue_factor_and_grace() -> None:
    """The literals the Helm chart replaces with config.protection: the factor after
    ``expected_interval *`` (overdue only), the grace after its ``+`` (both rules)."""
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    interval = r"simplivity_vm_backup_expected_interval_seconds\)?"
    overdue, never = rules["SimplivityVMBackupOverdue"], rules["SimplivityVMNeverBackedUp"]
    assert re.findall(interval + r" \* ([\d.]+)", overdue) == [OVERDUE_FACTOR] * 2
    assert re.findall(interval + r"(?: \* [\d.]+)? \+ (\d+)", overdue) == [GRACE_SECONDS] * 2
    assert re.findall(interval + r" \* ([\d.]+)", never) == []
    assert re.findall(interval + r" \+ (\d+)", never) == [GRACE_SECONDS]
    for name, expr in rules.items():
        if name not in {"SimplivityVMBackupOverdue", "SimplivityVMNeverBackedUp"}:
            assert "simplivity_vm_backup_expected_interval_seconds" not in expr, name
    header = RULES.read_text(encoding="utf-8").split("\ngroups:", 1)[0]
    assert (
        f"simplivity_vm_backup_expected_interval_seconds * {OVERDUE_FACTOR} + {GRACE_SECONDS}"
        in (header)
    )


def test_rules_read_only_metrics_the_exporter_exports() -> None:
    from tests.test_dashboard import EXPORTED_METRICS, metric_names

    for rule in alert_rules():
        names = metric_names(rule["expr"]) - {"time"}
        assert names, rule["alert"]
        assert names <= EXPORTED_METRICS, (rule["alert"], names - EXPORTED_METRICS)
