"""A hostile controller cannot make the exporter export (or compute) without bound (issue 18).

Polls go through the exporter's real client to the simulator on 127.0.0.1; /metrics is
scraped over HTTP from an exporter running in this process. A listing that says or shows
more records than ``poll.max_backups`` / ``poll.max_vms``, or a page holding more than its
``limit``, fails the poll with ``decode``; names are cut to 256 characters, ids that a label
cannot carry stay apart, and a policy too costly to evaluate is an unreadable record.
"""

from __future__ import annotations

import json
import random
import re
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter import backups, schedule
from exporter.backups import Aggregator
from exporter.config import PollConfig
from exporter.inventory import InventoryRead
from exporter.model import (
    MAX_LABEL_LENGTH,
    ControllerStatus,
    DecodeError,
    PageRequest,
    RecordError,
    label_value,
)
from exporter.pages import PageCounter
from exporter.poller import ControllerPoller, connect
from exporter.scan import Scanner
from exporter.schedule import Days, Rule, RuleCostError, Schedule, check_cost
from exporter.simulator import FederationSpec, SimulatedController
from tests.conftest import wait_until
from tests.live_exporter import Lab, controller_config
from tests.promtool import promtool
from tests.test_scan import VMS, Listing

POLL = PollConfig(page_size=20, max_concurrency=2, max_retries=0, timeout_seconds=10)
MEBIBYTE = 1 << 20
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def poll_once(simulator: SimulatedController, poll: PollConfig = POLL) -> ControllerStatus:
    poller = ControllerPoller(controller_config("hostile", simulator), poll, client_factory=connect)
    try:
        return poller.poll_once()
    finally:
        poller.close()


# --- how many records ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/backups", "/api/virtual_machines"])
def test_a_page_with_more_records_than_asked_fails_the_poll_with_decode(
    start_simulator: Callable[..., SimulatedController], path: str
) -> None:
    simulator = start_simulator(FederationSpec(vms=40, backups_per_vm=3))
    simulator.faults.paths = frozenset({path})
    simulator.faults.malformed = "oversized_page"
    status = poll_once(simulator)
    assert not status.up
    assert status.errors["decode"] == 1
    assert status.last_error is not None
    assert re.fullmatch(
        rf"{path} answered \d+ \w+ to a page of at most 20 \(offset 0\)", status.last_error
    )


def test_a_listing_that_never_ends_fails_at_its_first_page_with_memory_bounded(
    start_simulator: Callable[..., SimulatedController],
) -> None:
    simulator = start_simulator(FederationSpec(vms=12, backups_per_vm=10))
    simulator.faults.malformed = "endless_listing"  # count 10^18, every page full of new ids
    tracemalloc.start()
    try:
        started = time.monotonic()
        status = poll_once(simulator, PollConfig(page_size=3000, max_retries=0))
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not status.up
    assert status.errors["decode"] == 1
    assert status.last_error == (
        "/api/backups says it holds 1000000000000000000 backups, more than the 5000000 the "
        "exporter reads from one controller (poll.max_backups): a broken controller, or a "
        "setting to raise"
    )
    assert simulator.stats.snapshot().pages_per_path["/api/backups"] == ((0, 3000),)
    assert peak < 64 * MEBIBYTE  # one page of 3000 records, and the simulator's own
    assert took < POLL.timeout_seconds  # one request, not thousands


def test_a_controller_holding_more_than_the_setting_fails_and_says_which_setting(
    start_simulator: Callable[..., SimulatedController],
) -> None:
    simulator = start_simulator(FederationSpec(vms=12, backups_per_vm=10))
    alive = sum(vm["state"] == "ALIVE" for vm in simulator.virtual_machines())
    status = poll_once(simulator, PollConfig(page_size=50, max_retries=0, max_vms=alive - 1))
    assert status.errors["decode"] == 1
    assert status.last_error is not None
    assert status.last_error.startswith(
        f"/api/virtual_machines says it holds {alive} virtual_machines"
    )
    assert "(poll.max_vms)" in status.last_error
    generous = poll_once(simulator, PollConfig(page_size=50, max_retries=0, max_vms=alive))
    assert generous.up


class UnderCounted(Listing):
    """A listing whose ``count`` says fewer records than its pages hold."""

    def get_page(self, page: PageRequest, *, retry_too_slow: bool = True) -> bytes:
        document = json.loads(super().get_page(page, retry_too_slow=retry_too_slow))
        document["count"] = 50
        return json.dumps(document).encode()


def test_a_listing_that_lists_more_than_the_bound_fails_even_if_its_count_does_not() -> None:
    listing = UnderCounted(200)
    scanner = Scanner(listing, page_size=40, max_concurrency=1)
    capped = replace(VMS, max_records=60, max_records_setting="poll.max_vms")
    with pytest.raises(DecodeError) as raised:
        scanner.read(capped, PageCounter(capped, lambda item: None))
    assert str(raised.value) == (
        "/api/virtual_machines listed 79 virtual_machines, more than the 60 the exporter reads "
        "from one controller (poll.max_vms): a broken controller, or a setting to raise"
    )


@pytest.mark.parametrize(
    ("bound", "field", "message"),
    [
        ("MAX_DESTINATIONS", "omnistack_cluster_name", "more than 3 clusters and external stores"),
        ("MAX_VMS_WITH_BACKUPS", "virtual_machine_id", "more than 3 VMs"),
    ],
)
def test_backups_naming_too_many_clusters_or_vms_fail_with_bounded_memory(
    monkeypatch: pytest.MonkeyPatch, bound: str, field: str, message: str
) -> None:
    monkeypatch.setattr(backups, bound, 3)
    aggregator = Aggregator()
    base = {"state": "PROTECTED", "omnistack_cluster_name": "c", "virtual_machine_id": "v"}
    for number in range(3):
        aggregator.add({**base, "id": f"b{number}", field: f"new-{number}"})
    with pytest.raises(DecodeError, match=message):
        aggregator.add({**base, "id": "b3", field: "new-3"})
    aggregator.add({**base, "id": "b4", field: "new-0"})  # one already known: counted


# --- label values ----------------------------------------------------------------------------


@given(st.text(), st.text())
def test_label_values_are_bounded_and_distinct_values_stay_distinct(
    first: str, second: str
) -> None:
    assert len(label_value(first)) <= MAX_LABEL_LENGTH
    label_value(first).encode("utf-8")  # raises on a lone surrogate left
    assert label_value(label_value(first)) == label_value(first)
    if first != second:
        assert label_value(first) != label_value(second)


def series(text: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def test_megabyte_names_and_surrogate_twins_give_bounded_metrics_and_no_duplicate_series() -> None:
    with Lab() as lab:
        simulator = lab.controller("hostile", FederationSpec(vms=12, backups_per_vm=4))
        vms = sorted(
            (vm for vm in simulator.virtual_machines() if vm["state"] == "ALIVE"),
            key=lambda vm: str(vm["id"]),
        )
        for number, vm in enumerate(vms[:5]):
            vm["name"] = f"{number}" * MEBIBYTE
        vms[5]["omnistack_cluster_name"] = "c" * MEBIBYTE
        vms[5]["datastore_name"] = "d" * MEBIBYTE
        # Two ids that differ only in a lone surrogate (JSON's "\ud800" and "\udbff"), sorted
        # last, with the same name: they used to become one duplicate series.
        twin = str(vms[-2]["id"])
        vms[-2]["id"], vms[-1]["id"] = twin + "\ud800", twin + "\udbff"
        vms[-1]["name"] = vms[-2]["name"]
        simulator.set_inventory(virtual_machines=vms)
        exporter = lab.start_exporter(
            PollConfig(interval_seconds=1, deadline_seconds=60, timeout_seconds=10)
        )
        scrape = wait_until(
            lambda: (s := exporter.scrape()).up("hostile") == 1 and s, what="a good poll"
        )
    text = scrape.text
    assert len(text.encode()) < MEBIBYTE  # five 1 MiB names made a 47 MB /metrics
    every = series(text)
    assert not [key for key, times in Counter(every).items() if times > 1]
    assert all(len(value) <= MAX_LABEL_LENGTH for _, labels in every for _, value in labels)
    twins = {
        labels["vm_id"]
        for labels, _ in scrape.matching("simplivity_vm_info", controller="hostile")
        if labels["vm_id"].startswith(twin)
    }
    assert twins == {label_value(twin + "\ud800"), label_value(twin + "\udbff")}
    # Five names, a cluster and a datastore were cut.
    assert scrape.value("simplivity_label_values_truncated", controller="hostile") == 7
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- policy rules ----------------------------------------------------------------------------


def costly_rules(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """Every-minute rules, each on its own weekdays and days of the month: before issue 18,
    3,000 of them took 11 s of CPU to evaluate."""
    rng = random.Random(seed)
    return [
        {
            "number": number,
            "frequency": 1,
            "days": ",".join([*rng.sample(WEEKDAYS, 3), *map(str, rng.sample(range(1, 32), 5))]),
            "start_time": f"{rng.randrange(24):02d}:{rng.randrange(60):02d}",
            "end_time": "00:00",
            "destination_name": "<Local>",
        }
        for number in range(1, count + 1)
    ]


def test_a_costly_rule_set_is_refused_once_and_the_refusal_cached() -> None:
    rules = [
        Rule(Schedule(1, Days.parse(f"{day},Mon"), day, day), "<Local>") for day in range(1, 30)
    ]
    hits = schedule._bounded_longest_gap.cache_info().hits
    started = time.process_time()
    with pytest.raises(RuleCostError, match="too much work to evaluate"):
        check_cost(rules)
    first = time.process_time() - started
    with pytest.raises(RuleCostError):
        check_cost(list(reversed(rules)))  # the same rules: the same refusal, from the cache
    assert schedule._bounded_longest_gap.cache_info().hits == hits + 1
    assert first < 2.0  # the budget is a few tenths of a second of work
    check_cost(rules[:3])  # a few such rules are evaluated


def test_many_costly_policies_cost_a_poll_a_bounded_amount_of_work() -> None:
    """Each under the bound for one policy, together over the bound for a poll: the first are
    judged, the rest refused without being evaluated."""
    read = InventoryRead()
    refused: list[str] = []
    started = time.process_time()
    for number in range(300):  # 300 x 0.07 s of CPU each before the poll's bound
        record = {"id": f"p{number:04d}", "name": f"P{number}", "rules": costly_rules(10, number)}
        try:
            read.add_policy(record)
        except RecordError as error:
            refused.append(str(error))
    took = time.process_time() - started
    assert 0 < len(refused) < 300
    assert refused[-1] == (
        "policy 'p0299': not evaluated, the policies before it took all the work a poll spends "
        "on policies"
    )
    assert took < 10.0  # about a second of work; 15 s without the poll's bound
    judged = read.inventory(None).policies
    assert len(judged) == 300 - len(refused)
    assert all(policy.intervals for policy in judged)


def test_a_policy_too_costly_to_evaluate_is_counted_unreadable_quickly(
    start_simulator: Callable[..., SimulatedController],
) -> None:
    simulator = start_simulator(FederationSpec(vms=12, backups_per_vm=4))
    policies = simulator.policies()
    costly = {"id": "ffffffff-0000-4000-8000-costly000001", "name": "Crafted"}
    policies.append({**policies[0], **costly, "rules": costly_rules(3000)})
    vms = simulator.virtual_machines()
    victim = vms[0]
    victim.update(policy_id=costly["id"], policy_name=costly["name"])
    simulator.set_inventory(virtual_machines=vms, policies=policies)
    started = time.process_time()
    status = poll_once(simulator)
    assert time.process_time() - started < 5.0  # 11 s of CPU before issue 18
    assert status.up
    assert status.unreadable_records == 1
    assert status.snapshot is not None
    judged = next(p for p in status.snapshot.protection if p.vm.vm_id == victim["id"])
    assert judged.status == "not_scheduled"
    assert "Crafted" not in {policy.name for policy in status.snapshot.inventory.policies}
