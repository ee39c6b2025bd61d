"""The simulated federation living in time (churn), over real sockets on 127.0.0.1."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests

from exporter.simulator import Churn, FederationSpec, ManualClock, SimulatedController

Json = dict[str, Any]
HOUR = 3600


@pytest.fixture
def controllers() -> Iterator[list[SimulatedController]]:
    started: list[SimulatedController] = []
    yield started
    for controller in started:
        controller.stop()


Start = Callable[..., SimulatedController]


@pytest.fixture
def start(controllers: list[SimulatedController]) -> Start:
    def start(*args: Any, **kwargs: Any) -> SimulatedController:
        # Tokens live as long as the test: the clock moves hours at a time.
        kwargs.setdefault("idle_timeout_seconds", 10**9)
        kwargs.setdefault("absolute_timeout_seconds", 10**9)
        controller = SimulatedController(*args, **kwargs).start()
        controllers.append(controller)
        return controller

    return start


class Client:
    """A logged-in session on one simulated controller."""

    def __init__(self, controller: SimulatedController) -> None:
        self.controller = controller
        self.session = requests.Session()
        answer = self.session.post(
            controller.url + "/api/oauth/token",
            auth=("simplivity", ""),
            data={
                "grant_type": "password",
                "username": controller.username,
                "password": controller.password,
            },
            timeout=10,
        )
        answer.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

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


BUSY = Churn().scaled(2000)  # every kind of change, many times an hour on a small federation


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
#: What a new backup goes through (a manual backup or copy too).
LIFE_OF_A_BACKUP = (
    "saving",
    "replication_progress",
    "protected",
    "replicated",
    "failed",
    "failed_vss",
)
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
    settings: dict[str, Any] = {rate: RATE, "scheduled": False}
    churn = replace(Churn.quiet(), **settings)
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
