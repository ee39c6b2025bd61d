"""Concurrent scrapers of ``/metrics``, in their own processes: ``python -m bench.scrape URL``.

Each scraper has one keep-alive HTTP/1.1 connection and asks for ``/metrics`` with
``Accept-Encoding: gzip``, as Prometheus does: either again as soon as the previous answer has
arrived (``--interval 0``, a closed loop: the server is kept saturated, which measures its
throughput), or every ``--interval`` seconds, all scrapers at the same moments (which measures
the latency of bursts of concurrent scrapes). The scrapers are threads
spread over a few processes, and each reads an answer's body with one blocking system call,
so that the scrapers' own interpreter locks do not show up as the server's latency.

With ``--idle-connections N``, one more process opens N connections that never send a byte,
holds them ``--idle-hold`` seconds, closes them all and opens N again, until the end: idle
clients coming and going beside the scrapes.

Prints one JSON line: ``{"requests", "errors", "seconds", "throughput", "p50_ms", "p99_ms",
"max_ms", "latencies_ms", "body_bytes", "cpu_seconds", "idle_cycles", "idle_opened",
"idle_failed"}`` (``cpu_seconds``: the scrapers' own CPU time; ``idle_*``: the rounds of idle
connections, how many were opened and how many could not be).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit


class KeepAliveClient:
    """GET over one persistent connection; the body lands in a reused buffer."""

    def __init__(self, host: str, port: int, path: str, gzip: bool = True) -> None:
        self._address = (host, port)
        encoding = "Accept-Encoding: gzip\r\n" if gzip else ""
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{encoding}"
            "User-Agent: bench-scraper\r\n\r\n"
        ).encode()
        self._sock: socket.socket | None = None
        self._buffer = bytearray(1 << 22)

    def get(self) -> tuple[int, int]:
        """One request; returns the status and the body's length."""
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=30)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._sock.sendall(self._request)
            return self._read(self._sock)
        except OSError:
            self.close()
            raise

    def _read(self, sock: socket.socket) -> tuple[int, int]:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        missing = length - len(rest)
        if missing > 0:
            if missing > len(self._buffer):
                self._buffer = bytearray(missing)
            view = memoryview(self._buffer)
            while missing > 0:
                got = sock.recv_into(view[:missing], missing, socket.MSG_WAITALL)
                if not got:
                    raise ConnectionError("the server closed the connection")
                missing -= got
        elif missing < 0:
            raise ConnectionError("more bytes than Content-Length (pipelining is not used)")
        if close:
            self.close()
        return status, length

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.5 is the median); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def _scrapers(
    url: str, clients: int, start_at: float, stop_at: float, interval: float
) -> dict[str, Any]:
    """``clients`` threads scraping from ``start_at`` to ``stop_at`` (time.time()), each as
    soon as its last answer is in (``interval`` 0) or every ``interval`` seconds."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    sizes = [0] * clients

    def scraper(index: int) -> None:
        client = KeepAliveClient(host, port, parts.path or "/metrics")
        mine = latencies[index]
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < stop_at:
            if interval > 0:
                # Paced: all scrapers on the same ticks, so that they arrive together; a tick
                # missed while waiting for an answer is skipped, not caught up.
                now = time.time()
                due = start_at + math.ceil(max(0.0, now - start_at) / interval) * interval
                time.sleep(due - now)
            began = time.perf_counter()
            try:
                status, size = client.get()
            except OSError:
                errors[index] += 1
                continue
            mine.append(time.perf_counter() - began)
            if status != 200:
                errors[index] += 1
            sizes[index] = size
        client.close()

    threads = [threading.Thread(target=scraper, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "latencies": [value for mine in latencies for value in mine],
        "errors": sum(errors),
        "body_bytes": max(sizes, default=0),
    }


def _worker(arguments: tuple[str, int, float, float, float]) -> dict[str, Any]:
    return _scrapers(*arguments)


def _idle_clients(arguments: tuple[str, int, float, float, float]) -> dict[str, int]:
    """Rounds of ``count`` connections that send nothing: opened, held ``hold`` seconds and
    closed, from ``start_at`` to ``stop_at``."""
    url, count, start_at, stop_at, hold = arguments
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cycles = opened = failed = 0
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        held: list[socket.socket] = []
        try:
            for _ in range(count):
                try:
                    held.append(socket.create_connection(address, timeout=5))
                except OSError:
                    failed += 1
            opened += len(held)
            time.sleep(max(0.0, min(stop_at, time.time() + hold) - time.time()))
        finally:
            for sock in held:
                sock.close()
        cycles += 1
    return {"idle_cycles": cycles, "idle_opened": opened, "idle_failed": failed}


def load(
    url: str,
    clients: int,
    seconds: float,
    processes: int = 4,
    interval: float = 0.0,
    idle_connections: int = 0,
    idle_hold: float = 2.0,
) -> dict[str, Any]:
    processes = max(1, min(processes, clients))
    share, extra = divmod(clients, processes)
    shares = [share + (1 if i < extra else 0) for i in range(processes)]
    start_at = time.time() + 2.0  # every process is up before the clock runs
    stop_at = start_at + seconds
    context = multiprocessing.get_context("spawn")
    idle = {"idle_cycles": 0, "idle_opened": 0, "idle_failed": 0}
    with context.Pool(processes + (1 if idle_connections else 0)) as pool:
        churn = (
            pool.apply_async(
                _idle_clients, ((url, idle_connections, start_at, stop_at, idle_hold),)
            )
            if idle_connections
            else None
        )
        parts = pool.map(_worker, [(url, share, start_at, stop_at, interval) for share in shares])
        if churn is not None:
            idle = churn.get()
    every = [value for part in parts for value in part["latencies"]]
    return {
        **idle,
        "latencies_ms": [round(value * 1000, 3) for value in every],
        "requests": len(every),
        "errors": sum(part["errors"] for part in parts),
        "seconds": seconds,
        "throughput": len(every) / seconds,
        "p50_ms": percentile(every, 0.50) * 1000,
        "p99_ms": percentile(every, 0.99) * 1000,
        "max_ms": max(every, default=0.0) * 1000,
        "body_bytes": max(part["body_bytes"] for part in parts),
        "cpu_seconds": sum(part["cpu_seconds"] for part in parts),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape")
    parser.add_argument("url", help="e.g. http://127.0.0.1:10025/metrics")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=4, help="the clients spread over")
    parser.add_argument(
        "--interval", type=float, default=0.0, help="seconds between scrapes (0: closed loop)"
    )
    parser.add_argument(
        "--idle-connections", type=int, default=0, help="idle connections that come and go"
    )
    parser.add_argument(
        "--idle-hold", type=float, default=2.0, help="seconds each round of them is held"
    )
    args = parser.parse_args(argv)
    measured = load(
        args.url,
        args.clients,
        args.seconds,
        args.processes,
        args.interval,
        args.idle_connections,
        args.idle_hold,
    )
    print(json.dumps(measured), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
