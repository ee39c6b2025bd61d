"""The backups of a controller's last successful poll, kept compact for the next poll.

An incremental poll (:mod:`exporter.incremental`) reads only what can have changed since the
last one; the rest of the federation's backups it takes from a :class:`BackupStore`. The store
keeps per backup only what the metrics need, in columns (arrays and byte arrays, names
interned), never a dict or an object per backup: 45 bytes a backup, about 45 MB for a
million. A full scan fills one (:meth:`BackupStore.add` is its pages' sink), an incremental
poll changes it (:meth:`BackupStore.merge`) and the snapshot is counted from it by the same
:class:`~exporter.backups.Aggregator` a scan counts with.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol, TypeVar

from exporter.backups import (
    BACKUPS,
    NO_TIME,
    Aggregator,
    BackupRecordError,
    Place,
    place_of,
    read_backup,
    seconds_of,
)
from exporter.model import MISSING, OTHER_STATE, STATES, BackupSnapshot, VMBackups, blake2b
from exporter.pages import SORT_FIELD, PageCounter, PageOutcome, PageSink

#: A backup's ``state`` as a byte: its index here.
STATE_CODES = (*STATES, OTHER_STATE)
_STATE_CODE = {state: code for code, state in enumerate(STATE_CODES)}
#: What a backup's expiration_time is: a time, the API's "NA" (never), or neither (absent,
#: null, or not a time). Only a time is counted by ``expires_after``.
EXPIRES, NEVER, UNSAID = 0, 1, 2
#: Rows per message when a store is counted in the decoding worker (about 3 MB).
CHUNK_ROWS = 65_536


class Record(NamedTuple):
    """One backup, as a store keeps it: what :meth:`BackupStore.merge` takes."""

    key: bytes  # 16 bytes: its id (:func:`id_key`)
    created: float  # NO_TIME: none
    expires: int  # the whole second it expires at (:func:`_expiry_second`); the last if never
    expiry: int
    size: int
    state: int  # index in STATE_CODES
    place: Place
    vm_id: str
    consistency: int


#: Filters of a count: none, or one (name, value) pair.
Filters = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Figures:
    """What a store holds, as the controller can count it with ``limit=1`` listings."""

    total: int
    states: Mapping[str, int]  # only the states held
    places: Mapping[tuple[str, str], int]  # (filter, name) -> backups, for places that can
    expiring: int  # backups whose expiration_time is a time


def id_key(identifier: str) -> bytes:
    """A backup's id in 16 bytes: the UUID's own bytes, or a digest of any other id."""
    if len(identifier) == 36 and identifier.count("-") == 4:
        try:
            key = bytes.fromhex(identifier.replace("-", ""))
        except ValueError:
            pass
        else:
            if key.hex() == identifier.replace("-", ""):  # lowercase: one id, one key
                return key
    return blake2b(identifier.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def read_record(backup: Mapping[str, object]) -> Record:
    """A backup record as a store keeps it; :class:`~exporter.backups.BackupRecordError` if it
    cannot be placed."""
    place = place_of(backup)
    values = read_backup(backup, place)
    identifier = backup.get("id")
    if not isinstance(identifier, str) or not identifier:  # the page counter placed it by id
        raise BackupRecordError("a backup without an id")
    raw = backup.get("expiration_time")
    expires = _EXPIRY_SECONDS.get(raw) if type(raw) is str else None
    expiry = EXPIRES
    if expires is None:
        seconds = seconds_of(raw)
        if seconds is None:
            expires, expiry = _LAST_SECOND, NEVER if raw == MISSING else UNSAID
        else:
            expires = _expiry_second(seconds)
            if len(_EXPIRY_SECONDS) >= _MAX_EXPIRY_SECONDS:
                _EXPIRY_SECONDS.clear()
            _EXPIRY_SECONDS[str(raw)] = expires  # a text: seconds_of read it
    return Record(
        id_key(identifier),
        values.created,
        expires,
        expiry,
        values.size,
        _STATE_CODE[values.state],
        place,
        values.vm_id,
        values.consistency,
    )


class Rows(NamedTuple):
    """Rows drained from a store (:meth:`BackupStore.drain`): its columns' values, and the
    names that are new since the last drain."""

    columns: tuple[Any, ...]
    places: tuple[Place, ...]
    vms: tuple[str, ...]


#: The last second a 4-byte expiration column holds (2106): "not before this", or never.
_LAST_SECOND = 2**32 - 1
#: expiration_time as the API writes it -> its whole second: many backups share one (a rule's
#: retention after its schedule), and a poll reads each in the decoding worker. Bounded.
_EXPIRY_SECONDS: dict[str, int] = {}
_MAX_EXPIRY_SECONDS = 100_000


def _expiry_second(expires: float) -> int:
    """An expiration time as the store keeps it, in 4 bytes: the whole second at or after it
    (0 before 1970, :data:`_LAST_SECOND` after 2106 or never). For a whole second ``now``
    from 1970 to 2106, as :meth:`BackupStore.merge` asks, ``expires <= now`` holds exactly
    when ``_expiry_second(expires) <= now``."""
    if expires >= _LAST_SECOND:
        return _LAST_SECOND
    return max(0, math.ceil(expires))


def _width(name: str) -> int:
    """Values per row of a column: a key is 16 bytes."""
    return 16 if name == "_keys" else 1


def _empty(column: Any) -> Any:
    """A new empty column of the same kind."""
    return array(column.typecode) if isinstance(column, array) else bytearray()


_T = TypeVar("_T")


def _intern(value: _T, index: dict[_T, int], values: list[_T]) -> int:
    """The number of ``value`` in ``values``, appended if it is new."""
    number = index.get(value)
    if number is None:
        number = index[value] = len(values)
        values.append(value)
    return number


def _sorted(times: Iterable[float]) -> array[float]:
    """``times`` sorted: runs of :data:`CHUNK_ROWS` sorted apart, then merged. Sorting a
    million at once held a million float objects beside the store (32 MB more at the peak of
    a poll that repairs a count); this holds one run's, in about as long (1.1 s a million)."""
    values = iter(times)
    runs = []
    while run := array("d", itertools.islice(values, CHUNK_ROWS)):
        runs.append(array("d", sorted(run)))
    if len(runs) == 1:
        return runs[0]
    return array("d", heapq.merge(*runs))


class Timeline:
    """Sorted creation times (:meth:`BackupStore.timeline`)."""

    def __init__(self, every: array[float], matching: array[float]) -> None:
        self._every = every
        self._matching = matching

    def census(
        self, start: float, end: float, split: float, samples: int = 0
    ) -> tuple[int, int, list[float]]:
        """Of the matching backups created in [start, end): how many, how many of those
        before ``split``, and the creation times of about ``samples`` of them, evenly spread."""
        first = bisect.bisect_left(self._matching, start)
        last = bisect.bisect_left(self._matching, end)
        below = bisect.bisect_left(self._matching, split, first, last) - first
        inside = last - first
        stride = max(1, inside // samples) if samples else 0
        sample = list(self._matching[first:last:stride]) if stride else []
        return inside, below, sample

    def bounds(self) -> tuple[float, float] | None:
        """The oldest and newest creation times held; None if no backup has one."""
        first = bisect.bisect_right(self._every, NO_TIME)
        return (self._every[first], self._every[-1]) if first < len(self._every) else None

    def taken(self, low: float, high: float) -> set[int]:
        """The whole seconds in [low, high) at which any backup held was created."""
        first = bisect.bisect_left(self._every, low)
        last = bisect.bisect_left(self._every, high)
        return {int(c) for c in self._every[first:last]}


class BackupStore:
    """Backups in columns, one row per backup, in no particular order.

    Not thread-safe: one poll at a time uses it (:class:`~exporter.poller.PollTurn`).
    """

    def __init__(self) -> None:
        self._keys = bytearray()  # 16 bytes a row
        self._created = array("d")
        self._expires = array("I")  # whole seconds, rounded up (:func:`_expiry_second`)
        self._expiry = bytearray()
        self._sizes = array("q")
        self._states = bytearray()
        self._places = array("H")  # index in _place_list (at most MAX_DESTINATIONS)
        self._vms = array("I")  # index in _vm_list; 0: no VM
        self._consistency = bytearray()
        self._place_list: list[Place] = []
        self._place_index: dict[Place, int] = {}
        self._vm_list: list[str] = [""]
        self._vm_index: dict[str, int] = {"": 0}
        self._drained_places = 0  # names sent on already (:meth:`drain`)
        self._drained_vms = 1  # "" is in every store

    def __len__(self) -> int:
        return len(self._created)

    #: The columns, one value per row.
    _ROWS = (
        "_keys",
        "_created",
        "_expires",
        "_expiry",
        "_sizes",
        "_states",
        "_places",
        "_vms",
        "_consistency",
    )

    def drain(self) -> Rows:
        """The rows added since the last drain, and the names they brought, taken out of this
        store (which keeps its names, so that the next rows' indexes go on): the decoding
        worker sends each page's backups on as they come, and holds no store of its own."""
        rows = Rows(
            tuple(getattr(self, name) for name in self._ROWS),
            tuple(self._place_list[self._drained_places :]),
            tuple(self._vm_list[self._drained_vms :]),
        )
        for name in self._ROWS:
            column = getattr(self, name)
            setattr(self, name, _empty(column))
        self._drained_places, self._drained_vms = len(self._place_list), len(self._vm_list)
        return rows

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[Rows]:
        """Every row held, ``size`` at a time, as :meth:`drain` would give them (the first
        with every name): to be counted elsewhere (:meth:`StoreScan.count_rows`)."""
        for first in range(0, max(len(self), 1), size):
            yield Rows(
                tuple(
                    getattr(self, name)[_width(name) * first : _width(name) * (first + size)]
                    for name in self._ROWS
                ),
                tuple(self._place_list) if first == 0 else (),
                tuple(self._vm_list[1:]) if first == 0 else (),
            )

    def extend(self, rows: Rows) -> None:
        """Rows that another store drained (:meth:`drain`), each drain once and in order."""
        for name, column in zip(self._ROWS, rows.columns, strict=True):
            getattr(self, name).extend(column)
        for place in rows.places:
            self._intern_place(place)
        for vm_id in rows.vms:
            self._intern_vm(vm_id)

    def add(self, backup: Mapping[str, object]) -> None:
        """One backup record (a page counter's sink)."""
        self.append(read_record(backup))

    def append(self, record: Record) -> None:
        self._keys += record.key
        self._created.append(record.created)
        self._expires.append(record.expires)
        self._expiry.append(record.expiry)
        self._sizes.append(record.size)
        self._states.append(record.state)
        self._places.append(self._intern_place(record.place))
        self._vms.append(self._intern_vm(record.vm_id))
        self._consistency.append(record.consistency)

    def _intern_place(self, place: Place) -> int:
        return _intern(place, self._place_index, self._place_list)

    def _intern_vm(self, vm_id: str) -> int:
        return _intern(vm_id, self._vm_index, self._vm_list)

    def _set(self, row: int, record: Record) -> None:
        self._keys[16 * row : 16 * row + 16] = record.key
        self._created[row] = record.created
        self._expires[row] = record.expires
        self._expiry[row] = record.expiry
        self._sizes[row] = record.size
        self._states[row] = record.state
        self._places[row] = self._intern_place(record.place)
        self._vms[row] = self._intern_vm(record.vm_id)
        self._consistency[row] = record.consistency

    def newest_created(self) -> float:
        """The newest creation time held (NO_TIME: none)."""
        return max(self._created, default=NO_TIME)

    def oldest_created_in(self, states: Iterable[str]) -> float | None:
        """The oldest creation time of a backup in one of ``states`` (None: no such backup)."""
        codes = {_STATE_CODE[state] for state in states}
        times = [c for c, s in zip(self._created, self._states, strict=True) if s in codes]
        return min((c for c in times if c != NO_TIME), default=None)

    def merge(
        self, start: float, now: int, window: Iterable[Record], lingering: Iterable[Record]
    ) -> None:
        """The backups of a new poll: those created before ``start`` that the store holds,
        less those whose expiration_time is past at ``now`` (a whole second: expiration
        times are kept as such, :func:`_expiry_second`) and that are not ``lingering``
        (still listed although past it: taken as now listed), plus every ``window`` backup
        (those created at ``start`` or after, as now listed)."""
        window = list(window)
        in_window = {record.key for record in window}
        lingering_by_key = {r.key: r for r in lingering if r.key not in in_window}
        created, expires, keys = self._created, self._expires, self._keys
        drop = [row for row, c in enumerate(created) if c >= start]
        for row in (row for row, e in enumerate(expires) if e <= now):
            if created[row] >= start:
                continue
            record = lingering_by_key.pop(bytes(keys[16 * row : 16 * row + 16]), None)
            if record is None:
                drop.append(row)
            else:
                self._set(row, record)
        if lingering_by_key:
            # Listed past its expiration, but held with another (a retention changed): find it.
            view = memoryview(keys)
            for row in range(len(created)):
                record = lingering_by_key.pop(bytes(view[16 * row : 16 * row + 16]), None)
                if record is not None and created[row] < start:
                    self._set(row, record)
                elif record is not None:
                    lingering_by_key[record.key] = record
                if not lingering_by_key:
                    break
            view.release()
        self._replace(drop, (*lingering_by_key.values(), *window))

    def timeline(self, filters: Filters) -> Timeline:
        """The creation times held, sorted: of every backup, and of those matching
        ``filters`` (as :meth:`figures` counts them). Built once per repair (a sort), then
        every question is a bisection."""
        every = _sorted(self._created)
        if not filters:
            return Timeline(every, every)
        times = (
            c for c, match in zip(self._created, self._matching(filters), strict=True) if match
        )
        return Timeline(every, _sorted(times))

    def taken(self, low: float, high: float) -> set[int]:
        """The whole seconds in [low, high) at which a backup held was created."""
        return {int(c) for c in self._created if low <= c < high}

    def _matching(self, filters: Filters) -> Iterable[bool]:
        """Whether each row matches the filter (one), as the controller's would."""
        ((name, value),) = filters
        if name == "state":
            code = _STATE_CODE[value]
            return (state == code for state in self._states)
        if name == "expires_after":
            return (expiry == EXPIRES for expiry in self._expiry)
        places = {i for i, p in enumerate(self._place_list) if (p.field, p.name) == (name, value)}
        return (place in places for place in self._places)

    def replace_span(self, start: float, end: float, records: Iterable[Record]) -> None:
        """The backups created in [start, end) become ``records``."""
        self._replace((row for row, c in enumerate(self._created) if start <= c < end), records)

    def _replace(self, rows: Iterable[int], records: Iterable[Record]) -> None:
        """Drop these rows and add ``records``, in place: each record takes a dropped row's
        place, the rows left over take the last rows' (rows are in no order), and the columns
        are cut short. Nothing is copied but the rows that move: an incremental poll changes
        a few thousand rows of a million, and the store never lives twice."""
        holes = sorted(set(rows), reverse=True)
        for record in records:
            if holes:
                self._set(holes.pop(), record)
            else:
                self.append(record)
        end = len(self)
        for row in holes:  # from the last: the last row is never one to drop
            end -= 1
            if row != end:
                self._move(end, row)
        if end < len(self):
            for name in self._ROWS:
                column = getattr(self, name)
                del column[_width(name) * end :]

    def _move(self, source: int, row: int) -> None:
        self._keys[16 * row : 16 * row + 16] = self._keys[16 * source : 16 * source + 16]
        for name in self._ROWS[1:]:
            column = getattr(self, name)
            column[row] = column[source]

    def figures(self) -> Figures:
        """Counted by the byte or array (in C), not row by row."""
        states = {
            state: held
            for state, code in _STATE_CODE.items()
            if state != OTHER_STATE and (held := self._states.count(code))
        }
        by_place: Counter[tuple[str, str]] = Counter()
        for index, place in enumerate(self._place_list):
            if place.field:
                by_place[place.field, place.name] += self._places.count(index)
        return Figures(
            len(self._created),
            states,
            {where: n for where, n in by_place.items() if n},
            self._expiry.count(EXPIRES),
        )

    def aggregate(self) -> BackupSnapshot:
        """The snapshot of the backups held, as a scan of them would count it."""
        aggregator = Aggregator()
        self.count_into(aggregator)
        return aggregator.snapshot()

    def count_into(self, aggregator: Aggregator, first: int = 0) -> None:
        """Count the rows from ``first`` on."""
        count = aggregator.count
        names = STATE_CODES
        places = self._place_list
        vm_ids = self._vm_list
        columns: tuple[Sequence[Any], ...] = (
            self._states,
            self._created,
            self._sizes,
            self._places,
            self._vms,
            self._consistency,
            self._expiry,
        )
        if first:
            columns = tuple(column[first:] for column in columns)
        for state, created, size, place, vm, consistency, expiry in zip(*columns, strict=True):
            where = places[place]
            count(
                names[state],
                created,
                size,
                where.label,
                vm_ids[vm],
                consistency,
                expiry == NEVER,
                where.cut,
            )


class SharedWith:
    """Gives each VM of a new snapshot as the equal one of the published snapshot, where there
    is one: between two polls most VMs' backups do not change, and the new snapshot then
    shares their objects with the published one instead of holding a second copy while both
    live (at 20,000 VMs, 14 MB of Python objects, most of them alike). Both in order of id, as
    :meth:`~exporter.backups.Aggregator.snapshot` makes them; called on the parts of a snapshot
    in turn."""

    def __init__(self, published: Sequence[VMBackups]) -> None:
        self._published = iter(published)
        self._next = next(self._published, None)

    def __call__(self, vms: Iterable[VMBackups]) -> Iterator[VMBackups]:
        for vm in vms:
            known = self._next
            while known is not None and known.vm_id < vm.vm_id:
                known = next(self._published, None)
            self._next = known
            # Equal, and its destinations in the same order (as series are written).
            if known is not None and known == vm and tuple(known.held) == tuple(vm.held):
                yield known
            else:
                yield vm


class BackupScan(PageSink, Protocol):
    """The pages of one scan of :data:`BACKUPS` in, a snapshot out; closed once the scan is over,
    whatever happened."""

    def snapshot(self, published: Sequence[VMBackups] = ()) -> BackupSnapshot:
        """What was counted; each VM equal to one of ``published`` (the VMs of the snapshot
        published now, by id) is given as that very object (:class:`SharedWith`)."""
        ...

    def count_rows(self, rows: Rows) -> None:
        """Count rows of a store too (:meth:`BackupStore.chunks`)."""
        ...

    def take_store(self) -> BackupStore | None:
        """The backups scanned, kept for the next poll; None if this scan keeps none."""
        ...

    def close(self) -> None: ...


class BackupScanFactory(Protocol):
    """Opens the :class:`BackupScan` of one poll; ``keep``: its backups are kept for the next
    (:meth:`BackupScan.take_store`), else counted without keeping any."""

    def __call__(self, keep: bool = True) -> BackupScan: ...


class StoreScan:
    """A scan of the backups, counted as they come; with ``keep``, kept in a fresh
    :class:`BackupStore` too (:meth:`take_store`), which the decoding worker drains page by
    page (:meth:`drain`)."""

    def __init__(self, keep: bool = True) -> None:
        self.store = BackupStore() if keep else None
        self._aggregator = Aggregator()
        self._snapshot: BackupSnapshot | None = None
        self._counted = 0  # the store's rows counted already
        self._rows = BackupStore()  # rows counted from elsewhere pass through it (count_rows)
        sink = self.store.add if self.store is not None else self._aggregator.add
        self._counter = PageCounter(BACKUPS, sink)

    def count(self, offset: int, body: bytes, order: str = SORT_FIELD) -> PageOutcome:
        return self._counter.count(offset, body, order)

    def _count_kept(self) -> None:
        if self.store is not None:
            self.store.count_into(self._aggregator, self._counted)
            self._counted = len(self.store)

    def drain(self) -> Rows | None:
        """The backups kept since the last drain (:meth:`BackupStore.drain`), counted first;
        None: none kept."""
        if self.store is None:
            return None
        self._count_kept()
        self._counted = 0
        return self.store.drain()

    def count_rows(self, rows: Rows) -> None:
        """Count another store's rows (:meth:`BackupStore.chunks`, in order), keeping none:
        how an incremental poll's store is counted in the decoding worker."""
        self._rows.extend(rows)
        self._rows.count_into(self._aggregator)
        self._rows.drain()

    def snapshot(self, published: Sequence[VMBackups] = ()) -> BackupSnapshot:
        """What was scanned: the scan is over, its tallies are freed as the snapshot is made."""
        if self._snapshot is None:
            self._count_kept()
            snapshot = self._aggregator.snapshot(free=True)
            if published:
                snapshot = replace(snapshot, vms=tuple(SharedWith(published)(snapshot.vms)))
            self._snapshot = snapshot
        return self._snapshot

    def take_store(self) -> BackupStore | None:
        return self.store

    def close(self) -> None:
        pass


def count_elsewhere(
    store: BackupStore, scans: BackupScanFactory, published: Sequence[VMBackups] = ()
) -> BackupSnapshot:
    """The snapshot of the store's backups, counted where scans are: in the decoding worker,
    the store sent :data:`CHUNK_ROWS` rows at a time, this process's interpreter lock free for
    the scrapes meanwhile (:meth:`StoreScan.count_rows`). VMs as in
    :meth:`BackupScan.snapshot`."""
    scan = scans(keep=False)
    try:
        for rows in store.chunks():
            scan.count_rows(rows)
        return scan.snapshot(published)
    finally:
        scan.close()
