"""Serving the paged collections (``/api/backups``, ``/api/virtual_machines``...) and the
flat objects beside them, with the faults and limits of :class:`Faults`.

One request of a collection goes: query (400 if bad) -> per-request faults (disconnect,
failure, hang) -> the controller's limits (limit cap, 504 for too large a page) -> the cost
model's slots -> churn (backups) -> the page -> malformed or odd records -> the envelope
``{"offset", "count", "limit", "<key>": [...]}``.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from exporter.restapi import FIELDS, Version, documented
from exporter.simulator.catalog import Paged
from exporter.simulator.faults import Faults, Oddity
from exporter.simulator.server import Exchange
from exporter.simulator.stats import Stats
from exporter.simulator.store import (
    INVALID_SORT,
    BadRequest,
    Layout,
    Row,
    Store,
    parse_query,
    to_json,
)
from exporter.simulator.vocabulary import JDBC_MESSAGE

_NOT_JSON = (
    b"<html><head><title>Error</title></head><body><h1>HTTP Status 503 - Service"
    b" Unavailable</h1><p>The server is temporarily unable to serve requests.</p>"
    b"</body></html>"
)


@dataclass(frozen=True)
class Collection:
    """A paged collection as served: its entry in the table, and its records."""

    paged: Paged
    store: Store

    @cached_property
    def known(self) -> frozenset[str]:
        """The names its query may sort and filter by: the fields HPE documents for it (any
        version: strict mode narrows them to the controller's) and those its records hold."""
        return frozenset(FIELDS.get(self.paged.path, ())) | frozenset(self.store.layout.fields)


class Listings:
    """The collections a controller serves, replaced together, read under one lock."""

    def __init__(
        self,
        faults: Faults,
        stats: Stats,
        stopping: threading.Event,
        mode: str,
        version: Version,
        strict: bool,
    ) -> None:
        self.faults = faults
        self.stats = stats
        self.mode = mode
        self.version = version
        self.strict = strict
        self._stopping = stopping
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        self._rng = random.Random(0)
        self._slots = threading.Condition()
        self._slots_busy = 0

    def replace(self, collections: Iterable[Collection], rng: random.Random) -> None:
        """Serve these collections from now on (``rng`` draws the churn)."""
        with self._lock:
            self._collections = {c.paged.path: c for c in collections}
            self._rng = rng

    def update(self, collections: Iterable[Collection]) -> None:
        """Serve these collections in place of those at the same paths."""
        with self._lock:
            self._collections = {**self._collections, **{c.paged.path: c for c in collections}}

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Collection]]:
        """The collections by path, to change under the lock (no request reads meanwhile)."""
        with self._lock:
            yield self._collections

    def rows(self, path: str) -> tuple[Layout, list[Row]]:
        """A copy of a collection's current rows (unsorted), with their layout."""
        with self._lock:
            store = self._collections[path].store
            return store.layout, list(store.rows)

    def wake(self) -> None:
        """End the waits for a slot (on stop)."""
        with self._slots:
            self._slots.notify_all()

    # -- a collection

    def serve(self, ex: Exchange, now: float) -> None:
        with self._lock:
            collection = self._collections[ex.path]
            stored_fields = collection.store.layout.fields
        try:
            query = parse_query(ex.query, collection.paged.query, collection.known)
            if self.strict:
                self._check_documented(ex.path, query.fields or (), query.sort)
            if query.sort in self.faults.refused_sorts:
                raise BadRequest(f"Invalid sort field '{query.sort}'", INVALID_SORT)
            if query.sort in self.faults.ignored_sorts:
                query = replace(query, sort="name", descending=True)
        except BadRequest as e:
            ex.error(400, e.exception, str(e))
            return
        # What this version's items have: no field it lacks, even when asked for.
        fields = tuple(
            f for f in query.fields or stored_fields if documented(ex.path, f, self.version)
        )
        self.stats.page(ex.path, query.offset, query.limit)
        faults = self.faults
        scoped = faults.applies_to(ex.path)
        if scoped and not self._request_faults(ex):
            return
        limit = query.limit
        if faults.limit_cap > 0:
            limit = min(limit, faults.limit_cap)
        if 0 < faults.timeout_above_limit < limit:
            self.stats.refused(504)
            ex.error(
                504,
                "com.simplivity.restapi.exceptions.GatewayTimeoutException",
                "The request took more than 60 seconds to complete",
            )
            return
        if not self._enter_slot():
            ex.close()
            return
        try:
            with self._lock:
                store = collection.store
                if collection.paged.churns:
                    store.churn(
                        faults.churn_create_per_request,
                        faults.churn_expire_per_request,
                        self._rng,
                        now,
                    )
                matching = store.matching(query, self.mode)
                count = len(matching)
                served = 2 * limit if scoped and faults.malformed == "oversized_page" else limit
                if scoped and faults.malformed == "endless_listing" and matching:
                    page = [matching[(query.offset + i) % count] for i in range(limit)]
                elif query.descending:
                    end = count - query.offset
                    page = matching[max(end - served, 0) : max(end, 0)][::-1]
                else:
                    page = matching[query.offset : query.offset + served]
            cost = faults.request_cost_seconds + faults.object_cost_seconds * len(page)
            if cost > 0 and self._stopping.wait(cost):
                ex.close()
                return
        finally:
            self._leave_slot()
        malformed = faults.malformed if scoped else None
        if malformed == "endless":
            self._endless(ex, collection.paged.key)
            return
        if malformed == "not_json":
            ex.send_bytes(200, _NOT_JSON, "text/html;charset=utf-8")
            return
        if malformed == "short_page" and len(page) >= 2:
            page = page[: len(page) // 2]
        elif malformed == "empty_page":
            page = []
        listing = self._render(store, fields, page, malformed, query.offset)
        if malformed == "count_too_large":
            count += 1000
        elif malformed == "endless_listing":
            count = ENDLESS_COUNT
        body = (
            f'{{"offset":{query.offset},"count":{count},"limit":{limit},'
            f'"{collection.paged.key}":{listing}}}'
        ).encode()
        if malformed == "truncated":
            body = body[: len(body) // 2]
        ex.send(200, body, items=len(page))

    def _check_documented(self, path: str, fields: Iterable[str], sort: str) -> None:
        """Strict: 400 for a ``fields=`` name or a ``sort`` field this version does not
        document (HPE documents the 400 for the sort only; a real controller may do either)."""
        unknown = [f for f in fields if not documented(path, f, self.version)]
        if unknown:
            raise BadRequest(f"Invalid field(s) requested: {', '.join(unknown)}")
        if not documented(path, sort, self.version):
            raise BadRequest(f"Invalid sort field '{sort}'", INVALID_SORT)

    def _render(
        self,
        store: Store,
        fields: tuple[str, ...],
        page: list[Row],
        malformed: str | None,
        offset: int = 0,
    ) -> str:
        layout = store.layout
        odd = self.faults.odd_records()
        get_id = layout.getter("id")
        odd_rows = (
            {i for i, row in enumerate(page) if get_id(row) in odd} if odd and get_id else set()
        )
        if malformed in ("size_as_string", "missing_created_at", "endless_listing") or odd_rows:
            items: list[Any] = layout.renderer(fields)(page)
            for position, item in enumerate(items, start=offset):
                if malformed == "endless_listing" and "id" in item:
                    item["id"] = f"{position:020d}"  # new, and in order, page after page
                elif malformed == "missing_created_at":
                    item.pop("created_at", None)
                elif malformed == "size_as_string" and "size" in item:
                    item["size"] = str(item["size"])
            if odd_rows and get_id is not None:
                for i in odd_rows:
                    record_id = str(get_id(page[i]))
                    items[i] = _oddly(items[i], record_id, odd[record_id])
                self.stats.odd(len(odd_rows))
            return to_json(items)
        fragments = store.fragments.setdefault(fields, {})
        return layout.json_renderer(fields, fragments)(page)

    # -- a flat object

    def serve_object(self, ex: Exchange, payload: dict[str, object]) -> None:
        """Answer one object (no paging), with the per-request faults that make sense for it."""
        faults = self.faults
        if faults.applies_to(ex.path) and not self._request_faults(ex):
            return
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        malformed = faults.malformed if faults.applies_to(ex.path) else None
        if malformed == "not_json":
            ex.send_bytes(200, _NOT_JSON, "text/html;charset=utf-8")
            return
        if malformed == "truncated":
            body = body[: len(body) // 2]
        ex.send(200, body)

    # -- faults

    def _request_faults(self, ex: Exchange) -> bool:
        """Disconnect, fail or hang as Faults says; False when the request got its answer."""
        faults = self.faults
        if faults.take_disconnect():
            ex.close()
            return False
        failure = faults.take_failure()
        if failure is not None:
            answer_failure(ex, failure)
            return False
        if faults.hang_seconds > 0 and self._stopping.wait(faults.hang_seconds):
            ex.close()
            return False
        return True

    def _enter_slot(self) -> bool:
        with self._slots:
            while not self._stopping.is_set():
                limit = self.faults.max_parallel
                if limit <= 0 or self._slots_busy < limit:
                    self._slots_busy += 1
                    self.stats.serving(self._slots_busy)
                    return True
                self._slots.wait(0.1)
            return False

    def _leave_slot(self) -> None:
        with self._slots:
            self._slots_busy -= 1
            self._slots.notify()

    def _endless(self, ex: Exchange, key: str) -> None:
        ex.close()
        h = ex.handler
        h.send_response(200)
        h.send_header("Content-Type", ex.content_type)
        h.send_header("Connection", "close")
        h.end_headers()
        self.stats.answered(ex.path, 200, 0)
        item = json.dumps(
            {
                "id": "00000000-0000-4000-8000-000000000000",
                "name": "endless",
                "state": "PROTECTED",
                "created_at": "2020-01-01T00:00:00Z",
                "size": 1,
            },
            separators=(",", ":"),
        )
        chunk = ((item + ",") * (65536 // (len(item) + 1))).encode()
        h.wfile.write(f'{{"offset":0,"count":1,"limit":500,"{key}":['.encode())
        while not self._stopping.is_set() and self.faults.malformed == "endless":
            h.wfile.write(chunk)
            self.stats.streamed(len(chunk))
            if self._stopping.wait(0.01):
                break


#: The ``count`` of an ``endless_listing``: more than any client can page through.
ENDLESS_COUNT = 10**18


def answer_failure(ex: Exchange, status: int) -> None:
    """An injected failure: 500 (the JDBC timeout), 401 (an expired token), or another error."""
    if status == 500:
        ex.error(500, "org.springframework.jdbc.CannotGetJdbcConnectionException", JDBC_MESSAGE)
    elif status == 401:
        token = ex.header("Authorization").partition(" ")[2].strip()
        ex.token_error(f"Access token expired due to inactivity: {token}")
    else:
        exception = "com.simplivity.restapi.exceptions.ServiceException"
        message = "Injected failure"
        if ex.faults.echo_secrets:
            message += f" of a request with Authorization: {ex.header('Authorization')}"
        ex.error(status, exception, message)


def _oddly(item: dict[str, Any], record_id: str, kind: Oddity) -> object:
    """The record as Faults.make_odd asked for it."""
    if kind == "string_record":
        return record_id
    if kind == "number_record":
        return 0
    if kind == "no_state":
        item.pop("state", None)
    elif kind == "no_id":
        item.pop("id", None)
    else:
        name, _, value = kind.rpartition("_")
        if name in item:
            item[name] = None if value == "null" else "NA"
    return item
