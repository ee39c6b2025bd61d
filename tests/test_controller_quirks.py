"""Real controllers' quirks, end to end: the real client over 127.0.0.1 against the simulator.

A controller that serves fewer backups than asked, odd records, "too many simultaneous
requests" (502), pages that take too long (504), and a proxy's HTML error pages. For each: the
poll's values are exact (or the last good ones are kept, with the right reason), and the pace
the exporter learned is what it publishes.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from typing import Any

import pytest

from exporter.backups import BACKUPS, FIELDS, Aggregator, BackupRecordError, seconds_of
from exporter.config import PollConfig
from exporter.inventory import VIRTUAL_MACHINES
from exporter.model import BackupSnapshot, ControllerStatus
from exporter.pages import PageCounter
from exporter.poller import ControllerPoller
from exporter.simulator import ODD_KINDS, FederationSpec, SimulatedController
from exporter.simulator.controller import Endpoint
from tests.conftest import wait_until
from tests.live_exporter import Lab, controller_config, fast_retries

Start = Callable[..., SimulatedController]
#: Odd records that cannot be placed at all: left out, and counted as unreadable.
UNPLACEABLE = frozenset({"no_state", "no_id", "string_record", "number_record"})


def poller_for(simulator: SimulatedController, **poll: Any) -> ControllerPoller:
    # Every poll a full scan: these tests page through the whole listing at each.
    every: dict[str, Any] = {
        "timeout_seconds": 10,
        "page_size": 100,
        "full_scan_interval_seconds": 0,
    }
    settings = PollConfig(**{**every, **poll})
    return ControllerPoller(
        controller_config("quirky", simulator), settings, client_factory=fast_retries
    )


def expected(simulator: SimulatedController, odd: dict[str, str] | None = None) -> BackupSnapshot:
    """The snapshot of the simulator's backups as served: odd ones odd, unplaceable ones out."""
    odd = odd or {}
    aggregator = Aggregator()
    for backup in simulator.backups():
        record: dict[str, Any] = {key: backup.get(key) for key in FIELDS if key in backup}
        kind = odd.get(str(backup["id"]))
        if kind in UNPLACEABLE:
            continue
        if kind is not None:
            name, _, value = kind.rpartition("_")
            record[name] = None if value == "null" else "NA"
        with contextlib.suppress(BackupRecordError):
            aggregator.add(record)
    return aggregator.snapshot()


def backups_of(status: ControllerStatus) -> BackupSnapshot:
    """The backups of the status's snapshot (a poll's picture also holds the inventory)."""
    assert status.snapshot is not None
    return status.snapshot.backups


def poll(poller: ControllerPoller) -> ControllerStatus:
    status = poller.poll_once()
    assert status.up, status.last_error
    return status


# --- a controller that serves fewer backups than asked --------------------------------------


def test_a_capped_limit_is_paged_by_what_was_served(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec(total_backups=2345, vms=60))
    simulator.faults.limit_cap = 100
    with closing(poller_for(simulator, page_size=1000, max_concurrency=3)) as poller:
        status = poll(poller)
    assert backups_of(status) == expected(simulator)
    assert backups_of(status).backups_seen == 2345
    limits = [limit for _, limit in simulator.stats.snapshot().pages]
    assert limits[0] == 1000
    assert set(limits[1:]) == {100}
    assert 24 <= len(limits) <= 26  # pages of 100 overlapping by 2, not a tenth of them


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize(
    "refused", [frozenset(), frozenset({"id"})], ids=["by id", "by created_at"]
)
def test_a_capped_limit_under_churn_never_double_counts_or_misses_a_survivor(
    start_simulator: Start, concurrency: int, refused: frozenset[str]
) -> None:
    # A controller that refuses sort=id is paged by created_at, where backups tie.
    simulator = start_simulator(FederationSpec(total_backups=3000, seed=11))
    simulator.faults.limit_cap = 150
    simulator.faults.refused_sorts = refused
    before = simulator.backup_ids()
    simulator.faults.churn_create_per_request = 30
    simulator.faults.churn_expire_per_request = 30
    ids: list[str] = []
    with closing(poller_for(simulator, page_size=1000, max_concurrency=concurrency)) as poller:
        poller._client.read(BACKUPS, PageCounter(BACKUPS, lambda b: ids.append(b["id"])))
    simulator.faults.churn_create_per_request = simulator.faults.churn_expire_per_request = 0
    assert [key for key, n in Counter(ids).items() if n > 1] == []
    assert (before & simulator.backup_ids()) - set(ids) == set()


def test_a_page_short_of_its_own_limit_still_fails_the_poll(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec(total_backups=500))
    with closing(poller_for(simulator, page_size=100)) as poller:
        good = poll(poller)
        simulator.faults.malformed = "short_page"
        failed = poller.poll_once()
    assert not failed.up
    assert failed.errors["decode"] == 1
    assert failed.snapshot is good.snapshot
    assert failed.last_error == (
        "page at offset 0 held 50 backups (limit 100) although count says 500"
    )


# --- odd records --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ODD_KINDS)
def test_odd_records_leave_the_rest_of_the_poll_exact(
    start_simulator: Start, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    simulator = start_simulator(FederationSpec(total_backups=700, vms=40, seed=3))
    # Every 97th backup, pages of 100 overlapping by 2: odd ones land near page boundaries.
    chosen = sorted(simulator.backup_ids())[5::97]
    simulator.faults.make_odd(kind, chosen)  # type: ignore[arg-type]
    with (
        closing(poller_for(simulator, page_size=100, max_concurrency=3)) as poller,
        caplog.at_level(logging.WARNING, logger="exporter.poller"),
    ):
        status = poll(poller)
    odd = dict.fromkeys(chosen, kind)
    assert backups_of(status) == expected(simulator, odd)
    unplaceable = len(chosen) if kind in UNPLACEABLE else 0
    assert status.unreadable_records == unplaceable
    assert status.snapshot is not None
    assert status.snapshot.backups_seen == 700 - unplaceable
    warnings = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    if not unplaceable:
        assert warnings == []
        return
    (warning,) = warnings  # once per poll, however many
    assert warning.startswith(f"controller quirky: {unplaceable} records could not be read")
    if kind == "no_state":
        assert f"backup {chosen[0]!r}: state is missing" in warning
    assert "PROTECTED" not in warning
    assert "created_at" not in warning


def test_a_backup_without_a_creation_time_is_never_the_newest(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec(total_backups=300, vms=10, seed=5))
    protected = [b for b in simulator.backups() if b["state"] == "PROTECTED"]
    times = Counter(str(b["created_at"]) for b in protected)
    # A cluster's newest PROTECTED backup, alone at its time.
    newest = max(
        (b for b in protected if times[str(b["created_at"])] == 1),
        key=lambda b: str(b["created_at"]),
    )
    simulator.faults.make_odd("created_at_na", [str(newest["id"])])
    with closing(poller_for(simulator)) as poller:
        status = poll(poller)
    assert backups_of(status) == expected(simulator, {str(newest["id"]): "created_at_na"})
    cluster = next(
        c for c in backups_of(status).clusters if c.name == newest["omnistack_cluster_name"]
    )
    assert cluster.newest_protected != seconds_of(str(newest["created_at"]))
    assert cluster.counts["PROTECTED"] == sum(
        1 for b in protected if b["omnistack_cluster_name"] == cluster.name
    )


def test_the_unreadable_records_gauge_on_metrics(start_simulator: Start) -> None:
    with Lab() as lab:
        simulator = lab.controller("odd", FederationSpec(vms=12, backups_per_vm=10))
        lab.controller("tidy", FederationSpec(vms=5, backups_per_vm=4))
        chosen = sorted(simulator.backup_ids())[3::40]
        simulator.faults.make_odd("number_record", chosen)
        exporter = lab.start_exporter()

        def polled() -> Any:
            scrape = exporter.scrape()
            return scrape if scrape.up("odd") == 1 and scrape.up("tidy") == 1 else None

        scrape = wait_until(polled, what="both controllers polled")
        assert scrape.value("simplivity_unreadable_records", controller="odd") == len(chosen)
        assert scrape.value("simplivity_unreadable_records", controller="tidy") == 0
        assert scrape.total(
            "simplivity_backups", controller="odd"
        ) == simulator.backup_count() - len(chosen)
        # Fixed on the controller: the next poll reads every record, and the gauge says so.
        simulator.faults.clear()
        scrape = wait_until(
            lambda: (
                (s := exporter.scrape()).value("simplivity_unreadable_records", controller="odd")
                == 0
                and s
            ),
            what="a poll without odd records",
        )
        assert scrape.total("simplivity_backups", controller="odd") == simulator.backup_count()


# --- too many simultaneous requests, pages that take too long -------------------------------


def test_502s_fall_from_poll_to_poll_and_the_values_stay_exact(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec(total_backups=3000, vms=50, seed=9))
    simulator.faults.max_in_flight = 2  # more than two requests at once: 502
    simulator.faults.request_cost_seconds = 0.005  # so that requests do overlap
    poller = poller_for(simulator, page_size=100, max_concurrency=8, max_retries=8)
    truth = expected(simulator)
    assert poller.status.concurrency == 8
    refused, paces = [], []
    try:
        for _ in range(5):
            before = simulator.stats.snapshot().refused_in_flight
            status = poll(poller)
            assert backups_of(status) == truth  # every 502 retried: nothing lost, nothing twice
            refused.append(simulator.stats.snapshot().refused_in_flight - before)
            paces.append(status.concurrency)
    finally:
        poller.close()
    # The first poll starts at 8 and halves at its first 502s; from then on the exporter stays
    # around what the controller takes, probing one more after each quiet poll.
    assert refused[0] > 0
    assert all(1 <= pace <= 3 for pace in paces), paces
    assert max(refused[1:]) < refused[0], refused
    assert 0 in refused[1:], refused


def test_a_504_makes_pages_smaller_and_quiet_polls_make_them_larger(
    start_simulator: Start,
) -> None:
    simulator = start_simulator(FederationSpec(total_backups=2000, vms=50, seed=4))
    simulator.faults.timeout_above_limit = 300  # a page above 300 takes the controller > 60 s
    truth = expected(simulator)
    sizes, refused = [], []
    with closing(poller_for(simulator, page_size=1000, max_concurrency=2)) as poller:
        for _ in range(3):
            before = len(simulator.stats.snapshot().pages)
            status = poll(poller)
            assert backups_of(status) == truth
            sizes.append(status.page_size)
            # The backups' pages refused (the inventory, read alongside, meets 504s of its own).
            asked = simulator.stats.snapshot().pages[before:]
            refused.append(sum(1 for _, limit in asked if limit > 300))
    # 1000 and 500 refused, 250 served; a poll of whole pages of 250: 350 next, refused, 175.
    assert sizes == [250, 350, 175]
    assert refused == [2, 0, 1]


def test_the_inventory_learns_its_own_page_size_and_remembers_it(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec(total_backups=2000, vms=600, seed=4))
    simulator.faults.timeout_above_limit = 300  # on every listing: the VMs' pages too
    poller = poller_for(simulator, page_size=1000, max_concurrency=2)
    live = sorted(str(vm["id"]) for vm in simulator.virtual_machines() if vm["state"] == "ALIVE")
    vm_pages, sizes = [], []
    try:
        for _ in range(3):
            before = len(simulator.stats.snapshot().pages_per_path.get(VIRTUAL_MACHINES.path, ()))
            status = poll(poller)
            assert status.snapshot is not None
            assert sorted(vm.vm_id for vm in status.snapshot.inventory.vms) == live
            sizes.append(status.page_size)
            asked = simulator.stats.snapshot().pages_per_path[VIRTUAL_MACHINES.path][before:]
            vm_pages.append(sorted({limit for _, limit in asked}, reverse=True))
    finally:
        poller.close()
    # The inventory's scanner halves its own pages at a 504 (1000, 500 refused, 250 served) and
    # starts the next poll where it ended: whole pages of 250 VMs make it 350, which the
    # policies' page after them meets as a 504 (175, for the next poll's VMs).
    assert vm_pages == [[1000, 500, 250], [250], [175]]
    assert sizes == [250, 350, 175]  # the backups', learnt from their own 504s


def test_at_the_floor_504s_fail_the_poll_and_keep_the_last_good_values(
    start_simulator: Start,
) -> None:
    simulator = start_simulator(FederationSpec(total_backups=500))
    with closing(poller_for(simulator, page_size=400, max_retries=1)) as poller:
        good = poll(poller)
        simulator.faults.timeout_above_limit = 50  # below the floor of 100
        failed = poller.poll_once()
    assert not failed.up
    assert failed.errors["http"] == 1
    assert failed.snapshot is good.snapshot
    assert failed.page_size == 100
    assert failed.last_error is not None
    assert failed.last_error.startswith("/api/backups answered HTTP 504")


# --- a proxy's HTML error pages ---------------------------------------------------------------


def test_a_proxys_html_error_page_gives_a_clean_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Lab() as lab:
        simulator = lab.controller("proxied", FederationSpec(vms=12, backups_per_vm=10))
        exporter = lab.start_exporter()
        wait_until(lambda: exporter.scrape().up("proxied") == 1, what="a first good poll")
        simulator.faults.html_error_statuses = frozenset({502, 503, 504})
        with caplog.at_level(logging.INFO):
            simulator.faults.fail_next(1000, status=503)
            scrape = wait_until(
                lambda: (s := exporter.scrape()).up("proxied") == 0 and s,
                what="a poll failed by the proxy",
            )
            simulator.faults.clear()
        assert scrape.errors("proxied")["http"] >= 1
        assert scrape.total("simplivity_backups", controller="proxied") == simulator.backup_count()
        status = next(s for s in exporter.poller.statuses() if s.name == "proxied")
        assert status.last_error == (
            "/api/backups answered HTTP 503: an HTML page, not the controller's own answer"
        )
        _, landing = exporter.get("/")
        assert b"an HTML page, not the controller&#x27;s own answer" in landing
        assert b"nginx" not in landing
        assert b"<center>" not in landing
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert "an HTML page" in logged
        assert "nginx" not in logged
        assert "<html" not in logged


def test_an_html_page_instead_of_json_is_named_not_quoted(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec(total_backups=100))
    simulator.faults.malformed = "not_json"
    with closing(poller_for(simulator)) as poller:
        failed = poller.poll_once()
    assert failed.errors["decode"] == 1
    assert failed.last_error is not None
    assert failed.last_error.startswith("/api/backups answered with an HTML page, not JSON (")
    assert "<" not in failed.last_error


# --- a controller that refuses a field it does not document ----------------------------------


@pytest.mark.parametrize("how", ["refused", "ignored"])
def test_a_controller_that_refuses_or_ignores_sort_by_id_is_paged_newest_first(
    start_simulator: Start, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    simulator = start_simulator(FederationSpec(total_backups=1500, vms=50, seed=5))
    if how == "refused":
        simulator.faults.refused_sorts = frozenset({"id"})
    else:  # served by name, descending (the default order)
        simulator.faults.ignored_sorts = frozenset({"id"})
    with (
        closing(poller_for(simulator, page_size=100, max_concurrency=3)) as poller,
        caplog.at_level(logging.WARNING, logger="exporter.scan"),
    ):
        first, second = poll(poller), poll(poller)
    assert backups_of(first) == backups_of(second) == expected(simulator)
    said = [r.getMessage() for r in caplog.records if "sort=id" in r.getMessage()]
    # Once per listing (not per poll): backups and VMs newest first, the small listings
    # (policies, hosts, clusters; an ignored sort goes unseen where by chance it did not
    # matter) unsorted in one page.
    by_path = Counter(message.split()[2] for message in said)
    assert set(by_path.values()) == {1}, said
    assert (
        {"/api/backups", "/api/virtual_machines"}
        <= set(by_path)
        <= {
            "/api/backups",
            "/api/virtual_machines",
            "/api/policies",
            "/api/hosts",
            "/api/omnistack_clusters",
        }
    )
    for message in said:
        assert f" {how} sort=id" in message
        newest_first = "created_at (newest first)" in message
        assert newest_first is ("/api/backups" in message or "/api/virtual_machines" in message)
    pages = simulator.stats.snapshot().pages_per_path
    assert len(pages["/api/backups"]) >= 15


def test_a_field_the_controller_refuses_is_dropped_and_the_poll_succeeds(
    start_simulator: Start, caplog: pytest.LogCaptureFixture
) -> None:
    # A strict REST API 1.13 controller (no external stores) whose version the exporter cannot
    # read: it asks for the newest version's fields, external_store_name among them.
    simulator = start_simulator(FederationSpec(vms=30), api_version="1.13")
    simulator.routes["/api/version"] = Endpoint(
        ("GET",), lambda ex: ex.error(404, "NotFound", "No handler found for /api/version")
    )
    with (
        closing(poller_for(simulator)) as poller,
        caplog.at_level(logging.INFO, logger="exporter"),
    ):
        first = poll(poller)
        refused = simulator.stats.snapshot().status_counts.get(400, 0)
        second = poll(poller)
    assert refused >= 1  # the first poll met the 400, and asked again without fields=
    assert simulator.stats.snapshot().status_counts.get(400, 0) == refused  # remembered
    assert backups_of(first) == backups_of(second) == expected(simulator)
    said = [r.getMessage() for r in caplog.records if "refused the fields" in r.getMessage()]
    assert len(said) == 1
    assert "/api/backups" in said[0]
    assert "external_store_name" in said[0]  # the controller's own words
    assert second.versions.rest_api == ""
