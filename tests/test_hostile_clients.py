"""Hostile clients of the exporter's web server: none of them can keep a scrape from succeeding.

Real sockets and real threads on 127.0.0.1 against an :class:`ExporterServer` in this process
(a stub app behind it, so a scrape costs nothing and only the serving is measured): headers
the parser has never seen, clients that never read their answers, password guessers, and TLS
handshakes left half done. Each ends with scrapes that must succeed. The last test runs the
real exporter (``python -m exporter --demo``) instead, to read its memory from ``/proc``.
"""

from __future__ import annotations

import base64
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.basicauth import AUTH_FAILURE_BUDGET, PasswordChecker
from exporter.exposition import Deflated, PlainText
from exporter.web import ExporterServer, WebApp
from exporter.webconfig import WebConfig, load_web_config
from tests.conftest import wait_until
from tests.httpclient import fetch, read_answer
from tests.live_exporter import ExporterProcess, serving_app
from tests.pki import PKI, client_context, make_pki
from tests.test_web_serving import MB, Sampler, raise_open_file_limit, sample_process

PASSWORD = "s3cret-scrape-password"
METRICS = b"# HELP simplivity_up Whether the last poll succeeded.\nsimplivity_up 1\n"
#: A /metrics body larger than any socket buffer, so that a client that does not read
#: really leaves the server with an answer it cannot write.
LARGE_METRICS = METRICS * 40_000  # 2.6 MB
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "deny"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


GOOD = basic("prometheus", PASSWORD)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def web_config(
    pki: PKI,
    *,
    tls: bool = True,
    users: bool = True,
    cost: int = 4,
    checkpw: PasswordChecker | None = None,
) -> WebConfig:
    text = ""
    if tls:
        text += "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    text += "http_server_config:\n  headers:\n"
    text += "".join(f"    {name}: {value}\n" for name, value in SECURITY_HEADERS.items())
    if users:
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(cost)).decode()
        text += f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    path = pki.dir / f"web-{tls}-{users}-{cost}.yml"
    path.write_text(text)
    return load_web_config(path, checkpw=checkpw)


@dataclass
class Counter:
    """Counts the answers the app was asked for; ``streamed``: each made as it is sent, as the
    exposition makes a plain answer (its text held compressed, inflated a slice at a time)."""

    body: bytes = METRICS
    streamed: bool = False
    scrapes: list[None] = field(default_factory=list)

    def app(self) -> WebApp:
        compressed = PlainText((Deflated.of(self.body),), len(self.body))

        def render(gzipped: bool) -> bytes | PlainText:
            self.scrapes.append(None)
            return compressed if self.streamed else self.body

        return WebApp(render_metrics=render, statuses=lambda: [], ready=lambda: True, reload=_no)


def _no() -> tuple[bool, str]:
    raise AssertionError("no test here reloads")


@contextmanager
def serving(
    config: WebConfig, body: bytes = METRICS, *, streamed: bool = False, **options: Any
) -> Iterator[ExporterServer]:
    with serving_app(Counter(body, streamed).app(), config, **options) as server:
        yield server


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No test here may make the server log an error: hostile input is not a bug."""
    caplog.set_level(logging.DEBUG, logger="exporter")
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def connect(
    server: ExporterServer,
    context: ssl.SSLContext | None = None,
    *,
    source: str = "127.0.0.1",
    receive_buffer: int | None = None,
    timeout: float = 10.0,
) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # before connect(), so the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.server_address[1]))
    if context is None:
        return sock
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def scrape(
    server: ExporterServer | int,
    context: ssl.SSLContext | None,
    authorization: str | None = GOOD,
    timeout: float = 10.0,
    path: str = "/metrics",
) -> tuple[int, bytes]:
    """One GET of ``path`` on a new connection to a server or a port; (status, body)."""
    port = server if isinstance(server, int) else server.server_address[1]
    answer = fetch(port, path, context, authorization, timeout=timeout)
    return answer.status, answer.body


# --- headers no parser expects ---------------------------------------------------------------


def test_an_odd_content_length_gets_400_and_never_stops_the_server(pki: PKI) -> None:
    """``Content-Length: ²`` passes str.isdigit() and used to kill a worker and leak its slot:
    eight of them stopped a server with TLS and basic auth on."""
    context = client_context(pki)
    with serving(web_config(pki), workers=8) as server:
        for attempt in range(3 * server.workers):
            authorization = f"Authorization: {GOOD}\r\n" if attempt % 2 else ""
            sock = connect(server, context)
            request = f"GET /metrics HTTP/1.1\r\nHost: x\r\n{authorization}Content-Length: \xb2"
            sock.sendall(request.encode("latin-1") + b"\r\n\r\n")
            answer = read_answer(sock.makefile("rb"))
            assert answer.status == 400
            assert answer.headers["connection"] == "close"
            for name, value in SECURITY_HEADERS.items():
                assert answer.headers[name.lower()] == value
            sock.close()
        wait_until(lambda: server.pending == 0, 5, "every slot given back")
        # A worker lost per request would leave none by now: this scrape would never be answered.
        assert scrape(server, context, timeout=5) == (200, METRICS)


def test_an_answer_that_raises_costs_its_connection_never_a_worker(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    failing = [True]

    def render(gzipped: bool) -> bytes:
        if failing[0]:
            raise RuntimeError("a bug in rendering")
        return METRICS

    app = WebApp(render_metrics=render, statuses=lambda: [], ready=lambda: True, reload=_no)
    with serving_app(app, web_config(pki, tls=False), workers=2) as server:
        for _ in range(4 * server.workers):
            sock = connect(server)
            sock.sendall(f"GET /metrics HTTP/1.1\r\nAuthorization: {GOOD}\r\n\r\n".encode())
            answer = read_answer(sock.makefile("rb"))
            sock.close()
            assert (answer.status, answer.headers["connection"]) == (500, "close")
        wait_until(lambda: server.pending == 0, 5, "every slot given back")
        failing[0] = False
        assert scrape(server, None, timeout=5) == (200, METRICS)  # the workers are all there
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # once per kind of error: a client cannot flood the log
    assert errors[0].exc_info is not None
    assert "a bug in rendering" in caplog.text
    caplog.clear()  # seen: not for no_server_errors to report


class Breaking:
    """A body made as it is sent that breaks after ``before`` bytes: a bug in making it."""

    def __init__(self, before: int) -> None:
        self.before = before

    def __len__(self) -> int:
        return self.before + 1

    def __iter__(self) -> Iterator[bytes]:
        yield b"x" * self.before
        raise RuntimeError("a bug in making the answer")


@pytest.mark.parametrize("before", [1000, 8_000_000], ids=["at once", "after a full socket"])
def test_an_answer_that_breaks_while_sent_costs_its_connection_only(
    pki: PKI, caplog: pytest.LogCaptureFixture, before: int
) -> None:
    """Whether the worker that made the answer or the serving thread, later, finds the bug,
    that connection is closed short of its answer, and the server serves on."""
    breaking = [True]

    def render(gzipped: bool) -> bytes | Breaking:
        return Breaking(before) if breaking[0] else METRICS

    app = WebApp(render_metrics=render, statuses=lambda: [], ready=lambda: True, reload=_no)
    with serving_app(app, web_config(pki, tls=False), workers=2) as server:
        for _ in range(3):
            sock = connect(server)
            sock.sendall(f"GET /metrics HTTP/1.1\r\nAuthorization: {GOOD}\r\n\r\n".encode())
            received = b""
            while chunk := sock.recv(1 << 20):
                received += chunk
            sock.close()
            # Closed: with nothing (the bug found before a byte was sent), or short.
            head, _, body = received.partition(b"\r\n\r\n")
            assert received == b"" or f"Content-Length: {before + 1}".encode() in head
            assert len(body) < before + 1
        breaking[0] = False
        assert scrape(server, None, timeout=5) == (200, METRICS)
    assert "a bug in making the answer" in caplog.text
    caplog.clear()  # seen: not for no_server_errors to report


@pytest.fixture(scope="module")
def fuzzed_server(pki: PKI) -> Iterator[ExporterServer]:
    with serving(web_config(pki, tls=False), workers=2, header_timeout=1) as server:
        yield server


HEADER_NAMES = (
    b"Content-Length",
    b"Transfer-Encoding",
    b"Authorization",
    b"Accept-Encoding",
    b"Connection",
    b"Expect",
    b"Host",
)


FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


#: Values that look like numbers to one parser and not to another.
TRICKY_VALUES = (b"\xb2", b"1\xb9", b" 5 ", b"-1", b"+1", b"0x10", b"1_0", b"\xa05", b"9" * 30)


@FUZZ_SETTINGS
@given(
    name=st.sampled_from(HEADER_NAMES) | st.binary(min_size=1, max_size=20),
    value=st.binary(max_size=40)
    | st.text(st.characters(max_codepoint=255), max_size=8).map(lambda t: t.encode("latin-1"))
    | st.sampled_from(TRICKY_VALUES),
    method=st.sampled_from([b"GET", b"HEAD", b"POST", b"G\xb2T"]),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/\xb2.1", b"HTTP/1.1\x00"]),
    authorized=st.booleans(),
)
def test_fuzzed_header_bytes_get_an_answer_or_a_close_and_scrapes_go_on(
    fuzzed_server: ExporterServer,
    caplog: pytest.LogCaptureFixture,
    name: bytes,
    value: bytes,
    method: bytes,
    version: bytes,
    authorized: bool,
) -> None:
    server = fuzzed_server
    caplog.clear()  # one example's records at a time
    authorization = f"Authorization: {GOOD}\r\n".encode() if authorized else b""
    request = (
        (method + b" /metrics " + version + b"\r\nHost: x\r\n" + authorization)
        + name
        + b": "
        + value
        + b"\r\n\r\n"
    )
    assert_answered_and_still_serving(server, caplog, request)


@FUZZ_SETTINGS
@given(head=st.binary(max_size=300))
def test_fuzzed_request_heads_get_an_answer_or_a_close_and_scrapes_go_on(
    fuzzed_server: ExporterServer, caplog: pytest.LogCaptureFixture, head: bytes
) -> None:
    caplog.clear()
    assert_answered_and_still_serving(fuzzed_server, caplog, head + b"\r\n\r\n")


def assert_answered_and_still_serving(
    server: ExporterServer, caplog: pytest.LogCaptureFixture, request: bytes
) -> None:
    """``request`` gets an answer or a close; no error is logged, no slot kept; scrapes go on."""
    sock = connect(server, timeout=5)
    try:
        sock.sendall(request)
        first = sock.recv(4096)
    except ConnectionResetError:
        first = b""
    finally:
        sock.close()
    # An answer of ours, or a close (nothing but empty lines: no request, and its deadline).
    assert first == b"" or first.startswith(b"HTTP/1.1 "), first[:100]
    wait_until(lambda: server.pending == 0, 5, "every slot given back")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert scrape(server, None, timeout=5)[0] == 200


def test_error_pages_carry_the_security_headers_and_no_python_version(pki: PKI) -> None:
    requests = {
        400: b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        431: b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
        505: b"GET /metrics HTTP/2.0\r\n\r\n",
        405: f"GET /-/reload HTTP/1.1\r\nAuthorization: {GOOD}\r\n\r\n".encode(),
        401: b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    with serving(web_config(pki, tls=False)) as server:
        for status, request in requests.items():
            sock = connect(server)
            sock.sendall(request)
            answer = read_answer(sock.makefile("rb"))
            sock.close()
            assert answer.status == status
            for name, value in SECURITY_HEADERS.items():
                assert (status, answer.headers.get(name.lower())) == (status, value)
            assert answer.headers["server"].startswith("simplivity-exporter/")
            assert "Python" not in answer.headers["server"]


class Client:
    """A client that runs in a thread of its own from its creation until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> None:
        self._thread.join(10)


def stop_all(clients: Sequence[Client]) -> None:
    """All stop at once, rather than each in turn when the one before has."""
    for client in clients:
        client.stop()
    for client in clients:
        client.join()


# --- clients that never read -----------------------------------------------------------------


class NeverReader(Client):
    """Pipelines requests on connection after connection, reading none of the answers.

    Its receive buffer is as small as the kernel allows. Each time the server closes the
    connection, the time it stayed open is noted and a new one is opened.
    """

    def __init__(
        self, server: ExporterServer, context: ssl.SSLContext | None, request: bytes
    ) -> None:
        self.server = server
        self.context = context
        self.request = request
        self.held: list[float] = []  # seconds each connection stayed open
        self.sent_requests = 0
        super().__init__("never-reader")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = connect(self.server, self.context, receive_buffer=1024, timeout=0.2)
            except OSError:
                continue
            opened = time.monotonic()
            with sock:
                while not self._stop.is_set():
                    try:
                        sock.sendall(self.request * 50)
                        self.sent_requests += 50
                    except TimeoutError:
                        continue  # the server reads no more: it has answers we do not take
                    except (OSError, ssl.SSLError):
                        self.held.append(time.monotonic() - opened)
                        break


@pytest.mark.parametrize(
    ("secure", "streamed"),
    [
        pytest.param(False, False, id="plain HTTP, GET /metrics of 2.6 MB"),
        pytest.param(False, True, id="plain HTTP, GET /metrics of 2.6 MB inflated as sent"),
        pytest.param(True, False, id="TLS and basic auth, answered 401"),
    ],
)
def test_eight_clients_that_never_read_cannot_delay_a_scrape(
    pki: PKI, secure: bool, streamed: bool
) -> None:
    config = web_config(pki, tls=secure, users=secure)
    context = client_context(pki) if secure else None
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    write_timeout = 3.0
    options: dict[str, Any] = {"workers": 8, "write_timeout": write_timeout}
    with serving(config, LARGE_METRICS, streamed=streamed, **options) as server:
        assert scrape(server, context) == (200, LARGE_METRICS)
        readers = [NeverReader(server, context, request) for _ in range(8)]
        latencies: list[float] = []
        try:
            wait_until(lambda: all(r.sent_requests for r in readers), 10, "the never-readers")
            # Long enough for every never-reader to be dropped and come back at least once.
            until = time.monotonic() + 2 * write_timeout + 2
            while time.monotonic() < until:
                started = time.monotonic()
                assert scrape(server, context, timeout=2) == (200, LARGE_METRICS)
                latencies.append(time.monotonic() - started)
        finally:
            stop_all(readers)
        held = [seconds for reader in readers for seconds in reader.held]
    print(
        f"\n{len(latencies)} scrapes beside 8 never-readers: max {max(latencies) * 1000:.0f} ms; "
        f"{sum(r.sent_requests for r in readers)} requests pipelined; {len(held)} never-reading "
        f"connections dropped, after {min(held, default=0):.1f}-{max(held, default=0):.1f} s"
    )
    assert max(latencies) < 2.0  # each scrape (also asserted one by one above, by its timeout)
    assert max(held, default=0) < write_timeout + 2  # the write deadline, a tick and a send
    if not secure:
        # 2.6 MB answers fill any socket buffer: each never-reader was dropped, and came back.
        # (Short 401s fit in the kernel's buffers by the thousand: those clients were still
        # being answered, a request at a time, when the test ended.)
        assert all(reader.held for reader in readers)


# --- password guessers ------------------------------------------------------------------------


class Guesser(Client):
    """Tries a new wrong password after each 401, on one kept-alive connection."""

    def __init__(
        self, server: ExporterServer, context: ssl.SSLContext, source: str, index: int
    ) -> None:
        self.server = server
        self.context = context
        self.source = source
        self.index = index
        self.answers: dict[int, int] = {}
        super().__init__("guesser")

    def _run(self) -> None:
        guess = 0
        while not self._stop.is_set():
            try:
                sock = connect(self.server, self.context, source=self.source, timeout=5)
            except OSError:
                continue
            with sock:
                while not self._stop.is_set():
                    guess += 1
                    authorization = basic("prometheus", f"guess-{self.index}-{guess}")
                    request = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}"
                    try:
                        sock.sendall(request.encode() + b"\r\n\r\n")
                        status = read_answer(sock.makefile("rb")).status
                    except (OSError, ValueError, IndexError):
                        break
                    self.answers[status] = self.answers.get(status, 0) + 1


@pytest.mark.parametrize(
    "addresses",
    [
        pytest.param(1, id="48 guessers from one address, a new scraper"),
        pytest.param(48, id="48 guessers from 48 addresses, a known scraper"),
    ],
)
def test_forty_eight_password_guessers_cannot_starve_authenticated_scrapes(
    pki: PKI, addresses: int
) -> None:
    calls: list[None] = []

    def checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(None)
        return bcrypt.checkpw(password, hashed)

    config = web_config(pki, cost=10, checkpw=checkpw)  # as htpasswd -B: ~70 ms a check
    context = client_context(pki)
    with serving(config, workers=8) as server:
        if addresses > 1:  # Prometheus was scraping before the guessing began
            assert scrape(server, context) == (200, METRICS)
        sources = [f"127.0.0.{2 + n % addresses}" for n in range(48)]
        started = time.monotonic()
        guessers = [Guesser(server, context, source, n) for n, source in enumerate(sources)]
        latencies: list[float] = []
        try:
            wait_until(lambda: len(calls) >= AUTH_FAILURE_BUDGET, 10, "the guessing to start")
            for _ in range(16):
                begun = time.monotonic()
                assert scrape(server, context, timeout=5) == (200, METRICS)
                latencies.append(time.monotonic() - begun)
            wait_until(
                lambda: sum(g.answers.get(401, 0) for g in guessers) >= 200, 30, "200 refusals"
            )
        finally:
            stop_all(guessers)
        elapsed = time.monotonic() - started
    refused = sum(g.answers.get(401, 0) for g in guessers)
    busy = sum(g.answers.get(503, 0) for g in guessers)
    print(
        f"\n48 guessers from {addresses} address(es), {elapsed:.1f} s: {refused} refused, "
        f"{busy} told to wait; {len(calls)} bcrypt checks; 16 scrapes, "
        f"max {max(latencies) * 1000:.0f} ms"
    )
    # Each address had its budget, and a guess back every refill period (10 s).
    assert len(calls) <= addresses * (AUTH_FAILURE_BUDGET + elapsed / 10 + 1) + 1
    assert set().union(*(g.answers for g in guessers)) <= {401, 503}


# --- TLS handshakes left half done ---------------------------------------------------------------


def client_hello(context: ssl.SSLContext) -> bytes:
    """The bytes a TLS client sends first, made without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_half_open_tls_handshakes_are_bounded_in_number_and_time(pki: PKI) -> None:
    context = client_context(pki)
    hello = client_hello(context)
    max_handshakes = 16
    with serving(
        web_config(pki), workers=2, header_timeout=2, max_handshakes=max_handshakes
    ) as server:
        half_open: list[socket.socket] = []
        for _ in range(4 * max_handshakes):
            sock = connect(server)
            sock.sendall(hello)  # and never another byte: the server's answer stays unread
            half_open.append(sock)
        # Each new handshake beyond the bound closes the oldest.
        still_open = wait_until(
            lambda: (n := sum(is_open(s) for s in half_open)) <= max_handshakes and n,
            10,
            "the oldest handshakes to be closed",
        )
        assert still_open == max_handshakes
        assert scrape(server, context) == (200, METRICS)
        # The rest are closed at the header deadline.
        wait_until(lambda: not any(is_open(s) for s in half_open), 10, "the deadline")
        for sock in half_open:
            sock.close()


def is_open(sock: socket.socket) -> bool:
    """Whether the server has not closed ``sock`` (a reset or end of stream), without waiting.

    Reads what the server sent: its handshake answer is of no use to a half-open client.
    """
    sock.setblocking(False)
    try:
        while True:
            if sock.recv(65536) == b"":
                return False
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False


def test_a_thousand_half_open_tls_handshakes_leave_no_memory_behind(
    pki: PKI, tmp_path: Path
) -> None:
    """Half-open handshakes once raised the exporter's RSS by 40 MB or more, never given back:
    now at most MAX_HANDSHAKES are under way, the oldest closed for a new one."""
    raise_open_file_limit(4096)
    path = pki.dir / "web-tls-only.yml"
    path.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    args = ("--demo", "--web.config.file", str(path))
    with ExporterProcess(*args, log_path=tmp_path / "exporter.log") as exporter:
        port = int(exporter.url.rsplit(":", 1)[1])
        context = client_context(pki)
        ready = partial(scrape, port, context, None, path="/-/ready")
        wait_until(lambda: ready()[0] == 200, 60, "the demo's first poll")
        pid = exporter.process.pid
        before = sample_process(pid)
        sampler = Sampler(pid)
        hello = client_hello(context)
        half_open = []
        try:
            for _ in range(1000):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(hello)
                half_open.append(sock)
            # Each has its answer (the server's half of the handshake), or was closed.
            wait_until(lambda: all_readable(half_open), 30, "the server to take every hello")
            assert scrape(port, context, None, timeout=5)[0] == 200
        finally:
            for sock in half_open:
                sock.close()
            peak = sampler.stop()
        wait_until(
            lambda: sample_process(pid).open_files <= before.open_files + 2,
            30,
            "the exporter to close the half-open connections",
        )
        after = sample_process(pid)
    print(
        f"\n1,000 half-open TLS handshakes: RSS {before.rss_bytes / MB:.1f} MB -> peak "
        f"{peak.rss_bytes / MB:.1f} MB -> after {after.rss_bytes / MB:.1f} MB"
    )
    assert peak.rss_bytes <= before.rss_bytes + 12 * MB
    assert after.rss_bytes <= before.rss_bytes + 8 * MB


def all_readable(socks: list[socket.socket]) -> bool:
    """Whether every socket has something to read (or has been closed), without reading."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN)
    readable = {fd for fd, _ in poller.poll(0)}
    return all(sock.fileno() in readable for sock in socks)
