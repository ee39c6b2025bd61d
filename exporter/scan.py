"""Paging through any collection of the REST API: offsets, concurrency, overlap and churn.

A listing such as ``/api/backups`` changes while it is read: items are created and expire
between two requests, which shifts every offset after them. A :class:`Scanner` asks for the
pages of a :class:`Collection` sorted by ``id``, a total order in which a page can be stitched
to the one before it, each page overlapping the previous one by a few items. A
:class:`PageCounter` takes the pages of one scan in order, as raw bodies, checks them and hands
each item to its sink exactly once: those at or below the last id counted are skipped. When
the overlap is missing (the listing shifted before the page's offset), the scanner steps back
until it finds it. So an item that exists for the whole scan is never missed, and none is
counted twice.

The two halves meet only through :class:`PageSink`: the scanner moves bytes (in the exporter's
threads), the counter decodes them, which is the CPU-heavy half, and can run in another process
(:mod:`exporter.worker`). This module imports nothing heavy for that reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from exporter.model import Cancelled, DecodeError, PageRequest, RecordError, decode_json

#: The field every collection is sorted and stitched by.
SORT_FIELD = "id"


@dataclass(frozen=True)
class Collection:
    """One paged listing of the API, such as ``/api/backups``.

    ``key`` names the list in the answer's envelope (``{"count": ..., key: [...]}``); ``item``
    names one of its items in messages; ``fields`` is what a scan asks for (``fields=``), and
    ``filters`` too (``state=ALIVE``). ``max_page_size`` caps the scanner's page size for a
    listing that is expensive for the controller to page through.
    """

    path: str
    key: str
    item: str
    fields: tuple[str, ...]
    filters: tuple[tuple[str, str], ...] = ()
    max_page_size: int | None = None


@dataclass(frozen=True)
class PageOutcome:
    """What one page told the scan."""

    count: int  # the size of the whole listing, as this page gave it
    received: int  # items on the page
    counted: int  # of those, how many were new (not in the overlap with the page before)
    #: The page starts after the last item counted: the listing shifted under the scan, and
    #: nothing was counted; the scan must step back to find the overlap again.
    overlap_lost: bool = False


class PageSink(Protocol):
    """Where a scan's pages go, in order: a :class:`PageCounter`, or one in the worker."""

    def count(self, offset: int, body: bytes) -> PageOutcome: ...


class PageCounter:
    """Counts the pages of one scan of ``collection``, each item once, in the listing's order."""

    def __init__(self, collection: Collection, sink: Callable[[dict[str, Any]], None]) -> None:
        """``sink`` takes each new item; a :class:`~exporter.model.RecordError` it raises fails
        the page."""
        self._collection = collection
        self._sink = sink
        self._last_id: str | None = None

    def count(self, offset: int, body: bytes) -> PageOutcome:
        """Decode one page and feed its new items to the sink; :class:`DecodeError` if unreadable.

        ``offset`` is where the page was asked for: the first page (offset 0) needs no overlap.
        """
        total, items = _parse_page(self._collection, body)
        last_id = self._last_id
        if offset > 0 and last_id is not None and (not items or items[0]["id"] > last_id):
            return PageOutcome(total, len(items), 0, overlap_lost=True)
        counted = 0
        sink = self._sink
        for item in items:
            item_id = item["id"]  # checked by _parse_page
            if last_id is not None and item_id <= last_id:
                continue
            try:
                sink(item)
            except RecordError as err:
                raise DecodeError(str(err)) from None
            last_id = item_id
            counted += 1
        self._last_id = last_id
        return PageOutcome(total, len(items), counted)


def _parse_page(collection: Collection, body: bytes) -> tuple[int, list[dict[str, Any]]]:
    path, key, item = collection.path, collection.key, collection.item
    document = decode_json(path, body)
    count = document.get("count") if isinstance(document, dict) else None
    items = document.get(key) if isinstance(document, dict) else None
    if type(count) is not int or count < 0 or not isinstance(items, list):
        raise DecodeError(f"{path} answered without a numeric 'count' and a '{key}' list")
    previous = ""
    for entry in items:
        if not isinstance(entry, dict):
            raise DecodeError(f"{path} listed something that is not a {item} object")
        value = entry.get("id")
        if not isinstance(value, str) or not value:
            raise DecodeError(f"{path} listed a {item} without an id")
        if value <= previous:
            raise DecodeError(f"{path} did not return {key} sorted by id")
        previous = value
    return count, items


class PageSource(Protocol):
    """What a :class:`Scanner` needs of a client: :class:`~exporter.simplivity.SimplivityClient`."""

    @property
    def logins(self) -> int: ...

    def get_page(self, page: PageRequest) -> bytes: ...

    def get_body(self, path: str) -> bytes: ...

    def close(self) -> None: ...


class Scanner:
    """Reads whole collections of one controller through its client, which it owns.

    After the first page of a scan has told the total, up to ``max_concurrency`` pages are
    requested at once: the next ones are on their way while the sink counts one. One scan at a
    time; :meth:`close` (from any thread) closes the client and ends a scan in progress with
    :class:`~exporter.model.Cancelled`.
    """

    def __init__(
        self, source: PageSource, *, page_size: int, max_concurrency: int, name: str = "scan"
    ) -> None:
        self._source = source
        self._page_size = page_size
        self._max_concurrency = max_concurrency
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._closed = threading.Event()

    @property
    def logins(self) -> int:
        """How many times the client has logged in."""
        return self._source.logins

    def close(self) -> None:
        self._closed.set()
        self._source.close()  # a request still running stops before its next try
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def get(self, path: str) -> bytes:
        """The body of one GET of a path that is not paged; raises
        :class:`~exporter.model.SimplivityError`."""
        return self._source.get_body(path)

    def read(self, collection: Collection, pages: PageSink) -> None:
        """Hand every page of ``collection`` to ``pages``, in the listing's order.

        Raises :class:`~exporter.model.SimplivityError` (a page that contradicts the listing,
        or a listing that never settles, is a :class:`~exporter.model.DecodeError`).
        """
        limit = min(self._page_size, collection.max_page_size or self._page_size)
        overlap = max(1, limit // 50)
        step = limit - overlap
        fetch = partial(self._fetch, collection, limit)
        requests_made = 0
        budget: int | None = None
        count = 0
        pending: dict[int, Future[bytes]] = {}
        offset = 0
        try:
            while True:
                body = self._take_body(pending, offset, fetch)
                requests_made += 1
                if budget is not None:
                    # Ask for the next pages before counting this one, so that the controller
                    # is never left with fewer than max_concurrency requests while we count.
                    self._prefetch(pending, offset + step, step, count, fetch)
                page = pages.count(offset, body)
                del body
                count = page.count
                if budget is None:
                    # Churn may force a few steps back; a listing that never settles is an error.
                    budget = 3 * (page.count // step + 1) + 20
                elif requests_made > budget:
                    raise DecodeError(
                        f"the {collection.item} listing changed faster than it could be read "
                        f"({requests_made} requests for {page.count} {collection.key})"
                    )
                received = page.received
                if received < limit and offset + received < page.count:
                    raise DecodeError(
                        f"page at offset {offset} held {received} {collection.key} "
                        f"(limit {limit}) although count says {page.count}"
                    )
                if page.overlap_lost:
                    # The overlap with what was counted is gone: step back to find it.
                    self._cancel(pending)
                    offset = max(0, min(offset - step, page.count - overlap))
                    continue
                if received < limit or offset + received >= page.count:
                    return
                offset += step
                self._prefetch(pending, offset, step, count, fetch)
        finally:
            self._cancel(pending)

    def _fetch(self, collection: Collection, limit: int, offset: int) -> bytes:
        return self._source.get_page(
            PageRequest(
                collection.path,
                offset,
                limit,
                collection.fields,
                SORT_FIELD,
                filters=collection.filters,
            )
        )

    @staticmethod
    def _take_body(
        pending: dict[int, Future[bytes]], offset: int, fetch: Callable[[int], bytes]
    ) -> bytes:
        future = pending.pop(offset, None)
        try:
            return fetch(offset) if future is None else future.result()
        except CancelledError:  # close() dropped the queued requests: a reload or shutdown
            raise Cancelled() from None

    def _prefetch(
        self,
        pending: dict[int, Future[bytes]],
        offset: int,
        step: int,
        count: int,
        fetch: Callable[[int], bytes],
    ) -> None:
        width = self._max_concurrency
        if width <= 1:
            return
        if self._executor is None:
            if self._closed.is_set():
                raise Cancelled()  # closed: a new pool would never be shut down
            self._executor = ThreadPoolExecutor(
                max_workers=width, thread_name_prefix=f"poll-{self._name}"
            )
        wanted = [offset + k * step for k in range(width)]
        for stale in [o for o in pending if o not in wanted]:
            pending.pop(stale).cancel()
        for candidate in wanted:
            if candidate not in pending and candidate < count:
                try:
                    pending[candidate] = self._executor.submit(fetch, candidate)
                except RuntimeError:  # close() shut the pool down: a reload or shutdown
                    raise Cancelled() from None

    @staticmethod
    def _cancel(pending: dict[int, Future[bytes]]) -> None:
        for future in pending.values():
            future.cancel()
        pending.clear()
