"""The HTTP plumbing of a simulated controller: a threading server that can end every answer,
and :class:`Exchange`, one request with the ways to answer it.

The server knows no endpoint: it hands each request to a ``serve(handler)`` function (the
controller's router) and stops its connections when told.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from exporter.simulator.faults import Faults
from exporter.simulator.stats import Stats
from exporter.simulator.values import Times

log = logging.getLogger(__name__)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        serve: Callable[[Handler], None],
        stopping: threading.Event,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.serve = serve
        self.stopping = stopping
        self.ssl_context = ssl_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn: socket.socket = request
        if self.ssl_context is not None:
            request.settimeout(10)
            try:
                conn = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ValueError) as e:
                log.debug("TLS handshake with %s failed: %s", client_address, e)
                return
        with self._connections_lock:
            self._connections.add(conn)
        try:
            if self.stopping.is_set():
                return
            Handler(conn, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(conn)
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            # socket.socket.shutdown, not SSLSocket's: only wake up the handler thread.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SimpliVity-Simulator"
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections end after this
    server: Server
    #: Whether the request being served has stopped counting as in flight.
    done_in_flight = False

    def _dispatch(self) -> None:
        self.server.serve(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class Exchange:
    """One request (method, path, query, body, headers) and the ways to answer it.

    Every answer counts in ``stats``, and its request stops counting as in flight, just before
    the answer goes out (a dripped answer: counted after its last byte), so that a client that
    has its answer reads stats that include it; the router calls :meth:`leave_flight` at the
    end of requests that got no answer.
    Error bodies follow ``faults.error_body`` and ``faults.html_error_statuses``.
    """

    def __init__(
        self,
        handler: Handler,
        stats: Stats,
        faults: Faults,
        clock: Callable[[], float],
        content_type: str,
    ) -> None:
        url = urlsplit(handler.path)
        self.handler = handler
        self.method = handler.command
        self.path = url.path
        self.query = url.query
        self.body = b""
        self.stats = stats
        self.faults = faults
        self.clock = clock
        self.content_type = content_type
        self._in_flight = True

    def header(self, name: str) -> str:
        return self.handler.headers.get(name) or ""

    def read_body(self) -> None:
        length = int(self.handler.headers.get("Content-Length") or 0)
        self.body = self.handler.rfile.read(length) if length > 0 else b""

    def close(self) -> None:
        """Close the connection after this request (or now, if nothing is answered)."""
        self.handler.close_connection = True

    def leave_flight(self) -> None:
        if self._in_flight:
            self._in_flight = False
            self.stats.finished()

    def send(
        self,
        status: int,
        payload: object,
        *,
        items: int = 0,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Answer ``payload`` (bytes as they are, anything else as compact JSON)."""
        if isinstance(payload, bytes):
            body = payload
        else:
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        self.send_bytes(status, body, self.content_type, items=items, headers=headers)

    def send_bytes(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        items: int = 0,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        h = self.handler
        drip = self.faults.drip if self.faults.applies_to(self.path) else None
        if drip is not None:
            self._drip(status, body, content_type, drip)
            return
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            h.send_header(name, value)
        # Out of flight and counted before the answer goes out: once the client has it (the
        # headers alone for a HEAD), it may send its next request, or read the stats, before
        # this thread runs again.
        self.leave_flight()
        self.stats.answered(self.path, status, len(body), items)
        h.end_headers()
        if self.method != "HEAD":
            h.wfile.write(body)

    def _drip(self, status: int, body: bytes, content_type: str, drip: str) -> None:
        """A byte every ``faults.drip_seconds``: headers that never end, or the body."""
        self.close()
        h = self.handler
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode()
        if drip == "headers":
            h.wfile.write(head + b"X-Padding: ")
            payload = iter(lambda: b"a", None)  # the headers never end
        else:
            h.wfile.write(head + b"\r\n")
            payload = (body[i : i + 1] for i in range(len(body)))
        self.leave_flight()
        stopping = self.handler.server.stopping
        for byte in payload:
            if stopping.wait(self.faults.drip_seconds):
                return
            h.wfile.write(byte)
            h.wfile.flush()
        self.stats.answered(self.path, status, len(body))

    def error(
        self,
        status: int,
        exception: str,
        message: str,
        *,
        allow: str | None = None,
        **extra: str,
    ) -> None:
        """Answer the documented error body: exception, path, message, timestamp, status..."""
        headers = [("Allow", allow)] if allow else []
        if status in self.faults.html_error_statuses:
            self.send_bytes(status, proxy_page(status), "text/html", headers=headers)
            return
        style = self.faults.error_body
        now = self.clock()
        body: dict[str, object] = {
            "exception": exception,
            "path": self.path,
            "message": message,
            "timestamp": Times().utc(int(now)) if style.timestamp == "iso" else int(now * 1000),
            "status": str(status),
            "error_code": str(status) if style.error_code == "string" else status,
        }
        if style.extended_response:
            body["extendedResponse"] = {
                "message": message,
                "causes": [{"exception": exception, "message": message}],
            }
        body.update(extra)
        self.send(status, body, headers=headers)

    def token_error(self, message: str) -> None:
        """401 with the token error body (``error``, ``message``) and its challenge."""
        challenge = f'Bearer error="invalid_token", error_description="{message}"'
        self.send(
            401,
            {"error": "invalid_token", "message": message},
            headers=[("WWW-Authenticate", challenge)],
        )

    def method_not_allowed(self, allowed: str) -> None:
        self.close()  # the body of an unexpected method is not worth parsing
        self.error(
            405,
            "org.springframework.web.HttpRequestMethodNotSupportedException",
            f"Request method '{self.method}' not supported",
            allow=allowed,
        )


def proxy_page(status: int) -> bytes:
    """The HTML page a reverse proxy answers in place of the controller."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()
