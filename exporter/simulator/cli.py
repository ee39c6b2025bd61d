"""The simulator's command line: ``python -m exporter.simulator --port 8443 --backups 100000``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from exporter.simulator.controller import SimulatedController
from exporter.simulator.federation import FederationSpec


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m exporter.simulator``: serve a simulated controller until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description="Serve a simulated HPE SimpliVity controller on 127.0.0.1.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    parser.add_argument("--backups", type=int, default=None, help="total backups to generate")
    parser.add_argument("--vms", type=int, default=None, help="VMs (default 40, or backups/60)")
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--backups-per-vm", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mode", choices=("ovc", "mva"), default="ovc")
    parser.add_argument("--username", default="administrator@vsphere.local")
    parser.add_argument("--password", default="simulator-password")
    parser.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--request-cost", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--object-cost", type=float, default=0.0, help="seconds per backup")
    parser.add_argument("--max-parallel", type=int, default=0, help="0: unlimited")
    parser.add_argument("--churn-create", type=int, default=0, help="new backups per request")
    parser.add_argument("--churn-expire", type=int, default=0, help="expired backups per request")
    parser.add_argument("--log-level", default="warning")
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
        )
    except ValueError as e:
        parser.error(str(e))
    controller = SimulatedController(
        spec,
        username=args.username,
        password=args.password,
        host=args.host,
        port=args.port,
        tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
        mode=args.mode,
    )
    controller.faults.request_cost_seconds = args.request_cost
    controller.faults.object_cost_seconds = args.object_cost
    controller.faults.max_parallel = args.max_parallel
    controller.faults.churn_create_per_request = args.churn_create
    controller.faults.churn_expire_per_request = args.churn_expire
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
