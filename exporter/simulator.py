"""A simulated HPE SimpliVity controller: a real HTTP(S) server on 127.0.0.1.

It behaves as ``SIMPLIVITY_API.md`` describes, so that ``--demo``, the client tests, the fault
tests and the benchmarks all talk to the exporter's real client over real sockets::

    with SimulatedController(FederationSpec(vms=40)) as controller:
        session = requests.Session()
        token = session.post(
            controller.url + "/api/oauth/token",
            auth=("simplivity", ""),
            data={"grant_type": "password", "username": controller.username,
                  "password": controller.password},
        ).json()["access_token"]
        page = session.get(controller.url + "/api/backups",
                           params={"limit": 3000, "fields": "id,state,created_at"},
                           headers={"Authorization": f"Bearer {token}"}).json()
        # {"offset": 0, "count": 485, "limit": 3000, "backups": [...]}

Endpoints: ``GET /api/version`` (no login), ``POST /api/oauth/token`` (HTTP Basic
``simplivity:`` plus a password grant), ``GET /api/backups`` (Bearer token; offset/limit/count
paging, ``fields``, ``sort``/``order``, single-value filters and the comma-filter defect of an
OVC). Everything else answers 404 (or 405 for a wrong method) with the documented error body.

Faults are injected through :attr:`SimulatedController.faults` while the server runs (500s,
hangs, malformed bodies, an answer that never ends, a cost model, backups created and expiring
while a client pages); :attr:`SimulatedController.stats` counts what clients did.

Run one from the shell (it prints its URL and credentials, and serves until SIGINT/SIGTERM)::

    python -m exporter.simulator --port 8443 --backups 100000 \\
        --request-cost 0.02 --object-cost 0.00002 --max-parallel 8
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import contextlib
import json
import logging
import operator
import random
import re
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Final, Literal, get_args
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "ALL_STATES_VM",
    "BACKUP_FIELDS",
    "BACKUP_STATES",
    "CLIENT_ID",
    "DELETED_VM",
    "EXTERNAL_STORE_NAME",
    "EXTERNAL_STORE_VM",
    "FAILING_VM",
    "MAX_LIMIT",
    "NON_ASCII_VMS",
    "QUOTE_BACKSLASH_VM",
    "REMOVED_VM",
    "SHARED_NAME_VM",
    "STALE_VM",
    "TEMPLATE_VM",
    "Faults",
    "FederationSpec",
    "Malformed",
    "SimulatedController",
    "Stats",
    "generate_backups",
    "main",
]

log = logging.getLogger(__name__)

# --- the API's vocabulary ----------------------------------------------------------------------

#: The 11 documented backup states.
BACKUP_STATES: Final = (
    "NEW",
    "SAVING",
    "FAILED",
    "PROTECTED",
    "UNKNOWN",
    "CANCELING",
    "CANCELED",
    "QUEUED",
    "REBUILDING",
    "DELETED",
    "DEGRADED",
)

#: Every field of a generated backup, in the order of SIMPLIVITY_API.md's table.
BACKUP_FIELDS: Final = (
    "id",
    "name",
    "state",
    "type",
    "created_at",
    "expiration_time",
    "size",
    "unique_size_bytes",
    "unique_size_timestamp",
    "sent",
    "sent_duration",
    "sent_completion_time",
    "application_consistent",
    "consistency_type",
    "omnistack_cluster_id",
    "omnistack_cluster_name",
    "external_store_name",
    "backup_store_type",
    "datastore_id",
    "datastore_name",
    "virtual_machine_id",
    "virtual_machine_name",
    "virtual_machine_state",
    "virtual_machine_type",
    "hypervisor_type",
    "compute_cluster_parent_name",
    "compute_cluster_parent_hypervisor_object_id",
    "cluster_group_ids",
    "associated_cluster",
)
# Fields that differ per backup; the rest are shared by all backups of one VM on one store.
_OWN_FIELDS: Final = BACKUP_FIELDS[:14]
_SHARED_FIELDS: Final = BACKUP_FIELDS[14:]

#: ``limit`` above this answers 400.
MAX_LIMIT: Final = 5000
DEFAULT_LIMIT: Final = 500
#: The OAuth client the token endpoint expects in its HTTP Basic header (empty password).
CLIENT_ID: Final = "simplivity"
REST_API_VERSION: Final = "1.25"
SVTFS_VERSION: Final = "5.3.1.284"
CONTENT_TYPE: Final = "application/vnd.simplivity.v1.25+json;charset=UTF-8"
_JDBC_MESSAGE: Final = (
    "Could not get JDBC Connection; nested exception is java.sql.SQLTransientConnectionException:"
    " HikariPool-1 - Connection is not available, request timed out after 30000ms."
)
_FILTERS: Final = (
    "state",
    "type",
    "virtual_machine_name",
    "virtual_machine_id",
    "omnistack_cluster_name",
    "omnistack_cluster_id",
    "datastore_name",
)
_CREATED_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")

# --- the roles of the default federation ----------------------------------------------------------

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

_DAY: Final = 86400

# --- the federation -------------------------------------------------------------------------


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


Row = tuple[Any, ...]
"""One stored backup: the per-backup values, then one tuple of values shared with its VM."""

_MISSING: Final = object()


class _Times:
    """Formats Unix seconds fast (federations hold hundreds of thousands of timestamps).

    Each text is made once per instance, so that backups of the same time share one string
    (a generated federation of 300,000 backups saves tens of megabytes by it).
    """

    def __init__(self) -> None:
        self._days: dict[int, str] = {}
        self._utc: dict[int, str] = {}
        self._local: dict[tuple[int, int], str] = {}

    def _day(self, day: int) -> str:
        text = self._days.get(day)
        if text is None:
            text = time.strftime("%Y-%m-%d", time.gmtime(day * _DAY))
            self._days[day] = text
        return text

    def utc(self, t: int) -> str:
        """``2018-05-08T10:00:01Z``"""
        text = self._utc.get(t)
        if text is None:
            day, sec = divmod(t, _DAY)
            hour, rest = divmod(sec, 3600)
            minute, second = divmod(rest, 60)
            text = f"{self._day(day)}T{hour:02d}:{minute:02d}:{second:02d}Z"
            self._utc[t] = text
        return text

    def local(self, t: int, offset: int) -> str:
        """``2018-05-08T06:00:01-04:00``: how policy backups are named."""
        text = self._local.get((t, offset))
        if text is None:
            text = self._local_text(t, offset)
            self._local[(t, offset)] = text
        return text

    def _local_text(self, t: int, offset: int) -> str:
        day, sec = divmod(t + offset, _DAY)
        hour, rest = divmod(sec, 3600)
        minute, second = divmod(rest, 60)
        sign = "-" if offset < 0 else "+"
        oh, om = divmod(abs(offset) // 60, 60)
        return f"{self._day(day)}T{hour:02d}:{minute:02d}:{second:02d}{sign}{oh:02d}:{om:02d}"


def _uuid4(rng: random.Random) -> str:
    """A version-4 UUID drawn from ``rng`` (deterministic, unlike uuid.uuid4)."""
    n = rng.getrandbits(128)
    n = (n & ~(0xF << 76)) | (4 << 76)
    n = (n & ~(0x3 << 62)) | (0x2 << 62)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
    group_ids = (_uuid4(rng),)
    result = []
    for i in range(spec.clusters):
        if i < len(_CLUSTER_CATALOG):
            name, offset, hypervisor, short = _CLUSTER_CATALOG[i]
        else:
            name, offset, hypervisor, short = f"Cluster {i + 1:02d}", 0, "VSPHERE", f"C{i + 1:02d}"
        if hypervisor == "HYPERV":
            parent, parent_id = f"{short}-HV-CLUSTER", _uuid4(rng)
        else:
            parent, parent_id = f"{short}-Compute", f"domain-c{7 + 2 * i}"
        datastores = tuple((_uuid4(rng), f"{short}-DS-{n:02d}") for n in (1, 2))
        result.append(
            _Cluster(
                _uuid4(rng), name, offset, hypervisor, parent, parent_id, datastores, group_ids
            )
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
                plan.interval = _DAY
            elif role == "removed":
                plan.state = "REMOVED"
            elif role == "deleted":
                plan.state = "DELETED"
            elif role == "external":
                plan.external_every = 1
            elif role == "all-states" and spec.total_backups is None:
                plan.count = max(plan.count, len(BACKUP_STATES))
            elif role == "template":
                plan.vm_type, plan.interval = "TEMPLATE", _DAY
        else:
            prefix = _VM_PREFIXES[i % len(_VM_PREFIXES)]
            plan = _VmPlan(f"{prefix}-{i:04d}", "regular", i % spec.clusters, counts[i])
            plan.interval = rng.choice((3600, 3600, 4 * 3600, _DAY))
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
    vm_id = _uuid4(rng)
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


def _generate_rows(spec: FederationSpec, now: float) -> list[Row]:
    rng = random.Random(spec.seed)
    times = _Times()
    clusters = _clusters(spec, rng)
    plans = _plans(spec, rng)
    now_s = int(now)
    other_states = [s for s in BACKUP_STATES if s != "PROTECTED"]
    rows: list[Row] = []
    for plan in plans:
        cluster = clusters[plan.cluster]
        local, external = _vm_groups(plan, cluster, rng)
        interval = plan.interval
        if plan.count * interval > 400 * _DAY:  # keep huge federations within ~13 months
            interval = max(60, (400 * _DAY // plan.count) // 60 * 60)
        newest = now_s - 600
        if plan.role == "stale":
            newest = now_s - 3 * _DAY
        elif plan.state == "REMOVED":
            newest = now_s - (5 if plan.role == "removed" else rng.randint(1, 20)) * _DAY
        elif plan.state == "DELETED":
            newest = now_s - 10 * _DAY
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
                    _uuid4(rng),
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
    return [_GENERATED.as_dict(row) for row in _generate_rows(spec, now)]


# --- storage, sorting and filtering ------------------------------------------------------------


# Value kinds of the per-backup fields of a generated federation (churn keeps them), so that
# pages can be written without building a dict per backup.
# "safe": a string that never needs JSON escaping (ids, states, times).
_OWN_KINDS: Final = {
    "id": "safe",
    "name": "str",
    "state": "safe",
    "type": "safe",
    "created_at": "safe",
    "expiration_time": "safe",
    "size": "int",
    "unique_size_bytes": "int",
    "unique_size_timestamp": "safe",
    "sent": "int",
    "sent_duration": "int",
    "sent_completion_time": "safe",
    "application_consistent": "bool",
    "consistency_type": "safe",
}
_SORTABLE_SHARED: Final = frozenset(_SHARED_FIELDS) - {"cluster_group_ids", "associated_cluster"}
_JSON_BOOL: Final = {False: "false", True: "true"}
_encode_str: Callable[[str], str] = json.encoder.encode_basestring


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class _Layout:
    """Where each field of a stored row lives: in the row, or in its shared tuple ``row[-1]``."""

    own: tuple[str, ...]
    shared: tuple[str, ...]
    sparse: bool  # some rows lack some fields (stored as _MISSING, left out of answers)
    typed: bool = False  # own fields hold values of the kinds _OWN_KINDS says

    @property
    def fields(self) -> tuple[str, ...]:
        return self.own + self.shared

    def getter(self, name: str) -> Callable[[Row], Any] | None:
        if name in self.own:
            i = self.own.index(name)
            return lambda row: row[i]
        if name in self.shared:
            j = self.shared.index(name)
            return lambda row: row[-1][j]
        return None

    def as_dict(self, row: Row) -> dict[str, object]:
        result = dict(zip(self.own, row, strict=False))
        result.update(zip(self.shared, row[-1], strict=True))
        if self.sparse:
            return {k: v for k, v in result.items() if v is not _MISSING}
        return result

    def renderer(
        self, wanted: Sequence[str] | None
    ) -> Callable[[Sequence[Row]], list[dict[str, Any]]]:
        """A function turning rows into answer dicts holding only the ``wanted`` fields."""
        names = self.fields if wanted is None else wanted
        own = [(n, self.own.index(n)) for n in names if n in self.own]
        shared = [(n, self.shared.index(n)) for n in names if n in self.shared]
        own_names = tuple(n for n, _ in own)
        own_index = tuple(i for _, i in own)
        sparse = self.sparse

        def render(rows: Sequence[Row]) -> list[dict[str, Any]]:
            parts: dict[int, dict[str, Any]] = {}
            out: list[dict[str, Any]] = []
            append = out.append
            for row in rows:
                item = {name: row[i] for name, i in zip(own_names, own_index, strict=True)}
                if shared:
                    group = row[-1]
                    part = parts.get(id(group))
                    if part is None:
                        part = {n: group[j] for n, j in shared}
                        parts[id(group)] = part
                    item.update(part)
                if sparse:
                    item = {k: v for k, v in item.items() if v is not _MISSING}
                append(item)
            return out

        return render

    def json_renderer(
        self, wanted: Sequence[str] | None, fragments: dict[int, tuple[Row, str]]
    ) -> Callable[[Sequence[Row]], str]:
        """A function writing rows as the JSON text of a list of backups with ``wanted`` fields.

        ``fragments`` caches the JSON text of the shared part of each group (by the group's id;
        the group is kept in the value so that its id stays unique); it must belong to one
        selection of fields.
        """
        if not self.typed:
            as_dicts = self.renderer(wanted)
            return lambda rows: _json(as_dicts(rows))
        names = self.fields if wanted is None else wanted
        # Plain fields go straight into the template (their values never need escaping); the
        # others are encoded per row; the shared part comes from the per-group cache. The
        # template's positional fields keep the requested order of the fields.
        plain = [n for n in names if _OWN_KINDS.get(n) in ("safe", "int")]
        other = [n for n in names if _OWN_KINDS.get(n) in ("str", "bool")]
        shared = [(n, self.shared.index(n)) for n in names if n in self.shared]
        position = {n: i for i, n in enumerate(plain + other)}
        pieces = []
        for n in names:  # field names hold no braces: they are all in _OWN_KINDS
            if n in position:
                slot = f"{{{position[n]}}}"
                pieces.append(
                    f'{_json(n)}:"{slot}"' if _OWN_KINDS[n] == "safe" else f"{_json(n)}:{slot}"
                )
        if shared:
            pieces.append(f"{{{len(position)}}}")
        template = "{{" + ",".join(pieces) + "}}"
        get_plain = _tuple_getter([self.own.index(n) for n in plain])
        encoders: list[tuple[int, Callable[[Any], str]]] = [
            (self.own.index(n), _encode_str if _OWN_KINDS[n] == "str" else _JSON_BOOL.__getitem__)
            for n in other
        ]
        fill = template.format

        def fragment(group: Row) -> str:
            text = ",".join(f"{_json(n)}:{_json(group[j])}" for n, j in shared)
            fragments[id(group)] = (group, text)
            return text

        def render(rows: Sequence[Row]) -> str:
            out: list[str] = []
            append = out.append
            cached = fragments.get
            if encoders:
                for row in rows:
                    values = get_plain(row) + tuple([encode(row[i]) for i, encode in encoders])
                    if shared:
                        group = row[-1]
                        entry = cached(id(group))
                        values += (fragment(group) if entry is None else entry[1],)
                    append(fill(*values))
            elif shared:  # the usual case: ids, times, sizes and the VM's fields
                for row in rows:
                    group = row[-1]
                    entry = cached(id(group))
                    append(fill(*get_plain(row), fragment(group) if entry is None else entry[1]))
            else:
                for row in rows:
                    append(fill(*get_plain(row)))
            return "[" + ",".join(out) + "]"

        return render


def _tuple_getter(indexes: Sequence[int]) -> Callable[[Row], tuple[Any, ...]]:
    if not indexes:
        return lambda row: ()
    if len(indexes) == 1:
        i = indexes[0]
        return lambda row: (row[i],)
    return operator.itemgetter(*indexes)


_GENERATED: Final = _Layout(_OWN_FIELDS, _SHARED_FIELDS, sparse=False, typed=True)


def _layout_from_dicts(backups: Sequence[Mapping[str, object]]) -> tuple[_Layout, list[Row]]:
    names: dict[str, None] = {}
    for backup in backups:
        for key in backup:
            names.setdefault(key, None)
    own = tuple(names)
    sparse = any(len(backup) != len(own) for backup in backups)
    rows = [(*(backup.get(n, _MISSING) for n in own), ()) for backup in backups]
    return _Layout(own, (), sparse), rows


def _sort_key(layout: _Layout, sort: str) -> Callable[[Row], tuple[Any, ...]]:
    """A total order: the field's value (numbers before strings, missing first), then id."""
    if layout.typed and sort in _OWN_KINDS:
        i = layout.own.index(sort)
        return lambda row: (row[i], row[0])
    if layout.typed and sort in _SORTABLE_SHARED:
        j = layout.shared.index(sort)
        return lambda row: (row[-1][j], row[0])
    get = layout.getter(sort) or (lambda row: None)
    get_id = layout.getter("id") or (lambda row: "")

    def key(row: Row) -> tuple[Any, ...]:
        v = get(row)
        t = type(v)
        if t is str:
            return (3, v, get_id(row))
        if t is int or t is float:
            return (2, v, get_id(row))
        if t is bool:
            return (1, v, get_id(row))
        if v is None or v is _MISSING:
            return (0, 0, get_id(row))
        return (4, json.dumps(v, sort_keys=True, default=str), get_id(row))

    return key


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


@dataclass(frozen=True)
class _Query:
    offset: int
    limit: int
    fields: tuple[str, ...] | None
    sort: str
    descending: bool
    filters: tuple[tuple[str, str], ...]
    created_after: str | None
    created_before: str | None


class _Store:
    """The current backups, with sorted orders kept up to date as backups come and go."""

    _MAX_ORDERS = 4
    _MAX_VIEWS = 16

    def __init__(self, layout: _Layout, rows: list[Row]) -> None:
        self.layout = layout
        self.rows = rows
        # sort field -> (key, rows ascending by key); updated in place on churn
        self._orders: OrderedDict[str, tuple[Callable[[Row], Any], list[Row]]] = OrderedDict()
        # filtered views -> rows ascending; dropped on any change
        self._views: OrderedDict[tuple[object, ...], list[Row]] = OrderedDict()
        # fields selection -> JSON text of each group's shared part
        self.fragments: dict[tuple[str, ...] | None, dict[int, tuple[Row, str]]] = {}
        index = {n: i for i, n in enumerate(layout.own)}
        self._churn_fields = {n: index[n] for n in _CHURNED if n in index}

    def ascending(self, sort: str) -> list[Row]:
        entry = self._orders.get(sort)
        if entry is None:
            key = _sort_key(self.layout, sort)
            entry = (key, sorted(self.rows, key=key))
            self._orders[sort] = entry
            while len(self._orders) > self._MAX_ORDERS:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(sort)
        return entry[1]

    def matching(self, query: _Query, mode: str) -> list[Row]:
        """The rows matching the query's filters, ascending by its sort field."""
        ordered = self.ascending(query.sort)
        if not query.filters and query.created_after is None and query.created_before is None:
            return ordered
        view_key = (query.sort, query.filters, query.created_after, query.created_before, mode)
        view = self._views.get(view_key)
        if view is not None:
            self._views.move_to_end(view_key)
            return view
        tests: list[tuple[Callable[[Row], Any], frozenset[str]]] = []
        for name, value in query.filters:
            if "," in value and mode == "ovc":
                view = []  # the OVC defect: comma-separated values match nothing
                break
            get = self.layout.getter(name)
            if get is None:
                view = []
                break
            tests.append(
                (get, frozenset(value.split(",")) if mode == "mva" else frozenset([value]))
            )
        if view is None:
            get_created = self.layout.getter("created_at") or (lambda row: None)
            after, before = query.created_after, query.created_before

            def keep(row: Row) -> bool:
                for get, allowed in tests:
                    if _as_text(get(row)) not in allowed:
                        return False
                if after is not None or before is not None:
                    created = get_created(row)
                    if not isinstance(created, str):
                        return False
                    if after is not None and created < after:
                        return False
                    if before is not None and created > before:
                        return False
                return True

            view = [row for row in ordered if keep(row)]
        self._views[view_key] = view
        while len(self._views) > self._MAX_VIEWS:
            self._views.popitem(last=False)
        return view

    def churn(self, create: int, expire: int, rng: random.Random, now: float) -> None:
        """Delete ``expire`` random backups, then add ``create`` fresh PROTECTED ones.

        New backups copy the VM and store of a random backup that existed before the deletion
        (a federation that never had backups gets none).
        """
        if create <= 0 and expire <= 0:
            return
        self._views.clear()
        templates = [self.rows[rng.randrange(len(self.rows))] for _ in range(create) if self.rows]
        for _ in range(min(expire, len(self.rows))):
            i = rng.randrange(len(self.rows))
            row = self.rows[i]
            self.rows[i] = self.rows[-1]
            self.rows.pop()
            for key, ordered in self._orders.values():
                pos = bisect.bisect_left(ordered, key(row), key=key)
                while ordered[pos] is not row:
                    pos += 1
                del ordered[pos]
        times = _Times()
        t = int(now)
        for model in templates:
            template = list(model)
            for name, i in self._churn_fields.items():
                template[i] = _churned_value(name, t, rng, times, template[i])
            row = tuple(template)
            self.rows.append(row)
            for key, ordered in self._orders.values():
                bisect.insort(ordered, row, key=key)


_CHURNED: Final = (
    "id",
    "name",
    "state",
    "type",
    "created_at",
    "expiration_time",
    "unique_size_bytes",
    "unique_size_timestamp",
    "sent",
    "sent_duration",
    "sent_completion_time",
)


def _churned_value(name: str, t: int, rng: random.Random, times: _Times, old: object) -> object:
    if name == "id":
        return _uuid4(rng)
    if name == "name":
        return times.local(t, 0)
    if name == "state":
        return "PROTECTED"
    if name == "type":
        return "POLICY"
    if name == "created_at":
        return times.utc(t)
    if name == "expiration_time":
        return times.utc(t + 7 * _DAY)
    if name in ("unique_size_bytes", "sent", "sent_duration"):
        return 0
    if name in ("unique_size_timestamp", "sent_completion_time"):
        return "NA"
    return old


# --- faults and statistics ----------------------------------------------------------------------

Malformed = Literal[
    "truncated",
    "not_json",
    "size_as_string",
    "missing_created_at",
    "count_too_large",
    "short_page",
    "empty_page",
    "endless",
]
MALFORMED_KINDS: Final[tuple[str, ...]] = get_args(Malformed)


class Faults:
    """Misbehaviour to inject, changeable from any thread while the controller serves.

    Unless said otherwise a fault applies to ``GET /api/backups`` (after the token check and
    parameter validation). All default to off; :meth:`clear` turns everything off again.

    - :meth:`fail_next`: the next ``count`` backups requests answer ``status`` (500: the JDBC
      timeout body; 401: an expired token; others the generic error body).
    - :meth:`fail_next_logins`: the same for ``POST /api/oauth/token``.
    - :meth:`disconnect_next`: the next ``count`` backups requests get the connection closed
      without an answer.
    - ``hang_seconds``: wait this long before answering (ends at once on stop()).
    - ``malformed``: one of :data:`MALFORMED_KINDS`:
      ``truncated`` (half the JSON, with a matching Content-Length), ``not_json`` (an HTML
      page with status 200), ``size_as_string`` (``"size": "1234"``), ``missing_created_at``
      (no backup of the page has ``created_at``), ``count_too_large`` (``count`` 1000 more than
      exist: the pages past the real end are empty), ``short_page`` (half of the page; ``count``
      is right), ``empty_page`` (``backups: []`` whatever the offset), ``endless`` (200 without
      Content-Length, a body that streams until the client leaves or stop()).
    - cost model: ``request_cost_seconds`` + ``object_cost_seconds`` per returned backup, at most
      ``max_parallel`` requests (0: unlimited) served at once, the others wait their turn.
    - churn: before each backups request, ``churn_expire_per_request`` random backups are deleted
      and ``churn_create_per_request`` new PROTECTED ones (created_at = clock(), random ids) added.
    - ``bad_credentials_status``: 401 (default) or 400 (``invalid_grant``) for wrong user
      credentials at the token endpoint.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail: list[int] = []
        self._fail_logins: list[int] = []
        self._disconnect = 0
        self._malformed: Malformed | None = None
        self.hang_seconds = 0.0
        self.request_cost_seconds = 0.0
        self.object_cost_seconds = 0.0
        self.max_parallel = 0
        self.churn_create_per_request = 0
        self.churn_expire_per_request = 0
        self.bad_credentials_status = 401

    @property
    def malformed(self) -> Malformed | None:
        return self._malformed

    @malformed.setter
    def malformed(self, kind: Malformed | None) -> None:
        if kind is not None and kind not in MALFORMED_KINDS:
            raise ValueError(f"unknown malformed kind {kind!r}; one of {MALFORMED_KINDS}")
        self._malformed = kind

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._lock:
            self._fail.extend([status] * count)

    def fail_next_logins(self, count: int, status: int = 500) -> None:
        with self._lock:
            self._fail_logins.extend([status] * count)

    def disconnect_next(self, count: int) -> None:
        with self._lock:
            self._disconnect += count

    def pending_failures(self) -> int:
        with self._lock:
            return len(self._fail)

    def clear(self) -> None:
        with self._lock:
            self._fail.clear()
            self._fail_logins.clear()
            self._disconnect = 0
        self._malformed = None
        self.hang_seconds = 0.0
        self.request_cost_seconds = 0.0
        self.object_cost_seconds = 0.0
        self.max_parallel = 0
        self.churn_create_per_request = 0
        self.churn_expire_per_request = 0
        self.bad_credentials_status = 401

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._fail.pop(0) if self._fail else None

    def _take_login_failure(self) -> int | None:
        with self._lock:
            return self._fail_logins.pop(0) if self._fail_logins else None

    def _take_disconnect(self) -> bool:
        with self._lock:
            if self._disconnect > 0:
                self._disconnect -= 1
                return True
            return False


class Stats:
    """What clients did, counted thread-safely; every property returns a copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._logins = 0
            self._login_failures = 0
            self._requests: Counter[str] = Counter()
            self._statuses: Counter[int] = Counter()
            self._bytes = 0
            self._backups_requests = 0
            self._backups_served = 0
            self._in_flight = 0
            self._max_in_flight = 0
            self._max_parallel_served = 0
            self._pages: list[tuple[int, int]] = []

    @property
    def logins(self) -> int:
        """Successful logins (tokens issued)."""
        with self._lock:
            return self._logins

    @property
    def login_failures(self) -> int:
        with self._lock:
            return self._login_failures

    @property
    def requests_per_path(self) -> dict[str, int]:
        with self._lock:
            return dict(self._requests)

    @property
    def status_counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self._statuses)

    @property
    def bytes_sent(self) -> int:
        """Response body bytes, all paths."""
        with self._lock:
            return self._bytes

    @property
    def backups_requests(self) -> int:
        """Requests to /api/backups, whatever their answer."""
        with self._lock:
            return self._backups_requests

    @property
    def backups_served(self) -> int:
        """Backups in the pages answered with 200."""
        with self._lock:
            return self._backups_served

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most requests seen in progress at once."""
        with self._lock:
            return self._max_in_flight

    @property
    def max_parallel_served(self) -> int:
        """The most backups requests seen inside the cost model at once (see max_parallel)."""
        with self._lock:
            return self._max_parallel_served

    @property
    def pages(self) -> list[tuple[int, int]]:
        """(offset, limit) of every valid backups request, in arrival order."""
        with self._lock:
            return list(self._pages)

    def _started(self, path: str) -> None:
        with self._lock:
            self._requests[path] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if path == "/api/backups":
                self._backups_requests += 1

    def _serving(self, parallel: int) -> None:
        with self._lock:
            self._max_parallel_served = max(self._max_parallel_served, parallel)

    def _finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _answered(self, status: int, body_bytes: int, backups: int = 0) -> None:
        with self._lock:
            self._statuses[status] += 1
            self._bytes += body_bytes
            self._backups_served += backups

    def _streamed(self, body_bytes: int) -> None:
        with self._lock:
            self._bytes += body_bytes

    def _login(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._logins += 1
            else:
                self._login_failures += 1

    def _page(self, offset: int, limit: int) -> None:
        with self._lock:
            self._pages.append((offset, limit))


# --- HTTP -----------------------------------------------------------------------------------


class _BadRequest(Exception):
    pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        controller: SimulatedController,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.controller = controller
        self.ssl_context = ssl_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn: socket.socket = request
        if self.ssl_context is not None:
            request.settimeout(10)
            try:
                conn = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ValueError) as e:
                log.debug("TLS handshake with %s failed: %s", client_address, e)
                return
        with self._connections_lock:
            self._connections.add(conn)
        try:
            if self.controller._stopping.is_set():
                return
            _Handler(conn, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(conn)
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            # socket.socket.shutdown, not SSLSocket's: only wake up the handler thread.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SimpliVity-Simulator"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections end after this
    server: _Server
    #: Whether the request being served has stopped counting as in flight.
    done_in_flight = False

    def _dispatch(self) -> None:
        self.server.controller._serve(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


# --- the controller --------------------------------------------------------------------------


class SimulatedController:
    """A simulated SimpliVity controller (OVC or MVA) serving one federation's backups.

    ``backups`` is a :class:`FederationSpec` (generated with ``now = clock()``) or a list of
    backup dicts (served as given: any fields). ``clock`` drives token expiry, the token
    answer's ``updated_at`` and the ``created_at`` of backups added by churn. ``mode="mva"``
    omits ``SVTFS_Version`` and lets comma-separated filters work as OR.

    How ``GET /api/backups`` reads its query:

    - ``offset`` >= 0 (default 0), ``limit`` 0..5000 (default 500); anything else is 400.
      ``count`` is the number of matching backups; a page past the end is empty.
    - ``sort`` any backup field (default ``name``; an unknown one is 400), ``order``
      ascending|descending (default descending). Ties are broken by ``id`` (descending order
      is the exact reverse of ascending), so paging order is total and stable.
    - ``fields=a,b``: only those fields (unknown names are ignored; empty means all).
    - Filters: a parameter named like a backup field (``state``, ``type``,
      ``virtual_machine_name``, ``omnistack_cluster_name``, ``datastore_name``, ...) keeps the
      backups whose value equals it exactly (booleans as ``true``/``false``);
      ``created_after``/``created_before`` (``YYYY-MM-DDTHH:MM:SSZ``, else 400) keep
      ``created_at`` >= / <= the value. A comma in a filter value matches nothing ("ovc") or
      separates alternatives ("mva"). Other parameters (``case``, ...) are ignored.
    - Every listing reflects the backups at the time of the request (after churn).
    """

    def __init__(
        self,
        backups: Sequence[Mapping[str, object]] | FederationSpec = FederationSpec(),
        *,
        username: str = "administrator@vsphere.local",
        password: str = "simulator-password",  # noqa: S107
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        idle_timeout_seconds: float = 600,
        absolute_timeout_seconds: float = 86400,
        mode: Literal["ovc", "mva"] = "ovc",
    ) -> None:
        if mode not in ("ovc", "mva"):
            raise ValueError(f"mode must be 'ovc' or 'mva', not {mode!r}")
        self.username = username
        self.password = password
        self.host = host
        self.port = port
        self.tls = tls
        self.clock = clock
        self.idle_timeout_seconds = idle_timeout_seconds
        self.absolute_timeout_seconds = absolute_timeout_seconds
        self.mode = mode
        self.faults = Faults()
        self.stats = Stats()
        self.generated_at = 0.0
        self._lock = threading.Lock()
        self._tokens: dict[str, list[float]] = {}  # token -> [issued, last used]
        self._tokens_lock = threading.Lock()
        self._rng = random.Random(0)
        self._store = _Store(_Layout((), (), sparse=False), [])
        self._stopping = threading.Event()
        self._slots = threading.Condition()
        self._slots_busy = 0
        self._server: _Server | None = None
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        self.set_backups(backups)

    # -- life cycle

    def start(self) -> SimulatedController:
        """Bind and serve in daemon threads; returns self."""
        if self._server is not None:
            raise RuntimeError("already started")
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(*self.tls)
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"simulator-{self._server.server_address[1]}",
            daemon=True,
        )
        host, port = self._server.server_address[:2]
        host = f"[{host!s}]" if ":" in str(host) else str(host)
        self._url = f"{'https' if self.tls else 'http'}://{host}:{port}"
        self._thread.start()
        log.info("simulated controller listening on %s", self._url)
        return self

    def stop(self) -> None:
        """Stop serving: close the socket and end in-flight answers (hanging, endless) at once."""
        server, self._server = self._server, None
        self._stopping.set()
        with self._slots:
            self._slots.notify_all()
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SimulatedController:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` or ``https://...``; set by start() (and kept after stop())."""
        if self._url is None:
            raise RuntimeError("the simulated controller has not been started")
        return self._url

    # -- the federation

    def set_backups(self, backups: Sequence[Mapping[str, object]] | FederationSpec) -> None:
        """Replace the federation (a spec is generated with ``now = clock()``)."""
        now = self.clock()
        if isinstance(backups, FederationSpec):
            store = _Store(_GENERATED, _generate_rows(backups, now))
            seed = backups.seed
        else:
            store = _Store(*_layout_from_dicts(backups))
            seed = 0
        for sort in ("id", "name"):  # the default order, and the one paging clients use
            store.ascending(sort)
        with self._lock:
            self._store = store
            # Not Random(seed): that stream generated the federation, so churn would mint the
            # very ids that already exist (duplicates in the listing).
            self._rng = random.Random(f"churn-{seed}")
            self.generated_at = now

    def backup_count(self) -> int:
        with self._lock:
            return len(self._store.rows)

    def backups(self) -> list[dict[str, object]]:
        """A copy of the current backups, as full dicts (unsorted)."""
        with self._lock:
            layout, rows = self._store.layout, list(self._store.rows)
        return [layout.as_dict(row) for row in rows]

    def backup_ids(self) -> set[str]:
        with self._lock:
            get = self._store.layout.getter("id")
            if get is None:
                return set()
            return {str(get(row)) for row in self._store.rows}

    # -- tokens

    def revoke_tokens(self) -> None:
        """Forget every token: the next request with one gets 401 "Invalid access token"."""
        with self._tokens_lock:
            self._tokens.clear()

    def expire_tokens(self) -> None:
        """Make every token idle-expired: the next request with one gets 401 "expired"."""
        with self._tokens_lock:
            for times in self._tokens.values():
                times[1] = float("-inf")

    def token_count(self) -> int:
        with self._tokens_lock:
            return len(self._tokens)

    # -- serving

    def _serve(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        path = url.path
        self.stats._started(path)
        h.done_in_flight = False
        try:
            length = int(h.headers.get("Content-Length") or 0)
            body = h.rfile.read(length) if length > 0 else b""
            if path == "/api/version":
                self._version(h, path)
            elif path == "/api/oauth/token":
                self._login(h, path, url.query, body)
            elif path == "/api/backups":
                self._backups(h, path, url.query)
            else:
                self._error(h, 404, path, "Not Found", f"No handler found for {path}")
        except (ConnectionError, TimeoutError, ssl.SSLError, ValueError) as e:
            log.debug("request %s %s aborted: %s", h.command, path, e)
            h.close_connection = True
        finally:
            self._leave_flight(h)

    def _leave_flight(self, h: _Handler) -> None:
        if not h.done_in_flight:
            h.done_in_flight = True
            self.stats._finished()

    def _send(
        self,
        h: _Handler,
        status: int,
        payload: object,
        *,
        backups: int = 0,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        if isinstance(payload, bytes):
            body = payload
        else:
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        self._send_bytes(h, status, body, CONTENT_TYPE, backups=backups, headers=headers)

    def _send_bytes(
        self,
        h: _Handler,
        status: int,
        body: bytes,
        content_type: str,
        *,
        backups: int = 0,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            h.send_header(name, value)
        h.end_headers()
        # Out of flight before the last write: once the client has the body, it may send its
        # next request before this thread runs again, and two would seem in flight at once.
        self._leave_flight(h)
        if h.command != "HEAD":
            h.wfile.write(body)
        self.stats._answered(status, len(body), backups)

    def _timestamp(self) -> str:
        return _Times().utc(int(self.clock()))

    def _error(
        self,
        h: _Handler,
        status: int,
        path: str,
        exception: str,
        message: str,
        *,
        allow: str | None = None,
        **extra: str,
    ) -> None:
        body: dict[str, object] = {
            "exception": exception,
            "path": path,
            "message": message,
            "timestamp": self._timestamp(),
            "status": str(status),
            "error_code": str(status),
        }
        body.update(extra)
        self._send(h, status, body, headers=[("Allow", allow)] if allow else ())

    def _method_not_allowed(self, h: _Handler, path: str, allowed: str) -> None:
        h.close_connection = True  # the body of an unexpected method is not worth parsing
        self._error(
            h,
            405,
            path,
            "org.springframework.web.HttpRequestMethodNotSupportedException",
            f"Request method '{h.command}' not supported",
            allow=allowed,
        )

    def _version(self, h: _Handler, path: str) -> None:
        if h.command not in ("GET", "HEAD"):
            self._method_not_allowed(h, path, "GET")
            return
        answer = {"REST_API_Version": REST_API_VERSION}
        if self.mode == "ovc":
            answer["SVTFS_Version"] = SVTFS_VERSION
        self._send(h, 200, answer)

    def _login(self, h: _Handler, path: str, query: str, body: bytes) -> None:
        if h.command != "POST":
            self._method_not_allowed(h, path, "POST")
            return
        if not _client_credentials_ok(h.headers.get("Authorization")):
            self.stats._login(False)
            self._error(
                h,
                401,
                path,
                "org.springframework.security.authentication.BadCredentialsException",
                "Bad Credentials",
                error="unauthorized",
            )
            return
        failure = self.faults._take_login_failure()
        if failure is not None:
            self.stats._login(False)
            self._failure(h, failure, path, "")
            return
        form = parse_qs(query, keep_blank_values=True)
        try:
            form.update(
                parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            )
        except UnicodeDecodeError:
            form = {}

        def one(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        grant = one("grant_type")
        if grant != "password":
            self.stats._login(False)
            self._send(
                h,
                400,
                {
                    "error": "unsupported_grant_type" if grant else "invalid_request",
                    "error_description": f"Unsupported grant type: {grant}"
                    if grant
                    else "Missing grant type",
                },
            )
            return
        if one("username") != self.username or one("password") != self.password:
            self.stats._login(False)
            if self.faults.bad_credentials_status == 400:
                self._send(
                    h, 400, {"error": "invalid_grant", "error_description": "Bad credentials"}
                )
            else:
                self._send(
                    h,
                    self.faults.bad_credentials_status,
                    {"error": "unauthorized", "error_description": "Bad credentials"},
                )
            return
        now = self.clock()
        token = str(uuid.uuid4())
        with self._tokens_lock:
            self._tokens[token] = [now, now]
        self.stats._login(True)
        self._send(
            h,
            200,
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": max(int(self.absolute_timeout_seconds) - 1, 0),
                "scope": "read write",
                "updated_at": int(now * 1000),
            },
        )

    def _check_token(self, h: _Handler) -> bool:
        """True if the request carries a live token (refreshing its idle time); else answers 401."""
        header = h.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        now = self.clock()
        with self._tokens_lock:
            times = self._tokens.get(token)
            if times is None:
                message = f"Invalid access token: {token}"
            elif (
                now - times[1] > self.idle_timeout_seconds
                or now - times[0] > self.absolute_timeout_seconds
            ):
                message = f"Access token expired due to inactivity: {token}"
            else:
                times[1] = now
                return True
        self._token_error(h, message)
        return False

    def _token_error(self, h: _Handler, message: str) -> None:
        self._send(
            h,
            401,
            {"error": "invalid_token", "message": message},
            headers=[
                ("WWW-Authenticate", f'Bearer error="invalid_token", error_description="{message}"')
            ],
        )

    def _failure(self, h: _Handler, status: int, path: str, token: str) -> None:
        if status == 500:
            self._error(
                h,
                500,
                path,
                "org.springframework.jdbc.CannotGetJdbcConnectionException",
                _JDBC_MESSAGE,
            )
        elif status == 401:
            self._token_error(h, f"Access token expired due to inactivity: {token}")
        else:
            self._error(
                h,
                status,
                path,
                "com.simplivity.restapi.exceptions.ServiceException",
                "Injected failure",
            )

    def _parse_query(self, query: str) -> _Query:
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        offset = _int_param(params, "offset", 0)
        limit = _int_param(params, "limit", DEFAULT_LIMIT)
        if offset < 0:
            raise _BadRequest(f"Invalid offset {offset}: it must not be negative")
        if not 0 <= limit <= MAX_LIMIT:
            raise _BadRequest(f"Invalid limit {limit}: it must be between 0 and {MAX_LIMIT}")
        known = set(BACKUP_FIELDS) | set(self._store.layout.fields)
        fields: tuple[str, ...] | None = None
        if params.get("fields"):
            wanted = dict.fromkeys(f.strip() for f in params["fields"].split(","))
            fields = tuple(f for f in wanted if f)
        sort = params.get("sort") or "name"
        if sort not in known:
            raise _BadRequest(f"Invalid sort field '{sort}'")
        order = (params.get("order") or "descending").lower()
        if order not in ("ascending", "descending"):
            raise _BadRequest(f"Invalid order '{order}': ascending or descending")
        dates: dict[str, str | None] = {}
        for name in ("created_after", "created_before"):
            value = params.get(name)
            if value is not None and not _valid_time(value):
                raise _BadRequest(f"Invalid {name} '{value}': expected YYYY-MM-DDTHH:MM:SSZ")
            dates[name] = value
        filters = tuple(
            (name, value)
            for name, value in sorted(params.items())
            if (name in _FILTERS or name in known) and name not in ("limit", "offset")
        )
        return _Query(
            offset,
            limit,
            fields,
            sort,
            order == "descending",
            filters,
            dates["created_after"],
            dates["created_before"],
        )

    def _backups(self, h: _Handler, path: str, query_text: str) -> None:
        if h.command not in ("GET", "HEAD"):
            self._method_not_allowed(h, path, "GET")
            return
        if not self._check_token(h):
            return
        try:
            with self._lock:
                query = self._parse_query(query_text)
        except _BadRequest as e:
            self._error(
                h, 400, path, "com.simplivity.restapi.exceptions.InvalidParameterException", str(e)
            )
            return
        self.stats._page(query.offset, query.limit)
        faults = self.faults
        if faults._take_disconnect():
            h.close_connection = True
            return
        failure = faults._take_failure()
        if failure is not None:
            token = (h.headers.get("Authorization") or "").partition(" ")[2].strip()
            self._failure(h, failure, path, token)
            return
        if faults.hang_seconds > 0 and self._stopping.wait(faults.hang_seconds):
            h.close_connection = True
            return
        if not self._enter_slot():
            h.close_connection = True
            return
        try:
            with self._lock:
                store = self._store
                store.churn(
                    faults.churn_create_per_request,
                    faults.churn_expire_per_request,
                    self._rng,
                    self.clock(),
                )
                matching = store.matching(query, self.mode)
                count = len(matching)
                if query.descending:
                    end = count - query.offset
                    page = matching[max(end - query.limit, 0) : max(end, 0)][::-1]
                else:
                    page = matching[query.offset : query.offset + query.limit]
            cost = faults.request_cost_seconds + faults.object_cost_seconds * len(page)
            if cost > 0 and self._stopping.wait(cost):
                h.close_connection = True
                return
        finally:
            self._leave_slot()
        malformed = faults.malformed
        if malformed == "endless":
            self._endless(h)
            return
        if malformed == "not_json":
            html = (
                b"<html><head><title>Error</title></head><body><h1>HTTP Status 503 - Service"
                b" Unavailable</h1><p>The server is temporarily unable to serve requests.</p>"
                b"</body></html>"
            )
            self._send_bytes(h, 200, html, "text/html;charset=utf-8")
            return
        if malformed == "short_page" and len(page) >= 2:
            page = page[: len(page) // 2]
        elif malformed == "empty_page":
            page = []
        if malformed in ("size_as_string", "missing_created_at"):
            items = store.layout.renderer(query.fields)(page)
            for item in items:
                if malformed == "missing_created_at":
                    item.pop("created_at", None)
                elif "size" in item:
                    item["size"] = str(item["size"])
            listing = _json(items)
        else:
            fragments = store.fragments.setdefault(query.fields, {})
            listing = store.layout.json_renderer(query.fields, fragments)(page)
        if malformed == "count_too_large":
            count += 1000
        body = (
            f'{{"offset":{query.offset},"count":{count},"limit":{query.limit},"backups":{listing}}}'
        ).encode()
        if malformed == "truncated":
            body = body[: len(body) // 2]
        self._send(h, 200, body, backups=len(page))

    def _enter_slot(self) -> bool:
        with self._slots:
            while not self._stopping.is_set():
                limit = self.faults.max_parallel
                if limit <= 0 or self._slots_busy < limit:
                    self._slots_busy += 1
                    self.stats._serving(self._slots_busy)
                    return True
                self._slots.wait(0.1)
            return False

    def _leave_slot(self) -> None:
        with self._slots:
            self._slots_busy -= 1
            self._slots.notify()

    def _endless(self, h: _Handler) -> None:
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", CONTENT_TYPE)
        h.send_header("Connection", "close")
        h.end_headers()
        self.stats._answered(200, 0)
        item = json.dumps(
            {
                "id": "00000000-0000-4000-8000-000000000000",
                "name": "endless",
                "state": "PROTECTED",
                "created_at": "2020-01-01T00:00:00Z",
                "size": 1,
            },
            separators=(",", ":"),
        )
        chunk = ((item + ",") * (65536 // (len(item) + 1))).encode()
        h.wfile.write(b'{"offset":0,"count":1,"limit":500,"backups":[')
        while not self._stopping.is_set() and self.faults.malformed == "endless":
            h.wfile.write(chunk)
            self.stats._streamed(len(chunk))
            if self._stopping.wait(0.01):
                break


def _client_credentials_ok(header: str | None) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return decoded == f"{CLIENT_ID}:"


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise _BadRequest(f"Invalid {name} '{value}': not a number") from None


def _valid_time(value: str) -> bool:
    if not _CREATED_RE.fullmatch(value):
        return False
    try:
        time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m exporter.simulator``: serve a simulated controller until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description="Serve a simulated HPE SimpliVity controller on 127.0.0.1.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    parser.add_argument("--backups", type=int, default=None, help="total backups to generate")
    parser.add_argument("--vms", type=int, default=None, help="VMs (default 40, or backups/60)")
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--backups-per-vm", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mode", choices=("ovc", "mva"), default="ovc")
    parser.add_argument("--username", default="administrator@vsphere.local")
    parser.add_argument("--password", default="simulator-password")
    parser.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--request-cost", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--object-cost", type=float, default=0.0, help="seconds per backup")
    parser.add_argument("--max-parallel", type=int, default=0, help="0: unlimited")
    parser.add_argument("--churn-create", type=int, default=0, help="new backups per request")
    parser.add_argument("--churn-expire", type=int, default=0, help="expired backups per request")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    vms = args.vms
    if vms is None:
        vms = 40 if args.backups is None else max(40, args.backups // 60)
    try:
        spec = FederationSpec(
            seed=args.seed,
            clusters=args.clusters,
            vms=vms,
            backups_per_vm=args.backups_per_vm,
            total_backups=args.backups,
        )
    except ValueError as e:
        parser.error(str(e))
    controller = SimulatedController(
        spec,
        username=args.username,
        password=args.password,
        host=args.host,
        port=args.port,
        tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
        mode=args.mode,
    )
    controller.faults.request_cost_seconds = args.request_cost
    controller.faults.object_cost_seconds = args.object_cost
    controller.faults.max_parallel = args.max_parallel
    controller.faults.churn_create_per_request = args.churn_create
    controller.faults.churn_expire_per_request = args.churn_expire
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        controller.start()
    except OSError as e:
        print(f"cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    print(f"url: {controller.url}", flush=True)
    print(f"username: {controller.username}", flush=True)
    print(f"password: {controller.password}", flush=True)
    print(f"backups: {controller.backup_count()}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
