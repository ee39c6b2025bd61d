"""The generated federation: what a :class:`FederationSpec` describes, as stored rows."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

from exporter.simulator.store import GENERATED, Row
from exporter.simulator.values import DAY, Times, seeded_uuid4
from exporter.simulator.vocabulary import BACKUP_STATES

#: ALIVE, daily policy that stopped: its newest PROTECTED backup is about 3 days old.
STALE_VM: Final = "stale-vm-01"
#: ALIVE, recent hourly backups, every one FAILED (no PROTECTED backup at all).
FAILING_VM: Final = "failing-vm-01"
#: virtual_machine_state REMOVED; its newest backup is about 5 days old.
REMOVED_VM: Final = "removed-vm-01"
#: virtual_machine_state DELETED; its newest backup is about 10 days old.
DELETED_VM: Final = "deleted-vm-01"
#: Two ALIVE, fresh VMs with different ids (on different clusters) share this name.
SHARED_NAME_VM: Final = "shared-name-vm"
#: Fresh VMs with non-ASCII names.
NON_ASCII_VMS: Final = ("Dateiserver-Zürich", "東京-web-01")
#: A fresh VM whose name holds a double quote and a backslash.
QUOTE_BACKSLASH_VM: Final = 'quote"back\\slash-vm'
#: Every backup of this fresh VM is on the external store EXTERNAL_STORE_NAME
#: (omnistack_cluster_id and omnistack_cluster_name are "").
EXTERNAL_STORE_VM: Final = "external-store-vm-01"
EXTERNAL_STORE_NAME: Final = "StoreOnce-Boston"
#: Fresh hourly VM: newest backup PROTECTED, the next ten take the ten other states in turn.
ALL_STATES_VM: Final = "all-states-vm-01"
#: virtual_machine_type TEMPLATE, daily backups, consistency_type NOT_APPLICABLE.
TEMPLATE_VM: Final = "template-win2022"

# (name, role, cluster index); the order is the order in which roles are dropped when a spec
# has fewer VMs than roles.
_ROLES: Final = (
    (STALE_VM, "stale", 0),
    (FAILING_VM, "failing", 1),
    (REMOVED_VM, "removed", 0),
    (DELETED_VM, "deleted", 1),
    (SHARED_NAME_VM, "fresh", 0),
    (SHARED_NAME_VM, "fresh", 1),
    (NON_ASCII_VMS[0], "fresh", 1),
    (NON_ASCII_VMS[1], "fresh", 0),
    (QUOTE_BACKSLASH_VM, "fresh", 0),
    (EXTERNAL_STORE_VM, "external", 0),
    (ALL_STATES_VM, "all-states", 0),
    (TEMPLATE_VM, "template", 2),
)

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


@dataclass(frozen=True)
class FederationSpec:
    """What federation to generate; the same spec and ``now`` always give the same backups.

    ``clusters`` OmniStack clusters are named "Boston DC", "Zürich-Ost", "London DR" (Hyper-V),
    "Singapore Edge", "São Paulo Lab", then "Cluster 06"... The first VMs play the roles named
    by this module's constants (STALE_VM, FAILING_VM, ...; see :func:`generate_backups`), the
    others are regular ALIVE VMs named like "web-0012" with hourly, 4-hourly or daily policies.
    """

    seed: int = 1
    clusters: int = 3
    vms: int = 40
    backups_per_vm: int = 12
    #: If set, exactly this many backups, spread evenly over ``vms`` VMs.
    total_backups: int | None = None
    #: Whether the first VMs play the named roles (benchmarks may want only regular VMs).
    roles: bool = True
    #: Share of regular VMs that keep every third backup on an external store.
    external_store_share: float = 0.1
    #: Share of regular VMs that were removed from the hypervisor (state REMOVED).
    removed_vm_share: float = 0.05
    #: Share of a regular VM's older backups that are MANUAL (name "<vm>-backup-<time>", no expiry).
    manual_share: float = 0.05
    #: Share of a regular VM's older backups that FAILED (the newest is always PROTECTED).
    failed_share: float = 0.02
    #: Share of regular VMs whose backups are replicated to a remote cluster (``sent`` > 0).
    replicated_share: float = 0.3

    def __post_init__(self) -> None:
        problems = []
        if self.clusters < 1:
            problems.append("clusters must be at least 1")
        if self.vms < 1:
            problems.append("vms must be at least 1")
        if self.backups_per_vm < 0:
            problems.append("backups_per_vm must not be negative")
        if self.total_backups is not None and self.total_backups < 0:
            problems.append("total_backups must not be negative")
        for name in (
            "external_store_share",
            "removed_vm_share",
            "manual_share",
            "failed_share",
            "replicated_share",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        if problems:
            raise ValueError("invalid FederationSpec: " + "; ".join(problems))


@dataclass(frozen=True)
class _Cluster:
    id: str
    name: str
    offset: int
    hypervisor: str
    compute_parent: str
    compute_parent_id: str
    datastores: tuple[tuple[str, str], ...]
    group_ids: tuple[str, ...]


@dataclass
class _VmPlan:
    name: str
    role: str
    cluster: int
    count: int
    interval: int = 3600
    state: str = "ALIVE"
    vm_type: str = "VM"
    external_every: int = 0  # 1: every backup on the external store; 3: every third
    replicated: bool = False
    app_consistent: bool = False
    groups: tuple[Row, Row] = field(default=((), ()))


def _clusters(spec: FederationSpec, rng: random.Random) -> list[_Cluster]:
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
            _Cluster(cluster_id, name, offset, hypervisor, parent, parent_id, datastores, group_ids)
        )
    return result


def _plans(spec: FederationSpec, rng: random.Random) -> list[_VmPlan]:
    if spec.total_backups is None:
        counts = [spec.backups_per_vm] * spec.vms
    else:
        base, extra = divmod(spec.total_backups, spec.vms)
        counts = [base + (1 if i < extra else 0) for i in range(spec.vms)]
    plans = []
    roles = _ROLES if spec.roles else ()
    for i in range(spec.vms):
        if i < len(roles):
            name, role, cluster = roles[i]
            plan = _VmPlan(name, role, cluster % spec.clusters, counts[i])
            if role == "stale":
                plan.interval = DAY
            elif role == "removed":
                plan.state = "REMOVED"
            elif role == "deleted":
                plan.state = "DELETED"
            elif role == "external":
                plan.external_every = 1
            elif role == "all-states" and spec.total_backups is None:
                plan.count = max(plan.count, len(BACKUP_STATES))
            elif role == "template":
                plan.vm_type, plan.interval = "TEMPLATE", DAY
        else:
            prefix = _VM_PREFIXES[i % len(_VM_PREFIXES)]
            plan = _VmPlan(f"{prefix}-{i:04d}", "regular", i % spec.clusters, counts[i])
            plan.interval = rng.choice((3600, 3600, 4 * 3600, DAY))
            if rng.random() < spec.removed_vm_share:
                plan.state = "REMOVED"
            if rng.random() < spec.external_store_share:
                plan.external_every = 3
            plan.replicated = rng.random() < spec.replicated_share
        plan.app_consistent = rng.random() < 0.3
        plans.append(plan)
    return plans


def _vm_groups(plan: _VmPlan, cluster: _Cluster, rng: random.Random) -> tuple[Row, Row]:
    """The shared values of a VM's backups: on its cluster, and on an external store."""
    vm_id = seeded_uuid4(rng)
    ds_id, ds_name = rng.choice(cluster.datastores)
    associated = {"id": cluster.id, "name": cluster.name}
    vm = (
        ds_id,
        ds_name,
        vm_id,
        plan.name,
        plan.state,
        plan.vm_type,
        cluster.hypervisor,
        cluster.compute_parent,
        cluster.compute_parent_id,
        list(cluster.group_ids),
        associated,
    )
    local = (cluster.id, cluster.name, "", "SimplivityStore", *vm)
    if plan.role == "external":
        external = ("", "", EXTERNAL_STORE_NAME, "StoreOnceOnPrem", *vm)
    else:
        external = ("", "", "StoreOnce-Cloud", "StoreOnceCloud", *vm)
    return local, external


def generate_rows(spec: FederationSpec, now: float) -> list[Row]:
    rng = random.Random(spec.seed)
    times = Times()
    clusters = _clusters(spec, rng)
    plans = _plans(spec, rng)
    now_s = int(now)
    other_states = [s for s in BACKUP_STATES if s != "PROTECTED"]
    rows: list[Row] = []
    for plan in plans:
        cluster = clusters[plan.cluster]
        local, external = _vm_groups(plan, cluster, rng)
        interval = plan.interval
        if plan.count * interval > 400 * DAY:  # keep huge federations within ~13 months
            interval = max(60, (400 * DAY // plan.count) // 60 * 60)
        newest = now_s - 600
        if plan.role == "stale":
            newest = now_s - 3 * DAY
        elif plan.state == "REMOVED":
            newest = now_s - (5 if plan.role == "removed" else rng.randint(1, 20)) * DAY
        elif plan.state == "DELETED":
            newest = now_s - 10 * DAY
        newest_slot = newest // interval * interval
        if plan.role == "stale":
            newest_slot = newest // 3600 * 3600  # ~3 days old, not up to 4
        retention = interval * (plan.count + 2)
        base_size = rng.randint(4, 400) * 1024**3
        good_consistency = "VSS" if cluster.hypervisor == "HYPERV" else "DEFAULT"
        for j in range(plan.count):
            slot = newest_slot - j * interval
            created = slot + rng.randint(1, 240)
            state = "PROTECTED"
            kind = "POLICY"
            if plan.role == "failing":
                state = "FAILED"
            elif plan.role == "all-states":
                if j > 0:
                    state = other_states[(j - 1) % len(other_states)]
            elif j > 0:
                draw = rng.random()
                if draw < spec.failed_share:
                    state = "FAILED"
                elif draw < spec.failed_share + 0.005:
                    state = "DEGRADED"
                draw = rng.random()
                if draw < spec.manual_share:
                    kind = "MANUAL"
                elif draw < spec.manual_share + 0.002:
                    kind = "UNSPECIFIED"
            if kind == "MANUAL":
                name = f"{plan.name}-backup-{times.local(created, cluster.offset)}"
                expiration = "NA"
            else:
                name = times.local(slot + 1, cluster.offset)
                expiration = times.utc(slot + retention)
            size = base_size + rng.randint(-(base_size >> 6), base_size >> 6)
            if state == "FAILED":
                size = 0
            if j < 2 or state != "PROTECTED":
                unique, unique_ts = 0, "NA"
            else:
                unique = size // rng.randint(20, 1000)
                unique_ts = times.utc(slot + 3600)
            if plan.replicated and state == "PROTECTED":
                duration = rng.randint(5, 900)
                sent, sent_at = unique or size // 50, times.utc(created + duration)
            else:
                duration, sent, sent_at = 0, 0, "NA"
            if plan.vm_type == "TEMPLATE":
                consistent, consistency = False, "NOT_APPLICABLE"
            elif plan.app_consistent:
                if rng.random() < 0.01:
                    consistent, consistency = False, "FAILEDVSS"
                else:
                    consistent, consistency = True, good_consistency
            else:
                consistent, consistency = False, "NONE"
            on_external = plan.external_every and j % plan.external_every == plan.external_every - 1
            rows.append(
                (
                    seeded_uuid4(rng),
                    name,
                    state,
                    kind,
                    times.utc(created),
                    expiration,
                    size,
                    unique,
                    unique_ts,
                    sent,
                    duration,
                    sent_at,
                    consistent,
                    consistency,
                    external if on_external else local,
                )
            )
    return rows


def generate_backups(spec: FederationSpec, now: float) -> list[dict[str, object]]:
    """The backups of a deterministic federation, as ``/api/backups`` lists them.

    Every backup has every field of :data:`BACKUP_FIELDS`. Same ``spec`` and ``now`` (Unix
    seconds), same list. The default spec (3 clusters, 40 VMs, 12 backups each) contains all 11
    states, ``"NA"`` expiration and unique-size times, MANUAL/POLICY/UNSPECIFIED backups, a
    Hyper-V cluster ("London DR") and a non-ASCII cluster ("Zürich-Ost"), and these VMs (the
    module constants name them):

    - ``stale-vm-01`` (STALE_VM): ALIVE, newest PROTECTED backup about 3 days old.
    - ``failing-vm-01`` (FAILING_VM): ALIVE, recent hourly backups, all FAILED.
    - ``removed-vm-01`` (REMOVED_VM) and ``deleted-vm-01`` (DELETED_VM): virtual_machine_state
      REMOVED / DELETED, newest backups 5 / 10 days old. Some regular VMs are REMOVED too.
    - ``shared-name-vm`` (SHARED_NAME_VM): two ALIVE fresh VMs, different ids and clusters.
    - ``Dateiserver-Zürich`` and ``東京-web-01`` (NON_ASCII_VMS), ``quote"back\\slash-vm``
      (QUOTE_BACKSLASH_VM): fresh.
    - ``external-store-vm-01`` (EXTERNAL_STORE_VM): every backup on the external store
      ``StoreOnce-Boston`` (omnistack_cluster_id/name ""); some regular VMs also keep every third
      backup on ``StoreOnce-Cloud``.
    - ``all-states-vm-01`` (ALL_STATES_VM): newest PROTECTED, then each other state in turn.
    - ``template-win2022`` (TEMPLATE_VM): a TEMPLATE.
    - the rest (``web-0012``, ``db-0014``, ...): ALIVE, hourly/4-hourly/daily policies, newest
      backup PROTECTED and less than a day old.

    Role VMs come first; a spec with fewer VMs than roles drops the last roles.
    """
    return [GENERATED.as_dict(row) for row in generate_rows(spec, now)]
