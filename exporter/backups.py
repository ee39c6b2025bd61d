"""Backups in, summaries out: the backup listing and the pure aggregation behind every metric.

A scan of :data:`BACKUPS` feeds backups to an :class:`Aggregator` one at a time, as the pages
arrive: memory follows the number of clusters and VMs, never the number of backups.
:meth:`Aggregator.snapshot` then freezes the result into a
:class:`~exporter.model.BackupSnapshot`. A scan is one such count, page by page
(:class:`~exporter.store.StoreScan`, which may also keep the backups for the next poll), in
the decoding worker (:mod:`exporter.worker`) or, if it cannot start, in this process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

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
from exporter.pages import Collection

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
#: The filters that name a backup's destination, in the order that picks its label.
CLUSTER_FILTER, STORE_FILTER = "omnistack_cluster_name", "external_store_name"
_CLUSTER_FIELDS = (CLUSTER_FILTER, STORE_FILTER)

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
        self.newest_protected = NO_TIME
        self.never_expiring = self.never_expiring_size = 0
        self.without_vm = self.without_vm_size = 0


#: What a backup's consistency_type is when it does not say.
_UNSAID = frozenset({"", MISSING})
#: A backup's creation time when it has none (yet): before every time, so never the newest.
NO_TIME = float("-inf")
#: The oldest PROTECTED backup of a tally that has none: after every time.
_NO_OLDEST = float("inf")
#: Bits of a backup's consistency code (:func:`consistency_code`): it says its consistency
#: type, and that type is application-consistent.
TYPED, APP_CONSISTENT = 1, 2
#: Makes a HeldBackups from its values' tuple, without the Python call of its constructor.
_held_backups = tuple.__new__
#: The code of each consistency_type that is not just TYPED.
_CONSISTENCY_CODES = {
    **dict.fromkeys(_UNSAID, 0),
    **dict.fromkeys(APP_CONSISTENT_TYPES, TYPED | APP_CONSISTENT),
}


class _HeldTally:
    """A VM's backups at one destination (:class:`~exporter.model.HeldBackups`)."""

    __slots__ = ("codes", "newest", "newest_app", "oldest", "others", "protected", "size")

    def __init__(self) -> None:
        self.size = self.protected = self.others = 0  # others: not PROTECTED
        self.newest = self.newest_app = NO_TIME  # PROTECTED ones' created_at
        self.oldest = _NO_OLDEST
        self.codes = 0  # its backups' consistency codes, or-ed


class _VMTally:
    __slots__ = (
        "held",
        "newest_created",
        "newest_destination",
        "newest_failed",
        "newest_state",
    )

    def __init__(self) -> None:
        # Of its newest backup in any state, with its state and place.
        self.newest_created = NO_TIME
        self.newest_state = ""
        self.newest_destination = ""
        self.held: dict[str, _HeldTally] = {}  # by destination
        self.newest_failed = NO_TIME


class BackupValues(NamedTuple):
    """What the metrics need of one backup (:func:`read_backup`)."""

    state: str  # one of STATES, or OTHER_STATE
    created: float  # Unix seconds; NO_TIME if it has none
    size: int
    destination: str  # its cluster, external store or UNKNOWN_CLUSTER (as a label value)
    vm_id: str  # "" if it names none
    consistency: int  # TYPED | APP_CONSISTENT bits
    never_expires: bool  # its expiration_time is the API's "NA" (a manual backup)


class Aggregator:
    """Accumulates backups into per-cluster and per-VM tallies.

    Per VM: the newest PROTECTED backup at each destination, the newest FAILED one, and the
    newest in any state (state, time, destination), whatever the VM's own state: the
    inventory says which VMs are alive. Nothing depends on the order the backups come in
    (backups of the same second tie by state, then destination), so a scan of the listing and
    a count of the same backups kept in a :class:`~exporter.store.BackupStore` agree.

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

    def add(self, backup: Mapping[str, object]) -> None:
        """Count one backup; raise :class:`BackupRecordError` if it cannot be placed
        (:func:`read_backup`), :class:`~exporter.model.DecodeError` past
        :data:`MAX_DESTINATIONS` or :data:`MAX_VMS_WITH_BACKUPS`: the whole listing is in doubt.
        """
        place = place_of(backup)
        values = read_backup(backup, place)
        cut = values.destination not in self._clusters and place.cut
        self.count(*values, cut)

    def count(
        self,
        state: str,
        created: float,
        size: int,
        cluster_name: str,
        vm_id: str,
        consistency: int,
        never_expires: bool,
        cut: bool = False,
    ) -> None:
        """Count one backup's :class:`BackupValues`; ``cut``: its destination's name was cut
        to :data:`~exporter.model.MAX_LABEL_LENGTH`."""
        tally = self._clusters.get(cluster_name)
        if tally is None:
            if len(self._clusters) >= MAX_DESTINATIONS:
                raise DecodeError(
                    f"the backups name more than {MAX_DESTINATIONS} clusters and external stores"
                )
            tally = self._clusters[cluster_name] = _ClusterTally(cluster_name)
        if cut:
            self._cut.add(cluster_name)
        tally.counts[state] = tally.counts.get(state, 0) + 1
        tally.sizes[state] = tally.sizes.get(state, 0) + size
        protected = state == "PROTECTED"
        if protected and created > tally.newest_protected:
            tally.newest_protected = created
        if never_expires:  # a manual backup: it never expires
            tally.never_expiring += 1
            tally.never_expiring_size += size
        self._seen += 1

        if not vm_id:
            tally.without_vm += 1
            tally.without_vm_size += size
            return
        destination = tally.name
        vm = self._vms.get(vm_id)
        if vm is None:
            if len(self._vms) >= MAX_VMS_WITH_BACKUPS:
                raise DecodeError(f"the backups belong to more than {MAX_VMS_WITH_BACKUPS} VMs")
            vm = self._vms[vm_id] = _VMTally()
        # One without a creation time (NO_TIME) is never the newest; backups of the same
        # second (a rule's copies on their destinations) tie by state, then destination.
        if created > vm.newest_created or (
            created == vm.newest_created
            and created != NO_TIME
            and (state, destination) < (vm.newest_state, vm.newest_destination)
        ):
            vm.newest_created = created
            vm.newest_state = state
            vm.newest_destination = destination
        held = vm.held.get(destination)
        if held is None:
            held = vm.held[destination] = _HeldTally()
        held.size += size
        held.codes |= consistency
        if protected:
            held.protected += 1
            if created > held.newest:
                held.newest = created
            # _NO_OLDEST comes after every time; a backup without one is no one's oldest.
            if NO_TIME < created < held.oldest:
                held.oldest = created
            if consistency & APP_CONSISTENT and created > held.newest_app:
                held.newest_app = created
        else:
            held.others += 1
            if state == "FAILED" and created > vm.newest_failed:
                vm.newest_failed = created

    def snapshot(self, *, free: bool = False) -> BackupSnapshot:
        """What was counted. ``free``: each VM's tallies are freed as its part is made, and
        the VMs are counted anew from then on (at 20,000 VMs, megabytes that the decoding
        worker's peak would otherwise hold twice)."""
        clusters = tuple(
            ClusterSummary(
                name=name,
                counts=dict(tally.counts),
                sizes=dict(tally.sizes),
                newest_protected=_optional(tally.newest_protected),
                never_expiring=tally.never_expiring,
                never_expiring_size=tally.never_expiring_size,
                without_vm=tally.without_vm,
                without_vm_size=tally.without_vm_size,
            )
            for name, tally in sorted(self._clusters.items())
        )
        vms = []
        tallies = self._vms
        if free:
            self._vms = {}
        for vm_id in sorted(tallies):
            vm = tallies.pop(vm_id) if free else tallies[vm_id]
            held: dict[str, HeldBackups] = {}
            for where, h in vm.held.items():
                # One per VM and destination at every poll: made as a tuple directly.
                held[where] = _held_backups(
                    HeldBackups,
                    (
                        h.protected + h.others,
                        h.size,
                        h.protected,
                        _optional(h.newest),
                        None if h.oldest == _NO_OLDEST else h.oldest,
                        _optional(h.newest_app),
                        bool(h.codes & TYPED),
                    ),
                )
            vms.append(
                VMBackups(
                    vm_id,
                    _optional(vm.newest_failed),
                    vm.newest_state,
                    _optional(vm.newest_created),
                    vm.newest_destination,
                    held,
                )
            )
        return BackupSnapshot(
            clusters=clusters,
            vms=tuple(vms),
            backups_seen=self._seen,
            cut_labels=frozenset(self._cut),
        )


def read_backup(backup: Mapping[str, object], place: Place) -> BackupValues:
    """What the metrics need of one backup record at ``place`` (:func:`place_of`, which its
    callers keep too); :class:`BackupRecordError` if it cannot be placed.

    Missing values (absent, null, or the API's ``"NA"``) are odd, not wrong: a backup
    without a creation time is counted by its state but is never anyone's newest, one
    without a size counts 0 bytes, one without a cluster goes under its external store or
    ``unknown``. A backup without a state, or with a value that is present but wrong (a
    size of -1, a creation time that is no UTC timestamp), cannot be placed.
    """
    state = backup.get("state")
    if not isinstance(state, str) or state in ("", MISSING):
        what = (
            "is missing"
            if state is None or isinstance(state, str)
            else f"must be a string, not {type(state).__name__}"
        )
        raise BackupRecordError(f"backup {_describe(backup)}: state {what}")
    consistency = backup.get("consistency_type")
    # Not a text (absent, or odd): as if not said; a text not documented: said, not VSS.
    code = _CONSISTENCY_CODES.get(consistency, TYPED) if type(consistency) is str else 0
    # The usual values take the short way; anything else, the checks of the long one.
    seconds = _created(backup)
    size = backup.get("size")
    if type(size) is not int or not 0 <= size <= _MAX_SIZE:
        size = _size(backup)
    return BackupValues(
        state if state in _KNOWN_STATES else OTHER_STATE,
        seconds,
        size,
        place.label,
        text_field(backup, "virtual_machine_id"),
        code,
        backup.get("expiration_time") == MISSING,
    )


class Place(NamedTuple):
    """A destination: its ``omnistack_cluster`` label, whether that is a name cut to
    :data:`~exporter.model.MAX_LABEL_LENGTH`, and the filter that counts its backups with the
    exact name it was listed under ("" for either when none can: ``unknown``, or a name cut
    or cleaned for a label)."""

    label: str
    field: str
    name: str
    cut: bool


def place_of(backup: Mapping[str, object]) -> Place:
    """Where the backup is: a function of its cluster and store names only, so each pair of
    names is worked out once, for every backup that shares it (a federation has a few dozen,
    often not ASCII: "Zürich", which a label takes cleaning)."""
    names = (backup.get(CLUSTER_FILTER), backup.get(STORE_FILTER))
    try:
        place = _PLACES.get(names)
    except TypeError:  # a list, say: not a name, and not a key
        return _new_place(backup)
    if place is None:
        place = _new_place(backup)
        if len(_PLACES) >= MAX_DESTINATIONS:
            _PLACES.clear()
        _PLACES[names] = place
    return place


#: (cluster name, store name) as a backup writes them -> its place. Bounded.
_PLACES: dict[tuple[object, object], Place] = {}


def _new_place(backup: Mapping[str, object]) -> Place:
    label = destination_of(backup)
    cut = any(_cut_to(backup, key, label) for key in _CLUSTER_FIELDS)
    for field in _CLUSTER_FIELDS:
        if text_field(backup, field) == label:
            exact = backup.get(field) == label  # else cut or cleaned: no filter names it
            return Place(label, field if exact else "", label if exact else "", cut)
    return Place(label, "", "", cut)


def destination_of(backup: Mapping[str, object]) -> str:
    """The ``omnistack_cluster`` label of a backup: its cluster, else its external store."""
    return (  # the order of _CLUSTER_FIELDS
        text_field(backup, CLUSTER_FILTER) or text_field(backup, STORE_FILTER) or UNKNOWN_CLUSTER
    )


def _optional(seconds: float) -> float | None:
    return None if seconds == NO_TIME else seconds


def _created(backup: Mapping[str, object]) -> float:
    """The creation time in Unix seconds, or NO_TIME if the backup has none (yet)."""
    value = backup.get("created_at")
    if value is None or value == MISSING or value == "":
        return NO_TIME
    seconds = seconds_of(value)
    if seconds is None:
        raise BackupRecordError(
            f"backup {_describe(backup)}: created_at {str(value)[:40]!r} is not a UTC timestamp"
        )
    return seconds


def seconds_of(value: object) -> float | None:
    """A time as the API writes it (:func:`~exporter.model.is_timestamp`) in Unix seconds;
    None if it is none.

    A whole second of a day already read (``2018-05-08T10:00:01Z``, as every captured answer
    writes them) is read from that day's midnight and its clock, without the datetime module.
    Not a cache of every time read: a million backups have about 100,000 of them, which held
    14 MB of the decoding worker's peak; this costs 0.6 s more of its CPU per million.
    """
    if type(value) is str and len(value) == 20 and value[19] == "Z":
        midnight = _MIDNIGHTS.get(value[:11])
        if midnight is not None and _CLOCK.fullmatch(value, 11, 19):
            clock = int(value[11:19].replace(":", ""))  # HHMMSS
            hours, minutes, seconds = clock // 10000, clock // 100 % 100, clock % 100
            if hours < 24 and minutes < 60 and seconds < 60:
                return float(midnight + 3600 * hours + 60 * minutes + seconds)
    if not is_timestamp(value):
        return None
    unix = timestamp_seconds(value)
    if len(_MIDNIGHTS) >= _MAX_MIDNIGHTS:
        _MIDNIGHTS.clear()
    _MIDNIGHTS[value[:11]] = int(unix // 86400) * 86400  # UTC: every day is 86,400 s
    return unix


#: The Unix second of each midnight read, by its day's text (``2018-05-08T``). Bounded.
_MIDNIGHTS: dict[str, int] = {}
_MAX_MIDNIGHTS = 100_000
_CLOCK = re.compile(r"[0-9][0-9]:[0-9][0-9]:[0-9][0-9]")  # ASCII digits only


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


def _cut_to(backup: Mapping[str, object], key: str, name: str) -> bool:
    """Whether ``name`` is the backup's ``key``, cut."""
    return is_cut(backup.get(key)) and text_field(backup, key) == name


def _describe(backup: Mapping[str, object]) -> str:
    identifier = backup.get("id")
    return repr(identifier[:64]) if isinstance(identifier, str) else "(without an id)"
