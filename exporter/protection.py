"""Facts in, judgements out: whether each live VM is backed up as its policy asks.

Pure functions of already fetched facts (no I/O): the expected interval of each destination of
a VM's policy (derived from its rules by :mod:`exporter.schedule`), the VM's newest backups,
the clock. The poller feeds them; the exposition and the landing page render what they return.

Destinations
------------
A rule with an ``external_store_name`` sends its backups to that store; otherwise its
``destination_name`` is a cluster, ``<Local>`` (any case) meaning the VM's own cluster. A
backup is held where its ``omnistack_cluster_name`` says, or at its ``external_store_name`` when
the cluster name is empty, exactly as the ``omnistack_cluster`` label of the backup metrics
(``unknown`` when it names neither): :class:`~exporter.backups.Aggregator` keys each VM's
newest backups so. A store named like a cluster is the same destination.

Protection status
-----------------
Each live VM gets the first status that applies (see :func:`judge`): ``not_scheduled``,
``new``, ``never_backed_up``, ``overdue``, ``last_failed``, ``app_inconsistent``, ``ok``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Every status :func:`judge` returns, in the order the issue lists them (the label values).
PROTECTION_STATUSES = (
    "ok",
    "not_scheduled",
    "new",
    "never_backed_up",
    "overdue",
    "last_failed",
    "app_inconsistent",
)
#: The statuses worst first, the order of the landing page's at-risk table (:func:`worst_first`).
SEVERITY = (
    "never_backed_up",
    "overdue",
    "not_scheduled",
    "last_failed",
    "app_inconsistent",
    "new",
    "ok",
)
#: The statuses the landing page lists as at risk.
AT_RISK_STATUSES = frozenset(
    {"never_backed_up", "overdue", "not_scheduled", "last_failed", "app_inconsistent"}
)
_SEVERITY_RANK = {status: rank for rank, status in enumerate(SEVERITY)}


@dataclass(frozen=True)
class NewestBackup:
    """A VM's newest backup in any state."""

    state: str
    created: float  # Unix seconds
    destination: str


@dataclass(frozen=True)
class VMFacts:
    """What :func:`judge` needs to know about one live VM."""

    created_at: float | None  # Unix seconds; None when the API gave none (``NA``)
    intervals: Mapping[str, int]  # expected interval per destination (expected_intervals)
    newest_protected: Mapping[str, float]  # newest PROTECTED backup per destination, any
    newest_backup: NewestBackup | None  # newest backup in any state
    policy_enabled: bool = True  # policy backups enabled on the VM's host
    #: The expected interval of the rules that ask for application-consistent backups, per
    #: destination (:func:`app_consistent_intervals`).
    app_intervals: Mapping[str, int] = field(default_factory=dict)
    #: Per destination whose backups say their ``consistency_type``: the newest
    #: application-consistent PROTECTED backup there, None when there is none. A destination
    #: missing here (REST API before 1.3, or ``"NA"``) is not judged on consistency.
    newest_app_consistent: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """A VM's protection status, and its worst destination for the at-risk table.

    ``destination`` is the destination of the VM's policy nearest to (or furthest past) its
    overdue threshold; ``None`` for ``not_scheduled``. ``age_seconds`` is the time since the
    newest PROTECTED backup there, or since the VM's creation when there is none (infinite when
    that is unknown too); ``lateness`` is that age over the destination's overdue threshold
    (above 1: overdue).
    """

    status: str
    destination: str | None = None
    newest_protected: float | None = None  # Unix seconds, at ``destination`` (anywhere if None)
    expected_interval: int | None = None  # seconds, at ``destination``
    age_seconds: float = math.inf
    lateness: float = 0.0

    @property
    def at_risk(self) -> bool:
        return self.status in AT_RISK_STATUSES


def judge(vm: VMFacts, *, now: float, overdue_factor: float, grace_seconds: float) -> Verdict:
    """The protection status of a live VM: the first of these that applies.

    - ``not_scheduled``: its policy has no usable rule, or policy backups are disabled on its
      host.
    - ``new``: no PROTECTED backup yet, and created less than its longest expected interval
      plus ``grace_seconds`` ago. Any moment lies within one gap of the schedule, so the first
      backup is due at most one (longest) interval after the VM appeared.
    - ``never_backed_up``: no PROTECTED backup anywhere.
    - ``overdue``: at some destination of its policy, the newest PROTECTED backup is older than
      ``expected interval * overdue_factor + grace_seconds`` (exactly at the threshold is not
      overdue yet). With no backup there, the age counts from the VM's creation (so a copy
      that follows the first local backup a few minutes later is not overdue), and is
      infinite when the creation time is unknown.
    - ``last_failed``: its newest backup (any state, any destination) is FAILED.
    - ``app_inconsistent``: at some destination its rules ask application-consistent backups
      for, the newest application-consistent PROTECTED backup is older than the interval of
      those rules there ``* overdue_factor + grace_seconds`` (none: counted from the VM's
      creation, as for ``overdue``). Destinations whose backups do not say their consistency
      are not judged so.
    - ``ok``.

    >>> facts = VMFacts(created_at=0.0, intervals={"Boston": 3600},
    ...                 newest_protected={"Boston": 1000.0}, newest_backup=None)
    >>> judge(facts, now=1000.0 + 9000, overdue_factor=1.5, grace_seconds=3600).status
    'ok'
    >>> judge(facts, now=1000.0 + 9001, overdue_factor=1.5, grace_seconds=3600).status
    'overdue'
    """
    newest_anywhere = max(vm.newest_protected.values(), default=None)
    if not vm.intervals or not vm.policy_enabled:
        age = math.inf if newest_anywhere is None else now - newest_anywhere
        return Verdict("not_scheduled", newest_protected=newest_anywhere, age_seconds=age)
    worst = _worst_destination(
        vm.intervals, vm.newest_protected, vm.created_at, now, overdue_factor, grace_seconds
    )
    if newest_anywhere is None:
        longest = max(vm.intervals.values())
        created = vm.created_at
        if created is not None and now - created < longest + grace_seconds:
            return _verdict("new", worst)
        return _verdict("never_backed_up", worst)
    if worst.overdue:
        return _verdict("overdue", worst)
    if vm.newest_backup is not None and vm.newest_backup.state == "FAILED":
        return _verdict("last_failed", worst)
    judged = {d: i for d, i in vm.app_intervals.items() if d in vm.newest_app_consistent}
    if judged:
        newest = {d: t for d, t in vm.newest_app_consistent.items() if t is not None}
        app = _worst_destination(judged, newest, vm.created_at, now, overdue_factor, grace_seconds)
        if app.overdue:
            return _verdict("app_inconsistent", app)
    return _verdict("ok", worst)


def worst_first(verdict: Verdict) -> tuple[int, float, float]:
    """A sort key putting the most urgent VMs first.

    By status in :data:`SEVERITY` order (backups the policy demands that did not happen
    first; a policy that schedules nothing, often deliberate, after them; a failure with a
    good backup still within its threshold last among the at-risk), then by ``lateness``
    (the destination furthest past its threshold), then by ``age_seconds``. Callers add
    the VM's name to break ties.

    >>> verdicts = [Verdict("last_failed"), Verdict("overdue", lateness=1.2),
    ...             Verdict("overdue", lateness=3.0), Verdict("never_backed_up")]
    >>> [(v.status, v.lateness) for v in sorted(verdicts, key=worst_first)]
    [('never_backed_up', 0.0), ('overdue', 3.0), ('overdue', 1.2), ('last_failed', 0.0)]
    """
    return (_SEVERITY_RANK[verdict.status], -verdict.lateness, -verdict.age_seconds)


def _worst_destination(
    intervals: Mapping[str, int],
    newest_backups: Mapping[str, float],
    created_at: float | None,
    now: float,
    overdue_factor: float,
    grace_seconds: float,
) -> _Destination:
    """The overdue destination furthest past its threshold, else the one nearest to it."""
    candidates: list[_Destination] = []
    for destination, interval in sorted(intervals.items()):
        newest = newest_backups.get(destination)
        since = newest if newest is not None else created_at
        age = math.inf if since is None else now - since
        threshold = interval * overdue_factor + grace_seconds
        overdue = age > threshold
        # A threshold of 0 (factor and grace 0) would divide by zero.
        lateness = age / threshold if threshold > 0 else math.inf if overdue else 0.0
        candidates.append(_Destination(destination, newest, interval, age, lateness, overdue))
    # Judged by the comparison itself, not the quotient, which rounds at the threshold.
    overdue_ones = [candidate for candidate in candidates if candidate.overdue]
    return max(overdue_ones or candidates, key=lambda candidate: candidate.lateness)


@dataclass(frozen=True)
class _Destination:
    name: str
    newest_protected: float | None
    interval: int
    age: float
    lateness: float
    overdue: bool


def _verdict(status: str, worst: _Destination) -> Verdict:
    return Verdict(
        status,
        destination=worst.name,
        newest_protected=worst.newest_protected,
        expected_interval=worst.interval,
        age_seconds=worst.age,
        lateness=worst.lateness,
    )
