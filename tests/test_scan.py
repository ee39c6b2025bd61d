"""The paging algorithm on its own: any collection, read whole under churn, each item once.

The client and the simulator are covered in test_client.py over real sockets; here a listing
in memory answers the scanner's requests, so that churn can be exact and examples many.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import DecodeError, HTTPStatusError, PageRequest, RecordError
from exporter.pages import SORT_FIELD, Collection, PageCounter, PageOutcome, RecordTally
from exporter.scan import Pace, Scanner
from tests.snapshots import NoPollLimits

VMS = Collection(
    "/api/virtual_machines",
    key="virtual_machines",
    item="virtual machine",
    fields=("id", "name"),
    orders=("id", "-created_at"),
)
#: The orders a listing may end up paged in: by id, or (sort=id refused) newest first.
ORDERS = ["id", "-created_at"]


class Listing(NoPollLimits):
    """A collection held in memory, sorted as asked, that changes a little at every request.

    Sorted by id, or by ``created_at``: records tie there (a few to a second), and their order
    among themselves changes at every request, as nothing promises it stays. A sort field in
    ``refused`` answers 400, as HPE documents for a sort field a controller does not know.

    It can misbehave as real controllers do: serve at most ``cap`` records a page (saying so
    in the envelope's ``limit`` if ``says_limit``), answer 504 for pages above ``too_slow_above``,
    say "too many requests" (counted in :attr:`throttled`, as the client counts the 502s it
    retries) whenever ``overloaded()`` is true, and serve the records in ``odd`` oddly.
    """

    def __init__(
        self, size: int, *, churn: int = 0, seed: int = 0, refused: frozenset[str] = frozenset()
    ) -> None:
        self.rng = random.Random(seed)
        self.seconds = max(1, size // 3)  # a few records to each created_at second
        self.items = {
            f"vm-{n:06d}": {"id": f"vm-{n:06d}", "name": f"vm {n}", "created_at": self._second()}
            for n in range(size)
        }
        #: Every record's created_at, those expired too (it never changes).
        self.created = {key: item["created_at"] for key, item in self.items.items()}
        self.refused = refused
        self.refuses_fields = False
        self.churn = churn
        self.next = size
        self.requests: list[PageRequest] = []
        self.logins = 0
        self.throttled = 0
        self.short_pages = False
        self.cap = 0
        self.says_limit = True
        self.too_slow_above = 0
        self.slow_after = 0  # requests answered before the 504s begin
        self.overloaded: Callable[[], bool] = lambda: False
        self.odd: dict[str, Any] = {}  # id -> what is served in the record's place
        self.final_504s: list[bool] = []  # retry_too_slow of each request that got a 504
        self._lock = threading.Lock()

    def get_page(self, page: PageRequest, *, retry_too_slow: bool = True) -> bytes:
        with self._lock:
            self.requests.append(page)
            if self.overloaded():
                self.throttled += 1  # the client retried it; the page below is the retry's
            limit = min(page.limit, self.cap) if self.cap else page.limit
            if page.fields and self.refuses_fields:
                raise HTTPStatusError(f"{page.path} answered HTTP 400: Bad field", 400)
            if page.sort in self.refused:
                raise HTTPStatusError(
                    f"{page.path} answered HTTP 400: Invalid sort field '{page.sort}'", 400
                )
            if 0 < self.too_slow_above < limit and len(self.requests) > self.slow_after:
                self.final_504s.append(retry_too_slow)
                raise HTTPStatusError(f"{page.path} answered HTTP 504", 504)
            for _ in range(self.churn):
                self._change()
            if page.sort is None:  # no order asked: none kept from one request to the next
                order = sorted(self.items, key=lambda k: self.rng.random())
            elif page.sort == "created_at":
                shuffled = {key: self.rng.random() for key in self.items}
                order = sorted(self.items, key=lambda k: (self.created[k], shuffled[k]))
                if page.order == "descending":
                    order.reverse()
            else:
                order = sorted(self.items)
            ordered = [self.items[key] for key in order]
            served = limit // 2 if self.short_pages else limit
            items = [self.odd.get(item["id"], item) for item in ordered[page.offset :][:served]]
            document: dict[str, Any] = {"offset": page.offset, "count": len(ordered)}
            if self.says_limit:
                document["limit"] = limit
            document[VMS.key] = items
            return json.dumps(document).encode()

    def get_body(self, path: str) -> bytes:
        raise AssertionError(f"a scan made a single GET of {path}")

    def _change(self) -> None:
        if self.rng.random() < 0.5 and self.items:
            del self.items[self.rng.choice(sorted(self.items))]
        else:
            # New ids land anywhere in the order, as UUIDs do.
            key = f"vm-{self.rng.randrange(10**6):06d}-{self.next}"
            self.next += 1
            self.items[key] = {"id": key, "name": "new", "created_at": self._second()}
            self.created[key] = self.items[key]["created_at"]

    def _second(self) -> str:
        """A created_at anywhere in the listing's span: new records land anywhere too."""
        second = self.rng.randrange(self.seconds)
        return f"2024-01-01T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"

    def in_order(self, ids: list[str], order: str) -> bool:
        """Whether ``ids`` come in ``order`` (ties in any order; ``-``: descending)."""
        keys = ids if order == "id" else [self.created[key] for key in ids]
        return keys == sorted(keys, reverse=order.startswith("-"))

    def close(self) -> None:
        pass


def read_ids(
    listing: Listing,
    *,
    page_size: int,
    max_concurrency: int,
    scanner: Scanner | None = None,
    tally: RecordTally | None = None,
) -> list[str]:
    """The ids read, through ``scanner`` (kept open) or a new one (closed after)."""
    ids: list[str] = []
    own = scanner is None
    scanner = scanner or Scanner(listing, page_size=page_size, max_concurrency=max_concurrency)
    counter = PageCounter(VMS, lambda item: ids.append(item["id"]))
    try:
        scanner.read(VMS, tally.around(counter) if tally else counter)
    finally:
        if own:
            scanner.close()
    return ids


def read_again(scanner: Scanner, listing: Listing) -> list[str]:
    return read_ids(listing, page_size=0, max_concurrency=0, scanner=scanner)


def test_any_collection_is_read_with_its_own_path_fields_and_id_order() -> None:
    listing = Listing(1234)
    ids = read_ids(listing, page_size=100, max_concurrency=3)
    assert ids == sorted(listing.items)
    asked = {replace(page, offset=0) for page in listing.requests}
    assert asked == {PageRequest("/api/virtual_machines", 0, 100, ("id", "name"), "id")}


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 400),
    churn=st.integers(0, 6),
    page_size=st.integers(5, 60),
    max_concurrency=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_under_churn_no_item_is_counted_twice_and_no_survivor_is_missed(
    order: str, size: int, churn: int, page_size: int, max_concurrency: int, seed: int
) -> None:
    listing = Listing(size, churn=churn, seed=seed, refused=refusing(order))
    assert_read_exactly(listing, set(listing.items), page_size, max_concurrency, [], order)


#: How a read may fail under churn: the listing changes faster than it can be read.
TOO_FAST = "virtual machine listing changed faster than it could be read"
#: How a read by created_at may fail: ties (and records without an id) fill a whole page.
TIES = "cannot be stitched in that order"


def refusing(order: str) -> frozenset[str]:
    """The sort fields a listing refuses for a scan to end up paged in ``order``."""
    return frozenset(refused.removeprefix("-") for refused in ORDERS[: ORDERS.index(order)])


def assert_read_exactly(
    listing: Listing,
    before: set[str],
    page_size: int,
    max_concurrency: int,
    allowed: list[str],
    order: str = "id",
) -> None:
    """Read ``listing``: every item that was there ``before`` and still is was read, none
    twice, in ``order``; or, only under churn (or ties), the read failed with one of the
    ``allowed`` words (or :data:`TOO_FAST`)."""
    try:
        ids = read_ids(listing, page_size=page_size, max_concurrency=max_concurrency)
    except DecodeError as err:
        failure = str(err)
    else:
        assert [key for key, n in Counter(ids).items() if n > 1] == []
        assert (before & set(listing.items)) - set(ids) == set()
        assert listing.in_order(ids, order)
        return
    if order != "id" and TIES in failure:
        return  # a page of ties: said in these words, never a wrong count
    assert listing.churn > 0, failure
    assert any(words in failure for words in [TOO_FAST, *allowed]), failure


@pytest.mark.parametrize("refused", ["sort", "fields", "both"])
def test_a_refused_sort_or_fields_is_asked_otherwise_remembered_and_said_once(
    refused: str, caplog: pytest.LogCaptureFixture
) -> None:
    listing = Listing(300, refused=frozenset({"id"}) if refused != "fields" else frozenset())
    listing.refuses_fields = refused != "sort"
    scanner = Scanner(listing, page_size=100, max_concurrency=2)
    try:
        with caplog.at_level(logging.WARNING, logger="exporter.scan"):
            first, second = read_again(scanner, listing), read_again(scanner, listing)
    finally:
        scanner.close()
    order = "-created_at" if refused != "fields" else "id"
    for ids in (first, second):
        assert sorted(ids) == sorted(listing.items)
        assert listing.in_order(ids, order)
    refusals = [
        page
        for page in listing.requests
        if page.sort in listing.refused or (page.fields and listing.refuses_fields)
    ]
    assert len(refusals) == (2 if refused == "both" else 1)  # then remembered
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == len(refusals)
    assert all("/api/virtual_machines refused" in message for message in said)
    if refused != "fields":
        assert any("sort=id" in m and "created_at (newest first)" in m for m in said)


def test_a_listing_read_unsorted_is_read_whole_in_one_page_or_fails_in_words() -> None:
    few = replace(VMS, orders=("id", ""))
    listing = Listing(250, refused=frozenset({"id"}))
    ids: list[str] = []
    scanner = Scanner(listing, page_size=100, max_concurrency=1)
    try:
        scanner.read(few, PageCounter(few, lambda item: ids.append(item["id"])))
        assert sorted(ids) == sorted(listing.items)
        unsorted = [page for page in listing.requests if page.sort is None]
        assert [(page.offset, page.limit) for page in unsorted] == [(0, 100), (0, 200), (0, 400)]
        listing.cap = 100  # the controller will not serve a page that holds it whole
        with pytest.raises(DecodeError, match="than a page of 100 holds"):
            scanner.read(few, PageCounter(few, lambda item: None))
    finally:
        scanner.close()


def test_a_short_page_is_an_error_in_the_collections_own_words() -> None:
    # The envelope says the limit asked for applied, yet the page holds half of it.
    listing = Listing(300)
    listing.short_pages = True
    with pytest.raises(DecodeError) as caught:
        read_ids(listing, page_size=100, max_concurrency=1)
    assert str(caught.value) == (
        "page at offset 0 held 50 virtual_machines (limit 100) although count says 300"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"count": 1, "backups": []},
            "/api/virtual_machines answered without a numeric 'count' and a "
            "'virtual_machines' list",
        ),
        (
            {"count": 2, "virtual_machines": [{"id": "b"}, {"id": "a"}]},
            "/api/virtual_machines did not return virtual_machines sorted by id",
        ),
        (
            {"count": 2, "virtual_machines": [{"id": "b"}, "x", {"id": "a"}]},
            "/api/virtual_machines did not return virtual_machines sorted by id",
        ),
    ],
)
def test_a_page_that_cannot_be_read_says_which_collection(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(DecodeError) as caught:
        PageCounter(VMS, lambda item: None).count(0, json.dumps(body).encode())
    assert str(caught.value) == message


# --- a controller that serves fewer records than asked --------------------------------------


def test_a_capped_limit_said_in_the_envelope_is_paged_by_what_was_served() -> None:
    listing = Listing(2345)
    listing.cap = 100
    ids = read_ids(listing, page_size=1000, max_concurrency=3)
    assert ids == sorted(listing.items)
    # The first page asked for 1000; once the envelope said 100, every page asked for 100.
    assert listing.requests[0].limit == 1000
    assert {page.limit for page in listing.requests[1:]} == {100}
    # Pages of 100 overlap by 2 (a fiftieth): about 2345 / 98 of them, not one in ten.
    assert 24 <= len(listing.requests) <= 26


def test_a_cap_that_is_not_said_is_believed_once_and_a_second_short_page_fails() -> None:
    listing = Listing(1000)
    listing.cap = 100
    listing.says_limit = False
    assert read_ids(listing, page_size=300, max_concurrency=2) == sorted(listing.items)
    listing.short_pages = True  # 50, then 25 of the 50 asked: no cap explains both
    with pytest.raises(DecodeError) as caught:
        read_ids(listing, page_size=300, max_concurrency=1)
    assert str(caught.value) == (
        "page at offset 49 held 25 virtual_machines (limit 50) although count says 1000"
    )


@pytest.mark.parametrize("order", ORDERS)
@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 400),
    churn=st.integers(0, 6),
    page_size=st.integers(10, 60),
    cap=st.integers(5, 60),
    says_limit=st.booleans(),
    odd_every=st.sampled_from([0, 3, 7, 20]),
    max_concurrency=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_under_churn_a_capped_listing_with_odd_records_is_read_exactly(
    order: str,
    size: int,
    churn: int,
    page_size: int,
    cap: int,
    says_limit: bool,
    odd_every: int,
    max_concurrency: int,
    seed: int,
) -> None:
    listing = Listing(size, churn=churn, seed=seed, refused=refusing(order))
    listing.cap = cap
    listing.says_limit = says_limit
    if odd_every:
        for key in sorted(listing.items)[::odd_every]:
            listing.odd[key] = {"name": "no id"}
    before = set(listing.items) - set(listing.odd)
    # Expiries can bring records without an id together into a run as long as a page.
    allowed = ["in a row without an id"] if odd_every else []
    assert_read_exactly(listing, before, page_size, max_concurrency, allowed, order)


# --- records that cannot be placed ----------------------------------------------------------

ODD_VALUES: list[Any] = ["a text", 0, None, [], {"name": "no id"}, {"id": 7, "name": "number"}]


def test_unplaceable_records_are_counted_once_described_and_the_rest_stands() -> None:
    listing = Listing(50)
    keys = sorted(listing.items)
    for n, value in zip((0, 7, 8, 24, 25, 49), ODD_VALUES, strict=True):
        listing.odd[keys[n]] = value
    tally = RecordTally()
    # Pages of 10 overlap by one record: odd records sit on both sides of page boundaries.
    ids = read_ids(listing, page_size=10, max_concurrency=2, tally=tally)
    assert ids == [key for key in keys if key not in listing.odd]
    assert tally.records == 6
    assert tally.problems == [
        "a string where a virtual machine belongs, at position 0",
        "a number where a virtual machine belongs, at position 7",
        "a null where a virtual machine belongs, at position 8",
        "a list where a virtual machine belongs, at position 24",
        "a virtual machine without an id, at position 25",
    ]


def test_a_record_the_sink_refuses_is_unreadable_and_stitched_by_its_id() -> None:
    listing = Listing(30)
    for key in sorted(listing.items)[9:11]:
        listing.items[key]["name"] = "bad"
    accepted: list[str] = []

    def sink(item: dict[str, Any]) -> None:
        if item["name"] == "bad":
            raise RecordError(f"virtual machine {item['id']!r}: name is bad")
        accepted.append(item["id"])

    tally = RecordTally()
    Scanner(listing, page_size=10, max_concurrency=1).read(
        VMS, tally.around(PageCounter(VMS, sink))
    )
    assert len(accepted) == 28
    assert tally.records == 2
    assert tally.problems == [
        "virtual machine 'vm-000009': name is bad",
        "virtual machine 'vm-000010': name is bad",
    ]


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 300),
    odd_every=st.integers(2, 40),
    first=st.integers(0, 40),
    page_size=st.integers(10, 40),
    max_concurrency=st.integers(1, 3),
)
def test_records_without_an_id_are_counted_once_wherever_the_pages_fall(
    size: int, odd_every: int, first: int, page_size: int, max_concurrency: int
) -> None:
    listing = Listing(size)
    keys = sorted(listing.items)
    for key in keys[first::odd_every]:
        listing.odd[key] = {"name": "no id"}
    tally = RecordTally()
    ids = read_ids(listing, page_size=page_size, max_concurrency=max_concurrency, tally=tally)
    assert ids == [key for key in keys if key not in listing.odd]
    assert tally.records == len(listing.odd)


def test_a_page_of_records_without_an_id_cannot_be_stitched() -> None:
    listing = Listing(100)
    for key in sorted(listing.items)[5:40]:
        listing.odd[key] = {"name": "no id"}
    with pytest.raises(DecodeError) as caught:
        read_ids(listing, page_size=20, max_concurrency=1)
    assert str(caught.value) == (
        "/api/virtual_machines listed 19 virtual_machines in a row without an id "
        "(page at offset 4): the listing cannot be stitched"
    )


# --- too many requests, pages too large -----------------------------------------------------


def test_too_many_requests_halve_the_concurrency_and_quiet_reads_add_one() -> None:
    listing = Listing(2000)
    scanner = Scanner(listing, page_size=100, max_concurrency=8)
    listing.overloaded = lambda: scanner.pace.concurrency > 2
    paces, complaints = [], []
    for _ in range(6):
        before = listing.throttled
        assert read_again(scanner, listing) == sorted(listing.items)  # exact at any pace
        paces.append(scanner.pace.concurrency)
        complaints.append(listing.throttled - before)
    scanner.close()
    # 8 -> 4 at the first complaint, 4 -> 2 once the requests sent at 8 are answered; then
    # one more after each quiet read, halved again when the controller complains.
    assert paces == [2, 3, 1, 2, 3, 1]
    assert complaints[0] > complaints[2] > 0
    assert complaints[1] == complaints[3] == complaints[4] == 0


def test_concurrency_grows_only_after_a_read_that_needed_it() -> None:
    listing = Listing(150)
    scanner = Scanner(listing, page_size=100, max_concurrency=4)
    listing.overloaded = lambda: True
    read_again(scanner, listing)
    assert scanner.pace.concurrency == 2
    listing.overloaded = lambda: False
    for _ in range(3):  # two pages: never more than two requests at once were needed
        read_again(scanner, listing)
    assert scanner.pace.concurrency == 2


def test_a_504_halves_the_page_and_asks_again_and_quiet_reads_grow_it_back() -> None:
    listing = Listing(1000)
    listing.too_slow_above = 300
    scanner = Scanner(listing, page_size=1000, max_concurrency=3)
    ids = read_again(scanner, listing)
    assert ids == sorted(listing.items)
    assert [page.limit for page in listing.requests[:3]] == [1000, 500, 250]
    assert listing.final_504s == [False, False]  # asked again smaller, not retried as it was
    assert scanner.pace == Pace(concurrency=3, page_size=250)
    # A read of whole pages of 250 without a 504: 350 next time, which is too large again.
    read_again(scanner, listing)
    assert scanner.pace.page_size == 350
    read_again(scanner, listing)
    assert scanner.pace.page_size == 175
    listing.too_slow_above = 0
    sizes = []
    for _ in range(10):
        read_again(scanner, listing)
        sizes.append(scanner.pace.page_size)
    assert sizes == [275, 375, 475, 575, 675, 775, 875, 975, 1000, 1000]


def test_at_the_floor_a_504_is_retried_by_the_client_and_fails_the_read() -> None:
    listing = Listing(1000)
    listing.too_slow_above = 50
    scanner = Scanner(listing, page_size=300, max_concurrency=1)
    with pytest.raises(HTTPStatusError) as caught:
        read_again(scanner, listing)
    assert caught.value.status == 504
    assert [page.limit for page in listing.requests] == [300, 150, 100]
    assert listing.final_504s == [False, False, True]
    assert scanner.pace.page_size == 100


def test_a_cap_below_the_page_size_is_what_a_504_halves() -> None:
    listing = Listing(1000)
    listing.cap = 400
    listing.too_slow_above = 300
    listing.slow_after = 1  # the first page (asked 1000, served 400) tells the cap
    scanner = Scanner(listing, page_size=1000, max_concurrency=1)
    assert read_again(scanner, listing) == sorted(listing.items)
    assert [page.limit for page in listing.requests[:3]] == [1000, 400, 200]
    assert scanner.pace.page_size == 200


# --- a collection's own paging: filters, a page-size cap; a scanner beside another -----------

FILTERED = Collection(
    VMS.path,
    key=VMS.key,
    item=VMS.item,
    fields=VMS.fields,
    filters=(("state", "ALIVE"),),
    max_page_size=300,
)


class ThreadedListing(Listing):
    """A listing that notes which thread asked for each page."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.threads: list[str] = []

    def get_page(self, page: PageRequest, *, retry_too_slow: bool = True) -> bytes:
        self.threads.append(threading.current_thread().name)
        return super().get_page(page, retry_too_slow=retry_too_slow)


def read_filtered(scanner: Scanner) -> list[str]:
    ids: list[str] = []
    scanner.read(FILTERED, PageCounter(FILTERED, lambda item: ids.append(item["id"])))
    return ids


def test_a_collections_filters_and_page_cap_reach_every_request() -> None:
    listing = Listing(1000)
    scanner = Scanner(listing, page_size=1000, max_concurrency=3)
    assert read_filtered(scanner) == sorted(listing.items)
    assert {page.limit for page in listing.requests} == {300}
    assert {page.filters for page in listing.requests} == {(("state", "ALIVE"),)}
    scanner.close()


class ReadBeside:
    """The pages of a scan, counted; at the first, ``beside`` reads the listing whole in a
    thread of its own (as the inventory is read during the backups' scan), and is waited for."""

    def __init__(self, beside: Scanner, thread: str) -> None:
        self.ids: list[str] = []
        self.beside_ids: list[str] = []
        self.counter = PageCounter(VMS, lambda item: self.ids.append(item["id"]))
        self.beside, self.thread = beside, thread

    def count(self, offset: int, body: bytes, order: str = SORT_FIELD) -> PageOutcome:
        if offset == 0:
            reader = threading.Thread(
                target=lambda: self.beside_ids.extend(read_filtered(self.beside)), name=self.thread
            )
            reader.start()
            reader.join()
        return self.counter.count(offset, body, order)


def test_a_scanner_of_one_request_at_a_time_asks_in_its_callers_thread_only() -> None:
    listing = ThreadedListing(2500)
    scanner = Scanner(listing, page_size=1000, max_concurrency=3)
    beside = scanner.sibling(page_size=1000, max_concurrency=1)
    assert read_filtered(beside) == sorted(listing.items)
    assert set(listing.threads) == {threading.current_thread().name}  # nothing prefetched
    listing.threads.clear()
    assert read_again(scanner, listing) == sorted(listing.items)  # the scan still prefetches
    assert set(listing.threads) - {threading.current_thread().name}
    scanner.close()


def test_a_scan_asks_less_at_once_when_the_read_beside_it_hears_too_many_requests() -> None:
    listing = ThreadedListing(2000)
    scanner = Scanner(listing, page_size=100, max_concurrency=4)
    beside = scanner.sibling(page_size=1000, max_concurrency=1)
    # Only the requests beside the scan are told "too many requests" (the client retried them).
    listing.overloaded = lambda: threading.current_thread().name == "inventory"
    pages = ReadBeside(beside, "inventory")
    scanner.read(VMS, pages)
    assert pages.ids == pages.beside_ids == sorted(listing.items)
    assert listing.threads.count("inventory") == 7  # pages of 300, one at a time
    assert listing.throttled == 7
    # The controller asked for fewer requests at once: the scan halved its pace (once: the
    # complaints came in one round); the scanner beside it asks one at a time anyway.
    assert scanner.pace == Pace(concurrency=2, page_size=100)
    assert beside.pace == Pace(concurrency=1, page_size=1000)
    scanner.close()


def test_a_504_beside_a_scan_shrinks_the_pages_beside_it_only() -> None:
    listing = Listing(1000)
    scanner = Scanner(listing, page_size=1000, max_concurrency=4)
    beside = scanner.sibling(page_size=1000, max_concurrency=1)
    listing.too_slow_above = 200
    assert read_filtered(beside) == sorted(listing.items)
    assert [page.limit for page in listing.requests[:3]] == [300, 150, 150]
    assert beside.pace == Pace(concurrency=1, page_size=150)
    assert scanner.pace == Pace(concurrency=4, page_size=1000)
    scanner.close()
