"""The inventory's records, read leniently, and every live VM judged against its own policy."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.inventory import parse_schedule_report
from exporter.model import BackupSnapshot, DecodeError, ScheduleReport, label_value
from exporter.protection import PROTECTION_STATUSES
from tests.snapshots import (
    DAY,
    HOUR,
    NOW,
    aggregate,
    host_record,
    judged,
    policy_record,
    read_of,
    rule,
    vm_backups,
    vm_record,
)

NO_BACKUPS = BackupSnapshot((), (), 0)


# -- reading the records -------------------------------------------------------------------------


def test_odd_values_in_a_vm_record_are_read_as_missing() -> None:
    read = read_of(
        [
            vm_record("v1", "NA", "p1", created_at="NA", datastore_name=None, host_id=7),
            vm_record("v2", ["x"], "p1", created_at="2024-02-30T00:00:00Z", policy_name=3),
            vm_record("v3", "bad\ud800name", "p1", omnistack_cluster_name="Zürich"),
        ]
    )
    first, second, third = sorted(read.inventory(None).vms, key=lambda vm: vm.vm_id)
    assert (first.name, first.created_at, first.datastore, first.host_id) == ("NA", None, "", "")
    assert (second.name, second.created_at, second.policy) == ("", None, "")
    # A lone surrogate cannot be carried: replaced, and the hash keeps the name apart.
    assert (third.name, third.cluster) == (label_value("bad\ud800name"), "Zürich")
    assert third.name.startswith("bad\ufffdname~")
    assert third.created_at == 1672531200.0


def test_a_vms_host_and_policy_are_named_from_their_listings() -> None:
    read = read_of(
        [
            vm_record("v1", "a", "p1", host_id="h1"),
            vm_record("v2", "b", "p1", policy_name="Renamed meanwhile", host_id="h-gone"),
            vm_record("v3", "c", "p-gone", host_id="h1"),
        ],
        [policy_record("p1", "Hourly", rule(60))],
        [host_record("h1", "esx-01", "Boston DC")],
    )
    names = [(vm.policy, vm.host) for vm in read.inventory(None).vms]
    assert names == [("Hourly", "esx-01"), ("Renamed meanwhile", "h-gone"), ("", "esx-01")]


@pytest.mark.parametrize(
    ("value", "enabled"),
    [(True, True), (False, False), ("false", False), ("NA", True), (None, True), (0, True)],
)
def test_only_an_explicit_no_disables_policy_backups_on_a_host(value: Any, enabled: bool) -> None:
    (host,) = read_of(hosts=[host_record("h1", "esx-01", "Boston", value)]).inventory(None).hosts
    assert host.policy_enabled is enabled


def test_a_policy_counts_every_rule_and_schedules_the_usable_ones() -> None:
    read = read_of(
        policies=[
            policy_record(
                "p1",
                "Hourly local, nightly to DR",
                rule(60),
                rule(1440, start="22:00", end="22:00", destination="London DR", number=2),
                rule("NA", number=3),
                rule(60, days="Someday", number=4),
            ),
            {"id": "p2", "name": "odd", "rules": "NA"},
            {"id": "p3", "name": "none"},
        ]
    )
    hourly, none, odd = read.inventory(None).policies  # by name
    assert (hourly.rules, dict(hourly.intervals)) == (4, {"<Local>": HOUR, "London DR": DAY})
    assert [problem.split(":")[0] for problem in hourly.problems] == ["rule 3", "rule 4"]
    assert (odd.rules, dict(odd.intervals), odd.problems) == (
        1,
        {},
        ("rules is a str, not a list",),
    )
    assert (none.rules, dict(none.intervals)) == (0, {})


def test_policies_sharing_a_name_and_hosts_sharing_a_cluster_and_name_make_one_series() -> None:
    inventory = read_of(
        policies=[policy_record("p2", "Daily", rule(1440)), policy_record("p1", "Daily")],
        hosts=[
            host_record("h2", "esx", "A", False),
            host_record("h1", "esx", "A"),
            host_record("h3", "esx", "B"),
        ],
    ).inventory(None)
    assert [(p.policy_id, p.name) for p in inventory.policies] == [("p1", "Daily")]
    assert [(h.host_id, h.cluster) for h in inventory.hosts] == [("h1", "A"), ("h3", "B")]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def records(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"id": st.text(min_size=1, max_size=6)},
        optional={key: st.one_of(json_values, st.just("NA")) for key in keys},
    )


rule_records = st.fixed_dictionaries(
    {},
    optional={
        "frequency": st.one_of(st.integers(-5, 3000), json_values, st.just("NA")),
        "days": st.sampled_from(["All", "Mon,Fri", "1,15", "last", "NA", "", "Funday"]),
        "start_time": st.sampled_from(["00:00", "08:00", "23:59", "24:00", "NA", "7"]),
        "end_time": st.sampled_from(["00:00", "18:00", "06:00", "NA"]),
        "destination_name": st.sampled_from(["<Local>", "<local>", "DR", "", "NA"]),
        "external_store_name": st.sampled_from(["", "StoreOnce", "NA"]),
    },
)


@settings(max_examples=150, deadline=None)
@given(
    vms=st.lists(
        records(["name", "created_at", "policy_id", "policy_name", "omnistack_cluster_name",
                 "datastore_name", "host_id"]),
        max_size=6,
    ),
    policies=st.lists(
        records(["name"]).flatmap(
            lambda r: st.lists(rule_records, max_size=3).map(lambda rules: {**r, "rules": rules})
        )
        | records(["name", "rules"]),
        max_size=4,
    ),
    hosts=st.lists(records(["name", "omnistack_cluster_name", "policy_enabled"]), max_size=4),
)  # fmt: skip
def test_any_records_are_read_and_every_live_vm_gets_one_status(
    vms: list[dict[str, Any]], policies: list[dict[str, Any]], hosts: list[dict[str, Any]]
) -> None:
    vms = list({vm["id"]: vm for vm in vms}.values())  # a scan hands each id over once
    read = read_of(vms, policies, hosts)
    inventory = read.inventory(None)
    snapshot = read.judge(inventory, NO_BACKUPS, now=NOW, overdue_factor=1.5, grace_seconds=HOUR)
    assert len(snapshot.protection) == len(vms)
    assert all(p.status in PROTECTION_STATUSES for p in snapshot.protection)
    assert sum(sum(by.values()) for by in snapshot.vms_by_status.values()) == len(vms)
    assert all(list(by) == list(PROTECTION_STATUSES) for by in snapshot.vms_by_status.values())


# -- judging -------------------------------------------------------------------------------------

POLICIES = [
    policy_record("hourly", "Hourly", rule(60)),
    policy_record("dr", "Hourly + daily to DR", rule(60), rule(1440, destination="DR", number=2)),
    policy_record("none", "No rules"),
]
HOSTS = [
    host_record("h1", "esx-01", "Boston"),
    host_record("h2", "esx-02", "Boston", enabled=False),
    host_record("h3", "dr-01", "DR"),
]


def backup(vm: str, ago: float, state: str = "PROTECTED", where: str = "Boston") -> dict[str, Any]:
    backup.number += 1  # type: ignore[attr-defined]
    created = NOW - ago
    return {
        "id": f"b{backup.number:05d}",  # type: ignore[attr-defined]
        "state": state,
        "created_at": f"{_utc(created)}",
        "size": 1,
        "omnistack_cluster_name": where,
        "virtual_machine_id": vm,
    }


backup.number = 0  # type: ignore[attr-defined]


def _utc(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def vm(
    vm_id: str, policy: str = "hourly", host: str = "h1", created_ago: float = 30 * DAY
) -> dict[str, Any]:
    return vm_record(
        vm_id, vm_id, policy, host_id=host, omnistack_cluster_name="Boston",
        created_at=_utc(NOW - created_ago),
    )  # fmt: skip


CASES = {
    # vm id: (its record, its backups, the status a poll finds)
    "ok": (vm("ok"), [backup("ok", 2 * HOUR)], "ok"),
    "no-rules": (vm("no-rules", "none"), [backup("no-rules", HOUR)], "not_scheduled"),
    "suspended": (vm("suspended", host="h2"), [backup("suspended", 5 * DAY)], "not_scheduled"),
    "new": (vm("new", created_ago=600), [], "new"),
    "never": (vm("never"), [backup("never", HOUR, "FAILED")], "never_backed_up"),
    "stale": (vm("stale"), [backup("stale", 3 * HOUR)], "overdue"),
    "dr-stopped": (
        vm("dr-stopped", "dr"),
        [backup("dr-stopped", HOUR), backup("dr-stopped", 4 * DAY, where="DR")],
        "overdue",
    ),
    "dr-fresh": (
        vm("dr-fresh", "dr"),
        [backup("dr-fresh", HOUR), backup("dr-fresh", DAY, where="DR")],
        "ok",
    ),
    "failed": (
        vm("failed"),
        [backup("failed", 2 * HOUR), backup("failed", 600, "FAILED")],
        "last_failed",
    ),
    "saving": (
        vm("saving"),
        [
            backup("saving", HOUR, "FAILED"),
            backup("saving", 2 * HOUR),
            backup("saving", 60, "SAVING"),
        ],
        "ok",
    ),
}  # fmt: skip


def judge_cases() -> Any:
    backups = aggregate(b for _, held, _ in CASES.values() for b in held)
    # A backup of a VM that is no longer alive: counted, judged nowhere.
    backups = BackupSnapshot(
        backups.clusters,
        (*backups.vms, vm_backups("removed", {"Boston": NOW}, None, "PROTECTED", NOW, "Boston")),
        backups.backups_seen,
    )
    vms = [record for record, _, _ in CASES.values()]
    return judged(backups, now=NOW, vms=vms, policies=POLICIES, hosts=HOSTS)


@pytest.mark.parametrize("vm_id", sorted(CASES))
def test_each_live_vm_gets_the_status_of_its_case(vm_id: str) -> None:
    snapshot = judge_cases()
    found = {p.vm.vm_id: p.status for p in snapshot.protection}
    assert found[vm_id] == CASES[vm_id][2]
    assert "removed" not in found


def test_the_judgement_carries_what_the_metrics_and_the_landing_page_show() -> None:
    snapshot = judge_cases()
    by_id = {p.vm.vm_id: p for p in snapshot.protection}
    dr = by_id["dr-stopped"]
    assert (dr.destination, dr.expected_interval) == ("DR", DAY)
    assert dr.newest_protected == NOW - 4 * DAY
    assert dict(dr.intervals) == {"Boston": HOUR, "DR": DAY}
    assert dr.newest_protected_at("Boston") == NOW - HOUR
    assert dr.newest_protected_anywhere == NOW - HOUR
    assert dr.scheduled
    assert not by_id["suspended"].scheduled
    assert not by_id["no-rules"].scheduled
    assert by_id["no-rules"].intervals == {}
    assert by_id["failed"].newest_failed == NOW - 600
    assert by_id["new"].backups is None
    assert math.isclose(by_id["new"].vm.created_at or 0, NOW - 600)


def test_counts_by_cluster_have_every_status_and_host_only_clusters() -> None:
    snapshot = judge_cases()
    assert list(snapshot.vms_by_status) == ["Boston", "DR"]
    assert snapshot.vms_by_status["DR"] == dict.fromkeys(PROTECTION_STATUSES, 0)
    boston = snapshot.vms_by_status["Boston"]
    assert list(boston) == list(PROTECTION_STATUSES)
    expected = {status: 0 for status in PROTECTION_STATUSES}
    for _, _, status in CASES.values():
        expected[status] += 1
    assert boston == expected
    assert snapshot.policy_vms == {"Hourly": 7, "Hourly + daily to DR": 2, "No rules": 1}


def test_at_risk_vms_come_worst_first() -> None:
    snapshot = judge_cases()
    order = [(p.status, p.vm.vm_id) for p in snapshot.at_risk]
    assert order == [
        ("never_backed_up", "never"),
        ("overdue", "dr-stopped"),  # 4 days late on a daily copy: further past its threshold
        ("overdue", "stale"),
        ("not_scheduled", "suspended"),  # its newest backup is older than no-rules' one
        ("not_scheduled", "no-rules"),
        ("last_failed", "failed"),
    ]


def test_rules_to_local_and_to_the_own_cluster_by_name_are_one_schedule() -> None:
    # 08:00-18:00 hourly to <Local>, 19:00-07:00 hourly to Boston by name: an hourly schedule
    # at Boston, not two schedules each with a 14-hour night.
    policy = policy_record(
        "p", "split",
        rule(60, start="08:00", end="18:00"),
        rule(60, start="19:00", end="07:00", destination="Boston", number=2),
    )  # fmt: skip
    snapshot = judged(NO_BACKUPS, now=NOW, vms=[vm("a", "p")], policies=[policy], hosts=HOSTS)
    assert dict(snapshot.protection[0].intervals) == {"Boston": HOUR}


def test_the_schedule_report_reads_numbers_and_leaves_odd_ones_out() -> None:
    body = (
        b'{"daily_backup_rate": 9120, "daily_backup_rate_limit": 24000.5, '
        b'"backup_rate_level": 38, "projected_retained_backups": "NA", '
        b'"retained_backups_limit": true}'
    )
    assert parse_schedule_report(body) == ScheduleReport(9120.0, 24000.5, None, None)
    assert parse_schedule_report(b"{}") == ScheduleReport(None, None, None, None)


@pytest.mark.parametrize("body", [b"<html>502</html>", b"[1, 2]", b'"NA"'])
def test_a_schedule_report_that_is_no_object_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="policy_schedule_report"):
        parse_schedule_report(body)
