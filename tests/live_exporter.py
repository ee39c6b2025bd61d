"""Exporters under test, scraped over HTTP the way Prometheus scrapes them.

:class:`Lab` holds simulated controllers and an exporter polling them, in this process: the
server's own parts (:func:`exporter.app.assemble`: poller, decoding worker, reloader, exposition)
behind an :class:`~exporter.web.ExporterServer` on a free port of 127.0.0.1. Leaving the
``with`` block stops the exporter, then the controllers, then waits for every thread
started inside the block to end. :class:`ExporterProcess` runs the real command
(``python -m exporter``) with its log in a file. Both answer :meth:`scrape` with a parsed
:class:`Scrape`.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Shard, assemble
from exporter.config import Config, ControllerConfig, PollConfig, Secret, TLSConfig
from exporter.poller import ClientFactory, ControllerReader, connect
from exporter.simulator import FederationSpec, SimulatedController
from exporter.web import ExporterServer, WebApp
from exporter.webconfig import WebConfig

ROOT = Path(__file__).resolve().parent.parent
#: The families that come from a controller's backups (dropped when its data is stale).
BACKUP_FAMILIES = (
    "simplivity_backups",
    "simplivity_backup_size_bytes",
    "simplivity_backup_newest_timestamp_seconds",
    "simplivity_backup_newest_age_seconds",
    "simplivity_vm_backup_newest_timestamp_seconds",
    "simplivity_vm_backup_newest_age_seconds",
)


# --- HTTP and the exposition -------------------------------------------------------------------


def request(
    base_url: str, path: str, method: str = "GET", timeout: float = 10.0
) -> tuple[int, bytes]:
    """One plain HTTP exchange with no proxy from the environment; (status, body)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass(frozen=True)
class Scrape:
    """One parsed ``/metrics`` answer, and when it was asked for and received (``time.time``)."""

    text: str
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]
    started: float = 0.0
    finished: float = 0.0

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None."""
        return self.samples.get((name, frozenset(labels.items())))

    def matching(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """Every sample of ``name`` whose labels include these."""
        wanted = set(labels.items())
        return [
            (dict(key), value)
            for (sample, key), value in self.samples.items()
            if sample == name and wanted <= key
        ]

    def total(self, name: str, **labels: str) -> float:
        return sum(value for _, value in self.matching(name, **labels))

    def backup_series(self, controller: str) -> int:
        """How many backup-derived series the controller has."""
        return sum(len(self.matching(f, controller=controller)) for f in BACKUP_FAMILIES)

    def errors(self, controller: str) -> dict[str, float]:
        return {
            labels["reason"]: value
            for labels, value in self.matching(
                "simplivity_poll_errors_total", controller=controller
            )
        }

    def up(self, controller: str) -> float | None:
        return self.value("simplivity_up", controller=controller)

    def last_success(self, controller: str) -> float:
        value = self.value("simplivity_poll_last_success_timestamp_seconds", controller=controller)
        return value or 0.0

    def controllers(self) -> set[str]:
        return {labels["controller"] for labels, _ in self.matching("simplivity_up")}


def parse(text: str, started: float = 0.0, finished: float = 0.0) -> Scrape:
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return Scrape(text, samples, started, finished)


def scrape(base_url: str, timeout: float = 10.0) -> Scrape:
    started = time.time()
    status, body = request(base_url, "/metrics", timeout=timeout)
    finished = time.time()
    if status != 200:
        raise AssertionError(f"/metrics answered {status}: {body[:200]!r}")
    return parse(body.decode("utf-8"), started, finished)


# --- in this process ---------------------------------------------------------------------------


@contextmanager
def serving_app(
    app: WebApp, web_config: WebConfig | None = None, **options: Any
) -> Iterator[ExporterServer]:
    """An :class:`ExporterServer` for ``app`` on a free port of 127.0.0.1, stopped on exit."""
    server = ExporterServer(("127.0.0.1", 0), app, web_config, **options)
    server.serve_in_background()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def fast_retries(
    controller: ControllerConfig, poll: PollConfig, stop: threading.Event
) -> ControllerReader:
    """The real client, with a backoff of milliseconds instead of half a second."""
    return connect(controller, poll, stop, backoff_seconds=0.02)


FAST_POLL = PollConfig(
    interval_seconds=1,
    deadline_seconds=60,  # a poll may outlast the interval: the next one waits
    timeout_seconds=1,
    page_size=50,
    stale_after_seconds=5,
    max_concurrency=2,
    max_retries=1,
)


def controller_config(
    name: str,
    simulator: SimulatedController,
    *,
    url: str | None = None,
    tls: TLSConfig | None = None,
    password: str | None = None,
) -> ControllerConfig:
    return ControllerConfig(
        name=name,
        url=url or simulator.url,
        username=simulator.username,
        password=Secret(password or simulator.password),
        tls=tls or TLSConfig(),
    )


class InProcessExporter:
    """The exporter as ``app.run_server`` runs it (``app.assemble``), without signals."""

    def __init__(
        self,
        config: Config,
        client_factory: ClientFactory = fast_retries,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._parts = assemble(
            config, Shard(), lambda: self.config, client_factory=client_factory, clock=clock
        )
        self.poller = self._parts.poller
        self.reloader = self._parts.reloader
        self.server = ExporterServer(("127.0.0.1", 0), self._parts.app)
        self.url = self.server.url
        self._running = False

    def start(self) -> InProcessExporter:
        self.poller.start()
        self.server.serve_in_background()
        self._running = True
        return self

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self.server.shutdown()
        self.server.server_close()
        self._parts.close()

    def reload(self, config: Config) -> tuple[bool, str]:
        """What SIGHUP does, with ``config`` as the file's new content."""
        self.config = config
        return self.reloader.reload()

    def replace_controller(self, controller: ControllerConfig) -> None:
        controllers = tuple(
            controller if c.name == controller.name else c for c in self.config.controllers
        )
        ok, message = self.reload(replace(self.config, controllers=controllers))
        assert ok, message

    def scrape(self, timeout: float = 10.0) -> Scrape:
        return scrape(self.url, timeout)

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        return request(self.url, path, method)


class Lab:
    """Simulated controllers and at most one in-process exporter, all stopped on exit."""

    def __init__(self) -> None:
        self.controllers: dict[str, SimulatedController] = {}
        self.exporter: InProcessExporter | None = None
        self._threads_before: set[threading.Thread] = set()

    def __enter__(self) -> Lab:
        self._threads_before = set(threading.enumerate())
        return self

    def controller(
        self,
        name: str,
        backups: FederationSpec | list[dict[str, object]] | None = None,
        **options: Any,
    ) -> SimulatedController:
        spec = backups if backups is not None else FederationSpec(vms=12, backups_per_vm=10)
        simulator = SimulatedController(spec, **options).start()
        self.controllers[name] = simulator
        return simulator

    def start_exporter(
        self,
        poll: PollConfig = FAST_POLL,
        *,
        controllers: tuple[ControllerConfig, ...] | None = None,
        client_factory: ClientFactory = fast_retries,
    ) -> InProcessExporter:
        if controllers is None:
            controllers = tuple(
                controller_config(name, simulator) for name, simulator in self.controllers.items()
            )
        config = Config(controllers=controllers, poll=poll)
        self.exporter = InProcessExporter(config, client_factory).start()
        return self.exporter

    def __exit__(self, *exc_info: object) -> None:
        if self.exporter is not None:
            self.exporter.stop()
        for simulator in self.controllers.values():
            simulator.stop()
        # Polls stuck in a socket read end with the controllers; give them their timeout.
        deadline = time.monotonic() + 15
        while True:
            left = [
                t for t in threading.enumerate() if t not in self._threads_before and t.is_alive()
            ]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # a poll interval of the wait for threads to end
        if left and exc_info[0] is None:  # never mask the test's own failure
            names = ", ".join(sorted(t.name for t in left))
            raise AssertionError(f"threads still running after the lab stopped: {names}")


# --- name resolution -------------------------------------------------------------------------


class NameService:
    """Host names that resolve to 127.0.0.1, or fail to resolve, without any DNS query.

    Installed by :func:`patched_resolver` in place of ``socket.getaddrinfo`` (which urllib3
    calls at every connection); every other name goes to the real resolver.
    """

    def __init__(self) -> None:
        self.names: dict[str, bool] = {}  # name -> resolves

    def lookup(
        self, original: Callable[..., Any], host: Any, port: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str) and host in self.names:
            if not self.names[host]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return original("127.0.0.1", port, *args, **kwargs)
        return original(host, port, *args, **kwargs)


@contextmanager
def patched_resolver() -> Iterator[NameService]:
    service = NameService()
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return service.lookup(original, host, port, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield service
    finally:
        socket.getaddrinfo = original


# --- the real command ------------------------------------------------------------------------

_LISTENING = re.compile(r"listening on (https?://\S+) with ")


def write_config(
    path: Path,
    controllers: Mapping[str, SimulatedController],
    *,
    poll: str = "{interval_seconds: 1, deadline_seconds: 60, timeout_seconds: 2, max_retries: 0}",
    passwords: Mapping[str, str] | None = None,
    extra: str = "",
) -> Path:
    """A config file naming each controller; passwords literal unless ``passwords`` says."""
    lines = [f"poll: {poll}", extra, "controllers:"]
    for name, simulator in controllers.items():
        password = (passwords or {}).get(name, f"'{simulator.password}'")
        lines += [
            f"  - name: {name}",
            f"    url: {simulator.url}",
            f"    username: {simulator.username}",
            f"    password: {password}",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class ExporterProcess:
    """``python -m exporter`` on a free port, its stdout and stderr in ``log_path``."""

    def __init__(
        self,
        *args: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address", "127.0.0.1:0", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.url = ""
        deadline = time.monotonic() + start_timeout
        while not self.url:
            found = _LISTENING.search(self.log())
            if found:
                self.url = found.group(1)
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the exporter did not start:\n{self.log()}")
            else:
                time.sleep(0.02)  # a poll interval of the wait for the log line

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def scrape(self, timeout: float = 10.0) -> Scrape:
        return scrape(self.url, timeout)

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        return request(self.url, path, method)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not ended within ``timeout``; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
