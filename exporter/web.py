"""The HTTP side: ``/``, ``/metrics``, ``/-/healthy``, ``/-/ready`` and ``POST /-/reload``.

Every handler only reads what the poller already published, so no request ever waits for a
controller. TLS and basic auth come from ``--web.config.file`` (exporter-toolkit's format).

How connections are served. One thread (``web``) holds every open connection and waits on all
of them at once with a selector: it accepts, runs the TLS handshake without blocking, and reads
until a request's line and headers have all arrived. Only then does a worker (``web-worker-N``,
a fixed few) take the connection, answer that one request and give it back for the next one
(keep-alive). So a connection that sends nothing, or its headers a byte at a time, costs a
socket and under a kilobyte, never a thread, and cannot keep a worker from a real scrape.

- A request's headers must all arrive within a few seconds of the connection (handshake
  included) or of the request's first byte; a kept-alive connection waits longer, quietly,
  for its next request. Whoever misses a deadline is closed.
- A few requests are answered at once; a bounded queue of others waits for a worker, and a
  request beyond that gets 503 at once (on a server of cached answers, a queue that long
  means something is wrong).
- The connections held are bounded (and by half of the open-file limit, which the poller's
  own connections need too); one more closes the oldest that never completed a request.

Why read the headers before taking a worker, rather than a bounded pool whose workers read
with a deadline: N workers with a deadline of D seconds are held by N idle connections for D
seconds, so thousands of idle connections queue a real scrape for minutes. A thread per
connection (``ThreadingHTTPServer``) serves the scrape at once but lets those connections cost
a thread each, in memory that stays taken after they leave.
"""

from __future__ import annotations

import contextlib
import errno
import html
import io
import logging
import math
import queue
import re
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from exporter import __version__
from exporter.model import ControllerSnapshot, ControllerStatus
from exporter.protection import AT_RISK_STATUSES, SEVERITY
from exporter.webconfig import BASIC_AUTH_CHALLENGE, WebConfig

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEADER_TIMEOUT_SECONDS = 5.0
# Longer than the usual scrape interval (one minute), so Prometheus keeps its connection.
IDLE_TIMEOUT_SECONDS = 120.0
WRITE_TIMEOUT_SECONDS = 30.0
MAX_HEADER_BYTES = 32 * 1024
_TICK_SECONDS = 0.25  # how often deadlines are checked
_READ_SIZE = 16 * 1024
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


@dataclass(frozen=True)
class WebApp:
    """What the web layer needs from the rest of the exporter, as plain callables."""

    render_metrics: Callable[[bool], bytes]  # argument: gzipped
    statuses: Callable[[], Sequence[ControllerStatus]]
    ready: Callable[[], bool]
    reload: Callable[[], tuple[bool, str]]
    description: str = "HPE SimpliVity backups"


class ExporterServer:
    """Serves :class:`WebApp` on ``address``: :meth:`serve_forever`, then :meth:`shutdown`.

    ``workers`` requests are answered at once and ``queue_size`` more wait for a worker (503
    beyond). A request's headers must arrive within ``header_timeout`` seconds of the
    connection (TLS handshake included) or of the request's first byte; a kept-alive connection
    may wait ``idle_timeout`` seconds for its next request; a client must take each write of an
    answer within ``write_timeout`` seconds. At most ``max_connections`` are held open (and at
    most half of the open-file limit, which the poller's own connections need as well).
    """

    def __init__(
        self,
        address: tuple[str, int],
        app: WebApp,
        web_config: WebConfig | None = None,
        *,
        workers: int = 8,
        queue_size: int = 32,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
        max_connections: int = 1024,
    ) -> None:
        self.app = app
        self.use_web_config(web_config or WebConfig())
        self.workers = workers
        self.queue_size = queue_size
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            max_connections = min(max_connections, max(16, soft // 2))
        self.max_connections = max_connections
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            # A deep backlog: a burst of connections waits for accept() instead of losing SYNs.
            self._listener.listen(socket.SOMAXCONN)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        # Owned by the serving thread: connections waiting for a request, oldest first.
        self._held: dict[_Connection, None] = {}
        self._work: queue.SimpleQueue[_Connection | None] = queue.SimpleQueue()
        self._pending_lock = threading.Lock()
        self._pending = 0  # being answered, or waiting for a worker
        self._returned: queue.SimpleQueue[_Connection] = queue.SimpleQueue()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._stop = threading.Event()
        self._serving = threading.Event()
        self._stopped = threading.Event()
        self._accept_paused = False
        self._last_refusal_log = 0.0

    def use_web_config(self, web_config: WebConfig) -> None:
        """Serve with new TLS and auth settings from the next connection on (reloads)."""
        self.web_config = web_config
        self.ssl_context = web_config.ssl_context()

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        scheme = "https" if self.ssl_context else "http"
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{port}"

    @property
    def pending(self) -> int:
        """Requests whose headers have arrived and whose answer is not written yet."""
        with self._pending_lock:
            return self._pending

    def serve_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="web", daemon=True)
        thread.start()
        self._serving.wait()
        return thread

    def serve_forever(self) -> None:
        """Accept and read in this thread, answer in the workers, until :meth:`shutdown`."""
        self._serving.set()
        workers = [
            threading.Thread(target=self._answer_requests, name=f"web-worker-{n}", daemon=True)
            for n in range(self.workers)
        ]
        selector = selectors.DefaultSelector()
        try:
            for worker in workers:
                worker.start()
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            self._loop(selector)
        finally:
            self._stop.set()
            for connection in self._held:
                _close(connection)
            self._held.clear()
            for _ in workers:
                self._work.put(None)
            # A worker stuck writing to a slow client must not hold up the shutdown.
            deadline = time.monotonic() + 5
            for worker in workers:
                if worker.is_alive():
                    worker.join(max(0.0, deadline - time.monotonic()))
            while not self._returned.empty():
                _close(self._returned.get())
            selector.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving and wait for :meth:`serve_forever` to return (from another thread)."""
        self._stop.set()
        self._wake()
        if self._serving.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        self._listener.close()
        self._wake_reader.close()
        self._wake_writer.close()

    # --- the serving thread: accept, handshake, read headers, keep deadlines ------------------

    def _loop(self, selector: selectors.BaseSelector) -> None:
        next_check = time.monotonic() + _TICK_SECONDS
        while not self._stop.is_set():
            for key, _ in selector.select(_TICK_SECONDS):
                if key.fileobj is self._listener:
                    self._accept(selector)
                elif key.fileobj is self._wake_reader:
                    with contextlib.suppress(OSError):
                        self._wake_reader.recv(4096)
                else:
                    try:
                        self._read(selector, key.data)
                    except Exception:  # a bug costs one connection, not the server
                        log.exception("error while reading from %s", key.data.host)
                        self._drop(selector, key.data)
            self._take_back(selector)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + _TICK_SECONDS
                self._expire(selector, now)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        for _ in range(64):  # then serve the connections already held
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in _OUT_OF_RESOURCES and self._evict(selector):
                    continue
                if err.errno in _OUT_OF_RESOURCES:
                    # Nothing to close: stop accepting until the next check of deadlines.
                    log.warning("cannot accept connections: %s", err.strerror)
                    selector.unregister(self._listener)
                    self._accept_paused = True
                    return
                continue  # the client gave up before accept(): nothing to do
            if len(self._held) >= self.max_connections:
                self._evict(selector)
            sock.setblocking(False)
            # Headers and body are two writes: without this, Nagle's algorithm holds the body
            # until the client's delayed ACK, about 40 ms on every keep-alive request.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + self.header_timeout
            connection = _Connection(sock, peer, deadline, tls=self.ssl_context)
            self._held[connection] = None
            selector.register(sock, selectors.EVENT_READ, connection)

    def _read(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        sock = connection.sock
        try:
            if connection.tls is not None:
                # TLS starts with the client's first bytes: a connection that sends nothing
                # costs a socket, not an SSL object.
                selector.unregister(sock)
                sock = connection.sock = connection.tls.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                connection.tls = None
                connection.handshaking = True
                selector.register(sock, selectors.EVENT_READ, connection)
            if connection.handshaking and isinstance(sock, ssl.SSLSocket):
                sock.do_handshake()
                connection.handshaking = False
                selector.modify(sock, selectors.EVENT_READ, connection)
            data = sock.recv(_READ_SIZE)
            # Data that TLS has already decrypted does not wake the selector: take it now.
            while data and isinstance(sock, ssl.SSLSocket) and sock.pending():
                data += sock.recv(sock.pending())
        except ssl.SSLWantReadError:
            selector.modify(sock, selectors.EVENT_READ, connection)
            return
        except ssl.SSLWantWriteError:
            selector.modify(sock, selectors.EVENT_WRITE, connection)
            return
        except BlockingIOError:
            return
        except OSError:
            log.debug("connection from %s ended with an error", connection.host, exc_info=True)
            self._drop(selector, connection)
            return
        if not data:
            self._drop(selector, connection)
            return
        if connection.idle:  # a kept-alive connection's next request has begun
            connection.idle = False
            connection.deadline = time.monotonic() + self.header_timeout
        connection.buffer += data
        self._received(selector, connection)

    def _received(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        """Hand the connection to a worker once its request's headers are all in."""
        end = _end_of_headers(connection.buffer)
        if (len(connection.buffer) if end is None else end) > MAX_HEADER_BYTES:
            self._forget(selector, connection)
            message = b"Request headers too large.\n"
            self._refuse(connection, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, message)
            return
        if end is None:
            return
        self._forget(selector, connection)
        connection.head = bytes(connection.buffer[:end])
        del connection.buffer[:end]
        with self._pending_lock:
            refused = self._pending >= self.workers + self.queue_size
            if not refused:
                self._pending += 1
        if refused:
            now = time.monotonic()
            if now - self._last_refusal_log > 60:
                self._last_refusal_log = now
                log.warning(
                    "%d requests are being answered or wait for a worker: refusing more with "
                    "503 (logged once a minute)",
                    self.workers + self.queue_size,
                )
            message = b"Too many requests at once; try again.\n"
            self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, message)
            return
        self._work.put(connection)

    def _take_back(self, selector: selectors.BaseSelector) -> None:
        """Wait for the next request on the connections the workers kept alive."""
        while not self._returned.empty():
            connection = self._returned.get()
            self._held[connection] = None
            selector.register(connection.sock, selectors.EVENT_READ, connection)
            sock = connection.sock
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                self._read(selector, connection)
            elif connection.buffer:  # the client sent its next request with the last one
                self._received(selector, connection)

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        for connection in [c for c in self._held if c.deadline <= now]:
            log.debug("closing a connection from %s: no request in time", connection.host)
            self._drop(selector, connection)
        if self._accept_paused:
            self._accept_paused = False
            selector.register(self._listener, selectors.EVENT_READ)

    def _evict(self, selector: selectors.BaseSelector) -> bool:
        """Close the oldest connection that never completed a request, else the oldest."""
        victim = next((c for c in self._held if not c.served), None)
        victim = victim or next(iter(self._held), None)
        if victim is None:
            return False
        log.debug("closing a connection from %s: too many connections", victim.host)
        self._drop(selector, victim)
        return True

    def _forget(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        with contextlib.suppress(KeyError, ValueError):  # not registered, or closed
            selector.unregister(connection.sock)
        self._held.pop(connection, None)

    def _drop(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        self._forget(selector, connection)
        _close(connection)

    def _refuse(self, connection: _Connection, status: HTTPStatus, message: bytes) -> None:
        """A short answer without a worker, sent only if it fits at once, then close."""
        lines = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(message)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.web_config.extra_headers.items()),
        ]
        with contextlib.suppress(OSError):
            connection.sock.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + message)
        _close(connection)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._wake_writer.send(b"\0")

    # --- the workers ---------------------------------------------------------------------

    def _answer_requests(self) -> None:
        while (connection := self._work.get()) is not None:
            keep = self._answer(connection)
            with self._pending_lock:
                self._pending -= 1
            if keep and not self._stop.is_set():
                self._returned.put(connection)
                self._wake()
            else:
                _close(connection)

    def _answer(self, connection: _Connection) -> bool:
        """Answer the request in ``connection.head``; whether to keep the connection open."""
        try:
            connection.sock.settimeout(self.write_timeout)
            handler = _Handler(connection, self)
            connection.sock.setblocking(False)
        except OSError:
            log.debug("connection from %s ended with an error", connection.host, exc_info=True)
            return False
        except Exception:
            log.exception("error while answering %s", connection.host)
            return False
        if handler.close_connection or not _skip_body(connection, handler.headers):
            return False
        connection.served += 1
        connection.idle = not connection.buffer
        timeout = self.idle_timeout if connection.idle else self.header_timeout
        connection.deadline = time.monotonic() + timeout
        return True


@dataclass(eq=False)
class _Connection:
    """A client's connection, owned by the serving thread or by one worker at a time."""

    sock: socket.socket
    peer: Any  # as accept() gives it: (host, port) or, for IPv6, a 4-tuple
    deadline: float  # monotonic: when it is closed unless a request's headers are all in
    tls: ssl.SSLContext | None = None  # to wrap the socket with when the client speaks first
    handshaking: bool = False
    idle: bool = False  # kept alive, waiting for its next request
    served: int = 0  # requests answered
    buffer: bytearray = field(default_factory=bytearray)  # read, not yet answered
    head: bytes = b""  # the request line and headers a worker is answering

    @property
    def host(self) -> str:
        return str(self.peer[0])


def _close(connection: _Connection) -> None:
    with contextlib.suppress(OSError):
        connection.sock.close()


def _end_of_headers(buffer: bytearray) -> int | None:
    """Where the request line and headers end in ``buffer`` (after the empty line), or None.

    Empty lines before a request are skipped (RFC 9112, section 2.2), and removed from it.
    """
    while buffer.startswith((b"\r\n", b"\n")):
        del buffer[: 1 if buffer.startswith(b"\n") else 2]
    ends = [
        found + len(marker)
        for marker in (b"\r\n\r\n", b"\n\n")
        if (found := buffer.find(marker)) >= 0
    ]
    return min(ends, default=None)


def _skip_body(connection: _Connection, headers: Any) -> bool:
    """Drop a request's body from the buffer; False when it is not all there (then close)."""
    if headers is None or headers.get("Transfer-Encoding"):
        return False
    length = headers.get("Content-Length", "0").strip()
    if not length.isdigit() or int(length) > len(connection.buffer):
        return False
    del connection.buffer[: int(length)]
    return True


def parse_listen_address(value: str) -> tuple[str, int]:
    """``:10025``, ``127.0.0.1:10025`` or ``[::1]:10025`` as (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. :10025 or 127.0.0.1:10025)")
    host = host.strip("[]")
    return (host or "0.0.0.0", int(port))


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an answer to a request with this ``Accept-Encoding`` is gzipped (RFC 9110 12.5.3).

    Each coding has a weight (``q``, 1 by default; 0 means "not acceptable"); ``*`` stands for
    every coding not named. gzip is chosen when its weight is above 0 and not below identity's
    (identity is acceptable unless refused by name or by ``*;q=0``). No header, or an empty
    one, means identity. An element with a malformed weight is ignored.

    >>> accepts_gzip("gzip"), accepts_gzip("gzip;q=0"), accepts_gzip("identity;q=0, *")
    (True, False, True)
    """
    weights: dict[str, float] = {}
    for element in (accept_encoding or "").split(","):
        coding, *parameters = (part.strip() for part in element.split(";"))
        weight: float | None = 1.0
        for parameter in parameters:
            name, _, value = (part.strip() for part in parameter.partition("="))
            if name.lower() == "q":
                weight = float(value) if _QVALUE.fullmatch(value) else None
        if coding and weight is not None:
            weights.setdefault(coding.lower(), weight)
    anything = weights.get("*")
    gzip = weights.get("gzip", weights.get("x-gzip", anything or 0.0))
    identity = weights.get("identity", 1.0 if anything is None else anything)
    return gzip > 0 and gzip >= identity


class _Handler(BaseHTTPRequestHandler):
    """Answers the one request whose line and headers the serving thread has read."""

    protocol_version = "HTTP/1.1"
    server_version = f"simplivity-exporter/{__version__}"

    def __init__(self, connection: _Connection, server: ExporterServer) -> None:
        # Not BaseRequestHandler's constructor: the headers are already read, and this
        # answers one request, then the connection goes back to the serving thread.
        self.request = self.connection = connection.sock
        self.client_address = connection.peer
        self.exporter = server
        self.rfile = io.BytesIO(connection.head)
        self.wfile = connection.sock.makefile("wb")
        self.headers = None  # type: ignore[assignment]
        try:
            self.close_connection = True
            self.handle_one_request()
        finally:
            self.finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_POST(self) -> None:
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path != "/-/reload":
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"Only POST /-/reload is allowed.\n")
            return
        ok, message = self.exporter.app.reload()
        status = HTTPStatus.OK if ok else HTTPStatus.INTERNAL_SERVER_ERROR
        self._send(status, (message.rstrip("\n") + "\n").encode())

    def _route(self, *, head: bool) -> None:
        if not self._authorized():
            return
        app = self.exporter.app
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            gzipped = accepts_gzip(self.headers.get("Accept-Encoding"))
            body = app.render_metrics(gzipped)
            # Either way the answer depends on Accept-Encoding: a cache must know.
            headers = {"Vary": "Accept-Encoding"}
            if gzipped:
                headers["Content-Encoding"] = "gzip"
            self._send(HTTPStatus.OK, body, METRICS_CONTENT_TYPE, headers, head=head)
        elif path == "/-/healthy":
            self._send(HTTPStatus.OK, b"Healthy.\n", head=head)
        elif path == "/-/ready":
            if app.ready():
                self._send(HTTPStatus.OK, b"Ready.\n", head=head)
            else:
                message = b"Not ready: waiting for the first poll of every controller.\n"
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, message, head=head)
        elif path == "/":
            page = landing_page(app.statuses(), app.description, time.time())
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8", head=head)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"Not found. Try /metrics.\n", head=head)

    def _authorized(self) -> bool:
        if self.exporter.web_config.authenticate(self.headers.get("Authorization")):
            return True
        self._send(
            HTTPStatus.UNAUTHORIZED,
            b"Unauthorized.\n",
            headers={"WWW-Authenticate": BASIC_AUTH_CHALLENGE},
        )
        return False

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
        *,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in self.exporter.web_config.extra_headers.items():
            self.send_header(name, value)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


#: The at-risk VMs listed per controller; the page says how many more there are.
AT_RISK_ROWS = 100

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; line-height: 1.35; }
h2 { margin-top: 1.6em; } h3 { margin: 1.4em 0 0.3em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; }
td.risk { background: #ffebe9; color: #a40e26; font-weight: 600; }
.ok { color: #1a7f37; font-weight: 600; } .failed { color: #cf222e; font-weight: 600; }
.pending { color: #9a6700; }
.status { font-weight: 600; white-space: nowrap; }
.status.overdue, .status.never_backed_up, .status.last_failed { color: #cf222e; }
.status.not_scheduled { color: #9a6700; } .status.app_inconsistent { color: #bc4c00; }
.utc { color: #666; font-size: 0.9em; white-space: nowrap; }
@media (max-width: 40em) { body { margin: 0.7em; } th, td { padding: 0.25em 0.4em; } }
"""


def landing_page(statuses: Sequence[ControllerStatus], description: str, now: float) -> str:
    """The ``/`` page: what this is, how each controller is doing, and where to go next.

    Per controller, its live VMs by protection status (per cluster) and its at-risk VMs, worst
    first, as the last good poll judged them. Everything that comes from a controller or the
    configuration is escaped; nothing secret is shown.
    """
    rows = "\n".join(_landing_row(status, now) for status in statuses)
    if not rows:
        rows = '<tr><td colspan="7">No controllers configured for this shard.</td></tr>'
    sections = "\n".join(_protection_section(status, now) for status in statuses)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SimpliVity exporter</title>
<style>{_STYLE}</style></head>
<body>
<h1>SimpliVity exporter</h1>
<p>Prometheus exporter for {html.escape(description)}, version {html.escape(__version__)}.</p>
<p><a href="/metrics">Metrics</a> · <a href="/-/healthy">Health</a> ·
<a href="/-/ready">Readiness</a></p>
<div class="scroll"><table>
<tr><th>Controller</th><th>URL</th><th>Last poll</th><th>Result</th><th>Duration</th>
<th>Backups seen</th><th>Last error</th></tr>
{rows}
</table></div>
<h2>Protection</h2>
<p>Each live VM is judged against its own policy at the end of each good poll. At risk:
never backed up, overdue at a destination of its policy, not scheduled (a policy without
rules, or policy backups disabled on its host), last backup failed, no recent
application-consistent backup where its policy asks for one. Orphaned backups are those of
no live VM; never-expiring ones have no expiration time (manual backups).</p>
{sections}
</body>
</html>
"""


def _landing_row(status: ControllerStatus, now: float) -> str:
    if status.polls == 0:
        when, result = "not yet", '<span class="pending">pending</span>'
    else:
        finished = status.last_poll_finished or now
        when = f"{max(0.0, now - finished):.0f} s ago"
        result = '<span class="ok">ok</span>' if status.up else '<span class="failed">failed</span>'
    duration = f"{status.last_duration:.2f} s" if status.last_duration is not None else ""
    seen = str(status.snapshot.backups_seen) if status.snapshot else ""
    error = status.last_error if status.last_error and not status.up else ""
    cells = (status.name, status.url)
    escaped = "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
    tail = "".join(f"<td>{html.escape(cell)}</td>" for cell in (duration, seen, error))
    return f"<tr>{escaped}<td>{html.escape(when)}</td><td>{result}</td>{tail}</tr>"


def _protection_section(status: ControllerStatus, now: float) -> str:
    """A controller's VMs by protection status, and its at-risk VMs: or why there are none."""
    heading = f"<h3>{html.escape(status.name)}</h3>"
    snapshot = status.snapshot
    if snapshot is None:
        if status.polls == 0:
            note = "No data yet: waiting for the first poll."
        else:
            note = "No data yet: no poll has succeeded so far (its last error is above)."
        return f'<section>{heading}\n<p class="pending">{note}</p></section>'
    judged = _moment(snapshot.judged_at, now)
    if status.up:
        note = f"<p>Judged at the end of the latest poll: {judged}</p>"
    else:
        note = (
            '<p><span class="failed">Stale data:</span> the latest poll failed. What follows '
            f"is from the last good poll: {judged}</p>"
        )
    return f"<section>{heading}\n{note}\n{_counts(snapshot)}\n{_at_risk(snapshot, now)}</section>"


def _counts(snapshot: ControllerSnapshot) -> str:
    """Live VMs per cluster and status; a total row when there is not exactly one cluster.

    The statuses are columns worst first, so the at-risk ones stay in view in a narrow window.
    """
    # Clusters of live VMs or hosts, and clusters and stores holding backups.
    unowned = {name: (orphans, never) for name, (orphans, _, never, _) in snapshot.unowned()}
    names = sorted({*snapshot.vms_by_status, *unowned})
    clusters = [(name, snapshot.vms_by_status.get(name, {}), unowned.get(name, (0, 0)))
                for name in names]  # fmt: skip
    rows = [(html.escape(name), counts, extra, "") for name, counts, extra in clusters]
    if len(rows) != 1:
        total = {s: sum(counts.get(s, 0) for _, counts, _ in clusters) for s in SEVERITY}
        extra = (sum(e[0] for _, _, e in clusters), sum(e[1] for _, _, e in clusters))
        rows.append(("all clusters", total, extra, ' class="total"'))
    header = "".join(f"<th>{_words(s)}</th>" for s in SEVERITY)
    lines = [
        f"<tr><th>Cluster</th><th>Live VMs</th>{header}"
        "<th>orphaned backups</th><th>never-expiring backups</th></tr>"
    ]
    for cluster, counts, (orphans, never), total_class in rows:
        cells = []
        for status in SEVERITY:
            count = counts.get(status, 0)
            risky = " risk" if count and status in AT_RISK_STATUSES else ""
            cells.append(f'<td class="n{risky}">{count}</td>')
        cells += [f'<td class="n">{orphans}</td>', f'<td class="n">{never}</td>']
        live = sum(counts.get(s, 0) for s in SEVERITY)
        lines.append(
            f'<tr{total_class}><td>{cluster}</td><td class="n">{live}</td>{"".join(cells)}</tr>'
        )
    return '<div class="scroll"><table class="counts">\n' + "\n".join(lines) + "\n</table></div>"


def _at_risk(snapshot: ControllerSnapshot, now: float) -> str:
    """The first :data:`AT_RISK_ROWS` at-risk VMs in the snapshot's order (worst first)."""
    at_risk = snapshot.at_risk
    if not at_risk:
        return '<p class="ok">No VM at risk.</p>'
    shown = at_risk[:AT_RISK_ROWS]
    lines = [
        "<tr><th>Status</th><th>VM</th><th>Cluster</th><th>Policy</th><th>Destination</th>"
        "<th>Newest good backup</th><th>Expected interval</th></tr>"
    ]
    for vm in shown:
        if vm.destination is None:  # not scheduled: there is no destination to judge
            destination, newest = "none", vm.newest_protected_anywhere
        else:
            destination, newest = vm.destination, vm.newest_protected
        interval = "none" if vm.expected_interval is None else _duration(vm.expected_interval)
        status = html.escape(vm.status)
        cells = (vm.vm.name, vm.vm.cluster, vm.vm.policy, destination)
        lines.append(
            f'<tr><td><span class="status {status}">{_words(vm.status)}</span></td>'
            + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
            + f"<td>{_moment(newest, now, ' <br>')}</td><td>{html.escape(interval)}</td></tr>"
        )
    title = f"At-risk VMs, worst first: {len(at_risk)}"
    if len(at_risk) > len(shown):
        more = len(at_risk) - len(shown)
        title += f" (the first {len(shown)} shown, {more} more not listed)"
    table = '<div class="scroll"><table class="at-risk">\n' + "\n".join(lines) + "\n</table></div>"
    return f"<p><strong>{title}</strong></p>\n{table}"


def _words(status: str) -> str:
    """A protection status as words: ``never_backed_up`` reads "never backed up"."""
    return html.escape(status.replace("_", " "))


def _moment(when: float | None, now: float, separator: str = " ") -> str:
    """``3 h 5 min ago`` and its UTC time, as escaped HTML; ``never`` for None."""
    if when is None:
        return "never"
    try:
        utc = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    except (OverflowError, OSError, ValueError):  # a timestamp no calendar holds
        return html.escape(f"{when:g} (not a time)")
    age = now - when
    ago = f"{_duration(age)} ago" if age >= 0 else f"in {_duration(-age)}"
    return f'{ago}{separator}<span class="utc">({utc})</span>'


def _duration(seconds: float) -> str:
    """Seconds as its two largest units: ``1 h``, ``7 d``, ``1 h 30 min``, ``2 d 3 h``, ``42 s``.

    >>> _duration(3600), _duration(86400 * 7), _duration(5400), _duration(183_900), _duration(42.7)
    ('1 h', '7 d', '1 h 30 min', '2 d 3 h', '42 s')
    """
    if not math.isfinite(seconds):
        return "forever"
    left = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        amount, left = divmod(left, size)
        if amount or parts:
            parts.append(f"{amount} {unit}")
        if len(parts) == 2:
            break
    parts = [part for part in parts if not part.startswith("0 ")]
    return " ".join(parts) or "0 s"
