"""Real controllers' answers (tests/data/hpe/samples, sources in its README) through the
exporter's own parsing: the backups counted where they belong, the real policy's rules giving
the expected intervals docs/design.md derives, and the real error bodies read with their words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporter.backups import BACKUPS, Aggregator
from exporter.config import PollConfig
from exporter.inventory import CLUSTERS, VIRTUAL_MACHINES, InventoryRead, parse_schedule_report
from exporter.model import HTTPStatusError
from exporter.pages import Collection, PageCounter
from exporter.schedule import expected_intervals, parse_rules
from exporter.simplivity import SimplivityClient
from exporter.simulator import FederationSpec, SimulatedController
from exporter.simulator.controller import Endpoint
from exporter.simulator.server import Exchange
from tests.live_exporter import controller_config

SAMPLES = Path(__file__).parent / "data" / "hpe" / "samples"
DAY = 86400


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def envelope(key: str, records: list[Any]) -> bytes:
    return json.dumps({"offset": 0, "limit": 500, "count": len(records), key: records}).encode()


def test_every_sample_is_named_in_the_readme_with_its_source() -> None:
    readme = (SAMPLES.parent / "README.md").read_text(encoding="utf-8")
    for path in sorted(SAMPLES.iterdir()):
        assert f"`samples/{path.name}`" in readme, path.name


# -- backups ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cluster", "size"),
    [
        # REST API v1 (HPE's developer portal): a MANUAL backup, no consistency_type yet.
        ("hpedev-get-backups.json", "Boston -:- OmniCube CN-2000 5.5.0", 12574720),
        # OmniStack 3.7.3: PROTECTED though its VSS part failed (FAILEDVSS).
        ("tbeha-2018-backup.json", "DR", 1192566784),
    ],
)
def test_a_real_backup_is_counted_on_its_cluster(name: str, cluster: str, size: int) -> None:
    document = sample(name)
    body = (
        json.dumps(document).encode() if "backups" in document else envelope("backups", [document])
    )
    aggregator = Aggregator()
    outcome = PageCounter(BACKUPS, aggregator.add).count(0, body)
    assert (outcome.counted, outcome.unreadable) == (1, 0)
    (summary,) = aggregator.snapshot().clusters
    assert summary.name == cluster
    assert summary.counts["PROTECTED"] == 1
    assert summary.sizes["PROTECTED"] == size


@pytest.mark.parametrize(
    ("name", "collection", "count"),
    [
        ("tbeha-2019-backups-envelope-partial.json", BACKUPS, 251),
        ("tbeha-2018-vms-envelope-partial.json", VIRTUAL_MACHINES, 101),
    ],
)
def test_a_real_envelope_cut_off_mid_record_leaves_that_record_out_by_name(
    name: str, collection: Collection, count: int
) -> None:
    # The source printed only the first fields of the first record: no id, so no place.
    sink: Callable[[dict[str, Any]], None] = (
        Aggregator().add if collection is BACKUPS else InventoryRead().add_vm
    )
    outcome = PageCounter(collection, sink).count(0, (SAMPLES / name).read_bytes())
    assert (outcome.count, outcome.received, outcome.counted, outcome.unreadable) == (
        count,
        1,
        0,
        1,
    )
    assert outcome.problems == (f"a {collection.item} without an id, at position 0",)


# -- policies -----------------------------------------------------------------------------------


def test_the_real_policy_s_four_rules_give_the_intervals_the_readme_derives() -> None:
    """Policy "Simple" (OmniStack 3.7.3): rule 0 daily at 00:00 to "<local>", rule 1 hourly
    all Sunday to "<local>", rule 2 daily to "Prod", rule 3 daily on the month's "Last" day to
    "DR". A destination's interval is the longest gap of all its rules together."""
    policy = sample("tbeha-2018-policy-simple.json")
    parsed = parse_rules(policy["rules"])
    assert (len(parsed.rules), parsed.problems) == (4, ())
    # A VM on DR (the policy's own cluster): "<local>" and "DR" are one destination; the
    # daily rule sets its gap, 1 day. Prod: daily, 1 day.
    assert dict(expected_intervals(parsed.rules, "DR")) == {"DR": DAY, "Prod": DAY}
    # A VM on Prod: local daily (+ hourly Sundays) is 1 day; DR only on the last day of each
    # month, 31 days (the longest gap, from January's last day to February's).
    assert dict(expected_intervals(parsed.rules, "Prod")) == {"Prod": DAY, "DR": 31 * DAY}
    read = InventoryRead()
    read.add_policy(policy)
    (listed,) = read.inventory(None).policies
    assert (listed.name, listed.rules, listed.problems) == ("Simple", 4, ())


def test_real_policies_listed_without_rules_are_read_by_name() -> None:
    # PowerShell printed these policies' rules as System.Object[]: only name and id are known.
    read = InventoryRead()
    for policy in sample("tbeha-2018-policy-names.json"):
        read.add_policy(policy)
    policies = read.inventory(None).policies
    assert len(policies) == 7
    assert {p.name for p in policies} >= {"Simple", "RPO=10-Mins", "Fixed Default Backup Policy"}
    assert all(p.rules == 0 and not p.intervals for p in policies)


# -- clusters and the schedule report -----------------------------------------------------------


def test_a_real_cluster_names_its_hosts() -> None:
    cluster = sample("tbeha-2018-omnistack-cluster.json")
    read = InventoryRead()
    (member,) = cluster["members"]
    read.add_host({"id": member, "name": "ovc-1", "omnistack_cluster_id": cluster["id"]})
    outcome = PageCounter(CLUSTERS, read.add_cluster).count(
        0, envelope("omnistack_clusters", [cluster])
    )
    assert outcome.counted == 1
    (host,) = read.inventory(None).hosts
    assert (host.name, host.cluster) == ("ovc-1", "DR")


def test_the_sdk_s_mock_schedule_report_is_read() -> None:
    # MOCK, not captured (HPE's Python SDK tests): the only body published.
    report = parse_schedule_report(
        (SAMPLES / "sdk-tests-policy-schedule-report.mock.json").read_bytes()
    )
    assert (report.daily_backups, report.daily_backups_limit) == (123, 12345)
    assert (report.retained_backups_projected, report.retained_backups_limit) == (123, 1234)


# -- error bodies -------------------------------------------------------------------------------


def answering(status: int, body: dict[str, Any]) -> Endpoint:
    def handle(ex: Exchange) -> None:
        ex.send(status, body)

    return Endpoint(("GET",), handle, login=True)


@pytest.mark.parametrize(
    ("name", "status", "words"),
    [
        (
            "github-atkinsroy-issue8-error-400.json",
            400,
            # message, then extendedResponse: the useful words are in the latter.
            "Invalid or unexpected destination specified. Direct copy from OmniStack to any "
            "Cloudbank store, e.g. cloudbackup, not permitted.",
        ),
        ("hpedev-error-404.json", 404, "Object type: backup id: badid could not be found"),
    ],
)
def test_a_real_error_body_is_read_with_its_useful_words(
    name: str, status: int, words: str, start_simulator: Callable[..., SimulatedController]
) -> None:
    simulator = start_simulator(FederationSpec(vms=3))
    simulator.routes["/api/broken"] = answering(status, sample(name))
    client = SimplivityClient(controller_config("real", simulator), PollConfig(timeout_seconds=5))
    try:
        with pytest.raises(HTTPStatusError) as raised:
            client.get_body("/api/broken")
    finally:
        client.close()
    assert raised.value.status == status
    assert str(raised.value) == f"/api/broken answered HTTP {status}: {words}"


def test_an_error_body_is_bounded_and_never_carries_a_token(
    start_simulator: Callable[..., SimulatedController],
) -> None:
    body = sample("github-atkinsroy-issue8-error-400.json")
    simulator = start_simulator(FederationSpec(vms=3))
    simulator.routes["/api/long"] = answering(400, {**body, "extendedResponse": "x" * 5000})

    def echo_token(ex: Exchange) -> None:
        # A controller that quotes the request's own access token in extendedResponse.
        token = ex.header("Authorization").partition(" ")[2]
        ex.send(400, {**body, "extendedResponse": f"Access token expired: {token}"})

    simulator.routes["/api/token"] = Endpoint(("GET",), echo_token, login=True)
    client = SimplivityClient(controller_config("real", simulator), PollConfig(timeout_seconds=5))
    try:
        with pytest.raises(HTTPStatusError) as long:
            client.get_body("/api/long")
        with pytest.raises(HTTPStatusError) as token:
            client.get_body("/api/token")
    finally:
        client.close()
    assert len(str(long.value)) <= len("/api/long answered HTTP 400: ") + 200
    (issued,) = simulator.issued_tokens()
    assert issued not in str(token.value)
    assert str(token.value).startswith(f"/api/token answered HTTP 400: {body['message']}")
    assert "Access token expired" in str(token.value)  # the useful words stay
