"""Serving under idle and slow clients, keep-alive, bounded work, and content negotiation.

The flood test runs the real exporter (``python -m exporter --demo``) as a subprocess and reads
its threads, open files and memory from ``/proc`` while thousands of connections that never
finish a request come and go and two scrapers keep scraping ``/metrics``. The other tests run
an :class:`ExporterServer` in this process with a stub app and short deadlines.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import os
import resource
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporter.web import ExporterServer, WebApp, accepts_gzip
from exporter.webconfig import WebConfig, load_web_config
from tests.conftest import wait_until
from tests.httpclient import fetch, read_answer
from tests.live_exporter import ExporterProcess, serving_app
from tests.pki import PKI, client_context, make_pki

METRICS = b"# HELP simplivity_up Whether the last poll succeeded.\nsimplivity_up 1\n" * 50
IDLE_CONNECTIONS = 2000
MB = 1024 * 1024


# --- the process under test, from /proc ----------------------------------------------------


@dataclass(frozen=True)
class ProcessSample:
    rss_bytes: int
    threads: int
    open_files: int


def sample_process(pid: int) -> ProcessSample:
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return ProcessSample(
        rss_bytes=int(fields["VmRSS"].split()[0]) * 1024,
        threads=int(fields["Threads"]),
        open_files=len(os.listdir(f"/proc/{pid}/fd")),
    )


class Sampler:
    """Samples a process every 20 ms in a thread, keeping the peaks."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = sample_process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now = sample_process(self.pid)
            self.peak = ProcessSample(
                max(self.peak.rss_bytes, now.rss_bytes),
                max(self.peak.threads, now.threads),
                max(self.peak.open_files, now.open_files),
            )

    def stop(self) -> ProcessSample:
        self._stop.set()
        self._thread.join(5)
        return self.peak


# --- scrapers ------------------------------------------------------------------------------


@dataclass
class Scraper:
    """Scrapes ``/metrics`` in a loop, on one keep-alive connection or a new one each time."""

    url: str
    keep_alive: bool
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Scraper:
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        connection: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
            started = time.monotonic()
            try:
                connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
                answer = connection.getresponse()
                body = gzip.decompress(answer.read())
                if answer.status != 200 or b"simplivity_up" not in body:
                    self.failures.append(f"{answer.status}: {body[:100]!r}")
            except (OSError, http.client.HTTPException) as err:
                self.failures.append(repr(err))
                connection.close()
                connection = None
                continue
            self.latencies.append(time.monotonic() - started)
            if not self.keep_alive:
                connection.close()
                connection = None
            self._stop.wait(0.05)  # a scrape every 50 ms or so: many scrapes, little CPU
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def raise_open_file_limit(wanted: int) -> None:
    """Enough descriptors for both ends of the idle connections (inherited by subprocesses)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the open-file limit ({hard}) is below the {wanted} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def open_idle_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections: half send nothing, half the start of a request and no end."""
    connections = []
    for index in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        if index % 2:
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        connections.append(connection)
    return connections


def test_thousands_of_idle_connections_cost_no_thread_and_scrapes_go_on(tmp_path: Path) -> None:
    raise_open_file_limit(2 * IDLE_CONNECTIONS + 1024)
    with ExporterProcess("--demo", log_path=tmp_path / "exporter.log") as exporter:
        port = int(exporter.url.rsplit(":", 1)[1])
        wait_until(lambda: exporter.get("/-/ready")[0] == 200, 60, "the demo's first poll")
        pid = exporter.process.pid
        scrapers = [Scraper(exporter.url, keep_alive=True), Scraper(exporter.url, keep_alive=False)]
        for scraper in scrapers:
            scraper.start()
        wait_until(lambda: all(len(s.latencies) >= 20 for s in scrapers), 60, "warm-up scrapes")
        before = sample_process(pid)
        for scraper in scrapers:
            scraper.latencies.clear()
        sampler = Sampler(pid)
        try:
            # Round 1: the clients open their connections, then all close them at once.
            connections = open_idle_connections(port, IDLE_CONNECTIONS)
            wait_until(
                lambda: sampler.peak.open_files >= before.open_files + IDLE_CONNECTIONS // 4,
                30,
                "the exporter to accept the idle connections",
            )
            wanted = [(scraper, len(scraper.latencies) + 50) for scraper in scrapers]
            wait_until(
                lambda: all(len(scraper.latencies) >= n for scraper, n in wanted),
                60,
                "50 scrapes each while the idle connections are open",
            )
            for connection in connections:
                connection.close()
            wait_until(
                lambda: sample_process(pid).open_files <= before.open_files + 2,
                30,
                "the exporter to close the connections the clients closed",
            )
            # Round 2: the clients keep them open; the exporter drops them at its deadline.
            connections = open_idle_connections(port, IDLE_CONNECTIONS)
            wait_until(
                lambda: sample_process(pid).open_files <= before.open_files + 2,
                60,
                "the exporter to drop the connections that never sent a request",
            )
            for connection in connections:
                connection.close()
            wait_until(
                lambda: sample_process(pid).rss_bytes <= before.rss_bytes + 8 * MB,
                30,
                "the exporter's memory to come back near its level before",
            )
        finally:
            for scraper in scrapers:
                scraper.stop()
            peak = sampler.stop()
        after = sample_process(pid)
    latencies = [latency for scraper in scrapers for latency in scraper.latencies]
    print(
        f"\n{IDLE_CONNECTIONS} idle connections, twice: {len(latencies)} scrapes, "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
        f"threads {before.threads} -> peak {peak.threads}; "
        f"open files {before.open_files} -> peak {peak.open_files}; "
        f"RSS {before.rss_bytes / MB:.1f} MB -> peak {peak.rss_bytes / MB:.1f} MB "
        f"-> after {after.rss_bytes / MB:.1f} MB"
    )
    assert [s.failures for s in scrapers] == [[], []]
    assert all(len(s.latencies) >= 10 for s in scrapers)
    assert peak.open_files >= before.open_files + IDLE_CONNECTIONS // 4  # it did hold them
    assert peak.threads <= before.threads + 4
    assert peak.rss_bytes <= before.rss_bytes + 16 * MB
    assert max(latencies) < 5.0  # generous: the figure is printed, this only catches a stall


# --- in this process: deadlines, keep-alive, bounded work --------------------------------


@dataclass
class StubApp:
    """The exporter's side of the web layer; ``/metrics`` can be made to wait."""

    gate: threading.Event = field(default_factory=threading.Event)
    rendering: list[None] = field(default_factory=list)
    reloads: list[None] = field(default_factory=list)
    lifecycle: bool = True

    def __post_init__(self) -> None:
        self.gate.set()

    def web_app(self) -> WebApp:
        return WebApp(
            render_metrics=self.render,
            statuses=lambda: [],
            ready=lambda: True,
            reload=self.reload,
            lifecycle=self.lifecycle,
        )

    def render(self, gzipped: bool) -> bytes:
        self.rendering.append(None)
        self.gate.wait(30)
        return gzip.compress(METRICS) if gzipped else METRICS

    def reload(self) -> tuple[bool, str]:
        self.reloads.append(None)
        return True, "reloaded"


@contextmanager
def serving(
    app: StubApp | None = None, web_config: WebConfig | None = None, **options: Any
) -> Iterator[ExporterServer]:
    with serving_app((app or StubApp()).web_app(), web_config, **options) as server:
        yield server


def connect(server: ExporterServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)


def time_until_closed(connection: socket.socket) -> float:
    """Seconds until the server closes ``connection`` (its socket timeout bounds the wait)."""
    started = time.monotonic()
    try:
        while connection.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_client_that_never_finishes_its_headers_is_dropped_after_the_deadline() -> None:
    with serving(header_timeout=0.5) as server:
        started = time.monotonic()
        silent, partial = connect(server), connect(server)
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # Closed by the server (after 10 s, the socket's timeout would raise), not too early.
        time_until_closed(silent)
        time_until_closed(partial)
        assert time.monotonic() - started >= 0.5
        # A client that trickles its headers is not saved by each byte it sends.
        started = time.monotonic()
        trickling = connect(server)
        request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
        sent = trickle(trickling, request)
        assert time.monotonic() - started >= 0.5
        assert sent < len(request)
        assert get(server, "/-/healthy")[0] == 200


def trickle(connection: socket.socket, data: bytes) -> int:
    """Send ``data`` a byte every 20 ms until the server closes; how many bytes went out."""
    for sent, byte in enumerate(data):
        try:
            connection.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return sent
        connection.settimeout(0.02)  # the trickle's pace, and a look for the server's close
        try:
            if connection.recv(1) == b"":
                return sent + 1
        except TimeoutError:
            pass
        except ConnectionResetError:
            return sent + 1
    return len(data)


def is_open(connection: socket.socket) -> bool:
    """Whether the server has not closed ``connection``, without waiting."""
    timeout = connection.gettimeout()
    connection.setblocking(False)
    try:
        return connection.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        connection.settimeout(timeout)


def get(
    server: ExporterServer, path: str, context: ssl.SSLContext | None = None, **headers: str
) -> tuple[int, bytes]:
    """One GET on a new connection, over TLS if ``context`` is given; (status, body)."""
    answer = fetch(server.server_address[1], path, context, headers=headers)
    return answer.status, answer.body


def test_a_kept_alive_connection_waits_longer_than_the_header_deadline() -> None:
    with serving(header_timeout=0.3, idle_timeout=30) as server:
        kept = connect(server)
        stream = kept.makefile("rb")
        kept.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(stream).body == b"Healthy.\n"
        # A silent connection opened now is closed at the header deadline; the kept-alive one
        # opened earlier is still served afterwards, on the same socket.
        assert time_until_closed(connect(server)) >= 0.3
        kept.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(stream)
        assert (answer.status, answer.body) == (200, METRICS)
    with serving(header_timeout=0.3, idle_timeout=0.6) as server:
        kept = connect(server)
        started = time.monotonic()
        kept.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(kept.makefile("rb")).status == 200
        time_until_closed(kept)
        assert time.monotonic() - started >= 0.6


def test_pipelined_requests_head_and_bodies_on_one_connection() -> None:
    app = StubApp()
    with serving(app) as server:
        connection = connect(server)
        stream = connection.makefile("rb")
        connection.sendall(
            b"\r\nGET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /-/ready HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert read_answer(stream).body == b"Healthy.\n"
        head = read_answer(stream, head=True)
        assert (head.status, head.headers["content-length"]) == (200, str(len(METRICS)))
        assert read_answer(stream).body == b"reloaded\n"
        assert read_answer(stream).body == b"Ready.\n"
        assert len(app.reloads) == 1
        # A body that has not all arrived with its headers: answered, then the connection ends.
        connection.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhel")
        assert read_answer(stream).status == 200
        assert time_until_closed(connection) >= 0
        # An HTTP/1.0 client gets its answer and the connection closes.
        old = connect(server)
        old.sendall(b"GET /-/healthy HTTP/1.0\r\n\r\n")
        assert read_answer(old.makefile("rb")).status == 200
        assert old.recv(1) == b""


def test_headers_too_large_are_refused_with_431() -> None:
    with serving() as server:
        connection = connect(server)
        connection.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 40_000)
        answer = read_answer(connection.makefile("rb"))
        assert answer.status == 431
        assert answer.headers["connection"] == "close"


def test_requests_beyond_the_workers_and_their_queue_get_503_at_once() -> None:
    app = StubApp()
    app.gate.clear()
    with serving(app, workers=2, queue_size=1) as server:
        waiting = [connect(server) for _ in range(3)]
        for connection in waiting:
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: len(app.rendering) == 2 and server.pending == 3, 10, "busy workers")
        refused = connect(server)
        refused.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(refused.makefile("rb"))
        assert (answer.status, answer.headers["connection"]) == (503, "close")
        assert refused.recv(1) == b""
        # Other paths are refused too while every worker is busy: nothing jumps the queue.
        assert get(server, "/-/healthy")[0] == 503
        app.gate.set()
        answers = [read_answer(connection.makefile("rb")) for connection in waiting]
        assert [a.status for a in answers] == [200, 200, 200]
        assert len(app.rendering) == 3


def test_the_tls_handshake_of_a_slow_client_blocks_no_one(pki: PKI) -> None:
    web_config = load_web_config(web_config_file(pki))
    with serving(web_config=web_config, header_timeout=3) as server:
        silent = [connect(server) for _ in range(20)]
        stalled = [connect(server) for _ in range(5)]
        for connection in stalled:
            connection.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
        quiet = client_context(pki).wrap_socket(connect(server), server_hostname="127.0.0.1")
        assert get(server, "/-/healthy", client_context(pki)) == (200, b"Healthy.\n")
        assert all(is_open(connection) for connection in [*silent, *stalled])
        # Each is closed at the deadline: handshake or not, no request in time.
        for connection in [*silent, *stalled]:
            time_until_closed(connection)
        assert quiet.recv(1) == b""


def test_a_reloaded_web_config_applies_to_the_next_connection(pki: PKI) -> None:
    with serving() as server:
        assert get(server, "/metrics") == (200, METRICS)
        server.use_web_config(load_web_config(web_config_file(pki, users=True)))
        assert server.url.startswith("https://")
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            get(server, "/metrics")
        trusting = client_context(pki)
        assert get(server, "/metrics", trusting)[0] == 401
        assert get(server, "/metrics", trusting, Authorization=AUTHORIZATION) == (200, METRICS)
        server.use_web_config(WebConfig())
        assert get(server, "/metrics") == (200, METRICS)


# --- content negotiation -------------------------------------------------------------------

ACCEPT_ENCODING = {
    None: False,
    "": False,
    "gzip": True,
    "GZip": True,
    "x-gzip": True,
    "gzip, deflate, br": True,
    "deflate, gzip;q=1.0, *;q=0.5": True,
    "gzip;q=0": False,
    "gzip; q=0.000": False,
    "gzip;q=0, identity": False,
    "identity": False,
    "*": True,
    "*;q=0": False,
    "gzip;q=0, *": False,  # named codings take their own weight, not *'s
    "identity;q=0, *": True,
    "identity;q=1, gzip;q=0.5": False,
    "identity;q=0.5, gzip;q=0.5": True,
    "identity;q=0.5, gzip;q=0.8": True,
    "br;q=1, *;q=0.1": True,  # identity weighs 0.1 too (from *): gzip is as good
    "gzip;q=2": False,  # not a weight: the element is ignored
    "gzip;q=abc": False,
    "gzip;q=0.5000": False,
    "deflate": False,
}


@pytest.mark.parametrize(("header", "expected"), ACCEPT_ENCODING.items())
def test_accept_encoding_weights_decide_gzip(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_metrics_are_gzipped_only_when_the_client_accepts_it() -> None:
    with serving() as server:
        for header, gzipped in (("gzip", True), ("gzip;q=0", False), ("identity", False)):
            connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
            connection.request("GET", "/metrics", headers={"Accept-Encoding": header})
            answer = connection.getresponse()
            body = answer.read()
            connection.close()
            assert (header, answer.getheader("Content-Encoding")) == (
                header,
                "gzip" if gzipped else None,
            )
            assert (gzip.decompress(body) if gzipped else body) == METRICS
            assert answer.getheader("Vary") == "Accept-Encoding"


class Made:
    """A body made as it is sent (the server's ``Stream``): the same chunks, made anew by each
    iteration, counted."""

    def __init__(self, chunks: tuple[bytes, ...]) -> None:
        self.chunks = chunks
        self.iterations = 0

    def __len__(self) -> int:
        return sum(map(len, self.chunks))

    def __iter__(self) -> Iterator[bytes]:
        self.iterations += 1
        return iter(self.chunks)


@pytest.mark.parametrize("made", [False, True], ids=["chunks", "made as sent"])
def test_a_body_in_chunks_is_sent_whole_plain_and_over_tls(pki: PKI, made: bool) -> None:
    """The exposition answers with its text's chunks, never joined, or with a plain text made
    as it is sent (inflated): more chunks than one ``sendmsg`` writes, empty ones among them,
    and some larger than a TLS write or than what is made ready ahead of the socket."""
    lines = [f'simplivity_chunk{{n="{n}"}} {n}\n'.encode() for n in range(1500)]
    chunks = (
        *(b"" if n % 7 == 0 else line * (n % 20 + 1) for n, line in enumerate(lines)),
        b"x" * 600_000,
        b"y" * 3_000_000,
    )
    whole = b"".join(chunks)
    body = Made(chunks) if made else chunks
    app = WebApp(
        render_metrics=lambda gzipped: body,
        statuses=lambda: [],
        ready=lambda: True,
        reload=lambda: (True, ""),
    )
    web_config = load_web_config(web_config_file(pki))
    for config, context in ((None, None), (web_config, client_context(pki))):
        with serving_app(app, config) as server:
            port = server.server_address[1]
            answer = fetch(port, "/metrics", context)
            assert (answer.status, answer.body) == (200, whole)
            assert answer.headers["content-length"] == str(len(whole))
            head = fetch(port, "/metrics", context, method="HEAD")
            assert (head.body, head.headers["content-length"]) == (b"", str(len(whole)))
    if isinstance(body, Made):
        assert body.iterations == 2  # once per GET, plain and over TLS; never for a HEAD


# --- certificates ---------------------------------------------------------------------------


AUTHORIZATION = "Basic " + base64.b64encode(b"prometheus:s3cret").decode()


def web_config_file(pki: PKI, *, users: bool = False) -> Path:
    text = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    if users:
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
        text += f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    path = pki.dir / f"web-{users}.yml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))
