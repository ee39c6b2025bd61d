"""A listing's pages, counted: what a collection is, and each of its records handed on once.

A :class:`Collection` names one paged listing of the API and the orders it may be read in. A
:class:`PageCounter` takes the pages of one scan in order (:mod:`exporter.scan` asks for them),
as raw bodies, checks them and hands each record to its sink exactly once: by ``id``, those at
or below the last id counted are skipped; in an order with ties (``created_at``), those before
the last value counted, and those of that value already counted. A page that starts after the
last record counted has lost its overlap with the page before (the listing shifted under the
scan), and says so, for the scanner to step back.

This is the CPU-heavy half of a scan, and may run in another process (:mod:`exporter.worker`):
it imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.model import DecodeError, OrderError, PageRequest, RecordError, decode_json

#: The field every collection is sorted and stitched by first.
SORT_FIELD = "id"
#: What every record of an unsorted listing is placed by: all tie, so its pages must hold it
#: whole.
UNSORTED = "*"
#: How many problems with unreadable records a page, or a poll, describes (the count is exact).
MAX_PROBLEMS = 5


@dataclass(frozen=True)
class Collection:
    """One paged listing of the API, such as ``/api/backups``.

    ``key`` names the list in the answer's envelope (``{"count": ..., key: [...]}``); ``item``
    names one of its items in messages; ``fields`` is what a scan asks for (``fields=``), and
    ``filters`` too (``state=ALIVE``). ``max_page_size`` caps the scanner's page size for a
    listing that is expensive for the controller to page through. ``max_records`` is the most
    records the listing may hold (its ``count``, and what a scan counts), named in messages by
    the setting that sets it (``max_records_setting``): a controller that says it holds more
    fails the scan at its first page instead of being paged through for hours.

    ``orders``: the fields it may be paged in (``-`` first: descending; ``""``: no sort, for a
    listing a page can hold), the first preferred: a controller that refuses one (400), or
    ignores it, is paged in the next, remembered by the scanner.
    ``id`` is unique; in any other order (``-created_at``) records may tie, and their order
    among themselves may change from one request to the next (:class:`PageCounter` copes).
    Newest first suits a listing that grows at its newest end and expires at its oldest: what
    comes and goes then lies ahead of the pages read, or behind, never shifting them back.
    """

    path: str
    key: str
    item: str
    fields: tuple[str, ...]
    filters: tuple[tuple[str, str], ...] = ()
    max_page_size: int | None = None
    max_records: int | None = None
    max_records_setting: str = ""
    orders: tuple[str, ...] = (SORT_FIELD,)

    def page(self, offset: int, limit: int, order: str, *, fields: bool = True) -> PageRequest:
        """The request for ``limit`` records from ``offset`` in ``order`` (one of
        :attr:`orders`), with the listing's filters, and its fields unless ``fields`` is false
        (for a controller that refused them)."""
        field, descending = sorting(order)
        return PageRequest(
            self.path,
            offset,
            limit,
            self.fields if fields else (),
            field or None,
            "descending" if descending else "ascending",
            filters=self.filters,
        )


@dataclass(frozen=True)
class PageOutcome:
    """What one page told the scan."""

    count: int  # the size of the whole listing, as this page gave it
    received: int  # records on the page
    counted: int  # of those, how many were new (not in the overlap) and handed to the sink
    #: The page starts after the last item counted: the listing shifted under the scan, and
    #: nothing was counted; the scan must step back to find the overlap again.
    overlap_lost: bool = False
    #: The limit the controller says it applied (the envelope's ``limit``), if it said one.
    limit: int | None = None
    #: Where on the page the next one must start at the latest (-1: nowhere): its last record
    #: with an id, or in an order with ties, the last record before the page's last tie
    #: (records without an id, or tying, cannot be stitched).
    last_placed: int = -1
    #: New records of the page that could not be placed (not an object, no id, or refused by
    #: the sink), and what was wrong with the first few of them.
    unreadable: int = 0
    problems: tuple[str, ...] = ()


class PageSink(Protocol):
    """Where a scan's pages go, in order: a :class:`PageCounter`, or one in the worker."""

    def count(self, offset: int, body: bytes, order: str = SORT_FIELD) -> PageOutcome: ...


class PageCounter:
    """Counts the pages of one scan of ``collection``, each record once, in the listing's order.

    A record the sink refuses (a :class:`~exporter.model.RecordError`: no state, say), or one
    that cannot be placed at all (not an object, no id, or in another order than ``id`` no
    value of that field), does not fail the page: it is counted in
    :attr:`PageOutcome.unreadable`, and the rest of the page stands. Records with an id are
    stitched by it. One without an id is placed by the records around it: it is new when it
    follows the last record counted, beyond the records without an id already counted there
    (``_tail``), and old anywhere before; so an overlap never counts it twice.

    In an order with ties (``created_at``) records are stitched by that field: each page
    must start before the last value counted, so that it holds every record of that value,
    which are told apart by id (``_at_last``).
    """

    def __init__(self, collection: Collection, sink: Callable[[dict[str, Any]], None]) -> None:
        """``sink`` takes each new record; a :class:`~exporter.model.RecordError` it raises
        makes that record unreadable."""
        self._collection = collection
        self._sink = sink
        self._last: str | None = None  # the sort value of the last record counted
        self._at_last: set[str] = set()  # the ids counted with that value (ties)
        self._tail = 0  # records without an id counted right after the last id (or the start)

    def count(self, offset: int, body: bytes, order: str = SORT_FIELD) -> PageOutcome:
        """Decode one page, in ``order``, and feed its new records to the sink;
        :class:`DecodeError` if the page itself cannot be read (bad JSON, a wrong envelope,
        records out of order).

        ``offset`` is where the page was asked for: the first page (offset 0) needs no overlap.
        """
        total, limit, items, values, ids = _parse_page(self._collection, body, order)
        unique = order == SORT_FIELD
        _, descending = sorting(order)
        last = self._last
        first = next((value for value in values if value is not None), None)
        if (
            offset > 0
            and last is not None
            and (
                first is None
                or (first < last if descending else first > last)
                or (not unique and first == last)
            )
        ):
            return PageOutcome(total, len(items), 0, overlap_lost=True, limit=limit)
        counted = unreadable = 0
        problems: list[str] = []
        tail, run, last_placed = self._tail, 0, -1
        at_last = self._at_last
        # Whether the record before this one is the last one counted (or the listing's start):
        # only then can a record without an id be new.
        after_last = last is None
        sink = self._sink
        for index, value in enumerate(values):
            if value is None:
                if not after_last:
                    continue  # before the last record counted: counted already
                run += 1
                if run <= tail:
                    continue  # counted on the page before, which ended with it
                tail = run
                unreadable += 1
                if len(problems) < MAX_PROBLEMS:
                    problems.append(
                        _unplaceable(self._collection, items[index], offset + index, order)
                    )
                continue
            last_placed, run = index, 0
            if last is not None and (
                (value > last if descending else value < last)
                or (value == last and (unique or ids[index] in at_last))
            ):
                after_last = value == last
                continue
            if not unique:  # ties: the ids counted at this value (in id order, the value)
                if value != last:
                    at_last = set()
                at_last.add(str(ids[index]))
            last, after_last, tail = value, True, 0
            try:
                sink(items[index])
            except RecordError as err:
                unreadable += 1
                if len(problems) < MAX_PROBLEMS:
                    problems.append(str(err))
            else:
                counted += 1
        if not unique and last_placed >= 0:
            # The next page starts before the last value, so that it holds all of its ties.
            end = values[last_placed]
            last_placed = next(
                (
                    i
                    for i in range(last_placed, -1, -1)
                    if (v := values[i]) is not None
                    and end is not None
                    and (v > end if descending else v < end)
                ),
                -1,
            )
        self._last, self._at_last, self._tail = last, at_last, tail
        return PageOutcome(
            total, len(items), counted, False, limit, last_placed, unreadable, tuple(problems)
        )


class RecordTally:
    """The records of one poll that could not be placed, over every collection it reads.

    ``scanner.read(collection, tally.around(pages))`` counts them as the pages go by.
    """

    def __init__(self) -> None:
        self.records = 0
        self.problems: list[str] = []

    def around(self, pages: PageSink) -> PageSink:
        """``pages``, tallied."""
        return _Tallied(self, pages)

    def add(self, outcome: PageOutcome) -> None:
        self._count(outcome.unreadable, outcome.problems)

    def merge(self, other: RecordTally) -> None:
        """Add what ``other`` tallied (another thread's reads of the same poll)."""
        self._count(other.records, other.problems)

    def _count(self, records: int, problems: Sequence[str]) -> None:
        self.records += records
        self.problems.extend(problems[: max(0, MAX_PROBLEMS - len(self.problems))])


class _Tallied:
    def __init__(self, tally: RecordTally, pages: PageSink) -> None:
        self._tally = tally
        self._pages = pages

    def count(self, offset: int, body: bytes, order: str = SORT_FIELD) -> PageOutcome:
        outcome = self._pages.count(offset, body, order)
        self._tally.add(outcome)
        return outcome


def _parse_page(
    collection: Collection, body: bytes, order: str
) -> tuple[int, int | None, list[Any], list[str | None], list[str | None]]:
    """The count, the limit applied (if said), the records, their place in ``order`` (the
    value of that field; None: the record has no place) and their ids (in id order, the same
    list)."""
    path, key = collection.path, collection.key
    document = decode_json(path, body)
    count = document.get("count") if isinstance(document, dict) else None
    items = document.get(key) if isinstance(document, dict) else None
    if type(count) is not int or count < 0 or not isinstance(items, list):
        raise DecodeError(f"{path} answered without a numeric 'count' and a '{key}' list")
    limit = document.get("limit")
    if type(limit) is not int or limit < 1:
        limit = None  # not said (or not usable): the limit asked for applies
    unique = order == SORT_FIELD
    field, descending = sorting(order)
    values: list[str | None] = []
    ids: list[str | None] = values if unique else []
    previous = ""
    for entry in items:
        item_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(item_id, str) or not item_id:
            values.append(None)
            if not unique:
                ids.append(None)
            continue
        value = item_id if unique else entry.get(field) if field else UNSORTED
        if not unique:
            ids.append(item_id)
            if not isinstance(value, str) or not value:
                values.append(None)
                continue
        if previous and (
            (value > previous if descending else value < previous) or (unique and value == previous)
        ):
            how = " descending" if descending else ""
            raise OrderError(f"{path} did not return {key} sorted by {field}{how}")
        previous = value
        values.append(value)
    return count, limit, items, values, ids


def _unplaceable(collection: Collection, entry: object, position: int, order: str) -> str:
    """What is wrong with a record that has no place, never quoting it."""
    item = collection.item
    if not isinstance(entry, dict):
        kind = _JSON_KINDS.get(type(entry), type(entry).__name__)
        return f"a {kind} where a {item} belongs, at position {position}"
    item_id = entry.get("id")
    if item_id is None:
        return f"a {item} without an id, at position {position}"
    if not isinstance(item_id, str) or not item_id:
        return f"a {item} whose id is not a text, at position {position}"
    return f"a {item} without a {sorting(order)[0]} to page it by, at position {position}"


def sorting(order: str) -> tuple[str, bool]:
    """An entry of :attr:`Collection.orders` as the field to sort by ("": none), and whether
    descending.

    >>> sorting("-created_at"), sorting("id"), sorting("")
    (('created_at', True), ('id', False), ('', False))
    """
    return order.removeprefix("-"), order.startswith("-")


_JSON_KINDS = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    list: "list",
    type(None): "null",
}
