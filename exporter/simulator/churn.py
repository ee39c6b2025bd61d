"""Churn: a generated federation that lives in time, as a real one does between two polls.

A test (or the bench) shares a :class:`~exporter.simulator.clock.ManualClock` with the
simulated controller and the exporter, turns churn on, and moves the clock; the next request
(or :meth:`SimulatedController.advance_to`) sees everything that happened meanwhile::

    clock = ManualClock()
    controller = SimulatedController(FederationSpec(vms=200), clock=clock, churn=Churn())
    with controller:
        ...  # a first poll
        clock.advance(300)  # five minutes pass
        ...  # the next poll sees the new backups, state changes, expiries...
        controller.changes()  # {"scheduled": 17, "protected": 15, "expired": 2, ...}

While the clock stands still the federation does not change: two clients (an incremental
poll and a full one) get the same answers. The same seed and the same moves of the clock give
the same federation (one RNG, drawn in the order of events).

What happens (each kind counted under its name by ``SimulatedController.changes()``):

- ``scheduled``: each live VM's policy rules take a backup at each of their scheduled seconds
  (:meth:`~exporter.simulator.schedule.Rule.next_after`), one object per rule at its
  destination (the VM's cluster, another cluster for a DR copy, an external store), named by
  the local time, ``created_at`` the scheduled second, expiring after the rule's retention,
  unless the VM is not ALIVE or policy backups are suspended on its host. A new backup is
  ``QUEUED``, then ``saving`` (``SAVING``) seconds later, then ``protected`` (``PROTECTED``)
  or ``failed`` (``FAILED``, a share) about a minute after its time on its own cluster; a copy
  on another cluster replicates for 5 to 30 minutes, its ``sent`` and ``sent_duration``
  growing (``replication_progress``), and ends with ``sent_completion_time``
  (``replicated``); one on an external store takes 2 to 15 minutes. Application-consistent
  backups come out ``FAILEDVSS`` at a share (``failed_vss``). A rule whose policy sets
  ``max_backups`` deletes the oldest of the VM's policy backups there beyond it (``trimmed``).
  With ``late_listing_seconds``, a new backup is listed up to that long after its
  ``created_at`` (older than backups listed before it).
- ``expired``: a backup disappears at its ``expiration_time`` plus a lag of up to
  ``expiry_lag_seconds`` (the same for a given backup: a function of its id). ``"NA"`` never
  expires.
- At random times, at their rates (events per hour across the federation, Poisson):
  ``retention_changed`` (set_retention: a backup's ``expiration_time`` moves, to an hour
  from now at the soonest),
  ``locked`` (its expiration becomes ``"NA"``), ``deleted`` (a backup older than a day deleted
  by hand), ``manual_backup`` (type MANUAL, expiration ``"NA"``, on the VM's cluster),
  ``manual_copy`` (a new object on another cluster copying a PROTECTED backup: its name,
  size and expiration; ``created_at`` the copy's time, or the original's with
  ``copy_keeps_created_at``), ``lost`` (an old PROTECTED backup turns DELETED: its data was
  lost, it stays listed), ``vm_created`` (a new ALIVE VM on a policy with rules),
  ``vm_removed`` (state REMOVED: its backups stay, with ``virtual_machine_state`` REMOVED),
  ``vm_renamed`` (its backups' ``virtual_machine_name`` follow: a backup's VM fields are the
  VM's current ones, as the generated federation's REMOVED VMs show), ``vm_moved`` (to
  another policy: the next backups follow its rules), ``policy_edited`` (a rule's retention,
  frequency or max_backups changes: the next backups follow), ``host_suspended`` /
  ``host_resumed`` (policy backups suspended on a host: its VMs take none; the hosts listing's
  ``policy_enabled`` and the schedule report follow).

Departures, by choice: the ``max_backups`` a policy record shows for a rule that sets none is
what the generated VMs hold, and is not enforced (the generated snapshot holds what it holds);
the roles' planted statuses hold only at generation (``SimulatedController.planted`` is empty
once the federation has lived).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

#: The rates' reference: the bench's federation of 100,000 backups on 5,000 VMs.
REFERENCE_VMS: Final = 5000


@dataclass(frozen=True)
class Churn:
    """How a generated federation lives: shares, and rates in events per hour across the
    federation.

    The defaults suit a federation of 5,000 VMs (:meth:`for_vms` scales the rates to another
    size). Its policies (hourly, 4-hourly, daily, daily DR copies, weekly store copies) take
    their backups at their scheduled seconds: at 100,000 backups on 5,000 VMs about 3,000 in
    the first minutes of each hour, about 250 per 5 minutes on average, each QUEUED, SAVING
    and done within minutes (DR copies within half an hour), so that a poll every 5 minutes
    sees a few hundred new backups and a few dozen still changing. The random events are an
    administrator's hand on a federation of that size, a handful a day each: manual backups
    and new VMs about every two hours, manual deletions and retention changes every five,
    rarer locks, copies, removals, moves and renames, a policy edit or a suspended host a few
    times a month, a backup lost to DELETED about once a month. Expiry follows the backups'
    expiration times: a generated federation holds fewer backups than its retention (its
    oldest expire days later), so expiries start when the clock gets there, unless it is
    generated ``FederationSpec(steady=True)``: then about as many expire as are taken, from
    the first hour (the bench's steady state).
    """

    #: Policy backups at their scheduled times (off: only the random events happen).
    scheduled: bool = True
    #: Share of new backups that end FAILED.
    failed_share: float = 0.02
    #: Share of application-consistent backups whose VSS part fails (FAILEDVSS).
    vss_failed_share: float = 0.01
    #: An expired backup disappears up to this long after its expiration_time.
    expiry_lag_seconds: int = 120
    #: A manual copy keeps its original's created_at (else: the copy's time).
    copy_keeps_created_at: bool = False
    #: A new backup is listed up to this long after its created_at (0: at once). Whether a
    #: controller lists a backup before it completes is not documented.
    late_listing_seconds: int = 0
    retention_changes: float = 0.2
    locks: float = 0.05
    deletions: float = 0.2
    manual_backups: float = 0.5
    manual_copies: float = 0.1
    losses: float = 0.002
    vm_creations: float = 0.5
    vm_removals: float = 0.1
    vm_renames: float = 0.05
    vm_moves: float = 0.1
    policy_edits: float = 0.005
    host_suspensions: float = 0.005

    #: The rates (per hour), by the name of the event each makes.
    RATES: ClassVar[Mapping[str, str]] = {
        "retention_changes": "retention_changed",
        "locks": "locked",
        "deletions": "deleted",
        "manual_backups": "manual_backup",
        "manual_copies": "manual_copy",
        "losses": "lost",
        "vm_creations": "vm_created",
        "vm_removals": "vm_removed",
        "vm_renames": "vm_renamed",
        "vm_moves": "vm_moved",
        "policy_edits": "policy_edited",
        "host_suspensions": "host_suspended",
    }

    def __post_init__(self) -> None:
        problems = [f"{n} must not be negative" for n in self.RATES if getattr(self, n) < 0]
        for name in ("failed_share", "vss_failed_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        for name in ("expiry_lag_seconds", "late_listing_seconds"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative")
        if problems:
            raise ValueError("invalid Churn: " + "; ".join(problems))

    def scaled(self, factor: float) -> Churn:
        """The same churn with every rate multiplied by ``factor``."""
        return self.with_rates({name: getattr(self, name) * factor for name in self.RATES})

    def with_rates(self, rates: Mapping[str, float]) -> Churn:
        """The same churn with these rates (by their names in :attr:`RATES`)."""
        unknown = sorted(set(rates) - set(self.RATES))
        if unknown:
            raise ValueError(f"no churn rate {unknown}; there are {sorted(self.RATES)}")
        floats: dict[str, Any] = {name: float(rate) for name, rate in rates.items()}
        return dataclasses.replace(self, **floats)  # validated again (__post_init__)

    @classmethod
    def for_vms(cls, vms: int) -> Churn:
        """The default churn of a federation of ``vms`` VMs (rates in proportion)."""
        return cls().scaled(vms / REFERENCE_VMS)

    @classmethod
    def quiet(cls) -> Churn:
        """Scheduled backups and their states, expiry, and no random event."""
        return cls().scaled(0)


#: What a new backup goes through after it is listed (a manual backup or copy too).
LIFE_OF_A_BACKUP: Final = (
    "saving",
    "replication_progress",
    "protected",
    "replicated",
    "failed",
    "failed_vss",
)
#: Every kind of change, in the order the docstring tells them.
KINDS: Final = (
    "scheduled",
    *LIFE_OF_A_BACKUP,
    "trimmed",
    "expired",
    *Churn.RATES.values(),
    "host_resumed",
)
