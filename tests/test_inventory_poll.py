"""Polls of the simulator's inventory, through the real client, and what a scrape then shows.

The simulator plants every protection status (``SimulatedController.planted``) and knows the
status a correct exporter finds for each live VM (``expected_statuses``): both must come out of
a real poll and a real scrape of ``/metrics``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from exporter.config import Config, MetricsConfig
from exporter.inventory import VIRTUAL_MACHINES
from exporter.model import ControllerStatus
from exporter.protection import PROTECTION_STATUSES
from exporter.simulator import SVTFS_VERSION, FederationSpec, SimulatedController
from exporter.simulator.controller import OLD_SVTFS
from exporter.simulator.spec import TRIMMED_VM, VSS_FAILING_VM
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
            # Where its rules ask for application-consistent backups (the one rule to each
            # such destination of the planted VMs: its interval is the destination's).
            app_late = []
            for labels, newest_app in scrape.matching(
                "simplivity_vm_destination_app_consistent_backup_newest_timestamp_seconds", **vm
            ):
                where = labels["destination"]
                since = newest_app or scrape.value("simplivity_vm_created_timestamp_seconds", **vm)
                interval = scrape.value(
                    "simplivity_vm_backup_expected_interval_seconds", destination=where, **vm
                )
                assert since is not None
                assert interval is not None
                if time.time() - since > interval * 1.5 + 3600:
                    app_late.append(where)
            good = scheduled == 1 and not late and newest > failed
            shown = {
                "not_scheduled": scheduled == 0,
                "new": scheduled == 1 and newest == 0 and not late,
                "never_backed_up": scheduled == 1 and newest == 0 and bool(late),
                "overdue": scheduled == 1 and newest > 0 and bool(late),
                "last_failed": scheduled == 1 and not late and failed > newest > 0,
                "app_inconsistent": good and bool(app_late),
                "ok": good and not app_late,
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


def unix(text: object) -> float:
    return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def test_restore_points_consistency_and_unowned_backups_reach_metrics() -> None:
    """Issue 20's planted cases, counted from the simulator's own records and its own judgement,
    against a real scrape."""
    with Lab() as lab:
        simulator = lab.controller("boston", FederationSpec())
        exporter = lab.start_exporter(POLL)
        scrape = first_good_scrape(exporter)
        vms = live_vms(simulator)
        backups = simulator.backups()

        # Orphaned (VM not live, any state) and never-expiring backups, per cluster or store.
        orphaned: Counter[str] = Counter()
        orphaned_size: Counter[str] = Counter()
        never: Counter[str] = Counter()
        never_size: Counter[str] = Counter()
        points: Counter[tuple[str, str]] = Counter()
        oldest: dict[tuple[str, str], float] = {}
        for b in backups:
            where = str(b["omnistack_cluster_name"] or b["external_store_name"])
            if b["virtual_machine_id"] not in vms:
                orphaned[where] += 1
                orphaned_size[where] += int(b["size"])  # type: ignore[call-overload]
            if b["expiration_time"] == "NA":
                never[where] += 1
                never_size[where] += int(b["size"])  # type: ignore[call-overload]
            if b["state"] == "PROTECTED":
                key = (str(b["virtual_machine_id"]), where)
                points[key] += 1
                oldest[key] = min(oldest.get(key, math.inf), unix(b["created_at"]))
        assert sum(orphaned.values()) > 0  # removed and deleted VMs' backups
        assert sum(never.values()) > 0  # manual backups
        for family, expected in (
            ("simplivity_backups_orphaned", orphaned),
            ("simplivity_backups_orphaned_size_bytes", orphaned_size),
            ("simplivity_backups_never_expiring", never),
            ("simplivity_backups_never_expiring_size_bytes", never_size),
        ):
            shown = {labels["omnistack_cluster"]: v for labels, v in scrape.matching(family)}
            assert shown == {where: expected[where] for where in shown}, family
            assert set(shown) >= set(expected), family

        # Restore points and the oldest of them, at every destination holding any.
        shown_points = {
            (labels["vm_id"], labels["destination"]): v
            for labels, v in scrape.matching("simplivity_vm_destination_restore_points")
        }
        assert {k: v for k, v in shown_points.items() if v} == {
            k: v for k, v in points.items() if k[0] in vms
        }
        for labels, first in scrape.matching(
            "simplivity_vm_destination_oldest_restore_point_timestamp_seconds"
        ):
            assert first == oldest.get((labels["vm_id"], labels["destination"]), 0), labels

        # The VM whose VSS backups fail: no application-consistent backup where its rule asks,
        # and the reason it will go on failing.
        vss = next(vm_id for vm_id, vm in vms.items() if vm["name"] == VSS_FAILING_VM)
        (asked,) = scrape.matching(
            "simplivity_vm_destination_app_consistent_backup_newest_timestamp_seconds", vm_id=vss
        )
        assert asked[1] == 0.0
        (info,) = scrape.matching("simplivity_vm_info", vm_id=vss)
        assert info[0]["app_aware_status"] == "INVALID_CREDS"

        # Short recovery windows: exactly where the simulator judged them short.
        now = time.time()
        created = {
            labels["vm_id"]: v
            for labels, v in scrape.matching("simplivity_vm_created_timestamp_seconds")
        }
        short: dict[str, set[str]] = {}
        for labels, window in scrape.matching("simplivity_vm_destination_recovery_window_seconds"):
            vm_id, where = labels["vm_id"], labels["destination"]
            since = oldest.get((vm_id, where))
            if now - created[vm_id] > window and since is not None and now - since < window / 2:
                short.setdefault(vm_id, set()).add(where)
        assert short == simulator.short_recovery_windows
        names = {str(vms[vm_id]["name"]) for vm_id in short}
        assert TRIMMED_VM in names


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
        # Every status a poll publishes: a poll that read the VMs before the fault may still
        # succeed after it, so the last good snapshot is the last good poll's, found here.
        published: list[ControllerStatus] = []
        exporter.poller.subscribe(lambda: published.append(exporter.poller.statuses()[0]))
        good = first_good_scrape(exporter)
        before = exporter.poller.statuses()[0]
        simulator.faults.paths = frozenset({VIRTUAL_MACHINES.path})
        simulator.faults.fail_next(1000, status=500)
        wait_until(lambda: exporter.scrape().up("boston") == 0, 20, "a failed poll")
        failed = exporter.scrape()
        assert failed.errors("boston")["http"] >= 1
        now = exporter.poller.statuses()[0]
        last_good = max((s for s in (before, *published) if s.up), key=lambda s: s.polls)
        assert last_good.polls < now.polls
        assert now.snapshot is last_good.snapshot
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
