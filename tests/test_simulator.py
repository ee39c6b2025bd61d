"""The simulated controller, over real sockets on 127.0.0.1, as the exporter's client sees it."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from exporter import restapi, simulator
from exporter.simulator import (
    BACKUP_FIELDS,
    BACKUP_STATES,
    Endpoint,
    Exchange,
    FederationSpec,
    SimulatedController,
    generate_backups,
)
from exporter.simulator.catalog import COLLECTIONS as TABLE
from exporter.simulator.catalog import INVENTORY, Paged

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
Json = dict[str, Any]


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.005)  # poll interval of the wait, not a wait for something


@pytest.fixture
def controllers() -> Iterator[list[SimulatedController]]:
    started: list[SimulatedController] = []
    yield started
    for controller in started:
        controller.stop()


@pytest.fixture
def start(controllers: list[SimulatedController]) -> Callable[..., SimulatedController]:
    def start(*args: Any, **kwargs: Any) -> SimulatedController:
        kwargs.setdefault("clock", FakeClock())
        controller = SimulatedController(*args, **kwargs).start()
        controllers.append(controller)
        return controller

    return start


CLIENT = ("simplivity", "")  # the client credentials every SimpliVity client sends


def password_grant(username: str, password: str) -> dict[str, str]:
    return {"grant_type": "password", "username": username, "password": password}


def request_token(
    url: str,
    data: dict[str, str],
    *,
    auth: tuple[str, str] | None = CLIENT,
    session: requests.Session | None = None,
) -> requests.Response:
    return (session or requests).post(url + "/api/oauth/token", auth=auth, data=data, timeout=5)


def login(controller: SimulatedController, session: requests.Session | None = None) -> str:
    grant = password_grant(controller.username, controller.password)
    response = request_token(controller.url, grant, session=session)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def get_path(
    controller: SimulatedController,
    token: str,
    path: str,
    session: requests.Session | None = None,
    /,
    **params: object,
) -> requests.Response:
    return (session or requests).get(
        controller.url + path,
        params=params,  # type: ignore[arg-type]
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )


def get_backups(
    controller: SimulatedController,
    token: str,
    session: requests.Session | None = None,
    /,
    **params: object,
) -> requests.Response:
    return get_path(controller, token, "/api/backups", session, **params)


def get(controller: SimulatedController, token: str, path: str, /, **params: object) -> Any:
    response = get_path(controller, token, path, **params)
    assert response.status_code == 200, response.text
    return response.json()


def listing(controller: SimulatedController, token: str, path: str, /, **params: object) -> Any:
    """Every record of a collection, paging by what the server served."""
    key = path.rsplit("/", 1)[1]  # backups, hosts, omnistack_clusters...
    records: list[Any] = []
    while True:
        page = get(controller, token, path, offset=len(records), **params)
        records.extend(page[key])
        if len(records) >= page["count"] or not page[key]:
            return records


def small_federation() -> list[dict[str, object]]:
    return generate_backups(FederationSpec(vms=20, backups_per_vm=5, roles=False), NOW)


@pytest.fixture
def controller(start: Callable[..., SimulatedController]) -> SimulatedController:
    """A running controller of :func:`small_federation`."""
    return start(small_federation())


# --- generation ---------------------------------------------------------------------------


def test_generation_is_deterministic_for_a_spec_and_a_time() -> None:
    spec = FederationSpec(seed=7, vms=15, backups_per_vm=4)
    assert generate_backups(spec, NOW) == generate_backups(spec, NOW)
    assert generate_backups(spec, NOW) != generate_backups(FederationSpec(seed=8), NOW)
    later = generate_backups(spec, NOW + 86400)
    assert [b["created_at"] for b in later] != [
        b["created_at"] for b in generate_backups(spec, NOW)
    ]


def test_every_backup_has_every_documented_field_with_its_type() -> None:
    backups = generate_backups(FederationSpec(), NOW)
    # 40 VMs, 12 backups each but for the three roles without any, and the trimmed one
    trimmed = 12 - simulator.spec.TRIMMED_VM_KEPT
    assert len(backups) == (40 - len(simulator.spec.BACKUPLESS_ROLES)) * 12 - trimmed
    for backup in backups:
        assert tuple(backup) == BACKUP_FIELDS
        assert isinstance(backup["size"], int)
        assert isinstance(backup["unique_size_bytes"], int)
        assert isinstance(backup["application_consistent"], bool)
        assert backup["state"] in BACKUP_STATES
        assert backup["type"] in ("MANUAL", "POLICY", "UNSPECIFIED")
        assert backup["virtual_machine_state"] in ("ALIVE", "REMOVED", "DELETED")
        assert backup["consistency_type"] in (
            "NONE",
            "DEFAULT",
            "FAILEDVSS",
            "NOT_APPLICABLE",
            "VSS",
        )
        created = str(backup["created_at"])
        assert time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")
        assert created <= "2023-11-14T22:13:20Z"
        expiration = str(backup["expiration_time"])
        assert expiration == "NA" or time.strptime(expiration, "%Y-%m-%dT%H:%M:%SZ")
    assert len({b["id"] for b in backups}) == len(backups)


def test_total_backups_gives_exactly_that_many() -> None:
    for total in (0, 1, 999, 1000, 12_345):
        spec = FederationSpec(vms=40, total_backups=total)
        assert len(generate_backups(spec, NOW)) == total


def newest_protected(backups: list[dict[str, object]]) -> dict[object, float]:
    newest: dict[object, float] = {}
    for backup in backups:
        if backup["state"] == "PROTECTED":
            created = time.mktime(time.strptime(str(backup["created_at"]), "%Y-%m-%dT%H:%M:%SZ"))
            created -= time.timezone
            vm = backup["virtual_machine_id"]
            newest[vm] = max(newest.get(vm, 0.0), created)
    return newest


def test_the_default_federation_plays_every_role() -> None:
    backups = generate_backups(FederationSpec(), NOW)
    by_name: dict[object, list[dict[str, object]]] = {}
    for backup in backups:
        by_name.setdefault(backup["virtual_machine_name"], []).append(backup)
    newest = newest_protected(backups)

    assert set(Counter(b["state"] for b in backups)) == set(BACKUP_STATES)
    assert {b["state"] for b in by_name[simulator.ALL_STATES_VM]} == set(BACKUP_STATES)
    assert any(b["expiration_time"] == "NA" for b in backups)
    assert {b["type"] for b in backups} >= {"MANUAL", "POLICY"}

    external = [b for b in backups if b["external_store_name"]]
    assert external
    assert all(b["omnistack_cluster_name"] == "" for b in external)
    assert all(b["omnistack_cluster_id"] == "" for b in external)
    assert all(
        b["external_store_name"] == simulator.EXTERNAL_STORE_NAME
        for b in by_name[simulator.EXTERNAL_STORE_VM]
    )
    clusters = {b["omnistack_cluster_name"] for b in backups} - {""}
    assert clusters == {"Boston DC", "Zürich-Ost", "London DR"}

    assert {b["virtual_machine_state"] for b in by_name[simulator.REMOVED_VM]} == {"REMOVED"}
    assert {b["virtual_machine_state"] for b in by_name[simulator.DELETED_VM]} == {"DELETED"}
    assert len({b["virtual_machine_id"] for b in by_name[simulator.SHARED_NAME_VM]}) == 2
    for name in simulator.NON_ASCII_VMS:
        assert not name.isascii()
        assert by_name[name]
    assert '"' in simulator.QUOTE_BACKSLASH_VM
    assert "\\" in simulator.QUOTE_BACKSLASH_VM
    assert by_name[simulator.QUOTE_BACKSLASH_VM]
    assert {b["virtual_machine_type"] for b in by_name[simulator.TEMPLATE_VM]} == {"TEMPLATE"}

    assert {b["state"] for b in by_name[simulator.FAILING_VM]} == {"FAILED"}
    failing_id = by_name[simulator.FAILING_VM][0]["virtual_machine_id"]
    assert failing_id not in newest

    stale_id = by_name[simulator.STALE_VM][0]["virtual_machine_id"]
    assert 3 * 86400 <= NOW - newest[stale_id] <= 4 * 86400 + 300  # a daily policy, stopped

    # DR copies to another cluster carry what was sent; local ones do not.
    assert any(b["omnistack_cluster_name"] == "London DR" and int(str(b["sent"])) for b in backups)
    alive = {b["virtual_machine_id"] for b in backups if b["virtual_machine_state"] == "ALIVE"}
    fresh = {vm for vm in alive if vm in newest and NOW - newest[vm] < 86400}
    assert len(fresh) >= 30


def test_a_small_spec_drops_the_last_roles() -> None:
    names = {b["virtual_machine_name"] for b in generate_backups(FederationSpec(vms=2), NOW)}
    assert names == {simulator.STALE_VM, simulator.FAILING_VM}
    plain = generate_backups(FederationSpec(vms=3, roles=False), NOW)
    assert {b["virtual_machine_name"] for b in plain} == {"web-0000", "app-0001", "db-0002"}


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="vms must be at least 1"):
        FederationSpec(vms=0)
    with pytest.raises(ValueError, match="failed_share"):
        FederationSpec(failed_share=2.0)


# --- version and login ----------------------------------------------------------------------


def test_version_needs_no_login_and_an_mva_omits_svtfs(
    start: Callable[..., SimulatedController],
) -> None:
    ovc = requests.get(start().url + "/api/version", timeout=5)
    assert ovc.status_code == 200
    assert ovc.json() == {"REST_API_Version": "1.25", "SVTFS_Version": simulator.SVTFS_VERSION}
    mva = requests.get(start(mode="mva").url + "/api/version", timeout=5)
    assert mva.json() == {"REST_API_Version": "1.25"}


def test_login_issues_a_bearer_token_and_counts_it(
    controller: SimulatedController,
) -> None:
    response = request_token(controller.url, password_grant(controller.username, "x"))
    assert response.status_code == 401
    token = login(controller)
    answer = request_token(
        controller.url, password_grant(controller.username, controller.password)
    ).json()
    assert answer["token_type"] == "bearer"
    assert answer["expires_in"] == 86399
    assert answer["scope"] == "read write"
    assert answer["updated_at"] == int(NOW * 1000)
    assert answer["access_token"] != token
    assert controller.stats.snapshot().logins == 2
    assert controller.stats.snapshot().login_failures == 1
    assert get_backups(controller, token, limit=1).status_code == 200


@pytest.mark.parametrize(
    "auth",
    [None, ("simplivity", "secret"), ("other", "")],
    ids=["missing", "wrong-password", "wrong-client"],
)
def test_login_without_the_client_credentials_is_bad_credentials(
    controller: SimulatedController, auth: tuple[str, str] | None
) -> None:
    response = request_token(
        controller.url, password_grant(controller.username, controller.password), auth=auth
    )
    assert response.status_code == 401
    body = response.json()
    assert body["message"] == "Bad Credentials"
    assert body["exception"].endswith("BadCredentialsException")
    assert body["status"] == "401"
    assert controller.stats.snapshot().logins == 0


@pytest.mark.parametrize(("status", "error"), [(401, "unauthorized"), (400, "invalid_grant")])
def test_wrong_user_credentials_answer_the_configured_status(
    controller: SimulatedController, status: int, error: str
) -> None:
    controller.faults.bad_credentials_status = status
    response = request_token(controller.url, password_grant(controller.username, "wrong"))
    assert response.status_code == status
    assert response.json()["error"] == error
    unsupported = request_token(controller.url, {"grant_type": "client_credentials"})
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"


@pytest.mark.parametrize(
    ("lifetimes", "step", "uses", "last_step"),
    [
        pytest.param({}, 590, 5, 601, id="idle for longer than 600 s"),
        pytest.param(
            {"absolute_timeout_seconds": 3600}, 599, 6, 7, id="past its 3600 s, though used"
        ),
    ],
)
def test_a_token_dies_after_idling_or_its_absolute_lifetime_and_each_use_keeps_it_alive(
    start: Callable[..., SimulatedController],
    lifetimes: dict[str, int],
    step: int,
    uses: int,
    last_step: int,
) -> None:
    clock = FakeClock()
    controller = start(small_federation(), clock=clock, idle_timeout_seconds=600, **lifetimes)
    token = login(controller)
    for _ in range(uses):
        clock.now += step
        assert get_backups(controller, token, limit=1).status_code == 200
    clock.now += last_step
    response = get_backups(controller, token, limit=1)
    assert response.status_code == 401
    # The simulator words both deaths alike, with the message SIMPLIVITY_API.md records.
    assert response.json() == {
        "error": "invalid_token",
        "message": f"Access token expired due to inactivity: {token}",
    }
    assert get_backups(controller, login(controller), limit=1).status_code == 200


def test_missing_unknown_and_revoked_tokens_are_invalid(
    controller: SimulatedController,
) -> None:
    missing = requests.get(controller.url + "/api/backups", timeout=5)
    assert missing.status_code == 401
    assert missing.json()["error"] == "invalid_token"
    unknown = get_backups(controller, "not-a-token")
    assert unknown.json() == {
        "error": "invalid_token",
        "message": "Invalid access token: not-a-token",
    }
    token = login(controller)
    assert get_backups(controller, token, limit=1).status_code == 200
    controller.revoke_tokens()
    revoked = get_backups(controller, token, limit=1)
    assert revoked.status_code == 401
    assert revoked.json()["message"] == f"Invalid access token: {token}"
    token = login(controller)
    controller.expire_tokens()
    expired = get_backups(controller, token, limit=1)
    assert expired.json()["message"] == f"Access token expired due to inactivity: {token}"


# --- listing --------------------------------------------------------------------------------


def test_paging_delivers_every_backup_once_and_count_is_the_total(
    start: Callable[..., SimulatedController],
) -> None:
    backups = generate_backups(FederationSpec(vms=40, backups_per_vm=10), NOW)
    controller = start(backups)
    token = login(controller)
    total = len(backups)
    assert total > 300
    first = get_backups(controller, token).json()
    assert (first["offset"], first["count"], first["limit"]) == (0, total, 500)
    assert len(first["backups"]) == total
    listed = listing(controller, token, "/api/backups", limit=37)
    assert len(listed) == total
    assert sorted(b["id"] for b in listed) == sorted(str(b["id"]) for b in backups)
    assert controller.stats.snapshot().pages[1:] == tuple((o, 37) for o in range(0, total, 37))
    past_the_end = get_backups(controller, token, offset=total, limit=10).json()
    assert past_the_end["count"] == total
    assert past_the_end["backups"] == []


def test_fields_selects_the_fields_of_each_backup(
    start: Callable[..., SimulatedController],
) -> None:
    controller = start(FederationSpec(), strict=False)
    token = login(controller)
    full = get_backups(controller, token, limit=5000).json()["backups"]
    assert all(tuple(b) == BACKUP_FIELDS for b in full)
    wanted = "id,state,created_at,size,virtual_machine_name,application_consistent,name,nonsense"
    some = get_backups(controller, token, limit=5000, fields=wanted).json()["backups"]
    expected_fields = set(wanted.split(",")) - {"nonsense"}
    assert all(set(b) == expected_fields for b in some)
    assert some == [{k: v for k, v in b.items() if k in expected_fields} for b in full]
    assert any(b["virtual_machine_name"] == simulator.QUOTE_BACKSLASH_VM for b in some)


def test_sort_and_order_give_a_total_stable_order(
    start: Callable[..., SimulatedController],
) -> None:
    backups = small_federation()
    controller = start(backups)
    token = login(controller)

    def listing(**params: object) -> list[Json]:
        page = get_backups(controller, token, limit=5000, **params).json()
        result: list[Json] = page["backups"]
        return result

    by_name = sorted(backups, key=lambda b: (str(b["name"]), str(b["id"])), reverse=True)
    assert [b["id"] for b in listing()] == [b["id"] for b in by_name]
    by_created = sorted(backups, key=lambda b: (str(b["created_at"]), str(b["id"])))
    ascending = listing(sort="created_at", order="ascending")
    assert [b["id"] for b in ascending] == [b["id"] for b in by_created]
    descending = listing(sort="created_at", order="descending")
    assert [b["id"] for b in descending] == [b["id"] for b in reversed(by_created)]
    by_size = listing(sort="size", order="ascending")
    assert [b["size"] for b in by_size] == sorted(int(str(b["size"])) for b in backups)
    by_vm = listing(sort="virtual_machine_name", order="ascending")
    assert [b["virtual_machine_name"] for b in by_vm] == sorted(
        str(b["virtual_machine_name"]) for b in backups
    )
    pages = [
        get_backups(controller, token, offset=o, limit=7, sort="state").json()["backups"]
        for o in range(0, len(backups), 7)
    ]
    assert [b for page in pages for b in page] == listing(sort="state")


def test_single_value_filters(start: Callable[..., SimulatedController]) -> None:
    backups = generate_backups(FederationSpec(), NOW)
    controller = start(backups)
    token = login(controller)

    def ids(**params: object) -> set[str]:
        page = get_backups(controller, token, limit=5000, **params).json()
        assert page["count"] == len(page["backups"])
        return {b["id"] for b in page["backups"]}

    def where(field: str, value: object) -> set[str]:
        return {str(b["id"]) for b in backups if b[field] == value}

    assert ids(state="FAILED") == where("state", "FAILED")
    assert ids(type="MANUAL") == where("type", "MANUAL")
    for name in (*simulator.NON_ASCII_VMS, simulator.QUOTE_BACKSLASH_VM):
        assert ids(virtual_machine_name=name) == where("virtual_machine_name", name)
        assert where("virtual_machine_name", name)
    vm_id, cluster_id = backups[0]["virtual_machine_id"], backups[0]["omnistack_cluster_id"]
    assert ids(virtual_machine_id=vm_id) == where("virtual_machine_id", vm_id)
    assert ids(omnistack_cluster_name="Zürich-Ost") == where("omnistack_cluster_name", "Zürich-Ost")
    assert ids(omnistack_cluster_id=cluster_id) == where("omnistack_cluster_id", cluster_id)
    assert ids(datastore_name="BOS-DS-01") == where("datastore_name", "BOS-DS-01")
    after, before = "2023-11-13T00:00:00Z", "2023-11-14T00:00:00Z"
    in_range = {str(b["id"]) for b in backups if after <= str(b["created_at"]) <= before}
    assert in_range
    assert ids(created_after=after, created_before=before) == in_range
    assert ids(state="PROTECTED", virtual_machine_name=simulator.FAILING_VM) == set()
    assert ids(state="NO_SUCH_STATE") == set()


@pytest.mark.parametrize("mode", ["ovc", "mva"])
def test_comma_separated_filters_match_nothing_on_an_ovc_and_or_on_an_mva(
    start: Callable[..., SimulatedController], mode: str
) -> None:
    backups = generate_backups(FederationSpec(), NOW)
    controller = start(backups, mode=mode)
    token = login(controller)
    page = get_backups(controller, token, limit=5000, state="FAILED,DEGRADED").json()
    if mode == "ovc":
        assert page["count"] == 0
        assert page["backups"] == []
    else:
        wanted = {str(b["id"]) for b in backups if b["state"] in ("FAILED", "DEGRADED")}
        assert {b["id"] for b in page["backups"]} == wanted
        assert page["count"] == len(wanted)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": 5001}, "Invalid limit 5001"),
        ({"limit": -1}, "Invalid limit -1"),
        ({"limit": "many"}, "Invalid limit 'many'"),
        ({"offset": -5}, "Invalid offset -5"),
        ({"sort": "colour"}, "Invalid sort field 'colour'"),
        ({"order": "sideways"}, "Invalid order 'sideways'"),
        ({"created_after": "yesterday"}, "Invalid created_after 'yesterday'"),
        ({"created_before": "2023-13-01T00:00:00Z"}, "Invalid created_before"),
    ],
)
def test_bad_parameters_answer_400_with_the_documented_body(
    controller: SimulatedController, params: dict[str, object], message: str
) -> None:
    response = get_backups(controller, login(controller), **params)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"exception", "path", "message", "timestamp", "status", "error_code"}
    assert body["status"] == "400"
    assert body["path"] == "/api/backups"
    assert body["message"].startswith(message)


def test_a_limit_of_5000_is_allowed(start: Callable[..., SimulatedController]) -> None:
    controller = start(FederationSpec(vms=10, total_backups=6000))
    page = get_backups(controller, login(controller), limit=5000).json()
    assert (page["count"], len(page["backups"])) == (6000, 5000)


def test_unknown_paths_and_wrong_methods(controller: SimulatedController) -> None:
    missing = requests.get(controller.url + "/api/nothing_here", timeout=5)
    assert missing.status_code == 404
    assert missing.json()["status"] == "404"
    assert missing.json()["path"] == "/api/nothing_here"
    wrong = requests.delete(controller.url + "/api/backups", timeout=5)
    assert wrong.status_code == 405
    assert wrong.json()["status"] == "405"
    assert wrong.headers["Allow"] == "GET"
    assert requests.get(controller.url + "/api/oauth/token", timeout=5).status_code == 405


def test_a_new_endpoint_is_one_entry_in_the_route_table(
    controller: SimulatedController,
) -> None:

    def clusters(ex: Exchange) -> None:
        ex.send(200, {"omnistack_clusters": [], "count": 0})

    controller.routes["/api/omnistack_clusters"] = Endpoint(("GET",), clusters, login=True)
    url = controller.url + "/api/omnistack_clusters"
    assert requests.get(url, timeout=5).status_code == 401  # login=True: the token is checked
    token = login(controller)
    answer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert answer.json() == {"omnistack_clusters": [], "count": 0}
    wrong = requests.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "GET")


def test_keep_alive_serves_many_requests_on_one_connection(
    controller: SimulatedController,
) -> None:
    token = login(controller)
    port = int(controller.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for offset in range(0, 100, 10):
            connection.request(
                "GET",
                f"/api/backups?offset={offset}&limit=10&fields=id",
                headers={"Authorization": f"Bearer {token}"},
            )
            response = connection.getresponse()
            assert response.status == 200
            assert len(json.loads(response.read())["backups"]) == 10
            assert response.getheader("Content-Length")
        first_socket = connection.sock
        connection.request("GET", "/api/version")
        connection.getresponse().read()
        assert connection.sock is first_socket
    finally:
        connection.close()


def test_set_backups_serves_plain_dicts_as_given(start: Callable[..., SimulatedController]) -> None:
    controller = start(FederationSpec())
    token = login(controller)
    odd: list[dict[str, object]] = [
        {"id": "b", "name": "two", "state": "PROTECTED", "size": 2, "created_at": "x"},
        {"id": "a", "name": "one", "state": "WEIRD", "size": "3"},
        {"id": "c", "name": "one", "extra": [1, 2]},
    ]
    controller.set_backups(odd)
    assert controller.backup_count() == 3
    listed = get_backups(controller, token).json()["backups"]
    # A field no REST API version documents is never served.
    served = [odd[0], {"id": "c", "name": "one"}, odd[1]]
    assert listed == served  # name descending, ties by id descending
    assert get_backups(controller, token, state="WEIRD").json()["backups"] == [odd[1]]
    ascending = get_backups(controller, token, sort="size", order="ascending").json()
    assert [b["id"] for b in ascending["backups"]] == ["c", "b", "a"]  # missing, int, str
    assert controller.backups() == odd
    assert controller.backup_ids() == {"a", "b", "c"}


# --- faults ---------------------------------------------------------------------------------


def test_fail_next_answers_errors_then_recovers(controller: SimulatedController) -> None:
    token = login(controller)
    controller.faults.fail_next(2)
    for _ in range(2):
        response = get_backups(controller, token, limit=1)
        assert response.status_code == 500
        body = response.json()
        assert body["status"] == "500"
        assert "Could not get JDBC Connection" in body["message"]
        assert "request timed out after 30000ms" in body["message"]
    assert get_backups(controller, token, limit=1).status_code == 200
    controller.faults.fail_next(1, status=503)
    assert get_backups(controller, token, limit=1).status_code == 503
    controller.faults.fail_next(1, status=401)
    expired = get_backups(controller, token, limit=1)
    assert expired.json()["error"] == "invalid_token"
    assert get_backups(controller, token, limit=1).status_code == 200
    controller.faults.fail_next_logins(1)
    refused = request_token(controller.url, password_grant(controller.username, "x"))
    assert refused.status_code == 500
    assert login(controller)
    assert controller.stats.snapshot().status_counts[500] == 3
    assert controller.stats.snapshot().backups_requests == 6


def test_disconnect_next_closes_without_an_answer(
    controller: SimulatedController,
) -> None:
    token = login(controller)
    controller.faults.disconnect_next(1)
    with pytest.raises(requests.ConnectionError):
        get_backups(controller, token, limit=1)
    assert get_backups(controller, token, limit=1).status_code == 200


def test_a_hang_delays_the_answer_and_trips_client_timeouts(
    controller: SimulatedController,
) -> None:
    token = login(controller)
    controller.faults.hang_seconds = 0.3
    started = time.monotonic()
    assert get_backups(controller, token, limit=1).status_code == 200
    assert time.monotonic() - started >= 0.3
    controller.faults.hang_seconds = 30
    with pytest.raises(requests.Timeout):
        requests.get(
            controller.url + "/api/backups",
            headers={"Authorization": f"Bearer {token}"},
            timeout=0.2,
        )


def run_in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target())
        except Exception as e:  # the outcome is what the test looks at
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_stop_ends_a_hanging_answer_promptly(controller: SimulatedController) -> None:
    token = login(controller)
    controller.faults.hang_seconds = 60
    thread, outcome = run_in_thread(
        lambda: requests.get(
            controller.url + "/api/backups",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    )
    wait_until(lambda: controller.stats.snapshot().in_flight == 1)
    started = time.monotonic()
    controller.stop()
    # Far below the client's 30 s timeout, with room for a loaded machine.
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10
    assert isinstance(outcome[0], requests.ConnectionError)
    with pytest.raises(requests.ConnectionError):
        requests.get(controller.url + "/api/version", timeout=1)  # no longer listening


def endless_backups(
    controller: SimulatedController, token: str, timeout: float
) -> requests.Response:
    """``GET /api/backups`` from a controller whose fault is an endless answer: streamed, and
    checked to be one (200, without a ``Content-Length``)."""
    response = requests.get(
        controller.url + "/api/backups",
        headers={"Authorization": f"Bearer {token}"},
        stream=True,
        timeout=timeout,
    )
    assert response.status_code == 200
    assert "Content-Length" not in response.headers
    return response


def test_stop_ends_an_endless_answer_promptly(controller: SimulatedController) -> None:
    token = login(controller)
    controller.faults.malformed = "endless"
    received: list[int] = []

    def read_forever() -> object:
        with endless_backups(controller, token, timeout=30) as response:
            for chunk in response.iter_content(65536):
                received.append(len(chunk))
        return sum(received)

    thread, outcome = run_in_thread(read_forever)
    wait_until(lambda: sum(received) > 200_000)
    started = time.monotonic()
    controller.stop()
    # Far below the client's 30 s timeout, with room for a loaded machine.
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10
    assert outcome  # ended, by a clean close or a connection error
    assert controller.stats.snapshot().bytes_sent >= sum(received) - 65536


@pytest.mark.parametrize("kind", simulator.MALFORMED_KINDS)
def test_malformed_answers(start: Callable[..., SimulatedController], kind: str) -> None:
    backups = small_federation()  # 100 backups
    controller = start(backups)
    token = login(controller)
    controller.faults.malformed = kind  # type: ignore[assignment]
    if kind == "endless":
        with endless_backups(controller, token, timeout=5) as response:
            head = response.raw.read(300_000)
        assert head.startswith(b'{"offset":0')
        assert len(head) == 300_000
        return
    response = get_backups(controller, token, offset=40, limit=20, fields="id,size,created_at")
    assert response.status_code == 200
    if kind == "truncated":
        assert int(response.headers["Content-Length"]) == len(response.content)
        assert response.content.startswith(b'{"offset":40')
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)
        return
    if kind == "not_json":
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.text.startswith("<html>")
        return
    page = response.json()
    listed = page["backups"]
    if kind == "size_as_string":
        assert len(listed) == 20
        assert all(isinstance(b["size"], str) and b["size"].isdigit() for b in listed)
    elif kind == "missing_created_at":
        assert len(listed) == 20
        assert all("created_at" not in b and "size" in b for b in listed)
    elif kind == "count_too_large":
        assert page["count"] > 100
        assert len(listed) == 20
        tail = get_backups(controller, token, offset=100, limit=20).json()
        assert tail["count"] > 100
        assert tail["backups"] == []
    elif kind == "short_page":
        assert 0 < len(listed) < 20
        assert page["offset"] + len(listed) < page["count"] == 100
    elif kind == "empty_page":
        assert listed == []
        assert page["offset"] < page["count"] == 100
    elif kind == "oversized_page":
        assert len(listed) == 40
        assert page["limit"] == 20
    elif kind == "endless_listing":
        assert page["count"] >= 10**18
        past_the_end = get_backups(controller, token, offset=10**6, limit=20).json()["backups"]
        ids = [b["id"] for b in listed + past_the_end]
        assert len(listed) == len(past_the_end) == 20
        assert ids == sorted(set(ids))  # full pages of new ids, in order
    controller.faults.clear()
    assert len(get_backups(controller, token, offset=40, limit=20).json()["backups"]) == 20


def test_unknown_malformed_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown malformed kind"):
        SimulatedController([]).faults.malformed = "garbled"  # type: ignore[assignment]


def test_the_cost_model_delays_answers_and_bounds_parallelism(
    start: Callable[..., SimulatedController],
) -> None:
    controller = start(FederationSpec(vms=10, backups_per_vm=10))
    token = login(controller)
    controller.faults.object_cost_seconds = 0.002
    started = time.monotonic()
    assert len(get_backups(controller, token, limit=100).json()["backups"]) == 100
    assert time.monotonic() - started >= 0.2
    controller.faults.object_cost_seconds = 0
    controller.faults.request_cost_seconds = 60  # until stop()
    controller.faults.max_parallel = 2
    threads = [
        run_in_thread(lambda: get_backups(controller, token, limit=1).status_code) for _ in range(4)
    ]
    wait_until(lambda: controller.stats.snapshot().in_flight == 4)
    wait_until(lambda: controller.stats.snapshot().max_parallel_served == 2)
    # two served, two waiting their turn
    assert controller.stats.snapshot().max_parallel_served == 2
    controller.stop()
    for thread, outcome in threads:
        thread.join(timeout=10)
        assert isinstance(outcome[0], requests.ConnectionError)


def test_churn_creates_and_expires_backups_at_each_request(
    start: Callable[..., SimulatedController],
) -> None:
    clock = FakeClock()
    controller = start(FederationSpec(vms=20, backups_per_vm=10, roles=False), clock=clock)
    token = login(controller)
    before = controller.backup_ids()
    for sort in ("name", "id", "created_at"):  # orders cached before the churn stay right
        get_backups(controller, token, limit=1, sort=sort)
    clock.now += 3600
    token = login(controller)
    controller.faults.churn_create_per_request = 5
    controller.faults.churn_expire_per_request = 3
    page = get_backups(controller, token, limit=5000).json()
    assert page["count"] == 202 == controller.backup_count()
    after = controller.backup_ids()
    created, expired = after - before, before - after
    assert len(created) == 5
    assert len(expired) == 3
    assert {b["id"] for b in page["backups"]} == after
    new = [b for b in controller.backups() if b["id"] in created]
    assert {b["created_at"] for b in new} == {"2023-11-14T23:13:20Z"}
    assert {b["state"] for b in new} == {"PROTECTED"}
    for sort in ("name", "id", "created_at"):
        listed = get_backups(controller, token, limit=5000, sort=sort, order="ascending").json()
        keys = [(b[sort], b["id"]) for b in listed["backups"]]
        assert keys == sorted(keys)
        assert {b["id"] for b in listed["backups"]} == controller.backup_ids()
    assert controller.backup_count() == 200 + 4 * 2 == len(controller.backup_ids())
    controller.faults.churn_expire_per_request = 1000
    assert get_backups(controller, token, limit=1).json()["count"] == 5  # all gone, 5 new


def test_churn_moves_offsets_under_a_paging_client(
    start: Callable[..., SimulatedController],
) -> None:
    controller = start(FederationSpec(vms=20, backups_per_vm=10, roles=False))
    token = login(controller)
    before = controller.backup_ids()
    controller.faults.churn_create_per_request = 4
    controller.faults.churn_expire_per_request = 4
    pages = [
        [
            b["id"]
            for b in get_backups(controller, token, offset=o, limit=20, sort="id").json()["backups"]
        ]
        for o in range(0, 200, 20)
    ]
    listed = [i for page in pages for i in page]
    survivors = before & controller.backup_ids()
    assert len(listed) == 200
    # naive offset paging under churn both repeats and misses backups
    assert len(set(listed)) < 200 or not survivors <= set(listed)


# --- real controllers' quirks ---------------------------------------------------------------


def test_a_capped_limit_serves_fewer_and_says_the_limit_it_applied(
    start: Callable[..., SimulatedController],
) -> None:
    backups = generate_backups(FederationSpec(vms=30, backups_per_vm=10), NOW)
    controller = start(backups)
    controller.faults.limit_cap = 70
    token = login(controller)
    first = get_backups(controller, token, limit=3000).json()
    assert (first["offset"], first["count"], first["limit"]) == (0, len(backups), 70)
    assert len(first["backups"]) == 70
    small = get_backups(controller, token, limit=20).json()
    assert (small["limit"], len(small["backups"])) == (20, 20)  # under the cap: as asked
    listed = listing(controller, token, "/api/backups", limit=3000)  # by what was served
    assert sorted(b["id"] for b in listed) == sorted(str(b["id"]) for b in backups)
    pages = controller.stats.snapshot().pages
    assert pages[-1] == (len(backups) // 70 * 70, 3000)  # the limit as asked is recorded


@pytest.mark.parametrize("kind", simulator.ODD_KINDS)
def test_odd_records_are_served_odd_and_the_others_as_they_are(
    start: Callable[..., SimulatedController], kind: str
) -> None:
    backups = small_federation()
    controller = start(backups)
    odd_ids = sorted(str(b["id"]) for b in backups)[::7]
    controller.faults.make_odd(kind, odd_ids)  # type: ignore[arg-type]
    token = login(controller)
    listed = get_backups(controller, token, limit=5000, sort="id", order="ascending").json()
    served = listed["backups"]
    assert listed["count"] == len(served) == len(backups)
    expected = {str(b["id"]): b for b in backups}
    odd_seen = 0
    for record, backup_id in zip(served, sorted(expected), strict=True):
        original = expected[backup_id]
        if backup_id not in odd_ids:
            assert record == original
            continue
        odd_seen += 1
        if kind == "string_record":
            assert record == backup_id
        elif kind == "number_record":
            assert isinstance(record, int)
        elif kind == "no_state":
            assert record == {k: v for k, v in original.items() if k != "state"}
        elif kind == "no_id":
            assert record == {k: v for k, v in original.items() if k != "id"}
        else:
            field, _, value = kind.rpartition("_")
            assert record == {**original, field: None if value == "null" else "NA"}
    assert odd_seen == len(odd_ids) >= 3
    assert controller.stats.snapshot().odd_records_served == len(odd_ids)
    # Values only change in the fields asked for.
    some = get_backups(controller, token, limit=5000, fields="id,name").json()["backups"]
    if kind in ("string_record", "number_record"):
        assert sum(not isinstance(b, dict) for b in some) == len(odd_ids)
    elif kind == "no_id":
        assert sum("id" not in b for b in some) == len(odd_ids)
    else:
        assert all(set(b) == {"id", "name"} for b in some)
    controller.faults.clear()
    assert get_backups(controller, token, limit=5000).json()["backups"] != served


def test_unknown_odd_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown odd kind"):
        SimulatedController([]).faults.make_odd("weird", ["x"])  # type: ignore[arg-type]


def test_too_many_requests_in_flight_answer_502(
    controller: SimulatedController,
) -> None:
    token = login(controller)
    controller.faults.max_in_flight = 2
    controller.faults.hang_seconds = 60  # until stop(): two requests stay in flight
    hanging = [run_in_thread(lambda: get_backups(controller, token, limit=1)) for _ in range(2)]
    wait_until(lambda: controller.stats.snapshot().in_flight == 2)
    refused = get_backups(controller, token, limit=1)
    assert refused.status_code == 502
    body = refused.json()
    assert body["status"] == "502"
    assert body["path"] == "/api/backups"
    assert "Too many simultaneous" in body["message"]
    assert set(body) == {"exception", "path", "message", "timestamp", "status", "error_code"}
    # Only data requests are refused: the version and the login still answer.
    assert requests.get(controller.url + "/api/version", timeout=5).status_code == 200
    assert login(controller)
    seen = controller.stats.snapshot()
    assert seen.refused_in_flight == 1
    assert seen.max_in_flight == 3
    assert seen.status_counts[502] == 1
    controller.stop()
    for thread, _ in hanging:
        thread.join(timeout=3)


def test_a_limit_above_the_threshold_answers_504_and_smaller_pages_pass(
    start: Callable[..., SimulatedController],
) -> None:
    controller = start(FederationSpec(vms=20, total_backups=2000, roles=False))
    token = login(controller)
    controller.faults.timeout_above_limit = 500
    too_large = get_backups(controller, token, limit=501)
    assert too_large.status_code == 504
    assert too_large.json()["status"] == "504"
    assert "more than 60 seconds" in too_large.json()["message"]
    assert len(get_backups(controller, token, limit=500).json()["backups"]) == 500
    controller.faults.limit_cap = 400  # a capped limit is the one that counts
    assert len(get_backups(controller, token, limit=3000).json()["backups"]) == 400
    assert controller.stats.snapshot().refused_page_size == 1


def test_a_reverse_proxy_answers_its_own_html_error_pages(
    controller: SimulatedController,
) -> None:
    token = login(controller)
    controller.faults.html_error_statuses = frozenset({502, 503, 504})
    controller.faults.fail_next(1, status=503)
    page = get_backups(controller, token, limit=1)
    assert page.status_code == 503
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<h1>503 Service Unavailable</h1>" in page.text
    controller.faults.timeout_above_limit = 10
    gateway = get_backups(controller, token, limit=11)
    assert (gateway.status_code, gateway.headers["Content-Type"]) == (504, "text/html")
    assert "504 Gateway Timeout" in gateway.text
    controller.faults.fail_next(1, status=500)  # not a proxy status: the controller's JSON
    assert get_backups(controller, token, limit=1).json()["status"] == "500"


@pytest.mark.parametrize(
    "style",
    [
        simulator.ErrorBody(),
        simulator.ErrorBody(timestamp="epoch_ms"),
        simulator.ErrorBody(error_code="number"),
        simulator.ErrorBody(timestamp="epoch_ms", error_code="number", extended_response=True),
    ],
    ids=["iso-string", "epoch-ms", "numeric-code", "extended"],
)
def test_error_bodies_in_each_version_of_the_api(
    controller: SimulatedController, style: simulator.ErrorBody
) -> None:
    token = login(controller)
    controller.faults.error_body = style
    for response, status in (
        (get_backups(controller, token, limit=-1), 400),
        (requests.get(controller.url + "/api/nothing", timeout=5), 404),
    ):
        body = response.json()
        assert response.status_code == status
        assert body["status"] == str(status)
        if style.timestamp == "iso":
            assert body["timestamp"] == "2023-11-14T22:13:20Z"
        else:
            assert body["timestamp"] == int(NOW * 1000)
        assert body["error_code"] == (str(status) if style.error_code == "string" else status)
        if style.extended_response:
            assert body["extendedResponse"]["message"] == body["message"]
        else:
            assert "extendedResponse" not in body


def test_faults_aim_at_the_paths_they_are_given(
    controller: SimulatedController,
) -> None:
    token = login(controller)
    controller.faults.paths = frozenset({"/api/virtual_machines"})
    controller.faults.fail_next(1)
    controller.faults.malformed = "truncated"
    page = get_backups(controller, token, limit=5)
    assert len(page.json()["backups"]) == 5  # not aimed at backups: served as usual
    assert controller.faults.pending_failures() == 1
    controller.faults.paths = None  # every data endpoint
    assert get_backups(controller, token, limit=5).status_code == 500


# --- inventory: VMs, policies, hosts, the schedule report ---------------------------------------

#: The inventory's collections, from the simulator's table: path -> envelope key.
COLLECTIONS = {paged.path: paged.key for paged in INVENTORY.values()}
REPORT = "/api/policies/policy_schedule_report"


def by_id(records: list[Any]) -> dict[str, Any]:
    return {record["id"]: record for record in records}


@pytest.mark.parametrize("path", sorted(COLLECTIONS))
def test_inventory_collections_page_sort_and_select_like_the_api(
    start: Callable[..., SimulatedController], path: str
) -> None:
    controller = start(FederationSpec(vms=60, clusters=5))
    key = COLLECTIONS[path]
    assert requests.get(controller.url + path, timeout=5).status_code == 401
    token = login(controller)
    params = {"state": "ALIVE,REMOVED,DELETED"} if key == "virtual_machines" else {}
    whole = get(controller, token, path, **params)
    assert set(whole) == {"offset", "count", "limit", key}
    assert (whole["offset"], whole["limit"]) == (0, 500)
    records = whole[key]
    assert whole["count"] == len(records) > 3
    assert len(by_id(records)) == len(records)
    paged = listing(controller, token, path, limit=3, sort="id", order="ascending", **params)
    assert [r["id"] for r in paged] == sorted(r["id"] for r in records)
    names = [r["name"] for r in get(controller, token, path, sort="name", **params)[key]]
    assert names == sorted(names, reverse=True)  # descending by default
    some = get(controller, token, path, fields="id,name", **params)[key]
    assert all(set(r) == {"id", "name"} for r in some)
    assert {r["id"] for r in some} == set(by_id(records))
    one = records[1]
    assert get(controller, token, path, id=one["id"], **params)[key] == [one]
    too_many = requests.get(
        controller.url + path,
        params={"limit": 5001},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert too_many.status_code == 400
    assert too_many.json()["path"] == path
    assert get(controller, token, path, limit=5000)["limit"] == 5000


def test_every_record_has_the_documented_fields(start: Callable[..., SimulatedController]) -> None:
    controller = start(FederationSpec())
    token = login(controller)
    vms = get(controller, token, "/api/virtual_machines", state="ALIVE,REMOVED,DELETED")
    assert all(tuple(vm) == simulator.VM_FIELDS for vm in vms["virtual_machines"])
    policies = get(controller, token, "/api/policies")["policies"]
    assert all(tuple(p) == simulator.POLICY_FIELDS for p in policies)
    rules = [rule for p in policies for rule in p["rules"]]
    assert rules
    assert all(tuple(rule) == simulator.RULE_FIELDS for rule in rules)
    assert {rule["days"] for rule in rules} >= {"All", "Mon,Wed,Fri", "1,15", "Last"}
    # As real controllers write them: rules number from 0, "<local>" in both destination fields.
    assert all([r["number"] for r in p["rules"]] == list(range(len(p["rules"]))) for p in policies)
    local = [r for r in rules if r["destination_name"].lower() == "<local>"]
    assert local
    assert all(r["destination_name"] == r["destination_id"] == "<local>" for r in local)
    hosts = get(controller, token, "/api/hosts")["hosts"]
    assert all(tuple(h) == simulator.HOST_FIELDS for h in hosts)
    report = get(controller, token, REPORT)
    assert tuple(report) == simulator.SCHEDULE_REPORT_FIELDS
    assert all(isinstance(value, int) for value in report.values())


@pytest.mark.parametrize("mode", ["ovc", "mva"])
def test_virtual_machines_state_defaults_to_alive_and_takes_a_list(
    start: Callable[..., SimulatedController], mode: str
) -> None:
    controller = start(FederationSpec(vms=100), mode=mode)
    token = login(controller)
    served = controller.virtual_machines()
    states = Counter(vm["state"] for vm in served)
    assert states["ALIVE"] > 0
    assert states["REMOVED"] > 1
    assert states["DELETED"] == 1

    def ids(**params: object) -> set[str]:
        return set(by_id(listing(controller, token, "/api/virtual_machines", **params)))

    def where(*wanted: str) -> set[str]:
        return {str(vm["id"]) for vm in served if vm["state"] in wanted}

    assert ids() == where("ALIVE")
    assert ids(state="REMOVED") == where("REMOVED")
    assert ids(state="ALIVE,REMOVED,DELETED") == where("ALIVE", "REMOVED", "DELETED")
    assert ids(state="REMOVED,DELETED") == where("REMOVED", "DELETED")
    boston = {str(vm["id"]) for vm in served if vm["omnistack_cluster_name"] == "Boston DC"}
    assert ids(omnistack_cluster_name="Boston DC") == boston & where("ALIVE")


def weekday_matches(days: str, local: time.struct_time) -> bool:
    """The test's own reading of a rule's days (All, Mon,Wed,Fri, 1,15, last)."""
    if days.lower() == "all":
        return True
    for part in days.split(","):
        if part == time.strftime("%a", local):
            return True
        if part.isdigit() and int(part) == local.tm_mday:
            return True
        tomorrow = time.gmtime(time.mktime(local) - time.timezone + 86400)
        if part.lower() == "last" and tomorrow.tm_mday == 1:
            return True
    return False


def scheduled(rule: Json, local_name: str) -> bool:
    """Whether a policy backup named by its local time (plus 1 s) is at one of the rule's times."""
    local = time.strptime(local_name[:19], "%Y-%m-%dT%H:%M:%S")
    minute = local.tm_hour * 60 + local.tm_min
    start_h, start_m = map(int, rule["start_time"].split(":"))
    end_h, end_m = map(int, rule["end_time"].split(":"))
    start_minute, end_minute = start_h * 60 + start_m, (end_h * 60 + end_m) or 24 * 60
    return (
        local.tm_sec == 1
        and start_minute <= minute < end_minute
        and (minute - start_minute) % rule["frequency"] == 0
        and weekday_matches(rule["days"], local)
    )


def test_backups_are_consistent_with_the_inventory_and_follow_the_rules(
    start: Callable[..., SimulatedController],
) -> None:
    controller = start(FederationSpec(vms=120, clusters=4, external_store_share=0.3))
    token = login(controller)
    backups = listing(controller, token, "/api/backups", limit=5000)
    vms = by_id(listing(controller, token, "/api/virtual_machines", state="ALIVE,REMOVED,DELETED"))
    policies = by_id(listing(controller, token, "/api/policies"))
    hosts = by_id(listing(controller, token, "/api/hosts"))
    clusters = by_id(listing(controller, token, "/api/omnistack_clusters"))
    for vm in vms.values():
        policy, host = policies[vm["policy_id"]], hosts[vm["host_id"]]
        assert vm["policy_name"] == policy["name"]
        assert (vm["host_name"], vm["omnistack_cluster_id"]) == (
            host["name"],
            host["omnistack_cluster_id"],
        )
        assert clusters[vm["omnistack_cluster_id"]]["name"] == vm["omnistack_cluster_name"]
        assert host["id"] in clusters[vm["omnistack_cluster_id"]]["members"]
    destinations_seen: Counter[str] = Counter()
    for backup in backups:
        vm = vms[backup["virtual_machine_id"]]
        assert backup["virtual_machine_name"] == vm["name"]
        assert backup["virtual_machine_state"] == vm["state"]
        assert backup["datastore_id"] == vm["datastore_id"]
        assert backup["hypervisor_type"] == vm["hypervisor_type"]
        rules = policies[vm["policy_id"]]["rules"]
        if backup["omnistack_cluster_name"] == vm["omnistack_cluster_name"]:
            kind, at = "local", [r for r in rules if r["destination_name"] == "<local>"]
        elif backup["omnistack_cluster_name"]:
            kind = "DR"
            at = [r for r in rules if r["destination_name"] == backup["omnistack_cluster_name"]]
            assert backup["state"] != "PROTECTED" or backup["sent"] > 0
        else:
            kind = "store"
            at = [r for r in rules if r["external_store_name"] == backup["external_store_name"]]
            assert backup["backup_store_type"].startswith("StoreOnce")
        assert at, f"{vm['name']}: a backup at a destination its policy does not name"
        destinations_seen[kind] += 1
        if backup["type"] == "POLICY":
            assert any(scheduled(rule, backup["name"]) for rule in at), backup["name"]
        created = time.mktime(time.strptime(backup["created_at"], "%Y-%m-%dT%H:%M:%SZ"))
        assert created - time.timezone <= NOW
    assert destinations_seen["DR"] > 10
    assert destinations_seen["store"] > 10
    with_backups = {b["virtual_machine_id"] for b in backups}
    gone = [vm for vm in vms.values() if vm["state"] in ("REMOVED", "DELETED")]
    assert gone
    assert all(vm["id"] in with_backups for vm in gone)  # backups outlive their VMs
    assert any(not h["policy_enabled"] for h in hosts.values())


def test_every_protection_status_is_planted_in_the_default_federation(
    start: Callable[..., SimulatedController],
) -> None:
    controller = start(FederationSpec())
    assert controller.planted == simulator.ROLE_STATUSES
    assert set(controller.planted.values()) == set(simulator.PROTECTION_STATUSES)
    token = login(controller)
    vms = listing(controller, token, "/api/virtual_machines")
    policies = by_id(listing(controller, token, "/api/policies"))
    hosts = by_id(listing(controller, token, "/api/hosts"))
    backups = listing(controller, token, "/api/backups", limit=5000)
    named = {vm["name"]: vm for vm in vms}
    expected = controller.expected_statuses
    assert set(expected) == set(by_id(vms))  # every live VM, and only them
    planted_ids = {vm["id"] for vm in vms if vm["name"] in simulator.ROLE_STATUSES}
    assert {expected[i] for i in set(expected) - planted_ids} == {"ok"}

    def seconds(text: str) -> float:
        return float(time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone)

    def of(name: str, **where: object) -> list[Json]:
        vm_id = named[name]["id"]
        return sorted(
            (
                b
                for b in backups
                if b["virtual_machine_id"] == vm_id and all(b[k] == v for k, v in where.items())
            ),
            key=lambda b: str(b["created_at"]),
            reverse=True,
        )

    # What makes each planted VM what it is, seen through the API.
    assert not of(simulator.NEVER_BACKED_UP_VM)
    assert NOW - seconds(named[simulator.NEVER_BACKED_UP_VM]["created_at"]) == 5 * 86400
    assert not of(simulator.NEW_VM)
    assert NOW - seconds(named[simulator.NEW_VM]["created_at"]) == 600
    assert policies[named[simulator.NO_RULES_VM]["policy_id"]]["rules"] == []
    assert "no rules" in named[simulator.NO_RULES_VM]["policy_name"]
    assert not hosts[named[simulator.POLICY_DISABLED_VM]["host_id"]]["policy_enabled"]
    assert policies[named[simulator.POLICY_DISABLED_VM]["policy_id"]]["rules"]
    dr = named[simulator.DR_STOPPED_VM]
    local = of(simulator.DR_STOPPED_VM, omnistack_cluster_name=dr["omnistack_cluster_name"])
    copies = [b for b in of(simulator.DR_STOPPED_VM) if b not in local]
    assert NOW - seconds(local[0]["created_at"]) < 2 * 3600
    assert copies
    assert NOW - seconds(copies[0]["created_at"]) > 4 * 86400
    last_failed = of(simulator.LAST_FAILED_VM)
    assert [b["state"] for b in last_failed[:2]] == ["FAILED", "PROTECTED"]
    assert {b["state"] for b in of(simulator.FAILING_VM)} == {"FAILED"}
    assert NOW - seconds(of(simulator.STALE_VM, state="PROTECTED")[0]["created_at"]) > 3 * 86400
    assert named[simulator.BUSINESS_HOURS_VM]["policy_name"].startswith("Business hours")


def test_the_schedule_report_follows_the_policies_and_the_vms(
    start: Callable[..., SimulatedController],
) -> None:
    spec = FederationSpec(vms=80, daily_backup_rate_limit=1000, retained_backups_limit=10_000)
    controller = start(spec)
    token = login(controller)
    vms = listing(controller, token, "/api/virtual_machines")
    policies = by_id(listing(controller, token, "/api/policies"))
    hosts = by_id(listing(controller, token, "/api/hosts"))
    report = get(controller, token, REPORT)

    def per_day(rule: Json) -> float:  # the test's own count: slots a day, times days used
        start_h, start_m = map(int, rule["start_time"].split(":"))
        end_h, end_m = map(int, rule["end_time"].split(":"))
        minutes = ((end_h * 60 + end_m) or 1440) - (start_h * 60 + start_m)
        slots: int = -(-minutes // rule["frequency"])
        days = rule["days"].split(",")
        if rule["days"].lower() == "all":
            share = 1.0
        elif days[0].isalpha() and days[0].lower() != "last":
            share = len(days) / 7
        else:
            share = len(days) * 12 / 365.25
        return slots * share

    rate = retained = 0.0
    for vm in vms:  # live ones, on hosts that take policy backups
        if hosts[vm["host_id"]]["policy_enabled"]:
            for rule in policies[vm["policy_id"]]["rules"]:
                rate += per_day(rule)
                retained += per_day(rule) * rule["retention"] / 1440
    assert report["daily_backup_rate"] == pytest.approx(rate, abs=2)
    assert report["projected_retained_backups"] == pytest.approx(retained, rel=0.01)
    assert report["daily_backup_rate_limit"] == 1000
    assert report["retained_backups_limit"] == 10_000
    assert report["backup_rate_level"] == round(100 * report["daily_backup_rate"] / 1000, 0)
    assert report["backup_rate_level"] > 90  # a federation past 90% of its daily limit
    assert report["projected_retained_backups_level"] == round(
        100 * report["projected_retained_backups"] / 10_000
    )


def test_an_older_controller_answers_the_schedule_report_with_an_error(
    start: Callable[..., SimulatedController],
) -> None:
    controller = start(FederationSpec(), api_version="1.10")
    version = requests.get(controller.url + "/api/version", timeout=5)
    assert version.json()["REST_API_Version"] == "1.10"
    assert "v1.10+json" in version.headers["Content-Type"]
    token = login(controller)
    report = requests.get(
        controller.url + REPORT, headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert report.status_code == 404
    body = report.json()
    assert (body["status"], body["path"]) == ("404", REPORT)
    assert {"exception", "message", "timestamp", "error_code"} <= set(body)
    vms = get(controller, token, "/api/virtual_machines")["virtual_machines"]
    assert vms
    assert all("host_name" not in vm and vm["host_id"] for vm in vms)  # not yet in 1.10
    assert get(controller, token, "/api/policies")["count"] > 0
    with pytest.raises(ValueError, match="api_version"):
        SimulatedController([], api_version="one")


def test_faults_and_limits_apply_to_the_inventory_too(
    start: Callable[..., SimulatedController],
) -> None:
    controller = start(FederationSpec(vms=60))
    token = login(controller)
    faults = controller.faults
    faults.paths = frozenset({"/api/virtual_machines", REPORT})
    faults.fail_next(2)
    headers = {"Authorization": f"Bearer {token}"}
    failed = requests.get(controller.url + "/api/virtual_machines", headers=headers, timeout=5)
    assert failed.status_code == 500
    assert requests.get(controller.url + REPORT, headers=headers, timeout=5).status_code == 500
    assert get(controller, token, "/api/hosts")["count"] > 0  # not aimed at
    faults.limit_cap = 10
    page = get(controller, token, "/api/virtual_machines", limit=100)
    assert (page["limit"], len(page["virtual_machines"])) == (10, 10)
    vm_id = page["virtual_machines"][0]["id"]
    faults.make_odd("created_at_na", [vm_id])
    odd = by_id(get(controller, token, "/api/virtual_machines", id=vm_id)["virtual_machines"])
    assert odd[vm_id]["created_at"] == "NA"
    faults.malformed = "truncated"
    cut = requests.get(controller.url + REPORT, headers=headers, timeout=5)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)
    seen = controller.stats.snapshot()
    assert seen.items_served_per_path["/api/virtual_machines"] == 11
    assert [limit for _, limit in seen.pages_per_path["/api/virtual_machines"]] == [500, 100, 500]


def test_set_inventory_serves_records_as_given(
    start: Callable[..., SimulatedController],
) -> None:
    controller = start(FederationSpec())
    assert controller.planted
    odd_vm = {"id": "v1", "name": "odd", "state": "ALIVE", "created_at": "NA", "policy_id": "p"}
    controller.set_inventory(virtual_machines=[odd_vm], schedule_report={"daily_backup_rate": 7})
    token = login(controller)
    assert get(controller, token, "/api/virtual_machines")["virtual_machines"] == [odd_vm]
    assert get(controller, token, REPORT) == {"daily_backup_rate": 7}
    assert get(controller, token, "/api/policies")["count"] > 0  # kept
    assert controller.planted == {}  # no longer the generated federation
    controller.set_backups([{"id": "b1", "name": "x", "state": "PROTECTED"}])
    assert get(controller, token, "/api/virtual_machines")["count"] == 0
    assert get(controller, token, REPORT)["daily_backup_rate"] == 0


@pytest.mark.parametrize("paged", INVENTORY.values(), ids=lambda paged: paged.key)
def test_set_inventory_replaces_the_collection_its_envelope_key_names(
    start: Callable[..., SimulatedController], paged: Paged
) -> None:
    controller = start(FederationSpec(vms=5))
    others = {p.path: controller.records(p.path) for p in INVENTORY.values() if p is not paged}
    assert all(others.values())
    record = {"id": "r1", "name": "only", **dict(paged.query.defaults)}
    replaced: dict[str, Any] = {paged.key: [record]}
    controller.set_inventory(**replaced)
    token = login(controller)
    assert get(controller, token, paged.path)[paged.key] == [record]
    assert controller.records(paged.path) == [record]
    assert {path: controller.records(path) for path in others} == others
    with pytest.raises(TypeError, match="no inventory collection"):
        controller.set_inventory(datastores=[record])


@pytest.mark.parametrize("paged", TABLE, ids=lambda paged: paged.key)
def test_every_collection_of_the_table_is_served_with_the_common_rules(
    start: Callable[..., SimulatedController], paged: Paged
) -> None:
    """A route, paging, fields=, a sort by any field HPE documents, strict mode's 400s and
    the faults aimed at it: what an entry of the table gets without a line of its own."""
    controller = start(FederationSpec(vms=40), api_version="1.10")
    assert controller.routes[paged.path].login
    token = login(controller)
    whole = get(controller, token, paged.path, limit=5000)
    assert whole["count"] == len(whole[paged.key]) >= 3
    ids = sorted(str(r["id"]) for r in whole[paged.key])
    paged_ids = [
        str(r["id"])
        for offset in range(0, len(ids), 2)
        for r in get(
            controller, token, paged.path, offset=offset, limit=2, sort="id", order="ascending"
        )[paged.key]
    ]
    assert paged_ids == ids
    narrow = get(controller, token, paged.path, fields="id", limit=3)[paged.key]
    assert [set(r) for r in narrow] == [{"id"}] * 3
    young = [f for f, since in restapi.FIELDS[paged.path].items() if since > (1, 10)]
    for params in ({"sort": "nonsense"}, {"fields": "id,nonsense"}, *({"sort": f} for f in young)):
        refused = get_path(controller, token, paged.path, **params)
        assert refused.status_code == 400, params
        assert refused.json()["path"] == paged.path
    documented = [f for f, since in restapi.FIELDS[paged.path].items() if since <= (1, 10)]
    for unserved in [f for f in documented if f not in whole[paged.key][0]][:1]:
        assert get(controller, token, paged.path, sort=unserved)["count"] == whole["count"]
    requests_before = controller.stats.snapshot().requests_per_path[paged.path]
    controller.faults.paths = frozenset({paged.path})
    controller.faults.fail_next(1, 503)
    assert get_path(controller, token, paged.path).status_code == 503
    controller.faults.limit_cap = 2
    assert len(get(controller, token, paged.path)[paged.key]) == 2
    assert controller.stats.snapshot().requests_per_path[paged.path] == requests_before + 2


@pytest.mark.parametrize(
    ("rule", "offset", "expected"),
    [
        # 2023-11-14 (a Tuesday) 22:13:20 UTC
        (simulator.schedule.Rule(60), 0, ["22:00 Tue", "21:00 Tue", "20:00 Tue"]),
        (simulator.schedule.Rule(240), -4 * 3600, ["16:00 Tue", "12:00 Tue", "08:00 Tue"]),
        (
            simulator.schedule.Rule(60, "Mon,Tue,Wed,Thu,Fri", "08:00", "18:00"),
            -4 * 3600,
            ["17:00 Tue", "16:00 Tue", "15:00 Tue"],
        ),
        (
            simulator.schedule.Rule(1440, "Mon,Wed,Fri", "22:00", "00:00"),
            0,
            ["22:00 Mon", "22:00 Fri", "22:00 Wed"],
        ),
        (simulator.schedule.Rule(1440, "1,15", "03:00", "04:00"), 0, ["03:00 01", "03:00 15"]),
        (simulator.schedule.Rule(1440, "last", "23:00"), 3600, ["23:00 31", "23:00 30"]),
    ],
    ids=["hourly", "4-hourly", "business-hours", "mon-wed-fri", "month-days", "last"],
)
def test_rule_times_follow_the_window_and_the_days(
    rule: simulator.schedule.Rule, offset: int, expected: list[str]
) -> None:
    times = itertools.islice(rule.times(int(NOW), offset), len(expected))
    local = [time.gmtime(t + offset) for t in times]
    shown = [
        time.strftime(
            "%H:%M %a"
            if rule.days in ("All", "Mon,Tue,Wed,Thu,Fri", "Mon,Wed,Fri")
            else "%H:%M %d",
            t,
        )
        for t in local
    ]
    assert shown == expected


def test_expected_intervals_are_the_longest_gaps_of_each_destination() -> None:
    inventory = simulator.inventory.plan_inventory(FederationSpec(), int(NOW))
    by_name = {p.name: p for p in {vm.policy for vm in inventory.vms}}
    intervals = {
        name: sorted(simulator.federation.expected_intervals(policy).values())
        for name, policy in by_name.items()
    }
    assert intervals["Hourly local"] == [3600]
    assert intervals["Hourly local + daily to London DR"] == [3600, 86400]
    assert intervals["Business hours (hourly, Mon-Fri 08:00-18:00)"] == [(2 * 24 + 15) * 3600]
    assert intervals["Nightly Mon/Wed/Fri at 22:00"] == [3 * 86400]
    assert intervals["Daily local + 1st and 15th to London DR"] == [86400, 17 * 86400]
    assert intervals["Daily local + month end to StoreOnce-Cloud"] == [86400, 31 * 86400]


# --- TLS, stats, command line ----------------------------------------------------------------


def test_tls_with_a_certificate_the_client_trusts(
    start: Callable[..., SimulatedController], tmp_path: Path
) -> None:
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    controller = start(small_federation(), tls=(str(cert_file), str(key_file)))
    assert controller.url.startswith("https://127.0.0.1:")
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides verify
    session.verify = str(ca_file)
    assert session.get(controller.url + "/api/version", timeout=5).status_code == 200
    token = login(controller, session)
    assert get_backups(controller, token, session, limit=3).json()["count"] == 100
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(controller.url + "/api/version", timeout=5)  # system CAs: unknown issuer
    assert session.get(controller.url + "/api/version", timeout=5).status_code == 200


def test_stats_count_what_clients_did(controller: SimulatedController) -> None:
    token = login(controller)
    sizes = 0
    for offset in (0, 30, 60, 90):
        response = get_backups(controller, token, offset=offset, limit=30, fields="id")
        sizes += len(response.content)
    requests.get(controller.url + "/api/version", timeout=5)
    # The server counts an answer after sending it: wait for the last one to be counted.
    wait_until(lambda: sum(controller.stats.snapshot().status_counts.values()) == 6)
    stats = controller.stats.snapshot()
    assert stats.logins == 1
    assert stats.backups_requests == 4
    assert stats.backups_served == 100
    assert stats.pages == ((0, 30), (30, 30), (60, 30), (90, 30))
    assert stats.requests_per_path == {"/api/oauth/token": 1, "/api/backups": 4, "/api/version": 1}
    assert stats.status_counts == {200: 6}
    assert stats.bytes_sent > sizes
    assert stats.max_in_flight == 1
    assert stats.in_flight == 0
    controller.stats.reset()
    assert controller.stats.snapshot().backups_requests == 0
    assert stats.backups_requests == 4  # a snapshot does not change after it is taken


def test_a_large_federation_is_served_quickly(start: Callable[..., SimulatedController]) -> None:
    controller = start(FederationSpec(vms=500, total_backups=30_000))
    token = login(controller)
    fields = "id,state,created_at,size,omnistack_cluster_name,virtual_machine_id"
    listed = listing(controller, token, "/api/backups", limit=3000, fields=fields)
    assert len({b["id"] for b in listed}) == 30_000


def test_main_serves_until_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter.simulator",
            "--port",
            "0",
            "--backups",
            "2000",
            "--limit-cap",
            "300",
            "--odd-every",
            "100",
            "--odd-kind",
            "size_null",
            "--timeout-above-limit",
            "1000",
            "--html-errors",
            "502,504",
            "--error-code",
            "number",
            "--no-schedule-report",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        lines = dict(process.stdout.readline().strip().split(": ", 1) for _ in range(4))
        assert lines["username"] == "administrator@vsphere.local"
        assert lines["backups"] == "2000"
        url = lines["url"]
        assert requests.get(url + "/api/version", timeout=5).status_code == 200
        grant = password_grant(lines["username"], lines["password"])
        token = request_token(url, grant).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        page = requests.get(url + "/api/backups", params={"limit": 1000}, headers=auth, timeout=5)
        assert (page.json()["limit"], len(page.json()["backups"])) == (300, 300)
        listing = requests.get(
            url + "/api/backups", params={"limit": "5000", "sort": "id"}, headers=auth, timeout=5
        )
        assert sum(b["size"] is None for b in listing.json()["backups"][:300]) == 3  # 1 in 100
        bad = requests.get(url + "/api/backups", params={"limit": -1}, headers=auth, timeout=5)
        assert bad.json()["error_code"] == 400
        assert requests.get(url + "/api/version", timeout=5).json()["REST_API_Version"] == "1.10"
        report = requests.get(url + REPORT, headers=auth, timeout=5)
        assert (report.status_code, report.json()["error_code"]) == (404, 404)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_every_flag_of_the_simulator_is_described_in_its_help() -> None:
    from exporter.simulator import cli as simulator_cli

    parser = simulator_cli._parser()
    undescribed = [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings and not (action.help or "").strip()
    ]
    assert undescribed == []
    assert "config.simulator.yaml" in parser.format_help()
