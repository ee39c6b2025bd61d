"""Command line: flags, logging, wiring and exit codes. The only module that exits.

Exit codes: 0 success; 1 ``--once`` with a controller that failed; 2 a user's mistake
(bad flags, bad config, bad web config, an address that cannot be bound).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from exporter import __version__
from exporter.collector import BackupCollector, ExporterState
from exporter.config import Config, ConfigError, ControllerConfig, PollConfig, Secret, load_config
from exporter.exposition import Exposition
from exporter.memory import keep_large_buffers_off_the_heap
from exporter.poller import ClientFactory, Poller, connect
from exporter.sharding import ordinal_from_hostname, select_controllers, validate_shard
from exporter.web import ExporterServer, WebApp, parse_listen_address
from exporter.webconfig import WebConfig, WebConfigError, load_web_config
from exporter.worker import DecodingWorker

log = logging.getLogger("exporter")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEMO_REFRESH_SECONDS = 900.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simplivity-exporter",
        description="Prometheus exporter for HPE SimpliVity backups.",
    )
    add = parser.add_argument
    add(
        "--config.file",
        dest="config_file",
        default="config.yaml",
        metavar="PATH",
        help="YAML configuration file (default: %(default)s)",
    )
    add(
        "--web.listen-address",
        dest="listen_address",
        default=":10025",
        metavar="HOST:PORT",
        help="address to serve /metrics on (default: %(default)s)",
    )
    add(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="TLS and basic-auth settings, in the Prometheus exporter-toolkit format",
    )
    add(
        "--log.level",
        dest="log_level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="(default: %(default)s)",
    )
    add(
        "--log.format",
        dest="log_format",
        default="text",
        choices=("text", "json"),
        help="(default: %(default)s)",
    )
    add(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration, print every problem, and exit (0 valid, 2 not)",
    )
    add(
        "--once",
        action="store_true",
        help="poll every controller once, print the metrics and exit "
        "(0 if every controller succeeded, 1 otherwise)",
    )
    add(
        "--output",
        metavar="PATH",
        help="with --once: write the metrics to PATH atomically (node_exporter textfile)",
    )
    add(
        "--demo",
        action="store_true",
        help="run against a built-in simulated controller: no hardware, no config file",
    )
    add(
        "--shard.index",
        dest="shard_index",
        type=int,
        metavar="N",
        help="which shard this exporter is (default: 0, or the StatefulSet pod ordinal "
        "when --shard.count > 1)",
    )
    add(
        "--shard.count",
        dest="shard_count",
        type=int,
        default=1,
        metavar="N",
        help="how many exporters share the controllers (default: %(default)s)",
    )
    add("--version", action="version", version=f"simplivity-exporter {__version__}")
    return parser


class UsageError(Exception):
    """A mistake in the flags or files the user gave; reported without a traceback."""


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    keep_large_buffers_off_the_heap()
    # A poll keeps the interpreter busy for seconds; a scrape's thread waiting for its turn
    # gets it within 1 ms instead of the default 5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        shard = resolve_shard(args.shard_index, args.shard_count)
        if args.demo:
            return run_demo(args, shard)
        config = load_sharded(args.config_file, shard)
        if args.config_check:
            print(f"{args.config_file}: valid, {len(config.controllers)} controller(s)")
            if args.web_config_file:
                read_web_config(args.web_config_file)
                print(f"{args.web_config_file}: valid")
            return EXIT_OK
        if args.once:
            return run_once(config, shard, args.output)
        return run_server(args, shard, lambda: load_sharded(args.config_file, shard), config)
    except (ConfigError, UsageError) as err:
        print(f"simplivity-exporter: {err}", file=sys.stderr)
        return EXIT_USAGE


#: How long a thread runs before another one waiting for the interpreter gets it.
SWITCH_INTERVAL_SECONDS = 0.001


def main_entry() -> None:
    code = main()
    # Polls in flight may sit in a socket read for up to timeout_seconds; their (non-daemon)
    # worker threads would hold the interpreter at exit. Everything worth keeping is flushed
    # here, so end the process now: SIGTERM then stops within moments, even mid-poll.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def resolve_shard(index: int | None, count: int) -> Shard:
    if index is None:
        index = 0
        if count > 1:
            hostname = os.environ.get("HOSTNAME") or socket.gethostname()
            ordinal = ordinal_from_hostname(hostname)
            if ordinal is None:
                raise UsageError(
                    f"--shard.count is {count} but --shard.index is not set and the host name "
                    f"{hostname!r} ends in no StatefulSet ordinal"
                )
            index = ordinal
    try:
        validate_shard(index, count)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return Shard(index, count)


def load_sharded(path: str, shard: Shard) -> Config:
    config = load_config(path)
    names = select_controllers([c.name for c in config.controllers], shard.index, shard.count)
    wanted = set(names)
    return replace(config, controllers=tuple(c for c in config.controllers if c.name in wanted))


def run_once(config: Config, shard: Shard, output: str | None) -> int:
    worker = DecodingWorker()
    poller = Poller(config, scans=worker.open_scan)
    try:
        statuses = poller.poll_all_once()
    finally:
        poller.shutdown()
        worker.close()
    state = exporter_state(config, shard, time.time())
    backups = BackupCollector(lambda: statuses, lambda: state)
    text = Exposition(CollectorRegistry(auto_describe=False), lambda: 0, backups=backups).render()
    if output:
        write_atomically(Path(output), text)
    else:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
    return EXIT_OK if all(status.up for status in statuses) else EXIT_FAILED


def write_atomically(path: Path, data: bytes) -> None:
    """Readers (node_exporter's textfile collector) see the old file or the new, never half."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
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
        shard_index=shard.index,
        shard_count=shard.count,
        reload_successful=reload_ok,
        reload_success_timestamp=reload_time,
    )


class Reloader:
    """Re-reads the config (and the web config) on SIGHUP or ``POST /-/reload``.

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
                log.error("configuration reload failed, keeping the previous one: %s", err)
                return False, str(err)
            self._poller.apply(config)
            if self.server is not None:
                self.server.use_web_config(web_config)
            self.state = exporter_state(config, self._shard, time.time())
            self.reloads += 1
            message = f"configuration reloaded: {len(config.controllers)} controller(s)"
            log.info("%s", message)
            return True, message


def run_server(
    args: argparse.Namespace, shard: Shard, load: Callable[[], Config], config: Config
) -> int:
    web_config = read_web_config(args.web_config_file)
    try:
        address = parse_listen_address(args.listen_address)
    except ValueError as err:
        raise UsageError(f"--web.listen-address: {err}") from None
    parts = assemble(config, shard, load, args.web_config_file)
    try:
        server = ExporterServer(address, parts.app, web_config)
    except OSError as err:
        raise UsageError(f"cannot listen on {args.listen_address}: {err.strerror}") from None
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
    return EXIT_OK


@dataclass(frozen=True)
class Parts:
    """The exporter's pieces, wired together: what the server runs (and the tests too)."""

    worker: DecodingWorker
    poller: Poller
    reloader: Reloader
    exposition: Exposition
    app: WebApp

    def close(self) -> None:
        self.poller.shutdown()
        self.worker.close()


def assemble(
    config: Config,
    shard: Shard,
    load: Callable[[], Config],
    web_config_file: str | None = None,
    *,
    client_factory: ClientFactory = connect,
) -> Parts:
    """Poller, decoding worker, reloader, exposition and web app, not yet started.

    Pages are counted in the worker; each poll writes its snapshot's series and then the
    ``/metrics`` text, so that no scrape has to.
    """
    worker = DecodingWorker()
    poller = Poller(config, client_factory=client_factory, scans=worker.open_scan)
    reloader = Reloader(poller, shard, load, config, web_config_file)
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    exposition = Exposition(
        registry,
        lambda: (poller.generation, reloader.reloads),
        backups=BackupCollector(poller.statuses, lambda: reloader.state),
    )
    poller.subscribe(exposition.refresh)
    app = WebApp(
        render_metrics=lambda gzipped: exposition.render(gzipped=gzipped),
        statuses=poller.statuses,
        ready=poller.ready,
        reload=reloader.reload,
    )
    return Parts(worker, poller, reloader, exposition, app)


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
        log.warning("%s: %s", path, note)
    return web_config


def run_demo(args: argparse.Namespace, shard: Shard) -> int:
    """Serve a built-in simulated federation, so a newcomer sees real-looking metrics now."""
    from exporter.simulator import FederationSpec, SimulatedController

    simulator = SimulatedController(FederationSpec()).start()
    log.info("demo: simulated controller at %s", simulator.url)
    # Policies keep taking backups on a real federation: regenerate the simulated one now and
    # then, so a long-running demo does not slowly turn every VM stale.
    refresh = threading.Event()

    def refresh_federation() -> None:
        while not refresh.wait(DEMO_REFRESH_SECONDS):
            simulator.set_backups(FederationSpec())

    threading.Thread(target=refresh_federation, name="demo-refresh", daemon=True).start()
    controller = ControllerConfig(
        name="demo",
        url=simulator.url,
        username=simulator.username,
        password=Secret(simulator.password),
    )
    poll = PollConfig(interval_seconds=15, timeout_seconds=10, stale_after_seconds=300)
    config = Config(controllers=(controller,), poll=poll)
    try:
        if args.once:
            return run_once(config, shard, args.output)
        return run_server(args, shard, lambda: config, config)
    finally:
        refresh.set()
        simulator.stop()


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # urllib3 logs every request URL at debug; keep that out even at --log.level debug.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
