"""Protection statuses judged from a VM's facts (exporter/protection.py), with no server at all."""

from __future__ import annotations

import doctest
import math

import pytest

from exporter import protection
from exporter.protection import (
    AT_RISK_STATUSES,
    PROTECTION_STATUSES,
    SEVERITY,
    NewestBackup,
    Verdict,
    VMFacts,
    judge,
    worst_first,
)

HOUR = 3600
DAY = 86400


def test_the_docstring_examples_hold() -> None:
    results = doctest.testmod(protection)
    assert results.attempted >= 5
    assert results.failed == 0


# --- protection status ---------------------------------------------------------------------

NOW = 1_700_000_000.0
FACTOR = 1.5
GRACE = 3600.0
#: Hourly at home, daily to DR: thresholds 1.5 h + 1 h = 9,000 s and 36 h + 1 h = 133,200 s.
INTERVALS = {"Boston": HOUR, "Chicago": DAY}
LOCAL_LIMIT = HOUR * FACTOR + GRACE
DR_LIMIT = DAY * FACTOR + GRACE


def facts(
    created_at: float | None = NOW - 30 * DAY,
    intervals: dict[str, int] | None = None,
    newest: dict[str, float] | None = None,
    last: str | None = None,
    policy_enabled: bool = True,
) -> VMFacts:
    newest = {} if newest is None else newest
    newest_backup = None
    if last is not None:
        newest_backup = NewestBackup(last, NOW - 60, "Boston")
    elif newest:
        destination, when = max(newest.items(), key=lambda item: item[1])
        newest_backup = NewestBackup("PROTECTED", when, destination)
    return VMFacts(
        created_at=created_at,
        intervals=INTERVALS if intervals is None else intervals,
        newest_protected=newest,
        newest_backup=newest_backup,
        policy_enabled=policy_enabled,
    )


FRESH = {"Boston": NOW - 600, "Chicago": NOW - 3 * HOUR}


@pytest.mark.parametrize(
    ("vm", "status", "destination"),
    [
        pytest.param(facts(newest=FRESH), "ok", "Chicago", id="fresh everywhere, DR nearer"),
        pytest.param(facts(intervals={}), "not_scheduled", None, id="no usable rule"),
        pytest.param(
            facts(intervals={}, newest=FRESH), "not_scheduled", None, id="no rule, old backups"
        ),
        pytest.param(
            facts(newest=FRESH, policy_enabled=False),
            "not_scheduled",
            None,
            id="host suspended beats fresh backups",
        ),
        pytest.param(
            facts(created_at=NOW - 60, policy_enabled=False),
            "not_scheduled",
            None,
            id="not_scheduled beats new",
        ),
        pytest.param(facts(created_at=NOW - 60), "new", "Boston", id="created a minute ago"),
        pytest.param(
            facts(created_at=NOW - 20 * HOUR),
            "new",
            "Boston",
            id="new until the longest interval (DR, 1 day) plus grace",
        ),
        pytest.param(
            facts(created_at=NOW - DAY - GRACE + 1), "new", "Boston", id="new one second before"
        ),
        pytest.param(
            facts(created_at=NOW - DAY - GRACE),
            "never_backed_up",
            "Boston",
            id="exactly at the threshold: no longer new",
        ),
        pytest.param(
            facts(created_at=NOW + 60), "new", "Chicago", id="created in the future (clock skew)"
        ),
        pytest.param(
            facts(created_at=None), "never_backed_up", "Boston", id="created_at unknown (NA)"
        ),
        pytest.param(
            facts(last="FAILED"),
            "never_backed_up",
            "Boston",
            id="never_backed_up beats last_failed",
        ),
        pytest.param(
            facts(newest={"Boston": NOW - LOCAL_LIMIT, "Chicago": NOW - DR_LIMIT}),
            "ok",
            "Boston",
            id="exactly at both thresholds: not overdue",
        ),
        pytest.param(
            facts(newest={"Boston": NOW - LOCAL_LIMIT - 1, "Chicago": NOW - HOUR}),
            "overdue",
            "Boston",
            id="local one second past",
        ),
        pytest.param(
            facts(newest={"Boston": NOW - 600, "Chicago": NOW - DR_LIMIT - 1}),
            "overdue",
            "Chicago",
            id="DR copies stopped while local ones are fresh",
        ),
        pytest.param(
            facts(newest={"Boston": NOW - 600}),
            "overdue",
            "Chicago",
            id="never a copy at DR, VM a month old",
        ),
        pytest.param(
            facts(created_at=NOW - 2 * HOUR, newest={"Boston": NOW - 600}),
            "ok",
            "Boston",
            id="no DR copy yet, but the VM is younger than DR's threshold",
        ),
        pytest.param(
            facts(created_at=None, newest={"Boston": NOW - 600}),
            "overdue",
            "Chicago",
            id="no DR copy and created_at unknown",
        ),
        pytest.param(
            facts(newest={"Denver": NOW - 600}),
            "overdue",
            "Boston",
            id="backups only where the policy sends none",
        ),
        pytest.param(
            facts(newest={"Boston": NOW - LOCAL_LIMIT - 1, "Chicago": NOW - HOUR}, last="FAILED"),
            "overdue",
            "Boston",
            id="overdue beats last_failed",
        ),
        pytest.param(facts(newest=FRESH, last="FAILED"), "last_failed", "Chicago", id="failed"),
        pytest.param(facts(newest=FRESH, last="SAVING"), "ok", "Chicago", id="one in progress"),
    ],
)
def test_protection_status(vm: VMFacts, status: str, destination: str | None) -> None:
    verdict = judge(vm, now=NOW, overdue_factor=FACTOR, grace_seconds=GRACE)
    assert (verdict.status, verdict.destination) == (status, destination)
    assert verdict.at_risk == (status in AT_RISK_STATUSES)


def test_every_status_is_a_label_value_and_has_a_rank() -> None:
    assert sorted(SEVERITY) == sorted(PROTECTION_STATUSES)
    assert len(set(PROTECTION_STATUSES)) == 7
    assert {
        "not_scheduled",
        "never_backed_up",
        "overdue",
        "last_failed",
        "app_inconsistent",
    } == AT_RISK_STATUSES


def test_the_verdict_shows_the_worst_destination_for_the_at_risk_table() -> None:
    vm = facts(newest={"Boston": NOW - 2 * DR_LIMIT, "Chicago": NOW - 2 * DR_LIMIT})
    verdict = judge(vm, now=NOW, overdue_factor=FACTOR, grace_seconds=GRACE)
    # Both overdue; the hourly one is further past its threshold.
    assert verdict == Verdict(
        "overdue",
        destination="Boston",
        newest_protected=NOW - 2 * DR_LIMIT,
        expected_interval=HOUR,
        age_seconds=2 * DR_LIMIT,
        lateness=2 * DR_LIMIT / LOCAL_LIMIT,
    )


def test_an_unscheduled_vm_shows_its_newest_good_backup_anywhere() -> None:
    verdict = judge(
        facts(intervals={}, newest={"Boston": NOW - 100, "Chicago": NOW - 50}),
        now=NOW,
        overdue_factor=FACTOR,
        grace_seconds=GRACE,
    )
    assert verdict == Verdict("not_scheduled", None, NOW - 50, None, 50.0, 0.0)
    never = judge(facts(intervals={}), now=NOW, overdue_factor=FACTOR, grace_seconds=GRACE)
    assert (never.newest_protected, never.age_seconds) == (None, math.inf)


def test_a_zero_threshold_does_not_divide_by_zero() -> None:
    vm = facts(newest={"Boston": NOW - 1, "Chicago": NOW})
    verdict = judge(vm, now=NOW, overdue_factor=0, grace_seconds=0)
    assert (verdict.status, verdict.destination, verdict.lateness) == (
        "overdue",
        "Boston",
        math.inf,
    )


def test_worst_first_orders_by_severity_then_lateness_then_age() -> None:
    def verdict_of(vm: VMFacts) -> Verdict:
        return judge(vm, now=NOW, overdue_factor=FACTOR, grace_seconds=GRACE)

    verdicts = {
        "ok": verdict_of(facts(newest=FRESH)),
        "new": verdict_of(facts(created_at=NOW - 60)),
        "failed": verdict_of(facts(newest=FRESH, last="FAILED")),
        "unscheduled-recent": verdict_of(facts(intervals={}, newest=FRESH)),
        "unscheduled-never": verdict_of(facts(intervals={})),
        "slightly-overdue": verdict_of(facts(newest={**FRESH, "Boston": NOW - LOCAL_LIMIT - 1})),
        "very-overdue": verdict_of(facts(newest={**FRESH, "Chicago": NOW - 10 * DAY})),
        "never-unknown-age": verdict_of(facts(created_at=None)),
        "never-old": verdict_of(facts(created_at=NOW - 3 * DAY)),
    }
    order = sorted(verdicts, key=lambda name: worst_first(verdicts[name]))
    assert order == [
        "never-unknown-age",
        "never-old",
        "very-overdue",
        "slightly-overdue",
        "unscheduled-never",
        "unscheduled-recent",
        "failed",
        "new",
        "ok",
    ]
