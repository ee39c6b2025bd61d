"""End to end: the exporter on the simulator, scraped by a real Prometheus with the shipped rules.

A simulated controller serves its default federation, which plants every protection status
(issue 12: a VM on a policy without rules, one on a host with policy backups suspended, one
never backed up, one whose DR copies stopped, one whose last backup failed, a new one...),
with a daily-backup limit its policies fill to 95 %. The exporter polls it every second;
Prometheus (Debian's ``prometheus`` package, which ``./dev setup`` installs) scrapes the exporter
every second and evaluates ``monitoring/alerts.yml``, with only the ``for:`` durations shortened
so that the test takes seconds. Everything is checked through Prometheus' HTTP API: what a
user's Prometheus and Grafana would see. The alerts expected are computed from the simulator's
own data (its backups, its inventory, its own reading of the policies' schedules and its own
judgement of each VM), never from the exporter's code.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml

from exporter.simulator import DR_STOPPED_VM, FederationSpec, SimulatedController
from exporter.simulator.federation import (
    GRACE_SECONDS,
    OVERDUE_FACTOR,
    expected_intervals,
    generate_federation,
)
from exporter.simulator.inventory import plan_inventory
from exporter.simulator.spec import ALL_STATES_VM, TRIMMED_VM, VSS_FAILING_VM
from tests.promtool import binary
from tests.test_dashboard import EXPORTED_METRICS, load_dashboard, queries
from tests.test_monitoring_rules import RULES

REPO = Path(__file__).resolve().parents[1]
CONTROLLER = "e2e-boston"
#: A job name without "simplivity": the exporter must be recognised by its metrics alone.
JOB = "svt-e2e"
#: The shipped thresholds that the expected alerts below are computed with.
MAX_BACKUP_AGE = 93600
NEAR_LIMIT = 0.9
#: The default federation: every protection status planted (exporter.simulator.spec.ROLES).
SPEC = FederationSpec()

#: An alert as compared: its labels but severity, job and instance, sorted.
Alert = tuple[tuple[str, str], ...]

T = TypeVar("T")

pytestmark = pytest.mark.timeout(120)


def wait_for(
    what: str,
    condition: Callable[[], T | None],
    timeout: float = 20.0,
    explain: Callable[[], object] | None = None,
) -> T:
    """Poll ``condition`` until it returns something other than None/False; fail at the deadline
    with ``explain()`` (or the last result). A failed request (a server still starting) counts
    as not yet."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = condition()
        except requests.RequestException as err:
            result, last = None, err
        else:
            last = result
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            detail = explain() if explain is not None else last
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}: {detail!r}")
        time.sleep(0.1)  # the polling period of this loop, not a wait for an event


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def prometheus_binary() -> str:
    return binary("prometheus")


class Process:
    """A child process whose output goes to a file, stopped for sure by :meth:`stop`."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]

    def check_running(self) -> None:
        if self.popen.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.popen.returncode}:\n{self.output()}")

    def answers(self, url: str) -> bool | None:
        """Whether ``url`` answers 200 (None while not); fails if the process has exited."""
        self.check_running()
        return requests.get(url, timeout=2).ok or None

    def stop(self) -> None:
        try:
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    self.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(timeout=10)
        finally:
            self._out.close()


class Prometheus:
    """The HTTP API of the Prometheus under test."""

    def __init__(self, url: str, process: Process) -> None:
        self.url = url
        self.process = process

    def get(self, path: str, **params: str) -> Any:
        self.process.check_running()
        response = requests.get(self.url + path, params=params, timeout=5)
        body = response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        result: list[dict[str, Any]] = (
            data["result"] if data["resultType"] == "vector" else [{"value": data["result"]}]
        )
        return result

    def query_data(self, expr: str) -> list[dict[str, Any]] | None:
        """The query's result, or None while it is empty."""
        return self.query(expr) or None

    def active_alerts(self) -> set[Alert]:
        """Pending and firing alerts, as sorted label tuples (severity, job, instance left out)."""
        alerts = self.get("/api/v1/alerts")["alerts"]
        return {
            tuple(
                sorted(
                    (k, v)
                    for k, v in alert["labels"].items()
                    if k not in ("severity", "job", "instance")
                )
            )
            for alert in alerts
            if alert["state"] in ("pending", "firing")
        }

    def wait_for_alerts(self, expected: set[Alert]) -> None:
        """Until the active alerts are ``expected``, and still are after two more evaluations."""
        wait_for(
            "the expected alerts",
            lambda: self.active_alerts() == expected or None,
            timeout=60,
            explain=lambda: {
                "missing": alert_names(expected - self.active_alerts()),
                "unexpected": alert_names(self.active_alerts() - expected),
            },
        )
        self.wait_for_fresh_evaluations()
        assert self.active_alerts() == expected

    def evaluations(self) -> dict[str, str]:
        groups = self.get("/api/v1/rules")["groups"]
        return {group["name"]: group["lastEvaluation"] for group in groups}

    def wait_for_fresh_evaluations(self) -> None:
        """Until every rule group has been evaluated twice more."""
        for _ in range(2):
            before = self.evaluations()

            def evaluated(before: dict[str, str] = before) -> bool | None:
                now = self.evaluations()
                return all(now[group] != last for group, last in before.items()) or None

            wait_for("rule evaluations", evaluated)


def rules_with_short_for(tmp_path: Path) -> Path:
    """The shipped rule file with every ``for:`` at 1s: same expressions, faster alerts."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path = tmp_path / "alerts.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    shipped = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    copied = [r["expr"] for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    assert copied == shipped
    return path


def unix(created_at: object) -> float:
    assert isinstance(created_at, str), created_at
    return datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()


def alert(alertname: str, **labels: str) -> Alert:
    return tuple(sorted({"alertname": alertname, "controller": CONTROLLER, **labels}.items()))


def destination(backup: Mapping[str, Any]) -> str:
    """Where a backup is held, as issue 2 defines the ``omnistack_cluster`` label."""
    return str(backup["omnistack_cluster_name"] or backup["external_store_name"])


def expected_backup_alerts(backups: list[dict[str, Any]], now: float) -> set[Alert]:
    """The cluster-level backup alerts the shipped thresholds must raise for these backups,
    computed from the raw backups as issue 2 defines the metrics (independently of the
    exporter's code)."""
    newest_by_cluster: dict[str, float] = {}
    states_by_cluster: dict[tuple[str, str], int] = {}
    for b in backups:
        cluster = destination(b)
        protected = b["state"] == "PROTECTED"
        created = unix(b["created_at"]) if protected else 0.0
        newest_by_cluster[cluster] = max(newest_by_cluster.get(cluster, 0.0), created)
        key = (cluster, b["state"])
        states_by_cluster[key] = states_by_cluster.get(key, 0) + 1
    expected: set[Alert] = set()
    for cluster, newest in newest_by_cluster.items():
        if newest == 0:
            expected.add(alert("SimplivityClusterNoProtectedBackup", omnistack_cluster=cluster))
        elif now - newest > MAX_BACKUP_AGE:
            expected.add(alert("SimplivityClusterBackupTooOld", omnistack_cluster=cluster))
    for (cluster, state), count in states_by_cluster.items():
        if state in ("DEGRADED", "UNKNOWN") and count > 0:
            expected.add(alert("SimplivityBackupsDegraded", omnistack_cluster=cluster, state=state))
    return expected


def expected_protection_alerts(
    simulator: SimulatedController, spec: FederationSpec, now: float
) -> set[Alert]:
    """The alerts of issue 12 for the simulator's federation, from its own data: each live
    VM's status as the simulator judged it when it generated the federation, the overdue
    destinations from its own reading of each policy's schedule (``expected_intervals``) and
    its backups, the hosts and the schedule report it serves. Cross-checked on the way: the VMs
    with an overdue destination are those it judged overdue, and a FAILED backup newer than the
    newest PROTECTED one is found for each VM it judged last_failed."""
    statuses = simulator.expected_statuses
    vms = [vm for vm in simulator.virtual_machines() if vm["state"] == "ALIVE"]
    assert statuses
    assert set(statuses) == {vm["id"] for vm in vms}
    hosts = {host["id"]: host for host in simulator.hosts()}
    # A host names its cluster by id only (HPE's schema); the exporter labels it by name.
    cluster_names = {cluster["id"]: cluster["name"] for cluster in simulator.clusters()}
    # The same spec at the same time plans the same policies (seeded): the simulator's own
    # reading of their schedules.
    policies = {
        policy.id: policy for policy in plan_inventory(spec, int(simulator.generated_at)).policies
    }
    assert {policy["id"] for policy in simulator.policies()} == set(policies)
    newest_at: dict[tuple[str, str], float] = {}  # (VM id, destination) -> newest PROTECTED
    newest_protected: dict[str, float] = {}
    newest_failed: dict[str, float] = {}
    for b in simulator.backups():
        vm_id, created = str(b["virtual_machine_id"]), unix(b["created_at"])
        if b["state"] == "PROTECTED":
            key = (vm_id, destination(b))
            newest_at[key] = max(newest_at.get(key, 0.0), created)
            newest_protected[vm_id] = max(newest_protected.get(vm_id, 0.0), created)
        elif b["state"] == "FAILED":
            newest_failed[vm_id] = max(newest_failed.get(vm_id, 0.0), created)

    expected: set[Alert] = set()
    for vm in vms:
        vm_id = str(vm["id"])
        status = statuses[vm_id]
        ids = {"vm": str(vm["name"]), "vm_id": vm_id}
        host = hosts[vm["host_id"]]
        if status == "not_scheduled" and host["policy_enabled"]:
            expected.add(
                alert(
                    "SimplivityVMNotScheduled",
                    **ids,
                    policy=str(vm["policy_name"]),
                    omnistack_cluster=str(vm["omnistack_cluster_name"]),
                    host=str(host["name"]),
                )
            )
        elif status == "never_backed_up":
            expected.add(alert("SimplivityVMNeverBackedUp", **ids))
        elif status in ("overdue", "last_failed", "app_inconsistent", "ok"):
            late = set()
            for target, interval in expected_intervals(policies[str(vm["policy_id"])]).items():
                where = str(vm["omnistack_cluster_name"]) if target.is_local else target.name
                since = newest_at.get((vm_id, where), unix(vm["created_at"]))
                if now - since > interval * OVERDUE_FACTOR + GRACE_SECONDS:
                    late.add(where)
            assert bool(late) == (status == "overdue"), (vm["name"], status, late)
            expected |= {alert("SimplivityVMBackupOverdue", **ids, destination=d) for d in late}
            failed_last = newest_failed.get(vm_id, 0.0) > newest_protected[vm_id]
            assert failed_last or status != "last_failed", vm["name"]
            if failed_last:  # an overdue VM whose last backup failed raises both (alerts.yml)
                expected.add(alert("SimplivityVMLastBackupFailed", **ids))
            if status == "app_inconsistent":
                aware = str(vm["app_aware_vm_status"])
                expected.add(
                    alert("SimplivityVMAppConsistencyFailing", **ids, app_aware_status=aware)
                )
        for where in simulator.short_recovery_windows.get(vm_id, ()):
            expected.add(alert("SimplivityVMRecoveryWindowShort", **ids, destination=where))
    for host in hosts.values():
        if not host["policy_enabled"]:
            expected.add(
                alert(
                    "SimplivityHostPolicyDisabled",
                    host=str(host["name"]),
                    omnistack_cluster=str(cluster_names[host["omnistack_cluster_id"]]),
                )
            )
    report = simulator.schedule_report()
    for name, value, limit in (
        ("Daily", "daily_backup_rate", "daily_backup_rate_limit"),
        ("Retained", "projected_retained_backups", "retained_backups_limit"),
    ):
        used, most = report[value], report[limit]
        assert isinstance(used, int), report
        assert isinstance(most, int), report
        if used / most > NEAR_LIMIT:
            expected.add(alert(f"SimplivityFederation{name}BackupsNearLimit"))
    return expected


def alert_names(alerts: set[Alert]) -> dict[str, set[str]]:
    """alertname -> the VMs, hosts, clusters or controllers it names, for readable assertions."""
    out: dict[str, set[str]] = {}
    for labels in map(dict, alerts):
        out.setdefault(labels["alertname"], set()).add(subject(labels))
    return out


def subject(labels: Mapping[str, str]) -> str:
    """What an alert is about: its VM, host, cluster or controller."""
    for label in ("vm", "host", "omnistack_cluster", "controller"):
        if label in labels:
            return labels[label]
    raise AssertionError(f"an alert without a subject: {labels}")


def documented_queries() -> list[str]:
    """The example queries of docs/metrics.md ("Example queries"), one per paragraph,
    comments left out."""
    text = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    block = text.split("\n## Example queries\n", 1)[1].split("```promql\n", 1)[1].split("```", 1)[0]
    found: list[str] = []
    for paragraph in block.split("\n\n"):
        lines = [line for line in paragraph.splitlines() if not line.startswith("#")]
        # A paragraph may hold several one-line queries; a query's continuation is indented.
        for line in lines:
            if line.startswith(" ") and found:
                found[-1] += "\n" + line
            elif line.strip():
                found.append(line)
    return found


#: Ten years in seconds: an age past it is a "0 when none" timestamp read as an age.
AGE_LIMIT = 10 * 365 * 86400


def check_documented_queries(prometheus: Prometheus, statuses: Mapping[str, str]) -> None:
    """Every example query of docs/metrics.md parses and runs; none names a VM the exporter calls
    ``new`` or ``ok``; none reads a "0 when none" timestamp as an age; and each returns data
    but those for what this healthy federation lacks: a controller down or stale, and an hour
    of history (this Prometheus is minutes old)."""
    queries = documented_queries()
    assert len(queries) >= 10, queries
    quiet = ("offset 1h", "simplivity_up == 0", "simplivity_poll_last_success")
    for expr in queries:
        rows = prometheus.query(expr)
        assert bool(rows) != any(word in expr for word in quiet), (expr, rows)
        for row in rows:
            labels = row.get("metric", {})
            if "vm_id" in labels:
                assert statuses[labels["vm_id"]] not in ("new", "ok"), (expr, labels)
            if "time() -" in expr:
                assert float(row["value"][1]) < AGE_LIMIT, (expr, row)


def an_unremarkable_backup(simulator: SimulatedController) -> str:
    """The id of a PROTECTED backup of a VM judged ok, with a newer PROTECTED backup of that VM
    at the same destination: the newest of nothing, so leaving it out changes no alert."""
    statuses = simulator.expected_statuses
    by_place: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for b in simulator.backups():
        vm_id = str(b["virtual_machine_id"])
        if b["state"] == "PROTECTED" and statuses.get(vm_id) == "ok":
            place = by_place.setdefault((vm_id, destination(b)), [])
            place.append((unix(b["created_at"]), str(b["id"])))
    for backups in by_place.values():
        if len(backups) > 1:
            return min(backups)[1]
    raise AssertionError("no VM judged ok has two PROTECTED backups at one destination")


def spec_near_its_daily_limit() -> FederationSpec:
    """The default federation, with a daily-backup limit its policies fill to 95 %."""
    report = generate_federation(SPEC, time.time()).schedule_report
    rate = report["daily_backup_rate"]
    assert isinstance(rate, int), report
    assert rate > 0, report
    return dataclasses.replace(SPEC, daily_backup_rate_limit=math.ceil(rate / 0.95))


@pytest.fixture
def spec() -> FederationSpec:
    return spec_near_its_daily_limit()


@pytest.fixture
def simulator(spec: FederationSpec) -> Iterator[SimulatedController]:
    controller = SimulatedController(spec).start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def exporter(tmp_path: Path, simulator: SimulatedController) -> Iterator[tuple[str, Process]]:
    password_file = tmp_path / "password"
    password_file.write_text(simulator.password + "\n", encoding="utf-8")
    config = {
        "poll": {
            "interval_seconds": 1,
            "deadline_seconds": 60,
            "timeout_seconds": 2,
            "stale_after_seconds": 60,
            "max_retries": 0,
            # Every poll reads every backup: the old record made unreadable below is seen at
            # the next poll (an incremental poll would see it at the next full scan: the
            # residual docs/design.md names; tests/test_incremental_daemon.py covers those).
            "full_scan_interval_seconds": 0,
        },
        "controllers": [
            {
                "name": CONTROLLER,
                "url": simulator.url,
                "username": simulator.username,
                "password_file": str(password_file),
            }
        ],
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    address = f"127.0.0.1:{free_port()}"
    process = Process(
        "the exporter",
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config_file),
            "--web.listen-address",
            address,
        ],
        tmp_path / "exporter.log",
    )
    try:
        wait_for(
            "the exporter to be ready",
            lambda: process.answers(f"http://{address}/-/ready"),
        )
        yield address, process
    finally:
        process.stop()


@pytest.fixture
def prometheus(tmp_path: Path, exporter: tuple[str, Process]) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    address, _ = exporter
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_with_short_for(tmp_path))],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [address]}]}],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    listen = f"127.0.0.1:{free_port()}"
    process = Process(
        "prometheus",
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={listen}",
            "--log.level=warn",
        ],
        tmp_path / "prometheus.log",
    )
    try:
        server = Prometheus(f"http://{listen}", process)
        wait_for(
            "Prometheus to be ready",
            lambda: process.answers(server.url + "/-/ready"),
        )
        yield server
    finally:
        process.stop()


def test_exporter_scraped_by_prometheus_raises_the_expected_alerts(
    spec: FederationSpec,
    simulator: SimulatedController,
    exporter: tuple[str, Process],
    prometheus: Prometheus,
) -> None:
    # The target is up, and the exporter has data (not just its health series).
    wait_for(
        "the exporter's target to be up",
        lambda: prometheus.query(f'up{{job="{JOB}"}} == 1') or None,
    )
    for metric in ("simplivity_backups", "simplivity_vm_info", "simplivity_vms"):
        wait_for(
            f"{metric} from the simulated controller",
            partial(prometheus.query_data, f'{metric}{{controller="{CONTROLLER}"}}'),
        )
    # `increase(...[1m])` needs two scrapes.
    wait_for(
        "two scrapes of the poll error counters",
        lambda: prometheus.query("increase(simplivity_poll_errors_total[1m])") or None,
    )

    # Every metric the dashboard and the rules rely on is really exported, and every dashboard
    # query, as Grafana would send it, parses and returns data.
    names = set(prometheus.get("/api/v1/label/__name__/values"))
    assert names >= EXPORTED_METRICS, sorted(EXPORTED_METRICS - names)
    for where, expr in queries(load_dashboard()):
        assert prometheus.query(expr), f"{where}: no data for {expr!r}"

    # The expected alerts are active (pending or firing), and no others.
    expected = expected_backup_alerts(simulator.backups(), time.time())
    expected |= expected_protection_alerts(simulator, spec, time.time())
    named = alert_names(expected)
    assert named["SimplivityBackupsDegraded"]
    # Exactly the VMs the simulator planted, each for its status; the DR-stopped VM for its
    # DR destination only; the host with policy backups suspended; the federation's daily
    # limit (95 %), not its retained one.
    planted = simulator.planted
    hosts = {host["id"]: host for host in simulator.hosts()}
    live = {vm["name"]: vm for vm in simulator.virtual_machines() if vm["state"] == "ALIVE"}
    at = {status: {vm for vm, s in planted.items() if s == status} for status in planted.values()}
    host_of = {vm: hosts[live[vm]["host_id"]] for vm in at["not_scheduled"]}
    suspended = {vm for vm, host in host_of.items() if not host["policy_enabled"]}
    assert suspended
    assert named["SimplivityVMNotScheduled"] == at["not_scheduled"] - suspended
    assert named["SimplivityHostPolicyDisabled"] == {host_of[vm]["name"] for vm in suspended}
    assert named["SimplivityVMNeverBackedUp"] == at["never_backed_up"]
    assert named["SimplivityVMBackupOverdue"] == at["overdue"]
    assert named["SimplivityVMLastBackupFailed"] == at["last_failed"]
    # Issue 20: the VM whose VSS backups fail every night; the one trimmed below half its
    # window (and the one whose older backups are in other states than PROTECTED).
    assert named["SimplivityVMAppConsistencyFailing"] == at["app_inconsistent"] == {VSS_FAILING_VM}
    assert named["SimplivityVMRecoveryWindowShort"] == {TRIMMED_VM, ALL_STATES_VM}
    assert not at["new"] & set().union(*named.values())
    dr = {
        labels["destination"]
        for labels in map(dict, expected)
        if labels["alertname"] == "SimplivityVMBackupOverdue" and labels["vm"] == DR_STOPPED_VM
    }
    assert len(dr) == 1, dr
    assert live[DR_STOPPED_VM]["omnistack_cluster_name"] not in dr, dr
    assert named["SimplivityFederationDailyBackupsNearLimit"] == {CONTROLLER}
    assert "SimplivityFederationRetainedBackupsNearLimit" not in named
    prometheus.wait_for_alerts(expected)
    check_documented_queries(prometheus, simulator.expected_statuses)

    # Their annotations rendered: the templates name the subject, with no template errors.
    for firing in prometheus.get("/api/v1/alerts")["alerts"]:
        labels, annotations = firing["labels"], firing["annotations"]
        assert subject(labels) in annotations["summary"], firing
        assert CONTROLLER in annotations["description"], firing
        for text in annotations.values():
            assert "<no value>" not in text, firing
            assert "error" not in text.lower(), firing
        # The shipped file has no runbook links (tools/monitoring.py adds absolute ones); the
        # description says where to start.
        assert "runbook_url" not in annotations, firing
        assert "First check: " in annotations["description"], firing

    # A record the exporter cannot place (no state): counted, and alerted on; nothing else
    # changes, since it is an older PROTECTED backup of a VM that is ok.
    odd = an_unremarkable_backup(simulator)
    simulator.faults.make_odd("no_state", [odd])
    wait_for(
        "simplivity_unreadable_records == 1",
        lambda: (
            prometheus.query(f'simplivity_unreadable_records{{controller="{CONTROLLER}"}} == 1')
            or None
        ),
    )
    prometheus.wait_for_alerts(expected | {alert("SimplivityUnreadableRecords")})

    # The controller stops answering: the controller-down condition becomes true.
    simulator.stop()
    wait_for(
        "simplivity_up == 0",
        lambda: prometheus.query(f'simplivity_up{{controller="{CONTROLLER}"}} == 0') or None,
    )
    wait_for(
        "SimplivityControllerDown",
        lambda: (
            prometheus.query(
                f'ALERTS{{alertname="SimplivityControllerDown", controller="{CONTROLLER}"}}'
            )
            or None
        ),
    )

    # The exporter itself goes away: SimplivityExporterDown, whatever its job is called.
    address, process = exporter
    process.stop()
    wait_for(
        "SimplivityExporterDown",
        lambda: (
            prometheus.query(
                f'ALERTS{{alertname="SimplivityExporterDown", job="{JOB}", instance="{address}"}}'
            )
            or None
        ),
    )
