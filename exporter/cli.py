"""Command line: flags, the demo and exit codes. The only module that exits.

Exit codes: 0 success; 1 ``--once`` or ``--controller.check`` with a controller that failed;
2 a user's mistake
(bad flags, bad config, bad web config, an address that cannot be bound). The exporter's parts
are wired and run by :mod:`exporter.app`.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence

from exporter import __version__, logs
from exporter.app import Shard, UsageError, load_sharded, read_web_config, run_once, run_server
from exporter.check import check_controllers, choose
from exporter.config import Config, ConfigError, ControllerConfig, PollConfig, Secret
from exporter.logs import FORMATS, LEVELS, LogSettings
from exporter.memory import keep_large_buffers_off_the_heap
from exporter.sharding import ordinal_from_hostname, validate_shard

log = logging.getLogger("exporter")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEMO_REFRESH_SECONDS = 900.0
LISTEN_ADDRESS = ":10025"
#: --demo's default: its landing page and made-up metrics for this machine only.
DEMO_LISTEN_ADDRESS = "127.0.0.1:10025"


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
        metavar="HOST:PORT",
        help=f"address to serve /metrics on (default: {LISTEN_ADDRESS}; with --demo, "
        f"{DEMO_LISTEN_ADDRESS}: made-up data stays on this machine unless asked)",
    )
    add(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="TLS and basic-auth settings, in the Prometheus exporter-toolkit format",
    )
    add(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="let POST /-/reload reload the configuration (SIGHUP always does)",
    )
    add(
        "--log.level",
        dest="log_level",
        default="info",
        choices=LEVELS,
        metavar="debug|info|warn|error",
        help="the least severe records logged (default: %(default)s; warning = warn)",
    )
    add(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=FORMATS,
        metavar="logfmt|json",
        help="one record a line on stderr (default: %(default)s; text = logfmt)",
    )
    add(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration, print every problem, and exit (0 valid, 2 not); "
        "also warns about a $NAME without braces and an http:// controller URL",
    )
    add(
        "--controller.check",
        dest="controller_check",
        nargs="?",
        const="",
        metavar="NAME",
        help="log in to the controller NAME (default: every one), read one record of each "
        "listing, print what works and how to fix what does not, and exit "
        "(0 all work, 1 one does not)",
    )
    add(
        "--once",
        action="store_true",
        help="poll every controller once, print the metrics and exit "
        "(0 if every controller succeeded, 1 otherwise); per-controller series only, and "
        "no *_age_seconds (the output is read later: take ages from the timestamps)",
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.listen_address = listen_address(args.listen_address, demo=args.demo)
    logs.setup(LogSettings.of(args.log_level, args.log_format))
    keep_large_buffers_off_the_heap()
    try:
        shard = resolve_shard(args.shard_index, args.shard_count)
        if args.demo:
            return run_demo(args, shard)
        config = load_sharded(args.config_file, shard)
        if args.config_check:
            print(f"{args.config_file}: valid, {len(config.controllers)} controller(s)")
            for warning in config.warnings:
                print(f"simplivity-exporter: warning: {warning}", file=sys.stderr)
            if args.web_config_file:
                read_web_config(args.web_config_file)
                print(f"{args.web_config_file}: valid")
            return EXIT_OK
        log_warnings(config)
        return run(args, config, shard, lambda: log_warnings(load_sharded(args.config_file, shard)))
    except (ConfigError, UsageError) as err:
        # A person reads it: every problem on a line of its own.
        if args.config_check or args.controller_check is not None:
            print(f"simplivity-exporter: {err}", file=sys.stderr)
        else:
            log.error("%s", err)
        return EXIT_USAGE


def run(args: argparse.Namespace, config: Config, shard: Shard, load: Callable[[], Config]) -> int:
    """What the flags ask of a loaded configuration: ``--controller.check``, ``--once``, or
    serving (``load`` reads the configuration again, at SIGHUP or ``POST /-/reload``)."""
    if args.controller_check is not None:
        return check(config, args.controller_check)
    if args.once:
        return once(config, shard, args.output)
    run_server(
        config,
        shard,
        load,
        listen_address=args.listen_address,
        web_config_file=args.web_config_file,
        enable_lifecycle=args.enable_lifecycle,
    )
    return EXIT_OK


def listen_address(given: str | None, *, demo: bool) -> str:
    """--web.listen-address, or its default: every interface, but loopback for --demo.

    >>> listen_address(None, demo=True), listen_address(None, demo=False)
    ('127.0.0.1:10025', ':10025')
    >>> listen_address(":9999", demo=True)
    ':9999'
    """
    if given is not None:
        return given
    return DEMO_LISTEN_ADDRESS if demo else LISTEN_ADDRESS


def log_warnings(config: Config) -> Config:
    """Log the config's warnings (``--config.check`` prints them), once per load."""
    for warning in config.warnings:
        log.warning("config: %s", warning)
    return config


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


def run_demo(args: argparse.Namespace, shard: Shard) -> int:
    """Serve a built-in simulated federation, so a newcomer sees real-looking metrics now."""
    from exporter.simulator import FederationSpec, SimulatedController

    simulator = SimulatedController(FederationSpec()).start()
    log.info("demo: simulated controller at %s", simulator.url, extra={"url": simulator.url})
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
        return run(args, config, shard, lambda: config)
    finally:
        refresh.set()
        simulator.stop()


def once(config: Config, shard: Shard, output: str | None) -> int:
    """``--once``: 0 if every controller's poll succeeded, else 1."""
    return EXIT_OK if run_once(config, shard, output) else EXIT_FAILED


def check(config: Config, name: str) -> int:
    """``--controller.check [NAME]``: 0 if every controller checked works, else 1."""
    try:
        controllers = choose(config.controllers, name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    works = True
    for report in check_controllers(controllers, config.poll):
        print(report.render(), end="\n\n", flush=True)
        works = works and report.ok
    return EXIT_OK if works else EXIT_FAILED
