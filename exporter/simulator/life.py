"""The life of a generated federation: :class:`FederationLife` catches up from one moment to
the next, as :class:`~exporter.simulator.churn.Churn` says (the kinds of change are told
there)."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from exporter.simulator.churn import Churn
from exporter.simulator.federation import (
    Federation,
    backup_group,
    kept_seconds,
    schedule_report,
)
from exporter.simulator.inventory import (
    Host,
    Inventory,
    Policy,
    VmPlan,
    host_record,
    max_backups,
    policy_record,
    regular_vm_name,
    vm_record,
)
from exporter.simulator.schedule import LOCAL, Destination, Rule
from exporter.simulator.spec import FederationSpec
from exporter.simulator.store import Row, Store
from exporter.simulator.values import DAY, Times, epoch, seeded_uuid4

# The columns of a generated backup's row (vocabulary.OWN_FIELDS), and of its shared group.
_ID, _NAME, _STATE, _TYPE, _CREATED, _EXPIRES, _SIZE = range(7)
_SENT, _SENT_DURATION, _SENT_AT, _CONSISTENT, _CONSISTENCY, _GROUP = range(9, 15)
_G_CLUSTER_ID, _G_CLUSTER, _G_STORE, _G_VM_ID, _G_VM_NAME, _G_VM_STATE = 0, 1, 2, 6, 7, 8
_GIB: Final = 1024**3


@dataclass(frozen=True)
class Changes:
    """What the inventory listings must show after a step (None/empty: unchanged)."""

    #: the records of the VMs that changed or appeared
    vms: list[dict[str, object]]
    policies: list[dict[str, object]] | None
    hosts: list[dict[str, object]] | None
    schedule_report: dict[str, object] | None


class _Batch:
    """The backups changed by one step: the store is changed once, at the end (a backup
    created and protected within the step is one added row)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._before: dict[str, Row | None] = {}
        self._now: dict[str, Row | None] = {}

    def get(self, backup_id: str) -> Row | None:
        if backup_id in self._now:
            return self._now[backup_id]
        return self.store.find(backup_id)

    def put(self, backup_id: str, row: Row | None) -> None:
        if backup_id not in self._before:
            self._before[backup_id] = self.store.find(backup_id)
        self._now[backup_id] = row

    def put_new(self, row: Row) -> None:
        """A backup that did not exist (a fresh random id)."""
        self._before[row[_ID]] = None
        self._now[row[_ID]] = row

    def finish(self) -> None:
        removed, added = [], []
        for backup_id, before in self._before.items():
            after = self._now[backup_id]
            if after is not before:
                if before is not None:
                    removed.append(before)
                if after is not None:
                    added.append(after)
        self.store.apply(removed, added)


Event = tuple[int, int, str, Any]


class FederationLife:
    """The life of one generated federation from ``start``: :meth:`advance` catches up."""

    def __init__(
        self,
        spec: FederationSpec,
        federation: Federation,
        churn: Churn,
        store: Store,
        start: float,
    ) -> None:
        inventory = federation.inventory
        self.spec = spec
        self.churn = churn
        self.store = store
        self.start = self.time = int(start)
        #: kind -> how many times it happened since start
        self.applied: Counter[str] = Counter()
        self.rng = random.Random(f"life-{spec.seed}")
        self._clusters = inventory.clusters
        self._cluster_by_name = {c.name: c for c in inventory.clusters}
        self._hosts = list(inventory.hosts)
        self._policies = list(inventory.policies)
        self._vms = list(inventory.vms)
        self._kept = max_backups(inventory)
        self._times = Times()
        self._events: list[Event] = []
        self._seq = itertools.count()
        self._generation: dict[str, int] = {}
        self._groups: dict[tuple[str, int], Row] = {}
        # VM id -> ids of its backups (renames and removals rewrite them)
        self._of_vm: dict[str, list[str]] = {}
        for row in store.rows:
            self._of_vm.setdefault(row[_GROUP][_G_VM_ID], []).append(row[_ID])
        for vm in self._vms:
            if vm.state == "ALIVE":
                running = [t >= self.start - 600 for t in vm.stops] or [True] * len(vm.policy.rules)
                self._schedule(vm, self.start, running)
        self._handlers: dict[str, Callable[[Any], None]] = {
            "schedule": self._scheduled,
            "saving": self._saving,
            "progress": self._progress,
            "done": self._done,
            "expire": self._expire,
            "appear": self._appear,
            "retention_changed": self._change_retention,
            "locked": self._lock,
            "deleted": self._delete,
            "manual_backup": self._manual_backup,
            "manual_copy": self._manual_copy,
            "lost": self._lose,
            "vm_created": self._create_vm,
            "vm_removed": self._remove_vm,
            "vm_renamed": self._rename_vm,
            "vm_moved": self._move_vm,
            "policy_edited": self._edit_policy,
            "host_suspended": self._toggle_host,
        }
        self._batch = _Batch(store)
        self._now = self.start
        self._until = self.start
        self._vms_changed: dict[str, VmPlan] = {}
        self._policies_changed = self._hosts_changed = False

    # -- catching up

    def advance(self, now: float) -> Changes | None:
        """Live from the last moment to ``now``; None when nothing could have changed (the
        clock did not move), else what the inventory listings must show."""
        t1 = int(now)
        if t1 <= self.time:
            return None
        t0 = self.time
        self._begin(t1)
        span = t1 - t0
        for rate, kind in Churn.RATES.items():
            for _ in range(_poisson(self.rng, getattr(self.churn, rate) * span / 3600)):
                self._push(t0 + 1 + self.rng.randrange(span), kind, None)
        self._push_expiries(t0)
        events = self._events
        while events and events[0][0] <= t1:
            t, _, kind, payload = heapq.heappop(events)
            self._now = t
            self._handlers[kind](payload)
        self.time = t1
        return self._end()

    def change(self, kind: str, count: int) -> tuple[int, Changes]:
        """``count`` random changes of ``kind`` (a name of :data:`Churn.RATES`) at once, the
        clock standing still (what follows from them, such as a manual backup's states, comes
        as the clock moves); how many happened (a change finds nothing to change on, such as a
        deletion in a federation without old backups, does not happen)."""
        if kind not in Churn.RATES.values():
            raise ValueError(f"no random change {kind!r}; there are {sorted(Churn.RATES.values())}")
        kinds = (kind, "host_resumed") if kind == "host_suspended" else (kind,)
        before = sum(self.applied[k] for k in kinds)
        self._begin(self.time)
        self._now = self.time
        for _ in range(count):
            self._handlers[kind](None)
        return sum(self.applied[k] for k in kinds) - before, self._end()

    def _begin(self, until: int) -> None:
        self._batch = _Batch(self.store)
        self._until = until
        self._vms_changed = {}
        self._policies_changed = self._hosts_changed = False

    def _end(self) -> Changes:
        """Change the store; what the inventory listings must show."""
        self._batch.finish()
        inventory_changed = self._vms_changed or self._policies_changed or self._hosts_changed
        report = None
        if inventory_changed:
            inventory = Inventory(
                self._clusters, tuple(self._hosts), tuple(self._policies), self._vms
            )
            report = schedule_report(self.spec, inventory)
        return Changes(
            vms=[vm_record(vm, self._times) for vm in self._vms_changed.values()],
            policies=[policy_record(p, self._kept) for p in self._policies]
            if self._policies_changed
            else None,
            hosts=[host_record(h) for h in self._hosts] if self._hosts_changed else None,
            schedule_report=report,
        )

    def _push(self, t: int, kind: str, payload: object) -> None:
        heapq.heappush(self._events, (t, next(self._seq), kind, payload))

    def _count(self, kind: str) -> None:
        self.applied[kind] += 1

    # -- scheduled backups and their states

    def _schedule(self, vm: VmPlan, after: int, running: list[bool] | None = None) -> None:
        """Start the VM's rules over from ``after`` (the rules it ran before are forgotten)."""
        if not self.churn.scheduled:
            return
        generation = self._generation.get(vm.id, 0) + 1
        self._generation[vm.id] = generation
        for r, rule in enumerate(vm.policy.rules):
            if running is None or running[r]:
                t = rule.next_after(after, vm.cluster.offset)
                self._push(t, "schedule", (vm, r, generation))

    def _scheduled(self, payload: tuple[VmPlan, int, int]) -> None:
        vm, r, generation = payload
        if generation != self._generation.get(vm.id) or vm.state != "ALIVE":
            return
        rule = vm.policy.rules[r]
        if vm.host.policy_enabled:
            self._take_backup(vm, r)
        self._push(rule.next_after(self._now, vm.cluster.offset), "schedule", payload)

    def _group(self, vm: VmPlan, r: int) -> Row:
        """The shared values of the VM's backups by rule ``r`` (-1: its manual ones)."""
        group = self._groups.get((vm.id, r))
        if group is None:
            # the generated ones hold until the VM is renamed, removed or moved
            if r >= 0 and len(vm.groups) == len(vm.policy.rules):
                group = vm.groups[r]
            else:
                target = LOCAL if r < 0 else vm.policy.rules[r].destination
                group = backup_group(vm, target, self._cluster_by_name)
            self._groups[(vm.id, r)] = group
        return group

    def _take_backup(self, vm: VmPlan, r: int) -> None:
        t = self._now
        rule, group = vm.policy.rules[r], self._group(vm, r)
        consistent, consistency = self._consistency(vm, rule)
        name = self._times.local(t, vm.cluster.offset)
        expires = self._times.utc(t + kept_seconds(vm, r))
        row = _queued(self.rng, name, "POLICY", self._times.utc(t), expires, self._size(vm))
        row = (*row[:_CONSISTENT], consistent, consistency, group)
        self._new(row, rule.destination, "scheduled", (vm, rule.max_backups))

    def _new(
        self,
        row: Row,
        target: Destination,
        kind: str,
        trim: tuple[VmPlan | None, int | None] = (None, None),
    ) -> None:
        """A new backup: listed now, or up to ``late_listing_seconds`` later (then its VM's
        policy backups beyond ``trim``'s max_backups go)."""
        late = self.churn.late_listing_seconds
        if late > 0:
            self._push(self._now + self.rng.randint(1, late), "appear", (row, target, kind, trim))
        else:
            self._appear((row, target, kind, trim))

    def _appear(
        self, payload: tuple[Row, Destination, str, tuple[VmPlan | None, int | None]]
    ) -> None:
        row, target, kind, (vm, keep) = payload
        self._add(row)
        self._count(kind)
        self._start_saving(row, target)
        if vm is not None and keep:
            self._trim(vm, row[_GROUP], keep)

    def _start_saving(self, row: Row, target: Destination) -> None:
        remote = target.kind != "local"
        delay = self.rng.randint(30, 180) if remote else self.rng.randint(1, 10)
        self._push(self._now + delay, "saving", (row[_ID], target.kind))

    def _consistency(self, vm: VmPlan, rule: Rule) -> tuple[bool, str]:
        failed = self.rng.random() < self.churn.vss_failed_share or vm.role == "vss-failing"
        if rule.app_consistent:
            consistent, consistency = True, "VSS"
        elif vm.vm_type == "TEMPLATE":
            return False, "NOT_APPLICABLE"
        elif vm.app_consistent:
            consistent = True
            consistency = "VSS" if vm.cluster.hypervisor == "HYPERV" else "DEFAULT"
        else:
            return False, "NONE"
        if failed:
            self._count("failed_vss")
            return consistent, "FAILEDVSS"
        return consistent, consistency

    def _size(self, vm: VmPlan) -> int:
        base = (int(vm.id[:8], 16) % 397 + 4) * _GIB
        spread = base >> 6
        return base + self.rng.randint(-spread, spread)

    def _saving(self, payload: tuple[str, str]) -> None:
        backup_id, kind = payload
        row = self._batch.get(backup_id)
        if row is None or row[_STATE] != "QUEUED":
            return
        self._replace(row, _with(row, {_STATE: "SAVING"}))
        self._count("saving")
        if kind == "cluster":
            done = self._now + self.rng.randint(300, 1800)
            self._push((self._now + done) // 2, "progress", backup_id)
        elif kind == "store":
            done = self._now + self.rng.randint(120, 900)
        else:
            done = self._now + self.rng.randint(20, 90)
        self._push(done, "done", (backup_id, kind))

    def _progress(self, backup_id: str) -> None:
        row = self._batch.get(backup_id)
        if row is None or row[_STATE] != "SAVING":
            return
        sent = row[_SIZE] // self.rng.randint(100, 400)
        duration = self._now - epoch(row[_CREATED])
        self._replace(row, _with(row, {_SENT: sent, _SENT_DURATION: duration}))
        self._count("replication_progress")

    def _done(self, payload: tuple[str, str]) -> None:
        backup_id, kind = payload
        row = self._batch.get(backup_id)
        if row is None or row[_STATE] != "SAVING":
            return
        if self.rng.random() < self.churn.failed_share:
            self._replace(row, _with(row, {_STATE: "FAILED"}))
            self._count("failed")
            return
        values: dict[int, object] = {_STATE: "PROTECTED"}
        if kind == "cluster":
            values[_SENT] = max(row[_SENT], row[_SIZE] // self.rng.randint(20, 100))
            values[_SENT_DURATION] = self._now - epoch(row[_CREATED])
            values[_SENT_AT] = self._times.utc(self._now)
            self._count("replicated")
        self._replace(row, _with(row, values))
        self._count("protected")

    def _trim(self, vm: VmPlan, group: Row, keep: int) -> None:
        where = group[:3]
        rows = [self._batch.get(i) for i in self._of_vm.get(vm.id, ())]
        same = [
            r for r in rows if r is not None and r[_TYPE] == "POLICY" and r[_GROUP][:3] == where
        ]
        if len(same) <= keep:
            return
        same.sort(key=lambda r: (r[_CREATED], r[_ID]))
        for row in same[: len(same) - keep]:
            self._remove(row)
            self._count("trimmed")

    # -- expiry

    def _lag(self, backup_id: str) -> int:
        return int(backup_id[-4:], 16) % (self.churn.expiry_lag_seconds + 1)

    def _due(self, row: Row) -> int | None:
        """When the backup disappears (expiration + its lag), or None ("NA")."""
        text = row[_EXPIRES]
        if text == "NA":
            return None
        return epoch(text) + self._lag(row[_ID])

    def _push_expiries(self, t0: int) -> None:
        by_expiry = self.store.ascending("expiration_time")
        last = self._times.utc(self._until)
        for row in by_expiry:
            if row[_EXPIRES] > last:  # "NA" sorts after every time
                break
            due = self._due(row)
            if due is not None and due <= self._until:
                self._push(max(due, t0 + 1), "expire", row[_ID])

    def _expire(self, backup_id: str) -> None:
        row = self._batch.get(backup_id)
        if row is None:
            return
        due = self._due(row)
        if due is not None and due <= self._now:
            self._remove(row)
            self._count("expired")

    def _watch_expiry(self, row: Row) -> None:
        due = self._due(row)
        if due is not None and due <= self._until:
            self._push(max(due, self._now), "expire", row[_ID])

    # -- the rows

    def _add(self, row: Row) -> None:
        self._batch.put_new(row)
        self._of_vm.setdefault(row[_GROUP][_G_VM_ID], []).append(row[_ID])
        self._watch_expiry(row)

    def _remove(self, row: Row) -> None:
        self._batch.put(row[_ID], None)
        ids = self._of_vm.get(row[_GROUP][_G_VM_ID])
        if ids is not None and row[_ID] in ids:  # not one Faults' per-request churn added
            ids.remove(row[_ID])

    def _replace(self, old: Row, new: Row) -> None:
        self._batch.put(new[_ID], new)
        if new[_EXPIRES] != old[_EXPIRES]:
            self._watch_expiry(new)

    def _pick(self, test: Callable[[Row], bool], tries: int = 8) -> Row | None:
        """A random backup passing ``test`` (of those at the start of the step), or None."""
        rows = self.store.rows
        for _ in range(tries if rows else 0):
            row = self._batch.get(rows[self.rng.randrange(len(rows))][_ID])
            if row is not None and test(row):
                return row
        return None

    def _old(self, row: Row) -> bool:
        return bool(row[_CREATED] < self._times.utc(self._now - DAY))

    # -- random events on backups

    def _change_retention(self, _: None) -> None:
        row = self._pick(lambda r: r[_EXPIRES] != "NA")
        if row is None:
            return
        days = self.rng.choice((1, 3, 7, 14, 30, 90, 365))
        expires = max(epoch(row[_CREATED]) + days * DAY, self._now + 3600)
        self._replace(row, _with(row, {_EXPIRES: self._times.utc(expires)}))
        self._count("retention_changed")

    def _lock(self, _: None) -> None:
        row = self._pick(lambda r: r[_EXPIRES] != "NA")
        if row is not None:
            self._replace(row, _with(row, {_EXPIRES: "NA"}))
            self._count("locked")

    def _delete(self, _: None) -> None:
        row = self._pick(self._old)
        if row is not None:
            self._remove(row)
            self._count("deleted")

    def _lose(self, _: None) -> None:
        row = self._pick(lambda r: r[_STATE] == "PROTECTED" and self._old(r))
        if row is not None:
            self._replace(row, _with(row, {_STATE: "DELETED"}))
            self._count("lost")

    def _manual_backup(self, _: None) -> None:
        vm = self._pick_vm(lambda vm: True)
        if vm is None:
            return
        t = self._now
        consistent, consistency = self._consistency(vm, Rule(60))
        name = f"{vm.name}-backup-{self._times.local(t, vm.cluster.offset)}"
        row = _queued(self.rng, name, "MANUAL", self._times.utc(t), "NA", self._size(vm))
        row = (*row[:_CONSISTENT], consistent, consistency, self._group(vm, -1))
        self._new(row, LOCAL, "manual_backup")

    def _manual_copy(self, _: None) -> None:
        row = self._pick(lambda r: r[_STATE] == "PROTECTED")
        if row is None:
            return
        group = row[_GROUP]
        targets = [c for c in self._clusters if c.id != group[_G_CLUSTER_ID]]
        if not targets:
            return
        target = self.rng.choice(targets)
        copy_group = (target.id, target.name, "", "SimplivityStore", *group[4:])
        created = row[_CREATED] if self.churn.copy_keeps_created_at else self._times.utc(self._now)
        copy = _queued(self.rng, row[_NAME], "MANUAL", created, row[_EXPIRES], row[_SIZE])
        copy = (*copy[:_CONSISTENT], row[_CONSISTENT], row[_CONSISTENCY], copy_group)
        self._new(copy, Destination("cluster", target.name, target.id), "manual_copy")

    # -- random events on the inventory

    def _pick_vm(self, test: Callable[[VmPlan], bool]) -> VmPlan | None:
        """A random ALIVE VM passing ``test``, or None."""
        alive = [vm for vm in self._vms if vm.state == "ALIVE" and test(vm)]
        return self.rng.choice(alive) if alive else None

    def _create_vm(self, _: None) -> None:
        policies = [p for p in self._policies if p.rules]
        if not policies:
            return
        cluster = self.rng.choice(self._clusters)
        hosts = [h for h in self._hosts if h.cluster.id == cluster.id]
        n = len(self._vms)
        vm = VmPlan(
            seeded_uuid4(self.rng),
            regular_vm_name(n),
            "regular",
            cluster,
            self.rng.choice(hosts),
            self.rng.choice(cluster.datastores),
            self.rng.choice(policies),
            0,
            app_consistent=self.rng.random() < 0.3,
            created=self._now,
        )
        self._vms.append(vm)
        self._vms_changed[vm.id] = vm
        self._schedule(vm, self._now)
        self._count("vm_created")

    def _remove_vm(self, _: None) -> None:
        vm = self._pick_vm(lambda vm: True)
        if vm is not None:
            vm.state = "REMOVED"
            self._rewrite(vm)
            self._count("vm_removed")

    def _rename_vm(self, _: None) -> None:
        vm = self._pick_vm(lambda vm: True)
        if vm is not None:
            vm.name = f"{vm.name}-renamed"
            self._rewrite(vm)
            self._count("vm_renamed")

    def _rewrite(self, vm: VmPlan) -> None:
        """The VM's name or state changed: its backups' shared values follow."""
        self._vms_changed[vm.id] = vm
        self._forget_groups(vm)
        new_groups: dict[int, Row] = {}
        for backup_id in self._of_vm.get(vm.id, ()):
            row = self._batch.get(backup_id)
            if row is None:
                continue
            group = row[_GROUP]
            new = new_groups.get(id(group))
            if new is None:
                new = (*group[:_G_VM_NAME], vm.name, vm.state, *group[_G_VM_STATE + 1 :])
                new_groups[id(group)] = new
            self._replace(row, (*row[:_GROUP], new))

    def _forget_groups(self, vm: VmPlan) -> None:
        vm.groups = ()
        for r in range(-1, len(vm.policy.rules)):
            self._groups.pop((vm.id, r), None)

    def _move_vm(self, _: None) -> None:
        vm = self._pick_vm(lambda vm: vm.role == "regular")
        if vm is None:
            return
        others = [p for p in self._policies if p.rules and p is not vm.policy]
        if not others:
            return
        self._forget_groups(vm)
        vm.held = ()  # the new policy's backups expire after its retention
        vm.policy = self.rng.choice(others)
        self._vms_changed[vm.id] = vm
        self._schedule(vm, self._now)
        self._count("vm_moved")

    def _edit_policy(self, _: None) -> None:
        policies = [p for p in self._policies if p.rules]
        if not policies:
            return
        policy = self.rng.choice(policies)
        r = self.rng.randrange(len(policy.rules))
        rule = policy.rules[r]
        draw = self.rng.random()
        if draw < 0.2 and rule.every_day():
            choices = [f for f in (30, 60, 120, 240, 720, 1440) if f != rule.frequency]
            frequency = self.rng.choice(choices)
            edited = replace(rule, frequency=frequency)
        elif draw < 0.4:
            edited = replace(rule, max_backups=max(2, rule.retained() // 2))
        else:
            days = self.rng.choice([d for d in (1, 3, 7, 14, 30, 90) if d * 1440 != rule.retention])
            edited = replace(rule, retention=days * 1440)
        rules = (*policy.rules[:r], edited, *policy.rules[r + 1 :])
        new = Policy(policy.id, policy.name, rules, policy.rule_ids, policy.owner)
        self._policies[self._policies.index(policy)] = new
        for vm in self._vms:
            if vm.policy is policy:
                vm.policy = new  # same destinations: its groups hold
                vm.held = ()  # its next backups expire after the edited retention
                if vm.state == "ALIVE":
                    self._schedule(vm, self._now)
        self._policies_changed = True
        self._count("policy_edited")

    def _toggle_host(self, _: None) -> None:
        if not self._hosts:
            return
        i = self.rng.randrange(len(self._hosts))
        host = self._hosts[i]
        new = Host(host.id, host.name, host.cluster, not host.policy_enabled)
        self._hosts[i] = new
        for vm in self._vms:
            if vm.host is host:
                vm.host = new
        self._hosts_changed = True
        self._count("host_suspended" if host.policy_enabled else "host_resumed")


def _queued(rng: random.Random, name: str, kind: str, created: str, expires: str, size: int) -> Row:
    """A new backup's row up to its consistency (the caller adds it and its group)."""
    return (seeded_uuid4(rng), name, "QUEUED", kind, created, expires, size, 0, "NA", 0, 0, "NA")


def _with(row: Row, values: Mapping[int, object]) -> Row:
    return tuple(values.get(i, v) for i, v in enumerate(row))


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method; a normal approximation for large means)."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
