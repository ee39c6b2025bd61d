"""The HTTP side: ``/``, ``/metrics``, ``/-/healthy``, ``/-/ready`` and ``POST /-/reload``.

Every handler only reads what the poller already published, so no request ever waits for a
controller. TLS and basic auth come from ``--web.config.file`` (exporter-toolkit's format).
"""

from __future__ import annotations

import html
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter import __version__
from exporter.model import ControllerStatus
from exporter.webconfig import BASIC_AUTH_CHALLENGE, WebConfig

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class WebApp:
    """What the web layer needs from the rest of the exporter, as plain callables."""

    render_metrics: Callable[[bool], bytes]  # argument: gzipped
    statuses: Callable[[], Sequence[ControllerStatus]]
    ready: Callable[[], bool]
    reload: Callable[[], tuple[bool, str]]
    description: str = "HPE SimpliVity backups"


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        app: WebApp,
        web_config: WebConfig | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.use_web_config(web_config or WebConfig())
        super().__init__(address, _Handler)

    def use_web_config(self, web_config: WebConfig) -> None:
        """Serve with new TLS and auth settings from the next connection on (reloads)."""
        self.web_config = web_config
        self.ssl_context = web_config.ssl_context()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, peer = super().get_request()
        if self.ssl_context is not None:
            # The handshake happens in the handler's thread: a slow client can't stall accept().
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, peer

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        scheme = "https" if self.ssl_context else "http"
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{port}"

    def serve_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="web", daemon=True)
        thread.start()
        return thread


def parse_listen_address(value: str) -> tuple[str, int]:
    """``:10025``, ``127.0.0.1:10025`` or ``[::1]:10025`` as (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. :10025 or 127.0.0.1:10025)")
    host = host.strip("[]")
    return (host or "0.0.0.0", int(port))


class _Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: without this, Nagle's algorithm holds the body until
    # the client's delayed ACK, about 40 ms on every keep-alive request.
    disable_nagle_algorithm = True
    server_version = f"simplivity-exporter/{__version__}"
    timeout = 30  # an idle or slow client loses its connection, not a thread forever

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
        ok, message = self.server.app.reload()
        status = HTTPStatus.OK if ok else HTTPStatus.INTERNAL_SERVER_ERROR
        self._send(status, (message.rstrip("\n") + "\n").encode())

    def _route(self, *, head: bool) -> None:
        if not self._authorized():
            return
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
            body = app.render_metrics(gzipped)
            headers = {"Content-Encoding": "gzip"} if gzipped else {}
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
        if self.server.web_config.authenticate(self.headers.get("Authorization")):
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
        for name, value in self.server.web_config.extra_headers.items():
            self.send_header(name, value)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def landing_page(statuses: Sequence[ControllerStatus], description: str, now: float) -> str:
    """The ``/`` page: what this is, how each controller is doing, and where to go next."""
    rows = "\n".join(_landing_row(status, now) for status in statuses)
    if not rows:
        rows = '<tr><td colspan="7">No controllers configured for this shard.</td></tr>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>SimpliVity exporter</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
.ok {{ color: #1a7f37; font-weight: 600; }} .failed {{ color: #cf222e; font-weight: 600; }}
.pending {{ color: #9a6700; }}
</style></head>
<body>
<h1>SimpliVity exporter</h1>
<p>Prometheus exporter for {html.escape(description)}, version {html.escape(__version__)}.</p>
<p><a href="/metrics">Metrics</a> · <a href="/-/healthy">Health</a> ·
<a href="/-/ready">Readiness</a></p>
<table>
<tr><th>Controller</th><th>URL</th><th>Last poll</th><th>Result</th><th>Duration</th>
<th>Backups seen</th><th>Last error</th></tr>
{rows}
</table>
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
