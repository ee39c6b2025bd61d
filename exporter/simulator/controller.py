"""The simulated controller: its life cycle, federation, tokens and endpoints (a route table)."""

from __future__ import annotations

import base64
import binascii
import gc
import logging
import random
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Final, Literal
from urllib.parse import parse_qs

from exporter.restapi import (
    BACKUPS,
    CLUSTERS,
    HOSTS,
    POLICIES,
    SCHEDULE_REPORT,
    VIRTUAL_MACHINES,
    Version,
    has_resource,
)
from exporter.simulator.catalog import BACKUP_LISTING, COLLECTIONS, INVENTORY, Paged
from exporter.simulator.churn import Churn
from exporter.simulator.faults import Faults
from exporter.simulator.federation import Federation, generate_federation
from exporter.simulator.life import Changes, FederationLife
from exporter.simulator.listing import Collection, Listings, answer_failure
from exporter.simulator.server import Exchange, Handler, Server
from exporter.simulator.spec import FederationSpec
from exporter.simulator.stats import Stats
from exporter.simulator.store import GENERATED, MISSING, Store, layout_from_dicts
from exporter.simulator.vocabulary import CLIENT_ID, REST_API_VERSION, SVTFS_VERSION

log = logging.getLogger(__name__)

_DEFAULT_SPEC: Final = FederationSpec()
#: The OmniStack version an older controller (before SimpliVity 4.0: REST API before 1.14)
#: reports.
OLD_SVTFS: Final = "3.7.7.240"
#: External stores came with SimpliVity 4.0 (REST API 1.14).
EXTERNAL_STORES_SINCE: Final = (1, 14)


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

    ``backups`` is a :class:`FederationSpec` (its whole federation is generated with
    ``now = clock()``: backups, VMs, policies, hosts, schedule report) or a list of backup
    dicts (served as given: any fields; no inventory, see :meth:`set_inventory`). ``clock``
    drives token expiry, the token answer's ``updated_at`` and the ``created_at`` of backups
    added by churn. ``churn`` (a :class:`~exporter.simulator.churn.Churn`) makes a generated
    federation live in time: before each request (and in :meth:`advance_to`), it catches up
    from the last moment to ``clock()`` (scheduled backups, state changes, expiry, the random
    events: see :mod:`exporter.simulator.churn`); while the clock stands still nothing
    changes. A test shares a :class:`~exporter.simulator.clock.ManualClock` with the exporter
    and moves it::

        clock = ManualClock()
        with SimulatedController(FederationSpec(vms=200), clock=clock, churn=Churn()) as c:
            ...  # poll
            clock.advance(300)
            ...  # the next poll's first request sees five minutes of changes
            c.changes()  # what happened, by kind

    ``mode="mva"`` omits ``SVTFS_Version`` and lets comma-separated filters
    work as OR. ``api_version`` is the REST API version it answers: it serves only the fields
    that version documents (:mod:`exporter.restapi`; before 1.11, for instance, no schedule
    report, 404 with the error body, and no ``host_name``), and a generated federation has no
    external stores before 1.14. ``strict`` (the default): a ``fields=`` name or ``sort``
    field the version does not document answers 400 in HPE's error body, as a real
    controller may; otherwise unknown ``fields=`` names are ignored.

    Endpoints: ``GET /api/version``; ``POST /api/oauth/token``; with a token, the paged
    collections of :data:`~exporter.simulator.catalog.COLLECTIONS` (``GET /api/backups``,
    ``/api/virtual_machines``, ``/api/policies``, ``/api/hosts``, ``/api/omnistack_clusters``)
    and the flat ``GET /api/policies/policy_schedule_report``. :attr:`routes` maps each path to
    its :class:`Endpoint`.

    How a collection reads its query (``/api/backups`` is the example):

    - ``offset`` >= 0 (default 0), ``limit`` 0..5000 (default 500); anything else is 400.
      ``count`` is the number of matching backups; a page past the end is empty.
    - ``sort`` any backup field HPE documents or a backup holds (default ``name``; another is
      400; in ``strict`` mode, only those of this version), ``order``
      ascending|descending (default descending). Ties are broken by ``id`` (descending order
      is the exact reverse of ascending), so paging order is total and stable.
    - ``fields=a,b``: only those fields (empty means all; unknown names: see ``strict``).
    - Filters: a parameter named like a backup field (``state``, ``type``,
      ``virtual_machine_name``, ``omnistack_cluster_name``, ``datastore_name``, ...) keeps the
      backups whose value equals it exactly (booleans as ``true``/``false``);
      ``created_after``/``created_before`` (``YYYY-MM-DDTHH:MM:SSZ``, else 400) keep
      ``created_at`` >= / <= the value. A comma in a filter value matches nothing ("ovc") or
      separates alternatives ("mva"). Other parameters (``case``, ...) are ignored.
    - Every listing reflects the backups at the time of the request (after churn).
    - ``/api/virtual_machines``: ``state`` defaults to ALIVE and takes a comma-separated list
      (``state=ALIVE,REMOVED,DELETED``) on every controller; no ``created_after``/``before``.
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
        api_version: str = REST_API_VERSION,
        strict: bool = True,
        churn: Churn | None = None,
    ) -> None:
        if mode not in ("ovc", "mva"):
            raise ValueError(f"mode must be 'ovc' or 'mva', not {mode!r}")
        version = _version_tuple(api_version)
        self.username = username
        self.password = password
        self.host = host
        self.port = port
        self.tls = tls
        self.clock = clock
        self.idle_timeout_seconds = idle_timeout_seconds
        self.absolute_timeout_seconds = absolute_timeout_seconds
        self.mode = mode
        self.api_version = api_version
        self.version: Version = version
        self.strict = strict
        self.has_schedule_report = has_resource(SCHEDULE_REPORT, version)
        self._content_type = f"application/vnd.simplivity.v{api_version}+json;charset=UTF-8"
        self._report: dict[str, object] = {}
        self._federation: Federation | None = None
        self.churn = churn
        self._life: FederationLife | None = None
        self.faults = Faults()
        self.stats = Stats()
        self.generated_at = 0.0
        self._tokens: dict[str, list[float]] = {}  # token -> [issued, last used]
        self._lock = threading.Lock()  # the federation's parts beside the listings
        self._tokens_lock = threading.Lock()
        self._issued: list[str] = []
        self._stopping = threading.Event()
        self._listings = Listings(self.faults, self.stats, self._stopping, mode, version, strict)
        self._server: Server | None = None
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        #: path -> endpoint; everything else answers 404.
        self.routes: dict[str, Endpoint] = {
            "/api/version": Endpoint(("GET",), self._version),
            "/api/oauth/token": Endpoint(("POST",), self._login),
        }
        for paged in COLLECTIONS:
            if has_resource(paged.path, version):
                self.routes[paged.path] = Endpoint(("GET",), self._listing, login=True)
        if self.has_schedule_report:
            self.routes[SCHEDULE_REPORT] = Endpoint(("GET",), self._schedule_report, login=True)
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
        """Replace the federation (a spec is generated with ``now = clock()``; it lives from then
        on if :attr:`churn` is set).

        Plain backup dicts come with an empty inventory and a schedule report of zeros, and do
        not live (churn needs the policies and VMs of a generated federation).
        """
        now = self.clock()
        if isinstance(backups, FederationSpec):
            if self.version < EXTERNAL_STORES_SINCE:
                backups = replace(backups, external_stores=False)
            federation, store = _generated(backups, now)
            seed = backups.seed
            records = federation.records
            report = federation.schedule_report
        else:
            federation = None
            store = Store(*layout_from_dicts(backups))
            seed = 0
            records, report = {}, _empty_report()
        for sort in ("id", "name"):  # the default order, and the one paging clients use
            store.ascending(sort)
        # Not Random(seed): that stream generated the federation, so churn would mint the
        # very ids that already exist (duplicates in the listing).
        rng = random.Random(f"churn-{seed}")
        collections = [Collection(BACKUP_LISTING, store)]
        collections += [self._collection(p, records.get(p.path, ())) for p in INVENTORY.values()]
        life = None
        if self.churn is not None and isinstance(backups, FederationSpec) and federation:
            # what expiry reads at every step, and what the time bounds of the queries of an
            # incremental poll are answered from: sorted once, then kept up to date
            store.ascending("expiration_time")
            store.ascending("created_at")
            life = FederationLife(backups, federation, self.churn, store, now)
        with self._lock:
            self._listings.replace(collections, rng)
            self._report = dict(report)
            self._federation = federation
            self._life = life
            self.generated_at = now

    def set_inventory(
        self,
        *,
        schedule_report: Mapping[str, object] | None = None,
        **records: Sequence[Mapping[str, object]],
    ) -> None:
        """Serve these records in place of the generated ones, each collection named by its
        envelope key (``virtual_machines=[...]``, ``omnistack_clusters=[...]``; the fields of
        this version)."""
        unknown = sorted(set(records) - set(INVENTORY))
        if unknown:
            raise TypeError(f"no inventory collection {unknown}; there are {sorted(INVENTORY)}")
        with self._lock:
            self._listings.update(self._collection(INVENTORY[k], v) for k, v in records.items())
            if schedule_report is not None:
                self._report = dict(schedule_report)
            self._federation = None
            self._life = None  # the generated inventory it lived on is gone

    def _collection(self, paged: Paged, records: Iterable[Mapping[str, object]]) -> Collection:
        store = Store(*layout_from_dicts(paged.as_served(records, self.version)))
        store.ascending("name")
        return Collection(paged, store)

    # -- time

    def advance_to(self, now: float | None = None) -> None:
        """Let the federation live up to ``now`` (default ``clock()``); what every request
        does first. Nothing happens without churn, or when time has not moved."""
        life = self._life
        if life is None:
            return
        when = self.clock() if now is None else now
        if int(when) <= life.time:
            return
        with self._lock, self._listings.locked() as collections:
            if self._life is not life:
                return
            changes = life.advance(when)
            if changes is not None:
                self._show(changes, collections)

    def change(self, kind: str, count: int = 1) -> int:
        """Make ``count`` random changes of ``kind`` now, the clock standing still (the names of
        :data:`Churn.RATES`: ``"deleted"``, ``"locked"``, ``"vm_renamed"``...): a test's way to
        put exactly the change it wants between two polls. Returns how many happened (one that
        finds nothing to change does not). Needs churn (any rates, :meth:`Churn.quiet` too)."""
        self.advance_to()
        with self._lock, self._listings.locked() as collections:
            life = self._life
            if life is None:
                raise RuntimeError("change() needs a generated federation with churn")
            happened, changes = life.change(kind, count)
            self._show(changes, collections)
        return happened

    def _show(self, changes: Changes, collections: dict[str, Collection]) -> None:
        """Make the inventory listings show what a step changed (under both locks)."""
        if changes.vms:
            store = collections[VIRTUAL_MACHINES].store
            get_id = store.layout.getter("id")
            assert get_id is not None
            served = INVENTORY["virtual_machines"].as_served(changes.vms, self.version)
            fresh = {str(record["id"]): record for record in served}
            old = [row for row in store.rows if get_id(row) in fresh]
            layout = store.layout
            new = [(*(r.get(n, MISSING) for n in layout.own), ()) for r in fresh.values()]
            store.apply(old, new)
        for key, records in (("policies", changes.policies), ("hosts", changes.hosts)):
            if records is not None:
                paged = INVENTORY[key]
                collections[paged.path] = self._collection(paged, records)
        if changes.schedule_report is not None:
            self._report = dict(changes.schedule_report)

    def changes(self) -> dict[str, int]:
        """How many times each kind of change happened since the federation was generated
        (the kinds of :data:`exporter.simulator.churn.KINDS`; empty without churn)."""
        self.advance_to()
        with self._lock:
            life = self._life
            return dict(life.applied) if life is not None else {}

    def _lived(self) -> bool:
        life = self._life
        return life is not None and life.time > life.start

    @property
    def planted(self) -> Mapping[str, str]:
        """Role VM name -> the protection status a correct exporter finds for it (ALIVE ones).

        Empty when the federation was not generated from a spec (or its inventory replaced).
        See :mod:`exporter.simulator.spec` for the roles and the statuses.
        """
        federation = self._federation
        return federation.planted if federation is not None and not self._lived() else {}

    @property
    def expected_statuses(self) -> Mapping[str, str]:
        """VM id -> the protection status a correct exporter finds, for every ALIVE VM."""
        federation = self._federation
        return federation.expected if federation is not None and not self._lived() else {}

    @property
    def short_recovery_windows(self) -> Mapping[str, frozenset[str]]:
        """VM id -> the destinations where a live VM older than its policy's recovery window
        has an oldest restore point younger than half of it (as the simulator judged them)."""
        federation = self._federation
        return federation.short_windows if federation is not None and not self._lived() else {}

    def records(self, path: str) -> list[dict[str, object]]:
        """A copy of the records a paged collection serves now (unsorted; every VM state), as
        full dicts."""
        self.advance_to()
        layout, rows = self._listings.rows(path)
        return [layout.as_dict(row) for row in rows]

    def virtual_machines(self) -> list[dict[str, object]]:
        return self.records(VIRTUAL_MACHINES)

    def policies(self) -> list[dict[str, object]]:
        return self.records(POLICIES)

    def hosts(self) -> list[dict[str, object]]:
        return self.records(HOSTS)

    def clusters(self) -> list[dict[str, object]]:
        return self.records(CLUSTERS)

    def schedule_report(self) -> dict[str, object]:
        self.advance_to()
        with self._lock:
            return dict(self._report)

    def backup_count(self) -> int:
        self.advance_to()
        return len(self._listings.rows(BACKUPS)[1])

    def backups(self) -> list[dict[str, object]]:
        """A copy of the current backups, as full dicts (unsorted)."""
        return self.records(BACKUPS)

    def backup_ids(self) -> set[str]:
        self.advance_to()
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
        ex = Exchange(h, self.stats, self.faults, self.clock, self._content_type)
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
        now = self.clock()
        self.advance_to(now)
        self._listings.serve(ex, now)

    def _schedule_report(self, ex: Exchange) -> None:
        self.advance_to()
        with self._lock:
            report = dict(self._report)
        self._listings.serve_object(ex, report)

    def _version(self, ex: Exchange) -> None:
        answer = {"REST_API_Version": self.api_version}
        if self.mode == "ovc":
            newer = self.version >= EXTERNAL_STORES_SINCE
            answer["SVTFS_Version"] = SVTFS_VERSION if newer else OLD_SVTFS
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
            description = "Bad credentials"
            if self.faults.echo_secrets:
                description = f"Bad credentials: {ex.body.decode('utf-8', 'replace')}"
            if self.faults.bad_credentials_status == 400:
                ex.send(400, {"error": "invalid_grant", "error_description": description})
            else:
                ex.send(
                    self.faults.bad_credentials_status,
                    {"error": "unauthorized", "error_description": description},
                )
            return
        now = self.clock()
        token = str(uuid.uuid4())
        bad = self.faults.take_bad_token()
        if bad == "crlf":
            token += "\r\nX-Injected: 1"
        elif bad == "oversized":
            token += "0" * 10_000
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


#: From this many backups on, a generated federation is frozen out of the garbage collector
#: (gc.freeze): its million tuples are never garbage, and each full collection would traverse
#: them all again (about a second at 1M backups, at random moments of a churn step or a request).
FREEZE_FROM: Final = 100_000


def _generated(spec: FederationSpec, now: float) -> tuple[Federation, Store]:
    """The federation of ``spec`` and the store of its backups, made without the garbage
    collector (they hold no cycle to collect; a large one's collections cost half its time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        federation = generate_federation(spec, now)
        store = Store(GENERATED, federation.rows)
    finally:
        if enabled:
            gc.enable()
    if len(store.rows) >= FREEZE_FROM:
        gc.freeze()
    return federation, store


def _version_tuple(version: str) -> Version:
    try:
        parts = tuple(int(part) for part in version.split("."))
    except ValueError:
        parts = ()
    if len(parts) != 2:
        raise ValueError(f"api_version must look like 1.25, not {version!r}")
    return parts[0], parts[1]


def _empty_report() -> dict[str, object]:
    spec = _DEFAULT_SPEC
    return {
        "daily_backup_rate": 0,
        "daily_backup_rate_limit": spec.daily_backup_rate_limit,
        "backup_rate_level": 0,
        "projected_retained_backups": 0,
        "retained_backups_limit": spec.retained_backups_limit,
        "projected_retained_backups_level": 0,
    }


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
