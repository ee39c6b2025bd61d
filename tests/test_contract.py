"""HPE's published REST API contract holds the exporter and its simulator, for every version.

``tests/data/hpe/contract.json`` is derived from HPE's Swagger reference of REST API 1.25 by
``tools/hpe_contract.py`` (its README names the sources). These tests check that
:mod:`exporter.restapi` (the table the exporter and the simulator use at run time) is that
table; that every request a poll sends names only what the resource documents in the
controller's version; and that every object the simulator serves validates against HPE's
definitions and carries no field its version lacks.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft4Validator  # type: ignore[import-untyped,unused-ignore]

from exporter import restapi
from exporter.backups import BACKUPS
from exporter.config import ControllerConfig, PollConfig, Secret
from exporter.inventory import (
    CLUSTERS,
    INVENTORY_LISTINGS,
    SCHEDULE_REPORT,
    VERSION,
    VIRTUAL_MACHINES,
)
from exporter.pages import Collection, sorting
from exporter.poller import ControllerPoller
from exporter.scan import Scanner
from exporter.simulator import Churn, FederationSpec, ManualClock, SimulatedController
from exporter.simulator.catalog import COLLECTIONS as SIMULATED
from tests.snapshots import RecordingSource

CONTRACT = json.loads(
    (Path(__file__).parent / "data" / "hpe" / "contract.json").read_text(encoding="utf-8")
)
#: Every REST API version the exporter supports (README, "Which controllers").
VERSIONS = [(1, minor) for minor in range(restapi.OLDEST[1], restapi.NEWEST[1] + 1)]
#: The paging and selection parameters every listing documents.
PAGING = {"fields", "limit", "offset", "sort", "order"}
Starter = Callable[..., SimulatedController]
LISTINGS = (BACKUPS, *INVENTORY_LISTINGS)


def resource(path: str) -> dict[str, Any]:
    entry: dict[str, Any] = CONTRACT["resources"][path.removeprefix("/api")]
    return entry


def since(definition: str, field: str) -> tuple[int, int]:
    version = restapi.parse_version(CONTRACT["since"][definition][field])
    assert version is not None
    return version


def label(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


# -- the table ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "definition"),
    [
        (restapi.BACKUPS, "BackupMO"),
        (restapi.VIRTUAL_MACHINES, "virtual_machine"),
        (restapi.POLICIES, "policy"),
        (restapi.RULES, "rule"),
        (restapi.HOSTS, "host"),
        (restapi.CLUSTERS, "omnistack_cluster"),
        (restapi.SCHEDULE_REPORT, "policy_schedule_report"),
    ],
)
def test_the_runtime_table_is_hpes(path: str, definition: str) -> None:
    documented = CONTRACT["definitions"][definition]["properties"]
    assert set(restapi.FIELDS[path]) == set(documented)
    assert {f: since(definition, f) for f in documented} == dict(restapi.FIELDS[path])


def test_the_simulators_collections_are_hpes_resources() -> None:
    """Each entry of the simulator's table: a path and envelope key HPE documents, with its
    fields in the runtime table; every listing the exporter reads among them."""
    for paged in SIMULATED:
        assert resource(paged.path)["key"] == paged.key
        assert restapi.FIELDS[paged.path]
    assert {c.path for c in LISTINGS} <= {paged.path for paged in SIMULATED}


def test_hosts_have_no_cluster_name_and_their_cluster_id_came_with_1_9() -> None:
    assert "omnistack_cluster_name" not in restapi.FIELDS[restapi.HOSTS]
    assert not restapi.documented(restapi.HOSTS, "omnistack_cluster_id", (1, 8))
    assert restapi.documented(restapi.HOSTS, "omnistack_cluster_id", (1, 9))
    assert not restapi.documented(restapi.BACKUPS, "external_store_name", (1, 13))
    assert restapi.documented(restapi.BACKUPS, "external_store_name", (1, 14))


# -- what the exporter asks --------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS, ids=label)
def test_every_request_of_a_poll_names_only_what_its_version_documents(
    version: tuple[int, int],
) -> None:
    source = RecordingSource(version=label(version))
    controller = ControllerConfig(name="c", url="https://h", username="u", password=Secret("p"))
    poller = ControllerPoller(
        controller,
        PollConfig(),
        client_factory=lambda c, p, stop: Scanner(source, page_size=500, max_concurrency=1),
    )
    assert poller.poll_once().up
    assert {page.path for page in source.pages} == (
        {c.path for c in LISTINGS}
        if version >= (1, 9)
        else {c.path for c in LISTINGS if c is not CLUSTERS}  # hosts name no cluster yet
    )
    for page in source.pages:
        entry = resource(page.path)
        definition = entry["definition"]
        properties = CONTRACT["definitions"][definition]["properties"]
        assert page.sort is not None
        for field in (*page.fields, page.sort):
            assert field in properties, (page.path, field)
            assert since(definition, field) <= version, (page.path, field)
        assert PAGING | {name for name, _ in page.filters} <= set(entry["parameters"])
    assert source.gets[0] == VERSION
    assert (SCHEDULE_REPORT in source.gets) is (version >= (1, 11))
    for path in source.gets[1:]:
        assert path.removeprefix("/api") in CONTRACT["resources"], path


@pytest.mark.parametrize("collection", LISTINGS, ids=lambda c: c.path)
def test_every_order_a_listing_may_fall_back_to_is_documented_in_every_version(
    collection: Collection,
) -> None:
    definition = resource(collection.path)["definition"]
    for order in collection.orders:
        field, _ = sorting(order)
        if not field:
            continue  # no sort at all
        assert field in CONTRACT["definitions"][definition]["properties"], order
        assert since(definition, field) == restapi.OLDEST, order
        assert field in collection.fields or field == "id", order  # stitched by its value


# -- what the simulator serves -----------------------------------------------------------------


def strict_schema(definition: str) -> dict[str, Any]:
    """HPE's definition, as JSON schema: every documented field typed as HPE types it, no other
    field. ``required`` is left out: ``fields=`` and older versions leave fields out."""
    definitions = copy.deepcopy(CONTRACT["definitions"])
    for body in definitions.values():
        body.pop("required", None)
        if "properties" in body:
            body["additionalProperties"] = False
    return {"definitions": definitions, "$ref": f"#/definitions/{definition}"}


@pytest.mark.parametrize("version", VERSIONS, ids=label)
def test_every_object_the_simulator_serves_is_hpes_for_its_version(
    version: tuple[int, int], start_simulator: Starter
) -> None:
    controller: SimulatedController = start_simulator(FederationSpec(), api_version=label(version))
    assert every_object_served_is_hpes(controller, version) > 100
    # Hosts never name their cluster; external stores only from 1.14.
    assert all("omnistack_cluster_name" not in h for h in controller.hosts())
    stores = {b.get("external_store_name") for b in controller.backups()} - {None, ""}
    assert bool(stores) is (version >= (1, 14))


@pytest.mark.parametrize("version", [restapi.NEWEST, (1, 13), restapi.OLDEST], ids=label)
def test_what_churn_makes_is_hpes_too(version: tuple[int, int], start_simulator: Starter) -> None:
    """Every kind of change (new backups in every state, copies, locks, renamed, removed and
    new VMs, edited policies, suspended hosts) serves only what HPE's definitions allow."""
    clock = ManualClock()
    churn = Churn().with_rates(dict.fromkeys(Churn.RATES, 30.0))
    controller: SimulatedController = start_simulator(
        FederationSpec(vms=60),
        api_version=label(version),
        clock=clock,
        churn=churn,
        idle_timeout_seconds=10**9,
    )
    before = {b["id"] for b in controller.backups()}
    clock.advance(3 * 3600 - 1000)  # past a whole hour, and 200 s later: new backups mid-way
    changes = controller.changes()
    assert set(changes) >= set(Churn.RATES.values()) | {"scheduled", "saving", "protected"}
    new = [b for b in controller.backups() if b["id"] not in before]
    assert {b["state"] for b in new} >= {"QUEUED", "SAVING", "PROTECTED"}
    assert every_object_served_is_hpes(controller, version) > 100


def every_object_served_is_hpes(controller: SimulatedController, version: tuple[int, int]) -> int:
    """Reads every endpoint of the controller; asserts each object validates against HPE's
    definition and carries no field younger than ``version``; returns how many it read."""
    session = requests.Session()
    token = session.post(
        controller.url + "/api/oauth/token",
        data={
            "grant_type": "password",
            "username": controller.username,
            "password": controller.password,
        },
        auth=("simplivity", ""),
        timeout=10,
    ).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    served = 0
    for path in (*(paged.path for paged in SIMULATED), SCHEDULE_REPORT):
        entry = resource(path)
        definition = entry["definition"]
        params = {"limit": "5000"}
        if path == VIRTUAL_MACHINES.path:
            params["state"] = "ALIVE,REMOVED,DELETED"
        answer = session.get(controller.url + path, params=params, timeout=30)
        if version < restapi.RESOURCE_SINCE.get(path, restapi.OLDEST):
            assert answer.status_code == 404
            continue
        assert answer.status_code == 200, answer.text
        body = answer.json()
        items = body[entry["key"]] if entry["key"] else [body]
        assert items, path
        validator = Draft4Validator(strict_schema(definition))
        for item in items:
            errors = [e.message for e in validator.iter_errors(item)]
            assert not errors, (path, errors[:3])
            young = [f for f in item if since(definition, f) > version]
            assert not young, (path, young)
            for rule in item.get("rules", ()) if definition == "policy" else ():
                assert not [f for f in rule if since("rule", f) > version], rule
            served += 1
    return served


# -- the strict mode ----------------------------------------------------------------------------


def token_of(server: SimulatedController) -> str:
    answer = requests.post(
        server.url + "/api/oauth/token",
        data={"grant_type": "password", "username": server.username, "password": server.password},
        auth=("simplivity", ""),
        timeout=10,
    )
    token: str = answer.json()["access_token"]
    return token


def backups_answer(server: SimulatedController, params: dict[str, str]) -> requests.Response:
    return requests.get(
        server.url + "/api/backups",
        params=params,
        headers={"Authorization": f"Bearer {token_of(server)}"},
        timeout=10,
    )


@pytest.mark.parametrize(
    ("version", "params", "exception"),
    [
        ("1.25", {"fields": "id,nonsense"}, "InvalidParameterException"),
        ("1.13", {"fields": "id,external_store_name"}, "InvalidParameterException"),
        ("1.25", {"sort": "nonsense"}, "InvalidSortCriteriaException"),
        ("1.13", {"sort": "external_store_name"}, "InvalidSortCriteriaException"),
    ],
)
def test_the_strict_simulator_answers_400_in_hpes_error_body(
    version: str, params: dict[str, str], exception: str, start_simulator: Starter
) -> None:
    answer = backups_answer(start_simulator(FederationSpec(vms=5), api_version=version), params)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert set(body) >= {"exception", "path", "message", "timestamp", "status"}
    assert body["exception"] == f"com.simplivity.restapi.exceptions.{exception}"
    assert (body["status"], body["path"]) == ("400", "/api/backups")


@pytest.mark.parametrize(
    ("version", "fields"), [("1.25", "id,nonsense"), ("1.13", "id,external_store_name")]
)
def test_the_lenient_simulator_leaves_out_what_its_version_does_not_document(
    version: str, fields: str, start_simulator: Starter
) -> None:
    server = start_simulator(FederationSpec(vms=5), api_version=version, strict=False)
    answer = backups_answer(server, {"fields": fields})
    assert answer.status_code == 200, answer.text
    assert {tuple(b) for b in answer.json()["backups"]} == {("id",)}
