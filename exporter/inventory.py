"""VMs, policies and hosts: who should be protected, how often, and whether they are.

Each poll reads the inventory's listings with a scanner of their own over the backups' client
(paged, sorted by id, ``fields=`` only what is needed; alongside the backups, one request at a
time) into an :class:`InventoryRead`, and the federation's backup limits with one GET
(:data:`SCHEDULE_REPORT`, parsed by :func:`parse_schedule_report`).
Once the backups have been counted, :meth:`InventoryRead.judge` joins the two and judges every
live VM against its own policy (:mod:`exporter.protection`): the
:class:`~exporter.model.ControllerSnapshot` the poll publishes.

These listings are small (one record per VM, policy or host, never per backup), so they are
decoded in the exporter's own process. An odd value (``"NA"``, a wrong type) in a record is
read as missing, never as a broken controller: a text becomes empty, a time unknown, a host's
``policy_enabled`` true (as before REST API 1.4, which had no such field).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, TypeVar

from exporter.model import (
    BackupSnapshot,
    ControllerSnapshot,
    ControllerVersions,
    DecodeError,
    Host,
    Inventory,
    Policy,
    RecordError,
    ScheduleReport,
    VirtualMachine,
    VMBackups,
    VMProtection,
    clean_text,
    decode_json,
    is_cut,
    is_timestamp,
    label_value,
    text_field,
    timestamp_seconds,
)
from exporter.pages import Collection
from exporter.protection import PROTECTION_STATUSES, NewestBackup, VMFacts, judge, worst_first
from exporter.recovery import orphaned, recovery_windows
from exporter.schedule import (
    LOCAL,
    MAX_POLICIES_WORK,
    MAX_RULE_WORK,
    Rule,
    RuleCostError,
    app_consistent_intervals,
    check_cost,
    expected_intervals,
    parse_rules,
)

#: VM listings of many thousand objects are known to exhaust a controller's memory
#: (OMNI-69918): pages of this many VMs at most, whatever ``poll.page_size`` says.
MAX_VM_PAGE_SIZE = 1000
#: The live VMs (``state`` defaults to ALIVE; asked for explicitly all the same).
VIRTUAL_MACHINES = Collection(
    "/api/virtual_machines",
    key="virtual_machines",
    item="virtual machine",
    # host_id, not host_name: only newer controllers have host_name; the host listing has both.
    fields=(
        "id",
        "name",
        "created_at",
        "policy_id",
        "policy_name",
        "omnistack_cluster_name",
        "datastore_name",
        "host_id",
        "app_aware_vm_status",
    ),
    filters=(("state", "ALIVE"),),
    max_page_size=MAX_VM_PAGE_SIZE,
    orders=("id", "-created_at"),
)
#: Policies, hosts and clusters are few: a controller that will not sort them by id is asked
#: for the whole listing in one page.
POLICIES = Collection(
    "/api/policies",
    key="policies",
    item="policy",
    fields=("id", "name", "rules"),
    orders=("id", ""),
)
HOSTS = Collection(
    "/api/hosts",
    key="hosts",
    item="host",
    # A host has no omnistack_cluster_name (HPE's schema): CLUSTERS names its cluster's id.
    fields=("id", "name", "omnistack_cluster_id", "policy_enabled"),
    orders=("id", ""),
)
#: The OmniStack clusters' names, by id: a few records, for the hosts'.
CLUSTERS = Collection(
    "/api/omnistack_clusters",
    key="omnistack_clusters",
    item="OmniStack cluster",
    fields=("id", "name"),
    orders=("id", ""),
)
#: REST API 1.11 and later; an older controller answers it with an error status.
SCHEDULE_REPORT = "/api/policies/policy_schedule_report"
#: The REST API version, and a virtual controller's OmniStack version: what fields to ask for.
VERSION = "/api/version"
#: The inventory's listings in the order a poll reads them: the live VMs first, then the
#: policies and hosts they name, then the clusters' names (for the hosts).
INVENTORY_LISTINGS = (VIRTUAL_MACHINES, POLICIES, HOSTS, CLUSTERS)

_NO_BACKUPS: Mapping[str, float] = MappingProxyType({})
#: What a policy promises a VM of a cluster: expected intervals, those of its rules that ask for
#: application-consistent backups, recovery windows (each per destination).
_Promises = tuple[Mapping[str, int], Mapping[str, int], Mapping[str, int]]
_T = TypeVar("_T")


class InventoryRead:
    """One poll's read of the inventory: records in (one listing after the other), judged
    protection out.

    >>> read = InventoryRead()
    >>> read.add_vm({"id": "v1", "name": "web", "policy_id": "p1", "created_at": "NA",
    ...              "omnistack_cluster_name": "Boston", "host_id": "h1"})
    >>> read.add_policy({"id": "p1", "name": "Hourly", "rules": [{"frequency": 60,
    ...     "days": "All", "start_time": "00:00", "end_time": "00:00",
    ...     "destination_name": "<local>"}]})
    >>> read.add_host({"id": "h1", "name": "esx-01", "omnistack_cluster_id": "c1",
    ...                "policy_enabled": True})
    >>> read.add_cluster({"id": "c1", "name": "Boston"})
    >>> inventory = read.inventory(None)
    >>> inventory.vms[0].policy, inventory.vms[0].host, inventory.vms[0].created_at
    ('Hourly', 'esx-01', None)
    >>> inventory.hosts[0].cluster
    'Boston'
    >>> dict(inventory.policies[0].intervals)
    {'<Local>': 3600}
    """

    def __init__(self) -> None:
        self._vms: list[VirtualMachine] = []
        self._policies: list[Policy] = []
        self._hosts: list[Host] = []
        self._rules: dict[str, tuple[Rule, ...]] = {}  # policy id -> its usable rules
        self._cluster_names: dict[str, str] = {}  # omnistack_cluster_id -> its name
        self._host_clusters: dict[str, str] = {}  # host id -> its omnistack_cluster_id
        self._vm_ids: set[str] = set()
        self._rules_work = 0  # what judging by the policies read so far may take
        self._cut: set[str] = set()  # the label values cut to MAX_LABEL_LENGTH
        # Each text held once: a cluster's, policy's, datastore's or host's name and id
        # repeat in thousands of VMs, and JSON gives each its own copy (with 20,000 VMs, 9 of
        # a snapshot's 30 MiB, held twice while a poll ends).
        self._texts: dict[str, str] = {}

    @property
    def cut_labels(self) -> frozenset[str]:
        """The label values so far that were too long and were cut (:func:`label_value`)."""
        return frozenset(self._cut)

    def _text(self, record: Mapping[str, Any], key: str) -> str:
        """:func:`~exporter.model.text_field`, noting a value it cut."""
        value = text_field(record, key)
        value = self._texts.setdefault(value, value)
        if is_cut(record.get(key)):
            self._cut.add(value)
        return value

    def _name(self, record: Mapping[str, Any]) -> str:
        """A name, "NA" included: something may be called that."""
        value = record.get("name")
        if not isinstance(value, str):
            return ""
        name = label_value(value)
        if is_cut(value):
            self._cut.add(name)
        return name

    def _id(self, record: Mapping[str, Any]) -> str:
        """The record's id (a text: the scan places no other)."""
        record_id = label_value(record["id"])
        if is_cut(record["id"]):
            self._cut.add(record_id)
        return record_id

    # -- the listings' records, one at a time (PageCounter sinks)

    def add_vm(self, record: Mapping[str, Any]) -> None:
        """:class:`RecordError` for a VM whose id, as a label value, is another VM's: the ids
        differ, but only in what a label cannot carry (crafted to collide with label_value's
        hash); one series per VM is worth more than this VM."""
        vm_id = self._id(record)
        if vm_id in self._vm_ids:
            raise RecordError(
                f"virtual machine {vm_id[:64]!r}: its id, as a label, is another VM's"
            )
        self._vm_ids.add(vm_id)
        self._vms.append(
            VirtualMachine(
                vm_id=vm_id,
                name=self._name(record),
                cluster=self._text(record, "omnistack_cluster_name"),
                policy_id=self._text(record, "policy_id"),
                policy=self._text(record, "policy_name"),
                datastore=self._text(record, "datastore_name"),
                host_id=self._text(record, "host_id"),
                host="",  # named once the hosts are read
                created_at=_timestamp(record.get("created_at")),
                app_aware_status=self._text(record, "app_aware_vm_status"),
            )
        )

    def add_policy(self, record: Mapping[str, Any]) -> None:
        """:class:`RecordError` for a policy whose rules are too costly to evaluate
        (:func:`~exporter.schedule.check_cost`), or that comes after policies which took all
        the work a poll spends on them (:data:`~exporter.schedule.MAX_POLICIES_WORK`): its
        VMs are then ``not_scheduled``."""
        policy_id = self._id(record)
        raw_rules = record.get("rules")
        parsed = parse_rules(raw_rules)
        for rule in raw_rules if isinstance(raw_rules, list) else ():
            for key in ("destination_name", "external_store_name"):
                value = rule.get(key) if isinstance(rule, dict) else None
                if isinstance(value, str) and is_cut(value.strip()):
                    self._cut.add(label_value(value.strip()))  # as parse_rule names it
        if self._rules_work > MAX_POLICIES_WORK:
            raise RecordError(
                f"policy {policy_id[:64]!r}: not evaluated, the policies before it took all the "
                "work a poll spends on policies"
            )
        try:
            self._rules_work += check_cost(parsed.rules)
        except RuleCostError as error:
            self._rules_work += MAX_RULE_WORK
            raise RecordError(f"policy {policy_id[:64]!r}: {error}") from None
        self._rules[policy_id] = parsed.rules
        self._policies.append(
            Policy(
                policy_id=policy_id,
                name=self._name(record),
                rules=parsed.count,
                intervals=expected_intervals(parsed.rules, LOCAL),
                problems=tuple(clean_text(problem) for problem in parsed.problems),
            )
        )

    def add_cluster(self, record: Mapping[str, Any]) -> None:
        # Ids as text_field gives the hosts' omnistack_cluster_id.
        self._cluster_names[label_value(record["id"])] = self._name(record)

    def add_host(self, record: Mapping[str, Any]) -> None:
        enabled = record.get("policy_enabled")
        host_id = self._id(record)
        self._host_clusters[host_id] = text_field(record, "omnistack_cluster_id")
        self._hosts.append(
            Host(
                host_id=host_id,
                name=self._name(record),
                cluster="",  # named once the clusters are read
                # Only an explicit "no" disables: a missing or odd value says nothing.
                policy_enabled=not (
                    enabled is False or (isinstance(enabled, str) and enabled.lower() == "false")
                ),
            )
        )

    # -- once every listing is read

    def inventory(self, schedule: ScheduleReport | None) -> Inventory:
        """The listings as one :class:`~exporter.model.Inventory`.

        A VM's host is named from the host listing (its id when not listed there), its policy
        from the policy listing when the VM record gave no name. A host's OmniStack cluster is
        named from its ``omnistack_cluster_id`` (REST API 1.9 and later) through the cluster
        listing, or else (an older controller) from the cluster of the VMs on it; a host with
        neither (no id, no live VM) stays unnamed (""), and no VM names it.
        Policies sharing a name, or hosts sharing a cluster and a name, would make duplicate
        series: the first by id is kept.
        """
        vm_clusters = {vm.host_id: vm.cluster for vm in self._vms if vm.cluster}
        named = [
            replace(
                host,
                cluster=self._cluster_names.get(self._host_clusters.get(host.host_id, ""))
                or vm_clusters.get(host.host_id, ""),
            )
            for host in self._hosts
        ]
        hosts = _unique(
            sorted(named, key=lambda h: (h.cluster, h.name, h.host_id)),
            key=lambda h: (h.cluster, h.name),
        )
        policies = _unique(
            sorted(self._policies, key=lambda p: (p.name, p.policy_id)), key=lambda p: p.name
        )
        host_names = {host.host_id: host.name for host in self._hosts}
        policy_names = {policy.policy_id: policy.name for policy in self._policies}
        vms = [
            replace(
                vm,
                policy=vm.policy or policy_names.get(vm.policy_id, ""),
                host=host_names.get(vm.host_id) or vm.host_id,
            )
            for vm in self._vms
        ]
        vms.sort(key=lambda vm: (vm.name, vm.vm_id))
        return Inventory(tuple(vms), tuple(policies), tuple(hosts), schedule)

    def judge(
        self,
        inventory: Inventory,
        backups: BackupSnapshot,
        *,
        now: float,
        overdue_factor: float,
        grace_seconds: float,
    ) -> ControllerSnapshot:
        """Every live VM of ``inventory`` judged against its own policy at ``now``."""
        backups_by_vm = {vm.vm_id: vm for vm in backups.vms}
        enabled = {host.host_id: host.policy_enabled for host in self._hosts}
        # Many VMs share few (policy, cluster) pairs: looked up here once per pair, not once per
        # VM in expected_intervals' own cache, which hashes every rule at each call.
        intervals_of: dict[tuple[str, str], _Promises] = {}
        by_status: dict[str, dict[str, int]] = {
            cluster: dict.fromkeys(PROTECTION_STATUSES, 0)
            for cluster in sorted(
                {vm.cluster for vm in inventory.vms}
                | {host.cluster for host in inventory.hosts if host.cluster}
            )
        }
        policy_vms: dict[str, int] = {}
        protection: list[VMProtection] = []
        ranked = []
        for vm in inventory.vms:
            key = (vm.policy_id, vm.cluster)
            promises = intervals_of.get(key)
            if promises is None:
                rules = self._rules.get(vm.policy_id, ())
                promises = intervals_of[key] = (
                    expected_intervals(rules, vm.cluster),
                    app_consistent_intervals(rules, vm.cluster),
                    recovery_windows(rules, vm.cluster),
                )
            intervals, app_intervals, windows = promises
            held = backups_by_vm.get(vm.vm_id)
            verdict = judge(
                VMFacts(
                    created_at=vm.created_at,
                    intervals=intervals,
                    newest_protected=held.newest_protected if held else _NO_BACKUPS,
                    newest_backup=_newest(held),
                    policy_enabled=enabled.get(vm.host_id, True),
                    app_intervals=app_intervals,
                    newest_app_consistent=_newest_app_consistent(held, app_intervals),
                ),
                now=now,
                overdue_factor=overdue_factor,
                grace_seconds=grace_seconds,
            )
            judged = VMProtection(
                vm=vm,
                backups=held,
                intervals=intervals,
                status=verdict.status,
                destination=verdict.destination,
                newest_protected=verdict.newest_protected,
                expected_interval=verdict.expected_interval,
                app_intervals=app_intervals,
                recovery_windows=windows,
            )
            protection.append(judged)
            by_status[vm.cluster][verdict.status] += 1
            policy_vms[vm.policy] = policy_vms.get(vm.policy, 0) + 1
            if verdict.at_risk:
                ranked.append((worst_first(verdict), vm.name, vm.vm_id, judged))
        ranked.sort(key=lambda entry: entry[:3])
        return ControllerSnapshot(
            backups=backups,
            inventory=inventory,
            protection=tuple(protection),
            at_risk=tuple(entry[3] for entry in ranked),
            vms_by_status=by_status,
            policy_vms=policy_vms,
            judged_at=now,
            overdue_factor=overdue_factor,
            grace_seconds=grace_seconds,
            orphaned=orphaned(backups, self._vm_ids),
        )


def parse_versions(body: bytes) -> ControllerVersions:
    """The body of ``GET /api/version``; :class:`DecodeError` if it is not a JSON object.

    >>> parse_versions(b'{"REST_API_Version": "1.25", "SVTFS_Version": "5.3.1.284"}')
    ControllerVersions(rest_api='1.25', svtfs='5.3.1.284')
    """
    document = decode_json(VERSION, body)
    if not isinstance(document, dict):
        raise DecodeError(f"{VERSION} answered with something else than an object")
    return ControllerVersions(
        _version(document.get("REST_API_Version")), _version(document.get("SVTFS_Version"))
    )


def _version(value: object) -> str:
    """A version as a label value: text only, bounded."""
    return label_value(value) if isinstance(value, str) else ""


def parse_schedule_report(body: bytes) -> ScheduleReport:
    """The body of :data:`SCHEDULE_REPORT`; :class:`DecodeError` if it is not a JSON object.

    >>> parse_schedule_report(b'{"daily_backup_rate": 9120, "daily_backup_rate_limit": 24000,'
    ...                       b' "projected_retained_backups": "NA"}').retained_backups_projected
    """
    document = decode_json(SCHEDULE_REPORT, body)
    if not isinstance(document, dict):
        raise DecodeError(f"{SCHEDULE_REPORT} answered with something else than an object")
    return ScheduleReport(
        daily_backups=_number(document.get("daily_backup_rate")),
        daily_backups_limit=_number(document.get("daily_backup_rate_limit")),
        retained_backups_projected=_number(document.get("projected_retained_backups")),
        retained_backups_limit=_number(document.get("retained_backups_limit")),
    )


def _newest(held: VMBackups | None) -> NewestBackup | None:
    if held is None or held.newest_created is None:
        return None
    return NewestBackup(held.newest_state, held.newest_created, held.newest_destination)


def _newest_app_consistent(
    held: VMBackups | None, app_intervals: Mapping[str, int]
) -> Mapping[str, float | None]:
    """Where the VM is judged on consistency, and its newest application-consistent backup
    there (:attr:`~exporter.protection.VMFacts.newest_app_consistent`)."""
    if held is None or not app_intervals:
        return _NO_BACKUPS
    return {
        where: at.newest_app_consistent
        for where in app_intervals
        if (at := held.held.get(where)) is not None and at.consistency_known
    }


def _unique(items: list[_T], key: Callable[[_T], object]) -> list[_T]:
    seen: set[object] = set()
    kept: list[_T] = []
    for item in items:
        if (k := key(item)) not in seen:
            seen.add(k)
            kept.append(item)
    return kept


def _timestamp(value: object) -> float | None:
    """``2018-05-08T10:00:01Z`` as Unix seconds; ``None`` for ``"NA"`` or anything else."""
    return timestamp_seconds(value) if is_timestamp(value) else None


def _number(value: object) -> float | None:
    if (type(value) is int or type(value) is float) and math.isfinite(value):
        return float(value)
    return None
