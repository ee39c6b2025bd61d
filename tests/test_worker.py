"""The decoding worker: a real child process counting real pages, and what happens when it fails."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.backups import BACKUPS
from exporter.config import ControllerConfig, PollConfig, Secret
from exporter.model import DecodeError
from exporter.pages import Collection, PageOutcome, PageSink
from exporter.poller import ControllerPoller, connect
from exporter.scan import Pace, Scanner
from exporter.simulator import FederationSpec, SimulatedController
from exporter.store import BackupScan, BackupStore, StoreScan
from exporter.worker import VMS_PER_PART, WORKER_NICENESS, DecodingWorker
from tests.conftest import wait_until
from tests.live_exporter import ExporterProcess, write_config
from tests.snapshots import NoPollLimits, answer_inventory

Start = Callable[..., SimulatedController]


@pytest.fixture
def worker() -> Iterator[DecodingWorker]:
    started = DecodingWorker()
    yield started
    started.close()


def client_for(simulator: SimulatedController, page_size: int = 100) -> Scanner:
    controller = ControllerConfig(
        "sim", simulator.url, simulator.username, Secret(simulator.password)
    )
    poll = PollConfig(page_size=page_size, timeout_seconds=5)
    return connect(controller, poll, threading.Event())


def page(backups: list[Any], count: int | None = None) -> bytes:
    total = len(backups) if count is None else count
    return json.dumps({"offset": 0, "count": total, "backups": backups}).encode()


def backup(number: int) -> dict[str, Any]:
    return {
        "id": f"b{number:05d}",
        "state": "PROTECTED",
        "created_at": "2026-11-27T06:00:00Z",
        "size": 10,
        "omnistack_cluster_name": "Boston",
        "virtual_machine_id": f"vm{number}",
        "virtual_machine_name": f"web-{number}",
        "virtual_machine_state": "ALIVE",
    }


def process_state(pid: int) -> str | None:
    """The one-letter state of a process ("Z" for a zombie), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def ended(pid: int) -> bool:
    return process_state(pid) in (None, "Z")


def test_counts_a_federation_exactly_as_this_process_does(
    start_simulator: Start, worker: DecodingWorker
) -> None:
    simulator = start_simulator(FederationSpec(vms=300, backups_per_vm=7))
    client = client_for(simulator, page_size=97)
    here, there = StoreScan(keep=False), worker.open_scan()
    assert not isinstance(there, StoreScan)  # counted in the child, not here
    client.read(BACKUPS, here)
    client.read(BACKUPS, there)
    assert there.snapshot().backups_seen == simulator.backup_count()
    assert there.snapshot() == here.snapshot()
    assert worker.pid is not None
    assert worker.pid != os.getpid()


def test_scans_of_several_controllers_share_the_worker_without_mixing(
    start_simulator: Start, worker: DecodingWorker
) -> None:
    specs = [FederationSpec(seed=seed, vms=80 * seed, backups_per_vm=5) for seed in (1, 2, 3)]
    simulators = [start_simulator(spec) for spec in specs]
    results: dict[int, Any] = {}
    # Open together, so that one child counts them all: a child that counted a full scan is
    # stopped once no scan is open.
    scans = [worker.open_scan() for _ in simulators]

    def scan(index: int) -> None:
        scan = scans[index]
        try:
            client_for(simulators[index], page_size=50).read(BACKUPS, scan)
            results[index] = scan.snapshot()
        finally:
            scan.close()

    threads = [threading.Thread(target=scan, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for index, simulator in enumerate(simulators):
        expected = StoreScan(keep=False)
        client_for(simulator, page_size=50).read(BACKUPS, expected)
        assert results[index] == expected.snapshot()
    assert worker.starts == 1


def test_refuses_an_unreadable_page_with_the_words_of_this_process(worker: DecodingWorker) -> None:
    for body in (b'{"count": 1, "backups": [', page([backup(2), backup(1)])):
        with pytest.raises(DecodeError) as here:
            StoreScan(keep=False).count(0, body)
        with pytest.raises(DecodeError) as there:
            worker.open_scan().count(0, body)
        assert str(there.value) == str(here.value)
        assert "/api/backups" in str(there.value)
    # An unreadable record is told back with the page's outcome, in the same words.
    odd = page([{**backup(1), "size": "12 bytes"}, "x", backup(2)])
    assert worker.open_scan().count(0, odd) == StoreScan(keep=False).count(0, odd)
    assert worker.open_scan().count(0, odd).problems == (
        "backup 'b00001': size must be a whole number of bytes, not '12 bytes'",
        "a string where a backup belongs, at position 1",
    )
    # Refusing a page does not end the worker: the next scan is counted by the same process.
    scan = worker.open_scan()
    assert scan.count(0, page([backup(1), backup(2)])) == PageOutcome(2, 2, 2, last_placed=1)
    assert worker.starts == 1


def test_a_scan_is_stitched_to_its_own_last_page_only(worker: DecodingWorker) -> None:
    first, second = worker.open_scan(), worker.open_scan()
    assert first.count(0, page([backup(1), backup(2), backup(3)], count=5)).counted == 3
    # Overlaps the page before by one backup: that one is not counted again.
    assert first.count(2, page([backup(3), backup(4), backup(5)], count=5)).counted == 2
    # A page starting past the last counted backup: the overlap is lost, nothing counted.
    assert second.count(0, page([backup(1)], count=3)).counted == 1
    assert second.count(1, page([backup(3)], count=3)).overlap_lost
    assert first.snapshot().backups_seen == 5
    assert second.snapshot().backups_seen == 1


def test_a_scan_in_the_worker_hands_back_the_store_a_scan_here_keeps(
    worker: DecodingWorker,
) -> None:
    # The second page names VMs and a cluster the first did not: the names go on where the
    # first page's left them.
    first = page([backup(n) for n in range(1, 30)], count=60)
    second = [{**backup(n), "omnistack_cluster_name": "Paris"} for n in range(29, 60)]
    here, there = StoreScan(), worker.open_scan()
    for offset, body in ((0, first), (28, page(second, count=60))):
        assert here.count(offset, body) == there.count(offset, body)
    kept, snapshot = there.take_store(), there.snapshot()
    there.close()
    assert kept is not None
    assert here.store is not None
    assert kept.figures() == here.store.figures()
    assert kept.aggregate() == here.snapshot() == snapshot
    assert len(kept) == 59
    assert worker.open_scan(keep=False).take_store() is None


class PagesThenKill(NoPollLimits):
    """A client whose scan counts one page, kills the worker, then counts another."""

    def __init__(self, worker: DecodingWorker) -> None:
        self.worker = worker
        self.logins = 1
        self.pace = Pace(concurrency=1, page_size=3000)
        self.kill = True
        self.pids: list[int] = []  # of the workers that counted a page

    def read(self, collection: Collection, pages: PageSink) -> None:
        if answer_inventory(collection, pages):
            return
        pages.count(0, page([backup(1), backup(2)], count=4))
        assert self.worker.pid is not None
        self.pids.append(self.worker.pid)
        if self.kill:
            self.kill = False
            assert self.worker.pid is not None
            os.kill(self.worker.pid, signal.SIGKILL)
        pages.count(1, page([backup(2), backup(3), backup(4)], count=4))

    def get(self, path: str) -> bytes:
        return b"{}"

    def close(self) -> None:
        pass


def test_a_worker_killed_mid_scan_fails_that_poll_only(worker: DecodingWorker) -> None:
    source = PagesThenKill(worker)
    poller = ControllerPoller(
        ControllerConfig("boston", "https://h", "u", Secret("p")),
        PollConfig(full_scan_interval_seconds=0),
        client_factory=lambda *_: source,
        scans=worker.open_scan,
    )
    failed = poller.poll_once()
    assert not failed.up
    assert failed.errors["decode"] == 1
    assert failed.last_error is not None
    assert "decoding worker" in failed.last_error
    assert "ended unexpectedly" in failed.last_error
    recovered = poller.poll_once()
    assert recovered.up
    assert recovered.snapshot is not None
    assert recovered.snapshot.backups_seen == 4
    assert worker.starts == 2
    killed, second = source.pids
    assert second != killed


@pytest.mark.parametrize(
    "command",
    [["/nonexistent/python3"], [sys.executable, "-c", "pass"]],
    ids=["cannot-start", "exits-at-once"],
)
def test_without_a_worker_pages_are_counted_in_this_process(
    command: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    worker = DecodingWorker(command)
    try:
        with caplog.at_level(logging.WARNING, logger="exporter.worker"):
            scan: BackupScan = worker.open_scan()
            worker.open_scan()  # said once, not at every poll
        assert isinstance(scan, StoreScan)
        assert scan.count(0, page([backup(1)])).counted == 1
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "counting backups in the exporter's own process" in warnings[0]
    finally:
        worker.close()


def test_the_worker_inherits_no_secret_from_the_environment(
    worker: DecodingWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SVT_PASSWORD", "hunter2-in-the-environment")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    worker.open_scan()
    assert worker.pid is not None
    environment = Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
    assert not any(b"hunter2" in entry for entry in environment)
    assert b"PYTHONDONTWRITEBYTECODE=1" in environment


def test_closing_ends_the_worker_and_refuses_later_scans(worker: DecodingWorker) -> None:
    worker.open_scan()
    pid = worker.pid
    assert pid is not None
    worker.close()
    assert ended(pid)
    with pytest.raises(DecodeError, match="closed"):
        worker.call(("open", 99))


def worker_of(exporter_pid: int) -> int | None:
    for task in Path(f"/proc/{exporter_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"exporter.worker" in cmdline:
                return int(child)
    return None


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_worker_never_outlives_the_exporter(
    start_simulator: Start, tmp_path: Path, how: signal.Signals
) -> None:
    simulator = start_simulator(FederationSpec(vms=30))
    config = write_config(tmp_path / "config.yaml", {"boston": simulator})
    exporter = ExporterProcess(f"--config.file={config}", log_path=tmp_path / "log")
    try:
        wait_until(lambda: exporter.get("/-/ready")[0] == 200, 30, "the first poll")
        child = wait_until(lambda: worker_of(exporter.process.pid), 10, "the worker")
        assert exporter.scrape().value("simplivity_up", controller="boston") == 1
        exporter.signal(how)
        exporter.process.wait(10)
        wait_until(lambda: ended(child), 10, "the worker to end with the exporter")
    finally:
        exporter.stop()


def test_the_worker_yields_the_cpu_to_the_exporter(worker: DecodingWorker) -> None:
    worker.open_scan()
    assert worker.pid is not None
    fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
    niceness = int(fields[16])  # field 19 of stat; the first two are before the ")"
    assert niceness == min(19, os.nice(0) + WORKER_NICENESS)


def test_a_store_sent_to_the_worker_in_chunks_counts_as_it_does_here(
    worker: DecodingWorker,
) -> None:
    here = StoreScan()
    bodies = [page([backup(n) for n in range(1, 30)], count=60)]
    bodies.append(page([{**backup(n), "omnistack_cluster_name": "Paris"} for n in range(29, 60)]))
    for offset, body in zip((0, 28), bodies, strict=True):
        here.count(offset, body)
    store = here.take_store()
    assert store is not None
    there = worker.open_scan(keep=False)
    chunks = list(store.chunks(size=7))  # the names come with the first chunk only
    assert len(chunks) == 9
    for rows in chunks:
        there.count_rows(rows)
    assert there.snapshot() == store.aggregate() == here.snapshot()
    assert there.snapshot().backups_seen == 59
    there.close()
    empty = worker.open_scan(keep=False)
    for rows in BackupStore().chunks():
        empty.count_rows(rows)
    assert empty.snapshot() == BackupStore().aggregate()


def test_a_child_that_decoded_a_full_scan_is_stopped_once_no_scan_is_open(
    worker: DecodingWorker,
) -> None:
    full, other = worker.open_scan(), worker.open_scan(keep=False)
    full.count(0, page([backup(1), backup(2)]))
    decoder = worker.pid
    assert decoder is not None
    full.close()
    assert worker.pid == decoder  # another scan is still open in it
    other.close()
    assert worker.pid is None
    assert ended(decoder)  # its memory given back
    # The next scan starts a child of its own, and gets the same answers.
    again = worker.open_scan()
    assert again.count(0, page([backup(1), backup(2)])) == PageOutcome(2, 2, 2, last_placed=1)
    assert worker.starts == 2
    again.close()
    again.close()  # closing twice counts once
    assert worker.pid is None


def test_a_child_that_only_counted_a_store_lives_on_for_the_next_poll(
    worker: DecodingWorker,
) -> None:
    here = StoreScan()
    here.count(0, page([backup(n) for n in range(1, 10)]))
    store = here.take_store()
    assert store is not None
    for _ in range(3):
        scan = worker.open_scan(keep=False)
        for rows in store.chunks():
            scan.count_rows(rows)
        assert scan.snapshot() == store.aggregate()
        scan.close()
        assert worker.pid is not None
    assert worker.starts == 1


def test_a_snapshot_of_more_vms_than_a_part_comes_back_whole(worker: DecodingWorker) -> None:
    here = StoreScan()
    vms = 2 * VMS_PER_PART + 7  # three parts, the last of 7
    here.count(0, page([backup(n) for n in range(1, vms + 1)]))
    store = here.take_store()
    assert store is not None
    there = worker.open_scan(keep=False)
    for rows in store.chunks():
        there.count_rows(rows)
    snapshot = there.snapshot()
    assert len(snapshot.vms) == vms
    assert snapshot == here.snapshot()


def test_a_scan_opened_while_a_full_scan_closes_keeps_its_child(
    worker: DecodingWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = worker.open_scan()
    full.count(0, page([backup(1)]))
    opened, closed = threading.Event(), threading.Event()
    exchange = worker._exchange

    def open_then_wait(request: tuple[Any, ...], *rest: Any) -> Any:
        answer = exchange(request, *rest)
        if request[0] == "open":  # the child answered; the full scan closes now
            opened.set()
            assert closed.wait(10)
        return answer

    monkeypatch.setattr(worker, "_exchange", open_then_wait)
    scans: list[BackupScan] = []
    other = threading.Thread(target=lambda: scans.append(worker.open_scan()))
    other.start()
    assert opened.wait(10)
    full.close()
    closed.set()
    other.join(10)
    (scan,) = scans
    assert scan.count(0, page([backup(2)])) == PageOutcome(1, 1, 1, last_placed=0)
    assert worker.starts == 1
