"""The generated federation: a :class:`FederationSpec` made into backups, VMs, policies, hosts
and a schedule report, all consistent with each other.

Each VM's backups follow its policy's rules (:mod:`exporter.simulator.schedule`): per rule,
the newest scheduled times before the rule stopped (now - 10 min for a running one), each
backup a few minutes after its time, at the rule's destination (the VM's cluster, another
cluster for DR copies, or an external store). Every destination gets at least its newest
backup; the rest of the VM's backups are the newest times of all its rules together.

The simulator judges every live VM's protection status from what it generated
(:attr:`Federation.expected`, by VM id; :attr:`Federation.planted`, by name for the role VMs):
it is the oracle the exporter's own judgement is tested against.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from exporter.restapi import HOSTS, POLICIES, VIRTUAL_MACHINES
from exporter.simulator.catalog import COLLECTIONS
from exporter.simulator.inventory import (
    Cluster,
    Host,
    Inventory,
    Policy,
    VmPlan,
    max_backups,
    plan_inventory,
    rule_max_backups,
)
from exporter.simulator.schedule import Destination, Rule
from exporter.simulator.spec import FederationSpec
from exporter.simulator.store import GENERATED, Row
from exporter.simulator.values import DAY, Times, epoch, seeded_uuid4
from exporter.simulator.vocabulary import BACKUP_STATES

#: The exporter's defaults: overdue past interval x 1.5 + 1 h; "new" for interval + 1 h.
OVERDUE_FACTOR: Final = 1.5
GRACE_SECONDS: Final = 3600
_OTHER_STATES: Final = tuple(s for s in BACKUP_STATES if s != "PROTECTED")
_STORE_TYPES: Final = {"StoreOnce-Boston": "StoreOnceOnPrem", "StoreOnce-Cloud": "StoreOnceCloud"}


@dataclass(frozen=True)
class Federation:
    """Everything a simulated controller serves for one spec at one time."""

    #: the backups, as the store keeps them (see :data:`exporter.simulator.store.GENERATED`)
    rows: list[Row]
    #: path -> the records of every other paged collection (their generators in
    #: :data:`exporter.simulator.catalog.COLLECTIONS`)
    records: Mapping[str, list[dict[str, object]]]
    schedule_report: dict[str, object]
    #: VM id -> the protection status a correct exporter finds, for every ALIVE VM
    expected: Mapping[str, str]
    #: role VM name -> its protection status, for the ALIVE role VMs (see spec.ROLES)
    planted: Mapping[str, str]
    #: VM id -> the destinations where its recovery window is short (:func:`_short_windows`)
    short_windows: Mapping[str, frozenset[str]]
    #: what the records were made from (churn lives on it)
    inventory: Inventory

    # The inventory by name, for the readers that judge it themselves (the tests).

    @property
    def virtual_machines(self) -> list[dict[str, object]]:
        return self.records[VIRTUAL_MACHINES]

    @property
    def policies(self) -> list[dict[str, object]]:
        return self.records[POLICIES]

    @property
    def hosts(self) -> list[dict[str, object]]:
        return self.records[HOSTS]


def generate_federation(spec: FederationSpec, now: float) -> Federation:
    """The federation of ``spec`` at ``now`` (Unix seconds): same inputs, same federation."""
    now_s = int(now)
    inventory = plan_inventory(spec, now_s)
    times = Times()
    rows = _backups(spec, inventory, now_s, random.Random(f"backups-{spec.seed}"), times)
    return Federation(
        rows=rows,
        records={p.path: p.generate(inventory) for p in COLLECTIONS if p.generate is not None},
        schedule_report=schedule_report(spec, inventory),
        expected={vm.id: vm.expected for vm in inventory.vms if vm.expected is not None},
        planted={
            vm.name: vm.expected
            for vm in inventory.vms
            if vm.role != "regular" and vm.expected is not None
        },
        short_windows=_short_windows(inventory, max_backups(inventory), now_s),
        inventory=inventory,
    )


def generate_backups(spec: FederationSpec, now: float) -> list[dict[str, object]]:
    """The backups of a deterministic federation, as ``/api/backups`` lists them.

    Every backup has every field of :data:`BACKUP_FIELDS`. Same ``spec`` and ``now`` (Unix
    seconds), same list. The default spec (3 clusters, 40 VMs, 12 backups each for those that
    have any) contains all 11 states, ``"NA"`` expiration and unique-size times,
    MANUAL/POLICY/UNSPECIFIED backups, a Hyper-V cluster ("London DR"), a non-ASCII cluster
    ("Zürich-Ost"), DR copies to another cluster (``sent`` > 0), backups on the external
    stores ``StoreOnce-Boston`` and ``StoreOnce-Cloud`` (omnistack_cluster_id/name ""), and the
    VMs that :data:`exporter.simulator.spec.ROLES` lists (role VMs come first; a spec with fewer
    VMs than roles drops the last roles).
    """
    return [GENERATED.as_dict(row) for row in generate_federation(spec, now).rows]


# --- backups ------------------------------------------------------------------------------------


def _backups(
    spec: FederationSpec, inventory: Inventory, now: int, rng: random.Random, times: Times
) -> list[Row]:
    clusters = {c.name: c for c in inventory.clusters}
    rows: list[Row] = []
    for vm in inventory.vms:
        if vm.count:
            rows.extend(_vm_backups(spec, vm, clusters, now, rng, times))
        else:
            vm.created = vm.created or now - 400 * DAY
            vm.expected = _judge(vm, vm.host, None, {}, now, {})
    return rows


def _vm_backups(
    spec: FederationSpec,
    vm: VmPlan,
    clusters: Mapping[str, Cluster],
    now: int,
    rng: random.Random,
    times: Times,
) -> list[Row]:
    failed_share, manual_share = spec.failed_share, spec.manual_share
    cluster = vm.cluster
    offset = cluster.offset
    role = vm.role
    slots, oldest = _slots(vm)
    # past its expiration at generation: a day more, or (steady) the next minute
    late = DAY
    if spec.steady and role == "regular" and vm.state == "ALIVE":
        late = 60
        slots = list(slots)
        held = [0] * len(vm.policy.rules)
        for _, r, _ in slots:
            held[r] += 1
        vm.held = tuple(held)
    # per rule: seconds its backups are kept, whether they are copies sent to another cluster,
    # the values its backups share, and its destination's name
    per_rule = []
    for r, rule in enumerate(vm.policy.rules):
        group = backup_group(vm, rule.destination, clusters)
        per_rule.append((kept_seconds(vm, r), rule.destination.kind == "cluster", group))
    vm.groups = tuple(group for _, _, group in per_rule)
    base_size = rng.randint(4, 400) * 1024**3
    spread = base_size >> 6
    asks = [rule.app_consistent for rule in vm.policy.rules]
    if vm.vm_type == "TEMPLATE":
        consistency_of = None
    elif vm.app_consistent:
        consistency_of = "VSS" if cluster.hypervisor == "HYPERV" else "DEFAULT"
    else:
        consistency_of = ""
    special = role in ("failing", "all-states", "last-failed")
    heads = [(0, "")] * len(per_rule)  # per rule: (created, state) of its newest backup
    kept = [0] * len(per_rule)  # per rule: its PROTECTED backups
    app_newest: dict[str, int] = {}  # destination -> its newest application-consistent one
    jitter = min(240, min(rule.frequency for rule in vm.policy.rules) * 30)
    rows: list[Row] = []
    append = rows.append
    for slot, r, j in slots:
        keep, copied, group = per_rule[r]
        created = slot + rng.randint(1, jitter)
        state = "PROTECTED"
        kind = "POLICY"
        if special:
            if role == "failing":
                state = "FAILED"
            elif role == "all-states":
                if j > 0:
                    state = _OTHER_STATES[(j - 1) % len(_OTHER_STATES)]
            elif j == 0:  # last-failed
                state = "FAILED"
        elif j > 0:
            draw = rng.random()
            if draw < failed_share:
                state = "FAILED"
            elif draw < failed_share + 0.005:
                state = "DEGRADED"
            draw = rng.random()
            if draw < manual_share:
                kind = "MANUAL"
            elif draw < manual_share + 0.002:
                kind = "UNSPECIFIED"
        if kind == "MANUAL":
            name = f"{vm.name}-backup-{times.local(created, offset)}"
            expiration = "NA"
        else:
            name = times.local(slot + 1, offset)
            expires = slot + keep
            expiration = times.utc(expires if expires > now else now + late)
        if state == "FAILED":
            size = 0
            rng.randint(-spread, spread)  # the same draws whatever the state
        else:
            size = base_size + rng.randint(-spread, spread)
        if j < 2 or state != "PROTECTED":
            unique, unique_ts = 0, "NA"
        else:
            unique = size // rng.randint(20, 1000)
            unique_ts = times.utc(slot + 3600)
        if copied and state == "PROTECTED":
            duration = rng.randint(5, 900)
            sent, sent_at = unique or size // 50, times.utc(created + duration)
        else:
            duration, sent, sent_at = 0, 0, "NA"
        if asks[r]:  # only vss-failing's rules ask: VSS fails every time, as in HPE's sample
            consistent, consistency = True, "FAILEDVSS"
        elif consistency_of is None:
            consistent, consistency = False, "NOT_APPLICABLE"
        elif consistency_of:
            if rng.random() < 0.01:
                consistent, consistency = False, "FAILEDVSS"
            else:
                consistent, consistency = True, consistency_of
        else:
            consistent, consistency = False, "NONE"
        if j == 0:
            heads[r] = (created, state)
        if state == "PROTECTED":
            kept[r] += 1
            where = group[1] or group[2]
            vm.oldest[where] = min(vm.oldest.get(where, created), created)
            if consistency in ("VSS", "DEFAULT"):
                app_newest[where] = max(app_newest.get(where, 0), created)
        append(
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
                group,
            )
        )
    vm.created = vm.created or oldest - rng.randint(1, 30) * DAY
    # A rule's backups are made in the order of its times (the jitter is less than their
    # spacing): the newest backup is a rule's first, and so is usually its newest PROTECTED.
    newest = max(heads)
    protected: dict[str, int] = {}
    for r, (created, state) in enumerate(heads):
        if state != "PROTECTED":
            created = _first_protected(rows, per_rule[r][2])
        where = per_rule[r][2][1] or per_rule[r][2][2]
        if created > protected.get(where, 0):
            protected[where] = created
    vm.kept = tuple(kept)
    vm.expected = _judge(vm, vm.host, newest, protected, now, app_newest)
    return rows


def _first_protected(rows: list[Row], group: Row) -> int:
    """When the first PROTECTED backup of a rule (by its shared group) was created; 0: none."""
    for row in rows:
        if row[-1] is group and row[2] == "PROTECTED":
            return epoch(row[4])
    return 0


def kept_seconds(vm: VmPlan, r: int) -> int:
    """How long the VM's backups by rule ``r`` are kept: under FederationSpec.steady as many
    of the rule's intervals (on average) as the VM holds of them, else the rule's retention."""
    rule = vm.policy.rules[r]
    if len(vm.held) == len(vm.policy.rules) and vm.held[r]:
        return vm.held[r] * round(DAY / rule.per_day())
    return rule.retention * 60


def backup_group(vm: VmPlan, target: Destination, clusters: Mapping[str, Cluster]) -> Row:
    """The values a VM's backups at one destination share (omnistack_cluster_id onwards)."""
    cluster = vm.cluster
    shared = (
        vm.datastore[0],
        vm.datastore[1],
        vm.id,
        vm.name,
        vm.state,
        vm.vm_type,
        cluster.hypervisor,
        cluster.compute_parent,
        cluster.compute_parent_id,
        list(cluster.group_ids),
        cluster.name,  # associated_cluster: a string in HPE's schema
    )
    if target.kind == "store":
        store_type = _STORE_TYPES.get(target.name, "Unknown")
        return ("", "", target.name, store_type, *shared)
    at = clusters[target.name] if target.kind == "cluster" else cluster
    return (at.id, at.name, "", "SimplivityStore", *shared)


def _slots(vm: VmPlan) -> tuple[Iterable[tuple[int, int, int]], int]:
    """(scheduled time, rule index, index within the rule) of each backup, and the oldest time.

    Every rule's newest time comes first, then the newest of all the rules' other times.
    """
    offset = vm.cluster.offset
    rules = vm.policy.rules
    if len(rules) == 1 and rules[0].every_day() and DAY % (rules[0].frequency * 60) == 0:
        step = rules[0].frequency * 60  # the usual case, in plain arithmetic
        top = (vm.stops[0] + offset) // step * step - offset
        oldest = top - (vm.count - 1) * step
        return zip(range(top, oldest - 1, -step), itertools.repeat(0), range(vm.count)), oldest
    merged = _merged(vm, offset)
    return merged, min(merged)[0]


def _merged(vm: VmPlan, offset: int) -> list[tuple[int, int, int]]:
    rules, count = vm.policy.rules, vm.count
    streams = [rule.times(stop, offset) for rule, stop in zip(rules, vm.stops, strict=True)]
    heads = sorted(((next(s), r) for r, s in enumerate(streams)), reverse=True)
    merged = [(t, r, 0) for t, r in heads[:count]]
    left = count - len(heads)
    if left <= 0:
        return merged
    # The densest rule's next `left` times bound the oldest time needed: the other rules only
    # give their times down to that bound.
    densest = _densest(vm.policy)
    dense = list(itertools.islice(streams[densest], left))
    bound = dense[-1]
    candidates = [(t, densest, j) for j, t in enumerate(dense, 1)]
    for r, stream in enumerate(streams):
        if r != densest:
            times = itertools.takewhile(lambda t: t >= bound, stream)
            candidates.extend((t, r, j) for j, t in enumerate(times, 1))
    candidates.sort(reverse=True)
    return merged + candidates[:left]


@lru_cache(maxsize=1024)
def _densest(policy: Policy) -> int:
    """The index of the policy's rule that takes the most backups per day."""
    return max(range(len(policy.rules)), key=lambda r: policy.rules[r].per_day())


# --- the oracle ---------------------------------------------------------------------------------


def _judge(
    vm: VmPlan,
    host: Host,
    newest: tuple[int, str] | None,  # (created, state) of its newest backup
    protected: Mapping[str, int],
    now: int,
    app_newest: Mapping[str, int],  # destination -> its newest VSS or DEFAULT PROTECTED backup
) -> str | None:
    """The protection status of a VM (see spec's docstring), or None when it is not ALIVE."""
    if vm.state != "ALIVE":
        return None
    if not vm.policy.rules or not host.policy_enabled:
        return "not_scheduled"
    intervals = {
        (vm.cluster.name if target.is_local else target.name): seconds
        for target, seconds in expected_intervals(vm.policy).items()
    }
    if not protected:
        if now - vm.created < max(intervals.values()) + GRACE_SECONDS:
            return "new"
        return "never_backed_up"
    for where, interval in intervals.items():
        last = protected.get(where)
        if last is None or now - last > interval * OVERDUE_FACTOR + GRACE_SECONDS:
            return "overdue"
    if newest is not None and newest[1] == "FAILED":
        return "last_failed"
    for target, interval in expected_intervals(vm.policy, app_consistent=True).items():
        where = vm.cluster.name if target.is_local else target.name
        since = app_newest.get(where) or vm.created
        if now - since > interval * OVERDUE_FACTOR + GRACE_SECONDS:
            return "app_inconsistent"
    return "ok"


@lru_cache(maxsize=1024)
def expected_intervals(policy: Policy, app_consistent: bool = False) -> dict[Destination, int]:
    """Per destination, the longest time (seconds) between two of its scheduled backups; with
    ``app_consistent``, of those of its rules that ask for application-consistent backups."""
    by_target: dict[Destination, list[int]] = {}
    for r, rule in enumerate(policy.rules):
        if rule.app_consistent or not app_consistent:
            by_target.setdefault(rule.destination, []).append(r)
    result = {}
    for target, indexes in by_target.items():
        rules = [policy.rules[r] for r in indexes]
        if len(rules) == 1 and rules[0].every_day() and DAY % (rules[0].frequency * 60) == 0:
            result[target] = rules[0].frequency * 60
            continue
        # Over a span that holds every pattern the rules can make (weeks, or months of every
        # length), from a fixed midnight: the gaps do not depend on which.
        days = 800 if any(rule.by_month_day() for rule in rules) else 28
        result[target] = _longest_gap(rules, 1_700_006_400, days * DAY)
    return result


def _longest_gap(rules: list[Rule], end: int, span: int) -> int:
    times: set[int] = set()
    for rule in rules:
        times.update(itertools.takewhile(lambda t: t > end - span, rule.times(end, 0)))
    ordered = sorted(times)
    return max(b - a for a, b in itertools.pairwise(ordered))


# --- recovery depth -----------------------------------------------------------------------------


def recovery_windows(policy: Policy, kept: list[int]) -> dict[Destination, int]:
    """Per destination, the recovery window (seconds) the policy promises when its rules keep
    ``kept`` backups each (their max_backups): the longest of its rules' (:meth:`Rule.window`)."""
    windows: dict[Destination, int] = {}
    for rule, count in zip(policy.rules, kept, strict=True):
        window = rule.window(count)
        if window is not None:
            windows[rule.destination] = max(windows.get(rule.destination, 0), window)
    return windows


def _short_windows(
    inventory: Inventory, kept: Mapping[tuple[str, int], int], now: int
) -> dict[str, frozenset[str]]:
    """VM id -> where a live VM older than its policy's recovery window holds an oldest
    PROTECTED backup younger than half that window."""
    short: dict[str, frozenset[str]] = {}
    for vm in inventory.vms:
        if vm.state != "ALIVE" or not vm.oldest:
            continue
        counts = [rule_max_backups(vm.policy, r, kept) for r in range(len(vm.policy.rules))]
        where = set()
        for target, window in recovery_windows(vm.policy, counts).items():
            name = vm.cluster.name if target.is_local else target.name
            oldest = vm.oldest.get(name)
            if now - vm.created > window and oldest is not None and now - oldest < window / 2:
                where.add(name)
        if where:
            short[vm.id] = frozenset(where)
    return short


# --- the schedule report ------------------------------------------------------------------------


def schedule_report(spec: FederationSpec, inventory: Inventory) -> dict[str, object]:
    """What the live VMs' policies will create per day and keep, against the limits."""
    scheduled: dict[Policy, int] = {}  # policy -> its live VMs on hosts with policy backups
    for vm in inventory.vms:
        if vm.state == "ALIVE" and vm.host.policy_enabled:
            scheduled[vm.policy] = scheduled.get(vm.policy, 0) + 1
    rate = retained = 0.0
    for policy, vms in scheduled.items():
        for rule in policy.rules:
            rate += vms * rule.per_day()
            retained += vms * rule.per_day() * rule.retention / 1440
    rate_limit, retained_limit = spec.daily_backup_rate_limit, spec.retained_backups_limit
    return {
        "daily_backup_rate": round(rate),
        "daily_backup_rate_limit": rate_limit,
        "backup_rate_level": round(100 * rate / rate_limit),
        "projected_retained_backups": round(retained),
        "retained_backups_limit": retained_limit,
        "projected_retained_backups_level": round(100 * retained / retained_limit),
    }
