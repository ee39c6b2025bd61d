"""Wiring, reload and signals: builds the exporter's parts, starts them and stops them.

:func:`assemble` wires the parts (what the server runs, and the tests' in-process exporter);
:func:`run_server` serves them until a signal; :func:`run_once` polls once for ``--once``.
Mistakes in what the user gave surface as :class:`UsageError`; :mod:`exporter.cli` turns them
into exit codes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from exporter.collector import BackupCollector, ExporterState
from exporter.config import Config, ConfigError, load_config
from exporter.exposition import Exposition, TextWriter, utf8
from exporter.poller import ClientFactory, Poller, connect
from exporter.sharding import select_controllers
from exporter.web import ExporterServer, WebApp, parse_listen_address
from exporter.webconfig import WebConfig, WebConfigError, load_web_config
from exporter.worker import DecodingWorker

# The process's own messages (listening, reloads, shutdown), under the package's name.
log = logging.getLogger("exporter")


class UsageError(Exception):
    """A mistake in the flags or files the user gave; reported without a traceback."""


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1


def load_sharded(path: str, shard: Shard) -> Config:
    config = load_config(path)
    names = select_controllers([c.name for c in config.controllers], shard.index, shard.count)
    wanted = set(names)
    return replace(config, controllers=tuple(c for c in config.controllers if c.name in wanted))


def run_once(config: Config, shard: Shard, output: str | None) -> bool:
    """Poll every controller once and write the metrics to ``output`` (stdout if None).

    Only per-controller series, so that the outputs of runs for other controllers can be read
    together (``ExporterState.once``). True if every controller's poll succeeded.
    """
    worker = DecodingWorker()
    # One poll: a full scan that keeps nothing for a next one.
    once = replace(config, poll=replace(config.poll, full_scan_interval_seconds=0))
    poller = Poller(once, scans=worker.open_scan)
    try:
        statuses = poller.poll_all_once()
    finally:
        poller.shutdown()
        worker.close()
    state = replace(exporter_state(config, shard, time.time()), once=True)
    backups = BackupCollector(lambda: statuses, lambda: state)
    # The text's pieces, written out as they are: the server's Exposition also gzips them and
    # keeps both for the next scrape, which a file written once has no use for (with 5,000
    # VMs, megabytes of peak memory).
    pieces = utf8(TextWriter(backups, compressed=False).parts())
    if output:
        write_atomically(Path(output), pieces)
    else:
        for piece in pieces:
            sys.stdout.buffer.write(piece)
        sys.stdout.flush()
    return all(status.up for status in statuses)


def write_atomically(path: Path, data: Iterable[bytes]) -> None:
    """Readers (node_exporter's textfile collector) see the old file or the new, never half."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            for piece in data:
                stream.write(piece)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def exporter_state(
    config: Config, shard: Shard, reload_time: float, *, reload_ok: bool = True
) -> ExporterState:
    return ExporterState(
        interval_seconds=config.poll.interval_seconds,
        stale_after_seconds=config.poll.stale_after_seconds,
        per_vm=config.metrics.per_vm,
        exclude=config.metrics.exclude,
        shard_index=shard.index,
        shard_count=shard.count,
        reload_successful=reload_ok,
        reload_success_timestamp=reload_time,
    )


class Reloader:
    """Re-reads the config (and the web config) on SIGHUP or ``POST /-/reload`` (the latter
    with ``--web.enable-lifecycle``).

    Both files are read and checked before anything changes: a bad one keeps the old pair.
    """

    def __init__(
        self,
        poller: Poller,
        shard: Shard,
        load: Callable[[], Config],
        config: Config,
        web_config_file: str | None = None,
    ) -> None:
        self._poller = poller
        self._shard = shard
        self._load = load
        self._web_config_file = web_config_file
        self._lock = threading.Lock()
        self.server: ExporterServer | None = None
        self.state = exporter_state(config, shard, time.time())
        self.reloads = 0  # counts every reload, good or bad: what the exposition cache keys on

    def reload(self) -> tuple[bool, str]:
        with self._lock:
            try:
                config = self._load()
                web_config = read_web_config(self._web_config_file)
            except (ConfigError, UsageError) as err:
                self.state = replace(self.state, reload_successful=False)
                self.reloads += 1
                log.error(
                    "configuration reload failed, keeping the previous one: %s",
                    err,
                    extra={"error": str(err)},
                )
                return False, str(err)
            self._poller.apply(config)
            if self.server is not None:
                self.server.use_web_config(web_config)
            self.state = exporter_state(config, self._shard, time.time())
            self.reloads += 1
            message = f"configuration reloaded: {len(config.controllers)} controller(s)"
            log.info("%s", message, extra={"controllers": len(config.controllers)})
            return True, message


def run_server(
    config: Config,
    shard: Shard,
    load: Callable[[], Config],
    *,
    listen_address: str,
    web_config_file: str | None,
    enable_lifecycle: bool = False,
) -> None:
    """Serve ``/metrics`` and poll until SIGTERM or SIGINT; SIGHUP reloads ``load()``, and so
    does ``POST /-/reload`` with ``enable_lifecycle``.

    :class:`UsageError` if the web config or the address is wrong, or cannot be bound.
    """
    web_config = read_web_config(web_config_file)
    try:
        address = parse_listen_address(listen_address)
    except ValueError as err:
        raise UsageError(f"--web.listen-address: {err}") from None
    parts = assemble(config, shard, load, web_config_file, lifecycle=enable_lifecycle)
    try:
        server = ExporterServer(address, parts.app, web_config)
    except OSError as err:
        raise UsageError(f"cannot listen on {listen_address}: {err.strerror}") from None
    parts.reloader.server = server
    events = _SignalEvents()
    parts.poller.start()
    server.serve_in_background()
    log.info(
        "listening on %s with %d controller(s), shard %d of %d",
        server.url,
        len(config.controllers),
        shard.index,
        shard.count,
        extra={
            "url": server.url,
            "controllers": len(config.controllers),
            "shard_index": shard.index,
            "shard_count": shard.count,
        },
    )
    try:
        while not events.stop:
            events.wait()
            if events.reload and not events.stop:
                events.reload = False
                parts.reloader.reload()
    finally:
        events.close()
        log.info("shutting down")
        server.shutdown()
        server.server_close()
        parts.close()


@dataclass(frozen=True)
class Parts:
    """The exporter's pieces, wired together: what the server runs (and the tests too)."""

    worker: DecodingWorker
    poller: Poller
    reloader: Reloader
    app: WebApp
    exposition: Exposition

    def close(self) -> None:
        self.poller.shutdown()
        self.worker.close()
        self.exposition.close()


def assemble(
    config: Config,
    shard: Shard,
    load: Callable[[], Config],
    web_config_file: str | None = None,
    *,
    client_factory: ClientFactory = connect,
    lifecycle: bool = False,
    clock: Callable[[], float] = time.time,
) -> Parts:
    """Poller, decoding worker, reloader, exposition and web app, not yet started.

    Pages are counted in the worker; after each poll, its thread writes the ``/metrics`` text
    of the new snapshot (``Exposition.refresh``), so that no scrape has to. ``clock`` is the
    exporter's "now" (the polls' times, the ages and staleness a scrape shows): tests share
    a simulated controller's manual clock with it.
    """
    worker = DecodingWorker()
    poller = Poller(config, client_factory=client_factory, scans=worker.open_scan, clock=clock)
    reloader = Reloader(poller, shard, load, config, web_config_file)
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    exposition = Exposition(
        registry,
        lambda: (poller.generation, reloader.reloads),
        backups=BackupCollector(poller.statuses, lambda: reloader.state, clock=clock),
        clock=clock,
    )
    poller.subscribe(exposition.refresh)
    app = WebApp(
        render_metrics=lambda gzipped: exposition.render(gzipped=gzipped),
        statuses=poller.statuses,
        ready=poller.ready,
        reload=reloader.reload,
        lifecycle=lifecycle,
    )
    return Parts(worker, poller, reloader, app, exposition)


class _SignalEvents:
    """SIGTERM/SIGINT stop the exporter, SIGHUP reloads its config.

    The handlers only set flags and write a byte to a pipe that :meth:`wait` reads. A handler
    runs in the main thread between any two bytecodes, also while the main thread holds a
    lock: one that takes a lock itself (``threading.Event.set`` does) deadlocks the process
    when a signal comes at that moment, or two come close together. The pipe is also the
    wakeup fd: the kernel may deliver the signal to another thread, which leaves the main
    thread asleep in its read (and the handler unrun) unless something writes to the pipe.
    """

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def wait(self) -> None:
        """Block until a signal has come (it may have come before the call; a handler may
        run only just after: each also writes a byte of its own, so none is missed)."""
        os.read(self._read, 4096)

    def close(self) -> None:
        # The pipe itself stays open: a handler may still write to it during the shutdown,
        # and a closed descriptor's number could by then belong to another file.
        signal.set_wakeup_fd(-1)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True
        self._wake()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._write, b"\0")


def read_web_config(path: str | None) -> WebConfig:
    if path is None:
        return WebConfig()
    try:
        web_config = load_web_config(path)
    except WebConfigError as err:
        raise UsageError(str(err)) from None
    for note in web_config.notes:
        log.warning("%s: %s", path, note, extra={"file": path})
    return web_config
