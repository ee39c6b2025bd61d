"""The simulated controller of the benchmark, in its own process, with a control endpoint.

Its CPU and memory must not count as the exporter's, so it runs apart::

    python -m bench.controller --backups 100000 --vms 5000 \
        --request-cost 0.02 --object-cost 0.00002 --max-parallel 8

It prints one JSON line, ``{"url": ..., "control": ..., "username": ..., "password": ...}``,
then serves until SIGTERM. The control endpoint (plain HTTP on another port) reads and resets
the simulator's own counters, without changing the simulator's API:

- ``GET /stats``: ``{"logins", "requests", "requests_per_path", "backups_requests", "bytes",
  "backups_served", "max_in_flight", "first_pages"}`` since the last reset (``first_pages``:
  requests for offset 0, one per scan);
- ``POST /reset``: zero the counters.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from exporter.simulator import FederationSpec, SimulatedController


def stats_document(controller: SimulatedController) -> dict[str, Any]:
    stats = controller.stats.snapshot()
    return {
        "logins": stats.logins,
        "requests": sum(stats.requests_per_path.values()),
        "requests_per_path": dict(sorted(stats.requests_per_path.items())),
        "backups_requests": stats.backups_requests,
        "bytes": stats.bytes_sent,
        "backups_served": stats.backups_served,
        "max_in_flight": stats.max_in_flight,
        "first_pages": sum(1 for offset, _ in stats.pages if offset == 0),
    }


class _ControlServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, controller: SimulatedController) -> None:
        self.controller = controller
        super().__init__(("127.0.0.1", 0), _ControlHandler)


class _ControlHandler(BaseHTTPRequestHandler):
    server: _ControlServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/stats":
            self._answer(200, stats_document(self.server.controller))
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path == "/reset":
            self.server.controller.stats.reset()
            self._answer(200, {"reset": True})
        else:
            self._answer(404, {"error": "not found"})

    def _answer(self, status: int, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.controller")
    parser.add_argument("--backups", type=int, required=True)
    parser.add_argument("--vms", type=int, required=True)
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--request-cost", type=float, default=0.0)
    parser.add_argument("--object-cost", type=float, default=0.0)
    parser.add_argument("--max-parallel", type=int, default=0)
    parser.add_argument("--token-lifetime", type=float, default=86400.0)
    args = parser.parse_args(argv)

    spec = FederationSpec(
        clusters=args.clusters, vms=args.vms, total_backups=args.backups, roles=False
    )
    controller = SimulatedController(spec, absolute_timeout_seconds=args.token_lifetime)
    controller.faults.request_cost_seconds = args.request_cost
    controller.faults.object_cost_seconds = args.object_cost
    controller.faults.max_parallel = args.max_parallel
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    controller.start()
    control = _ControlServer(controller)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    host, port = control.server_address[:2]
    print(
        json.dumps(
            {
                "url": controller.url,
                "control": f"http://{host!s}:{port}",
                "username": controller.username,
                "password": controller.password,
                "backups": controller.backup_count(),
            }
        ),
        flush=True,
    )
    done.wait()
    control.shutdown()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
