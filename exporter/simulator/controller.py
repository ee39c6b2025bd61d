"""The simulated controller: its life cycle, federation, tokens and endpoints (a route table)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal
from urllib.parse import parse_qs

from exporter.simulator.faults import Faults
from exporter.simulator.federation import FederationSpec, generate_rows
from exporter.simulator.server import Exchange, Handler, Server
from exporter.simulator.stats import Stats
from exporter.simulator.store import (
    GENERATED,
    BadRequest,
    Layout,
    Store,
    layout_from_dicts,
    parse_query,
    to_json,
)
from exporter.simulator.vocabulary import (
    CLIENT_ID,
    CONTENT_TYPE,
    JDBC_MESSAGE,
    REST_API_VERSION,
    SVTFS_VERSION,
)

log = logging.getLogger(__name__)

_DEFAULT_SPEC: Final = FederationSpec()


@dataclass(frozen=True)
class Endpoint:
    """One path of the API: the methods it answers ("GET" answers HEAD too) and its handler.

    ``login`` endpoints check the Bearer token (after the method) before the handler runs.
    """

    methods: tuple[str, ...]
    handle: Callable[[Exchange], None]
    login: bool = False

    def allows(self, method: str) -> bool:
        return method in self.methods or (method == "HEAD" and "GET" in self.methods)


class SimulatedController:
    """A simulated SimpliVity controller (OVC or MVA) serving one federation's backups.

    ``backups`` is a :class:`FederationSpec` (generated with ``now = clock()``) or a list of
    backup dicts (served as given: any fields). ``clock`` drives token expiry, the token
    answer's ``updated_at`` and the ``created_at`` of backups added by churn. ``mode="mva"``
    omits ``SVTFS_Version`` and lets comma-separated filters work as OR.

    How ``GET /api/backups`` reads its query:

    - ``offset`` >= 0 (default 0), ``limit`` 0..5000 (default 500); anything else is 400.
      ``count`` is the number of matching backups; a page past the end is empty.
    - ``sort`` any backup field (default ``name``; an unknown one is 400), ``order``
      ascending|descending (default descending). Ties are broken by ``id`` (descending order
      is the exact reverse of ascending), so paging order is total and stable.
    - ``fields=a,b``: only those fields (unknown names are ignored; empty means all).
    - Filters: a parameter named like a backup field (``state``, ``type``,
      ``virtual_machine_name``, ``omnistack_cluster_name``, ``datastore_name``, ...) keeps the
      backups whose value equals it exactly (booleans as ``true``/``false``);
      ``created_after``/``created_before`` (``YYYY-MM-DDTHH:MM:SSZ``, else 400) keep
      ``created_at`` >= / <= the value. A comma in a filter value matches nothing ("ovc") or
      separates alternatives ("mva"). Other parameters (``case``, ...) are ignored.
    - Every listing reflects the backups at the time of the request (after churn).
    """

    def __init__(
        self,
        backups: Sequence[Mapping[str, object]] | FederationSpec = _DEFAULT_SPEC,
        *,
        username: str = "administrator@vsphere.local",
        password: str = "simulator-password",  # noqa: S107
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        idle_timeout_seconds: float = 600,
        absolute_timeout_seconds: float = 86400,
        mode: Literal["ovc", "mva"] = "ovc",
    ) -> None:
        if mode not in ("ovc", "mva"):
            raise ValueError(f"mode must be 'ovc' or 'mva', not {mode!r}")
        self.username = username
        self.password = password
        self.host = host
        self.port = port
        self.tls = tls
        self.clock = clock
        self.idle_timeout_seconds = idle_timeout_seconds
        self.absolute_timeout_seconds = absolute_timeout_seconds
        self.mode = mode
        self.faults = Faults()
        self.stats = Stats()
        self.generated_at = 0.0
        self._lock = threading.Lock()
        self._tokens: dict[str, list[float]] = {}  # token -> [issued, last used]
        self._tokens_lock = threading.Lock()
        self._issued: list[str] = []
        self._rng = random.Random(0)
        self._store = Store(Layout((), (), sparse=False), [])
        self._stopping = threading.Event()
        self._slots = threading.Condition()
        self._slots_busy = 0
        self._server: Server | None = None
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        #: path -> endpoint; everything else answers 404.
        self.routes: dict[str, Endpoint] = {
            "/api/version": Endpoint(("GET",), self._version),
            "/api/oauth/token": Endpoint(("POST",), self._login),
            "/api/backups": Endpoint(("GET",), self._backups, login=True),
        }
        self.set_backups(backups)

    # -- life cycle

    def start(self) -> SimulatedController:
        """Bind and serve in daemon threads; returns self."""
        if self._server is not None:
            raise RuntimeError("already started")
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(*self.tls)
        self._stopping.clear()
        self._server = Server((self.host, self.port), self._serve, self._stopping, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"simulator-{self._server.server_address[1]}",
            daemon=True,
        )
        host, port = self._server.server_address[:2]
        host = f"[{host!s}]" if ":" in str(host) else str(host)
        self._url = f"{'https' if self.tls else 'http'}://{host}:{port}"
        self._thread.start()
        log.info("simulated controller listening on %s", self._url)
        return self

    def stop(self) -> None:
        """Stop serving: close the socket and end in-flight answers (hanging, endless) at once."""
        server, self._server = self._server, None
        self._stopping.set()
        with self._slots:
            self._slots.notify_all()
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SimulatedController:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` or ``https://...``; set by start() (and kept after stop())."""
        if self._url is None:
            raise RuntimeError("the simulated controller has not been started")
        return self._url

    # -- the federation

    def set_backups(self, backups: Sequence[Mapping[str, object]] | FederationSpec) -> None:
        """Replace the federation (a spec is generated with ``now = clock()``)."""
        now = self.clock()
        if isinstance(backups, FederationSpec):
            store = Store(GENERATED, generate_rows(backups, now))
            seed = backups.seed
        else:
            store = Store(*layout_from_dicts(backups))
            seed = 0
        for sort in ("id", "name"):  # the default order, and the one paging clients use
            store.ascending(sort)
        with self._lock:
            self._store = store
            # Not Random(seed): that stream generated the federation, so churn would mint the
            # very ids that already exist (duplicates in the listing).
            self._rng = random.Random(f"churn-{seed}")
            self.generated_at = now

    def backup_count(self) -> int:
        with self._lock:
            return len(self._store.rows)

    def backups(self) -> list[dict[str, object]]:
        """A copy of the current backups, as full dicts (unsorted)."""
        with self._lock:
            layout, rows = self._store.layout, list(self._store.rows)
        return [layout.as_dict(row) for row in rows]

    def backup_ids(self) -> set[str]:
        with self._lock:
            get = self._store.layout.getter("id")
            if get is None:
                return set()
            return {str(get(row)) for row in self._store.rows}

    # -- tokens

    def revoke_tokens(self) -> None:
        """Forget every token: the next request with one gets 401 "Invalid access token"."""
        with self._tokens_lock:
            self._tokens.clear()

    def expire_tokens(self) -> None:
        """Make every token idle-expired: the next request with one gets 401 "expired"."""
        with self._tokens_lock:
            for times in self._tokens.values():
                times[1] = float("-inf")

    def issued_tokens(self) -> list[str]:
        """Every access token handed out, in order (revoked and expired ones too)."""
        with self._tokens_lock:
            return list(self._issued)

    # -- serving

    def _serve(self, h: Handler) -> None:
        ex = Exchange(h, self.stats, self.clock)
        self.stats.started(ex.path)
        try:
            ex.read_body()
            endpoint = self.routes.get(ex.path)
            if endpoint is None:
                ex.error(404, "Not Found", f"No handler found for {ex.path}")
            elif not endpoint.allows(ex.method):
                ex.method_not_allowed(", ".join(endpoint.methods))
            elif not endpoint.login or self._check_token(ex):
                endpoint.handle(ex)
        except (ConnectionError, TimeoutError, ssl.SSLError, ValueError) as e:
            log.debug("request %s %s aborted: %s", ex.method, ex.path, e)
            ex.close()
        finally:
            ex.leave_flight()

    def _version(self, ex: Exchange) -> None:
        answer = {"REST_API_Version": REST_API_VERSION}
        if self.mode == "ovc":
            answer["SVTFS_Version"] = SVTFS_VERSION
        ex.send(200, answer)

    def _login(self, ex: Exchange) -> None:
        if not _client_credentials_ok(ex.header("Authorization")):
            self.stats.login(False)
            ex.error(
                401,
                "org.springframework.security.authentication.BadCredentialsException",
                "Bad Credentials",
                error="unauthorized",
            )
            return
        failure = self.faults.take_login_failure()
        if failure is not None:
            self.stats.login(False)
            self._failure(ex, failure, "")
            return
        form = parse_qs(ex.query, keep_blank_values=True)
        try:
            form.update(
                parse_qs(ex.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            )
        except UnicodeDecodeError:
            form = {}

        def one(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        grant = one("grant_type")
        if grant != "password":
            self.stats.login(False)
            ex.send(
                400,
                {
                    "error": "unsupported_grant_type" if grant else "invalid_request",
                    "error_description": f"Unsupported grant type: {grant}"
                    if grant
                    else "Missing grant type",
                },
            )
            return
        if one("username") != self.username or one("password") != self.password:
            self.stats.login(False)
            if self.faults.bad_credentials_status == 400:
                ex.send(400, {"error": "invalid_grant", "error_description": "Bad credentials"})
            else:
                ex.send(
                    self.faults.bad_credentials_status,
                    {"error": "unauthorized", "error_description": "Bad credentials"},
                )
            return
        now = self.clock()
        token = str(uuid.uuid4())
        with self._tokens_lock:
            self._tokens[token] = [now, now]
            self._issued.append(token)
        self.stats.login(True)
        ex.send(
            200,
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": max(int(self.absolute_timeout_seconds) - 1, 0),
                "scope": "read write",
                "updated_at": int(now * 1000),
            },
        )

    def _check_token(self, ex: Exchange) -> bool:
        """True if the request carries a live token (refreshing its idle time); else answers 401."""
        scheme, _, token = ex.header("Authorization").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        now = self.clock()
        with self._tokens_lock:
            times = self._tokens.get(token)
            if times is None:
                message = f"Invalid access token: {token}"
            elif (
                now - times[1] > self.idle_timeout_seconds
                or now - times[0] > self.absolute_timeout_seconds
            ):
                message = f"Access token expired due to inactivity: {token}"
            else:
                times[1] = now
                return True
        _token_error(ex, message)
        return False

    def _failure(self, ex: Exchange, status: int, token: str) -> None:
        if status == 500:
            ex.error(500, "org.springframework.jdbc.CannotGetJdbcConnectionException", JDBC_MESSAGE)
        elif status == 401:
            _token_error(ex, f"Access token expired due to inactivity: {token}")
        else:
            exception = "com.simplivity.restapi.exceptions.ServiceException"
            ex.error(status, exception, "Injected failure")

    def _backups(self, ex: Exchange) -> None:
        try:
            with self._lock:
                query = parse_query(ex.query, self._store.layout.fields)
        except BadRequest as e:
            ex.error(400, "com.simplivity.restapi.exceptions.InvalidParameterException", str(e))
            return
        self.stats.page(query.offset, query.limit)
        faults = self.faults
        if faults.take_disconnect():
            ex.close()
            return
        failure = faults.take_failure()
        if failure is not None:
            token = ex.header("Authorization").partition(" ")[2].strip()
            self._failure(ex, failure, token)
            return
        if faults.hang_seconds > 0 and self._stopping.wait(faults.hang_seconds):
            ex.close()
            return
        if not self._enter_slot():
            ex.close()
            return
        try:
            with self._lock:
                store = self._store
                store.churn(
                    faults.churn_create_per_request,
                    faults.churn_expire_per_request,
                    self._rng,
                    self.clock(),
                )
                matching = store.matching(query, self.mode)
                count = len(matching)
                if query.descending:
                    end = count - query.offset
                    page = matching[max(end - query.limit, 0) : max(end, 0)][::-1]
                else:
                    page = matching[query.offset : query.offset + query.limit]
            cost = faults.request_cost_seconds + faults.object_cost_seconds * len(page)
            if cost > 0 and self._stopping.wait(cost):
                ex.close()
                return
        finally:
            self._leave_slot()
        malformed = faults.malformed
        if malformed == "endless":
            self._endless(ex)
            return
        if malformed == "not_json":
            html = (
                b"<html><head><title>Error</title></head><body><h1>HTTP Status 503 - Service"
                b" Unavailable</h1><p>The server is temporarily unable to serve requests.</p>"
                b"</body></html>"
            )
            ex.send_bytes(200, html, "text/html;charset=utf-8")
            return
        if malformed == "short_page" and len(page) >= 2:
            page = page[: len(page) // 2]
        elif malformed == "empty_page":
            page = []
        if malformed in ("size_as_string", "missing_created_at"):
            items = store.layout.renderer(query.fields)(page)
            for item in items:
                if malformed == "missing_created_at":
                    item.pop("created_at", None)
                elif "size" in item:
                    item["size"] = str(item["size"])
            listing = to_json(items)
        else:
            fragments = store.fragments.setdefault(query.fields, {})
            listing = store.layout.json_renderer(query.fields, fragments)(page)
        if malformed == "count_too_large":
            count += 1000
        body = (
            f'{{"offset":{query.offset},"count":{count},"limit":{query.limit},"backups":{listing}}}'
        ).encode()
        if malformed == "truncated":
            body = body[: len(body) // 2]
        ex.send(200, body, backups=len(page))

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

    def _endless(self, ex: Exchange) -> None:
        ex.close()
        h = ex.handler
        h.send_response(200)
        h.send_header("Content-Type", CONTENT_TYPE)
        h.send_header("Connection", "close")
        h.end_headers()
        self.stats.answered(200, 0)
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
        h.wfile.write(b'{"offset":0,"count":1,"limit":500,"backups":[')
        while not self._stopping.is_set() and self.faults.malformed == "endless":
            h.wfile.write(chunk)
            self.stats.streamed(len(chunk))
            if self._stopping.wait(0.01):
                break


def _token_error(ex: Exchange, message: str) -> None:
    challenge = f'Bearer error="invalid_token", error_description="{message}"'
    ex.send(
        401,
        {"error": "invalid_token", "message": message},
        headers=[("WWW-Authenticate", challenge)],
    )


def _client_credentials_ok(header: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return decoded == f"{CLIENT_ID}:"
