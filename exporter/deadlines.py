"""Wall-clock deadlines for HTTP exchanges made with requests, whatever the framing.

requests and urllib3 time out each socket read, not an answer: a server that drips its headers
or a ``Content-Length`` body a byte at a time never times out. Here an :class:`Exchange` (a
request and its answer) has a deadline; once its request is sent on a connection of a
:class:`DeadlineAdapter`, a watchdog thread shuts that socket down when the deadline passes,
which ends any read in progress. Used as::

    exchange = Exchange(time.monotonic() + 60)
    exchange.begin()
    try:
        response = session.get(url, stream=True)  # a session with DeadlineAdapter mounted
        body = response.content
    finally:
        exchange.finish()
    if exchange.expired:
        ...  # the answer, or the error it ended in, is the deadline's doing
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from typing import Any

import urllib3.connection
import urllib3.connectionpool
import urllib3.poolmanager
import urllib3.response
from requests.adapters import HTTPAdapter


class Exchange:
    """One request and its answer, against a wall-clock deadline (``time.monotonic``).

    A socket timeout bounds each read, not their sum: a controller that drips its headers or
    its body a byte at a time would never time out. So the watchdog shuts the exchange's
    socket down at the deadline, which ends any read in progress; :attr:`expired` then tells
    the error (or the short body) apart from the controller's own doing.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self.sock: socket.socket | None = None  # set while watched
        self.done = False

    def begin(self) -> None:
        """The requests this thread makes from now on are this exchange (until finish())."""
        _current.exchange = self

    def watch(self, sock: socket.socket) -> None:
        _WATCHDOG.arm(self, sock)

    def finish(self) -> None:
        """The answer is in (or given up): the deadline no longer applies. Before the
        connection goes back to the pool, where another exchange may take it."""
        _WATCHDOG.disarm(self)
        if getattr(_current, "exchange", None) is self:
            _current.exchange = None


class _Watchdog:
    """Ends the exchanges that outlive their deadline: one thread for the process, running
    only while an exchange is watched."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Exchange]] = []
        self._order = itertools.count()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, exchange: Exchange, sock: socket.socket) -> None:
        with self._lock:
            if exchange.done:
                return
            exchange.sock = sock
            heapq.heappush(self._due, (exchange.deadline, next(self._order), exchange))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
                self._thread.start()
            self._lock.notify()

    def disarm(self, exchange: Exchange) -> None:
        with self._lock:
            exchange.done = True
            if exchange.sock is None:
                return
            exchange.sock = None
            self._due = [entry for entry in self._due if entry[2] is not exchange]
            heapq.heapify(self._due)
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._due and self._due[0][0] > time.monotonic():
                    self._lock.wait(self._due[0][0] - time.monotonic())
                if not self._due:
                    self._thread = None  # nothing watched: the next arm() starts another
                    return
                exchange = heapq.heappop(self._due)[2]
                sock, exchange.sock = exchange.sock, None
                if sock is None:
                    continue
                exchange.expired = True
                # Under the lock: once disarmed, the connection may serve another exchange.
                # socket.socket's shutdown even for TLS: wake the reader, leave TLS alone.
                with contextlib.suppress(OSError):  # closed meanwhile: nothing left to end
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()
_current = threading.local()  # .exchange: the exchange this thread is making, if any


class _WatchedConnection(urllib3.connection.HTTPConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        _watch(self.sock)
        return super().getresponse()


class _WatchedTLSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        _watch(self.sock)
        return super().getresponse()


def _watch(sock: socket.socket | None) -> None:
    """Put the socket a request was just sent on under its exchange's deadline (the answer,
    headers and body, is read from it)."""
    exchange: Exchange | None = getattr(_current, "exchange", None)
    if exchange is not None and sock is not None:
        exchange.watch(sock)


class _WatchedPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedTLSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedTLSConnection


_WATCHED_POOLS = {"http": _WatchedPool, "https": _WatchedTLSPool}


class DeadlineAdapter(HTTPAdapter):
    """Connections under the watchdog; with ``server_name``, verifies the controller's
    certificate against that name instead of the URL's host (appliance certificates rarely
    carry the IP address users put in the URL)."""

    def __init__(self, server_name: str | None, pool_maxsize: int) -> None:
        self._server_name = server_name
        super().__init__(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._server_name:
            kwargs["server_hostname"] = self._server_name
            kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> urllib3.poolmanager.PoolManager:
        manager: urllib3.poolmanager.PoolManager = super().proxy_manager_for(proxy, **kwargs)
        if isinstance(manager, urllib3.poolmanager.ProxyManager):  # not SOCKS: its own pools
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager
