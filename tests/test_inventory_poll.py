"""Polls of the simulator's inventory, through the real client, and what a scrape then shows.

The simulator plants every protection status (``SimulatedController.planted``) and knows the
status a correct exporter finds for each live VM (``expected_statuses``): both must come out of
a real poll and a real scrape of ``/metrics``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace

import pytest

from exporter.config import Config, MetricsConfig
from exporter.inventory import VIRTUAL_MACHINES
from exporter.protection import PROTECTION_STATUSES
from exporter.simulator import SVTFS_VERSION, FederationSpec, SimulatedController
from exporter.simulator.controller import OLD_SVTFS
from tests.conftest import wait_until
from tests.live_exporter import FAST_POLL, InProcessExporter, Lab, Scrape, controller_config

#: Long enough not to go stale between two looks, short enough to poll again within a test.
POLL = replace(FAST_POLL, interval_seconds=1, stale_after_seconds=30, timeout_seconds=5)
PER_VM = (
    "simplivity_vm_info",
    "simplivity_vm_backup_newest_timestamp_seconds",
    "simplivity_vm_backup_newest_age_seconds",
    "simplivity_vm_created_timestamp_seconds",
    "simplivity_vm_policy_scheduled",
    "simplivity_vm_backup_expected_interval_seconds",
    "simplivity_vm_destination_backup_newest_timestamp_seconds",
    "simplivity_vm_backup_newest_failed_timestamp_seconds",
)
FEDERATION = {
    "simplivity_federation_daily_backups": "daily_backup_rate",
    "simplivity_federation_daily_backups_limit": "daily_backup_rate_limit",
    "simplivity_federation_retained_backups_projected": "projected_retained_backups",
    "simplivity_federation_retained_backups_limit": "retained_backups_limit",
}


def first_good_scrape(exporter: InProcessExporter, name: str = "boston") -> Scrape:
    wait_until(lambda: exporter.scrape().up(name) == 1, 20, "the first successful poll")
    return exporter.scrape()


def live_vms(simulator: SimulatedController) -> dict[str, dict[str, object]]:
    return {str(vm["id"]): vm for vm in simulator.virtual_machines() if vm.get("state") == "ALIVE"}


@pytest.mark.parametrize(
    ("api_version", "svtfs"),
    # A strict controller (the simulator's default) without external stores, and the newest.
    [("1.13", OLD_SVTFS), ("1.25", SVTFS_VERSION)],
)
def test_every_planted_status_reaches_metrics_through_a_real_scrape(
    api_version: str, svtfs: str
) -> None:
    with Lab() as lab:
        simulator = lab.controller("boston", FederationSpec(), api_version=api_version)
        assert simulator.strict
        exporter = lab.start_exporter(POLL)
        scrape = first_good_scrape(exporter)
        assert scrape.matching("simplivity_controller_info") == [
            ({"controller": "boston", "rest_api_version": api_version, "svtfs_version": svtfs}, 1)
        ]
        # Every backup counted where it is held, by state.
        held = Counter(
            (str(b["omnistack_cluster_name"] or b.get("external_store_name")), str(b["state"]))
            for b in simulator.backups()
        )
        counted = {
            (labels["omnistack_cluster"], labels["state"]): value
            for labels, value in scrape.matching("simplivity_backups", controller="boston")
            if value
        }
        assert counted == held
        expected = simulator.expected_statuses
        vms = live_vms(simulator)
        assert set(simulator.planted.values()) == set(PROTECTION_STATUSES)

        # The poll judged every live VM as the simulator planted it.
        (status,) = exporter.poller.statuses()
        assert status.snapshot is not None
        judged = {p.vm.vm_id: p.status for p in status.snapshot.protection}
        assert judged == dict(expected)

        # /metrics: live VMs by cluster and status, every status of every cluster present.
        by_cluster = Counter((str(vms[vm_id]["omnistack_cluster_name"]), s)
                             for vm_id, s in expected.items())  # fmt: skip
        clusters = {cluster for cluster, _ in by_cluster}
        for cluster in clusters:
            for protection in PROTECTION_STATUSES:
                found = scrape.value(
                    "simplivity_vms",
                    controller="boston",
                    omnistack_cluster=cluster,
                    protection=protection,
                )
                assert found == by_cluster[cluster, protection], (cluster, protection)

        # Each planted VM shows on /metrics what makes its status.
        info = {labels["vm"]: labels for labels, _ in scrape.matching("simplivity_vm_info")}
        for name, planted in simulator.planted.items():
            vm = {"controller": "boston", "vm": name, "vm_id": info[name]["vm_id"]}
            scheduled = scrape.value("simplivity_vm_policy_scheduled", **vm)
            newest = scrape.value("simplivity_vm_backup_newest_timestamp_seconds", **vm) or 0.0
            failed = (
                scrape.value("simplivity_vm_backup_newest_failed_timestamp_seconds", **vm) or 0.0
            )
            late = [
                labels["destination"]
                for labels, interval in scrape.matching(
                    "simplivity_vm_backup_expected_interval_seconds", **vm
                )
                if time.time()
                - (
                    scrape.value(
                        "simplivity_vm_destination_backup_newest_timestamp_seconds",
                        destination=labels["destination"],
                        **vm,
                    )
                    or scrape.value("simplivity_vm_created_timestamp_seconds", **vm)
                    or 0
                )
                > interval * 1.5 + 3600
            ]
            shown = {
                "not_scheduled": scheduled == 0,
                "new": scheduled == 1 and newest == 0 and not late,
                "never_backed_up": scheduled == 1 and newest == 0 and bool(late),
                "overdue": scheduled == 1 and newest > 0 and bool(late),
                "last_failed": scheduled == 1 and not late and failed > newest > 0,
                "ok": scheduled == 1 and not late and newest > failed,
            }
            assert [s for s, holds in shown.items() if holds] == [planted], name

        # Policies, hosts and the federation's limits, as the controller lists them.
        for policy in simulator.policies():
            users = sum(1 for vm in vms.values() if vm["policy_id"] == policy["id"])
            labels = {"controller": "boston", "policy": str(policy["name"])}
            assert scrape.value("simplivity_policy_rules", **labels) == len(policy["rules"])  # type: ignore[arg-type]
            assert scrape.value("simplivity_policy_vms", **labels) == users
        # A host names its cluster by id only: the series carry the cluster's name.
        cluster_names = {c["id"]: c["name"] for c in simulator.clusters()}
        for host in simulator.hosts():
            assert "omnistack_cluster_name" not in host
            enabled = scrape.value(
                "simplivity_host_policy_enabled",
                controller="boston",
                host=str(host["name"]),
                omnistack_cluster=str(cluster_names[host["omnistack_cluster_id"]]),
            )
            assert enabled == (1 if host["policy_enabled"] else 0)
        report = simulator.schedule_report()
        for metric, field in FEDERATION.items():
            assert scrape.value(metric, controller="boston") == report[field]


def test_an_older_controller_without_the_schedule_report_is_polled_all_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Lab() as lab, caplog.at_level(logging.INFO, logger="exporter.poller"):
        lab.controller("old", FederationSpec(vms=25), api_version="1.10")
        exporter = lab.start_exporter(POLL)
        scrape = first_good_scrape(exporter, "old")
        wait_until(lambda: exporter.poller.statuses()[0].polls >= 3, 20, "three polls")
        assert scrape.matching("simplivity_vms", controller="old")
        assert scrape.matching("simplivity_vm_info", controller="old")
        for metric in FEDERATION:
            assert scrape.matching(metric) == [], metric
        said = [r for r in caplog.records if "no schedule report" in r.getMessage()]
        assert len(said) == 1
        assert said[0].levelno == logging.INFO


def test_a_failing_vm_listing_fails_the_poll_and_the_last_good_snapshot_stays() -> None:
    with Lab() as lab:
        simulator = lab.controller("boston", FederationSpec(vms=25))
        exporter = lab.start_exporter(POLL)
        good = first_good_scrape(exporter)
        kept = exporter.poller.statuses()[0].snapshot
        simulator.faults.paths = frozenset({VIRTUAL_MACHINES.path})
        simulator.faults.fail_next(1000, status=500)
        wait_until(lambda: exporter.scrape().up("boston") == 0, 20, "a failed poll")
        failed = exporter.scrape()
        assert failed.errors("boston")["http"] >= 1
        assert exporter.poller.statuses()[0].snapshot is kept
        # Not stale yet: every series of the last good poll is still served.
        for name in (*PER_VM, "simplivity_vms", "simplivity_backups"):
            assert len(failed.matching(name)) == len(good.matching(name)), name


def test_with_per_vm_off_the_counts_policies_hosts_and_limits_stay() -> None:
    with Lab() as lab:
        simulator = lab.controller("boston", FederationSpec())
        config = Config(
            controllers=(controller_config("boston", simulator),),
            poll=POLL,
            metrics=MetricsConfig(per_vm=False),
        )
        exporter = InProcessExporter(config).start()
        lab.exporter = exporter
        scrape = first_good_scrape(exporter)
        for name in PER_VM:
            assert scrape.matching(name) == [], name
        live = len(simulator.expected_statuses)
        assert scrape.total("simplivity_vms", controller="boston") == live
        assert scrape.matching("simplivity_policy_rules")
        assert scrape.matching("simplivity_host_policy_enabled")
        assert scrape.matching("simplivity_federation_daily_backups_limit")
