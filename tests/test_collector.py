"""What users see on /metrics for a fixed federation: a golden file, promtool, single values."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter import textformat
from exporter.collector import (
    BackupCollector,
    ExporterState,
    controller_families,
    exporter_families,
    health_families,
    snapshot_families,
)
from exporter.exposition import Exposition
from exporter.model import (
    FAMILY_NAMES,
    REASONS,
    STATES,
    BackupSnapshot,
    ClusterSummary,
    ControllerStatus,
    ControllerVersions,
    HeldBackups,
    ScheduleReport,
    VMBackups,
)
from exporter.protection import PROTECTION_STATUSES
from tests.snapshots import host_record, judged, policy_record, polled, rendered, rule, vm_record

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"
NOW = 1_709_500_000.0  # 2024-03-03T21:06:40Z
DAY = 86400
BOSTON, ZURICH, DR, STORE = "Boston DC", 'Zürich "Ost"\\2', "London DR", "StoreOnce-Cloud"


def counts(**values: int) -> dict[str, int]:
    return {**dict.fromkeys(STATES, 0), **values}


def held(
    vm_id: str,
    newest: dict[str, float],
    failed: float | None = None,
    app: dict[str, float | None] | None = None,
) -> VMBackups:
    """A VM's backups: the newest PROTECTED per destination, the newest FAILED; three restore
    points a day apart at each destination, the newest application-consistent unless ``app``
    says otherwise."""
    times = [*newest.values(), *([failed] if failed is not None else [])]
    last = max(times)
    state = "FAILED" if last == failed else "PROTECTED"
    where = next((d for d, t in newest.items() if t == last), BOSTON)
    app = app or {}
    places = {
        destination: HeldBackups(
            backups=4 if destination == where and failed is not None else 3,
            size=3_000_000,
            restore_points=3,
            newest_protected=time,
            oldest_protected=time - 2 * DAY,
            newest_app_consistent=app.get(destination, time),
            consistency_known=True,
        )
        for destination, time in newest.items()
    }
    return VMBackups(vm_id, failed, state, last, where, places)


BACKUPS = BackupSnapshot(
    clusters=(
        ClusterSummary(
            name=BOSTON,
            counts=counts(PROTECTED=40, FAILED=2, SAVING=1),
            sizes=counts(PROTECTED=4_000_000_000, FAILED=0, SAVING=123_456),
            newest_protected=NOW - 3600,
            never_expiring=2,
            never_expiring_size=2_000_000,
            without_vm=1,
            without_vm_size=500,
        ),
        ClusterSummary(
            name=ZURICH,
            counts={**counts(FAILED=3), "OTHER": 1},
            sizes={**counts(FAILED=300), "OTHER": 5},
            newest_protected=None,
        ),
    ),
    vms=(
        held("4b1c-vm-a", {BOSTON: NOW - 7200, DR: NOW - 90_000}, failed=NOW - 18_000),  # ok
        held("77aa-vm-b", {ZURICH: NOW - 180_000}),  # overdue (daily)
        held("90ff-vm-c", {}, failed=NOW - 600),  # never backed up
        held("b2-susp", {BOSTON: NOW - 3 * DAY}),  # host suspended: not scheduled
        held("d4-flaky", {BOSTON: NOW - 3000}, failed=NOW - 100),  # last failed
        held("e5-store", {STORE: NOW - 2 * DAY}),  # weekly to the store: ok
        held("f6-vss", {BOSTON: NOW - 7200}, app={BOSTON: NOW - 3 * DAY}),  # VSS failing
        held("ff-removed", {BOSTON: NOW - 9 * DAY}),  # not in the inventory: no series, orphaned
    ),
    backups_seen=46,
)
POLICIES = [
    policy_record("p-hourly-dr", "Hourly local + daily to London DR",
                  rule(60), rule(1440, start="22:00", end="22:00", destination=DR, number=2)),
    policy_record("p-daily", "Daily local", rule(1440)),
    policy_record("p-hourly", "Hourly local", rule(60)),
    policy_record("p-none", "BOS-DS-02 default (no rules)"),
    policy_record("p-store", "Weekly to StoreOnce",
                  rule(1440, days="Sun", start="02:00", end="03:00", store=STORE),
                  rule(frequency="NA", number=2)),
    policy_record("p-vss", "Daily VSS", {**rule(1440), "application_consistent": True,
                                         "consistency_type": "VSS", "max_backups": 7}),
]  # fmt: skip
VMS = [
    vm_record("4b1c-vm-a", "db01", "p-hourly-dr", policy_name="Hourly local + daily to London DR"),
    vm_record("77aa-vm-b", "db01", "p-daily", omnistack_cluster_name=ZURICH, host_id="h-zrh-1"),
    vm_record("90ff-vm-c", "failing\nvm", "p-hourly"),
    vm_record("a1-new", "new-vm", "p-hourly", created_at="2024-03-03T20:56:40Z"),
    vm_record("b2-susp", "suspended-vm", "p-hourly", host_id="h-bos-2"),
    vm_record("c3-def", "default-policy-vm", "p-none", datastore_name="BOS-DS-02"),
    vm_record("d4-flaky", "flaky-vm", "p-hourly", created_at="NA"),
    vm_record("e5-store", "store-vm", "p-store", host_id="h-unlisted"),
    vm_record("f6-vss", "sql-vm", "p-vss", app_aware_vm_status="INVALID_CREDS"),
]
HOSTS = [
    host_record("h-bos-1", "BOS-ESX-01", BOSTON),
    host_record("h-bos-2", "BOS-ESX-02", BOSTON, enabled=False),
    host_record("h-zrh-1", "ZRH-ESX-01", ZURICH, enabled="NA"),
]
REPORT = ScheduleReport(9120, 24000, 151_000, 500_000)
SNAPSHOT = judged(BACKUPS, now=NOW - 60, vms=VMS, policies=POLICIES, hosts=HOSTS, report=REPORT)
STATE = ExporterState(interval_seconds=300, stale_after_seconds=1800)


def boston(**changes: object) -> ControllerStatus:
    status = polled(
        "boston",
        SNAPSHOT,
        NOW - 60,
        polls=3,
        last_duration=2.5,
        errors={**dict.fromkeys(REASONS, 0), "timeout": 2},
        concurrency=2,
        page_size=1500,
        unreadable_records=3,
        versions=ControllerVersions("1.25", "5.3.1.284"),
    )
    return replace(status, **changes)  # type: ignore[arg-type]


def render(statuses: list[ControllerStatus], state: ExporterState = STATE) -> str:
    backups = BackupCollector(lambda: statuses, lambda: state, clock=lambda: NOW)
    registry = CollectorRegistry(auto_describe=False)
    return rendered(Exposition(registry, lambda: 0, backups=backups, clock=lambda: NOW)).decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


def test_exposition_matches_the_golden_file() -> None:
    text = render([boston(), ControllerStatus(name="chicago", url="https://ovc.chicago")])
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_the_writer_takes_on_every_family_the_exporter_builds() -> None:
    # Its fast path, not prometheus_client's: a family handed over would cost the poll again.
    status = boston()
    assert status.snapshot is not None
    families = [
        *snapshot_families("boston", status.snapshot, STATE),
        *controller_families(STATE),
        *health_families([status]),
        *exporter_families(STATE),
    ]
    assert len(families) > 40
    for family in families:
        assert textformat._write_family(family, [], {}, {}), family.name


def test_promtool_accepts_the_exposition(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run ./dev setup (Debian package prometheus)"
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=GOLDEN.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_single_values_through_the_parsed_exposition() -> None:
    text = render([boston()])
    cluster = {"controller": "boston", "omnistack_cluster": "Boston DC"}
    assert value(text, "simplivity_backups", **cluster, state="PROTECTED") == 40
    assert value(text, "simplivity_backups", **cluster, state="DEGRADED") == 0
    assert value(text, "simplivity_backup_size_bytes", **cluster, state="PROTECTED") == 4e9
    assert value(text, "simplivity_backup_newest_age_seconds", **cluster) == 3600
    assert value(text, "simplivity_backup_newest_timestamp_seconds", **cluster) == NOW - 3600
    zurich = {"controller": "boston", "omnistack_cluster": 'Zürich "Ost"\\2'}
    assert value(text, "simplivity_backups", **zurich, state="OTHER") == 1
    assert value(text, "simplivity_backup_newest_timestamp_seconds", **zurich) == 0
    assert math.isinf(value(text, "simplivity_backup_newest_age_seconds", **zurich))
    vm = {"controller": "boston", "vm": "failing\nvm", "vm_id": "90ff-vm-c"}
    assert value(text, "simplivity_vm_backup_newest_timestamp_seconds", **vm) == 0
    assert math.isinf(value(text, "simplivity_vm_backup_newest_age_seconds", **vm))
    assert value(text, "simplivity_poll_errors_total", controller="boston", reason="timeout") == 2
    assert value(text, "simplivity_up", controller="boston") == 1
    assert value(text, "simplivity_poll_concurrency", controller="boston") == 2
    assert value(text, "simplivity_poll_page_size", controller="boston") == 1500
    assert value(text, "simplivity_unreadable_records", controller="boston") == 3


def test_ages_are_computed_at_scrape_time_not_poll_time() -> None:
    statuses = [boston()]
    now = [NOW]
    backups = BackupCollector(lambda: statuses, lambda: STATE, clock=lambda: now[0])
    registry = CollectorRegistry(auto_describe=False)
    exposition = Exposition(registry, lambda: 0, backups=backups, clock=lambda: now[0])
    cluster = {"controller": "boston", "omnistack_cluster": "Boston DC"}
    first = value(rendered(exposition).decode(), "simplivity_backup_newest_age_seconds", **cluster)
    now[0] += 120
    later = value(rendered(exposition).decode(), "simplivity_backup_newest_age_seconds", **cluster)
    assert later - first == 120


def test_no_backup_series_before_the_first_success_but_health_series_from_the_start() -> None:
    text = render([ControllerStatus(name="chicago", url="https://ovc.chicago")])
    names = {name for name, _ in samples(text)}
    assert "simplivity_backups" not in names
    assert "simplivity_vm_backup_newest_age_seconds" not in names
    assert value(text, "simplivity_up", controller="chicago") == 0
    assert value(text, "simplivity_poll_last_success_timestamp_seconds", controller="chicago") == 0
    for reason in REASONS:
        assert value(text, "simplivity_poll_errors_total", controller="chicago", reason=reason) == 0


def test_stale_data_is_dropped_but_health_stays() -> None:
    fresh = render([boston(last_success=NOW - 1800)])
    stale = render([boston(last_success=NOW - 1801, up=False)])
    assert value(fresh, "simplivity_backups", controller="boston",
                 omnistack_cluster="Boston DC", state="FAILED") == 2  # fmt: skip
    assert not any(name == "simplivity_backups" for name, _ in samples(stale))
    for name in ("simplivity_vm_info", "simplivity_vms", "simplivity_policy_rules",
                 "simplivity_federation_daily_backups"):  # fmt: skip
        assert matching(fresh, name)
        assert not matching(stale, name)
    assert value(stale, "simplivity_up", controller="boston") == 0


def test_per_vm_series_can_be_switched_off() -> None:
    text = render([boston()], replace(STATE, per_vm=False))
    names = {name for name, _ in samples(text)}
    assert not {name for name in names if name.startswith("simplivity_vm_")}
    assert "simplivity_backups" in names
    # Not per VM: the counts by status (every status, per cluster), policies, hosts and limits.
    protection = {
        (labels["omnistack_cluster"], labels["protection"]): value
        for labels, value in matching(text, "simplivity_vms")
    }
    assert len(protection) == 2 * len(PROTECTION_STATUSES)
    assert protection[BOSTON, "last_failed"] == 1
    assert protection[ZURICH, "overdue"] == 1
    assert protection[ZURICH, "ok"] == 0
    assert value(text, "simplivity_policy_vms", controller="boston", policy="Hourly local") == 4
    assert value(text, "simplivity_policy_rules", controller="boston",
                 policy="Weekly to StoreOnce") == 2  # fmt: skip
    assert value(text, "simplivity_host_policy_enabled", controller="boston", host="BOS-ESX-02",
                 omnistack_cluster=BOSTON) == 0  # fmt: skip
    assert value(text, "simplivity_federation_daily_backups_limit", controller="boston") == 24000


def test_metrics_exclude_drops_exactly_the_named_families() -> None:
    excluded = frozenset(
        {
            "simplivity_vm_destination_restore_points",
            "simplivity_backups_orphaned",
            "simplivity_vm_info",
            "simplivity_poll_errors_total",
            "simplivity_exporter_build_info",
        }
    )
    for state in (STATE, replace(STATE, once=True)):
        whole = samples(render([boston()], state))
        kept = samples(render([boston()], replace(state, exclude=excluded)))
        dropped = {key for key in whole if key[0] in excluded}  # a sample is named as its family
        assert {name for name, _ in dropped} == excluded - ({"simplivity_exporter_build_info"}
                                                            if state.once else set())  # fmt: skip
        # Everything else, the verdicts included, is exactly as without the setting.
        assert kept == {key: v for key, v in whole.items() if key not in dropped}


def test_family_names_are_exactly_the_families_written() -> None:
    """``metrics.exclude`` is checked against :data:`FAMILY_NAMES`: it must name every family
    /metrics can show (each with its HELP and TYPE even without series), and no other."""
    text = render([boston()])
    written = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    simplivity = {name for name in written if name.startswith("simplivity_")}
    assert simplivity == FAMILY_NAMES


def matching(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(labels), v) for (n, labels), v in samples(text).items() if n == name]


def test_each_vm_shows_its_policy_destinations_and_failures() -> None:
    text = render([boston()])
    vm = {"controller": "boston", "vm": "db01", "vm_id": "4b1c-vm-a"}
    intervals = {
        labels["destination"]: seconds
        for labels, seconds in matching(text, "simplivity_vm_backup_expected_interval_seconds")
        if labels["vm_id"] == "4b1c-vm-a"
    }
    assert intervals == {BOSTON: 3600, DR: 86400}
    newest = "simplivity_vm_destination_backup_newest_timestamp_seconds"
    assert value(text, newest, **vm, destination=DR) == NOW - 90_000
    assert value(text, "simplivity_vm_backup_newest_failed_timestamp_seconds", **vm) == NOW - 18_000
    assert value(text, "simplivity_vm_policy_scheduled", **vm) == 1
    new_vm = {"controller": "boston", "vm": "new-vm", "vm_id": "a1-new"}
    assert value(text, newest, **new_vm, destination=BOSTON) == 0
    assert math.isinf(value(text, "simplivity_vm_backup_newest_age_seconds", **new_vm))
    # No rules: scheduled 0, and no interval or destination series at all.
    default = {"controller": "boston", "vm": "default-policy-vm", "vm_id": "c3-def"}
    assert value(text, "simplivity_vm_policy_scheduled", **default) == 0
    assert "c3-def" not in vm_ids(text, newest)
    # created_at "NA": no created series for it.
    assert "d4-flaky" not in vm_ids(text, "simplivity_vm_created_timestamp_seconds")
    # Not in the inventory (removed): its backups count, it has no series.
    assert "ff-removed" not in vm_ids(text, "simplivity_vm_info")


def vm_ids(text: str, name: str) -> set[str]:
    return {labels["vm_id"] for labels, _ in matching(text, name)}


def test_without_a_schedule_report_the_federation_series_are_absent() -> None:
    without = replace(SNAPSHOT, inventory=replace(SNAPSHOT.inventory, schedule=None))
    text = render([boston(snapshot=without)])
    assert not [n for n, _ in samples(text) if n.startswith("simplivity_federation_")]
    assert "# TYPE simplivity_federation_daily_backups gauge" in text
    assert matching(text, "simplivity_vms")


def test_a_vanished_vm_vanishes_from_the_next_scrape() -> None:
    fewer = replace(SNAPSHOT, protection=SNAPSHOT.protection[:1])
    text = render([boston(snapshot=fewer)])
    vm_ids = {
        labels_dict["vm_id"]
        for (name, labels), _ in samples(text).items()
        if name == "simplivity_vm_backup_newest_age_seconds"
        for labels_dict in [dict(labels)]
    }
    assert vm_ids == {"4b1c-vm-a"}


@pytest.mark.parametrize("gzipped", [False, True])
def test_exposition_is_rendered_once_per_change_and_second(gzipped: bool) -> None:
    calls = []

    def statuses() -> list[ControllerStatus]:
        calls.append(1)
        return [boston()]

    backups = BackupCollector(statuses, lambda: STATE, clock=lambda: NOW)
    generation = [1]
    exposition = Exposition(
        CollectorRegistry(auto_describe=False),
        lambda: generation[0],
        backups=backups,
        clock=lambda: NOW,
    )
    first = exposition.render(gzipped=gzipped)
    assert exposition.render(gzipped=gzipped) == first
    assert len(calls) == 1
    generation[0] += 1
    exposition.render(gzipped=gzipped)
    assert len(calls) == 2


def test_once_leaves_out_the_ages() -> None:
    """``--once`` output is read later (a textfile), so no age family: its value would be
    frozen at the run under a help text that says "at scrape time". The timestamps stay."""
    once = render([boston()], replace(STATE, once=True))
    names = {family.name for family in text_string_to_metric_families(once)}
    assert not {name for name in names if name.endswith("_age_seconds")}
    assert {
        "simplivity_backup_newest_timestamp_seconds",
        "simplivity_vm_backup_newest_timestamp_seconds",
        "simplivity_vm_protection_status",
    } <= names
    served = {family.name for family in text_string_to_metric_families(render([boston()]))}
    assert {name for name in served if name.endswith("_age_seconds")} == {
        "simplivity_backup_newest_age_seconds",
        "simplivity_vm_backup_newest_age_seconds",
    }
