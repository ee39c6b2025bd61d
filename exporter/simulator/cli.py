"""The simulator's command line: ``python -m exporter.simulator --port 8443 --backups 100000``.

The README's "Try it against a simulated controller" runs it with ``config.simulator.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from types import FrameType

from exporter.simulator.churn import Churn
from exporter.simulator.controller import SimulatedController
from exporter.simulator.faults import ODD_KINDS, ErrorBody
from exporter.simulator.spec import FederationSpec
from exporter.simulator.vocabulary import REST_API_VERSION


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description="Serve a simulated HPE SimpliVity controller (REST API: /api/oauth/token, "
        "backups, virtual machines, policies, hosts, the schedule report) on 127.0.0.1, with "
        "a generated federation in which every protection status occurs. It prints its URL, "
        "username and password, and serves until Ctrl-C or SIGTERM.",
        epilog="Poll it with the exporter: simplivity-exporter --config.file "
        "config.simulator.yaml (the repository's ready config for the defaults here).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8443, help="port; 0 picks a free one")
    parser.add_argument("--backups", type=int, default=None, help="total backups to generate")
    parser.add_argument(
        "--vms", type=int, default=None, help="live VMs; none given: 40, or backups/60 if larger"
    )
    parser.add_argument("--clusters", type=int, default=3, help="clusters of the federation")
    parser.add_argument(
        "--backups-per-vm",
        type=int,
        default=12,
        help="backups of each VM, when --backups is not given",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="the generator's seed: the same seed, the same data"
    )
    parser.add_argument(
        "--mode",
        choices=("ovc", "mva"),
        default="ovc",
        help="answer as a Virtual Controller (ovc) or a Management Virtual Appliance (mva)",
    )
    parser.add_argument(
        "--api-version",
        default=REST_API_VERSION,
        help="the REST API version it answers (before 1.11: no schedule report)",
    )
    parser.add_argument(
        "--no-schedule-report",
        action="store_true",
        help="an older controller: the same as --api-version 1.10",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="ignore fields= names the API version does not document, rather than answer 400",
    )
    parser.add_argument(
        "--daily-backup-limit",
        type=int,
        default=50_000,
        help="the schedule report's daily_backup_rate_limit",
    )
    parser.add_argument(
        "--retained-backups-limit",
        type=int,
        default=1_000_000,
        help="the schedule report's retained_backups_limit",
    )
    parser.add_argument(
        "--username", default="administrator@vsphere.local", help="the login it accepts"
    )
    parser.add_argument("--password", default="simulator-password", help="its password")
    parser.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--request-cost", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--object-cost", type=float, default=0.0, help="seconds per backup")
    parser.add_argument(
        "--max-parallel", type=int, default=0, help="requests served at once; 0: unlimited"
    )
    parser.add_argument("--churn-create", type=int, default=0, help="new backups per request")
    parser.add_argument("--churn-expire", type=int, default=0, help="expired backups per request")
    life = parser.add_argument_group(
        "churn: the federation lives in (wall-clock) time: scheduled backups and their states, "
        "expiry, and random events at rates per hour"
    )
    life.add_argument(
        "--churn",
        action="store_true",
        help="turn churn on, with the default rates in proportion to the VMs",
    )
    life.add_argument(
        "--churn-rate",
        action="append",
        default=[],
        type=_rate,
        metavar="KIND=PER_HOUR",
        help="a rate (events per hour across the federation; implies --churn), one of: "
        + ", ".join(name.replace("_", "-") for name in Churn.RATES),
    )
    life.add_argument(
        "--churn-failed-share", type=float, default=None, help="share of new backups that fail"
    )
    life.add_argument(
        "--churn-expiry-lag",
        type=int,
        default=None,
        help="seconds an expired backup may stay listed past its expiration_time",
    )
    life.add_argument(
        "--steady",
        action="store_true",
        help="live VMs' backups expire as they are replaced (as many expire as are taken, "
        "from the first hour), rather than after their rules' retention",
    )
    life.add_argument(
        "--no-scheduled-backups",
        action="store_true",
        help="with churn: no policy backups, only the random events and expiry",
    )
    parser.add_argument(
        "--log-level", default="warning", help="debug, info, warning or error (to stderr)"
    )
    quirks = parser.add_argument_group("real controllers' quirks (0: off)")
    quirks.add_argument("--limit-cap", type=int, default=0, help="serve at most N records per page")
    quirks.add_argument(
        "--max-in-flight", type=int, default=0, help="502 above N requests in progress"
    )
    quirks.add_argument(
        "--timeout-above-limit", type=int, default=0, help="504 for pages whose limit is above N"
    )
    quirks.add_argument(
        "--html-errors",
        type=_statuses,
        default=frozenset(),
        metavar="502,503,504",
        help="error statuses a reverse proxy answers with an HTML page",
    )
    quirks.add_argument(
        "--odd-every", type=int, default=0, help="serve every N-th backup (by id) odd"
    )
    quirks.add_argument(
        "--odd-kind",
        choices=ODD_KINDS,
        default="created_at_na",
        help="what is odd about the backups --odd-every picks",
    )
    quirks.add_argument(
        "--error-timestamp",
        choices=("iso", "epoch_ms"),
        default="iso",
        help="how error bodies write their timestamp",
    )
    quirks.add_argument(
        "--error-code",
        choices=("string", "number"),
        default="string",
        help="how error bodies write their status code",
    )
    quirks.add_argument(
        "--extended-errors", action="store_true", help="error bodies carry extendedResponse"
    )
    return parser


def _statuses(text: str) -> frozenset[int]:
    try:
        return frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of statuses: {text!r}") from None


def _rate(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in Churn.RATES:
        raise argparse.ArgumentTypeError(
            f"not KIND=PER_HOUR with a kind of {', '.join(Churn.RATES)}: {text!r}"
        )
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of events per hour: {text!r}") from None


def _churn(args: argparse.Namespace, vms: int) -> Churn | None:
    """The churn the flags ask for, or None."""
    wanted = (
        args.churn
        or args.churn_rate
        or args.churn_failed_share is not None
        or args.churn_expiry_lag is not None
        or args.no_scheduled_backups
    )
    if not wanted:
        return None
    churn = Churn.for_vms(vms).with_rates(dict(args.churn_rate))
    if args.churn_failed_share is not None:
        churn = replace(churn, failed_share=args.churn_failed_share)
    if args.churn_expiry_lag is not None:
        churn = replace(churn, expiry_lag_seconds=args.churn_expiry_lag)
    if args.no_scheduled_backups:
        churn = replace(churn, scheduled=False)
    return churn


def _set_faults(controller: SimulatedController, args: argparse.Namespace) -> None:
    faults = controller.faults
    faults.request_cost_seconds = args.request_cost
    faults.object_cost_seconds = args.object_cost
    faults.max_parallel = args.max_parallel
    faults.churn_create_per_request = args.churn_create
    faults.churn_expire_per_request = args.churn_expire
    faults.limit_cap = args.limit_cap
    faults.max_in_flight = args.max_in_flight
    faults.timeout_above_limit = args.timeout_above_limit
    faults.html_error_statuses = args.html_errors
    faults.error_body = ErrorBody(args.error_timestamp, args.error_code, args.extended_errors)
    if args.odd_every > 0:
        faults.make_odd(args.odd_kind, sorted(controller.backup_ids())[:: args.odd_every])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m exporter.simulator``: serve a simulated controller until SIGINT/SIGTERM."""
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    vms = args.vms
    if vms is None:
        vms = 40 if args.backups is None else max(40, args.backups // 60)
    try:
        spec = FederationSpec(
            seed=args.seed,
            clusters=args.clusters,
            vms=vms,
            backups_per_vm=args.backups_per_vm,
            total_backups=args.backups,
            daily_backup_rate_limit=args.daily_backup_limit,
            retained_backups_limit=args.retained_backups_limit,
            steady=args.steady,
        )
    except ValueError as e:
        parser.error(str(e))
    api_version = "1.10" if args.no_schedule_report else args.api_version
    try:
        churn = _churn(args, vms)
        controller = SimulatedController(
            spec,
            username=args.username,
            password=args.password,
            host=args.host,
            port=args.port,
            tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
            mode=args.mode,
            api_version=api_version,
            strict=not args.lenient,
            churn=churn,
        )
    except ValueError as e:
        parser.error(str(e))
    _set_faults(controller, args)
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        controller.start()
    except OSError as e:
        print(f"cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    print(f"url: {controller.url}", flush=True)
    print(f"username: {controller.username}", flush=True)
    print(f"password: {controller.password}", flush=True)
    print(f"backups: {controller.backup_count()}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0
