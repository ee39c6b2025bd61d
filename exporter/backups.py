"""Backups in, summaries out: the backup listing and the pure aggregation behind every metric.

A scan of :data:`BACKUPS` feeds backups to an :class:`Aggregator` one at a time, as the pages
arrive, and keeps nothing per backup: memory follows the number of clusters and VMs, never the
number of backups. :meth:`Aggregator.snapshot` then freezes the result into a
:class:`~exporter.model.BackupSnapshot`. A :class:`BackupScan` is one such count, page by page:
in this process (:class:`LocalBackupScan`) or in the decoding worker (:mod:`exporter.worker`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from exporter.model import (
    APP_CONSISTENT_TYPES,
    MISSING,
    OTHER_STATE,
    STATES,
    BackupSnapshot,
    ClusterSummary,
    DecodeError,
    HeldBackups,
    RecordError,
    VMBackups,
    is_cut,
    is_timestamp,
    text_field,
    timestamp_seconds,
)
from exporter.pages import SORT_FIELD, Collection, PageCounter, PageOutcome, PageSink

#: What a scan asks the API for (``fields=``): everything the metrics need and nothing more
#: (a VM's name and state come from the inventory).
FIELDS = (
    "id",
    "state",
    "created_at",
    "size",
    "omnistack_cluster_name",
    "external_store_name",
    "virtual_machine_id",
    "expiration_time",
    "consistency_type",
)
#: The federation's backups, as a scan pages through them.
BACKUPS = Collection(
    "/api/backups",
    key="backups",
    item="backup",
    fields=FIELDS,
    # HPE's PowerShell module sorts by created_at: the order to fall back to (scan.py),
    # newest first, the end new backups come at.
    orders=("id", "-created_at"),
)
#: The ``omnistack_cluster`` label of a backup that names neither a cluster nor an external store.
UNKNOWN_CLUSTER = "unknown"

_KNOWN_STATES = frozenset(STATES)
#: The most clusters and external stores the backups may name, and VMs they may belong to:
#: memory follows these, not the number of backups. A federation has at most a few dozen
#: clusters, and tens of thousands of VMs (with those deleted but still holding backups);
#: past these, the listing is broken, and the poll fails (decode).
MAX_DESTINATIONS = 10_000
MAX_VMS_WITH_BACKUPS = 1_000_000
#: The API's sizes are Java longs; far past this a sum no longer converts to a float at scrape.
_MAX_SIZE = 2**63 - 1


class BackupRecordError(RecordError):
    """A backup record the exporter cannot read (a missing field, a wrong type)."""


class _ClusterTally:
    __slots__ = (
        "counts",
        "name",
        "never_expiring",
        "never_expiring_size",
        "newest_protected",
        "sizes",
        "without_vm",
        "without_vm_size",
    )

    def __init__(self, name: str) -> None:
        self.name = name  # one string object per destination, shared by the VMs' tallies
        self.counts: dict[str, int] = dict.fromkeys(STATES, 0)
        self.sizes: dict[str, int] = dict.fromkeys(STATES, 0)
        self.newest_protected = ""
        self.never_expiring = self.never_expiring_size = 0
        self.without_vm = self.without_vm_size = 0


#: What a backup's consistency_type is when it does not say.
_UNSAID = frozenset({"", MISSING})
#: The oldest PROTECTED backup of a tally that has none: after every timestamp.
_NO_OLDEST = "~"


class _HeldTally:
    """A VM's backups at one destination (:class:`~exporter.model.HeldBackups`)."""

    __slots__ = ("newest", "newest_app", "oldest", "others", "protected", "size", "typed")

    def __init__(self) -> None:
        self.size = self.protected = self.others = 0  # others: not PROTECTED
        self.newest = self.newest_app = ""  # PROTECTED ones' created_at
        self.oldest = _NO_OLDEST
        self.typed = False


class _VMTally:
    __slots__ = (
        "held",
        "newest_created",
        "newest_destination",
        "newest_failed",
        "newest_state",
    )

    def __init__(self) -> None:
        self.newest_created = ""  # of its newest backup in any state, with its state and place
        self.newest_state = ""
        self.newest_destination = ""
        self.held: dict[str, _HeldTally] = {}  # by destination
        self.newest_failed = ""


class Aggregator:
    """Accumulates backups into per-cluster and per-VM tallies.

    Per VM: the newest PROTECTED backup at each destination, the newest FAILED one, and the
    newest in any state (state, time, destination), whatever the VM's own state: the
    inventory says which VMs are alive.

    >>> tally = Aggregator()
    >>> tally.add({"id": "b1", "state": "PROTECTED", "created_at": "2024-01-01T00:00:00Z",
    ...            "size": 10, "omnistack_cluster_name": "Boston", "virtual_machine_id": "v1"})
    >>> snapshot = tally.snapshot()
    >>> snapshot.clusters[0].counts["PROTECTED"], dict(snapshot.vms[0].newest_protected)
    (1, {'Boston': 1704067200.0})
    """

    def __init__(self) -> None:
        self._clusters: dict[str, _ClusterTally] = {}
        self._vms: dict[str, _VMTally] = {}
        self._seen = 0
        self._cut: set[str] = set()  # cluster names cut to MAX_LABEL_LENGTH
        # Creation times already found valid: a policy's backups share theirs, so most backups
        # skip the check (a pattern and a calendar parse).
        self._times: set[str] = set()

    def add(self, backup: Mapping[str, object]) -> None:
        """Count one backup; raise :class:`BackupRecordError` if it cannot be placed.

        Missing values (absent, null, or the API's ``"NA"``) are odd, not wrong: a backup
        without a creation time is counted by its state but is never anyone's newest, one
        without a size counts 0 bytes, one without a cluster goes under its external store or
        ``unknown``. A backup without a state, or with a value that is present but wrong (a
        size of -1, a creation time that is no UTC timestamp), cannot be placed.
        :class:`~exporter.model.DecodeError` past :data:`MAX_DESTINATIONS` or
        :data:`MAX_VMS_WITH_BACKUPS`: the whole listing is in doubt.
        """
        state = backup.get("state")
        if not isinstance(state, str) or state in ("", MISSING):
            what = (
                "is missing"
                if state is None or isinstance(state, str)
                else f"must be a string, not {type(state).__name__}"
            )
            raise BackupRecordError(f"backup {_describe(backup)}: state {what}")
        created = backup.get("created_at")
        if type(created) is not str or created not in self._times:
            created = _created(backup)
            self._times.add(created)
        size = backup.get("size")
        if type(size) is not int or not 0 <= size <= _MAX_SIZE:
            size = _size(backup)
        # A name as the API wrote it finds its tally at once: a text that is a key is its own
        # label value (text_field leaves a label value as it is). Others take the long way.
        where = backup.get("omnistack_cluster_name") or backup.get("external_store_name")
        tally = self._clusters.get(where) if type(where) is str else None
        if tally is None:
            tally = self._cluster(backup)
        if state not in _KNOWN_STATES:
            state = OTHER_STATE
        tally.counts[state] = tally.counts.get(state, 0) + 1
        tally.sizes[state] = tally.sizes.get(state, 0) + size
        protected = state == "PROTECTED"
        # The timestamps share one format, so comparing the strings compares the times; a
        # backup without one ("") is never the newest.
        if protected and created > tally.newest_protected:
            tally.newest_protected = created
        if backup.get("expiration_time") == MISSING:  # a manual backup: it never expires
            tally.never_expiring += 1
            tally.never_expiring_size += size
        self._seen += 1

        vm_id = backup.get("virtual_machine_id")
        vm = self._vms.get(vm_id) if type(vm_id) is str else None
        if vm is None:
            vm_id = text_field(backup, "virtual_machine_id")
            if not vm_id:
                tally.without_vm += 1
                tally.without_vm_size += size
                return
            vm = self._vms.get(vm_id)
            if vm is None:
                if len(self._vms) >= MAX_VMS_WITH_BACKUPS:
                    raise DecodeError(f"the backups belong to more than {MAX_VMS_WITH_BACKUPS} VMs")
                vm = self._vms[vm_id] = _VMTally()
        destination = tally.name
        if created > vm.newest_created:  # one without a creation time ("") is never the newest
            vm.newest_created = created
            vm.newest_state = state
            vm.newest_destination = destination
        held = vm.held.get(destination)
        if held is None:
            held = vm.held[destination] = _HeldTally()
        held.size += size
        consistency = backup.get("consistency_type")
        # Not a text (absent, or odd): as if not said.
        said = type(consistency) is str and consistency not in _UNSAID
        if said:
            held.typed = True
        if protected:
            held.protected += 1
            if created > held.newest:
                held.newest = created
            # _NO_OLDEST sorts after every time; a backup without one ("") is no one's oldest.
            if "" < created < held.oldest:
                held.oldest = created
            if said and created > held.newest_app and consistency in APP_CONSISTENT_TYPES:
                held.newest_app = created
        else:
            held.others += 1
            if state == "FAILED" and created > vm.newest_failed:
                vm.newest_failed = created

    def _cluster(self, backup: Mapping[str, object]) -> _ClusterTally:
        """The tally of the backup's cluster, or external store, or ``unknown``: made at its
        first backup."""
        name = (  # the order of _CLUSTER_FIELDS
            text_field(backup, "omnistack_cluster_name")
            or text_field(backup, "external_store_name")
            or UNKNOWN_CLUSTER
        )
        tally = self._clusters.get(name)
        if tally is None:
            if len(self._clusters) >= MAX_DESTINATIONS:
                raise DecodeError(
                    f"the backups name more than {MAX_DESTINATIONS} clusters and external stores"
                )
            tally = self._clusters[name] = _ClusterTally(name)
            if any(_cut_to(backup, key, name) for key in _CLUSTER_FIELDS):
                self._cut.add(name)
        return tally

    def snapshot(self) -> BackupSnapshot:
        clusters = tuple(
            ClusterSummary(
                name=name,
                counts=dict(tally.counts),
                sizes=dict(tally.sizes),
                newest_protected=parse_timestamp(tally.newest_protected),
                never_expiring=tally.never_expiring,
                never_expiring_size=tally.never_expiring_size,
                without_vm=tally.without_vm,
                without_vm_size=tally.without_vm_size,
            )
            for name, tally in sorted(self._clusters.items())
        )
        # Many backups share their creation time (a policy's schedule): each is parsed once.
        seconds: dict[str, float] = {}

        def parsed(created: str) -> float:
            value = seconds.get(created)
            if value is None:
                value = seconds[created] = timestamp_seconds(created)
            return value

        def optional(created: str) -> float | None:
            return parsed(created) if created else None

        vms = tuple(
            VMBackups(
                vm_id,
                {where: parsed(h.newest) for where, h in vm.held.items() if h.newest},
                optional(vm.newest_failed),
                vm.newest_state,
                optional(vm.newest_created),
                vm.newest_destination,
                {
                    where: HeldBackups(
                        h.protected + h.others,
                        h.size,
                        h.protected,
                        None if h.oldest is _NO_OLDEST else parsed(h.oldest),
                        optional(h.newest_app),
                        h.typed,
                    )
                    for where, h in vm.held.items()
                },
            )
            for vm_id, vm in sorted(self._vms.items())
        )
        return BackupSnapshot(
            clusters=clusters, vms=vms, backups_seen=self._seen, cut_labels=frozenset(self._cut)
        )


class BackupScan(PageSink, Protocol):
    """The pages of one scan of :data:`BACKUPS` in, a snapshot out; closed once the scan is over,
    whatever happened."""

    def snapshot(self) -> BackupSnapshot: ...

    def close(self) -> None: ...


#: Opens the :class:`BackupScan` of one poll.
BackupScanFactory = Callable[[], BackupScan]


class LocalBackupScan:
    """A :class:`BackupScan` counted in this process, into an :class:`Aggregator`."""

    def __init__(self) -> None:
        self._aggregator = Aggregator()
        self._counter = PageCounter(BACKUPS, self._aggregator.add)

    def count(self, offset: int, body: bytes, order: str = SORT_FIELD) -> PageOutcome:
        return self._counter.count(offset, body, order)

    def snapshot(self) -> BackupSnapshot:
        return self._aggregator.snapshot()

    def close(self) -> None:
        pass


def parse_timestamp(value: str) -> float | None:
    """``2018-05-08T10:00:01Z`` as Unix seconds; ``None`` for an empty string."""
    return timestamp_seconds(value) if value else None


def _created(backup: Mapping[str, object]) -> str:
    """The creation time, or "" if the backup has none (yet)."""
    value = backup.get("created_at")
    if value is None or value == MISSING or value == "":
        return ""
    if not is_timestamp(value):
        raise BackupRecordError(
            f"backup {_describe(backup)}: created_at {str(value)[:40]!r} is not a UTC timestamp"
        )
    return value


def _size(backup: Mapping[str, object]) -> int:
    """The size in bytes; 0 if the backup has none (yet)."""
    value = backup.get("size")
    if value is None or value == MISSING:
        return 0
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        value = int(value)  # some versions write numbers as strings
    if type(value) is not int or not 0 <= value <= _MAX_SIZE:
        raise BackupRecordError(
            f"backup {_describe(backup)}: size must be a whole number of bytes, "
            f"not {str(value)[:40]!r}"
        )
    return value


_CLUSTER_FIELDS = ("omnistack_cluster_name", "external_store_name")


def _cut_to(backup: Mapping[str, object], key: str, name: str) -> bool:
    """Whether ``name`` is the backup's ``key``, cut."""
    return is_cut(backup.get(key)) and text_field(backup, key) == name


def _describe(backup: Mapping[str, object]) -> str:
    identifier = backup.get("id")
    return repr(identifier[:64]) if isinstance(identifier, str) else "(without an id)"
