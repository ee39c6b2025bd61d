"""What clients did to a simulated controller, counted thread-safely.

Read everything at once, consistently::

    seen = controller.stats.snapshot()
    assert seen.logins == 1 and seen.status_counts.get(500, 0) == 0
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

BACKUPS_PATH = "/api/backups"


@dataclass(frozen=True)
class StatsSnapshot:
    """The counters at one instant (since the controller started or the last reset)."""

    #: Successful logins (tokens issued), and refused ones.
    logins: int
    login_failures: int
    #: Requests received per URL path, whatever their answer.
    requests_per_path: Mapping[str, int]
    #: Answers per HTTP status, all paths.
    status_counts: Mapping[int, int]
    #: Response body bytes, all paths.
    bytes_sent: int
    #: Requests to /api/backups, whatever their answer.
    backups_requests: int
    #: Backups in the pages answered with 200.
    backups_served: int
    #: Requests in progress now, and the most seen at once.
    in_flight: int
    max_in_flight: int
    #: The most backups requests seen inside the cost model at once (see Faults.max_parallel).
    max_parallel_served: int
    #: (offset, limit) of every valid backups request, in arrival order (limit as asked).
    pages: tuple[tuple[int, int], ...]
    #: The same for every paged collection, by path.
    pages_per_path: Mapping[str, tuple[tuple[int, int], ...]]
    #: Records in the pages answered with 200, by path.
    items_served_per_path: Mapping[str, int]
    #: 502s answered because more than Faults.max_in_flight requests were in progress.
    refused_in_flight: int
    #: 504s answered because a page's limit was above Faults.timeout_above_limit.
    refused_page_size: int
    #: Records served odd (Faults.make_odd).
    odd_records_served: int


class Stats:
    """The counters a controller's threads update; :meth:`snapshot` reads them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter (requests in flight stay counted: they are still in flight)."""
        with self._lock:
            self._logins = 0
            self._login_failures = 0
            self._requests: Counter[str] = Counter()
            self._statuses: Counter[int] = Counter()
            self._bytes = 0
            self._backups_requests = 0
            self._max_in_flight = self._in_flight
            self._max_parallel_served = 0
            self._pages: dict[str, list[tuple[int, int]]] = {}
            self._items: Counter[str] = Counter()
            self._refused_in_flight = 0
            self._refused_page_size = 0
            self._odd = 0

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                logins=self._logins,
                login_failures=self._login_failures,
                requests_per_path=dict(self._requests),
                status_counts=dict(self._statuses),
                bytes_sent=self._bytes,
                backups_requests=self._backups_requests,
                backups_served=self._items[BACKUPS_PATH],
                in_flight=self._in_flight,
                max_in_flight=self._max_in_flight,
                max_parallel_served=self._max_parallel_served,
                pages=tuple(self._pages.get(BACKUPS_PATH, ())),
                pages_per_path={path: tuple(pages) for path, pages in self._pages.items()},
                items_served_per_path=dict(self._items),
                refused_in_flight=self._refused_in_flight,
                refused_page_size=self._refused_page_size,
                odd_records_served=self._odd,
            )

    # -- updates, from the serving threads

    def started(self, path: str) -> int:
        """Count a request that arrives; returns how many are in progress, this one included."""
        with self._lock:
            self._requests[path] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if path == BACKUPS_PATH:
                self._backups_requests += 1
            return self._in_flight

    def serving(self, parallel: int) -> None:
        with self._lock:
            self._max_parallel_served = max(self._max_parallel_served, parallel)

    def finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def answered(self, path: str, status: int, body_bytes: int, items: int = 0) -> None:
        with self._lock:
            self._statuses[status] += 1
            self._bytes += body_bytes
            if items:
                self._items[path] += items

    def streamed(self, body_bytes: int) -> None:
        with self._lock:
            self._bytes += body_bytes

    def login(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._logins += 1
            else:
                self._login_failures += 1

    def page(self, path: str, offset: int, limit: int) -> None:
        with self._lock:
            self._pages.setdefault(path, []).append((offset, limit))

    def refused(self, status: int) -> None:
        """A 502 for too many requests in flight, or a 504 for too large a page."""
        with self._lock:
            if status == 502:
                self._refused_in_flight += 1
            else:
                self._refused_page_size += 1

    def odd(self, records: int) -> None:
        with self._lock:
            self._odd += records
