"""The simulated federation living in time (churn), over real sockets on 127.0.0.1."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.backups import FIELDS, Aggregator
from exporter.config import PollConfig
from exporter.model import BackupSnapshot
from exporter.poller import ControllerPoller
from exporter.simulator import Churn, FederationSpec, ManualClock, SimulatedController, cli
from exporter.simulator.catalog import BACKUP_LISTING
from exporter.simulator.churn import KINDS, LIFE_OF_A_BACKUP
from exporter.simulator.federation import generate_federation
from exporter.simulator.listing import Collection
from exporter.simulator.store import GENERATED, Store, parse_query
from tests.live_exporter import controller_config, fast_retries
from tests.test_simulator import login

Json = dict[str, Any]
HOUR = 3600


Start = Callable[..., SimulatedController]


@pytest.fixture
def start(start_simulator: Start) -> Start:
    def start(*args: Any, **kwargs: Any) -> SimulatedController:
        # Tokens live as long as the test: the clock moves hours at a time.
        kwargs.setdefault("idle_timeout_seconds", 10**9)
        kwargs.setdefault("absolute_timeout_seconds", 10**9)
        return start_simulator(*args, **kwargs)

    return start


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Client:
    """A logged-in session on one simulated controller."""

    def __init__(self, controller: SimulatedController) -> None:
        self.controller = controller
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {login(controller, self.session)}"

    def get(self, path: str, **params: object) -> Json:
        answer = self.session.get(self.controller.url + path, params=params, timeout=30)  # type: ignore[arg-type]
        assert answer.status_code == 200, answer.text
        body: Json = answer.json()
        return body

    def backups(self, **params: object) -> list[Json]:
        """Every page of a backups listing."""
        items: list[Json] = []
        while True:
            page = self.get("/api/backups", offset=len(items), limit=5000, **params)
            items += page["backups"]
            if len(items) >= page["count"] or not page["backups"]:
                return items

    def count(self, **params: object) -> int:
        count: int = self.get("/api/backups", limit=1, **params)["count"]
        return count


def test_a_request_after_the_clock_moved_sees_new_backups_and_their_states(start: Start) -> None:
    clock = ManualClock()
    controller = start(FederationSpec(vms=60), clock=clock, churn=Churn.quiet())
    client = Client(controller)
    before = {b["id"] for b in client.backups(fields="id")}
    clock.advance(HOUR)  # every hourly policy runs once
    listed = client.backups()
    new = [b for b in listed if b["id"] not in before]
    changes = controller.changes()
    assert len(new) == changes["scheduled"] > 0
    assert {b["created_at"] for b in new} <= {b["created_at"] for b in listed}
    assert all(b["created_at"] > "2023-11-14T22:13:20Z" for b in new)
    assert {b["state"] for b in new} <= {"QUEUED", "SAVING", "PROTECTED", "FAILED"}
    assert changes["protected"] > 0


# -- a standing clock, a seed --------------------------------------------------------------------

LISTINGS = ("/api/virtual_machines", "/api/policies", "/api/hosts", "/api/omnistack_clusters")


def everything(client: Client) -> Json:
    """What a full read of the controller gives: every listing in two orders, and the report."""
    return {
        "backups": client.backups(sort="id", order="ascending"),
        "backups_by_created": client.backups(sort="created_at"),
        **{
            path: client.get(path, limit=5000, state="ALIVE,REMOVED,DELETED")
            if path == "/api/virtual_machines"
            else client.get(path, limit=5000)
            for path in LISTINGS
        },
        "report": client.get("/api/policies/policy_schedule_report"),
    }


#: Every kind of change, many times an hour on a small federation.
BUSY = Churn().with_rates(dict.fromkeys(Churn.RATES, 12.0))


def test_while_the_clock_stands_still_every_answer_stays_the_same(start: Start) -> None:
    clock = ManualClock()
    controller = start(FederationSpec(vms=80), clock=clock, churn=BUSY)
    client = Client(controller)
    for _ in range(3):
        clock.advance(1800)
        first = everything(client)
        changes = controller.changes()
        assert everything(client) == first
        assert controller.changes() == changes
        assert controller.backups() == controller.backups()
    assert sum(changes.values()) > 100


def test_the_same_seed_and_the_same_moves_of_the_clock_give_the_same_federation(
    start: Start,
) -> None:
    def run(seed: int) -> tuple[Json, dict[str, int]]:
        clock = ManualClock()
        controller = start(FederationSpec(vms=50, seed=seed), clock=clock, churn=BUSY)
        client = Client(controller)
        for seconds in (300, 3600, 60, 7200):
            clock.advance(seconds)
            client.count()
        return everything(client), controller.changes()

    first, again, other = run(7), run(7), run(8)
    assert again == first
    assert other[0]["backups"] != first[0]["backups"]
    assert sum(first[1].values()) > 100


# -- each kind of change, at its rate ------------------------------------------------------------

RATE = 60.0  # per hour
HOURS = 2


def by_id(items: list[Json]) -> dict[str, Json]:
    return {item["id"]: item for item in items}


def check_effect(kind: str, n: int, before: Json, after: Json, changes: dict[str, int]) -> None:
    """What ``n`` changes of ``kind`` did to the listings, as a client sees it."""
    old, new = by_id(before["backups"]), by_id(after["backups"])
    added = [b for i, b in new.items() if i not in old]
    kept = [(old[i], b) for i, b in new.items() if i in old]
    vms_before = by_id(before["/api/virtual_machines"]["virtual_machines"])
    vms_after = by_id(after["/api/virtual_machines"]["virtual_machines"])
    if kind == "retention_changed":
        moved = [b for a, b in kept if a["expiration_time"] != b["expiration_time"]]
        assert 0 < len(moved) <= n
        assert all(b["expiration_time"] != "NA" for b in moved)
    elif kind == "locked":
        assert [b["expiration_time"] for a, b in kept if a != b] == ["NA"] * n
    elif kind == "deleted":
        assert len(old) - len(new) == n + changes.get("expired", 0)
        assert not added
    elif kind == "manual_backup":
        assert len(added) == n
        assert {(b["type"], b["expiration_time"]) for b in added} == {("MANUAL", "NA")}
        assert all(b["name"].startswith(b["virtual_machine_name"] + "-backup-") for b in added)
    elif kind == "manual_copy":
        assert len(added) == n
        for copy in added:
            originals = [
                b
                for b in new.values()
                if (b["name"], b["virtual_machine_id"], b["size"])
                == (copy["name"], copy["virtual_machine_id"], copy["size"])
                and b["omnistack_cluster_name"] != copy["omnistack_cluster_name"]
            ]
            assert originals, copy
    elif kind == "lost":
        assert [b["state"] for a, b in kept if a != b] == ["DELETED"] * n
    elif kind == "vm_created":
        fresh = [v for i, v in vms_after.items() if i not in vms_before]
        assert len(fresh) == n
        assert {v["state"] for v in fresh} == {"ALIVE"}
    elif kind == "vm_removed":
        gone = {i for i, v in vms_after.items() if v["state"] != vms_before[i]["state"]}
        assert len(gone) == n
        assert {vms_after[i]["state"] for i in gone} == {"REMOVED"}
        theirs = [b for b in new.values() if b["virtual_machine_id"] in gone]
        assert theirs
        assert {b["virtual_machine_state"] for b in theirs} == {"REMOVED"}
    elif kind == "vm_renamed":
        renamed = {i for i, v in vms_after.items() if v["name"] != vms_before[i]["name"]}
        assert 0 < len(renamed) <= n
        for backup in new.values():
            vm_id = backup["virtual_machine_id"]
            if vm_id in renamed:
                assert backup["virtual_machine_name"] == vms_after[vm_id]["name"]
    elif kind == "vm_moved":
        switched = [i for i, v in vms_after.items() if v["policy_id"] != vms_before[i]["policy_id"]]
        assert 0 < len(switched) <= n
    elif kind == "policy_edited":
        assert before["/api/policies"] != after["/api/policies"]
        assert before["report"] != after["report"] or n < 10
    elif kind == "host_suspended":
        hosts = zip(before["/api/hosts"]["hosts"], after["/api/hosts"]["hosts"], strict=True)
        toggled = [b for a, b in hosts if a["policy_enabled"] != b["policy_enabled"]]
        assert toggled
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(("rate", "kind"), list(Churn.RATES.items()))
def test_each_kind_of_random_change_happens_at_its_rate(rate: str, kind: str, start: Start) -> None:
    churn = replace(Churn.quiet().with_rates({rate: RATE}), scheduled=False)
    clock = ManualClock()
    controller = start(FederationSpec(vms=300), clock=clock, churn=churn)
    client = Client(controller)
    before = everything(client)
    clock.advance(HOURS * HOUR)
    after = everything(client)
    changes = controller.changes()
    n = changes.get(kind, 0)
    if kind == "host_suspended":
        n += changes.get("host_resumed", 0)
    mean = RATE * HOURS
    assert mean - 5 * math.sqrt(mean) <= n <= mean + 5 * math.sqrt(mean), changes
    others = set(changes) - {kind, "host_resumed", "expired"} - set(LIFE_OF_A_BACKUP)
    assert not others, changes  # nothing else happened: no scheduled backup, no other kind
    check_effect(kind, n, before, after, changes)


# -- scheduled backups and their states --------------------------------------------------------


def every_day_minutes(policy: Json) -> int | None:
    """Backups a day of a policy whose rules all run the whole day, every day; else None."""
    total = 0
    for rule in policy["rules"]:
        whole_day = rule["start_time"] == rule["end_time"] == "00:00"
        if rule["days"].lower() != "all" or not whole_day or 1440 % rule["frequency"]:
            return None
        total += 1440 // rule["frequency"]
    return total or None


def test_scheduled_backups_follow_each_vms_policy(start: Start) -> None:
    clock = ManualClock()
    controller = start(FederationSpec(vms=60, roles=False), clock=clock, churn=Churn.quiet())
    client = Client(controller)
    before = {b["id"] for b in client.backups(fields="id")}
    for _ in range(24):
        clock.advance(HOUR)
        client.count()
    new = [b for b in client.backups() if b["id"] not in before]
    vms = client.get("/api/virtual_machines", limit=5000)["virtual_machines"]
    policies = by_id(client.get("/api/policies", limit=5000)["policies"])
    checked = 0
    for vm in vms:
        per_day = every_day_minutes(policies[vm["policy_id"]])
        if per_day is None:
            continue
        theirs = [b for b in new if b["virtual_machine_id"] == vm["id"]]
        assert len(theirs) == per_day, vm["name"]
        assert {b["type"] for b in theirs} == {"POLICY"}
        checked += 1
    assert checked > 20
    assert len(new) == controller.changes()["scheduled"]
    # created_at is the scheduled second: whole hours (the clusters' offsets are whole hours)
    assert {b["created_at"][13:] for b in new} == {":00:00Z"}


def test_a_new_backup_goes_queued_saving_then_protected_and_a_dr_copy_replicates(
    start: Start,
) -> None:
    clock = ManualClock(1_700_002_800 - 10)  # ten seconds before a whole hour
    churn = replace(Churn.quiet(), failed_share=0.0)
    spec = FederationSpec(vms=120, roles=False, replicated_share=1.0)
    controller = start(spec, clock=clock, churn=churn)
    client = Client(controller)
    old = {b["id"] for b in client.backups(fields="id")}
    seen: dict[str, list[str]] = {}
    sent: dict[str, list[int]] = {}
    for seconds in (10, 5, 30, 60, 120, 300, 600, 900, 1800):
        clock.advance(seconds)
        for b in client.backups(created_after="2023-11-14T22:50:00Z"):
            if b["id"] not in old:
                states = seen.setdefault(b["id"], [])
                if not states or states[-1] != b["state"]:
                    states.append(b["state"])
                sent.setdefault(b["id"], []).append(b["sent"])
    assert seen
    for backup_id, states in seen.items():
        assert states[-1] == "PROTECTED", states
        assert set(states) <= {"QUEUED", "SAVING", "PROTECTED"}
        assert states == sorted(states, key=["QUEUED", "SAVING", "PROTECTED"].index)
        assert sent[backup_id] == sorted(sent[backup_id])  # sent only grows
    assert any(states[0] == "QUEUED" for states in seen.values())
    final = by_id(client.backups(created_after="2023-11-14T22:50:00Z"))
    copies = [final[i] for i in seen if final[i]["sent"] > 0]
    assert copies
    for copy in copies:
        assert copy["sent_completion_time"] > copy["created_at"]
        assert copy["sent_duration"] > 0
    assert any(len(set(sent[c["id"]])) > 2 for c in copies)  # 0, part of it, all of it
    changes = controller.changes()
    assert changes["replicated"] == len(copies)
    assert changes["protected"] == len(seen)


# -- expiry ---------------------------------------------------------------------------------------


def test_a_backup_disappears_at_its_expiration_time_within_the_lag(start: Start) -> None:
    clock = ManualClock()
    lag = 600
    churn = replace(Churn.quiet(), scheduled=False, expiry_lag_seconds=lag)
    # More hourly backups than a week's retention holds: the oldest expire a day from now.
    spec = FederationSpec(vms=30, backups_per_vm=200)
    controller = start(spec, clock=clock, churn=churn)
    client = Client(controller)
    total = client.count()
    lagging = 0
    for _ in range(40):
        clock.advance(HOUR)
        now, past_lag = utc(clock()), utc(clock() - lag - 1)
        assert client.count(expires_before=past_lag) == 0
        lagging += client.count(expires_before=now)
        listed = client.backups(fields="id,expiration_time")
        assert not [
            b for b in listed if b["expiration_time"] != "NA" and b["expiration_time"] <= past_lag
        ]
    expired = controller.changes()["expired"]
    assert expired > 100
    assert client.count() == total - expired
    assert lagging > 0  # some were still listed past their expiration_time


# -- filters, counts and orders while the federation changes -----------------------------------

#: filter -> (the field it bounds, whether the bound is a lower one)
TIME_BOUNDS = {
    "created_after": ("created_at", True),
    "created_before": ("created_at", False),
    "expires_after": ("expiration_time", True),
    "expires_before": ("expiration_time", False),
}


def matches(backup: Json, filters: dict[str, str]) -> bool:
    """The simulator's documented reading of a filter (inclusive bounds; "NA" matches none)."""
    for name, value in filters.items():
        if name in TIME_BOUNDS:
            field, lower = TIME_BOUNDS[name]
            text = backup[field]
            if text == "NA" or (text < value if lower else text > value):
                return False
        elif str(backup[name]) != value:
            return False
    return True


def filter_sets(backups: list[Json], now: float) -> list[dict[str, str]]:
    """Filters an incremental poll may send: by state, destination, VM, time bounds, mixed."""
    sets: list[dict[str, str]] = [{}]
    sets += [{"state": s} for s in sorted({b["state"] for b in backups})]
    sets += [{"state": "QUEUED"}, {"state": "SAVING"}]
    clusters = sorted({b["omnistack_cluster_name"] for b in backups} - {""})
    stores = sorted({b["external_store_name"] for b in backups} - {""})
    sets += [{"omnistack_cluster_name": c} for c in clusters]
    sets += [{"external_store_name": s} for s in stores]
    sets += [{"virtual_machine_id": b["virtual_machine_id"]} for b in backups[:: len(backups) // 3]]
    for t in (now - 2 * HOUR, now - 1800, now, 1_700_000_000):
        sets += [{name: utc(t)} for name in TIME_BOUNDS]
    sets += [
        {"expires_after": "1970-01-01T00:00:00Z"},
        {"created_after": utc(now - HOUR), "created_before": utc(now - 1800)},
        {"created_after": utc(now - 3 * HOUR), "state": "PROTECTED"},
        {"expires_before": utc(now + DAY_SECONDS), "omnistack_cluster_name": clusters[0]},
    ]
    return sets


DAY_SECONDS = 86400


def test_every_filter_and_its_limit_1_count_follow_the_changes(start: Start) -> None:
    clock = ManualClock()
    controller = start(FederationSpec(vms=80), clock=clock, churn=BUSY)
    client = Client(controller)
    asked: list[dict[str, str]] = []
    for step in (300, 60, 3600, 1800, 7200, 300):
        backups = client.backups()
        # the filters of earlier steps again (their views are kept up to date, not rebuilt)
        asked += filter_sets(backups, clock())
        for filters in asked:
            expected = [b for b in backups if matches(b, filters)]
            assert client.count(**filters) == len(expected), filters
            if len(expected) < 400:
                listed = client.backups(sort="created_at", order="ascending", **filters)
                assert [b["id"] for b in listed] == [
                    b["id"] for b in sorted(expected, key=lambda b: (b["created_at"], b["id"]))
                ], filters
        clock.advance(step)
    assert sum(controller.changes().values()) > 500


SORTS = ("name", "id", "created_at", "expiration_time", "state", "size", "virtual_machine_name")


def test_every_order_follows_the_changes(start: Start) -> None:
    clock = ManualClock()
    controller = start(FederationSpec(vms=80), clock=clock, churn=BUSY)
    client = Client(controller)
    for step in (0, 300, 3600, 7200):
        clock.advance(step)
        backups = client.backups()
        for sort in SORTS:
            ordered = sorted(backups, key=lambda b: (b[sort], b["id"]))
            expected = [b["id"] for b in ordered]
            ascending = client.backups(sort=sort, order="ascending", fields="id")
            descending = client.backups(sort=sort, order="descending", fields="id")
            assert [b["id"] for b in ascending] == expected, sort
            assert [b["id"] for b in descending] == expected[::-1], sort


def test_the_inventory_listings_follow_the_changes(start: Start) -> None:
    clock = ManualClock()
    controller = start(FederationSpec(vms=80), clock=clock, churn=BUSY)
    client = Client(controller)
    for _ in range(4):
        clock.advance(2 * HOUR)
        alive = client.get("/api/virtual_machines", limit=5000)["virtual_machines"]
        every = client.get("/api/virtual_machines", limit=5000, state="ALIVE,REMOVED,DELETED")
        assert {v["id"] for v in alive} == {
            v["id"] for v in every["virtual_machines"] if v["state"] == "ALIVE"
        }
        assert client.get("/api/virtual_machines", limit=1)["count"] == len(alive)
        assert sorted(every["virtual_machines"], key=lambda v: v["id"]) == sorted(
            controller.virtual_machines(), key=lambda v: str(v["id"])
        )
        assert client.get("/api/hosts", limit=5000)["hosts"] == sorted(
            controller.hosts(), key=lambda h: (str(h["name"]), str(h["id"])), reverse=True
        )
        assert client.get("/api/policies/policy_schedule_report") == controller.schedule_report()
    changes = controller.changes()
    for kind in ("vm_created", "vm_removed", "vm_renamed", "vm_moved", "host_suspended"):
        assert changes.get(kind, 0) > 0, kind


# -- the command line ---------------------------------------------------------------------------


def test_the_command_line_sets_churn_and_refuses_an_unknown_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = cli._parser()
    assert cli._churn(parser.parse_args([]), 5000) is None
    assert cli._churn(parser.parse_args(["--churn"]), 10_000) == Churn.for_vms(10_000)
    args = parser.parse_args(
        [
            "--churn-rate",
            "vm-creations=30",
            "--churn-rate",
            "deletions=0",
            "--churn-failed-share",
            "0.5",
            "--churn-expiry-lag",
            "0",
            "--no-scheduled-backups",
        ]
    )
    churn = cli._churn(args, 5000)
    assert churn is not None
    assert (churn.vm_creations, churn.deletions, churn.locks) == (30.0, 0.0, Churn().locks)
    assert (churn.failed_share, churn.expiry_lag_seconds, churn.scheduled) == (0.5, 0, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--churn-rate", "meteor-strikes=1"])
    assert "meteor-strikes" in capsys.readouterr().err


def test_a_backup_listed_late_comes_with_its_scheduled_created_at(start: Start) -> None:
    clock = ManualClock(1_700_002_800 - 10)  # ten seconds before a whole hour
    churn = replace(Churn.quiet(), late_listing_seconds=240)
    controller = start(FederationSpec(vms=60, roles=False), clock=clock, churn=churn)
    client = Client(controller)
    listed = []
    for _ in range(6):
        clock.advance(60)
        listed.append(client.count(created_after="2023-11-14T23:00:00Z"))
    assert listed == sorted(listed)
    assert listed[0] < listed[-1] == controller.changes()["scheduled"]
    assert {b["created_at"] for b in client.backups(created_after="2023-11-14T23:00:00Z")} == {
        "2023-11-14T23:00:00Z"
    }


# -- the store's incremental orders and views ----------------------------------------------------


GENERATED_ROWS = generate_federation(FederationSpec(vms=12), 1_700_000_000).rows
STORE_QUERIES = (
    "sort=name",
    "sort=created_at&order=ascending",
    "sort=expiration_time",
    "sort=state",
    "sort=size",
    "state=PROTECTED",
    "state=SAVING&sort=created_at",
    "omnistack_cluster_name=Boston DC",
    "expires_after=2023-11-20T00:00:00Z",
    "expires_before=2023-12-01T00:00:00Z&sort=id",
    "created_after=2023-11-14T12:00:00Z&sort=created_at",
    "created_before=2023-11-14T12:00:00Z&state=PROTECTED",
)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_orders_and_views_changed_in_place_or_rebuilt_equal_a_fresh_sort(
    data: st.DataObject,
) -> None:
    """Whatever the changes (few: in place; many: one copy; a changed record in its place or
    moved), every order and filtered view equals what sorting and filtering anew gives."""
    store = Store(GENERATED, list(GENERATED_ROWS))
    collection = Collection(BACKUP_LISTING, store)
    queries = [parse_query(q, BACKUP_LISTING.query, collection.known) for q in STORE_QUERIES]
    for query in queries:
        store.matching(query, "ovc")
    rows = list(store.rows)
    touched = data.draw(st.lists(st.sampled_from(rows), unique_by=id, max_size=len(rows)))
    split = data.draw(st.integers(0, len(touched)))
    removed, changed = touched[:split], touched[split:]
    states = st.sampled_from(("QUEUED", "SAVING", "PROTECTED", "FAILED", "DELETED"))
    expirations = st.sampled_from(("NA", "2023-11-20T00:00:00Z", "2023-11-25T10:00:00Z"))
    replacements = [
        (row, (*row[:2], data.draw(states), *row[3:5], data.draw(expirations), *row[6:]))
        for row in changed
    ]
    fresh = [
        (f"ffffffff-{n:04d}-4000-8000-000000000000", *row[1:])
        for n, row in enumerate(data.draw(st.lists(st.sampled_from(rows), max_size=200)))
    ]
    store.apply(
        removed + [old for old, _ in replacements], [new for _, new in replacements] + fresh
    )
    gone = {id(row) for row in touched}
    final = [row for row in rows if id(row) not in gone] + [n for _, n in replacements] + fresh
    anew = Store(GENERATED, final)
    for query in queries:
        assert store.matching(query, "ovc") == anew.matching(query, "ovc"), query
    assert store.rows == anew.rows


# -- the exporter's real poll against a living federation ---------------------------------------


def test_the_exporters_full_poll_reads_the_simulators_truth_at_each_moment(
    start_simulator: Start,
) -> None:
    """The clock is shared: every page of one poll sees the same federation (the clock stands
    still while the poll runs), and that federation is the simulator's own truth; the tokens
    die while the clock moves an hour, as a real controller's do, and the client logs in again."""
    clock = ManualClock()
    simulator = start_simulator(FederationSpec(vms=120), clock=clock, churn=BUSY)
    settings = PollConfig(timeout_seconds=10, page_size=100, max_concurrency=3)
    config = controller_config("living", simulator)
    with closing(
        ControllerPoller(config, settings, client_factory=fast_retries, clock=clock)
    ) as poller:
        for seconds in (0, 300, 3600, 60, 7200):
            clock.advance(seconds)
            status = poller.poll_once()
            assert status.up, status.last_error
            assert status.snapshot is not None
            assert status.snapshot.backups == truth(simulator)
    assert simulator.changes()["scheduled"] > 100
    assert simulator.stats.snapshot().logins > 1


def truth(simulator: SimulatedController) -> BackupSnapshot:
    aggregator = Aggregator()
    for backup in simulator.backups():
        aggregator.add({key: backup[key] for key in FIELDS if key in backup})
    return aggregator.snapshot()


def test_every_kind_of_change_happens_in_a_busy_day() -> None:
    clock = ManualClock()
    controller = SimulatedController(FederationSpec(vms=80), clock=clock, churn=BUSY)
    for _ in range(24):
        clock.advance(HOUR)
        controller.advance_to()
    changes = controller.changes()
    assert set(changes) == set(KINDS), set(KINDS) ^ set(changes)


@pytest.mark.parametrize("kind", list(Churn.RATES.values()))
def test_a_test_can_make_exactly_the_change_it_wants_between_two_polls(
    kind: str, start: Start
) -> None:
    clock = ManualClock()
    controller = start(FederationSpec(vms=100), clock=clock, churn=Churn.quiet())
    client = Client(controller)
    clock.advance(HOUR)
    before = everything(client)
    happened = controller.change(kind, 5)
    after = everything(client)
    assert happened == 5
    changes = controller.changes()
    assert changes.get(kind, 0) + changes.get("host_resumed", 0) * (kind == "host_suspended") == 5
    check_effect(kind, happened, before, after, changes)
    assert everything(client) == after  # the clock stands still again: nothing else happens


def test_change_refuses_a_kind_it_does_not_know_and_a_federation_without_churn(
    start: Start,
) -> None:
    controller = start(FederationSpec(vms=5), clock=ManualClock(), churn=Churn.quiet())
    with pytest.raises(ValueError, match="meteor"):
        controller.change("meteor")
    with pytest.raises(RuntimeError):
        start(FederationSpec(vms=5), clock=ManualClock()).change("deleted")


@pytest.mark.parametrize("steady", [True, False])
def test_a_steady_federation_loses_about_as_many_backups_as_it_takes(steady: bool) -> None:
    clock = ManualClock()
    spec = FederationSpec(vms=300, roles=False, steady=steady)
    controller = SimulatedController(spec, clock=clock, churn=Churn.quiet())
    total = controller.backup_count()
    for _ in range(12):
        clock.advance(1800)
        controller.advance_to()
    changes = controller.changes()
    taken, expired = changes["scheduled"], changes.get("expired", 0)
    assert taken > 1000
    if steady:
        assert abs(taken - expired) < 0.1 * taken, changes
        assert abs(controller.backup_count() - total) < 0.02 * total
    else:
        assert expired == 0  # the generated backups expire days later
        assert controller.backup_count() == total + taken
