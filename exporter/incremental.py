"""An incremental poll: only what can have changed since the last poll, then proof that
nothing else did.

The API has no change feed and no modified-since filter (``../shared/SIMPLIVITY_API.md``). What
it has: ``created_after`` and ``expires_before`` filters, and ``count`` of a filtered listing,
which a page of one record (``limit=1``) gives exactly and cheaply. So a poll that holds the
backups of the last one (:class:`~exporter.store.BackupStore`):

1. reads every backup created since a *window start* W (the recent ones: new backups, and
   those whose state may still change, the oldest one in a transient state included);
2. reads every backup still listed although past its expiration time (normally a few);
3. takes the rest from the store, less the backups whose expiration time has passed;
4. counts, with ``limit=1`` listings, the backups in all, in each state it holds, at each
   destination it holds, and those with an expiration time, and compares each count with
   its own;
5. looks for a count that differs (:func:`repair`: halving the span of creation times with
   ``created_before`` counts) and reads that span again; where it cannot, or after
   :data:`MAX_REPAIRS`, that is a :class:`Mismatch`, and the poller runs a full scan.

Nothing rests on an undocumented behaviour: whether time bounds are inclusive does not matter
for the backups held (W is a second at which the store holds none), and a backup that appears
late with an older creation time, an expiration changed after creation, a deletion, a state
change outside the window or a lock to "NA" all change one of the counts, which are compared
again after every repair. What the counts
cannot see is two changes that cancel out within every count between two polls (one old
backup deleted and another added with an old creation time, same state and destination):
it lives until the next full scan (``poll.full_scan_interval_seconds``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from exporter.backups import NO_TIME
from exporter.pages import SORT_FIELD, Collection, PageCounter, PageOutcome, RecordTally
from exporter.store import BackupStore, Figures, Filters, Record, Timeline, read_record

log = logging.getLogger(__name__)

#: The window reaches at least this far back from now (seconds): backups of the last quarter
#: of an hour are read again at every poll, whatever the store holds.
RECENT_SECONDS = 900.0
#: ... and this far back from the newest backup held, for one that appears a little late.
MARGIN_SECONDS = 300.0
#: ... and back to the oldest backup held in a state that still changes,
TRANSIENT_STATES = ("NEW", "QUEUED", "SAVING", "REBUILDING", "CANCELING")
#: ... but never further back than this: a backup stuck in one of those states for longer is
#: left to the counts (its change of state changes them).
MAX_LOOKBACK_SECONDS = 3600.0
#: A count that differs is looked for at most this many times a poll, then a full scan runs.
MAX_REPAIRS = 4
#: ... by halving the span of creation times down to this many backups held, then reading
#: them again,
REPAIR_SPAN = 200
#: ... and read no span of more backups held than this (backups that share their seconds).
MAX_SPAN = 5000
#: ... each at the middle of a sample of this many of the backups held in the span,
SAMPLES = 64
#: ... in at most this many halvings (a ``created_before`` count each).
MAX_HALVINGS = 40
#: Every backup with an expiration time expires after this (``expires_after``).
EPOCH = "1970-01-01T00:00:00Z"


class Mismatch(Exception):
    """Something did not add up: the poll's backups cannot be trusted; a full scan follows."""


def timestamp(seconds: float) -> str:
    """Unix seconds as the API's filters take them.

    >>> timestamp(1704067200.9)
    '2024-01-01T00:00:00Z'
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.floor(seconds)))


def window_start(store: BackupStore, now: float) -> int:
    """The second from which a poll reads the backups again: one at which the store holds
    none; :class:`Mismatch` if the store is so dense that none is free."""
    start = now - RECENT_SECONDS
    newest = store.newest_created()
    if newest != NO_TIME:
        start = min(start, newest - MARGIN_SECONDS)
    transient = store.oldest_created_in(TRANSIENT_STATES)
    if transient is not None:
        start = min(start, transient)
    second = math.floor(max(start, now - MAX_LOOKBACK_SECONDS))
    free = _free(store, second, -1, second - 3600)
    if free is None:
        raise Mismatch("no second without a backup in the hour before the window")
    return free


class RecordList:
    """The pages of a filtered read of the backups, as store records
    (a :class:`~exporter.pages.PageSink`)."""

    def __init__(self, collection: Collection) -> None:
        self.records: list[Record] = []
        self._counter = PageCounter(collection, self._add)

    def _add(self, backup: dict[str, Any]) -> None:
        self.records.append(read_record(backup))

    def count(self, offset: int, body: bytes, order: str = SORT_FIELD) -> PageOutcome:
        return self._counter.count(offset, body, order)


#: Reads every page of a listing into a sink (:meth:`~exporter.scan.Scanner.read`, counted).
Read = Callable[[Collection, RecordList], None]
#: The ``count`` of a filtered listing (:meth:`~exporter.scan.Scanner.count`).
Count = Callable[[Collection], int]


def filtered(listing: Collection, *filters: tuple[str, str]) -> Collection:
    return replace(listing, filters=(*listing.filters, *filters))


def update(
    store: BackupStore, listing: Collection, now: float, read: Read, tally: RecordTally
) -> None:
    """Steps 1 to 3: ``store`` becomes the backups listed now, unless a count says otherwise
    (:func:`cross_check`). :class:`Mismatch` if a record could not be read."""
    start = window_start(store, now)
    second = math.floor(now)
    since = filtered(listing, ("created_after", timestamp(start)))
    window = RecordList(since)
    read(since, window)
    expired = filtered(listing, ("expires_before", timestamp(second)))
    lingering = RecordList(expired)
    read(expired, lingering)
    if tally.records:
        raise Mismatch(f"{tally.records} backups listed since the last poll could not be read")
    store.merge(start, second, window.records, lingering.records)


def checks(figures: Figures) -> list[tuple[str, Filters, int]]:
    """What step 4 compares: what it is, the filters that count it, the store's figure."""
    return [
        ("backups", (), figures.total),
        *((f"backups in state {s}", (("state", s),), n) for s, n in figures.states.items()),
        *(
            (f"backups at {name}", ((field, name),), n)
            for (field, name), n in sorted(figures.places.items())
        ),
        ("backups with an expiration time", (("expires_after", EPOCH),), figures.expiring),
    ]


def cross_check(
    store: BackupStore,
    listing: Collection,
    now: float,
    count: Count,
    read: Read,
    objects: Counter[str],
) -> None:
    """Step 4: every count of the controller equals the store's, or :class:`Mismatch`. The
    states and destinations the store does not hold are not asked for: when the total and
    those it holds agree, the others hold none.

    A count that differs is first looked for (:func:`repair`): at most :data:`MAX_REPAIRS`
    times, each reading again the few backups of the span of creation times where it lies;
    then every figure of the store is compared again with the counts (each asked once per
    poll).
    """
    listed: dict[Filters, int] = {}

    def counted(filters: Filters) -> int:
        if filters not in listed:
            listed[filters] = count(filtered(listing, *filters))
            objects[listing.key] += min(listed[filters], 1)
        return listed[filters]

    for repairs in range(MAX_REPAIRS + 1):
        wrong = next(
            (
                (what, filters, counted(filters), held)
                for what, filters, held in checks(store.figures())
                if counted(filters) != held
            ),
            None,
        )
        if wrong is None:
            return
        what, filters, truth, held = wrong
        if repairs == MAX_REPAIRS:
            raise Mismatch(
                f"{what}: the controller lists {truth}, the poll holds {held} "
                f"(after {repairs} repairs)"
            )
        repair(store, listing, filters, now, count, read, objects, f"{what}: {truth} != {held}")


def repair(
    store: BackupStore,
    listing: Collection,
    filters: Filters,
    now: float,
    count: Count,
    read: Read,
    objects: Counter[str],
    what: str,
) -> None:
    """Find where the controller's count of ``filters`` and the store's part, by halving the
    span of creation times (a ``created_before`` count each time), down to a span of at most
    :data:`REPAIR_SPAN` backups held; then read the backups of that span again.
    :class:`Mismatch` where it cannot be found so: a difference among backups without a
    creation time, or older than every backup held.

    Each split is at a second at which the store holds no backup where there is one near the
    middle, so that inclusive or exclusive bounds cannot matter for the backups held; where
    a large federation fills every second around, at a second it holds backups of, taking
    the bound as inclusive (as HPE's PowerShell module does): if it is not, the span read
    again misses that second's backups, the counts say so, and the poll falls back.
    Spans are [low + 1, high + 1) in creation times: after ``low``, up to ``high``."""

    def differs(before: int, held_before: int) -> bool:
        asked = count(filtered(listing, *filters, ("created_before", timestamp(before))))
        objects[listing.key] += min(asked, 1)
        return asked != held_before

    timeline = store.timeline(filters)
    bounds = timeline.bounds()
    if bounds is None:
        raise Mismatch(f"{what}; no backup with a creation time held")
    # Free seconds: no backup held is older than the oldest, nor newer than the newest.
    low, high = math.floor(bounds[0]) - 1, math.floor(max(now, bounds[1])) + 1
    inside, _, sample = timeline.census(low + 1, high + 1, high + 1, SAMPLES)
    held_low = 0  # backups held that match, created up to low; inside: after it, up to high
    if differs(low, 0):
        raise Mismatch(f"{what}; the difference lies before every backup held")
    if not differs(high, inside):
        raise Mismatch(f"{what}; the difference lies among backups without a creation time")
    for _ in range(MAX_HALVINGS):
        if inside <= REPAIR_SPAN or high - low <= 2:
            break
        # The middle of the backups held in the span (of a sample of them, in order), not of
        # its time: most backups are recent.
        guess = math.floor(sample[len(sample) // 2]) if sample else (low + high) // 2
        guess = min(max(guess, low + 1), high - 1)
        middle = _free(timeline, guess, 1, high) or _free(timeline, guess, -1, low) or guess
        _, below, sample = timeline.census(low + 1, high + 1, middle + 1, SAMPLES)
        if differs(middle, held_low + below):
            high, inside = middle, below
            sample = [c for c in sample if c < middle + 1]
        else:
            low, inside, held_low = middle, inside - below, held_low + below
            sample = [c for c in sample if c >= middle + 1]
    else:
        raise Mismatch(f"{what}; not found within {MAX_HALVINGS} halvings")
    if inside > MAX_SPAN:
        raise Mismatch(f"{what}; the span where it lies holds {inside} backups")
    span = filtered(listing, ("created_after", timestamp(low)), ("created_before", timestamp(high)))
    again = RecordList(span)
    read(span, again)
    log.debug(
        "incremental poll: %s; read the backups created between %s and %s again (%d)",
        what,
        timestamp(low),
        timestamp(high),
        len(again.records),
    )
    store.replace_span(low, high + 1, again.records)


def _free(store: BackupStore | Timeline, second: int, step: int, limit: int) -> int | None:
    """The first second from ``second`` on (by ``step``), short of ``limit``, at which the
    store holds no backup; None if there is none. Looked for in ever wider windows: a large
    federation's backups may fill every second of many minutes."""
    width = 64
    while (second - limit) * step < 0:
        end = second + width * step
        if (end - limit) * step > 0:
            end = limit
        taken = store.taken(min(second, end), max(second, end) + 1)
        for candidate in range(second, end, step):
            if candidate not in taken:
                return candidate
        if end == limit:
            return None
        second, width = end, width * 16
        if width > 2**32:
            return None
    return None
