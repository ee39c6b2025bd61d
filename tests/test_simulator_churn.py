"""The simulated federation living in time (churn), over real sockets on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
