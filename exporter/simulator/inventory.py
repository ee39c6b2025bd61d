"""The federation's inventory: clusters, hosts, policies, and where each VM lives.

:func:`plan_inventory` places the VMs of a :class:`FederationSpec` (roles first); the backups
follow in :mod:`exporter.simulator.federation`. The ``*_record`` functions write each object
as the REST API lists it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from exporter.simulator.schedule import LOCAL, Destination, Rule
from exporter.simulator.spec import (
    BACKUPLESS_ROLES,
    CLOUD_STORE_NAME,
    EXTERNAL_STORE_NAME,
    ROLES,
    TRIMMED_VM_KEPT,
    FederationSpec,
)
from exporter.simulator.values import DAY, Times, seeded_uuid4

# name, UTC offset (seconds), hypervisor, short code
_CLUSTER_CATALOG: Final = (
    ("Boston DC", -4 * 3600, "VSPHERE", "BOS"),
    ("Zürich-Ost", 2 * 3600, "VSPHERE", "ZRH"),
    ("London DR", 1 * 3600, "HYPERV", "LON"),
    ("Singapore Edge", 8 * 3600, "VSPHERE", "SIN"),
    ("São Paulo Lab", -3 * 3600, "VSPHERE", "GRU"),
)
_VM_PREFIXES: Final = (
    "web",
    "app",
    "db",
    "sql",
    "file",
    "mail",
    "dc",
    "k8s-node",
    "erp",
    "jump",
    "log",
    "cache",
)
_HOSTS_PER_CLUSTER: Final = 3
_EVERY: Final = {60: "Hourly", 240: "4-hourly", 1440: "Daily"}
_RETENTION_DAYS: Final = {60: 7, 240: 30, 1440: 90}
# Longest span regular VMs' backups cover: denser policies for VMs with many backups.
_MAX_SPAN: Final = 400 * DAY
# Denser and denser local frequencies (minutes), each a divisor of a day.
_DENSER: Final = (1440, 240, 60, *(m for m in range(59, 0, -1) if 1440 % m == 0))
_STOPPED_AGO: Final = {
    "stale": 3 * DAY,
    "host-disabled": 2 * DAY,
    "removed": 5 * DAY,
    "deleted": 10 * DAY,
}
_CREATED_AGO: Final = {
    "never-backed-up": 5 * DAY,
    "no-rules": 30 * DAY,
    "new": 600,
    "trimmed": 90 * DAY,  # older than its 30-day window
}


@dataclass(frozen=True)
class Cluster:
    id: str
    name: str
    offset: int
    hypervisor: str
    short: str
    compute_parent: str
    compute_parent_id: str
    datastores: tuple[tuple[str, str], ...]
    group_ids: tuple[str, ...]


@dataclass(frozen=True)
class Host:
    id: str
    name: str
    cluster: Cluster
    policy_enabled: bool = True


@dataclass(frozen=True, eq=False)  # one object per policy: hashed by identity, quickly
class Policy:
    id: str
    name: str
    rules: tuple[Rule, ...]
    rule_ids: tuple[str, ...]
    owner: Cluster


@dataclass
class VmPlan:
    """One VM: where it lives, its policy, and how its backups go."""

    id: str
    name: str
    role: str
    cluster: Cluster
    host: Host
    datastore: tuple[str, str]
    policy: Policy
    count: int
    state: str = "ALIVE"
    vm_type: str = "VM"
    app_consistent: bool = False
    #: per rule of its policy: no backup after this time (Unix seconds)
    stops: tuple[int, ...] = ()
    #: Unix seconds; set with the backups when it has some
    created: int = 0
    #: the protection status a correct exporter finds (None: not ALIVE); set with the backups
    expected: str | None = None
    #: per rule of its policy: its PROTECTED backups; set with the backups
    kept: tuple[int, ...] = ()
    #: destination -> its oldest PROTECTED backup (Unix seconds); set with the backups
    oldest: dict[str, int] = field(default_factory=dict)
    #: per rule of its policy: the values its backups there share (see federation); set with
    #: the backups
    groups: tuple[tuple[object, ...], ...] = ()
    #: per rule of its policy: its backups, when they expire as they are replaced
    #: (FederationSpec.steady); set with the backups
    held: tuple[int, ...] = ()


@dataclass(frozen=True)
class Inventory:
    clusters: tuple[Cluster, ...]
    hosts: tuple[Host, ...]
    policies: tuple[Policy, ...]
    vms: list[VmPlan]


def plan_inventory(spec: FederationSpec, now: int) -> Inventory:
    """The clusters, hosts, policies and VMs of a spec (VM backups are not generated here)."""
    rng = random.Random(spec.seed)
    clusters = _clusters(spec, rng)
    hosts = {c.id: _hosts(c, rng) for c in clusters}
    policies = _Catalog(clusters, random.Random(f"policies-{spec.seed}"))
    roles = ROLES[: spec.vms] if spec.roles else ()
    counts = _counts(spec, [r[1] for r in roles])
    suspended: list[Host] = []
    vms = []
    for i in range(spec.vms):
        if i < len(roles):
            name, role, index, _ = roles[i]
        else:
            name, role, index = regular_vm_name(i), "regular", i
        cluster = clusters[index % len(clusters)]
        host = hosts[cluster.id][i % _HOSTS_PER_CLUSTER]
        datastore = rng.choice(cluster.datastores)
        policy = policies.local(60)
        vm = VmPlan(seeded_uuid4(rng), name, role, cluster, host, datastore, policy, counts[i])
        if role != "regular":
            _play(vm, spec, policies, now)
            if role == "host-disabled":
                name = f"{cluster.short}-{_host_kind(cluster)}-POLICY-SUSPENDED"
                vm.host = Host(seeded_uuid4(rng), name, cluster, policy_enabled=False)
                suspended.append(vm.host)
        else:
            _regular(vm, spec, policies, rng, now)
        vm.app_consistent = rng.random() < 0.3
        if not vm.stops:
            vm.stops = tuple(now - 600 for _ in vm.policy.rules)
        vms.append(vm)
    all_hosts = tuple(h for c in clusters for h in hosts[c.id]) + tuple(suspended)
    return Inventory(tuple(clusters), all_hosts, policies.all(), vms)


def regular_vm_name(i: int) -> str:
    """The name of the ``i``-th VM of a federation when it plays no role ("web-0012")."""
    return f"{_VM_PREFIXES[i % len(_VM_PREFIXES)]}-{i:04d}"


def _counts(spec: FederationSpec, roles: list[str]) -> list[int]:
    """Backups per VM: roles without backups keep none; the others share them evenly."""
    bearing = [i for i in range(spec.vms) if i >= len(roles) or roles[i] not in BACKUPLESS_ROLES]
    counts = [0] * spec.vms
    if spec.total_backups is None:
        for i in bearing:
            counts[i] = spec.backups_per_vm
    else:
        base, extra = divmod(spec.total_backups, len(bearing))
        for n, i in enumerate(bearing):
            counts[i] = base + (1 if n < extra else 0)
    return counts


def _play(vm: VmPlan, spec: FederationSpec, policies: _Catalog, now: int) -> None:
    """Give a role VM the policy, state and history its role says (see spec.ROLES)."""
    role, cluster = vm.role, vm.cluster
    dr = policies.dr_target(cluster)
    if role in ("stale", "template", "never-backed-up"):
        vm.policy = policies.local(1440)
    elif role == "external" and not spec.external_stores:
        vm.policy = policies.local(60)
    elif role == "external":
        rule = Rule(60, destination=Destination("store", EXTERNAL_STORE_NAME), retention=7 * 1440)
        vm.policy = policies.special(f"Hourly to {EXTERNAL_STORE_NAME}", (rule,))
    elif role == "no-rules":
        vm.datastore = cluster.datastores[-1]
        vm.policy = policies.special(f"{vm.datastore[1]} default (no rules)", ())
    elif role == "dr-stopped":  # daily DR copies stopped 4 days ago (weekly store: 4 weeks)
        vm.policy = policies.regular(60, dr, store=dr is None and spec.external_stores)
        vm.stops = (now - 600, now - (4 if dr else 28) * DAY)
    elif role == "business-hours":
        rule = Rule(60, "Mon,Tue,Wed,Thu,Fri", "08:00", "18:00", retention=14 * 1440)
        vm.policy = policies.special("Business hours (hourly, Mon-Fri 08:00-18:00)", (rule,))
    elif role == "weekdays":
        rule = Rule(1440, "Mon,Wed,Fri", "22:00", "00:00", retention=60 * 1440)
        vm.policy = policies.special("Nightly Mon/Wed/Fri at 22:00", (rule,))
    elif role == "month-days":
        target = Destination("cluster", dr.name, dr.id) if dr else _cloud_store(spec)
        rule = Rule(1440, "1,15", "03:00", "04:00", target, retention=365 * 1440)
        name = f"Daily local + 1st and 15th to {target.name or 'local'}"
        vm.policy = policies.special(name, (policies.base_rule(1440), rule))
    elif role == "month-end":
        target = _cloud_store(spec)
        rule = Rule(1440, "Last", "23:00", "00:00", target, retention=365 * 1440)
        name = f"Daily local + month end to {target.name or 'local'}"
        vm.policy = policies.special(name, (policies.base_rule(1440), rule))
    elif role == "vss-failing":
        target = Destination("cluster", dr.name, dr.id) if dr else Destination("local")
        rule = Rule(1440, destination=target, retention=30 * 1440, app_consistent=True)
        name = f"Hourly local + daily VSS to {dr.name if dr else 'local'}"
        vm.policy = policies.special(name, (policies.base_rule(60), rule))
    elif role == "trimmed":
        rule = Rule(1440, retention=30 * 1440, max_backups=30)
        vm.policy = policies.special("Daily local, 30 kept", (rule,))
        if spec.total_backups is None:  # else: exactly that many backups, as spread
            vm.count = min(vm.count, TRIMMED_VM_KEPT)
    if role == "removed":
        vm.state = "REMOVED"
    elif role == "deleted":
        vm.state = "DELETED"
    elif role == "template":
        vm.vm_type = "TEMPLATE"
    elif role == "all-states" and spec.total_backups is None:
        vm.count = max(vm.count, 11)  # the newest PROTECTED, then the ten other states
    if role in _STOPPED_AGO:
        vm.stops = tuple(now - _STOPPED_AGO[role] for _ in vm.policy.rules)
    if role in _CREATED_AGO:
        vm.created = now - _CREATED_AGO[role]


def _regular(
    vm: VmPlan, spec: FederationSpec, policies: _Catalog, rng: random.Random, now: int
) -> None:
    minutes = rng.choice((60, 60, 240, 1440))
    stop = now - 600
    if rng.random() < spec.removed_vm_share:
        vm.state = "REMOVED"
        stop = now - rng.randint(1, 20) * DAY
    store = rng.random() < spec.external_store_share and spec.external_stores
    dr = policies.dr_target(vm.cluster) if rng.random() < spec.replicated_share else None
    # Each destination gets at least its newest backup: no more rules than backups.
    if dr is not None and vm.count < 2:
        dr = None
    if store and vm.count < (3 if dr else 2):
        store = False
    # Many backups per VM: a denser policy, so that they span at most ~13 months.
    while minutes > 1 and vm.count * minutes * 60 > _MAX_SPAN:
        minutes = next(m for m in _DENSER if m < minutes)
    vm.policy = policies.regular(minutes, dr, store)
    vm.stops = tuple(stop for _ in vm.policy.rules)


def _cloud_store(spec: FederationSpec) -> Destination:
    """StoreOnce-Cloud; the VM's own cluster where there are no external stores (before
    SimpliVity 4.0)."""
    return Destination("store", CLOUD_STORE_NAME) if spec.external_stores else LOCAL


def _clusters(spec: FederationSpec, rng: random.Random) -> list[Cluster]:
    group_ids = (seeded_uuid4(rng),)
    result = []
    for i in range(spec.clusters):
        if i < len(_CLUSTER_CATALOG):
            name, offset, hypervisor, short = _CLUSTER_CATALOG[i]
        else:
            name, offset, hypervisor, short = f"Cluster {i + 1:02d}", 0, "VSPHERE", f"C{i + 1:02d}"
        if hypervisor == "HYPERV":
            parent, parent_id = f"{short}-HV-CLUSTER", seeded_uuid4(rng)
        else:
            parent, parent_id = f"{short}-Compute", f"domain-c{7 + 2 * i}"
        datastores = tuple((seeded_uuid4(rng), f"{short}-DS-{n:02d}") for n in (1, 2))
        cluster_id = seeded_uuid4(rng)
        result.append(
            Cluster(
                cluster_id,
                name,
                offset,
                hypervisor,
                short,
                parent,
                parent_id,
                datastores,
                group_ids,
            )
        )
    return result


def _hosts(cluster: Cluster, rng: random.Random) -> list[Host]:
    return [
        Host(seeded_uuid4(rng), f"{cluster.short}-{_host_kind(cluster)}-{n:02d}", cluster)
        for n in range(1, _HOSTS_PER_CLUSTER + 1)
    ]


def _host_kind(cluster: Cluster) -> str:
    return "HV" if cluster.hypervisor == "HYPERV" else "ESX"


class _Catalog:
    """The federation's policies, made when a VM first needs one (ids drawn in that order)."""

    def __init__(self, clusters: list[Cluster], rng: random.Random) -> None:
        self._clusters = clusters
        self._rng = rng
        self._by_name: dict[str, Policy] = {}

    def all(self) -> tuple[Policy, ...]:
        return tuple(self._by_name.values())

    def dr_target(self, cluster: Cluster) -> Cluster | None:
        """The cluster a VM's DR copies go to: London DR, or another when it is there."""
        n = len(self._clusters)
        if n < 2:
            return None
        preferred = self._clusters[2 if n > 2 else 1]
        return preferred if preferred is not cluster else self._clusters[0]

    @staticmethod
    def base_rule(minutes: int) -> Rule:
        days = _RETENTION_DAYS.get(minutes, 2)
        return Rule(minutes, retention=days * 1440)

    def local(self, minutes: int) -> Policy:
        return self.regular(minutes, None, False)

    def regular(self, minutes: int, dr: Cluster | None, store: bool) -> Policy:
        """``minutes`` local backups, daily copies to ``dr``, weekly ones to StoreOnce-Cloud."""
        name = f"{_EVERY.get(minutes, f'Every {minutes} minutes')} local"
        if dr is not None:
            name += f" + daily to {dr.name}"
        if store:
            name += f" + weekly to {CLOUD_STORE_NAME}"
        policy = self._by_name.get(name)
        if policy is not None:
            return policy
        rules = [self.base_rule(minutes)]
        if dr is not None:
            target = Destination("cluster", dr.name, dr.id)
            rules.append(Rule(1440, destination=target, retention=30 * 1440))
        if store:
            target = Destination("store", CLOUD_STORE_NAME)
            rules.append(Rule(1440, "Sun", "02:00", "03:00", target, 180 * 1440))
        return self.special(name, tuple(rules))

    def special(self, name: str, rules: tuple[Rule, ...]) -> Policy:
        policy = self._by_name.get(name)
        if policy is None:
            ids = tuple(seeded_uuid4(self._rng) for _ in rules)
            policy = Policy(seeded_uuid4(self._rng), name, rules, ids, self._clusters[0])
            self._by_name[name] = policy
        return policy


# --- the records, as the REST API lists them --------------------------------------------------


# Real controllers write "<local>" (lowercase) in both destination fields of a rule to the
# VM's own cluster; a store rule names no cluster (the API does not combine the two).
LOCAL_DESTINATION: Final = "<local>"
_DESTINATION_NAMES: Final = {"local": LOCAL_DESTINATION, "store": ""}
_DESTINATION_IDS: Final = {"local": LOCAL_DESTINATION, "store": ""}


def policy_record(
    policy: Policy, kept: Mapping[tuple[str, int], int] | None = None
) -> dict[str, object]:
    """``kept``: (policy id, rule index) -> the max_backups of a rule that does not set its own
    (:func:`max_backups`)."""
    rules = []
    # Real rules number from 0.
    for number, (rule, rule_id) in enumerate(zip(policy.rules, policy.rule_ids, strict=True)):
        target = rule.destination
        rules.append(
            {
                "id": rule_id,
                "number": number,
                "frequency": rule.frequency,
                "retention": rule.retention,
                "days": rule.days,
                "start_time": rule.start,
                "end_time": rule.end,
                "destination_id": _DESTINATION_IDS.get(target.kind, target.id),
                "destination_name": _DESTINATION_NAMES.get(target.kind, target.name),
                "external_store_name": target.name if target.kind == "store" else "",
                "max_backups": rule_max_backups(policy, number, kept or {}),
                "application_consistent": rule.app_consistent,
                "consistency_type": "VSS" if rule.app_consistent else "NONE",
            }
        )
    return {
        "id": policy.id,
        "name": policy.name,
        "rules": rules,
        "cluster_group_ids": list(policy.owner.group_ids),
        "owner_cluster_id": policy.owner.id,
        "owner_cluster_name": policy.owner.name,
    }


def rule_max_backups(policy: Policy, index: int, kept: Mapping[tuple[str, int], int]) -> int:
    """The max_backups of the policy's rule ``index``: its own, else what ``kept`` says, else
    what its retention holds."""
    rule = policy.rules[index]
    return rule.max_backups or kept.get((policy.id, index)) or rule.retained()


#: Roles whose backups are not what their policy keeps (one PROTECTED backup among ten other
#: states; trimmed by hand): they do not set their policy's max_backups.
_ODD_KEEPERS: Final = frozenset({"all-states", "trimmed"})


def max_backups(inventory: Inventory) -> dict[tuple[str, int], int]:
    """(policy id, rule index) -> the max_backups its record says, for rules that set none: the
    fewest PROTECTED backups of that rule a live VM on the policy holds (the simulator keeps
    fewer backups than retention would, as a controller does whose rules keep that many)."""
    fewest: dict[tuple[str, int], int] = {}
    for vm in inventory.vms:
        if vm.state != "ALIVE" or vm.role in _ODD_KEEPERS:
            continue
        for r, count in enumerate(vm.kept):
            key = (vm.policy.id, r)
            if count and count < fewest.get(key, count + 1):
                fewest[key] = count
    return fewest


def host_record(host: Host) -> dict[str, object]:
    """A host names its OmniStack cluster by id only (HPE's schema: no cluster name), and its
    hypervisor's compute cluster, a different thing, by name."""
    return {
        "id": host.id,
        "name": host.name,
        "state": "ALIVE",
        "omnistack_cluster_id": host.cluster.id,
        "compute_cluster_name": f"{host.cluster.short}-Compute",
        "policy_enabled": host.policy_enabled,
    }


def cluster_record(cluster: Cluster, hosts: Sequence[Host]) -> dict[str, object]:
    return {
        "id": cluster.id,
        "name": cluster.name,
        "type": "OMNISTACK",
        "hypervisor_type": cluster.hypervisor,
        "hypervisor_object_parent_name": cluster.compute_parent,
        "hypervisor_object_parent_id": cluster.compute_parent_id,
        "members": [host.id for host in hosts if host.cluster is cluster],
    }


def vm_record(vm: VmPlan, times: Times) -> dict[str, object]:
    if vm.role == "vss-failing":
        app_aware = "INVALID_CREDS"
    elif vm.app_consistent:
        app_aware = "VALID_CREDS"
    elif vm.vm_type == "TEMPLATE":
        app_aware = "VMWARE_TOOLS_UNAVAILABLE"
    else:
        app_aware = "CAPABLE"
    return {
        "id": vm.id,
        "name": vm.name,
        "state": vm.state,
        "created_at": times.utc(vm.created),
        "policy_id": vm.policy.id,
        "policy_name": vm.policy.name,
        "omnistack_cluster_id": vm.cluster.id,
        "omnistack_cluster_name": vm.cluster.name,
        "datastore_id": vm.datastore[0],
        "datastore_name": vm.datastore[1],
        "host_id": vm.host.id,
        "host_name": vm.host.name,
        "hypervisor_type": vm.cluster.hypervisor,
        "app_aware_vm_status": app_aware,
    }
