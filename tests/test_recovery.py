"""Application consistency, recovery depth and backups nobody owns: records in, judgements out.

The consistency cases go the whole way a poll goes (policy and VM records read by
:class:`~exporter.inventory.InventoryRead`, backup records counted by an
:class:`~exporter.backups.Aggregator`, then judged), with no server.
"""

from __future__ import annotations

import doctest
from dataclasses import replace
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from exporter import recovery
from exporter.backups import Aggregator
from exporter.inventory import InventoryRead
from exporter.model import ControllerSnapshot
from exporter.recovery import (
    orphaned,
    recovery_windows,
    rule_window_minutes,
    shortest_gap_minutes,
)
from exporter.schedule import LOCAL, Days, Rule, Schedule, interval_seconds, parse_rule
from tests.snapshots import DAY, HOUR, NOW, aggregate

FACTOR, GRACE = 1.5, 3600.0
#: The real sample's rule shape (tbeha-2018-policy-simple.json): daily, VSS, kept 7 days.
DAILY_VSS = {
    "frequency": 1440,
    "retention": 10080,
    "days": "All",
    "number": 0,
    "destination_id": "<local>",
    "destination_name": "<local>",
    "start_time": "00:00",
    "end_time": "00:00",
    "application_consistent": True,
    "consistency_type": "VSS",
    "max_backups": 7,
}
DAILY_CRASH = {**DAILY_VSS, "application_consistent": False, "consistency_type": "NONE"}


def test_the_docstring_examples_hold() -> None:
    results = doctest.testmod(recovery)
    assert results.attempted >= 5
    assert results.failed == 0


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def backup(
    ago: float,
    consistency: str | None,
    where: str = "Boston",
    state: str = "PROTECTED",
    vm: str = "v1",
    expiration: str = "2030-01-01T00:00:00Z",
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": f"b-{where}-{ago}-{consistency}-{state}-{vm}",
        "state": state,
        "created_at": _utc(NOW - ago),
        "size": 100,
        "omnistack_cluster_name": where,
        "virtual_machine_id": vm,
        "expiration_time": expiration,
    }
    if consistency is not None:
        record["consistency_type"] = consistency
    return record


def judged(
    rules: list[dict[str, Any]],
    backups: list[dict[str, Any]],
    *,
    created_ago: float = 30 * DAY,
    vms: tuple[str, ...] = ("v1",),
) -> ControllerSnapshot:
    read = InventoryRead()
    for vm_id in vms:
        read.add_vm(
            {
                "id": vm_id,
                "name": f"db-{vm_id}",
                "policy_id": "p1",
                "created_at": _utc(NOW - created_ago),
                "omnistack_cluster_name": "Boston",
                "host_id": "h1",
                "app_aware_vm_status": "INVALID_CREDS",
            }
        )
    read.add_policy({"id": "p1", "name": "Databases", "rules": rules})
    tally = Aggregator()
    for record in backups:
        tally.add(record)
    return read.judge(
        read.inventory(None),
        tally.snapshot(),
        now=NOW,
        overdue_factor=FACTOR,
        grace_seconds=GRACE,
    )


def status(rules: list[dict[str, Any]], backups: list[dict[str, Any]], **kw: Any) -> str:
    return judged(rules, backups, **kw).protection[0].status


def nightly(
    consistency: str | None, where: str = "Boston", nights: int = 3
) -> list[dict[str, Any]]:
    """A backup every night for ``nights`` nights, the newest 2 hours ago."""
    return [backup(2 * HOUR + n * DAY, consistency, where) for n in range(nights)]


#: Within the daily threshold (1 day x 1.5 + 1 h) at Boston, and far past it.
RECENT, STALE = 2 * HOUR, 3 * DAY
TO_DR = {**DAILY_VSS, "destination_name": "DR", "destination_id": "c-dr", "number": 1}
TO_DR_CRASH = {**DAILY_CRASH, "destination_name": "DR", "destination_id": "c-dr", "number": 1}


@pytest.mark.parametrize(
    ("consistency", "expected"),
    [
        ("VSS", "ok"),
        ("DEFAULT", "ok"),
        ("FAILEDVSS", "app_inconsistent"),
        ("NONE", "app_inconsistent"),
        ("NOT_APPLICABLE", "app_inconsistent"),
        ("NA", "ok"),  # the controller does not say: not judged on consistency
        (None, "ok"),  # REST API before 1.3: no such field
        ("", "ok"),  # said as nothing: not judged either
        ("QUIESCED", "app_inconsistent"),  # a value HPE does not document: said, not VSS
    ],
)
def test_each_consistency_type_against_a_rule_that_asks(
    consistency: str | None, expected: str
) -> None:
    assert status([DAILY_VSS], nightly(consistency)) == expected


@pytest.mark.parametrize("consistency", ["VSS", "FAILEDVSS", "NONE", "NOT_APPLICABLE", None])
def test_a_rule_that_does_not_ask_is_never_judged_on_consistency(consistency: str | None) -> None:
    assert status([DAILY_CRASH], nightly(consistency)) == "ok"


@pytest.mark.parametrize(
    ("rules", "backups", "expected"),
    [
        pytest.param(
            [DAILY_VSS, TO_DR],
            nightly("VSS") + nightly("VSS", "DR"),
            "ok",
            id="VSS at both destinations",
        ),
        pytest.param(
            [DAILY_VSS, TO_DR],
            nightly("VSS") + nightly("FAILEDVSS", "DR"),
            "app_inconsistent",
            id="VSS fails at DR only",
        ),
        pytest.param(
            [DAILY_VSS, TO_DR_CRASH],
            nightly("VSS") + nightly("NONE", "DR"),
            "ok",
            id="DR does not ask",
        ),
        pytest.param(
            [DAILY_CRASH, TO_DR],
            nightly("FAILEDVSS") + nightly("VSS", "DR"),
            "ok",
            id="the local rule does not ask, DR's is met",
        ),
        pytest.param(
            [DAILY_VSS],
            [*nightly("FAILEDVSS"), backup(STALE - DAY, "VSS")],
            "app_inconsistent",
            id="the last good VSS backup two days old",
        ),
        pytest.param(
            [DAILY_VSS],
            [*nightly("FAILEDVSS", nights=1), backup(DAY, "VSS")],
            "ok",
            id="one failed VSS night is within the threshold",
        ),
        pytest.param(
            [DAILY_VSS],
            [backup(RECENT, "FAILEDVSS"), backup(RECENT + HOUR, "VSS", state="FAILED")],
            "app_inconsistent",
            id="a FAILED backup with consistency VSS does not count",
        ),
        pytest.param(
            [DAILY_VSS],
            [backup(STALE, "VSS")],
            "overdue",
            id="overdue comes first",
        ),
        pytest.param(
            [DAILY_VSS],
            [backup(RECENT + HOUR, "FAILEDVSS"), backup(RECENT, "VSS", state="FAILED")],
            "last_failed",
            id="last_failed comes first",
        ),
        pytest.param(
            [DAILY_VSS, {**DAILY_CRASH, "frequency": 60, "number": 1}],
            [*nightly("FAILEDVSS"), backup(HOUR, "NONE")],
            "app_inconsistent",
            id="hourly crash-consistent backups keep coming",
        ),
    ],
)
def test_consistency_at_several_destinations(
    rules: list[dict[str, Any]], backups: list[dict[str, Any]], expected: str
) -> None:
    assert status(rules, backups) == expected


def test_a_vm_without_any_app_consistent_backup_counts_from_its_creation() -> None:
    rules = [DAILY_VSS]
    assert status(rules, [backup(RECENT, "FAILEDVSS")], created_ago=DAY) == "ok"
    assert status(rules, [backup(RECENT, "FAILEDVSS")], created_ago=2 * DAY) == "app_inconsistent"


def test_the_verdict_names_the_destination_and_what_it_asks() -> None:
    snapshot = judged([DAILY_VSS, TO_DR], nightly("VSS") + nightly("FAILEDVSS", "DR"))
    (vm,) = snapshot.protection
    assert (vm.status, vm.destination, vm.expected_interval) == ("app_inconsistent", "DR", DAY)
    assert vm.newest_protected is None  # no application-consistent backup at DR
    assert dict(vm.app_intervals) == {"Boston": DAY, "DR": DAY}
    assert vm.vm.app_aware_status == "INVALID_CREDS"
    assert snapshot.at_risk == (vm,)
    assert snapshot.vms_by_status["Boston"]["app_inconsistent"] == 1


def test_the_sample_backup_is_protected_but_not_application_consistent() -> None:
    sample = {
        "state": "PROTECTED",
        "application_consistent": True,
        "consistency_type": "FAILEDVSS",
        "created_at": "2018-05-08T10:00:01Z",
        "omnistack_cluster_name": "DR",
        "virtual_machine_id": "0fc3500c-93a5-43d6-a816-21c3ce9abf2c",
        "size": 1192566784,
        "expiration_time": "2018-05-08T16:00:01Z",
    }
    tally = Aggregator()
    tally.add(sample)
    held = tally.snapshot().vms[0].held["DR"]
    assert (held.restore_points, held.newest_app_consistent, held.consistency_known) == (
        1,
        None,
        True,
    )


# --- restore points ----------------------------------------------------------------------


def test_restore_points_and_the_oldest_per_destination() -> None:
    snapshot = judged(
        [DAILY_VSS, TO_DR],
        [
            *nightly("VSS", nights=5),
            backup(RECENT, "VSS", "DR"),
            backup(RECENT + HOUR, None, "DR", state="FAILED"),
            backup(RECENT, "VSS", "StoreOnce"),  # no rule sends backups there
        ],
    )
    (vm,) = snapshot.protection
    assert vm.restore_destinations == ("Boston", "DR", "StoreOnce")
    boston, dr = vm.held.get("Boston"), vm.held.get("DR")
    assert boston is not None
    assert dr is not None
    assert (boston.restore_points, boston.oldest_protected) == (5, NOW - 2 * HOUR - 4 * DAY)
    assert (dr.restore_points, dr.backups, dr.oldest_protected) == (1, 2, NOW - RECENT)
    assert dict(vm.recovery_windows) == {"Boston": 7 * DAY, "DR": 7 * DAY}


# --- recovery window ---------------------------------------------------------------------

EVERY = Days(every_day=True)
frequencies = st.sampled_from([1, 5, 15, 30, 60, 90, 120, 240, 360, 700, 720, 1440, 2880])
clock = st.integers(0, 1439)
optional_counts = st.none() | st.integers(1, 400)
day_texts = st.sampled_from(["All", "Mon", "Mon,Wed,Fri", "Sat,Sun", "1,15", "last", "Mon,1"])


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    return Rule(
        Schedule(draw(frequencies), Days.parse(draw(day_texts)), draw(clock), draw(clock)),
        draw(st.sampled_from([LOCAL, "DR"])),
        retention_minutes=draw(st.none() | st.integers(1, 60 * 24 * 400)),
        max_backups=draw(optional_counts),
    )


def test_the_issues_examples() -> None:
    hourly = Rule(Schedule(60, EVERY, 0, 0), LOCAL, retention_minutes=10080, max_backups=7)
    assert rule_window_minutes(hourly) == 7 * 60  # 7 hourly backups: 7 hours, not a week
    sample = parse_rule(DAILY_VSS)  # daily, kept a week, at most 7: a week
    assert rule_window_minutes(sample) == 10080
    sunday = parse_rule({**DAILY_VSS, "frequency": 60, "retention": 120, "max_backups": 2})
    assert rule_window_minutes(sunday) == 120
    assert rule_window_minutes(parse_rule({**DAILY_VSS, "max_backups": "NA"})) == 10080
    assert rule_window_minutes(parse_rule({**DAILY_VSS, "retention": 0})) == 7 * 1440
    assert rule_window_minutes(parse_rule({**DAILY_VSS, "max_backups": 1})) is None
    neither = parse_rule({**DAILY_VSS, "retention": None, "max_backups": None})
    assert rule_window_minutes(neither) is None
    assert recovery_windows([neither], "Boston") == {}


@given(rules())
def test_a_window_is_never_longer_than_retention_nor_than_its_count_allows(rule: Rule) -> None:
    window = rule_window_minutes(rule)
    if (rule.retention_minutes is None and rule.max_backups is None) or rule.max_backups == 1:
        assert window is None
        return
    assert window is not None
    assert window > 0
    if rule.retention_minutes is not None:
        assert window <= rule.retention_minutes
    if rule.max_backups is not None:  # its count never reaches further than its longest gaps
        longest = interval_seconds([rule.schedule])
        assert longest is not None
        assert window * 60 <= rule.max_backups * longest


@given(rules(), st.integers(1, 50))
def test_keeping_more_or_longer_never_shortens_the_window(rule: Rule, more: int) -> None:
    window = rule_window_minutes(rule)
    assume(window is not None)
    assert window is not None
    retention, count = rule.retention_minutes, rule.max_backups
    bigger = [
        replace(rule, retention_minutes=None if retention is None else retention + more),
        replace(rule, max_backups=None if count is None else count + more),
    ]
    if retention is not None and count is not None:  # lifting one limit, the other stays
        bigger += [replace(rule, retention_minutes=None), replace(rule, max_backups=None)]
    for other in bigger:
        widened = rule_window_minutes(other)
        assert widened is not None
        assert widened >= window


@given(st.lists(rules(), min_size=1, max_size=4), rules())
def test_another_rule_never_shortens_a_destinations_window(base: list[Rule], extra: Rule) -> None:
    before = recovery_windows(base, "Boston")
    after = recovery_windows([*base, extra], "Boston")
    assert set(before) <= set(after)
    assert all(after[where] >= seconds for where, seconds in before.items())


@given(frequencies, clock, clock, st.integers(2, 60))
def test_max_backups_backups_really_reach_back_that_far(
    frequency: int, start: int, end: int, keep: int
) -> None:
    """On an every-day schedule, any ``keep`` consecutive gaps between real backup times span at
    least the window: the window is a promise the schedule keeps."""
    schedule = Schedule(frequency, EVERY, start, end)
    day_times = schedule.times()
    times = sorted({t + day * 1440 for day in range(keep + 3) for t in day_times})
    gaps = [b - a for a, b in pairwise(times)]
    assert min(gaps) >= shortest_gap_minutes(schedule)
    window = rule_window_minutes(Rule(schedule, LOCAL, max_backups=keep))
    spans = [times[i + keep] - times[i] for i in range(len(times) - keep)]
    assert window is not None
    assert min(spans) >= window


# --- backups nobody owns -----------------------------------------------------------------


def test_orphaned_backups_are_those_of_no_live_vm_in_any_state() -> None:
    snapshot = aggregate(
        [
            backup(HOUR, "VSS", vm="live"),
            backup(HOUR, "VSS", vm="removed"),
            backup(2 * HOUR, "VSS", vm="removed", state="FAILED"),
            backup(HOUR, "VSS", "DR", vm="removed"),
            backup(HOUR, "VSS", "DR", vm="deleted", state="DELETED"),
            {**backup(HOUR, None, "StoreOnce"), "virtual_machine_id": "NA"},  # names no VM
            backup(HOUR, "VSS", "Chicago", vm="live"),
        ]
    )
    assert orphaned(snapshot, {"live"}) == {
        "Boston": (2, 200),
        "Chicago": (0, 0),
        "DR": (2, 200),
        "StoreOnce": (1, 100),
    }
    everything = orphaned(snapshot, set())
    assert sum(count for count, _ in everything.values()) == snapshot.backups_seen


def test_orphans_are_counted_against_the_same_polls_inventory() -> None:
    snapshot = judged(
        [DAILY_VSS],
        [*nightly("VSS"), backup(HOUR, "VSS", vm="gone"), backup(HOUR, "VSS", "DR", vm="gone")],
    )
    assert dict(snapshot.orphaned) == {"Boston": (1, 100), "DR": (1, 100)}


def test_never_expiring_backups_are_counted_by_cluster_in_any_state() -> None:
    snapshot = aggregate(
        [
            backup(HOUR, "VSS", expiration="NA"),
            {**backup(2 * HOUR, "VSS", state="FAILED", expiration="NA"), "size": 5},
            backup(3 * HOUR, "VSS"),
            {**backup(HOUR, "VSS", "DR"), "expiration_time": None},  # not said: not counted
            backup(HOUR, None, "DR"),
        ]
    )
    boston, dr = snapshot.clusters
    assert (boston.never_expiring, boston.never_expiring_size) == (2, 105)
    assert (dr.never_expiring, dr.never_expiring_size) == (0, 0)
