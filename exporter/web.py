"""The exporter's endpoints: ``/``, ``/metrics``, ``/-/healthy``, ``/-/ready``, ``/-/reload``.

Every handler only reads what the poller already published, so no request ever waits for a
controller. Serving them (connections, deadlines, TLS handshakes, password checks off the
workers) is :mod:`exporter.httpserver`'s; TLS, basic auth and security headers come from
``--web.config.file`` (exporter-toolkit's format, :mod:`exporter.webconfig`); the page at ``/``
is :mod:`exporter.landing`'s.

``POST /-/reload`` re-reads the configuration only with ``--web.enable-lifecycle``, as in
Prometheus (403 without it); SIGHUP always does. Every path answers 405, with ``Allow``, to a
method it does not take.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from exporter import __version__
from exporter.basicauth import BASIC_AUTH_CHALLENGE
from exporter.httpresponse import Body, Response
from exporter.httpserver import HTTPServer, Request, ServerSettings
from exporter.landing import landing_page
from exporter.model import ControllerStatus
from exporter.webconfig import WebConfig

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")
_PAGES = ("/", "/metrics", "/-/healthy", "/-/ready")


@dataclass(frozen=True)
class WebApp:
    """What the web layer needs from the rest of the exporter, as plain callables."""

    #: The text, whole or in chunks; argument: gzipped.
    render_metrics: Callable[[bool], Body]
    statuses: Callable[[], Sequence[ControllerStatus]]
    ready: Callable[[], bool]
    reload: Callable[[], tuple[bool, str]]
    description: str = "HPE SimpliVity backups"
    #: ``--web.enable-lifecycle``: whether ``POST /-/reload`` may reload.
    lifecycle: bool = False


class ExporterServer(HTTPServer):
    """Serves :class:`WebApp` on ``address`` with a :class:`WebConfig`'s TLS, auth and headers.

    ``options`` are :class:`~exporter.httpserver.HTTPServer`'s bounds (workers, deadlines...).
    """

    def __init__(
        self,
        address: tuple[str, int],
        app: WebApp,
        web_config: WebConfig | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            address, self.respond_to, server_name=f"simplivity-exporter/{__version__}", **options
        )
        self.app = app
        self.use_web_config(web_config or WebConfig())

    def use_web_config(self, web_config: WebConfig) -> None:
        """Serve with new TLS and auth settings from the next connection on (reloads)."""
        self.web_config = web_config
        self.settings = ServerSettings(
            ssl_context=web_config.ssl_context(),
            extra_headers=web_config.extra_headers,
            authorizer=web_config.basic_auth,
            challenge=BASIC_AUTH_CHALLENGE,
        )

    def respond_to(self, request: Request) -> Response:
        return respond(self.app, request)


def respond(app: WebApp, request: Request) -> Response:
    """The answer to an authorised request (the server has checked its credentials)."""
    path = request.path
    if path == "/-/reload":
        if request.method != "POST":
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, "Only POST.", Allow="POST")
        if not app.lifecycle:
            return _text(HTTPStatus.FORBIDDEN, "Lifecycle API is not enabled.")
        ok, message = app.reload()
        return _text(HTTPStatus.OK if ok else HTTPStatus.INTERNAL_SERVER_ERROR, message)
    if path not in _PAGES:
        return _text(HTTPStatus.NOT_FOUND, "Not found. Try /metrics.")
    if request.method not in ("GET", "HEAD"):
        return _text(HTTPStatus.METHOD_NOT_ALLOWED, "Only GET and HEAD.", Allow="GET, HEAD")
    if path == "/metrics":
        gzipped = accepts_gzip(request.headers.get("Accept-Encoding"))
        # Either way the answer depends on Accept-Encoding: a cache must know.
        headers = {"Vary": "Accept-Encoding"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        body = app.render_metrics(gzipped)
        return Response(HTTPStatus.OK, body, METRICS_CONTENT_TYPE, headers)
    if path == "/-/healthy":
        return _text(HTTPStatus.OK, "Healthy.")
    if path == "/-/ready":
        if app.ready():
            return _text(HTTPStatus.OK, "Ready.")
        message = "Not ready: waiting for the first poll of every controller."
        return _text(HTTPStatus.SERVICE_UNAVAILABLE, message)
    page = landing_page(app.statuses(), app.description, time.time())
    return Response(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")


def _text(status: HTTPStatus, message: str, **headers: str) -> Response:
    return Response(status, (message.rstrip("\n") + "\n").encode(), headers=headers)


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
