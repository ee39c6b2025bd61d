"""The poller: complete snapshots only, the last good one kept, no overlapping polls."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.backups import BACKUPS, BackupRecordError
from exporter.collector import BackupCollector, ExporterState
from exporter.config import Config, ControllerConfig, PollConfig, ProtectionConfig, Secret
from exporter.exposition import Exposition
from exporter.inventory import (
    CLUSTERS,
    HOSTS,
    INVENTORY_LISTINGS,
    POLICIES,
    SCHEDULE_REPORT,
    VERSION,
    VIRTUAL_MACHINES,
)
from exporter.model import (
    REASONS,
    Cancelled,
    ConnectError,
    ControllerStatus,
    HTTPStatusError,
    RequestTimeout,
    ScheduleReport,
)
from exporter.pages import Collection, PageSink
from exporter.poller import ControllerPoller, ControllerReader, Poller
from exporter.scan import Pace, Scanner
from exporter.simulator import FederationSpec, SimulatedController
from tests.conftest import wait_until
from tests.snapshots import (
    NoPollLimits,
    RecordingSource,
    answer_inventory,
    cluster_record,
    host_record,
    policy_record,
    rendered,
    rule,
    vm_record,
)

Start = Callable[..., SimulatedController]
T = "2024-03-01T06:00:00Z"


def page_body(backups: list[Any]) -> bytes:
    """One page of ``/api/backups`` holding ``backups``, as the controller sends it."""
    return json.dumps({"offset": 0, "count": len(backups), "backups": backups}).encode()


def record(number: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"b{number:05d}",
        "state": "PROTECTED",
        "created_at": T,
        "size": 1,
        "omnistack_cluster_name": "Boston",
        "virtual_machine_id": f"vm{number % 3}",
        "virtual_machine_name": f"vm{number % 3}",
        "virtual_machine_state": "ALIVE",
        **fields,
    }


#: The live VMs of :func:`record`'s backups, on an hourly policy, on one host.
INVENTORY: dict[str, list[dict[str, Any]]] = {
    VIRTUAL_MACHINES.path: [
        vm_record(f"vm{n}", f"vm{n}", "p1", host_id="h1", omnistack_cluster_name="Boston")
        for n in range(3)
    ],
    POLICIES.path: [policy_record("p1", "Hourly", rule(60))],
    HOSTS.path: [host_record("h1", "esx-01", "Boston")],
    CLUSTERS.path: [cluster_record("Boston")],
}
REPORT = b'{"daily_backup_rate": 72, "daily_backup_rate_limit": 24000}'


class ScriptedSource(NoPollLimits):
    """A client whose scans of the backups follow a script: a list of records, or an exception
    to raise; the inventory's listings and the schedule report are answered from
    ``inventory`` and ``report`` (an exception there is raised at each read)."""

    def __init__(
        self,
        script: list[list[Any] | Exception],
        inventory: dict[str, Any] | None = None,
        report: bytes | Exception = REPORT,
    ) -> None:
        self.script = script
        self.inventory = INVENTORY if inventory is None else inventory
        self.report = report
        self.logins = 1
        self.pace = Pace(concurrency=3, page_size=3000)
        self.closed = False
        self.reads: list[str] = []

    def read(self, collection: Collection, pages: PageSink) -> None:
        self.reads.append(collection.path)
        answer = self.inventory.get(collection.path)
        if isinstance(answer, Exception):
            raise answer
        if answer_inventory(collection, pages, self.inventory):
            return
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        pages.count(0, page_body(step))

    def get(self, path: str) -> bytes:
        self.reads.append(path)
        if isinstance(self.report, Exception):
            raise self.report
        return self.report

    def close(self) -> None:
        self.closed = True


CONTROLLER = ControllerConfig("boston", "https://h", "u", Secret("p"))
#: A scripted source serves one read of the backups per poll: each poll a full scan.
EVERY_POLL_FULL = PollConfig(full_scan_interval_seconds=0)


def poller_with(
    source: ControllerReader,
    clock: Callable[[], float] = lambda: 1000.0,
    protection: ProtectionConfig | None = None,
) -> ControllerPoller:
    return ControllerPoller(
        CONTROLLER,
        EVERY_POLL_FULL,
        client_factory=lambda *_: source,
        clock=clock,
        protection=protection,
    )


def test_a_successful_poll_publishes_a_complete_snapshot() -> None:
    poller = poller_with(ScriptedSource([[record(n) for n in range(10)]]))
    status = poller.poll_once()
    assert status.up
    assert status.polls == 1
    assert status.last_success == 1000.0
    assert status.snapshot is not None
    assert status.snapshot.backups_seen == 10
    assert status.errors == dict.fromkeys(REASONS, 0)


def test_a_failed_poll_keeps_the_last_good_snapshot_and_counts_the_reason() -> None:
    now = [1000.0]
    source = ScriptedSource(
        [[record(1), record(2)], RequestTimeout("/api/backups: no answer within 60 s")]
    )
    poller = poller_with(source, clock=lambda: now[0])
    good = poller.poll_once().snapshot
    now[0] = 1300.0
    status = poller.poll_once()
    assert not status.up
    assert status.snapshot is good
    assert status.last_success == 1000.0
    assert status.last_poll_finished == 1300.0
    assert status.errors["timeout"] == 1
    assert status.last_error == "/api/backups: no answer within 60 s"


def test_a_scan_failing_half_way_publishes_nothing_of_it() -> None:
    class HalfScan(ScriptedSource):
        def read(self, collection: Collection, pages: PageSink) -> None:
            if answer_inventory(collection, pages, INVENTORY):
                return
            pages.count(0, page_body([record(number) for number in range(5)]))
            raise ConnectError("cannot connect: connection reset")

    poller = poller_with(HalfScan([]))
    status = poller.poll_once()
    assert status.snapshot is None
    assert status.errors["connection"] == 1


def test_an_unexpected_exception_is_contained_and_counted() -> None:
    poller = poller_with(ScriptedSource([BackupRecordError("boom"), ZeroDivisionError()]))
    assert poller.poll_once().errors["decode"] == 1
    status = poller.poll_once()
    assert status.errors["decode"] == 2
    assert status.last_error == "internal error: ZeroDivisionError"


def test_a_second_poll_of_the_same_controller_never_overlaps_the_first() -> None:
    entered = threading.Event()
    release = threading.Event()

    class Slow(ScriptedSource):
        def read(self, collection: Collection, pages: PageSink) -> None:
            if answer_inventory(collection, pages, INVENTORY):
                return
            entered.set()
            release.wait(10)

    poller = poller_with(Slow([]))
    first = threading.Thread(target=poller.poll_once)
    first.start()
    assert entered.wait(10)
    skipped = poller.poll_once()  # returns at once: the first poll still runs
    assert skipped.polls == 0
    release.set()
    first.join(10)
    assert poller.status.polls == 1


def config_for(
    *controllers: SimulatedController, interval: float = 1.0, deadline: float | None = None
) -> Config:
    """A poll runs out of time after ``deadline`` seconds (default: the interval)."""
    return Config(
        controllers=tuple(
            ControllerConfig(f"c{n}", c.url, c.username, Secret(c.password))
            for n, c in enumerate(controllers)
        ),
        poll=PollConfig(
            interval_seconds=interval,
            timeout_seconds=max(2.0, deadline or 0),  # one request never outlasts the poll
            deadline_seconds=deadline,
            max_retries=0,
        ),
    )


def test_the_scheduler_polls_every_controller_and_a_slow_one_delays_no_other(
    start_simulator: Start,
) -> None:
    fast = start_simulator(FederationSpec())
    slow = start_simulator(FederationSpec())
    slow.faults.hang_seconds = 30
    # The slow controller's polls run out of time after 4 s: its second cannot end before 8 s,
    # a wide margin over the 2 s that three polls of the fast one take at a 1 s interval.
    poller = Poller(config_for(fast, slow, interval=1, deadline=4))
    poller.start()
    try:
        wait_until(lambda: poller.statuses()[0].polls >= 3, 15, "three polls of c0")
        fast_status, slow_status = poller.statuses()
        assert fast_status.up
        assert slow_status.polls <= 1  # still stuck in its first (or timed out once)
        assert not poller.ready() or slow_status.polls == 1
        wait_until(poller.ready, 15, "the slow controller's first poll to time out")
        assert poller.statuses()[1].errors["timeout"] >= 1
    finally:
        poller.shutdown()


def test_apply_adds_replaces_and_removes_controllers(start_simulator: Start) -> None:
    first = start_simulator(FederationSpec())
    second = start_simulator(FederationSpec(vms=15))
    poller = Poller(config_for(first))
    poller.start()
    try:
        wait_until(poller.ready, 10, "the first poll")
        untouched = poller._pollers["c0"]
        poller.apply(config_for(first, second))
        assert poller._pollers["c0"] is untouched
        assert [s.name for s in poller.statuses()] == ["c0", "c1"]
        wait_until(poller.ready, 10, "the new controller's first poll")
        only_second = config_for(second)
        poller.apply(only_second)
        assert [s.name for s in poller.statuses()] == ["c0"]
        wait_until(lambda: poller.statuses()[0].url == second.url and poller.ready(), 10)
    finally:
        poller.shutdown()


def test_a_poller_replaced_during_its_poll_polls_as_soon_as_the_old_poll_ends() -> None:
    entered, ended = threading.Event(), threading.Event()

    class Stuck(ScriptedSource):
        """Polls until told to stop, as the real client does at its next request."""

        def __init__(self, stop: threading.Event) -> None:
            super().__init__([])
            self.stop = stop

        def read(self, collection: Collection, pages: PageSink) -> None:
            entered.set()
            self.stop.wait(30)
            ended.set()
            raise Cancelled()

    def client_factory(
        c: ControllerConfig, p: PollConfig, stop: threading.Event
    ) -> ControllerReader:
        if not entered.is_set():
            return Stuck(stop)
        return Fresh([[record(1), record(2)]])

    class Fresh(ScriptedSource):
        def read(self, collection: Collection, pages: PageSink) -> None:
            assert ended.is_set(), "two polls of one controller ran at once"
            super().read(collection, pages)

    controller = ControllerConfig("boston", "https://h", "u", Secret("p"))
    hourly = PollConfig(interval_seconds=3600, timeout_seconds=60)
    poller = Poller(Config(controllers=(controller,), poll=hourly), client_factory=client_factory)
    poller.start()
    try:
        assert entered.wait(10), "the first poll did not start"
        # New poll settings replace the poller while its first poll runs: that one is told to
        # stop, and the new poller's first poll follows it, not an hour later.
        poller.apply(Config(controllers=(controller,), poll=replace(hourly, timeout_seconds=30)))
        wait_until(lambda: poller.statuses()[0].up, 10, "the new poller's first poll")
        assert ended.is_set()
        assert poller.statuses()[0].polls == 1
    finally:
        poller.shutdown()


def test_the_text_of_a_new_snapshot_is_written_by_the_poll_not_by_the_next_scrape() -> None:
    controller = ControllerConfig("boston", "https://h", "u", Secret("p"))
    config = Config(controllers=(controller,), poll=PollConfig())
    poller = Poller(
        config,
        client_factory=lambda *_: ScriptedSource([[record(1), record(2)]]),
        clock=lambda: 1000.0,
    )
    reads: list[int] = []

    def statuses() -> tuple[ControllerStatus, ...]:
        reads.append(1)
        return poller.statuses()

    state = ExporterState(interval_seconds=300, stale_after_seconds=1800)
    exposition = Exposition(
        CollectorRegistry(auto_describe=False),
        lambda: poller.generation,
        clock=lambda: 1000.0,
        backups=BackupCollector(statuses, lambda: state, clock=lambda: 1000.0),
    )
    poller.subscribe(exposition.refresh)
    assert b"simplivity_backups{" not in rendered(exposition)  # scraped before any poll
    poller.poll_all_once()
    written = len(reads)
    assert written == 3  # once for the first scrape, twice by the poll (snapshot, text)
    text = rendered(exposition)
    assert len(reads) == written  # the scrape found the text written
    assert b'simplivity_backups{controller="boston"' in text


def test_odd_records_are_counted_logged_once_and_the_rest_of_the_poll_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    records: list[Any] = [record(n) for n in range(10)]
    records[2] = record(2, state=None)
    records[4] = "b00004"
    records[6] = record(6, created_at="NA", size=None)
    records[8] = {key: value for key, value in record(8).items() if key != "id"}
    poller = poller_with(ScriptedSource([records, [record(1)]]))
    with caplog.at_level(logging.WARNING, logger="exporter.poller"):
        status = poller.poll_once()
    assert status.up
    assert status.snapshot is not None
    assert status.snapshot.backups_seen == 7  # the NA one counts
    assert status.unreadable_records == 3
    (warning,) = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert warning == (
        "controller boston: 3 records could not be read and were left out: "
        "backup 'b00002': state is missing; a string where a backup belongs, at position 4; "
        "a backup without an id, at position 8"
    )
    assert "PROTECTED" not in warning  # never a record's body
    # The next poll reads every record: the gauge says so.
    assert poller.poll_once().unreadable_records == 0


def test_the_pace_the_reader_learned_is_published_after_every_poll() -> None:
    source = ScriptedSource([[record(1)], ConnectError("cannot connect: connection reset")])
    poller = poller_with(source)
    assert (poller.status.concurrency, poller.status.page_size) == (3, 3000)
    source.pace = Pace(concurrency=2, page_size=1500)
    assert (poller.poll_once().concurrency, poller.status.page_size) == (2, 1500)
    source.pace = Pace(concurrency=1, page_size=750)
    failed = poller.poll_once()
    assert not failed.up
    assert (failed.concurrency, failed.page_size) == (1, 750)


# -- the inventory, read with every poll ---------------------------------------------------------


def test_a_poll_reads_the_inventory_and_the_backups_and_judges_every_live_vm() -> None:
    source = ScriptedSource([[record(n) for n in range(6)]])
    status = poller_with(source, clock=lambda: 1709280000.0).poll_once()
    # The backups in this thread, the inventory in another: in order within each.
    inventory = [path for path in source.reads if path != BACKUPS.path]
    assert inventory == [
        VERSION,
        VIRTUAL_MACHINES.path,
        POLICIES.path,
        HOSTS.path,
        CLUSTERS.path,
        SCHEDULE_REPORT,
    ]
    assert source.reads.count(BACKUPS.path) == 1
    assert status.up
    snapshot = status.snapshot
    assert snapshot is not None
    assert [p.vm.vm_id for p in snapshot.protection] == ["vm0", "vm1", "vm2"]
    # Their backups are 2 h old: within an hourly policy's 1.5 h + 1 h.
    assert [p.status for p in snapshot.protection] == ["ok", "ok", "ok"]
    assert snapshot.inventory.schedule == ScheduleReport(72.0, 24000.0, None, None)
    assert snapshot.judged_at == status.last_success


def test_the_protection_settings_reach_the_judgement() -> None:
    strict = ProtectionConfig(overdue_factor=1.0, grace_seconds=60)
    status = poller_with(
        ScriptedSource([[record(n) for n in range(6)]]), lambda: 1709280000.0, strict
    ).poll_once()
    assert status.snapshot is not None
    assert {p.status for p in status.snapshot.protection} == {"overdue"}
    assert [p.vm.vm_id for p in status.snapshot.at_risk] == ["vm0", "vm1", "vm2"]


def test_a_failing_vm_listing_fails_the_poll_and_keeps_the_last_good_snapshot() -> None:
    now = [1000.0]
    source = ScriptedSource([[record(1)], [record(2)]])
    poller = poller_with(source, clock=lambda: now[0])
    good = poller.poll_once().snapshot
    assert good is not None
    source.inventory = {**INVENTORY, VIRTUAL_MACHINES.path: RequestTimeout("no answer")}
    now[0] = 1300.0
    status = poller.poll_once()
    assert not status.up
    assert status.snapshot is good
    assert status.errors["timeout"] == 1
    assert status.last_error == "no answer"


def test_without_a_schedule_report_the_poll_succeeds_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = HTTPStatusError("/api/policies/policy_schedule_report answered 404", 404)
    source = ScriptedSource([[record(1)], [record(2)], [record(3)]], report=missing)
    poller = poller_with(source)
    with caplog.at_level(logging.INFO, logger="exporter.poller"):
        statuses = [poller.poll_once() for _ in range(2)]
    assert all(s.up and s.snapshot and s.snapshot.inventory.schedule is None for s in statuses)
    said = [r for r in caplog.records if "schedule report" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.INFO
    # A reload keeps the snapshot, and with it what was said.
    replaced = ControllerPoller(
        CONTROLLER, EVERY_POLL_FULL, client_factory=lambda *_: source, previous=poller.status
    )
    with caplog.at_level(logging.INFO, logger="exporter.poller"):
        assert replaced.poll_once().up
    assert len([r for r in caplog.records if "schedule report" in r.getMessage()]) == 1


def test_a_schedule_report_that_is_not_json_fails_the_poll_as_decode() -> None:
    status = poller_with(ScriptedSource([[record(1)]], report=b"<html>")).poll_once()
    assert not status.up
    assert status.errors["decode"] == 1


def test_live_vms_are_asked_for_in_pages_of_1000_at_most_with_only_the_fields_needed() -> None:
    backups = [record(n, id=f"b{n:05d}") for n in range(2500)]
    others = [{"id": f"{n:05d}", "name": f"x{n}"} for n in range(2500)]
    source = RecordingSource({c.path: others for c in INVENTORY_LISTINGS} | {BACKUPS.path: backups})
    poller = ControllerPoller(
        CONTROLLER,
        PollConfig(page_size=3000, max_concurrency=1),
        client_factory=lambda c, p, stop: Scanner(source, page_size=3000, max_concurrency=1),
    )
    status = poller.poll_once()
    assert status.up, status.last_error
    vm_pages = [page for page in source.pages if page.path == VIRTUAL_MACHINES.path]
    assert len(vm_pages) == 3
    assert {page.limit for page in vm_pages} == {1000}
    assert {page.filters for page in vm_pages} == {(("state", "ALIVE"),)}
    assert set(vm_pages[0].fields) == {
        "id", "name", "created_at", "policy_id", "policy_name", "omnistack_cluster_name",
        "datastore_name", "host_id", "app_aware_vm_status",
    }  # fmt: skip
    assert {page.limit for page in source.pages if page.path == BACKUPS.path} == {3000}
    assert status.snapshot is not None
    assert len(status.snapshot.protection) == 2500


def test_new_protection_settings_at_a_reload_replace_the_poller() -> None:
    config = Config(controllers=(CONTROLLER,))
    poller = Poller(config, client_factory=lambda *_: ScriptedSource([]))
    before = poller._pollers["boston"]
    poller.apply(replace(config, protection=ProtectionConfig(overdue_factor=3)))
    after = poller._pollers["boston"]
    assert after is not before
    assert after.protection.overdue_factor == 3
    poller.shutdown()
