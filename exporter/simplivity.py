"""The SimpliVity REST client, HTTP only: login and token reuse, deadlines, retries and TLS.

It gets one page of a collection at a time (:meth:`SimplivityClient.get_page`); paging through
a whole collection is :mod:`exporter.scan`'s job.

Everything that can go wrong talking to a controller surfaces as one
:class:`~exporter.model.SimplivityError` subclass whose ``reason`` is the value of the
``reason`` label of ``simplivity_poll_errors_total``. Error messages are written for operators
and never hold a password or a token.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from functools import partial
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from exporter import __version__
from exporter.config import ControllerConfig, PollConfig
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


class _ServerNameAdapter(HTTPAdapter):
    """Verifies the controller's certificate against a configured name instead of the URL's host.

    Appliance certificates rarely carry the IP address users put in the URL.
    """

    def __init__(self, server_name: str | None, pool_maxsize: int) -> None:
        self._server_name = server_name
        super().__init__(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._server_name:
            kwargs["server_hostname"] = self._server_name
            kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


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
        self._token_lock = threading.Lock()
        self._logins = 0
        self._throttled = 0
        self._throttled_lock = threading.Lock()

    @property
    def logins(self) -> int:
        """How many times this client has logged in (each login opens a hypervisor session)."""
        return self._logins

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
        adapter = _ServerNameAdapter(tls.server_name, self.poll.max_concurrency + 1)
        session.mount("https://", adapter)
        session.mount("http://", HTTPAdapter(pool_maxsize=self.poll.max_concurrency + 1))
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
            try:
                status, body = send()
            except (RequestTimeout, ConnectError) as err:
                failure: SimplivityError = err
            else:
                if status in _THROTTLING_STATUSES:
                    with self._throttled_lock:
                        self._throttled += 1
                if status not in _TRANSIENT_STATUSES or status in final:
                    return status, body
                failure = self._status_error(path, status, body)
            failures += 1
            if failures > self.poll.max_retries:
                if isinstance(failure, HTTPStatusError):
                    return failure.status, body
                raise failure
            delay = min(30.0, self._backoff_seconds * 2 ** (failures - 1))
            delay *= random.uniform(0.5, 1.5)
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

    def _current_token(self) -> str:
        with self._token_lock:
            now = self._clock()
            if (
                self._token is not None
                and now - self._token_used < TOKEN_IDLE_SECONDS - TOKEN_MARGIN_SECONDS
                and now - self._token_obtained < TOKEN_LIFETIME_SECONDS - TOKEN_MARGIN_SECONDS
            ):
                return self._token
            self._token = self._login()
            self._token_obtained = self._token_used = self._clock()
            return self._token

    def _forget_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

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
        if status in (400, 401, 403):
            raise AuthError(
                f"the controller refused the credentials of user {self.controller.username!r} "
                f"(HTTP {status})"
            )
        if status != 200:
            raise self._status_error("/api/oauth/token", status, body)
        document = decode_json("/api/oauth/token", body)
        token = document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise DecodeError("/api/oauth/token answered without an access_token")
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
        """One HTTP exchange; the whole answer must arrive within ``timeout_seconds``."""
        timeout = self.poll.timeout_seconds
        deadline = time.monotonic() + timeout
        try:
            response = self._session.request(
                method,
                self.controller.url + path,
                params=params,
                headers=headers,
                data=data,
                auth=auth,
                timeout=(timeout, timeout),
                verify=self._verify,
                proxies=self._proxies,
                stream=True,
                allow_redirects=False,
            )
            try:
                body = _read_body(response, deadline, path)
            finally:
                response.close()
        except requests.exceptions.SSLError as err:
            reason = _tls_reason(err)
            raise TLSError(f"TLS handshake with {self.controller.url} failed: {reason}") from None
        except requests.exceptions.Timeout:
            raise RequestTimeout(f"{path}: no answer within {timeout:g} s") from None
        except requests.exceptions.ConnectionError as err:
            if _is_timeout(err):
                raise RequestTimeout(f"{path}: no answer within {timeout:g} s") from None
            reason = _connection_reason(err)
            raise ConnectError(f"cannot connect to {self.controller.url}: {reason}") from None
        except requests.exceptions.RequestException as err:
            raise ConnectError(f"{path}: {type(err).__name__}") from None
        return response.status_code, body

    def _status_error(self, path: str, status: int, body: bytes) -> HTTPStatusError:
        detail = _server_message(body)
        suffix = f": {detail}" if detail else ""
        return HTTPStatusError(f"{path} answered HTTP {status}{suffix}", status)


def _read_body(response: requests.Response, deadline: float, path: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=256 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise DecodeError(f"{path}: the answer is larger than {MAX_BODY_BYTES >> 20} MiB")
        if time.monotonic() > deadline:
            raise requests.exceptions.Timeout()
    return b"".join(chunks)


def _server_message(body: bytes) -> str:
    """The ``message`` of an error body, shortened; never the raw body (it may echo a token)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        # A reverse proxy in front of the controller answers with its own HTML page.
        return "an HTML page, not the controller's own answer" if looks_like_html(body) else ""
    if not isinstance(document, dict):
        return ""
    message = document.get("message") or document.get("error_description") or ""
    if not isinstance(message, str) or "token" in message.lower():
        return ""
    return message[:200]


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


def _connection_reason(err: BaseException) -> str:
    text = str(err)
    for needle, reason in (
        ("Name or service not known", "the host name does not resolve"),
        ("nodename nor servname", "the host name does not resolve"),
        ("Temporary failure in name resolution", "the host name does not resolve"),
        ("No address associated", "the host name does not resolve"),
        ("Connection refused", "connection refused"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "the controller closed the connection"),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network unreachable"),
    ):
        if needle in text:
            return reason
    return "connection failed"


def _tls_reason(err: BaseException) -> str:
    text = str(err)
    for needle, reason in (
        ("certificate verify failed: self", "self-signed certificate (set tls.ca_file)"),
        ("unable to get local issuer", "certificate from an unknown CA (set tls.ca_file)"),
        ("Hostname mismatch", "the certificate does not match the host name (tls.server_name)"),
        ("doesn't match", "the certificate does not match the host name (tls.server_name)"),
        ("IP address mismatch", "the certificate does not carry this IP (set tls.server_name)"),
        ("certificate has expired", "the certificate has expired"),
        ("WRONG_VERSION_NUMBER", "the controller does not speak TLS on this port"),
        ("certificate verify failed", "certificate verification failed"),
    ):
        if needle in text:
            return reason
    return "handshake failed"
