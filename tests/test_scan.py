"""The paging algorithm on its own: any collection, read whole under churn, each item once.

The client and the simulator are covered in test_client.py over real sockets; here a listing
in memory answers the scanner's requests, so that churn can be exact and examples many.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import DecodeError, PageRequest
from exporter.scan import Collection, PageCounter, Scanner

VMS = Collection(
    "/api/virtual_machines", key="virtual_machines", item="virtual machine", fields=("id", "name")
)


class Listing:
    """A collection held in memory, sorted by id, that changes a little at every request."""

    def __init__(self, size: int, *, churn: int = 0, seed: int = 0) -> None:
        self.items = {f"vm-{n:06d}": {"id": f"vm-{n:06d}", "name": f"vm {n}"} for n in range(size)}
        self.churn = churn
        self.rng = random.Random(seed)
        self.next = size
        self.requests: list[PageRequest] = []
        self.logins = 0
        self.short_pages = False
        self._lock = threading.Lock()

    def get_page(self, page: PageRequest) -> bytes:
        with self._lock:
            self.requests.append(page)
            for _ in range(self.churn):
                self._change()
            ordered = [self.items[key] for key in sorted(self.items)]
            served = page.limit // 2 if self.short_pages else page.limit
            items = ordered[page.offset : page.offset + served]
            document = {"offset": page.offset, "count": len(ordered), VMS.key: items}
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
            self.items[key] = {"id": key, "name": "new"}

    def close(self) -> None:
        pass


def read_ids(listing: Listing, *, page_size: int, max_concurrency: int) -> list[str]:
    ids: list[str] = []
    scanner = Scanner(listing, page_size=page_size, max_concurrency=max_concurrency)
    try:
        scanner.read(VMS, PageCounter(VMS, lambda item: ids.append(item["id"])))
    finally:
        scanner.close()
    return ids


def test_any_collection_is_read_with_its_own_path_fields_and_id_order() -> None:
    listing = Listing(1234)
    ids = read_ids(listing, page_size=100, max_concurrency=3)
    assert ids == sorted(listing.items)
    asked = {replace(page, offset=0) for page in listing.requests}
    assert asked == {PageRequest("/api/virtual_machines", 0, 100, ("id", "name"), "id")}


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 400),
    churn=st.integers(0, 6),
    page_size=st.integers(5, 60),
    max_concurrency=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_under_churn_no_item_is_counted_twice_and_no_survivor_is_missed(
    size: int, churn: int, page_size: int, max_concurrency: int, seed: int
) -> None:
    listing = Listing(size, churn=churn, seed=seed)
    before = set(listing.items)
    failure = ""
    try:
        ids = read_ids(listing, page_size=page_size, max_concurrency=max_concurrency)
    except DecodeError as err:
        failure = str(err)
    if failure:
        # Allowed only when the listing changes faster than it can be read.
        assert churn > 0
        assert "virtual machine listing changed faster than it could be read" in failure
        return
    after = set(listing.items)
    assert [key for key, n in Counter(ids).items() if n > 1] == []
    assert (before & after) - set(ids) == set()
    assert ids == sorted(ids)


def test_a_short_page_is_an_error_in_the_collections_own_words() -> None:
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
            {"count": 1, "virtual_machines": ["vm"]},
            "/api/virtual_machines listed something that is not a virtual machine object",
        ),
        (
            {"count": 1, "virtual_machines": [{"name": "x"}]},
            "/api/virtual_machines listed a virtual machine without an id",
        ),
        (
            {"count": 2, "virtual_machines": [{"id": "b"}, {"id": "a"}]},
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
