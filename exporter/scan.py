"""Paging through any collection of the REST API: offsets, concurrency, overlap and churn.

A listing such as ``/api/backups`` changes while it is read: items are created and expire
between two requests, which shifts every offset after them. A :class:`Scanner` asks for the
pages of a :class:`~exporter.pages.Collection` sorted by ``id``, a total order in which a page
can be stitched to the one before it, each page overlapping the previous one by a few items. A
:class:`~exporter.pages.PageCounter` takes the pages of one scan in order, as raw bodies,
checks them and hands each item to its sink exactly once: those at or below the last id
counted are skipped. When
the overlap is missing (the listing shifted before the page's offset), the scanner steps back
until it finds it. So an item that exists for the whole scan is never missed, and none is
counted twice.

Real controllers are not tidy: one may serve fewer items than asked (and say so in the
envelope's ``limit``), answer 502 when too many requests are in flight or 504 when a page took
too long, and list a record that is not an object or has no id. The scanner pages by what was
served and learns how much to ask at once (:class:`Pace`); the counter sets odd records aside
(:attr:`~exporter.pages.PageOutcome.unreadable`) and counts the rest.

The two halves meet only through :class:`~exporter.pages.PageSink`: the scanner moves bytes
(in the exporter's threads), the counter (:mod:`exporter.pages`) decodes them, which is the
CPU-heavy half, and can run in another process (:mod:`exporter.worker`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

from exporter.model import (
    Cancelled,
    DecodeError,
    HTTPStatusError,
    OrderError,
    PageRequest,
    SimplivityError,
    decode_json,
)
from exporter.pages import SORT_FIELD, Collection, PageOutcome, PageSink, sorting

log = logging.getLogger(__name__)

#: The smallest page a 504 shrinks pages to (``poll.page_size`` if that is smaller).
MIN_PAGE_SIZE = 100
#: How much larger pages get after a read that got a whole page without a 504.
PAGE_SIZE_STEP = 100
#: The largest ``limit`` the API documents.
MAX_LIMIT = 5000


class PageSource(Protocol):
    """What a :class:`Scanner` needs of a client: :class:`~exporter.simplivity.SimplivityClient`."""

    @property
    def logins(self) -> int: ...

    @property
    def throttled(self) -> int:
        """How many answers so far said that too many requests were in flight (502, 503, 429)."""
        ...

    def get_page(self, page: PageRequest, *, retry_too_slow: bool = True) -> bytes:
        """``retry_too_slow=False``: a 504 raises at once instead of being retried."""
        ...

    def get_body(self, path: str) -> bytes: ...

    @property
    def login_backoff_seconds(self) -> float: ...

    def begin_poll(self, deadline_seconds: float) -> None:
        """A poll starts: it must end within ``deadline_seconds``."""
        ...

    def redact(self, text: str) -> str:
        """``text`` without the credentials or tokens the controller may have echoed."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Pace:
    """How a scanner asks its controller for pages now."""

    concurrency: int  # requests in flight at once, at most
    page_size: int  # records asked for per page


class _Read:
    """What one read has learned so far (changed by the fetches, in their threads too)."""

    def __init__(self, collection: Collection, throttled: int, page_size: int, order: str) -> None:
        self.collection = collection
        self.order = order  # the field the pages are sorted by
        self.counted = False  # a page was counted: the order can no longer change
        self.wide = 0  # a larger limit than the page size, once ties filled a page
        #: The limit the controller applied, once it applied a smaller one than asked.
        self.cap: int | None = None
        self.guessed_cap = False  # the cap was taken from a short page that did not say it
        self.throttled = throttled  # the client's count of "too many requests" answers seen
        self.was_throttled = False
        #: No new halving before this many requests: answers to requests sent before the last
        #: halving say nothing of the new pace.
        self.calm_until = 0
        self.page_size = page_size  # the page size at the start of the read
        self.full_page = False  # a page came back whole at the page size


class Scanner:
    """Reads whole collections of one controller through its client, which it owns.

    After the first page of a scan has told the total, several pages are requested at once:
    the next ones are on their way while the sink counts one. How many, and how large, the
    scanner learns from the controller and remembers across reads (see :attr:`pace`):

    - An answer that says too many requests are in flight (502, 503, 429; the client retries
      it) halves the requests in flight, at once, and at most once per round of requests; a
      read that needed more pages than requests in flight, without such an answer, adds one.
      Between 1 and ``max_concurrency``.
    - A 504 (the controller gave up on the page after 60 s) halves the page size and asks for
      the same page again at once, down to ``min_page_size`` (where 504s are retried like
      other failures); a read that got a whole page at the page size, without a 504, adds
      :data:`PAGE_SIZE_STEP`. At most ``page_size``.
    - A controller that serves fewer records than asked, and says so in the envelope's
      ``limit``, is paged by what it serves, for the rest of the read.

    One read at a time; a read beside it, in another thread, has a scanner of its own over the
    same client (:meth:`sibling`). :meth:`close` (from any thread) closes the client and ends a
    read in progress with :class:`~exporter.model.Cancelled`.
    """

    def __init__(
        self,
        source: PageSource,
        *,
        page_size: int,
        max_concurrency: int,
        name: str = "scan",
        min_page_size: int = MIN_PAGE_SIZE,
    ) -> None:
        self._source = source
        self._max_page_size = page_size
        self._min_page_size = min(min_page_size, page_size)
        self._max_concurrency = max_concurrency
        self._page_size = page_size
        self._concurrency = max_concurrency
        self._page_size_lock = threading.Lock()  # a 504 shrinks pages from a fetch's thread
        self._name = name
        #: Listings whose ``fields=`` the controller refused (400): asked without from then on.
        self._refused_fields: set[str] = set()
        #: Listings paged in another order than their first, its sort refused (400).
        self._orders: dict[str, str] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._closed = threading.Event()

    @property
    def logins(self) -> int:
        """How many times the client has logged in."""
        return self._source.logins

    @property
    def pace(self) -> Pace:
        """Requests in flight and page size, as the next read will start."""
        return Pace(self._concurrency, self._page_size)

    @property
    def login_backoff_seconds(self) -> float:
        """How long logins pause after refused credentials (0: they do not)."""
        return self._source.login_backoff_seconds

    def begin_poll(self, deadline_seconds: float) -> None:
        """A poll starts: its reads share one deadline and one retry budget (the client's)."""
        self._source.begin_poll(deadline_seconds)

    def sibling(self, *, page_size: int, max_concurrency: int) -> Scanner:
        """Another scanner over the same client, for reads beside this one's.

        The client's login, retry budget and poll deadline are shared; the pace, and the memory
        of refused fields and sorts, are the sibling's own. The client's count of "too many
        requests" answers is shared too: each scanner's pace reacts to the other's 502s.
        """
        return Scanner(
            self._source, page_size=page_size, max_concurrency=max_concurrency, name=self._name
        )

    def redact(self, text: str) -> str:
        return self._source.redact(text)

    def close(self) -> None:
        self._closed.set()
        self._source.close()  # a request still running stops before its next try
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def get(self, path: str) -> bytes:
        """The body of one GET of a path that is not paged; raises
        :class:`~exporter.model.SimplivityError`."""
        return self._source.get_body(path)

    def count(self, collection: Collection) -> int:
        """The ``count`` of a listing, as filtered: a page of one record (HPE's PowerShell
        module counts so); raises :class:`~exporter.model.SimplivityError`."""
        order = self._orders.get(collection.path, collection.orders[0])
        fields = collection.path not in self._refused_fields
        request = replace(collection, fields=(SORT_FIELD,)).page(0, 1, order, fields=fields)
        document = decode_json(collection.path, self._source.get_page(request))
        total = document.get("count") if isinstance(document, dict) else None
        if type(total) is not int or total < 0:
            raise DecodeError(f"{collection.path} answered without a numeric 'count'")
        return total

    def read(self, collection: Collection, pages: PageSink) -> None:
        """Hand every page of ``collection`` to ``pages``, in the listing's order.

        Raises :class:`~exporter.model.SimplivityError` (a page that contradicts the listing,
        or a listing that never settles, is a :class:`~exporter.model.DecodeError`).
        """
        order = self._orders.get(collection.path, collection.orders[0])
        read = _Read(collection, self._source.throttled, self._page_size, order)
        fetch = partial(self._fetch, read)
        requests_made = 0
        budget: int | None = None
        budget_step = 0
        count = counted = 0
        pending: dict[int, Future[tuple[int, bytes]]] = {}
        offset = 0
        try:
            while True:
                asked, body = self._take_body(pending, offset, fetch)
                requests_made += 1
                self._watch_load(read, requests_made)
                if budget is not None:
                    # Ask for the next pages before counting this one, so that the controller
                    # is never left with fewer requests than it may take while we count.
                    step = _step(self._limit(read))
                    self._prefetch(pending, offset + step, step, count, fetch)
                try:
                    page = pages.count(offset, body, read.order)
                except OrderError as err:
                    # The first page, sorted otherwise: the controller ignored the sort.
                    if read.counted or not self._refused(read, False, err, "ignored"):
                        raise
                    self._cancel(pending)
                    continue
                read.counted = True
                del body
                counted += page.counted
                self._check_size(collection, page, counted)
                count = page.count
                size = self._served(read, offset, asked, page)
                step = _step(size)
                if budget is None or step < budget_step:
                    # Churn may force a few steps back; a listing that never settles is an
                    # error. Smaller pages (a cap, a 504) take more requests.
                    budget = requests_made + 3 * ((count - offset) // step + 1) + 20
                    budget_step = step
                elif requests_made > budget:
                    raise DecodeError(
                        f"the {collection.item} listing changed faster than it could be read "
                        f"({requests_made} requests for {page.count} {collection.key})"
                    )
                if page.overlap_lost:
                    # The overlap with what was counted is gone: step back to find it.
                    self._cancel(pending)
                    offset = max(0, min(offset - step, page.count - _overlap(size)))
                    continue
                if page.received < size or offset + page.received >= page.count:
                    self._grow(read, requests_made)
                    return
                # The next page overlaps this one's last record with an id, the only kind
                # that can be stitched.
                advance = min(step, page.last_placed)
                if advance < 1 and read.order != SORT_FIELD:
                    # Ties fill the page: the same page again, larger, if it can be.
                    if self._widen(read, size):
                        self._cancel(pending)
                        continue
                    raise DecodeError(
                        f"{collection.path} listed more {collection.key} sharing one "
                        f"{sorting(read.order)[0]} (or without one) than a page of {size} holds, "
                        f"at offset "
                        f"{offset}: the listing cannot be stitched in that order"
                    )
                if advance < 1:
                    run = page.received - 1 - page.last_placed
                    raise DecodeError(
                        f"{collection.path} listed {run} {collection.key} in a row without an "
                        f"id (page at offset {offset}): the listing cannot be stitched"
                    )
                offset += advance
                self._prefetch(pending, offset, step, count, fetch)
        finally:
            self._cancel(pending)
            self._watch_load(read, requests_made)

    @staticmethod
    def _check_size(collection: Collection, page: PageOutcome, counted: int) -> None:
        """:class:`DecodeError` once the listing says, or has shown, that it holds more than
        :attr:`Collection.max_records`."""
        most = collection.max_records
        if most is None or (page.count <= most and counted <= most):
            return
        what = f"says it holds {page.count}" if page.count > most else f"listed {counted}"
        raise DecodeError(
            f"{collection.path} {what} {collection.key}, more than the {most} the exporter "
            f"reads from one controller ({collection.max_records_setting}): a broken "
            "controller, or a setting to raise"
        )

    def _served(self, read: _Read, offset: int, asked: int, page: PageOutcome) -> int:
        """How many records the page was served by: what was asked, unless the controller
        applied a smaller limit; :class:`DecodeError` if the page contradicts itself."""
        if page.received > asked:
            raise DecodeError(
                f"{read.collection.path} answered {page.received} {read.collection.key} to a "
                f"page of at most {asked} (offset {offset})"
            )
        more = offset + page.received < page.count
        size = asked
        if page.limit is not None:
            size = min(asked, page.limit)
        elif page.received < asked and more and page.received > 0 and not read.guessed_cap:
            # A controller that caps pages without saying so: believed once per read.
            read.guessed_cap = True
            size = page.received
        if size < asked:
            if read.cap is None or size < read.cap:
                log.debug(
                    "controller %s: %s serves at most %d %s per page; paging by that",
                    self._name,
                    read.collection.path,
                    size,
                    read.collection.key,
                )
            read.cap = size if read.cap is None else min(read.cap, size)
        if page.received < size and more:
            raise DecodeError(
                f"page at offset {offset} held {page.received} {read.collection.key} "
                f"(limit {size}) although count says {page.count}"
            )
        if asked == read.page_size and page.received >= asked:
            read.full_page = True
        return size

    def _limit(self, read: _Read) -> int:
        """The limit to ask for: the page size (or the larger one ties made the read ask for),
        or the controller's or the collection's cap if smaller."""
        limit = min(self._page_size, read.collection.max_page_size or self._page_size)
        limit = max(limit, read.wide)
        return limit if read.cap is None else min(limit, read.cap)

    @staticmethod
    def _widen(read: _Read, size: int) -> bool:
        """Twice as large pages for the rest of the read, if the controller and the collection
        allow them: whether they do."""
        wider = min(2 * size, MAX_LIMIT, read.collection.max_page_size or MAX_LIMIT)
        if wider <= size or (read.cap is not None and read.cap <= size):
            return False
        read.wide = wider
        return True

    def _fetch(self, read: _Read, offset: int) -> tuple[int, bytes]:
        """One page, and the limit it was asked with; smaller each time it answers 504, and
        without ``fields=`` once it answered 400 to them."""
        collection = read.collection
        while True:
            limit = self._limit(read)
            fields = collection.path not in self._refused_fields
            request = collection.page(offset, limit, read.order, fields=fields)
            floor = limit <= self._min_page_size
            try:
                return limit, self._source.get_page(request, retry_too_slow=floor)
            except HTTPStatusError as err:
                if err.status == 400 and self._refused(read, bool(request.fields), err):
                    continue
                if err.status != 504 or floor:
                    raise
                self._shrink_pages(collection, limit)

    def _refused(
        self, read: _Read, fields: bool, err: SimplivityError, how: str = "refused"
    ) -> bool:
        """Whether to ask again after a 400, or a first page in another order than asked:
        without ``fields=``, or (before anything was counted) in the collection's next order.
        The sort first if the answer names it (HPE documents a 400 for an unknown sort field),
        else the fields, the likelier culprit.

        What a controller does with a field it does not know is undocumented; a 400 is the
        likely answer. Whole records are larger pages, the same counts.
        """
        collection = read.collection
        orders = collection.orders
        position = orders.index(read.order) if read.order in orders else len(orders)
        other = orders[position + 1] if position + 1 < len(orders) else None
        if read.counted:
            other = None
        with self._page_size_lock:
            if other is not None and ("sort" in str(err).lower() or not fields):
                refused, read.order = sorting(read.order)[0], other
                self._orders[collection.path] = other
                field, descending = sorting(other)
                what = f"sort={refused}"
                now = f"sorting by {field}{' (newest first)' if descending else ''}"
                if not field:
                    now = "asking without a sort, for the whole listing in one page"
            elif fields:
                if collection.path in self._refused_fields:
                    return True  # another page's 400 said it already
                self._refused_fields.add(collection.path)
                what, now = "the fields asked for", "asking for whole records"
            else:
                return False
        log.warning(
            "controller %s: %s %s %s (%s); %s from now on",
            self._name,
            collection.path,
            how,
            what,
            err,
            now,
            extra={"controller": self._name, "path": collection.path},
        )
        return True

    def _shrink_pages(self, collection: Collection, limit: int) -> None:
        with self._page_size_lock:
            smaller = max(self._min_page_size, limit // 2)
            if smaller >= self._page_size:
                return  # another page's 504 shrank them already
            self._page_size = smaller
        log.info(
            "controller %s: a page of %d %s took the controller too long (HTTP 504); "
            "asking for %d per page from now on",
            self._name,
            limit,
            collection.key,
            smaller,
        )

    def _watch_load(self, read: _Read, requests_made: int) -> None:
        """Halve the requests in flight when the controller said there were too many."""
        throttled = self._source.throttled
        if throttled == read.throttled:
            return
        read.throttled = throttled
        read.was_throttled = True
        if requests_made < read.calm_until:
            return  # answers to requests sent before the last halving
        before = self._concurrency
        self._concurrency = max(1, before // 2)
        read.calm_until = requests_made + before
        if self._concurrency < before:
            log.info(
                "controller %s: too many simultaneous requests (HTTP 502/503/429); "
                "%d at once from now on",
                self._name,
                self._concurrency,
            )

    def _grow(self, read: _Read, requests_made: int) -> None:
        """After a read that went well: one more request in flight, larger pages, if tested."""
        self._watch_load(read, requests_made)
        if not read.was_throttled and requests_made > self._concurrency:
            self._concurrency = min(self._max_concurrency, self._concurrency + 1)
        with self._page_size_lock:
            if read.full_page and self._page_size == read.page_size:
                self._page_size = min(self._max_page_size, self._page_size + PAGE_SIZE_STEP)

    @staticmethod
    def _take_body(
        pending: dict[int, Future[tuple[int, bytes]]],
        offset: int,
        fetch: Callable[[int], tuple[int, bytes]],
    ) -> tuple[int, bytes]:
        future = pending.pop(offset, None)
        try:
            return fetch(offset) if future is None else future.result()
        except CancelledError:  # close() dropped the queued requests: a reload or shutdown
            raise Cancelled() from None

    def _prefetch(
        self,
        pending: dict[int, Future[tuple[int, bytes]]],
        offset: int,
        step: int,
        count: int,
        fetch: Callable[[int], tuple[int, bytes]],
    ) -> None:
        width = self._concurrency
        wanted = [offset + k * step for k in range(width)] if width > 1 else []
        for stale in [o for o in pending if o not in wanted]:
            pending.pop(stale).cancel()
        if not wanted:
            return
        if self._executor is None:
            if self._closed.is_set():
                raise Cancelled()  # closed: a new pool would never be shut down
            self._executor = ThreadPoolExecutor(
                max_workers=self._max_concurrency, thread_name_prefix=f"poll-{self._name}"
            )
        for candidate in wanted:
            if candidate not in pending and candidate < count:
                try:
                    pending[candidate] = self._executor.submit(fetch, candidate)
                except RuntimeError:  # close() shut the pool down: a reload or shutdown
                    raise Cancelled() from None

    @staticmethod
    def _cancel(pending: dict[int, Future[tuple[int, bytes]]]) -> None:
        for future in pending.values():
            future.cancel()
        pending.clear()


def _overlap(size: int) -> int:
    """How many records each page repeats of the one before, for a page of ``size``."""
    return max(1, size // 50)


def _step(size: int) -> int:
    return max(1, size - _overlap(size))
