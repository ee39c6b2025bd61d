"""The SimpliVity REST client, HTTP only: login and token reuse, deadlines, retries and TLS.

It gets one page of a collection at a time (:meth:`SimplivityClient.get_page`); paging through
a whole collection is :mod:`exporter.scan`'s job.

Everything that can go wrong talking to a controller surfaces as one
:class:`~exporter.model.SimplivityError` subclass whose ``reason`` is the value of the
``reason`` label of ``simplivity_poll_errors_total``. Error messages are written for operators
and never hold a password or a token: what the controller writes is redacted
(:meth:`SimplivityClient.redact`) before it goes into one.

What bounds a poll (:meth:`SimplivityClient.begin_poll`): every exchange has a wall-clock
deadline (``timeout_seconds``: connecting, headers and body, whatever the framing, kept by
:mod:`exporter.deadlines`), connecting alone a shorter one
(``connect_timeout_seconds``); the poll as a whole has its own (``deadline``), and one budget of
retries for failures without an answer (timeouts, connections), shared by its threads. A login
is shared by every reader: one at a time, and when it fails, the poll's other readers fail with
it; refused credentials are not tried again before a back-off (see :meth:`_check_backoff`).
"""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from functools import partial
from urllib.parse import quote, quote_plus, urlsplit

import requests
import urllib3.exceptions

from exporter import __version__
from exporter.config import ControllerConfig, PollConfig
from exporter.deadlines import DeadlineAdapter, Exchange
from exporter.model import (
    AuthError,
    Cancelled,
    ConnectError,
    DecodeError,
    HTTPStatusError,
    PageRequest,
    RequestTimeout,
    SimplivityError,
    TLSError,
    decode_json,
    looks_like_html,
)

log = logging.getLogger(__name__)

# A token dies after 10 minutes idle and 24 hours after login; renew a little before either.
TOKEN_IDLE_SECONDS = 600.0
TOKEN_LIFETIME_SECONDS = 86400.0
TOKEN_MARGIN_SECONDS = 60.0
MAX_BODY_BYTES = 64 * 1024 * 1024
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: "Too many simultaneous requests": HPE documents 502 for it; 503 and 429 say the same.
_THROTTLING_STATUSES = frozenset({429, 502, 503})
#: The longest wait between two tries of a request (before jitter, which adds up to half).
MAX_RETRY_DELAY = 30.0
#: A longer access token is not sent (real ones are 36-character UUIDs).
MAX_TOKEN_CHARS = 4096
#: The part of a poll interval by which the scheduler may move a poll (its jitter): a login
#: back-off ends this much early, so that "one poll interval" never waits for two.
SCHEDULE_JITTER = 0.1
REDACTED = "********"
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")


def worst_case_poll_seconds(poll: PollConfig, *, connects: bool, backoff: float = 0.5) -> float:
    """How long a poll of a controller that never answers takes, at most: every try of the
    poll's retry budget times out (connecting, or waiting for the answer when ``connects``),
    with the longest waits between tries; never longer than the poll's deadline."""
    each = poll.timeout_seconds
    if not connects:
        each = min(each, poll.connect_timeout_seconds)
    waits = sum(min(MAX_RETRY_DELAY, backoff * 2.0**k) * 1.5 for k in range(poll.max_retries))
    return min(poll.deadline, (poll.max_retries + 1) * each + waits)


class SimplivityClient:
    """Talks to one controller. Safe to use from several threads."""

    def __init__(
        self,
        controller: ControllerConfig,
        poll: PollConfig,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        stop: threading.Event | None = None,
        backoff_seconds: float = 0.5,
    ) -> None:
        self.controller = controller
        self.poll = poll
        self._clock = clock
        self._stop = stop or threading.Event()
        self._backoff_seconds = backoff_seconds
        tls = controller.tls
        # Passed with every request too, not only set on the session.
        self._verify: str | bool = tls.ca_file or not tls.insecure_skip_verify
        self._session = session or self._new_session()
        # The environment (HTTPS_PROXY / NO_PROXY, REQUESTS_CA_BUNDLE when verifying against
        # the system's CAs) is read here, once: requests would read it, and look for ~/.netrc,
        # at every request (a millisecond of the interpreter each), and a ~/.netrc entry for
        # the controller would replace the bearer token with its password.
        environment = self._session.merge_environment_settings(
            controller.url, {}, None, self._verify, None
        )
        self._proxies: MutableMapping[str, str] = environment["proxies"]
        verify = environment["verify"]
        if isinstance(verify, str | bool):  # never None: ours is a path or a bool
            self._verify = verify
        self._session.trust_env = False
        self._token: str | None = None
        self._token_obtained = 0.0
        self._token_used = 0.0
        self._token_lock = threading.Lock()  # one login at a time, for every reader
        self._recent_tokens: tuple[str, ...] = ()  # redacted wherever they show
        self._logins = 0
        # The poll under way (begin_poll): its deadline, the retries left of its budget, and
        # how its login failed, if it did (the poll's other readers fail the same way).
        self._poll_lock = threading.Lock()
        self._poll_deadline: float | None = None
        self._poll_started = self._clock()
        self._retries_left = poll.max_retries
        self._login_failure: SimplivityError | None = None
        # Refused credentials: how often in a row, when, and how long until the next try.
        self._refusals = 0
        self._refused_status = 0
        self._refused_at = 0.0
        self._backoff = 0.0
        self._speaks_tls: bool | None = None  # for an http:// URL that got no answer
        self._throttled = 0
        self._throttled_lock = threading.Lock()

    @property
    def logins(self) -> int:
        """How many times this client has logged in (each login opens a hypervisor session)."""
        return self._logins

    @property
    def login_backoff_seconds(self) -> float:
        """How long logins pause after the controller refused the credentials: 0 when it did
        not, else one poll interval, doubling at each refusal in a row, up to
        ``max_login_backoff_seconds``."""
        return self._backoff

    def begin_poll(self, deadline_seconds: float) -> None:
        """A poll starts: every request from now on ends within ``deadline_seconds``, and the
        poll's requests share one budget of ``max_retries`` retries for failures without an
        answer (timeouts, connections), whatever thread makes them.

        A client used without it has no poll deadline and one retry budget for its life.
        """
        with self._poll_lock:
            self._poll_deadline = time.monotonic() + deadline_seconds
            self._poll_started = self._clock()
            self._retries_left = self.poll.max_retries
        with self._token_lock:
            self._login_failure = None

    def redact(self, text: str) -> str:
        """``text`` without the password, the recent tokens, or anything after ``Bearer ``:
        for whatever the controller wrote, before it is stored, logged or shown."""
        secrets = [self.controller.password.reveal(), *self._recent_tokens]
        for secret in secrets:
            for form in _written_forms(secret):
                text = text.replace(form, REDACTED)
        return _BEARER.sub(rf"\g<1>{REDACTED}", text)

    @property
    def throttled(self) -> int:
        """How many answers so far said that too many requests were in flight (502, 503, 429),
        retried or not: a scanner asks for less at once when this grows."""
        return self._throttled

    def close(self) -> None:
        self._stop.set()  # a request still running stops before its next try
        self._session.close()

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        tls = self.controller.tls
        if tls.insecure_skip_verify:
            log.warning(
                "controller %s: TLS certificate verification is OFF (insecure_skip_verify)",
                self.controller.name,
                extra={"controller": self.controller.name, "url": self.controller.url},
            )
        session.verify = self._verify
        # One connection per request in flight: the scan's and the inventory's.
        pool_size = self.poll.max_concurrency + 1
        session.mount("https://", DeadlineAdapter(tls.server_name, pool_size))
        session.mount("http://", DeadlineAdapter(None, pool_size))
        session.headers["User-Agent"] = f"simplivity-exporter/{__version__}"
        session.headers["Accept"] = "application/json"
        session.trust_env = True  # read once, in __init__: proxies like every HTTP client
        return session

    # -- requests -----------------------------------------------------------------------------

    def get_page(self, page: PageRequest, *, retry_too_slow: bool = True) -> bytes:
        """One page of a collection, its body undecoded (see :mod:`exporter.scan`).

        ``retry_too_slow=False``: a 504 (the controller gave up after 60 s) raises
        :class:`~exporter.model.HTTPStatusError` at once, for a caller that will ask for a
        smaller page instead of the same one again.
        """
        params = {"offset": str(page.offset), "limit": str(page.limit)}
        if page.fields:
            params["fields"] = ",".join(page.fields)
        if page.sort is not None:
            params["sort"] = page.sort
            params["order"] = page.order
        params.update(page.filters)
        final = frozenset() if retry_too_slow else frozenset({504})
        return self.get_body(page.path, params, final=final)

    def get_body(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        final: frozenset[int] = frozenset(),
    ) -> bytes:
        """GET an authenticated API path, logging in as needed; retries transient failures
        (but not the statuses in ``final``)."""
        for relogged in (False, True):
            token = self._current_token()
            started = self._clock()
            headers = {"Authorization": f"Bearer {token}"}
            send = partial(self._send, "GET", path, params, headers)
            status, body = self._retrying(path, send, final)
            if status == 401 and not relogged:
                # The token died (idle, absolute lifetime, or revoked): log in, retry once.
                log.info(
                    "controller %s: token refused, logging in again",
                    self.controller.name,
                    extra={"controller": self.controller.name, "path": path},
                )
                self._forget_token(token)
                continue
            if status == 401:
                raise AuthError(f"{path}: the controller refused a fresh access token")
            if status != 200:
                raise self._status_error(path, status, body)
            self._token_used = max(self._token_used, started)
            return body
        raise AssertionError("unreachable: the second round returns or raises")

    def get_without_login(self, path: str) -> bytes:
        """GET a path that needs no login (``/api/version``), with the same retries and errors
        as :meth:`get_body`: whether the controller answers at all, before any login."""
        status, body = self._retrying(path, partial(self._send, "GET", path))
        if status != 200:
            raise self._status_error(path, status, body)
        return body

    def _retrying(
        self,
        path: str,
        send: Callable[[], tuple[int, bytes]],
        final: frozenset[int] = frozenset(),
    ) -> tuple[int, bytes]:
        """Repeat ``send`` while it fails transiently, with exponential, jittered backoff.

        Returns the first answer that is not transient (or whose status is in ``final``), or
        the last one once the retries are spent; raises the last timeout or connection error
        likewise.
        """
        failures = 0
        while True:
            if self._stop.is_set():
                # Closed by a reload or shutdown: a request now would reopen a connection on
                # the closed session that nobody closes (and poll a replaced controller).
                raise Cancelled()
            self._check_poll_deadline(path)
            try:
                status, body = send()
            except (RequestTimeout, ConnectError) as err:
                failure: SimplivityError = err
                # No answer: a retry costs a whole timeout, so the poll's budget pays for it.
                spent = not self._take_retry()
            else:
                if status in _THROTTLING_STATUSES:
                    with self._throttled_lock:
                        self._throttled += 1
                if status not in _TRANSIENT_STATUSES or status in final:
                    return status, body
                failure = self._status_error(path, status, body)
                spent = False
            failures += 1
            delay = min(MAX_RETRY_DELAY, self._backoff_seconds * 2 ** (failures - 1))
            delay *= random.uniform(0.5, 1.5)
            if spent or failures > self.poll.max_retries or self._past_deadline(delay):
                if isinstance(failure, HTTPStatusError):
                    return failure.status, body
                raise failure
            context: dict[str, object] = {
                "controller": self.controller.name,
                "path": path,
                "reason": failure.reason,
            }
            if isinstance(failure, HTTPStatusError):
                context["status"] = failure.status
            log.info(
                "controller %s: %s; retry %d of %d in %.1f s",
                self.controller.name,
                failure,
                failures,
                self.poll.max_retries,
                delay,
                extra={
                    **context,
                    "retry": failures,
                    "retries": self.poll.max_retries,
                    "delay_seconds": round(delay, 3),
                },
            )
            if self._stop.wait(delay):
                raise Cancelled()

    def _take_retry(self) -> bool:
        with self._poll_lock:
            if self._retries_left <= 0:
                return False
            self._retries_left -= 1
            return True

    def _past_deadline(self, delay: float) -> bool:
        """The poll's deadline comes before a retry after ``delay`` could even start."""
        deadline = self._poll_deadline
        return deadline is not None and time.monotonic() + delay >= deadline

    def _check_poll_deadline(self, path: str) -> None:
        if self._past_deadline(0):
            raise self._timeout(path, cut=True)

    def _current_token(self) -> str:
        with self._token_lock:
            now = self._clock()
            if (
                self._token is not None
                and now - self._token_used < TOKEN_IDLE_SECONDS - TOKEN_MARGIN_SECONDS
                and now - self._token_obtained < TOKEN_LIFETIME_SECONDS - TOKEN_MARGIN_SECONDS
            ):
                return self._token
            if self._login_failure is not None:
                raise self._login_failure  # this poll's login failed: no second try
            self._check_backoff(now)
            try:
                token = self._login()
            except SimplivityError as err:
                self._login_failure = err
                raise
            self._token = token
            self._recent_tokens = (*self._recent_tokens[-3:], token)
            self._token_obtained = self._token_used = self._clock()
            return token

    def _forget_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

    def _check_backoff(self, now: float) -> None:
        """No login while refused credentials are backed off: each refusal would count
        towards locking the account (directories lock one after a few failures)."""
        if self._refusals and self._refused_at + self._backoff > now:
            raise self._refusal(now)

    def _refused(self, status: int) -> AuthError:
        """Count a refusal of the credentials and start (or double) the back-off."""
        self._refusals += 1
        self._refused_status = status
        interval = self.poll.interval_seconds
        longest = max(interval, self.poll.max_login_backoff_seconds)
        self._backoff = min(longest, interval * 2 ** min(self._refusals - 1, 32))
        # From the poll's start, less the scheduler's jitter: the back-off's first step ends
        # by the next poll, whenever it fires.
        now = self._clock()
        started = self._poll_started if self._poll_deadline is not None else now
        self._refused_at = started - interval * SCHEDULE_JITTER
        return self._refusal(now)

    def _refusal(self, now: float) -> AuthError:
        """The same words at the refusal and at every poll of its back-off."""
        wait = self._refused_at + self._backoff - now
        return AuthError(
            f"the controller refused the credentials of user {self.controller.username!r} "
            f"(HTTP {self._refused_status}); next attempt at the first poll after "
            f"{_wall_clock(wait)}, or reload after fixing the password"
        )

    def _login(self) -> str:
        form = {
            "grant_type": "password",
            "username": self.controller.username,
            "password": self.controller.password.reveal(),
        }
        status, body = self._retrying(
            "/api/oauth/token",
            lambda: self._send("POST", "/api/oauth/token", data=form, auth=("simplivity", "")),
        )
        self._logins += 1
        # A proxy's own error page is not the controller refusing the credentials.
        if status in (400, 401, 403) and not looks_like_html(body):
            raise self._refused(status)
        if status != 200:
            raise self._status_error("/api/oauth/token", status, body)
        document = decode_json("/api/oauth/token", body)
        token = document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise DecodeError("/api/oauth/token answered without an access_token")
        if len(token) > MAX_TOKEN_CHARS or not _VISIBLE_ASCII.fullmatch(token):
            # Dropped at once: requests would refuse to send it at every request of the poll.
            what = f"{len(token)} characters" if len(token) > MAX_TOKEN_CHARS else "control bytes"
            raise AuthError(
                "/api/oauth/token answered with an access token that cannot be sent in a "
                f"header ({what}); logging in again at the next poll"
            )
        self._refusals, self._backoff = 0, 0.0
        log.debug(
            "controller %s: logged in as %s",
            self.controller.name,
            self.controller.username,
            extra={"controller": self.controller.name, "username": self.controller.username},
        )
        return token

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        data: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One HTTP exchange: connected within ``connect_timeout_seconds``, and the whole
        answer in within ``timeout_seconds`` (or by the poll's deadline, if sooner)."""
        started = time.monotonic()
        deadline = started + self.poll.timeout_seconds
        poll_deadline = self._poll_deadline
        cut = poll_deadline is not None and poll_deadline < deadline  # by the poll's deadline
        if cut and poll_deadline is not None:
            deadline = poll_deadline
        exchange = Exchange(deadline)
        connect = min(self.poll.connect_timeout_seconds, deadline - started)
        exchange.begin()
        try:
            response = self._session.request(
                method,
                self.controller.url + path,
                params=params,
                headers=headers,
                data=data,
                auth=auth,
                timeout=(connect, max(deadline - started, 0.001)),
                verify=self._verify,
                proxies=self._proxies,
                stream=True,
                allow_redirects=False,
            )
            try:
                body = _read_body(response, path)
            finally:
                exchange.finish()
                response.close()
        except requests.exceptions.RequestException as err:
            # A connection that did not open in time is a connection problem, unless the
            # poll's deadline cut its time short.
            timed_out = _is_timeout(err) and (cut or not _is_connect_timeout(err))
            if exchange.expired or timed_out:
                raise self._timeout(path, cut) from None
            raise self._connection_error(err, path, connect) from None
        finally:
            exchange.finish()
        if exchange.expired:  # the socket was shut: a body without a length ends there
            raise self._timeout(path, cut)
        return response.status_code, body

    def _timeout(self, path: str, cut: bool) -> RequestTimeout:
        """``cut``: by the poll's deadline, before the exchange's own."""
        if cut:
            deadline = self.poll.deadline
            return RequestTimeout(
                f"{path}: the poll ran out of time ({deadline:g} s, poll.deadline_seconds)"
            )
        return RequestTimeout(
            f"{path}: no answer within {self.poll.timeout_seconds:g} s (headers and body)"
        )

    def _connection_error(
        self, err: requests.exceptions.RequestException, path: str, connect: float
    ) -> SimplivityError:
        url = self.controller.url
        if isinstance(err, requests.exceptions.SSLError):
            return TLSError(f"TLS handshake with {url} failed: {_tls_reason(err)}")
        if _is_connect_timeout(err):
            return ConnectError(
                f"could not connect to {url} within {connect:g} s: wrong address, port or a "
                "firewall?"
            )
        if not isinstance(err, requests.exceptions.ConnectionError):
            return ConnectError(f"{path}: {type(err).__name__}")
        reason = _connection_reason(err)
        if reason in _NO_ANSWER and self._tls_on_plain_port():
            reason = "the port speaks TLS: use https://"
        return ConnectError(f"cannot connect to {url}: {reason}")

    def _tls_on_plain_port(self) -> bool:
        """Whether an ``http://`` controller that closed the connection unanswered speaks TLS
        on that port (asked once, with a TLS handshake that checks nothing)."""
        parts = urlsplit(self.controller.url)
        if parts.scheme != "http" or self._proxies.get("http") or not parts.hostname:
            return False
        if self._speaks_tls is None:
            self._speaks_tls = _speaks_tls(
                parts.hostname, parts.port or 80, min(self.poll.connect_timeout_seconds, 5.0)
            )
        return self._speaks_tls

    def _status_error(self, path: str, status: int, body: bytes) -> HTTPStatusError:
        detail = self.redact(_server_message(body))[:200]
        suffix = f": {detail}" if detail else ""
        return HTTPStatusError(f"{path} answered HTTP {status}{suffix}", status)


def _read_body(response: requests.Response, path: str) -> bytes:
    """The body, at most :data:`MAX_BODY_BYTES` (the exchange's watchdog bounds its time)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=256 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise DecodeError(f"{path}: the answer is larger than {MAX_BODY_BYTES >> 20} MiB")
    return b"".join(chunks)


def _server_message(body: bytes) -> str:
    """The ``message`` (and ``extendedResponse``) of an error body, never the raw body; to be
    redacted (it may echo a token or the password)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        # A reverse proxy in front of the controller answers with its own HTML page.
        if b"plain HTTP request was sent to HTTPS port" in body[:2048]:
            return "the port speaks TLS: use https://"
        return "an HTML page, not the controller's own answer" if looks_like_html(body) else ""
    if not isinstance(document, dict):
        return ""
    # Some controllers put the useful words in extendedResponse rather than message.
    said = [
        part
        for part in (
            document.get("message") or document.get("error_description"),
            document.get("extendedResponse"),
        )
        if isinstance(part, str) and part
    ]
    # Redacted whole, then shortened: shortening first could leave half a secret.
    return " ".join(said)[:4096]


def _written_forms(secret: str) -> Iterable[str]:
    """The ways a controller may echo a secret: as sent in a form, as it is, JSON-escaped."""
    if not secret:
        return ()
    forms = {secret, quote_plus(secret), quote(secret, safe=""), json.dumps(secret)[1:-1]}
    return sorted(forms, key=len, reverse=True)  # the longest first: none hides in another


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
#: What a closed connection without an answer looks like, where TLS on the port would explain it.
_NO_ANSWER = frozenset({"connection reset", "the controller closed the connection"})


def _wall_clock(seconds_from_now: float) -> str:
    moment = datetime.fromtimestamp(time.time() + max(0.0, seconds_from_now), UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    """A TLS handshake succeeds on the port, or fails with the server's TLS alert."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except ssl.SSLError as err:
        return "alert" in str(err).lower()
    except OSError:
        return False


def _is_connect_timeout(err: BaseException) -> bool:
    return isinstance(err, requests.exceptions.ConnectTimeout)


def _is_timeout(err: BaseException) -> bool:
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, urllib3.exceptions.NewConnectionError):
            return False  # a refused connection, though urllib3 files it under timeouts
        if isinstance(current, TimeoutError | urllib3.exceptions.TimeoutError):
            return True
        stack.extend([current.__cause__, current.__context__])
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return False


#: What a connection's error says (a text in it), in words: the first that matches.
_CONNECTION_REASONS = (
    ("Name or service not known", "the host name does not resolve"),
    ("nodename nor servname", "the host name does not resolve"),
    ("Temporary failure in name resolution", "the host name does not resolve"),
    ("No address associated", "the host name does not resolve"),
    ("Connection refused", "connection refused: nothing listens on that port"),
    ("Connection reset", "connection reset"),
    ("RemoteDisconnected", "the controller closed the connection"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network unreachable"),
)
#: The same for a TLS handshake's error.
_TLS_REASONS = (
    ("certificate verify failed: self", "self-signed certificate (set tls.ca_file)"),
    ("unable to get local issuer", "certificate from an unknown CA (set tls.ca_file)"),
    ("Hostname mismatch", "the certificate does not match the host name (tls.server_name)"),
    ("doesn't match", "the certificate does not match the host name (tls.server_name)"),
    ("IP address mismatch", "the certificate does not carry this IP (set tls.server_name)"),
    ("certificate has expired", "the certificate has expired"),
    ("WRONG_VERSION_NUMBER", "the port does not speak TLS: use http://, or the HTTPS port"),
    ("certificate verify failed", "certificate verification failed"),
)


def _connection_reason(err: BaseException) -> str:
    return _reason(err, _CONNECTION_REASONS, "connection failed")


def _tls_reason(err: BaseException) -> str:
    return _reason(err, _TLS_REASONS, "handshake failed")


def _reason(err: BaseException, reasons: tuple[tuple[str, str], ...], otherwise: str) -> str:
    text = str(err)
    return next((reason for needle, reason in reasons if needle in text), otherwise)
