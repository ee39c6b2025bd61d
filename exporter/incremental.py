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
   its own: the first that differs is a :class:`Mismatch`, and the poller runs a full scan.

Nothing rests on an undocumented behaviour: whether time bounds are inclusive does not matter
for the backups held (W is a second at which the store holds none), and a backup that appears
late with an older creation time, an expiration changed after creation, a deletion, a state
change outside the window or a lock to "NA" all change one of the counts. What the counts
cannot see is two changes that cancel out within every count between two polls (one old
backup deleted and another added with an old creation time, same state and destination):
it lives until the next full scan (``poll.full_scan_interval_seconds``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from exporter.backups import NO_TIME
from exporter.pages import SORT_FIELD, Collection, PageCounter, PageOutcome, RecordTally
from exporter.store import BackupStore, Figures, Record, read_record

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
    held = store.seconds_held(second - 3600, second + 1)
    lowest = second - 3600
    while second in held and second > lowest:
        second -= 1
    if second in held:
        raise Mismatch("no second without a backup in the hour before the window")
    return second


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


def cross_check(listing: Collection, figures: Figures, count: Count, objects: Counter[str]) -> None:
    """Step 4: :class:`Mismatch` at the first count of the controller that differs from the
    store's (``figures``). The states and destinations the store does not hold are not asked
    for: when the total and those it holds agree, the others hold none."""
    checks: list[tuple[str, tuple[tuple[str, str], ...], int]] = [
        ("backups", (), figures.total),
        *((f"backups in state {s}", (("state", s),), n) for s, n in figures.states.items()),
        *(
            (f"backups at {name}", ((field, name),), n)
            for (field, name), n in sorted(figures.places.items())
        ),
        ("backups with an expiration time", (("expires_after", EPOCH),), figures.expiring),
    ]
    for what, filters, expected in checks:
        listed = count(filtered(listing, *filters))
        objects[listing.key] += min(listed, 1)
        if listed != expected:
            raise Mismatch(f"{what}: the controller lists {listed}, the poll holds {expected}")
