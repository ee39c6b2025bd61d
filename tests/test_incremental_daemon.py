"""The daemon end to end against the churning simulator: the exporter as ``exporter.app``
assembles it (its poller and APScheduler, its decoding worker, its exposition, its web server
on 127.0.0.1), polling incrementally, and a second one that scans every backup at every poll
(``full_scan_interval_seconds: 0``), both on the simulator's manual clock. After every poll
each is scraped over HTTP at the same moment, and every series but the ages and the poll's own
figures must be the same; the poll's own families must say what happened: the kind of each
poll, how few backups an incremental one read, and each full scan with its reason (start,
schedule, a mismatch planted behind the exporter's back, a reload), logged once each.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest

from exporter.collector import AGE_FAMILIES
from exporter.config import Config, PollConfig
from exporter.model import FULL_SCAN_REASONS
from exporter.simulator import Churn, FederationSpec, ManualClock, SimulatedController
from tests.conftest import wait_until
from tests.live_exporter import InProcessExporter, Scrape, controller_config

FIVE_MINUTES = 300
POLLS = 30
VMS = 200
#: The generated federation's first backups expire a day after it was generated: the polls
#: start shortly before, so that expiries happen during the run.
EXPIRING = 24 * 3600 - 1800
#: A full scan every six polls, unless something else ran one meanwhile.
FULL_SCAN_INTERVAL = 6 * FIVE_MINUTES
#: Before this poll, many old backups are deleted by hand at once: more spans than an
#: incremental poll repairs (exporter.incremental.MAX_REPAIRS), so it falls back.
MISMATCH_AT = 8
#: Before this poll, a reload changes a setting of the controller's poll.
RELOAD_AT = 17
#: Every kind of random change, a few at chosen polls (beside the default churn's own).
CHANGES: dict[int, tuple[str, ...]] = {
    2: ("manual_backup", "retention_changed"),
    3: ("deleted", "vm_created"),
    4: ("locked", "vm_renamed"),
    5: ("manual_copy", "vm_moved"),
    10: ("lost", "policy_edited"),
    11: ("vm_removed", "host_suspended"),
    13: ("deleted", "manual_backup", "vm_renamed"),
    19: ("retention_changed", "locked", "vm_created"),
    21: ("host_suspended", "manual_copy"),
    25: ("lost", "vm_moved", "policy_edited"),
    27: ("deleted", "vm_removed"),
}
#: The poll's own figures, which differ between the two exporters by design, and the time of
#: the last reload (wall time, and only one of the two reloads).
OWN = frozenset(
    {
        "simplivity_poll_kind",
        "simplivity_poll_objects",
        "simplivity_poll_full_scans_total",
        "simplivity_poll_duration_seconds",
        "simplivity_poll_last_success_timestamp_seconds",
        "simplivity_exporter_config_last_reload_success_timestamp_seconds",
    }
)
Sample = tuple[str, frozenset[tuple[str, str]]]


def expected_full_scans() -> dict[int, str]:
    """The polls that must scan every backup, and why, as the schedule works them out."""
    reasons = {0: "start", MISMATCH_AT: "mismatch", RELOAD_AT: "reload"}
    last = 0
    for poll in range(POLLS):
        if poll in reasons:
            last = poll
        elif (poll - last) * FIVE_MINUTES >= FULL_SCAN_INTERVAL:
            reasons[poll] = "schedule"
            last = poll
    return reasons


def exported(scrape: Scrape) -> dict[Sample, float]:
    """The exporter's own series (not the process's), named for no controller in particular,
    but the ages (they follow the clock, not the poll) and the poll's own figures."""
    return {
        (name, frozenset((k, "c" if k == "controller" else v) for k, v in labels)): value
        for (name, labels), value in scrape.samples.items()
        if name.startswith("simplivity_") and name not in AGE_FAMILIES and name not in OWN
    }


def differences(got: dict[Sample, float], truth: dict[Sample, float]) -> list[str]:
    keys = sorted(got.keys() | truth.keys(), key=repr)
    return [
        f"{name}{dict(labels)}: {got.get((name, labels))} != {truth.get((name, labels))}"
        for name, labels in keys
        if got.get((name, labels)) != truth.get((name, labels))
    ]


def reload_with_a_changed_setting(exporter: InProcessExporter) -> None:
    """A reload that changes how the controller is polled (both exporters take it: each logs
    in again); the scheduler runs the new poller's first poll at once."""
    polls = exporter.poller.statuses()[0].polls
    changed = replace(exporter.config.poll, timeout_seconds=11)
    ok, message = exporter.reload(replace(exporter.config, poll=changed))
    assert ok, message
    wait_until(lambda: exporter.poller.statuses()[0].polls > polls, 30, "the poll after a reload")


def check_how_it_polled(
    poll_number: int, got: Scrape, want: Scrape, full_scans: dict[int, str]
) -> None:
    """The poll's own families: its kind, its full scans so far by reason, and how many
    backups it read against the full poll of the same moment."""
    kind = "full" if poll_number in full_scans else "incremental"
    assert got.value("simplivity_poll_kind", controller="inc", kind=kind) == 1, poll_number
    assert want.value("simplivity_poll_kind", controller="full", kind="full") == 1
    so_far = Counter(reason for poll, reason in full_scans.items() if poll <= poll_number)
    shown = {
        labels["reason"]: value
        for labels, value in got.matching("simplivity_poll_full_scans_total", controller="inc")
    }
    assert shown == {reason: so_far[reason] for reason in FULL_SCAN_REASONS}, poll_number
    read = got.value("simplivity_poll_objects", controller="inc", collection="backups")
    every = want.value("simplivity_poll_objects", controller="full", collection="backups")
    assert read is not None
    assert every is not None
    if kind == "incremental":
        # The target: at most a tenth of a full poll's objects.
        assert read * 10 <= every, f"poll {poll_number}: read {read} of {every}"
    else:
        assert read >= every, poll_number


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def simulator(clock: ManualClock) -> Iterator[SimulatedController]:
    # Tokens live as long as the test: the clock moves hours.
    controller = SimulatedController(
        FederationSpec(vms=VMS),
        clock=clock,
        churn=Churn.for_vms(VMS),
        idle_timeout_seconds=10**9,
        absolute_timeout_seconds=10**9,
    ).start()
    yield controller
    controller.stop()


def test_the_daemon_stays_exact_at_every_poll_and_says_how_it_polled(
    simulator: SimulatedController, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    clock.advance(EXPIRING)
    # interval_seconds is wall time for the scheduler: its first run of each poller comes
    # within a second of start (or reload), the next would come minutes after this test.
    poll = PollConfig(
        interval_seconds=FIVE_MINUTES,
        timeout_seconds=10,
        page_size=500,
        full_scan_interval_seconds=FULL_SCAN_INTERVAL,
    )
    steady = InProcessExporter(
        Config(controllers=(controller_config("inc", simulator),), poll=poll), clock=clock
    )
    truth = InProcessExporter(
        Config(
            controllers=(controller_config("full", simulator),),
            poll=replace(poll, full_scan_interval_seconds=0),
        ),
        clock=clock,
    )
    full_scans = expected_full_scans()
    caplog.set_level(logging.DEBUG, logger="exporter.poller")
    try:
        steady.start()
        truth.start()
        for poll_number in range(POLLS):
            if poll_number == 0:  # the scheduler's first runs, the clock standing still
                wait_until(lambda: steady.poller.ready() and truth.poller.ready(), 30, "polls")
            else:
                clock.advance(FIVE_MINUTES)
                for kind in CHANGES.get(poll_number, ()):
                    assert simulator.change(kind, 1) == 1, kind
                if poll_number == MISMATCH_AT:
                    assert simulator.change("deleted", 60) == 60
                if poll_number == RELOAD_AT:
                    for exporter in (steady, truth):
                        reload_with_a_changed_setting(exporter)
                else:
                    steady.poller.poll_all_once()
                    truth.poller.poll_all_once()
            got, want = steady.scrape(), truth.scrape()
            assert got.up("inc") == want.up("full") == 1
            wrong = differences(exported(got), exported(want))
            assert not wrong, f"poll {poll_number}: " + "; ".join(wrong[:10])
            check_how_it_polled(poll_number, got, want, full_scans)
    finally:
        steady.stop()
        truth.stop()

    # The run compared what it claims to: a living federation, every series of it.
    assert len(exported(got)) > 1000
    changes = simulator.changes()
    for happened in ("scheduled", "protected", "expired", "replicated", "failed"):
        assert changes.get(happened, 0) > 0, changes
    planted = {kind for kinds in CHANGES.values() for kind in kinds}
    assert planted == set(Churn.RATES.values())  # every kind of random change
    for happened in planted:
        assert changes.get(happened, 0) > 0, (happened, changes)

    # Each full scan logged once, with its reason; the fallback's warning once, with why.
    said = [r.getMessage() for r in caplog.records if r.name == "exporter.poller"]
    reasons = [
        m.group(1) for s in said if (m := re.fullmatch(r"controller inc: full scan \((\w+)\)", s))
    ]
    assert reasons == [full_scans[p] for p in sorted(full_scans)]
    fallbacks = [
        s for s in said if s.startswith("controller inc: incremental poll does not add up")
    ]
    assert len(fallbacks) == 1, fallbacks
    assert "repairs" in fallbacks[0]
