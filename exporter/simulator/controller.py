"""The simulated controller: its life cycle, federation, tokens and endpoints (a route table)."""

from __future__ import annotations

import base64
import binascii
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
from exporter.simulator.listing import Collection, Listings, answer_failure
from exporter.simulator.server import Exchange, Handler, Server
from exporter.simulator.stats import Stats
from exporter.simulator.store import BACKUP_QUERY, GENERATED, Store, layout_from_dicts
from exporter.simulator.vocabulary import (
    CLIENT_ID,
    CONTENT_TYPE,
    REST_API_VERSION,
    SVTFS_VERSION,
)

log = logging.getLogger(__name__)

_DEFAULT_SPEC: Final = FederationSpec()
BACKUPS: Final = "/api/backups"


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
        self._tokens: dict[str, list[float]] = {}  # token -> [issued, last used]
        self._tokens_lock = threading.Lock()
        self._issued: list[str] = []
        self._stopping = threading.Event()
        self._listings = Listings(self.faults, self.stats, self._stopping, mode)
        self._server: Server | None = None
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        #: path -> endpoint; everything else answers 404.
        self.routes: dict[str, Endpoint] = {
            "/api/version": Endpoint(("GET",), self._version),
            "/api/oauth/token": Endpoint(("POST",), self._login),
            BACKUPS: Endpoint(("GET",), self._listing, login=True),
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
        self._listings.wake()
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
        # Not Random(seed): that stream generated the federation, so churn would mint the
        # very ids that already exist (duplicates in the listing).
        rng = random.Random(f"churn-{seed}")
        self._listings.replace([Collection(BACKUPS, "backups", store, BACKUP_QUERY, True)], rng)
        self.generated_at = now

    def backup_count(self) -> int:
        return len(self._listings.rows(BACKUPS)[1])

    def backups(self) -> list[dict[str, object]]:
        """A copy of the current backups, as full dicts (unsorted)."""
        layout, rows = self._listings.rows(BACKUPS)
        return [layout.as_dict(row) for row in rows]

    def backup_ids(self) -> set[str]:
        layout, rows = self._listings.rows(BACKUPS)
        get = layout.getter("id")
        if get is None:
            return set()
        return {str(get(row)) for row in rows}

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
        ex = Exchange(h, self.stats, self.faults, self.clock, CONTENT_TYPE)
        in_flight = self.stats.started(ex.path)
        try:
            ex.read_body()
            endpoint = self.routes.get(ex.path)
            if endpoint is None:
                ex.error(404, "Not Found", f"No handler found for {ex.path}")
            elif not endpoint.allows(ex.method):
                ex.method_not_allowed(", ".join(endpoint.methods))
            elif endpoint.login and 0 < self.faults.max_in_flight < in_flight:
                self.stats.refused(502)
                ex.error(
                    502,
                    "com.simplivity.restapi.exceptions.TooManyRequestsException",
                    "Too many simultaneous REST API requests; try again later",
                )
            elif not endpoint.login or self._check_token(ex):
                endpoint.handle(ex)
        except (ConnectionError, TimeoutError, ssl.SSLError, ValueError) as e:
            log.debug("request %s %s aborted: %s", ex.method, ex.path, e)
            ex.close()
        finally:
            ex.leave_flight()

    def _listing(self, ex: Exchange) -> None:
        self._listings.serve(ex, self.clock())

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
            answer_failure(ex, failure)
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
        ex.token_error(message)
        return False


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
