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
    #: (offset, limit) of every valid backups request, in arrival order.
    pages: tuple[tuple[int, int], ...]


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
            self._backups_served = 0
            self._max_in_flight = self._in_flight
            self._max_parallel_served = 0
            self._pages: list[tuple[int, int]] = []

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                logins=self._logins,
                login_failures=self._login_failures,
                requests_per_path=dict(self._requests),
                status_counts=dict(self._statuses),
                bytes_sent=self._bytes,
                backups_requests=self._backups_requests,
                backups_served=self._backups_served,
                in_flight=self._in_flight,
                max_in_flight=self._max_in_flight,
                max_parallel_served=self._max_parallel_served,
                pages=tuple(self._pages),
            )

    # -- updates, from the serving threads

    def started(self, path: str) -> None:
        with self._lock:
            self._requests[path] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if path == BACKUPS_PATH:
                self._backups_requests += 1

    def serving(self, parallel: int) -> None:
        with self._lock:
            self._max_parallel_served = max(self._max_parallel_served, parallel)

    def finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def answered(self, status: int, body_bytes: int, backups: int = 0) -> None:
        with self._lock:
            self._statuses[status] += 1
            self._bytes += body_bytes
            self._backups_served += backups

    def streamed(self, body_bytes: int) -> None:
        with self._lock:
            self._bytes += body_bytes

    def login(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._logins += 1
            else:
                self._login_failures += 1

    def page(self, offset: int, limit: int) -> None:
        with self._lock:
            self._pages.append((offset, limit))
