"""An HTTP/1.1 server that no client can stop, for a few cheap answers (``/metrics``).

It knows nothing of the exporter: it is given what to answer (a callable from :class:`Request`
to :class:`Response`) and :class:`ServerSettings` (TLS context, extra headers, who may ask).

How connections are served. One thread (``web``) holds every open connection and waits on all
of them at once with a selector: it accepts, runs the TLS handshake without blocking, reads
until a request's line and headers have all arrived, and writes the rest of each answer
without blocking as fast as the client takes it. In between, a worker (``web-worker-N``, a
fixed few) parses the request, builds its answer and sends what the socket takes at once,
never waiting for the client. So a connection that sends nothing, sends its headers a byte at
a time, or never reads its answers costs a socket and its one answer (a megabyte of it at
most made ready: :mod:`exporter.httpresponse`), never a thread: no client can keep a worker
from a real scrape.

Bounds, all per connection unless said otherwise:

- A request's headers must all arrive within ``header_timeout`` of the connection (handshake
  included) or of the request's first byte; a kept-alive connection waits ``idle_timeout``,
  quietly, for its next request. Its answer must be taken whole within ``write_timeout`` of
  being ready (not per ``send()``: a client reading a byte at a time gains nothing). Whoever
  misses a deadline is closed.
- One request at a time: the next pipelined request is read only once the previous answer has
  been sent, so a client that does not read holds one answer and its kernel buffers, and its
  further requests wait in its own socket.
- Header values are parsed strictly (``Content-Length`` in ASCII digits, once); a request the
  server cannot frame gets 400 and the connection is closed.
- ``workers`` requests are answered at once and ``queue_size`` more wait (503 beyond).
- Password checks (bcrypt, tens of milliseconds) run in a thread of their own
  (``web-auth``), at most ``auth_queue_size`` waiting (503 beyond): a request whose
  credentials the :class:`Authorizer` already knows is answered by a worker at once, so
  guessing clients never delay an authenticated scrape. The authorizer may also ask for a
  refusal to be sent late (a client over its failure budget): the connection then waits,
  without a thread, for ``Authorizer.penalty_seconds``.
- At most ``max_connections`` are held (and half of the open-file limit, which the poller's
  own connections need too); one more closes the oldest that never completed a request. At
  most ``max_handshakes`` TLS handshakes run at once; one more closes the oldest unfinished.
- Whatever answering a request raises, the worker lives on, gives back its slot, closes that
  connection and logs the error (with its traceback once per kind of error).

Why read the headers before taking a worker, rather than a bounded pool whose workers read
with a deadline: N workers with a deadline of D seconds are held by N idle connections for D
seconds, so thousands of idle connections queue a real scrape for minutes. A thread per
connection (``ThreadingHTTPServer``) serves the scrape at once but lets those connections cost
a thread each, in memory that stays taken after they leave.
"""

from __future__ import annotations

import contextlib
import email.utils
import enum
import errno
import logging
import queue
import resource
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Protocol

from exporter.httprequest import MAX_HEADER_BYTES, HeadError, end_of_headers, parse_head, skip_body
from exporter.httpresponse import Output, Response, page

log = logging.getLogger(__name__)

HEADER_TIMEOUT_SECONDS = 5.0
# Longer than the usual scrape interval (one minute), so Prometheus keeps its connection.
IDLE_TIMEOUT_SECONDS = 120.0
# Prometheus gives up on a scrape after its scrape_timeout (10 s by default): an answer not
# taken by then is wanted by no one.
WRITE_TIMEOUT_SECONDS = 10.0
MAX_HANDSHAKES = 64
AUTH_QUEUE_SIZE = 16
_TICK_SECONDS = 0.25  # how often deadlines are checked
_READ_SIZE = 16 * 1024
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Verdict(enum.Enum):
    """What an :class:`Authorizer` says at once about a request's ``Authorization``."""

    ALLOW = "allow"
    DENY = "deny"  # 401 now: nothing to check (no or malformed credentials)
    DENY_LATER = "deny later"  # 401 after the penalty, unchecked: known wrong, or over budget
    CHECK = "check"  # unknown credentials: call check(), off the workers


class Authorizer(Protocol):
    """Decides who may be answered; ``check`` may be slow, ``verdict`` must not be."""

    penalty_seconds: float

    def verdict(self, authorization: str | None, client: str) -> Verdict: ...

    def check(self, authorization: str | None, client: str) -> bool: ...


@dataclass(frozen=True)
class ServerSettings:
    """What a reload may change; applies from the next connection (TLS) or request (the rest)."""

    ssl_context: ssl.SSLContext | None = None
    #: Sent with every answer, error pages included (security headers).
    extra_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    authorizer: Authorizer | None = None
    #: ``WWW-Authenticate`` sent with a 401.
    challenge: str = "Basic"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    headers: Message
    client: str  # the peer's address


Respond = Callable[[Request], Response]


class HTTPServer:
    """Serves ``respond`` on ``address``: :meth:`serve_forever`, then :meth:`shutdown`.

    The bounds are the module docstring's; ``server_name`` is the ``Server`` header (no
    interpreter version: nothing a client needs, something an attacker would like).
    """

    def __init__(
        self,
        address: tuple[str, int],
        respond: Respond,
        settings: ServerSettings | None = None,
        *,
        server_name: str = "http",
        workers: int = 8,
        queue_size: int = 32,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
        max_connections: int = 1024,
        max_handshakes: int = MAX_HANDSHAKES,
        auth_queue_size: int = AUTH_QUEUE_SIZE,
    ) -> None:
        self.respond = respond
        self.settings = settings or ServerSettings()
        self.server_name = server_name
        self.workers = workers
        self.queue_size = queue_size
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            max_connections = min(max_connections, max(16, soft // 2))
        self.max_connections = max_connections
        self.max_handshakes = max_handshakes
        self.auth_queue_size = auth_queue_size
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
        # Owned by the serving thread: every connection it holds, oldest first; those whose
        # TLS handshake is under way, oldest first.
        self._held: dict[_Connection, None] = {}
        self._handshakes: dict[_Connection, None] = {}
        self._work: queue.SimpleQueue[_Connection | None] = queue.SimpleQueue()
        self._checks: queue.SimpleQueue[_Check | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # being answered, or waiting for a worker
        self._checking = 0  # waiting for, or in, a password check
        self._returned: queue.SimpleQueue[_Connection] = queue.SimpleQueue()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._stop = threading.Event()
        self._serving = threading.Event()
        self._stopped = threading.Event()
        self._accept_paused = False
        self._last_refusal_log = 0.0
        self._errors_seen: set[str] = set()

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        scheme = "https" if self.settings.ssl_context else "http"
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{port}"

    @property
    def pending(self) -> int:
        """Requests whose headers have arrived, being answered or waiting for a worker."""
        with self._lock:
            return self._pending

    def serve_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="web", daemon=True)
        thread.start()
        self._serving.wait()
        return thread

    def serve_forever(self) -> None:
        """Accept, read and write in this thread, answer in the workers, until :meth:`shutdown`."""
        self._serving.set()
        threads = [
            threading.Thread(target=self._answer_requests, name=f"web-worker-{n}", daemon=True)
            for n in range(self.workers)
        ]
        threads.append(threading.Thread(target=self._check_passwords, name="web-auth", daemon=True))
        selector = selectors.DefaultSelector()
        try:
            for thread in threads:
                thread.start()
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            self._loop(selector)
        finally:
            self._stop.set()
            for connection in self._held:
                _close(connection)
            self._held.clear()
            self._handshakes.clear()
            for _ in range(self.workers):
                self._work.put(None)
            self._checks.put(None)
            # A slow render or password check must not hold up the shutdown.
            deadline = time.monotonic() + 5
            for thread in threads:
                if thread.is_alive():
                    thread.join(max(0.0, deadline - time.monotonic()))
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

    # --- the serving thread: accept, handshake, read, write, keep deadlines -------------------

    def _loop(self, selector: selectors.BaseSelector) -> None:
        next_check = time.monotonic() + _TICK_SECONDS
        while not self._stop.is_set():
            for key, _ in selector.select(_TICK_SECONDS):
                if key.fileobj is self._listener:
                    self._accept(selector)
                elif key.fileobj is self._wake_reader:
                    with contextlib.suppress(OSError):
                        self._wake_reader.recv(4096)
                elif key.data.output:
                    self._safely(self._write, selector, key.data)
                else:
                    self._safely(self._read, selector, key.data)
            self._take_back(selector)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + _TICK_SECONDS
                self._expire(selector, now)

    def _safely(
        self,
        step: Callable[[selectors.BaseSelector, _Connection], None],
        selector: selectors.BaseSelector,
        connection: _Connection,
    ) -> None:
        try:
            step(selector, connection)
        except Exception:  # a bug costs one connection, not the server
            self._log_error("serving", connection)
            self._drop(selector, connection)

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
            # Head and body are two writes: without this, Nagle's algorithm holds the body
            # until the client's delayed ACK, about 40 ms on every keep-alive request.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = time.monotonic() + self.header_timeout
            connection = _Connection(sock, peer, deadline, tls=self.settings.ssl_context)
            self._held[connection] = None
            selector.register(sock, selectors.EVENT_READ, connection)

    def _read(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        sock = connection.sock
        try:
            if connection.tls is not None:
                # TLS starts with the client's first bytes: a connection that sends nothing
                # costs a socket, not an SSL object.
                if len(self._handshakes) >= self.max_handshakes:
                    oldest = next(iter(self._handshakes))
                    log.debug("closing a connection from %s: too many handshakes", oldest.host)
                    self._drop(selector, oldest)
                selector.unregister(sock)
                sock = connection.sock = connection.tls.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                connection.tls = None
                self._handshakes[connection] = None
                selector.register(sock, selectors.EVENT_READ, connection)
            if connection in self._handshakes and isinstance(sock, ssl.SSLSocket):
                sock.do_handshake()
                del self._handshakes[connection]
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
        end = end_of_headers(connection.buffer)
        if (len(connection.buffer) if end is None else end) > MAX_HEADER_BYTES:
            message = "Request headers too large."
            self._refuse(selector, connection, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, message)
            return
        if end is None:
            return
        connection.head = bytes(connection.buffer[:end])
        del connection.buffer[:end]
        with self._lock:
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
            message = "Too many requests at once; try again."
            self._refuse(selector, connection, HTTPStatus.SERVICE_UNAVAILABLE, message)
            return
        self._forget(selector, connection)
        self._work.put(connection)

    def _refuse(
        self,
        selector: selectors.BaseSelector,
        connection: _Connection,
        status: HTTPStatus,
        message: str,
    ) -> None:
        """Answer without a worker, then close: written like any other answer."""
        connection.buffer.clear()
        connection.output = self._output(page(status, message), head=False, close=True)
        connection.close_after = True
        connection.deadline = time.monotonic() + self.write_timeout
        self._write(selector, connection)

    def _take_back(self, selector: selectors.BaseSelector) -> None:
        """Write the answers the workers made; the connection is served from here on."""
        now = time.monotonic()
        while not self._returned.empty():
            connection = self._returned.get()
            self._held[connection] = None
            if connection.not_before > now:  # a late refusal: wait, registered for nothing
                connection.deadline = connection.not_before + self.write_timeout
                continue
            connection.deadline = now + self.write_timeout
            self._safely(self._write, selector, connection)

    def _write(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        try:
            _send(connection)
        except (ssl.SSLWantWriteError, BlockingIOError):
            self._watch(selector, connection, selectors.EVENT_WRITE)
            return
        except ssl.SSLWantReadError:
            self._watch(selector, connection, selectors.EVENT_READ)
            return
        except OSError:
            log.debug("connection from %s ended with an error", connection.host, exc_info=True)
            self._drop(selector, connection)
            return
        if connection.close_after:
            self._drop(selector, connection)
            return
        connection.served += 1
        connection.idle = not connection.buffer
        timeout = self.idle_timeout if connection.idle else self.header_timeout
        connection.deadline = time.monotonic() + timeout
        self._watch(selector, connection, selectors.EVENT_READ)
        if isinstance(connection.sock, ssl.SSLSocket) and connection.sock.pending():
            self._read(selector, connection)
        elif connection.buffer:  # the client sent its next request with the last one
            self._received(selector, connection)

    def _watch(
        self, selector: selectors.BaseSelector, connection: _Connection, events: int
    ) -> None:
        try:
            selector.modify(connection.sock, events, connection)
        except KeyError:
            selector.register(connection.sock, events, connection)

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        for connection in list(self._held):
            if connection.deadline <= now:
                log.debug("closing a connection from %s: deadline missed", connection.host)
                self._drop(selector, connection)
            elif connection.output and 0 < connection.not_before <= now:
                connection.not_before = 0.0
                self._safely(self._write, selector, connection)
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
        self._handshakes.pop(connection, None)

    def _drop(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        self._forget(selector, connection)
        _close(connection)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._wake_writer.send(b"\0")

    def _log_error(self, doing: str, connection: _Connection) -> None:
        """Log the exception being handled: as an error once per kind, then at debug level
        (a client that can provoke it must not be able to flood the log)."""
        error = sys.exc_info()[1]
        kind = f"{doing}:{type(error).__qualname__ if error is not None else 'unknown'}"
        if kind in self._errors_seen:
            log.debug("error while %s %s", doing, connection.host, exc_info=True)
            return
        self._errors_seen.add(kind)
        message = "error while %s %s (logged once per kind of error, then at debug level)"
        log.exception(message, doing, connection.host)

    # --- the workers and the password checker -------------------------------------------------

    def _answer_requests(self) -> None:
        while (connection := self._work.get()) is not None:
            outcome: bool | None = False
            try:
                outcome = self._answer(connection)
            except Exception:  # the worker lives on; only this connection is lost
                self._log_error("answering", connection)
            finally:
                with self._lock:
                    self._pending -= 1
            if outcome is None:  # a password check has it now
                continue
            if outcome and not self._stop.is_set():
                # What the socket takes now (most often all): a hand-over to the serving
                # thread first would wait a switch interval while a poll keeps the interpreter
                # busy. It writes the rest; an error closes the connection there.
                if connection.not_before <= time.monotonic():  # else: a late refusal
                    try:
                        _send(connection)
                    except OSError:
                        pass
                    except Exception:  # making a streamed body failed: a bug
                        self._log_error("sending to", connection)
                        _close(connection)
                        continue
                self._returned.put(connection)
                self._wake()
            else:
                _close(connection)

    def _answer(self, connection: _Connection) -> bool | None:
        """Put the answer to ``connection.head`` in ``connection.output``.

        True to give the connection back to the serving thread, False to close it, None when
        a password check has taken it.
        """
        parsed = parse_head(connection.head)
        if isinstance(parsed, HeadError):
            refusal = page(parsed.status, parsed.message)
            return self._answered(connection, refusal, "", head=False, close=True)
        path = parsed.path.split("?", 1)[0]
        request = Request(parsed.command, path, parsed.headers, connection.host)
        line, head = parsed.requestline, request.method == "HEAD"
        close = parsed.close_connection or not skip_body(connection.buffer, request.headers)
        response = self._authorize(connection, request)
        if response is _CHECKING:
            return None
        if response is None:
            try:
                response = self.respond(request)
            except Exception:
                self._log_error("answering", connection)
                response = page(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal error.")
                close = True
        return self._answered(connection, response, line, head=head, close=close)

    def _authorize(self, connection: _Connection, request: Request) -> Response | None:
        """None if the request may be answered, else its refusal, or :data:`_CHECKING` when
        its credentials have gone to the password checker."""
        checked, connection.verdict = connection.verdict, None
        authorizer = self.settings.authorizer
        if authorizer is None or checked is True:
            return None
        authorization = request.headers.get("Authorization")
        verdict = Verdict.DENY  # checked, and wrong
        if checked is None:
            verdict = authorizer.verdict(authorization, request.client)
        if verdict is Verdict.CHECK:
            if self._hand_to_checker(connection, authorizer, authorization):
                return _CHECKING
            return page(HTTPStatus.SERVICE_UNAVAILABLE, "Too many password checks; try again.")
        if verdict is Verdict.ALLOW:
            return None
        if verdict is Verdict.DENY_LATER:
            connection.not_before = time.monotonic() + authorizer.penalty_seconds
        challenge = {"WWW-Authenticate": self.settings.challenge}
        return Response(HTTPStatus.UNAUTHORIZED, b"Unauthorized.\n", headers=challenge)

    def _answered(
        self, connection: _Connection, response: Response, line: str, *, head: bool, close: bool
    ) -> bool:
        connection.output = self._output(response, head=head, close=close)
        connection.close_after = close
        log.debug('%s - "%s" %d', connection.host, line, response.status.value)
        return True

    def _output(self, response: Response, *, head: bool, close: bool) -> Output:
        """The answer as the serving thread writes it (no copy of the body)."""
        status = response.status
        lines = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            f"Server: {self.server_name}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {response.length}",
            *(["Connection: close"] if close else []),
            *(f"{name}: {value}" for name, value in self.settings.extra_headers.items()),
            *(f"{name}: {value}" for name, value in response.headers.items()),
        ]
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return Output(head_bytes, () if head else response.chunks())

    def _hand_to_checker(
        self, connection: _Connection, authorizer: Authorizer, authorization: str | None
    ) -> bool:
        with self._lock:
            if self._checking >= self.auth_queue_size:
                return False
            self._checking += 1
        self._checks.put((connection, authorizer, authorization))
        return True

    def _check_passwords(self) -> None:
        """Run the slow checks, then queue each request again, its verdict known."""
        while (check := self._checks.get()) is not None:
            connection, authorizer, authorization = check
            try:
                connection.verdict = authorizer.check(authorization, connection.host)
            except Exception:
                self._log_error("checking the password of", connection)
                connection.verdict = False
            finally:
                with self._lock:
                    self._checking -= 1
            if self._stop.is_set():
                _close(connection)
                continue
            with self._lock:
                self._pending += 1  # admitted before: not refused now
            self._work.put(connection)


@dataclass(eq=False)
class _Connection:
    """A client's connection, owned by the serving thread or by one worker at a time."""

    sock: socket.socket
    peer: Any  # as accept() gives it: (host, port) or, for IPv6, a 4-tuple
    deadline: float  # monotonic: when it is closed unless it has made progress
    tls: ssl.SSLContext | None = None  # to wrap the socket with when the client speaks first
    idle: bool = False  # kept alive, waiting for its next request
    served: int = 0  # answers written whole
    buffer: bytearray = field(default_factory=bytearray)  # read, not yet answered
    head: bytes = b""  # the request line and headers a worker is answering
    output: Output | None = None  # the answer, until it is all written
    close_after: bool = False  # once the output is written
    not_before: float = 0.0  # monotonic: a late refusal is written from then on
    verdict: bool | None = None  # the password check's, for the request in ``head``

    @property
    def host(self) -> str:
        return str(self.peer[0])


#: What :meth:`HTTPServer._authorize` returns for a request whose password is being checked.
_CHECKING = Response(HTTPStatus.PROCESSING)
# A request whose credentials wait for a check: by whom, and what it sent.
_Check = tuple[_Connection, Authorizer, str | None]


def _send(connection: _Connection) -> None:
    """Send the answer until all is sent or the socket would block (raised)."""
    if connection.output is not None:
        connection.output.send(connection.sock)


def _close(connection: _Connection) -> None:
    with contextlib.suppress(OSError):
        connection.sock.close()
