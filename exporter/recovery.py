"""How far back a VM can be restored, and the backups nobody owns: pure functions, no I/O.

Recovery window
---------------
"Is there a backup from last night?" is the expected interval's question
(:mod:`exporter.schedule`); "how far back can I restore?" is this one. HPE publishes no
formula, so the exporter derives the window a policy promises at each destination:

- A rule keeps its backups for ``retention`` minutes, and at most ``max_backups`` of them (the
  oldest is trimmed first). Its ``max_backups`` backups reach back at least ``max_backups``
  times the shortest time its schedule leaves between two backups: ``frequency`` when it takes
  several a day, else a day (its ``start_time`` on consecutive days; ``frequency`` 700 all day
  leaves 40 minutes between 23:20 and 00:00). A rule keeping 7 hourly backups promises
  7 hours, not its retention; 7 daily ones, 7 days.
- A rule's window is the shorter of the two; without a usable ``max_backups`` it is its
  retention, without a usable ``retention`` its count; with neither, it promises nothing.
  Nor does a rule that keeps a single backup (``max_backups`` 1): its only restore point is
  its newest, which the expected interval already watches.
- A destination's window is the longest of the windows of the rules aimed at it: each rule
  keeps its own backups, so the deepest one says how far back a VM can go there.

The window is a lower bound: a schedule that skips days (``Mon,Wed,Fri``) reaches further back
than its count says. So a VM whose oldest restore point is younger than half its window has
lost backups the policy should have kept (``max_backups`` lowered, ``set_retention``, deletes).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from functools import lru_cache
from types import MappingProxyType

from exporter.model import BackupSnapshot
from exporter.schedule import Rule, Schedule

_DAY = 1440  # minutes


def shortest_gap_minutes(schedule: Schedule) -> int:
    """The shortest time the schedule can leave between two backups, in minutes.

    >>> from exporter.schedule import Days
    >>> every = Days(every_day=True)
    >>> [shortest_gap_minutes(Schedule(minutes, every, 0, 0)) for minutes in (60, 1440)]
    [60, 1440]
    >>> shortest_gap_minutes(Schedule(700, every, 0, 0))  # 00:00, 11:40, 23:20, then 00:00
    40
    """
    times = schedule.times()
    between_days = times[0] + _DAY - times[-1]
    return min(schedule.frequency_minutes, between_days) if len(times) > 1 else between_days


def rule_window_minutes(rule: Rule) -> int | None:
    """How far back the rule's backups reach, at least (see the module docstring); ``None``
    when it promises nothing: it says neither how long nor how many it keeps, or it keeps one."""
    retention = rule.retention_minutes
    if rule.max_backups == 1:
        return None
    if rule.max_backups is None:
        return retention
    by_count = rule.max_backups * shortest_gap_minutes(rule.schedule)
    return by_count if retention is None else min(retention, by_count)


def recovery_windows(rules: Sequence[Rule], own_cluster: str) -> Mapping[str, int]:
    """The recovery window in seconds per destination of these rules, for a VM of
    ``own_cluster``; a destination whose rules promise nothing has none.

    >>> from exporter.schedule import LOCAL, Days
    >>> every = Days(every_day=True)
    >>> hourly = Rule(Schedule(60, every, 0, 0), LOCAL, retention_minutes=10080, max_backups=7)
    >>> daily = Rule(Schedule(1440, every, 0, 0), "DR", retention_minutes=10080, max_backups=30)
    >>> dict(recovery_windows([hourly, daily], "Boston"))
    {'Boston': 25200, 'DR': 604800}
    """
    return _recovery_windows(tuple(rules), own_cluster)


@lru_cache(maxsize=4096)
def _recovery_windows(rules: tuple[Rule, ...], own_cluster: str) -> Mapping[str, int]:
    windows: dict[str, int] = {}
    for rule in rules:
        minutes = rule_window_minutes(rule)
        if minutes is None:
            continue
        destination = rule.destination(own_cluster)
        windows[destination] = max(windows.get(destination, 0), minutes * 60)
    return MappingProxyType(dict(sorted(windows.items())))


def orphaned(backups: BackupSnapshot, live_vms: Collection[str]) -> dict[str, tuple[int, int]]:
    """Per cluster (or external store) of the backups, the backups and bytes whose VM is not
    one of ``live_vms`` (ids), in any state: every cluster of the snapshot, 0 when none.

    A backup that names no VM at all is orphaned too.
    """
    counts = {c.name: [c.without_vm, c.without_vm_size] for c in backups.clusters}
    for vm in backups.vms:
        if vm.vm_id in live_vms:
            continue
        for destination, held in vm.held.items():
            tally = counts.setdefault(destination, [0, 0])
            tally[0] += held.backups
            tally[1] += held.size
    return {name: (count, size) for name, (count, size) in counts.items()}
