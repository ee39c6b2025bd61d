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

from exporter.backups import BackupRecordError
from exporter.collector import BackupCollector, ExporterState
from exporter.config import Config, ControllerConfig, PollConfig, Secret
from exporter.exposition import Exposition
from exporter.model import REASONS, Cancelled, ConnectError, ControllerStatus, RequestTimeout
from exporter.poller import ControllerPoller, ControllerReader, Poller
from exporter.scan import Collection, Pace, PageSink
from exporter.simulator import FederationSpec, SimulatedController
from tests.conftest import wait_until

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


class ScriptedSource:
    """A client whose scans follow a script: a list of records, or an exception to raise."""

    def __init__(self, script: list[list[Any] | Exception]) -> None:
        self.script = script
        self.logins = 1
        self.pace = Pace(concurrency=3, page_size=3000)
        self.closed = False

    def read(self, collection: Collection, pages: PageSink) -> None:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        pages.count(0, page_body(step))

    def close(self) -> None:
        self.closed = True


CONTROLLER = ControllerConfig("boston", "https://h", "u", Secret("p"))


def poller_with(
    source: ControllerReader, clock: Callable[[], float] = lambda: 1000.0
) -> ControllerPoller:
    return ControllerPoller(CONTROLLER, PollConfig(), client_factory=lambda *_: source, clock=clock)


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


def config_for(*controllers: SimulatedController, interval: float = 1.0) -> Config:
    return Config(
        controllers=tuple(
            ControllerConfig(f"c{n}", c.url, c.username, Secret(c.password))
            for n, c in enumerate(controllers)
        ),
        poll=PollConfig(interval_seconds=interval, timeout_seconds=2, max_retries=0),
    )


def test_the_scheduler_polls_every_controller_and_a_slow_one_delays_no_other(
    start_simulator: Start,
) -> None:
    fast = start_simulator(FederationSpec())
    slow = start_simulator(FederationSpec())
    slow.faults.hang_seconds = 30
    poller = Poller(config_for(fast, slow, interval=1))
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
    assert b"simplivity_backups{" not in exposition.render()  # scraped before any poll
    poller.poll_all_once()
    written = len(reads)
    assert written == 2  # once for the first scrape, once by the poll
    text = exposition.render()
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
